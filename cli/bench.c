/* bench.c - `qvl bench`: end-to-end speed figures on a model directory, measured against the
 * machine's memory read bandwidth in the same run. Not part of the test suite.
 *
 *   qvl bench -m DIR [--quant q8|q4] [-t N] [--reps N] [--json] [--no-large]
 *
 * Figures (median over repetitions after one warm-up, min also reported): load time; vision
 * encode of a 400x300 and a 1024x768 image (and patches/s); prefill tok/s at 512 tokens; decode
 * tok/s over 128 tokens, and at a 1536-token context (without --no-large, as the 1024x768 image);
 * time to first token for a 400x300 image + 10-token prompt; peak RSS;
 * memory read bandwidth; decode as a fraction of the bandwidth limit
 * (bytes of weights read per token / seconds per token / bandwidth), each decode repetition
 * against the read loop run just before and after it. */
#include "qvl.h"
#include "../bench/memread.h"

#include <cjson/cJSON.h>
#include <stdio.h> /* before jpeglib.h, which uses FILE */
#include <jpeglib.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static int cmp_d(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

typedef struct stat2 {
    double min, med;
} stat2;

static stat2 summarize(double *v, int n) {
    qsort(v, (size_t)n, sizeof *v, cmp_d);
    stat2 s = {v[0], n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2])};
    return s;
}

/* ---- memory read bandwidth ------------------------------------------------------------------ */
typedef struct bw_arg {
    const uint64_t *p;
    size_t n;
    uint64_t sink;
} bw_arg;

static void *bw_thread(void *v) {
    bw_arg *a = v;
    a->sink = memread_xor(a->p, a->n);
    return NULL;
}

/* The 2-thread (n_threads) read loop over 1 GiB in transparent huge pages, as the weights are
 * held (through 4 KiB pages the same loop reads markedly slower on virtual machines). */
typedef struct bw_buf {
    uint64_t *p;
    size_t n; /* 64-bit words */
} bw_buf;

static bool bw_alloc(bw_buf *b) {
    size_t bytes = (size_t)1 << 30;
    void *mp = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mp == MAP_FAILED)
        return false;
#ifdef MADV_HUGEPAGE
    madvise(mp, bytes, MADV_HUGEPAGE);
#endif
    b->p = mp;
    b->n = bytes / 8;
    for (size_t i = 0; i < b->n; i++)
        b->p[i] = i * 0x9e3779b97f4a7c15ull;
    return true;
}

/* best of 5 passes, GB/s */
static double bw_measure(const bw_buf *b, int n_threads) {
    double best = 0;
    uint64_t sink = 0;
    for (int rep = 0; rep < 5; rep++) {
        pthread_t th[64];
        bw_arg args[64];
        int nt = n_threads < 64 ? n_threads : 64;
        double t0 = now_ms();
        for (int i = 0; i < nt; i++) {
            args[i].p = b->p + b->n / nt * i;
            args[i].n = b->n / nt;
            pthread_create(&th[i], NULL, bw_thread, &args[i]);
        }
        for (int i = 0; i < nt; i++) {
            pthread_join(th[i], NULL);
            sink ^= args[i].sink;
        }
        double gbs = (double)(b->n * 8) / ((now_ms() - t0) / 1e3) / 1e9;
        if (gbs > best)
            best = gbs;
    }
    if (sink == 42) /* keep the reads */
        fprintf(stderr, " ");
    return best;
}

/* The samples are taken by a child process forked at the start (while this process has one
 * thread) that keeps its 1 GiB for the whole run: the buffer does not count in this process's
 * peak RSS (reported below), and it is not given back between samples. Giving 1 GiB back just
 * before a decode repetition slowed it (2B q4, the same process alternating: 43.9 tok/s after a
 * child that freed 1 GiB, 46.7 without one, 47.7 after a sample from a child that keeps its
 * memory): a VM's guest reports freed pages to the host, work that competes with the decode's
 * threads for a few seconds. Without the child (fork failed) the samples are taken in this
 * process from a buffer mapped for each. */
typedef struct bw_sampler {
    pid_t pid; /* 0: no child */
    int req, resp;
    int n_threads;
} bw_sampler;

static void bw_child(int req, int resp, int n_threads) {
    bw_buf b;
    bool ok = bw_alloc(&b);
    char c;
    while (read(req, &c, 1) == 1) {
        double g = ok ? bw_measure(&b, n_threads) : 0;
        if (write(resp, &g, sizeof g) != (ssize_t)sizeof g)
            break;
    }
    _exit(0);
}

static void bw_start(bw_sampler *s, int n_threads) {
    int q[2], r[2];
    s->pid = 0;
    s->n_threads = n_threads;
    if (pipe(q) != 0)
        return;
    if (pipe(r) != 0) {
        close(q[0]);
        close(q[1]);
        return;
    }
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        close(q[1]);
        close(r[0]);
        bw_child(q[0], r[1], n_threads);
    }
    close(q[0]);
    close(r[1]);
    if (pid < 0) {
        close(q[1]);
        close(r[0]);
        return;
    }
    s->pid = pid;
    s->req = q[1];
    s->resp = r[0];
}

static double bw_sample(bw_sampler *s) {
    double g = 0;
    if (s->pid > 0) {
        char c = 's';
        if (write(s->req, &c, 1) == 1 && read(s->resp, &g, sizeof g) == (ssize_t)sizeof g)
            return g;
        return 0;
    }
    bw_buf b;
    if (!bw_alloc(&b))
        return 0;
    g = bw_measure(&b, s->n_threads);
    munmap(b.p, b.n * 8);
    return g;
}

static void bw_stop(bw_sampler *s) {
    if (s->pid > 0) {
        close(s->req);
        close(s->resp);
        waitpid(s->pid, NULL, 0);
        s->pid = 0;
    }
}

/* greedy generation of steps + 1 tokens past end-of-sequence: steps decode steps (the first
 * token comes from the logits already there) */
static qvl_gen_params greedy_steps(int steps) {
    qvl_gen_params gp = qvl_gen_default_params();
    gp.temperature = 0;
    gp.max_new_tokens = steps + 1;
    gp.ignore_eos = 1;
    return gp;
}

static qvl_image *noise_image(int w, int h) {
    uint8_t *rgb = malloc((size_t)w * h * 3);
    uint64_t x = 88172645463325252ull;
    for (size_t i = 0; i < (size_t)w * h * 3; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        rgb[i] = (uint8_t)x;
    }
    qvl_image *img = NULL;
    qvl_image_from_rgb(rgb, w, h, &img, NULL, 0);
    free(rgb);
    return img;
}

/* A w x h JPEG (quality 90) of a smooth synthetic picture, in memory (malloc'd). */
static unsigned char *make_jpeg(int w, int h, unsigned long *len) {
    struct jpeg_compress_struct ci;
    struct jpeg_error_mgr jerr;
    ci.err = jpeg_std_error(&jerr);
    jpeg_create_compress(&ci);
    unsigned char *buf = NULL;
    jpeg_mem_dest(&ci, &buf, len);
    ci.image_width = (JDIMENSION)w;
    ci.image_height = (JDIMENSION)h;
    ci.input_components = 3;
    ci.in_color_space = JCS_RGB;
    jpeg_set_defaults(&ci);
    jpeg_set_quality(&ci, 90, TRUE);
    jpeg_start_compress(&ci, TRUE);
    unsigned char *row = malloc((size_t)w * 3);
    while (ci.next_scanline < ci.image_height) {
        int y = (int)ci.next_scanline;
        for (int x = 0; x < w; x++) {
            row[x * 3] = (unsigned char)(x * 255 / w);
            row[x * 3 + 1] = (unsigned char)(y * 255 / h);
            row[x * 3 + 2] = (unsigned char)((x * y) >> 8);
        }
        JSAMPROW rp = row;
        jpeg_write_scanlines(&ci, &rp, 1);
    }
    jpeg_finish_compress(&ci);
    jpeg_destroy_compress(&ci);
    free(row);
    return buf;
}

int qvl_cli_bench(int argc, char **argv) {
    const char *dir = NULL;
    int threads = 0, reps = 3;
    bool json = false, large = true;
    qvl_kv_type kv = QVL_KV_F32;
    qvl_model_params mp = qvl_model_default_params();
    char *cache = NULL; /* --quant-cache: qvl_default_cache_dir() (freed at exit) */
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-m") && i + 1 < argc) {
            dir = argv[++i];
        } else if (!strcmp(a, "-t") && i + 1 < argc) {
            threads = atoi(argv[++i]);
        } else if (!strcmp(a, "--reps") && i + 1 < argc) {
            reps = atoi(argv[++i]);
        } else if (!strcmp(a, "--quant") && i + 1 < argc) {
            const char *q = argv[++i];
            if (!strcmp(q, "q8"))
                mp.quant = QVL_QUANT_Q8;
            else if (!strcmp(q, "q4"))
                mp.quant = QVL_QUANT_Q4;
            else if (strcmp(q, "none") && strcmp(q, "bf16")) {
                fprintf(stderr, "qvl bench: --quant takes q8, q4 or none\n");
                return 2;
            }
        } else if (!strcmp(a, "--bf16-dot")) {
            mp.bf16_dot = 1;
        } else if (!strcmp(a, "--quant-vision")) {
            mp.quant_vision = 1;
        } else if (!strcmp(a, "--quant-cache")) {
            cache = qvl_default_cache_dir();
            mp.quant_cache_dir = cache;
        } else if (!strcmp(a, "--load") && i + 1 < argc) {
            if (!qvl_load_mode_from_name(argv[++i], &mp.mmap)) {
                fprintf(stderr, "qvl bench: --load takes auto, mmap or copy\n");
                return 2;
            }
        } else if (!strcmp(a, "--kv") && i + 1 < argc) {
            if (!qvl_kv_type_from_name(argv[++i], &kv)) {
                fprintf(stderr, "qvl bench: --kv takes f32, bf16 or f16\n");
                return 2;
            }
        } else if (!strcmp(a, "--json")) {
            json = true;
        } else if (!strcmp(a, "--no-large")) {
            large = false;
        } else {
            fprintf(stderr, "usage: qvl bench -m DIR [--quant q8|q4] [--kv T] [--bf16-dot] [--load M]\n"
                            "                 [--quant-cache] [--quant-vision] [-t N] [--reps N] "
                            "[--json] [--no-large]\n");
            return 2;
        }
    }
    if (!dir || reps < 1 || reps > 100 || threads < 0) {
        fprintf(stderr, "usage: qvl bench -m DIR [--quant q8|q4] [-t N] [--reps N] [--json]\n");
        return 2;
    }
    if (threads == 0)
        threads = (int)sysconf(_SC_NPROCESSORS_ONLN);
    mp.n_threads = threads;
    char err[1024];
    double v[100];

    if (!json)
        fprintf(stderr, "qvl bench: measuring memory bandwidth...\n");
    bw_sampler bws_child;
    bw_start(&bws_child, threads);
    double gbs = bw_sample(&bws_child);

    /* load: warm cache (first load not counted) */
    qvl_model *m = NULL;
    for (int r = -1; r < reps; r++) {
        qvl_model_free(m);
        m = NULL;
        double t0 = now_ms();
        if (qvl_model_load(dir, &mp, &m, err, sizeof err) != QVL_OK) {
            fprintf(stderr, "qvl bench: %s\n", err);
            return 1;
        }
        if (r >= 0)
            v[r] = now_ms() - t0;
    }
    stat2 load = summarize(v, reps);
    uint64_t w_in_place = 0, w_copied = 0;
    qvl_model_weight_residency(m, &w_in_place, &w_copied);

    /* tokenizer: 1 MB of mixed text (English, code, CJK, Cyrillic, emoji, digits, spaces) */
    static const char *mix[] = {
        "The quick brown fox jumps over the lazy dog; it's 12:45 and we'll see. ",
        "def f(x):\n    return [i ** 2 for i in range(x) if i % 3 == 0]\n\n",
        "\u6c49\u5b57\u548c\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8\u3002",
        "\u041f\u0440\u0438\u0432\u0435\u0442, \u043c\u0438\u0440! ",
        "\U0001F600\U0001F44D emoji   and\ttabs\r\n 3.14159 2718281828 ",
    };
    size_t tcap = 1 << 20, tl = 0;
    char *text = malloc(tcap + 256);
    for (int k = 0; tl < tcap; k++) {
        size_t l = strlen(mix[k % 5]);
        memcpy(text + tl, mix[k % 5], l);
        tl += l;
    }
    text[tl] = 0;
    for (int r = -1; r < reps; r++) {
        int32_t *tids = NULL;
        size_t ntid = 0;
        double t0 = now_ms();
        qvl_tokenize(m, text, tl, &tids, &ntid);
        if (r >= 0)
            v[r] = tl / 1e6 / ((now_ms() - t0) / 1e3);
        qvl_free(tids);
    }
    free(text);
    stat2 tok = summarize(v, reps);

    qvl_ctx_params cp = qvl_ctx_default_params();
    cp.n_ctx = 4096;
    cp.n_threads = threads;
    cp.kv_type = kv;
    qvl_ctx *c = NULL;
    if (qvl_ctx_create(m, &cp, &c, err, sizeof err) != QVL_OK) {
        fprintf(stderr, "qvl bench: %s\n", err);
        return 1;
    }

    /* preprocessing: decode a 1024x768 JPEG, resize and patchify (one thread) */
    unsigned long jl = 0;
    unsigned char *jpg = make_jpeg(1024, 768, &jl);
    for (int r = -1; r < reps; r++) {
        double t0 = now_ms();
        qvl_image *im = NULL;
        float *px = NULL;
        int64_t rows = 0, cols = 0;
        if (qvl_image_load_mem(jpg, jl, 0, &im, err, sizeof err) != QVL_OK ||
            qvl_image_pixel_values(m, im, NULL, &px, &rows, &cols, NULL, err, sizeof err) !=
                QVL_OK) {
            fprintf(stderr, "qvl bench: preprocessing failed: %s\n", err);
            return 1;
        }
        if (r >= 0)
            v[r] = now_ms() - t0;
        qvl_free(px);
        qvl_image_free(im);
    }
    free(jpg);
    stat2 pre = summarize(v, reps);

    /* vision */
    stat2 vis[2] = {{0, 0}, {0, 0}};
    int64_t patches[2] = {0, 0};
    int sizes[2][2] = {{400, 300}, {1024, 768}};
    for (int k = 0; k < (large ? 2 : 1); k++) {
        if (!json)
            fprintf(stderr, "qvl bench: vision %dx%d...\n", sizes[k][0], sizes[k][1]);
        qvl_image *img = noise_image(sizes[k][0], sizes[k][1]);
        int nr = k == 0 ? reps : (reps < 2 ? reps : 2);
        for (int r = k == 0 ? -1 : 0; r < nr; r++) {
            qvl_features f;
            double t0 = now_ms();
            if (qvl_vision_encode(m, img, NULL, threads, &f, err, sizeof err) != QVL_OK) {
                fprintf(stderr, "qvl bench: %s\n", err);
                return 1;
            }
            if (r >= 0)
                v[r] = now_ms() - t0;
            patches[k] = (int64_t)f.grid_t * f.grid_h * f.grid_w;
            qvl_features_free(&f);
        }
        vis[k] = summarize(v, nr);
        qvl_image_free(img);
    }

    /* prefill 512 tokens */
    if (!json)
        fprintf(stderr, "qvl bench: prefill...\n");
    int32_t ids[512];
    for (int i = 0; i < 512; i++)
        ids[i] = 1000 + (int32_t)((i * 7919) % 90000);
    for (int r = -1; r < reps; r++) {
        qvl_ctx_reset(c);
        double t0 = now_ms();
        if (qvl_ctx_eval(c, ids, 512, NULL, 0) != QVL_OK) {
            fprintf(stderr, "qvl bench: %s\n", qvl_ctx_errmsg(c));
            return 1;
        }
        if (r >= 0)
            v[r] = 512.0 / ((now_ms() - t0) / 1e3);
    }
    stat2 prefill = summarize(v, reps);

    /* decode 128 tokens after a 16-token prompt, each repetition between two bandwidth
     * samples: a shared host's memory speed drifts over seconds to minutes, so each
     * repetition is set against the higher of the two samples taken next to it, and the
     * reported fraction is the median of those; the fraction against the highest sample of
     * the whole run is reported beside it */
    double bws[102] = {gbs}, frac_rep[100];
    int n_bws = 1;
    if (!json)
        fprintf(stderr, "qvl bench: decode...\n");
    const double bytes_tok = (double)qvl_model_decode_bytes(m);
    for (int r = -1; r < reps; r++) {
        if (r >= 0)
            bws[n_bws++] = bw_sample(&bws_child);
        qvl_ctx_reset(c);
        qvl_ctx_eval(c, ids, 16, NULL, 0);
        qvl_gen_params gp = greedy_steps(128);
        qvl_gen_result res;
        if (qvl_ctx_generate(c, &gp, NULL, NULL, &res) != QVL_OK) {
            fprintf(stderr, "qvl bench: %s\n", qvl_ctx_errmsg(c));
            return 1;
        }
        /* 129 sampled tokens = 128 decode steps */
        if (r >= 0)
            v[r] = (double)(res.n_tokens - 1) / (res.decode_ms / 1e3);
        qvl_gen_result_free(&res);
    }
    bws[n_bws++] = bw_sample(&bws_child);
    for (int r = 0; r < reps; r++) { /* bws[r + 1] before repetition r, bws[r + 2] after */
        double lim = bws[r + 1] > bws[r + 2] ? bws[r + 1] : bws[r + 2];
        frac_rep[r] = lim > 0 ? bytes_tok * v[r] / (lim * 1e9) : 0;
    }
    stat2 decode = summarize(v, reps);
    stat2 frac_paired = summarize(frac_rep, reps);
    for (int i = 1; i < n_bws; i++)
        if (bws[i] > gbs)
            gbs = bws[i];

    /* decode at the context of an image prompt: 1536 prompt tokens once, then each repetition
     * decodes 32 more tokens on the same sequence (attention over the KV cache costs as much
     * as a quarter of the weights' reads there) */
    enum { LONG_CTX = 1536, LONG_STEPS = 32 };
    stat2 dlong = {0, 0};
    if (large) {
        if (!json)
            fprintf(stderr, "qvl bench: decode at a %d-token context...\n", LONG_CTX);
        int32_t *lids = malloc(sizeof(int32_t) * LONG_CTX);
        if (!lids) {
            fprintf(stderr, "qvl bench: out of memory\n");
            return 1;
        }
        for (int i = 0; i < LONG_CTX; i++)
            lids[i] = 1000 + (int32_t)((i * 7919) % 90000);
        qvl_ctx_reset(c);
        qvl_status st = qvl_ctx_eval(c, lids, LONG_CTX, NULL, 0);
        free(lids);
        for (int r = -1; r < reps && st == QVL_OK; r++) {
            qvl_gen_params gp = greedy_steps(LONG_STEPS);
            qvl_gen_result res;
            st = qvl_ctx_generate(c, &gp, NULL, NULL, &res);
            if (st == QVL_OK && r >= 0)
                v[r] = (double)(res.n_tokens - 1) / (res.decode_ms / 1e3);
            if (st == QVL_OK)
                qvl_gen_result_free(&res);
        }
        if (st != QVL_OK) {
            fprintf(stderr, "qvl bench: %s\n", qvl_ctx_errmsg(c));
            return 1;
        }
        dlong = summarize(v, reps);
    }

    /* time to first token: 400x300 image + short prompt */
    if (!json)
        fprintf(stderr, "qvl bench: time to first token...\n");
    qvl_image *img = noise_image(400, 300);
    qvl_message msg = {"user", "What is in this picture? Answer briefly.", 1, 0};
    int32_t *pids = NULL;
    size_t np = 0;
    if (qvl_prompt_build(m, &msg, 1, 1, &img, 1, NULL, &pids, &np, err, sizeof err) != QVL_OK) {
        fprintf(stderr, "qvl bench: %s\n", err);
        return 1;
    }
    for (int r = -1; r < reps; r++) {
        qvl_ctx_reset(c);
        double t0 = now_ms();
        qvl_ctx_eval(c, pids, np, &img, 1);
        qvl_gen_params gp = qvl_gen_default_params();
        gp.temperature = 0;
        gp.max_new_tokens = 1;
        qvl_gen_result res;
        qvl_ctx_generate(c, &gp, NULL, NULL, &res);
        if (r >= 0)
            v[r] = now_ms() - t0;
        qvl_gen_result_free(&res);
    }
    stat2 ttft = summarize(v, reps);
    qvl_free(pids);
    qvl_image_free(img);

    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double rss = (double)ru.ru_maxrss * 1024.0;
    double frac = frac_paired.med;
    double frac_hi = gbs > 0 ? bytes_tok * decode.med / (gbs * 1e9) : 0;
    const char *qn = mp.quant == QVL_QUANT_Q8 ? "q8" : mp.quant == QVL_QUANT_Q4 ? "q4" : "none";

    if (json) {
        cJSON *j = cJSON_CreateObject();
        cJSON_AddStringToObject(j, "model", dir);
        cJSON_AddStringToObject(j, "quant", qn);
        cJSON_AddStringToObject(j, "kv", qvl_kv_type_name(kv));
        cJSON_AddBoolToObject(j, "bf16_dot", mp.bf16_dot != 0);
        cJSON_AddBoolToObject(j, "quant_vision", mp.quant_vision != 0);
        cJSON_AddNumberToObject(j, "threads", threads);
        cJSON_AddNumberToObject(j, "reps", reps);
        cJSON_AddNumberToObject(j, "load_ms", load.med);
        cJSON_AddNumberToObject(j, "load_ms_min", load.min);
        cJSON_AddStringToObject(j, "load_mode", qvl_load_mode_name(mp.mmap));
        cJSON_AddNumberToObject(j, "weights_in_place_bytes", (double)w_in_place);
        cJSON_AddNumberToObject(j, "weights_copied_bytes", (double)w_copied);
        cJSON_AddNumberToObject(j, "tokenize_mb_s", tok.med);
        cJSON_AddNumberToObject(j, "preprocess_ms_1024x768_jpeg", pre.med);
        cJSON_AddNumberToObject(j, "vision_ms_400x300", vis[0].med);
        cJSON_AddNumberToObject(j, "vision_patches_400x300", (double)patches[0]);
        cJSON_AddNumberToObject(j, "vision_patches_s_400x300",
                                vis[0].med > 0 ? patches[0] / (vis[0].med / 1e3) : 0);
        if (large) {
            cJSON_AddNumberToObject(j, "vision_ms_1024x768", vis[1].med);
            cJSON_AddNumberToObject(j, "vision_patches_1024x768", (double)patches[1]);
            cJSON_AddNumberToObject(j, "vision_patches_s_1024x768",
                                    vis[1].med > 0 ? patches[1] / (vis[1].med / 1e3) : 0);
        } else {
            cJSON_AddNullToObject(j, "vision_ms_1024x768");
        }
        cJSON_AddNumberToObject(j, "prefill_tok_s", prefill.med);
        cJSON_AddNumberToObject(j, "decode_tok_s", decode.med);
        cJSON_AddNumberToObject(j, "decode_tok_s_min", decode.min); /* slowest repetition */
        if (large) {
            cJSON_AddNumberToObject(j, "decode_long_tok_s", dlong.med);
            cJSON_AddNumberToObject(j, "decode_long_ctx", LONG_CTX);
        } else {
            cJSON_AddNullToObject(j, "decode_long_tok_s");
        }
        cJSON_AddNumberToObject(j, "ttft_ms", ttft.med);
        cJSON_AddNumberToObject(j, "peak_rss_bytes", rss);
        cJSON_AddNumberToObject(j, "mem_read_gbs", gbs);
        cJSON_AddItemToObject(j, "mem_read_gbs_samples", cJSON_CreateDoubleArray(bws, n_bws));
        cJSON_AddNumberToObject(j, "decode_bytes_per_token", bytes_tok);
        cJSON_AddNumberToObject(j, "decode_bandwidth_fraction", frac);
        cJSON_AddNumberToObject(j, "decode_bandwidth_fraction_vs_highest", frac_hi);
        char *s = cJSON_PrintUnformatted(j);
        printf("%s\n", s);
        free(s);
        cJSON_Delete(j);
    } else {
        printf("model %s, quant %s%s, KV %s%s, %d threads, median of %d (min)\n", dir, qn,
               mp.quant_vision ? " (vision too)" : "", qvl_kv_type_name(kv),
               mp.bf16_dot ? ", bf16 dot products" : "", threads, reps);
        printf("  memory read bandwidth   %8.1f GB/s (highest of %d samples:", gbs, n_bws);
        for (int i = 0; i < n_bws; i++)
            printf(" %.1f", bws[i]);
        printf(")\n");
        printf("  load                    %8.0f ms (%.0f), --load %s: %.0f MB in place, %.0f MB "
               "copied\n",
               load.med, load.min, qvl_load_mode_name(mp.mmap), w_in_place / 1e6, w_copied / 1e6);
        printf("  tokenize 1 MB mixed     %8.1f MB/s\n", tok.med);
        printf("  preprocess 1024x768 JPEG %7.1f ms (decode + resize + patchify)\n", pre.med);
        printf("  vision 400x300          %8.0f ms (%.0f), %lld patches, %.0f patches/s\n",
               vis[0].med, vis[0].min, (long long)patches[0], patches[0] / (vis[0].med / 1e3));
        if (large)
            printf("  vision 1024x768         %8.0f ms (%.0f), %lld patches, %.0f patches/s\n",
                   vis[1].med, vis[1].min, (long long)patches[1],
                   patches[1] / (vis[1].med / 1e3));
        printf("  prefill 512 tokens      %8.1f tok/s\n", prefill.med);
        printf("  decode 128 tokens       %8.2f tok/s (%.1f MB of weights per token)\n",
               decode.med, bytes_tok / 1e6);
        printf("  decode vs bandwidth     %8.1f %% (each repetition against the samples beside it; "
               "%.1f %% against the highest)\n",
               frac * 100, frac_hi * 100);
        if (large)
            printf("  decode at %d tokens   %8.2f tok/s (%d-token repetitions after a %d-token "
                   "prompt)\n",
                   LONG_CTX, dlong.med, LONG_STEPS, LONG_CTX);
        printf("  time to first token     %8.0f ms (400x300 image + short prompt)\n", ttft.med);
        printf("  peak RSS                %8.0f MB\n", rss / 1e6);
    }
    qvl_ctx_free(c);
    qvl_model_free(m);
    qvl_free(cache);
    bw_stop(&bws_child);
    return 0;
}
