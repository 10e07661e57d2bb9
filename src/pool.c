/* pool.c - fixed-size thread pool: one job (fn, arg) runs on every worker, the caller taking
 * index 0, and run() returns when all have finished.
 *
 * Decoding a token dispatches a few hundred short jobs, so hand-offs must be cheap: workers
 * spin briefly on the job counter before sleeping on a condition variable, and the caller spins
 * briefly on the pending count before sleeping. The sleep/wake paths use the usual two-flag
 * handshake (a sleeper count and a waiting flag checked after the opposite side's sequentially
 * consistent update), so no wake-up is lost. */
#include "pool.h"
#include "common.h"

#include <pthread.h>
#include <stdatomic.h>

#if defined(__x86_64__) || defined(__i386__)
#    include <immintrin.h>
#    define cpu_relax() _mm_pause()
#else
#    define cpu_relax() ((void)0)
#endif

/* spin iterations before sleeping (a pause is ~10-60 cycles: tens of microseconds in all) */
#define SPIN 20000

struct qvl_pool {
    int n;
    pthread_t *threads;
    pthread_mutex_t mu;
    pthread_cond_t cv_work;
    pthread_cond_t cv_done;
    qvl_pool_fn fn; /* written before gen is bumped (release), read after (acquire) */
    void *arg;
    atomic_ulong gen;          /* job generation */
    atomic_int pending;        /* workers still running the current job */
    atomic_int sleepers;       /* workers waiting on cv_work */
    atomic_int caller_waiting; /* the caller waits on cv_done */
    atomic_int stop;
};

typedef struct {
    qvl_pool *p;
    int ith;
} worker_arg;

static void *worker(void *a) {
    worker_arg wa = *(worker_arg *)a;
    qvl_free(a);
    qvl_pool *p = wa.p;
    unsigned long seen = 0;
    for (;;) {
        unsigned long g = atomic_load(&p->gen);
        for (int i = 0; i < SPIN && g == seen && !atomic_load_explicit(&p->stop, memory_order_relaxed);
             i++) {
            cpu_relax();
            g = atomic_load(&p->gen);
        }
        if (g == seen && !atomic_load(&p->stop)) {
            pthread_mutex_lock(&p->mu);
            atomic_fetch_add(&p->sleepers, 1);
            while (atomic_load(&p->gen) == seen && !atomic_load(&p->stop))
                pthread_cond_wait(&p->cv_work, &p->mu);
            atomic_fetch_sub(&p->sleepers, 1);
            pthread_mutex_unlock(&p->mu);
        }
        if (atomic_load(&p->stop))
            return NULL;
        seen = atomic_load(&p->gen);
        p->fn(p->arg, wa.ith, p->n);
        if (atomic_fetch_sub(&p->pending, 1) == 1 && atomic_load(&p->caller_waiting)) {
            pthread_mutex_lock(&p->mu);
            pthread_cond_signal(&p->cv_done);
            pthread_mutex_unlock(&p->mu);
        }
    }
}

qvl_status qvl_pool_create(int n_threads, qvl_pool **out) {
    *out = NULL;
    if (n_threads < 1)
        n_threads = 1;
    if (n_threads > 256)
        return QVL_E_INVAL;
    qvl_pool *p = qvl_calloc(1, sizeof *p);
    if (!p)
        return QVL_E_NOMEM;
    p->n = 1;
    if (pthread_mutex_init(&p->mu, NULL) != 0) {
        qvl_free(p);
        return QVL_E_INTERNAL;
    }
    pthread_cond_init(&p->cv_work, NULL);
    pthread_cond_init(&p->cv_done, NULL);
    if (n_threads > 1) {
        p->threads = qvl_calloc((size_t)n_threads, sizeof(pthread_t));
        if (!p->threads) {
            qvl_pool_free(p);
            return QVL_E_NOMEM;
        }
    }
    for (int i = 1; i < n_threads; i++) {
        worker_arg *wa = qvl_malloc(sizeof *wa);
        if (!wa) {
            qvl_pool_free(p);
            return QVL_E_NOMEM;
        }
        wa->p = p;
        wa->ith = i;
        if (pthread_create(&p->threads[i], NULL, worker, wa) != 0) {
            qvl_free(wa);
            qvl_pool_free(p);
            return QVL_E_INTERNAL;
        }
        p->n = i + 1; /* threads started so far (joined by free) */
    }
    p->n = n_threads;
    *out = p;
    return QVL_OK;
}

void qvl_pool_free(qvl_pool *p) {
    if (!p)
        return;
    pthread_mutex_lock(&p->mu);
    atomic_store(&p->stop, 1);
    pthread_cond_broadcast(&p->cv_work);
    pthread_mutex_unlock(&p->mu);
    for (int i = 1; i < p->n; i++)
        pthread_join(p->threads[i], NULL);
    pthread_cond_destroy(&p->cv_work);
    pthread_cond_destroy(&p->cv_done);
    pthread_mutex_destroy(&p->mu);
    qvl_free(p->threads);
    qvl_free(p);
}

int qvl_pool_size(const qvl_pool *p) {
    return p ? p->n : 1;
}

void qvl_pool_run(qvl_pool *p, qvl_pool_fn fn, void *arg) {
    if (!p || p->n == 1) {
        fn(arg, 0, 1);
        return;
    }
    p->fn = fn;
    p->arg = arg;
    atomic_store(&p->pending, p->n - 1);
    atomic_fetch_add(&p->gen, 1); /* publishes fn/arg */
    if (atomic_load(&p->sleepers) > 0) {
        pthread_mutex_lock(&p->mu);
        pthread_cond_broadcast(&p->cv_work);
        pthread_mutex_unlock(&p->mu);
    }
    fn(arg, 0, p->n);
    for (int i = 0; i < SPIN && atomic_load(&p->pending) > 0; i++)
        cpu_relax();
    if (atomic_load(&p->pending) > 0) {
        pthread_mutex_lock(&p->mu);
        atomic_store(&p->caller_waiting, 1);
        while (atomic_load(&p->pending) > 0)
            pthread_cond_wait(&p->cv_done, &p->mu);
        atomic_store(&p->caller_waiting, 0);
        pthread_mutex_unlock(&p->mu);
    }
}

typedef struct {
    uint8_t *p;
    size_t n;
} prefault_job;

static void prefault_task(void *arg, int ith, int nth) {
    const prefault_job *j = arg;
    size_t a = j->n * (size_t)ith / (size_t)nth, b = j->n * (size_t)(ith + 1) / (size_t)nth;
    qvl_prefault(j->p + a, b - a);
}

void qvl_pool_prefault(qvl_pool *p, void *buf, size_t n) {
    if (!buf || !n)
        return;
    if (!p || p->n == 1 || n < ((size_t)4 << 20)) {
        qvl_prefault(buf, n);
        return;
    }
    prefault_job j = {buf, n};
    qvl_pool_run(p, prefault_task, &j);
}

void *qvl_keep_get(qvl_keep *keep, size_t n, size_t max, qvl_pool *pool, bool *own) {
    *own = false;
    if (keep && keep->p && keep->n >= n)
        return keep->p;
    qvl_keep_free(keep); /* too small: replaced */
    void *p = qvl_malloc_big(n);
    if (!p)
        return NULL;
    qvl_pool_prefault(pool, p, n);
    if (keep && n <= max)
        *keep = (qvl_keep){p, n};
    else
        *own = true;
    return p;
}

void qvl_keep_free(qvl_keep *keep) {
    if (keep && keep->p) {
        qvl_free_big(keep->p, keep->n);
        *keep = (qvl_keep){NULL, 0};
    }
}
