import XCTest
@testable import WireProtocol

/// The pagestream codec: every request and response kind round-trips in v2 and v3 at the sizes the
/// protocol fixes; truncated, over-long and unknown messages are rejected. And the client against a
/// scripted page server.
final class PagestreamTests: XCTestCase {
    private let rel = PagestreamRelTag(spcNode: 1663, dbNode: 5, relNode: 16384, forkNumber: 2)

    private func requests(_ version: PagestreamVersion) -> [(PagestreamRequest, Int)] {
        let h = PagestreamHeader(requestId: version == .v3 ? 0x0102_0304_0506_0708 : 0, requestLSN: 0x1_6B37_48A0, notModifiedSince: 0x1_6B37_0000)
        let extra = version == .v3 ? 8 : 0
        return [
            (PagestreamRequest(header: h, body: .exists(rel)), 30 + extra),
            (PagestreamRequest(header: h, body: .nblocks(rel)), 30 + extra),
            (PagestreamRequest(header: h, body: .getPage(rel, block: 0xDEAD_BEEF)), 34 + extra),
            (PagestreamRequest(header: h, body: .dbSize(dbNode: 16385)), 21 + extra),
            (PagestreamRequest(header: h, body: .getSlruSegment(kind: PagestreamSlruKind.multixactOffsets.rawValue, segment: 77)), 22 + extra),
            (PagestreamRequest(header: PagestreamHeader(requestLSN: PagestreamHeader.latest, notModifiedSince: 0), body: .getPage(rel, block: 0)), 34 + extra),
        ]
    }

    func testRequestsRoundTripAtTheirSizes() throws {
        for version in [PagestreamVersion.v2, .v3] {
            for (request, size) in requests(version) {
                let bytes = request.encode(version)
                XCTAssertEqual(bytes.count, size, "\(version) \(request.body.kindName)")
                XCTAssertEqual(bytes[0], request.body.tag)
                let decoded = try PagestreamRequest.decode(bytes, version)
                XCTAssertEqual(decoded, request)
                XCTAssertEqual(decoded.encode(version), bytes)
                // Every proper prefix is truncated; one more byte is trailing garbage.
                for n in 0..<bytes.count {
                    XCTAssertThrowsError(try PagestreamRequest.decode(Array(bytes[0..<n]), version), "\(version) \(request.body.kindName) prefix \(n)")
                }
                XCTAssertThrowsError(try PagestreamRequest.decode(bytes + [0], version)) {
                    XCTAssertTrue(String(describing: $0).contains("after its end"), "\($0)")
                }
            }
        }
    }

    func testRequestFieldsAreBigEndianAtTheirOffsets() {
        let r = PagestreamRequest(header: PagestreamHeader(requestId: 9, requestLSN: 0x0102_0304_0506_0708, notModifiedSince: 0x1112_1314_1516_1718),
                                  body: .getPage(rel, block: 0x2122_2324))
        let v2 = r.encode(.v2)
        XCTAssertEqual(v2, [2, 1, 2, 3, 4, 5, 6, 7, 8, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18,
                            0, 0, 0x06, 0x7F, 0, 0, 0, 5, 0, 0, 0x40, 0, 2, 0x21, 0x22, 0x23, 0x24])
        let v3 = r.encode(.v3)
        XCTAssertEqual(Array(v3[0..<9]), [2, 0, 0, 0, 0, 0, 0, 0, 9])
        XCTAssertEqual(Array(v3[9...]), Array(v2[1...]))
    }

    func testUnknownTagsAreRejected() {
        for version in [PagestreamVersion.v2, .v3] {
            var bytes = PagestreamRequest(header: PagestreamHeader(requestLSN: 1, notModifiedSince: 1), body: .exists(rel)).encode(version)
            for tag: UInt8 in [5, 99, 100, 255] {
                bytes[0] = tag
                XCTAssertThrowsError(try PagestreamRequest.decode(bytes, version)) {
                    XCTAssertTrue(String(describing: $0).contains("unknown"), "\($0)")
                }
            }
            var response = PagestreamResponse.nblocks(3).encode(answering: requests(version)[1].0, version)
            for tag: UInt8 in [0, 2, 99, 106, 255] {
                response[0] = tag
                XCTAssertThrowsError(try decodeResponse(response, version)) {
                    XCTAssertTrue(String(describing: $0).contains("unknown"), "\($0)")
                }
            }
            XCTAssertThrowsError(try decodeResponse([], version))
            XCTAssertThrowsError(try PagestreamRequest.decode([], version))
        }
    }

    private func decodeResponse(_ bytes: [UInt8], _ version: PagestreamVersion) throws -> (response: PagestreamResponse, echo: PagestreamRequest?) {
        try bytes.withUnsafeBytes { b in try PagestreamResponse.decode(b, version) }
    }

    func testResponsesRoundTripAtTheirSizes() throws {
        let page = (0..<8192).map { UInt8(truncatingIfNeeded: $0 &* 7) }
        let slru = (0..<(3 * 8192)).map { UInt8(truncatingIfNeeded: $0 &* 13) }
        for version in [PagestreamVersion.v2, .v3] {
            let reqs = requests(version).map(\.0)
            // (response, the request it answers, payload size after the tag and the echoed request)
            let cases: [(PagestreamResponse, PagestreamRequest, Int)] = [
                (.exists(true), reqs[0], 1),
                (.exists(false), reqs[0], 1),
                (.nblocks(0x0102_0304), reqs[1], 4),
                (.page(page), reqs[2], 8192),
                (.dbSize(-5), reqs[3], 8),
                (.dbSize(1 << 40), reqs[3], 8),
                (.slruSegment(slru), reqs[4], 4 + 3 * 8192),
                (.slruSegment([]), reqs[4], 4),
                (.error("relation 1663/5/16384/2 does not exist"), reqs[2], 39),
            ]
            for (response, request, payload) in cases {
                let bytes = response.encode(answering: request, version)
                // v3 repeats the request after the tag: its header and, except for Error, its body.
                var echoed = 0
                if version == .v3 {
                    echoed = 24
                    if case .error = response {} else { echoed = request.encode(.v3).count - 1 }
                }
                XCTAssertEqual(bytes.count, 1 + echoed + payload, "\(version) \(response.tag)")
                XCTAssertEqual(bytes[0], response.tag)
                let (decoded, echo) = try decodeResponse(bytes, version)
                XCTAssertEqual(decoded, response)
                if version == .v3, case .error = response {
                    XCTAssertNil(echo)
                } else if version == .v3 {
                    XCTAssertEqual(echo, request)
                } else {
                    XCTAssertNil(echo)
                }
                XCTAssertEqual(decoded.encode(answering: request, version), bytes)
                for n in 0..<bytes.count {
                    XCTAssertThrowsError(try decodeResponse(Array(bytes[0..<n]), version), "\(version) tag \(response.tag) prefix \(n)")
                }
                XCTAssertThrowsError(try decodeResponse(bytes + [7], version), "\(version) tag \(response.tag) with a trailing byte")
            }
        }
    }

    func testErrorMessageWithoutNULIsRejected() {
        var bytes = PagestreamResponse.error("boom").encode(answering: requests(.v2)[0].0, .v2)
        bytes.removeLast()
        XCTAssertThrowsError(try decodeResponse(bytes, .v2)) {
            XCTAssertTrue(String(describing: $0).contains("NUL"), "\($0)")
        }
    }

    // MARK: - the client against a scripted page server

    /// A page server that answers `pagestream_vN` with CopyBothResponse and then every CopyData
    /// request by `answer`.
    private func scriptedServer(_ version: PagestreamVersion, chunkSize: Int,
                                answer: @escaping (PagestreamRequest) -> PagestreamResponse) -> ScriptedTransport {
        ScriptedTransport(chunkSize: chunkSize) { type, body in
            switch type {
            case 0: return Server.authOk + Server.startupTail
            case UInt8(ascii: "Q"):
                let sql = String(decoding: body.dropLast(), as: UTF8.self)
                guard sql == "pagestream_\(version == .v2 ? "v2" : "v3") tenant1 timeline1" else {
                    return Server.error("XX000", "unexpected query \(sql)") + Server.ready
                }
                return Server.message("W", [0, 0, 0])
            case UInt8(ascii: "d"):
                guard let request = try? PagestreamRequest.decode(body, version) else {
                    return Server.error("08P01", "bad request")
                }
                return Server.copyData(answer(request).encode(answering: request, version))
            default:
                return []
            }
        }
    }

    private func connectClient(_ transport: ScriptedTransport, _ version: PagestreamVersion) throws -> PageServiceClient {
        let connection = PGConnection(transport: transport, peer: "scripted:64000", connInfo: ConnInfo(), replication: false)
        try connection.startup(deadline: .after(seconds: 5))
        return try PageServiceClient.start(on: connection, tenant: "tenant1", timeline: "timeline1", version: version)
    }

    private static func page(_ block: UInt32) -> [UInt8] {
        (0..<8192).map { UInt8(truncatingIfNeeded: UInt32($0) &+ block &* 31) }
    }

    func testPipelinedRequestsAreAnsweredInOrder() throws {
        for version in [PagestreamVersion.v2, .v3] {
            for chunk in [1, 5000, 1 << 20] {
                let transport = scriptedServer(version, chunkSize: chunk) { request in
                    switch request.body {
                    case .getPage(_, let block): return block == 13 ? .error("block 13 is cursed") : .page(Self.page(block))
                    case .nblocks: return .nblocks(42)
                    case .exists(let r): return .exists(r.relNode == 16384)
                    case .dbSize: return .dbSize(123_456)
                    case .getSlruSegment: return .slruSegment([UInt8](repeating: 1, count: 8192))
                    }
                }
                let client = try connectClient(transport, version)
                let header = PagestreamHeader(requestId: 1, requestLSN: 0x100, notModifiedSince: 0x100)
                for b in UInt32(10)..<20 {
                    var h = header
                    h.requestId = UInt64(b)
                    client.send(PagestreamRequest(header: h, body: .getPage(rel, block: b)))
                }
                client.send(PagestreamRequest(header: header, body: .nblocks(rel)))
                XCTAssertEqual(client.pending, 11)
                for b in UInt32(10)..<20 {
                    let r = try client.receive()
                    XCTAssertEqual(r, b == 13 ? .error("block 13 is cursed") : .page(Self.page(b)), "\(version) chunk \(chunk) block \(b)")
                }
                XCTAssertEqual(try client.receive(), .nblocks(42))
                XCTAssertEqual(client.pending, 0)
                XCTAssertEqual(try client.request(PagestreamRequest(header: header, body: .exists(rel))), .exists(true))
                XCTAssertEqual(try client.request(PagestreamRequest(header: header, body: .dbSize(dbNode: 5))), .dbSize(123_456))
                XCTAssertThrowsError(try client.receive()) { XCTAssertEqual(($0 as? PGError)?.code, .invalidState) }
                // The requests reached the server as sent: 13 CopyData messages after startup and the query.
                let copies = transport.written.filter { $0.type == UInt8(ascii: "d") }
                XCTAssertEqual(copies.count, 13)
                XCTAssertEqual(try PagestreamRequest.decode(copies[3].body, version).body, .getPage(rel, block: 13))
            }
        }
    }

    func testV3AnswerToAnotherRequestIsAProtocolViolation() throws {
        let transport = scriptedServer(.v3, chunkSize: 64) { _ in .nblocks(1) }
        // Answer every request as if it were for block 99.
        let inner = transport.respond
        transport.respond = { type, body in
            guard type == UInt8(ascii: "d") else { return inner(type, body) }
            let other = PagestreamRequest(header: PagestreamHeader(requestId: 1, requestLSN: 5, notModifiedSince: 5), body: .getPage(self.rel, block: 99))
            return Server.copyData(PagestreamResponse.page(Self.page(99)).encode(answering: other, .v3))
        }
        let client = try connectClient(transport, .v3)
        XCTAssertThrowsError(try client.request(PagestreamRequest(header: PagestreamHeader(requestId: 1, requestLSN: 5, notModifiedSince: 5),
                                                                  body: .getPage(rel, block: 1)))) {
            XCTAssertEqual(($0 as? PGError)?.code, .protocolViolation)
        }
    }

    func testRefusedStreamIsThrown() throws {
        let transport = scriptedServer(.v2, chunkSize: 3) { _ in .nblocks(1) }
        let connection = PGConnection(transport: transport, peer: "scripted:64000", connInfo: ConnInfo(), replication: false)
        try connection.startup(deadline: .after(seconds: 5))
        XCTAssertThrowsError(try PageServiceClient.start(on: connection, tenant: "nosuch", timeline: "timeline1", version: .v2)) {
            XCTAssertEqual(($0 as? PGError)?.code, .server)
            XCTAssertTrue(String(describing: $0).contains("unexpected query"), "\($0)")
        }
    }

    func testBackupStreamsChunksToTheSink() throws {
        let transport = ScriptedTransport(chunkSize: 100) { type, body in
            switch type {
            case 0: return Server.authOk + Server.startupTail
            case UInt8(ascii: "Q"):
                let sql = String(decoding: body.dropLast(), as: UTF8.self)
                guard sql == "fullbackup tenant1 timeline1 0/16B3748" else { return Server.error("XX000", "unexpected query \(sql)") + Server.ready }
                return Server.message("H", [0, 0, 0]) + Server.copyData([UInt8](repeating: 1, count: 3000))
                    + Server.copyData([UInt8](repeating: 2, count: 10)) + Server.message("c") + Server.complete("COPY 0") + Server.ready
            default: return []
            }
        }
        let connection = PGConnection(transport: transport, peer: "scripted:64000", connInfo: ConnInfo(), replication: false)
        try connection.startup(deadline: .after(seconds: 5))
        var received: [UInt8] = []
        try PageServiceClient.backup(on: connection, command: "fullbackup tenant1 timeline1 0/16B3748") { received += $0 }
        XCTAssertEqual(received, [UInt8](repeating: 1, count: 3000) + [UInt8](repeating: 2, count: 10))
        XCTAssertTrue(connection.isIdle)
        XCTAssertThrowsError(try PageServiceClient.backup(on: connection, command: "basebackup x y") { _ in XCTFail("no data expected") }) {
            XCTAssertEqual(($0 as? PGError)?.code, .server)
        }
    }
}
