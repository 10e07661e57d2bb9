/* video.c - video input as the reference video processor sees it (spec section 11): frame
 * sampling at `fps` (default 2) with min/max frame counts, the T x H x W pixel budget of the
 * video smart_resize, fused normalisation, pairing into temporal patches, and the timestamp of
 * each pair. Frames come from a directory of images (with their frame rate) or from a video file
 * decoded with FFmpeg (video_ff.c), decoding only the sampled frames.
 *
 * Resampling: frames are resized as the reference video processor does, with torchvision's
 * resize of uint8 frames (PyTorch's uint8 antialiased bicubic, image.c), unless the options ask
 * for Pillow's. */
#include "video.h"
#include "image.h"
#include "ctx.h"
#include "model.h"
#include "video_ff.h"

#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* ---- sampling and sizing ----------------------------------------------------------------- */

qvl_status qvl_video_sample(int64_t total, double video_fps, double fps, int min_frames,
                            int max_frames, int64_t **indices, int64_t *n_out, char *err,
                            size_t err_len) {
    *indices = NULL;
    *n_out = 0;
    if (total <= 0) {
        qvl_errf(err, err_len, "the video has no frames");
        return QVL_E_FORMAT;
    }
    if (!(video_fps > 0))
        video_fps = 24; /* the reference's assumption when the rate is unknown */
    if (!(fps > 0) || min_frames < 1 || max_frames < min_frames) {
        qvl_errf(err, err_len, "bad sampling parameters (fps %g, frames %d..%d)", fps,
                 min_frames, max_frames);
        return QVL_E_INVAL;
    }
    double want = (double)total / video_fps * fps;
    int64_t n = want > 1e15 ? (int64_t)1e15 : (int64_t)want; /* int() truncation */
    if (n < min_frames)
        n = min_frames;
    if (n > max_frames)
        n = max_frames;
    if (n > total)
        n = total;
    int64_t *idx = qvl_malloc((size_t)n * sizeof *idx);
    if (!idx)
        return QVL_E_NOMEM;
    for (int64_t i = 0; i < n; i++) {
        /* numpy linspace: start + i * step, the last element exactly stop; round half to even */
        double v = n > 1 ? (double)i * ((double)(total - 1) / (double)(n - 1)) : 0.0;
        if (i == n - 1)
            v = (double)(total - 1);
        idx[i] = (int64_t)nearbyint(v);
    }
    *indices = idx;
    *n_out = n;
    return QVL_OK;
}

qvl_status qvl_video_smart_resize(int64_t n_frames, int64_t h, int64_t w, int factor,
                                  int temporal, int64_t min_pixels, int64_t max_pixels,
                                  int *out_h, int *out_w, char *err, size_t err_len) {
    if (n_frames < temporal) {
        qvl_errf(err, err_len, "t:%lld must be larger than temporal_factor:%d",
                 (long long)n_frames, temporal);
        return QVL_E_INVAL;
    }
    if (h <= 0 || w <= 0) {
        qvl_errf(err, err_len, "bad frame size %lldx%lld", (long long)w, (long long)h);
        return QVL_E_INVAL;
    }
    double hh = (double)h, ww = (double)w;
    if (h < factor || w < factor) { /* small sides are scaled up first (int() truncation) */
        double scale = fmax((double)factor / hh, (double)factor / ww);
        hh = floor(hh * scale);
        ww = floor(ww * scale);
    }
    double ratio = fmax(hh, ww) / fmin(hh, ww);
    if (ratio > 200) {
        qvl_errf(err, err_len, "absolute aspect ratio must be smaller than 200, got %g", ratio);
        return QVL_E_LIMIT;
    }
    double hb = nearbyint(hh / factor) * factor, wb = nearbyint(ww / factor) * factor;
    double tb = nearbyint((double)n_frames / temporal) * temporal;
    if (tb * hb * wb > (double)max_pixels) {
        double beta = sqrt((double)n_frames * hh * ww / (double)max_pixels);
        hb = fmax(factor, floor(hh / beta / factor) * factor);
        wb = fmax(factor, floor(ww / beta / factor) * factor);
    } else if (tb * hb * wb < (double)min_pixels) {
        double beta = sqrt((double)min_pixels / ((double)n_frames * hh * ww));
        hb = ceil(hh * beta / factor) * factor;
        wb = ceil(ww * beta / factor) * factor;
    }
    if (hb < factor || wb < factor || hb > 1e6 || wb > 1e6) {
        qvl_errf(err, err_len, "video frames of %lldx%lld cannot be resized within the budget",
                 (long long)w, (long long)h);
        return QVL_E_LIMIT;
    }
    *out_h = (int)hb;
    *out_w = (int)wb;
    return QVL_OK;
}

/* The model's video processor config, or the released defaults when there is no model. */
static qvl_pp_config vcfg(const qvl_model *m) {
    qvl_pp_config c;
    if (m)
        return m->vpp;
    qvl_pp_config_default_video(&c);
    return c;
}

/* ---- the video object -------------------------------------------------------------------- */

static qvl_status video_new(const qvl_model *m, const qvl_video_opts *o, int64_t total,
                            double src_fps, qvl_video **out, char *err, size_t err_len) {
    qvl_resampler rs; /* the video processor has only the torchvision path */
    if (!qvl_resampler_of(o ? o->resample : QVL_RESAMPLE_DEFAULT, QVL_RESAMPLER_TORCH, &rs)) {
        qvl_errf(err, err_len, "video options: unknown resample %d", (int)o->resample);
        return QVL_E_INVAL;
    }
    const qvl_pp_config vcv = vcfg(m), *vc = &vcv;
    double fps = o && o->fps > 0 ? o->fps : vc->fps;
    int mn = o && o->min_frames > 0 ? o->min_frames : vc->min_frames;
    int mx = o && o->max_frames > 0 ? o->max_frames : vc->max_frames;
    if (mn > mx)
        mn = mx;
    qvl_video *v = qvl_calloc(1, sizeof *v);
    if (!v)
        return QVL_E_NOMEM;
    v->total = total;
    v->src_fps = src_fps > 0 ? src_fps : 24;
    v->min_pixels = o && o->min_pixels > 0 ? o->min_pixels : vc->min_pixels;
    v->max_pixels = o && o->max_pixels > 0 ? o->max_pixels : vc->max_pixels;
    v->resampler = rs;
    qvl_status s = qvl_video_sample(total, v->src_fps, fps, mn, mx, &v->indices, &v->n, err,
                                    err_len);
    if (s == QVL_OK) {
        v->frames = qvl_calloc((size_t)v->n, sizeof *v->frames);
        if (!v->frames)
            s = QVL_E_NOMEM;
    }
    if (s != QVL_OK) {
        if (s == QVL_E_NOMEM)
            qvl_errf(err, err_len, "out of memory");
        qvl_video_free(v);
        return s;
    }
    *out = v;
    return QVL_OK;
}

void qvl_video_free(qvl_video *v) {
    if (!v)
        return;
    for (int64_t i = 0; v->frames && i < v->n; i++)
        qvl_rgb_free(&v->frames[i]);
    qvl_free(v->frames);
    qvl_free(v->indices);
    qvl_free(v);
}

static qvl_status check_sizes(qvl_video *v, char *err, size_t err_len) {
    for (int64_t i = 1; i < v->n; i++)
        if (v->frames[i].w != v->frames[0].w || v->frames[i].h != v->frames[0].h) {
            qvl_errf(err, err_len, "frame %lld is %dx%d but frame 0 is %dx%d",
                     (long long)v->indices[i], v->frames[i].w, v->frames[i].h, v->frames[0].w,
                     v->frames[0].h);
            return QVL_E_FORMAT;
        }
    return QVL_OK;
}

qvl_status qvl_video_from_frames(const qvl_model *m, qvl_image *const *frames, size_t n,
                                 double fps, const qvl_video_opts *o, qvl_video **out, char *err,
                                 size_t err_len) {
    if (!out)
        return QVL_E_INVAL;
    *out = NULL;
    if (!frames && n) {
        qvl_errf(err, err_len, "video: NULL argument");
        return QVL_E_INVAL;
    }
    qvl_video *v = NULL;
    qvl_status s = video_new(m, o, (int64_t)n, fps, &v, err, err_len);
    if (s != QVL_OK)
        return s;
    for (int64_t i = 0; i < v->n && s == QVL_OK; i++) {
        const qvl_image *f = frames[v->indices[i]];
        size_t bytes = (size_t)f->w * (size_t)f->h * 3;
        v->frames[i].data = qvl_malloc(bytes);
        if (!v->frames[i].data) {
            s = QVL_E_NOMEM;
            qvl_errf(err, err_len, "out of memory");
            break;
        }
        memcpy(v->frames[i].data, f->rgb, bytes);
        v->frames[i].w = f->w;
        v->frames[i].h = f->h;
    }
    if (s == QVL_OK)
        s = check_sizes(v, err, err_len);
    if (s != QVL_OK) {
        qvl_video_free(v);
        return s;
    }
    *out = v;
    return QVL_OK;
}

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static bool is_image_name(const char *n) {
    const char *dot = strrchr(n, '.');
    if (!dot || n[0] == '.')
        return false;
    return !strcasecmp(dot, ".png") || !strcasecmp(dot, ".jpg") || !strcasecmp(dot, ".jpeg") ||
           !strcasecmp(dot, ".webp");
}

/* A directory of frame images, in name order, at frames_fps. Only sampled frames are decoded. */
static qvl_status load_dir(const qvl_model *m, const char *path, double frames_fps,
                           const qvl_video_opts *o, qvl_video **out, char *err, size_t err_len) {
    DIR *d = opendir(path);
    if (!d) {
        qvl_errf(err, err_len, "%s: cannot open directory", path);
        return QVL_E_IO;
    }
    char **names = NULL;
    size_t n = 0, cap = 0;
    qvl_status s = QVL_OK;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (!is_image_name(e->d_name))
            continue;
        if (n == cap) {
            size_t nc = cap ? cap * 2 : 64;
            if (nc > 1000000) {
                s = QVL_E_LIMIT;
                qvl_errf(err, err_len, "%s: more than a million frames", path);
                break;
            }
            char **nn = qvl_realloc(names, nc * sizeof *nn);
            if (!nn) {
                s = QVL_E_NOMEM;
                break;
            }
            names = nn;
            cap = nc;
        }
        names[n] = qvl_path_join(path, e->d_name);
        if (!names[n]) {
            s = QVL_E_NOMEM;
            break;
        }
        n++;
    }
    closedir(d);
    qvl_video *v = NULL;
    if (s == QVL_OK && n == 0) {
        qvl_errf(err, err_len, "%s: no frame images (.png, .jpg, .webp) in the directory", path);
        s = QVL_E_FORMAT;
    }
    if (s == QVL_OK && !(frames_fps > 0)) {
        qvl_errf(err, err_len, "%s: a directory of frames needs their frame rate (fps)", path);
        s = QVL_E_INVAL;
    }
    if (s == QVL_OK) {
        qsort(names, n, sizeof *names, cmp_str);
        s = video_new(m, o, (int64_t)n, frames_fps, &v, err, err_len);
    }
    for (int64_t i = 0; s == QVL_OK && i < v->n; i++) {
        /* a repeated index reuses the previous decode */
        if (i > 0 && v->indices[i] == v->indices[i - 1]) {
            size_t bytes = (size_t)v->frames[i - 1].w * v->frames[i - 1].h * 3;
            v->frames[i].data = qvl_malloc(bytes);
            if (!v->frames[i].data) {
                s = QVL_E_NOMEM;
                break;
            }
            memcpy(v->frames[i].data, v->frames[i - 1].data, bytes);
            v->frames[i].w = v->frames[i - 1].w;
            v->frames[i].h = v->frames[i - 1].h;
            continue;
        }
        qvl_img_limits lim = qvl_img_limits_default();
        lim.ignore_exif = o && (o->image_flags & QVL_IMAGE_IGNORE_EXIF);
        lim.drop_alpha = o && (o->image_flags & QVL_IMAGE_DROP_ALPHA);
        s = qvl_img_decode_file(names[v->indices[i]], &lim, &v->frames[i], err, err_len);
    }
    if (s == QVL_OK)
        s = check_sizes(v, err, err_len);
    for (size_t i = 0; i < n; i++)
        qvl_free(names[i]);
    qvl_free(names);
    if (s != QVL_OK) {
        if (s == QVL_E_NOMEM && err && !err[0])
            qvl_errf(err, err_len, "out of memory");
        qvl_video_free(v);
        return s;
    }
    *out = v;
    return QVL_OK;
}

/* A video file (path) or buffer (data, len): probe, sample, check the decoded-pixel budget,
 * decode the sampled frames. */
static qvl_status load_stream(const qvl_model *m, const char *path, const void *data, size_t len,
                              const qvl_video_opts *o, qvl_video **out, char *err,
                              size_t err_len) {
    qvl_vid_limits lim = qvl_vid_limits_default();
    qvl_vid_info info;
    qvl_status s = path ? qvl_vid_probe_file(path, &lim, &info, err, err_len)
                        : qvl_vid_probe_mem(data, len, &lim, &info, err, err_len);
    if (s != QVL_OK)
        return s;
    qvl_video *v = NULL;
    s = video_new(m, o, info.n_frames, info.fps, &v, err, err_len);
    if (s != QVL_OK)
        return s;
    /* decoded frames have the probed size, so the budget is exact before any decoding */
    uint64_t need = (uint64_t)v->n * (uint64_t)info.width * (uint64_t)info.height;
    if (o && o->max_decoded_pixels && need > o->max_decoded_pixels) {
        qvl_errf(err, err_len,
                 "video: %lld sampled frames of %dx%d are %llu pixels, over the budget of %llu",
                 (long long)v->n, info.width, info.height, (unsigned long long)need,
                 (unsigned long long)o->max_decoded_pixels);
        qvl_video_free(v);
        return QVL_E_LIMIT;
    }
    s = path ? qvl_vid_decode_file(path, &lim, v->indices, (size_t)v->n, v->frames, err, err_len)
             : qvl_vid_decode_mem(data, len, &lim, v->indices, (size_t)v->n, v->frames, err,
                                  err_len);
    if (s == QVL_OK)
        s = check_sizes(v, err, err_len);
    if (s != QVL_OK) {
        qvl_video_free(v);
        return s;
    }
    *out = v;
    return QVL_OK;
}

qvl_status qvl_video_load(const qvl_model *m, const char *path, double frames_fps,
                          const qvl_video_opts *o, qvl_video **out, char *err, size_t err_len) {
    if (!out)
        return QVL_E_INVAL;
    *out = NULL;
    if (!path) {
        qvl_errf(err, err_len, "video: NULL argument");
        return QVL_E_INVAL;
    }
    if (qvl_dir_exists(path))
        return load_dir(m, path, frames_fps, o, out, err, err_len);
    return load_stream(m, path, NULL, 0, o, out, err, err_len);
}

qvl_status qvl_video_load_mem(const qvl_model *m, const void *data, size_t len,
                              const qvl_video_opts *o, qvl_video **out, char *err,
                              size_t err_len) {
    if (!out)
        return QVL_E_INVAL;
    *out = NULL;
    if (!data || len == 0) {
        qvl_errf(err, err_len, "video: no data");
        return QVL_E_INVAL;
    }
    return load_stream(m, NULL, data, len, o, out, err, err_len);
}

/* ---- plan, timestamps, pixels ------------------------------------------------------------ */

qvl_status qvl_video_plan_get(const qvl_model *m, const qvl_video *v, qvl_video_plan *p,
                              char *err, size_t err_len) {
    if (!v || !p)
        return QVL_E_INVAL;
    const qvl_pp_config vcv = vcfg(m), *vc = &vcv;
    int rh = 0, rw = 0;
    qvl_status s = qvl_video_smart_resize(v->n, v->frames[0].h, v->frames[0].w,
                                          vc->patch * vc->merge, vc->temporal_patch,
                                          v->min_pixels, v->max_pixels, &rh, &rw, err, err_len);
    if (s != QVL_OK)
        return s;
    int tp = vc->temporal_patch;
    p->n_frames = (int)v->n;
    p->resized_width = rw;
    p->resized_height = rh;
    p->grid_t = (int)((v->n + tp - 1) / tp);
    p->grid_h = rh / vc->patch;
    p->grid_w = rw / vc->patch;
    p->tokens_per_group = (int64_t)p->grid_h * p->grid_w / (vc->merge * vc->merge);
    p->n_tokens = p->tokens_per_group * p->grid_t;
    p->frame_width = v->frames[0].w;
    p->frame_height = v->frames[0].h;
    return QVL_OK;
}

size_t qvl_video_timestamps(const qvl_model *m, const qvl_video *v, double *ts, size_t cap) {
    if (!v)
        return 0;
    int tp = vcfg(m).temporal_patch;
    size_t groups = (size_t)((v->n + tp - 1) / tp);
    for (size_t k = 0; k < groups && k < cap; k++) {
        /* mean of the group's frame times, summed in order (the padding repeats the last) */
        double sum = 0;
        for (int j = 0; j < tp; j++) {
            int64_t i = (int64_t)k * tp + j;
            int64_t idx = v->indices[i < v->n ? i : v->n - 1];
            sum += (double)idx / v->src_fps;
        }
        ts[k] = sum / tp;
    }
    return groups;
}

qvl_status qvl_video_pixels(const qvl_model *m, const qvl_video *v, qvl_pixels *out, char *err,
                            size_t err_len) {
    qvl_video_plan p;
    qvl_status s = qvl_video_plan_get(m, v, &p, err, err_len);
    if (s != QVL_OK)
        return s;
    qvl_rgb *rs = qvl_calloc((size_t)v->n, sizeof *rs);
    if (!rs)
        return QVL_E_NOMEM;
    bool same = p.resized_width == v->frames[0].w && p.resized_height == v->frames[0].h;
    for (int64_t i = 0; !same && i < v->n && s == QVL_OK; i++)
        s = qvl_img_resize_bicubic_rs(&v->frames[i], p.resized_width, p.resized_height,
                                      v->resampler, &rs[i]);
    if (s == QVL_OK)
        s = qvl_pp_flatten(same ? v->frames : rs, (int)v->n, &m->vpp, QVL_PP_NORM_FUSED, out,
                           err, err_len);
    for (int64_t i = 0; !same && i < v->n; i++)
        qvl_rgb_free(&rs[i]);
    qvl_free(rs);
    return s;
}

/* The prompt text replacing one video's "<|vision_start|><|video_pad|><|vision_end|>": per
 * frame group "<T seconds>" + vision_start + pads + vision_end. Heap string. */
char *qvl_video_prompt_text(const qvl_model *m, const qvl_video *v, char *err, size_t err_len) {
    qvl_video_plan p;
    if (qvl_video_plan_get(m, v, &p, err, err_len) != QVL_OK)
        return NULL;
    double *ts = qvl_malloc((size_t)p.grid_t * sizeof *ts);
    const char *pad = "<|video_pad|>", *vs = "<|vision_start|>", *ve = "<|vision_end|>";
    size_t per = 32 + strlen(vs) + strlen(ve) + (size_t)p.tokens_per_group * strlen(pad);
    char *out = ts ? qvl_malloc(per * (size_t)p.grid_t + 1) : NULL;
    if (!out) {
        qvl_free(ts);
        qvl_errf(err, err_len, "out of memory");
        return NULL;
    }
    qvl_video_timestamps(m, v, ts, (size_t)p.grid_t);
    size_t o = 0;
    for (int k = 0; k < p.grid_t; k++) {
        o += (size_t)sprintf(out + o, "<%.1f seconds>%s", ts[k], vs);
        for (int64_t j = 0; j < p.tokens_per_group; j++) {
            memcpy(out + o, pad, strlen(pad));
            o += strlen(pad);
        }
        memcpy(out + o, ve, strlen(ve));
        o += strlen(ve);
    }
    out[o] = 0;
    qvl_free(ts);
    return out;
}
