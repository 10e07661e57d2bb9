/* test_chat.c - Qwen3-VL chat template rendering and pad expansion: the four golden prompts
 * (rendered text and input_ids after expansion), hand-derived multi-turn, tool and vision-id
 * strings, a late system message, bad roles, and expansion errors. */
#include "chat.h"
#include "check.h"
#include "tok.h"

#include <cjson/cJSON.h>
#include <stdint.h>

static bool render_eq(const qvl_chat_msg *m, size_t n, bool gen, bool vid, const char *want) {
    char *out = NULL;
    char err[200];
    qvl_status st = qvl_chat_render(m, n, gen, vid, &out, err, sizeof err);
    bool ok = st == QVL_OK && out && strcmp(out, want) == 0;
    if (!ok)
        fprintf(stderr, "render: status %d\n  got:  %s\n  want: %s\n", (int)st,
                out ? out : err, want);
    qvl_free(out);
    return ok;
}

static void test_golden(const qvl_tok *tok, const char *name) {
    char path[256];
    snprintf(path, sizeof path, "fixtures/tiny-qwen3vl/golden/%s.json", name);
    char *buf = check_read_file(shared_path(path), NULL);
    CHECKF(buf != NULL, "%s", path);
    if (!buf)
        return;
    cJSON *root = cJSON_Parse(buf);
    free(buf);
    const cJSON *inputs = cJSON_GetObjectItemCaseSensitive(root, "inputs");
    const cJSON *images = cJSON_GetObjectItemCaseSensitive(inputs, "images");
    const cJSON *prompt = cJSON_GetObjectItemCaseSensitive(inputs, "prompt");
    const cJSON *system = cJSON_GetObjectItemCaseSensitive(inputs, "system");
    const cJSON *rendered = cJSON_GetObjectItemCaseSensitive(root, "rendered_prompt");
    const cJSON *want_ids = cJSON_GetObjectItemCaseSensitive(root, "input_ids");
    const cJSON *img_info = cJSON_GetObjectItemCaseSensitive(root, "images");
    CHECK(cJSON_IsArray(images) && cJSON_IsString(prompt) && cJSON_IsString(rendered) &&
          cJSON_IsArray(want_ids));
    if (!cJSON_IsArray(images) || !cJSON_IsString(prompt) || !cJSON_IsString(rendered) ||
        !cJSON_IsArray(want_ids)) {
        cJSON_Delete(root);
        return;
    }
    /* the golden template: optional system turn, then one user turn: images, then the text */
    size_t n_img = (size_t)cJSON_GetArraySize(images);
    qvl_chat_part parts[8];
    size_t np = 0;
    for (size_t i = 0; i < n_img && np < 7; i++)
        parts[np++] = (qvl_chat_part){QVL_PART_IMAGE, NULL};
    parts[np++] = (qvl_chat_part){QVL_PART_TEXT, prompt->valuestring};
    qvl_chat_msg msgs[2];
    size_t nm = 0;
    if (cJSON_IsString(system))
        msgs[nm++] = (qvl_chat_msg){"system", system->valuestring, NULL, 0};
    msgs[nm++] = (qvl_chat_msg){"user", NULL, parts, np};
    char *out = NULL;
    char err[256];
    qvl_status st = qvl_chat_render(msgs, nm, true, false, &out, err, sizeof err);
    CHECKF(st == QVL_OK && strcmp(out, rendered->valuestring) == 0, "%s rendered prompt", name);

    int32_t *ids = NULL;
    size_t n = 0;
    st = qvl_tok_encode(tok, out, strlen(out), &ids, &n, err, sizeof err);
    CHECKF(st == QVL_OK, "%s encode: %s", name, err);
    size_t counts[8];
    size_t nc = 0;
    for (const cJSON *e = cJSON_IsArray(img_info) ? img_info->child : NULL; e && nc < 8;
         e = e->next) {
        const cJSON *k = cJSON_GetObjectItemCaseSensitive(e, "n_image_tokens");
        counts[nc++] = cJSON_IsNumber(k) ? (size_t)k->valuedouble : 0;
    }
    CHECK(nc == n_img);
    int32_t *full = NULL;
    size_t nf = 0;
    st = qvl_chat_expand_pads(ids, n, qvl_tok_id(tok, "<|image_pad|>"), counts, nc, &full, &nf,
                              err, sizeof err);
    CHECKF(st == QVL_OK, "%s expand: %s", name, err);
    size_t nw = (size_t)cJSON_GetArraySize(want_ids);
    bool same = st == QVL_OK && nf == nw;
    size_t i = 0;
    for (const cJSON *e = want_ids->child; same && e; e = e->next, i++)
        same = full[i] == (int32_t)e->valuedouble;
    CHECKF(same, "%s input_ids (%zu ids, want %zu)", name, nf, nw);
    qvl_free(full);
    qvl_free(ids);
    qvl_free(out);
    cJSON_Delete(root);
}

static void test_render(void) {
    /* multi-turn; expected string derived by hand from chat_template.json */
    qvl_chat_part u2[] = {{QVL_PART_IMAGE, NULL}, {QVL_PART_TEXT, "And this one?"}};
    qvl_chat_msg conv[] = {
        {"system", "You are helpful.", NULL, 0},
        {"user", "Hi there", NULL, 0},
        {"assistant", "Hello! How can I help?", NULL, 0},
        {"user", NULL, u2, 2},
    };
    CHECK(render_eq(conv, 4, true, false,
                    "<|im_start|>system\nYou are helpful.<|im_end|>\n"
                    "<|im_start|>user\nHi there<|im_end|>\n"
                    "<|im_start|>assistant\nHello! How can I help?<|im_end|>\n"
                    "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>"
                    "And this one?<|im_end|>\n"
                    "<|im_start|>assistant\n"));
    CHECK(render_eq(conv, 4, false, false,
                    "<|im_start|>system\nYou are helpful.<|im_end|>\n"
                    "<|im_start|>user\nHi there<|im_end|>\n"
                    "<|im_start|>assistant\nHello! How can I help?<|im_end|>\n"
                    "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>"
                    "And this one?<|im_end|>\n"));

    /* add_vision_id numbers images and videos separately across turns */
    qvl_chat_part a[] = {{QVL_PART_IMAGE, NULL}, {QVL_PART_VIDEO, NULL}, {QVL_PART_TEXT, "x"}};
    qvl_chat_part b[] = {{QVL_PART_TEXT, "y"}, {QVL_PART_IMAGE, NULL}};
    qvl_chat_msg vis[] = {{"user", NULL, a, 3}, {"user", NULL, b, 2}};
    CHECK(render_eq(vis, 2, false, true,
                    "<|im_start|>user\nPicture 1: <|vision_start|><|image_pad|><|vision_end|>"
                    "Video 1: <|vision_start|><|video_pad|><|vision_end|>x<|im_end|>\n"
                    "<|im_start|>user\nyPicture 2: <|vision_start|><|image_pad|><|vision_end|>"
                    "<|im_end|>\n"));
    CHECK(render_eq(vis, 2, false, false,
                    "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>"
                    "<|vision_start|><|video_pad|><|vision_end|>x<|im_end|>\n"
                    "<|im_start|>user\ny<|vision_start|><|image_pad|><|vision_end|><|im_end|>\n"));

    /* system and assistant keep only text parts; a later system message is dropped */
    qvl_chat_part sp[] = {{QVL_PART_TEXT, "A"}, {QVL_PART_IMAGE, NULL}, {QVL_PART_TEXT, "B"}};
    qvl_chat_msg sys[] = {{"system", NULL, sp, 3},
                          {"user", "u", NULL, 0},
                          {"system", "late", NULL, 0},
                          {"assistant", NULL, sp, 3}};
    CHECK(render_eq(sys, 4, false, false,
                    "<|im_start|>system\nAB<|im_end|>\n<|im_start|>user\nu<|im_end|>\n"
                    "<|im_start|>assistant\nAB<|im_end|>\n"));

    /* tool results: consecutive ones share one user turn */
    qvl_chat_msg tools[] = {{"user", "q", NULL, 0},
                            {"assistant", "a", NULL, 0},
                            {"tool", "r1", NULL, 0},
                            {"tool", "r2", NULL, 0},
                            {"user", "next", NULL, 0},
                            {"tool", "r3", NULL, 0}};
    CHECK(render_eq(tools, 6, true, false,
                    "<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\na<|im_end|>\n"
                    "<|im_start|>user\n<tool_response>\nr1\n</tool_response>\n<tool_response>\n"
                    "r2\n</tool_response><|im_end|>\n<|im_start|>user\nnext<|im_end|>\n"
                    "<|im_start|>user\n<tool_response>\nr3\n</tool_response><|im_end|>\n"
                    "<|im_start|>assistant\n"));
    CHECK(render_eq(tools + 2, 1, false, false,
                    "<|im_start|>user\n<tool_response>\nr1\n</tool_response><|im_end|>\n"));

    /* empty conversation and empty content */
    CHECK(render_eq(NULL, 0, true, false, "<|im_start|>assistant\n"));
    CHECK(render_eq(NULL, 0, false, false, ""));
    qvl_chat_msg empty[] = {{"user", NULL, NULL, 0}};
    CHECK(render_eq(empty, 1, false, false, "<|im_start|>user\n<|im_end|>\n"));

    /* errors */
    char *out = (char *)1;
    char err[200] = "";
    qvl_chat_msg bad[] = {{"user", "x", NULL, 0}, {"narrator", "y", NULL, 0}};
    CHECK(qvl_chat_render(bad, 2, true, false, &out, err, sizeof err) == QVL_E_INVAL && !out &&
          strstr(err, "narrator"));
    qvl_chat_msg nullrole[] = {{NULL, "y", NULL, 0}};
    CHECK(qvl_chat_render(nullrole, 1, true, false, &out, err, sizeof err) == QVL_E_INVAL);
    qvl_chat_part nt[] = {{QVL_PART_TEXT, NULL}};
    qvl_chat_msg nulltext[] = {{"user", NULL, nt, 1}};
    CHECK(qvl_chat_render(nulltext, 1, true, false, &out, err, sizeof err) == QVL_E_INVAL);

    /* allocation failure */
    qvl_alloc_fail_at(0, 1);
    qvl_status st = qvl_chat_render(conv, 4, true, false, &out, err, sizeof err);
    qvl_alloc_fail_at(-1, 0);
    CHECK(st == QVL_E_NOMEM && out == NULL);
}

static void test_expand(void) {
    const int32_t P = 151655;
    const int32_t ids[] = {1, P, 2, P, 3};
    size_t counts[] = {3, 0};
    int32_t *out;
    size_t n;
    char err[200];
    CHECK(qvl_chat_expand_pads(ids, 5, P, counts, 2, &out, &n, err, sizeof err) == QVL_OK);
    const int32_t want[] = {1, P, P, P, 2, 3};
    CHECK(n == 6 && memcmp(out, want, sizeof want) == 0);
    qvl_free(out);
    /* wrong number of counts: both numbers in the message */
    err[0] = 0;
    out = (int32_t *)1;
    CHECK(qvl_chat_expand_pads(ids, 5, P, counts, 1, &out, &n, err, sizeof err) == QVL_E_INVAL &&
          out == NULL && n == 0);
    CHECKF(strstr(err, "has 2 pad") && strstr(err, "but 1 counts"), "message: %s", err);
    CHECK(qvl_chat_expand_pads(ids, 5, 999, counts, 2, &out, &n, err, sizeof err) ==
          QVL_E_INVAL);
    /* no pads, no counts: a copy */
    CHECK(qvl_chat_expand_pads(ids, 5, 999, NULL, 0, &out, &n, err, sizeof err) == QVL_OK &&
          n == 5 && memcmp(out, ids, sizeof ids) == 0);
    qvl_free(out);
    /* overflowing sizes */
    size_t huge[] = {SIZE_MAX - 2, 10};
    CHECK(qvl_chat_expand_pads(ids, 5, P, huge, 2, &out, &n, err, sizeof err) == QVL_E_LIMIT &&
          out == NULL);
    size_t big[] = {SIZE_MAX / 4, 1};
    CHECK(qvl_chat_expand_pads(ids, 5, P, big, 2, &out, &n, err, sizeof err) == QVL_E_LIMIT);
}

int main(void) {
    test_render();
    test_expand();
    qvl_tok *tok = NULL;
    char err[256];
    qvl_status st = qvl_tok_load(shared_path("fixtures/tiny-qwen3vl/model/tokenizer.json"), &tok,
                                 err, sizeof err);
    CHECKF(st == QVL_OK, "tokenizer: %s", err);
    if (tok) {
        static const char *cases[] = {"tiny_1img_png", "tiny_2img", "tiny_system_jpeg",
                                      "tiny_text_only"};
        for (int i = 0; i < 4; i++)
            test_golden(tok, cases[i]);
    }
    qvl_tok_free(tok);
    CHECK_DONE();
}
