/* model.c - load a Hugging Face Qwen3-VL model directory: configs, tokenizer and safetensors
 * shards; resolve every tensor the config implies with its expected shape; keep the big matrices
 * in place in the mmap and small vectors as float copies. Also resolves hub repo ids through the
 * local Hugging Face cache. */
#include "model.h"
#include "pool.h"
#include "qcache.h"
#include "st.h"
#include "tok.h"

#include "kern/kern.h"

#include <cjson/cJSON.h>
#include <ctype.h>
#include <stdarg.h>
#include <time.h>
#include <unistd.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define MAX_JSON_BYTES (64u << 20)

qvl_model_params qvl_model_default_params(void) {
    qvl_model_params p;
    memset(&p, 0, sizeof p);
    return p;
}

/* ---- hub id resolution ----------------------------------------------------------------- */

static bool looks_like_repo_id(const char *s) {
    const char *slash = strchr(s, '/');
    if (!slash || slash == s || !slash[1] || strchr(slash + 1, '/'))
        return false;
    for (const char *c = s; *c; c++)
        if (!(isalnum((unsigned char)*c) || *c == '-' || *c == '_' || *c == '.' || *c == '/'))
            return false;
    return strstr(s, "..") == NULL;
}

/* newest snapshot directory (by mtime) under <cache>/models--ORG--NAME/snapshots */
static char *find_snapshot(const char *hub, const char *repo) {
    char name[2200];
    if ((size_t)snprintf(name, sizeof name, "%.1600s/models--%.500s/snapshots", hub, repo) >=
        sizeof name)
        return NULL;
    char *slash = strstr(name + strlen(hub) + 8, "/");
    if (slash) { /* ORG/NAME -> ORG--NAME */
        memmove(slash + 2, slash + 1, strlen(slash + 1) + 1);
        slash[0] = '-';
        slash[1] = '-';
    }
    DIR *d = opendir(name);
    if (!d)
        return NULL;
    char *best = NULL;
    time_t best_t = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.')
            continue;
        char *p = qvl_path_join(name, e->d_name);
        if (!p)
            break;
        struct stat st;
        char *cfg = qvl_path_join(p, "config.json");
        bool ok = cfg && stat(p, &st) == 0 && S_ISDIR(st.st_mode) && qvl_file_exists(cfg);
        qvl_free(cfg);
        if (ok && (!best || st.st_mtime > best_t)) {
            qvl_free(best);
            best = p;
            best_t = st.st_mtime;
        } else {
            qvl_free(p);
        }
    }
    closedir(d);
    return best;
}

qvl_status qvl_model_resolve(const char *arg, char **out, char *err, size_t err_len) {
    *out = NULL;
    if (!arg || !*arg) {
        qvl_errf(err, err_len, "no model directory given");
        return QVL_E_INVAL;
    }
    if (qvl_dir_exists(arg) || !looks_like_repo_id(arg)) {
        *out = qvl_strdup(arg);
        return *out ? QVL_OK : QVL_E_NOMEM;
    }
    char hubs[3][512];
    int n = 0;
    const char *e;
    if ((e = getenv("HF_HUB_CACHE")) && *e)
        snprintf(hubs[n++], sizeof hubs[0], "%s", e);
    if ((e = getenv("HF_HOME")) && *e)
        snprintf(hubs[n++], sizeof hubs[0], "%s/hub", e);
    if ((e = getenv("HOME")) && *e)
        snprintf(hubs[n++], sizeof hubs[0], "%s/.cache/huggingface/hub", e);
    for (int i = 0; i < n; i++) {
        char *s = find_snapshot(hubs[i], arg);
        if (s) {
            *out = s;
            return QVL_OK;
        }
    }
    char where[1600] = "";
    for (int i = 0; i < n; i++) {
        size_t l = strlen(where);
        snprintf(where + l, sizeof where - l, "%s%s", i ? ", " : "", hubs[i]);
    }
    qvl_errf(err, err_len,
             "'%s' is not a directory, and no snapshot of it with a config.json was found in the "
             "Hugging Face cache (looked in: %s)",
             arg, n ? where : "nowhere: HF_HUB_CACHE, HF_HOME and HOME are unset");
    return QVL_E_IO;
}

/* ---- tensor resolution ----------------------------------------------------------------- */

typedef struct loader {
    qvl_model *m;
    char *err;
    size_t err_len;
    qvl_status st;
    const qvl_st_tensor **used;
    size_t n_used, cap_used;
} loader;

static const char *tensor_file(const loader *L, const qvl_st_tensor *t) {
    return qvl_st_file_name(L->m->st, t->file);
}

static const qvl_st_tensor *need(loader *L, const char *name, int n_dims, const int64_t *shape,
                                 bool vision) {
    if (L->st != QVL_OK)
        return NULL;
    const qvl_st_tensor *t = qvl_st_find(L->m->st, name);
    if (!t) {
        L->st = QVL_E_FORMAT;
        qvl_errf(L->err, L->err_len, "%s: tensor %s is missing (the config implies it)",
                 L->m->dir, name);
        return NULL;
    }
    bool ok = t->n_dims == n_dims;
    for (int i = 0; ok && i < n_dims; i++)
        ok = t->shape[i] == shape[i];
    if (!ok) {
        char got[160] = "", want[160] = "";
        for (int i = 0; i < t->n_dims && i < 8; i++) {
            size_t l = strlen(got);
            snprintf(got + l, sizeof got - l, "%s%lld", i ? ", " : "", (long long)t->shape[i]);
        }
        for (int i = 0; i < n_dims; i++) {
            size_t l = strlen(want);
            snprintf(want + l, sizeof want - l, "%s%lld", i ? ", " : "", (long long)shape[i]);
        }
        L->st = QVL_E_FORMAT;
        qvl_errf(L->err, L->err_len, "%s: tensor %s has shape [%s], the config implies [%s]",
                 tensor_file(L, t), name, got, want);
        return NULL;
    }
    if (t->dtype != QVL_DT_F32 && t->dtype != QVL_DT_F16 && t->dtype != QVL_DT_BF16) {
        L->st = QVL_E_UNSUPPORTED;
        qvl_errf(L->err, L->err_len, "%s: tensor %s has dtype %s; qvl takes BF16, F16 or F32",
                 tensor_file(L, t), name, qvl_dtype_name(t->dtype));
        return NULL;
    }
    if (L->n_used == L->cap_used) {
        size_t nc = L->cap_used ? L->cap_used * 2 : 256;
        const qvl_st_tensor **nu = qvl_realloc(L->used, nc * sizeof *nu);
        if (!nu) {
            L->st = QVL_E_NOMEM;
            qvl_errf(L->err, L->err_len, "out of memory loading %s", name);
            return NULL;
        }
        L->used = nu;
        L->cap_used = nc;
    }
    L->used[L->n_used++] = t;
    uint64_t n = 1;
    for (int i = 0; i < n_dims; i++)
        n *= (uint64_t)shape[i];
    if (vision) {
        L->m->n_params_vision += n;
        L->m->bytes_vision += t->nbytes;
    } else {
        L->m->n_params_text += n;
        L->m->bytes_text += t->nbytes;
    }
    return t;
}

static void get_mat(loader *L, qvl_mat *out, bool vision, int64_t rows, int64_t cols,
                    const char *fmt, ...) QVL_PRINTF(6, 7);
static void get_mat(loader *L, qvl_mat *out, bool vision, int64_t rows, int64_t cols,
                    const char *fmt, ...) {
    char name[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    int64_t shape[2] = {rows, cols};
    const qvl_st_tensor *t = need(L, name, 2, shape, vision);
    if (!t)
        return;
    out->data = t->data;
    out->dt = t->dtype;
    out->rows = rows;
    out->cols = cols;
}

static float *get_vec(loader *L, bool vision, int64_t n, const char *fmt, ...) QVL_PRINTF(4, 5);
static float *get_vec(loader *L, bool vision, int64_t n, const char *fmt, ...) {
    char name[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    const qvl_st_tensor *t = need(L, name, 1, &n, vision);
    if (!t)
        return NULL;
    float *v = qvl_malloc((size_t)n * sizeof(float));
    if (!v) {
        L->st = QVL_E_NOMEM;
        qvl_errf(L->err, L->err_len, "out of memory copying %s", name);
        return NULL;
    }
    qvl_row_to_f32(t->dtype, t->data, v, n);
    return v;
}

static int cmp_ptr(const void *a, const void *b) {
    uintptr_t x = (uintptr_t) * (const void *const *)a, y = (uintptr_t) * (const void *const *)b;
    return x < y ? -1 : x > y;
}

static void resolve_weights(loader *L) {
    qvl_model *m = L->m;
    const qvl_vision_cfg *vc = &m->cfg.vision;
    const qvl_text_cfg *tc = &m->cfg.text;
    const int64_t D = vc->hidden, D4 = (int64_t)vc->hidden * vc->merge * vc->merge;
    const int64_t O = vc->out_hidden, Iv = vc->intermediate;
    const char *V = "model.visual.";
    const char *T = "model.language_model.";

    /* vision: patch embedding is a Conv3d weight [D, C, T, P, P] used as [D, C*T*P*P] */
    {
        int64_t shape[5] = {D, vc->in_ch, vc->temporal_patch, vc->patch, vc->patch};
        char name[256];
        snprintf(name, sizeof name, "%spatch_embed.proj.weight", V);
        const qvl_st_tensor *t = need(L, name, 5, shape, true);
        if (t) {
            m->patch_w.data = t->data;
            m->patch_w.dt = t->dtype;
            m->patch_w.rows = D;
            m->patch_w.cols = (int64_t)vc->in_ch * vc->temporal_patch * vc->patch * vc->patch;
        }
    }
    m->patch_b = get_vec(L, true, D, "%spatch_embed.proj.bias", V);
    {
        int64_t shape[2] = {vc->num_pos, D};
        char name[256];
        snprintf(name, sizeof name, "%spos_embed.weight", V);
        const qvl_st_tensor *t = need(L, name, 2, shape, true);
        if (t) {
            m->pos_embed = qvl_malloc((size_t)(vc->num_pos * D) * sizeof(float));
            if (!m->pos_embed) {
                L->st = QVL_E_NOMEM;
                qvl_errf(L->err, L->err_len, "out of memory copying %s", name);
            } else {
                qvl_row_to_f32(t->dtype, t->data, m->pos_embed, vc->num_pos * D);
            }
        }
    }
    if (L->st == QVL_OK) {
        m->blocks = qvl_calloc((size_t)vc->depth, sizeof *m->blocks);
        m->ds_mergers = qvl_calloc((size_t)vc->n_deepstack + 1, sizeof *m->ds_mergers);
        m->layers = qvl_calloc((size_t)tc->n_layers, sizeof *m->layers);
        if (!m->blocks || !m->ds_mergers || !m->layers) {
            L->st = QVL_E_NOMEM;
            qvl_errf(L->err, L->err_len, "out of memory");
            return;
        }
    }
    for (int b = 0; b < vc->depth && L->st == QVL_OK; b++) {
        qvl_vit_block *B = &m->blocks[b];
        B->norm1_w = get_vec(L, true, D, "%sblocks.%d.norm1.weight", V, b);
        B->norm1_b = get_vec(L, true, D, "%sblocks.%d.norm1.bias", V, b);
        B->norm2_w = get_vec(L, true, D, "%sblocks.%d.norm2.weight", V, b);
        B->norm2_b = get_vec(L, true, D, "%sblocks.%d.norm2.bias", V, b);
        get_mat(L, &B->qkv, true, 3 * D, D, "%sblocks.%d.attn.qkv.weight", V, b);
        B->qkv_b = get_vec(L, true, 3 * D, "%sblocks.%d.attn.qkv.bias", V, b);
        get_mat(L, &B->proj, true, D, D, "%sblocks.%d.attn.proj.weight", V, b);
        B->proj_b = get_vec(L, true, D, "%sblocks.%d.attn.proj.bias", V, b);
        get_mat(L, &B->fc1, true, Iv, D, "%sblocks.%d.mlp.linear_fc1.weight", V, b);
        B->fc1_b = get_vec(L, true, Iv, "%sblocks.%d.mlp.linear_fc1.bias", V, b);
        get_mat(L, &B->fc2, true, D, Iv, "%sblocks.%d.mlp.linear_fc2.weight", V, b);
        B->fc2_b = get_vec(L, true, D, "%sblocks.%d.mlp.linear_fc2.bias", V, b);
    }
    for (int k = -1; k < vc->n_deepstack && L->st == QVL_OK; k++) {
        qvl_merger *M = k < 0 ? &m->merger : &m->ds_mergers[k];
        char pre[128];
        if (k < 0)
            snprintf(pre, sizeof pre, "%smerger.", V);
        else
            snprintf(pre, sizeof pre, "%sdeepstack_merger_list.%d.", V, k);
        int64_t nn = k < 0 ? D : D4;
        M->norm_w = get_vec(L, true, nn, "%snorm.weight", pre);
        M->norm_b = get_vec(L, true, nn, "%snorm.bias", pre);
        get_mat(L, &M->fc1, true, D4, D4, "%slinear_fc1.weight", pre);
        M->fc1_b = get_vec(L, true, D4, "%slinear_fc1.bias", pre);
        get_mat(L, &M->fc2, true, O, D4, "%slinear_fc2.weight", pre);
        M->fc2_b = get_vec(L, true, O, "%slinear_fc2.bias", pre);
    }

    /* text */
    const int64_t H = tc->hidden, hd = tc->head_dim, I = tc->intermediate;
    const int64_t nq = (int64_t)tc->n_heads * hd, nkv = (int64_t)tc->n_kv_heads * hd;
    get_mat(L, &m->embed, false, tc->vocab_size, H, "%sembed_tokens.weight", T);
    for (int l = 0; l < tc->n_layers && L->st == QVL_OK; l++) {
        qvl_llm_layer *Y = &m->layers[l];
        Y->in_norm = get_vec(L, false, H, "%slayers.%d.input_layernorm.weight", T, l);
        Y->post_norm = get_vec(L, false, H, "%slayers.%d.post_attention_layernorm.weight", T, l);
        Y->q_norm = get_vec(L, false, hd, "%slayers.%d.self_attn.q_norm.weight", T, l);
        Y->k_norm = get_vec(L, false, hd, "%slayers.%d.self_attn.k_norm.weight", T, l);
        get_mat(L, &Y->q, false, nq, H, "%slayers.%d.self_attn.q_proj.weight", T, l);
        get_mat(L, &Y->k, false, nkv, H, "%slayers.%d.self_attn.k_proj.weight", T, l);
        get_mat(L, &Y->v, false, nkv, H, "%slayers.%d.self_attn.v_proj.weight", T, l);
        get_mat(L, &Y->o, false, H, nq, "%slayers.%d.self_attn.o_proj.weight", T, l);
        get_mat(L, &Y->gate, false, I, H, "%slayers.%d.mlp.gate_proj.weight", T, l);
        get_mat(L, &Y->up, false, I, H, "%slayers.%d.mlp.up_proj.weight", T, l);
        get_mat(L, &Y->down, false, H, I, "%slayers.%d.mlp.down_proj.weight", T, l);
    }
    m->norm = get_vec(L, false, H, "%snorm.weight", T);
    if (L->st != QVL_OK)
        return;
    /* lm_head: used when present, else tied to the embeddings */
    if (qvl_st_find(m->st, "lm_head.weight")) {
        get_mat(L, &m->lm_head, false, tc->vocab_size, H, "lm_head.weight");
        m->lm_head_tied = false;
        if (tc->tie)
            qvl_log(QVL_LOG_DEBUG, "config says tied embeddings but lm_head.weight exists: using it");
    } else {
        if (!tc->tie)
            qvl_log(QVL_LOG_INFO, "no lm_head.weight: using the tied embedding matrix");
        m->lm_head = m->embed;
        m->lm_head_tied = true;
    }
    if (L->st != QVL_OK)
        return;
    m->weight_dtype = m->embed.dt;

    /* anything in the files that the config does not imply is ignored, with a debug note */
    qsort(L->used, L->n_used, sizeof *L->used, cmp_ptr);
    size_t n = qvl_st_count(m->st);
    for (size_t i = 0; i < n; i++) {
        const qvl_st_tensor *t = qvl_st_at(m->st, i);
        if (!bsearch(&t, L->used, L->n_used, sizeof *L->used, cmp_ptr))
            qvl_log(QVL_LOG_DEBUG, "%s: ignoring tensor %s", tensor_file(L, t), t->name);
    }
}

/* ---- load-time quantisation ------------------------------------------------------------ */

typedef struct quant_job {
    const qvl_mat *src;
    qvl_dtype to;
    uint8_t *dst;
    float *scratch; /* [nth][cols] */
    uint8_t *plain; /* [nth][16 rows of plain blocks] */
} quant_job;

/* Groups of 16 rows, strided across the threads: each row widened, quantised to plain blocks,
 * then the group interleaved (dtype.h). */
static void quant_task(void *arg, int ith, int nth) {
    quant_job *j = arg;
    const int64_t k = j->src->cols, n = j->src->rows;
    const qvl_dtype base = qvl_dtype_x16_base(j->to);
    size_t sb = qvl_dtype_row_bytes(j->src->dt, (size_t)k), db = qvl_dtype_row_bytes(base, (size_t)k);
    float *row = j->scratch + (size_t)ith * (size_t)k;
    uint8_t *plain = j->plain + (size_t)ith * db * QVL_X16;
    for (int64_t g = ith; g * QVL_X16 < n; g += nth) {
        int nr = n - g * QVL_X16 < QVL_X16 ? (int)(n - g * QVL_X16) : QVL_X16;
        for (int r = 0; r < nr; r++) {
            const uint8_t *src = (const uint8_t *)j->src->data + (size_t)(g * QVL_X16 + r) * sb;
            qvl_row_to_f32(j->src->dt, src, row, k);
            qvl_quantize_row(base, row, plain + (size_t)r * db, k);
        }
        qvl_x16_pack(base, plain, nr, k, j->dst + (size_t)g * QVL_X16 * db);
    }
}

/* A quantised copy of one matrix (type `to`), owned by the model, at *out. */
static qvl_status quantize_mat(qvl_model *m, qvl_pool *pool, const qvl_mat *w, qvl_dtype to,
                               const void **out) {
    size_t nb = qvl_dtype_mat_bytes(to, (size_t)w->rows, (size_t)w->cols);
    struct qvl_owned_buf *no = qvl_realloc(m->owned, (m->n_owned + 1) * sizeof *no);
    if (!no)
        return QVL_E_NOMEM;
    m->owned = no;
    uint8_t *dst = qvl_malloc_big(nb);
    if (!dst)
        return QVL_E_NOMEM;
    m->owned[m->n_owned++] = (struct qvl_owned_buf){dst, nb};
    size_t nth = (size_t)qvl_pool_size(pool);
    float *scratch = qvl_malloc(nth * (size_t)w->cols * sizeof(float));
    uint8_t *plain = qvl_malloc(nth * QVL_X16 * qvl_dtype_row_bytes(to, (size_t)w->cols));
    if (!scratch || !plain) {
        qvl_free(scratch);
        qvl_free(plain);
        return QVL_E_NOMEM;
    }
    quant_job j = {w, to, dst, scratch, plain};
    qvl_pool_run(pool, quant_task, &j);
    qvl_free(scratch);
    qvl_free(plain);
    *out = dst;
    return QVL_OK;
}

/* bf16 matrices (those not quantised) take bf16 products for many-row calls: same bytes,
 * dtype BF16D (dtype.h) */
static void use_bf16_dot(qvl_model *m) {
    for (int l = 0; l < m->cfg.text.n_layers; l++) {
        qvl_llm_layer *Y = &m->layers[l];
        qvl_mat *ws[7] = {&Y->q, &Y->k, &Y->v, &Y->o, &Y->gate, &Y->up, &Y->down};
        for (int i = 0; i < 7; i++)
            if (ws[i]->dt == QVL_DT_BF16)
                ws[i]->dt = QVL_DT_BF16D;
    }
    for (int b = 0; b < m->cfg.vision.depth; b++) {
        qvl_vit_block *B = &m->blocks[b];
        qvl_mat *ws[4] = {&B->qkv, &B->proj, &B->fc1, &B->fc2};
        for (int i = 0; i < 4; i++)
            if (ws[i]->dt == QVL_DT_BF16)
                ws[i]->dt = QVL_DT_BF16D;
    }
    if (m->patch_w.dt == QVL_DT_BF16)
        m->patch_w.dt = QVL_DT_BF16D;
    qvl_merger *ms[1 + 8] = {&m->merger};
    int nm = 1;
    for (int d = 0; d < m->cfg.vision.n_deepstack && nm < 9; d++)
        ms[nm++] = &m->ds_mergers[d];
    for (int i = 0; i < nm; i++) {
        if (ms[i]->fc1.dt == QVL_DT_BF16)
            ms[i]->fc1.dt = QVL_DT_BF16D;
        if (ms[i]->fc2.dt == QVL_DT_BF16)
            ms[i]->fc2.dt = QVL_DT_BF16D;
    }
    m->bf16_dot = true;
}

/* One matrix --quant replaces: text decoder (or vision) bytes; tied: the head made from the
 * embeddings, which stay (their bytes are not released). */
typedef struct qmat {
    qvl_mat *w;
    bool vision, tied;
} qmat;

/* The matrices to quantise, in the cache file's order; *n of them (heap list). */
static qmat *quant_list(qvl_model *m, bool vision, size_t *n) {
    size_t cap = (size_t)m->cfg.text.n_layers * 7 + 1 + (size_t)m->cfg.vision.depth * 4, k = 0;
    qmat *q = qvl_calloc(cap, sizeof *q);
    if (!q)
        return NULL;
#define QADD(mat, vis, tie)                                                                     \
    do {                                                                                       \
        if ((mat)->cols % QVL_QBLOCK == 0) /* others keep their type: kernels take any */      \
            q[k++] = (qmat){(mat), (vis), (tie)};                                              \
    } while (0)
    for (int l = 0; l < m->cfg.text.n_layers; l++) {
        qvl_llm_layer *Y = &m->layers[l];
        qvl_mat *ws[7] = {&Y->q, &Y->k, &Y->v, &Y->o, &Y->gate, &Y->up, &Y->down};
        for (int i = 0; i < 7; i++)
            QADD(ws[i], false, false);
    }
    /* tied: lm_head is a copy of the embeddings' descriptor; the head gets a quantised matrix
     * of its own, the embeddings' rows still embed tokens */
    QADD(&m->lm_head, false, m->lm_head_tied);
    for (int b = 0; vision && b < m->cfg.vision.depth; b++) {
        qvl_vit_block *B = &m->blocks[b];
        qvl_mat *ws[4] = {&B->qkv, &B->proj, &B->fc1, &B->fc2};
        for (int i = 0; i < 4; i++)
            QADD(ws[i], true, false);
    }
#undef QADD
    *n = k;
    return q;
}

/* Account for q's matrix now stored as `to` at `data`, and let the checkpoint's copy go. */
static void quant_done(qvl_model *m, const qmat *q, qvl_dtype to, const void *data) {
    qvl_mat *w = q->w;
    uint64_t *bytes = q->vision ? &m->bytes_vision : &m->bytes_text;
    uint64_t src = qvl_dtype_row_bytes(w->dt, (size_t)w->cols) * (uint64_t)w->rows;
    if (!q->tied) {
        qvl_st_release(m->st, w->data, (size_t)src);
        *bytes -= src;
    } else {
        m->lm_head_tied = false; /* a matrix of its own from now on */
    }
    *bytes += qvl_dtype_mat_bytes(to, (size_t)w->rows, (size_t)w->cols);
    w->data = data;
    w->dt = to;
}

/* Map the cache file's matrices when it matches; false (logged) when it cannot be used. */
static bool quant_from_cache(qvl_model *m, qmat *q, size_t n, qvl_dtype to, const char *fp) {
    qvl_qcache_mat *mats = qvl_calloc(n ? n : 1, sizeof *mats);
    if (!mats)
        return false;
    for (size_t i = 0; i < n; i++)
        mats[i] = (qvl_qcache_mat){to, q[i].w->rows, q[i].w->cols, NULL};
    char err[512] = "";
    bool copied = false;
    qvl_status s = qvl_qcache_load(m->qcache_path, QVL_ST_AUTO, fp, n, mats, &m->qcache_map,
                                   &m->qcache_size, &copied, err, sizeof err);
    if (s == QVL_OK) {
        for (size_t i = 0; i < n; i++)
            quant_done(m, &q[i], to, mats[i].data);
        qvl_log(QVL_LOG_INFO, "quantised weights from %s (%s)", m->qcache_path,
                copied ? "copied" : "in place");
    } else if (s != QVL_E_IO || qvl_file_exists(m->qcache_path)) {
        qvl_log(QVL_LOG_INFO, "quantisation cache not used (quantising again): %s", err);
    }
    qvl_free(mats);
    return s == QVL_OK;
}

static void quant_to_cache(qvl_model *m, const qmat *q, size_t n, const char *fp) {
    qvl_qcache_mat *mats = qvl_calloc(n ? n : 1, sizeof *mats);
    if (!mats)
        return;
    for (size_t i = 0; i < n; i++)
        mats[i] = (qvl_qcache_mat){q[i].w->dt, q[i].w->rows, q[i].w->cols, q[i].w->data};
    char err[512] = "";
    if (qvl_qcache_write(m->qcache_path, fp, n, mats, err, sizeof err) != QVL_OK)
        qvl_log(QVL_LOG_WARN, "quantisation cache not written: %s", err);
    else
        qvl_log(QVL_LOG_INFO, "quantised weights saved to %s", m->qcache_path);
    qvl_free(mats);
}

static qvl_status quantize_model(qvl_model *m, const qvl_model_params *p, char *err,
                                 size_t err_len) {
    /* interleaved storage: the decode kernels read 16 rows per load (dtype.h) */
    qvl_dtype to = p->quant == QVL_QUANT_Q8 ? QVL_DT_Q8_0X16 : QVL_DT_Q4_0X16;
    if (p->quant != QVL_QUANT_Q8 && p->quant != QVL_QUANT_Q4) {
        qvl_errf(err, err_len, "unknown quantisation %d", (int)p->quant);
        return QVL_E_INVAL;
    }
    m->quant = p->quant;
    size_t n = 0;
    qmat *q = quant_list(m, p->quant_vision != 0, &n);
    char *fp = NULL;
    if (q && p->quant_cache_dir && p->quant_cache_dir[0]) {
        char tag[8];
        snprintf(tag, sizeof tag, "%s%s", p->quant == QVL_QUANT_Q8 ? "q8" : "q4",
                 p->quant_vision ? "v" : "");
        m->qcache_path = qvl_qcache_path(p->quant_cache_dir, m->dir, tag);
        fp = m->qcache_path ? qvl_qcache_fingerprint(m->st, m->dir, tag) : NULL;
        if (fp && quant_from_cache(m, q, n, to, fp)) {
            qvl_free(fp);
            qvl_free(q);
            return QVL_OK;
        }
    }
    int nt = p->n_threads > 0 ? p->n_threads : (int)sysconf(_SC_NPROCESSORS_ONLN);
    qvl_pool *pool = NULL;
    qvl_status s = q ? qvl_pool_create(nt > 0 ? nt : 1, &pool) : QVL_E_NOMEM;
    if (s != QVL_OK) {
        qvl_errf(err, err_len, q ? "cannot start threads" : "out of memory");
        qvl_free(fp);
        qvl_free(q);
        return s;
    }
    for (size_t i = 0; i < n && s == QVL_OK; i++) {
        const void *dst = NULL;
        s = quantize_mat(m, pool, q[i].w, to, &dst);
        if (s == QVL_OK)
            quant_done(m, &q[i], to, dst);
    }
    qvl_pool_free(pool);
    if (s != QVL_OK)
        qvl_errf(err, err_len, "out of memory quantising the weights");
    else if (fp)
        quant_to_cache(m, q, n, fp);
    qvl_free(fp);
    qvl_free(q);
    return s;
}

/* ---- load / free ------------------------------------------------------------------------ */

static qvl_status read_json_file(const char *dir, const char *name, bool required, char **buf,
                                 size_t *len, char **path_out, char *err, size_t err_len) {
    *buf = NULL;
    char *path = qvl_path_join(dir, name);
    if (!path)
        return QVL_E_NOMEM;
    if (!required && !qvl_file_exists(path)) {
        qvl_free(path);
        return QVL_OK;
    }
    qvl_status s = qvl_read_file(path, MAX_JSON_BYTES, buf, len, err, err_len);
    if (path_out && s == QVL_OK)
        *path_out = path;
    else
        qvl_free(path);
    return s;
}

static qvl_st_mode st_mode(const qvl_model_params *p) {
    if (!p)
        return QVL_ST_AUTO;
    if (p->mmap == QVL_LOAD_MMAP)
        return QVL_ST_MAP;
    if (p->mmap == QVL_LOAD_COPY)
        return QVL_ST_COPY;
    /* quantised: the decoder matrices are read once (or not at all: quantisation cache), into
     * the model's own memory */
    return p->quant != QVL_QUANT_NONE ? QVL_ST_MAP_LAZY : QVL_ST_AUTO;
}

static int load_progress(void *user, uint64_t done, uint64_t total) {
    const qvl_model_params *p = user;
    return p->progress("load", (double)done, (double)total, p->progress_user);
}

qvl_status qvl_model_load(const char *dir_arg, const qvl_model_params *p, qvl_model **out,
                          char *err, size_t err_len) {
    if (!out)
        return QVL_E_INVAL;
    *out = NULL;
    if (p && (p->mmap < QVL_LOAD_AUTO || p->mmap > QVL_LOAD_COPY)) {
        qvl_errf(err, err_len, "unknown load mode %d (qvl_model_params.mmap)", p->mmap);
        return QVL_E_INVAL;
    }
    qvl_model *m = qvl_calloc(1, sizeof *m);
    if (!m) {
        qvl_errf(err, err_len, "out of memory");
        return QVL_E_NOMEM;
    }
    qvl_status s = qvl_model_resolve(dir_arg, &m->dir, err, err_len);
    if (s != QVL_OK)
        goto fail;
    if (!qvl_dir_exists(m->dir)) {
        qvl_errf(err, err_len, "%s: not a directory", m->dir);
        s = QVL_E_IO;
        goto fail;
    }
    char *buf = NULL, *path = NULL;
    size_t len = 0;
    {
        char *cfgp = qvl_path_join(m->dir, "config.json");
        if (!cfgp) {
            qvl_errf(err, err_len, "out of memory");
            s = QVL_E_NOMEM;
            goto fail;
        }
        bool has = qvl_file_exists(cfgp);
        qvl_free(cfgp);
        if (!has) {
            qvl_errf(err, err_len, "%s: not a model directory (no config.json)", m->dir);
            s = QVL_E_IO;
            goto fail;
        }
    }
    s = read_json_file(m->dir, "config.json", true, &buf, &len, &path, err, err_len);
    if (s != QVL_OK)
        goto fail;
    s = qvl_config_parse(buf, len, path, &m->cfg, err, err_len);
    qvl_free(buf);
    qvl_free(path);
    if (s != QVL_OK)
        goto fail;

    qvl_gen_config_default(&m->gen);
    s = read_json_file(m->dir, "generation_config.json", false, &buf, &len, &path, err, err_len);
    if (s != QVL_OK)
        goto fail;
    if (buf) {
        s = qvl_gen_config_parse(buf, len, path, &m->gen, err, err_len);
        qvl_free(buf);
        qvl_free(path);
        if (s != QVL_OK)
            goto fail;
    }

    qvl_pp_config_default(&m->pp);
    {
        char *pp = qvl_path_join(m->dir, "preprocessor_config.json");
        if (!pp) {
            s = QVL_E_NOMEM;
            goto fail;
        }
        if (qvl_file_exists(pp))
            s = qvl_pp_config_load(pp, &m->pp, err, err_len);
        qvl_free(pp);
        if (s != QVL_OK)
            goto fail;
    }
    qvl_pp_config_default_video(&m->vpp);
    {
        char *vp = qvl_path_join(m->dir, "video_preprocessor_config.json");
        if (!vp) {
            s = QVL_E_NOMEM;
            goto fail;
        }
        if (qvl_file_exists(vp))
            s = qvl_pp_config_load_video(vp, &m->vpp, err, err_len);
        qvl_free(vp);
        if (s != QVL_OK)
            goto fail;
    }
    if (m->pp.patch != m->cfg.vision.patch || m->pp.merge != m->cfg.vision.merge ||
        m->pp.temporal_patch != m->cfg.vision.temporal_patch) {
        qvl_errf(err, err_len,
                 "%s: preprocessor_config.json patch/merge/temporal sizes (%d/%d/%d) disagree "
                 "with config.json (%d/%d/%d)",
                 m->dir, m->pp.patch, m->pp.merge, m->pp.temporal_patch, m->cfg.vision.patch,
                 m->cfg.vision.merge, m->cfg.vision.temporal_patch);
        s = QVL_E_FORMAT;
        goto fail;
    }

    {
        char *tp = qvl_path_join(m->dir, "tokenizer.json");
        if (!tp) {
            s = QVL_E_NOMEM;
            goto fail;
        }
        s = qvl_tok_load(tp, &m->tok, err, err_len);
        qvl_free(tp);
        if (s != QVL_OK)
            goto fail;
    }

    qvl_st_progress sp = {load_progress, (void *)p};
    s = qvl_st_open_dir_ex(m->dir, st_mode(p), p && p->progress ? &sp : NULL, &m->st, err,
                           err_len);
    if (s != QVL_OK)
        goto fail;
    loader L = {.m = m, .err = err, .err_len = err_len, .st = QVL_OK};
    resolve_weights(&L);
    qvl_free(L.used);
    s = L.st;
    if (s != QVL_OK)
        goto fail;
    if (p && p->quant != QVL_QUANT_NONE) {
        s = quantize_model(m, p, err, err_len);
        if (s != QVL_OK)
            goto fail;
    }
    if (p && p->bf16_dot)
        use_bf16_dot(m);
    *out = m;
    return QVL_OK;
fail:
    qvl_model_free(m);
    return s;
}

void qvl_model_free(qvl_model *m) {
    if (!m)
        return;
    if (m->blocks) {
        for (int b = 0; b < m->cfg.vision.depth; b++) {
            qvl_vit_block *B = &m->blocks[b];
            qvl_free(B->norm1_w);
            qvl_free(B->norm1_b);
            qvl_free(B->norm2_w);
            qvl_free(B->norm2_b);
            qvl_free(B->qkv_b);
            qvl_free(B->proj_b);
            qvl_free(B->fc1_b);
            qvl_free(B->fc2_b);
        }
        qvl_free(m->blocks);
    }
    qvl_merger *ms[QVL_MAX_DEEPSTACK + 1];
    int nm = 0;
    ms[nm++] = &m->merger;
    if (m->ds_mergers)
        for (int k = 0; k < m->cfg.vision.n_deepstack; k++)
            ms[nm++] = &m->ds_mergers[k];
    for (int i = 0; i < nm; i++) {
        qvl_free(ms[i]->norm_w);
        qvl_free(ms[i]->norm_b);
        qvl_free(ms[i]->fc1_b);
        qvl_free(ms[i]->fc2_b);
    }
    qvl_free(m->ds_mergers);
    if (m->layers) {
        for (int l = 0; l < m->cfg.text.n_layers; l++) {
            qvl_llm_layer *Y = &m->layers[l];
            qvl_free(Y->in_norm);
            qvl_free(Y->post_norm);
            qvl_free(Y->q_norm);
            qvl_free(Y->k_norm);
        }
        qvl_free(m->layers);
    }
    qvl_free(m->norm);
    qvl_free(m->patch_b);
    qvl_free(m->pos_embed);
    for (size_t i = 0; i < m->n_owned; i++)
        qvl_free_big(m->owned[i].p, m->owned[i].n);
    qvl_free(m->owned);
    qvl_st_unmap_whole(m->qcache_map, m->qcache_size);
    qvl_free(m->qcache_path);
    qvl_st_free(m->st);
    qvl_tok_free(m->tok);
    qvl_free(m->dir);
    qvl_free(m);
}
