import ArgumentParser
import LSM
import PostgresRedo
import PostgresWAL

#if canImport(Glibc)
import Glibc
#endif

/// `pagectl wal ...`: tools over a pg_wal directory.
struct WALCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "wal",
        abstract: "Work with PostgreSQL WAL segment files.",
        subcommands: [WALVerifyRedo.self])
}

/// `pagectl wal verify-redo`: replays a pg_wal directory with our redo and checks every page against
/// the primary's `wal_consistency_checking` images.
///
/// The WAL is decoded from the first segment (or `--from`), ingested into a scratch store exactly as
/// the daemon ingests it, and after each record every consistency image it carries is compared with
/// the page our redo builds at the record's end (see `RedoVerifier`). Pages whose history starts
/// before the WAL read (no base in the store) are counted as unverifiable. Decoding stops at `--end`
/// or, without it, at the end of valid WAL. Exit status 1 when anything mismatched or failed.
struct WALVerifyRedo: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "verify-redo",
        abstract: "Replay WAL with native redo and compare every page with the primary's wal_consistency_checking images.")

    @Argument(help: "The pg_wal directory (segment files).") var wal: String
    @Option(help: "Where decoding starts (HI/LO); default: the start of the first segment file.") var from: String?
    @Option(help: "Stop before the first record that starts at or after this LSN (HI/LO); default: the end of valid WAL.") var end: String?
    @Option(help: "Scratch directory for the store (must not exist or be empty); default: a temporary one, removed after.") var dir: String?
    @Flag(help: "The cluster has data checksums.") var checksums = false
    @Option(help: "A base backup's base.tar (pg_basebackup -Ft) to import first; replay then starts at its start LSN.") var baseBackup: String?
    @Option(help: "Mismatches printed in full.") var show = 20
    @Flag(help: "Print one JSON line instead of the table.") var json = false

    func run() throws {
        let start: LSN? = try from.map { text in
            guard let l = LSN(parsing: text) else { throw ValidationError("--from \(text) is not an LSN (HI/LO)") }
            return l
        }
        let stop: LSN? = try end.map { text in
            guard let l = LSN(parsing: text) else { throw ValidationError("--end \(text) is not an LSN (HI/LO)") }
            return l
        }
        let scratch = dir ?? makeTemporaryDirectory()
        defer { if dir == nil { removeTree(scratch) } }
        let result: WALDirectoryCheck.Result
        do {
            result = try WALDirectoryCheck.run(walDirectory: wal, storeDirectory: scratch,
                                               settings: RedoSettings(dataChecksums: checksums), baseBackup: baseBackup,
                                               from: start, end: stop)
        } catch {
            fail("\(error)")
        }
        let verifier = result.verifier
        let totals = verifier.totals
        if json {
            emitJSON([("records", "\(result.records)"), ("checked", "\(totals.checked)"), ("matched", "\(totals.matched)"),
                      ("mismatched", "\(totals.mismatched)"), ("failed", "\(totals.failed)"),
                      ("unverifiable", "\(totals.unverifiable)"), ("unsupported", "\(totals.unsupported)")])
        } else {
            print("decoded and ingested \(result.records) records from \(result.start)" + (result.endNote.map { "; \($0)" } ?? ""))
            print(verifier.report())
            for m in verifier.mismatches.prefix(show) { print("MISMATCH \(m)") }
        }
        if totals.mismatched + totals.failed > 0 { throw ExitCode(1) }
    }
}

func makeTemporaryDirectory() -> String {
    var template = Array("/tmp/pagectl-XXXXXX".utf8CString)
    guard let p = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) else {
        fail("cannot create a temporary directory: \(String(cString: strerror(errno)))")
    }
    return String(cString: p)
}

func removeTree(_ path: String) {
    var st = stat()
    guard lstat(path, &st) == 0 else { return }
    if (st.st_mode & S_IFMT) == S_IFDIR {
        if let d = opendir(path) {
            var names: [String] = []
            while let e = readdir(d) {
                let name = withUnsafeBytes(of: e.pointee.d_name) { String(decoding: $0.prefix(while: { $0 != 0 }), as: UTF8.self) }
                if name != "." && name != ".." { names.append(name) }
            }
            closedir(d)
            for n in names { removeTree(path + "/" + n) }
        }
        rmdir(path)
    } else {
        unlink(path)
    }
}
