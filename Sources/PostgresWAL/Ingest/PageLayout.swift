/// PostgreSQL 15's page-level arithmetic that ingest needs: where an xid lives in pg_xact, a
/// multixact in pg_multixact, a heap block in the visibility map and in the free space map.
/// (Facts from clog.c, multixact.c, slru.c, visibilitymap.c, freespace.c, fsm_internals.h; BLCKSZ
/// 8192, MAXALIGN 8.)
public enum PageLayout {
    public static let pageSize = 8192
    /// SLRU_PAGES_PER_SEGMENT.
    public static let slruPagesPerSegment: UInt32 = 32
    /// RELSEG_SIZE: blocks per 1 GiB relation segment file.
    public static let blocksPerRelationSegment: UInt32 = 131_072
    /// An all-zero page.
    public static let zeroPage = [UInt8](repeating: 0, count: pageSize)

    // MARK: CLOG

    /// CLOG_XACTS_PER_PAGE: 2 bits per xid.
    public static let clogXactsPerPage: UInt32 = 32_768

    /// The pg_xact page (counted from the first segment) that holds `xid`'s status.
    public static func clogPage(of xid: UInt32) -> UInt32 { xid / clogXactsPerPage }

    /// CLOGPagePrecedes: whether every xid of `page1` is older than those of `page2`, in the circular
    /// xid space.
    public static func clogPagePrecedes(_ page1: UInt32, _ page2: UInt32) -> Bool {
        let x1 = page1 &* clogXactsPerPage &+ 4
        let x2 = page2 &* clogXactsPerPage &+ 4
        return xidPrecedes(x1, x2) && xidPrecedes(x1, x2 &+ clogXactsPerPage &- 1)
    }

    /// TransactionIdPrecedes for normal xids (and MultiXactIdPrecedes / MultiXactOffsetPrecedes):
    /// modulo-2^32 comparison.
    public static func xidPrecedes(_ a: UInt32, _ b: UInt32) -> Bool { Int32(bitPattern: a &- b) < 0 }

    /// SlruMayDeleteSegment: a segment may go when its first and last pages both precede the cutoff.
    static func slruMayDeleteSegment(_ segment: UInt32, cutoffPage: UInt32, precedes: (UInt32, UInt32) -> Bool) -> Bool {
        let first = segment &* slruPagesPerSegment
        return precedes(first, cutoffPage) && precedes(first &+ slruPagesPerSegment &- 1, cutoffPage)
    }

    // MARK: MultiXact

    /// MULTIXACT_OFFSETS_PER_PAGE.
    public static let multixactOffsetsPerPage: UInt32 = 2048
    /// Members are stored in groups of 4: four flag bytes, then four xids (20 bytes).
    public static let multixactMembersPerGroup: UInt32 = 4
    public static let multixactMemberGroupSize: UInt32 = 20
    /// MULTIXACT_MEMBERGROUPS_PER_PAGE: 409 (12 bytes of each page are unused).
    public static let multixactGroupsPerPage: UInt32 = 409
    /// MULTIXACT_MEMBERS_PER_PAGE: 1636.
    public static let multixactMembersPerPage: UInt32 = 1636

    public static func multixactOffsetPage(of multi: UInt32) -> UInt32 { multi / multixactOffsetsPerPage }
    public static func multixactMemberPage(of offset: UInt32) -> UInt32 { offset / multixactMembersPerPage }

    /// Byte offset, within its members page, of the flag word of member `offset`
    /// (MXOffsetToFlagsOffset); the member's status byte is at this plus offset % 4.
    public static func multixactFlagsOffset(of offset: UInt32) -> Int {
        Int((offset / multixactMembersPerGroup) % multixactGroupsPerPage * multixactMemberGroupSize)
    }

    /// Byte offset of member `offset`'s xid within its page (MXOffsetToMemberOffset).
    public static func multixactMemberOffset(of offset: UInt32) -> Int {
        multixactFlagsOffset(of: offset) + 4 + Int(offset % multixactMembersPerGroup) * 4
    }

    /// MultiXactOffsetPagePrecedes.
    public static func multixactOffsetPagePrecedes(_ page1: UInt32, _ page2: UInt32) -> Bool {
        let m1 = page1 &* multixactOffsetsPerPage &+ 2
        let m2 = page2 &* multixactOffsetsPerPage &+ 2
        return xidPrecedes(m1, m2) && xidPrecedes(m1, m2 &+ multixactOffsetsPerPage &- 1)
    }

    /// The last members segment: MXOffsetToMemberSegment(0xFFFFFFFF).
    public static let lastMultixactMemberSegment: UInt32 = UInt32.max / multixactMembersPerPage / slruPagesPerSegment

    // MARK: Visibility map

    /// HEAPBLOCKS_PER_PAGE: (8192 - MAXALIGN(24)) * 4 heap blocks per VM page.
    public static let heapBlocksPerVMPage: UInt32 = 32_672
    /// VISIBILITYMAP_ALL_VISIBLE.
    public static let vmAllVisible: UInt8 = 0x01
    /// VISIBILITYMAP_ALL_FROZEN.
    public static let vmAllFrozen: UInt8 = 0x02

    public static func vmBlock(ofHeapBlock block: UInt32) -> UInt32 { block / heapBlocksPerVMPage }

    /// visibilitymap_prepare_truncate: the VM fork's new size when the heap is cut to `heapBlocks`
    /// blocks, or nil when the fork stays as it is. Also whether the last remaining VM page keeps bits
    /// of removed heap blocks that must be cleared (`partialPage`).
    public static func vmTruncation(heapBlocks: UInt32, vmBlocks: UInt32) -> (newBlocks: UInt32?, partialPage: UInt32?) {
        let truncBlock = heapBlocks / heapBlocksPerVMPage
        if heapBlocks % heapBlocksPerVMPage != 0 {
            // The tail of page truncBlock is cleared, if that page exists.
            guard truncBlock < vmBlocks else { return (nil, nil) }
            let newBlocks = truncBlock + 1
            return (vmBlocks <= newBlocks ? nil : newBlocks, truncBlock)
        }
        return (vmBlocks <= truncBlock ? nil : truncBlock, nil)
    }

    // MARK: Free space map

    /// SlotsPerFSMPage: leaf nodes per FSM page (NodesPerPage - NonLeafNodesPerPage = 8164 - 4095).
    public static let fsmSlotsPerPage: UInt32 = 4069
    /// FSM_TREE_DEPTH for 8 KiB pages.
    public static let fsmTreeDepth = 3

    /// fsm_logical_to_physical for a bottom-level (leaf) FSM page: its block number in the FSM fork.
    public static func fsmLeafPhysicalBlock(logicalPage: UInt32) -> UInt32 {
        var leaf = UInt64(logicalPage)
        var pages: UInt64 = 0
        for _ in 0..<fsmTreeDepth {
            pages += leaf + 1
            leaf /= UInt64(fsmSlotsPerPage)
        }
        return UInt32(truncatingIfNeeded: pages - 1)
    }

    /// FreeSpaceMapPrepareTruncateRel: the FSM fork's new size when the heap is cut to `heapBlocks`
    /// blocks, or nil when it stays; and the FSM page whose tail (leaf slots of removed heap blocks)
    /// is zeroed, if any.
    public static func fsmTruncation(heapBlocks: UInt32, fsmBlocks: UInt32) -> (newBlocks: UInt32?, partialPage: UInt32?) {
        let slot = heapBlocks % fsmSlotsPerPage
        let physical = fsmLeafPhysicalBlock(logicalPage: heapBlocks / fsmSlotsPerPage)
        if slot > 0 {
            // fsm_readbuf without extension: nothing happens when that page does not exist.
            guard physical < fsmBlocks else { return (nil, nil) }
            let newBlocks = physical + 1
            return (newBlocks < fsmBlocks ? newBlocks : nil, physical)
        }
        return (fsmBlocks <= physical ? nil : physical, nil)
    }

    // MARK: Pages

    /// Sets pd_lsn (the first 8 bytes: xlogid u32 then xrecoff u32, little-endian) unless the page is
    /// new (pd_upper == 0), as redo does after restoring a full-page image.
    static func stampPageLSN(_ page: inout [UInt8], _ lsn: UInt64) {
        guard page.count >= 24, page[14] != 0 || page[15] != 0 else { return }
        let hi = UInt32(truncatingIfNeeded: lsn >> 32), lo = UInt32(truncatingIfNeeded: lsn)
        for i in 0..<4 {
            page[i] = UInt8(truncatingIfNeeded: hi >> (8 * UInt32(i)))
            page[4 + i] = UInt8(truncatingIfNeeded: lo >> (8 * UInt32(i)))
        }
    }
}
