import Foundation
import Glibc
import PGTestSupport
import XCTest
#if canImport(FoundationXML)
import FoundationXML
#endif

/// `pagectl layer map` on a workdir the real daemon wrote: the SVG is well-formed XML with one
/// rectangle per layer file, ancestors get their own panel and a branch marker, and bad input
/// exits 1 with a message.
final class LayerMapTests: XCTestCase {
    let tenant = randomHexId()

    static var pagectl: String {
        URL(fileURLWithPath: TestPageServer.binary).deletingLastPathComponent().path + "/pagectl"
    }

    /// Counts the SVG's elements while checking it parses.
    private final class SVGScan: NSObject, XMLParserDelegate {
        var rects: [String] = []
        var branchMarkers = 0
        var texts: [String] = []
        private var inText = false

        func parser(_ parser: XMLParser, didStartElement name: String, namespaceURI: String?, qualifiedName: String?, attributes: [String: String]) {
            if name == "rect" { rects.append(attributes["data-file"] ?? "") }
            if name == "line", attributes["class"] == "branch" { branchMarkers += 1 }
            inText = name == "text"
            if inText { texts.append("") }
        }
        func parser(_ parser: XMLParser, foundCharacters string: String) { if inText { texts[texts.count - 1] += string } }
        func parser(_ parser: XMLParser, didEndElement name: String, namespaceURI: String?, qualifiedName: String?) { inText = false }
    }

    private func scan(_ path: String) throws -> SVGScan {
        let parser = try XCTUnwrap(XMLParser(contentsOf: URL(fileURLWithPath: path)))
        let s = SVGScan()
        parser.delegate = s
        XCTAssertTrue(parser.parse(), "the SVG does not parse: \(String(describing: parser.parserError))")
        return s
    }

    private func layerFiles(_ dir: String) throws -> Set<String> {
        Set(try FileManager.default.contentsOfDirectory(atPath: dir).filter { $0.hasSuffix(".delta") || $0.hasSuffix(".image") })
    }

    private func map(_ workdir: String, _ timeline: String, _ svg: String, tenant: String? = nil) throws -> (status: Int32, stdout: String, stderr: String) {
        let args = ["layer", "map", "--workdir", workdir, "--tenant", tenant ?? self.tenant, "--timeline", timeline, "--svg", svg]
        return try TestPrimary.shell(([Self.pagectl] + args).map(TestPrimary.shellQuote).joined(separator: " "), check: false)
    }

    func testLayerMapOfAttachedTimelineAndAFakeBranch() throws {
        let primary = try TestPrimary.start(for: self)
        let ps = try TestPageServer.start(for: self)
        XCTAssertEqual(try ps.request("POST", "/v1/tenant", ["new_tenant_id": tenant]).status, 201)
        let timeline = randomHexId()
        let attached = try ps.request("POST", "/v1/tenant/\(tenant)/timeline", ["new_timeline_id": timeline, "wal_source": primary.connectionString()])
        XCTAssertEqual(attached.status, 201, "attach: \(String(describing: attached.json))")
        try TestPrimary.shell("pgbench -h 127.0.0.1 -p \(primary.port) -U postgres -i -s 1 -q postgres")
        let target = try XCTUnwrap(parseLSN(try primary.psql("SELECT pg_current_wal_lsn()")))
        try waitUntil("the page server has ingested up to the primary's WAL", timeout: 60) {
            (parseLSN(try ps.timeline(tenant, timeline)["last_record_lsn"] as? String ?? "") ?? 0) >= target
        }
        XCTAssertEqual(try ps.request("PUT", "/v1/tenant/\(tenant)/timeline/\(timeline)/checkpoint").status, 200)
        XCTAssertEqual(ps.stop(signal: SIGTERM), 0)

        let timelines = ps.workdir + "/tenants/\(tenant)/timelines"
        let parentFiles = try layerFiles(timelines + "/" + timeline)
        XCTAssertGreaterThan(parentFiles.count, 3)

        // One timeline.
        let svg = ps.workdir + "/map.svg"
        let one = try map(ps.workdir, timeline, svg)
        XCTAssertEqual(one.status, 0, one.stderr)
        XCTAssertTrue(one.stdout.contains("timeline \(timeline) (requested), root"), one.stdout)
        XCTAssertTrue(one.stdout.contains("layers: \(parentFiles.count) "), one.stdout)
        var s = try scan(svg)
        XCTAssertEqual(s.rects.count, parentFiles.count, "one rectangle per layer file")
        XCTAssertEqual(Set(s.rects), parentFiles)
        XCTAssertEqual(s.branchMarkers, 0)

        // A child: a copy of the directory whose timeline.json names the first as its ancestor.
        let child = randomHexId()
        try FileManager.default.copyItem(atPath: timelines + "/" + timeline, toPath: timelines + "/" + child)
        let metaPath = timelines + "/\(child)/timeline.json"
        var meta = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: metaPath))) as? [String: Any])
        let start = try XCTUnwrap(parseLSN(meta["start_lsn"] as? String ?? ""))
        let branchLSN = "0/\(String((start + (target - start) / 2) & ~7, radix: 16, uppercase: true))"
        meta["timeline_id"] = child
        meta["ancestor_timeline_id"] = timeline
        meta["ancestor_lsn"] = branchLSN
        try JSONSerialization.data(withJSONObject: meta).write(to: URL(fileURLWithPath: metaPath))
        let two = try map(ps.workdir, child, svg)
        XCTAssertEqual(two.status, 0, two.stderr)
        XCTAssertTrue(two.stdout.contains("timeline \(child) (requested), branched from \(timeline) at \(branchLSN)"), two.stdout)
        s = try scan(svg)
        XCTAssertEqual(s.rects.count, 2 * parentFiles.count)
        XCTAssertEqual(s.branchMarkers, 1)
        // To look at the picture: LAYER_MAP_SVG_COPY=/tmp/map.svg swift test --filter LayerMapTests
        if let copy = ProcessInfo.processInfo.environment["LAYER_MAP_SVG_COPY"] { try? FileManager.default.copyItem(atPath: svg, toPath: copy) }
        XCTAssertTrue(s.texts.contains("branch point of \(child) at \(branchLSN)"), "\(s.texts.prefix(5))")
        let heads = s.texts.filter { $0.hasPrefix("timeline ") }
        XCTAssertEqual(heads.map { $0.contains(timeline) }, [true, false], "the root's panel comes first: \(heads)")

        // Errors: exit 1 and one sentence, no SVG written.
        let missingSVG = ps.workdir + "/missing.svg"
        var r = try map(ps.workdir, randomHexId(), missingSVG)
        XCTAssertEqual(r.status, 1)
        XCTAssertTrue(r.stderr.contains("not found"), r.stderr)
        r = try map(ps.workdir + "/nope", timeline, missingSVG)
        XCTAssertEqual(r.status, 1)
        XCTAssertTrue(r.stderr.contains("does not exist"), r.stderr)
        r = try map(ps.workdir, "xyz", missingSVG)
        XCTAssertEqual(r.status, 1)
        XCTAssertTrue(r.stderr.contains("hex"), r.stderr)
        let manifest = timelines + "/\(child)/manifest"
        var bytes = try [UInt8](Data(contentsOf: URL(fileURLWithPath: manifest)))
        bytes[20] ^= 0xFF
        try Data(bytes).write(to: URL(fileURLWithPath: manifest))
        r = try map(ps.workdir, child, missingSVG)
        XCTAssertEqual(r.status, 1)
        XCTAssertTrue(r.stderr.contains("not a valid manifest") && r.stderr.contains("checksum"), r.stderr)
        bytes[20] ^= 0xFF
        try Data(bytes).write(to: URL(fileURLWithPath: manifest))
        try FileManager.default.removeItem(atPath: timelines + "/" + timeline)
        r = try map(ps.workdir, child, missingSVG)
        XCTAssertEqual(r.status, 1)
        XCTAssertTrue(r.stderr.contains("the ancestor of \(child), is missing"), r.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: missingSVG))
    }
}
