/* fuzz_config.c - libFuzzer target: config.json, generation_config.json and
 * preprocessor_config.json parsers on arbitrary bytes. */
#include "config.h"
#include "preproc.h"

#include <stdint.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char err[256];
    qvl_config c;
    qvl_config_parse((const char *)data, size, "config.json", &c, err, sizeof err);
    qvl_gen_config g;
    qvl_gen_config_default(&g);
    qvl_gen_config_parse((const char *)data, size, "generation_config.json", &g, err, sizeof err);
    qvl_pp_config pp;
    qvl_pp_config_default(&pp);
    qvl_pp_config_parse((const char *)data, size, &pp, err, sizeof err);
    return 0;
}
