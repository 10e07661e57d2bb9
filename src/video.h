/* video.h - video input: frame sampling, video smart_resize, timestamps, pixel rows. */
#ifndef QVL_VIDEO_H
#define QVL_VIDEO_H

#include "common.h"
#include "image.h"
#include "preproc.h"

struct qvl_model;

/* A sampled video: only the frames the reference processor keeps are held, in order. */
struct qvl_video {
    int64_t total;    /* frames in the source */
    double src_fps;   /* source frame rate (24 if unknown, as the reference assumes) */
    int64_t n;        /* sampled frames */
    int64_t *indices; /* [n] source frame index of each sampled frame */
    qvl_rgb *frames;  /* [n] decoded RGB */
    int64_t min_pixels, max_pixels; /* T x H x W budget of the video smart_resize */
    qvl_resampler resampler;        /* how frames are resized */
};

/* Reference sampling: n = int(total / video_fps * fps) clamped to [min_frames, max_frames] and
 * to total; indices = round-half-even(linspace(0, total - 1, n)). *indices is a heap array. */
qvl_status qvl_video_sample(int64_t total, double video_fps, double fps, int min_frames,
                            int max_frames, int64_t **indices, int64_t *n_out, char *err,
                            size_t err_len);
/* Video smart_resize (spec 11): factor 32, the budget counts T x H x W. */
qvl_status qvl_video_smart_resize(int64_t n_frames, int64_t h, int64_t w, int factor,
                                  int temporal, int64_t min_pixels, int64_t max_pixels,
                                  int *out_h, int *out_w, char *err, size_t err_len);
/* Pixel rows [grid_t * grid_h * grid_w, C*T*P*P] of a video (fused normalisation). */
qvl_status qvl_video_pixels(const struct qvl_model *m, const qvl_video *v, qvl_pixels *out,
                            char *err, size_t err_len);
/* Prompt text that replaces the template's video placeholder (timestamps, pads). Heap. */
char *qvl_video_prompt_text(const struct qvl_model *m, const qvl_video *v, char *err,
                            size_t err_len);

#endif
