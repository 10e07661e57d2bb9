/* qvl.h - public API of libqvl, a C11 inference engine for Qwen3-VL.
 *
 * Conventions: fallible functions return qvl_status; results go through out-parameters that are
 * set to NULL on failure. Constructors take an optional caller buffer for the error message.
 * Objects returned by *_load / *_create are released by the matching *_free (NULL is a no-op).
 * Heap strings returned by the library are released with qvl_free(). The library never prints
 * to stdout and never exits the process because of bad input.
 */
#ifndef QVL_H
#define QVL_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#    define QVL_API __attribute__((visibility("default")))
#else
#    define QVL_API
#endif

typedef enum qvl_status {
    QVL_OK = 0,
    QVL_E_INVAL,       /* bad argument or malformed input */
    QVL_E_NOMEM,       /* allocation failed */
    QVL_E_IO,          /* file missing or unreadable */
    QVL_E_FORMAT,      /* file or data in a wrong or corrupt format */
    QVL_E_UNSUPPORTED, /* valid but not supported (dtype, architecture, image type) */
    QVL_E_LIMIT,       /* a configured limit was exceeded (context, image size, ...) */
    QVL_E_CANCELLED,   /* a callback asked to stop */
    QVL_E_INTERNAL,    /* a bug in qvl */
} qvl_status;

/* Static text for a status code. */
QVL_API const char *qvl_status_str(qvl_status s);

/* Release memory returned by the library (strings, arrays). NULL is a no-op. */
QVL_API void qvl_free(void *p);

/* ---- logging --------------------------------------------------------- */
typedef enum qvl_log_level {
    QVL_LOG_ERROR = 0,
    QVL_LOG_WARN = 1,
    QVL_LOG_INFO = 2,
    QVL_LOG_DEBUG = 3,
} qvl_log_level;
typedef void (*qvl_log_fn)(qvl_log_level level, const char *msg, void *user);
/* Install a log sink (NULL: quiet, the default). Messages above max_level are dropped. */
QVL_API void qvl_log_set(qvl_log_fn fn, void *user, qvl_log_level max_level);

/* ---- model ------------------------------------------------------------ */
typedef struct qvl_model qvl_model; /* weights + tokenizer + configs; read-only after load */

/* Progress of a long call: stage ("load", "vision", "prefill"), work done and total in the
 * stage's unit. Return non-zero to cancel: the call returns QVL_E_CANCELLED and the KV cache
 * is as it was before the call (the logits must be recomputed). */
typedef int (*qvl_progress_fn)(const char *stage, double done, double total, void *user);

typedef enum qvl_quant {
    QVL_QUANT_NONE = 0, /* use the checkpoint's weights in place (bf16 as shipped) */
    QVL_QUANT_Q8 = 1,   /* 8-bit blocks (32 values + f16 scale) made at load time */
    QVL_QUANT_Q4 = 2,   /* 4-bit blocks (32 values + f16 scale) made at load time */
} qvl_quant;

/* Weights are streamed once per generated token, so how they sit in memory matters: through
 * 4 KiB pages they stream at about half the speed of 2 MiB pages on some virtual machines. */
typedef enum qvl_load_mode {
    QVL_LOAD_AUTO = 0, /* default: each shard in place (mmap, no copy) when the kernel maps it
                          through 2 MiB pages, else read into anonymous huge-page memory. The
                          kernel makes 2 MiB page-cache pages when qvl reads an uncached file,
                          so after the first load from disk later loads are in place. With
                          --quant the shards are always used in place (read once). */
    QVL_LOAD_MMAP = 1, /* always in place: instant, no copy, whatever the page size */
    QVL_LOAD_COPY = 2, /* always a private copy in anonymous huge-page memory */
} qvl_load_mode;

typedef struct qvl_model_params {
    qvl_quant quant;   /* text decoder matrices (not the embeddings) */
    int quant_vision;  /* non-zero: quantise the vision tower's matrices too */
    int n_threads;     /* threads for load-time quantisation; 0: online CPUs */
    int mmap;          /* a qvl_load_mode: how the safetensors shards are brought in */
    int bf16_dot;      /* non-zero: bf16 matrices multiply activations rounded to bf16 when a
                          call has more than 4 rows (prefill, vision), as the reference's bf16
                          compute does: AVX-512 BF16 dot products, about twice the float
                          rate; logits then differ from float activations by ~1e-2 relative.
                          Decode keeps float activations. */
    const char *quant_cache_dir; /* with quant: keep the quantised matrices in a file in this
                                    directory (made if needed) and map them from it on later
                                    loads of the same checkpoint (checked by size, time and
                                    inode of every file); NULL: quantise at every load. See
                                    qvl_default_cache_dir(). */
    qvl_progress_fn progress; /* optional: weight bytes read */
    void *progress_user;
} qvl_model_params;

QVL_API qvl_model_params qvl_model_default_params(void);

/* $QVL_CACHE_DIR, else $XDG_CACHE_HOME/qvl, else $HOME/.cache/qvl; heap string (qvl_free), or
 * NULL when none of them is set. */
QVL_API char *qvl_default_cache_dir(void);

/* Load a Hugging Face Qwen3-VL model directory (config.json, safetensors, tokenizer.json,
 * preprocessor/generation configs, chat template). `dir` may also be a hub repo id
 * ("Qwen/Qwen3-VL-2B-Instruct") found in the local Hugging Face cache. On failure *out is NULL
 * and err (if given) holds a message naming the file and tensor at fault. */
QVL_API qvl_status qvl_model_load(const char *dir, const qvl_model_params *p, qvl_model **out,
                                  char *err, size_t err_len);
QVL_API void qvl_model_free(qvl_model *m);

/* A JSON description of the loaded model (architecture, parameter counts, dtypes, files, token
 * ids). Returns a heap string to release with qvl_free(), or NULL when out of memory. */
QVL_API char *qvl_model_info_json(const qvl_model *m);

/* Resolve a model argument: an existing directory is returned as is; "ORG/NAME" is looked up in
 * $HF_HOME/hub or ~/.cache/huggingface/hub (newest snapshot). *out is a heap string. */
QVL_API qvl_status qvl_model_resolve(const char *arg, char **out, char *err, size_t err_len);

/* Write a small random-weight demo model (tiny dimensions, a byte-level tokenizer with the real
 * special tokens) into dir, for trying qvl without a download. Its output is meaningless. */
QVL_API qvl_status qvl_demo_model_write(const char *dir, char *err, size_t err_len);

/* Model facts for callers that build embeddings themselves. */
QVL_API int qvl_model_hidden(const qvl_model *m);      /* text hidden size */
QVL_API int qvl_model_n_deepstack(const qvl_model *m); /* DeepStack taps */
QVL_API int qvl_model_n_vocab(const qvl_model *m);
QVL_API int32_t qvl_model_image_token(const qvl_model *m);
/* Bytes of weights one decoded token reads (all decoder matrices, the head, one embedding row). */
QVL_API uint64_t qvl_model_decode_bytes(const qvl_model *m);
/* Bytes of the checkpoint's shards used in place from the page cache (mmap) and held as
 * private copies (qvl_load_mode); either may be NULL. */
QVL_API void qvl_model_weight_residency(const qvl_model *m, uint64_t *in_place,
                                        uint64_t *copied);
/* "auto", "mmap", "copy" <-> qvl_load_mode; from_name returns 0 for an unknown name. */
QVL_API int qvl_load_mode_from_name(const char *name, int *out);
QVL_API const char *qvl_load_mode_name(int mode);
/* Token embeddings: out [n, hidden] (float32). */
QVL_API qvl_status qvl_embed_tokens(const qvl_model *m, const int32_t *ids, size_t n, float *out);
/* Multimodal positions (get_rope_index) of ids[0..n): pos gets 3 x n ids (t row, h row, w row);
 * each run of image placeholders takes the next grid (t, h, w in patches) in order. start is the
 * first text position (qvl_ctx_next_pos of the context the ids go to); *next_pos receives the
 * position after the chunk. */
QVL_API qvl_status qvl_positions(const qvl_model *m, const int32_t *ids, size_t n,
                                 const int (*grids)[3], size_t n_grids, int64_t start,
                                 int32_t *pos, int64_t *next_pos, char *err, size_t err_len);

/* ---- tokenizer -------------------------------------------------------- */
/* Tokenize UTF-8 text (special tokens in the text are recognised). *ids is a heap array of *n
 * ids to release with qvl_free(). */
QVL_API qvl_status qvl_tokenize(const qvl_model *m, const char *text, size_t len, int32_t **ids,
                                size_t *n);
/* Decode ids to UTF-8 text (invalid sequences replaced by U+FFFD). skip_special drops special
 * added tokens. *text is a heap string to release with qvl_free(). */
QVL_API qvl_status qvl_detokenize(const qvl_model *m, const int32_t *ids, size_t n,
                                  int skip_special, char **text);
/* The raw bytes one id stands for (byte-level BPE: possibly part of a UTF-8 character; an added
 * token: its content). Not NUL-terminated, owned by the model; NULL for an id without a
 * tokenizer entry. */
QVL_API const char *qvl_token_bytes(const qvl_model *m, int32_t id, size_t *len);


/* ---- images ----------------------------------------------------------- */
typedef struct qvl_image qvl_image; /* decoded 8-bit RGB picture */

/* Decode a JPEG, PNG or WebP file / buffer (format from the magic bytes). Images larger than
 * max_pixels (0: 64 Mpx) or with an aspect ratio over 200 are refused before decoding. */
QVL_API qvl_status qvl_image_load_file(const char *path, uint64_t max_pixels, qvl_image **out,
                                       char *err, size_t err_len);
QVL_API qvl_status qvl_image_load_mem(const void *data, size_t len, uint64_t max_pixels,
                                      qvl_image **out, char *err, size_t err_len);
/* With flags: QVL_IMAGE_IGNORE_EXIF keeps the stored pixel order. Without it (and in the two
 * calls above) an EXIF Orientation tag (JPEG, PNG eXIf, WebP) turns the image upright as
 * transformers' load_image does for paths, URLs and base64 strings (PIL's exif_transpose);
 * ignoring it matches PIL images handed to the processor directly, and qwen-vl-utils. */
#define QVL_IMAGE_IGNORE_EXIF 1u
/* Transparency: an RGBA image (as PIL opens them: PNG colour type 6, 16-bit gray + alpha, WebP
 * with alpha) is composited onto white by default, as qwen-vl-utils and vLLM do;
 * QVL_IMAGE_DROP_ALPHA keeps its stored colours instead, as transformers' load_image /
 * convert("RGB") does. Palette and gray transparency is always ignored (all three convert
 * those modes with PIL's convert("RGB")). */
#define QVL_IMAGE_DROP_ALPHA 2u
QVL_API qvl_status qvl_image_load_file_ex(const char *path, uint64_t max_pixels, unsigned flags,
                                          qvl_image **out, char *err, size_t err_len);
QVL_API qvl_status qvl_image_load_mem_ex(const void *data, size_t len, uint64_t max_pixels,
                                         unsigned flags, qvl_image **out, char *err,
                                         size_t err_len);
/* Copy a raw RGB buffer (rows of width*3 bytes). */
QVL_API qvl_status qvl_image_from_rgb(const uint8_t *rgb, int width, int height, qvl_image **out,
                                      char *err, size_t err_len);
QVL_API void qvl_image_size(const qvl_image *img, int *width, int *height);
QVL_API void qvl_image_free(qvl_image *img);

/* Which reference preprocessing the resize and normalisation reproduce, bit for bit.
 * PIL: transformers' PIL image processor (Pillow's Image.resize BICUBIC, then rescale and
 * normalise), as qwen-vl-utils resizes too. TORCHVISION: transformers' Fast (torchvision)
 * processors: PyTorch's uint8 antialiased bicubic interpolate, then (u8 - 127.5) / 127.5 in
 * float32. The two differ by a level or two of 255 in some resized pixels. DEFAULT: PIL for
 * images, TORCHVISION for videos (the video processor has only the torchvision path). */
typedef enum qvl_resample {
    QVL_RESAMPLE_DEFAULT = 0,
    QVL_RESAMPLE_PIL = 1,
    QVL_RESAMPLE_TORCHVISION = 2,
} qvl_resample;

/* Per-call image budget: 0 means "from preprocessor_config.json". */
typedef struct qvl_image_opts {
    int64_t min_pixels;
    int64_t max_pixels;
    qvl_resample resample; /* any other value: QVL_E_INVAL */
} qvl_image_opts;

/* Where an image lands: resized size, grid (t, h, w) in patches and its number of tokens. */
typedef struct qvl_image_plan {
    int resized_width, resized_height;
    int grid_t, grid_h, grid_w;
    int64_t n_tokens;
} qvl_image_plan;
/* m may be NULL: the released preprocessor defaults are used. */
QVL_API qvl_status qvl_image_plan_get(const qvl_model *m, const qvl_image *img,
                                      const qvl_image_opts *o, qvl_image_plan *plan, char *err,
                                      size_t err_len);

/* The reference processor's pixel_values of one image: *pixels is a heap array (qvl_free) of
 * [n_rows, n_cols] floats in merge-group row order; plan gets the grid and token count. */
QVL_API qvl_status qvl_image_pixel_values(const qvl_model *m, const qvl_image *img,
                                          const qvl_image_opts *o, float **pixels,
                                          int64_t *n_rows, int64_t *n_cols, qvl_image_plan *plan,
                                          char *err, size_t err_len);

/* Vision encoding of one image: features [n_tokens, hidden] and DeepStack features
 * [n_deepstack, n_tokens, hidden], heap arrays released with qvl_free(). */
typedef struct qvl_features {
    int64_t n_tokens;
    int dim;
    int n_deepstack;
    int grid_t, grid_h, grid_w;
    float *embd; /* [n_tokens, dim] */
    float *deepstack; /* [n_deepstack, n_tokens, dim] */
} qvl_features;
QVL_API qvl_status qvl_vision_encode(const qvl_model *m, const qvl_image *img,
                                     const qvl_image_opts *o, int n_threads, qvl_features *out,
                                     char *err, size_t err_len);
QVL_API void qvl_features_free(qvl_features *f);

/* ---- video ------------------------------------------------------------ */
typedef struct qvl_video qvl_video; /* the sampled frames of a video */

/* Sampling and budget; 0 fields come from video_preprocessor_config.json (fps 2, 4..768 frames,
 * T x H x W pixel budget). */
typedef struct qvl_video_opts {
    double fps; /* frames sampled per second of video */
    int min_frames;
    int max_frames;
    int64_t min_pixels;
    int64_t max_pixels;
    uint64_t max_decoded_pixels; /* video files: 0 no budget; else sampled frames x width x
                                    height must fit, checked before decoding (QVL_E_LIMIT) */
    qvl_resample resample; /* DEFAULT = TORCHVISION; any other value: QVL_E_INVAL */
    unsigned image_flags;  /* frame directories: QVL_IMAGE_IGNORE_EXIF / DROP_ALPHA as for
                              images */
} qvl_video_opts;

/* A video file (decoded with FFmpeg, only the sampled frames) or a directory of frame images
 * (.png/.jpg/.webp in name order) whose frame rate is frames_fps. m may be NULL for the
 * released video processor defaults (also in qvl_video_plan_get / qvl_video_timestamps). */
QVL_API qvl_status qvl_video_load(const qvl_model *m, const char *path, double frames_fps,
                                  const qvl_video_opts *o, qvl_video **out, char *err,
                                  size_t err_len);
/* A video file held in memory (borrowed for the call), as qvl_video_load. */
QVL_API qvl_status qvl_video_load_mem(const qvl_model *m, const void *data, size_t len,
                                      const qvl_video_opts *o, qvl_video **out, char *err,
                                      size_t err_len);
/* A video from decoded frames (all the same size) at frame rate fps; frames are copied. */
QVL_API qvl_status qvl_video_from_frames(const qvl_model *m, qvl_image *const *frames, size_t n,
                                         double fps, const qvl_video_opts *o, qvl_video **out,
                                         char *err, size_t err_len);
QVL_API void qvl_video_free(qvl_video *v);

typedef struct qvl_video_plan {
    int n_frames; /* sampled */
    int resized_width, resized_height;
    int grid_t, grid_h, grid_w; /* grid_t = frame pairs */
    int64_t tokens_per_group;   /* <|video_pad|> tokens per frame pair */
    int64_t n_tokens;
    int frame_width, frame_height; /* decoded (source) frame size */
} qvl_video_plan;
QVL_API qvl_status qvl_video_plan_get(const qvl_model *m, const qvl_video *v, qvl_video_plan *p,
                                      char *err, size_t err_len);
/* Time in seconds of each frame pair (as written into the prompt); returns the number of pairs
 * (fills at most cap values). */
QVL_API size_t qvl_video_timestamps(const qvl_model *m, const qvl_video *v, double *ts,
                                    size_t cap);
/* Sampled frame indices of the source (fills at most cap); returns the number sampled. */
QVL_API size_t qvl_video_frame_indices(const qvl_video *v, int64_t *idx, size_t cap);

/* ---- context (one conversation) --------------------------------------- */
typedef struct qvl_ctx qvl_ctx; /* KV cache, scratch, RNG, thread pool; one thread at a time */

/* Element type of the KV cache. F32 keeps the decoder's float32 keys and values exactly;
 * BF16 and F16 halve the cache (keys and values rounded to nearest even when stored; BF16 keeps
 * float32's range, F16 has 3 more bits of precision but overflows past 65504). */
typedef enum qvl_kv_type {
    QVL_KV_F32 = 0,
    QVL_KV_BF16 = 1,
    QVL_KV_F16 = 2,
} qvl_kv_type;

typedef struct qvl_ctx_params {
    int n_ctx;     /* KV cache length in tokens; 0: min(max_position_embeddings, 8192) */
    int n_threads; /* 0: number of online CPUs */
    int n_batch;   /* prefill chunk; 0: 512 */
    qvl_image_opts image; /* default image budget for this context */
    qvl_kv_type kv_type;  /* KV cache element type; default QVL_KV_F32 */
} qvl_ctx_params;

QVL_API qvl_ctx_params qvl_ctx_default_params(void);
/* "f32", "bf16", "f16" <-> qvl_kv_type; from_name returns 0 for an unknown name. */
QVL_API int qvl_kv_type_from_name(const char *name, qvl_kv_type *out);
QVL_API const char *qvl_kv_type_name(qvl_kv_type t);
QVL_API qvl_status qvl_ctx_create(const qvl_model *m, const qvl_ctx_params *p, qvl_ctx **out,
                                  char *err, size_t err_len);
QVL_API void qvl_ctx_free(qvl_ctx *c);
/* Last error message of a call on c (valid until the next call on c). */
QVL_API const char *qvl_ctx_errmsg(const qvl_ctx *c);
/* Forget the conversation (empty KV cache). */
QVL_API void qvl_ctx_reset(qvl_ctx *c);
/* Set the image budget used by later qvl_ctx_eval calls (zero fields, or o NULL: the model's
 * preprocessor defaults). Lets one context serve requests with different budgets. */
QVL_API void qvl_ctx_set_image_opts(qvl_ctx *c, const qvl_image_opts *o);
/* Report vision (blocks) and prefill (tokens) progress of later eval calls; NULL: none. */
QVL_API void qvl_ctx_set_progress(qvl_ctx *c, qvl_progress_fn fn, void *user);
/* Tokens in the KV cache, and the cache capacity. */
QVL_API int64_t qvl_ctx_n_past(const qvl_ctx *c);
QVL_API int64_t qvl_ctx_n_ctx(const qvl_ctx *c);

/* Append token ids. Each run of image_token_id placeholders must match the next image of
 * `images` (its n_tokens), in order; the images are encoded and injected with DeepStack.
 * On error the context is left as it was before the call. */
QVL_API qvl_status qvl_ctx_eval(qvl_ctx *c, const int32_t *ids, size_t n, qvl_image *const *images,
                                size_t n_images);
/* As qvl_ctx_eval with videos too: each video's frame groups take the <|video_pad|> runs in
 * order (the prompt holds the timestamp text between them, as qvl_prompt_build_mm writes). */
QVL_API qvl_status qvl_ctx_eval_mm(qvl_ctx *c, const int32_t *ids, size_t n,
                                   qvl_image *const *images, size_t n_images,
                                   qvl_video *const *videos, size_t n_videos);

/* A prompt's own log-probabilities (qvl_ctx_eval_scored), written by the call. */
typedef struct qvl_prompt_scores {
    float *logprobs;     /* [n] */
    int n_top;           /* 0..QVL_MAX_TOP_LOGPROBS most likely ids per position */
    int32_t *top_ids;    /* [n][n_top] (may be NULL when n_top is 0) */
    float *top_logprobs; /* [n][n_top] */
} qvl_prompt_scores;
/* As qvl_ctx_eval_mm, and score the prompt: logprobs[i] is the log-probability the model gives
 * ids[i] after everything before it (natural log of the softmax of the raw logits, as
 * qvl_gen_params.logprobs), and with n_top the most likely ids there (ties: lower id first).
 * Token 0 is scored from the logits the context holds before the call; a context without any
 * (fresh, reset, or after an embeddings eval) gives NAN, and ids -1 with NAN in its top row.
 * Image and video placeholders are scored like other tokens. Cost: the lm_head on every row of
 * the prompt and a pass over the vocabulary per row. */
QVL_API qvl_status qvl_ctx_eval_scored(qvl_ctx *c, const int32_t *ids, size_t n,
                                       qvl_image *const *images, size_t n_images,
                                       qvl_video *const *videos, size_t n_videos,
                                       const qvl_prompt_scores *s);

/* Append caller-supplied embeddings: embd [n, hidden]. pos: 3 x n position ids (t row, then h,
 * then w), or NULL for text positions continuing the conversation. deepstack: n_deepstack
 * arrays of [n_visual, hidden] added after decoder layers 0..n_deepstack-1 at the rows whose
 * visual_mask[i] is non-zero (in row order), or NULL. next_pos: the text position after this
 * chunk (0: max(pos) + 1). */
typedef struct qvl_embd_batch {
    size_t n;
    int dim;
    const float *embd;
    const int32_t *pos;
    const uint8_t *visual_mask;
    int n_deepstack;
    const float *const *deepstack;
    int64_t next_pos;
} qvl_embd_batch;
QVL_API qvl_status qvl_ctx_eval_embd(qvl_ctx *c, const qvl_embd_batch *b);

/* Text position the next token will get (max position so far + 1; not the cache index). */
QVL_API int64_t qvl_ctx_next_pos(const qvl_ctx *c);
/* Milliseconds spent in the vision tower and in prefill since the context was created. */
QVL_API void qvl_ctx_timings(const qvl_ctx *c, double *vision_ms, double *prefill_ms);

/* Fault in now the memory the first n_positions positions of a prompt will write (the KV
 * cache's chunks from the start, the decoder's scratch rows), with the context's threads. The
 * first write to fresh memory is slow (on virtual machines ~2-5 ms per MB): without this a
 * new context's first token pays for it (2B: ~0.3 s). Contents are unchanged; a context that
 * holds tokens is not disturbed. For servers, after qvl_ctx_create. */
QVL_API qvl_status qvl_ctx_prefault(qvl_ctx *c, int64_t n_positions);

/* Logits at the last evaluated position [n_vocab] (valid until the next call on c). */
QVL_API const float *qvl_ctx_logits(const qvl_ctx *c, int *n_vocab);

/* ---- generation ------------------------------------------------------- */
#define QVL_MAX_TOP_LOGPROBS 64

/* One generated token, for qvl_gen_params.token_cb (valid during the call only). Without
 * logprobs, logprob is 0 and n_top 0. */
typedef struct qvl_token_info {
    int32_t token;
    size_t index;  /* 0 for the first generated token */
    float logprob; /* -inf when the token's logit is -inf */
    int n_top;     /* min(top_logprobs, vocabulary size) */
    const int32_t *top_ids;    /* [n_top] most likely first (ties: lower id first) */
    const float *top_logprobs; /* [n_top] */
} qvl_token_info;
typedef int (*qvl_token_cb)(const qvl_token_info *t, void *user);

typedef struct qvl_gen_params {
    int max_new_tokens; /* 0: until EOS or the context is full */
    float temperature;  /* < 0: from generation_config.json; 0: greedy */
    int top_k;          /* < 0: from generation_config.json; 0: off */
    float top_p;        /* < 0: from generation_config.json; 1: off */
    float min_p;        /* 0: off */
    float repetition_penalty; /* < 0: from generation_config.json; 1: off */
    float presence_penalty;
    float frequency_penalty;
    uint64_t seed;
    int ignore_eos;
    const char *const *stop; /* stop strings (not emitted) */
    int n_stop;
    /* Log-probabilities of the generated tokens (natural log of the softmax of the model's raw
     * logits: before penalties, temperature and truncation, so they do not depend on the
     * sampling parameters). logprobs != 0: each token's, in qvl_gen_result.logprobs and the
     * token callback; top_logprobs (0..QVL_MAX_TOP_LOGPROBS) also the most likely tokens of
     * each step. Cost: one pass over the vocabulary per token. */
    int logprobs;
    int top_logprobs;
    /* Called once per generated token (EOS excluded) before the text it completes is passed to
     * the text callback; non-zero stops as the text callback does. NULL: none. */
    qvl_token_cb token_cb;
    void *token_user;
    /* Added to the logits of these ids before every sampling step (OpenAI's logit_bias: -100
     * all but bans a token, +100 all but forces it); not to the reported log-probabilities.
     * Ids outside the vocabulary or non-finite values: QVL_E_INVAL. */
    const int32_t *bias_ids;
    const float *bias_values;
    int n_bias;
} qvl_gen_params;

typedef enum qvl_finish {
    QVL_FINISH_NONE = 0,
    QVL_FINISH_STOP,   /* EOS token or stop string */
    QVL_FINISH_LENGTH, /* max_new_tokens or context full */
    QVL_FINISH_CANCELLED,
} qvl_finish;

/* Called with each new piece of valid UTF-8 text (never a partial character) and the token that
 * completed it; return non-zero to stop (the context stays usable). */
typedef int (*qvl_text_cb)(const char *text, size_t len, int32_t token, void *user);

typedef struct qvl_gen_result {
    int32_t *tokens; /* generated ids (heap, qvl_free) */
    size_t n_tokens;
    char *text; /* generated text without the stop string (heap, qvl_free) */
    qvl_finish finish;
    double prefill_ms, decode_ms;
    /* with qvl_gen_params.logprobs (else NULL, 0): each token's log-probability [n_tokens],
     * and the top ids and log-probabilities of each step [n_tokens, n_top] (heap) */
    float *logprobs;
    int n_top;
    int32_t *top_ids;
    float *top_logprobs;
} qvl_gen_result;

QVL_API qvl_gen_params qvl_gen_default_params(void);
/* Generate after the evaluated prompt. The generated tokens stay in the KV cache (the last one,
 * which was never evaluated, is not), so a next turn can be appended. */
QVL_API qvl_status qvl_ctx_generate(qvl_ctx *c, const qvl_gen_params *p, qvl_text_cb cb,
                                    void *user, qvl_gen_result *res);
QVL_API void qvl_gen_result_free(qvl_gen_result *r);

/* ---- prompts ---------------------------------------------------------- */
/* The chat template itself, on messages made of interleaved parts (text, image and video
 * placeholders in any order), rendered exactly as the Qwen3-VL Jinja template does:
 * a system message only in first position, images and videos as
 * <|vision_start|><|image_pad|><|vision_end|> (one pad per placeholder; qvl_prompt_build
 * expands them), assistant and system messages with their text parts only. *out is a heap
 * string released with qvl_free(). Unknown role, unknown part type or a NULL text part:
 * QVL_E_INVAL. */
typedef enum qvl_part_type { QVL_PART_TEXT = 0, QVL_PART_IMAGE = 1, QVL_PART_VIDEO = 2 } qvl_part_type;

typedef struct qvl_chat_part {
    qvl_part_type type;
    const char *text; /* QVL_PART_TEXT only */
} qvl_chat_part;

/* A function call of an assistant message, written as the template writes it:
 * <tool_call>\n{"name": "NAME", "arguments": ARGUMENTS}\n</tool_call>. ARGUMENTS is the text
 * given when arguments_json is 0 (the template writes a string argument as it is; the OpenAI
 * API's arguments are a JSON string), or, when arguments_json is 1, that JSON value written in
 * the template's `tojson` form (as for tools; invalid JSON: QVL_E_INVAL). */
typedef struct qvl_tool_call {
    const char *name;
    const char *arguments;
    int arguments_json;
} qvl_tool_call;

typedef struct qvl_chat_msg {
    const char *role;           /* "system", "user", "assistant" or "tool" */
    const char *content;        /* plain text, used when parts == NULL (NULL: empty) */
    const qvl_chat_part *parts; /* list content */
    size_t n_parts;
    const qvl_tool_call *tool_calls; /* assistant messages: calls after the text */
    size_t n_tool_calls;
} qvl_chat_msg;

QVL_API qvl_status qvl_chat_render(const qvl_chat_msg *msgs, size_t n, int add_generation_prompt,
                                   int add_vision_id, char **out, char *err, size_t err_len);
/* With tools offered: each of tools[0..n_tools) is one tool's JSON (an OpenAI "tools" entry,
 * e.g. {"type": "function", "function": {...}}), written into the system turn in the template's
 * `tojson` form (Python's json.dumps: ", " and ": " separators, keys in order; a number with a
 * zero fraction written 1.0 in the JSON comes out as 1). Invalid JSON: QVL_E_INVAL. */
QVL_API qvl_status qvl_chat_render_tools(const qvl_chat_msg *msgs, size_t n,
                                         const char *const *tools, size_t n_tools,
                                         int add_generation_prompt, int add_vision_id, char **out,
                                         char *err, size_t err_len);

/* One chat message: role "system", "user", "assistant"; text, and images placed before the
 * text (n_images placeholders), as the CLI does. */
typedef struct qvl_message {
    const char *role;
    const char *text;
    int n_images; /* image placeholders before the text */
    int n_videos; /* video placeholders after the images, before the text */
} qvl_message;
/* Render the chat template and tokenize; each image placeholder is expanded into the number of
 * tokens of the matching image in `images` (all images of all messages, in order). */
QVL_API qvl_status qvl_prompt_build(const qvl_model *m, const qvl_message *msgs, size_t n_msgs,
                                    int add_generation_prompt, qvl_image *const *images,
                                    size_t n_images, const qvl_image_opts *o, int32_t **ids,
                                    size_t *n_ids, char *err, size_t err_len);
/* With videos: each video placeholder becomes, per frame pair, "<T seconds>" and a
 * vision_start / video pads / vision_end block, as the reference processor writes it. */
QVL_API qvl_status qvl_prompt_build_mm(const qvl_model *m, const qvl_message *msgs, size_t n_msgs,
                                       int add_generation_prompt, qvl_image *const *images,
                                       size_t n_images, const qvl_image_opts *o,
                                       qvl_video *const *videos, size_t n_videos, int32_t **ids,
                                       size_t *n_ids, char *err, size_t err_len);
/* The general form: messages of interleaved parts (qvl_chat_render), the image and video
 * parts of user (and tool) messages taking `images` and `videos` in order; their counts must
 * match. Rendered, tokenized, each image placeholder expanded into its image's tokens and each
 * video into its timestamped frame-pair blocks. */
QVL_API qvl_status qvl_prompt_build_parts(const qvl_model *m, const qvl_chat_msg *msgs,
                                          size_t n_msgs, int add_generation_prompt,
                                          qvl_image *const *images, size_t n_images,
                                          const qvl_image_opts *o, qvl_video *const *videos,
                                          size_t n_videos, int32_t **ids, size_t *n_ids,
                                          char *err, size_t err_len);
/* As qvl_prompt_build_parts with tools offered (qvl_chat_render_tools). */
QVL_API qvl_status qvl_prompt_build_tools(const qvl_model *m, const qvl_chat_msg *msgs,
                                          size_t n_msgs, const char *const *tools,
                                          size_t n_tools, int add_generation_prompt,
                                          qvl_image *const *images, size_t n_images,
                                          const qvl_image_opts *o, qvl_video *const *videos,
                                          size_t n_videos, int32_t **ids, size_t *n_ids,
                                          char *err, size_t err_len);

#ifdef __cplusplus
}
#endif
#endif /* QVL_H */
