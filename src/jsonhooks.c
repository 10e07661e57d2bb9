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
 * Also: Python's json.dumps form of a value (the chat template's `tojson`) and Python's repr
 * of a float.
 *
 * Declarations for src/common.h (not in a header of its own):
 *   void qvl_json_init(void);
 *   struct cJSON *qvl_json_parse(const char *json, size_t len, const char **end,
 *                                qvl_status *st, long *err_off);
 *   void qvl_py_float_repr(double v, char *buf, size_t n);
 *   void qvl_json_py_dump(qvl_sbuf *b, const struct cJSON *v);
 */
#include "common.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

void qvl_py_float_repr(double v, char *buf, size_t n) {
    if (isnan(v) || isinf(v)) {
        snprintf(buf, n, "%s", isnan(v) ? "NaN" : v > 0 ? "Infinity" : "-Infinity");
        return;
    }
    for (int p = 1; p <= 17; p++) {
        snprintf(buf, n, "%.*g", p, v);
        if (strtod(buf, NULL) == v)
            break;
    }
    /* Python writes exponents with at least two digits and a sign, as C does, and switches to
     * them at 1e16 (C's %g at the precision's digits): rewrite the fixed-point cases */
    char *e = strpbrk(buf, "eE");
    if (e) {
        int ex = atoi(e + 1);
        if (ex >= -4 && ex < 16) { /* Python writes these without an exponent */
            char digits[64];
            /* shortest fixed form that reads back the same */
            for (int p = 0; p <= 17; p++) {
                snprintf(digits, sizeof digits, "%.*f", p, v);
                if (strtod(digits, NULL) == v)
                    break;
            }
            snprintf(buf, n, "%s", digits);
        }
    }
    if (!strpbrk(buf, ".eEn") && strlen(buf) + 3 <= n)
        strcat(buf, ".0");
}

static void py_str(qvl_sbuf *b, const char *s) {
    qvl_sbuf_add(b, "\"", 1);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        char esc[8];
        switch (*p) {
        case '"':
            qvl_sbuf_add(b, "\\\"", 2);
            break;
        case '\\':
            qvl_sbuf_add(b, "\\\\", 2);
            break;
        case '\n':
            qvl_sbuf_add(b, "\\n", 2);
            break;
        case '\r':
            qvl_sbuf_add(b, "\\r", 2);
            break;
        case '\t':
            qvl_sbuf_add(b, "\\t", 2);
            break;
        case '\b':
            qvl_sbuf_add(b, "\\b", 2);
            break;
        case '\f':
            qvl_sbuf_add(b, "\\f", 2);
            break;
        default:
            if (*p < 0x20) {
                snprintf(esc, sizeof esc, "\\u%04x", *p);
                qvl_sbuf_str(b, esc);
            } else {
                qvl_sbuf_add(b, (const char *)p, 1);
            }
        }
    }
    qvl_sbuf_add(b, "\"", 1);
}

/* json.dumps(v, ensure_ascii=False): ", " and ": " separators, keys in their order, non-ASCII
 * as is. A number is an int when it has no fraction and fits 2^53 (the parsed text is gone, so
 * 1.0 is written 1, where Python would keep 1.0), else Python's float repr. */
void qvl_json_py_dump(qvl_sbuf *b, const cJSON *v) {
    if (!v) {
        qvl_sbuf_str(b, "null");
        return;
    }
    if (cJSON_IsObject(v) || cJSON_IsArray(v)) {
        bool obj = cJSON_IsObject(v);
        qvl_sbuf_add(b, obj ? "{" : "[", 1);
        for (const cJSON *c = v->child; c; c = c->next) {
            if (c != v->child)
                qvl_sbuf_add(b, ", ", 2);
            if (obj) {
                py_str(b, c->string ? c->string : "");
                qvl_sbuf_add(b, ": ", 2);
            }
            qvl_json_py_dump(b, c);
        }
        qvl_sbuf_add(b, obj ? "}" : "]", 1);
    } else if (cJSON_IsString(v)) {
        py_str(b, v->valuestring ? v->valuestring : "");
    } else if (cJSON_IsNumber(v)) {
        char num[40];
        double d = v->valuedouble;
        if (d == floor(d) && fabs(d) <= 9007199254740992.0)
            snprintf(num, sizeof num, "%.0f", d == 0 ? 0.0 : d);
        else
            qvl_py_float_repr(d, num, sizeof num);
        qvl_sbuf_str(b, num);
    } else if (cJSON_IsTrue(v)) {
        qvl_sbuf_str(b, "true");
    } else if (cJSON_IsFalse(v)) {
        qvl_sbuf_str(b, "false");
    } else {
        qvl_sbuf_str(b, "null");
    }
}
