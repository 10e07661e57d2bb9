/* avx2.c - AVX2 + FMA + F16C kernels (compiled with per-file ISA flags; used only when the CPU has
 * them).
 *
 * This file defines the vector layer for this ISA (vf = 8 floats, masked partial loads,
 * bf16/f16/Q8_0/Q4_0 widening, exp, compares) and the tile sizes, then includes simd_body.h, the
 * kernel body shared with avx512.c, and fills the table from it.
 *
 * Numerics: float32 accumulation throughout, so results agree with ref.c to float32 rounding
 * (different summation order only), except the int8 decode of the interleaved Q types below,
 * which rounds the activations to int8 blocks as the avx512 path does.
 */
#include "kern.h"

#include "common.h"

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
ALWAYS_INLINE vf vdiv(vf a, vf b) {
    return _mm256_div_ps(a, b);
}
/* min/max return the second operand when a lane is NaN (x86 semantics; vexp relies on it) */
ALWAYS_INLINE vf vmin(vf a, vf b) {
    return _mm256_min_ps(a, b);
}
ALWAYS_INLINE vf vabs(vf a) {
    return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), a);
}
/* a*b - c and c - a*b, one rounding */
ALWAYS_INLINE vf vfms(vf a, vf b, vf c) {
    return _mm256_fmsub_ps(a, b, c);
}
ALWAYS_INLINE vf vfnma(vf a, vf b, vf c) {
    return _mm256_fnmadd_ps(a, b, c);
}
/* compares (false on NaN) and select */
typedef __m256 vbool;
ALWAYS_INLINE vbool vlt(vf a, vf b) {
    return _mm256_cmp_ps(a, b, _CMP_LT_OQ);
}
ALWAYS_INLINE vbool vgt(vf a, vf b) {
    return _mm256_cmp_ps(a, b, _CMP_GT_OQ);
}
ALWAYS_INLINE vf vsel(vbool m, vf a, vf b) { /* m ? a : b */
    return _mm256_blendv_ps(b, a, m);
}
ALWAYS_INLINE vf vkeep(vf v, vmask m) { /* lanes outside m set to 0 */
    return _mm256_and_ps(v, _mm256_castsi256_ps(m));
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
/* transpose the 8 x 8 block r[i][j] in place (r[j][i] afterwards): pairs unpacked within
 * 128-bit lanes, 64-bit pairs shuffled, then the 128-bit halves exchanged */
ALWAYS_INLINE void vtrans(vf r[VW]) {
    vf a[8], b[8];
    for (int i = 0; i < 8; i += 2) {
        a[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
        a[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
    }
    /* b[4g + c], 128-bit lane L: rows 4g..4g+3 of column 4L + c */
    for (int g = 0; g < 8; g += 4) {
        b[g] = _mm256_shuffle_ps(a[g], a[g + 2], 0x44);
        b[g + 1] = _mm256_shuffle_ps(a[g], a[g + 2], 0xEE);
        b[g + 2] = _mm256_shuffle_ps(a[g + 1], a[g + 3], 0x44);
        b[g + 3] = _mm256_shuffle_ps(a[g + 1], a[g + 3], 0xEE);
    }
    for (int c = 0; c < 4; c++) {
        r[c] = _mm256_permute2f128_ps(b[c], b[4 + c], 0x20);
        r[4 + c] = _mm256_permute2f128_ps(b[c], b[4 + c], 0x31);
    }
}
/* lane j of the result = the sum of a[j]'s 8 lanes: 128-bit halves, then pairs of lanes folded
 * together (7 adds, 14 shuffles). The tree leaves the sums in the lane order 0 2 1 3 4 6 5 7, a
 * permutation that is its own inverse, so reading a[] in that order puts them in place. */
ALWAYS_INLINE vf vsum_lanes(const vf a[VW]) {
    static const int o[8] = {0, 2, 1, 3, 4, 6, 5, 7};
    vf b[4], c[2];
    for (int j = 0; j < 4; j++)
        b[j] = _mm256_add_ps(_mm256_permute2f128_ps(a[o[j]], a[o[j + 4]], 0x20),
                             _mm256_permute2f128_ps(a[o[j]], a[o[j + 4]], 0x31));
    for (int j = 0; j < 2; j++)
        c[j] = _mm256_add_ps(_mm256_unpacklo_ps(b[j], b[j + 2]), _mm256_unpackhi_ps(b[j], b[j + 2]));
    __m256d lo = _mm256_unpacklo_pd(_mm256_castps_pd(c[0]), _mm256_castps_pd(c[1]));
    __m256d hi = _mm256_unpackhi_pd(_mm256_castps_pd(c[0]), _mm256_castps_pd(c[1]));
    return _mm256_add_ps(_mm256_castpd_ps(lo), _mm256_castpd_ps(hi));
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

/* tile sizes of the kernel body (simd_body.h) */
#define GM_MR  6   /* activation rows per GEMM micro-tile */
#define GM_NV  2   /* column vectors per GEMM micro-tile */
#define GM_KB  256 /* k per packed panel */
#define AT_QT  4   /* queries per attention tile (score and P.V accumulators in registers) */
#define AT_KB  24  /* keys per attention block (multiple of VW) */
#define AT_PVN 3   /* head-dim vectors per P.V pass */

#include "simd_body.h"

/* ---- int8 decode on interleaved Q8_0X16 / Q4_0X16 weights ---------------------------------------
 * For up to 4 activation rows (decode) the interleaved types are multiplied in integers, as the
 * avx512 path does without VNNI: each activation row is rounded once per call to int8 blocks of
 * 32 with a float scale (dx = amax / 127, q = round(x / dx)), and a 64-byte chunk of a group (4
 * quant bytes of each of 16 rows, dtype.h) is two 32-byte halves, rows 0-7 and 8-15, dotted with
 * the broadcast activation bytes by vpmaddubsw (unsigned weights x signed activations, pairs
 * summed to int16) and vpmaddwd (pairs to int32): no unpacking, no horizontal sums. Q4_0: the
 * nibbles (element e low, e + 16 high) are the unsigned operand; the 8 products of a block stay
 * within int16 (8 x 2 x 15 x 127 = 30480), so they are summed there and widened once per block,
 * and -8 x the activation block's sum corrects the offset. Q8_0: |w| against x with w's sign
 * (vpsignb; 2 x 128 x 127 fits int16), widened per chunk. Per block: the int32 sums converted and
 * scaled by d_w * d_x into one float accumulator per row. The integer dots are exact; the error
 * against float activations is that of the rounding, at most amax / 254 per element. More rows
 * (prefill) keep the float GEMM, which unpacks the groups. */
#define MVA_MAXK 16384

static void mva_quant_row(const float *x, int64_t k, int off, int8_t *q, float *d, int32_t *c) {
    for (int64_t ib = 0; ib < k / QVL_QBLOCK; ib++) {
        const float *xb = x + ib * QVL_QBLOCK;
        __m256 v[4], mx = _mm256_setzero_ps();
        const __m256 sign = _mm256_set1_ps(-0.0f);
        for (int i = 0; i < 4; i++) {
            v[i] = _mm256_loadu_ps(xb + 8 * i);
            mx = _mm256_max_ps(mx, _mm256_andnot_ps(sign, v[i]));
        }
        __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(mx), _mm256_extractf128_ps(mx, 1));
        m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        m4 = _mm_max_ss(m4, _mm_shuffle_ps(m4, m4, 1));
        float amax = _mm_cvtss_f32(m4);
        float id = amax > 0.0f ? 127.0f / amax : 0.0f;
        __m256i n[4];
        for (int i = 0; i < 4; i++)
            n[i] = _mm256_cvtps_epi32(_mm256_mul_ps(v[i], _mm256_set1_ps(id)));
        /* int32 -> int16 -> int8 with saturation; the packs interleave 128-bit lanes, the
         * permute puts the 32 bytes back in element order */
        __m256i b = _mm256_packs_epi16(_mm256_packs_epi32(n[0], n[1]), _mm256_packs_epi32(n[2], n[3]));
        b = _mm256_permutevar8x32_epi32(b, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256((__m256i *)(q + ib * QVL_QBLOCK), b);
        __m256i s = _mm256_sad_epu8(_mm256_xor_si256(b, _mm256_set1_epi8((char)0x80)),
                                    _mm256_setzero_si256()); /* sum of (q + 128) per 8 bytes */
        __m128i s2 = _mm_add_epi64(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
        int32_t sum = (int32_t)(_mm_cvtsi128_si64(s2) + _mm_extract_epi64(s2, 1)) - 32 * 128;
        d[ib] = amax / 127.0f;
        c[ib] = -off * sum;
    }
}

/* 16 weight rows (group g) x one rounded activation row (q, d, c) over nb blocks; stores the
 * outputs of the rows set in mask mk (+ bias) at y */
ALWAYS_INLINE void mva_group(const bool Q8, const uint8_t *g, const int8_t *q, const float *d,
                             const int32_t *c, int64_t nb, float *y, unsigned mk,
                             const float *b) {
    const size_t gs = (Q8 ? 34 : 18) * QVL_X16;
    const int NC = Q8 ? 8 : 4;
    const __m256i ones = _mm256_set1_epi16(1), m15 = _mm256_set1_epi8(15);
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    for (int64_t ib = 0; ib < nb; ib++, g += gs) {
        __m256 dw0 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)g));
        __m256 dw1 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(g + 16)));
        const int8_t *xb = q + ib * QVL_QBLOCK;
        __m256i t0 = _mm256_set1_epi32(c[ib]), t1 = t0;
        if (Q8) {
            for (int t = 0; t < NC; t++) {
                int32_t xv;
                memcpy(&xv, xb + 4 * t, 4);
                __m256i xs = _mm256_set1_epi32(xv);
                __m256i w0 = _mm256_loadu_si256((const __m256i *)(g + 2 * QVL_X16 + 64 * t));
                __m256i w1 = _mm256_loadu_si256((const __m256i *)(g + 2 * QVL_X16 + 64 * t + 32));
                __m256i p0 = _mm256_maddubs_epi16(_mm256_abs_epi8(w0), _mm256_sign_epi8(xs, w0));
                __m256i p1 = _mm256_maddubs_epi16(_mm256_abs_epi8(w1), _mm256_sign_epi8(xs, w1));
                t0 = _mm256_add_epi32(t0, _mm256_madd_epi16(p0, ones));
                t1 = _mm256_add_epi32(t1, _mm256_madd_epi16(p1, ones));
            }
        } else {
            __m256i s0 = _mm256_setzero_si256(), s1 = s0;
            for (int t = 0; t < NC; t++) {
                int32_t xl, xh;
                memcpy(&xl, xb + 4 * t, 4);
                memcpy(&xh, xb + 16 + 4 * t, 4);
                __m256i vl = _mm256_set1_epi32(xl), vh = _mm256_set1_epi32(xh);
                __m256i w0 = _mm256_loadu_si256((const __m256i *)(g + 2 * QVL_X16 + 64 * t));
                __m256i w1 = _mm256_loadu_si256((const __m256i *)(g + 2 * QVL_X16 + 64 * t + 32));
                s0 = _mm256_add_epi16(s0, _mm256_maddubs_epi16(_mm256_and_si256(w0, m15), vl));
                s0 = _mm256_add_epi16(
                    s0, _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(w0, 4), m15), vh));
                s1 = _mm256_add_epi16(s1, _mm256_maddubs_epi16(_mm256_and_si256(w1, m15), vl));
                s1 = _mm256_add_epi16(
                    s1, _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(w1, 4), m15), vh));
            }
            t0 = _mm256_add_epi32(t0, _mm256_madd_epi16(s0, ones));
            t1 = _mm256_add_epi32(t1, _mm256_madd_epi16(s1, ones));
        }
        __m256 dx = _mm256_set1_ps(d[ib]);
        acc0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(t0), _mm256_mul_ps(dw0, dx), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(t1), _mm256_mul_ps(dw1, dx), acc1);
    }
    float out[16];
    _mm256_storeu_ps(out, acc0);
    _mm256_storeu_ps(out + 8, acc1);
    for (int r = 0; r < 16; r++)
        if (mk >> r & 1)
            y[r] = out[r] + (b ? b[r] : 0.0f);
}

static void mva_cols(const bool Q8, float *y, const int8_t *q, const float *d, const int32_t *c,
                     int64_t nb, const uint8_t *w, const float *b, int64_t j0, int64_t j1) {
    const size_t grp = (size_t)nb * (Q8 ? 34 : 18) * QVL_X16;
    for (int64_t gi = j0 / QVL_X16; gi * QVL_X16 < j1; gi++) {
        int64_t jg = gi * QVL_X16;
        int64_t lo = jg < j0 ? j0 - jg : 0, hi = j1 - jg < QVL_X16 ? j1 - jg : QVL_X16;
        unsigned mk = ((1u << hi) - 1u) & ~((1u << lo) - 1u);
        mva_group(Q8, w + (size_t)gi * grp, q, d, c, nb, y + jg, mk, b ? b + jg : NULL);
    }
}

static void mva_cols_q8(float *y, const int8_t *q, const float *d, const int32_t *c, int64_t nb,
                        const uint8_t *w, const float *b, int64_t j0, int64_t j1) {
    mva_cols(true, y, q, d, c, nb, w, b, j0, j1);
}

static void mva_cols_q4(float *y, const int8_t *q, const float *d, const int32_t *c, int64_t nb,
                        const uint8_t *w, const float *b, int64_t j0, int64_t j1) {
    mva_cols(false, y, q, d, c, nb, w, b, j0, j1);
}

/* ---- bf16 decode, one activation row (k a multiple of 16) ---------------------------------------
 * As avx512.c's mvb_rows: the weight rows one after the other (a thread's rows are one
 * sequential stream, prefetched MVR_PF bytes ahead), and each 32-byte load of 16 weights split
 * into its even- and odd-indexed elements by a shift and a mask, against the activations split
 * the same way once per call, instead of widening 8 weights per vector with a shuffle. */
#define MVR_PF 8192
#define MVR_XK 16384 /* activation length the per-thread split buffer takes */

static bool mvr_bf16(float *y, const float *x, int64_t k, const uint8_t *w, const float *b,
                     int64_t j0, int64_t j1) {
    static _Thread_local _Alignas(32) float xs[MVR_XK];
    float *xe = xs, *heap = NULL;
    if (k > MVR_XK) {
        heap = qvl_malloc((size_t)k * sizeof(float));
        if (!heap)
            return false;
        xe = heap;
    }
    float *xo = xe + k / 2;
    for (int64_t p = 0; p < k; p += 16) { /* 64-bit pairs (0 2 | 1 3) back in order */
        __m256 x0 = _mm256_loadu_ps(x + p), x1 = _mm256_loadu_ps(x + p + 8);
        __m256 ev = _mm256_shuffle_ps(x0, x1, 0x88), od = _mm256_shuffle_ps(x0, x1, 0xDD);
        ev = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(ev), 0xD8));
        od = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(od), 0xD8));
        _mm256_storeu_ps(xe + p / 2, ev);
        _mm256_storeu_ps(xo + p / 2, od);
    }
    const __m256i hi = _mm256_set1_epi32((int)0xFFFF0000u);
    const size_t rb = (size_t)k * 2;
    for (int64_t j = j0; j < j1; j++) {
        const uint8_t *r = w + (size_t)j * rb;
        __m256 e0 = _mm256_setzero_ps(), o0 = e0, e1 = e0, o1 = e0;
        int64_t p = 0;
        for (; p + 32 <= k; p += 32) {
            _mm_prefetch((const char *)(r + 2 * p + MVR_PF), _MM_HINT_T0);
            __m256i w0 = _mm256_loadu_si256((const __m256i *)(r + 2 * p));
            __m256i w1 = _mm256_loadu_si256((const __m256i *)(r + 2 * p + 32));
            e0 = _mm256_fmadd_ps(_mm256_castsi256_ps(_mm256_slli_epi32(w0, 16)),
                                 _mm256_loadu_ps(xe + p / 2), e0);
            o0 = _mm256_fmadd_ps(_mm256_castsi256_ps(_mm256_and_si256(w0, hi)),
                                 _mm256_loadu_ps(xo + p / 2), o0);
            e1 = _mm256_fmadd_ps(_mm256_castsi256_ps(_mm256_slli_epi32(w1, 16)),
                                 _mm256_loadu_ps(xe + p / 2 + 8), e1);
            o1 = _mm256_fmadd_ps(_mm256_castsi256_ps(_mm256_and_si256(w1, hi)),
                                 _mm256_loadu_ps(xo + p / 2 + 8), o1);
        }
        if (p < k) { /* k = 32 n + 16 */
            __m256i w0 = _mm256_loadu_si256((const __m256i *)(r + 2 * p));
            e0 = _mm256_fmadd_ps(_mm256_castsi256_ps(_mm256_slli_epi32(w0, 16)),
                                 _mm256_loadu_ps(xe + p / 2), e0);
            o0 = _mm256_fmadd_ps(_mm256_castsi256_ps(_mm256_and_si256(w0, hi)),
                                 _mm256_loadu_ps(xo + p / 2), o0);
        }
        y[j] = vsum(_mm256_add_ps(_mm256_add_ps(e0, o0), _mm256_add_ps(e1, o1))) +
               (b ? b[j] : 0.0f);
    }
    qvl_free(heap);
    return true;
}

static bool avx2_matmul(float *y, int64_t ldy, const float *x, int64_t ldx, int64_t m, int64_t k,
                        const void *w, qvl_dtype wt, const float *b, int64_t j0, int64_t j1) {
    if (qvl_dtype_is_x16(wt) && m > 0 && m <= 4 && k > 0 && k <= MVA_MAXK &&
        k % QVL_QBLOCK == 0 && j1 > j0) {
        _Alignas(32) int8_t q[MVA_MAXK];
        float d[MVA_MAXK / QVL_QBLOCK];
        int32_t c[MVA_MAXK / QVL_QBLOCK];
        const bool q8 = wt == QVL_DT_Q8_0X16;
        for (int64_t i = 0; i < m; i++) {
            mva_quant_row(x + i * ldx, k, q8 ? 0 : 8, q, d, c);
            (q8 ? mva_cols_q8 : mva_cols_q4)(y + i * ldy, q, d, c, k / QVL_QBLOCK,
                                            (const uint8_t *)w, b, j0, j1);
        }
        return true;
    }
    if ((wt == QVL_DT_BF16 || wt == QVL_DT_BF16D) && m == 1 && k > 0 && k % 16 == 0 && j1 > j0 &&
        mvr_bf16(y, x, k, (const uint8_t *)w, b, j0, j1))
        return true;
    return simd_matmul(y, ldy, x, ldx, m, k, w, wt, b, j0, j1);
}

static const qvl_kern k_avx2 = {
    .name = "avx2",
    .matmul = avx2_matmul,
    .attn = simd_attn,
    .dot = simd_dot,
    .rmsnorm = simd_rmsnorm,
    .layernorm = simd_layernorm,
    .gelu_tanh = simd_gelu_tanh,
    .gelu_erf = simd_gelu_erf,
    .silu_mul = simd_silu_mul,
    .add = simd_add,
    .quantize_row = qvl_quantize_row_ref,
};

const qvl_kern *qvl_kern_avx2(void) {
    return &k_avx2;
}
