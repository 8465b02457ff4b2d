/// A streaming reader of tar archives (ustar, as pg_basebackup writes them; also GNU long names
/// and pax `path`/`size` records) that hands entries to a `TarEntryConsumer` while the bytes arrive,
/// in chunks of any size. Entry contents are never buffered whole.
///
/// Layout: 512-byte header blocks (name[100] @0, size[12] @124 octal or base-256, chksum[8] @148,
/// typeflag @156, magic "ustar" @257, prefix[155] @345), each followed by the entry's data padded to
/// 512 bytes; two zero blocks end the archive. Header checksums are verified.
public final class TarStreamParser {
    public let consumer: any TarEntryConsumer
    /// Prepended to every entry name (for a tablespace tar: `pg_tblspc/<oid>/`).
    public let prefix: String
    /// Whether the end-of-archive marker was seen.
    public private(set) var isComplete = false

    private enum State {
        case header
        case data(remaining: Int64, padding: Int)
        case padding(Int)
        /// A GNU long name ('L') or pax header ('x') body being collected.
        case meta(kind: UInt8, remaining: Int64, padding: Int)
        case done
    }

    private var state = State.header
    private var headerBuffer: [UInt8] = []
    private var metaBuffer: [UInt8] = []
    private var longName: String?
    private var paxPath: String?
    private var paxSize: Int64?
    private var zeroBlocks = 0

    public init(consumer: any TarEntryConsumer, prefix: String = "") {
        self.consumer = consumer
        self.prefix = prefix
    }

    public func feed(_ bytes: [UInt8]) throws {
        try bytes.withUnsafeBytes { try feed($0) }
    }

    public func feed(_ bytes: UnsafeRawBufferPointer) throws {
        var rest = bytes
        while !rest.isEmpty {
            switch state {
            case .done:
                // Whatever follows the end marker (pg_basebackup pads the archive) is ignored.
                return
            case .header:
                let n = min(512 - headerBuffer.count, rest.count)
                headerBuffer.append(contentsOf: rest[0..<n])
                rest = UnsafeRawBufferPointer(rebasing: rest[n...])
                if headerBuffer.count == 512 {
                    let header = headerBuffer
                    headerBuffer.removeAll(keepingCapacity: true)
                    try handleHeader(header)
                }
            case .data(let remaining, let padding):
                let n = Int(min(Int64(rest.count), remaining))
                if n > 0 { try consumer.data(UnsafeRawBufferPointer(rebasing: rest[0..<n])) }
                rest = UnsafeRawBufferPointer(rebasing: rest[n...])
                if remaining == Int64(n) {
                    try consumer.end()
                    state = padding > 0 ? .padding(padding) : .header
                } else {
                    state = .data(remaining: remaining - Int64(n), padding: padding)
                }
            case .padding(let left):
                let n = min(left, rest.count)
                rest = UnsafeRawBufferPointer(rebasing: rest[n...])
                state = left == n ? .header : .padding(left - n)
            case .meta(let kind, let remaining, let padding):
                let n = Int(min(Int64(rest.count), remaining))
                metaBuffer.append(contentsOf: rest[0..<n])
                rest = UnsafeRawBufferPointer(rebasing: rest[n...])
                if remaining == Int64(n) {
                    try finishMeta(kind)
                    state = padding > 0 ? .padding(padding) : .header
                } else {
                    state = .meta(kind: kind, remaining: remaining - Int64(n), padding: padding)
                }
            }
        }
    }

    /// Checks that the archive ended cleanly (no entry cut short).
    public func finish() throws {
        switch state {
        case .done, .header where headerBuffer.isEmpty:
            return
        default:
            throw IngestError(.malformed, "tar archive ends in the middle of an entry")
        }
    }

    private func handleHeader(_ h: [UInt8]) throws {
        if h.allSatisfy({ $0 == 0 }) {
            zeroBlocks += 1
            if zeroBlocks == 2 {
                isComplete = true
                state = .done
            }
            return
        }
        zeroBlocks = 0
        let stored = parseOctal(h[148..<156])
        var sum: UInt64 = 0
        for (i, b) in h.enumerated() { sum += (148..<156).contains(i) ? 32 : UInt64(b) }
        guard stored == sum else {
            throw IngestError(.malformed, "tar header checksum \(stored.map(String.init) ?? "unreadable") does not match \(sum)")
        }
        guard var size = parseSize(h[124..<136]) else { throw IngestError(.malformed, "tar header has an unreadable size") }
        let type = h[156]
        if let s = paxSize { size = s }
        let padding = Int((512 - size % 512) % 512)
        if type == UInt8(ascii: "L") || type == UInt8(ascii: "x") {
            guard size <= 1 << 20 else { throw IngestError(.malformed, "tar meta entry of \(size) bytes") }
            metaBuffer = []
            paxSize = nil
            state = size == 0 ? .header : .meta(kind: type, remaining: size, padding: padding)
            if size == 0 { try finishMeta(type) }
            return
        }
        if type == UInt8(ascii: "g") {
            // A pax global header: nothing import needs.
            state = size == 0 ? .header : .data(remaining: size, padding: padding)
            try consumer.begin(name: "pax_global_header", size: size, type: .other)
            if size == 0 { try consumer.end() }
            return
        }
        var name = longName ?? paxPath ?? {
            let base = cString(h[0..<100])
            let isUstar = h[257..<262].elementsEqual("ustar".utf8)
            let pre = isUstar ? cString(h[345..<500]) : ""
            return pre.isEmpty ? base : pre + "/" + base
        }()
        longName = nil
        paxPath = nil
        paxSize = nil
        if name.hasPrefix("./") { name.removeFirst(2) }
        let kind: TarEntryType
        switch type {
        case 0, UInt8(ascii: "0"), UInt8(ascii: "7"): kind = .file
        case UInt8(ascii: "5"): kind = .directory
        case UInt8(ascii: "2"), UInt8(ascii: "1"): kind = .symlink
        default: kind = .other
        }
        let entrySize = kind == .file || kind == .other ? size : 0
        try consumer.begin(name: prefix + name, size: entrySize, type: kind)
        if entrySize == 0 {
            try consumer.end()
            state = .header
        } else {
            state = .data(remaining: entrySize, padding: padding)
        }
    }

    private func finishMeta(_ kind: UInt8) throws {
        if kind == UInt8(ascii: "L") {
            longName = cString(metaBuffer[...])
        } else {
            // pax records: "<len> <key>=<value>\n"
            var i = 0
            let b = metaBuffer
            while i < b.count {
                guard let space = b[i...].firstIndex(of: UInt8(ascii: " ")),
                      let len = Int(String(decoding: b[i..<space], as: UTF8.self)), len > 0, i + len <= b.count else {
                    throw IngestError(.malformed, "unreadable pax header record")
                }
                let record = b[(space + 1)..<(i + len - 1)]
                if let eq = record.firstIndex(of: UInt8(ascii: "=")) {
                    let key = String(decoding: record[record.startIndex..<eq], as: UTF8.self)
                    let value = String(decoding: record[(eq + 1)...], as: UTF8.self)
                    if key == "path" { paxPath = value }
                    if key == "size" { paxSize = Int64(value) }
                }
                i += len
            }
        }
        metaBuffer = []
    }

    private func cString(_ bytes: ArraySlice<UInt8>) -> String {
        let end = bytes.firstIndex(of: 0) ?? bytes.endIndex
        return String(decoding: bytes[bytes.startIndex..<end], as: UTF8.self)
    }

    private func parseOctal(_ bytes: ArraySlice<UInt8>) -> UInt64? {
        var v: UInt64 = 0
        var seen = false
        for b in bytes {
            if b == 0 || b == UInt8(ascii: " ") {
                if seen { break } else { continue }
            }
            guard (UInt8(ascii: "0")...UInt8(ascii: "7")).contains(b) else { return nil }
            v = v << 3 | UInt64(b - UInt8(ascii: "0"))
            seen = true
        }
        return seen ? v : 0
    }

    /// Octal, or base-256 (GNU) when the first byte has its high bit set.
    private func parseSize(_ bytes: ArraySlice<UInt8>) -> Int64? {
        if let first = bytes.first, first & 0x80 != 0 {
            var v: UInt64 = UInt64(first & 0x7F)
            for b in bytes.dropFirst() {
                guard v >> 55 == 0 else { return nil }
                v = v << 8 | UInt64(b)
            }
            return Int64(exactly: v)
        }
        return parseOctal(bytes).flatMap { Int64(exactly: $0) }
    }
}
