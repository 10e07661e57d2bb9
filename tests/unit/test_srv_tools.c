/* test_srv_tools.c - the server's tool-call handling without the network: tools and tool_choice
 * in a request (srv_chat_prepare on the tiny fixture model: accepted forms, refused ones, the
 * prompt against qvl_prompt_build_tools), and the parsing of <tool_call> blocks out of
 * generated text (srv_tool_calls, srv_tool_safe_len) for the response and for streaming.
 *
 * The server is not part of libqvl, so its request-path sources are compiled in (as the
 * fuzz_chatreq target does). */
#include "../../server/routes.c"
#include "../../server/slots.c"
#include "../../server/util.c"
#include "../../server/fetch.c" /* without QVL_HAVE_CURL: downloads refused */

#include "check.h"

static srv_state g_S;
static qvl_model *g_model;

static int prepare(const char *body, srv_job **job, char *msg, size_t ml) {
    srv_chat ch;
    const char *code = NULL;
    *job = NULL;
    return srv_chat_prepare(&g_S, body, strlen(body), &ch, job, msg, ml, &code);
}

static int prepare_text(const char *body, srv_job **job, char *msg, size_t ml) {
    srv_chat ch;
    const char *code = NULL;
    *job = NULL;
    return srv_text_prepare(&g_S, body, strlen(body), &ch, job, msg, ml, &code);
}

/* Each body is refused with 400, a message and no job. */
static void check_refused(int (*prep)(const char *, srv_job **, char *, size_t),
                          const char *const *bad, size_t n, const char *what) {
    char msg[512];
    for (size_t i = 0; i < n; i++) {
        srv_job *j = NULL;
        msg[0] = 0;
        int st = prep(bad[i], &j, msg, sizeof msg);
        CHECKF(st == 400 && !j && msg[0], "%s %zu: %d %s", what, i, st, msg);
        srv_job_release(NULL, j);
    }
}

static void test_parse(void) {
    size_t cn = 0;
    const char *t1 = "Let me look.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": "
                     "{\"city\": \"Paris\", \"days\": [1, 2]}}\n</tool_call>\n<tool_call>\n"
                     "{\"name\": \"b\", \"arguments\": {}}\n</tool_call>";
    cJSON *c = srv_tool_calls(t1, strlen(t1), false, &cn);
    CHECK(c && cJSON_GetArraySize(c) == 2 && cn == strlen("Let me look.\n"));
    if (c) {
        const cJSON *a = cJSON_GetArrayItem(c, 0);
        const cJSON *f = cJSON_GetObjectItemCaseSensitive(a, "function");
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(a, "id");
        CHECK(cJSON_IsString(id) && !strncmp(id->valuestring, "call_", 5) &&
              strlen(id->valuestring) == 29);
        CHECK(!strcmp(cJSON_GetObjectItemCaseSensitive(a, "type")->valuestring, "function"));
        CHECK(!strcmp(cJSON_GetObjectItemCaseSensitive(f, "name")->valuestring, "get_weather"));
        CHECK(!strcmp(cJSON_GetObjectItemCaseSensitive(f, "arguments")->valuestring,
                      "{\"city\":\"Paris\",\"days\":[1,2]}"));
        CHECK(!cJSON_GetObjectItemCaseSensitive(a, "index"));
        const cJSON *b = cJSON_GetArrayItem(c, 1);
        CHECK(!strcmp(cJSON_GetObjectItemCaseSensitive(
                          cJSON_GetObjectItemCaseSensitive(b, "function"), "arguments")
                          ->valuestring,
                      "{}"));
    }
    cJSON_Delete(c);
    /* stream deltas carry an index */
    c = srv_tool_calls(t1, strlen(t1), true, &cn);
    CHECK(c && cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(c, 1), "index")->valueint == 1);
    cJSON_Delete(c);
    /* not calls: no block, an unterminated block, a block that is not a named object */
    const char *no[] = {"plain text", "<tool_call>\n{\"name\": \"a\", \"arguments\": {}}",
                        "<tool_call>\nnot json\n</tool_call>",
                        "<tool_call>\n{\"arguments\": {}}\n</tool_call>", "<tool_call></tool_call>"};
    for (size_t i = 0; i < sizeof no / sizeof no[0]; i++) {
        c = srv_tool_calls(no[i], strlen(no[i]), false, &cn);
        CHECKF(c == NULL, "not a call: %s", no[i]);
        cJSON_Delete(c);
    }
    /* a good block after a bad one still counts; content ends at the first block */
    const char *t2 = "x<tool_call>bad</tool_call><tool_call>{\"name\":\"n\",\"arguments\":\"{}\"}"
                     "</tool_call>";
    c = srv_tool_calls(t2, strlen(t2), false, &cn);
    CHECK(c && cJSON_GetArraySize(c) == 1 && cn == 1);
    cJSON_Delete(c);
    /* a length that stops inside the text: only what precedes the cut counts */
    c = srv_tool_calls(t1, 30, false, &cn);
    CHECK(c == NULL);
    cJSON_Delete(c);
    /* streaming: text before the marker, never a tail that may begin it */
    CHECK(srv_tool_safe_len("abc", 3) == 3);
    CHECK(srv_tool_safe_len("abc<tool", 8) == 3);
    CHECK(srv_tool_safe_len("abc<", 4) == 3);
    CHECK(srv_tool_safe_len("abc<b>", 6) == 6);
    CHECK(srv_tool_safe_len("ab<tool_call>\n{", 15) == 2);
    CHECK(srv_tool_safe_len("<tool_call>", 11) == 0);
}

/* The non-streamed response: calls in message.tool_calls, the text before them (trimmed) as
 * content or null, finish_reason tool_calls after a stop; without tools the same text is all
 * content. */
static void test_response(void) {
    srv_job j;
    memset(&j, 0, sizeof j);
    char text[] = "Checking.\n<tool_call>\n{\"name\": \"f\", \"arguments\": {\"a\": 1}}\n"
                  "</tool_call>";
    j.text = text;
    j.text_n = strlen(text);
    j.finish = QVL_FINISH_STOP;
    j.status = QVL_OK;
    for (int tools = 0; tools < 2; tools++) {
        j.tools = tools;
        char *js = srv_completion_json(&g_S, "chatcmpl-x", 1, &j);
        cJSON *r = cJSON_Parse(js);
        const cJSON *c = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(r, "choices"), 0);
        const cJSON *m = cJSON_GetObjectItemCaseSensitive(c, "message");
        const cJSON *content = cJSON_GetObjectItemCaseSensitive(m, "content");
        const cJSON *calls = cJSON_GetObjectItemCaseSensitive(m, "tool_calls");
        const char *fin = cJSON_GetObjectItemCaseSensitive(c, "finish_reason")->valuestring;
        if (tools) {
            CHECK(cJSON_IsString(content) && !strcmp(content->valuestring, "Checking."));
            CHECK(cJSON_GetArraySize(calls) == 1 && !strcmp(fin, "tool_calls"));
            const cJSON *f = cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(calls, 0),
                                                              "function");
            CHECK(!strcmp(cJSON_GetObjectItemCaseSensitive(f, "arguments")->valuestring,
                          "{\"a\":1}"));
        } else {
            CHECK(cJSON_IsString(content) && !strcmp(content->valuestring, text) && !calls &&
                  !strcmp(fin, "stop"));
        }
        cJSON_Delete(r);
        free(js);
    }
    /* only a call: content null; the length ran out after it: finish stays "length" */
    char only[] = "<tool_call>{\"name\": \"f\", \"arguments\": {}}</tool_call>";
    j.text = only;
    j.text_n = strlen(only);
    j.tools = true;
    j.finish = QVL_FINISH_LENGTH;
    char *js = srv_completion_json(&g_S, "chatcmpl-x", 1, &j);
    cJSON *r = cJSON_Parse(js);
    const cJSON *c = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(r, "choices"), 0);
    CHECK(cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(
        cJSON_GetObjectItemCaseSensitive(c, "message"), "content")));
    CHECK(!strcmp(cJSON_GetObjectItemCaseSensitive(c, "finish_reason")->valuestring, "length"));
    cJSON_Delete(r);
    free(js);
}

/* What a stream sends while the job runs and when it is done. */
static void test_stream(void) {
    srv_job j;
    memset(&j, 0, sizeof j);
    char text[] = "Checking.\n<tool_call>\n{\"name\": \"f\", \"arguments\": {}}\n</tool_call>";
    j.text = text;
    j.status = QVL_OK;
    cJSON *calls = NULL;
    /* without tools: everything, always */
    j.text_n = strlen(text);
    CHECK(srv_stream_avail(&j, 0, false, &calls) == j.text_n && !calls);
    j.tools = true;
    j.text_n = 12; /* "Checking.\n<t" */
    CHECK(srv_stream_avail(&j, 0, false, &calls) == 10 && !calls);
    j.text_n = strlen(text);
    CHECK(srv_stream_avail(&j, 0, false, &calls) == 10 && !calls);
    CHECK(srv_stream_avail(&j, 0, true, &calls) == 10 && calls && cJSON_GetArraySize(calls) == 1);
    cJSON_Delete(calls);
    /* after 4 bytes went out: the same limits, the text before them not searched again */
    CHECK(srv_stream_avail(&j, 4, false, &calls) == 10 && !calls);
    j.text_n = 12;
    CHECK(srv_stream_avail(&j, 10, false, &calls) == 10 && !calls);
    j.text_n = strlen(text);
    /* done without a well-formed call, or failed: the whole text is content */
    j.text_n = 20;
    CHECK(srv_stream_avail(&j, 0, true, &calls) == 20 && !calls);
    j.text_n = strlen(text);
    j.status = QVL_E_CANCELLED;
    CHECK(srv_stream_avail(&j, 0, true, &calls) == j.text_n && !calls);
}

static void test_requests(void) {
    char msg[512];
    srv_job *j = NULL;
    const char *tools = "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"get_weather\","
                        "\"parameters\":{\"type\":\"object\",\"properties\":{\"city\":{\"type\":"
                        "\"string\"}}}}}]";
    char body[2048];
    /* a conversation with a call and its result; the prompt is the library's */
    snprintf(body, sizeof body,
             "{%s,\"messages\":[{\"role\":\"user\",\"content\":\"Weather in Paris?\"},"
             "{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[{\"id\":\"call_1\","
             "\"type\":\"function\",\"function\":{\"name\":\"get_weather\",\"arguments\":"
             "\"{\\\"city\\\": \\\"Paris\\\"}\"}}]},{\"role\":\"tool\",\"tool_call_id\":"
             "\"call_1\",\"content\":\"21 C\"}]}",
             tools);
    int st = prepare(body, &j, msg, sizeof msg);
    CHECKF(st == 200 && j && j->tools, "tools request: %d %s", st, msg);
    if (j) {
        const char *tj[] = {"{\"type\":\"function\",\"function\":{\"name\":\"get_weather\","
                            "\"parameters\":{\"type\":\"object\",\"properties\":{\"city\":{"
                            "\"type\":\"string\"}}}}}"};
        const qvl_tool_call calls[] = {{"get_weather", "{\"city\": \"Paris\"}", 0}};
        const qvl_chat_msg m[] = {{"user", "Weather in Paris?", NULL, 0, NULL, 0},
                                  {"assistant", NULL, NULL, 0, calls, 1},
                                  {"tool", "21 C", NULL, 0, NULL, 0}};
        int32_t *ids = NULL;
        size_t n = 0;
        CHECK(qvl_prompt_build_tools(g_S.model, m, 3, tj, 1, 1, NULL, 0, NULL, NULL, 0, &ids, &n,
                                     msg, sizeof msg) == QVL_OK);
        CHECK(ids && n == j->n_ids && !memcmp(ids, j->ids, n * sizeof *ids));
        qvl_free(ids);
        srv_job_release(NULL, j);
    }
    /* tool_choice none: the tools stay out of the prompt and the output is not parsed */
    snprintf(body, sizeof body,
             "{%s,\"tool_choice\":\"none\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}",
             tools);
    st = prepare(body, &j, msg, sizeof msg);
    CHECK(st == 200 && j && !j->tools);
    size_t n_none = j ? j->n_ids : 0;
    srv_job_release(NULL, j);
    st = prepare("{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", &j, msg, sizeof msg);
    CHECK(st == 200 && j && !j->tools && j->n_ids == n_none);
    srv_job_release(NULL, j);
    /* forced choices: the answer starts with the call; "required" with "<tool_call>\n", a named
     * function with its name too. The prompt is the "auto" prompt plus that text's tokens, the
     * job's text starts with it, and a completed call parses as the function's */
    snprintf(body, sizeof body, "{%s,\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}",
             tools);
    st = prepare(body, &j, msg, sizeof msg);
    CHECK(st == 200 && j && j->tools && j->text_n == 0);
    size_t n_auto = j ? j->n_ids : 0;
    int32_t *auto_ids = j ? malloc(n_auto * sizeof *auto_ids) : NULL;
    if (auto_ids)
        memcpy(auto_ids, j->ids, n_auto * sizeof *auto_ids);
    srv_job_release(NULL, j);
    const char *forced[2] = {"\"required\"",
                             "{\"type\":\"function\",\"function\":{\"name\":\"get_weather\"}}"};
    const char *prefix[2] = {"<tool_call>\n", "<tool_call>\n{\"name\": \"get_weather\", "
                                              "\"arguments\": "};
    const char *rest[2] = {"{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\"}}\n"
                           "</tool_call>",
                           "{\"city\": \"Oslo\"}}\n</tool_call>"};
    for (int f = 0; f < 2; f++) {
        snprintf(body, sizeof body,
                 "{%s,\"tool_choice\":%s,\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}",
                 tools, forced[f]);
        st = prepare(body, &j, msg, sizeof msg);
        CHECKF(st == 200 && j && j->tools, "forced %d: %d %s", f, st, msg);
        if (!j || st != 200)
            continue;
        int32_t *pi = NULL;
        size_t np = 0;
        CHECK(qvl_tokenize(g_S.model, prefix[f], strlen(prefix[f]), &pi, &np) == QVL_OK);
        CHECK(auto_ids && j->n_ids == n_auto + np && !memcmp(j->ids, auto_ids, n_auto * 4) &&
              !memcmp(j->ids + n_auto, pi, np * 4));
        qvl_free(pi);
        CHECK(j->text_n == strlen(prefix[f]) && !memcmp(j->text, prefix[f], j->text_n));
        /* the stream sends nothing of it as content while the job runs */
        cJSON *calls = NULL;
        CHECK(srv_stream_avail(j, 0, false, &calls) == 0 && !calls);
        size_t rl = strlen(rest[f]);
        char *t = realloc(j->text, j->text_n + rl + 1);
        if (t) {
            memcpy(t + j->text_n, rest[f], rl + 1);
            j->text = t;
            j->text_n += rl;
            j->finish = QVL_FINISH_STOP;
            char *js = srv_completion_json(&g_S, "chatcmpl-x", 1, j);
            cJSON *r = cJSON_Parse(js);
            const cJSON *c = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(r, "choices"), 0);
            const cJSON *m = cJSON_GetObjectItemCaseSensitive(c, "message");
            const cJSON *fn = cJSON_GetObjectItemCaseSensitive(
                cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(m, "tool_calls"), 0),
                "function");
            CHECK(cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(m, "content")));
            CHECK(cJSON_IsString(cJSON_GetObjectItemCaseSensitive(fn, "name")) &&
                  !strcmp(cJSON_GetObjectItemCaseSensitive(fn, "name")->valuestring,
                          "get_weather") &&
                  !strcmp(cJSON_GetObjectItemCaseSensitive(fn, "arguments")->valuestring,
                          "{\"city\":\"Oslo\"}"));
            CHECK(!strcmp(cJSON_GetObjectItemCaseSensitive(c, "finish_reason")->valuestring,
                          "tool_calls"));
            cJSON_Delete(r);
            free(js);
        }
        srv_job_release(NULL, j);
    }
    free(auto_ids);
    /* a named function that is not offered; a forced choice without tools */
    snprintf(body, sizeof body,
             "{%s,\"tool_choice\":{\"type\":\"function\",\"function\":{\"name\":\"nope\"}},"
             "\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}",
             tools);
    msg[0] = 0;
    st = prepare(body, &j, msg, sizeof msg);
    CHECKF(st == 400 && !j && strstr(msg, "nope"), "unknown forced function: %d %s", st, msg);
    /* "developer" is "system" */
    st = prepare("{\"messages\":[{\"role\":\"system\",\"content\":\"Be brief.\"},{\"role\":"
                 "\"user\",\"content\":\"x\"}]}",
                 &j, msg, sizeof msg);
    srv_job *jd = NULL;
    int st2 = prepare("{\"messages\":[{\"role\":\"developer\",\"content\":\"Be brief.\"},"
                      "{\"role\":\"user\",\"content\":\"x\"}]}",
                      &jd, msg, sizeof msg);
    CHECKF(st == 200 && st2 == 200 && j && jd && j->n_ids == jd->n_ids &&
               !memcmp(j->ids, jd->ids, j->n_ids * sizeof *j->ids),
           "developer role: %d %d %s", st, st2, msg);
    srv_job_release(NULL, j);
    srv_job_release(NULL, jd);
    /* refused */
    const char *bad[] = {
        "{\"tools\":{},\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}",
        "{\"tools\":[{\"type\":\"retrieval\"}],\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}",
        "{\"tools\":[{\"type\":\"function\",\"function\":{}}],\"messages\":[{\"role\":\"user\","
        "\"content\":\"x\"}]}",
        "{\"tool_choice\":\"required\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}",
        "{\"tool_choice\":{\"type\":\"function\"},\"messages\":[{\"role\":\"user\",\"content\":"
        "\"x\"}]}",
        "{\"messages\":[{\"role\":\"user\",\"content\":\"x\",\"tool_calls\":[]}]}",
        "{\"messages\":[{\"role\":\"assistant\",\"tool_calls\":{}}]}",
        "{\"messages\":[{\"role\":\"assistant\",\"tool_calls\":[{\"function\":{\"name\":\"a\"}}]}]}",
        "{\"messages\":[{\"role\":\"assistant\",\"tool_calls\":[{\"function\":{\"arguments\":\"{}\""
        "}}]}]}",
        "{\"messages\":[{\"role\":\"tool\"}]}",
        /* features the server lacks are refused rather than ignored */
        "{\"top_logprobs\":3,\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}",
        "{\"logprobs\":true,\"top_logprobs\":21,\"messages\":[{\"role\":\"user\",\"content\":"
        "\"x\"}]}",
        "{\"logprobs\":\"yes\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}",
        "{\"response_format\":{\"type\":\"json_object\"},\"messages\":[{\"role\":\"user\","
        "\"content\":\"x\"}]}",
        "{\"logit_bias\":{\"x\":5},\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}",
        "{\"logit_bias\":{\"-1\":5},\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}",
        "{\"logit_bias\":{\"42\":101},\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}",
        "{\"logit_bias\":{\"42\":\"5\"},\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}",
        "{\"logit_bias\":{\"151936\":5},\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}",
        "{\"logit_bias\":{\"42x\":5},\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}",
        "{\"logit_bias\":[5],\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}",
        "{\"functions\":[],\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}",
    };
    check_refused(prepare, bad, sizeof bad / sizeof bad[0], "refused");
    /* their neutral forms are accepted */
    st = prepare("{\"logprobs\":false,\"top_logprobs\":0,\"response_format\":{\"type\":\"text\"},"
                 "\"logit_bias\":{},\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}",
                 &j, msg, sizeof msg);
    CHECKF(st == 200 && j && !j->gp.logprobs, "neutral fields: %s", msg);
    srv_job_release(NULL, j);
    st = prepare("{\"logprobs\":true,\"top_logprobs\":20,\"messages\":[{\"role\":\"user\","
                 "\"content\":\"x\"}]}",
                 &j, msg, sizeof msg);
    CHECKF(st == 200 && j && j->gp.logprobs && j->gp.top_logprobs == 20, "logprobs: %s", msg);
    srv_job_release(NULL, j);
    st = prepare("{\"logit_bias\":{\"42\":-100,\"7\":2.5},\"messages\":[{\"role\":\"user\","
                 "\"content\":\"x\"}]}",
                 &j, msg, sizeof msg);
    CHECKF(st == 200 && j && j->gp.n_bias == 2 && j->gp.bias_ids[0] == 42 &&
               j->gp.bias_values[0] == -100 && j->gp.bias_ids[1] == 7 &&
               j->gp.bias_values[1] == 2.5f,
           "logit_bias: %s", msg);
    srv_job_release(NULL, j);
    /* arguments as an object are written in the template's tojson form */
    st = prepare("{\"messages\":[{\"role\":\"assistant\",\"content\":\"\",\"tool_calls\":[{"
                 "\"function\":{\"name\":\"a\",\"arguments\":{\"x\":1}}}]},{\"role\":\"user\","
                 "\"content\":\"y\"}]}",
                 &j, msg, sizeof msg);
    CHECKF(st == 200 && j, "object arguments: %s", msg);
    if (j) {
        char *text = NULL;
        CHECK(qvl_detokenize(g_S.model, j->ids, j->n_ids, 0, &text) == QVL_OK && text &&
              strstr(text, "<tool_call>\n{\"name\": \"a\", \"arguments\": {\"x\": 1}}\n</tool_call>"));
        qvl_free(text);
        srv_job_release(NULL, j);
    }
}

/* Log-probabilities in a response and a chunk: each token's text (U+FFFD for a byte that is
 * part of a character), raw bytes and top entries; -inf as -9999; null without them. */
static void test_logprobs(void) {
    CHECK(srv_utf8_valid("a\xc3\xa4", 3) && !srv_utf8_valid("a\xc3", 2));
    char *u = srv_utf8_lossy("a\xc3\xa4\xe4\xb8z\xff", 8);
    CHECK(u && !strcmp(u, "a\xc3\xa4\xef\xbf\xbd\xef\xbf\xbdz\xef\xbf\xbd"));
    free(u);
    /* a token that is a single byte of a multi-byte character, and one that is plain text */
    int32_t partial = -1, plain = -1;
    for (int32_t id = 0; id < 151643 && (partial < 0 || plain < 0); id++) {
        size_t n = 0;
        const char *b = qvl_token_bytes(g_S.model, id, &n);
        if (b && n == 1 && (unsigned char)b[0] == 0xe4)
            partial = id;
        if (b && n == 5 && !memcmp(b, "Hello", 5))
            plain = id;
    }
    CHECK(partial >= 0 && plain >= 0);
    CHECK(qvl_token_bytes(g_S.model, -1, NULL) == NULL &&
          qvl_token_bytes(g_S.model, 1 << 30, NULL) == NULL);
    srv_lp lp[2];
    memset(lp, 0, sizeof lp);
    lp[0] = (srv_lp){.id = plain, .logprob = -0.25f, .top_ids = {plain, partial},
                     .top_lp = {-0.25f, -INFINITY}};
    lp[1] = (srv_lp){.id = partial, .logprob = -3.5f, .top_ids = {plain, partial},
                     .top_lp = {-0.5f, -3.5f}};
    srv_job j;
    memset(&j, 0, sizeof j);
    char text[] = "Hello";
    j.text = text;
    j.text_n = 5;
    j.finish = QVL_FINISH_STOP;
    j.status = QVL_OK;
    j.gp.logprobs = 1;
    j.gp.top_logprobs = 2;
    j.lp = lp;
    j.lp_n = 2;
    char *js = srv_completion_json(&g_S, "chatcmpl-x", 1, &j);
    cJSON *r = cJSON_Parse(js);
    const cJSON *c = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(r, "choices"), 0);
    const cJSON *lo = cJSON_GetObjectItemCaseSensitive(c, "logprobs");
    const cJSON *content = cJSON_GetObjectItemCaseSensitive(lo, "content");
    CHECK(cJSON_GetArraySize(content) == 2 &&
          cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(lo, "refusal")));
    const cJSON *e0 = cJSON_GetArrayItem(content, 0), *e1 = cJSON_GetArrayItem(content, 1);
    CHECK(!strcmp(cJSON_GetObjectItemCaseSensitive(e0, "token")->valuestring, "Hello"));
    CHECK(cJSON_GetObjectItemCaseSensitive(e0, "logprob")->valuedouble == -0.25);
    CHECK(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(e0, "bytes")) == 5);
    const cJSON *t0 = cJSON_GetObjectItemCaseSensitive(e0, "top_logprobs");
    CHECK(cJSON_GetArraySize(t0) == 2 &&
          cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(t0, 1), "logprob")->valuedouble ==
              -9999.0);
    CHECK(!strcmp(cJSON_GetObjectItemCaseSensitive(e1, "token")->valuestring, "\xef\xbf\xbd"));
    const cJSON *b1 = cJSON_GetObjectItemCaseSensitive(e1, "bytes");
    CHECK(cJSON_GetArraySize(b1) == 1 && cJSON_GetArrayItem(b1, 0)->valueint == 0xe4);
    CHECK(cJSON_GetObjectItemCaseSensitive(e1, "logprob")->valuedouble == -3.5);
    cJSON_Delete(r);
    free(js);
    /* a chunk carrying the second record; one without records has null */
    js = srv_chunk_sse(&g_S, "chatcmpl-x", 1, false, "x", 1, NULL, NULL, lp + 1, 1, 2);
    CHECK(js && !strncmp(js, "data: ", 6));
    r = js ? cJSON_Parse(js + 6) : NULL;
    c = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(r, "choices"), 0);
    content = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(c, "logprobs"),
                                               "content");
    CHECK(cJSON_GetArraySize(content) == 1 &&
          cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(content, 0), "logprob")
                  ->valuedouble == -3.5);
    cJSON_Delete(r);
    free(js);
    js = srv_chunk_sse(&g_S, "chatcmpl-x", 1, false, "x", 1, NULL, NULL, NULL, 0, 0);
    r = js ? cJSON_Parse(js + 6) : NULL;
    c = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(r, "choices"), 0);
    CHECK(cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(c, "logprobs")));
    cJSON_Delete(r);
    free(js);
    /* without logprobs a response has null */
    j.gp.logprobs = 0;
    js = srv_completion_json(&g_S, "chatcmpl-x", 1, &j);
    r = cJSON_Parse(js);
    c = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(r, "choices"), 0);
    CHECK(cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(c, "logprobs")));
    cJSON_Delete(r);
    free(js);
}

/* /v1/completions: prompt forms, echo, refused fields, the legacy logprobs form. */
static void test_text(void) {
    char msg[512];
    srv_job *j = NULL;
    int32_t *ids = NULL;
    size_t n = 0;
    CHECK(qvl_tokenize(g_S.model, "Hello world", 11, &ids, &n) == QVL_OK && n >= 2);
    int st = prepare_text("{\"prompt\":\"Hello world\"}", &j, msg, sizeof msg);
    CHECKF(st == 200 && j && j->legacy && j->n_ids == n && !memcmp(j->ids, ids, n * 4) &&
               j->gp.max_new_tokens == 16 && !j->echo && !j->gp.logprobs,
           "string prompt: %d %s", st, msg);
    srv_job_release(NULL, j);
    char body[512];
    int o = snprintf(body, sizeof body, "{\"prompt\":[[");
    for (size_t i = 0; i < n; i++)
        o += snprintf(body + o, sizeof body - (size_t)o, "%s%d", i ? "," : "", (int)ids[i]);
    snprintf(body + o, sizeof body - (size_t)o,
             "]],\"echo\":true,\"max_tokens\":3,\"stop\":[\"x\"]}");
    st = prepare_text(body, &j, msg, sizeof msg);
    CHECKF(st == 200 && j && j->n_ids == n && !memcmp(j->ids, ids, n * 4) && j->echo &&
               !strcmp(j->echo, "Hello world") && j->gp.max_new_tokens == 3 && j->n_stop == 1,
           "token prompt with echo: %d %s", st, msg);
    if (j && st == 200) { /* the response text starts with the echoed prompt */
        char gen[] = " again";
        j->text = gen;
        j->text_n = strlen(gen);
        j->finish = QVL_FINISH_LENGTH;
        char *js = srv_text_completion_json(&g_S, "cmpl-x", 1, j);
        cJSON *r = cJSON_Parse(js);
        const cJSON *c = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(r, "choices"), 0);
        CHECK(!strcmp(cJSON_GetObjectItemCaseSensitive(r, "object")->valuestring,
                      "text_completion") &&
              !strcmp(cJSON_GetObjectItemCaseSensitive(c, "text")->valuestring,
                      "Hello world again") &&
              !strcmp(cJSON_GetObjectItemCaseSensitive(c, "finish_reason")->valuestring,
                      "length") &&
              cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(c, "logprobs")));
        cJSON_Delete(r);
        free(js);
        j->text = NULL;
        j->text_n = 0;
    }
    srv_job_release(NULL, j);
    st = prepare_text("{\"prompt\":\"x\",\"logprobs\":3}", &j, msg, sizeof msg);
    CHECKF(st == 200 && j && j->gp.logprobs && j->gp.top_logprobs == 3, "logprobs 3: %s", msg);
    if (j && st == 200) { /* two tokens: texts, offsets in characters, top entries as objects */
        int32_t hello = ids[0];
        size_t hl = 0;
        qvl_token_bytes(g_S.model, hello, &hl);
        srv_lp lp[2];
        memset(lp, 0, sizeof lp);
        lp[0] = (srv_lp){.id = hello, .logprob = -1, .top_ids = {hello, 0, 1},
                         .top_lp = {-1, -2, -3}};
        lp[1] = (srv_lp){.id = ids[1], .logprob = -INFINITY, .top_ids = {0, 1, 2},
                         .top_lp = {-0.5f, -0.75f, -1}};
        j->lp = lp;
        j->lp_n = 2;
        char *js = srv_text_completion_json(&g_S, "cmpl-x", 1, j);
        cJSON *r = cJSON_Parse(js);
        const cJSON *c = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(r, "choices"), 0);
        const cJSON *lo = cJSON_GetObjectItemCaseSensitive(c, "logprobs");
        const cJSON *tk = cJSON_GetObjectItemCaseSensitive(lo, "tokens");
        const cJSON *tl = cJSON_GetObjectItemCaseSensitive(lo, "token_logprobs");
        const cJSON *tp = cJSON_GetObjectItemCaseSensitive(lo, "top_logprobs");
        const cJSON *to = cJSON_GetObjectItemCaseSensitive(lo, "text_offset");
        CHECK(cJSON_GetArraySize(tk) == 2 && !strcmp(cJSON_GetArrayItem(tk, 0)->valuestring,
                                                     "Hello"));
        CHECK(cJSON_GetArrayItem(tl, 0)->valuedouble == -1 &&
              cJSON_GetArrayItem(tl, 1)->valuedouble == -9999.0);
        CHECK(cJSON_GetArraySize(cJSON_GetArrayItem(tp, 0)) == 3 &&
              cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(tp, 0), "Hello")
                      ->valuedouble == -1);
        CHECK(cJSON_GetArrayItem(to, 0)->valueint == 0 &&
              cJSON_GetArrayItem(to, 1)->valueint == (int)hl);
        cJSON_Delete(r);
        free(js);
        /* a stream's chunks carry the running offset */
        size_t off = 0;
        js = srv_text_chunk_sse(&g_S, "cmpl-x", 1, "Hello", 5, NULL, NULL, lp, 1, 3, &off);
        char *js2 = srv_text_chunk_sse(&g_S, "cmpl-x", 1, " world", 6, "stop", NULL, lp + 1, 1, 3,
                                       &off);
        CHECK(js && js2 && strstr(js, "\"text_offset\":[0]") && strstr(js2, "\"text_offset\":[5]") &&
              strstr(js2, "\"finish_reason\":\"stop\""));
        free(js);
        free(js2);
        j->lp = NULL;
        j->lp_n = 0;
    }
    srv_job_release(NULL, j);
    /* echo with logprobs scores the prompt; max_tokens 0 generates nothing; the prompt's records
     * come first, the first one (no logprob: NAN) as nulls, the offsets running on */
    st = prepare_text("{\"prompt\":\"Hello world\",\"echo\":true,\"logprobs\":1,"
                      "\"max_tokens\":0}",
                      &j, msg, sizeof msg);
    CHECKF(st == 200 && j && j->score_prompt && j->no_gen && j->gp.top_logprobs == 1,
           "echo + logprobs + max_tokens 0: %d %s", st, msg);
    if (j && st == 200) {
        size_t hl = 0;
        qvl_token_bytes(g_S.model, ids[0], &hl);
        srv_lp plp[2], lp;
        memset(plp, 0, sizeof plp);
        plp[0] = (srv_lp){.id = ids[0], .logprob = NAN, .top_ids = {-1}, .top_lp = {NAN}};
        plp[1] = (srv_lp){.id = ids[1], .logprob = -2, .top_ids = {ids[1]}, .top_lp = {-2}};
        lp = (srv_lp){.id = ids[0], .logprob = -0.5f, .top_ids = {ids[0]}, .top_lp = {-0.5f}};
        j->plp = plp;
        j->plp_n = 2;
        j->lp = &lp;
        j->lp_n = 1;
        char *js = srv_text_completion_json(&g_S, "cmpl-x", 1, j);
        cJSON *r = cJSON_Parse(js);
        const cJSON *c = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(r, "choices"), 0);
        const cJSON *lo = cJSON_GetObjectItemCaseSensitive(c, "logprobs");
        const cJSON *tl = cJSON_GetObjectItemCaseSensitive(lo, "token_logprobs");
        const cJSON *tp = cJSON_GetObjectItemCaseSensitive(lo, "top_logprobs");
        const cJSON *to = cJSON_GetObjectItemCaseSensitive(lo, "text_offset");
        CHECKF(cJSON_GetArraySize(tl) == 3 && cJSON_IsNull(cJSON_GetArrayItem(tl, 0)) &&
                   cJSON_GetArrayItem(tl, 1)->valuedouble == -2 &&
                   cJSON_GetArrayItem(tl, 2)->valuedouble == -0.5 &&
                   cJSON_IsNull(cJSON_GetArrayItem(tp, 0)) &&
                   cJSON_GetArraySize(cJSON_GetArrayItem(tp, 1)) == 1 &&
                   cJSON_GetArrayItem(to, 1)->valueint == (int)hl &&
                   cJSON_GetArrayItem(to, 2)->valueint > (int)hl,
               "scored prompt records: %s", js ? js : "(null)");
        cJSON_Delete(r);
        free(js);
        j->plp = NULL;
        j->plp_n = 0;
        j->lp = NULL;
        j->lp_n = 0;
    }
    srv_job_release(NULL, j);
    qvl_free(ids);
    const char *bad[] = {
        "{}",
        "{\"prompt\":\"\"}",
        "{\"prompt\":[]}",
        "{\"prompt\":[\"a\",\"b\"]}",
        "{\"prompt\":[[1],[2]]}",
        "{\"prompt\":[1,-1]}",
        "{\"prompt\":[1,1.5]}",
        "{\"prompt\":[151936]}",
        "{\"prompt\":42}",
        "{\"prompt\":\"x\",\"max_tokens\":-1}",
        "{\"prompt\":\"x\",\"logprobs\":21}",
        "{\"prompt\":\"x\",\"logprobs\":true}",
        "{\"prompt\":\"x\",\"best_of\":2}",
        "{\"prompt\":\"x\",\"suffix\":\"y\"}",
        "{\"prompt\":\"x\",\"n\":2}",
        "{\"prompt\":\"<|image_pad|>\"}",
        "{\"prompt\":\"x\",\"messages\":[]}",
        "[1]",
    };
    check_refused(prepare_text, bad, sizeof bad / sizeof bad[0], "completions refused");
    st = prepare_text("{\"prompt\":\"x\",\"suffix\":null,\"best_of\":1,\"logprobs\":null,"
                      "\"echo\":false}",
                      &j, msg, sizeof msg);
    CHECKF(st == 200 && j && !j->gp.logprobs, "neutral completions fields: %s", msg);
    srv_job_release(NULL, j);
}

int main(void) {
    char err[512];
    if (qvl_model_load(shared_path("fixtures/tiny-qwen3vl/model"), NULL, &g_model, err,
                       sizeof err) != QVL_OK) {
        CHECKF(0, "load: %s", err);
        CHECK_DONE();
    }
    g_S.model = g_model;
    g_S.o.n_slots = 1;
    g_S.o.n_threads = 1;
    g_S.o.n_ctx = 4096;
    g_S.o.queue_max = 1;
    g_S.o.max_image_pixels = 1u << 20;
    g_S.o.max_body = 1u << 20;
    snprintf(g_S.model_id, sizeof g_S.model_id, "tiny");
    g_S.image_pad = qvl_model_image_token(g_S.model);
    g_S.video_pad = 151656;
    atomic_store(&g_S.ready, 1);
    test_parse();
    test_response();
    test_stream();
    test_requests();
    test_logprobs();
    test_text();
    qvl_model_free(g_model);
    CHECK_DONE();
}
