// What the read path of a timeline needs beyond its store: waiting for an LSN to be ingested, the
// relation-size cache, and the ingest target that keeps both up to date.
//
// Relation-size cache invariants
// ==============================
// An entry (lsn L, nblocks n, exists e) means: the relation fork's size is n and its existence is e at
// every LSN from L up to the timeline's last_record_lsn. It stays true because
// 1. ingest upserts on every size or existence change it stores, at the change's LSN, before it
//    advances last_record_lsn past it: a known entry is updated in place (L becomes the change's LSN);
//    an unknown relation gets a "changed at L" marker;
// 2. a reader fills an entry only from values it read at L = the last_record_lsn it observed, and only
//    when there is no entry, or a marker at or below L (a change the reader's values already include).
//    A change after L has left an entry or a marker above L, so a stale fill never lands.
// A hit needs a full entry and a request LSN >= L; anything else reads the store.
//
// Images on ingest
// ================
// A page that is changed again and again (pgbench_branches, a CLOG page) would otherwise collect
// an unbounded chain of records, and every read of it would apply them all. So ingest counts, per key,
// the records stored since its last image or will-init record; the record that would make it
// `imageThreshold` is stored as the page image it produces instead (the page at the record's LSN,
// built by native redo from the page just before it). The value at that (key, LSN) is then an image
// equal to what a reader would have reconstructed there, so no read changes, and no chain grows past
// the threshold (until a restart forgets the counts: at most one more threshold's worth). If redo
// cannot build the page, the record is stored as it is. Commit-timestamp buckets (not pages: their
// value is a list that grows by 16 bytes per commit) use their own, larger threshold,
// `CommitTimestampIndex.recordsPerImage`, even when images on ingest are off.

import Foundation
import LSM
import PostgresWAL
import Synchronization

/// Lets readers wait until a timeline has ingested up to an LSN. `notify` is cheap when nobody waits
/// (one atomic load), so ingest calls it after every record.
final class LSNWaiter: @unchecked Sendable {
    private let condition = NSCondition()
    private let waiters = Atomic<Int>(0)

    func notify() {
        guard waiters.load(ordering: .sequentiallyConsistent) > 0 else { return }
        condition.lock()
        condition.broadcast()
        condition.unlock()
    }

    /// Blocks until `ready()` or `deadline`; returns `ready()`'s last answer.
    func wait(until ready: () -> Bool, deadline: Date) -> Bool {
        if ready() { return true }
        waiters.add(1, ordering: .sequentiallyConsistent)
        defer { waiters.subtract(1, ordering: .sequentiallyConsistent) }
        condition.lock()
        defer { condition.unlock() }
        while !ready() {
            if !condition.wait(until: deadline) { return ready() }
        }
        return true
    }
}

final class RelSizeCache: Sendable {
    struct Entry: Sendable {
        var lsn: LSN
        /// nil: a marker (changed at `lsn`, size unknown here).
        var nblocks: UInt32?
        var exists: Bool
    }

    private let entries = Mutex<[RelTag: Entry]>([:])

    /// The cached (nblocks, exists) valid at `lsn`, if any.
    func lookup(_ rel: RelTag, at lsn: LSN) -> (nblocks: UInt32, exists: Bool)? {
        entries.withLock { e in
            guard let entry = e[rel], let n = entry.nblocks, lsn >= entry.lsn else { return nil }
            return (n, entry.exists)
        }
    }

    /// A reader's fill: values read at `lsn` (the last_record_lsn it observed).
    func fill(_ rel: RelTag, at lsn: LSN, nblocks: UInt32, exists: Bool) {
        entries.withLock { e in
            if let current = e[rel], current.nblocks != nil || current.lsn > lsn { return }
            e[rel] = Entry(lsn: lsn, nblocks: nblocks, exists: exists)
        }
    }

    /// Ingest stored a new size at `lsn`.
    func sizeChanged(_ rel: RelTag, at lsn: LSN, nblocks: UInt32) {
        entries.withLock { e in
            if var current = e[rel], current.nblocks != nil {
                current.lsn = lsn
                current.nblocks = nblocks
                e[rel] = current
            } else {
                e[rel] = Entry(lsn: lsn, nblocks: nil, exists: false)
            }
        }
    }

    /// Ingest created or dropped relation forks at `lsn`.
    func existenceChanged(_ rels: [(RelTag, Bool)], at lsn: LSN) {
        entries.withLock { e in
            for (rel, exists) in rels {
                if var current = e[rel], current.nblocks != nil {
                    current.lsn = lsn
                    current.exists = exists
                    e[rel] = current
                } else {
                    e[rel] = Entry(lsn: lsn, nblocks: nil, exists: false)
                }
            }
        }
    }

    var count: Int { entries.withLock { $0.count } }
}

/// Ingest into the timeline's store, telling the relation-size cache about size and directory changes
/// and waking readers waiting for an LSN.
final class TimelineIngestTarget: IngestTarget {
    let store: TimelineStore
    let relSizes: RelSizeCache
    let lsnWaiter: LSNWaiter
    let redo: any Redo
    let imageThreshold: Int
    /// The newest RelDir of each database seen, to tell which forks a new RelDir adds or removes.
    private var relDirs: [DatabaseTag: Set<RelDirectory.Entry>] = [:]
    /// Records stored per key since its last image or will-init record (see "Images on ingest").
    private var recordsSinceImage: [Key: Int] = [:]
    private(set) var imagesMaterialized = 0

    init(store: TimelineStore, relSizes: RelSizeCache, lsnWaiter: LSNWaiter, redo: any Redo, imageThreshold: Int) {
        self.store = store
        self.relSizes = relSizes
        self.lsnWaiter = lsnWaiter
        self.redo = redo
        self.imageThreshold = imageThreshold
    }

    func put(_ key: Key, _ lsn: LSN, _ value: Value) throws {
        if value.kind == .image || value.willInit {
            recordsSinceImage.removeValue(forKey: key)
        } else if let threshold = recordsPerImage(for: key) {
            let n = (recordsSinceImage[key] ?? 0) + 1
            if n >= threshold, let image = materialize(key, lsn, value) {
                recordsSinceImage.removeValue(forKey: key)
                imagesMaterialized += 1
                try store.put(key, lsn, .image(image))
                return
            }
            if recordsSinceImage.count >= 4_000_000 { recordsSinceImage.removeAll() }
            recordsSinceImage[key] = n
        }
        if key.field1 == 0 && value.kind == .image {
            if key.field6 == KeySpace.sizeKeyBlock && key.field4 != 0 {
                let rel = RelTag(spc: key.field2, db: key.field3, rel: key.field4, fork: key.field5)
                if let n = try? SizeValue.decode(value.bytes) { relSizes.sizeChanged(rel, at: lsn, nblocks: n) }
            } else if key.field6 == 1 && key.field4 == 0 && key.field5 == 0 && key.field2 != 0 {
                try noteRelDir(DatabaseTag(spc: key.field2, db: key.field3), lsn, value.bytes)
            }
        }
        try store.put(key, lsn, value)
    }

    /// Commit-timestamp buckets are imaged on their own schedule, even with images on ingest off,
    /// as their chains could otherwise outgrow max_chain_length (see `CommitTimestampIndex`).
    private func recordsPerImage(for key: Key) -> Int? {
        if key.field1 == KeySpace.commitTimestampField1 { return CommitTimestampIndex.recordsPerImage }
        return imageThreshold > 0 ? imageThreshold : nil
    }

    private func noteRelDir(_ db: DatabaseTag, _ lsn: LSN, _ bytes: [UInt8]) throws {
        let old: Set<RelDirectory.Entry>
        if let known = relDirs[db] {
            old = known
        } else {
            old = (try latestImage(KeySpace.relDir(db))).flatMap { try? RelDirectory(decoding: $0).entries } ?? []
        }
        guard let new = try? RelDirectory(decoding: bytes).entries else { return }
        relDirs[db] = new
        var changes: [(RelTag, Bool)] = []
        for e in new.subtracting(old) { changes.append((RelTag(spc: db.spc, db: db.db, rel: e.rel, fork: e.fork), true)) }
        for e in old.subtracting(new) { changes.append((RelTag(spc: db.spc, db: db.db, rel: e.rel, fork: e.fork), false)) }
        if !changes.isEmpty { relSizes.existenceChanged(changes, at: lsn) }
    }

    func latestImage(_ key: Key) throws -> [UInt8]? { try store.get(key, at: .max, redo: ImageOnlyRedo()) }

    /// The page `record` produces at `lsn`, or nil when redo cannot build it.
    private func materialize(_ key: Key, _ lsn: LSN, _ record: Value) -> [UInt8]? {
        guard lsn.rawValue > 0 else { return nil }
        let before = LSN(lsn.rawValue - 1)
        guard let page = try? store.get(key, at: before, redo: redo) else { return nil }
        return try? redo.reconstruct(key: key, lsn: lsn, base: (before, page), records: [RedoRecord(lsn: lsn, value: record)])
    }

    func advance(to lsn: LSN) {
        store.advance(to: lsn)
        lsnWaiter.notify()
    }
}
