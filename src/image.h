/* image.h - image decoding (JPEG, PNG, WebP from memory or file into 8-bit RGB), the Qwen
 * smart_resize target-size rule and Pillow's exact antialiased bicubic resampler (spec 3.2-3.4).
 * Internal to libqvl. */
#ifndef QVL_IMAGE_H
#define QVL_IMAGE_H

#include "qvl.h"
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* An 8-bit RGB image, row-major [h][w][3]; data comes from qvl_malloc. */
typedef struct qvl_rgb {
    int w;
    int h;
    uint8_t *data;
} qvl_rgb;

/* Limits checked on the header before any pixel memory is allocated. */
typedef struct qvl_img_limits {
    uint64_t max_pixels; /* w*h above this: QVL_E_LIMIT (0 = no limit) */
    double max_aspect;   /* max(w,h)/min(w,h) above this: QVL_E_LIMIT (<= 0: no limit) */
    bool ignore_exif;    /* keep the stored pixel order, whatever the EXIF Orientation says */
    bool drop_alpha;     /* RGBA: keep the stored colours (transformers' convert("RGB")) instead
                            of compositing onto white (qwen-vl-utils, vLLM) */
} qvl_img_limits;

#define QVL_IMG_DEFAULT_MAX_PIXELS ((uint64_t)64 * 1024 * 1024)
#define QVL_IMG_DEFAULT_MAX_ASPECT 200.0

/* Defaults: 64 Mi pixels, aspect ratio 200 (the reference processor's own limit), EXIF
 * orientation applied. */
qvl_img_limits qvl_img_limits_default(void);

typedef enum qvl_img_format {
    QVL_IMG_UNKNOWN = 0,
    QVL_IMG_JPEG,
    QVL_IMG_PNG,
    QVL_IMG_WEBP,
    QVL_IMG_GIF,  /* recognised only to say it is unsupported */
    QVL_IMG_BMP,  /* idem */
    QVL_IMG_TIFF, /* idem */
} qvl_img_format;

/* Format from the magic bytes (never from a file name). */
qvl_img_format qvl_img_detect(const void *buf, size_t len);

/* Decode a JPEG, PNG or WebP image held in memory into 8-bit RGB.
 * Conversions (matching PIL + transformers' convert_to_rgb): grayscale is replicated; palette is
 * expanded; alpha (RGBA, gray+alpha, palette or gray tRNS) is composited onto opaque white with
 * out = floor((2*(c*a + 255*(255-a)) + 255) / 510), i.e. c*a/255 + 255*(255-a)/255 rounded half
 * up, which equals Pillow's Image.alpha_composite over white for every (c, a); a tRNS colour key
 * on truecolour PNG is ignored (the reference keeps RGB images as they are); 16-bit samples keep
 * their high byte (value >> 8, libpng's png_set_strip_16); CMYK/YCCK JPEGs are converted as
 * PIL's CMYK->RGB (inverted when an Adobe marker is present). The EXIF Orientation tag (JPEG
 * APP1, PNG eXIf, WebP EXIF chunk; read with libexif) turns the image upright as PIL's
 * ImageOps.exif_transpose does, which transformers' load_image applies to every image it is
 * given as a path, URL or base64 string; lim->ignore_exif keeps the stored order (as PIL images
 * passed to the processor directly, and qwen-vl-utils). The limits apply to the stored size.
 * Limits (`lim` may be NULL for the defaults) are checked on the header dimensions before any
 * pixel buffer is allocated. Errors: QVL_E_FORMAT (unknown signature, corrupt or truncated
 * data), QVL_E_UNSUPPORTED (GIF/BMP/TIFF, animated WebP, unknown JPEG colour space),
 * QVL_E_LIMIT (too many pixels, aspect ratio, zero size), QVL_E_NOMEM. On failure out->data is
 * NULL and `err` holds a message. The caller releases a decoded image with qvl_rgb_free. */
qvl_status qvl_img_decode_mem(const void *buf, size_t len, const qvl_img_limits *lim, qvl_rgb *out,
                              char *err, size_t err_len);

/* As qvl_img_decode_mem on the contents of `path` (messages are prefixed with the path).
 * A missing or unreadable file is QVL_E_IO. */
qvl_status qvl_img_decode_file(const char *path, const qvl_img_limits *lim, qvl_rgb *out, char *err,
                               size_t err_len);

/* Free the pixels and zero the struct. NULL is a no-op. */
void qvl_rgb_free(qvl_rgb *im);

/* The Qwen smart_resize rule (spec 3.3): target (out_h, out_w), multiples of `factor`, with
 * h*w kept within [min_pixels, max_pixels], computed in doubles with Python's half-to-even
 * rounding. Errors: QVL_E_LIMIT "absolute aspect ratio must be smaller than 200, got <r>"
 * (the reference's text), QVL_E_INVAL for non-positive sizes or factor, or when the rule yields
 * a zero side (only possible with min_pixels == 0). */
qvl_status qvl_smart_resize(int64_t h, int64_t w, int factor, int64_t min_pixels,
                            int64_t max_pixels, int *out_h, int *out_w, char *err, size_t err_len);

/* Image-token budget to a pixel budget: tokens * factor * factor (factor 32 for Qwen3-VL). */
int64_t qvl_img_tokens_to_pixels(int64_t tokens, int factor);

/* Which bicubic: Pillow's Image.resize(BICUBIC) (the PIL image processor, qwen-vl-utils) or
 * PyTorch's uint8 antialiased bicubic interpolate (torchvision's resize of uint8 tensors: the
 * Fast image processor and the video processor). See coeffs_make in image.c. */
typedef enum qvl_resampler {
    QVL_RESAMPLER_PIL = 0,
    QVL_RESAMPLER_TORCH = 1,
} qvl_resampler;

/* Resize `src` to out_w x out_h with Pillow's antialiased BICUBIC filter (Resample.c, 8-bit
 * integer path, bit-exact): horizontal pass first over the needed source rows into a uint8
 * intermediate, then the vertical pass; a pass whose size is unchanged is skipped (same size:
 * plain copy). `dst` receives a new image (qvl_rgb_free). Errors: QVL_E_INVAL, QVL_E_NOMEM. */
qvl_status qvl_img_resize_bicubic(const qvl_rgb *src, int out_w, int out_h, qvl_rgb *dst);

/* As qvl_img_resize_bicubic with the chosen resampler. PyTorch's kernel runs the same two
 * passes in the same order (its horizontal pass covers every source row, which changes no
 * value). */
qvl_status qvl_img_resize_bicubic_rs(const qvl_rgb *src, int out_w, int out_h, qvl_resampler rs,
                                     qvl_rgb *dst);

/* The public option (qvl_resample) as a resampler, DEFAULT giving dflt; false for a value
 * outside the enum. */
static inline bool qvl_resampler_of(qvl_resample r, qvl_resampler dflt, qvl_resampler *out) {
    switch (r) {
    case QVL_RESAMPLE_DEFAULT:
        *out = dflt;
        return true;
    case QVL_RESAMPLE_PIL:
        *out = QVL_RESAMPLER_PIL;
        return true;
    case QVL_RESAMPLE_TORCHVISION:
        *out = QVL_RESAMPLER_TORCH;
        return true;
    }
    return false;
}

#endif /* QVL_IMAGE_H */
