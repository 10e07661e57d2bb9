/* bench_kern.c - kernel throughput on one thread: matvec GB/s against a plain memory-read loop,
 * matmul GFLOP/s for a prefill-sized batch, attention time for a vision-tower head, and the
 * element-wise ops (norms, activations, add) in ns/element and GB/s, for every kernel path this
 * CPU has (ref, avx2, avx512).
 *
 * Built by CMake as bench_kern (cmake --build <dir> --target bench_kern).
 * Run: <dir>/bench_kern [quick|elem]   ("quick" skips the 622 MB lm_head case, "elem" runs only
 * the element-wise ops). The ref path is timed on a slice of the work (fewer output rows /
 * queries) and scaled, so the whole run stays within a few seconds.
 */
#include "common.h"
#include "kern/kern.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static uint64_t g_rng = 88172645463325252ull;

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
        double t0 = qvl_time_ms();
        uint64_t a = 0, b = 0, c = 0, d = 0;
        for (size_t i = 0; i + 4 <= n / 8; i += 4) {
            a += p[i];
            b += p[i + 1];
            c += p[i + 2];
            d += p[i + 3];
        }
        sink += a + b + c + d;
        double t = qvl_time_ms() - t0;
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
        double t0 = qvl_time_ms();
        kt->matmul(y, nrun, x, k, m, k, w, wt, NULL, 0, nrun);
        double t = qvl_time_ms() - t0;
        if (t < best)
            best = t;
    }
    return best;
}

static void *make_w(qvl_dtype wt, int64_t n, int64_t k) {
    size_t rb = qvl_dtype_row_bytes(wt, (size_t)k);
    uint8_t *w = xmalloc(rb * (size_t)n);
    for (size_t i = 0; i < (size_t)(n * k); i++) {
        float f = rnd_f() * 0.05f;
        if (wt == QVL_DT_BF16) {
            uint16_t h = qvl_f32_to_bf16(f);
            memcpy(w + i * 2, &h, 2);
        } else {
            memcpy(w + i * 4, &f, 4);
        }
    }
    return w;
}

static const char *const k_paths[] = {"ref", "avx2", "avx512"};

/* m = 1 over a bf16 [n, k] matrix. Small matrices are replicated to ~200 MB and the passes cycle
 * through the copies, so every pass streams its weights from DRAM as in real decoding rather
 * than from the L3 cache. */
static void bench_matvec(const char *label, int64_t n, int64_t k, double mem_gbs) {
    size_t bytes = (size_t)n * (size_t)k * 2;
    int copies = (int)((200u << 20) / bytes);
    if (copies < 1)
        copies = 1;
    if (copies > 16)
        copies = 16;
    void *w[16];
    for (int c = 0; c < copies; c++)
        w[c] = make_w(QVL_DT_BF16, n, k);
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
            double t = time_matmul(kt, y, x, 1, k, w[r % copies], QVL_DT_BF16, nrun, 1);
            if (t < best)
                best = t;
        }
        double ms = best * (double)n / (double)nrun;
        if (pi == 0)
            ref_ms = ms;
        printf("matvec bf16 %-8s %6lldx%-5lld %-6s %8.2f ms %6.1f GB/s (%3.0f%% of read loop)"
               "  x%.1f vs ref\n",
               label, (long long)n, (long long)k, kt->name, ms, (double)bytes / (ms * 1e6),
               100.0 * (double)bytes / (ms * 1e6) / mem_gbs, ref_ms / ms);
    }
    for (int c = 0; c < copies; c++)
        qvl_free(w[c]);
    qvl_free(x);
    qvl_free(y);
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
        if (!kt)
            continue;
        int64_t nrun = pi == 0 ? 64 : n;
        double ms = time_matmul(kt, y, x, m, k, w, wt, nrun, pi == 0 ? 1 : 3) * (double)n / nrun;
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

static void bench_attn(int64_t nq, int hd, bool causal) {
    int64_t nk = nq;
    float *q = xmalloc(sizeof(float) * (size_t)(nq * hd));
    float *k = xmalloc(sizeof(float) * (size_t)(nk * hd));
    float *v = xmalloc(sizeof(float) * (size_t)(nk * hd));
    float *o = xmalloc(sizeof(float) * (size_t)(nq * hd));
    for (int64_t i = 0; i < nq * hd; i++) {
        q[i] = rnd_f();
        k[i] = rnd_f();
        v[i] = rnd_f();
    }
    double ref_ms = 0;
    for (int pi = 0; pi < 3; pi++) {
        const qvl_kern *kt = qvl_kern_by_name(k_paths[pi]);
        if (!kt)
            continue;
        int64_t qrun = pi == 0 ? nq / 16 : nq; /* ref: a slice of the queries, scaled */
        double best = 1e30;
        for (int r = 0; r < (pi == 0 ? 1 : 3); r++) {
            double t0 = qvl_time_ms();
            kt->attn(o, hd, q, hd, qrun, k, hd, v, hd, nk, hd, 1.0f / sqrtf((float)hd), causal, 0);
            double t = qvl_time_ms() - t0;
            if (t < best)
                best = t;
        }
        double ms = best * (double)nq / (double)qrun;
        if (causal && pi == 0)
            ms = NAN; /* the causal slice is not representative of the whole */
        if (pi == 0)
            ref_ms = ms;
        double gflop = 4.0 * (double)nq * (double)nk * hd * 1e-9 * (causal ? 0.5 : 1.0);
        printf("attn nq=nk=%lld hd=%d %-6s %-6s %8.1f ms %6.1f GFLOP/s  x%.1f vs ref\n",
               (long long)nq, hd, causal ? "causal" : "full", kt->name, ms,
               gflop / (ms * 1e-3), ref_ms / ms);
    }
    qvl_free(q);
    qvl_free(k);
    qvl_free(v);
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
                double t0 = qvl_time_ms();
                el_run(kt, op, x, u, w, b, n, h);
                double t = qvl_time_ms() - t0;
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

int main(int argc, char **argv) {
    bool quick = argc > 1 && !strcmp(argv[1], "quick");
    bool elem_only = argc > 1 && !strcmp(argv[1], "elem");
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

    bench_matvec("ffn_down", 2048, 6144, mem);
    if (!quick)
        bench_matvec("lm_head", 151936, 2048, mem);
    bench_gemm(QVL_DT_BF16, 512, 2048, 2048);
    bench_gemm(QVL_DT_F32, 512, 2048, 2048);
    bench_attn(3072, 64, false);
    bench_elementwise("cache", 6144, 2048, 2000);
    bench_elementwise("dram", 4 << 20, 2048, 5);
    return 0;
}
