/* vit.h - the vision tower: pixel rows of one image (or video) grid to merged features and
 * DeepStack features. */
#ifndef QVL_VIT_H
#define QVL_VIT_H

#include "model.h"
#include "pool.h"

/* Optional progress: called after each block with (blocks done, depth); non-zero cancels. */
typedef struct qvl_vit_cb {
    int (*fn)(void *user, int done, int total);
    void *user;
} qvl_vit_cb;

/* The activations are not kept (keep's buffer released, a one-off buffer used) above this size. */
#define QVL_VIT_KEEP_MAX ((size_t)256 << 20)

/* Encode one grid (gt, gh, gw). pixels: [gt*gh*gw, C*T*P*P] in merge-group order.
 * feat: [n, out_hidden], n = gt*gh*gw / merge^2; DeepStack feature k: [n, out_hidden] at
 * ds + k * ds_stride floats (ds_stride 0: n * out_hidden, the features one after the other).
 * Activations are sized for this image, through keep (qvl_keep_get with QVL_VIT_KEEP_MAX; keep
 * may be NULL: nothing kept). */
qvl_status qvl_vit_encode(const qvl_model *m, qvl_pool *pool, const float *pixels, int gt, int gh,
                          int gw, float *feat, float *ds, int64_t ds_stride, const qvl_vit_cb *cb,
                          qvl_keep *keep, char *err, size_t err_len);
size_t qvl_vit_scratch_floats(const qvl_model *m, int64_t n_patches);

#endif
