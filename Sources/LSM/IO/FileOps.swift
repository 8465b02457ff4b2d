import CShims
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Thin, throwing wrappers over the POSIX calls the engine uses to write files durably.
///
/// Durable replacement of a file: write `name.tmp`, `fsync` it, `rename` over `name`, `fsync` the
/// directory. Every error names the call and the path.
enum FileOps {
    static func openForWrite(_ path: String) throws -> Int32 {
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw ioError("open", errno: errno, file: path) }
        return fd
    }

    static func openForRead(_ path: String, direct: Bool = false) throws -> Int32 {
        var flags = O_RDONLY | O_CLOEXEC
        if direct { flags |= cs_o_direct_flag() }
        let fd = open(path, flags)
        guard fd >= 0 else {
            let e = errno
            if e == ENOENT { throw StorageError(.notFound, "file does not exist", file: path) }
            throw ioError("open", errno: e, file: path)
        }
        return fd
    }

    static func writeAll(_ fd: Int32, _ bytes: UnsafeRawBufferPointer, at offset: UInt64, path: String) throws {
        var done = 0
        while done < bytes.count {
            let n = pwrite(fd, bytes.baseAddress! + done, bytes.count - done, off_t(offset) + off_t(done))
            if n < 0 {
                if errno == EINTR { continue }
                throw ioError("pwrite", errno: errno, file: path, offset: offset + UInt64(done))
            }
            done += n
        }
    }

    static func readAll(_ fd: Int32, into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64, path: String) throws -> Int {
        var done = 0
        while done < buffer.count {
            let n = pread(fd, buffer.baseAddress! + done, buffer.count - done, off_t(offset) + off_t(done))
            if n < 0 {
                if errno == EINTR { continue }
                throw ioError("pread", errno: errno, file: path, offset: offset + UInt64(done))
            }
            if n == 0 { break }
            done += n
        }
        return done
    }

    static func fsyncFile(_ fd: Int32, path: String) throws {
        guard fsync(fd) == 0 else { throw ioError("fsync", errno: errno, file: path) }
    }

    static func fsyncDirectory(_ path: String) throws {
        let fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { throw ioError("open", errno: errno, file: path) }
        defer { close(fd) }
        guard fsync(fd) == 0 else { throw ioError("fsync", errno: errno, file: path) }
    }

    static func rename(_ from: String, _ to: String) throws {
        guard Glibc.rename(from, to) == 0 else { throw ioError("rename to \(to)", errno: errno, file: from) }
    }

    static func remove(_ path: String) throws {
        guard unlink(path) == 0 || errno == ENOENT else { throw ioError("unlink", errno: errno, file: path) }
    }

    static func fileSize(_ fd: Int32, path: String) throws -> UInt64 {
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw ioError("fstat", errno: errno, file: path) }
        return UInt64(st.st_size)
    }

    static func exists(_ path: String) -> Bool { access(path, F_OK) == 0 }

    static func makeDirectories(_ path: String) throws {
        var current = path.hasPrefix("/") ? "" : "."
        for part in path.split(separator: "/") {
            current += "/" + part
            if mkdir(current, 0o755) != 0 && errno != EEXIST { throw ioError("mkdir", errno: errno, file: current) }
        }
    }

    static func listDirectory(_ path: String) throws -> [String] {
        guard let dir = opendir(path) else { throw ioError("opendir", errno: errno, file: path) }
        defer { closedir(dir) }
        var names: [String] = []
        while let ent = readdir(dir) {
            let name = withUnsafePointer(to: ent.pointee.d_name) { p in
                p.withMemoryRebound(to: CChar.self, capacity: 256) { String(cString: $0) }
            }
            if name != "." && name != ".." { names.append(name) }
        }
        return names.sorted()
    }

    /// Writes `bytes` to `path` durably and atomically (tmp, fsync, rename, fsync directory).
    static func replaceDurably(_ path: String, with bytes: [UInt8], directory: String) throws {
        let tmp = path + ".tmp"
        let fd = try openForWrite(tmp)
        do {
            try bytes.withUnsafeBytes { try writeAll(fd, $0, at: 0, path: tmp) }
            try fsyncFile(fd, path: tmp)
        } catch {
            close(fd)
            throw error
        }
        close(fd)
        try rename(tmp, path)
        try fsyncDirectory(directory)
    }

    static func readWholeFile(_ path: String) throws -> [UInt8] {
        let fd = try openForRead(path)
        defer { close(fd) }
        let size = try fileSize(fd, path: path)
        var bytes = [UInt8](repeating: 0, count: Int(size))
        let n = try bytes.withUnsafeMutableBytes { try readAll(fd, into: $0, at: 0, path: path) }
        bytes.removeLast(bytes.count - n)
        return bytes
    }
}
