import Foundation
import LSM
import Prometheus
import Synchronization
import Workdir

/// Compaction and GC of one timeline: a background thread, and the passes `PUT .../compact` and
/// `PUT .../do_gc` run on demand.
///
/// - Compaction pass (MaintenancePolicy.compact): image layers, then delta merges. Runs every
///   `compaction_period`, and at once when the WAL receiver (about once a second) finds a chunk with
///   `image_creation_threshold` delta layers above its image.
/// - GC pass, every `gc_period`, with MaintenancePolicy.gcCutoff (gc_horizon and pitr_interval);
///   the branch points of child timelines are retained.
/// - Backpressure: while the deepest chunk has more than `max_delta_depth` delta layers above its
///   image, the WAL receiver waits between messages (`throttle`), so read amplification cannot grow
///   without bound when compaction falls behind.
///
/// Invariants:
/// 1. Passes of one timeline run one at a time (`passLock`); the store serializes them with its
///    flushes, and none of them blocks a read.
/// 2. A GC and a branch creation on the same ancestor never interleave (`branchLock`): a branch
///    point checked against the cutoff is registered as a child before the next GC computes its
///    retained LSNs.
final class TimelineMaintenance: @unchecked Sendable {
    /// Set once, right after the timeline is made (the timeline owns this object).
    weak var timeline: Timeline?
    private let config: ServerConfig
    private let passLock = NSLock()
    /// Held by branch creation (on the ancestor) and by GC.
    let branchLock = NSLock()
    private let wake = DispatchSemaphore(value: 0)
    private let stopping = Atomic<Bool>(false)
    private let exited = DispatchSemaphore(value: 0)
    private let started = Atomic<Bool>(false)
    /// The deepest chunk's delta layers above its newest image, as of the last pass or flush check.
    let maxDepth = Atomic<Int>(0)
    private let bytesWritten: Counter
    private let bytesDeleted: Counter
    private let layersCreated: Counter
    private let layersDeleted: Counter

    init(tenantId: TenantId, timelineId: TimelineId, config: ServerConfig, metrics: ServerMetrics) {
        self.config = config
        let t = "\(tenantId)", tl = "\(timelineId)"
        bytesWritten = metrics.registry.makeCounter(name: "pageserver_compaction_bytes_written_total", labels: [("tenant_id", t), ("timeline_id", tl)],
                                                    help: "Bytes of layer files written by compaction")
        bytesDeleted = metrics.registry.makeCounter(name: "pageserver_compaction_gc_bytes_deleted_total", labels: [("tenant_id", t), ("timeline_id", tl)],
                                                    help: "Bytes of layer files deleted by compaction and GC")
        layersCreated = metrics.registry.makeCounter(name: "pageserver_compaction_layers_created_total", labels: [("tenant_id", t), ("timeline_id", tl)],
                                                     help: "Layer files written by compaction")
        layersDeleted = metrics.registry.makeCounter(name: "pageserver_compaction_gc_layers_deleted_total", labels: [("tenant_id", t), ("timeline_id", tl)],
                                                     help: "Layer files deleted by compaction and GC")
    }

    func start() {
        guard config.compactionPeriodSeconds > 0 || config.gcPeriodSeconds > 0 else { return }
        guard !started.exchange(true, ordering: .acquiringAndReleasing) else { return }
        Thread.detachNewThread { [self] in
            run()
            exited.signal()
        }
    }

    func stop() {
        guard started.load(ordering: .acquiring), !stopping.exchange(true, ordering: .acquiringAndReleasing) else { return }
        wake.signal()
        exited.wait()
    }

    private func run() {
        guard let timeline else { return }
        var nextCompaction = Date().addingTimeInterval(config.compactionPeriodSeconds)
        var nextGC = Date().addingTimeInterval(config.gcPeriodSeconds)
        while !stopping.load(ordering: .acquiring) {
            let now = Date()
            let dueIn = [config.compactionPeriodSeconds > 0 ? nextCompaction : nil, config.gcPeriodSeconds > 0 ? nextGC : nil]
                .compactMap { $0?.timeIntervalSince(now) }.min() ?? 1
            let woken = wake.wait(timeout: .now() + max(0.01, min(dueIn, 1))) == .success
            if stopping.load(ordering: .acquiring) { break }
            if case .broken = timeline.state.withLock({ $0 }) { continue }
            let deep = maxDepth.load(ordering: .relaxed) > config.maxDeltaDepth
            if config.compactionPeriodSeconds > 0 && (Date() >= nextCompaction || woken || deep) {
                do { _ = try compact() } catch { serverLog.warning("compaction of timeline \(timeline.timelineId) failed: \(error)") }
                nextCompaction = Date().addingTimeInterval(config.compactionPeriodSeconds)
            }
            if config.gcPeriodSeconds > 0 && Date() >= nextGC {
                do { _ = try gc() } catch { serverLog.warning("GC of timeline \(timeline.timelineId) failed: \(error)") }
                nextGC = Date().addingTimeInterval(config.gcPeriodSeconds)
            }
        }
    }

    /// One compaction pass: image layers, then delta merges.
    func compact() throws -> MaintenancePolicy.CompactionResult {
        guard let timeline else { throw APIError.notFound("the timeline is gone") }
        passLock.lock()
        defer { passLock.unlock() }
        let result = try MaintenancePolicy.compact(timeline.store, redo: timeline.redo, settings: config.maintenanceSettings)
        for r in [result.images, result.merges] {
            bytesWritten.increment(by: Int64(r.bytesWritten))
            bytesDeleted.increment(by: Int64(r.bytesDeleted))
            layersCreated.increment(by: Int64(r.layersCreated))
            layersDeleted.increment(by: Int64(r.layersDeleted))
        }
        maxDepth.store(result.depthAfter.maxDeltas, ordering: .relaxed)
        return result
    }

    /// The cutoff a GC now would use (MaintenancePolicy.gcCutoff).
    func gcCutoff() -> LSN {
        guard let timeline else { return .zero }
        return MaintenancePolicy.gcCutoff(timeline.store, oldestReadable: timeline.oldestReadableLSN, redo: timeline.redo,
                                   settings: config.maintenanceSettings)
    }

    /// One GC pass with the current cutoff (or `cutoff`); the branch points of child timelines are
    /// retained.
    func gc(cutoff requested: LSN? = nil) throws -> GCReport {
        guard let timeline else { throw APIError.notFound("the timeline is gone") }
        passLock.lock()
        defer { passLock.unlock() }
        branchLock.lock()
        defer { branchLock.unlock() }
        let retain = timeline.repository.children(of: timeline).map { $0.ancestorLSN }
        let report = try timeline.store.gc(cutoff: requested ?? gcCutoff(), retain: retain)
        bytesDeleted.increment(by: Int64(report.bytesDeleted))
        layersDeleted.increment(by: Int64(report.layersDeleted))
        bytesWritten.increment(by: Int64(report.bytesWritten))
        layersCreated.increment(by: Int64(report.created.count))
        return report
    }

    /// Refreshes the depth the backpressure looks at (the receiver calls it about once a second).
    /// A chunk that has reached `image_creation_threshold` wakes the compaction thread at once instead
    /// of waiting for the next `compaction_period` (the benchmark showed reads passing 3 deltas while
    /// the timer had not fired yet).
    func refreshDepth() {
        guard let timeline else { return }
        let depth = timeline.store.depth().maxDeltas
        maxDepth.store(depth, ordering: .relaxed)
        if config.compactionPeriodSeconds > 0 && depth >= config.imageCreationThreshold { wake.signal() }
    }

    /// Called by the WAL receiver between messages: waits while compaction is behind (the deepest
    /// chunk has more than max_delta_depth deltas above its image), waking the compaction thread.
    func throttle(stop: () -> Bool) {
        guard config.compactionPeriodSeconds > 0 else { return }
        var depth = maxDepth.load(ordering: .relaxed)
        guard depth > config.maxDeltaDepth else { return }
        let since = Date()
        while depth > config.maxDeltaDepth && !stop() && Date().timeIntervalSince(since) < 60 {
            wake.signal()
            usleep(50_000)
            depth = maxDepth.load(ordering: .relaxed)
        }
    }
}
