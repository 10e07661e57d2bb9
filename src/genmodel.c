/* genmodel.c - random-weight Qwen3-VL model directory writer (see genmodel.h).
 *
 * The model is first planned (dimensions from a preset plus overrides, the full tensor list with
 * names, shapes and init statistics, sorted by name and split into shards), then written file by
 * file. Each tensor draws from its own xoshiro256** stream seeded from (seed, canonical name), so
 * its bytes do not depend on sharding, prefix layout or the other tensors. Values are an
 * Irwin-Hall(4) approximation of a normal (one 64-bit draw per element, bounded at 3.46 sigma),
 * generated and written in 1 MiB chunks. The JSON side files reproduce the released files
 * byte for byte where they do not depend on the dimensions; config.json and tokenizer_config.json
 * are printed like Python's json.dumps(indent=2). */
#include "genmodel.h"
#include "st.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define GEN_MAX_DEEPSTACK 16
#define GEN_CHUNK_BYTES   (1u << 20)
#define GEN_DIM_MAX       (1 << 20) /* sanity cap on any overridden dimension */
#define GEN_VOCAB_MAX     (1 << 22)

/* ---- released side files (Qwen team data, verbatim) ------------------------------------- */

static const char k_chat_template_json[] =
    "{\n"
    "  \"chat_template\": \"{%- if tools %}\\n"
    "    {{- '<|im_start|>system\\\\n' }}\\n"
    "    {%- if messages[0].role == 'system' %}\\n"
    "        {%- if messages[0].content is string %}\\n"
    "            {{- messages[0].content }}\\n"
    "        {%- else %}\\n"
    "            {%- for content in messages[0].content %}\\n"
    "                {%- if 'text' in content %}\\n"
    "                    {{- content.text }}\\n"
    "                {%- endif %}\\n"
    "            {%- endfor %}\\n"
    "        {%- endif %}\\n"
    "        {{- '\\\\n\\\\n' }}\\n"
    "    {%- endif %}\\n"
    "    {{- \\\"# Tools\\\\n\\\\nYou may call one or more functions to assist wit"
    "h the user query.\\\\n\\\\nYou are provided with function signatures within"
    " <tools></tools> XML tags:\\\\n<tools>\\\" }}\\n"
    "    {%- for tool in tools %}\\n"
    "        {{- \\\"\\\\n\\\" }}\\n"
    "        {{- tool | tojson }}\\n"
    "    {%- endfor %}\\n"
    "    {{- \\\"\\\\n</tools>\\\\n\\\\nFor each function call, return a json object"
    " with function name and arguments within <tool_call></tool_call> XML ta"
    "gs:\\\\n<tool_call>\\\\n{\\\\\\\"name\\\\\\\": <function-name>, \\\\\\\"arguments\\\\\\\": "
    "<args-json-object>}\\\\n</tool_call><|im_end|>\\\\n\\\" }}\\n"
    "{%- else %}\\n"
    "    {%- if messages[0].role == 'system' %}\\n"
    "        {{- '<|im_start|>system\\\\n' }}\\n"
    "        {%- if messages[0].content is string %}\\n"
    "            {{- messages[0].content }}\\n"
    "        {%- else %}\\n"
    "            {%- for content in messages[0].content %}\\n"
    "                {%- if 'text' in content %}\\n"
    "                    {{- content.text }}\\n"
    "                {%- endif %}\\n"
    "            {%- endfor %}\\n"
    "        {%- endif %}\\n"
    "        {{- '<|im_end|>\\\\n' }}\\n"
    "    {%- endif %}\\n"
    "{%- endif %}\\n"
    "{%- set image_count = namespace(value=0) %}\\n"
    "{%- set video_count = namespace(value=0) %}\\n"
    "{%- for message in messages %}\\n"
    "    {%- if message.role == \\\"user\\\" %}\\n"
    "        {{- '<|im_start|>' + message.role + '\\\\n' }}\\n"
    "        {%- if message.content is string %}\\n"
    "            {{- message.content }}\\n"
    "        {%- else %}\\n"
    "            {%- for content in message.content %}\\n"
    "                {%- if content.type == 'image' or 'image' in content or"
    " 'image_url' in content %}\\n"
    "                    {%- set image_count.value = image_count.value + 1 %"
    "}\\n"
    "                    {%- if add_vision_id %}Picture {{ image_count.value"
    " }}: {% endif -%}\\n"
    "                    <|vision_start|><|image_pad|><|vision_end|>\\n"
    "                {%- elif content.type == 'video' or 'video' in content "
    "%}\\n"
    "                    {%- set video_count.value = video_count.value + 1 %"
    "}\\n"
    "                    {%- if add_vision_id %}Video {{ video_count.value }"
    "}: {% endif -%}\\n"
    "                    <|vision_start|><|video_pad|><|vision_end|>\\n"
    "                {%- elif 'text' in content %}\\n"
    "                    {{- content.text }}\\n"
    "                {%- endif %}\\n"
    "            {%- endfor %}\\n"
    "        {%- endif %}\\n"
    "        {{- '<|im_end|>\\\\n' }}\\n"
    "    {%- elif message.role == \\\"assistant\\\" %}\\n"
    "        {{- '<|im_start|>' + message.role + '\\\\n' }}\\n"
    "        {%- if message.content is string %}\\n"
    "            {{- message.content }}\\n"
    "        {%- else %}\\n"
    "            {%- for content_item in message.content %}\\n"
    "                {%- if 'text' in content_item %}\\n"
    "                    {{- content_item.text }}\\n"
    "                {%- endif %}\\n"
    "            {%- endfor %}\\n"
    "        {%- endif %}\\n"
    "        {%- if message.tool_calls %}\\n"
    "            {%- for tool_call in message.tool_calls %}\\n"
    "                {%- if (loop.first and message.content) or (not loop.fi"
    "rst) %}\\n"
    "                    {{- '\\\\n' }}\\n"
    "                {%- endif %}\\n"
    "                {%- if tool_call.function %}\\n"
    "                    {%- set tool_call = tool_call.function %}\\n"
    "                {%- endif %}\\n"
    "                {{- '<tool_call>\\\\n{\\\"name\\\": \\\"' }}\\n"
    "                {{- tool_call.name }}\\n"
    "                {{- '\\\", \\\"arguments\\\": ' }}\\n"
    "                {%- if tool_call.arguments is string %}\\n"
    "                    {{- tool_call.arguments }}\\n"
    "                {%- else %}\\n"
    "                    {{- tool_call.arguments | tojson }}\\n"
    "                {%- endif %}\\n"
    "                {{- '}\\\\n</tool_call>' }}\\n"
    "            {%- endfor %}\\n"
    "        {%- endif %}\\n"
    "        {{- '<|im_end|>\\\\n' }}\\n"
    "    {%- elif message.role == \\\"tool\\\" %}\\n"
    "        {%- if loop.first or (messages[loop.index0 - 1].role != \\\"tool\\\""
    ") %}\\n"
    "            {{- '<|im_start|>user' }}\\n"
    "        {%- endif %}\\n"
    "        {{- '\\\\n<tool_response>\\\\n' }}\\n"
    "        {%- if message.content is string %}\\n"
    "            {{- message.content }}\\n"
    "        {%- else %}\\n"
    "            {%- for content in message.content %}\\n"
    "                {%- if content.type == 'image' or 'image' in content or"
    " 'image_url' in content %}\\n"
    "                    {%- set image_count.value = image_count.value + 1 %"
    "}\\n"
    "                    {%- if add_vision_id %}Picture {{ image_count.value"
    " }}: {% endif -%}\\n"
    "                    <|vision_start|><|image_pad|><|vision_end|>\\n"
    "                {%- elif content.type == 'video' or 'video' in content "
    "%}\\n"
    "                    {%- set video_count.value = video_count.value + 1 %"
    "}\\n"
    "                    {%- if add_vision_id %}Video {{ video_count.value }"
    "}: {% endif -%}\\n"
    "                    <|vision_start|><|video_pad|><|vision_end|>\\n"
    "                {%- elif 'text' in content %}\\n"
    "                    {{- content.text }}\\n"
    "                {%- endif %}\\n"
    "            {%- endfor %}\\n"
    "        {%- endif %}\\n"
    "        {{- '\\\\n</tool_response>' }}\\n"
    "        {%- if loop.last or (messages[loop.index0 + 1].role != \\\"tool\\\""
    ") %}\\n"
    "            {{- '<|im_end|>\\\\n' }}\\n"
    "        {%- endif %}\\n"
    "    {%- endif %}\\n"
    "{%- endfor %}\\n"
    "{%- if add_generation_prompt %}\\n"
    "    {{- '<|im_start|>assistant\\\\n' }}\\n"
    "{%- endif %}\\n"
    "\"\n"
    "}\n";

static const char k_generation_config[] =
    "{\n"
    "  \"bos_token_id\": 151643,\n"
    "  \"pad_token_id\": 151643,\n"
    "  \"do_sample\": true,\n"
    "  \"eos_token_id\": [\n"
    "    151645,\n"
    "    151643\n"
    "  ],\n"
    "  \"top_k\": 20,\n"
    "  \"top_p\": 0.8,\n"
    "  \"repetition_penalty\": 1.0,\n"
    "  \"temperature\": 0.7,\n"
    "  \"transformers_version\": \"4.57.0.dev0\"\n"
    "}\n";
static const char k_preprocessor_config[] =
    "{\n"
    "  \"size\": {\n"
    "    \"longest_edge\": 16777216,\n"
    "    \"shortest_edge\": 65536\n"
    "  },\n"
    "  \"patch_size\": 16,\n"
    "  \"temporal_patch_size\": 2,\n"
    "  \"merge_size\": 2,\n"
    "  \"image_mean\": [\n"
    "    0.5,\n"
    "    0.5,\n"
    "    0.5\n"
    "  ],\n"
    "  \"image_std\": [\n"
    "    0.5,\n"
    "    0.5,\n"
    "    0.5\n"
    "  ],\n"
    "  \"processor_class\": \"Qwen3VLProcessor\",\n"
    "  \"image_processor_type\": \"Qwen2VLImageProcessorFast\"\n"
    "}\n";
static const char k_video_preprocessor_config[] =
    "{\n"
    "  \"size\": {\n"
    "    \"longest_edge\": 25165824,\n"
    "    \"shortest_edge\": 4096\n"
    "  },\n"
    "  \"patch_size\": 16,\n"
    "  \"temporal_patch_size\": 2,\n"
    "  \"merge_size\": 2,\n"
    "  \"image_mean\": [\n"
    "    0.5,\n"
    "    0.5,\n"
    "    0.5\n"
    "  ],\n"
    "  \"image_std\": [\n"
    "    0.5,\n"
    "    0.5,\n"
    "    0.5\n"
    "  ],\n"
    "  \"processor_class\": \"Qwen3VLProcessor\",\n"
    "  \"video_processor_type\": \"Qwen3VLVideoProcessor\"\n"
    "}\n";

/* ---- dimensions ------------------------------------------------------------------------- */

typedef struct gen_preset {
    const char *name;
    int hidden;
    int n_layers;
    int n_heads;
    int n_kv_heads;
    int head_dim;
    int intermediate;
    int v_depth;
    int v_hidden;
    int v_heads;
    int v_intermediate;
    int n_deepstack;
    int deepstack[3];
    int tie;
} gen_preset;

/* spec 1.5; tiny = the fixture tiny-qwen3vl */
static const gen_preset k_presets[] = {
    /* name, H, L, nh, nkv, hd, I, vision depth, D, heads, Iv, taps, deepstack, tied */
    {"tiny", 64, 3, 4, 2, 32, 192, 4, 64, 4, 128, 2, {1, 2, 0}, 1},
    {"2b", 2048, 28, 16, 8, 128, 6144, 24, 1024, 16, 4096, 3, {5, 11, 17}, 1},
    {"4b", 2560, 36, 32, 8, 128, 9728, 24, 1024, 16, 4096, 3, {5, 11, 17}, 1},
    {"8b", 4096, 36, 32, 8, 128, 12288, 27, 1152, 16, 4304, 3, {8, 16, 24}, 0},
};

typedef struct gen_dims {
    int hidden;
    int n_layers;
    int n_heads;
    int n_kv_heads;
    int head_dim;
    int intermediate;
    int vocab;
    int mrope[3];
    int v_depth;
    int v_hidden;
    int v_heads;
    int v_intermediate;
    int n_deepstack;
    int deepstack[GEN_MAX_DEEPSTACK];
    int tie;
    int old_prefixes;
    qvl_dtype dtype;
} gen_dims;

static int pick(int override, int preset) {
    return override != 0 ? override : preset;
}

/* Resolve preset + overrides into d and check consistency. QVL_E_INVAL with a message naming
 * the bad field. */
static qvl_status dims_resolve(const qvl_genmodel_params *p, gen_dims *d, char *err,
                               size_t err_len) {
    const char *name = p->preset ? p->preset : "tiny";
    const gen_preset *ps = NULL;
    for (size_t i = 0; i < sizeof k_presets / sizeof k_presets[0]; i++)
        if (strcmp(k_presets[i].name, name) == 0)
            ps = &k_presets[i];
    if (!ps) {
        qvl_errf(err, err_len, "genmodel: unknown preset \"%s\" (tiny, 2b, 4b, 8b)", name);
        return QVL_E_INVAL;
    }
    if (p->dtype != QVL_DT_BF16 && p->dtype != QVL_DT_F16 && p->dtype != QVL_DT_F32) {
        qvl_errf(err, err_len, "genmodel: dtype %s not supported (BF16, F16, F32)",
                 qvl_dtype_name(p->dtype));
        return QVL_E_INVAL;
    }
    memset(d, 0, sizeof *d);
    d->dtype = p->dtype;
    d->hidden = pick(p->hidden, ps->hidden);
    d->n_layers = pick(p->n_layers, ps->n_layers);
    d->n_heads = pick(p->n_heads, ps->n_heads);
    d->n_kv_heads = pick(p->n_kv_heads, ps->n_kv_heads);
    d->head_dim = pick(p->head_dim, ps->head_dim);
    d->intermediate = pick(p->intermediate, ps->intermediate);
    d->vocab = pick(p->vocab_size, 151936);
    d->v_depth = pick(p->vision_depth, ps->v_depth);
    d->v_hidden = pick(p->vision_hidden, ps->v_hidden);
    d->v_heads = pick(p->vision_heads, ps->v_heads);
    d->v_intermediate = pick(p->vision_intermediate, ps->v_intermediate);
    d->tie = p->tie_embeddings < 0 ? ps->tie : (p->tie_embeddings != 0);
    d->old_prefixes = p->old_prefixes != 0;

    const struct {
        const char *what;
        int v;
        int max;
    } chk[] = {
        {"hidden", d->hidden, GEN_DIM_MAX},
        {"n_layers", d->n_layers, 4096},
        {"n_heads", d->n_heads, 4096},
        {"n_kv_heads", d->n_kv_heads, 4096},
        {"head_dim", d->head_dim, 4096},
        {"intermediate", d->intermediate, GEN_DIM_MAX},
        {"vocab_size", d->vocab, GEN_VOCAB_MAX},
        {"vision_depth", d->v_depth, 4096},
        {"vision_hidden", d->v_hidden, GEN_DIM_MAX},
        {"vision_heads", d->v_heads, 4096},
        {"vision_intermediate", d->v_intermediate, GEN_DIM_MAX},
    };
    for (size_t i = 0; i < sizeof chk / sizeof chk[0]; i++) {
        if (chk[i].v < 1 || chk[i].v > chk[i].max) {
            qvl_errf(err, err_len, "genmodel: %s = %d out of range [1, %d]", chk[i].what,
                     chk[i].v, chk[i].max);
            return QVL_E_INVAL;
        }
    }
    if (d->n_heads % d->n_kv_heads != 0) {
        qvl_errf(err, err_len, "genmodel: n_heads %d is not a multiple of n_kv_heads %d",
                 d->n_heads, d->n_kv_heads);
        return QVL_E_INVAL;
    }
    if (d->head_dim % 2 != 0) {
        qvl_errf(err, err_len, "genmodel: head_dim %d must be even", d->head_dim);
        return QVL_E_INVAL;
    }
    if (d->v_hidden % d->v_heads != 0 || (d->v_hidden / d->v_heads) % 2 != 0) {
        qvl_errf(err, err_len,
                 "genmodel: vision_hidden %d must split into vision_heads %d heads of even size",
                 d->v_hidden, d->v_heads);
        return QVL_E_INVAL;
    }
    int half = d->head_dim / 2;
    if (p->mrope_section[0] || p->mrope_section[1] || p->mrope_section[2]) {
        for (int i = 0; i < 3; i++) {
            if (p->mrope_section[i] < 0) {
                qvl_errf(err, err_len, "genmodel: mrope_section[%d] = %d is negative", i,
                         p->mrope_section[i]);
                return QVL_E_INVAL;
            }
            d->mrope[i] = p->mrope_section[i];
        }
    } else { /* the releases' proportions: [24, 20, 20] for head_dim 128, [6, 5, 5] for 32 */
        d->mrope[1] = d->mrope[2] = half * 20 / 64;
        d->mrope[0] = half - 2 * d->mrope[1];
    }
    if (d->mrope[0] + d->mrope[1] + d->mrope[2] != half) {
        qvl_errf(err, err_len, "genmodel: mrope_section [%d, %d, %d] must sum to head_dim/2 = %d",
                 d->mrope[0], d->mrope[1], d->mrope[2], half);
        return QVL_E_INVAL;
    }
    if (p->n_deepstack < 0) {
        d->n_deepstack = 0;
    } else if (p->n_deepstack == 0 && d->v_depth == ps->v_depth) {
        d->n_deepstack = ps->n_deepstack;
        memcpy(d->deepstack, ps->deepstack, sizeof ps->deepstack);
    } else {
        int k_taps = p->n_deepstack ? p->n_deepstack : ps->n_deepstack;
        if (k_taps > GEN_MAX_DEEPSTACK || k_taps > d->v_depth) {
            qvl_errf(err, err_len, "genmodel: n_deepstack %d exceeds min(vision_depth %d, %d)",
                     k_taps, d->v_depth, GEN_MAX_DEEPSTACK);
            return QVL_E_INVAL;
        }
        d->n_deepstack = k_taps;
        for (int k = 0; k < k_taps; k++) /* strictly increasing inside [0, depth) */
            d->deepstack[k] = k_taps < d->v_depth ? (k + 1) * d->v_depth / (k_taps + 1) : k;
    }
    return QVL_OK;
}

/* ---- tensor plan ------------------------------------------------------------------------ */

typedef struct gen_tensor {
    char *name;
    int n_dims;
    int64_t shape[QVL_ST_MAX_DIMS];
    float mean;
    float std;
    uint64_t seed;
    uint64_t n_elem;
    uint64_t nbytes;
    int shard;
} gen_tensor;

typedef struct gen_plan {
    gen_dims d;
    gen_tensor *t;
    size_t n;
    size_t cap;
    uint64_t total_bytes;
    int n_shards;
} gen_plan;

static void plan_free(gen_plan *pl) {
    for (size_t i = 0; i < pl->n; i++)
        qvl_free(pl->t[i].name);
    qvl_free(pl->t);
    pl->t = NULL;
    pl->n = pl->cap = 0;
}

static uint64_t splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint64_t fnv1a(const char *a, const char *b) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (const char *s = a; *s; s++)
        h = (h ^ (unsigned char)*s) * 0x100000001b3ull;
    for (const char *s = b; *s; s++)
        h = (h ^ (unsigned char)*s) * 0x100000001b3ull;
    return h;
}

/* Append tensor `pfx` + `rest` with the given shape and init statistics; `canon` is the
 * new-layout prefix, which (with the seed) determines the values. */
static qvl_status plan_add(gen_plan *pl, uint64_t seed, const char *pfx, const char *canon,
                           const char *rest, int n_dims, const int64_t *shape, float mean,
                           float std) {
    if (pl->n == pl->cap) {
        size_t cap = pl->cap ? pl->cap * 2 : 256;
        gen_tensor *t = qvl_realloc(pl->t, cap * sizeof *t);
        if (!t)
            return QVL_E_NOMEM;
        pl->t = t;
        pl->cap = cap;
    }
    gen_tensor *t = &pl->t[pl->n];
    memset(t, 0, sizeof *t);
    size_t lp = strlen(pfx);
    size_t lr = strlen(rest);
    t->name = qvl_malloc(lp + lr + 1);
    if (!t->name)
        return QVL_E_NOMEM;
    memcpy(t->name, pfx, lp);
    memcpy(t->name + lp, rest, lr + 1);
    t->n_dims = n_dims;
    t->n_elem = 1;
    for (int i = 0; i < n_dims; i++) {
        t->shape[i] = shape[i];
        t->n_elem *= (uint64_t)shape[i]; /* dims are capped: no overflow */
    }
    t->nbytes = t->n_elem * (uint64_t)qvl_dtype_row_bytes(pl->d.dtype, 1);
    t->mean = mean;
    t->std = std;
    uint64_t x = seed ^ fnv1a(canon, rest);
    t->seed = splitmix64(&x);
    pl->n++;
    pl->total_bytes += t->nbytes;
    return QVL_OK;
}

static int tensor_cmp(const void *a, const void *b) {
    return strcmp(((const gen_tensor *)a)->name, ((const gen_tensor *)b)->name);
}

#define ADD(pfx, canon, n_dims, mean, std, ...)                                                   \
    do {                                                                                          \
        const int64_t shp_[] = {__VA_ARGS__};                                                     \
        st = plan_add(pl, p->seed, pfx, canon, rest, n_dims, shp_, mean, std);                    \
        if (st != QVL_OK)                                                                         \
            goto fail;                                                                            \
    } while (0)

/* Build the sorted, sharded tensor list of the model `p` describes (spec 2.3 / 2.4).
 * Init: matrices N(0, 1/fan_in), biases N(0, 0.02^2), norm weights 1 + N(0, 0.02^2), token
 * embeddings N(0, 1), position table N(0, 0.02^2). */
static qvl_status plan_build(const qvl_genmodel_params *p, gen_plan *pl, char *err,
                             size_t err_len) {
    memset(pl, 0, sizeof *pl);
    qvl_status st = dims_resolve(p, &pl->d, err, err_len);
    if (st != QVL_OK)
        return st;
    const gen_dims *d = &pl->d;
    const char *vc = "model.visual.";
    const char *tc = "model.language_model.";
    const char *vp = d->old_prefixes ? "visual." : vc;
    const char *tp = d->old_prefixes ? "model." : tc;
    const float bstd = 0.02f;
    int64_t D = d->v_hidden;
    int64_t D4 = 4 * D;
    int64_t O = d->hidden; /* out_hidden_size must equal the text hidden size */
    int64_t Iv = d->v_intermediate;
    int64_t H = d->hidden;
    int64_t qd = (int64_t)d->n_heads * d->head_dim;
    int64_t kvd = (int64_t)d->n_kv_heads * d->head_dim;
    int64_t I = d->intermediate;
    char rest[128];

    /* vision tower */
    snprintf(rest, sizeof rest, "patch_embed.proj.weight");
    ADD(vp, vc, 5, 0.0f, (float)(1.0 / sqrt(3.0 * 2 * 16 * 16)), D, 3, 2, 16, 16);
    snprintf(rest, sizeof rest, "patch_embed.proj.bias");
    ADD(vp, vc, 1, 0.0f, bstd, D);
    snprintf(rest, sizeof rest, "pos_embed.weight");
    ADD(vp, vc, 2, 0.0f, 0.02f, 2304, D);
    float sd = (float)(1.0 / sqrt((double)D));
    float siv = (float)(1.0 / sqrt((double)Iv));
    float s4d = (float)(1.0 / sqrt((double)D4));
    for (int b = 0; b < d->v_depth; b++) {
        static const char *const norms[] = {"norm1", "norm2"};
        for (int k = 0; k < 2; k++) {
            snprintf(rest, sizeof rest, "blocks.%d.%s.weight", b, norms[k]);
            ADD(vp, vc, 1, 1.0f, bstd, D);
            snprintf(rest, sizeof rest, "blocks.%d.%s.bias", b, norms[k]);
            ADD(vp, vc, 1, 0.0f, bstd, D);
        }
        snprintf(rest, sizeof rest, "blocks.%d.attn.qkv.weight", b);
        ADD(vp, vc, 2, 0.0f, sd, 3 * D, D);
        snprintf(rest, sizeof rest, "blocks.%d.attn.qkv.bias", b);
        ADD(vp, vc, 1, 0.0f, bstd, 3 * D);
        snprintf(rest, sizeof rest, "blocks.%d.attn.proj.weight", b);
        ADD(vp, vc, 2, 0.0f, sd, D, D);
        snprintf(rest, sizeof rest, "blocks.%d.attn.proj.bias", b);
        ADD(vp, vc, 1, 0.0f, bstd, D);
        snprintf(rest, sizeof rest, "blocks.%d.mlp.linear_fc1.weight", b);
        ADD(vp, vc, 2, 0.0f, sd, Iv, D);
        snprintf(rest, sizeof rest, "blocks.%d.mlp.linear_fc1.bias", b);
        ADD(vp, vc, 1, 0.0f, bstd, Iv);
        snprintf(rest, sizeof rest, "blocks.%d.mlp.linear_fc2.weight", b);
        ADD(vp, vc, 2, 0.0f, siv, D, Iv);
        snprintf(rest, sizeof rest, "blocks.%d.mlp.linear_fc2.bias", b);
        ADD(vp, vc, 1, 0.0f, bstd, D);
    }
    for (int k = -1; k < d->n_deepstack; k++) {
        char mp[64];
        int64_t norm_dim = k < 0 ? D : D4; /* merger norms before the 2x2 concat, DeepStack after */
        if (k < 0)
            snprintf(mp, sizeof mp, "merger.");
        else
            snprintf(mp, sizeof mp, "deepstack_merger_list.%d.", k);
        snprintf(rest, sizeof rest, "%snorm.weight", mp);
        ADD(vp, vc, 1, 1.0f, bstd, norm_dim);
        snprintf(rest, sizeof rest, "%snorm.bias", mp);
        ADD(vp, vc, 1, 0.0f, bstd, norm_dim);
        snprintf(rest, sizeof rest, "%slinear_fc1.weight", mp);
        ADD(vp, vc, 2, 0.0f, s4d, D4, D4);
        snprintf(rest, sizeof rest, "%slinear_fc1.bias", mp);
        ADD(vp, vc, 1, 0.0f, bstd, D4);
        snprintf(rest, sizeof rest, "%slinear_fc2.weight", mp);
        ADD(vp, vc, 2, 0.0f, s4d, O, D4);
        snprintf(rest, sizeof rest, "%slinear_fc2.bias", mp);
        ADD(vp, vc, 1, 0.0f, bstd, O);
    }

    /* text decoder */
    float sh = (float)(1.0 / sqrt((double)H));
    float sq = (float)(1.0 / sqrt((double)qd));
    float si = (float)(1.0 / sqrt((double)I));
    snprintf(rest, sizeof rest, "embed_tokens.weight");
    ADD(tp, tc, 2, 0.0f, p->embed_std > 0 ? p->embed_std : 1.0f, d->vocab, H);
    for (int l = 0; l < d->n_layers; l++) {
        snprintf(rest, sizeof rest, "layers.%d.input_layernorm.weight", l);
        ADD(tp, tc, 1, 1.0f, bstd, H);
        snprintf(rest, sizeof rest, "layers.%d.self_attn.q_proj.weight", l);
        ADD(tp, tc, 2, 0.0f, sh, qd, H);
        snprintf(rest, sizeof rest, "layers.%d.self_attn.k_proj.weight", l);
        ADD(tp, tc, 2, 0.0f, sh, kvd, H);
        snprintf(rest, sizeof rest, "layers.%d.self_attn.v_proj.weight", l);
        ADD(tp, tc, 2, 0.0f, sh, kvd, H);
        snprintf(rest, sizeof rest, "layers.%d.self_attn.o_proj.weight", l);
        ADD(tp, tc, 2, 0.0f, sq, H, qd);
        snprintf(rest, sizeof rest, "layers.%d.self_attn.q_norm.weight", l);
        ADD(tp, tc, 1, 1.0f, bstd, d->head_dim);
        snprintf(rest, sizeof rest, "layers.%d.self_attn.k_norm.weight", l);
        ADD(tp, tc, 1, 1.0f, bstd, d->head_dim);
        snprintf(rest, sizeof rest, "layers.%d.post_attention_layernorm.weight", l);
        ADD(tp, tc, 1, 1.0f, bstd, H);
        snprintf(rest, sizeof rest, "layers.%d.mlp.gate_proj.weight", l);
        ADD(tp, tc, 2, 0.0f, sh, I, H);
        snprintf(rest, sizeof rest, "layers.%d.mlp.up_proj.weight", l);
        ADD(tp, tc, 2, 0.0f, sh, I, H);
        snprintf(rest, sizeof rest, "layers.%d.mlp.down_proj.weight", l);
        ADD(tp, tc, 2, 0.0f, si, H, I);
    }
    snprintf(rest, sizeof rest, "norm.weight");
    ADD(tp, tc, 1, 1.0f, bstd, H);
    if (!d->tie) {
        snprintf(rest, sizeof rest, "lm_head.weight");
        ADD("", "", 2, 0.0f, sh, d->vocab, H);
    }

    qsort(pl->t, pl->n, sizeof *pl->t, tensor_cmp);
    return QVL_OK;

fail:
    plan_free(pl);
    if (st == QVL_E_NOMEM)
        qvl_errf(err, err_len, "genmodel: out of memory planning tensors");
    return st;
}
#undef ADD

/* Assign tensors (in name order) to shards of at most shard_bytes tensor bytes; a tensor
 * bigger than that gets a shard of its own. */
static void plan_shard(gen_plan *pl, uint64_t shard_bytes) {
    int shard = 0;
    uint64_t used = 0;
    for (size_t i = 0; i < pl->n; i++) {
        if (shard_bytes && used > 0 && used + pl->t[i].nbytes > shard_bytes) {
            shard++;
            used = 0;
        }
        pl->t[i].shard = shard;
        used += pl->t[i].nbytes;
    }
    pl->n_shards = pl->n ? shard + 1 : 0;
}

qvl_status qvl_genmodel_plan_bytes(const qvl_genmodel_params *p, uint64_t *total_bytes,
                                   size_t *n_tensors, char *err, size_t err_len) {
    if (total_bytes)
        *total_bytes = 0;
    if (n_tensors)
        *n_tensors = 0;
    if (!p) {
        qvl_errf(err, err_len, "genmodel: NULL params");
        return QVL_E_INVAL;
    }
    gen_plan pl;
    qvl_status st = plan_build(p, &pl, err, err_len);
    if (st != QVL_OK)
        return st;
    if (total_bytes)
        *total_bytes = pl.total_bytes;
    if (n_tensors)
        *n_tensors = pl.n;
    plan_free(&pl);
    return QVL_OK;
}

void qvl_genmodel_default_params(qvl_genmodel_params *p) {
    memset(p, 0, sizeof *p);
    p->preset = "tiny";
    p->dtype = QVL_DT_BF16;
    p->tie_embeddings = -1;
}

/* ---- random values ---------------------------------------------------------------------- */

#define GEN_LANES 16 /* independent xoshiro256** streams per tensor, interleaved */

typedef struct gen_rng {
    uint64_t s[4][GEN_LANES];
} gen_rng;

static void rng_seed(gen_rng *r, uint64_t seed) {
    for (int l = 0; l < GEN_LANES; l++)
        for (int i = 0; i < 4; i++)
            r->s[i][l] = splitmix64(&seed);
}

/* One block of GEN_LANES Irwin-Hall draws: the sum of the four 16-bit parts of a xoshiro256**
 * output, minus its mean 131070. Written lane-parallel (multiplies by 5 and 9 as shifts) so the
 * compiler vectorises it with baseline SSE2. */
static inline void rng_block(gen_rng *r, int32_t *out) {
    for (int l = 0; l < GEN_LANES; l++) {
        uint64_t s0 = r->s[0][l];
        uint64_t s1 = r->s[1][l];
        uint64_t s2 = r->s[2][l];
        uint64_t s3 = r->s[3][l];
        uint64_t x5 = (s1 << 2) + s1;
        uint64_t rot = (x5 << 7) | (x5 >> 57);
        uint64_t x = (rot << 3) + rot;
        uint64_t t = s1 << 17;
        s2 ^= s0;
        s3 ^= s1;
        s1 ^= s2;
        s0 ^= s3;
        s2 ^= t;
        s3 = (s3 << 45) | (s3 >> 19);
        r->s[0][l] = s0;
        r->s[1][l] = s1;
        r->s[2][l] = s2;
        r->s[3][l] = s3;
        uint64_t pair = (x & 0x0000ffff0000ffffull) + ((x >> 16) & 0x0000ffff0000ffffull);
        out[l] = (int32_t)((pair & 0xffffffffu) + (pair >> 32)) - 131070;
    }
}

/* Fill n elements of dtype dt with mean + std * z, z the standardised Irwin-Hall(4) draw
 * (mean 0, variance 1, |z| <= 3.46). Element i comes from lane i % GEN_LANES, so the values of
 * a tensor do not depend on how it is cut into calls as long as every call but the last
 * covers a multiple of GEN_LANES elements. */
static void fill_values(gen_rng *r, float mean, float std, qvl_dtype dt, void *out, size_t n) {
    /* the sum of four uniform 16-bit integers has variance 4 (2^32 - 1) / 12 */
    const float k = (float)(std / sqrt(4294967295.0 / 3.0));
    int32_t z[GEN_LANES];
    for (size_t i = 0; i < n; i += GEN_LANES) {
        rng_block(r, z);
        size_t m = n - i < GEN_LANES ? n - i : GEN_LANES;
        if (dt == QVL_DT_BF16) {
            uint16_t h[GEN_LANES];
            for (int l = 0; l < GEN_LANES; l++) { /* finite values: plain round to nearest even */
                float v = mean + (float)z[l] * k;
                uint32_t u;
                memcpy(&u, &v, sizeof u);
                h[l] = (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
            }
            memcpy((uint16_t *)out + i, h, m * sizeof h[0]);
        } else if (dt == QVL_DT_F16) {
            for (size_t l = 0; l < m; l++)
                ((uint16_t *)out)[i + l] = qvl_f32_to_f16(mean + (float)z[l] * k);
        } else {
            for (size_t l = 0; l < m; l++)
                ((float *)out)[i + l] = mean + (float)z[l] * k;
        }
    }
}

/* ---- JSON printing like Python's json.dumps(obj, indent=2, ensure_ascii=False) ---------- */

typedef struct gen_buf {
    char *p;
    size_t n;
    size_t cap;
    int oom;
} gen_buf;

static void buf_put(gen_buf *b, const char *s, size_t len) {
    if (b->oom)
        return;
    if (b->n + len + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->n + len + 1)
            cap *= 2;
        char *q = qvl_realloc(b->p, cap);
        if (!q) {
            b->oom = 1;
            return;
        }
        b->p = q;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, len);
    b->n += len;
    b->p[b->n] = '\0';
}

static void buf_puts(gen_buf *b, const char *s) {
    buf_put(b, s, strlen(s));
}

static void buf_indent(gen_buf *b, int depth) {
    for (int i = 0; i < depth; i++)
        buf_put(b, "  ", 2);
}

static void json_put_string(gen_buf *b, const char *s) {
    buf_put(b, "\"", 1);
    for (const unsigned char *c = (const unsigned char *)s; *c; c++) {
        char esc[8];
        switch (*c) {
        case '"': buf_put(b, "\\\"", 2); break;
        case '\\': buf_put(b, "\\\\", 2); break;
        case '\n': buf_put(b, "\\n", 2); break;
        case '\r': buf_put(b, "\\r", 2); break;
        case '\t': buf_put(b, "\\t", 2); break;
        case '\b': buf_put(b, "\\b", 2); break;
        case '\f': buf_put(b, "\\f", 2); break;
        default:
            if (*c < 0x20) {
                snprintf(esc, sizeof esc, "\\u%04x", *c);
                buf_puts(b, esc);
            } else {
                buf_put(b, (const char *)c, 1);
            }
        }
    }
    buf_put(b, "\"", 1);
}

static void json_put_number(gen_buf *b, double v) {
    char tmp[40];
    if (!isfinite(v)) {
        snprintf(tmp, sizeof tmp, "%s", isnan(v) ? "NaN" : v > 0 ? "Infinity" : "-Infinity");
    } else if (v == floor(v) && fabs(v) < 1e15) {
        snprintf(tmp, sizeof tmp, "%lld", (long long)v);
    } else { /* shortest form that reads back exactly */
        for (int prec = 15; prec <= 17; prec++) {
            snprintf(tmp, sizeof tmp, "%.*g", prec, v);
            if (strtod(tmp, NULL) == v)
                break;
        }
    }
    buf_puts(b, tmp);
}

static void json_put(gen_buf *b, const cJSON *it, int depth) {
    if (cJSON_IsNull(it)) {
        buf_puts(b, "null");
    } else if (cJSON_IsFalse(it)) {
        buf_puts(b, "false");
    } else if (cJSON_IsTrue(it)) {
        buf_puts(b, "true");
    } else if (cJSON_IsNumber(it)) {
        json_put_number(b, it->valuedouble);
    } else if (cJSON_IsString(it)) {
        json_put_string(b, it->valuestring);
    } else if (cJSON_IsRaw(it)) {
        buf_puts(b, it->valuestring);
    } else if (cJSON_IsArray(it) || cJSON_IsObject(it)) {
        int obj = cJSON_IsObject(it);
        if (!it->child) {
            buf_puts(b, obj ? "{}" : "[]");
            return;
        }
        buf_puts(b, obj ? "{\n" : "[\n");
        for (const cJSON *c = it->child; c; c = c->next) {
            buf_indent(b, depth + 1);
            if (obj) {
                json_put_string(b, c->string ? c->string : "");
                buf_puts(b, ": ");
            }
            json_put(b, c, depth + 1);
            buf_puts(b, c->next ? ",\n" : "\n");
        }
        buf_indent(b, depth);
        buf_puts(b, obj ? "}" : "]");
    } else {
        buf_puts(b, "null");
    }
}

/* ---- files ------------------------------------------------------------------------------ */

/* mkdir -p. QVL_E_IO naming the path on failure. */
static qvl_status make_dirs(const char *path, char *err, size_t err_len) {
    if (qvl_mkdir_p(path))
        return QVL_OK;
    qvl_errf(err, err_len, "genmodel: cannot create directory %s: %s", path, strerror(errno));
    return errno == ENOMEM ? QVL_E_NOMEM : QVL_E_IO;
}

/* Write `len` bytes to dir/name through a temporary file renamed into place. */
static qvl_status write_file(const char *dir, const char *name, const void *data, size_t len,
                             char *err, size_t err_len) {
    char *path = qvl_path_join(dir, name);
    size_t plen = path ? strlen(path) : 0;
    char *tmp = path ? qvl_malloc(plen + 5) : NULL;
    if (!tmp) {
        qvl_free(path);
        qvl_errf(err, err_len, "genmodel: out of memory");
        return QVL_E_NOMEM;
    }
    memcpy(tmp, path, plen);
    memcpy(tmp + plen, ".tmp", 5);
    qvl_status st = QVL_OK;
    FILE *f = fopen(tmp, "wb");
    if (!f) {
        qvl_errf(err, err_len, "genmodel: cannot create %s: %s", tmp, strerror(errno));
        st = QVL_E_IO;
        goto out;
    }
    int bad = len && fwrite(data, 1, len, f) != len;
    if (fclose(f) != 0)
        bad = 1;
    if (bad || rename(tmp, path) != 0) {
        qvl_errf(err, err_len, "genmodel: cannot write %s: %s", path, strerror(errno));
        remove(tmp);
        st = QVL_E_IO;
    }
out:
    qvl_free(tmp);
    qvl_free(path);
    return st;
}

static qvl_status write_json(const char *dir, const char *name, const cJSON *root, char *err,
                             size_t err_len) {
    gen_buf b = {0};
    json_put(&b, root, 0);
    buf_put(&b, "\n", 1);
    if (b.oom) {
        qvl_free(b.p);
        qvl_errf(err, err_len, "genmodel: out of memory printing %s", name);
        return QVL_E_NOMEM;
    }
    qvl_status st = write_file(dir, name, b.p, b.n, err, err_len);
    qvl_free(b.p);
    return st;
}

/* Copy src (a file) to dir/name, streaming, through dir/name.tmp renamed into place (so src may
 * be dir/name itself). */
static qvl_status copy_file(const char *src, const char *dir, const char *name, char *err,
                            size_t err_len) {
    char *dst = qvl_path_join(dir, name);
    size_t dlen = dst ? strlen(dst) : 0;
    char *tmp = dst ? qvl_malloc(dlen + 5) : NULL;
    char *buf = qvl_malloc(GEN_CHUNK_BYTES);
    qvl_status st = QVL_OK;
    FILE *in = NULL;
    FILE *out = NULL;
    if (!tmp || !buf) {
        qvl_errf(err, err_len, "genmodel: out of memory");
        st = QVL_E_NOMEM;
        goto done;
    }
    memcpy(tmp, dst, dlen);
    memcpy(tmp + dlen, ".tmp", 5);
    in = fopen(src, "rb");
    if (!in) {
        qvl_errf(err, err_len, "genmodel: cannot open %s: %s", src, strerror(errno));
        st = QVL_E_IO;
        goto done;
    }
    out = fopen(tmp, "wb");
    if (!out) {
        qvl_errf(err, err_len, "genmodel: cannot create %s: %s", tmp, strerror(errno));
        st = QVL_E_IO;
        goto done;
    }
    size_t n;
    while ((n = fread(buf, 1, GEN_CHUNK_BYTES, in)) > 0) {
        if (fwrite(buf, 1, n, out) != n) {
            qvl_errf(err, err_len, "genmodel: cannot write %s: %s", tmp, strerror(errno));
            st = QVL_E_IO;
            goto done;
        }
    }
    if (ferror(in)) {
        qvl_errf(err, err_len, "genmodel: cannot read %s", src);
        st = QVL_E_IO;
    }
done:
    if (in)
        fclose(in);
    if (out) {
        if (fclose(out) != 0 && st == QVL_OK) {
            qvl_errf(err, err_len, "genmodel: cannot write %s: %s", tmp, strerror(errno));
            st = QVL_E_IO;
        }
        if (st == QVL_OK && rename(tmp, dst) != 0) {
            qvl_errf(err, err_len, "genmodel: cannot rename %s: %s", tmp, strerror(errno));
            st = QVL_E_IO;
        }
        if (st != QVL_OK)
            remove(tmp);
    }
    qvl_free(buf);
    qvl_free(tmp);
    qvl_free(dst);
    return st;
}

/* ---- weights ---------------------------------------------------------------------------- */

static void shard_name(char *buf, size_t len, const gen_plan *pl, int shard) {
    if (pl->n_shards <= 1)
        snprintf(buf, len, "model.safetensors");
    else
        snprintf(buf, len, "model-%05d-of-%05d.safetensors", shard + 1, pl->n_shards);
}

/* Write tensors [i0, i1) of the plan to dir/fname (through fname.tmp), values streamed. */
static qvl_status write_shard(const char *dir, const char *fname, const gen_plan *pl, size_t i0,
                              size_t i1, void *chunk, char *err, size_t err_len) {
    size_t n = i1 - i0;
    const char **names = qvl_calloc(n, sizeof *names);
    qvl_dtype *dtypes = qvl_calloc(n, sizeof *dtypes);
    int *n_dims = qvl_calloc(n, sizeof *n_dims);
    int64_t(*shapes)[QVL_ST_MAX_DIMS] = qvl_calloc(n, sizeof *shapes);
    char *path = qvl_path_join(dir, fname);
    char *tmp = path ? qvl_malloc(strlen(path) + 5) : NULL;
    qvl_st_writer *w = NULL;
    qvl_status st = QVL_OK;
    if (!names || !dtypes || !n_dims || !shapes || !tmp) {
        qvl_errf(err, err_len, "genmodel: out of memory");
        st = QVL_E_NOMEM;
        goto done;
    }
    snprintf(tmp, strlen(path) + 5, "%s.tmp", path);
    for (size_t i = 0; i < n; i++) {
        const gen_tensor *t = &pl->t[i0 + i];
        names[i] = t->name;
        dtypes[i] = pl->d.dtype;
        n_dims[i] = t->n_dims;
        memcpy(shapes[i], t->shape, sizeof shapes[i]);
    }
    st = qvl_st_writer_open(tmp, n, names, dtypes, n_dims,
                            (const int64_t(*)[QVL_ST_MAX_DIMS])shapes, "pt", &w, err, err_len);
    if (st != QVL_OK)
        goto done;
    size_t esz = qvl_dtype_row_bytes(pl->d.dtype, 1);
    size_t chunk_elems = GEN_CHUNK_BYTES / esz;
    for (size_t i = i0; i < i1 && st == QVL_OK; i++) {
        const gen_tensor *t = &pl->t[i];
        gen_rng r;
        rng_seed(&r, t->seed);
        for (uint64_t done = 0; done < t->n_elem && st == QVL_OK;) {
            size_t k = t->n_elem - done < chunk_elems ? (size_t)(t->n_elem - done) : chunk_elems;
            fill_values(&r, t->mean, t->std, pl->d.dtype, chunk, k);
            st = qvl_st_writer_write(w, chunk, k * esz);
            done += k;
        }
    }
    qvl_status cst = qvl_st_writer_close(w, err, err_len); /* reports the first write error */
    if (st == QVL_OK)
        st = cst;
    if (st != QVL_OK) {
        if (cst == QVL_OK)
            qvl_errf(err, err_len, "genmodel: writing %s failed (%s)", tmp, qvl_status_str(st));
        remove(tmp);
        goto done;
    }
    if (rename(tmp, path) != 0) {
        qvl_errf(err, err_len, "genmodel: cannot rename %s: %s", tmp, strerror(errno));
        remove(tmp);
        st = QVL_E_IO;
    }
done:
    qvl_free(names);
    qvl_free(dtypes);
    qvl_free(n_dims);
    qvl_free(shapes);
    qvl_free(path);
    qvl_free(tmp);
    return st;
}

static qvl_status write_weights(const char *dir, const gen_plan *pl, char *err, size_t err_len) {
    void *chunk = qvl_malloc(GEN_CHUNK_BYTES);
    const char **names = NULL;
    char **files = NULL;
    char *index = NULL;
    qvl_status st = QVL_OK;
    char fname[64];
    if (!chunk) {
        qvl_errf(err, err_len, "genmodel: out of memory");
        return QVL_E_NOMEM;
    }
    size_t i0 = 0;
    for (int s = 0; s < pl->n_shards && st == QVL_OK; s++) {
        size_t i1 = i0;
        while (i1 < pl->n && pl->t[i1].shard == s)
            i1++;
        shard_name(fname, sizeof fname, pl, s);
        st = write_shard(dir, fname, pl, i0, i1, chunk, err, err_len);
        i0 = i1;
    }
    if (st != QVL_OK || pl->n_shards <= 1)
        goto done;
    names = qvl_calloc(pl->n, sizeof *names);
    files = qvl_calloc((size_t)pl->n_shards, sizeof *files);
    index = qvl_path_join(dir, "model.safetensors.index.json");
    if (!names || !files || !index) {
        st = QVL_E_NOMEM;
        goto nomem;
    }
    for (int s = 0; s < pl->n_shards; s++) {
        shard_name(fname, sizeof fname, pl, s);
        if (!(files[s] = qvl_strdup(fname))) {
            st = QVL_E_NOMEM;
            goto nomem;
        }
    }
    const char **tfiles = qvl_calloc(pl->n, sizeof *tfiles);
    if (!tfiles) {
        st = QVL_E_NOMEM;
        goto nomem;
    }
    for (size_t i = 0; i < pl->n; i++) {
        names[i] = pl->t[i].name;
        tfiles[i] = files[pl->t[i].shard];
    }
    st = qvl_st_write_index(index, pl->n, names, tfiles, pl->total_bytes, err, err_len);
    qvl_free(tfiles);
nomem:
    if (st == QVL_E_NOMEM)
        qvl_errf(err, err_len, "genmodel: out of memory writing the shard index");
done:
    if (files)
        for (int s = 0; s < pl->n_shards; s++)
            qvl_free(files[s]);
    qvl_free(files);
    qvl_free(names);
    qvl_free(index);
    qvl_free(chunk);
    return st;
}

/* ---- tokenizer -------------------------------------------------------------------------- */

/* 1 when dir holds tokenizer.json and tokenizer_config.json, 0 when not, -1 out of memory. */
static int tokenizer_dir_ok(const char *dir) {
    char *a = qvl_path_join(dir, "tokenizer.json");
    char *b = qvl_path_join(dir, "tokenizer_config.json");
    int ok = a && b ? qvl_file_exists(a) && qvl_file_exists(b) : -1;
    qvl_free(a);
    qvl_free(b);
    return ok;
}

/* First directory holding tokenizer.json and tokenizer_config.json among p->tokenizer_dir,
 * $QVL_TOKENIZER_DIR and QVL_DEFAULT_TOKENIZER_DIR; NULL with QVL_E_IO otherwise. */
static qvl_status find_tokenizer(const qvl_genmodel_params *p, const char **dir, char *err,
                                 size_t err_len) {
    const char *env = getenv("QVL_TOKENIZER_DIR");
    const char *cand[3] = {NULL, NULL, NULL};
    *dir = NULL;
    if (p->tokenizer_dir) {
        cand[0] = p->tokenizer_dir; /* an explicit directory must do */
    } else {
        cand[0] = env && *env ? env : NULL;
#ifdef QVL_DEFAULT_TOKENIZER_DIR
        cand[1] = QVL_DEFAULT_TOKENIZER_DIR;
#endif
    }
    for (int i = 0; i < 3; i++) {
        if (!cand[i])
            continue;
        int ok = tokenizer_dir_ok(cand[i]);
        if (ok < 0) {
            qvl_errf(err, err_len, "genmodel: out of memory");
            return QVL_E_NOMEM;
        }
        if (ok) {
            *dir = cand[i];
            return QVL_OK;
        }
    }
    if (p->tokenizer_dir)
        qvl_errf(err, err_len,
                 "genmodel: tokenizer directory %s lacks tokenizer.json or "
                 "tokenizer_config.json",
                 p->tokenizer_dir);
    else
        qvl_errf(err, err_len,
                 "genmodel: a model needs the Qwen3 tokenizer (tokenizer.json and "
                 "tokenizer_config.json): pass a tokenizer directory or set "
                 "QVL_TOKENIZER_DIR%s%s%s",
                 cand[0] ? " (not found in " : "", cand[0] ? cand[0] : "", cand[0] ? ")" : "");
    return QVL_E_IO;
}

/* tokenizer_config.json of a VL checkpoint: the source's file with the VL chat template,
 * model_max_length 262144 and processor_class "Qwen3VLProcessor"; copied verbatim when it
 * already says so. */
static qvl_status write_tokenizer_config(const char *src_dir, const char *dir, const char *tmpl,
                                         char *err, size_t err_len) {
    char *src = qvl_path_join(src_dir, "tokenizer_config.json");
    char *text = NULL;
    size_t len = 0;
    cJSON *root = NULL;
    qvl_status st;
    if (!src) {
        qvl_errf(err, err_len, "genmodel: out of memory");
        return QVL_E_NOMEM;
    }
    st = qvl_read_file(src, 64u << 20, &text, &len, err, err_len);
    if (st != QVL_OK)
        goto done;
    qvl_status pst = QVL_OK;
    root = qvl_json_parse(text, len, NULL, &pst, NULL);
    if (!root && pst == QVL_E_NOMEM) {
        qvl_errf(err, err_len, "genmodel: out of memory parsing %s", src);
        st = QVL_E_NOMEM;
        goto done;
    }
    if (!cJSON_IsObject(root)) {
        qvl_errf(err, err_len, "genmodel: %s is not a JSON object", src);
        st = QVL_E_FORMAT;
        goto done;
    }
    const cJSON *ct = cJSON_GetObjectItemCaseSensitive(root, "chat_template");
    const cJSON *ml = cJSON_GetObjectItemCaseSensitive(root, "model_max_length");
    const cJSON *pc = cJSON_GetObjectItemCaseSensitive(root, "processor_class");
    if (cJSON_IsString(ct) && strcmp(ct->valuestring, tmpl) == 0 && cJSON_IsNumber(ml) &&
        ml->valuedouble == 262144.0 && cJSON_IsString(pc) &&
        strcmp(pc->valuestring, "Qwen3VLProcessor") == 0) {
        st = write_file(dir, "tokenizer_config.json", text, len, err, err_len);
        goto done;
    }
    cJSON *nct = cJSON_CreateString(tmpl);
    cJSON *nml = cJSON_CreateNumber(262144);
    cJSON *npc = cJSON_CreateString("Qwen3VLProcessor");
    int ok = nct && nml && npc;
    const struct {
        const char *key;
        cJSON *v;
    } set[] = {{"chat_template", nct}, {"model_max_length", nml}, {"processor_class", npc}};
    for (int i = 0; i < 3; i++) {
        if (!set[i].v)
            continue;
        if (!ok) {
            cJSON_Delete(set[i].v);
            continue;
        }
        if (cJSON_GetObjectItemCaseSensitive(root, set[i].key))
            ok = cJSON_ReplaceItemInObjectCaseSensitive(root, set[i].key, set[i].v);
        else
            ok = cJSON_AddItemToObject(root, set[i].key, set[i].v);
        if (!ok)
            cJSON_Delete(set[i].v);
    }
    if (!ok) {
        qvl_errf(err, err_len, "genmodel: out of memory editing tokenizer_config.json");
        st = QVL_E_NOMEM;
        goto done;
    }
    st = write_json(dir, "tokenizer_config.json", root, err, err_len);
done:
    cJSON_Delete(root);
    qvl_free(text);
    qvl_free(src);
    return st;
}

/* ---- config.json ------------------------------------------------------------------------ */

static const char *dtype_torch_name(qvl_dtype t) {
    return t == QVL_DT_BF16 ? "bfloat16" : t == QVL_DT_F16 ? "float16" : "float32";
}

/* config.json in the transformers 4.57 layout with the fixture's keys (sorted, as HF saves). */
static cJSON *config_build(const gen_dims *d) {
    cJSON *root = cJSON_CreateObject();
    cJSON *tc = cJSON_CreateObject();
    cJSON *vc = cJSON_CreateObject();
    cJSON *rs = cJSON_CreateObject();
    cJSON *arch = cJSON_CreateArray();
    cJSON *sec = cJSON_CreateIntArray(d->mrope, 3);
    cJSON *ds = cJSON_CreateIntArray(d->deepstack, d->n_deepstack);
    if (!root || !tc || !vc || !rs || !arch || !sec || !ds) {
        cJSON_Delete(root);
        cJSON_Delete(tc);
        cJSON_Delete(vc);
        cJSON_Delete(rs);
        cJSON_Delete(arch);
        cJSON_Delete(sec);
        cJSON_Delete(ds);
        return NULL;
    }
    int ok = 1;
#define ON(o, k, v) ok &= cJSON_AddNumberToObject(o, k, v) != NULL
#define OB(o, k, v) ok &= cJSON_AddBoolToObject(o, k, v) != NULL
#define OS(o, k, v) ok &= cJSON_AddStringToObject(o, k, v) != NULL
#define OR(o, k, v) ok &= cJSON_AddRawToObject(o, k, v) != NULL
#define OI(o, k, v) ok &= cJSON_AddItemToObject(o, k, v)
    ok &= cJSON_AddItemToArray(arch, cJSON_CreateString("Qwen3VLForConditionalGeneration"));
    OI(root, "architectures", arch);
    ON(root, "image_token_id", 151655);
    OS(root, "model_type", "qwen3_vl");
    OI(root, "text_config", tc);
    OB(tc, "attention_bias", 0);
    OR(tc, "attention_dropout", "0.0");
    ON(tc, "bos_token_id", 151643);
    OS(tc, "dtype", dtype_torch_name(d->dtype));
    ON(tc, "eos_token_id", 151645);
    ON(tc, "head_dim", d->head_dim);
    OS(tc, "hidden_act", "silu");
    ON(tc, "hidden_size", d->hidden);
    OR(tc, "initializer_range", "0.02");
    ON(tc, "intermediate_size", d->intermediate);
    ON(tc, "max_position_embeddings", 262144);
    OS(tc, "model_type", "qwen3_vl_text");
    ON(tc, "num_attention_heads", d->n_heads);
    ON(tc, "num_hidden_layers", d->n_layers);
    ON(tc, "num_key_value_heads", d->n_kv_heads);
    OR(tc, "rms_norm_eps", "1e-06");
    OI(tc, "rope_scaling", rs);
    OB(rs, "mrope_interleaved", 1);
    OI(rs, "mrope_section", sec);
    OS(rs, "rope_type", "default");
    ON(tc, "rope_theta", 5000000);
    OB(tc, "tie_word_embeddings", d->tie);
    OB(tc, "use_cache", 1);
    ON(tc, "vocab_size", d->vocab);
    OB(root, "tie_word_embeddings", d->tie);
    OS(root, "transformers_version", "4.57.0.dev0");
    ON(root, "video_token_id", 151656);
    OI(root, "vision_config", vc);
    OI(vc, "deepstack_visual_indexes", ds);
    ON(vc, "depth", d->v_depth);
    OS(vc, "hidden_act", "gelu_pytorch_tanh");
    ON(vc, "hidden_size", d->v_hidden);
    ON(vc, "in_channels", 3);
    OR(vc, "initializer_range", "0.02");
    ON(vc, "intermediate_size", d->v_intermediate);
    OS(vc, "model_type", "qwen3_vl");
    ON(vc, "num_heads", d->v_heads);
    ON(vc, "num_position_embeddings", 2304);
    ON(vc, "out_hidden_size", d->hidden);
    ON(vc, "patch_size", 16);
    ON(vc, "spatial_merge_size", 2);
    ON(vc, "temporal_patch_size", 2);
    ON(root, "vision_end_token_id", 151653);
    ON(root, "vision_start_token_id", 151652);
#undef ON
#undef OB
#undef OS
#undef OR
#undef OI
    /* the containers were attached first, so on failure deleting root frees them all (an item
     * whose attachment failed was only a scalar or a container that root owns) */
    if (!ok) {
        cJSON_Delete(root);
        return NULL;
    }
    return root;
}

/* ---- entry point ------------------------------------------------------------------------ */

static qvl_status remove_if_exists(const char *dir, const char *name, char *err, size_t err_len) {
    char *path = qvl_path_join(dir, name);
    if (!path) {
        qvl_errf(err, err_len, "genmodel: out of memory");
        return QVL_E_NOMEM;
    }
    qvl_status st = QVL_OK;
    if (remove(path) != 0 && errno != ENOENT) {
        qvl_errf(err, err_len, "genmodel: cannot remove %s: %s", path, strerror(errno));
        st = QVL_E_IO;
    }
    qvl_free(path);
    return st;
}

qvl_status qvl_genmodel_write(const char *out_dir, const qvl_genmodel_params *p, char *err,
                              size_t err_len) {
    if (!out_dir || !*out_dir || !p) {
        qvl_errf(err, err_len, "genmodel: NULL output directory or params");
        return QVL_E_INVAL;
    }
    gen_plan pl;
    qvl_status st = plan_build(p, &pl, err, err_len);
    if (st != QVL_OK)
        return st;
    plan_shard(&pl, p->shard_bytes);
    const char *tok_dir = NULL;
    cJSON *tmpl_root = NULL;
    cJSON *cfg = NULL;
    st = find_tokenizer(p, &tok_dir, err, err_len);
    if (st != QVL_OK)
        goto done;
    st = make_dirs(out_dir, err, err_len);
    if (st != QVL_OK)
        goto done;
    /* no config.json until everything else is complete; no stale weight layout either */
    st = remove_if_exists(out_dir, "config.json", err, err_len);
    if (st == QVL_OK)
        st = remove_if_exists(out_dir, pl.n_shards > 1 ? "model.safetensors"
                                                       : "model.safetensors.index.json",
                              err, err_len);
    if (st != QVL_OK)
        goto done;

    tmpl_root = cJSON_Parse(k_chat_template_json);
    const cJSON *tmpl = cJSON_GetObjectItemCaseSensitive(tmpl_root, "chat_template");
    if (!cJSON_IsString(tmpl)) { /* the constant is valid JSON: only allocation can fail */
        qvl_errf(err, err_len, "genmodel: out of memory parsing the chat template");
        st = QVL_E_NOMEM;
        goto done;
    }
    char *tok_src = qvl_path_join(tok_dir, "tokenizer.json");
    if (!tok_src) {
        qvl_errf(err, err_len, "genmodel: out of memory");
        st = QVL_E_NOMEM;
        goto done;
    }
    st = copy_file(tok_src, out_dir, "tokenizer.json", err, err_len);
    qvl_free(tok_src);
    if (st == QVL_OK)
        st = write_tokenizer_config(tok_dir, out_dir, tmpl->valuestring, err, err_len);
    const struct {
        const char *name;
        const char *text;
    } side[] = {
        {"chat_template.json", k_chat_template_json},
        {"generation_config.json", k_generation_config},
        {"preprocessor_config.json", k_preprocessor_config},
        {"video_preprocessor_config.json", k_video_preprocessor_config},
    };
    for (size_t i = 0; i < sizeof side / sizeof side[0] && st == QVL_OK; i++)
        st = write_file(out_dir, side[i].name, side[i].text, strlen(side[i].text), err, err_len);
    if (st != QVL_OK)
        goto done;
    st = write_weights(out_dir, &pl, err, err_len);
    if (st != QVL_OK)
        goto done;
    cfg = config_build(&pl.d);
    if (!cfg) {
        qvl_errf(err, err_len, "genmodel: out of memory building config.json");
        st = QVL_E_NOMEM;
        goto done;
    }
    st = write_json(out_dir, "config.json", cfg, err, err_len);
done:
    cJSON_Delete(cfg);
    cJSON_Delete(tmpl_root);
    plan_free(&pl);
    return st;
}
