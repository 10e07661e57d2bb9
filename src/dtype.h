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

/* Bytes needed for one row of n elements (n a multiple of 32 for the block types). */
static inline size_t qvl_dtype_row_bytes(qvl_dtype t, size_t n) {
    switch (t) {
    case QVL_DT_F64:
    case QVL_DT_I64: return n * 8;
    case QVL_DT_F32:
    case QVL_DT_I32: return n * 4;
    case QVL_DT_F16:
    case QVL_DT_BF16:
    case QVL_DT_I16: return n * 2;
    case QVL_DT_Q8_0: return n / QVL_QBLOCK * 34;
    case QVL_DT_Q4_0: return n / QVL_QBLOCK * 18;
    default: return n;
    }
}

static inline const char *qvl_dtype_name(qvl_dtype t) {
    static const char *names[QVL_DT_COUNT] = {"F32", "F16", "BF16", "Q8_0", "Q4_0", "F64", "I64",
                                              "I32", "I16", "I8", "U8", "BOOL", "F8_E4M3",
                                              "F8_E5M2"};
    return (unsigned)t < QVL_DT_COUNT ? names[t] : "?";
}

#endif /* QVL_DTYPE_H */
