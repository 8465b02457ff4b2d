import PostgresWAL

// Design note: record type names as pg_waldump prints them, from each PostgreSQL 15 resource
// manager's rm_identify (src/backend/access/rmgrdesc). Most managers switch on the info byte less
// its four low XLR flag bits, so a flag such as heap's INIT_PAGE (0x80) is part of the name
// ("INSERT+INIT") where the manager names it and makes the type unknown where it does not;
// Transaction looks only at its op bits (0x70); CommitTs and ReplicationOrigin compare the whole
// byte; Generic has a single name. What a manager does not name comes out as "UNKNOWN (0x..)" with
// the rmgr bits. The names are string literals, so a lookup allocates nothing.

/// pg_waldump's record type names.
public enum RecordTypeNames {
    public static func name(_ rmid: ResourceManagerId, info: UInt8) -> String {
        identify(rmid, info: info) ?? "UNKNOWN (0x\(String(info & 0xF0, radix: 16)))"
    }

    /// The manager's rm_identify, or nil where it has no name for `info`.
    public static func identify(_ rmid: ResourceManagerId, info: UInt8) -> String? {
        let op = info & 0xF0
        switch rmid {
        case .xlog:
            switch op {
            case 0x00: return "CHECKPOINT_SHUTDOWN"
            case 0x10: return "CHECKPOINT_ONLINE"
            case 0x20: return "NOOP"
            case 0x30: return "NEXTOID"
            case 0x40: return "SWITCH"
            case 0x50: return "BACKUP_END"
            case 0x60: return "PARAMETER_CHANGE"
            case 0x70: return "RESTORE_POINT"
            case 0x80: return "FPW_CHANGE"
            case 0x90: return "END_OF_RECOVERY"
            case 0xA0: return "FPI_FOR_HINT"
            case 0xB0: return "FPI"
            case 0xD0: return "OVERWRITE_CONTRECORD"
            default: return nil
            }
        case .transaction:
            switch info & 0x70 {
            case 0x00: return "COMMIT"
            case 0x10: return "PREPARE"
            case 0x20: return "ABORT"
            case 0x30: return "COMMIT_PREPARED"
            case 0x40: return "ABORT_PREPARED"
            case 0x50: return "ASSIGNMENT"
            case 0x60: return "INVALIDATION"
            default: return nil
            }
        case .storage:
            switch op {
            case 0x10: return "CREATE"
            case 0x20: return "TRUNCATE"
            default: return nil
            }
        case .clog:
            switch op {
            case 0x00: return "ZEROPAGE"
            case 0x10: return "TRUNCATE"
            default: return nil
            }
        case .database:
            switch op {
            case 0x00: return "CREATE_FILE_COPY"
            case 0x10: return "CREATE_WAL_LOG"
            case 0x20: return "DROP"
            default: return nil
            }
        case .tablespace:
            switch op {
            case 0x00: return "CREATE"
            case 0x10: return "DROP"
            default: return nil
            }
        case .multiXact:
            switch op {
            case 0x00: return "ZERO_OFF_PAGE"
            case 0x10: return "ZERO_MEM_PAGE"
            case 0x20: return "CREATE_ID"
            case 0x30: return "TRUNCATE_ID"
            default: return nil
            }
        case .relMap:
            return op == 0x00 ? "UPDATE" : nil
        case .standby:
            switch op {
            case 0x00: return "LOCK"
            case 0x10: return "RUNNING_XACTS"
            case 0x20: return "INVALIDATIONS"
            default: return nil
            }
        case .heap2:
            switch op {
            case 0x00: return "REWRITE"
            case 0x10: return "PRUNE"
            case 0x20: return "VACUUM"
            case 0x30: return "FREEZE_PAGE"
            case 0x40: return "VISIBLE"
            case 0x50: return "MULTI_INSERT"
            case 0xD0: return "MULTI_INSERT+INIT"
            case 0x60: return "LOCK_UPDATED"
            case 0x70: return "NEW_CID"
            default: return nil
            }
        case .heap:
            switch op {
            case 0x00: return "INSERT"
            case 0x80: return "INSERT+INIT"
            case 0x10: return "DELETE"
            case 0x20: return "UPDATE"
            case 0xA0: return "UPDATE+INIT"
            case 0x40: return "HOT_UPDATE"
            case 0xC0: return "HOT_UPDATE+INIT"
            case 0x30: return "TRUNCATE"
            case 0x50: return "HEAP_CONFIRM"
            case 0x60: return "LOCK"
            case 0x70: return "INPLACE"
            default: return nil
            }
        case .btree:
            switch op {
            case 0x00: return "INSERT_LEAF"
            case 0x10: return "INSERT_UPPER"
            case 0x20: return "INSERT_META"
            case 0x30: return "SPLIT_L"
            case 0x40: return "SPLIT_R"
            case 0x50: return "INSERT_POST"
            case 0x60: return "DEDUP"
            case 0x70: return "DELETE"
            case 0x80: return "UNLINK_PAGE"
            case 0x90: return "UNLINK_PAGE_META"
            case 0xA0: return "NEWROOT"
            case 0xB0: return "MARK_PAGE_HALFDEAD"
            case 0xC0: return "VACUUM"
            case 0xD0: return "REUSE_PAGE"
            case 0xE0: return "META_CLEANUP"
            default: return nil
            }
        case .hash:
            switch op {
            case 0x00: return "INIT_META_PAGE"
            case 0x10: return "INIT_BITMAP_PAGE"
            case 0x20: return "INSERT"
            case 0x30: return "ADD_OVFL_PAGE"
            case 0x40: return "SPLIT_ALLOCATE_PAGE"
            case 0x50: return "SPLIT_PAGE"
            case 0x60: return "SPLIT_COMPLETE"
            case 0x70: return "MOVE_PAGE_CONTENTS"
            case 0x80: return "SQUEEZE_PAGE"
            case 0x90: return "DELETE"
            case 0xA0: return "SPLIT_CLEANUP"
            case 0xB0: return "UPDATE_META_PAGE"
            case 0xC0: return "VACUUM_ONE_PAGE"
            default: return nil
            }
        case .gin:
            switch op {
            case 0x10: return "CREATE_PTREE"
            case 0x20: return "INSERT"
            case 0x30: return "SPLIT"
            case 0x40: return "VACUUM_PAGE"
            case 0x90: return "VACUUM_DATA_LEAF_PAGE"
            case 0x50: return "DELETE_PAGE"
            case 0x60: return "UPDATE_META_PAGE"
            case 0x70: return "INSERT_LISTPAGE"
            case 0x80: return "DELETE_LISTPAGE"
            default: return nil
            }
        case .gist:
            switch op {
            case 0x00: return "PAGE_UPDATE"
            case 0x10: return "DELETE"
            case 0x20: return "PAGE_REUSE"
            case 0x30: return "PAGE_SPLIT"
            case 0x60: return "PAGE_DELETE"
            case 0x70: return "ASSIGN_LSN"
            default: return nil
            }
        case .sequence:
            return op == 0x00 ? "LOG" : nil
        case .spgist:
            switch op {
            case 0x10: return "ADD_LEAF"
            case 0x20: return "MOVE_LEAFS"
            case 0x30: return "ADD_NODE"
            case 0x40: return "SPLIT_TUPLE"
            case 0x50: return "PICKSPLIT"
            case 0x60: return "VACUUM_LEAF"
            case 0x70: return "VACUUM_ROOT"
            case 0x80: return "VACUUM_REDIRECT"
            default: return nil
            }
        case .brin:
            switch op {
            case 0x00: return "CREATE_INDEX"
            case 0x10: return "INSERT"
            case 0x90: return "INSERT+INIT"
            case 0x20: return "UPDATE"
            case 0xA0: return "UPDATE+INIT"
            case 0x30: return "SAMEPAGE_UPDATE"
            case 0x40: return "REVMAP_EXTEND"
            case 0x50: return "DESUMMARIZE"
            default: return nil
            }
        case .commitTs:
            // commit_ts_identify compares the whole info byte.
            switch info {
            case 0x00: return "ZEROPAGE"
            case 0x10: return "TRUNCATE"
            default: return nil
            }
        case .replicationOrigin:
            // replorigin_identify compares the whole info byte.
            switch info {
            case 0x00: return "SET"
            case 0x10: return "DROP"
            default: return nil
            }
        case .generic:
            return "Generic"
        case .logicalMessage:
            return op == 0x00 ? "MESSAGE" : nil
        default:
            return nil
        }
    }
}
