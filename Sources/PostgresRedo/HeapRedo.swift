import PostgresWAL

/// Redo of the Heap and Heap2 resource managers of PostgreSQL 15 (heapam.c's heap_redo and
/// heap2_redo), and heap_mask.
///
/// Design:
/// - Each call applies one record to one page: the page of block reference `step.blockId`. Records
///   that touch two pages (UPDATE across pages, VISIBLE) are therefore split by block id: for an
///   UPDATE, block 1 is the old page and block 0 the new one; when block 1 is absent both tuple
///   versions live on block 0 and the old-tuple part runs first, as in PostgreSQL, so a new tuple
///   can borrow its prefix/suffix from the just-updated old one.
/// - The dispatcher has already decided BLK_NEEDS_REDO (page LSN older than the record, or a
///   WILL_INIT block zeroed); the functions here are the BLK_NEEDS_REDO branches.
/// - Tuples are rebuilt in a stack scratch buffer (withUnsafeTemporaryAllocation) and placed with
///   `Page.addItem`, so where they land matches bufpage.c. Nothing is allocated per record.
/// - Where PostgreSQL would PANIC (bad line pointer, no room), or where a record's bytes do not
///   have the layout 15.x writes, a `RedoError` is thrown; no page is guessed.
/// - Visibility-map bit clearing and FSM updates done by heap redo are not performed here (the
///   ingest emits engine records for the former; the latter is not WAL-logged state).
enum HeapRedo {
    // xl_info bits (heapam_xlog.h).
    static let opMask: UInt8 = 0x70
    static let initPage: UInt8 = 0x80

    // XLOG_HEAP_* opcodes.
    static let opInsert: UInt8 = 0x00
    static let opDelete: UInt8 = 0x10
    static let opUpdate: UInt8 = 0x20
    static let opTruncate: UInt8 = 0x30
    static let opHotUpdate: UInt8 = 0x40
    static let opConfirm: UInt8 = 0x50
    static let opLock: UInt8 = 0x60
    static let opInplace: UInt8 = 0x70

    // XLOG_HEAP2_* opcodes.
    static let op2Rewrite: UInt8 = 0x00
    static let op2Prune: UInt8 = 0x10
    static let op2Vacuum: UInt8 = 0x20
    static let op2FreezePage: UInt8 = 0x30
    static let op2Visible: UInt8 = 0x40
    static let op2MultiInsert: UInt8 = 0x50
    static let op2LockUpdated: UInt8 = 0x60
    static let op2NewCid: UInt8 = 0x70

    // XLH_INSERT_* flags (INSERT and MULTI_INSERT).
    static let insertAllVisibleCleared: UInt8 = 0x01
    static let insertAllFrozenSet: UInt8 = 0x20
    // XLH_DELETE_* flags.
    static let deleteAllVisibleCleared: UInt8 = 0x01
    static let deleteIsSuper: UInt8 = 0x08
    static let deleteIsPartitionMove: UInt8 = 0x10
    // XLH_UPDATE_* flags.
    static let updateOldAllVisibleCleared: UInt8 = 0x01
    static let updateNewAllVisibleCleared: UInt8 = 0x02
    static let updatePrefixFromOld: UInt8 = 0x20
    static let updateSuffixFromOld: UInt8 = 0x40
    // xl_heap_freeze_tuple.frzflags.
    static let freezeXvac: UInt8 = 0x02
    static let freezeInvalidXvac: UInt8 = 0x04

    /// FirstCommandId: redo stamps it as every tuple's cmin/cmax.
    static let firstCommandId: UInt32 = 0

    // Visibility map geometry (visibilitymap.c) for 8 KiB pages: 2 bits per heap block.
    static let vmMapSize = Page.size - Page.maxAlign(Page.headerSize)
    static let vmHeapBlocksPerByte = 4
    static let vmHeapBlocksPerPage = vmMapSize * vmHeapBlocksPerByte

    // MARK: Dispatch

    static func redoHeap(_ step: RedoStep) throws {
        switch step.info & opMask {
        case opInsert: try insert(step)
        case opDelete: try delete(step)
        case opUpdate: try update(step, hot: false)
        case opHotUpdate: try update(step, hot: true)
        case opTruncate: return // logged for logical decoding only; smgr records do the work
        case opConfirm: try confirm(step)
        case opLock: try lock(step)
        case opInplace: try inplace(step)
        default: throw step.unsupported("heap opcode")
        }
    }

    static func redoHeap2(_ step: RedoStep) throws {
        switch step.info & opMask {
        case op2Prune: try prune(step)
        case op2Vacuum: try vacuum(step)
        case op2FreezePage: try freezePage(step)
        case op2Visible: try visible(step)
        case op2MultiInsert: try multiInsert(step)
        case op2LockUpdated: try lockUpdated(step)
        case op2NewCid, op2Rewrite: return // logical decoding only; no page changes
        default: throw step.unsupported("heap2 opcode")
        }
    }

    // MARK: Helpers

    /// Records that touch only their block 0.
    private static func requireBlock0(_ step: RedoStep, _ what: String) throws {
        guard step.blockId == 0 else {
            throw RedoError.malformed(what, "unexpected block reference #\(step.blockId)")
        }
    }

    private static func offsetNumber(_ raw: UInt16) -> Int { Int(raw) }

    /// Builds a tuple from its WAL form (header fields plus the bytes after the fixed header)
    /// in scratch memory and hands the finished bytes to `body`.
    ///
    /// `fill` writes the bytes that follow the 23-byte fixed header at the pointer it is given and
    /// returns how many it wrote; the fixed header starts zeroed. `capacity` bounds the whole tuple
    /// (header included); callers that know the tuple's length pass it, so that the scratch of a
    /// small tuple is on the stack instead of one heap allocation per tuple.
    private static func withNewTuple<R>(
        _ what: String,
        capacity: Int = Page.size,
        fill: (UnsafeMutableRawPointer) throws -> Int,
        header: (HeapTuple) -> Void,
        _ body: (UnsafeRawBufferPointer) throws -> R
    ) throws -> R {
        try withUnsafeTemporaryAllocation(byteCount: capacity, alignment: 8) { scratch in
            let base = scratch.baseAddress!
            base.initializeMemory(as: UInt8.self, repeating: 0, count: HeapTuple.headerSize)
            let bodyLength = try fill(base + HeapTuple.headerSize)
            let length = HeapTuple.headerSize + bodyLength
            header(HeapTuple(base))
            return try body(UnsafeRawBufferPointer(start: base, count: length))
        }
    }

    /// Copies `bytes` to `to` and returns the number copied.
    @inline(__always) private static func put(_ bytes: UnsafeRawBufferPointer, _ to: UnsafeMutableRawPointer) -> Int {
        if let src = bytes.baseAddress, bytes.count > 0 { to.copyMemory(from: src, byteCount: bytes.count) }
        return bytes.count
    }

    /// PageAddItem(page, tuple, offnum, overwrite: true, is_heap: true), PANIC turned into a throw.
    private static func placeTuple(_ page: Page, _ tuple: UnsafeRawBufferPointer, at offnum: Int, _ what: String) throws {
        do {
            try page.addItem(tuple, at: offnum, overwrite: true, isHeap: true)
        } catch let e as RedoError {
            throw RedoError.corruptPage("\(what): failed to add tuple at \(offnum): \(e.message)")
        }
    }

    /// The "invalid max offset number" check before inserting at `offnum`.
    private static func checkInsertOffset(_ page: Page, _ offnum: Int, _ what: String) throws {
        guard page.maxOffset + 1 >= offnum else {
            throw RedoError.corruptPage("\(what): invalid max offset number: inserting at \(offnum), page has \(page.maxOffset)")
        }
    }

    // MARK: Heap records

    /// XLOG_HEAP_INSERT: xl_heap_insert {offnum u16, flags u8}; block 0 data is xl_heap_header
    /// {infomask2 u16, infomask u16, hoff u8} and the tuple after its fixed header.
    static func insert(_ step: RedoStep) throws {
        let what = "heap INSERT"
        try requireBlock0(step, what)
        var main = RedoReader(step.mainData, "heap INSERT main data")
        let offnum = offsetNumber(try main.u16())
        let flags = try main.u8()
        let page = step.page
        if step.info & initPage != 0 { page.initialize(specialSize: 0) }
        try checkInsertOffset(page, offnum, what)

        var data = RedoReader(step.blockData, "heap INSERT block data")
        let infomask2 = try data.u16(), infomask = try data.u16(), hoff = try data.u8()
        let body = data.rest()
        guard body.count > 0, HeapTuple.headerSize + body.count <= HeapTuple.maxSize else {
            throw RedoError.malformed(what, "tuple body of \(body.count) bytes")
        }
        try withNewTuple(what, capacity: HeapTuple.headerSize + body.count, fill: { put(body, $0) }, header: { t in
            t.infomask2 = infomask2
            t.infomask = infomask
            t.hoff = Int(hoff)
            t.xmin = step.record.xid
            t.setCommandId(firstCommandId)
            t.setCtid(block: step.blockNumber, offset: UInt16(truncatingIfNeeded: offnum))
        }) { try placeTuple(page, $0, at: offnum, what) }

        page.lsn = step.lsn
        if flags & insertAllVisibleCleared != 0 { page.clearAllVisible() }
    }

    /// XLOG_HEAP_DELETE: xl_heap_delete {xmax u32, offnum u16, infobits u8, flags u8}.
    static func delete(_ step: RedoStep) throws {
        let what = "heap DELETE"
        try requireBlock0(step, what)
        var main = RedoReader(step.mainData, "heap DELETE main data")
        let xmax = try main.u32()
        let offnum = offsetNumber(try main.u16())
        let infobits = try main.u8(), flags = try main.u8()
        let page = step.page
        let (t, _) = try page.normalHeapTuple(offnum, what)

        t.clearXmaxDescription()
        t.infomask2 &= ~HeapTuple.hotUpdated
        t.applyInfobits(infobits)
        if flags & deleteIsSuper == 0 { t.xmax = xmax } else { t.xmin = 0 }
        t.setCommandId(firstCommandId)

        page.setPrunableHeap(step.record.xid)
        if flags & deleteAllVisibleCleared != 0 { page.clearAllVisible() }
        if flags & deleteIsPartitionMove != 0 {
            t.setCtid(block: HeapTuple.movedPartitionsBlock, offset: HeapTuple.movedPartitionsOffset)
        } else {
            t.setCtid(block: step.blockNumber, offset: UInt16(truncatingIfNeeded: offnum))
        }
        page.lsn = step.lsn
    }

    /// xl_heap_update {old_xmax u32, old_offnum u16, old_infobits u8, flags u8, new_xmax u32,
    /// new_offnum u16}.
    private struct UpdateHeader {
        var oldXmax: UInt32, oldOffnum: Int, oldInfobits: UInt8, flags: UInt8, newXmax: UInt32, newOffnum: Int
    }

    /// XLOG_HEAP_UPDATE and XLOG_HEAP_HOT_UPDATE. Block 0 is the new page, block 1 the old page
    /// when it is a different one. Block 0 data: [prefix u16] [suffix u16] xl_heap_header, then the
    /// new tuple's bitmap/padding and the data not shared with the old tuple.
    static func update(_ step: RedoStep, hot: Bool) throws {
        let what = hot ? "heap HOT_UPDATE" : "heap UPDATE"
        var main = RedoReader(step.mainData, hot ? "heap HOT_UPDATE main data" : "heap UPDATE main data")
        let x = UpdateHeader(oldXmax: try main.u32(), oldOffnum: offsetNumber(try main.u16()),
                             oldInfobits: try main.u8(), flags: try main.u8(),
                             newXmax: try main.u32(), newOffnum: offsetNumber(try main.u16()))
        guard let newRef = step.record.block(id: 0) else {
            throw RedoError.malformed(what, "no block reference #0 (the new page)")
        }
        let oldRef = step.record.block(id: 1)
        let samePage = oldRef == nil || oldRef!.block == newRef.block
        let page = step.page

        switch step.blockId {
        case 1 where !samePage:
            _ = try updateOldTuple(step, page, x, newBlock: newRef.block, hot: hot, what)
        case 0 where samePage:
            let old = try updateOldTuple(step, page, x, newBlock: newRef.block, hot: hot, what)
            try updateNewTuple(step, page, x, newBlock: newRef.block, old: old, what)
        case 0:
            if step.info & initPage != 0 { page.initialize(specialSize: 0) }
            try updateNewTuple(step, page, x, newBlock: newRef.block, old: nil, what)
        default:
            throw RedoError.malformed(what, "unexpected block reference #\(step.blockId)")
        }
    }

    /// The old tuple's part of an update: xmax, infomask, forward link to the new version.
    private static func updateOldTuple(_ step: RedoStep, _ page: Page, _ x: UpdateHeader, newBlock: UInt32,
                                       hot: Bool, _ what: String) throws -> (tuple: HeapTuple, length: Int) {
        let old = try page.normalHeapTuple(x.oldOffnum, what)
        let t = old.tuple
        t.clearXmaxDescription()
        if hot { t.infomask2 |= HeapTuple.hotUpdated } else { t.infomask2 &= ~HeapTuple.hotUpdated }
        t.applyInfobits(x.oldInfobits)
        t.xmax = x.oldXmax
        t.setCommandId(firstCommandId)
        t.setCtid(block: newBlock, offset: UInt16(truncatingIfNeeded: x.newOffnum))

        page.setPrunableHeap(step.record.xid)
        if x.flags & updateOldAllVisibleCleared != 0 { page.clearAllVisible() }
        page.lsn = step.lsn
        return old
    }

    /// The new tuple's part of an update: rebuild it (borrowing prefix/suffix bytes from the old
    /// tuple on the same page when the record says so) and add it at new_offnum.
    private static func updateNewTuple(_ step: RedoStep, _ page: Page, _ x: UpdateHeader, newBlock: UInt32,
                                       old: (tuple: HeapTuple, length: Int)?, _ what: String) throws {
        try checkInsertOffset(page, x.newOffnum, what)
        var data = RedoReader(step.blockData, "heap UPDATE/HOT_UPDATE block 0 data")
        let prefix = x.flags & updatePrefixFromOld != 0 ? Int(try data.u16()) : 0
        let suffix = x.flags & updateSuffixFromOld != 0 ? Int(try data.u16()) : 0
        let infomask2 = try data.u16(), infomask = try data.u16(), hoff = Int(try data.u8())
        let tupleLength = data.remaining
        guard HeapTuple.headerSize + tupleLength + prefix + suffix <= HeapTuple.maxSize else {
            throw RedoError.malformed(what, "new tuple of \(HeapTuple.headerSize + tupleLength + prefix + suffix) bytes")
        }
        if prefix > 0 || suffix > 0 {
            guard let old else {
                throw RedoError.malformed(what, "prefix/suffix from the old tuple, but the old tuple is on another page")
            }
            guard old.tuple.hoff + prefix <= old.length, suffix <= old.length else {
                throw RedoError.corruptPage("\(what): old tuple of \(old.length) bytes (t_hoff \(old.tuple.hoff)) has no prefix \(prefix) / suffix \(suffix)")
            }
        }
        let bitmapLength = hoff - HeapTuple.headerSize
        if prefix > 0 {
            guard bitmapLength >= 0, bitmapLength <= tupleLength else {
                throw RedoError.malformed(what, "t_hoff \(hoff) does not fit \(tupleLength) bytes of tuple data")
            }
        }

        try withNewTuple(what, capacity: HeapTuple.headerSize + tupleLength + prefix + suffix, fill: { out in
            var n = 0
            if prefix > 0, let old {
                n += put(try data.bytes(bitmapLength), out)
                n += put(UnsafeRawBufferPointer(start: old.tuple.base + old.tuple.hoff, count: prefix), out + n)
            }
            n += put(data.rest(), out + n)
            if suffix > 0, let old {
                n += put(UnsafeRawBufferPointer(start: old.tuple.base + old.length - suffix, count: suffix), out + n)
            }
            return n
        }, header: { t in
            t.infomask2 = infomask2
            t.infomask = infomask
            t.hoff = hoff
            t.xmin = step.record.xid
            t.setCommandId(firstCommandId)
            t.xmax = x.newXmax
            t.setCtid(block: newBlock, offset: UInt16(truncatingIfNeeded: x.newOffnum))
        }) { try placeTuple(page, $0, at: x.newOffnum, what) }

        if x.flags & updateNewAllVisibleCleared != 0 { page.clearAllVisible() }
        page.lsn = step.lsn
    }

    /// XLOG_HEAP_CONFIRM: xl_heap_confirm {offnum u16}: a speculative insertion becomes real.
    static func confirm(_ step: RedoStep) throws {
        let what = "heap CONFIRM"
        try requireBlock0(step, what)
        var main = RedoReader(step.mainData, "heap CONFIRM main data")
        let offnum = offsetNumber(try main.u16())
        let page = step.page
        let (t, _) = try page.normalHeapTuple(offnum, what)
        t.setCtid(block: step.blockNumber, offset: UInt16(truncatingIfNeeded: offnum))
        page.lsn = step.lsn
    }

    /// XLOG_HEAP_LOCK: xl_heap_lock {locking_xid u32, offnum u16, infobits i8, flags u8}.
    static func lock(_ step: RedoStep) throws {
        let what = "heap LOCK"
        try requireBlock0(step, what)
        var main = RedoReader(step.mainData, "heap LOCK main data")
        let lockingXid = try main.u32()
        let offnum = offsetNumber(try main.u16())
        let infobits = try main.u8()
        let page = step.page
        let (t, _) = try page.normalHeapTuple(offnum, what)

        t.clearXmaxDescription()
        t.applyInfobits(infobits)
        if t.xmaxIsLockedOnly {
            t.infomask2 &= ~HeapTuple.hotUpdated
            t.setCtid(block: step.blockNumber, offset: UInt16(truncatingIfNeeded: offnum))
        }
        t.xmax = lockingXid
        t.setCommandId(firstCommandId)
        page.lsn = step.lsn
    }

    /// XLOG_HEAP_INPLACE: xl_heap_inplace {offnum u16}; block 0 data replaces the tuple's data
    /// (everything after t_hoff), same length.
    static func inplace(_ step: RedoStep) throws {
        let what = "heap INPLACE"
        try requireBlock0(step, what)
        var main = RedoReader(step.mainData, "heap INPLACE main data")
        let offnum = offsetNumber(try main.u16())
        let page = step.page
        let (t, length) = try page.normalHeapTuple(offnum, what)
        let newData = step.blockData
        guard length - t.hoff == newData.count else {
            throw RedoError.corruptPage("\(what): wrong tuple length: \(newData.count) bytes for a tuple with \(length - t.hoff)")
        }
        _ = put(newData, t.base + t.hoff)
        page.lsn = step.lsn
    }

    // MARK: Heap2 records

    /// Reads `count` line pointer offsets and checks each names an existing line pointer.
    private static func nextOffset(_ r: inout RedoReader, _ page: Page, _ what: String) throws -> Int {
        let off = offsetNumber(try r.u16())
        guard off >= 1, off <= page.maxOffset else {
            throw RedoError.corruptPage("\(what): offset \(off) outside the line pointer array (\(page.maxOffset))")
        }
        return off
    }

    /// XLOG_HEAP2_PRUNE: xl_heap_prune {latestRemovedXid u32, nredirected u16, ndead u16}; block 0
    /// data: nredirected (from, to) pairs, ndead offsets, then the now-unused offsets.
    static func prune(_ step: RedoStep) throws {
        let what = "heap2 PRUNE"
        try requireBlock0(step, what)
        var main = RedoReader(step.mainData, "heap2 PRUNE main data")
        _ = try main.u32()
        let nredirected = Int(try main.u16()), ndead = Int(try main.u16())
        let data = step.blockData
        guard data.count % 2 == 0, 2 * nredirected + ndead <= data.count / 2 else {
            throw RedoError.malformed(what, "\(data.count) bytes of offsets for \(nredirected) redirects and \(ndead) dead items")
        }
        let nunused = data.count / 2 - 2 * nredirected - ndead
        let page = step.page
        var r = RedoReader(data, "heap2 PRUNE block data")
        for _ in 0..<nredirected {
            let from = try nextOffset(&r, page, what)
            let to = try nextOffset(&r, page, what)
            page.setItemId(from, .redirect(to: to))
        }
        for _ in 0..<ndead { page.setItemId(try nextOffset(&r, page, what), .dead) }
        for _ in 0..<nunused { page.setItemId(try nextOffset(&r, page, what), .unused) }
        try page.repairFragmentation()
        page.lsn = step.lsn
    }

    /// XLOG_HEAP2_VACUUM: xl_heap_vacuum {nunused u16}; block 0 data: the LP_DEAD offsets that
    /// become LP_UNUSED.
    static func vacuum(_ step: RedoStep) throws {
        let what = "heap2 VACUUM"
        try requireBlock0(step, what)
        var main = RedoReader(step.mainData, "heap2 VACUUM main data")
        let nunused = Int(try main.u16())
        let page = step.page
        var r = RedoReader(step.blockData, "heap2 VACUUM block data")
        for _ in 0..<nunused { page.setItemId(try nextOffset(&r, page, what), .unused) }
        page.truncateLinePointerArray()
        page.lsn = step.lsn
    }

    /// XLOG_HEAP2_FREEZE_PAGE (15.x layout): xl_heap_freeze_page {cutoff_xid u32, ntuples u16};
    /// block 0 data: ntuples xl_heap_freeze_tuple {xmax u32, offset u16, t_infomask2 u16,
    /// t_infomask u16, frzflags u8, pad u8} of 12 bytes each.
    static func freezePage(_ step: RedoStep) throws {
        let what = "heap2 FREEZE_PAGE"
        try requireBlock0(step, what)
        var main = RedoReader(step.mainData, "heap2 FREEZE_PAGE main data")
        _ = try main.u32()
        let ntuples = Int(try main.u16())
        let page = step.page
        var r = RedoReader(step.blockData, "heap2 FREEZE_PAGE block data")
        for i in 0..<ntuples {
            try r.seek(i * 12)
            let xmax = try r.u32()
            let offnum = offsetNumber(try r.u16())
            let infomask2 = try r.u16(), infomask = try r.u16(), frzflags = try r.u8()
            let (t, _) = try page.normalHeapTuple(offnum, what)
            t.xmax = xmax
            if frzflags & freezeXvac != 0 { t.field3 = HeapTuple.frozenXid }
            if frzflags & freezeInvalidXvac != 0 { t.field3 = 0 }
            t.infomask = infomask
            t.infomask2 = infomask2
        }
        page.lsn = step.lsn
    }

    /// XLOG_HEAP2_VISIBLE: xl_heap_visible {cutoff_xid u32, flags u8}. Block 0 is the visibility
    /// map page, block 1 the heap page.
    static func visible(_ step: RedoStep) throws {
        let what = "heap2 VISIBLE"
        var main = RedoReader(step.mainData, "heap2 VISIBLE main data")
        _ = try main.u32()
        let flags = try main.u8()
        let page = step.page
        switch step.blockId {
        case 1:
            // PD_ALL_VISIBLE; pd_lsn moves only when hint bits are WAL-logged.
            page.setAllVisible()
            if step.settings.hintBitsLogged { page.lsn = step.lsn }
        case 0:
            guard let heapRef = step.record.block(id: 1) else {
                throw RedoError.malformed(what, "no block reference #1 (the heap page)")
            }
            let heapBlock = Int(heapRef.block)
            guard heapBlock / vmHeapBlocksPerPage == Int(step.blockNumber) else {
                throw RedoError.malformed(what, "heap block \(heapBlock) is not covered by visibility map block \(step.blockNumber)")
            }
            if page.isNew { page.initialize(specialSize: 0) }
            guard step.lsn > page.lsn else { return }
            let mapByte = Page.maxAlign(Page.headerSize) + (heapBlock % vmHeapBlocksPerPage) / vmHeapBlocksPerByte
            let mapShift = (heapBlock % vmHeapBlocksPerByte) * 2
            let current = page.u8(mapByte)
            if flags != (current >> UInt8(mapShift)) & 0x03 {
                page.setU8(mapByte, current | UInt8(truncatingIfNeeded: Int(flags) << mapShift))
                page.lsn = step.lsn
            }
        default:
            throw RedoError.malformed(what, "unexpected block reference #\(step.blockId)")
        }
    }

    /// XLOG_HEAP2_MULTI_INSERT: xl_heap_multi_insert {flags u8, pad, ntuples u16, offsets u16[]}
    /// (no offsets with INIT_PAGE: tuples go to 1, 2, ...); block 0 data: per tuple, 2-byte aligned,
    /// xl_multi_insert_tuple {datalen u16, infomask2 u16, infomask u16, hoff u8} and datalen bytes.
    static func multiInsert(_ step: RedoStep) throws {
        let what = "heap2 MULTI_INSERT"
        try requireBlock0(step, what)
        var main = RedoReader(step.mainData, "heap2 MULTI_INSERT main data")
        let flags = try main.u8()
        try main.skip(1)
        let ntuples = Int(try main.u16())
        let isInit = step.info & initPage != 0
        let page = step.page
        if isInit { page.initialize(specialSize: 0) }

        var data = RedoReader(step.blockData, "heap2 MULTI_INSERT block data")
        for i in 0..<ntuples {
            let offnum = isInit ? 1 + i : offsetNumber(try main.u16())
            try checkInsertOffset(page, offnum, what)
            try data.align(2)
            let length = Int(try data.u16())
            let infomask2 = try data.u16(), infomask = try data.u16(), hoff = try data.u8()
            let body = try data.bytes(length)
            guard HeapTuple.headerSize + length <= HeapTuple.maxSize else {
                throw RedoError.malformed(what, "tuple of \(HeapTuple.headerSize + length) bytes")
            }
            try withNewTuple(what, capacity: HeapTuple.headerSize + length, fill: { put(body, $0) }, header: { t in
                t.infomask2 = infomask2
                t.infomask = infomask
                t.hoff = Int(hoff)
                t.xmin = step.record.xid
                t.setCommandId(firstCommandId)
                t.setCtid(block: step.blockNumber, offset: UInt16(truncatingIfNeeded: offnum))
            }) { try placeTuple(page, $0, at: offnum, what) }
        }
        guard data.isAtEnd else {
            throw RedoError.malformed(what, "total tuple length mismatch: \(data.remaining) bytes left over")
        }

        page.lsn = step.lsn
        if flags & insertAllVisibleCleared != 0 { page.clearAllVisible() }
        if flags & insertAllFrozenSet != 0 { page.setAllVisible() }
    }

    /// XLOG_HEAP2_LOCK_UPDATED: xl_heap_lock_updated {xmax u32, offnum u16, infobits u8, flags u8}.
    static func lockUpdated(_ step: RedoStep) throws {
        let what = "heap2 LOCK_UPDATED"
        try requireBlock0(step, what)
        var main = RedoReader(step.mainData, "heap2 LOCK_UPDATED main data")
        let xmax = try main.u32()
        let offnum = offsetNumber(try main.u16())
        let infobits = try main.u8()
        let page = step.page
        let (t, _) = try page.normalHeapTuple(offnum, what)
        t.clearXmaxDescription()
        t.applyInfobits(infobits)
        t.xmax = xmax
        page.lsn = step.lsn
    }

    // MARK: Masking

    /// heap_mask: LSN, checksum, hint bits and unused space, then per tuple the hint bits of
    /// the infomask, the command id, a speculative token in t_ctid, and the padding after the item.
    static func mask(_ page: Page, blockNumber: UInt32) {
        PageMasking.maskLSNAndChecksum(page)
        PageMasking.maskHintBits(page)
        PageMasking.maskUnusedSpace(page)

        let n = min(page.maxOffset, (Page.size - Page.headerSize) / Page.itemIdSize)
        guard n > 0 else { return }
        for off in 1...n {
            let id = page.itemId(off)
            let itemOffset = id.offset
            if id.isNormal && itemOffset + HeapTuple.headerSize <= Page.size {
                let t = HeapTuple(page.base + itemOffset)
                if !t.isXminFrozen {
                    t.infomask &= ~HeapTuple.xactMask
                } else {
                    t.infomask &= ~(HeapTuple.xmaxInvalid | HeapTuple.xmaxCommitted)
                }
                t.field3 = UInt32(PageMasking.marker)
                if t.isSpeculative { t.setCtid(block: blockNumber, offset: UInt16(off)) }
            }
            if id.hasStorage {
                let length = id.length
                let padding = Page.maxAlign(length) - length
                if padding > 0 && itemOffset + length + padding <= Page.size {
                    page.zero(itemOffset + length, padding)
                }
            }
        }
    }
}
