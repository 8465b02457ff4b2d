import Foundation
import LSM
@_exported import PGTestSupport
import Synchronization
import XCTest

/// A fake redo for engine tests: an image is the starting bytes; a record appends its bytes; a
/// `willInit` record replaces everything before it. The model applies the same rule.
struct AppendRedo: Redo {
    func reconstruct(key: Key, lsn: LSN, base: (lsn: LSN, bytes: [UInt8])?, records: [RedoRecord]) throws -> [UInt8] {
        var out = base?.bytes ?? []
        for r in records {
            if r.value.willInit { out = [] }
            out += r.value.bytes
        }
        return out
    }
}

/// Counts the reads that reach the real engine underneath.
final class CountingIO: BlockIO {
    let inner = PreadEngine()
    let reads = Atomic<Int>(0)
    var kind: IOEngineKind { inner.kind }
    func read(_ ops: UnsafeMutableBufferPointer<ReadOp>) {
        reads.add(ops.count, ordering: .relaxed)
        inner.read(ops)
    }
}

/// A store setting for read-path tests: no background flush, and 2 KiB data blocks, so that a few
/// hundred values make many blocks and index blocks.
func smallBlockConfig() -> StoreConfig {
    var config = StoreConfig()
    config.backgroundFlush = false
    config.dataBlockBytes = 2048
    return config
}

/// Writes `relations` x `blocks` image values (`value` makes each) into a new store in a temporary
/// directory, all in layer files (one per relation); returns the directory, the last LSN and the model.
func writeRelations(_ tag: String, relations: Int, blocks: Int, _ rng: inout SeededRandom,
                    value: (Int, Int, inout SeededRandom) -> [UInt8]) throws -> (dir: String, lsn: LSN, model: Model) {
    let dir = makeTempDir(tag)
    let store = try TimelineStore.open(directory: dir, config: smallBlockConfig(), context: StorageContext(io: PreadEngine()))
    var model = Model()
    var lsn: UInt64 = 0x1000
    for rel in 0..<relations {
        for block in 0..<blocks {
            lsn += 8
            let key = relKey(rel: 16384 + UInt32(rel), block: UInt32(block))
            let v = Value.image(value(rel, block, &rng))
            try store.put(key, LSN(lsn), v)
            model.put(key, LSN(lsn), v)
        }
    }
    store.advance(to: LSN(lsn))
    _ = try store.checkpoint()
    store.close()
    return (dir, LSN(lsn), model)
}

func makeTempDir(_ tag: String) -> String {
    let path = NSTemporaryDirectory() + "lsmtest-\(tag)-\(UUID().uuidString.prefix(8))"
    try! FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    return path
}

/// The plain in-memory model the engine is compared with: every value ever put, per key.
struct Model {
    var values: [Key: [(LSN, Value)]] = [:]

    mutating func put(_ key: Key, _ lsn: LSN, _ value: Value) { values[key, default: []].append((lsn, value)) }

    func get(_ key: Key, at lsn: LSN) -> [UInt8]? {
        guard let vs = values[key] else { return nil }
        var out: [UInt8]?
        for (l, v) in vs where l <= lsn {
            if v.kind == .image { out = v.bytes } else if v.willInit { out = v.bytes } else { out = (out ?? []) + v.bytes }
        }
        return out
    }

    /// The model as of `lsn`: only values at or below it.
    func truncated(to lsn: LSN) -> Model {
        var m = Model()
        for (k, vs) in values {
            let kept = vs.filter { $0.0 <= lsn }
            if !kept.isEmpty { m.values[k] = kept }
        }
        return m
    }
}

func relKey(rel: UInt32, block: UInt32, fork: UInt8 = 0) -> Key {
    .relationBlock(spc: 1663, db: 5, rel: rel, fork: fork, block: block)
}

/// A page-like image: a header-ish prefix, compressible filler and some random bytes.
func pageImage(_ rng: inout SeededRandom, size: Int = 8192) -> [UInt8] {
    var b = [UInt8](repeating: 0, count: size)
    let randomBytes = Int.random(in: 0...size / 2, using: &rng)
    for i in 0..<randomBytes { b[size - 1 - i] = UInt8.random(in: 0...255, using: &rng) }
    b[0] = UInt8.random(in: 0...255, using: &rng)
    return b
}
