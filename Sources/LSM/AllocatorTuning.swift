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
///
/// A heap grows by at least 64 MiB at a time (`M_TOP_PAD`). With glibc's default of 128 KiB, a
/// growing heap cost a system call per allocation past its top: threads other than the main one
/// allocate from their own arenas, whose heaps grow with one `mprotect` for each new block (26,500 of
/// them in a 20,000-read GetPage run while the data cache filled, 9% of its time; 43 with the pad).
/// The pad is address space, not memory: untouched pages are never faulted in.
///
/// Where the kernel gives transparent huge pages only to memory that asks (THP "madvise", Debian's
/// default), the process re-executes itself once at start with `glibc.malloc.hugetlb=1` added to
/// `GLIBC_TUNABLES`, so that malloc asks for them: the page memory (decoded blocks, compressed
/// windows, materialized pages) is then faulted in 2 MiB at a time instead of 4 KiB. A cold GetPage
/// run in a fresh process spent a quarter of its CPU in page faults; with huge pages it read 16-30%
/// more pages/s (BENCHMARKS.md). Setting `glibc.malloc.hugetlb` in `GLIBC_TUNABLES` yourself (for
/// example to 0) leaves the process as it is.
public enum AllocatorTuning {
    public static let mmapThresholdBytes: Int32 = 32 << 20
    public static let trimThresholdBytes: Int32 = 256 << 20
    public static let topPadBytes: Int32 = 64 << 20

    /// Applies the settings (process-wide; call once, early in `main`, before any file or socket is
    /// opened: the first call may re-execute the process).
    public static func apply() {
        _ = cs_reexec_with_malloc_thp(CommandLine.unsafeArgv)
        cs_tune_malloc(mmapThresholdBytes, trimThresholdBytes, topPadBytes)
    }
}
