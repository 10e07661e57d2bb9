/* ops.c - split dense layers and attention across the thread pool. */
#include "ops.h"

#include <stdatomic.h>

/* Work is handed out in pieces of output rows, counted in units of U rows (16 for the
 * matrix-vector path of decode, one interleaved group; 64 for the matrix-matrix path, a
 * multiple of every GEMM panel, so partial panels only occur at the end of a matrix) numbered
 * across the job's matrices in order. Each thread owns a contiguous run of units of about
 * equal work and takes pieces from its front, so it streams its weights as one sequential run
 * (each jump to a new place in memory costs the hardware prefetchers a restart). A thread done
 * with its run takes pieces from the back of the others' runs, so a thread that runs slower (a
 * busy core, a vCPU the hypervisor preempts) does less instead of making the others wait.
 * A piece lies in one matrix and holds at most that matrix's cap of units: one thread's share
 * for the matrix-matrix path (each call re-reads, and for the int8 and bf16-dot kernels
 * re-rounds, all the activations), an eighth of it for the matrix-vector path. There a piece
 * also takes at most half of what is left of the run, so pieces shrink towards the run's end
 * and a thread that finishes early finds work left to share: with pieces of fixed size (an
 * eighth of a share), a thread waited for the other's last piece, 2 % of the decode time.
 * Every output row is computed the same way whichever piece and thread it lands in (the
 * kernels' results do not depend on the column slice), so results do not depend on the thread
 * count. */
#define MM_MAX_JOBS 8
#define MM_MAX_RUNS 64 /* runs per job; more threads share runs */

typedef struct {
    _Alignas(64) atomic_ullong fb; /* next unit to take from the front (high 32 bits) and one
                                     * past the last unit left at the back (low 32 bits) */
} mm_run;

typedef struct {
    const float *x;
    int64_t m;
    const qvl_mat_job *jobs;
    int n_jobs;
    uint64_t act_id; /* qvl_kern_set_act_id for the calls of this job */
    int64_t unit;    /* rows per unit */
    bool halve;      /* pieces take at most half of what is left of a run */
    long first_unit[MM_MAX_JOBS + 1]; /* job i owns units [first[i], first[i + 1]) */
    long cap[MM_MAX_JOBS];            /* most units per piece of job i */
    int n_runs;
    mm_run run[MM_MAX_RUNS];
} mm_job;

static void mm_rows(const float *xs, int64_t m, const qvl_mat_job *jb, int64_t j0, int64_t j1) {
    const qvl_mat *W = jb->W;
    const int64_t n = W->rows;
    const qvl_kern *k = qvl_kern_get();
    /* a few rows stream the weights once per group of up to 4 rows (the kernels' matrix-vector
     * path); from SMALL_M rows on, the blocked matrix-matrix path pays off. Interleaved Q
     * types take every row at once (their kernel blocks the rows itself). */
    const int64_t SMALL_M = 16;
    int64_t step = m < SMALL_M && !qvl_dtype_is_x16(W->dt) ? 4 : m;
    for (int64_t i0 = 0; i0 < m; i0 += step) {
        int64_t mi = m - i0 < step ? m - i0 : step;
        const float *x = xs + i0 * W->cols;
        float *y = jb->y + i0 * n;
        if (!k->matmul(y, n, x, W->cols, mi, W->cols, W->data, W->dt, jb->bias, j0, j1))
            qvl_kern_ref()->matmul(y, n, x, W->cols, mi, W->cols, W->data, W->dt, jb->bias, j0,
                                   j1);
    }
}

static int mm_job_of(const mm_job *j, long u) {
    int i = 0;
    while (u >= j->first_unit[i + 1])
        i++;
    return i;
}

/* Takes a piece from the front (front = true) or the back of run r: stores its units
 * [*u0, *u0 + n) and returns n, or 0 when the run is empty. */
static long mm_take(const mm_job *j, mm_run *r, bool front, long *u0) {
    unsigned long long v = atomic_load_explicit(&r->fb, memory_order_relaxed);
    for (;;) {
        long f = (long)(v >> 32), b = (long)(v & 0xffffffffull);
        if (f >= b)
            return 0;
        int i = mm_job_of(j, front ? f : b - 1);
        long n = front ? j->first_unit[i + 1] - f : b - j->first_unit[i];
        if (n > b - f)
            n = b - f;
        if (n > j->cap[i])
            n = j->cap[i];
        if (j->halve && n > (b - f) / 2)
            n = (b - f) / 2 > 0 ? (b - f) / 2 : 1;
        unsigned long long nv = front ? ((unsigned long long)(f + n) << 32) | (unsigned long long)b
                                      : ((unsigned long long)f << 32) | (unsigned long long)(b - n);
        if (atomic_compare_exchange_weak_explicit(&r->fb, &v, nv, memory_order_relaxed,
                                                  memory_order_relaxed)) {
            *u0 = front ? f : b - n;
            return n;
        }
    }
}

static void mm_piece(const mm_job *j, long u0, long n) {
    int i = mm_job_of(j, u0);
    const qvl_mat_job *jb = &j->jobs[i];
    int64_t r0 = (int64_t)(u0 - j->first_unit[i]) * j->unit;
    int64_t r1 = r0 + n * j->unit > jb->W->rows ? jb->W->rows : r0 + n * j->unit;
    mm_rows(j->x, j->m, jb, r0, r1);
}

static void mm_task(void *arg, int ith, int nth) {
    (void)nth;
    mm_job *j = arg;
    qvl_kern_set_act_id(j->act_id); /* every piece of this call reads the same rows x */
    const int own = ith % j->n_runs;
    long u0, n;
    while ((n = mm_take(j, &j->run[own], true, &u0)) > 0)
        mm_piece(j, u0, n);
    for (bool any = true; any;) { /* then the others' runs, from their backs */
        any = false;
        for (int d = 1; d < j->n_runs; d++) {
            if ((n = mm_take(j, &j->run[(own + d) % j->n_runs], false, &u0)) > 0) {
                mm_piece(j, u0, n);
                any = true;
            }
        }
    }
    qvl_kern_set_act_id(0);
}

void qvl_op_matmul_multi(qvl_pool *pool, const float *x, int64_t m, const qvl_mat_job *jobs,
                         int n_jobs) {
    for (; n_jobs > MM_MAX_JOBS; jobs += MM_MAX_JOBS, n_jobs -= MM_MAX_JOBS)
        qvl_op_matmul_multi(pool, x, m, jobs, MM_MAX_JOBS);
    int64_t work = 0;
    for (int i = 0; i < n_jobs; i++)
        work += m * jobs[i].W->rows * jobs[i].W->cols;
    int nth = work < 65536 ? 1 : qvl_pool_size(pool);
    static atomic_ullong next_act_id;
    const bool mv = m < 16;
    mm_job j = {.x = x, .m = m, .jobs = jobs, .n_jobs = n_jobs, .unit = mv ? 16 : 64,
                .halve = mv && nth > 1};
    j.act_id = atomic_fetch_add_explicit(&next_act_id, 1, memory_order_relaxed) + 1;
    const int64_t parts = nth > 1 && mv ? nth * 8 : nth; /* one thread: one piece a matrix */
    j.first_unit[0] = 0;
    for (int i = 0; i < n_jobs; i++) {
        long units = (long)((jobs[i].W->rows + j.unit - 1) / j.unit);
        j.cap[i] = (long)((units + parts - 1) / parts);
        j.first_unit[i + 1] = j.first_unit[i] + units;
    }
    /* runs of about equal work (rows x columns), cut at unit boundaries */
    j.n_runs = nth < MM_MAX_RUNS ? nth : MM_MAX_RUNS;
    double total = (double)work / (double)m, done = 0;
    long u = 0;
    for (int r = 0; r < j.n_runs; r++) {
        long u0 = u;
        double goal = total * (r + 1) / j.n_runs;
        for (int i = 0; i < n_jobs; i++) /* units of job i while the run is short of its goal */
            for (; u < j.first_unit[i + 1] && (r == j.n_runs - 1 || done < goal); u++) {
                int64_t rows = jobs[i].W->rows - (u - j.first_unit[i]) * j.unit;
                done += (double)(rows < j.unit ? rows : j.unit) * (double)jobs[i].W->cols;
            }
        atomic_init(&j.run[r].fb, ((unsigned long long)u0 << 32) | (unsigned long long)u);
    }
    if (nth == 1)
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
    int64_t ldv, kv_hs, kvc, kvcs, nk;
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
    const size_t kes = qvl_dtype_row_bytes(a->kvt, 1); /* bytes per K/V element */
    if (a->nq == 1 && rep > 1 && (!a->causal || a->q_pos0 + 1 >= a->nk)) {
        /* one query that sees every key (decode): the rep heads sharing a K/V head are the
         * query rows of one call (of at most QVL_KERN_ATTN_ROWS, 4), so each K/V
         * row is read once for them, with the bits of one call per head */
        int nch = (rep + QVL_KERN_ATTN_ROWS - 1) / QVL_KERN_ATTN_ROWS; /* calls per group */
        for (int u = ith; u < a->n_kv * nch; u += nth) {
            int g = u / nch, c = u % nch, r0 = c * rep / nch, r1 = (c + 1) * rep / nch;
            size_t kvo = (size_t)g * (size_t)a->kv_hs * kes;
            int64_t h0 = ((int64_t)g * rep + r0) * a->hd;
            k->attn(a->o + h0, a->hd, a->q + h0, a->hd, r1 - r0, (const uint8_t *)a->k + kvo,
                    a->ldk, (const uint8_t *)a->v + kvo, a->ldv, a->kvc, a->kvcs, a->nk, a->hd,
                    a->scale, false, 0, a->kvt);
        }
        return;
    }
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
        size_t kvo = (size_t)(h / rep) * (size_t)a->kv_hs * kes;
        k->attn(a->o + i0 * a->ldo + (int64_t)h * a->hd, a->ldo,
                a->q + i0 * a->ldq + (int64_t)h * a->hd, a->ldq, i1 - i0,
                (const uint8_t *)a->k + kvo, a->ldk, (const uint8_t *)a->v + kvo, a->ldv, a->kvc,
                a->kvcs, a->nk, a->hd, a->scale, a->causal, a->q_pos0 + i0, a->kvt);
    }
}

void qvl_op_attn(qvl_pool *pool, float *o, int64_t ldo, const float *q, int64_t ldq, int64_t nq,
                 const void *k, int64_t ldk, const void *v, int64_t ldv, int64_t kv_hs,
                 int64_t kvc, int64_t kvcs, int64_t nk, int n_head, int n_kv, int hd,
                 float scale, bool causal, int64_t q_pos0, qvl_dtype kvt) {
    attn_job a = {.o = o,         .ldo = ldo,       .q = q,           .ldq = ldq,
                  .nq = nq,       .k = k,           .ldk = ldk,       .v = v,
                  .ldv = ldv,     .kv_hs = kv_hs,   .kvc = kvc,       .kvcs = kvcs,
                  .nk = nk,       .n_head = n_head, .n_kv = n_kv,     .hd = hd,
                  .scale = scale, .causal = causal, .q_pos0 = q_pos0, .kvt = kvt};
    qvl_pool_run(pool, attn_task, &a);
}
