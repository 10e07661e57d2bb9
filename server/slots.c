/* slots.c - the slot pool of `qvl serve`: N slots, each with its own qvl_ctx (created once) and
 * worker thread, a bounded FIFO of waiting jobs, cancellation, and per-slot prefix reuse: a slot
 * remembers the token ids (and the encoded bytes of the images) in its KV cache, and a job whose
 * prompt strictly extends them only evaluates the new suffix.
 *
 * Locking: one mutex guards the queue, the slot assignments and every job's state and output.
 * A slot's ctx and cache are touched only by its worker while the slot holds a job, and read by
 * dispatch() only while the slot is idle (both under the lock at the hand-over points). */
#include "server.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct srv_slot {
    int id;
    srv_pool *pool;
    qvl_ctx *ctx;
    pthread_t th;
    bool th_started;
    pthread_cond_t cond;
    srv_job *job; /* assigned job, NULL when idle */
    uint64_t last_used;
    /* what the KV cache holds (valid while qvl_ctx_n_past(ctx) == n_cache) */
    int32_t *cache_ids;
    size_t n_cache;
    uint8_t **cache_img;
    size_t *cache_img_len;
    size_t n_cache_img;
    qvl_image_opts cache_opts;
} srv_slot;

struct srv_pool {
    pthread_mutex_t mu;
    const qvl_model *m;
    int32_t image_pad;
    srv_slot *slots;
    int n_slots;
    srv_job *q_head, *q_tail;
    int q_len, q_max;
    bool stopping;
    uint64_t tick;
};

/* ---- jobs ------------------------------------------------------------------------------------ */
srv_job *srv_job_new(void) {
    srv_job *j = calloc(1, sizeof *j);
    if (!j)
        return NULL;
    if (pthread_cond_init(&j->cond, NULL) != 0) {
        free(j);
        return NULL;
    }
    j->refs = 1;
    j->gp = qvl_gen_default_params();
    j->slot = -1;
    atomic_init(&j->cancel, 0);
    return j;
}

static void job_free(srv_job *j) {
    qvl_free(j->ids); /* from qvl_prompt_build_parts */
    for (size_t i = 0; i < j->n_images; i++) {
        if (j->images)
            qvl_image_free(j->images[i]);
        if (j->img_bytes)
            free(j->img_bytes[i]);
    }
    free(j->images);
    free(j->img_bytes);
    free(j->img_len);
    for (size_t i = 0; i < j->n_videos; i++)
        qvl_video_free(j->videos[i]);
    free(j->videos);
    for (int i = 0; i < j->n_stop; i++)
        free(j->stops[i]);
    free(j->stops);
    free(j->text);
    free(j->lp);
    free(j->bias_ids);
    free(j->bias_vals);
    free(j->echo);
    free(j->plp);
    pthread_cond_destroy(&j->cond);
    free(j);
}

static void release_locked(srv_job *j) {
    if (--j->refs == 0)
        job_free(j);
}

void srv_job_release(srv_pool *p, srv_job *j) {
    if (!j)
        return;
    if (!p) { /* never submitted */
        release_locked(j);
        return;
    }
    pthread_mutex_lock(&p->mu);
    release_locked(j);
    pthread_mutex_unlock(&p->mu);
}

void srv_job_ref(srv_pool *p, srv_job *j) {
    pthread_mutex_lock(&p->mu);
    j->refs++;
    pthread_mutex_unlock(&p->mu);
}

void srv_pool_lock(srv_pool *p) {
    pthread_mutex_lock(&p->mu);
}

void srv_pool_unlock(srv_pool *p) {
    pthread_mutex_unlock(&p->mu);
}

/* ---- prefix reuse ---------------------------------------------------------------------------- */
static void cache_clear(srv_slot *s) {
    for (size_t i = 0; i < s->n_cache_img; i++)
        free(s->cache_img[i]);
    free(s->cache_img);
    free(s->cache_img_len);
    free(s->cache_ids);
    s->cache_img = NULL;
    s->cache_img_len = NULL;
    s->cache_ids = NULL;
    s->n_cache = 0;
    s->n_cache_img = 0;
}

/* Number of leading prompt tokens of j already in slot s's KV cache that can be kept (0: none),
 * and in *img0 how many of j's images they cover. The cache must be a strict prefix of the
 * prompt, end outside an image, and hold the same images (bytes and budget). */
static size_t reuse_len(const srv_slot *s, const srv_job *j, int32_t pad, size_t *img0) {
    *img0 = 0;
    size_t n = s->n_cache;
    if (j->n_videos > 0) /* video frames have no cheap identity: evaluate from scratch */
        return 0;
    if (n == 0 || n >= j->n_ids || memcmp(s->cache_ids, j->ids, n * sizeof(int32_t)) != 0)
        return 0;
    if (s->cache_ids[n - 1] == pad && j->ids[n] == pad)
        return 0;
    if (s->n_cache_img > 0 && (s->cache_opts.min_pixels != j->img_opts.min_pixels ||
                               s->cache_opts.max_pixels != j->img_opts.max_pixels ||
                               s->cache_opts.resample != j->img_opts.resample))
        return 0;
    size_t runs = 0;
    for (size_t i = 0; i < n; i++)
        runs += s->cache_ids[i] == pad && (i == 0 || s->cache_ids[i - 1] != pad);
    if (runs != s->n_cache_img || runs > j->n_images)
        return 0;
    for (size_t i = 0; i < runs; i++)
        if (s->cache_img_len[i] != j->img_len[i] ||
            memcmp(s->cache_img[i], j->img_bytes[i], j->img_len[i]) != 0)
            return 0;
    *img0 = runs;
    return n;
}

/* Record the slot's cache after a job: prompt ids plus the generated tokens that were
 * evaluated; the job's image bytes move to the slot. Clears the cache when anything is off. */
static void cache_update(srv_slot *s, srv_job *j, const int32_t *gen, size_t n_gen) {
    int64_t n_past = qvl_ctx_n_past(s->ctx);
    cache_clear(s);
    if (n_past < (int64_t)j->n_ids || n_past - (int64_t)j->n_ids > (int64_t)n_gen) {
        qvl_ctx_reset(s->ctx);
        return;
    }
    size_t k = (size_t)n_past - j->n_ids;
    s->cache_ids = malloc(((size_t)n_past + 1) * sizeof(int32_t));
    s->cache_img = calloc(j->n_images + 1, sizeof *s->cache_img);
    s->cache_img_len = calloc(j->n_images + 1, sizeof *s->cache_img_len);
    if (!s->cache_ids || !s->cache_img || !s->cache_img_len) {
        cache_clear(s);
        qvl_ctx_reset(s->ctx);
        return;
    }
    memcpy(s->cache_ids, j->ids, j->n_ids * sizeof(int32_t));
    if (k)
        memcpy(s->cache_ids + j->n_ids, gen, k * sizeof(int32_t));
    s->n_cache = (size_t)n_past;
    for (size_t i = 0; i < j->n_images; i++) {
        s->cache_img[i] = j->img_bytes[i];
        s->cache_img_len[i] = j->img_len[i];
        j->img_bytes[i] = NULL;
    }
    s->n_cache_img = j->n_images;
    s->cache_opts = j->img_opts;
}

/* ---- worker ------------------------------------------------------------------------------------ */
static int on_text(const char *text, size_t len, int32_t token, void *user) {
    (void)token;
    srv_slot *s = user;
    srv_job *j = s->job;
    srv_pool *p = s->pool;
    pthread_mutex_lock(&p->mu);
    if (j->text_n + len + 1 > j->text_cap) {
        size_t cap = (j->text_cap ? j->text_cap * 2 : 256) + len;
        char *t = realloc(j->text, cap);
        if (t) {
            j->text = t;
            j->text_cap = cap;
        } else {
            j->oom = true;
        }
    }
    if (!j->oom) {
        memcpy(j->text + j->text_n, text, len);
        j->text_n += len;
        j->text[j->text_n] = 0;
    }
    j->n_completion++;
    pthread_cond_broadcast(&j->cond);
    pthread_mutex_unlock(&p->mu);
    return atomic_load(&j->cancel) ? 1 : 0;
}

/* A generated token's log-probabilities, kept for the response (with gp.logprobs). */
static int on_token(const qvl_token_info *t, void *user) {
    srv_slot *s = user;
    srv_job *j = s->job;
    srv_pool *p = s->pool;
    pthread_mutex_lock(&p->mu);
    if (j->lp_n == j->lp_cap) {
        size_t cap = j->lp_cap ? j->lp_cap * 2 : 64;
        srv_lp *n = realloc(j->lp, cap * sizeof *n);
        if (n) {
            j->lp = n;
            j->lp_cap = cap;
        } else {
            j->oom = true;
        }
    }
    if (j->lp_n < j->lp_cap) {
        srv_lp *r = &j->lp[j->lp_n++];
        memset(r, 0, sizeof *r);
        r->id = t->token;
        r->logprob = t->logprob;
        for (int k = 0; k < t->n_top && k < SRV_MAX_TOP_LOGPROBS; k++) {
            r->top_ids[k] = t->top_ids[k];
            r->top_lp[k] = t->top_logprobs[k];
        }
    }
    pthread_mutex_unlock(&p->mu);
    return atomic_load(&j->cancel) ? 1 : 0;
}

static void set_err(srv_pool *p, srv_job *j, qvl_status st, const char *msg) {
    pthread_mutex_lock(&p->mu);
    j->status = st;
    snprintf(j->err, sizeof j->err, "%s", msg && *msg ? msg : qvl_status_str(st));
    pthread_mutex_unlock(&p->mu);
}

/* Evaluate the whole prompt of a score_prompt job and record its tokens' log-probabilities in
 * j->plp (then plp_ready, with a wake-up: a stream sends them with the echoed prompt). */
static qvl_status eval_scored(srv_slot *s, srv_job *j, const char **em) {
    srv_pool *p = s->pool;
    const int top = j->gp.top_logprobs;
    size_t n = j->n_ids;
    float *lps = malloc(n * sizeof(float));
    int32_t *tids = top ? malloc(n * (size_t)top * sizeof(int32_t)) : NULL;
    float *tlps = top ? malloc(n * (size_t)top * sizeof(float)) : NULL;
    srv_lp *recs = calloc(n, sizeof *recs);
    qvl_status st = QVL_E_NOMEM;
    *em = "out of memory for the prompt's log-probabilities";
    if (lps && recs && (!top || (tids && tlps))) {
        *em = NULL;
        qvl_prompt_scores ps = {lps, top, tids, tlps};
        st = qvl_ctx_eval_scored(s->ctx, j->ids, n, j->images, j->n_images, j->videos,
                                 j->n_videos, &ps);
    }
    if (st == QVL_OK)
        for (size_t i = 0; i < n; i++) {
            recs[i].id = j->ids[i];
            recs[i].logprob = lps[i];
            for (int k = 0; k < top && k < SRV_MAX_TOP_LOGPROBS; k++) {
                recs[i].top_ids[k] = tids[i * (size_t)top + (size_t)k];
                recs[i].top_lp[k] = tlps[i * (size_t)top + (size_t)k];
            }
        }
    free(lps);
    free(tids);
    free(tlps);
    pthread_mutex_lock(&p->mu);
    if (st == QVL_OK) {
        j->plp = recs;
        j->plp_n = n;
        recs = NULL;
    }
    j->plp_ready = st == QVL_OK;
    pthread_cond_broadcast(&j->cond);
    pthread_mutex_unlock(&p->mu);
    free(recs);
    return st;
}

/* Evaluate the job's prompt (reusing the slot's cache when possible) and generate. */
static void run_job(srv_slot *s, srv_job *j) {
    srv_pool *p = s->pool;
    qvl_ctx *c = s->ctx;
    size_t img0 = 0;
    size_t start = 0;
    double t0 = srv_now_ms();
    if (qvl_ctx_n_past(c) == (int64_t)s->n_cache && !j->score_prompt)
        start = reuse_len(s, j, p->image_pad, &img0); /* a scored prompt is evaluated whole */
    if (start == 0) {
        qvl_ctx_reset(c);
        cache_clear(s);
    }
    if (atomic_load(&j->cancel)) {
        set_err(p, j, QVL_E_CANCELLED, "cancelled");
        return;
    }
    qvl_ctx_set_image_opts(c, &j->img_opts);
    const char *em = NULL;
    qvl_status st = j->score_prompt ? eval_scored(s, j, &em)
                                    : qvl_ctx_eval_mm(c, j->ids + start, j->n_ids - start,
                                                      j->images + img0, j->n_images - img0,
                                                      j->videos, j->n_videos);
    if (st != QVL_OK) {
        set_err(p, j, st, em ? em : qvl_ctx_errmsg(c));
        qvl_ctx_reset(c);
        cache_clear(s);
        return;
    }
    pthread_mutex_lock(&p->mu);
    j->n_cached = start;
    j->t_start = t0;
    j->t_prompt = srv_now_ms();
    pthread_mutex_unlock(&p->mu);
    if (j->no_gen) { /* max_tokens 0: the prompt (and its scores) only */
        pthread_mutex_lock(&p->mu);
        j->t_end = srv_now_ms();
        j->status = j->oom ? QVL_E_NOMEM : QVL_OK;
        j->finish = QVL_FINISH_LENGTH;
        j->n_completion = 0;
        pthread_mutex_unlock(&p->mu);
        cache_update(s, j, NULL, 0);
        return;
    }
    qvl_gen_params gp = j->gp;
    int64_t room = qvl_ctx_n_ctx(c) - qvl_ctx_n_past(c);
    if (room < 1)
        room = 1;
    if (gp.max_new_tokens <= 0 || gp.max_new_tokens > room)
        gp.max_new_tokens = (int)room;
    gp.stop = (const char *const *)j->stops;
    gp.n_stop = j->n_stop;
    if (gp.logprobs) {
        gp.token_cb = on_token;
        gp.token_user = s;
    }
    qvl_gen_result res = {0};
    st = qvl_ctx_generate(c, &gp, on_text, s, &res);
    pthread_mutex_lock(&p->mu);
    j->t_end = srv_now_ms();
    j->status = st;
    j->finish = res.finish;
    j->n_completion = res.n_tokens;
    if (st != QVL_OK)
        snprintf(j->err, sizeof j->err, "%s", qvl_ctx_errmsg(c));
    else if (j->oom)
        j->status = QVL_E_NOMEM;
    pthread_mutex_unlock(&p->mu);
    if ((st == QVL_OK || st == QVL_E_CANCELLED) && j->n_videos == 0)
        cache_update(s, j, res.tokens, res.n_tokens);
    else if (st == QVL_OK || st == QVL_E_CANCELLED)
        cache_clear(s); /* the next job starts over (n_past no longer matches) */
    else {
        qvl_ctx_reset(c);
        cache_clear(s);
    }
    qvl_gen_result_free(&res);
}

/* Give queued jobs to idle slots, head first; a slot that can reuse a prefix wins, then an empty
 * slot, then the least recently used one. Pool lock held. */
static void dispatch(srv_pool *p) {
    while (p->q_head) {
        srv_job *j = p->q_head;
        srv_slot *best = NULL;
        size_t best_len = 0;
        for (int i = 0; i < p->n_slots; i++) {
            srv_slot *s = &p->slots[i];
            if (s->job)
                continue;
            size_t img0;
            size_t r = reuse_len(s, j, p->image_pad, &img0);
            if (!best || r > best_len ||
                (r == best_len && (s->n_cache == 0) > (best->n_cache == 0)) ||
                (r == best_len && (s->n_cache == 0) == (best->n_cache == 0) &&
                 s->last_used < best->last_used)) {
                best = s;
                best_len = r;
            }
        }
        if (!best)
            return;
        p->q_head = j->next;
        if (!p->q_head)
            p->q_tail = NULL;
        p->q_len--;
        j->next = NULL;
        j->state = JOB_RUNNING;
        j->slot = best->id;
        best->job = j;
        pthread_cond_signal(&best->cond);
    }
}

static void *worker(void *arg) {
    srv_slot *s = arg;
    srv_pool *p = s->pool;
    pthread_mutex_lock(&p->mu);
    for (;;) {
        while (!s->job && !p->stopping)
            pthread_cond_wait(&s->cond, &p->mu);
        if (!s->job)
            break;
        srv_job *j = s->job;
        pthread_mutex_unlock(&p->mu);
        run_job(s, j);
        pthread_mutex_lock(&p->mu);
        j->state = JOB_DONE;
        pthread_cond_broadcast(&j->cond);
        s->job = NULL;
        s->last_used = ++p->tick;
        release_locked(j);
        if (!p->stopping)
            dispatch(p);
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

/* ---- pool ---------------------------------------------------------------------------------------- */
qvl_status srv_pool_create(const qvl_model *m, int n_slots, const qvl_ctx_params *cp,
                           int queue_max, srv_pool **out, char *err, size_t err_len) {
    *out = NULL;
    if (n_slots < 1 || queue_max < 0) {
        snprintf(err, err_len, "slots must be >= 1 and the queue >= 0");
        return QVL_E_INVAL;
    }
    srv_pool *p = calloc(1, sizeof *p);
    if (!p || !(p->slots = calloc((size_t)n_slots, sizeof *p->slots))) {
        free(p);
        snprintf(err, err_len, "out of memory");
        return QVL_E_NOMEM;
    }
    pthread_mutex_init(&p->mu, NULL);
    p->m = m;
    p->image_pad = qvl_model_image_token(m);
    p->q_max = queue_max;
    p->n_slots = n_slots;
    qvl_status st = QVL_OK;
    for (int i = 0; i < n_slots; i++) {
        p->slots[i].id = i;
        p->slots[i].pool = p;
        pthread_cond_init(&p->slots[i].cond, NULL);
    }
    for (int i = 0; i < n_slots; i++) {
        srv_slot *s = &p->slots[i];
        char e[512] = "";
        st = qvl_ctx_create(m, cp, &s->ctx, e, sizeof e);
        if (st != QVL_OK) {
            snprintf(err, err_len, "slot %d: %s", i, e);
            break;
        }
        /* the first request's KV chunk and scratch rows now, not during its first token */
        qvl_ctx_prefault(s->ctx, 256);
        if (pthread_create(&s->th, NULL, worker, s) != 0) {
            snprintf(err, err_len, "slot %d: cannot start a thread", i);
            st = QVL_E_NOMEM;
            break;
        }
        s->th_started = true;
    }
    if (st != QVL_OK) {
        srv_pool_free(p);
        return st;
    }
    *out = p;
    return QVL_OK;
}

int srv_pool_submit(srv_pool *p, srv_job *j) {
    pthread_mutex_lock(&p->mu);
    if (p->stopping) {
        pthread_mutex_unlock(&p->mu);
        return -2;
    }
    int idle = 0;
    for (int i = 0; i < p->n_slots; i++)
        idle += p->slots[i].job == NULL;
    if (idle == 0 && p->q_len >= p->q_max) {
        pthread_mutex_unlock(&p->mu);
        return -1;
    }
    j->refs++;
    j->t_submit = srv_now_ms();
    j->state = JOB_QUEUED;
    j->next = NULL;
    if (p->q_tail)
        p->q_tail->next = j;
    else
        p->q_head = j;
    p->q_tail = j;
    p->q_len++;
    dispatch(p);
    pthread_mutex_unlock(&p->mu);
    return 0;
}

/* Remove a queued job and finish it with status st. Pool lock held. */
static void unqueue_locked(srv_pool *p, srv_job *j, qvl_status st, const char *msg) {
    srv_job **pp = &p->q_head;
    srv_job *prev = NULL;
    while (*pp && *pp != j) {
        prev = *pp;
        pp = &(*pp)->next;
    }
    if (!*pp)
        return;
    *pp = j->next;
    if (p->q_tail == j)
        p->q_tail = prev;
    p->q_len--;
    j->next = NULL;
    j->state = JOB_DONE;
    j->status = st;
    j->finish = QVL_FINISH_CANCELLED;
    snprintf(j->err, sizeof j->err, "%s", msg);
    pthread_cond_broadcast(&j->cond);
    release_locked(j);
}

bool srv_pool_full(srv_pool *p) {
    pthread_mutex_lock(&p->mu);
    int idle = 0;
    for (int i = 0; i < p->n_slots; i++)
        idle += p->slots[i].job == NULL;
    bool full = p->stopping || (idle == 0 && p->q_len >= p->q_max);
    pthread_mutex_unlock(&p->mu);
    return full;
}

void srv_job_cancel(srv_pool *p, srv_job *j) {
    atomic_store(&j->cancel, 1);
    pthread_mutex_lock(&p->mu);
    if (j->state == JOB_QUEUED)
        unqueue_locked(p, j, QVL_E_CANCELLED, "cancelled: the client went away");
    pthread_mutex_unlock(&p->mu);
}

bool srv_job_wait(srv_pool *p, srv_job *j, int timeout_ms) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += timeout_ms / 1000;
    ts.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&p->mu);
    if (j->state != JOB_DONE)
        pthread_cond_timedwait(&j->cond, &p->mu, &ts);
    bool done = j->state == JOB_DONE;
    pthread_mutex_unlock(&p->mu);
    return done;
}

void srv_pool_stats(srv_pool *p, int *n_slots, int *idle, int *queued) {
    pthread_mutex_lock(&p->mu);
    int n = 0;
    for (int i = 0; i < p->n_slots; i++)
        n += p->slots[i].job == NULL;
    *n_slots = p->n_slots;
    *idle = n;
    *queued = p->q_len;
    pthread_mutex_unlock(&p->mu);
}

void srv_pool_shutdown(srv_pool *p) {
    pthread_mutex_lock(&p->mu);
    p->stopping = true;
    while (p->q_head)
        unqueue_locked(p, p->q_head, QVL_E_CANCELLED, "the server is shutting down");
    for (int i = 0; i < p->n_slots; i++) {
        if (p->slots[i].job)
            atomic_store(&p->slots[i].job->cancel, 1);
        pthread_cond_signal(&p->slots[i].cond);
    }
    pthread_mutex_unlock(&p->mu);
}

void srv_pool_free(srv_pool *p) {
    if (!p)
        return;
    srv_pool_shutdown(p);
    for (int i = 0; i < p->n_slots; i++) {
        srv_slot *s = &p->slots[i];
        if (s->th_started)
            pthread_join(s->th, NULL);
        qvl_ctx_free(s->ctx);
        cache_clear(s);
        pthread_cond_destroy(&s->cond);
    }
    pthread_mutex_destroy(&p->mu);
    free(p->slots);
    free(p);
}
