import ArgumentParser
import Foundation
import LSM
import PostgresRedo
import PostgresWAL
import WireProtocol

/// `pagectl verify`: every page of every relation fork the page server holds, compared with the same
/// page on a quiet primary.
///
/// The primary is checkpointed and its flush LSN taken; once the timeline has ingested that far, each
/// fork's pages are read from the primary's files (`pg_read_binary_file`, 128 pages per query) and
/// from the page server at that LSN, and compared:
/// - heap, B-tree and other index pages under PostgreSQL's masking (heap_mask, btree_mask, or the
///   generic bufmask rules for access methods whose page type we recognise only by special space);
/// - visibility-map pages bit by bit: a bit the server has and the primary lacks is a mismatch; bits
///   only the primary has are reported (the WAL never carries them after a WAL_LOG database copy);
/// - FSM forks are left out; sequence pages are skipped (the primary holds the current value, WAL
///   the value logged ahead);
/// - blocks only the primary has are fine when all-zero (extension without WAL).
/// Pages the server refuses to build for lack of redo (hash, GIN, ...) are counted, not compared.
/// Exit status 1 on any mismatch.
///
/// Pages are read through the page service (`--server`, pagestream GetPage, 128 requests pipelined)
/// or, without `--server`, through the HTTP API's page endpoint. The relation list always comes from
/// the HTTP API (`--http`, default: the server's host, port 9898).
struct VerifyCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "verify",
        abstract: "Compare every page of every relation with a quiet primary (PostgreSQL's masking; VM bits exactly; FSM left out).")

    @Option(help: "The page service (libpq port), HOST:PORT; pages are read with pagestream GetPage.") var server: String?
    @Option(help: "The page server's HTTP API, HOST:PORT (default: the --server host, port 9898, else 127.0.0.1:9898).") var http: String?
    @Option(help: "Pagestream protocol version, v2 or v3.") var `protocol`: PagestreamVersion = .v3
    @Option(help: "Tenant id.") var tenant: String
    @Option(help: "Timeline id.") var timeline: String
    @Option(help: "Connection string of the primary (a superuser: CHECKPOINT and pg_read_binary_file).") var primary: String
    @Option(help: "Seconds to wait for the timeline to reach the primary's LSN.") var timeout = 120.0
    @Option(help: "Mismatches printed in full.") var show = 20

    func run() throws {
        let client = try HTTPClient(address: httpAddress(explicit: http, server: server))
        let conn = try PGConnection.connect(try ConnInfo(parsing: primary))
        defer { conn.close() }
        _ = try conn.simpleQuery("CHECKPOINT")
        guard let lsnText = try conn.simpleQuery("SELECT pg_current_wal_flush_lsn()").first?.rows.first?[0] ?? nil,
              let target = LSN(parsing: lsnText) else { fail("cannot read the primary's WAL position") }
        let base = "/v1/tenant/\(tenant)/timeline/\(timeline)"
        let deadline = Date().addingTimeInterval(timeout)
        while true {
            let r = try client.get(base)
            guard r.status == 200, let o = try JSONSerialization.jsonObject(with: Data(r.body)) as? [String: Any],
                  let last = (o["last_record_lsn"] as? String).flatMap(LSN.init(parsing:)) else {
                fail("page server: \(r.status) \(r.text)")
            }
            if last >= target { break }
            if Date() > deadline { fail("the timeline reached \(last) but not the primary's \(target) within \(Int(timeout)) s") }
            usleep(50_000)
        }
        let relResponse = try client.get("\(base)/relations?lsn=\(target)")
        guard relResponse.status == 200, let relObject = try JSONSerialization.jsonObject(with: Data(relResponse.body)) as? [String: Any],
              let rels = relObject["relations"] as? [[String: Any]] else { fail("page server: \(relResponse.status) \(relResponse.text)") }

        var pageService: PageServiceClient?
        if let server {
            let (host, port) = parseHostPort(server)
            do {
                pageService = try PageServiceClient.connect(host: host, port: port, tenant: tenant, timeline: timeline, version: `protocol`)
            } catch { fail("\(server): \(error)") }
        }
        defer { pageService?.close() }
        /// Pages `first..<first+count` of a fork from the page server: the page, or the failure text.
        func readServer(_ rel: PagestreamRelTag, first: Int, count: Int) throws -> [Result<[UInt8], ServerPageFailure>] {
            guard count > 0 else { return [] }
            if let pageService {
                for b in first..<(first + count) {
                    pageService.send(PagestreamRequest(header: pagestreamHeader(target.rawValue, requestId: UInt64(b)), body: .getPage(rel, block: UInt32(b))))
                }
                return try (0..<count).map { _ in
                    switch try pageService.receive() {
                    case .page(let p): return .success(p)
                    case .error(let m): return .failure(ServerPageFailure(text: m))
                    case let other: return .failure(ServerPageFailure(text: "a response of tag \(other.tag) to GetPage"))
                    }
                }
            }
            return try (first..<(first + count)).map { b in
                let r = try client.get("\(base)/page?rel=\(rel)&blk=\(b)&lsn=\(target)")
                return r.status == 200 ? .success(r.body) : .failure(ServerPageFailure(text: "\(r.status) \(r.text)"))
            }
        }

        var counts = VerifyCounts()
        var reports: [String] = []
        func mismatch(_ text: String) {
            counts.mismatched += 1
            if reports.count < show { reports.append(text) }
        }
        for rel in rels {
            guard let spc = rel["spc"] as? Int, let db = rel["db"] as? Int, let relNode = rel["rel"] as? Int,
                  let fork = rel["fork"] as? Int, let serverBlocks = rel["nblocks"] as? Int else { continue }
            let tag = "\(spc)/\(db)/\(relNode)/\(fork)"
            if fork == Int(ForkNumber.fsm.rawValue) { counts.forksSkipped += 1; continue }
            guard let path = primaryPath(spc: spc, db: db, rel: relNode, fork: fork) else { counts.forksSkipped += 1; continue }
            let primaryBlocks = try primaryBlockCount(conn, path)
            counts.forks += 1
            let blocks = max(serverBlocks, primaryBlocks)
            var block = 0
            while block < blocks {
                let batch = min(128, blocks - block)
                let primaryPages = block < primaryBlocks ? try readPrimary(conn, path, block: block, count: min(batch, primaryBlocks - block)) : []
                let relTag = PagestreamRelTag(spcNode: UInt32(spc), dbNode: UInt32(db), relNode: UInt32(relNode), forkNumber: UInt8(fork))
                let serverPages = try readServer(relTag, first: block, count: max(0, min(batch, serverBlocks - block)))
                for i in 0..<batch {
                    let blk = block + i
                    let p: [UInt8]? = i < primaryPages.count ? primaryPages[i] : nil
                    if blk >= serverBlocks {
                        if let p, p.allSatisfy({ $0 == 0 }) { counts.primaryOnlyEmpty += 1 } else {
                            mismatch("\(tag) block \(blk): the primary has it, the page server's relation has \(serverBlocks) blocks")
                        }
                        continue
                    }
                    let serverPage: [UInt8]
                    switch serverPages[i] {
                    case .success(let page): serverPage = page
                    case .failure(let failure):
                        if failure.text.contains("redo unsupported") { counts.unsupported += 1 } else {
                            mismatch("\(tag) block \(blk): the page server failed: \(failure.text)")
                        }
                        continue
                    }
                    guard let p else {
                        mismatch("\(tag) block \(blk): the page server has it, the primary's file has \(primaryBlocks) blocks")
                        continue
                    }
                    // The difference comes back instead of going through `mismatch`, which changes
                    // `counts` too (one access to it at a time).
                    var found: String?
                    compare(server: serverPage, primary: p, fork: fork, block: UInt32(blk), tag: tag, counts: &counts) { found = $0 }
                    if let found { mismatch(found) }
                }
                block += batch
            }
        }
        print("verified at \(target): \(counts.forks) forks, \(counts.compared) pages compared, \(counts.mismatched) mismatched, "
              + "\(counts.sequencePages) sequence pages skipped, \(counts.unsupported) pages without redo yet, "
              + "\(counts.vmBitsOnlyOnPrimary) VM bits only on the primary, \(counts.primaryOnlyEmpty) empty pages only on the primary, "
              + "\(counts.forksSkipped) forks skipped (FSM or other tablespaces)")
        for r in reports { print("MISMATCH \(r)") }
        if counts.mismatched > 0 { throw ExitCode(1) }
    }

    private func primaryPath(spc: Int, db: Int, rel: Int, fork: Int) -> String? {
        let suffix = ["", "_fsm", "_vm", "_init"][fork]
        switch spc {
        case Int(KeySpace.defaultTablespace): return "base/\(db)/\(rel)\(suffix)"
        case Int(KeySpace.globalTablespace): return "global/\(rel)\(suffix)"
        default: return nil
        }
    }

    private func segmentPath(_ path: String, block: Int) -> (String, Int) {
        let seg = block / Int(PageLayout.blocksPerRelationSegment)
        return (seg == 0 ? path : "\(path).\(seg)", (block % Int(PageLayout.blocksPerRelationSegment)) * PageLayout.pageSize)
    }

    private func primaryBlockCount(_ conn: PGConnection, _ path: String) throws -> Int {
        var blocks = 0
        var seg = 0
        while true {
            let p = seg == 0 ? path : "\(path).\(seg)"
            let rows = try conn.simpleQuery("SELECT size FROM pg_stat_file('\(p)', true)").first?.rows ?? []
            guard let text = rows.first?[0] ?? nil, let size = Int(text) else { return blocks }
            blocks += size / PageLayout.pageSize
            if size < Int(PageLayout.blocksPerRelationSegment) * PageLayout.pageSize { return blocks }
            seg += 1
        }
    }

    private func readPrimary(_ conn: PGConnection, _ path: String, block: Int, count: Int) throws -> [[UInt8]] {
        var pages: [[UInt8]] = []
        var b = block
        while pages.count < count {
            let (file, offset) = segmentPath(path, block: b)
            let inSegment = min(count - pages.count, Int(PageLayout.blocksPerRelationSegment) - b % Int(PageLayout.blocksPerRelationSegment))
            let rows = try conn.simpleQuery("SELECT encode(pg_read_binary_file('\(file)', \(offset), \(inSegment * PageLayout.pageSize), true), 'hex')").first?.rows ?? []
            guard let hex = rows.first?[0] ?? nil else { return pages }
            let bytes = decodeHex(hex)
            var o = 0
            while o + PageLayout.pageSize <= bytes.count {
                pages.append(Array(bytes[o..<o + PageLayout.pageSize]))
                o += PageLayout.pageSize
            }
            if bytes.count < inSegment * PageLayout.pageSize { return pages }
            b += inSegment
        }
        return pages
    }

    private func compare(server: [UInt8], primary: [UInt8], fork: Int, block: UInt32, tag: String,
                         counts: inout VerifyCounts, mismatch: (String) -> Void) {
        guard server.count == PageLayout.pageSize else {
            mismatch("\(tag) block \(block): the page server sent \(server.count) bytes")
            return
        }
        counts.compared += 1
        if fork == Int(ForkNumber.visibilityMap.rawValue) {
            for i in Page.headerSize..<PageLayout.pageSize where server[i] != primary[i] {
                let extra = server[i] & ~primary[i]
                if extra != 0 {
                    mismatch("\(tag) block \(block): visibility map byte \(i): page server 0x\(String(server[i], radix: 16)), primary 0x\(String(primary[i], radix: 16)) (bits the primary lacks)")
                    return
                }
                counts.vmBitsOnlyOnPrimary += (primary[i] & ~server[i]).nonzeroBitCount
            }
            return
        }
        var a = server, b = primary
        let kind = a.withUnsafeMutableBytes { PageKind(Page($0.baseAddress!)) }
        if kind == .sequence { counts.sequencePages += 1; return }
        for i in [0, 1] {
            if i == 0 { a.withUnsafeMutableBytes { kind.mask(Page($0.baseAddress!), block: block) } }
            else { b.withUnsafeMutableBytes { kind.mask(Page($0.baseAddress!), block: block) } }
        }
        if let off = a.withUnsafeBytes({ x in b.withUnsafeBytes { y in PageMasking.firstDifference(x, y) } }) {
            mismatch("\(tag) block \(block) (\(kind)): masked pages differ at offset \(off): page server 0x\(String(a[off], radix: 16)), primary 0x\(String(b[off], radix: 16))")
        }
    }
}

private struct ServerPageFailure: Error {
    var text: String
}

private struct VerifyCounts {
    var forks = 0, compared = 0, mismatched = 0, unsupported = 0, sequencePages = 0
    var vmBitsOnlyOnPrimary = 0, primaryOnlyEmpty = 0, forksSkipped = 0
}

/// What kind of page this is, told from its special space, for choosing the masking rules.
private enum PageKind: CustomStringConvertible {
    case new, heap, btree, sequence, otherIndex

    init(_ page: Page) {
        if page.isNew { self = .new; return }
        let specialSize = Page.size - page.special
        if specialSize == 0 { self = .heap; return }
        let tailId = page.u16(Page.size - 2)
        if specialSize == 8 && page.u32(page.special) == 0x1717 { self = .sequence; return }
        // Hash (0xFF80), GiST (0xFF81) and SP-GiST (0xFF82) mark the last two bytes; a B-tree's are
        // its small cycle id.
        if specialSize == 16 && tailId < 0xFF00 { self = .btree; return }
        self = .otherIndex
    }

    func mask(_ page: Page, block: UInt32) {
        switch self {
        case .new, .sequence: break
        case .heap: PageMasking.mask(page, resourceManager: .heap, blockNumber: block)
        case .btree: PageMasking.mask(page, resourceManager: .btree, blockNumber: block)
        case .otherIndex:
            PageMasking.maskLSNAndChecksum(page)
            PageMasking.maskHintBits(page)
            PageMasking.maskUnusedSpace(page)
        }
    }

    var description: String {
        switch self {
        case .new: "new"
        case .heap: "heap"
        case .btree: "btree"
        case .sequence: "sequence"
        case .otherIndex: "index"
        }
    }
}

private func decodeHex(_ text: String) -> [UInt8] {
    var out: [UInt8] = []
    out.reserveCapacity(text.utf8.count / 2)
    var high: UInt8?
    for c in text.utf8 {
        let v: UInt8
        switch c {
        case 48...57: v = c - 48
        case 97...102: v = c - 87
        case 65...70: v = c - 55
        default: continue
        }
        if let h = high { out.append(h << 4 | v); high = nil } else { high = v }
    }
    return out
}
