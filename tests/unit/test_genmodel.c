/* test_genmodel.c - the random-weight model writer: side files byte-identical to the released
 * layout of the tiny fixture, tensor names/shapes/dtypes (read back with an independent header
 * parser), weight statistics, determinism, sharding, prefixes, variations, errors and
 * allocation failures. */
#include "check.h"
#include "config.h"
#include "genmodel.h"
#include "st.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <stdint.h>
#include <unistd.h>

/* ---- helpers -------------------------------------------------------------------------------- */

static char *pjoin(const char *dir, const char *name) {
    static char buf[8][1024];
    static int k;
    k = (k + 1) & 7;
    snprintf(buf[k], sizeof buf[k], "%s/%s", dir, name);
    return buf[k];
}

static int files_equal(const char *a, const char *b) {
    size_t la = 0;
    size_t lb = 0;
    char *x = check_read_file(a, &la);
    char *y = check_read_file(b, &lb);
    int eq = x && y && la == lb && memcmp(x, y, la) == 0;
    free(x);
    free(y);
    return eq;
}

static void rm_tree(const char *dir) {
    DIR *d = opendir(dir);
    if (!d)
        return;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
            continue;
        unlink(pjoin(dir, e->d_name));
    }
    closedir(d);
    rmdir(dir);
}

static char *make_tmp(char *buf, size_t len) {
    snprintf(buf, len, "/tmp/qvl_test_genmodel_XXXXXX");
    return mkdtemp(buf);
}

/* A tensor read back by this test's own safetensors parser. */
typedef struct tt {
    char name[160];
    char dtype[8];
    int n_dims;
    int64_t shape[8];
    int64_t n_elem;
    const unsigned char *data;
    size_t nbytes;
} tt;

typedef struct tfile {
    char *bufs[16];
    int n_bufs;
    tt t[1024];
    int n;
} tfile;

/* Parse one .safetensors file into f (appending); 0 on any format error. */
static int load_st_file(const char *path, tfile *f) {
    size_t len = 0;
    char *buf = check_read_file(path, &len);
    if (!buf || len < 8 || f->n_bufs == 16) {
        free(buf);
        return 0;
    }
    f->bufs[f->n_bufs++] = buf;
    uint64_t hl = 0;
    for (int i = 0; i < 8; i++)
        hl |= (uint64_t)(unsigned char)buf[i] << (8 * i);
    if (hl % 8 != 0 || 8 + hl > len)
        return 0;
    cJSON *h = cJSON_ParseWithLength(buf + 8, (size_t)hl);
    if (!h)
        return 0;
    int ok = 1;
    size_t data_len = len - 8 - (size_t)hl;
    size_t expect_off = 0;
    const unsigned char *base = (const unsigned char *)buf + 8 + hl;
    const cJSON *meta = cJSON_GetObjectItemCaseSensitive(h, "__metadata__");
    const cJSON *fmt = cJSON_GetObjectItemCaseSensitive(meta, "format");
    if (!cJSON_IsString(fmt) || strcmp(fmt->valuestring, "pt") != 0)
        ok = 0;
    for (const cJSON *e = h->child; e && ok; e = e->next) {
        if (!strcmp(e->string, "__metadata__"))
            continue;
        if (f->n == 1024)
            return cJSON_Delete(h), 0;
        tt *t = &f->t[f->n++];
        memset(t, 0, sizeof *t);
        snprintf(t->name, sizeof t->name, "%s", e->string);
        const cJSON *dt = cJSON_GetObjectItemCaseSensitive(e, "dtype");
        const cJSON *sh = cJSON_GetObjectItemCaseSensitive(e, "shape");
        const cJSON *of = cJSON_GetObjectItemCaseSensitive(e, "data_offsets");
        if (!cJSON_IsString(dt) || !cJSON_IsArray(sh) || cJSON_GetArraySize(of) != 2) {
            ok = 0;
            break;
        }
        snprintf(t->dtype, sizeof t->dtype, "%s", dt->valuestring);
        t->n_elem = 1;
        for (const cJSON *d = sh->child; d; d = d->next) {
            t->shape[t->n_dims++] = (int64_t)d->valuedouble;
            t->n_elem *= (int64_t)d->valuedouble;
        }
        size_t a = (size_t)cJSON_GetArrayItem(of, 0)->valuedouble;
        size_t b = (size_t)cJSON_GetArrayItem(of, 1)->valuedouble;
        size_t esz = !strcmp(t->dtype, "F32") ? 4 : 2;
        /* contiguous, in header order, sizes matching the shapes */
        if (a != expect_off || b < a || b > data_len || b - a != (size_t)t->n_elem * esz)
            ok = 0;
        expect_off = b;
        t->data = base + a;
        t->nbytes = b - a;
    }
    if (expect_off != data_len)
        ok = 0;
    cJSON_Delete(h);
    return ok;
}

/* Load a model directory (index first, like a loader). Returns the number of shards, 0 on
 * error. */
static int load_st_dir(const char *dir, tfile *f) {
    memset(f, 0, sizeof *f);
    char *idx = check_read_file(pjoin(dir, "model.safetensors.index.json"), NULL);
    if (!idx)
        return load_st_file(pjoin(dir, "model.safetensors"), f);
    cJSON *j = cJSON_Parse(idx);
    free(idx);
    const cJSON *wm = cJSON_GetObjectItemCaseSensitive(j, "weight_map");
    char seen[16][64];
    int n_seen = 0;
    int ok = cJSON_IsObject(wm);
    for (const cJSON *e = wm ? wm->child : NULL; e && ok; e = e->next) {
        int k;
        for (k = 0; k < n_seen; k++)
            if (!strcmp(seen[k], e->valuestring))
                break;
        if (k < n_seen)
            continue;
        if (n_seen == 16) {
            ok = 0;
            break;
        }
        snprintf(seen[n_seen++], 64, "%s", e->valuestring);
        ok = load_st_file(pjoin(dir, e->valuestring), f);
    }
    /* every indexed tensor is where the index says, and total_size adds up */
    uint64_t total = 0;
    for (int i = 0; i < f->n && ok; i++)
        total += f->t[i].nbytes;
    const cJSON *ts =
        cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(j, "metadata"),
                                         "total_size");
    if (!cJSON_IsNumber(ts) || (uint64_t)ts->valuedouble != total ||
        cJSON_GetArraySize(wm) != f->n)
        ok = 0;
    cJSON_Delete(j);
    return ok ? n_seen : 0;
}

static void tfile_free(tfile *f) {
    for (int i = 0; i < f->n_bufs; i++)
        free(f->bufs[i]);
    f->n_bufs = 0;
}

static const tt *find_t(const tfile *f, const char *name) {
    for (int i = 0; i < f->n; i++)
        if (!strcmp(f->t[i].name, name))
            return &f->t[i];
    return NULL;
}

static double elem(const tt *t, int64_t i) {
    uint16_t h;
    if (!strcmp(t->dtype, "F32")) {
        float v;
        memcpy(&v, t->data + 4 * i, 4);
        return v;
    }
    memcpy(&h, t->data + 2 * i, 2);
    return !strcmp(t->dtype, "BF16") ? qvl_bf16_to_f32(h) : qvl_f16_to_f32(h);
}

static int ends_with(const char *s, const char *suf) {
    size_t a = strlen(s);
    size_t b = strlen(suf);
    return a >= b && !strcmp(s + a - b, suf);
}

/* The init the generator promises for tensor t (spec of genmodel.c). */
static void expected_stats(const tt *t, double *mean, double *std) {
    if (strstr(t->name, "embed_tokens")) {
        *mean = 0, *std = 1.0;
    } else if (strstr(t->name, "pos_embed")) {
        *mean = 0, *std = 0.02;
    } else if (ends_with(t->name, ".bias")) {
        *mean = 0, *std = 0.02;
    } else if (t->n_dims == 1) { /* every 1-D weight is a norm weight */
        *mean = 1, *std = 0.02;
    } else {
        int64_t fan_in = 1;
        for (int i = 1; i < t->n_dims; i++)
            fan_in *= t->shape[i];
        *mean = 0, *std = 1.0 / sqrt((double)fan_in);
    }
}

/* Check every tensor's sample mean and std against the promised init. Returns the number of
 * tensors out of tolerance. */
static int check_stats(const tfile *f) {
    int bad = 0;
    for (int i = 0; i < f->n; i++) {
        const tt *t = &f->t[i];
        double em;
        double es;
        expected_stats(t, &em, &es);
        int64_t n = t->n_elem > 400000 ? 400000 : t->n_elem; /* a prefix is plenty */
        double s = 0;
        double s2 = 0;
        for (int64_t k = 0; k < n; k++) {
            double v = elem(t, k);
            s += v;
            s2 += v * v;
        }
        double m = s / (double)n;
        double sd = sqrt(fmax(s2 / (double)n - m * m, 0));
        double tol_sd = es * (4.0 / sqrt(2.0 * (double)n) + 0.02);
        double tol_m = 5.0 * es / sqrt((double)n) + 1e-3 * fabs(em);
        if (fabs(sd - es) > tol_sd || fabs(m - em) > tol_m) {
            fprintf(stderr, "stats of %s (%s, n %lld): mean %g (want %g) std %g (want %g)\n",
                    t->name, t->dtype, (long long)t->n_elem, m, em, sd, es);
            bad++;
        }
    }
    return bad;
}

static int json_int(const cJSON *o, const char *path) {
    char buf[256];
    snprintf(buf, sizeof buf, "%s", path);
    const cJSON *cur = o;
    for (char *tok = strtok(buf, "."); tok && cur; tok = strtok(NULL, "."))
        cur = cJSON_GetObjectItemCaseSensitive(cur, tok);
    return cJSON_IsNumber(cur) ? cur->valueint : -12345;
}

static cJSON *load_json(const char *dir, const char *name) {
    char *s = check_read_file(pjoin(dir, name), NULL);
    cJSON *j = s ? cJSON_Parse(s) : NULL;
    free(s);
    return j;
}

static int config_ok(const char *dir) {
    size_t len = 0;
    char *s = check_read_file(pjoin(dir, "config.json"), &len);
    qvl_config c;
    char err[256] = "";
    qvl_status st = s ? qvl_config_parse(s, len, "config.json", &c, err, sizeof err) : QVL_E_IO;
    if (st != QVL_OK)
        fprintf(stderr, "config_parse: %s\n", err);
    free(s);
    return st == QVL_OK;
}

/* ---- tests ------------------------------------------------------------------------------------ */

static const char *tok_dir(void) {
    return shared_path("fixtures/qwen3-tokenizer");
}

/* Tiny preset, bf16, one file: everything matches the released layout of the fixture. */
static void test_tiny(const char *dir) {
    qvl_genmodel_params p;
    qvl_genmodel_default_params(&p);
    p.tokenizer_dir = tok_dir();
    p.seed = 1;
    char err[512] = "";
    qvl_status st = qvl_genmodel_write(dir, &p, err, sizeof err);
    CHECKF(st == QVL_OK, "%s", err);

    const char *fx = shared_path("fixtures/tiny-qwen3vl/model");
    static const char *const same[] = {
        "config.json",          "chat_template.json",       "generation_config.json",
        "tokenizer.json",       "preprocessor_config.json", "video_preprocessor_config.json",
        "tokenizer_config.json"};
    for (size_t i = 0; i < sizeof same / sizeof same[0]; i++)
        CHECKF(files_equal(pjoin(dir, same[i]), pjoin(fx, same[i])), "%s differs", same[i]);
    CHECK(access(pjoin(dir, "model.safetensors.index.json"), F_OK) != 0);
    CHECK(config_ok(dir));

    cJSON *c = load_json(dir, "config.json");
    CHECK(c != NULL);
    const cJSON *mt = cJSON_GetObjectItemCaseSensitive(c, "model_type");
    CHECK(cJSON_IsString(mt) && !strcmp(mt->valuestring, "qwen3_vl"));
    CHECK(json_int(c, "text_config.hidden_size") == 64);
    CHECK(json_int(c, "text_config.num_hidden_layers") == 3);
    CHECK(json_int(c, "text_config.head_dim") == 32);
    CHECK(json_int(c, "text_config.rope_theta") == 5000000);
    CHECK(json_int(c, "vision_config.out_hidden_size") == 64);
    CHECK(json_int(c, "image_token_id") == 151655);
    CHECK(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(c, "tie_word_embeddings")));
    cJSON_Delete(c);

    /* tensors: exactly the fixture's names, order, shapes and dtypes */
    tfile *a = calloc(1, sizeof *a);
    tfile *b = calloc(1, sizeof *b);
    CHECK(load_st_dir(dir, a) == 1);
    CHECK(load_st_dir(fx, b) == 1);
    CHECK(a->n == 104 && a->n == b->n);
    int same_layout = a->n == b->n;
    for (int i = 0; i < a->n && same_layout; i++) {
        const tt *x = &a->t[i];
        const tt *y = &b->t[i];
        same_layout = !strcmp(x->name, y->name) && !strcmp(x->dtype, y->dtype) &&
                      x->n_dims == y->n_dims && !memcmp(x->shape, y->shape, sizeof x->shape);
        if (!same_layout)
            fprintf(stderr, "tensor %d: %s vs %s\n", i, x->name, y->name);
    }
    CHECK(same_layout);
    CHECK(find_t(a, "lm_head.weight") == NULL);
    CHECK(check_stats(a) == 0);
    tfile_free(a);
    tfile_free(b);
    free(a);
    free(b);

    uint64_t bytes = 0;
    size_t n = 0;
    CHECK(qvl_genmodel_plan_bytes(&p, &bytes, &n, err, sizeof err) == QVL_OK);
    CHECK(bytes == 21072896 && n == 104);
}

/* Same seed -> same bytes; other seed -> other bytes; the tokenizer found through the
 * environment. */
static void test_determinism(const char *dir1, const char *dir2, const char *dir3) {
    qvl_genmodel_params p;
    qvl_genmodel_default_params(&p);
    p.seed = 1;
    char err[512] = "";
    setenv("QVL_TOKENIZER_DIR", tok_dir(), 1);
    CHECKF(qvl_genmodel_write(dir2, &p, err, sizeof err) == QVL_OK, "%s", err);
    unsetenv("QVL_TOKENIZER_DIR");
    CHECK(files_equal(pjoin(dir1, "model.safetensors"), pjoin(dir2, "model.safetensors")));
    p.seed = 2;
    p.tokenizer_dir = tok_dir();
    CHECKF(qvl_genmodel_write(dir3, &p, err, sizeof err) == QVL_OK, "%s", err);
    CHECK(!files_equal(pjoin(dir1, "model.safetensors"), pjoin(dir3, "model.safetensors")));

    /* regenerate in place, sharded, with the directory's own tokenizer: the tokenizer survives
     * and the old single file is gone (a loader would otherwise see two layouts) */
    p.tokenizer_dir = dir1;
    p.shard_bytes = 4u << 20;
    CHECKF(qvl_genmodel_write(dir1, &p, err, sizeof err) == QVL_OK, "%s", err);
    CHECK(files_equal(pjoin(dir1, "tokenizer.json"), pjoin(tok_dir(), "tokenizer.json")));
    CHECK(access(pjoin(dir1, "model.safetensors"), F_OK) != 0);
    CHECK(access(pjoin(dir1, "model.safetensors.index.json"), F_OK) == 0);
    CHECK(access(pjoin(dir1, "model-00002-of-00002.safetensors"), F_OK) == 0);
    CHECK(config_ok(dir1));
}

/* f16, untied, sharded: index + shards; the tensor bytes equal those of the same model in one
 * file; old prefixes rename but keep the values. */
static void test_sharded(const char *dir_one, const char *dir_sh, const char *dir_old) {
    qvl_genmodel_params p;
    qvl_genmodel_default_params(&p);
    p.tokenizer_dir = tok_dir();
    p.dtype = QVL_DT_F16;
    p.tie_embeddings = 0;
    p.seed = 7;
    char err[512] = "";
    CHECKF(qvl_genmodel_write(dir_one, &p, err, sizeof err) == QVL_OK, "%s", err);
    p.shard_bytes = 1u << 20; /* lm_head and embed (19.4 MB) alone, then 1 MiB shards */
    CHECKF(qvl_genmodel_write(dir_sh, &p, err, sizeof err) == QVL_OK, "%s", err);
    p.shard_bytes = 0;
    p.old_prefixes = 1;
    CHECKF(qvl_genmodel_write(dir_old, &p, err, sizeof err) == QVL_OK, "%s", err);

    tfile *a = calloc(1, sizeof *a);
    tfile *b = calloc(1, sizeof *b);
    tfile *o = calloc(1, sizeof *o);
    CHECK(load_st_dir(dir_one, a) == 1);
    int n_shards = load_st_dir(dir_sh, b);
    CHECKF(n_shards == 4, "%d shards", n_shards);
    CHECK(access(pjoin(dir_sh, "model-00001-of-00004.safetensors"), F_OK) == 0);
    CHECK(access(pjoin(dir_sh, "model-00004-of-00004.safetensors"), F_OK) == 0);
    CHECK(access(pjoin(dir_sh, "model.safetensors"), F_OK) != 0);
    CHECK(load_st_dir(dir_old, o) == 1);
    CHECK(a->n == 105 && b->n == 105 && o->n == 105);
    const tt *lm = find_t(a, "lm_head.weight");
    CHECK(lm && lm->shape[0] == 151936 && lm->shape[1] == 64 && !strcmp(lm->dtype, "F16"));
    int same = 1;
    for (int i = 0; i < a->n; i++) {
        const tt *x = &a->t[i];
        const tt *y = find_t(b, x->name);
        same &= y && y->nbytes == x->nbytes && !memcmp(x->data, y->data, x->nbytes);
        char old[200];
        if (!strncmp(x->name, "model.visual.", 13))
            snprintf(old, sizeof old, "visual.%s", x->name + 13);
        else if (!strncmp(x->name, "model.language_model.", 21))
            snprintf(old, sizeof old, "model.%s", x->name + 21);
        else
            snprintf(old, sizeof old, "%s", x->name);
        const tt *z = find_t(o, old);
        same &= z && z->nbytes == x->nbytes && !memcmp(x->data, z->data, x->nbytes);
    }
    CHECK(same);
    CHECK(check_stats(b) == 0);
    /* the tied and untied embeddings are different tensors */
    const tt *emb = find_t(a, "model.language_model.embed_tokens.weight");
    CHECK(emb && lm && memcmp(emb->data, lm->data, 1024) != 0);
    tfile_free(a);
    tfile_free(b);
    tfile_free(o);
    free(a);
    free(b);
    free(o);

    /* the library's reader agrees (and normalises the old names) */
    const char *const dirs[] = {dir_one, dir_sh, dir_old};
    for (int i = 0; i < 3; i++) {
        qvl_st *s = NULL;
        qvl_status st = qvl_st_open_dir(dirs[i], &s, err, sizeof err);
        CHECKF(st == QVL_OK, "%s", err);
        if (st != QVL_OK)
            continue;
        CHECK(qvl_st_count(s) == 105);
        CHECK(qvl_st_n_files(s) == (i == 1 ? 4u : 1u));
        const qvl_st_tensor *t = qvl_st_find(s, "model.visual.patch_embed.proj.weight");
        CHECK(t && t->dtype == QVL_DT_F16 && t->n_dims == 5 && t->shape[0] == 64);
        CHECK(qvl_st_find(s, "model.language_model.norm.weight") != NULL);
        CHECK(qvl_st_find(s, "lm_head.weight") != NULL);
        qvl_st_free(s);
    }

    cJSON *c = load_json(dir_sh, "config.json");
    const cJSON *tc = cJSON_GetObjectItemCaseSensitive(c, "text_config");
    CHECK(cJSON_IsFalse(cJSON_GetObjectItemCaseSensitive(c, "tie_word_embeddings")));
    CHECK(cJSON_IsFalse(cJSON_GetObjectItemCaseSensitive(tc, "tie_word_embeddings")));
    const cJSON *dt = cJSON_GetObjectItemCaseSensitive(tc, "dtype");
    CHECK(cJSON_IsString(dt) && !strcmp(dt->valuestring, "float16"));
    cJSON_Delete(c);
    CHECK(config_ok(dir_sh));
}

/* f32 with other head counts, head_dim, M-RoPE sections and no DeepStack taps. */
static void test_variant(const char *dir) {
    qvl_genmodel_params p;
    qvl_genmodel_default_params(&p);
    p.tokenizer_dir = tok_dir();
    p.dtype = QVL_DT_F32;
    p.n_heads = 8;
    p.n_kv_heads = 4;
    p.head_dim = 16;
    p.mrope_section[0] = 4;
    p.mrope_section[1] = 2;
    p.mrope_section[2] = 2;
    p.n_layers = 2;
    p.vision_depth = 3;
    p.n_deepstack = 1;
    char err[512] = "";
    CHECKF(qvl_genmodel_write(dir, &p, err, sizeof err) == QVL_OK, "%s", err);
    CHECK(config_ok(dir));
    cJSON *c = load_json(dir, "config.json");
    CHECK(json_int(c, "text_config.num_attention_heads") == 8);
    CHECK(json_int(c, "text_config.num_key_value_heads") == 4);
    CHECK(json_int(c, "text_config.head_dim") == 16);
    CHECK(json_int(c, "text_config.num_hidden_layers") == 2);
    CHECK(json_int(c, "vision_config.depth") == 3);
    const cJSON *rs = cJSON_GetObjectItemCaseSensitive(
        cJSON_GetObjectItemCaseSensitive(c, "text_config"), "rope_scaling");
    const cJSON *sec = cJSON_GetObjectItemCaseSensitive(rs, "mrope_section");
    CHECK(cJSON_GetArraySize(sec) == 3 && cJSON_GetArrayItem(sec, 0)->valueint == 4 &&
          cJSON_GetArrayItem(sec, 1)->valueint == 2 && cJSON_GetArrayItem(sec, 2)->valueint == 2);
    CHECK(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(rs, "mrope_interleaved")));
    const cJSON *ds = cJSON_GetObjectItemCaseSensitive(
        cJSON_GetObjectItemCaseSensitive(c, "vision_config"), "deepstack_visual_indexes");
    CHECK(cJSON_GetArraySize(ds) == 1 && cJSON_GetArrayItem(ds, 0)->valueint == 1);
    const cJSON *dt =
        cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(c, "text_config"),
                                         "dtype");
    CHECK(cJSON_IsString(dt) && !strcmp(dt->valuestring, "float32"));
    cJSON_Delete(c);

    tfile *f = calloc(1, sizeof *f);
    CHECK(load_st_dir(dir, f) == 1);
    /* 3 + 12*3 + 6 + 6*1 vision, 1 + 11*2 + 1 text */
    CHECK(f->n == 51 + 24);
    const tt *q = find_t(f, "model.language_model.layers.1.self_attn.q_proj.weight");
    const tt *k = find_t(f, "model.language_model.layers.1.self_attn.k_proj.weight");
    const tt *o = find_t(f, "model.language_model.layers.1.self_attn.o_proj.weight");
    const tt *qn = find_t(f, "model.language_model.layers.1.self_attn.q_norm.weight");
    const tt *pe = find_t(f, "model.visual.patch_embed.proj.weight");
    const tt *dm = find_t(f, "model.visual.deepstack_merger_list.0.norm.weight");
    CHECK(q && q->shape[0] == 128 && q->shape[1] == 64 && !strcmp(q->dtype, "F32"));
    CHECK(k && k->shape[0] == 64 && k->shape[1] == 64);
    CHECK(o && o->shape[0] == 64 && o->shape[1] == 128);
    CHECK(qn && qn->n_dims == 1 && qn->shape[0] == 16);
    CHECK(pe && pe->n_dims == 5 && pe->shape[0] == 64 && pe->shape[1] == 3 &&
          pe->shape[2] == 2 && pe->shape[3] == 16 && pe->shape[4] == 16);
    CHECK(dm && dm->shape[0] == 256);
    CHECK(find_t(f, "model.visual.deepstack_merger_list.1.norm.weight") == NULL);
    CHECK(find_t(f, "model.language_model.layers.2.mlp.up_proj.weight") == NULL);
    CHECK(check_stats(f) == 0);
    tfile_free(f);
    free(f);
}

static void test_errors_and_plans(const char *dir) {
    qvl_genmodel_params p;
    char err[512] = "";
    qvl_genmodel_default_params(&p);
    p.tokenizer_dir = tok_dir();
    p.preset = "3b";
    CHECK(qvl_genmodel_write(dir, &p, err, sizeof err) == QVL_E_INVAL && strstr(err, "3b"));
    p.preset = "tiny";
    p.mrope_section[0] = 5; /* [5, 5, 5] != 16 */
    p.mrope_section[1] = 5;
    p.mrope_section[2] = 5;
    CHECK(qvl_genmodel_write(dir, &p, err, sizeof err) == QVL_E_INVAL && strstr(err, "mrope"));
    qvl_genmodel_default_params(&p);
    p.n_kv_heads = 3;
    CHECK(qvl_genmodel_plan_bytes(&p, NULL, NULL, err, sizeof err) == QVL_E_INVAL);
    qvl_genmodel_default_params(&p);
    p.dtype = QVL_DT_Q8_0;
    CHECK(qvl_genmodel_plan_bytes(&p, NULL, NULL, err, sizeof err) == QVL_E_INVAL);
    qvl_genmodel_default_params(&p);
    p.n_deepstack = 5; /* > depth 4 */
    CHECK(qvl_genmodel_plan_bytes(&p, NULL, NULL, err, sizeof err) == QVL_E_INVAL);
    qvl_genmodel_default_params(&p);
    p.tokenizer_dir = "/nonexistent/qvl-tokenizer";
    CHECK(qvl_genmodel_write(dir, &p, err, sizeof err) == QVL_E_IO &&
          strstr(err, "tokenizer.json"));
    CHECK(access(pjoin(dir, "config.json"), F_OK) != 0); /* nothing written */
    CHECK(qvl_genmodel_write(NULL, &p, err, sizeof err) == QVL_E_INVAL);

    /* planned sizes of the real presets (spec 1.5 parameter counts) */
    uint64_t bytes = 0;
    size_t n = 0;
    qvl_genmodel_default_params(&p);
    p.preset = "2b";
    CHECK(qvl_genmodel_plan_bytes(&p, &bytes, &n, err, sizeof err) == QVL_OK);
    printf("plan 2b bf16: %zu tensors, %llu bytes\n", n, (unsigned long long)bytes);
    CHECK(n == 3 + 12 * 24 + 6 + 6 * 3 + 2 + 11 * 28 && bytes == 4255064064ull);
    p.preset = "4b";
    CHECK(qvl_genmodel_plan_bytes(&p, &bytes, &n, err, sizeof err) == QVL_OK);
    printf("plan 4b bf16: %zu tensors, %llu bytes\n", n, (unsigned long long)bytes);
    CHECK(fabs((double)bytes / 2 / 1e9 - 4.44) < 0.01);
    p.preset = "8b";
    CHECK(qvl_genmodel_plan_bytes(&p, &bytes, &n, err, sizeof err) == QVL_OK);
    printf("plan 8b bf16: %zu tensors, %llu bytes\n", n, (unsigned long long)bytes);
    CHECK(n == 3 + 12 * 27 + 6 + 6 * 3 + 2 + 11 * 36 + 1); /* untied: lm_head */
    CHECK(fabs((double)bytes / 2 / 1e9 - 8.77) < 0.01);
    p.dtype = QVL_DT_F32;
    uint64_t bytes32 = 0;
    CHECK(qvl_genmodel_plan_bytes(&p, &bytes32, NULL, err, sizeof err) == QVL_OK);
    CHECK(bytes32 == 2 * bytes);
    qvl_genmodel_default_params(&p);
    p.n_deepstack = -1;
    CHECK(qvl_genmodel_plan_bytes(&p, NULL, &n, err, sizeof err) == QVL_OK && n == 104 - 12);
}

/* Every failing allocation is reported as QVL_E_NOMEM (LSan checks that nothing leaks). */
static void test_alloc_failures(const char *dir) {
    qvl_genmodel_params p;
    qvl_genmodel_default_params(&p);
    p.tokenizer_dir = tok_dir();
    p.vocab_size = 512; /* small weights: this loop rewrites the model many times */
    p.tie_embeddings = 0;
    p.shard_bytes = 1u << 20;
    char err[512];
    int n_fail = 0;
    int wrong = 0;
    for (long k = 0; k < 10000; k++) {
        qvl_alloc_fail_at(k, 0);
        qvl_status st = qvl_genmodel_write(dir, &p, err, sizeof err);
        qvl_alloc_fail_at(-1, 0);
        if (st == QVL_OK)
            break;
        n_fail++;
        if (st != QVL_E_NOMEM) {
            fprintf(stderr, "allocation %ld: %s\n", k, err);
            wrong++;
        }
    }
    CHECKF(n_fail > 100 && wrong == 0, "%d failures, %d wrong status", n_fail, wrong);
    CHECK(config_ok(dir));
}

int main(void) {
    char d[8][64];
    for (int i = 0; i < 8; i++) {
        if (!make_tmp(d[i], sizeof d[i])) {
            fprintf(stderr, "mkdtemp failed\n");
            return 1;
        }
    }
    test_tiny(d[0]);
    test_determinism(d[0], d[1], d[2]);
    test_sharded(d[3], d[4], d[5]);
    test_variant(d[6]);
    test_errors_and_plans(d[7]);
    test_alloc_failures(d[7]);
    for (int i = 0; i < 8; i++)
        rm_tree(d[i]);
    CHECK_DONE();
}
