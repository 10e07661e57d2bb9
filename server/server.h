/* server.h - internal interfaces of `qvl serve`, the OpenAI-compatible HTTP server: options,
 * the slot pool (slots.c), request parsing (routes.c), helpers (util.c). Not part of libqvl's
 * public API; the server reaches the engine only through include/qvl.h. */
#ifndef QVL_SERVER_H
#define QVL_SERVER_H

#include "qvl.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define SRV_MAX_IMAGES 32  /* images per request */
#define SRV_MAX_TOOLS 128  /* tools offered per request */
#define SRV_MAX_VIDEOS 4   /* videos per request */
#define SRV_MAX_STOPS  16  /* stop strings per request */
#define SRV_MAX_STOP_LEN 256
#define SRV_MAX_MSGS   1024 /* messages per request */

/* ---- options ------------------------------------------------------------------------------ */
typedef struct srv_opts {
    const char *model_dir;
    const char *alias;     /* model id reported to clients; default: the directory's name */
    const char *host;
    const char *api_key;   /* NULL: no authentication */
    const char *allow_dir; /* --allow-local-files; NULL: file:// refused */
    int allow_remote;      /* --allow-remote-media: http(s) image and video URLs fetched */
    int fetch_timeout_s;   /* --fetch-timeout: for each such download */
    int port;
    int n_slots;
    int n_threads; /* per slot */
    int n_ctx;     /* per slot */
    qvl_kv_type kv; /* KV cache element type */
    int bf16_dot;   /* qvl_model_params.bf16_dot */
    int load_mode;  /* qvl_model_params.mmap (qvl_load_mode) */
    int quant_cache; /* qvl_model_params.quant_cache_dir = qvl_default_cache_dir() */
    int quant_vision; /* qvl_model_params.quant_vision */
    int queue_max; /* requests waiting for a slot */
    int timeout_s; /* idle connection timeout */
    int max_conns;
    int quant;
    uint64_t max_image_pixels; /* decoded pixels of all images of one request */
    unsigned image_flags;      /* QVL_IMAGE_IGNORE_EXIF (--ignore-exif), DROP_ALPHA */
    size_t max_body;
} srv_opts;

/* ---- util.c ------------------------------------------------------------------------------- */
/* True when s[0..n) is well-formed UTF-8 (no overlongs, surrogates or code points > U+10FFFF). */
bool srv_utf8_valid(const char *s, size_t n);
/* s with every byte that is not part of a valid UTF-8 sequence replaced by U+FFFD (malloc'd,
 * NUL-terminated; NULL when out of memory). */
char *srv_utf8_lossy(const char *s, size_t n);
/* Strict base64 (RFC 4648 alphabet, '=' padding required, no whitespace). On success *out is a
 * malloc'd buffer of *out_n bytes. Returns 0, -1 malformed, -2 decoded size over cap, -3 no
 * memory. */
int srv_b64_decode(const char *in, size_t n, size_t cap, uint8_t **out, size_t *out_n);
/* True when the peer of the connected socket fd has closed or reset the connection. */
bool srv_peer_gone(int fd);
/* Fill buf with n random lowercase hex characters and a NUL (buf has n + 1 bytes). */
void srv_rand_hex(char *buf, size_t n);
/* Milliseconds on a monotonic clock. */
double srv_now_ms(void);

/* ---- slots.c: jobs and the slot pool -------------------------------------------------------- */
typedef enum { JOB_NEW, JOB_QUEUED, JOB_RUNNING, JOB_DONE } srv_job_state;

/* One generated token's log-probabilities, as a response reports them. */
#define SRV_MAX_TOP_LOGPROBS 20
#define SRV_MAX_LOGIT_BIAS 1024 /* entries of a request's logit_bias */
typedef struct srv_lp {
    int32_t id;
    float logprob;
    int32_t top_ids[SRV_MAX_TOP_LOGPROBS];
    float top_lp[SRV_MAX_TOP_LOGPROBS];
} srv_lp;

/* One chat-completion request. The creator fills the input part, then srv_pool_submit hands it
 * to the pool; afterwards the input is read-only and the output part is read under the pool's
 * lock. Reference counted: the creator's reference, plus one held by the queue / worker. */
typedef struct srv_job {
    /* input (owned by the job) */
    int32_t *ids;
    size_t n_ids;
    qvl_image **images;
    uint8_t **img_bytes; /* encoded bytes of each image: its identity for prefix reuse */
    size_t *img_len;
    size_t n_images;
    qvl_video **videos; /* a job with videos neither reuses nor leaves a cached prefix */
    size_t n_videos;
    qvl_image_opts img_opts;
    bool tools; /* tools were offered: <tool_call> blocks of the text become tool_calls */
    bool legacy; /* a /v1/completions request: raw prompt, text_completion responses */
    char *echo;  /* legacy with echo: the prompt's text, which the response text starts with */
    size_t echo_n;
    bool score_prompt; /* legacy with echo and logprobs: the prompt's tokens are scored too */
    bool no_gen;       /* legacy with max_tokens 0: evaluate (and score) only */
    qvl_gen_params gp;
    char **stops;
    int n_stop;
    int32_t *bias_ids; /* logit_bias (gp points at these) */
    float *bias_vals;
    /* state (pool lock) */
    pthread_cond_t cond;
    srv_job_state state;
    int refs;
    atomic_int cancel;
    struct srv_job *next;
    /* output (pool lock) */
    char *text; /* generated text so far */
    size_t text_n, text_cap;
    srv_lp *lp; /* with gp.logprobs: one record per generated token so far */
    size_t lp_n, lp_cap;
    srv_lp *plp; /* with score_prompt: one record per prompt token (the first one's logprob is
                  * NAN: nothing before it), set once the prompt is evaluated (plp_ready) */
    size_t plp_n;
    bool plp_ready;
    bool oom;
    size_t n_completion;
    qvl_finish finish;
    qvl_status status;
    char err[512];
    size_t n_cached; /* prompt tokens reused from the slot's KV cache */
    double t_submit, t_start, t_prompt, t_end; /* srv_now_ms() stamps */
    int slot;
} srv_job;

typedef struct srv_pool srv_pool;

/* A new job with one reference (the caller's), or NULL when out of memory. */
srv_job *srv_job_new(void);
/* Take one more reference (the job was submitted to p). */
void srv_job_ref(srv_pool *p, srv_job *j);
/* Drop one reference; the last one frees the job and its inputs. */
void srv_job_release(srv_pool *p, srv_job *j);

/* Create n_slots contexts (each with cp) and their worker threads. */
qvl_status srv_pool_create(const qvl_model *m, int n_slots, const qvl_ctx_params *cp,
                           int queue_max, srv_pool **out, char *err, size_t err_len);
/* Queue a job (the pool takes its own reference). Returns 0, -1 when the queue is full, -2 when
 * the pool is shutting down. */
int srv_pool_submit(srv_pool *p, srv_job *j);
/* True when a submit now would be refused (cheap check before parsing a request). */
bool srv_pool_full(srv_pool *p);
/* Ask a job to stop: a queued job is removed (finished as cancelled), a running one stops at its
 * next token. */
void srv_job_cancel(srv_pool *p, srv_job *j);
/* Wait until the job is done or timeout_ms passed; returns true when done. */
bool srv_job_wait(srv_pool *p, srv_job *j, int timeout_ms);
void srv_pool_lock(srv_pool *p);
void srv_pool_unlock(srv_pool *p);
/* Counts for /health and shutdown. */
void srv_pool_stats(srv_pool *p, int *n_slots, int *idle, int *queued);
/* Start shutting down: refuse new jobs, finish queued ones as cancelled, cancel running ones. */
void srv_pool_shutdown(srv_pool *p);
/* Join the workers and free everything (calls srv_pool_shutdown first). NULL is a no-op. */
void srv_pool_free(srv_pool *p);

/* ---- routes.c: request parsing and responses ------------------------------------------------ */
typedef struct srv_state {
    srv_opts o;
    const qvl_model *model;
    srv_pool *pool;
    char model_id[256];
    int32_t image_pad, video_pad;
    long long created;
    char allow_real[4352]; /* realpath of allow_dir with a trailing '/' */
    atomic_int ready;
} srv_state;

/* Parsed chat request (besides the job). */
typedef struct srv_chat {
    bool stream;
    bool include_usage;
} srv_chat;

/* Parse and check a /v1/chat/completions body, decode its images and build the prompt ids into
 * a new job. Returns 200 with *out set, or an HTTP error status with msg and *code set. */
int srv_chat_prepare(srv_state *S, const char *body, size_t len, srv_chat *ch, srv_job **out,
                     char *msg, size_t msg_len, const char **code);
/* Parse and check a /v1/completions body (a raw prompt: a string or token ids, no template, no
 * images) into a new job. Returns 200 with *out set, or an HTTP error status. */
int srv_text_prepare(srv_state *S, const char *body, size_t len, srv_chat *ch, srv_job **out,
                     char *msg, size_t msg_len, const char **code);
/* JSON texts (malloc'd; NULL when out of memory). */
char *srv_error_json(const char *msg, const char *type, const char *code);
char *srv_completion_json(srv_state *S, const char *id, long long created, const srv_job *j);
/* One SSE event "data: {...}\n\n" for a chunk: text delta (role first when first), or the final
 * chunk with finish reason (text NULL, finish set), or the usage chunk (usage true). lp: the
 * log-probability records this chunk carries (n_lp of them, top_logprobs entries each), or
 * NULL for "logprobs": null. */
char *srv_chunk_sse(srv_state *S, const char *id, long long created, bool first,
                    const char *text, size_t text_n, const char *finish, const srv_job *usage,
                    const srv_lp *lp, size_t n_lp, int top_logprobs);
/* The chunk carrying a stream's tool calls (calls: from srv_tool_calls, taken over). */
/* The same for /v1/completions ("text_completion" objects, the legacy logprobs form). */
char *srv_text_completion_json(srv_state *S, const char *id, long long created, const srv_job *j);
/* A chunk: text (maybe empty) with the finish reason when finish, or the usage chunk; off: the
 * stream's running text offset for the logprobs' text_offset. */
char *srv_text_chunk_sse(srv_state *S, const char *id, long long created, const char *text,
                         size_t text_n, const char *finish, const srv_job *usage,
                         const srv_lp *lp, size_t n_lp, int top_logprobs, size_t *off);
struct cJSON;
char *srv_chunk_tool_calls_sse(srv_state *S, const char *id, long long created,
                               struct cJSON *calls);
char *srv_models_json(srv_state *S);
/* Tool calls in generated text (Qwen's <tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>
 * blocks): a new cJSON array of OpenAI tool_calls objects (with "index" when `indexed`, as stream
 * deltas carry), or NULL when the text holds no well-formed block (then it is all content).
 * *content_n gets the length of the text before the first block. */
struct cJSON;
struct cJSON *srv_tool_calls(const char *text, size_t n, bool indexed, size_t *content_n);
/* How much of a growing text may be streamed as content while tools are offered: up to the
 * first "<tool_call>", and not a tail that could begin one. */
size_t srv_tool_safe_len(const char *text, size_t n);
/* What a stream may send of a job's text now (under the pool lock; `sent` bytes went out
 * already): all of it without tools; with tools, up to srv_tool_safe_len while it runs, and
 * once done the text before the calls, which *calls then holds (indexed, for the delta), or all
 * of it when none parse. */
size_t srv_stream_avail(const srv_job *j, size_t sent, bool done, struct cJSON **calls);
/* POST /tokenize: {"content": "..."} to {"tokens": [...]}. Returns an HTTP status. */
int srv_tokenize_json(srv_state *S, const char *body, size_t len, char **out, char *msg,
                      size_t msg_len);
const char *srv_finish_str(qvl_finish f);
/* The finish reason of a response that carries tool calls when `calls`: "tool_calls" after a
 * stop, else as srv_finish_str. */
const char *srv_finish_str_calls(qvl_finish f, bool calls);

/* ---- serve.c ----------------------------------------------------------------------------- */
/* `qvl serve` entry point: argv are the arguments after the subcommand. Returns an exit code. */
int qvl_cli_serve(int argc, char **argv);

#endif /* QVL_SERVER_H */
