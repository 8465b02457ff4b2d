#if canImport(Glibc)
import Glibc
#endif

/// Writes one layer file, streaming: values go out in data blocks as they fill, so memory holds one
/// data block plus the index (48 bytes per value), never the values of the whole layer.
///
/// Protocol: `add` in (key, lsn) ascending order, then `finish`, which writes the index blocks, the
/// index directory, the footer and finally the header (at offset 0), fsyncs the temporary file,
/// renames it to its final name and fsyncs the directory. Until the rename the file is `NAME.tmp`,
/// which `TimelineStore.open` deletes. `abandon` removes the temporary file.
///
/// Invariants:
/// 1. Entries are strictly ascending by (key, lsn); an image layer's entries all carry its LSN; a
///    delta layer's lie in [lsn_start, lsn_end).
/// 2. The header, written last, is valid only if every other byte was written first.
public final class LayerWriter {
    /// Steps of `finish` at which a test may inject a crash.
    public enum Step: String, Sendable, CaseIterable {
        case written, synced, renamed
    }

    public let descriptor: LayerDescriptor
    public let directory: String
    private let finalPath: String
    private let tmpPath: String
    private let fd: Int32
    private let dataBlockBytes: Int
    private let compress: Bool

    private var fileOffset: UInt64 = 0
    private var outBuffer: [UInt8] = []
    private var blockPayload: [UInt8] = []
    private var blockEntries: [(key: Key, lsn: LSN, kind: Value.Kind, willInit: Bool, offset: UInt32, length: UInt32)] = []
    private var indexRegion: [UInt8] = []
    private var indexBlockEntries = ByteWriter()
    private var indexBlockCount = 0
    private var indexBlockFirst: (Key, LSN)?
    private var pendingIndex: [(first: (Key, LSN), payload: [UInt8])] = []
    private var directoryLines: [IndexDirectory.Line] = []
    private var last: (Key, LSN)?
    private var keyMin = Key.max
    private var keyMax = Key.min
    private var entryCount: UInt64 = 0
    private var valueBytes: UInt64 = 0
    private var dataBlockCount: UInt32 = 0
    private var finished = false
    private var leaveFilesOnDeinit = false

    public init(directory: String, descriptor: LayerDescriptor, dataBlockBytes: Int = LayerFormat.defaultDataBlockBytes,
                compress: Bool = true) throws {
        self.descriptor = descriptor
        self.directory = directory
        self.finalPath = directory + "/" + descriptor.fileName
        self.tmpPath = finalPath + ".tmp"
        self.dataBlockBytes = dataBlockBytes
        self.compress = compress
        self.fd = try FileOps.openForWrite(tmpPath)
        outBuffer.reserveCapacity(1 << 20)
        // Room for the header, written last.
        outBuffer.append(contentsOf: repeatElement(0, count: LayerHeader.size))
    }

    deinit {
        if !finished {
            close(fd)
            if !leaveFilesOnDeinit { unlink(tmpPath) }
        }
    }

    public var entriesWritten: UInt64 { entryCount }

    public func add(_ key: Key, _ lsn: LSN, _ value: Value) throws {
        try value.bytes.withUnsafeBytes { try add(key, lsn, kind: value.kind, willInit: value.willInit, bytes: $0) }
    }

    public func add(_ key: Key, _ lsn: LSN, kind: Value.Kind, willInit: Bool, bytes: UnsafeRawBufferPointer) throws {
        if let (lk, ll) = last {
            precondition(lk < key || (lk == key && ll < lsn), "layer entries out of order: \(key)@\(lsn) after \(lk)@\(ll)")
        }
        switch descriptor.kind {
        case .image: precondition(lsn == descriptor.lsnStart, "image layer value at \(lsn), layer at \(descriptor.lsnStart)")
        case .delta: precondition(lsn >= descriptor.lsnStart && lsn < descriptor.lsnEnd, "delta value at \(lsn) outside \(descriptor.lsnStart)..<\(descriptor.lsnEnd)")
        }
        precondition(ChunkId(containing: key) == descriptor.chunk, "key \(key) is not in chunk \(descriptor.chunk)")
        guard bytes.count <= LayerFormat.maxValueBytes else {
            throw StorageError(.invalidArgument, "value of \(bytes.count) bytes for key \(key) exceeds the largest storable value (\(LayerFormat.maxValueBytes) bytes)", lsn: lsn)
        }
        last = (key, lsn)
        let large = bytes.count >= dataBlockBytes / 2
        if !blockPayload.isEmpty && (large || blockPayload.count + bytes.count > dataBlockBytes) { try closeDataBlock() }
        blockEntries.append((key, lsn, kind, willInit, UInt32(blockPayload.count), UInt32(bytes.count)))
        if large {
            // A large value (a page image, a bulk insert's record) gets a block of its own, compressed
            // straight from the caller's bytes: no copy into the payload buffer, and small records
            // never share a block with it, so each gets the compression that suits it (format-spec 4.3).
            try closeDataBlock(payload: bytes)
        } else {
            blockPayload.append(contentsOf: bytes)
        }
        if key < keyMin { keyMin = key }
        if key > keyMax { keyMax = key }
        entryCount += 1
        valueBytes += UInt64(bytes.count)
    }

    /// Writes the block of `blockEntries`, whose payload is `blockPayload` or, for a value that has a
    /// block of its own, `payload`.
    private func closeDataBlock(payload: UnsafeRawBufferPointer? = nil) throws {
        guard !blockEntries.isEmpty else { return }
        let start = outBuffer.count
        // Large values (page images, bulk-insert records) are where periodic payloads are, and each
        // has a block of its own; blocks of small records are left to plain LZ4 (format-spec.md,
        // "Blocks").
        let filter = blockEntries.contains { Int($0.length) >= dataBlockBytes / 2 }
        if let payload {
            BlockTrailer.appendBlock(payload, compress: compress, filter: filter, to: &outBuffer)
        } else {
            blockPayload.withUnsafeBytes { BlockTrailer.appendBlock($0, compress: compress, filter: filter, to: &outBuffer) }
        }
        let handle = BlockHandle(offset: fileOffset + UInt64(start), size: UInt32(outBuffer.count - start))
        dataBlockCount += 1
        for e in blockEntries {
            if indexBlockFirst == nil { indexBlockFirst = (e.key, e.lsn) }
            IndexEntry(key: e.key, lsn: e.lsn, kind: e.kind, willInit: e.willInit, block: handle,
                       valueOffset: e.offset, valueLength: e.length).encode(into: &indexBlockEntries)
            if indexBlockEntries.count == LayerFormat.indexEntriesPerBlock * IndexEntry.size { closeIndexBlock() }
        }
        blockEntries.removeAll(keepingCapacity: true)
        blockPayload.removeAll(keepingCapacity: true)
        if outBuffer.count >= 1 << 20 { try drain() }
    }

    /// Index blocks are built in memory and placed after the data blocks by `finish`.
    private func closeIndexBlock() {
        guard let first = indexBlockFirst else { return }
        var w = ByteWriter(capacity: 4 + indexBlockEntries.count)
        w.u32(UInt32(indexBlockEntries.count / IndexEntry.size))
        w.raw(indexBlockEntries.bytes)
        pendingIndex.append((first, w.bytes))
        indexBlockEntries = ByteWriter()
        indexBlockFirst = nil
    }

    private func drain() throws {
        try outBuffer.withUnsafeBytes { try FileOps.writeAll(fd, $0, at: fileOffset, path: tmpPath) }
        fileOffset += UInt64(outBuffer.count)
        outBuffer.removeAll(keepingCapacity: true)
    }

    /// Completes the file and publishes it under its final name. Returns the file size.
    /// `failpoint` is called after each step; if it throws, the file stays as that step left it.
    @discardableResult
    /// `syncDirectory: false` leaves the directory fsync to the caller (one for many files, before
    /// anything refers to them); `syncFile: false` leaves the file's own fsync to the caller too
    /// (one syncfs for many files: `FlushSync.fileSystem`), and skips the `.synced` step.
    public func finish(syncDirectory: Bool = true, syncFile: Bool = true, failpoint: ((Step) throws -> Void)? = nil) throws -> UInt64 {
        try closeDataBlock()
        closeIndexBlock()
        let indexOffset = fileOffset + UInt64(outBuffer.count)
        for (first, payload) in pendingIndex {
            let start = outBuffer.count
            // Full index blocks compress well once their entries are taken apart into columns
            // (neighbouring entries share key prefixes, LSN high bytes and data block handles, and
            // value offsets follow from the previous entry); small ones stay raw (format-spec 3,
            // writer rule).
            payload.withUnsafeBytes {
                BlockTrailer.appendIndexBlock($0, compress: compress && payload.count > LayerFormat.indexCompressionMinimumPayload, to: &outBuffer)
            }
            let handle = BlockHandle(offset: fileOffset + UInt64(start), size: UInt32(outBuffer.count - start))
            directoryLines.append(.init(firstKey: first.0, firstLSN: first.1, handle: handle))
            if outBuffer.count >= 1 << 20 { try drain() }
        }
        var dw = ByteWriter()
        IndexDirectory(lines: directoryLines).encode(into: &dw)
        let dirStart = outBuffer.count
        dw.bytes.withUnsafeBytes { BlockTrailer.appendBlock($0, compress: false, to: &outBuffer) }
        let dirHandle = BlockHandle(offset: fileOffset + UInt64(dirStart), size: UInt32(outBuffer.count - dirStart))
        var fw = ByteWriter()
        LayerFooter(directory: dirHandle, indexOffset: indexOffset).encode(into: &fw)
        outBuffer.append(contentsOf: fw.bytes)
        try drain()
        let fileSize = fileOffset

        let header = LayerHeader(kind: descriptor.kind, chunk: descriptor.chunk, keyMin: keyMin, keyMax: keyMax,
                                 lsnStart: descriptor.lsnStart, lsnEnd: descriptor.lsnEnd, entryCount: entryCount,
                                 valueBytes: valueBytes, dataBlockCount: dataBlockCount, indexBlockCount: UInt32(directoryLines.count))
        try header.validate()
        var hw = ByteWriter()
        header.encode(into: &hw)
        try hw.bytes.withUnsafeBytes { try FileOps.writeAll(fd, $0, at: 0, path: tmpPath) }
        // A failpoint that throws simulates a crash: the files stay exactly as the step left them.
        func crashPoint(_ step: Step) throws {
            do { try failpoint?(step) } catch { leaveFilesOnDeinit = true; throw error }
        }
        try crashPoint(.written)
        if syncFile {
            try FileOps.fsyncFile(fd, path: tmpPath)
            try crashPoint(.synced)
        }
        close(fd)
        finished = true
        try FileOps.rename(tmpPath, finalPath)
        try failpoint?(.renamed)
        if syncDirectory { try FileOps.fsyncDirectory(directory) }
        return fileSize
    }
}
