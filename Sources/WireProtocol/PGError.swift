// Errors of the wire-protocol client: a small set of codes plus context, and the server's own report
// (SQLSTATE, message, detail, hint) when the server sent one. The description is a sentence for a person;
// it never contains a password.

import Glibc

/// A five-character SQLSTATE code as sent in the `C` field of an ErrorResponse.
public struct SQLState: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public var rawValue: String
    public init(rawValue: String) { self.rawValue = rawValue }
    public var description: String { rawValue }

    /// 42710: the object (e.g. a replication slot) already exists.
    public static let duplicateObject = SQLState(rawValue: "42710")
    /// 42704: the object (e.g. a replication slot) does not exist.
    public static let undefinedObject = SQLState(rawValue: "42704")
    /// 55006: the object is in use (e.g. a slot another walsender streams from).
    public static let objectInUse = SQLState(rawValue: "55006")
    /// 28P01: wrong password.
    public static let invalidPassword = SQLState(rawValue: "28P01")
    /// 28000: no pg_hba.conf entry, role cannot log in, and similar.
    public static let invalidAuthorizationSpecification = SQLState(rawValue: "28000")
    /// 3D000: the database does not exist.
    public static let invalidCatalogName = SQLState(rawValue: "3D000")

    /// The class: the first two characters ("28" is authorization, "42" syntax or access rule).
    public var errorClass: Substring { rawValue.prefix(2) }
}

/// The fields of an ErrorResponse or NoticeResponse.
public struct ServerMessage: Sendable, Equatable, CustomStringConvertible {
    /// Every field by its one-byte code ('S' severity, 'V' non-localized severity, 'C' SQLSTATE,
    /// 'M' message, 'D' detail, 'H' hint, 'P' position, 'W' where, 'F' file, 'L' line, 'R' routine...).
    public var fields: [UInt8: String]

    public init(fields: [UInt8: String]) { self.fields = fields }

    /// The severity in English when the server sent it ('V'), else the localized one ('S').
    public var severity: String { fields[UInt8(ascii: "V")] ?? fields[UInt8(ascii: "S")] ?? "ERROR" }
    public var sqlState: SQLState? { fields[UInt8(ascii: "C")].map(SQLState.init(rawValue:)) }
    public var message: String { fields[UInt8(ascii: "M")] ?? "(no message)" }
    public var detail: String? { fields[UInt8(ascii: "D")] }
    public var hint: String? { fields[UInt8(ascii: "H")] }

    /// "FATAL 28P01: password authentication failed for user "x" (detail: ...) (hint: ...)".
    public var description: String {
        var text = severity
        if let state = sqlState { text += " \(state)" }
        text += ": " + message
        if let detail { text += " (detail: \(detail))" }
        if let hint { text += " (hint: \(hint))" }
        return text
    }
}

/// An error of the wire-protocol client.
public struct PGError: Error, Sendable, CustomStringConvertible {
    public enum Code: Sendable, Hashable {
        /// A socket call failed (connection refused, reset, unreachable host...).
        case io
        /// The operation did not finish before its deadline.
        case timeout
        /// The server closed the connection.
        case connectionClosed
        /// The server refused the credentials, or the authentication exchange could not be completed.
        case authenticationFailed
        /// The server answered with an ErrorResponse; `server` holds it.
        case server
        /// The server sent something this client does not understand or did not expect.
        case protocolViolation
        /// A tar archive (from a base backup) is malformed: bad checksum, bad number, truncated.
        case corruption
        /// A caller-supplied value is not acceptable (bad connection string, bad slot name...).
        case invalidArgument
        /// The call does not fit the connection's state (e.g. a query during streaming, or a broken
        /// or closed connection).
        case invalidState
        /// The server asked for something this client does not implement (TLS, GSSAPI...).
        case unsupported
    }

    public var code: Code
    /// A sentence that says what went wrong, with its context (host, user, command).
    public var message: String
    /// The server's ErrorResponse, when there is one.
    public var server: ServerMessage?

    public init(_ code: Code, _ message: String, server: ServerMessage? = nil) {
        self.code = code
        self.message = message
        self.server = server
    }

    /// The server's SQLSTATE, when the server reported the error.
    public var sqlState: SQLState? { server?.sqlState }

    /// True when the server reported that the object already exists (SQLSTATE 42710), e.g. when a
    /// replication slot is created twice.
    public var isAlreadyExists: Bool { sqlState == .duplicateObject }

    public var description: String {
        guard let server else { return message }
        return message + ": server said " + server.description
    }
}

extension PGError {
    static func errno(_ what: String, _ code: Int32 = Glibc.errno) -> PGError {
        PGError(.io, "\(what): \(String(cString: strerror(code)))")
    }
}
