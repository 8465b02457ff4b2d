import ArgumentParser
import Foundation
import LSM
import PostgresRedo
import PostgresWAL
import Workdir

/// `pagectl compact`: the daemon's compaction and GC passes (MaintenancePolicy) on a stopped
/// server's workdir.
///
/// It takes the workdir lock first, so it refuses while the server runs and the server refuses to
/// start while it works. The timeline's ancestors are opened (reads below a branch point go there);
/// its children's branch points are retained by GC, as the daemon does. Every replacement follows
/// the engine's crash-safe protocol, so an interrupted run leaves a workdir the server opens.
struct CompactCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "compact",
        abstract: "Offline compaction and GC of a timeline (the server must be stopped).")

    @Option(help: "The page server's workdir.") var workdir: String
    @Option(help: "Tenant id (32 hex digits).") var tenant: String
    @Option(help: "Timeline id (32 hex digits).") var timeline: String
    @Option(help: "Image layer for a chunk with this many delta layers above its newest image.") var imageCreationThreshold = MaintenanceSettings().imageCreationThreshold
    @Option(help: "Merge the delta layers of a chunk with more than this many.") var compactionThreshold = MaintenanceSettings().compactionThreshold
    @Option(help: "GC keeps this much WAL's worth of history behind last_record_lsn (e.g. 64MiB).") var gcHorizon = "64MiB"
    @Option(help: "GC keeps this much time's worth of history (e.g. 7d, 1h, 0 for off).") var pitrInterval = "7d"
    @Flag(help: "Compact only; no GC.") var noGc = false

    func run() throws {
        guard TenantId(parsing: tenant) != nil else { fail("tenant '\(tenant)' is not 32 lower-case hex digits") }
        guard TimelineId(parsing: timeline) != nil else { fail("timeline '\(timeline)' is not 32 lower-case hex digits") }
        guard let horizon = parseSize(gcHorizon) else { fail("--gc-horizon '\(gcHorizon)' is not a size such as 64MiB") }
        guard let pitr = parseDuration(pitrInterval) else { fail("--pitr-interval '\(pitrInterval)' is not a duration such as 7d or 3600") }
        let timelinesDir = workdir + "/tenants/\(tenant)/timelines"
        guard FileManager.default.fileExists(atPath: timelinesDir + "/\(timeline)/" + TimelineMetadata.fileName) else {
            fail("timeline \(timeline) of tenant \(tenant) not found in \(workdir) (no \(timelinesDir)/\(timeline)/timeline.json)")
        }
        let lock: WorkdirLock
        do { lock = try WorkdirLock(workdir: workdir) } catch {
            fail("the page server is running on \(workdir) (\(error)); stop it first, or use PUT .../compact and .../do_gc")
        }
        defer { lock.release() }
        var settings = MaintenanceSettings()
        settings.imageCreationThreshold = max(1, imageCreationThreshold)
        settings.compactionThreshold = max(2, compactionThreshold)
        settings.gcHorizonBytes = horizon
        settings.pitrIntervalSeconds = pitr

        // The ancestor chain, root first, each store opened with its ancestor.
        var chain: [(id: String, meta: TimelineMetadata)] = []
        var next: String? = timeline
        while let id = next {
            guard !chain.contains(where: { $0.id == id }), chain.count < 1000 else { fail("the ancestors of \(timeline) form a loop at \(id)") }
            let meta: TimelineMetadata
            do { meta = try TimelineMetadata.load(directory: timelinesDir + "/" + id) } catch { fail("ancestor \(id): \(error)") }
            chain.append((id, meta))
            next = meta.ancestorTimelineId
        }
        chain.reverse()
        let context = StorageContext(io: makeBlockIO(.ioUring), materializedCacheBytes: 0)
        var storeConfig = StoreConfig()
        storeConfig.backgroundFlush = false
        var stores: [TimelineStore] = []
        var oldest = LSN.zero
        for (i, t) in chain.enumerated() {
            var ancestor: TimelineStore.Ancestor?
            if i > 0 {
                guard let p = LSN(parsing: t.meta.ancestorLsn) else { fail("timeline \(t.id): ancestor_lsn '\(t.meta.ancestorLsn)' is not an LSN") }
                ancestor = .init(store: stores[i - 1], lsn: p)
            }
            let store: TimelineStore
            do { store = try TimelineStore.open(directory: timelinesDir + "/" + t.id, config: storeConfig, context: context, ancestor: ancestor) } catch {
                fail("cannot open timeline \(t.id): \(error)")
            }
            stores.append(store)
            oldest = i == 0 ? max(LSN(parsing: t.meta.startLsn) ?? .zero, store.gcCutoffLSN) : max(oldest, store.gcCutoffLSN)
        }
        defer { for s in stores { s.close() } }
        let store = stores.last!
        // Children's branch points stay readable below the cutoff.
        let children = ((try? FileManager.default.contentsOfDirectory(atPath: timelinesDir)) ?? []).compactMap { name -> LSN? in
            guard TimelineId(parsing: name) != nil, let m = try? TimelineMetadata.load(directory: timelinesDir + "/" + name),
                  m.ancestorTimelineId == timeline else { return nil }
            return LSN(parsing: m.ancestorLsn)
        }
        store.setRetainedLSNs(children)

        let control = (try? store.get(KeySpace.controlFile, at: store.lastRecordLSN, redo: ImageOnlyRedo())) ?? nil
        let redo = PostgresRedo(settings: (control.flatMap { try? RedoSettings(pgControl: $0) }) ?? RedoSettings())
        func describe() -> String {
            let layers = store.layers()
            let bytes = layers.reduce(UInt64(0)) { $0 + $1.fileSize }
            return "\(layers.count) layer files, \(String(format: "%.1f", Double(bytes) / 1e6)) MB, deepest chunk \(store.depth().maxDeltas) delta layers above its image"
        }
        print("timeline \(timeline): last_record_lsn \(store.lastRecordLSN), GC cutoff \(store.gcCutoffLSN); \(describe())")
        let started = Date()
        let result: MaintenancePolicy.CompactionResult
        do { result = try MaintenancePolicy.compact(store, redo: redo, settings: settings) } catch { fail("compaction failed: \(error)") }
        print("image layers: \(result.images.layersCreated) created (\(String(format: "%.1f", Double(result.images.bytesWritten) / 1e6)) MB)")
        print("delta merges: \(result.merges.layersDeleted) layers merged into \(result.merges.layersCreated)")
        if !noGc {
            let cutoff = MaintenancePolicy.gcCutoff(store, oldestReadable: oldest, redo: redo, settings: settings)
            let gc: GCReport
            do { gc = try store.gc(cutoff: cutoff, retain: children) } catch { fail("GC failed: \(error)") }
            print("GC: cutoff \(gc.previousCutoff) -> \(gc.cutoff), \(gc.layersDeleted) layers deleted (\(String(format: "%.1f", Double(gc.bytesDeleted) / 1e6)) MB)"
                  + (gc.layersTrimmed == 0 ? "" : ", \(gc.layersTrimmed) of them rewritten without their versions below the cutoff's image (\(String(format: "%.1f", Double(gc.bytesWritten) / 1e6)) MB)")
                  + (gc.retained.isEmpty ? "" : ", branch points kept: \(gc.retained.map { "\($0)" }.joined(separator: ", "))"))
        }
        print("done in \(String(format: "%.1f", Date().timeIntervalSince(started))) s: \(describe())")
    }
}
