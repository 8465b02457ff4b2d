/// Identifies a layer file: its kind, chunk and LSN range, and so its file name.
///
/// Names: `CHUNK__START-END.delta` and `CHUNK__LSN.image`, LSNs as 16 upper-case hex digits, CHUNK as
/// `ChunkId.description`. At most one image layer exists per (chunk, LSN) and delta layers of one
/// chunk never overlap, so names are unique within a timeline directory.
public struct LayerDescriptor: Hashable, Comparable, Sendable, CustomStringConvertible {
    public var kind: LayerKind
    public var chunk: ChunkId
    public var lsnStart: LSN
    /// Exclusive; an image layer at LSN X has lsnEnd X + 1.
    public var lsnEnd: LSN

    public init(kind: LayerKind, chunk: ChunkId, lsnStart: LSN, lsnEnd: LSN) {
        self.kind = kind
        self.chunk = chunk
        self.lsnStart = lsnStart
        self.lsnEnd = lsnEnd
    }

    public static func image(_ chunk: ChunkId, at lsn: LSN) -> LayerDescriptor {
        LayerDescriptor(kind: .image, chunk: chunk, lsnStart: lsn, lsnEnd: lsn.advanced(by: 1))
    }

    public var fileName: String {
        func hex(_ l: LSN) -> String {
            let s = String(l.rawValue, radix: 16, uppercase: true)
            return String(repeating: "0", count: 16 - s.count) + s
        }
        switch kind {
        case .image: return "\(chunk)__\(hex(lsnStart)).image"
        case .delta: return "\(chunk)__\(hex(lsnStart))-\(hex(lsnEnd)).delta"
        }
    }

    /// Parses a file name; nil for anything that is not a layer file name.
    public init?(fileName: String) {
        let kind: LayerKind
        let stem: Substring
        if fileName.hasSuffix(".image") { kind = .image; stem = fileName.dropLast(6) }
        else if fileName.hasSuffix(".delta") { kind = .delta; stem = fileName.dropLast(6) }
        else { return nil }
        guard let sep = stem.firstRange(of: "__"), let chunk = ChunkId(name: stem[..<sep.lowerBound]) else { return nil }
        let lsns = stem[sep.upperBound...].split(separator: "-")
        func parse(_ s: Substring) -> LSN? { s.count == 16 ? UInt64(s, radix: 16).map { LSN($0) } : nil }
        let parsed: LayerDescriptor
        switch kind {
        case .image:
            guard lsns.count == 1, let l = parse(lsns[0]), l != .max else { return nil }
            parsed = .image(chunk, at: l)
        case .delta:
            guard lsns.count == 2, let s = parse(lsns[0]), let e = parse(lsns[1]), s < e else { return nil }
            parsed = LayerDescriptor(kind: .delta, chunk: chunk, lsnStart: s, lsnEnd: e)
        }
        // Only the canonical spelling is a layer name (upper-case hex, decimal chunk fields).
        guard parsed.fileName == fileName else { return nil }
        self = parsed
    }

    public var description: String { fileName }

    public static func < (a: LayerDescriptor, b: LayerDescriptor) -> Bool {
        (a.chunk, a.lsnStart.rawValue, a.lsnEnd.rawValue, a.kind.rawValue) < (b.chunk, b.lsnStart.rawValue, b.lsnEnd.rawValue, b.kind.rawValue)
    }
}

private func < (a: (ChunkId, UInt64, UInt64, UInt8), b: (ChunkId, UInt64, UInt64, UInt8)) -> Bool {
    if a.0 != b.0 { return a.0 < b.0 }
    return (a.1, a.2, a.3) < (b.1, b.2, b.3)
}
