// swift-tools-version:6.0
// The page server: a log-structured storage engine (LSM), the daemon (Server) and its tool (Tools).
import PackageDescription

// The engine, WAL decoding and redo run whole WAL streams in the tests: unoptimised they are 10-50x
// slower, so they are optimised in debug builds too (tests and debugging of the other targets keep
// -Onone).
//
// Release builds of these targets also drop Swift's dynamic exclusivity checks (swift_beginAccess /
// endAccess on class properties and globals: about 9% of the WAL ingest thread's time, measured with
// perf). Debug builds, which the tests run, keep them, so a violation still fails a test.
let optimizedEvenInDebug: [SwiftSetting] = [
    .unsafeFlags(["-O"], .when(configuration: .debug)),
    .unsafeFlags(["-enforce-exclusivity=unchecked"], .when(configuration: .release)),
]

let package = Package(
    name: "pageserver",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "pageserver", targets: ["Server"]),
        .executable(name: "pagectl", targets: ["Tools"]),
        // Libraries for packages outside the server build (Benchmarks/RocksBaseline): the engine, WAL
        // decoding and ingest, and redo. The server itself does not need them as products.
        .library(name: "LSM", targets: ["LSM"]),
        .library(name: "PostgresWAL", targets: ["PostgresWAL"]),
        .library(name: "PostgresRedo", targets: ["PostgresRedo"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
        .package(url: "https://github.com/apple/swift-crypto", from: "3.12.0"),
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.0.0"),
        .package(url: "https://github.com/LebJe/TOMLKit", from: "0.6.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.0.0"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.80.0"),
        .package(url: "https://github.com/HdrHistogram/hdrhistogram-swift", from: "0.2.0"),
    ],
    targets: [
        // C shims: liburing's inline functions behind real symbols, CRC-32C with SSE4.2, and liblz4.
        .target(
            name: "CShims",
            linkerSettings: [.linkedLibrary("uring"), .linkedLibrary("lz4"), .linkedLibrary("zstd")]
        ),
        // The engine: layer files, layer map, in-memory layer, block cache, io_uring reads.
        // Knows nothing of PostgreSQL or sockets.
        .target(
            name: "LSM",
            dependencies: ["CShims"],
            swiftSettings: optimizedEvenInDebug
        ),
        // PostgreSQL 15 knowledge: WAL format and decoding (later: page layouts, redo, pg_control).
        .target(
            name: "PostgresWAL",
            dependencies: ["CShims", "LSM"],
            swiftSettings: optimizedEvenInDebug
        ),
        // PostgreSQL 15 redo in Swift: page layouts, the resource managers' redo, masking, checksums,
        // and the consistency checker. A `Redo` for the engine; knows nothing of files or sockets.
        .target(
            name: "PostgresRedo",
            dependencies: ["LSM", "PostgresWAL"],
            swiftSettings: optimizedEvenInDebug
        ),
        // fullbackup / basebackup: a PostgreSQL 15 data directory as a tar stream, built from a
        // timeline's keys at an LSN (pg_control and a WAL segment with a shutdown checkpoint made up).
        .target(
            name: "PostgresBackup",
            dependencies: ["LSM", "PostgresWAL"],
            swiftSettings: optimizedEvenInDebug
        ),
        // The PostgreSQL wire protocol (v3): the replication client, the pagestream codec and client,
        // and the server side of the libpq port (SwiftNIO). Knows nothing of files or of the engine.
        .target(
            name: "WireProtocol",
            dependencies: [
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ]
        ),
        // The workdir as the daemon and the offline tools share it: timeline metadata, the lock file,
        // durable small files, and the compaction/GC policy.
        .target(
            name: "Workdir",
            dependencies: ["LSM", "PostgresWAL"]
        ),
        .executableTarget(
            name: "Server",
            dependencies: [
                "CShims",
                "LSM",
                "Workdir",
                "PostgresWAL",
                "PostgresRedo",
                "PostgresBackup",
                "WireProtocol",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "TOMLKit", package: "TOMLKit"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .executableTarget(
            name: "Tools",
            dependencies: [
                "LSM",
                "Workdir",
                "PostgresWAL",
                "PostgresRedo",
                "WireProtocol",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Histogram", package: "hdrhistogram-swift"),
            ]
        ),
        .testTarget(name: "LSMTests", dependencies: ["LSM", "CShims", "PGTestSupport"]),
        .testTarget(name: "PostgresWALTests", dependencies: ["PostgresWAL", "PostgresRedo", "PGTestSupport"]),
        .testTarget(name: "PostgresRedoTests", dependencies: ["PostgresRedo", "PGTestSupport"]),
        .testTarget(name: "PostgresBackupTests", dependencies: ["PostgresBackup", "PostgresRedo", "PostgresWAL", "LSM", "PGTestSupport"]),
        .testTarget(name: "WireProtocolTests", dependencies: ["WireProtocol", "PGTestSupport"]),
        // A throwaway PostgreSQL 15 primary for the integration tests.
        .target(name: "PGTestSupport", path: "Tests/PGTestSupport"),
        // The daemon end to end: the real pageserver binary against a real primary.
        .testTarget(name: "ServerTests", dependencies: ["PGTestSupport", "WireProtocol"]),
    ],
    swiftLanguageModes: [.v6]
)
