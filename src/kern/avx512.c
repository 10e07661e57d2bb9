/* avx512.c - AVX-512 kernels (compiled with per-file ISA flags; used only when the CPU has them).
 *
 * This file defines the vector layer for this ISA (vf = 16 floats, masked partial loads,
 * bf16/f16/Q8_0/Q4_0 widening, exp, compares) and the tile sizes, then includes simd_body.h, the
 * kernel body shared with avx2.c, and fills the table from it.
 *
 * Numerics: float32 accumulation throughout, so results agree with ref.c to float32 rounding
 * (different summation order only), except that the interleaved Q types round the activations
 * to int8 blocks for integer dot products and BF16D rounds them to bf16 (see avx512_matmul).
 */
#include "kern.h"

#include "common.h"

#include <immintrin.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define ALWAYS_INLINE static inline __attribute__((always_inline))

/* ---- vector layer: 16 x float32 --------------------------------------------------------- */
typedef __m512 vf;
typedef __mmask16 vmask;
#define VW 16

ALWAYS_INLINE vf vld(const float *p) {
    return _mm512_loadu_ps(p);
}
ALWAYS_INLINE void vst(float *p, vf v) {
    _mm512_storeu_ps(p, v);
}
ALWAYS_INLINE vf vset1(float a) {
    return _mm512_set1_ps(a);
}
ALWAYS_INLINE vf vzero(void) {
    return _mm512_setzero_ps();
}
ALWAYS_INLINE vf vfma(vf a, vf b, vf c) {
    return _mm512_fmadd_ps(a, b, c);
}
ALWAYS_INLINE vf vmul(vf a, vf b) {
    return _mm512_mul_ps(a, b);
}
ALWAYS_INLINE vf vadd(vf a, vf b) {
    return _mm512_add_ps(a, b);
}
ALWAYS_INLINE vf vsub(vf a, vf b) {
    return _mm512_sub_ps(a, b);
}
ALWAYS_INLINE vf vmax(vf a, vf b) {
    return _mm512_max_ps(a, b);
}
ALWAYS_INLINE vf vdiv(vf a, vf b) {
    return _mm512_div_ps(a, b);
}
/* min/max return the second operand when a lane is NaN (x86 semantics; vexp relies on it) */
ALWAYS_INLINE vf vmin(vf a, vf b) {
    return _mm512_min_ps(a, b);
}
ALWAYS_INLINE vf vabs(vf a) {
    return _mm512_abs_ps(a);
}
/* a*b - c and c - a*b, one rounding */
ALWAYS_INLINE vf vfms(vf a, vf b, vf c) {
    return _mm512_fmsub_ps(a, b, c);
}
ALWAYS_INLINE vf vfnma(vf a, vf b, vf c) {
    return _mm512_fnmadd_ps(a, b, c);
}
/* compares (false on NaN) and select */
typedef __mmask16 vbool;
ALWAYS_INLINE vbool vlt(vf a, vf b) {
    return _mm512_cmp_ps_mask(a, b, _CMP_LT_OQ);
}
ALWAYS_INLINE vbool vgt(vf a, vf b) {
    return _mm512_cmp_ps_mask(a, b, _CMP_GT_OQ);
}
ALWAYS_INLINE vf vsel(vbool m, vf a, vf b) { /* m ? a : b */
    return _mm512_mask_blend_ps(m, b, a);
}
ALWAYS_INLINE vf vkeep(vf v, vmask m) { /* lanes outside m set to 0 */
    return _mm512_maskz_mov_ps(m, v);
}
ALWAYS_INLINE float vsum(vf v) {
    return _mm512_reduce_add_ps(v);
}
ALWAYS_INLINE float vhmax(vf v) {
    return _mm512_reduce_max_ps(v);
}
/* mask of the first n lanes, 0 <= n <= VW */
ALWAYS_INLINE vmask vmask_n(int n) {
    return (vmask)((1u << n) - 1u);
}
/* masked-off lanes read as 0 and are never touched in memory */
ALWAYS_INLINE vf vld_m(const float *p, vmask m) {
    return _mm512_maskz_loadu_ps(m, p);
}
ALWAYS_INLINE void vst_m(float *p, vf v, vmask m) {
    _mm512_mask_storeu_ps(p, m, v);
}
/* transpose the 16 x 16 block r[i][j] in place (r[j][i] afterwards): pairs unpacked within
 * 128-bit lanes, 64-bit pairs shuffled, then two rounds of 128-bit lane shuffles */
ALWAYS_INLINE void vtrans(vf r[VW]) {
    vf a[16], b[16];
    for (int i = 0; i < 16; i += 2) {
        a[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
        a[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
    }
    /* b[4g + c], 128-bit lane L: rows 4g..4g+3 of column 4L + c */
    for (int g = 0; g < 16; g += 4) {
        b[g] = _mm512_shuffle_ps(a[g], a[g + 2], 0x44);
        b[g + 1] = _mm512_shuffle_ps(a[g], a[g + 2], 0xEE);
        b[g + 2] = _mm512_shuffle_ps(a[g + 1], a[g + 3], 0x44);
        b[g + 3] = _mm512_shuffle_ps(a[g + 1], a[g + 3], 0xEE);
    }
    for (int c = 0; c < 4; c++) {
        vf c0 = _mm512_shuffle_f32x4(b[c], b[4 + c], 0x88);
        vf c1 = _mm512_shuffle_f32x4(b[c], b[4 + c], 0xDD);
        vf c2 = _mm512_shuffle_f32x4(b[8 + c], b[12 + c], 0x88);
        vf c3 = _mm512_shuffle_f32x4(b[8 + c], b[12 + c], 0xDD);
        r[c] = _mm512_shuffle_f32x4(c0, c2, 0x88);
        r[4 + c] = _mm512_shuffle_f32x4(c1, c3, 0x88);
        r[8 + c] = _mm512_shuffle_f32x4(c0, c2, 0xDD);
        r[12 + c] = _mm512_shuffle_f32x4(c1, c3, 0xDD);
    }
}
/* lane j of the result = the sum of a[j]'s 16 lanes: halves, then 128-bit quarters, then pairs
 * of lanes folded together (15 adds, 30 shuffles). The tree leaves the sums in the lane order
 * 0 2 1 3 8 10 9 11 4 6 5 7 12 14 13 15, a permutation that is its own inverse, so reading a[]
 * in that order puts them in place. */
ALWAYS_INLINE vf vsum_lanes(const vf a[VW]) {
    static const int o[16] = {0, 2, 1, 3, 8, 10, 9, 11, 4, 6, 5, 7, 12, 14, 13, 15};
    vf b[8], c[4], d[2];
    for (int j = 0; j < 8; j++)
        b[j] = _mm512_add_ps(_mm512_shuffle_f32x4(a[o[j]], a[o[j + 8]], 0x44),
                             _mm512_shuffle_f32x4(a[o[j]], a[o[j + 8]], 0xEE));
    for (int j = 0; j < 4; j++)
        c[j] = _mm512_add_ps(_mm512_shuffle_f32x4(b[j], b[j + 4], 0x88),
                             _mm512_shuffle_f32x4(b[j], b[j + 4], 0xDD));
    for (int j = 0; j < 2; j++)
        d[j] = _mm512_add_ps(_mm512_unpacklo_ps(c[j], c[j + 2]), _mm512_unpackhi_ps(c[j], c[j + 2]));
    __m512d lo = _mm512_unpacklo_pd(_mm512_castps_pd(d[0]), _mm512_castps_pd(d[1]));
    __m512d hi = _mm512_unpackhi_pd(_mm512_castps_pd(d[0]), _mm512_castps_pd(d[1]));
    return _mm512_add_ps(_mm512_castpd_ps(lo), _mm512_castpd_ps(hi));
}
/* 16 bf16 -> f32: zero-extend to 32 bits and shift into the high half */
ALWAYS_INLINE vf vld_bf16(const uint16_t *p) {
    __m256i h = _mm256_loadu_si256((const __m256i *)p);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
ALWAYS_INLINE vf vld_f16(const uint16_t *p) {
    return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p));
}
ALWAYS_INLINE float f16s(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    return _cvtsh_ss(h);
}
#define QV (QVL_QBLOCK / VW) /* vectors per quant block */
/* the 32 int8 of a Q8_0 block (after its scale) as unscaled floats */
ALWAYS_INLINE void q8_widen(const uint8_t *blk, vf out[QV]) {
    __m128i a = _mm_loadu_si128((const __m128i *)(blk + 2));
    __m128i b = _mm_loadu_si128((const __m128i *)(blk + 18));
    out[0] = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(a));
    out[1] = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(b));
}
/* the 32 nibbles of a Q4_0 block as unscaled floats (nibble - 8); low nibbles first */
ALWAYS_INLINE void q4_widen(const uint8_t *blk, vf out[QV]) {
    __m128i q = _mm_loadu_si128((const __m128i *)(blk + 2));
    __m128i m4 = _mm_set1_epi8(15), e8 = _mm_set1_epi8(8);
    __m128i lo = _mm_sub_epi8(_mm_and_si128(q, m4), e8);
    __m128i hi = _mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(q, 4), m4), e8);
    out[0] = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(lo));
    out[1] = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(hi));
}
/* e^x for x <= 88.7; lanes below -87.3 (including -inf) give exactly 0. Cephes-style range
 * reduction x = n ln2 + r, |r| <= ln2/2, degree-6 polynomial, 2^n by scalef. */
ALWAYS_INLINE vf vexp(vf x) {
    __mmask16 live = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-87.3f), _CMP_GE_OQ);
    x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.5f)), _mm512_set1_ps(88.7f));
    vf n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    vf r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    vf p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    vf r2 = _mm512_mul_ps(r, r);
    p = _mm512_fmadd_ps(p, r2, _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    return _mm512_maskz_scalef_ps(live, p, n);
}

/* tile sizes of the kernel body (simd_body.h) */
#define GM_MR  6   /* activation rows per GEMM micro-tile */
#define GM_NV  4   /* column vectors per GEMM micro-tile */
#define GM_KB  128 /* k per packed panel */
#define AT_QT  6   /* queries per attention tile (score and P.V accumulators in registers) */
#define AT_KB  64  /* keys per attention block (multiple of VW) */
#define AT_PVN 4   /* head-dim vectors per P.V pass */

#include "simd_body.h"

/* ---- int8 dot products ---------------------------------------------------------------------
 * t (int32 lanes) += the dot of each 4-byte group of unsigned weight bytes u with signed
 * activation bytes s:
 *   VNNI (vpdpbusd, emitted with inline asm so this file needs no extra ISA flag; used only when
 *   the CPU reports avx512vnni): Q8_0 u = w + 128, Q4_0 u = nibble; the caller subtracts the
 *   offset (128 or 8) times the activation block's sum by starting t there.
 *   AVX512BW (vpmaddubsw + vpmaddwd): Q4_0 as above (15 * 127 * 2 fits int16); Q8_0 with
 *   u = |w| and s = x with w's sign (no int16 saturation, no offset).
 * The integer dots are exact. */
ALWAYS_INLINE __m512i i8_dot(const bool Q8, const bool VNNI, __m512i t, __m512i u, __m512i s) {
    if (VNNI) {
        __asm__("vpdpbusd %2, %1, %0" : "+v"(t) : "v"(u), "v"(s));
        return t;
    }
    if (Q8) { /* sign of w moved onto s */
        __mmask64 neg = _mm512_movepi8_mask(u);
        s = _mm512_mask_sub_epi8(s, neg, _mm512_setzero_si512(), s);
        u = _mm512_abs_epi8(u);
    }
    __m512i p = _mm512_madd_epi16(_mm512_maddubs_epi16(u, s), _mm512_set1_epi16(1));
    return _mm512_add_epi32(t, p);
}

/* i8_dot with s = the 4 activation bytes at x4 in every lane; with VNNI the broadcast is the
 * instruction's memory operand ({1to16}), one instruction instead of a load and a dot */
ALWAYS_INLINE __m512i i8_dot_x4(const bool Q8, const bool VNNI, __m512i t, __m512i u,
                                const int8_t *x4) {
    if (VNNI) {
        typedef int32_t __attribute__((may_alias)) i32_any; /* the bytes are int8_t */
        __asm__("vpdpbusd %2%{1to16%}, %1, %0" : "+v"(t) : "v"(u), "m"(*(const i32_any *)x4));
        return t;
    }
    int32_t xv;
    memcpy(&xv, x4, 4);
    return i8_dot(Q8, VNNI, t, u, _mm512_set1_epi32(xv));
}

/* ---- int8 matmul on interleaved Q8_0X16 / Q4_0X16 weights ---------------------------------------
 * One 64-byte load holds 4 quant bytes of each of 16 rows (dtype.h), so a 32-bit activation group
 * broadcast to all lanes is dotted with 16 rows at once (vpdpbusd, or vpmaddubsw + vpmaddwd
 * without VNNI): each lane sums its row's block, no horizontal sums, no shuffles; the 16 scales of
 * a block arrive as one 32-byte load. Per block and row group: int32 sums (started at the offset
 * correction -off * sum(activation block), off = 128 for VNNI Q8 (w + 128 unsigned), 8 for Q4,
 * 0 for BW Q8), converted and scaled by d_w * d_x into one float accumulator per row. The
 * weights stream sequentially, one group after the other. Each activation row is rounded once
 * per call to int8 blocks of 32 with a float scale (dx = amax / 127, q = round(x / dx)): the
 * only extra error against float activations, at most dx / 2 = amax / 254 per element (so per
 * output at most the sum over blocks of amax_b / 254 * sum |w| in the block), plus float32
 * accumulation. More rows (prefill, the
 * vision tower with quantised weights) run the same kernel 8 activation rows at a time over
 * blocks of groups that stay in L2: an int8 GEMM (vpdpbusd does 4x the multiply-adds of an
 * FMA), with every output computed the same way whatever m or the column slice. */

static int use_vnni(void);

/* quantised activation rows: row i at q + i * k (int8), d + i * nb (scales dx), c + i * nb
 * (offset corrections) */
typedef struct {
    int8_t *q;
    float *d;
    int32_t *c;
    int64_t k, nb;
} mvx_act;

static void mvx_quant_row(const float *x, int64_t k, int off, int8_t *q, float *d, int32_t *c) {
    for (int64_t ib = 0; ib < k / QVL_QBLOCK; ib++) {
        __m512 v0 = _mm512_loadu_ps(x + ib * QVL_QBLOCK);
        __m512 v1 = _mm512_loadu_ps(x + ib * QVL_QBLOCK + 16);
        float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1)));
        float id = amax > 0.0f ? 127.0f / amax : 0.0f;
        __m128i b0 = _mm512_cvtsepi32_epi8(_mm512_cvtps_epi32(_mm512_mul_ps(v0, _mm512_set1_ps(id))));
        __m128i b1 = _mm512_cvtsepi32_epi8(_mm512_cvtps_epi32(_mm512_mul_ps(v1, _mm512_set1_ps(id))));
        _mm_storeu_si128((__m128i *)(q + ib * QVL_QBLOCK), b0);
        _mm_storeu_si128((__m128i *)(q + ib * QVL_QBLOCK + 16), b1);
        __m512i s = _mm512_add_epi32(_mm512_cvtepi8_epi32(b0), _mm512_cvtepi8_epi32(b1));
        d[ib] = amax / 127.0f;
        c[ib] = -off * _mm512_reduce_add_epi32(s);
    }
}

/* Decode on Q4 groups prefetches the 288-byte block MVX_Q4_PF bytes ahead (all five of its lines)
 * into L1. Q4 does twice the arithmetic of Q8 per byte, and when the memory is fast the demand
 * loads and the hardware prefetchers alone kept too few lines in flight. Measured alternating
 * with and without it token by token in one process (2B shapes, 28 layers, 100 tokens each):
 * at 67-70 GB/s, +6 % median over 60 rounds (+1 to +9 %), where one line per block gave +0.4 %,
 * two +0 %, the T1 hint +2 %, and 2 / 8 / 16 KiB ahead +1 / +2 / 0 %, 1 KiB -4 %; at 45-48
 * GB/s, -0.2 to -0.6 %. In the 2B model, 12.2-12.4 against 12.8-13.0 ms a token when fast,
 * 1-2 % slower when slow (2B and 4B). Q8 decode was 5 % slower with it (2-8 KiB). */
#define MVX_Q4_PF 4096

/* One group of 16 weight rows (g at its first block) x MR (<= 8) activation rows starting at
 * row i0 of a, over all blocks; stores the 16 x MR outputs (+ bias) under mask mk. */
ALWAYS_INLINE void mvx_group(const int MR, const bool Q8, const bool VNNI, const uint8_t *g,
                             const mvx_act *a, int64_t i0, float *y, int64_t ldy, __mmask16 mk,
                             __m512 bv) {
    const size_t gs = (Q8 ? 34 : 18) * QVL_X16; /* bytes per block of the group */
    const int NC = Q8 ? 8 : 4;                  /* 64-byte chunks per block */
    __m512 acc[8];
    for (int i = 0; i < MR; i++)
        acc[i] = _mm512_setzero_ps();
    const int8_t *xq0 = a->q + i0 * a->k;
    for (int64_t ib = 0; ib < a->nb; ib++, g += gs) {
        if (!Q8 && MR == 1) /* decode, Q4: the block 4 KiB ahead (see MVX_Q4_PF) */
            for (int l = 0; l < 5; l++)
                _mm_prefetch((const char *)(g + MVX_Q4_PF + 64 * l), _MM_HINT_T0);
        __m512 dw = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)g));
        __m512i t0[8], t1[8];
        for (int i = 0; i < MR; i++) {
            t0[i] = _mm512_set1_epi32(a->c[(i0 + i) * a->nb + ib]);
            t1[i] = _mm512_setzero_si512();
        }
        const int8_t *xb = xq0 + ib * QVL_QBLOCK;
        for (int t = 0; t < NC; t++) {
            __m512i w = _mm512_loadu_si512((const void *)(g + 2 * QVL_X16 + 64 * t));
            if (Q8) {
                __m512i u = VNNI ? _mm512_xor_si512(w, _mm512_set1_epi8((char)0x80)) : w;
                for (int i = 0; i < MR; i++) {
                    if (t & 1)
                        t1[i] = i8_dot_x4(true, VNNI, t1[i], u, xb + i * a->k + 4 * t);
                    else
                        t0[i] = i8_dot_x4(true, VNNI, t0[i], u, xb + i * a->k + 4 * t);
                }
            } else { /* quant byte e: element e (low nibble) and e + 16 (high nibble); with
                      * VNNI the high nibble stays in place (16 x its value: t1 is shifted back
                      * once per block, exactly, the sums being multiples of 16), without VNNI
                      * it is moved down (vpmaddubsw's int16 pairs would saturate) */
                __m512i lo = _mm512_and_si512(w, _mm512_set1_epi8(15));
                __m512i hi = VNNI ? _mm512_and_si512(w, _mm512_set1_epi8((char)0xF0))
                                  : _mm512_and_si512(_mm512_srli_epi16(w, 4), _mm512_set1_epi8(15));
                for (int i = 0; i < MR; i++) {
                    t0[i] = i8_dot_x4(false, VNNI, t0[i], lo, xb + i * a->k + 4 * t);
                    t1[i] = i8_dot_x4(false, VNNI, t1[i], hi, xb + i * a->k + 16 + 4 * t);
                }
            }
        }
        if (!Q8 && VNNI)
            for (int i = 0; i < MR; i++)
                t1[i] = _mm512_srai_epi32(t1[i], 4);
        for (int i = 0; i < MR; i++)
            acc[i] = _mm512_fmadd_ps(
                _mm512_cvtepi32_ps(_mm512_add_epi32(t0[i], t1[i])),
                _mm512_mul_ps(dw, _mm512_set1_ps(a->d[(i0 + i) * a->nb + ib])), acc[i]);
    }
    for (int i = 0; i < MR; i++)
        _mm512_mask_storeu_ps(y + i * ldy, mk, _mm512_add_ps(acc[i], bv));
}

/* Output columns [j0, j1) for all a's rows: groups in blocks that stay in L2 (MVX_L2 bytes),
 * each block passed over by the activation rows 8 at a time (decode: m <= 4, one pass, the
 * weights streamed once). The groups are one sequential stream, which the hardware prefetchers
 * follow; only Q4 decode adds software prefetch (MVX_Q4_PF: 1 KiB ahead was 4-15 % slower, 4 KiB
 * ahead faster in quiet phases of the memory). */
#define MVX_L2 (384 * 1024)
ALWAYS_INLINE void mvx_cols(const bool Q8, const bool VNNI, float *y, int64_t ldy,
                            const mvx_act *a, int64_t m, const uint8_t *w, const float *b,
                            int64_t j0, int64_t j1) {
    const size_t grp = (size_t)a->nb * (Q8 ? 34 : 18) * QVL_X16;
    const int64_t gblk = m <= 4 ? INT64_MAX : (int64_t)(MVX_L2 / grp > 0 ? MVX_L2 / grp : 1);
    const int64_t g0 = j0 / QVL_X16, g1 = (j1 + QVL_X16 - 1) / QVL_X16;
    for (int64_t gb = g0, ge; gb < g1; gb = ge) {
        ge = g1 - gb <= gblk ? g1 : gb + gblk;
        for (int64_t i0 = 0; i0 < m; i0 += 8) {
            int mr = m - i0 < 8 ? (int)(m - i0) : 8;
            for (int64_t gi = gb; gi < ge; gi++) {
                int64_t jg = gi * QVL_X16;
                int64_t lo = jg < j0 ? j0 - jg : 0, hi = j1 - jg < QVL_X16 ? j1 - jg : QVL_X16;
                __mmask16 mk = (__mmask16)(((1u << hi) - 1u) & ~((1u << lo) - 1u));
                __m512 bv = b ? _mm512_maskz_loadu_ps(mk, b + jg) : _mm512_setzero_ps();
                const uint8_t *g = w + (size_t)gi * grp;
                float *yy = y + i0 * ldy + jg;
                switch (mr) {
                case 1: mvx_group(1, Q8, VNNI, g, a, i0, yy, ldy, mk, bv); break;
                case 2: mvx_group(2, Q8, VNNI, g, a, i0, yy, ldy, mk, bv); break;
                case 3: mvx_group(3, Q8, VNNI, g, a, i0, yy, ldy, mk, bv); break;
                case 4: mvx_group(4, Q8, VNNI, g, a, i0, yy, ldy, mk, bv); break;
                case 5: mvx_group(5, Q8, VNNI, g, a, i0, yy, ldy, mk, bv); break;
                case 6: mvx_group(6, Q8, VNNI, g, a, i0, yy, ldy, mk, bv); break;
                case 7: mvx_group(7, Q8, VNNI, g, a, i0, yy, ldy, mk, bv); break;
                default: mvx_group(8, Q8, VNNI, g, a, i0, yy, ldy, mk, bv); break;
                }
            }
        }
    }
}

#define MVX_FN(name, Q8, VNNI)                                                                   \
    static void name(float *y, int64_t ldy, const mvx_act *a, int64_t m, const uint8_t *w,      \
                     const float *b, int64_t j0, int64_t j1) {                                   \
        mvx_cols(Q8, VNNI, y, ldy, a, m, w, b, j0, j1);                                          \
    }
MVX_FN(mvx_q8_vnni, true, true)
MVX_FN(mvx_q8_bw, true, false)
MVX_FN(mvx_q4_vnni, false, true)
MVX_FN(mvx_q4_bw, false, false)

/* Interleaved Q types, any m: quantise the activation rows (on the stack for decode, on the
 * heap for more rows) and run the group kernel. False only when the heap buffer cannot be had
 * (the caller then takes the float path). */
static bool mvx_matmul(float *y, int64_t ldy, const float *x, int64_t ldx, int64_t m, int64_t k,
                       const void *w, qvl_dtype wt, const float *b, int64_t j0, int64_t j1) {
    enum { SK = 4 * 8192 }; /* per thread: 4 rows of k <= 8192 */
    /* the last small call's rounded activations, reused by the next call on the same rows
     * (qvl_kern_set_act_id: the other chunks of a matrix, the other matrices of one input) */
    static _Thread_local struct {
        uint64_t id;
        const float *x;
        int64_t ldx, m, k;
        int off;
        _Alignas(64) int8_t q[SK];
        float d[SK / QVL_QBLOCK];
        int32_t c[SK / QVL_QBLOCK];
    } memo;
    const int64_t nb = k / QVL_QBLOCK;
    mvx_act a = {memo.q, memo.d, memo.c, k, nb};
    bool vnni = use_vnni(), q8 = wt == QVL_DT_Q8_0X16;
    int off = q8 ? (vnni ? 128 : 0) : 8;
    uint64_t id = qvl_kern_act_id();
    bool reuse = m * k <= SK && id != 0 && memo.id == id && memo.x == x && memo.ldx == ldx &&
                 memo.m == m && memo.k == k && memo.off == off;
    void *heap = NULL;
    if (m * k > SK) {
        size_t n = 0;
        if (!qvl_size_mul((size_t)m, (size_t)k + (size_t)nb * 8, &n) || !(heap = qvl_malloc(n)))
            return false;
        a.d = heap;
        a.c = (int32_t *)(a.d + m * nb);
        a.q = (int8_t *)(a.c + m * nb);
    }
    if (!reuse)
        for (int64_t i = 0; i < m; i++)
            mvx_quant_row(x + i * ldx, k, off, a.q + i * k, a.d + i * nb, a.c + i * nb);
    if (!heap) {
        memo.id = id;
        memo.x = x;
        memo.ldx = ldx;
        memo.m = m;
        memo.k = k;
        memo.off = off;
    }
    if (q8)
        (vnni ? mvx_q8_vnni : mvx_q8_bw)(y, ldy, &a, m, (const uint8_t *)w, b, j0, j1);
    else
        (vnni ? mvx_q4_vnni : mvx_q4_bw)(y, ldy, &a, m, (const uint8_t *)w, b, j0, j1);
    qvl_free(heap);
    return true;
}

/* CPU features of the optional paths, decided once: bit 0, the int8 path may use vpdpbusd (the
 * CPU reports avx512vnni and QVL_VNNI is not "0", which forces the AVX512BW dot for tests);
 * bit 1, vdpbf16ps (avx512bf16). */
static int cpu_features(void) {
    static int cached = -1;
    int v = __atomic_load_n(&cached, __ATOMIC_RELAXED);
    if (v < 0) {
        __builtin_cpu_init();
        const char *e = getenv("QVL_VNNI");
        v = (__builtin_cpu_supports("avx512vnni") && !(e && !strcmp(e, "0")) ? 1 : 0) |
            (__builtin_cpu_supports("avx512bf16") ? 2 : 0);
        __atomic_store_n(&cached, v, __ATOMIC_RELAXED);
    }
    return v;
}

static int use_vnni(void) {
    return cpu_features() & 1;
}


/* ---- bf16 decode matvec: m <= 4, k a multiple of 32 --------------------------------------------
 * The generic float path widens 16 bf16 weights per vector with a zero-extending shuffle. Here
 * each 64-byte load of 32 weights is split without shuffles: shifting each 32-bit lane left by
 * 16 gives the even-indexed weights as floats, masking off the low half gives the odd-indexed
 * ones, and the activations are split the same way (even and odd elements), so two FMAs take
 * 32 weights. Float32 throughout; only the summation order differs from the generic path.
 *
 * One activation row (decode) walks the weight rows one after the other: a thread's rows are one
 * contiguous range of the mapping, so it reads a single sequential stream, prefetched MVB_PF
 * bytes ahead. Reading eight rows side by side (eight streams per thread, each a 4-12 KiB row)
 * streamed 10-15 % slower in bench_kern decode and fell much further behind when the memory
 * system was busy: 2B bf16 decode 9.0-9.6 against 13.6-14.0 tok/s in the same process. The
 * activation row is split once per call (per chunk of rows), into a per-thread buffer. Two to
 * four activation rows keep the side-by-side pass, which reuses each weight load for every row. */

/* prefetch distance along the weight stream, bytes (4-32 KiB measured alike; 1-2 KiB slower) */
#define MVB_PF 8192
/* activation length the per-thread split buffer takes; longer rows use the heap */
#define MVB_XK 16384
static const int32_t mvb_even[16] = {0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30};
static const int32_t mvb_odd[16] = {1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31};

/* xe[i] = x[2i], xo[i] = x[2i + 1], i < k / 2 */
static void mvb_split(const float *x, int64_t k, float *xe, float *xo) {
    const __m512i ie = _mm512_loadu_si512(mvb_even), io = _mm512_loadu_si512(mvb_odd);
    for (int64_t p = 0; p < k; p += 32) {
        __m512 x0 = _mm512_loadu_ps(x + p), x1 = _mm512_loadu_ps(x + p + 16);
        _mm512_storeu_ps(xe + p / 2, _mm512_permutex2var_ps(x0, ie, x1));
        _mm512_storeu_ps(xo + p / 2, _mm512_permutex2var_ps(x0, io, x1));
    }
}

/* 32 weights (one 64-byte line) times the split activations at element 32 * i */
#define MVB_LINE(wv, e, o, i)                                                                     \
    do {                                                                                      \
        e = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_slli_epi32(wv, 16)),                  \
                            _mm512_loadu_ps(xe + 16 * (i)), e);                               \
        o = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_and_si512(wv, hi)),                    \
                            _mm512_loadu_ps(xo + 16 * (i)), o);                               \
    } while (0)

/* Rows whose start is not on a cache line. A safetensors file's tensors start wherever its
 * header (any multiple of 8 bytes) puts them, and 64-byte loads that straddle two lines made
 * bench_kern decode 20-25 % slower (2B shapes, 55-57 against 71-73 GB/s; the model file's
 * tensors all sit 24 bytes past a line). So each line of weights is put together from the two
 * aligned lines it straddles (vpermt2d, or vpermt2w when the offset d is not a multiple of 4),
 * and each aligned line is loaded once: the last one of a row is the first of the next. The
 * range's first and last aligned lines are loaded masked, so no byte outside the rows
 * [j0, j1) is read. Lines go to the accumulators as in mvb_rows, so the results are the
 * same bits whatever the offset. */
ALWAYS_INLINE void mvb_rows_shift(const bool W32, float *y, const float *xe, const float *xo,
                                  int64_t k, const uint8_t *w, const float *b, int64_t j0,
                                  int64_t j1, unsigned d) {
    const __m512i hi = _mm512_set1_epi32((int)0xFFFF0000u);
    _Alignas(64) int32_t ix32[16]; /* W32: dword t of a line is dword t + d / 4 of the pair */
    _Alignas(64) int16_t ix16[32]; /* else word t is word t + d / 2 */
    for (int t = 0; t < 16; t++)
        ix32[t] = t + (int)d / 4;
    for (int t = 0; t < 32; t++)
        ix16[t] = (int16_t)(t + (int)d / 2);
    const __m512i idx = _mm512_load_si512(W32 ? (const void *)ix32 : (const void *)ix16);
#define MVB_COMB(lo, hi_)                                                                         \
    (W32 ? _mm512_permutex2var_epi32(lo, idx, hi_) : _mm512_permutex2var_epi16(lo, idx, hi_))
    const size_t rb = (size_t)k * 2;
    const int64_t nl = k / 32; /* lines per row */
    const uint8_t *A = w + (size_t)j0 * rb - d;
    __m512i cur = _mm512_maskz_loadu_epi8(~((1ull << d) - 1), A);
    for (int64_t j = j0; j < j1; j++, A += rb) {
        __m512 e0 = _mm512_setzero_ps(), o0 = e0, e1 = e0, o1 = e0;
        int64_t i = 0;
        for (; i + 2 < nl; i += 2) {
            _mm_prefetch((const char *)(A + 64 * i + MVB_PF), _MM_HINT_T0);
            _mm_prefetch((const char *)(A + 64 * i + 64 + MVB_PF), _MM_HINT_T0);
            __m512i n1 = _mm512_load_si512((const void *)(A + 64 * i + 64));
            __m512i n2 = _mm512_load_si512((const void *)(A + 64 * i + 128));
            __m512i w0 = MVB_COMB(cur, n1), w1 = MVB_COMB(n1, n2);
            cur = n2;
            MVB_LINE(w0, e0, o0, i);
            MVB_LINE(w1, e1, o1, i + 1);
        }
        /* one or two lines left; the last one's upper part is the next row's first line */
        __m512i nx = j + 1 < j1 ? _mm512_load_si512((const void *)(A + 64 * nl))
                                : _mm512_maskz_loadu_epi8((1ull << d) - 1, A + 64 * nl);
        if (nl - i == 2) {
            __m512i n1 = _mm512_load_si512((const void *)(A + 64 * i + 64));
            __m512i w0 = MVB_COMB(cur, n1), w1 = MVB_COMB(n1, nx);
            MVB_LINE(w0, e0, o0, i);
            MVB_LINE(w1, e1, o1, i + 1);
        } else {
            __m512i w0 = MVB_COMB(cur, nx);
            MVB_LINE(w0, e0, o0, i);
        }
        cur = nx;
        __m512 s = _mm512_add_ps(_mm512_add_ps(e0, o0), _mm512_add_ps(e1, o1));
        y[j] = _mm512_reduce_add_ps(s) + (b ? b[j] : 0.0f);
    }
#undef MVB_COMB
}

/* y[j] = row j . x (+ b[j]) for j in [j0, j1): one row at a time, 64 weights per step */
static bool mvb_rows(float *y, const float *x, int64_t k, const uint8_t *w, const float *b,
                     int64_t j0, int64_t j1) {
    static _Thread_local _Alignas(64) float xs[MVB_XK];
    float *xe = xs, *heap = NULL;
    if (k > MVB_XK) {
        heap = qvl_malloc((size_t)k * sizeof(float));
        if (!heap)
            return false;
        xe = heap;
    }
    float *xo = xe + k / 2;
    mvb_split(x, k, xe, xo);
    const unsigned d = (unsigned)((uintptr_t)w % 64);
    if (d % 4 == 0 && d)
        mvb_rows_shift(true, y, xe, xo, k, w, b, j0, j1, d);
    else if (d % 2 == 0 && d)
        mvb_rows_shift(false, y, xe, xo, k, w, b, j0, j1, d);
    else { /* on a line, or at an odd address (no 16-bit shift makes the lines): plain loads */
        const __m512i hi = _mm512_set1_epi32((int)0xFFFF0000u);
        const size_t rb = (size_t)k * 2;
        const int64_t nl = k / 32;
        for (int64_t j = j0; j < j1; j++) {
            const uint8_t *r = w + (size_t)j * rb;
            __m512 e0 = _mm512_setzero_ps(), o0 = e0, e1 = e0, o1 = e0;
            int64_t i = 0;
            for (; i + 1 < nl; i += 2) {
                _mm_prefetch((const char *)(r + 64 * i + MVB_PF), _MM_HINT_T0);
                _mm_prefetch((const char *)(r + 64 * i + 64 + MVB_PF), _MM_HINT_T0);
                __m512i w0 = _mm512_loadu_si512((const void *)(r + 64 * i));
                __m512i w1 = _mm512_loadu_si512((const void *)(r + 64 * i + 64));
                MVB_LINE(w0, e0, o0, i);
                MVB_LINE(w1, e1, o1, i + 1);
            }
            if (i < nl) { /* k = 64 n + 32 */
                __m512i w0 = _mm512_loadu_si512((const void *)(r + 64 * i));
                MVB_LINE(w0, e0, o0, i);
            }
            __m512 s = _mm512_add_ps(_mm512_add_ps(e0, o0), _mm512_add_ps(e1, o1));
            y[j] = _mm512_reduce_add_ps(s) + (b ? b[j] : 0.0f);
        }
    }
    qvl_free(heap);
    return true;
}
#undef MVB_LINE

/* NR weight rows x MR activation rows per pass (MR = 2..4), two accumulators per pair */
ALWAYS_INLINE void mvb_pass(const int NR, const int MR, const uint8_t *const *rows, int nr,
                            const float *const *xr, int ni, int64_t k, float *y, int64_t ldy,
                            const float *b) {
    const __m512i ie = _mm512_loadu_si512(mvb_even), io = _mm512_loadu_si512(mvb_odd);
    const __m512i hi = _mm512_set1_epi32((int)0xFFFF0000u);
    __m512 ae[4][4], ao[4][4];
    for (int r = 0; r < NR; r++)
        for (int i = 0; i < MR; i++)
            ae[r][i] = ao[r][i] = _mm512_setzero_ps();
    for (int64_t p = 0; p < k; p += 32) {
        __m512 xe[4], xo[4];
        for (int i = 0; i < MR; i++) {
            __m512 x0 = _mm512_loadu_ps(xr[i] + p), x1 = _mm512_loadu_ps(xr[i] + p + 16);
            xe[i] = _mm512_permutex2var_ps(x0, ie, x1);
            xo[i] = _mm512_permutex2var_ps(x0, io, x1);
        }
        for (int r = 0; r < NR; r++) {
            _mm_prefetch((const char *)(rows[r] + p * 2 + 1024), _MM_HINT_T0);
            __m512i w = _mm512_loadu_si512((const void *)(rows[r] + p * 2));
            __m512 we = _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
            __m512 wo = _mm512_castsi512_ps(_mm512_and_si512(w, hi));
            for (int i = 0; i < MR; i++) {
                ae[r][i] = _mm512_fmadd_ps(we, xe[i], ae[r][i]);
                ao[r][i] = _mm512_fmadd_ps(wo, xo[i], ao[r][i]);
            }
        }
    }
    for (int r = 0; r < NR && r < nr; r++)
        for (int i = 0; i < MR && i < ni; i++)
            y[i * ldy + r] =
                _mm512_reduce_add_ps(_mm512_add_ps(ae[r][i], ao[r][i])) + (b ? b[r] : 0.0f);
}

/* false only when m = 1 needs a heap buffer that cannot be had (the caller then takes the
 * generic float path) */
static bool mvb_cols(float *y, int64_t ldy, const float *x, int64_t ldx, int m, int64_t k,
                     const uint8_t *w, const float *b, int64_t j0, int64_t j1) {
    if (m == 1)
        return mvb_rows(y, x, k, w, b, j0, j1);
    const int NR = 4;
    const float *xr[4];
    for (int i = 0; i < 4; i++)
        xr[i] = x + (i < m ? i : m - 1) * ldx;
    size_t rb = (size_t)k * 2;
    for (int64_t j = j0; j < j1; j += NR) {
        int nr = j1 - j < NR ? (int)(j1 - j) : NR;
        const uint8_t *rows[4];
        for (int r = 0; r < NR; r++)
            rows[r] = w + (size_t)(j + (r < nr ? r : nr - 1)) * rb;
        float *yy = y + j;
        const float *bb = b ? b + j : NULL;
        if (m == 2)
            mvb_pass(4, 2, rows, nr, xr, 2, k, yy, ldy, bb);
        else
            mvb_pass(4, 4, rows, nr, xr, m, k, yy, ldy, bb);
    }
    return true;
}


/* ---- bf16 dot-product GEMM (QVL_DT_BF16D, m > 4; CPUs with AVX512_BF16) -------------------------
 * vdpbf16ps multiplies pairs of bf16 and adds both products to a float lane: 32 multiply-adds per
 * instruction, twice an FMA's. The activations are rounded to bf16 once per call (nearest even,
 * the same values ref uses) and kept as pairs (p, p+1) in 32-bit words; the weights are packed
 * per panel as pairs too (a 16 x 16 transpose of 32-bit words: no widening at all). Blocking and
 * the micro-tile follow the float GEMM (GM_MR rows x GM_NV vectors, k ranges of GM_KB added in
 * a fixed order), so results do not depend on the column slice. Products of bf16 values are
 * exact in float; only the summation order differs from ref. */
#define BD_KB GM_KB /* k per packed panel (even) */

/* pack columns [jb, jb + nj) (rest zero) over k range [p0, p0 + kb) as pairs:
 * panel[pp * GM_NR + c] = bf16 pair (p0 + 2pp, p0 + 2pp + 1) of column c */
__attribute__((target("avx512bf16"))) static void bd_pack(const uint8_t *w, int64_t k,
                                                            int64_t jb, int nj, int64_t p0,
                                                            int kb, uint32_t *panel) {
    const size_t rb = (size_t)k * 2;
    const int npair = (kb + 1) / 2;
    for (int r0 = 0; r0 < GM_NR; r0 += VW) {
        int live = nj - r0 < 0 ? 0 : nj - r0 > VW ? VW : nj - r0;
        int pp = 0;
        for (; pp + VW <= npair && p0 + 2 * (pp + VW) <= k; pp += VW) {
            vf r[VW];
            for (int i = 0; i < VW; i++)
                r[i] = i < live ? _mm512_loadu_ps((const float *)(w + (size_t)(jb + r0 + i) * rb +
                                                                  (size_t)(p0 + 2 * pp) * 2))
                                : vzero();
            vtrans(r);
            for (int c = 0; c < VW; c++)
                _mm512_storeu_ps((float *)(panel + (pp + c) * GM_NR + r0), r[c]);
        }
        for (; pp < npair; pp++)
            for (int i = 0; i < VW; i++) {
                uint16_t lo = 0, hi = 0;
                int64_t p = p0 + 2 * pp;
                if (i < live) {
                    const uint8_t *row = w + (size_t)(jb + r0 + i) * rb;
                    memcpy(&lo, row + p * 2, 2);
                    if (p + 1 < k && 2 * pp + 1 < kb)
                        memcpy(&hi, row + (p + 1) * 2, 2);
                }
                panel[pp * GM_NR + r0 + i] = (uint32_t)lo | (uint32_t)hi << 16;
            }
    }
}

__attribute__((target("avx512bf16"))) static void bd_tile(const uint32_t *x, int64_t ldx, int ni,
                                                            const uint32_t *panel, int npair,
                                                            float *y, int64_t ldy, int nj,
                                                            bool first, const float *bias) {
    const uint32_t *xr[GM_MR];
    for (int i = 0; i < GM_MR; i++)
        xr[i] = x + (i < ni ? i : ni - 1) * ldx;
    __m512 acc[GM_MR][GM_NV];
    for (int i = 0; i < GM_MR; i++)
        for (int t = 0; t < GM_NV; t++)
            acc[i][t] = _mm512_setzero_ps();
    for (int pp = 0; pp < npair; pp++) {
        __m512bh wv[GM_NV];
        for (int t = 0; t < GM_NV; t++)
            wv[t] = (__m512bh)_mm512_loadu_si512((const void *)(panel + pp * GM_NR + t * VW));
        for (int i = 0; i < GM_MR; i++) {
            __m512bh xb = (__m512bh)_mm512_set1_epi32((int)xr[i][pp]);
            for (int t = 0; t < GM_NV; t++)
                acc[i][t] = _mm512_dpbf16_ps(acc[i][t], xb, wv[t]);
        }
    }
    for (int t = 0; t < GM_NV; t++) {
        int left = nj - t * VW;
        __mmask16 mk = (__mmask16)((1u << (left <= 0 ? 0 : left > VW ? VW : left)) - 1u);
        __m512 bv = bias ? _mm512_maskz_loadu_ps(mk, bias + t * VW) : _mm512_setzero_ps();
        for (int i = 0; i < ni; i++) {
            float *yr = y + i * ldy + t * VW;
            __m512 a = acc[i][t];
            if (!first)
                a = _mm512_add_ps(_mm512_maskz_loadu_ps(mk, yr), a);
            if (bias)
                a = _mm512_add_ps(a, bv);
            _mm512_mask_storeu_ps(yr, mk, a);
        }
    }
}

/* false if the pair buffer cannot be allocated (the caller takes another path) */
__attribute__((target("avx512bf16"))) static bool bd_gemm(float *y, int64_t ldy, const float *x,
                                                           int64_t ldx, int64_t m, int64_t k,
                                                           const uint8_t *w, const float *b,
                                                           int64_t j0, int64_t j1) {
    const int64_t kp = (k + 1) / 2; /* pairs per activation row */
    size_t n = 0;
    uint32_t *xp = qvl_size_mul((size_t)m, (size_t)kp * 4, &n) ? qvl_malloc(n) : NULL;
    uint32_t *wpk = qvl_malloc(sizeof(uint32_t) * GM_NC * (BD_KB / 2));
    if (!xp || !wpk) {
        qvl_free(xp);
        qvl_free(wpk);
        return false;
    }
    for (int64_t i = 0; i < m; i++) {
        const float *xi = x + i * ldx;
        uint32_t *o = xp + i * kp;
        int64_t p = 0;
        for (; p + 32 <= k; p += 32)
            _mm512_storeu_si512((void *)(o + p / 2),
                                (__m512i)_mm512_cvtne2ps_pbh(_mm512_loadu_ps(xi + p + 16),
                                                             _mm512_loadu_ps(xi + p)));
        for (; p < k; p += 2) {
            uint32_t lo = qvl_f32_to_bf16(xi[p]), hi = p + 1 < k ? qvl_f32_to_bf16(xi[p + 1]) : 0;
            o[p / 2] = lo | hi << 16;
        }
    }
    for (int64_t jc = j0; jc < j1; jc += GM_NC) {
        int nc = j1 - jc < GM_NC ? (int)(j1 - jc) : GM_NC;
        int npan = (nc + GM_NR - 1) / GM_NR;
        for (int64_t p0 = 0; p0 < k; p0 += BD_KB) {
            int kb = k - p0 < BD_KB ? (int)(k - p0) : BD_KB;
            int npair = (kb + 1) / 2;
            for (int pan = 0; pan < npan; pan++) {
                int nj = nc - pan * GM_NR < GM_NR ? nc - pan * GM_NR : GM_NR;
                bd_pack(w, k, jc + pan * GM_NR, nj, p0, kb, wpk + pan * (BD_KB / 2 * GM_NR));
            }
            bool first = p0 == 0, last = p0 + kb >= k;
            for (int64_t ic = 0; ic < m; ic += GM_MC) {
                int64_t mc = m - ic < GM_MC ? m - ic : GM_MC;
                for (int pan = 0; pan < npan; pan++) {
                    int64_t jb = jc + pan * GM_NR;
                    int nj = nc - pan * GM_NR < GM_NR ? nc - pan * GM_NR : GM_NR;
                    const float *bias = b && last ? b + jb : NULL;
                    for (int64_t i0 = ic; i0 < ic + mc; i0 += GM_MR) {
                        int ni = ic + mc - i0 < GM_MR ? (int)(ic + mc - i0) : GM_MR;
                        bd_tile(xp + i0 * kp + p0 / 2, kp, ni, wpk + pan * (BD_KB / 2 * GM_NR),
                                npair, y + i0 * ldy + jb, ldy, nj, first, bias);
                    }
                }
            }
        }
    }
    qvl_free(xp);
    qvl_free(wpk);
    return true;
}

static int bd_supported(void) {
    return (cpu_features() >> 1) & 1;
}

/* The table's matmul: interleaved Q types through the int8 kernel, BF16D with more than 4 rows
 * through the bf16 dot-product GEMM, bf16 decode through its matrix-vector kernel; everything
 * else (plain Q8_0 / Q4_0 included, which the model loader no longer makes) through
 * simd_matmul's float path. */
static bool avx512_matmul(float *y, int64_t ldy, const float *x, int64_t ldx, int64_t m,
                          int64_t k, const void *w, qvl_dtype wt, const float *b, int64_t j0,
                          int64_t j1) {
    if (qvl_dtype_is_x16(wt) && m > 0 && k > 0 && k % QVL_QBLOCK == 0 && j1 > j0 &&
        mvx_matmul(y, ldy, x, ldx, m, k, w, wt, b, j0, j1))
        return true;
    if (wt == QVL_DT_BF16D && m > 4 && k > 0 && j1 > j0 && bd_supported() &&
        bd_gemm(y, ldy, x, ldx, m, k, w, b, j0, j1))
        return true;
    if (wt == QVL_DT_BF16D && m <= 4)
        wt = QVL_DT_BF16; /* decode keeps float activations */
    if (wt == QVL_DT_BF16 && m > 0 && m <= 4 && k > 0 && k % 32 == 0 && j1 > j0 &&
        mvb_cols(y, ldy, x, ldx, (int)m, k, w, b, j0, j1))
        return true;
    return simd_matmul(y, ldy, x, ldx, m, k, w, wt, b, j0, j1);
}


/* ---- load-time quantisation: the bytes of qvl_quantize_row_ref, 32 values per step --------------
 * Same arithmetic: amax over the block ignoring NaNs (lane-wise max against a running 0), the
 * f16 scale rounded to nearest even by the F16C conversion after the same clamp, scaled values
 * clamped (NaN to 0) then rounded to nearest even (the default MXCSR mode, as lrintf). Q4_0
 * takes the sign of the first element of largest magnitude, as the scalar loop's strict
 * comparison does. */
static uint16_t q_scale_f16(float f) { /* f32_to_f16_scale of ref.c */
    if (!(f > 0))
        return 0;
    if (f > 65504.0f)
        f = 65504.0f;
    return (uint16_t)_cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}

/* ref's q_clamp on 16 lanes: NaN -> 0, then [lo, hi] */
static inline __m512 q_clamp16(__m512 t, float lo, float hi) {
    t = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(t, t, _CMP_ORD_Q), t);
    return _mm512_min_ps(_mm512_max_ps(t, _mm512_set1_ps(lo)), _mm512_set1_ps(hi));
}

static void avx512_quantize_row(qvl_dtype t, const float *x, void *out, int64_t k) {
    uint8_t *b = out;
    const __m512 sgn = _mm512_set1_ps(-0.0f);
    for (int64_t i = 0; i < k; i += QVL_QBLOCK) {
        __m512 v0 = _mm512_loadu_ps(x + i), v1 = _mm512_loadu_ps(x + i + 16);
        __m512 a0 = _mm512_andnot_ps(sgn, v0), a1 = _mm512_andnot_ps(sgn, v1);
        __m512 m = _mm512_max_ps(a0, _mm512_setzero_ps()); /* NaN lanes -> 0 */
        m = _mm512_max_ps(a1, m);
        float amax = _mm512_reduce_max_ps(m);
        if (t == QVL_DT_Q8_0) {
            uint16_t d16 = q_scale_f16(amax / 127.0f);
            float d = _cvtsh_ss(d16);
            float id = d > 0 ? 1.0f / d : 0.0f;
            memcpy(b, &d16, 2);
            __m512 vid = _mm512_set1_ps(id);
            __m512i q0 = _mm512_cvtps_epi32(q_clamp16(_mm512_mul_ps(v0, vid), -127.0f, 127.0f));
            __m512i q1 = _mm512_cvtps_epi32(q_clamp16(_mm512_mul_ps(v1, vid), -127.0f, 127.0f));
            _mm_storeu_si128((__m128i *)(b + 2), _mm512_cvtepi32_epi8(q0));
            _mm_storeu_si128((__m128i *)(b + 18), _mm512_cvtepi32_epi8(q1));
            b += 34;
        } else {
            /* the first element whose magnitude equals amax (0 when the block is all zero) */
            __mmask16 e0 = _mm512_cmp_ps_mask(a0, _mm512_set1_ps(amax), _CMP_EQ_OQ);
            __mmask16 e1 = _mm512_cmp_ps_mask(a1, _mm512_set1_ps(amax), _CMP_EQ_OQ);
            float vmax = amax > 0 ? (e0 ? x[i + __builtin_ctz(e0)] : x[i + 16 + __builtin_ctz(e1)])
                                  : 0.0f;
            float dsigned = vmax / -8.0f;
            uint16_t d16 = q_scale_f16(fabsf(dsigned));
            float d = _cvtsh_ss(d16);
            if (dsigned < 0) {
                d = -d;
                d16 |= 0x8000u;
            }
            float id = d != 0 ? 1.0f / d : 0.0f;
            memcpy(b, &d16, 2);
            __m512 vid = _mm512_set1_ps(id);
            __m512i eight = _mm512_set1_epi32(8);
            __m512i q0 = _mm512_add_epi32(
                _mm512_cvtps_epi32(q_clamp16(_mm512_mul_ps(v0, vid), -8.0f, 7.0f)), eight);
            __m512i q1 = _mm512_add_epi32(
                _mm512_cvtps_epi32(q_clamp16(_mm512_mul_ps(v1, vid), -8.0f, 7.0f)), eight);
            __m512i q = _mm512_or_si512(q0, _mm512_slli_epi32(q1, 4));
            _mm_storeu_si128((__m128i *)(b + 2), _mm512_cvtepi32_epi8(q));
            b += 18;
        }
    }
}

static const qvl_kern k_avx512 = {
    .name = "avx512",
    .matmul = avx512_matmul,
    .attn = simd_attn,
    .dot = simd_dot,
    .rmsnorm = simd_rmsnorm,
    .layernorm = simd_layernorm,
    .gelu_tanh = simd_gelu_tanh,
    .gelu_erf = simd_gelu_erf,
    .silu_mul = simd_silu_mul,
    .add = simd_add,
    .quantize_row = avx512_quantize_row,
};

const qvl_kern *qvl_kern_avx512(void) {
    return &k_avx512;
}
