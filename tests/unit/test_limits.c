/* test_limits.c - every library-level limit listed in LIMITS.md is crossed here and must give a
 * clean error (the documented status, a message, out-parameters cleared, the object still
 * usable), and the value at the limit must still be accepted where that is cheap to build.
 * Big files are sparse temporary files (no disk space is used): the size checks come before
 * any read. */
#include "check.h"
#include "common.h"
#include "image.h"
#include "preproc.h"
#include "sample.h"
#include "st.h"
#include "tok.h"

#include <fcntl.h>
#include <setjmp.h>
#include <stdint.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jpeglib.h>
#include <png.h>
#include <webp/encode.h>

static char g_tmp[256]; /* scratch directory, removed at the end */

static const char *model_dir(void) {
    return shared_path("fixtures/tiny-qwen3vl/model");
}

/* ---- small encoders (libpng, libjpeg, libwebp) ------------------------------------------- */

typedef struct membuf {
    uint8_t *p;
    size_t n, cap;
} membuf;

static void png_write_cb(png_structp png, png_bytep d, png_size_t n) {
    membuf *b = png_get_io_ptr(png);
    if (b->n + n > b->cap) {
        b->cap = (b->n + n) * 2;
        b->p = realloc(b->p, b->cap);
    }
    memcpy(b->p + b->n, d, n);
    b->n += n;
}

static void png_flush_cb(png_structp png) {
    (void)png;
}

/* An 8-bit RGB PNG of w x h (gradient). */
static membuf make_png(int w, int h) {
    membuf b = {0};
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
    png_infop info = png_create_info_struct(png);
    uint8_t *row = malloc((size_t)w * 3);
    if (setjmp(png_jmpbuf(png))) {
        free(b.p);
        b.p = NULL;
        b.n = 0;
    } else {
        png_set_write_fn(png, &b, png_write_cb, png_flush_cb);
        png_set_IHDR(png, info, (png_uint_32)w, (png_uint_32)h, 8, PNG_COLOR_TYPE_RGB,
                     PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
        png_write_info(png, info);
        for (int y = 0; y < h; y++) {
            for (int i = 0; i < w * 3; i++)
                row[i] = (uint8_t)(i + 3 * y);
            png_write_row(png, row);
        }
        png_write_end(png, info);
    }
    png_destroy_write_struct(&png, &info);
    free(row);
    return b;
}

static uint32_t crc32_png(const uint8_t *p, size_t n) {
    uint32_t c = 0xffffffffu;
    for (size_t i = 0; i < n; i++) {
        c ^= p[i];
        for (int k = 0; k < 8; k++)
            c = (c >> 1) ^ (0xedb88320u & (0u - (c & 1u)));
    }
    return c ^ 0xffffffffu;
}

static void put_be32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

/* Rewrite the IHDR size of a PNG (and its CRC): a small file that claims a big picture. */
static void png_set_size(membuf *b, uint32_t w, uint32_t h) {
    put_be32(b->p + 16, w);
    put_be32(b->p + 20, h);
    put_be32(b->p + 29, crc32_png(b->p + 12, 17));
}

static membuf make_jpeg(int w, int h) {
    struct jpeg_compress_struct c;
    struct jpeg_error_mgr e;
    c.err = jpeg_std_error(&e);
    jpeg_create_compress(&c);
    unsigned char *out = NULL;
    unsigned long n = 0;
    jpeg_mem_dest(&c, &out, &n);
    c.image_width = (JDIMENSION)w;
    c.image_height = (JDIMENSION)h;
    c.input_components = 3;
    c.in_color_space = JCS_RGB;
    jpeg_set_defaults(&c);
    jpeg_start_compress(&c, TRUE);
    uint8_t *row = malloc((size_t)w * 3);
    while (c.next_scanline < c.image_height) {
        for (int i = 0; i < w * 3; i++)
            row[i] = (uint8_t)(i * 5 + (int)c.next_scanline);
        JSAMPROW r = row;
        jpeg_write_scanlines(&c, &r, 1);
    }
    jpeg_finish_compress(&c);
    jpeg_destroy_compress(&c);
    free(row);
    membuf b = {out, n, n};
    return b;
}

/* Rewrite the size in the SOF0 marker of a baseline JPEG. */
static bool jpeg_set_size(membuf *b, uint16_t w, uint16_t h) {
    for (size_t i = 2; i + 9 < b->n; i++) {
        if (b->p[i] == 0xFF && b->p[i + 1] == 0xC0) {
            b->p[i + 5] = (uint8_t)(h >> 8);
            b->p[i + 6] = (uint8_t)h;
            b->p[i + 7] = (uint8_t)(w >> 8);
            b->p[i + 8] = (uint8_t)w;
            return true;
        }
    }
    return false;
}

static membuf make_webp_lossless(int w, int h) {
    uint8_t *rgb = malloc((size_t)w * h * 3);
    for (int i = 0; i < w * h * 3; i++)
        rgb[i] = (uint8_t)(i * 7);
    uint8_t *out = NULL;
    size_t n = WebPEncodeLosslessRGB(rgb, w, h, w * 3, &out);
    free(rgb);
    membuf b = {out, n, n};
    return b;
}

/* Rewrite the 14-bit sizes of a simple-format lossless WebP (RIFF, "VP8L", signature 0x2f). */
static bool webp_set_size(membuf *b, uint32_t w, uint32_t h) {
    if (b->n < 25 || memcmp(b->p + 12, "VP8L", 4) != 0 || b->p[20] != 0x2f)
        return false;
    uint32_t v = (uint32_t)b->p[21] | (uint32_t)b->p[22] << 8 | (uint32_t)b->p[23] << 16 |
                 (uint32_t)b->p[24] << 24;
    v = (v & 0xF0000000u) | ((w - 1) & 0x3FFFu) | ((h - 1) & 0x3FFFu) << 14;
    for (int i = 0; i < 4; i++)
        b->p[21 + i] = (uint8_t)(v >> (8 * i));
    return true;
}

static void free_buf(membuf *b) {
    free(b->p);
    b->p = NULL;
    b->n = b->cap = 0;
}

/* Decode with a pixel cap; checks the status, the cleared output and a message. */
static void expect_decode(const char *what, const membuf *b, uint64_t max_pixels, qvl_status want,
                          int w, int h) {
    char err[512] = "";
    qvl_image *img = (qvl_image *)1;
    qvl_status s = qvl_image_load_mem(b->p, b->n, max_pixels, &img, err, sizeof err);
    CHECKF(s == want, "%s: status %s, want %s (%s)", what, qvl_status_str(s), qvl_status_str(want),
           err);
    if (want == QVL_OK && s == QVL_OK) {
        int iw = 0, ih = 0;
        qvl_image_size(img, &iw, &ih);
        CHECKF(iw == w && ih == h, "%s: decoded %dx%d, want %dx%d", what, iw, ih, w, h);
        qvl_image_free(img);
    } else if (s != QVL_OK) {
        CHECKF(img == NULL, "%s: *out not cleared on failure", what);
        CHECKF(err[0] != 0, "%s: no error message", what);
    }
}

/* ---- images ------------------------------------------------------------------------------ */

static void test_image_pixels(void) {
    /* decode cap on the header, before any pixel memory: 64 Mi pixels by default */
    membuf png = make_png(8, 8);
    CHECK(png.n > 33);
    expect_decode("png 8x8, cap 64", &png, 64, QVL_OK, 8, 8);
    expect_decode("png 8x8, cap 63", &png, 63, QVL_E_LIMIT, 0, 0);
    png_set_size(&png, 8193, 8193); /* 67,125,249 pixels > 64 Mi */
    expect_decode("png header 8193x8193, default cap", &png, 0, QVL_E_LIMIT, 0, 0);
    png_set_size(&png, 4096, 4096); /* at the default cap the header passes; data is short */
    expect_decode("png header 4096x4096 with 8x8 data", &png, 0, QVL_E_FORMAT, 0, 0);
    free_buf(&png);

    membuf jpg = make_jpeg(16, 16);
    expect_decode("jpeg 16x16, cap 256", &jpg, 256, QVL_OK, 16, 16);
    expect_decode("jpeg 16x16, cap 255", &jpg, 255, QVL_E_LIMIT, 0, 0);
    CHECK(jpeg_set_size(&jpg, 9000, 9000));
    expect_decode("jpeg header 9000x9000, default cap", &jpg, 0, QVL_E_LIMIT, 0, 0);
    free(jpg.p); /* from libjpeg's mem dest: plain malloc */

    membuf wp = make_webp_lossless(16, 16);
    CHECK(wp.n > 25);
    expect_decode("webp 16x16, cap 256", &wp, 256, QVL_OK, 16, 16);
    expect_decode("webp 16x16, cap 255", &wp, 255, QVL_E_LIMIT, 0, 0);
    CHECK(webp_set_size(&wp, 16384, 16384));
    expect_decode("webp header 16384x16384, default cap", &wp, 0, QVL_E_LIMIT, 0, 0);
    WebPFree(wp.p);

    /* raw RGB: the same 64 Mi pixel cap (checked before the buffer is read) */
    uint8_t px[12] = {0};
    char err[512] = "";
    qvl_image *img = (qvl_image *)1;
    qvl_status s = qvl_image_from_rgb(px, 8193, 8193, &img, err, sizeof err);
    CHECKF(s == QVL_E_LIMIT, "from_rgb 8193x8193: status %s, want limit exceeded (%s)",
           qvl_status_str(s), err);
    CHECK(img == NULL);
    s = qvl_image_from_rgb(px, 2, 2, &img, err, sizeof err);
    CHECK(s == QVL_OK);
    qvl_image_free(img);
}

static void test_image_aspect(void) {
    /* decode: max(w,h)/min(w,h) over 200 is refused on the header; 200 itself is accepted */
    membuf b = make_png(200, 1);
    expect_decode("png 200x1", &b, 0, QVL_OK, 200, 1);
    free_buf(&b);
    b = make_png(201, 1);
    expect_decode("png 201x1", &b, 0, QVL_E_LIMIT, 0, 0);
    free_buf(&b);
    b = make_png(1, 201);
    expect_decode("png 1x201", &b, 0, QVL_E_LIMIT, 0, 0);
    free_buf(&b);
    b = make_jpeg(402, 2);
    expect_decode("jpeg 402x2", &b, 0, QVL_E_LIMIT, 0, 0);
    free(b.p);

    /* raw RGB images are not checked for aspect; planning (smart_resize) refuses them */
    uint8_t *px = calloc(201 * 3, 1);
    char err[512] = "";
    qvl_image *img = NULL;
    CHECK(qvl_image_from_rgb(px, 201, 1, &img, err, sizeof err) == QVL_OK);
    qvl_image_plan plan;
    qvl_status s = qvl_image_plan_get(NULL, img, NULL, &plan, err, sizeof err);
    CHECKF(s == QVL_E_LIMIT, "plan 201x1: %s (%s)", qvl_status_str(s), err);
    CHECK(strstr(err, "aspect ratio") != NULL);
    qvl_image_free(img);
    CHECK(qvl_image_from_rgb(px, 200, 1, &img, err, sizeof err) == QVL_OK);
    s = qvl_image_plan_get(NULL, img, NULL, &plan, err, sizeof err);
    CHECKF(s == QVL_OK, "plan 200x1: %s (%s)", qvl_status_str(s), err);
    qvl_image_free(img);
    free(px);
}

/* smart_resize budget: min/max pixels from preprocessor_config.json, or per call */
static void test_image_budget(const qvl_model *m) {
    uint8_t *px = calloc((size_t)1000 * 700 * 3, 1);
    char err[512] = "";
    qvl_image *img = NULL;
    CHECK(qvl_image_from_rgb(px, 1000, 700, &img, err, sizeof err) == QVL_OK);
    qvl_image_plan plan;
    qvl_image_opts o = {.max_pixels = 64 * 32 * 32}; /* at most 64 tokens */
    CHECK(qvl_image_plan_get(m, img, &o, &plan, err, sizeof err) == QVL_OK);
    CHECKF(plan.n_tokens <= 64 && plan.n_tokens > 32, "budget 64 tokens: got %lld",
           (long long)plan.n_tokens);
    CHECK((int64_t)plan.resized_width * plan.resized_height <= o.max_pixels);
    qvl_image_free(img);
    /* a tiny image is scaled up to min_pixels (65536 = 64 tokens in the released config) */
    CHECK(qvl_image_from_rgb(px, 10, 10, &img, err, sizeof err) == QVL_OK);
    CHECK(qvl_image_plan_get(m, img, NULL, &plan, err, sizeof err) == QVL_OK);
    CHECKF((int64_t)plan.resized_width * plan.resized_height >= 65536, "min_pixels: %dx%d",
           plan.resized_width, plan.resized_height);
    qvl_image_free(img);
    free(px);
}

/* ---- file size caps ----------------------------------------------------------------------- */

/* A sparse file of `size` bytes whose first bytes are `head`. */
static bool make_sparse(const char *path, off_t size, const void *head, size_t head_len) {
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd < 0)
        return false;
    bool ok = (!head_len || write(fd, head, head_len) == (ssize_t)head_len) &&
              ftruncate(fd, size) == 0;
    close(fd);
    return ok;
}

static bool copy_file(const char *from, const char *to) {
    char *buf = NULL;
    size_t len = 0;
    if (qvl_read_file(from, 0, &buf, &len, NULL, 0) != QVL_OK)
        return false;
    bool ok = make_sparse(to, (off_t)len, buf, len);
    qvl_free(buf);
    return ok;
}

static char *tmp_path(const char *name) {
    static char buf[4][512];
    static int k;
    k = (k + 1) & 3;
    snprintf(buf[k], sizeof buf[k], "%s/%s", g_tmp, name);
    return buf[k];
}

static void expect_load(const char *what, qvl_status want, const char *needle) {
    char err[512] = "";
    qvl_model *m = (qvl_model *)1;
    qvl_status s = qvl_model_load(g_tmp, NULL, &m, err, sizeof err);
    CHECKF(s == want, "%s: status %s, want %s (%s)", what, qvl_status_str(s), qvl_status_str(want),
           err);
    CHECKF(m == NULL, "%s: *out not cleared", what);
    CHECKF(strstr(err, needle) != NULL, "%s: message does not name %s: %s", what, needle, err);
    if (s == QVL_OK)
        qvl_model_free(m);
}

static void test_file_caps(void) {
    char src[1024];
    /* config.json over 64 MiB */
    CHECK(make_sparse(tmp_path("config.json"), ((off_t)64 << 20) + 1, "{", 1));
    expect_load("config.json 64 MiB + 1", QVL_E_LIMIT, "config.json");
    snprintf(src, sizeof src, "%s/config.json", model_dir());
    CHECK(copy_file(src, tmp_path("config.json")));
    /* generation_config.json over 64 MiB */
    CHECK(make_sparse(tmp_path("generation_config.json"), ((off_t)64 << 20) + 1, "{", 1));
    expect_load("generation_config.json 64 MiB + 1", QVL_E_LIMIT, "generation_config.json");
    snprintf(src, sizeof src, "%s/generation_config.json", model_dir());
    CHECK(copy_file(src, tmp_path("generation_config.json")));
    /* preprocessor_config.json over 1 MiB */
    CHECK(make_sparse(tmp_path("preprocessor_config.json"), ((off_t)1 << 20) + 1, "{", 1));
    expect_load("preprocessor_config.json 1 MiB + 1", QVL_E_LIMIT, "preprocessor_config.json");
    snprintf(src, sizeof src, "%s/preprocessor_config.json", model_dir());
    CHECK(copy_file(src, tmp_path("preprocessor_config.json")));
    /* tokenizer.json over 512 MiB */
    CHECK(make_sparse(tmp_path("tokenizer.json"), ((off_t)512 << 20) + 1, "{", 1));
    expect_load("tokenizer.json 512 MiB + 1", QVL_E_LIMIT, "tokenizer.json");
    unlink(tmp_path("tokenizer.json"));

    /* safetensors header over 100,000,000 bytes (decimal), in a file big enough to hold it */
    uint8_t hdr[8];
    uint64_t n = (uint64_t)QVL_ST_MAX_HEADER + 1;
    for (int i = 0; i < 8; i++)
        hdr[i] = (uint8_t)(n >> (8 * i));
    CHECK(make_sparse(tmp_path("model.safetensors"), (off_t)(n + 64), hdr, 8));
    char err[512] = "";
    qvl_st *st = (qvl_st *)1;
    qvl_status s = qvl_st_open_file(tmp_path("model.safetensors"), &st, err, sizeof err);
    CHECKF(s == QVL_E_LIMIT, "safetensors header %llu bytes: %s (%s)", (unsigned long long)n,
           qvl_status_str(s), err);
    CHECK(st == NULL);
    /* and through the model directory (tokenizer restored so the load gets that far) */
    snprintf(src, sizeof src, "%s/tokenizer.json", model_dir());
    CHECK(copy_file(src, tmp_path("tokenizer.json")));
    expect_load("model.safetensors header over 100 MB", QVL_E_LIMIT, "model.safetensors");
    /* model.safetensors.index.json over 64 MiB */
    CHECK(make_sparse(tmp_path("model.safetensors.index.json"), ((off_t)64 << 20) + 1, "{", 1));
    expect_load("index.json 64 MiB + 1", QVL_E_LIMIT, "index.json");
    unlink(tmp_path("model.safetensors.index.json"));
    unlink(tmp_path("model.safetensors"));

    /* image files over 1 GiB */
    CHECK(make_sparse(tmp_path("big.png"), ((off_t)1 << 30) + 1, "\x89PNG\r\n\x1a\n", 8));
    qvl_image *img = (qvl_image *)1;
    s = qvl_image_load_file(tmp_path("big.png"), 0, &img, err, sizeof err);
    CHECKF(s == QVL_E_LIMIT, "image file 1 GiB + 1: %s (%s)", qvl_status_str(s), err);
    CHECK(img == NULL);
    unlink(tmp_path("big.png"));
}

/* tokenizer.json nesting deeper than 128 levels is refused (the reader is recursive) */
static void test_tok_depth(void) {
    size_t depth = 200;
    char *j = malloc(2 * depth + 1);
    for (size_t i = 0; i < depth; i++) {
        j[i] = '[';
        j[2 * depth - 1 - i] = ']';
    }
    j[2 * depth] = 0;
    char err[512] = "";
    qvl_tok *t = (qvl_tok *)1;
    qvl_status s = qvl_tok_load_mem(j, 2 * depth, &t, err, sizeof err);
    CHECKF(s == QVL_E_FORMAT, "tokenizer.json nested 200 deep: %s (%s)", qvl_status_str(s), err);
    CHECK(t == NULL);
    free(j);
}

/* ---- context ------------------------------------------------------------------------------ */

static void test_ctx_params(const qvl_model *m) {
    char err[512] = "";
    qvl_ctx *c = (qvl_ctx *)1;
    qvl_ctx_params p = qvl_ctx_default_params();
    p.n_ctx = 262144 + 1; /* max_position_embeddings of the fixture + 1 */
    p.n_threads = 1;
    qvl_status s = qvl_ctx_create(m, &p, &c, err, sizeof err);
    CHECKF(s == QVL_E_LIMIT, "n_ctx over max_position_embeddings: %s (%s)", qvl_status_str(s),
           err);
    CHECK(c == NULL);
    CHECK(strstr(err, "max_position_embeddings") != NULL);
    p.n_ctx = 64;
    p.n_threads = 257;
    s = qvl_ctx_create(m, &p, &c, err, sizeof err);
    CHECKF(s == QVL_E_INVAL, "257 threads: %s (%s)", qvl_status_str(s), err);
    CHECK(c == NULL);
    /* the default: min(max_position_embeddings, 8192) */
    p = qvl_ctx_default_params();
    p.n_threads = 1;
    s = qvl_ctx_create(m, &p, &c, err, sizeof err);
    CHECKF(s == QVL_OK, "default n_ctx: %s", err);
    if (s == QVL_OK)
        CHECK(qvl_ctx_n_ctx(c) == 8192);
    qvl_ctx_free(c);
}

static int count_cb(const char *text, size_t len, int32_t token, void *user) {
    (void)text;
    (void)len;
    (void)token;
    ++*(int *)user;
    return 0;
}

static void test_ctx_overflow(const qvl_model *m) {
    char err[512] = "";
    qvl_ctx *c = NULL;
    qvl_ctx_params p = qvl_ctx_default_params();
    p.n_ctx = 32;
    p.n_threads = 1;
    qvl_status s = qvl_ctx_create(m, &p, &c, err, sizeof err);
    CHECKF(s == QVL_OK, "ctx: %s", err);
    if (s != QVL_OK)
        return;
    int32_t ids[40];
    for (int i = 0; i < 40; i++)
        ids[i] = 100 + i;
    /* a prompt longer than the context */
    s = qvl_ctx_eval(c, ids, 33, NULL, 0);
    CHECKF(s == QVL_E_LIMIT, "eval 33 in 32: %s", qvl_status_str(s));
    CHECK(qvl_ctx_n_past(c) == 0);
    CHECK(strstr(qvl_ctx_errmsg(c), "n_ctx") != NULL);
    /* fill up to 30, then 3 more do not fit and change nothing; 2 more fit exactly */
    CHECK(qvl_ctx_eval(c, ids, 30, NULL, 0) == QVL_OK);
    const float *lg = qvl_ctx_logits(c, NULL);
    float l0 = lg ? lg[0] : 0;
    s = qvl_ctx_eval(c, ids, 3, NULL, 0);
    CHECKF(s == QVL_E_LIMIT, "eval 3 more at 30/32: %s", qvl_status_str(s));
    CHECK(qvl_ctx_n_past(c) == 30);
    lg = qvl_ctx_logits(c, NULL);
    CHECK(lg && lg[0] == l0);
    /* caller embeddings count against the same cache */
    int H = qvl_model_hidden(m);
    float *embd = calloc((size_t)3 * H, sizeof(float));
    qvl_embd_batch b = {3, H, embd, NULL, NULL, 0, NULL, 0};
    s = qvl_ctx_eval_embd(c, &b);
    CHECKF(s == QVL_E_LIMIT, "eval_embd 3 more at 30/32: %s", qvl_status_str(s));
    CHECK(qvl_ctx_n_past(c) == 30);
    free(embd);
    /* generation stops at the context end: finish "length", no error */
    qvl_gen_params gp = qvl_gen_default_params();
    gp.temperature = 0;
    gp.ignore_eos = 1;
    qvl_gen_result r;
    int n_cb = 0;
    s = qvl_ctx_generate(c, &gp, count_cb, &n_cb, &r);
    CHECKF(s == QVL_OK, "generate to the end of the context: %s (%s)", qvl_status_str(s),
           qvl_ctx_errmsg(c));
    CHECK(r.finish == QVL_FINISH_LENGTH);
    CHECKF(r.n_tokens >= 1 && r.n_tokens <= 3, "generated %zu tokens in 2 free slots",
           r.n_tokens);
    CHECK(qvl_ctx_n_past(c) <= 32);
    qvl_gen_result_free(&r);
    /* full: no more tokens fit */
    qvl_ctx_reset(c);
    CHECK(qvl_ctx_eval(c, ids, 32, NULL, 0) == QVL_OK);
    s = qvl_ctx_eval(c, ids, 1, NULL, 0);
    CHECKF(s == QVL_E_LIMIT, "eval into a full context: %s", qvl_status_str(s));
    qvl_ctx_free(c);
}

/* max_new_tokens, stop strings: at most QVL_STOP_MAX_N (16) of at most QVL_STOP_MAX_LEN (256)
 * bytes each */
static void test_gen_limits(const qvl_model *m) {
    char err[512] = "";
    qvl_ctx *c = NULL;
    qvl_ctx_params p = qvl_ctx_default_params();
    p.n_ctx = 64;
    p.n_threads = 1;
    qvl_status s = qvl_ctx_create(m, &p, &c, err, sizeof err);
    CHECKF(s == QVL_OK, "ctx: %s", err);
    if (s != QVL_OK)
        return;
    int32_t ids[4] = {9707, 11, 1879, 0};
    CHECK(qvl_ctx_eval(c, ids, 4, NULL, 0) == QVL_OK);
    qvl_gen_params gp = qvl_gen_default_params();
    gp.temperature = 0;
    gp.ignore_eos = 1;
    gp.max_new_tokens = 3;
    qvl_gen_result r;
    s = qvl_ctx_generate(c, &gp, NULL, NULL, &r);
    CHECK(s == QVL_OK && r.n_tokens == 3 && r.finish == QVL_FINISH_LENGTH);
    qvl_gen_result_free(&r);

    char long_stop[QVL_STOP_MAX_LEN + 2];
    memset(long_stop, 'x', sizeof long_stop);
    long_stop[QVL_STOP_MAX_LEN + 1] = 0; /* 257 bytes */
    const char *stops[QVL_STOP_MAX_N + 1];
    for (int i = 0; i <= QVL_STOP_MAX_N; i++)
        stops[i] = "zzzz-never";
    gp.max_new_tokens = 1;
    gp.stop = stops;
    gp.n_stop = QVL_STOP_MAX_N + 1;
    qvl_ctx_reset(c);
    CHECK(qvl_ctx_eval(c, ids, 4, NULL, 0) == QVL_OK);
    s = qvl_ctx_generate(c, &gp, NULL, NULL, &r);
    CHECKF(s == QVL_E_LIMIT, "17 stop strings: %s (%s)", qvl_status_str(s), qvl_ctx_errmsg(c));
    CHECK(r.tokens == NULL && r.text == NULL);
    qvl_gen_result_free(&r);
    gp.n_stop = QVL_STOP_MAX_N;
    s = qvl_ctx_generate(c, &gp, NULL, NULL, &r);
    CHECKF(s == QVL_OK, "16 stop strings: %s (%s)", qvl_status_str(s), qvl_ctx_errmsg(c));
    qvl_gen_result_free(&r);
    stops[0] = long_stop;
    gp.n_stop = 1;
    qvl_ctx_reset(c);
    CHECK(qvl_ctx_eval(c, ids, 4, NULL, 0) == QVL_OK);
    s = qvl_ctx_generate(c, &gp, NULL, NULL, &r);
    CHECKF(s == QVL_E_LIMIT, "257-byte stop string: %s (%s)", qvl_status_str(s),
           qvl_ctx_errmsg(c));
    qvl_gen_result_free(&r);
    long_stop[QVL_STOP_MAX_LEN] = 0; /* 256 bytes */
    s = qvl_ctx_generate(c, &gp, NULL, NULL, &r);
    CHECKF(s == QVL_OK, "256-byte stop string: %s (%s)", qvl_status_str(s), qvl_ctx_errmsg(c));
    qvl_gen_result_free(&r);
    qvl_ctx_free(c);
}

int main(void) {
    snprintf(g_tmp, sizeof g_tmp, "/tmp/qvl-limits-XXXXXX");
    if (!mkdtemp(g_tmp)) {
        perror("mkdtemp");
        return 1;
    }
    test_image_pixels();
    test_image_aspect();
    test_tok_depth();
    test_file_caps();
    char err[512];
    qvl_model *m = NULL;
    qvl_status s = qvl_model_load(model_dir(), NULL, &m, err, sizeof err);
    CHECKF(s == QVL_OK, "model: %s", err);
    if (s == QVL_OK) {
        test_image_budget(m);
        test_ctx_params(m);
        test_ctx_overflow(m);
        test_gen_limits(m);
    }
    qvl_model_free(m);
    static const char *const names[] = {"config.json", "generation_config.json",
                                        "preprocessor_config.json", "tokenizer.json",
                                        "model.safetensors", "model.safetensors.index.json",
                                        "big.png"};
    for (size_t i = 0; i < sizeof names / sizeof *names; i++)
        unlink(tmp_path(names[i]));
    rmdir(g_tmp);
    CHECK_DONE();
}
