/* fuzz_st.c - libFuzzer target for the safetensors reader: the first input byte selects the
 * parser (even: a whole .safetensors file image through qvl_st_parse_header, odd: the text of a
 * model.safetensors.index.json through qvl_st_parse_index), the rest is its input. Any status is
 * fine; crashes, leaks and sanitizer reports are not. Seeds: tests/fuzz/corpus/st/. */
#include "st.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1)
        return 0;
    char err[512];
    const uint8_t *body = data + 1;
    size_t n = size - 1;
    /* copy into an exactly sized heap buffer so ASan sees any over-read */
    uint8_t *buf = malloc(n ? n : 1);
    if (!buf)
        return 0;
    if (n)
        memcpy(buf, body, n);
    if (data[0] & 1)
        (void)qvl_st_parse_index((const char *)buf, n, err, sizeof err);
    else
        (void)qvl_st_parse_header(buf, n, err, sizeof err);
    free(buf);
    return 0;
}
