/* embed_generate.c - generate from image features computed elsewhere, through the embeddings API.
 *
 *   qvl encode -m DIR photo.png --out feats.bin
 *   example_embed_generate -m DIR --features feats.bin -p "Describe this image." -n 20
 *
 * The features file holds one JSON header line and then float32 data (per image: merged features
 * [tokens, dim], then DeepStack features [n, tokens, dim]). The program builds the same prompt as
 * `qvl run` (one user turn: the images, then the text), embeds the text tokens, scatters the image
 * features into the <|image_pad|> rows, computes the 3-axis positions, evaluates the embeddings
 * with the DeepStack features and generates greedily. It prints the generated ids as a JSON array,
 * which equal `qvl run --temp 0 --json`'s generated_ids for the same image and prompt. Any encoder
 * that produces features of the right width can be plugged in the same way. */
#include "qvl.h"

#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_IMG 16

int main(int argc, char **argv) {
    const char *dir = NULL, *feat_path = NULL, *prompt = "Describe this image.";
    int n_new = 20;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "-m"))
            dir = argv[i + 1];
        else if (!strcmp(argv[i], "--features"))
            feat_path = argv[i + 1];
        else if (!strcmp(argv[i], "-p"))
            prompt = argv[i + 1];
        else if (!strcmp(argv[i], "-n"))
            n_new = atoi(argv[i + 1]);
    }
    if (!dir || !feat_path) {
        fprintf(stderr, "usage: %s -m DIR --features FILE [-p PROMPT] [-n N]\n", argv[0]);
        return 2;
    }
    char err[1024];
    qvl_model *m = NULL;
    if (qvl_model_load(dir, NULL, &m, err, sizeof err) != QVL_OK) {
        fprintf(stderr, "load: %s\n", err);
        return 1;
    }
    const int H = qvl_model_hidden(m);

    /* read the features file: header line, then the floats */
    FILE *f = fopen(feat_path, "rb");
    static char line[1 << 16];
    if (!f || !fgets(line, sizeof line, f)) {
        fprintf(stderr, "%s: cannot read\n", feat_path);
        return 1;
    }
    cJSON *hdr = cJSON_Parse(line);
    const cJSON *imgs = cJSON_GetObjectItem(hdr, "images");
    int n_img = cJSON_GetArraySize(imgs);
    if (!hdr || n_img < 1 || n_img > MAX_IMG) {
        fprintf(stderr, "%s: bad header\n", feat_path);
        return 1;
    }
    int grids[MAX_IMG][3];
    long tokens[MAX_IMG], total = 0;
    int n_ds = qvl_model_n_deepstack(m);
    for (int i = 0; i < n_img; i++) {
        const cJSON *e = cJSON_GetArrayItem(imgs, i);
        for (int k = 0; k < 3; k++)
            grids[i][k] = cJSON_GetArrayItem(cJSON_GetObjectItem(e, "grid_thw"), k)->valueint;
        tokens[i] = (long)cJSON_GetObjectItem(e, "tokens")->valuedouble;
        const cJSON *sh = cJSON_GetObjectItem(e, "embd_shape");
        if (cJSON_GetArrayItem(sh, 1)->valueint != H) {
            fprintf(stderr, "features are %d wide, the model needs %d\n",
                    cJSON_GetArrayItem(sh, 1)->valueint, H);
            return 1;
        }
        total += tokens[i];
    }
    float *feat = malloc((size_t)total * H * sizeof(float));
    float *ds[16];
    for (int k = 0; k < n_ds; k++)
        ds[k] = malloc((size_t)total * H * sizeof(float));
    long off = 0;
    for (int i = 0; i < n_img; i++) {
        size_t ne = (size_t)tokens[i] * H;
        bool ok = fread(feat + off * H, sizeof(float), ne, f) == ne;
        for (int k = 0; k < n_ds; k++)
            ok &= fread(ds[k] + off * H, sizeof(float), ne, f) == ne;
        if (!ok) {
            fprintf(stderr, "%s: truncated\n", feat_path);
            return 1;
        }
        off += tokens[i];
    }
    fclose(f);

    /* the prompt of `qvl run`: <|im_start|>user\n(images)(text)<|im_end|>\n<|im_start|>assistant\n */
    size_t cap = strlen(prompt) + 256 + (size_t)n_img * 64;
    char *text = malloc(cap);
    strcpy(text, "<|im_start|>user\n");
    for (int i = 0; i < n_img; i++)
        strcat(text, "<|vision_start|><|image_pad|><|vision_end|>");
    strcat(text, prompt);
    strcat(text, "<|im_end|>\n<|im_start|>assistant\n");
    int32_t *raw = NULL;
    size_t n_raw = 0;
    if (qvl_tokenize(m, text, strlen(text), &raw, &n_raw) != QVL_OK)
        return 1;
    /* expand each placeholder into its image's token count */
    int32_t pad = qvl_model_image_token(m);
    size_t n = n_raw - (size_t)n_img + (size_t)total;
    int32_t *ids = malloc(n * sizeof *ids);
    size_t o = 0;
    int img = 0;
    for (size_t i = 0; i < n_raw; i++) {
        if (raw[i] == pad)
            for (long k = 0; k < tokens[img]; k++)
                ids[o++] = pad;
        else
            ids[o++] = raw[i];
        img += raw[i] == pad;
    }

    /* embeddings, visual rows, positions */
    float *embd = malloc(n * (size_t)H * sizeof(float));
    uint8_t *mask = calloc(n, 1);
    int32_t *pos = malloc(3 * n * sizeof *pos);
    qvl_embed_tokens(m, ids, n, embd);
    long r = 0;
    for (size_t i = 0; i < n; i++)
        if (ids[i] == pad) {
            memcpy(embd + i * H, feat + r * H, (size_t)H * sizeof(float));
            mask[i] = 1;
            r++;
        }
    int64_t next = 0;
    if (qvl_positions(m, ids, n, (const int(*)[3])grids, (size_t)n_img, 0, pos, &next, err,
                      sizeof err) != QVL_OK) {
        fprintf(stderr, "positions: %s\n", err);
        return 1;
    }
    qvl_ctx *c = NULL;
    qvl_ctx_params cp = qvl_ctx_default_params();
    cp.n_ctx = (int)n + n_new + 16;
    if (qvl_ctx_create(m, &cp, &c, err, sizeof err) != QVL_OK) {
        fprintf(stderr, "ctx: %s\n", err);
        return 1;
    }
    const float *dsp[16];
    for (int k = 0; k < n_ds; k++)
        dsp[k] = ds[k];
    qvl_embd_batch b = {n, H, embd, pos, mask, n_ds, dsp, next};
    if (qvl_ctx_eval_embd(c, &b) != QVL_OK) {
        fprintf(stderr, "eval: %s\n", qvl_ctx_errmsg(c));
        return 1;
    }
    qvl_gen_params gp = qvl_gen_default_params();
    gp.temperature = 0;
    gp.max_new_tokens = n_new;
    qvl_gen_result res;
    if (qvl_ctx_generate(c, &gp, NULL, NULL, &res) != QVL_OK) {
        fprintf(stderr, "generate: %s\n", qvl_ctx_errmsg(c));
        return 1;
    }
    printf("[");
    for (size_t i = 0; i < res.n_tokens; i++)
        printf("%s%d", i ? ", " : "", res.tokens[i]);
    printf("]\n");
    qvl_gen_result_free(&res);
    qvl_ctx_free(c);
    free(embd);
    free(mask);
    free(pos);
    free(ids);
    qvl_free(raw);
    free(text);
    free(feat);
    for (int k = 0; k < n_ds; k++)
        free(ds[k]);
    cJSON_Delete(hdr);
    qvl_model_free(m);
    return 0;
}
