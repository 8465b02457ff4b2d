import PostgresWAL

/// Redo of the Btree resource manager (nbtxlog.c). STUB.
enum BtreeRedo {
    static func redo(_ step: RedoStep) throws { throw step.unsupported("btree (not yet implemented)") }
    /// btree_mask.
    static func mask(_ page: Page, blockNumber: UInt32) {
        PageMasking.maskLSNAndChecksum(page)
        PageMasking.maskUnusedSpace(page)
    }
}
