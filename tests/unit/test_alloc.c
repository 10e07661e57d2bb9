/* test_alloc.c - allocation-failure sweeps. For each operation the test first counts the
 * allocations a successful run makes (qvl_alloc_count), then for N = 0, 1, 2, ... fails the N-th
 * one (qvl_alloc_fail_at) and checks that the operation either returns QVL_E_NOMEM with its
 * out-parameters cleared, or succeeds correctly (an allocation that was optional), that the heap
 * in use is the same before and after (no leak, measured per N; LeakSanitizer also checks the
 * whole run in the sanitizer build), and that the process stays usable (the next normal run
 * gives the same result). Operations: model loading of the tiny fixture model, context creation,
 * PNG and JPEG decoding, one qvl_ctx_eval with an image, and one generation step.
 *
 * Model loading is swept at every N up to the end of the tokenizer, then strided (every run
 * there parses the whole 11 MB tokenizer.json first; see test_model_load); everything else is
 * swept at every N. QVL_ALLOC_FULL=1 sweeps every N everywhere. cJSON's heap is routed through
 * qvl_malloc with qvl_json_init() so the JSON parsers are reached too. Environment:
 * QVL_ALLOC_THREADS (context threads, default 2), QVL_ALLOC_POINTS, QVL_ALLOC_VERBOSE=1 (list
 * the optional allocations). */
#include "check.h"
#include "common.h"
#include "image.h"
#include "st.h"
#include "tok.h"

#include <stdint.h>

#if defined(__SANITIZE_ADDRESS__)
#    define QVL_HAVE_ASAN 1
#elif defined(__has_feature)
#    if __has_feature(address_sanitizer)
#        define QVL_HAVE_ASAN 1
#    endif
#endif
#ifdef QVL_HAVE_ASAN
/* from the sanitizer runtime (sanitizer/allocator_interface.h, which GCC does not install) */
size_t __sanitizer_get_current_allocated_bytes(void);
#endif

void qvl_json_init(void); /* src/jsonhooks.c */

/* Bytes of heap in use now (all threads), exact under AddressSanitizer. glibc's mallinfo2 counts
 * chunks parked in the per-thread caches as in use, so without ASan the per-N leak check is off
 * (0 always) and leaks are left to the LeakSanitizer run of the sanitizer build. */
static size_t heap_in_use(void) {
#ifdef QVL_HAVE_ASAN
    return __sanitizer_get_current_allocated_bytes();
#else
    return 0;
#endif
}

/* Context threads (QVL_ALLOC_THREADS, default 2: the pool's own allocations are swept too). */
static int ctx_threads(void) {
    const char *e = getenv("QVL_ALLOC_THREADS");
    return e && atoi(e) > 0 ? atoi(e) : 2;
}

static const char *model_dir(void) {
    return shared_path("fixtures/tiny-qwen3vl/model");
}

/* Run `op` with the N-th allocation failing, for the N chosen by `pick`; shared checks. */
typedef qvl_status (*op_fn)(void *user, char *err, size_t err_len);
typedef bool (*ok_fn)(void *user); /* after QVL_OK: is the result right? then release it */
typedef void (*undo_fn)(void *user); /* after a failure: release / check what is left */

typedef struct sweep_stats {
    long total;    /* allocations of a normal run */
    long tried;    /* values of N run */
    long nomem;    /* runs that returned QVL_E_NOMEM */
    long ok;       /* runs that succeeded (optional allocation) */
    long wrong;    /* runs that returned another status */
    long leaks;    /* runs after which the heap grew */
} sweep_stats;

static bool full_sweep(void) {
    const char *e = getenv("QVL_ALLOC_FULL");
    return e && *e == '1';
}

/* One run with allocation n failing; returns the status and updates the stats. */
static qvl_status run_one(const char *what, long n, op_fn op, ok_fn ok, undo_fn undo, void *user,
                          sweep_stats *st) {
    char err[512] = "";
    size_t before = heap_in_use();
    qvl_alloc_fail_at(n, 0);
    qvl_status s = op(user, err, sizeof err);
    long used = qvl_alloc_fail_at(-1, 0);
    st->tried++;
    if (s == QVL_OK) {
        st->ok++;
        if (getenv("QVL_ALLOC_VERBOSE"))
            printf("%s: fail at %ld: succeeded (optional allocation)\n", what, n);
        CHECKF(ok(user), "%s: fail at %ld: succeeded with a wrong result", what, n);
    } else {
        if (s == QVL_E_NOMEM) {
            st->nomem++;
        } else {
            st->wrong++;
            fprintf(stderr, "%s: fail at %ld: status %s instead of out of memory: %s\n", what, n,
                    qvl_status_str(s), err);
        }
        CHECKF(n < used, "%s: fail at %ld: failed (%s) without reaching that allocation", what,
               n, qvl_status_str(s));
        undo(user);
    }
    size_t after = heap_in_use();
    if (after > before) {
        st->leaks++;
        fprintf(stderr, "%s: fail at %ld (status %s): %zu bytes more heap in use\n", what, n,
                qvl_status_str(s), after - before);
    }
    return s;
}

/* Which N a sweep runs: every N below `full_until`, every N within 8 of a mark (a phase
 * boundary), and every `stride`-th N elsewhere. QVL_ALLOC_FULL=1 runs every N. */
typedef struct sweep_plan {
    long full_until;
    long stride;
    long marks[8];
    int n_marks;
} sweep_plan;

static bool plan_wants(const sweep_plan *p, long n) {
    if (!p || full_sweep() || p->stride <= 1 || n < p->full_until)
        return true;
    for (int i = 0; i < p->n_marks; i++)
        if (n >= p->marks[i] - 8 && n < p->marks[i] + 8)
            return true;
    return (n - p->full_until) % p->stride == 0;
}

/* Sweep N over [0, total) as `plan` says (NULL: every N), then run once normally and check the
 * result, then a few sticky failures. */
static sweep_stats sweep(const char *what, long total, const sweep_plan *plan, op_fn op, ok_fn ok,
                         undo_fn undo, void *user) {
    sweep_stats st = {0};
    st.total = total;
    for (long n = 0; n < total; n++)
        if (plan_wants(plan, n))
            run_one(what, n, op, ok, undo, user, &st);
    /* usable afterwards: a normal run succeeds with the right result */
    char err[512] = "";
    qvl_alloc_fail_at(-1, 0);
    qvl_status s = op(user, err, sizeof err);
    CHECKF(s == QVL_OK, "%s: normal run after the sweep: %s: %s", what, qvl_status_str(s), err);
    if (s == QVL_OK)
        CHECK(ok(user));
    /* the sticky mode too: every allocation from N on fails (a real out-of-memory state) */
    sweep_stats sticky = {0};
    for (long n = 0; n < total; n += total / 7 + 1) {
        size_t before = heap_in_use();
        qvl_alloc_fail_at(n, 1);
        s = op(user, err, sizeof err);
        qvl_alloc_fail_at(-1, 0);
        if (s == QVL_OK)
            CHECK(ok(user));
        else {
            CHECKF(s == QVL_E_NOMEM, "%s: sticky fail from %ld: %s: %s", what, n,
                   qvl_status_str(s), err);
            undo(user);
        }
        CHECKF(heap_in_use() <= before, "%s: sticky fail from %ld leaks", what, n);
        sticky.tried++;
    }
    printf("%s: %ld allocations; swept %ld of them (+%ld sticky): %ld out-of-memory, %ld "
           "succeeded, %ld other status, %ld leaked\n",
           what, total, st.tried, sticky.tried, st.nomem, st.ok, st.wrong, st.leaks);
    CHECKF(st.wrong == 0, "%s: %ld runs returned a status other than out of memory", what,
           st.wrong);
    CHECKF(st.leaks == 0, "%s: %ld runs leaked", what, st.leaks);
    CHECK(st.tried > 0);
    return st;
}

/* ---- model loading ------------------------------------------------------------------------- */

typedef struct load_state {
    qvl_model *m;
} load_state;

static qvl_status op_load(void *u, char *err, size_t err_len) {
    load_state *L = u;
    return qvl_model_load(model_dir(), NULL, &L->m, err, err_len);
}

static bool ok_load(void *u) {
    load_state *L = u;
    bool good = L->m && qvl_model_hidden(L->m) == 64 && qvl_model_n_vocab(L->m) == 151936;
    qvl_model_free(L->m);
    L->m = NULL;
    return good;
}

static void undo_load(void *u) {
    load_state *L = u;
    CHECK(L->m == NULL);
    qvl_model_free(L->m);
    L->m = NULL;
}

/* First N >= from whose failure message contains `needle` (-1 if none before `total`). */
static long first_failing_in(long from, long total, const char *needle) {
    char err[512];
    for (long n = from; n < total; n++) {
        qvl_model *m = NULL;
        err[0] = 0;
        qvl_alloc_fail_at(n, 0);
        qvl_status s = qvl_model_load(model_dir(), NULL, &m, err, sizeof err);
        qvl_alloc_fail_at(-1, 0);
        qvl_model_free(m);
        if (s != QVL_OK && strstr(err, needle))
            return n;
    }
    return -1;
}

/* Allocations of a successful call of f (a loader run on its own). */
static long count_tok(void) {
    char path[1024], err[512];
    snprintf(path, sizeof path, "%s/tokenizer.json", model_dir());
    qvl_tok *t = NULL;
    qvl_alloc_fail_at(-1, 0);
    qvl_status s = qvl_tok_load(path, &t, err, sizeof err);
    long n = qvl_alloc_fail_at(-1, 0);
    CHECKF(s == QVL_OK, "tokenizer load: %s", err);
    qvl_tok_free(t);
    return n;
}

static long count_st(void) {
    char err[512];
    qvl_st *st = NULL;
    qvl_alloc_fail_at(-1, 0);
    qvl_status s = qvl_st_open_dir(model_dir(), &st, err, sizeof err);
    long n = qvl_alloc_fail_at(-1, 0);
    CHECKF(s == QVL_OK, "safetensors open: %s", err);
    qvl_st_free(st);
    return n;
}

/* Every N up to the end of the tokenizer (cheap: each run stops early); after it every run
 * loads the whole 11 MB tokenizer.json first, so the safetensors header (cJSON nodes) and weight
 * phases are strided to about QVL_ALLOC_POINTS (default 30) runs plus 8 on each side of every
 * phase boundary. */
static void test_model_load(void) {
    load_state L = {0};
    char err[512];
    qvl_alloc_fail_at(-1, 0);
    qvl_status s = qvl_model_load(model_dir(), NULL, &L.m, err, sizeof err);
    long total = qvl_alloc_fail_at(-1, 0);
    CHECKF(s == QVL_OK, "model load: %s", err);
    if (s != QVL_OK)
        return;
    qvl_model_free(L.m);
    L.m = NULL;
    long n_tok = count_tok();
    long n_st = count_st();
    long tok_lo = first_failing_in(0, total, "tokenizer.json");
    long st_lo = tok_lo >= 0 ? first_failing_in(tok_lo + n_tok, total, ".safetensors") : -1;
    CHECKF(tok_lo >= 0 && st_lo >= 0, "model load: tokenizer at %ld, safetensors at %ld", tok_lo,
           st_lo);
    if (tok_lo < 0 || st_lo < 0)
        return;
    const char *e = getenv("QVL_ALLOC_POINTS");
    long points = e && atol(e) > 0 ? atol(e) : 30;
    sweep_plan plan = {tok_lo + n_tok + 8, (total - (tok_lo + n_tok)) / points + 1,
                       {st_lo, st_lo + n_st, total}, 3};
    printf("model load: %ld allocations: configs %ld, tokenizer %ld (from #%ld), safetensors "
           "%ld (from #%ld), weights %ld; every N below #%ld, then every %ld-th%s\n",
           total, tok_lo, n_tok, tok_lo, n_st, st_lo, total - st_lo - n_st, plan.full_until,
           plan.stride, full_sweep() ? " (QVL_ALLOC_FULL=1: all)" : "");
    sweep("model load", total, &plan, op_load, ok_load, undo_load, &L);
}

/* ---- context creation ---------------------------------------------------------------------- */

typedef struct ctx_state {
    const qvl_model *m;
    qvl_ctx *c;
} ctx_state;

static qvl_status op_ctx(void *u, char *err, size_t err_len) {
    ctx_state *C = u;
    qvl_ctx_params p = qvl_ctx_default_params();
    p.n_ctx = 512;
    p.n_threads = ctx_threads();
    return qvl_ctx_create(C->m, &p, &C->c, err, err_len);
}

static bool ok_ctx(void *u) {
    ctx_state *C = u;
    bool good = C->c && qvl_ctx_n_ctx(C->c) == 512 && qvl_ctx_n_past(C->c) == 0;
    qvl_ctx_free(C->c);
    C->c = NULL;
    return good;
}

static void undo_ctx(void *u) {
    ctx_state *C = u;
    CHECK(C->c == NULL);
    qvl_ctx_free(C->c);
    C->c = NULL;
}

/* ---- image decoding ------------------------------------------------------------------------ */

typedef struct img_state {
    const char *path;
    int w, h;
    qvl_image *img;
} img_state;

static qvl_status op_img(void *u, char *err, size_t err_len) {
    img_state *I = u;
    return qvl_image_load_file(I->path, 0, &I->img, err, err_len);
}

static bool ok_img(void *u) {
    img_state *I = u;
    int w = 0, h = 0;
    qvl_image_size(I->img, &w, &h);
    qvl_image_free(I->img);
    I->img = NULL;
    return w == I->w && h == I->h;
}

static void undo_img(void *u) {
    img_state *I = u;
    CHECK(I->img == NULL);
    qvl_image_free(I->img);
    I->img = NULL;
}

static void test_image(const char *rel, int w, int h) {
    img_state I = {shared_path(rel), w, h, NULL};
    char err[512];
    qvl_alloc_fail_at(-1, 0);
    qvl_status s = op_img(&I, err, sizeof err);
    long total = qvl_alloc_fail_at(-1, 0);
    CHECKF(s == QVL_OK, "%s: %s", rel, err);
    if (s != QVL_OK)
        return;
    CHECK(ok_img(&I));
    sweep(rel, total, NULL, op_img, ok_img, undo_img, &I);
}

/* ---- eval and one generation step ---------------------------------------------------------- */

typedef struct gen_state {
    qvl_ctx *c;
    qvl_image *img;
    const int32_t *ids;
    size_t n_ids;
    float logit0;    /* logits[0] after the prompt */
    int32_t token;   /* greedy token after the prompt */
    qvl_gen_result r;
} gen_state;

static qvl_status op_eval(void *u, char *err, size_t err_len) {
    gen_state *G = u;
    qvl_ctx_reset(G->c);
    qvl_image *imgs[1] = {G->img};
    qvl_status s = qvl_ctx_eval(G->c, G->ids, G->n_ids, imgs, 1);
    if (s != QVL_OK)
        snprintf(err, err_len, "%s", qvl_ctx_errmsg(G->c));
    return s;
}

static bool ok_eval(void *u) {
    gen_state *G = u;
    int nv = 0;
    const float *lg = qvl_ctx_logits(G->c, &nv);
    return qvl_ctx_n_past(G->c) == (int64_t)G->n_ids && lg && lg[0] == G->logit0;
}

static void undo_eval(void *u) {
    gen_state *G = u;
    /* "on error the context is left as it was before the call": empty after the reset */
    CHECK(qvl_ctx_n_past(G->c) == 0);
}

static qvl_status op_gen(void *u, char *err, size_t err_len) {
    gen_state *G = u;
    qvl_gen_params p = qvl_gen_default_params();
    p.max_new_tokens = 1;
    p.temperature = 0;
    static const char *const stop[1] = {"\n\n"};
    p.stop = stop;
    p.n_stop = 1;
    p.logprobs = 1; /* and the log-probability arrays */
    p.top_logprobs = 2;
    qvl_status s = qvl_ctx_generate(G->c, &p, NULL, NULL, &G->r);
    if (s != QVL_OK)
        snprintf(err, err_len, "%s", qvl_ctx_errmsg(G->c));
    return s;
}

static bool ok_gen(void *u) {
    gen_state *G = u;
    bool good = G->r.n_tokens == 1 && G->r.tokens && G->r.tokens[0] == G->token && G->r.text &&
                G->r.logprobs && G->r.n_top == 2 && G->r.top_ids[0] == G->token &&
                qvl_ctx_n_past(G->c) == (int64_t)G->n_ids;
    if (!good)
        fprintf(stderr, "generate: n_tokens %zu token %d text %p n_past %lld\n", G->r.n_tokens,
                G->r.tokens ? G->r.tokens[0] : -1, (void *)G->r.text,
                (long long)qvl_ctx_n_past(G->c));
    qvl_gen_result_free(&G->r);
    return good;
}

static void undo_gen(void *u) {
    gen_state *G = u;
    /* the prompt stays evaluated: the context is usable for a retry */
    CHECK(qvl_ctx_n_past(G->c) == (int64_t)G->n_ids);
    CHECK(qvl_ctx_logits(G->c, NULL) != NULL);
    qvl_gen_result_free(&G->r);
}

static void test_eval_generate(const qvl_model *m) {
    char err[512];
    qvl_ctx_params cp = qvl_ctx_default_params();
    cp.n_ctx = 512;
    cp.n_threads = ctx_threads();
    gen_state G = {0};
    qvl_status s = qvl_ctx_create(m, &cp, &G.c, err, sizeof err);
    CHECKF(s == QVL_OK, "ctx: %s", err);
    s = qvl_image_load_file(shared_path("fixtures/tiny-qwen3vl/images/rgb_64x64.png"), 0, &G.img,
                            err, sizeof err);
    CHECKF(s == QVL_OK, "image: %s", err);
    qvl_message msg = {"user", "What is this?", 1, 0};
    int32_t *ids = NULL;
    size_t n_ids = 0;
    qvl_image_opts o = {0};
    if (s == QVL_OK)
        s = qvl_prompt_build(m, &msg, 1, 1, &G.img, 1, &o, &ids, &n_ids, err, sizeof err);
    CHECKF(s == QVL_OK, "prompt: %s", err);
    if (s != QVL_OK)
        goto done;
    G.ids = ids;
    G.n_ids = n_ids;
    /* reference run, counting */
    qvl_alloc_fail_at(-1, 0);
    s = op_eval(&G, err, sizeof err);
    long n_eval = qvl_alloc_fail_at(-1, 0);
    CHECKF(s == QVL_OK, "eval: %s", err);
    if (s != QVL_OK)
        goto done;
    G.logit0 = qvl_ctx_logits(G.c, NULL)[0];
    s = op_gen(&G, err, sizeof err);
    long n_gen = qvl_alloc_fail_at(-1, 0);
    CHECKF(s == QVL_OK && G.r.n_tokens == 1, "generate: %s", err);
    if (s != QVL_OK || G.r.n_tokens != 1)
        goto done;
    G.token = G.r.tokens[0];
    qvl_gen_result_free(&G.r);
    sweep("eval (prompt with one image)", n_eval, NULL, op_eval, ok_eval, undo_eval, &G);
    /* the sweep ends with failed runs: evaluate the prompt again */
    s = op_eval(&G, err, sizeof err);
    CHECKF(s == QVL_OK, "eval: %s", err);
    sweep("generate (1 token)", n_gen, NULL, op_gen, ok_gen, undo_gen, &G);
done:
    qvl_free(ids);
    qvl_image_free(G.img);
    qvl_ctx_free(G.c);
}

int main(void) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    qvl_json_init();
    /* warm-up: one-time library and libc state (stdio, locale, thread stacks) before measuring */
    {
        char err[512];
        qvl_model *m = NULL;
        qvl_ctx *c = NULL;
        qvl_image *img = NULL;
        if (qvl_model_load(model_dir(), NULL, &m, err, sizeof err) == QVL_OK) {
            qvl_ctx_params cp = qvl_ctx_default_params();
            cp.n_ctx = 512;
            cp.n_threads = ctx_threads();
            if (qvl_ctx_create(m, &cp, &c, err, sizeof err) == QVL_OK)
                qvl_ctx_free(c);
        }
        qvl_model_free(m);
        if (qvl_image_load_file(shared_path("fixtures/tiny-qwen3vl/images/rgb_400x300_q90.jpg"),
                                0, &img, err, sizeof err) == QVL_OK)
            qvl_image_free(img);
    }
    test_image("fixtures/tiny-qwen3vl/images/rgb_64x64.png", 64, 64);
    test_image("fixtures/tiny-qwen3vl/images/rgb_400x300_q90.jpg", 400, 300);

    char err[512];
    qvl_model *m = NULL;
    qvl_status s = qvl_model_load(model_dir(), NULL, &m, err, sizeof err);
    CHECKF(s == QVL_OK, "model: %s", err);
    if (s == QVL_OK) {
        ctx_state C = {m, NULL};
        qvl_alloc_fail_at(-1, 0);
        s = op_ctx(&C, err, sizeof err);
        long total = qvl_alloc_fail_at(-1, 0);
        CHECKF(s == QVL_OK, "ctx: %s", err);
        if (s == QVL_OK) {
            CHECK(ok_ctx(&C));
            sweep("context create", total, NULL, op_ctx, ok_ctx, undo_ctx, &C);
        }
        test_eval_generate(m);
    }
    qvl_model_free(m);
    test_model_load();
    CHECK_DONE();
}
