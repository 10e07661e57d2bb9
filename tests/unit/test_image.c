/* test_image.c - image decoding, smart_resize, Pillow bicubic resize, normalisation, flattening
 * and preprocessor-config parsing against the golden fixtures, plus decoder robustness on
 * pictures this test encodes itself (libpng, libjpeg, libwebp) and on hand-crafted bad input. */
#include "check.h"
#include "common.h"
#include "image.h"
#include "preproc.h"

#include <cjson/cJSON.h>
#include <setjmp.h>
#include <stdint.h>
#include <unistd.h>

#include <jpeglib.h>
#include <png.h>
#include <webp/encode.h>

/* ---- tiny SHA-256 (FIPS 180-4) ---------------------------------------------- */
typedef struct {
    uint32_t h[8];
    uint8_t buf[64];
    uint64_t len;
    size_t n;
} sha256_ctx;

static const uint32_t K256[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};

#define ROR(x, n) (((x) >> (n)) | ((x) << (32 - (n))))

static void sha256_block(sha256_ctx *c, const uint8_t *p) {
    uint32_t w[64];
    for (int i = 0; i < 16; i++)
        w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 |
               (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
    for (int i = 16; i < 64; i++) {
        uint32_t s0 = ROR(w[i - 15], 7) ^ ROR(w[i - 15], 18) ^ (w[i - 15] >> 3);
        uint32_t s1 = ROR(w[i - 2], 17) ^ ROR(w[i - 2], 19) ^ (w[i - 2] >> 10);
        w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    uint32_t a = c->h[0], b = c->h[1], cc = c->h[2], d = c->h[3];
    uint32_t e = c->h[4], f = c->h[5], g = c->h[6], h = c->h[7];
    for (int i = 0; i < 64; i++) {
        uint32_t t1 =
            h + (ROR(e, 6) ^ ROR(e, 11) ^ ROR(e, 25)) + ((e & f) ^ (~e & g)) + K256[i] + w[i];
        uint32_t t2 = (ROR(a, 2) ^ ROR(a, 13) ^ ROR(a, 22)) + ((a & b) ^ (a & cc) ^ (b & cc));
        h = g;
        g = f;
        f = e;
        e = d + t1;
        d = cc;
        cc = b;
        b = a;
        a = t1 + t2;
    }
    c->h[0] += a;
    c->h[1] += b;
    c->h[2] += cc;
    c->h[3] += d;
    c->h[4] += e;
    c->h[5] += f;
    c->h[6] += g;
    c->h[7] += h;
}

static void sha256_init(sha256_ctx *c) {
    static const uint32_t iv[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                   0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    memcpy(c->h, iv, sizeof iv);
    c->len = 0;
    c->n = 0;
}

static void sha256_update(sha256_ctx *c, const void *data, size_t len) {
    const uint8_t *p = data;
    c->len += len;
    while (len) {
        size_t k = 64 - c->n < len ? 64 - c->n : len;
        memcpy(c->buf + c->n, p, k);
        c->n += k;
        p += k;
        len -= k;
        if (c->n == 64) {
            sha256_block(c, c->buf);
            c->n = 0;
        }
    }
}

static void sha256_hex(sha256_ctx *c, char out[65]) {
    uint64_t bits = c->len * 8;
    uint8_t pad = 0x80;
    sha256_update(c, &pad, 1);
    pad = 0;
    while (c->n != 56)
        sha256_update(c, &pad, 1);
    uint8_t lb[8];
    for (int i = 0; i < 8; i++)
        lb[i] = (uint8_t)(bits >> (56 - 8 * i));
    sha256_update(c, lb, 8);
    for (int i = 0; i < 8; i++)
        snprintf(out + 8 * i, 9, "%08x", c->h[i]);
}

static void sha256_of(const void *p, size_t n, char out[65]) {
    sha256_ctx c;
    sha256_init(&c);
    sha256_update(&c, p, n);
    sha256_hex(&c, out);
}

static uint64_t sum_u8(const uint8_t *p, size_t n) {
    uint64_t s = 0;
    for (size_t i = 0; i < n; i++)
        s += p[i];
    return s;
}

static size_t rgb_bytes(const qvl_rgb *im) {
    return (size_t)im->w * (size_t)im->h * 3;
}

static cJSON *load_json(const char *rel) {
    char *buf = NULL;
    size_t len = 0;
    char err[256];
    if (qvl_read_file(shared_path(rel), 0, &buf, &len, err, sizeof err) != QVL_OK) {
        fprintf(stderr, "cannot read %s: %s\n", rel, err);
        return NULL;
    }
    cJSON *j = cJSON_ParseWithLength(buf, len);
    qvl_free(buf);
    return j;
}

/* ---- in-memory encoders ------------------------------------------------------ */
typedef struct membuf {
    uint8_t *p;
    size_t n;
    size_t cap;
} membuf;

static void mb_put(membuf *m, const void *d, size_t n) {
    if (m->n + n > m->cap) {
        m->cap = (m->n + n) * 2 + 64;
        m->p = realloc(m->p, m->cap);
        if (!m->p)
            abort();
    }
    memcpy(m->p + m->n, d, n);
    m->n += n;
}

static void png_mb_write(png_structp png, png_bytep d, size_t n) {
    mb_put(png_get_io_ptr(png), d, n);
}
static void png_mb_flush(png_structp png) {
    (void)png;
}

/* Encode a PNG; `data` rows are w * channels * (depth/8) bytes (for depth < 8: packed). */
static membuf write_png(int w, int h, int ctype, int depth, int interlace, const uint8_t *data,
                        size_t rowbytes, const png_color *pal, int npal, const uint8_t *trns,
                        int ntrns) {
    membuf m = {0};
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
    png_infop info = png_create_info_struct(png);
    if (setjmp(png_jmpbuf(png))) {
        fprintf(stderr, "png write failed\n");
        abort();
    }
    png_set_write_fn(png, &m, png_mb_write, png_mb_flush);
    png_set_IHDR(png, info, (png_uint_32)w, (png_uint_32)h, depth, ctype, interlace,
                 PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    if (pal)
        png_set_PLTE(png, info, pal, npal);
    if (trns)
        png_set_tRNS(png, info, trns, ntrns, NULL);
    png_write_info(png, info);
    int passes = png_set_interlace_handling(png);
    for (int p = 0; p < passes; p++)
        for (int y = 0; y < h; y++)
            png_write_row(png, data + (size_t)y * rowbytes);
    png_write_end(png, info);
    png_destroy_write_struct(&png, &info);
    return m;
}

static bool g_jpeg_progressive;

/* Encode a JPEG with libjpeg: in_cs JCS_RGB (3), JCS_GRAYSCALE (1) or JCS_CMYK (4). */
static membuf write_jpeg(int w, int h, J_COLOR_SPACE cs, int nc, const uint8_t *data, int q) {
    struct jpeg_compress_struct ci;
    struct jpeg_error_mgr je;
    ci.err = jpeg_std_error(&je);
    jpeg_create_compress(&ci);
    unsigned char *out = NULL;
    unsigned long outlen = 0;
    jpeg_mem_dest(&ci, &out, &outlen);
    ci.image_width = (JDIMENSION)w;
    ci.image_height = (JDIMENSION)h;
    ci.input_components = nc;
    ci.in_color_space = cs;
    jpeg_set_defaults(&ci);
    jpeg_set_quality(&ci, q, TRUE);
    if (g_jpeg_progressive)
        jpeg_simple_progression(&ci);
    jpeg_start_compress(&ci, TRUE);
    while (ci.next_scanline < ci.image_height) {
        JSAMPROW row = (JSAMPROW)(data + (size_t)ci.next_scanline * w * nc);
        jpeg_write_scanlines(&ci, &row, 1);
    }
    jpeg_finish_compress(&ci);
    jpeg_destroy_compress(&ci);
    membuf m = {0};
    mb_put(&m, out, outlen);
    free(out);
    return m;
}

static membuf webp_copy(uint8_t *p, size_t n) {
    membuf m = {0};
    if (p && n)
        mb_put(&m, p, n);
    WebPFree(p);
    return m;
}

/* ---- the test picture (palette-expressible, odd size) ----------------------- */
#define PW   37
#define PH   23
#define NPAL 200
static png_color g_pal[NPAL];
static uint8_t g_idx[PH * PW];
static uint8_t g_rgb[PH * PW * 3];

static void make_picture(void) {
    for (int i = 0; i < NPAL; i++) {
        g_pal[i].red = (png_byte)((i * 37 + 11) & 255);
        g_pal[i].green = (png_byte)((i * 91 + 3) & 255);
        g_pal[i].blue = (png_byte)((i * 53 + 200) & 255);
    }
    for (int y = 0; y < PH; y++)
        for (int x = 0; x < PW; x++) {
            int k = (x * 7 + y * 13 + (x * y) % 5) % NPAL;
            g_idx[y * PW + x] = (uint8_t)k;
            g_rgb[(y * PW + x) * 3 + 0] = g_pal[k].red;
            g_rgb[(y * PW + x) * 3 + 1] = g_pal[k].green;
            g_rgb[(y * PW + x) * 3 + 2] = g_pal[k].blue;
        }
}

static int white_over(int c, int a) { /* independent form: nearest of c*a/255 + 255(255-a)/255 */
    return (int)floor((c * a + 255.0 * (255 - a)) / 255.0 + 0.5);
}

static bool same_as_picture(const qvl_rgb *im) {
    return im->data && im->w == PW && im->h == PH && memcmp(im->data, g_rgb, sizeof g_rgb) == 0;
}

/* ---- tests ----------------------------------------------------------------- */

static void test_smart_resize_table(void) {
    cJSON *j = load_json("fixtures/tiny-qwen3vl/golden/smart_resize_table.json");
    CHECK(j != NULL);
    if (!j)
        return;
    const cJSON *rows = cJSON_GetObjectItemCaseSensitive(j, "rows");
    int n = 0;
    const cJSON *r;
    cJSON_ArrayForEach(r, rows) {
        int h = cJSON_GetObjectItemCaseSensitive(r, "height")->valueint;
        int w = cJSON_GetObjectItemCaseSensitive(r, "width")->valueint;
        int oh = -1, ow = -1;
        char err[256] = "";
        qvl_status st = qvl_smart_resize(h, w, 32, 65536, 16777216, &oh, &ow, err, sizeof err);
        const cJSON *e = cJSON_GetObjectItemCaseSensitive(r, "error");
        if (e) {
            CHECKF(st == QVL_E_LIMIT, "%dx%d: status %d", h, w, st);
            CHECKF(strcmp(err, e->valuestring) == 0, "%dx%d: '%s' vs '%s'", h, w, err,
                   e->valuestring);
        } else {
            int eh = cJSON_GetObjectItemCaseSensitive(r, "resized_height")->valueint;
            int ew = cJSON_GetObjectItemCaseSensitive(r, "resized_width")->valueint;
            const cJSON *g = cJSON_GetObjectItemCaseSensitive(r, "grid_thw");
            int ntok = cJSON_GetObjectItemCaseSensitive(r, "n_image_tokens")->valueint;
            CHECKF(st == QVL_OK && oh == eh && ow == ew, "%dx%d -> %dx%d, want %dx%d (%s)", h, w,
                   oh, ow, eh, ew, err);
            CHECK(cJSON_GetArrayItem(g, 0)->valueint == 1);
            CHECK(cJSON_GetArrayItem(g, 1)->valueint == oh / 16);
            CHECK(cJSON_GetArrayItem(g, 2)->valueint == ow / 16);
            CHECK(ntok == oh * ow / 1024);
        }
        n++;
    }
    CHECK(n >= 30);
    cJSON_Delete(j);
    /* half-to-even: 400/32 = 12.5 -> 12 (C round() would give 13) */
    int oh = 0, ow = 0;
    CHECK(qvl_smart_resize(300, 400, 32, 65536, 16777216, &oh, &ow, NULL, 0) == QVL_OK);
    CHECK(oh == 288 && ow == 384);
    CHECK(qvl_smart_resize(0, 10, 32, 65536, 16777216, &oh, &ow, NULL, 0) == QVL_E_INVAL);
    CHECK(qvl_smart_resize(10, 10, 32, 0, 16777216, &oh, &ow, NULL, 0) == QVL_E_INVAL);
    CHECK(qvl_img_tokens_to_pixels(1280, 32) == 1280 * 1024);
    CHECK(qvl_smart_resize(3000, 4000, 32, 0, qvl_img_tokens_to_pixels(1280, 32), &oh, &ow, NULL,
                           0) == QVL_OK);
    CHECK((int64_t)oh * ow <= 1280 * 1024 && oh % 32 == 0 && ow % 32 == 0);
}

static void check_hash(const char *what, const uint8_t *p, size_t n, const cJSON *obj,
                       const char *key_sha, const char *key_sum) {
    char hex[65];
    sha256_of(p, n, hex);
    const char *want = cJSON_GetObjectItemCaseSensitive(obj, key_sha)->valuestring;
    double want_sum = cJSON_GetObjectItemCaseSensitive(obj, key_sum)->valuedouble;
    CHECKF(sum_u8(p, n) == (uint64_t)want_sum, "%s: sum %llu, want %.0f", what,
           (unsigned long long)sum_u8(p, n), want_sum);
    CHECKF(strcmp(hex, want) == 0, "%s: sha256 %s, want %s", what, hex, want);
}

/* Decode, resize and preprocess every image of a golden case; compare hashes, sums and the
 * concatenated pixel_values hash/statistics. Returns the pixel_values (caller frees). */
static float *golden_case(const char *name, int64_t *n_rows_out) {
    char rel[256];
    snprintf(rel, sizeof rel, "fixtures/tiny-qwen3vl/golden/%s.json", name);
    cJSON *j = load_json(rel);
    CHECK(j != NULL);
    if (!j)
        return NULL;
    qvl_pp_config cfg;
    char err[512];
    CHECK(qvl_pp_config_load(shared_path("fixtures/tiny-qwen3vl/model/preprocessor_config.json"),
                             &cfg, err, sizeof err) == QVL_OK);
    const cJSON *imgs = cJSON_GetObjectItemCaseSensitive(j, "images");
    const cJSON *grids = cJSON_GetObjectItemCaseSensitive(j, "image_grid_thw");
    float *all = NULL;
    int64_t rows = 0;
    int k = 0;
    const cJSON *im;
    cJSON_ArrayForEach(im, imgs) {
        const char *src = cJSON_GetObjectItemCaseSensitive(im, "source")->valuestring;
        snprintf(rel, sizeof rel, "fixtures/tiny-qwen3vl/images/%s", src);
        qvl_rgb rgb = {0};
        qvl_status st = qvl_img_decode_file(shared_path(rel), NULL, &rgb, err, sizeof err);
        CHECKF(st == QVL_OK, "%s: %s", src, err);
        if (st != QVL_OK)
            continue;
        CHECK(rgb.w == cJSON_GetObjectItemCaseSensitive(im, "width")->valueint);
        CHECK(rgb.h == cJSON_GetObjectItemCaseSensitive(im, "height")->valueint);
        check_hash(src, rgb.data, rgb_bytes(&rgb), im, "decoded_rgb_sha256", "decoded_rgb_sum");
        int rh = cJSON_GetObjectItemCaseSensitive(im, "resized_height")->valueint;
        int rw = cJSON_GetObjectItemCaseSensitive(im, "resized_width")->valueint;
        int oh = 0, ow = 0;
        CHECK(qvl_smart_resize(rgb.h, rgb.w, 32, cfg.min_pixels, cfg.max_pixels, &oh, &ow, err,
                               sizeof err) == QVL_OK);
        CHECK(oh == rh && ow == rw);
        qvl_rgb rs = {0};
        CHECK(qvl_img_resize_bicubic(&rgb, rw, rh, &rs) == QVL_OK);
        if (rs.data)
            check_hash(src, rs.data, rgb_bytes(&rs), im, "resized_rgb_sha256", "resized_rgb_sum");
        qvl_rgb_free(&rs);
        qvl_pixels px = {0};
        st = qvl_img_preprocess(&rgb, &cfg, 0, 0, QVL_RESAMPLER_PIL, &px, err, sizeof err);
        CHECKF(st == QVL_OK, "%s: %s", src, err);
        const cJSON *g = cJSON_GetArrayItem(grids, k);
        CHECK(px.grid_t == cJSON_GetArrayItem(g, 0)->valueint);
        CHECK(px.grid_h == cJSON_GetArrayItem(g, 1)->valueint);
        CHECK(px.grid_w == cJSON_GetArrayItem(g, 2)->valueint);
        CHECK(px.n_cols == 1536);
        CHECK(px.n_tokens == cJSON_GetObjectItemCaseSensitive(im, "n_image_tokens")->valueint);
        if (px.data) {
            all = realloc(all, (size_t)(rows + px.n_rows) * 1536 * sizeof(float));
            memcpy(all + rows * 1536, px.data, (size_t)px.n_rows * 1536 * sizeof(float));
            rows += px.n_rows;
        }
        qvl_pixels_free(&px);
        qvl_rgb_free(&rgb);
        k++;
    }
    const cJSON *pv = cJSON_GetObjectItemCaseSensitive(j, "pixel_values");
    const cJSON *stats = cJSON_GetObjectItemCaseSensitive(pv, "stats");
    CHECK(rows ==
          cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(stats, "shape"), 0)->valueint);
    if (all && rows) {
        char hex[65];
        sha256_of(all, (size_t)rows * 1536 * sizeof(float), hex);
        const char *want = cJSON_GetObjectItemCaseSensitive(pv, "sha256_f32")->valuestring;
        CHECKF(strcmp(hex, want) == 0, "%s pixel_values sha256 %s, want %s", name, hex, want);
        double s = 0, as = 0;
        for (int64_t i = 0; i < rows * 1536; i++) {
            s += all[i];
            as += fabs(all[i]);
        }
        double mean = s / (double)(rows * 1536);
        double want_mean = cJSON_GetObjectItemCaseSensitive(stats, "mean")->valuedouble;
        double want_as = cJSON_GetObjectItemCaseSensitive(stats, "abs_sum")->valuedouble;
        CHECKF(fabs(mean - want_mean) < 1e-9, "%s mean %.12f want %.12f", name, mean, want_mean);
        CHECKF(fabs(as - want_as) < 1e-6 * want_as, "%s abs_sum %.6f want %.6f", name, as, want_as);
        const cJSON *first = cJSON_GetObjectItemCaseSensitive(pv, "first_row_first_32");
        for (int i = 0; i < 32; i++)
            CHECK(fabs(all[i] - cJSON_GetArrayItem(first, i)->valuedouble) <= 1e-7);
    }
    cJSON_Delete(j);
    *n_rows_out = rows;
    return all;
}

/* The test image of tools/torch_resize_ref.py: an LCG byte stream pushed to 0 / 255 at the ends. */
static qvl_rgb lcg_image(int w, int h, uint64_t seed) {
    qvl_rgb im = {w, h, malloc((size_t)w * h * 3)};
    uint64_t x = seed;
    for (size_t i = 0; im.data && i < (size_t)w * h * 3; i++) {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        unsigned v = (unsigned)(x >> 56);
        im.data[i] = (uint8_t)(v > 200 ? 255 : v < 40 ? 0 : v);
    }
    return im;
}

static uint64_t fnv1a64(const uint8_t *p, size_t n) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++)
        h = (h ^ p[i]) * 0x100000001b3ull;
    return h;
}

/* ---- EXIF orientation ------------------------------------------------------ */

/* A TIFF block with one IFD0 entry: Orientation (0x0112) = o as SHORT (type 3) or LONG (4). */
static size_t exif_tiff(uint8_t *t, int o, bool big_endian, int type) {
    uint8_t le[26] = {'I', 'I', 42, 0, 8, 0, 0, 0, 1, 0, 0x12, 0x01, (uint8_t)type, 0, 1, 0, 0, 0,
                      (uint8_t)o, 0, 0, 0, 0, 0, 0, 0};
    uint8_t be[26] = {'M', 'M', 0, 42, 0, 0, 0, 8, 0, 1, 0x01, 0x12, 0, (uint8_t)type, 0, 0, 0, 1,
                      0, (uint8_t)o, 0, 0, 0, 0, 0, 0};
    if (big_endian && type == 4) { /* LONG: the value fills the 4-byte field */
        be[18] = 0;
        be[19] = 0;
        be[20] = 0;
        be[21] = (uint8_t)o;
    }
    memcpy(t, big_endian ? be : le, 26);
    return 26;
}

/* Where stored pixel (r, c) of a w x h image appears, from the EXIF definition of each value
 * (what the stored row 0 and column 0 are on the upright image). */
static void exif_expected(int o, const uint8_t *src, int w, int h, qvl_rgb *out) {
    static const char row0[9] = "?ttbblrrl", col0[9] = "?lrrlttbb";
    bool swap = row0[o] == 'l' || row0[o] == 'r';
    out->w = swap ? h : w;
    out->h = swap ? w : h;
    out->data = malloc((size_t)w * h * 3);
    for (int r = 0; r < h; r++)
        for (int c = 0; c < w; c++) {
            int vx, vy;
            if (!swap) {
                vy = row0[o] == 't' ? r : h - 1 - r;
                vx = col0[o] == 'l' ? c : w - 1 - c;
            } else {
                vx = row0[o] == 'l' ? r : h - 1 - r;
                vy = col0[o] == 't' ? c : w - 1 - c;
            }
            memcpy(out->data + ((size_t)vy * out->w + vx) * 3, src + ((size_t)r * w + c) * 3, 3);
        }
}

static bool rgb_equal(const qvl_rgb *a, const qvl_rgb *b) {
    return a->data && b->data && a->w == b->w && a->h == b->h &&
           !memcmp(a->data, b->data, (size_t)a->w * a->h * 3);
}

/* The PNG test picture with an eXIf chunk before (after = false) or after the image data. */
static membuf png_with_exif(const uint8_t *tiff, size_t n, bool after) {
    membuf m = {0};
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
    png_infop info = png_create_info_struct(png);
    if (setjmp(png_jmpbuf(png)))
        abort();
    png_set_write_fn(png, &m, png_mb_write, png_mb_flush);
    png_set_IHDR(png, info, PW, PH, 8, PNG_COLOR_TYPE_RGB, PNG_INTERLACE_NONE,
                 PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    if (!after)
        png_set_eXIf_1(png, info, (png_uint_32)n, (png_bytep)tiff);
    png_write_info(png, info);
    for (int y = 0; y < PH; y++)
        png_write_row(png, g_rgb + (size_t)y * PW * 3);
    if (after)
        png_set_eXIf_1(png, info, (png_uint_32)n, (png_bytep)tiff);
    png_write_end(png, info);
    png_destroy_write_struct(&png, &info);
    return m;
}

/* A JPEG with an APP1 "Exif" segment right after SOI. */
static membuf jpeg_with_exif(const membuf *jpg, const uint8_t *tiff, size_t n) {
    membuf m = {0};
    mb_put(&m, jpg->p, 2);
    uint8_t hdr[10] = {0xff, 0xe1, (uint8_t)((n + 8) >> 8), (uint8_t)(n + 8), 'E', 'x', 'i', 'f',
                       0, 0};
    mb_put(&m, hdr, 10);
    mb_put(&m, tiff, n);
    mb_put(&m, jpg->p + 2, jpg->n - 2);
    return m;
}

static void le32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}

/* A simple (VP8L) WebP turned into the extended format with an EXIF chunk. */
static membuf webp_with_exif(const membuf *simple, int w, int h, const uint8_t *tiff, size_t n) {
    membuf m = {0};
    uint8_t riff[12] = {'R', 'I', 'F', 'F', 0, 0, 0, 0, 'W', 'E', 'B', 'P'};
    uint8_t vp8x[18] = {'V', 'P', '8', 'X', 10, 0, 0, 0, 0x08, 0, 0, 0};
    vp8x[12] = (uint8_t)(w - 1);
    vp8x[13] = (uint8_t)((w - 1) >> 8);
    vp8x[14] = (uint8_t)((w - 1) >> 16);
    vp8x[15] = (uint8_t)(h - 1);
    vp8x[16] = (uint8_t)((h - 1) >> 8);
    vp8x[17] = (uint8_t)((h - 1) >> 16);
    uint8_t ex[8] = {'E', 'X', 'I', 'F'};
    le32(ex + 4, (uint32_t)n);
    size_t body = 4 + sizeof vp8x + (simple->n - 12) + 8 + n + (n & 1);
    le32(riff + 4, (uint32_t)body);
    mb_put(&m, riff, 12);
    mb_put(&m, vp8x, sizeof vp8x);
    mb_put(&m, simple->p + 12, simple->n - 12);
    mb_put(&m, ex, 8);
    mb_put(&m, tiff, n);
    if (n & 1)
        mb_put(&m, "", 1);
    return m;
}

/* EXIF orientation: every value in PNG (eXIf before and after the image data, both byte
 * orders, SHORT and LONG), JPEG and WebP against the EXIF definition; ignore_exif keeps the
 * stored order; damaged or out-of-range tags leave the image as stored. */
static void test_exif(void) {
    uint8_t tiff[32];
    char err[256];
    qvl_img_limits keep = qvl_img_limits_default();
    keep.ignore_exif = true;
    for (int o = 1; o <= 8; o++) {
        qvl_rgb want = {0};
        exif_expected(o, g_rgb, PW, PH, &want);
        for (int v = 0; v < 4; v++) {
            size_t n = exif_tiff(tiff, o, v & 1, (v & 2) ? 4 : 3);
            membuf pm = png_with_exif(tiff, n, v == 3);
            qvl_rgb im = {0};
            CHECK(qvl_img_decode_mem(pm.p, pm.n, NULL, &im, err, sizeof err) == QVL_OK);
            CHECKF(rgb_equal(&im, &want), "PNG orientation %d (variant %d): %dx%d", o, v, im.w,
                   im.h);
            qvl_rgb_free(&im);
            CHECK(qvl_img_decode_mem(pm.p, pm.n, &keep, &im, err, sizeof err) == QVL_OK &&
                  same_as_picture(&im));
            qvl_rgb_free(&im);
            free(pm.p);
        }
        qvl_rgb_free(&want);
    }
    /* a damaged end (IEND cut) after complete image data: the pixels stand, turned when the
     * eXIf came before the damage, whether before or after the image data */
    for (int after = 0; after < 2; after++) {
        size_t n = exif_tiff(tiff, 6, false, 3);
        membuf pm = png_with_exif(tiff, n, after);
        qvl_rgb want = {0}, im = {0};
        exif_expected(6, g_rgb, PW, PH, &want);
        CHECK(pm.n > 12);
        CHECKF(qvl_img_decode_mem(pm.p, pm.n - 6, NULL, &im, err, sizeof err) == QVL_OK &&
                   rgb_equal(&im, &want),
               "PNG with a cut IEND (eXIf %s the image data): %s", after ? "after" : "before",
               err);
        qvl_rgb_free(&im);
        qvl_rgb_free(&want);
        free(pm.p);
    }
    /* JPEG and WebP: the same pixels as the file without EXIF, turned */
    membuf jpg = write_jpeg(PW, PH, JCS_RGB, 3, g_rgb, 90);
    qvl_rgb plain = {0};
    CHECK(qvl_img_decode_mem(jpg.p, jpg.n, NULL, &plain, err, sizeof err) == QVL_OK);
    uint8_t *wp = NULL;
    size_t wn = WebPEncodeLosslessRGB(g_rgb, PW, PH, PW * 3, &wp);
    membuf web = webp_copy(wp, wn);
    for (int o = 1; o <= 8 && plain.data; o++) {
        size_t n = exif_tiff(tiff, o, o & 1, 3);
        qvl_rgb want = {0}, im = {0};
        exif_expected(o, plain.data, PW, PH, &want);
        membuf jm = jpeg_with_exif(&jpg, tiff, n);
        CHECK(qvl_img_decode_mem(jm.p, jm.n, NULL, &im, err, sizeof err) == QVL_OK);
        CHECKF(rgb_equal(&im, &want), "JPEG orientation %d", o);
        qvl_rgb_free(&im);
        CHECK(qvl_img_decode_mem(jm.p, jm.n, &keep, &im, err, sizeof err) == QVL_OK &&
              rgb_equal(&im, &plain));
        qvl_rgb_free(&im);
        free(jm.p);
        qvl_rgb_free(&want);
        exif_expected(o, g_rgb, PW, PH, &want);
        membuf wm = webp_with_exif(&web, PW, PH, tiff, n);
        CHECKF(qvl_img_decode_mem(wm.p, wm.n, NULL, &im, err, sizeof err) == QVL_OK, "%s", err);
        CHECKF(rgb_equal(&im, &want), "WebP orientation %d", o);
        qvl_rgb_free(&im);
        free(wm.p);
        qvl_rgb_free(&want);
    }
    /* damaged EXIF blocks and values outside 1..8 change nothing */
    uint8_t bad[4][26];
    for (int i = 0; i < 4; i++)
        exif_tiff(bad[i], 6, false, 3);
    bad[0][2] = 0;    /* not a TIFF header */
    bad[1][4] = 0xf0; /* IFD0 offset past the end */
    bad[2][18] = 9;   /* orientation 9 */
    bad[3][12] = 2;   /* orientation as ASCII */
    for (int i = 0; i < 4; i++) {
        membuf jm = jpeg_with_exif(&jpg, bad[i], 26);
        qvl_rgb im = {0};
        CHECK(qvl_img_decode_mem(jm.p, jm.n, NULL, &im, err, sizeof err) == QVL_OK);
        CHECKF(rgb_equal(&im, &plain), "damaged EXIF %d changed the image", i);
        qvl_rgb_free(&im);
        free(jm.p);
        membuf tr = jpeg_with_exif(&jpg, bad[i], 12); /* cut short */
        CHECK(qvl_img_decode_mem(tr.p, tr.n, NULL, &im, err, sizeof err) == QVL_OK &&
              rgb_equal(&im, &plain));
        qvl_rgb_free(&im);
        free(tr.p);
    }
    /* the public loader: the flag */
    size_t n = exif_tiff(tiff, 8, false, 3);
    membuf jm = jpeg_with_exif(&jpg, tiff, n);
    qvl_image *a = NULL, *b = NULL;
    CHECK(qvl_image_load_mem(jm.p, jm.n, 0, &a, err, sizeof err) == QVL_OK);
    CHECK(qvl_image_load_mem_ex(jm.p, jm.n, 0, QVL_IMAGE_IGNORE_EXIF, &b, err, sizeof err) ==
          QVL_OK);
    int aw = 0, ah = 0, bw = 0, bh = 0;
    qvl_image_size(a, &aw, &ah);
    qvl_image_size(b, &bw, &bh);
    CHECK(aw == PH && ah == PW && bw == PW && bh == PH);
    qvl_image_free(a);
    qvl_image_free(b);
    free(jm.p);
    qvl_rgb_free(&plain);
    free(jpg.p);
    free(web.p);
}

/* PyTorch's uint8 antialiased bicubic (torchvision's resize of uint8 tensors) against an
 * independent Python transcription (tools/torch_resize_ref.py prints these hashes): downscale
 * on both axes, upscale (edge weights above 1, hence 14-bit weights), one axis only, a large
 * downscale and a 10x upscale. The Pillow resampler on the same images must differ somewhere
 * (so the two paths are really different) but by at most 2 levels. */
static void test_torch_resample(void) {
    static const struct {
        int w, h, ow, oh;
        uint64_t seed, hash;
    } cases[] = {
        {97, 61, 64, 32, 1, 0xc7caa4a207fef2f7ull},  {37, 29, 64, 64, 2, 0x6270edd3b1eaee36ull},
        {50, 32, 96, 32, 3, 0xf0363367b63ad285ull},  {32, 45, 32, 64, 4, 0x2d27f39be60f5dafull},
        {400, 300, 96, 64, 5, 0xf2d52690bbb398e9ull}, {129, 37, 128, 32, 6, 0x3d6ca98da499bacdull},
        {16, 16, 160, 96, 7, 0x616f5c08476e6d1full},
    };
    int n_differ = 0;
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        qvl_rgb im = lcg_image(cases[c].w, cases[c].h, cases[c].seed);
        qvl_rgb t = {0}, p = {0};
        CHECK(qvl_img_resize_bicubic_rs(&im, cases[c].ow, cases[c].oh, QVL_RESAMPLER_TORCH, &t) ==
              QVL_OK);
        CHECK(qvl_img_resize_bicubic_rs(&im, cases[c].ow, cases[c].oh, QVL_RESAMPLER_PIL, &p) ==
              QVL_OK);
        if (t.data && p.data) {
            size_t n = rgb_bytes(&t);
            uint64_t h = fnv1a64(t.data, n);
            CHECKF(h == cases[c].hash, "torch resize %dx%d -> %dx%d: hash %016llx, want %016llx",
                   cases[c].w, cases[c].h, cases[c].ow, cases[c].oh, (unsigned long long)h,
                   (unsigned long long)cases[c].hash);
            int maxd = 0;
            for (size_t i = 0; i < n; i++) {
                int d = abs((int)t.data[i] - (int)p.data[i]);
                maxd = d > maxd ? d : maxd;
            }
            CHECKF(maxd <= 2, "torch vs Pillow resize %dx%d: %d levels apart", cases[c].w,
                   cases[c].h, maxd);
            n_differ += maxd > 0;
        }
        qvl_rgb_free(&t);
        qvl_rgb_free(&p);
        qvl_rgb_free(&im);
    }
    CHECKF(n_differ >= 4, "torch and Pillow resizes differ in only %d of 7 cases", n_differ);
}

static void test_golden(void) {
    int64_t rows = 0;
    float *pv = golden_case("tiny_1img_png", &rows);
    CHECK(rows == 256);
    char *raw = NULL;
    size_t len = 0;
    char err[256];
    qvl_status st =
        qvl_read_file(shared_path("fixtures/tiny-qwen3vl/golden/tiny_1img_png.pixel_values.f32"), 0,
                      &raw, &len, err, sizeof err);
    CHECKF(st == QVL_OK, "%s", err);
    if (pv && raw && len == 256 * 1536 * sizeof(float) && rows == 256) {
        const float *g = (const float *)raw;
        double maxd = 0;
        for (size_t i = 0; i < 256 * 1536; i++) {
            double d = fabs((double)g[i] - (double)pv[i]);
            if (d > maxd)
                maxd = d;
        }
        CHECKF(maxd <= 1e-6, "pixel_values max |diff| %g", maxd);
        printf("tiny_1img_png pixel_values max |diff| = %g\n", maxd);
    } else {
        CHECK(!"golden pixel_values missing or wrong size");
    }
    qvl_free(raw);
    free(pv);
    pv = golden_case("tiny_2img", &rows);
    CHECK(rows == 732);
    free(pv);
    pv = golden_case("tiny_system_jpeg", &rows);
    CHECK(rows == 432);
    free(pv);
}

/* Video frames through the shared flatten step (fused normalisation, 5 frames padded to 6). */
static void test_video_flatten(void) {
    static const int idx[5] = {0, 2, 4, 7, 9};
    qvl_rgb fr[5];
    memset(fr, 0, sizeof fr);
    char err[512];
    char rel[256];
    bool ok = true;
    for (int i = 0; i < 5; i++) {
        snprintf(rel, sizeof rel,
                 "fixtures/tiny-qwen3vl/videos/tiny_clip_96x64_4fps/frame_%04d.png", idx[i]);
        if (qvl_img_decode_file(shared_path(rel), NULL, &fr[i], err, sizeof err) != QVL_OK) {
            fprintf(stderr, "%s\n", err);
            ok = false;
        }
    }
    CHECK(ok);
    qvl_pp_config vc;
    CHECK(qvl_pp_config_load_video(
              shared_path("fixtures/tiny-qwen3vl/model/video_preprocessor_config.json"), &vc, err,
              sizeof err) == QVL_OK);
    CHECK(vc.min_pixels == 4096 && vc.max_pixels == 25165824);
    qvl_pixels px = {0};
    if (ok) {
        CHECK(qvl_pp_flatten(fr, 5, &vc, QVL_PP_NORM_FUSED, &px, err, sizeof err) == QVL_OK);
        CHECK(px.grid_t == 3 && px.grid_h == 4 && px.grid_w == 6 && px.n_rows == 72 &&
              px.n_cols == 1536 && px.n_tokens == 18);
        char *raw = NULL;
        size_t len = 0;
        qvl_read_file(
            shared_path("fixtures/tiny-qwen3vl/golden/tiny_video_frames.pixel_values_videos.f32"),
            0, &raw, &len, err, sizeof err);
        CHECK(raw && len == 72 * 1536 * sizeof(float));
        if (raw && px.data && len == 72 * 1536 * sizeof(float))
            CHECKF(memcmp(raw, px.data, len) == 0, "video pixel_values differ");
        qvl_pixels_free(&px);
        /* the image normalisation differs from the fused one by 1 ulp on some bytes, and the
         * comparison above is strict enough to see it */
        CHECK(qvl_pp_flatten(fr, 5, &vc, QVL_PP_NORM_IMAGE, &px, err, sizeof err) == QVL_OK);
        if (raw && px.data && len == 72 * 1536 * sizeof(float)) {
            const float *g = (const float *)raw;
            int n_diff = 0;
            float maxd = 0;
            for (size_t i = 0; i < 72 * 1536; i++) {
                n_diff += g[i] != px.data[i];
                maxd = fmaxf(maxd, fabsf(g[i] - px.data[i]));
            }
            CHECKF(n_diff > 0, "image and fused normalisation should differ somewhere");
            CHECKF(maxd <= 1.2e-7f, "image vs fused normalisation max |diff| %g", maxd);
        }
        qvl_free(raw);
        qvl_pixels_free(&px);
    }
    /* mismatched frame sizes and non-multiple sizes are refused */
    qvl_rgb small = {32, 32, fr[0].data};
    qvl_rgb mix[2] = {fr[0], small};
    CHECK(qvl_pp_flatten(mix, 2, &vc, QVL_PP_NORM_FUSED, &px, err, sizeof err) == QVL_E_INVAL);
    qvl_rgb odd = {48, 32, fr[0].data};
    CHECK(qvl_pp_flatten(&odd, 1, &vc, QVL_PP_NORM_FUSED, &px, err, sizeof err) == QVL_E_INVAL);
    CHECK(px.data == NULL);
    for (int i = 0; i < 5; i++)
        qvl_rgb_free(&fr[i]);
}

/* Index arithmetic of spec 3.7 on a synthetic picture where each pixel encodes its position. */
static void test_flatten_layout(void) {
    qvl_pp_config c;
    qvl_pp_config_default(&c);
    c.do_rescale = false;
    c.do_normalize = false;
    const int W = 64, H = 96;
    qvl_rgb fr[3];
    for (int f = 0; f < 3; f++) {
        fr[f].w = W;
        fr[f].h = H;
        fr[f].data = malloc((size_t)W * H * 3);
        for (int y = 0; y < H; y++)
            for (int x = 0; x < W; x++) {
                uint8_t *p = fr[f].data + ((size_t)y * W + x) * 3;
                p[0] = (uint8_t)x;
                p[1] = (uint8_t)y;
                p[2] = (uint8_t)(f * 10);
            }
    }
    qvl_pixels px = {0};
    char err[256];
    CHECK(qvl_pp_flatten(fr, 3, &c, QVL_PP_NORM_IMAGE, &px, err, sizeof err) == QVL_OK);
    CHECK(px.grid_t == 2 && px.grid_h == 6 && px.grid_w == 4 && px.n_rows == 48);
    int bad = 0;
    const int gh = 6, gw = 4;
    for (int r = 0; r < px.n_rows && px.data; r++) {
        int mw = r % 2, mh = (r / 2) % 2, bw = (r / 4) % (gw / 2),
            bh = (r / 4 / (gw / 2)) % (gh / 2);
        int tt = r / (gh * gw);
        for (int k = 0; k < 1536; k++) {
            int pw = k % 16, ph = (k / 16) % 16, tp = (k / 256) % 2, ch = k / 512;
            int y = (2 * bh + mh) * 16 + ph, x = (2 * bw + mw) * 16 + pw;
            int f = 2 * tt + tp;
            if (f > 2)
                f = 2;
            float want = ch == 0 ? (float)x : ch == 1 ? (float)y : (float)(f * 10);
            if (px.data[(size_t)r * 1536 + k] != want)
                bad++;
        }
    }
    CHECKF(bad == 0, "%d misplaced values", bad);
    qvl_pixels_free(&px);
    for (int f = 0; f < 3; f++)
        free(fr[f].data);
}

static void test_config(void) {
    qvl_pp_config c;
    char err[512];
    CHECK(qvl_pp_config_load(shared_path("fixtures/tiny-qwen3vl/model/preprocessor_config.json"),
                             &c, err, sizeof err) == QVL_OK);
    CHECK(c.min_pixels == 65536 && c.max_pixels == 16777216 && c.patch == 16 &&
          c.temporal_patch == 2 && c.merge == 2 && c.mean[1] == 0.5 && c.std[2] == 0.5 &&
          c.do_resize && c.do_rescale && c.do_normalize && c.rescale == 1.0 / 255.0);
    /* defaults from spec 3.1, not Qwen2-VL's */
    CHECK(qvl_pp_config_parse("{}", 2, &c, err, sizeof err) == QVL_OK);
    CHECK(c.patch == 16 && c.min_pixels == 65536 && c.max_pixels == 16777216 && c.mean[0] == 0.5);
    const char *j1 = "{\"size\":{\"shortest_edge\":1000,\"longest_edge\":2000000},"
                     "\"min_pixels\":3136,\"max_pixels\":null,\"image_mean\":[0.1,0.2,0.3],"
                     "\"image_std\":0.25,\"rescale_factor\":0.5,\"do_resize\":false,"
                     "\"patch_size\":14,\"merge_size\":2,\"temporal_patch_size\":2,"
                     "\"resample\":3,\"processor_class\":\"X\"}";
    CHECK(qvl_pp_config_parse(j1, strlen(j1), &c, err, sizeof err) == QVL_OK);
    CHECK(c.min_pixels == 3136 && c.max_pixels == 2000000 && c.patch == 14 && !c.do_resize &&
          c.mean[2] == 0.3 && c.std[0] == 0.25 && c.std[2] == 0.25 && c.rescale == 0.5);
    struct {
        const char *json;
        qvl_status st;
        const char *needle;
    } bad[] = {
        {"{", QVL_E_FORMAT, "malformed JSON"},
        {"[1,2]", QVL_E_FORMAT, "object"},
        {"{\"patch_size\":\"16\"}", QVL_E_FORMAT, "patch_size"},
        {"{\"patch_size\":16.5}", QVL_E_FORMAT, "patch_size"},
        {"{\"patch_size\":0}", QVL_E_FORMAT, "patch_size"},
        {"{\"image_mean\":[0.5,0.5]}", QVL_E_FORMAT, "image_mean"},
        {"{\"image_std\":[0.5,0,0.5]}", QVL_E_FORMAT, "image_std"},
        {"{\"do_resize\":1}", QVL_E_FORMAT, "do_resize"},
        {"{\"size\":{\"shortest_edge\":10}}", QVL_E_FORMAT, "size"},
        {"{\"size\":[1]}", QVL_E_FORMAT, "size"},
        {"{\"min_pixels\":100,\"max_pixels\":10}", QVL_E_FORMAT, "min_pixels"},
        {"{\"rescale_factor\":-1}", QVL_E_FORMAT, "rescale_factor"},
        {"{\"resample\":2}", QVL_E_UNSUPPORTED, "resample"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        qvl_pp_config d;
        qvl_pp_config_default(&d);
        d.patch = 99;
        err[0] = 0;
        qvl_status st = qvl_pp_config_parse(bad[i].json, strlen(bad[i].json), &d, err, sizeof err);
        CHECKF(st == bad[i].st && strstr(err, bad[i].needle) && d.patch == 99, "%s -> %d '%s'",
               bad[i].json, st, err);
    }
    /* the file name appears in messages */
    CHECK(qvl_pp_config_parse_named("{\"merge_size\":true}", 19, "pp.json", false, &c, err,
                                    sizeof err) == QVL_E_FORMAT);
    CHECK(strstr(err, "pp.json") && strstr(err, "merge_size"));
    CHECK(qvl_pp_config_load("/nonexistent/preprocessor_config.json", &c, err, sizeof err) ==
          QVL_E_IO);
    /* length-bounded parse (no NUL needed) */
    CHECK(qvl_pp_config_parse("{\"patch_size\":8}garbage", 16, &c, err, sizeof err) == QVL_OK);
    CHECK(c.patch == 8);
    qvl_pp_config_default_video(&c);
    CHECK(c.min_pixels == 4096 && c.max_pixels == 25165824 && c.fps == 2.0);
}

static void test_formats_identical(const char *tmpdir) {
    char err[512];
    qvl_rgb im = {0};
    /* 8-bit RGB PNG */
    membuf m = write_png(PW, PH, PNG_COLOR_TYPE_RGB, 8, PNG_INTERLACE_NONE, g_rgb, PW * 3, NULL, 0,
                         NULL, 0);
    CHECKF(qvl_img_decode_mem(m.p, m.n, NULL, &im, err, sizeof err) == QVL_OK, "%s", err);
    CHECK(same_as_picture(&im));
    qvl_rgb_free(&im);
    /* the same through a file with a misleading name */
    char path[512];
    snprintf(path, sizeof path, "%s/picture.jpg", tmpdir);
    FILE *f = fopen(path, "wb");
    fwrite(m.p, 1, m.n, f);
    fclose(f);
    CHECK(qvl_img_decode_file(path, NULL, &im, err, sizeof err) == QVL_OK);
    CHECK(same_as_picture(&im));
    qvl_rgb_free(&im);
    free(m.p);
    /* 16-bit RGB PNG, low byte 0xA5: value >> 8 gives the 8-bit picture (scaling would not) */
    uint8_t *d16 = malloc(sizeof g_rgb * 2);
    for (size_t i = 0; i < sizeof g_rgb; i++) {
        d16[2 * i] = g_rgb[i];
        d16[2 * i + 1] = 0xA5;
    }
    m = write_png(PW, PH, PNG_COLOR_TYPE_RGB, 16, PNG_INTERLACE_NONE, d16, PW * 6, NULL, 0, NULL,
                  0);
    CHECK(qvl_img_decode_mem(m.p, m.n, NULL, &im, err, sizeof err) == QVL_OK);
    CHECK(same_as_picture(&im));
    qvl_rgb_free(&im);
    free(m.p);
    free(d16);
    /* palette PNG */
    m = write_png(PW, PH, PNG_COLOR_TYPE_PALETTE, 8, PNG_INTERLACE_NONE, g_idx, PW, g_pal, NPAL,
                  NULL, 0);
    CHECK(qvl_img_decode_mem(m.p, m.n, NULL, &im, err, sizeof err) == QVL_OK);
    CHECK(same_as_picture(&im));
    qvl_rgb_free(&im);
    free(m.p);
    /* interlaced (Adam7) RGB PNG */
    m = write_png(PW, PH, PNG_COLOR_TYPE_RGB, 8, PNG_INTERLACE_ADAM7, g_rgb, PW * 3, NULL, 0, NULL,
                  0);
    CHECK(qvl_img_decode_mem(m.p, m.n, NULL, &im, err, sizeof err) == QVL_OK);
    CHECK(same_as_picture(&im));
    qvl_rgb_free(&im);
    free(m.p);
    /* RGBA PNG, fully opaque */
    uint8_t *rgba = malloc((size_t)PW * PH * 4);
    for (int i = 0; i < PW * PH; i++) {
        memcpy(rgba + 4 * i, g_rgb + 3 * i, 3);
        rgba[4 * i + 3] = 255;
    }
    m = write_png(PW, PH, PNG_COLOR_TYPE_RGB_ALPHA, 8, PNG_INTERLACE_NONE, rgba, PW * 4, NULL, 0,
                  NULL, 0);
    CHECK(qvl_img_decode_mem(m.p, m.n, NULL, &im, err, sizeof err) == QVL_OK);
    CHECK(same_as_picture(&im));
    qvl_rgb_free(&im);
    free(m.p);
    free(rgba);
    /* lossless WebP */
    uint8_t *wp = NULL;
    size_t wn = WebPEncodeLosslessRGB(g_rgb, PW, PH, PW * 3, &wp);
    m = webp_copy(wp, wn);
    CHECK(m.n > 0);
    CHECKF(qvl_img_decode_mem(m.p, m.n, NULL, &im, err, sizeof err) == QVL_OK, "%s", err);
    CHECK(qvl_img_detect(m.p, m.n) == QVL_IMG_WEBP);
    CHECK(same_as_picture(&im));
    qvl_rgb_free(&im);
    free(m.p);
    /* JPEG: lossy, close to the picture's smooth version; check size and a loose error bound */
    uint8_t *smooth = malloc((size_t)64 * 48 * 3);
    for (int y = 0; y < 48; y++)
        for (int x = 0; x < 64; x++) {
            smooth[(y * 64 + x) * 3 + 0] = (uint8_t)(x * 4);
            smooth[(y * 64 + x) * 3 + 1] = (uint8_t)(y * 5);
            smooth[(y * 64 + x) * 3 + 2] = (uint8_t)(128 + x - y);
        }
    m = write_jpeg(64, 48, JCS_RGB, 3, smooth, 95);
    CHECK(qvl_img_decode_mem(m.p, m.n, NULL, &im, err, sizeof err) == QVL_OK);
    CHECK(im.w == 64 && im.h == 48);
    if (im.data) {
        double mae = 0;
        for (size_t i = 0; i < (size_t)64 * 48 * 3; i++)
            mae += abs((int)im.data[i] - (int)smooth[i]);
        mae /= 64.0 * 48 * 3;
        CHECKF(mae < 3.0, "JPEG mean abs error %.2f", mae);
    }
    /* the same picture as a progressive JPEG decodes to the same pixels */
    g_jpeg_progressive = true;
    membuf mp = write_jpeg(64, 48, JCS_RGB, 3, smooth, 95);
    g_jpeg_progressive = false;
    qvl_rgb imp = {0};
    CHECK(qvl_img_decode_mem(mp.p, mp.n, NULL, &imp, err, sizeof err) == QVL_OK);
    CHECK(mp.n != m.n && im.data && imp.data && memcmp(im.data, imp.data, 64 * 48 * 3) == 0);
    qvl_rgb_free(&imp);
    free(mp.p);
    qvl_rgb_free(&im);
    free(m.p);
    free(smooth);
}

static void test_gray_alpha(void) {
    char err[512];
    qvl_rgb im = {0};
    uint8_t g8[PH * PW];
    for (int i = 0; i < PH * PW; i++)
        g8[i] = (uint8_t)(i * 7);
    /* 8-bit gray: replicated */
    membuf m =
        write_png(PW, PH, PNG_COLOR_TYPE_GRAY, 8, PNG_INTERLACE_NONE, g8, PW, NULL, 0, NULL, 0);
    CHECK(qvl_img_decode_mem(m.p, m.n, NULL, &im, err, sizeof err) == QVL_OK);
    int bad = 0;
    for (int i = 0; i < PH * PW && im.data; i++)
        bad +=
            im.data[3 * i] != g8[i] || im.data[3 * i + 1] != g8[i] || im.data[3 * i + 2] != g8[i];
    CHECK(im.data && bad == 0);
    qvl_rgb_free(&im);
    free(m.p);
    /* 16-bit gray: PIL holds it as I;16 and clips to 255 when converting to RGB (values 0..299
     * and a few large ones) */
    uint8_t g16[PH * PW * 2];
    for (int i = 0; i < PH * PW; i++) {
        unsigned v = i % 7 == 6 ? 40000u + (unsigned)i : (unsigned)(i % 300);
        g16[2 * i] = (uint8_t)(v >> 8);
        g16[2 * i + 1] = (uint8_t)v;
    }
    m = write_png(PW, PH, PNG_COLOR_TYPE_GRAY, 16, PNG_INTERLACE_NONE, g16, PW * 2, NULL, 0, NULL,
                  0);
    CHECK(qvl_img_decode_mem(m.p, m.n, NULL, &im, err, sizeof err) == QVL_OK);
    bad = 0;
    for (int i = 0; i < PH * PW && im.data; i++) {
        unsigned v = ((unsigned)g16[2 * i] << 8) | g16[2 * i + 1];
        uint8_t want = (uint8_t)(v > 255 ? 255 : v);
        bad += im.data[3 * i] != want || im.data[3 * i + 1] != want || im.data[3 * i + 2] != want;
    }
    CHECKF(im.data && bad == 0, "16-bit gray: %d pixels differ", bad);
    qvl_rgb_free(&im);
    free(m.p);
    /* 16-bit RGB: the high byte of each sample ("RGB;16B") */
    uint8_t *c16 = malloc((size_t)PW * PH * 6);
    for (int i = 0; i < PW * PH * 3; i++) {
        c16[2 * i] = (uint8_t)(i * 13);
        c16[2 * i + 1] = (uint8_t)(i * 7 + 3);
    }
    m = write_png(PW, PH, PNG_COLOR_TYPE_RGB, 16, PNG_INTERLACE_NONE, c16, PW * 6, NULL, 0, NULL,
                  0);
    CHECK(qvl_img_decode_mem(m.p, m.n, NULL, &im, err, sizeof err) == QVL_OK);
    bad = 0;
    for (int i = 0; i < PH * PW * 3 && im.data; i++)
        bad += im.data[i] != c16[2 * i];
    CHECKF(im.data && bad == 0, "16-bit RGB: %d samples differ", bad);
    qvl_rgb_free(&im);
    free(m.p);
    free(c16);
    /* 2-bit gray: 0, 85, 170, 255 */
    uint8_t g2[4] = {0x1B, 0x1B, 0x1B, 0x1B}; /* 00 01 10 11 per byte, 16 pixels x 1 row */
    m = write_png(16, 1, PNG_COLOR_TYPE_GRAY, 2, PNG_INTERLACE_NONE, g2, 4, NULL, 0, NULL, 0);
    CHECK(qvl_img_decode_mem(m.p, m.n, NULL, &im, err, sizeof err) == QVL_OK);
    CHECK(im.data && im.data[0] == 0 && im.data[3] == 85 && im.data[6] == 170 &&
          im.data[9] == 255 && im.data[10] == 255);
    qvl_rgb_free(&im);
    free(m.p);
    /* RGBA composited on white: all (c, a) over a 256x256 image, c = x, a = y */
    uint8_t *rgba = malloc(256 * 256 * 4);
    for (int y = 0; y < 256; y++)
        for (int x = 0; x < 256; x++) {
            uint8_t *p = rgba + (y * 256 + x) * 4;
            p[0] = (uint8_t)x;
            p[1] = (uint8_t)(255 - x);
            p[2] = (uint8_t)(x ^ y);
            p[3] = (uint8_t)y;
        }
    m = write_png(256, 256, PNG_COLOR_TYPE_RGB_ALPHA, 8, PNG_INTERLACE_NONE, rgba, 1024, NULL, 0,
                  NULL, 0);
    CHECK(qvl_img_decode_mem(m.p, m.n, NULL, &im, err, sizeof err) == QVL_OK);
    bad = 0;
    for (int i = 0; i < 256 * 256 && im.data; i++)
        for (int k = 0; k < 3; k++)
            bad += im.data[3 * i + k] != white_over(rgba[4 * i + k], rgba[4 * i + 3]);
    CHECKF(im.data && bad == 0, "%d composited values differ", bad);
    qvl_rgb_free(&im);
    /* drop_alpha: the stored colours */
    qvl_img_limits drop = qvl_img_limits_default();
    drop.drop_alpha = true;
    CHECK(qvl_img_decode_mem(m.p, m.n, &drop, &im, err, sizeof err) == QVL_OK);
    bad = 0;
    for (int i = 0; i < 256 * 256 && im.data; i++)
        for (int k = 0; k < 3; k++)
            bad += im.data[3 * i + k] != rgba[4 * i + k];
    CHECKF(im.data && bad == 0, "%d values differ with drop_alpha", bad);
    qvl_rgb_free(&im);
    free(m.p);
    /* the same RGBA as lossless WebP */
    uint8_t *wp = NULL;
    size_t wn = WebPEncodeLosslessRGBA(rgba, 256, 256, 1024, &wp);
    m = webp_copy(wp, wn);
    CHECK(qvl_img_decode_mem(m.p, m.n, NULL, &im, err, sizeof err) == QVL_OK);
    bad = 0;
    for (int i = 0; i < 256 * 256 && im.data; i++)
        for (int k = 0; k < 3; k++)
            bad += im.data[3 * i + k] != white_over(rgba[4 * i + k], rgba[4 * i + 3]);
    CHECKF(im.data && bad == 0, "%d WebP composited values differ", bad);
    qvl_rgb_free(&im);
    CHECK(qvl_img_decode_mem(m.p, m.n, &drop, &im, err, sizeof err) == QVL_OK);
    bad = 0;
    for (int i = 0; i < 256 * 256 && im.data; i++)
        for (int k = 0; k < 3; k++)
            bad += rgba[4 * i + 3] && im.data[3 * i + k] != rgba[4 * i + k];
    /* (the encoder may change colours under alpha 0) */
    CHECKF(im.data && bad == 0, "%d WebP values differ with drop_alpha", bad);
    qvl_rgb_free(&im);
    free(m.p);
    /* lossy WebP with alpha: fully transparent rows come out white */
    wn = WebPEncodeRGBA(rgba, 256, 256, 1024, 90, &wp);
    m = webp_copy(wp, wn);
    CHECK(qvl_img_decode_mem(m.p, m.n, NULL, &im, err, sizeof err) == QVL_OK);
    CHECK(im.w == 256 && im.h == 256 && im.data && im.data[0] == 255 &&
          im.data[3 * 255 + 2] == 255);
    qvl_rgb_free(&im);
    free(m.p);
    /* gray + alpha (PIL "LA") and palette + tRNS ("P"): PIL's
     * convert("RGB"), which qwen-vl-utils, vLLM and transformers all use for these modes,
     * ignores the transparency */
    uint8_t ga[8] = {10, 0, 10, 255, 200, 128, 0, 51};
    m = write_png(4, 1, PNG_COLOR_TYPE_GRAY_ALPHA, 8, PNG_INTERLACE_NONE, ga, 8, NULL, 0, NULL, 0);
    CHECK(qvl_img_decode_mem(m.p, m.n, NULL, &im, err, sizeof err) == QVL_OK);
    CHECK(im.data && im.data[0] == 10 && im.data[3] == 10 && im.data[6] == 200 &&
          im.data[9] == 0 && im.data[10] == 0 && im.data[11] == 0);
    qvl_rgb_free(&im);
    free(m.p);
    /* 16-bit gray + alpha: PIL opens it as RGBA (high bytes), so it is composited */
    uint8_t ga16[8] = {200, 1, 128, 9, 10, 0, 0, 0};
    m = write_png(2, 1, PNG_COLOR_TYPE_GRAY_ALPHA, 16, PNG_INTERLACE_NONE, ga16, 8, NULL, 0, NULL,
                  0);
    CHECK(qvl_img_decode_mem(m.p, m.n, NULL, &im, err, sizeof err) == QVL_OK);
    CHECK(im.data && im.data[0] == white_over(200, 128) && im.data[2] == im.data[0] &&
          im.data[3] == 255);
    qvl_rgb_free(&im);
    CHECK(qvl_img_decode_mem(m.p, m.n, &drop, &im, err, sizeof err) == QVL_OK);
    CHECK(im.data && im.data[0] == 200 && im.data[3] == 10);
    qvl_rgb_free(&im);
    free(m.p);
    png_color pal[3] = {{255, 0, 0}, {0, 255, 0}, {0, 0, 255}};
    uint8_t trns[2] = {0, 128};
    uint8_t pidx[3] = {0, 1, 2};
    m = write_png(3, 1, PNG_COLOR_TYPE_PALETTE, 8, PNG_INTERLACE_NONE, pidx, 3, pal, 3, trns, 2);
    CHECK(qvl_img_decode_mem(m.p, m.n, NULL, &im, err, sizeof err) == QVL_OK);
    CHECK(im.data && im.data[0] == 255 && im.data[1] == 0 && im.data[2] == 0 &&
          im.data[3] == 0 && im.data[4] == 255 && im.data[5] == 0 && im.data[6] == 0 &&
          im.data[8] == 255);
    qvl_rgb_free(&im);
    free(m.p);

    free(rgba);
}

static void test_jpeg_variants(void) {
    char err[512];
    qvl_rgb im = {0};
    /* grayscale JPEG: channels replicated */
    uint8_t g[32 * 24];
    for (int i = 0; i < 32 * 24; i++)
        g[i] = (uint8_t)((i % 32) * 8);
    membuf m = write_jpeg(32, 24, JCS_GRAYSCALE, 1, g, 90);
    CHECK(qvl_img_decode_mem(m.p, m.n, NULL, &im, err, sizeof err) == QVL_OK);
    int bad = 0;
    for (int i = 0; i < 32 * 24 && im.data; i++)
        bad += im.data[3 * i] != im.data[3 * i + 1] || im.data[3 * i] != im.data[3 * i + 2] ||
               abs(im.data[3 * i] - g[i]) > 12;
    CHECK(im.data && bad == 0);
    qvl_rgb_free(&im);
    free(m.p);
    /* CMYK JPEG (flat colours, q100): PIL treats the samples as Adobe-inverted */
    uint8_t *cmyk = malloc(32 * 16 * 4);
    for (int y = 0; y < 16; y++)
        for (int x = 0; x < 32; x++) {
            uint8_t *p = cmyk + (y * 32 + x) * 4;
            if (x < 16) { /* stored 255,255,255,255 = c=m=y=k=0: white */
                p[0] = p[1] = p[2] = p[3] = 255;
            } else { /* stored c=0 (cyan 255), m=y=255 (0), k=255 (0): cyan -> (0,255,255) */
                p[0] = 0;
                p[1] = 255;
                p[2] = 255;
                p[3] = 255;
            }
        }
    m = write_jpeg(32, 16, JCS_CMYK, 4, cmyk, 100);
    CHECKF(qvl_img_decode_mem(m.p, m.n, NULL, &im, err, sizeof err) == QVL_OK, "%s", err);
    if (im.data) {
        const uint8_t *w = im.data + (8 * 32 + 4) * 3;
        const uint8_t *c = im.data + (8 * 32 + 28) * 3;
        CHECKF(w[0] >= 253 && w[1] >= 253 && w[2] >= 253, "white %d %d %d", w[0], w[1], w[2]);
        CHECKF(c[0] <= 2 && c[1] >= 253 && c[2] >= 253, "cyan %d %d %d", c[0], c[1], c[2]);
    }
    qvl_rgb_free(&im);
    free(m.p);
    free(cmyk);
}

static uint32_t crc32_png(const uint8_t *p, size_t n) {
    uint32_t c = 0xFFFFFFFFu;
    for (size_t i = 0; i < n; i++) {
        c ^= p[i];
        for (int k = 0; k < 8; k++)
            c = (c >> 1) ^ (0xEDB88320u & (0u - (c & 1u)));
    }
    return c ^ 0xFFFFFFFFu;
}

static void put32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

/* A PNG header (signature + IHDR + start of an IDAT chunk) for any claimed size. */
static size_t craft_png(uint8_t *buf, uint32_t w, uint32_t h) {
    memcpy(buf, "\x89PNG\r\n\x1a\n", 8);
    put32(buf + 8, 13);
    memcpy(buf + 12, "IHDR", 4);
    put32(buf + 16, w);
    put32(buf + 20, h);
    buf[24] = 8; /* depth */
    buf[25] = 2; /* RGB */
    buf[26] = 0;
    buf[27] = 0;
    buf[28] = 0;
    put32(buf + 29, crc32_png(buf + 12, 17));
    put32(buf + 33, 100);
    memcpy(buf + 37, "IDAT", 4);
    memset(buf + 41, 0, 16);
    return 57;
}

/* A baseline JPEG header (SOI, SOF0, SOS) claiming w x h; no tables or data follow. */
static size_t craft_jpeg(uint8_t *b, int w, int h) {
    size_t n = 0;
    const uint8_t soi[2] = {0xFF, 0xD8};
    memcpy(b + n, soi, 2);
    n += 2;
    uint8_t sof[19] = {0xFF,       0xC0,
                       0,          17,
                       8,          (uint8_t)(h >> 8),
                       (uint8_t)h, (uint8_t)(w >> 8),
                       (uint8_t)w, 3,
                       1,          0x22,
                       0,          2,
                       0x11,       1,
                       3,          0x11,
                       1};
    memcpy(b + n, sof, sizeof sof);
    n += sizeof sof;
    uint8_t sos[14] = {0xFF, 0xDA, 0, 12, 3, 1, 0x00, 2, 0x11, 3, 0x11, 0, 63, 0};
    memcpy(b + n, sos, sizeof sos);
    n += sizeof sos;
    memset(b + n, 0x55, 32);
    return n + 32;
}

static void test_bad_input(const char *tmpdir) {
    char err[512];
    qvl_rgb im = {0};
    qvl_status st;
    /* valid sources to damage */
    membuf png = write_png(PW, PH, PNG_COLOR_TYPE_RGB, 8, PNG_INTERLACE_NONE, g_rgb, PW * 3, NULL,
                           0, NULL, 0);
    membuf jpg = write_jpeg(PW, PH, JCS_RGB, 3, g_rgb, 90);
    uint8_t *wp = NULL;
    size_t wn = WebPEncodeLosslessRGB(g_rgb, PW, PH, PW * 3, &wp);
    membuf webp = webp_copy(wp, wn);
    wn = WebPEncodeRGB(g_rgb, PW, PH, PW * 3, 80, &wp);
    membuf webpl = webp_copy(wp, wn);

    struct {
        const char *what;
        const uint8_t *p;
        size_t n;
    } trunc[] = {
        {"PNG", png.p, png.n / 2},   {"PNG", png.p, png.n - 20},   {"JPEG", jpg.p, jpg.n / 2},
        {"JPEG", jpg.p, jpg.n - 10}, {"WebP", webp.p, webp.n / 2}, {"WebP", webpl.p, webpl.n / 2},
        {"PNG", png.p, 20},          {"JPEG", jpg.p, 30},          {"WebP", webp.p, 14},
    };
    for (size_t i = 0; i < sizeof trunc / sizeof trunc[0]; i++) {
        err[0] = 0;
        st = qvl_img_decode_mem(trunc[i].p, trunc[i].n, NULL, &im, err, sizeof err);
        CHECKF(st == QVL_E_FORMAT && im.data == NULL && strstr(err, trunc[i].what),
               "truncated %s (%zu bytes): %d '%s'", trunc[i].what, trunc[i].n, st, err);
        if (i == 0 || i == 2)
            printf("  truncated %s: %s\n", trunc[i].what, err);
    }
    /* corrupt: PNG IHDR byte (CRC mismatch), PNG IDAT payload, JPEG precision, WebP header */
    uint8_t *c = malloc(png.n);
    memcpy(c, png.p, png.n);
    c[18] ^= 0x40;
    st = qvl_img_decode_mem(c, png.n, NULL, &im, err, sizeof err);
    CHECKF(st == QVL_E_FORMAT && strstr(err, "PNG"), "corrupt PNG IHDR: %d %s", st, err);
    memcpy(c, png.p, png.n);
    for (size_t i = 45; i < 60 && i < png.n; i++)
        c[i] ^= 0x5A;
    st = qvl_img_decode_mem(c, png.n, NULL, &im, err, sizeof err);
    CHECKF(st == QVL_E_FORMAT, "corrupt PNG IDAT: %d %s", st, err);
    free(c);
    c = malloc(jpg.n);
    memcpy(c, jpg.p, jpg.n);
    for (size_t i = 2; i + 4 < jpg.n; i++)
        if (c[i] == 0xFF && c[i + 1] == 0xC0) {
            c[i + 4] = 7; /* sample precision 7 */
            break;
        }
    st = qvl_img_decode_mem(c, jpg.n, NULL, &im, err, sizeof err);
    CHECKF(st == QVL_E_FORMAT && strstr(err, "JPEG"), "corrupt JPEG: %d %s", st, err);
    printf("  corrupt JPEG: %s\n", err);
    free(c);
    c = malloc(webp.n);
    memcpy(c, webp.p, webp.n);
    c[20] ^= 0xFF; /* VP8L signature byte */
    st = qvl_img_decode_mem(c, webp.n, NULL, &im, err, sizeof err);
    CHECKF(st == QVL_E_FORMAT && strstr(err, "WebP"), "corrupt WebP: %d %s", st, err);
    memcpy(c, webp.p, webp.n);
    for (size_t i = 30; i < webp.n; i++)
        c[i] = (uint8_t)(i * 131);
    st = qvl_img_decode_mem(c, webp.n, NULL, &im, err, sizeof err);
    CHECKF(st == QVL_E_FORMAT || (st == QVL_OK && im.w == PW), "garbage WebP: %d %s", st, err);
    qvl_rgb_free(&im);
    free(c);

    /* zero size */
    uint8_t hdr[128];
    size_t n = craft_png(hdr, 0, 10);
    st = qvl_img_decode_mem(hdr, n, NULL, &im, err, sizeof err);
    CHECKF(st == QVL_E_FORMAT && im.data == NULL, "zero-width PNG: %d %s", st, err);
    n = craft_jpeg(hdr, 10, 0);
    st = qvl_img_decode_mem(hdr, n, NULL, &im, err, sizeof err);
    CHECKF(st == QVL_E_FORMAT && im.data == NULL, "zero-height JPEG: %d %s", st, err);

    /* huge headers: refused before any pixel allocation */
    n = craft_png(hdr, 100000, 100000);
    qvl_alloc_fail_at(-1, 0);
    st = qvl_img_decode_mem(hdr, n, NULL, &im, err, sizeof err);
    long allocs = qvl_alloc_count();
    CHECKF(st == QVL_E_LIMIT && strstr(err, "100000x100000") && allocs <= 1,
           "huge PNG: %d %s (%ld allocations)", st, err, allocs);
    printf("  huge PNG: %s\n", err);
    n = craft_jpeg(hdr, 60000, 60000);
    qvl_alloc_fail_at(-1, 0);
    st = qvl_img_decode_mem(hdr, n, NULL, &im, err, sizeof err);
    allocs = qvl_alloc_count();
    CHECKF(st == QVL_E_LIMIT && strstr(err, "60000x60000") && allocs <= 1,
           "huge JPEG: %d %s (%ld allocations)", st, err, allocs);
    /* a configurable limit */
    qvl_img_limits lim = qvl_img_limits_default();
    lim.max_pixels = 100;
    st = qvl_img_decode_mem(png.p, png.n, &lim, &im, err, sizeof err);
    CHECK(st == QVL_E_LIMIT && im.data == NULL);
    st = qvl_img_decode_mem(webp.p, webp.n, &lim, &im, err, sizeof err);
    CHECK(st == QVL_E_LIMIT && im.data == NULL);
    st = qvl_img_decode_mem(jpg.p, jpg.n, &lim, &im, err, sizeof err);
    CHECK(st == QVL_E_LIMIT && im.data == NULL);

    /* aspect ratio 201 (decode) and 200 (accepted) */
    uint8_t row[201 * 3];
    memset(row, 90, sizeof row);
    membuf a = write_png(201, 1, PNG_COLOR_TYPE_RGB, 8, PNG_INTERLACE_NONE, row, sizeof row, NULL,
                         0, NULL, 0);
    st = qvl_img_decode_mem(a.p, a.n, NULL, &im, err, sizeof err);
    CHECKF(st == QVL_E_LIMIT && strstr(err, "absolute aspect ratio must be smaller than 200, got "
                                            "201.0"),
           "aspect: %d %s", st, err);
    free(a.p);
    a = write_png(200, 1, PNG_COLOR_TYPE_RGB, 8, PNG_INTERLACE_NONE, row, 600, NULL, 0, NULL, 0);
    st = qvl_img_decode_mem(a.p, a.n, NULL, &im, err, sizeof err);
    CHECK(st == QVL_OK && im.w == 200 && im.h == 1);
    qvl_rgb_free(&im);
    free(a.p);

    /* 1x1: valid, upscaled to 256x256 -> grid (1,16,16) */
    a = write_png(1, 1, PNG_COLOR_TYPE_RGB, 8, PNG_INTERLACE_NONE, row, 3, NULL, 0, NULL, 0);
    st = qvl_img_decode_mem(a.p, a.n, NULL, &im, err, sizeof err);
    CHECK(st == QVL_OK && im.w == 1 && im.h == 1);
    qvl_pp_config cfg;
    qvl_pp_config_default(&cfg);
    qvl_pixels px = {0};
    st = qvl_img_preprocess(&im, &cfg, 0, 0, QVL_RESAMPLER_PIL, &px, err, sizeof err);
    CHECKF(st == QVL_OK && px.grid_t == 1 && px.grid_h == 16 && px.grid_w == 16 &&
               px.n_rows == 256 && px.n_tokens == 64,
           "1x1: %d %s", st, err);
    bool flat = px.data != NULL;
    for (int64_t i = 0; px.data && i < px.n_rows * px.n_cols; i++)
        flat = flat && px.data[i] == px.data[0];
    CHECK(flat && px.data && fabsf(px.data[0] - ((90.0f / 255.0f - 0.5f) / 0.5f)) < 1e-6f);
    qvl_pixels_free(&px);
    /* do_resize false with a non-multiple size is refused */
    cfg.do_resize = false;
    st = qvl_img_preprocess(&im, &cfg, 0, 0, QVL_RESAMPLER_PIL, &px, err, sizeof err);
    CHECK(st == QVL_E_INVAL && px.data == NULL);
    qvl_rgb_free(&im);
    free(a.p);

    /* a text file named .png; unsupported formats; empty data; missing file */
    char path[512];
    snprintf(path, sizeof path, "%s/notes.png", tmpdir);
    FILE *f = fopen(path, "wb");
    fputs("hello, this is not an image\n", f);
    fclose(f);
    st = qvl_img_decode_file(path, NULL, &im, err, sizeof err);
    CHECKF(st == QVL_E_FORMAT && strstr(err, "notes.png") && strstr(err, "not an image"),
           "text: %d %s", st, err);
    printf("  text file: %s\n", err);
    st = qvl_img_decode_mem("GIF89a\x01\x00\x01\x00", 10, NULL, &im, err, sizeof err);
    CHECKF(st == QVL_E_UNSUPPORTED && strstr(err, "GIF"), "gif: %d %s", st, err);
    st = qvl_img_decode_mem("BM\x46\0\0\0\0\0\0\0\x36\0\0\0", 14, NULL, &im, err, sizeof err);
    CHECKF(st == QVL_E_UNSUPPORTED && strstr(err, "BMP"), "bmp: %d %s", st, err);
    st = qvl_img_decode_mem("", 0, NULL, &im, err, sizeof err);
    CHECK(st == QVL_E_FORMAT);
    snprintf(path, sizeof path, "%s/missing.png", tmpdir);
    st = qvl_img_decode_file(path, NULL, &im, err, sizeof err);
    CHECK(st == QVL_E_IO && strstr(err, "missing.png"));

    free(png.p);
    free(jpg.p);
    free(webp.p);
    free(webpl.p);
}

/* Every allocation of decode + preprocess failing in turn: NOMEM or OK, never a leak. */
static void test_alloc_failures(void) {
    membuf m = write_png(PW, PH, PNG_COLOR_TYPE_PALETTE, 8, PNG_INTERLACE_NONE, g_idx, PW, g_pal,
                         NPAL, NULL, 0);
    uint8_t *wp = NULL;
    size_t wn = WebPEncodeLosslessRGB(g_rgb, PW, PH, PW * 3, &wp);
    membuf w = webp_copy(wp, wn);
    membuf j = write_jpeg(PW, PH, JCS_RGB, 3, g_rgb, 90);
    const membuf *srcs[3] = {&m, &w, &j};
    qvl_pp_config cfg;
    qvl_pp_config_default(&cfg);
    int nomem = 0, ok = 0, other = 0;
    for (int s = 0; s < 3; s++) {
        for (long k = 0; k < 40; k++) {
            qvl_alloc_fail_at(k, 1);
            qvl_rgb im = {0};
            qvl_pixels px = {0};
            qvl_status st = qvl_img_decode_mem(srcs[s]->p, srcs[s]->n, NULL, &im, NULL, 0);
            if (st == QVL_OK)
                st = qvl_img_preprocess(&im, &cfg, 0, 0, QVL_RESAMPLER_PIL, &px, NULL, 0);
            if (st == QVL_OK)
                ok++;
            else if (st == QVL_E_NOMEM)
                nomem++;
            else
                other++;
            qvl_pixels_free(&px);
            qvl_rgb_free(&im);
        }
    }
    qvl_alloc_fail_at(-1, 0);
    CHECKF(other == 0 && nomem > 0 && ok > 0, "alloc failures: ok %d nomem %d other %d", ok, nomem,
           other);
    free(m.p);
    free(w.p);
    free(j.p);
}

static void test_timing(void) {
    const int W = 1024, H = 768;
    uint8_t *rgb = malloc((size_t)W * H * 3);
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++) {
            uint8_t *p = rgb + ((size_t)y * W + x) * 3;
            p[0] = (uint8_t)(x / 4);
            p[1] = (uint8_t)(y / 3);
            p[2] = (uint8_t)((x * y) >> 10);
        }
    membuf j = write_jpeg(W, H, JCS_RGB, 3, rgb, 90);
    qvl_pp_config cfg;
    qvl_pp_config_default(&cfg);
    char err[256];
    double t0 = qvl_time_ms();
    qvl_rgb im = {0};
    qvl_status st = qvl_img_decode_mem(j.p, j.n, NULL, &im, err, sizeof err);
    double t1 = qvl_time_ms();
    qvl_pixels px = {0};
    if (st == QVL_OK)
        st = qvl_img_preprocess(&im, &cfg, 0, 0, QVL_RESAMPLER_PIL, &px, err, sizeof err);
    double t2 = qvl_time_ms();
    CHECK(st == QVL_OK && px.grid_h == 48 && px.grid_w == 64);
    /* a downscale through the resampler too (max 1280 tokens) */
    qvl_pixels px2 = {0};
    double t3 = qvl_time_ms();
    st = qvl_img_preprocess(&im, &cfg, 0, qvl_img_tokens_to_pixels(256, 32), QVL_RESAMPLER_PIL,
                            &px2, err, sizeof err);
    double t4 = qvl_time_ms();
    CHECK(st == QVL_OK && px2.n_tokens <= 256);
    printf("1024x768 JPEG (%zu bytes): decode %.2f ms, preprocess %.2f ms (grid %dx%d); "
           "preprocess with resize to %dx%d: %.2f ms\n",
           j.n, t1 - t0, t2 - t1, px.grid_h, px.grid_w, px2.grid_w * 16, px2.grid_h * 16, t4 - t3);
    qvl_pixels_free(&px);
    qvl_pixels_free(&px2);
    qvl_rgb_free(&im);
    free(j.p);
    free(rgb);
}

int main(void) {
    char tmpdir[] = "/tmp/qvl_test_image_XXXXXX";
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 1;
    }
    make_picture();
    test_smart_resize_table();
    test_config();
    test_golden();
    test_torch_resample();
    test_exif();
    test_video_flatten();
    test_flatten_layout();
    test_formats_identical(tmpdir);
    test_gray_alpha();
    test_jpeg_variants();
    test_bad_input(tmpdir);
    test_alloc_failures();
    test_timing();
    char path[600];
    snprintf(path, sizeof path, "%s/picture.jpg", tmpdir);
    unlink(path);
    snprintf(path, sizeof path, "%s/notes.png", tmpdir);
    unlink(path);
    rmdir(tmpdir);
    CHECK_DONE();
}
