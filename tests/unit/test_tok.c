/* test_tok.c - byte-level BPE tokenizer: the 445 golden encode cases, decode round trips,
 * skip_special, streaming decode, bad ids and input, malformed tokenizer.json variants,
 * allocation failures, concurrent encodes, and an informational speed figure. */
#include "check.h"
#include "tok.h"

#include <cjson/cJSON.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <utf8proc.h>

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* true if s[0..n) is well-formed UTF-8 (as utf8proc sees it) */
static bool valid_utf8(const char *s, size_t n) {
    const utf8proc_uint8_t *u = (const utf8proc_uint8_t *)s;
    utf8proc_ssize_t i = 0;
    while ((size_t)i < n) {
        utf8proc_int32_t cp;
        utf8proc_ssize_t k = utf8proc_iterate(u + i, (utf8proc_ssize_t)n - i, &cp);
        if (k <= 0)
            return false;
        i += k;
    }
    return true;
}

/* ---- a tiny hand-made tokenizer.json ----------------------------------- */

#define TINY_REGEX                                                                                 \
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\\\r\\\\n\\\\p{L}\\\\p{N}]?\\\\p{L}+|\\\\p{N}| "              \
    "?[^\\\\s\\\\p{L}\\\\p{N}]+[\\\\r\\\\n]*|\\\\s*[\\\\r\\\\n]+|\\\\s+(?!\\\\S)|\\\\s+"

/* fields: added_tokens, normalizer, model, pre_tokenizer (each a JSON text) */
static char *tiny_json(const char *added, const char *norm, const char *model, const char *pretok) {
    static const char *fmt = "{\"version\":\"1.0\",\"added_tokens\":%s,\"normalizer\":%s,"
                             "\"pre_tokenizer\":%s,\"post_processor\":null,\"decoder\":null,"
                             "\"model\":%s}";
    size_t n = strlen(fmt) + strlen(added) + strlen(norm) + strlen(model) + strlen(pretok) + 1;
    char *s = malloc(n);
    snprintf(s, n, fmt, added, norm, pretok, model);
    return s;
}

#define TINY_ADDED                                                                                 \
    "[{\"id\":7,\"content\":\"<|x|>\",\"special\":true},{\"id\":8,\"content\":\"<|x|>y\","         \
    "\"special\":false}]"
#define TINY_VOCAB                                                                                 \
    "{\"a\":0,\"b\":1,\"c\":2,\"\\u0120\":3,\"ab\":4,\"abc\":5,\"\\u0120a\":6,\"\\u00c3\":9,"     \
    "\"\\u00a9\":10,\"\\u00c3\\u00a9\":11}"
#define TINY_MODEL_STR                                                                             \
    "{\"type\":\"BPE\",\"vocab\":" TINY_VOCAB                                                      \
    ",\"merges\":[\"a b\",\"ab c\",\"\\u0120 a\",\"\\u00c3 \\u00a9\"]}"
#define TINY_MODEL_ARR                                                                             \
    "{\"type\":\"BPE\",\"vocab\":" TINY_VOCAB ",\"merges\":[[\"a\",\"b\"],[\"ab\",\"c\"],"         \
    "[\"\\u0120\",\"a\"],[\"\\u00c3\",\"\\u00a9\"]]}"
#define TINY_PRETOK                                                                                \
    "{\"type\":\"Sequence\",\"pretokenizers\":[{\"type\":\"Split\",\"pattern\":{\"Regex\":\""      \
    TINY_REGEX "\"},\"behavior\":\"Isolated\",\"invert\":false},{\"type\":\"ByteLevel\","          \
    "\"add_prefix_space\":false,\"trim_offsets\":false,\"use_regex\":false}]}"
#define TINY_NFC "{\"type\":\"NFC\"}"

static bool ids_eq(const int32_t *a, size_t na, const int32_t *b, size_t nb) {
    return na == nb && (na == 0 || memcmp(a, b, na * sizeof *a) == 0);
}

static void test_tiny(void) {
    char err[256];
    qvl_tok *t = NULL;
    char *j1 = tiny_json(TINY_ADDED, TINY_NFC, TINY_MODEL_STR, TINY_PRETOK);
    char *j2 = tiny_json(TINY_ADDED, "{\"type\":\"Sequence\",\"normalizers\":[" TINY_NFC "]}",
                         TINY_MODEL_ARR, TINY_PRETOK);
    qvl_status st = qvl_tok_load_mem(j1, strlen(j1), &t, err, sizeof err);
    CHECKF(st == QVL_OK, "tiny load: %s", err);
    qvl_tok *t2 = NULL;
    st = qvl_tok_load_mem(j2, strlen(j2), &t2, err, sizeof err);
    CHECKF(st == QVL_OK, "tiny load (array merges): %s", err);
    if (!t || !t2)
        goto out;
    CHECK(qvl_tok_n_vocab(t) == 12);
    CHECK(qvl_tok_n_added(t) == 2);
    CHECK(qvl_tok_id(t, "\xc4\xa0" "a") == 6);
    CHECK(qvl_tok_id(t, "<|x|>") == 7);
    CHECK(qvl_tok_id(t, "zz") == -1);
    CHECK(qvl_tok_is_special(t, 7) && !qvl_tok_is_special(t, 8) && !qvl_tok_is_special(t, 0));
    /* rank order: "a b" (0) beats "Ġ a" (2), so " abc" is Ġ + abc; longest added token wins;
     * "e\u0301" (decomposed é) becomes U+00E9 by NFC = bytes C3 A9 -> merged id 11 */
    const char *text = "abc abc<|x|>y<|x|>e\xcc\x81";
    static const int32_t want[] = {5, 3, 5, 8, 7};
    for (int k = 0; k < 2; k++) {
        int32_t *ids;
        size_t n;
        st = qvl_tok_encode(k ? t2 : t, text, strlen(text), &ids, &n, err, sizeof err);
        CHECKF(st == QVL_OK, "%s", err);
        /* 'e' and U+0301 have no tokens in this vocab; only the NFC result é does */
        CHECKF(n == 6 && ids_eq(ids, 5, want, 5) && ids[5] == 11, "tiny encode k=%d n=%zu", k,
               n);
        qvl_free(ids);
    }
    /* a byte without a token is dropped (no unk token), as HF does */
    int32_t *ids;
    size_t n;
    st = qvl_tok_encode(t, "azb", 3, &ids, &n, err, sizeof err);
    CHECK(st == QVL_OK && n == 1 && ids[0] == 4); /* a, b become neighbours and merge */
    qvl_free(ids);
    /* decode: byte map inverted, added token as its content, special skipped on request */
    static const int32_t d1[] = {7, 5, 3, 6, 11, 8};
    char *s;
    size_t len;
    st = qvl_tok_decode(t, d1, 6, false, &s, &len);
    CHECK(st == QVL_OK && strcmp(s, "<|x|>abc  a\xc3\xa9<|x|>y") == 0 && len == strlen(s));
    qvl_free(s);
    st = qvl_tok_decode(t, d1, 6, true, &s, &len);
    CHECK(st == QVL_OK && strcmp(s, "abc  a\xc3\xa9<|x|>y") == 0);
    qvl_free(s);
    /* the lone lead byte C3 then 'a' -> U+FFFD a */
    static const int32_t d2[] = {9, 0, 10};
    st = qvl_tok_decode(t, d2, 3, false, &s, &len);
    CHECK(st == QVL_OK && strcmp(s, "\xef\xbf\xbd" "a\xef\xbf\xbd") == 0);
    qvl_free(s);
    /* allocation failures: every failing allocation gives an error and leaks nothing */
    int fails = 0;
    int bad = 0;
    for (long k = 0; k < 10000; k++) {
        qvl_tok *tf = NULL;
        qvl_alloc_fail_at(k, 0);
        st = qvl_tok_load_mem(j1, strlen(j1), &tf, err, sizeof err);
        qvl_alloc_fail_at(-1, 0);
        if (st == QVL_OK) {
            qvl_tok_free(tf);
            break;
        }
        fails++;
        if (st != QVL_E_NOMEM || tf) {
            bad++;
            fprintf(stderr, "alloc fail at %ld: status %d: %s\n", k, (int)st, err);
        }
    }
    CHECKF(fails > 3 && bad == 0, "alloc-fail load: %d failures, %d not NOMEM", fails, bad);
    fails = bad = 0;
    for (long k = 0; k < 10000; k++) {
        qvl_alloc_fail_at(k, 0);
        st = qvl_tok_encode(t, text, strlen(text), &ids, &n, err, sizeof err);
        qvl_alloc_fail_at(-1, 0);
        if (st == QVL_OK) {
            qvl_free(ids);
            break;
        }
        fails++;
        if (st != QVL_E_NOMEM || ids)
            bad++;
    }
    CHECKF(fails > 2 && bad == 0, "alloc-fail encode: %d failures, %d bad", fails, bad);
out:
    qvl_tok_free(t);
    qvl_tok_free(t2);
    free(j1);
    free(j2);
}

/* Each malformed variant fails with the expected status, *out NULL and a message. */
static void expect_fail(const char *json, size_t len, qvl_status want, const char *what) {
    char err[256] = "";
    qvl_tok *t = (qvl_tok *)(uintptr_t)1;
    qvl_status st = qvl_tok_load_mem(json, len, &t, err, sizeof err);
    CHECKF(st == want && t == NULL && err[0], "%s: status %d (want %d), err \"%s\"", what, (int)st,
           (int)want, err);
    if (st == QVL_OK)
        qvl_tok_free(t);
}

static void expect_fail_parts(const char *added, const char *norm, const char *model,
                              const char *pretok, qvl_status want, const char *what) {
    char *j = tiny_json(added, norm, model, pretok);
    expect_fail(j, strlen(j), want, what);
    free(j);
}

static void test_malformed(const char *real, size_t real_len) {
    expect_fail("", 0, QVL_E_FORMAT, "empty");
    expect_fail("[1,2]", 5, QVL_E_FORMAT, "array top level");
    expect_fail("{\"model\":", 9, QVL_E_FORMAT, "truncated tiny");
    expect_fail(real, 1000, QVL_E_FORMAT, "real truncated at 1000");
    expect_fail(real, real_len / 2, QVL_E_FORMAT, "real truncated at half");
    expect_fail(real, real_len - 2, QVL_E_FORMAT, "real minus 2 bytes");
    expect_fail("{\"added_tokens\":[]}", 19, QVL_E_FORMAT, "missing model");
    expect_fail_parts(TINY_ADDED, TINY_NFC, "{\"type\":\"BPE\",\"vocab\":[1],\"merges\":[]}",
                      TINY_PRETOK, QVL_E_FORMAT, "vocab array");
    expect_fail_parts(TINY_ADDED, TINY_NFC, "{\"type\":\"BPE\",\"vocab\":{\"a\":\"0\"},\"merges\":[]}",
                      TINY_PRETOK, QVL_E_FORMAT, "vocab id string");
    expect_fail_parts(TINY_ADDED, TINY_NFC, "{\"type\":\"BPE\",\"vocab\":{\"a\":-1},\"merges\":[]}",
                      TINY_PRETOK, QVL_E_FORMAT, "negative id");
    expect_fail_parts(TINY_ADDED, TINY_NFC, "{\"type\":\"BPE\",\"vocab\":{\"a\":1.5},\"merges\":[]}",
                      TINY_PRETOK, QVL_E_FORMAT, "fractional id");
    expect_fail_parts(TINY_ADDED, TINY_NFC,
                      "{\"type\":\"BPE\",\"vocab\":{\"a\":1e12},\"merges\":[]}", TINY_PRETOK,
                      QVL_E_FORMAT, "huge id");
    expect_fail_parts(TINY_ADDED, TINY_NFC,
                      "{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":0},\"merges\":[]}", TINY_PRETOK,
                      QVL_E_FORMAT, "duplicate id");
    expect_fail_parts(TINY_ADDED, TINY_NFC, "{\"type\":\"BPE\",\"vocab\":" TINY_VOCAB "}",
                      TINY_PRETOK, QVL_E_FORMAT, "missing merges");
    expect_fail_parts(TINY_ADDED, TINY_NFC,
                      "{\"type\":\"BPE\",\"vocab\":" TINY_VOCAB ",\"merges\":[\"a c\"]}",
                      TINY_PRETOK, QVL_E_FORMAT, "merge result not in vocab");
    expect_fail_parts(TINY_ADDED, TINY_NFC,
                      "{\"type\":\"BPE\",\"vocab\":" TINY_VOCAB ",\"merges\":[\"a b c\"]}",
                      TINY_PRETOK, QVL_E_FORMAT, "merge with three parts");
    expect_fail_parts(TINY_ADDED, TINY_NFC,
                      "{\"type\":\"BPE\",\"vocab\":" TINY_VOCAB ",\"merges\":[[\"a\",3]]}",
                      TINY_PRETOK, QVL_E_FORMAT, "merge pair with a number");
    expect_fail_parts(TINY_ADDED, TINY_NFC,
                      "{\"type\":\"WordPiece\",\"vocab\":" TINY_VOCAB ",\"merges\":[]}",
                      TINY_PRETOK, QVL_E_UNSUPPORTED, "WordPiece model");
    expect_fail_parts("[{\"id\":\"7\",\"content\":\"<|x|>\",\"special\":true}]", TINY_NFC,
                      TINY_MODEL_STR, TINY_PRETOK, QVL_E_FORMAT, "added id string");
    expect_fail_parts("[{\"id\":7,\"content\":5,\"special\":true}]", TINY_NFC, TINY_MODEL_STR,
                      TINY_PRETOK, QVL_E_FORMAT, "added content number");
    expect_fail_parts("{\"id\":7}", TINY_NFC, TINY_MODEL_STR, TINY_PRETOK, QVL_E_FORMAT,
                      "added_tokens object");
    expect_fail_parts(TINY_ADDED, "{\"type\":\"Lowercase\"}", TINY_MODEL_STR, TINY_PRETOK,
                      QVL_E_UNSUPPORTED, "Lowercase normalizer");
    expect_fail_parts(TINY_ADDED, "{\"type\":5}", TINY_MODEL_STR, TINY_PRETOK, QVL_E_FORMAT,
                      "normalizer type number");
    expect_fail_parts(TINY_ADDED, TINY_NFC, TINY_MODEL_STR, "null", QVL_E_FORMAT,
                      "no pre_tokenizer");
    expect_fail_parts(TINY_ADDED, TINY_NFC, TINY_MODEL_STR,
                      "{\"type\":\"Sequence\",\"pretokenizers\":[{\"type\":\"Split\",\"pattern\":{"
                      "\"Regex\":\"(\\\\p{L}+\"},\"behavior\":\"Isolated\",\"invert\":false},{"
                      "\"type\":\"ByteLevel\",\"add_prefix_space\":false,\"use_regex\":false}]}",
                      QVL_E_FORMAT, "bad regex");
    expect_fail_parts(TINY_ADDED, TINY_NFC, TINY_MODEL_STR,
                      "{\"type\":\"Sequence\",\"pretokenizers\":[{\"type\":\"Split\",\"pattern\":{"
                      "\"Regex\":\"\\\\s+\"},\"behavior\":\"Removed\",\"invert\":false},{"
                      "\"type\":\"ByteLevel\",\"add_prefix_space\":false,\"use_regex\":false}]}",
                      QVL_E_UNSUPPORTED, "Split behaviour Removed");
    expect_fail_parts(TINY_ADDED, TINY_NFC, TINY_MODEL_STR, "{\"type\":\"ByteLevel\"}",
                      QVL_E_UNSUPPORTED, "plain ByteLevel");
    /* the real file with one field broken, to exercise the big paths too */
    char *copy = malloc(real_len + 1);
    memcpy(copy, real, real_len + 1);
    char *p = strstr(copy, "\"merges\": [");
    if (!p)
        p = strstr(copy, "\"merges\":[");
    CHECK(p != NULL);
    if (p) {
        memcpy(p + 1, "mErges", 6);
        expect_fail(copy, real_len, QVL_E_FORMAT, "real without merges");
    }
    free(copy);
    char err[128];
    qvl_tok *t;
    CHECK(qvl_tok_load("/nonexistent/tokenizer.json", &t, err, sizeof err) == QVL_E_IO && !t);
}

/* ---- golden cases ------------------------------------------------------ */

typedef struct {
    char **text;
    int32_t **ids;
    size_t *n_ids;
    size_t *len; /* texts may hold NUL bytes */
    size_t n;
} cases_t;

static bool load_cases(cases_t *c) {
    size_t len;
    char *buf = check_read_file(shared_path("fixtures/tiny-qwen3vl/golden/tokenizer_cases.json"), &len);
    if (!buf)
        return false;
    /* cJSON strings end at NUL: parse "\\u0000" as the noncharacter U+FDD0 and map it back */
    for (char *p = buf; (p = strstr(p, "\\u0000")) != NULL; p += 6)
        memcpy(p, "\\uFDD0", 6);
    cJSON *root = cJSON_ParseWithLength(buf, len);
    free(buf);
    const cJSON *arr = cJSON_GetObjectItemCaseSensitive(root, "cases");
    if (!cJSON_IsArray(arr)) {
        cJSON_Delete(root);
        return false;
    }
    size_t n = (size_t)cJSON_GetArraySize(arr);
    c->text = calloc(n, sizeof *c->text);
    c->ids = calloc(n, sizeof *c->ids);
    c->n_ids = calloc(n, sizeof *c->n_ids);
    c->len = calloc(n, sizeof *c->len);
    c->n = 0;
    for (const cJSON *e = arr->child; e; e = e->next) {
        const cJSON *text = cJSON_GetObjectItemCaseSensitive(e, "text");
        const cJSON *ids = cJSON_GetObjectItemCaseSensitive(e, "ids");
        if (!cJSON_IsString(text) || !cJSON_IsArray(ids))
            continue;
        size_t k = c->n++;
        c->text[k] = strdup(text->valuestring);
        c->len[k] = strlen(c->text[k]);
        char *q = c->text[k];
        for (size_t i = 0, o = 0;; i++) {
            if (i + 3 <= c->len[k] && memcmp(q + i, "\xef\xb7\x90", 3) == 0) {
                q[o++] = 0;
                i += 2;
            } else if (i < c->len[k]) {
                q[o++] = q[i];
            } else {
                c->len[k] = o;
                break;
            }
        }
        c->n_ids[k] = (size_t)cJSON_GetArraySize(ids);
        c->ids[k] = malloc((c->n_ids[k] + 1) * sizeof(int32_t));
        size_t i = 0;
        for (const cJSON *v = ids->child; v; v = v->next)
            c->ids[k][i++] = (int32_t)v->valuedouble;
    }
    cJSON_Delete(root);
    return true;
}

static void free_cases(cases_t *c) {
    for (size_t i = 0; i < c->n; i++) {
        free(c->text[i]);
        free(c->ids[i]);
    }
    free(c->text);
    free(c->ids);
    free(c->n_ids);
    free(c->len);
}

static void print_ids(const char *tag, const int32_t *ids, size_t n) {
    fprintf(stderr, "  %s:", tag);
    for (size_t i = 0; i < n; i++)
        fprintf(stderr, " %d", (int)ids[i]);
    fputc('\n', stderr);
}

static void test_golden(const qvl_tok *t, const cases_t *c) {
    char err[256];
    int ok = 0;
    int roundtrip_ok = 0;
    int roundtrip_n = 0;
    int stream_ok = 0;
    for (size_t k = 0; k < c->n; k++) {
        const char *s = c->text[k];
        size_t sl = c->len[k];
        int32_t *ids;
        size_t n;
        qvl_status st = qvl_tok_encode(t, s, sl, &ids, &n, err, sizeof err);
        if (st == QVL_OK && ids_eq(ids, n, c->ids[k], c->n_ids[k])) {
            ok++;
        } else {
            fprintf(stderr, "golden case %zu mismatch (%s)\n", k, st ? err : "ids differ");
            if (!st)
                print_ids("got ", ids, n);
            print_ids("want", c->ids[k], c->n_ids[k]);
        }
        /* decode of the golden ids gives the NFC form of the text (identical when the text is
         * already NFC) */
        char *d;
        size_t dl;
        st = qvl_tok_decode(t, c->ids[k], c->n_ids[k], false, &d, &dl);
        utf8proc_uint8_t *nfc = NULL;
        utf8proc_ssize_t nl = utf8proc_map((const utf8proc_uint8_t *)s, (utf8proc_ssize_t)sl,
                                           &nfc, UTF8PROC_STABLE | UTF8PROC_COMPOSE);
        roundtrip_n++;
        if (st == QVL_OK && nl >= 0 && (size_t)nl == dl && memcmp(d, nfc, dl) == 0)
            roundtrip_ok++;
        else
            fprintf(stderr, "golden case %zu: decode is not the (NFC) text\n", k);
        /* streaming one id at a time gives the same bytes, each chunk valid UTF-8 */
        qvl_tok_stream ss;
        qvl_tok_stream_init(&ss, false);
        size_t cap = QVL_TOK_STREAM_OUT(qvl_tok_max_token_bytes(t));
        char *chunk = malloc(cap);
        char *acc = malloc(dl + 16);
        size_t al = 0;
        bool good = st == QVL_OK;
        for (size_t i = 0; i < c->n_ids[k] && good; i++) {
            size_t w;
            good = qvl_tok_stream_push(&ss, t, c->ids[k][i], chunk, cap, &w) == QVL_OK &&
                   al + w <= dl && valid_utf8(chunk, w);
            if (good) {
                memcpy(acc + al, chunk, w);
                al += w;
            }
        }
        if (good)
            al += qvl_tok_stream_flush(&ss, acc + al, 16);
        if (good && al == dl && memcmp(acc, d, dl) == 0)
            stream_ok++;
        else
            fprintf(stderr, "golden case %zu: stream decode differs\n", k);
        free(chunk);
        free(acc);
        free(nfc);
        qvl_free(d);
        qvl_free(ids);
    }
    CHECKF(ok == (int)c->n, "golden encode: %d of %zu match", ok, c->n);
    CHECKF(roundtrip_ok == roundtrip_n, "decode round trip: %d of %d", roundtrip_ok, roundtrip_n);
    CHECKF(stream_ok == (int)c->n, "stream decode: %d of %zu", stream_ok, c->n);
    CHECK(c->n == 445);
}

static void test_real_api(const qvl_tok *t) {
    char err[256];
    int32_t byte_ids[256]; /* the single-byte token of each byte */
    for (int b = 0; b < 256; b++) {
        byte_ids[b] = -1;
        for (int32_t id = 0; id < 512; id++) {
            size_t l1;
            const char *tb = qvl_tok_token_bytes(t, id, &l1);
            if (tb && l1 == 1 && (uint8_t)tb[0] == b)
                byte_ids[b] = id;
        }
    }
    CHECK(qvl_tok_n_vocab(t) == 151669);
    CHECK(qvl_tok_n_added(t) == 26);
    CHECK(qvl_tok_id(t, "<|image_pad|>") == 151655);
    CHECK(qvl_tok_id(t, "<|im_end|>") == 151645);
    CHECK(qvl_tok_id(t, "\xc4\xa0hello") == 23811); /* "Ġhello" */
    CHECK(qvl_tok_id(t, "assistant") == 77091);
    CHECK(qvl_tok_id(t, "no such token anywhere") == -1);
    CHECK(qvl_tok_is_special(t, 151655) && qvl_tok_is_special(t, 151643));
    CHECK(!qvl_tok_is_special(t, 151667) && !qvl_tok_is_special(t, 151657));
    CHECK(!qvl_tok_is_special(t, 100) && !qvl_tok_is_special(t, -5) &&
          !qvl_tok_is_special(t, 1 << 30));

    /* spec 9.2 */
    const char *p = "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Describe this "
                    "image.<|im_end|>\n<|im_start|>assistant\n";
    static const int32_t want[] = {151644, 872, 198,    151652, 151655, 151653, 74785, 419,
                                   2168,   13,  151645, 198,    151644, 77091,  198};
    int32_t *ids;
    size_t n;
    qvl_status st = qvl_tok_encode(t, p, strlen(p), &ids, &n, err, sizeof err);
    CHECK(st == QVL_OK && ids_eq(ids, n, want, 15));
    qvl_free(ids);

    /* skip_special drops only special added tokens (<think> is not special) */
    const char *s2 = "<|im_start|>user\nhi<|im_end|><think>x</think><|endoftext|>";
    st = qvl_tok_encode(t, s2, strlen(s2), &ids, &n, err, sizeof err);
    CHECK(st == QVL_OK);
    char *d;
    size_t dl;
    st = qvl_tok_decode(t, ids, n, true, &d, &dl);
    CHECKF(st == QVL_OK && strcmp(d, "user\nhi<think>x</think>") == 0, "skip_special: %s",
           st ? "error" : d);
    qvl_free(d);
    st = qvl_tok_decode(t, ids, n, false, &d, &dl);
    CHECK(st == QVL_OK && strcmp(d, s2) == 0);
    qvl_free(d);
    qvl_free(ids);

    /* ids out of range */
    static const int32_t badids[][2] = {{1, -1}, {151669, 2}, {3, 1 << 30}};
    for (int i = 0; i < 3; i++) {
        d = (char *)1;
        CHECK(qvl_tok_decode(t, badids[i], 2, false, &d, &dl) == QVL_E_INVAL && d == NULL);
    }
    qvl_tok_stream ss;
    qvl_tok_stream_init(&ss, false);
    char out[64];
    size_t w = 99;
    CHECK(qvl_tok_stream_push(&ss, t, 151669, out, sizeof out, &w) == QVL_E_INVAL && w == 0);
    CHECK(qvl_tok_stream_push(&ss, t, -1, out, sizeof out, &w) == QVL_E_INVAL);
    CHECK(qvl_tok_decode(t, NULL, 0, false, &d, &dl) == QVL_OK && d && d[0] == 0 && dl == 0);
    qvl_free(d);

    /* invalid UTF-8 input */
    static const char *bad[] = {"abc\xff", "\xc3", "a\xe2\x82", "\xed\xa0\x80", "\xc0\xaf",
                                "\xf4\x90\x80\x80", "ok\x80ok"};
    for (int i = 0; i < 7; i++) {
        err[0] = 0;
        ids = (int32_t *)1;
        st = qvl_tok_encode(t, bad[i], strlen(bad[i]), &ids, &n, err, sizeof err);
        CHECKF(st == QVL_E_INVAL && ids == NULL && strstr(err, "UTF-8"), "bad utf8 %d: %s", i,
               err);
    }
    /* embedded NUL is valid text */
    st = qvl_tok_encode(t, "a\0b", 3, &ids, &n, err, sizeof err);
    CHECK(st == QVL_OK && n >= 2);
    qvl_free(ids);

    /* streaming: characters split over byte-level tokens are held back until complete */
    static const char *multi[] = {"\xf0\xa0\x9c\x8e", "\xe9\xbe\x98\xe9\xbe\x98", /* 𠜎 龘龘 */
                                  "x\xf0\x9f\xab\xa0y", "\xf0\x9f\xa7\x91\xe2\x80\x8d\xf0\x9f\x9a\x80"};
    int partial_tokens = 0;
    for (int m = 0; m < 4; m++) {
        st = qvl_tok_encode(t, multi[m], strlen(multi[m]), &ids, &n, err, sizeof err);
        CHECK(st == QVL_OK && n >= 2);
        qvl_tok_stream_init(&ss, false);
        char acc[64];
        size_t al = 0;
        bool good = true;
        for (size_t i = 0; i < n && good; i++) {
            size_t tl;
            const char *tb = qvl_tok_token_bytes(t, ids[i], &tl);
            if (!valid_utf8(tb, tl))
                partial_tokens++;
            good = qvl_tok_stream_push(&ss, t, ids[i], out, sizeof out, &w) == QVL_OK &&
                   valid_utf8(out, w) && al + w < sizeof acc;
            memcpy(acc + al, out, w);
            al += w;
        }
        CHECK(qvl_tok_stream_flush(&ss, out, sizeof out) == 0);
        CHECK(good && al == strlen(multi[m]) && memcmp(acc, multi[m], al) == 0);
        qvl_free(ids);
    }
    CHECKF(partial_tokens >= 4, "partial-byte tokens seen: %d", partial_tokens);

    /* stream: an incomplete sequence followed by ASCII, then one left at the end */
    /* byte-level strings: 0xE2 is itself (U+00E2), 0x82 maps to U+0124 */
    CHECK(qvl_tok_id(t, "\xc3\xa2") == byte_ids[0xe2] && qvl_tok_id(t, "\xc4\xa4") == byte_ids[0x82]);
    const int32_t seq[] = {byte_ids[0xe2], byte_ids[0x82], byte_ids['A'], byte_ids[0xf0],
                           byte_ids[0x9f]};
    qvl_tok_stream_init(&ss, false);
    char acc[64];
    size_t al = 0;
    for (int i = 0; i < 5; i++) {
        CHECK(qvl_tok_stream_push(&ss, t, seq[i], out, sizeof out, &w) == QVL_OK);
        memcpy(acc + al, out, w);
        al += w;
        if (i == 1)
            CHECK(w == 0); /* E2 82 still incomplete */
    }
    al += qvl_tok_stream_flush(&ss, acc + al, sizeof acc - al);
    CHECK(al == 7 && memcmp(acc, "\xef\xbf\xbd" "A\xef\xbf\xbd", 7) == 0);
    st = qvl_tok_decode(t, seq, 5, false, &d, &dl);
    CHECK(st == QVL_OK && dl == 7 && memcmp(d, acc, 7) == 0);
    qvl_free(d);
    /* a too-small output buffer leaves the state untouched */
    int32_t hello = qvl_tok_id(t, "hello");
    qvl_tok_stream_init(&ss, false);
    CHECK(qvl_tok_stream_push(&ss, t, hello, out, 2, &w) == QVL_E_LIMIT && w == 0);
    CHECK(qvl_tok_stream_push(&ss, t, hello, out, sizeof out, &w) == QVL_OK && w == 5);
    /* stream skip_special */
    qvl_tok_stream_init(&ss, true);
    CHECK(qvl_tok_stream_push(&ss, t, 151645, out, sizeof out, &w) == QVL_OK && w == 0);
    CHECK(qvl_tok_stream_push(&ss, t, 151667, out, sizeof out, &w) == QVL_OK && w == 7);

    /* random byte tokens: stream output equals whole decode (maximal-subpart replacement) */
    CHECK(byte_ids[0] >= 0 && byte_ids[255] >= 0 && byte_ids[0x80] >= 0);
    unsigned seed = 12345;
    int mismatch = 0;
    for (int it = 0; it < 2000; it++) {
        int32_t rid[12];
        for (int i = 0; i < 12; i++) {
            seed = seed * 1103515245u + 12345u;
            unsigned r = (seed >> 16) & 0xff;
            /* bias toward UTF-8-ish bytes */
            if ((seed >> 8 & 3) == 0)
                r = 0x80 | (r & 0x3f);
            else if ((seed >> 8 & 3) == 1)
                r = 0xe0 | (r & 0x1f);
            rid[i] = byte_ids[r];
        }
        st = qvl_tok_decode(t, rid, 12, false, &d, &dl);
        qvl_tok_stream_init(&ss, false);
        al = 0;
        for (int i = 0; i < 12; i++) {
            qvl_tok_stream_push(&ss, t, rid[i], out, sizeof out, &w);
            memcpy(acc + al, out, w);
            al += w;
        }
        al += qvl_tok_stream_flush(&ss, acc + al, sizeof acc - al);
        if (st || al != dl || memcmp(acc, d, dl) != 0 || !valid_utf8(d, dl))
            mismatch++;
        qvl_free(d);
    }
    CHECKF(mismatch == 0, "random byte streams: %d mismatches", mismatch);
    /* Python reference values of errors="replace" */
    struct {
        const char *in;
        const char *want;
    } rep[] = {{"\xf0\x80", "\xef\xbf\xbd\xef\xbf\xbd"},
               {"\xed\xa0\x80", "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"},
               {"\xf0\x9f\x98", "\xef\xbf\xbd"},
               {"\xf0\x9f\x98" "a", "\xef\xbf\xbd" "a"},
               {"\xc0\x80", "\xef\xbf\xbd\xef\xbf\xbd"},
               {"\xe2\x82\xac", "\xe2\x82\xac"}};
    for (size_t r = 0; r < sizeof rep / sizeof rep[0]; r++) {
        int32_t rid[8];
        size_t m = strlen(rep[r].in);
        for (size_t i = 0; i < m; i++)
            rid[i] = byte_ids[(uint8_t)rep[r].in[i]];
        st = qvl_tok_decode(t, rid, m, false, &d, &dl);
        CHECKF(st == QVL_OK && strcmp(d, rep[r].want) == 0, "replace case %zu", r);
        qvl_free(d);
    }
}

/* ---- threads and speed ------------------------------------------------- */

typedef struct {
    const qvl_tok *t;
    const char *text;
    size_t len;
    int32_t *ids;
    size_t n;
    qvl_status st;
} job_t;

static void *encode_job(void *arg) {
    job_t *j = arg;
    j->st = qvl_tok_encode(j->t, j->text, j->len, &j->ids, &j->n, NULL, 0);
    return NULL;
}

static void test_threads_speed(const qvl_tok *t, const cases_t *c) {
    /* ~1 MB of mixed text from the golden cases */
    size_t cap = 1 << 20;
    char *big = malloc(cap + 4096);
    size_t bl = 0;
    for (size_t k = 0; bl < cap; k = (k + 1) % c->n) {
        size_t l = c->len[k];
        memcpy(big + bl, c->text[k], l);
        bl += l;
        big[bl++] = '\n';
    }
    int32_t *ids;
    size_t n;
    double t0 = now_s();
    qvl_status st = qvl_tok_encode(t, big, bl, &ids, &n, NULL, 0);
    double dt = now_s() - t0;
    CHECK(st == QVL_OK && n > 0);
    printf("tokenizer speed: %.2f MB/s encode (%zu bytes -> %zu ids in %.3f s)\n",
           (double)bl / 1e6 / dt, bl, n, dt);
    char *d;
    size_t dl;
    t0 = now_s();
    st = qvl_tok_decode(t, ids, n, false, &d, &dl);
    dt = now_s() - t0;
    CHECK(st == QVL_OK);
    printf("tokenizer speed: %.2f MB/s decode\n", (double)dl / 1e6 / dt);
    qvl_free(d);

    job_t jobs[3];
    pthread_t th[3];
    for (int i = 0; i < 3; i++) {
        jobs[i] = (job_t){t, big + i * 1000, bl / 4, NULL, 0, QVL_OK};
        /* keep the slices on character boundaries: start and end where a '\n' follows */
        while (jobs[i].text > big && jobs[i].text[-1] != '\n')
            jobs[i].text++;
        while (jobs[i].text[jobs[i].len - 1] != '\n')
            jobs[i].len--;
        pthread_create(&th[i], NULL, encode_job, &jobs[i]);
    }
    int same = 0;
    for (int i = 0; i < 3; i++) {
        pthread_join(th[i], NULL);
        int32_t *ref;
        size_t nr;
        st = qvl_tok_encode(t, jobs[i].text, jobs[i].len, &ref, &nr, NULL, 0);
        if (st == QVL_OK && jobs[i].st == QVL_OK && ids_eq(ref, nr, jobs[i].ids, jobs[i].n))
            same++;
        qvl_free(ref);
        qvl_free(jobs[i].ids);
    }
    CHECK(same == 3);
    qvl_free(ids);
    free(big);
}

int main(void) {
    test_tiny();
    size_t real_len = 0;
    char *real = check_read_file(shared_path("fixtures/qwen3-tokenizer/tokenizer.json"), &real_len);
    CHECK(real != NULL);
    if (!real)
        CHECK_DONE();
    test_malformed(real, real_len);
    free(real);

    char err[256];
    qvl_tok *t = NULL;
    double t0 = now_s();
    qvl_status st =
        qvl_tok_load(shared_path("fixtures/qwen3-tokenizer/tokenizer.json"), &t, err, sizeof err);
    printf("tokenizer load: %.3f s\n", now_s() - t0);
    CHECKF(st == QVL_OK, "load: %s", err);
    qvl_tok *t2 = NULL;
    st = qvl_tok_load(shared_path("fixtures/tiny-qwen3vl/model/tokenizer.json"), &t2, err,
                      sizeof err);
    CHECKF(st == QVL_OK, "load model/tokenizer.json: %s", err);
    qvl_tok_free(t2);
    if (!t)
        CHECK_DONE();
    cases_t c = {0};
    CHECK(load_cases(&c));
    test_real_api(t);
    test_golden(t, &c);
    test_threads_speed(t, &c);
    free_cases(&c);
    qvl_tok_free(t);
    CHECK_DONE();
}
