/* test_golden.c - end-to-end golden tests on the tiny fixture model: prompt ids, grids, M-RoPE
 * positions, vision tensors, injected embeddings, per-layer statistics, prompt-end logits and
 * the greedy continuation of every image/text case; KV cache vs recomputation; multi-turn;
 * the embeddings API; bad input leaving the context usable. */
#include "check.h"
#include "ctx.h"
#include "kern/kern.h"
#include "rope.h"
#include "video.h"
#include "vit.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/mman.h>

static qvl_model *M;

static cJSON *load_json(const char *rel) {
    char *buf = NULL;
    size_t len = 0;
    if (qvl_read_file(shared_path(rel), 0, &buf, &len, NULL, 0) != QVL_OK)
        return NULL;
    cJSON *j = cJSON_ParseWithLength(buf, len);
    qvl_free(buf);
    return j;
}

static float *load_f32(const char *rel, size_t n) {
    char *buf = NULL;
    size_t len = 0;
    if (qvl_read_file(shared_path(rel), 0, &buf, &len, NULL, 0) != QVL_OK || len != n * 4) {
        qvl_free(buf);
        return NULL;
    }
    return (float *)buf;
}

static int32_t *json_ids(const cJSON *a, size_t *n) {
    *n = (size_t)cJSON_GetArraySize(a);
    int32_t *ids = malloc(*n * sizeof *ids + 4);
    for (size_t i = 0; i < *n; i++)
        ids[i] = (int32_t)cJSON_GetArrayItem(a, (int)i)->valuedouble;
    return ids;
}

static double max_rel(const float *a, const float *b, size_t n) {
    double scale = 0, d = 0;
    for (size_t i = 0; i < n; i++) {
        scale = fmax(scale, fabs(b[i]));
        d = fmax(d, fabs((double)a[i] - b[i]));
    }
    return d / (scale > 0 ? scale : 1);
}

/* statistics object {mean, std, l2, first[]} against a float vector */
static void check_stats(const char *what, const cJSON *st, const float *x, size_t n) {
    double mean = 0, l2 = 0;
    for (size_t i = 0; i < n; i++) {
        mean += x[i];
        l2 += (double)x[i] * x[i];
    }
    mean /= (double)n;
    l2 = sqrt(l2);
    double gl2 = cJSON_GetObjectItem(st, "l2")->valuedouble;
    double gmean = cJSON_GetObjectItem(st, "mean")->valuedouble;
    CHECKF(fabs(l2 - gl2) <= 1e-4 * gl2, "%s: l2 %.8g vs golden %.8g", what, l2, gl2);
    CHECKF(fabs(mean - gmean) <= 1e-4 * (fabs(gmean) + l2 / sqrt((double)n)),
           "%s: mean %.8g vs golden %.8g", what, mean, gmean);
    const cJSON *first = cJSON_GetObjectItem(st, "first");
    double worst = 0;
    for (int i = 0; i < cJSON_GetArraySize(first) && (size_t)i < n; i++)
        worst = fmax(worst, fabs(x[i] - cJSON_GetArrayItem(first, i)->valuedouble));
    CHECKF(worst <= 1e-4 * (1 + l2 / sqrt((double)n)), "%s: first values differ by %g", what,
           worst);
}

static qvl_ctx *new_ctx(int n_ctx) {
    qvl_ctx_params p = qvl_ctx_default_params();
    p.n_ctx = n_ctx;
    p.n_threads = 2;
    qvl_ctx *c = NULL;
    char err[512];
    qvl_status s = qvl_ctx_create(M, &p, &c, err, sizeof err);
    CHECKF(s == QVL_OK, "ctx: %s", err);
    return c;
}

/* greedy generation of n tokens */
static size_t greedy(qvl_ctx *c, int n, int32_t *out) {
    qvl_gen_params gp = qvl_gen_default_params();
    gp.temperature = 0;
    gp.max_new_tokens = n;
    qvl_gen_result r;
    qvl_status s = qvl_ctx_generate(c, &gp, NULL, NULL, &r);
    CHECKF(s == QVL_OK, "generate: %s", qvl_ctx_errmsg(c));
    size_t k = r.n_tokens;
    memcpy(out, r.tokens, k * sizeof *out);
    qvl_gen_result_free(&r);
    return k;
}

static void run_case(const char *name) {
    char rel[256];
    snprintf(rel, sizeof rel, "fixtures/tiny-qwen3vl/golden/%s.json", name);
    cJSON *g = load_json(rel);
    CHECKF(g != NULL, "%s: golden file", name);
    if (!g)
        return;
    const cJSON *inp = cJSON_GetObjectItem(g, "inputs");
    const cJSON *ims = cJSON_GetObjectItem(inp, "images");
    int n_img = cJSON_GetArraySize(ims);
    qvl_image *imgs[8] = {0};
    char err[512];
    for (int i = 0; i < n_img; i++) {
        snprintf(rel, sizeof rel, "fixtures/tiny-qwen3vl/%s",
                 cJSON_GetArrayItem(ims, i)->valuestring);
        CHECKF(qvl_image_load_file(shared_path(rel), 0, &imgs[i], err, sizeof err) == QVL_OK,
               "%s: %s", name, err);
    }
    const cJSON *sys = cJSON_GetObjectItem(inp, "system");
    qvl_message msgs[2];
    int nm = 0;
    if (cJSON_IsString(sys))
        msgs[nm++] = (qvl_message){"system", sys->valuestring, 0, 0};
    msgs[nm++] = (qvl_message){"user", cJSON_GetObjectItem(inp, "prompt")->valuestring, n_img, 0};
    int32_t *ids = NULL;
    size_t n = 0;
    qvl_status s = qvl_prompt_build(M, msgs, (size_t)nm, 1, imgs, (size_t)n_img, NULL, &ids, &n,
                                    err, sizeof err);
    CHECKF(s == QVL_OK, "%s: prompt: %s", name, err);
    size_t gn = 0;
    int32_t *gids = json_ids(cJSON_GetObjectItem(g, "input_ids"), &gn);
    CHECKF(n == gn && !memcmp(ids, gids, n * sizeof *ids), "%s: prompt ids differ", name);

    /* grids and positions */
    const cJSON *gg = cJSON_GetObjectItem(g, "image_grid_thw");
    qvl_grid grids[8];
    for (int i = 0; i < n_img; i++) {
        qvl_image_plan pl;
        CHECK(qvl_image_plan_get(M, imgs[i], NULL, &pl, err, sizeof err) == QVL_OK);
        const cJSON *row = cJSON_GetArrayItem(gg, i);
        CHECKF(pl.grid_t == cJSON_GetArrayItem(row, 0)->valueint &&
                   pl.grid_h == cJSON_GetArrayItem(row, 1)->valueint &&
                   pl.grid_w == cJSON_GetArrayItem(row, 2)->valueint,
               "%s: grid of image %d", name, i);
        grids[i] = (qvl_grid){pl.grid_t, pl.grid_h, pl.grid_w};
    }
    int32_t *pos = malloc(3 * n * sizeof *pos);
    int64_t next = 0;
    CHECK(qvl_rope_index(ids, (int64_t)n, M->cfg.image_token_id, M->cfg.video_token_id, grids,
                         n_img, NULL, 0, 2, 0, pos, &next, err, sizeof err) == QVL_OK);
    const cJSON *gp = cJSON_GetObjectItem(g, "position_ids");
    bool pos_ok = true;
    for (int a = 0; a < 3; a++)
        for (size_t i = 0; i < n; i++)
            pos_ok &= pos[a * n + i] == cJSON_GetArrayItem(cJSON_GetArrayItem(gp, a), (int)i)
                                            ->valueint;
    CHECKF(pos_ok, "%s: position ids differ", name);
    CHECKF(next - (int64_t)n == cJSON_GetObjectItem(g, "rope_delta")->valueint,
           "%s: rope_delta %lld", name, (long long)(next - (int64_t)n));

    /* prefill: logits and per-layer statistics */
    qvl_ctx *c = new_ctx(512);
    const int L = M->cfg.text.n_layers, H = M->cfg.text.hidden;
    float *layers = calloc((size_t)L * H, sizeof(float));
    c->dbg_layers = layers;
    s = qvl_ctx_eval(c, ids, n, imgs, (size_t)n_img);
    CHECKF(s == QVL_OK, "%s: eval: %s", name, qvl_ctx_errmsg(c));
    c->dbg_layers = NULL;
    const cJSON *dl = cJSON_GetObjectItem(g, "decoder_layer_outputs_last_token");
    for (int l = 0; l < L; l++) {
        char what[64];
        snprintf(what, sizeof what, "%s layer %d", name, l);
        check_stats(what, cJSON_GetArrayItem(dl, l), layers + (size_t)l * H, (size_t)H);
    }
    int nv = 0;
    const float *lg = qvl_ctx_logits(c, &nv);
    const cJSON *top = cJSON_GetObjectItem(cJSON_GetObjectItem(g, "prompt_end_logits"), "top");
    double worst = 0;
    bool top_ok = true;
    for (int i = 0; i < cJSON_GetArraySize(top); i++) {
        const cJSON *pair = cJSON_GetArrayItem(top, i);
        int id = cJSON_GetArrayItem(pair, 0)->valueint;
        double v = cJSON_GetArrayItem(pair, 1)->valuedouble;
        worst = fmax(worst, fabs(lg[id] - v) / fabs(v));
        /* the id must be the i-th largest */
        int rank = 0;
        for (int k = 0; k < nv; k++)
            rank += lg[k] > lg[id];
        top_ok &= rank == i;
    }
    CHECKF(worst <= 1e-4, "%s: top-20 logits differ by %g relative", name, worst);
    CHECKF(top_ok, "%s: top-20 order differs", name);
    check_stats("prompt-end logits",
                cJSON_GetObjectItem(cJSON_GetObjectItem(g, "prompt_end_logits"), "stats"), lg,
                (size_t)nv);

    /* greedy continuation */
    size_t ng = 0;
    int32_t *gen_ref = json_ids(cJSON_GetObjectItem(g, "generated_ids"), &ng);
    int32_t out[64];
    size_t k = greedy(c, (int)ng, out);
    CHECKF(k == ng && !memcmp(out, gen_ref, ng * sizeof *out), "%s: greedy tokens differ", name);

    /* KV-cache decoding equals recomputation: prompt + generated[0..k-1) in one pass gives the
     * logits of the last step */
    if (k > 1) {
        qvl_ctx *c2 = new_ctx(512);
        int32_t *all = malloc((n + k) * sizeof *all);
        memcpy(all, ids, n * sizeof *all);
        memcpy(all + n, out, (k - 1) * sizeof *all);
        CHECK(qvl_ctx_eval(c2, all, n + k - 1, imgs, (size_t)n_img) == QVL_OK);
        const float *l2 = qvl_ctx_logits(c2, NULL);
        /* the incremental context's logits are those after generated[k-2] was fed */
        double d = max_rel(l2, qvl_ctx_logits(c, NULL), (size_t)nv);
        CHECKF(d < 1e-5, "%s: KV cache vs recomputation differ by %g", name, d);
        free(all);
        qvl_ctx_free(c2);
    }
    free(gen_ref);
    free(layers);
    qvl_ctx_free(c);
    free(pos);
    free(gids);
    qvl_free(ids);
    for (int i = 0; i < n_img; i++)
        qvl_image_free(imgs[i]);
    cJSON_Delete(g);
}

/* the full tensors of the first case: vision outputs, injected embeddings, logits */
static void full_tensors(void) {
    const char *G = "fixtures/tiny-qwen3vl/golden/";
    char rel[256], err[512];
    qvl_image *img = NULL;
    CHECK(qvl_image_load_file(shared_path("fixtures/tiny-qwen3vl/images/rgb_64x64.png"), 0, &img,
                              err, sizeof err) == QVL_OK);
    qvl_features f;
    CHECKF(qvl_vision_encode(M, img, NULL, 2, &f, err, sizeof err) == QVL_OK, "%s", err);
    CHECK(f.n_tokens == 64 && f.dim == 64 && f.n_deepstack == 2);
    snprintf(rel, sizeof rel, "%stiny_1img_png.vision_pooler_output.f32", G);
    float *pool = load_f32(rel, 64 * 64);
    CHECK(pool != NULL);
    if (pool)
        CHECKF(max_rel(f.embd, pool, 64 * 64) < 1e-4, "pooler output differs: %g",
               max_rel(f.embd, pool, 64 * 64));
    float *ds[2] = {0};
    for (int k = 0; k < 2; k++) {
        snprintf(rel, sizeof rel, "%stiny_1img_png.vision_deepstack_%d.f32", G, k);
        ds[k] = load_f32(rel, 64 * 64);
        CHECK(ds[k] != NULL);
        if (ds[k])
            CHECKF(max_rel(f.deepstack + k * 64 * 64, ds[k], 64 * 64) < 1e-4,
                   "deepstack %d differs: %g", k, max_rel(f.deepstack + k * 64 * 64, ds[k], 4096));
    }

    /* embeddings API: the golden injected embeddings + golden DeepStack features, with the
     * golden positions, must give the golden prompt-end logits and the image path's tokens */
    cJSON *g = load_json("fixtures/tiny-qwen3vl/golden/tiny_1img_png.json");
    size_t n = 0;
    int32_t *ids = json_ids(cJSON_GetObjectItem(g, "input_ids"), &n);
    snprintf(rel, sizeof rel, "%stiny_1img_png.inputs_embeds.f32", G);
    float *embd = load_f32(rel, n * 64);
    snprintf(rel, sizeof rel, "%stiny_1img_png.prompt_end_logits.f32", G);
    float *glog = load_f32(rel, 151936);
    CHECK(embd && glog);
    int32_t *pos = malloc(3 * n * sizeof *pos);
    const cJSON *gp = cJSON_GetObjectItem(g, "position_ids");
    for (int a = 0; a < 3; a++)
        for (size_t i = 0; i < n; i++)
            pos[a * n + i] = cJSON_GetArrayItem(cJSON_GetArrayItem(gp, a), (int)i)->valueint;
    uint8_t *mask = calloc(n, 1);
    for (size_t i = 0; i < n; i++)
        mask[i] = ids[i] == M->cfg.image_token_id;
    qvl_ctx *c = new_ctx(256);
    const float *dsp[2] = {ds[0], ds[1]};
    qvl_embd_batch b = {n, 64, embd, pos, mask, 2, dsp, 0};
    qvl_status s = qvl_ctx_eval_embd(c, &b);
    CHECKF(s == QVL_OK, "eval_embd: %s", qvl_ctx_errmsg(c));
    CHECKF(max_rel(qvl_ctx_logits(c, NULL), glog, 151936) < 1e-4,
           "embeddings API logits differ from golden: %g",
           max_rel(qvl_ctx_logits(c, NULL), glog, 151936));
    size_t ng = 0;
    int32_t *gen_ref = json_ids(cJSON_GetObjectItem(g, "generated_ids"), &ng);
    int32_t out[64];
    size_t k = greedy(c, (int)ng, out);
    CHECKF(k == ng && !memcmp(out, gen_ref, ng * sizeof *out),
           "embeddings API: greedy tokens differ from the image path");

    /* bad embeddings: wrong width, too many rows, DeepStack without a mask */
    qvl_embd_batch bad = b;
    bad.dim = 63;
    CHECK(qvl_ctx_eval_embd(c, &bad) == QVL_E_INVAL);
    CHECK(strstr(qvl_ctx_errmsg(c), "width") != NULL);
    bad = b;
    bad.n = 100000;
    CHECK(qvl_ctx_eval_embd(c, &bad) == QVL_E_LIMIT);
    bad = b;
    bad.visual_mask = NULL;
    CHECK(qvl_ctx_eval_embd(c, &bad) == QVL_E_INVAL);

    free(gen_ref);
    qvl_ctx_free(c);
    free(mask);
    free(pos);
    qvl_free(embd);
    qvl_free(glog);
    free(ids);
    cJSON_Delete(g);
    qvl_free(pool);
    qvl_free(ds[0]);
    qvl_free(ds[1]);
    qvl_features_free(&f);
    qvl_image_free(img);
}

/* a two-turn conversation evaluated incrementally equals the whole conversation at once */
static void multi_turn(void) {
    char err[512];
    qvl_image *img = NULL;
    CHECK(qvl_image_load_file(shared_path("fixtures/tiny-qwen3vl/images/rgb_64x64.png"), 0, &img,
                              err, sizeof err) == QVL_OK);
    qvl_ctx *c = new_ctx(1024);
    qvl_message t1[1] = {{"user", "Describe this image.", 1, 0}};
    int32_t *ids1 = NULL;
    size_t n1 = 0;
    CHECK(qvl_prompt_build(M, t1, 1, 1, &img, 1, NULL, &ids1, &n1, err, sizeof err) == QVL_OK);
    CHECK(qvl_ctx_eval(c, ids1, n1, &img, 1) == QVL_OK);
    int32_t ans[8];
    size_t na = greedy(c, 5, ans); /* the 5th token was sampled but not fed */
    char *answer = NULL;
    CHECK(qvl_detokenize(M, ans, na, 0, &answer) == QVL_OK);
    /* turn 2 appended: the last answer token, <|im_end|>\n, then the next user turn (an image) */
    qvl_message t2[1] = {{"user", "And now?", 1, 0}};
    int32_t *ids2 = NULL;
    size_t n2 = 0;
    CHECK(qvl_prompt_build(M, t2, 1, 1, &img, 1, NULL, &ids2, &n2, err, sizeof err) == QVL_OK);
    int32_t *app = malloc((n2 + 3) * sizeof *app);
    app[0] = ans[na - 1];
    app[1] = 151645;
    app[2] = 198;
    memcpy(app + 3, ids2, n2 * sizeof *app);
    qvl_image *two[2] = {img, img};
    CHECK(qvl_ctx_eval(c, app, n2 + 3, &img, 1) == QVL_OK);
    int32_t next1[4];
    size_t k1 = greedy(c, 3, next1);

    /* all at once: user, assistant(answer text), user, generation prompt */
    qvl_ctx *c2 = new_ctx(1024);
    int32_t *all = malloc((n1 + na + 3 + n2) * sizeof *all);
    memcpy(all, ids1, n1 * sizeof *all);
    memcpy(all + n1, ans, na * sizeof *all);
    all[n1 + na] = 151645;
    all[n1 + na + 1] = 198;
    memcpy(all + n1 + na + 2, ids2, n2 * sizeof *all);
    CHECK(qvl_ctx_eval(c2, all, n1 + na + 2 + n2, two, 2) == QVL_OK);
    int32_t next2[4];
    size_t k2 = greedy(c2, 3, next2);
    CHECKF(k1 == k2 && !memcmp(next1, next2, k1 * sizeof *next1),
           "two turns incrementally differ from the whole conversation");
    CHECKF(max_rel(qvl_ctx_logits(c, NULL), qvl_ctx_logits(c2, NULL), 151936) < 1e-5,
           "multi-turn logits differ");

    /* bad input: the context stays usable afterwards */
    int64_t before = qvl_ctx_n_past(c);
    float *lg_before = malloc(151936 * sizeof(float));
    memcpy(lg_before, qvl_ctx_logits(c, NULL), 151936 * sizeof(float));
    int32_t bad_ids[3] = {1, 151936, 2};
    CHECK(qvl_ctx_eval(c, bad_ids, 3, NULL, 0) == QVL_E_INVAL);
    CHECK(strstr(qvl_ctx_errmsg(c), "vocabulary") != NULL);
    int32_t pads[5] = {151652, 151655, 151655, 151655, 151653}; /* 3 pads, image needs 64 */
    CHECK(qvl_ctx_eval(c, pads, 5, &img, 1) == QVL_E_INVAL);
    CHECK(strstr(qvl_ctx_errmsg(c), "tokens: 3, features 64") != NULL);
    CHECK(qvl_ctx_eval(c, pads, 5, NULL, 0) == QVL_E_INVAL); /* pads without images */
    CHECK(qvl_ctx_eval(c, ids1, n1, two, 2) == QVL_E_INVAL); /* too few pads */
    int32_t *huge = calloc(2000, sizeof *huge);
    CHECK(qvl_ctx_eval(c, huge, 2000, NULL, 0) == QVL_E_LIMIT);
    CHECK(qvl_ctx_n_past(c) == before);
    CHECK(qvl_ctx_logits(c, NULL) &&
          !memcmp(lg_before, qvl_ctx_logits(c, NULL), 151936 * sizeof(float)));
    int32_t next3[4];
    CHECK(greedy(c, 2, next3) == 2); /* still usable */
    free(lg_before);
    free(huge);
    free(all);
    free(app);
    qvl_free(answer);
    qvl_free(ids1);
    qvl_free(ids2);
    qvl_ctx_free(c);
    qvl_ctx_free(c2);
    qvl_image_free(img);
}

/* the video case: 10 frames at 4 fps, sampled at 2 fps; prompt with timestamps, grid,
 * positions, pixel rows, vision outputs, logits and the greedy continuation */
static void video_case(void) {
    cJSON *g = load_json("fixtures/tiny-qwen3vl/golden/tiny_video_frames.json");
    CHECK(g != NULL);
    if (!g)
        return;
    char err[512];
    qvl_video *v = NULL;
    qvl_status s = qvl_video_load(M, shared_path("fixtures/tiny-qwen3vl/videos/tiny_clip_96x64_4fps"),
                                  4, NULL, &v, err, sizeof err);
    CHECKF(s == QVL_OK, "video: %s", err);
    if (s != QVL_OK) {
        cJSON_Delete(g);
        return;
    }
    int64_t idx[16];
    size_t ni = qvl_video_frame_indices(v, idx, 16);
    CHECK(ni == 5 && idx[0] == 0 && idx[1] == 2 && idx[2] == 4 && idx[3] == 7 && idx[4] == 9);
    qvl_video_plan vp;
    CHECK(qvl_video_plan_get(M, v, &vp, err, sizeof err) == QVL_OK);
    CHECK(vp.grid_t == 3 && vp.grid_h == 4 && vp.grid_w == 6 && vp.n_tokens == 18);
    double ts[8];
    CHECK(qvl_video_timestamps(M, v, ts, 8) == 3 && ts[0] == 0.25 && ts[1] == 1.375 &&
          ts[2] == 2.25);
    /* pixel rows against the full golden tensor */
    qvl_pixels px;
    CHECK(qvl_video_pixels(M, v, &px, err, sizeof err) == QVL_OK);
    float *gpx = load_f32("fixtures/tiny-qwen3vl/golden/tiny_video_frames.pixel_values_videos.f32",
                          (size_t)(72 * 1536));
    CHECK(gpx && px.n_rows == 72 && px.n_cols == 1536);
    if (gpx && px.data)
        CHECKF(max_rel(px.data, gpx, 72 * 1536) <= 1e-6, "video pixel rows differ: %g",
               max_rel(px.data, gpx, 72 * 1536));
    /* vision tower over the three frame pairs (attention within each pair) */
    float feat[18 * 64], dsv[2 * 18 * 64];
    qvl_pool *pool = NULL;
    qvl_pool_create(2, &pool);
    CHECK(qvl_vit_encode(M, pool, px.data, 3, 4, 6, feat, dsv, 0, NULL, NULL, err, sizeof err) == QVL_OK);
    float *gpo = load_f32("fixtures/tiny-qwen3vl/golden/tiny_video_frames.vision_pooler_output.f32",
                          18 * 64);
    float *gd0 = load_f32("fixtures/tiny-qwen3vl/golden/tiny_video_frames.vision_deepstack_0.f32",
                          18 * 64);
    float *gd1 = load_f32("fixtures/tiny-qwen3vl/golden/tiny_video_frames.vision_deepstack_1.f32",
                          18 * 64);
    CHECK(gpo && gd0 && gd1);
    if (gpo && gd0 && gd1) {
        CHECKF(max_rel(feat, gpo, 18 * 64) < 1e-4, "video pooler differs: %g",
               max_rel(feat, gpo, 18 * 64));
        CHECK(max_rel(dsv, gd0, 18 * 64) < 1e-4 && max_rel(dsv + 18 * 64, gd1, 18 * 64) < 1e-4);
    }
    qvl_pool_free(pool);
    /* prompt, positions, logits, greedy continuation */
    qvl_message msg = {"user", "What happens in this video?", 0, 1};
    int32_t *ids = NULL;
    size_t n = 0, gn = 0;
    CHECK(qvl_prompt_build_mm(M, &msg, 1, 1, NULL, 0, NULL, &v, 1, &ids, &n, err, sizeof err) ==
          QVL_OK);
    int32_t *gids = json_ids(cJSON_GetObjectItem(g, "input_ids"), &gn);
    CHECKF(n == gn && ids && !memcmp(ids, gids, n * sizeof *ids), "video prompt ids differ");
    qvl_grid vg[3] = {{1, 4, 6}, {1, 4, 6}, {1, 4, 6}};
    int32_t *pos = malloc(3 * n * sizeof *pos);
    int64_t next = 0;
    CHECK(qvl_rope_index(ids, (int64_t)n, M->cfg.image_token_id, M->cfg.video_token_id, NULL, 0,
                         vg, 3, 2, 0, pos, &next, err, sizeof err) == QVL_OK);
    const cJSON *gp = cJSON_GetObjectItem(g, "position_ids");
    bool pos_ok = true;
    for (int a = 0; a < 3; a++)
        for (size_t i = 0; i < n; i++)
            pos_ok &= pos[a * n + i] == cJSON_GetArrayItem(cJSON_GetArrayItem(gp, a), (int)i)
                                            ->valueint;
    CHECKF(pos_ok, "video position ids differ");
    CHECK(next - (int64_t)n == cJSON_GetObjectItem(g, "rope_delta")->valueint);
    qvl_ctx *c = new_ctx(256);
    CHECKF(qvl_ctx_eval_mm(c, ids, n, NULL, 0, &v, 1) == QVL_OK, "%s", qvl_ctx_errmsg(c));
    float *glog = load_f32("fixtures/tiny-qwen3vl/golden/tiny_video_frames.prompt_end_logits.f32",
                           151936);
    if (glog && qvl_ctx_logits(c, NULL))
        CHECKF(max_rel(qvl_ctx_logits(c, NULL), glog, 151936) < 1e-4, "video logits differ: %g",
               max_rel(qvl_ctx_logits(c, NULL), glog, 151936));
    size_t ng = 0;
    int32_t *gen_ref = json_ids(cJSON_GetObjectItem(g, "generated_ids"), &ng);
    int32_t out[64];
    size_t k = greedy(c, (int)ng, out);
    CHECKF(k == ng && !memcmp(out, gen_ref, ng * sizeof *out), "video greedy tokens differ");

    /* an image and two videos in one turn: counts line up and generation runs */
    qvl_image *img = NULL;
    CHECK(qvl_image_load_file(shared_path("fixtures/tiny-qwen3vl/images/rgb_64x64.png"), 0, &img,
                              err, sizeof err) == QVL_OK);
    qvl_video *vv[2] = {v, v};
    qvl_message mix = {"user", "Compare.", 1, 2};
    int32_t *mids = NULL;
    size_t mn = 0;
    CHECK(qvl_prompt_build_mm(M, &mix, 1, 1, &img, 1, NULL, vv, 2, &mids, &mn, err, sizeof err) ==
          QVL_OK);
    qvl_ctx_reset(c);
    CHECKF(qvl_ctx_eval_mm(c, mids, mn, &img, 1, vv, 2) == QVL_OK, "mixed: %s",
           qvl_ctx_errmsg(c));
    CHECK(qvl_ctx_n_past(c) == (int64_t)mn);
    /* video pads without a video: a clear error, context unchanged */
    qvl_ctx_reset(c);
    CHECK(qvl_ctx_eval_mm(c, mids, mn, &img, 1, vv, 1) == QVL_E_INVAL);
    CHECK(strstr(qvl_ctx_errmsg(c), "video") != NULL && qvl_ctx_n_past(c) == 0);
    qvl_free(mids);
    qvl_image_free(img);
    free(gen_ref);
    qvl_free(glog);
    qvl_ctx_free(c);
    free(pos);
    free(gids);
    qvl_free(ids);
    qvl_free(gpx);
    qvl_free(gpo);
    qvl_free(gd0);
    qvl_free(gd1);
    qvl_pixels_free(&px);
    qvl_video_free(v);
    cJSON_Delete(g);
}

/* eval_mm's scatter of image and video features into the embeddings, and of their DeepStack
 * rows (added in sequence order), against the same prompt composed by hand through eval_embd:
 * an image then a video in one turn, and a video turn then an image turn (the encoder's order,
 * images first, then differs from the sequence's and the rows are gathered) */
static void media_order_case(void) {
    char err[512];
    const int64_t H = M->cfg.text.hidden;
    qvl_video *v = NULL;
    qvl_image *img = NULL;
    qvl_features fi = {0};
    qvl_pixels px = {0};
    qvl_pool *pool = NULL;
    float fv[18 * 64], dv[2 * 18 * 64];
    CHECK(H == 64 && M->cfg.vision.n_deepstack == 2);
    if (qvl_video_load(M, shared_path("fixtures/tiny-qwen3vl/videos/tiny_clip_96x64_4fps"), 4,
                       NULL, &v, err, sizeof err) != QVL_OK ||
        qvl_image_load_file(shared_path("fixtures/tiny-qwen3vl/images/rgb_64x64.png"), 0, &img,
                            err, sizeof err) != QVL_OK ||
        qvl_vision_encode(M, img, NULL, 2, &fi, err, sizeof err) != QVL_OK ||
        qvl_video_pixels(M, v, &px, err, sizeof err) != QVL_OK || qvl_pool_create(2, &pool) ||
        qvl_vit_encode(M, pool, px.data, 3, 4, 6, fv, dv, 0, NULL, NULL, err, sizeof err) ||
        H != 64 || M->cfg.vision.n_deepstack != 2) {
        CHECKF(false, "media_order_case setup: %s", err);
        goto done;
    }
    const qvl_message both[1] = {{"user", "Compare.", 1, 1}};
    const qvl_message turns[2] = {{"user", "Watch.", 0, 1}, {"user", "Now look.", 1, 0}};
    for (int order = 0; order < 2; order++) {
        int32_t *ids = NULL;
        size_t n = 0;
        CHECK(qvl_prompt_build_mm(M, order ? turns : both, order ? 2 : 1, 1, &img, 1, NULL, &v, 1,
                                  &ids, &n, err, sizeof err) == QVL_OK);
        float *embd = malloc(n * H * sizeof *embd), *dsr[2];
        dsr[0] = malloc(n * H * sizeof(float));
        dsr[1] = malloc(n * H * sizeof(float));
        uint8_t *mask = calloc(n, 1);
        int32_t *pos = malloc(3 * n * sizeof *pos);
        qvl_ctx *a = new_ctx(512), *b = new_ctx(512);
        if (!ids || !embd || !dsr[0] || !dsr[1] || !mask || !pos || !a || !b) {
            CHECK(false);
            goto next;
        }
        CHECK(qvl_embed_tokens(M, ids, n, embd) == QVL_OK);
        int64_t ri = 0, rv = 0, r = 0, first_img = -1, first_vid = -1;
        for (size_t i = 0; i < n; i++) {
            const float *f, *d0, *d1;
            if (ids[i] == M->cfg.image_token_id) {
                first_img = first_img < 0 ? (int64_t)i : first_img;
                f = fi.embd + ri * H;
                d0 = fi.deepstack + ri * H;
                d1 = fi.deepstack + (fi.n_tokens + ri) * H;
                ri++;
            } else if (ids[i] == M->cfg.video_token_id) {
                first_vid = first_vid < 0 ? (int64_t)i : first_vid;
                f = fv + rv * H;
                d0 = dv + rv * H;
                d1 = dv + (18 + rv) * H;
                rv++;
            } else {
                continue;
            }
            memcpy(embd + i * H, f, H * sizeof *f);
            memcpy(dsr[0] + r * H, d0, H * sizeof *d0);
            memcpy(dsr[1] + r * H, d1, H * sizeof *d1);
            mask[i] = 1;
            r++;
        }
        CHECKF(ri == fi.n_tokens && rv == 18 && (order ? first_vid < first_img : first_img < first_vid),
               "media_order_case %d: the prompt does not hold the media in the intended order",
               order);
        qvl_grid ig = {fi.grid_t, fi.grid_h, fi.grid_w}, vg[3] = {{1, 4, 6}, {1, 4, 6}, {1, 4, 6}};
        int64_t next = 0;
        CHECK(qvl_rope_index(ids, (int64_t)n, M->cfg.image_token_id, M->cfg.video_token_id, &ig,
                             1, vg, 3, M->cfg.vision.merge, 0, pos, &next, err, sizeof err) ==
              QVL_OK);
        const float *dsp[2] = {dsr[0], dsr[1]};
        qvl_embd_batch eb = {n, (int)H, embd, pos, mask, 2, dsp, next};
        CHECKF(qvl_ctx_eval_embd(a, &eb) == QVL_OK, "%s", qvl_ctx_errmsg(a));
        CHECKF(qvl_ctx_eval_mm(b, ids, n, &img, 1, &v, 1) == QVL_OK, "%s", qvl_ctx_errmsg(b));
        const float *la = qvl_ctx_logits(a, NULL), *lb = qvl_ctx_logits(b, NULL);
        CHECKF(la && lb && max_rel(la, lb, (size_t)M->cfg.text.vocab_size) < 1e-6,
               "media order %d: eval_mm differs from the features composed by hand: %g", order,
               la && lb ? max_rel(la, lb, (size_t)M->cfg.text.vocab_size) : -1.0);
    next:
        qvl_ctx_free(a);
        qvl_ctx_free(b);
        free(pos);
        free(mask);
        free(dsr[0]);
        free(dsr[1]);
        free(embd);
        qvl_free(ids);
    }
done:
    qvl_pool_free(pool);
    qvl_pixels_free(&px);
    qvl_features_free(&fi);
    qvl_image_free(img);
    qvl_video_free(v);
}

/* pages [p, p + n) all resident (mincore) */
static bool resident(const void *p, size_t n) {
    uintptr_t a = (uintptr_t)p & ~(uintptr_t)4095, b = (uintptr_t)p + n;
    size_t np = (b - a + 4095) / 4096;
    unsigned char *v = malloc(np);
    bool ok = v && mincore((void *)a, b - a, v) == 0;
    for (size_t i = 0; ok && i < np; i++)
        ok = v[i] & 1;
    free(v);
    return ok;
}

/* The cache's chunks are faulted in ahead of their writes (llm.c): during decode, a share of the
 * next chunk at each of the QVL_KV_WARM_AHEAD positions before it, so that it is whole when its
 * first row is written; the rows' values are those of a recomputation across the chunk border. */
static void kv_warm_case(void) {
    const qvl_text_cfg *tc = &M->cfg.text;
    const int64_t C = QVL_KV_CHUNK, n_end = C + 16;
    const size_t region = (size_t)C * (size_t)(tc->n_kv_heads * tc->head_dim) * sizeof(float);
    /* whether this kernel can fault pages in without writing them (Linux 5.14) */
    bool populate = false;
#ifdef MADV_POPULATE_WRITE
    void *probe = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    populate = probe != MAP_FAILED && madvise(probe, 4096, MADV_POPULATE_WRITE) == 0;
    if (probe != MAP_FAILED)
        munmap(probe, 4096);
#endif
    qvl_ctx *c = new_ctx(1024);
    int32_t *ids = malloc((size_t)n_end * sizeof *ids);
    for (int64_t i = 0; i < n_end; i++)
        ids[i] = (int32_t)(100 + (i * 7919) % 5000);
    CHECK(qvl_ctx_eval(c, ids, 8, NULL, 0) == QVL_OK);
    CHECKF(c->kv_warm == 1 && c->kv_warm_done == 0, "after the prompt: %lld chunks, %zu bytes",
           (long long)c->kv_warm, c->kv_warm_done);
    bool window_ok = true, whole_ok = true;
    for (int64_t p = 8; p < n_end; p++) {
        CHECK(qvl_ctx_decode_one(c, ids[p]) == QVL_OK);
        if (p + 1 == C - QVL_KV_WARM_AHEAD) /* not yet in the window */
            window_ok &= c->kv_warm == 1 && c->kv_warm_done == 0;
        if (p + 1 == C - QVL_KV_WARM_AHEAD / 2) { /* half way: about half of it */
            size_t total = region * 2 * (size_t)tc->n_layers;
            window_ok &= c->kv_warm == 1 && c->kv_warm_done >= total / 3 &&
                         c->kv_warm_done <= total * 2 / 3;
            if (populate) /* the first layer's K region comes first */
                window_ok &= resident((uint8_t *)c->k_cache + region, region / 4);
        }
        if (p + 1 == C) { /* the chunk is whole before row C is written */
            whole_ok &= c->kv_warm == 2;
            for (int l = 0; populate && l < tc->n_layers; l++) {
                size_t at = (size_t)l * (size_t)(c->kv_rows / C) * region + region;
                whole_ok &= resident((uint8_t *)c->k_cache + at, region) &&
                            resident((uint8_t *)c->v_cache + at, region);
                /* and no more: the chunk after it is not faulted in yet */
                whole_ok &= !resident((uint8_t *)c->k_cache + at + region, 4096) &&
                            !resident((uint8_t *)c->v_cache + at + region, 4096);
            }
        }
    }
    CHECK(window_ok);
    CHECK(whole_ok);
    qvl_ctx *c2 = new_ctx(1024);
    CHECK(qvl_ctx_eval(c2, ids, (size_t)n_end, NULL, 0) == QVL_OK);
    double d = max_rel(qvl_ctx_logits(c2, NULL), qvl_ctx_logits(c, NULL), (size_t)tc->vocab_size);
    CHECKF(d < 1e-5, "decode across a chunk border vs recomputation: %g", d);
    /* qvl_ctx_prefault: the chunks covering the positions, faulted in ahead, nothing changed;
     * on a context holding tokens it disturbs nothing either */
    qvl_ctx *c3 = new_ctx(1024);
    CHECK(qvl_ctx_prefault(c3, -1) == QVL_E_INVAL && qvl_ctx_prefault(NULL, 1) == QVL_E_INVAL);
    CHECK(qvl_ctx_prefault(c3, C + 1) == QVL_OK && c3->kv_warm == 2 && c3->scratch_rows == C + 1);
    for (int l = 0; populate && l < tc->n_layers; l++) {
        size_t at = (size_t)l * (size_t)(c3->kv_rows / C) * region;
        CHECK(resident((uint8_t *)c3->k_cache + at, 2 * region) &&
              resident((uint8_t *)c3->v_cache + at, 2 * region));
    }
    CHECK(qvl_ctx_prefault(c3, 1 << 30) == QVL_OK && c3->kv_warm == c3->kv_rows / C);
    CHECK(qvl_ctx_eval(c3, ids, 8, NULL, 0) == QVL_OK && qvl_ctx_prefault(c3, 100) == QVL_OK);
    CHECK(qvl_ctx_eval(c3, ids + 8, (size_t)n_end - 8, NULL, 0) == QVL_OK);
    d = max_rel(qvl_ctx_logits(c2, NULL), qvl_ctx_logits(c3, NULL), (size_t)tc->vocab_size);
    CHECKF(d < 1e-5, "after qvl_ctx_prefault: %g", d);
    qvl_ctx_free(c3);
    qvl_ctx_free(c2);
    qvl_ctx_free(c);
    free(ids);
}

/* A context keeps the vision tower's activations between images (vit.h): a smaller image after
 * a larger one reuses the larger one's buffer, stale contents and all, and gives the bits of a
 * fresh context; so does the larger one again. */
static const float *eval_image(qvl_ctx *c, const char *file) {
    char err[512], rel[128];
    qvl_image *img = NULL;
    snprintf(rel, sizeof rel, "fixtures/tiny-qwen3vl/images/%s", file);
    CHECK(qvl_image_load_file(shared_path(rel), 0, &img, err, sizeof err) == QVL_OK);
    qvl_message msg = {"user", "What is this?", 1, 0};
    int32_t *ids = NULL;
    size_t n = 0;
    CHECK(qvl_prompt_build(M, &msg, 1, 1, &img, 1, NULL, &ids, &n, err, sizeof err) == QVL_OK);
    qvl_ctx_reset(c);
    qvl_status s = qvl_ctx_eval(c, ids, n, &img, 1);
    CHECKF(s == QVL_OK, "eval %s: %s", file, qvl_ctx_errmsg(c));
    qvl_free(ids);
    qvl_image_free(img);
    return s == QVL_OK ? qvl_ctx_logits(c, NULL) : NULL;
}

/* a context keeps the vision tower's activations and the eval buffers between prompts: a
 * smaller image after a larger one reuses them and gives a fresh context's logits bit for bit */
static void vit_reuse_case(void) {
    const size_t nv = (size_t)M->cfg.text.vocab_size;
    qvl_ctx *c = new_ctx(1024), *f1 = new_ctx(1024), *f2 = new_ctx(1024);
    if (!c || !f1 || !f2)
        goto done;
    const float *big = eval_image(f1, "rgb_400x300.png");
    const float *small = eval_image(f2, "rgb_64x64.png");
    const float *l = eval_image(c, "rgb_400x300.png");
    void *kept = c->vit_keep.p, *ekept = c->eval_keep.p;
    size_t kept_n = c->vit_keep.n, ekept_n = c->eval_keep.n;
    CHECKF(kept != NULL && kept_n > 0, "the vision activations were not kept");
    CHECKF(ekept != NULL && ekept_n > 0, "the eval buffers were not kept");
    CHECK(big && l && !memcmp(l, big, nv * sizeof *l));
    /* nothing may rely on the kept buffers' contents: fill them with NaNs */
    if (kept && ekept) {
        memset(kept, 0xff, kept_n);
        memset(ekept, 0xff, ekept_n);
    }
    l = eval_image(c, "rgb_64x64.png");
    CHECKF(c->vit_keep.p == kept && c->vit_keep.n == kept_n,
           "a smaller image did not reuse the kept activations");
    CHECKF(c->eval_keep.p == ekept && c->eval_keep.n == ekept_n,
           "a smaller prompt did not reuse the kept eval buffers");
    CHECKF(small && l && !memcmp(l, small, nv * sizeof *l),
           "a smaller image after a larger one: logits differ from a fresh context's");
    l = eval_image(c, "rgb_400x300.png");
    CHECKF(big && l && !memcmp(l, big, nv * sizeof *l),
           "the larger image again: logits differ from a fresh context's");
done:
    qvl_ctx_free(c);
    qvl_ctx_free(f1);
    qvl_ctx_free(f2);
}

/* The resample option end to end: images default to Pillow's resize and the PIL processor's
 * normalisation, torchvision gives PyTorch's uint8 resize and the fused normalisation; videos
 * default to torchvision; unknown values are refused. */
static void resample_case(void) {
    char err[512];
    qvl_image *img = NULL;
    CHECK(qvl_image_load_file(shared_path("fixtures/tiny-qwen3vl/images/rgb_400x300.png"), 0, &img,
                              err, sizeof err) == QVL_OK);
    if (!img)
        return;
    float *px[3] = {NULL, NULL, NULL};
    int64_t rows[3] = {0}, cols[3] = {0};
    qvl_image_opts io[3];
    memset(io, 0, sizeof io);
    io[1].resample = QVL_RESAMPLE_PIL;
    io[2].resample = QVL_RESAMPLE_TORCHVISION;
    for (int k = 0; k < 3; k++)
        CHECKF(qvl_image_pixel_values(M, img, &io[k], &px[k], &rows[k], &cols[k], NULL, err,
                                      sizeof err) == QVL_OK,
               "resample %d: %s", k, err);
    if (px[0] && px[1] && px[2] && rows[0] == rows[2] && cols[0] == cols[2]) {
        size_t n = (size_t)rows[0] * (size_t)cols[0];
        CHECK(rows[0] == rows[1] && !memcmp(px[0], px[1], n * sizeof(float)));
        /* torchvision: PyTorch's resize, then (u8 - 127.5) / 127.5 */
        qvl_rgb rgb = {img->w, img->h, img->rgb};
        qvl_pixels want = {0};
        CHECK(qvl_img_preprocess(&rgb, &M->pp, 0, 0, QVL_RESAMPLER_TORCH, &want, err, sizeof err) ==
              QVL_OK);
        CHECK(want.data && want.n_rows == rows[2] &&
              !memcmp(want.data, px[2], n * sizeof(float)));
        qvl_pixels_free(&want);
        size_t n_diff = 0;
        float maxd = 0;
        for (size_t i = 0; i < n; i++) {
            float d = fabsf(px[0][i] - px[2][i]);
            n_diff += d > 0;
            maxd = d > maxd ? d : maxd;
        }
        /* 384x288 from 400x300: the resamplers differ in a few pixels by a level or two */
        CHECKF(n_diff > 0 && maxd <= 2.0f / 127.5f + 1e-6f, "pil vs torchvision: %zu differ, max %g",
               n_diff, (double)maxd);
    }
    for (int k = 0; k < 3; k++)
        qvl_free(px[k]);
    qvl_image_opts bad = {0};
    bad.resample = (qvl_resample)7;
    float *p = NULL;
    int64_t r = 0, c = 0;
    err[0] = 0;
    CHECK(qvl_image_pixel_values(M, img, &bad, &p, &r, &c, NULL, err, sizeof err) ==
              QVL_E_INVAL &&
          p == NULL && strstr(err, "resample"));
    qvl_features f;
    CHECK(qvl_vision_encode(M, img, &bad, 1, &f, err, sizeof err) == QVL_E_INVAL);
    qvl_image_free(img);

    /* video: a budget that makes the 96x64 clip resize; default = torchvision */
    const char *clip = shared_path("fixtures/tiny-qwen3vl/videos/tiny_clip_96x64_4fps");
    qvl_video_opts vo[3];
    qvl_pixels vp[3];
    memset(vo, 0, sizeof vo);
    memset(vp, 0, sizeof vp);
    vo[1].resample = QVL_RESAMPLE_PIL;
    vo[2].resample = QVL_RESAMPLE_TORCHVISION;
    qvl_video *v[3] = {NULL, NULL, NULL};
    for (int k = 0; k < 3; k++) {
        vo[k].max_pixels = 5 * 64 * 32;
        CHECKF(qvl_video_load(M, clip, 4, &vo[k], &v[k], err, sizeof err) == QVL_OK, "video: %s",
               err);
        if (v[k])
            CHECKF(qvl_video_pixels(M, v[k], &vp[k], err, sizeof err) == QVL_OK, "video: %s",
                   err);
    }
    qvl_video_plan plan = {0};
    if (v[0])
        CHECKF(qvl_video_plan_get(M, v[0], &plan, err, sizeof err) == QVL_OK &&
                   plan.resized_width < 96 && plan.resized_height < 64,
               "video resized to %dx%d", plan.resized_width, plan.resized_height);
    if (vp[0].data && vp[1].data && vp[2].data && vp[0].n_rows == vp[1].n_rows &&
        vp[0].n_rows == vp[2].n_rows) {
        size_t n = (size_t)vp[0].n_rows * (size_t)vp[0].n_cols;
        CHECK(!memcmp(vp[0].data, vp[2].data, n * sizeof(float)));
        CHECK(memcmp(vp[0].data, vp[1].data, n * sizeof(float)) != 0);
        /* by hand: each sampled frame through PyTorch's resize, then the fused normalisation */
        qvl_rgb rs[5];
        memset(rs, 0, sizeof rs);
        bool ok = v[0]->n == 5;
        for (int i = 0; ok && i < 5; i++)
            ok = qvl_img_resize_bicubic_rs(&v[0]->frames[i], plan.resized_width,
                                           plan.resized_height, QVL_RESAMPLER_TORCH,
                                           &rs[i]) == QVL_OK;
        qvl_pixels want = {0};
        CHECK(ok && qvl_pp_flatten(rs, 5, &M->vpp, QVL_PP_NORM_FUSED, &want, err, sizeof err) ==
                        QVL_OK);
        CHECK(want.data && want.n_rows == vp[0].n_rows &&
              !memcmp(want.data, vp[0].data, n * sizeof(float)));
        qvl_pixels_free(&want);
        for (int i = 0; i < 5; i++)
            qvl_rgb_free(&rs[i]);
    } else {
        CHECK(!"video pixel rows missing");
    }
    for (int k = 0; k < 3; k++) {
        qvl_pixels_free(&vp[k]);
        qvl_video_free(v[k]);
    }
    qvl_video_opts vbad = {0};
    vbad.resample = (qvl_resample)-1;
    qvl_video *vb = NULL;
    err[0] = 0;
    CHECK(qvl_video_load(M, clip, 4, &vbad, &vb, err, sizeof err) == QVL_E_INVAL && vb == NULL &&
          strstr(err, "resample"));
}

/* log-sum-exp of a logit vector, in double */
static double lse_of(const float *l, size_t n) {
    double m = -INFINITY, sum = 0;
    for (size_t i = 0; i < n; i++)
        m = fmax(m, l[i]);
    for (size_t i = 0; i < n; i++)
        sum += exp(l[i] - m);
    return m + log(sum);
}

typedef struct {
    size_t n, stop_at;
    bool index_ok;
    int32_t ids[64];
    float lp[64];
    int32_t top0[64];
} lp_seen;

static int on_token_lp(const qvl_token_info *t, void *user) {
    lp_seen *s = user;
    s->index_ok &= t->index == s->n;
    if (s->n < 64) {
        s->ids[s->n] = t->token;
        s->lp[s->n] = t->logprob;
        s->top0[s->n] = t->n_top > 0 ? t->top_ids[0] : -1;
    }
    s->n++;
    return s->stop_at && s->n == s->stop_at;
}

/* log-probabilities of generated tokens: against the golden logits of every greedy step,
 * independent of the sampling parameters, through the result and the token callback */
/* Prompt scoring (qvl_ctx_eval_scored) on the one-image golden case: the prompt followed by the
 * golden greedy tokens, scored in one eval, gives at each generated position the golden top-5
 * ids (the reference's), the log-probabilities generation reports (decode path) and, at the
 * first, the golden prompt-end logits' value; the context's logits are those of a plain eval;
 * appended to an evaluated prompt, token 0 is scored from the context's logits; a fresh
 * context's token 0 has none (NAN, ids -1); bad arguments are refused with the context as it
 * was. */
static void score_case(void) {
    char rel[256], err[512];
    cJSON *g = load_json("fixtures/tiny-qwen3vl/golden/tiny_1img_png.json");
    snprintf(rel, sizeof rel, "fixtures/tiny-qwen3vl/golden/tiny_1img_png.prompt_end_logits.f32");
    float *glog = load_f32(rel, 151936);
    qvl_image *img = NULL;
    CHECK(qvl_image_load_file(shared_path("fixtures/tiny-qwen3vl/images/rgb_64x64.png"), 0, &img,
                              err, sizeof err) == QVL_OK);
    CHECK(g && glog && img);
    if (!g || !glog || !img) {
        cJSON_Delete(g);
        free(glog);
        qvl_image_free(img);
        return;
    }
    size_t n = 0, ng = 0;
    int32_t *ids = json_ids(cJSON_GetObjectItem(g, "input_ids"), &n);
    int32_t *gen = json_ids(cJSON_GetObjectItem(g, "generated_ids"), &ng);
    const cJSON *steps = cJSON_GetObjectItem(g, "step_top5");
    const size_t na = n + ng;
    int32_t *all = malloc(na * sizeof *all);
    float *lp = malloc(na * sizeof *lp), *tl = malloc(na * 5 * sizeof *tl);
    int32_t *ti = malloc(na * 5 * sizeof *ti);
    CHECK(ids && gen && all && lp && tl && ti && ng > 2);
    if (!ids || !gen || !all || !lp || !tl || !ti || ng <= 2)
        goto out;
    memcpy(all, ids, n * sizeof *all);
    memcpy(all + n, gen, ng * sizeof *all);

    /* the reference: greedy generation's log-probabilities, and a plain eval's logits */
    qvl_ctx *c = new_ctx(512);
    CHECK(qvl_ctx_eval(c, ids, n, &img, 1) == QVL_OK);
    qvl_gen_params gp = qvl_gen_default_params();
    gp.temperature = 0;
    gp.max_new_tokens = (int)ng;
    gp.logprobs = 1;
    qvl_gen_result r = {0};
    CHECK(qvl_ctx_generate(c, &gp, NULL, NULL, &r) == QVL_OK && r.n_tokens == ng);
    qvl_ctx_reset(c);
    CHECK(qvl_ctx_eval(c, all, na, &img, 1) == QVL_OK);
    int nv = 0;
    const float *lg = qvl_ctx_logits(c, &nv);
    float *plain = malloc((size_t)nv * sizeof *plain);
    CHECK(plain && lg);
    if (plain && lg)
        memcpy(plain, lg, (size_t)nv * sizeof *plain);

    /* bad arguments: refused, the context as it was */
    qvl_ctx_reset(c);
    qvl_prompt_scores ps = {lp, QVL_MAX_TOP_LOGPROBS + 1, ti, tl};
    CHECK(qvl_ctx_eval_scored(c, all, na, &img, 1, NULL, 0, &ps) == QVL_E_INVAL);
    CHECK(qvl_ctx_eval_scored(c, all, na, &img, 1, NULL, 0, NULL) == QVL_E_INVAL);
    ps = (qvl_prompt_scores){lp, 5, NULL, tl};
    CHECK(qvl_ctx_eval_scored(c, all, na, &img, 1, NULL, 0, &ps) == QVL_E_INVAL);
    CHECK(qvl_ctx_n_past(c) == 0);

    ps = (qvl_prompt_scores){lp, 5, ti, tl};
    CHECKF(qvl_ctx_eval_scored(c, all, na, &img, 1, NULL, 0, &ps) == QVL_OK, "%s",
           qvl_ctx_errmsg(c));
    CHECK(isnan(lp[0]) && ti[0] == -1 && ti[4] == -1 && isnan(tl[0]));
    lg = qvl_ctx_logits(c, &nv);
    CHECK(lg && plain && !memcmp(lg, plain, (size_t)nv * sizeof *plain));
    double worst = 0;
    bool ids_ok = true, order_ok = true, finite_ok = true;
    for (size_t i = 1; i < na; i++) {
        finite_ok &= isfinite(lp[i]) && lp[i] <= 0;
        for (int k = 1; k < 5; k++)
            order_ok &= tl[i * 5 + k] <= tl[i * 5 + k - 1];
    }
    for (size_t s = 0; s < ng; s++) {
        size_t i = n + s; /* generated token s, predicted by the row before it */
        const cJSON *t5 = cJSON_GetObjectItem(cJSON_GetArrayItem(steps, (int)s), "top5");
        for (int k = 0; k < 5; k++)
            ids_ok &= ti[i * 5 + k] == cJSON_GetArrayItem(cJSON_GetArrayItem(t5, k), 0)->valueint;
        ids_ok &= ti[i * 5] == all[i] && lp[i] == tl[i * 5];
        worst = fmax(worst, fabs(lp[i] - r.logprobs[s]));
    }
    CHECK(finite_ok && order_ok);
    CHECKF(ids_ok, "scored top-5 ids differ from the golden steps");
    CHECKF(worst < 2e-3, "scored log-probabilities differ from generation's by %g", worst);
    double glse = lse_of(glog, 151936);
    CHECKF(fabs(lp[n] - (glog[gen[0]] - glse)) < 1e-3, "scored %g vs golden %g", lp[n],
           glog[gen[0]] - glse);

    /* prefill in chunks (n_batch 1, 2, 97: one row, two, and one row after 97) gives the
     * logits of one chunk. The tiny model's attention output (4 heads x 32) is twice its
     * hidden size (64), as the 4B's is 1.6 times: it once overflowed a scratch region sized by
     * the hidden size into the queries being read, whenever a chunk had more rows than half
     * of n_batch */
    {
        static const int nbs[] = {1, 2, 97};
        for (int t = 0; t < 3; t++) {
            qvl_ctx_params cp = qvl_ctx_default_params();
            cp.n_ctx = 512;
            cp.n_threads = 2;
            cp.n_batch = nbs[t];
            qvl_ctx *cb = NULL;
            CHECK(qvl_ctx_create(M, &cp, &cb, err, sizeof err) == QVL_OK);
            bool ok = cb && qvl_ctx_eval(cb, all, na, &img, 1) == QVL_OK;
            int nvb = 0;
            const float *lgb = ok ? qvl_ctx_logits(cb, &nvb) : NULL;
            double wb = lgb && plain ? 0 : INFINITY;
            for (int v = 0; lgb && plain && v < nvb; v++)
                wb = fmax(wb, fabs(lgb[v] - plain[v]));
            CHECKF(wb < 1e-3, "n_batch %d: logits differ from one chunk's by %g", nbs[t], wb);
            qvl_ctx_free(cb);
        }
    }

    /* prefill chunks of 7 rows (scored chunk by chunk): the same scores */
    {
        qvl_ctx_params cp = qvl_ctx_default_params();
        cp.n_ctx = 512;
        cp.n_threads = 2;
        cp.n_batch = 7;
        qvl_ctx *c7 = NULL;
        float *lp7 = malloc(na * sizeof *lp7), *tl7 = malloc(na * 5 * sizeof *tl7);
        int32_t *ti7 = malloc(na * 5 * sizeof *ti7);
        CHECK(qvl_ctx_create(M, &cp, &c7, err, sizeof err) == QVL_OK && lp7 && tl7 && ti7);
        qvl_prompt_scores p7 = {lp7, 5, ti7, tl7};
        if (c7 && lp7 && tl7 && ti7 &&
            qvl_ctx_eval_scored(c7, all, na, &img, 1, NULL, 0, &p7) == QVL_OK) {
            double w7 = 0;
            bool same_ids = true;
            for (size_t i = 1; i < na; i++) {
                w7 = fmax(w7, fabs(lp7[i] - lp[i]));
                same_ids &= ti7[i * 5] == ti[i * 5];
            }
            int nv7 = 0;
            const float *lg7 = qvl_ctx_logits(c7, &nv7);
            double wl = 0;
            for (int v = 0; lg7 && plain && v < nv7; v++)
                wl = fmax(wl, fabs(lg7[v] - plain[v]));
            size_t first_bad = 0;
            for (size_t i = 1; i < na && !first_bad; i++)
                if (fabs(lp7[i] - lp[i]) > 1e-3)
                    first_bad = i;
            CHECKF(w7 < 1e-3 && same_ids && isnan(lp7[0]) && wl < 1e-3,
                   "chunks of 7: scores differ by %g (top ids same: %d; first at %zu of %zu; "
                   "final logits differ by %g)",
                   w7, same_ids, first_bad, na, wl);
        } else {
            CHECKF(0, "chunks of 7: %s", c7 ? qvl_ctx_errmsg(c7) : err);
        }
        qvl_ctx_free(c7);
        free(lp7);
        free(tl7);
        free(ti7);
    }

    /* appended to the evaluated prompt: token 0 comes from the context's logits */
    qvl_ctx_reset(c);
    CHECK(qvl_ctx_eval(c, ids, n, &img, 1) == QVL_OK);
    CHECKF(qvl_ctx_eval_scored(c, gen, ng, NULL, 0, NULL, 0, &ps) == QVL_OK, "%s",
           qvl_ctx_errmsg(c));
    worst = 0;
    for (size_t s = 0; s < ng; s++)
        worst = fmax(worst, fabs(lp[s] - r.logprobs[s]));
    CHECKF(worst < 2e-3 && fabs(lp[0] - r.logprobs[0]) < 1e-5 && ti[0] == gen[0],
           "appended scores differ from generation's by %g (first %g vs %g)", worst, lp[0],
           r.logprobs[0]);
    CHECK(qvl_ctx_n_past(c) == (int64_t)na);
    qvl_gen_result_free(&r);
    qvl_ctx_free(c);
    free(plain);
out:
    free(ids);
    free(gen);
    free(all);
    free(lp);
    free(tl);
    free(ti);
    free(glog);
    cJSON_Delete(g);
    qvl_image_free(img);
}

static void logprobs_case(void) {
    const char *G = "fixtures/tiny-qwen3vl/golden/";
    char rel[256], err[512];
    cJSON *g = load_json("fixtures/tiny-qwen3vl/golden/tiny_1img_png.json");
    snprintf(rel, sizeof rel, "%stiny_1img_png.prompt_end_logits.f32", G);
    float *glog = load_f32(rel, 151936);
    qvl_image *img = NULL;
    CHECK(qvl_image_load_file(shared_path("fixtures/tiny-qwen3vl/images/rgb_64x64.png"), 0, &img,
                              err, sizeof err) == QVL_OK);
    CHECK(g && glog && img);
    if (!g || !glog || !img)
        goto out;
    size_t n = 0, ng = 0;
    int32_t *ids = json_ids(cJSON_GetObjectItem(g, "input_ids"), &n);
    int32_t *gen_ref = json_ids(cJSON_GetObjectItem(g, "generated_ids"), &ng);
    const cJSON *steps = cJSON_GetObjectItem(g, "step_top5");
    qvl_ctx *c = new_ctx(512);
    CHECK(qvl_ctx_eval(c, ids, n, &img, 1) == QVL_OK);
    int nv = 0;
    const float *lg = qvl_ctx_logits(c, &nv);
    double lse = lse_of(lg, (size_t)nv), glse = lse_of(glog, (size_t)nv);
    float *first = malloc((size_t)nv * sizeof *first);
    memcpy(first, lg, (size_t)nv * sizeof *first);

    /* bad requests are refused and leave the context as it was */
    qvl_gen_params gp = qvl_gen_default_params();
    qvl_gen_result r;
    gp.temperature = 0;
    gp.max_new_tokens = (int)ng;
    gp.top_logprobs = 5;
    CHECK(qvl_ctx_generate(c, &gp, NULL, NULL, &r) == QVL_E_INVAL && r.tokens == NULL);
    gp.logprobs = 1;
    gp.top_logprobs = QVL_MAX_TOP_LOGPROBS + 1;
    CHECK(qvl_ctx_generate(c, &gp, NULL, NULL, &r) == QVL_E_INVAL);
    gp.top_logprobs = -1;
    CHECK(qvl_ctx_generate(c, &gp, NULL, NULL, &r) == QVL_E_INVAL);

    gp.top_logprobs = 5;
    lp_seen seen = {.index_ok = true};
    gp.token_cb = on_token_lp;
    gp.token_user = &seen;
    CHECKF(qvl_ctx_generate(c, &gp, NULL, NULL, &r) == QVL_OK, "%s", qvl_ctx_errmsg(c));
    CHECK(r.n_tokens == ng && !memcmp(r.tokens, gen_ref, ng * sizeof *gen_ref));
    CHECK(r.logprobs && r.top_ids && r.top_logprobs && r.n_top == 5);
    CHECK(seen.n == r.n_tokens && seen.index_ok);
    double worst_first = 0, worst_diff = 0;
    bool ids_ok = true, cb_ok = true, order_ok = true;
    for (size_t i = 0; i < r.n_tokens && r.logprobs; i++) {
        const cJSON *t5 = cJSON_GetObjectItem(cJSON_GetArrayItem(steps, (int)i), "top5");
        const int32_t *ti = r.top_ids + i * 5;
        const float *tl = r.top_logprobs + i * 5;
        double g0 = cJSON_GetArrayItem(cJSON_GetArrayItem(t5, 0), 1)->valuedouble;
        for (int k = 0; k < 5; k++) {
            const cJSON *pair = cJSON_GetArrayItem(t5, k);
            ids_ok &= ti[k] == cJSON_GetArrayItem(pair, 0)->valueint;
            double gd = cJSON_GetArrayItem(pair, 1)->valuedouble - g0;
            worst_diff = fmax(worst_diff, fabs((tl[k] - tl[0]) - gd));
            order_ok &= tl[k] <= 0 && (k == 0 || tl[k] <= tl[k - 1]);
        }
        /* greedy: the chosen token is the most likely one */
        ids_ok &= ti[0] == r.tokens[i] && r.logprobs[i] == tl[0];
        cb_ok &= seen.ids[i] == r.tokens[i] && seen.lp[i] == r.logprobs[i] &&
                 seen.top0[i] == ti[0];
    }
    CHECK(ids_ok && cb_ok && order_ok);
    CHECKF(worst_diff < 1e-3, "top-5 log-probability gaps differ from the golden by %g",
           worst_diff);
    /* the first step against the logits themselves and against the golden logits */
    int32_t t0 = gen_ref[0];
    worst_first = fabs(r.logprobs[0] - (first[t0] - lse));
    CHECKF(worst_first < 1e-5, "first log-probability %.8g vs %.8g", r.logprobs[0],
           first[t0] - lse);
    CHECKF(fabs(r.logprobs[0] - (glog[t0] - glse)) < 1e-3, "first log-probability %.6g vs "
           "golden %.6g", r.logprobs[0], glog[t0] - glse);
    double psum = 0;
    for (int k = 0; k < 5; k++)
        psum += exp(r.top_logprobs[k]);
    CHECK(psum > 0 && psum <= 1 + 1e-6);
    qvl_gen_result_free(&r);
    CHECK(r.logprobs == NULL && r.top_ids == NULL);

    /* sampling parameters do not change the log-probabilities: the first token of a sampled,
     * penalised run has the raw logits' log-probability; the callback can stop the run */
    qvl_ctx_reset(c);
    CHECK(qvl_ctx_eval(c, ids, n, &img, 1) == QVL_OK);
    gp.temperature = 1.7f;
    gp.top_k = 0;
    gp.top_p = 1;
    gp.repetition_penalty = 1.5f;
    gp.seed = 7;
    gp.top_logprobs = 0;
    seen = (lp_seen){.index_ok = true, .stop_at = 3};
    CHECK(qvl_ctx_generate(c, &gp, NULL, NULL, &r) == QVL_E_CANCELLED);
    CHECK(r.n_tokens == 3 && seen.n == 3 && r.finish == QVL_FINISH_CANCELLED && r.n_top == 0);
    if (r.n_tokens == 3) {
        int32_t id = r.tokens[0];
        CHECKF(fabs(r.logprobs[0] - (first[id] - lse)) < 1e-5, "sampled first token %d: %.8g vs "
               "%.8g", id, r.logprobs[0], first[id] - lse);
        CHECK(seen.top0[0] == -1);
    }
    qvl_gen_result_free(&r);

    /* without logprobs the callback still sees every token, and the result has no arrays */
    qvl_ctx_reset(c);
    CHECK(qvl_ctx_eval(c, ids, n, &img, 1) == QVL_OK);
    gp = qvl_gen_default_params();
    gp.temperature = 0;
    gp.max_new_tokens = 4;
    seen = (lp_seen){.index_ok = true};
    gp.token_cb = on_token_lp;
    gp.token_user = &seen;
    CHECK(qvl_ctx_generate(c, &gp, NULL, NULL, &r) == QVL_OK);
    CHECK(r.n_tokens == 4 && seen.n == 4 && seen.index_ok && !r.logprobs && seen.lp[0] == 0 &&
          !memcmp(seen.ids, gen_ref, 4 * sizeof *gen_ref));
    qvl_gen_result_free(&r);

    /* a long run: the log-probability arrays grow past their first 256 rows */
    qvl_ctx_reset(c);
    CHECK(qvl_ctx_eval(c, ids, n, &img, 1) == QVL_OK);
    gp = qvl_gen_default_params();
    gp.temperature = 0;
    gp.ignore_eos = 1;
    gp.max_new_tokens = 300;
    gp.logprobs = 1;
    gp.top_logprobs = 3;
    CHECK(qvl_ctx_generate(c, &gp, NULL, NULL, &r) == QVL_OK);
    bool long_ok = r.n_tokens == 300 && r.logprobs && r.n_top == 3;
    for (size_t i = 0; long_ok && i < r.n_tokens; i++)
        long_ok = r.top_ids[i * 3] == r.tokens[i] && r.logprobs[i] == r.top_logprobs[i * 3] &&
                  r.logprobs[i] <= 0 && r.top_logprobs[i * 3 + 2] <= r.top_logprobs[i * 3 + 1];
    CHECK(long_ok);
    qvl_gen_result_free(&r);

    /* logit bias: -100 on the golden first token gives the runner-up; +100 on a token makes
     * every step choose it; the reported log-probabilities stay the raw ones */
    int32_t bid = gen_ref[0];
    float bval = -100;
    gp = qvl_gen_default_params();
    gp.temperature = 0;
    gp.repetition_penalty = 1;
    gp.max_new_tokens = 3;
    gp.logprobs = 1;
    gp.bias_ids = &bid;
    gp.bias_values = &bval;
    gp.n_bias = 1;
    qvl_ctx_reset(c);
    CHECK(qvl_ctx_eval(c, ids, n, &img, 1) == QVL_OK);
    CHECK(qvl_ctx_generate(c, &gp, NULL, NULL, &r) == QVL_OK);
    CHECK(r.n_tokens == 3 && r.tokens[0] == 35738 &&
          fabs(r.logprobs[0] - (first[35738] - lse)) < 1e-5);
    qvl_gen_result_free(&r);
    bid = 19127;
    bval = 100;
    qvl_ctx_reset(c);
    CHECK(qvl_ctx_eval(c, ids, n, &img, 1) == QVL_OK);
    CHECK(qvl_ctx_generate(c, &gp, NULL, NULL, &r) == QVL_OK);
    CHECK(r.n_tokens == 3 && r.tokens[0] == bid && r.tokens[1] == bid && r.tokens[2] == bid &&
          fabs(r.logprobs[0] - (first[bid] - lse)) < 1e-5);
    qvl_gen_result_free(&r);
    bid = nv;
    CHECK(qvl_ctx_generate(c, &gp, NULL, NULL, &r) == QVL_E_INVAL);
    bid = 5;
    bval = NAN;
    CHECK(qvl_ctx_generate(c, &gp, NULL, NULL, &r) == QVL_E_INVAL);
    gp.n_bias = -1;
    CHECK(qvl_ctx_generate(c, &gp, NULL, NULL, &r) == QVL_E_INVAL);
    free(first);
    qvl_ctx_free(c);
    free(ids);
    free(gen_ref);
out:
    qvl_image_free(img);
    qvl_free(glog);
    cJSON_Delete(g);
}

int main(void) {
    char err[1024];
    /* QVL_CPU (ctest runs this binary once per kernel path): the table asked for is the one
     * in use, when this CPU has it */
    const char *want = getenv("QVL_CPU");
    if (want && *want && qvl_kern_by_name(want))
        CHECKF(!strcmp(qvl_kern_get()->name, want), "QVL_CPU=%s but the %s kernels run", want,
               qvl_kern_get()->name);
    printf("kernel path: %s\n", qvl_kern_get()->name);
    qvl_status s = qvl_model_load(shared_path("fixtures/tiny-qwen3vl/model"), NULL, &M, err,
                                  sizeof err);
    CHECKF(s == QVL_OK, "load: %s", err);
    if (s != QVL_OK)
        CHECK_DONE();
    run_case("tiny_1img_png");
    run_case("tiny_2img");
    run_case("tiny_system_jpeg");
    run_case("tiny_text_only");
    full_tensors();
    multi_turn();
    video_case();
    media_order_case();
    kv_warm_case();
    vit_reuse_case();
    resample_case();
    logprobs_case();
    score_case();
    qvl_model_free(M);
    CHECK_DONE();
}
