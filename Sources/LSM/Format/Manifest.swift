/// The per-timeline manifest: the live layer files and the LSNs that are durable with them
/// (format-spec.md, "Manifest"). Replaced atomically: written to `manifest.tmp`, fsynced, renamed over
/// `manifest`, directory fsynced.
///
///     magic:               8 bytes // "SWPSMANI"
///     format_version:      u16     // 1
///     reserved:            u16     // 0
///     generation:          u64     // +1 on every replacement
///     disk_consistent_lsn: u64     // every record <= this LSN is in the layer files below
///     gc_cutoff_lsn:       u64     // reads below this LSN are refused (0: none yet)
///     layer_count:         u32
///     layer_count x {               // 48 bytes each, sorted by (chunk, lsn_start, lsn_end, kind)
///         layer_kind:      u8      // 1 image, 2 delta
///         reserved:        3 bytes // 0
///         chunk:           20 bytes
///         lsn_start:       u64
///         lsn_end:         u64
///         file_size:       u64
///     }
///     crc32c:              u32     // over every byte before it
public struct Manifest: Equatable, Sendable {
    public static let magic: [UInt8] = Array("SWPSMANI".utf8)
    public static let currentVersion: UInt16 = 1
    public static let fileName = "manifest"
    static let headerSize = 8 + 2 + 2 + 8 + 8 + 8 + 4
    static let entrySize = 1 + 3 + ChunkId.encodedSize + 8 + 8 + 8

    public struct Entry: Equatable, Sendable {
        public var layer: LayerDescriptor
        public var fileSize: UInt64
        public init(layer: LayerDescriptor, fileSize: UInt64) {
            self.layer = layer
            self.fileSize = fileSize
        }
    }

    public var generation: UInt64
    public var diskConsistentLSN: LSN
    public var gcCutoffLSN: LSN
    public var layers: [Entry]

    public init(generation: UInt64 = 0, diskConsistentLSN: LSN = .zero, gcCutoffLSN: LSN = .zero, layers: [Entry] = []) {
        self.generation = generation
        self.diskConsistentLSN = diskConsistentLSN
        self.gcCutoffLSN = gcCutoffLSN
        self.layers = layers
    }

    public func encode() -> [UInt8] {
        var w = ByteWriter(capacity: Manifest.headerSize + layers.count * Manifest.entrySize + 4)
        w.raw(Manifest.magic)
        w.u16(Manifest.currentVersion)
        w.u16(0)
        w.u64(generation)
        w.u64(diskConsistentLSN.rawValue)
        w.u64(gcCutoffLSN.rawValue)
        w.u32(UInt32(layers.count))
        for e in layers.sorted(by: { $0.layer < $1.layer }) {
            w.u8(e.layer.kind.rawValue)
            w.zeros(3)
            e.layer.chunk.encode(into: &w)
            w.u64(e.layer.lsnStart.rawValue)
            w.u64(e.layer.lsnEnd.rawValue)
            w.u64(e.fileSize)
        }
        w.u32(crc32c(0, w.bytes))
        return w.bytes
    }

    public init(parsing bytes: [UInt8], file: String) throws {
        func corrupt(_ m: String, _ offset: Int? = nil) -> StorageError {
            .corruption(m, file: file, offset: offset.map(UInt64.init))
        }
        guard bytes.count >= Manifest.headerSize + 4 else { throw corrupt("manifest is truncated (\(bytes.count) bytes)") }
        guard bytes.prefix(8).elementsEqual(Manifest.magic) else { throw corrupt("not a manifest: bad magic", 0) }
        let stored = bytes.withUnsafeBytes { loadBE($0, bytes.count - 4, as: UInt32.self) }
        let actual = bytes.withUnsafeBytes { crc32c(0, UnsafeRawBufferPointer(rebasing: $0[0..<bytes.count - 4])) }
        guard stored == actual else { throw corrupt("manifest checksum mismatch (stored \(hex32(stored)), computed \(hex32(actual)))", bytes.count - 4) }
        let parsed: Manifest = try bytes.withUnsafeBytes { b in
            var r = ByteReader(UnsafeRawBufferPointer(rebasing: b[8..<b.count - 4]), context: "manifest")
            let version = try r.u16()
            guard version == Manifest.currentVersion else {
                throw StorageError(.unsupported, "manifest format version \(version) is not supported", file: file)
            }
            guard try r.u16() == 0 else { throw corrupt("manifest has non-zero reserved bytes", 10) }
            var m = Manifest(generation: try r.u64(), diskConsistentLSN: LSN(try r.u64()), gcCutoffLSN: LSN(try r.u64()))
            let n = Int(try r.u32())
            guard r.remaining == n * Manifest.entrySize else { throw corrupt("manifest of \(bytes.count) bytes cannot hold \(n) layers") }
            for i in 0..<n {
                let k = try r.u8()
                guard let kind = LayerKind(rawValue: k) else { throw corrupt("manifest layer \(i) has invalid kind \(k)") }
                guard try r.bytes(3).allSatisfy({ $0 == 0 }) else { throw corrupt("manifest layer \(i) has non-zero reserved bytes") }
                let chunk = try ChunkId(parsing: &r)
                let d = LayerDescriptor(kind: kind, chunk: chunk, lsnStart: LSN(try r.u64()), lsnEnd: LSN(try r.u64()))
                guard d.lsnStart < d.lsnEnd else { throw corrupt("manifest layer \(i) has an empty LSN range") }
                if let prev = m.layers.last?.layer, !(prev < d) {
                    throw corrupt("manifest layers are not sorted and unique at layer \(i)")
                }
                m.layers.append(Entry(layer: d, fileSize: try r.u64()))
            }
            return m
        }
        self = parsed
    }
}
