/* jsonhooks.c - route cJSON's heap through qvl_malloc / qvl_free, so that allocation-failure
 * tests (qvl_alloc_fail_at) also reach the JSON parsers, and tell an out-of-memory parse failure
 * apart from malformed JSON (cJSON returns NULL for both).
 *
 * cJSON keeps its hooks in a process-wide table; they are installed once (pthread_once) and
 * never changed afterwards, so concurrent parses are safe. qvl_malloc is plain malloc plus a
 * counter and qvl_free is free, so memory cJSON allocated before the hooks were installed is
 * still released correctly afterwards. Allocation failures are counted per thread, so a parse
 * on one thread is never blamed for another thread's failure.
 *
 * Declarations for src/common.h (not in a header of its own):
 *   void qvl_json_init(void);
 *   struct cJSON *qvl_json_parse(const char *json, size_t len, const char **end,
 *                                qvl_status *st, long *err_off);
 */
#include "common.h"

#include <cjson/cJSON.h>
#include <pthread.h>

void qvl_json_init(void);
cJSON *qvl_json_parse(const char *json, size_t len, const char **end, qvl_status *st,
                      long *err_off);

static pthread_once_t g_json_once = PTHREAD_ONCE_INIT;
static _Thread_local unsigned long t_json_failed; /* failed allocations on this thread */

static void *json_malloc(size_t n) {
    void *p = qvl_malloc(n);
    if (!p)
        t_json_failed++;
    return p;
}

static void json_free(void *p) {
    qvl_free(p);
}

static void json_install(void) {
    cJSON_Hooks h = {json_malloc, json_free};
    cJSON_InitHooks(&h);
}

/* Install the hooks (idempotent, thread-safe). qvl_json_parse calls it; call it directly before
 * other cJSON use (building documents) that should go through qvl_malloc. */
void qvl_json_init(void) {
    pthread_once(&g_json_once, json_install);
}

/* Parse len bytes (need not be NUL-terminated) into a cJSON tree released with cJSON_Delete.
 * end (may be NULL) receives the end of the parsed value, so the caller can check what follows.
 * On failure returns NULL with *st = QVL_E_NOMEM when an allocation failed during the parse,
 * else QVL_E_FORMAT and *err_off (may be NULL) = byte offset of the syntax error (-1 unknown).
 * Unlike cJSON_GetErrorPtr(), which is a process global, this is safe on several threads. */
cJSON *qvl_json_parse(const char *json, size_t len, const char **end, qvl_status *st,
                      long *err_off) {
    qvl_json_init();
    if (err_off)
        *err_off = -1;
    if (!json) {
        *st = QVL_E_INVAL;
        return NULL;
    }
    unsigned long before = t_json_failed;
    const char *stop = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(json, len, &stop, 0);
    if (end)
        *end = root ? stop : NULL;
    if (root) {
        *st = QVL_OK;
        return root;
    }
    *st = t_json_failed != before ? QVL_E_NOMEM : QVL_E_FORMAT;
    if (err_off && *st == QVL_E_FORMAT && stop && stop >= json && stop <= json + len)
        *err_off = (long)(stop - json);
    return NULL;
}
