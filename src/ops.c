/* ops.c - split dense layers and attention across the thread pool. */
#include "ops.h"

typedef struct {
    const float *x;
    int64_t m;
    const qvl_mat_job *jobs;
    int n_jobs;
} mm_job;

/* this thread's slice of output features [j0, j1) of an n-row matrix */
static void mm_slice(int64_t n, int ith, int nth, int64_t *j0, int64_t *j1) {
    /* contiguous slices rounded to 64 (a multiple of every kernel's GEMM panel width: 16, 32 or
     * 64 columns) so partial panels and SIMD tails only occur at the end of the matrix, not at
     * each thread's boundary */
    int64_t per = (n + nth - 1) / nth;
    per = (per + 63) & ~(int64_t)63;
    *j0 = per * ith;
    *j1 = *j0 + per > n ? n : *j0 + per;
}

static void mm_one(const float *xs, int64_t m, const qvl_mat_job *jb, int ith, int nth) {
    const qvl_mat *W = jb->W;
    int64_t n = W->rows, j0, j1;
    mm_slice(n, ith, nth, &j0, &j1);
    if (j0 >= j1)
        return;
    const qvl_kern *k = qvl_kern_get();
    /* a few rows stream the weights once per group of up to 4 rows (the kernels' matrix-vector
     * path); from SMALL_M rows on, the blocked matrix-matrix path pays off */
    const int64_t SMALL_M = 16;
    int64_t step = m < SMALL_M ? 4 : m;
    for (int64_t i0 = 0; i0 < m; i0 += step) {
        int64_t mi = m - i0 < step ? m - i0 : step;
        const float *x = xs + i0 * W->cols;
        float *y = jb->y + i0 * n;
        if (!k->matmul(y, n, x, W->cols, mi, W->cols, W->data, W->dt, jb->bias, j0, j1))
            qvl_kern_ref()->matmul(y, n, x, W->cols, mi, W->cols, W->data, W->dt, jb->bias, j0,
                                   j1);
    }
}

static void mm_task(void *arg, int ith, int nth) {
    mm_job *j = arg;
    for (int i = 0; i < j->n_jobs; i++)
        mm_one(j->x, j->m, &j->jobs[i], ith, nth);
}

void qvl_op_matmul_multi(qvl_pool *pool, const float *x, int64_t m, const qvl_mat_job *jobs,
                         int n_jobs) {
    mm_job j = {x, m, jobs, n_jobs};
    int64_t work = 0;
    for (int i = 0; i < n_jobs; i++)
        work += m * jobs[i].W->rows * jobs[i].W->cols;
    if (work < 65536)
        mm_task(&j, 0, 1);
    else
        qvl_pool_run(pool, mm_task, &j);
}

void qvl_op_matmul(qvl_pool *pool, float *y, const float *x, int64_t m, const qvl_mat *W,
                   const float *bias) {
    qvl_mat_job jb = {y, W, bias};
    qvl_op_matmul_multi(pool, x, m, &jb, 1);
}

typedef struct {
    float *o;
    int64_t ldo;
    const float *q;
    int64_t ldq, nq;
    const void *k;
    int64_t ldk;
    const void *v;
    int64_t ldv, nk;
    int n_head, n_kv, hd;
    float scale;
    bool causal;
    int64_t q_pos0;
    qvl_dtype kvt;
} attn_job;

static void attn_task(void *arg, int ith, int nth) {
    attn_job *a = arg;
    const qvl_kern *k = qvl_kern_get();
    int rep = a->n_head / a->n_kv;
    /* split heads; with fewer heads than threads split each head's queries too, at multiples
     * of the kernels' query chunk so the results do not depend on the thread count */
    int64_t units_q = a->n_head >= nth ? 1 : (nth + a->n_head - 1) / a->n_head;
    int64_t per = (a->nq + units_q - 1) / units_q;
    per = (per + QVL_KERN_ATTN_QC - 1) / QVL_KERN_ATTN_QC * QVL_KERN_ATTN_QC;
    int64_t n_units = (int64_t)a->n_head * units_q;
    for (int64_t u = ith; u < n_units; u += nth) {
        int h = (int)(u / units_q);
        int64_t part = u % units_q;
        int64_t i0 = part * per, i1 = i0 + per > a->nq ? a->nq : i0 + per;
        if (i0 >= i1)
            continue;
        size_t kvo = (size_t)(h / rep) * (size_t)a->hd * (a->kvt == QVL_DT_F32 ? 4 : 2);
        k->attn(a->o + i0 * a->ldo + (int64_t)h * a->hd, a->ldo,
                a->q + i0 * a->ldq + (int64_t)h * a->hd, a->ldq, i1 - i0,
                (const uint8_t *)a->k + kvo, a->ldk, (const uint8_t *)a->v + kvo, a->ldv, a->nk,
                a->hd, a->scale, a->causal, a->q_pos0 + i0, a->kvt);
    }
}

void qvl_op_attn(qvl_pool *pool, float *o, int64_t ldo, const float *q, int64_t ldq, int64_t nq,
                 const void *k, int64_t ldk, const void *v, int64_t ldv, int64_t nk, int n_head,
                 int n_kv, int hd, float scale, bool causal, int64_t q_pos0, qvl_dtype kvt) {
    attn_job a = {o,      ldo, q,     ldq,    nq,     k,      ldk, v,
                  ldv,    nk,  n_head, n_kv,  hd,     scale,  causal, q_pos0, kvt};
    qvl_pool_run(pool, attn_task, &a);
}
