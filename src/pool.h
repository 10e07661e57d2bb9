/* pool.h - a small thread pool owned by a context. The caller thread is worker 0. */
#ifndef QVL_POOL_H
#define QVL_POOL_H

#include "qvl.h"

#include <stdbool.h>

typedef struct qvl_pool qvl_pool;
/* fn is called once on every worker with (arg, ith, nth) and run() returns when all finished. */
typedef void (*qvl_pool_fn)(void *arg, int ith, int nth);

qvl_status qvl_pool_create(int n_threads, qvl_pool **out);
void qvl_pool_free(qvl_pool *p);
int qvl_pool_size(const qvl_pool *p);
/* Run fn on all n threads (NULL pool: run inline with nth = 1). Not reentrant. */
void qvl_pool_run(qvl_pool *p, qvl_pool_fn fn, void *arg);
/* qvl_prefault(buf, n) with every thread faulting in a share: on a virtual machine the first
 * touch of memory the process has not used costs ~2 ms per MB of one thread's time (the guest
 * clears the pages, the host backs them again). Small buffers are done by the caller alone. */
void qvl_pool_prefault(qvl_pool *p, void *buf, size_t n);

/* A big buffer a context keeps between calls ({NULL, 0} at first, released with qvl_keep_free),
 * so that a later call needing at most as many bytes reuses pages already faulted in. */
typedef struct qvl_keep {
    void *p;
    size_t n;
} qvl_keep;
/* n bytes: keep's buffer when it holds at least n; else a new qvl_malloc_big buffer faulted in
 * by the pool's threads, which replaces keep's (released first) when keep is given and n <= max,
 * and otherwise sets *own: the caller releases it with qvl_free_big(p, n). NULL: out of memory
 * (keep then holds nothing). */
void *qvl_keep_get(qvl_keep *keep, size_t n, size_t max, qvl_pool *pool, bool *own);
void qvl_keep_free(qvl_keep *keep);

#endif
