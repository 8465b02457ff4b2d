import Prometheus

/// The daemon's Prometheus metrics. Per-timeline gauges are labelled with tenant and timeline ids.
final class ServerMetrics: Sendable {
    let registry = PrometheusCollectorRegistry()
    /// Delta layers above the newest image, one observation per chunk each time /metrics is rendered.
    let deltaDepth: ValueHistogram

    init() {
        deltaDepth = registry.makeValueHistogram(name: "pageserver_chunk_delta_depth", buckets: [0, 1, 2, 3, 4, 6, 8, 12, 16, 32, 64],
                                                 help: "Delta layers above the newest image layer, per chunk (observed at each /metrics)")
    }

    func walBytesReceived(_ tenant: String, _ timeline: String) -> Counter {
        registry.makeCounter(name: "pageserver_wal_received_bytes_total", labels: [("tenant_id", tenant), ("timeline_id", timeline)],
                             help: "WAL bytes received from the primary")
    }

    func recordsIngested(_ tenant: String, _ timeline: String, rmgr: String) -> Counter {
        registry.makeCounter(name: "pageserver_wal_records_ingested_total",
                             labels: [("tenant_id", tenant), ("timeline_id", timeline), ("rmgr", rmgr)],
                             help: "WAL records ingested, by resource manager")
    }

    func recordsUninterpreted(_ tenant: String, _ timeline: String, rmgr: String) -> Counter {
        registry.makeCounter(name: "pageserver_wal_records_uninterpreted_total",
                             labels: [("tenant_id", tenant), ("timeline_id", timeline), ("rmgr", rmgr)],
                             help: "WAL records stored but not interpreted by ingest, by resource manager")
    }

    func redoVerifyChecked(_ tenant: String, _ timeline: String, rmgr: String) -> Counter {
        registry.makeCounter(name: "pageserver_redo_verify_checked_total",
                             labels: [("tenant_id", tenant), ("timeline_id", timeline), ("rmgr", rmgr)],
                             help: "Pages checked by verify_redo against the primary's consistency images, by resource manager")
    }

    func redoVerifyMismatches(_ tenant: String, _ timeline: String) -> Counter {
        registry.makeCounter(name: "pageserver_redo_verify_mismatches_total", labels: [("tenant_id", tenant), ("timeline_id", timeline)],
                             help: "Pages whose redo differed from the primary's consistency image (or could not be built)")
    }

    func lsnGauge(_ name: String, _ tenant: String, _ timeline: String, help: String) -> Gauge {
        registry.makeGauge(name: name, labels: [("tenant_id", tenant), ("timeline_id", timeline)], help: help)
    }

    func layerGauge(_ name: String, _ tenant: String, _ timeline: String, help: String) -> Gauge {
        registry.makeGauge(name: name, labels: [("tenant_id", tenant), ("timeline_id", timeline)], help: help)
    }

    /// A gauge of one tier of the block caches ("decoded", "compressed" or "index").
    func cacheGauge(_ name: String, tier: String, help: String) -> Gauge {
        registry.makeGauge(name: name, labels: [("tier", tier)], help: help)
    }

    /// The exposition text for `GET /metrics`.
    func render() -> String {
        var buffer: [UInt8] = []
        registry.emit(into: &buffer)
        return String(decoding: buffer, as: UTF8.self)
    }
}
