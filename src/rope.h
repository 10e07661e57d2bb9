/* rope.h - multimodal position ids (get_rope_index) and interleaved M-RoPE angles. */
#ifndef QVL_ROPE_H
#define QVL_ROPE_H

#include "common.h"

/* A visual block in the prompt: its merged grid is (t, h / merge, w / merge). */
typedef struct qvl_grid {
    int t, h, w; /* in patches, as image_grid_thw */
} qvl_grid;

/* Positions for ids[0..n) (spec 8.4) starting at text position `start`:
 * pos[0*n + s], pos[1*n + s], pos[2*n + s] are the (t, h, w) ids of token s. Image grids are
 * consumed in order at each run of `image_pad` tokens, video grids (already split into one-frame
 * grids) at `video_pad` runs. *next_pos receives max position + 1. Errors when the pads do not
 * match the grids. */
qvl_status qvl_rope_index(const int32_t *ids, int64_t n, int32_t image_pad, int32_t video_pad,
                          const qvl_grid *img, int n_img, const qvl_grid *vid, int n_vid,
                          int merge, int64_t start, int32_t *pos, int64_t *next_pos, char *err,
                          size_t err_len);

/* cos/sin of the interleaved M-RoPE angles for one token: cs, sn get head_dim/2 values. */
void qvl_mrope_angles(const float *inv_freq, int half, const int sections[3], int32_t pt,
                      int32_t ph, int32_t pw, float *cs, float *sn);
/* inv_freq[j] = 1 / theta^(2j / head_dim), j < head_dim / 2, in float32 like the reference. */
void qvl_rope_inv_freq(double theta, int head_dim, float *inv_freq);
/* rotate-half (NeoX) rotation of x[2*half] by the angles. */
void qvl_rope_rotate(float *x, const float *cs, const float *sn, int half);

#endif
