/* qvl.c - command-line front end: argument parsing and printing only; all work is done by
 * libqvl through the public header (image and video URLs are downloaded by server/fetch.c). */
#include "qvl.h"
#include "fetch.h" /* server/: http(s) image URLs */

#include <cjson/cJSON.h>
#include <errno.h>
#include <limits.h>
#include <stdbool.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define MAX_IMAGES 64
#define MAX_STOPS  16

static int quiet;
int qvl_cli_bench(int argc, char **argv); /* bench.c */
int qvl_cli_serve(int argc, char **argv); /* server/serve.c */

static int die(int code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "qvl: ");
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    return code;
}

static void log_stderr(qvl_log_level lvl, const char *msg, void *user) {
    (void)user;
    static const char *names[] = {"error", "warning", "info", "debug"};
    fprintf(stderr, "qvl %s: %s\n", names[lvl], msg);
}

/* Image and --video arguments may be http(s) URLs: downloaded first, at most MAX_FETCH_BYTES in
 * FETCH_TIMEOUT_S seconds, into *bytes (free()). */
#define MAX_FETCH_BYTES ((size_t)256 << 20)
#define FETCH_TIMEOUT_S 60
static qvl_status fetch_arg(const char *url, uint8_t **bytes, size_t *n, char *err,
                            size_t err_len) {
    char ferr[512] = "";
    int r = media_fetch(url, MAX_FETCH_BYTES, FETCH_TIMEOUT_S, bytes, n, ferr, sizeof ferr);
    if (r != 0)
        snprintf(err, err_len, "cannot download it: %s", ferr);
    return r == 0 ? QVL_OK : r == -3 ? QVL_E_NOMEM : QVL_E_IO;
}

/* An image argument: a file or a URL. */
static qvl_status load_image_arg(const char *arg, unsigned flags, qvl_image **img, char *err,
                                 size_t err_len) {
    if (!media_is_remote(arg))
        return qvl_image_load_file_ex(arg, 0, flags, img, err, err_len);
    *img = NULL;
    uint8_t *bytes = NULL;
    size_t n = 0;
    qvl_status s = fetch_arg(arg, &bytes, &n, err, err_len);
    if (s == QVL_OK)
        s = qvl_image_load_mem_ex(bytes, n, 0, flags, img, err, err_len);
    free(bytes);
    return s;
}

/* A --video argument: a file or frame directory, or the URL of a video file. */
static qvl_status load_video_arg(const qvl_model *m, const char *arg, double frames_fps,
                                 const qvl_video_opts *vo, qvl_video **out, char *err,
                                 size_t err_len) {
    if (!media_is_remote(arg))
        return qvl_video_load(m, arg, frames_fps, vo, out, err, err_len);
    *out = NULL;
    uint8_t *bytes = NULL;
    size_t n = 0;
    qvl_status s = fetch_arg(arg, &bytes, &n, err, err_len);
    if (s == QVL_OK)
        s = qvl_video_load_mem(m, bytes, n, vo, out, err, err_len);
    free(bytes);
    return s;
}

static bool parse_long(const char *s, long lo, long hi, long *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi)
        return false;
    *out = v;
    return true;
}

static bool parse_float(const char *s, double lo, double hi, double *out) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !(v >= lo && v <= hi))
        return false;
    *out = v;
    return true;
}

/* ---- options shared by subcommands ------------------------------------------------------- */
typedef struct opts {
    const char *model;
    const char *images[MAX_IMAGES];
    int n_images;
    const char *videos[MAX_IMAGES];
    int n_videos;
    double video_fps, sample_fps;
    long max_frames, video_min_pixels, video_max_pixels;
    const char *prompt, *system, *out;
    const char *stops[MAX_STOPS];
    int n_stops;
    long max_new, top_k, threads, n_ctx, top_logits, logprobs, seed;
    double temp, top_p, min_p, rep, presence, frequency;
    long min_pixels, max_pixels;
    qvl_resample resample;
    unsigned image_flags; /* QVL_IMAGE_IGNORE_EXIF, QVL_IMAGE_DROP_ALPHA */
    bool json, ignore_eos, skip_special;
    int quant;
    qvl_kv_type kv;
    bool bf16_dot;
    int load_mode; /* qvl_load_mode */
    bool quant_cache, quant_vision;
    const char *positional[256];
    int n_pos;
} opts;

static void opts_init(opts *o) {
    memset(o, 0, sizeof *o);
    o->max_new = 256;
    o->top_k = -1;
    o->temp = -1;
    o->top_p = -1;
    o->rep = -1;
    o->logprobs = -1;
    o->skip_special = true;
}

#define NEED_ARG()                                                                          \
    do {                                                                                    \
        if (i + 1 >= argc)                                                                  \
            return die(2, "option %s needs a value", a);                              \
    } while (0)
#define NUM(field, lo, hi)                                                                  \
    do {                                                                                    \
        NEED_ARG();                                                                         \
        long v_;                                                                            \
        if (!parse_long(argv[++i], lo, hi, &v_))                                            \
            return die(2, "option %s: '%s' is not an integer in [%ld, %ld]", a, argv[i],    \
                       (long)(lo), (long)(hi)),                                             \
                   2;                                                                       \
        o->field = v_;                                                                      \
    } while (0)
#define FLT(field, lo, hi)                                                                  \
    do {                                                                                    \
        NEED_ARG();                                                                         \
        double v_;                                                                          \
        if (!parse_float(argv[++i], lo, hi, &v_))                                           \
            return die(2, "option %s: '%s' is not a number in [%g, %g]", a, argv[i],        \
                       (double)(lo), (double)(hi)),                                         \
                   2;                                                                       \
        o->field = v_;                                                                      \
    } while (0)

/* Parse options; returns 0 or an exit code (> 0) after printing the reason. */
static int parse_opts(int argc, char **argv, opts *o) {
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-m") || !strcmp(a, "--model")) {
            NEED_ARG();
            o->model = argv[++i];
        } else if (!strcmp(a, "-i") || !strcmp(a, "--image")) {
            NEED_ARG();
            if (o->n_images == MAX_IMAGES)
                return die(2, "at most %d images", MAX_IMAGES);
            o->images[o->n_images++] = argv[++i];
        } else if (!strcmp(a, "--video")) {
            NEED_ARG();
            if (o->n_videos == MAX_IMAGES)
                return die(2, "at most %d videos", MAX_IMAGES);
            o->videos[o->n_videos++] = argv[++i];
        } else if (!strcmp(a, "--video-fps")) {
            FLT(video_fps, 0.001, 10000);
        } else if (!strcmp(a, "--sample-fps")) {
            FLT(sample_fps, 0.001, 1000);
        } else if (!strcmp(a, "--max-frames")) {
            NUM(max_frames, 2, 100000);
        } else if (!strcmp(a, "--video-min-pixels")) {
            NUM(video_min_pixels, 1, 1L << 40);
        } else if (!strcmp(a, "--video-max-pixels")) {
            NUM(video_max_pixels, 1, 1L << 40);
        } else if (!strcmp(a, "-p") || !strcmp(a, "--prompt")) {
            NEED_ARG();
            o->prompt = argv[++i];
        } else if (!strcmp(a, "-s") || !strcmp(a, "--system")) {
            NEED_ARG();
            o->system = argv[++i];
        } else if (!strcmp(a, "-o") || !strcmp(a, "--out")) {
            NEED_ARG();
            o->out = argv[++i];
        } else if (!strcmp(a, "--stop")) {
            NEED_ARG();
            if (o->n_stops == MAX_STOPS)
                return die(2, "at most %d stop strings", MAX_STOPS);
            o->stops[o->n_stops++] = argv[++i];
        } else if (!strcmp(a, "-n") || !strcmp(a, "--max-new")) {
            NUM(max_new, 0, 1 << 24);
        } else if (!strcmp(a, "--top-k")) {
            NUM(top_k, 0, 1 << 24);
        } else if (!strcmp(a, "-t") || !strcmp(a, "--threads")) {
            NUM(threads, 1, 256);
        } else if (!strcmp(a, "-c") || !strcmp(a, "--ctx")) {
            NUM(n_ctx, 1, 1 << 24);
        } else if (!strcmp(a, "--top-logits")) {
            NUM(top_logits, 0, 1000);
        } else if (!strcmp(a, "--logprobs")) {
            NUM(logprobs, 0, QVL_MAX_TOP_LOGPROBS);
        } else if (!strcmp(a, "--seed")) {
            NUM(seed, 0, LONG_MAX);
        } else if (!strcmp(a, "--min-pixels")) {
            NUM(min_pixels, 1, 1L << 40);
        } else if (!strcmp(a, "--max-pixels")) {
            NUM(max_pixels, 1, 1L << 40);
        } else if (!strcmp(a, "--ignore-exif")) {
            o->image_flags |= QVL_IMAGE_IGNORE_EXIF;
        } else if (!strcmp(a, "--drop-alpha")) {
            o->image_flags |= QVL_IMAGE_DROP_ALPHA;
        } else if (!strcmp(a, "--resample")) {
            NEED_ARG();
            const char *v = argv[++i];
            if (!strcmp(v, "pil"))
                o->resample = QVL_RESAMPLE_PIL;
            else if (!strcmp(v, "torchvision"))
                o->resample = QVL_RESAMPLE_TORCHVISION;
            else
                return die(2, "option --resample: '%s' is not pil or torchvision", v);
        } else if (!strcmp(a, "--temp")) {
            FLT(temp, 0, 100);
        } else if (!strcmp(a, "--top-p")) {
            FLT(top_p, 0, 1);
        } else if (!strcmp(a, "--min-p")) {
            FLT(min_p, 0, 1);
        } else if (!strcmp(a, "--repeat-penalty")) {
            FLT(rep, 0.01, 100);
        } else if (!strcmp(a, "--presence-penalty")) {
            FLT(presence, -10, 10);
        } else if (!strcmp(a, "--frequency-penalty")) {
            FLT(frequency, -10, 10);
        } else if (!strcmp(a, "--bf16-dot")) {
            o->bf16_dot = true;
        } else if (!strcmp(a, "--kv")) {
            NEED_ARG();
            if (!qvl_kv_type_from_name(argv[++i], &o->kv))
                return die(2, "--kv takes f32, bf16 or f16");
        } else if (!strcmp(a, "--quant-cache")) {
            o->quant_cache = true;
        } else if (!strcmp(a, "--quant-vision")) {
            o->quant_vision = true;
        } else if (!strcmp(a, "--load")) {
            NEED_ARG();
            if (!qvl_load_mode_from_name(argv[++i], &o->load_mode))
                return die(2, "--load takes auto, mmap or copy");
        } else if (!strcmp(a, "--quant")) {
            NEED_ARG();
            const char *q = argv[++i];
            if (!strcmp(q, "q8"))
                o->quant = QVL_QUANT_Q8;
            else if (!strcmp(q, "q4"))
                o->quant = QVL_QUANT_Q4;
            else if (strcmp(q, "none"))
                return die(2, "--quant takes q8, q4 or none");
        } else if (!strcmp(a, "--json")) {
            o->json = true;
        } else if (!strcmp(a, "--ignore-eos")) {
            o->ignore_eos = true;
        } else if (!strcmp(a, "--keep-special")) {
            o->skip_special = false;
        } else if (!strcmp(a, "-q") || !strcmp(a, "--quiet")) {
            quiet = 1;
        } else if (!strcmp(a, "-v") || !strcmp(a, "--verbose")) {
            qvl_log_set(log_stderr, NULL, QVL_LOG_DEBUG);
        } else if (a[0] == '-' && a[1] && strcmp(a, "-")) {
            return die(2, "unknown option '%s' (see qvl --help)", a);
        } else {
            if (o->n_pos == 256)
                return die(2, "too many arguments");
            o->positional[o->n_pos++] = a;
        }
    }
    return 0;
}

static int g_quant, g_bf16_dot, g_load_mode, g_quant_cache, g_quant_vision;

/* A progress line on stderr for long steps, only on a terminal and after about a second. */
typedef struct progress_state {
    char stage[16];
    double t0;
    bool shown;
} progress_state;
static progress_state g_prog;

static double mono_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static int on_progress(const char *stage, double done, double total, void *user) {
    (void)user;
    if (strcmp(stage, g_prog.stage)) {
        snprintf(g_prog.stage, sizeof g_prog.stage, "%s", stage);
        g_prog.t0 = mono_ms();
    }
    bool end = done >= total;
    if (mono_ms() - g_prog.t0 > 1000 || (g_prog.shown && end)) {
        if (!strcmp(stage, "load"))
            fprintf(stderr, "\rqvl: loading weights %5.1f%% ", total > 0 ? 100 * done / total : 0);
        else
            fprintf(stderr, "\rqvl: %s %.0f/%.0f      ", stage, done, total);
        g_prog.shown = true;
    }
    if (g_prog.shown && end) {
        fprintf(stderr, "\r%60s\r", "");
        g_prog.shown = false;
    }
    return 0;
}

static bool want_progress(const opts *o) {
    return !quiet && !o->json && isatty(2);
}
static bool g_want_progress;

static int load_model(const char *dir, qvl_model **m) {
    char err[1024] = "";
    if (!dir)
        return die(2, "no model: give -m DIR (a Hugging Face Qwen3-VL model directory)");
    qvl_model_params mp = qvl_model_default_params();
    mp.quant = (qvl_quant)g_quant;
    mp.bf16_dot = g_bf16_dot;
    mp.mmap = g_load_mode;
    mp.quant_vision = g_quant_vision;
    if (g_quant_vision && !g_quant)
        return die(2, "--quant-vision goes with --quant q8|q4");
    char *cache = g_quant_cache ? qvl_default_cache_dir() : NULL;
    if (g_quant_cache && !cache)
        return die(2, "--quant-cache: set QVL_CACHE_DIR or HOME");
    mp.quant_cache_dir = cache;
    if (g_want_progress)
        mp.progress = on_progress;
    qvl_status s = qvl_model_load(dir, &mp, m, err, sizeof err);
    qvl_free(cache);
    if (s != QVL_OK)
        return die(1, "cannot load model: %s", err[0] ? err : qvl_status_str(s));
    return 0;
}

/* ---- info ---------------------------------------------------------------------------------- */
static int cmd_info(opts *o) {
    if (!o->model && o->n_pos)
        o->model = o->positional[0];
    qvl_model *m = NULL;
    int rc = load_model(o->model, &m);
    if (rc)
        return rc;
    char *js = qvl_model_info_json(m);
    if (!js) {
        qvl_model_free(m);
        return die(1, "out of memory");
    }
    if (o->json) {
        printf("%s\n", js);
    } else {
        cJSON *j = cJSON_Parse(js);
        const cJSON *t = cJSON_GetObjectItem(j, "text"), *v = cJSON_GetObjectItem(j, "vision");
        const cJSON *tk = cJSON_GetObjectItem(j, "tokens");
#define N(o_, k_) cJSON_GetNumberValue(cJSON_GetObjectItem(o_, k_))
        printf("model       %s\n", cJSON_GetStringValue(cJSON_GetObjectItem(j, "dir")));
        printf("arch        Qwen3VLForConditionalGeneration (%s), weights %s\n",
               cJSON_GetStringValue(cJSON_GetObjectItem(j, "model_type")),
               cJSON_GetStringValue(cJSON_GetObjectItem(j, "dtype")));
        printf("text        %.0f layers, hidden %.0f, heads %.0f/%.0f kv, head_dim %.0f, "
               "ffn %.0f, vocab %.0f, theta %.0f\n",
               N(t, "layers"), N(t, "hidden_size"), N(t, "heads"), N(t, "kv_heads"),
               N(t, "head_dim"), N(t, "intermediate_size"), N(t, "vocab_size"),
               N(t, "rope_theta"));
        printf("            %.3f B params, %.1f MB, lm_head %s\n", N(t, "params") / 1e9,
               N(t, "bytes") / 1e6,
               cJSON_IsTrue(cJSON_GetObjectItem(t, "tied_lm_head")) ? "tied" : "separate");
        printf("vision      %.0f blocks, hidden %.0f, heads %.0f, ffn %.0f, patch %.0f, merge "
               "%.0f, out %.0f\n",
               N(v, "depth"), N(v, "hidden_size"), N(v, "heads"), N(v, "intermediate_size"),
               N(v, "patch_size"), N(v, "spatial_merge_size"), N(v, "out_hidden_size"));
        printf("            %.3f B params, %.1f MB\n", N(v, "params") / 1e9, N(v, "bytes") / 1e6);
        printf("total       %.3f B params in %.0f tensors\n", N(j, "params_total") / 1e9,
               N(j, "n_tensors"));
        printf("tokens      image_pad %.0f, video_pad %.0f, vision_start %.0f, vision_end %.0f, "
               "eos",
               N(tk, "image_pad"), N(tk, "video_pad"), N(tk, "vision_start"),
               N(tk, "vision_end"));
        const cJSON *e;
        cJSON_ArrayForEach(e, cJSON_GetObjectItem(tk, "eos")) printf(" %.0f", e->valuedouble);
        printf("\nfiles      ");
        cJSON_ArrayForEach(e, cJSON_GetObjectItem(j, "files"))
            printf(" %s", cJSON_GetStringValue(cJSON_GetObjectItem(e, "name")));
        printf("\n");
#undef N
        cJSON_Delete(j);
    }
    qvl_free(js);
    qvl_model_free(m);
    return 0;
}

/* ---- tokenize / detokenize ---------------------------------------------------------------- */
static int cmd_tokenize(opts *o) {
    qvl_model *m = NULL;
    if (o->n_pos != 1)
        return die(2, "usage: qvl tokenize -m DIR [--json] TEXT");
    int rc = load_model(o->model, &m);
    if (rc)
        return rc;
    int32_t *ids = NULL;
    size_t n = 0;
    qvl_status s = qvl_tokenize(m, o->positional[0], strlen(o->positional[0]), &ids, &n);
    if (s != QVL_OK) {
        qvl_model_free(m);
        return die(1, "tokenize: %s", qvl_status_str(s));
    }
    printf("[");
    for (size_t i = 0; i < n; i++)
        printf("%s%d", i ? ", " : "", ids[i]);
    printf("]\n");
    qvl_free(ids);
    qvl_model_free(m);
    return 0;
}

static int cmd_detokenize(opts *o) {
    qvl_model *m = NULL;
    if (o->n_pos < 1)
        return die(2, "usage: qvl detokenize -m DIR ID... (or a JSON array)");
    int32_t ids[4096];
    size_t n = 0;
    for (int i = 0; i < o->n_pos; i++) {
        const char *p = o->positional[i];
        while (*p) {
            while (*p == '[' || *p == ']' || *p == ',' || *p == ' ')
                p++;
            if (!*p)
                break;
            char *end;
            errno = 0;
            long v = strtol(p, &end, 10);
            if (end == p || errno || v < 0 || v > INT32_MAX)
                return die(2, "detokenize: '%s' is not a list of token ids", o->positional[i]);
            if (n == 4096)
                return die(2, "detokenize: at most 4096 ids");
            ids[n++] = (int32_t)v;
            p = end;
        }
    }
    int rc = load_model(o->model, &m);
    if (rc)
        return rc;
    char *text = NULL;
    qvl_status s = qvl_detokenize(m, ids, n, 0, &text);
    if (s != QVL_OK) {
        qvl_model_free(m);
        return die(1, "detokenize: %s (ids must be below the vocabulary size)",
                   qvl_status_str(s));
    }
    printf("%s\n", text);
    qvl_free(text);
    qvl_model_free(m);
    return 0;
}

/* ---- generation ---------------------------------------------------------------------------- */
typedef struct stream_state {
    bool json;
} stream_state;

static int on_text(const char *text, size_t len, int32_t token, void *user) {
    (void)token;
    stream_state *st = user;
    if (!st->json) {
        fwrite(text, 1, len, stdout);
        fflush(stdout);
    }
    return 0;
}

static void json_add_ids(cJSON *o, const char *key, const int32_t *ids, size_t n) {
    cJSON *a = cJSON_AddArrayToObject(o, key);
    for (size_t i = 0; i < n; i++)
        cJSON_AddItemToArray(a, cJSON_CreateNumber(ids[i]));
}

static char *demo_model_dir(char *err, size_t err_len);

/* the sampling and stopping options of run and chat */
static qvl_gen_params gen_params(const opts *o) {
    qvl_gen_params gp = qvl_gen_default_params();
    gp.max_new_tokens = (int)o->max_new;
    gp.temperature = (float)o->temp;
    gp.top_k = (int)o->top_k;
    gp.top_p = (float)o->top_p;
    gp.min_p = (float)o->min_p;
    gp.repetition_penalty = (float)o->rep;
    gp.presence_penalty = (float)o->presence;
    gp.frequency_penalty = (float)o->frequency;
    gp.seed = (uint64_t)o->seed;
    gp.ignore_eos = o->ignore_eos;
    gp.stop = o->stops;
    gp.n_stop = o->n_stops;
    return gp;
}

static int cmd_run(opts *o) {
    char err[1024] = "";
    bool demo = false;
    char *demo_dir = NULL;
    if (o->logprobs >= 0 && !o->json)
        return die(2, "--logprobs is reported in the --json output: add --json");
    if (!o->model) {
        char *hub = NULL;
        if (qvl_model_resolve("Qwen/Qwen3-VL-2B-Instruct", &hub, err, sizeof err) == QVL_OK &&
            hub) {
            o->model = hub; /* leaked at exit on purpose: lives for the whole command */
        } else {
            qvl_free(hub);
            demo_dir = demo_model_dir(err, sizeof err);
            if (!demo_dir)
                return die(1, "no model given and no demo model: %s", err);
            o->model = demo_dir;
            demo = true;
            fprintf(stderr,
                    "qvl: no -m given and Qwen/Qwen3-VL-2B-Instruct is not in the Hugging Face "
                    "cache:\nqvl: running a RANDOM-WEIGHT demo model (%s); its output is "
                    "meaningless.\n",
                    demo_dir);
        }
    }
    double t0 = 0;
    qvl_model *m = NULL;
    {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        t0 = ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
    }
    int rc = load_model(o->model, &m);
    if (rc)
        return rc;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    double load_ms = ts.tv_sec * 1e3 + ts.tv_nsec / 1e6 - t0;

    qvl_image *imgs[MAX_IMAGES] = {0};
    qvl_video *vids[MAX_IMAGES] = {0};
    int n_img = 0, n_vid = 0;
    qvl_ctx *c = NULL;
    int32_t *ids = NULL;
    size_t n_ids = 0;
    qvl_gen_result res = {0};
    rc = 1;
    for (int i = 0; i < o->n_images; i++) {
        qvl_status s = load_image_arg(o->images[i], o->image_flags, &imgs[n_img], err, sizeof err);
        if (s != QVL_OK) {
            die(1, "image %s: %s", o->images[i], err);
            goto out;
        }
        n_img++;
    }
    qvl_video_opts vo = {o->sample_fps, 0, (int)o->max_frames, o->video_min_pixels,
                         o->video_max_pixels, 0, o->resample, o->image_flags};
    for (int i = 0; i < o->n_videos; i++) {
        qvl_status s = load_video_arg(m, o->videos[i], o->video_fps, &vo, &vids[n_vid], err,
                                      sizeof err);
        if (s != QVL_OK) {
            die(1, "video %s: %s", o->videos[i], err);
            goto out;
        }
        n_vid++;
    }
    if (demo && n_img == 0) { /* the demo describes a generated gradient picture */
        static uint8_t rgb[96 * 64 * 3];
        for (int y = 0; y < 64; y++)
            for (int x = 0; x < 96; x++) {
                uint8_t *p = rgb + (y * 96 + x) * 3;
                p[0] = (uint8_t)(x * 255 / 95);
                p[1] = (uint8_t)(y * 255 / 63);
                p[2] = (uint8_t)((x + y) & 0xff);
            }
        if (qvl_image_from_rgb(rgb, 96, 64, &imgs[0], err, sizeof err) != QVL_OK) {
            die(1, "demo image: %s", err);
            goto out;
        }
        n_img = 1;
    }
    const char *prompt = o->prompt ? o->prompt
                                   : n_vid ? "What happens in this video?"
                                   : n_img ? "Describe this image."
                                           : "Hello!";
    qvl_message msgs[2];
    int nm = 0;
    if (o->system)
        msgs[nm++] = (qvl_message){"system", o->system, 0, 0};
    msgs[nm++] = (qvl_message){"user", prompt, n_img, n_vid};
    qvl_ctx_params cp = qvl_ctx_default_params();
    cp.n_ctx = (int)o->n_ctx;
    cp.n_threads = (int)o->threads;
    cp.kv_type = o->kv;
    cp.image.min_pixels = o->min_pixels;
    cp.image.max_pixels = o->max_pixels;
    cp.image.resample = o->resample;
    qvl_status s = qvl_prompt_build_mm(m, msgs, (size_t)nm, 1, imgs, (size_t)n_img, &cp.image,
                                       vids, (size_t)n_vid, &ids, &n_ids, err, sizeof err);
    if (s != QVL_OK) {
        die(1, "prompt: %s", err);
        goto out;
    }
    if (cp.n_ctx == 0) { /* default: the prompt plus the generation budget, at least 4096 */
        long need = (long)n_ids + (o->max_new ? o->max_new : 4096) + 16;
        cp.n_ctx = (int)(need > 4096 ? need : 4096);
    }
    s = qvl_ctx_create(m, &cp, &c, err, sizeof err);
    if (s != QVL_OK) {
        die(1, "context: %s", err);
        goto out;
    }
    if (g_want_progress)
        qvl_ctx_set_progress(c, on_progress, NULL);
    s = qvl_ctx_eval_mm(c, ids, n_ids, imgs, (size_t)n_img, vids, (size_t)n_vid);
    if (s != QVL_OK) {
        die(1, "prompt evaluation: %s", qvl_ctx_errmsg(c));
        goto out;
    }
    cJSON *top = NULL;
    if (o->top_logits > 0) {
        int nv = 0;
        const float *lg = qvl_ctx_logits(c, &nv);
        top = cJSON_CreateArray();
        long k = o->top_logits < nv ? o->top_logits : nv;
        int32_t *best = calloc((size_t)k, sizeof *best);
        for (long r = 0; best && r < k; r++) {
            int32_t bi = -1;
            for (int v = 0; v < nv; v++) {
                bool used = false;
                for (long q = 0; q < r; q++)
                    used |= best[q] == v;
                if (!used && (bi < 0 || lg[v] > lg[bi]))
                    bi = v;
            }
            best[r] = bi;
            cJSON *pair = cJSON_CreateArray();
            cJSON_AddItemToArray(pair, cJSON_CreateNumber(bi));
            cJSON_AddItemToArray(pair, cJSON_CreateNumber(lg[bi]));
            cJSON_AddItemToArray(top, pair);
        }
        free(best);
    }
    qvl_gen_params gp = gen_params(o);
    gp.logprobs = o->logprobs >= 0;
    gp.top_logprobs = o->logprobs > 0 ? (int)o->logprobs : 0;
    stream_state ss = {o->json};
    s = qvl_ctx_generate(c, &gp, on_text, &ss, &res);
    if (s != QVL_OK && s != QVL_E_CANCELLED) {
        cJSON_Delete(top);
        die(1, "generation: %s", qvl_ctx_errmsg(c));
        goto out;
    }
    double vision_ms = 0, prefill_ms = 0;
    qvl_ctx_timings(c, &vision_ms, &prefill_ms);
    if (o->json) {
        cJSON *j = cJSON_CreateObject();
        json_add_ids(j, "prompt_ids", ids, n_ids);
        cJSON *ia = cJSON_AddArrayToObject(j, "images");
        for (int i = 0; i < n_img; i++) {
            qvl_image_plan pl;
            if (qvl_image_plan_get(m, imgs[i], &cp.image, &pl, err, sizeof err) != QVL_OK)
                continue;
            cJSON *e = cJSON_CreateObject();
            cJSON *g = cJSON_AddArrayToObject(e, "grid_thw");
            cJSON_AddItemToArray(g, cJSON_CreateNumber(pl.grid_t));
            cJSON_AddItemToArray(g, cJSON_CreateNumber(pl.grid_h));
            cJSON_AddItemToArray(g, cJSON_CreateNumber(pl.grid_w));
            cJSON_AddNumberToObject(e, "tokens", (double)pl.n_tokens);
            cJSON_AddItemToArray(ia, e);
        }
        if (n_vid) {
            cJSON *va = cJSON_AddArrayToObject(j, "videos");
            for (int i = 0; i < n_vid; i++) {
                qvl_video_plan vp;
                if (qvl_video_plan_get(m, vids[i], &vp, err, sizeof err) != QVL_OK)
                    continue;
                cJSON *e = cJSON_CreateObject();
                cJSON *g = cJSON_AddArrayToObject(e, "grid_thw");
                cJSON_AddItemToArray(g, cJSON_CreateNumber(vp.grid_t));
                cJSON_AddItemToArray(g, cJSON_CreateNumber(vp.grid_h));
                cJSON_AddItemToArray(g, cJSON_CreateNumber(vp.grid_w));
                cJSON_AddNumberToObject(e, "tokens", (double)vp.n_tokens);
                double tsv[4096];
                size_t nt = qvl_video_timestamps(m, vids[i], tsv, 4096);
                cJSON *ta = cJSON_AddArrayToObject(e, "timestamps");
                for (size_t k = 0; k < nt && k < 4096; k++)
                    cJSON_AddItemToArray(ta, cJSON_CreateNumber(tsv[k]));
                int64_t fi[4096];
                size_t nf = qvl_video_frame_indices(vids[i], fi, 4096);
                cJSON *fa = cJSON_AddArrayToObject(e, "frame_indices");
                for (size_t k = 0; k < nf && k < 4096; k++)
                    cJSON_AddItemToArray(fa, cJSON_CreateNumber((double)fi[k]));
                cJSON_AddItemToArray(va, e);
            }
        }
        json_add_ids(j, "generated_ids", res.tokens, res.n_tokens);
        cJSON_AddStringToObject(j, "text", res.text);
        cJSON_AddStringToObject(j, "finish_reason",
                                res.finish == QVL_FINISH_LENGTH ? "length" : "stop");
        if (top)
            cJSON_AddItemToObject(j, "prompt_top_logits", top);
        if (res.logprobs) {
            cJSON *la = cJSON_AddArrayToObject(j, "logprobs");
            for (size_t i = 0; i < res.n_tokens; i++) {
                cJSON *e = cJSON_CreateObject();
                cJSON_AddNumberToObject(e, "id", res.tokens[i]);
                cJSON_AddNumberToObject(e, "logprob", res.logprobs[i]);
                cJSON *ta = cJSON_AddArrayToObject(e, "top");
                for (int k = 0; k < res.n_top; k++) {
                    size_t at = i * (size_t)res.n_top + (size_t)k;
                    cJSON *pair = cJSON_CreateArray();
                    cJSON_AddItemToArray(pair, cJSON_CreateNumber(res.top_ids[at]));
                    cJSON_AddItemToArray(pair, cJSON_CreateNumber(res.top_logprobs[at]));
                    cJSON_AddItemToArray(ta, pair);
                }
                cJSON_AddItemToArray(la, e);
            }
        }
        top = NULL;
        cJSON *t = cJSON_AddObjectToObject(j, "timings");
        cJSON_AddNumberToObject(t, "load_ms", load_ms);
        cJSON_AddNumberToObject(t, "vision_ms", vision_ms);
        cJSON_AddNumberToObject(t, "prefill_ms", prefill_ms);
        cJSON_AddNumberToObject(t, "decode_ms", res.decode_ms);
        cJSON_AddNumberToObject(t, "prompt_tokens", (double)n_ids);
        cJSON_AddNumberToObject(t, "generated_tokens", (double)res.n_tokens);
        char *txt = cJSON_PrintUnformatted(j);
        printf("%s\n", txt);
        free(txt);
        cJSON_Delete(j);
    } else {
        printf("\n");
        if (!quiet)
            fprintf(stderr,
                    "qvl: load %.0f ms, prompt %zu tokens in %.0f ms (%.1f tok/s), generated %zu "
                    "tokens in %.0f ms (%.2f tok/s), finish: %s\n",
                    load_ms, n_ids, prefill_ms, prefill_ms > 0 ? n_ids / prefill_ms * 1e3 : 0,
                    res.n_tokens, res.decode_ms,
                    res.decode_ms > 0 ? res.n_tokens / res.decode_ms * 1e3 : 0,
                    res.finish == QVL_FINISH_LENGTH ? "length" : "stop");
    }
    cJSON_Delete(top);
    rc = 0;
out:
    qvl_gen_result_free(&res);
    qvl_free(ids);
    qvl_ctx_free(c);
    for (int i = 0; i < n_img; i++)
        qvl_image_free(imgs[i]);
    for (int i = 0; i < n_vid; i++)
        qvl_video_free(vids[i]);
    qvl_model_free(m);
    qvl_free(demo_dir);
    return rc;
}

/* ---- preprocess ------------------------------------------------------------------------------ */
static int preprocess_videos(opts *o, qvl_model *m) {
    cJSON *arr = cJSON_CreateArray();
    int rc = 0;
    qvl_video_opts vo = {o->sample_fps, 0, (int)o->max_frames, o->video_min_pixels,
                         o->video_max_pixels, 0, o->resample, o->image_flags};
    for (int i = 0; i < o->n_videos; i++) {
        char err[1024] = "";
        qvl_video *v = NULL;
        qvl_video_plan pl;
        qvl_status s = load_video_arg(m, o->videos[i], o->video_fps, &vo, &v, err, sizeof err);
        if (s == QVL_OK)
            s = qvl_video_plan_get(m, v, &pl, err, sizeof err);
        if (s != QVL_OK) {
            fprintf(stderr, "qvl: %s: %s\n", o->videos[i], err);
            qvl_video_free(v);
            rc = 1;
            continue;
        }
        int64_t idx[4096];
        double ts[2048];
        size_t nf = qvl_video_frame_indices(v, idx, 4096);
        size_t ng = qvl_video_timestamps(m, v, ts, 2048);
        if (o->json) {
            cJSON *e = cJSON_CreateObject();
            cJSON_AddStringToObject(e, "path", o->videos[i]);
            cJSON *fa = cJSON_AddArrayToObject(e, "frame_indices");
            for (size_t k = 0; k < nf && k < 4096; k++)
                cJSON_AddItemToArray(fa, cJSON_CreateNumber((double)idx[k]));
            cJSON_AddNumberToObject(e, "resized_width", pl.resized_width);
            cJSON_AddNumberToObject(e, "resized_height", pl.resized_height);
            cJSON *g = cJSON_AddArrayToObject(e, "grid_thw");
            cJSON_AddItemToArray(g, cJSON_CreateNumber(pl.grid_t));
            cJSON_AddItemToArray(g, cJSON_CreateNumber(pl.grid_h));
            cJSON_AddItemToArray(g, cJSON_CreateNumber(pl.grid_w));
            cJSON *ta = cJSON_AddArrayToObject(e, "timestamps");
            for (size_t k = 0; k < ng && k < 2048; k++)
                cJSON_AddItemToArray(ta, cJSON_CreateNumber(ts[k]));
            cJSON_AddNumberToObject(e, "tokens", (double)pl.n_tokens);
            cJSON_AddItemToArray(arr, e);
        } else {
            printf("%s: %zu frames sampled (", o->videos[i], nf);
            for (size_t k = 0; k < nf && k < 4096; k++)
                printf("%s%lld", k ? " " : "", (long long)idx[k]);
            printf("), -> %dx%d, grid (%d, %d, %d), %lld tokens; pairs at", pl.resized_width,
                   pl.resized_height, pl.grid_t, pl.grid_h, pl.grid_w, (long long)pl.n_tokens);
            for (size_t k = 0; k < ng && k < 2048; k++)
                printf(" %.1fs", ts[k]);
            printf("\n");
        }
        qvl_video_free(v);
    }
    if (o->json) {
        cJSON *j = cJSON_CreateObject();
        cJSON_AddItemToObject(j, "videos", arr);
        char *txt = cJSON_PrintUnformatted(j);
        printf("%s\n", txt);
        free(txt);
        cJSON_Delete(j);
    } else {
        cJSON_Delete(arr);
    }
    return rc;
}

static int cmd_preprocess(opts *o) {
    if (o->n_videos > 0) {
        qvl_model *m = NULL;
        if (o->model) {
            int rc = load_model(o->model, &m);
            if (rc)
                return rc;
        }
        int rc = preprocess_videos(o, m);
        qvl_model_free(m);
        if (o->n_pos == 0)
            return rc;
    }
    if (o->n_pos < 1)
        return die(2, "usage: qvl preprocess [-m DIR] [--min-pixels N] [--max-pixels N] [--json] "
                      "IMAGE...");
    qvl_model *m = NULL;
    if (o->model) {
        int rc = load_model(o->model, &m);
        if (rc)
            return rc;
    }
    int rc = 0;
    cJSON *arr = cJSON_CreateArray();
    for (int i = 0; i < o->n_pos; i++) {
        char err[1024] = "";
        qvl_image *img = NULL;
        qvl_image_plan pl;
        qvl_image_opts io = {o->min_pixels, o->max_pixels, o->resample};
        qvl_status s =
            load_image_arg(o->positional[i], o->image_flags, &img, err, sizeof err);
        if (s == QVL_OK)
            s = qvl_image_plan_get(m, img, &io, &pl, err, sizeof err);
        if (s != QVL_OK) {
            fprintf(stderr, "qvl: %s: %s\n", o->positional[i], err);
            qvl_image_free(img);
            rc = 1;
            continue;
        }
        int w, h;
        qvl_image_size(img, &w, &h);
        if (o->json) {
            cJSON *e = cJSON_CreateObject();
            cJSON_AddStringToObject(e, "path", o->positional[i]);
            cJSON_AddNumberToObject(e, "width", w);
            cJSON_AddNumberToObject(e, "height", h);
            cJSON_AddNumberToObject(e, "resized_width", pl.resized_width);
            cJSON_AddNumberToObject(e, "resized_height", pl.resized_height);
            cJSON *g = cJSON_AddArrayToObject(e, "grid_thw");
            cJSON_AddItemToArray(g, cJSON_CreateNumber(pl.grid_t));
            cJSON_AddItemToArray(g, cJSON_CreateNumber(pl.grid_h));
            cJSON_AddItemToArray(g, cJSON_CreateNumber(pl.grid_w));
            cJSON_AddNumberToObject(e, "tokens", (double)pl.n_tokens);
            cJSON_AddItemToArray(arr, e);
        } else {
            printf("%s: %dx%d -> %dx%d, grid (%d, %d, %d), %lld tokens\n", o->positional[i], w,
                   h, pl.resized_width, pl.resized_height, pl.grid_t, pl.grid_h, pl.grid_w,
                   (long long)pl.n_tokens);
        }
        qvl_image_free(img);
    }
    if (o->json) {
        cJSON *j = cJSON_CreateObject();
        cJSON_AddItemToObject(j, "images", arr);
        char *txt = cJSON_PrintUnformatted(j);
        printf("%s\n", txt);
        free(txt);
        cJSON_Delete(j);
    } else {
        cJSON_Delete(arr);
    }
    qvl_model_free(m);
    return rc;
}

/* ---- encode ---------------------------------------------------------------------------------- */
static int cmd_encode(opts *o) {
    if (o->n_pos < 1 || !o->out)
        return die(2, "usage: qvl encode -m DIR IMAGE... --out FILE");
    qvl_model *m = NULL;
    int rc = load_model(o->model, &m);
    if (rc)
        return rc;
    FILE *f = fopen(o->out, "wb");
    if (!f) {
        qvl_model_free(m);
        return die(1, "cannot write %s: %s", o->out, strerror(errno));
    }
    /* File: one JSON header line, then raw little-endian float32 tensors in the order listed. */
    qvl_features *feats = calloc((size_t)o->n_pos, sizeof *feats);
    cJSON *j = cJSON_CreateObject();
    cJSON *arr = cJSON_AddArrayToObject(j, "images");
    rc = 0;
    for (int i = 0; i < o->n_pos && feats; i++) {
        char err[1024] = "";
        qvl_image *img = NULL;
        qvl_image_opts io = {o->min_pixels, o->max_pixels, o->resample};
        qvl_status s =
            load_image_arg(o->positional[i], o->image_flags, &img, err, sizeof err);
        if (s == QVL_OK)
            s = qvl_vision_encode(m, img, &io, (int)o->threads, &feats[i], err, sizeof err);
        qvl_image_free(img);
        if (s != QVL_OK) {
            rc = die(1, "%s: %s", o->positional[i], err);
            break;
        }
        cJSON *e = cJSON_CreateObject();
        cJSON_AddStringToObject(e, "path", o->positional[i]);
        cJSON *g = cJSON_AddArrayToObject(e, "grid_thw");
        cJSON_AddItemToArray(g, cJSON_CreateNumber(feats[i].grid_t));
        cJSON_AddItemToArray(g, cJSON_CreateNumber(feats[i].grid_h));
        cJSON_AddItemToArray(g, cJSON_CreateNumber(feats[i].grid_w));
        cJSON_AddNumberToObject(e, "tokens", (double)feats[i].n_tokens);
        cJSON *sh = cJSON_AddArrayToObject(e, "embd_shape");
        cJSON_AddItemToArray(sh, cJSON_CreateNumber((double)feats[i].n_tokens));
        cJSON_AddItemToArray(sh, cJSON_CreateNumber(feats[i].dim));
        cJSON *dsh = cJSON_AddArrayToObject(e, "deepstack_shape");
        cJSON_AddItemToArray(dsh, cJSON_CreateNumber(feats[i].n_deepstack));
        cJSON_AddItemToArray(dsh, cJSON_CreateNumber((double)feats[i].n_tokens));
        cJSON_AddItemToArray(dsh, cJSON_CreateNumber(feats[i].dim));
        cJSON_AddItemToArray(arr, e);
    }
    if (!feats)
        rc = die(1, "out of memory");
    if (rc == 0) {
        cJSON_AddStringToObject(j, "format", "qvl-features-1");
        cJSON_AddStringToObject(j, "dtype", "f32le");
        cJSON_AddStringToObject(j, "layout",
                                "per image: embd [tokens, dim] then deepstack [n, tokens, dim]");
        char *txt = cJSON_PrintUnformatted(j);
        fprintf(f, "%s\n", txt);
        free(txt);
        for (int i = 0; i < o->n_pos; i++) {
            size_t ne = (size_t)feats[i].n_tokens * (size_t)feats[i].dim;
            fwrite(feats[i].embd, sizeof(float), ne, f);
            fwrite(feats[i].deepstack, sizeof(float), ne * (size_t)feats[i].n_deepstack, f);
        }
    }
    if (fclose(f) != 0 && rc == 0)
        rc = die(1, "writing %s failed", o->out);
    for (int i = 0; feats && i < o->n_pos; i++)
        qvl_features_free(&feats[i]);
    free(feats);
    cJSON_Delete(j);
    qvl_model_free(m);
    return rc;
}

/* ---- chat ------------------------------------------------------------------------------------ */
static int cmd_chat(opts *o) {
    qvl_model *m = NULL;
    int rc = load_model(o->model, &m);
    if (rc)
        return rc;
    char err[1024] = "";
    qvl_ctx_params cp = qvl_ctx_default_params();
    cp.n_ctx = o->n_ctx ? (int)o->n_ctx : 8192;
    cp.n_threads = (int)o->threads;
    cp.kv_type = o->kv;
    cp.image.min_pixels = o->min_pixels;
    cp.image.max_pixels = o->max_pixels;
    cp.image.resample = o->resample;
    qvl_ctx *c = NULL;
    if (qvl_ctx_create(m, &cp, &c, err, sizeof err) != QVL_OK) {
        qvl_model_free(m);
        return die(1, "context: %s", err);
    }
    qvl_image *pending[MAX_IMAGES];
    int n_pending = 0;
    char line[65536];
    bool first = true, interactive = isatty(0);
    if (interactive)
        fprintf(stderr, "qvl chat: type a message; '/image PATH' attaches an image to the next "
                        "turn; '/reset' starts over; Ctrl-D quits.\n");
    for (;;) {
        if (interactive)
            fprintf(stderr, "> ");
        if (!fgets(line, sizeof line, stdin))
            break;
        size_t L = strlen(line);
        while (L && (line[L - 1] == '\n' || line[L - 1] == '\r'))
            line[--L] = 0;
        if (!L)
            continue;
        if (!strncmp(line, "/image ", 7)) {
            if (n_pending == MAX_IMAGES) {
                fprintf(stderr, "qvl: too many images for one turn\n");
                continue;
            }
            if (load_image_arg(line + 7, o->image_flags, &pending[n_pending], err, sizeof err) !=
                QVL_OK)
                fprintf(stderr, "qvl: %s\n", err);
            else
                n_pending++;
            continue;
        }
        if (!strcmp(line, "/reset")) {
            qvl_ctx_reset(c);
            first = true;
            continue;
        }
        /* render this turn alone; later turns first close the previous assistant turn */
        qvl_message msgs[2];
        int nm = 0;
        if (first && o->system)
            msgs[nm++] = (qvl_message){"system", o->system, 0, 0};
        msgs[nm++] = (qvl_message){"user", line, n_pending, 0};
        int32_t *ids = NULL, *all = NULL;
        size_t n_ids = 0;
        qvl_status s = qvl_prompt_build(m, msgs, (size_t)nm, 1, pending, (size_t)n_pending,
                                        &cp.image, &ids, &n_ids, err, sizeof err);
        if (s == QVL_OK && !first) {
            /* the generated answer ended without its <|im_end|>\n: add them */
            int32_t *close_ids = NULL;
            size_t n_close = 0;
            s = qvl_tokenize(m, "<|im_end|>\n", 11, &close_ids, &n_close);
            all = s == QVL_OK ? malloc((n_close + n_ids) * sizeof *all) : NULL;
            if (all) {
                memcpy(all, close_ids, n_close * sizeof *all);
                memcpy(all + n_close, ids, n_ids * sizeof *all);
                qvl_free(ids);
                ids = all;
                all = NULL;
                n_ids += n_close;
            } else if (s == QVL_OK) {
                s = QVL_E_NOMEM;
            }
            qvl_free(close_ids);
        }
        if (s == QVL_OK)
            s = qvl_ctx_eval(c, ids, n_ids, pending, (size_t)n_pending);
        for (int i = 0; i < n_pending; i++)
            qvl_image_free(pending[i]);
        n_pending = 0;
        if (ids != all)
            qvl_free(ids);
        if (s != QVL_OK) {
            fprintf(stderr, "qvl: %s\n", err[0] ? err : qvl_ctx_errmsg(c));
            err[0] = 0;
            continue;
        }
        first = false;
        qvl_gen_params gp = gen_params(o);
        qvl_gen_result res = {0};
        stream_state ss = {false};
        s = qvl_ctx_generate(c, &gp, on_text, &ss, &res);
        printf("\n");
        fflush(stdout);
        if (s != QVL_OK)
            fprintf(stderr, "qvl: %s\n", qvl_ctx_errmsg(c));
        qvl_gen_result_free(&res);
    }
    for (int i = 0; i < n_pending; i++)
        qvl_image_free(pending[i]);
    qvl_ctx_free(c);
    qvl_model_free(m);
    return 0;
}

/* ---- demo model ------------------------------------------------------------------------------ */
/* The demo model lives in demo-tiny under qvl's cache directory (qvl_default_cache_dir:
 * $QVL_CACHE_DIR, $XDG_CACHE_HOME/qvl, ~/.cache/qvl), or /tmp/qvl-demo-tiny without one; it is
 * generated on first use. */
static char *demo_model_dir(char *err, size_t err_len) {
    char *base = qvl_default_cache_dir();
    char dir[PATH_MAX];
    if (base)
        snprintf(dir, sizeof dir, "%s/demo-tiny", base);
    else
        snprintf(dir, sizeof dir, "/tmp/qvl-demo-tiny");
    qvl_free(base);
    char cfg[PATH_MAX + 32];
    snprintf(cfg, sizeof cfg, "%s/config.json", dir);
    struct stat st;
    if (stat(cfg, &st) == 0)
        return strdup(dir);
    fprintf(stderr, "qvl: generating the demo model in %s (once)\n", dir);
    if (qvl_demo_model_write(dir, err, err_len) != QVL_OK)
        return NULL;
    return strdup(dir);
}

static void usage(void) {
    fprintf(stderr,
            "usage: qvl <command> [options]\n"
            "commands:\n"
            "  run        -m DIR [-i IMAGE]... [-p PROMPT] [-s SYSTEM] [-n MAX_NEW] [--temp T]\n"
            "             [--top-k K] [--top-p P] [--min-p P] [--repeat-penalty R]\n"
            "             [--presence-penalty P] [--frequency-penalty P] [--seed S] [--stop S]\n"
            "             [--ignore-eos] [--min-pixels N] [--max-pixels N] [-t THREADS] [-c CTX]\n"
            "             [--resample pil|torchvision] [--ignore-exif] [--drop-alpha]\n"
            "             [--json [--top-logits K] [--logprobs K]] [-q] [--quant q8|q4]\n"
            "             [--kv f32|bf16|f16]\n"
            "             [--bf16-dot] [--load auto|mmap|copy] [--quant-cache] [--quant-vision]\n"
            "             [--video FILE|DIR [--video-fps F] [--sample-fps F] [--max-frames N]\n"
            "             [--video-min-pixels N] [--video-max-pixels N]]\n"
            "             without -m: Qwen/Qwen3-VL-2B-Instruct from the HF cache, else a\n"
            "             random-weight demo model\n"
            "  chat       -m DIR [-s SYSTEM]   interactive; '/image PATH' attaches an image;\n"
            "             takes run's sampling, stop, --ctx, --kv, --quant*, --load options\n"
            "  info       -m DIR [--json]      architecture, parameters, files, token ids\n"
            "  tokenize   -m DIR TEXT          ids as a JSON array\n"
            "  detokenize -m DIR ID...         text\n"
            "  preprocess [-m DIR] [--min-pixels N] [--max-pixels N] [--json] IMAGE...\n"
            "             [--video FILE|DIR ...]   (run's video options)\n"
            "  encode     -m DIR IMAGE... --out FILE   merged + DeepStack features\n"
            "  serve      -m DIR [--host H] [--port P] [--slots N] [--api-key K] [--ctx N] [--kv T]\n"
            "             [--max-body-bytes N] [--max-image-pixels N] [--allow-local-files DIR]\n"
            "             [--allow-remote-media [--fetch-timeout SEC]]\n"
            "             OpenAI-compatible HTTP server (POST /v1/chat/completions)\n"
            "  bench      -m DIR [--quant q8|q4] [--kv T] [--bf16-dot] [--load M] [--quant-cache]\n"
            "             [--quant-vision] [-t N] [--reps N] [--json] [--no-large]\n"
            "  -m also takes a hub repo id (ORG/NAME) found in the local Hugging Face cache.\n"
            "  An IMAGE (-i, /image, preprocess, encode) or a --video file may also be an\n"
            "  http(s) URL: it is downloaded first (at most 256 MiB, 60 s).\n"
            "  --kv: KV cache element type (default f32; bf16/f16 halve its memory).\n"
            "  --resample: which reference's bicubic resize and normalisation: pil (transformers'\n"
            "    PIL processor, qwen-vl-utils) or torchvision (the Fast and video processors);\n"
            "    default pil for images, torchvision for videos.\n"
            "  --ignore-exif: keep images as stored instead of turning them upright by their EXIF\n"
            "    orientation (as transformers' load_image does).\n"            "  --drop-alpha: an RGBA image keeps its stored colours where it is transparent (as\n"
            "    transformers' convert(\"RGB\") does) instead of being composited onto white (as\n"
            "    qwen-vl-utils and vLLM do).\n"
            "  --bf16-dot: prefill and vision multiply bf16-rounded activations (AVX-512 BF16,\n"
            "  about 2x faster there; logits move by ~1e-2 relative).\n"
            "  --load: auto (default) uses the weight files in place where the kernel maps them\n"
            "  through 2 MiB pages, else copies them into huge-page memory; mmap: always in\n"
            "  place; copy: always a copy (decode streams through 4 KiB pages at about half\n"
            "  speed on some virtual machines).\n"
            "  --quant-cache: keep --quant's matrices in $QVL_CACHE_DIR (else\n"
            "  $XDG_CACHE_HOME/qvl or ~/.cache/qvl) and map them from there on later loads.\n"
            "  --quant-vision: quantise the vision tower's matrices too (int8 products there).\n");
}

int main(int argc, char **argv) {
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") ||
        !strcmp(argv[1], "help")) {
        usage();
        return argc < 2 ? 2 : 0;
    }
    const char *cmd = argv[1];
    qvl_log_set(log_stderr, NULL, QVL_LOG_WARN); /* -v: everything */
    if (!strcmp(cmd, "bench"))
        return qvl_cli_bench(argc - 2, argv + 2);
    if (!strcmp(cmd, "serve"))
        return qvl_cli_serve(argc - 2, argv + 2);
    opts o;
    opts_init(&o);
    int rc = parse_opts(argc - 2, argv + 2, &o);
    if (rc)
        return rc;
    g_quant = o.quant;
    g_bf16_dot = o.bf16_dot;
    g_load_mode = o.load_mode;
    g_quant_cache = o.quant_cache;
    g_quant_vision = o.quant_vision;
    g_want_progress = want_progress(&o);
    /* libcurl's global setup before any thread starts: for image URLs given here, or typed in
     * a chat */
    bool remote = !strcmp(cmd, "chat");
    for (int i = 0; i < o.n_images; i++)
        remote |= media_is_remote(o.images[i]);
    for (int i = 0; i < o.n_pos; i++)
        remote |= media_is_remote(o.positional[i]);
    for (int i = 0; i < o.n_videos; i++)
        remote |= media_is_remote(o.videos[i]);
    if (remote)
        media_fetch_init();
    if (!strcmp(cmd, "run"))
        return cmd_run(&o);
    if (!strcmp(cmd, "chat"))
        return cmd_chat(&o);
    if (!strcmp(cmd, "info"))
        return cmd_info(&o);
    if (!strcmp(cmd, "tokenize"))
        return cmd_tokenize(&o);
    if (!strcmp(cmd, "detokenize"))
        return cmd_detokenize(&o);
    if (!strcmp(cmd, "preprocess"))
        return cmd_preprocess(&o);
    if (!strcmp(cmd, "encode"))
        return cmd_encode(&o);
    usage();
    return die(2, "unknown command '%s'", cmd);
}
