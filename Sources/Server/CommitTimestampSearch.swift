// get_lsn_by_timestamp for one timeline: `CommitTimestampLookup` (PostgresWAL, where the design
// note and the search's invariants are) over the timeline's commit-timestamp index, read at its
// last_record_lsn through the store (so a branch sees its ancestor's entries up to the branch point),
// between the oldest LSN the timeline can serve (Timeline.oldestReadableLSN: for a branch, what its
// ancestors can serve) and last_record_lsn.

import Foundation
import LSM
import PostgresWAL
import Workdir

enum CommitTimestampSearch {
    static func lookup(_ timeline: Timeline) -> CommitTimestampLookup {
        MaintenancePolicy.commitTimestamps(timeline.store, oldestReadable: timeline.oldestReadableLSN, redo: timeline.redo)
    }

    /// The answer for the HTTP API's `timestamp` query parameter (400 when it is missing or bad).
    static func answer(timeline: Timeline, timestampParameter: String?) async throws -> [String: Any] {
        guard let text = timestampParameter else {
            throw APIError.badRequest("timestamp is required: an RFC 3339 time such as 2026-11-29T07:25:00Z")
        }
        guard let t = CommitTimestampLookup.parseRFC3339(text) else {
            throw APIError.badRequest("timestamp '\(text)' is not an RFC 3339 time such as 2026-11-29T07:25:00Z or 2026-11-29T08:25:00.5+01:00")
        }
        let search = lookup(timeline)
        let answer = try await blocking { try search.find(t) }
        return ["lsn": "\(answer.lsn)", "kind": answer.kind.rawValue]
    }
}
