/* test_kern.c - every kernel table entry (ref, and avx2/avx512 when this CPU has them) against a
 * double-precision evaluation of the definition in kern.h, on random data with odd sizes,
 * strides, output slices and bias on/off; the element-wise entries (norms, activations, add) on
 * odd sizes and special values with stated error bounds; quantise/dequantise round trips and
 * f16/bf16 conversions; and, in child processes, that QVL_CPU picks the table the plain
 * qvl_rmsnorm ... qvl_add functions use. Prints which paths ran; missing paths are skipped. */
#include "check.h"
#include "common.h"
#include "kern/kern.h"
#include "ops.h"
#include "pool.h"

#include <math.h>
#include <spawn.h>
#include <stdint.h>
#include <sys/wait.h>

extern char **environ;

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
static bool make_weights(qvl_dtype wt, int64_t n, int64_t k, uint8_t **w, float **wf);

/* An interleaved matrix (Q8_0X16 / Q4_0X16) made from a plain one of the base type; *plain
 * keeps the plain copy for comparisons. Every row read back through qvl_x16_blocks must equal
 * its plain row, and the padding rows of the last group must be zero. */
static bool make_x16(qvl_dtype xt, int64_t n, int64_t k, uint8_t **w, float **wf,
                     uint8_t **plain) {
    qvl_dtype bt = qvl_dtype_x16_base(xt);
    *w = NULL;
    if (!make_weights(bt, n, k, plain, wf))
        return false;
    size_t rb = qvl_dtype_row_bytes(bt, (size_t)k);
    *w = qvl_malloc(qvl_dtype_mat_bytes(xt, (size_t)n, (size_t)k));
    uint8_t *row = qvl_malloc(rb);
    if (!*w || !row) {
        qvl_free(row);
        return false;
    }
    for (int64_t g = 0; g * QVL_X16 < n; g++) {
        int nr = n - g * QVL_X16 < QVL_X16 ? (int)(n - g * QVL_X16) : QVL_X16;
        qvl_x16_pack(bt, *plain + (size_t)g * QVL_X16 * rb, nr, k, *w + (size_t)g * QVL_X16 * rb);
    }
    bool same = true, pad0 = true;
    int64_t np = (n + QVL_X16 - 1) / QVL_X16 * QVL_X16;
    for (int64_t j = 0; j < np; j++) {
        qvl_x16_blocks(xt, *w, k, j, 0, k / QVL_QBLOCK, row);
        if (j < n)
            same &= !memcmp(row, *plain + (size_t)j * rb, rb);
        else
            for (size_t i = 0; i < rb; i++)
                pad0 &= row[i] == 0;
    }
    CHECKF(same && pad0, "%s: interleaved rows do not read back (n=%lld k=%lld)",
           qvl_dtype_name(xt), (long long)n, (long long)k);
    qvl_free(row);
    return true;
}

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
        case QVL_DT_BF16D:
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
                         const qvl_kern *const kt[N_PATHS], double *worst, double *worst_xq) {
    double *qerr = NULL;
    int64_t ldx = k + 3, ldy = n + 5;
    uint8_t *w = NULL;
    float *wf = NULL;
    float *x = qvl_malloc(sizeof(float) * (size_t)(m * ldx));
    float *y = qvl_malloc(sizeof(float) * (size_t)(m * ldy));
    float *b = qvl_malloc(sizeof(float) * (size_t)n);
    double *want = qvl_malloc(sizeof(double) * (size_t)(m * n));
    float *yfull = qvl_malloc(sizeof(float) * (size_t)(2 * m * ldy)); /* variants 0, 1 */
    float *yplain = qvl_malloc(sizeof(float) * (size_t)(m * ldy));
    uint8_t *plain = NULL; /* interleaved types: the same weights as plain blocks */
    const bool x16 = qvl_dtype_is_x16(wt);
    bool ok = x16 ? make_x16(wt, n, k, &w, &wf, &plain) : make_weights(wt, n, k, &w, &wf);
    CHECK(ok && x && y && b && want && yfull && yplain);
    if (!ok || !x || !y || !b || !want || !yfull || !yplain)
        goto done;
    fill(x, (size_t)(m * ldx), 1.0f);
    fill(b, (size_t)n, 1.0f);
    /* BF16D with more than 4 rows multiplies bf16-rounded activations */
    const bool xround = wt == QVL_DT_BF16D && m > 4;
    for (int64_t i = 0; i < m; i++)
        for (int64_t j = 0; j < n; j++) {
            double s = 0;
            for (int64_t p = 0; p < k; p++) {
                float xv = x[i * ldx + p];
                if (xround) {
                    uint16_t h = qvl_f32_to_bf16(xv);
                    qvl_row_to_f32(QVL_DT_BF16, &h, &xv, 1);
                }
                s += (double)xv * wf[j * k + p];
            }
            want[i * n + j] = s;
        }
    /* The avx512 path for the interleaved Q types (and the avx2 path for up to 4 rows of
     * k <= 16384) rounds each activation block to int8: element error at most amax / 254 of its block. Per output that is bounded by
     * qerr[i][j] = sum over blocks of amax_b(x_i) / 254 * sum_{p in b} |w_jp| (5% slack for
     * the float rounding of the scales), plus float32 accumulation (1e-5 of sum |x||w|). */
    bool xq_shape = x16; /* the interleaved types, every m and k */
    if (xq_shape) {
        qerr = qvl_malloc(sizeof(double) * (size_t)(m * n));
        CHECK(qerr != NULL);
        if (!qerr)
            goto done;
        for (int64_t i = 0; i < m; i++)
            for (int64_t j = 0; j < n; j++) {
                double e = 0, sxw = 0;
                for (int64_t p0 = 0; p0 < k; p0 += 32) {
                    double amax = 0, sw = 0;
                    for (int64_t p = p0; p < p0 + 32; p++) {
                        amax = fmax(amax, fabs((double)x[i * ldx + p]));
                        sw += fabs((double)wf[j * k + p]);
                        sxw += fabs((double)x[i * ldx + p] * wf[j * k + p]);
                    }
                    e += amax / 254.0 * sw;
                }
                qerr[i * n + j] = e * 1.05 + 1e-5 * sxw;
            }
    }
    for (int pi = 0; pi < N_PATHS; pi++) {
        if (!kt[pi])
            continue;
        bool xq = xq_shape && (!strcmp(kt[pi]->name, "avx512") ||
                               (!strcmp(kt[pi]->name, "avx2") && m <= 4 && k <= 16384));
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
            bool outside_ok = true, within = true;
            for (int64_t i = 0; i < m; i++)
                for (int64_t j = 0; j < ldy; j++) {
                    float got = y[i * ldy + j];
                    if (j < j0 || j >= j1) {
                        outside_ok &= got == SENTINEL;
                        continue;
                    }
                    double wv = want[i * n + j] + (use_b ? b[j] : 0.0);
                    nmse_add(&a, got, wv);
                    if (qerr)
                        within &= fabs(got - wv) <= qerr[i * n + j] + 1e-6 * fabs(wv);
                }
            double e = nmse(&a);
            if (xq) {
                if (e > *worst_xq)
                    *worst_xq = e;
            } else if (e > *worst) {
                *worst = e;
            }
            CHECKF(within, "%s matmul %s m=%lld k=%lld n=%lld: beyond the per-output bound of "
                   "int8 activation rounding", kt[pi]->name, qvl_dtype_name(wt), (long long)m,
                   (long long)k, (long long)n);
            /* int8 activations: the per-output bound above is the real check; nmse about
             * (amax / 440)^2 / E[x^2] ~ 2e-5 on average but noisy for a handful of outputs */
            CHECKF(e < (xq ? 1e-2 : bound),
                   "%s matmul %s m=%lld k=%lld n=%lld bias=%d j=[%lld,%lld): nmse %.3g",
                   kt[pi]->name, qvl_dtype_name(wt), (long long)m, (long long)k, (long long)n,
                   use_b, (long long)j0, (long long)j1, e);
            CHECKF(outside_ok, "%s matmul %s wrote outside [j0,j1) or past n", kt[pi]->name,
                   qvl_dtype_name(wt));
            /* the interleaved layout changes nothing but the memory order on the paths that
             * unpack it (ref, avx2; avx512 too where it takes the float GEMM): bit-identical to
             * the plain blocks there (except past k = 16384 with m <= 4, where the SIMD paths
             * take the GEMM for interleaved rows, the matvec for plain ones) */
            if (x16 && !xq && (k <= 16384 || m > 4 || pi == 0)) {
                qvl_dtype bt = qvl_dtype_x16_base(wt);
                for (int64_t i = 0; i < m * ldy; i++)
                    yplain[i] = SENTINEL;
                bool t2 = kt[pi]->matmul(yplain, ldy, x, ldx, m, k, plain, bt,
                                         use_b ? b : NULL, j0, j1);
                if (!t2) /* plain type declined: ref takes it, as ops.c does */
                    qvl_kern_ref()->matmul(yplain, ldy, x, ldx, m, k, plain, bt,
                                           use_b ? b : NULL, j0, j1);
                CHECKF(!memcmp(yplain, y, sizeof(float) * (size_t)(m * ldy)),
                       "%s matmul %s m=%lld k=%lld n=%lld: differs from the plain layout",
                       kt[pi]->name, qvl_dtype_name(wt), (long long)m, (long long)k,
                       (long long)n);
            }
            /* a column slice gives bit-identical outputs to the full range (threads split the
             * columns, so results must not depend on the thread count) */
            float *yf = yfull + (size_t)(variant & 1) * (size_t)(m * ldy);
            if (!(variant & 2)) {
                memcpy(yf, y, sizeof(float) * (size_t)(m * ldy));
            } else {
                bool same = true;
                for (int64_t i = 0; i < m; i++)
                    for (int64_t j = j0; j < j1; j++)
                        same &= !memcmp(&y[i * ldy + j], &yf[i * ldy + j], sizeof(float));
                CHECKF(same, "%s matmul %s m=%lld k=%lld n=%lld: slice [%lld,%lld) differs from "
                       "the full range", kt[pi]->name, qvl_dtype_name(wt), (long long)m,
                       (long long)k, (long long)n, (long long)j0, (long long)j1);
            }
        }
    }
done:
    qvl_free(qerr);
    qvl_free(yfull);
    qvl_free(yplain);
    qvl_free(plain);
    qvl_free(w);
    qvl_free(wf);
    qvl_free(x);
    qvl_free(y);
    qvl_free(b);
    qvl_free(want);
}

/* bf16 decode on rows that do not start on a cache line (a safetensors file puts tensors at any
 * even offset, and the loader copies a tensor stored off its element size; avx512 assembles
 * each line from the two aligned lines it straddles): every offset and every row range
 * gives the bits of the aligned, full-range call, for k ending in a whole and in half a
 * 64-weight step (and k = 80, which ends in half an avx2 step and which avx512 leaves to the
 * generic path), and the aligned call matches the weights in double. */
static void test_bf16_offsets(const qvl_kern *const kt[N_PATHS]) {
    static const int64_t ks[] = {32, 80, 96, 2048, 4096 + 32};
    static const unsigned offs[] = {2, 4, 6, 8, 16, 24, 32, 48, 60, 62};
    static const int64_t ranges[][2] = {{0, 9}, {1, 8}, {4, 5}, {0, 1}, {8, 9}, {3, 9}};
    const int64_t n = 9;
    for (size_t c = 0; c < sizeof ks / sizeof ks[0]; c++) {
        const int64_t k = ks[c];
        const size_t rb = (size_t)k * 2;
        uint8_t *w = NULL, *big = qvl_malloc(rb * (size_t)n + 128);
        float *wf = NULL, *x = qvl_malloc(sizeof(float) * (size_t)k), b[9], y0[9], y1[9];
        bool ok = big && x && make_weights(QVL_DT_BF16, n, k, &w, &wf);
        CHECK(ok);
        if (ok) {
            fill(x, (size_t)k, 1.0f);
            fill(b, 9, 1.0f);
        }
        uint8_t *al = big ? big + (64 - (uintptr_t)big % 64) % 64 : NULL;
        for (int pi = 0; ok && pi < N_PATHS; pi++) {
            if (!kt[pi])
                continue;
            memcpy(al, w, rb * (size_t)n);
            CHECK(kt[pi]->matmul(y0, n, x, k, 1, k, al, QVL_DT_BF16, b, 0, n));
            nmse_acc acc = {0};
            for (int64_t j = 0; j < n; j++) {
                double want = b[j];
                for (int64_t p = 0; p < k; p++)
                    want += (double)wf[j * k + p] * x[p];
                nmse_add(&acc, y0[j], want);
            }
            CHECKF(nmse(&acc) < 1e-10, "%s bf16 decode k=%lld: nmse %.3g", kt[pi]->name,
                   (long long)k, nmse(&acc));
            for (size_t o = 0; o < sizeof offs / sizeof offs[0]; o++) {
                memmove(al + offs[o], w, rb * (size_t)n);
                for (size_t r = 0; r < sizeof ranges / sizeof ranges[0]; r++) {
                    int64_t j0 = ranges[r][0], j1 = ranges[r][1];
                    for (int64_t j = 0; j < n; j++)
                        y1[j] = SENTINEL;
                    CHECK(kt[pi]->matmul(y1, n, x, k, 1, k, al + offs[o], QVL_DT_BF16, b, j0,
                                         j1));
                    bool same = true;
                    for (int64_t j = 0; j < n; j++)
                        same = same && (j >= j0 && j < j1 ? !memcmp(&y1[j], &y0[j], 4)
                                                         : y1[j] == SENTINEL);
                    CHECKF(same, "%s bf16 decode k=%lld, rows at +%u, [%lld, %lld): not the "
                           "aligned call's bits (or wrote outside)", kt[pi]->name, (long long)k,
                           offs[o], (long long)j0, (long long)j1);
                }
            }
        }
        qvl_free(big);
        qvl_free(x);
        qvl_free(w);
        qvl_free(wf);
    }
}

/* Activation reuse (qvl_kern_set_act_id): chunks of one call under one id give the bits of
 * calls without an id; new rows at another address under the same id are rounded afresh. */
static void test_act_reuse(const qvl_kern *const kt[N_PATHS]) {
    const int64_t n = 96, k = 256;
    static const qvl_dtype xts[2] = {QVL_DT_Q8_0X16, QVL_DT_Q4_0X16};
    for (int t = 0; t < 2; t++) {
        uint8_t *w = NULL, *plain = NULL;
        float *wf = NULL;
        float *x = qvl_malloc(sizeof(float) * 2 * 3 * k), *y0 = qvl_malloc(sizeof(float) * 3 * n);
        float *y1 = qvl_malloc(sizeof(float) * 3 * n);
        bool ok = x && y0 && y1 && make_x16(xts[t], n, k, &w, &wf, &plain);
        CHECK(ok);
        for (int pi = 0; ok && pi < N_PATHS; pi++) {
            if (!kt[pi])
                continue;
            fill(x, (size_t)(2 * 3 * k), 1.0f);
            for (int rep = 0; rep < 2; rep++) {
                const float *xr = x + rep * 3 * k; /* the second pass: other rows, same id */
                qvl_kern_set_act_id(0);
                CHECK(kt[pi]->matmul(y0, n, xr, k, 3, k, w, xts[t], NULL, 0, n));
                qvl_kern_set_act_id(77);
                for (int64_t j0 = 0; j0 < n; j0 += 32)
                    CHECK(kt[pi]->matmul(y1, n, xr, k, 3, k, w, xts[t], NULL, j0, j0 + 32));
                qvl_kern_set_act_id(0);
                CHECKF(!memcmp(y0, y1, sizeof(float) * 3 * n), "%s %s: reused activations differ",
                       kt[pi]->name, qvl_dtype_name(xts[t]));
            }
        }
        qvl_free(x);
        qvl_free(y0);
        qvl_free(y1);
        qvl_free(w);
        qvl_free(wf);
        qvl_free(plain);
    }
}

/* qvl_op_matmul_multi through pools of 1, 2, 3 and 5 threads: every thread count gives the
 * bits of the one-thread call (each thread's run of chunks, the chunks taken from the others'
 * runs, and empty runs when there are more threads than chunks), for the matrix-vector and the
 * matrix-matrix paths, on the active kernel path. */
static void test_ops_threads(void) {
    static const qvl_dtype dts[] = {QVL_DT_BF16, QVL_DT_Q8_0X16, QVL_DT_Q4_0X16};
    static const int64_t rows[3] = {200, 64, 1000}, ms[] = {1, 3, 20};
    static const int nths[] = {2, 3, 5};
    const int64_t k = 96, ny = 20 * (200 + 64 + 1000);
    for (size_t d = 0; d < sizeof dts / sizeof dts[0]; d++) {
        uint8_t *w[3] = {0}, *plain[3] = {0};
        float *wf[3] = {0};
        bool ok = true, x16 = qvl_dtype_is_x16(dts[d]);
        for (int i = 0; i < 3; i++)
            ok = ok && (x16 ? make_x16(dts[d], rows[i], k, &w[i], &wf[i], &plain[i])
                            : make_weights(dts[d], rows[i], k, &w[i], &wf[i]));
        float *x = qvl_malloc(sizeof(float) * 20 * k), *y1 = qvl_malloc(sizeof(float) * ny);
        float *yn = qvl_malloc(sizeof(float) * ny);
        ok = ok && x && y1 && yn;
        CHECK(ok);
        for (size_t a = 0; ok && a < sizeof ms / sizeof ms[0]; a++) {
            int64_t m = ms[a], off = 0;
            fill(x, (size_t)(m * k), 1.0f);
            qvl_mat W[3];
            qvl_mat_job jb1[3], jbn[3];
            for (int i = 0; i < 3; off += m * rows[i], i++) {
                W[i] = (qvl_mat){w[i], dts[d], rows[i], k};
                jb1[i] = (qvl_mat_job){y1 + off, &W[i], NULL};
                jbn[i] = (qvl_mat_job){yn + off, &W[i], NULL};
            }
            qvl_pool *p1 = NULL;
            CHECK(qvl_pool_create(1, &p1) == QVL_OK);
            qvl_op_matmul_multi(p1, x, m, jb1, 3);
            qvl_pool_free(p1);
            for (size_t t = 0; t < sizeof nths / sizeof nths[0]; t++) {
                qvl_pool *pn = NULL;
                CHECK(qvl_pool_create(nths[t], &pn) == QVL_OK);
                for (int rep = 0; pn && rep < 3; rep++) {
                    memset(yn, 0xff, sizeof(float) * (size_t)off);
                    qvl_op_matmul_multi(pn, x, m, jbn, 3);
                    CHECKF(!memcmp(y1, yn, sizeof(float) * (size_t)off),
                           "ops %s m=%lld: %d threads differ from one", qvl_dtype_name(dts[d]),
                           (long long)m, nths[t]);
                }
                qvl_pool_free(pn);
            }
        }
        for (int i = 0; i < 3; i++) {
            qvl_free(w[i]);
            qvl_free(wf[i]);
            qvl_free(plain[i]);
        }
        qvl_free(x);
        qvl_free(y1);
        qvl_free(yn);
    }
}

static void test_matmul(const qvl_kern *const kt[N_PATHS]) {
    static const int64_t ms[] = {1, 2, 3, 7, 33};
    static const int64_t ns[] = {1, 7, 33, 130};
    static const int64_t kf[] = {1, 17, 32, 64, 96, 4097};
    static const int64_t kq[] = {32, 64, 96, 4096};
    static const qvl_dtype dts[] = {QVL_DT_F32,     QVL_DT_F16,     QVL_DT_BF16,
                                    QVL_DT_Q8_0,    QVL_DT_Q4_0,    QVL_DT_Q8_0X16,
                                    QVL_DT_Q4_0X16, QVL_DT_BF16D};
    for (size_t d = 0; d < sizeof dts / sizeof dts[0]; d++) {
        bool q = dts[d] == QVL_DT_Q8_0 || dts[d] == QVL_DT_Q4_0 || qvl_dtype_is_x16(dts[d]);
        const int64_t *ks = q ? kq : kf;
        size_t nks = q ? sizeof kq / sizeof kq[0] : sizeof kf / sizeof kf[0];
        double worst = 0, worst_xq = 0;
        for (size_t a = 0; a < sizeof ms / sizeof ms[0]; a++)
            for (size_t c = 0; c < nks; c++)
                for (size_t e = 0; e < sizeof ns / sizeof ns[0]; e++) {
                    /* keep the big-k cases to the smaller shapes so the test stays quick */
                    if (ks[c] > 1000 && ms[a] * ns[e] > 33 * 33)
                        continue;
                    check_matmul(dts[d], ms[a], ks[c], ns[e], 1e-10, kt, &worst, &worst_xq);
                }
        /* one larger case that crosses GEMM panel boundaries in k and n */
        check_matmul(dts[d], 70, q ? 544 : 531, 75, 1e-10, kt, &worst, &worst_xq);
        /* crosses the GEMM cache blocks too: rows past one row block (144) ending in a partial
         * micro-tile, columns past one packed column block (256 on avx512) ending in a partial
         * panel, k ranges of 128 with a tail that is not a whole vector */
        check_matmul(dts[d], 149, q ? 320 : 300, 300, 1e-10, kt, &worst, &worst_xq);
        if (q) {
            /* decode shapes: all four activation-row counts, a k with an odd block count, a large
             * k, and one past 16384 (the generic SIMD paths' interleaved matvec limit) */
            for (int64_t mm = 1; mm <= 4; mm++)
                check_matmul(dts[d], mm, 32 * 65, 19, 1e-10, kt, &worst, &worst_xq);
            check_matmul(dts[d], 1, 16384, 9, 1e-10, kt, &worst, &worst_xq);
            check_matmul(dts[d], 2, 16384 + 32, 5, 1e-10, kt, &worst, &worst_xq);
        } else if (dts[d] == QVL_DT_BF16 || dts[d] == QVL_DT_BF16D) {
            /* bf16 decode: all four activation-row counts with a k that ends in half a step,
             * and one activation row of k up to and past the avx512 split buffer (16384) */
            for (int64_t mm = 1; mm <= 4; mm++)
                check_matmul(dts[d], mm, 32 * 65, 19, 1e-10, kt, &worst, &worst_xq);
            check_matmul(dts[d], 1, 16384, 9, 1e-10, kt, &worst, &worst_xq);
            check_matmul(dts[d], 1, 16384 + 96, 5, 1e-10, kt, &worst, &worst_xq);
        }
        printf("matmul %-5s worst nmse vs double %.3g", qvl_dtype_name(dts[d]), worst);
        if (worst_xq > 0)
            printf(", int8-activation path %.3g", worst_xq);
        printf("\n");
    }
    /* dtypes the SIMD kernels do not take are declined, not computed (ref takes anything) */
    float y = 0, x = 1;
    int32_t wi = 1;
    for (int pi = 1; pi < N_PATHS; pi++)
        if (kt[pi])
            CHECK(!kt[pi]->matmul(&y, 1, &x, 1, 1, 1, &wi, QVL_DT_I32, NULL, 0, 1));
}

/* ---- attention --------------------------------------------------------------------------- */

/* K/V of type kvt for the kernels: float rows rounded in place to kvt's values (so the double
 * reference sees what the kernels see) and, for 16-bit types, packed into *h (NULL for F32) */
static bool kv_as(qvl_dtype kvt, float *x, size_t n, uint16_t **h) {
    *h = NULL;
    if (kvt == QVL_DT_F32)
        return true;
    *h = qvl_malloc(n * 2 + 2);
    if (!*h)
        return false;
    for (size_t i = 0; i < n; i++) {
        uint16_t b = kvt == QVL_DT_BF16 ? qvl_f32_to_bf16(x[i]) : qvl_f32_to_f16(x[i]);
        (*h)[i] = b;
        qvl_row_to_f32(kvt, &b, &x[i], 1);
    }
    return true;
}

static void check_attn(int64_t nq, int64_t nk, int hd, float scale, bool causal, int64_t q_pos0,
                       qvl_dtype kvt, const qvl_kern *const kt[N_PATHS], double *worst) {
    uint16_t *kh = NULL, *vh = NULL;
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
    CHECK(kv_as(kvt, k, (size_t)(nk * ldk), &kh) && kv_as(kvt, v, (size_t)(nk * ldv), &vh));
    const void *kp = kh ? (const void *)kh : k, *vp = vh ? (const void *)vh : v;
    if (kvt != QVL_DT_F32 && (!kh || !vh))
        goto done;
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
        kt[pi]->attn(o, ldo, q, ldq, nq, kp, ldk, vp, ldv, 0, 0, nk, hd, scale, causal, q_pos0, kvt);
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
        CHECKF(e < 1e-10, "%s attn %s nq=%lld nk=%lld hd=%d causal=%d pos0=%lld: nmse %.3g",
               kt[pi]->name, qvl_dtype_name(kvt), (long long)nq, (long long)nk, hd, causal,
               (long long)q_pos0, e);
        CHECKF(outside_ok, "%s attn wrote past hd", kt[pi]->name);
    }
done:
    qvl_free(q);
    qvl_free(k);
    qvl_free(v);
    qvl_free(kh);
    qvl_free(vh);
    qvl_free(o);
    qvl_free(want);
    qvl_free(sc);
}

/* Inputs and two outputs for comparing attention calls: nq query rows and nk K/V rows of ld
 * floats (random), K/V also as kvt (kp, vp point at what the kernels take), o1/o2 of nq rows. */
typedef struct attn_io {
    float *q, *k, *v, *o1, *o2;
    uint16_t *kh, *vh;
    const void *kp, *vp;
} attn_io;

static void attn_io_free(attn_io *a) {
    qvl_free(a->q);
    qvl_free(a->k);
    qvl_free(a->v);
    qvl_free(a->o1);
    qvl_free(a->o2);
    qvl_free(a->kh);
    qvl_free(a->vh);
}

static bool attn_io_make(attn_io *a, int64_t nq, int64_t nk, int64_t ld, qvl_dtype kvt) {
    memset(a, 0, sizeof *a);
    a->q = qvl_malloc(sizeof(float) * (size_t)(nq * ld));
    a->k = qvl_malloc(sizeof(float) * (size_t)(nk * ld));
    a->v = qvl_malloc(sizeof(float) * (size_t)(nk * ld));
    a->o1 = qvl_calloc((size_t)(nq * ld), sizeof(float));
    a->o2 = qvl_calloc((size_t)(nq * ld), sizeof(float));
    bool ok = a->q && a->k && a->v && a->o1 && a->o2;
    if (ok) {
        fill(a->q, (size_t)(nq * ld), 1.0f);
        fill(a->k, (size_t)(nk * ld), 1.0f);
        fill(a->v, (size_t)(nk * ld), 1.0f);
        ok = kv_as(kvt, a->k, (size_t)(nk * ld), &a->kh) &&
             kv_as(kvt, a->v, (size_t)(nk * ld), &a->vh);
        a->kp = a->kh ? (const void *)a->kh : a->k;
        a->vp = a->vh ? (const void *)a->vh : a->v;
    }
    CHECK(ok);
    if (!ok)
        attn_io_free(a);
    return ok;
}

/* Splitting one head's queries at a multiple of QVL_KERN_ATTN_QC (as ops.c does when there are
 * more threads than heads) gives bit-identical outputs to one call over all queries, and so
 * does the in-place path the SIMD kernels take when their work buffer cannot be allocated. */
static void check_attn_split(int64_t nq, int64_t nk, int hd, bool causal, qvl_dtype kvt,
                             const qvl_kern *const kt[N_PATHS]) {
    int64_t ld = hd + 3, cut = QVL_KERN_ATTN_QC;
    int64_t q_pos0 = causal ? nk - nq : 0;
    attn_io a;
    CHECK(nq > cut);
    if (nq <= cut || !attn_io_make(&a, nq, nk, ld, kvt))
        return;
    const float *q = a.q;
    float *o1 = a.o1, *o2 = a.o2;
    float scale = 1.0f / sqrtf((float)hd);
    for (int pi = 0; pi < N_PATHS; pi++) {
        if (!kt[pi])
            continue;
        memset(o1, 0, sizeof(float) * (size_t)(nq * ld));
        memset(o2, 0, sizeof(float) * (size_t)(nq * ld));
        kt[pi]->attn(o1, ld, q, ld, nq, a.kp, ld, a.vp, ld, 0, 0, nk, hd, scale, causal, q_pos0, kvt);
        kt[pi]->attn(o2, ld, q, ld, cut, a.kp, ld, a.vp, ld, 0, 0, nk, hd, scale, causal, q_pos0, kvt);
        kt[pi]->attn(o2 + cut * ld, ld, q + cut * ld, ld, nq - cut, a.kp, ld, a.vp, ld, 0, 0, nk, hd,
                     scale, causal, q_pos0 + cut, kvt);
        CHECKF(!memcmp(o1, o2, sizeof(float) * (size_t)(nq * ld)),
               "%s attn nq=%lld nk=%lld hd=%d causal=%d: split at %lld differs", kt[pi]->name,
               (long long)nq, (long long)nk, hd, causal, (long long)cut);
        /* with every allocation failing the SIMD kernels work in place (no packed buffer):
         * same bits */
        memset(o2, 0, sizeof(float) * (size_t)(nq * ld));
        qvl_alloc_fail_at(0, 1);
        kt[pi]->attn(o2, ld, q, ld, nq, a.kp, ld, a.vp, ld, 0, 0, nk, hd, scale, causal, q_pos0, kvt);
        qvl_alloc_fail_at(-1, 0);
        CHECKF(!memcmp(o1, o2, sizeof(float) * (size_t)(nq * ld)),
               "%s attn nq=%lld nk=%lld hd=%d causal=%d: in-place fallback differs",
               kt[pi]->name, (long long)nq, (long long)nk, hd, causal);
    }
    attn_io_free(&a);
}

/* The chunked K/V layout (attn's kvc, kvcs; the decoder's cache): the rows of a call copied
 * into chunks of kvc rows (chunk stride with a gap) give the bits of the same rows ld apart,
 * on every path; a chunk size that is not a whole number of kernel blocks goes through ref's
 * arithmetic on the SIMD paths and still gives the contiguous call's values. */
static void check_attn_chunked(int64_t nq, int64_t nk, int hd, bool causal, int64_t q_pos0,
                               int64_t kvc, qvl_dtype kvt, const qvl_kern *const kt[N_PATHS]) {
    int64_t ld = hd + 3, nchunk = (nk + kvc - 1) / kvc, kvcs = kvc * ld + 37;
    size_t es = qvl_dtype_row_bytes(kvt, 1);
    attn_io a;
    if (!attn_io_make(&a, nq, nk, ld, kvt))
        return;
    uint8_t *kc = qvl_calloc((size_t)(nchunk * kvcs), es), *vc = qvl_calloc((size_t)(nchunk * kvcs), es);
    CHECK(kc && vc);
    if (kc && vc) {
        for (int64_t j = 0; j < nk; j++) {
            size_t to = (size_t)((j / kvc) * kvcs + (j % kvc) * ld) * es, from = (size_t)(j * ld) * es;
            memcpy(kc + to, (const uint8_t *)a.kp + from, (size_t)hd * es);
            memcpy(vc + to, (const uint8_t *)a.vp + from, (size_t)hd * es);
        }
        float scale = 1.0f / sqrtf((float)hd);
        for (int pi = 0; pi < N_PATHS; pi++) {
            if (!kt[pi])
                continue;
            kt[pi]->attn(a.o1, ld, a.q, ld, nq, a.kp, ld, a.vp, ld, 0, 0, nk, hd, scale, causal,
                         q_pos0, kvt);
            kt[pi]->attn(a.o2, ld, a.q, ld, nq, kc, ld, vc, ld, kvc, kvcs, nk, hd, scale, causal,
                         q_pos0, kvt);
            bool whole = kvc % QVL_KERN_KV_CHUNK == 0;
            double e = 0;
            for (int64_t i = 0; i < nq * ld; i++)
                e = fmax(e, fabs((double)a.o1[i] - a.o2[i]));
            CHECKF(whole ? !memcmp(a.o1, a.o2, sizeof(float) * (size_t)(nq * ld)) : e < 1e-4,
                   "%s attn %s nq=%lld nk=%lld hd=%d in chunks of %lld: differs (max %.3g)",
                   kt[pi]->name, qvl_dtype_name(kvt), (long long)nq, (long long)nk, hd,
                   (long long)kvc, e);
        }
    }
    qvl_free(kc);
    qvl_free(vc);
    attn_io_free(&a);
}

/* Decode with grouped heads (ops.c): query heads that share a K/V head, as rows of one
 * non-causal call (at most QVL_KERN_ATTN_ROWS), give the very bits of one causal call per head
 * at the last position. Query rows hd apart (heads of one token), K/V rows ld apart. */
static void check_attn_rows(int rep, int64_t nk, int hd, qvl_dtype kvt,
                            const qvl_kern *const kt[N_PATHS]) {
    int64_t ld = 2 * hd + 5;
    attn_io a;
    if (!attn_io_make(&a, rep, nk, ld, kvt))
        return;
    float scale = 1.0f / sqrtf((float)hd);
    for (int pi = 0; pi < N_PATHS; pi++) {
        if (!kt[pi])
            continue;
        kt[pi]->attn(a.o1, hd, a.q, hd, rep, a.kp, ld, a.vp, ld, 0, 0, nk, hd, scale, false, 0, kvt);
        for (int r = 0; r < rep; r++)
            kt[pi]->attn(a.o2 + r * hd, hd, a.q + r * hd, hd, 1, a.kp, ld, a.vp, ld, 0, 0, nk, hd, scale,
                         true, nk - 1, kvt);
        CHECKF(!memcmp(a.o1, a.o2, sizeof(float) * (size_t)(rep * hd)),
               "%s attn: %d grouped rows (nk %lld, hd %d) differ from one call per row",
               kt[pi]->name, rep, (long long)nk, hd);
    }
    attn_io_free(&a);
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
                check_attn(nq, nk, hds[h], scale, false, 0, QVL_DT_F32, kt, &worst);
                check_attn(nq, nk, hds[h], scale, true, 0, QVL_DT_F32, kt, &worst);
                if (nk > nq) /* decoder shape: queries are the last nq positions */
                    check_attn(nq, nk, hds[h], scale, true, nk - nq, QVL_DT_F32, kt, &worst);
                check_attn(nq, nk, hds[h], scale, true, 4, QVL_DT_F32, kt, &worst);
            }
    /* longer sequences: several query chunks (256) and key blocks, tiles cut by the chunk
     * end, causal diagonal blocks inside and across chunks, heads that are not whole vectors */
    static const int hds_long[] = {64, 72, 128};
    for (size_t h = 0; h < sizeof hds_long / sizeof hds_long[0]; h++) {
        float scale = 1.0f / sqrtf((float)hds_long[h]);
        check_attn(301, 301, hds_long[h], scale, false, 0, QVL_DT_F32, kt, &worst);
        check_attn(301, 301, hds_long[h], scale, true, 0, QVL_DT_F32, kt, &worst);
        check_attn(263, 400, hds_long[h], scale, true, 400 - 263, QVL_DT_F32, kt, &worst);
        check_attn(517, 130, hds_long[h], scale, false, 0, QVL_DT_F32, kt, &worst);
    }
    check_attn_split(QVL_KERN_ATTN_QC + 3, QVL_KERN_ATTN_QC + 40, 72, true, QVL_DT_F32, kt);
    check_attn_split(QVL_KERN_ATTN_QC + 21, 90, 64, false, QVL_DT_F32, kt);
    /* 16-bit K/V (a compact KV cache): decode, a chunk with a short tail (in-place path after
     * packed chunks), prefill shapes, heads that are not whole vectors */
    static const qvl_dtype kvts[] = {QVL_DT_BF16, QVL_DT_F16};
    for (size_t t = 0; t < 2; t++) {
        check_attn(1, 100, 128, 0.088f, true, 99, kvts[t], kt, &worst);
        check_attn(5, 77, 128, 0.088f, true, 72, kvts[t], kt, &worst); /* 5 rows in place */
        check_attn(2, 17, 16, 0.25f, false, 0, kvts[t], kt, &worst);
        check_attn(3, 70, 72, 0.11f, true, 67, kvts[t], kt, &worst);
        check_attn(70, 100, 64, 0.125f, true, 30, kvts[t], kt, &worst);
        check_attn(263, 400, 128, 0.088f, true, 400 - 263, kvts[t], kt, &worst);
        check_attn(9, 33, 7, 0.3f, false, 0, kvts[t], kt, &worst);
        check_attn_split(QVL_KERN_ATTN_QC + 3, QVL_KERN_ATTN_QC + 40, 72, true, kvts[t], kt);
    }
    /* sharp softmax (large scores: the running max moves, tiny probabilities underflow) */
    check_attn(70, 100, 64, 4.0f, false, 0, QVL_DT_F32, kt, &worst);
    check_attn(70, 100, 64, 4.0f, true, 30, QVL_DT_F32, kt, &worst);
    check_attn(2, 300, 128, 4.0f, true, 298, QVL_DT_F32, kt, &worst);
    check_attn(5, 77, 128, 0.088f, true, 72, QVL_DT_F32, kt, &worst);
    /* decode with the query heads of a K/V head grouped (2B: 2, 4B/8B: 4) */
    check_attn_rows(2, 150, 128, QVL_DT_F32, kt);
    check_attn_rows(2, 70, 128, QVL_DT_BF16, kt);
    check_attn_rows(QVL_KERN_ATTN_ROWS, 1, 64, QVL_DT_F16, kt);
    check_attn_rows(QVL_KERN_ATTN_ROWS, 200, 72, QVL_DT_F32, kt);
    /* the decoder's cache layout: chunks of positions (decode, grouped rows, prefill chunks
     * that start inside the cache, a short last chunk, a chunk size ref must take) */
    for (size_t t = 0; t < 2; t++) {
        check_attn_chunked(1, 1000, 128, true, 999, QVL_KERN_KV_CHUNK, kvts[t], kt);
        check_attn_chunked(4, 700, 128, false, 0, 2 * QVL_KERN_KV_CHUNK, kvts[t], kt);
        check_attn_chunked(70, 500, 72, true, 430, QVL_KERN_KV_CHUNK, kvts[t], kt);
    }
    check_attn_chunked(2, 450, 128, false, 0, QVL_KERN_KV_CHUNK, QVL_DT_F32, kt);
    check_attn_chunked(300, 800, 64, true, 500, 2 * QVL_KERN_KV_CHUNK, QVL_DT_F32, kt);
    check_attn_chunked(3, 333, 128, false, 0, 100, QVL_DT_BF16, kt);
    /* no keys at all: output is zero */
    check_attn(5, 0, 16, 1.0f, false, 0, QVL_DT_F32, kt, &worst);
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

/* ---- element-wise ------------------------------------------------------------------------ */

/* Error model of the activations, per element, against a double evaluation of the definition
 * written without cancellation (x sigmoid(2u), 0.5 x erfc(-x/sqrt2), g sigmoid(g) u):
 *   |got - want| <= rtol (1 + |a|) |want| + xtol |x| + 2e-38 |x| (|u|) + 1e-37
 * a = the argument of the exponential (2u, g, x^2/2): float rounding of the input is amplified
 * by it, in any float implementation. xtol covers ref's 1 + tanh / 1 + erf cancellation (half an
 * ulp of 1, times 0.5 |x|); the SIMD paths avoid it and get xtol = 0. The last two terms allow
 * outputs whose exponential factor leaves float's normal range (e^a < 2^-126) to flush to +-0. */
#define ACT_RTOL     5e-7
#define ACT_XTOL_REF 7.5e-8
#define ACT_FLOOR    1e-37
#define ACT_UFLOW    2e-38

static double gelu_tanh_d(double x, double *arg) {
    double a = 2 * 0.7978845608028654 * (x + 0.044715 * x * x * x);
    *arg = a;
    return x / (1 + exp(-a));
}
static double gelu_erf_d(double x, double *arg) {
    *arg = x * x / 2;
    return 0.5 * x * erfc(-x * 0.70710678118654752);
}
static double silu_d(double g, double *arg) {
    *arg = g;
    return g / (1 + exp(-g));
}

/* inputs that probe the edges: signed zeros, subnormals, tiny values, the erf piece boundary
 * (|x| = sqrt 2), saturation of tanh / erf / the exponentials, and huge values */
static const float k_special[] = {
    0.0f, -0.0f, 1e-40f, -1e-40f, 1e-30f, -1e-30f, 1e-7f, -1e-7f, 0.25f, -0.25f, 1.0f, -1.0f,
    1.41421342f, 1.41421354f, 1.41421366f, -1.41421342f, -1.41421354f, -1.41421366f, 2.5f, -2.5f,
    3.0f, -3.0f, 5.0f, -5.0f, 7.5f, -7.5f, 10.0f, -10.0f, 13.2f, -13.2f, 13.3f, -13.3f, 20.0f,
    -20.0f, 40.0f, -40.0f, 87.0f, -87.0f, 88.5f, -88.5f, 89.0f, -89.0f, 100.0f, -100.0f, 1e4f,
    -1e4f, 1e30f, -1e30f,
};
#define N_SPECIAL ((int)(sizeof k_special / sizeof k_special[0]))

enum { ACT_TANH, ACT_ERF, ACT_SILU };
static const char *const k_act_name[] = {"gelu_tanh", "gelu_erf", "silu_mul"};

/* worst errors seen, for the printout: relative e / |want| and scaled e / ((1 + |a|) |want|),
 * over elements with |want| > 1e-30 */
typedef struct {
    double rel, scaled;
} act_worst;

/* one activation on n inputs (random of amplitude amp, or the special list cycled) through
 * table kt, checked against the bound above */
static void check_act(const qvl_kern *kt, int act, int64_t n, float amp, bool special,
                      act_worst *worst) {
    float *x = qvl_malloc(sizeof(float) * (size_t)n);
    float *u = qvl_malloc(sizeof(float) * (size_t)n);
    float *y = qvl_malloc(sizeof(float) * (size_t)(n + 2));
    CHECK(x && u && y);
    if (!x || !u || !y)
        goto done;
    for (int64_t i = 0; i < n; i++)
        x[i] = special ? k_special[i % N_SPECIAL] : rnd_f() * amp;
    fill(u, (size_t)n, 2.0f);
    y[n] = y[n + 1] = SENTINEL;
    memcpy(y, x, sizeof(float) * (size_t)n);
    if (act == ACT_TANH)
        kt->gelu_tanh(y, n);
    else if (act == ACT_ERF)
        kt->gelu_erf(y, n);
    else
        kt->silu_mul(y, u, n);
    bool is_ref = !strcmp(kt->name, "ref");
    double xtol = is_ref && act != ACT_SILU ? ACT_XTOL_REF : 0.0;
    int bad = 0;
    for (int64_t i = 0; i < n; i++) {
        double a, want;
        if (act == ACT_TANH)
            want = gelu_tanh_d(x[i], &a);
        else if (act == ACT_ERF)
            want = gelu_erf_d(x[i], &a);
        else
            want = silu_d(x[i], &a) * u[i];
        double got = y[i];
        bool ok;
        if (isinf(want) || isinf(got)) {
            ok = got == want;
        } else {
            double mag = fabs(x[i]) * (act == ACT_SILU ? fabs(u[i]) : 1.0);
            double lim = ACT_RTOL * (1 + fabs(a)) * fabs(want) + xtol * fabs(x[i]) +
                         ACT_UFLOW * mag + ACT_FLOOR;
            double e = fabs(got - want);
            ok = e <= lim;
            if (fabs(want) > 1e-30) {
                worst->rel = fmax(worst->rel, e / fabs(want));
                worst->scaled = fmax(worst->scaled, e / ((1 + fabs(a)) * fabs(want)));
            }
        }
        /* signed zeros keep their sign */
        if (x[i] == 0 && act != ACT_SILU)
            ok &= y[i] == 0 && signbit(y[i]) == signbit(x[i]);
        if (!ok && bad++ < 5)
            fprintf(stderr, "  %s %s x=%.9g u=%.9g: got %.9g want %.9g\n", kt->name,
                    k_act_name[act], x[i], act == ACT_SILU ? u[i] : 0.0f, got, want);
    }
    CHECKF(bad == 0, "%s %s n=%lld amp=%g special=%d: %d elements out of bound", kt->name,
           k_act_name[act], (long long)n, amp, special, bad);
    CHECKF(y[n] == SENTINEL && y[n + 1] == SENTINEL, "%s %s wrote past n=%lld", kt->name,
           k_act_name[act], (long long)n);
done:
    qvl_free(x);
    qvl_free(u);
    qvl_free(y);
}

/* NaN and infinities: NaN propagates; +inf maps to +inf (g u for silu); -inf gives what ref
 * gives (NaN for the gelus, -inf * 0; -0 * u... for silu see below). Same across paths. */
static void check_act_nonfinite(const qvl_kern *kt) {
    float x[3] = {NAN, INFINITY, -INFINITY};
    float t[3], e[3], g[3], u[3] = {2.0f, 2.0f, 2.0f};
    memcpy(t, x, sizeof x);
    memcpy(e, x, sizeof x);
    memcpy(g, x, sizeof x);
    kt->gelu_tanh(t, 3);
    kt->gelu_erf(e, 3);
    kt->silu_mul(g, u, 3);
    CHECKF(isnan(t[0]) && isnan(e[0]) && isnan(g[0]), "%s activations: NaN must propagate",
           kt->name);
    CHECKF(t[1] == INFINITY && e[1] == INFINITY && g[1] == INFINITY, "%s activations at +inf",
           kt->name);
    CHECKF(isnan(t[2]) && isnan(e[2]), "%s gelu at -inf: NaN (-inf * 0) as ref", kt->name);
    CHECKF(isnan(g[2]) || g[2] == 0.0f, "%s silu at -inf", kt->name);
}

static void test_activations(const qvl_kern *const kt[N_PATHS]) {
    static const int64_t ns[] = {1, 7, 33, 4097};
    for (int pi = 0; pi < N_PATHS; pi++) {
        if (!kt[pi])
            continue;
        for (int act = 0; act < 3; act++) {
            act_worst small = {0, 0}, all = {0, 0};
            for (size_t t = 0; t < sizeof ns / sizeof ns[0]; t++) {
                check_act(kt[pi], act, ns[t], 4.0f, false, &small);
                check_act(kt[pi], act, ns[t], 15.0f, false, &all);
                check_act(kt[pi], act, ns[t], 0.0f, true, &all);
            }
            /* dense random sweeps over the range that matters, including the erf boundary */
            check_act(kt[pi], act, 200003, 4.0f, false, &small);
            check_act(kt[pi], act, 200003, 15.0f, false, &all);
            printf("%-6s %-9s worst relative error %.3g for |x| < 4, %.3g overall; "
                   "scaled by 1+|a|: %.3g\n",
                   kt[pi]->name, k_act_name[act], small.rel, fmax(small.rel, all.rel),
                   fmax(small.scaled, all.scaled));
        }
        check_act_nonfinite(kt[pi]);
    }
}

/* rmsnorm / layernorm against double, out of place and in place (y == x) */
static void check_norm(const qvl_kern *kt, bool layer, int64_t n, bool use_b, double *worst) {
    float *x = qvl_malloc(sizeof(float) * (size_t)n);
    float *w = qvl_malloc(sizeof(float) * (size_t)n);
    float *b = qvl_malloc(sizeof(float) * (size_t)n);
    float *y = qvl_malloc(sizeof(float) * (size_t)(n + 1));
    float *z = qvl_malloc(sizeof(float) * (size_t)(n + 1));
    CHECK(x && w && b && y && z);
    if (!x || !w || !b || !y || !z)
        goto done;
    fill(x, (size_t)n, 3.0f);
    if (layer) /* an offset so the mean matters */
        for (int64_t i = 0; i < n; i++)
            x[i] += 5.0f;
    fill(w, (size_t)n, 2.0f);
    fill(b, (size_t)n, 1.0f);
    const float eps = 1e-6f;
    double mean = 0, var = 0;
    for (int64_t i = 0; i < n; i++)
        mean += x[i];
    mean = layer ? mean / (double)n : 0.0;
    for (int64_t i = 0; i < n; i++)
        var += (x[i] - mean) * (x[i] - mean);
    double r = 1 / sqrt(var / (double)n + eps);
    y[n] = SENTINEL;
    memcpy(z, x, sizeof(float) * (size_t)n);
    if (layer) {
        kt->layernorm(y, x, w, use_b ? b : NULL, n, eps);
        kt->layernorm(z, z, w, use_b ? b : NULL, n, eps);
    } else {
        kt->rmsnorm(y, x, w, n, eps);
        kt->rmsnorm(z, z, w, n, eps);
    }
    int bad = 0;
    bool same = true;
    for (int64_t i = 0; i < n; i++) {
        double bi = layer && use_b ? b[i] : 0.0;
        double want = (x[i] - mean) * r * w[i] + bi;
        /* error of (x - mean) r w is relative to the uncentred magnitude (the centring rounds at
         * the size of x), plus that of the bias add */
        double scale = (fabs(x[i]) + fabs(mean)) * r * fabs(w[i]) + fabs(bi);
        double e = fabs(y[i] - want) / scale;
        if (e > *worst)
            *worst = e;
        if (!(e <= 1e-6) && bad++ < 3)
            fprintf(stderr, "  %s %s n=%lld i=%lld: got %.9g want %.9g\n", kt->name,
                    layer ? "layernorm" : "rmsnorm", (long long)n, (long long)i, y[i], want);
        same &= y[i] == z[i];
    }
    CHECKF(bad == 0, "%s %s n=%lld bias=%d: error above 1e-6 of |x| r |w| + |b|", kt->name,
           layer ? "layernorm" : "rmsnorm", (long long)n, use_b);
    CHECKF(same, "%s %s n=%lld: in-place result differs", kt->name, layer ? "layernorm" : "rmsnorm",
           (long long)n);
    CHECKF(y[n] == SENTINEL, "%s norm wrote past n", kt->name);
done:
    qvl_free(x);
    qvl_free(w);
    qvl_free(b);
    qvl_free(y);
    qvl_free(z);
}

static void test_norms_add(const qvl_kern *const kt[N_PATHS]) {
    static const int64_t ns[] = {1, 7, 33, 64, 4097};
    for (int pi = 0; pi < N_PATHS; pi++) {
        if (!kt[pi])
            continue;
        double wr = 0, wl = 0;
        for (size_t t = 0; t < sizeof ns / sizeof ns[0]; t++) {
            check_norm(kt[pi], false, ns[t], false, &wr);
            check_norm(kt[pi], true, ns[t], false, &wl);
            check_norm(kt[pi], true, ns[t], true, &wl);
        }
        printf("%-6s rmsnorm worst error %.3g, layernorm %.3g (of |x| r |w| + |b|)\n", kt[pi]->name,
               wr, wl);
        /* add is exact: one rounding of x + y */
        for (size_t t = 0; t < sizeof ns / sizeof ns[0]; t++) {
            int64_t n = ns[t];
            float *x = qvl_malloc(sizeof(float) * (size_t)(n + 1));
            float *y = qvl_malloc(sizeof(float) * (size_t)n);
            float *x0 = qvl_malloc(sizeof(float) * (size_t)n);
            CHECK(x && y && x0);
            if (x && y && x0) {
                fill(x, (size_t)n, 100.0f);
                fill(y, (size_t)n, 1.0f);
                x[0] = -0.0f;
                y[0] = -0.0f;
                memcpy(x0, x, sizeof(float) * (size_t)n);
                x[n] = SENTINEL;
                kt[pi]->add(x, y, n);
                bool exact = signbit(x[0]);
                for (int64_t i = 0; i < n; i++)
                    exact &= x[i] == x0[i] + y[i];
                CHECKF(exact && x[n] == SENTINEL, "%s add n=%lld", kt[pi]->name, (long long)n);
            }
            qvl_free(x);
            qvl_free(y);
            qvl_free(x0);
        }
    }
}

/* ---- dispatch of the plain functions ------------------------------------------------------ */

/* In a child started with QVL_CPU set: the active table is `want`, and every plain function
 * gives bit for bit what that table's entry gives (and, on a SIMD path, not what ref gives). */
static int dispatch_child(const char *want) {
    const qvl_kern *k = qvl_kern_by_name(want);
    const qvl_kern *r = qvl_kern_ref();
    CHECKF(k && !strcmp(qvl_kern_get()->name, want), "QVL_CPU=%s: active %s, expected %s",
           getenv("QVL_CPU") ? getenv("QVL_CPU") : "(unset)", qvl_kern_get()->name, want);
    if (!k)
        CHECK_DONE();
    enum { N = 4097 };
    float *x = qvl_malloc(sizeof(float) * N);
    float *u = qvl_malloc(sizeof(float) * N);
    float *w = qvl_malloc(sizeof(float) * N);
    float *b = qvl_malloc(sizeof(float) * N);
    float *p = qvl_malloc(sizeof(float) * N);
    float *t = qvl_malloc(sizeof(float) * N);
    float *q = qvl_malloc(sizeof(float) * N);
    CHECK(x && u && w && b && p && t && q);
    if (x && u && w && b && p && t && q) {
        fill(x, N, 6.0f);
        fill(u, N, 2.0f);
        fill(w, N, 1.0f);
        fill(b, N, 1.0f);
        bool simd = strcmp(want, "ref") != 0;
        for (int op = 0; op < 6; op++) {
            memcpy(p, x, sizeof(float) * N);
            memcpy(t, x, sizeof(float) * N);
            memcpy(q, x, sizeof(float) * N);
            switch (op) {
            case 0:
                qvl_gelu_tanh(p, N);
                k->gelu_tanh(t, N);
                r->gelu_tanh(q, N);
                break;
            case 1:
                qvl_gelu_erf(p, N);
                k->gelu_erf(t, N);
                r->gelu_erf(q, N);
                break;
            case 2:
                qvl_silu_mul(p, u, N);
                k->silu_mul(t, u, N);
                r->silu_mul(q, u, N);
                break;
            case 3:
                qvl_rmsnorm(p, x, w, N, 1e-6f);
                k->rmsnorm(t, x, w, N, 1e-6f);
                r->rmsnorm(q, x, w, N, 1e-6f);
                break;
            case 4:
                qvl_layernorm(p, x, w, b, N, 1e-6f);
                k->layernorm(t, x, w, b, N, 1e-6f);
                r->layernorm(q, x, w, b, N, 1e-6f);
                break;
            default:
                qvl_add(p, u, N);
                k->add(t, u, N);
                r->add(q, u, N);
                break;
            }
            CHECKF(!memcmp(p, t, sizeof(float) * N),
                   "QVL_CPU=%s: plain op %d differs from the %s table", want, op, want);
            if (simd && op < 3) /* the activations use other formulas than ref: some bits differ */
                CHECKF(memcmp(p, q, sizeof(float) * N) != 0,
                       "QVL_CPU=%s: plain op %d gives exactly ref's result (ref ran?)", want, op);
        }
    }
    qvl_free(x);
    qvl_free(u);
    qvl_free(w);
    qvl_free(b);
    qvl_free(p);
    qvl_free(t);
    qvl_free(q);
    CHECK_DONE();
}

/* run this binary again as a dispatch child with QVL_CPU=cpu, expecting table `want` */
static void spawn_dispatch(const char *self, const char *cpu, const char *want) {
    const char *old = getenv("QVL_CPU");
    char *saved = old ? qvl_strdup(old) : NULL;
    setenv("QVL_CPU", cpu, 1);
    char *argv[] = {(char *)self, (char *)"--dispatch-child", (char *)want, NULL};
    pid_t pid;
    int rc = posix_spawn(&pid, self, NULL, NULL, argv, environ);
    if (saved)
        setenv("QVL_CPU", saved, 1);
    else
        unsetenv("QVL_CPU");
    qvl_free(saved);
    CHECKF(rc == 0, "posix_spawn %s: %s", self, strerror(rc));
    if (rc)
        return;
    int st = 0;
    CHECK(waitpid(pid, &st, 0) == pid);
    CHECKF(WIFEXITED(st) && WEXITSTATUS(st) == 0, "dispatch child QVL_CPU=%s (expect %s) failed",
           cpu, want);
}

static void test_dispatch(const qvl_kern *const kt[N_PATHS]) {
    const char *best = kt[2] ? "avx512" : kt[1] ? "avx2" : "ref";
    /* this process: QVL_CPU if set and supported, else the best path */
    const char *env = getenv("QVL_CPU");
    const char *expect = env && qvl_kern_by_name(env) ? env : best;
    CHECKF(!strcmp(qvl_kern_get()->name, expect), "active %s, expected %s", qvl_kern_get()->name,
           expect);
    const char *self = "/proc/self/exe";
    fflush(stdout);
    spawn_dispatch(self, "ref", "ref");
    spawn_dispatch(self, "avx2", kt[1] ? "avx2" : best);
    spawn_dispatch(self, "avx512", kt[2] ? "avx512" : best);
    spawn_dispatch(self, "bogus", best);
    spawn_dispatch(self, "", best);
}

/* ---- quantisation and conversions -------------------------------------------------------- */

/* every path's quantize_row gives ref's bytes, special values included */
static void test_quant_paths(const qvl_kern *const kt[N_PATHS]) {
    enum { K = 32 * 40 };
    float x[K];
    uint8_t want[34 * K / 32], got[34 * K / 32];
    int checked = 0;
    for (int round = 0; round < 20; round++) {
        fill(x, K, round % 2 ? 3.0f : 1e-5f);
        /* block b gets special content */
        for (int e = 0; e < 32; e++) {
            x[32 * 1 + e] = 0.0f;                             /* all zero */
            x[32 * 2 + e] = e == 7 ? -0.0f : 0.0f;            /* signed zero */
            x[32 * 3 + e] *= 1e-38f;                          /* subnormal floats */
            x[32 * 4 + e] *= 1e30f;                           /* scale clamps to 65504 */
            x[32 * 6 + e] = (float)(e % 5) - 2.0f;            /* ties in magnitude */
            x[32 * 7 + e] *= 1e-7f;                           /* subnormal f16 scales */
            x[32 * 8 + e] = (float)e - 15.5f;                 /* exact .5 steps */
        }
        x[32 * 5 + 3] = NAN;
        x[32 * 5 + 20] = -NAN;
        x[32 * 9 + 1] = INFINITY;
        x[32 * 10 + 30] = -INFINITY;
        x[32 * 11 + 4] = -2.5f, x[32 * 11 + 9] = 2.5f;       /* first of equal magnitudes */
        for (int e = 0; e < 32; e++)
            if (e != 4 && e != 9)
                x[32 * 11 + e] = 0.1f;
        for (int q = 0; q < 2; q++) {
            qvl_dtype t = q ? QVL_DT_Q4_0 : QVL_DT_Q8_0;
            size_t nb = qvl_dtype_row_bytes(t, K);
            qvl_quantize_row_ref(t, x, want, K);
            for (int pi = 1; pi < N_PATHS; pi++) {
                if (!kt[pi])
                    continue;
                memset(got, 0xAA, sizeof got);
                kt[pi]->quantize_row(t, x, got, K);
                size_t bad = nb;
                for (size_t i = 0; i < nb && bad == nb; i++)
                    if (got[i] != want[i])
                        bad = i;
                CHECKF(bad == nb, "%s quantize_row %s round %d: byte %zu (block %zu) differs",
                       kt[pi]->name, qvl_dtype_name(t), round, bad,
                       bad / (q ? 18 : 34));
                checked++;
            }
        }
    }
    printf("quantize_row: %d rows identical to ref on the SIMD paths\n", checked);
}

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

int main(int argc, char **argv) {
    if (argc == 3 && !strcmp(argv[1], "--dispatch-child"))
        return dispatch_child(argv[2]);
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
    for (int i = 0; i < N_PATHS; i++)
        if (kt[i])
            CHECK(kt[i]->rmsnorm && kt[i]->layernorm && kt[i]->gelu_tanh && kt[i]->gelu_erf &&
                  kt[i]->silu_mul && kt[i]->add && kt[i]->quantize_row);
    test_convert();
    test_quant();
    test_dot(kt);
    test_matmul(kt);
    test_attn(kt);
    test_activations(kt);
    test_norms_add(kt);
    test_dispatch(kt);
    test_quant_paths(kt); /* after the others: their shapes use a fixed random sequence */
    test_act_reuse(kt);
    test_bf16_offsets(kt);
    test_ops_threads();
    CHECK_DONE();
}
