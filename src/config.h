/* config.h - config.json and generation_config.json of a Qwen3-VL model directory. */
#ifndef QVL_CONFIG_H
#define QVL_CONFIG_H

#include "common.h"

#define QVL_MAX_DEEPSTACK 16
#define QVL_MAX_EOS 8

typedef struct qvl_text_cfg {
    int hidden;       /* hidden_size */
    int n_layers;     /* num_hidden_layers */
    int n_heads;      /* num_attention_heads */
    int n_kv_heads;   /* num_key_value_heads (defaults to n_heads) */
    int head_dim;     /* head_dim (read, never derived, unless absent) */
    int intermediate; /* intermediate_size */
    int vocab_size;
    float rms_eps;
    double rope_theta;
    int mrope_section[3];
    bool mrope_interleaved;
    int64_t max_pos; /* max_position_embeddings */
    bool tie;        /* tie_word_embeddings as the text config says (or the top level) */
    bool attention_bias;
    char hidden_act[32];
} qvl_text_cfg;

typedef struct qvl_vision_cfg {
    int depth;
    int hidden;
    int n_heads;
    int intermediate;
    int patch;          /* patch_size */
    int temporal_patch; /* temporal_patch_size */
    int merge;          /* spatial_merge_size */
    int in_ch;
    int out_hidden;
    int num_pos; /* num_position_embeddings (a square number) */
    int n_deepstack;
    int deepstack[QVL_MAX_DEEPSTACK]; /* deepstack_visual_indexes */
    char hidden_act[32];
} qvl_vision_cfg;

typedef struct qvl_config {
    char model_type[32];
    int32_t image_token_id;
    int32_t video_token_id;
    int32_t vision_start_id;
    int32_t vision_end_id;
    qvl_text_cfg text;
    qvl_vision_cfg vision;
} qvl_config;

typedef struct qvl_gen_config {
    int n_eos;
    int32_t eos[QVL_MAX_EOS];
    int32_t bos_id; /* -1 if absent */
    int32_t pad_id; /* -1 if absent */
    bool do_sample;
    float temperature;
    int top_k;
    float top_p;
    float repetition_penalty;
} qvl_gen_config;

/* Parse config.json text; `fname` is used in messages. Checks types, ranges and consistency
 * (dims positive, head counts divide, mrope sections sum to head_dim/2, deepstack indexes inside
 * the depth, out_hidden == hidden). */
qvl_status qvl_config_parse(const char *json, size_t len, const char *fname, qvl_config *c,
                            char *err, size_t err_len);
/* Parse generation_config.json; fields absent keep the defaults set by qvl_gen_config_default. */
void qvl_gen_config_default(qvl_gen_config *g);
qvl_status qvl_gen_config_parse(const char *json, size_t len, const char *fname, qvl_gen_config *g,
                                char *err, size_t err_len);

#endif
