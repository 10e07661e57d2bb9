/* memread.h - the memory read loop that qvl bench and bench_kern measure bandwidth with: the XOR
 * of n 64-bit words, read with 32-byte vector loads where the CPU has AVX2 (8-byte scalar loads
 * stream markedly slower on this machine type). Header-only: both programs include it. */
#ifndef QVL_BENCH_MEMREAD_H
#define QVL_BENCH_MEMREAD_H

#include <stddef.h>
#include <stdint.h>

#if defined(__x86_64__)
#    include <immintrin.h>
__attribute__((target("avx2"))) static uint64_t memread_avx2(const uint64_t *p, size_t n) {
    __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
    for (size_t i = 0; i + 16 <= n; i += 16) {
        a0 = _mm256_xor_si256(a0, _mm256_loadu_si256((const __m256i *)(p + i)));
        a1 = _mm256_xor_si256(a1, _mm256_loadu_si256((const __m256i *)(p + i + 4)));
        a2 = _mm256_xor_si256(a2, _mm256_loadu_si256((const __m256i *)(p + i + 8)));
        a3 = _mm256_xor_si256(a3, _mm256_loadu_si256((const __m256i *)(p + i + 12)));
    }
    a0 = _mm256_xor_si256(_mm256_xor_si256(a0, a1), _mm256_xor_si256(a2, a3));
    uint64_t out[4];
    _mm256_storeu_si256((__m256i *)out, a0);
    return out[0] ^ out[1] ^ out[2] ^ out[3];
}
#endif

/* XOR of p[0..n) (n a multiple of 16 is read whole; the vector loop skips a shorter tail) */
static uint64_t memread_xor(const uint64_t *p, size_t n) {
#if defined(__x86_64__)
    if (__builtin_cpu_supports("avx2"))
        return memread_avx2(p, n);
#endif
    uint64_t a = 0, b = 0, c = 0, d = 0;
    for (size_t i = 0; i + 4 <= n; i += 4) {
        a ^= p[i];
        b ^= p[i + 1];
        c ^= p[i + 2];
        d ^= p[i + 3];
    }
    return a ^ b ^ c ^ d;
}

#endif
