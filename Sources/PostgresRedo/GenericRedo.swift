import PostgresWAL

// Design note: generic WAL (used by extensions such as bloom) logs each changed page either as a
// full image (restored by the dispatcher) or as a delta in the block data: a run of fragments, each
// (offset u16, length u16, then `length` bytes to copy to `offset`), all native little-endian, with
// no padding. Replay copies the fragments in order, then zeroes the hole between pd_lower and
// pd_upper (the delta says nothing about it, and GenericXLogFinish left it zeroed) and stamps the
// LSN. Each fragment is bounds-checked against the block data and the page; the hole is checked to
// be a valid range before it is zeroed.

/// Redo and masking of the Generic resource manager (generic_xlog.c).
enum GenericRedo {
    /// Bytes of a fragment header: offset and length, two OffsetNumbers.
    static let fragmentHeaderSize = 4

    static func redo(_ step: RedoStep) throws {
        try applyDelta(step.blockData, to: step.page)
        step.page.lsn = step.lsn
    }

    /// Applies one block's delta to `page` and zeroes the space between pd_lower and pd_upper.
    static func applyDelta(_ delta: UnsafeRawBufferPointer, to page: Page) throws {
        var pos = 0
        let end = delta.count
        while pos < end {
            guard end - pos >= fragmentHeaderSize else {
                throw RedoError(.malformedRecord, "Generic delta: fragment header at byte \(pos) runs past the \(end) bytes of block data")
            }
            let offset = Int(delta.u16le(pos))
            let length = Int(delta.u16le(pos + 2))
            pos += fragmentHeaderSize
            guard length <= end - pos else {
                throw RedoError(.malformedRecord, "Generic delta: fragment of \(length) bytes at byte \(pos) runs past the \(end) bytes of block data")
            }
            guard offset + length <= Page.size else {
                throw RedoError(.malformedRecord, "Generic delta: fragment [\(offset), \(offset + length)) lies outside the page")
            }
            page.write(UnsafeRawBufferPointer(rebasing: delta[pos..<pos + length]), at: offset)
            pos += length
        }
        let lower = page.lower, upper = page.upper
        guard lower <= upper, upper <= Page.size else {
            throw RedoError.corruptPage("Generic redo: page has pd_lower \(lower) above pd_upper \(upper)")
        }
        page.zero(lower, upper - lower)
    }

    /// generic_mask.
    static func mask(_ page: Page, blockNumber: UInt32) {
        PageMasking.maskLSNAndChecksum(page)
        PageMasking.maskUnusedSpace(page)
    }
}
