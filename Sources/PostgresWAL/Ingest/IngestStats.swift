import LSM

/// What ingest saw, per resource manager.
public struct IngestStats: Sendable, Equatable {
    public struct Manager: Sendable, Equatable {
        /// Records ingested.
        public var records = 0
        /// Their bytes (xl_tot_len).
        public var bytes = 0
        /// Values stored for block references (page images and WAL records).
        public var blockValues = 0
        /// Records whose rmgr-specific content ingest does not interpret: only their block
        /// references were stored.
        public var uninterpreted = 0
        /// Uninterpreted records without block references: they stored nothing (for example Standby
        /// RUNNING_XACTS, XLOG SWITCH, logical messages).
        public var uninterpretedWithoutBlocks = 0
        public init() {}
    }

    /// Indexed by resource manager id (all 256; counting a record is an array access).
    private var byManager = [Manager](repeating: Manager(), count: 256)
    /// The resource managers that saw records, by id.
    public var managers: [UInt8: Manager] {
        var out: [UInt8: Manager] = [:]
        for (id, m) in byManager.enumerated() where m != Manager() { out[UInt8(id)] = m }
        return out
    }
    public private(set) var records = 0
    public private(set) var bytes = 0
    /// Values put, all kinds.
    public private(set) var valuesPut = 0
    /// Engine records put (CLOG, visibility map, multixact, truncation).
    public private(set) var engineRecords = 0
    /// Engine records put, by tag (`EngineRecord.Tag` raw value).
    public private(set) var engineRecordsByTag: [UInt8: Int] = [:]
    /// CREATE DATABASE ... FILE_COPY: blocks copied.
    public private(set) var blocksCopied = 0

    public init() {}

    public subscript(_ manager: ResourceManagerId) -> Manager { byManager[Int(manager.rawValue)] }

    /// The uninterpreted records in all, and without block references.
    public var uninterpreted: Int { byManager.reduce(0) { $0 + $1.uninterpreted } }
    public var uninterpretedWithoutBlocks: Int { byManager.reduce(0) { $0 + $1.uninterpretedWithoutBlocks } }

    mutating func count(_ record: DecodedRecord, interpreted: Bool, blockValues: Int, valuesPut: Int, engineRecords: [EngineRecord.Tag]) {
        let id = Int(record.resourceManager.rawValue)
        byManager[id].records += 1
        byManager[id].bytes += record.totalLength
        byManager[id].blockValues += blockValues
        if !interpreted {
            byManager[id].uninterpreted += 1
            if record.blocks.isEmpty { byManager[id].uninterpretedWithoutBlocks += 1 }
        }
        records += 1
        bytes += record.totalLength
        self.valuesPut += valuesPut
        self.engineRecords += engineRecords.count
        if !engineRecords.isEmpty {
            for t in engineRecords { engineRecordsByTag[t.rawValue, default: 0] += 1 }
        }
    }

    public func engineRecords(_ tag: EngineRecord.Tag) -> Int { engineRecordsByTag[tag.rawValue] ?? 0 }

    mutating func countCopied(_ n: Int) { blocksCopied += n }

    /// One line per resource manager, for logs.
    public var summary: String {
        let managers = self.managers
        return managers.keys.sorted().map { id in
            let m = managers[id]!
            return "\(ResourceManagerId(id)): \(m.records) records, \(m.bytes) bytes, \(m.blockValues) block values, \(m.uninterpreted) uninterpreted (\(m.uninterpretedWithoutBlocks) without blocks)"
        }.joined(separator: "\n")
    }
}

/// A commit's timestamp and where it is in the WAL, for get_lsn_by_timestamp.
public struct CommitTimestamp: Sendable, Equatable {
    /// The commit record's end LSN (where its effects are visible).
    public var lsn: LSN
    public var xid: UInt32
    /// xact_time: microseconds since 2000-01-01 00:00:00 UTC (PostgreSQL's TimestampTz).
    public var timestamp: Int64

    public init(lsn: LSN, xid: UInt32, timestamp: Int64) {
        self.lsn = lsn
        self.xid = xid
        self.timestamp = timestamp
    }

    /// Seconds since 1970-01-01 (the PostgreSQL epoch is 946684800 seconds after the Unix one).
    public var unixSeconds: Double { Double(timestamp) / 1_000_000 + 946_684_800 }
}
