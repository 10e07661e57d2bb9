/* tok.h - Qwen3 byte-level BPE tokenizer loaded from a Hugging Face tokenizer.json.
 *
 * Encode: added tokens (longest match at each position) -> NFC -> regex split (pattern read from
 * the file, PCRE2 UTF|UCP) -> GPT-2 byte map -> BPE by merge rank -> ids. Decode: ids -> bytes
 * (added tokens as their content) -> UTF-8 with invalid sequences replaced by U+FFFD.
 * A loaded qvl_tok is immutable: every function taking a const qvl_tok * may be called from
 * several threads at once. */
#ifndef QVL_TOK_H
#define QVL_TOK_H

#include "common.h"

typedef struct qvl_tok qvl_tok;

/* Load tokenizer.json from a file or from a memory buffer (need not be NUL-terminated).
 * On failure *out is NULL and err holds a message: QVL_E_IO (file), QVL_E_FORMAT (malformed
 * JSON, missing/ill-typed fields, bad regex, merges out of vocabulary), QVL_E_UNSUPPORTED
 * (a model/normalizer/pre-tokenizer type other than the Qwen3 family uses), QVL_E_NOMEM. */
qvl_status qvl_tok_load(const char *path, qvl_tok **out, char *err, size_t err_len);
qvl_status qvl_tok_load_mem(const char *json, size_t len, qvl_tok **out, char *err,
                            size_t err_len);
/* As qvl_tok_load_mem, naming the data `name` in error messages. */
qvl_status qvl_tok_load_named(const char *json, size_t len, const char *name, qvl_tok **out,
                              char *err, size_t err_len);
void qvl_tok_free(qvl_tok *t); /* NULL is a no-op */

/* Encode len bytes of UTF-8 text (added/special tokens in the text are recognised; no BOS).
 * *ids is a heap array of *n ids released with qvl_free() (NULL when *n == 0 is allowed: it is
 * always a valid pointer or NULL). Invalid UTF-8: QVL_E_INVAL naming the byte offset. */
qvl_status qvl_tok_encode(const qvl_tok *t, const char *text, size_t len, int32_t **ids,
                          size_t *n, char *err, size_t err_len);

/* Decode ids to a NUL-terminated heap UTF-8 string (*len bytes, excluding the NUL), released with
 * qvl_free(). skip_special drops added tokens marked special. Invalid UTF-8 produced by the byte
 * tokens is replaced by U+FFFD per maximal subpart (like Python errors="replace").
 * An id that is negative, >= qvl_tok_n_vocab() or unassigned: QVL_E_INVAL. len may be NULL. */
qvl_status qvl_tok_decode(const qvl_tok *t, const int32_t *ids, size_t n, bool skip_special,
                          char **text, size_t *len);

/* Id of an added token's content or of a vocab entry written in its byte-level form
 * ("Ġhello"); -1 if absent. */
int32_t qvl_tok_id(const qvl_tok *t, const char *s);
/* true for added tokens marked "special": true; false otherwise (also for invalid ids). */
bool qvl_tok_is_special(const qvl_tok *t, int32_t id);
/* true if id is assigned (vocab entry or added token). */
bool qvl_tok_is_valid(const qvl_tok *t, int32_t id);
/* max id + 1 over vocab and added tokens */
int32_t qvl_tok_n_vocab(const qvl_tok *t);
/* number of added tokens */
int32_t qvl_tok_n_added(const qvl_tok *t);
/* Raw bytes an id decodes to (not NUL-terminated, owned by t); NULL for invalid ids. */
const char *qvl_tok_token_bytes(const qvl_tok *t, int32_t id, size_t *len);
/* Longest byte string any single id decodes to. */
size_t qvl_tok_max_token_bytes(const qvl_tok *t);

/* Streaming decode: feed one id at a time, get only complete UTF-8 characters back; a partial
 * multi-byte sequence is held back until completed, one that can never complete becomes U+FFFD.
 * Caller-allocated, no heap; the same output as qvl_tok_decode() on the whole sequence. */
typedef struct qvl_tok_stream {
    uint8_t pend[4]; /* bytes of an incomplete UTF-8 sequence */
    uint8_t n_pend;
    bool skip_special;
} qvl_tok_stream;

/* Output needed by one push in the worst case: 3 bytes per input byte (all replaced). */
#define QVL_TOK_STREAM_OUT(max_token_bytes) (3 * ((max_token_bytes) + 4) + 1)

void qvl_tok_stream_init(qvl_tok_stream *s, bool skip_special);
/* Push one id; writes *n_out bytes (not NUL-terminated) to out. QVL_E_INVAL for a bad id,
 * QVL_E_LIMIT when cap is too small (state unchanged; QVL_TOK_STREAM_OUT() always suffices). */
qvl_status qvl_tok_stream_push(qvl_tok_stream *s, const qvl_tok *t, int32_t id, char *out,
                               size_t cap, size_t *n_out);
/* Emit what is held back (U+FFFD for an incomplete sequence) and reset. Needs cap >= 3;
 * returns the number of bytes written (0 if cap is too small or nothing is pending). */
size_t qvl_tok_stream_flush(qvl_tok_stream *s, char *out, size_t cap);

#endif /* QVL_TOK_H */
