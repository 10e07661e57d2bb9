/* preproc.h - Qwen3-VL image/video processor: preprocessor_config.json and
 * video_preprocessor_config.json parsing, and the RGB -> pixel_values pipeline (smart_resize,
 * bicubic resize, rescale + normalise, temporal padding, merge-group flattening; spec 3.1-3.8).
 * Internal to libqvl. */
#ifndef QVL_PREPROC_H
#define QVL_PREPROC_H

#include "image.h"

/* Processor settings; field meanings follow the Hugging Face keys. */
typedef struct qvl_pp_config {
    int64_t min_pixels; /* size.shortest_edge, overridden by legacy "min_pixels" */
    int64_t max_pixels; /* size.longest_edge, overridden by legacy "max_pixels" */
    int patch;          /* patch_size */
    int temporal_patch; /* temporal_patch_size */
    int merge;          /* merge_size */
    double mean[3];     /* image_mean */
    double std[3];      /* image_std */
    double rescale;     /* rescale_factor */
    bool do_resize;
    bool do_rescale;
    bool do_normalize;
    /* video processor only (parsed when present, defaults otherwise) */
    double fps;     /* sampling rate, default 2 */
    int min_frames; /* default 4 */
    int max_frames; /* default 768 */
} qvl_pp_config;

/* Released Qwen3-VL image processor values (spec 3.1): min 65536, max 16777216, patch 16,
 * temporal 2, merge 2, mean = std = 0.5, rescale 1/255, do_* true. */
void qvl_pp_config_default(qvl_pp_config *c);
/* Qwen3VLVideoProcessor defaults: as above but min 4096, max 25165824. */
void qvl_pp_config_default_video(qvl_pp_config *c);

/* Parse a preprocessor_config.json held in memory: keys missing (or null) take the
 * qvl_pp_config_default values. `name` labels messages (NULL: "preprocessor config").
 * Malformed JSON, a wrong type or an out-of-range value is QVL_E_FORMAT naming the key;
 * a resample filter other than bicubic (3) is QVL_E_UNSUPPORTED. *c is written only on success. */
qvl_status qvl_pp_config_parse(const char *json, size_t len, qvl_pp_config *c, char *err,
                               size_t err_len);
qvl_status qvl_pp_config_parse_named(const char *json, size_t len, const char *name, bool video,
                                     qvl_pp_config *c, char *err, size_t err_len);
/* Load and parse a file. A missing file is QVL_E_IO (the caller decides whether to fall back
 * to the defaults). */
qvl_status qvl_pp_config_load(const char *path, qvl_pp_config *c, char *err, size_t err_len);
/* Same for video_preprocessor_config.json: missing keys take the video defaults. */
qvl_status qvl_pp_config_load_video(const char *path, qvl_pp_config *c, char *err, size_t err_len);

/* pixel_values of one image or video: [n_rows, n_cols] float32 with
 * n_rows = grid_t*grid_h*grid_w, n_cols = 3*temporal_patch*patch*patch. */
typedef struct qvl_pixels {
    int64_t n_rows;
    int64_t n_cols;
    float *data; /* qvl_malloc'd */
    int grid_t;
    int grid_h;
    int grid_w;
    int64_t n_tokens; /* n_rows / merge^2: number of <|image_pad|> (or <|video_pad|>) tokens */
} qvl_pixels;

/* How u8 becomes float. IMAGE: the PIL-path image processor, v = ((float)(u8 * rescale in
 * double) - (float)mean) / (float)std in float32 (reproduces the golden pixel_values exactly).
 * FUSED: the torchvision/video path, v = ((float)u8 - (float)(mean/rescale)) /
 * (float)(std/rescale), i.e. (u8 - 127.5f) / 127.5f for the released values. */
typedef enum qvl_pp_norm {
    QVL_PP_NORM_IMAGE = 0,
    QVL_PP_NORM_FUSED = 1,
} qvl_pp_norm;

/* Full image pipeline: smart_resize (factor = patch*merge; min/max_pixels 0 = from config),
 * bicubic resize, normalise, duplicate to temporal_patch frames, flatten. rs picks the
 * reference: PIL (Pillow's bicubic, QVL_PP_NORM_IMAGE) or TORCH (PyTorch's uint8 bicubic,
 * QVL_PP_NORM_FUSED: the Fast image processor).
 * With do_resize false the image must already be a multiple of patch*merge (else QVL_E_INVAL).
 * Errors also: QVL_E_LIMIT (aspect ratio), QVL_E_NOMEM. `out` is zeroed on failure. */
qvl_status qvl_img_preprocess(const qvl_rgb *img, const qvl_pp_config *c, int64_t min_pixels,
                              int64_t max_pixels, qvl_resampler rs, qvl_pixels *out, char *err,
                              size_t err_len);

/* Normalise and flatten already-resized frames (all the same size, sides multiples of
 * patch*merge) into pixel_values (spec 3.7): the frame count is padded to a multiple of
 * temporal_patch by repeating the last frame, rows come in merge-group order and each row is
 * (channel, frame-in-pair, patch-row, patch-column). Used by images (1 frame) and video. */
qvl_status qvl_pp_flatten(const qvl_rgb *frames, int n_frames, const qvl_pp_config *c,
                          qvl_pp_norm norm, qvl_pixels *out, char *err, size_t err_len);

/* Free the data and zero the struct. NULL is a no-op. */
void qvl_pixels_free(qvl_pixels *p);

#endif /* QVL_PREPROC_H */
