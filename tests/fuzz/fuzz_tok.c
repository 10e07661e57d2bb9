/* fuzz_tok.c - libFuzzer target for the tokenizer. The first input byte selects what the rest
 * feeds:
 *   mode 0 (byte % 4 == 0): tokenizer.json text through qvl_tok_load_mem; when it loads, a fixed
 *          text is encoded and decoded with it and every id is decoded through the stream API.
 *   mode 1: arbitrary bytes encoded with the real Qwen3 tokenizer (loaded once from
 *          $QVL_SHARED/fixtures/qwen3-tokenizer/tokenizer.json, or ../shared when unset); when
 *          the ids come back they must decode to the input again (byte-level BPE is lossless on
 *          NFC text that holds no added token, so only ASCII input without '<' is compared).
 *   mode 2: the bytes as little-endian int32 ids decoded with the real tokenizer (whole and
 *          streamed, with and without special tokens); stream output must equal whole output.
 *   mode 3: the bytes split at the first NUL into text and a lookup key for qvl_tok_id.
 * Any status is fine; crashes, leaks, sanitizer reports and round-trip mismatches are not.
 * Seeds: tests/fuzz/corpus/tok/. */
#include "tok.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static qvl_tok *g_tok; /* the real tokenizer, loaded once, kept for the process lifetime */

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    const char *root = getenv("QVL_SHARED");
    char path[1024];
    snprintf(path, sizeof path, "%s/fixtures/qwen3-tokenizer/tokenizer.json",
             root ? root : "../shared");
    char err[512];
    if (qvl_tok_load(path, &g_tok, err, sizeof err) != QVL_OK) {
        fprintf(stderr, "fuzz_tok: cannot load %s (%s); set QVL_SHARED\n", path, err);
        abort();
    }
    return 0;
}

/* Decode ids whole and streamed; the two must agree byte for byte. */
static void decode_both(const qvl_tok *t, const int32_t *ids, size_t n, bool skip) {
    char *whole = NULL;
    size_t wlen = 0;
    qvl_status s = qvl_tok_decode(t, ids, n, skip, &whole, &wlen);
    size_t cap = QVL_TOK_STREAM_OUT(qvl_tok_max_token_bytes(t));
    char *piece = malloc(cap);
    char *acc = malloc(n * cap + cap + 1);
    if (!piece || !acc)
        abort();
    qvl_tok_stream st;
    qvl_tok_stream_init(&st, skip);
    size_t alen = 0;
    bool bad = false;
    for (size_t i = 0; i < n; i++) {
        size_t np = 0;
        qvl_status ps = qvl_tok_stream_push(&st, t, ids[i], piece, cap, &np);
        if (ps != QVL_OK) {
            bad = true;
            continue;
        }
        memcpy(acc + alen, piece, np);
        alen += np;
    }
    alen += qvl_tok_stream_flush(&st, acc + alen, cap);
    if (s == QVL_OK && !bad && (alen != wlen || memcmp(acc, whole, wlen) != 0)) {
        fprintf(stderr, "fuzz_tok: streamed decode differs from whole decode\n");
        abort();
    }
    if (s != QVL_OK && whole)
        abort(); /* *text must be NULL on failure */
    free(acc);
    free(piece);
    qvl_free(whole);
}

static void load_and_use(const uint8_t *data, size_t size) {
    /* exactly sized copy so ASan sees any over-read; not NUL-terminated on purpose */
    char *buf = malloc(size ? size : 1);
    if (!buf)
        abort();
    memcpy(buf, data, size);
    char err[512];
    qvl_tok *t = NULL;
    qvl_status s = qvl_tok_load_mem(buf, size, &t, err, sizeof err);
    free(buf);
    if (s != QVL_OK) {
        if (t)
            abort();
        return;
    }
    static const char text[] = "Hello world! <|im_start|>user\n\xe4\xbd\xa0\xe5\xa5\xbd 123 "
                               "don't  \t\n\n<think>x</think>\xf0\x9f\x98\x80";
    int32_t *ids = NULL;
    size_t n = 0;
    if (qvl_tok_encode(t, text, sizeof text - 1, &ids, &n, err, sizeof err) == QVL_OK) {
        decode_both(t, ids, n, false);
        decode_both(t, ids, n, true);
    }
    qvl_free(ids);
    int32_t nv = qvl_tok_n_vocab(t);
    int32_t probe[8] = {0, 1, nv - 1, nv, -1, nv / 2, 255, 256};
    for (int i = 0; i < 8; i++) {
        size_t bl;
        (void)qvl_tok_token_bytes(t, probe[i], &bl);
        (void)qvl_tok_is_special(t, probe[i]);
    }
    (void)qvl_tok_id(t, "<|im_start|>");
    qvl_tok_free(t);
}

static void encode_real(const uint8_t *data, size_t size) {
    char *buf = malloc(size ? size : 1);
    if (!buf)
        abort();
    memcpy(buf, data, size);
    char err[512];
    int32_t *ids = NULL;
    size_t n = 0;
    qvl_status s = qvl_tok_encode(g_tok, buf, size, &ids, &n, err, sizeof err);
    if (s == QVL_OK) {
        bool plain = true; /* ASCII without '<': no added token, NFC is the identity */
        for (size_t i = 0; i < size && plain; i++)
            plain = data[i] < 0x80 && data[i] != '<';
        char *back = NULL;
        size_t blen = 0;
        if (qvl_tok_decode(g_tok, ids, n, false, &back, &blen) != QVL_OK)
            abort(); /* ids from encode must always decode */
        if (plain && (blen != size || memcmp(back, data, size) != 0)) {
            fprintf(stderr, "fuzz_tok: encode/decode round trip differs\n");
            abort();
        }
        qvl_free(back);
    } else if (ids || n) {
        abort();
    }
    qvl_free(ids);
    free(buf);
}

static void decode_real(const uint8_t *data, size_t size) {
    size_t n = size / 4;
    int32_t *ids = malloc((n ? n : 1) * sizeof *ids);
    if (!ids)
        abort();
    int32_t nv = qvl_tok_n_vocab(g_tok);
    for (size_t i = 0; i < n; i++) {
        uint32_t v = (uint32_t)data[4 * i] | (uint32_t)data[4 * i + 1] << 8 |
                     (uint32_t)data[4 * i + 2] << 16 | (uint32_t)data[4 * i + 3] << 24;
        /* mostly valid ids, with the high bit of byte 3 letting raw values through */
        ids[i] = (v & 0x80000000u) ? (int32_t)(v ^ 0x80000000u) - (1 << 30)
                                   : (int32_t)(v % (uint32_t)(nv + 16));
    }
    decode_both(g_tok, ids, n, false);
    decode_both(g_tok, ids, n, true);
    free(ids);
}

static void lookup_real(const uint8_t *data, size_t size) {
    char *key = malloc(size + 1);
    if (!key)
        abort();
    memcpy(key, data, size);
    key[size] = 0; /* qvl_tok_id takes a C string: stops at the first NUL */
    int32_t id = qvl_tok_id(g_tok, key);
    if (id >= 0 && !qvl_tok_is_valid(g_tok, id))
        abort();
    free(key);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1)
        return 0;
    const uint8_t *body = data + 1;
    size_t n = size - 1;
    switch (data[0] & 3) {
    case 0: load_and_use(body, n); break;
    case 1: encode_real(body, n); break;
    case 2: decode_real(body, n); break;
    default: lookup_real(body, n); break;
    }
    return 0;
}
