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
        msgs[nm++] = (qvl_chat_msg){"system", system->valuestring, NULL, 0, NULL, 0};
    msgs[nm++] = (qvl_chat_msg){"user", NULL, parts, np, NULL, 0};
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
        {"system", "You are helpful.", NULL, 0, NULL, 0},
        {"user", "Hi there", NULL, 0, NULL, 0},
        {"assistant", "Hello! How can I help?", NULL, 0, NULL, 0},
        {"user", NULL, u2, 2, NULL, 0},
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
    qvl_chat_msg vis[] = {{"user", NULL, a, 3, NULL, 0}, {"user", NULL, b, 2, NULL, 0}};
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
    qvl_chat_msg sys[] = {{"system", NULL, sp, 3, NULL, 0},
                          {"user", "u", NULL, 0, NULL, 0},
                          {"system", "late", NULL, 0, NULL, 0},
                          {"assistant", NULL, sp, 3, NULL, 0}};
    CHECK(render_eq(sys, 4, false, false,
                    "<|im_start|>system\nAB<|im_end|>\n<|im_start|>user\nu<|im_end|>\n"
                    "<|im_start|>assistant\nAB<|im_end|>\n"));

    /* tool results: consecutive ones share one user turn */
    qvl_chat_msg tools[] = {{"user", "q", NULL, 0, NULL, 0},
                            {"assistant", "a", NULL, 0, NULL, 0},
                            {"tool", "r1", NULL, 0, NULL, 0},
                            {"tool", "r2", NULL, 0, NULL, 0},
                            {"user", "next", NULL, 0, NULL, 0},
                            {"tool", "r3", NULL, 0, NULL, 0}};
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
    qvl_chat_msg empty[] = {{"user", NULL, NULL, 0, NULL, 0}};
    CHECK(render_eq(empty, 1, false, false, "<|im_start|>user\n<|im_end|>\n"));

    /* errors */
    char *out = (char *)1;
    char err[200] = "";
    qvl_chat_msg bad[] = {{"user", "x", NULL, 0, NULL, 0}, {"narrator", "y", NULL, 0, NULL, 0}};
    CHECK(qvl_chat_render(bad, 2, true, false, &out, err, sizeof err) == QVL_E_INVAL && !out &&
          strstr(err, "narrator"));
    qvl_chat_msg nullrole[] = {{NULL, "y", NULL, 0, NULL, 0}};
    CHECK(qvl_chat_render(nullrole, 1, true, false, &out, err, sizeof err) == QVL_E_INVAL);
    qvl_chat_part nt[] = {{QVL_PART_TEXT, NULL}};
    qvl_chat_msg nulltext[] = {{"user", NULL, nt, 1, NULL, 0}};
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

/* Tools and tool calls, against the chat template as rendered by an independent Jinja
 * implementation (@huggingface/jinja 0.5.11 on the fixture's chat_template.json): the tools'
 * `tojson` form (Python separators, escapes, non-ASCII kept, nested values), the system text
 * before the tools, assistant tool calls after empty and non-empty content, arguments given as
 * a JSON string and as an object, consecutive tool messages in one user turn. */
static void test_tools(void) {
    static const char *tools1[] = {
        "{\"type\":\"function\",\"function\":{\"name\":\"get_weather\",\"description\":\"Weather «now» in a city\\n\\t\\\"quoted\\\" back\\\\slash \\u0001\",\"parameters\":{\"type\":\"object\",\"properties\":{\"city\":{\"type\":\"string\"},\"days\":{\"type\":\"integer\",\"minimum\":1,\"maximum\":7.5,\"step\":0.0001,\"list\":[true,false,null,[],{}]}},\"required\":[\"city\"]}}}"};
    static const char *want1 =
        "<|im_start|>system\n"
        "Sys.\n"
        "\n"
        "# Tools\n"
        "\n"
        "You may call one or more functions to assist with the user query.\n"
        "\n"
        "You are provided with function signatures within <tools></tools> XML tags:\n"
        "<tools>\n"
        "{\"type\": \"function\", \"function\": {\"name\": \"get_weather\", \"description\": \"Weather «now» in a city\\n\\t\\\"quoted\\\" back\\\\slash \\u0001\", \"parameters\": {\"type\": \"object\", \"properties\": {\"city\": {\"type\": \"string\"}, \"days\": {\"type\": \"integer\", \"minimum\": 1, \"maximum\": 7.5, \"step\": 0.0001, \"list\": [true, false, null, [], {}]}}, \"required\": [\"city\"]}}}\n"
        "</tools>\n"
        "\n"
        "For each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n"
        "<tool_call>\n"
        "{\"name\": <function-name>, \"arguments\": <args-json-object>}\n"
        "</tool_call><|im_end|>\n"
        "<|im_start|>user\n"
        "What is the weather in Paris?<|im_end|>\n"
        "<|im_start|>assistant\n"
        "<tool_call>\n"
        "{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n"
        "</tool_call><|im_end|>\n"
        "<|im_start|>user\n"
        "<tool_response>\n"
        "{\"temp\": 21.5}\n"
        "</tool_response><|im_end|>\n"
        "<|im_start|>assistant\n";
    const qvl_tool_call c1[] = {{"get_weather", "{\"city\": \"Paris\"}", 0}};
    const qvl_chat_msg m1[] = {{"system", "Sys.", NULL, 0, NULL, 0},
                               {"user", "What is the weather in Paris?", NULL, 0, NULL, 0},
                               {"assistant", "", NULL, 0, c1, 1},
                               {"tool", "{\"temp\": 21.5}", NULL, 0, NULL, 0}};
    static const char *tools2[] = {"{\"type\":\"function\",\"function\":{\"name\":\"a\"}}",
                                   "{\"type\":\"function\",\"function\":{\"name\":\"b\",\"parameters\":{}}}"};
    static const char *want2 =
        "<|im_start|>system\n"
        "# Tools\n"
        "\n"
        "You may call one or more functions to assist with the user query.\n"
        "\n"
        "You are provided with function signatures within <tools></tools> XML tags:\n"
        "<tools>\n"
        "{\"type\": \"function\", \"function\": {\"name\": \"a\"}}\n"
        "{\"type\": \"function\", \"function\": {\"name\": \"b\", \"parameters\": {}}}\n"
        "</tools>\n"
        "\n"
        "For each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n"
        "<tool_call>\n"
        "{\"name\": <function-name>, \"arguments\": <args-json-object>}\n"
        "</tool_call><|im_end|>\n"
        "<|im_start|>user\n"
        "Hi<|im_end|>\n"
        "<|im_start|>assistant\n"
        "Let me check.\n"
        "<tool_call>\n"
        "{\"name\": \"a\", \"arguments\": {\"x\": 1, \"y\": [1, 2], \"z\": \"é\"}}\n"
        "</tool_call>\n"
        "<tool_call>\n"
        "{\"name\": \"b\", \"arguments\": {}}\n"
        "</tool_call><|im_end|>\n"
        "<|im_start|>user\n"
        "<tool_response>\n"
        "r1\n"
        "</tool_response>\n"
        "<tool_response>\n"
        "r2\n"
        "</tool_response><|im_end|>\n"
        "<|im_start|>assistant\n";
    const qvl_tool_call c2[] = {{"a", "{\"x\":1,\"y\":[1,2],\"z\":\"\xc3\xa9\"}", 1}, {"b", "{}", 0}};
    const qvl_chat_msg m2[] = {{"user", "Hi", NULL, 0, NULL, 0},
                               {"assistant", "Let me check.", NULL, 0, c2, 2},
                               {"tool", "r1", NULL, 0, NULL, 0},
                               {"tool", "r2", NULL, 0, NULL, 0}};
    char err[256];
    char *out = NULL;
    CHECK(qvl_chat_render_tools(m1, 4, tools1, 1, 1, 0, &out, err, sizeof err) == QVL_OK);
    CHECKF(out && !strcmp(out, want1), "tools case 1:\n%s", out ? out : err);
    qvl_free(out);
    out = NULL;
    CHECK(qvl_chat_render_tools(m2, 4, tools2, 2, 1, 0, &out, err, sizeof err) == QVL_OK);
    CHECKF(out && !strcmp(out, want2), "tools case 2:\n%s", out ? out : err);
    qvl_free(out);
    /* no tools: the plain system turn, tool calls still rendered */
    out = NULL;
    CHECK(qvl_chat_render(m1, 4, 1, 0, &out, err, sizeof err) == QVL_OK);
    CHECK(out && !strncmp(out, "<|im_start|>system\nSys.<|im_end|>\n", 33) &&
          strstr(out, "<|im_start|>assistant\n<tool_call>\n{\"name\": \"get_weather\""));
    qvl_free(out);
    /* errors: invalid tool JSON, invalid object arguments, calls on a user message */
    static const char *bad_tool[] = {"{\"type\": "};
    out = NULL;
    CHECK(qvl_chat_render_tools(m1, 4, bad_tool, 1, 1, 0, &out, err, sizeof err) == QVL_E_INVAL &&
          !out && strstr(err, "tool 0"));
    const qvl_tool_call cbad[] = {{"a", "{oops", 1}};
    const qvl_chat_msg m3[] = {{"assistant", NULL, NULL, 0, cbad, 1}};
    CHECK(qvl_chat_render(m3, 1, 1, 0, &out, err, sizeof err) == QVL_E_INVAL && !out);
    const qvl_chat_msg m4[] = {{"user", "x", NULL, 0, c1, 1}};
    CHECK(qvl_chat_render(m4, 1, 1, 0, &out, err, sizeof err) == QVL_E_INVAL && !out);
    const qvl_tool_call cnull[] = {{NULL, "{}", 0}};
    const qvl_chat_msg m5[] = {{"assistant", NULL, NULL, 0, cnull, 1}};
    CHECK(qvl_chat_render(m5, 1, 1, 0, &out, err, sizeof err) == QVL_E_INVAL && !out);
}

/* json.dumps of numbers as Python writes them (not covered by the Jinja case: JavaScript
 * formats floats differently). The second case is the documented deviation: the parsed value
 * has lost its text, so an integral float (1.0, 1e15, -0.0) is written as an int and an int
 * beyond 2^53 is rounded (Python: [1.0, 1000000000000000.0, -0.0, 9007199254740993]). */
static void test_py_numbers(void) {
    static const struct {
        const char *json, *want;
    } cases[] = {
        {"[1e16, -2.5e-7, 1e-5, 0.0001, 123456789.5, 1.5e300, 0.1, 5e-324, 7, -7, 2.5]",
         "[1e+16, -2.5e-07, 1e-05, 0.0001, 123456789.5, 1.5e+300, 0.1, 5e-324, 7, -7, 2.5]"},
        {"[1.0, 1e15, -0.0, 9007199254740993]", "[1, 1000000000000000, 0, 9007199254740992]"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const char *tools[] = {cases[i].json};
        const qvl_chat_msg m[] = {{"user", "x", NULL, 0, NULL, 0}};
        char *out = NULL, err[128];
        CHECK(qvl_chat_render_tools(m, 1, tools, 1, 0, 0, &out, err, sizeof err) == QVL_OK);
        CHECKF(out && strstr(out, cases[i].want), "py numbers %zu:\n%s", i, out ? out : err);
        qvl_free(out);
    }
}

int main(void) {
    test_render();
    test_tools();
    test_py_numbers();
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
