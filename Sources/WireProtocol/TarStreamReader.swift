// A push parser for tar streams (the archives of a base backup), delivering file contents in pieces as
// they arrive: nothing but one 512-byte header (and a bounded long-name record) is buffered.
//
//   archive = (header block, data blocks padded to 512)*, then two zero blocks (end marker)
//   header (512 bytes, ASCII fields; numbers are octal text, or base-256 when the first byte has 0x80):
//     name      0..<100      mode 100..<108    uid 108..<116      gid 116..<124
//     size      124..<136    mtime 136..<148   checksum 148..<156 (sum of all header bytes, these 8 as spaces)
//     typeflag  156          linkname 157..<257
//     magic     257..<263 ("ustar\0" POSIX, "ustar " GNU)   version 263..<265
//     uname 265..<297  gname 297..<329  devmajor 329..<337  devminor 337..<345
//     prefix    345..<500 (POSIX ustar only: the name is prefix + "/" + name)
//   typeflag: '0' or NUL file ('0' with a name ending in '/' is an old-style directory), '1' hard link,
//             '2' symlink, '5' directory,
//             'L' GNU long name (data = the next entry's name), 'K' GNU long link name,
//             'x' pax extended header (records "len key=value\n"; path, linkpath and size are used),
//             'g' pax global header (ignored)
//
// The end marker is optional: PostgreSQL 15's server-side archives stop after the last entry and leave
// the terminator to the client, so `finish()` accepts a stream that ends on an entry boundary.

/// One entry of a tar archive.
public struct TarEntry: Sendable, Equatable {
    /// The kind of entry. Names never end in '/' (a directory's trailing slash is removed).
    public enum Kind: Sendable, Equatable {
        case file
        case directory
        case symlink
        case hardlink
        /// Any other typeflag (character/block device, FIFO, ...), with its byte.
        case other(UInt8)
    }

    public var name: String
    public var kind: Kind
    /// The number of content bytes (0 for directories and links).
    public var size: UInt64
    /// Permission bits (e.g. 0o600).
    public var mode: UInt32
    /// The target of a symlink or hard link.
    public var linkName: String
    /// Seconds since 1970-01-01.
    public var modificationTime: Int64
}

/// What a `TarStreamReader` reports. `data` views are valid only during the consumer call.
public enum TarEvent {
    case entryStart(TarEntry)
    case data(UnsafeRawBufferPointer)
    case entryEnd(TarEntry)
    /// The end marker (two zero blocks) was read; bytes after it are ignored.
    case endOfArchive
}

/// Turns a stream of tar bytes, fed in pieces of any size, into entries with incremental contents.
public struct TarStreamReader {
    public static let blockSize = 512
    /// The longest GNU long name or pax header accepted.
    public static let maxMetadataBytes = 1 << 20

    private enum State {
        case header
        /// Content bytes of `entry` still to come, then `padding` bytes to skip.
        case data(entry: TarEntry, remaining: UInt64, padding: Int)
        /// A 'L', 'K' or 'x' record being collected.
        case metadata(type: UInt8, remaining: Int, padding: Int)
        case padding(remaining: Int)
        case ended
    }

    private var state = State.header
    private var header: [UInt8] = []
    private var metadata: [UInt8] = []
    private var zeroBlocks = 0
    private var pendingName: String?
    private var pendingLinkName: String?
    private var pendingSize: UInt64?
    /// Bytes consumed so far (for error messages).
    public private(set) var offset: UInt64 = 0

    public init() {
        header.reserveCapacity(Self.blockSize)
    }

    /// True once the end marker has been read.
    public var isAtEnd: Bool {
        if case .ended = state { return true }
        return false
    }

    /// Feeds the next bytes of the stream; `consumer` receives the events they complete. Throws
    /// `PGError` with code `corruption` for a malformed archive.
    public mutating func feed(_ bytes: UnsafeRawBufferPointer, _ consumer: (TarEvent) throws -> Void) throws {
        var i = 0
        while i < bytes.count {
            switch state {
            case .ended:
                offset += UInt64(bytes.count - i)
                return
            case .header:
                let take = min(Self.blockSize - header.count, bytes.count - i)
                header.append(contentsOf: UnsafeRawBufferPointer(rebasing: bytes[i..<(i + take)]))
                i += take
                offset += UInt64(take)
                if header.count == Self.blockSize {
                    try processHeader(consumer)
                    header.removeAll(keepingCapacity: true)
                }
            case .data(let entry, let remaining, let padding):
                let take = Int(min(remaining, UInt64(bytes.count - i)))
                try consumer(.data(UnsafeRawBufferPointer(rebasing: bytes[i..<(i + take)])))
                i += take
                offset += UInt64(take)
                if remaining == UInt64(take) {
                    try consumer(.entryEnd(entry))
                    state = padding > 0 ? .padding(remaining: padding) : .header
                } else {
                    state = .data(entry: entry, remaining: remaining - UInt64(take), padding: padding)
                }
            case .metadata(let type, let remaining, let padding):
                let take = min(remaining, bytes.count - i)
                metadata.append(contentsOf: UnsafeRawBufferPointer(rebasing: bytes[i..<(i + take)]))
                i += take
                offset += UInt64(take)
                if remaining == take {
                    try applyMetadata(type)
                    state = padding > 0 ? .padding(remaining: padding) : .header
                } else {
                    state = .metadata(type: type, remaining: remaining - take, padding: padding)
                }
            case .padding(let remaining):
                let take = min(remaining, bytes.count - i)
                i += take
                offset += UInt64(take)
                state = remaining == take ? .header : .padding(remaining: remaining - take)
            }
        }
    }

    public mutating func feed(_ bytes: [UInt8], _ consumer: (TarEvent) throws -> Void) throws {
        try bytes.withUnsafeBytes { try feed($0, consumer) }
    }

    /// Declares the end of the input: fails unless the stream stopped at an entry boundary (with or
    /// without the end marker).
    public func finish() throws {
        switch state {
        case .ended: return
        case .header where header.isEmpty && pendingName == nil && pendingLinkName == nil && pendingSize == nil: return
        case .header:
            throw corrupt("the archive ends inside a header block or after a long-name record", at: offset)
        case .data(let entry, let remaining, _):
            throw corrupt("the archive ends \(remaining) bytes before the end of \"\(entry.name)\"", at: offset)
        case .metadata, .padding:
            throw corrupt("the archive ends inside an entry", at: offset)
        }
    }

    // MARK: - Headers

    private func corrupt(_ what: String, at position: UInt64) -> PGError {
        PGError(.corruption, "malformed tar stream at byte \(position): \(what)")
    }

    private mutating func processHeader(_ consumer: (TarEvent) throws -> Void) throws {
        let blockOffset = offset - UInt64(Self.blockSize)
        if header.allSatisfy({ $0 == 0 }) {
            zeroBlocks += 1
            if zeroBlocks == 2 {
                state = .ended
                try consumer(.endOfArchive)
            }
            return
        }
        if zeroBlocks > 0 {
            throw corrupt("a header follows a single zero block", at: blockOffset)
        }
        try verifyChecksum(at: blockOffset)

        let type = header[156]
        let size = try number(124, 12, "size", at: blockOffset)
        let padding = Int((UInt64(Self.blockSize) - size % UInt64(Self.blockSize)) % UInt64(Self.blockSize))

        switch type {
        case UInt8(ascii: "L"), UInt8(ascii: "K"), UInt8(ascii: "x"), UInt8(ascii: "g"):
            guard size <= UInt64(Self.maxMetadataBytes) else {
                throw corrupt("a \(Character(UnicodeScalar(type))) record of \(size) bytes (limit \(Self.maxMetadataBytes))", at: blockOffset)
            }
            metadata.removeAll(keepingCapacity: true)
            state = size == 0 ? .header : .metadata(type: type, remaining: Int(size), padding: padding)
            if size == 0 { try applyMetadata(type) }
            return
        default:
            break
        }

        var kind: TarEntry.Kind
        switch type {
        case UInt8(ascii: "0"), 0, UInt8(ascii: "7"): kind = .file
        case UInt8(ascii: "1"): kind = .hardlink
        case UInt8(ascii: "2"): kind = .symlink
        case UInt8(ascii: "5"): kind = .directory
        default: kind = .other(type)
        }
        var name = pendingName ?? headerName()
        // Directory names often end in '/' (and old tars mark directories only so); names are given
        // without it.
        if pendingName == nil, kind == .file, name.hasSuffix("/") { kind = .directory }
        while name.count > 1, name.hasSuffix("/") { name.removeLast() }
        let entrySize = pendingSize ?? size
        // Only regular files (and unknown kinds, conservatively) carry content blocks.
        let contentSize: UInt64
        switch kind {
        case .file, .other: contentSize = entrySize
        default: contentSize = 0
        }
        let entry = TarEntry(
            name: name, kind: kind, size: contentSize,
            mode: UInt32(truncatingIfNeeded: try number(100, 8, "mode", at: blockOffset)),
            linkName: pendingLinkName ?? field(157, 100),
            modificationTime: Int64(truncatingIfNeeded: try number(136, 12, "mtime", at: blockOffset)))
        pendingName = nil
        pendingLinkName = nil
        pendingSize = nil

        try consumer(.entryStart(entry))
        if contentSize == 0 {
            try consumer(.entryEnd(entry))
            state = .header
        } else {
            let contentPadding = Int((UInt64(Self.blockSize) - contentSize % UInt64(Self.blockSize)) % UInt64(Self.blockSize))
            state = .data(entry: entry, remaining: contentSize, padding: contentPadding)
        }
    }

    private func verifyChecksum(at position: UInt64) throws {
        let stored = try number(148, 8, "checksum", at: position)
        var unsigned: UInt64 = 0
        var signed: Int64 = 0
        for (index, byte) in header.enumerated() {
            let value = (148..<156).contains(index) ? UInt8(ascii: " ") : byte
            unsigned += UInt64(value)
            signed += Int64(Int8(bitPattern: value))
        }
        // Some old tar writers summed signed chars; accept either.
        guard stored == unsigned || Int64(bitPattern: stored) == signed else {
            throw corrupt("header checksum mismatch (stored \(stored), computed \(unsigned))", at: position)
        }
    }

    /// A NUL-terminated text field.
    private func field(_ start: Int, _ length: Int) -> String {
        let bytes = header[start..<(start + length)]
        let end = bytes.firstIndex(of: 0) ?? bytes.endIndex
        return String(decoding: bytes[start..<end], as: UTF8.self)
    }

    /// The entry name: POSIX ustar headers may split it into prefix + "/" + name.
    private func headerName() -> String {
        let name = field(0, 100)
        let isPOSIXUstar = header[257..<263].elementsEqual("ustar\0".utf8)
        if isPOSIXUstar {
            let prefix = field(345, 155)
            if !prefix.isEmpty { return prefix + "/" + name }
        }
        return name
    }

    /// A numeric field: octal text (leading spaces, ending at NUL or space), or base-256 big-endian
    /// when the first byte has its high bit set.
    private func number(_ start: Int, _ length: Int, _ what: String, at position: UInt64) throws -> UInt64 {
        let bytes = header[start..<(start + length)]
        if bytes.first! & 0x80 != 0 {
            guard bytes.first! & 0x40 == 0 else { throw corrupt("negative base-256 \(what)", at: position) }
            var value: UInt64 = UInt64(bytes.first! & 0x3F)
            for byte in bytes.dropFirst() {
                guard value >> 56 == 0 else { throw corrupt("base-256 \(what) too large", at: position) }
                value = value << 8 | UInt64(byte)
            }
            return value
        }
        var value: UInt64 = 0
        var index = bytes.startIndex
        while index < bytes.endIndex, bytes[index] == UInt8(ascii: " ") { index += 1 }
        while index < bytes.endIndex, bytes[index] != 0, bytes[index] != UInt8(ascii: " ") {
            let byte = bytes[index]
            guard (UInt8(ascii: "0")...UInt8(ascii: "7")).contains(byte), value >> 61 == 0 else {
                throw corrupt("invalid octal \(what) field", at: position)
            }
            value = value << 3 | UInt64(byte - UInt8(ascii: "0"))
            index += 1
        }
        return value
    }

    // MARK: - Long names and pax headers

    private mutating func applyMetadata(_ type: UInt8) throws {
        switch type {
        case UInt8(ascii: "L"):
            pendingName = Self.trimmedText(metadata)
        case UInt8(ascii: "K"):
            pendingLinkName = Self.trimmedText(metadata)
        case UInt8(ascii: "x"):
            try parsePax()
        default:
            break  // 'g': global pax headers do not name entries.
        }
        metadata.removeAll(keepingCapacity: true)
    }

    private static func trimmedText(_ bytes: [UInt8]) -> String {
        let end = bytes.firstIndex(of: 0) ?? bytes.endIndex
        return String(decoding: bytes[..<end], as: UTF8.self)
    }

    /// Records "length key=value\n", where length counts the whole record in bytes.
    private mutating func parsePax() throws {
        var i = 0
        while i < metadata.count {
            guard let space = metadata[i...].firstIndex(of: UInt8(ascii: " ")),
                  let length = Int(String(decoding: metadata[i..<space], as: UTF8.self)),
                  length > space - i + 1, i + length <= metadata.count,
                  metadata[i + length - 1] == UInt8(ascii: "\n"),
                  let equals = metadata[(space + 1)..<(i + length)].firstIndex(of: UInt8(ascii: "="))
            else {
                throw corrupt("malformed pax extended header record", at: offset)
            }
            let key = String(decoding: metadata[(space + 1)..<equals], as: UTF8.self)
            let value = String(decoding: metadata[(equals + 1)..<(i + length - 1)], as: UTF8.self)
            switch key {
            case "path": pendingName = value
            case "linkpath": pendingLinkName = value
            case "size":
                guard let size = UInt64(value) else { throw corrupt("pax size \"\(value)\" is not a number", at: offset) }
                pendingSize = size
            default: break
            }
            i += length
        }
    }
}
