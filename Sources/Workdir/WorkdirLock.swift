import Foundation
import LSM
#if canImport(Glibc)
import Glibc
#endif

/// The workdir's lock file (flock, held while the daemon runs, or while `pagectl compact` works):
/// a second server, or an offline command while the server runs, refuses with a clear message.
public final class WorkdirLock {
    public let path: String
    let fd: Int32

    public init(workdir: String) throws {
        try DurableFile.makeDirectory(workdir)
        path = workdir + "/pageserver.lock"
        fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw StorageError(.io, "cannot open the lock file: \(String(cString: strerror(errno)))", file: path) }
        guard flock(fd, LOCK_EX | LOCK_NB) == 0 else {
            close(fd)
            throw StorageError(.invalidArgument, "another pageserver is already running on workdir \(workdir) (lock file \(path) is held)")
        }
        ftruncate(fd, 0)
        let pid = "\(getpid())\n"
        _ = pid.withCString { write(fd, $0, strlen($0)) }
    }

    public func release() { close(fd) }
}
