import ArgumentParser
import Foundation
import Histogram
import Synchronization
import WireProtocol

#if canImport(Glibc)
import Glibc
#endif

// `pagectl bench getpage`: random GetPage requests against the page service, N connections each with
// Q requests in flight; `pagectl bench echo`: the same measurement over a bare loopback TCP echo,
// the floor the first is compared against.
//
// Both record each request's latency (send to receive, nanoseconds) in an HdrHistogram per client,
// after a warm-up; requests sent during the warm-up are not counted.

struct BenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench",
        abstract: "Benchmark the page service (GetPage) and the network floor (TCP echo).",
        subcommands: [BenchGetPage.self, BenchEcho.self])
}

func monotonicNanos() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
}

/// Latencies up to 10 minutes at 3 significant digits.
func newLatencyHistogram() -> Histogram<UInt64> {
    Histogram<UInt64>(lowestDiscernibleValue: 1, highestTrackableValue: 600_000_000_000, numberOfSignificantValueDigits: .three)
}

/// What one benchmark measured, printed as text or one JSON object.
struct LatencyReport {
    var bench: String
    var requests: UInt64
    var seconds: Double
    var bytesPerRequest: Int
    var histogram: Histogram<UInt64>
    var errors: Int
    /// Parameters, already JSON-encoded, printed before the measurements.
    var parameters: [(String, String)]

    func micros(_ percentile: Double) -> Double {
        requests == 0 ? 0 : Double(histogram.valueAtPercentile(percentile)) / 1000
    }

    var maxMicros: Double { requests == 0 ? 0 : Double(histogram.max) / 1000 }
    var requestsPerSecond: Double { Double(requests) / seconds }
    var megabytesPerSecond: Double { requestsPerSecond * Double(bytesPerRequest) / 1e6 }

    func print(json: Bool) {
        if json {
            emitJSON([("bench", jsonString(bench))] + parameters + [
                ("requests", "\(requests)"), ("seconds", jsonNumber(seconds)),
                ("requests_per_s", jsonNumber(requestsPerSecond)), ("mb_per_s", jsonNumber(megabytesPerSecond)),
                ("p50_us", jsonNumber(micros(50))), ("p90_us", jsonNumber(micros(90))), ("p99_us", jsonNumber(micros(99))),
                ("p99_9_us", jsonNumber(micros(99.9))), ("max_us", jsonNumber(maxMicros)), ("errors", "\(errors)"),
            ])
        } else {
            Swift.print("\(Int(requestsPerSecond.rounded())) requests/s, \(format1(megabytesPerSecond)) MB/s (\(requests) requests in \(format2(seconds)) s), errors \(errors)")
            Swift.print("latency us: p50 \(format1(micros(50)))  p90 \(format1(micros(90)))  p99 \(format1(micros(99)))  p99.9 \(format1(micros(99.9)))  max \(format1(maxMicros))")
        }
    }
}

func jsonString(_ s: String) -> String {
    var out = "\""
    for u in s.unicodeScalars {
        switch u {
        case "\"": out += "\\\""
        case "\\": out += "\\\\"
        case "\n": out += "\\n"
        default:
            if u.value < 0x20 { out += String(format: "\\u%04x", u.value) } else { out.unicodeScalars.append(u) }
        }
    }
    return out + "\""
}

func jsonNumber(_ x: Double) -> String { x.isFinite ? String((x * 1000).rounded() / 1000) : "null" }

/// The phases of a timed run: requests sent before `measureStart` are warm-up, none are sent after
/// `measureEnd`.
struct BenchClock {
    var measureStart: UInt64
    var measureEnd: UInt64

    init(warmup: Double, duration: Double) {
        let now = monotonicNanos()
        measureStart = now + UInt64(warmup * 1e9)
        measureEnd = measureStart + UInt64(duration * 1e9)
    }

    var seconds: Double { Double(measureEnd - measureStart) / 1e9 }
}

/// What one client thread measured.
struct ClientResult {
    var histogram = newLatencyHistogram()
    var requests: UInt64 = 0
    var errors = 0
    var failure: String?
}

/// The block keys of a timeline, weighted by relation size: a uniform block number over all blocks
/// is mapped to its relation by binary search over the cumulative sizes.
struct BlockKeySpace {
    var rels: [PagestreamRelTag] = []
    /// cumulative[i] = blocks of rels[0...i].
    var cumulative: [UInt64] = []
    var totalBlocks: UInt64 { cumulative.last ?? 0 }

    mutating func add(_ rel: PagestreamRelTag, blocks: UInt32) {
        guard blocks > 0 else { return }
        rels.append(rel)
        cumulative.append(totalBlocks + UInt64(blocks))
    }

    func pick(_ rng: inout FastRandom) -> (PagestreamRelTag, UInt32) {
        let n = rng.next() % totalBlocks
        var lo = 0, hi = cumulative.count - 1
        while lo < hi {
            let mid = (lo + hi) / 2
            if cumulative[mid] > n { hi = mid } else { lo = mid + 1 }
        }
        let before = lo == 0 ? 0 : cumulative[lo - 1]
        return (rels[lo], UInt32(n - before))
    }
}

struct BenchGetPage: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "getpage",
        abstract: "Random GetPage requests over the timeline's relations (main forks, weighted by size): throughput and latency percentiles.",
        discussion: """
            The relations come from the HTTP API's `relations` endpoint, their sizes from pagestream \
            Nblocks. N client threads each keep Q requests in flight on one connection for the duration, \
            after a 1 s warm-up. Exit status 1 if any request failed.
            """)

    @Option(help: "The page service (libpq port), HOST:PORT.") var server = "127.0.0.1:64000"
    @Option(help: "Tenant id.") var tenant: String
    @Option(help: "Timeline id.") var timeline: String
    @Option(help: "Client connections (one thread each).") var clients = 1
    @Option(help: "Requests in flight per client (pipelined).") var depth = 1
    @Option(help: "Seconds to measure (after the warm-up).") var duration = 10.0
    @Option(help: "Seconds of warm-up, not counted.") var warmup = 1.0
    @Option(help: "LSN to read at: 'latest' or X/Y.") var lsn = "latest"
    @Option(help: "The HTTP API, HOST:PORT (default: the server's host, port 9898).") var http: String?
    @Option(help: "Random seed (default: a random one, printed).") var seed: UInt64?
    @Option(help: "Pagestream protocol version, v2 or v3.") var `protocol`: PagestreamVersion = .v3
    @Flag(help: "Print one JSON object.") var json = false

    func validate() throws {
        guard clients >= 1, depth >= 1 else { throw ValidationError("--clients and --depth must be at least 1") }
        guard duration > 0, warmup >= 0 else { throw ValidationError("--duration must be positive, --warmup not negative") }
    }

    func run() throws {
        let (host, port) = parseHostPort(server)
        let at = parseRequestLSN(lsn)
        let seed = self.seed ?? UInt64.random(in: 1...UInt64(UInt32.max))
        let version = `protocol`
        let keys = loadKeySpace(host: host, port: port, at: at, version: version)
        guard keys.totalBlocks > 0 else { fail("the timeline has no main fork with blocks at \(lsnText(at))") }
        if !json {
            print("bench getpage: \(server) v\(version == .v2 ? 2 : 3), \(clients) client(s) x depth \(depth), \(format1(duration)) s after \(format1(warmup)) s warm-up, "
                  + "lsn \(lsnText(at)), seed \(seed), \(keys.rels.count) relations, \(keys.totalBlocks) blocks")
        }
        let clock = BenchClock(warmup: warmup, duration: duration)
        let results = Mutex<[ClientResult]>([])
        let (tenant, timeline, depth) = (self.tenant, self.timeline, self.depth)
        let workers = (0..<clients).map { index in
            Worker {
                let r = runGetPageClient(host: host, port: port, tenant: tenant, timeline: timeline, version: version, at: at,
                                         depth: depth, keys: keys, seed: seed &+ UInt64(index) &* 0x9E37_79B9_7F4A_7C15, clock: clock)
                results.withLock { $0.append(r) }
            }
        }
        workers.forEach { $0.start() }
        workers.forEach { $0.join() }
        let all = results.withLock { $0 }
        var histogram = newLatencyHistogram()
        var requests: UInt64 = 0
        var errors = 0
        for (i, r) in all.enumerated() {
            histogram.add(r.histogram)
            requests += r.requests
            errors += r.errors
            if let f = r.failure { writeStderr("pagectl: client \(i + 1): \(r.errors) error(s), the first: \(f)\n") }
        }
        let report = LatencyReport(
            bench: "getpage", requests: requests, seconds: clock.seconds, bytesPerRequest: 8192, histogram: histogram, errors: errors,
            parameters: [("server", jsonString(server)), ("tenant", jsonString(tenant)), ("timeline", jsonString(timeline)),
                         ("clients", "\(clients)"), ("depth", "\(depth)"), ("duration_s", jsonNumber(duration)), ("warmup_s", jsonNumber(warmup)),
                         ("lsn", jsonString(lsnText(at))), ("protocol", jsonString(version == .v2 ? "v2" : "v3")), ("seed", "\(seed)"),
                         ("relations", "\(keys.rels.count)"), ("blocks", "\(keys.totalBlocks)")])
        report.print(json: json)
        if errors > 0 { throw ExitCode(1) }
    }

    /// Main forks from the HTTP API, their sizes at `at` from pagestream Nblocks (pipelined).
    private func loadKeySpace(host: String, port: Int, at: UInt64, version: PagestreamVersion) -> BlockKeySpace {
        let address = httpAddress(explicit: http, server: server)
        var path = "/v1/tenant/\(tenant)/timeline/\(timeline)/relations"
        if at != PagestreamHeader.latest { path += "?lsn=\(WireProtocol.formatLSN(at))" }
        let rels: [[String: Any]]
        do {
            let response = try HTTPClient(address: address).get(path)
            guard response.status == 200, let o = try JSONSerialization.jsonObject(with: Data(response.body)) as? [String: Any],
                  let list = o["relations"] as? [[String: Any]] else { fail("\(address)\(path): \(response.status) \(response.text)") }
            rels = list
        } catch { fail("\(address): \(error)") }
        let tags: [PagestreamRelTag] = rels.compactMap { r in
            guard let spc = r["spc"] as? Int, let db = r["db"] as? Int, let rel = r["rel"] as? Int, let fork = r["fork"] as? Int,
                  fork == 0 else { return nil }
            return PagestreamRelTag(spcNode: UInt32(spc), dbNode: UInt32(db), relNode: UInt32(rel), forkNumber: 0)
        }
        var keys = BlockKeySpace()
        do {
            let client = try PageServiceClient.connect(host: host, port: port, tenant: tenant, timeline: timeline, version: version)
            defer { client.close() }
            var start = 0
            while start < tags.count {
                let batch = tags[start..<min(tags.count, start + 256)]
                for (i, tag) in batch.enumerated() {
                    client.send(PagestreamRequest(header: pagestreamHeader(at, requestId: UInt64(start + i)), body: .nblocks(tag)))
                }
                for tag in batch {
                    switch try client.receive() {
                    case .nblocks(let n): keys.add(tag, blocks: n)
                    case .error(let m): fail("Nblocks \(tag): \(m)")
                    case let other: fail("Nblocks \(tag): answered with a response of tag \(other.tag)")
                    }
                }
                start += batch.count
            }
        } catch { fail("\(server): \(error)") }
        return keys
    }
}

/// One client: a connection with `depth` GetPage requests in flight until the clock's end.
private func runGetPageClient(host: String, port: Int, tenant: String, timeline: String, version: PagestreamVersion, at: UInt64,
                              depth: Int, keys: BlockKeySpace, seed: UInt64, clock: BenchClock) -> ClientResult {
    var result = ClientResult()
    let client: PageServiceClient
    do {
        client = try PageServiceClient.connect(host: host, port: port, tenant: tenant, timeline: timeline, version: version)
    } catch {
        result.errors += 1
        result.failure = "connect: \(error)"
        return result
    }
    defer { client.close() }
    var rng = FastRandom(seed: seed)
    // Send times of the requests in flight, oldest at `head` (answers come in order).
    var sentAt = [UInt64](repeating: 0, count: depth)
    var head = 0, inFlight = 0
    var requestId: UInt64 = 0
    func sendOne() throws {
        let (rel, block) = keys.pick(&rng)
        requestId &+= 1
        client.send(PagestreamRequest(header: pagestreamHeader(at, requestId: requestId), body: .getPage(rel, block: block)))
        sentAt[(head + inFlight) % depth] = monotonicNanos()
        inFlight += 1
        // No flush: `receive` writes the queued requests in one go before it would wait for data.
    }
    do {
        while inFlight < depth { try sendOne() }
        while inFlight > 0 {
            let response = try client.receive()
            let now = monotonicNanos()
            let sent = sentAt[head]
            head = (head + 1) % depth
            inFlight -= 1
            let counted = sent >= clock.measureStart && sent < clock.measureEnd
            switch response {
            case .page(let p) where p.count == 8192:
                if counted {
                    result.histogram.record(max(1, now - sent))
                    result.requests += 1
                }
            case .error(let message):
                result.errors += 1
                if result.failure == nil { result.failure = "GetPage error response: \(message)" }
            default:
                result.errors += 1
                if result.failure == nil { result.failure = "GetPage answered with a response of tag \(response.tag)" }
            }
            if now < clock.measureEnd { try sendOne() }
        }
    } catch {
        result.errors += 1
        result.failure = "\(error)"
    }
    return result
}

// MARK: - echo

struct BenchEcho: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "echo",
        abstract: "The network floor: round trips of SIZE bytes to a loopback TCP echo server thread (blocking sockets, TCP_NODELAY).")

    @Option(help: "Bytes per round trip.") var size = 8192
    @Option(help: "Seconds to measure (after the warm-up).") var duration = 10.0
    @Option(help: "Seconds of warm-up, not counted.") var warmup = 1.0
    @Option(help: "Messages in flight.") var depth = 1
    @Flag(help: "Print one JSON object.") var json = false

    func validate() throws {
        guard size >= 1, depth >= 1 else { throw ValidationError("--size and --depth must be at least 1") }
        guard duration > 0, warmup >= 0 else { throw ValidationError("--duration must be positive, --warmup not negative") }
    }

    func run() throws {
        let listener = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard listener >= 0 else { fail("socket: \(String(cString: strerror(errno)))") }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = UInt32(0x7F00_0001).bigEndian
        addr.sin_port = 0
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &addr) { p in
            p.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(listener, $0, len) == 0 && listen(listener, 1) == 0 && getsockname(listener, $0, &len) == 0 }
        }
        guard bound else { fail("bind/listen on 127.0.0.1: \(String(cString: strerror(errno)))") }
        let size = self.size
        // With many bytes in flight both ends write before reading: socket buffers large enough for
        // all of them keep the blocking writes from waiting on each other.
        let buffers = depth * size > 32 * 1024 ? min(4 << 20, 2 * depth * size + 65536) : 0
        let echo = Worker {
            let fd = accept(listener, nil, nil)
            guard fd >= 0 else { return }
            setNoDelay(fd)
            setBuffers(fd, buffers)
            var buffer = [UInt8](repeating: 0, count: size)
            while buffer.withUnsafeMutableBytes({ readFully(fd, $0) }) {
                guard buffer.withUnsafeBytes({ writeAll(fd, $0) }) else { break }
            }
            close(fd)
        }
        echo.start()
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        setBuffers(fd, buffers)
        let connected = withUnsafePointer(to: &addr) { p in
            p.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0 }
        }
        guard fd >= 0, connected else { fail("connect to the echo thread: \(String(cString: strerror(errno)))") }
        setNoDelay(fd)
        if !json {
            print("bench echo: 127.0.0.1 loopback, \(size) bytes x depth \(depth), \(format1(duration)) s after \(format1(warmup)) s warm-up")
        }
        var message = [UInt8](repeating: 0, count: size)
        for i in 0..<size { message[i] = UInt8(truncatingIfNeeded: i &* 31 &+ 7) }
        var reply = [UInt8](repeating: 0, count: size)
        var result = ClientResult()
        let clock = BenchClock(warmup: warmup, duration: duration)
        var sentAt = [UInt64](repeating: 0, count: depth)
        var head = 0, inFlight = 0
        func sendOne() -> Bool {
            sentAt[(head + inFlight) % depth] = monotonicNanos()
            inFlight += 1
            return message.withUnsafeBytes { writeAll(fd, $0) }
        }
        var ok = true
        while ok && inFlight < depth { ok = sendOne() }
        while ok && inFlight > 0 {
            guard reply.withUnsafeMutableBytes({ readFully(fd, $0) }) else { ok = false; break }
            let now = monotonicNanos()
            let sent = sentAt[head]
            head = (head + 1) % depth
            inFlight -= 1
            if reply != message { result.errors += 1 }
            if sent >= clock.measureStart && sent < clock.measureEnd {
                result.histogram.record(max(1, now - sent))
                result.requests += 1
            }
            if now < clock.measureEnd { ok = sendOne() }
        }
        if !ok { result.errors += 1; writeStderr("pagectl: echo connection failed: \(String(cString: strerror(errno)))\n") }
        shutdown(fd, Int32(SHUT_RDWR))
        close(fd)
        echo.join()
        close(listener)
        let report = LatencyReport(
            bench: "echo", requests: result.requests, seconds: clock.seconds, bytesPerRequest: size, histogram: result.histogram,
            errors: result.errors,
            parameters: [("size", "\(size)"), ("depth", "\(depth)"), ("duration_s", jsonNumber(duration)), ("warmup_s", jsonNumber(warmup))])
        report.print(json: json)
        if result.errors > 0 { throw ExitCode(1) }
    }
}

func setNoDelay(_ fd: Int32) {
    var one: Int32 = 1
    setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
}

/// Socket send and receive buffers of `bytes` (0: the kernel's autotuning).
func setBuffers(_ fd: Int32, _ bytes: Int) {
    guard bytes > 0 else { return }
    var n = Int32(bytes)
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &n, socklen_t(MemoryLayout<Int32>.size))
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &n, socklen_t(MemoryLayout<Int32>.size))
}

/// Fills `buffer` from `fd`; false at end of stream or on an error.
func readFully(_ fd: Int32, _ buffer: UnsafeMutableRawBufferPointer) -> Bool {
    var done = 0
    while done < buffer.count {
        let n = read(fd, buffer.baseAddress! + done, buffer.count - done)
        if n < 0 && errno == EINTR { continue }
        if n <= 0 { return false }
        done += n
    }
    return true
}
