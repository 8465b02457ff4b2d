/// A heap tuple header (HeapTupleHeaderData, htup_details.h) seen in place, in a page or in a
/// scratch buffer. It does not own its bytes and checks nothing: callers make sure at least
/// `HeapTuple.headerSize` bytes are addressable at `base`.
///
/// Layout (little-endian, 23 bytes before the null bitmap):
///
///     t_xmin       u32   offset 0
///     t_xmax       u32   offset 4
///     t_cid/t_xvac u32   offset 8
///     t_ctid       u16 block hi, u16 block lo, u16 offset   offset 12
///     t_infomask2  u16   offset 18
///     t_infomask   u16   offset 20
///     t_hoff       u8    offset 22
struct HeapTuple {
    /// SizeofHeapTupleHeader.
    static let headerSize = 23
    /// MaxHeapTupleSize for 8 KiB pages.
    static let maxSize = Page.size - Page.maxAlign(Page.headerSize + Page.itemIdSize)

    // t_infomask bits.
    static let xmaxKeyShareLock: UInt16 = 0x0010
    static let comboCid: UInt16 = 0x0020
    static let xmaxExclusiveLock: UInt16 = 0x0040
    static let xmaxLockOnly: UInt16 = 0x0080
    static let xminCommitted: UInt16 = 0x0100
    static let xminInvalid: UInt16 = 0x0200
    static let xminFrozen: UInt16 = 0x0300
    static let xmaxCommitted: UInt16 = 0x0400
    static let xmaxInvalid: UInt16 = 0x0800
    static let xmaxIsMulti: UInt16 = 0x1000
    static let moved: UInt16 = 0xC000
    /// HEAP_LOCK_MASK.
    static let lockMask: UInt16 = xmaxExclusiveLock | xmaxKeyShareLock
    /// HEAP_XMAX_BITS: everything that describes xmax, cleared when xmax changes.
    static let xmaxBits: UInt16 = xmaxCommitted | xmaxInvalid | xmaxIsMulti | lockMask | xmaxLockOnly
    /// HEAP_XACT_MASK.
    static let xactMask: UInt16 = 0xFFF0

    // t_infomask2 bits.
    static let keysUpdated: UInt16 = 0x2000
    static let hotUpdated: UInt16 = 0x4000

    /// SpecTokenOffsetNumber: t_ctid holds a speculative insertion token.
    static let specTokenOffset: UInt16 = 0xFFFE
    /// MovedPartitionsOffsetNumber / MovedPartitionsBlockNumber.
    static let movedPartitionsOffset: UInt16 = 0xFFFD
    static let movedPartitionsBlock: UInt32 = 0xFFFF_FFFF
    /// FrozenTransactionId.
    static let frozenXid: UInt32 = 2

    let base: UnsafeMutableRawPointer

    init(_ base: UnsafeMutableRawPointer) { self.base = base }

    @inline(__always) private func u16(_ o: Int) -> UInt16 { UInt16(littleEndian: base.loadUnaligned(fromByteOffset: o, as: UInt16.self)) }
    @inline(__always) private func u32(_ o: Int) -> UInt32 { UInt32(littleEndian: base.loadUnaligned(fromByteOffset: o, as: UInt32.self)) }
    @inline(__always) private func set16(_ o: Int, _ v: UInt16) { base.storeBytes(of: v.littleEndian, toByteOffset: o, as: UInt16.self) }
    @inline(__always) private func set32(_ o: Int, _ v: UInt32) { base.storeBytes(of: v.littleEndian, toByteOffset: o, as: UInt32.self) }

    var xmin: UInt32 { get { u32(0) } nonmutating set { set32(0, newValue) } }
    var xmax: UInt32 { get { u32(4) } nonmutating set { set32(4, newValue) } }
    /// t_field3: t_cid, or t_xvac for tuples moved by pre-9.0 VACUUM FULL.
    var field3: UInt32 { get { u32(8) } nonmutating set { set32(8, newValue) } }
    var infomask2: UInt16 { get { u16(18) } nonmutating set { set16(18, newValue) } }
    var infomask: UInt16 { get { u16(20) } nonmutating set { set16(20, newValue) } }
    var hoff: Int { get { Int(base.load(fromByteOffset: 22, as: UInt8.self)) } nonmutating set { base.storeBytes(of: UInt8(truncatingIfNeeded: newValue), toByteOffset: 22, as: UInt8.self) } }
    var ctidOffsetNumber: UInt16 { u16(16) }

    /// ItemPointerSet(&t_ctid, block, offset).
    func setCtid(block: UInt32, offset: UInt16) {
        set16(12, UInt16(truncatingIfNeeded: block >> 16))
        set16(14, UInt16(truncatingIfNeeded: block))
        set16(16, offset)
    }

    /// HeapTupleHeaderSetCmin / SetCmax(cid, iscombo: false): the command id, not a combo id.
    func setCommandId(_ cid: UInt32) {
        field3 = cid
        infomask &= ~HeapTuple.comboCid
    }

    var isXminFrozen: Bool { infomask & HeapTuple.xminFrozen == HeapTuple.xminFrozen }
    var isSpeculative: Bool { ctidOffsetNumber == HeapTuple.specTokenOffset }

    /// The first step of every xmax change in redo: forget the old xmax's description.
    func clearXmaxDescription() {
        infomask &= ~(HeapTuple.xmaxBits | HeapTuple.moved)
        infomask2 &= ~HeapTuple.keysUpdated
    }

    /// fix_infomask_from_infobits: the XLHL_* bits of a record turned into infomask bits.
    func applyInfobits(_ infobits: UInt8) {
        var m = infomask & ~(HeapTuple.xmaxIsMulti | HeapTuple.xmaxLockOnly | HeapTuple.xmaxKeyShareLock | HeapTuple.xmaxExclusiveLock)
        var m2 = infomask2 & ~HeapTuple.keysUpdated
        if infobits & 0x01 != 0 { m |= HeapTuple.xmaxIsMulti }
        if infobits & 0x02 != 0 { m |= HeapTuple.xmaxLockOnly }
        if infobits & 0x04 != 0 { m |= HeapTuple.xmaxExclusiveLock }
        if infobits & 0x08 != 0 { m |= HeapTuple.xmaxKeyShareLock }
        if infobits & 0x10 != 0 { m2 |= HeapTuple.keysUpdated }
        infomask = m
        infomask2 = m2
    }

    /// HEAP_XMAX_IS_LOCKED_ONLY(infomask).
    var xmaxIsLockedOnly: Bool {
        let m = infomask
        return m & HeapTuple.xmaxLockOnly != 0 || m & (HeapTuple.xmaxIsMulti | HeapTuple.lockMask) == HeapTuple.xmaxExclusiveLock
    }
}

/// TransactionIdPrecedes: circular comparison for normal xids, plain comparison otherwise.
@inline(__always) func transactionIdPrecedes(_ a: UInt32, _ b: UInt32) -> Bool {
    if a < 3 || b < 3 { return a < b }
    return Int32(bitPattern: a &- b) < 0
}

extension Page {
    /// PageSetPrunable with TransactionIdPrecedes' exact semantics (including non-normal xids).
    func setPrunableHeap(_ xid: UInt32) {
        let current = pruneXid
        if current == 0 || transactionIdPrecedes(xid, current) { pruneXid = xid }
    }

    /// The tuple at `offnum`, which must be an LP_NORMAL item whose storage lies inside the page
    /// and holds at least a tuple header (PostgreSQL PANICs with "invalid lp" otherwise).
    func normalHeapTuple(_ offnum: Int, _ what: String) throws -> (tuple: HeapTuple, length: Int) {
        guard offnum >= 1, offnum <= maxOffset else {
            throw RedoError.corruptPage("\(what): invalid lp: offset \(offnum), page has \(maxOffset)")
        }
        let id = itemId(offnum)
        guard id.isNormal else {
            throw RedoError.corruptPage("\(what): invalid lp: line pointer \(offnum) has flags \(id.flags)")
        }
        guard id.offset >= Page.headerSize, id.length >= HeapTuple.headerSize, id.offset + id.length <= Page.size else {
            throw RedoError.corruptPage("\(what): line pointer \(offnum) (offset \(id.offset), length \(id.length)) does not hold a tuple")
        }
        return (HeapTuple(base + id.offset), id.length)
    }
}
