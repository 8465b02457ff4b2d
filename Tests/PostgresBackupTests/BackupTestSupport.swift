import Foundation
import LSM
import PGTestSupport
import PostgresBackup
import PostgresRedo
import PostgresWAL
import XCTest

/// A primary's base backup and WAL replayed into a scratch store that stays open, so backups can be
/// taken from it at any LSN the WAL reached.
final class ReplayedTimeline {
    let directory: String
    let store: TimelineStore
    let redo = PostgresRedo(settings: RedoSettings())
    let baseBackupLSN: LSN
    let lastRecordEnd: LSN

    var source: StoreBackupSource { StoreBackupSource(store: store, redo: redo) }

    /// `baseTar` is pg_basebackup -Ft's base.tar; `walDirectory` holds the WAL from its start on.
    init(baseTar: String, walDirectory: String) throws {
        directory = NSTemporaryDirectory() + "backup-store-\(UUID().uuidString.prefix(8))"
        store = try TimelineStore.open(directory: directory, context: StorageContext(io: makeBlockIO(.pread)))
        let label = try Self.backupStartLSN(baseTar)
        baseBackupLSN = label
        let importer = BaseBackupImport(target: TimelineStoreTarget(store: store), startLSN: label)
        let parser = TarStreamParser(consumer: importer)
        try parser.feed(Array(try Data(contentsOf: URL(fileURLWithPath: baseTar))))
        try parser.finish()
        try importer.finish()
        store.advance(to: label)

        let segments = try WALSegmentFiles(directory: walDirectory)
        let ingest = WalIngest(target: TimelineStoreTarget(store: store), pageSource: TimelineStorePageSource(store: store, redo: redo))
        var decoder = try WALDecoder(startLSN: label, segmentSize: segments.segmentSize)
        var first = true
        reading: for path in try segments.paths(from: label) {
            var bytes = Array(try Data(contentsOf: URL(fileURLWithPath: path)))
            if first {
                bytes.removeFirst(Int(label.rawValue % UInt64(segments.segmentSize)))
                first = false
            }
            decoder.feed(bytes)
            do {
                while let record = try decoder.next() { try ingest.ingest(record) }
            } catch is WALError {
                break reading  // the end of valid WAL
            }
        }
        lastRecordEnd = ingest.lastRecordEndLSN ?? label
    }

    deinit {
        store.close()
        try? FileManager.default.removeItem(atPath: directory)
    }

    static func backupStartLSN(_ tar: String) throws -> LSN {
        final class LabelGrab: TarEntryConsumer {
            var inLabel = false
            var label: [UInt8] = []
            func begin(name: String, size: Int64, type: TarEntryType) throws { inLabel = name == "backup_label" }
            func data(_ chunk: UnsafeRawBufferPointer) throws { if inLabel { label.append(contentsOf: chunk) } }
            func end() throws { inLabel = false }
        }
        let grab = LabelGrab()
        let parser = TarStreamParser(consumer: grab)
        try parser.feed(Array(try Data(contentsOf: URL(fileURLWithPath: tar))))
        try parser.finish()
        for line in String(decoding: grab.label, as: UTF8.self).split(separator: "\n") where line.hasPrefix("START WAL LOCATION: ") {
            if let lsn = LSN(parsing: line.dropFirst(20).split(separator: " ")[0]) { return lsn }
        }
        throw TestPrimary.CommandFailure(description: "\(tar) has no START WAL LOCATION")
    }
}

/// Writes a backup into a tar file; returns its path.
func writeBackup(_ backup: DataDirectoryBackup, to path: String) throws {
    FileManager.default.createFile(atPath: path, contents: nil)
    let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: path))
    defer { try? handle.close() }
    try backup.write { chunk in try handle.write(contentsOf: Data(chunk)) }
}

/// A data directory unpacked from a backup tar, owned by `postgres`, and a server started on it.
final class RestoredServer {
    let directory: String
    let dataDirectory: String
    let port: Int
    private var running = false

    /// Unpacks `tar` (and does not start anything yet).
    init(tar: String) throws {
        directory = NSTemporaryDirectory() + "restored-\(UUID().uuidString.prefix(8))"
        dataDirectory = directory + "/data"
        port = try TestPrimary.freeLoopbackPort()
        try TestPrimary.shell("mkdir -p \(dataDirectory) && tar -xf \(tar) -C \(dataDirectory) && chmod 700 \(dataDirectory) && chown -R postgres: \(directory) && chmod 700 \(directory)")
    }

    func start() throws {
        try asPostgres("\(TestPrimary.binDirectory)/pg_ctl -D \(dataDirectory) -o \(TestPrimary.shellQuote("-p \(port) -k \(directory)")) -l \(directory)/server.log -w -t 60 start")
        running = true
    }

    func stop() throws {
        guard running else { return }
        try asPostgres("\(TestPrimary.binDirectory)/pg_ctl -D \(dataDirectory) -m fast -w -t 30 stop")
        running = false
    }

    @discardableResult
    func psql(_ sql: String, database: String = "postgres") throws -> String {
        let out = try asPostgres("psql -X -q -At -v ON_ERROR_STOP=1 -h \(directory) -p \(port) -U postgres -d \(database) -c \(TestPrimary.shellQuote(sql))").stdout
        return out.hasSuffix("\n") ? String(out.dropLast()) : out
    }

    var serverLog: String { (try? String(contentsOfFile: directory + "/server.log", encoding: .utf8)) ?? "" }

    @discardableResult
    func asPostgres(_ command: String) throws -> (status: Int32, stdout: String, stderr: String) {
        try TestPrimary.shell("cd \(directory) && runuser -u postgres -- \(command)")
    }

    func destroy() {
        if running {
            if (try? stop()) == nil {
                _ = try? TestPrimary.shell("runuser -u postgres -- \(TestPrimary.binDirectory)/pg_ctl -D \(dataDirectory) -m immediate -w -t 20 stop", check: false)
            }
            running = false
        }
        try? FileManager.default.removeItem(atPath: directory)
    }
}
