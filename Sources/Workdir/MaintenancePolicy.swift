import Foundation
import LSM
import PostgresWAL

/// What compaction and GC of a timeline do, shared by the daemon's background thread
/// (TimelineMaintenance) and the offline `pagectl compact`.
///
/// - A compaction pass writes an image layer at disk_consistent_lsn for every chunk with
///   `imageCreationThreshold` or more delta layers above its newest image (or more than
///   `imageCreationBytes` in them), then merges the delta
///   layers of chunks that have more than `compactionThreshold` of them.
/// - The GC cutoff is the lower of last_record_lsn - `gcHorizonBytes` and the end of the last commit
///   at or before now - `pitrIntervalSeconds` (from the commit-timestamp index). When no commit is
///   that old yet, PITR allows no GC beyond the current cutoff; when every commit is older, only the
///   horizon counts; `pitrIntervalSeconds` = 0 turns PITR off.
public struct MaintenanceSettings: Sendable {
    public var imageCreationThreshold = 3
    /// ... or when the chunk's delta layers above its newest image exceed this many bytes.
    public var imageCreationBytes = 128 << 20
    public var compactionThreshold = 10
    public var gcHorizonBytes = 64 << 20
    public var pitrIntervalSeconds: Double = 7 * 86400
    public init() {}
}

public enum MaintenancePolicy {
    public struct CompactionResult: Sendable {
        public var images: CompactionReport
        public var merges: CompactionReport
        public var depthAfter: LayerDepth
    }

    public static func compact(_ store: TimelineStore, redo: any Redo, settings: MaintenanceSettings) throws -> CompactionResult {
        let images = try store.createImageLayers(redo: redo, thresholdDeltas: settings.imageCreationThreshold,
                                                 thresholdBytes: UInt64(settings.imageCreationBytes))
        let merges = try store.mergeDeltas(maxDeltasPerChunk: settings.compactionThreshold)
        return CompactionResult(images: images, merges: merges, depthAfter: store.depth())
    }

    /// get_lsn_by_timestamp over a timeline's commit-timestamp index, read at its last_record_lsn
    /// through the store (a branch sees its ancestors' entries up to its branch point).
    public static func commitTimestamps(_ store: TimelineStore, oldestReadable: LSN, redo: any Redo) -> CommitTimestampLookup {
        let newest = store.lastRecordLSN
        return CommitTimestampLookup(oldest: oldestReadable, newest: newest) { bucket in
            guard let bytes = try store.get(CommitTimestampIndex.key(bucket), at: newest, redo: redo) else { return [] }
            return try CommitTimestampIndex.decode(bytes, bucket: bucket)
        }
    }

    /// The cutoff a GC at `now` uses; `oldestReadable` is the oldest LSN the timeline can serve.
    public static func gcCutoff(_ store: TimelineStore, oldestReadable: LSN, redo: any Redo, settings: MaintenanceSettings,
                                now: Date = Date()) -> LSN {
        let last = store.lastRecordLSN
        let horizon = LSN(last.rawValue > UInt64(settings.gcHorizonBytes) ? last.rawValue - UInt64(settings.gcHorizonBytes) : 0)
        guard settings.pitrIntervalSeconds > 0 else { return horizon }
        let then = now.addingTimeInterval(-settings.pitrIntervalSeconds)
        let micros = Int64(((then.timeIntervalSince1970 - 946_684_800) * 1_000_000).rounded(.down))
        guard let found = try? commitTimestamps(store, oldestReadable: oldestReadable, redo: redo).find(micros) else { return store.gcCutoffLSN }
        switch found.kind {
        case .present: return min(horizon, found.lsn)
        case .future: return horizon
        case .past, .nodata: return store.gcCutoffLSN
        }
    }
}
