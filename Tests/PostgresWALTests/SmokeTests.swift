import XCTest
@testable import PostgresWAL
final class PostgresWALSmokeTests: XCTestCase { func testModuleLoads() { _ = PostgresWAL.self } }
