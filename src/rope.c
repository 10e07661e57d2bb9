/* rope.c - get_rope_index for text + image/video prompts and the interleaved M-RoPE rotation
 * (spec sections 8.1-8.5). */
#include "rope.h"

#include <math.h>

qvl_status qvl_rope_index(const int32_t *ids, int64_t n, int32_t image_pad, int32_t video_pad,
                          const qvl_grid *img, int n_img, const qvl_grid *vid, int n_vid,
                          int merge, int64_t start, int32_t *pos, int64_t *next_pos, char *err,
                          size_t err_len) {
    int ii = 0, vi = 0;
    int64_t next = start, s = 0;
    while (s < n) {
        if (ids[s] != image_pad && ids[s] != video_pad) {
            pos[s] = pos[n + s] = pos[2 * n + s] = (int32_t)next;
            next++;
            s++;
            continue;
        }
        bool is_img = ids[s] == image_pad;
        const qvl_grid *g = NULL;
        if (is_img && ii < n_img)
            g = &img[ii++];
        else if (!is_img && vi < n_vid)
            g = &vid[vi++];
        if (!g) {
            qvl_errf(err, err_len, "the prompt has more %s blocks than the %d %s given",
                     is_img ? "image" : "video", is_img ? n_img : n_vid,
                     is_img ? "images" : "video frame groups");
            return QVL_E_INVAL;
        }
        int64_t gt = g->t, gh = g->h / merge, gw = g->w / merge, cnt = gt * gh * gw;
        int64_t run = 0;
        while (s + run < n && ids[s + run] == ids[s] && run < cnt)
            run++;
        if (run != cnt) {
            qvl_errf(err, err_len,
                     "%s %d needs %lld placeholder tokens but the prompt has a run of %lld",
                     is_img ? "image" : "video", is_img ? ii : vi, (long long)cnt,
                     (long long)run);
            return QVL_E_INVAL;
        }
        for (int64_t tt = 0; tt < gt; tt++)
            for (int64_t r = 0; r < gh; r++)
                for (int64_t c = 0; c < gw; c++) {
                    int64_t k = s + (tt * gh + r) * gw + c;
                    pos[k] = (int32_t)(next + tt);
                    pos[n + k] = (int32_t)(next + r);
                    pos[2 * n + k] = (int32_t)(next + c);
                }
        int64_t mx = gt > gh ? gt : gh;
        mx = mx > gw ? mx : gw;
        next += mx;
        s += cnt;
    }
    if (ii != n_img || vi != n_vid) {
        qvl_errf(err, err_len,
                 "image/video count mismatch: tokens: %d image blocks, %d video blocks; "
                 "features: %d images, %d video frame groups",
                 ii, vi, n_img, n_vid);
        return QVL_E_INVAL;
    }
    *next_pos = next;
    return QVL_OK;
}

void qvl_rope_inv_freq(double theta, int head_dim, float *inv_freq) {
    for (int j = 0; j < head_dim / 2; j++) {
        float e = (float)(2 * j) / (float)head_dim;
        inv_freq[j] = 1.0f / powf((float)theta, e);
    }
}

void qvl_mrope_angles(const float *inv_freq, int half, const int sections[3], int32_t pt,
                      int32_t ph, int32_t pw, float *cs, float *sn) {
    for (int j = 0; j < half; j++) {
        int32_t p = pt;
        if (j % 3 == 1 && j < 3 * sections[1])
            p = ph;
        else if (j % 3 == 2 && j < 3 * sections[2])
            p = pw;
        float a = (float)p * inv_freq[j];
        cs[j] = cosf(a);
        sn[j] = sinf(a);
    }
}

void qvl_rope_rotate(float *x, const float *cs, const float *sn, int half) {
    for (int i = 0; i < half; i++) {
        float a = x[i], b = x[i + half];
        x[i] = a * cs[i] - b * sn[i];
        x[i + half] = b * cs[i] + a * sn[i];
    }
}
