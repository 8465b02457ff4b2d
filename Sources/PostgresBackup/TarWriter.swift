/// A streaming POSIX ustar writer.
///
/// Each entry is a 512-byte header and, for files, its data padded with zeros to a multiple of 512;
/// the archive ends with two zero blocks. Output goes to the sink in chunks of `chunkBytes` (the last
/// one may be shorter), so memory stays bounded whatever the archive's size.
///
/// Invariants: a file's data is written between `beginFile` and `endFile` and adds up to exactly the
/// size announced in its header (checked); entries never nest; nothing follows `finish`.
struct TarWriter {
    typealias Sink = (UnsafeRawBufferPointer) throws -> Void

    static let blockSize = 512
    static let chunkBytes = 1 << 20
    /// Sizes in the 12-byte octal field stop at 8 GiB.
    static let maxFileSize: Int64 = (1 << 33) - 1

    private let sink: Sink
    private var buffer: [UInt8] = []
    private var openFile: (name: String, size: Int64, written: Int64)?
    private var finished = false
    let modificationTime: Int64

    init(modificationTime: Int64, sink: @escaping Sink) {
        self.sink = sink
        self.modificationTime = modificationTime
        buffer.reserveCapacity(Self.chunkBytes)
    }

    mutating func directory(_ name: String) throws {
        try header(name.hasSuffix("/") ? name : name + "/", size: 0, mode: 0o700, type: UInt8(ascii: "5"))
    }

    /// A whole small file.
    mutating func file(_ name: String, _ contents: [UInt8]) throws {
        try beginFile(name, size: Int64(contents.count))
        try contents.withUnsafeBytes { try write($0) }
        try endFile()
    }

    mutating func beginFile(_ name: String, size: Int64) throws {
        guard size >= 0, size <= Self.maxFileSize else { throw BackupError("\(name): \(size) bytes do not fit a ustar header") }
        try header(name, size: size, mode: 0o600, type: UInt8(ascii: "0"))
        openFile = (name, size, 0)
    }

    mutating func write(_ bytes: UnsafeRawBufferPointer) throws {
        guard var f = openFile else { throw BackupError("tar data written outside a file") }
        f.written += Int64(bytes.count)
        guard f.written <= f.size else { throw BackupError("\(f.name): more than its \(f.size) bytes written") }
        openFile = f
        try append(bytes)
    }

    mutating func write(_ bytes: [UInt8]) throws {
        try bytes.withUnsafeBytes { try write($0) }
    }

    mutating func writeZeros(_ count: Int) throws {
        var left = count
        while left > 0 {
            let n = min(left, Self.zeroPage.count)
            try Self.zeroPage.withUnsafeBytes { try write(UnsafeRawBufferPointer(rebasing: $0[0..<n])) }
            left -= n
        }
    }

    mutating func endFile() throws {
        guard let f = openFile else { throw BackupError("tar file ended outside a file") }
        guard f.written == f.size else { throw BackupError("\(f.name): \(f.written) of its \(f.size) bytes written") }
        openFile = nil
        try pad()
    }

    /// The end-of-archive marker, then everything buffered goes out.
    mutating func finish() throws {
        guard openFile == nil else { throw BackupError("tar finished inside \(openFile!.name)") }
        guard !finished else { return }
        finished = true
        try appendZeros(2 * Self.blockSize)
        try flush()
    }

    // MARK: - Internals

    private static let zeroPage = [UInt8](repeating: 0, count: 8192)

    private mutating func header(_ name: String, size: Int64, mode: Int, type: UInt8) throws {
        guard !finished else { throw BackupError("tar entry \(name) after the end") }
        guard openFile == nil else { throw BackupError("tar entry \(name) begun inside \(openFile!.name)") }
        var h = [UInt8](repeating: 0, count: Self.blockSize)
        let (prefix, base) = try Self.split(name)
        put(&h, 0, Array(base.utf8))
        put(&h, 100, Self.octal(Int64(mode), width: 8))
        put(&h, 108, Self.octal(0, width: 8))
        put(&h, 116, Self.octal(0, width: 8))
        put(&h, 124, Self.octal(size, width: 12))
        put(&h, 136, Self.octal(modificationTime, width: 12))
        put(&h, 148, Array(repeating: UInt8(ascii: " "), count: 8))
        h[156] = type
        put(&h, 257, Array("ustar".utf8) + [0])
        put(&h, 263, Array("00".utf8))
        put(&h, 345, Array(prefix.utf8))
        let sum = h.reduce(0) { $0 + Int64($1) }
        put(&h, 148, Self.octal(sum, width: 7) + [UInt8(ascii: " ")])
        try h.withUnsafeBytes { try append($0) }
    }

    private func put(_ h: inout [UInt8], _ at: Int, _ bytes: [UInt8]) {
        h.replaceSubrange(at..<at + bytes.count, with: bytes)
    }

    /// `width - 1` octal digits and a NUL.
    private static func octal(_ v: Int64, width: Int) -> [UInt8] {
        let digits = String(v, radix: 8)
        return Array((String(repeating: "0", count: max(0, width - 1 - digits.count)) + digits).utf8) + [0]
    }

    /// ustar's name (100 bytes) and prefix (155 bytes), split at a slash.
    private static func split(_ name: String) throws -> (prefix: String, name: String) {
        let bytes = Array(name.utf8)
        if bytes.count <= 100 { return ("", name) }
        for i in stride(from: min(bytes.count - 1, 155), through: 1, by: -1) where bytes[i] == UInt8(ascii: "/") {
            if bytes.count - i - 1 <= 100 && bytes.count - i - 1 > 0 {
                return (String(decoding: bytes[0..<i], as: UTF8.self), String(decoding: bytes[(i + 1)...], as: UTF8.self))
            }
        }
        throw BackupError("tar name too long for ustar: \(name)")
    }

    private mutating func pad() throws {
        let used = Int(buffer.count % Self.blockSize)
        // The buffer is flushed only at multiples of 512 bytes, so its length tells the position.
        if used != 0 { try appendZeros(Self.blockSize - used) }
    }

    private mutating func appendZeros(_ count: Int) throws {
        try Self.zeroPage.withUnsafeBytes { z in
            var left = count
            while left > 0 {
                let n = min(left, z.count)
                try append(UnsafeRawBufferPointer(rebasing: z[0..<n]))
                left -= n
            }
        }
    }

    private mutating func append(_ bytes: UnsafeRawBufferPointer) throws {
        var rest = bytes
        while !rest.isEmpty {
            let n = min(Self.chunkBytes - buffer.count, rest.count)
            buffer.append(contentsOf: UnsafeRawBufferPointer(rebasing: rest[0..<n]))
            rest = UnsafeRawBufferPointer(rebasing: rest[n...])
            if buffer.count == Self.chunkBytes { try flush() }
        }
    }

    private mutating func flush() throws {
        guard !buffer.isEmpty else { return }
        try buffer.withUnsafeBytes { try sink($0) }
        buffer.removeAll(keepingCapacity: true)
    }
}
