import LSM

/// One block a record touches (a "block reference"), with its image and data restored.
///
/// Its header in the record, after the record header:
///
///     id:          u8   // 0...32, strictly ascending within a record
///     fork_flags:  u8   // low 4 bits: fork; HAS_IMAGE 0x10, HAS_DATA 0x20, WILL_INIT 0x40,
///                       // SAME_REL 0x80
///     data_length: u16  // bytes of rmgr data for this block (0 exactly when HAS_DATA is clear)
///     [image header, if HAS_IMAGE: see `BlockImage`]
///     [spcNode u32, dbNode u32, relNode u32, unless SAME_REL: then the previous reference's]
///     block:       u32
///
/// The payloads follow all headers, block by block in id order: the image's stored bytes, then the
/// data bytes.
public struct BlockReference: Equatable, Sendable {
    /// The high bits of fork_flags.
    public struct Flags: OptionSet, Sendable, Hashable {
        public var rawValue: UInt8
        public init(rawValue: UInt8) { self.rawValue = rawValue }
        public static let hasImage = Flags(rawValue: 0x10)
        public static let hasData = Flags(rawValue: 0x20)
        /// BKPBLOCK_WILL_INIT: redo re-initialises the page; it needs no earlier version.
        public static let willInit = Flags(rawValue: 0x40)
        /// BKPBLOCK_SAME_REL: the relation was omitted because it equals the previous reference's.
        public static let sameRelation = Flags(rawValue: 0x80)
    }

    /// XLR_MAX_BLOCK_ID.
    public static let maximumId: UInt8 = 32
    static let forkMask: UInt8 = 0x0F

    public var id: UInt8
    public var flags: Flags
    public var relation: RelFileNode
    public var fork: ForkNumber
    public var block: BlockNumber
    /// The full-page image, restored to 8192 bytes, when the reference has one.
    public var image: BlockImage?
    /// Where the rmgr's per-block data lies in the record's bytes (empty without HAS_DATA); read it
    /// with `DecodedRecord.data(of:)`.
    public var dataRange: Range<Int>

    public init(id: UInt8, flags: Flags, relation: RelFileNode, fork: ForkNumber, block: BlockNumber,
                image: BlockImage?, dataRange: Range<Int>) {
        self.id = id
        self.flags = flags
        self.relation = relation
        self.fork = fork
        self.block = block
        self.image = image
        self.dataRange = dataRange
    }

    public var hasImage: Bool { flags.contains(.hasImage) }
    public var willInit: Bool { flags.contains(.willInit) }

    /// A reference as its header describes it, before the payloads are read.
    struct Header {
        var id: UInt8
        var flags: Flags
        var relation: RelFileNode
        var fork: ForkNumber
        var block: BlockNumber
        var dataLength: Int
        var image: BlockImage.Header?
    }

    /// Reads one reference header, its id byte already consumed. `previousRelation` is the relation
    /// of the reference before, for SAME_REL.
    static func readHeader(id: UInt8, _ r: inout LittleEndianReader, previousRelation: RelFileNode?,
                           record: LSN) throws -> Header {
        let forkFlags = try r.u8()
        let flags = Flags(rawValue: forkFlags & ~forkMask)
        guard let fork = ForkNumber(rawValue: forkFlags & forkMask) else {
            throw WALError.corrupt("block reference #\(id) has invalid fork number \(forkFlags & forkMask)", record: record)
        }
        let dataLength = Int(try r.u16())
        if flags.contains(.hasData) && dataLength == 0 {
            throw WALError.corrupt("block reference #\(id) has HAS_DATA set but no data", record: record)
        }
        if !flags.contains(.hasData) && dataLength != 0 {
            throw WALError.corrupt("block reference #\(id) has HAS_DATA clear but data length \(dataLength)", record: record)
        }
        let image = flags.contains(.hasImage) ? try BlockImage.readHeader(&r, blockId: id, record: record) : nil
        let relation: RelFileNode
        if flags.contains(.sameRelation) {
            guard let previousRelation else {
                throw WALError.corrupt("block reference #\(id) has SAME_REL set but no reference before it", record: record)
            }
            relation = previousRelation
        } else {
            relation = RelFileNode(spcNode: try r.u32(), dbNode: try r.u32(), relNode: try r.u32())
        }
        let block = BlockNumber(try r.u32())
        return Header(id: id, flags: flags, relation: relation, fork: fork, block: block,
                      dataLength: dataLength, image: image)
    }
}
