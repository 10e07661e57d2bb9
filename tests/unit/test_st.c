/* test_st.c - safetensors reader/writer: valid single files and sharded directories written with
 * the writer, the tiny fixture model, key normalisation, and one case per validation rule (each
 * must fail with a message naming the file and, where relevant, the tensor). Every case works in
 * its own mkdtemp directory. */
#include "check.h"
#include "common.h"
#include "st.h"

#include <dirent.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdint.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static char g_err[1024];

/* ---- helpers ------------------------------------------------------------------------------ */

static int rm_cb(const char *p, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(p);
}

static char *make_tmpdir(void) {
    char tmpl[] = "/tmp/qvl_test_st_XXXXXX";
    char *d = mkdtemp(tmpl);
    if (!d) {
        perror("mkdtemp");
        exit(2);
    }
    return strdup(d);
}

static void rm_tmpdir(char *d) {
    nftw(d, rm_cb, 8, FTW_DEPTH | FTW_PHYS);
    free(d);
}

static char *pjoin(const char *dir, const char *name) {
    static char buf[8][1024];
    static int k;
    k = (k + 1) & 7;
    int r = snprintf(buf[k], sizeof buf[k], "%s/%s", dir, name);
    if (r < 0 || (size_t)r >= sizeof buf[k]) {
        fprintf(stderr, "path too long\n");
        exit(2);
    }
    return buf[k];
}

static void write_bytes(const char *path, const void *p, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(p, 1, n, f) != n) {
        perror(path);
        exit(2);
    }
    fclose(f);
}

static void write_text(const char *path, const char *s) {
    write_bytes(path, s, strlen(s));
}

/* A safetensors file with header `json` (length field = strlen(json) + hdr_len_delta) followed
 * by `data_len` bytes of pattern data. */
static void write_raw(const char *path, const char *json, long long hdr_len_delta,
                      size_t data_len) {
    size_t jl = strlen(json);
    size_t total = 8 + jl + data_len;
    uint8_t *buf = malloc(total);
    uint64_t n = (uint64_t)((long long)jl + hdr_len_delta);
    for (int i = 0; i < 8; i++)
        buf[i] = (uint8_t)(n >> (8 * i));
    memcpy(buf + 8, json, jl);
    for (size_t i = 0; i < data_len; i++)
        buf[8 + jl + i] = (uint8_t)i;
    write_bytes(path, buf, total);
    free(buf);
}

/* Expect qvl_st_open_file(path) to fail, with the file name and `must` (may be NULL) in the
 * message. */
static void expect_bad_file(const char *path, const char *must, int line) {
    qvl_st *st = (qvl_st *)1;
    g_err[0] = 0;
    qvl_status s = qvl_st_open_file(path, &st, g_err, sizeof g_err);
    CHECKF(s != QVL_OK, "line %d: accepted %s", line, path);
    CHECKF(st == NULL, "line %d: out not NULL", line);
    CHECKF(strstr(g_err, path) != NULL, "line %d: message lacks file name: %s", line, g_err);
    if (must)
        CHECKF(strstr(g_err, must) != NULL, "line %d: message lacks \"%s\": %s", line, must, g_err);
    if (s == QVL_OK)
        qvl_st_free(st);
}

/* Same through qvl_st_open_dir; `file_part` must be in the message. */
static qvl_status expect_bad_dir(const char *dir, const char *file_part, const char *must,
                                 int line) {
    qvl_st *st = (qvl_st *)1;
    g_err[0] = 0;
    qvl_status s = qvl_st_open_dir(dir, &st, g_err, sizeof g_err);
    CHECKF(s != QVL_OK, "line %d: accepted %s", line, dir);
    CHECKF(st == NULL, "line %d: out not NULL", line);
    CHECKF(strstr(g_err, file_part) != NULL, "line %d: message lacks \"%s\": %s", line, file_part,
           g_err);
    if (must)
        CHECKF(strstr(g_err, must) != NULL, "line %d: message lacks \"%s\": %s", line, must, g_err);
    if (s == QVL_OK)
        qvl_st_free(st);
    return s;
}

/* Write a file through the writer: tensor i holds bytes (i * 37 + k) & 0xff, k = byte index. */
static qvl_status write_model(const char *path, size_t n, const char *const *names,
                              const qvl_dtype *dt, const int *nd,
                              const int64_t (*shapes)[QVL_ST_MAX_DIMS]) {
    qvl_st_writer *w = NULL;
    qvl_status s =
        qvl_st_writer_open(path, n, names, dt, nd, shapes, "pt", &w, g_err, sizeof g_err);
    if (s != QVL_OK)
        return s;
    for (size_t i = 0; i < n; i++) {
        size_t cnt = 1;
        for (int d = 0; d < nd[i]; d++)
            cnt *= (size_t)shapes[i][d];
        size_t nb = qvl_dtype_row_bytes(dt[i], cnt);
        /* write in odd-sized chunks to exercise chunking */
        uint8_t chunk[7];
        for (size_t k = 0; k < nb;) {
            size_t c = nb - k < sizeof chunk ? nb - k : sizeof chunk;
            for (size_t j = 0; j < c; j++)
                chunk[j] = (uint8_t)((i * 37 + k + j) & 0xff);
            s = qvl_st_writer_write(w, chunk, c);
            if (s != QVL_OK)
                break;
            k += c;
        }
    }
    qvl_status s2 = qvl_st_writer_close(w, g_err, sizeof g_err);
    return s != QVL_OK ? s : s2;
}

static bool data_ok(const qvl_st_tensor *t, size_t i) {
    const uint8_t *p = t->data;
    for (size_t k = 0; k < t->nbytes; k++)
        if (p[k] != (uint8_t)((i * 37 + k) & 0xff))
            return false;
    return true;
}

/* ---- valid files -------------------------------------------------------------------------- */

static void test_single_file(void) {
    char *dir = make_tmpdir();
    const char *names[] = {"a", "b", "scalar", "empty", "w\"q"};
    qvl_dtype dt[] = {QVL_DT_F32, QVL_DT_BF16, QVL_DT_I8, QVL_DT_U8, QVL_DT_F16};
    int nd[] = {2, 1, 0, 2, 3};
    int64_t shapes[][QVL_ST_MAX_DIMS] = {{2, 3}, {5}, {0}, {0, 4}, {1, 3, 3}};
    const char *path = pjoin(dir, "model.safetensors");
    CHECKF(write_model(path, 5, names, dt, nd, (const int64_t(*)[QVL_ST_MAX_DIMS])shapes) == QVL_OK,
           "%s", g_err);

    /* header length is a multiple of 8 */
    FILE *f = fopen(path, "rb");
    uint8_t h[8] = {0};
    CHECK(f && fread(h, 1, 8, f) == 8);
    if (f)
        fclose(f);
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--)
        n = (n << 8) | h[i];
    CHECK(n % 8 == 0 && n > 0);

    qvl_st *st = NULL;
    qvl_status s = qvl_st_open_file(path, &st, g_err, sizeof g_err);
    CHECKF(s == QVL_OK, "%s", g_err);
    if (s == QVL_OK) {
        CHECK(qvl_st_count(st) == 5);
        CHECK(qvl_st_n_files(st) == 1);
        CHECK(strcmp(qvl_st_file_name(st, 0), path) == 0);
        struct stat sb;
        CHECK(stat(path, &sb) == 0 && qvl_st_file_size(st, 0) == (uint64_t)sb.st_size);
        CHECK(qvl_st_file_name(st, 1) == NULL && qvl_st_file_name(st, -1) == NULL);
        for (size_t i = 0; i < 5; i++) {
            const qvl_st_tensor *t = qvl_st_find(st, names[i]);
            CHECKF(t != NULL, "missing %s", names[i]);
            if (!t)
                continue;
            CHECK(strcmp(t->name, names[i]) == 0);
            CHECK(t->dtype == dt[i]);
            CHECK(t->n_dims == nd[i]);
            for (int d = 0; d < nd[i]; d++)
                CHECK(t->shape[d] == shapes[i][d]);
            CHECK(t->file == 0);
            CHECKF(data_ok(t, i), "data of %s", names[i]);
            /* w"q follows an odd-sized tensor: the loader gives it an aligned copy */
            CHECKF((uintptr_t)t->data % qvl_dtype_row_bytes(dt[i], 1) == 0,
                   "%s is not on its element size", names[i]);
        }
        CHECK(qvl_st_find(st, "a")->nbytes == 24);
        CHECK(qvl_st_find(st, "b")->nbytes == 10);
        CHECK(qvl_st_find(st, "scalar")->nbytes == 1);
        CHECK(qvl_st_find(st, "empty")->nbytes == 0);
        CHECK(qvl_st_find(st, "nope") == NULL);
        CHECK(qvl_st_at(st, 5) == NULL);
        /* load order is offset order: a, b, scalar, empty (size 0 at the same offset) */
        CHECK(qvl_st_at(st, 0) == qvl_st_find(st, "a"));
        CHECK(qvl_st_at(st, 1) == qvl_st_find(st, "b"));
        CHECK(qvl_st_at(st, 2) == qvl_st_find(st, "scalar"));
        qvl_st_free(st);
    }
    /* the same image through the in-memory parser */
    char *buf = NULL;
    size_t len = 0;
    CHECK(qvl_read_file(path, 0, &buf, &len, g_err, sizeof g_err) == QVL_OK);
    if (buf) {
        CHECKF(qvl_st_parse_header((const uint8_t *)buf, len, g_err, sizeof g_err) == QVL_OK, "%s",
               g_err);
        /* every truncation fails cleanly (the last tensors need the last bytes) */
        for (size_t k = 0; k < len; k++) {
            qvl_status ts = qvl_st_parse_header((const uint8_t *)buf, k, g_err, sizeof g_err);
            if (ts == QVL_OK) {
                CHECKF(0, "truncation to %zu accepted", k);
                break;
            }
        }
        /* deterministic byte corruption: must never crash */
        uint8_t *c = malloc(len);
        uint32_t r = 12345;
        for (int it = 0; it < 3000; it++) {
            memcpy(c, buf, len);
            for (int j = 0; j < 3; j++) {
                r = r * 1103515245u + 12345u;
                size_t pos = (r >> 8) % (len < 200 ? len : 200);
                r = r * 1103515245u + 12345u;
                c[pos] = (uint8_t)(r >> 16);
            }
            (void)qvl_st_parse_header(c, len, g_err, sizeof g_err);
        }
        free(c);
        qvl_free(buf);
    }
    CHECK(qvl_st_parse_header(NULL, 0, g_err, sizeof g_err) != QVL_OK);
    CHECK(strstr(g_err, "<memory>") != NULL);

    /* a directory with a single model.safetensors */
    s = qvl_st_open_dir(dir, &st, g_err, sizeof g_err);
    CHECKF(s == QVL_OK, "%s", g_err);
    if (s == QVL_OK) {
        CHECK(qvl_st_count(st) == 5);
        qvl_st_free(st);
    }
    rm_tmpdir(dir);
}

static void test_sharded(void) {
    char *dir = make_tmpdir();
    const char *n1[] = {"model.language_model.embed_tokens.weight", "model.visual.x"};
    const char *n2[] = {"lm_head.weight", "model.language_model.norm.weight", "extra"};
    qvl_dtype d1[] = {QVL_DT_BF16, QVL_DT_F32};
    qvl_dtype d2[] = {QVL_DT_BF16, QVL_DT_F16, QVL_DT_I64};
    int nd1[] = {2, 1};
    int nd2[] = {2, 1, 1};
    int64_t s1[][QVL_ST_MAX_DIMS] = {{10, 4}, {3}};
    int64_t s2[][QVL_ST_MAX_DIMS] = {{10, 4}, {4}, {2}};
    CHECK(write_model(pjoin(dir, "model-00001-of-00002.safetensors"), 2, n1, d1, nd1,
                      (const int64_t(*)[QVL_ST_MAX_DIMS])s1) == QVL_OK);
    CHECK(write_model(pjoin(dir, "model-00002-of-00002.safetensors"), 3, n2, d2, nd2,
                      (const int64_t(*)[QVL_ST_MAX_DIMS])s2) == QVL_OK);
    /* "extra" is in shard 2 but not in the weight_map: accepted */
    const char *names[] = {n2[1], n1[0], n2[0], n1[1]};
    const char *files[] = {"model-00002-of-00002.safetensors", "model-00001-of-00002.safetensors",
                           "model-00002-of-00002.safetensors", "model-00001-of-00002.safetensors"};
    CHECKF(qvl_st_write_index(pjoin(dir, "model.safetensors.index.json"), 4, names, files, 212,
                              g_err, sizeof g_err) == QVL_OK,
           "%s", g_err);
    /* a stray model.safetensors must be ignored when the index exists */
    write_text(pjoin(dir, "model.safetensors"), "junk");

    qvl_st *st = NULL;
    qvl_status s = qvl_st_open_dir(dir, &st, g_err, sizeof g_err);
    CHECKF(s == QVL_OK, "%s", g_err);
    if (s == QVL_OK) {
        CHECK(qvl_st_count(st) == 5);
        CHECK(qvl_st_n_files(st) == 2);
        CHECK(strstr(qvl_st_file_name(st, 0), "model-00001-of-00002.safetensors") != NULL);
        CHECK(strstr(qvl_st_file_name(st, 1), "model-00002-of-00002.safetensors") != NULL);
        for (size_t i = 0; i < 2; i++) {
            const qvl_st_tensor *t = qvl_st_find(st, n1[i]);
            CHECK(t && t->file == 0 && t->dtype == d1[i] && t->shape[0] == s1[i][0] &&
                  data_ok(t, i));
        }
        for (size_t i = 0; i < 3; i++) {
            const qvl_st_tensor *t = qvl_st_find(st, n2[i]);
            CHECK(t && t->file == 1 && t->dtype == d2[i] && t->shape[0] == s2[i][0] &&
                  data_ok(t, i));
        }
        const qvl_st_tensor *e = qvl_st_find(st, "model.language_model.embed_tokens.weight");
        CHECK(e && e->n_dims == 2 && e->shape[1] == 4 && e->nbytes == 80);
        qvl_st_free(st);
    }
    /* every mode reads the same bytes and says where they are */
    for (int mode = QVL_ST_MAP; mode <= QVL_ST_MAP_LAZY; mode++) {
        st = NULL;
        s = qvl_st_open_dir_ex(dir, (qvl_st_mode)mode, NULL, &st, g_err, sizeof g_err);
        CHECKF(s == QVL_OK, "mode %d: %s", mode, g_err);
        if (s != QVL_OK)
            continue;
        for (size_t i = 0; i < 3; i++) {
            const qvl_st_tensor *t = qvl_st_find(st, n2[i]);
            CHECKF(t && data_ok(t, i), "mode %d: data of %s", mode, n2[i]);
        }
        uint64_t copied = 0, mapped = 0;
        qvl_st_residency(st, &copied, &mapped);
        CHECK(copied + mapped == qvl_st_file_size(st, 0) + qvl_st_file_size(st, 1));
        /* small shards stay in place in auto mode */
        CHECKF(mode == QVL_ST_COPY ? mapped == 0 : copied == 0, "mode %d: %llu / %llu", mode,
               (unsigned long long)copied, (unsigned long long)mapped);
        CHECK(qvl_st_file_copied(st, 0) == (mode == QVL_ST_COPY) && !qvl_st_file_copied(st, 2));
        /* releasing a tensor's pages is harmless to the others */
        const qvl_st_tensor *e = qvl_st_find(st, n1[0]);
        qvl_st_release(st, e->data, e->nbytes);
        qvl_st_release(st, g_err, sizeof g_err); /* not the reader's memory: ignored */
        CHECK(data_ok(qvl_st_find(st, n1[1]), 1));
        qvl_st_free(st);
    }
    /* the index text parses through the fuzz entry point too */
    char *txt = NULL;
    size_t len = 0;
    CHECK(qvl_read_file(pjoin(dir, "model.safetensors.index.json"), 0, &txt, &len, g_err,
                        sizeof g_err) == QVL_OK);
    if (txt) {
        CHECKF(qvl_st_parse_index(txt, len, g_err, sizeof g_err) == QVL_OK, "%s", g_err);
        CHECK(strstr(txt, "\"total_size\": 212") != NULL);
        qvl_free(txt);
    }

    /* allocation failures: every one reports QVL_E_NOMEM and leaks nothing (LSan) */
    int nomem_ok = 1;
    for (long k = 0; k < 10000; k++) {
        qvl_alloc_fail_at(k, 0);
        st = NULL;
        s = qvl_st_open_dir(dir, &st, g_err, sizeof g_err);
        qvl_alloc_fail_at(-1, 0);
        if (s == QVL_OK) {
            qvl_st_free(st);
            break;
        }
        if (s != QVL_E_NOMEM || st != NULL) {
            fprintf(stderr, "fail_at %ld: status %d: %s\n", k, (int)s, g_err);
            nomem_ok = 0;
        }
    }
    CHECK(nomem_ok);
    rm_tmpdir(dir);
}

static void test_fixture(void) {
    const char *dir = shared_path("fixtures/tiny-qwen3vl/model");
    qvl_st *st = NULL;
    qvl_status s = qvl_st_open_dir(dir, &st, g_err, sizeof g_err);
    CHECKF(s == QVL_OK, "%s", g_err);
    if (s != QVL_OK)
        return;
    size_t n = qvl_st_count(st);
    CHECKF(n > 50, "only %zu tensors", n);
    const qvl_st_tensor *t = qvl_st_find(st, "model.language_model.embed_tokens.weight");
    CHECK(t != NULL);
    if (t) {
        CHECK(t->dtype == QVL_DT_BF16);
        CHECK(t->n_dims == 2 && t->shape[0] == 151936 && t->shape[1] == 64);
        CHECK(t->nbytes == (size_t)151936 * 64 * 2);
    }
    size_t canon = 0;
    uint64_t bytes = 0;
    for (size_t i = 0; i < n; i++) {
        const qvl_st_tensor *u = qvl_st_at(st, i);
        canon += strncmp(u->name, "model.visual.", 13) == 0 ||
                 strncmp(u->name, "model.language_model.", 21) == 0 ||
                 strcmp(u->name, "lm_head.weight") == 0;
        bytes += u->nbytes;
        CHECK(qvl_st_find(st, u->name) == u);
    }
    CHECK(canon == n);
    CHECK(bytes < qvl_st_file_size(st, 0));
    CHECK(qvl_st_find(st, "model.visual.patch_embed.proj.weight") != NULL);
    printf("fixture: %zu tensors, %llu bytes of data\n", n, (unsigned long long)bytes);
    qvl_st_free(st);
}

/* ---- normalisation ------------------------------------------------------------------------ */

static void check_norm(const char *raw, const char *want) {
    char *c = qvl_st_normalize_name(raw);
    CHECKF(c && strcmp(c, want) == 0, "%s -> %s, want %s", raw, c ? c : "(null)", want);
    qvl_free(c);
}

static void test_normalise(void) {
    check_norm("visual.blocks.0.attn.qkv.weight", "model.visual.blocks.0.attn.qkv.weight");
    check_norm("model.layers.0.mlp.up_proj.weight",
               "model.language_model.layers.0.mlp.up_proj.weight");
    check_norm("model.embed_tokens.weight", "model.language_model.embed_tokens.weight");
    check_norm("model.visual.merger.norm.weight", "model.visual.merger.norm.weight");
    check_norm("model.language_model.norm.weight", "model.language_model.norm.weight");
    check_norm("language_model.model.layers.1.x", "model.language_model.layers.1.x");
    check_norm("language_model.lm_head.weight", "lm_head.weight");
    check_norm("lm_head.weight", "lm_head.weight");
    check_norm("other.thing", "other.thing");

    char *dir = make_tmpdir();
    const char *names[] = {"visual.patch_embed.proj.weight", "model.embed_tokens.weight",
                           "language_model.model.norm.weight", "language_model.lm_head.weight"};
    qvl_dtype dt[] = {QVL_DT_BF16, QVL_DT_BF16, QVL_DT_BF16, QVL_DT_BF16};
    int nd[] = {1, 1, 1, 2};
    int64_t shapes[][QVL_ST_MAX_DIMS] = {{2}, {3}, {4}, {2, 2}};
    const char *path = pjoin(dir, "old.safetensors");
    CHECK(write_model(path, 4, names, dt, nd, (const int64_t(*)[QVL_ST_MAX_DIMS])shapes) == QVL_OK);
    qvl_st *st = NULL;
    qvl_status s = qvl_st_open_file(path, &st, g_err, sizeof g_err);
    CHECKF(s == QVL_OK, "%s", g_err);
    if (s == QVL_OK) {
        const qvl_st_tensor *t = qvl_st_find(st, "model.visual.patch_embed.proj.weight");
        CHECK(t && t->shape[0] == 2 && data_ok(t, 0));
        t = qvl_st_find(st, "model.language_model.embed_tokens.weight");
        CHECK(t && t->shape[0] == 3 && data_ok(t, 1));
        t = qvl_st_find(st, "model.language_model.norm.weight");
        CHECK(t && t->shape[0] == 4 && data_ok(t, 2));
        t = qvl_st_find(st, "lm_head.weight");
        CHECK(t && t->n_dims == 2 && data_ok(t, 3));
        CHECK(qvl_st_find(st, "visual.patch_embed.proj.weight") == NULL);
        CHECK(qvl_st_find(st, "model.embed_tokens.weight") == NULL);
        qvl_st_free(st);
    }
    /* two raw names with one canonical form */
    path = pjoin(dir, "clash.safetensors");
    write_raw(path,
              "{\"visual.x\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},"
              "\"model.visual.x\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[1,2]}}",
              0, 2);
    expect_bad_file(path, "model.visual.x", __LINE__);
    CHECK(strstr(g_err, "visual.x") != NULL && strstr(g_err, "normalise") != NULL);

    /* an index using old names for new-layout shards (and the other way round) resolves */
    char *d2 = make_tmpdir();
    const char *nn[] = {"model.visual.a", "model.language_model.b"};
    qvl_dtype dd[] = {QVL_DT_U8, QVL_DT_U8};
    int n1[] = {1, 1};
    int64_t ss[][QVL_ST_MAX_DIMS] = {{1}, {2}};
    CHECK(write_model(pjoin(d2, "s1.safetensors"), 2, nn, dd, n1,
                      (const int64_t(*)[QVL_ST_MAX_DIMS])ss) == QVL_OK);
    const char *iname[] = {"visual.a", "model.b"};
    const char *ifile[] = {"s1.safetensors", "s1.safetensors"};
    CHECK(qvl_st_write_index(pjoin(d2, "model.safetensors.index.json"), 2, iname, ifile, 3, g_err,
                             sizeof g_err) == QVL_OK);
    s = qvl_st_open_dir(d2, &st, g_err, sizeof g_err);
    CHECKF(s == QVL_OK, "%s", g_err);
    if (s == QVL_OK) {
        CHECK(qvl_st_find(st, "model.language_model.b") != NULL);
        qvl_st_free(st);
    }
    rm_tmpdir(d2);
    rm_tmpdir(dir);
}

/* ---- bad single files --------------------------------------------------------------------- */

#define ENT(name, dt, shape, b, e) \
    "\"" name "\":{\"dtype\":\"" dt "\",\"shape\":" shape ",\"data_offsets\":[" #b "," #e "]}"

static void test_bad_files(void) {
    char *dir = make_tmpdir();
    const char *p;

    p = pjoin(dir, "empty.safetensors");
    write_bytes(p, "", 0);
    expect_bad_file(p, "too small", __LINE__);

    p = pjoin(dir, "seven.safetensors");
    write_bytes(p, "\x02\0\0\0\0\0\0", 7);
    expect_bad_file(p, "too small", __LINE__);

    p = pjoin(dir, "hdrlen.safetensors");
    write_raw(p, "{}", 1, 0);
    expect_bad_file(p, "header length", __LINE__);

    p = pjoin(dir, "hdrhuge.safetensors");
    write_raw(p, "{}", (long long)1 << 62, 0);
    expect_bad_file(p, "header length", __LINE__);

    p = pjoin(dir, "truncated.safetensors");
    write_raw(p, "{" ENT("t.a", "F32", "[2,2]", 0, 16) "}", 0, 12);
    expect_bad_file(p, "t.a", __LINE__);

    p = pjoin(dir, "pastend.safetensors");
    write_raw(p, "{" ENT("t.a", "U8", "[4]", 0, 4) "," ENT("t.b", "U8", "[4]", 100, 104) "}", 0, 8);
    expect_bad_file(p, "t.b", __LINE__);

    p = pjoin(dir, "overlap.safetensors");
    write_raw(p, "{" ENT("t.a", "U8", "[4]", 0, 4) "," ENT("t.b", "U8", "[4]", 2, 6) "}", 0, 8);
    expect_bad_file(p, "overlap", __LINE__);
    CHECK(strstr(g_err, "t.a") && strstr(g_err, "t.b"));

    p = pjoin(dir, "beginend.safetensors");
    write_raw(p, "{" ENT("t.a", "U8", "[0]", 4, 2) "}", 0, 8);
    expect_bad_file(p, "t.a", __LINE__);

    p = pjoin(dir, "mismatch.safetensors");
    write_raw(p, "{" ENT("t.a", "BF16", "[2,2]", 0, 4) "}", 0, 8);
    expect_bad_file(p, "t.a", __LINE__);

    p = pjoin(dir, "dtype.safetensors");
    write_raw(p, "{" ENT("t.q", "Q4_K", "[4]", 0, 4) "}", 0, 8);
    expect_bad_file(p, "t.q", __LINE__);
    CHECK(strstr(g_err, "Q4_K") != NULL);

    p = pjoin(dir, "dtype2.safetensors");
    write_raw(p, "{\"t.a\":{\"dtype\":7,\"shape\":[1],\"data_offsets\":[0,1]}}", 0, 8);
    expect_bad_file(p, "t.a", __LINE__);

    p = pjoin(dir, "negshape.safetensors");
    write_raw(p, "{" ENT("t.n", "U8", "[-4]", 0, 4) "}", 0, 8);
    expect_bad_file(p, "t.n", __LINE__);

    p = pjoin(dir, "fracshape.safetensors");
    write_raw(p, "{" ENT("t.f", "U8", "[1.5,2]", 0, 3) "}", 0, 8);
    expect_bad_file(p, "t.f", __LINE__);

    p = pjoin(dir, "strshape.safetensors");
    write_raw(p, "{" ENT("t.s", "U8", "[\"4\"]", 0, 4) "}", 0, 8);
    expect_bad_file(p, "t.s", __LINE__);

    p = pjoin(dir, "noshape.safetensors");
    write_raw(p, "{\"t.s\":{\"dtype\":\"U8\",\"data_offsets\":[0,4]}}", 0, 8);
    expect_bad_file(p, "t.s", __LINE__);

    p = pjoin(dir, "ninedims.safetensors");
    write_raw(p, "{" ENT("t.d", "U8", "[1,1,1,1,1,1,1,1,1]", 0, 1) "}", 0, 8);
    expect_bad_file(p, "t.d", __LINE__);

    p = pjoin(dir, "overflow.safetensors");
    write_raw(p, "{" ENT("t.o", "F32", "[4294967296,4294967296,4294967296]", 0, 0) "}", 0, 8);
    expect_bad_file(p, "t.o", __LINE__);

    p = pjoin(dir, "offs.safetensors");
    write_raw(p, "{\"t.o\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0]}}", 0, 8);
    expect_bad_file(p, "t.o", __LINE__);

    p = pjoin(dir, "offs2.safetensors");
    write_raw(p, "{\"t.o\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1.0e400]}}", 0, 8);
    expect_bad_file(p, NULL, __LINE__);

    p = pjoin(dir, "nonobject.safetensors");
    write_raw(p, "{\"t.x\":[1,2,3]}", 0, 8);
    expect_bad_file(p, "t.x", __LINE__);
    CHECK(strstr(g_err, "not an object") != NULL);

    p = pjoin(dir, "malformed.safetensors");
    write_raw(p, "{\"t.x\":{\"dtype\":\"U8\",", 0, 8);
    expect_bad_file(p, "JSON", __LINE__);

    p = pjoin(dir, "array.safetensors");
    write_raw(p, "[1,2]", 0, 8);
    expect_bad_file(p, "object", __LINE__);

    p = pjoin(dir, "trailing.safetensors");
    write_raw(p, "{}  x", 0, 8);
    expect_bad_file(p, "trailing", __LINE__);

    p = pjoin(dir, "dup.safetensors");
    write_raw(p, "{" ENT("t.a", "U8", "[4]", 0, 4) "," ENT("t.a", "U8", "[4]", 4, 8) "}", 0, 8);
    expect_bad_file(p, "t.a", __LINE__);
    CHECK(strstr(g_err, "duplicate") != NULL);

    p = pjoin(dir, "meta.safetensors");
    write_raw(p, "{\"__metadata__\":{\"format\":1}," ENT("t.a", "U8", "[4]", 0, 4) "}", 0, 8);
    expect_bad_file(p, "__metadata__", __LINE__);

    p = pjoin(dir, "meta2.safetensors");
    write_raw(p, "{\"__metadata__\":\"pt\"}", 0, 8);
    expect_bad_file(p, "__metadata__", __LINE__);

    /* header over the 100 MB limit in a (sparse) file big enough to hold it */
    p = pjoin(dir, "bighdr.safetensors");
    {
        uint64_t n = (uint64_t)QVL_ST_MAX_HEADER + 8;
        uint8_t h[10] = {0};
        for (int i = 0; i < 8; i++)
            h[i] = (uint8_t)(n >> (8 * i));
        h[8] = '{';
        h[9] = '}';
        write_bytes(p, h, sizeof h);
        CHECK(truncate(p, (off_t)(n + 8)) == 0);
        qvl_st *st = NULL;
        qvl_status s = qvl_st_open_file(p, &st, g_err, sizeof g_err);
        CHECK(s == QVL_E_LIMIT && st == NULL && strstr(g_err, p));
    }

    /* valid oddities: padding spaces, empty header, metadata only, zero-size tensor inside */
    p = pjoin(dir, "ok1.safetensors");
    write_raw(p, "{\"__metadata__\":{\"format\":\"pt\"}}    ", 0, 0);
    qvl_st *st = NULL;
    CHECKF(qvl_st_open_file(p, &st, g_err, sizeof g_err) == QVL_OK, "%s", g_err);
    CHECK(qvl_st_count(st) == 0);
    qvl_st_free(st);
    p = pjoin(dir, "ok2.safetensors");
    write_raw(p,
              "{" ENT("t.a", "U8", "[4]", 0, 4) "," ENT("t.z", "U8", "[2,0]", 4,
                                                        4) "," ENT("t.b", "BOOL", "[4]", 4, 8) "}",
              0, 8);
    CHECKF(qvl_st_open_file(p, &st, g_err, sizeof g_err) == QVL_OK, "%s", g_err);
    CHECK(qvl_st_count(st) == 3);
    qvl_st_free(st);

    /* missing file, directory instead of file */
    p = pjoin(dir, "nothere.safetensors");
    expect_bad_file(p, NULL, __LINE__);
    expect_bad_file(dir, NULL, __LINE__);

    CHECK(qvl_st_open_file(NULL, &st, g_err, sizeof g_err) == QVL_E_INVAL);
    rm_tmpdir(dir);
}

/* ---- bad directories ---------------------------------------------------------------------- */

/* shard1 holds a, b; shard2 holds c */
static void make_shards(const char *dir) {
    write_raw(pjoin(dir, "s1.safetensors"),
              "{" ENT("model.visual.a", "U8", "[4]", 0, 4) "," ENT("model.visual.b", "U8", "[4]", 4,
                                                                   8) "}",
              0, 8);
    write_raw(pjoin(dir, "s2.safetensors"), "{" ENT("lm_head.weight", "U8", "[2]", 0, 2) "}", 0, 2);
}

static void test_bad_dirs(void) {
    char *dir = make_tmpdir();
    const char *ip = pjoin(dir, "model.safetensors.index.json");

    /* empty directory */
    CHECK(expect_bad_dir(dir, dir, "model.safetensors", __LINE__) == QVL_E_IO);

    make_shards(dir);
    write_text(ip, "{\"metadata\":{},\"weight_map\":{\"model.visual.a\":\"s1.safetensors\","
                   "\"model.visual.b\":\"s1.safetensors\",\"lm_head.weight\":\"s2.safetensors\"}}");
    qvl_st *st = NULL;
    CHECKF(qvl_st_open_dir(dir, &st, g_err, sizeof g_err) == QVL_OK, "%s", g_err);
    CHECK(qvl_st_count(st) == 3 && qvl_st_n_files(st) == 2);
    qvl_st_free(st);

    /* missing shard */
    write_text(ip, "{\"weight_map\":{\"model.visual.a\":\"s1.safetensors\","
                   "\"lm_head.weight\":\"s3.safetensors\"}}");
    CHECK(expect_bad_dir(dir, "s3.safetensors", "lm_head.weight", __LINE__) == QVL_E_IO);

    /* malformed index */
    write_text(ip, "{\"weight_map\":{\"model.visual.a\":\"s1.safetensors\",");
    expect_bad_dir(dir, "model.safetensors.index.json", "JSON", __LINE__);
    write_text(ip, "{\"weight_map\":[\"s1.safetensors\"]}");
    expect_bad_dir(dir, "model.safetensors.index.json", "weight_map", __LINE__);
    write_text(ip, "{\"metadata\":{}}");
    expect_bad_dir(dir, "model.safetensors.index.json", "weight_map", __LINE__);
    write_text(ip, "{\"weight_map\":{}}");
    expect_bad_dir(dir, "model.safetensors.index.json", "empty", __LINE__);
    write_text(ip, "{\"weight_map\":{\"model.visual.a\":3}}");
    expect_bad_dir(dir, "model.safetensors.index.json", "model.visual.a", __LINE__);
    write_text(ip, "");
    expect_bad_dir(dir, "model.safetensors.index.json", NULL, __LINE__);

    /* tensor absent from its shard; tensor in the other shard */
    write_text(ip, "{\"weight_map\":{\"model.visual.zz\":\"s1.safetensors\"}}");
    expect_bad_dir(dir, "model.safetensors.index.json", "model.visual.zz", __LINE__);
    CHECK(strstr(g_err, "s1.safetensors") != NULL);
    write_text(ip, "{\"weight_map\":{\"model.visual.a\":\"s2.safetensors\"}}");
    expect_bad_dir(dir, "model.safetensors.index.json", "model.visual.a", __LINE__);

    /* tensor listed twice (raw, and after normalisation) */
    write_text(ip, "{\"weight_map\":{\"model.visual.a\":\"s1.safetensors\","
                   "\"model.visual.a\":\"s1.safetensors\"}}");
    expect_bad_dir(dir, "model.safetensors.index.json", "model.visual.a", __LINE__);
    write_text(ip, "{\"weight_map\":{\"model.visual.a\":\"s1.safetensors\","
                   "\"visual.a\":\"s1.safetensors\"}}");
    expect_bad_dir(dir, "model.safetensors.index.json", "visual.a", __LINE__);

    /* shard names escaping the directory (the target exists: dir/sub/../s1.safetensors) */
    {
        char sub[1024];
        int r = snprintf(sub, sizeof sub, "%s/sub", dir);
        CHECK(r > 0 && (size_t)r < sizeof sub);
        CHECK(mkdir(sub, 0700) == 0);
        write_text(pjoin(sub, "model.safetensors.index.json"),
                   "{\"weight_map\":{\"model.visual.a\":\"../s1.safetensors\"}}");
        CHECK(expect_bad_dir(sub, "model.safetensors.index.json", "../s1.safetensors", __LINE__) ==
              QVL_E_FORMAT);
        CHECK(strstr(g_err, "model.visual.a") != NULL);
    }
    write_text(ip, "{\"weight_map\":{\"model.visual.a\":\"sub/s1.safetensors\"}}");
    expect_bad_dir(dir, "model.safetensors.index.json", "sub/s1.safetensors", __LINE__);
    write_text(ip, "{\"weight_map\":{\"model.visual.a\":\"..\"}}");
    expect_bad_dir(dir, "model.safetensors.index.json", NULL, __LINE__);
    write_text(ip, "{\"weight_map\":{\"model.visual.a\":\"\"}}");
    expect_bad_dir(dir, "model.safetensors.index.json", NULL, __LINE__);

    /* duplicate tensor across shards */
    write_raw(pjoin(dir, "s3.safetensors"), "{" ENT("model.visual.a", "U8", "[1]", 0, 1) "}", 0, 1);
    write_text(ip, "{\"weight_map\":{\"model.visual.a\":\"s1.safetensors\","
                   "\"model.visual.b\":\"s3.safetensors\"}}");
    expect_bad_dir(dir, "s3.safetensors", "model.visual.a", __LINE__);
    CHECK(strstr(g_err, "s1.safetensors") != NULL);

    /* a bad shard: its error names the shard and tensor */
    write_raw(pjoin(dir, "s4.safetensors"), "{" ENT("model.visual.c", "X9", "[1]", 0, 1) "}", 0, 1);
    write_text(ip, "{\"weight_map\":{\"model.visual.c\":\"s4.safetensors\"}}");
    expect_bad_dir(dir, "s4.safetensors", "model.visual.c", __LINE__);

    /* the index is a directory: an I/O error naming it */
    remove(ip);
    CHECK(mkdir(ip, 0700) == 0);
    remove(pjoin(dir, "s1.safetensors"));
    expect_bad_dir(dir, dir, NULL, __LINE__);

    CHECK(qvl_st_open_dir(NULL, &st, g_err, sizeof g_err) == QVL_E_INVAL);
    rm_tmpdir(dir);
}

/* ---- writer misuse ------------------------------------------------------------------------ */

static void test_writer_errors(void) {
    char *dir = make_tmpdir();
    const char *p = pjoin(dir, "w.safetensors");
    const char *names[] = {"a", "b"};
    qvl_dtype dt[] = {QVL_DT_F32, QVL_DT_F32};
    int nd[] = {1, 1};
    int64_t shapes[][QVL_ST_MAX_DIMS] = {{2}, {1}};
    const int64_t(*sh)[QVL_ST_MAX_DIMS] = (const int64_t(*)[QVL_ST_MAX_DIMS])shapes;
    qvl_st_writer *w = NULL;
    float buf[4] = {1, 2, 3, 4};

    /* too much data */
    CHECK(qvl_st_writer_open(p, 2, names, dt, nd, sh, NULL, &w, g_err, sizeof g_err) == QVL_OK);
    CHECK(qvl_st_writer_write(w, buf, 16) == QVL_E_INVAL);
    CHECK(qvl_st_writer_write(w, buf, 4) == QVL_E_INVAL); /* error latches */
    CHECK(qvl_st_writer_close(w, g_err, sizeof g_err) == QVL_E_INVAL);
    CHECK(strstr(g_err, p) != NULL);
    CHECK(access(p, F_OK) != 0);

    /* too little data */
    CHECK(qvl_st_writer_open(p, 2, names, dt, nd, sh, NULL, &w, g_err, sizeof g_err) == QVL_OK);
    CHECK(qvl_st_writer_write(w, buf, 8) == QVL_OK);
    CHECK(qvl_st_writer_close(w, g_err, sizeof g_err) == QVL_E_FORMAT);
    CHECK(strstr(g_err, p) != NULL);
    CHECK(access(p, F_OK) != 0);

    /* exact, in one chunk spanning both tensors; no metadata */
    CHECK(qvl_st_writer_open(p, 2, names, dt, nd, sh, NULL, &w, g_err, sizeof g_err) == QVL_OK);
    CHECK(qvl_st_writer_write(w, buf, 12) == QVL_OK);
    CHECK(qvl_st_writer_close(w, g_err, sizeof g_err) == QVL_OK);
    qvl_st *st = NULL;
    CHECKF(qvl_st_open_file(p, &st, g_err, sizeof g_err) == QVL_OK, "%s", g_err);
    const qvl_st_tensor *t = qvl_st_find(st, "b");
    CHECK(t && t->nbytes == 4 && ((const float *)t->data)[0] == 3.0f);
    qvl_st_free(st);

    /* bad requests */
    const char *dupn[] = {"a", "a"};
    CHECK(qvl_st_writer_open(p, 2, dupn, dt, nd, sh, NULL, &w, g_err, sizeof g_err) == QVL_E_INVAL);
    CHECK(w == NULL && strstr(g_err, "duplicate"));
    qvl_dtype qdt[] = {QVL_DT_F32, QVL_DT_Q8_0};
    CHECK(qvl_st_writer_open(p, 2, names, qdt, nd, sh, NULL, &w, g_err, sizeof g_err) ==
          QVL_E_INVAL);
    int bad_nd[] = {1, 9};
    CHECK(qvl_st_writer_open(p, 2, names, dt, bad_nd, sh, NULL, &w, g_err, sizeof g_err) ==
          QVL_E_INVAL);
    int64_t neg[][QVL_ST_MAX_DIMS] = {{2}, {-1}};
    CHECK(qvl_st_writer_open(p, 2, names, dt, nd, (const int64_t(*)[QVL_ST_MAX_DIMS])neg, NULL, &w,
                             g_err, sizeof g_err) == QVL_E_INVAL);
    CHECK(qvl_st_writer_open(pjoin(dir, "no/such/dir.safetensors"), 2, names, dt, nd, sh, NULL, &w,
                             g_err, sizeof g_err) == QVL_E_IO);
    CHECK(qvl_st_writer_close(NULL, g_err, sizeof g_err) == QVL_OK);

    /* index writer */
    const char *files[] = {"x.safetensors", "../y.safetensors"};
    CHECK(qvl_st_write_index(pjoin(dir, "i.json"), 2, names, files, 0, g_err, sizeof g_err) ==
          QVL_E_INVAL);
    const char *files2[] = {"x.safetensors", "x.safetensors"};
    CHECK(qvl_st_write_index(pjoin(dir, "i.json"), 2, dupn, files2, 0, g_err, sizeof g_err) ==
          QVL_E_INVAL);
    rm_tmpdir(dir);
}

/* ---- auto mode on a large file (the kernel's part played by a probe) --------------------- */

static int g_tenths = 10; /* the probe reports this many tenths of a mapping in 2 MiB pages */
static int g_tenths2 = -1; /* ... and this many from its second call in a load on, if >= 0 */
static int g_probes;       /* probe calls in this load */
static int g_rereads;     /* "re-reading" messages seen */

static size_t fake_pmd(const void *addr, size_t size) {
    (void)addr;
    int t = g_probes++ > 0 && g_tenths2 >= 0 ? g_tenths2 : g_tenths;
    return size / 10 * (size_t)t;
}

static void count_rereads(qvl_log_level lvl, const char *msg, void *user) {
    (void)lvl;
    (void)user;
    g_rereads += strstr(msg, "re-reading") != NULL;
}

/* map `path` in auto mode; *copied and the number of re-reads it logged */
static int auto_map(const char *path, bool *copied) {
    const uint8_t *m = NULL;
    size_t n = 0;
    int before = g_rereads;
    g_probes = 0;
    *copied = false;
    CHECK(qvl_st_map_whole(path, QVL_ST_AUTO, &m, &n, copied, g_err, sizeof g_err) == QVL_OK);
    CHECK(m && n == (size_t)72 << 20 && m[n - 1] == 0x5a);
    qvl_st_unmap_whole(m, n);
    return g_rereads - before;
}

/* A 72 MiB file (over auto's 64 MiB threshold): mapped through huge pages it stays in place;
 * in none it is copied without a re-read; partly (the file system makes huge folios) it is
 * read again once, and when that does not help a marker in the cache directory stops the
 * next loads from reading it again; a changed file (new mtime) is tried afresh. */
static void test_auto_reread(void) {
    char *d = make_tmpdir();
    const char *f = pjoin(d, "big.bin");
    size_t n = (size_t)72 << 20;
    uint8_t *buf = calloc(1, n);
    if (!buf)
        exit(2);
    buf[n - 1] = 0x5a;
    write_bytes(f, buf, n);
    free(buf);
    setenv("QVL_CACHE_DIR", pjoin(d, "cache"), 1);
    qvl_st_set_pmd_probe(fake_pmd);
    qvl_log_set(count_rereads, NULL, QVL_LOG_INFO);
    bool copied = true;
    g_tenths = 10;
    CHECK(auto_map(f, &copied) == 0 && !copied);
    g_tenths = 0;
    CHECK(auto_map(f, &copied) == 0 && copied);
    g_tenths = 3; /* partly huge, and the re-read helps: in place, no marker */
    g_tenths2 = 10;
    CHECK(auto_map(f, &copied) == 1 && !copied);
    CHECK(!qvl_dir_exists(pjoin(d, "cache/reread-failed")));
    g_tenths2 = -1; /* partly huge, and the re-read does not help */
    CHECK(auto_map(f, &copied) == 1 && copied);
    DIR *md = opendir(pjoin(d, "cache/reread-failed"));
    int markers = 0;
    for (struct dirent *e; md && (e = readdir(md));)
        markers += e->d_name[0] != '.';
    if (md)
        closedir(md);
    CHECKF(markers == 1, "%d re-read markers", markers);
    CHECK(auto_map(f, &copied) == 0 && copied); /* the marker: no second re-read */
    struct timespec ts[2] = {{0, UTIME_OMIT}, {1000000000, 0}}; /* the file changes */
    CHECK(utimensat(AT_FDCWD, f, ts, 0) == 0);
    CHECK(auto_map(f, &copied) == 1 && copied);
    g_tenths = 10; /* huge pages after all: in place, whatever the markers say */
    CHECK(auto_map(f, &copied) == 0 && !copied);
    /* no cache directory at all: the re-read is tried every time, nothing is written */
    unsetenv("QVL_CACHE_DIR");
    const char *home = getenv("HOME"), *xdg = getenv("XDG_CACHE_HOME");
    char *home_s = home ? strdup(home) : NULL, *xdg_s = xdg ? strdup(xdg) : NULL;
    unsetenv("HOME");
    unsetenv("XDG_CACHE_HOME");
    g_tenths = 3;
    CHECK(auto_map(f, &copied) == 1 && copied);
    CHECK(auto_map(f, &copied) == 1 && copied);
    if (home_s)
        setenv("HOME", home_s, 1);
    if (xdg_s)
        setenv("XDG_CACHE_HOME", xdg_s, 1);
    free(home_s);
    free(xdg_s);
    qvl_log_set(NULL, NULL, QVL_LOG_ERROR);
    qvl_st_set_pmd_probe(NULL);
    rm_tmpdir(d);
}

/* A file system that cannot map (every file mmap fails): auto and lazy (what a quantised load
 * uses) read the shards into memory with the same bytes, map fails with a message naming the
 * shard, copy is unaffected. */
static void test_mmap_fail(void) {
    char *dir = make_tmpdir();
    make_shards(dir);
    write_text(pjoin(dir, "model.safetensors.index.json"),
               "{\"weight_map\":{\"model.visual.a\":\"s1.safetensors\","
               "\"model.visual.b\":\"s1.safetensors\",\"lm_head.weight\":\"s2.safetensors\"}}");
    qvl_st *ref = NULL;
    CHECKF(qvl_st_open_dir_ex(dir, QVL_ST_COPY, NULL, &ref, g_err, sizeof g_err) == QVL_OK, "%s",
           g_err);
    qvl_st_set_mmap_fail(1);
    for (int mode = QVL_ST_MAP; mode <= QVL_ST_MAP_LAZY; mode++) {
        qvl_st *st = NULL;
        g_err[0] = 0;
        qvl_status s = qvl_st_open_dir_ex(dir, (qvl_st_mode)mode, NULL, &st, g_err, sizeof g_err);
        if (mode != QVL_ST_MAP) {
            CHECKF(s == QVL_OK, "mode %d without mmap: %s", mode, g_err);
            if (s != QVL_OK || !ref)
                continue;
            uint64_t copied = 0, mapped = 0;
            qvl_st_residency(st, &copied, &mapped);
            CHECKF(mapped == 0 && copied == qvl_st_file_size(st, 0) + qvl_st_file_size(st, 1),
                   "mode %d without mmap: %llu copied, %llu mapped", mode,
                   (unsigned long long)copied, (unsigned long long)mapped);
            static const char *names[3] = {"model.visual.a", "model.visual.b", "lm_head.weight"};
            for (int i = 0; i < 3; i++) {
                const qvl_st_tensor *a = qvl_st_find(st, names[i]), *b = qvl_st_find(ref, names[i]);
                CHECKF(a && b && a->nbytes == b->nbytes && !memcmp(a->data, b->data, a->nbytes),
                       "mode %d without mmap: bytes of %s", mode, names[i]);
            }
            qvl_st_free(st);
        } else {
            CHECKF(s == QVL_E_IO && st == NULL && strstr(g_err, "s1.safetensors") &&
                       strstr(g_err, "mmap failed"),
                   "mode %d without mmap: status %d, '%s'", mode, (int)s, g_err);
        }
    }
    /* one whole file (the quantisation cache's way in) */
    const uint8_t *m = NULL;
    size_t n = 0;
    bool copied = false;
    CHECKF(qvl_st_map_whole(pjoin(dir, "s2.safetensors"), QVL_ST_AUTO, &m, &n, &copied, g_err,
                            sizeof g_err) == QVL_OK,
           "%s", g_err);
    CHECK(m && copied && n > 2 && m[n - 2] == 0 && m[n - 1] == 1);
    if (m)
        qvl_st_unmap_whole(m, n);
    qvl_st_set_mmap_fail(0);
    qvl_st_free(ref);
    rm_tmpdir(dir);
}

int main(void) {
    test_single_file();
    test_sharded();
    test_fixture();
    test_normalise();
    test_bad_files();
    test_bad_dirs();
    test_writer_errors();
    test_auto_reread();
    test_mmap_fail();
    CHECK_DONE();
}
