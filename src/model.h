/* model.h - a loaded model: configs, tokenizer, mmap'd weights resolved into per-layer views. */
#ifndef QVL_MODEL_H
#define QVL_MODEL_H

#include "common.h"
#include "config.h"
#include "dtype.h"
#include "ops.h"
#include "preproc.h"

struct qvl_st;
struct qvl_tok;


typedef struct qvl_vit_block {
    float *norm1_w, *norm1_b, *norm2_w, *norm2_b;
    qvl_mat qkv, proj, fc1, fc2;
    float *qkv_b, *proj_b, *fc1_b, *fc2_b;
} qvl_vit_block;

typedef struct qvl_merger {
    float *norm_w, *norm_b; /* [D] for the final merger, [4D] for DeepStack mergers */
    qvl_mat fc1, fc2;
    float *fc1_b, *fc2_b;
} qvl_merger;

typedef struct qvl_llm_layer {
    float *in_norm, *post_norm, *q_norm, *k_norm;
    qvl_mat q, k, v, o, gate, up, down;
} qvl_llm_layer;

struct qvl_model {
    char *dir;
    qvl_config cfg;
    qvl_gen_config gen;
    qvl_pp_config pp;  /* preprocessor_config.json */
    qvl_pp_config vpp; /* video_preprocessor_config.json */
    struct qvl_tok *tok;
    struct qvl_st *st;

    /* vision */
    qvl_mat patch_w; /* [D, C*T*P*P] */
    float *patch_b;
    float *pos_embed; /* [num_pos, D] float copy */
    qvl_vit_block *blocks;
    qvl_merger merger;
    qvl_merger *ds_mergers; /* [n_deepstack] */

    /* text */
    qvl_mat embed; /* [vocab, H] */
    qvl_llm_layer *layers;
    float *norm;
    qvl_mat lm_head; /* == embed when tied */
    bool lm_head_tied;

    /* accounting */
    uint64_t n_params_vision, n_params_text;
    uint64_t bytes_vision, bytes_text;
    qvl_dtype weight_dtype;
    qvl_quant quant;
    bool bf16_dot; /* bf16 matrices tagged BF16D (qvl_model_params.bf16_dot) */
    struct qvl_owned_buf {
        void *p;
        size_t n;
    } *owned; /* buffers of quantised matrices (qvl_malloc_big) */
    size_t n_owned;
    /* quantisation cache (qcache.h): the file, and its mapping when the matrices came from it */
    char *qcache_path;
    const uint8_t *qcache_map;
    size_t qcache_size;
};

#endif
