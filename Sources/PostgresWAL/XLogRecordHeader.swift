import LSM

/// The fixed header that starts every WAL record (XLogRecord).
///
///     xl_tot_len: u32  // the whole record's length, this header included, page headers excluded
///     xl_xid:     u32  // the writing transaction (0 if none)
///     xl_prev:    u64  // the previous record's start LSN
///     xl_info:    u8   // low 4 bits: flags for the record machinery; high 4 bits: the rmgr's opcode
///     xl_rmid:    u8   // resource manager
///     padding:    2 bytes
///     xl_crc:     u32  // CRC-32C of bytes [24, xl_tot_len) then of bytes [0, 20)
///                      // 24 bytes in all, little-endian
public struct XLogRecordHeader: Equatable, Sendable {
    public static let size = 24
    /// Offset of xl_crc: the CRC covers the header up to here.
    public static let crcOffset = 20

    /// XLR_INFO_MASK: the bits of xl_info that belong to the record machinery, not the rmgr.
    public static let infoMask: UInt8 = 0x0F
    /// XLOG_SWITCH, the XLOG rmgr's opcode for a segment switch.
    public static let xlogSwitchInfo: UInt8 = 0x40

    public var totalLength: UInt32
    public var xid: TransactionId
    public var prev: LSN
    public var info: UInt8
    public var resourceManager: ResourceManagerId
    public var crc: UInt32

    public init(totalLength: UInt32, xid: TransactionId, prev: LSN, info: UInt8,
                resourceManager: ResourceManagerId, crc: UInt32) {
        self.totalLength = totalLength
        self.xid = xid
        self.prev = prev
        self.info = info
        self.resourceManager = resourceManager
        self.crc = crc
    }

    /// Parses the first 24 bytes of `bytes`. Checks nothing beyond length; see `validate`.
    public init(parsing bytes: UnsafeRawBufferPointer) throws {
        var r = LittleEndianReader(bytes, context: "WAL record header")
        totalLength = try r.u32()
        xid = TransactionId(try r.u32())
        prev = LSN(try r.u64())
        info = try r.u8()
        resourceManager = ResourceManagerId(try r.u8())
        try r.skip(2)
        crc = try r.u32()
    }

    public init(parsing bytes: [UInt8]) throws {
        self = try bytes.withUnsafeBytes { try XLogRecordHeader(parsing: $0) }
    }

    public func encode(into out: inout [UInt8]) {
        out.appendLittleEndian(totalLength)
        out.appendLittleEndian(xid.rawValue)
        out.appendLittleEndian(prev.rawValue)
        out.append(info)
        out.append(resourceManager.rawValue)
        out.appendLittleEndian(UInt16(0))
        out.appendLittleEndian(crc)
    }

    /// The rmgr's opcode bits of xl_info.
    public var opcode: UInt8 { info & ~Self.infoMask }

    /// Whether this is XLOG_SWITCH: the rest of its segment is padding.
    public var isSwitch: Bool { resourceManager == .xlog && opcode == Self.xlogSwitchInfo }

    /// The checks PostgreSQL makes on a header before trusting it (ValidXLogRecordHeader): a length
    /// that holds at least the header, a known resource manager, and a prev-link that points back to
    /// the record before (exactly, when the caller knows it; else merely backwards).
    public func validate(at lsn: LSN, previousRecord: LSN?, maximumLength: Int) throws {
        guard totalLength >= UInt32(Self.size) else {
            throw WALError.corrupt("invalid record length \(totalLength): a record holds at least its \(Self.size)-byte header", record: lsn)
        }
        guard Int(totalLength) <= maximumLength else {
            throw WALError.corrupt("record length \(totalLength) exceeds the limit of \(maximumLength) bytes", record: lsn)
        }
        guard resourceManager.isValid else {
            throw WALError.corrupt("invalid resource manager id \(resourceManager.rawValue)", record: lsn)
        }
        if let previousRecord {
            guard prev == previousRecord else {
                throw WALError.corrupt("record has prev-link \(prev) but the previous record starts at \(previousRecord)", record: lsn)
            }
        } else {
            guard prev < lsn else {
                throw WALError.corrupt("record has prev-link \(prev), which does not point backwards", record: lsn)
            }
        }
    }
}
