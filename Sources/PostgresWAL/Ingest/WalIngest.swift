import CShims
import LSM

/// Turns decoded PostgreSQL 15 WAL records, fed in order, into values in the page server's key space
/// (see `KeySpace` for the keys and encodings, `EngineRecord` for the engine records).
///
/// Every record's values go in at one LSN, the record's `endLSN` (PostgreSQL's EndRecPtr), with at
/// most one value per key: everything a record does to a key is merged first, then put.
///
/// What each record becomes:
/// - Every block reference: a page image when it carries an image with BKPIMAGE_APPLY (pd_lsn set to
///   the record's end unless the page is new, as redo does), else the whole record (compact:
///   xl_prev and xl_crc zeroed, unless `recordEncoding` says verbatim) as a `walRecord`
///   (`willInit` = BKPBLOCK_WILL_INIT). A block at or past the fork's size extends it: the gap (if any)
///   gets zero images, as PostgreSQL's redo zero-extends, and the size becomes block + 1. A fork not
///   in its database's RelDir is added (and the database to DbDir).
/// - XLOG: checkpoints replace the Checkpoint value (keeping the further nextXid, nextMulti and
///   nextMultiOffset of the record and the stored value); NEXTOID updates its nextOid.
/// - Every record: the Checkpoint value's nextXid (a FullTransactionId: epoch << 32 | xid) stays
///   ahead of every xid the WAL used, so a backup at any LSN never hands out an xid already used
///   before it. The xids are the record's xl_xid and, in commit/abort records, the (prepared) xid and
///   its subxacts. An xid at or past nextXid (compared modulo 2^32, as TransactionIdPrecedes does,
///   and placed in nextXid's epoch or the next one) sets nextXid to the next multiple of 1024 after
///   it, so the key changes only once per 1024 xids; 1024 divides the 32768 xids of a pg_xact page,
///   so that nextXid either starts a page or falls on a page a used xid already created (TrimCLOG
///   reads it). A result whose xid is special (0-2, after a wrap of the 32-bit xid) becomes 3 in the
///   new epoch. MultiXact CREATE_ID keeps nextMulti past the multixact (0 skipped) and
///   nextMultiOffset past its members (offset + count, wrapping as PostgreSQL's does), exactly,
///   compared modulo 2^32.
/// - Transaction: commit/abort (plain and prepared) set the xid's and subxacts' status in pg_xact
///   (tag 1 engine records, one per CLOG page), drop the relations listed (RelDir, size 0), and
///   commits report their timestamp; each of them also appends (end LSN, xact_time) to its WAL
///   bucket in the commit-timestamp index (a tag 7 engine record, `CommitTimestampIndex`); PREPARE
///   stores the two-phase state file.
/// - Storage: CREATE adds the fork with size 0 (an existing fork is left alone, as smgrcreate in redo
///   does); TRUNCATE shrinks the main fork and the FSM and VM forks the way smgr_redo computes it, and
///   puts a tag 5 / tag 6 engine record on the last remaining VM / FSM page whose tail is cleared.
/// - CLOG and MultiXact: ZERO pages become zero images (segment size and SlruDir grow); CREATE_ID
///   becomes tag 3 engine records (the multixact's offset and the next one's, as RecordNewMultiXact
///   of current minor releases writes both) and tag 4 ones; TRUNCATE drops segments from SlruDir
///   (size 0).
/// - Database: FILE_COPY copies every fork of the source database as of the record (through the
///   `PageSource`) plus its relmap; WAL_LOG adds an empty database; DROP removes it.
/// - RelMap: UPDATE replaces the map file.
/// - Heap and Heap2: records that cleared a page's all-visible (or, for locks, all-frozen) flag get a
///   tag 2 engine record on the visibility-map page, when that page exists and the record has no
///   block reference to it.
/// - Anything else: its block references as above, and a count in `stats`.
///
/// Nothing is deleted (the engine has no deletions): a dropped relation fork or SLRU segment leaves
/// its directory and gets size 0; its blocks stay but are unreachable through the directory.
///
/// Single-threaded. Directory, size and checkpoint values are cached in memory and loaded lazily
/// with `IngestTarget.latestImage`, so ingest may resume on a store that already holds data. After
/// an error the ingest is poisoned: state may be half-applied, so every later call throws.
public final class WalIngest {
    public let target: any IngestTarget
    /// Needed for CREATE DATABASE ... STRATEGY FILE_COPY records; without one they fail.
    public var pageSource: (any PageSource)?
    public private(set) var stats = IngestStats()

    /// `stats[manager].uninterpreted`, without copying the statistics (per record in the receiver).
    public func uninterpretedRecords(of manager: ResourceManagerId) -> Int { stats[manager].uninterpreted }
    /// Called for every commit record with its timestamp.
    public var onCommit: ((CommitTimestamp) -> Void)?
    /// Whether `commitTimestamps` collects commits (take them with `drainCommitTimestamps`). Off by
    /// default: a list nobody drains grows with every commit.
    public var collectsCommitTimestamps = false
    public private(set) var commitTimestamps: [CommitTimestamp] = []
    /// The end of the last record ingested.
    public private(set) var lastRecordEndLSN: LSN?

    private var failure: (any Error)?

    // Caches of values ingest maintains itself.
    private var relSizes: [RelTag: UInt32] = [:]
    /// The two relation forks most recently looked up (a heap's main fork and its visibility map,
    /// typically), each known to exist with `relSizes[tag] == size`: consecutive records mostly
    /// touch the same relations, and this spares them the dictionary and set lookups. Cleared
    /// whenever a relation directory changes other than by creating a relation.
    private var recentRelations = RecentRelations()

    struct RecentRelations {
        private var newer: (tag: RelTag, size: UInt32)?
        private var older: (tag: RelTag, size: UInt32)?

        func size(of tag: RelTag) -> UInt32? {
            if let n = newer, n.tag == tag { return n.size }
            if let o = older, o.tag == tag { return o.size }
            return nil
        }

        mutating func remember(_ tag: RelTag, size: UInt32) {
            if let n = newer, n.tag == tag { newer = (tag, size); return }
            if let o = older, o.tag == tag { older = newer; newer = (tag, size); return }
            older = newer
            newer = (tag, size)
        }

        /// Updates the size of `tag` if it is remembered.
        mutating func update(_ tag: RelTag, size: UInt32) {
            if let n = newer, n.tag == tag { newer = (tag, size) }
            if let o = older, o.tag == tag { older = (tag, size) }
        }

        mutating func forgetAll() {
            newer = nil
            older = nil
        }
    }
    private var relDirs: [DatabaseTag: Set<RelDirectory.Entry>] = [:]
    private var dbDir: Set<DatabaseTag>?
    private var slruDirs: [SlruKind: Set<UInt32>] = [:]
    private var slruSizes: [SlruSegmentTag: UInt32] = [:]
    private var twoPhaseDir: Set<UInt32>?
    private var checkpoint: [UInt8]?
    private var checkpointLoaded = false
    /// The newest commit-timestamp bucket known to have a value (nil: not known yet in this process).
    private var commitTimestampBucket: CommitTimestampIndex.Bucket?

    // What the record being ingested changes.
    private var pending = PendingValues()
    private var dirtySizes = Set<RelTag>()
    private var dirtyRelDirs = Set<DatabaseTag>()
    private var dirtyDbDir = false
    private var dirtySlruDirs = Set<SlruKind>()
    private var dirtySlruSizes = Set<SlruSegmentTag>()
    private var dirtyTwoPhaseDir = false
    private var vmClears: [Key: [UInt32: UInt8]] = [:]
    private var directPuts = 0
    private var blockValueCount = 0
    private var engineRecordTags: [EngineRecord.Tag] = []
    // Scratch of `ingestBlocks`, kept to reuse their storage (a record has a few block references).
    private var blockValues: [(key: Key, value: Value)] = []
    private var highestBlocks: [(tag: RelTag, block: UInt32)] = []

    struct SlruSegmentTag: Hashable {
        var kind: SlruKind
        var segment: UInt32
    }

    /// How WAL records are stored as values (format-spec 10.6).
    public enum RecordEncoding: Sendable {
        /// xl_prev and xl_crc zeroed (value encoding version 3): the page server's own encoding.
        /// Neither field is read again once the decoder checked the CRC (a stored record is found by
        /// its key and end LSN, and the layer format checks every block), and those 12 bytes were
        /// the part of a small record that LZ4 cannot shrink.
        case compact
        /// The record exactly as in the WAL (what the seed's RocksDB design stores; benchmarks).
        case verbatim
    }

    /// See `RecordEncoding`; `compact` unless a caller asks otherwise.
    public var recordEncoding: RecordEncoding = .compact

    public init(target: any IngestTarget, pageSource: (any PageSource)? = nil) {
        self.target = target
        self.pageSource = pageSource
    }

    /// Takes the commit timestamps collected so far.
    public func drainCommitTimestamps() -> [CommitTimestamp] {
        defer { commitTimestamps = [] }
        return commitTimestamps
    }

    /// Ingests one record. Records must come in WAL order, each once.
    public func ingest(_ record: DecodedRecord) throws {
        var record = record
        try ingest(&record)
    }

    /// Ingests one record, stamping its applied images' pd_lsn in place (when the caller is the only
    /// owner of their storage, as `RecordPipe.consume` makes it, no image is copied).
    public func ingest(_ record: inout DecodedRecord) throws {
        if let failure {
            throw IngestError(.poisoned, "an earlier error stopped this ingest: \(failure)", recordLSN: record.startLSN)
        }
        if let last = lastRecordEndLSN, record.startLSN < last {
            throw IngestError(.invalidArgument, "record starts before the end of the previous record (\(last)): records must be fed in order, once", recordLSN: record.startLSN)
        }
        do {
            // What redo does to an applied image: it gets the record's end LSN as pd_lsn.
            var storesRecord = false
            for i in record.blocks.indices {
                if record.blocks[i].image?.apply == true {
                    PageLayout.stampPageLSN(&record.blocks[i].image!.page, record.endLSN.rawValue)
                } else {
                    storesRecord = true
                }
            }
            if storesRecord && recordEncoding == .compact { Self.compact(&record.bytes) }
            try process(record)
        } catch {
            failure = error
            throw error
        }
    }

    /// Zeroes xl_prev (bytes 8..<16) and xl_crc (bytes 20..<24) of a record's bytes, in place.
    static func compact(_ bytes: inout [UInt8]) {
        guard bytes.count >= XLogRecordHeader.size else { return }
        bytes.withUnsafeMutableBytes { b in
            b.storeBytes(of: 0 as UInt64, toByteOffset: 8, as: UInt64.self)
            b.storeBytes(of: 0 as UInt32, toByteOffset: 20, as: UInt32.self)
        }
    }

    // MARK: - One record

    private func process(_ record: DecodedRecord) throws {
        pending.removeAll(keepingCapacity: true)
        vmClears.removeAll(keepingCapacity: true)
        directPuts = 0
        blockValueCount = 0
        engineRecordTags.removeAll(keepingCapacity: true)

        try ingestBlocks(record)
        let opcode = record.header.opcode
        let interpreted: Bool
        switch record.resourceManager {
        case .xlog: interpreted = try ingestXLog(record, opcode)
        case .transaction: interpreted = try ingestTransaction(record, opcode)
        case .storage: interpreted = try ingestStorage(record, opcode)
        case .clog: interpreted = try ingestClog(record, opcode)
        case .multiXact: interpreted = try ingestMultiXact(record, opcode)
        case .database: interpreted = try ingestDatabase(record, opcode)
        case .relMap: interpreted = try ingestRelMap(record, opcode)
        case .heap, .heap2: interpreted = try ingestHeap(record, opcode)
        default: interpreted = false
        }
        try advanceNextXid(past: CollectionOfOne(record.xid.rawValue))
        let values = try flush(record.endLSN)
        target.advance(to: record.endLSN)
        stats.count(record, interpreted: interpreted, blockValues: blockValueCount,
                    valuesPut: values + directPuts, engineRecords: engineRecordTags)
        lastRecordEndLSN = record.endLSN
    }

    /// Puts everything the record changed, in key order, at `lsn`; returns how many values.
    private func flush(_ lsn: LSN) throws -> Int {
        for tag in dirtySizes { pending[KeySpace.relationSize(tag)] = .image(SizeValue.encode(relSizes[tag] ?? 0)) }
        for db in dirtyRelDirs { pending[KeySpace.relDir(db)] = .image(RelDirectory(relDirs[db] ?? []).encode()) }
        if dirtyDbDir { pending[KeySpace.dbDir] = .image(DbDirectory(dbDir ?? []).encode()) }
        for kind in dirtySlruDirs { pending[KeySpace.slruDir(kind)] = .image(IdDirectory(slruDirs[kind] ?? []).encode()) }
        for s in dirtySlruSizes {
            pending[KeySpace.slruSegmentSize(s.kind, segment: s.segment)] = .image(SizeValue.encode(slruSizes[s] ?? 0))
        }
        if dirtyTwoPhaseDir { pending[KeySpace.twoPhaseDir] = .image(IdDirectory(twoPhaseDir ?? []).encode()) }
        for (key, clears) in vmClears {
            let entries = clears.keys.sorted().map { EngineRecord.VMClear(heapBlock: $0, bits: clears[$0]!) }
            pending[key] = .engineRecord(EngineRecord.vmClear(entries).encode())
            engineRecordTags.append(.vmClear)
        }
        dirtySizes.removeAll(keepingCapacity: true)
        dirtyRelDirs.removeAll(keepingCapacity: true)
        dirtyDbDir = false
        dirtySlruDirs.removeAll(keepingCapacity: true)
        dirtySlruSizes.removeAll(keepingCapacity: true)
        dirtyTwoPhaseDir = false
        try pending.forEachInKeyOrder { key, value in try target.put(key, lsn, value) }
        return pending.count
    }

    // MARK: - Caches

    private func relDir(_ db: DatabaseTag) throws -> Set<RelDirectory.Entry> {
        if let d = relDirs[db] { return d }
        let d = try target.latestImage(KeySpace.relDir(db)).map { try RelDirectory(decoding: $0).entries } ?? []
        relDirs[db] = d
        return d
    }

    private func relationExists(_ tag: RelTag) throws -> Bool { try relDir(tag.database).contains(tag.entry) }

    /// The fork's size in blocks; 0 when it does not exist.
    private func relSize(_ tag: RelTag) throws -> UInt32 {
        if let size = recentRelations.size(of: tag) { return size }
        guard try relationExists(tag) else { return 0 }
        if let n = relSizes[tag] {
            recentRelations.remember(tag, size: n)
            return n
        }
        let n = try target.latestImage(KeySpace.relationSize(tag)).map { try SizeValue.decode($0) } ?? 0
        relSizes[tag] = n
        recentRelations.remember(tag, size: n)
        return n
    }

    private func setRelSize(_ tag: RelTag, _ blocks: UInt32) {
        relSizes[tag] = blocks
        dirtySizes.insert(tag)
        recentRelations.update(tag, size: blocks)
    }

    private func databases() throws -> Set<DatabaseTag> {
        if let d = dbDir { return d }
        let d = try target.latestImage(KeySpace.dbDir).map { try DbDirectory(decoding: $0).entries } ?? []
        dbDir = d
        return d
    }

    private func ensureDatabase(_ db: DatabaseTag) throws {
        guard try !databases().contains(db) else { return }
        dbDir!.insert(db)
        dirtyDbDir = true
        if try relDir(db).isEmpty { dirtyRelDirs.insert(db) }
    }

    /// Adds the fork (size 0) when its RelDir lacks it; returns whether it did.
    @discardableResult
    private func ensureRelation(_ tag: RelTag) throws -> Bool {
        if recentRelations.size(of: tag) != nil { return false }
        guard try !relationExists(tag) else { return false }
        try ensureDatabase(tag.database)
        relDirs[tag.database]!.insert(tag.entry)
        dirtyRelDirs.insert(tag.database)
        setRelSize(tag, 0)
        return true
    }

    private func dropRelation(_ tag: RelTag) throws {
        recentRelations.forgetAll()
        guard try relationExists(tag) else { return }
        relDirs[tag.database]!.remove(tag.entry)
        dirtyRelDirs.insert(tag.database)
        setRelSize(tag, 0)
    }

    private func slruDir(_ kind: SlruKind) throws -> Set<UInt32> {
        if let d = slruDirs[kind] { return d }
        let d = try target.latestImage(KeySpace.slruDir(kind)).map { try IdDirectory(decoding: $0).ids } ?? []
        slruDirs[kind] = d
        return d
    }

    private func slruSegmentSize(_ s: SlruSegmentTag) throws -> UInt32 {
        if let n = slruSizes[s] { return n }
        guard try slruDir(s.kind).contains(s.segment) else { return 0 }
        let n = try target.latestImage(KeySpace.slruSegmentSize(s.kind, segment: s.segment)).map { try SizeValue.decode($0) } ?? 0
        slruSizes[s] = n
        return n
    }

    /// Makes SLRU page `page` (counted from segment 0) exist; returns its key and whether it existed.
    private func ensureSlruPage(_ kind: SlruKind, page: UInt32) throws -> (key: Key, existed: Bool) {
        let seg = SlruSegmentTag(kind: kind, segment: page / PageLayout.slruPagesPerSegment)
        let block = page % PageLayout.slruPagesPerSegment
        var existed = true
        if try !slruDir(kind).contains(seg.segment) {
            slruDirs[kind]!.insert(seg.segment)
            dirtySlruDirs.insert(kind)
            slruSizes[seg] = 0
            existed = false
        }
        if try slruSegmentSize(seg) <= block {
            slruSizes[seg] = block + 1
            dirtySlruSizes.insert(seg)
            existed = false
        }
        return (KeySpace.slruBlock(kind, segment: seg.segment, block: block), existed)
    }

    private func dropSlruSegment(_ kind: SlruKind, _ segment: UInt32) throws {
        guard try slruDir(kind).contains(segment) else { return }
        slruDirs[kind]!.remove(segment)
        dirtySlruDirs.insert(kind)
        let s = SlruSegmentTag(kind: kind, segment: segment)
        slruSizes[s] = 0
        dirtySlruSizes.insert(s)
    }

    private func twoPhaseFiles() throws -> Set<UInt32> {
        if let d = twoPhaseDir { return d }
        let d = try target.latestImage(KeySpace.twoPhaseDir).map { try IdDirectory(decoding: $0).ids } ?? []
        twoPhaseDir = d
        return d
    }

    private func storedCheckpoint() throws -> [UInt8]? {
        if !checkpointLoaded {
            checkpoint = try target.latestImage(KeySpace.checkpoint)
            checkpointLoaded = true
        }
        return checkpoint
    }

    /// Keeps the Checkpoint key's nextXid past every xid in `xids` (see the type's note): an xid at or
    /// past nextXid moves nextXid to the next multiple of 1024 after it.
    private func advanceNextXid(past xids: some Sequence<UInt32>) throws {
        guard var cp = try storedCheckpoint(), cp.count >= CheckPointLayout.size else { return }
        var next = CheckPointLayout.u64(cp, CheckPointLayout.nextXidOffset)
        for xid in xids {
            if let advanced = CheckpointCounters.nextXid(next, after: xid) { next = advanced }
        }
        guard next != CheckPointLayout.u64(cp, CheckPointLayout.nextXidOffset) else { return }
        CheckPointLayout.setU64(&cp, CheckPointLayout.nextXidOffset, next)
        checkpoint = cp
        pending[KeySpace.checkpoint] = .image(cp)
    }

    /// Keeps nextMulti past a created multixact and nextMultiOffset past its members (exact values,
    /// not rounded: TrimMultiXact reads the SLRU pages they fall on, which must exist).
    private func advanceNextMulti(past c: MultiXactCreate) throws {
        guard var cp = try storedCheckpoint(), cp.count >= CheckPointLayout.size else { return }
        let nextMulti = CheckPointLayout.u32(cp, CheckPointLayout.nextMultiOffset)
        let nextOffset = CheckPointLayout.u32(cp, CheckPointLayout.nextMultiOffsetOffset)
        let multiAfter = CheckpointCounters.skipZero(c.multi &+ 1)
        // PostgreSQL's own nextOffset may wrap to 0 (the next GetNewMultiXactId skips it).
        let offsetAfter = c.offset &+ UInt32(c.members.count)
        var changed = false
        if CheckpointCounters.precedes(nextMulti, multiAfter) {
            CheckPointLayout.setU32(&cp, CheckPointLayout.nextMultiOffset, multiAfter)
            changed = true
        }
        if CheckpointCounters.precedes(nextOffset, offsetAfter) {
            CheckPointLayout.setU32(&cp, CheckPointLayout.nextMultiOffsetOffset, offsetAfter)
            changed = true
        }
        guard changed else { return }
        checkpoint = cp
        pending[KeySpace.checkpoint] = .image(cp)
    }

    // MARK: - Block references

    private func ingestBlocks(_ record: DecodedRecord) throws {
        guard !record.blocks.isEmpty else { return }
        blockValues.removeAll(keepingCapacity: true)
        highestBlocks.removeAll(keepingCapacity: true)
        for i in record.blocks.indices {
            // Fields read one by one: copying the whole reference would retain its image.
            let tag = RelTag(record.blocks[i].relation, record.blocks[i].fork)
            let block = record.blocks[i].block.rawValue
            try ensureRelation(tag)
            let key = KeySpace.relationBlock(tag, block)
            let value: Value
            if record.blocks[i].image?.apply == true {
                // pd_lsn was stamped by `ingest`.
                value = .image(record.blocks[i].image!.page)
            } else {
                value = .walRecord(record.bytes, willInit: record.blocks[i].willInit)
            }
            // Two references to one block: the later one's value stands (as a dictionary would).
            if let j = blockValues.firstIndex(where: { $0.key == key }) {
                blockValues[j].value = value
            } else {
                blockValues.append((key, value))
            }
            if let j = highestBlocks.firstIndex(where: { $0.tag == tag }) {
                highestBlocks[j].block = max(highestBlocks[j].block, block)
            } else {
                highestBlocks.append((tag, block))
            }
        }
        for (tag, block) in highestBlocks {
            let size = try relSize(tag)
            guard block >= size else { continue }
            // PostgreSQL's redo extends the fork with zero pages up to the block it needs.
            for gap in size..<block {
                let key = KeySpace.relationBlock(tag, gap)
                if !blockValues.contains(where: { $0.key == key }) { pending[key] = .image(PageLayout.zeroPage) }
            }
            setRelSize(tag, block + 1)
        }
        blockValueCount = blockValues.count
        for (key, value) in blockValues { pending[key] = value }
    }

    // MARK: - XLOG

    private static let checkpointShutdown: UInt8 = 0x00
    private static let checkpointOnline: UInt8 = 0x10
    private static let nextOid: UInt8 = 0x30
    private static let fpiForHint: UInt8 = 0xA0
    private static let fpi: UInt8 = 0xB0

    private func ingestXLog(_ record: DecodedRecord, _ opcode: UInt8) throws -> Bool {
        switch opcode {
        case Self.checkpointShutdown, Self.checkpointOnline:
            guard record.mainDataRange.count >= CheckPointLayout.size else {
                throw IngestError(.malformed, "checkpoint record has \(record.mainDataRange.count) bytes of main data, a CheckPoint needs \(CheckPointLayout.size)", recordLSN: record.startLSN)
            }
            // The record's counters may be behind what ingest already saw (an online checkpoint takes
            // nextXid at its REDO point, and xids assigned since are in the WAL before it): keep the
            // further of the two so the key never moves back below an xid or multixact in use.
            var cp = Array(record.mainData)
            if let previous = try storedCheckpoint(), previous.count >= CheckPointLayout.size {
                CheckpointCounters.keepFurthest(&cp, previous)
            }
            checkpoint = cp
            checkpointLoaded = true
            pending[KeySpace.checkpoint] = .image(cp)
            return true
        case Self.nextOid:
            let oid = try parseMainData(record, "XLOG_NEXTOID") { r in try r.u32() }
            if var cp = try storedCheckpoint(), cp.count >= CheckPointLayout.size {
                CheckPointLayout.setU32(&cp, CheckPointLayout.nextOidOffset, oid)
                checkpoint = cp
                pending[KeySpace.checkpoint] = .image(cp)
            }
            return true
        case Self.fpi, Self.fpiForHint:
            return true
        default:
            return false
        }
    }

    // MARK: - Transaction

    private static let xactCommit: UInt8 = 0x00
    private static let xactPrepare: UInt8 = 0x10
    private static let xactAbort: UInt8 = 0x20
    private static let xactCommitPrepared: UInt8 = 0x30
    private static let xactAbortPrepared: UInt8 = 0x40

    private func ingestTransaction(_ record: DecodedRecord, _ opcodeWithFlag: UInt8) throws -> Bool {
        let opcode = opcodeWithFlag & XactCompletion.opMask
        switch opcode {
        case Self.xactCommit, Self.xactCommitPrepared, Self.xactAbort, Self.xactAbortPrepared:
            let isCommit = opcode == Self.xactCommit || opcode == Self.xactCommitPrepared
            let prepared = opcode == Self.xactCommitPrepared || opcode == Self.xactAbortPrepared
            let parsed = try XactCompletion(record, isCommit: isCommit)
            let xid: UInt32
            if prepared {
                guard let x = parsed.twoPhaseXid else {
                    throw IngestError(.malformed, "a prepared transaction's commit/abort record lacks its xid", recordLSN: record.startLSN)
                }
                xid = x
            } else {
                xid = record.xid.rawValue
            }
            try setClogStatus(isCommit ? .committed : .aborted, xids: [xid] + parsed.subxacts)
            try advanceNextXid(past: [xid] + parsed.subxacts)
            for node in parsed.droppedRelations {
                for fork in ForkNumber.allCases { try dropRelation(RelTag(node, fork)) }
            }
            if prepared, try twoPhaseFiles().contains(xid) {
                twoPhaseDir!.remove(xid)
                dirtyTwoPhaseDir = true
            }
            try appendCommitTimestamp(CommitTimestampIndex.Entry(lsn: record.endLSN, xactTime: parsed.xactTime))
            if isCommit {
                let c = CommitTimestamp(lsn: record.endLSN, xid: xid, timestamp: parsed.xactTime)
                if collectsCommitTimestamps { commitTimestamps.append(c) }
                onCommit?(c)
            }
            return true
        case Self.xactPrepare:
            let header = try XactPrepareHeader(record)
            // The state file is the record's main data followed by its CRC-32C (RecreateTwoPhaseFile).
            var file = record.mainData
            let crc = file.withUnsafeBytes { cs_crc32c(0, $0.baseAddress, $0.count) }
            file.appendLittleEndian(crc)
            pending[KeySpace.twoPhaseFile(xid: header.xid)] = .image(file)
            if try !twoPhaseFiles().contains(header.xid) {
                twoPhaseDir!.insert(header.xid)
                dirtyTwoPhaseDir = true
            }
            return true
        default:
            return false
        }
    }

    /// A tag 7 engine record under the record's bucket; will-init when it is the bucket's first.
    private func appendCommitTimestamp(_ entry: CommitTimestampIndex.Entry) throws {
        let bucket = entry.bucket
        let key = CommitTimestampIndex.key(bucket)
        let exists: Bool
        if let known = commitTimestampBucket {
            // LSNs only grow: a bucket other than the newest one written is a new one.
            exists = known == bucket
        } else {
            exists = try storedValueExists(key)
        }
        pending[key] = .engineRecord(EngineRecord.commitTimestamp(entry).encode(), willInit: !exists)
        engineRecordTags.append(.commitTimestamp)
        commitTimestampBucket = bucket
    }

    /// Whether `key` has any value in the target (an ingest resumed after a restart, or a branch
    /// reading its ancestor's). `latestImage` returns nil only for a key without values; it throws
    /// when the newest value is a record, which means the key exists. A genuine read error is
    /// counted as "exists" as well: appending without will-init can never hide older entries; at
    /// worst reads of that bucket fail loudly for want of a base.
    private func storedValueExists(_ key: Key) throws -> Bool {
        do { return try target.latestImage(key) != nil } catch { return true }
    }

    /// One tag 1 engine record per pg_xact page the xids fall on.
    private func setClogStatus(_ status: EngineRecord.ClogStatus, xids: [UInt32]) throws {
        var byPage: [UInt32: [UInt32]] = [:]
        var order: [UInt32] = []
        // InvalidTransactionId has no status to set.
        for x in xids where x != 0 {
            let page = PageLayout.clogPage(of: x)
            if byPage[page] == nil { order.append(page) }
            byPage[page, default: []].append(x)
        }
        for page in order {
            let (key, existed) = try ensureSlruPage(.clog, page: page)
            pending[key] = .engineRecord(EngineRecord.clogSetStatus(status, xids: byPage[page]!).encode(), willInit: !existed)
            engineRecordTags.append(.clogSetStatus)
        }
    }

    // MARK: - Storage

    private static let smgrCreate: UInt8 = 0x10
    private static let smgrTruncate: UInt8 = 0x20

    private func ingestStorage(_ record: DecodedRecord, _ opcode: UInt8) throws -> Bool {
        switch opcode {
        case Self.smgrCreate:
            try ensureRelation(SmgrCreate(record).tag)
            return true
        case Self.smgrTruncate:
            let t = try SmgrTruncate(record)
            let main = RelTag(t.node, .main)
            // smgr_redo creates the main fork when it is missing.
            try ensureRelation(main)
            if t.flags & SmgrTruncate.heap != 0, try t.blocks < relSize(main) {
                setRelSize(main, t.blocks)
            }
            let fsm = RelTag(t.node, .fsm)
            if t.flags & SmgrTruncate.fsm != 0, try relationExists(fsm) {
                let (newBlocks, partial) = PageLayout.fsmTruncation(heapBlocks: t.blocks, fsmBlocks: try relSize(fsm))
                if let partial {
                    pending[KeySpace.relationBlock(fsm, partial)] = .engineRecord(EngineRecord.fsmTruncate(heapBlocks: t.blocks).encode())
                    engineRecordTags.append(.fsmTruncate)
                }
                if let newBlocks { setRelSize(fsm, newBlocks) }
            }
            let vm = RelTag(t.node, .visibilityMap)
            if t.flags & SmgrTruncate.vm != 0, try relationExists(vm) {
                let (newBlocks, partial) = PageLayout.vmTruncation(heapBlocks: t.blocks, vmBlocks: try relSize(vm))
                if let partial {
                    pending[KeySpace.relationBlock(vm, partial)] = .engineRecord(EngineRecord.vmTruncate(heapBlocks: t.blocks).encode())
                    engineRecordTags.append(.vmTruncate)
                }
                if let newBlocks { setRelSize(vm, newBlocks) }
            }
            return true
        default:
            return false
        }
    }

    // MARK: - CLOG

    private static let clogZeroPage: UInt8 = 0x00
    private static let clogTruncate: UInt8 = 0x10

    private func ingestClog(_ record: DecodedRecord, _ opcode: UInt8) throws -> Bool {
        switch opcode {
        case Self.clogZeroPage:
            let (key, _) = try ensureSlruPage(.clog, page: try pageNumberBody(record))
            pending[key] = .image(PageLayout.zeroPage)
            return true
        case Self.clogTruncate:
            let cutoff = try pageNumberBody(record)
            for seg in try slruDir(.clog).sorted()
            where PageLayout.slruMayDeleteSegment(seg, cutoffPage: cutoff, precedes: PageLayout.clogPagePrecedes) {
                try dropSlruSegment(.clog, seg)
            }
            return true
        default:
            return false
        }
    }

    // MARK: - MultiXact

    private static let multixactZeroOffsets: UInt8 = 0x00
    private static let multixactZeroMembers: UInt8 = 0x10
    private static let multixactCreate: UInt8 = 0x20
    private static let multixactTruncate: UInt8 = 0x30

    private func ingestMultiXact(_ record: DecodedRecord, _ opcode: UInt8) throws -> Bool {
        switch opcode {
        case Self.multixactZeroOffsets, Self.multixactZeroMembers:
            let kind: SlruKind = opcode == Self.multixactZeroOffsets ? .multixactOffsets : .multixactMembers
            let (key, _) = try ensureSlruPage(kind, page: try pageNumberBody(record))
            pending[key] = .image(PageLayout.zeroPage)
            return true
        case Self.multixactCreate:
            let c = try MultiXactCreate(record)
            try advanceNextMulti(past: c)
            // RecordNewMultiXact sets this multixact's offset and (since the 2025/2026 minor releases,
            // harmless for WAL of older ones, whose next CREATE_ID sets the same value) the next one's:
            // the end of these members, skipping offset 0; the multixact after the last is 1.
            let next = c.multi &+ 1 == 0 ? 1 : c.multi &+ 1
            let nextOffset = c.offset &+ UInt32(c.members.count) == 0 ? 1 : c.offset &+ UInt32(c.members.count)
            var offsetsByPage: [UInt32: [EngineRecord.MultixactOffset]] = [:]
            for (multi, offset) in [(c.multi, c.offset), (next, nextOffset)] {
                offsetsByPage[PageLayout.multixactOffsetPage(of: multi), default: []].append(.init(multixactId: multi, offset: offset))
            }
            for page in offsetsByPage.keys.sorted() {
                let (key, existed) = try ensureSlruPage(.multixactOffsets, page: page)
                pending[key] = .engineRecord(EngineRecord.multixactOffsets(offsetsByPage[page]!).encode(), willInit: !existed)
                engineRecordTags.append(.multixactOffsets)
            }
            var byPage: [UInt32: [EngineRecord.MultixactMember]] = [:]
            var order: [UInt32] = []
            for (i, m) in c.members.enumerated() {
                let offset = c.offset &+ UInt32(i)
                let page = PageLayout.multixactMemberPage(of: offset)
                if byPage[page] == nil { order.append(page) }
                byPage[page, default: []].append(.init(memberOffset: offset, xid: m.xid, status: m.status))
            }
            for page in order {
                let (key, existed) = try ensureSlruPage(.multixactMembers, page: page)
                pending[key] = .engineRecord(EngineRecord.multixactMembers(byPage[page]!).encode(), willInit: !existed)
                engineRecordTags.append(.multixactMembers)
            }
            return true
        case Self.multixactTruncate:
            let t = try MultiXactTruncate(record)
            // PerformMembersTruncation: segments [start, end), wrapping after the last one.
            var seg = t.startMembers / PageLayout.multixactMembersPerPage / PageLayout.slruPagesPerSegment
            let endSeg = t.endMembers / PageLayout.multixactMembersPerPage / PageLayout.slruPagesPerSegment
            while seg != endSeg {
                try dropSlruSegment(.multixactMembers, seg)
                seg = seg == PageLayout.lastMultixactMemberSegment ? 0 : seg + 1
            }
            // PerformOffsetsTruncation: SimpleLruTruncate at the page of the multixact before the new oldest.
            let previous = t.endOffsets == 1 ? UInt32.max : t.endOffsets &- 1
            let cutoff = PageLayout.multixactOffsetPage(of: previous)
            for s in try slruDir(.multixactOffsets).sorted()
            where PageLayout.slruMayDeleteSegment(s, cutoffPage: cutoff, precedes: PageLayout.multixactOffsetPagePrecedes) {
                try dropSlruSegment(.multixactOffsets, s)
            }
            return true
        default:
            return false
        }
    }

    // MARK: - Database

    private static let dbaseCreateFileCopy: UInt8 = 0x00
    private static let dbaseCreateWalLog: UInt8 = 0x10
    private static let dbaseDrop: UInt8 = 0x20

    private func ingestDatabase(_ record: DecodedRecord, _ opcode: UInt8) throws -> Bool {
        switch opcode {
        case Self.dbaseCreateFileCopy:
            try copyDatabase(try DbaseCreateFileCopy(record), record)
            return true
        case Self.dbaseCreateWalLog:
            let c = try DbaseCreateWalLog(record)
            try ensureDatabase(c.database)
            return true
        case Self.dbaseDrop:
            for db in try DbaseDrop(record).databases { try dropDatabase(db) }
            return true
        default:
            return false
        }
    }

    private func dropDatabase(_ db: DatabaseTag) throws {
        recentRelations.forgetAll()
        for e in try relDir(db) { setRelSize(RelTag(spc: db.spc, db: db.db, rel: e.rel, fork: e.fork), 0) }
        relDirs[db] = []
        dirtyRelDirs.insert(db)
        if try databases().contains(db) {
            dbDir!.remove(db)
            dirtyDbDir = true
        }
    }

    /// CREATE DATABASE ... STRATEGY FILE_COPY: redo copies the source directory as it is at this
    /// record (after removing any directory already at the destination).
    private func copyDatabase(_ c: DbaseCreateFileCopy, _ record: DecodedRecord) throws {
        guard let pageSource else {
            throw IngestError(.unsupported, "CREATE DATABASE FILE_COPY (\(c.source) -> \(c.database)) needs a page source", recordLSN: record.startLSN)
        }
        recentRelations.forgetAll()
        let sourceEntries = try relDir(c.source)
        let old = try relDir(c.database)
        for e in old where !sourceEntries.contains(e) {
            setRelSize(RelTag(spc: c.database.spc, db: c.database.db, rel: e.rel, fork: e.fork), 0)
        }
        try ensureDatabase(c.database)
        relDirs[c.database] = sourceEntries
        dirtyRelDirs.insert(c.database)
        var copied = 0
        for e in sourceEntries.sorted() {
            let from = RelTag(spc: c.source.spc, db: c.source.db, rel: e.rel, fork: e.fork)
            let to = RelTag(spc: c.database.spc, db: c.database.db, rel: e.rel, fork: e.fork)
            let blocks = try relSize(from)
            for b in 0..<blocks {
                let page = try pageSource.page(KeySpace.relationBlock(from, b), at: record.startLSN) ?? PageLayout.zeroPage
                guard page.count == PageLayout.pageSize else {
                    throw IngestError(.malformed, "page source returned \(page.count) bytes for block \(b) of \(from)", recordLSN: record.startLSN)
                }
                // Keys of the new database only: no other value of this record can collide.
                try target.put(KeySpace.relationBlock(to, b), record.endLSN, .image(page))
                copied += 1
            }
            setRelSize(to, blocks)
        }
        directPuts += copied
        stats.countCopied(copied)
        if let map = try target.latestImage(KeySpace.relMap(c.source)) {
            pending[KeySpace.relMap(c.database)] = .image(map)
        }
    }

    // MARK: - RelMap

    private func ingestRelMap(_ record: DecodedRecord, _ opcode: UInt8) throws -> Bool {
        guard opcode == 0x00 else { return false }
        let u = try RelmapUpdate(record)
        pending[KeySpace.relMap(u.database)] = .image(u.contents)
        return true
    }

    // MARK: - Heap: implicit visibility-map clears

    private func ingestHeap(_ record: DecodedRecord, _ opcodeWithFlag: UInt8) throws -> Bool {
        let opcode = opcodeWithFlag & HeapFlags.opMask
        let bothBits = PageLayout.vmAllVisible | PageLayout.vmAllFrozen
        if record.resourceManager == .heap {
            switch opcode {
            case HeapFlags.insert:
                if try HeapFlags.flags(record, at: 2) & HeapFlags.firstCleared != 0 { try clearVM(record, block: 0, bits: bothBits) }
            case HeapFlags.delete:
                if try HeapFlags.flags(record, at: 7) & HeapFlags.firstCleared != 0 { try clearVM(record, block: 0, bits: bothBits) }
            case HeapFlags.update, HeapFlags.hotUpdate:
                let flags = try HeapFlags.flags(record, at: 7)
                // Block 0 is the new tuple's page; block 1, when present, the old one's.
                let oldId: UInt8 = record.blocks.contains { $0.id == 1 } ? 1 : 0
                let newPage = try heapBlock(record, id: 0), oldPage = try heapBlock(record, id: oldId)
                if flags & HeapFlags.firstCleared != 0 { try clearVM(record, block: oldId, bits: bothBits) }
                if flags & HeapFlags.updateNewCleared != 0
                    && (oldPage.block != newPage.block || oldPage.relation != newPage.relation) {
                    try clearVM(record, block: 0, bits: bothBits)
                }
            case HeapFlags.lock:
                if try HeapFlags.flags(record, at: 7) & HeapFlags.firstCleared != 0 { try clearVM(record, block: 0, bits: PageLayout.vmAllFrozen) }
            default:
                return false
            }
        } else {
            switch opcode {
            case HeapFlags.multiInsert:
                if try HeapFlags.flags(record, at: 0) & HeapFlags.firstCleared != 0 { try clearVM(record, block: 0, bits: bothBits) }
            case HeapFlags.lockUpdated:
                if try HeapFlags.flags(record, at: 7) & HeapFlags.firstCleared != 0 { try clearVM(record, block: 0, bits: PageLayout.vmAllFrozen) }
            default:
                return false
            }
        }
        return true
    }

    private func heapBlock(_ record: DecodedRecord, id: UInt8) throws -> BlockReference {
        guard let b = record.blocks.first(where: { $0.id == id }) else {
            throw IngestError(.malformed, "\(record.resourceManager) record lacks block reference #\(id)", recordLSN: record.startLSN)
        }
        return b
    }

    /// Clears `bits` of the heap block referenced as `block` in its visibility map page, when that page
    /// exists and the record does not reference it itself.
    private func clearVM(_ record: DecodedRecord, block id: UInt8, bits: UInt8) throws {
        let heap = try heapBlock(record, id: id)
        let vm = RelTag(heap.relation, .visibilityMap)
        let vmBlock = PageLayout.vmBlock(ofHeapBlock: heap.block.rawValue)
        guard try relationExists(vm), try vmBlock < relSize(vm) else { return }
        if record.blocks.contains(where: { $0.relation == heap.relation && $0.fork == .visibilityMap && $0.block.rawValue == vmBlock }) {
            return
        }
        vmClears[KeySpace.relationBlock(vm, vmBlock), default: [:]][heap.block.rawValue, default: 0] |= bits
    }
}

/// The arithmetic of the Checkpoint key's counters (see `WalIngest`).
enum CheckpointCounters {
    /// nextXid is advanced in steps of this many xids.
    static let xidStep: UInt64 = 1024
    static let firstNormalXid: UInt64 = 3

    /// `a` precedes `b` modulo 2^32 (TransactionIdPrecedes, MultiXactIdPrecedes).
    static func precedes(_ a: UInt32, _ b: UInt32) -> Bool { Int32(bitPattern: a &- b) < 0 }

    /// 0 is never a multixact id or a member offset: the counter after the last wraps to 1.
    static func skipZero(_ v: UInt32) -> UInt32 { v == 0 ? 1 : v }

    /// The nextXid (full, 64-bit) to store once `xid` is known used, or nil when `next` is already
    /// past it or `xid` is not a normal xid.
    static func nextXid(_ next: UInt64, after xid: UInt32) -> UInt64? {
        guard UInt64(xid) >= firstNormalXid else { return nil }
        let distance = Int32(bitPattern: xid &- UInt32(truncatingIfNeeded: next))
        guard distance >= 0 else { return nil }
        let used = next &+ UInt64(distance)
        var advanced = (used / xidStep + 1) * xidStep
        if advanced & 0xFFFF_FFFF < firstNormalXid { advanced = advanced & ~0xFFFF_FFFF | firstNormalXid }
        return advanced
    }

    /// Puts into `cp` (a CheckPoint from a checkpoint record) the further of its and `stored`'s
    /// nextXid, nextMulti and nextMultiOffset.
    static func keepFurthest(_ cp: inout [UInt8], _ stored: [UInt8]) {
        let xid = CheckPointLayout.nextXidOffset
        if CheckPointLayout.u64(stored, xid) > CheckPointLayout.u64(cp, xid) {
            CheckPointLayout.setU64(&cp, xid, CheckPointLayout.u64(stored, xid))
        }
        for at in [CheckPointLayout.nextMultiOffset, CheckPointLayout.nextMultiOffsetOffset]
        where precedes(CheckPointLayout.u32(cp, at), CheckPointLayout.u32(stored, at)) {
            CheckPointLayout.setU32(&cp, at, CheckPointLayout.u32(stored, at))
        }
    }
}

/// The values one record puts, keyed like a dictionary (a later value for a key replaces the
/// earlier one) but kept in a small array: a record puts a handful of values, where a linear search
/// is cheaper than hashing, and the storage is reused from record to record.
struct PendingValues {
    private var items: [(key: Key, value: Value)] = []

    var count: Int { items.count }

    mutating func removeAll(keepingCapacity: Bool) { items.removeAll(keepingCapacity: keepingCapacity) }

    subscript(key: Key) -> Value? {
        get { items.first(where: { $0.key == key })?.value }
        set {
            let i = items.firstIndex(where: { $0.key == key })
            switch (i, newValue) {
            case (let i?, let v?): items[i].value = v
            case (let i?, nil): items.remove(at: i)
            case (nil, let v?): items.append((key, v))
            case (nil, nil): break
            }
        }
    }

    /// Calls `body` for every value in ascending key order (the order puts of one LSN take).
    mutating func forEachInKeyOrder(_ body: (Key, Value) throws -> Void) rethrows {
        if items.count > 1 { items.sort { $0.key < $1.key } }
        for item in items { try body(item.key, item.value) }
    }
}
