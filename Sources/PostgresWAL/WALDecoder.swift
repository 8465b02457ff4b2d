import LSM

/// A streaming WAL decoder: feed it WAL bytes in chunks of any size, pull complete, checked records.
///
/// The bytes arrive as streaming replication sends them: a contiguous run starting at `startLSN`, cut
/// anywhere (mid-page, mid-header, mid-record). The decoder strips page headers, reassembles records
/// that span pages, checks every record's CRC-32C and decodes it into a `DecodedRecord`.
///
/// How the stream is walked. `cursor` is the LSN of the first byte not yet consumed. Whenever it sits
/// on a page boundary the next bytes are a page header (40 bytes at a segment start, else 24), which is
/// checked and dropped. Between headers the bytes belong to the current state:
/// - `.atStartPage`: the decoder was started on a page boundary, so the page may begin with the tail
///   of a record that started earlier; that tail (xlp_rem_len bytes, possibly across pages) is skipped
///   and decoding starts with the first record that begins on or after `startLSN`;
/// - `.skippingContinuation`: inside that tail;
/// - `.betweenRecords`: the next byte starts a record;
/// - `.inRecord`: bytes are appended to the record under assembly;
/// - `.skipping(to:)`: padding up to a position: MAXALIGN after every record, and after XLOG_SWITCH
///   the rest of the segment (page headers included: PostgreSQL does not read them either).
///
/// Invariants:
/// 1. `cursor` only grows, one consumed byte at a time (in runs), and equals `startLSN` plus the bytes
///    consumed; the bytes in `input[inputStart...]` are those of LSNs `cursor...`.
/// 2. A record starts only at an 8-byte-aligned position that is not inside a page header; after each
///    record the cursor moves to the record's `endLSN` (PostgreSQL's EndRecPtr) before anything else.
/// 3. Every page header seen has the magic, the page's own address, a long header exactly at segment
///    starts (with this decoder's segment and page sizes, and one system identifier throughout), a
///    timeline that never decreases, and a continuation flag and xlp_rem_len that agree with the state:
///    a record in progress continues with exactly the bytes it still lacks; between records no
///    continuation is claimed.
/// 4. A record's header is validated as soon as its 24 bytes are assembled (length, resource manager,
///    prev-link = the previous record's start), its length already when its first 4 bytes are: a
///    damaged length is reported before the decoder waits for, or allocates, a huge record.
/// 5. Nothing is returned before its CRC matched. After the first error the decoder is poisoned: every
///    later `next()` throws the same error, since the stream position is no longer trustworthy.
/// 6. An abandoned record (a page with FIRST_IS_OVERWRITE_CONTRECORD where its continuation should be)
///    is dropped and decoding resumes with the record that starts on that page, as PostgreSQL does.
///
/// Memory: `input` holds what was fed and not yet consumed; a caller that calls `next()` until it
/// returns nil after every `feed` keeps it to one chunk plus one partial record. Records longer than
/// `maximumRecordBytes` are rejected as corrupt.
public struct WALDecoder: Sendable {
    /// PostgreSQL 15 refuses to allocate more than MaxAllocSize (1 GiB - 1) for a record.
    public static let defaultMaximumRecordBytes = 1024 * 1024 * 1024 - 1

    public let segmentSize: Int
    public let maximumRecordBytes: Int
    /// Where decoding started.
    public let startLSN: LSN

    private enum State {
        case atStartPage
        case skippingContinuation(remaining: UInt64)
        case betweenRecords
        case inRecord
        case skipping(to: UInt64)
    }

    private var state: State
    private var input: [UInt8] = []
    private var inputStart = 0
    private var cursor: UInt64

    private var record: [UInt8] = []
    /// Storage of records the consumer gave back (`recycle`), reused for the next records' bytes
    /// and images instead of allocating.
    private var spareRecordBuffers: [[UInt8]] = []
    private var spareImagePages: [[UInt8]] = []
    static let maximumSpareRecordBuffers = 1024
    static let maximumSpareRecordBytes = 64 << 10
    static let maximumSpareImagePages = 256
    private var recordStart: UInt64 = 0
    private var recordLength: Int?
    private var recordHeaderChecked = false

    private var previousRecord: LSN?
    private var systemIdentifier: UInt64?
    private var timeline: PostgresTimeline?
    private var failure: WALError?

    /// The end (EndRecPtr) of the last record returned; nil before the first.
    public private(set) var lastRecordEndLSN: LSN?

    /// Starts decoding at `startLSN`: either a record's start (8-byte aligned, past its page's
    /// header) or a page boundary, in which case decoding begins with the first record that starts on
    /// that page or later. `previousRecordLSN`, when known, is checked against the first record's
    /// prev-link.
    public init(startLSN: LSN, previousRecordLSN: LSN? = nil,
                segmentSize: Int = PostgresWAL.defaultSegmentSize,
                maximumRecordBytes: Int = WALDecoder.defaultMaximumRecordBytes) throws {
        let page = UInt64(PostgresWAL.pageSize)
        guard segmentSize >= PostgresWAL.pageSize, segmentSize % PostgresWAL.pageSize == 0,
              segmentSize & (segmentSize - 1) == 0 else {
            throw WALError(.invalidArgument, "WAL segment size \(segmentSize) is not a power of two of at least one page")
        }
        guard startLSN.rawValue % UInt64(PostgresWAL.maximumAlignment) == 0 else {
            throw WALError(.invalidArgument, "start LSN \(startLSN) is not 8-byte aligned, so no record starts there", position: startLSN)
        }
        let offsetInPage = startLSN.rawValue % page
        if offsetInPage != 0 {
            let headerSize = PostgresWAL.pageHeaderSize(at: startLSN.rawValue - offsetInPage, segmentSize: segmentSize)
            guard offsetInPage >= UInt64(headerSize) else {
                throw WALError(.invalidArgument, "start LSN \(startLSN) lies inside a page header", position: startLSN)
            }
        }
        self.segmentSize = segmentSize
        self.maximumRecordBytes = maximumRecordBytes
        self.startLSN = startLSN
        self.cursor = startLSN.rawValue
        self.previousRecord = previousRecordLSN
        self.state = offsetInPage == 0 ? .atStartPage : .betweenRecords
    }

    /// The LSN the next fed byte belongs at: `startLSN` plus every byte fed so far.
    public var position: LSN { LSN(cursor + UInt64(input.count - inputStart)) }

    /// Bytes fed but not yet consumed (at most a chunk plus a partial record, see the type's notes).
    public var bufferedByteCount: Int { input.count - inputStart + record.count }

    /// Appends the next bytes of the stream. They must continue exactly at `position`.
    public mutating func feed(_ bytes: some Sequence<UInt8>) {
        if inputStart > 0 && (inputStart == input.count || (inputStart >= 1 << 16 && inputStart * 2 >= input.count)) {
            input.removeFirst(inputStart)
            inputStart = 0
        }
        input.append(contentsOf: bytes)
    }

    /// Takes back records the consumer is done with: their bytes and image pages become the storage
    /// of later records (up to a bound; the rest are dropped here). Storage still shared with
    /// someone else is never written: `removeAll(keepingCapacity:)` copies it first.
    public mutating func recycle(_ records: inout [DecodedRecord]) {
        for i in records.indices {
            // Only ordinary sizes are kept: a rare huge record's buffer is let go.
            if spareRecordBuffers.count < Self.maximumSpareRecordBuffers,
               records[i].bytes.capacity <= Self.maximumSpareRecordBytes {
                var bytes: [UInt8] = []
                swap(&bytes, &records[i].bytes)
                spareRecordBuffers.append(bytes)
            }
            for j in records[i].blocks.indices where records[i].blocks[j].image != nil {
                guard spareImagePages.count < Self.maximumSpareImagePages else { break }
                var page: [UInt8] = []
                swap(&page, &records[i].blocks[j].image!.page)
                spareImagePages.append(page)
            }
        }
        records.removeAll()
    }

    /// The next complete record, or nil when more bytes are needed. Throws `WALError` on invalid WAL;
    /// after that every call throws the same error.
    public mutating func next() throws -> DecodedRecord? {
        if let failure { throw failure }
        do {
            return try step()
        } catch let error as WALError {
            failure = error
            throw error
        }
    }

    // MARK: - The state machine

    private var available: Int { input.count - inputStart }

    private mutating func consume(_ n: Int) {
        inputStart += n
        cursor += UInt64(n)
    }

    private mutating func step() throws -> DecodedRecord? {
        let page = UInt64(PostgresWAL.pageSize)
        while true {
            if case .skipping(let target) = state {
                let n = Int(min(UInt64(available), target - cursor))
                consume(n)
                guard cursor == target else { return nil }
                state = .betweenRecords
            }
            if cursor % page == 0 {
                let size = PostgresWAL.pageHeaderSize(at: cursor, segmentSize: segmentSize)
                guard available >= size else { return nil }
                let header: WALPageHeader
                do {
                    header = try input.withUnsafeBytes {
                        try WALPageHeader(parsing: UnsafeRawBufferPointer(rebasing: $0[inputStart..<inputStart + size]),
                                          expectingLongHeader: size == WALPageHeader.longSize)
                    }
                } catch var error as WALError {
                    // The header cannot say where it really is; the stream position can.
                    error.recordLSN = inRecordLSN
                    error.position = LSN(cursor)
                    throw error
                }
                try accept(header)
                consume(size)
                continue
            }
            let run = min(available, Int(page - cursor % page))
            guard run > 0 else { return nil }
            switch state {
            case .skipping, .atStartPage:
                preconditionFailure("resolved above: skipping ends before a header, a start page at its header")
            case .skippingContinuation(let remaining):
                let n = Int(min(UInt64(run), remaining))
                consume(n)
                state = remaining == UInt64(n) ? .skipping(to: PostgresWAL.maxAlign(cursor))
                                               : .skippingContinuation(remaining: remaining - UInt64(n))
            case .betweenRecords:
                precondition(cursor % UInt64(PostgresWAL.maximumAlignment) == 0)
                recordStart = cursor
                record = spareRecordBuffers.popLast() ?? []
                record.removeAll(keepingCapacity: true)
                recordLength = nil
                recordHeaderChecked = false
                state = .inRecord
            case .inRecord:
                if let decoded = try assemble(run) { return decoded }
            }
        }
    }

    /// Appends up to `run` bytes (all on the current page) to the record; returns it when complete.
    private mutating func assemble(_ run: Int) throws -> DecodedRecord? {
        let lsn = LSN(recordStart)
        if recordLength == nil && record.isEmpty && run >= 4 {
            // The length field is on this page: check it and size the record's array once.
            let length = input.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: inputStart, as: UInt32.self) }.littleEndian
            try acceptRecordLength(length, lsn)
        }
        // Until the length is known take only the length field, so it is checked before anything else.
        let wanted = (recordLength ?? 4) - record.count
        let n = min(run, wanted)
        record.append(contentsOf: input[inputStart..<inputStart + n])
        consume(n)
        if recordLength == nil {
            guard record.count == 4 else { return nil }
            try acceptRecordLength(record.withUnsafeBytes { $0.loadUnaligned(as: UInt32.self) }.littleEndian, lsn)
            return nil
        }
        if !recordHeaderChecked && record.count >= XLogRecordHeader.size {
            let header = try XLogRecordHeader(parsing: record)
            try header.validate(at: lsn, previousRecord: previousRecord, maximumLength: maximumRecordBytes)
            recordHeaderChecked = true
        }
        guard record.count == recordLength else { return nil }

        let decoded = try DecodedRecord(parsing: record, at: lsn, segmentSize: segmentSize, spareImagePages: &spareImagePages)
        record = []
        let end = decoded.isSwitch ? decoded.endLSN.rawValue : PostgresWAL.maxAlign(cursor)
        precondition(decoded.endLSN.rawValue == end, "the stream walk and endOfRecord agree on where \(lsn) ends")
        previousRecord = lsn
        lastRecordEndLSN = decoded.endLSN
        state = .skipping(to: end)
        return decoded
    }

    /// Checks a record's xl_tot_len and reserves the record's array for it.
    private mutating func acceptRecordLength(_ length: UInt32, _ lsn: LSN) throws {
        guard length >= UInt32(XLogRecordHeader.size) else {
            throw WALError.corrupt("invalid record length \(length): a record holds at least its \(XLogRecordHeader.size)-byte header", record: lsn)
        }
        guard Int(length) <= maximumRecordBytes else {
            throw WALError.corrupt("record length \(length) exceeds the limit of \(maximumRecordBytes) bytes", record: lsn)
        }
        recordLength = Int(length)
        record.reserveCapacity(min(Int(length), 1 << 20))
    }

    /// Checks a page header against the stream position and the state (invariant 3), and moves the
    /// state on where the header decides it.
    private mutating func accept(_ header: WALPageHeader) throws {
        let here = LSN(cursor)
        guard header.pageAddress == here else {
            throw WALError.corrupt("unexpected page address \(header.pageAddress) in the WAL page header at \(here)", record: inRecordLSN, at: here)
        }
        let segmentStart = cursor % UInt64(segmentSize) == 0
        precondition(segmentStart == header.flags.contains(.longHeader), "checked while parsing")
        if segmentStart {
            guard header.segmentSize == UInt32(segmentSize), header.walPageSize == UInt32(PostgresWAL.pageSize) else {
                throw WALError.corrupt("WAL segment header says segment size \(header.segmentSize ?? 0) and page size \(header.walPageSize ?? 0); this decoder expects \(segmentSize) and \(PostgresWAL.pageSize)", record: inRecordLSN, at: here)
            }
            if let systemIdentifier, header.systemIdentifier != systemIdentifier {
                throw WALError.corrupt("WAL segment belongs to system \(header.systemIdentifier ?? 0), not \(systemIdentifier)", record: inRecordLSN, at: here)
            }
            systemIdentifier = header.systemIdentifier
        }
        if let timeline, header.timeline < timeline {
            throw WALError.corrupt("WAL page has timeline \(header.timeline), older than the \(timeline) seen before", record: inRecordLSN, at: here)
        }
        timeline = header.timeline
        let continues = header.flags.contains(.firstIsContinuation)
        let remaining = UInt64(header.remainingLength)

        switch state {
        case .atStartPage:
            state = continues && remaining > 0 ? .skippingContinuation(remaining: remaining) : .betweenRecords
        case .skippingContinuation(let expected):
            guard continues, remaining == expected else {
                throw WALError.corrupt("WAL page should continue a record with \(expected) more bytes but has continuation flag \(continues) and xlp_rem_len \(remaining)", at: here)
            }
        case .inRecord:
            if header.flags.contains(.firstIsOverwriteContinuation) {
                // The record in progress was abandoned by a crash; its rest never came (invariant 6).
                record = []
                state = .betweenRecords
                return
            }
            let missing = UInt64(recordLength.map { $0 - record.count } ?? 0)
            guard continues, remaining > 0, remaining == missing else {
                throw WALError.corrupt("record continues onto the page at \(here) missing \(missing) bytes, but the page has continuation flag \(continues) and xlp_rem_len \(remaining)", record: inRecordLSN, at: here)
            }
        case .betweenRecords:
            guard !continues else {
                throw WALError.corrupt("WAL page claims to continue a record (xlp_rem_len \(remaining)) where a new record should start", at: here)
            }
        case .skipping:
            preconditionFailure("a page header is never read while skipping")
        }
    }

    private var inRecordLSN: LSN? {
        if case .inRecord = state { return LSN(recordStart) }
        return nil
    }
}
