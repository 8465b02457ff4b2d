import Foundation
import LSM
@_exported import PGTestSupport
import XCTest
@testable import PostgresWAL

/// The result of a finished command.
struct CommandResult {
    var status: Int32
    var stdout: String
    var stderr: String
}

/// Runs `/bin/sh -c command` and waits. Output goes through files, not pipes, so a command that
/// writes megabytes (pg_waldump) cannot block on a full pipe.
@discardableResult
func shell(_ command: String, check: Bool = true) throws -> CommandResult {
    let dir = FileManager.default.temporaryDirectory.path
    let tag = UUID().uuidString
    let out = "\(dir)/walcmd-\(tag).out", err = "\(dir)/walcmd-\(tag).err"
    defer { try? FileManager.default.removeItem(atPath: out); try? FileManager.default.removeItem(atPath: err) }
    // posix_spawn and waitpid rather than Foundation's Process, whose exit monitoring was seen to
    // miss the exit of a shell that had started a daemon (pg_ctl start).
    let args = ["/bin/sh", "-c", "(\(command)) >\(out) 2>\(err) </dev/null"]
    var argv: [UnsafeMutablePointer<CChar>?] = args.map { strdup($0) } + [nil]
    defer { for a in argv { free(a) } }
    var pid: pid_t = 0
    let spawned = posix_spawn(&pid, "/bin/sh", nil, nil, &argv, environ)
    guard spawned == 0 else { throw TestFailure("posix_spawn failed: \(spawned)") }
    var wstatus: Int32 = 0
    while waitpid(pid, &wstatus, 0) < 0 {
        guard errno == EINTR else { throw TestFailure("waitpid failed: \(errno)") }
    }
    // WIFEXITED / WEXITSTATUS by hand (macros are not imported).
    let status: Int32 = (wstatus & 0x7F) == 0 ? (wstatus >> 8) & 0xFF : 128 + (wstatus & 0x7F)
    let result = CommandResult(status: status,
                               stdout: (try? String(contentsOfFile: out, encoding: .utf8)) ?? "",
                               stderr: (try? String(contentsOfFile: err, encoding: .utf8)) ?? "")
    if check && result.status != 0 {
        throw TestFailure("command failed with status \(result.status): \(command)\n\(result.stderr.suffix(2000))")
    }
    return result
}

struct TestFailure: Error, CustomStringConvertible {
    var description: String
    init(_ d: String) { description = d }
}

/// Single-quotes a string for /bin/sh.
func shellQuote(_ s: String) -> String { "'" + s.replacingOccurrences(of: "'", with: "'\\''") + "'" }

/// A TCP port on 127.0.0.1 that was free a moment ago: the kernel picks it for a socket bound to port 0.
func freeLoopbackPort() throws -> Int {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { throw TestFailure("socket() failed") }
    defer { close(fd) }
    var addr = sockaddr_in()
    addr.sin_family = sa_family_t(AF_INET)
    addr.sin_port = 0
    addr.sin_addr.s_addr = inet_addr("127.0.0.1")
    var len = socklen_t(MemoryLayout<sockaddr_in>.size)
    let bound = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, len) } }
    guard bound == 0 else { throw TestFailure("bind() failed") }
    let named = withUnsafeMutablePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) } }
    guard named == 0 else { throw TestFailure("getsockname() failed") }
    return Int(UInt16(bigEndian: addr.sin_port))
}

/// A throwaway PostgreSQL 15 cluster in a temporary directory owned by the `postgres` user (the
/// server refuses to run as root), listening on a free loopback port.
/// `destroy()` stops the server (immediately if a fast stop fails) and removes the directory; call it
/// from a `defer` or teardown block so that a failing test leaves nothing running.
final class PostgresCluster {
    static let bin = "/usr/lib/postgresql/15/bin"
    let directory: String
    let dataDirectory: String
    let port: Int
    private var running = false

    var walDirectory: String { dataDirectory + "/pg_wal" }

    static var isAvailable: Bool {
        FileManager.default.isExecutableFile(atPath: bin + "/postgres") && getuid() == 0
            && (try? shell("id postgres", check: false).status) == 0
    }

    init(settings: [String]) throws {
        directory = FileManager.default.temporaryDirectory.path + "/walpg-\(UUID().uuidString.prefix(8))"
        dataDirectory = directory + "/data"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        port = try freeLoopbackPort()
        do {
            try shell("chown postgres: \(directory)")
            try asPostgres("\(Self.bin)/initdb -D \(dataDirectory) -A trust -U postgres --no-sync")
            let conf = settings.joined(separator: "\n") + "\n"
            let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: dataDirectory + "/postgresql.conf"))
            handle.seekToEndOfFile()
            handle.write(conf.data(using: .utf8)!)
            try handle.close()
            try start()
        } catch {
            destroy()
            throw error
        }
    }

    @discardableResult
    func asPostgres(_ command: String) throws -> CommandResult {
        try shell("cd \(directory) && runuser -u postgres -- \(command)")
    }

    func start() throws {
        try asPostgres("\(Self.bin)/pg_ctl -D \(dataDirectory) -l \(directory)/server.log -w -t 60 -o \(shellQuote("-p \(port) -k \(directory) -c listen_addresses=127.0.0.1")) start")
        running = true
    }

    func stop() throws {
        guard running else { return }
        try asPostgres("\(Self.bin)/pg_ctl -D \(dataDirectory) -m fast -w -t 60 stop")
        running = false
    }

    /// Runs SQL through psql and returns its unaligned, tuples-only output.
    @discardableResult
    func sql(_ statement: String) throws -> String {
        try asPostgres("\(Self.bin)/psql -X -q -At -v ON_ERROR_STOP=1 -h 127.0.0.1 -p \(port) -U postgres -d postgres -c \(shellQuote(statement))").stdout
    }

    func destroy() {
        if running {
            if (try? stop()) == nil {
                _ = try? shell("runuser -u postgres -- \(Self.bin)/pg_ctl -D \(dataDirectory) -m immediate -w stop", check: false)
            }
            running = false
        }
        try? FileManager.default.removeItem(atPath: directory)
    }
}

/// One record as pg_waldump prints it with `-b`.
struct WaldumpRecord {
    struct Block {
        var id: Int
        var relation: String
        var fork: String
        var block: UInt32
        var hasImage: Bool
        var apply: Bool
        var holeOffset: Int?
        var holeLength: Int?
        var compressionSaved: Int?
        var method: String?
    }

    var rmgr: String
    var recordLength: Int
    var totalLength: Int
    var xid: UInt32
    var lsn: LSN
    var prev: LSN
    var blocks: [Block] = []
}

/// Parses `pg_waldump -b` output: a line per record, then a tab-indented line per block reference.
func parseWaldump(_ text: String) throws -> [WaldumpRecord] {
    var records: [WaldumpRecord] = []
    for line in text.split(separator: "\n", omittingEmptySubsequences: true) {
        if line.hasPrefix("rmgr:") {
            let head = line.range(of: ", desc:").map { line[..<$0.lowerBound] } ?? line[...]
            let t = head.split(whereSeparator: { $0 == " " || $0 == "," })
            guard t.count >= 2, let lenAt = t.firstIndex(of: "(rec/tot):"), let txAt = t.firstIndex(of: "tx:"),
                  let lsnAt = t.firstIndex(of: "lsn:"), let prevAt = t.firstIndex(of: "prev") else {
                throw TestFailure("unparsable pg_waldump line: \(line)")
            }
            let lens = t[(lenAt + 1)..<txAt].joined().split(separator: "/")
            guard lens.count == 2, let rec = Int(lens[0]), let tot = Int(lens[1]), let xid = UInt32(t[txAt + 1]),
                  let lsn = LSN(parsing: t[lsnAt + 1]), let prev = LSN(parsing: t[prevAt + 1]) else {
                throw TestFailure("unparsable pg_waldump line: \(line)")
            }
            records.append(WaldumpRecord(rmgr: String(t[1]), recordLength: rec, totalLength: tot, xid: xid, lsn: lsn, prev: prev))
        } else if line.hasPrefix("\tblkref #") {
            let t = line.split(whereSeparator: { $0 == " " || $0 == "," || $0 == "\t" || $0 == ";" })
            func after(_ word: String) -> Substring? { t.firstIndex(of: Substring(word)).flatMap { $0 + 1 < t.count ? t[$0 + 1] : nil } }
            guard !records.isEmpty, let id = Int(t[1].dropFirst().dropLast()), let rel = after("rel"), let fork = after("fork"),
                  let blk = after("blk").flatMap({ UInt32($0) }) else {
                throw TestFailure("unparsable pg_waldump block line: \(line)")
            }
            let fpw = line.contains("(FPW")
            var b = WaldumpRecord.Block(id: id, relation: String(rel), fork: String(fork), block: blk, hasImage: fpw,
                                        apply: fpw && !line.contains("for WAL verification"))
            b.holeOffset = after("offset:").flatMap { Int($0) }
            b.holeLength = after("length:").flatMap { Int($0) }
            b.compressionSaved = after("saved:").flatMap { Int($0) }
            b.method = after("method:").map(String.init)
            records[records.count - 1].blocks.append(b)
        }
    }
    return records
}

/// The WAL segment files of a directory in stream order, with each one's first LSN.
func walSegments(in directory: String, segmentSize: Int = PostgresWAL.defaultSegmentSize) throws -> [(path: String, lsn: LSN)] {
    let names = try FileManager.default.contentsOfDirectory(atPath: directory)
        .filter { $0.count == 24 && $0.allSatisfy(\.isHexDigit) }.sorted()
    let perLogId = UInt64(0x1_0000_0000) / UInt64(segmentSize)
    return names.map { name in
        let chars = Array(name)
        let logId = UInt64(String(chars[8..<16]), radix: 16)!
        let segment = UInt64(String(chars[16..<24]), radix: 16)!
        return (directory + "/" + name, LSN((logId * perLogId + segment) * UInt64(segmentSize)))
    }
}
