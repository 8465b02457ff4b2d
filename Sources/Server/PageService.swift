// The page service: what computes ask on the libpq port.
//
// Commands (simple query): `pagestream_v2|v3 <tenant> <timeline>` (COPY BOTH, Neon's binary messages),
// `basebackup <tenant> <timeline> [lsn|latest]`, `fullbackup <tenant> <timeline> [lsn [prev_lsn]]`
// (COPY OUT tar streams, see PageServiceBackup.swift).
//
// Pagestream processing
// =====================
// Up to `pagestream_threads` connections at a time (default two per core), COPY BOTH is served by a
// thread of the connection's own, with blocking socket calls (`serveDetached`, DetachedCopyBoth.swift):
// at a warm depth-1 GetPage the event loop's wake-ups and pipeline cost as much server CPU as the
// lookup itself. The batching rule below is the same there. Beyond that many connections (where
// threads would contend for the cores and locks, and the event loops batch across connections), or
// when the socket cannot be taken over:
// Requests are decoded on the connection's event loop into a queue. One batch at a time (half of the
// queued requests, at most `batchSize`, so that a pipelining client takes and refills one half
// while the server answers the other) is answered: on the event loop itself when no request has to wait for
// WAL, else on a worker thread (see `kick`). Answering resolves each request's read LSN, reads every
// GetPage of the batch with one batched store lookup (one io_uring submission for their index blocks,
// one for their data blocks), and writes the responses in request order in one flush. When the queue holds `maxInflight` requests the connection stops
// reading until it drains to half, so a client cannot make the server buffer without bound.
//
// Read LSN of a request (request_lsn R, not_modified_since N, last_record_lsn L):
// - R = latest: wait until L >= N, read at L.
// - otherwise: N > R is an error; R below the GC cutoff or the timeline's start is an error naming
//   both LSNs; wait until L >= N (the page cannot have changed between N and R), read at min(R, L).
// - a wait longer than wait_lsn_timeout is an Error response naming the LSNs.
//
// Invariants: responses leave in request order; a failing request gets an Error (tag 103) and the
// stream goes on; a malformed message ends the connection with an ErrorResponse naming the problem.

import Foundation
import LSM
import NIOCore
import PostgresWAL
import Prometheus
import Synchronization
import WireProtocol

/// Metrics of the page service (shared by all connections).
final class PageServiceMetrics: Sendable {
    let getPageLatency: DurationHistogram
    let requests: [String: Counter]
    let layersVisited: Counter
    let redoRecordsApplied: Counter
    let getPageCount: Counter
    let waitLSNSeconds: DurationHistogram
    let connections: Gauge
    let pagestreamThreads: Gauge
    let batchSize: ValueHistogram
    let layersPerGetPage: ValueHistogram

    init(_ registry: PrometheusCollectorRegistry) {
        getPageLatency = registry.makeDurationHistogram(
            name: "pageserver_getpage_seconds",
            buckets: [.microseconds(10), .microseconds(25), .microseconds(50), .microseconds(100), .microseconds(250),
                      .microseconds(500), .milliseconds(1), .milliseconds(2), .milliseconds(5), .milliseconds(10),
                      .milliseconds(50), .milliseconds(100), .seconds(1)],
            help: "GetPage latency from request received to response sent")
        var r: [String: Counter] = [:]
        for kind in ["exists", "nblocks", "get_page", "db_size", "get_slru_segment", "error"] {
            r[kind] = registry.makeCounter(name: "pageserver_page_service_requests_total", labels: [("type", kind)],
                                           help: "Page service requests by type (error: answered with an Error)")
        }
        requests = r
        layersVisited = registry.makeCounter(name: "pageserver_getpage_layers_visited_total",
                                             help: "Layers visited by GetPage lookups (divide by pageserver_getpage_total)")
        redoRecordsApplied = registry.makeCounter(name: "pageserver_getpage_redo_records_total",
                                                  help: "WAL records applied by GetPage reconstructions (divide by pageserver_getpage_total)")
        getPageCount = registry.makeCounter(name: "pageserver_getpage_total", help: "GetPage requests answered with a page")
        waitLSNSeconds = registry.makeDurationHistogram(
            name: "pageserver_wait_lsn_seconds",
            buckets: [.milliseconds(1), .milliseconds(10), .milliseconds(100), .seconds(1), .seconds(10), .seconds(60), .seconds(300)],
            help: "Time page service requests waited for WAL to arrive")
        connections = registry.makeGauge(name: "pageserver_page_service_connections", help: "Open page service connections")
        pagestreamThreads = registry.makeGauge(name: "pageserver_pagestream_threads",
                                               help: "Pagestream connections served by a thread of their own (at most pagestream_threads)")
        batchSize = registry.makeValueHistogram(name: "pageserver_pagestream_batch_size", buckets: [1, 2, 4, 8, 16, 32, 64],
                                                help: "Pipelined pagestream requests processed together")
        layersPerGetPage = registry.makeValueHistogram(name: "pageserver_getpage_layers_visited", buckets: [1, 2, 3, 4, 5, 6, 8, 12, 16, 32, 64],
                                                       help: "Layers (in-memory and files, ancestors' included) one GetPage visited")
    }
}

struct PageServiceSettings: Sendable {
    var maxInflight = 256
    var batchSize = 32
    var inlineBatchLimit = 2
    var waitLSNTimeoutSeconds: Double = 300
    /// Pagestream connections served by a thread of their own (see `serveDetached`), shared by all
    /// sessions.
    var pagestreamThreads = PagestreamThreadSlots(0)
}

/// A count of pagestream threads against a limit.
final class PagestreamThreadSlots: Sendable {
    let limit: Int
    private let used = Atomic<Int>(0)

    init(_ limit: Int) { self.limit = limit }

    /// Takes a slot; false when all are taken.
    func take() -> Bool {
        if used.add(1, ordering: .relaxed).newValue <= limit { return true }
        used.subtract(1, ordering: .relaxed)
        return false
    }

    func give() { used.subtract(1, ordering: .relaxed) }
}

/// One connection's page-service session. Its mutable state is touched only on the event loop.
final class PageServiceSession: PGServerSessionDelegate, @unchecked Sendable {
    let repository: Repository
    let metrics: PageServiceMetrics
    let settings: PageServiceSettings

    private struct QueuedRequest {
        var request: PagestreamRequest
        var received: UInt64
    }

    private var timeline: Timeline?
    private var version: PagestreamVersion = .v3
    private var queue: [QueuedRequest] = []
    private var queueHead = 0
    private var busy = false
    private var paused = false
    private var closed = false

    init(repository: Repository, metrics: PageServiceMetrics, settings: PageServiceSettings) {
        self.repository = repository
        self.metrics = metrics
        self.settings = settings
        metrics.connections.increment()
    }

    func authenticate(user: String, parameters: [String: String], connection: PGServerConnection) throws {
        // Trust for now; token authentication plugs in here.
    }

    func query(_ text: String, connection: PGServerConnection) {
        let words = text.split(whereSeparator: { $0 == " " || $0 == "\n" || $0 == "\t" || $0 == "\r" }).map(String.init)
        let command = words.first?.lowercased().trimmingCharacters(in: CharacterSet(charactersIn: ";")) ?? ""
        switch command {
        case "pagestream_v2", "pagestream_v3":
            guard words.count == 3 else {
                return fail(connection, "usage: \(command) <tenant_id> <timeline_id>", code: "42601")
            }
            do {
                timeline = try findTimeline(words[1], words[2])
            } catch {
                return fail(connection, "\(error)", code: "58P01")
            }
            version = command == "pagestream_v2" ? .v2 : .v3
            if let timeline, settings.pagestreamThreads.take() {
                let version = self.version, slots = settings.pagestreamThreads, gauge = metrics.pagestreamThreads
                gauge.increment()
                if connection.detachForCopyBoth({ stream in
                    defer {
                        gauge.decrement()
                        slots.give()
                    }
                    self.serveDetached(stream, timeline, version)
                }) { return }
                gauge.decrement()
                slots.give()
            }
            connection.startCopyBoth()
        case "basebackup", "fullbackup":
            startBackup(command, Array(words.dropFirst()), connection)
        case "":
            connection.sendCommandComplete("EMPTY", readyForQuery: true)
        default:
            fail(connection, "unknown page service command \"\(words.first ?? "")\" (expected pagestream_v2, pagestream_v3, basebackup or fullbackup)", code: "42601")
        }
    }

    func fail(_ connection: PGServerConnection, _ message: String, code: String) {
        connection.sendError(message, code: code)
        connection.sendReadyForQuery()
    }

    func findTimeline(_ tenant: String, _ timeline: String) throws -> Timeline {
        guard let t = TenantId(parsing: tenant) else { throw APIError.badRequest("invalid tenant id \"\(tenant)\": expected 32 hex digits") }
        guard let tl = TimelineId(parsing: timeline) else { throw APIError.badRequest("invalid timeline id \"\(timeline)\": expected 32 hex digits") }
        return try repository.timeline(t, tl)
    }

    func copyData(_ bytes: ByteBuffer, connection: PGServerConnection) {
        guard !closed else { return }
        let decoded = bytes.withUnsafeReadableBytes { raw in
            Result { () throws(PagestreamFormatError) in try PagestreamRequest.decode(raw, version) }
        }
        switch decoded {
        case .failure(let error):
            closed = true
            connection.sendError("malformed pagestream request: \(error)", code: "08P01", fatal: true)
            connection.close()
        case .success(let request):
            queue.append(QueuedRequest(request: request, received: DispatchTime.now().uptimeNanoseconds))
            if queue.count - queueHead >= settings.maxInflight && !paused {
                paused = true
                connection.setReadingPaused(true)
            }
        }
    }

    /// The requests one socket read brought are queued: answer them (as one batch when they fit).
    func readComplete(connection: PGServerConnection) {
        kick(connection)
    }

    func copyEnded(connection: PGServerConnection) {}

    func closed(connection: PGServerConnection) {
        closed = true
        metrics.connections.decrement()
    }

    /// Starts the next batch if none is running (event loop).
    ///
    /// A small batch (at most `inlineBatchLimit` requests: a client that does not pipeline much) whose
    /// requests need no waiting for WAL is answered right here on the event loop: for a warm page that
    /// is a few microseconds of work, and two thread hops (to a worker and back) would cost more than
    /// the lookup; a cold read blocks this event loop for one io_uring round trip. Bigger batches go to a
    /// worker thread, so that the event loop decodes and writes while the worker reads (a deeply
    /// pipelined client keeps two cores busy), and so do batches that must wait for WAL, which may
    /// block up to wait_lsn_timeout without holding up the event loop.
    private func kick(_ connection: PGServerConnection) {
        var rounds = 0
        while !busy, !closed, queueHead < queue.count, let timeline {
            // Half of what is queued (at most batchSize): while a worker answers one half, the
            // client takes the answers already sent and refills the other, so that neither side
            // waits for the other to finish a whole window of requests.
            let queued = queue.count - queueHead
            let take = queued <= settings.inlineBatchLimit ? queued : min(settings.batchSize, (queued + 1) / 2)
            let end = queueHead + take
            let batch = Array(queue[queueHead..<end])
            queueHead = end
            if queueHead == queue.count {
                queue.removeAll(keepingCapacity: true)
                queueHead = 0
            }
            let last = timeline.store.lastRecordLSN.rawValue
            let needsWait = batch.contains { $0.request.header.notModifiedSince > last }
            if !needsWait && batch.count <= settings.inlineBatchLimit && rounds < 8 {
                rounds += 1
                answer(batch, timeline, connection)
                resumeReadingIfDrained(connection)
                continue
            }
            if !needsWait && batch.count <= settings.inlineBatchLimit {
                // Let other connections of this event loop have their turn.
                connection.eventLoop.execute { self.kick(connection) }
                return
            }
            busy = true
            DispatchQueue.global().async {
                self.answer(batch, timeline, connection)
                connection.eventLoop.execute {
                    self.busy = false
                    self.resumeReadingIfDrained(connection)
                    self.kick(connection)
                }
            }
            return
        }
    }

    private func resumeReadingIfDrained(_ connection: PGServerConnection) {
        if paused && queue.count - queueHead <= settings.maxInflight / 2 {
            paused = false
            connection.setReadingPaused(false)
        }
    }

    /// Answers `batch` and sends the responses in one write (any thread).
    private func answer(_ batch: [QueuedRequest], _ timeline: Timeline, _ connection: PGServerConnection) {
        let responses = PagestreamWorker(timeline: timeline, metrics: metrics, settings: settings).answer(batch.map(\.request))
        var out = connection.allocator().buffer(capacity: batch.count * 8300)
        var payload: [UInt8] = []
        payload.reserveCapacity(8300)
        for (i, q) in batch.enumerated() {
            payload.removeAll(keepingCapacity: true)
            responses[i].encode(answering: q.request, version, into: &payload)
            out.writeInteger(UInt8(ascii: "d"))
            out.writeInteger(Int32(payload.count + 4))
            out.writeBytes(payload)
        }
        connection.send(out)
        let now = DispatchTime.now().uptimeNanoseconds
        for (i, q) in batch.enumerated() {
            if case .page = responses[i] { metrics.getPageLatency.recordNanoseconds(Int64(now &- q.received)) }
        }
        metrics.batchSize.record(Double(batch.count))
    }
}

extension PageServiceSession {
    /// A pagestream on a thread of its own (the connection detached from the event loop): read what
    /// the client has sent (blocking only when nothing is queued), answer half of the queue at a time
    /// (at most `batchSize`; everything when at most `inlineBatchLimit` are queued) with one batched
    /// lookup, write the answers in one send, pick up what arrived meanwhile without blocking, and so
    /// on. Requests that must wait for WAL block this thread only. At `maxInflight` queued requests
    /// the thread stops reading, so the client is held by TCP flow control.
    func serveDetached(_ stream: PGDetachedCopyBoth, _ timeline: Timeline, _ version: PagestreamVersion) {
        var queue: [(request: PagestreamRequest, received: UInt64)] = []
        var head = 0
        var ending: DetachedMessage?
        let worker = PagestreamWorker(timeline: timeline, metrics: metrics, settings: settings)
        // Reads messages into the queue until COPY BOTH ends, the queue is full, or (unless `wait`)
        // nothing more is there. Returns false after a malformed request (the stream is closed).
        func pull(wait: Bool) throws -> Bool {
            while ending == nil && queue.count - head < settings.maxInflight {
                guard let m = try stream.next(wait: wait && queue.count == head) else { return true }
                switch m {
                case .copyData(let raw):
                    do {
                        queue.append((try PagestreamRequest.decode(raw, version), DispatchTime.now().uptimeNanoseconds))
                    } catch {
                        stream.sendFatal("malformed pagestream request: \(error)")
                        stream.close()
                        return false
                    }
                case .copyDone, .end:
                    ending = m
                case .unexpected(let type):
                    stream.appendError("unexpected message \(PGDetachedCopyBoth.printable(type)) in state copyBoth", code: "08P01")
                    try stream.flush()
                }
                if !wait && !stream.hasBufferedMessage && queue.count > head { return true }
            }
            return true
        }
        do {
            try stream.flush()  // CopyBothResponse
            while true {
                guard try pull(wait: true) else { return }
                while head < queue.count {
                    let queued = queue.count - head
                    let take = queued <= settings.inlineBatchLimit ? queued : min(settings.batchSize, (queued + 1) / 2)
                    let batch = queue[head..<(head + take)]
                    head += take
                    let responses = worker.answer(batch.map(\.request))
                    for (i, q) in zip(batch.indices, batch) {
                        stream.appendCopyData { out in responses[i - batch.startIndex].encode(answering: q.request, version, into: &out) }
                    }
                    try stream.flush()
                    let now = DispatchTime.now().uptimeNanoseconds
                    for (i, q) in zip(batch.indices, batch) {
                        if case .page = responses[i - batch.startIndex] { metrics.getPageLatency.recordNanoseconds(Int64(now &- q.received)) }
                    }
                    metrics.batchSize.record(Double(take))
                    if head == queue.count {
                        queue.removeAll(keepingCapacity: true)
                        head = 0
                    }
                    // What the client sent while this batch was answered joins the queue.
                    guard try pull(wait: false) else { return }
                }
                if let ending {
                    if case .copyDone = ending { stream.finishCopyBoth() } else { stream.close() }
                    return
                }
            }
        } catch {
            stream.close()
        }
    }
}

/// Answers a batch of pagestream requests against one timeline (on a worker thread).
struct PagestreamWorker {
    let timeline: Timeline
    let metrics: PageServiceMetrics
    let settings: PageServiceSettings

    struct RequestError: Error {
        var message: String
    }

    static let zeroPage = [UInt8](repeating: 0, count: 8192)

    func answer(_ requests: [PagestreamRequest]) -> [PagestreamResponse] {
        var responses = [PagestreamResponse?](repeating: nil, count: requests.count)
        var pageLookups: [(index: Int, key: Key, lsn: LSN)] = []
        for (i, r) in requests.enumerated() {
            do {
                let lsn = try readLSN(r.header)
                switch r.body {
                case .getPage(let rel, let block):
                    metrics.requests["get_page"]!.increment()
                    pageLookups.append((i, KeySpace.relationBlock(relTag(rel), block), lsn))
                case .exists(let rel):
                    metrics.requests["exists"]!.increment()
                    responses[i] = .exists(try relationSize(relTag(rel), at: lsn).exists)
                case .nblocks(let rel):
                    metrics.requests["nblocks"]!.increment()
                    let tag = relTag(rel)
                    let s = try relationSize(tag, at: lsn)
                    if !s.exists && tag.fork == ForkNumber.main.rawValue {
                        throw RequestError(message: "relation \(rel) does not exist at LSN \(lsn)")
                    }
                    responses[i] = .nblocks(s.exists ? s.nblocks : 0)
                case .dbSize(let db):
                    metrics.requests["db_size"]!.increment()
                    responses[i] = .dbSize(try databaseSize(db, at: lsn))
                case .getSlruSegment(let kind, let segment):
                    metrics.requests["get_slru_segment"]!.increment()
                    responses[i] = .slruSegment(try slruSegment(kind, segment, at: lsn))
                }
            } catch let e as RequestError {
                responses[i] = .error(e.message)
            } catch {
                responses[i] = .error("\(error)")
            }
        }
        if !pageLookups.isEmpty {
            var stats = ReadStats()
            stats.layersPerLookup = []
            let results = timeline.store.get(pageLookups.map { ($0.key, $0.lsn) }, redo: timeline.redo, stats: &stats)
            for (j, lookup) in pageLookups.enumerated() {
                switch results[j] {
                case .success(let page?) where page.count == 8192:
                    responses[lookup.index] = .page(page)
                case .success(nil):
                    // Inside a relation, a block nothing was ever stored for is what PostgreSQL has on
                    // disk after an extension: zeros. (PostgreSQL itself never reads past the end.)
                    responses[lookup.index] = .page(Self.zeroPage)
                case .success(let page?):
                    responses[lookup.index] = .error("page \(lookup.key) at LSN \(lookup.lsn) has \(page.count) bytes, not 8192")
                case .failure(let e):
                    responses[lookup.index] = .error("cannot reconstruct page \(lookup.key) at LSN \(lookup.lsn): \(e)")
                }
            }
            metrics.getPageCount.increment(by: Int64(pageLookups.count))
            metrics.layersVisited.increment(by: Int64(stats.layersVisited))
            for n in stats.layersPerLookup ?? [] { metrics.layersPerGetPage.record(Int64(n)) }
            metrics.redoRecordsApplied.increment(by: Int64(stats.recordsApplied))
        }
        let out = responses.map { $0 ?? .error("internal error: request not answered") }
        let errors = out.reduce(0) { n, r in if case .error = r { return n + 1 } else { return n } }
        if errors > 0 { metrics.requests["error"]!.increment(by: Int64(errors)) }
        return out
    }

    func relTag(_ r: PagestreamRelTag) -> RelTag {
        RelTag(spc: r.spcNode, db: r.dbNode, rel: r.relNode, fork: r.forkNumber)
    }

    /// The LSN to read a request at (see the file's design note); waits for WAL when needed.
    func readLSN(_ h: PagestreamHeader) throws -> LSN {
        let store = timeline.store
        let notModifiedSince = LSN(h.notModifiedSince)
        if h.requestLSN != PagestreamHeader.latest {
            let request = LSN(h.requestLSN)
            if notModifiedSince > request {
                throw RequestError(message: "not_modified_since \(notModifiedSince) is above request_lsn \(request)")
            }
            do { try timeline.checkReadable(request) } catch let e as APIError {
                throw RequestError(message: "request_lsn: \(e.message)")
            }
        }
        try waitFor(notModifiedSince, requested: h.requestLSN)
        let last = store.lastRecordLSN
        return h.requestLSN == PagestreamHeader.latest ? last : min(LSN(h.requestLSN), last)
    }

    private func waitFor(_ lsn: LSN, requested: UInt64) throws {
        let store = timeline.store
        if store.lastRecordLSN >= lsn { return }
        let started = DispatchTime.now().uptimeNanoseconds
        let deadline = Date().addingTimeInterval(settings.waitLSNTimeoutSeconds)
        let ok = timeline.lsnWaiter.wait(until: { store.lastRecordLSN >= lsn }, deadline: deadline)
        metrics.waitLSNSeconds.recordNanoseconds(Int64(DispatchTime.now().uptimeNanoseconds - started))
        if !ok {
            let requestText = requested == PagestreamHeader.latest ? "latest" : "\(LSN(requested))"
            throw RequestError(message: "timed out after \(settings.waitLSNTimeoutSeconds) s waiting for WAL up to \(lsn) (request_lsn \(requestText)); timeline \(timeline.timelineId) has ingested up to \(store.lastRecordLSN)")
        }
    }

    /// Size and existence of a relation fork at `lsn`, from the cache when it can answer.
    func relationSize(_ rel: RelTag, at lsn: LSN) throws -> (nblocks: UInt32, exists: Bool) {
        if let hit = timeline.relSizes.lookup(rel, at: lsn) { return hit }
        let lastObserved = timeline.store.lastRecordLSN
        let results = timeline.store.get([(KeySpace.relDir(rel.database), lsn), (KeySpace.relationSize(rel), lsn)], redo: ImageOnlyRedo())
        let dir = try results[0].get().map { try RelDirectory(decoding: $0) }
        let exists = dir?.entries.contains(rel.entry) ?? false
        let nblocks = exists ? (try results[1].get().map { try SizeValue.decode($0) } ?? 0) : 0
        if lsn == lastObserved { timeline.relSizes.fill(rel, at: lsn, nblocks: nblocks, exists: exists) }
        return (nblocks, exists)
    }

    func databaseSize(_ dbNode: UInt32, at lsn: LSN) throws -> Int64 {
        let db = DatabaseTag(spc: KeySpace.defaultTablespace, db: dbNode)
        guard let dirBytes = try timeline.store.get(KeySpace.relDir(db), at: lsn, redo: ImageOnlyRedo()) else {
            throw RequestError(message: "database \(dbNode) does not exist at LSN \(lsn)")
        }
        var total: Int64 = 0
        for e in try RelDirectory(decoding: dirBytes).entries {
            total += Int64(try relationSize(RelTag(spc: db.spc, db: db.db, rel: e.rel, fork: e.fork), at: lsn).nblocks) * 8192
        }
        return total
    }

    func slruSegment(_ kindValue: UInt8, _ segment: UInt32, at lsn: LSN) throws -> [UInt8] {
        guard let kind = SlruKind(rawValue: kindValue) else {
            throw RequestError(message: "unknown SLRU kind \(kindValue) (0 clog, 1 multixact members, 2 multixact offsets)")
        }
        let store = timeline.store
        guard let sizeBytes = try store.get(KeySpace.slruSegmentSize(kind, segment: segment), at: lsn, redo: ImageOnlyRedo()),
              let dir = try store.get(KeySpace.slruDir(kind), at: lsn, redo: ImageOnlyRedo()),
              try IdDirectory(decoding: dir).ids.contains(segment) else {
            throw RequestError(message: "SLRU segment \(kind.directory)/\(String(format: "%04X", segment)) does not exist at LSN \(lsn)")
        }
        let n = try SizeValue.decode(sizeBytes)
        var out: [UInt8] = []
        out.reserveCapacity(Int(n) * 8192)
        let results = store.get((0..<n).map { (KeySpace.slruBlock(kind, segment: segment, block: $0), lsn) }, redo: timeline.redo)
        for (b, r) in results.enumerated() {
            switch r {
            case .success(let page?) where page.count == 8192: out.append(contentsOf: page)
            case .success(nil): out.append(contentsOf: Self.zeroPage)
            case .success(let page?): throw RequestError(message: "SLRU page \(kind.directory)/\(segment) block \(b) has \(page.count) bytes")
            case .failure(let e): throw RequestError(message: "cannot reconstruct SLRU page \(kind.directory)/\(segment) block \(b) at LSN \(lsn): \(e)")
            }
        }
        return out
    }
}
