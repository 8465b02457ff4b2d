import CShims
import Glibc
import Synchronization

/// Aligned read buffers, reused across lookups so that a read allocates nothing in the steady
/// state. Buffers are powers of two from 64 KiB. Each thread keeps the last buffer it gave back in
/// a thread-local slot and takes it again without a lock (a single shared pool made 32 concurrent
/// readers queue on its mutex); other buffers wait in the shared pool, at most `maxPooled`.
///
/// Invariant: a buffer is in at most one place at a time: a thread's slot, the shared pool, or the
/// hands of one reader between `take` and `give`. A thread's slot is freed when the thread exits.
final class AlignedBufferPool: @unchecked Sendable {
    static let alignment = 4096
    static let minimumBytes = 64 << 10
    static let maxPooled = 64

    struct Buffer: @unchecked Sendable {
        let pointer: UnsafeMutableRawPointer
        let capacity: Int
    }

    private let pooled = FutexLock<[Buffer]>([])
    private var slotKey = pthread_key_t()
    private let hasSlotKey: Bool

    init() {
        hasSlotKey = pthread_key_create(&slotKey) { value in
            guard let value else { return }
            let b = Unmanaged<SlotBuffer>.fromOpaque(value).takeRetainedValue()
            cs_aligned_free(b.buffer.pointer)
        } == 0
    }

    /// A buffer parked in a thread's slot.
    private final class SlotBuffer {
        let buffer: Buffer
        init(_ buffer: Buffer) { self.buffer = buffer }
    }

    func take(_ bytes: Int) -> Buffer? {
        if hasSlotKey, let value = pthread_getspecific(slotKey) {
            let parked = Unmanaged<SlotBuffer>.fromOpaque(value).takeUnretainedValue().buffer
            if parked.capacity >= bytes {
                Unmanaged<SlotBuffer>.fromOpaque(value).release()
                pthread_setspecific(slotKey, nil)
                return parked
            }
        }
        let found = pooled.withLock { p -> Buffer? in
            guard let i = p.lastIndex(where: { $0.capacity >= bytes }) else { return nil }
            return p.remove(at: i)
        }
        if let found { return found }
        var capacity = AlignedBufferPool.minimumBytes
        while capacity < bytes { capacity <<= 1 }
        guard let p = cs_aligned_alloc(AlignedBufferPool.alignment, capacity) else { return nil }
        return Buffer(pointer: p, capacity: capacity)
    }

    func give(_ b: Buffer) {
        if hasSlotKey {
            let old = pthread_getspecific(slotKey).map { Unmanaged<SlotBuffer>.fromOpaque($0) }
            // Keep the larger of the parked buffer and this one in the slot.
            if old == nil || old!.takeUnretainedValue().buffer.capacity < b.capacity {
                pthread_setspecific(slotKey, Unmanaged.passRetained(SlotBuffer(b)).toOpaque())
                guard let old else { return }
                let displaced = old.takeRetainedValue().buffer
                return giveShared(displaced)
            }
        }
        giveShared(b)
    }

    private func giveShared(_ b: Buffer) {
        let keep = pooled.withLock { p -> Bool in
            guard p.count < AlignedBufferPool.maxPooled else { return false }
            p.append(b)
            return true
        }
        if !keep { cs_aligned_free(b.pointer) }
    }

    deinit {
        // Buffers parked in the slots of threads still alive stay allocated (one per thread; only a
        // process that drops its storage context, as tests do, has any).
        if hasSlotKey { pthread_key_delete(slotKey) }
        pooled.withLock { p in for b in p { cs_aligned_free(b.pointer) } }
    }
}
