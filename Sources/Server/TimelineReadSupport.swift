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
// Images on ingest: see Sources/PostgresWAL/Ingest/IngestImages.swift (this target applies it
// to every value before storing it).

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
    /// Images on ingest (IngestImages.swift).
    let images: IngestImages
    /// The newest RelDir of each database seen, to tell which forks a new RelDir adds or removes.
    private var relDirs: [DatabaseTag: Set<RelDirectory.Entry>] = [:]
    var imagesMaterialized: Int { images.imagesMaterialized }

    init(store: TimelineStore, relSizes: RelSizeCache, lsnWaiter: LSNWaiter, redo: any Redo, imageThreshold: Int) {
        self.store = store
        self.relSizes = relSizes
        self.lsnWaiter = lsnWaiter
        self.redo = redo
        images = IngestImages(store: store, redo: redo, threshold: imageThreshold)
    }

    func put(_ key: Key, _ lsn: LSN, _ value: Value) throws {
        if key.field1 == 0 && value.kind == .image {
            if key.field6 == KeySpace.sizeKeyBlock && key.field4 != 0 {
                let rel = RelTag(spc: key.field2, db: key.field3, rel: key.field4, fork: key.field5)
                if let n = try? SizeValue.decode(value.bytes) { relSizes.sizeChanged(rel, at: lsn, nblocks: n) }
            } else if key.field6 == 1 && key.field4 == 0 && key.field5 == 0 && key.field2 != 0 {
                try noteRelDir(DatabaseTag(spc: key.field2, db: key.field3), lsn, value.bytes)
            }
        }
        try store.put(key, lsn, images.valueToStore(key, lsn, value))
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

    func advance(to lsn: LSN) {
        store.advance(to: lsn)
        lsnWaiter.notify()
    }
}
