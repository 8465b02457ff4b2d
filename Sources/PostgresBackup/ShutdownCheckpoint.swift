import LSM
import PostgresWAL

/// The made-up end of WAL a backup at LSN X starts from: a XLOG_CHECKPOINT_SHUTDOWN record at P (its
/// redo = P) in an otherwise empty WAL segment, and a pg_control that names it, is in state "shut
/// down" and asks for no recovery. PostgreSQL starting on them reads the record, finds nothing after
/// it and starts as a primary with the counters of the checkpoint.
///
/// Invariants:
/// - P >= X, P is 8-aligned, is not inside a page header, and the whole record lies in the segment
///   of P (when it would cross into the next segment, P moves to the first record position of
///   that segment).
/// - The segment's first page has a long header; every page the record touches has a header
///   (the second, if any, flagged XLP_FIRST_IS_CONTRECORD with the record's remaining length); all
///   other bytes are zero, so WAL ends after the record.
/// - When P is not the first record position of its page, that page is flagged
///   XLP_FIRST_IS_CONTRECORD with xlp_rem_len = the bytes between its header and P: the zeros before
///   P pass for the tail of an earlier record, so a reader scanning from the page start (pg_waldump,
///   XLogFindNextRecord) finds P. PostgreSQL's startup reads P directly and never looks before it.
/// - pg_control's CRC-32C covers its bytes before the crc field, as PostgreSQL computes it.
///
/// Byte offsets are those of PostgreSQL 15 on 64-bit Linux (pg_control.h, xlog_internal.h,
/// xlogrecord.h); they are written down in format-spec.md.
struct ShutdownCheckpoint {
    /// ControlFileData field offsets.
    enum Control {
        static let systemIdentifier = 0
        static let catalogVersion = 12
        static let state = 16
        static let time = 24
        static let checkPoint = 32
        static let checkPointCopy = 40
        static let minRecoveryPoint = 136
        static let minRecoveryPointTLI = 144
        static let backupStartPoint = 152
        static let backupEndPoint = 160
        static let backupEndRequired = 168
        static let maxPreparedXacts = 192
        static let xlogBlockSize = 224
        static let xlogSegmentSize = 228
        static let crc = 288
        /// DB_SHUTDOWNED in enum DBState.
        static let stateShutDown: UInt32 = 1
    }

    /// CheckPoint field offsets not in `CheckPointLayout`.
    enum CheckPointField {
        static let thisTimeLineID = 8
        static let oldestActiveXid = 80
    }

    enum WAL {
        static let pageSize = 8192
        static let magic: UInt16 = 0xD110
        static let shortHeaderSize = 24
        static let longHeaderSize = 40
        static let firstIsContRecord: UInt16 = 0x0001
        static let longHeader: UInt16 = 0x0002
        static let recordHeaderSize = 24
        /// XLogRecord header + XLR_BLOCK_ID_DATA_SHORT, length byte, CheckPoint.
        static let recordSize = recordHeaderSize + 2 + CheckPointLayout.size
        static let blockIdDataShort: UInt8 = 255
        static let rmXLog: UInt8 = 0
        static let infoCheckpointShutdown: UInt8 = 0x00
    }

    let systemIdentifier: UInt64
    let timeLine: UInt32
    let segmentSize: Int
    let catalogVersion: UInt32
    /// Where the checkpoint record starts.
    let location: LSN
    /// The CheckPoint struct of the record and of pg_control's checkPointCopy.
    let checkpoint: [UInt8]
    /// pg_control (8192 bytes).
    let controlFile: [UInt8]

    /// `storedControl` is the control file key's value, `storedCheckpoint` the Checkpoint key's, both
    /// at `lsn`; `now` is the time to stamp (seconds since the epoch).
    init(storedControl: [UInt8], storedCheckpoint: [UInt8], lsn: LSN, now: Int64) throws {
        guard storedControl.count >= Control.crc + 4, storedControl.count <= CheckPointLayout.controlFileSize else {
            throw BackupError("the stored pg_control has \(storedControl.count) bytes, not a PostgreSQL 15 control file")
        }
        guard storedCheckpoint.count == CheckPointLayout.size else {
            throw BackupError("the stored checkpoint has \(storedCheckpoint.count) bytes, a CheckPoint has \(CheckPointLayout.size)")
        }
        let xlogBlockSize = CheckPointLayout.u32(storedControl, Control.xlogBlockSize)
        guard xlogBlockSize == UInt32(WAL.pageSize) else {
            throw BackupError("pg_control says WAL pages are \(xlogBlockSize) bytes; only \(WAL.pageSize) is supported")
        }
        let segmentSize = Int(CheckPointLayout.u32(storedControl, Control.xlogSegmentSize))
        guard segmentSize >= 1 << 20, segmentSize <= 1 << 30, segmentSize & (segmentSize - 1) == 0 else {
            throw BackupError("pg_control's WAL segment size \(segmentSize) is not a power of two between 1 MiB and 1 GiB")
        }
        self.segmentSize = segmentSize
        systemIdentifier = CheckPointLayout.u64(storedControl, Control.systemIdentifier)
        catalogVersion = CheckPointLayout.u32(storedControl, Control.catalogVersion)
        timeLine = CheckPointLayout.u32(storedCheckpoint, CheckPointField.thisTimeLineID)
        let p = Self.recordLocation(after: lsn, segmentSize: segmentSize)
        location = p

        var cp = storedCheckpoint
        CheckPointLayout.setU64(&cp, CheckPointLayout.redoOffset, p.rawValue)
        CheckPointLayout.setU64(&cp, CheckPointLayout.timeOffset, UInt64(bitPattern: now))
        CheckPointLayout.setU32(&cp, CheckPointField.oldestActiveXid, 0)
        checkpoint = cp

        var control = storedControl + [UInt8](repeating: 0, count: CheckPointLayout.controlFileSize - storedControl.count)
        CheckPointLayout.setU32(&control, Control.state, Control.stateShutDown)
        CheckPointLayout.setU64(&control, Control.time, UInt64(bitPattern: now))
        CheckPointLayout.setU64(&control, Control.checkPoint, p.rawValue)
        control.replaceSubrange(Control.checkPointCopy..<Control.checkPointCopy + CheckPointLayout.size, with: cp)
        CheckPointLayout.setU64(&control, Control.minRecoveryPoint, 0)
        CheckPointLayout.setU32(&control, Control.minRecoveryPointTLI, 0)
        CheckPointLayout.setU64(&control, Control.backupStartPoint, 0)
        CheckPointLayout.setU64(&control, Control.backupEndPoint, 0)
        control[Control.backupEndRequired] = 0
        let crc = control.withUnsafeBytes { crc32c(0, UnsafeRawBufferPointer(rebasing: $0[0..<Control.crc])) }
        CheckPointLayout.setU32(&control, Control.crc, crc)
        controlFile = control
    }

    /// P for a backup at `lsn`: `lsn` rounded up to 8, moved past a page header it falls on, and to
    /// the next segment when the record would not end in this one.
    static func recordLocation(after lsn: LSN, segmentSize: Int) -> LSN {
        var p = (lsn.rawValue + 7) & ~7
        let seg = UInt64(segmentSize), page = UInt64(WAL.pageSize)
        func headerSize(_ at: UInt64) -> UInt64 { at % seg < page ? UInt64(WAL.longHeaderSize) : UInt64(WAL.shortHeaderSize) }
        if p % page < headerSize(p) { p = p - p % page + headerSize(p) }
        // The record's bytes, and a short header for each page boundary they cross.
        var end = p, left = UInt64(WAL.recordSize)
        while left > 0 {
            let room = page - end % page
            let n = min(room, left)
            end += n
            left -= n
            if left > 0 { end += UInt64(WAL.shortHeaderSize) }
        }
        if (end - 1) / seg != p / seg { p = (p / seg + 1) * seg + UInt64(WAL.longHeaderSize) }
        return LSN(p)
    }

    /// The segment file's name: timeline, then the segment number as log id and segment in it.
    var segmentFileName: String {
        let segno = location.rawValue / UInt64(segmentSize)
        let perLogId = UInt64(0x1_0000_0000) / UInt64(segmentSize)
        return Self.hex8(UInt64(timeLine)) + Self.hex8(segno / perLogId) + Self.hex8(segno % perLogId)
    }

    static func hex8(_ v: UInt64) -> String {
        let s = String(v, radix: 16, uppercase: true)
        return String(repeating: "0", count: max(0, 8 - s.count)) + s
    }

    /// The XLogRecord: header (xl_tot_len, xl_xid 0, xl_prev 0, xl_info, xl_rmid, 2 pad, xl_crc), then
    /// XLR_BLOCK_ID_DATA_SHORT, the main data length and the CheckPoint.
    var record: [UInt8] {
        var r = [UInt8](repeating: 0, count: WAL.recordHeaderSize)
        CheckPointLayout.setU32(&r, 0, UInt32(WAL.recordSize))
        // xl_xid = 0; xl_prev = 0 (only checked to be below the record's own location on a first read).
        r[16] = WAL.infoCheckpointShutdown
        r[17] = WAL.rmXLog
        r += [WAL.blockIdDataShort, UInt8(CheckPointLayout.size)] + checkpoint
        // CRC-32C of everything after the header, then of the header up to xl_crc.
        var crc = r.withUnsafeBytes { crc32c(0, UnsafeRawBufferPointer(rebasing: $0[WAL.recordHeaderSize...])) }
        crc = r.withUnsafeBytes { crc32c(crc, UnsafeRawBufferPointer(rebasing: $0[0..<20])) }
        CheckPointLayout.setU32(&r, 20, crc)
        return r
    }

    /// Writes the whole segment (zeros but for the page headers and the record) through `write`, a
    /// page at a time.
    func writeSegment(_ write: ([UInt8]) throws -> Void) throws {
        let page = UInt64(WAL.pageSize)
        let segmentStart = location.rawValue / UInt64(segmentSize) * UInt64(segmentSize)
        let record = self.record
        // (page start, offset in page, record bytes) pieces of the record.
        var pieces: [UInt64: (offset: Int, bytes: ArraySlice<UInt8>, remainingBefore: Int)] = [:]
        var at = location.rawValue, done = 0
        while done < record.count {
            let pageStart = at - at % page
            let offset = Int(at % page)
            let n = min(WAL.pageSize - offset, record.count - done)
            pieces[pageStart] = (offset, record[done..<done + n], record.count - done)
            done += n
            at = pageStart + page + UInt64(WAL.shortHeaderSize)
        }
        let zero = [UInt8](repeating: 0, count: WAL.pageSize)
        for pageStart in stride(from: segmentStart, to: segmentStart + UInt64(segmentSize), by: Int(page)) {
            let first = pageStart == segmentStart
            let piece = pieces[pageStart]
            guard first || piece != nil else {
                try write(zero)
                continue
            }
            var p = zero
            var info: UInt16 = first ? WAL.longHeader : 0
            var remaining: UInt32 = 0
            let headerSize = first ? WAL.longHeaderSize : WAL.shortHeaderSize
            if let piece, pageStart != location.rawValue - location.rawValue % page {
                info |= WAL.firstIsContRecord
                remaining = UInt32(piece.remainingBefore)
            } else if let piece, piece.offset > headerSize {
                // The page of P: its bytes before P pass for the end of an earlier record, so that
                // readers scanning from the page start (XLogFindNextRecord, pg_waldump -s) land on P.
                info |= WAL.firstIsContRecord
                remaining = UInt32(piece.offset - headerSize)
            }
            p[0] = UInt8(truncatingIfNeeded: WAL.magic)
            p[1] = UInt8(truncatingIfNeeded: WAL.magic >> 8)
            p[2] = UInt8(truncatingIfNeeded: info)
            p[3] = UInt8(truncatingIfNeeded: info >> 8)
            CheckPointLayout.setU32(&p, 4, timeLine)
            CheckPointLayout.setU64(&p, 8, pageStart)
            CheckPointLayout.setU32(&p, 16, remaining)
            if first {
                CheckPointLayout.setU64(&p, 24, systemIdentifier)
                CheckPointLayout.setU32(&p, 32, UInt32(segmentSize))
                CheckPointLayout.setU32(&p, 36, UInt32(WAL.pageSize))
            }
            if let piece { p.replaceSubrange(piece.offset..<piece.offset + piece.bytes.count, with: piece.bytes) }
            try write(p)
        }
    }
}

extension DataDirectoryBackup {
    /// Where the WAL of a PostgreSQL started on a fullbackup at `lsn` begins: the LSN of the backup's
    /// shutdown checkpoint record (P of ShutdownCheckpoint), the first record that server's WAL holds.
    /// `pgControl` is the stored control file (for the WAL segment size; 16 MiB when unreadable).
    public static func walStart(forBackupAt lsn: LSN, pgControl: [UInt8]?) -> LSN {
        var segmentSize = 16 << 20
        if let c = pgControl, c.count >= ShutdownCheckpoint.Control.xlogSegmentSize + 4 {
            let s = Int(CheckPointLayout.u32(c, ShutdownCheckpoint.Control.xlogSegmentSize))
            if s >= 1 << 20, s <= 1 << 30, s & (s - 1) == 0 { segmentSize = s }
        }
        return ShutdownCheckpoint.recordLocation(after: lsn, segmentSize: segmentSize)
    }
}
