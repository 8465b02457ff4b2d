import LSM

/// Where ingest and base-backup import write: a `TimelineStore` (see `TimelineStoreTarget`) or, in
/// tests, anything that records puts.
///
/// Contract: `put` receives LSNs in non-decreasing order and at most one value per (key, LSN).
/// `latestImage` returns the newest value of a key that ingest itself keeps as images (directories,
/// sizes, checkpoint) or nil when the key has none.
public protocol IngestTarget: AnyObject {
    func put(_ key: Key, _ lsn: LSN, _ value: Value) throws
    func latestImage(_ key: Key) throws -> [UInt8]?
    /// Every record up to `lsn` has been ingested (whether or not it stored anything).
    func advance(to lsn: LSN)
}

extension IngestTarget {
    public func advance(to lsn: LSN) {}
}

/// The pages a CREATE DATABASE ... STRATEGY FILE_COPY record copies: the value of a relation block
/// as of an LSN (all records up to and including that LSN ingested), reconstructed with redo. The
/// daemon supplies one backed by its redo; nil means the block has no value.
public protocol PageSource {
    func page(_ key: Key, at lsn: LSN) throws -> [UInt8]?
}

/// A redo that only hands back images: the newest value must be an image (metadata keys always are).
public struct ImageOnlyRedo: Redo {
    public init() {}
    public func reconstruct(key: Key, lsn: LSN, base: (lsn: LSN, bytes: [UInt8])?, records: [RedoRecord]) throws -> [UInt8] {
        throw StorageError(.unsupported, "key \(key) needs redo of \(records.count) record(s); this reader handles images only", lsn: lsn)
    }
}

/// Ingest into a `TimelineStore`; with `images`, as the daemon ingests (images on ingest bound
/// every key's chain, see IngestImages.swift).
public final class TimelineStoreTarget: IngestTarget {
    public let store: TimelineStore
    public let images: IngestImages?

    public init(store: TimelineStore, images: IngestImages? = nil) {
        self.store = store
        self.images = images
    }

    public func put(_ key: Key, _ lsn: LSN, _ value: Value) throws {
        try store.put(key, lsn, images?.valueToStore(key, lsn, value) ?? value)
    }

    public func latestImage(_ key: Key) throws -> [UInt8]? { try store.get(key, at: .max, redo: ImageOnlyRedo()) }

    public func advance(to lsn: LSN) { store.advance(to: lsn) }
}

/// Pages from a `TimelineStore`, reconstructed with `redo`.
public struct TimelineStorePageSource: PageSource {
    public let store: TimelineStore
    public let redo: any Redo

    public init(store: TimelineStore, redo: any Redo) {
        self.store = store
        self.redo = redo
    }

    public func page(_ key: Key, at lsn: LSN) throws -> [UInt8]? { try store.get(key, at: lsn, redo: redo) }
}

/// Why ingest or import refused its input.
public struct IngestError: Error, CustomStringConvertible, Sendable {
    public enum Code: String, Sendable {
        /// A record's main data or a backup file does not have the layout PostgreSQL 15 gives it.
        case malformed
        /// Valid input the ingest cannot handle (for example FILE_COPY without a page source).
        case unsupported
        /// The caller broke the contract (records out of order, a tar entry begun inside another).
        case invalidArgument
        /// An earlier error left the ingest in an unknown state.
        case poisoned
    }

    public var code: Code
    public var message: String
    /// The record at fault (its start), when there is one.
    public var recordLSN: LSN?

    public init(_ code: Code, _ message: String, recordLSN: LSN? = nil) {
        self.code = code
        self.message = message
        self.recordLSN = recordLSN
    }

    public var description: String {
        "ingest \(code.rawValue): \(message)" + (recordLSN.map { " (record at \($0))" } ?? "")
    }
}
