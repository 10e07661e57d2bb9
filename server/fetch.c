/* fetch.c - http(s) downloads of media URLs through libcurl (see fetch.h). */
#include "fetch.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

bool media_is_remote(const char *s) {
    return s && (!strncasecmp(s, "http://", 7) || !strncasecmp(s, "https://", 8));
}

#ifdef QVL_HAVE_CURL
#    include <curl/curl.h>

static bool g_ready;

bool media_fetch_init(void) {
    if (!g_ready)
        g_ready = curl_global_init(CURL_GLOBAL_DEFAULT) == CURLE_OK;
    return g_ready;
}

typedef struct {
    uint8_t *p;
    size_t n, cap, limit;
    bool too_big, oom;
} sink;

static size_t on_data(char *data, size_t size, size_t nmemb, void *user) {
    sink *s = user;
    size_t len = size * nmemb;
    if (len > s->limit - s->n) {
        s->too_big = true;
        return 0; /* aborts the transfer */
    }
    if (s->n + len > s->cap) {
        size_t cap = s->cap ? s->cap : 64 * 1024;
        while (cap < s->n + len)
            cap = cap > s->limit / 2 ? s->limit : cap * 2;
        uint8_t *p = realloc(s->p, cap);
        if (!p) {
            s->oom = true;
            return 0;
        }
        s->p = p;
        s->cap = cap;
    }
    memcpy(s->p + s->n, data, len);
    s->n += len;
    return len;
}

int media_fetch(const char *url, size_t cap, long timeout_s, uint8_t **out, size_t *n, char *err,
                size_t err_len) {
    *out = NULL;
    *n = 0;
    if (!media_fetch_init()) {
        snprintf(err, err_len, "libcurl could not be initialised");
        return -1;
    }
    if (!media_is_remote(url)) {
        snprintf(err, err_len, "not an http:// or https:// URL");
        return -1;
    }
    CURL *h = curl_easy_init();
    if (!h) {
        snprintf(err, err_len, "out of memory");
        return -3;
    }
    sink s = {.limit = cap};
    char cerr[CURL_ERROR_SIZE] = "";
    curl_easy_setopt(h, CURLOPT_URL, url);
#    if LIBCURL_VERSION_NUM >= 0x075500 /* 7.85 */
    curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(h, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
#    else
    curl_easy_setopt(h, CURLOPT_PROTOCOLS, (long)(CURLPROTO_HTTP | CURLPROTO_HTTPS));
    curl_easy_setopt(h, CURLOPT_REDIR_PROTOCOLS, (long)(CURLPROTO_HTTP | CURLPROTO_HTTPS));
#    endif
    curl_easy_setopt(h, CURLOPT_FOLLOWLOCATION, 1L);
    curl_easy_setopt(h, CURLOPT_MAXREDIRS, 5L);
    curl_easy_setopt(h, CURLOPT_TIMEOUT, timeout_s);
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT, timeout_s < 10 ? timeout_s : 10L);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L); /* no SIGALRM in a threaded server */
    curl_easy_setopt(h, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)cap);
    curl_easy_setopt(h, CURLOPT_USERAGENT, "qvl");
    curl_easy_setopt(h, CURLOPT_ACCEPT_ENCODING, ""); /* whatever libcurl can decode */
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_data);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &s);
    curl_easy_setopt(h, CURLOPT_ERRORBUFFER, cerr);
    CURLcode rc = curl_easy_perform(h);
    long status = 0;
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
    curl_easy_cleanup(h);
    int ret = 0;
    if (s.oom) {
        snprintf(err, err_len, "out of memory");
        ret = -3;
    } else if (s.too_big || rc == CURLE_FILESIZE_EXCEEDED) {
        snprintf(err, err_len, "the body is larger than %zu bytes", cap);
        ret = -2;
    } else if (rc != CURLE_OK) {
        snprintf(err, err_len, "%s", cerr[0] ? cerr : curl_easy_strerror(rc));
        ret = -1;
    } else if (status >= 400 || (status != 0 && status < 200)) {
        snprintf(err, err_len, "the server answered HTTP %ld", status);
        ret = -1;
    } else if (s.n == 0) {
        snprintf(err, err_len, "the body is empty");
        ret = -1;
    }
    if (ret != 0) {
        free(s.p);
        return ret;
    }
    *out = s.p;
    *n = s.n;
    return 0;
}

#else /* built without libcurl */

bool media_fetch_init(void) {
    return false;
}

int media_fetch(const char *url, size_t cap, long timeout_s, uint8_t **out, size_t *n, char *err,
                size_t err_len) {
    (void)url;
    (void)cap;
    (void)timeout_s;
    *out = NULL;
    *n = 0;
    snprintf(err, err_len, "this build of qvl has no libcurl: download the file and pass its "
                           "path (or a data: URI)");
    return -1;
}

#endif
