import LSM
import PostgresWAL

/// XLOG resource manager: only full-page images touch pages. STUB.
enum XLogRedo {
    static func redo(_ step: RedoStep) throws { throw step.unsupported("xlog (not yet implemented)") }
}

/// Sequence resource manager (sequence.c seq_redo). STUB.
enum SequenceRedo {
    static func redo(_ step: RedoStep) throws { throw step.unsupported("sequence (not yet implemented)") }
    static func mask(_ page: Page, blockNumber: UInt32) {
        PageMasking.maskLSNAndChecksum(page)
        PageMasking.maskUnusedSpace(page)
    }
}

/// Generic WAL resource manager (generic_xlog.c). STUB.
enum GenericRedo {
    static func redo(_ step: RedoStep) throws { throw step.unsupported("generic (not yet implemented)") }
    static func mask(_ page: Page, blockNumber: UInt32) {
        PageMasking.maskLSNAndChecksum(page)
        PageMasking.maskHintBits(page)
        PageMasking.maskUnusedSpace(page)
    }
}

/// The page server's engine records (see `EngineRecord`). STUB.
enum EngineRecordRedo {
    static func apply(_ bytes: UnsafeRawBufferPointer, to page: Page, key: Key) throws {
        throw RedoError(.unsupported, "engine records not yet implemented")
    }
}

/// pg_checksum_page (checksum_impl.h). STUB.
public enum PageChecksum {
    public static func compute(_ page: Page, blockNumber: UInt32) -> UInt16 { 0 }
}

/// Names of record types for error messages, as pg_waldump prints them. STUB.
enum RecordTypeNames {
    static func name(_ rmid: ResourceManagerId, info: UInt8) -> String { "0x" + String(info & 0xF0, radix: 16) }
}
