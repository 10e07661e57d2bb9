/* config.c - parse and check config.json (4.57 layout with text_config / vision_config, and the
 * rope_parameters spelling of transformers 5.x) and generation_config.json. Every value the engine
 * uses comes from the file; only the documented class defaults fill absent keys. */
#include "config.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

typedef struct {
    const char *fname;
    char *err;
    size_t err_len;
    qvl_status st;
} parse_ctx;

static void fail(parse_ctx *pc, const char *where, const char *key, const char *what) {
    if (pc->st != QVL_OK)
        return;
    pc->st = QVL_E_FORMAT;
    qvl_errf(pc->err, pc->err_len, "%s: %s%s%s: %s", pc->fname, where ? where : "",
             where && *where ? "." : "", key, what);
}

/* Integer field: absent -> def (or an error if required); present must be an integral number in
 * [lo, hi]. */
static int get_int(parse_ctx *pc, const cJSON *o, const char *where, const char *key, int def,
                   bool required, long lo, long hi) {
    const cJSON *v = o ? cJSON_GetObjectItemCaseSensitive(o, key) : NULL;
    if (!v || cJSON_IsNull(v)) {
        if (required)
            fail(pc, where, key, "missing");
        return def;
    }
    if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble) || v->valuedouble < lo ||
        v->valuedouble > hi) {
        fail(pc, where, key, "must be an integer in range");
        return def;
    }
    return (int)v->valuedouble;
}

static double get_num(parse_ctx *pc, const cJSON *o, const char *where, const char *key, double def,
                      bool required) {
    const cJSON *v = o ? cJSON_GetObjectItemCaseSensitive(o, key) : NULL;
    if (!v || cJSON_IsNull(v)) {
        if (required)
            fail(pc, where, key, "missing");
        return def;
    }
    if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble)) {
        fail(pc, where, key, "must be a number");
        return def;
    }
    return v->valuedouble;
}

static bool get_bool(parse_ctx *pc, const cJSON *o, const char *where, const char *key, bool def) {
    const cJSON *v = o ? cJSON_GetObjectItemCaseSensitive(o, key) : NULL;
    if (!v || cJSON_IsNull(v))
        return def;
    if (!cJSON_IsBool(v)) {
        fail(pc, where, key, "must be true or false");
        return def;
    }
    return cJSON_IsTrue(v);
}

static void get_str(parse_ctx *pc, const cJSON *o, const char *where, const char *key, char *out,
                    size_t cap, const char *def) {
    const cJSON *v = o ? cJSON_GetObjectItemCaseSensitive(o, key) : NULL;
    snprintf(out, cap, "%s", def);
    if (!v || cJSON_IsNull(v))
        return;
    if (!cJSON_IsString(v) || strlen(v->valuestring) >= cap) {
        fail(pc, where, key, "must be a short string");
        return;
    }
    snprintf(out, cap, "%s", v->valuestring);
}

static const cJSON *get_obj(parse_ctx *pc, const cJSON *o, const char *where, const char *key) {
    const cJSON *v = o ? cJSON_GetObjectItemCaseSensitive(o, key) : NULL;
    if (!v || cJSON_IsNull(v))
        return NULL;
    if (!cJSON_IsObject(v)) {
        fail(pc, where, key, "must be an object");
        return NULL;
    }
    return v;
}

static void check(parse_ctx *pc, bool ok, const char *where, const char *key, const char *what) {
    if (!ok)
        fail(pc, where, key, what);
}

qvl_status qvl_config_parse(const char *json, size_t len, const char *fname, qvl_config *c,
                            char *err, size_t err_len) {
    memset(c, 0, sizeof *c);
    parse_ctx pc = {fname, err, err_len, QVL_OK};
    qvl_status ps;
    long at;
    cJSON *root = qvl_json_parse(json, len, NULL, &ps, &at);
    if (!root) {
        if (ps == QVL_E_NOMEM)
            qvl_errf(err, err_len, "%s: out of memory", fname);
        else
            qvl_errf(err, err_len, "%s: malformed JSON near byte %ld", fname, at);
        return ps;
    }
    if (!cJSON_IsObject(root)) {
        qvl_errf(err, err_len, "%s: top level must be a JSON object", fname);
        cJSON_Delete(root);
        return QVL_E_FORMAT;
    }
    get_str(&pc, root, "", "model_type", c->model_type, sizeof c->model_type, "");
    if (pc.st == QVL_OK && strcmp(c->model_type, "qwen3_vl") != 0) {
        pc.st = strcmp(c->model_type, "qwen3_vl_moe") == 0 ? QVL_E_UNSUPPORTED : QVL_E_FORMAT;
        qvl_errf(err, err_len,
                 "%s: model_type is \"%s\"; qvl runs Qwen3-VL dense models (\"qwen3_vl\")%s",
                 fname, c->model_type,
                 pc.st == QVL_E_UNSUPPORTED ? " (the MoE variant is not supported yet)" : "");
    }
    const long big = 1L << 30;
    c->image_token_id = get_int(&pc, root, "", "image_token_id", 151655, false, 0, big);
    c->video_token_id = get_int(&pc, root, "", "video_token_id", 151656, false, 0, big);
    c->vision_start_id = get_int(&pc, root, "", "vision_start_token_id", 151652, false, 0, big);
    c->vision_end_id = get_int(&pc, root, "", "vision_end_token_id", 151653, false, 0, big);
    bool top_tie = get_bool(&pc, root, "", "tie_word_embeddings", false);

    const cJSON *tc = get_obj(&pc, root, "", "text_config");
    const cJSON *vc = get_obj(&pc, root, "", "vision_config");
    if (pc.st == QVL_OK && (!tc || !vc))
        fail(&pc, "", !tc ? "text_config" : "vision_config", "missing");

    /* text */
    qvl_text_cfg *t = &c->text;
    const char *w = "text_config";
    t->hidden = get_int(&pc, tc, w, "hidden_size", 0, true, 1, 1 << 20);
    t->n_layers = get_int(&pc, tc, w, "num_hidden_layers", 0, true, 1, 4096);
    t->n_heads = get_int(&pc, tc, w, "num_attention_heads", 0, true, 1, 4096);
    t->n_kv_heads = get_int(&pc, tc, w, "num_key_value_heads", t->n_heads, false, 1, 4096);
    t->head_dim = get_int(&pc, tc, w, "head_dim", t->n_heads ? t->hidden / t->n_heads : 0, false,
                          2, 4096);
    t->intermediate = get_int(&pc, tc, w, "intermediate_size", 0, true, 1, 1 << 22);
    t->vocab_size = get_int(&pc, tc, w, "vocab_size", 0, true, 1, 1 << 24);
    t->rms_eps = (float)get_num(&pc, tc, w, "rms_norm_eps", 1e-6, false);
    t->max_pos = get_int(&pc, tc, w, "max_position_embeddings", 262144, false, 1, 1 << 30);
    t->attention_bias = get_bool(&pc, tc, w, "attention_bias", false);
    t->tie = get_bool(&pc, tc, w, "tie_word_embeddings", top_tie);
    get_str(&pc, tc, w, "hidden_act", t->hidden_act, sizeof t->hidden_act, "silu");
    /* RoPE: rope_parameters (5.x) or rope_scaling (4.57); theta inside the former or at the top */
    const cJSON *rp = get_obj(&pc, tc, w, "rope_parameters");
    const cJSON *rs = rp ? rp : get_obj(&pc, tc, w, "rope_scaling");
    const char *rw = rp ? "text_config.rope_parameters" : "text_config.rope_scaling";
    double theta = get_num(&pc, rp, rw, "rope_theta", 0, false);
    if (theta == 0)
        theta = get_num(&pc, tc, w, "rope_theta", 0, true);
    t->rope_theta = theta;
    check(&pc, theta > 0, w, "rope_theta", "must be positive");
    t->mrope_section[0] = 24;
    t->mrope_section[1] = 20;
    t->mrope_section[2] = 20;
    t->mrope_interleaved = true;
    if (rs) {
        const cJSON *ms = cJSON_GetObjectItemCaseSensitive(rs, "mrope_section");
        if (ms) {
            if (!cJSON_IsArray(ms) || cJSON_GetArraySize(ms) != 3) {
                fail(&pc, rw, "mrope_section", "must be an array of 3 integers");
            } else {
                for (int i = 0; i < 3; i++) {
                    const cJSON *e = cJSON_GetArrayItem(ms, i);
                    if (!cJSON_IsNumber(e) || e->valuedouble < 0 || e->valuedouble > 4096 ||
                        e->valuedouble != floor(e->valuedouble))
                        fail(&pc, rw, "mrope_section", "must be an array of 3 integers");
                    else
                        t->mrope_section[i] = (int)e->valuedouble;
                }
            }
        }
        t->mrope_interleaved = get_bool(&pc, rs, rw, "mrope_interleaved", false);
        char rtype[32];
        get_str(&pc, rs, rw, "rope_type", rtype, sizeof rtype, "default");
        if (pc.st == QVL_OK && strcmp(rtype, "default") != 0) {
            pc.st = QVL_E_UNSUPPORTED;
            qvl_errf(err, err_len, "%s: %s.rope_type \"%s\" is not supported (only \"default\")",
                     fname, rw, rtype);
        }
    }
    if (pc.st == QVL_OK && !t->mrope_interleaved) {
        pc.st = QVL_E_UNSUPPORTED;
        qvl_errf(err, err_len,
                 "%s: %s.mrope_interleaved is not true: that is the Qwen2/2.5-VL layout, not "
                 "Qwen3-VL",
                 fname, rw);
    }
    if (pc.st == QVL_OK) {
        check(&pc, t->n_heads % t->n_kv_heads == 0, w, "num_key_value_heads",
              "must divide num_attention_heads");
        check(&pc, t->head_dim % 2 == 0, w, "head_dim", "must be even");
        check(&pc,
              t->mrope_section[0] + t->mrope_section[1] + t->mrope_section[2] == t->head_dim / 2,
              w, "mrope_section", "must sum to head_dim / 2");
        check(&pc, strcmp(t->hidden_act, "silu") == 0, w, "hidden_act", "must be \"silu\"");
        check(&pc, !t->attention_bias, w, "attention_bias", "true is not supported");
    }

    /* vision */
    qvl_vision_cfg *v = &c->vision;
    w = "vision_config";
    v->depth = get_int(&pc, vc, w, "depth", 0, true, 1, 1024);
    v->hidden = get_int(&pc, vc, w, "hidden_size", 0, true, 1, 1 << 16);
    v->n_heads = get_int(&pc, vc, w, "num_heads", 0, true, 1, 1024);
    v->intermediate = get_int(&pc, vc, w, "intermediate_size", 0, true, 1, 1 << 20);
    v->patch = get_int(&pc, vc, w, "patch_size", 16, false, 1, 1024);
    v->temporal_patch = get_int(&pc, vc, w, "temporal_patch_size", 2, false, 1, 16);
    v->merge = get_int(&pc, vc, w, "spatial_merge_size", 2, false, 1, 16);
    v->in_ch = get_int(&pc, vc, w, "in_channels", 3, false, 1, 16);
    v->out_hidden = get_int(&pc, vc, w, "out_hidden_size", 0, true, 1, 1 << 20);
    v->num_pos = get_int(&pc, vc, w, "num_position_embeddings", 2304, false, 1, 1 << 24);
    get_str(&pc, vc, w, "hidden_act", v->hidden_act, sizeof v->hidden_act, "gelu_pytorch_tanh");
    const cJSON *ds = vc ? cJSON_GetObjectItemCaseSensitive(vc, "deepstack_visual_indexes") : NULL;
    if (ds && !cJSON_IsNull(ds)) {
        if (!cJSON_IsArray(ds) || cJSON_GetArraySize(ds) > QVL_MAX_DEEPSTACK) {
            fail(&pc, w, "deepstack_visual_indexes", "must be an array of at most 16 integers");
        } else {
            v->n_deepstack = cJSON_GetArraySize(ds);
            for (int i = 0; i < v->n_deepstack; i++) {
                const cJSON *e = cJSON_GetArrayItem(ds, i);
                if (!cJSON_IsNumber(e) || e->valuedouble < 0 || e->valuedouble >= v->depth ||
                    e->valuedouble != floor(e->valuedouble))
                    fail(&pc, w, "deepstack_visual_indexes", "each must be a block index < depth");
                else
                    v->deepstack[i] = (int)e->valuedouble;
            }
        }
    }
    if (pc.st == QVL_OK) {
        check(&pc, v->hidden % v->n_heads == 0, w, "num_heads", "must divide hidden_size");
        check(&pc, (v->hidden / v->n_heads) % 4 == 0, w, "num_heads",
              "vision head dim must be a multiple of 4 (2D rotary)");
        int side = (int)lrint(sqrt((double)v->num_pos));
        check(&pc, side * side == v->num_pos && side >= 2, w, "num_position_embeddings",
              "must be a square >= 4");
        check(&pc, v->out_hidden == t->hidden, w, "out_hidden_size",
              "must equal text_config.hidden_size");
        check(&pc, v->in_ch == 3, w, "in_channels", "must be 3");
        check(&pc, !strcmp(v->hidden_act, "gelu_pytorch_tanh") || !strcmp(v->hidden_act, "gelu"),
              w, "hidden_act", "must be gelu_pytorch_tanh or gelu");
        check(&pc, v->n_deepstack <= t->n_layers, w, "deepstack_visual_indexes",
              "more taps than decoder layers");
    }
    cJSON_Delete(root);
    return pc.st;
}

void qvl_gen_config_default(qvl_gen_config *g) {
    memset(g, 0, sizeof *g);
    g->n_eos = 2;
    g->eos[0] = 151645;
    g->eos[1] = 151643;
    g->bos_id = -1;
    g->pad_id = -1;
    g->do_sample = false;
    g->temperature = 1.0f;
    g->top_k = 0;
    g->top_p = 1.0f;
    g->repetition_penalty = 1.0f;
}

qvl_status qvl_gen_config_parse(const char *json, size_t len, const char *fname, qvl_gen_config *g,
                                char *err, size_t err_len) {
    parse_ctx pc = {fname, err, err_len, QVL_OK};
    qvl_status ps;
    cJSON *root = qvl_json_parse(json, len, NULL, &ps, NULL);
    if (!root && ps == QVL_E_NOMEM) {
        qvl_errf(err, err_len, "%s: out of memory", fname);
        return QVL_E_NOMEM;
    }
    if (!root || !cJSON_IsObject(root)) {
        qvl_errf(err, err_len, "%s: malformed JSON (expected an object)", fname);
        cJSON_Delete(root);
        return QVL_E_FORMAT;
    }
    const long big = 1L << 30;
    const cJSON *eos = cJSON_GetObjectItemCaseSensitive(root, "eos_token_id");
    if (eos && cJSON_IsNumber(eos)) {
        g->n_eos = 1;
        g->eos[0] = get_int(&pc, root, "", "eos_token_id", 0, true, 0, big);
    } else if (eos && cJSON_IsArray(eos)) {
        int n = cJSON_GetArraySize(eos);
        if (n > QVL_MAX_EOS) {
            fail(&pc, "", "eos_token_id", "more than 8 ids");
        } else {
            g->n_eos = 0;
            for (int i = 0; i < n; i++) {
                const cJSON *e = cJSON_GetArrayItem(eos, i);
                if (!cJSON_IsNumber(e) || e->valuedouble < 0 || e->valuedouble > big)
                    fail(&pc, "", "eos_token_id", "must hold token ids");
                else
                    g->eos[g->n_eos++] = (int32_t)e->valuedouble;
            }
        }
    } else if (eos && !cJSON_IsNull(eos)) {
        fail(&pc, "", "eos_token_id", "must be an id or a list of ids");
    }
    g->bos_id = get_int(&pc, root, "", "bos_token_id", g->bos_id, false, -1, big);
    g->pad_id = get_int(&pc, root, "", "pad_token_id", g->pad_id, false, -1, big);
    g->do_sample = get_bool(&pc, root, "", "do_sample", g->do_sample);
    g->temperature = (float)get_num(&pc, root, "", "temperature", g->temperature, false);
    g->top_k = get_int(&pc, root, "", "top_k", g->top_k, false, 0, big);
    g->top_p = (float)get_num(&pc, root, "", "top_p", g->top_p, false);
    g->repetition_penalty =
        (float)get_num(&pc, root, "", "repetition_penalty", g->repetition_penalty, false);
    cJSON_Delete(root);
    if (pc.st == QVL_OK && (g->temperature < 0 || g->top_p <= 0 || g->top_p > 1 ||
                            g->repetition_penalty <= 0)) {
        qvl_errf(err, err_len, "%s: sampling values out of range", fname);
        return QVL_E_FORMAT;
    }
    return pc.st;
}
