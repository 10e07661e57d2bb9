/* fuzz_chatreq.c - libFuzzer target for the server's request path without the network:
 * srv_chat_prepare (UTF-8 check, JSON parse, parameters, messages and content parts, base64
 * data-URL images decoded and planned, prompt rendering, tokenization, image-pad expansion,
 * context check) and srv_tokenize_json, on arbitrary bodies, with the tiny fixture model loaded
 * once ($QVL_SHARED/fixtures/tiny-qwen3vl/model, or ../shared when unset).
 * Input: one selector byte (odd: /tokenize body; even: /v1/chat/completions body, or with bit 2
 * set a /v1/completions body, srv_text_prepare), then the body; the body is also parsed as generated text for tool calls (srv_tool_calls,
 * srv_tool_safe_len). Local files are refused (no --allow-local-files), so no input reaches
 * the disk.
 *
 * The server is not part of libqvl and the fuzz targets link only libqvl, so its request-path
 * sources are compiled into this target directly (they hold no main and no network code).
 * Seeds: tests/fuzz/corpus/chatreq/. */
#include "../../server/routes.c"
#include "../../server/slots.c"
#include "../../server/util.c"
#include "../../server/fetch.c" /* without QVL_HAVE_CURL: downloads refused */

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static qvl_model *g_model;
static srv_state g_S;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    const char *root = getenv("QVL_SHARED");
    static char dir[1024];
    snprintf(dir, sizeof dir, "%s/fixtures/tiny-qwen3vl/model", root ? root : "../shared");
    char err[512];
    if (qvl_model_load(dir, NULL, &g_model, err, sizeof err) != QVL_OK) {
        fprintf(stderr, "fuzz_chatreq: cannot load %s (%s); set QVL_SHARED\n", dir, err);
        abort();
    }
    memset(&g_S, 0, sizeof g_S);
    g_S.o.model_dir = dir;
    g_S.o.n_slots = 1;
    g_S.o.n_threads = 1;
    g_S.o.n_ctx = 2048;
    g_S.o.queue_max = 1;
    g_S.o.max_image_pixels = 1u << 18; /* small, so one input cannot make a run slow */
    g_S.o.max_body = 1u << 20;
    g_S.model = g_model;
    snprintf(g_S.model_id, sizeof g_S.model_id, "tiny");
    g_S.image_pad = qvl_model_image_token(g_model);
    g_S.video_pad = 151656;
    atomic_store(&g_S.ready, 1);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1)
        return 0;
    size_t n = size - 1;
    /* exactly sized heap copy, not NUL-terminated, so ASan sees any over-read */
    char *body = malloc(n ? n : 1);
    if (!body)
        return 0;
    memcpy(body, data + 1, n);
    char msg[512];
    if (data[0] & 1) {
        char *out = NULL;
        int st = srv_tokenize_json(&g_S, body, n, &out, msg, sizeof msg);
        if (st == 200 && !out)
            abort();
        free(out);
    } else {
        srv_chat ch;
        srv_job *job = NULL;
        const char *code = NULL;
        int st = data[0] & 4 ? srv_text_prepare(&g_S, body, n, &ch, &job, msg, sizeof msg, &code)
                             : srv_chat_prepare(&g_S, body, n, &ch, &job, msg, sizeof msg, &code);
        if (st == 200) {
            /* a prepared job must fit the context and hold one image per image run */
            if (!job || job->n_ids == 0 || job->n_ids >= (size_t)g_S.o.n_ctx)
                abort();
            srv_job_release(NULL, job);
        } else if (job || !code || st < 400 || st > 599) {
            abort();
        }
    }
    /* the same bytes as generated text: the tool-call parser and the streaming hold-back */
    size_t cn = 0;
    cJSON *calls = srv_tool_calls(body, n, (data[0] & 2) != 0, &cn);
    if (calls && (cn > n || !cJSON_IsArray(calls) || cJSON_GetArraySize(calls) < 1))
        abort();
    cJSON_Delete(calls);
    if (srv_tool_safe_len(body, n) > n)
        abort();
    free(body);
    return 0;
}
