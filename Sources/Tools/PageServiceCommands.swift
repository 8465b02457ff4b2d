import ArgumentParser
import Foundation
import WireProtocol

#if canImport(Glibc)
import Glibc
#endif

// `pagectl getpage`, `pagectl basebackup` and `pagectl fullbackup`: the page service (libpq port,
// pagestream protocol) from the command line.

/// HOST:PORT split; the port is required.
func parseHostPort(_ text: String, what: String = "--server") -> (host: String, port: Int) {
    guard let colon = text.lastIndex(of: ":"), let port = Int(text[text.index(after: colon)...]), (1...65535).contains(port) else {
        fail("\(what) '\(text)' is not HOST:PORT")
    }
    var host = String(text[..<colon])
    if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
    return (host.isEmpty ? "127.0.0.1" : host, port)
}

/// The HTTP API's address: `--http` when given, else the page service's host with port 9898.
func httpAddress(explicit: String?, server: String?) -> String {
    if let explicit { return explicit }
    guard let server else { return "127.0.0.1:9898" }
    let host = parseHostPort(server).host
    return host.contains(":") ? "[\(host)]:9898" : "\(host):9898"
}

/// `latest` (or nothing) is `PagestreamHeader.latest`; otherwise PostgreSQL's X/Y.
func parseRequestLSN(_ text: String?) -> UInt64 {
    guard let text, text != "latest" else { return PagestreamHeader.latest }
    guard let lsn = WireProtocol.parseLSN(text) else { fail("--lsn '\(text)' is not 'latest' or an LSN like 0/16B3748") }
    return lsn
}

func lsnText(_ lsn: UInt64) -> String { lsn == PagestreamHeader.latest ? "latest" : WireProtocol.formatLSN(lsn) }

/// The header of a read at `lsn`: an explicit LSN reads exactly there; `latest` reads the newest
/// ingested page without waiting for anything.
func pagestreamHeader(_ lsn: UInt64, requestId: UInt64 = 0) -> PagestreamHeader {
    PagestreamHeader(requestId: requestId, requestLSN: lsn, notModifiedSince: lsn == PagestreamHeader.latest ? 0 : lsn)
}

/// SPC/DB/REL[/FORK], fork by number or by name (main, fsm, vm, init).
func parseRelTag(_ text: String) -> PagestreamRelTag? {
    let parts = text.split(separator: "/", omittingEmptySubsequences: false)
    guard parts.count == 3 || parts.count == 4,
          let spc = UInt32(parts[0]), let db = UInt32(parts[1]), let rel = UInt32(parts[2]) else { return nil }
    var fork: UInt8 = 0
    if parts.count == 4 {
        switch parts[3] {
        case "main": fork = 0
        case "fsm": fork = 1
        case "vm": fork = 2
        case "init": fork = 3
        default:
            guard let f = UInt8(parts[3]), f <= 3 else { return nil }
            fork = f
        }
    }
    return PagestreamRelTag(spcNode: spc, dbNode: db, relNode: rel, forkNumber: fork)
}

extension PagestreamVersion: ExpressibleByArgument {
    public init?(argument: String) {
        switch argument {
        case "v2", "2": self = .v2
        case "v3", "3": self = .v3
        default: return nil
        }
    }
}

/// Writes all of `bytes` to `fd`; false on an error.
@discardableResult
func writeAll(_ fd: Int32, _ bytes: UnsafeRawBufferPointer) -> Bool {
    var done = 0
    while done < bytes.count {
        let n = write(fd, bytes.baseAddress! + done, bytes.count - done)
        if n < 0 {
            if errno == EINTR { continue }
            return false
        }
        done += n
    }
    return true
}

func writeStderr(_ text: String) {
    var t = text
    _ = t.withUTF8 { writeAll(2, UnsafeRawBufferPointer($0)) }
}

/// `hexdump -C`: offset, 16 bytes in two groups, the printable ones; runs of identical lines as `*`.
func hexDump(_ bytes: [UInt8]) -> String {
    var out = ""
    var previous: ArraySlice<UInt8>?
    var starred = false
    func hex2(_ b: UInt8) -> String { b < 16 ? "0" + String(b, radix: 16) : String(b, radix: 16) }
    for offset in stride(from: 0, to: bytes.count, by: 16) {
        let line = bytes[offset..<min(offset + 16, bytes.count)]
        if let previous, previous.elementsEqual(line) {
            if !starred { out += "*\n"; starred = true }
            continue
        }
        previous = line
        starred = false
        var text = String(String(offset, radix: 16).leftPadding(8).map { $0 == " " ? "0" : $0 }) + "  "
        for i in 0..<16 {
            text += i < line.count ? hex2(line[line.startIndex + i]) + " " : "   "
            if i == 7 { text += " " }
        }
        text += " |" + String(line.map { (0x20...0x7E).contains($0) ? Character(UnicodeScalar($0)) : "." }) + "|\n"
        out += text
    }
    out += String(String(bytes.count, radix: 16).leftPadding(8).map { $0 == " " ? "0" : $0 }) + "\n"
    return out
}

struct GetPageCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "getpage",
        abstract: "Read one page through the page service (pagestream GetPage) and write its 8192 bytes to stdout or a file.",
        discussion: "A pagestream Error response is printed on stderr and the exit status is 1.")

    @Option(help: "The page service (libpq port), HOST:PORT.") var server = "127.0.0.1:64000"
    @Option(help: "Tenant id.") var tenant: String
    @Option(help: "Timeline id.") var timeline: String
    @Option(help: "The relation fork, SPC/DB/REL[/FORK] (fork 0-3 or main/fsm/vm/init; default main).") var rel: String
    @Option(help: "Block number.") var blk: UInt32
    @Option(help: "LSN to read at, X/Y, or 'latest'.") var lsn = "latest"
    @Option(name: [.customShort("o"), .long], help: "Write the page to this file instead of stdout.") var output: String?
    @Flag(help: "Print a hexdump-like view instead of the raw bytes.") var hex = false
    @Option(help: "Pagestream protocol version, v2 or v3.") var `protocol`: PagestreamVersion = .v3

    func run() throws {
        let (host, port) = parseHostPort(server)
        guard let tag = parseRelTag(rel) else { fail("--rel '\(rel)' is not SPC/DB/REL[/FORK]") }
        let at = parseRequestLSN(lsn)
        let client: PageServiceClient
        do {
            client = try PageServiceClient.connect(host: host, port: port, tenant: tenant, timeline: timeline, version: `protocol`)
        } catch { fail("\(server): \(error)") }
        defer { client.close() }
        let response: PagestreamResponse
        do {
            response = try client.request(PagestreamRequest(header: pagestreamHeader(at, requestId: 1), body: .getPage(tag, block: blk)))
        } catch { fail("\(server): \(error)") }
        let page: [UInt8]
        switch response {
        case .page(let p): page = p
        case .error(let message): fail("page server: \(message)")
        default: fail("page server answered GetPage with a response of tag \(response.tag)")
        }
        let bytes = hex ? Array(hexDump(page).utf8) : page
        if let output {
            do { try Data(bytes).write(to: URL(fileURLWithPath: output)) } catch { fail("\(output): \(error)") }
        } else {
            guard bytes.withUnsafeBytes({ writeAll(1, $0) }) else { fail("stdout: \(String(cString: strerror(errno)))") }
        }
    }
}

struct BaseBackupCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "basebackup",
        abstract: "Fetch a basebackup tar (what a compute starts from) from the page service into a file.")
    @OptionGroup var options: BackupOptions
    func run() throws { options.run(kind: "basebackup") }
}

struct FullBackupCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "fullbackup",
        abstract: "Fetch a fullbackup tar (every relation file in full) from the page service into a file.")
    @OptionGroup var options: BackupOptions
    func run() throws { options.run(kind: "fullbackup") }
}

struct BackupOptions: ParsableArguments {
    @Option(help: "The page service (libpq port), HOST:PORT.") var server = "127.0.0.1:64000"
    @Option(help: "Tenant id.") var tenant: String
    @Option(help: "Timeline id.") var timeline: String
    @Option(help: "LSN of the backup, X/Y (default: the timeline's last record LSN).") var lsn: String?
    @Option(name: [.customShort("o"), .long], help: "The tar file to write (via FILE.partial, renamed on success).") var output: String

    /// Streams `kind <tenant> <timeline> [lsn]` into `output`.partial, renames it on success and
    /// removes it on failure; progress on a terminal, a summary at the end (both on stderr).
    func run(kind: String) {
        let (host, port) = parseHostPort(server)
        var command = "\(kind) \(tenant) \(timeline)"
        if let lsn {
            guard let value = WireProtocol.parseLSN(lsn) else { fail("--lsn '\(lsn)' is not an LSN like 0/16B3748") }
            command += " \(WireProtocol.formatLSN(value))"
        }
        let partial = output + ".partial"
        let fd = open(partial, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { fail("\(partial): \(String(cString: strerror(errno)))") }
        let interactive = isatty(2) == 1
        let start = nowSeconds()
        var bytes = 0
        var lastProgress = start
        func failAndRemove(_ message: String) -> Never {
            close(fd)
            unlink(partial)
            if interactive { writeStderr("\n") }
            fail(message)
        }
        do {
            try PageServiceClient.backup(host: host, port: port, command: command, timeoutSeconds: 30) { chunk in
                guard writeAll(fd, chunk) else {
                    throw PGError(.invalidState, "\(partial): \(String(cString: strerror(errno)))")
                }
                bytes += chunk.count
                if interactive {
                    let now = nowSeconds()
                    if now - lastProgress >= 0.25 {
                        lastProgress = now
                        writeStderr("\r\(kind): \(format1(Double(bytes) / 1e6)) MB, \(format1(Double(bytes) / 1e6 / (now - start))) MB/s   ")
                    }
                }
            }
        } catch {
            failAndRemove("\(kind) failed after \(bytes) bytes: \(error)")
        }
        guard fsync(fd) == 0 else { failAndRemove("\(partial): fsync: \(String(cString: strerror(errno)))") }
        guard close(fd) == 0 else { unlink(partial); fail("\(partial): close: \(String(cString: strerror(errno)))") }
        guard rename(partial, output) == 0 else { unlink(partial); fail("rename \(partial) -> \(output): \(String(cString: strerror(errno)))") }
        let seconds = nowSeconds() - start
        if interactive { writeStderr("\r" + String(repeating: " ", count: 60) + "\r") }
        writeStderr("\(kind): \(bytes) bytes (\(format1(Double(bytes) / 1e6)) MB) in \(format2(seconds)) s, \(format1(Double(bytes) / 1e6 / max(seconds, 1e-9))) MB/s -> \(output)\n")
    }
}
