/* kern.h - the kernel table: math on raw pointers, no model knowledge.
 *
 * Every kernel exists in ref.c (scalar reference, always built). SIMD variants (avx2.c, avx512.c)
 * fill the same table; qvl_kern_init() picks the best one the CPU supports once, and the
 * environment variable QVL_CPU=ref|avx2|avx512 forces a path (for tests and benchmarks).
 *
 * Threading: kernels take a slice of output columns/rows [j0, j1) so callers split work across
 * threads by output, never along a reduction axis; results therefore do not depend on the
 * thread count.
 */
#ifndef QVL_KERN_H
#define QVL_KERN_H

#include "dtype.h"
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Query chunk of the attention kernels (see attn below): a caller that splits one head's
 * queries across threads cuts at multiples of this so results do not depend on the split. */
#define QVL_KERN_ATTN_QC 256
/* Query rows per attn call that every path computes one row at a time (the SIMD paths' in-place
 * path for decode): with at most this many rows a call gives each row the bits of its own call,
 * so the query heads sharing a K/V head (2B: 2, 4B/8B: 4) can read it once. */
#define QVL_KERN_ATTN_ROWS 4
/* K/V chunks (attn's kvc) are multiples of this: of every path's key block (64 keys on
 * AVX-512, 24 on AVX2), so no block straddles two chunks. */
#define QVL_KERN_KV_CHUNK 192

typedef struct qvl_kern {
    const char *name; /* "ref", "avx2", "avx512" */

    /* Dense layer on a slice of output features:
     *   y[i*ldy + j] = sum_p x[i*ldx + p] * W[j][p] (+ b[j] if b)   for i < m, j in [j0, j1)
     * W is row-major [n, k] in dtype wt (F32, F16, BF16, Q8_0, Q4_0), row j at
     * w + j*qvl_dtype_row_bytes(wt, k), or in an interleaved type (Q8_0X16, Q4_0X16; dtype.h),
     * whose groups of 16 rows callers should not split across threads (any [j0, j1) works, but
     * a split group is read twice). x, y, b are float32. Accumulation in float32, except
     * that the AVX-512 path rounds the activations to int8 blocks (32 values + a float scale) for
     * Q8_0X16/Q4_0X16 weights and multiplies with integer dot products. BF16D (bf16 bytes) rounds the activations to bf16 on every path
     * when m > 4 (products exact in float; AVX-512 BF16 dot products where the CPU has them).
     * Returns false if this implementation does not take wt, or cannot get a working buffer
     * (the caller falls back to ref, which takes every type above and allocates nothing). */
    bool (*matmul)(float *y, int64_t ldy, const float *x, int64_t ldx, int64_t m, int64_t k,
                   const void *w, qvl_dtype wt, const float *b, int64_t j0, int64_t j1);

    /* One attention head with online softmax (no score matrix is materialised):
     *   o[i] = sum_j softmax_j(scale * q[i].k[j]) v[j]
     * q: [nq, hd] with row stride ldq; k, v: [nk, hd] with strides ldk, ldv; o: [nq, hd], ldo.
     * If causal, query i sees keys j <= q_pos0 + i (keys are positions 0..nk-1); else all nk.
     * o must not alias q, k or v. Queries are processed in chunks of QVL_KERN_ATTN_QC: calls
     * over query ranges cut at multiples of it give bit-identical results to one call.
     * k and v hold elements of type kvt (F32, or F16 / BF16 for a compact KV cache; strides in
     * elements): they are widened to float exactly, so the arithmetic is that of float K/V
     * holding the same values.
     * kvc = 0: K/V row j at k + j*ldk (v + j*ldv). kvc > 0 (a multiple of QVL_KERN_KV_CHUNK):
     * the rows come in chunks of kvc, chunk c starting kvcs elements after chunk c - 1, so row j
     * is at k + (j / kvc)*kvcs + (j % kvc)*ldk (the decoder's cache keeps each head's rows
     * contiguous within a chunk of positions). The results are those of the same rows laid out
     * without chunks, bit for bit. */
    void (*attn)(float *o, int64_t ldo, const float *q, int64_t ldq, int64_t nq, const void *k,
                 int64_t ldk, const void *v, int64_t ldv, int64_t kvc, int64_t kvcs, int64_t nk,
                 int hd, float scale, bool causal, int64_t q_pos0, qvl_dtype kvt);

    /* dot product of two float vectors */
    float (*dot)(const float *a, const float *b, int64_t n);

    /* Element-wise ops over n contiguous floats (n >= 0, any alignment). The plain functions
     * qvl_rmsnorm ... qvl_add below call the active table's entries; ref.c holds the definitions.
     * Measured against double (tests/unit/test_kern.c): norms within 1.5e-7 of |x| r |w| + |b|
     * on every path (ref sums in double, SIMD in float partial sums); SIMD activations within
     * 2.2e-7 (1 + |a|) relative, a = the exponent's argument (2u, g, x^2/2), i.e. ~1.2e-6 for
     * |x| < 4, and no cancellation in the negative tails (ref's 1 + tanh / 1 + erf lose up to
     * 7.5e-8 |x| absolute there). add is exact on every path. */
    /* y = x / sqrt(mean(x^2) + eps) * w; y may alias x (same pointer), no partial overlap. */
    void (*rmsnorm)(float *y, const float *x, const float *w, int64_t n, float eps);
    /* y = (x - mean) / sqrt(var + eps) * w + b (biased variance; b may be NULL); y may alias x. */
    void (*layernorm)(float *y, const float *x, const float *w, const float *b, int64_t n,
                      float eps);
    /* in place: x = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) */
    void (*gelu_tanh)(float *x, int64_t n);
    /* in place: x = 0.5 x (1 + erf(x / sqrt 2)) */
    void (*gelu_erf)(float *x, int64_t n);
    /* g = silu(g) * u = g / (1 + e^-g) * u; u may equal g but not partly overlap it */
    void (*silu_mul)(float *g, const float *u, int64_t n);
    /* x += y */
    void (*add)(float *x, const float *y, int64_t n);
    /* Quantise one row of k floats (k a multiple of 32) into Q8_0 or Q4_0 blocks: every path
     * gives the same bytes as ref (qvl_quantize_row_ref defines the format). */
    void (*quantize_row)(qvl_dtype t, const float *x, void *out, int64_t k);
} qvl_kern;

/* The active table (after qvl_kern_init; initialises on first use). */
const qvl_kern *qvl_kern_get(void);
/* The table for a named path ("ref", "avx2", "avx512"), or NULL if this CPU/build lacks it. */
const qvl_kern *qvl_kern_by_name(const char *name);
/* Pick the table once: best supported, or QVL_CPU if set and supported. Thread-safe. */
void qvl_kern_init(void);

/* Scalar reference table and per-ISA tables (NULL getters when not compiled in). */
const qvl_kern *qvl_kern_ref(void);

/* Activation reuse for the int8 paths. A caller that runs several matmul calls on the same
 * activation rows on one thread (chunks of output rows, q/k/v of one input) sets an id unique to
 * those rows for the calls (0 afterwards: no reuse). A kernel may then keep the int8 rounding of
 * the last call's activations and reuse it while the id, x, ldx, m and k match. The results are
 * the same either way. */
void qvl_kern_set_act_id(uint64_t id);
uint64_t qvl_kern_act_id(void);
const qvl_kern *qvl_kern_avx2(void);
const qvl_kern *qvl_kern_avx512(void);

/* ---- element-wise helpers: dispatch through qvl_kern_get() (same contracts as the table) ---- */

/* y = x / sqrt(mean(x^2) + eps) * w, over n elements; y may alias x. */
void qvl_rmsnorm(float *y, const float *x, const float *w, int64_t n, float eps);
/* y = (x - mean) / sqrt(var + eps) * w + b (biased variance); y may alias x. */
void qvl_layernorm(float *y, const float *x, const float *w, const float *b, int64_t n, float eps);
/* in place activations */
void qvl_gelu_tanh(float *x, int64_t n);
void qvl_gelu_erf(float *x, int64_t n);
/* g[i] = silu(g[i]) * u[i] */
void qvl_silu_mul(float *g, const float *u, int64_t n);
/* x += y */
void qvl_add(float *x, const float *y, int64_t n);

/* Quantise one row of k floats (k a multiple of 32) into Q8_0 or Q4_0 blocks (active table;
 * the bytes do not depend on the path). */
void qvl_quantize_row(qvl_dtype t, const float *x, void *out, int64_t k);
/* The scalar definition (ref's table entry). */
void qvl_quantize_row_ref(qvl_dtype t, const float *x, void *out, int64_t k);
/* Widen one row of k elements of dtype t to float (not the interleaved types: see below). */
void qvl_row_to_f32(qvl_dtype t, const void *row, float *out, int64_t k);

/* Interleaved Q types (dtype.h): pack nr <= 16 rows of Q8_0/Q4_0 type base (row r at
 * src + r * row_bytes) into one group of the matching X16 type; rows nr..15 become zero. */
void qvl_x16_pack(qvl_dtype base, const uint8_t *src, int nr, int64_t k, uint8_t *group);
/* Blocks [b0, b0 + nb) of row j of an interleaved matrix w (k columns) as Q8_0/Q4_0 blocks. */
void qvl_x16_blocks(qvl_dtype xt, const void *w, int64_t k, int64_t j, int64_t b0, int64_t nb,
                    uint8_t *out);

#endif /* QVL_KERN_H */
