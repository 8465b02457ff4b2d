import ArgumentParser
import LSM
import Logging

#if canImport(Glibc)
import Glibc
#endif

/// `pageserver`: the daemon. This first version owns the workdir (lock file) and the storage
/// context; the page service, the WAL receiver and the HTTP API are wired in by later issues.
@main
struct PageServer: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "pageserver", abstract: "The PostgreSQL page server.")

    @Option(help: "Working directory (created if missing).") var workdir = "./.pageserver"
    @Option(help: "TOML config file.") var config: String?
    @Option(name: .customLong("listen-pg"), help: "libpq listen address.") var listenPg = "127.0.0.1:64000"
    @Option(name: .customLong("listen-http"), help: "HTTP listen address.") var listenHttp = "127.0.0.1:9898"

    func run() throws {
        var logger = Logger(label: "pageserver")
        logger.logLevel = .info
        let lock = try WorkdirLock(workdir: workdir)
        defer { lock.release() }
        logger.info("pageserver started", metadata: ["workdir": "\(workdir)", "listen_pg": "\(listenPg)", "listen_http": "\(listenHttp)"])
        var set = sigset_t()
        sigemptyset(&set)
        sigaddset(&set, SIGTERM)
        sigaddset(&set, SIGINT)
        pthread_sigmask(SIG_BLOCK, &set, nil)
        var sig: Int32 = 0
        sigwait(&set, &sig)
        logger.info("signal \(sig) received, shutting down")
    }
}

/// The workdir's lock file: a second server on the same workdir refuses to start.
final class WorkdirLock {
    let path: String
    let fd: Int32

    init(workdir: String) throws {
        var current = workdir.hasPrefix("/") ? "" : "."
        for part in workdir.split(separator: "/") {
            current += "/" + part
            mkdir(current, 0o755)
        }
        path = workdir + "/pageserver.lock"
        fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw ValidationError("cannot open lock file \(path): \(String(cString: strerror(errno)))") }
        guard flock(fd, LOCK_EX | LOCK_NB) == 0 else {
            close(fd)
            throw ValidationError("another pageserver is already running on workdir \(workdir) (lock file \(path) is held)")
        }
        ftruncate(fd, 0)
        let pid = "\(getpid())\n"
        _ = pid.withCString { write(fd, $0, strlen($0)) }
    }

    func release() { close(fd) }
}
