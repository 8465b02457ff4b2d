// Password authentication: cleartext (code 3), MD5 (code 5) and SCRAM-SHA-256 (SASL, codes 10/11/12).
//
// MD5 (code 5, body: 4-byte salt):
//   reply = "md5" + hex(md5(hex(md5(password + user)) + salt))
//
// SCRAM-SHA-256 (RFC 5802, RFC 7677), without channel binding (this client has no TLS):
//   client-first  = "n,," + client-first-bare;  client-first-bare = "n=" user ",r=" client-nonce
//   server-first  = "r=" client-nonce server-nonce ",s=" base64(salt) ",i=" iterations
//   client-final  = "c=biws,r=" nonce ",p=" base64(ClientProof)        ("biws" = base64("n,,"))
//   server-final  = "v=" base64(ServerSignature)   or "e=" error
//   SaltedPassword  = Hi(password, salt, i)   (PBKDF2 with HMAC-SHA-256, one 32-byte block)
//   ClientKey       = HMAC(SaltedPassword, "Client Key");  StoredKey = SHA-256(ClientKey)
//   AuthMessage     = client-first-bare "," server-first "," client-final-without-proof
//   ClientProof     = ClientKey XOR HMAC(StoredKey, AuthMessage)
//   ServerSignature = HMAC(HMAC(SaltedPassword, "Server Key"), AuthMessage)   -- verified, invariant 5
//
// PostgreSQL ignores the SCRAM user name (it uses the startup packet's), so an empty one is sent.
// SASLprep is not applied: the password's UTF-8 bytes are used as they are (see WireProtocol.swift).

import Crypto

enum MD5Password {
    /// The PasswordMessage body for AuthenticationMD5Password.
    static func response(user: String, password: String, salt: some Sequence<UInt8>) -> String {
        let inner = hex(Insecure.MD5.hash(data: Array(password.utf8) + Array(user.utf8)))
        return "md5" + hex(Insecure.MD5.hash(data: Array(inner.utf8) + Array(salt)))
    }

    static func hex(_ digest: some Sequence<UInt8>) -> String {
        let digits = Array("0123456789abcdef".utf8)
        var out: [UInt8] = []
        for byte in digest {
            out.append(digits[Int(byte >> 4)])
            out.append(digits[Int(byte & 0x0F)])
        }
        return String(decoding: out, as: UTF8.self)
    }
}

/// The client side of one SCRAM-SHA-256 exchange: client-first, then client-final from the
/// server-first, then verification of the server-final.
struct SCRAMSHA256Client {
    static let mechanism = "SCRAM-SHA-256"
    /// An upper bound on the iteration count a server may ask for: each iteration costs one HMAC, and a
    /// hostile server could otherwise pin the CPU. PostgreSQL's default is 4096.
    static let maxIterations = 10_000_000

    enum Failure: Error {
        case malformed(String)
        case serverError(String)
        case signatureMismatch
    }

    private let password: [UInt8]
    private let clientNonce: String
    let clientFirstBare: String
    private var expectedServerSignature: [UInt8]?

    /// `nonce` is for tests (RFC 7677's example); normally 18 random bytes in base64.
    init(user: String = "", password: String, nonce: String? = nil) {
        self.password = Array(password.utf8)
        if let nonce {
            clientNonce = nonce
        } else {
            var generator = SystemRandomNumberGenerator()
            clientNonce = Base64.encode((0..<18).map { _ in UInt8.random(in: .min ... .max, using: &generator) })
        }
        let escapedUser = user.replacing("=", with: "=3D").replacing(",", with: "=2C")
        clientFirstBare = "n=\(escapedUser),r=\(clientNonce)"
    }

    /// The SASLInitialResponse data.
    var clientFirstMessage: String { "n,," + clientFirstBare }

    /// Consumes the server-first message (AuthenticationSASLContinue data) and returns the
    /// client-final message (SASLResponse data).
    mutating func clientFinalMessage(serverFirst: String) throws(Failure) -> String {
        var nonce: String?, salt: [UInt8]?, iterations: Int?
        for attribute in serverFirst.split(separator: ",", omittingEmptySubsequences: false) {
            guard attribute.count >= 2, attribute.dropFirst().first == "=" else {
                throw .malformed("attribute \"\(attribute)\" in server-first-message")
            }
            let value = String(attribute.dropFirst(2))
            switch attribute.first! {
            case "r": nonce = value
            case "s":
                guard let decoded = Base64.decode(value), !decoded.isEmpty else { throw .malformed("salt \"\(value)\"") }
                salt = decoded
            case "i": iterations = Int(value)
            case "m": throw .malformed("mandatory extension \"\(attribute)\" that this client does not support")
            case "e": throw .serverError(value)
            default: break  // Unknown optional attributes are ignored (RFC 5802, section 5.1).
            }
        }
        guard let nonce, let salt, let iterations else {
            throw .malformed("server-first-message \"\(serverFirst)\" (it needs r=, s= and i=)")
        }
        guard nonce.hasPrefix(clientNonce), nonce.utf8.count > clientNonce.utf8.count else {
            throw .malformed("server nonce, which does not extend the client nonce")
        }
        guard (1...Self.maxIterations).contains(iterations) else {
            throw .malformed("iteration count \(iterations) (allowed: 1...\(Self.maxIterations))")
        }

        let saltedPassword = Self.hi(password: password, salt: salt, iterations: iterations)
        let saltedKey = SymmetricKey(data: saltedPassword)
        let clientKey = Array(HMAC<SHA256>.authenticationCode(for: Array("Client Key".utf8), using: saltedKey))
        let storedKey = Array(SHA256.hash(data: clientKey))
        let finalWithoutProof = "c=biws,r=\(nonce)"
        let authMessage = Array("\(clientFirstBare),\(serverFirst),\(finalWithoutProof)".utf8)
        let clientSignature = Array(HMAC<SHA256>.authenticationCode(for: authMessage, using: SymmetricKey(data: storedKey)))
        let proof = zip(clientKey, clientSignature).map { $0 ^ $1 }
        let serverKey = HMAC<SHA256>.authenticationCode(for: Array("Server Key".utf8), using: saltedKey)
        expectedServerSignature = Array(HMAC<SHA256>.authenticationCode(for: authMessage, using: SymmetricKey(data: Array(serverKey))))
        return finalWithoutProof + ",p=" + Base64.encode(proof)
    }

    /// Checks the server-final message (AuthenticationSASLFinal data): the server must prove that it
    /// knows the password too.
    func verify(serverFinal: String) throws(Failure) {
        guard let expected = expectedServerSignature else { throw .malformed("server-final-message before server-first-message") }
        var signature: [UInt8]?
        for attribute in serverFinal.split(separator: ",") {
            if attribute.hasPrefix("e=") { throw .serverError(String(attribute.dropFirst(2))) }
            if attribute.hasPrefix("v=") { signature = Base64.decode(String(attribute.dropFirst(2))) }
        }
        guard let signature else { throw .malformed("server-final-message \"\(serverFinal)\" (no v=)") }
        // Constant-time comparison: no early exit on the first differing byte.
        var difference = UInt8(signature.count == expected.count ? 0 : 1)
        for (a, b) in zip(signature, expected) { difference |= a ^ b }
        guard difference == 0 else { throw .signatureMismatch }
    }

    /// Hi(str, salt, i) of RFC 5802: PBKDF2-HMAC-SHA-256 with a 32-byte output (a single block).
    static func hi(password: [UInt8], salt: [UInt8], iterations: Int) -> [UInt8] {
        let key = SymmetricKey(data: password)
        var u = Array(HMAC<SHA256>.authenticationCode(for: salt + [0, 0, 0, 1], using: key))
        var result = u
        for _ in 1..<max(iterations, 1) {
            u = Array(HMAC<SHA256>.authenticationCode(for: u, using: key))
            for j in 0..<result.count { result[j] ^= u[j] }
        }
        return result
    }
}

/// Standard base64 (RFC 4648) with padding, as SCRAM uses it.
enum Base64 {
    private static let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8)

    static func encode(_ bytes: [UInt8]) -> String {
        var out: [UInt8] = []
        out.reserveCapacity((bytes.count + 2) / 3 * 4)
        var i = 0
        while i < bytes.count {
            let b0 = bytes[i], b1 = i + 1 < bytes.count ? bytes[i + 1] : 0, b2 = i + 2 < bytes.count ? bytes[i + 2] : 0
            out.append(alphabet[Int(b0 >> 2)])
            out.append(alphabet[Int((b0 & 0x03) << 4 | b1 >> 4)])
            out.append(i + 1 < bytes.count ? alphabet[Int((b1 & 0x0F) << 2 | b2 >> 6)] : UInt8(ascii: "="))
            out.append(i + 2 < bytes.count ? alphabet[Int(b2 & 0x3F)] : UInt8(ascii: "="))
            i += 3
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// Nil for anything that is not canonical padded base64.
    static func decode(_ text: String) -> [UInt8]? {
        let chars = Array(text.utf8)
        guard chars.count % 4 == 0 else { return nil }
        var out: [UInt8] = []
        out.reserveCapacity(chars.count / 4 * 3)
        var index = 0
        while index < chars.count {
            var values: [UInt8] = []
            var padding = 0
            for k in 0..<4 {
                let c = chars[index + k]
                if c == UInt8(ascii: "=") {
                    // Padding only at the very end, in the last one or two positions.
                    guard index + 4 == chars.count, k >= 2 else { return nil }
                    padding += 1
                    values.append(0)
                } else {
                    guard padding == 0, let v = value(of: c) else { return nil }
                    values.append(v)
                }
            }
            let triple = UInt32(values[0]) << 18 | UInt32(values[1]) << 12 | UInt32(values[2]) << 6 | UInt32(values[3])
            out.append(UInt8(truncatingIfNeeded: triple >> 16))
            if padding < 2 { out.append(UInt8(truncatingIfNeeded: triple >> 8)) }
            if padding < 1 { out.append(UInt8(truncatingIfNeeded: triple)) }
            index += 4
        }
        return out
    }

    private static func value(of c: UInt8) -> UInt8? {
        switch c {
        case UInt8(ascii: "A")...UInt8(ascii: "Z"): return c - UInt8(ascii: "A")
        case UInt8(ascii: "a")...UInt8(ascii: "z"): return c - UInt8(ascii: "a") + 26
        case UInt8(ascii: "0")...UInt8(ascii: "9"): return c - UInt8(ascii: "0") + 52
        case UInt8(ascii: "+"): return 62
        case UInt8(ascii: "/"): return 63
        default: return nil
        }
    }
}
