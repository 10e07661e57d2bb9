/* bench_kern.c - kernel throughput on one thread: matvec GB/s against a plain memory-read loop,
 * matmul GFLOP/s for a prefill-sized batch, attention time for a vision-tower head, and the
 * element-wise ops (norms, activations, add) in ns/element and GB/s, for every kernel path this
 * CPU has (ref, avx2, avx512).
 *
 * Built by CMake as bench_kern (cmake --build <dir> --target bench_kern).
 * Run: <dir>/bench_kern [quick|elem]   ("quick" skips the 622 MB lm_head case, "elem" runs only
 * the element-wise ops), or <dir>/bench_kern peak|attn|gemm|shapes [path [reps]]: the FMA peak
 * of a register-only loop, the attention shapes (vision hd 64/72, causal 512 hd 128), two GEMM
 * shapes, or every vision/prefill GEMM shape in bf16 and f16, on one path (best of reps); or
 * <dir>/bench_kern ceiling: one core's matrix-vector GB/s with the weights in L2 (bf16, q8, q4);
 * <dir>/bench_kern layer [threads [reps]]: the matmuls and attention of one vision layer through
 * the threaded ops (ops.c) on the active path (QVL_CPU), wall time. The ref path is timed on a slice of the work (fewer output rows /
 * queries) and scaled, so the whole run stays within a few seconds.
 */
#include "common.h"
#include "ctx.h" /* QVL_KV_CHUNK: the decoder's cache layout */
#include "kern/kern.h"
#include "memread.h"
#include "ops.h"
#include "pool.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

static uint64_t g_rng = 88172645463325252ull;

/* The focused modes time with this thread's CPU clock, which does not run while the thread is
 * descheduled: on a shared, loaded machine it is far steadier than wall time (it still sees
 * cache and memory contention). The default modes keep wall time. */
static bool g_cpu_clock;

/* CPU time of the whole process (all threads), ms */
static double proc_cpu_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec * 1e-6;
}

static double bench_ms(void) {
    if (!g_cpu_clock)
        return qvl_time_ms();
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec * 1e-6;
}

static float rnd_f(void) {
    g_rng ^= g_rng << 13;
    g_rng ^= g_rng >> 7;
    g_rng ^= g_rng << 17;
    return (float)((double)(g_rng >> 40) / 8388608.0 - 1.0);
}

static void *xmalloc(size_t n) {
    void *p = qvl_malloc(n);
    if (!p) {
        fprintf(stderr, "bench_kern: out of memory (%zu bytes)\n", n);
        exit(1);
    }
    return p;
}

static void cpu_model(char *out, size_t n) {
    snprintf(out, n, "unknown");
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (!f)
        return;
    char line[512];
    while (fgets(line, sizeof line, f)) {
        if (!strncmp(line, "model name", 10)) {
            char *c = strchr(line, ':');
            if (c) {
                c += 2;
                c[strcspn(c, "\n")] = 0;
                snprintf(out, n, "%s", c);
            }
            break;
        }
    }
    fclose(f);
}

/* plain read of n bytes (8-byte words, four independent sums), best of reps, in GB/s */
static double read_bw(const uint64_t *p, size_t n, int reps) {
    double best = 1e30;
    volatile uint64_t sink = 0;
    for (int r = 0; r < reps; r++) {
        double t0 = bench_ms();
        uint64_t a = 0, b = 0, c = 0, d = 0;
        for (size_t i = 0; i + 4 <= n / 8; i += 4) {
            a += p[i];
            b += p[i + 1];
            c += p[i + 2];
            d += p[i + 3];
        }
        sink += a + b + c + d;
        double t = bench_ms() - t0;
        if (t < best)
            best = t;
    }
    (void)sink;
    return (double)n / (best * 1e6);
}

/* best time in ms of y = W x for one activation row over output rows [0, nrun) */
static double time_matmul(const qvl_kern *kt, float *y, const float *x, int64_t m, int64_t k,
                          const void *w, qvl_dtype wt, int64_t nrun, int reps) {
    double best = 1e30;
    for (int r = 0; r < reps; r++) {
        double t0 = bench_ms();
        kt->matmul(y, nrun, x, k, m, k, w, wt, NULL, 0, nrun);
        double t = bench_ms() - t0;
        if (t < best)
            best = t;
    }
    return best;
}

static void *make_w(qvl_dtype wt, int64_t n, int64_t k) {
    size_t rb = qvl_dtype_row_bytes(wt, (size_t)k);
    uint8_t *w = xmalloc(rb * (size_t)n);
    if (wt == QVL_DT_Q8_0 || wt == QVL_DT_Q4_0) {
        float *row = xmalloc(sizeof(float) * (size_t)k);
        for (int64_t j = 0; j < n; j++) {
            for (int64_t p = 0; p < k; p++)
                row[p] = rnd_f() * 0.05f;
            qvl_quantize_row(wt, row, w + (size_t)j * rb, k);
        }
        qvl_free(row);
        return w;
    }
    for (size_t i = 0; i < (size_t)(n * k); i++) {
        float f = rnd_f() * 0.05f;
        if (wt == QVL_DT_BF16) {
            uint16_t h = qvl_f32_to_bf16(f);
            memcpy(w + i * 2, &h, 2);
        } else if (wt == QVL_DT_F16) {
            uint16_t h = qvl_f32_to_f16(f);
            memcpy(w + i * 2, &h, 2);
        } else {
            memcpy(w + i * 4, &f, 4);
        }
    }
    return w;
}

static const char *const k_paths[] = {"ref", "avx2", "avx512"};

/* m = 1 over a [n, k] matrix of type wt (BF16, Q8_0, Q4_0). Small matrices are replicated to
 * ~200 MB and the passes cycle through the copies, so every pass streams its weights from DRAM
 * as in real decoding rather than from the L3 cache. */
static void bench_matvec(const char *label, qvl_dtype wt, int64_t n, int64_t k,
                         double mem_gbs) {
    size_t bytes = (size_t)n * qvl_dtype_row_bytes(wt, (size_t)k);
    int copies = (int)((200u << 20) / bytes);
    if (copies < 1)
        copies = 1;
    if (copies > 16)
        copies = 16;
    void *w[16];
    for (int c = 0; c < copies; c++)
        w[c] = make_w(wt, n, k);
    float *x = xmalloc(sizeof(float) * (size_t)k);
    float *y = xmalloc(sizeof(float) * (size_t)n);
    for (int64_t i = 0; i < k; i++)
        x[i] = rnd_f();
    double ref_ms = 0;
    for (int pi = 0; pi < 3; pi++) {
        const qvl_kern *kt = qvl_kern_by_name(k_paths[pi]);
        if (!kt)
            continue;
        int64_t nrun = pi == 0 ? (n > 4096 ? n / 16 : n) : n; /* ref: a slice of big matrices */
        int reps = copies > 1 ? 2 * copies : 3;
        double best = 1e30;
        for (int r = 0; r < reps; r++) {
            double t = time_matmul(kt, y, x, 1, k, w[r % copies], wt, nrun, 1);
            if (t < best)
                best = t;
        }
        double ms = best * (double)n / (double)nrun;
        if (pi == 0)
            ref_ms = ms;
        printf("matvec %-4s %-8s %6lldx%-5lld %-6s %8.2f ms %6.1f GB/s (%3.0f%% of read loop)"
               "  x%.1f vs ref\n",
               qvl_dtype_name(wt), label, (long long)n, (long long)k, kt->name, ms,
               (double)bytes / (ms * 1e6),
               100.0 * (double)bytes / (ms * 1e6) / mem_gbs, ref_ms / ms);
    }
    for (int c = 0; c < copies; c++)
        qvl_free(w[c]);
    qvl_free(x);
    qvl_free(y);
}

/* path filter for the focused modes: NULL = every path, else only the named one */
static const char *g_only;
static int g_reps = 3; /* repetitions of the SIMD paths (best time counts) */

static bool path_skipped(int pi) {
    return g_only && strcmp(g_only, k_paths[pi]) != 0;
}

static void bench_gemm(qvl_dtype wt, int64_t m, int64_t n, int64_t k) {
    void *w = make_w(wt, n, k);
    float *x = xmalloc(sizeof(float) * (size_t)(m * k));
    float *y = xmalloc(sizeof(float) * (size_t)(m * n));
    for (int64_t i = 0; i < m * k; i++)
        x[i] = rnd_f();
    double ref_ms = 0;
    for (int pi = 0; pi < 3; pi++) {
        const qvl_kern *kt = qvl_kern_by_name(k_paths[pi]);
        if (!kt || path_skipped(pi))
            continue;
        int64_t nrun = pi == 0 ? 64 : n;
        double ms = time_matmul(kt, y, x, m, k, w, wt, nrun, pi == 0 ? 1 : g_reps) * (double)n / nrun;
        if (pi == 0)
            ref_ms = ms;
        double gflop = 2.0 * (double)m * (double)n * (double)k * 1e-9;
        printf("matmul %-4s m=%lld n=%lld k=%lld %-6s %8.1f ms %6.1f GFLOP/s  x%.1f vs ref\n",
               qvl_dtype_name(wt), (long long)m, (long long)n, (long long)k, kt->name, ms,
               gflop / (ms * 1e-3), ref_ms / ms);
    }
    qvl_free(w);
    qvl_free(x);
    qvl_free(y);
}

/* attention: rep query heads (interleaved in q and o rows, as the model lays them out) against
 * one K/V head, run one after the other, nq queries at the last positions of nk keys when
 * causal; the time covers all rep heads, GFLOP/s counts the keys each query really sees */
static void bench_attn(int64_t nq, int64_t nk, int hd, bool causal, int rep) {
    int64_t ldq = (int64_t)rep * hd;
    float *q = xmalloc(sizeof(float) * (size_t)(nq * ldq));
    float *k = xmalloc(sizeof(float) * (size_t)(nk * hd));
    float *v = xmalloc(sizeof(float) * (size_t)(nk * hd));
    float *o = xmalloc(sizeof(float) * (size_t)(nq * ldq));
    for (int64_t i = 0; i < nq * ldq; i++)
        q[i] = rnd_f();
    for (int64_t i = 0; i < nk * hd; i++) {
        k[i] = rnd_f();
        v[i] = rnd_f();
    }
    int64_t q_pos0 = causal ? nk - nq : 0;
    double pairs = 0; /* (query, key) pairs computed, per head */
    for (int64_t i = 0; i < nq; i++)
        pairs += causal ? (double)(q_pos0 + i + 1) : (double)nk;
    double ref_ms = 0;
    for (int pi = 0; pi < 3; pi++) {
        const qvl_kern *kt = qvl_kern_by_name(k_paths[pi]);
        if (!kt || path_skipped(pi))
            continue;
        /* ref: a slice of the queries, scaled (not for causal: the slice is not representative) */
        int64_t qrun = pi == 0 && !causal && nq >= 16 ? nq / 16 : nq;
        double best = 1e30;
        for (int r = 0; r < (pi == 0 ? 1 : g_reps); r++) {
            double t0 = bench_ms();
            for (int h = 0; h < rep; h++)
                kt->attn(o + h * hd, ldq, q + h * hd, ldq, qrun, k, hd, v, hd, 0, 0, nk, hd,
                         1.0f / sqrtf((float)hd), causal, q_pos0, QVL_DT_F32);
            double t = bench_ms() - t0;
            if (t < best)
                best = t;
        }
        double ms = best * (double)nq / (double)qrun;
        if (pi == 0)
            ref_ms = ms;
        double gflop = 4.0 * pairs * hd * rep * 1e-9;
        printf("attn nq=%lld nk=%lld hd=%d %-6s x%d heads %-6s %8.2f ms %6.1f GFLOP/s  x%.1f vs "
               "ref\n",
               (long long)nq, (long long)nk, hd, causal ? "causal" : "full", rep, kt->name, ms,
               gflop / (ms * 1e-3), ref_ms / ms);
    }
    qvl_free(q);
    qvl_free(k);
    qvl_free(v);
    qvl_free(o);
}

/* attention of one head inside a fused QKV activation as the vision tower lays it out:
 * q, k, v rows of [n, 3 * 16 * hd] (head 5), o rows of [n, 16 * hd] */
static void bench_attn_fused(int64_t n, int hd) {
    int64_t dm = 16 * (int64_t)hd, ld = 3 * dm, off = 5 * (int64_t)hd;
    float *qkv = xmalloc(sizeof(float) * (size_t)(n * ld));
    float *o = xmalloc(sizeof(float) * (size_t)(n * dm));
    for (int64_t i = 0; i < n * ld; i++)
        qkv[i] = rnd_f();
    for (int pi = 1; pi < 3; pi++) {
        const qvl_kern *kt = qvl_kern_by_name(k_paths[pi]);
        if (!kt || path_skipped(pi))
            continue;
        double best = 1e30;
        for (int r = 0; r < g_reps; r++) {
            double t0 = bench_ms();
            kt->attn(o + off, dm, qkv + off, ld, n, qkv + dm + off, ld, qkv + 2 * dm + off, ld, 0,
                     0, n, hd, 1.0f / sqrtf((float)hd), false, 0, QVL_DT_F32);
            double t = bench_ms() - t0;
            if (t < best)
                best = t;
        }
        printf("attn nq=%lld nk=%lld hd=%d full   fused QKV rows (stride %lld) %-6s %8.2f ms "
               "%6.1f GFLOP/s\n",
               (long long)n, (long long)n, hd, (long long)ld, kt->name, best,
               4.0 * (double)n * (double)n * hd * 1e-9 / (best * 1e-3));
    }
    qvl_free(qkv);
    qvl_free(o);
}

/* ---- element-wise ops ----------------------------------------------------------------------
 * Each op over n floats (norms: rows of h as the model calls them), inputs restored before every
 * repetition (outside the timing) so the activations always see the same values. GB/s counts the
 * bytes an op must move once: read x (+ u / w / b) and write y. */
enum { EL_GELU_TANH, EL_GELU_ERF, EL_SILU_MUL, EL_ADD, EL_RMSNORM, EL_LAYERNORM, EL_N };
static const char *const k_el_name[EL_N] = {"gelu_tanh", "gelu_erf", "silu_mul",
                                            "add",       "rmsnorm",  "layernorm"};
static const int k_el_bytes[EL_N] = {8, 8, 12, 12, 8, 8}; /* per element; w, b per row: small */

static void el_run(const qvl_kern *kt, int op, float *x, const float *u, const float *w,
                   const float *b, int64_t n, int64_t h) {
    switch (op) {
    case EL_GELU_TANH: kt->gelu_tanh(x, n); break;
    case EL_GELU_ERF: kt->gelu_erf(x, n); break;
    case EL_SILU_MUL: kt->silu_mul(x, u, n); break;
    case EL_ADD: kt->add(x, u, n); break;
    case EL_RMSNORM:
        for (int64_t r = 0; r + h <= n; r += h)
            kt->rmsnorm(x + r, x + r, w, h, 1e-6f);
        break;
    default:
        for (int64_t r = 0; r + h <= n; r += h)
            kt->layernorm(x + r, x + r, w, b, h, 1e-6f);
        break;
    }
}

static void bench_elementwise(const char *label, int64_t n, int64_t h, int reps) {
    float *x0 = xmalloc(sizeof(float) * (size_t)n);
    float *x = xmalloc(sizeof(float) * (size_t)n);
    float *u = xmalloc(sizeof(float) * (size_t)n);
    float *w = xmalloc(sizeof(float) * (size_t)h);
    float *b = xmalloc(sizeof(float) * (size_t)h);
    for (int64_t i = 0; i < n; i++) {
        x0[i] = rnd_f() * 4.0f; /* activations of a trained model mostly lie within +-4 */
        u[i] = rnd_f();
    }
    for (int64_t i = 0; i < h; i++) {
        w[i] = 1.0f + 0.1f * rnd_f();
        b[i] = 0.1f * rnd_f();
    }
    for (int op = 0; op < EL_N; op++) {
        double ref_ns = 0;
        for (int pi = 0; pi < 3; pi++) {
            const qvl_kern *kt = qvl_kern_by_name(k_paths[pi]);
            if (!kt)
                continue;
            double best = 1e30;
            for (int r = 0; r < reps; r++) {
                memcpy(x, x0, sizeof(float) * (size_t)n);
                double t0 = bench_ms();
                el_run(kt, op, x, u, w, b, n, h);
                double t = bench_ms() - t0;
                if (t < best)
                    best = t;
            }
            double ns = best * 1e6 / (double)n;
            if (pi == 0)
                ref_ns = ns;
            printf("%-9s %-8s n=%-8lld %-6s %7.3f ns/elem %6.1f GB/s  x%.1f vs ref\n",
                   k_el_name[op], label, (long long)n, kt->name, ns, k_el_bytes[op] / ns,
                   ref_ns / ns);
        }
    }
    qvl_free(x0);
    qvl_free(x);
    qvl_free(u);
    qvl_free(w);
    qvl_free(b);
}

/* Register-only FMA loop: the single-thread float32 FMA peak in GFLOP/s for vectors of vw
 * floats (12 independent accumulators hide the FMA latency on two pipes). */
#if defined(__x86_64__) && defined(__GNUC__)
#    include <immintrin.h>
/* one round of 12 independent FMAs on registers a0..a11 (named variables, so they stay in
 * registers), then an empty asm that pins them so the loop is not folded */
#    define PEAK_ROUND(FMA, C)                                                                 \
        a0 = FMA(a0, b, c); a1 = FMA(a1, b, c); a2 = FMA(a2, b, c); a3 = FMA(a3, b, c);       \
        a4 = FMA(a4, b, c); a5 = FMA(a5, b, c); a6 = FMA(a6, b, c); a7 = FMA(a7, b, c);       \
        a8 = FMA(a8, b, c); a9 = FMA(a9, b, c); a10 = FMA(a10, b, c); a11 = FMA(a11, b, c);   \
        __asm__ volatile("" : "+" C(a0), "+" C(a1), "+" C(a2), "+" C(a3), "+" C(a4),          \
                         "+" C(a5), "+" C(a6), "+" C(a7), "+" C(a8), "+" C(a9), "+" C(a10),    \
                         "+" C(a11))
__attribute__((target("avx512f"))) static double peak_512(int64_t iters) {
    __m512 a0 = _mm512_set1_ps(0.1f), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0,
           a7 = a0, a8 = a0, a9 = a0, a10 = a0, a11 = a0;
    __m512 b = _mm512_set1_ps(0.999999f), c = _mm512_set1_ps(1e-7f);
    double t0 = bench_ms();
    for (int64_t it = 0; it < iters; it++) {
        PEAK_ROUND(_mm512_fmadd_ps, "v");
    }
    double t = bench_ms() - t0;
    volatile float sink = _mm512_reduce_add_ps(a0) + _mm512_reduce_add_ps(a11);
    (void)sink;
    return (double)iters * 12 * 32 / (t * 1e6);
}
__attribute__((target("avx2,fma"))) static double peak_256(int64_t iters) {
    __m256 a0 = _mm256_set1_ps(0.1f), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0,
           a7 = a0, a8 = a0, a9 = a0, a10 = a0, a11 = a0;
    __m256 b = _mm256_set1_ps(0.999999f), c = _mm256_set1_ps(1e-7f);
    double t0 = bench_ms();
    for (int64_t it = 0; it < iters; it++) {
        PEAK_ROUND(_mm256_fmadd_ps, "x");
    }
    double t = bench_ms() - t0;
    float out[8];
    _mm256_storeu_ps(out, _mm256_add_ps(a0, a11));
    volatile float sink = out[0];
    (void)sink;
    return (double)iters * 12 * 16 / (t * 1e6);
}

static void bench_peak(void) {
    double best512 = 0, best256 = 0;
    for (int r = 0; r < 5; r++) {
        if (qvl_kern_by_name("avx512")) {
            double g = peak_512(20000000);
            best512 = g > best512 ? g : best512;
        }
        if (qvl_kern_by_name("avx2")) {
            double g = peak_256(20000000);
            best256 = g > best256 ? g : best256;
        }
    }
    printf("FMA peak (register-only loop, best of 5): avx512 %.1f GFLOP/s, avx2 %.1f GFLOP/s\n",
           best512, best256);
}
#else
static void bench_peak(void) {
    printf("FMA peak: not measured on this target\n");
}
#endif

/* the GEMM shapes of the vision tower and of 2B prefill, bf16 and f16 weights */
static void bench_gemm_shapes(void) {
    static const int64_t vis_nk[][2] = {{3072, 1024}, {1024, 1024}, {4096, 1024}, {1024, 4096}};
    static const int64_t pre_nk[][2] = {{2048, 2048}, {1024, 2048}, {6144, 2048}, {2048, 6144}};
    static const int64_t vis_m[] = {432, 3072};
    static const qvl_dtype dts[] = {QVL_DT_BF16, QVL_DT_F16};
    for (size_t d = 0; d < 2; d++) {
        for (size_t a = 0; a < 2; a++)
            for (size_t s = 0; s < 4; s++)
                bench_gemm(dts[d], vis_m[a], vis_nk[s][0], vis_nk[s][1]);
        for (size_t s = 0; s < 4; s++)
            bench_gemm(dts[d], 512, pre_nk[s][0], pre_nk[s][1]);
    }
}

/* The matmuls and the attention of one vision-tower layer for a 1024x768 image (3072 patches,
 * D 1024, 16 heads of 64, MLP 4096, bf16 weights) through the threaded ops (ops.c) on a pool of
 * nth threads, on the active kernel path; wall time, best of reps (element-wise ops left out). */
static void bench_vision_layer(int nth) {
    const int64_t m = 3072, d = 1024, f = 4096;
    qvl_pool *pool = NULL;
    if (qvl_pool_create(nth, &pool) != QVL_OK) {
        fprintf(stderr, "bench_kern: cannot create a pool of %d threads\n", nth);
        exit(1);
    }
    void *wqkv = make_w(QVL_DT_BF16, 3 * d, d), *wo = make_w(QVL_DT_BF16, d, d);
    void *w1 = make_w(QVL_DT_BF16, f, d), *w2 = make_w(QVL_DT_BF16, d, f);
    float *x = xmalloc(sizeof(float) * (size_t)(m * d));
    float *qkv = xmalloc(sizeof(float) * (size_t)(m * 3 * d));
    float *att = xmalloc(sizeof(float) * (size_t)(m * d));
    float *h = xmalloc(sizeof(float) * (size_t)(m * f));
    for (int64_t i = 0; i < m * d; i++)
        x[i] = rnd_f();
    qvl_mat mqkv = {wqkv, QVL_DT_BF16, 3 * d, d}, mo = {wo, QVL_DT_BF16, d, d};
    qvl_mat m1 = {w1, QVL_DT_BF16, f, d}, m2 = {w2, QVL_DT_BF16, d, f};
    double best[5] = {1e30, 1e30, 1e30, 1e30, 1e30}, bcpu[5] = {1e30, 1e30, 1e30, 1e30, 1e30};
    for (int r = 0; r < g_reps; r++) {
        double t[6], c[6];
        for (int step = 0; step < 5; step++) {
            t[step] = qvl_time_ms();
            c[step] = proc_cpu_ms();
            switch (step) {
            case 0: qvl_op_matmul(pool, qkv, x, m, &mqkv, NULL); break;
            case 1:
                qvl_op_attn(pool, att, d, qkv, 3 * d, m, qkv + d, 3 * d, qkv + 2 * d, 3 * d, 64,
                            0, 0, m, 16, 16, 64, 0.125f, false, 0, QVL_DT_F32);
                break;
            case 2: qvl_op_matmul(pool, x, att, m, &mo, NULL); break;
            case 3: qvl_op_matmul(pool, h, x, m, &m1, NULL); break;
            default: qvl_op_matmul(pool, x, h, m, &m2, NULL); break;
            }
            t[step + 1] = qvl_time_ms();
            c[step + 1] = proc_cpu_ms();
        }
        for (int i = 0; i < 5; i++) {
            best[i] = t[i + 1] - t[i] < best[i] ? t[i + 1] - t[i] : best[i];
            bcpu[i] = c[i + 1] - c[i] < bcpu[i] ? c[i + 1] - c[i] : bcpu[i];
        }
        for (int64_t i = 0; i < m * d; i++) /* keep the activations bounded */
            x[i] = x[i] * 1e-3f;
    }
    static const char *const names[5] = {"qkv", "attn", "proj", "fc1", "fc2"};
    static const double gf[5] = {2.0 * 3072 * 3072 * 1024 * 1e-9, 4.0 * 3072 * 3072 * 1024 * 1e-9,
                                 2.0 * 3072 * 1024 * 1024 * 1e-9, 2.0 * 3072 * 4096 * 1024 * 1e-9,
                                 2.0 * 3072 * 1024 * 4096 * 1e-9};
    double total = 0, tcpu = 0;
    printf("vision layer (3072 patches) on %d thread(s), %s path, best of %d: wall time, and CPU "
           "time of all threads (GFLOP/s per thread-second)\n",
           nth, qvl_kern_get()->name, g_reps);
    for (int i = 0; i < 5; i++) {
        total += best[i];
        tcpu += bcpu[i];
        printf("  %-5s wall %8.1f ms %6.1f GFLOP/s   cpu %8.1f ms %6.1f GFLOP/s per thread\n",
               names[i], best[i], gf[i] / (best[i] * 1e-3), bcpu[i], gf[i] / (bcpu[i] * 1e-3));
    }
    printf("  total wall %8.1f ms, cpu %8.1f ms (matmuls + attention; x24 layers: %.2f s wall)\n",
           total, tcpu, total * 24 * 1e-3);
    qvl_free(wqkv);
    qvl_free(wo);
    qvl_free(w1);
    qvl_free(w2);
    qvl_free(x);
    qvl_free(qkv);
    qvl_free(att);
    qvl_free(h);
    qvl_pool_free(pool);
}


/* Decode through the threaded ops: n_layers decoder layers of the 2B text model's shapes
 * (q 2048, k/v 1024, o 2048, gate/up 6144, down; k = 2048 or 6144) in dtype wt, one activation
 * row, nth threads, the matrices of each layer in the order the decoder runs them, each through
 * qvl_op_matmul (one pool job per matrix) or, with fused, the q/k/v and gate/up groups as one
 * job each (qvl_op_matmul_multi). Weights live in huge-page memory as the model loader puts them.
 * Prints GB/s of weights streamed and the fraction of a same-run nth-thread read loop. */
typedef struct {
    const uint64_t *p;
    size_t n;
    uint64_t sink;
} bk_read;

static void bk_read_task(void *arg, int ith, int nth) {
    bk_read *r = arg;
    size_t per = r->n / (size_t)nth / 16 * 16, i0 = per * (size_t)ith;
    __atomic_fetch_xor(&r->sink, memread_xor(r->p + i0, per), __ATOMIC_RELAXED);
}

static void *bk_huge(size_t n) {
    void *p = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        fprintf(stderr, "bench_kern: cannot map %zu bytes\n", n);
        exit(1);
    }
    madvise(p, n, MADV_HUGEPAGE);
    return p;
}

/* random weights of type wt without the cost of quantising: random bytes, block scales fixed */
static void bk_fill(uint8_t *w, qvl_dtype wt, int64_t n, int64_t k) {
    size_t rb = qvl_dtype_row_bytes(wt, (size_t)k), bytes = rb * (size_t)n;
    uint64_t s = g_rng;
    for (size_t i = 0; i + 8 <= bytes; i += 8) {
        s ^= s << 13, s ^= s >> 7, s ^= s << 17;
        uint64_t v = s;
        if (wt == QVL_DT_BF16) /* keep every bf16 small and finite: exponent 0x3c.. */
            v = (v & 0x807f807f807f807full) | 0x3c003c003c003c00ull;
        memcpy(w + i, &v, 8);
    }
    uint16_t d = qvl_f32_to_f16(0.001f);
    if (wt == QVL_DT_Q8_0 || wt == QVL_DT_Q4_0) {
        size_t bs = wt == QVL_DT_Q8_0 ? 34 : 18;
        for (int64_t j = 0; j < n; j++)
            for (int64_t b = 0; b < k / QVL_QBLOCK; b++)
                memcpy(w + (size_t)j * rb + (size_t)b * bs, &d, 2);
    } else if (qvl_dtype_is_x16(wt)) { /* the 16 scales open each block of a group */
        size_t gb = rb * QVL_X16 / (size_t)(k / QVL_QBLOCK);
        for (size_t o = 0; o < bytes; o += gb)
            for (int r = 0; r < QVL_X16; r++)
                memcpy(w + o + 2 * (size_t)r, &d, 2);
    }
}

/* Decode attention as the decoder runs it: n_layers layers of a K/V cache of nk tokens
 * (elements of type kvt in huge pages; 28 layers of the 2B shapes are 170-340 MB, so they come
 * from memory, not cache), one query row per head, the layers one after the other through the
 * threaded op (nth threads). The decoder's layout, each K/V head's rows contiguous within
 * chunks of C positions, or with pos_outer whole rows of all heads ([nk][n_kv * hd] per layer,
 * the layout before). Prints ms per token and GB/s of K/V read. cold: before each layer's call
 * the pool's threads read a 64 MiB buffer (untimed), so the layer's K/V rows come from memory
 * as in the decoder, where the layer's weights pass through the caches in between. */
static void bench_attn_decode(int nth, int64_t nk, int n_head, int n_kv, int n_layers,
                              qvl_dtype kvt, bool pos_outer, bool cold) {
    const int hd = 128;
    const int64_t C = QVL_KV_CHUNK, rows = (nk + C - 1) / C * C;
    const size_t es = qvl_dtype_row_bytes(kvt, 1), per = (size_t)(rows * n_kv * hd) * es;
    const size_t total = per * 2 * (size_t)n_layers;
    const double rd = (double)(nk * n_kv * hd) * (double)es * 2.0 * n_layers; /* bytes read */
    qvl_pool *pool = NULL;
    if (qvl_pool_create(nth, &pool) != QVL_OK) {
        fprintf(stderr, "bench_kern: cannot create a pool of %d threads\n", nth);
        exit(1);
    }
    uint8_t *kv = bk_huge(total);
    for (size_t i = 0; i < total / es; i++) { /* small random values of type kvt */
        float f = rnd_f();
        uint16_t h = kvt == QVL_DT_F16 ? qvl_f32_to_f16(f) : qvl_f32_to_bf16(f);
        if (kvt == QVL_DT_F32)
            memcpy(kv + 4 * i, &f, 4);
        else
            memcpy(kv + 2 * i, &h, 2);
    }
    const int64_t nq = (int64_t)n_head * hd;
    float *q = xmalloc(sizeof(float) * (size_t)nq), *o = xmalloc(sizeof(float) * (size_t)nq);
    for (int64_t i = 0; i < nq; i++)
        q[i] = rnd_f();
    const size_t flush_n = cold ? (size_t)64 << 20 : 0;
    uint8_t *flush = cold ? bk_huge(flush_n) : NULL;
    if (flush)
        memset(flush, 1, flush_n);
    double best = 1e30, sum = 0;
    const int reps = 10;
    for (int r = 0; r <= reps; r++) {
        double t = 0;
        for (int l = 0; l < n_layers; l++) {
            if (flush) { /* by the pool's threads, which stay awake for the call */
                bk_read fr = {(const uint64_t *)flush, flush_n / 8, 0};
                qvl_pool_run(pool, bk_read_task, &fr);
            }
            double t0 = qvl_time_ms();
            const uint8_t *k = kv + 2 * per * (size_t)l, *v = k + per;
            if (pos_outer)
                qvl_op_attn(pool, o, nq, q, nq, 1, k, n_kv * hd, v, n_kv * hd, hd, 0, 0, nk,
                            n_head, n_kv, hd, 1.0f / sqrtf((float)hd), true, nk - 1, kvt);
            else
                qvl_op_attn(pool, o, nq, q, nq, 1, k, hd, v, hd, C * hd, C, n_kv * C * hd, nk,
                            n_head, n_kv, hd, 1.0f / sqrtf((float)hd), true, nk - 1, kvt);
            t += qvl_time_ms() - t0;
        }
        if (r == 0)
            continue; /* warm-up */
        sum += t;
        best = t < best ? t : best;
    }
    printf("attn decode %d layers, %lld tokens, %d x %d heads, %s K/V (%.0f MB)%s, %d threads: "
           "best %.2f ms (%.1f GB/s), mean %.2f ms\n",
           n_layers, (long long)nk, n_kv, n_head / n_kv, qvl_dtype_name(kvt), rd / 1e6,
           pos_outer ? " positions outer" : cold ? " cold" : "", nth, best, rd / (best * 1e6),
           sum / reps);
    if (flush)
        munmap(flush, flush_n);
    munmap(kv, total);
    qvl_free(q);
    qvl_free(o);
    qvl_pool_free(pool);
}

static void bench_decode(qvl_dtype wt, int nth, int n_layers, int tokens, bool fused,
                         unsigned offset) {
    static const int64_t shp[7][2] = {{2048, 2048}, {1024, 2048}, {1024, 2048}, {2048, 2048},
                                      {6144, 2048}, {6144, 2048}, {2048, 6144}};
    qvl_pool *pool = NULL;
    if (qvl_pool_create(nth, &pool) != QVL_OK) {
        fprintf(stderr, "bench_kern: cannot create a pool of %d threads\n", nth);
        exit(1);
    }
    size_t layer_bytes = 0;
    for (int i = 0; i < 7; i++)
        layer_bytes += qvl_dtype_mat_bytes(wt, (size_t)shp[i][0], (size_t)shp[i][1]);
    size_t total = layer_bytes * (size_t)n_layers;
    uint8_t *map = bk_huge(total + 64), *base = map + offset;
    qvl_mat W[64][7];
    size_t off = 0;
    for (int l = 0; l < n_layers; l++)
        for (int i = 0; i < 7; i++) {
            bk_fill(base + off, wt, shp[i][0], shp[i][1]);
            W[l][i] = (qvl_mat){base + off, wt, shp[i][0], shp[i][1]};
            off += qvl_dtype_mat_bytes(wt, (size_t)shp[i][0], (size_t)shp[i][1]);
        }
    float *x = xmalloc(sizeof(float) * 6144), *y = xmalloc(sizeof(float) * 6144 * 3);
    for (int i = 0; i < 6144; i++)
        x[i] = rnd_f();
    /* same-run read loop over the same bytes with the same pool */
    bk_read rr = {(const uint64_t *)base, total / 8, 0};
    double best_rd = 1e30;
    for (int r = 0; r < 3; r++) {
        double t0 = qvl_time_ms();
        qvl_pool_run(pool, bk_read_task, &rr);
        double t = qvl_time_ms() - t0;
        if (t < best_rd)
            best_rd = t;
    }
    double rd_gbs = (double)total / (best_rd * 1e6);
    double best = 1e30, sum = 0;
    for (int t = 0; t <= tokens; t++) {
        double t0 = qvl_time_ms();
        for (int l = 0; l < n_layers; l++) {
            if (fused) {
                qvl_mat_job qkv[3] = {{y, &W[l][0], NULL}, {y + 2048, &W[l][1], NULL},
                                      {y + 3072, &W[l][2], NULL}};
                qvl_op_matmul_multi(pool, x, 1, qkv, 3);
                qvl_op_matmul(pool, y, x, 1, &W[l][3], NULL);
                qvl_mat_job gu[2] = {{y, &W[l][4], NULL}, {y + 6144, &W[l][5], NULL}};
                qvl_op_matmul_multi(pool, x, 1, gu, 2);
                qvl_op_matmul(pool, y, x, 1, &W[l][6], NULL);
            } else {
                for (int i = 0; i < 7; i++)
                    qvl_op_matmul(pool, y, x, 1, &W[l][i], NULL);
            }
        }
        double ms = qvl_time_ms() - t0;
        if (t == 0)
            continue; /* warm-up */
        sum += ms;
        if (ms < best)
            best = ms;
    }
    double med = sum / tokens;
    printf("decode %-4s %d layers (%.0f MB, +%u) %d threads %s: best %.2f ms "
           "(%.1f GB/s), mean %.2f ms"
           " (%.1f GB/s); read loop %.1f GB/s; best = %.0f%% of it\n",
           qvl_dtype_name(wt), n_layers, total / 1e6, offset, nth,
           fused ? "fused" : "one job/matrix", best, total / (best * 1e6), med,
           total / (med * 1e6), rd_gbs, 100.0 * total / (best * 1e6) / rd_gbs);
    munmap(map, total + 64);
    qvl_free(x);
    qvl_free(y);
    qvl_pool_free(pool);
}

/* One core's matrix-vector throughput with the weights in L2: one 128 x 2048 matrix of each
 * type (bf16 512 KiB, Q8_0X16 272 KiB, Q4_0X16 144 KiB) times one activation row, over and over,
 * on the active path; GB/s of weights, best of 5 rounds of ~2 GB. What a core can do when memory
 * is not the limit: against the 30-35 GB/s per core of a two-thread read loop it says how busy
 * the arithmetic keeps the core at the bandwidth limit. */
static void bench_ceiling(void) {
    static const qvl_dtype wts[3] = {QVL_DT_BF16, QVL_DT_Q8_0X16, QVL_DT_Q4_0X16};
    const int64_t n = 128, k = 2048;
    const qvl_kern *kk = qvl_kern_get();
    float *x = xmalloc(sizeof(float) * k), *y = xmalloc(sizeof(float) * n);
    for (int64_t i = 0; i < k; i++)
        x[i] = rnd_f();
    for (int t = 0; t < 3; t++) {
        size_t bytes = qvl_dtype_mat_bytes(wts[t], (size_t)n, (size_t)k);
        uint8_t *w = xmalloc(bytes);
        bk_fill(w, wts[t], n, k);
        int reps = (int)(2e9 / (double)bytes);
        double best = 1e30;
        for (int r = 0; r < 5; r++) {
            double t0 = qvl_time_ms();
            for (int i = 0; i < reps; i++) {
                qvl_kern_set_act_id(1); /* one input: int8 paths round it once */
                kk->matmul(y, n, x, k, 1, k, w, wts[t], NULL, 0, n);
            }
            double ms = qvl_time_ms() - t0;
            best = ms < best ? ms : best;
        }
        qvl_kern_set_act_id(0);
        printf("ceiling %s %-7s %lld x %lld (%zu KiB) in L2: %.1f GB/s\n", kk->name,
               qvl_dtype_name(wts[t]), (long long)n, (long long)k, bytes >> 10,
               (double)bytes * reps / (best * 1e6));
        qvl_free(w);
    }
    qvl_free(x);
    qvl_free(y);
}

int main(int argc, char **argv) {
    if (argc > 1 && !strcmp(argv[1], "layer")) {
        /* layer [threads [reps]]: one vision layer through ops.c on the active path (QVL_CPU) */
        int nth = argc > 2 && atoi(argv[2]) > 0 ? atoi(argv[2]) : 2;
        g_reps = argc > 3 && atoi(argv[3]) > 0 ? atoi(argv[3]) : 3;
        bench_vision_layer(nth);
        return 0;
    }
    if (argc > 1 && !strcmp(argv[1], "attn-decode")) {
        /* attn-decode [THREADS] [TOKENS] [cold]: 28 layers of the 2B shapes (16 query heads on
         * 8 K/V heads) and 36 of the 4B ones (32 on 8), f32, bf16 and f16 caches; and the 2B
         * bf16 cache with positions outer. cold: the 2B shapes only, each layer's rows from
         * memory */
        int nth = argc > 2 && atoi(argv[2]) > 0 ? atoi(argv[2]) : 2;
        int64_t nk = argc > 3 && atoi(argv[3]) > 0 ? atoi(argv[3]) : 1500;
        static const qvl_dtype kvts[3] = {QVL_DT_F32, QVL_DT_BF16, QVL_DT_F16};
        if (argc > 4 && !strcmp(argv[4], "cold")) {
            for (int t = 0; t < 3; t++)
                bench_attn_decode(nth, nk, 16, 8, 28, kvts[t], false, true);
            return 0;
        }
        for (int t = 0; t < 3; t++)
            bench_attn_decode(nth, nk, 16, 8, 28, kvts[t], false, false);
        bench_attn_decode(nth, nk, 32, 8, 36, QVL_DT_BF16, false, false);
        bench_attn_decode(nth, nk, 16, 8, 28, QVL_DT_BF16, true, false); /* the layout before */
        return 0;
    }
    if (argc > 1 && !strcmp(argv[1], "ceiling")) {
        bench_ceiling();
        return 0;
    }
    if (argc > 1 && !strcmp(argv[1], "decode")) {
        /* decode [bf16|q8|q4|q8row|q4row [threads [layers [fused [offset]]]]]: layers of 2B
         * decoder matvecs (q8/q4: the interleaved layout the loader makes; q8row/q4row: plain
         * row-major blocks, which only the float-widening path takes now); offset: the
         * weights start that many bytes (0-63) past a cache line, as a safetensors file's
         * tensors do (bf16 in place) */
        qvl_dtype wt = QVL_DT_BF16;
        if (argc > 2 && !strcmp(argv[2], "q8"))
            wt = QVL_DT_Q8_0X16; /* the layout the model loader makes */
        else if (argc > 2 && !strcmp(argv[2], "q4"))
            wt = QVL_DT_Q4_0X16;
        else if (argc > 2 && !strcmp(argv[2], "q8row"))
            wt = QVL_DT_Q8_0;
        else if (argc > 2 && !strcmp(argv[2], "q4row"))
            wt = QVL_DT_Q4_0;
        int nth = argc > 3 && atoi(argv[3]) > 0 ? atoi(argv[3]) : 2;
        int nl = argc > 4 && atoi(argv[4]) > 0 ? atoi(argv[4]) : 8;
        unsigned off = argc > 6 ? (unsigned)atoi(argv[6]) % 64 : 0;
        bench_decode(wt, nth, nl > 64 ? 64 : nl, 20, argc > 5 && atoi(argv[5]) != 0, off);
        return 0;
    }
    bool quick = argc > 1 && !strcmp(argv[1], "quick");
    bool elem_only = argc > 1 && !strcmp(argv[1], "elem");
    /* focused modes: peak | attn | gemm | shapes [path] [reps] (no ref unless named) */
    if (argc > 1 && (!strcmp(argv[1], "peak") || !strcmp(argv[1], "attn") ||
                     !strcmp(argv[1], "gemm") || !strcmp(argv[1], "shapes"))) {
        g_only = argc > 2 ? argv[2] : NULL;
        g_cpu_clock = true;
        printf("(times: this thread's CPU clock, best of the repetitions)\n");
        if (argc > 3)
            g_reps = atoi(argv[3]) > 0 ? atoi(argv[3]) : 3;
        if (!g_only && strcmp(argv[1], "peak"))
            printf("(all paths; name one, e.g. avx512, to skip the slow ref)\n");
        if (!strcmp(argv[1], "peak")) {
            bench_peak();
        } else if (!strcmp(argv[1], "attn")) {
            bench_attn(3072, 3072, 64, false, 1); /* vision tower, 1024x768 image */
            bench_attn(3072, 3072, 72, false, 1);
            bench_attn(512, 512, 128, true, 2);   /* prefill, two query heads per K/V head */
            bench_attn(1, 4096, 128, true, 2);    /* decode at a 4096-token context */

            bench_attn_fused(3072, 64);
        } else if (!strcmp(argv[1], "gemm")) {
            bench_gemm(QVL_DT_BF16, 512, 2048, 2048);
            bench_gemm(QVL_DT_BF16, 3072, 1024, 1024);
        } else {
            bench_gemm_shapes();
        }
        return 0;
    }
    char cpu[256];
    cpu_model(cpu, sizeof cpu);
    printf("cpu: %s; paths:", cpu);
    for (int i = 0; i < 3; i++)
        printf(" %s%s", k_paths[i], qvl_kern_by_name(k_paths[i]) ? "" : "(n/a)");
    printf("; 1 thread\n");
    if (elem_only) {
        /* decode-sized (cache-resident: 6144 = one token's MLP row, norms over h = 2048) and
         * vision-tower-sized (16 MB, a 1000 x 4096 MLP activation: memory traffic counts) */
        bench_elementwise("cache", 6144, 2048, 2000);
        bench_elementwise("dram", 4 << 20, 2048, 5);
        return 0;
    }

    size_t rd = (size_t)256 << 20;
    uint64_t *buf = xmalloc(rd);
    memset(buf, 1, rd);
    double mem = read_bw(buf, rd, 3);
    qvl_free(buf);
    printf("plain read loop 256 MB: %.1f GB/s\n", mem);

    bench_matvec("ffn_down", QVL_DT_BF16, 2048, 6144, mem);
    bench_matvec("ffn_down", QVL_DT_Q8_0, 2048, 6144, mem);
    bench_matvec("ffn_down", QVL_DT_Q4_0, 2048, 6144, mem);
    if (!quick)
        bench_matvec("lm_head", QVL_DT_BF16, 151936, 2048, mem);
    bench_gemm(QVL_DT_BF16, 512, 2048, 2048);
    bench_gemm(QVL_DT_F32, 512, 2048, 2048);
    bench_attn(3072, 3072, 64, false, 1);
    bench_elementwise("cache", 6144, 2048, 2000);
    bench_elementwise("dram", 4 << 20, 2048, 5);
    return 0;
}
