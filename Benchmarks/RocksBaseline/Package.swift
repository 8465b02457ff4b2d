// swift-tools-version:6.0
// The seed's RocksDB page store, as a baseline for our layer files (issue 8), and `rocksbench`, the
// driver that measures both stores the same way. A package of its own so that the server build never
// needs RocksDB: `make test` and `make release` do not look here.
import Foundation
import PackageDescription

// SwiftPM names a path dependency after its directory's last component, so the main package's identity
// is whatever the checkout is called (main, wt-rocks, ...): derive it rather than hard-code it.
let mainPackageDirectory = URL(fileURLWithPath: Context.packageDirectory)
    .deletingLastPathComponent().deletingLastPathComponent().standardizedFileURL
let mainPackage = mainPackageDirectory.lastPathComponent

let package = Package(
    name: "RocksBaseline",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "rocksbench", targets: ["rocksbench"]),
    ],
    dependencies: [
        .package(path: "../.."),
    ],
    targets: [
        // Debian's librocksdb-dev through its C API (rocksdb/c.h).
        .systemLibrary(name: "CRocksDB", path: "Sources/CRocksDB"),
        .executableTarget(
            name: "rocksbench",
            dependencies: [
                "CRocksDB",
                .product(name: "LSM", package: mainPackage),
                .product(name: "PostgresWAL", package: mainPackage),
                .product(name: "PostgresRedo", package: mainPackage),
            ]
        ),
    ],
    swiftLanguageModes: [.v6]
)
