/// What the engine stores under a (key, LSN).
///
/// - `image`: the complete value of the key at that LSN (a page image is 8 KiB; metadata values such
///   as a relation directory have other sizes).
/// - `walRecord`: an opaque WAL record; the redo function turns a base plus records into an image.
/// - `engineRecord`: an opaque record of the caller's own making (for example "set these CLOG
///   bits"); for the engine it is just another record handed to redo.
/// A record with `willInit` needs no base: redo starts from nothing.
public struct Value: Hashable, Sendable {
    public enum Kind: UInt8, Sendable {
        // 0 is reserved as invalid.
        case image = 1
        case walRecord = 2
        case engineRecord = 3
    }

    public var kind: Kind
    public var willInit: Bool
    public var bytes: [UInt8]

    public init(kind: Kind, willInit: Bool, bytes: [UInt8]) {
        self.kind = kind
        self.willInit = willInit
        self.bytes = bytes
    }

    public static func image(_ bytes: [UInt8]) -> Value { Value(kind: .image, willInit: true, bytes: bytes) }
    public static func walRecord(_ bytes: [UInt8], willInit: Bool = false) -> Value {
        Value(kind: .walRecord, willInit: willInit, bytes: bytes)
    }
    public static func engineRecord(_ bytes: [UInt8], willInit: Bool = false) -> Value {
        Value(kind: .engineRecord, willInit: willInit, bytes: bytes)
    }

    /// True when reconstruction can start here without anything older.
    public var startsChain: Bool { kind == .image || willInit }
}

/// One record handed to redo, oldest first.
public struct RedoRecord: Sendable {
    public var lsn: LSN
    public var value: Value
    public init(lsn: LSN, value: Value) {
        self.lsn = lsn
        self.value = value
    }
}

/// Turns a base image and the records above it into the value at the request LSN.
///
/// The engine calls this in the caller's thread. `base` is nil when the oldest record has
/// `willInit`. `records` are in LSN order and all newer than the base. `lsn` is the request LSN.
public protocol Redo: Sendable {
    func reconstruct(key: Key, lsn: LSN, base: (lsn: LSN, bytes: [UInt8])?, records: [RedoRecord]) throws -> [UInt8]
}
