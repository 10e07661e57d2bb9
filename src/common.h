/* common.h - internal helpers shared by every module: allocation (with a failure hook for
 * tests), checked size arithmetic, error messages, logging and whole-file reads. */
#ifndef QVL_COMMON_H
#define QVL_COMMON_H

#include "qvl.h"
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#if defined(__GNUC__)
#    define QVL_PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#    define QVL_PRINTF(a, b)
#endif

/* All library heap goes through these so tests can fail the Nth allocation. */
void *qvl_malloc(size_t n);
void *qvl_calloc(size_t n, size_t size);
void *qvl_realloc(void *p, size_t n);
char *qvl_strdup(const char *s);
char *qvl_strndup(const char *s, size_t n);
/* Large buffers read at memory speed (quantised weights, the KV cache): anonymous memory with
 * transparent huge pages where the kernel allows (plain malloc memory is not eligible when THP
 * is in "madvise" mode, and streaming weights through 4 KiB pages costs TLB misses). Counted
 * by the failure hook like qvl_malloc; qvl_free_big needs the size given at allocation. */
void *qvl_malloc_big(size_t n);
void qvl_free_big(void *p, size_t n);
/* Fault in the pages of [p, p + n) of a qvl_malloc_big buffer as if written, without changing
 * their contents (MADV_POPULATE_WRITE; does nothing where the kernel lacks it, before Linux
 * 5.14: the pages then fault in when first written, as without it). */
void qvl_prefault(void *p, size_t n);
/* Growing NUL-terminated string: appends after a failed allocation (or a size overflow) do
 * nothing and leave oom set; p is NULL until the first append; free p with qvl_free. */
typedef struct qvl_sbuf {
    char *p;
    size_t n, cap;
    bool oom;
} qvl_sbuf;
void qvl_sbuf_add(qvl_sbuf *b, const char *s, size_t n);
void qvl_sbuf_str(qvl_sbuf *b, const char *s);

/* Test hook: fail the allocation with index `n` (0-based) counted from this call, and every
 * later one if `sticky`. n < 0 disables. Returns the number of allocations since last reset. */
QVL_API long qvl_alloc_fail_at(long n, int sticky);
QVL_API long qvl_alloc_count(void);

/* cJSON through qvl_malloc (src/jsonhooks.c). qvl_json_parse: NULL on failure with *st
 * QVL_E_NOMEM (an allocation failed) or QVL_E_FORMAT (*err_off: offset of the error, -1 unknown);
 * end (may be NULL) gets the end of the parsed value. */
struct cJSON;
void qvl_json_init(void);
struct cJSON *qvl_json_parse(const char *json, size_t len, const char **end, qvl_status *st,
                             long *err_off);
/* Python's repr() of a float (shortest round trip, ".0" kept, exponent from 1e16 and below
 * 1e-4), and json.dumps(v, ensure_ascii=False) of a parsed value, as the chat template's
 * `tojson` writes it (jsonhooks.c). */
void qvl_py_float_repr(double v, char *buf, size_t n);
void qvl_json_py_dump(qvl_sbuf *b, const struct cJSON *v);

/* Checked arithmetic: return false on overflow. */
static inline bool qvl_size_mul(size_t a, size_t b, size_t *out) {
    return !__builtin_mul_overflow(a, b, out);
}
static inline bool qvl_size_add(size_t a, size_t b, size_t *out) {
    return !__builtin_add_overflow(a, b, out);
}

/* snprintf into an optional error buffer (buf may be NULL / len 0). */
void qvl_errf(char *buf, size_t len, const char *fmt, ...) QVL_PRINTF(3, 4);

void qvl_log(qvl_log_level lvl, const char *fmt, ...) QVL_PRINTF(2, 3);
bool qvl_log_enabled(qvl_log_level lvl);

/* Read a whole file into a NUL-terminated heap buffer. Fails with QVL_E_LIMIT when larger than
 * max_bytes (0 = no limit). */
qvl_status qvl_read_file(const char *path, size_t max_bytes, char **out, size_t *len, char *err,
                         size_t err_len);
/* path join into a heap string: dir + "/" + name */
char *qvl_path_join(const char *dir, const char *name);
/* Index of name in names[0..n) (exact match), or -1 (also for NULL). */
int qvl_name_index(const char *const *names, int n, const char *name);
bool qvl_file_exists(const char *path);
bool qvl_dir_exists(const char *path);
/* mkdir -p: create dir and its missing parents (mode 0777 less the umask). True when dir exists
 * as a directory afterwards; errno tells why not. */
bool qvl_mkdir_p(const char *dir);
/* qvl_mkdir_p for the directory part of path (nothing to do without one). */
bool qvl_mkdir_parents(const char *path);

/* bf16 / f16 conversion (exact, scalar) */
static inline float qvl_bf16_to_f32(uint16_t h) {
    union {
        uint32_t u;
        float f;
    } v;
    v.u = (uint32_t)h << 16;
    return v.f;
}
static inline uint16_t qvl_f32_to_bf16(float f) { /* round to nearest even; NaN kept quiet */
    union {
        uint32_t u;
        float f;
    } v;
    v.f = f;
    if ((v.u & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)((v.u >> 16) | 0x40);
    uint32_t r = 0x7fffu + ((v.u >> 16) & 1u);
    return (uint16_t)((v.u + r) >> 16);
}
float qvl_f16_to_f32(uint16_t h);
uint16_t qvl_f32_to_f16(float f);

/* monotonic time in milliseconds */
double qvl_time_ms(void);

#endif /* QVL_COMMON_H */
