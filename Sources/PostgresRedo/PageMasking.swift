import PostgresWAL

/// PostgreSQL's masking rules (bufmask.c and each resource manager's rm_mask): the parts of a page
/// that may legitimately differ between a primary and a correct replay (hint bits, LSN, checksum,
/// unused space, ...) are overwritten with a marker (0) before two pages are compared.
public enum PageMasking {
    /// MASK_MARKER.
    public static let marker: UInt8 = 0

    /// Masks `page` with the rules of the resource manager that wrote the record being checked.
    /// Returns false when that manager has no masking (PostgreSQL does not check its pages).
    @discardableResult
    public static func mask(_ page: Page, resourceManager rmid: ResourceManagerId, blockNumber: UInt32) -> Bool {
        switch rmid {
        case .heap, .heap2: HeapRedo.mask(page, blockNumber: blockNumber)
        case .btree: BtreeRedo.mask(page, blockNumber: blockNumber)
        case .sequence: SequenceRedo.mask(page, blockNumber: blockNumber)
        case .generic: GenericRedo.mask(page, blockNumber: blockNumber)
        default: return false
        }
        return true
    }

    /// mask_page_lsn_and_checksum.
    public static func maskLSNAndChecksum(_ page: Page) {
        page.lsn = 0
        page.checksum = 0
    }

    /// mask_page_hint_bits: pd_prune_xid and the PD_PAGE_FULL, PD_HAS_FREE_LINES, PD_ALL_VISIBLE flags.
    public static func maskHintBits(_ page: Page) {
        page.pruneXid = 0
        page.flags &= ~(Page.flagPageFull | Page.flagHasFreeLines | Page.flagAllVisible)
    }

    /// mask_unused_space: the bytes between pd_lower and pd_upper. Leaves a page with invalid
    /// pointers alone (PostgreSQL would ERROR; the comparison will then report it).
    public static func maskUnusedSpace(_ page: Page) {
        let l = page.lower, u = page.upper, s = page.special
        guard l <= u, u <= s, l >= Page.headerSize, s <= Page.size else { return }
        page.zero(l, u - l)
    }

    /// mask_lp_flags: every used line pointer's flags become LP_UNUSED.
    public static func maskLinePointerFlags(_ page: Page) {
        let n = page.maxOffset
        guard n > 0 else { return }
        for off in 1...n {
            let id = page.itemId(off)
            if id.isUsed { page.setItemId(off, ItemId(offset: id.offset, flags: Page.lpUnused, length: id.length)) }
        }
    }

    /// mask_page_content: everything after the header, and pd_lower and pd_upper.
    public static func maskContent(_ page: Page) {
        page.zero(Page.headerSize, Page.size - Page.headerSize)
        page.setU16(12, 0)
        page.setU16(14, 0)
    }

    /// The first offset at which two 8 KiB pages differ, or nil when they are equal.
    public static func firstDifference(_ a: UnsafeRawBufferPointer, _ b: UnsafeRawBufferPointer) -> Int? {
        let n = min(a.count, b.count)
        for i in 0..<n where a[i] != b[i] { return i }
        return a.count == b.count ? nil : n
    }
}
