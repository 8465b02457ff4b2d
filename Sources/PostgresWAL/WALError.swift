import LSM

/// An error from decoding WAL: a small code set plus where it happened.
///
/// `recordLSN` names the record being decoded (the one PostgreSQL would report as "error in WAL
/// record at X"); `position` is the LSN of the offending byte or page when that is more precise.
/// `description` is one sentence fit for a log line.
public struct WALError: Error, CustomStringConvertible, Sendable, Equatable {
    public enum Code: String, Sendable {
        /// The bytes are not valid PostgreSQL 15 WAL (bad header, bad layout, bad compressed image).
        case corruption
        /// A record's CRC-32C does not match its bytes. A kind of corruption, split out because it is
        /// the check that catches damaged payloads.
        case checksumMismatch
        /// The caller asked for something impossible (a start LSN that is not a record position).
        case invalidArgument
        /// Valid WAL that this decoder does not handle.
        case unsupported
        /// A WAL segment file could not be opened or read.
        case io
    }

    public var code: Code
    public var message: String
    public var recordLSN: LSN?
    public var position: LSN?

    public init(_ code: Code, _ message: String, recordLSN: LSN? = nil, position: LSN? = nil) {
        self.code = code
        self.message = message
        self.recordLSN = recordLSN
        self.position = position
    }

    public var description: String {
        var s = "WAL \(code.rawValue): \(message)"
        if let recordLSN { s += " (record at \(recordLSN)" + (position.map { ", byte at \($0))" } ?? ")") }
        else if let position { s += " (at \(position))" }
        return s
    }

    static func corrupt(_ message: String, record: LSN? = nil, at position: LSN? = nil) -> WALError {
        WALError(.corruption, message, recordLSN: record, position: position)
    }
}
