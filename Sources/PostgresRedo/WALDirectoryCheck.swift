#if canImport(Glibc)
import Glibc
#endif
import LSM
import PostgresWAL

/// Replays a pg_wal directory through ingest into a scratch store and checks every consistency image
/// with a `RedoVerifier`: the engine of `pagectl wal verify-redo` and of the redo tests.
///
/// Decoding starts at the first segment file (or `from`) and stops at `end` or, without it, at the
/// end of valid WAL (the first record that does not decode; its error is returned as `endNote`).
/// CREATE DATABASE ... FILE_COPY copies what pages the store can build; pages whose history starts
/// before the WAL read are left out and count as unverifiable.
public enum WALDirectoryCheck {
    public struct Result {
        public var verifier: RedoVerifier
        public var records: Int
        public var start: LSN
        public var lastRecordEnd: LSN?
        /// Why decoding stopped, when it stopped at the end of valid WAL.
        public var endNote: String?
    }

    /// With `baseBackup` (a pg_basebackup -Ft base.tar), its files are imported first at its start LSN
    /// (read from its backup_label) and replay starts there, as the daemon's attach does: then every
    /// page has a known history and none is unverifiable.
    public static func run(walDirectory wal: String, storeDirectory: String, settings: RedoSettings,
                           baseBackup: String? = nil, from: LSN? = nil, end: LSN? = nil,
                           maxChainLength: Int = 2_000) throws -> Result {
        let segments = try WALSegmentFiles(directory: wal)
        // No compaction runs here, so a hot page's chain grows with the whole WAL and checking every
        // record on it would cost quadratic time. Chains past `maxChainLength` are counted as
        // `chainTooLong` (the store refuses them; compaction is what would bound them).
        var config = StoreConfig()
        config.maxChainLength = maxChainLength
        var settings = settings
        settings.maxChainLength = maxChainLength
        let store = try TimelineStore.open(directory: storeDirectory, config: config, context: StorageContext(io: makeBlockIO(.pread)))
        defer { store.close() }
        var backupStart: LSN?
        if let baseBackup {
            let label = try BackupLabelReader.startLSN(tar: baseBackup)
            let importer = BaseBackupImport(target: TimelineStoreTarget(store: store), startLSN: label)
            let parser = TarStreamParser(consumer: importer)
            try readWholeFile(baseBackup) { try parser.feed($0) }
            try parser.finish()
            try importer.finish()
            store.advance(to: label)
            backupStart = label
        }
        let start = from ?? backupStart ?? LSN(segments.firstSegment * UInt64(segments.segmentSize))
        let paths = try segments.paths(from: start)
        let redo = PostgresRedo(settings: settings)
        let ingest = WalIngest(target: TimelineStoreTarget(store: store), pageSource: BestEffortPageSource(store: store, redo: redo))
        let verifier = RedoVerifier { key, lsn in try store.get(key, at: lsn, redo: redo) }
        var decoder = try WALDecoder(startLSN: start, segmentSize: segments.segmentSize)
        var records = 0
        var endNote: String?
        var done = false
        let chunk = 1 << 20
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: chunk, alignment: 4096)
        defer { buffer.deallocate() }
        for (i, path) in paths.enumerated() where !done {
            let fd = open(path, O_RDONLY)
            guard fd >= 0 else { throw StorageError(.io, "cannot open \(path): \(String(cString: strerror(errno)))") }
            defer { close(fd) }
            var position = off_t(i == 0 ? Int(start.rawValue % UInt64(segments.segmentSize)) : 0)
            while !done {
                let n = pread(fd, buffer.baseAddress, chunk, position)
                guard n >= 0 else { throw StorageError(.io, "cannot read \(path): \(String(cString: strerror(errno)))") }
                if n == 0 { break }
                position += off_t(n)
                decoder.feed(UnsafeRawBufferPointer(rebasing: buffer[0..<n]))
                do {
                    while let record = try decoder.next() {
                        if let end, record.startLSN >= end { done = true; break }
                        try ingest.ingest(record)
                        records += 1
                        if RedoVerifier.hasCheckImages(record) { verifier.check(record) }
                    }
                } catch let e as WALError {
                    if end != nil { throw e }
                    endNote = "WAL ends at \(decoder.lastRecordEndLSN.map { "\($0)" } ?? "\(start)"): \(e)"
                    done = true
                }
            }
        }
        return Result(verifier: verifier, records: records, start: start, lastRecordEnd: ingest.lastRecordEndLSN, endNote: endNote)
    }
}

/// Reads `path` in 1 MiB chunks.
private func readWholeFile(_ path: String, _ body: (UnsafeRawBufferPointer) throws -> Void) throws {
    let fd = open(path, O_RDONLY)
    guard fd >= 0 else { throw StorageError(.io, "cannot open \(path): \(String(cString: strerror(errno)))") }
    defer { close(fd) }
    let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 4096)
    defer { buffer.deallocate() }
    while true {
        let n = read(fd, buffer.baseAddress, buffer.count)
        guard n >= 0 else { throw StorageError(.io, "cannot read \(path): \(String(cString: strerror(errno)))") }
        if n == 0 { return }
        try body(UnsafeRawBufferPointer(rebasing: buffer[0..<n]))
    }
}

/// The START WAL LOCATION of the backup_label inside a base backup tar.
enum BackupLabelReader {
    static func startLSN(tar path: String) throws -> LSN {
        final class Grab: TarEntryConsumer {
            var inLabel = false
            var label: [UInt8] = []
            func begin(name: String, size: Int64, type: TarEntryType) throws { inLabel = name == "backup_label" }
            func data(_ chunk: UnsafeRawBufferPointer) throws { if inLabel { label.append(contentsOf: chunk) } }
            func end() throws { inLabel = false }
        }
        let grab = Grab()
        let parser = TarStreamParser(consumer: grab)
        try readWholeFile(path) { try parser.feed($0) }
        try parser.finish()
        let text = String(decoding: grab.label, as: UTF8.self)
        for line in text.split(separator: "\n") where line.hasPrefix("START WAL LOCATION: ") {
            let value = line.dropFirst("START WAL LOCATION: ".count).split(separator: " ").first.map(String.init) ?? ""
            if let lsn = LSN(parsing: value) { return lsn }
        }
        throw StorageError(.invalidArgument, "\(path) has no backup_label with a START WAL LOCATION")
    }
}

/// Pages from a store, or nil when the page cannot be built.
private struct BestEffortPageSource: PageSource {
    let store: TimelineStore
    let redo: any Redo
    func page(_ key: Key, at lsn: LSN) throws -> [UInt8]? { try? store.get(key, at: lsn, redo: redo) }
}

/// The WAL segment files of a pg_wal directory.
public struct WALSegmentFiles {
    public let directory: String
    /// File names (24 hex digits), sorted.
    public let names: [String]
    public let segmentSize: Int
    public let firstSegment: UInt64

    public init(directory: String) throws {
        self.directory = directory
        guard let d = opendir(directory) else {
            throw StorageError(.io, "cannot open WAL directory \(directory): \(String(cString: strerror(errno)))")
        }
        var names: [String] = []
        while let e = readdir(d) {
            let name = withUnsafeBytes(of: e.pointee.d_name) { String(decoding: $0.prefix(while: { $0 != 0 }), as: UTF8.self) }
            if name.count == 24, name.allSatisfy(\.isHexDigit) { names.append(name) }
        }
        closedir(d)
        names.sort()
        guard let first = names.first else { throw StorageError(.notFound, "no WAL segment files in \(directory)") }
        var st = stat()
        guard stat(directory + "/" + first, &st) == 0 else { throw StorageError(.io, "cannot stat \(directory)/\(first)") }
        let size = Int(st.st_size)
        guard size >= 1 << 20, size & (size - 1) == 0 else {
            throw StorageError(.invalidArgument, "\(directory)/\(first) is \(size) bytes, not a WAL segment")
        }
        self.names = names
        segmentSize = size
        firstSegment = Self.segmentNumber(first, segmentSize: size)
    }

    public static func segmentNumber(_ name: String, segmentSize: Int) -> UInt64 {
        let perLogId = UInt64(0x1_0000_0000) / UInt64(segmentSize)
        let chars = Array(name)
        return UInt64(String(chars[8..<16]), radix: 16)! * perLogId + UInt64(String(chars[16..<24]), radix: 16)!
    }

    /// The paths of the consecutive segments from the one holding `start` on.
    public func paths(from start: LSN) throws -> [String] {
        let wanted = start.rawValue / UInt64(segmentSize)
        var paths: [String] = []
        var expected = wanted
        for name in names where Self.segmentNumber(name, segmentSize: segmentSize) >= wanted {
            guard Self.segmentNumber(name, segmentSize: segmentSize) == expected else {
                throw StorageError(.notFound, "WAL segment \(expected) is missing from \(directory) (next is \(name))")
            }
            paths.append(directory + "/" + name)
            expected += 1
        }
        guard !paths.isEmpty else { throw StorageError(.notFound, "\(directory) has no segment holding \(start)") }
        return paths
    }
}
