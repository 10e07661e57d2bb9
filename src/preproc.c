/* preproc.c - the Qwen3-VL image/video processor: preprocessor_config.json and
 * video_preprocessor_config.json parsing (cJSON), and the pipeline from decoded RGB to
 * pixel_values: smart_resize, Pillow bicubic resize, rescale + normalise, temporal padding and
 * the merge-group flattening of spec 3.7. */
#include "preproc.h"
#include "common.h"

#include <cjson/cJSON.h>
#include <limits.h>
#include <math.h>
#include <string.h>

#define MAX_CONFIG_BYTES ((size_t)1 << 20)

void qvl_pp_config_default(qvl_pp_config *c) {
    memset(c, 0, sizeof *c);
    c->min_pixels = 65536;    /* 256 * 256 */
    c->max_pixels = 16777216; /* 4096 * 4096 */
    c->patch = 16;
    c->temporal_patch = 2;
    c->merge = 2;
    for (int i = 0; i < 3; i++) {
        c->mean[i] = 0.5;
        c->std[i] = 0.5;
    }
    c->rescale = 1.0 / 255.0;
    c->do_resize = true;
    c->do_rescale = true;
    c->do_normalize = true;
    c->fps = 2.0;
    c->min_frames = 4;
    c->max_frames = 768;
}

void qvl_pp_config_default_video(qvl_pp_config *c) {
    qvl_pp_config_default(c);
    c->min_pixels = 4096;
    c->max_pixels = 25165824; /* 24576 * 32 * 32 */
}

/* ---- JSON parsing --------------------------------------------------------- */

/* The last member named `key` (Python's json keeps the last duplicate); NULL when absent or
 * null (a null value means "not set" in the Hugging Face configs). */
static const cJSON *get_key(const cJSON *obj, const char *key) {
    const cJSON *found = NULL;
    for (const cJSON *it = obj ? obj->child : NULL; it; it = it->next)
        if (it->string && strcmp(it->string, key) == 0)
            found = it;
    if (found && cJSON_IsNull(found))
        return NULL;
    return found;
}

static qvl_status get_int(const cJSON *obj, const char *key, const char *name, int64_t lo,
                          int64_t hi, int64_t *out, char *err, size_t err_len) {
    const cJSON *it = get_key(obj, key);
    if (!it)
        return QVL_OK;
    double v = cJSON_IsNumber(it) ? it->valuedouble : NAN;
    if (!(v == floor(v)) || v < (double)lo || v > (double)hi) {
        qvl_errf(err, err_len, "%s: key \"%s\": expected an integer in [%lld, %lld]", name, key,
                 (long long)lo, (long long)hi);
        return QVL_E_FORMAT;
    }
    *out = (int64_t)v;
    return QVL_OK;
}

static qvl_status get_int32(const cJSON *obj, const char *key, const char *name, int lo, int hi,
                            int *out, char *err, size_t err_len) {
    int64_t v = *out;
    qvl_status st = get_int(obj, key, name, lo, hi, &v, err, err_len);
    if (st == QVL_OK)
        *out = (int)v;
    return st;
}

static qvl_status get_pos_double(const cJSON *obj, const char *key, const char *name, double *out,
                                 char *err, size_t err_len) {
    const cJSON *it = get_key(obj, key);
    if (!it)
        return QVL_OK;
    if (!cJSON_IsNumber(it) || !(it->valuedouble > 0) || !isfinite(it->valuedouble)) {
        qvl_errf(err, err_len, "%s: key \"%s\": expected a positive number", name, key);
        return QVL_E_FORMAT;
    }
    *out = it->valuedouble;
    return QVL_OK;
}

static qvl_status get_bool(const cJSON *obj, const char *key, const char *name, bool *out,
                           char *err, size_t err_len) {
    const cJSON *it = get_key(obj, key);
    if (!it)
        return QVL_OK;
    if (!cJSON_IsBool(it)) {
        qvl_errf(err, err_len, "%s: key \"%s\": expected true or false", name, key);
        return QVL_E_FORMAT;
    }
    *out = cJSON_IsTrue(it);
    return QVL_OK;
}

/* image_mean / image_std: a list of 3 numbers or one number for all channels. */
static qvl_status get_triple(const cJSON *obj, const char *key, const char *name, bool nonzero,
                             double out[3], char *err, size_t err_len) {
    const cJSON *it = get_key(obj, key);
    if (!it)
        return QVL_OK;
    double v[3];
    bool ok = true;
    if (cJSON_IsNumber(it)) {
        v[0] = v[1] = v[2] = it->valuedouble;
    } else if (cJSON_IsArray(it) && cJSON_GetArraySize(it) == 3) {
        int i = 0;
        for (const cJSON *e = it->child; e; e = e->next, i++) {
            if (!cJSON_IsNumber(e))
                ok = false;
            else
                v[i] = e->valuedouble;
        }
    } else {
        ok = false;
    }
    for (int i = 0; ok && i < 3; i++)
        if (!isfinite(v[i]) || (nonzero && v[i] == 0.0))
            ok = false;
    if (!ok) {
        qvl_errf(err, err_len, "%s: key \"%s\": expected a list of 3 %snumbers", name, key,
                 nonzero ? "non-zero " : "");
        return QVL_E_FORMAT;
    }
    memcpy(out, v, sizeof v);
    return QVL_OK;
}

static qvl_status parse_obj(const cJSON *root, const char *name, qvl_pp_config *c, char *err,
                            size_t err_len) {
    qvl_status st;
    const int64_t pix_max = (int64_t)1 << 40;
    const cJSON *size = get_key(root, "size");
    if (size) {
        if (!cJSON_IsObject(size)) {
            qvl_errf(err, err_len, "%s: key \"size\": expected an object", name);
            return QVL_E_FORMAT;
        }
        const char *need[2] = {"shortest_edge", "longest_edge"};
        for (int i = 0; i < 2; i++) {
            if (!get_key(size, need[i])) {
                qvl_errf(err, err_len,
                         "%s: key \"size\": must contain \"shortest_edge\" and "
                         "\"longest_edge\"",
                         name);
                return QVL_E_FORMAT;
            }
        }
        if ((st = get_int(size, "shortest_edge", name, 0, pix_max, &c->min_pixels, err, err_len)) ||
            (st = get_int(size, "longest_edge", name, 1, pix_max, &c->max_pixels, err, err_len)))
            return st;
    }
    /* legacy keys override size */
    if ((st = get_int(root, "min_pixels", name, 0, pix_max, &c->min_pixels, err, err_len)) ||
        (st = get_int(root, "max_pixels", name, 1, pix_max, &c->max_pixels, err, err_len)))
        return st;
    if (c->min_pixels > c->max_pixels) {
        qvl_errf(err, err_len,
                 "%s: min_pixels (size.shortest_edge) %lld is larger than "
                 "max_pixels (size.longest_edge) %lld",
                 name, (long long)c->min_pixels, (long long)c->max_pixels);
        return QVL_E_FORMAT;
    }
    if ((st = get_int32(root, "patch_size", name, 1, 1024, &c->patch, err, err_len)) ||
        (st = get_int32(root, "temporal_patch_size", name, 1, 64, &c->temporal_patch, err,
                        err_len)) ||
        (st = get_int32(root, "merge_size", name, 1, 64, &c->merge, err, err_len)) ||
        (st = get_triple(root, "image_mean", name, false, c->mean, err, err_len)) ||
        (st = get_triple(root, "image_std", name, true, c->std, err, err_len)) ||
        (st = get_pos_double(root, "rescale_factor", name, &c->rescale, err, err_len)) ||
        (st = get_bool(root, "do_resize", name, &c->do_resize, err, err_len)) ||
        (st = get_bool(root, "do_rescale", name, &c->do_rescale, err, err_len)) ||
        (st = get_bool(root, "do_normalize", name, &c->do_normalize, err, err_len)) ||
        (st = get_pos_double(root, "fps", name, &c->fps, err, err_len)) ||
        (st = get_int32(root, "min_frames", name, 1, 1 << 20, &c->min_frames, err, err_len)) ||
        (st = get_int32(root, "max_frames", name, 1, 1 << 20, &c->max_frames, err, err_len)))
        return st;
    if (c->min_frames > c->max_frames) {
        qvl_errf(err, err_len, "%s: min_frames %d is larger than max_frames %d", name,
                 c->min_frames, c->max_frames);
        return QVL_E_FORMAT;
    }
    bool b = true;
    if ((st = get_bool(root, "do_convert_rgb", name, &b, err, err_len)))
        return st;
    int64_t resample = 3;
    if ((st = get_int(root, "resample", name, 0, 5, &resample, err, err_len)))
        return st;
    if (resample != 3) {
        qvl_errf(err, err_len, "%s: key \"resample\": only bicubic (3) is supported, got %lld",
                 name, (long long)resample);
        return QVL_E_UNSUPPORTED;
    }
    return QVL_OK;
}

qvl_status qvl_pp_config_parse_named(const char *json, size_t len, const char *name, bool video,
                                     qvl_pp_config *c, char *err, size_t err_len) {
    if (!name)
        name = video ? "video preprocessor config" : "preprocessor config";
    if (!json || !c) {
        qvl_errf(err, err_len, "%s: no data", name);
        return QVL_E_INVAL;
    }
    qvl_status ps;
    long off;
    cJSON *root = qvl_json_parse(json, len, NULL, &ps, &off);
    if (!root) {
        if (ps == QVL_E_NOMEM)
            qvl_errf(err, err_len, "%s: out of memory", name);
        else
            qvl_errf(err, err_len, "%s: malformed JSON (near byte %ld)", name, off);
        return ps;
    }
    qvl_status st = QVL_OK;
    if (!cJSON_IsObject(root)) {
        qvl_errf(err, err_len, "%s: expected a JSON object at the top level", name);
        st = QVL_E_FORMAT;
    } else {
        qvl_pp_config tmp;
        if (video)
            qvl_pp_config_default_video(&tmp);
        else
            qvl_pp_config_default(&tmp);
        st = parse_obj(root, name, &tmp, err, err_len);
        if (st == QVL_OK)
            *c = tmp;
    }
    cJSON_Delete(root);
    return st;
}

qvl_status qvl_pp_config_parse(const char *json, size_t len, qvl_pp_config *c, char *err,
                               size_t err_len) {
    return qvl_pp_config_parse_named(json, len, NULL, false, c, err, err_len);
}

static qvl_status load_impl(const char *path, bool video, qvl_pp_config *c, char *err,
                            size_t err_len) {
    if (!path || !c) {
        qvl_errf(err, err_len, "preprocessor config: no path");
        return QVL_E_INVAL;
    }
    char *buf = NULL;
    size_t len = 0;
    qvl_status st = qvl_read_file(path, MAX_CONFIG_BYTES, &buf, &len, err, err_len);
    if (st != QVL_OK)
        return st;
    st = qvl_pp_config_parse_named(buf, len, path, video, c, err, err_len);
    qvl_free(buf);
    return st;
}

qvl_status qvl_pp_config_load(const char *path, qvl_pp_config *c, char *err, size_t err_len) {
    return load_impl(path, false, c, err, err_len);
}

qvl_status qvl_pp_config_load_video(const char *path, qvl_pp_config *c, char *err, size_t err_len) {
    return load_impl(path, true, c, err, err_len);
}

/* ---- pixel_values --------------------------------------------------------- */

void qvl_pixels_free(qvl_pixels *p) {
    if (!p)
        return;
    qvl_free(p->data);
    memset(p, 0, sizeof *p);
}

/* u8 -> float for each channel, in the float32 arithmetic of the chosen reference path. */
static void build_lut(const qvl_pp_config *c, qvl_pp_norm norm, float lut[3][256]) {
    for (int ch = 0; ch < 3; ch++) {
        for (int u = 0; u < 256; u++) {
            float v;
            if (norm == QVL_PP_NORM_FUSED) {
                if (c->do_rescale && c->do_normalize) {
                    float m = (float)(c->mean[ch] * (1.0 / c->rescale));
                    float s = (float)(c->std[ch] * (1.0 / c->rescale));
                    v = ((float)u - m) / s;
                } else if (c->do_rescale) {
                    v = (float)u * (float)c->rescale;
                } else if (c->do_normalize) {
                    v = ((float)u - (float)c->mean[ch]) / (float)c->std[ch];
                } else {
                    v = (float)u;
                }
            } else {
                /* rescale in float64, cast to float32, normalise in float32 */
                float r = c->do_rescale ? (float)((double)u * c->rescale) : (float)u;
                v = c->do_normalize ? (r - (float)c->mean[ch]) / (float)c->std[ch] : r;
            }
            lut[ch][u] = v;
        }
    }
}

qvl_status qvl_pp_flatten(const qvl_rgb *frames, int n_frames, const qvl_pp_config *c,
                          qvl_pp_norm norm, qvl_pixels *out, char *err, size_t err_len) {
    if (out)
        memset(out, 0, sizeof *out);
    if (!frames || n_frames <= 0 || !c || !out) {
        qvl_errf(err, err_len, "flatten: no frames");
        return QVL_E_INVAL;
    }
    const int P = c->patch;
    const int M = c->merge;
    const int T = c->temporal_patch;
    if (P <= 0 || M <= 0 || T <= 0) {
        qvl_errf(err, err_len, "flatten: bad patch/merge/temporal sizes");
        return QVL_E_INVAL;
    }
    const int H = frames[0].h;
    const int W = frames[0].w;
    for (int i = 0; i < n_frames; i++) {
        if (!frames[i].data || frames[i].w != W || frames[i].h != H) {
            qvl_errf(err, err_len, "flatten: frame %d is %dx%d, expected %dx%d", i, frames[i].w,
                     frames[i].h, W, H);
            return QVL_E_INVAL;
        }
    }
    int64_t unit = (int64_t)P * M;
    if (H <= 0 || W <= 0 || H % unit || W % unit) {
        qvl_errf(err, err_len,
                 "flatten: image size %dx%d is not a multiple of patch_size*merge_size = %lld "
                 "(enable do_resize)",
                 W, H, (long long)unit);
        return QVL_E_INVAL;
    }
    int64_t F = ((int64_t)n_frames + T - 1) / T * T;
    int64_t gt = F / T;
    int64_t gh = H / P;
    int64_t gw = W / P;
    int64_t rows = gt * gh * gw;
    int64_t cols = 3 * (int64_t)T * P * P;
    size_t n = 0;
    if (!qvl_size_mul((size_t)rows, (size_t)cols, &n) || !qvl_size_mul(n, sizeof(float), &n)) {
        qvl_errf(err, err_len, "flatten: pixel_values too large");
        return QVL_E_LIMIT;
    }
    float *data = qvl_malloc(n);
    if (!data) {
        qvl_errf(err, err_len, "flatten: out of memory for pixel_values [%lld, %lld]",
                 (long long)rows, (long long)cols);
        return QVL_E_NOMEM;
    }
    float lut[3][256];
    build_lut(c, norm, lut);
    const int64_t bhn = gh / M;
    const int64_t bwn = gw / M;
    for (int64_t tt = 0; tt < gt; tt++)
        for (int64_t bh = 0; bh < bhn; bh++)
            for (int64_t bw = 0; bw < bwn; bw++)
                for (int mh = 0; mh < M; mh++)
                    for (int mw = 0; mw < M; mw++) {
                        int64_t r = (((tt * bhn + bh) * bwn + bw) * M + mh) * M + mw;
                        float *dst = data + (size_t)r * (size_t)cols;
                        int64_t y0 = (bh * M + mh) * P;
                        int64_t x0 = (bw * M + mw) * P;
                        for (int ch = 0; ch < 3; ch++)
                            for (int tp = 0; tp < T; tp++) {
                                int64_t fi = tt * T + tp;
                                if (fi >= n_frames)
                                    fi = n_frames - 1; /* pad by repeating the last frame */
                                const uint8_t *img = frames[fi].data;
                                for (int ph = 0; ph < P; ph++) {
                                    const uint8_t *src =
                                        img + ((size_t)(y0 + ph) * (size_t)W + (size_t)x0) * 3 + ch;
                                    for (int pw = 0; pw < P; pw++)
                                        *dst++ = lut[ch][src[3 * pw]];
                                }
                            }
                    }
    out->n_rows = rows;
    out->n_cols = cols;
    out->data = data;
    out->grid_t = (int)gt;
    out->grid_h = (int)gh;
    out->grid_w = (int)gw;
    out->n_tokens = rows / ((int64_t)M * M);
    return QVL_OK;
}

qvl_status qvl_img_preprocess(const qvl_rgb *img, const qvl_pp_config *c, int64_t min_pixels,
                              int64_t max_pixels, qvl_resampler rs, qvl_pixels *out, char *err,
                              size_t err_len) {
    if (out)
        memset(out, 0, sizeof *out);
    if (!img || !img->data || img->w <= 0 || img->h <= 0 || !c || !out) {
        qvl_errf(err, err_len, "image preprocess: no image");
        return QVL_E_INVAL;
    }
    if (min_pixels <= 0)
        min_pixels = c->min_pixels;
    if (max_pixels <= 0)
        max_pixels = c->max_pixels;
    int th = img->h;
    int tw = img->w;
    if (c->do_resize) {
        int64_t factor = (int64_t)c->patch * c->merge;
        if (factor > INT_MAX) {
            qvl_errf(err, err_len, "image preprocess: bad patch/merge sizes");
            return QVL_E_INVAL;
        }
        qvl_status st = qvl_smart_resize(img->h, img->w, (int)factor, min_pixels, max_pixels, &th,
                                         &tw, err, err_len);
        if (st != QVL_OK)
            return st;
    }
    qvl_rgb resized = {0};
    const qvl_rgb *use = img;
    if (th != img->h || tw != img->w) {
        qvl_status st = qvl_img_resize_bicubic_rs(img, tw, th, rs, &resized);
        if (st != QVL_OK) {
            qvl_errf(err, err_len, "image preprocess: resize %dx%d -> %dx%d failed: %s", img->w,
                     img->h, tw, th, qvl_status_str(st));
            return st;
        }
        use = &resized;
    }
    qvl_pp_norm norm = rs == QVL_RESAMPLER_TORCH ? QVL_PP_NORM_FUSED : QVL_PP_NORM_IMAGE;
    qvl_status st = qvl_pp_flatten(use, 1, c, norm, out, err, err_len);
    qvl_rgb_free(&resized);
    return st;
}
