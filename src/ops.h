/* ops.h - threaded building blocks over the kernel table: dense layers and attention split
 * across the pool by output features / heads (so results do not depend on the thread count). */
#ifndef QVL_OPS_H
#define QVL_OPS_H

#include "dtype.h"
#include "kern/kern.h"
#include "pool.h"

/* A weight matrix [rows, cols] in dtype dt; row r at data + r * row_bytes(dt, cols). */
typedef struct qvl_mat {
    const void *data;
    qvl_dtype dt;
    int64_t rows, cols;
} qvl_mat;

/* y[m, W.rows] = x[m, W.cols] . W^T (+ bias). y must not alias x. */
void qvl_op_matmul(qvl_pool *pool, float *y, const float *x, int64_t m, const qvl_mat *W,
                   const float *bias);

/* One matrix of a group sharing the same input: y[m, W->rows] = x . W^T (+ bias). */
typedef struct qvl_mat_job {
    float *y;
    const qvl_mat *W;
    const float *bias;
} qvl_mat_job;

/* Several matrices with the same input x[m, cols] (every W->cols equal) in one pool job: each
 * thread takes its slice of every matrix, so the results equal separate qvl_op_matmul calls
 * while the threads meet once instead of n_jobs times (decode runs q/k/v and gate/up so). */
void qvl_op_matmul_multi(qvl_pool *pool, const float *x, int64_t m, const qvl_mat_job *jobs,
                         int n_jobs);

/* Multi-head attention over one sequence segment.
 * q: [nq, n_head * hd] (row stride ldq); o: [nq, n_head * hd] (row stride ldo); k, v: nk rows
 * per K/V head of type kvt (F32, F16, BF16), row strides ldk, ldv and head stride kv_hs in
 * elements, in chunks of kvc rows kvcs elements apart when kvc > 0 (the kernels' attn). Heads
 * side by side in [nk, n_kv * hd] rows: ldk = ldv = n_kv * hd, kv_hs = hd, kvc = 0; the
 * decoder's cache, each head's rows contiguous within a chunk of kvc positions: ldk = ldv = hd,
 * kv_hs = kvc * hd, kvcs = n_kv * kvc * hd. Head h uses kv head h / (n_head / n_kv). */
void qvl_op_attn(qvl_pool *pool, float *o, int64_t ldo, const float *q, int64_t ldq, int64_t nq,
                 const void *k, int64_t ldk, const void *v, int64_t ldv, int64_t kv_hs,
                 int64_t kvc, int64_t kvcs, int64_t nk, int n_head, int n_kv, int hd,
                 float scale, bool causal, int64_t q_pos0, qvl_dtype kvt);

#endif
