import ArgumentParser
import LSM

#if canImport(Glibc)
import Glibc
#endif

/// `pagectl`: the page server's command-line tool, a thin client of the same libraries.
@main
struct Pagectl: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "pagectl",
        abstract: "Inspect layer files, drive the engine and benchmark it.",
        subcommands: [LayerCommand.self, EngineCommand.self, WALCommand.self, VerifyCommand.self,
                      GetPageCommand.self, BaseBackupCommand.self, FullBackupCommand.self, BenchCommand.self,
                      CompactCommand.self]
    )

    /// The engine runs here with the daemon's allocator settings, so that `pagectl engine bench`
    /// measures what the daemon does.
    static func main() {
        AllocatorTuning.apply()
        main(nil)
    }
}

struct LayerCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "layer",
        abstract: "Look at layer files.",
        subcommands: [LayerDump.self, LayerInspect.self, LayerMap.self]
    )
}

/// Prints `message` to stderr and exits with `code`.
func fail(_ message: String, code: Int32 = 1) -> Never {
    var line = "pagectl: " + message + "\n"
    line.withUTF8 { _ = write(2, $0.baseAddress, $0.count) }
    exit(code)
}

func kindName(_ k: Value.Kind, _ willInit: Bool) -> String {
    switch k {
    case .image: return "image"
    case .walRecord: return willInit ? "wal-record(will-init)" : "wal-record"
    case .engineRecord: return willInit ? "engine-record(will-init)" : "engine-record"
    }
}

func printHeader(_ i: LayerInspection) {
    let h = i.header
    print("file:          \(i.path)")
    print("kind:          \(h.kind)  (format version \(h.formatVersion))")
    print("chunk:         \(h.chunk)")
    if h.kind == .image {
        print("lsn:           \(h.lsnStart)")
    } else {
        print("lsn range:     \(h.lsnStart) .. \(h.lsnEnd) (end exclusive)")
    }
    print("key range:     \(h.entryCount == 0 ? "(empty)" : "\(h.keyMin) .. \(h.keyMax)")")
}

struct LayerDump: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "dump", abstract: "Print every entry of a layer file: key, LSN, kind, size.")

    @Argument(help: "The layer file.") var file: String

    func run() throws {
        let i: LayerInspection
        do { i = try LayerInspector.inspect(path: file) } catch { fail("\(error)") }
        printHeader(i)
        print("entries:       \(i.entries.count)")
        print("")
        print("key                                   lsn              kind                       bytes  block")
        for e in i.entries {
            let lsn = e.lsn.description
            print("\(e.key)  \(lsn.padding(16))  \(kindName(e.kind, e.willInit).padding(25))  \(String(e.valueLength).leftPadding(6))  @\(e.block.offset)+\(e.valueOffset)")
        }
    }
}

struct LayerInspect: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "inspect",
        abstract: "Verify every checksum of a layer file and print its header, ranges, counts and compression ratio.",
        discussion: "Exits 1 with a message naming the file and the offset when anything is corrupt.")

    @Argument(help: "The layer file.") var file: String

    func run() throws {
        let i: LayerInspection
        do { i = try LayerInspector.inspect(path: file) } catch { fail("\(error)") }
        printHeader(i)
        let h = i.header
        var images = 0, records = 0, willInit = 0
        for e in i.entries {
            if e.kind == .image { images += 1 } else { records += 1; if e.willInit { willInit += 1 } }
        }
        print("entries:       \(h.entryCount) (\(images) images, \(records) records of which \(willInit) will-init)")
        print("distinct keys: \(Set(i.entries.map(\.key)).count)")
        print("file size:     \(i.fileSize) bytes")
        print("data blocks:   \(i.dataBlocks) (\(i.compressedDataBlocks) LZ4, \(i.dataBlocks - i.compressedDataBlocks) raw), \(i.dataBytesOnDisk) bytes on disk")
        print("values:        \(h.valueBytes) bytes uncompressed")
        print("compression:   \(String(format2(i.compressionRatio)))x")
        print("index:         \(i.indexBlocks) index blocks + directory, \(i.indexBytes) bytes")
        print("checksums:     all \(1 + i.dataBlocks + i.indexBlocks + 2) verified (header, \(i.dataBlocks) data blocks, \(i.indexBlocks) index blocks, directory, footer)")
    }
}

func format2(_ x: Double) -> String {
    let r = (x * 100).rounded() / 100
    var s = String(r)
    if let dot = s.firstIndex(of: ".") {
        let decimals = s.distance(from: dot, to: s.endIndex) - 1
        if decimals < 2 { s += String(repeating: "0", count: 2 - decimals) }
    }
    return s
}

extension String {
    func padding(_ n: Int) -> String { count >= n ? self : self + String(repeating: " ", count: n - count) }
    func leftPadding(_ n: Int) -> String { count >= n ? self : String(repeating: " ", count: n - count) + self }
}
