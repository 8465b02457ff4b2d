import Foundation
import LSM

/// Placeholder until the replication client lands.
final class WalReceiver: Sendable {
    unowned let timeline: Timeline
    init(timeline: Timeline) { self.timeline = timeline }
    func start() {}
    func stop() {}
}

enum TimelineAttach {
    static func attach(repository: Repository, tenant: TenantId, timeline: TimelineId, walSource: String) throws -> Timeline {
        throw APIError.badRequest("attach is not implemented yet")
    }
}

func redactConnInfo(_ s: String) -> String { s }
