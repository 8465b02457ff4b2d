import PostgresWAL

// Design note: a sequence lives in block 0 of its relation as one heap tuple on a page whose
// special space holds the magic number 0x1717. Every XLOG_SEQ_LOG record (CREATE SEQUENCE,
// nextval, setval, ALTER SEQUENCE) rebuilds that page from scratch: initialise it with 4 bytes of
// special space (MAXALIGNed to 8), store the magic, add the logged tuple as item 1, stamp the LSN.
// The main data is the relation's RelFileNode (12 bytes) followed by the tuple bytes. The page is
// built in place (the caller's buffer is private, so there is no reader to protect from a
// transiently empty page).

/// Redo and masking of the Sequence resource manager (sequence.c).
enum SequenceRedo {
    /// XLOG_SEQ_LOG, the only record type.
    static let seqLog: UInt8 = 0x00
    /// SEQ_MAGIC, stored in the page's special space.
    static let magic: UInt32 = 0x1717
    /// sizeof(xl_seq_rec): a RelFileNode.
    static let headerSize = 12

    static func redo(_ step: RedoStep) throws {
        guard step.opcode == seqLog else {
            throw step.unsupported(RecordTypeNames.name(.sequence, info: step.info))
        }
        guard step.blockId == 0 else {
            throw RedoError(.malformedRecord, "Sequence LOG record references block #\(step.blockId); only #0 is replayed")
        }
        let data = step.mainData
        guard data.count >= headerSize else {
            throw RedoError(.malformedRecord, "Sequence LOG record has \(data.count) bytes of main data, less than its \(headerSize)-byte header")
        }
        let tuple = UnsafeRawBufferPointer(rebasing: data[headerSize...])
        let page = step.page
        page.initialize(specialSize: 4)
        page.setU32(page.special, magic)
        try page.addItem(tuple, at: 1)
        page.lsn = step.lsn
    }

    /// seq_mask.
    static func mask(_ page: Page, blockNumber: UInt32) {
        PageMasking.maskLSNAndChecksum(page)
        PageMasking.maskUnusedSpace(page)
    }
}
