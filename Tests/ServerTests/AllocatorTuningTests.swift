import Foundation
import Glibc
import XCTest

/// The daemon re-executes itself once at start so that malloc asks for transparent huge pages
/// (`AllocatorTuning`), keeping its pid; a `glibc.malloc.hugetlb` setting of the user's is left as
/// it is.
final class AllocatorTuningTests: XCTestCase {
    private func environment(of pid: pid_t) throws -> [String] {
        let data = try Data(contentsOf: URL(fileURLWithPath: "/proc/\(pid)/environ"))
        return data.split(separator: 0).map { String(decoding: $0, as: UTF8.self) }
    }

    private var thpOnRequestOnly: Bool {
        ((try? String(contentsOfFile: "/sys/kernel/mm/transparent_hugepage/enabled", encoding: .utf8)) ?? "").contains("[madvise]")
    }

    func testDaemonAsksForHugePagesAndKeepsItsPid() throws {
        let server = try TestPageServer.start(for: self)
        // The pid spawned is the one that answers: the re-execution kept it.
        XCTAssertEqual(try server.request("GET", "/v1/status").status, 200)
        let tunables = try environment(of: server.pid).first { $0.hasPrefix("GLIBC_TUNABLES=") }
        if thpOnRequestOnly {
            XCTAssertEqual(tunables, "GLIBC_TUNABLES=glibc.malloc.hugetlb=1", "the daemon did not re-execute with huge pages asked for")
        } else {
            XCTAssertNil(tunables, "THP is not madvise-only here: nothing to ask for")
        }
    }

    func testAUserSettingIsLeftAsItIs() throws {
        setenv("GLIBC_TUNABLES", "glibc.malloc.hugetlb=0", 1)
        defer { unsetenv("GLIBC_TUNABLES") }
        let server = try TestPageServer.start(for: self)
        let tunables = try environment(of: server.pid).first { $0.hasPrefix("GLIBC_TUNABLES=") }
        XCTAssertEqual(tunables, "GLIBC_TUNABLES=glibc.malloc.hugetlb=0")
    }
}
