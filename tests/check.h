/* check.h - tiny test macros shared by the unit tests; a test prints "N passed, N failed". */
#ifndef QVL_TEST_CHECK_H
#define QVL_TEST_CHECK_H
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int check_pass, check_fail;
#define CHECK(cond)                                                                        \
    do {                                                                                   \
        if (cond) {                                                                        \
            check_pass++;                                                                  \
        } else {                                                                           \
            check_fail++;                                                                  \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond);       \
        }                                                                                  \
    } while (0)
#define CHECKF(cond, ...)                                                                  \
    do {                                                                                   \
        if (cond) {                                                                        \
            check_pass++;                                                                  \
        } else {                                                                           \
            check_fail++;                                                                  \
            fprintf(stderr, "%s:%d: CHECK failed: %s: ", __FILE__, __LINE__, #cond);       \
            fprintf(stderr, __VA_ARGS__);                                                  \
            fputc('\n', stderr);                                                           \
        }                                                                                  \
    } while (0)
#define CHECK_DONE()                                                                       \
    do {                                                                                   \
        printf("%d passed, %d failed\n", check_pass, check_fail);                          \
        return check_fail ? 1 : 0;                                                         \
    } while (0)

/* Path of a file under ../shared (QVL_SHARED set by CTest); returns a static buffer. */
static inline const char *shared_path(const char *rel) {
    static char buf[4][1024];
    static int k;
    const char *root = getenv("QVL_SHARED");
    if (!root)
        root = "../shared";
    k = (k + 1) & 3;
    snprintf(buf[k], sizeof buf[k], "%s/%s", root, rel);
    return buf[k];
}

/* Whole file into a NUL-terminated heap buffer (free()); *len (may be NULL) gets its size.
 * NULL if it cannot be opened or read. */
static inline char *check_read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    char *b = NULL;
    long n = -1;
    if (fseek(f, 0, SEEK_END) == 0 && (n = ftell(f)) >= 0 && fseek(f, 0, SEEK_SET) == 0)
        b = malloc((size_t)n + 1);
    if (b && fread(b, 1, (size_t)n, f) != (size_t)n) {
        free(b);
        b = NULL;
    }
    fclose(f);
    if (b) {
        b[n] = 0;
        if (len)
            *len = (size_t)n;
    }
    return b;
}
#endif
