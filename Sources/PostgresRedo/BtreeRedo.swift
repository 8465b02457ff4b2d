import PostgresWAL

/// Redo of the Btree resource manager (PostgreSQL 15 nbtxlog.c), one page at a time.
///
/// Design: PostgreSQL's btree_redo walks every buffer a record registered; here the dispatcher asks
/// for one page (`step.blockId`), so each record type has one function that switches on the block
/// id and does exactly what the C code does for that buffer in its BLK_NEEDS_REDO or
/// XLogInitBufferForRedo branch (BLK_DONE, full-page images and WILL_INIT zeroing are the
/// dispatcher's). Block ids a record type never registers are rejected rather than ignored.
///
/// Byte-exactness: pages are rebuilt in the order PostgreSQL adds items (split left pages and
/// deduplicated pages on a temporary page that then replaces the whole page, header included;
/// right pages and new roots by re-adding the logged tuple area in reverse), so both line pointers
/// and tuple placement match the primary. Tuple-level work (posting list split and update, the
/// dedup pass, _bt_restore_page) lives in BtreeTuples.swift.
///
/// Safety and cost: every record field and page item is bounds-checked before use and any
/// inconsistency throws `RedoError`. Temporary pages and tuple scratch come from
/// withUnsafeTemporaryAllocation, so the steady state allocates nothing on the heap.
enum BtreeRedo {
    // xl_info opcodes (nbtxlog.h).
    static let insertLeaf: UInt8 = 0x00
    static let insertUpper: UInt8 = 0x10
    static let insertMeta: UInt8 = 0x20
    static let splitL: UInt8 = 0x30
    static let splitR: UInt8 = 0x40
    static let insertPost: UInt8 = 0x50
    static let dedup: UInt8 = 0x60
    static let delete: UInt8 = 0x70
    static let unlinkPage: UInt8 = 0x80
    static let unlinkPageMeta: UInt8 = 0x90
    static let newRoot: UInt8 = 0xA0
    static let markPageHalfDead: UInt8 = 0xB0
    static let vacuum: UInt8 = 0xC0
    static let reusePage: UInt8 = 0xD0
    static let metaCleanup: UInt8 = 0xE0

    static func redo(_ step: RedoStep) throws {
        switch step.opcode {
        case insertLeaf: try redoInsert(step, isLeaf: true, isMeta: false, isPosting: false)
        case insertUpper: try redoInsert(step, isLeaf: false, isMeta: false, isPosting: false)
        case insertMeta: try redoInsert(step, isLeaf: false, isMeta: true, isPosting: false)
        case insertPost: try redoInsert(step, isLeaf: true, isMeta: false, isPosting: true)
        case splitL: try redoSplit(step, newItemOnLeft: true)
        case splitR: try redoSplit(step, newItemOnLeft: false)
        case dedup: try redoDedup(step)
        case vacuum: try redoVacuumOrDelete(step, isVacuum: true)
        case delete: try redoVacuumOrDelete(step, isVacuum: false)
        case markPageHalfDead: try redoMarkPageHalfDead(step)
        case unlinkPage: try redoUnlinkPage(step, withMeta: false)
        case unlinkPageMeta: try redoUnlinkPage(step, withMeta: true)
        case newRoot: try redoNewRoot(step)
        case reusePage: return // Only a recovery conflict on a standby; no page changes.
        case metaCleanup:
            guard step.blockId == 0 else { throw unexpectedBlock(step, "META_CLEANUP") }
            try restoreMeta(step)
        default:
            throw RedoError(.malformedRecord, "btree_redo: unknown op code 0x\(String(step.opcode, radix: 16))")
        }
    }

    static func unexpectedBlock(_ step: RedoStep, _ record: String) -> RedoError {
        RedoError(.malformedRecord, "btree \(record) record has no use for block reference #\(step.blockId)")
    }

    // MARK: Shared pieces

    /// _bt_restore_meta: rebuild the metapage from the xl_btree_metadata in this block's data.
    ///
    ///     xl_btree_metadata: version, root, level, fastroot, fastlevel, last_cleanup_num_delpages
    ///     (u32 each), allequalimage (bool), padded to 28 bytes
    ///     BTMetaPageData at 24: magic, version, root, level, fastroot, fastlevel,
    ///     last_cleanup_num_delpages (u32 each, 24...48), float8 num_heap_tuples at 56, bool at 64
    static func restoreMeta(_ step: RedoStep) throws {
        let data = step.blockData
        guard data.count == 28 else {
            throw RedoError.malformed("btree metadata", "\(data.count) bytes, expected 28")
        }
        let page = step.page
        page.initBtreePage()
        page.setU32(24, 0x053162) // BTREE_MAGIC
        for i in 0..<6 { page.setU32(28 + 4 * i, data.u32le(4 * i)) }
        page.base.storeBytes(of: (-1.0 as Double).bitPattern.littleEndian, toByteOffset: 56, as: UInt64.self)
        page.setU8(64, data[24])
        BtreeOpaque(fresh: page).flags = BtreeOpaque.meta
        page.lower = 24 + 48
        page.lsn = step.lsn
    }

    /// _bt_clear_incomplete_split.
    static func clearIncompleteSplit(_ step: RedoStep) throws {
        let opaque = try BtreeOpaque(validating: step.page, "clear incomplete split")
        opaque.flags &= ~BtreeOpaque.incompleteSplit
        step.page.lsn = step.lsn
    }

    /// The 8-byte dummy high key of a half-dead leaf: a pivot tuple with no key attributes whose
    /// block number is the top parent of the subtree being deleted.
    static func addHalfDeadHighKey(_ page: Page, topParent: UInt32) throws {
        try withUnsafeTemporaryAllocation(byteCount: IndexTuple.headerSize, alignment: 8) { buf in
            let t = buf.baseAddress!
            t.initializeMemory(as: UInt8.self, repeating: 0, count: IndexTuple.headerSize)
            IndexTuple.setBlock(t, topParent)
            IndexTuple.setOffset(t, 0) // BTreeTupleSetNAtts(0, false)
            IndexTuple.setInfo(t, UInt16(IndexTuple.headerSize) | IndexTuple.altTid)
            try page.addItem(UnsafeRawBufferPointer(buf), at: 1)
        }
    }

    // MARK: INSERT_LEAF, INSERT_UPPER, INSERT_META, INSERT_POST

    /// btree_xlog_insert. Main data: xl_btree_insert (offnum u16). Block 0: the page inserted into,
    /// data = the tuple (INSERT_POST: postingoff u16, then the original new tuple). Block 1 (not
    /// leaf): the child whose split this finishes. Block 2 (INSERT_META): the metapage.
    static func redoInsert(_ step: RedoStep, isLeaf: Bool, isMeta: Bool, isPosting: Bool) throws {
        switch step.blockId {
        case 0: break
        case 1 where !isLeaf: return try clearIncompleteSplit(step)
        case 2 where isMeta: return try restoreMeta(step)
        default: throw unexpectedBlock(step, "insert")
        }
        var main = RedoReader(step.mainData, "xl_btree_insert")
        let offnum = Int(try main.u16())
        let page = step.page
        var data = RedoReader(step.blockData, "btree insert block data")
        if !isPosting {
            try page.addItem(data.rest(), at: offnum)
        } else {
            let postingOff = Int(try data.u16())
            let item = data.rest()
            let itemSize = try IndexTuple.checkedSize(in: item, at: 0, "btree insert posting split new item")
            guard itemSize == item.count else {
                throw RedoError.malformed("btree insert posting split", "new item says \(itemSize) bytes, \(item.count) logged")
            }
            guard offnum >= 2 else { throw RedoError.malformed("btree insert posting split", "new item offset \(offnum)") }
            let (posting, _) = try page.btreeTuple(offnum - 1, "btree insert posting split")
            try withUnsafeTemporaryAllocation(byteCount: item.count, alignment: 8) { copy in
                let newItem = copy.baseAddress!
                newItem.copyMemory(from: item.baseAddress!, byteCount: item.count)
                try BtreeTupleOps.swapPosting(newItem: newItem, posting: posting, postingOff: postingOff, "btree insert posting split")
                try page.addItem(UnsafeRawBufferPointer(copy), at: offnum)
            }
        }
        page.lsn = step.lsn
    }

    // MARK: SPLIT_L, SPLIT_R

    /// btree_xlog_split. Main data: xl_btree_split (level u32, firstrightoff u16, newitemoff u16,
    /// postingoff u16). Block 0: the original (left) page, data = [new item (SPLIT_L, or the
    /// original new item when postingoff != 0)] + left high key, each MAXALIGNed. Block 1: the new
    /// right page (WILL_INIT), data = its tuple area. Block 2: the old right sibling. Block 3 (not
    /// leaf): the child whose split this finishes.
    static func redoSplit(_ step: RedoStep, newItemOnLeft: Bool) throws {
        var main = RedoReader(step.mainData, "xl_btree_split")
        let level = try main.u32()
        let firstRightOff = Int(try main.u16())
        let newItemOff = Int(try main.u16())
        let postingOff = Int(try main.u16())
        let isLeaf = level == 0
        guard let orig = step.record.block(id: 0), let right = step.record.block(id: 1) else {
            throw RedoError.malformed("btree split", "block references 0 and 1 are required")
        }
        let page = step.page
        switch step.blockId {
        case 0:
            try rebuildSplitLeft(step, isLeaf: isLeaf, newItemOnLeft: newItemOnLeft, firstRightOff: firstRightOff,
                                 newItemOff: newItemOff, postingOff: postingOff, rightBlock: right.block)
        case 1:
            page.initBtreePage()
            let opaque = BtreeOpaque(fresh: page)
            opaque.prev = orig.block
            opaque.next = step.record.block(id: 2)?.block ?? BtreeOpaque.none
            opaque.level = level
            opaque.flags = isLeaf ? BtreeOpaque.leaf : 0
            opaque.cycleId = 0
            try BtreeTupleOps.restorePage(page, from: step.blockData, "btree split right page")
            page.lsn = step.lsn
        case 2:
            let opaque = try BtreeOpaque(validating: page, "btree split right sibling")
            opaque.prev = right.block
            page.lsn = step.lsn
        case 3 where !isLeaf:
            try clearIncompleteSplit(step)
        default:
            throw unexpectedBlock(step, "split")
        }
    }

    /// The left half of a split: the page's items before firstrightoff, re-added in order on a
    /// temporary page after the logged high key, with the new item and the replacement posting
    /// list where they belong; the temporary page then replaces the page, header included.
    static func rebuildSplitLeft(_ step: RedoStep, isLeaf: Bool, newItemOnLeft: Bool, firstRightOff: Int,
                                 newItemOff: Int, postingOff: Int, rightBlock: UInt32) throws {
        let what = "btree split left page"
        let page = step.page
        let opaque = try BtreeOpaque(validating: page, what)
        let data = step.blockData
        // Scratch: the new item's mutable copy at 0, the replacement posting list at 8192.
        try withUnsafeTemporaryAllocation(byteCount: 2 * Page.size, alignment: 16) { scratch in
            let newItem = scratch.baseAddress!
            let nposting = newItem + Page.size
            var pos = 0
            var newItemSize = 0
            var replacePostingOff = 0 // InvalidOffsetNumber
            var npostingSize = 0
            if newItemOnLeft || postingOff != 0 {
                newItemSize = Page.maxAlign(try IndexTuple.checkedSize(in: data, at: 0, what))
                guard newItemSize <= data.count else { throw RedoError.malformed(what, "new item overruns the block data") }
                newItem.copyMemory(from: data.baseAddress!, byteCount: newItemSize)
                pos = newItemSize
                if postingOff != 0 {
                    replacePostingOff = newItemOff - 1
                    let (oposting, _) = try page.btreeTuple(replacePostingOff, what)
                    npostingSize = IndexTuple.size(oposting)
                    nposting.initializeMemory(as: UInt8.self, repeating: 0, count: Page.maxAlign(npostingSize))
                    nposting.copyMemory(from: oposting, byteCount: npostingSize)
                    try BtreeTupleOps.swapPosting(newItem: newItem, posting: nposting, postingOff: postingOff, what)
                }
            }
            let highKeySize = Page.maxAlign(try IndexTuple.checkedSize(in: data, at: pos, what))
            guard pos + highKeySize == data.count else {
                throw RedoError.malformed(what, "block data of \(data.count) bytes does not end with the \(highKeySize)-byte high key at \(pos)")
            }
            let highKey = UnsafeRawBufferPointer(rebasing: data[pos..<pos + highKeySize])

            try withUnsafeTemporaryAllocation(byteCount: Page.size, alignment: 16) { tempBytes in
                let left = Page(tempBytes.baseAddress!)
                left.initialize(specialSize: Page.size - opaque.at)
                left.write(UnsafeRawBufferPointer(start: page.base + opaque.at, count: Page.size - opaque.at), at: opaque.at)
                try left.addItem(highKey, at: 1)
                var leftOff = 2
                var off = opaque.firstDataKey
                let newItemBytes = UnsafeRawBufferPointer(start: newItem, count: newItemSize)
                while off < firstRightOff {
                    if off == replacePostingOff {
                        try left.addItem(UnsafeRawBufferPointer(start: nposting, count: Page.maxAlign(npostingSize)), at: leftOff)
                        leftOff += 1
                        off += 1
                        continue
                    } else if newItemOnLeft && off == newItemOff {
                        try left.addItem(newItemBytes, at: leftOff)
                        leftOff += 1
                    }
                    let (item, length) = try page.btreeTuple(off, what)
                    try left.addItem(UnsafeRawBufferPointer(start: item, count: length), at: leftOff)
                    leftOff += 1
                    off += 1
                }
                if newItemOnLeft && off == newItemOff {
                    try left.addItem(newItemBytes, at: leftOff)
                }
                page.copy(from: left)
            }
        }
        opaque.flags = BtreeOpaque.incompleteSplit | (isLeaf ? BtreeOpaque.leaf : 0)
        opaque.next = rightBlock
        opaque.cycleId = 0
        page.lsn = step.lsn
    }

    // MARK: DEDUP

    /// btree_xlog_dedup. Main data: xl_btree_dedup (nintervals u16). Block 0: the leaf, data = the
    /// intervals ({baseoff u16, nitems u16} each) the primary merged. Redo runs the same pass.
    static func redoDedup(_ step: RedoStep) throws {
        guard step.blockId == 0 else { throw unexpectedBlock(step, "DEDUP") }
        let what = "btree dedup"
        var main = RedoReader(step.mainData, "xl_btree_dedup")
        let nIntervals = Int(try main.u16())
        let intervals = step.blockData
        guard intervals.count >= 4 * nIntervals else {
            throw RedoError.malformed(what, "\(nIntervals) intervals need \(4 * nIntervals) bytes, \(intervals.count) logged")
        }
        let page = step.page
        let opaque = try BtreeOpaque(validating: page, what)
        let minOff = opaque.firstDataKey
        let maxOff = page.maxOffset
        let maxPosting = BtreeTupleOps.maxItemSize
        try withUnsafeTemporaryAllocation(byteCount: 2 * Page.size, alignment: 16) { scratch in
            let newPage = Page(scratch.baseAddress!)
            let postingScratch = scratch.baseAddress! + Page.size
            try withUnsafeTemporaryAllocation(byteCount: maxPosting, alignment: 8) { htids in
                var state = BtreeDedupState(htids: htids, posting: postingScratch, maxPostingSize: maxPosting, what)
                newPage.initialize(specialSize: Page.size - opaque.at)
                newPage.write(UnsafeRawBufferPointer(start: page.base + opaque.at, count: Page.size - opaque.at), at: opaque.at)
                if !opaque.isRightmost {
                    let (hikey, length) = try page.btreeTuple(1, what)
                    try newPage.addItem(UnsafeRawBufferPointer(start: hikey, count: length), at: 1)
                }
                var off = minOff
                while off <= maxOff {
                    let (tuple, _) = try page.btreeTuple(off, what)
                    if off == minOff {
                        try state.start(tuple, at: off)
                    } else if state.nintervals < nIntervals,
                              state.baseOff == Int(intervals.u16le(4 * state.nintervals)),
                              state.nitems < Int(intervals.u16le(4 * state.nintervals + 2)) {
                        guard try state.save(tuple) else {
                            throw RedoError.corruptPage("\(what): deduplication failed to add heap tid to pending posting list")
                        }
                    } else {
                        try state.finish(into: newPage, intervals: intervals, count: nIntervals)
                        try state.start(tuple, at: off)
                    }
                    off += 1
                }
                if state.nitems > 0 {
                    try state.finish(into: newPage, intervals: intervals, count: nIntervals)
                }
                guard state.nintervals == nIntervals else {
                    throw RedoError.corruptPage("\(what): formed \(state.nintervals) posting lists, the record logged \(nIntervals)")
                }
                let newOpaque = BtreeOpaque(fresh: newPage)
                newOpaque.flags &= ~BtreeOpaque.hasGarbage
                page.copy(from: newPage)
            }
        }
        page.lsn = step.lsn
    }

    // MARK: VACUUM, DELETE

    /// btree_xlog_vacuum and btree_xlog_delete. Main data: xl_btree_vacuum (ndeleted u16,
    /// nupdated u16) or xl_btree_delete (latestRemovedXid u32, ndeleted u16, nupdated u16).
    /// Block 0 data: deleted offsets, updated offsets, then per updated tuple an xl_btree_update
    /// (ndeletedtids u16, then that many posting list positions).
    static func redoVacuumOrDelete(_ step: RedoStep, isVacuum: Bool) throws {
        let what = isVacuum ? "btree vacuum" : "btree delete"
        guard step.blockId == 0 else { throw unexpectedBlock(step, isVacuum ? "VACUUM" : "DELETE") }
        var main = RedoReader(step.mainData, isVacuum ? "xl_btree_vacuum" : "xl_btree_delete")
        if !isVacuum { try main.skip(4) }
        let nDeleted = Int(try main.u16())
        let nUpdated = Int(try main.u16())
        let page = step.page
        var data = RedoReader(step.blockData, what + " block data")
        let deleted = try data.bytes(2 * nDeleted)
        if nUpdated > 0 {
            let updatedOffsets = try data.bytes(2 * nUpdated)
            try withUnsafeTemporaryAllocation(byteCount: Page.size, alignment: 16) { scratch in
                for i in 0..<nUpdated {
                    let offnum = Int(updatedOffsets.u16le(2 * i))
                    let nTids = Int(try data.u16())
                    let positions = try data.bytes(2 * nTids)
                    let (orig, _) = try page.btreeTuple(offnum, what)
                    let size = try BtreeTupleOps.updatePosting(orig, deleting: positions, count: nTids,
                                                               into: scratch.baseAddress!, what)
                    try page.indexTupleOverwrite(offnum, with: UnsafeRawBufferPointer(start: scratch.baseAddress!, count: size))
                }
            }
        }
        if nDeleted > 0 {
            try withUnsafeTemporaryAllocation(of: UInt16.self, capacity: nDeleted) { offsets in
                for i in 0..<nDeleted { offsets[i] = deleted.u16le(2 * i) }
                try page.indexMultiDelete(UnsafeBufferPointer(offsets))
            }
        }
        let opaque = try BtreeOpaque(validating: page, what)
        opaque.flags &= ~BtreeOpaque.hasGarbage
        page.lsn = step.lsn
    }

    // MARK: MARK_PAGE_HALFDEAD

    /// btree_xlog_mark_page_halfdead. Main data: xl_btree_mark_page_halfdead (poffset u16,
    /// leafblk, leftblk, rightblk, topparent u32 at 4, 8, 12, 16). Block 0: the leaf (WILL_INIT),
    /// rebuilt as an empty half-dead page. Block 1: the subtree's parent, whose pivot at poffset
    /// takes over the downlink of the next pivot, which is deleted.
    static func redoMarkPageHalfDead(_ step: RedoStep) throws {
        let what = "btree mark page halfdead"
        var main = RedoReader(step.mainData, "xl_btree_mark_page_halfdead")
        let pOffset = Int(try main.u16())
        try main.skip(2)
        _ = try main.u32() // leafblk
        let leftBlock = try main.u32()
        let rightBlock = try main.u32()
        let topParent = try main.u32()
        let page = step.page
        switch step.blockId {
        case 1:
            _ = try BtreeOpaque(validating: page, what)
            let (next, _) = try page.btreeTuple(pOffset + 1, what)
            let rightSib = IndexTuple.block(next)
            let (target, _) = try page.btreeTuple(pOffset, what)
            IndexTuple.setBlock(target, rightSib)
            try page.indexTupleDelete(pOffset + 1)
            page.lsn = step.lsn
        case 0:
            page.initBtreePage()
            let opaque = BtreeOpaque(fresh: page)
            opaque.prev = leftBlock
            opaque.next = rightBlock
            opaque.level = 0
            opaque.flags = BtreeOpaque.halfDead | BtreeOpaque.leaf
            opaque.cycleId = 0
            try addHalfDeadHighKey(page, topParent: topParent)
            page.lsn = step.lsn
        default:
            throw unexpectedBlock(step, "MARK_PAGE_HALFDEAD")
        }
    }

    // MARK: UNLINK_PAGE, UNLINK_PAGE_META

    /// btree_xlog_unlink_page. Main data: xl_btree_unlink_page (leftsib, rightsib, level u32 at
    /// 0, 4, 8; safexid u64 at 16; leafleftsib, leafrightsib, leaftopparent u32 at 24, 28, 32).
    /// Block 0: the target (WILL_INIT), rebuilt as a deleted page. Block 1: the left sibling.
    /// Block 2: the right sibling. Block 3: the half-dead leaf when the target was its ancestor
    /// (WILL_INIT). Block 4 (UNLINK_PAGE_META): the metapage.
    static func redoUnlinkPage(_ step: RedoStep, withMeta: Bool) throws {
        let what = "btree unlink page"
        var main = RedoReader(step.mainData, "xl_btree_unlink_page")
        let leftSib = try main.u32()
        let rightSib = try main.u32()
        let level = try main.u32()
        try main.skip(4)
        let safeXid = try main.u64()
        let leafLeftSib = try main.u32()
        let leafRightSib = try main.u32()
        let leafTopParent = try main.u32()
        let page = step.page
        switch step.blockId {
        case 1:
            guard leftSib != BtreeOpaque.none else {
                throw RedoError.malformed(what, "left sibling block reference without a left sibling")
            }
            let opaque = try BtreeOpaque(validating: page, what)
            opaque.next = rightSib
            page.lsn = step.lsn
        case 0:
            page.initBtreePage()
            let opaque = BtreeOpaque(fresh: page)
            opaque.prev = leftSib
            opaque.next = rightSib
            opaque.level = level
            // BTPageSetDeleted: safexid in the page contents, no line pointers, no tuples.
            opaque.flags = (opaque.flags & ~BtreeOpaque.halfDead) | BtreeOpaque.deleted | BtreeOpaque.hasFullXid
            page.lower = Page.maxAlign(Page.headerSize) + 8
            page.upper = page.special
            page.base.storeBytes(of: safeXid.littleEndian, toByteOffset: Page.maxAlign(Page.headerSize), as: UInt64.self)
            if level == 0 { opaque.flags |= BtreeOpaque.leaf }
            opaque.cycleId = 0
            page.lsn = step.lsn
        case 2:
            let opaque = try BtreeOpaque(validating: page, what)
            opaque.prev = leftSib
            page.lsn = step.lsn
        case 3:
            page.initBtreePage()
            let opaque = BtreeOpaque(fresh: page)
            opaque.flags = BtreeOpaque.halfDead | BtreeOpaque.leaf
            opaque.prev = leafLeftSib
            opaque.next = leafRightSib
            opaque.level = 0
            opaque.cycleId = 0
            try addHalfDeadHighKey(page, topParent: leafTopParent)
            page.lsn = step.lsn
        case 4 where withMeta:
            try restoreMeta(step)
        default:
            throw unexpectedBlock(step, withMeta ? "UNLINK_PAGE_META" : "UNLINK_PAGE")
        }
    }

    // MARK: NEWROOT

    /// btree_xlog_newroot. Main data: xl_btree_newroot (rootblk u32, level u32). Block 0: the new
    /// root (WILL_INIT), data = its tuple area when level > 0. Block 1 (level > 0): the left child
    /// whose split this finishes. Block 2: the metapage.
    static func redoNewRoot(_ step: RedoStep) throws {
        var main = RedoReader(step.mainData, "xl_btree_newroot")
        try main.skip(4)
        let level = try main.u32()
        let page = step.page
        switch step.blockId {
        case 0:
            page.initBtreePage()
            let opaque = BtreeOpaque(fresh: page)
            opaque.flags = BtreeOpaque.root | (level == 0 ? BtreeOpaque.leaf : 0)
            opaque.prev = BtreeOpaque.none
            opaque.next = BtreeOpaque.none
            opaque.level = level
            opaque.cycleId = 0
            if level > 0 {
                try BtreeTupleOps.restorePage(page, from: step.blockData, "btree new root")
            }
            page.lsn = step.lsn
        case 1 where level > 0:
            try clearIncompleteSplit(step)
        case 2:
            try restoreMeta(step)
        default:
            throw unexpectedBlock(step, "NEWROOT")
        }
    }

    // MARK: Masking

    /// btree_mask.
    static func mask(_ page: Page, blockNumber: UInt32) {
        PageMasking.maskLSNAndChecksum(page)
        PageMasking.maskHintBits(page)
        PageMasking.maskUnusedSpace(page)
        // BTPageGetOpaque does not check pd_special; stay inside the page whatever it says.
        let at = page.special
        guard at + BtreeOpaque.size <= Page.size else { return }
        let opaque = BtreeOpaque(page: page, at: at)
        if opaque.isLeaf { PageMasking.maskLinePointerFlags(page) }
        opaque.flags &= ~(BtreeOpaque.hasGarbage | BtreeOpaque.splitEnd)
        opaque.cycleId = 0
    }
}
