import Foundation
import Glibc
import PGTestSupport
import XCTest

#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

/// The real `pageserver` binary, run by a test in a temporary workdir on free loopback ports.
///
/// `start(for:)` registers a teardown block that stops the server and removes the workdir. The
/// binary is the one `swift build --build-tests` left in `.build/debug` (or `$PAGESERVER_BIN`).
final class TestPageServer {
    let workdir: String
    let httpPort: Int
    let pgPort: Int
    private(set) var pid: pid_t = 0
    let logPath: String

    static var binary: String {
        if let b = ProcessInfo.processInfo.environment["PAGESERVER_BIN"] { return b }
        var root = URL(fileURLWithPath: #filePath)
        for _ in 0..<3 { root.deleteLastPathComponent() }
        return root.path + "/.build/debug/pageserver"
    }

    static func start(for testCase: XCTestCase, config: String? = nil) throws -> TestPageServer {
        guard FileManager.default.isExecutableFile(atPath: binary) else {
            XCTFail("pageserver binary not found at \(binary): run `swift build --build-tests` first")
            throw TestPrimary.CommandFailure(description: "no pageserver binary")
        }
        let s = try TestPageServer(config: config)
        testCase.addTeardownBlock { s.destroy() }
        try s.start()
        return s
    }

    init(config: String?) throws {
        workdir = NSTemporaryDirectory() + "testpageserver-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: workdir, withIntermediateDirectories: true)
        httpPort = try TestPrimary.freeLoopbackPort()
        pgPort = try TestPrimary.freeLoopbackPort()
        logPath = workdir + ".log"
        if let config { try config.write(toFile: workdir + "/pageserver.toml", atomically: true, encoding: .utf8) }
    }

    var baseURL: String { "http://127.0.0.1:\(httpPort)" }

    /// Starts the daemon and waits until its HTTP API answers.
    func start() throws {
        var args = [TestPageServer.binary, "--workdir", workdir, "--listen-http", "127.0.0.1:\(httpPort)", "--listen-pg", "127.0.0.1:\(pgPort)"]
        if FileManager.default.fileExists(atPath: workdir + "/pageserver.toml") { args += ["--config", workdir + "/pageserver.toml"] }
        let script = args.map(TestPrimary.shellQuote).joined(separator: " ") + " >>\(logPath) 2>&1"
        var p: pid_t = 0
        let argv: [UnsafeMutablePointer<CChar>?] = [strdup("/bin/sh"), strdup("-c"), strdup("exec " + script), nil]
        defer { for a in argv { free(a) } }
        guard posix_spawn(&p, "/bin/sh", nil, nil, argv, environ) == 0 else {
            throw TestPrimary.CommandFailure(description: "cannot start pageserver")
        }
        pid = p
        try waitUntil("the pageserver answers /v1/status", timeout: 60) { (try? self.request("GET", "/v1/status").status) == 200 }
    }

    /// Sends `signal` and waits for the process to exit; returns its exit status (128+signal when killed).
    @discardableResult
    func stop(signal: Int32 = SIGTERM) -> Int32 {
        guard pid > 0 else { return 0 }
        kill(pid, signal)
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        pid = 0
        return (status & 0x7F) == 0 ? (status >> 8) & 0xFF : 128 + (status & 0x7F)
    }

    func destroy() {
        stop(signal: SIGKILL)
        // KEEP_PAGESERVER=1 keeps the workdir and the log for a post-mortem.
        if ProcessInfo.processInfo.environment["KEEP_PAGESERVER"] == "1" {
            print("kept the page server's workdir \(workdir) and log \(logPath)")
            return
        }
        try? FileManager.default.removeItem(atPath: workdir)
        try? FileManager.default.removeItem(atPath: logPath)
    }

    var log: String { (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "" }

    /// One HTTP request; returns the status and the decoded JSON body (nil when not JSON).
    func request(_ method: String, _ path: String, _ body: [String: Any]? = nil, timeout: Double = 120) throws -> (status: Int, json: Any?) {
        var req = URLRequest(url: URL(string: baseURL + path)!)
        req.httpMethod = method
        req.timeoutInterval = timeout
        if let body { req.httpBody = try JSONSerialization.data(withJSONObject: body) }
        let done = DispatchSemaphore(value: 0)
        nonisolated(unsafe) var result: (Int, Data?)?
        nonisolated(unsafe) var failure: Error?
        URLSession.shared.dataTask(with: req) { data, response, error in
            if let error { failure = error } else { result = ((response as? HTTPURLResponse)?.statusCode ?? 0, data) }
            done.signal()
        }.resume()
        done.wait()
        if let failure { throw failure }
        let (status, data) = result!
        return (status, data.flatMap { try? JSONSerialization.jsonObject(with: $0, options: [.fragmentsAllowed]) })
    }

    func timeline(_ tenant: String, _ timeline: String) throws -> [String: Any] {
        let r = try request("GET", "/v1/tenant/\(tenant)/timeline/\(timeline)")
        guard r.status == 200, let o = r.json as? [String: Any] else { throw TestPrimary.CommandFailure(description: "timeline detail: HTTP \(r.status) \(String(describing: r.json))") }
        return o
    }
}

/// Polls `condition` every 50 ms until it holds or `timeout` passes (then throws, naming the condition).
func waitUntil(_ what: String, timeout: Double, _ condition: () throws -> Bool) throws {
    let deadline = Date().addingTimeInterval(timeout)
    while Date() < deadline {
        if try condition() { return }
        usleep(50_000)
    }
    throw TestPrimary.CommandFailure(description: "timed out after \(timeout) s waiting until \(what)")
}

/// "X/Y" -> UInt64.
func parseLSN(_ s: String) -> UInt64? {
    let p = s.trimmingCharacters(in: .whitespacesAndNewlines).split(separator: "/")
    guard p.count == 2, let hi = UInt64(p[0], radix: 16), let lo = UInt64(p[1], radix: 16) else { return nil }
    return hi << 32 | lo
}

func randomHexId() -> String { (0..<16).map { _ in String(format: "%02x", UInt8.random(in: 0...255)) }.joined() }

/// Relation fork sizes in blocks from the primary's data directory: "spc/db/rel/fork" -> blocks.
/// The FSM fork is left out (its extension is not WAL-logged), and so is the main fork of unlogged
/// relations (only their init fork is WAL-logged).
func primaryRelationSizes(_ primary: TestPrimary) throws -> [String: Int] {
    var sizes: [String: Int] = [:]
    var unlogged = Set<String>()
    let fm = FileManager.default
    var dirs: [(String, UInt32, UInt32)] = [(primary.dataDirectory + "/global", 1664, 0)]
    for db in try fm.contentsOfDirectory(atPath: primary.dataDirectory + "/base") {
        if let oid = UInt32(db) { dirs.append((primary.dataDirectory + "/base/" + db, 1663, oid)) }
    }
    for (dir, spc, db) in dirs {
        for name in try fm.contentsOfDirectory(atPath: dir) {
            var stem = Substring(name)
            var seg = 0
            if let dot = stem.firstIndex(of: ".") {
                guard let s = Int(stem[stem.index(after: dot)...]) else { continue }
                seg = s
                stem = stem[..<dot]
            }
            var fork = 0
            for (suffix, f) in [("_fsm", 1), ("_vm", 2), ("_init", 3)] where stem.hasSuffix(suffix) {
                fork = f
                stem = stem.dropLast(suffix.count)
            }
            guard let rel = UInt32(stem) else { continue }
            let size = (try fm.attributesOfItem(atPath: dir + "/" + name)[.size] as? NSNumber)?.intValue ?? 0
            let key = "\(spc)/\(db)/\(rel)/\(fork)"
            if fork == 3 { unlogged.insert("\(spc)/\(db)/\(rel)/0") }
            _ = seg
            sizes[key, default: 0] += size / 8192
        }
    }
    return sizes.filter { !$0.key.hasSuffix("/1") && !unlogged.contains($0.key) }
}
