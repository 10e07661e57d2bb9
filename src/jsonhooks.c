/* jsonhooks.c - route cJSON's heap through qvl_malloc / qvl_free, so that allocation-failure
 * tests (qvl_alloc_fail_at) also reach the JSON parsers and LeakSanitizer sees one allocator.
 *
 * cJSON keeps its hooks in a process-wide table; they are installed once (pthread_once) and
 * never changed afterwards, so concurrent parses are safe. qvl_malloc is plain malloc plus a
 * counter, and qvl_free is free, so memory cJSON allocated before the hooks were installed is
 * still released correctly afterwards. */
#include "common.h"

#include <cjson/cJSON.h>
#include <pthread.h>

void qvl_json_init(void);

static pthread_once_t g_json_once = PTHREAD_ONCE_INIT;

static void *json_malloc(size_t n) {
    return qvl_malloc(n);
}

static void json_free(void *p) {
    qvl_free(p);
}

static void json_install(void) {
    cJSON_Hooks h = {json_malloc, json_free};
    cJSON_InitHooks(&h);
}

/* Install the hooks (idempotent, thread-safe). Call before the first cJSON use of a load. */
void qvl_json_init(void) {
    pthread_once(&g_json_once, json_install);
}
