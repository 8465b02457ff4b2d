// C shims for the engine.
//
// liburing implements most of its API as static inline functions, which Swift cannot call through a
// module map; these wrappers give them real symbols and hide `struct io_uring` behind an opaque
// pointer. CRC-32C uses the SSE4.2 instruction when the CPU has it and a table otherwise. liblz4's
// and libzstd's headers are re-exported as they are.
#ifndef PAGESERVER_CSHIMS_H
#define PAGESERVER_CSHIMS_H

#include <stddef.h>
#include <stdint.h>
#include <pthread.h>
#include <lz4.h>
#include <zstd.h>

// ---- CRC-32C (Castagnoli, reflected polynomial 0x82F63B78) ----
// Returns the CRC of `len` bytes at `data` continuing from `crc` (start with 0). The usual
// pre- and post-inversion are applied inside, so crc32c(crc32c(0,a),b) == crc32c(0,a||b).
uint32_t cs_crc32c(uint32_t crc, const void *data, size_t len);

// ---- io_uring ----
typedef struct cs_ring cs_ring;

// Creates a ring with `entries` submission slots. Returns NULL and sets *err to a negative errno
// when the kernel refuses (ENOSYS, EPERM under seccomp, ENOMEM for locked memory).
cs_ring *cs_ring_create(unsigned entries, int *err);
void cs_ring_destroy(cs_ring *ring);

// Queues one read. Returns 0, or -EBUSY when the submission queue is full (submit first).
int cs_ring_prep_read(cs_ring *ring, int fd, void *buf, unsigned len, uint64_t offset, uint64_t user_data);

// Hands every queued read to the kernel. Returns the number submitted or a negative errno.
int cs_ring_submit(cs_ring *ring);

// Waits for at least one completion, then harvests up to `max` of them into the arrays.
// Returns the count harvested (>= 1) or a negative errno (-EINTR is retried inside).
int cs_ring_wait(cs_ring *ring, uint64_t *user_data, int32_t *results, unsigned max);

// Submits every queued read and waits for at least one completion in the same system call, then
// harvests up to `max` completions. Returns the count harvested (>= 1) or a negative errno.
int cs_ring_submit_and_wait(cs_ring *ring, uint64_t *user_data, int32_t *results, unsigned max);

// Harvests up to `max` completions without waiting. Returns the count (possibly 0).
int cs_ring_peek(cs_ring *ring, uint64_t *user_data, int32_t *results, unsigned max);

// Queues a no-op whose completion carries `user_data`, and submits it (used to wake a waiter).
int cs_ring_post_nop(cs_ring *ring, uint64_t user_data);

// ---- aligned memory for O_DIRECT ----
// The platform's O_DIRECT flag (Glibc's Swift overlay does not export it).
int cs_o_direct_flag(void);
void *cs_aligned_alloc(size_t alignment, size_t size);
void cs_aligned_free(void *p);

// glibc malloc tuning (mallopt): allocations below `mmap_threshold` bytes come from the heap, and the
// heap's top is given back to the kernel only above `trim_threshold` free bytes, and a heap grows by at
// least `top_pad` bytes at a time.
void cs_tune_malloc(int mmap_threshold, int trim_threshold, int top_pad);

/// syncfs(2) on the file system holding `fd`: -1 with errno set on failure.
int cs_syncfs(int fd);

// When the kernel gives transparent huge pages only to memory that asks for them ("[madvise]" in
// /sys/kernel/mm/transparent_hugepage/enabled) and GLIBC_TUNABLES does not mention
// glibc.malloc.hugetlb, adds glibc.malloc.hugetlb=1 to GLIBC_TUNABLES and execs /proc/self/exe with
// `argv` (same pid; glibc reads its tunables only at start). Returns 0 when nothing was to be done,
// -1 when the exec failed (the process then runs on as it is).
int cs_reexec_with_malloc_thp(char **argv);

// Asks the CPU to bring the cache line at `address` in for reading (a hint; never faults).
void cs_prefetch(const void *address);

// Atomically ORs `mask` into *word (relaxed ordering) and returns the word as it was before.
uint64_t cs_atomic_fetch_or_u64(uint64_t *word, uint64_t mask);
// Atomically stores `value` into *word (relaxed ordering).
void cs_atomic_store_u64(uint64_t *word, uint64_t value);

// ---- a barging futex lock (see LSM's FutexLock) ----
// `word` is a 32-bit lock word, 0 when free. Acquire spins briefly (`cs_lock_set_spins`) and then
// sleeps on a plain, non-PI futex; release wakes one sleeper but hands it nothing, so a running
// thread may take the lock first. Unlike a priority-inheritance lock there is no convoy of threads
// that must each be scheduled in turn.
void cs_lock_acquire(uint32_t *word);
void cs_lock_release(uint32_t *word);
// How many times a contended acquire checks the word before it sleeps (default 64).
void cs_lock_set_spins(int spins);

// pthread_rwlock_init with writers preferred (a waiting writer holds off new readers; glibc's
// PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP). Returns 0 or an errno value.
int cs_rwlock_init_prefer_writer(pthread_rwlock_t *lock);

// ---- LZ4 ----
// LZ4-compresses `n` bytes into `dst` (at most `capacity` bytes) as one independent LZ4 block, with
// the calling thread's reused stream (LZ4_resetStream_fast + LZ4_compress_fast_continue,
// acceleration 1). Returns the compressed size, or 0 when it does not fit.
int cs_lz4_compress(const void *src, void *dst, int n, int capacity);

// ---- stride-delta filter for block payloads (format-spec.md, "Blocks", compression 3) ----
// The stride detector of the writer rule: 0 when `n < 1024` or no stride qualifies, else the stride
// in 16...256 (see format-spec.md for the exact rule; it reads the 256 bytes at n/2 - 128 and the
// 256 bytes before them).
int cs_detect_stride(const uint8_t *payload, size_t n);
// cs_detect_stride without AVX2 (the reference the AVX2 form is tested against).
int cs_detect_stride_portable(const uint8_t *payload, size_t n);
// dst[i] = src[i] for i < stride, src[i] - src[i - stride] (mod 256) after; dst and src do not overlap.
void cs_delta_encode(uint8_t *dst, const uint8_t *src, size_t n, size_t stride);
// Undoes cs_delta_encode in place: buf[i] += buf[i - stride] (mod 256) for i = stride ..< n, in order.
void cs_delta_decode(uint8_t *buf, size_t n, size_t stride);
// The index-entry transform of block compression 4 (format-spec.md section 3). `src` holds `count`
// IndexEntry rows of 48 bytes (without the block's 4-byte count); `dst` gets 48 * count bytes: each
// row's value_offset made relative to the previous row's value end when both rows name the same data
// block, then the rows transposed into 48 columns of `count` bytes, each column delta-coded
// (byte minus the byte above it, mod 256).
void cs_index_transform_encode(uint8_t *dst, const uint8_t *src, size_t count);
// Undoes cs_index_transform_encode: `src` (48 * count transformed bytes) back into the rows in `dst`.
void cs_index_transform_decode(uint8_t *dst, const uint8_t *src, size_t count);

#endif
