import Foundation
import LSM
import Synchronization
@testable import PostgresWAL
import XCTest

/// The pipe between the decoding and the ingesting thread: order, the bound, the producer's error
/// after the last batch, and a consumer that closes the pipe releasing a blocked producer.
final class RecordPipeTests: XCTestCase {
    private func record(_ i: Int) throws -> DecodedRecord {
        try RecordBuilder(rmgr: .xlog, info: 0x30, mainData: [UInt8](repeating: UInt8(i & 0xFF), count: 4))
            .build(at: LSN(UInt64(0x100_0000 + i * 64)))
    }

    func testBatchesArriveInOrderAndTheBoundHoldsTheProducerBack() throws {
        let pipe = RecordPipe(capacity: 40)
        let batches = try (0..<50).map { b in try (0..<10).map { try record(b * 10 + $0) } }
        let maxWaiting = Mutex(0)
        let pushed = Atomic<Int>(0)
        let producer = Thread {
            for batch in batches {
                XCTAssertTrue(pipe.push(batch))
                pushed.add(1, ordering: .relaxed)
            }
            pipe.finish()
        }
        producer.start()
        var got: [LSN] = []
        var popped = 0
        // Taking nothing for a while: the producer must stop at the bound (4 batches of 10).
        Thread.sleep(forTimeInterval: 0.2)
        XCTAssertLessThanOrEqual(pushed.load(ordering: .relaxed), 4, "the producer ran past the pipe's capacity")
        while let batch = try pipe.pop() {
            popped += 1
            maxWaiting.withLock { $0 = max($0, pushed.load(ordering: .relaxed) - popped) }
            got += batch.map(\.startLSN)
        }
        XCTAssertEqual(got, batches.flatMap { $0 }.map(\.startLSN))
        XCTAssertLessThanOrEqual(maxWaiting.withLock { $0 }, 4)
        XCTAssertNil(try pipe.pop(), "the end stays the end")
    }

    func testTheProducersErrorComesAfterTheLastBatch() throws {
        struct BadWAL: Error {}
        let pipe = RecordPipe()
        XCTAssertTrue(pipe.push([try record(1), try record(2)]))
        pipe.finish(throwing: BadWAL())
        XCTAssertEqual(try pipe.pop()?.count, 2)
        XCTAssertThrowsError(try pipe.pop()) { XCTAssertTrue($0 is BadWAL) }
    }

    func testCloseReleasesABlockedProducer() throws {
        let pipe = RecordPipe(capacity: 1)
        let r = try record(1)
        let results = Mutex<[Bool]>([])
        let done = DispatchSemaphore(value: 0)
        let producer = Thread {
            for _ in 0..<3 { let ok = pipe.push([r]); results.withLock { $0.append(ok) } }
            done.signal()
        }
        producer.start()
        Thread.sleep(forTimeInterval: 0.1)
        XCTAssertEqual(results.withLock { $0 }, [true], "the second push waits for room")
        pipe.close()
        XCTAssertEqual(done.wait(timeout: .now() + 10), .success, "close must release the producer")
        XCTAssertEqual(results.withLock { $0 }, [true, false, false])
    }
}
