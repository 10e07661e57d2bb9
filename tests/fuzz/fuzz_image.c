/* fuzz_image.c - libFuzzer target for image decoding (JPEG, PNG, WebP, and the refusal of
 * GIF/BMP/TIFF; the format comes from the magic bytes) followed by the Qwen3-VL preprocessing
 * (smart_resize, Pillow bicubic resize, normalise, flatten) and a free-size bicubic resize.
 * Input: two option bytes, then the file image.
 *   byte 0: bits 0-1 decode pixel cap (4 Ki, 64 Ki, 256 Ki, 1 Mi pixels), bit 2 aspect cap
 *           4 instead of 200, bits 3-4 preprocess max_pixels (1 Ki .. 64 Ki pixels), bit 5
 *           do_resize off, bit 6 temporal_patch 1, bit 7 merge 1.
 *   byte 1: target of the extra resize: width 1 + (b & 15) * 5, height 1 + (b >> 4) * 5;
 *           bit 0 also drops alpha instead of compositing it.
 * Limits stay small so a tiny compressed file cannot make one run slow. Any status is fine;
 * crashes, leaks, sanitizer reports and broken postconditions are not. Seeds:
 * tests/fuzz/corpus/image/. */
#include "image.h"
#include "preproc.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_pixels(const qvl_pixels *px, const qvl_pp_config *c) {
    int64_t cols = 3LL * c->temporal_patch * c->patch * c->patch;
    if (!px->data || px->n_cols != cols ||
        px->n_rows != (int64_t)px->grid_t * px->grid_h * px->grid_w ||
        px->n_tokens * c->merge * c->merge != px->n_rows)
        abort();
    /* touch the first and last values so ASan checks the buffer really has that size */
    volatile float a = px->data[0];
    volatile float b = px->data[px->n_rows * px->n_cols - 1];
    (void)a;
    (void)b;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 2)
        return 0;
    static const uint64_t caps[4] = {1u << 12, 1u << 16, 1u << 18, 1u << 20};
    static const int64_t pp_max[4] = {1024, 4096, 16384, 65536};
    const uint8_t o0 = data[0];
    const uint8_t o1 = data[1];
    const size_t n = size - 2;
    /* exactly sized heap copy so ASan sees any over-read by the decoders */
    uint8_t *buf = malloc(n ? n : 1);
    if (!buf)
        return 0;
    memcpy(buf, data + 2, n);

    char err[512];
    qvl_img_limits lim = {caps[o0 & 3], (o0 & 4) ? 4.0 : QVL_IMG_DEFAULT_MAX_ASPECT, false,
                          (o1 & 1) != 0};
    qvl_rgb img = {0};
    qvl_status s = qvl_img_decode_mem(buf, n, &lim, &img, err, sizeof err);
    free(buf);
    if (s != QVL_OK) {
        if (img.data)
            abort(); /* out->data must be NULL on failure */
        return 0;
    }
    if (img.w <= 0 || img.h <= 0 || (uint64_t)img.w * (uint64_t)img.h > lim.max_pixels)
        abort();
    volatile uint8_t last = img.data[(size_t)img.w * (size_t)img.h * 3 - 1];
    (void)last;

    qvl_pp_config c;
    qvl_pp_config_default(&c);
    c.do_resize = !(o0 & 32);
    if (o0 & 64)
        c.temporal_patch = 1;
    if (o0 & 128)
        c.merge = 1;
    int64_t mx = pp_max[(o0 >> 3) & 3];
    int64_t mn = mx / 4 < 256 ? 256 : mx / 4;
    qvl_pixels px = {0};
    /* without resizing, only small images are flattened as they are (the size is the cost) */
    if (c.do_resize || (uint64_t)img.w * (uint64_t)img.h <= 65536) {
        s = qvl_img_preprocess(&img, &c, mn, mx, (qvl_resampler)(n & 1), &px,
                               err, sizeof err);
        if (s == QVL_OK)
            check_pixels(&px, &c);
        else if (px.data)
            abort();
        qvl_pixels_free(&px);
    }

    int tw = 1 + (o1 & 15) * 5;
    int th = 1 + (o1 >> 4) * 5;
    for (int rs = 0; rs < 2; rs++) {
        qvl_rgb small = {0};
        if (qvl_img_resize_bicubic_rs(&img, tw, th, (qvl_resampler)rs, &small) == QVL_OK) {
            if (small.w != tw || small.h != th || !small.data)
                abort();
            volatile uint8_t z = small.data[(size_t)tw * (size_t)th * 3 - 1];
            (void)z;
        }
        qvl_rgb_free(&small);
    }
    qvl_rgb_free(&img);
    return 0;
}
