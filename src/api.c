/* api.c - public entry points that glue modules together: images, tokenizer, prompt building,
 * stand-alone vision encoding and the model description. */
#include "chat.h"
#include "ctx.h"
#include "image.h"
#include "kern/kern.h"
#include "rope.h"
#include "st.h"
#include "tok.h"
#include "video.h"
#include "vit.h"

#include <cjson/cJSON.h>
#include <string.h>

/* ---- images ------------------------------------------------------------------------------ */

static qvl_status wrap_rgb(qvl_rgb *rgb, qvl_image **out, char *err, size_t err_len) {
    qvl_image *img = qvl_malloc(sizeof *img);
    if (!img) {
        qvl_rgb_free(rgb);
        qvl_errf(err, err_len, "out of memory");
        return QVL_E_NOMEM;
    }
    img->w = rgb->w;
    img->h = rgb->h;
    img->rgb = rgb->data;
    *out = img;
    return QVL_OK;
}

static qvl_img_limits limits(uint64_t max_pixels, unsigned flags) {
    qvl_img_limits l = qvl_img_limits_default();
    if (max_pixels)
        l.max_pixels = max_pixels;
    l.ignore_exif = (flags & QVL_IMAGE_IGNORE_EXIF) != 0;
    l.drop_alpha = (flags & QVL_IMAGE_DROP_ALPHA) != 0;
    return l;
}

qvl_status qvl_image_load_file_ex(const char *path, uint64_t max_pixels, unsigned flags,
                                  qvl_image **out, char *err, size_t err_len) {
    if (!out || !path)
        return QVL_E_INVAL;
    *out = NULL;
    qvl_img_limits l = limits(max_pixels, flags);
    qvl_rgb rgb = {0};
    qvl_status s = qvl_img_decode_file(path, &l, &rgb, err, err_len);
    if (s != QVL_OK)
        return s;
    return wrap_rgb(&rgb, out, err, err_len);
}

qvl_status qvl_image_load_file(const char *path, uint64_t max_pixels, qvl_image **out, char *err,
                               size_t err_len) {
    return qvl_image_load_file_ex(path, max_pixels, 0, out, err, err_len);
}

qvl_status qvl_image_load_mem_ex(const void *data, size_t len, uint64_t max_pixels,
                                 unsigned flags, qvl_image **out, char *err, size_t err_len) {
    if (!out || (!data && len))
        return QVL_E_INVAL;
    *out = NULL;
    qvl_img_limits l = limits(max_pixels, flags);
    qvl_rgb rgb = {0};
    qvl_status s = qvl_img_decode_mem(data, len, &l, &rgb, err, err_len);
    if (s != QVL_OK)
        return s;
    return wrap_rgb(&rgb, out, err, err_len);
}

qvl_status qvl_image_load_mem(const void *data, size_t len, uint64_t max_pixels, qvl_image **out,
                              char *err, size_t err_len) {
    return qvl_image_load_mem_ex(data, len, max_pixels, 0, out, err, err_len);
}

qvl_status qvl_image_from_rgb(const uint8_t *rgb, int width, int height, qvl_image **out,
                              char *err, size_t err_len) {
    if (!out)
        return QVL_E_INVAL;
    *out = NULL;
    size_t n;
    if (!rgb || width <= 0 || height <= 0 ||
        !qvl_size_mul((size_t)width * 3, (size_t)height, &n)) {
        qvl_errf(err, err_len, "bad raw RGB image (%d x %d)", width, height);
        return QVL_E_INVAL;
    }
    if ((uint64_t)width * (uint64_t)height > QVL_IMG_DEFAULT_MAX_PIXELS) {
        qvl_errf(err, err_len, "raw RGB image %d x %d is over the limit of %llu pixels", width,
                 height, (unsigned long long)QVL_IMG_DEFAULT_MAX_PIXELS);
        return QVL_E_LIMIT;
    }
    qvl_rgb r = {width, height, qvl_malloc(n)};
    if (!r.data) {
        qvl_errf(err, err_len, "out of memory");
        return QVL_E_NOMEM;
    }
    memcpy(r.data, rgb, n);
    return wrap_rgb(&r, out, err, err_len);
}

void qvl_image_size(const qvl_image *img, int *width, int *height) {
    if (width)
        *width = img ? img->w : 0;
    if (height)
        *height = img ? img->h : 0;
}

void qvl_image_free(qvl_image *img) {
    if (!img)
        return;
    qvl_free(img->rgb);
    qvl_free(img);
}

static void budget(const qvl_pp_config *pp, const qvl_image_opts *o, int64_t *mn, int64_t *mx) {
    *mn = o && o->min_pixels > 0 ? o->min_pixels : pp->min_pixels;
    *mx = o && o->max_pixels > 0 ? o->max_pixels : pp->max_pixels;
}

qvl_status qvl_image_plan_get(const qvl_model *m, const qvl_image *img, const qvl_image_opts *o,
                              qvl_image_plan *plan, char *err, size_t err_len) {
    if (!img || !plan)
        return QVL_E_INVAL;
    qvl_pp_config dflt;
    qvl_pp_config_default(&dflt);
    const qvl_pp_config *pp = m ? &m->pp : &dflt;
    int64_t mn, mx;
    budget(pp, o, &mn, &mx);
    int rh = 0, rw = 0;
    int factor = pp->patch * pp->merge;
    qvl_status s = qvl_smart_resize(img->h, img->w, factor, mn, mx, &rh, &rw, err, err_len);
    if (s != QVL_OK)
        return s;
    plan->resized_height = rh;
    plan->resized_width = rw;
    plan->grid_t = 1;
    plan->grid_h = rh / pp->patch;
    plan->grid_w = rw / pp->patch;
    plan->n_tokens = (int64_t)plan->grid_h * plan->grid_w / (pp->merge * pp->merge);
    return QVL_OK;
}

qvl_status qvl_image_pixels(const qvl_model *m, const qvl_image *img, const qvl_image_opts *o,
                            qvl_pixels *out, char *err, size_t err_len) {
    if (!img) {
        qvl_errf(err, err_len, "image is NULL");
        return QVL_E_INVAL;
    }
    qvl_resampler rs;
    if (!qvl_resampler_of(o ? o->resample : QVL_RESAMPLE_DEFAULT, QVL_RESAMPLER_PIL, &rs)) {
        qvl_errf(err, err_len, "image options: unknown resample %d", (int)o->resample);
        return QVL_E_INVAL;
    }
    int64_t mn, mx;
    budget(&m->pp, o, &mn, &mx);
    qvl_rgb rgb = {img->w, img->h, img->rgb};
    return qvl_img_preprocess(&rgb, &m->pp, mn, mx, rs, out, err, err_len);
}

qvl_status qvl_image_pixel_values(const qvl_model *m, const qvl_image *img,
                                  const qvl_image_opts *o, float **pixels, int64_t *n_rows,
                                  int64_t *n_cols, qvl_image_plan *plan, char *err,
                                  size_t err_len) {
    if (!m || !img || !pixels || !n_rows || !n_cols)
        return QVL_E_INVAL;
    *pixels = NULL;
    qvl_pixels px = {0};
    qvl_status s = qvl_image_pixels(m, img, o, &px, err, err_len);
    if (s != QVL_OK)
        return s;
    if (plan) {
        qvl_image_plan_get(m, img, o, plan, err, err_len);
    }
    *pixels = px.data;
    *n_rows = px.n_rows;
    *n_cols = px.n_cols;
    return QVL_OK;
}

qvl_status qvl_vision_encode(const qvl_model *m, const qvl_image *img, const qvl_image_opts *o,
                             int n_threads, qvl_features *out, char *err, size_t err_len) {
    if (!m || !img || !out)
        return QVL_E_INVAL;
    memset(out, 0, sizeof *out);
    qvl_pixels px = {0};
    qvl_status s = qvl_image_pixels(m, img, o, &px, err, err_len);
    if (s != QVL_OK)
        return s;
    const int64_t O = m->cfg.vision.out_hidden;
    const int n_ds = m->cfg.vision.n_deepstack;
    qvl_pool *pool = NULL;
    out->embd = qvl_malloc((size_t)(px.n_tokens * O) * sizeof(float));
    out->deepstack = qvl_malloc((size_t)(n_ds * px.n_tokens * O + 1) * sizeof(float));
    if (!out->embd || !out->deepstack) {
        s = QVL_E_NOMEM;
        qvl_errf(err, err_len, "out of memory");
        goto done;
    }
    s = qvl_pool_create(n_threads > 0 ? n_threads : 1, &pool);
    if (s != QVL_OK) {
        qvl_errf(err, err_len, "cannot start threads");
        goto done;
    }
    s = qvl_vit_encode(m, pool, px.data, px.grid_t, px.grid_h, px.grid_w, out->embd,
                       out->deepstack, 0, NULL, NULL, err, err_len);
    out->n_tokens = px.n_tokens;
    out->dim = (int)O;
    out->n_deepstack = n_ds;
    out->grid_t = px.grid_t;
    out->grid_h = px.grid_h;
    out->grid_w = px.grid_w;
done:
    qvl_pool_free(pool);
    qvl_pixels_free(&px);
    if (s != QVL_OK)
        qvl_features_free(out);
    return s;
}

void qvl_features_free(qvl_features *f) {
    if (!f)
        return;
    qvl_free(f->embd);
    qvl_free(f->deepstack);
    memset(f, 0, sizeof *f);
}

/* ---- tokenizer --------------------------------------------------------------------------- */

qvl_status qvl_tokenize(const qvl_model *m, const char *text, size_t len, int32_t **ids,
                        size_t *n) {
    if (!m || !ids || !n || (!text && len))
        return QVL_E_INVAL;
    return qvl_tok_encode(m->tok, text ? text : "", len, ids, n, NULL, 0);
}

qvl_status qvl_detokenize(const qvl_model *m, const int32_t *ids, size_t n, int skip_special,
                          char **text) {
    if (!m || !text || (!ids && n))
        return QVL_E_INVAL;
    return qvl_tok_decode(m->tok, ids, n, skip_special != 0, text, NULL);
}

const char *qvl_token_bytes(const qvl_model *m, int32_t id, size_t *len) {
    size_t dummy;
    if (!len)
        len = &dummy;
    *len = 0;
    if (!m)
        return NULL;
    const char *b = qvl_tok_token_bytes(m->tok, id, len);
    if (!b)
        *len = 0;
    return b;
}

/* ---- prompts ----------------------------------------------------------------------------- */

qvl_status qvl_prompt_build(const qvl_model *m, const qvl_message *msgs, size_t n_msgs,
                            int add_generation_prompt, qvl_image *const *images, size_t n_images,
                            const qvl_image_opts *o, int32_t **ids, size_t *n_ids, char *err,
                            size_t err_len) {
    return qvl_prompt_build_mm(m, msgs, n_msgs, add_generation_prompt, images, n_images, o, NULL,
                               0, ids, n_ids, err, err_len);
}

/* Replace the i-th video placeholder of the rendered template text by the video's expansion. */
static qvl_status expand_videos(const qvl_model *m, char **text, qvl_video *const *videos,
                                size_t n_videos, char *err, size_t err_len) {
    static const char ph[] = "<|vision_start|><|video_pad|><|vision_end|>";
    const size_t pl = sizeof ph - 1;
    size_t from = 0; /* search after the previous expansion (it may contain the same text) */
    for (size_t i = 0; i < n_videos; i++) {
        char *hit = strstr(*text + from, ph);
        if (!hit) {
            qvl_errf(err, err_len, "the prompt has fewer video placeholders than the %zu videos",
                     n_videos);
            return QVL_E_INVAL;
        }
        char *rep = qvl_video_prompt_text(m, videos[i], err, err_len);
        if (!rep)
            return QVL_E_NOMEM;
        size_t head = (size_t)(hit - *text), rl = strlen(rep), tl = strlen(hit + pl);
        char *nt = qvl_malloc(head + rl + tl + 1);
        if (!nt) {
            qvl_free(rep);
            return QVL_E_NOMEM;
        }
        memcpy(nt, *text, head);
        memcpy(nt + head, rep, rl);
        memcpy(nt + head + rl, hit + pl, tl + 1);
        from = head + rl;
        qvl_free(rep);
        qvl_free(*text);
        *text = nt;
    }
    return QVL_OK;
}

qvl_status qvl_prompt_build_parts(const qvl_model *m, const qvl_chat_msg *msgs, size_t n_msgs,
                                  int add_generation_prompt, qvl_image *const *images,
                                  size_t n_images, const qvl_image_opts *o,
                                  qvl_video *const *videos, size_t n_videos, int32_t **ids,
                                  size_t *n_ids, char *err, size_t err_len) {
    return qvl_prompt_build_tools(m, msgs, n_msgs, NULL, 0, add_generation_prompt, images,
                                  n_images, o, videos, n_videos, ids, n_ids, err, err_len);
}

qvl_status qvl_prompt_build_tools(const qvl_model *m, const qvl_chat_msg *msgs, size_t n_msgs,
                                  const char *const *tools, size_t n_tools,
                                  int add_generation_prompt, qvl_image *const *images,
                                  size_t n_images, const qvl_image_opts *o,
                                  qvl_video *const *videos, size_t n_videos, int32_t **ids,
                                  size_t *n_ids, char *err, size_t err_len) {
    if (!m || !ids || !n_ids || (!msgs && n_msgs) || (!images && n_images) ||
        (!videos && n_videos) || (!tools && n_tools))
        return QVL_E_INVAL;
    *ids = NULL;
    *n_ids = 0;
    /* the template renders media only in user and tool messages */
    size_t img_i = 0, vid_i = 0;
    for (size_t i = 0; i < n_msgs; i++) {
        const char *r = msgs[i].role ? msgs[i].role : "";
        if (strcmp(r, "user") && strcmp(r, "tool"))
            continue;
        for (size_t k = 0; msgs[i].parts && k < msgs[i].n_parts; k++) {
            img_i += msgs[i].parts[k].type == QVL_PART_IMAGE;
            vid_i += msgs[i].parts[k].type == QVL_PART_VIDEO;
        }
    }
    if (img_i != n_images || vid_i != n_videos) {
        qvl_errf(err, err_len,
                 "the messages place %zu images and %zu videos but %zu and %zu were given",
                 img_i, vid_i, n_images, n_videos);
        return QVL_E_INVAL;
    }
    size_t *counts = qvl_calloc(n_images + 1, sizeof *counts);
    char *text = NULL;
    int32_t *raw = NULL;
    size_t n_raw = 0;
    qvl_status s = QVL_OK;
    if (!counts) {
        qvl_errf(err, err_len, "out of memory");
        return QVL_E_NOMEM;
    }
    for (size_t i = 0; i < n_images; i++) {
        qvl_image_plan plan;
        s = qvl_image_plan_get(m, images[i], o, &plan, err, err_len);
        if (s != QVL_OK)
            goto done;
        counts[i] = (size_t)plan.n_tokens;
    }
    s = qvl_chat_render_tools(msgs, n_msgs, tools, n_tools, add_generation_prompt != 0, false,
                              &text, err, err_len);
    if (s == QVL_OK)
        s = expand_videos(m, &text, videos, n_videos, err, err_len);
    if (s != QVL_OK)
        goto done;
    s = qvl_tok_encode(m->tok, text, strlen(text), &raw, &n_raw, err, err_len);
    if (s != QVL_OK)
        goto done;
    s = qvl_chat_expand_pads(raw, n_raw, m->cfg.image_token_id, counts, n_images, ids, n_ids, err,
                             err_len);
done:
    qvl_free(counts);
    qvl_free(text);
    qvl_free(raw);
    return s;
}

qvl_status qvl_prompt_build_mm(const qvl_model *m, const qvl_message *msgs, size_t n_msgs,
                               int add_generation_prompt, qvl_image *const *images,
                               size_t n_images, const qvl_image_opts *o,
                               qvl_video *const *videos, size_t n_videos, int32_t **ids,
                               size_t *n_ids, char *err, size_t err_len) {
    if (!m || !ids || !n_ids || (!msgs && n_msgs) || (!images && n_images) ||
        (!videos && n_videos))
        return QVL_E_INVAL;
    *ids = NULL;
    *n_ids = 0;
    /* each message: its images, then its videos, then its text */
    size_t total_parts = 0;
    for (size_t i = 0; i < n_msgs; i++) {
        if (msgs[i].n_images < 0 || msgs[i].n_videos < 0 || msgs[i].n_images > 100000 ||
            msgs[i].n_videos > 100000) {
            qvl_errf(err, err_len, "message %zu: bad image or video count", i);
            return QVL_E_INVAL;
        }
        total_parts += (size_t)msgs[i].n_images + (size_t)msgs[i].n_videos + 1;
    }
    qvl_chat_msg *cm = qvl_calloc(n_msgs + 1, sizeof *cm);
    qvl_chat_part *parts = qvl_calloc(total_parts + 1, sizeof *parts);
    if (!cm || !parts) {
        qvl_free(cm);
        qvl_free(parts);
        qvl_errf(err, err_len, "out of memory");
        return QVL_E_NOMEM;
    }
    size_t pi = 0;
    for (size_t i = 0; i < n_msgs; i++) {
        cm[i].role = msgs[i].role;
        cm[i].parts = parts + pi;
        for (int k = 0; k < msgs[i].n_images; k++)
            parts[pi++].type = QVL_PART_IMAGE;
        for (int k = 0; k < msgs[i].n_videos; k++)
            parts[pi++].type = QVL_PART_VIDEO;
        parts[pi].type = QVL_PART_TEXT;
        parts[pi++].text = msgs[i].text ? msgs[i].text : "";
        cm[i].n_parts = (size_t)msgs[i].n_images + (size_t)msgs[i].n_videos + 1;
    }
    qvl_status s = qvl_prompt_build_parts(m, cm, n_msgs, add_generation_prompt, images, n_images,
                                          o, videos, n_videos, ids, n_ids, err, err_len);
    qvl_free(cm);
    qvl_free(parts);
    return s;
}

size_t qvl_video_frame_indices(const qvl_video *v, int64_t *idx, size_t cap) {
    if (!v)
        return 0;
    for (size_t i = 0; i < (size_t)v->n && i < cap; i++)
        idx[i] = v->indices[i];
    return (size_t)v->n;
}

/* ---- model description ------------------------------------------------------------------- */

char *qvl_model_info_json(const qvl_model *m) {
    if (!m)
        return NULL;
    const qvl_config *c = &m->cfg;
    cJSON *o = cJSON_CreateObject();
    if (!o)
        return NULL;
    cJSON_AddStringToObject(o, "dir", m->dir);
    cJSON_AddStringToObject(o, "architecture", "Qwen3VLForConditionalGeneration");
    cJSON_AddStringToObject(o, "model_type", c->model_type);
    cJSON_AddStringToObject(o, "dtype", qvl_dtype_name(m->weight_dtype));
    cJSON_AddStringToObject(o, "quant", m->quant == QVL_QUANT_Q8   ? "q8"
                                        : m->quant == QVL_QUANT_Q4 ? "q4"
                                                                   : "none");
    cJSON_AddBoolToObject(o, "bf16_dot", m->bf16_dot);
    cJSON *t = cJSON_AddObjectToObject(o, "text");
    cJSON_AddNumberToObject(t, "hidden_size", c->text.hidden);
    cJSON_AddNumberToObject(t, "layers", c->text.n_layers);
    cJSON_AddNumberToObject(t, "heads", c->text.n_heads);
    cJSON_AddNumberToObject(t, "kv_heads", c->text.n_kv_heads);
    cJSON_AddNumberToObject(t, "head_dim", c->text.head_dim);
    cJSON_AddNumberToObject(t, "intermediate_size", c->text.intermediate);
    cJSON_AddNumberToObject(t, "vocab_size", c->text.vocab_size);
    cJSON_AddNumberToObject(t, "rope_theta", c->text.rope_theta);
    cJSON *ms = cJSON_AddArrayToObject(t, "mrope_section");
    for (int i = 0; i < 3; i++)
        cJSON_AddItemToArray(ms, cJSON_CreateNumber(c->text.mrope_section[i]));
    cJSON_AddNumberToObject(t, "rms_norm_eps", c->text.rms_eps);
    cJSON_AddNumberToObject(t, "max_position_embeddings", (double)c->text.max_pos);
    cJSON_AddBoolToObject(t, "tied_lm_head", m->lm_head_tied);
    cJSON_AddNumberToObject(t, "params", (double)m->n_params_text);
    cJSON_AddNumberToObject(t, "bytes", (double)m->bytes_text);
    cJSON *v = cJSON_AddObjectToObject(o, "vision");
    cJSON_AddNumberToObject(v, "depth", c->vision.depth);
    cJSON_AddNumberToObject(v, "hidden_size", c->vision.hidden);
    cJSON_AddNumberToObject(v, "heads", c->vision.n_heads);
    cJSON_AddNumberToObject(v, "intermediate_size", c->vision.intermediate);
    cJSON_AddNumberToObject(v, "patch_size", c->vision.patch);
    cJSON_AddNumberToObject(v, "spatial_merge_size", c->vision.merge);
    cJSON_AddNumberToObject(v, "temporal_patch_size", c->vision.temporal_patch);
    cJSON_AddNumberToObject(v, "out_hidden_size", c->vision.out_hidden);
    cJSON *ds = cJSON_AddArrayToObject(v, "deepstack_visual_indexes");
    for (int i = 0; i < c->vision.n_deepstack; i++)
        cJSON_AddItemToArray(ds, cJSON_CreateNumber(c->vision.deepstack[i]));
    cJSON_AddStringToObject(v, "hidden_act", c->vision.hidden_act);
    cJSON_AddNumberToObject(v, "params", (double)m->n_params_vision);
    cJSON_AddNumberToObject(v, "bytes", (double)m->bytes_vision);
    cJSON_AddNumberToObject(o, "params_total", (double)(m->n_params_text + m->n_params_vision));
    cJSON *f = cJSON_AddArrayToObject(o, "files");
    for (size_t i = 0; i < qvl_st_n_files(m->st); i++) {
        cJSON *e = cJSON_CreateObject();
        cJSON_AddStringToObject(e, "name", qvl_st_file_name(m->st, (int)i));
        cJSON_AddBoolToObject(e, "in_place", !qvl_st_file_copied(m->st, (int)i));
        cJSON_AddItemToArray(f, e);
    }
    cJSON_AddNumberToObject(o, "n_tensors", (double)qvl_st_count(m->st));
    if (m->qcache_path) {
        cJSON *qc = cJSON_AddObjectToObject(o, "quant_cache");
        cJSON_AddStringToObject(qc, "path", m->qcache_path);
        cJSON_AddBoolToObject(qc, "used", m->qcache_map != NULL);
    }
    cJSON *tk = cJSON_AddObjectToObject(o, "tokens");
    cJSON_AddNumberToObject(tk, "image_pad", c->image_token_id);
    cJSON_AddNumberToObject(tk, "video_pad", c->video_token_id);
    cJSON_AddNumberToObject(tk, "vision_start", c->vision_start_id);
    cJSON_AddNumberToObject(tk, "vision_end", c->vision_end_id);
    cJSON *eos = cJSON_AddArrayToObject(tk, "eos");
    for (int i = 0; i < m->gen.n_eos; i++)
        cJSON_AddItemToArray(eos, cJSON_CreateNumber(m->gen.eos[i]));
    cJSON_AddNumberToObject(tk, "tokenizer_vocab", qvl_tok_n_vocab(m->tok));
    cJSON *pp = cJSON_AddObjectToObject(o, "preprocessor");
    cJSON_AddNumberToObject(pp, "min_pixels", (double)m->pp.min_pixels);
    cJSON_AddNumberToObject(pp, "max_pixels", (double)m->pp.max_pixels);
    cJSON *gc = cJSON_AddObjectToObject(o, "generation");
    cJSON_AddBoolToObject(gc, "do_sample", m->gen.do_sample);
    cJSON_AddNumberToObject(gc, "temperature", m->gen.temperature);
    cJSON_AddNumberToObject(gc, "top_k", m->gen.top_k);
    cJSON_AddNumberToObject(gc, "top_p", m->gen.top_p);
    cJSON_AddNumberToObject(gc, "repetition_penalty", m->gen.repetition_penalty);
    char *js = cJSON_Print(o);
    cJSON_Delete(o);
    if (!js)
        return NULL;
    char *r = qvl_strdup(js);
    cJSON_free(js);
    return r;
}

/* ---- model facts and helpers for the embeddings API ------------------------------------- */

int qvl_model_hidden(const qvl_model *m) {
    return m ? m->cfg.text.hidden : 0;
}

int qvl_model_n_deepstack(const qvl_model *m) {
    return m ? m->cfg.vision.n_deepstack : 0;
}

int qvl_model_n_vocab(const qvl_model *m) {
    return m ? m->cfg.text.vocab_size : 0;
}

int32_t qvl_model_image_token(const qvl_model *m) {
    return m ? m->cfg.image_token_id : -1;
}

qvl_status qvl_embed_tokens(const qvl_model *m, const int32_t *ids, size_t n, float *out) {
    if (!m || (!ids && n) || (!out && n))
        return QVL_E_INVAL;
    const int64_t H = m->cfg.text.hidden;
    for (size_t i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= m->cfg.text.vocab_size)
            return QVL_E_INVAL;
    const qvl_mat *E = &m->embed;
    size_t rb = qvl_dtype_row_bytes(E->dt, (size_t)H);
    for (size_t i = 0; i < n; i++)
        qvl_row_to_f32(E->dt, (const uint8_t *)E->data + (size_t)ids[i] * rb, out + i * H, H);
    return QVL_OK;
}

qvl_status qvl_positions(const qvl_model *m, const int32_t *ids, size_t n,
                         const int (*grids)[3], size_t n_grids, int64_t start, int32_t *pos,
                         int64_t *next_pos, char *err, size_t err_len) {
    if (!m || (!ids && n) || !pos || !next_pos || (!grids && n_grids) || n_grids > 1u << 20)
        return QVL_E_INVAL;
    qvl_grid *g = qvl_malloc((n_grids + 1) * sizeof *g);
    if (!g)
        return QVL_E_NOMEM;
    for (size_t i = 0; i < n_grids; i++)
        g[i] = (qvl_grid){grids[i][0], grids[i][1], grids[i][2]};
    qvl_status s = qvl_rope_index(ids, (int64_t)n, m->cfg.image_token_id, m->cfg.video_token_id,
                                  g, (int)n_grids, NULL, 0, m->cfg.vision.merge, start, pos,
                                  next_pos, err, err_len);
    qvl_free(g);
    return s;
}

void qvl_model_weight_residency(const qvl_model *m, uint64_t *in_place, uint64_t *copied) {
    qvl_st_residency(m ? m->st : NULL, copied, in_place);
}

int qvl_load_mode_from_name(const char *name, int *out) {
    static const char *const names[] = {"auto", "mmap", "copy"};
    int i = qvl_name_index(names, 3, name);
    if (i >= 0)
        *out = i;
    return i >= 0;
}

const char *qvl_load_mode_name(int mode) {
    return mode == QVL_LOAD_AUTO   ? "auto"
           : mode == QVL_LOAD_MMAP ? "mmap"
           : mode == QVL_LOAD_COPY ? "copy"
                                   : "?";
}

uint64_t qvl_model_decode_bytes(const qvl_model *m) {
    if (!m)
        return 0;
    const qvl_text_cfg *tc = &m->cfg.text;
    uint64_t b = 0;
    for (int l = 0; l < tc->n_layers; l++) {
        const qvl_llm_layer *Y = &m->layers[l];
        const qvl_mat *ws[7] = {&Y->q, &Y->k, &Y->v, &Y->o, &Y->gate, &Y->up, &Y->down};
        for (int i = 0; i < 7; i++)
            b += qvl_dtype_row_bytes(ws[i]->dt, (size_t)ws[i]->cols) * (uint64_t)ws[i]->rows;
        b += (uint64_t)(2 * tc->hidden + 2 * tc->head_dim) * sizeof(float);
    }
    b += qvl_dtype_row_bytes(m->lm_head.dt, (size_t)tc->hidden) * (uint64_t)m->lm_head.rows;
    b += qvl_dtype_row_bytes(m->embed.dt, (size_t)tc->hidden);
    return b;
}
