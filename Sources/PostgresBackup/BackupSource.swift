import LSM

/// Where a backup reads the timeline's values.
public protocol BackupSource {
    /// Values of `keys` at `lsn` (nil = no value). Batched: relation blocks are asked for many at a time.
    /// Throws (e.g. LSM.StorageError) naming what could not be read.
    func get(_ keys: [Key], at lsn: LSN) throws -> [[UInt8]?]
}

/// What a backup contains.
public enum BackupKind: Sendable {
    /// Every file of the data directory, relation data included (`fullbackup`).
    case full
    /// Neon's `basebackup`: everything but the data of main, FSM and VM relation forks (a compute
    /// reads those pages from the page server); init forks are included.
    case base
}

/// A backup that cannot be made, with why.
public struct BackupError: Error, CustomStringConvertible, Sendable {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// A TimelineStore read through a Redo: for tests and tools.
public struct StoreBackupSource: BackupSource {
    let store: TimelineStore
    let redo: any Redo

    public init(store: TimelineStore, redo: any Redo) {
        self.store = store
        self.redo = redo
    }

    public func get(_ keys: [Key], at lsn: LSN) throws -> [[UInt8]?] {
        try store.get(keys.map { ($0, lsn) }, redo: redo).map { try $0.get() }
    }
}
