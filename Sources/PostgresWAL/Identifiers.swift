/// PostgreSQL's domain integers as types, so that a block number cannot be passed as a relation OID.

/// A transaction id (TransactionId). 0 is InvalidTransactionId.
public struct TransactionId: RawRepresentable, Hashable, Comparable, Sendable, CustomStringConvertible {
    public var rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    public init(_ value: UInt32) { self.rawValue = value }
    public static let invalid = TransactionId(0)
    public static func < (a: Self, b: Self) -> Bool { a.rawValue < b.rawValue }
    public var description: String { String(rawValue) }
}

/// A block number inside one fork of a relation (BlockNumber).
public struct BlockNumber: RawRepresentable, Hashable, Comparable, Sendable, CustomStringConvertible {
    public var rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    public init(_ value: UInt32) { self.rawValue = value }
    public static func < (a: Self, b: Self) -> Bool { a.rawValue < b.rawValue }
    public var description: String { String(rawValue) }
}

/// PostgreSQL's timeline number (TimeLineID), as in WAL page headers. Not the page server's
/// `TimelineId`, which names a branch of a tenant's history.
public struct PostgresTimeline: RawRepresentable, Hashable, Comparable, Sendable, CustomStringConvertible {
    public var rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    public init(_ value: UInt32) { self.rawValue = value }
    public static func < (a: Self, b: Self) -> Bool { a.rawValue < b.rawValue }
    public var description: String { String(rawValue) }
}

/// A replication origin id (RepOriginId), carried by records written on behalf of an origin.
public struct ReplicationOriginId: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public var rawValue: UInt16
    public init(rawValue: UInt16) { self.rawValue = rawValue }
    public init(_ value: UInt16) { self.rawValue = value }
    public var description: String { String(rawValue) }
}

/// The physical identity of a relation (RelFileNode): tablespace, database and relfilenode OIDs.
/// Prints as PostgreSQL does, `spc/db/rel`.
public struct RelFileNode: Hashable, Comparable, Sendable, CustomStringConvertible {
    public var spcNode: UInt32
    public var dbNode: UInt32
    public var relNode: UInt32

    public init(spcNode: UInt32, dbNode: UInt32, relNode: UInt32) {
        self.spcNode = spcNode
        self.dbNode = dbNode
        self.relNode = relNode
    }

    public static func < (a: Self, b: Self) -> Bool {
        (a.spcNode, a.dbNode, a.relNode) < (b.spcNode, b.dbNode, b.relNode)
    }

    public var description: String { "\(spcNode)/\(dbNode)/\(relNode)" }
}

/// A relation fork (ForkNumber). Prints with PostgreSQL's names.
public enum ForkNumber: UInt8, Sendable, CaseIterable, CustomStringConvertible {
    case main = 0
    case fsm = 1
    case visibilityMap = 2
    case initialization = 3

    public var description: String {
        switch self {
        case .main: "main"
        case .fsm: "fsm"
        case .visibilityMap: "vm"
        case .initialization: "init"
        }
    }
}

/// A resource manager id (RmgrId): which subsystem wrote a record and will replay it.
/// Built-in ids are 0...21 in PostgreSQL 15; 128...255 are reserved for extensions' custom managers.
public struct ResourceManagerId: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public var rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }
    public init(_ value: UInt8) { self.rawValue = value }

    public static let xlog = Self(0)
    public static let transaction = Self(1)
    public static let storage = Self(2)
    public static let clog = Self(3)
    public static let database = Self(4)
    public static let tablespace = Self(5)
    public static let multiXact = Self(6)
    public static let relMap = Self(7)
    public static let standby = Self(8)
    public static let heap2 = Self(9)
    public static let heap = Self(10)
    public static let btree = Self(11)
    public static let hash = Self(12)
    public static let gin = Self(13)
    public static let gist = Self(14)
    public static let sequence = Self(15)
    public static let spgist = Self(16)
    public static let brin = Self(17)
    public static let commitTs = Self(18)
    public static let replicationOrigin = Self(19)
    public static let generic = Self(20)
    public static let logicalMessage = Self(21)

    /// The built-in managers' names as pg_waldump prints them, indexed by id.
    static let builtinNames = [
        "XLOG", "Transaction", "Storage", "CLOG", "Database", "Tablespace", "MultiXact", "RelMap",
        "Standby", "Heap2", "Heap", "Btree", "Hash", "Gin", "Gist", "Sequence", "SPGist", "BRIN",
        "CommitTs", "ReplicationOrigin", "Generic", "LogicalMessage",
    ]
    static let firstCustom: UInt8 = 128

    public var isBuiltin: Bool { Int(rawValue) < Self.builtinNames.count }
    public var isCustom: Bool { rawValue >= Self.firstCustom }
    /// Whether PostgreSQL 15 could have written this id at all.
    public var isValid: Bool { isBuiltin || isCustom }

    public var description: String {
        isBuiltin ? Self.builtinNames[Int(rawValue)] : "custom\(rawValue)"
    }
}
