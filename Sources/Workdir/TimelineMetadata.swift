import Foundation
import LSM

/// A timeline's durable description, `timeline.json` in the timeline directory
/// (format-spec.md, "Timeline metadata"). Written with the durable-replace protocol; read at start-up.
///
/// The WAL source keeps its password (the receiver must log in again after a restart), so the file
/// is created with mode 0600 and the API only ever shows the redacted form.
public struct TimelineMetadata: Codable, Sendable {
    public static let fileName = "timeline.json"
    public static let formatName = "pageserver-timeline"
    public static let currentVersion = 1

    public var format = TimelineMetadata.formatName
    public var formatVersion = TimelineMetadata.currentVersion
    public var tenantId: String
    public var timelineId: String
    public var ancestorTimelineId: String?
    /// The branch point in the ancestor (0/0 without an ancestor).
    public var ancestorLsn: String
    /// The LSN the timeline's own data starts at (the base backup's start LSN for an attached one).
    public var startLsn: String
    public var walSource: String?
    public var systemId: String?
    public var createdAt: String

    public init(tenantId: String, timelineId: String, ancestorTimelineId: String?, ancestorLsn: String, startLsn: String,
                walSource: String?, systemId: String?, createdAt: String) {
        self.tenantId = tenantId
        self.timelineId = timelineId
        self.ancestorTimelineId = ancestorTimelineId
        self.ancestorLsn = ancestorLsn
        self.startLsn = startLsn
        self.walSource = walSource
        self.systemId = systemId
        self.createdAt = createdAt
    }

    enum CodingKeys: String, CodingKey {
        case format, formatVersion = "format_version", tenantId = "tenant_id", timelineId = "timeline_id"
        case ancestorTimelineId = "ancestor_timeline_id", ancestorLsn = "ancestor_lsn", startLsn = "start_lsn"
        case walSource = "wal_source", systemId = "system_id", createdAt = "created_at"
    }

    public static func load(directory: String) throws -> TimelineMetadata {
        let path = directory + "/" + fileName
        let data: Data
        do { data = try Data(contentsOf: URL(fileURLWithPath: path)) } catch {
            throw StorageError(.notFound, "timeline metadata is missing", file: path)
        }
        let m: TimelineMetadata
        do { m = try JSONDecoder().decode(TimelineMetadata.self, from: data) } catch {
            throw StorageError(.corruption, "timeline metadata is not valid: \(error)", file: path)
        }
        guard m.format == formatName else { throw StorageError(.corruption, "not a timeline metadata file", file: path) }
        guard m.formatVersion == currentVersion else {
            throw StorageError(.unsupported, "timeline metadata format version \(m.formatVersion) is not supported", file: path)
        }
        return m
    }

    public func save(directory: String) throws {
        let enc = JSONEncoder()
        enc.outputFormatting = [.prettyPrinted, .sortedKeys]
        let bytes = [UInt8](try enc.encode(self)) + [0x0A]
        try DurableFile.replace(directory + "/" + TimelineMetadata.fileName, with: bytes, directory: directory, mode: 0o600)
    }
}

/// Durable whole-file replacement for the daemon's small files: write NAME.tmp, fsync, rename,
/// fsync the directory.
public enum DurableFile {
    public static func replace(_ path: String, with bytes: [UInt8], directory: String, mode: mode_t = 0o644) throws {
        let tmp = path + ".tmp"
        let fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode)
        guard fd >= 0 else { throw StorageError(.io, "cannot create: \(String(cString: strerror(errno)))", file: tmp) }
        var ok = bytes.withUnsafeBytes { b in
            var done = 0
            while done < b.count {
                let n = write(fd, b.baseAddress! + done, b.count - done)
                if n < 0 { if errno == EINTR { continue }; return false }
                done += n
            }
            return true
        }
        if ok { ok = fsync(fd) == 0 }
        let err = errno
        close(fd)
        guard ok else { throw StorageError(.io, "cannot write: \(String(cString: strerror(err)))", file: tmp) }
        guard rename(tmp, path) == 0 else { throw StorageError(.io, "rename failed: \(String(cString: strerror(errno)))", file: path) }
        let dfd = open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if dfd >= 0 { fsync(dfd); close(dfd) }
    }

    /// Creates `path` and its missing parents; every directory it creates is made durable by an
    /// fsync of its parent.
    public static func makeDirectory(_ path: String) throws {
        var current = path.hasPrefix("/") ? "" : "."
        for part in path.split(separator: "/") {
            let parent = current.isEmpty ? "/" : current
            current += "/" + part
            if mkdir(current, 0o755) == 0 {
                let dfd = open(parent, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
                if dfd >= 0 { fsync(dfd); close(dfd) }
            } else if errno != EEXIST {
                throw StorageError(.io, "mkdir failed: \(String(cString: strerror(errno)))", file: current)
            }
        }
    }
}

public func rfc3339Now() -> String {
    let f = ISO8601DateFormatter()
    f.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
    return f.string(from: Date())
}
