// Neon's pagestream protocol: the binary messages a compute and the page server exchange inside
// CopyData after `pagestream_v2 <tenant> <timeline>` or `pagestream_v3 ...`.
//
// Layout (all integers big-endian):
//
//   request   = tag u8, [reqid u64 (v3 only)], request_lsn u64, not_modified_since u64, body
//     tag 0 Exists          body = RelTag                       (v2: 30 bytes, v3: 38)
//     tag 1 Nblocks         body = RelTag                       (v2: 30 bytes, v3: 38)
//     tag 2 GetPage         body = RelTag, blkno u32            (v2: 34 bytes, v3: 42)
//     tag 3 DbSize          body = dbnode u32                   (v2: 21 bytes, v3: 29)
//     tag 4 GetSlruSegment  body = kind u8, segno u32           (v2: 22 bytes, v3: 30)
//   RelTag    = spcnode u32, dbnode u32, relnode u32, forknum u8 (13 bytes)
//
//   response  = tag u8, [v3: reqid u64, request_lsn u64, not_modified_since u64, the request's body], payload
//     tag 100 Exists          payload = exists u8
//     tag 101 Nblocks         payload = n_blocks u32
//     tag 102 GetPage         payload = 8192 bytes
//     tag 103 Error           payload = message, NUL-terminated (v3 repeats only the header, no body)
//     tag 104 DbSize          payload = size i64
//     tag 105 GetSlruSegment  payload = n_blocks u32, n_blocks x 8192 bytes
//
// Invariants: decoding checks every length (a short or long message is a `PagestreamFormatError`, never
// a crash or a partial value); encode(decode(x)) == x for every well-formed message.

/// A relation fork as the pagestream protocol names it.
public struct PagestreamRelTag: Hashable, Sendable, CustomStringConvertible {
    public var spcNode: UInt32
    public var dbNode: UInt32
    public var relNode: UInt32
    public var forkNumber: UInt8

    public init(spcNode: UInt32, dbNode: UInt32, relNode: UInt32, forkNumber: UInt8) {
        self.spcNode = spcNode
        self.dbNode = dbNode
        self.relNode = relNode
        self.forkNumber = forkNumber
    }

    public var description: String { "\(spcNode)/\(dbNode)/\(relNode)/\(forkNumber)" }
}

public enum PagestreamVersion: Sendable, Equatable {
    case v2, v3

    var headerSize: Int { self == .v2 ? 17 : 25 }
}

/// The LSN fields every request carries (and v3 responses repeat).
public struct PagestreamHeader: Hashable, Sendable {
    /// The request id (v3 only; 0 in v2).
    public var requestId: UInt64
    /// The LSN to read at; `PagestreamHeader.latest` means the newest ingested.
    public var requestLSN: UInt64
    /// The client knows the value has not changed between this LSN and `requestLSN`.
    public var notModifiedSince: UInt64

    public static let latest = UInt64.max

    public init(requestId: UInt64 = 0, requestLSN: UInt64, notModifiedSince: UInt64) {
        self.requestId = requestId
        self.requestLSN = requestLSN
        self.notModifiedSince = notModifiedSince
    }
}

public enum PagestreamSlruKind: UInt8, Sendable, CaseIterable {
    case clog = 0
    case multixactMembers = 1
    case multixactOffsets = 2
}

/// One request, decoded.
public struct PagestreamRequest: Hashable, Sendable {
    public enum Body: Hashable, Sendable {
        case exists(PagestreamRelTag)
        case nblocks(PagestreamRelTag)
        case getPage(PagestreamRelTag, block: UInt32)
        case dbSize(dbNode: UInt32)
        case getSlruSegment(kind: UInt8, segment: UInt32)

        public var tag: UInt8 {
            switch self {
            case .exists: return 0
            case .nblocks: return 1
            case .getPage: return 2
            case .dbSize: return 3
            case .getSlruSegment: return 4
            }
        }

        /// The name used in metrics and messages.
        public var kindName: String {
            switch self {
            case .exists: return "exists"
            case .nblocks: return "nblocks"
            case .getPage: return "get_page"
            case .dbSize: return "db_size"
            case .getSlruSegment: return "get_slru_segment"
            }
        }

        func encode(into out: inout [UInt8]) {
            switch self {
            case .exists(let rel), .nblocks(let rel):
                Self.put(rel, &out)
            case .getPage(let rel, let block):
                Self.put(rel, &out)
                out.appendBE(block)
            case .dbSize(let db):
                out.appendBE(db)
            case .getSlruSegment(let kind, let segment):
                out.append(kind)
                out.appendBE(segment)
            }
        }

        static func put(_ rel: PagestreamRelTag, _ out: inout [UInt8]) {
            out.appendBE(rel.spcNode)
            out.appendBE(rel.dbNode)
            out.appendBE(rel.relNode)
            out.append(rel.forkNumber)
        }
    }

    public var header: PagestreamHeader
    public var body: Body

    public init(header: PagestreamHeader, body: Body) {
        self.header = header
        self.body = body
    }

    public func encode(_ version: PagestreamVersion) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(42)
        out.append(body.tag)
        if version == .v3 { out.appendBE(header.requestId) }
        out.appendBE(header.requestLSN)
        out.appendBE(header.notModifiedSince)
        body.encode(into: &out)
        return out
    }

    /// Decodes one CopyData payload.
    public static func decode(_ bytes: UnsafeRawBufferPointer, _ version: PagestreamVersion) throws(PagestreamFormatError) -> PagestreamRequest {
        var c = BECursor(bytes)
        guard let tag = c.u8() else { throw PagestreamFormatError("empty pagestream request") }
        guard tag <= 4 else { throw PagestreamFormatError("unknown pagestream request tag \(tag)") }
        let requestId = version == .v3 ? c.u64() : 0
        guard let requestId, let lsn = c.u64(), let nms = c.u64() else {
            throw PagestreamFormatError("pagestream request (tag \(tag)) of \(bytes.count) bytes is shorter than its \(version.headerSize)-byte header")
        }
        let header = PagestreamHeader(requestId: requestId, requestLSN: lsn, notModifiedSince: nms)
        let body: Body?
        switch tag {
        case 0: body = c.relTag().map { .exists($0) }
        case 1: body = c.relTag().map { .nblocks($0) }
        case 2:
            if let rel = c.relTag(), let block = c.u32() { body = .getPage(rel, block: block) } else { body = nil }
        case 3: body = c.u32().map { .dbSize(dbNode: $0) }
        default:
            if let kind = c.u8(), let seg = c.u32() { body = .getSlruSegment(kind: kind, segment: seg) } else { body = nil }
        }
        guard let body else {
            throw PagestreamFormatError("pagestream request (tag \(tag)) of \(bytes.count) bytes is truncated")
        }
        guard c.isAtEnd else {
            throw PagestreamFormatError("pagestream request (tag \(tag)) has \(c.remaining) bytes after its end")
        }
        return PagestreamRequest(header: header, body: body)
    }

    public static func decode(_ bytes: [UInt8], _ version: PagestreamVersion) throws(PagestreamFormatError) -> PagestreamRequest {
        let result = bytes.withUnsafeBytes { b in Result { () throws(PagestreamFormatError) in try decode(b, version) } }
        return try result.get()
    }
}

/// One response's payload.
public enum PagestreamResponse: Equatable, Sendable {
    case exists(Bool)
    case nblocks(UInt32)
    case page([UInt8])
    case error(String)
    case dbSize(Int64)
    case slruSegment([UInt8])

    public var tag: UInt8 {
        switch self {
        case .exists: return 100
        case .nblocks: return 101
        case .page: return 102
        case .error: return 103
        case .dbSize: return 104
        case .slruSegment: return 105
        }
    }

    /// Encodes the response to `request` (whose fields v3 repeats).
    public func encode(answering request: PagestreamRequest, _ version: PagestreamVersion, into out: inout [UInt8]) {
        out.append(tag)
        if version == .v3 {
            out.appendBE(request.header.requestId)
            out.appendBE(request.header.requestLSN)
            out.appendBE(request.header.notModifiedSince)
            if case .error = self {} else { request.body.encode(into: &out) }
        }
        switch self {
        case .exists(let e): out.append(e ? 1 : 0)
        case .nblocks(let n): out.appendBE(n)
        case .page(let p): out.append(contentsOf: p)
        case .error(let m):
            out.append(contentsOf: m.utf8.filter { $0 != 0 })
            out.append(0)
        case .dbSize(let s): out.appendBE(UInt64(bitPattern: s))
        case .slruSegment(let bytes):
            out.appendBE(UInt32(bytes.count / 8192))
            out.append(contentsOf: bytes)
        }
    }

    public func encode(answering request: PagestreamRequest, _ version: PagestreamVersion) -> [UInt8] {
        var out: [UInt8] = []
        encode(answering: request, version, into: &out)
        return out
    }

    /// Decodes a response. In v3 the repeated request fields are returned too (nil in v2) so that a
    /// client can check that the answer belongs to its request.
    public static func decode(_ bytes: UnsafeRawBufferPointer, _ version: PagestreamVersion) throws(PagestreamFormatError) -> (response: PagestreamResponse, echo: PagestreamRequest?) {
        var c = BECursor(bytes)
        guard let tag = c.u8() else { throw PagestreamFormatError("empty pagestream response") }
        guard (100...105).contains(tag) else { throw PagestreamFormatError("unknown pagestream response tag \(tag)") }
        var echo: PagestreamRequest?
        func short() -> PagestreamFormatError { PagestreamFormatError("pagestream response (tag \(tag)) of \(bytes.count) bytes is truncated") }
        if version == .v3 {
            guard let id = c.u64(), let lsn = c.u64(), let nms = c.u64() else { throw short() }
            let h = PagestreamHeader(requestId: id, requestLSN: lsn, notModifiedSince: nms)
            var body: PagestreamRequest.Body?
            switch tag {
            case 100: body = c.relTag().map { .exists($0) }
            case 101: body = c.relTag().map { .nblocks($0) }
            case 102: if let r = c.relTag(), let b = c.u32() { body = .getPage(r, block: b) }
            case 104: body = c.u32().map { .dbSize(dbNode: $0) }
            case 105: if let k = c.u8(), let s = c.u32() { body = .getSlruSegment(kind: k, segment: s) }
            default: body = .dbSize(dbNode: 0)  // Error: header only
            }
            guard let body else { throw short() }
            echo = tag == 103 ? nil : PagestreamRequest(header: h, body: body)
        }
        let response: PagestreamResponse
        switch tag {
        case 100:
            guard let e = c.u8() else { throw short() }
            response = .exists(e != 0)
        case 101:
            guard let n = c.u32() else { throw short() }
            response = .nblocks(n)
        case 102:
            guard let p = c.bytes(8192) else { throw short() }
            response = .page(p)
        case 103:
            let rest = c.rest()
            guard let nul = rest.firstIndex(of: 0) else { throw PagestreamFormatError("pagestream error message is not NUL-terminated") }
            response = .error(String(decoding: rest[..<nul], as: UTF8.self))
            c.skip(nul + 1)
        case 104:
            guard let s = c.u64() else { throw short() }
            response = .dbSize(Int64(bitPattern: s))
        default:
            guard let n = c.u32(), n <= 32 * 1024, let data = c.bytes(Int(n) * 8192) else { throw short() }
            response = .slruSegment(data)
        }
        guard c.isAtEnd else { throw PagestreamFormatError("pagestream response (tag \(tag)) has \(c.remaining) bytes after its end") }
        return (response, echo)
    }
}

public struct PagestreamFormatError: Error, CustomStringConvertible, Sendable {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// A bounds-checked big-endian reader; every read returns nil past the end.
private struct BECursor {
    let bytes: UnsafeRawBufferPointer
    var offset = 0

    init(_ bytes: UnsafeRawBufferPointer) { self.bytes = bytes }

    var remaining: Int { bytes.count - offset }
    var isAtEnd: Bool { offset == bytes.count }

    mutating func u8() -> UInt8? {
        guard remaining >= 1 else { return nil }
        defer { offset += 1 }
        return bytes[offset]
    }

    mutating func u32() -> UInt32? {
        guard remaining >= 4 else { return nil }
        defer { offset += 4 }
        return UInt32(bigEndian: bytes.loadUnaligned(fromByteOffset: offset, as: UInt32.self))
    }

    mutating func u64() -> UInt64? {
        guard remaining >= 8 else { return nil }
        defer { offset += 8 }
        return UInt64(bigEndian: bytes.loadUnaligned(fromByteOffset: offset, as: UInt64.self))
    }

    mutating func relTag() -> PagestreamRelTag? {
        guard let s = u32(), let d = u32(), let r = u32(), let f = u8() else { return nil }
        return PagestreamRelTag(spcNode: s, dbNode: d, relNode: r, forkNumber: f)
    }

    mutating func bytes(_ n: Int) -> [UInt8]? {
        guard remaining >= n else { return nil }
        defer { offset += n }
        return Array(UnsafeRawBufferPointer(rebasing: bytes[offset..<(offset + n)]))
    }

    func rest() -> UnsafeRawBufferPointer { UnsafeRawBufferPointer(rebasing: bytes[offset...]) }

    mutating func skip(_ n: Int) { offset += n }
}

extension Array where Element == UInt8 {
    @inline(__always) mutating func appendBE(_ v: UInt32) {
        append(UInt8(truncatingIfNeeded: v >> 24)); append(UInt8(truncatingIfNeeded: v >> 16))
        append(UInt8(truncatingIfNeeded: v >> 8)); append(UInt8(truncatingIfNeeded: v))
    }

    @inline(__always) mutating func appendBE(_ v: UInt64) {
        appendBE(UInt32(truncatingIfNeeded: v >> 32))
        appendBE(UInt32(truncatingIfNeeded: v))
    }
}
