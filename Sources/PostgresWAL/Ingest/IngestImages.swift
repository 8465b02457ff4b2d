// Images on ingest (format-spec 10.6)
// ===================================
// A page that is changed again and again (pgbench_branches, a CLOG page, a visibility-map page under
// an update-heavy table) would otherwise collect an unbounded chain of records, and every read of it
// would apply them all. So ingest counts, per key, the records stored since its last image or
// will-init record; the record that would make it `threshold` is stored as the page image it
// produces instead (the page at the record's LSN, built by native redo from the page just before
// it). The value at that (key, LSN) is then an image equal to what a reader would have reconstructed
// there, so no read changes, and no chain grows past the threshold (until a restart forgets the
// counts: at most one more threshold's worth). If redo cannot build the page, the record is stored
// as it is. Commit-timestamp buckets (not pages: their value is a list that grows by 16 bytes per
// commit) use their own, larger threshold, `CommitTimestampIndex.recordsPerImage`, even when images
// on ingest are off.
//
// Used by the daemon's ingest target and by `TimelineStoreTarget` when given one, so that a benchmark
// of the engine ingests as the daemon does.
//
// Invariants:
// 1. A value is replaced only by the image redo builds from the store's own page just before it and
//    that one record: what a read at that LSN would return.
// 2. Images and will-init records reset a key's count; the table of counts is bounded (cleared at
//    4 million keys, which only delays the next image of each key).
// REQUIRES: one thread (ingest's).

import LSM

public final class IngestImages {
    /// The daemon's default `ingest_image_threshold`. Measured on pgbench at scale 20 (20 s, 4
    /// clients; BENCHMARKS.md): 128 made 2594 images, +30% bytes on disk; 512 made 585, +7.6%; a cold
    /// read of pgbench_branches' block took 20-31 ms with no images and 150-200 us with either.
    public static let defaultThreshold = 512

    public let store: TimelineStore
    public let redo: any Redo
    /// Records per image for page keys (0: never; commit-timestamp buckets are imaged regardless).
    public let threshold: Int
    /// Records stored per key since its last image or will-init record.
    private var recordsSinceImage: [Key: Int] = [:]
    public private(set) var imagesMaterialized = 0

    public init(store: TimelineStore, redo: any Redo, threshold: Int = IngestImages.defaultThreshold) {
        self.store = store
        self.redo = redo
        self.threshold = max(0, threshold)
    }

    /// What to store at (key, lsn) for `value`: the value itself, or the page image it produces when
    /// it would make the key's chain `threshold` records long.
    public func valueToStore(_ key: Key, _ lsn: LSN, _ value: Value) -> Value {
        if value.kind == .image || value.willInit {
            recordsSinceImage.removeValue(forKey: key)
            return value
        }
        guard let limit = recordsPerImage(for: key) else { return value }
        let n = (recordsSinceImage[key] ?? 0) + 1
        if n >= limit, let image = materialize(key, lsn, value) {
            recordsSinceImage.removeValue(forKey: key)
            imagesMaterialized += 1
            return .image(image)
        }
        if recordsSinceImage.count >= 4_000_000 { recordsSinceImage.removeAll() }
        recordsSinceImage[key] = n
        return value
    }

    private func recordsPerImage(for key: Key) -> Int? {
        if key.field1 == KeySpace.commitTimestampField1 { return CommitTimestampIndex.recordsPerImage }
        return threshold > 0 ? threshold : nil
    }

    /// The page `record` produces at `lsn`, or nil when redo cannot build it.
    private func materialize(_ key: Key, _ lsn: LSN, _ record: Value) -> [UInt8]? {
        guard lsn.rawValue > 0 else { return nil }
        let before = LSN(lsn.rawValue - 1)
        guard let page = try? store.get(key, at: before, redo: redo) else { return nil }
        return try? redo.reconstruct(key: key, lsn: lsn, base: (before, page), records: [RedoRecord(lsn: lsn, value: record)])
    }
}
