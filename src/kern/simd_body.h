/* simd_body.h - the SIMD kernel body shared by avx2.c and avx512.c.
 *
 * Not a normal header: it holds static function definitions and is included once, at the end
 * of each ISA file, after that file has defined its vector layer and tile sizes, so it is
 * compiled twice with the per-file ISA flags. It does not define the kernel table; the includer
 * does, from the simd_* functions below.
 *
 * Vector layer the includer provides (all ALWAYS_INLINE, vf = VW float32 lanes):
 *   types   vf; vmask (lane selection for partial loads/stores); vbool (result of a compare)
 *   memory  vld, vst, vld_m, vst_m (masked lanes read 0, are never touched), vmask_n(n),
 *           vld_bf16, vld_f16, f16s (one f16 scalar), q8_widen, q4_widen (QV vectors per block)
 *   math    vset1, vzero, vadd, vsub, vmul, vdiv, vmax, vmin, vabs, vfma (a*b+c),
 *           vfms (a*b-c), vfnma (c-a*b), vsum, vhmax, vexp (e^x, 0 below -87.3, x <= 88)
 *   select  vlt, vgt (ordered compares: false when a lane is NaN), vsel(m, a, b) (m ? a : b),
 *           vkeep(v, vmask) (lanes outside the mask set to 0)
 *   tiles   GM_MR (GEMM rows per micro-tile), AT_KB (keys per attention block, multiple of VW),
 *           AT_PVN (output vectors per P.V chunk)
 *
 * Numerics: float32 throughout; see kern.h and the comments below for each op's error.
 */
#ifndef QVL_KERN_SIMD_BODY_H
#define QVL_KERN_SIMD_BODY_H

#define GM_NR  (2 * VW) /* output columns per GEMM micro-tile (two vectors) */
#define GM_KB  256      /* k per packed panel (multiple of 32) */
#define MV_NR  4        /* weight rows per matvec pass */
#define AT_QB  4        /* queries per attention sub-block */
#define AT_QC  256      /* queries per chunk sharing one transposed key block */
#define AT_HDMAX 256    /* larger heads fall back to ref */

static float wscalar(qvl_dtype wt, const uint8_t *row, int64_t p) {
    uint16_t h;
    float f;
    switch (wt) {
    case QVL_DT_F32: memcpy(&f, row + p * 4, 4); return f;
    case QVL_DT_F16: memcpy(&h, row + p * 2, 2); return _cvtsh_ss(h);
    case QVL_DT_BF16: {
        memcpy(&h, row + p * 2, 2);
        uint32_t u = (uint32_t)h << 16;
        memcpy(&f, &u, 4);
        return f;
    }
    default: return 0.0f;
    }
}

/* VW consecutive weights of a float-type row starting at element p */
ALWAYS_INLINE vf wload(qvl_dtype wt, const uint8_t *row, int64_t p) {
    switch (wt) {
    case QVL_DT_F16: return vld_f16((const uint16_t *)(row + p * 2));
    case QVL_DT_BF16: return vld_bf16((const uint16_t *)(row + p * 2));
    default: return vld((const float *)(row + p * 4));
    }
}

/* Widen elements [p0, p0+n) of a weight row to float (p0, n multiples of 32 for Q types).
 * Values are identical to qvl_row_to_f32 (same d * q products). */
static void widen_range(qvl_dtype wt, const uint8_t *row, int64_t p0, int64_t n, float *out) {
    int64_t p = 0;
    switch (wt) {
    case QVL_DT_F32: memcpy(out, row + p0 * 4, (size_t)n * 4); return;
    case QVL_DT_F16:
    case QVL_DT_BF16:
        for (; p + VW <= n; p += VW)
            vst(out + p, wload(wt, row, p0 + p));
        for (; p < n; p++)
            out[p] = wscalar(wt, row, p0 + p);
        return;
    case QVL_DT_Q8_0:
    case QVL_DT_Q4_0: {
        size_t bs = wt == QVL_DT_Q8_0 ? 34 : 18;
        const uint8_t *blk = row + (size_t)(p0 / QVL_QBLOCK) * bs;
        for (; p < n; p += QVL_QBLOCK, blk += bs) {
            vf q[QV];
            if (wt == QVL_DT_Q8_0)
                q8_widen(blk, q);
            else
                q4_widen(blk, q);
            vf d = vset1(f16s(blk));
            for (int v = 0; v < QV; v++)
                vst(out + p + v * VW, vmul(d, q[v]));
        }
        return;
    }
    default: memset(out, 0, (size_t)n * 4); return;
    }
}

/* ---- matvec (m small): MV_NR weight rows x MR activation rows per pass ----------------------
 * rows[r] point at weight rows (duplicates past the end), xr[i] at activation rows (likewise);
 * only the first nr rows / ni activation rows are stored. Each weight row is streamed once. */
ALWAYS_INLINE void mv_float(const int MR, const qvl_dtype wt, const uint8_t *const rows[MV_NR],
                            int nr, const float *const xr[4], int ni, int64_t k, float *y,
                            int64_t ldy, const float *b) {
    vf acc[MV_NR][4];
    for (int r = 0; r < MV_NR; r++)
        for (int i = 0; i < MR; i++)
            acc[r][i] = vzero();
    int64_t p = 0;
    for (; p + VW <= k; p += VW) {
        vf w[MV_NR];
        for (int r = 0; r < MV_NR; r++)
            w[r] = wload(wt, rows[r], p);
        for (int i = 0; i < MR; i++) {
            vf xv = vld(xr[i] + p);
            for (int r = 0; r < MV_NR; r++)
                acc[r][i] = vfma(xv, w[r], acc[r][i]);
        }
    }
    for (int r = 0; r < nr; r++)
        for (int i = 0; i < ni; i++) {
            float s = vsum(acc[r][i]);
            for (int64_t q = p; q < k; q++)
                s += xr[i][q] * wscalar(wt, rows[r], q);
            y[i * ldy + r] = s + (b ? b[r] : 0.0f);
        }
}

ALWAYS_INLINE void mv_quant(const int MR, const qvl_dtype wt, const uint8_t *const rows[MV_NR],
                            int nr, const float *const xr[4], int ni, int64_t k, float *y,
                            int64_t ldy, const float *b) {
    const size_t bs = wt == QVL_DT_Q8_0 ? 34 : 18;
    vf acc[MV_NR][4];
    for (int r = 0; r < MV_NR; r++)
        for (int i = 0; i < MR; i++)
            acc[r][i] = vzero();
    for (int64_t p = 0, ib = 0; p < k; p += QVL_QBLOCK, ib++) {
        vf q[MV_NR][QV];
        vf d[MV_NR];
        for (int r = 0; r < MV_NR; r++) {
            const uint8_t *blk = rows[r] + (size_t)ib * bs;
            if (wt == QVL_DT_Q8_0)
                q8_widen(blk, q[r]);
            else
                q4_widen(blk, q[r]);
            d[r] = vset1(f16s(blk));
        }
        for (int i = 0; i < MR; i++) {
            vf xv[QV];
            for (int v = 0; v < QV; v++)
                xv[v] = vld(xr[i] + p + v * VW);
            for (int r = 0; r < MV_NR; r++) {
                vf t = vmul(q[r][0], xv[0]);
                for (int v = 1; v < QV; v++)
                    t = vfma(q[r][v], xv[v], t);
                acc[r][i] = vfma(d[r], t, acc[r][i]);
            }
        }
    }
    for (int r = 0; r < nr; r++)
        for (int i = 0; i < ni; i++)
            y[i * ldy + r] = vsum(acc[r][i]) + (b ? b[r] : 0.0f);
}

#define MV_CASE(fn, MR, WT) fn(MR, WT, rows, nr, xr, ni, k, yy, ldy, bb)
#define MV_DISPATCH(MR)                                                                        \
    switch (wt) {                                                                              \
    case QVL_DT_F32: MV_CASE(mv_float, MR, QVL_DT_F32); break;                                 \
    case QVL_DT_F16: MV_CASE(mv_float, MR, QVL_DT_F16); break;                                 \
    case QVL_DT_BF16: MV_CASE(mv_float, MR, QVL_DT_BF16); break;                               \
    case QVL_DT_Q8_0: MV_CASE(mv_quant, MR, QVL_DT_Q8_0); break;                               \
    default: MV_CASE(mv_quant, MR, QVL_DT_Q4_0); break;                                        \
    }

static void matvec(float *y, int64_t ldy, const float *x, int64_t ldx, int64_t m, int64_t k,
                   const uint8_t *w, qvl_dtype wt, const float *b, int64_t j0, int64_t j1) {
    size_t rb = qvl_dtype_row_bytes(wt, (size_t)k);
    for (int64_t i0 = 0; i0 < m; i0 += 4) {
        int ni = m - i0 < 4 ? (int)(m - i0) : 4;
        const float *xr[4];
        for (int i = 0; i < 4; i++)
            xr[i] = x + (i0 + (i < ni ? i : ni - 1)) * ldx;
        for (int64_t j = j0; j < j1; j += MV_NR) {
            int nr = j1 - j < MV_NR ? (int)(j1 - j) : MV_NR;
            const uint8_t *rows[MV_NR];
            for (int r = 0; r < MV_NR; r++)
                rows[r] = w + (size_t)(j + (r < nr ? r : nr - 1)) * rb;
            float *yy = y + i0 * ldy + j;
            const float *bb = b ? b + j : NULL;
            if (ni == 1) {
                MV_DISPATCH(1)
            } else if (ni == 2) {
                MV_DISPATCH(2)
            } else {
                MV_DISPATCH(4)
            }
        }
    }
}

/* ---- GEMM (m larger): packed weight panel [kb][GM_NR] reused by all activation rows --------
 * Micro-tile: GM_MR activation rows x GM_NR columns held in registers over the panel's k range.
 * The tile is stored (first k block), added (later blocks) and gets the bias on the last. */
static void gm_tile(const float *x, int64_t ldx, int ni, const float *panel, int kb, float *y,
                    int64_t ldy, int nj, bool first, const float *bias) {
    const float *xr[GM_MR];
    for (int i = 0; i < GM_MR; i++)
        xr[i] = x + (i < ni ? i : ni - 1) * ldx;
    vf acc[GM_MR][2];
    for (int i = 0; i < GM_MR; i++)
        acc[i][0] = acc[i][1] = vzero();
    for (int p = 0; p < kb; p++) {
        vf w0 = vld(panel + p * GM_NR);
        vf w1 = vld(panel + p * GM_NR + VW);
        for (int i = 0; i < GM_MR; i++) {
            vf xb = vset1(xr[i][p]);
            acc[i][0] = vfma(xb, w0, acc[i][0]);
            acc[i][1] = vfma(xb, w1, acc[i][1]);
        }
    }
    vmask m0 = vmask_n(nj < VW ? nj : VW);
    vmask m1 = vmask_n(nj > VW ? nj - VW : 0);
    vf b0 = bias ? vld_m(bias, m0) : vzero();
    vf b1 = bias ? vld_m(bias + VW, m1) : vzero();
    for (int i = 0; i < ni; i++) {
        float *yr = y + i * ldy;
        vf a0 = acc[i][0], a1 = acc[i][1];
        if (!first) {
            a0 = vadd(vld_m(yr, m0), a0);
            a1 = vadd(vld_m(yr + VW, m1), a1);
        }
        if (bias) {
            a0 = vadd(a0, b0);
            a1 = vadd(a1, b1);
        }
        vst_m(yr, a0, m0);
        vst_m(yr + VW, a1, m1);
    }
}

static void gemm(float *y, int64_t ldy, const float *x, int64_t ldx, int64_t m, int64_t k,
                 const uint8_t *w, qvl_dtype wt, const float *b, int64_t j0, int64_t j1) {
    _Alignas(64) float panel[GM_KB * GM_NR];
    _Alignas(64) float tmp[GM_KB];
    size_t rb = qvl_dtype_row_bytes(wt, (size_t)k);
    for (int64_t jb = j0; jb < j1; jb += GM_NR) {
        int nj = j1 - jb < GM_NR ? (int)(j1 - jb) : GM_NR;
        for (int64_t p0 = 0; p0 < k; p0 += GM_KB) {
            int kb = k - p0 < GM_KB ? (int)(k - p0) : GM_KB;
            for (int r = 0; r < GM_NR; r++) {
                if (r < nj) {
                    widen_range(wt, w + (size_t)(jb + r) * rb, p0, kb, tmp);
                    for (int p = 0; p < kb; p++)
                        panel[p * GM_NR + r] = tmp[p];
                } else {
                    for (int p = 0; p < kb; p++)
                        panel[p * GM_NR + r] = 0.0f;
                }
            }
            bool first = p0 == 0;
            const float *bias = b && p0 + kb >= k ? b + jb : NULL;
            for (int64_t i0 = 0; i0 < m; i0 += GM_MR) {
                int ni = m - i0 < GM_MR ? (int)(m - i0) : GM_MR;
                gm_tile(x + i0 * ldx + p0, ldx, ni, panel, kb, y + i0 * ldy + jb, ldy, nj, first,
                        bias);
            }
        }
    }
}

static bool simd_matmul(float *y, int64_t ldy, const float *x, int64_t ldx, int64_t m, int64_t k,
                        const void *w, qvl_dtype wt, const float *b, int64_t j0, int64_t j1) {
    if (wt != QVL_DT_F32 && wt != QVL_DT_F16 && wt != QVL_DT_BF16 && wt != QVL_DT_Q8_0 &&
        wt != QVL_DT_Q4_0)
        return false;
    if ((wt == QVL_DT_Q8_0 || wt == QVL_DT_Q4_0) && k % QVL_QBLOCK)
        return false;
    if (m <= 0 || j1 <= j0)
        return true;
    if (k <= 0) {
        for (int64_t i = 0; i < m; i++)
            for (int64_t j = j0; j < j1; j++)
                y[i * ldy + j] = b ? b[j] : 0.0f;
        return true;
    }
    if (m <= 4)
        matvec(y, ldy, x, ldx, m, k, w, wt, b, j0, j1);
    else
        gemm(y, ldy, x, ldx, m, k, w, wt, b, j0, j1);
    return true;
}

static float simd_dot(const float *a, const float *b, int64_t n) {
    vf s0 = vzero(), s1 = vzero(), s2 = vzero(), s3 = vzero();
    int64_t i = 0;
    for (; i + 4 * VW <= n; i += 4 * VW) {
        s0 = vfma(vld(a + i), vld(b + i), s0);
        s1 = vfma(vld(a + i + VW), vld(b + i + VW), s1);
        s2 = vfma(vld(a + i + 2 * VW), vld(b + i + 2 * VW), s2);
        s3 = vfma(vld(a + i + 3 * VW), vld(b + i + 3 * VW), s3);
    }
    for (; i + VW <= n; i += VW)
        s0 = vfma(vld(a + i), vld(b + i), s0);
    float s = vsum(vadd(vadd(s0, s1), vadd(s2, s3)));
    for (; i < n; i++)
        s += a[i] * b[i];
    return s;
}

/* ---- attention -------------------------------------------------------------------------------
 * Queries go in chunks of AT_QC (running max/sum per query on the stack, output rows of o used as
 * accumulators), keys in blocks of AT_KB. For each key block the scores of AT_QB queries are
 * formed either against a transposed copy of the key block (outer products, no horizontal sums:
 * used when the chunk has enough queries to repay the transpose) or by per-key dot products
 * (decode). Then an online-softmax update and P.V accumulated into o. */

/* online-softmax update of AT_QB query rows against one key block; s[qi][jj] holds raw scaled
 * scores, valid[qi] how many leading keys query qi sees. On return s holds probabilities and the
 * o rows have been rescaled and accumulated. */
static void at_update(float s[AT_QB][AT_KB], const int valid[AT_QB], int nqb, int nj, float *mrow,
                      float *lrow, float *const orow[AT_QB], const float *v, int64_t ldv, int hd) {
    for (int qi = 0; qi < AT_QB; qi++) {
        int nv = qi < nqb ? valid[qi] : 0;
        if (nv <= 0) {
            for (int jj = 0; jj < AT_KB; jj++)
                s[qi][jj] = 0.0f;
            continue;
        }
        for (int jj = nv; jj < AT_KB; jj++)
            s[qi][jj] = -INFINITY;
        vf mx = vld(s[qi]);
        for (int jj = VW; jj < AT_KB; jj += VW)
            mx = vmax(mx, vld(s[qi] + jj));
        float bm = vhmax(mx);
        float mnew = bm > mrow[qi] ? bm : mrow[qi];
        float c = expf(mrow[qi] - mnew); /* 0 on the first block (mrow = -inf) */
        vf mv = vset1(mnew);
        vf sum = vzero();
        for (int jj = 0; jj < AT_KB; jj += VW) {
            vf pv = vexp(vsub(vld(s[qi] + jj), mv));
            vst(s[qi] + jj, pv);
            sum = vadd(sum, pv);
        }
        for (int jj = nv; jj < AT_KB; jj++)
            s[qi][jj] = 0.0f;
        lrow[qi] = lrow[qi] * c + vsum(sum);
        mrow[qi] = mnew;
        if (c != 1.0f) {
            vf cv = vset1(c);
            float *o = orow[qi];
            int d = 0;
            for (; d + VW <= hd; d += VW)
                vst(o + d, vmul(vld(o + d), cv));
            for (; d < hd; d++)
                o[d] *= c;
        }
    }
    /* o[qi] += sum_jj P[qi][jj] v[jj] over chunks of AT_PVN vectors of the head dim */
    for (int d0 = 0; d0 < hd; d0 += AT_PVN * VW) {
        vmask mk[AT_PVN];
        for (int t = 0; t < AT_PVN; t++) {
            int left = hd - d0 - t * VW;
            mk[t] = vmask_n(left <= 0 ? 0 : left < VW ? left : VW);
        }
        vf acc[AT_QB][AT_PVN];
        for (int qi = 0; qi < AT_QB; qi++)
            for (int t = 0; t < AT_PVN; t++)
                acc[qi][t] = vld_m(orow[qi] + d0 + t * VW, mk[t]);
        for (int jj = 0; jj < nj; jj++) {
            const float *vj = v + jj * ldv + d0;
            vf vv[AT_PVN];
            for (int t = 0; t < AT_PVN; t++)
                vv[t] = vld_m(vj + t * VW, mk[t]);
            for (int qi = 0; qi < AT_QB; qi++) {
                vf pb = vset1(s[qi][jj]);
                for (int t = 0; t < AT_PVN; t++)
                    acc[qi][t] = vfma(pb, vv[t], acc[qi][t]);
            }
        }
        for (int qi = 0; qi < nqb; qi++)
            for (int t = 0; t < AT_PVN; t++)
                vst_m(orow[qi] + d0 + t * VW, acc[qi][t], mk[t]);
    }
}

static void simd_attn(float *o, int64_t ldo, const float *q, int64_t ldq, int64_t nq,
                      const float *k, int64_t ldk, const float *v, int64_t ldv, int64_t nk, int hd,
                      float scale, bool causal, int64_t q_pos0) {
    if (hd > AT_HDMAX || hd <= 0) {
        qvl_kern_ref()->attn(o, ldo, q, ldq, nq, k, ldk, v, ldv, nk, hd, scale, causal, q_pos0);
        return;
    }
    _Alignas(64) float kt[AT_HDMAX * AT_KB];
    _Alignas(64) float s[AT_QB][AT_KB];
    float mrow[AT_QC], lrow[AT_QC];
    for (int64_t i0 = 0; i0 < nq; i0 += AT_QC) {
        int ni = nq - i0 < AT_QC ? (int)(nq - i0) : AT_QC;
        for (int i = 0; i < ni; i++) {
            mrow[i] = -INFINITY;
            lrow[i] = 0.0f;
            memset(o + (i0 + i) * ldo, 0, (size_t)hd * sizeof(float));
        }
        int64_t kend = nk;
        if (causal && q_pos0 + i0 + ni < kend)
            kend = q_pos0 + i0 + ni;
        bool transposed = ni >= 2 * AT_QB;
        for (int64_t j0 = 0; j0 < kend; j0 += AT_KB) {
            int nj = kend - j0 < AT_KB ? (int)(kend - j0) : AT_KB;
            const float *kb = k + j0 * ldk;
            if (transposed) {
                for (int jj = 0; jj < nj; jj++)
                    for (int d = 0; d < hd; d++)
                        kt[d * AT_KB + jj] = kb[jj * ldk + d];
                for (int jj = nj; jj < AT_KB; jj++)
                    for (int d = 0; d < hd; d++)
                        kt[d * AT_KB + jj] = 0.0f;
            }
            for (int ii = 0; ii < ni; ii += AT_QB) {
                int nqb = ni - ii < AT_QB ? ni - ii : AT_QB;
                int valid[AT_QB];
                int any = 0;
                for (int qi = 0; qi < AT_QB; qi++) {
                    int64_t end = causal ? q_pos0 + i0 + ii + qi + 1 : nk;
                    if (end > nk)
                        end = nk;
                    int64_t nv = end - j0;
                    valid[qi] = qi >= nqb || nv <= 0 ? 0 : nv > nj ? nj : (int)nv;
                    any |= valid[qi];
                }
                if (!any)
                    continue;
                const float *qr[AT_QB];
                float *orow[AT_QB];
                for (int qi = 0; qi < AT_QB; qi++) {
                    int64_t i = i0 + ii + (qi < nqb ? qi : nqb - 1);
                    qr[qi] = q + i * ldq;
                    orow[qi] = o + i * ldo;
                }
                if (transposed) {
                    vf acc[AT_QB][AT_KB / VW];
                    for (int qi = 0; qi < AT_QB; qi++)
                        for (int t = 0; t < AT_KB / VW; t++)
                            acc[qi][t] = vzero();
                    for (int d = 0; d < hd; d++) {
                        vf kv[AT_KB / VW];
                        for (int t = 0; t < AT_KB / VW; t++)
                            kv[t] = vld(kt + d * AT_KB + t * VW);
                        for (int qi = 0; qi < AT_QB; qi++) {
                            vf qb = vset1(qr[qi][d]);
                            for (int t = 0; t < AT_KB / VW; t++)
                                acc[qi][t] = vfma(qb, kv[t], acc[qi][t]);
                        }
                    }
                    vf sc = vset1(scale);
                    for (int qi = 0; qi < AT_QB; qi++)
                        for (int t = 0; t < AT_KB / VW; t++)
                            vst(s[qi] + t * VW, vmul(acc[qi][t], sc));
                } else {
                    for (int qi = 0; qi < AT_QB; qi++)
                        for (int jj = 0; jj < AT_KB; jj++)
                            s[qi][jj] =
                                jj < valid[qi] ? simd_dot(qr[qi], kb + jj * ldk, hd) * scale : 0.0f;
                }
                at_update(s, valid, nqb, nj, mrow + ii, lrow + ii, orow, v + j0 * ldv, ldv, hd);
            }
        }
        for (int i = 0; i < ni; i++) {
            float inv = lrow[i] > 0 ? 1.0f / lrow[i] : 0.0f;
            float *oi = o + (i0 + i) * ldo;
            for (int d = 0; d < hd; d++)
                oi[d] *= inv;
        }
    }
}

/* ---- element-wise ----------------------------------------------------------------------------
 * Each op walks whole vectors and finishes with one masked vector, so every element goes through
 * the same arithmetic wherever it sits (results do not depend on n or on the slice a thread gets).
 * The activations are written so that their relative error stays near float32 rounding over the
 * whole range, including the negative tails where ref.c's 1 + tanh / 1 + erf cancel. */

/* y = x / (1 + e^-a), with the a < -88 side (e^-a overflows) set to x * 0 = +-0 as ref gives;
 * a NaN in x or a propagates. */
ALWAYS_INLINE vf v_x_sigmoid(vf x, vf a) {
    vf na = vsub(vzero(), a);
    vf e = vexp(vmin(na, vset1(88.0f)));
    vf r = vdiv(x, vadd(vset1(1.0f), e));
    return vsel(vgt(na, vset1(88.0f)), vmul(x, vzero()), r);
}

/* 0.5 x (1 + tanh(u)), u = sqrt(2/pi) (x + 0.044715 x^3), computed as x * sigmoid(2u): no
 * cancellation for negative x. Relative error a few ulp plus the rounding of 2u amplified by the
 * exponential (about |2u| * 1e-7, inherent to float input). */
ALWAYS_INLINE vf v_gelu_tanh(vf x) {
    vf x2 = vmul(x, x);
    vf a = vmul(x, vfma(x2, vset1(0.07135481627260025f), vset1(1.5957691216057308f)));
    return v_x_sigmoid(x, a);
}

/* erf, in two pieces fitted for this code (mpmath: least squares on 400 Chebyshev nodes, one
 * coefficient at a time rounded to float and the rest refitted around it):
 *   |z| < 1:  erf(z) = z P(z^2), P of degree 6 (5.4e-8 relative with float coefficients, most
 *             of it the rounding of P(0) = 2/sqrt(pi));
 *   |z| >= 1: erfc(|z|) = e^{-z^2} t G(t - ERF_C0), t = 1/|z| with |z| clamped to [1, 9.35]
 *             (erfc(9.35) underflows float), G of degree 11 (1.2e-8 relative).
 * Evaluated in float32, checked over every float z in [2^-14, 10] against double erf/erfc:
 * erf max abs error 8.1e-8 (|z| < 1, as z P(z^2) rounded to float: 1.7e-7 relative; |z| >= 1, as
 * 1 - erfc rounded to float: 6.0e-8), erfc relative error 3.5e-7 at most (far tail, z ~ 8).
 * For comparison, Abramowitz-Stegun 7.1.26 is 1.4e-7 abs before any float rounding.
 * e^{-z^2} takes the rounding error of z^2 into account (fma), so erfc keeps its relative
 * accuracy in the tail. */
#define ERF_C0 0.55347593582887701f
ALWAYS_INLINE vf v_erf_small(vf z) { /* P(z^2): erf(z) = z P(z^2) */
    vf w = vmul(z, z);
    vf p = vset1(6.184927769936621e-05f);
    p = vfma(p, w, vset1(-0.0007462146459147334f));
    p = vfma(p, w, vset1(0.00511896563693881f));
    p = vfma(p, w, vset1(-0.02681155875325203f));
    p = vfma(p, w, vset1(0.11282329261302948f));
    p = vfma(p, w, vset1(-0.37612465023994446f));
    return vfma(p, w, vset1(1.1283791065216064f));
}
ALWAYS_INLINE vf v_erfc_large(vf a) { /* erfc(a) for a >= 1 (NaN-free: NaN reads as 1) */
    vf ac = vmin(vmax(a, vset1(1.0f)), vset1(9.35f));
    vf t = vdiv(vset1(1.0f), ac);
    vf u = vsub(t, vset1(ERF_C0));
    vf g = vset1(0.10731344670057297f);
    g = vfma(g, u, vset1(-0.040559884160757065f));
    g = vfma(g, u, vset1(-0.09139301627874374f));
    g = vfma(g, u, vset1(0.10113111138343811f));
    g = vfma(g, u, vset1(-0.058673106133937836f));
    g = vfma(g, u, vset1(0.008497461676597595f));
    g = vfma(g, u, vset1(0.050128694623708725f));
    g = vfma(g, u, vset1(-0.09606900066137314f));
    g = vfma(g, u, vset1(0.09701360017061234f));
    g = vfma(g, u, vset1(-0.019346237182617188f));
    g = vfma(g, u, vset1(-0.17017312347888947f));
    g = vfma(g, u, vset1(0.5017621517181396f));
    vf z2 = vmul(ac, ac);
    vf z2lo = vfms(ac, ac, z2); /* ac*ac - z2, exact */
    vf ex = vexp(vsub(vzero(), z2));
    ex = vfnma(ex, z2lo, ex); /* e^{-z2 - z2lo} = e^{-z2} (1 - z2lo) */
    return vmul(vmul(ex, t), g);
}

/* 0.5 x (1 + erf(x / sqrt 2)); for x / sqrt 2 <= -1 the factor 1 + erf is erfc(|z|) itself, so
 * the negative tail keeps its relative accuracy (ref.c loses it to cancellation there). */
ALWAYS_INLINE vf v_gelu_erf(vf x) {
    vf z = vmul(x, vset1(0.70710678118654752f));
    vf a = vabs(z);
    vf hs = vfma(z, v_erf_small(z), vset1(1.0f));
    vf c = v_erfc_large(a);
    vf hl = vsel(vlt(x, vzero()), c, vsub(vset1(2.0f), c));
    vf h = vsel(vlt(a, vset1(1.0f)), hs, hl);
    return vmul(vmul(vset1(0.5f), x), h);
}

/* one unary in-place op over n floats: whole vectors, then one masked vector */
#define SIMD_MAP_INPLACE(fn, x, n)                        \
    do {                                                  \
        int64_t i_ = 0;                                   \
        for (; i_ + VW <= (n); i_ += VW)                  \
            vst((x) + i_, fn(vld((x) + i_)));             \
        if (i_ < (n)) {                                   \
            vmask m_ = vmask_n((int)((n)-i_));            \
            vst_m((x) + i_, fn(vld_m((x) + i_, m_)), m_); \
        }                                                 \
    } while (0)

static void simd_gelu_tanh(float *x, int64_t n) {
    SIMD_MAP_INPLACE(v_gelu_tanh, x, n);
}

static void simd_gelu_erf(float *x, int64_t n) {
    SIMD_MAP_INPLACE(v_gelu_erf, x, n);
}

ALWAYS_INLINE vf v_silu(vf g) {
    return v_x_sigmoid(g, g);
}

static void simd_silu_mul(float *g, const float *u, int64_t n) {
    int64_t i = 0;
    for (; i + VW <= n; i += VW)
        vst(g + i, vmul(v_silu(vld(g + i)), vld(u + i)));
    if (i < n) {
        vmask m = vmask_n((int)(n - i));
        vst_m(g + i, vmul(v_silu(vld_m(g + i, m)), vld_m(u + i, m)), m);
    }
}

static void simd_add(float *x, const float *y, int64_t n) {
    int64_t i = 0;
    for (; i + 4 * VW <= n; i += 4 * VW)
        for (int t = 0; t < 4; t++)
            vst(x + i + t * VW, vadd(vld(x + i + t * VW), vld(y + i + t * VW)));
    for (; i + VW <= n; i += VW)
        vst(x + i, vadd(vld(x + i), vld(y + i)));
    if (i < n) {
        vmask m = vmask_n((int)(n - i));
        vst_m(x + i, vadd(vld_m(x + i, m), vld_m(y + i, m)), m);
    }
}

/* sum over n floats of f(x[i]) where f(0) = 0 (masked-off lanes read 0), four accumulators */
#define SIMD_SUM(fn, x, n, out)                                           \
    do {                                                                  \
        vf s0_ = vzero(), s1_ = vzero(), s2_ = vzero(), s3_ = vzero();    \
        int64_t i_ = 0;                                                   \
        for (; i_ + 4 * VW <= (n); i_ += 4 * VW) {                        \
            s0_ = vadd(s0_, fn(vld((x) + i_)));                           \
            s1_ = vadd(s1_, fn(vld((x) + i_ + VW)));                      \
            s2_ = vadd(s2_, fn(vld((x) + i_ + 2 * VW)));                  \
            s3_ = vadd(s3_, fn(vld((x) + i_ + 3 * VW)));                  \
        }                                                                 \
        for (; i_ + VW <= (n); i_ += VW)                                  \
            s0_ = vadd(s0_, fn(vld((x) + i_)));                           \
        if (i_ < (n))                                                     \
            s1_ = vadd(s1_, fn(vld_m((x) + i_, vmask_n((int)((n)-i_))))); \
        (out) = vsum(vadd(vadd(s0_, s1_), vadd(s2_, s3_)));               \
    } while (0)

ALWAYS_INLINE vf v_id(vf v) {
    return v;
}
ALWAYS_INLINE vf v_sq(vf v) {
    return vmul(v, v);
}

/* Same contract as ref: y = x / sqrt(mean(x^2) + eps) * w; y may alias x. The sum of squares is
 * float32 in 4 x VW partial sums (relative error ~ n / (4 VW) ulp at worst, far less in practice);
 * the scale is formed in double as in ref. */
static void simd_rmsnorm(float *y, const float *x, const float *w, int64_t n, float eps) {
    float ss;
    SIMD_SUM(v_sq, x, n, ss);
    vf r = vset1((float)(1.0 / sqrt((double)ss / (double)n + eps)));
    int64_t i = 0;
    for (; i + VW <= n; i += VW)
        vst(y + i, vmul(vmul(vld(x + i), r), vld(w + i)));
    if (i < n) {
        vmask m = vmask_n((int)(n - i));
        vst_m(y + i, vmul(vmul(vld_m(x + i, m), r), vld_m(w + i, m)), m);
    }
}

/* Same contract as ref: y = (x - mean) / sqrt(var + eps) * w + b (b may be NULL); y may alias x.
 * Two passes over x (mean, then the centred sum of squares), float32 partial sums as above. */
static void simd_layernorm(float *y, const float *x, const float *w, const float *b, int64_t n,
                           float eps) {
    float sum;
    SIMD_SUM(v_id, x, n, sum);
    float mean = (float)((double)sum / (double)n);
    vf mv = vset1(mean);
    vf s0 = vzero(), s1 = vzero();
    int64_t i = 0;
    for (; i + 2 * VW <= n; i += 2 * VW) {
        vf d0 = vsub(vld(x + i), mv);
        vf d1 = vsub(vld(x + i + VW), mv);
        s0 = vfma(d0, d0, s0);
        s1 = vfma(d1, d1, s1);
    }
    for (; i + VW <= n; i += VW) {
        vf d = vsub(vld(x + i), mv);
        s0 = vfma(d, d, s0);
    }
    if (i < n) {
        vmask m = vmask_n((int)(n - i));
        vf d = vkeep(vsub(vld_m(x + i, m), mv), m);
        s1 = vfma(d, d, s1);
    }
    float var = vsum(vadd(s0, s1));
    vf r = vset1((float)(1.0 / sqrt((double)var / (double)n + eps)));
    i = 0;
    for (; i + VW <= n; i += VW) {
        vf t = vmul(vmul(vsub(vld(x + i), mv), r), vld(w + i));
        vst(y + i, b ? vadd(t, vld(b + i)) : t);
    }
    if (i < n) {
        vmask m = vmask_n((int)(n - i));
        vf t = vmul(vmul(vsub(vld_m(x + i, m), mv), r), vld_m(w + i, m));
        vst_m(y + i, b ? vadd(t, vld_m(b + i, m)) : t, m);
    }
}

#undef SIMD_MAP_INPLACE
#undef SIMD_SUM

#endif /* QVL_KERN_SIMD_BODY_H */
