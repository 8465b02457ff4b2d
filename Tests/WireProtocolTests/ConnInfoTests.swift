import XCTest
@testable import WireProtocol

final class ConnInfoTests: XCTestCase {
    func testKeyValueBasics() throws {
        let info = try ConnInfo(parsing: "host=127.0.0.1 port=5433 user=alice password=secret dbname=x application_name=pageserver")
        XCTAssertEqual(info.host, "127.0.0.1")
        XCTAssertEqual(info.port, 5433)
        XCTAssertEqual(info.user, "alice")
        XCTAssertEqual(info.password, "secret")
        XCTAssertEqual(info.dbname, "x")
        XCTAssertEqual(info.applicationName, "pageserver")
        XCTAssertEqual(info.parameters, [:])
    }

    func testDefaults() throws {
        let info = try ConnInfo(parsing: "")
        XCTAssertEqual(info.host, "localhost")
        XCTAssertEqual(info.port, 5432)
        XCTAssertEqual(info.user, "postgres")
        XCTAssertNil(info.password)
        XCTAssertNil(info.dbname)
        // Empty values mean "not set", as in libpq.
        let empty = try ConnInfo(parsing: "host='' port='' user='' password=''")
        XCTAssertEqual(empty, ConnInfo())
    }

    func testQuotingAndEscapes() throws {
        let info = try ConnInfo(parsing: #"host=127.0.0.1 port=5432 user=postgres password='a b\' c' dbname=x"#)
        XCTAssertEqual(info.password, "a b' c")
        XCTAssertEqual(info.dbname, "x")
        // A backslash escapes in unquoted values too; a quoted value may hold '=' and backslashes.
        let more = try ConnInfo(parsing: #"password=a\ b\\c dbname='x=y \\ z' user = bob"#)
        XCTAssertEqual(more.password, #"a b\c"#)
        XCTAssertEqual(more.dbname, #"x=y \ z"#)
        XCTAssertEqual(more.user, "bob")
        // White space of every kind separates pairs and may surround '='.
        let spaced = try ConnInfo(parsing: "  host =\tdb.example\n port=\t6000  ")
        XCTAssertEqual(spaced.host, "db.example")
        XCTAssertEqual(spaced.port, 6000)
        // libpq's quirk: after "key=" white space is skipped, so the next token becomes the value.
        let quirk = try ConnInfo(parsing: "dbname= port=7")
        XCTAssertEqual(quirk.dbname, "port=7")
        XCTAssertEqual(quirk.port, 5432)
        // An empty quoted string and a quoted string with only spaces.
        XCTAssertEqual(try ConnInfo(parsing: "application_name='  '").applicationName, "  ")
        // Non-ASCII values pass through.
        XCTAssertEqual(try ConnInfo(parsing: "password='pässwörd ✓'").password, "pässwörd ✓")
    }

    func testOtherParametersAreKept() throws {
        let info = try ConnInfo(parsing: "host=h sslmode=disable connect_timeout=5 options='-c work_mem=64MB' hostaddr=10.0.0.1")
        XCTAssertEqual(info.parameters["sslmode"], "disable")
        XCTAssertEqual(info.parameters["options"], "-c work_mem=64MB")
        XCTAssertEqual(info.connectTimeoutSeconds, 5)
        XCTAssertEqual(info.hostaddr, "10.0.0.1")
    }

    func testKeyValueErrors() {
        assertInvalid("host", contains: "missing \"=\" after \"host\"")
        assertInvalid("host=a port", contains: "missing \"=\" after \"port\"")
        assertInvalid("password='abc", contains: "unterminated quoted string")
        assertInvalid("port=abc", contains: "invalid port \"abc\"")
        assertInvalid("port=70000", contains: "invalid port")
        assertInvalid("=x", contains: "empty name")
        XCTAssertThrowsError(try ConnInfo(parsing: "host=a,b")) { error in
            XCTAssertEqual((error as? PGError)?.code, .unsupported)
        }
    }

    func testURIs() throws {
        let info = try ConnInfo(parsing: "postgresql://alice:s3cret@db.example:6543/mydb?application_name=ps&sslmode=disable")
        XCTAssertEqual(info.user, "alice")
        XCTAssertEqual(info.password, "s3cret")
        XCTAssertEqual(info.host, "db.example")
        XCTAssertEqual(info.port, 6543)
        XCTAssertEqual(info.dbname, "mydb")
        XCTAssertEqual(info.applicationName, "ps")
        XCTAssertEqual(info.parameters["sslmode"], "disable")

        let short = try ConnInfo(parsing: "postgres://host")
        XCTAssertEqual(short.host, "host")
        XCTAssertEqual(short.port, 5432)
        XCTAssertEqual(short.user, "postgres")
        XCTAssertNil(short.dbname)

        XCTAssertEqual(try ConnInfo(parsing: "postgresql://"), ConnInfo())
        XCTAssertEqual(try ConnInfo(parsing: "postgresql:///db").dbname, "db")
        XCTAssertEqual(try ConnInfo(parsing: "postgresql://u@").user, "u")
        XCTAssertEqual(try ConnInfo(parsing: "postgresql://:7000").port, 7000)
        XCTAssertEqual(try ConnInfo(parsing: "postgresql://h?port=7001").port, 7001)
    }

    func testURIPercentDecodingAndIPv6() throws {
        let info = try ConnInfo(parsing: "postgresql://us%40er:p%3Aa%2Fss%20w%25rd@[::1]:5433/d%62?application_name=a%26b")
        XCTAssertEqual(info.user, "us@er")
        XCTAssertEqual(info.password, "p:a/ss w%rd")
        XCTAssertEqual(info.host, "::1")
        XCTAssertEqual(info.port, 5433)
        XCTAssertEqual(info.dbname, "db")
        XCTAssertEqual(info.applicationName, "a&b")
        // '+' stays '+'; a password may contain ':' after the first one.
        let plus = try ConnInfo(parsing: "postgres://u:a+b:c@h")
        XCTAssertEqual(plus.password, "a+b:c")
        // A percent-encoded Unix-socket directory.
        XCTAssertEqual(try ConnInfo(parsing: "postgresql://%2Fvar%2Frun%2Fpostgresql/db").host, "/var/run/postgresql")
        // ssl=true means sslmode=require, as in libpq.
        XCTAssertEqual(try ConnInfo(parsing: "postgresql://h/?ssl=true").parameters["sslmode"], "require")
    }

    func testURIErrors() {
        assertInvalid("postgresql://h/db?novalue", contains: "missing key/value separator")
        assertInvalid("postgresql://h/db?a=b=c", contains: "extra key/value separator")
        assertInvalid("postgresql://u:%zz@h", contains: "invalid percent-encoded token in the password")
        assertInvalid("postgresql://u:%4@h", contains: "invalid percent-encoded token")
        assertInvalid("postgresql://h/%00", contains: "forbidden value %00")
        assertInvalid("postgresql://[::1", contains: "\"]\"")
        assertInvalid("postgresql://h:port/", contains: "invalid port")
        XCTAssertThrowsError(try ConnInfo(parsing: "postgresql://h1:5432,h2:5433/db")) { error in
            XCTAssertEqual((error as? PGError)?.code, .unsupported)
        }
    }

    func testRedactedFormHidesThePasswordAndRoundTrips() throws {
        let info = try ConnInfo(parsing: #"postgresql://bob:top'secret@10.1.2.3:5544/my%20db?application_name=x&sslmode=disable"#)
        XCTAssertFalse(info.redacted.contains("secret"))
        XCTAssertFalse(info.description.contains("secret"))
        XCTAssertFalse("\(info)".contains("secret"))
        XCTAssertEqual(info.redacted, "host=10.1.2.3 port=5544 user=bob dbname='my db' application_name=x sslmode=disable")
        // The full form parses back to the same value, quoting included.
        let full = info.keyValueString(includingPassword: true)
        XCTAssertTrue(full.contains(#"password='top\'secret'"#))
        XCTAssertEqual(try ConnInfo(parsing: full), info)
        var tricky = ConnInfo(host: "h", password: #"a\b 'c'"#, dbname: "")
        tricky.parameters["options"] = "-c x=1"
        XCTAssertEqual(try ConnInfo(parsing: tricky.keyValueString(includingPassword: true)).password, #"a\b 'c'"#)
    }

    func testLSNText() {
        XCTAssertEqual(WireProtocol.parseLSN("16/B374D848"), 0x16_B374_D848)
        XCTAssertEqual(WireProtocol.parseLSN("0/0"), 0)
        XCTAssertEqual(WireProtocol.parseLSN("FFFFFFFF/FFFFFFFF"), UInt64.max)
        XCTAssertNil(WireProtocol.parseLSN("16B374D848"))
        XCTAssertNil(WireProtocol.parseLSN("1/"))
        XCTAssertNil(WireProtocol.parseLSN("123456789/0"))
        XCTAssertNil(WireProtocol.parseLSN("x/1"))
        XCTAssertEqual(WireProtocol.formatLSN(0x16_B374_D848), "16/B374D848")
        XCTAssertEqual(WireProtocol.formatLSN(0x0100_0000), "0/1000000")
    }

    private func assertInvalid(_ text: String, contains fragment: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertThrowsError(try ConnInfo(parsing: text), file: file, line: line) { error in
            guard let error = error as? PGError else { return XCTFail("not a PGError: \(error)", file: file, line: line) }
            XCTAssertEqual(error.code, .invalidArgument, file: file, line: line)
            XCTAssertTrue(error.description.contains(fragment), "\"\(error)\" lacks \"\(fragment)\"", file: file, line: line)
        }
    }
}
