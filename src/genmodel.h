/* genmodel.h - writes a complete random-weight Qwen3-VL model directory in the released Hugging
 * Face layout (config.json, safetensors weights with the real tensor names and shapes, tokenizer,
 * chat template, processor and generation configs). Used by tests (tiny models with variations),
 * benchmarks (real-size 2B/4B/8B) and the CLI demo. Weights are deterministic in the seed and
 * streamed to disk in chunks, so peak memory stays small for any size. */
#ifndef QVL_GENMODEL_H
#define QVL_GENMODEL_H

#include "common.h"
#include "dtype.h"

typedef struct qvl_genmodel_params {
    const char *preset;   /* "tiny", "2b", "4b", "8b" (NULL: "tiny") */
    qvl_dtype dtype;      /* QVL_DT_BF16 (default), QVL_DT_F16, QVL_DT_F32 */
    uint64_t seed;        /* same seed and dims -> same tensor bytes (independent of sharding) */
    uint64_t shard_bytes; /* 0: one model.safetensors; else shards of at most this many tensor
                             bytes (a bigger tensor gets a shard of its own) + index. If every
                             tensor fits in one shard, a single model.safetensors is written
                             without an index, as Hugging Face does. */
    int tie_embeddings;   /* -1: preset default, 0/1 force (lm_head.weight only when untied) */
    int old_prefixes;     /* write "visual." / "model." keys (pre-4.57 layout) */
    /* overrides for test variations, 0 = preset value: */
    int n_heads;
    int n_kv_heads;
    int head_dim; /* when set without mrope_section, the section is derived as the releases do */
    int hidden;   /* also the vision out_hidden_size */
    int n_layers;
    int intermediate;
    int vocab_size; /* note: the real tokenizer uses ids up to 151668 */
    int mrope_section[3];
    int vision_depth;
    int vision_hidden;
    int vision_heads;
    int vision_intermediate;
    float embed_std;           /* std of embed_tokens (0: 1.0); smaller values flatten the logits
                                  of a tied head, for varied sampled text from random weights */
    int n_deepstack;           /* taps, 0 = preset, -1 = none; indexes spread evenly over the
                                  depth unless preset depth and count are kept */
    const char *tokenizer_dir; /* dir with tokenizer.json + tokenizer_config.json to copy;
                                  NULL: $QVL_TOKENIZER_DIR, then QVL_DEFAULT_TOKENIZER_DIR if
                                  compiled in */
} qvl_genmodel_params;

/* Defaults: preset "tiny", bf16, seed 0, one file, preset tying, new prefixes, no overrides. */
void qvl_genmodel_default_params(qvl_genmodel_params *p);

/* Write the model directory `out_dir` (created if missing, with parents; existing files of the
 * same names are replaced). Files: config.json, generation_config.json,
 * preprocessor_config.json, video_preprocessor_config.json, chat_template.json, tokenizer.json,
 * tokenizer_config.json (chat template, model_max_length and processor_class set as in the
 * released VL checkpoints), model.safetensors or model-0000k-of-0000n.safetensors +
 * model.safetensors.index.json. Weight files are written under a temporary name and renamed
 * when complete; config.json is written last, so a directory with a config.json is complete.
 * Errors: QVL_E_INVAL (bad preset, dtype or inconsistent dims), QVL_E_IO (no tokenizer found,
 * file system errors; the message names the path), QVL_E_NOMEM. */
qvl_status qvl_genmodel_write(const char *out_dir, const qvl_genmodel_params *p, char *err,
                              size_t err_len);

/* Plan without writing: total tensor bytes (the index's total_size) and number of tensors of
 * the model `p` describes. Either out pointer may be NULL. Same errors as qvl_gen_model's
 * parameter checks. */
qvl_status qvl_genmodel_plan_bytes(const qvl_genmodel_params *p, uint64_t *total_bytes,
                                   size_t *n_tensors, char *err, size_t err_len);

#endif /* QVL_GENMODEL_H */
