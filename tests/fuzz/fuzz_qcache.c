/* fuzz_qcache.c - libFuzzer target for the quantisation cache's header checks
 * (qvl_qcache_check): the input is a cache file image checked against a fixed fingerprint and
 * two expected matrices (Q8_0X16 16 x 32, Q4_0X16 20 x 64). Any status is fine; crashes, leaks
 * and sanitizer reports are not, and an accepted image must place both matrices inside the
 * file. Seeds: tests/fuzz/corpus/qcache/. */
#include "qcache.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char err[512];
    /* an exactly sized heap copy so that ASan sees any over-read */
    uint8_t *buf = malloc(size ? size : 1);
    if (!buf)
        return 0;
    if (size)
        memcpy(buf, data, size);
    qvl_qcache_mat mats[2] = {{QVL_DT_Q8_0X16, 16, 32, NULL}, {QVL_DT_Q4_0X16, 20, 64, NULL}};
    if (qvl_qcache_check(buf, size, size, "fp", 2, mats, "<memory>", err, sizeof err) ==
        QVL_OK) {
        for (int i = 0; i < 2; i++) {
            uint64_t off = (uint64_t)(uintptr_t)mats[i].data;
            uint64_t nb = qvl_dtype_mat_bytes(mats[i].dt, (size_t)mats[i].rows,
                                              (size_t)mats[i].cols);
            if (off > size || nb > size - off)
                abort(); /* accepted a matrix outside the file */
        }
    }
    free(buf);
    return 0;
}
