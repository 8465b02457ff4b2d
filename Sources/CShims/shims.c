// Implementation of cshims.h; see the header for the contracts.
#define _GNU_SOURCE
#if defined(__x86_64__)
#include <emmintrin.h>
#include <immintrin.h>
#endif
#include "cshims.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <liburing.h>
#include <malloc.h>
#include <pthread.h>
#include <stdio.h>
#include <unistd.h>
#include <linux/futex.h>
#include <sys/syscall.h>

int cs_syncfs(int fd) { return syncfs(fd); }

void cs_tune_malloc(int mmap_threshold, int trim_threshold, int top_pad) {
    mallopt(M_MMAP_THRESHOLD, mmap_threshold);
    mallopt(M_TRIM_THRESHOLD, trim_threshold);
    mallopt(M_TOP_PAD, top_pad);
}

int cs_reexec_with_malloc_thp(char **argv) {
    const char *current = getenv("GLIBC_TUNABLES");
    if (current != NULL && strstr(current, "glibc.malloc.hugetlb") != NULL) return 0;
    char mode[128] = {0};
    FILE *f = fopen("/sys/kernel/mm/transparent_hugepage/enabled", "r");
    if (f == NULL) return 0;
    size_t n = fread(mode, 1, sizeof mode - 1, f);
    fclose(f);
    mode[n] = 0;
    if (strstr(mode, "[madvise]") == NULL) return 0;
    const char *setting = "glibc.malloc.hugetlb=1";
    size_t length = (current != NULL ? strlen(current) + 1 : 0) + strlen(setting) + 1;
    char *value = malloc(length);
    if (value == NULL) return 0;
    snprintf(value, length, "%s%s%s", current != NULL ? current : "", current != NULL && *current ? ":" : "", setting);
    setenv("GLIBC_TUNABLES", value, 1);
    free(value);
    execv("/proc/self/exe", argv);
    return -1;
}

void cs_prefetch(const void *address) { __builtin_prefetch(address, 0, 3); }

uint64_t cs_atomic_fetch_or_u64(uint64_t *word, uint64_t mask) { return __atomic_fetch_or(word, mask, __ATOMIC_RELAXED); }

void cs_atomic_store_u64(uint64_t *word, uint64_t value) { __atomic_store_n(word, value, __ATOMIC_RELAXED); }

static int lock_spins = 64;

void cs_lock_set_spins(int spins) { lock_spins = spins < 0 ? 0 : spins; }

static inline void cs_spin_hint(void) {
#if defined(__x86_64__)
    _mm_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

// Word states: 0 free, 1 held, 2 held and some thread may be sleeping on it.
static void cs_lock_acquire_contended(uint32_t *word) {
    for (int i = 0; i < lock_spins; i++) {
        uint32_t expected = 0;
        if (__atomic_load_n(word, __ATOMIC_RELAXED) == 0 &&
            __atomic_compare_exchange_n(word, &expected, 1, 0, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED)) return;
        cs_spin_hint();
    }
    // From here on the word says 2 while this thread holds the lock, so its release wakes a
    // sleeper; a spurious wake costs one syscall, a lost one would hang.
    while (__atomic_exchange_n(word, 2, __ATOMIC_ACQUIRE) != 0) {
        syscall(SYS_futex, word, FUTEX_WAIT_PRIVATE, 2, NULL, NULL, 0);
    }
}

void cs_lock_acquire(uint32_t *word) {
    uint32_t expected = 0;
    if (__builtin_expect(__atomic_compare_exchange_n(word, &expected, 1, 0, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED), 1)) return;
    cs_lock_acquire_contended(word);
}

void cs_lock_release(uint32_t *word) {
    if (__builtin_expect(__atomic_exchange_n(word, 0, __ATOMIC_RELEASE) == 2, 0)) {
        syscall(SYS_futex, word, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
    }
}

int cs_rwlock_init_prefer_writer(pthread_rwlock_t *lock) {
    pthread_rwlockattr_t attr;
    int rc = pthread_rwlockattr_init(&attr);
    if (rc != 0) return rc;
    rc = pthread_rwlockattr_setkind_np(&attr, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
    if (rc == 0) rc = pthread_rwlock_init(lock, &attr);
    pthread_rwlockattr_destroy(&attr);
    return rc;
}

// ---- CRC-32C ----

static uint32_t crc_table[8][256];
static int crc_have_sse42 = -1;

static void crc_init_tables(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = (c >> 1) ^ (0x82F63B78u & (0u - (c & 1u)));
        crc_table[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = crc_table[0][i];
        for (int t = 1; t < 8; t++) {
            c = crc_table[0][c & 0xFF] ^ (c >> 8);
            crc_table[t][i] = c;
        }
    }
}

static uint32_t crc_soft(uint32_t crc, const uint8_t *p, size_t len) {
    while (len >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        w ^= crc;
        crc = crc_table[7][w & 0xFF] ^ crc_table[6][(w >> 8) & 0xFF] ^ crc_table[5][(w >> 16) & 0xFF] ^
              crc_table[4][(w >> 24) & 0xFF] ^ crc_table[3][(w >> 32) & 0xFF] ^ crc_table[2][(w >> 40) & 0xFF] ^
              crc_table[1][(w >> 48) & 0xFF] ^ crc_table[0][w >> 56];
        p += 8;
        len -= 8;
    }
    while (len--) crc = crc_table[0][(crc ^ *p++) & 0xFF] ^ (crc >> 8);
    return crc;
}

#if defined(__x86_64__)
__attribute__((target("sse4.2"))) static uint32_t crc_hw(uint32_t crc, const uint8_t *p, size_t len) {
    uint64_t c = crc;
    while (len >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        c = __builtin_ia32_crc32di(c, w);
        p += 8;
        len -= 8;
    }
    uint32_t c32 = (uint32_t)c;
    while (len--) c32 = __builtin_ia32_crc32qi(c32, *p++);
    return c32;
}
#endif

uint32_t cs_crc32c(uint32_t crc, const void *data, size_t len) {
    if (crc_have_sse42 < 0) {
        crc_init_tables();
#if defined(__x86_64__)
        __builtin_cpu_init();
        crc_have_sse42 = __builtin_cpu_supports("sse4.2") ? 1 : 0;
#else
        crc_have_sse42 = 0;
#endif
    }
    crc = ~crc;
#if defined(__x86_64__)
    if (crc_have_sse42) return ~crc_hw(crc, (const uint8_t *)data, len);
#endif
    return ~crc_soft(crc, (const uint8_t *)data, len);
}

// ---- io_uring ----

struct cs_ring {
    struct io_uring ring;
};

cs_ring *cs_ring_create(unsigned entries, int *err) {
    cs_ring *r = calloc(1, sizeof(*r));
    if (!r) {
        *err = -ENOMEM;
        return NULL;
    }
    // A ring belongs to one thread (IOUringEngine invariant 1), so it could be made with
    // SINGLE_ISSUER and DEFER_TASKRUN (Linux 6.1: completion work runs only when the thread waits).
    // Measured on pgbench stores, cold, that cost batched reads up to half their pages/s while
    // helping 32 single-read threads a little (BENCHMARKS.md, issue 8), so rings are plain unless
    // CS_URING_DEFER_TASKRUN=1 is in the environment (for measurements); a kernel that refuses the
    // flags (EINVAL) gets a plain ring.
    int rc = -EINVAL;
    const char *defer = getenv("CS_URING_DEFER_TASKRUN");
    if (defer && defer[0] == '1') {
        struct io_uring_params params;
        memset(&params, 0, sizeof(params));
        params.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN;
        rc = io_uring_queue_init_params(entries, &r->ring, &params);
    }
    if (rc == -EINVAL) rc = io_uring_queue_init(entries, &r->ring, 0);
    if (rc < 0) {
        free(r);
        *err = rc;
        return NULL;
    }
    *err = 0;
    return r;
}

void cs_ring_destroy(cs_ring *r) {
    if (!r) return;
    io_uring_queue_exit(&r->ring);
    free(r);
}

int cs_ring_prep_read(cs_ring *r, int fd, void *buf, unsigned len, uint64_t offset, uint64_t user_data) {
    struct io_uring_sqe *sqe = io_uring_get_sqe(&r->ring);
    if (!sqe) return -EBUSY;
    io_uring_prep_read(sqe, fd, buf, len, offset);
    io_uring_sqe_set_data64(sqe, user_data);
    return 0;
}

int cs_ring_submit(cs_ring *r) {
    int rc;
    do {
        rc = io_uring_submit(&r->ring);
    } while (rc == -EINTR);
    return rc;
}

static int harvest(cs_ring *r, uint64_t *user_data, int32_t *results, unsigned max) {
    struct io_uring_cqe *cqe;
    unsigned head, n = 0;
    io_uring_for_each_cqe(&r->ring, head, cqe) {
        if (n == max) break;
        user_data[n] = io_uring_cqe_get_data64(cqe);
        results[n] = cqe->res;
        n++;
    }
    io_uring_cq_advance(&r->ring, n);
    return (int)n;
}

int cs_ring_wait(cs_ring *r, uint64_t *user_data, int32_t *results, unsigned max) {
    struct io_uring_cqe *cqe;
    for (;;) {
        int rc = io_uring_wait_cqe(&r->ring, &cqe);
        if (rc == -EINTR) continue;
        if (rc < 0) return rc;
        return harvest(r, user_data, results, max);
    }
}

int cs_ring_submit_and_wait(cs_ring *r, uint64_t *user_data, int32_t *results, unsigned max) {
    int rc;
    do {
        rc = io_uring_submit_and_wait(&r->ring, 1);
    } while (rc == -EINTR);
    if (rc < 0) return rc;
    int n = harvest(r, user_data, results, max);
    return n > 0 ? n : cs_ring_wait(r, user_data, results, max);
}

int cs_ring_peek(cs_ring *r, uint64_t *user_data, int32_t *results, unsigned max) {
    return harvest(r, user_data, results, max);
}

int cs_ring_post_nop(cs_ring *r, uint64_t user_data) {
    struct io_uring_sqe *sqe = io_uring_get_sqe(&r->ring);
    if (!sqe) {
        int rc = cs_ring_submit(r);
        if (rc < 0) return rc;
        sqe = io_uring_get_sqe(&r->ring);
        if (!sqe) return -EBUSY;
    }
    io_uring_prep_nop(sqe);
    io_uring_sqe_set_data64(sqe, user_data);
    int rc = cs_ring_submit(r);
    return rc < 0 ? rc : 0;
}

// ---- aligned memory ----

#include <fcntl.h>
int cs_o_direct_flag(void) { return O_DIRECT; }


void *cs_aligned_alloc(size_t alignment, size_t size) {
    void *p = NULL;
    if (posix_memalign(&p, alignment, size ? size : alignment) != 0) return NULL;
    return p;
}

void cs_aligned_free(void *p) { free(p); }

// ---- LZ4 with a reused stream ----

// One LZ4 stream per thread, reset (cheaply: its table is not cleared) before every block, so each
// block is compressed on its own and decodes with LZ4_decompress_safe alone.
static __thread LZ4_stream_t *cs_lz4_stream;

int cs_lz4_compress(const void *src, void *dst, int n, int capacity) {
    if (cs_lz4_stream == NULL) {
        cs_lz4_stream = LZ4_createStream();
        if (cs_lz4_stream == NULL) return 0;
    } else {
        LZ4_resetStream_fast(cs_lz4_stream);
    }
    return LZ4_compress_fast_continue(cs_lz4_stream, (const char *)src, (char *)dst, n, capacity, 1);
}

// ---- stride-delta filter ----

// The pick from the equal-byte counts per stride: the smallest stride within 5% of the best count,
// none unless the best matches half the window.
static int stride_from_counts(const uint32_t *eq, uint32_t best) {
    if (best < 128) return 0;
    for (size_t s = 16; s <= 256; s++) {
        if ((uint64_t)eq[s] * 20 >= (uint64_t)best * 19) return (int)s;
    }
    return 0;
}

#if defined(__x86_64__)
static int cpu_has_avx2(void);

// The same counts as cs_detect_stride's SSE2 loop, 32 bytes at a time: half the loads and compares.
__attribute__((target("avx2")))
static int detect_stride_avx2(const uint8_t *window) {
    __m256i w[8];
    for (int k = 0; k < 8; k++) w[k] = _mm256_loadu_si256((const __m256i *)(window + 32 * k));
    uint32_t eq[257] = {0};
    uint32_t best = 0;
    for (size_t s = 16; s <= 256; s++) {
        const uint8_t *back = window - s;
        // Two sums, so that the additions form two chains of four instead of one of eight.
        __m256i even = _mm256_setzero_si256(), odd = _mm256_setzero_si256();
        for (int k = 0; k < 8; k += 2) {
            even = _mm256_sub_epi8(even, _mm256_cmpeq_epi8(w[k], _mm256_loadu_si256((const __m256i *)(back + 32 * k))));
            odd = _mm256_sub_epi8(odd, _mm256_cmpeq_epi8(w[k + 1], _mm256_loadu_si256((const __m256i *)(back + 32 * k + 32))));
        }
        __m256i sums = _mm256_sad_epu8(_mm256_add_epi8(even, odd), _mm256_setzero_si256());
        __m128i half = _mm_add_epi64(_mm256_castsi256_si128(sums), _mm256_extracti128_si256(sums, 1));
        uint32_t count = (uint32_t)(_mm_cvtsi128_si32(half) + _mm_extract_epi16(half, 4));
        eq[s] = count;
        if (count > best) best = count;
    }
    return stride_from_counts(eq, best);
}
#endif

int cs_detect_stride_portable(const uint8_t *p, size_t n);

int cs_detect_stride(const uint8_t *p, size_t n) {
    if (n < 1024) return 0;
#if defined(__x86_64__)
    if (cpu_has_avx2()) return detect_stride_avx2(p + n / 2 - 128);
#endif
    return cs_detect_stride_portable(p, n);
}

// Without AVX2 (and the reference the AVX2 form is tested against).
int cs_detect_stride_portable(const uint8_t *p, size_t n) {
    if (n < 1024) return 0;
#if defined(__x86_64__)
    const uint8_t *window = p + n / 2 - 128;
    __m128i w[16];
    for (int k = 0; k < 16; k++) w[k] = _mm_loadu_si128((const __m128i *)(window + 16 * k));
    uint32_t eq[257] = {0};
    uint32_t best = 0;
    for (size_t s = 16; s <= 256; s++) {
        const uint8_t *back = window - s;
        // Each equal byte adds 1 to its lane (cmpeq gives 0xFF = -1); 16 lanes of at most 16, summed
        // by one SAD against zero.
        __m128i lanes = _mm_setzero_si128();
        for (int k = 0; k < 16; k++) {
            __m128i b = _mm_loadu_si128((const __m128i *)(back + 16 * k));
            lanes = _mm_sub_epi8(lanes, _mm_cmpeq_epi8(w[k], b));
        }
        __m128i sums = _mm_sad_epu8(lanes, _mm_setzero_si128());
        uint32_t count = (uint32_t)(_mm_cvtsi128_si32(sums) + _mm_extract_epi16(sums, 4));
        eq[s] = count;
        if (count > best) best = count;
    }
#else
    const uint8_t *window = p + n / 2 - 128;
    uint32_t eq[257] = {0};
    uint32_t best = 0;
    for (size_t s = 16; s <= 256; s++) {
        uint32_t count = 0;
        for (size_t i = 0; i < 256; i++) count += window[i] == window[i - s];
        eq[s] = count;
        if (count > best) best = count;
    }
#endif
    return stride_from_counts(eq, best);
}

void cs_delta_encode(uint8_t *dst, const uint8_t *src, size_t n, size_t stride) {
    size_t head = stride < n ? stride : n;
    for (size_t i = 0; i < head; i++) dst[i] = src[i];
    for (size_t i = head; i < n; i++) dst[i] = (uint8_t)(src[i] - src[i - stride]);
}

#if defined(__x86_64__)
// The AVX2 form of cs_delta_decode's plain loop, used when the CPU has AVX2 (checked once at run
// time; the build targets plain x86-64). It returns the position it got to; the caller's 16-byte and
// byte loops finish the rest. (An AVX2 form of the stride-4 loop was no faster: its carry has to
// cross the two 128-bit lanes.)

// Strides of 32 and more: each 32-byte step reads bytes at least 32 back, all already decoded.
__attribute__((target("avx2")))
static size_t delta_decode_wide_avx2(uint8_t *buf, size_t n, size_t stride, size_t i) {
    for (; i + 32 <= n; i += 32) {
        __m256i d = _mm256_loadu_si256((const __m256i *)(buf + i));
        __m256i b = _mm256_loadu_si256((const __m256i *)(buf + i - stride));
        _mm256_storeu_si256((__m256i *)(buf + i), _mm256_add_epi8(d, b));
    }
    return i;
}

static int cpu_has_avx2(void) {
    static int known = -1;  // a benign race: every thread computes the same answer
    if (known < 0) known = __builtin_cpu_supports("avx2") ? 1 : 0;
    return known;
}
#endif

void cs_delta_decode(uint8_t *buf, size_t n, size_t stride) {
    if (stride == 0) return;
    size_t i = stride;
#if defined(__x86_64__)
    if (stride == 4 && n >= i + 16) {
        // Four independent byte lanes, each a running sum: within 16 bytes, add the vector shifted by
        // 4 and then by 8 bytes (a prefix sum of four 4-byte groups), then the carry: the last
        // decoded group, repeated.
        __m128i carry = _mm_set1_epi32((int)(buf[i - 4] | buf[i - 3] << 8 | buf[i - 2] << 16 | (uint32_t)buf[i - 1] << 24));
        for (; i + 16 <= n; i += 16) {
            __m128i v = _mm_loadu_si128((const __m128i *)(buf + i));
            v = _mm_add_epi8(v, _mm_slli_si128(v, 4));
            v = _mm_add_epi8(v, _mm_slli_si128(v, 8));
            v = _mm_add_epi8(v, carry);
            _mm_storeu_si128((__m128i *)(buf + i), v);
            carry = _mm_shuffle_epi32(v, 0xFF);
        }
    }
    if (stride == 16 && n >= 32) {
        // One running sum of 16-byte vectors, kept in a register.
        __m128i p = _mm_loadu_si128((const __m128i *)buf);
        for (; i + 16 <= n; i += 16) {
            p = _mm_add_epi8(_mm_loadu_si128((const __m128i *)(buf + i)), p);
            _mm_storeu_si128((__m128i *)(buf + i), p);
        }
    }
    if (stride > 16 && stride < 128 && stride % 16 != 0 && n >= 2 * stride) {
        // Row by row (a row is `stride` bytes): decoded row = stored row + decoded previous row. The
        // previous row is kept (16-byte chunks, plus one chunk ending at the row's end), so no load
        // reads bytes that a recent store wrote at another alignment: in the plain loop below, with
        // a short stride that is no multiple of 16, every chunk's source straddles two stores still
        // in flight and the CPU waits on each (2-2.5x slower at strides 20 and 36; from 128 up, or
        // at multiples of 16, the plain loop is as fast or faster). The row's last chunk is loaded
        // before any store into the row, since it overlaps the one before it.
        size_t full = stride / 16, rem = stride % 16;
        __m128i prev[17];
        for (size_t k = 0; k < full; k++) prev[k] = _mm_loadu_si128((const __m128i *)(buf + 16 * k));
        if (rem) prev[16] = _mm_loadu_si128((const __m128i *)(buf + stride - 16));
        for (; i + stride <= n; i += stride) {
            uint8_t *row = buf + i;
            __m128i tail = rem ? _mm_loadu_si128((const __m128i *)(row + stride - 16)) : _mm_setzero_si128();
            for (size_t k = 0; k < full; k++) {
                __m128i v = _mm_add_epi8(_mm_loadu_si128((const __m128i *)(row + 16 * k)), prev[k]);
                prev[k] = v;
                _mm_storeu_si128((__m128i *)(row + 16 * k), v);
            }
            if (rem) {
                __m128i v = _mm_add_epi8(tail, prev[16]);
                prev[16] = v;
                _mm_storeu_si128((__m128i *)(row + stride - 16), v);
            }
        }
    }
    // With a stride under 128 that is no multiple of 32, the 32-byte loads would straddle stores
    // still in flight (see above); those strides keep the 16-byte loop.
    if (stride >= 32 && (stride % 32 == 0 || stride >= 128) && cpu_has_avx2()) i = delta_decode_wide_avx2(buf, n, stride, i);
    if (stride >= 16) {
        for (; i + 16 <= n; i += 16) {
            __m128i d = _mm_loadu_si128((const __m128i *)(buf + i));
            __m128i b = _mm_loadu_si128((const __m128i *)(buf + i - stride));
            _mm_storeu_si128((__m128i *)(buf + i), _mm_add_epi8(d, b));
        }
    }
#else
    if (stride >= 16) {
        // Each 16-byte step reads bytes at least 16 back, all already decoded.
        for (; i + 16 <= n; i += 16) {
            for (size_t k = 0; k < 16; k++) buf[i + k] = (uint8_t)(buf[i + k] + buf[i + k - stride]);
        }
    }
#endif
    for (; i < n; i++) buf[i] = (uint8_t)(buf[i] + buf[i - stride]);
}

// ---- Block compression 4: the index-entry transform ----
// Row layout (format-spec 4.4): handle at bytes 28..<40, value_offset at 40..<44 and value_length at
// 44..<48, both big-endian.
enum { IE_SIZE = 48, IE_HANDLE = 28, IE_OFFSET = 40, IE_LENGTH = 44 };

static inline uint32_t ie_load32(const uint8_t *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}
static inline void ie_store32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)(v >> 24); p[1] = (uint8_t)(v >> 16); p[2] = (uint8_t)(v >> 8); p[3] = (uint8_t)v;
}

void cs_index_transform_encode(uint8_t *dst, const uint8_t *src, size_t count) {
    uint8_t prev[IE_SIZE], row[IE_SIZE];
    memset(prev, 0, sizeof prev);
    for (size_t i = 0; i < count; i++) {
        const uint8_t *r = src + i * IE_SIZE;
        memcpy(row, r, IE_SIZE);
        if (i > 0 && memcmp(r + IE_HANDLE, r - IE_SIZE + IE_HANDLE, 12) == 0) {
            const uint8_t *p = r - IE_SIZE;
            uint32_t end = ie_load32(p + IE_OFFSET) + ie_load32(p + IE_LENGTH);
            ie_store32(row + IE_OFFSET, ie_load32(r + IE_OFFSET) - end);
        }
        // Column c of the transformed rows holds row[c] minus the previous transformed row's byte.
        for (size_t c = 0; c < IE_SIZE; c++) {
            dst[c * count + i] = (uint8_t)(row[c] - prev[c]);
        }
        memcpy(prev, row, IE_SIZE);
    }
}

void cs_index_transform_decode(uint8_t *dst, const uint8_t *src, size_t count) {
    // Column by column: a running sum over the column's bytes (read in order), written into the
    // rows (stride 48); then the value offsets, row by row.
    // Eight columns at a time: eight independent sums per step instead of one dependent chain.
    for (size_t c = 0; c < IE_SIZE; c += 8) {
        const uint8_t *col = src + c * count;
        uint8_t *out = dst + c;
        uint8_t a0 = 0, a1 = 0, a2 = 0, a3 = 0, a4 = 0, a5 = 0, a6 = 0, a7 = 0;
        for (size_t i = 0; i < count; i++) {
            a0 = (uint8_t)(a0 + col[i]);             a1 = (uint8_t)(a1 + col[count + i]);
            a2 = (uint8_t)(a2 + col[2 * count + i]); a3 = (uint8_t)(a3 + col[3 * count + i]);
            a4 = (uint8_t)(a4 + col[4 * count + i]); a5 = (uint8_t)(a5 + col[5 * count + i]);
            a6 = (uint8_t)(a6 + col[6 * count + i]); a7 = (uint8_t)(a7 + col[7 * count + i]);
            uint8_t *r = out + i * IE_SIZE;
            r[0] = a0; r[1] = a1; r[2] = a2; r[3] = a3; r[4] = a4; r[5] = a5; r[6] = a6; r[7] = a7;
        }
    }
    for (size_t i = 1; i < count; i++) {
        uint8_t *r = dst + i * IE_SIZE;
        if (memcmp(r + IE_HANDLE, r - IE_SIZE + IE_HANDLE, 12) == 0) {
            const uint8_t *p = r - IE_SIZE;
            uint32_t end = ie_load32(p + IE_OFFSET) + ie_load32(p + IE_LENGTH);
            ie_store32(r + IE_OFFSET, ie_load32(r + IE_OFFSET) + end);
        }
    }
}
