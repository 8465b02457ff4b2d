import Foundation
import LSM
import Workdir
import Synchronization

/// The tenants and timelines of one workdir (the seed's "repository"), and the on-disk layout:
///
///     WORKDIR/pageserver.lock
///     WORKDIR/tenants/<tenant_id>/timelines/<timeline_id>/{timeline.json, manifest, *.delta, *.image}
///
/// Invariants:
/// 1. A timeline is in `tenants` only once its directory and `timeline.json` are durable.
/// 2. Ids in paths are the 32-hex-character forms; anything else under `tenants/` is ignored.
final class Repository: Sendable {
    let config: ServerConfig
    let context: StorageContext
    let metrics: ServerMetrics
    private let tenants = Mutex<[TenantId: [TimelineId: Timeline]]>([:])
    private let reservations = Mutex<Set<String>>([])

    init(config: ServerConfig, metrics: ServerMetrics) {
        self.config = config
        self.metrics = metrics
        self.context = StorageContext(io: makeBlockIO(config.ioEngine), dataCacheBytes: config.pageCacheBytes,
                                      indexCacheBytes: config.indexCacheBytes, directIO: config.directIO,
                                      materializedCacheBytes: config.materializedPageCacheBytes,
                                      compressedCacheFraction: config.compressedPageCacheShare,
                                      adaptiveSplit: config.adaptivePageCacheSplit,
                                      coldPrefetchWindowBytes: config.coldPrefetchWindowBytes)
    }

    var tenantsDirectory: String { config.workdir + "/tenants" }
    func tenantDirectory(_ t: TenantId) -> String { tenantsDirectory + "/\(t)" }
    func timelineDirectory(_ t: TenantId, _ tl: TimelineId) -> String { tenantDirectory(t) + "/timelines/\(tl)" }

    /// Loads every tenant and timeline found in the workdir (ancestors before their branches) and
    /// starts their WAL receivers. Leftovers of unfinished creations and deletions are removed.
    func load() throws {
        try DurableFile.makeDirectory(tenantsDirectory)
        for name in (try? FileManager.default.contentsOfDirectory(atPath: tenantsDirectory)) ?? [] {
            guard let tid = TenantId(parsing: name) else { continue }
            let tlDir = tenantDirectory(tid) + "/timelines"
            var found: [TimelineId: TimelineMetadata] = [:]
            for tlName in (try? FileManager.default.contentsOfDirectory(atPath: tlDir)) ?? [] {
                let dir = tlDir + "/" + tlName
                if tlName.hasSuffix(Self.deletedSuffix) {
                    // A deletion that did not finish: the timeline was gone once renamed.
                    try? FileManager.default.removeItem(atPath: dir)
                    continue
                }
                guard let tlid = TimelineId(parsing: tlName) else { continue }
                guard FileManager.default.fileExists(atPath: dir + "/" + TimelineMetadata.fileName) else {
                    // A timeline whose creation did not finish: its metadata never became durable.
                    try? FileManager.default.removeItem(atPath: dir)
                    continue
                }
                found[tlid] = try TimelineMetadata.load(directory: dir)
            }
            var timelines: [TimelineId: Timeline] = [:]
            func open(_ id: TimelineId, _ path: [TimelineId]) throws -> Timeline {
                if let t = timelines[id] { return t }
                guard let meta = found[id] else { throw StorageError(.notFound, "timeline \(id) of tenant \(tid) is missing") }
                var ancestor: Timeline?
                if let a = meta.ancestorTimelineId {
                    guard let aid = TimelineId(parsing: a), !path.contains(aid) else {
                        throw StorageError(.corruption, "timeline \(id) names ancestor '\(a)', which is not a timeline id or forms a cycle",
                                           file: timelineDirectory(tid, id) + "/" + TimelineMetadata.fileName)
                    }
                    guard found[aid] != nil else {
                        throw StorageError(.notFound, "timeline \(id) branches from \(aid), which does not exist in tenant \(tid)",
                                           file: timelineDirectory(tid, id) + "/" + TimelineMetadata.fileName)
                    }
                    ancestor = try open(aid, path + [id])
                }
                let t = try Timeline.open(tenantId: tid, timelineId: id, directory: timelineDirectory(tid, id), metadata: meta,
                                          ancestor: ancestor, repository: self)
                timelines[id] = t
                return t
            }
            for id in found.keys.sorted() { _ = try open(id, []) }
            // Reads at a child's branch point stay possible below a parent's GC cutoff.
            for t in timelines.values {
                let points = timelines.values.filter { $0.ancestor === t }.map { $0.ancestorLSN }
                if !points.isEmpty { t.store.setRetainedLSNs(points) }
            }
            tenants.withLock { $0[tid] = timelines }
        }
        for t in allTimelines() { t.startBackgroundWork() }
    }

    /// A timeline directory renamed to NAME + this suffix is being deleted.
    static let deletedSuffix = ".deleted"

    /// The timelines that branch directly from `timeline`.
    func children(of timeline: Timeline) -> [Timeline] {
        tenants.withLock { $0[timeline.tenantId]?.values.filter { $0.ancestor === timeline } ?? [] }.sorted { $0.timelineId < $1.timelineId }
    }

    /// Removes a timeline from the registry (it must have no children).
    func unregister(_ timeline: Timeline) throws {
        try tenants.withLock { t in
            if let child = t[timeline.tenantId]?.values.first(where: { $0.ancestor === timeline }) {
                throw APIError.conflict("timeline \(timeline.timelineId) has child branches (for example \(child.timelineId)); delete them first")
            }
            t[timeline.tenantId]?[timeline.timelineId] = nil
        }
    }

    func allTimelines() -> [Timeline] { tenants.withLock { $0.values.flatMap { $0.values } } }

    func tenantIds() -> [TenantId] { tenants.withLock { Array($0.keys) }.sorted() }

    /// Creates a tenant. Returns false when it already exists.
    func createTenant(_ id: TenantId) throws -> Bool {
        if tenants.withLock({ $0[id] != nil }) { return false }
        try DurableFile.makeDirectory(tenantDirectory(id) + "/timelines")
        return tenants.withLock { t in
            if t[id] != nil { return false }
            t[id] = [:]
            return true
        }
    }

    func timelines(of tenant: TenantId) throws -> [Timeline] {
        guard let tls = tenants.withLock({ $0[tenant] }) else { throw APIError.notFound("tenant \(tenant) not found") }
        return tls.values.sorted { $0.timelineId < $1.timelineId }
    }

    func timeline(_ tenant: TenantId, _ id: TimelineId) throws -> Timeline {
        guard let tls = tenants.withLock({ $0[tenant] }) else { throw APIError.notFound("tenant \(tenant) not found") }
        guard let tl = tls[id] else { throw APIError.notFound("timeline \(id) not found in tenant \(tenant)") }
        return tl
    }

    func register(_ timeline: Timeline) throws {
        try tenants.withLock { t in
            guard t[timeline.tenantId] != nil else { throw APIError.notFound("tenant \(timeline.tenantId) not found") }
            guard t[timeline.tenantId]![timeline.timelineId] == nil else {
                throw APIError.conflict("timeline \(timeline.timelineId) already exists in tenant \(timeline.tenantId)")
            }
            t[timeline.tenantId]![timeline.timelineId] = timeline
        }
    }

    /// Reserves the id (409 if it is taken or being created) before slow creation work starts;
    /// `release` ends the reservation once the timeline is registered or its creation failed.
    func reserve(_ tenant: TenantId, _ id: TimelineId) throws {
        try tenants.withLock { t in
            guard let tls = t[tenant] else { throw APIError.notFound("tenant \(tenant) not found") }
            if tls[id] != nil { throw APIError.conflict("timeline \(id) already exists in tenant \(tenant)") }
        }
        let taken = reservations.withLock { r in !r.insert("\(tenant)/\(id)").inserted }
        if taken { throw APIError.conflict("timeline \(id) of tenant \(tenant) is being created") }
    }

    func release(_ tenant: TenantId, _ id: TimelineId) {
        _ = reservations.withLock { $0.remove("\(tenant)/\(id)") }
    }

    /// Stops every timeline: WAL receivers end, in-memory layers are flushed.
    func shutdown() {
        for t in allTimelines() { t.shutdown() }
    }
}

/// An error the HTTP API answers with `{"msg": ...}` and the given status.
struct APIError: Error, CustomStringConvertible {
    var status: Int
    var message: String
    var description: String { message }

    static func badRequest(_ m: String) -> APIError { APIError(status: 400, message: m) }
    static func notFound(_ m: String) -> APIError { APIError(status: 404, message: m) }
    static func conflict(_ m: String) -> APIError { APIError(status: 409, message: m) }
    static func internalError(_ m: String) -> APIError { APIError(status: 500, message: m) }
}

extension Repository {
    /// Refreshes the per-timeline gauges before `/metrics` is rendered.
    func updateGauges() {
        for (tier, cache) in [("decoded", context.dataCache), ("compressed", context.compressedDataCache), ("index", context.indexCache)] {
            metrics.cacheGauge("pageserver_page_cache_bytes", tier: tier, help: "Bytes the block caches hold, by tier").set(Int64(cache.usedBytes))
            metrics.cacheGauge("pageserver_page_cache_hits", tier: tier, help: "Block cache hits since start, by tier").set(Int64(cache.hitCount))
            metrics.cacheGauge("pageserver_page_cache_misses", tier: tier, help: "Block cache misses since start, by tier").set(Int64(cache.missCount))
        }
        let materialized = context.materialized
        metrics.cacheGauge("pageserver_page_cache_bytes", tier: "materialized", help: "Bytes the block caches hold, by tier").set(Int64(materialized.usedBytes))
        metrics.cacheGauge("pageserver_page_cache_hits", tier: "materialized", help: "Block cache hits since start, by tier").set(Int64(materialized.hits))
        // The split of page_cache_size as PageMemoryBalance has moved it.
        for (tier, capacity) in [("materialized", materialized.capacityBytes), ("compressed", context.compressedDataCache.capacityBytes)] {
            metrics.cacheGauge("pageserver_page_cache_capacity_bytes", tier: tier,
                               help: "The most the tier may hold now, out of page_cache_size").set(Int64(capacity))
        }
        for t in allTimelines() {
            let tid = "\(t.tenantId)", tlid = "\(t.timelineId)"
            metrics.lsnGauge("pageserver_last_record_lsn", tid, tlid, help: "Last WAL record ingested (LSN as a number)")
                .set(Int64(bitPattern: t.store.lastRecordLSN.rawValue))
            metrics.lsnGauge("pageserver_disk_consistent_lsn", tid, tlid, help: "Everything up to this LSN is in layer files")
                .set(Int64(bitPattern: t.store.diskConsistentLSN.rawValue))
            let layers = t.store.layers()
            metrics.layerGauge("pageserver_layer_files", tid, tlid, help: "Layer files of the timeline").set(Int64(layers.count))
            metrics.layerGauge("pageserver_layer_bytes", tid, tlid, help: "Bytes in layer files of the timeline")
                .set(Int64(layers.reduce(UInt64(0)) { $0 + $1.fileSize }))
            metrics.layerGauge("pageserver_in_memory_layer_bytes", tid, tlid, help: "Bytes in in-memory layers").set(Int64(t.store.inMemoryBytes))
            metrics.lsnGauge("pageserver_gc_cutoff_lsn", tid, tlid, help: "GC cutoff: reads below it are refused (LSN as a number)")
                .set(Int64(bitPattern: t.store.gcCutoffLSN.rawValue))
            let depth = t.store.depth()
            metrics.layerGauge("pageserver_max_delta_depth", tid, tlid, help: "Most delta layers above the newest image layer of any chunk")
                .set(Int64(depth.maxDeltas))
            for n in depth.perChunk.values { metrics.deltaDepth.record(Int64(n)) }
        }
    }
}
