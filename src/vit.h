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

/* Activation memory a caller keeps between encodes (a context: {NULL, 0} at first, released
 * with qvl_free_big(p, n)), so that later images of up to the same size reuse pages already
 * faulted in instead of fresh ones. Buffers over QVL_VIT_KEEP_MAX bytes are not kept. */
typedef struct qvl_vit_scratch {
    void *p;
    size_t n;
} qvl_vit_scratch;
#define QVL_VIT_KEEP_MAX ((size_t)256 << 20)

/* Encode one grid (gt, gh, gw). pixels: [gt*gh*gw, C*T*P*P] in merge-group order.
 * feat: [n, out_hidden]; ds: [n_deepstack, n, out_hidden], n = gt*gh*gw / merge^2.
 * Activations are sized for this image: taken from keep when it is large enough, else
 * allocated (and faulted in by the pool's threads), then kept in keep when keep is given and
 * they are at most QVL_VIT_KEEP_MAX bytes (the previous buffer is released), else freed before
 * returning. */
qvl_status qvl_vit_encode(const qvl_model *m, qvl_pool *pool, const float *pixels, int gt, int gh,
                          int gw, float *feat, float *ds, const qvl_vit_cb *cb,
                          qvl_vit_scratch *keep, char *err, size_t err_len);
size_t qvl_vit_scratch_floats(const qvl_model *m, int64_t n_patches);

#endif
