import LSM
import PostgresWAL

/// Reads the relation metadata a timeline keeps (DbDir, RelDir, size keys) at an LSN.
struct RelationCatalog {
    let store: TimelineStore

    private func image(_ key: Key, _ lsn: LSN) throws -> [UInt8]? {
        try store.get(key, at: lsn, redo: ImageOnlyRedo())
    }

    func databases(at lsn: LSN) throws -> [DatabaseTag] {
        guard let bytes = try image(KeySpace.dbDir, lsn) else { return [] }
        return try DbDirectory(decoding: bytes).entries.sorted()
    }

    func relations(at lsn: LSN) throws -> [(tag: RelTag, nblocks: UInt32)] {
        var out: [(RelTag, UInt32)] = []
        for db in try databases(at: lsn) {
            guard let dir = try image(KeySpace.relDir(db), lsn) else { continue }
            for e in try RelDirectory(decoding: dir).entries.sorted() {
                let tag = RelTag(spc: db.spc, db: db.db, rel: e.rel, fork: e.fork)
                let n = try image(KeySpace.relationSize(tag), lsn).map { try SizeValue.decode($0) } ?? 0
                out.append((tag, n))
            }
        }
        return out
    }
}
