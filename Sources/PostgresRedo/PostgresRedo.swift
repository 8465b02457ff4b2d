import LSM
import PostgresWAL

/// Settings of the cluster whose WAL is replayed, as far as redo depends on them.
public struct RedoSettings: Sendable {
    /// The cluster has data checksums: pages handed out get a recomputed pd_checksum, and
    /// XLogHintBitIsNeeded() is true.
    public var dataChecksums: Bool
    /// wal_log_hints (with checksums, XLogHintBitIsNeeded() is true regardless).
    public var walLogHints: Bool
    /// The longest chain of records reconstruction accepts for one page.
    public var maxChainLength: Int

    public init(dataChecksums: Bool = false, walLogHints: Bool = false, maxChainLength: Int = 10_000) {
        self.dataChecksums = dataChecksums
        self.walLogHints = walLogHints
        self.maxChainLength = maxChainLength
    }

    /// XLogHintBitIsNeeded().
    public var hintBitsLogged: Bool { dataChecksums || walLogHints }
}

/// One record applied to one page: what a resource manager's redo sees.
///
/// `page` is the page as of just before the record (all zeros when the block reference has
/// WILL_INIT); the rmgr changes it in place and, as PostgreSQL's redo does, stamps `page.lsn = lsn`
/// on every page it modifies (PageSetLSN). Only the part of the record that concerns `block` is
/// applied: a record touching two pages is applied twice, once per page.
public struct RedoStep {
    public let page: Page
    public let record: RecordView
    /// Index into `record.blocks` of the block reference being replayed.
    public let blockIndex: Int
    public let settings: RedoSettings

    public var block: RecordView.Block { record.blocks[blockIndex] }
    /// The block reference id (0 for the first registered buffer, ...).
    public var blockId: UInt8 { record.blocks[blockIndex].id }
    public var blockNumber: UInt32 { record.blocks[blockIndex].block }
    /// The record's end: the LSN to stamp (PageSetLSN(page, lsn)).
    public var lsn: UInt64 { record.endLSN.rawValue }
    public var info: UInt8 { record.info }
    public var opcode: UInt8 { record.opcode }
    public var mainData: UnsafeRawBufferPointer { record.mainData }
    /// This block's data (XLogRecGetBlockData).
    public var blockData: UnsafeRawBufferPointer { record.blockData(id: blockId) }

    public func unsupported(_ recordType: String) -> RedoError {
        RedoError(.unsupported, "no redo for \(record.resourceManager) record \(recordType) (info 0x\(String(info, radix: 16)))")
    }
}

/// Native redo of PostgreSQL 15 WAL: the `Redo` the engine calls to turn a page's base image and the
/// records above it into the page at the request LSN.
///
/// Invariants:
/// - Never a wrong page: anything this code cannot replay exactly (an unsupported resource manager or
///   record type, a malformed record, a page without the layout a record expects, a missing base)
///   throws a `RedoError` naming the key, the LSN, the resource manager and the record type.
/// - Records are applied as PostgreSQL's startup process applies them: a record is skipped for a page
///   whose pd_lsn is already at or past the record's end (BLK_DONE), an APPLY image replaces the page,
///   WILL_INIT starts from zeros; rmgr code stamps pd_lsn where PostgreSQL does.
/// - With data checksums the result carries a correct pd_checksum for its block number.
/// - Runs in the caller's thread; apart from the output page and one record view per call, it
///   allocates nothing per record.
public struct PostgresRedo: Redo {
    public var settings: RedoSettings

    public init(settings: RedoSettings = RedoSettings()) { self.settings = settings }

    public func reconstruct(key: Key, lsn: LSN, base: (lsn: LSN, bytes: [UInt8])?, records: [RedoRecord]) throws -> [UInt8] {
        if records.count > settings.maxChainLength {
            throw RedoError(.chainTooLong, "key \(key) needs \(records.count) records applied at \(lsn); the maximum chain length is \(settings.maxChainLength)")
        }
        if let bucket = CommitTimestampIndex.bucket(of: key) {
            return try EngineRecordRedo.reconstructCommitTimestamps(bucket, key: key, base: base, records: records)
        }
        var out: [UInt8]
        if let base {
            guard base.bytes.count == Page.size else {
                throw RedoError(.corruptPage, "key \(key): base image at \(base.lsn) has \(base.bytes.count) bytes, a page has \(Page.size)")
            }
            out = base.bytes
        } else {
            out = [UInt8](repeating: 0, count: Page.size)
        }
        try out.withUnsafeMutableBytes { buffer in
            let page = Page(buffer.baseAddress!)
            var view = RecordView()
            for (i, r) in records.enumerated() {
                if i == 0 && base == nil && !r.value.willInit && r.value.kind != .image {
                    throw RedoError(.missingBase, "key \(key): the oldest record (at \(r.lsn)) needs an earlier page version and there is none")
                }
                try apply(r, to: page, key: key, view: &view)
            }
            if settings.dataChecksums && key.field1 == 0 && !page.isNew {
                page.checksum = PageChecksum.compute(page, blockNumber: key.field6)
            }
        }
        return out
    }

    /// Applies one stored value to `page`.
    public func apply(_ r: RedoRecord, to page: Page, key: Key, view: inout RecordView) throws {
        switch r.value.kind {
        case .image:
            guard r.value.bytes.count == Page.size else {
                throw RedoError(.corruptPage, "key \(key): image at \(r.lsn) has \(r.value.bytes.count) bytes")
            }
            r.value.bytes.withUnsafeBytes { page.copy(from: $0) }
        case .engineRecord:
            if r.value.willInit { page.zero(0, Page.size) }
            do {
                try r.value.bytes.withUnsafeBytes { try EngineRecordRedo.apply($0, to: page, key: key) }
            } catch var e as RedoError {
                e.context = "key \(key), engine record at \(r.lsn)"
                throw e
            }
        case .walRecord:
            try r.value.bytes.withUnsafeBytes { raw in
                try view.parse(raw, endLSN: r.lsn)
                try applyWAL(view, to: page, key: key)
            }
        }
    }

    /// Applies a parsed WAL record to the page of `key`.
    public func applyWAL(_ view: RecordView, to page: Page, key: Key) throws {
        guard key.field1 == 0,
              let index = view.blocks.firstIndex(where: {
                  $0.block == key.field6 && $0.rel == key.field4 && $0.db == key.field3 && $0.spc == key.field2 && $0.fork == key.field5
              })
        else {
            throw RedoError(.blockNotReferenced, "the \(view.resourceManager) record ending at \(view.endLSN) stored under key \(key) has no block reference to that page")
        }
        let block = view.blocks[index]
        do {
            if block.imageApplies {
                try restoreImage(view, index, into: page)
                page.lsn = view.endLSN.rawValue
                return
            }
            if block.willInit {
                page.zero(0, Page.size)
            } else if !page.isNew && page.lsn >= view.endLSN.rawValue {
                return // BLK_DONE: the page already holds this record's effect.
            }
            let step = RedoStep(page: page, record: view, blockIndex: index, settings: settings)
            switch view.resourceManager {
            case .xlog: try XLogRedo.redo(step)
            case .heap: try HeapRedo.redoHeap(step)
            case .heap2: try HeapRedo.redoHeap2(step)
            case .btree: try BtreeRedo.redo(step)
            case .sequence: try SequenceRedo.redo(step)
            case .generic: try GenericRedo.redo(step)
            default:
                throw RedoError(.unsupported, "no redo for resource manager \(view.resourceManager) yet (record type \(RecordTypeNames.name(view.resourceManager, info: view.info)))")
            }
        } catch var e as RedoError {
            e.context = "key \(key), \(view.resourceManager) \(RecordTypeNames.name(view.resourceManager, info: view.info)) record ending at \(view.endLSN), block ref #\(block.id)"
            throw e
        }
    }

    /// Restores block reference `index`'s image (hole filled with zeros, decompressed) into `page`.
    func restoreImage(_ view: RecordView, _ index: Int, into page: Page) throws {
        // Rare on this path (ingest stores APPLY images as page images): decode the record fully.
        let decoded = try DecodedRecord(stored: [UInt8](view.bytes))
        let id = view.blocks[index].id
        guard let image = decoded.blocks.first(where: { $0.id == id })?.image else {
            throw RedoError(.malformedRecord, "block reference #\(id) has no image to restore")
        }
        image.page.withUnsafeBytes { page.copy(from: $0) }
    }
}

extension RedoSettings {
    /// Offsets in PostgreSQL 15's ControlFileData (x86-64 layout; pg_control_version 1300).
    static let walLogHintsOffset = 176
    static let dataChecksumVersionOffset = 252

    /// The settings recorded in a cluster's pg_control file (global/pg_control, 8192 bytes).
    public init(pgControl bytes: [UInt8], maxChainLength: Int = 10_000) throws {
        guard bytes.count >= 256 else {
            throw RedoError(.malformedRecord, "pg_control has \(bytes.count) bytes; PostgreSQL 15's is 8192")
        }
        let version = bytes.withUnsafeBytes { $0.u32le(Self.dataChecksumVersionOffset) }
        self.init(dataChecksums: version != 0, walLogHints: bytes[Self.walLogHintsOffset] != 0,
                  maxChainLength: maxChainLength)
    }
}
