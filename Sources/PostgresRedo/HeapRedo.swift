import PostgresWAL

/// Redo of the Heap and Heap2 resource managers (heapam.c's heap_redo / heap2_redo). STUB.
enum HeapRedo {
    static func redoHeap(_ step: RedoStep) throws { throw step.unsupported("heap (not yet implemented)") }
    static func redoHeap2(_ step: RedoStep) throws { throw step.unsupported("heap2 (not yet implemented)") }
    /// heap_mask.
    static func mask(_ page: Page, blockNumber: UInt32) {
        PageMasking.maskLSNAndChecksum(page)
        PageMasking.maskHintBits(page)
        PageMasking.maskUnusedSpace(page)
    }
}
