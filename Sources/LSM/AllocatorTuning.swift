import CShims

/// The glibc malloc settings every process that runs the engine uses (the daemon, `pagectl`, the
/// RocksDB comparison driver), so that a benchmark of the engine runs it as the daemon does.
///
/// Allocations up to 32 MiB come from the heap instead of fresh mmaps, and the heap's top is not
/// trimmed until 256 MiB are free there. With glibc's defaults (128 KiB, adjusted upwards only as
/// mapped chunks are freed), the in-memory layer's 1 MiB arena pages and the page service's response
/// buffers were fresh mappings whose every 4 KiB page the kernel faulted in and zeroed, and freed
/// memory went back to the kernel only to be faulted in again by the next layer. With these
/// settings, memory freed by a flushed layer or a finished batch is reused warm. (The ingest
/// benchmark, shorter than two flush cycles, shows no difference either way: BENCHMARKS.md.)
public enum AllocatorTuning {
    public static let mmapThresholdBytes: Int32 = 32 << 20
    public static let trimThresholdBytes: Int32 = 256 << 20

    /// Applies the settings (process-wide; call once, early in `main`).
    public static func apply() {
        cs_tune_malloc(mmapThresholdBytes, trimThresholdBytes)
    }
}
