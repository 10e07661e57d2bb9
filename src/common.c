/* common.c - allocation with a failure hook, status strings, error/log formatting, file reads,
 * half-precision conversion. */
#include "common.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

/* ---- allocation -------------------------------------------------------- */
static _Atomic long g_alloc_count;
static _Atomic long g_alloc_fail_at = -1;
static _Atomic int g_alloc_sticky;

long qvl_alloc_fail_at(long n, int sticky) {
    long c = atomic_exchange(&g_alloc_count, 0);
    atomic_store(&g_alloc_fail_at, n);
    atomic_store(&g_alloc_sticky, sticky);
    return c;
}

long qvl_alloc_count(void) {
    return atomic_load(&g_alloc_count);
}

static bool alloc_should_fail(void) {
    long i = atomic_fetch_add(&g_alloc_count, 1);
    long f = atomic_load(&g_alloc_fail_at);
    if (f < 0)
        return false;
    return i == f || (atomic_load(&g_alloc_sticky) && i > f);
}

void *qvl_malloc(size_t n) {
    if (alloc_should_fail())
        return NULL;
    return malloc(n ? n : 1);
}

void *qvl_calloc(size_t n, size_t size) {
    if (alloc_should_fail())
        return NULL;
    if (n == 0 || size == 0)
        return calloc(1, 1);
    return calloc(n, size);
}

void *qvl_realloc(void *p, size_t n) {
    if (alloc_should_fail())
        return NULL;
    return realloc(p, n ? n : 1);
}

void qvl_free(void *p) {
    free(p);
}

void qvl_sbuf_add(qvl_sbuf *b, const char *s, size_t n) {
    if (b->oom)
        return;
    size_t need;
    if (!qvl_size_add(b->n, n, &need) || !qvl_size_add(need, 1, &need)) {
        b->oom = true;
        return;
    }
    if (need > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < need)
            if (!qvl_size_mul(cap, 2, &cap)) {
                b->oom = true;
                return;
            }
        char *q = qvl_realloc(b->p, cap);
        if (!q) {
            b->oom = true;
            return;
        }
        b->p = q;
        b->cap = cap;
    }
    if (n)
        memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
}

void qvl_sbuf_str(qvl_sbuf *b, const char *s) {
    qvl_sbuf_add(b, s, strlen(s));
}

void *qvl_malloc_big(size_t n) {
    if (alloc_should_fail())
        return NULL;
    void *p = mmap(NULL, n ? n : 1, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return NULL;
#ifdef MADV_HUGEPAGE
    if (n >= ((size_t)2 << 20))
        madvise(p, n, MADV_HUGEPAGE);
#endif
    return p;
}

void qvl_prefault(void *p, size_t n) {
#ifdef MADV_POPULATE_WRITE
    if (!p || !n)
        return;
    uintptr_t a = (uintptr_t)p & ~(uintptr_t)4095, b = (uintptr_t)p + n;
    madvise((void *)a, b - a, MADV_POPULATE_WRITE); /* advisory: failure costs only speed */
#else
    (void)p;
    (void)n;
#endif
}

void qvl_free_big(void *p, size_t n) {
    if (p)
        munmap(p, n ? n : 1);
}

char *qvl_strndup(const char *s, size_t n) {
    char *d = qvl_malloc(n + 1);
    if (!d)
        return NULL;
    memcpy(d, s, n);
    d[n] = 0;
    return d;
}

char *qvl_strdup(const char *s) {
    return qvl_strndup(s, strlen(s));
}

/* ---- status, errors, logs ---------------------------------------------- */
const char *qvl_status_str(qvl_status s) {
    switch (s) {
    case QVL_OK: return "ok";
    case QVL_E_INVAL: return "invalid argument";
    case QVL_E_NOMEM: return "out of memory";
    case QVL_E_IO: return "I/O error";
    case QVL_E_FORMAT: return "bad format";
    case QVL_E_UNSUPPORTED: return "unsupported";
    case QVL_E_LIMIT: return "limit exceeded";
    case QVL_E_CANCELLED: return "cancelled";
    case QVL_E_INTERNAL: return "internal error";
    }
    return "unknown status";
}

void qvl_errf(char *buf, size_t len, const char *fmt, ...) {
    if (!buf || len == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, len, fmt, ap);
    va_end(ap);
}

static qvl_log_fn g_log_fn;
static void *g_log_user;
static qvl_log_level g_log_max = QVL_LOG_WARN;

void qvl_log_set(qvl_log_fn fn, void *user, qvl_log_level max_level) {
    g_log_fn = fn;
    g_log_user = user;
    g_log_max = max_level;
}

bool qvl_log_enabled(qvl_log_level lvl) {
    return g_log_fn && lvl <= g_log_max;
}

void qvl_log(qvl_log_level lvl, const char *fmt, ...) {
    if (!qvl_log_enabled(lvl))
        return;
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    g_log_fn(lvl, msg, g_log_user);
}

/* ---- files --------------------------------------------------------------- */
qvl_status qvl_read_file(const char *path, size_t max_bytes, char **out, size_t *len, char *err,
                         size_t err_len) {
    *out = NULL;
    if (len)
        *len = 0;
    FILE *f = fopen(path, "rb");
    if (!f) {
        qvl_errf(err, err_len, "%s: cannot open: %s", path, strerror(errno));
        return QVL_E_IO;
    }
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        qvl_errf(err, err_len, "%s: not a regular file", path);
        fclose(f);
        return QVL_E_IO;
    }
    size_t n = (size_t)st.st_size;
    if (max_bytes && n > max_bytes) {
        qvl_errf(err, err_len, "%s: file is %zu bytes, over the limit of %zu", path, n, max_bytes);
        fclose(f);
        return QVL_E_LIMIT;
    }
    char *buf = qvl_malloc(n + 1);
    if (!buf) {
        qvl_errf(err, err_len, "%s: out of memory reading %zu bytes", path, n);
        fclose(f);
        return QVL_E_NOMEM;
    }
    size_t got = fread(buf, 1, n, f);
    fclose(f);
    if (got != n) {
        qvl_errf(err, err_len, "%s: short read (%zu of %zu bytes)", path, got, n);
        qvl_free(buf);
        return QVL_E_IO;
    }
    buf[n] = 0;
    *out = buf;
    if (len)
        *len = n;
    return QVL_OK;
}

int qvl_name_index(const char *const *names, int n, const char *name) {
    for (int i = 0; name && i < n; i++)
        if (!strcmp(name, names[i]))
            return i;
    return -1;
}

char *qvl_path_join(const char *dir, const char *name) {
    size_t a = strlen(dir), b = strlen(name);
    char *p = qvl_malloc(a + b + 2);
    if (!p)
        return NULL;
    memcpy(p, dir, a);
    size_t o = a;
    if (a && dir[a - 1] != '/')
        p[o++] = '/';
    memcpy(p + o, name, b + 1);
    return p;
}

bool qvl_file_exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

bool qvl_dir_exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

bool qvl_mkdir_p(const char *dir) {
    if (!dir || !dir[0]) {
        errno = ENOENT;
        return false;
    }
    char *d = qvl_strdup(dir);
    if (!d) {
        errno = ENOMEM;
        return false;
    }
    bool ok = true;
    for (char *p = d + 1; ok; p++) {
        if (*p != '/' && *p != 0)
            continue;
        char c = *p;
        *p = 0;
        if (mkdir(d, 0777) != 0 && errno != EEXIST)
            ok = false;
        *p = c;
        if (!c)
            break;
    }
    qvl_free(d);
    if (ok && !qvl_dir_exists(dir)) {
        errno = ENOTDIR;
        ok = false;
    }
    return ok;
}

bool qvl_mkdir_parents(const char *path) {
    char *d = qvl_strdup(path);
    if (!d) {
        errno = ENOMEM;
        return false;
    }
    char *slash = strrchr(d, '/');
    bool ok = true;
    if (slash && slash != d) {
        *slash = 0;
        ok = qvl_mkdir_p(d);
    }
    qvl_free(d);
    return ok;
}

/* ---- half precision ------------------------------------------------------ */
float qvl_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1f;
    uint32_t man = h & 0x3ffu;
    uint32_t u;
    if (exp == 0) {
        if (man == 0) {
            u = sign;
        } else { /* subnormal: normalise */
            int e = -1;
            do {
                e++;
                man <<= 1;
            } while (!(man & 0x400u));
            u = sign | ((uint32_t)(127 - 15 - e) << 23) | ((man & 0x3ffu) << 13);
        }
    } else if (exp == 31) {
        u = sign | 0x7f800000u | (man << 13);
    } else {
        u = sign | ((exp + 127 - 15) << 23) | (man << 13);
    }
    union {
        uint32_t u;
        float f;
    } v = {.u = u};
    return v.f;
}

uint16_t qvl_f32_to_f16(float f) {
    union {
        uint32_t u;
        float f;
    } v = {.f = f};
    uint32_t x = v.u;
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
    uint32_t ax = x & 0x7fffffffu;
    if (ax > 0x7f800000u)
        return sign | 0x7e00u;
    if (ax >= 0x477ff000u) /* rounds to >= 65520: inf */
        return sign | 0x7c00u;
    if (ax < 0x38800000u) { /* subnormal or zero in f16 */
        if (ax < 0x33000000u)
            return sign;
        uint32_t e = ax >> 23;
        uint32_t m = (ax & 0x7fffffu) | 0x800000u;
        int shift = (int)(126 - e); /* value = m * 2^(e-150); unit 2^-24 */
        uint32_t r = m >> shift;
        uint32_t rem = m & ((1u << shift) - 1);
        uint32_t half = 1u << (shift - 1);
        if (rem > half || (rem == half && (r & 1)))
            r++;
        return sign | (uint16_t)r;
    }
    uint32_t r = ax - 0x38000000u; /* rebias 127 -> 15 in the exponent field */
    uint32_t lsb = (r >> 13) & 1u;
    r += 0xfffu + lsb;
    return sign | (uint16_t)(r >> 13);
}

double qvl_time_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}
