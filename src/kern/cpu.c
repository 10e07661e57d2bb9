/* cpu.c - choose the kernel table once: the best path this CPU supports, or the one named by
 * the QVL_CPU environment variable (ref, avx2, avx512) when it is supported; and the plain
 * element-wise entry points (qvl_rmsnorm ... qvl_add) that call the chosen table. */
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

static _Thread_local uint64_t g_act_id;

void qvl_kern_set_act_id(uint64_t id) {
    g_act_id = id;
}

uint64_t qvl_kern_act_id(void) {
    return g_act_id;
}

const qvl_kern *qvl_kern_get(void) {
    qvl_kern_init();
    return g_kern;
}

/* ---- plain entry points used by the model code: the active table's entries --------------- */
void qvl_rmsnorm(float *y, const float *x, const float *w, int64_t n, float eps) {
    qvl_kern_get()->rmsnorm(y, x, w, n, eps);
}

void qvl_layernorm(float *y, const float *x, const float *w, const float *b, int64_t n, float eps) {
    qvl_kern_get()->layernorm(y, x, w, b, n, eps);
}

void qvl_gelu_tanh(float *x, int64_t n) {
    qvl_kern_get()->gelu_tanh(x, n);
}

void qvl_gelu_erf(float *x, int64_t n) {
    qvl_kern_get()->gelu_erf(x, n);
}

void qvl_silu_mul(float *g, const float *u, int64_t n) {
    qvl_kern_get()->silu_mul(g, u, n);
}

void qvl_add(float *x, const float *y, int64_t n) {
    qvl_kern_get()->add(x, y, n);
}

void qvl_quantize_row(qvl_dtype t, const float *x, void *out, int64_t k) {
    qvl_kern_get()->quantize_row(t, x, out, k);
}
