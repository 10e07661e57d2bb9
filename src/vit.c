/* vit.c - the Qwen3-VL vision tower: patch embedding, interpolated learned position embedding,
 * 2D rotary, pre-norm ViT blocks with attention inside each image / temporal patch, DeepStack
 * taps and mergers, and the final 2x2 merger (spec section 4). Float32 activations. */
#include "vit.h"
#include "kern/kern.h"
#include "rope.h"

#include <math.h>
#include <string.h>

/* Interpolated position embedding in merge-group row order (spec 4.2), added to X [N, D]. */
static void add_pos_embed(const qvl_model *m, float *X, int gt, int gh, int gw) {
    const qvl_vision_cfg *vc = &m->cfg.vision;
    const int D = vc->hidden, S = (int)lrint(sqrt((double)vc->num_pos)), M = vc->merge;
    int64_t r = 0;
    for (int tt = 0; tt < gt; tt++)
        for (int bh = 0; bh < gh / M; bh++)
            for (int bw = 0; bw < gw / M; bw++)
                for (int mh = 0; mh < M; mh++)
                    for (int mw = 0; mw < M; mw++, r++) {
                        int i = bh * M + mh, j = bw * M + mw;
                        /* linspace(0, S-1, n) with align_corners semantics, in float32 */
                        float ty = gh > 1 ? (float)i * (float)(S - 1) / (float)(gh - 1) : 0.0f;
                        float tx = gw > 1 ? (float)j * (float)(S - 1) / (float)(gw - 1) : 0.0f;
                        if (i == gh - 1)
                            ty = (float)(S - 1);
                        if (j == gw - 1)
                            tx = (float)(S - 1);
                        int fy = (int)ty, fx = (int)tx;
                        int cy = fy + 1 < S ? fy + 1 : S - 1, cx = fx + 1 < S ? fx + 1 : S - 1;
                        float dy = ty - (float)fy, dx = tx - (float)fx;
                        float w00 = (1 - dy) * (1 - dx), w01 = (1 - dy) * dx;
                        float w10 = dy * (1 - dx), w11 = dy * dx;
                        const float *t00 = m->pos_embed + (int64_t)(fy * S + fx) * D;
                        const float *t01 = m->pos_embed + (int64_t)(fy * S + cx) * D;
                        const float *t10 = m->pos_embed + (int64_t)(cy * S + fx) * D;
                        const float *t11 = m->pos_embed + (int64_t)(cy * S + cx) * D;
                        float *x = X + r * D;
                        for (int d = 0; d < D; d++)
                            x[d] += w00 * t00[d] + w01 * t01[d] + w10 * t10[d] + w11 * t11[d];
                    }
}

/* cos/sin tables [N, hv/2] for the 2D rotary (spec 4.3): first quarter of the head dims rotates
 * with the patch row, second quarter with the patch column. */
static void rope_tables(const qvl_model *m, float *cs, float *sn, int gt, int gh, int gw) {
    const qvl_vision_cfg *vc = &m->cfg.vision;
    const int hv = vc->hidden / vc->n_heads, rdim = hv / 2, nf = rdim / 2, M = vc->merge;
    float inv[512];
    for (int k = 0; k < nf; k++)
        inv[k] = (float)(1.0 / pow(10000.0, (double)(2 * k) / (double)rdim));
    int64_t r = 0;
    for (int tt = 0; tt < gt; tt++)
        for (int bh = 0; bh < gh / M; bh++)
            for (int bw = 0; bw < gw / M; bw++)
                for (int mh = 0; mh < M; mh++)
                    for (int mw = 0; mw < M; mw++, r++) {
                        float row = (float)(bh * M + mh), col = (float)(bw * M + mw);
                        for (int k = 0; k < nf; k++) {
                            float a = row * inv[k], b = col * inv[k];
                            cs[r * rdim + k] = cosf(a);
                            sn[r * rdim + k] = sinf(a);
                            cs[r * rdim + nf + k] = cosf(b);
                            sn[r * rdim + nf + k] = sinf(b);
                        }
                    }
}

/* merger: optional LayerNorm over D per patch row (final) or over 4D per group (DeepStack),
 * then fc1, exact GELU, fc2. in: X [N, D]; out: [N/4, O]. tmp: [N/4, 4D] x2. */
static void run_merger(qvl_pool *pool, const qvl_model *m, const qvl_merger *M, bool post_shuffle,
                       const float *X, int64_t N, float *out, float *t1, float *t2) {
    const qvl_vision_cfg *vc = &m->cfg.vision;
    const int64_t D = vc->hidden, g = (int64_t)vc->merge * vc->merge, D4 = D * g, n = N / g;
    if (post_shuffle) {
        for (int64_t i = 0; i < n; i++)
            qvl_layernorm(t1 + i * D4, X + i * D4, M->norm_w, M->norm_b, D4, 1e-6f);
    } else {
        for (int64_t i = 0; i < N; i++)
            qvl_layernorm(t1 + i * D, X + i * D, M->norm_w, M->norm_b, D, 1e-6f);
    }
    qvl_op_matmul(pool, t2, t1, n, &M->fc1, M->fc1_b);
    qvl_gelu_erf(t2, n * D4);
    qvl_op_matmul(pool, out, t2, n, &M->fc2, M->fc2_b);
}

size_t qvl_vit_scratch_floats(const qvl_model *m, int64_t N) {
    const qvl_vision_cfg *vc = &m->cfg.vision;
    int64_t D = vc->hidden, Iv = vc->intermediate, hv = D / vc->n_heads;
    int64_t chunk = N < 1024 ? N : 1024;
    return (size_t)(N * D * 3      /* X, h, o */
                    + N * 3 * D    /* qkv */
                    + N * hv       /* cos, sin */
                    + chunk * Iv); /* MLP chunk */
}

qvl_status qvl_vit_encode(const qvl_model *m, qvl_pool *pool, const float *pixels, int gt, int gh,
                          int gw, float *feat, float *ds, int64_t ds_stride, const qvl_vit_cb *cb,
                          qvl_keep *keep, char *err, size_t err_len) {
    const qvl_vision_cfg *vc = &m->cfg.vision;
    const int64_t D = vc->hidden, Iv = vc->intermediate, nh = vc->n_heads, hv = D / nh;
    const int64_t M2 = (int64_t)vc->merge * vc->merge;
    if (gt < 1 || gh < 1 || gw < 1 || gh % vc->merge || gw % vc->merge) {
        qvl_errf(err, err_len, "vision: bad grid (%d, %d, %d)", gt, gh, gw);
        return QVL_E_INVAL;
    }
    const int64_t N = (int64_t)gt * gh * gw, seg = (int64_t)gh * gw, n_out = N / M2;
    size_t need = qvl_vit_scratch_floats(m, N);
    size_t bytes;
    if (!qvl_size_mul(need, sizeof(float), &bytes)) {
        qvl_errf(err, err_len, "vision: image too large");
        return QVL_E_LIMIT;
    }
    bool own;
    float *buf = qvl_keep_get(keep, bytes, QVL_VIT_KEEP_MAX, pool, &own);
    if (!buf) {
        qvl_errf(err, err_len, "vision: out of memory (%zu MB of activations for %lld patches)",
                 bytes >> 20, (long long)N);
        return QVL_E_NOMEM;
    }
    if (ds_stride == 0)
        ds_stride = n_out * vc->out_hidden;
    float *X = buf, *h = X + N * D, *o = h + N * D, *qkv = o + N * D, *cs = qkv + N * 3 * D;
    float *sn = cs + N * (hv / 2), *mlp = sn + N * (hv / 2);
    int64_t chunk = N < 1024 ? N : 1024;

    qvl_op_matmul(pool, X, pixels, N, &m->patch_w, m->patch_b);
    add_pos_embed(m, X, gt, gh, gw);
    rope_tables(m, cs, sn, gt, gh, gw);

    const float scale = 1.0f / sqrtf((float)hv);
    for (int b = 0; b < vc->depth; b++) {
        const qvl_vit_block *B = &m->blocks[b];
        for (int64_t i = 0; i < N; i++)
            qvl_layernorm(h + i * D, X + i * D, B->norm1_w, B->norm1_b, D, 1e-6f);
        qvl_op_matmul(pool, qkv, h, N, &B->qkv, B->qkv_b);
        for (int64_t i = 0; i < N; i++)
            for (int64_t a = 0; a < nh; a++) {
                qvl_rope_rotate(qkv + i * 3 * D + a * hv, cs + i * (hv / 2), sn + i * (hv / 2),
                           (int)hv / 2);
                qvl_rope_rotate(qkv + i * 3 * D + D + a * hv, cs + i * (hv / 2), sn + i * (hv / 2),
                           (int)hv / 2);
            }
        for (int tt = 0; tt < gt; tt++) {
            const float *q0 = qkv + tt * seg * 3 * D;
            qvl_op_attn(pool, o + tt * seg * D, D, q0, 3 * D, seg, q0 + D, 3 * D, q0 + 2 * D,
                        3 * D, hv, 0, 0, seg, (int)nh, (int)nh, (int)hv, scale, false, 0,
                        QVL_DT_F32);
        }
        qvl_op_matmul(pool, h, o, N, &B->proj, B->proj_b);
        qvl_add(X, h, N * D);
        for (int64_t i = 0; i < N; i++)
            qvl_layernorm(h + i * D, X + i * D, B->norm2_w, B->norm2_b, D, 1e-6f);
        for (int64_t i0 = 0; i0 < N; i0 += chunk) {
            int64_t n = N - i0 < chunk ? N - i0 : chunk;
            qvl_op_matmul(pool, mlp, h + i0 * D, n, &B->fc1, B->fc1_b);
            if (!strcmp(vc->hidden_act, "gelu"))
                qvl_gelu_erf(mlp, n * Iv);
            else
                qvl_gelu_tanh(mlp, n * Iv);
            qvl_op_matmul(pool, o + i0 * D, mlp, n, &B->fc2, B->fc2_b);
        }
        qvl_add(X, o, N * D);
        /* DeepStack taps after this block (qkv is free here: the mergers' temporaries) */
        for (int k = 0; k < vc->n_deepstack; k++)
            if (vc->deepstack[k] == b)
                run_merger(pool, m, &m->ds_mergers[k], true, X, N,
                           ds + (int64_t)k * ds_stride, qkv, qkv + N * D);
        if (cb && cb->fn && cb->fn(cb->user, b + 1, vc->depth)) {
            if (own)
                qvl_free_big(buf, bytes);
            qvl_errf(err, err_len, "vision encoding cancelled");
            return QVL_E_CANCELLED;
        }
    }
    run_merger(pool, m, &m->merger, false, X, N, feat, qkv, qkv + N * D);
    if (own)
        qvl_free_big(buf, bytes);
    return QVL_OK;
}
