/// B-tree page and index tuple layouts (nbtree.h, itup.h) and the tuple-level operations redo
/// repeats: rebuilding a page from its logged tuple area, posting list split, posting list update
/// and the deduplication pass. Everything works on raw bytes in place or in caller-provided scratch;
/// nothing here allocates on the heap.

/// BTPageOpaqueData, the 16 bytes of special space at the end of every B-tree page.
///
///     btpo_prev    u32   +0
///     btpo_next    u32   +4
///     btpo_level   u32   +8
///     btpo_flags   u16   +12
///     btpo_cycleid u16   +14
struct BtreeOpaque {
    static let size = 16

    static let leaf: UInt16 = 1 << 0
    static let root: UInt16 = 1 << 1
    static let deleted: UInt16 = 1 << 2
    static let meta: UInt16 = 1 << 3
    static let halfDead: UInt16 = 1 << 4
    static let splitEnd: UInt16 = 1 << 5
    static let hasGarbage: UInt16 = 1 << 6
    static let incompleteSplit: UInt16 = 1 << 7
    static let hasFullXid: UInt16 = 1 << 8

    /// P_NONE.
    static let none: UInt32 = 0

    let page: Page
    /// pd_special: where the opaque data starts.
    let at: Int

    /// The opaque data of a page that must already be a B-tree page (special space of 16 bytes,
    /// sane header pointers); throws otherwise, since changing anything else would write garbage.
    init(validating page: Page, _ what: String) throws {
        let l = page.lower, u = page.upper, s = page.special
        guard !page.isNew, s == Page.size - BtreeOpaque.size, l >= Page.headerSize, l <= u, u <= s else {
            throw RedoError.corruptPage("\(what): not a B-tree page (lower \(l), upper \(u), special \(s))")
        }
        self.page = page
        self.at = s
    }

    init(page: Page, at: Int) {
        self.page = page
        self.at = at
    }

    /// The opaque data of a page just set up by `initBtreePage`.
    init(fresh page: Page) {
        self.page = page
        self.at = Page.size - BtreeOpaque.size
    }

    var prev: UInt32 { get { page.u32(at) } nonmutating set { page.setU32(at, newValue) } }
    var next: UInt32 { get { page.u32(at + 4) } nonmutating set { page.setU32(at + 4, newValue) } }
    var level: UInt32 { get { page.u32(at + 8) } nonmutating set { page.setU32(at + 8, newValue) } }
    var flags: UInt16 { get { page.u16(at + 12) } nonmutating set { page.setU16(at + 12, newValue) } }
    var cycleId: UInt16 { get { page.u16(at + 14) } nonmutating set { page.setU16(at + 14, newValue) } }

    var isRightmost: Bool { next == BtreeOpaque.none }
    var isLeaf: Bool { flags & BtreeOpaque.leaf != 0 }
    /// P_FIRSTDATAKEY: a rightmost page has no high key.
    var firstDataKey: Int { isRightmost ? 1 : 2 }
}

extension Page {
    /// _bt_pageinit: an empty page with B-tree special space (all opaque fields zero).
    func initBtreePage() { initialize(specialSize: BtreeOpaque.size) }

    /// A tuple's address and line pointer length on a B-tree page, checked to lie inside the
    /// tuple area and to hold its own IndexTupleSize.
    func btreeTuple(_ offnum: Int, _ what: String) throws -> (pointer: UnsafeMutableRawPointer, length: Int) {
        let n = maxOffset
        guard offnum >= 1, offnum <= n else {
            throw RedoError.corruptPage("\(what): offset \(offnum) is not on the page (\(n) items)")
        }
        let id = itemId(offnum)
        let off = id.offset, len = id.length
        guard id.hasStorage, off >= upper, off + len <= special, len >= IndexTuple.headerSize else {
            throw RedoError.corruptPage("\(what): line pointer \(offnum) (offset \(off), length \(len)) is not a tuple")
        }
        let p = base + off
        guard IndexTuple.size(p) <= len, IndexTuple.size(p) >= IndexTuple.headerSize else {
            throw RedoError.corruptPage("\(what): tuple \(offnum) says \(IndexTuple.size(p)) bytes, its line pointer \(len)")
        }
        return (p, len)
    }
}

/// IndexTupleData with nbtree's interpretation of t_tid (itup.h, nbtree.h).
///
///     t_tid   bi_hi u16 +0, bi_lo u16 +2 (block number), ip_posid u16 +4 (offset number)
///     t_info  u16 +6     size in the low 13 bits, 0x2000 INDEX_ALT_TID_MASK, 0x4000 var, 0x8000 nulls
///
/// A posting list tuple has INDEX_ALT_TID_MASK and BT_IS_POSTING (0x2000 in ip_posid); its ip_posid
/// low 12 bits count the TIDs, and its block number is the offset of the TID array in the tuple.
/// A pivot tuple has INDEX_ALT_TID_MASK without BT_IS_POSTING; its block number is the downlink.
enum IndexTuple {
    static let headerSize = 8
    static let tidSize = 6
    static let sizeMask: UInt16 = 0x1FFF
    static let altTid: UInt16 = 0x2000
    static let isPostingBit: UInt16 = 0x2000
    static let nPostingMask: UInt16 = 0x0FFF

    @inline(__always) static func u16(_ p: UnsafeRawPointer, _ o: Int) -> UInt16 {
        UInt16(littleEndian: p.loadUnaligned(fromByteOffset: o, as: UInt16.self))
    }
    @inline(__always) static func setU16(_ p: UnsafeMutableRawPointer, _ o: Int, _ v: UInt16) {
        p.storeBytes(of: v.littleEndian, toByteOffset: o, as: UInt16.self)
    }

    @inline(__always) static func info(_ p: UnsafeRawPointer) -> UInt16 { u16(p, 6) }
    @inline(__always) static func setInfo(_ p: UnsafeMutableRawPointer, _ v: UInt16) { setU16(p, 6, v) }
    /// IndexTupleSize.
    @inline(__always) static func size(_ p: UnsafeRawPointer) -> Int { Int(info(p) & sizeMask) }
    @inline(__always) static func block(_ p: UnsafeRawPointer) -> UInt32 { UInt32(u16(p, 0)) << 16 | UInt32(u16(p, 2)) }
    @inline(__always) static func setBlock(_ p: UnsafeMutableRawPointer, _ b: UInt32) {
        setU16(p, 0, UInt16(truncatingIfNeeded: b >> 16))
        setU16(p, 2, UInt16(truncatingIfNeeded: b))
    }
    @inline(__always) static func offset(_ p: UnsafeRawPointer) -> UInt16 { u16(p, 4) }
    @inline(__always) static func setOffset(_ p: UnsafeMutableRawPointer, _ o: UInt16) { setU16(p, 4, o) }

    static func isPosting(_ p: UnsafeRawPointer) -> Bool {
        info(p) & altTid != 0 && offset(p) & isPostingBit != 0
    }
    static func isPivot(_ p: UnsafeRawPointer) -> Bool {
        info(p) & altTid != 0 && offset(p) & isPostingBit == 0
    }
    static func nPosting(_ p: UnsafeRawPointer) -> Int { Int(offset(p) & nPostingMask) }
    static func postingOffset(_ p: UnsafeRawPointer) -> Int { Int(block(p)) }

    /// BTreeTupleSetPosting.
    static func setPosting(_ p: UnsafeMutableRawPointer, count: Int, at offset: Int) {
        setInfo(p, info(p) | altTid)
        setOffset(p, UInt16(count) | isPostingBit)
        setBlock(p, UInt32(offset))
    }

    /// Checks that the posting list of the posting tuple at `p` (IndexTupleSize `size`) lies inside
    /// it; returns (offset of the TID array, number of TIDs).
    static func checkedPosting(_ p: UnsafeRawPointer, _ what: String) throws -> (offset: Int, count: Int) {
        guard isPosting(p) else { throw RedoError.corruptPage("\(what): tuple is not a posting list") }
        let off = postingOffset(p), n = nPosting(p)
        guard off >= headerSize, n >= 1, off + n * tidSize <= size(p) else {
            throw RedoError.corruptPage("\(what): posting list of \(n) TIDs at \(off) overruns its \(size(p))-byte tuple")
        }
        return (off, n)
    }

    /// The tuple at the start of `data`, checked to be at least a header and to fit in `data`.
    static func checkedSize(in data: UnsafeRawBufferPointer, at position: Int, _ what: String) throws -> Int {
        guard data.count - position >= headerSize else {
            throw RedoError.malformed(what, "no index tuple header at offset \(position) of \(data.count)")
        }
        let n = size(data.baseAddress! + position)
        guard n >= headerSize, n <= data.count - position else {
            throw RedoError.malformed(what, "index tuple of \(n) bytes at offset \(position) of \(data.count)")
        }
        return n
    }
}

enum BtreeTupleOps {
    /// BTMaxItemSize for 8 KiB pages: the dedup pass's posting list size limit in redo.
    static let maxItemSize = ((Page.size - Page.maxAlign(Page.headerSize + 3 * Page.itemIdSize + 3 * IndexTuple.tidSize)
        - Page.maxAlign(BtreeOpaque.size)) / 3) & ~7

    /// _bt_restore_page: `page` is freshly initialised and `data` is what was its tuple area
    /// (pd_upper to pd_special), tuples in descending item number order. Re-adds them so both the
    /// line pointers and the physical placement come out as on the primary.
    static func restorePage(_ page: Page, from data: UnsafeRawBufferPointer, _ what: String) throws {
        try withUnsafeTemporaryAllocation(of: Int32.self, capacity: Page.maxIndexTuplesPerPage) { starts in
            var n = 0, pos = 0
            while pos < data.count {
                let size = Page.maxAlign(try IndexTuple.checkedSize(in: data, at: pos, what))
                guard size <= data.count - pos else {
                    throw RedoError.malformed(what, "aligned index tuple of \(size) bytes at offset \(pos) of \(data.count)")
                }
                guard n < Page.maxIndexTuplesPerPage else {
                    throw RedoError.malformed(what, "more than \(Page.maxIndexTuplesPerPage) tuples")
                }
                starts[n] = Int32(pos)
                n += 1
                pos += size
            }
            var i = n - 1
            while i >= 0 {
                let start = Int(starts[i])
                let end = i + 1 < n ? Int(starts[i + 1]) : data.count
                try page.addItem(UnsafeRawBufferPointer(rebasing: data[start..<end]), at: n - i)
                i -= 1
            }
        }
    }

    /// _bt_swap_posting, in place: `posting` is the existing posting list tuple, `newItem` a mutable
    /// copy of the incoming plain tuple. The new item's TID goes into the posting list at
    /// `postingOff` (shifting the rest right and dropping the largest), and the new item takes the
    /// dropped largest TID. The posting tuple keeps its size.
    static func swapPosting(newItem: UnsafeMutableRawPointer, posting: UnsafeMutableRawPointer, postingOff: Int,
                            _ what: String) throws {
        let (off, n) = try IndexTuple.checkedPosting(posting, what)
        guard postingOff > 0, postingOff < n else {
            throw RedoError.corruptPage("\(what): posting list tuple with \(n) items cannot be split at offset \(postingOff)")
        }
        guard !IndexTuple.isPosting(newItem), !IndexTuple.isPivot(newItem) else {
            throw RedoError.malformed(what, "the new item of a posting list split is not a plain tuple")
        }
        let tids = posting + off
        withUnsafeTemporaryAllocation(byteCount: IndexTuple.tidSize, alignment: 2) { maxTid in
            let m = maxTid.baseAddress!
            m.copyMemory(from: tids + (n - 1) * IndexTuple.tidSize, byteCount: IndexTuple.tidSize)
            memmoveBytes(tids + (postingOff + 1) * IndexTuple.tidSize, tids + postingOff * IndexTuple.tidSize,
                         (n - postingOff - 1) * IndexTuple.tidSize)
            (tids + postingOff * IndexTuple.tidSize).copyMemory(from: newItem, byteCount: IndexTuple.tidSize)
            newItem.copyMemory(from: m, byteCount: IndexTuple.tidSize)
        }
    }

    /// _bt_update_posting: writes into `out` the posting tuple `orig` less the TIDs at the
    /// (ascending) posting list positions in `deleted` (raw little-endian u16s). Returns the new
    /// tuple's size (already MAXALIGNed). `out` must hold at least IndexTupleSize(orig) bytes.
    static func updatePosting(_ orig: UnsafeRawPointer, deleting deleted: UnsafeRawBufferPointer, count nDeleted: Int,
                              into out: UnsafeMutableRawPointer, _ what: String) throws -> Int {
        let (keySize, n) = try IndexTuple.checkedPosting(orig, what)
        let remaining = n - nDeleted
        guard remaining > 0, remaining < n else {
            throw RedoError.malformed(what, "deleting \(nDeleted) of \(n) TIDs of a posting list")
        }
        let newSize = remaining > 1 ? Page.maxAlign(keySize + remaining * IndexTuple.tidSize) : keySize
        guard newSize <= Int(IndexTuple.sizeMask) else {
            throw RedoError.corruptPage("\(what): updated posting list tuple of \(newSize) bytes")
        }
        out.initializeMemory(as: UInt8.self, repeating: 0, count: newSize)
        out.copyMemory(from: orig, byteCount: keySize)
        IndexTuple.setInfo(out, (IndexTuple.info(out) & ~IndexTuple.sizeMask) | UInt16(newSize))
        let dest: UnsafeMutableRawPointer
        if remaining > 1 {
            IndexTuple.setPosting(out, count: remaining, at: keySize)
            dest = out + keySize
        } else {
            IndexTuple.setInfo(out, IndexTuple.info(out) & ~IndexTuple.altTid)
            dest = out
        }
        let src = orig + keySize
        var kept = 0, d = 0
        for i in 0..<n {
            if d < nDeleted && Int(deleted.u16le(2 * d)) == i {
                d += 1
                continue
            }
            guard kept < remaining else { break }
            (dest + kept * IndexTuple.tidSize).copyMemory(from: src + i * IndexTuple.tidSize, byteCount: IndexTuple.tidSize)
            kept += 1
        }
        guard kept == remaining, d == nDeleted else {
            throw RedoError.malformed(what, "posting list TIDs to delete are not ascending positions below \(n)")
        }
        return newSize
    }
}

/// The deduplication pass as btree_xlog_dedup repeats it (nbtdedup.c: _bt_dedup_start_pending,
/// _bt_dedup_save_htid, _bt_dedup_finish_pending, _bt_form_posting), guided by the intervals the
/// primary logged. Works in caller scratch: `htids` (maxItemSize bytes) and `posting` (8 KiB).
struct BtreeDedupState {
    let htids: UnsafeMutableRawPointer
    let htidCapacity: Int
    let posting: UnsafeMutableRawPointer
    let maxPostingSize: Int
    let what: String

    var base: UnsafeRawPointer? = nil
    var baseOff = 0
    var baseTupleSize = 0
    var nhtids = 0
    var nitems = 0
    var nintervals = 0

    init(htids: UnsafeMutableRawBufferPointer, posting: UnsafeMutableRawPointer, maxPostingSize: Int, _ what: String) {
        self.htids = htids.baseAddress!
        self.htidCapacity = htids.count / IndexTuple.tidSize
        self.posting = posting
        self.maxPostingSize = maxPostingSize
        self.what = what
    }

    /// The TIDs of a non-pivot tuple: its posting list, or its own t_tid.
    private func tids(_ t: UnsafeRawPointer) throws -> (UnsafeRawPointer, Int) {
        if IndexTuple.isPosting(t) {
            let (off, n) = try IndexTuple.checkedPosting(t, what)
            return (t + off, n)
        }
        return (t, 1)
    }

    /// _bt_dedup_start_pending.
    mutating func start(_ tuple: UnsafeRawPointer, at offnum: Int) throws {
        guard !IndexTuple.isPivot(tuple) else { throw RedoError.corruptPage("\(what): pivot tuple on a leaf page") }
        let (p, n) = try tids(tuple)
        guard n <= htidCapacity else { throw RedoError.corruptPage("\(what): posting list of \(n) TIDs is too large") }
        htids.copyMemory(from: p, byteCount: n * IndexTuple.tidSize)
        nhtids = n
        baseTupleSize = IndexTuple.isPosting(tuple) ? IndexTuple.postingOffset(tuple) : IndexTuple.size(tuple)
        nitems = 1
        base = tuple
        baseOff = offnum
    }

    /// _bt_dedup_save_htid; false when the merged tuple would exceed the size limit.
    mutating func save(_ tuple: UnsafeRawPointer) throws -> Bool {
        guard !IndexTuple.isPivot(tuple) else { throw RedoError.corruptPage("\(what): pivot tuple on a leaf page") }
        let (p, n) = try tids(tuple)
        let merged = Page.maxAlign(baseTupleSize + (nhtids + n) * IndexTuple.tidSize)
        if merged > maxPostingSize || nhtids + n > htidCapacity { return false }
        (htids + nhtids * IndexTuple.tidSize).copyMemory(from: p, byteCount: n * IndexTuple.tidSize)
        nhtids += n
        nitems += 1
        return true
    }

    /// _bt_dedup_finish_pending: appends the pending tuple to `newPage`, as a new posting list when
    /// items were merged. A merged group must be the next interval of `intervals` (the record's).
    mutating func finish(into newPage: Page, intervals: UnsafeRawBufferPointer, count nIntervals: Int) throws {
        guard let base, nitems > 0 else { throw RedoError.corruptPage("\(what): no pending tuple") }
        let at = newPage.maxOffset + 1
        if nitems == 1 {
            try newPage.addItem(UnsafeRawBufferPointer(start: base, count: IndexTuple.size(base)), at: at)
        } else {
            guard nintervals < nIntervals,
                  Int(intervals.u16le(4 * nintervals)) == baseOff,
                  Int(intervals.u16le(4 * nintervals + 2)) == nitems else {
                throw RedoError.corruptPage("\(what): deduplication diverged from the logged intervals at offset \(baseOff)")
            }
            let size = formPosting()
            try newPage.addItem(UnsafeRawBufferPointer(start: posting, count: size), at: at)
            nintervals += 1
        }
        nhtids = 0
        nitems = 0
    }

    /// _bt_form_posting from the pending base tuple and TIDs (nhtids > 1) into `posting`; returns
    /// its size.
    private func formPosting() -> Int {
        let base = self.base!
        let keySize = baseTupleSize
        let newSize = nhtids > 1 ? Page.maxAlign(keySize + nhtids * IndexTuple.tidSize) : keySize
        posting.initializeMemory(as: UInt8.self, repeating: 0, count: newSize)
        posting.copyMemory(from: base, byteCount: keySize)
        IndexTuple.setInfo(posting, (IndexTuple.info(posting) & ~IndexTuple.sizeMask) | UInt16(newSize))
        if nhtids > 1 {
            IndexTuple.setPosting(posting, count: nhtids, at: keySize)
            (posting + keySize).copyMemory(from: htids, byteCount: nhtids * IndexTuple.tidSize)
        } else {
            IndexTuple.setInfo(posting, IndexTuple.info(posting) & ~IndexTuple.altTid)
            posting.copyMemory(from: htids, byteCount: IndexTuple.tidSize)
        }
        return newSize
    }
}
