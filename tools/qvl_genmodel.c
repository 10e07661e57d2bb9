/* qvl_genmodel.c - command-line front end of the random-weight model writer (src/genmodel.c):
 * writes a Qwen3-VL model directory in the released Hugging Face layout with deterministic
 * random weights, for tests, benchmarks and demos. Argument parsing and printing only. */
#include "genmodel.h"

#include <errno.h>
#include <inttypes.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void usage(FILE *f) {
    fprintf(f,
            "usage: qvl_genmodel --preset tiny|2b|4b|8b --out DIR [options]\n"
            "  --dtype bf16|f16|f32     weight type (default bf16)\n"
            "  --seed N                 random seed (default 0)\n"
            "  --shard-mb N             shards of at most N MiB + index (default: one file)\n"
            "  --untied | --tied        force lm_head.weight present / absent\n"
            "  --old-prefixes           pre-4.57 tensor names (visual.*, model.*)\n"
            "  --tokenizer DIR          directory with tokenizer.json and tokenizer_config.json\n"
            "                           (default: $QVL_TOKENIZER_DIR)\n"
            "  --plan                   print the planned size and exit without writing\n"
            "overrides of the preset (text): --hidden N --layers N --heads N --kv-heads N\n"
            "  --head-dim N --intermediate N --vocab N --mrope A,B,C\n"
            "overrides of the preset (vision): --vision-depth N --vision-hidden N\n"
            "  --vision-heads N --vision-intermediate N --deepstack N (taps; -1: none)\n");
}

static int parse_u64(const char *s, uint64_t *out) {
    if (!s || !*s || *s == '-')
        return 0;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 0);
    if (errno || *end)
        return 0;
    *out = v;
    return 1;
}

static int parse_int(const char *s, int *out) {
    if (!s || !*s)
        return 0;
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || *end || v < -1000000000L || v > 1000000000L)
        return 0;
    *out = (int)v;
    return 1;
}

int main(int argc, char **argv) {
    qvl_genmodel_params p;
    qvl_genmodel_default_params(&p);
    const char *out = NULL;
    int plan_only = 0;
    static const struct {
        const char *opt;
        size_t off;
    } int_opts[] = {
        {"--hidden", offsetof(qvl_genmodel_params, hidden)},
        {"--layers", offsetof(qvl_genmodel_params, n_layers)},
        {"--heads", offsetof(qvl_genmodel_params, n_heads)},
        {"--kv-heads", offsetof(qvl_genmodel_params, n_kv_heads)},
        {"--head-dim", offsetof(qvl_genmodel_params, head_dim)},
        {"--intermediate", offsetof(qvl_genmodel_params, intermediate)},
        {"--vocab", offsetof(qvl_genmodel_params, vocab_size)},
        {"--vision-depth", offsetof(qvl_genmodel_params, vision_depth)},
        {"--vision-hidden", offsetof(qvl_genmodel_params, vision_hidden)},
        {"--vision-heads", offsetof(qvl_genmodel_params, vision_heads)},
        {"--vision-intermediate", offsetof(qvl_genmodel_params, vision_intermediate)},
        {"--deepstack", offsetof(qvl_genmodel_params, n_deepstack)},
    };
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        int used = 1; /* 1: takes a value */
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(a, "--untied")) {
            p.tie_embeddings = 0;
            used = 0;
        } else if (!strcmp(a, "--tied")) {
            p.tie_embeddings = 1;
            used = 0;
        } else if (!strcmp(a, "--old-prefixes")) {
            p.old_prefixes = 1;
            used = 0;
        } else if (!strcmp(a, "--plan")) {
            plan_only = 1;
            used = 0;
        } else if (!v) {
            fprintf(stderr, "qvl_genmodel: %s needs a value (or is unknown)\n", a);
            usage(stderr);
            return 2;
        } else if (!strcmp(a, "--preset")) {
            p.preset = v;
        } else if (!strcmp(a, "--out")) {
            out = v;
        } else if (!strcmp(a, "--tokenizer")) {
            p.tokenizer_dir = v;
        } else if (!strcmp(a, "--dtype")) {
            if (!strcmp(v, "bf16"))
                p.dtype = QVL_DT_BF16;
            else if (!strcmp(v, "f16"))
                p.dtype = QVL_DT_F16;
            else if (!strcmp(v, "f32"))
                p.dtype = QVL_DT_F32;
            else {
                fprintf(stderr, "qvl_genmodel: bad --dtype %s (bf16, f16, f32)\n", v);
                return 2;
            }
        } else if (!strcmp(a, "--seed")) {
            if (!parse_u64(v, &p.seed)) {
                fprintf(stderr, "qvl_genmodel: bad --seed %s\n", v);
                return 2;
            }
        } else if (!strcmp(a, "--shard-mb")) {
            uint64_t mb;
            if (!parse_u64(v, &mb) || mb == 0 || mb > (UINT64_MAX >> 20)) {
                fprintf(stderr, "qvl_genmodel: bad --shard-mb %s\n", v);
                return 2;
            }
            p.shard_bytes = mb << 20;
        } else if (!strcmp(a, "--mrope")) {
            int s[3];
            char tail;
            if (sscanf(v, "%d,%d,%d%c", &s[0], &s[1], &s[2], &tail) != 3) {
                fprintf(stderr, "qvl_genmodel: bad --mrope %s (want A,B,C)\n", v);
                return 2;
            }
            memcpy(p.mrope_section, s, sizeof s);
        } else {
            size_t k;
            for (k = 0; k < sizeof int_opts / sizeof int_opts[0]; k++)
                if (!strcmp(a, int_opts[k].opt))
                    break;
            if (k == sizeof int_opts / sizeof int_opts[0]) {
                fprintf(stderr, "qvl_genmodel: unknown option %s\n", a);
                usage(stderr);
                return 2;
            }
            int *dst = (int *)((char *)&p + int_opts[k].off);
            if (!parse_int(v, dst) || (*dst < 0 && strcmp(a, "--deepstack") != 0)) {
                fprintf(stderr, "qvl_genmodel: bad %s %s\n", a, v);
                return 2;
            }
        }
        i += used;
    }
    if (!out && !plan_only) {
        fprintf(stderr, "qvl_genmodel: --out DIR is required\n");
        usage(stderr);
        return 2;
    }
    char err[512];
    uint64_t bytes = 0;
    size_t n_tensors = 0;
    qvl_status st = qvl_genmodel_plan_bytes(&p, &bytes, &n_tensors, err, sizeof err);
    if (st != QVL_OK) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    printf("preset %s: %zu tensors, %" PRIu64 " bytes of weights (%.2f GiB)\n",
           p.preset ? p.preset : "tiny", n_tensors, bytes, (double)bytes / (1u << 30));
    if (plan_only)
        return 0;
    double t0 = qvl_time_ms();
    st = qvl_genmodel_write(out, &p, err, sizeof err);
    if (st != QVL_OK) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    double s = (qvl_time_ms() - t0) / 1000.0;
    printf("wrote %s in %.2f s (%.2f GB/s)\n", out, s, s > 0 ? (double)bytes / s / 1e9 : 0.0);
    return 0;
}
