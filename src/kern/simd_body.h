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
 *           vtrans (transpose a VW x VW block held in VW vectors)
 *   tiles   GM_MR, GM_NV (GEMM micro-tile: rows, vectors of columns; optional GM_KB, GM_NC,
 *           GM_MC: k range, columns and rows per cache block), AT_QT (queries per attention tile, >= 4),
 *           AT_KB (keys per attention block, multiple of VW, <= 64), AT_PVN (head-dim vectors
 *           per P.V pass, 1..4)
 *
 * Numerics: float32 throughout; see kern.h and the comments below for each op's error.
 */
#ifndef QVL_KERN_SIMD_BODY_H
#define QVL_KERN_SIMD_BODY_H

#define GM_NR  (GM_NV * VW) /* output columns per GEMM micro-tile and packed panel */
#ifndef GM_KB
#    define GM_KB 256 /* k per packed panel (multiple of 32 and of VW) */
#endif
#ifndef GM_NC
#    define GM_NC (4 * GM_NR) /* columns per packed weight block (multiple of GM_NR) */
#endif
#ifndef GM_MC
#    define GM_MC 144 /* activation rows per L2 block */
#endif
#define MV_NR  4        /* weight rows per matvec pass */
#define AT_QC  QVL_KERN_ATTN_QC /* queries per chunk sharing one transposed key block */
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

/* Interleaved Q types on this generic path: MV_NR rows at a time are unpacked to plain blocks
 * on the stack (rows up to MV_X16_ROWMAX bytes; larger ones take the GEMM, which unpacks per
 * panel) and go through matvec.
 * (The AVX-512 table has its own kernel for these types, which does not unpack.) */
#define MV_X16_ROWMAX (16384 / QVL_QBLOCK * 34) /* k up to 16384 at Q8_0 */
static void matvec_x16(float *y, int64_t ldy, const float *x, int64_t ldx, int64_t m, int64_t k,
                       const uint8_t *w, qvl_dtype wt, const float *b, int64_t j0, int64_t j1) {
    const qvl_dtype bt = qvl_dtype_x16_base(wt);
    const size_t rb = qvl_dtype_row_bytes(bt, (size_t)k);
    _Alignas(64) uint8_t rows[MV_NR * MV_X16_ROWMAX];
    for (int64_t j = j0; j < j1; j += MV_NR) {
        int nr = j1 - j < MV_NR ? (int)(j1 - j) : MV_NR;
        for (int r = 0; r < nr; r++)
            qvl_x16_blocks(wt, w, k, j + r, 0, k / QVL_QBLOCK, rows + (size_t)r * rb);
        matvec(y + j, ldy, x, ldx, m, k, rows, bt, b ? b + j : NULL, 0, nr);
    }
}

/* ---- GEMM (m larger) ---------------------------------------------------------------------------
 * Blocking: for each block of GM_NC output columns and each range of GM_KB along k, the weights
 * are widened and packed once into panels of GM_NR columns, panel[p][r] (p along k), with VW x VW
 * register transposes. Then the activation rows go in blocks of GM_MC (that x block stays in L2
 * while every panel of the column block passes over it), and each panel (in L1) is reused by all
 * GM_MR-row micro-tiles of the row block. The micro-tile holds GM_MR x GM_NR outputs in
 * GM_MR x GM_NV registers over the panel's k range: per k step GM_NV panel vectors are loaded and
 * GM_MR activation values broadcast, for GM_MR x GM_NV FMAs.
 * The k ranges are fixed (0, GM_KB, 2 GM_KB, ...) and each output is the first range's sum, plus
 * the next range's, ..., plus the bias: the summation order of every y[i][j] is the same whatever
 * the column slice [j0, j1), the row count or the block sizes around it, so the results do not
 * depend on how the caller splits the columns across threads. */

/* Pack columns [jb, jb + nj) (nj <= GM_NR; the rest zero) over k range [p0, p0 + kb) of a
 * weight matrix of type WT into panel[p * GM_NR + r]. Q types are widened row by row first. */
ALWAYS_INLINE void gm_pack_t(const qvl_dtype WT, const uint8_t *w, size_t rb, int64_t jb, int nj,
                             int64_t p0, int kb, float *panel) {
    const bool x16 = qvl_dtype_is_x16(WT);
    const bool quant = x16 || WT == QVL_DT_Q8_0 || WT == QVL_DT_Q4_0;
    _Alignas(64) float tmp[VW][GM_KB]; /* Q types only */
    uint8_t qb[GM_KB / QVL_QBLOCK * 34]; /* interleaved types: a row's blocks, plain */
    for (int r0 = 0; r0 < GM_NR; r0 += VW) {
        int live = nj - r0 < 0 ? 0 : nj - r0 > VW ? VW : nj - r0;
        const uint8_t *rows[VW];
        for (int i = 0; i < VW; i++)
            rows[i] = w + (size_t)(jb + r0 + (i < live ? i : 0)) * rb;
        if (x16) {
            const qvl_dtype bt = qvl_dtype_x16_base(WT);
            const int64_t k = (int64_t)(rb / qvl_dtype_row_bytes(bt, QVL_QBLOCK)) * QVL_QBLOCK;
            for (int i = 0; i < live; i++) {
                qvl_x16_blocks(WT, w, k, jb + r0 + i, p0 / QVL_QBLOCK, kb / QVL_QBLOCK, qb);
                widen_range(bt, qb, 0, kb, tmp[i]);
            }
        } else if (quant) {
            for (int i = 0; i < live; i++)
                widen_range(WT, rows[i], p0, kb, tmp[i]);
        }
        int p = 0;
        for (; p + VW <= kb; p += VW) {
            vf r[VW];
            for (int i = 0; i < VW; i++)
                r[i] = i >= live ? vzero() : quant ? vld(tmp[i] + p) : wload(WT, rows[i], p0 + p);
            vtrans(r);
            for (int c = 0; c < VW; c++)
                vst(panel + (p + c) * GM_NR + r0, r[c]);
        }
        for (; p < kb; p++)
            for (int i = 0; i < VW; i++)
                panel[p * GM_NR + r0 + i] = i >= live ? 0.0f
                                            : quant  ? tmp[i][p]
                                                     : wscalar(WT, rows[i], p0 + p);
    }
}

static void gm_pack(qvl_dtype wt, const uint8_t *w, size_t rb, int64_t jb, int nj, int64_t p0,
                    int kb, float *panel) {
    switch (wt) {
    case QVL_DT_F32: gm_pack_t(QVL_DT_F32, w, rb, jb, nj, p0, kb, panel); break;
    case QVL_DT_F16: gm_pack_t(QVL_DT_F16, w, rb, jb, nj, p0, kb, panel); break;
    case QVL_DT_BF16: gm_pack_t(QVL_DT_BF16, w, rb, jb, nj, p0, kb, panel); break;
    case QVL_DT_Q8_0: gm_pack_t(QVL_DT_Q8_0, w, rb, jb, nj, p0, kb, panel); break;
    case QVL_DT_Q4_0: gm_pack_t(QVL_DT_Q4_0, w, rb, jb, nj, p0, kb, panel); break;
    case QVL_DT_Q8_0X16: gm_pack_t(QVL_DT_Q8_0X16, w, rb, jb, nj, p0, kb, panel); break;
    default: gm_pack_t(QVL_DT_Q4_0X16, w, rb, jb, nj, p0, kb, panel); break;
    }
}

/* One micro-tile: ni (<= GM_MR) activation rows x nj (<= GM_NR) columns over kb steps of the
 * panel. The tile is stored (first k range), added to y (later ranges) and gets the bias. */
static void gm_tile(const float *x, int64_t ldx, int ni, const float *panel, int kb, float *y,
                    int64_t ldy, int nj, bool first, const float *bias) {
    const float *xr[GM_MR];
    for (int i = 0; i < GM_MR; i++)
        xr[i] = x + (i < ni ? i : ni - 1) * ldx;
    vf acc[GM_MR][GM_NV];
    for (int i = 0; i < GM_MR; i++)
        for (int t = 0; t < GM_NV; t++)
            acc[i][t] = vzero();
    for (int p = 0; p < kb; p++) {
        vf wv[GM_NV];
        for (int t = 0; t < GM_NV; t++)
            wv[t] = vld(panel + p * GM_NR + t * VW);
        for (int i = 0; i < GM_MR; i++) {
            vf xb = vset1(xr[i][p]);
            for (int t = 0; t < GM_NV; t++)
                acc[i][t] = vfma(xb, wv[t], acc[i][t]);
        }
    }
    if (nj == GM_NR) {
        for (int i = 0; i < ni; i++) {
            float *yr = y + i * ldy;
            for (int t = 0; t < GM_NV; t++) {
                vf a = acc[i][t];
                if (!first)
                    a = vadd(vld(yr + t * VW), a);
                if (bias)
                    a = vadd(a, vld(bias + t * VW));
                vst(yr + t * VW, a);
            }
        }
        return;
    }
    for (int t = 0; t < GM_NV; t++) {
        int left = nj - t * VW;
        vmask mk = vmask_n(left <= 0 ? 0 : left > VW ? VW : left);
        vf bv = bias ? vld_m(bias + t * VW, mk) : vzero();
        for (int i = 0; i < ni; i++) {
            float *yr = y + i * ldy + t * VW;
            vf a = acc[i][t];
            if (!first)
                a = vadd(vld_m(yr, mk), a);
            if (bias)
                a = vadd(a, bv);
            vst_m(yr, a, mk);
        }
    }
}

static void gemm(float *y, int64_t ldy, const float *x, int64_t ldx, int64_t m, int64_t k,
                 const uint8_t *w, qvl_dtype wt, const float *b, int64_t j0, int64_t j1) {
    _Alignas(64) float wpk[GM_NC * GM_KB];
    size_t rb = qvl_dtype_row_bytes(wt, (size_t)k);
    for (int64_t jc = j0; jc < j1; jc += GM_NC) {
        int nc = j1 - jc < GM_NC ? (int)(j1 - jc) : GM_NC;
        int npan = (nc + GM_NR - 1) / GM_NR;
        for (int64_t p0 = 0; p0 < k; p0 += GM_KB) {
            int kb = k - p0 < GM_KB ? (int)(k - p0) : GM_KB;
            for (int pan = 0; pan < npan; pan++) {
                int nj = nc - pan * GM_NR < GM_NR ? nc - pan * GM_NR : GM_NR;
                gm_pack(wt, w, rb, jc + pan * GM_NR, nj, p0, kb, wpk + pan * (GM_KB * GM_NR));
            }
            bool first = p0 == 0;
            bool last = p0 + kb >= k;
            for (int64_t ic = 0; ic < m; ic += GM_MC) {
                int64_t mc = m - ic < GM_MC ? m - ic : GM_MC;
                for (int pan = 0; pan < npan; pan++) {
                    int64_t jb = jc + pan * GM_NR;
                    int nj = nc - pan * GM_NR < GM_NR ? nc - pan * GM_NR : GM_NR;
                    const float *bias = b && last ? b + jb : NULL;
                    for (int64_t i0 = ic; i0 < ic + mc; i0 += GM_MR) {
                        int ni = ic + mc - i0 < GM_MR ? (int)(ic + mc - i0) : GM_MR;
                        gm_tile(x + i0 * ldx + p0, ldx, ni, wpk + pan * (GM_KB * GM_NR), kb,
                                y + i0 * ldy + jb, ldy, nj, first, bias);
                    }
                }
            }
        }
    }
}

static bool simd_matmul(float *y, int64_t ldy, const float *x, int64_t ldx, int64_t m, int64_t k,
                        const void *w, qvl_dtype wt, const float *b, int64_t j0, int64_t j1) {
    if (wt == QVL_DT_BF16D && m > 4 && k > 0) {
        /* round the activations to bf16 (as ref does), then the plain bf16 path; without the
         * buffer, decline (ref computes the same products in place) */
        size_t n = 0;
        float *xr = qvl_size_mul((size_t)m, (size_t)k * sizeof(float), &n) ? qvl_malloc(n) : NULL;
        if (!xr)
            return false;
        for (int64_t i = 0; i < m; i++)
            for (int64_t p = 0; p < k; p++) {
                uint32_t u = (uint32_t)qvl_f32_to_bf16(x[i * ldx + p]) << 16;
                memcpy(&xr[i * k + p], &u, 4);
            }
        bool ok = simd_matmul(y, ldy, xr, k, m, k, w, QVL_DT_BF16, b, j0, j1);
        qvl_free(xr);
        return ok;
    }
    if (wt == QVL_DT_BF16D)
        wt = QVL_DT_BF16;
    const bool x16 = qvl_dtype_is_x16(wt);
    if (wt != QVL_DT_F32 && wt != QVL_DT_F16 && wt != QVL_DT_BF16 && wt != QVL_DT_Q8_0 &&
        wt != QVL_DT_Q4_0 && !x16)
        return false;
    if ((x16 || wt == QVL_DT_Q8_0 || wt == QVL_DT_Q4_0) && k % QVL_QBLOCK)
        return false;

    if (m <= 0 || j1 <= j0)
        return true;
    if (k <= 0) {
        for (int64_t i = 0; i < m; i++)
            for (int64_t j = j0; j < j1; j++)
                y[i * ldy + j] = b ? b[j] : 0.0f;
        return true;
    }
    if (m <= 4 && x16 && qvl_dtype_row_bytes(wt, (size_t)k) <= MV_X16_ROWMAX)
        matvec_x16(y, ldy, x, ldx, m, k, w, wt, b, j0, j1);
    else if (m <= 4 && !x16)
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
 * Queries go in chunks of AT_QC (running max, per-lane partial sums of the softmax denominator
 * and the chunk's output rows serve as the online-softmax state), keys in blocks of AT_KB.
 * A chunk of more than QVL_KERN_ATTN_ROWS (4) queries (prefill, the vision tower) transposes
 * each key block into kt[d][AT_KB] and packs its value rows into whole aligned vectors, once
 * per call into a heap buffer (once per chunk on the stack if that cannot be allocated), and
 * makes its query and output rows contiguous. Within a chunk each key block is visited once, and
 * every tile of up to AT_QT queries
 *   1. forms its AT_QT x AT_KB scores in registers as outer products (a column of kt is loaded
 *      once and feeds AT_QT FMAs; a query element is broadcast once and feeds AT_KB / VW FMAs),
 *      or, in a small chunk (decode: the query heads of one K/V head), from the K rows as they
 *      lie (f32, bf16 or f16, widened in registers): VW keys at a time, one accumulator per
 *      key over the head dimension, folded into one vector of VW scores by vsum_lanes (no
 *      horizontal sum per key);
 *   2. updates the online softmax per query: masked keys (past the end, past the causal
 *      diagonal) get -inf, the running max moves only when the block holds a larger score
 *      (then the old state is rescaled by e^(m_old - m_new), folded into the next step), and
 *      e^(s - m) are summed lane-wise (one horizontal sum per query at the very end);
 *   3. accumulates P.V into the output rows in passes of up to AT_PVN vectors of the head
 *      dimension (passes of nearly equal width): each V vector loaded from L1 feeds the tile's
 *      queries, AT_QT x AT_PVN accumulators.
 * A small chunk reads the V rows as they lie too when hd is a multiple of VW (16-bit rows are
 * otherwise widened into a float block first), and prefetches the K and V rows of the next key
 * block while it works on one: decode attention streams the cache from memory (28 layers of
 * a 1500-token 2B cache are 170 MB in bf16), and the hardware prefetchers alone left it at
 * about half the memory bandwidth (bench_kern attn-decode).
 * K/V rows may come in chunks (attn's kvc: a multiple of AT_KB on every path): a key block then
 * lies in one chunk, its rows ldk / ldv apart, and only the block's first row is found through
 * the chunk (at_off), so the arithmetic is that of the same rows without chunks.
 * A tile with fewer than AT_QT live queries runs the same code with QN = 1, 2 or 4 rows (or
 * AT_QT rows, the extra ones duplicating the last live query and never stored).
 * Each query's arithmetic depends only on the key blocks and on whether its chunk is small,
 * not on which queries share its tile or chunk or on the buffers; so calls over query ranges
 * cut at multiples of AT_QC give the same bits as one call.
 * Float32 throughout; only the summation order differs from ref.c. */

#define AT_KV (AT_KB / VW) /* score vectors per query row of a tile */
_Static_assert(QVL_KERN_ATTN_ROWS == 4 && AT_QT >= 4, "small chunks are tiles of 1, 2 or 4 rows");
_Static_assert(QVL_KERN_KV_CHUNK % AT_KB == 0, "a K/V chunk holds whole key blocks");

/* lane index of each key of a block, as floats (mask compares) */
static const float at_iota[64] = {
    0,  1,  2,  3,  4,  5,  6,  7,  8,  9,  10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21,
    22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43,
    44, 45, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63,
};
_Static_assert(AT_KB <= 64 && AT_KB % VW == 0, "AT_KB: a multiple of VW, at most 64");

/* per-chunk online-softmax state */
typedef struct {
    float m[AT_QC];                /* running max of the scaled scores (-inf: none yet) */
    _Alignas(64) float l[AT_QC][VW]; /* lane-wise partial sums of e^(s - m) */
} at_state;

/* P.V for one pass over NV vectors of the head dimension starting at d0 (the last one masked to
 * `tail` lanes when PART): o[q][d0..] = o[q][d0..] * c[q] + sum_jj p[q][jj] v[jj][d0..].
 * VP: v is the packed block (rows padded with zeros to whole vectors, no masked loads). */
ALWAYS_INLINE void at_pv(const int QN, const int NV, const bool PART, const bool VP,
                         const qvl_dtype KT, int tail, int nqb, float *const orow[AT_QT],
                         const float p[AT_QT][AT_KB], const float cfac[AT_QT], bool rescale,
                         const uint8_t *v, int64_t ldv, int nj, int d0, const uint8_t *vn) {
    vmask mt = vmask_n(PART ? tail : VW);
    vf acc[AT_QT][AT_PVN];
    for (int q = 0; q < QN; q++) {
        for (int t = 0; t < NV; t++)
            acc[q][t] = PART && t == NV - 1 ? vld_m(orow[q] + d0 + t * VW, mt)
                                            : vld(orow[q] + d0 + t * VW);
        if (rescale) {
            vf cv = vset1(cfac[q]);
            for (int t = 0; t < NV; t++)
                acc[q][t] = vmul(acc[q][t], cv);
        }
    }
    const int ES = KT == QVL_DT_F32 ? 4 : 2;
    const size_t vstep = (size_t)ldv * ES;
    const uint8_t *vj = v;
    for (int jj = 0; jj < nj; jj++, vj += vstep) {
        vf vv[AT_PVN];
        if (!VP && vn) /* this pass's part of the same row of the next block */
            for (int b = 0; b < NV * VW * ES; b += 64)
                _mm_prefetch((const char *)(vn + (vj - v) + d0 * ES + b), _MM_HINT_T0);
        for (int t = 0; t < NV; t++) /* 16-bit rows come here only as whole vectors */
            vv[t] = !VP && PART && t == NV - 1 ? vld_m((const float *)vj + d0 + t * VW, mt)
                                               : wload(KT, vj, d0 + t * VW);
        for (int q = 0; q < QN; q++) {
            vf pb = vset1(p[q][jj]);
            for (int t = 0; t < NV; t++)
                acc[q][t] = vfma(pb, vv[t], acc[q][t]);
        }
    }
    for (int q = 0; q < QN && q < nqb; q++)
        for (int t = 0; t < NV; t++) {
            if (PART && t == NV - 1)
                vst_m(orow[q] + d0 + t * VW, acc[q][t], mt);
            else
                vst(orow[q] + d0 + t * VW, acc[q][t]);
        }
}

/* One tile of QN query rows (nqb of them live) against one key block of nj keys: scores,
 * online-softmax update of st rows [0, QN), P.V into orow. valid[q] = how many leading keys of
 * the block query q sees (0..nj). kt: the transposed block, v then the packed value block (kt
 * NULL: kb and v are the caller's K and V rows, elements of type KT, ldk and ldv apart; kn, vn:
 * the next block's, prefetched meanwhile, or NULL). */
ALWAYS_INLINE void at_tile(const int QN, const qvl_dtype KT, int nqb, const int valid[AT_QT],
                           const float *const qr[AT_QT], float *const orow[AT_QT],
                           const float *kt, const uint8_t *kb, int64_t ldk, const uint8_t *v,
                           int64_t ldv, int nj, int hd, float scale, float *mrow,
                           float (*lrow)[VW], const uint8_t *kn, const uint8_t *vn) {
    _Alignas(64) float p[AT_QT][AT_KB];
    float cfac[AT_QT];
    vf s[AT_QT][AT_KV];
    if (kt) {
        for (int q = 0; q < QN; q++)
            for (int t = 0; t < AT_KV; t++)
                s[q][t] = vzero();
        for (int d = 0; d < hd; d++) {
            vf kv[AT_KV];
            for (int t = 0; t < AT_KV; t++)
                kv[t] = vld(kt + d * AT_KB + t * VW);
            for (int q = 0; q < QN; q++) {
                vf qb = vset1(qr[q][d]);
                for (int t = 0; t < AT_KV; t++)
                    s[q][t] = vfma(qb, kv[t], s[q][t]);
            }
        }
        vf sc = vset1(scale);
        for (int q = 0; q < QN; q++)
            for (int t = 0; t < AT_KV; t++)
                s[q][t] = vmul(s[q][t], sc);
    } else if (hd % VW == 0) {
        /* VW keys at a time (rows past nj repeat the last one; their scores are masked below).
         * The next block's rows are prefetched a line per step of the first pass over these,
         * spread over the loop (all at once was slower). */
        const int ES = KT == QVL_DT_F32 ? 4 : 2;
        const size_t kstep = (size_t)ldk * ES;
        const vf sc = vset1(scale);
        /* 16-bit rows that feed several queries are widened once, into L1 */
        const bool widen = KT != QVL_DT_F32 && nqb > 1;
        _Alignas(64) float kw[VW * AT_HDMAX];
        for (int t = 0; t < AT_KV; t++) {
            if (t * VW >= nj) {
                for (int q = 0; q < QN; q++)
                    s[q][t] = vzero();
                continue;
            }
            const uint8_t *rows[VW];
            for (int j = 0; j < VW; j++)
                rows[j] = kb + (size_t)(t * VW + j < nj ? t * VW + j : nj - 1) * kstep;
            if (widen)
                for (int j = 0; j < VW; j++)
                    for (int d = 0; d < hd; d += VW) {
                        if (kn && (d * ES) % 64 == 0)
                            _mm_prefetch((const char *)(kn + (rows[j] - kb) + d * ES),
                                         _MM_HINT_T0);
                        vst(kw + j * hd + d, wload(KT, rows[j], d));
                    }
            for (int q = 0; q < QN; q++) {
                if (q >= nqb) {
                    s[q][t] = vzero();
                    continue;
                }
                vf acc[VW];
                for (int j = 0; j < VW; j++)
                    acc[j] = vzero();
                for (int d = 0; d < hd; d += VW) {
                    vf qv = vld(qr[q] + d);
                    const bool pfd = kn && !widen && q == 0 && (d * ES) % 64 == 0;
                    for (int j = 0; j < VW; j++) {
                        if (pfd)
                            _mm_prefetch((const char *)(kn + (rows[j] - kb) + d * ES),
                                         _MM_HINT_T0);
                        acc[j] = vfma(qv, widen ? vld(kw + j * hd + d) : wload(KT, rows[j], d),
                                      acc[j]);
                    }
                }
                s[q][t] = vmul(vsum_lanes(acc), sc);
            }
        }
    } else { /* float rows (16-bit ones widened by the caller), a partial last vector */
        for (int q = 0; q < QN; q++) {
            for (int jj = 0; jj < AT_KB; jj++)
                p[q][jj] = jj < valid[q] ? simd_dot(qr[q], (const float *)kb + jj * ldk, hd) *
                                               scale
                                         : 0.0f;
            for (int t = 0; t < AT_KV; t++)
                s[q][t] = vld(p[q] + t * VW);
        }
    }
    bool rescale = false;
    for (int q = 0; q < QN; q++) {
        int nv = q < nqb ? valid[q] : 0;
        cfac[q] = 1.0f;
        if (nv <= 0) { /* sees no key of this block (or not a live row) */
            for (int t = 0; t < AT_KV; t++)
                vst(p[q] + t * VW, vzero());
            continue;
        }
        if (nv < AT_KB) {
            vf lim = vset1((float)nv), ninf = vset1(-INFINITY);
            for (int t = 0; t < AT_KV; t++)
                s[q][t] = vsel(vlt(vld(at_iota + t * VW), lim), s[q][t], ninf);
        }
        vf mx = s[q][0];
        for (int t = 1; t < AT_KV; t++)
            mx = vmax(mx, s[q][t]);
        float bm = vhmax(mx);
        if (bm > mrow[q]) {
            cfac[q] = expf(mrow[q] - bm); /* 0 on the first block (mrow = -inf) */
            mrow[q] = bm;
            rescale = true;
        }
        vf mv = vset1(mrow[q]);
        vf sum = vzero();
        for (int t = 0; t < AT_KV; t++) {
            vf e = vexp(vsub(s[q][t], mv));
            vst(p[q] + t * VW, e);
            sum = vadd(sum, e);
        }
        vf l = vld(lrow[q]);
        vst(lrow[q], cfac[q] == 1.0f ? vadd(l, sum) : vfma(l, vset1(cfac[q]), sum));
    }
    /* passes of nearly equal width (4 vectors: 2 + 2, not 3 + 1: a narrow pass reloads P for
     * few FMAs) */
    int nvec = (hd + VW - 1) / VW, tail = hd % VW;
    int npass = (nvec + AT_PVN - 1) / AT_PVN;
    for (int v0 = 0, pass = 0; v0 < nvec; v0 += (nvec - v0) / (npass - pass), pass++) {
        int nvp = (nvec - v0) / (npass - pass);
        bool part = tail && v0 + nvp == nvec;
        int d0 = v0 * VW;
#define AT_PV1(NV, PART)                                                                        \
    (kt ? at_pv(QN, NV, PART, true, QVL_DT_F32, tail, nqb, orow, p, cfac, rescale, v, ldv, nj,  \
                d0, NULL)                                                                       \
        : at_pv(QN, NV, PART, false, KT, tail, nqb, orow, p, cfac, rescale, v, ldv, nj, d0, vn))
#define AT_PV(NV) (part ? AT_PV1(NV, true) : AT_PV1(NV, false))
        switch (nvp) {
        case 1: AT_PV(1); break;
#if AT_PVN >= 2
        case 2: AT_PV(2); break;
#endif
#if AT_PVN >= 3
        case 3: AT_PV(3); break;
#endif
#if AT_PVN >= 4
        case 4: AT_PV(4); break;
#endif
        default: break;
        }
#undef AT_PV
#undef AT_PV1
    }
}

/* Widen hd elements of a K/V row of type kvt to float (exact). */
static void at_row(qvl_dtype kvt, const uint8_t *row, int hd, float *out) {
    int d = 0;
    for (; d + VW <= hd; d += VW)
        vst(out + d, wload(kvt, row, d));
    for (; d < hd; d++)
        out[d] = wscalar(kvt, row, d);
}

/* Pack one key block (nj keys from kb, rest zero; rows of type kvt, ldk elements apart)
 * transposed into kt[d][AT_KB], VW x VW blocks at a time, and its value rows into vp (rows of
 * ldvp floats, whole vectors, zero past hd). */
static void at_pack_block(const uint8_t *kb, int64_t ldk, const uint8_t *vr, int64_t ldv, int nj,
                          int hd, int64_t ldvp, float *kt, float *vp, qvl_dtype kvt) {
    const size_t es = kvt == QVL_DT_F32 ? 4 : 2;
    for (int g = 0; g < AT_KB; g += VW) {
        int live = nj - g < 0 ? 0 : nj - g > VW ? VW : nj - g;
        int d = 0;
        for (; d + VW <= hd; d += VW) {
            vf r[VW];
            for (int i = 0; i < VW; i++)
                r[i] = i < live ? wload(kvt, kb + (size_t)((g + i) * ldk) * es, d) : vzero();
            vtrans(r);
            for (int c = 0; c < VW; c++)
                vst(kt + (d + c) * AT_KB + g, r[c]);
        }
        for (; d < hd; d++)
            for (int i = 0; i < VW; i++)
                kt[d * AT_KB + g + i] =
                    i < live ? wscalar(kvt, kb + (size_t)((g + i) * ldk) * es, d) : 0.0f;
    }
    for (int jj = 0; jj < nj; jj++) {
        const uint8_t *row = vr + (size_t)(jj * ldv) * es;
        float *out = vp + jj * ldvp;
        int d = 0;
        for (; d + VW <= hd; d += VW)
            vst(out + d, wload(kvt, row, d));
        if (d < hd) {
            if (kvt == QVL_DT_F32) {
                vst(out + d, vld_m((const float *)row + d, vmask_n(hd - d)));
            } else {
                vst(out + d, vzero());
                for (; d < hd; d++)
                    out[d] = wscalar(kvt, row, d);
            }
        }
    }
}

/* elements from the first K/V row to row j (attn's chunked layout when kvc > 0) */
static inline size_t at_off(int64_t j, int64_t ld, int64_t kvc, int64_t kvcs) {
    return (size_t)(kvc > 0 ? (j / kvc) * kvcs + (j % kvc) * ld : j * ld);
}

static void simd_attn(float *o, int64_t ldo, const float *q, int64_t ldq, int64_t nq,
                      const void *kp, int64_t ldk, const void *vp_, int64_t ldv, int64_t kvc,
                      int64_t kvcs, int64_t nk, int hd, float scale, bool causal, int64_t q_pos0,
                      qvl_dtype kvt) {
    if (hd > AT_HDMAX || hd <= 0 || (kvc > 0 && kvc % AT_KB != 0) ||
        (kvt != QVL_DT_F32 && kvt != QVL_DT_F16 && kvt != QVL_DT_BF16)) {
        qvl_kern_ref()->attn(o, ldo, q, ldq, nq, kp, ldk, vp_, ldv, kvc, kvcs, nk, hd, scale,
                             causal, q_pos0, kvt);
        return;
    }
    /* float K/V are read in place; 16-bit ones are widened block by block (into the packed
     * buffers, or for the in-place path into kt1/vp1 as plain rows) */
    const bool kf32 = kvt == QVL_DT_F32;
    const size_t es = kf32 ? 4 : 2;
    const uint8_t *kbytes = kp, *vbytes = vp_;
    _Alignas(64) float kt1[AT_HDMAX * AT_KB];
    _Alignas(64) float vp1[AT_KB * AT_HDMAX];
    int64_t ldvp = (hd + VW - 1) / VW * VW; /* packed value rows: whole vectors, aligned */
    at_state st;
    /* With enough queries, one heap buffer holds: the keys this call sees, transposed block by
     * block, and the values, packed once for all query chunks (filled as the chunks reach them);
     * each chunk's query rows, copied contiguous; its output rows, accumulated there. The
     * caller's rows are often far apart (a head inside fused QKV rows, 12 KB), which would cost
     * TLB misses and L1 set conflicts in every tile and a new transpose for every chunk. Small
     * calls (decode), or no memory, work in place with one block on the stack; the arithmetic is
     * the same either way. */
    int64_t kmax = causal && q_pos0 + nq < nk ? q_pos0 + nq : nk;
    int64_t nblk = kmax > 0 ? (kmax + AT_KB - 1) / AT_KB : 0;
    size_t blkf = (size_t)hd * AT_KB + (size_t)AT_KB * (size_t)ldvp; /* floats per packed block */
    void *raw = NULL;
    if (nq > QVL_KERN_ATTN_ROWS) {
        size_t n = 0;
        if (qvl_size_mul((size_t)nblk, blkf, &n) &&
            qvl_size_add(n, (size_t)(2 * AT_QC * ldvp), &n) &&
            qvl_size_mul(n, sizeof(float), &n) && qvl_size_add(n, 64, &n))
            raw = qvl_malloc(n);
    }
    float *qbuf = raw ? (float *)(((uintptr_t)raw + 63) & ~(uintptr_t)63) : NULL;
    float *obuf = qbuf ? qbuf + AT_QC * ldvp : NULL;
    float *kvall = obuf ? obuf + AT_QC * ldvp : NULL; /* block b: kt at b * blkf, then v */
    int64_t packed = 0; /* keys [0, packed) are in kvall */
    for (int64_t i0 = 0; i0 < nq; i0 += AT_QC) {
        int ni = nq - i0 < AT_QC ? (int)(nq - i0) : AT_QC;
        const float *qc = qbuf ? qbuf : q + i0 * ldq;
        int64_t ldqc = qbuf ? ldvp : ldq;
        float *oc = obuf ? obuf : o + i0 * ldo;
        int64_t ldoc = obuf ? ldvp : ldo;
        for (int i = 0; i < ni; i++) {
            st.m[i] = -INFINITY;
            vst(st.l[i], vzero());
            if (qbuf)
                memcpy(qbuf + i * ldvp, q + (i0 + i) * ldq, (size_t)hd * sizeof(float));
            memset(oc + i * ldoc, 0, (size_t)hd * sizeof(float));
        }
        int64_t kend = nk;
        if (causal && q_pos0 + i0 + ni < kend)
            kend = q_pos0 + i0 + ni;
        bool transposed = ni > QVL_KERN_ATTN_ROWS;
        for (; kvall && packed < kend; packed += AT_KB) {
            int nj = kmax - packed < AT_KB ? (int)(kmax - packed) : AT_KB;
            float *blk = kvall + (size_t)(packed / AT_KB) * blkf;
            at_pack_block(kbytes + at_off(packed, ldk, kvc, kvcs) * es, ldk,
                          vbytes + at_off(packed, ldv, kvc, kvcs) * es, ldv, nj, hd, ldvp, blk,
                          blk + (size_t)hd * AT_KB, kvt);
        }
        /* small chunks read 16-bit K/V rows in place when hd is whole vectors */
        const bool in_place = kf32 || hd % VW == 0;
        for (int64_t j0 = 0; j0 < kend; j0 += AT_KB) {
            int nj = kend - j0 < AT_KB ? (int)(kend - j0) : AT_KB;
            /* a block's rows lie in one chunk, ldk / ldv apart */
            const uint8_t *kb = kbytes + at_off(j0, ldk, kvc, kvcs) * es;
            const uint8_t *vrows = vbytes + at_off(j0, ldv, kvc, kvcs) * es;
            int64_t ldkb = ldk, ldvr = ldv;
            qvl_dtype rt = kvt; /* element type of kb / vrows */
            /* the next block's rows, prefetched by small chunks when there is one (in place) */
            const bool more = !transposed && in_place && j0 + AT_KB < kend;
            const uint8_t *kn = more ? kbytes + at_off(j0 + AT_KB, ldk, kvc, kvcs) * es : NULL;
            const uint8_t *vn = more ? vbytes + at_off(j0 + AT_KB, ldv, kvc, kvcs) * es : NULL;
            const float *kt = kt1, *vp = vp1;
            if (kvall) {
                kt = kvall + (size_t)(j0 / AT_KB) * blkf;
                vp = kt + (size_t)hd * AT_KB;
            } else if (transposed) {
                at_pack_block(kb, ldk, vrows, ldv, nj, hd, ldvp, kt1, vp1, kvt);
            }
            if (!transposed && !in_place) { /* widen this block's rows: keys into kt1, values into vp1 */
                for (int jj = 0; jj < nj; jj++) {
                    at_row(kvt, kb + (size_t)(jj * ldk) * es, hd, kt1 + jj * hd);
                    at_row(kvt, vrows + (size_t)(jj * ldv) * es, hd, vp1 + jj * ldvp);
                }
                kb = (const uint8_t *)kt1, ldkb = hd, vrows = (const uint8_t *)vp1, ldvr = ldvp;
                rt = QVL_DT_F32;
            }
            for (int ii = 0; ii < ni; ii += AT_QT) {
                int nqb = ni - ii < AT_QT ? ni - ii : AT_QT;
                int valid[AT_QT];
                int any = 0;
                for (int qi = 0; qi < AT_QT; qi++) {
                    int64_t end = causal ? q_pos0 + i0 + ii + qi + 1 : nk;
                    if (end > nk)
                        end = nk;
                    int64_t nv = end - j0;
                    valid[qi] = qi >= nqb || nv <= 0 ? 0 : nv > nj ? nj : (int)nv;
                    any |= valid[qi];
                }
                if (!any)
                    continue;
                const float *qr[AT_QT];
                float *orow[AT_QT];
                for (int qi = 0; qi < AT_QT; qi++) {
                    int64_t i = ii + (qi < nqb ? qi : nqb - 1);
                    qr[qi] = qc + i * ldqc;
                    orow[qi] = oc + i * ldoc;
                }
                if (transposed) {
                    const uint8_t *vb = (const uint8_t *)vp;
#define AT_BIG(QN)                                                                              \
    at_tile(QN, QVL_DT_F32, nqb, valid, qr, orow, kt, NULL, 0, vb, ldvp, nj, hd, scale, st.m + ii, \
            st.l + ii, NULL, NULL)
                    if (nqb == 1)
                        AT_BIG(1);
                    else if (nqb == 2)
                        AT_BIG(2);
                    else if (nqb <= 4)
                        AT_BIG(4);
                    else
                        AT_BIG(AT_QT);
#undef AT_BIG
                    continue;
                }
#define AT_SMALL(KT)                                                                            \
    do {                                                                                        \
        if (nqb == 1)                                                                           \
            at_tile(1, KT, nqb, valid, qr, orow, NULL, kb, ldkb, vrows, ldvr, nj, hd, scale,    \
                    st.m + ii, st.l + ii, kn, vn);                                              \
        else if (nqb == 2)                                                                      \
            at_tile(2, KT, nqb, valid, qr, orow, NULL, kb, ldkb, vrows, ldvr, nj, hd, scale,    \
                    st.m + ii, st.l + ii, kn, vn);                                              \
        else                                                                                    \
            at_tile(4, KT, nqb, valid, qr, orow, NULL, kb, ldkb, vrows, ldvr, nj, hd, scale,    \
                    st.m + ii, st.l + ii, kn, vn);                                              \
    } while (0)
                switch (rt) { /* small chunks: at most QVL_KERN_ATTN_ROWS (4) queries */
                case QVL_DT_BF16: AT_SMALL(QVL_DT_BF16); break;
                case QVL_DT_F16: AT_SMALL(QVL_DT_F16); break;
                default: AT_SMALL(QVL_DT_F32); break;
                }
#undef AT_SMALL
            }
        }
        for (int i = 0; i < ni; i++) {
            float l = vsum(vld(st.l[i]));
            float inv = l > 0 ? 1.0f / l : 0.0f;
            const float *src = oc + i * ldoc;
            float *oi = o + (i0 + i) * ldo;
            for (int d = 0; d < hd; d++)
                oi[d] = src[d] * inv;
        }
    }
    qvl_free(raw);
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
