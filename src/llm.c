/* llm.c - the Qwen3 text decoder over embeddings with a KV cache: RMSNorm, GQA attention with
 * per-head q/k RMSNorm and interleaved M-RoPE, SwiGLU MLP, DeepStack adds after the first layers,
 * final norm and lm_head (spec sections 5-8). Also the context object and its eval entry points:
 * token ids with images (vision encode + injection + get_rope_index), and caller-supplied
 * embeddings. */
#include "ctx.h"
#include "kern/kern.h"
#include "rope.h"
#include "sample.h"
#include "tok.h"
#include "video.h"
#include "vit.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

_Static_assert(QVL_KV_CHUNK % QVL_KERN_KV_CHUNK == 0, "KV chunks: whole attention chunk units");

void qvl_ctx_setf(qvl_ctx *c, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->err, sizeof c->err, fmt, ap);
    va_end(ap);
}

qvl_ctx_params qvl_ctx_default_params(void) {
    qvl_ctx_params p;
    memset(&p, 0, sizeof p);
    return p;
}

int qvl_kv_type_from_name(const char *name, qvl_kv_type *out) {
    static const char *const names[] = {"f32", "bf16", "f16"};
    int i = qvl_name_index(names, 3, name);
    if (i >= 0)
        *out = (qvl_kv_type)i;
    return i >= 0;
}

const char *qvl_kv_type_name(qvl_kv_type t) {
    return t == QVL_KV_BF16 ? "bf16" : t == QVL_KV_F16 ? "f16" : t == QVL_KV_F32 ? "f32" : "?";
}

const char *qvl_ctx_errmsg(const qvl_ctx *c) {
    return c ? c->err : "no context";
}

int64_t qvl_ctx_n_past(const qvl_ctx *c) {
    return c->n_past;
}

int64_t qvl_ctx_n_ctx(const qvl_ctx *c) {
    return c->n_ctx;
}

int64_t qvl_ctx_next_pos(const qvl_ctx *c) {
    return c->next_pos;
}

void qvl_ctx_timings(const qvl_ctx *c, double *vision_ms, double *prefill_ms) {
    if (vision_ms)
        *vision_ms = c->vision_ms;
    if (prefill_ms)
        *prefill_ms = c->prefill_ms;
}

void qvl_ctx_set_progress(qvl_ctx *c, qvl_progress_fn fn, void *user) {
    if (!c)
        return;
    c->progress = fn;
    c->progress_user = user;
}

void qvl_ctx_set_image_opts(qvl_ctx *c, const qvl_image_opts *o) {
    if (!c)
        return;
    if (o)
        c->image = *o;
    else
        memset(&c->image, 0, sizeof c->image);
}

void qvl_ctx_reset(qvl_ctx *c) {
    c->n_past = 0;
    c->next_pos = 0;
    c->has_logits = false;
    c->err[0] = 0;
}

const float *qvl_ctx_logits(const qvl_ctx *c, int *n_vocab) {
    if (n_vocab)
        *n_vocab = c->m->cfg.text.vocab_size;
    return c->has_logits ? c->logits : NULL;
}

/* The scratch holds n_batch rows of each of these regions, one region after the other: the
 * normed input and the projections' output (hidden), queries and the attention output, which
 * is the o projection's input (heads x head_dim: wider than hidden in the 4B and 32B models),
 * keys and values (KV heads x head_dim), gate and up (intermediate), M-RoPE cos and sin
 * (head_dim / 2). */
enum { SCR_A, SCR_Q, SCR_O, SCR_K, SCR_V, SCR_G, SCR_U, SCR_COS, SCR_SIN, SCR_N };

/* floats per row of region r (SCR_N: of all of them) */
static int64_t scratch_width(const qvl_text_cfg *tc, int r) {
    const int64_t hd = tc->head_dim;
    const int64_t w[SCR_N] = {tc->hidden,          tc->n_heads * hd,    tc->n_heads * hd,
                              tc->n_kv_heads * hd, tc->n_kv_heads * hd, tc->intermediate,
                              tc->intermediate,    hd / 2,              hd / 2};
    if (r < SCR_N)
        return w[r];
    int64_t sum = 0;
    for (int i = 0; i < SCR_N; i++)
        sum += w[i];
    return sum;
}

static float *scratch_region(const qvl_ctx *c, int r) {
    int64_t before = 0;
    for (int i = 0; i < r; i++)
        before += scratch_width(&c->m->cfg.text, i);
    return c->scratch + c->n_batch * before;
}

/* Fault in the first n rows of every region with all threads (a fresh context's first long
 * prompt would otherwise touch them one page at a time; decode uses one row). */
static void scratch_ready(qvl_ctx *c, int64_t n) {
    if (n <= c->scratch_rows)
        return;
    for (int r = 0; r < SCR_N; r++) {
        int64_t w = scratch_width(&c->m->cfg.text, r);
        qvl_pool_prefault(c->pool, scratch_region(c, r) + c->scratch_rows * w,
                          (size_t)((n - c->scratch_rows) * w) * sizeof(float));
    }
    c->scratch_rows = n;
}

qvl_status qvl_ctx_create(const qvl_model *m, const qvl_ctx_params *p, qvl_ctx **out, char *err,
                          size_t err_len) {
    if (!out)
        return QVL_E_INVAL;
    *out = NULL;
    if (!m) {
        qvl_errf(err, err_len, "no model");
        return QVL_E_INVAL;
    }
    qvl_ctx_params dp = qvl_ctx_default_params();
    if (!p)
        p = &dp;
    const qvl_text_cfg *tc = &m->cfg.text;
    int64_t n_ctx = p->n_ctx > 0 ? p->n_ctx : (tc->max_pos < 8192 ? tc->max_pos : 8192);
    if (n_ctx > tc->max_pos) {
        qvl_errf(err, err_len, "n_ctx %lld is larger than max_position_embeddings %lld",
                 (long long)n_ctx, (long long)tc->max_pos);
        return QVL_E_LIMIT;
    }
    if (p->n_ctx < 0 || p->n_threads < 0 || p->n_batch < 0 || p->n_threads > 256) {
        qvl_errf(err, err_len, "negative or too large context parameters");
        return QVL_E_INVAL;
    }
    if (p->kv_type != QVL_KV_F32 && p->kv_type != QVL_KV_BF16 && p->kv_type != QVL_KV_F16) {
        qvl_errf(err, err_len, "unknown KV cache type %d", (int)p->kv_type);
        return QVL_E_INVAL;
    }
    int n_threads = p->n_threads;
    if (n_threads == 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        n_threads = n > 0 ? (int)(n < 64 ? n : 64) : 1;
    }
    int n_batch = p->n_batch > 0 ? p->n_batch : 512;
    qvl_ctx *c = qvl_calloc(1, sizeof *c);
    if (!c) {
        qvl_errf(err, err_len, "out of memory");
        return QVL_E_NOMEM;
    }
    c->m = m;
    c->n_ctx = n_ctx;
    c->n_batch = n_batch;
    c->image = p->image;
    const int64_t H = tc->hidden, hd = tc->head_dim, L = tc->n_layers, B = n_batch;
    const int64_t nkv = (int64_t)tc->n_kv_heads * hd;
    c->kv_dt = p->kv_type == QVL_KV_BF16  ? QVL_DT_BF16
               : p->kv_type == QVL_KV_F16 ? QVL_DT_F16
                                          : QVL_DT_F32;
    size_t kv_elems, kv_bytes;
    c->kv_rows = (n_ctx + QVL_KV_CHUNK - 1) / QVL_KV_CHUNK * QVL_KV_CHUNK;
    if (!qvl_size_mul((size_t)L * (size_t)c->kv_rows, (size_t)nkv, &kv_elems) ||
        !qvl_size_mul(kv_elems, qvl_dtype_row_bytes(c->kv_dt, 1), &kv_bytes)) {
        qvl_errf(err, err_len, "KV cache size overflows");
        qvl_free(c);
        return QVL_E_LIMIT;
    }
    c->kv_bytes = kv_bytes;
    c->k_cache = qvl_malloc_big(kv_bytes);
    c->v_cache = qvl_malloc_big(kv_bytes);
    c->logits = qvl_malloc((size_t)tc->vocab_size * sizeof(float));
    c->tokens = qvl_malloc((size_t)n_ctx * sizeof(int32_t));
    c->scratch_bytes = (size_t)(B * scratch_width(tc, SCR_N)) * sizeof(float);
    c->scratch = qvl_malloc_big(c->scratch_bytes);
    c->inv_freq = qvl_malloc((size_t)hd / 2 * sizeof(float));
    c->decode_x = qvl_malloc((size_t)H * sizeof(float));
    qvl_status s = QVL_OK;
    if (!c->k_cache || !c->v_cache || !c->logits || !c->tokens || !c->scratch || !c->inv_freq ||
        !c->decode_x) {
        qvl_errf(err, err_len, "out of memory for a context of %lld tokens (KV cache %zu MB)",
                 (long long)n_ctx, 2 * kv_bytes >> 20);
        s = QVL_E_NOMEM;
        goto fail;
    }
    qvl_rope_inv_freq(tc->rope_theta, (int)hd, c->inv_freq);
    s = qvl_pool_create(n_threads, &c->pool);
    if (s != QVL_OK) {
        qvl_errf(err, err_len, "cannot start %d threads", n_threads);
        goto fail;
    }
    *out = c;
    return QVL_OK;
fail:
    qvl_ctx_free(c);
    return s;
}

void qvl_ctx_free(qvl_ctx *c) {
    if (!c)
        return;
    qvl_pool_free(c->pool);
    qvl_free_big(c->k_cache, c->kv_bytes);
    qvl_free_big(c->v_cache, c->kv_bytes);
    qvl_free(c->logits);
    qvl_free(c->tokens);
    qvl_free_big(c->scratch, c->scratch_bytes);
    qvl_free(c->inv_freq);
    qvl_free(c->decode_x);
    qvl_keep_free(&c->vit_keep);
    qvl_keep_free(&c->eval_keep);
    qvl_free(c);
}

/* One chunk of n <= n_batch rows through every layer. x: [n, H] (modified: residual stream).
 * pos: 3 x n (stride n). DeepStack: for l < n_ds, ds[l] rows are added in order at the rows
 * with vis[i] != 0; ds_off is the index of this chunk's first visual row. Writes K/V at
 * [n_past, n_past + n) and, if want_logits, the logits of the last row. */
/* n floats into the KV cache as its element type (16-bit types rounded to nearest even) */
static void kv_store(qvl_dtype dt, uint8_t *dst, const float *src, int64_t n) {
    if (dt == QVL_DT_F32) {
        memcpy(dst, src, (size_t)n * sizeof(float));
        return;
    }
    for (int64_t i = 0; i < n; i++) {
        uint16_t h = dt == QVL_DT_BF16 ? qvl_f32_to_bf16(src[i]) : qvl_f32_to_f16(src[i]);
        memcpy(dst + 2 * i, &h, 2);
    }
}

/* ---- faulting the cache in ahead of its writes ------------------------------------------------
 * The first write to a page of the cache costs far more than the write: the kernel clears the
 * page, and on a virtual machine whose host has taken back the guest's free memory the host
 * backs it first (1.6-2 ms per MB on this project's machines, one thread; a 2B q4 token is
 * 20 ms). A chunk of positions is 2 x n_layers regions of the cache (K and V of each layer;
 * 84 MB for the 2B model in f32), all faulted in at its first row, which stalled generation for
 * 0.2 s every QVL_KV_CHUNK tokens. So chunks are faulted in before they are written, by every
 * thread of the pool: in full before a batch of rows needs them (prefill), and during decode a
 * share at each of the QVL_KV_WARM_AHEAD positions before the next chunk starts. The pages'
 * contents are not touched (qvl_prefault), so warming a chunk that already holds rows is
 * harmless. A generation that stops inside the window has paid for pages it does not use (the
 * reason the window is short: with 128 positions, 64 tokens ending 24 before a chunk ran 3-6 %
 * slower than without warming; with 32, 2 MB per token, a 2B q4 token takes at most ~40 ms). */
typedef struct {
    qvl_ctx *c;
    size_t g0, g1; /* bytes [g0, g1) of chunk c->kv_warm's regions, K0 V0 K1 V1 ... */
} warm_job;

static size_t kv_chunk_region(const qvl_ctx *c) {
    const qvl_text_cfg *tc = &c->m->cfg.text;
    return (size_t)QVL_KV_CHUNK * (size_t)tc->n_kv_heads * (size_t)tc->head_dim *
           qvl_dtype_row_bytes(c->kv_dt, 1);
}

static void warm_task(void *arg, int ith, int nth) {
    const warm_job *w = arg;
    const qvl_ctx *c = w->c;
    const size_t rb = kv_chunk_region(c);
    const size_t layer = (size_t)c->kv_rows / QVL_KV_CHUNK * rb; /* bytes per layer */
    const size_t span = w->g1 - w->g0;
    size_t g = w->g0 + span * (size_t)ith / (size_t)nth,
           end = w->g0 + span * (size_t)(ith + 1) / (size_t)nth;
    while (g < end) {
        size_t r = g / rb, off = g % rb, len = rb - off < end - g ? rb - off : end - g;
        uint8_t *base = r % 2 ? c->v_cache : c->k_cache;
        qvl_prefault(base + (r / 2) * layer + (size_t)c->kv_warm * rb + off, len);
        g += len;
    }
}

/* bytes of a chunk's regions together (K and V of every layer) */
static size_t kv_chunk_total(const qvl_ctx *c) {
    return kv_chunk_region(c) * 2 * (size_t)c->m->cfg.text.n_layers;
}

/* Fault in the next len bytes of chunk c->kv_warm (all that is left if len is 0). */
static void kv_warm_some(qvl_ctx *c, size_t len) {
    const size_t total = kv_chunk_total(c);
    if (len == 0 || len > total - c->kv_warm_done)
        len = total - c->kv_warm_done;
    warm_job w = {c, c->kv_warm_done, c->kv_warm_done + len};
    qvl_pool_run(c->pool, warm_task, &w);
    c->kv_warm_done += len;
    if (c->kv_warm_done == total) {
        c->kv_warm++;
        c->kv_warm_done = 0;
    }
}

/* Before rows [n_past, n_past + n) are written: every chunk they touch in full, then, for a
 * decode step, this position's share of the next chunk. */
static void kv_warm(qvl_ctx *c, int64_t n) {
    const int64_t C = QVL_KV_CHUNK, chunks = c->kv_rows / C;
    while (c->kv_warm < chunks && c->kv_warm * C < c->n_past + n)
        kv_warm_some(c, 0);
    int64_t left = c->kv_warm * C - c->n_past; /* positions before the next chunk starts */
    if (n == 1 && c->kv_warm < chunks && left <= QVL_KV_WARM_AHEAD) {
        size_t rest = kv_chunk_total(c) - c->kv_warm_done;
        kv_warm_some(c, (rest + (size_t)left - 1) / (size_t)left);
    }
}

qvl_status qvl_ctx_prefault(qvl_ctx *c, int64_t n_positions) {
    if (!c || n_positions < 0)
        return QVL_E_INVAL;
    if (n_positions > c->kv_rows)
        n_positions = c->kv_rows;
    const int64_t C = QVL_KV_CHUNK, chunks = c->kv_rows / C;
    while (c->kv_warm < chunks && c->kv_warm * C < n_positions)
        kv_warm_some(c, 0);
    scratch_ready(c, n_positions < c->n_batch ? n_positions : c->n_batch);
    return QVL_OK;
}

static void forward_chunk(qvl_ctx *c, float *x, int64_t n, const int32_t *pos, int64_t pos_stride,
                          const uint8_t *vis, int n_ds, const float *const *ds, int64_t ds_off,
                          bool want_logits) {
    const qvl_model *m = c->m;
    const qvl_text_cfg *tc = &m->cfg.text;
    const int64_t H = tc->hidden, hd = tc->head_dim, half = hd / 2, I = tc->intermediate;
    const int64_t nh = tc->n_heads, nkvh = tc->n_kv_heads, nq = nh * hd, nkv = nkvh * hd;
    scratch_ready(c, n);
    float *a = scratch_region(c, SCR_A), *att = scratch_region(c, SCR_O);
    float *q = scratch_region(c, SCR_Q), *k = scratch_region(c, SCR_K);
    float *v = scratch_region(c, SCR_V), *g = scratch_region(c, SCR_G);
    float *u = scratch_region(c, SCR_U), *cs = scratch_region(c, SCR_COS);
    float *sn = scratch_region(c, SCR_SIN);
    for (int64_t i = 0; i < n; i++)
        qvl_mrope_angles(c->inv_freq, (int)half, tc->mrope_section, pos[i],
                         pos[pos_stride + i], pos[2 * pos_stride + i], cs + i * half,
                         sn + i * half);
    const float scale = 1.0f / sqrtf((float)hd);
    kv_warm(c, n);
    for (int l = 0; l < tc->n_layers; l++) {
        const qvl_llm_layer *Y = &m->layers[l];
        for (int64_t i = 0; i < n; i++)
            qvl_rmsnorm(a + i * H, x + i * H, Y->in_norm, H, tc->rms_eps);
        const qvl_mat_job qkv[3] = {{q, &Y->q, NULL}, {k, &Y->k, NULL}, {v, &Y->v, NULL}};
        qvl_op_matmul_multi(c->pool, a, n, qkv, 3);
        for (int64_t i = 0; i < n; i++) {
            for (int64_t h = 0; h < nh; h++) {
                float *qh = q + i * nq + h * hd;
                qvl_rmsnorm(qh, qh, Y->q_norm, hd, tc->rms_eps);
                qvl_rope_rotate(qh, cs + i * half, sn + i * half, (int)half);
            }
            for (int64_t h = 0; h < nkvh; h++) {
                float *kh = k + i * nkv + h * hd;
                qvl_rmsnorm(kh, kh, Y->k_norm, hd, tc->rms_eps);
                qvl_rope_rotate(kh, cs + i * half, sn + i * half, (int)half);
            }
        }
        /* The cache keeps each K/V head's rows contiguous within a chunk of QVL_KV_CHUNK
         * positions: decode attention streams every head's keys and values (rows of all heads
         * side by side gave it 256 bytes in every 2 KiB, 25-45 % slower), and the cache's huge
         * pages are faulted in chunk by chunk as the sequence grows (heads contiguous over the
         * whole context faulted all of it in at the first token). */
        const size_t es = qvl_dtype_row_bytes(c->kv_dt, 1);
        const int64_t C = QVL_KV_CHUNK;
        uint8_t *kc = (uint8_t *)c->k_cache + (size_t)((int64_t)l * c->kv_rows * nkv) * es;
        uint8_t *vc = (uint8_t *)c->v_cache + (size_t)((int64_t)l * c->kv_rows * nkv) * es;
        for (int64_t i = 0; i < n; i++) {
            int64_t p = c->n_past + i;
            for (int64_t h = 0; h < nkvh; h++) {
                size_t at = (size_t)((p / C) * nkv * C + h * C * hd + (p % C) * hd) * es;
                kv_store(c->kv_dt, kc + at, k + i * nkv + h * hd, hd);
                kv_store(c->kv_dt, vc + at, v + i * nkv + h * hd, hd);
            }
        }
        qvl_op_attn(c->pool, att, nq, q, nq, n, kc, hd, vc, hd, C * hd, C, nkv * C,
                    c->n_past + n, (int)nh, (int)nkvh, (int)hd, scale, true, c->n_past,
                    c->kv_dt);
        qvl_op_matmul(c->pool, a, att, n, &Y->o, NULL);
        qvl_add(x, a, n * H);
        for (int64_t i = 0; i < n; i++)
            qvl_rmsnorm(a + i * H, x + i * H, Y->post_norm, H, tc->rms_eps);
        const qvl_mat_job gu[2] = {{g, &Y->gate, NULL}, {u, &Y->up, NULL}};
        qvl_op_matmul_multi(c->pool, a, n, gu, 2);
        qvl_silu_mul(g, u, n * I);
        qvl_op_matmul(c->pool, a, g, n, &Y->down, NULL);
        qvl_add(x, a, n * H);
        if (l < n_ds && ds && vis) {
            int64_t r = ds_off;
            for (int64_t i = 0; i < n; i++)
                if (vis[i])
                    qvl_add(x + i * H, ds[l] + (r++) * H, H);
        }
        if (want_logits && c->dbg_layers)
            memcpy(c->dbg_layers + (int64_t)l * H, x + (n - 1) * H, (size_t)H * sizeof(float));
    }
    c->n_past += n;
    if (want_logits) {
        float *last = a;
        qvl_rmsnorm(last, x + (n - 1) * H, m->norm, H, tc->rms_eps);
        qvl_op_matmul(c->pool, c->logits, last, 1, &m->lm_head, NULL);
        c->has_logits = true;
    }
}

/* An eval's buffers (embeddings, positions, image features) are slices of one block that the
 * context keeps for the next eval (eval_keep, up to QVL_EVAL_KEEP_MAX bytes): a fresh block's
 * pages are faulted in by every thread, a kept one's are already there. */
#define QVL_EVAL_KEEP_MAX ((size_t)256 << 20)
typedef struct {
    size_t end;
    bool overflow;
} slab;

/* offset of a new 64-byte aligned slice of count elements of size bytes */
static size_t slab_add(slab *s, int64_t count, size_t size) {
    size_t bytes, at = (s->end + 63) & ~(size_t)63;
    if (count < 0 || !qvl_size_mul((size_t)count, size, &bytes) || at < s->end ||
        at > SIZE_MAX - bytes) {
        s->overflow = true;
        return 0;
    }
    s->end = at + bytes;
    return at;
}

/* the block for s; *own: the caller releases it with qvl_free_big(p, s->end). NULL (the
 * context's error set): too large or out of memory. */
static uint8_t *slab_get(qvl_ctx *c, const slab *s, bool *own) {
    *own = false;
    uint8_t *p = s->overflow ? NULL
                             : qvl_keep_get(&c->eval_keep, s->end ? s->end : 1,
                                            QVL_EVAL_KEEP_MAX, c->pool, own);
    if (!p)
        qvl_ctx_setf(c, "out of memory for the prompt's buffers (%zu MB)", s->end >> 20);
    return p;
}

/* ---- prompt scoring (qvl_ctx_eval_scored) ---------------------------------------------------- */
/* rows of final hidden states put through the lm_head at a time: 64 rows of the 151936-token
 * vocabulary are 39 MB of logits, and fewer make the GEMM's weight packing dominate */
#define QVL_SCORE_ROWS 64

typedef struct {
    const qvl_prompt_scores *s;
    const int32_t *ids;
    const float *logits; /* [nr][V] */
    int64_t g0, nr;      /* logits row r is prompt row g0 + r, which predicts ids[g0 + r + 1] */
    int32_t V;
} score_job;

static void score_task(void *arg, int ith, int nth) {
    const score_job *j = arg;
    const int k = j->s->n_top < j->V ? j->s->n_top : j->V;
    for (int64_t r = ith; r < j->nr; r += nth) {
        int64_t t = j->g0 + r + 1; /* the token this row scores */
        int32_t *ti = j->s->n_top ? j->s->top_ids + t * j->s->n_top : NULL;
        float *tl = j->s->n_top ? j->s->top_logprobs + t * j->s->n_top : NULL;
        qvl_logprobs_row(j->logits + r * j->V, j->V, j->ids[t], k, &j->s->logprobs[t], ti, tl);
        for (int i = k; i < j->s->n_top; i++) {
            ti[i] = -1;
            tl[i] = NAN;
        }
    }
}

/* Score the tokens that rows [g0, g0 + nb) of an n-row prompt predict, from their final hidden
 * states x (the last row predicts what follows the prompt: not scored here). */
static void score_rows(qvl_ctx *c, const float *x, int64_t g0, int64_t nb, int64_t n) {
    const qvl_model *m = c->m;
    const int64_t H = m->cfg.text.hidden;
    const int32_t V = m->cfg.text.vocab_size;
    float *nx = c->score_buf, *lg = nx + QVL_SCORE_ROWS * H;
    for (int64_t r0 = 0; r0 < nb && g0 + r0 < n - 1; r0 += QVL_SCORE_ROWS) {
        int64_t nr = nb - r0 < QVL_SCORE_ROWS ? nb - r0 : QVL_SCORE_ROWS;
        if (g0 + r0 + nr > n - 1)
            nr = n - 1 - (g0 + r0);
        for (int64_t r = 0; r < nr; r++)
            qvl_rmsnorm(nx + r * H, x + (r0 + r) * H, m->norm, H, m->cfg.text.rms_eps);
        qvl_op_matmul(c->pool, lg, nx, nr, &m->lm_head, NULL);
        score_job j = {c->score, c->score_ids, lg, g0 + r0, nr, V};
        qvl_pool_run(c->pool, score_task, &j);
    }
}

/* Run n rows of embeddings (consumed: used as the residual stream) in chunks of n_batch.
 * Returns false when the progress callback cancelled: the cache is then back where it was. */
static bool forward(qvl_ctx *c, float *embd, int64_t n, const int32_t *pos, const uint8_t *vis,
                    int n_ds, const float *const *ds) {
    const int64_t H = c->m->cfg.text.hidden, start = c->n_past;
    int64_t ds_off = 0;
    for (int64_t i0 = 0; i0 < n; i0 += c->n_batch) {
        int64_t nb = n - i0 < c->n_batch ? n - i0 : c->n_batch;
        forward_chunk(c, embd + i0 * H, nb, pos + i0, n, vis ? vis + i0 : NULL, n_ds, ds, ds_off,
                      i0 + nb == n);
        if (c->score)
            score_rows(c, embd + i0 * H, i0, nb, n);
        if (vis)
            for (int64_t i = 0; i < nb; i++)
                ds_off += vis[i0 + i] != 0;
        if (c->progress &&
            c->progress("prefill", (double)(i0 + nb), (double)n, c->progress_user)) {
            c->n_past = start;
            c->has_logits = false;
            return false;
        }
    }
    return true;
}

static int vit_progress(void *user, int done, int total) {
    qvl_ctx *c = user;
    return c->progress("vision", done, total, c->progress_user);
}

qvl_status qvl_ctx_eval_embd(qvl_ctx *c, const qvl_embd_batch *b) {
    if (!c)
        return QVL_E_INVAL;
    c->err[0] = 0;
    const qvl_model *m = c->m;
    const int64_t H = m->cfg.text.hidden;
    if (!b || !b->embd || b->n == 0) {
        qvl_ctx_setf(c, "eval_embd: empty batch");
        return QVL_E_INVAL;
    }
    if (b->dim != H) {
        qvl_ctx_setf(c, "eval_embd: embeddings have width %d, the model's hidden size is %lld",
                     b->dim, (long long)H);
        return QVL_E_INVAL;
    }
    if ((int64_t)b->n > c->n_ctx - c->n_past) {
        qvl_ctx_setf(c, "eval_embd: %zu rows do not fit: %lld of %lld context tokens are used",
                     b->n, (long long)c->n_past, (long long)c->n_ctx);
        return QVL_E_LIMIT;
    }
    if (b->n_deepstack < 0 || b->n_deepstack > m->cfg.vision.n_deepstack ||
        (b->n_deepstack > 0 && (!b->deepstack || !b->visual_mask))) {
        qvl_ctx_setf(c, "eval_embd: %d DeepStack arrays given (model has %d) or mask missing",
                     b->n_deepstack, m->cfg.vision.n_deepstack);
        return QVL_E_INVAL;
    }
    for (int k = 0; k < b->n_deepstack; k++)
        if (!b->deepstack[k]) {
            qvl_ctx_setf(c, "eval_embd: DeepStack array %d is NULL", k);
            return QVL_E_INVAL;
        }
    int64_t n = (int64_t)b->n;
    slab L = {0};
    size_t o_x = slab_add(&L, n * H, sizeof(float)), o_pos = slab_add(&L, 3 * n, sizeof(int32_t));
    bool own;
    uint8_t *base = slab_get(c, &L, &own);
    if (!base)
        return QVL_E_NOMEM;
    float *x = (float *)(base + o_x);
    int32_t *pos = (int32_t *)(base + o_pos);
    memcpy(x, b->embd, (size_t)(n * H) * sizeof(float));
    int64_t next = c->next_pos;
    if (b->pos) {
        int64_t mx = -1;
        for (int64_t i = 0; i < 3 * n; i++) {
            pos[i] = b->pos[i];
            if (pos[i] > mx)
                mx = pos[i];
        }
        next = b->next_pos > 0 ? b->next_pos : mx + 1;
    } else {
        for (int64_t i = 0; i < n; i++)
            pos[i] = pos[n + i] = pos[2 * n + i] = (int32_t)(next + i);
        next += n;
    }
    bool done = forward(c, x, n, pos, b->visual_mask, b->n_deepstack, b->deepstack);
    if (own)
        qvl_free_big(base, L.end);
    if (!done) {
        qvl_ctx_setf(c, "cancelled");
        return QVL_E_CANCELLED;
    }
    for (int64_t i = 0; i < n; i++)
        c->tokens[c->n_past - n + i] = -1;
    c->next_pos = next;
    return QVL_OK;
}

qvl_status qvl_ctx_eval(qvl_ctx *c, const int32_t *ids, size_t n_ids, qvl_image *const *images,
                        size_t n_images) {
    return qvl_ctx_eval_mm(c, ids, n_ids, images, n_images, NULL, 0);
}

qvl_status qvl_ctx_eval_scored(qvl_ctx *c, const int32_t *ids, size_t n_ids,
                               qvl_image *const *images, size_t n_images,
                               qvl_video *const *videos, size_t n_videos,
                               const qvl_prompt_scores *s) {
    if (!c)
        return QVL_E_INVAL;
    c->err[0] = 0;
    if (!s || !s->logprobs || s->n_top < 0 || s->n_top > QVL_MAX_TOP_LOGPROBS ||
        (s->n_top > 0 && (!s->top_ids || !s->top_logprobs))) {
        qvl_ctx_setf(c, "eval_scored: no output arrays, or n_top outside 0..%d",
                     QVL_MAX_TOP_LOGPROBS);
        return QVL_E_INVAL;
    }
    if (!ids || n_ids == 0) {
        qvl_ctx_setf(c, "eval: no tokens");
        return QVL_E_INVAL;
    }
    const int64_t H = c->m->cfg.text.hidden;
    const int32_t V = c->m->cfg.text.vocab_size;
    if (ids[0] < 0 || ids[0] >= V) {
        qvl_ctx_setf(c, "token id %d at position 0 is outside the vocabulary (0..%d)", ids[0],
                     V - 1);
        return QVL_E_INVAL;
    }
    size_t bytes;
    if (!qvl_size_mul((size_t)QVL_SCORE_ROWS * sizeof(float), (size_t)(H + V), &bytes) ||
        !(c->score_buf = qvl_malloc(bytes))) {
        qvl_ctx_setf(c, "out of memory for the prompt's logits");
        return QVL_E_NOMEM;
    }
    /* token 0, from the logits the context holds (before the eval replaces them) */
    const int k = s->n_top < V ? s->n_top : V;
    if (c->has_logits)
        qvl_logprobs_row(c->logits, V, ids[0], k, &s->logprobs[0], s->top_ids, s->top_logprobs);
    else
        s->logprobs[0] = NAN;
    for (int i = c->has_logits ? k : 0; i < s->n_top; i++) {
        s->top_ids[i] = -1;
        s->top_logprobs[i] = NAN;
    }
    c->score = s;
    c->score_ids = ids;
    qvl_status st = qvl_ctx_eval_mm(c, ids, n_ids, images, n_images, videos, n_videos);
    c->score = NULL;
    c->score_ids = NULL;
    qvl_free(c->score_buf);
    c->score_buf = NULL;
    return st;
}

/* One image or video of a prompt: its pixel rows and grid. */
typedef struct media {
    qvl_pixels px;
    int64_t n_tokens;
} media;

qvl_status qvl_ctx_eval_mm(qvl_ctx *c, const int32_t *ids, size_t n_ids,
                           qvl_image *const *images, size_t n_images, qvl_video *const *videos,
                           size_t n_videos) {
    if (!c)
        return QVL_E_INVAL;
    c->err[0] = 0;
    const qvl_model *m = c->m;
    const qvl_config *cfg = &m->cfg;
    const int64_t H = cfg->text.hidden, n = (int64_t)n_ids;
    if (!ids || n_ids == 0) {
        qvl_ctx_setf(c, "eval: no tokens");
        return QVL_E_INVAL;
    }
    if (n > c->n_ctx - c->n_past) {
        qvl_ctx_setf(c,
                     "the prompt has %lld tokens but only %lld of the context's %lld remain "
                     "(use a larger n_ctx)",
                     (long long)n, (long long)(c->n_ctx - c->n_past), (long long)c->n_ctx);
        return QVL_E_LIMIT;
    }
    if ((n_images > 0 && !images) || (n_videos > 0 && !videos)) {
        qvl_ctx_setf(c, "eval: images or videos is NULL");
        return QVL_E_INVAL;
    }
    int64_t n_img_pad = 0, n_vid_pad = 0;
    for (int64_t i = 0; i < n; i++) {
        if (ids[i] < 0 || ids[i] >= cfg->text.vocab_size) {
            qvl_ctx_setf(c, "token id %d at position %lld is outside the vocabulary (0..%d)",
                         ids[i], (long long)i, cfg->text.vocab_size - 1);
            return QVL_E_INVAL;
        }
        n_img_pad += ids[i] == cfg->image_token_id;
        n_vid_pad += ids[i] == cfg->video_token_id;
    }
    /* preprocess every image and video first: the pad counts must match before heavy work */
    const size_t n_media = n_images + n_videos;
    const int n_ds_model = cfg->vision.n_deepstack;
    qvl_status s = QVL_OK;
    media *md = qvl_calloc(n_media + 1, sizeof *md);
    qvl_grid *igrid = qvl_calloc(n_images + 1, sizeof *igrid);
    qvl_grid *vgrid = NULL;
    const float **ds = NULL;
    uint8_t *base = NULL;
    bool own = false;
    slab L = {0};
    if (!md || !igrid) {
        s = QVL_E_NOMEM;
        goto done;
    }
    int64_t n_img_feat = 0, n_vid_feat = 0, n_vgroups = 0;
    for (size_t i = 0; i < n_media; i++) {
        if (i < n_images)
            s = qvl_image_pixels(m, images[i], &c->image, &md[i].px, c->err, sizeof c->err);
        else
            s = qvl_video_pixels(m, videos[i - n_images], &md[i].px, c->err, sizeof c->err);
        if (s != QVL_OK)
            goto done;
        md[i].n_tokens = md[i].px.n_tokens;
        if (i < n_images) {
            igrid[i] = (qvl_grid){md[i].px.grid_t, md[i].px.grid_h, md[i].px.grid_w};
            n_img_feat += md[i].px.n_tokens;
        } else {
            n_vid_feat += md[i].px.n_tokens;
            n_vgroups += md[i].px.grid_t;
        }
    }
    if (n_img_feat != n_img_pad) {
        qvl_ctx_setf(c, "image features and image tokens do not match: tokens: %lld, features %lld",
                     (long long)n_img_pad, (long long)n_img_feat);
        s = QVL_E_INVAL;
        goto done;
    }
    if (n_vid_feat != n_vid_pad) {
        qvl_ctx_setf(c, "video features and video tokens do not match: tokens: %lld, features %lld",
                     (long long)n_vid_pad, (long long)n_vid_feat);
        s = QVL_E_INVAL;
        goto done;
    }
    /* The encoder writes the features of all media one after the other, images first, each
     * DeepStack feature as one array over them all; image pads take image rows in order, video
     * pads video rows in order, and the decoder adds the DeepStack rows in sequence order: the
     * encoder's order unless an image pad comes after a video pad, when they are gathered. */
    const int64_t n_feat = n_img_feat + n_vid_feat;
    const int n_ds = n_feat > 0 ? n_ds_model : 0;
    bool ds_in_order = true, seen_video = false;
    for (int64_t i = 0; i < n; i++) {
        seen_video |= ids[i] == cfg->video_token_id;
        ds_in_order &= !(seen_video && ids[i] == cfg->image_token_id);
    }
    const size_t o_pos = slab_add(&L, 3 * n, sizeof(int32_t)), o_vis = slab_add(&L, n, 1);
    const size_t o_x = slab_add(&L, n * H, sizeof(float));
    const size_t o_feat = slab_add(&L, n_feat * H, sizeof(float));
    const size_t o_ds = slab_add(&L, (int64_t)n_ds * n_feat * H, sizeof(float));
    const size_t o_dsg = slab_add(&L, ds_in_order ? 0 : (int64_t)n_ds * n_feat * H, sizeof(float));
    /* every frame group of a video is positioned like a one-frame image */
    vgrid = qvl_calloc((size_t)n_vgroups + 1, sizeof *vgrid);
    ds = qvl_calloc((size_t)n_ds + 1, sizeof *ds);
    if (!vgrid || !ds) {
        s = QVL_E_NOMEM;
        goto done;
    }
    if (!(base = slab_get(c, &L, &own))) {
        s = QVL_E_NOMEM;
        goto done;
    }
    int32_t *pos = (int32_t *)(base + o_pos);
    uint8_t *vis = base + o_vis;
    float *x = (float *)(base + o_x), *feat = (float *)(base + o_feat);
    float *dsall = (float *)(base + o_ds), *dsg = (float *)(base + o_dsg);
    for (size_t i = n_images, g = 0; i < n_media; i++)
        for (int t = 0; t < md[i].px.grid_t; t++)
            vgrid[g++] = (qvl_grid){1, md[i].px.grid_h, md[i].px.grid_w};
    int64_t next = 0;
    s = qvl_rope_index(ids, n, cfg->image_token_id, cfg->video_token_id, igrid, (int)n_images,
                       vgrid, (int)n_vgroups, cfg->vision.merge, c->next_pos, pos, &next,
                       c->err, sizeof c->err);
    if (s != QVL_OK)
        goto done;
    /* text embeddings */
    const qvl_mat *E = &m->embed;
    const size_t rb = qvl_dtype_row_bytes(E->dt, (size_t)H);
    for (int64_t i = 0; i < n; i++) {
        qvl_row_to_f32(E->dt, (const uint8_t *)E->data + (size_t)ids[i] * rb, x + i * H, H);
        vis[i] = ids[i] == cfg->image_token_id || ids[i] == cfg->video_token_id;
    }
    /* vision: encode each image / video */
    double t0 = qvl_time_ms();
    for (size_t i = 0, row = 0; i < n_media && s == QVL_OK; row += md[i].n_tokens, i++) {
        qvl_vit_cb cb = {c->progress ? vit_progress : NULL, c};
        s = qvl_vit_encode(m, c->pool, md[i].px.data, md[i].px.grid_t, md[i].px.grid_h,
                           md[i].px.grid_w, feat + row * H, dsall + row * H, n_feat * H, &cb,
                           &c->vit_keep, c->err, sizeof c->err);
        qvl_pixels_free(&md[i].px);
    }
    c->vision_ms += qvl_time_ms() - t0;
    if (s != QVL_OK)
        goto done;
    /* scatter the features into the embeddings */
    for (int64_t i = 0, r_img = 0, r_vid = n_img_feat, r = 0; i < n; i++) {
        if (!vis[i])
            continue;
        int64_t src = ids[i] == cfg->video_token_id ? r_vid++ : r_img++;
        memcpy(x + i * H, feat + src * H, (size_t)H * sizeof(float));
        if (!ds_in_order)
            for (int k = 0; k < n_ds; k++)
                memcpy(dsg + (k * n_feat + r) * H, dsall + (k * n_feat + src) * H,
                       (size_t)H * sizeof(float));
        r++;
    }
    for (int k = 0; k < n_ds; k++)
        ds[k] = (ds_in_order ? dsall : dsg) + k * n_feat * H;
    double t1 = qvl_time_ms();
    bool done_ok = forward(c, x, n, pos, n_feat > 0 ? vis : NULL, n_ds, ds);
    c->prefill_ms += qvl_time_ms() - t1;
    if (!done_ok) {
        qvl_ctx_setf(c, "prompt evaluation cancelled");
        s = QVL_E_CANCELLED;
        goto done;
    }
    memcpy(c->tokens + c->n_past - n, ids, (size_t)n * sizeof(int32_t));
    c->next_pos = next;
done:
    if (s == QVL_E_NOMEM && !c->err[0])
        qvl_ctx_setf(c, "out of memory evaluating %lld tokens", (long long)n);
    if (own)
        qvl_free_big(base, L.end);
    qvl_free(ds);
    for (size_t i = 0; md && i < n_media; i++)
        qvl_pixels_free(&md[i].px);
    qvl_free(md);
    qvl_free(igrid);
    qvl_free(vgrid);
    return s;
}

/* Feed one token at the next position (used by generation). */
qvl_status qvl_ctx_decode_one(qvl_ctx *c, int32_t id) {
    const qvl_model *m = c->m;
    const int64_t H = m->cfg.text.hidden;
    if (c->n_past >= c->n_ctx) {
        qvl_ctx_setf(c, "the context is full (%lld tokens)", (long long)c->n_ctx);
        return QVL_E_LIMIT;
    }
    if (id < 0 || id >= m->cfg.text.vocab_size) {
        qvl_ctx_setf(c, "token id %d is outside the vocabulary", id);
        return QVL_E_INVAL;
    }
    float *xb = c->decode_x;
    const qvl_mat *E = &m->embed;
    qvl_row_to_f32(E->dt,
                   (const uint8_t *)E->data + (size_t)id * qvl_dtype_row_bytes(E->dt, (size_t)H),
                   xb, H);
    int32_t pos[3] = {(int32_t)c->next_pos, (int32_t)c->next_pos, (int32_t)c->next_pos};
    forward_chunk(c, xb, 1, pos, 1, NULL, 0, NULL, 0, true);
    c->tokens[c->n_past - 1] = id;
    c->next_pos++;
    return QVL_OK;
}
