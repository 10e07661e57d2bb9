/* sample.h - token sampling over a logits vector and stop-string matching for streamed text.
 *
 * Sampler order of operations (one call of qvl_sampler_sample), following Hugging Face
 * `generate` for the shared parts (spec section 10.1) and vLLM / OpenAI for presence and
 * frequency penalties:
 *
 *   0. NaN logits are replaced by -inf (a NaN never wins and never crashes).
 *   1. repetition penalty (HF): for every DISTINCT id recorded by qvl_sampler_accept_prompt or
 *      qvl_sampler_accept, logit = logit > 0 ? logit / p : logit * p (applied once per id).
 *   2. presence / frequency penalties (OpenAI, vLLM): for every distinct id recorded by
 *      qvl_sampler_accept only (generated tokens, not the prompt), with c = times generated:
 *      logit -= presence_penalty + frequency_penalty * c.
 *   3. temperature <= 0: greedy, the argmax of the penalised logits (lowest id on ties); the
 *      remaining steps are skipped and the PRNG is not advanced.
 *   4. logit / temperature.
 *   5. top-k (top_k > 0): keep the k largest. Here and in top-p, equal logits rank by lower id.
 *   6. softmax over the kept tokens.
 *   7. top-p (0 < top_p < 1): keep the smallest set of most probable tokens whose cumulative
 *      probability is >= top_p (at least one token). top_p <= 0 keeps only the most probable.
 *   8. min-p (0 < min_p <= 1): drop tokens whose probability < min_p * (largest probability).
 *      Because min-p is relative, renormalising after top-p does not change it.
 *   9. renormalise and draw one token with the sampler's PRNG (xoshiro256**, seeded through
 *      splitmix64; plain integer arithmetic, so the same seed gives the same sequence on every
 *      platform given the same logits).
 *
 * Tokens at -inf (masked, or NaN) are never drawn. A logit of +inf (or one that overflows to
 * +inf after temperature) takes all the probability, shared equally with other +inf tokens.
 * If every logit is -inf or NaN, qvl_sampler_sample returns QVL_E_INVAL and *out_id = -1.
 *
 * Weights exp(v - vmax) are computed with an in-tree exp made of IEEE basic operations (about
 * 1 ulp), not libm, so the same logits and seed give the same token on every platform.
 *
 * Costs: O(n_vocab) per call (about 1 ms for 151936 entries on a 2020s x86 core) plus
 * O(n + k log k) for top-k (heap selection, no full sort). Top-p without top-k buckets the
 * weights (256 buckets over [vmin, vmax]) and runs a weighted quickselect inside the bucket
 * where the cumulative mass reaches top_p: expected O(n); a heap sort of what is left is only a
 * fallback after 64 quickselect rounds.
 * All scratch is allocated by qvl_sampler_create; sampling and accepting never allocate.
 *
 * A sampler is used by one thread at a time.
 */
#ifndef QVL_SAMPLE_H
#define QVL_SAMPLE_H

#include "qvl.h"
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct qvl_sampling {
    float temperature;        /* <= 0: greedy; must be finite */
    int top_k;                /* <= 0 or >= n_vocab: off */
    float top_p;              /* >= 1: off; <= 0: keep only the most probable token */
    float min_p;              /* <= 0: off; must be <= 1 */
    float repetition_penalty; /* 1: off; must be finite and > 0 */
    float presence_penalty;   /* 0: off; must be finite */
    float frequency_penalty;  /* 0: off; must be finite */
    uint64_t seed;            /* PRNG seed */
} qvl_sampling;

/* Greedy, all penalties and filters off, seed 0. */
qvl_sampling qvl_sampling_default(void);

typedef struct qvl_sampler qvl_sampler;

/* Create a sampler for n_vocab logits (n_vocab > 0). Allocates all scratch (about 30 bytes per
 * vocabulary entry). QVL_E_INVAL for bad parameters, QVL_E_NOMEM; *out is NULL on failure. */
qvl_status qvl_sampler_create(const qvl_sampling *p, int32_t n_vocab, qvl_sampler **out);
void qvl_sampler_free(qvl_sampler *s); /* NULL is a no-op */

/* Forget every accepted token and reseed the PRNG; parameters are kept. */
void qvl_sampler_reset(qvl_sampler *s, uint64_t seed);

/* Replace the parameters (validated as in create). History and PRNG state are kept; p->seed is
 * ignored (use qvl_sampler_reset to reseed). On error nothing changes. */
qvl_status qvl_sampler_set_params(qvl_sampler *s, const qvl_sampling *p);

/* Record prompt tokens: they count for the repetition penalty only. All ids are checked first
 * (0 <= id < n_vocab, else QVL_E_INVAL and nothing is recorded). Image / video pad tokens in
 * the prompt count too, as in HF, which penalises every id of input_ids. */
qvl_status qvl_sampler_accept_prompt(qvl_sampler *s, const int32_t *ids, size_t n);

/* Record one generated token: it counts for the repetition penalty and for the presence and
 * frequency penalties. QVL_E_INVAL when id is out of range. */
qvl_status qvl_sampler_accept(qvl_sampler *s, int32_t id);

/* Pick the next token from logits[n_vocab] (order of operations above). The caller still calls
 * qvl_sampler_accept with the chosen id. On return logits holds the penalised logits, NaN
 * replaced by -inf (temperature and filters work on scratch). QVL_E_INVAL for NULL arguments
 * or when no logit is above -inf; then *out_id = -1. Never allocates. */
qvl_status qvl_sampler_sample(qvl_sampler *s, float *logits, int32_t *out_id);

/* Steps 0-8 without the draw (the PRNG does not advance): the surviving token ids and their
 * normalised probabilities, in no particular order, are written to ids/probs (at most cap
 * entries) and *n_out is the number of survivors (may exceed cap). Greedy gives the argmax with
 * probability 1. logits are modified as by qvl_sampler_sample. For tests and logprobs. */
qvl_status qvl_sampler_filter(qvl_sampler *s, float *logits, int32_t *ids, float *probs, size_t cap,
                              size_t *n_out);

/* The PRNG, exposed for tests: seed a xoshiro256** state through splitmix64, and step it. */
uint64_t qvl_splitmix64(uint64_t *state);
void qvl_rng_seed(uint64_t st[4], uint64_t seed);
uint64_t qvl_rng_next(uint64_t st[4]);

/* ---- stop strings ------------------------------------------------------------------------ */

#define QVL_STOP_MAX_N   16  /* at most this many stop strings */
#define QVL_STOP_MAX_LEN 256 /* bytes per stop string, not counting the NUL */

typedef struct qvl_stop qvl_stop;

/* Create a matcher for n stop strings (n <= QVL_STOP_MAX_N; n = 0 gives a pass-through that
 * still holds back an incomplete trailing UTF-8 character). Each string must be non-empty,
 * valid UTF-8 and at most QVL_STOP_MAX_LEN bytes. The strings are copied. Errors: QVL_E_INVAL
 * (NULL, empty or invalid UTF-8 string), QVL_E_LIMIT (too many / too long), QVL_E_NOMEM; the
 * message names the string's index. *out is NULL on failure. */
qvl_status qvl_stop_create(const char *const *stops, size_t n, qvl_stop **out, char *err,
                           size_t err_len);
void qvl_stop_free(qvl_stop *s); /* NULL is a no-op */

/* Drop held text and the stopped state, ready for a new generation. */
void qvl_stop_reset(qvl_stop *s);

/* Feed the next decoded piece (len bytes; piece may be NULL when len is 0). On return
 * *emit / *emit_len give the text that is safe to show now: text that cannot be the start of
 * a stop string. Text that might still become a stop string is held back, as is an incomplete
 * UTF-8 character at the end, so emitted text always ends on a character boundary. When a stop
 * string is completed, *stopped is true, *emit holds the text before the earliest match, and
 * the stop string and everything after it are dropped; later feeds emit nothing and report
 * stopped until qvl_stop_reset. *emit points into the matcher and stays valid until the next
 * call on it. QVL_E_NOMEM if the internal buffer cannot grow (pieces longer than ~4 KiB). */
qvl_status qvl_stop_feed(qvl_stop *s, const char *piece, size_t len, const char **emit,
                         size_t *emit_len, bool *stopped);

/* End of generation: release the held text (all of it, even an incomplete character) and
 * return its length; *emit is valid until the next call. Returns 0 after a stop. */
size_t qvl_stop_flush(qvl_stop *s, const char **emit);

/* Index of the stop string that matched, or -1 when none has. */
int qvl_stop_matched(const qvl_stop *s);

/* Log-probability of `id` under softmax(l[0..V)) into *lp, and the k most likely entries (value
 * descending, ties by lower id; NaN counts as -inf) into top_ids / top_lp. Accumulated in
 * double; -inf when the token's logit is -inf or no logit is finite. */
void qvl_logprobs_row(const float *l, int32_t V, int32_t id, int k, float *lp, int32_t *top_ids,
                      float *top_lp);

#endif /* QVL_SAMPLE_H */
