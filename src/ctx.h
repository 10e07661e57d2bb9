/* ctx.h - the context object shared by llm.c (decoder, eval), gen.c (generation) and api.c. */
#ifndef QVL_CTX_H
#define QVL_CTX_H

#include "model.h"
#include "pool.h"

/* K/V cache rows per chunk of positions: a multiple of the attention kernels' chunk unit
 * (QVL_KERN_KV_CHUNK, 192); 384 rows of the 2B shapes are 1.5 MB per layer in f32 */
#define QVL_KV_CHUNK 384
/* decode faults the next chunk in over this many positions before it starts (llm.c) */
#define QVL_KV_WARM_AHEAD 32

struct qvl_ctx {
    const qvl_model *m;
    qvl_pool *pool;
    int64_t n_ctx;
    int64_t n_batch;
    int64_t n_past;   /* rows in the KV cache */
    int64_t next_pos; /* text position of the next token (max position so far + 1) */
    qvl_image_opts image;
    /* [n_layers][kv_rows / QVL_KV_CHUNK][n_kv_heads][QVL_KV_CHUNK][head_dim] of kv_dt: chunks of
     * positions, each K/V head's rows contiguous within a chunk (llm.c) */
    void *k_cache, *v_cache;
    int64_t kv_rows;          /* n_ctx rounded up to whole chunks */
    qvl_dtype kv_dt;          /* F32, BF16 or F16 */
    size_t kv_bytes;          /* of each of k_cache, v_cache (qvl_malloc_big) */
    int64_t kv_warm;          /* chunks [0, kv_warm) of the cache are faulted in (llm.c) */
    size_t kv_warm_done;      /* bytes of chunk kv_warm's regions faulted in so far */
    float *logits;            /* [vocab] of the last evaluated row */
    bool has_logits;
    int32_t *tokens; /* [n_ctx] ids in the cache, -1 for embedding rows */
    float *scratch;  /* per-chunk activations (qvl_malloc_big, scratch_bytes) */
    size_t scratch_bytes;
    int64_t scratch_rows; /* rows [0, scratch_rows) of its per-row regions are faulted in */
    float *inv_freq; /* [head_dim / 2] */
    float *decode_x; /* [hidden] */
    qvl_keep vit_keep;  /* the vision tower's activations, kept between images (vit.h) */
    qvl_keep eval_keep; /* an eval's embeddings, positions and image features (llm.c) */
    double vision_ms, prefill_ms;
    qvl_progress_fn progress;
    void *progress_user;
    float *dbg_layers; /* tests: if set, [n_layers][hidden] gets the last row after each layer */
    /* qvl_ctx_eval_scored: the prompt being scored, else NULL (llm.c) */
    const qvl_prompt_scores *score;
    const int32_t *score_ids;
    float *score_buf; /* [QVL_SCORE_ROWS][hidden + vocab] */
    char err[512];
};

void qvl_ctx_setf(qvl_ctx *c, const char *fmt, ...) QVL_PRINTF(2, 3);
/* Feed one token at the next position and compute its logits. */
qvl_status qvl_ctx_decode_one(qvl_ctx *c, int32_t id);

/* struct qvl_image: decoded RGB (api.c) */
struct qvl_image {
    int w, h;
    uint8_t *rgb;
};
/* Preprocess an image with the model's processor config and the given budget (0 fields: the
 * context defaults, then the config). */
qvl_status qvl_image_pixels(const qvl_model *m, const qvl_image *img, const qvl_image_opts *o,
                            qvl_pixels *out, char *err, size_t err_len);

#endif
