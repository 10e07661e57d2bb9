/* ref.c - scalar reference kernels: the definition every SIMD path is tested against (matmul,
 * attention, dot, norms, activations; plain C, float32 accumulation except the norm statistics),
 * plus the row widening and quantisation helpers. The plain element-wise entry points
 * (qvl_rmsnorm ... qvl_add) live in cpu.c and dispatch through the active table. */
#include "kern.h"
#include "common.h"

#include <math.h>
#include <string.h>

static inline float bf16_to_f32(uint16_t h) {
    union {
        uint32_t u;
        float f;
    } v;
    v.u = (uint32_t)h << 16;
    return v.f;
}

static float f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1f;
    uint32_t man = h & 0x3ffu;
    union {
        uint32_t u;
        float f;
    } v;
    if (exp == 0) {
        float f = ldexpf((float)man, -24);
        return sign ? -f : f;
    }
    if (exp == 31)
        v.u = sign | 0x7f800000u | (man << 13);
    else
        v.u = sign | ((exp + 112) << 23) | (man << 13);
    return v.f;
}

static uint16_t f32_to_f16_scale(float f) {
    /* scales are positive finite and well inside the f16 range after clamping */
    if (!(f > 0))
        return 0;
    if (f > 65504.0f)
        f = 65504.0f;
    if (f < 6.1035156e-05f) { /* subnormal f16 */
        float q = f * 16777216.0f;
        return (uint16_t)lrintf(q);
    }
    union {
        uint32_t u;
        float f;
    } v = {.f = f};
    uint32_t r = v.u - 0x38000000u;
    r += 0xfffu + ((r >> 13) & 1u);
    return (uint16_t)(r >> 13);
}

void qvl_row_to_f32(qvl_dtype t, const void *row, float *out, int64_t k) {
    switch (t) {
    case QVL_DT_F32: memcpy(out, row, (size_t)k * sizeof(float)); break;
    case QVL_DT_BF16:
    case QVL_DT_BF16D: {
        const uint16_t *r = row;
        for (int64_t i = 0; i < k; i++)
            out[i] = bf16_to_f32(r[i]);
        break;
    }
    case QVL_DT_F16: {
        const uint16_t *r = row;
        for (int64_t i = 0; i < k; i++)
            out[i] = f16_to_f32(r[i]);
        break;
    }
    case QVL_DT_Q8_0: {
        const uint8_t *b = row;
        for (int64_t i = 0; i < k; i += QVL_QBLOCK, b += 34) {
            uint16_t d16;
            memcpy(&d16, b, 2);
            float d = f16_to_f32(d16);
            const int8_t *q = (const int8_t *)(b + 2);
            for (int e = 0; e < QVL_QBLOCK; e++)
                out[i + e] = d * (float)q[e];
        }
        break;
    }
    case QVL_DT_Q4_0: {
        const uint8_t *b = row;
        for (int64_t i = 0; i < k; i += QVL_QBLOCK, b += 18) {
            uint16_t d16;
            memcpy(&d16, b, 2);
            float d = f16_to_f32(d16);
            const uint8_t *q = b + 2;
            for (int e = 0; e < 16; e++) {
                out[i + e] = d * (float)((int)(q[e] & 15) - 8);
                out[i + e + 16] = d * (float)((int)(q[e] >> 4) - 8);
            }
        }
        break;
    }
    default: memset(out, 0, (size_t)k * sizeof(float)); break;
    }
}

/* a scaled value clamped to [-lim - (lim < 127), lim] before rounding: [-127, 127] for Q8_0,
 * [-8, 7] for Q4_0 (clamping to integer bounds first rounds the same); NaN becomes 0 (so huge
 * or non-finite inputs never reach lrintf's undefined range) */
static inline float q_clamp(float t, float lim) {
    float lo = lim == 127.0f ? -127.0f : -lim - 1.0f;
    return t != t ? 0.0f : t > lim ? lim : t < lo ? lo : t;
}

void qvl_quantize_row_ref(qvl_dtype t, const float *x, void *out, int64_t k) {
    uint8_t *b = out;
    for (int64_t i = 0; i < k; i += QVL_QBLOCK) {
        float amax = 0, vmax = 0;
        for (int e = 0; e < QVL_QBLOCK; e++) {
            float a = fabsf(x[i + e]);
            if (a > amax) {
                amax = a;
                vmax = x[i + e];
            }
        }
        if (t == QVL_DT_Q8_0) {
            uint16_t d16 = f32_to_f16_scale(amax / 127.0f);
            float d = f16_to_f32(d16);
            float id = d > 0 ? 1.0f / d : 0.0f;
            memcpy(b, &d16, 2);
            int8_t *q = (int8_t *)(b + 2);
            for (int e = 0; e < QVL_QBLOCK; e++)
                q[e] = (int8_t)lrintf(q_clamp(x[i + e] * id, 127.0f));
            b += 34;
        } else { /* Q4_0: signed scale so the largest magnitude maps to -8 */
            float dsigned = vmax / -8.0f;
            uint16_t d16 = f32_to_f16_scale(fabsf(dsigned));
            float d = f16_to_f32(d16);
            if (dsigned < 0) {
                d = -d;
                d16 |= 0x8000u;
            }
            float id = d != 0 ? 1.0f / d : 0.0f;
            memcpy(b, &d16, 2);
            uint8_t *q = b + 2;
            for (int e = 0; e < 16; e++) {
                long v0 = lrintf(q_clamp(x[i + e] * id, 7.0f)) + 8;
                long v1 = lrintf(q_clamp(x[i + e + 16] * id, 7.0f)) + 8;
                q[e] = (uint8_t)(v0 | (v1 << 4));
            }
            b += 18;
        }
    }
}

/* bytes of one block and of its quant part */
static size_t q_bs(qvl_dtype base) {
    return base == QVL_DT_Q8_0 ? 34 : 18;
}

void qvl_x16_pack(qvl_dtype base, const uint8_t *src, int nr, int64_t k, uint8_t *group) {
    const size_t bs = q_bs(base), qb = bs - 2, rb = qvl_dtype_row_bytes(base, (size_t)k);
    const int64_t nb = k / QVL_QBLOCK;
    memset(group, 0, rb * QVL_X16);
    for (int r = 0; r < nr && r < QVL_X16; r++)
        for (int64_t b = 0; b < nb; b++) {
            const uint8_t *blk = src + (size_t)r * rb + (size_t)b * bs;
            uint8_t *g = group + (size_t)b * bs * QVL_X16;
            memcpy(g + 2 * r, blk, 2);
            for (size_t t = 0; t < qb / 4; t++)
                memcpy(g + 2 * QVL_X16 + t * 4 * QVL_X16 + 4 * (size_t)r, blk + 2 + 4 * t, 4);
        }
}

void qvl_x16_blocks(qvl_dtype xt, const void *w, int64_t k, int64_t j, int64_t b0, int64_t nb,
                    uint8_t *out) {
    const qvl_dtype base = qvl_dtype_x16_base(xt);
    const size_t bs = q_bs(base), qb = bs - 2, rb = qvl_dtype_row_bytes(base, (size_t)k);
    const uint8_t *grp = (const uint8_t *)w + (size_t)(j / QVL_X16) * QVL_X16 * rb;
    const size_t r = (size_t)(j % QVL_X16);
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *g = grp + (size_t)(b0 + b) * bs * QVL_X16;
        uint8_t *o = out + (size_t)b * bs;
        memcpy(o, g + 2 * r, 2);
        for (size_t t = 0; t < qb / 4; t++)
            memcpy(o + 2 + 4 * t, g + 2 * QVL_X16 + t * 4 * QVL_X16 + 4 * r, 4);
    }
}

static bool ref_matmul(float *y, int64_t ldy, const float *x, int64_t ldx, int64_t m, int64_t k,
                       const void *w, qvl_dtype wt, const float *b, int64_t j0, int64_t j1) {
    size_t rb = qvl_dtype_row_bytes(wt, (size_t)k);
    float buf[512];
    uint8_t qbuf[512 / QVL_QBLOCK * 34]; /* interleaved types: one chunk as plain blocks */
    const bool x16 = qvl_dtype_is_x16(wt);
    const bool xr = wt == QVL_DT_BF16D && m > 4; /* activations rounded to bf16 */
    if (wt == QVL_DT_BF16D)
        wt = QVL_DT_BF16;
    const qvl_dtype bt = qvl_dtype_x16_base(wt);
    for (int64_t j = j0; j < j1; j++) {
        const uint8_t *row = (const uint8_t *)w + (size_t)j * rb;
        float bias = b ? b[j] : 0.0f;
        for (int64_t i = 0; i < m; i++)
            y[i * ldy + j] = 0.0f;
        /* widen the weight row in chunks (multiples of the quant block) and accumulate */
        for (int64_t p0 = 0; p0 < k; p0 += 512) {
            int64_t n = k - p0 < 512 ? k - p0 : 512;
            if (x16) {
                qvl_x16_blocks(wt, w, k, j, p0 / QVL_QBLOCK, n / QVL_QBLOCK, qbuf);
                qvl_row_to_f32(bt, qbuf, buf, n);
            } else {
                qvl_row_to_f32(wt, row + qvl_dtype_row_bytes(wt, (size_t)p0), buf, n);
            }
            for (int64_t i = 0; i < m; i++) {
                const float *xi = x + i * ldx + p0;
                float s = 0.0f;
                if (xr)
                    for (int64_t p = 0; p < n; p++)
                        s += bf16_to_f32(qvl_f32_to_bf16(xi[p])) * buf[p];
                else
                    for (int64_t p = 0; p < n; p++)
                        s += xi[p] * buf[p];
                y[i * ldy + j] += s;
            }
        }
        for (int64_t i = 0; i < m; i++)
            y[i * ldy + j] += bias;
    }
    return true;
}

static float ref_dot(const float *a, const float *b, int64_t n) {
    float s = 0.0f;
    for (int64_t i = 0; i < n; i++)
        s += a[i] * b[i];
    return s;
}

/* element i of a K/V row of type t (F32, F16, BF16) */
static inline float kv_at(qvl_dtype t, const void *row, int64_t i) {
    uint16_t h;
    float f;
    switch (t) {
    case QVL_DT_F16: memcpy(&h, (const uint8_t *)row + 2 * i, 2); return f16_to_f32(h);
    case QVL_DT_BF16: memcpy(&h, (const uint8_t *)row + 2 * i, 2); return bf16_to_f32(h);
    default: memcpy(&f, (const uint8_t *)row + 4 * i, 4); return f;
    }
}

static void ref_attn(float *o, int64_t ldo, const float *q, int64_t ldq, int64_t nq, const void *k,
                     int64_t ldk, const void *v, int64_t ldv, int64_t kvc, int64_t kvcs,
                     int64_t nk, int hd, float scale, bool causal, int64_t q_pos0,
                     qvl_dtype kvt) {
    const size_t es = kvt == QVL_DT_F32 ? 4 : 2;
    for (int64_t i = 0; i < nq; i++) {
        const float *qi = q + i * ldq;
        float *oi = o + i * ldo;
        int64_t end = causal ? q_pos0 + i + 1 : nk;
        if (end > nk)
            end = nk;
        float mx = -INFINITY, sum = 0.0f;
        for (int d = 0; d < hd; d++)
            oi[d] = 0.0f;
        for (int64_t j = 0; j < end; j++) {
            int64_t ch = kvc > 0 ? j / kvc : 0, r = kvc > 0 ? j % kvc : j; /* chunk, row in it */
            const uint8_t *kj = (const uint8_t *)k + (size_t)(ch * kvcs + r * ldk) * es;
            const uint8_t *vj = (const uint8_t *)v + (size_t)(ch * kvcs + r * ldv) * es;
            float s = 0.0f;
            for (int d = 0; d < hd; d++)
                s += qi[d] * kv_at(kvt, kj, d);
            s *= scale;
            if (s > mx) {
                float c = expf(mx - s); /* rescale what was accumulated so far */
                sum *= c;
                for (int d = 0; d < hd; d++)
                    oi[d] *= c;
                mx = s;
            }
            float p = expf(s - mx);
            sum += p;
            for (int d = 0; d < hd; d++)
                oi[d] += p * kv_at(kvt, vj, d);
        }
        float inv = sum > 0 ? 1.0f / sum : 0.0f;
        for (int d = 0; d < hd; d++)
            oi[d] *= inv;
    }
}

/* ---- element-wise: the definitions (libm tanhf/erff/expf, norm statistics in double) ------- */
static void ref_rmsnorm(float *y, const float *x, const float *w, int64_t n, float eps) {
    double ss = 0.0;
    for (int64_t i = 0; i < n; i++)
        ss += (double)x[i] * x[i];
    float r = (float)(1.0 / sqrt(ss / (double)n + eps));
    for (int64_t i = 0; i < n; i++)
        y[i] = x[i] * r * w[i];
}

static void ref_layernorm(float *y, const float *x, const float *w, const float *b, int64_t n,
                          float eps) {
    double mean = 0.0, var = 0.0;
    for (int64_t i = 0; i < n; i++)
        mean += x[i];
    mean /= (double)n;
    for (int64_t i = 0; i < n; i++) {
        double d = x[i] - mean;
        var += d * d;
    }
    var /= (double)n;
    float r = (float)(1.0 / sqrt(var + eps));
    float mf = (float)mean;
    for (int64_t i = 0; i < n; i++)
        y[i] = (x[i] - mf) * r * w[i] + (b ? b[i] : 0.0f);
}

static void ref_gelu_tanh(float *x, int64_t n) {
    const float c = 0.7978845608028654f; /* sqrt(2/pi) */
    for (int64_t i = 0; i < n; i++) {
        float v = x[i];
        x[i] = 0.5f * v * (1.0f + tanhf(c * (v + 0.044715f * v * v * v)));
    }
}

static void ref_gelu_erf(float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++)
        x[i] = 0.5f * x[i] * (1.0f + erff(x[i] * 0.70710678118654752f));
}

static void ref_silu_mul(float *g, const float *u, int64_t n) {
    for (int64_t i = 0; i < n; i++)
        g[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}

static void ref_add(float *x, const float *y, int64_t n) {
    for (int64_t i = 0; i < n; i++)
        x[i] += y[i];
}

static const qvl_kern k_ref = {
    .name = "ref",
    .matmul = ref_matmul,
    .attn = ref_attn,
    .dot = ref_dot,
    .rmsnorm = ref_rmsnorm,
    .layernorm = ref_layernorm,
    .gelu_tanh = ref_gelu_tanh,
    .gelu_erf = ref_gelu_erf,
    .silu_mul = ref_silu_mul,
    .add = ref_add,
    .quantize_row = qvl_quantize_row_ref,
};

const qvl_kern *qvl_kern_ref(void) {
    return &k_ref;
}
