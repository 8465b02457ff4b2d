// Connection strings, in the two forms libpq accepts:
//
//   key=value form:  host=127.0.0.1 port=5432 user=postgres password='a b\' c' dbname=x
//   URI form:        postgresql://user:password@host:port/dbname?param=value   (or postgres://)
//
// key=value rules (as libpq's conninfo_parse): pairs are separated by white space; white space may
// surround '='; a value is either single-quoted (a backslash escapes the next character, a quote ends
// it) or runs to the next white space (a backslash escapes the next character there too). Note the
// libpq quirk, kept on purpose: after "key=" white space is skipped, so "host= port=1" gives host the
// value "port=1".
//
// URI rules (as libpq's conninfo_uri_parse): [user[:password]@][host][:port][/dbname][?k=v&k=v], each
// component percent-decoded ('+' is not a space), an IPv6 host in brackets, "ssl=true" meaning
// sslmode=require. A host that starts with '/' is a Unix-socket directory.
//
// Limitations: one host only (libpq's "h1,h2" lists are refused), no environment variables (PGHOST...)
// and no password file; the user defaults to "postgres" and the host to "localhost".

/// Where and as whom to connect. `description` never shows the password.
public struct ConnInfo: Sendable, Equatable, CustomStringConvertible {
    public static let defaultPort = 5432
    public static let defaultUser = "postgres"
    public static let defaultHost = "localhost"

    /// A host name, an IP address, or (starting with '/') the directory of a Unix socket.
    public var host: String
    /// A numeric address to connect to instead of resolving `host` (libpq's hostaddr).
    public var hostaddr: String?
    public var port: Int
    public var user: String
    public var password: String?
    /// The database; nil lets the server default it to the user name. Ignored by physical replication.
    public var dbname: String?
    public var applicationName: String?
    /// Every other parameter, by its libpq name: sslmode, connect_timeout, options, ...
    public var parameters: [String: String]

    public init(host: String = ConnInfo.defaultHost, port: Int = ConnInfo.defaultPort,
                user: String = ConnInfo.defaultUser, password: String? = nil, dbname: String? = nil,
                applicationName: String? = nil, parameters: [String: String] = [:]) {
        self.host = host
        self.port = port
        self.user = user
        self.password = password
        self.dbname = dbname
        self.applicationName = applicationName
        self.parameters = parameters
    }

    /// Parses a libpq connection string: a `postgresql://` or `postgres://` URI, or key=value pairs.
    /// Throws `PGError` with code `invalidArgument` (bad syntax) or `unsupported` (several hosts).
    public init(parsing text: String) throws {
        self.init()
        let bytes = Array(text.utf8)
        let pairs: [(String, String)]
        if let scheme = ["postgresql://", "postgres://"].first(where: { text.hasPrefix($0) }) {
            pairs = try Self.parseURI(bytes, schemeLength: scheme.utf8.count)
        } else {
            pairs = try Self.parseKeyValues(bytes)
        }
        for (key, value) in pairs { try set(key, value) }
    }

    /// Seconds for connecting, from the `connect_timeout` parameter (libpq treats 0 and less as none).
    public var connectTimeoutSeconds: Double? {
        guard let text = parameters["connect_timeout"], let seconds = Int(text), seconds > 0 else { return nil }
        return Double(max(seconds, 2))
    }

    /// The key=value form without the password: safe to log and to show in an API.
    public var redacted: String { keyValueString(includingPassword: false) }

    public var description: String { redacted }

    /// The key=value form, every value quoted where libpq needs it. With `includingPassword: false`
    /// the password is left out.
    public func keyValueString(includingPassword: Bool) -> String {
        var pairs: [(String, String)] = [("host", host)]
        if let hostaddr { pairs.append(("hostaddr", hostaddr)) }
        pairs.append(("port", String(port)))
        pairs.append(("user", user))
        if includingPassword, let password { pairs.append(("password", password)) }
        if let dbname { pairs.append(("dbname", dbname)) }
        if let applicationName { pairs.append(("application_name", applicationName)) }
        for key in parameters.keys.sorted() { pairs.append((key, parameters[key]!)) }
        return pairs.map { "\($0.0)=\(Self.quote($0.1))" }.joined(separator: " ")
    }

    // MARK: - Applying parameters

    private mutating func set(_ key: String, _ value: String) throws {
        // As in libpq, an empty value means "not set": the default applies.
        switch key {
        case "host":
            if value.contains(",") {
                throw PGError(.unsupported, "connection string names several hosts (\(value)); only one is supported")
            }
            host = value.isEmpty ? Self.defaultHost : value
        case "hostaddr":
            if value.contains(",") {
                throw PGError(.unsupported, "connection string names several host addresses (\(value)); only one is supported")
            }
            hostaddr = value.isEmpty ? nil : value
        case "port":
            if value.isEmpty { port = Self.defaultPort; return }
            guard let number = Int(value), (1...65535).contains(number) else {
                throw PGError(.invalidArgument, "invalid port \"\(value)\" in connection string: expected a number from 1 to 65535")
            }
            port = number
        case "user": user = value.isEmpty ? Self.defaultUser : value
        case "password": password = value.isEmpty ? nil : value
        case "dbname": dbname = value.isEmpty ? nil : value
        case "application_name": applicationName = value.isEmpty ? nil : value
        case "":
            throw PGError(.invalidArgument, "connection string has a parameter with an empty name")
        default: parameters[key] = value
        }
    }

    // MARK: - key=value form

    private static func isSpace(_ byte: UInt8) -> Bool {
        byte == 0x20 || (0x09...0x0D).contains(byte)
    }

    static func parseKeyValues(_ s: [UInt8]) throws -> [(String, String)] {
        var pairs: [(String, String)] = []
        var i = 0
        while true {
            while i < s.count, isSpace(s[i]) { i += 1 }
            if i == s.count { return pairs }
            // The name runs to '=' or white space.
            let nameStart = i
            while i < s.count, s[i] != UInt8(ascii: "="), !isSpace(s[i]) { i += 1 }
            let name = String(decoding: s[nameStart..<i], as: UTF8.self)
            while i < s.count, isSpace(s[i]) { i += 1 }
            guard i < s.count, s[i] == UInt8(ascii: "=") else {
                throw PGError(.invalidArgument, "missing \"=\" after \"\(name)\" in connection string")
            }
            i += 1
            while i < s.count, isSpace(s[i]) { i += 1 }
            var value: [UInt8] = []
            if i < s.count, s[i] == UInt8(ascii: "'") {
                i += 1
                while true {
                    guard i < s.count else {
                        throw PGError(.invalidArgument, "unterminated quoted string in connection string (value of \"\(name)\")")
                    }
                    let byte = s[i]
                    if byte == UInt8(ascii: "\\") {
                        i += 1
                        if i < s.count { value.append(s[i]); i += 1 }
                    } else if byte == UInt8(ascii: "'") {
                        i += 1
                        break
                    } else {
                        value.append(byte)
                        i += 1
                    }
                }
            } else {
                while i < s.count, !isSpace(s[i]) {
                    if s[i] == UInt8(ascii: "\\") {
                        i += 1
                        if i < s.count { value.append(s[i]); i += 1 }
                    } else {
                        value.append(s[i])
                        i += 1
                    }
                }
            }
            pairs.append((name, String(decoding: value, as: UTF8.self)))
        }
    }

    /// Quotes a value for the key=value form when it needs it.
    static func quote(_ value: String) -> String {
        let needsQuotes = value.isEmpty || value.utf8.contains { isSpace($0) || $0 == UInt8(ascii: "'") || $0 == UInt8(ascii: "\\") }
        guard needsQuotes else { return value }
        var out = "'"
        for ch in value {
            if ch == "'" || ch == "\\" { out.append("\\") }
            out.append(ch)
        }
        return out + "'"
    }

    // MARK: - URI form

    static func parseURI(_ s: [UInt8], schemeLength: Int) throws -> [(String, String)] {
        var pairs: [(String, String)] = []
        var i = schemeLength
        let at = UInt8(ascii: "@"), slash = UInt8(ascii: "/"), colon = UInt8(ascii: ":")
        let question = UInt8(ascii: "?"), comma = UInt8(ascii: ",")

        // [user[:password]@]: look ahead for an '@' before the first '/' or '?'.
        var j = i
        while j < s.count, s[j] != at, s[j] != slash, s[j] != question { j += 1 }
        if j < s.count, s[j] == at {
            let userinfo = s[i..<j]
            if let c = userinfo.firstIndex(of: colon) {
                let user = try percentDecode(userinfo[userinfo.startIndex..<c], what: "user name")
                if !user.isEmpty { pairs.append(("user", user)) }
                let password = try percentDecode(userinfo[(c + 1)...], what: "password")
                if !password.isEmpty { pairs.append(("password", password)) }
            } else {
                let user = try percentDecode(userinfo, what: "user name")
                if !user.isEmpty { pairs.append(("user", user)) }
            }
            i = j + 1
        }

        // [host][:port]
        var host: [UInt8] = []
        if i < s.count, s[i] == UInt8(ascii: "[") {
            guard let close = s[i...].firstIndex(of: UInt8(ascii: "]")) else {
                throw PGError(.invalidArgument, "end of string reached when looking for matching \"]\" in IPv6 host address in URI")
            }
            host = Array(s[(i + 1)..<close])
            if host.isEmpty { throw PGError(.invalidArgument, "IPv6 host address may not be empty in URI") }
            i = close + 1
            if i < s.count, ![colon, slash, question, comma].contains(s[i]) {
                throw PGError(.invalidArgument, "unexpected character \"\(Character(UnicodeScalar(s[i])))\" after IPv6 host address in URI")
            }
        } else {
            let start = i
            while i < s.count, ![colon, slash, question, comma].contains(s[i]) { i += 1 }
            host = Array(s[start..<i])
        }
        if !host.isEmpty { pairs.append(("host", try percentDecode(host[...], what: "host"))) }
        if i < s.count, s[i] == colon {
            i += 1
            let start = i
            while i < s.count, s[i] != slash, s[i] != question, s[i] != comma { i += 1 }
            let port = try percentDecode(s[start..<i], what: "port")
            if !port.isEmpty { pairs.append(("port", port)) }
        }
        if i < s.count, s[i] == comma {
            throw PGError(.unsupported, "connection URI names several hosts; only one is supported")
        }

        // [/dbname]
        if i < s.count, s[i] == slash {
            i += 1
            let start = i
            while i < s.count, s[i] != question { i += 1 }
            let dbname = try percentDecode(s[start..<i], what: "database name")
            if !dbname.isEmpty { pairs.append(("dbname", dbname)) }
        }

        // [?key=value&key=value]
        if i < s.count, s[i] == question {
            i += 1
            for item in s[i...].split(separator: UInt8(ascii: "&"), omittingEmptySubsequences: true) {
                let parts = item.split(separator: UInt8(ascii: "="), maxSplits: 2, omittingEmptySubsequences: false)
                guard parts.count == 2 else {
                    let text = String(decoding: item, as: UTF8.self)
                    throw PGError(.invalidArgument, parts.count < 2
                        ? "missing key/value separator \"=\" in URI query parameter \"\(text)\""
                        : "extra key/value separator \"=\" in URI query parameter \"\(text)\"")
                }
                var key = try percentDecode(parts[0], what: "query parameter name")
                var value = try percentDecode(parts[1], what: "query parameter value")
                if key == "ssl" && value == "true" { key = "sslmode"; value = "require" }
                pairs.append((key, value))
            }
        }
        return pairs
    }

    static func percentDecode(_ s: ArraySlice<UInt8>, what: String) throws -> String {
        var out: [UInt8] = []
        out.reserveCapacity(s.count)
        var i = s.startIndex
        while i < s.endIndex {
            if s[i] == UInt8(ascii: "%") {
                guard i + 2 < s.endIndex,
                      let high = hexValue(s[i + 1]), let low = hexValue(s[i + 2]) else {
                    throw PGError(.invalidArgument, "invalid percent-encoded token in the \(what) of a connection URI")
                }
                let byte = high << 4 | low
                guard byte != 0 else {
                    throw PGError(.invalidArgument, "forbidden value %00 in the \(what) of a connection URI")
                }
                out.append(byte)
                i += 3
            } else {
                out.append(s[i])
                i += 1
            }
        }
        return String(decoding: out, as: UTF8.self)
    }

    private static func hexValue(_ byte: UInt8) -> UInt8? {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): return byte - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): return byte - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): return byte - UInt8(ascii: "A") + 10
        default: return nil
        }
    }
}
