import XCTest
@testable import WireProtocol
final class WireProtocolSmokeTests: XCTestCase { func testModuleLoads() { _ = WireProtocol.self } }
