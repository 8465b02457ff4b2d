// A throwaway PostgreSQL 15 primary for integration tests.
//
// Shared by the integration test targets (library target PGTestSupport). Usage:
//
//     let primary = try TestPrimary.start(for: self, roles: [.init(name: "u_md5", password: "pw", method: .md5)])
//     let conninfo = primary.connectionString(user: "u_md5", password: "pw")
//
// What it does: the tests run as root and PostgreSQL refuses to, so the cluster lives in a temporary
// directory owned by the `postgres` user and every server command runs through `runuser -u postgres`.
// The server listens on a free loopback port (and a Unix socket in the same directory), with
// wal_level=replica and room for walsenders and slots. pg_hba.conf lets the superuser `postgres` in
// by trust and each extra role by its own method, for both databases and replication. `start(for:)`
// registers a teardown block, so the server is stopped and the directory removed even when the test
// fails.

import Foundation
import Glibc
import XCTest

public final class TestPrimary {
    public static let binDirectory = "/usr/lib/postgresql/15/bin"

    /// How pg_hba.conf authenticates a role.
    public enum AuthMethod: String {
        case trust
        /// Cleartext password.
        case password
        case md5
        case scram = "scram-sha-256"

        /// The password_encryption the role's password must be stored with for the method to work.
        public var passwordEncryption: String { self == .md5 ? "md5" : "scram-sha-256" }
    }

    public struct Role {
        public var name: String
        public var password: String?
        public var method: AuthMethod
        /// LOGIN REPLICATION when true (the default), plain LOGIN otherwise.
        public var replication = true

        public init(name: String, password: String? = nil, method: AuthMethod, replication: Bool = true) {
            self.name = name
            self.password = password
            self.method = method
            self.replication = replication
        }
    }

    public struct CommandFailure: Error, CustomStringConvertible {
        public var description: String
        public init(description: String) { self.description = description }
    }

    public let directory: String
    public let dataDirectory: String
    public let port: Int
    private var running = false

    /// True when PostgreSQL 15 is installed and the tests run as root (needed for runuser).
    public static var isAvailable: Bool {
        FileManager.default.isExecutableFile(atPath: binDirectory + "/postgres") && getuid() == 0
            && (try? shell("id postgres", check: false).status) == 0
    }

    /// Starts a primary and stops it (removing its directory) when `testCase` ends. Skips the test when
    /// PostgreSQL is not available.
    public static func start(for testCase: XCTestCase, roles: [Role] = [], settings: [String] = [],
                             initdbOptions: [String] = []) throws -> TestPrimary {
        try XCTSkipUnless(isAvailable, "PostgreSQL 15 (\(binDirectory)) and root are needed for this test")
        let primary = try TestPrimary(roles: roles, settings: settings, initdbOptions: initdbOptions)
        testCase.addTeardownBlock { primary.destroy() }
        return primary
    }

    /// `initdbOptions` are added to initdb's command line (e.g. `-k` for data checksums).
    public init(roles: [Role] = [], settings: [String] = [], initdbOptions: [String] = []) throws {
        directory = FileManager.default.temporaryDirectory.path + "/testprimary-\(UUID().uuidString.prefix(8))"
        dataDirectory = directory + "/data"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        port = try Self.freeLoopbackPort()
        do {
            try Self.shell("chown postgres: \(directory) && chmod 700 \(directory)")
            try asPostgres("\(Self.binDirectory)/initdb -D \(dataDirectory) -A trust -U postgres --no-sync -E UTF8 --locale=C \(initdbOptions.joined(separator: " "))")
            let conf = [
                "listen_addresses = '127.0.0.1'",
                "port = \(port)",
                "unix_socket_directories = '\(directory)'",
                "wal_level = replica",
                "max_wal_senders = 10",
                "max_replication_slots = 10",
                "fsync = off",
                "log_min_messages = warning",
            ] + settings
            try append(conf.joined(separator: "\n") + "\n", to: dataDirectory + "/postgresql.conf")
            var hba = [
                "local all postgres trust",
                "local replication postgres trust",
                "host all postgres 127.0.0.1/32 trust",
                "host replication postgres 127.0.0.1/32 trust",
            ]
            for role in roles {
                hba.append("host all \(role.name) 127.0.0.1/32 \(role.method.rawValue)")
                hba.append("host replication \(role.name) 127.0.0.1/32 \(role.method.rawValue)")
            }
            try (hba.joined(separator: "\n") + "\n").write(toFile: dataDirectory + "/pg_hba.conf", atomically: true, encoding: .utf8)
            try Self.shell("chown postgres: \(dataDirectory)/pg_hba.conf")
            try start()
            for role in roles {
                let password = role.password.map { "PASSWORD '\($0.replacingOccurrences(of: "'", with: "''"))'" } ?? ""
                try psql("SET password_encryption = '\(role.method.passwordEncryption)'; CREATE ROLE \(role.name) WITH LOGIN \(role.replication ? "REPLICATION" : "") \(password)")
            }
        } catch {
            destroy()
            throw error
        }
    }

    /// A libpq key=value connection string for `user` over TCP.
    public func connectionString(user: String = "postgres", password: String? = nil, dbname: String = "postgres") -> String {
        var text = "host=127.0.0.1 port=\(port) user=\(user) dbname=\(dbname)"
        if let password { text += " password='\(password.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "'", with: "\\'"))'" }
        return text
    }

    public func start() throws {
        try asPostgres("\(Self.binDirectory)/pg_ctl -D \(dataDirectory) -l \(directory)/server.log -w -t 60 start")
        running = true
    }

    public func stop() throws {
        guard running else { return }
        try asPostgres("\(Self.binDirectory)/pg_ctl -D \(dataDirectory) -m fast -w -t 30 stop")
        running = false
    }

    /// Runs SQL as the superuser through psql (over the Unix socket) and returns its unaligned,
    /// tuples-only output without the final newline.
    @discardableResult
    public func psql(_ sql: String) throws -> String {
        let output = try asPostgres("psql -X -q -At -v ON_ERROR_STOP=1 -h \(directory) -p \(port) -U postgres -d postgres -c \(Self.shellQuote(sql))").stdout
        return output.hasSuffix("\n") ? String(output.dropLast()) : output
    }

    /// The server log, for failure messages.
    public var serverLog: String { (try? String(contentsOfFile: directory + "/server.log", encoding: .utf8)) ?? "" }

    /// Stops the server (immediately if a fast stop fails, by signal if even that fails) and removes the
    /// directory. Idempotent.
    public func destroy() {
        if running {
            if (try? stop()) == nil {
                let immediate = try? Self.shell("runuser -u postgres -- \(Self.binDirectory)/pg_ctl -D \(dataDirectory) -m immediate -w -t 20 stop", check: false)
                if immediate?.status != 0, let pidLine = try? String(contentsOfFile: dataDirectory + "/postmaster.pid", encoding: .utf8).split(separator: "\n").first,
                   let pid = Int32(pidLine), pid > 1 {
                    // SIGQUIT is PostgreSQL's immediate shutdown.
                    kill(pid, SIGQUIT)
                }
            }
            running = false
        }
        if ProcessInfo.processInfo.environment["KEEP_PRIMARY"] == "1" {
            print("kept the primary's directory \(directory)")
            return
        }
        try? FileManager.default.removeItem(atPath: directory)
    }

    // MARK: - Helpers

    @discardableResult
    public func asPostgres(_ command: String) throws -> (status: Int32, stdout: String, stderr: String) {
        try Self.shell("cd \(directory) && runuser -u postgres -- \(command)")
    }

    private func append(_ text: String, to path: String) throws {
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: path))
        defer { try? handle.close() }
        try handle.seekToEnd()
        try handle.write(contentsOf: Data(text.utf8))
    }

    /// Runs `/bin/sh -c command` and waits. Output goes through files, so a chatty command cannot block
    /// on a full pipe. posix_spawn + waitpid rather than Foundation's Process: Process on Linux can miss
    /// the exit of a shell whose grandchild (the daemonised postgres started by pg_ctl) lives on.
    @discardableResult
    public static func shell(_ command: String, check: Bool = true) throws -> (status: Int32, stdout: String, stderr: String) {
        let tag = UUID().uuidString
        let out = NSTemporaryDirectory() + "testprimary-\(tag).out", err = NSTemporaryDirectory() + "testprimary-\(tag).err"
        defer {
            try? FileManager.default.removeItem(atPath: out)
            try? FileManager.default.removeItem(atPath: err)
        }
        let script = "(\(command)) >\(out) 2>\(err) </dev/null"
        var pid: pid_t = 0
        let argv: [UnsafeMutablePointer<CChar>?] = [strdup("/bin/sh"), strdup("-c"), strdup(script), nil]
        defer { for arg in argv { free(arg) } }
        let spawned = posix_spawn(&pid, "/bin/sh", nil, nil, argv, environ)
        guard spawned == 0 else { throw CommandFailure(description: "posix_spawn failed (\(spawned)): \(command)") }
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 {
            guard errno == EINTR else { throw CommandFailure(description: "waitpid failed: \(command)") }
        }
        // WIFEXITED / WEXITSTATUS by hand: the C macros are not imported.
        let exitStatus: Int32 = (status & 0x7F) == 0 ? (status >> 8) & 0xFF : 128 + (status & 0x7F)
        let result = (exitStatus,
                      (try? String(contentsOfFile: out, encoding: .utf8)) ?? "",
                      (try? String(contentsOfFile: err, encoding: .utf8)) ?? "")
        if check && result.0 != 0 {
            throw CommandFailure(description: "command failed with status \(result.0): \(command)\n\(result.2.suffix(2000))")
        }
        return result
    }

    public static func shellQuote(_ s: String) -> String { "'" + s.replacingOccurrences(of: "'", with: "'\\''") + "'" }

    /// A TCP port on 127.0.0.1 that was free a moment ago: the kernel picks it for a socket bound to 0.
    public static func freeLoopbackPort() throws -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw CommandFailure(description: "socket() failed") }
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = 0
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) } }
        guard bound == 0 else { throw CommandFailure(description: "bind() failed") }
        let named = withUnsafeMutablePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) } }
        guard named == 0 else { throw CommandFailure(description: "getsockname() failed") }
        return Int(UInt16(bigEndian: address.sin_port))
    }
}
