/* test_kern.c - every kernel table entry (ref, and avx2/avx512 when this CPU has them) against a
 * double-precision evaluation of the definition in kern.h, on random data with odd sizes,
 * strides, output slices and bias on/off; plus quantise/dequantise round trips and f16/bf16
 * conversions. Prints which paths ran; missing paths are skipped, not failed. */
#include "check.h"
#include "common.h"
#include "kern/kern.h"

#include <math.h>
#include <stdint.h>

static uint64_t g_rng = 0x9e3779b97f4a7c15ull;

static uint32_t rnd_u32(void) {
    g_rng ^= g_rng << 13;
    g_rng ^= g_rng >> 7;
    g_rng ^= g_rng << 17;
    return (uint32_t)(g_rng >> 16);
}

/* uniform in [-1, 1) */
static float rnd_f(void) {
    return (float)((double)rnd_u32() / 2147483648.0 - 1.0);
}

static void fill(float *p, size_t n, float amp) {
    for (size_t i = 0; i < n; i++)
        p[i] = rnd_f() * amp;
}

/* normalised mean squared error of got against want; n = 0 gives 0 */
typedef struct {
    double err, ref;
} nmse_acc;

static void nmse_add(nmse_acc *a, double got, double want) {
    a->err += (got - want) * (got - want);
    a->ref += want * want;
}

static double nmse(const nmse_acc *a) {
    if (a->ref == 0)
        return a->err == 0 ? 0.0 : INFINITY;
    return a->err / a->ref;
}

static const char *const k_paths[] = {"ref", "avx2", "avx512"};
#define N_PATHS 3

/* ---- weights ----------------------------------------------------------------------------- */

/* Random [n, k] weights of type wt (f16 rows include negative subnormals and signed zeros) and
 * their exact float32 widening. Returns false on allocation failure. */
static bool make_weights(qvl_dtype wt, int64_t n, int64_t k, uint8_t **w, float **wf) {
    size_t rb = qvl_dtype_row_bytes(wt, (size_t)k);
    *w = qvl_malloc(rb * (size_t)n + 1);
    *wf = qvl_malloc(sizeof(float) * (size_t)(n * k) + 1);
    float *tmp = qvl_malloc(sizeof(float) * (size_t)k + 1);
    if (!*w || !*wf || !tmp) {
        qvl_free(tmp);
        return false;
    }
    for (int64_t j = 0; j < n; j++) {
        uint8_t *row = *w + (size_t)j * rb;
        fill(tmp, (size_t)k, 1.0f);
        switch (wt) {
        case QVL_DT_F32: memcpy(row, tmp, (size_t)k * 4); break;
        case QVL_DT_F16:
            for (int64_t p = 0; p < k; p++) {
                uint16_t h = qvl_f32_to_f16(tmp[p]);
                if (rnd_u32() % 16 == 0) /* subnormal or zero, random sign */
                    h = (uint16_t)((rnd_u32() & 0x83ffu));
                memcpy(row + p * 2, &h, 2);
            }
            break;
        case QVL_DT_BF16:
            for (int64_t p = 0; p < k; p++) {
                uint16_t h = qvl_f32_to_bf16(tmp[p]);
                memcpy(row + p * 2, &h, 2);
            }
            break;
        default: qvl_quantize_row(wt, tmp, row, k); break;
        }
        qvl_row_to_f32(wt, row, *wf + j * k, k);
    }
    qvl_free(tmp);
    return true;
}

/* ---- matmul ------------------------------------------------------------------------------ */

#define SENTINEL 12345.0f

/* one (dtype, m, k, n) case against every available path, bias off and on, full range and a
 * slice; returns the worst NMSE seen (and counts checks) */
static void check_matmul(qvl_dtype wt, int64_t m, int64_t k, int64_t n, double bound,
                         const qvl_kern *const kt[N_PATHS], double *worst) {
    int64_t ldx = k + 3, ldy = n + 5;
    uint8_t *w = NULL;
    float *wf = NULL;
    float *x = qvl_malloc(sizeof(float) * (size_t)(m * ldx));
    float *y = qvl_malloc(sizeof(float) * (size_t)(m * ldy));
    float *b = qvl_malloc(sizeof(float) * (size_t)n);
    double *want = qvl_malloc(sizeof(double) * (size_t)(m * n));
    bool ok = make_weights(wt, n, k, &w, &wf);
    CHECK(ok && x && y && b && want);
    if (!ok || !x || !y || !b || !want)
        goto done;
    fill(x, (size_t)(m * ldx), 1.0f);
    fill(b, (size_t)n, 1.0f);
    for (int64_t i = 0; i < m; i++)
        for (int64_t j = 0; j < n; j++) {
            double s = 0;
            for (int64_t p = 0; p < k; p++)
                s += (double)x[i * ldx + p] * wf[j * k + p];
            want[i * n + j] = s;
        }
    for (int pi = 0; pi < N_PATHS; pi++) {
        if (!kt[pi])
            continue;
        for (int variant = 0; variant < 4; variant++) {
            bool use_b = variant & 1;
            int64_t j0 = variant & 2 ? n / 3 : 0;
            int64_t j1 = variant & 2 ? n - n / 4 : n;
            for (int64_t i = 0; i < m * ldy; i++)
                y[i] = SENTINEL;
            bool took = kt[pi]->matmul(y, ldy, x, ldx, m, k, w, wt, use_b ? b : NULL, j0, j1);
            CHECKF(took, "%s matmul declined %s", kt[pi]->name, qvl_dtype_name(wt));
            if (!took)
                continue;
            nmse_acc a = {0, 0};
            bool outside_ok = true;
            for (int64_t i = 0; i < m; i++)
                for (int64_t j = 0; j < ldy; j++) {
                    float got = y[i * ldy + j];
                    if (j < j0 || j >= j1) {
                        outside_ok &= got == SENTINEL;
                        continue;
                    }
                    nmse_add(&a, got, want[i * n + j] + (use_b ? b[j] : 0.0));
                }
            double e = nmse(&a);
            if (e > *worst)
                *worst = e;
            CHECKF(e < bound, "%s matmul %s m=%lld k=%lld n=%lld bias=%d j=[%lld,%lld): nmse %.3g",
                   kt[pi]->name, qvl_dtype_name(wt), (long long)m, (long long)k, (long long)n,
                   use_b, (long long)j0, (long long)j1, e);
            CHECKF(outside_ok, "%s matmul %s wrote outside [j0,j1) or past n", kt[pi]->name,
                   qvl_dtype_name(wt));
        }
    }
done:
    qvl_free(w);
    qvl_free(wf);
    qvl_free(x);
    qvl_free(y);
    qvl_free(b);
    qvl_free(want);
}

static void test_matmul(const qvl_kern *const kt[N_PATHS]) {
    static const int64_t ms[] = {1, 2, 3, 7, 33};
    static const int64_t ns[] = {1, 7, 33, 130};
    static const int64_t kf[] = {1, 17, 32, 64, 96, 4097};
    static const int64_t kq[] = {32, 64, 96, 4096};
    static const qvl_dtype dts[] = {QVL_DT_F32, QVL_DT_F16, QVL_DT_BF16, QVL_DT_Q8_0, QVL_DT_Q4_0};
    for (size_t d = 0; d < sizeof dts / sizeof dts[0]; d++) {
        bool q = dts[d] == QVL_DT_Q8_0 || dts[d] == QVL_DT_Q4_0;
        const int64_t *ks = q ? kq : kf;
        size_t nks = q ? sizeof kq / sizeof kq[0] : sizeof kf / sizeof kf[0];
        double worst = 0;
        for (size_t a = 0; a < sizeof ms / sizeof ms[0]; a++)
            for (size_t c = 0; c < nks; c++)
                for (size_t e = 0; e < sizeof ns / sizeof ns[0]; e++) {
                    /* keep the big-k cases to the smaller shapes so the test stays quick */
                    if (ks[c] > 1000 && ms[a] * ns[e] > 33 * 33)
                        continue;
                    check_matmul(dts[d], ms[a], ks[c], ns[e], 1e-10, kt, &worst);
                }
        /* one larger case that crosses GEMM panel boundaries in k and n */
        check_matmul(dts[d], 70, q ? 544 : 531, 75, 1e-10, kt, &worst);
        printf("matmul %-5s worst nmse vs double %.3g\n", qvl_dtype_name(dts[d]), worst);
    }
    /* dtypes the SIMD kernels do not take are declined, not computed (ref takes anything) */
    float y = 0, x = 1;
    int32_t wi = 1;
    for (int pi = 1; pi < N_PATHS; pi++)
        if (kt[pi])
            CHECK(!kt[pi]->matmul(&y, 1, &x, 1, 1, 1, &wi, QVL_DT_I32, NULL, 0, 1));
}

/* ---- attention --------------------------------------------------------------------------- */

static void check_attn(int64_t nq, int64_t nk, int hd, float scale, bool causal, int64_t q_pos0,
                       const qvl_kern *const kt[N_PATHS], double *worst) {
    int64_t ldq = hd + 1, ldk = hd + 3, ldv = hd + 2, ldo = hd + 5;
    float *q = qvl_malloc(sizeof(float) * (size_t)(nq * ldq + 1));
    float *k = qvl_malloc(sizeof(float) * (size_t)(nk * ldk + 1));
    float *v = qvl_malloc(sizeof(float) * (size_t)(nk * ldv + 1));
    float *o = qvl_malloc(sizeof(float) * (size_t)(nq * ldo + 1));
    double *want = qvl_malloc(sizeof(double) * (size_t)(nq * hd + 1));
    double *sc = qvl_malloc(sizeof(double) * (size_t)(nk + 1));
    CHECK(q && k && v && o && want && sc);
    if (!q || !k || !v || !o || !want || !sc)
        goto done;
    fill(q, (size_t)(nq * ldq), 1.0f);
    fill(k, (size_t)(nk * ldk), 1.0f);
    fill(v, (size_t)(nk * ldv), 1.0f);
    for (int64_t i = 0; i < nq; i++) {
        int64_t end = causal ? q_pos0 + i + 1 : nk;
        if (end > nk)
            end = nk;
        double mx = -INFINITY, sum = 0;
        for (int64_t j = 0; j < end; j++) {
            double s = 0;
            for (int d = 0; d < hd; d++)
                s += (double)q[i * ldq + d] * k[j * ldk + d];
            sc[j] = s * scale;
            if (sc[j] > mx)
                mx = sc[j];
        }
        for (int64_t j = 0; j < end; j++) {
            sc[j] = exp(sc[j] - mx);
            sum += sc[j];
        }
        for (int d = 0; d < hd; d++) {
            double acc = 0;
            for (int64_t j = 0; j < end; j++)
                acc += sc[j] * v[j * ldv + d];
            want[i * hd + d] = sum > 0 ? acc / sum : 0.0;
        }
    }
    for (int pi = 0; pi < N_PATHS; pi++) {
        if (!kt[pi])
            continue;
        for (int64_t i = 0; i < nq * ldo; i++)
            o[i] = SENTINEL;
        kt[pi]->attn(o, ldo, q, ldq, nq, k, ldk, v, ldv, nk, hd, scale, causal, q_pos0);
        nmse_acc a = {0, 0};
        bool outside_ok = true;
        for (int64_t i = 0; i < nq; i++)
            for (int64_t d = 0; d < ldo; d++) {
                if (d >= hd)
                    outside_ok &= o[i * ldo + d] == SENTINEL;
                else
                    nmse_add(&a, o[i * ldo + d], want[i * hd + d]);
            }
        double e = nmse(&a);
        if (e > *worst)
            *worst = e;
        CHECKF(e < 1e-10, "%s attn nq=%lld nk=%lld hd=%d causal=%d pos0=%lld: nmse %.3g",
               kt[pi]->name, (long long)nq, (long long)nk, hd, causal, (long long)q_pos0, e);
        CHECKF(outside_ok, "%s attn wrote past hd", kt[pi]->name);
    }
done:
    qvl_free(q);
    qvl_free(k);
    qvl_free(v);
    qvl_free(o);
    qvl_free(want);
    qvl_free(sc);
}

static void test_attn(const qvl_kern *const kt[N_PATHS]) {
    static const int hds[] = {1, 7, 16, 64, 72, 128, 300};
    static const int64_t nqs[] = {1, 3, 9, 70};
    static const int64_t nks[] = {1, 5, 33, 100};
    double worst = 0;
    for (size_t h = 0; h < sizeof hds / sizeof hds[0]; h++)
        for (size_t a = 0; a < sizeof nqs / sizeof nqs[0]; a++)
            for (size_t c = 0; c < sizeof nks / sizeof nks[0]; c++) {
                int64_t nq = nqs[a], nk = nks[c];
                float scale = 1.0f / sqrtf((float)hds[h]);
                check_attn(nq, nk, hds[h], scale, false, 0, kt, &worst);
                check_attn(nq, nk, hds[h], scale, true, 0, kt, &worst);
                if (nk > nq) /* decoder shape: queries are the last nq positions */
                    check_attn(nq, nk, hds[h], scale, true, nk - nq, kt, &worst);
                check_attn(nq, nk, hds[h], scale, true, 4, kt, &worst);
            }
    /* sharp softmax (large scores: the running max moves, tiny probabilities underflow) */
    check_attn(70, 100, 64, 4.0f, false, 0, kt, &worst);
    check_attn(70, 100, 64, 4.0f, true, 30, kt, &worst);
    check_attn(2, 300, 128, 4.0f, true, 298, kt, &worst);
    /* no keys at all: output is zero */
    check_attn(5, 0, 16, 1.0f, false, 0, kt, &worst);
    printf("attn worst nmse vs double %.3g\n", worst);
}

/* ---- dot --------------------------------------------------------------------------------- */

static void test_dot(const qvl_kern *const kt[N_PATHS]) {
    static const int64_t ns[] = {0, 1, 7, 16, 33, 64, 100, 4097};
    float *a = qvl_malloc(sizeof(float) * 4097);
    float *b = qvl_malloc(sizeof(float) * 4097);
    CHECK(a && b);
    if (a && b) {
        fill(a, 4097, 1.0f);
        fill(b, 4097, 1.0f);
        for (int pi = 0; pi < N_PATHS; pi++) {
            if (!kt[pi])
                continue;
            nmse_acc acc = {0, 0};
            for (size_t t = 0; t < sizeof ns / sizeof ns[0]; t++) {
                double s = 0;
                for (int64_t i = 0; i < ns[t]; i++)
                    s += (double)a[i] * b[i];
                float got = kt[pi]->dot(a, b, ns[t]);
                nmse_add(&acc, got, s);
                CHECKF(fabs(got - s) <= 1e-5 * (1 + fabs(s)) + 1e-6 * ns[t], "%s dot n=%lld",
                       kt[pi]->name, (long long)ns[t]);
            }
            CHECKF(nmse(&acc) < 1e-10, "%s dot nmse %.3g", kt[pi]->name, nmse(&acc));
        }
    }
    qvl_free(a);
    qvl_free(b);
}

/* ---- quantisation and conversions -------------------------------------------------------- */

static void test_quant(void) {
    enum { K = 32 * 64 };
    float *x = qvl_malloc(sizeof(float) * K);
    float *y = qvl_malloc(sizeof(float) * K);
    uint8_t *qb = qvl_malloc(34 * K / 32);
    CHECK(x && y && qb);
    if (!x || !y || !qb)
        goto done;
    for (int pass = 0; pass < 2; pass++) {
        qvl_dtype t = pass ? QVL_DT_Q4_0 : QVL_DT_Q8_0;
        fill(x, K, 3.0f);
        /* some blocks all zero, some tiny, some with a single spike */
        memset(x, 0, 32 * sizeof(float));
        for (int e = 32; e < 64; e++)
            x[e] *= 1e-6f;
        x[64 + 5] = 50.0f;
        qvl_quantize_row(t, x, qb, K);
        qvl_row_to_f32(t, qb, y, K);
        nmse_acc a = {0, 0};
        bool within = true;
        for (int b0 = 0; b0 < K; b0 += 32) {
            float amax = 0;
            for (int e = 0; e < 32; e++)
                amax = fmaxf(amax, fabsf(x[b0 + e]));
            /* Q8_0: half a step of amax/127; Q4_0: at most one step of amax/8 (the side opposite
             * the largest magnitude clamps at +7); both plus f16 rounding of the scale */
            float ulp = 2.9802322e-08f; /* half the f16 subnormal step: scale rounding floor */
            float lim = pass ? (amax / 8.0f + 8 * ulp) * 1.002f
                             : (amax / 127.0f * 0.5f + 127 * ulp) * 1.01f;
            for (int e = 0; e < 32; e++) {
                within &= fabsf(x[b0 + e] - y[b0 + e]) <= lim;
                if (b0 >= 96) /* NMSE over the ordinary (uniform random) blocks */
                    nmse_add(&a, y[b0 + e], x[b0 + e]);
            }
        }
        CHECKF(within, "%s round trip exceeds its per-block bound", qvl_dtype_name(t));
        double e = nmse(&a);
        CHECKF(e < (pass ? 1e-2 : 1e-4), "%s round trip nmse %.3g", qvl_dtype_name(t), e);
        CHECK(y[0] == 0.0f && y[31] == 0.0f);
        printf("quant %s round-trip nmse %.3g\n", qvl_dtype_name(t), e);
    }
done:
    qvl_free(x);
    qvl_free(y);
    qvl_free(qb);
}

static void test_convert(void) {
    /* every f16 and bf16 value widens identically in common.c and in the kernels' row widening,
     * and narrows back to itself */
    bool f16_same = true, f16_round = true, bf16_same = true, bf16_round = true;
    for (uint32_t h = 0; h < 65536; h++) {
        uint16_t hh = (uint16_t)h;
        float a, c;
        qvl_row_to_f32(QVL_DT_F16, &hh, &a, 1);
        float b = qvl_f16_to_f32(hh);
        bool nan16 = (h & 0x7c00u) == 0x7c00u && (h & 0x3ffu);
        if (!nan16) {
            f16_same &= memcmp(&a, &b, 4) == 0;
            f16_round &= qvl_f32_to_f16(b) == hh;
        } else {
            f16_same &= isnan(a) && isnan(b);
        }
        qvl_row_to_f32(QVL_DT_BF16, &hh, &c, 1);
        float d = qvl_bf16_to_f32(hh);
        bool nanb = (h & 0x7f80u) == 0x7f80u && (h & 0x7fu);
        if (!nanb) {
            bf16_same &= memcmp(&c, &d, 4) == 0;
            bf16_round &= qvl_f32_to_bf16(d) == hh;
        }
    }
    CHECK(f16_same);
    CHECK(f16_round);
    CHECK(bf16_same);
    CHECK(bf16_round);
    /* rounding: nearest, ties to even */
    CHECK(qvl_f32_to_bf16(1.0f + 1.0f / 256) == 0x3f80);          /* tie, even stays */
    CHECK(qvl_f32_to_bf16(1.0f + 3.0f / 256) == 0x3f82);          /* tie, odd rounds up */
    CHECK(qvl_f32_to_bf16(1.0f + 1.0f / 256 + 1e-6f) == 0x3f81);  /* above the tie */
    CHECK(qvl_f32_to_f16(1.0f + 1.0f / 2048) == 0x3c00);          /* tie, even stays */
    CHECK(qvl_f32_to_f16(1.0f + 3.0f / 2048) == 0x3c02);          /* tie, odd rounds up */
    CHECK(qvl_f32_to_f16(65520.0f) == 0x7c00);                    /* overflow to inf */
    CHECK(qvl_f32_to_f16(5.9604645e-08f) == 0x0001);              /* smallest subnormal */
    CHECK(qvl_f32_to_f16(-2.9802322e-08f) == 0x8000);             /* half of it: tie to zero */
}

int main(void) {
    const qvl_kern *kt[N_PATHS];
    printf("kernel paths:");
    for (int i = 0; i < N_PATHS; i++) {
        kt[i] = qvl_kern_by_name(k_paths[i]);
        printf(" %s=%s", k_paths[i], kt[i] ? "ran" : "skipped (not supported here)");
    }
    printf("\nactive: %s\n", qvl_kern_get()->name);
    CHECK(kt[0] != NULL && !strcmp(kt[0]->name, "ref"));
    for (int i = 1; i < N_PATHS; i++)
        if (kt[i])
            CHECK(!strcmp(kt[i]->name, k_paths[i]) && kt[i]->matmul && kt[i]->attn && kt[i]->dot);
    test_convert();
    test_quant();
    test_dot(kt);
    test_matmul(kt);
    test_attn(kt);
    CHECK_DONE();
}
