import LSM
import PostgresWAL

// Design note: engine records (see `EngineRecord` in PostgresWAL) are the page server's own
// statements of what PostgreSQL's redo does to a page it has no block reference to: CLOG status
// bits, multixact offsets and members, visibility map bits cleared by heap records or by a
// truncation, and the free space map's tail zeroed by a truncation. They are read here straight
// from their big-endian bytes (no decoding into arrays), validated completely (every field and the
// page each entry belongs on, which must be the page of the key they are stored under) before the
// page is touched, and then applied with the byte arithmetic of clog.c, multixact.c,
// visibilitymap.c and freespace.c/fsmpage.c. None of these changes stamps pd_lsn: PostgreSQL does
// not either (SLRU pages have no LSN; the VM and FSM changes happen without a WAL record of their
// own). A VM or FSM page that is still all zeros is first initialised as PostgreSQL's
// vm_readbuf/fsm_readbuf do (PageInit without special space).
//
// Tag 7 (commit timestamp) is the exception: its key is a commit-timestamp bucket, not a page, and
// its value is the bucket's 16-byte entries in LSN order (`CommitTimestampIndex`). Redo appends each
// record's entry to the base value (none for a will-init record), checking that the entry is the
// record's own (same LSN), lies in the key's bucket and comes after every entry already there; an
// image in the chain (ingest stores one every `CommitTimestampIndex.recordsPerImage` records) is
// simply the value so far.

/// Applies engine records to pages.
enum EngineRecordRedo {
    // CLOG (clog.c): 2 bits per transaction, 4 per byte.
    static let clogXactsPerPage: UInt32 = 32_768
    static let statusCommitted: UInt8 = 1
    static let statusSubCommitted: UInt8 = 3

    // Visibility map (visibilitymap.c): 2 bits per heap block after the 24-byte page header.
    static let vmMapOffset = 24
    static let vmMapSize = Page.size - 24
    static let vmHeapBlocksPerPage = UInt32(Page.size - 24) * 4

    // Free space map (fsm_internals.h): fp_next_slot (4 bytes) then the node array.
    static let fsmNodesOffset = 24 + 4
    static let fsmNodesPerPage = Page.size - 24 - 4
    static let fsmNonLeafNodes = Page.size / 2 - 1
    static let fsmLeafNodes = UInt32(Page.size - 24 - 4 - (Page.size / 2 - 1))

    // Multixact (multixact.c).
    static let maxMemberStatus: UInt8 = 5

    static func apply(_ bytes: UnsafeRawBufferPointer, to page: Page, key: Key) throws {
        var r = BigEndianBytes(bytes)
        let tag = try r.u8()
        switch tag {
        case EngineRecord.Tag.clogSetStatus.rawValue: try setClogStatus(&r, page, key)
        case EngineRecord.Tag.vmClear.rawValue: try clearVisibility(&r, page, key)
        case EngineRecord.Tag.multixactOffsets.rawValue: try setMultixactOffsets(&r, page, key)
        case EngineRecord.Tag.multixactMembers.rawValue: try setMultixactMembers(&r, page, key)
        case EngineRecord.Tag.vmTruncate.rawValue: try truncateVisibilityMap(&r, page, key)
        case EngineRecord.Tag.fsmTruncate.rawValue: try truncateFreeSpaceMap(&r, page, key)
        case EngineRecord.Tag.commitTimestamp.rawValue: throw malformed("tag 7 (commit timestamp) stored under key \(key), which is not a commit-timestamp bucket")
        default: throw malformed("unknown tag \(tag)")
        }
        guard r.isAtEnd else { throw malformed("tag \(tag) has \(r.remaining) trailing bytes") }
    }

    // MARK: CLOG

    /// TransactionIdSetStatusBit, as run in recovery.
    private static func setClogStatus(_ r: inout BigEndianBytes, _ page: Page, _ key: Key) throws {
        let status = try r.u8()
        guard status >= 1 && status <= 3 else { throw malformed("CLOG status \(status) is not 1, 2 or 3") }
        let pageno = try slruPage(key, .clog)
        let entries = try r.entries(size: 4)
        for i in 0..<entries.count {
            let xid = entries.u32(i, 0)
            guard UInt64(xid / clogXactsPerPage) == pageno else {
                throw malformed("xid \(xid) is on pg_xact page \(xid / clogXactsPerPage), stored under page \(pageno) (key \(key))")
            }
        }
        for i in 0..<entries.count {
            let xid = entries.u32(i, 0)
            let byte = Int((xid % clogXactsPerPage) / 4)
            let shift = UInt8((xid % 4) * 2)
            let old = page.u8(byte)
            let current = (old >> shift) & 3
            // A sub-commit replayed over a commit that is already recorded changes nothing.
            if status == statusSubCommitted && current == statusCommitted { continue }
            page.setU8(byte, (old & ~(3 << shift)) | (status << shift))
        }
    }

    // MARK: MultiXact

    /// RecordNewMultiXact's offsets half: each multixact's first member offset at entry multi % 2048.
    private static func setMultixactOffsets(_ r: inout BigEndianBytes, _ page: Page, _ key: Key) throws {
        let pageno = try slruPage(key, .multixactOffsets)
        let entries = try r.entries(size: 8)
        let perPage = PageLayout.multixactOffsetsPerPage
        for i in 0..<entries.count {
            let multi = entries.u32(i, 0)
            guard UInt64(multi / perPage) == pageno else {
                throw malformed("multixact \(multi) is on offsets page \(multi / perPage), stored under page \(pageno) (key \(key))")
            }
        }
        for i in 0..<entries.count {
            let multi = entries.u32(i, 0)
            page.setU32(Int(multi % perPage) * 4, entries.u32(i, 4))
        }
    }

    /// RecordNewMultiXact's members half: each member's xid and its status byte in its group.
    private static func setMultixactMembers(_ r: inout BigEndianBytes, _ page: Page, _ key: Key) throws {
        let pageno = try slruPage(key, .multixactMembers)
        let entries = try r.entries(size: 9)
        let perPage = PageLayout.multixactMembersPerPage
        for i in 0..<entries.count {
            let offset = entries.u32(i, 0)
            guard UInt64(offset / perPage) == pageno else {
                throw malformed("member offset \(offset) is on members page \(offset / perPage), stored under page \(pageno) (key \(key))")
            }
            let status = entries.u8(i, 8)
            guard status <= maxMemberStatus else { throw malformed("member status \(status) is above \(maxMemberStatus)") }
        }
        for i in 0..<entries.count {
            let offset = entries.u32(i, 0)
            page.setU32(PageLayout.multixactMemberOffset(of: offset), entries.u32(i, 4))
            page.setU8(PageLayout.multixactFlagsOffset(of: offset) + Int(offset % PageLayout.multixactMembersPerGroup), entries.u8(i, 8))
        }
    }

    // MARK: Visibility map

    /// visibilitymap_clear for each listed heap block (pd_lsn is left alone).
    private static func clearVisibility(_ r: inout BigEndianBytes, _ page: Page, _ key: Key) throws {
        try checkRelationKey(key, fork: ForkNumber.visibilityMap.rawValue, "VM clear")
        let entries = try r.entries(size: 5)
        for i in 0..<entries.count {
            let block = entries.u32(i, 0)
            guard block / vmHeapBlocksPerPage == key.field6 else {
                throw malformed("heap block \(block) is on VM page \(block / vmHeapBlocksPerPage), stored under key \(key)")
            }
            let bits = entries.u8(i, 4)
            guard bits & ~3 == 0 else { throw malformed("VM clear bits 0x\(String(bits, radix: 16)) are not a subset of 0x3") }
        }
        if page.isNew { page.initialize(specialSize: 0) }
        for i in 0..<entries.count {
            let block = entries.u32(i, 0)
            let byte = vmMapOffset + Int((block % vmHeapBlocksPerPage) / 4)
            let shift = UInt8((block % 4) * 2)
            page.setU8(byte, page.u8(byte) & ~(entries.u8(i, 4) << shift))
        }
    }

    /// visibilitymap_prepare_truncate's change to the last remaining map page: the bits of heap
    /// blocks >= heapBlocks are cleared.
    private static func truncateVisibilityMap(_ r: inout BigEndianBytes, _ page: Page, _ key: Key) throws {
        try checkRelationKey(key, fork: ForkNumber.visibilityMap.rawValue, "VM truncate")
        let heapBlocks = try r.u32()
        guard heapBlocks / vmHeapBlocksPerPage == key.field6 else {
            throw malformed("VM truncation to \(heapBlocks) heap blocks changes VM page \(heapBlocks / vmHeapBlocksPerPage), stored under key \(key)")
        }
        if page.isNew { page.initialize(specialSize: 0) }
        let truncByte = Int((heapBlocks % vmHeapBlocksPerPage) / 4)
        let truncShift = (heapBlocks % 4) * 2
        page.zero(vmMapOffset + truncByte + 1, vmMapSize - (truncByte + 1))
        let keep = UInt8((1 << truncShift) - 1)
        page.setU8(vmMapOffset + truncByte, page.u8(vmMapOffset + truncByte) & keep)
    }

    // MARK: Free space map

    /// FreeSpaceMapPrepareTruncateRel's change to the FSM leaf page of the first removed heap block:
    /// fsm_truncate_avail, which rebuilds the page's inner nodes when a leaf changed.
    private static func truncateFreeSpaceMap(_ r: inout BigEndianBytes, _ page: Page, _ key: Key) throws {
        try checkRelationKey(key, fork: ForkNumber.fsm.rawValue, "FSM truncate")
        let heapBlocks = try r.u32()
        let physical = PageLayout.fsmLeafPhysicalBlock(logicalPage: heapBlocks / fsmLeafNodes)
        guard physical == key.field6 else {
            throw malformed("FSM truncation to \(heapBlocks) heap blocks changes FSM page \(physical), stored under key \(key)")
        }
        if page.isNew { page.initialize(specialSize: 0) }
        let firstNode = fsmNodesOffset + fsmNonLeafNodes + Int(heapBlocks % fsmLeafNodes)
        let end = fsmNodesOffset + fsmNodesPerPage
        var changed = false
        for offset in firstNode..<end where page.u8(offset) != 0 {
            changed = true
            page.setU8(offset, 0)
        }
        if changed { rebuildFSMPage(page) }
    }

    /// fsm_rebuild_page: every inner node becomes the maximum of its children, bottom up.
    static func rebuildFSMPage(_ page: Page) {
        let nodes = page.base + fsmNodesOffset
        let count = fsmNodesPerPage
        for node in stride(from: fsmNonLeafNodes - 1, through: 0, by: -1) {
            let left = 2 * node + 1
            var value: UInt8 = 0
            if left < count { value = nodes.load(fromByteOffset: left, as: UInt8.self) }
            if left + 1 < count { value = max(value, nodes.load(fromByteOffset: left + 1, as: UInt8.self)) }
            nodes.storeBytes(of: value, toByteOffset: node, as: UInt8.self)
        }
    }

    // MARK: Commit timestamps

    /// The value of commit-timestamp `bucket` after `records` (oldest first) on top of `base`.
    static func reconstructCommitTimestamps(_ bucket: CommitTimestampIndex.Bucket, key: Key, base: (lsn: LSN, bytes: [UInt8])?,
                                            records: [RedoRecord]) throws -> [UInt8] {
        let size = CommitTimestampIndex.entrySize
        var out = base?.bytes ?? []
        guard out.count % size == 0 else {
            throw RedoError(.corruptPage, "key \(key): commit-timestamp image at \(base!.lsn) has \(out.count) bytes, not a multiple of \(size)")
        }
        out.reserveCapacity(out.count + records.count * size)
        for (i, r) in records.enumerated() {
            do {
                switch r.value.kind {
                case .image:
                    guard r.value.bytes.count % size == 0 else { throw malformed("image of \(r.value.bytes.count) bytes is not a list of \(size)-byte entries") }
                    out = r.value.bytes
                    continue
                case .walRecord:
                    throw malformed("a WAL record is stored under commit-timestamp key \(key)")
                case .engineRecord:
                    break
                }
                if r.value.willInit {
                    out.removeAll(keepingCapacity: true)
                } else if i == 0 && base == nil {
                    throw RedoError(.missingBase, "key \(key): the oldest record (at \(r.lsn)) appends to an earlier value and there is none")
                }
                let entry = try r.value.bytes.withUnsafeBytes { raw -> CommitTimestampIndex.Entry in
                    var c = BigEndianBytes(raw)
                    let tag = try c.u8()
                    guard tag == EngineRecord.Tag.commitTimestamp.rawValue else { throw malformed("tag \(tag) stored under commit-timestamp key \(key)") }
                    let e = CommitTimestampIndex.Entry(lsn: LSN(try c.u64()), xactTime: Int64(bitPattern: try c.u64()))
                    guard c.isAtEnd else { throw malformed("tag 7 has \(c.remaining) trailing bytes") }
                    return e
                }
                guard entry.lsn == r.lsn else { throw malformed("entry for \(entry.lsn) is stored at \(r.lsn)") }
                guard entry.bucket == bucket else { throw malformed("entry for \(entry.lsn) belongs to \(entry.bucket), stored under \(bucket)") }
                if out.count >= size {
                    let last = out.withUnsafeBytes { UInt64(bigEndian: $0.loadUnaligned(fromByteOffset: out.count - size, as: UInt64.self)) }
                    guard last < entry.lsn.rawValue else { throw malformed("entry for \(entry.lsn) does not come after the last one (\(LSN(last)))") }
                }
                entry.encode(into: &out)
            } catch var e as RedoError {
                e.context = "key \(key), engine record at \(r.lsn)"
                throw e
            }
        }
        return out
    }

    // MARK: Keys

    /// The SLRU page number (segment * 32 + block) of an SLRU block key of `kind`.
    private static func slruPage(_ key: Key, _ kind: SlruKind) throws -> UInt64 {
        guard key.field1 == 1, key.field2 == UInt32(kind.rawValue), key.field3 == 1, key.field5 == 0,
              key.field6 < PageLayout.slruPagesPerSegment
        else {
            throw malformed("key \(key) is not a \(kind) page")
        }
        return UInt64(key.field4) * UInt64(PageLayout.slruPagesPerSegment) + UInt64(key.field6)
    }

    private static func checkRelationKey(_ key: Key, fork: UInt8, _ what: String) throws {
        guard key.field1 == 0, key.field5 == fork, key.field4 != 0, key.field6 != KeySpace.sizeKeyBlock else {
            throw malformed("\(what) stored under key \(key), which is not a page of fork \(fork)")
        }
    }

    private static func malformed(_ message: String) -> RedoError {
        RedoError(.malformedRecord, "engine record: " + message)
    }
}

/// A bounds-checked big-endian cursor over an engine record.
struct BigEndianBytes {
    let bytes: UnsafeRawBufferPointer
    private(set) var position = 0

    init(_ bytes: UnsafeRawBufferPointer) { self.bytes = bytes }

    var remaining: Int { bytes.count - position }
    var isAtEnd: Bool { position == bytes.count }

    mutating func u8() throws -> UInt8 {
        guard remaining >= 1 else { throw truncated(1) }
        defer { position += 1 }
        return bytes[position]
    }

    mutating func u32() throws -> UInt32 {
        guard remaining >= 4 else { throw truncated(4) }
        defer { position += 4 }
        return UInt32(bigEndian: bytes.loadUnaligned(fromByteOffset: position, as: UInt32.self))
    }

    mutating func u64() throws -> UInt64 {
        guard remaining >= 8 else { throw truncated(8) }
        defer { position += 8 }
        return UInt64(bigEndian: bytes.loadUnaligned(fromByteOffset: position, as: UInt64.self))
    }

    /// A count u32 followed by that many entries of `size` bytes; the entries are consumed.
    mutating func entries(size: Int) throws -> Entries {
        let n = Int(try u32())
        guard n <= remaining / size else {
            throw RedoError(.malformedRecord, "engine record: \(n) entries of \(size) bytes announced, \(remaining) bytes left")
        }
        defer { position += n * size }
        return Entries(base: UnsafeRawBufferPointer(rebasing: bytes[position..<position + n * size]), size: size, count: n)
    }

    private func truncated(_ n: Int) -> RedoError {
        RedoError(.malformedRecord, "engine record: needs \(n) bytes at offset \(position) of \(bytes.count)")
    }

    /// Fixed-size entries, read in place.
    struct Entries {
        let base: UnsafeRawBufferPointer
        let size: Int
        let count: Int

        @inline(__always) func u32(_ i: Int, _ field: Int) -> UInt32 {
            UInt32(bigEndian: base.loadUnaligned(fromByteOffset: i * size + field, as: UInt32.self))
        }
        @inline(__always) func u8(_ i: Int, _ field: Int) -> UInt8 { base[i * size + field] }
    }
}
