/* pool.c - fixed-size thread pool: workers sleep on a condition variable between jobs; one job
 * (fn, arg) runs on every worker, the caller taking index 0, and run() waits for all of them. */
#include "pool.h"
#include "common.h"

#include <pthread.h>

struct qvl_pool {
    int n;
    pthread_t *threads;
    pthread_mutex_t mu;
    pthread_cond_t cv_work;
    pthread_cond_t cv_done;
    qvl_pool_fn fn;
    void *arg;
    unsigned long gen; /* job generation counter */
    int pending;       /* workers still running the current job */
    int stop;
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
        pthread_mutex_lock(&p->mu);
        while (!p->stop && p->gen == seen)
            pthread_cond_wait(&p->cv_work, &p->mu);
        if (p->stop) {
            pthread_mutex_unlock(&p->mu);
            return NULL;
        }
        seen = p->gen;
        qvl_pool_fn fn = p->fn;
        void *arg = p->arg;
        pthread_mutex_unlock(&p->mu);
        fn(arg, wa.ith, p->n);
        pthread_mutex_lock(&p->mu);
        if (--p->pending == 0)
            pthread_cond_signal(&p->cv_done);
        pthread_mutex_unlock(&p->mu);
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
    p->n = n_threads;
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
            p->n = i;
            qvl_pool_free(p);
            return QVL_E_NOMEM;
        }
        wa->p = p;
        wa->ith = i;
        if (pthread_create(&p->threads[i], NULL, worker, wa) != 0) {
            qvl_free(wa);
            p->n = i;
            qvl_pool_free(p);
            return QVL_E_INTERNAL;
        }
    }
    *out = p;
    return QVL_OK;
}

void qvl_pool_free(qvl_pool *p) {
    if (!p)
        return;
    pthread_mutex_lock(&p->mu);
    p->stop = 1;
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
    pthread_mutex_lock(&p->mu);
    p->fn = fn;
    p->arg = arg;
    p->pending = p->n - 1;
    p->gen++;
    pthread_cond_broadcast(&p->cv_work);
    pthread_mutex_unlock(&p->mu);
    fn(arg, 0, p->n);
    pthread_mutex_lock(&p->mu);
    while (p->pending > 0)
        pthread_cond_wait(&p->cv_done, &p->mu);
    pthread_mutex_unlock(&p->mu);
}
