/* serve.c - `qvl serve`: command-line options, the libmicrohttpd daemon (one thread per
 * connection), routing, authentication, body limits, streaming responses, request logging and
 * graceful shutdown on SIGINT / SIGTERM. Request bodies are parsed in routes.c; generation runs
 * on the slot workers of slots.c. */
#include "server.h"
#include "fetch.h"

#include <arpa/inet.h>
#include <cjson/cJSON.h>
#include <errno.h>
#include <limits.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define WAIT_SLICE_MS 100
#define DISCARD_MAX   ((size_t)256 << 20) /* body bytes read past the limit before hanging up */

enum { R_NONE, R_CHAT, R_TEXT, R_MODELS, R_HEALTH, R_TOKENIZE };

/* Per-request state (MHD's con_cls). */
typedef struct req {
    srv_state *S;
    int route;
    char method[16];
    char path[96];
    char peer[64];
    double t0;
    char *body;
    size_t n, cap;
    bool answered;
    bool too_big;    /* the body passed --max-body-bytes: discard the rest, then 413 */
    size_t discarded;
    int status;
    srv_job *job; /* a reference for the log line */
    bool stream;
} req;

/* A streamed completion (the response callback's state). */
typedef struct stream {
    srv_state *S;
    srv_job *j;
    int fd;
    char id[48];
    long long created;
    bool include_usage;
    bool first_sent, finished;
    size_t text_sent;
    size_t lp_sent; /* log-probability records sent */
    bool legacy;    /* /v1/completions: text_completion chunks */
    size_t lp_off;  /* legacy logprobs: text offset of the next token */
    char *pend;
    size_t pend_n, pend_off;
    double last_ms;      /* when the last event was produced */
    double keepalive_ms; /* idle time before a keep-alive comment */
} stream;

static void slog(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void slog(const char *fmt, ...) {
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    time_t t = time(NULL);
    struct tm tm;
    char ts[32];
    gmtime_r(&t, &tm);
    strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%SZ", &tm);
    fprintf(stderr, "%s qvl serve: %s\n", ts, line);
}

static void mhd_logger(void *cls, const char *fmt, va_list ap) {
    (void)cls;
    char line[512];
    vsnprintf(line, sizeof line, fmt, ap);
    size_t n = strlen(line);
    while (n && (line[n - 1] == '\n' || line[n - 1] == '\r'))
        line[--n] = 0;
    slog("http: %s", line);
}

/* Copy s into out (size n) for a log line: printable ASCII only, truncated. */
static void log_safe(char *out, size_t n, const char *s) {
    size_t k = 0;
    for (; s && *s && k + 1 < n; s++)
        out[k++] = (*s >= 0x20 && *s < 0x7f) ? *s : '?';
    out[k] = 0;
}

/* ---- responses -------------------------------------------------------------------------------- */
static enum MHD_Result send_body(req *r, struct MHD_Connection *c, int status, char *body,
                                 const char *ctype, const char *h1, const char *v1) {
    if (!body) {
        status = 500;
        body = strdup("{\"error\":{\"message\":\"out of memory\",\"type\":\"server_error\","
                      "\"param\":null,\"code\":\"server_error\"}}");
        if (!body)
            return MHD_NO;
    }
    size_t n = strlen(body);
    struct MHD_Response *resp = MHD_create_response_from_buffer(n, body, MHD_RESPMEM_MUST_FREE);
    if (!resp) {
        free(body);
        return MHD_NO;
    }
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, ctype);
    if (h1)
        MHD_add_response_header(resp, h1, v1);
    enum MHD_Result ret = MHD_queue_response(c, (unsigned)status, resp);
    MHD_destroy_response(resp);
    r->answered = true;
    r->status = status;
    return ret;
}

static enum MHD_Result send_json(req *r, struct MHD_Connection *c, int status, char *body) {
    return send_body(r, c, status, body, "application/json", NULL, NULL);
}

static const char *err_type(int status) {
    switch (status) {
    case 401:
        return "authentication_error";
    case 404:
        return "not_found_error";
    case 503:
        return "overloaded_error";
    case 500:
        return "server_error";
    default:
        return "invalid_request_error";
    }
}

static enum MHD_Result send_err(req *r, struct MHD_Connection *c, int status, const char *code,
                                const char *msg, const char *h1, const char *v1) {
    return send_body(r, c, status, srv_error_json(msg, err_type(status), code),
                     "application/json", h1, v1);
}

/* ---- streaming -------------------------------------------------------------------------------- */
static void stream_set(stream *st, char *ev) {
    free(st->pend);
    st->pend = ev;
    st->pend_n = ev ? strlen(ev) : 0;
    st->pend_off = 0;
}

/* Append b to a (both malloc'd or NULL); returns the joined string and frees both. */
static char *join(char *a, char *b) {
    if (!a)
        return b;
    if (!b)
        return a;
    size_t na = strlen(a), nb = strlen(b);
    char *s = realloc(a, na + nb + 1);
    if (!s) {
        free(b);
        return a;
    }
    memcpy(s + na, b, nb + 1);
    free(b);
    return s;
}

/* A copy of n log-probability records (*n set to 0 when it cannot be had), to send outside the
 * pool's lock. */
static srv_lp *lp_copy(const srv_lp *src, size_t *n) {
    srv_lp *c = *n ? malloc(*n * sizeof *c) : NULL;
    if (c)
        memcpy(c, src, *n * sizeof *c);
    else
        *n = 0;
    return c;
}

/* One chunk of the stream's kind: text and/or the finish reason, or the usage chunk. */
static char *chunk(stream *st, const char *text, size_t n, const char *finish,
                   const srv_job *usage, const srv_lp *lp, size_t n_lp) {
    const int top = st->j->gp.top_logprobs;
    if (st->legacy)
        return srv_text_chunk_sse(st->S, st->id, st->created, text ? text : "", n, finish, usage,
                                  lp, n_lp, top, &st->lp_off);
    return srv_chunk_sse(st->S, st->id, st->created, false, text, n, finish, usage, lp, n_lp,
                         top);
}

/* Build the next SSE event(s) into st->pend; false when nothing is ready yet. */
static bool stream_next(stream *st) {
    srv_state *S = st->S;
    srv_job *j = st->j;
    if (!st->first_sent) { /* chat: the role; completions: the echoed prompt, if any */
        st->first_sent = true;
        if (!st->legacy) {
            stream_set(st, srv_chunk_sse(S, st->id, st->created, true, "", 0, NULL, NULL, NULL,
                                         0, 0));
            return true;
        }
        if (j->echo_n) { /* a scored prompt's records travel with it: wait for them */
            srv_lp *plp = NULL;
            size_t pn = 0;
            if (j->score_prompt) {
                srv_pool_lock(S->pool);
                bool ready = j->plp_ready, done = j->state == JOB_DONE;
                if (ready) {
                    pn = j->plp_n;
                    plp = lp_copy(j->plp, &pn);
                }
                srv_pool_unlock(S->pool);
                if (!ready && !done) {
                    st->first_sent = false;
                    return false;
                }
            }
            stream_set(st, chunk(st, j->echo, j->echo_n, NULL, NULL, plp, pn));
            free(plp);
            return true;
        }
    }
    char *slice = NULL;
    size_t slice_n = 0;
    bool done;
    cJSON *calls = NULL;
    srv_lp *lp = NULL; /* records of the tokens generated since the last text chunk */
    size_t n_lp = 0;
    srv_pool_lock(S->pool);
    done = j->state == JOB_DONE;
    size_t avail = srv_stream_avail(j, st->text_sent, done, &calls);
    if (avail > st->text_sent) {
        slice_n = avail - st->text_sent;
        slice = malloc(slice_n + 1);
        if (slice)
            memcpy(slice, j->text + st->text_sent, slice_n);
        st->text_sent = avail;
    }
    /* they travel with text, or with the last chunk */
    if (j->lp_n > st->lp_sent && (slice || done)) {
        n_lp = j->lp_n - st->lp_sent;
        lp = lp_copy(j->lp + st->lp_sent, &n_lp);
        st->lp_sent = j->lp_n;
    }
    srv_pool_unlock(S->pool);
    if (calls) { /* the job is done: content first, then the calls, then the finish */
        char *ev = slice || lp ? chunk(st, slice, slice_n, NULL, NULL, lp, n_lp) : NULL;
        free(slice);
        free(lp);
        ev = join(ev, srv_chunk_tool_calls_sse(S, st->id, st->created, calls));
        ev = join(ev, chunk(st, NULL, 0, srv_finish_str_calls(j->finish, true), NULL, NULL, 0));
        if (st->include_usage)
            ev = join(ev, chunk(st, NULL, 0, NULL, j, NULL, 0));
        ev = join(ev, strdup("data: [DONE]\n\n"));
        stream_set(st, ev);
        st->finished = true;
        return true;
    }
    if (slice) {
        stream_set(st, chunk(st, slice, slice_n, NULL, NULL, lp, n_lp));
        free(slice);
        free(lp);
        return true;
    }
    if (!done)
        return false;
    /* the job is done and all its text was sent (no more writes to j) */
    char *ev = NULL;
    if (j->status == QVL_OK) {
        ev = chunk(st, NULL, 0, srv_finish_str(j->finish), NULL, lp, n_lp);
        if (st->include_usage)
            ev = join(ev, chunk(st, NULL, 0, NULL, j, NULL, 0));
    } else {
        char *e = srv_error_json(j->err[0] ? j->err : qvl_status_str(j->status),
                                 j->status == QVL_E_CANCELLED ? "overloaded_error"
                                                              : "server_error",
                                 j->status == QVL_E_CANCELLED ? "cancelled" : "server_error");
        if (e) {
            size_t n = strlen(e);
            ev = malloc(n + 9);
            if (ev)
                snprintf(ev, n + 9, "data: %s\n\n", e);
            free(e);
        }
    }
    free(lp);
    ev = join(ev, strdup("data: [DONE]\n\n"));
    stream_set(st, ev);
    st->finished = true;
    return true;
}

static ssize_t stream_read(void *cls, uint64_t pos, char *buf, size_t max) {
    (void)pos;
    stream *st = cls;
    for (;;) {
        if (st->pend_off < st->pend_n) {
            size_t n = st->pend_n - st->pend_off;
            if (n > max)
                n = max;
            memcpy(buf, st->pend + st->pend_off, n);
            st->pend_off += n;
            return (ssize_t)n;
        }
        if (st->finished)
            return MHD_CONTENT_READER_END_OF_STREAM;
        if (stream_next(st)) {
            st->last_ms = srv_now_ms();
            continue;
        }
        if (!srv_job_wait(st->S->pool, st->j, WAIT_SLICE_MS)) {
            if (srv_peer_gone(st->fd)) {
                srv_job_cancel(st->S->pool, st->j);
                return MHD_CONTENT_READER_END_WITH_ERROR;
            }
            /* an SSE comment while waiting (queue, prefill): keeps the connection inside the
             * idle timeout and proxies from giving up */
            if (srv_now_ms() - st->last_ms >= st->keepalive_ms) {
                stream_set(st, strdup(": keep-alive\n\n"));
                st->last_ms = srv_now_ms();
            }
        }
    }
}

static void stream_free(void *cls) {
    stream *st = cls;
    srv_job_cancel(st->S->pool, st->j); /* no-op when done; frees the slot when cut short */
    srv_job_release(st->S->pool, st->j);
    free(st->pend);
    free(st);
}

/* ---- routes ----------------------------------------------------------------------------------- */
static int conn_fd(struct MHD_Connection *c) {
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
    return ci ? ci->connect_fd : -1;
}

/* POST /v1/chat/completions, or /v1/completions when legacy. */
static enum MHD_Result do_chat(req *r, struct MHD_Connection *c, bool legacy) {
    srv_state *S = r->S;
    char msg[1024] = "";
    const char *code = "invalid_request_error";
    srv_chat ch;
    srv_job *j = NULL;
    if (srv_pool_full(S->pool)) /* before decoding any image */
        return send_err(r, c, 503, "server_busy",
                        "all slots are busy and the wait queue is full; retry later",
                        MHD_HTTP_HEADER_RETRY_AFTER, "1");
    int st = legacy ? srv_text_prepare(S, r->body ? r->body : "", r->n, &ch, &j, msg, sizeof msg,
                                       &code)
                    : srv_chat_prepare(S, r->body ? r->body : "", r->n, &ch, &j, msg, sizeof msg,
                                       &code);
    if (st != 200)
        return send_err(r, c, st, code, msg, NULL, NULL);
    int q = srv_pool_submit(S->pool, j);
    if (q != 0) {
        srv_job_release(S->pool, j);
        if (q == -1)
            return send_err(r, c, 503, "server_busy",
                            "all slots are busy and the wait queue is full; retry later",
                            MHD_HTTP_HEADER_RETRY_AFTER, "1");
        return send_err(r, c, 503, "shutting_down", "the server is shutting down", NULL, NULL);
    }
    r->job = j; /* our reference, released after the log line */
    r->stream = ch.stream;
    char id[48];
    size_t idp = legacy ? 5 : 9;
    memcpy(id, legacy ? "cmpl-" : "chatcmpl-", idp);
    srv_rand_hex(id + idp, 24);
    long long created = (long long)time(NULL);
    int fd = conn_fd(c);
    if (ch.stream) {
        stream *sm = calloc(1, sizeof *sm);
        if (!sm) {
            srv_job_cancel(S->pool, j);
            return send_err(r, c, 500, "server_error", "out of memory", NULL, NULL);
        }
        sm->S = S;
        sm->j = j;
        sm->fd = fd;
        memcpy(sm->id, id, sizeof id);
        sm->created = created;
        sm->include_usage = ch.include_usage;
        sm->legacy = legacy;
        sm->last_ms = srv_now_ms();
        sm->keepalive_ms = S->o.timeout_s * 1000.0 / 3;
        if (sm->keepalive_ms > 5000)
            sm->keepalive_ms = 5000;
        srv_job_ref(S->pool, j);
        struct MHD_Response *resp =
            MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 4096, stream_read, sm, stream_free);
        if (!resp) {
            stream_free(sm);
            return MHD_NO;
        }
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "text/event-stream");
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
        MHD_add_response_header(resp, "X-Accel-Buffering", "no");
        enum MHD_Result ret = MHD_queue_response(c, 200, resp);
        MHD_destroy_response(resp);
        r->answered = true;
        r->status = 200;
        return ret;
    }
    while (!srv_job_wait(S->pool, j, WAIT_SLICE_MS)) {
        if (srv_peer_gone(fd))
            srv_job_cancel(S->pool, j);
    }
    /* done: the output is stable */
    if (j->status == QVL_OK)
        return send_json(r, c, 200,
                         legacy ? srv_text_completion_json(S, id, created, j)
                                : srv_completion_json(S, id, created, j));
    if (j->status == QVL_E_CANCELLED)
        return send_err(r, c, 503, "cancelled", j->err[0] ? j->err : "cancelled", NULL, NULL);
    if (j->status == QVL_E_LIMIT || j->status == QVL_E_INVAL)
        return send_err(r, c, 400, "invalid_request_error", j->err, NULL, NULL);
    return send_err(r, c, 500, "server_error", j->err[0] ? j->err : qvl_status_str(j->status),
                    NULL, NULL);
}

static enum MHD_Result do_health(req *r, struct MHD_Connection *c) {
    srv_state *S = r->S;
    if (!atomic_load(&S->ready))
        return send_body(r, c, 503, strdup("{\"status\":\"loading\"}"), "application/json",
                         MHD_HTTP_HEADER_RETRY_AFTER, "1");
    int n = 0, idle = 0, queued = 0;
    srv_pool_stats(S->pool, &n, &idle, &queued);
    char *b = malloc(160);
    if (b)
        snprintf(b, 160, "{\"status\":\"ok\",\"slots_total\":%d,\"slots_idle\":%d,\"queued\":%d}",
                 n, idle, queued);
    return send_json(r, c, 200, b);
}

static enum MHD_Result do_route(req *r, struct MHD_Connection *c) {
    char msg[1024] = "";
    switch (r->route) {
    case R_HEALTH:
        return do_health(r, c);
    case R_MODELS:
        return send_json(r, c, 200, srv_models_json(r->S));
    case R_TOKENIZE: {
        char *out = NULL;
        int st = srv_tokenize_json(r->S, r->body ? r->body : "", r->n, &out, msg, sizeof msg);
        if (st != 200)
            return send_err(r, c, st, st == 500 ? "server_error" : "invalid_request_error", msg,
                            NULL, NULL);
        return send_json(r, c, 200, out);
    }
    case R_TEXT:
        return do_chat(r, c, true);
    default:
        return do_chat(r, c, false);
    }
}

/* Route table: 0 when the path is unknown; *allow gets the method the route takes. */
static int find_route(const char *url, const char **allow) {
    static const struct {
        const char *path, *method;
        int route;
    } tab[] = {
        {"/v1/chat/completions", "POST", R_CHAT},
        {"/chat/completions", "POST", R_CHAT},
        {"/v1/completions", "POST", R_TEXT},
        {"/completions", "POST", R_TEXT},
        {"/v1/models", "GET", R_MODELS},
        {"/models", "GET", R_MODELS},
        {"/health", "GET", R_HEALTH},
        {"/tokenize", "POST", R_TOKENIZE},
    };
    for (size_t i = 0; i < sizeof tab / sizeof tab[0]; i++)
        if (!strcmp(url, tab[i].path)) {
            *allow = tab[i].method;
            return tab[i].route;
        }
    return R_NONE;
}

/* Constant-time comparison of the Authorization header with "Bearer KEY". */
static bool auth_ok(const srv_state *S, struct MHD_Connection *c) {
    if (!S->o.api_key)
        return true;
    const char *h = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
    if (!h || strncmp(h, "Bearer ", 7) != 0)
        return false;
    h += 7;
    size_t nk = strlen(S->o.api_key), nh = strlen(h);
    unsigned diff = (unsigned)(nk != nh);
    for (size_t i = 0; i < nk; i++)
        diff |= (unsigned)(unsigned char)S->o.api_key[i] ^ (unsigned)(unsigned char)h[i < nh ? i : 0];
    return diff == 0 && nh > 0;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
                                  const char *method, const char *version,
                                  const char *upload_data, size_t *upload_size, void **con_cls) {
    (void)version;
    srv_state *S = cls;
    req *r = *con_cls;
    if (!r) {
        r = calloc(1, sizeof *r);
        if (!r)
            return MHD_NO;
        *con_cls = r;
        r->S = S;
        r->t0 = srv_now_ms();
        log_safe(r->method, sizeof r->method, method);
        log_safe(r->path, sizeof r->path, url);
        const union MHD_ConnectionInfo *ci =
            MHD_get_connection_info(c, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
        if (ci && ci->client_addr) {
            const struct sockaddr *sa = ci->client_addr;
            if (sa->sa_family == AF_INET)
                inet_ntop(AF_INET, &((const struct sockaddr_in *)(const void *)sa)->sin_addr,
                          r->peer, sizeof r->peer);
            else if (sa->sa_family == AF_INET6)
                inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr,
                          r->peer, sizeof r->peer);
        }
        const char *allow = NULL;
        r->route = find_route(url, &allow);
        if (r->route == R_NONE)
            return send_err(r, c, 404, "not_found", "unknown route", NULL, NULL);
        if (strcmp(method, allow) != 0) {
            char m[160];
            snprintf(m, sizeof m, "method %s is not allowed here; use %s", r->method, allow);
            return send_err(r, c, 405, "method_not_allowed", m, MHD_HTTP_HEADER_ALLOW, allow);
        }
        if (r->route != R_HEALTH && !auth_ok(S, c))
            return send_err(r, c, 401, "invalid_api_key",
                            "missing or wrong API key (Authorization: Bearer KEY)",
                            MHD_HTTP_HEADER_WWW_AUTHENTICATE, "Bearer");
        if (r->route != R_HEALTH && !atomic_load(&S->ready))
            return send_err(r, c, 503, "loading", "the model is still loading", 
                            MHD_HTTP_HEADER_RETRY_AFTER, "1");
        const char *cl =
            MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
        if (cl) {
            char *end;
            errno = 0;
            unsigned long long v = strtoull(cl, &end, 10);
            if (errno || end == cl || v > S->o.max_body) {
                char m[160];
                snprintf(m, sizeof m, "the request body is larger than %zu bytes", S->o.max_body);
                return send_err(r, c, 413, "request_too_large", m, NULL, NULL);
            }
        }
        return MHD_YES;
    }
    if (r->answered) { /* a response is queued already: drop what still arrives */
        *upload_size = 0;
        return MHD_YES;
    }
    if (r->too_big) {
        /* MHD cannot answer in the middle of an upload: discard the rest of the body (up to a
         * bound, then drop the connection) and answer 413 at its end */
        if (*upload_size) {
            r->discarded += *upload_size;
            *upload_size = 0;
            return r->discarded > DISCARD_MAX ? MHD_NO : MHD_YES;
        }
        char m[160];
        snprintf(m, sizeof m, "the request body is larger than %zu bytes", S->o.max_body);
        return send_err(r, c, 413, "request_too_large", m, NULL, NULL);
    }
    if (*upload_size) {
        size_t n = *upload_size;
        if (r->n + n > S->o.max_body) {
            r->too_big = true;
            r->discarded = n;
            *upload_size = 0;
            return MHD_YES;
        }
        if (r->n + n + 1 > r->cap) {
            size_t cap = r->cap ? r->cap * 2 : 4096;
            while (cap < r->n + n + 1)
                cap *= 2;
            if (cap > S->o.max_body + 1)
                cap = S->o.max_body + 1;
            char *b = realloc(r->body, cap);
            if (!b)
                return MHD_NO;
            r->body = b;
            r->cap = cap;
        }
        memcpy(r->body + r->n, upload_data, n);
        r->n += n;
        r->body[r->n] = 0;
        *upload_size = 0;
        return MHD_YES;
    }
    return do_route(r, c);
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls,
                         enum MHD_RequestTerminationCode toe) {
    (void)c;
    srv_state *S = cls;
    req *r = *con_cls;
    if (!r)
        return;
    *con_cls = NULL;
    double ms = srv_now_ms() - r->t0;
    const char *how = toe == MHD_REQUEST_TERMINATED_COMPLETED_OK ? ""
                      : toe == MHD_REQUEST_TERMINATED_TIMEOUT_REACHED ? " (timeout)"
                      : toe == MHD_REQUEST_TERMINATED_CLIENT_ABORT ? " (client went away)"
                                                                   : " (aborted)";
    if (r->job) {
        srv_job *j = r->job;
        srv_pool_lock(S->pool);
        size_t n_prompt = j->n_ids, n_cached = j->n_cached, n_comp = j->n_completion;
        int slot = j->slot, state = j->state, cancel = atomic_load(&j->cancel);
        qvl_finish fin = j->finish;
        qvl_status st = j->status;
        srv_pool_unlock(S->pool);
        slog("%s %s %s %d %.1fms body=%zu prompt=%zu cached=%zu completion=%zu finish=%s "
             "slot=%d%s%s%s",
             r->peer, r->method, r->path, r->status, ms, r->n, n_prompt, n_cached, n_comp,
             (state != JOB_DONE && cancel) || (state == JOB_DONE && st == QVL_E_CANCELLED)
                 ? "cancelled"
             : state != JOB_DONE ? "running"
             : st == QVL_OK      ? srv_finish_str(fin)
                                 : "error",
             slot, r->stream ? " stream" : "", how, "");
        srv_job_release(S->pool, j);
    } else {
        slog("%s %s %s %d %.1fms body=%zu%s", r->peer, r->method, r->path,
             r->answered ? r->status : 0, ms, r->n, how);
    }
    free(r->body);
    free(r);
}

/* ---- options -------------------------------------------------------------------------------- */
static int usage_err(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int usage_err(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "qvl serve: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    return 2;
}

static void serve_usage(void) {
    fprintf(stderr,
            "usage: qvl serve -m DIR [--host 127.0.0.1] [--port 8080] [--slots N] [-t THREADS]\n"
            "                 [--ctx N] [--queue N] [--api-key KEY] [--max-image-pixels N]\n"
            "                 [--max-body-bytes N] [--allow-local-files DIR] [--timeout SEC]\n"
            "                 [--allow-remote-media [--fetch-timeout SEC]]\n"
            "                 [--max-connections N] [--alias NAME] [--quant q8|q4|none]\n"
            "                 [--kv f32|bf16|f16] [--bf16-dot] [--load auto|mmap|copy] [--quant-cache]\n"
            "                 [--quant-vision] [--ignore-exif] [--drop-alpha]\n"
            "  -t is per slot (default: CPUs / slots); --ctx is per slot (default 4096);\n"
            "  --max-image-pixels caps the decoded pixels of all images of one request\n"
            "  (default 16777216); --max-body-bytes defaults to 32 MiB; --timeout (idle\n"
            "  connections, default 30 s).\n"
            "  --allow-remote-media: image_url and video_url parts may be http(s) URLs, which\n"
            "  the server downloads (at most 64 MiB each, --fetch-timeout seconds, default 30).\n"
            "  Off by default: it lets clients make the server fetch from any address it can\n"
            "  reach, including the local network.\n"
            "  --queue: requests that may wait for a slot (default 16); --port 0 picks a port.\n"
            "  --ignore-exif keeps images as stored (default: turned upright by their EXIF\n"
            "  orientation, as transformers' load_image does).\n"            "  --drop-alpha: RGBA images keep their stored colours (as transformers does)\n"
            "  instead of being composited onto white (as qwen-vl-utils and vLLM do).\n"
            "  The API key may also come from the QVL_API_KEY environment variable.\n");
}

static bool num_arg(const char *s, long long lo, long long hi, long long *out) {
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi)
        return false;
    *out = v;
    return true;
}

static int parse_args(int argc, char **argv, srv_opts *o) {
    memset(o, 0, sizeof *o);
    o->host = "127.0.0.1";
    o->port = 8080;
    o->n_slots = 1;
    o->n_ctx = 4096;
    o->queue_max = 16;
    o->timeout_s = 30;
    o->fetch_timeout_s = 30;
    o->max_conns = 64;
    o->max_image_pixels = 16u << 20;
    o->max_body = 32u << 20;
    o->api_key = getenv("QVL_API_KEY");
    if (o->api_key && !*o->api_key)
        o->api_key = NULL;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        long long n = 0;
#define NEED()                                                                                     \
    do {                                                                                           \
        if (!v)                                                                                    \
            return usage_err("option %s needs a value", a);                                        \
        i++;                                                                                       \
    } while (0)
#define NUMOPT(lo, hi)                                                                             \
    do {                                                                                           \
        NEED();                                                                                    \
        if (!num_arg(v, lo, hi, &n))                                                               \
            return usage_err("option %s: '%s' is not an integer in [%lld, %lld]", a, v,            \
                             (long long)(lo), (long long)(hi));                                    \
    } while (0)
        if (!strcmp(a, "-m") || !strcmp(a, "--model")) {
            NEED();
            o->model_dir = v;
        } else if (!strcmp(a, "--host")) {
            NEED();
            o->host = v;
        } else if (!strcmp(a, "--port")) {
            NUMOPT(0, 65535);
            o->port = (int)n;
        } else if (!strcmp(a, "--slots")) {
            NUMOPT(1, 256);
            o->n_slots = (int)n;
        } else if (!strcmp(a, "-t") || !strcmp(a, "--threads")) {
            NUMOPT(1, 256);
            o->n_threads = (int)n;
        } else if (!strcmp(a, "-c") || !strcmp(a, "--ctx")) {
            NUMOPT(16, 1 << 22);
            o->n_ctx = (int)n;
        } else if (!strcmp(a, "--bf16-dot")) {
            o->bf16_dot = 1;
        } else if (!strcmp(a, "--quant-cache")) {
            o->quant_cache = 1;
        } else if (!strcmp(a, "--quant-vision")) {
            o->quant_vision = 1;
        } else if (!strcmp(a, "--load")) {
            NEED();
            if (!qvl_load_mode_from_name(v, &o->load_mode))
                return usage_err("option --load takes auto, mmap or copy, not '%s'", v);
        } else if (!strcmp(a, "--kv")) {
            NEED();
            if (!qvl_kv_type_from_name(v, &o->kv))
                return usage_err("option --kv takes f32, bf16 or f16, not '%s'", v);
        } else if (!strcmp(a, "--queue")) {
            NUMOPT(0, 100000);
            o->queue_max = (int)n;
        } else if (!strcmp(a, "--timeout")) {
            NUMOPT(1, 86400);
            o->timeout_s = (int)n;
        } else if (!strcmp(a, "--max-connections")) {
            NUMOPT(2, 100000);
            o->max_conns = (int)n;
        } else if (!strcmp(a, "--api-key")) {
            NEED();
            o->api_key = *v ? v : NULL;
        } else if (!strcmp(a, "--max-image-pixels")) {
            NUMOPT(1, 1LL << 36);
            o->max_image_pixels = (uint64_t)n;
        } else if (!strcmp(a, "--max-body-bytes")) {
            NUMOPT(1024, 1LL << 32);
            o->max_body = (size_t)n;
        } else if (!strcmp(a, "--ignore-exif")) {
            o->image_flags |= QVL_IMAGE_IGNORE_EXIF;
        } else if (!strcmp(a, "--drop-alpha")) {
            o->image_flags |= QVL_IMAGE_DROP_ALPHA;
        } else if (!strcmp(a, "--allow-local-files")) {
            NEED();
            o->allow_dir = v;
        } else if (!strcmp(a, "--allow-remote-media")) {
            o->allow_remote = 1;
        } else if (!strcmp(a, "--fetch-timeout")) {
            NUMOPT(1, 3600);
            o->fetch_timeout_s = (int)n;
        } else if (!strcmp(a, "--alias")) {
            NEED();
            o->alias = v;
        } else if (!strcmp(a, "--quant")) {
            NEED();
            if (!strcmp(v, "q8"))
                o->quant = QVL_QUANT_Q8;
            else if (!strcmp(v, "q4"))
                o->quant = QVL_QUANT_Q4;
            else if (strcmp(v, "none"))
                return usage_err("--quant takes q8, q4 or none");
        } else if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            serve_usage();
            return 1;
        } else {
            return usage_err("unknown option '%s' (see qvl serve --help)", a);
        }
#undef NUMOPT
#undef NEED
    }
    if (!o->model_dir)
        return usage_err("no model: give -m DIR");
    if (!o->n_threads) {
        long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
        o->n_threads = ncpu > o->n_slots ? (int)(ncpu / o->n_slots) : 1;
    }
    return 0;
}

/* The model id reported to clients: --alias, or the model directory's last component. */
static void model_id(srv_state *S) {
    const char *src = S->o.alias;
    char tmp[PATH_MAX];
    if (!src) {
        size_t n = strlen(S->o.model_dir);
        if (n >= sizeof tmp)
            n = sizeof tmp - 1;
        memcpy(tmp, S->o.model_dir, n);
        tmp[n] = 0;
        while (n > 1 && tmp[n - 1] == '/')
            tmp[--n] = 0;
        const char *slash = strrchr(tmp, '/');
        src = slash ? slash + 1 : tmp;
    }
    size_t n = strlen(src);
    if (n >= sizeof S->model_id)
        n = sizeof S->model_id - 1;
    memcpy(S->model_id, src, n);
    S->model_id[n] = 0;
}

int qvl_cli_serve(int argc, char **argv) {
    srv_state *S = calloc(1, sizeof *S);
    if (!S)
        return 1;
    int rc = parse_args(argc, argv, &S->o);
    if (rc) {
        free(S);
        return rc == 1 ? 0 : rc;
    }
    atomic_init(&S->ready, 0);
    S->created = (long long)time(NULL);
    if (S->o.allow_dir) {
        char real[PATH_MAX];
        if (!realpath(S->o.allow_dir, real)) {
            rc = usage_err("--allow-local-files %s: %s", S->o.allow_dir, strerror(errno));
            free(S);
            return rc;
        }
        size_t n = strlen(real);
        if (n + 2 > sizeof S->allow_real) {
            free(S);
            return usage_err("--allow-local-files: path too long");
        }
        memcpy(S->allow_real, real, n + 1);
        if (n == 0 || real[n - 1] != '/')
            memcpy(S->allow_real + n, "/", 2);
    }
    if (S->o.allow_remote && !media_fetch_init()) {
        free(S);
        return usage_err("--allow-remote-media: downloads are not available (this build has no "
                         "libcurl)");
    }
    model_id(S);

    /* signals go to sigwait() in this thread only; MHD writes with MSG_NOSIGNAL */
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);

    struct sockaddr_in a4;
    struct sockaddr_in6 a6;
    struct sockaddr *sa;
    unsigned flags = MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD |
                     MHD_USE_ITC | MHD_USE_POLL | MHD_USE_ERROR_LOG;
    memset(&a4, 0, sizeof a4);
    memset(&a6, 0, sizeof a6);
    if (inet_pton(AF_INET, S->o.host, &a4.sin_addr) == 1) {
        a4.sin_family = AF_INET;
        a4.sin_port = htons((uint16_t)S->o.port);
        sa = (struct sockaddr *)&a4;
    } else if (inet_pton(AF_INET6, S->o.host, &a6.sin6_addr) == 1) {
        a6.sin6_family = AF_INET6;
        a6.sin6_port = htons((uint16_t)S->o.port);
        sa = (struct sockaddr *)&a6;
        flags |= MHD_USE_IPv6;
    } else {
        rc = usage_err("--host %s is not a numeric IPv4 or IPv6 address", S->o.host);
        free(S);
        return rc;
    }
    struct MHD_Daemon *d = MHD_start_daemon(
        flags, (uint16_t)S->o.port, NULL, NULL, on_request, S, MHD_OPTION_EXTERNAL_LOGGER,
        mhd_logger, S, MHD_OPTION_SOCK_ADDR, sa,
        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)S->o.timeout_s, MHD_OPTION_CONNECTION_LIMIT,
        (unsigned)S->o.max_conns, MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)128 * 1024,
        MHD_OPTION_NOTIFY_COMPLETED, on_completed, S, MHD_OPTION_LISTENING_ADDRESS_REUSE, 1u,
        MHD_OPTION_END);
    if (!d) {
        fprintf(stderr, "qvl serve: cannot listen on %s:%d (%s)\n", S->o.host, S->o.port,
                strerror(errno));
        free(S);
        return 1;
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
    int port = di ? di->port : S->o.port;
    slog("listening on http://%s%s%s:%d (loading %s)", sa->sa_family == AF_INET6 ? "[" : "",
         S->o.host, sa->sa_family == AF_INET6 ? "]" : "", port, S->o.model_dir);

    qvl_model *m = NULL;
    char err[1024] = "";
    qvl_model_params mp = qvl_model_default_params();
    mp.quant = (qvl_quant)S->o.quant;
    mp.bf16_dot = S->o.bf16_dot;
    mp.mmap = S->o.load_mode;
    mp.quant_vision = S->o.quant_vision;
    char *cache = S->o.quant_cache ? qvl_default_cache_dir() : NULL;
    mp.quant_cache_dir = cache; /* none found: quantise at every load */
    qvl_status st = qvl_model_load(S->o.model_dir, &mp, &m, err, sizeof err);
    qvl_free(cache);
    if (st == QVL_OK) {
        S->model = m;
        S->image_pad = qvl_model_image_token(m);
        S->video_pad = -1;
        char *info = qvl_model_info_json(m);
        cJSON *ij = info ? cJSON_Parse(info) : NULL;
        const cJSON *vp = cJSON_GetObjectItem(cJSON_GetObjectItem(ij, "tokens"), "video_pad");
        if (cJSON_IsNumber(vp))
            S->video_pad = (int32_t)vp->valuedouble;
        cJSON_Delete(ij);
        qvl_free(info);
        qvl_ctx_params cp = qvl_ctx_default_params();
        cp.n_ctx = S->o.n_ctx;
        cp.n_threads = S->o.n_threads;
        cp.kv_type = S->o.kv;
        st = srv_pool_create(m, S->o.n_slots, &cp, S->o.queue_max, &S->pool, err, sizeof err);
    }
    if (st != QVL_OK) {
        slog("cannot start: %s", err[0] ? err : qvl_status_str(st));
        MHD_stop_daemon(d);
        qvl_model_free(m);
        free(S);
        return 1;
    }
    atomic_store(&S->ready, 1);
    slog("ready: model %s, %d slot(s) x %d threads, context %d, queue %d%s", S->model_id,
         S->o.n_slots, S->o.n_threads, S->o.n_ctx, S->o.queue_max,
         S->o.api_key ? ", API key required" : "");

    int sig = 0;
    while (sigwait(&sigs, &sig) != 0)
        ;
    slog("signal %d: shutting down", sig);
    /* stop accepting, let running requests finish for a moment, then cancel the rest */
    MHD_socket lsock = MHD_quiesce_daemon(d);
    if (lsock != MHD_INVALID_SOCKET)
        close(lsock);
    double t_end = srv_now_ms() + 5000;
    for (;;) {
        int n = 0, idle = 0, queued = 0;
        srv_pool_stats(S->pool, &n, &idle, &queued);
        if ((idle == n && queued == 0) || srv_now_ms() > t_end)
            break;
        struct timespec ts = {0, 20 * 1000000L};
        nanosleep(&ts, NULL);
    }
    srv_pool_shutdown(S->pool);
    MHD_stop_daemon(d);
    srv_pool_free(S->pool);
    qvl_model_free(m);
    free(S);
    slog("stopped");
    return 0;
}
