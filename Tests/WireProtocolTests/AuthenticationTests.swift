import XCTest
@testable import WireProtocol

/// SCRAM-SHA-256 and MD5 on canned exchanges (RFC 7677's example), without a server.
final class AuthenticationTests: XCTestCase {
    // RFC 7677, section 3.
    let nonce = "rOprNGfwEbeRWgbNEkqO"
    let serverFirst = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
    let clientFinal = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
    let serverFinal = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="

    func testSCRAMMatchesRFC7677() throws {
        var client = SCRAMSHA256Client(user: "user", password: "pencil", nonce: nonce)
        XCTAssertEqual(client.clientFirstMessage, "n,,n=user,r=rOprNGfwEbeRWgbNEkqO")
        XCTAssertEqual(try client.clientFinalMessage(serverFirst: serverFirst), clientFinal)
        XCTAssertNoThrow(try client.verify(serverFinal: serverFinal))
    }

    func testSCRAMRejectsATamperedServerSignature() throws {
        var client = SCRAMSHA256Client(user: "user", password: "pencil", nonce: nonce)
        _ = try client.clientFinalMessage(serverFirst: serverFirst)
        // One bit flipped in the signature.
        var signature = Base64.decode(String(serverFinal.dropFirst(2)))!
        signature[5] ^= 0x01
        assertFailure(try client.verify(serverFinal: "v=" + Base64.encode(signature))) {
            if case .signatureMismatch = $0 { return true } else { return false }
        }
        // A signature of the wrong length, a missing one, an error from the server.
        assertFailure(try client.verify(serverFinal: "v=AAAA")) { if case .signatureMismatch = $0 { true } else { false } }
        assertFailure(try client.verify(serverFinal: "x=1")) { if case .malformed = $0 { true } else { false } }
        assertFailure(try client.verify(serverFinal: "e=invalid-proof")) {
            if case .serverError("invalid-proof") = $0 { true } else { false }
        }
        // The right signature for a different password fails too.
        var other = SCRAMSHA256Client(user: "user", password: "pencil2", nonce: nonce)
        _ = try other.clientFinalMessage(serverFirst: serverFirst)
        assertFailure(try other.verify(serverFinal: serverFinal)) { if case .signatureMismatch = $0 { true } else { false } }
    }

    func testSCRAMRejectsBadServerFirstMessages() {
        let cases = [
            "r=someoneElsesNonce,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",  // Does not extend our nonce.
            "r=rOprNGfwEbeRWgbNEkqO,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",  // Adds nothing to it.
            "r=rOprNGfwEbeRWgbNEkqOxyz,s=!!!!,i=4096",  // Bad base64.
            "r=rOprNGfwEbeRWgbNEkqOxyz,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=0",
            "r=rOprNGfwEbeRWgbNEkqOxyz,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=999999999",  // Over the limit.
            "r=rOprNGfwEbeRWgbNEkqOxyz,i=4096",  // No salt.
            "m=ext,r=rOprNGfwEbeRWgbNEkqOxyz,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
            "garbage",
        ]
        for text in cases {
            var client = SCRAMSHA256Client(password: "pencil", nonce: nonce)
            assertFailure(try client.clientFinalMessage(serverFirst: text), text) { if case .malformed = $0 { true } else { false } }
        }
    }

    func testSCRAMDefaultsToAnEmptyUserAndARandomNonce() {
        let a = SCRAMSHA256Client(password: "x"), b = SCRAMSHA256Client(password: "x")
        XCTAssertTrue(a.clientFirstMessage.hasPrefix("n,,n=,r="))
        XCTAssertNotEqual(a.clientFirstMessage, b.clientFirstMessage)
        XCTAssertEqual(a.clientFirstMessage.count, "n,,n=,r=".count + 24)
        // User names escape ',' and '='.
        XCTAssertEqual(SCRAMSHA256Client(user: "a,b=c", password: "x", nonce: "N").clientFirstMessage, "n,,n=a=2Cb=3Dc,r=N")
    }

    func testHiIsPBKDF2() {
        // RFC 7914 / PBKDF2-HMAC-SHA256 test vector: P="passwd", S="salt", c=1, first 32 bytes.
        let out = SCRAMSHA256Client.hi(password: Array("passwd".utf8), salt: Array("salt".utf8), iterations: 1)
        XCTAssertEqual(MD5Password.hex(out), "55ac046e56e3089fec1691c22544b605f94185216dde0465e68b9d57c20dacbc")
    }

    func testMD5Response() {
        // md5(md5("secret" + "u_md5") + salt), computed independently.
        XCTAssertEqual(MD5Password.response(user: "u_md5", password: "secret", salt: [1, 2, 3, 4]), "md586815d29b543118a10eccc4bb43ec631")
    }

    func testBase64() {
        for (plain, encoded) in [("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("foob", "Zm9vYg=="), ("fooba", "Zm9vYmE="), ("foobar", "Zm9vYmFy")] {
            XCTAssertEqual(Base64.encode(Array(plain.utf8)), encoded)
            XCTAssertEqual(Base64.decode(encoded), Array(plain.utf8))
        }
        let all = (0...255).map { UInt8($0) }
        XCTAssertEqual(Base64.decode(Base64.encode(all)), all)
        for bad in ["Zg", "Zg=a", "=Zg=", "Z===", "Zm9v!A==", "Zm=vYg=="] {
            XCTAssertNil(Base64.decode(bad), bad)
        }
    }

    private func assertFailure<T>(_ body: @autoclosure () throws -> T, _ message: String = "",
                                  file: StaticString = #filePath, line: UInt = #line,
                                  _ matches: (SCRAMSHA256Client.Failure) -> Bool) {
        do {
            _ = try body()
            XCTFail("expected a SCRAM failure \(message)", file: file, line: line)
        } catch let failure as SCRAMSHA256Client.Failure {
            XCTAssertTrue(matches(failure), "unexpected failure \(failure) \(message)", file: file, line: line)
        } catch {
            XCTFail("unexpected error \(error)", file: file, line: line)
        }
    }
}
