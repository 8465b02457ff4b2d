import PostgresWAL

// Design note: the XLOG resource manager touches pages only through full-page images. XLOG_FPI
// and XLOG_FPI_FOR_HINT carry APPLY images, which the dispatcher restores before an rmgr is asked
// anything, so this file only sees what is left over: an FPI_FOR_HINT block reference without an
// image (written with full_page_writes off; PostgreSQL leaves the page alone) is a no-op, and
// everything else (an FPI whose image is not marked APPLY, or any other XLOG record with a block
// reference) cannot be replayed and is reported.

/// Redo of the XLOG resource manager's block references (xlog_redo's FPI branch).
enum XLogRedo {
    static let fpiForHint: UInt8 = 0xA0
    static let fpi: UInt8 = 0xB0

    static func redo(_ step: RedoStep) throws {
        let block = step.block
        switch step.opcode {
        case fpiForHint where !block.hasImage:
            // Hint-bit record logged without an image: nothing to replay for this page.
            return
        case fpi where !block.hasImage:
            throw RedoError(.malformedRecord, "XLOG FPI record has no full-page image for block reference #\(block.id)")
        case fpi, fpiForHint:
            throw RedoError(.unsupported, "XLOG \(RecordTypeNames.name(.xlog, info: step.info)) image of block reference #\(block.id) is not marked to be applied (bimg_info 0x\(String(block.imageInfo, radix: 16)))")
        default:
            throw RedoError(.unsupported, "XLOG record \(RecordTypeNames.name(.xlog, info: step.info)) references block #\(block.id) without an image to apply; PostgreSQL writes block references only in FPI records")
        }
    }
}
