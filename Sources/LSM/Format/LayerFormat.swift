/// Constants shared by the layer file structures (format-spec.md, "Layer files").
///
/// File map: [LayerHeader] [data block]* [index block]* [index directory] [LayerFooter]
public enum LayerFormat {
    /// "SWPSLAYR": the first and the last 8 bytes of every layer file.
    public static let magic: [UInt8] = Array("SWPSLAYR".utf8)
    /// Version 1: the first format. Version 2: the same layout; blocks may also use compression 3
    /// (LZ4 after a stride-delta filter), which a version 1 file never holds. Version 3: index
    /// blocks may also use compression 4 (LZ4 after the index-entry transform).
    public static let currentVersion: UInt16 = 3
    public static let supportedVersions: ClosedRange<UInt16> = 1...3

    /// Target uncompressed payload of a data block; a value larger than this gets a block of its own.
    public static let defaultDataBlockBytes = 8192
    /// Index blocks hold at most this many entries so that one fits a 4 KiB read.
    public static let indexEntriesPerBlock = (4096 - 4 - BlockTrailer.size) / IndexEntry.size
    /// Index blocks with a longer payload are compressed (compression 4) when compression is on and
    /// that helps. (Version 2 writers left index blocks of up to 1024 bytes raw.)
    public static let indexCompressionMinimumPayload = 64
    /// Largest block the reader accepts (a sanity bound for corrupt handles).
    public static let maxBlockBytes = 64 << 20
    /// Largest value the writer accepts: one value alone in a block stays within `maxBlockBytes`.
    public static let maxValueBytes = 16 << 20
}

/// Kinds of layer file. 0 is reserved as invalid.
public enum LayerKind: UInt8, Sendable, CustomStringConvertible {
    case image = 1
    case delta = 2

    public var description: String { self == .image ? "image" : "delta" }
}
