/// The engine's error: a small code set plus the context a user needs to act on it.
///
/// `description` is one sentence that says what is wrong and where (file, offset, LSN), never a
/// Swift dump. Corruption is its own code: a caller can tell damaged data from a failed system call.
public struct StorageError: Error, CustomStringConvertible, Sendable {
    public enum Code: String, Sendable {
        case corruption, io, notFound, invalidArgument, unsupported
        /// The redo function refused to build the value (its message says why).
        case redo
    }

    public var code: Code
    public var message: String
    public var file: String?
    public var offset: UInt64?
    public var lsn: LSN?

    public init(_ code: Code, _ message: String, file: String? = nil, offset: UInt64? = nil, lsn: LSN? = nil) {
        self.code = code
        self.message = message
        self.file = file
        self.offset = offset
        self.lsn = lsn
    }

    public static func corruption(_ message: String, file: String?, offset: UInt64?) -> StorageError {
        StorageError(.corruption, message, file: file, offset: offset)
    }

    public var description: String {
        var s = "\(code.rawValue): \(message)"
        if let file { s += " (file \(file)" + (offset.map { ", offset \($0)" } ?? "") + ")" }
        if let lsn { s += " at LSN \(lsn)" }
        return s
    }
}

/// An error from a system call, named for the call and the file.
func ioError(_ call: String, errno code: Int32, file: String, offset: UInt64? = nil) -> StorageError {
    StorageError(.io, "\(call) failed: \(String(cString: strerror(code))) (errno \(code))", file: file, offset: offset)
}

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
