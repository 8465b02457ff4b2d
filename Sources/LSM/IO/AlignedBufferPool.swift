import CShims
import Synchronization

/// Aligned read buffers, reused across lookups so that a read allocates nothing in the steady
/// state. Buffers are powers of two from 64 KiB; at most `maxPooled` wait in the pool.
final class AlignedBufferPool: Sendable {
    static let alignment = 4096
    static let minimumBytes = 64 << 10
    static let maxPooled = 64

    struct Buffer: @unchecked Sendable {
        let pointer: UnsafeMutableRawPointer
        let capacity: Int
    }

    private let pooled = Mutex<[Buffer]>([])

    func take(_ bytes: Int) -> Buffer? {
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
        let keep = pooled.withLock { p -> Bool in
            guard p.count < AlignedBufferPool.maxPooled else { return false }
            p.append(b)
            return true
        }
        if !keep { cs_aligned_free(b.pointer) }
    }

    deinit {
        pooled.withLock { p in for b in p { cs_aligned_free(b.pointer) } }
    }
}
