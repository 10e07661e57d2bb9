/* cpu.c - choose the kernel table once: the best path this CPU supports, or the one named by
 * the QVL_CPU environment variable (ref, avx2, avx512) when it is supported. */
#include "kern.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

static const qvl_kern *g_kern;
static pthread_once_t g_once = PTHREAD_ONCE_INIT;

#if defined(__x86_64__) || defined(__i386__)
#    include <cpuid.h>
/* F16C (CPUID.1:ECX bit 29): both SIMD paths convert f16 weights with it */
static bool has_f16c(void) {
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d))
        return false;
    return (c >> 29) & 1u;
}
#endif

static bool cpu_has(const char *isa) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    if (!strcmp(isa, "avx2"))
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && has_f16c();
    if (!strcmp(isa, "avx512"))
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
               __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && has_f16c();
#endif
    (void)isa;
    return false;
}

const qvl_kern *qvl_kern_by_name(const char *name) {
    if (!name || !strcmp(name, "ref"))
        return qvl_kern_ref();
    if (!strcmp(name, "avx2"))
        return cpu_has("avx2") ? qvl_kern_avx2() : NULL;
    if (!strcmp(name, "avx512"))
        return cpu_has("avx512") ? qvl_kern_avx512() : NULL;
    return NULL;
}

static void pick(void) {
    const char *want = getenv("QVL_CPU");
    const qvl_kern *k = NULL;
    if (want && *want)
        k = qvl_kern_by_name(want);
    if (!k)
        k = qvl_kern_by_name("avx512");
    if (!k)
        k = qvl_kern_by_name("avx2");
    if (!k)
        k = qvl_kern_ref();
    g_kern = k;
}

void qvl_kern_init(void) {
    pthread_once(&g_once, pick);
}

const qvl_kern *qvl_kern_get(void) {
    qvl_kern_init();
    return g_kern;
}
