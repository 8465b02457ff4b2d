import ArgumentParser
import Foundation
import Hummingbird
import LSM
import Workdir
import Logging
import WireProtocol

let serverLog: Logger = {
    var l = Logger(label: "pageserver")
    l.logLevel = .info
    return l
}()

/// `pageserver`: the daemon. Owns the workdir (lock file), loads every tenant and timeline, starts
/// their WAL receivers and serves the HTTP management API until SIGTERM/SIGINT, then flushes every
/// timeline and exits 0.
@main
struct PageServer: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "pageserver", abstract: "The PostgreSQL page server.")

    @Option(help: "Working directory (created if missing). Default ./.pageserver") var workdir: String?
    @Option(help: "TOML config file.") var config: String?
    @Option(name: .customLong("listen-pg"), help: "libpq listen address HOST:PORT. Default 127.0.0.1:64000") var listenPg: String?
    @Option(name: .customLong("listen-http"), help: "HTTP listen address HOST:PORT. Default 127.0.0.1:9898") var listenHttp: String?

    func run() async throws {
        tuneMalloc()  // first: it may re-execute the process
        var cfg = ServerConfig()
        do {
            if let config { try cfg.apply(tomlFile: config) }
        } catch {
            fatalExit("\(error)")
        }
        if let workdir { cfg.workdir = workdir }
        if let listenPg { cfg.listenPg = listenPg }
        if let listenHttp { cfg.listenHttp = listenHttp }
        LSMLog.warning = { serverLog.warning("\($0)") }
        raiseOpenFileLimit()

        let lock: WorkdirLock
        do { lock = try WorkdirLock(workdir: cfg.workdir) } catch { fatalExit("\(error)") }
        defer { lock.release() }
        guard let (httpHost, httpPort) = splitHostPort(cfg.listenHttp) else { fatalExit("--listen-http '\(cfg.listenHttp)' is not HOST:PORT") }
        guard let (pgHost, pgPort) = splitHostPort(cfg.listenPg) else { fatalExit("--listen-pg '\(cfg.listenPg)' is not HOST:PORT") }

        let metrics = ServerMetrics()
        let repository = Repository(config: cfg, metrics: metrics)
        do { try repository.load() } catch { fatalExit("cannot load the workdir \(cfg.workdir): \(error)") }
        serverLog.info("pageserver started", metadata: ["workdir": "\(cfg.workdir)", "listen_http": "\(cfg.listenHttp)",
                                                        "listen_pg": "\(cfg.listenPg)", "io_engine": "\(repository.context.io.kind.rawValue)",
                                                        "timelines": "\(repository.allTimelines().count)"])
        let pageServiceMetrics = PageServiceMetrics(metrics.registry)
        var limits = PGServerLimits()
        limits.maxConnections = cfg.pageServiceMaxConnections
        let settings = PageServiceSettings(maxInflight: cfg.pageServiceMaxInflight, batchSize: 32,
                                           waitLSNTimeoutSeconds: cfg.waitLsnTimeoutSeconds,
                                           pagestreamThreads: PagestreamThreadSlots(cfg.pagestreamThreads))
        let pageService: PGWireServer
        do {
            pageService = try PGWireServer(host: pgHost, port: pgPort, limits: limits, threads: 2) {
                PageServiceSession(repository: repository, metrics: pageServiceMetrics, settings: settings)
            }
        } catch {
            repository.shutdown()
            fatalExit("cannot start the page service: \(error)")
        }
        let app = Application(router: HTTPAPI(repository: repository).makeRouter(),
                              configuration: .init(address: .hostname(httpHost, port: httpPort), serverName: "pageserver"),
                              logger: { var l = Logger(label: "pageserver.http"); l.logLevel = .warning; return l }())
        do {
            try await app.runService()
        } catch {
            serverLog.error("HTTP server failed: \(error)")
            pageService.shutdown()
            repository.shutdown()
            throw ExitCode(1)
        }
        serverLog.info("shutting down: closing page service connections, flushing every timeline")
        pageService.shutdown()
        repository.shutdown()
        serverLog.info("pageserver stopped")
    }
}

/// Every open layer file holds a descriptor, and one attach creates one set of files per relation
/// chunk (about a thousand for an empty cluster), so the soft limit (often 1024) is raised to the hard
/// limit at start-up.
func raiseOpenFileLimit() {
    var limit = rlimit()
    guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0, limit.rlim_cur < limit.rlim_max else { return }
    let before = limit.rlim_cur
    limit.rlim_cur = limit.rlim_max
    if setrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0 {
        serverLog.info("raised the open file limit from \(before) to \(limit.rlim_cur)")
    } else {
        serverLog.warning("cannot raise the open file limit above \(before): \(String(cString: strerror(errno)))")
    }
}

/// Every page service batch allocates a few hundred KiB of response buffers, above glibc's default
/// 128 KiB mmap threshold: each would be a fresh mmap, page-faulted in and unmapped again, which cost
/// about a tenth of the CPU of a pipelined GetPage stream. Serving them from the heap, and not
/// trimming the heap's top after every free, keeps that memory warm (`AllocatorTuning`, which the
/// in-memory layer's arena pages need as well), and malloc asks for transparent huge pages.
func tuneMalloc() {
    AllocatorTuning.apply()
}

func splitHostPort(_ s: String) -> (String, Int)? {
    guard let colon = s.lastIndex(of: ":"), let port = Int(s[s.index(after: colon)...]), port > 0, port < 65536 else { return nil }
    return (String(s[..<colon]), port)
}

func fatalExit(_ message: String) -> Never {
    FileHandle.standardError.write(Data(("pageserver: " + message + "\n").utf8))
    exit(1)
}
