/* dtype.h - element types of weights and their storage sizes. */
#ifndef QVL_DTYPE_H
#define QVL_DTYPE_H

#include <stddef.h>
#include <stdint.h>

typedef enum qvl_dtype {
    QVL_DT_F32 = 0,
    QVL_DT_F16,
    QVL_DT_BF16,
    QVL_DT_Q8_0, /* blocks of 32: f16 scale + 32 x int8 (34 bytes) */
    QVL_DT_Q4_0, /* blocks of 32: f16 scale + 16 bytes of 4-bit values (18 bytes) */
    /* The same blocks with 16 rows interleaved (made at load time for the decode kernels; see
     * QVL_X16 below): a matrix is stored in groups of 16 rows, the last one padded with zero
     * rows, group g at g * 16 * row_bytes. In a group, block b of all 16 rows occupies 16 * bs
     * bytes at b * 16 * bs (bs = 34 or 18): the 16 f16 scales (row r at 2r), then the quant
     * bytes in 64-byte chunks, chunk t holding bytes 4t..4t+3 of each row's quant bytes (row r
     * at 4r): 8 chunks for Q8_0, 4 for Q4_0. A 64-byte load then gives one 32-bit lane per row. */
    QVL_DT_Q8_0X16,
    QVL_DT_Q4_0X16,
    /* bf16 weights (the same bytes as BF16) multiplied with activations rounded to bf16 when a
     * call has more than 4 activation rows (prefill, vision): the reference's bf16 compute,
     * which AVX-512 BF16 dot products run at twice the float rate. Calls with up to 4 rows
     * (decode, bandwidth-bound) keep float activations, as BF16. */
    QVL_DT_BF16D,
    /* types that can appear in safetensors files but that the kernels do not take */
    QVL_DT_F64,
    QVL_DT_I64,
    QVL_DT_I32,
    QVL_DT_I16,
    QVL_DT_I8,
    QVL_DT_U8,
    QVL_DT_BOOL,
    QVL_DT_F8_E4M3,
    QVL_DT_F8_E5M2,
    QVL_DT_COUNT
} qvl_dtype;

#define QVL_QBLOCK 32
#define QVL_X16 16 /* rows per interleaved group */

static inline int qvl_dtype_is_x16(qvl_dtype t) {
    return t == QVL_DT_Q8_0X16 || t == QVL_DT_Q4_0X16;
}
/* the block type of an interleaved type (others map to themselves) */
static inline qvl_dtype qvl_dtype_x16_base(qvl_dtype t) {
    return t == QVL_DT_Q8_0X16 ? QVL_DT_Q8_0 : t == QVL_DT_Q4_0X16 ? QVL_DT_Q4_0 : t;
}

/* Bytes needed for one row of n elements (n a multiple of 32 for the block types). */
static inline size_t qvl_dtype_row_bytes(qvl_dtype t, size_t n) {
    switch (t) {
    case QVL_DT_F64:
    case QVL_DT_I64: return n * 8;
    case QVL_DT_F32:
    case QVL_DT_I32: return n * 4;
    case QVL_DT_F16:
    case QVL_DT_BF16:
    case QVL_DT_BF16D:
    case QVL_DT_I16: return n * 2;
    case QVL_DT_Q8_0:
    case QVL_DT_Q8_0X16: return n / QVL_QBLOCK * 34;
    case QVL_DT_Q4_0:
    case QVL_DT_Q4_0X16: return n / QVL_QBLOCK * 18;
    default: return n;
    }
}

/* Bytes of a whole [rows, n] matrix (interleaved types: rows rounded up to a group). */
static inline size_t qvl_dtype_mat_bytes(qvl_dtype t, size_t rows, size_t n) {
    if (qvl_dtype_is_x16(t))
        rows = (rows + QVL_X16 - 1) / QVL_X16 * QVL_X16;
    return qvl_dtype_row_bytes(t, n) * rows;
}

static inline const char *qvl_dtype_name(qvl_dtype t) {
    static const char *names[QVL_DT_COUNT] = {"F32",     "F16",     "BF16", "Q8_0",
                                              "Q4_0",    "Q8_0X16", "Q4_0X16", "BF16D",
                                              "F64",     "I64",     "I32",  "I16",
                                              "I8",      "U8",      "BOOL", "F8_E4M3",
                                              "F8_E5M2"};
    return (unsigned)t < QVL_DT_COUNT ? names[t] : "?";
}

#endif /* QVL_DTYPE_H */
