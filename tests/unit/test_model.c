/* test_model.c - model directory loading: generated tiny variants (sharded, f16, f32, untied,
 * other head counts and M-RoPE sections, old key prefixes) load and run; sharding does not change
 * results; broken directories give clear errors naming the file and tensor; hub-id resolution. */
#include "check.h"
#include "config.h"
#include "genmodel.h"
#include "model.h"
#include "st.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

static char tmp_root[256];

static void rm_rf(const char *dir) {
    DIR *d = opendir(dir);
    if (!d)
        return;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
            continue;
        char p[1024];
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        struct stat st;
        if (lstat(p, &st) == 0 && S_ISDIR(st.st_mode))
            rm_rf(p);
        else
            unlink(p);
    }
    closedir(d);
    rmdir(dir);
}

static const char *gen(const char *name, void (*tweak)(qvl_genmodel_params *)) {
    static char dir[16][512]; /* names stay valid for the next 15 calls */
    static int k;
    k = (k + 1) & 15;
    snprintf(dir[k], sizeof dir[k], "%s/%s", tmp_root, name);
    qvl_genmodel_params p;
    qvl_genmodel_default_params(&p);
    p.preset = "tiny";
    p.seed = 7;
    p.tokenizer_dir = shared_path("fixtures/qwen3-tokenizer");
    if (tweak)
        tweak(&p);
    char err[512];
    qvl_status s = qvl_genmodel_write(dir[k], &p, err, sizeof err);
    CHECKF(s == QVL_OK, "generate %s: %s", name, err);
    return dir[k];
}

static int g_load_mode = QVL_LOAD_AUTO; /* qvl_model_params.mmap for run() */
static int g_quant = QVL_QUANT_NONE;     /* and .quant */
static const char *g_cache_dir;          /* and .quant_cache_dir */

/* load, evaluate a short image+text prompt, return the prompt-end logits (heap) */
static float *run(const char *dir, const char *what) {
    char err[1024];
    qvl_model *m = NULL;
    qvl_model_params mp = qvl_model_default_params();
    mp.mmap = g_load_mode;
    mp.quant = (qvl_quant)g_quant;
    mp.quant_cache_dir = g_cache_dir;
    qvl_status s = qvl_model_load(dir, &mp, &m, err, sizeof err);
    CHECKF(s == QVL_OK, "%s: load: %s", what, err);
    if (s != QVL_OK)
        return NULL;
    uint8_t rgb[40 * 48 * 3];
    for (size_t i = 0; i < sizeof rgb; i++)
        rgb[i] = (uint8_t)(i * 7);
    qvl_image *img = NULL;
    CHECK(qvl_image_from_rgb(rgb, 48, 40, &img, err, sizeof err) == QVL_OK);
    qvl_message msg = {"user", "What is shown?", 1, 0};
    int32_t *ids = NULL;
    size_t n = 0;
    CHECKF(qvl_prompt_build(m, &msg, 1, 1, &img, 1, NULL, &ids, &n, err, sizeof err) == QVL_OK,
           "%s: prompt: %s", what, err);
    qvl_ctx_params cp = qvl_ctx_default_params();
    cp.n_ctx = 256;
    cp.n_threads = 2;
    qvl_ctx *c = NULL;
    CHECK(qvl_ctx_create(m, &cp, &c, err, sizeof err) == QVL_OK);
    float *out = NULL;
    if (c && qvl_ctx_eval(c, ids, n, &img, 1) == QVL_OK) {
        int nv = 0;
        const float *lg = qvl_ctx_logits(c, &nv);
        out = malloc((size_t)nv * sizeof *out);
        memcpy(out, lg, (size_t)nv * sizeof *out);
        bool finite = true;
        for (int i = 0; i < nv; i++)
            finite &= lg[i] == lg[i] && lg[i] > -1e30f && lg[i] < 1e30f;
        CHECKF(finite, "%s: non-finite logits", what);
    } else {
        CHECKF(0, "%s: eval failed: %s", what, c ? qvl_ctx_errmsg(c) : "no ctx");
    }
    qvl_ctx_free(c);
    qvl_free(ids);
    qvl_image_free(img);
    qvl_model_free(m);
    return out;
}

static void t_sharded(qvl_genmodel_params *p) {
    p->shard_bytes = 4u << 20;
}
static void t_f16(qvl_genmodel_params *p) {
    p->dtype = QVL_DT_F16;
    p->shard_bytes = 8u << 20;
}
static void t_f32(qvl_genmodel_params *p) {
    p->dtype = QVL_DT_F32;
    p->n_heads = 8;
    p->n_kv_heads = 4;
    p->head_dim = 16;
    p->mrope_section[0] = 4;
    p->mrope_section[1] = 2;
    p->mrope_section[2] = 2;
}
static void t_untied(qvl_genmodel_params *p) {
    p->tie_embeddings = 0;
}
static void t_old(qvl_genmodel_params *p) {
    p->old_prefixes = 1;
}
static void t_mha(qvl_genmodel_params *p) {
    p->n_heads = 2;
    p->n_kv_heads = 2;
    p->vision_heads = 2;
    p->n_deepstack = 3;
    p->vision_depth = 5;
}

static double max_abs_diff(const float *a, const float *b, size_t n) {
    double d = 0;
    for (size_t i = 0; i < n; i++)
        d = fmax(d, fabs((double)a[i] - b[i]));
    return d;
}

static void variants(void) {
    const char *single = gen("single", NULL);
    float *l0 = run(single, "single");
    const char *sharded = gen("sharded", t_sharded);
    char idx[600];
    snprintf(idx, sizeof idx, "%s/model.safetensors.index.json", sharded);
    CHECKF(qvl_file_exists(idx), "sharded model has no index");
    float *l1 = run(sharded, "sharded");
    if (l0 && l1)
        CHECKF(max_abs_diff(l0, l1, 151936) == 0, "sharding changed the logits");
    float *l2 = run(gen("old", t_old), "old prefixes");
    if (l0 && l2)
        CHECKF(max_abs_diff(l0, l2, 151936) == 0, "old key prefixes changed the logits");
    free(run(gen("f16", t_f16), "f16 sharded"));
    free(run(gen("f32", t_f32), "f32 8 heads / 4 kv / head_dim 16 / mrope [4,2,2]"));
    free(run(gen("mha", t_mha), "2 heads, 3 DeepStack taps"));
    const char *untied = gen("untied", t_untied);
    free(run(untied, "untied"));
    char err[512];
    qvl_model *m = NULL;
    if (qvl_model_load(untied, NULL, &m, err, sizeof err) == QVL_OK) {
        CHECK(!m->lm_head_tied && m->lm_head.data != m->embed.data);
        qvl_model_free(m);
    }
    if (qvl_model_load(single, NULL, &m, err, sizeof err) == QVL_OK) {
        CHECK(m->lm_head_tied && m->lm_head.data == m->embed.data);
        qvl_model_free(m);
    }
    free(l0);
    free(l1);
    free(l2);
}

/* every load mode gives the same logits; each places the shards as it says */
static void load_modes(void) {
    const char *dir = gen("modes", t_sharded);
    float *l[3] = {NULL, NULL, NULL};
    const int modes[3] = {QVL_LOAD_AUTO, QVL_LOAD_MMAP, QVL_LOAD_COPY};
    for (int i = 0; i < 3; i++) {
        g_load_mode = modes[i];
        l[i] = run(dir, qvl_load_mode_name(modes[i]));
        char err[512];
        qvl_model *m = NULL;
        qvl_model_params mp = qvl_model_default_params();
        mp.mmap = modes[i];
        if (qvl_model_load(dir, &mp, &m, err, sizeof err) == QVL_OK) {
            uint64_t in_place = 1, copied = 1;
            qvl_model_weight_residency(m, &in_place, &copied);
            CHECK(in_place + copied > 0);
            /* the tiny shards are under the 64 MiB auto threshold: used in place */
            CHECKF(modes[i] == QVL_LOAD_COPY ? in_place == 0 : copied == 0,
                   "%s: %llu in place, %llu copied", qvl_load_mode_name(modes[i]),
                   (unsigned long long)in_place, (unsigned long long)copied);
            char *info = qvl_model_info_json(m);
            const char *ip = info ? strstr(info, "\"in_place\":") : NULL;
            if (ip)
                ip += strspn(ip + 11, " \t") + 11;
            CHECKF(ip && !strncmp(ip, modes[i] == QVL_LOAD_COPY ? "false" : "true",
                                  modes[i] == QVL_LOAD_COPY ? 5 : 4),
                   "info: %s", ip ? ip : "no in_place");
            qvl_free(info);
            qvl_model_free(m);
        }
        int back = -1;
        CHECK(qvl_load_mode_from_name(qvl_load_mode_name(modes[i]), &back) && back == modes[i]);
    }
    g_load_mode = QVL_LOAD_AUTO;
    for (int i = 1; i < 3; i++)
        if (l[0] && l[i])
            CHECKF(max_abs_diff(l[0], l[i], 151936) == 0, "load mode %d changed the logits",
                   modes[i]);
    /* a file system that cannot map: auto reads the shards (the same logits), so does a
     * quantised load (its shards are otherwise mapped and read once); --load mmap says why not */
    qvl_st_set_mmap_fail(1);
    float *nomap = run(dir, "auto without mmap");
    CHECK(nomap && l[0] && max_abs_diff(l[0], nomap, 151936) == 0);
    free(nomap);
    g_quant = QVL_QUANT_Q8;
    nomap = run(dir, "q8 without mmap");
    CHECK(nomap != NULL);
    free(nomap);
    g_quant = QVL_QUANT_NONE;
    {
        char err[512] = "";
        qvl_model *m = (qvl_model *)1;
        qvl_model_params mp = qvl_model_default_params();
        mp.mmap = QVL_LOAD_MMAP;
        qvl_status s = qvl_model_load(dir, &mp, &m, err, sizeof err);
        CHECKF(s == QVL_E_IO && m == NULL && strstr(err, "mmap failed") &&
                   strstr(err, ".safetensors"),
               "--load mmap without mmap: status %d, '%s'", (int)s, err);
    }
    qvl_st_set_mmap_fail(0);
    for (int i = 0; i < 3; i++)
        free(l[i]);
    int junk = 0;
    CHECK(!qvl_load_mode_from_name("huge", &junk) && !qvl_load_mode_from_name(NULL, &junk));
    char err[512] = "";
    qvl_model *m = (qvl_model *)1;
    qvl_model_params mp = qvl_model_default_params();
    mp.mmap = 3;
    CHECK(qvl_model_load(dir, &mp, &m, err, sizeof err) == QVL_E_INVAL && m == NULL &&
          strstr(err, "load mode"));
}

/* the cache file's path and whether the last load used it (from the info JSON) */
static bool cache_info(const char *dir, int quant, const char *cache, char *path, size_t plen) {
    qvl_model_params mp = qvl_model_default_params();
    mp.quant = (qvl_quant)quant;
    mp.quant_cache_dir = cache;
    qvl_model *m = NULL;
    char err[512];
    bool used = false;
    CHECKF(qvl_model_load(dir, &mp, &m, err, sizeof err) == QVL_OK, "%s", err);
    char *info = m ? qvl_model_info_json(m) : NULL;
    cJSON *j = info ? cJSON_Parse(info) : NULL;
    const cJSON *qc = cJSON_GetObjectItem(j, "quant_cache");
    const cJSON *p = cJSON_GetObjectItem(qc, "path"), *u = cJSON_GetObjectItem(qc, "used");
    CHECK(cJSON_IsString(p) && cJSON_IsBool(u));
    if (cJSON_IsString(p))
        snprintf(path, plen, "%s", p->valuestring);
    used = cJSON_IsTrue(u);
    cJSON_Delete(j);
    qvl_free(info);
    qvl_model_free(m);
    return used;
}

/* --quant with a cache directory: the first load writes the file, later loads map it and give
 * the very logits of quantising again; a stale, truncated or corrupt file is not used (the
 * load quantises again and rewrites it) */
static void quant_cache(void) {
    const char *dir = gen("qcache", t_sharded);
    char cache[600], path[900] = "";
    snprintf(cache, sizeof cache, "%s/cache/sub", tmp_root);
    for (int qi = 0; qi < 2; qi++) {
        int quant = qi ? QVL_QUANT_Q4 : QVL_QUANT_Q8;
        g_quant = quant;
        g_cache_dir = NULL;
        float *ref = run(dir, "quantised, no cache");
        g_cache_dir = cache;
        float *l1 = run(dir, "quantised, cache written");
        CHECK(cache_info(dir, quant, cache, path, sizeof path)); /* the second load maps it */
        CHECKF(qvl_file_exists(path), "no cache file %s", path);
        CHECK(strstr(path, qi ? "-q4.qvlq" : "-q8.qvlq") != NULL);
        float *l2 = run(dir, "quantised, from the cache");
        if (ref && l1 && l2) {
            CHECKF(max_abs_diff(ref, l1, 151936) == 0, "writing the cache changed the logits");
            CHECKF(max_abs_diff(ref, l2, 151936) == 0, "the cached weights changed the logits");
        }
        /* damage (q4 only, to keep the test short): a flipped header byte, a cut tail, a
         * changed checkpoint file */
        for (int d = 0; qi == 1 && d < 3; d++) {
            if (d == 0) {
                FILE *f = fopen(path, "r+b");
                if (f) {
                    fseek(f, 9, SEEK_SET); /* the version */
                    fputc(0x7f, f);
                    fclose(f);
                }
            } else if (d == 1) {
                struct stat sb;
                CHECK(stat(path, &sb) == 0 && truncate(path, sb.st_size - 4096) == 0);
            } else {
                char cfg[700];
                snprintf(cfg, sizeof cfg, "%s/config.json", dir);
                struct timespec ts[2] = {{0, UTIME_OMIT}, {12345, 0}};
                CHECK(utimensat(AT_FDCWD, cfg, ts, 0) == 0);
            }
            CHECKF(!cache_info(dir, quant, cache, path, sizeof path), "damage %d: file used", d);
            if (d == 2) { /* after the rewrite: the same logits again */
                float *l3 = run(dir, "quantised, cache rewritten");
                if (ref && l3)
                    CHECKF(max_abs_diff(ref, l3, 151936) == 0, "the rewritten cache changed the "
                                                               "logits");
                free(l3);
            }
            CHECKF(cache_info(dir, quant, cache, path, sizeof path), "damage %d: not rewritten",
                   d);
        }
        free(ref);
        free(l1);
        free(l2);
    }
    /* a cache directory that cannot be made: the load still works */
    snprintf(cache, sizeof cache, "%s/config.json/x", dir);
    g_cache_dir = cache;
    free(run(dir, "unwritable cache directory"));
    g_cache_dir = NULL;
    g_quant = QVL_QUANT_NONE;
}

/* where --quant-cache puts its files: $QVL_CACHE_DIR, $XDG_CACHE_HOME/qvl (absolute only),
 * $HOME/.cache/qvl, else none */
static void cache_dir_env(void) {
    const char *names[3] = {"QVL_CACHE_DIR", "XDG_CACHE_HOME", "HOME"};
    char *saved[3];
    for (int i = 0; i < 3; i++)
        saved[i] = getenv(names[i]) ? qvl_strdup(getenv(names[i])) : NULL;
    setenv("QVL_CACHE_DIR", "/x/y", 1);
    setenv("XDG_CACHE_HOME", "/c", 1);
    setenv("HOME", "/h", 1);
    const char *want[4] = {"/x/y", "/c/qvl", "/h/.cache/qvl", NULL};
    for (int k = 0; k < 4; k++) {
        if (k == 1)
            unsetenv("QVL_CACHE_DIR");
        if (k == 2)
            setenv("XDG_CACHE_HOME", "relative", 1);
        if (k == 3) {
            unsetenv("XDG_CACHE_HOME");
            unsetenv("HOME");
        }
        char *d = qvl_default_cache_dir();
        CHECKF(want[k] ? d && !strcmp(d, want[k]) : d == NULL, "case %d: %s", k, d ? d : "NULL");
        qvl_free(d);
    }
    for (int i = 0; i < 3; i++) {
        if (saved[i])
            setenv(names[i], saved[i], 1);
        else
            unsetenv(names[i]);
        qvl_free(saved[i]);
    }
}

/* ---- broken directories ------------------------------------------------------------------ */

static void copy_file(const char *from, const char *to) {
    char *buf = NULL;
    size_t len = 0;
    if (qvl_read_file(from, 0, &buf, &len, NULL, 0) != QVL_OK)
        return;
    FILE *f = fopen(to, "wb");
    if (f) {
        fwrite(buf, 1, len, f);
        fclose(f);
    }
    qvl_free(buf);
}

static void write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "wb");
    if (f) {
        fputs(text, f);
        fclose(f);
    }
}

/* a fresh copy of the fixture model's small files + a symlink to its weights */
static const char *fixture_copy(const char *name) {
    static char dir[512];
    snprintf(dir, sizeof dir, "%s/%s", tmp_root, name);
    mkdir(dir, 0755);
    const char *files[] = {"config.json", "generation_config.json", "preprocessor_config.json",
                           "tokenizer.json", "tokenizer_config.json", "chat_template.json"};
    char a[600], b[600];
    for (size_t i = 0; i < sizeof files / sizeof *files; i++) {
        snprintf(a, sizeof a, "%s/%s", shared_path("fixtures/tiny-qwen3vl/model"), files[i]);
        snprintf(b, sizeof b, "%s/%s", dir, files[i]);
        copy_file(a, b);
    }
    snprintf(a, sizeof a, "%s/model.safetensors", shared_path("fixtures/tiny-qwen3vl/model"));
    snprintf(b, sizeof b, "%s/model.safetensors", dir);
    /* the link's target absolute: a relative one would be taken from the link's directory */
    char abs[PATH_MAX];
    if (!realpath(a, abs) || symlink(abs, b) != 0)
        copy_file(a, b);
    return dir;
}

static void expect_error(const char *dir, qvl_status want, const char *needle, const char *what) {
    char err[1024] = "";
    qvl_model *m = NULL;
    qvl_status s = qvl_model_load(dir, NULL, &m, err, sizeof err);
    CHECKF(s == want && m == NULL, "%s: status %s, want %s (%s)", what, qvl_status_str(s),
           qvl_status_str(want), err);
    CHECKF(needle == NULL || strstr(err, needle) != NULL, "%s: message '%s' lacks '%s'", what,
           err, needle);
    qvl_model_free(m);
}

/* Rewrite config.json with one substring replaced. */
static void patch_config(const char *dir, const char *from, const char *to) {
    char p[600];
    snprintf(p, sizeof p, "%s/config.json", dir);
    char *buf = NULL;
    size_t len;
    if (qvl_read_file(p, 0, &buf, &len, NULL, 0) != QVL_OK)
        return;
    char *hit = strstr(buf, from);
    CHECKF(hit != NULL, "patch: '%s' not in config", from);
    if (hit) {
        FILE *f = fopen(p, "wb");
        fwrite(buf, 1, (size_t)(hit - buf), f);
        fputs(to, f);
        fputs(hit + strlen(from), f);
        fclose(f);
    }
    qvl_free(buf);
}

static void broken(void) {
    char p[600];
    expect_error(tmp_root, QVL_E_IO, "no config.json", "a directory that is not a model");
    snprintf(p, sizeof p, "%s/missing", tmp_root);
    expect_error(p, QVL_E_IO, "missing", "a path that does not exist");
    expect_error("no-such-org/no-such-model", QVL_E_IO, "Hugging Face cache", "unknown hub id");

    const char *d = fixture_copy("badjson");
    snprintf(p, sizeof p, "%s/config.json", d);
    write_text(p, "{\"model_type\": \"qwen3_vl\", \"text_config\": {");
    expect_error(d, QVL_E_FORMAT, "config.json", "malformed config.json");

    d = fixture_copy("badtype");
    patch_config(d, "\"hidden_size\": 64,\n    \"initializer_range\": 0.02,\n    \"intermediate_size\": 192",
                 "\"hidden_size\": \"64\",\n    \"initializer_range\": 0.02,\n    \"intermediate_size\": 192");
    expect_error(d, QVL_E_FORMAT, "hidden_size", "hidden_size as a string");

    d = fixture_copy("wrongshape");
    patch_config(d, "\"intermediate_size\": 192", "\"intermediate_size\": 256");
    expect_error(d, QVL_E_FORMAT, "mlp.gate_proj.weight", "wrong shape (config says 256)");

    d = fixture_copy("moretaps");
    patch_config(d, "\"deepstack_visual_indexes\": [\n      1,\n      2\n    ]",
                 "\"deepstack_visual_indexes\": [1, 2, 3]");
    expect_error(d, QVL_E_FORMAT, "deepstack_merger_list.2", "missing tensor (a third tap)");

    d = fixture_copy("morelayers");
    patch_config(d, "\"num_hidden_layers\": 3", "\"num_hidden_layers\": 4");
    expect_error(d, QVL_E_FORMAT, "layers.3.", "missing layer");

    d = fixture_copy("moe");
    patch_config(d, "\"model_type\": \"qwen3_vl\"", "\"model_type\": \"qwen3_vl_moe\"");
    expect_error(d, QVL_E_UNSUPPORTED, "MoE", "MoE model");

    d = fixture_copy("mrope");
    patch_config(d, "\"mrope_interleaved\": true", "\"mrope_interleaved\": false");
    expect_error(d, QVL_E_UNSUPPORTED, "interleaved", "non-interleaved M-RoPE");

    d = fixture_copy("badtok");
    snprintf(p, sizeof p, "%s/tokenizer.json", d);
    write_text(p, "{\"model\": {\"type\": \"BPE\", \"vocab\": [1, 2]}}");
    expect_error(d, QVL_E_FORMAT, NULL, "malformed tokenizer.json");

    d = fixture_copy("notok");
    snprintf(p, sizeof p, "%s/tokenizer.json", d);
    unlink(p);
    expect_error(d, QVL_E_IO, "tokenizer.json", "missing tokenizer.json");

    d = fixture_copy("trunc");
    snprintf(p, sizeof p, "%s/model.safetensors", d);
    unlink(p);
    {
        char *buf = NULL;
        size_t len = 0;
        char src[600];
        snprintf(src, sizeof src, "%s/model.safetensors",
                 shared_path("fixtures/tiny-qwen3vl/model"));
        if (qvl_read_file(src, 0, &buf, &len, NULL, 0) == QVL_OK) {
            FILE *f = fopen(p, "wb");
            fwrite(buf, 1, len / 2, f);
            fclose(f);
            qvl_free(buf);
        }
    }
    expect_error(d, QVL_E_FORMAT, "model.safetensors", "truncated safetensors");

    /* a sharded model with one shard deleted */
    const char *sh = gen("missing-shard", t_sharded);
    snprintf(p, sizeof p, "%s/model-00002-of-00003.safetensors", sh);
    if (!qvl_file_exists(p))
        snprintf(p, sizeof p, "%s/model-00001-of-00002.safetensors", sh);
    CHECKF(unlink(p) == 0, "no shard to delete in %s", sh);
    expect_error(sh, QVL_E_IO, "safetensors", "missing shard");
}

static void hub_cache(void) {
    /* $HF_HUB_CACHE/models--Org--Name/snapshots/<rev> resolves to the snapshot */
    char base[600], snap[800];
    snprintf(base, sizeof base, "%s/hub", tmp_root);
    mkdir(base, 0755);
    snprintf(snap, sizeof snap, "%s/models--Org--Tiny", base);
    mkdir(snap, 0755);
    strcat(snap, "/snapshots");
    mkdir(snap, 0755);
    strcat(snap, "/abc123");
    mkdir(snap, 0755);
    char cfg[900];
    snprintf(cfg, sizeof cfg, "%s/config.json", snap);
    write_text(cfg, "{}");
    setenv("HF_HUB_CACHE", base, 1);
    char *out = NULL, err[1024];
    CHECK(qvl_model_resolve("Org/Tiny", &out, err, sizeof err) == QVL_OK);
    CHECKF(out && !strcmp(out, snap), "resolved to %s", out ? out : "(null)");
    qvl_free(out);
    CHECK(qvl_model_resolve("Org/Other", &out, err, sizeof err) == QVL_E_IO);
    CHECK(strstr(err, base) != NULL);
    unsetenv("HF_HUB_CACHE");
}

int main(void) {
    snprintf(tmp_root, sizeof tmp_root, "/tmp/qvl-test-model-XXXXXX");
    if (!mkdtemp(tmp_root)) {
        perror("mkdtemp");
        return 1;
    }
    variants();
    load_modes();
    quant_cache();
    cache_dir_env();
    broken();
    hub_cache();
    rm_rf(tmp_root);
    CHECK_DONE();
}
