/* routes.c - the OpenAI-style request bodies and responses of `qvl serve`: parsing and checking
 * a chat-completions request (messages, content parts, image URLs, sampling parameters),
 * rendering the Qwen3-VL chat template and building the prompt ids, and the JSON of
 * completions, stream chunks, errors, models and tokenize answers. */
#include "server.h"
#include "fetch.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_FILE_BYTES ((size_t)64 << 20)

static void fmt(char *msg, size_t ml, const char *f, ...) __attribute__((format(printf, 3, 4)));
static void fmt(char *msg, size_t ml, const char *f, ...) {
    va_list ap;
    va_start(ap, f);
    vsnprintf(msg, ml, f, ap);
    va_end(ap);
}

const char *srv_finish_str(qvl_finish f) {
    return f == QVL_FINISH_LENGTH ? "length" : "stop";
}

const char *srv_finish_str_calls(qvl_finish f, bool calls) {
    return calls && f == QVL_FINISH_STOP ? "tool_calls" : srv_finish_str(f);
}

/* ---- parameters ------------------------------------------------------------------------------- */
/* Read an optional number field: absent or null leaves *out alone and returns 1 with *present
 * false. Returns 0 (msg set) when the value has the wrong type or is outside [lo, hi]. */
static int get_num(const cJSON *root, const char *key, double lo, double hi, bool integer,
                   double *out, bool *present, char *msg, size_t ml) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
    if (present)
        *present = false;
    if (!v || cJSON_IsNull(v))
        return 1;
    if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble)) {
        fmt(msg, ml, "'%s' must be a number", key);
        return 0;
    }
    double d = v->valuedouble;
    if (integer && d != floor(d)) {
        fmt(msg, ml, "'%s' must be an integer", key);
        return 0;
    }
    if (d < lo || d > hi) {
        fmt(msg, ml, "'%s' must be between %g and %g", key, lo, hi);
        return 0;
    }
    *out = d;
    if (present)
        *present = true;
    return 1;
}

static int get_bool(const cJSON *root, const char *key, bool *out, char *msg, size_t ml) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!v || cJSON_IsNull(v))
        return 1;
    if (!cJSON_IsBool(v)) {
        fmt(msg, ml, "'%s' must be a boolean", key);
        return 0;
    }
    *out = cJSON_IsTrue(v);
    return 1;
}

/* ---- images ------------------------------------------------------------------------------------- */
static int hexval(char c) {
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Read a file:// URL inside the allowed directory into *bytes. Returns an HTTP status. */
static int read_local(srv_state *S, const char *url, uint8_t **bytes, size_t *n, char *msg,
                      size_t ml) {
    if (!S->o.allow_dir) {
        fmt(msg, ml, "file:// URLs are disabled (start the server with "
                     "--allow-local-files DIR)");
        return 400;
    }
    const char *p = url + 7;
    if (!strncmp(p, "localhost/", 10))
        p += 9;
    if (*p != '/') {
        fmt(msg, ml, "file:// URL must hold an absolute path");
        return 400;
    }
    char path[PATH_MAX];
    size_t k = 0;
    for (; *p; p++) {
        char c = *p;
        if (c == '%') {
            int h = hexval(p[1]), l = h >= 0 ? hexval(p[2]) : -1;
            if (h < 0 || l < 0 || (h == 0 && l == 0)) {
                fmt(msg, ml, "file:// URL has a bad percent escape");
                return 400;
            }
            c = (char)(h * 16 + l);
            p += 2;
        }
        if (k + 1 >= sizeof path) {
            fmt(msg, ml, "file:// path too long");
            return 400;
        }
        path[k++] = c;
    }
    path[k] = 0;
    char real[PATH_MAX];
    if (!realpath(path, real) || strncmp(real, S->allow_real, strlen(S->allow_real)) != 0) {
        /* same answer for missing and outside files: do not reveal what exists */
        fmt(msg, ml, "file:// path is not a readable file inside the allowed directory");
        return 400;
    }
    int fd = open(real, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        if (fd >= 0)
            close(fd);
        fmt(msg, ml, "file:// path is not a readable file inside the allowed directory");
        return 400;
    }
    if ((size_t)st.st_size > MAX_FILE_BYTES || st.st_size == 0) {
        close(fd);
        fmt(msg, ml, "file:// file is empty or larger than %zu bytes", MAX_FILE_BYTES);
        return 400;
    }
    size_t len = (size_t)st.st_size, got = 0;
    uint8_t *buf = malloc(len);
    if (!buf) {
        close(fd);
        fmt(msg, ml, "out of memory");
        return 500;
    }
    while (got < len) {
        ssize_t r = read(fd, buf + got, len - got);
        if (r <= 0) {
            if (r < 0 && errno == EINTR)
                continue;
            break;
        }
        got += (size_t)r;
    }
    close(fd);
    if (got != len) {
        free(buf);
        fmt(msg, ml, "file:// file could not be read");
        return 400;
    }
    *bytes = buf;
    *n = len;
    return 200;
}

/* Download an http(s) URL (what: "image" or "video", number idx) into *bytes, when the server
 * runs with --allow-remote-media. Returns an HTTP status. */
static int read_remote(srv_state *S, const char *url, const char *what, size_t idx,
                       uint8_t **bytes, size_t *n, char *msg, size_t ml) {
    if (!S->o.allow_remote) {
        fmt(msg, ml, "%s %zu: remote URLs are disabled (start the server with "
                     "--allow-remote-media); send the %s as a data:%s/...;base64, URI",
            what, idx, what, what);
        return 400;
    }
    char e[512] = "";
    int r = media_fetch(url, MAX_FILE_BYTES, S->o.fetch_timeout_s, bytes, n, e, sizeof e);
    if (r == -3) {
        fmt(msg, ml, "out of memory");
        return 500;
    }
    if (r != 0) {
        fmt(msg, ml, "%s %zu: cannot download the URL: %s", what, idx, e);
        return 400;
    }
    return 200;
}

/* Fetch and decode the image of an image_url. Returns an HTTP status. */
static int load_image(srv_state *S, const char *url, size_t idx, uint64_t budget, qvl_image **img,
                      uint8_t **bytes, size_t *n, char *msg, size_t ml) {
    *img = NULL;
    *bytes = NULL;
    *n = 0;
    if (!strncmp(url, "data:", 5)) {
        const char *comma = strchr(url, ',');
        if (!comma) {
            fmt(msg, ml, "image %zu: data URI without ','", idx);
            return 400;
        }
        size_t hl = (size_t)(comma - url);
        if (hl < 12 || strncmp(url + 5, "image/", 6) != 0 || hl < 7 ||
            strncmp(comma - 7, ";base64", 7) != 0) {
            fmt(msg, ml, "image %zu: expected a data:image/...;base64, URI", idx);
            return 400;
        }
        int r = srv_b64_decode(comma + 1, strlen(comma + 1), S->o.max_body, bytes, n);
        if (r == -3) {
            fmt(msg, ml, "out of memory");
            return 500;
        }
        if (r != 0) {
            fmt(msg, ml, "image %zu: invalid base64 data", idx);
            return r == -2 ? 413 : 400;
        }
    } else if (!strncmp(url, "file://", 7)) {
        int st = read_local(S, url, bytes, n, msg, ml);
        if (st != 200)
            return st;
    } else if (media_is_remote(url)) {
        int st = read_remote(S, url, "image", idx, bytes, n, msg, ml);
        if (st != 200)
            return st;
    } else {
        fmt(msg, ml, "image %zu: unsupported image URL (use a data: URI)", idx);
        return 400;
    }
    char e[512] = "";
    qvl_status st = qvl_image_load_mem_ex(*bytes, *n, budget, S->o.image_flags, img, e, sizeof e);
    if (st != QVL_OK) {
        free(*bytes);
        *bytes = NULL;
        if (st == QVL_E_NOMEM) {
            fmt(msg, ml, "out of memory decoding image %zu", idx);
            return 500;
        }
        fmt(msg, ml, "image %zu cannot be used: %s (this request may decode %llu more pixels)",
            idx, e[0] ? e : qvl_status_str(st), (unsigned long long)budget);
        return 400;
    }
    return 200;
}

/* Fetch and sample the video of a video_url (data:video/...;base64, file:// under
 * --allow-local-files, http(s) under --allow-remote-media): FFmpeg decodes only the sampled frames, and only if they fit in
 * `budget` pixels (the request's images and videos share --max-image-pixels). Returns an HTTP
 * status; *pixels gets the decoded pixels. */
static int load_video(srv_state *S, const char *url, size_t idx, uint64_t budget,
                      qvl_resample rs, qvl_video **out, uint64_t *pixels, char *msg, size_t ml) {
    *out = NULL;
    *pixels = 0;
    uint8_t *bytes = NULL;
    size_t n = 0;
    if (!strncmp(url, "data:", 5)) {
        const char *comma = strchr(url, ',');
        size_t hl = comma ? (size_t)(comma - url) : 0;
        if (!comma || hl < 12 || strncmp(url + 5, "video/", 6) != 0 ||
            strncmp(comma - 7, ";base64", 7) != 0) {
            fmt(msg, ml, "video %zu: expected a data:video/...;base64, URI", idx);
            return 400;
        }
        int r = srv_b64_decode(comma + 1, strlen(comma + 1), S->o.max_body, &bytes, &n);
        if (r == -3) {
            fmt(msg, ml, "out of memory");
            return 500;
        }
        if (r != 0 || n == 0) {
            fmt(msg, ml, "video %zu: invalid base64 data", idx);
            return r == -2 ? 413 : 400;
        }
    } else if (!strncmp(url, "file://", 7)) {
        int st = read_local(S, url, &bytes, &n, msg, ml);
        if (st != 200)
            return st;
    } else if (media_is_remote(url)) {
        int st = read_remote(S, url, "video", idx, &bytes, &n, msg, ml);
        if (st != 200)
            return st;
    } else {
        fmt(msg, ml, "video %zu: unsupported video URL (send a data:video/...;base64, URI)", idx);
        return 400;
    }
    qvl_video_opts o = {0};
    o.max_decoded_pixels = budget;
    o.resample = rs;
    char e[512] = "";
    qvl_status st = qvl_video_load_mem(S->model, bytes, n, &o, out, e, sizeof e);
    free(bytes);
    if (st == QVL_E_NOMEM) {
        fmt(msg, ml, "out of memory decoding video %zu", idx);
        return 500;
    }
    if (st != QVL_OK) {
        fmt(msg, ml, "video %zu cannot be used: %s (this request may decode %llu more pixels)",
            idx, e[0] ? e : qvl_status_str(st), (unsigned long long)budget);
        return 400;
    }
    qvl_video_plan plan;
    if (qvl_video_plan_get(S->model, *out, &plan, e, sizeof e) != QVL_OK) {
        qvl_video_free(*out);
        *out = NULL;
        fmt(msg, ml, "video %zu cannot be used: %s", idx, e);
        return 400;
    }
    *pixels = (uint64_t)plan.n_frames * (uint64_t)plan.frame_width * (uint64_t)plan.frame_height;
    return 200;
}

/* ---- chat ------------------------------------------------------------------------------------- */
typedef struct chat_build {
    qvl_chat_msg *msgs;   /* the request's messages as qvl_chat_render takes them */
    qvl_chat_part *parts; /* their parts (text points into the request JSON) */
    size_t n_msgs, n_parts;
    qvl_tool_call *calls; /* assistant messages' tool calls */
    char **call_args;     /* arguments given as JSON objects, written out (malloc'd) */
    size_t n_calls;
    char **tools; /* the offered tools' JSON (malloc'd) */
    size_t n_tools;
    char *forced; /* a forced tool_choice: the start of the call the answer begins with */
    qvl_image *images[SRV_MAX_IMAGES];
    uint8_t *bytes[SRV_MAX_IMAGES];
    size_t len[SRV_MAX_IMAGES];
    size_t n_images;
    qvl_video *videos[SRV_MAX_VIDEOS];
    size_t n_videos;
    uint64_t pixels; /* decoded so far: the request's images and videos share --max-image-pixels */
} chat_build;

/* Append a message's content to cb->parts (room was counted by the caller). Text-only roles
 * take a string or text parts; user messages also take image parts, whose images are loaded and
 * planned here. Returns an HTTP status. */
/* The URL of an image_url / video_url part (key): {"url": "..."} or a bare string; NULL with a
 * message naming messages[mi].content[pi] otherwise. */
static const char *part_url(const cJSON *part, const char *key, size_t mi, size_t pi, char *msg,
                            size_t ml) {
    const cJSON *u = cJSON_GetObjectItemCaseSensitive(part, key);
    const cJSON *url = cJSON_IsObject(u) ? cJSON_GetObjectItemCaseSensitive(u, "url") : u;
    if (!cJSON_IsString(url)) {
        fmt(msg, ml, "messages[%zu].content[%zu].%s.url must be a string", mi, pi, key);
        return NULL;
    }
    return url->valuestring;
}

static int render_content(srv_state *S, chat_build *cb, const cJSON *content, bool allow_images,
                          size_t mi, const qvl_image_opts *io, char *msg, size_t ml) {
    if (!content || cJSON_IsNull(content))
        return 200;
    if (cJSON_IsString(content)) {
        cb->parts[cb->n_parts++] = (qvl_chat_part){QVL_PART_TEXT, content->valuestring};
        return 200;
    }
    if (!cJSON_IsArray(content)) {
        fmt(msg, ml, "messages[%zu].content must be a string or an array of parts", mi);
        return 400;
    }
    size_t pi = 0;
    const cJSON *part;
    cJSON_ArrayForEach(part, content) {
        const cJSON *type = cJSON_GetObjectItemCaseSensitive(part, "type");
        if (!cJSON_IsObject(part) || !cJSON_IsString(type)) {
            fmt(msg, ml, "messages[%zu].content[%zu] must be an object with a 'type'", mi, pi);
            return 400;
        }
        if (!strcmp(type->valuestring, "text")) {
            const cJSON *t = cJSON_GetObjectItemCaseSensitive(part, "text");
            if (!cJSON_IsString(t)) {
                fmt(msg, ml, "messages[%zu].content[%zu].text must be a string", mi, pi);
                return 400;
            }
            cb->parts[cb->n_parts++] = (qvl_chat_part){QVL_PART_TEXT, t->valuestring};
        } else if (!strcmp(type->valuestring, "image_url")) {
            if (!allow_images) {
                fmt(msg, ml, "messages[%zu]: images are only accepted in user messages", mi);
                return 400;
            }
            const char *url = part_url(part, "image_url", mi, pi, msg, ml);
            if (!url)
                return 400;
            if (cb->n_images == SRV_MAX_IMAGES) {
                fmt(msg, ml, "at most %d images per request", SRV_MAX_IMAGES);
                return 400;
            }
            size_t k = cb->n_images;
            if (cb->pixels >= S->o.max_image_pixels) {
                fmt(msg, ml, "the request's images exceed %llu pixels in total",
                    (unsigned long long)S->o.max_image_pixels);
                return 400;
            }
            int st = load_image(S, url, k, S->o.max_image_pixels - cb->pixels,
                                &cb->images[k], &cb->bytes[k], &cb->len[k], msg, ml);
            if (st != 200)
                return st;
            cb->n_images++;
            int w = 0, h = 0;
            qvl_image_size(cb->images[k], &w, &h);
            cb->pixels += (uint64_t)w * (uint64_t)h;
            qvl_image_plan plan; /* checked here so that the error names the image */
            char e[512] = "";
            if (qvl_image_plan_get(S->model, cb->images[k], io, &plan, e, sizeof e) != QVL_OK) {
                fmt(msg, ml, "image %zu cannot be used: %s", k, e);
                return 400;
            }
            cb->parts[cb->n_parts++] = (qvl_chat_part){QVL_PART_IMAGE, NULL};
        } else if (!strcmp(type->valuestring, "video_url")) {
            if (!allow_images) {
                fmt(msg, ml, "messages[%zu]: videos are only accepted in user messages", mi);
                return 400;
            }
            const char *url = part_url(part, "video_url", mi, pi, msg, ml);
            if (!url)
                return 400;
            if (cb->n_videos == SRV_MAX_VIDEOS) {
                fmt(msg, ml, "at most %d videos per request", SRV_MAX_VIDEOS);
                return 400;
            }
            if (cb->pixels >= S->o.max_image_pixels) {
                fmt(msg, ml, "the request's images and videos exceed %llu pixels in total",
                    (unsigned long long)S->o.max_image_pixels);
                return 400;
            }
            uint64_t px = 0;
            size_t k = cb->n_videos;
            int st = load_video(S, url, k, S->o.max_image_pixels - cb->pixels, io->resample,
                                &cb->videos[k], &px, msg, ml);
            if (st != 200)
                return st;
            cb->n_videos++;
            cb->pixels += px;
            cb->parts[cb->n_parts++] = (qvl_chat_part){QVL_PART_VIDEO, NULL};
        } else {
            fmt(msg, ml, "messages[%zu].content[%zu]: unsupported part type '%.40s'", mi, pi,
                type->valuestring);
            return 400;
        }
        pi++;
    }
    return 200;
}

static int role_kind(const char *r) {
    if (!strcmp(r, "system") || !strcmp(r, "developer"))
        return 0;
    if (!strcmp(r, "user"))
        return 1;
    if (!strcmp(r, "assistant"))
        return 2;
    if (!strcmp(r, "tool"))
        return 3;
    return -1;
}

/* An assistant message's "tool_calls" into cb->calls (room was counted by the caller). */
/* logit_bias: {"token id": bias in [-100, 100], ...}, at most SRV_MAX_LOGIT_BIAS entries. */
static int read_logit_bias(srv_state *S, const cJSON *root, srv_job *j, char *msg, size_t ml) {
    const cJSON *lb = cJSON_GetObjectItemCaseSensitive(root, "logit_bias");
    if (!lb || cJSON_IsNull(lb))
        return 1;
    if (!cJSON_IsObject(lb)) {
        fmt(msg, ml, "'logit_bias' must be an object of token ids to numbers");
        return 0;
    }
    int n = cJSON_GetArraySize(lb);
    if (n > SRV_MAX_LOGIT_BIAS) {
        fmt(msg, ml, "'logit_bias' has %d entries (at most %d)", n, SRV_MAX_LOGIT_BIAS);
        return 0;
    }
    if (n == 0)
        return 1;
    j->bias_ids = malloc((size_t)n * sizeof *j->bias_ids);
    j->bias_vals = malloc((size_t)n * sizeof *j->bias_vals);
    if (!j->bias_ids || !j->bias_vals) {
        fmt(msg, ml, "out of memory");
        return 0;
    }
    const long vocab = qvl_model_n_vocab(S->model);
    int k = 0;
    for (const cJSON *e = lb->child; e; e = e->next, k++) {
        const char *key = e->string;
        char *end = NULL;
        errno = 0;
        long id = key && key[0] >= '0' && key[0] <= '9' ? strtol(key, &end, 10) : -1;
        if (id < 0 || errno || !end || *end || id >= vocab) {
            fmt(msg, ml, "'logit_bias': key '%.40s' is not a token id below %ld", key ? key : "",
                vocab);
            return 0;
        }
        if (!cJSON_IsNumber(e) || !isfinite(e->valuedouble) || e->valuedouble < -100 ||
            e->valuedouble > 100) {
            fmt(msg, ml, "'logit_bias': the value of '%.40s' must be a number in [-100, 100]",
                key);
            return 0;
        }
        j->bias_ids[k] = (int32_t)id;
        j->bias_vals[k] = (float)e->valuedouble;
    }
    j->gp.bias_ids = j->bias_ids;
    j->gp.bias_values = j->bias_vals;
    j->gp.n_bias = n;
    return 1;
}

static int read_tool_calls(chat_build *cb, const cJSON *tc, size_t mi, char *msg, size_t ml) {
    if (!cJSON_IsArray(tc)) {
        fmt(msg, ml, "messages[%zu].tool_calls must be an array", mi);
        return 400;
    }
    size_t k = 0;
    const cJSON *c;
    cJSON_ArrayForEach(c, tc) {
        const cJSON *f = cJSON_GetObjectItemCaseSensitive(c, "function");
        const cJSON *name = cJSON_GetObjectItemCaseSensitive(f, "name");
        const cJSON *args = cJSON_GetObjectItemCaseSensitive(f, "arguments");
        if (!cJSON_IsObject(f) || !cJSON_IsString(name) || !args || cJSON_IsNull(args)) {
            fmt(msg, ml,
                "messages[%zu].tool_calls[%zu] must have a 'function' with a string 'name' and "
                "'arguments'",
                mi, k);
            return 400;
        }
        qvl_tool_call call = {name->valuestring, NULL, 0};
        if (cJSON_IsString(args)) { /* the OpenAI form: written as it is, as the template does */
            call.arguments = args->valuestring;
        } else { /* a JSON value: the library writes it in the template's tojson form */
            cb->call_args[cb->n_calls] = cJSON_PrintUnformatted(args);
            if (!cb->call_args[cb->n_calls]) {
                fmt(msg, ml, "out of memory");
                return 500;
            }
            call.arguments = cb->call_args[cb->n_calls];
            call.arguments_json = 1;
        }
        cb->calls[cb->n_calls++] = call;
        k++;
    }
    return 200;
}

/* "tools" (function tools, written into the prompt by the template) and "tool_choice" ("auto",
 * the default, or "none": no tools in the prompt and no parsing). Returns an HTTP status. */
static int read_tools(const cJSON *root, chat_build *cb, char *msg, size_t ml) {
    const cJSON *tools = cJSON_GetObjectItemCaseSensitive(root, "tools");
    const cJSON *choice = cJSON_GetObjectItemCaseSensitive(root, "tool_choice");
    bool none = false, required = false;
    const char *named = NULL; /* {"type": "function", "function": {"name": ...}} */
    if (choice && !cJSON_IsNull(choice)) {
        const cJSON *ct = cJSON_GetObjectItemCaseSensitive(choice, "type");
        const cJSON *cn = cJSON_GetObjectItemCaseSensitive(
            cJSON_GetObjectItemCaseSensitive(choice, "function"), "name");
        if (cJSON_IsString(choice) && !strcmp(choice->valuestring, "none")) {
            none = true;
        } else if (cJSON_IsString(choice) && !strcmp(choice->valuestring, "required")) {
            required = true;
        } else if (cJSON_IsObject(choice) && cJSON_IsString(ct) &&
                   !strcmp(ct->valuestring, "function") && cJSON_IsString(cn)) {
            named = cn->valuestring;
        } else if (!cJSON_IsString(choice) || strcmp(choice->valuestring, "auto")) {
            fmt(msg, ml, "'tool_choice' must be \"auto\", \"none\", \"required\" or "
                         "{\"type\": \"function\", \"function\": {\"name\": ...}}");
            return 400;
        }
    }
    if ((required || named) &&
        (!cJSON_IsArray(tools) || cJSON_GetArraySize(tools) == 0)) {
        fmt(msg, ml, "'tool_choice' %s needs 'tools'", named ? "naming a function" : "required");
        return 400;
    }
    if (!tools || cJSON_IsNull(tools))
        return 200;
    if (!cJSON_IsArray(tools)) {
        fmt(msg, ml, "'tools' must be an array");
        return 400;
    }
    size_t n = (size_t)cJSON_GetArraySize(tools);
    if (n > SRV_MAX_TOOLS) {
        fmt(msg, ml, "at most %d tools", SRV_MAX_TOOLS);
        return 400;
    }
    size_t k = 0;
    const cJSON *t;
    cJSON_ArrayForEach(t, tools) {
        const cJSON *type = cJSON_GetObjectItemCaseSensitive(t, "type");
        const cJSON *f = cJSON_GetObjectItemCaseSensitive(t, "function");
        if (!cJSON_IsObject(t) || !cJSON_IsString(type) || strcmp(type->valuestring, "function") ||
            !cJSON_IsString(cJSON_GetObjectItemCaseSensitive(f, "name"))) {
            fmt(msg, ml,
                "tools[%zu] must be {\"type\": \"function\", \"function\": {\"name\": ...}}",
                k);
            return 400;
        }
        k++;
    }
    if (named) {
        bool found = false;
        cJSON_ArrayForEach(t, tools) {
            const cJSON *f = cJSON_GetObjectItemCaseSensitive(t, "function");
            found |= !strcmp(cJSON_GetObjectItemCaseSensitive(f, "name")->valuestring, named);
        }
        if (!found) {
            fmt(msg, ml, "'tool_choice' names '%.64s', which is not among 'tools'", named);
            return 400;
        }
    }
    if (none || n == 0)
        return 200;
    /* A forced choice starts the answer with the call, as the template writes calls:
     * "<tool_call>\n" (required), then '{"name": "NAME", "arguments": ' (named). */
    if (required || named) {
        cJSON *js = named ? cJSON_CreateString(named) : NULL;
        char *qn = js ? cJSON_PrintUnformatted(js) : NULL;
        cJSON_Delete(js);
        size_t cap = 64 + (qn ? strlen(qn) : 0);
        cb->forced = malloc(cap);
        if (!cb->forced || (named && !qn)) {
            free(qn);
            fmt(msg, ml, "out of memory");
            return 500;
        }
        if (named)
            snprintf(cb->forced, cap, "<tool_call>\n{\"name\": %s, \"arguments\": ", qn);
        else
            snprintf(cb->forced, cap, "<tool_call>\n");
        free(qn);
    }
    cb->tools = calloc(n, sizeof *cb->tools);
    if (!cb->tools) {
        fmt(msg, ml, "out of memory");
        return 500;
    }
    cJSON_ArrayForEach(t, tools) {
        cb->tools[cb->n_tools] = cJSON_PrintUnformatted(t);
        if (!cb->tools[cb->n_tools]) {
            fmt(msg, ml, "out of memory");
            return 500;
        }
        cb->n_tools++;
    }
    return 200;
}

/* Validate the messages and load their images into cb (messages of parts, as
 * qvl_prompt_build_parts takes them). Returns an HTTP status. */
static int render_messages(srv_state *S, chat_build *cb, const cJSON *msgs,
                           const qvl_image_opts *io, char *msg, size_t ml) {
    if (!cJSON_IsArray(msgs) || cJSON_GetArraySize(msgs) == 0) {
        fmt(msg, ml, "'messages' must be a non-empty array");
        return 400;
    }
    size_t n_msgs = (size_t)cJSON_GetArraySize(msgs);
    if (n_msgs > SRV_MAX_MSGS) {
        fmt(msg, ml, "at most %d messages", SRV_MAX_MSGS);
        return 400;
    }
    size_t room = 0, call_room = 0;
    const cJSON *m;
    cJSON_ArrayForEach(m, msgs) {
        const cJSON *content = cJSON_GetObjectItemCaseSensitive(m, "content");
        room += cJSON_IsArray(content) ? (size_t)cJSON_GetArraySize(content) : 1;
        const cJSON *tc = cJSON_GetObjectItemCaseSensitive(m, "tool_calls");
        call_room += cJSON_IsArray(tc) ? (size_t)cJSON_GetArraySize(tc) : 0;
    }
    cb->msgs = calloc(n_msgs, sizeof *cb->msgs);
    cb->parts = calloc(room + 1, sizeof *cb->parts);
    cb->calls = calloc(call_room + 1, sizeof *cb->calls);
    cb->call_args = calloc(call_room + 1, sizeof *cb->call_args);
    if (!cb->msgs || !cb->parts || !cb->calls || !cb->call_args) {
        fmt(msg, ml, "out of memory");
        return 500;
    }
    size_t mi = 0;
    cJSON_ArrayForEach(m, msgs) {
        const cJSON *role = cJSON_GetObjectItemCaseSensitive(m, "role");
        const cJSON *content = cJSON_GetObjectItemCaseSensitive(m, "content");
        if (!cJSON_IsObject(m) || !cJSON_IsString(role)) {
            fmt(msg, ml, "messages[%zu] must be an object with a string 'role'", mi);
            return 400;
        }
        int kind = role_kind(role->valuestring);
        if (kind < 0) {
            fmt(msg, ml,
                "messages[%zu]: unsupported role '%.40s' (system, user, assistant, tool)", mi,
                role->valuestring);
            return 400;
        }
        if (kind != 2 && (!content || cJSON_IsNull(content))) {
            fmt(msg, ml, "messages[%zu].content is missing", mi);
            return 400;
        }
        /* images in user and tool messages (as the template renders them); a system message
         * past the first is validated and, as the template does, not rendered; OpenAI's
         * "developer" role is its newer name for "system" */
        qvl_chat_msg cm = {kind == 0 ? "system" : role->valuestring, NULL, NULL, 0, NULL, 0};
        if (cJSON_IsString(content)) { /* a string stays a string: "" is empty to the template */
            cm.content = content->valuestring;
        } else {
            size_t first = cb->n_parts;
            int st = render_content(S, cb, content, kind == 1 || kind == 3, mi, io, msg, ml);
            if (st != 200)
                return st;
            cm.parts = cb->parts + first;
            cm.n_parts = cb->n_parts - first;
        }
        const cJSON *tc = cJSON_GetObjectItemCaseSensitive(m, "tool_calls");
        if (tc && !cJSON_IsNull(tc)) {
            if (kind != 2) {
                fmt(msg, ml, "messages[%zu]: only assistant messages have tool_calls", mi);
                return 400;
            }
            size_t first = cb->n_calls;
            int st = read_tool_calls(cb, tc, mi, msg, ml);
            if (st != 200)
                return st;
            cm.tool_calls = cb->calls + first;
            cm.n_tool_calls = cb->n_calls - first;
        }
        cb->msgs[mi] = cm;
        mi++;
    }
    cb->n_msgs = n_msgs;
    return 200;
}

/* Read the sampling parameters into the job. Returns an HTTP status. */
static int parse_params(srv_state *S, const cJSON *root, srv_job *j, srv_chat *ch, char *msg,
                        size_t ml) {
    double d;
    bool present;
    const double big = (double)S->o.n_ctx;
    if (j->legacy)
        j->gp.max_new_tokens = 16; /* OpenAI's default for completions */
    d = 0;
    const double lo = j->legacy ? 0 : 1; /* completions: 0 evaluates (and echoes) the prompt */
    if (!get_num(root, "max_tokens", lo, 1e12, true, &d, &present, msg, ml))
        return 400;
    double d2 = 0;
    bool present2;
    if (!get_num(root, "max_completion_tokens", lo, 1e12, true, &d2, &present2, msg, ml))
        return 400;
    if (present2)
        d = d2;
    if (present || present2) {
        if (d > big) {
            fmt(msg, ml, "max_tokens %.0f is larger than the context (%d tokens)", d,
                S->o.n_ctx);
            return 400;
        }
        j->gp.max_new_tokens = (int)d;
        j->no_gen = d == 0;
    }
    d = 1;
    if (!get_num(root, "n", 1, 1e9, true, &d, NULL, msg, ml))
        return 400;
    if (d != 1) {
        fmt(msg, ml, "'n' must be 1 (one choice per request)");
        return 400;
    }
    /* sampling: OpenAI ranges; absent fields take generation_config.json defaults */
    d = -1;
    if (!get_num(root, "temperature", 0, 2, false, &d, NULL, msg, ml))
        return 400;
    j->gp.temperature = (float)d;
    d = -1;
    if (!get_num(root, "top_p", 0, 1, false, &d, &present, msg, ml))
        return 400;
    j->gp.top_p = (float)d;
    d = -1;
    if (!get_num(root, "top_k", 0, 1e9, true, &d, NULL, msg, ml))
        return 400;
    j->gp.top_k = (int)d;
    d = 0;
    if (!get_num(root, "min_p", 0, 1, false, &d, NULL, msg, ml))
        return 400;
    j->gp.min_p = (float)d;
    d = 0;
    if (!get_num(root, "presence_penalty", -2, 2, false, &d, NULL, msg, ml))
        return 400;
    j->gp.presence_penalty = (float)d;
    d = 0;
    if (!get_num(root, "frequency_penalty", -2, 2, false, &d, NULL, msg, ml))
        return 400;
    j->gp.frequency_penalty = (float)d;
    d = -1;
    if (!get_num(root, "repetition_penalty", 0.01, 10, false, &d, NULL, msg, ml))
        return 400;
    j->gp.repetition_penalty = (float)d;
    d = 0;
    if (!get_num(root, "seed", -9007199254740992.0, 9007199254740992.0, true, &d, NULL, msg, ml))
        return 400;
    j->gp.seed = (uint64_t)(int64_t)d;
    bool ign = false;
    if (!get_bool(root, "ignore_eos", &ign, msg, ml))
        return 400;
    j->gp.ignore_eos = ign;
    if (!get_bool(root, "stream", &ch->stream, msg, ml))
        return 400;
    const cJSON *so = cJSON_GetObjectItemCaseSensitive(root, "stream_options");
    if (so && !cJSON_IsNull(so)) {
        if (!cJSON_IsObject(so)) {
            fmt(msg, ml, "'stream_options' must be an object");
            return 400;
        }
        if (!get_bool(so, "include_usage", &ch->include_usage, msg, ml))
            return 400;
    }
    bool lp = false;
    d = 0;
    if (j->legacy) { /* completions: "logprobs": the number of top entries, or null */
        if (!get_num(root, "logprobs", 0, SRV_MAX_TOP_LOGPROBS, true, &d, &lp, msg, ml))
            return 400;
    } else {
        if (!get_bool(root, "logprobs", &lp, msg, ml))
            return 400;
        if (!get_num(root, "top_logprobs", 0, SRV_MAX_TOP_LOGPROBS, true, &d, NULL, msg, ml))
            return 400;
        if (!lp && d > 0) {
            fmt(msg, ml, "'top_logprobs' needs 'logprobs': true");
            return 400;
        }
    }
    j->gp.logprobs = lp;
    j->gp.top_logprobs = (int)d;
    /* features this server does not have are refused, not silently ignored */
    const cJSON *rf = cJSON_GetObjectItemCaseSensitive(root, "response_format");
    const cJSON *rft = cJSON_GetObjectItemCaseSensitive(rf, "type");
    if (rf && !cJSON_IsNull(rf) &&
        (!cJSON_IsObject(rf) || !cJSON_IsString(rft) || strcmp(rft->valuestring, "text"))) {
        fmt(msg, ml, "'response_format' other than {\"type\": \"text\"} is not supported (no "
                     "constrained decoding)");
        return 400;
    }
    if (!read_logit_bias(S, root, j, msg, ml))
        return 400;
    if (cJSON_GetObjectItemCaseSensitive(root, "functions") ||
        cJSON_GetObjectItemCaseSensitive(root, "function_call")) {
        fmt(msg, ml, "'functions' and 'function_call' are not supported; use 'tools'");
        return 400;
    }
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
    if (model && !cJSON_IsNull(model) && !cJSON_IsString(model)) {
        fmt(msg, ml, "'model' must be a string");
        return 400;
    }
    /* image budget */
    d = 0;
    if (!get_num(root, "min_pixels", 1, 1e12, true, &d, NULL, msg, ml))
        return 400;
    j->img_opts.min_pixels = (int64_t)d;
    d = 0;
    if (!get_num(root, "max_pixels", 1, 1e12, true, &d, NULL, msg, ml))
        return 400;
    j->img_opts.max_pixels = (int64_t)d;
    if (j->img_opts.min_pixels && j->img_opts.max_pixels &&
        j->img_opts.min_pixels > j->img_opts.max_pixels) {
        fmt(msg, ml, "'min_pixels' must not exceed 'max_pixels'");
        return 400;
    }
    /* which reference's resize: "pil" (default for images) or "torchvision" (for videos) */
    const cJSON *rs = cJSON_GetObjectItemCaseSensitive(root, "resample");
    if (rs && !cJSON_IsNull(rs)) {
        if (cJSON_IsString(rs) && !strcmp(rs->valuestring, "pil")) {
            j->img_opts.resample = QVL_RESAMPLE_PIL;
        } else if (cJSON_IsString(rs) && !strcmp(rs->valuestring, "torchvision")) {
            j->img_opts.resample = QVL_RESAMPLE_TORCHVISION;
        } else {
            fmt(msg, ml, "'resample' must be \"pil\" or \"torchvision\"");
            return 400;
        }
    }
    /* stop: a string or a list of strings */
    const cJSON *stop = cJSON_GetObjectItemCaseSensitive(root, "stop");
    const cJSON *list[SRV_MAX_STOPS];
    int n_stop = 0;
    if (cJSON_IsString(stop)) {
        list[n_stop++] = stop;
    } else if (cJSON_IsArray(stop)) {
        if (cJSON_GetArraySize(stop) > SRV_MAX_STOPS) {
            fmt(msg, ml, "at most %d stop strings", SRV_MAX_STOPS);
            return 400;
        }
        const cJSON *e;
        cJSON_ArrayForEach(e, stop) {
            if (!cJSON_IsString(e)) {
                fmt(msg, ml, "'stop' must be a string or an array of strings");
                return 400;
            }
            list[n_stop++] = e;
        }
    } else if (stop && !cJSON_IsNull(stop)) {
        fmt(msg, ml, "'stop' must be a string or an array of strings");
        return 400;
    }
    j->stops = calloc((size_t)n_stop + 1, sizeof *j->stops);
    if (!j->stops) {
        fmt(msg, ml, "out of memory");
        return 500;
    }
    for (int i = 0; i < n_stop; i++) {
        const char *s = list[i]->valuestring;
        if (!*s)
            continue; /* an empty stop string never matches */
        if (strlen(s) > SRV_MAX_STOP_LEN) {
            fmt(msg, ml, "stop strings are limited to %d bytes", SRV_MAX_STOP_LEN);
            return 400;
        }
        if (!(j->stops[j->n_stop] = strdup(s))) {
            fmt(msg, ml, "out of memory");
            return 500;
        }
        j->n_stop++;
    }
    return 200;
}

/* The start of both completions requests: the body as a JSON object (NULL with a 400 message
 * and *code set when it is not valid UTF-8 or not an object). */
static cJSON *parse_body(const char *body, size_t len, srv_chat *ch, srv_job **out, char *msg,
                         size_t ml, const char **code) {
    *out = NULL;
    *code = "invalid_request_error";
    memset(ch, 0, sizeof *ch);
    if (!srv_utf8_valid(body, len)) {
        *code = "invalid_encoding";
        fmt(msg, ml, "the request body is not valid UTF-8");
        return NULL;
    }
    cJSON *root = cJSON_ParseWithLength(body, len);
    if (!root || !cJSON_IsObject(root)) {
        cJSON_Delete(root);
        *code = "invalid_json";
        fmt(msg, ml, "the request body is not a JSON object");
        return NULL;
    }
    return root;
}

int srv_chat_prepare(srv_state *S, const char *body, size_t len, srv_chat *ch, srv_job **out,
                     char *msg, size_t ml, const char **code) {
    cJSON *root = parse_body(body, len, ch, out, msg, ml, code);
    if (!root)
        return 400;
    chat_build cb;
    memset(&cb, 0, sizeof cb);
    srv_job *j = srv_job_new();
    int32_t *ids = NULL;
    size_t n_ids = 0;
    int st = 200;
    if (!j) {
        fmt(msg, ml, "out of memory");
        st = 500;
        goto out;
    }
    st = parse_params(S, root, j, ch, msg, ml);
    if (st != 200)
        goto out;
    st = read_tools(root, &cb, msg, ml);
    if (st != 200)
        goto out;
    j->tools = cb.n_tools > 0;
    st = render_messages(S, &cb, cJSON_GetObjectItemCaseSensitive(root, "messages"),
                         &j->img_opts, msg, ml);
    if (st != 200)
        goto out;
    char e[512] = "";
    qvl_status qs = qvl_prompt_build_tools(S->model, cb.msgs, cb.n_msgs,
                                           (const char *const *)cb.tools, cb.n_tools, 1,
                                           cb.images, cb.n_images, &j->img_opts, cb.videos,
                                           cb.n_videos, &ids, &n_ids, e, sizeof e);
    if (qs != QVL_OK) {
        fmt(msg, ml, "cannot build the prompt: %s", e[0] ? e : qvl_status_str(qs));
        st = qs == QVL_E_NOMEM ? 500 : 400;
        goto out;
    }
    if (cb.forced) { /* the answer's forced beginning: in the prompt, and in the job's text */
        int32_t *fi = NULL, *all = NULL;
        size_t nf = 0;
        size_t fl = strlen(cb.forced);
        qs = qvl_tokenize(S->model, cb.forced, fl, &fi, &nf);
        if (qs == QVL_OK)
            all = realloc(ids, (n_ids + nf) * sizeof *ids);
        if (all) {
            memcpy(all + n_ids, fi, nf * sizeof *fi);
            ids = all;
            n_ids += nf;
            j->text = cb.forced;
            j->text_n = fl;
            j->text_cap = fl + 1;
            cb.forced = NULL;
        }
        qvl_free(fi);
        if (!all) {
            fmt(msg, ml, "out of memory");
            st = 500;
            goto out;
        }
    }
    /* <|video_pad|> typed into the text would take a video's place */
    uint64_t want_vp = 0, got_vp = 0;
    for (size_t i = 0; i < cb.n_videos; i++) {
        qvl_video_plan vp;
        if (qvl_video_plan_get(S->model, cb.videos[i], &vp, e, sizeof e) == QVL_OK)
            want_vp += (uint64_t)vp.n_tokens;
    }
    for (size_t i = 0; i < n_ids; i++)
        got_vp += ids[i] == S->video_pad;
    if (got_vp != want_vp) {
        fmt(msg, ml, "the message text must not contain video placeholder tokens");
        st = 400;
        goto out;
    }
    if (n_ids >= (size_t)S->o.n_ctx) {
        *code = "context_length_exceeded";
        fmt(msg, ml, "the prompt has %zu tokens but the context holds %d (including at least "
                     "one generated token)",
            n_ids, S->o.n_ctx);
        st = 400;
        goto out;
    }
    j->ids = ids; /* the job owns them now */
    j->n_ids = n_ids;
    ids = NULL;
    j->images = calloc(cb.n_images + 1, sizeof *j->images);
    j->img_bytes = calloc(cb.n_images + 1, sizeof *j->img_bytes);
    j->img_len = calloc(cb.n_images + 1, sizeof *j->img_len);
    if (!j->images || !j->img_bytes || !j->img_len) {
        fmt(msg, ml, "out of memory");
        st = 500;
        goto out;
    }
    for (size_t i = 0; i < cb.n_images; i++) { /* move the images into the job */
        j->images[i] = cb.images[i];
        j->img_bytes[i] = cb.bytes[i];
        j->img_len[i] = cb.len[i];
        cb.images[i] = NULL;
        cb.bytes[i] = NULL;
    }
    j->n_images = cb.n_images;
    if (cb.n_videos) {
        j->videos = calloc(cb.n_videos, sizeof *j->videos);
        if (!j->videos) {
            fmt(msg, ml, "out of memory");
            st = 500;
            goto out;
        }
        for (size_t i = 0; i < cb.n_videos; i++) { /* move the videos into the job */
            j->videos[i] = cb.videos[i];
            cb.videos[i] = NULL;
        }
        j->n_videos = cb.n_videos;
    }
    *out = j;
    j = NULL;
out:
    for (size_t i = 0; i < cb.n_images; i++) {
        qvl_image_free(cb.images[i]);
        free(cb.bytes[i]);
    }
    for (size_t i = 0; i < cb.n_videos; i++)
        qvl_video_free(cb.videos[i]);
    free(cb.msgs);
    free(cb.parts);
    for (size_t i = 0; cb.call_args && i < cb.n_calls; i++)
        free(cb.call_args[i]);
    free(cb.call_args);
    free(cb.calls);
    for (size_t i = 0; i < cb.n_tools; i++)
        free(cb.tools[i]);
    free(cb.tools);
    free(cb.forced);
    qvl_free(ids);
    srv_job_release(NULL, j);
    cJSON_Delete(root);
    if (st == 500)
        *code = "server_error";
    return st;
}

/* ---- responses ------------------------------------------------------------------------------ */
/* The prompt of a completions request: a string, token ids, or a one-element array of either
 * (several prompts would be several choices). *ids is qvl_malloc'd; *text (malloc'd) is the
 * prompt as text when want_text. Returns an HTTP status. */
static int read_prompt(srv_state *S, const cJSON *p, int32_t **ids, size_t *n, bool want_text,
                       char **text, char *msg, size_t ml) {
    if (cJSON_IsArray(p) && cJSON_GetArraySize(p) == 1 &&
        (cJSON_IsString(p->child) || cJSON_IsArray(p->child)))
        p = p->child;
    if (cJSON_IsString(p)) {
        if (qvl_tokenize(S->model, p->valuestring, strlen(p->valuestring), ids, n) != QVL_OK) {
            fmt(msg, ml, "cannot tokenize the prompt");
            return 500;
        }
        if (want_text && !(*text = strdup(p->valuestring))) {
            fmt(msg, ml, "out of memory");
            return 500;
        }
        return 200;
    }
    if (!cJSON_IsArray(p)) {
        fmt(msg, ml, "'prompt' must be a string or an array of token ids");
        return 400;
    }
    for (const cJSON *e = p->child; e; e = e->next)
        if (cJSON_IsString(e) || cJSON_IsArray(e)) {
            fmt(msg, ml, "one prompt per request ('n' is 1)");
            return 400;
        }
    size_t k = (size_t)cJSON_GetArraySize(p);
    if (k > (size_t)S->o.n_ctx) {
        fmt(msg, ml, "the prompt has %zu tokens but the context holds %d", k, S->o.n_ctx);
        return 400;
    }
    *ids = malloc(k * sizeof **ids + 4); /* released with qvl_free, as qvl_tokenize's */
    if (!*ids) {
        fmt(msg, ml, "out of memory");
        return 500;
    }
    const int vocab = qvl_model_n_vocab(S->model);
    size_t i = 0;
    for (const cJSON *e = p->child; e; e = e->next, i++) {
        if (!cJSON_IsNumber(e) || e->valuedouble != floor(e->valuedouble) || e->valuedouble < 0 ||
            e->valuedouble >= vocab) {
            fmt(msg, ml, "'prompt'[%zu] must be a token id below %d", i, vocab);
            return 400;
        }
        (*ids)[i] = (int32_t)e->valuedouble;
    }
    *n = k;
    char *t = NULL;
    if (want_text && (qvl_detokenize(S->model, *ids, k, 0, &t) != QVL_OK || !(*text = strdup(t)))) {
        qvl_free(t);
        fmt(msg, ml, "out of memory");
        return 500;
    }
    qvl_free(t);
    return 200;
}

int srv_text_prepare(srv_state *S, const char *body, size_t len, srv_chat *ch, srv_job **out,
                     char *msg, size_t ml, const char **code) {
    cJSON *root = parse_body(body, len, ch, out, msg, ml, code);
    if (!root)
        return 400;
    srv_job *j = srv_job_new();
    int32_t *ids = NULL;
    size_t n_ids = 0;
    char *text = NULL;
    int st = 200;
    bool echo = false;
    double bo = 1;
    const cJSON *suffix = cJSON_GetObjectItemCaseSensitive(root, "suffix");
    if (!j) {
        fmt(msg, ml, "out of memory");
        st = 500;
        goto out;
    }
    j->legacy = true;
    st = parse_params(S, root, j, ch, msg, ml);
    if (st != 200)
        goto out;
    st = 400;
    if (!get_bool(root, "echo", &echo, msg, ml) ||
        !get_num(root, "best_of", 1, 1e9, true, &bo, NULL, msg, ml))
        goto out;
    if (bo != 1) {
        fmt(msg, ml, "'best_of' must be 1");
        goto out;
    }
    if (suffix && !cJSON_IsNull(suffix) &&
        !(cJSON_IsString(suffix) && !suffix->valuestring[0])) {
        fmt(msg, ml, "'suffix' is not supported");
        goto out;
    }
    j->score_prompt = echo && j->gp.logprobs;
    if (cJSON_GetObjectItemCaseSensitive(root, "messages") ||
        cJSON_GetObjectItemCaseSensitive(root, "tools")) {
        fmt(msg, ml, "'messages' and 'tools' belong to /v1/chat/completions");
        goto out;
    }
    st = read_prompt(S, cJSON_GetObjectItemCaseSensitive(root, "prompt"), &ids, &n_ids, echo,
                     &text, msg, ml);
    if (st != 200)
        goto out;
    st = 400;
    if (n_ids == 0) {
        fmt(msg, ml, "the prompt is empty");
        goto out;
    }
    for (size_t i = 0; i < n_ids; i++)
        if (ids[i] == S->image_pad || ids[i] == S->video_pad) {
            fmt(msg, ml, "the prompt holds an image or video placeholder token; images and "
                         "videos go through /v1/chat/completions");
            goto out;
        }
    if (n_ids >= (size_t)S->o.n_ctx) {
        *code = "context_length_exceeded";
        fmt(msg, ml, "the prompt has %zu tokens but the context holds %d (including at least "
                     "one generated token)",
            n_ids, S->o.n_ctx);
        goto out;
    }
    j->ids = ids;
    j->n_ids = n_ids;
    ids = NULL;
    if (text) {
        j->echo_n = strlen(text);
        j->echo = text;
        text = NULL;
    }
    st = 200;
out:
    if (st == 200) {
        *out = j;
    } else {
        srv_job_release(NULL, j);
    }
    qvl_free(ids);
    free(text);
    cJSON_Delete(root);
    return st;
}

static char *print_delete(cJSON *j) {
    char *s = j ? cJSON_PrintUnformatted(j) : NULL;
    cJSON_Delete(j);
    return s;
}

char *srv_error_json(const char *msg, const char *type, const char *code) {
    /* messages quote request text, maybe cut inside a character: keep the JSON valid UTF-8 */
    char safe[1024];
    size_t n = strlen(msg);
    if (n >= sizeof safe)
        n = sizeof safe - 1;
    memcpy(safe, msg, n);
    safe[n] = 0;
    if (!srv_utf8_valid(safe, n))
        for (size_t i = 0; i < n; i++)
            if ((unsigned char)safe[i] >= 0x80)
                safe[i] = '?';
    cJSON *r = cJSON_CreateObject();
    cJSON *e = cJSON_AddObjectToObject(r, "error");
    cJSON_AddStringToObject(e, "message", safe);
    cJSON_AddStringToObject(e, "type", type);
    cJSON_AddNullToObject(e, "param");
    cJSON_AddStringToObject(e, "code", code);
    return print_delete(r);
}

static void add_usage(cJSON *r, const srv_job *j) {
    cJSON *u = cJSON_AddObjectToObject(r, "usage");
    cJSON_AddNumberToObject(u, "prompt_tokens", (double)j->n_ids);
    cJSON_AddNumberToObject(u, "completion_tokens", (double)j->n_completion);
    cJSON_AddNumberToObject(u, "total_tokens", (double)(j->n_ids + j->n_completion));
    cJSON *d = cJSON_AddObjectToObject(u, "prompt_tokens_details");
    cJSON_AddNumberToObject(d, "cached_tokens", (double)j->n_cached);
}

static cJSON *base_obj(srv_state *S, const char *id, long long created, const char *object) {
    cJSON *r = cJSON_CreateObject();
    cJSON_AddStringToObject(r, "id", id);
    cJSON_AddStringToObject(r, "object", object);
    cJSON_AddNumberToObject(r, "created", (double)created);
    cJSON_AddStringToObject(r, "model", S->model_id);
    cJSON_AddStringToObject(r, "system_fingerprint", "qvl");
    return r;
}

/* o[key] = the string a[0..na) followed by b[0..nb) (either may be empty); false when out of
 * memory. */
static bool add_text2(cJSON *o, const char *key, const char *a, size_t na, const char *b,
                      size_t nb) {
    char *t = malloc(na + nb + 1);
    if (!t)
        return false;
    if (na)
        memcpy(t, a, na);
    if (nb)
        memcpy(t + na, b, nb);
    t[na + nb] = 0;
    bool ok = cJSON_AddStringToObject(o, key, t) != NULL;
    free(t);
    return ok;
}

/* "finish_reason": the reason, or null while the stream goes on */
static void add_finish(cJSON *c, const char *finish) {
    if (finish)
        cJSON_AddStringToObject(c, "finish_reason", finish);
    else
        cJSON_AddNullToObject(c, "finish_reason");
}

/* ---- tool calls in the generated text ---------------------------------------------------- */
static const char TC_OPEN[] = "<tool_call>", TC_CLOSE[] = "</tool_call>";

static const char *find_n(const char *h, size_t n, const char *needle) {
    return memmem(h, n, needle, strlen(needle));
}

size_t srv_tool_safe_len(const char *text, size_t n) {
    const char *o = find_n(text, n, TC_OPEN);
    if (o)
        return (size_t)(o - text);
    /* hold back a tail that is the start of "<tool_call>" */
    size_t k = sizeof TC_OPEN - 1;
    for (size_t t = k - 1; t > 0; t--)
        if (n >= t && !memcmp(text + n - t, TC_OPEN, t))
            return n - t;
    return n;
}

cJSON *srv_tool_calls(const char *text, size_t n, bool indexed, size_t *content_n) {
    const char *o = find_n(text, n, TC_OPEN);
    if (!o)
        return NULL;
    cJSON *calls = cJSON_CreateArray();
    const char *p = o, *end = text + n;
    int k = 0;
    while (calls && p && p < end) {
        const char *body = p + sizeof TC_OPEN - 1;
        const char *c = find_n(body, (size_t)(end - body), TC_CLOSE);
        if (!c) /* an unterminated block (the length ran out): not a call */
            break;
        cJSON *v = cJSON_ParseWithLength(body, (size_t)(c - body));
        const cJSON *name = cJSON_GetObjectItemCaseSensitive(v, "name");
        const cJSON *args = cJSON_GetObjectItemCaseSensitive(v, "arguments");
        if (cJSON_IsObject(v) && cJSON_IsString(name)) {
            char *a = args ? (cJSON_IsString(args) ? strdup(args->valuestring)
                                                   : cJSON_PrintUnformatted(args))
                           : strdup("{}");
            char id[32] = "call_";
            srv_rand_hex(id + 5, 24);
            cJSON *tc = cJSON_CreateObject();
            if (indexed)
                cJSON_AddNumberToObject(tc, "index", k);
            cJSON_AddStringToObject(tc, "id", id);
            cJSON_AddStringToObject(tc, "type", "function");
            cJSON *f = cJSON_AddObjectToObject(tc, "function");
            cJSON_AddStringToObject(f, "name", name->valuestring);
            cJSON_AddStringToObject(f, "arguments", a ? a : "{}");
            free(a);
            cJSON_AddItemToArray(calls, tc);
            k++;
        }
        cJSON_Delete(v);
        p = find_n(c, (size_t)(end - c), TC_OPEN);
    }
    if (!calls || k == 0) {
        cJSON_Delete(calls);
        return NULL;
    }
    *content_n = (size_t)(o - text);
    return calls;
}

size_t srv_stream_avail(const srv_job *j, size_t sent, bool done, cJSON **calls) {
    *calls = NULL;
    if (!j->tools || !j->text)
        return j->text_n;
    if (sent > j->text_n)
        sent = j->text_n;
    if (!done) /* a marker never starts before what was sent: look only at the rest */
        return sent + srv_tool_safe_len(j->text + sent, j->text_n - sent);
    size_t content_n = 0;
    if (j->status == QVL_OK &&
        (*calls = srv_tool_calls(j->text, j->text_n, true, &content_n)) != NULL)
        return content_n;
    return j->text_n;
}

/* {"token", "logprob", "bytes"} of one token: its text (bytes outside a whole UTF-8 character
 * shown as U+FFFD) and raw bytes; a -inf log-probability reported as -9999, as OpenAI does. */
static cJSON *lp_entry(srv_state *S, int32_t id, float logprob) {
    size_t n = 0;
    const char *b = qvl_token_bytes(S->model, id, &n);
    char *t = srv_utf8_lossy(b ? b : "", b ? n : 0);
    cJSON *e = cJSON_CreateObject();
    if (!t || !e) {
        free(t);
        cJSON_Delete(e);
        return NULL;
    }
    cJSON_AddStringToObject(e, "token", t);
    free(t);
    cJSON_AddNumberToObject(e, "logprob", isfinite(logprob) ? logprob : -9999.0);
    cJSON *by = cJSON_AddArrayToObject(e, "bytes");
    for (size_t i = 0; i < n; i++)
        cJSON_AddItemToArray(by, cJSON_CreateNumber((unsigned char)b[i]));
    return e;
}

/* The choice's "logprobs" object: {"content": [...], "refusal": null}. */
static cJSON *logprobs_json(srv_state *S, const srv_lp *lp, size_t n, int top) {
    cJSON *o = cJSON_CreateObject();
    cJSON *a = cJSON_AddArrayToObject(o, "content");
    for (size_t i = 0; i < n; i++) {
        cJSON *e = lp_entry(S, lp[i].id, lp[i].logprob);
        if (!e)
            break;
        cJSON *ta = cJSON_AddArrayToObject(e, "top_logprobs");
        for (int k = 0; k < top && k < SRV_MAX_TOP_LOGPROBS; k++)
            cJSON_AddItemToArray(ta, lp_entry(S, lp[i].top_ids[k], lp[i].top_lp[k]));
        cJSON_AddItemToArray(a, e);
    }
    cJSON_AddNullToObject(o, "refusal");
    return o;
}

char *srv_completion_json(srv_state *S, const char *id, long long created, const srv_job *j) {
    cJSON *r = base_obj(S, id, created, "chat.completion");
    cJSON *cs = cJSON_AddArrayToObject(r, "choices");
    cJSON *c = cJSON_CreateObject();
    cJSON_AddItemToArray(cs, c);
    cJSON_AddNumberToObject(c, "index", 0);
    cJSON *m = cJSON_AddObjectToObject(c, "message");
    cJSON_AddStringToObject(m, "role", "assistant");
    size_t content_n = 0;
    cJSON *calls = j->tools && j->text ? srv_tool_calls(j->text, j->text_n, false, &content_n)
                                       : NULL;
    if (calls) {
        while (content_n > 0 && strchr(" \t\r\n", j->text[content_n - 1]))
            content_n--;
        char *t = content_n ? strndup(j->text, content_n) : NULL;
        if (t)
            cJSON_AddStringToObject(m, "content", t);
        else
            cJSON_AddNullToObject(m, "content");
        free(t);
        cJSON_AddItemToObject(m, "tool_calls", calls);
    } else {
        cJSON_AddStringToObject(m, "content", j->text ? j->text : "");
    }
    cJSON_AddNullToObject(m, "refusal");
    if (j->gp.logprobs)
        cJSON_AddItemToObject(c, "logprobs",
                              logprobs_json(S, j->lp, j->lp_n, j->gp.top_logprobs));
    else
        cJSON_AddNullToObject(c, "logprobs");
    cJSON_AddStringToObject(c, "finish_reason", srv_finish_str_calls(j->finish, calls != NULL));
    add_usage(r, j);
    /* extension (as llama.cpp's server): where the time went, for benchmarks */
    cJSON *t = cJSON_AddObjectToObject(r, "timings");
    cJSON_AddNumberToObject(t, "queued_ms", j->t_start - j->t_submit);
    cJSON_AddNumberToObject(t, "prompt_ms", j->t_prompt - j->t_start);
    cJSON_AddNumberToObject(t, "generation_ms", j->t_end - j->t_prompt);
    return print_delete(r);
}

/* "data: {...}\n\n" of an object, which is released. */
static char *sse_event(cJSON *r) {
    char *js = print_delete(r);
    if (!js)
        return NULL;
    size_t n = strlen(js);
    char *ev = malloc(n + 9);
    if (ev) {
        memcpy(ev, "data: ", 6);
        memcpy(ev + 6, js, n);
        memcpy(ev + 6 + n, "\n\n", 3);
    }
    free(js);
    return ev;
}

char *srv_chunk_sse(srv_state *S, const char *id, long long created, bool first,
                    const char *text, size_t text_n, const char *finish, const srv_job *usage,
                    const srv_lp *lp, size_t n_lp, int top_logprobs) {
    cJSON *r = base_obj(S, id, created, "chat.completion.chunk");
    cJSON *cs = cJSON_AddArrayToObject(r, "choices");
    if (usage) {
        add_usage(r, usage);
    } else {
        cJSON *c = cJSON_CreateObject();
        cJSON_AddItemToArray(cs, c);
        cJSON_AddNumberToObject(c, "index", 0);
        cJSON *d = cJSON_AddObjectToObject(c, "delta");
        if (first)
            cJSON_AddStringToObject(d, "role", "assistant");
        if (text && !add_text2(d, "content", text, text_n, NULL, 0)) {
            cJSON_Delete(r);
            return NULL;
        }
        if (lp)
            cJSON_AddItemToObject(c, "logprobs", logprobs_json(S, lp, n_lp, top_logprobs));
        else
            cJSON_AddNullToObject(c, "logprobs");
        add_finish(c, finish);
    }
    return sse_event(r);
}

char *srv_chunk_tool_calls_sse(srv_state *S, const char *id, long long created,
                               struct cJSON *calls) {
    cJSON *r = base_obj(S, id, created, "chat.completion.chunk");
    cJSON *cs = cJSON_AddArrayToObject(r, "choices");
    cJSON *c = cJSON_CreateObject();
    cJSON_AddItemToArray(cs, c);
    cJSON_AddNumberToObject(c, "index", 0);
    cJSON *d = cJSON_AddObjectToObject(c, "delta");
    cJSON_AddItemToObject(d, "tool_calls", calls);
    cJSON_AddNullToObject(c, "logprobs");
    add_finish(c, NULL);
    return sse_event(r);
}

/* ---- /v1/completions ------------------------------------------------------------------------ */
/* The legacy logprobs object: {"tokens", "token_logprobs", "top_logprobs" (one {token: logprob}
 * object per token), "text_offset"} of the records a[0..na) then b[0..nb); *off is the running
 * offset, in characters of the tokens' texts, of the next token. A NAN log-probability (a
 * scored prompt's first token: nothing before it) is null, as is that token's top object. */
static cJSON *legacy_logprobs_json(srv_state *S, const srv_lp *a, size_t na, const srv_lp *b,
                                   size_t nb, int top, size_t *off) {
    cJSON *o = cJSON_CreateObject();
    cJSON *tk = cJSON_AddArrayToObject(o, "tokens");
    cJSON *tl = cJSON_AddArrayToObject(o, "token_logprobs");
    cJSON *tp = cJSON_AddArrayToObject(o, "top_logprobs");
    cJSON *to = cJSON_AddArrayToObject(o, "text_offset");
    for (size_t i = 0; i < na + nb; i++) {
        const srv_lp *r = i < na ? &a[i] : &b[i - na];
        size_t bn = 0;
        const char *tb = qvl_token_bytes(S->model, r->id, &bn);
        char *t = srv_utf8_lossy(tb ? tb : "", tb ? bn : 0);
        if (!t)
            break;
        cJSON_AddItemToArray(tk, cJSON_CreateString(t));
        cJSON_AddItemToArray(to, cJSON_CreateNumber((double)*off));
        for (const char *c = t; *c; c++) /* characters: bytes that do not continue one */
            *off += ((unsigned char)*c & 0xc0) != 0x80;
        free(t);
        if (isnan(r->logprob)) {
            cJSON_AddItemToArray(tl, cJSON_CreateNull());
            cJSON_AddItemToArray(tp, cJSON_CreateNull());
            continue;
        }
        cJSON_AddItemToArray(tl, cJSON_CreateNumber(isfinite(r->logprob) ? r->logprob : -9999.0));
        cJSON *d = cJSON_CreateObject();
        for (int k = 0; k < top && k < SRV_MAX_TOP_LOGPROBS; k++) {
            tb = qvl_token_bytes(S->model, r->top_ids[k], &bn);
            t = srv_utf8_lossy(tb ? tb : "", tb ? bn : 0);
            if (t)
                cJSON_AddNumberToObject(d, t, isfinite(r->top_lp[k]) ? r->top_lp[k] : -9999.0);
            free(t);
        }
        cJSON_AddItemToArray(tp, d);
    }
    return o;
}

static cJSON *text_choice(cJSON *r) {
    cJSON *cs = cJSON_AddArrayToObject(r, "choices");
    cJSON *c = cJSON_CreateObject();
    cJSON_AddItemToArray(cs, c);
    cJSON_AddNumberToObject(c, "index", 0);
    return c;
}

char *srv_text_completion_json(srv_state *S, const char *id, long long created, const srv_job *j) {
    cJSON *r = base_obj(S, id, created, "text_completion");
    cJSON *c = text_choice(r);
    if (!add_text2(c, "text", j->echo, j->echo_n, j->text, j->text_n)) {
        cJSON_Delete(r);
        return NULL;
    }
    size_t off = 0;
    if (j->gp.logprobs)
        cJSON_AddItemToObject(c, "logprobs",
                              legacy_logprobs_json(S, j->plp, j->plp_n, j->lp, j->lp_n,
                                                   j->gp.top_logprobs, &off));
    else
        cJSON_AddNullToObject(c, "logprobs");
    cJSON_AddStringToObject(c, "finish_reason", srv_finish_str(j->finish));
    add_usage(r, j);
    return print_delete(r);
}

char *srv_text_chunk_sse(srv_state *S, const char *id, long long created, const char *text,
                         size_t text_n, const char *finish, const srv_job *usage,
                         const srv_lp *lp, size_t n_lp, int top_logprobs, size_t *off) {
    cJSON *r = base_obj(S, id, created, "text_completion");
    if (usage) {
        cJSON_AddArrayToObject(r, "choices");
        add_usage(r, usage);
        return sse_event(r);
    }
    cJSON *c = text_choice(r);
    if (!add_text2(c, "text", text, text_n, NULL, 0)) {
        cJSON_Delete(r);
        return NULL;
    }
    if (lp)
        cJSON_AddItemToObject(c, "logprobs",
                              legacy_logprobs_json(S, lp, n_lp, NULL, 0, top_logprobs, off));
    else
        cJSON_AddNullToObject(c, "logprobs");
    add_finish(c, finish);
    return sse_event(r);
}

char *srv_models_json(srv_state *S) {
    cJSON *r = cJSON_CreateObject();
    cJSON_AddStringToObject(r, "object", "list");
    cJSON *d = cJSON_AddArrayToObject(r, "data");
    cJSON *m = cJSON_CreateObject();
    cJSON_AddItemToArray(d, m);
    cJSON_AddStringToObject(m, "id", S->model_id);
    cJSON_AddStringToObject(m, "object", "model");
    cJSON_AddNumberToObject(m, "created", (double)S->created);
    cJSON_AddStringToObject(m, "owned_by", "qvl");
    cJSON_AddNumberToObject(m, "context_length", S->o.n_ctx);
    return print_delete(r);
}

int srv_tokenize_json(srv_state *S, const char *body, size_t len, char **out, char *msg,
                      size_t ml) {
    *out = NULL;
    if (!srv_utf8_valid(body, len)) {
        fmt(msg, ml, "the request body is not valid UTF-8");
        return 400;
    }
    cJSON *root = cJSON_ParseWithLength(body, len);
    const cJSON *c = cJSON_GetObjectItemCaseSensitive(root, "content");
    if (!cJSON_IsObject(root) || !cJSON_IsString(c)) {
        cJSON_Delete(root);
        fmt(msg, ml, "expected a JSON object with a string 'content'");
        return 400;
    }
    int32_t *ids = NULL;
    size_t n = 0;
    qvl_status st = qvl_tokenize(S->model, c->valuestring, strlen(c->valuestring), &ids, &n);
    cJSON_Delete(root);
    if (st != QVL_OK) {
        fmt(msg, ml, "tokenize: %s", qvl_status_str(st));
        return st == QVL_E_NOMEM ? 500 : 400;
    }
    cJSON *r = cJSON_CreateObject();
    cJSON *a = cJSON_AddArrayToObject(r, "tokens");
    for (size_t i = 0; i < n; i++)
        cJSON_AddItemToArray(a, cJSON_CreateNumber(ids[i]));
    qvl_free(ids);
    *out = print_delete(r);
    if (!*out) {
        fmt(msg, ml, "out of memory");
        return 500;
    }
    return 200;
}
