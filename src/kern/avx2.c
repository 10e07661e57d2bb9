/* avx2.c - AVX2 + FMA + F16C kernels (compiled with per-file ISA flags; used only when the CPU has
 * them).
 *
 * The file has two halves. The first defines a tiny vector layer for this ISA (vf = 8 floats,
 * masked partial loads, bf16/f16/Q8_0/Q4_0 widening, exp). The second is the kernel body written
 * against that layer; avx512.c carries the same body over its own layer, so a fix to one body
 * belongs in both.
 *
 * Numerics: float32 accumulation throughout (activations are never rounded to bf16/int8), so
 * results agree with ref.c to float32 rounding (different summation order only).
 */
#include "kern.h"

#include <immintrin.h>
#include <math.h>
#include <string.h>

#define ALWAYS_INLINE static inline __attribute__((always_inline))

/* ---- vector layer: 8 x float32 ---------------------------------------------------------- */
typedef __m256 vf;
typedef __m256i vmask; /* lane i active when its sign bit is set */
#define VW 8

ALWAYS_INLINE vf vld(const float *p) {
    return _mm256_loadu_ps(p);
}
ALWAYS_INLINE void vst(float *p, vf v) {
    _mm256_storeu_ps(p, v);
}
ALWAYS_INLINE vf vset1(float a) {
    return _mm256_set1_ps(a);
}
ALWAYS_INLINE vf vzero(void) {
    return _mm256_setzero_ps();
}
ALWAYS_INLINE vf vfma(vf a, vf b, vf c) {
    return _mm256_fmadd_ps(a, b, c);
}
ALWAYS_INLINE vf vmul(vf a, vf b) {
    return _mm256_mul_ps(a, b);
}
ALWAYS_INLINE vf vadd(vf a, vf b) {
    return _mm256_add_ps(a, b);
}
ALWAYS_INLINE vf vsub(vf a, vf b) {
    return _mm256_sub_ps(a, b);
}
ALWAYS_INLINE vf vmax(vf a, vf b) {
    return _mm256_max_ps(a, b);
}
ALWAYS_INLINE float vsum(vf v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
ALWAYS_INLINE float vhmax(vf v) {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
/* mask of the first n lanes, 0 <= n <= VW */
ALWAYS_INLINE vmask vmask_n(int n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
/* masked-off lanes read as 0 and are never touched in memory */
ALWAYS_INLINE vf vld_m(const float *p, vmask m) {
    return _mm256_maskload_ps(p, m);
}
ALWAYS_INLINE void vst_m(float *p, vf v, vmask m) {
    _mm256_maskstore_ps(p, m, v);
}
/* 8 bf16 -> f32: zero-extend to 32 bits and shift into the high half */
ALWAYS_INLINE vf vld_bf16(const uint16_t *p) {
    __m128i h = _mm_loadu_si128((const __m128i *)p);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}
ALWAYS_INLINE vf vld_f16(const uint16_t *p) {
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
}
ALWAYS_INLINE float f16s(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    return _cvtsh_ss(h);
}
#define QV (QVL_QBLOCK / VW) /* vectors per quant block */
/* the 32 int8 of a Q8_0 block (after its scale) as unscaled floats */
ALWAYS_INLINE void q8_widen(const uint8_t *blk, vf out[QV]) {
    for (int v = 0; v < QV; v++)
        out[v] = _mm256_cvtepi32_ps(
            _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(blk + 2 + 8 * v))));
}
/* the 32 nibbles of a Q4_0 block as unscaled floats (nibble - 8); low nibbles first */
ALWAYS_INLINE void q4_widen(const uint8_t *blk, vf out[QV]) {
    __m128i q = _mm_loadu_si128((const __m128i *)(blk + 2));
    __m128i m4 = _mm_set1_epi8(15), e8 = _mm_set1_epi8(8);
    __m128i lo = _mm_sub_epi8(_mm_and_si128(q, m4), e8);
    __m128i hi = _mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(q, 4), m4), e8);
    out[0] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(lo));
    out[1] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(lo, 8)));
    out[2] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(hi));
    out[3] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(hi, 8)));
}
/* e^x for x <= 88.3; lanes below -87.3 (including -inf) give exactly 0. Cephes-style range
 * reduction x = n ln2 + r, |r| <= ln2/2, degree-6 polynomial, 2^n built in the exponent field. */
ALWAYS_INLINE vf vexp(vf x) {
    vf live = _mm256_cmp_ps(x, _mm256_set1_ps(-87.3f), _CMP_GE_OQ);
    x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.3f)), _mm256_set1_ps(88.3f));
    vf n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                           _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    vf r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    vf p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    vf r2 = _mm256_mul_ps(r, r);
    p = _mm256_fmadd_ps(p, r2, _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    __m256i e = _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127));
    e = _mm256_slli_epi32(e, 23);
    return _mm256_and_ps(_mm256_mul_ps(p, _mm256_castsi256_ps(e)), live);
}

/* tile sizes of the kernel body */
#define GM_MR  6   /* activation rows per GEMM micro-tile */
#define AT_KB  16  /* keys per attention block (multiple of VW) */
#define AT_PVN 3   /* output vectors per P.V chunk */

/* ==== kernel body (identical in avx512.c) ===================================================== */

#define GM_NR  (2 * VW) /* output columns per GEMM micro-tile (two vectors) */
#define GM_KB  256      /* k per packed panel (multiple of 32) */
#define MV_NR  4        /* weight rows per matvec pass */
#define AT_QB  4        /* queries per attention sub-block */
#define AT_QC  256      /* queries per chunk sharing one transposed key block */
#define AT_HDMAX 256    /* larger heads fall back to ref */

static float wscalar(qvl_dtype wt, const uint8_t *row, int64_t p) {
    uint16_t h;
    float f;
    switch (wt) {
    case QVL_DT_F32: memcpy(&f, row + p * 4, 4); return f;
    case QVL_DT_F16: memcpy(&h, row + p * 2, 2); return _cvtsh_ss(h);
    case QVL_DT_BF16: {
        memcpy(&h, row + p * 2, 2);
        uint32_t u = (uint32_t)h << 16;
        memcpy(&f, &u, 4);
        return f;
    }
    default: return 0.0f;
    }
}

/* VW consecutive weights of a float-type row starting at element p */
ALWAYS_INLINE vf wload(qvl_dtype wt, const uint8_t *row, int64_t p) {
    switch (wt) {
    case QVL_DT_F16: return vld_f16((const uint16_t *)(row + p * 2));
    case QVL_DT_BF16: return vld_bf16((const uint16_t *)(row + p * 2));
    default: return vld((const float *)(row + p * 4));
    }
}

/* Widen elements [p0, p0+n) of a weight row to float (p0, n multiples of 32 for Q types).
 * Values are identical to qvl_row_to_f32 (same d * q products). */
static void widen_range(qvl_dtype wt, const uint8_t *row, int64_t p0, int64_t n, float *out) {
    int64_t p = 0;
    switch (wt) {
    case QVL_DT_F32: memcpy(out, row + p0 * 4, (size_t)n * 4); return;
    case QVL_DT_F16:
    case QVL_DT_BF16:
        for (; p + VW <= n; p += VW)
            vst(out + p, wload(wt, row, p0 + p));
        for (; p < n; p++)
            out[p] = wscalar(wt, row, p0 + p);
        return;
    case QVL_DT_Q8_0:
    case QVL_DT_Q4_0: {
        size_t bs = wt == QVL_DT_Q8_0 ? 34 : 18;
        const uint8_t *blk = row + (size_t)(p0 / QVL_QBLOCK) * bs;
        for (; p < n; p += QVL_QBLOCK, blk += bs) {
            vf q[QV];
            if (wt == QVL_DT_Q8_0)
                q8_widen(blk, q);
            else
                q4_widen(blk, q);
            vf d = vset1(f16s(blk));
            for (int v = 0; v < QV; v++)
                vst(out + p + v * VW, vmul(d, q[v]));
        }
        return;
    }
    default: memset(out, 0, (size_t)n * 4); return;
    }
}

/* ---- matvec (m small): MV_NR weight rows x MR activation rows per pass ----------------------
 * rows[r] point at weight rows (duplicates past the end), xr[i] at activation rows (likewise);
 * only the first nr rows / ni activation rows are stored. Each weight row is streamed once. */
ALWAYS_INLINE void mv_float(const int MR, const qvl_dtype wt, const uint8_t *const rows[MV_NR],
                            int nr, const float *const xr[4], int ni, int64_t k, float *y,
                            int64_t ldy, const float *b) {
    vf acc[MV_NR][4];
    for (int r = 0; r < MV_NR; r++)
        for (int i = 0; i < MR; i++)
            acc[r][i] = vzero();
    int64_t p = 0;
    for (; p + VW <= k; p += VW) {
        vf w[MV_NR];
        for (int r = 0; r < MV_NR; r++)
            w[r] = wload(wt, rows[r], p);
        for (int i = 0; i < MR; i++) {
            vf xv = vld(xr[i] + p);
            for (int r = 0; r < MV_NR; r++)
                acc[r][i] = vfma(xv, w[r], acc[r][i]);
        }
    }
    for (int r = 0; r < nr; r++)
        for (int i = 0; i < ni; i++) {
            float s = vsum(acc[r][i]);
            for (int64_t q = p; q < k; q++)
                s += xr[i][q] * wscalar(wt, rows[r], q);
            y[i * ldy + r] = s + (b ? b[r] : 0.0f);
        }
}

ALWAYS_INLINE void mv_quant(const int MR, const qvl_dtype wt, const uint8_t *const rows[MV_NR],
                            int nr, const float *const xr[4], int ni, int64_t k, float *y,
                            int64_t ldy, const float *b) {
    const size_t bs = wt == QVL_DT_Q8_0 ? 34 : 18;
    vf acc[MV_NR][4];
    for (int r = 0; r < MV_NR; r++)
        for (int i = 0; i < MR; i++)
            acc[r][i] = vzero();
    for (int64_t p = 0, ib = 0; p < k; p += QVL_QBLOCK, ib++) {
        vf q[MV_NR][QV];
        vf d[MV_NR];
        for (int r = 0; r < MV_NR; r++) {
            const uint8_t *blk = rows[r] + (size_t)ib * bs;
            if (wt == QVL_DT_Q8_0)
                q8_widen(blk, q[r]);
            else
                q4_widen(blk, q[r]);
            d[r] = vset1(f16s(blk));
        }
        for (int i = 0; i < MR; i++) {
            vf xv[QV];
            for (int v = 0; v < QV; v++)
                xv[v] = vld(xr[i] + p + v * VW);
            for (int r = 0; r < MV_NR; r++) {
                vf t = vmul(q[r][0], xv[0]);
                for (int v = 1; v < QV; v++)
                    t = vfma(q[r][v], xv[v], t);
                acc[r][i] = vfma(d[r], t, acc[r][i]);
            }
        }
    }
    for (int r = 0; r < nr; r++)
        for (int i = 0; i < ni; i++)
            y[i * ldy + r] = vsum(acc[r][i]) + (b ? b[r] : 0.0f);
}

#define MV_CASE(fn, MR, WT) fn(MR, WT, rows, nr, xr, ni, k, yy, ldy, bb)
#define MV_DISPATCH(MR)                                                                        \
    switch (wt) {                                                                              \
    case QVL_DT_F32: MV_CASE(mv_float, MR, QVL_DT_F32); break;                                 \
    case QVL_DT_F16: MV_CASE(mv_float, MR, QVL_DT_F16); break;                                 \
    case QVL_DT_BF16: MV_CASE(mv_float, MR, QVL_DT_BF16); break;                               \
    case QVL_DT_Q8_0: MV_CASE(mv_quant, MR, QVL_DT_Q8_0); break;                               \
    default: MV_CASE(mv_quant, MR, QVL_DT_Q4_0); break;                                        \
    }

static void matvec(float *y, int64_t ldy, const float *x, int64_t ldx, int64_t m, int64_t k,
                   const uint8_t *w, qvl_dtype wt, const float *b, int64_t j0, int64_t j1) {
    size_t rb = qvl_dtype_row_bytes(wt, (size_t)k);
    for (int64_t i0 = 0; i0 < m; i0 += 4) {
        int ni = m - i0 < 4 ? (int)(m - i0) : 4;
        const float *xr[4];
        for (int i = 0; i < 4; i++)
            xr[i] = x + (i0 + (i < ni ? i : ni - 1)) * ldx;
        for (int64_t j = j0; j < j1; j += MV_NR) {
            int nr = j1 - j < MV_NR ? (int)(j1 - j) : MV_NR;
            const uint8_t *rows[MV_NR];
            for (int r = 0; r < MV_NR; r++)
                rows[r] = w + (size_t)(j + (r < nr ? r : nr - 1)) * rb;
            float *yy = y + i0 * ldy + j;
            const float *bb = b ? b + j : NULL;
            if (ni == 1) {
                MV_DISPATCH(1)
            } else if (ni == 2) {
                MV_DISPATCH(2)
            } else {
                MV_DISPATCH(4)
            }
        }
    }
}

/* ---- GEMM (m larger): packed weight panel [kb][GM_NR] reused by all activation rows --------
 * Micro-tile: GM_MR activation rows x GM_NR columns held in registers over the panel's k range.
 * The tile is stored (first k block), added (later blocks) and gets the bias on the last. */
static void gm_tile(const float *x, int64_t ldx, int ni, const float *panel, int kb, float *y,
                    int64_t ldy, int nj, bool first, const float *bias) {
    const float *xr[GM_MR];
    for (int i = 0; i < GM_MR; i++)
        xr[i] = x + (i < ni ? i : ni - 1) * ldx;
    vf acc[GM_MR][2];
    for (int i = 0; i < GM_MR; i++)
        acc[i][0] = acc[i][1] = vzero();
    for (int p = 0; p < kb; p++) {
        vf w0 = vld(panel + p * GM_NR);
        vf w1 = vld(panel + p * GM_NR + VW);
        for (int i = 0; i < GM_MR; i++) {
            vf xb = vset1(xr[i][p]);
            acc[i][0] = vfma(xb, w0, acc[i][0]);
            acc[i][1] = vfma(xb, w1, acc[i][1]);
        }
    }
    vmask m0 = vmask_n(nj < VW ? nj : VW);
    vmask m1 = vmask_n(nj > VW ? nj - VW : 0);
    vf b0 = bias ? vld_m(bias, m0) : vzero();
    vf b1 = bias ? vld_m(bias + VW, m1) : vzero();
    for (int i = 0; i < ni; i++) {
        float *yr = y + i * ldy;
        vf a0 = acc[i][0], a1 = acc[i][1];
        if (!first) {
            a0 = vadd(vld_m(yr, m0), a0);
            a1 = vadd(vld_m(yr + VW, m1), a1);
        }
        if (bias) {
            a0 = vadd(a0, b0);
            a1 = vadd(a1, b1);
        }
        vst_m(yr, a0, m0);
        vst_m(yr + VW, a1, m1);
    }
}

static void gemm(float *y, int64_t ldy, const float *x, int64_t ldx, int64_t m, int64_t k,
                 const uint8_t *w, qvl_dtype wt, const float *b, int64_t j0, int64_t j1) {
    _Alignas(64) float panel[GM_KB * GM_NR];
    _Alignas(64) float tmp[GM_KB];
    size_t rb = qvl_dtype_row_bytes(wt, (size_t)k);
    for (int64_t jb = j0; jb < j1; jb += GM_NR) {
        int nj = j1 - jb < GM_NR ? (int)(j1 - jb) : GM_NR;
        for (int64_t p0 = 0; p0 < k; p0 += GM_KB) {
            int kb = k - p0 < GM_KB ? (int)(k - p0) : GM_KB;
            for (int r = 0; r < GM_NR; r++) {
                if (r < nj) {
                    widen_range(wt, w + (size_t)(jb + r) * rb, p0, kb, tmp);
                    for (int p = 0; p < kb; p++)
                        panel[p * GM_NR + r] = tmp[p];
                } else {
                    for (int p = 0; p < kb; p++)
                        panel[p * GM_NR + r] = 0.0f;
                }
            }
            bool first = p0 == 0;
            const float *bias = b && p0 + kb >= k ? b + jb : NULL;
            for (int64_t i0 = 0; i0 < m; i0 += GM_MR) {
                int ni = m - i0 < GM_MR ? (int)(m - i0) : GM_MR;
                gm_tile(x + i0 * ldx + p0, ldx, ni, panel, kb, y + i0 * ldy + jb, ldy, nj, first,
                        bias);
            }
        }
    }
}

static bool simd_matmul(float *y, int64_t ldy, const float *x, int64_t ldx, int64_t m, int64_t k,
                        const void *w, qvl_dtype wt, const float *b, int64_t j0, int64_t j1) {
    if (wt != QVL_DT_F32 && wt != QVL_DT_F16 && wt != QVL_DT_BF16 && wt != QVL_DT_Q8_0 &&
        wt != QVL_DT_Q4_0)
        return false;
    if ((wt == QVL_DT_Q8_0 || wt == QVL_DT_Q4_0) && k % QVL_QBLOCK)
        return false;
    if (m <= 0 || j1 <= j0)
        return true;
    if (k <= 0) {
        for (int64_t i = 0; i < m; i++)
            for (int64_t j = j0; j < j1; j++)
                y[i * ldy + j] = b ? b[j] : 0.0f;
        return true;
    }
    if (m <= 4)
        matvec(y, ldy, x, ldx, m, k, w, wt, b, j0, j1);
    else
        gemm(y, ldy, x, ldx, m, k, w, wt, b, j0, j1);
    return true;
}

static float simd_dot(const float *a, const float *b, int64_t n) {
    vf s0 = vzero(), s1 = vzero(), s2 = vzero(), s3 = vzero();
    int64_t i = 0;
    for (; i + 4 * VW <= n; i += 4 * VW) {
        s0 = vfma(vld(a + i), vld(b + i), s0);
        s1 = vfma(vld(a + i + VW), vld(b + i + VW), s1);
        s2 = vfma(vld(a + i + 2 * VW), vld(b + i + 2 * VW), s2);
        s3 = vfma(vld(a + i + 3 * VW), vld(b + i + 3 * VW), s3);
    }
    for (; i + VW <= n; i += VW)
        s0 = vfma(vld(a + i), vld(b + i), s0);
    float s = vsum(vadd(vadd(s0, s1), vadd(s2, s3)));
    for (; i < n; i++)
        s += a[i] * b[i];
    return s;
}

/* ---- attention -------------------------------------------------------------------------------
 * Queries go in chunks of AT_QC (running max/sum per query on the stack, output rows of o used as
 * accumulators), keys in blocks of AT_KB. For each key block the scores of AT_QB queries are
 * formed either against a transposed copy of the key block (outer products, no horizontal sums:
 * used when the chunk has enough queries to repay the transpose) or by per-key dot products
 * (decode). Then an online-softmax update and P.V accumulated into o. */

/* online-softmax update of AT_QB query rows against one key block; s[qi][jj] holds raw scaled
 * scores, valid[qi] how many leading keys query qi sees. On return s holds probabilities and the
 * o rows have been rescaled and accumulated. */
static void at_update(float s[AT_QB][AT_KB], const int valid[AT_QB], int nqb, int nj, float *mrow,
                      float *lrow, float *const orow[AT_QB], const float *v, int64_t ldv, int hd) {
    for (int qi = 0; qi < AT_QB; qi++) {
        int nv = qi < nqb ? valid[qi] : 0;
        if (nv <= 0) {
            for (int jj = 0; jj < AT_KB; jj++)
                s[qi][jj] = 0.0f;
            continue;
        }
        for (int jj = nv; jj < AT_KB; jj++)
            s[qi][jj] = -INFINITY;
        vf mx = vld(s[qi]);
        for (int jj = VW; jj < AT_KB; jj += VW)
            mx = vmax(mx, vld(s[qi] + jj));
        float bm = vhmax(mx);
        float mnew = bm > mrow[qi] ? bm : mrow[qi];
        float c = expf(mrow[qi] - mnew); /* 0 on the first block (mrow = -inf) */
        vf mv = vset1(mnew);
        vf sum = vzero();
        for (int jj = 0; jj < AT_KB; jj += VW) {
            vf pv = vexp(vsub(vld(s[qi] + jj), mv));
            vst(s[qi] + jj, pv);
            sum = vadd(sum, pv);
        }
        for (int jj = nv; jj < AT_KB; jj++)
            s[qi][jj] = 0.0f;
        lrow[qi] = lrow[qi] * c + vsum(sum);
        mrow[qi] = mnew;
        if (c != 1.0f) {
            vf cv = vset1(c);
            float *o = orow[qi];
            int d = 0;
            for (; d + VW <= hd; d += VW)
                vst(o + d, vmul(vld(o + d), cv));
            for (; d < hd; d++)
                o[d] *= c;
        }
    }
    /* o[qi] += sum_jj P[qi][jj] v[jj] over chunks of AT_PVN vectors of the head dim */
    for (int d0 = 0; d0 < hd; d0 += AT_PVN * VW) {
        vmask mk[AT_PVN];
        for (int t = 0; t < AT_PVN; t++) {
            int left = hd - d0 - t * VW;
            mk[t] = vmask_n(left <= 0 ? 0 : left < VW ? left : VW);
        }
        vf acc[AT_QB][AT_PVN];
        for (int qi = 0; qi < AT_QB; qi++)
            for (int t = 0; t < AT_PVN; t++)
                acc[qi][t] = vld_m(orow[qi] + d0 + t * VW, mk[t]);
        for (int jj = 0; jj < nj; jj++) {
            const float *vj = v + jj * ldv + d0;
            vf vv[AT_PVN];
            for (int t = 0; t < AT_PVN; t++)
                vv[t] = vld_m(vj + t * VW, mk[t]);
            for (int qi = 0; qi < AT_QB; qi++) {
                vf pb = vset1(s[qi][jj]);
                for (int t = 0; t < AT_PVN; t++)
                    acc[qi][t] = vfma(pb, vv[t], acc[qi][t]);
            }
        }
        for (int qi = 0; qi < nqb; qi++)
            for (int t = 0; t < AT_PVN; t++)
                vst_m(orow[qi] + d0 + t * VW, acc[qi][t], mk[t]);
    }
}

static void simd_attn(float *o, int64_t ldo, const float *q, int64_t ldq, int64_t nq,
                      const float *k, int64_t ldk, const float *v, int64_t ldv, int64_t nk, int hd,
                      float scale, bool causal, int64_t q_pos0) {
    if (hd > AT_HDMAX || hd <= 0) {
        qvl_kern_ref()->attn(o, ldo, q, ldq, nq, k, ldk, v, ldv, nk, hd, scale, causal, q_pos0);
        return;
    }
    _Alignas(64) float kt[AT_HDMAX * AT_KB];
    _Alignas(64) float s[AT_QB][AT_KB];
    float mrow[AT_QC], lrow[AT_QC];
    for (int64_t i0 = 0; i0 < nq; i0 += AT_QC) {
        int ni = nq - i0 < AT_QC ? (int)(nq - i0) : AT_QC;
        for (int i = 0; i < ni; i++) {
            mrow[i] = -INFINITY;
            lrow[i] = 0.0f;
            memset(o + (i0 + i) * ldo, 0, (size_t)hd * sizeof(float));
        }
        int64_t kend = nk;
        if (causal && q_pos0 + i0 + ni < kend)
            kend = q_pos0 + i0 + ni;
        bool transposed = ni >= 2 * AT_QB;
        for (int64_t j0 = 0; j0 < kend; j0 += AT_KB) {
            int nj = kend - j0 < AT_KB ? (int)(kend - j0) : AT_KB;
            const float *kb = k + j0 * ldk;
            if (transposed) {
                for (int jj = 0; jj < nj; jj++)
                    for (int d = 0; d < hd; d++)
                        kt[d * AT_KB + jj] = kb[jj * ldk + d];
                for (int jj = nj; jj < AT_KB; jj++)
                    for (int d = 0; d < hd; d++)
                        kt[d * AT_KB + jj] = 0.0f;
            }
            for (int ii = 0; ii < ni; ii += AT_QB) {
                int nqb = ni - ii < AT_QB ? ni - ii : AT_QB;
                int valid[AT_QB];
                int any = 0;
                for (int qi = 0; qi < AT_QB; qi++) {
                    int64_t end = causal ? q_pos0 + i0 + ii + qi + 1 : nk;
                    if (end > nk)
                        end = nk;
                    int64_t nv = end - j0;
                    valid[qi] = qi >= nqb || nv <= 0 ? 0 : nv > nj ? nj : (int)nv;
                    any |= valid[qi];
                }
                if (!any)
                    continue;
                const float *qr[AT_QB];
                float *orow[AT_QB];
                for (int qi = 0; qi < AT_QB; qi++) {
                    int64_t i = i0 + ii + (qi < nqb ? qi : nqb - 1);
                    qr[qi] = q + i * ldq;
                    orow[qi] = o + i * ldo;
                }
                if (transposed) {
                    vf acc[AT_QB][AT_KB / VW];
                    for (int qi = 0; qi < AT_QB; qi++)
                        for (int t = 0; t < AT_KB / VW; t++)
                            acc[qi][t] = vzero();
                    for (int d = 0; d < hd; d++) {
                        vf kv[AT_KB / VW];
                        for (int t = 0; t < AT_KB / VW; t++)
                            kv[t] = vld(kt + d * AT_KB + t * VW);
                        for (int qi = 0; qi < AT_QB; qi++) {
                            vf qb = vset1(qr[qi][d]);
                            for (int t = 0; t < AT_KB / VW; t++)
                                acc[qi][t] = vfma(qb, kv[t], acc[qi][t]);
                        }
                    }
                    vf sc = vset1(scale);
                    for (int qi = 0; qi < AT_QB; qi++)
                        for (int t = 0; t < AT_KB / VW; t++)
                            vst(s[qi] + t * VW, vmul(acc[qi][t], sc));
                } else {
                    for (int qi = 0; qi < AT_QB; qi++)
                        for (int jj = 0; jj < AT_KB; jj++)
                            s[qi][jj] =
                                jj < valid[qi] ? simd_dot(qr[qi], kb + jj * ldk, hd) * scale : 0.0f;
                }
                at_update(s, valid, nqb, nj, mrow + ii, lrow + ii, orow, v + j0 * ldv, ldv, hd);
            }
        }
        for (int i = 0; i < ni; i++) {
            float inv = lrow[i] > 0 ? 1.0f / lrow[i] : 0.0f;
            float *oi = o + (i0 + i) * ldo;
            for (int d = 0; d < hd; d++)
                oi[d] *= inv;
        }
    }
}

/* ==== end of kernel body ==================================================================== */

static const qvl_kern k_avx2 = {
    .name = "avx2",
    .matmul = simd_matmul,
    .attn = simd_attn,
    .dot = simd_dot,
};

const qvl_kern *qvl_kern_avx2(void) {
    return &k_avx2;
}
