/* vit.h - the vision tower: pixel rows of one image (or video) grid to merged features and
 * DeepStack features. */
#ifndef QVL_VIT_H
#define QVL_VIT_H

#include "model.h"
#include "pool.h"

/* Encode one grid (gt, gh, gw). pixels: [gt*gh*gw, C*T*P*P] in merge-group order.
 * feat: [n, out_hidden]; ds: [n_deepstack, n, out_hidden], n = gt*gh*gw / merge^2.
 * Activations are allocated for this image only and freed before returning. */
/* Optional progress: called after each block with (blocks done, depth); non-zero cancels. */
typedef struct qvl_vit_cb {
    int (*fn)(void *user, int done, int total);
    void *user;
} qvl_vit_cb;
qvl_status qvl_vit_encode(const qvl_model *m, qvl_pool *pool, const float *pixels, int gt, int gh,
                          int gw, float *feat, float *ds, const qvl_vit_cb *cb, char *err,
                          size_t err_len);
size_t qvl_vit_scratch_floats(const qvl_model *m, int64_t n_patches);

#endif
