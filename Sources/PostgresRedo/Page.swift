#if canImport(Glibc)
import Glibc
#endif
import LSM

/// A PostgreSQL 15 page being changed by redo: a view over 8192 bytes that the caller owns.
///
/// Layout (bufpage.h, little-endian):
///
///     pd_lsn       u32 xlogid, u32 xrecoff   offset 0
///     pd_checksum  u16                       offset 8
///     pd_flags     u16                       offset 10   HAS_FREE_LINES 1, PAGE_FULL 2, ALL_VISIBLE 4
///     pd_lower     u16                       offset 12   end of the line pointer array
///     pd_upper     u16                       offset 14   start of tuple space
///     pd_special   u16                       offset 16   start of the access method's special space
///     pd_pagesize_version u16                offset 18   8192 | 4
///     pd_prune_xid u32                       offset 20
///     line pointers from offset 24, 4 bytes each: lp_off 15 bits, lp_flags 2 bits, lp_len 15 bits
///
/// The operations below reproduce bufpage.c byte for byte (tuple placement included), because redo
/// output is compared with the primary's pages. Invariant kept by every mutating operation that
/// validates: 24 <= pd_lower <= pd_upper <= pd_special <= 8192. Operations that PostgreSQL would
/// PANIC or ERROR on throw `RedoError` instead.
public struct Page {
    public static let size = 8192
    public static let headerSize = 24
    public static let itemIdSize = 4
    /// PG_PAGE_LAYOUT_VERSION.
    public static let layoutVersion: UInt16 = 4
    /// MaxHeapTuplesPerPage for 8 KiB pages.
    public static let maxHeapTuplesPerPage = 291
    /// MaxIndexTuplesPerPage for 8 KiB pages.
    public static let maxIndexTuplesPerPage = 407

    public static let flagHasFreeLines: UInt16 = 0x0001
    public static let flagPageFull: UInt16 = 0x0002
    public static let flagAllVisible: UInt16 = 0x0004

    // Line pointer states.
    public static let lpUnused: UInt8 = 0
    public static let lpNormal: UInt8 = 1
    public static let lpRedirect: UInt8 = 2
    public static let lpDead: UInt8 = 3

    public let base: UnsafeMutableRawPointer

    public init(_ base: UnsafeMutableRawPointer) { self.base = base }

    @inline(__always) public static func maxAlign(_ n: Int) -> Int { (n + 7) & ~7 }

    // MARK: Raw little-endian access

    @inline(__always) public func u8(_ offset: Int) -> UInt8 { base.load(fromByteOffset: offset, as: UInt8.self) }
    @inline(__always) public func u16(_ offset: Int) -> UInt16 { UInt16(littleEndian: base.loadUnaligned(fromByteOffset: offset, as: UInt16.self)) }
    @inline(__always) public func u32(_ offset: Int) -> UInt32 { UInt32(littleEndian: base.loadUnaligned(fromByteOffset: offset, as: UInt32.self)) }
    @inline(__always) public func setU8(_ offset: Int, _ v: UInt8) { base.storeBytes(of: v, toByteOffset: offset, as: UInt8.self) }
    @inline(__always) public func setU16(_ offset: Int, _ v: UInt16) { base.storeBytes(of: v.littleEndian, toByteOffset: offset, as: UInt16.self) }
    @inline(__always) public func setU32(_ offset: Int, _ v: UInt32) { base.storeBytes(of: v.littleEndian, toByteOffset: offset, as: UInt32.self) }

    /// Copies `bytes` to `offset`.
    @inline(__always) public func write(_ bytes: UnsafeRawBufferPointer, at offset: Int) {
        guard let src = bytes.baseAddress, bytes.count > 0 else { return }
        (base + offset).copyMemory(from: src, byteCount: bytes.count)
    }

    /// Moves `count` bytes from `from` to `to` (overlap allowed).
    @inline(__always) public func move(from: Int, to: Int, count: Int) {
        guard count > 0, from != to else { return }
        memmoveBytes(base + to, base + from, count)
    }

    public func zero(_ offset: Int, _ count: Int) {
        guard count > 0 else { return }
        (base + offset).initializeMemory(as: UInt8.self, repeating: 0, count: count)
    }

    public func copy(from other: Page) { base.copyMemory(from: other.base, byteCount: Page.size) }
    public func copy(from bytes: UnsafeRawBufferPointer) {
        precondition(bytes.count == Page.size)
        base.copyMemory(from: bytes.baseAddress!, byteCount: Page.size)
    }

    // MARK: Header

    public var lsn: UInt64 {
        get { UInt64(u32(0)) << 32 | UInt64(u32(4)) }
        nonmutating set {
            setU32(0, UInt32(truncatingIfNeeded: newValue >> 32))
            setU32(4, UInt32(truncatingIfNeeded: newValue))
        }
    }
    public var checksum: UInt16 { get { u16(8) } nonmutating set { setU16(8, newValue) } }
    public var flags: UInt16 { get { u16(10) } nonmutating set { setU16(10, newValue) } }
    public var lower: Int { get { Int(u16(12)) } nonmutating set { setU16(12, UInt16(newValue)) } }
    public var upper: Int { get { Int(u16(14)) } nonmutating set { setU16(14, UInt16(newValue)) } }
    public var special: Int { get { Int(u16(16)) } nonmutating set { setU16(16, UInt16(newValue)) } }
    public var pageSizeVersion: UInt16 { get { u16(18) } nonmutating set { setU16(18, newValue) } }
    public var pruneXid: UInt32 { get { u32(20) } nonmutating set { setU32(20, newValue) } }

    /// PageIsNew: pd_upper == 0 (an all-zero page, never initialised).
    public var isNew: Bool { u16(14) == 0 }

    /// PageGetMaxOffsetNumber.
    public var maxOffset: Int { lower <= Page.headerSize ? 0 : (lower - Page.headerSize) / Page.itemIdSize }

    public var isAllVisible: Bool { flags & Page.flagAllVisible != 0 }
    public func setAllVisible() { flags |= Page.flagAllVisible }
    public func clearAllVisible() { flags &= ~Page.flagAllVisible }
    public func setHasFreeLinePointers() { flags |= Page.flagHasFreeLines }
    public func clearHasFreeLinePointers() { flags &= ~Page.flagHasFreeLines }
    public var hasFreeLinePointers: Bool { flags & Page.flagHasFreeLines != 0 }
    public func clearFull() { flags &= ~Page.flagPageFull }
    public func setFull() { flags |= Page.flagPageFull }

    /// PageSetPrunable: remember the oldest xid that may make a tuple prunable.
    public func setPrunable(_ xid: UInt32) {
        let current = pruneXid
        if current == 0 || Int32(bitPattern: xid &- current) < 0 { pruneXid = xid }
    }

    /// PageInit: zero the page and set up an empty one with `specialSize` bytes of special space.
    public func initialize(specialSize: Int) {
        let special = Page.size - Page.maxAlign(specialSize)
        zero(0, Page.size)
        lower = Page.headerSize
        upper = special
        self.special = special
        pageSizeVersion = UInt16(Page.size) | Page.layoutVersion
    }

    // MARK: Line pointers (1-based offsets)

    @inline(__always) func itemIdOffset(_ offnum: Int) -> Int { Page.headerSize + (offnum - 1) * Page.itemIdSize }

    public func itemId(_ offnum: Int) -> ItemId { ItemId(raw: u32(itemIdOffset(offnum))) }
    public func setItemId(_ offnum: Int, _ id: ItemId) { setU32(itemIdOffset(offnum), id.raw) }

    /// Address of the item a line pointer points at.
    public func item(_ offnum: Int) -> UnsafeMutableRawPointer { base + itemId(offnum).offset }

    func checkPointers(_ what: String) throws {
        let l = lower, u = upper, s = special
        guard l >= Page.headerSize, l <= u, u <= s, s <= Page.size, s == Page.maxAlign(s) else {
            throw RedoError.corruptPage("\(what): corrupted page pointers: lower = \(l), upper = \(u), special = \(s)")
        }
    }
}

/// One line pointer (ItemIdData), as its 32-bit word.
public struct ItemId: Equatable, Sendable {
    public var raw: UInt32
    public init(raw: UInt32) { self.raw = raw }
    public init(offset: Int, flags: UInt8, length: Int) {
        raw = UInt32(offset & 0x7FFF) | UInt32(flags & 3) << 15 | UInt32(length & 0x7FFF) << 17
    }
    public var offset: Int { Int(raw & 0x7FFF) }
    public var flags: UInt8 { UInt8((raw >> 15) & 3) }
    public var length: Int { Int(raw >> 17) }
    public var isUsed: Bool { flags != Page.lpUnused }
    public var isNormal: Bool { flags == Page.lpNormal }
    public var isRedirect: Bool { flags == Page.lpRedirect }
    public var isDead: Bool { flags == Page.lpDead }
    public var hasStorage: Bool { length != 0 }
    /// For a redirect: the offset it points to (stored in lp_off).
    public var redirectTarget: Int { offset }

    public static let unused = ItemId(raw: 0)
    public static func normal(offset: Int, length: Int) -> ItemId { ItemId(offset: offset, flags: Page.lpNormal, length: length) }
    public static func redirect(to target: Int) -> ItemId { ItemId(offset: target, flags: Page.lpRedirect, length: 0) }
    public static let dead = ItemId(offset: 0, flags: Page.lpDead, length: 0)
}

@inline(__always) func memmoveBytes(_ dst: UnsafeMutableRawPointer, _ src: UnsafeRawPointer, _ count: Int) {
    // copyMemory requires disjoint ranges; page edits shift overlapping ranges.
    _ = memmove(dst, src, count)
}
