/* image.c - image decoding (libjpeg-turbo, libpng, libwebp) into 8-bit RGB with the header-size
 * checks done before any pixel allocation, the Qwen smart_resize rule and a bit-exact port of
 * the algorithm of Pillow's antialiased BICUBIC resampler (spec 3.2-3.4).
 *
 * The libjpeg and libpng error paths use setjmp/longjmp. To keep that well defined, each
 * decoder's setjmp lives in a small "run" function whose state is a job struct owned by its
 * caller (so nothing the run function modifies after setjmp is one of its own locals). */
#include "image.h"
#include "common.h"

#include <limits.h>
#include <math.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jpeglib.h>
#include <jerror.h>
#include <libexif/exif-data.h>
#include <png.h>
#include <webp/decode.h>
#include <webp/demux.h>

#define MAX_IMAGE_FILE_BYTES ((size_t)1 << 30)

qvl_img_limits qvl_img_limits_default(void) {
    qvl_img_limits l;
    l.max_pixels = QVL_IMG_DEFAULT_MAX_PIXELS;
    l.max_aspect = QVL_IMG_DEFAULT_MAX_ASPECT;
    l.ignore_exif = false;
    l.drop_alpha = false;
    return l;
}

void qvl_rgb_free(qvl_rgb *im) {
    if (!im)
        return;
    qvl_free(im->data);
    im->data = NULL;
    im->w = 0;
    im->h = 0;
}

/* ---- small helpers -------------------------------------------------------- */

/* Alpha over opaque white, exact integer form of c*a/255 + 255*(255-a)/255 rounded half up.
 * Checked equal to Pillow's alpha_composite (7-bit precision path) for all 256*256 inputs. */
static inline uint8_t over_white(unsigned c, unsigned a) {
    unsigned x = c * a + 255u * (255u - a);
    return (uint8_t)((2u * x + 255u) / 510u);
}

/* Convert n RGBA pixels to RGB in place (dst may alias src: it never runs ahead of it). */
static void rgba_to_rgb_white(uint8_t *px, size_t n) {
    for (size_t i = 0; i < n; i++) {
        const uint8_t *s = px + 4 * i;
        unsigned a = s[3];
        uint8_t r = over_white(s[0], a);
        uint8_t g = over_white(s[1], a);
        uint8_t b = over_white(s[2], a);
        uint8_t *d = px + 3 * i;
        d[0] = r;
        d[1] = g;
        d[2] = b;
    }
}

qvl_img_format qvl_img_detect(const void *buf, size_t len) {
    const uint8_t *p = buf;
    if (!p)
        return QVL_IMG_UNKNOWN;
    if (len >= 3 && p[0] == 0xFF && p[1] == 0xD8 && p[2] == 0xFF)
        return QVL_IMG_JPEG;
    if (len >= 8 && memcmp(p, "\x89PNG\r\n\x1a\n", 8) == 0)
        return QVL_IMG_PNG;
    if (len >= 12 && memcmp(p, "RIFF", 4) == 0 && memcmp(p + 8, "WEBP", 4) == 0)
        return QVL_IMG_WEBP;
    if (len >= 6 && (memcmp(p, "GIF87a", 6) == 0 || memcmp(p, "GIF89a", 6) == 0))
        return QVL_IMG_GIF;
    if (len >= 2 && p[0] == 'B' && p[1] == 'M')
        return QVL_IMG_BMP;
    if (len >= 4 && (memcmp(p, "II*\0", 4) == 0 || memcmp(p, "MM\0*", 4) == 0))
        return QVL_IMG_TIFF;
    return QVL_IMG_UNKNOWN;
}

/* Header dimensions against the limits; called before any pixel buffer exists. Also makes sure
 * w*h*4 fits in size_t and each side fits an int. */
static qvl_status check_dims(const char *fmt, uint64_t w, uint64_t h, const qvl_img_limits *lim,
                             char *err, size_t err_len) {
    if (w == 0 || h == 0) {
        qvl_errf(err, err_len, "%s: image has zero size (%llux%llu)", fmt, (unsigned long long)w,
                 (unsigned long long)h);
        return QVL_E_FORMAT;
    }
    if (w > INT_MAX / 4 || h > INT_MAX / 4 || w * h > SIZE_MAX / 8) {
        qvl_errf(err, err_len, "%s: image size %llux%llu is too large", fmt, (unsigned long long)w,
                 (unsigned long long)h);
        return QVL_E_LIMIT;
    }
    if (lim->max_pixels && w * h > lim->max_pixels) {
        qvl_errf(err, err_len, "%s: image is %llux%llu = %llu pixels, over the limit of %llu", fmt,
                 (unsigned long long)w, (unsigned long long)h, (unsigned long long)(w * h),
                 (unsigned long long)lim->max_pixels);
        return QVL_E_LIMIT;
    }
    double ratio = (w > h) ? (double)w / (double)h : (double)h / (double)w;
    if (lim->max_aspect > 0 && ratio > lim->max_aspect) {
        char r[40];
        char m[40];
        qvl_py_float_repr(ratio, r, sizeof r);
        snprintf(m, sizeof m, "%g", lim->max_aspect);
        qvl_errf(err, err_len,
                 "%s: %llux%llu: absolute aspect ratio must be smaller than %s, got %s", fmt,
                 (unsigned long long)w, (unsigned long long)h, m, r);
        return QVL_E_LIMIT;
    }
    return QVL_OK;
}

/* ---- EXIF orientation ----------------------------------------------------- */

/* The Orientation tag (0x0112) of IFD0 in an EXIF block, parsed by libexif; `d` is the TIFF
 * structure with or without the "Exif\0\0" prefix of a JPEG APP1 segment (PNG's eXIf and
 * WebP's EXIF chunks usually lack it). 1 (upright) when absent, unreadable or out of range. */
static int exif_orientation(const uint8_t *d, size_t n) {
    static const uint8_t hdr[6] = {'E', 'x', 'i', 'f', 0, 0};
    if (!d || n < 8 || n > ((size_t)1 << 24))
        return 1;
    uint8_t *buf = NULL;
    if (memcmp(d, hdr, 6) != 0) {
        buf = qvl_malloc(n + 6);
        if (!buf)
            return 1;
        memcpy(buf, hdr, 6);
        memcpy(buf + 6, d, n);
        d = buf;
        n += 6;
    }
    int o = 1;
    ExifData *ed = exif_data_new();
    if (ed) {
        /* read only: libexif is not to repair or rewrite what it loads */
        exif_data_unset_option(ed, EXIF_DATA_OPTION_FOLLOW_SPECIFICATION);
        exif_data_set_option(ed, EXIF_DATA_OPTION_DONT_CHANGE_MAKER_NOTE);
        exif_data_load_data(ed, d, (unsigned int)n);
        ExifEntry *e = exif_content_get_entry(ed->ifd[EXIF_IFD_0], EXIF_TAG_ORIENTATION);
        if (e && e->data && e->components >= 1) {
            ExifByteOrder bo = exif_data_get_byte_order(ed);
            if (e->format == EXIF_FORMAT_SHORT && e->size >= 2)
                o = exif_get_short(e->data, bo);
            else if (e->format == EXIF_FORMAT_LONG && e->size >= 4)
                o = (int)exif_get_long(e->data, bo);
        }
        exif_data_unref(ed);
    }
    qvl_free(buf);
    return o >= 1 && o <= 8 ? o : 1;
}

/* Turn a decoded image upright as PIL's ImageOps.exif_transpose does for orientation o:
 * 2 mirror left-right, 3 rotate 180, 4 mirror top-bottom, 5 transpose (swap x and y),
 * 6 rotate 90 clockwise, 7 transverse, 8 rotate 90 counter-clockwise. Output pixel (x, y)
 * reads (u, v) = (y, x) when the sides swap (5-8), else (x, y), each mirrored as the table says. */
static qvl_status exif_transpose(qvl_rgb *im, int o) {
    static const bool mirror_u[9] = {0, 0, 1, 1, 0, 0, 0, 1, 1};
    static const bool mirror_v[9] = {0, 0, 0, 1, 1, 0, 1, 1, 0};
    if (o <= 1 || o > 8)
        return QVL_OK;
    const size_t W = (size_t)im->w, H = (size_t)im->h;
    const bool swap = o >= 5;
    const size_t ow = swap ? H : W, oh = swap ? W : H;
    uint8_t *dst = qvl_malloc(W * H * 3);
    if (!dst)
        return QVL_E_NOMEM;
    for (size_t y = 0; y < oh; y++) {
        for (size_t x = 0; x < ow; x++) {
            size_t u = swap ? y : x, v = swap ? x : y;
            size_t sx = mirror_u[o] ? W - 1 - u : u;
            size_t sy = mirror_v[o] ? H - 1 - v : v;
            memcpy(dst + (y * ow + x) * 3, im->data + (sy * W + sx) * 3, 3);
        }
    }
    qvl_free(im->data);
    im->data = dst;
    im->w = (int)ow;
    im->h = (int)oh;
    return QVL_OK;
}

/* ---- JPEG ----------------------------------------------------------------- */

struct jpg_err {
    struct jpeg_error_mgr pub; /* first: libjpeg casts to this */
    jmp_buf jb;
    char msg[JMSG_LENGTH_MAX];
};

struct jpg_job {
    struct jpeg_decompress_struct ci;
    struct jpg_err jerr;
    struct jpeg_progress_mgr progress;
    const uint8_t *buf;
    size_t len;
    const qvl_img_limits *lim;
    uint8_t *pix; /* output [h][w][3] */
    uint8_t *row; /* CMYK scanline */
    int orientation; /* EXIF, 1 = upright */
    qvl_status st;
    char msg[256];
};

static void jpg_error_exit(j_common_ptr ci) {
    struct jpg_err *e = (struct jpg_err *)ci->err;
    ci->err->format_message(ci, e->msg);
    longjmp(e->jb, 1);
}

/* Warnings are ignored (as PIL does) except premature end of data, which is an error. */
static void jpg_emit_message(j_common_ptr ci, int level) {
    if (level >= 0)
        return;
    if (ci->err->msg_code == JWRN_JPEG_EOF) {
        struct jpg_err *e = (struct jpg_err *)ci->err;
        snprintf(e->msg, sizeof e->msg, "truncated data (premature end of JPEG file)");
        longjmp(e->jb, 1);
    }
    ci->err->num_warnings++;
}

static void jpg_output_message(j_common_ptr ci) {
    (void)ci;
}

/* Progressive JPEGs with thousands of tiny scans take very long to decode: refuse them. */
#define JPEG_MAX_SCANS 1000
static void jpg_progress(j_common_ptr ci) {
    if (!ci->is_decompressor)
        return;
    j_decompress_ptr d = (j_decompress_ptr)ci;
    if (d->input_scan_number > JPEG_MAX_SCANS) {
        struct jpg_err *e = (struct jpg_err *)ci->err;
        snprintf(e->msg, sizeof e->msg, "more than %d scans (refused)", JPEG_MAX_SCANS);
        longjmp(e->jb, 1);
    }
}

/* PIL's CMYK->RGB after its "CMYK;I" unpacking: r = nk - muldiv255(c, nk), nk = 255 - k. */
static inline uint8_t cmyk_chan(unsigned c, unsigned nk) {
    unsigned t = c * nk + 128u;
    unsigned m = ((t >> 8) + t) >> 8;
    return (uint8_t)(nk - m);
}

static void jpg_run(struct jpg_job *j) {
    if (setjmp(j->jerr.jb)) {
        if (j->st == QVL_OK) {
            j->st = QVL_E_FORMAT;
            snprintf(j->msg, sizeof j->msg, "JPEG: %s", j->jerr.msg);
        }
        return;
    }
    jpeg_create_decompress(&j->ci);
    j->progress.progress_monitor = jpg_progress;
    j->ci.progress = &j->progress;
    jpeg_mem_src(&j->ci, j->buf, (unsigned long)j->len);
    if (!j->lim->ignore_exif)
        jpeg_save_markers(&j->ci, JPEG_APP0 + 1, 0xffff);
    if (jpeg_read_header(&j->ci, TRUE) != JPEG_HEADER_OK) {
        j->st = QVL_E_FORMAT;
        snprintf(j->msg, sizeof j->msg, "JPEG: no image in the data (tables only)");
        return;
    }
    /* the first APP1 segment holding EXIF, as PIL takes it */
    for (jpeg_saved_marker_ptr mk = j->ci.marker_list; mk; mk = mk->next) {
        if (mk->marker == JPEG_APP0 + 1 && mk->data_length >= 6 &&
            !memcmp(mk->data, "Exif\0\0", 6)) {
            j->orientation = exif_orientation(mk->data, mk->data_length);
            break;
        }
    }
    j->st =
        check_dims("JPEG", j->ci.image_width, j->ci.image_height, j->lim, j->msg, sizeof j->msg);
    if (j->st != QVL_OK)
        return;
    bool cmyk = false;
    switch (j->ci.jpeg_color_space) {
    case JCS_GRAYSCALE:
        j->ci.out_color_space = JCS_GRAYSCALE;
        break;
    case JCS_YCbCr:
    case JCS_RGB:
        j->ci.out_color_space = JCS_RGB;
        break;
    case JCS_CMYK:
    case JCS_YCCK:
        j->ci.out_color_space = JCS_CMYK;
        cmyk = true;
        break;
    default:
        j->st = QVL_E_UNSUPPORTED;
        snprintf(j->msg, sizeof j->msg, "JPEG: unsupported colour space (%d components)",
                 j->ci.num_components);
        return;
    }
    jpeg_start_decompress(&j->ci);
    size_t w = j->ci.output_width;
    size_t h = j->ci.output_height;
    int nc = j->ci.output_components;
    int want_nc = cmyk ? 4 : j->ci.out_color_space == JCS_RGB ? 3 : 1;
    if (w != j->ci.image_width || h != j->ci.image_height || nc != want_nc) {
        j->st = QVL_E_INTERNAL;
        snprintf(j->msg, sizeof j->msg, "JPEG: unexpected output layout");
        return;
    }
    j->pix = qvl_malloc(w * h * 3);
    if (cmyk)
        j->row = qvl_malloc(w * 4);
    if (!j->pix || (cmyk && !j->row)) {
        j->st = QVL_E_NOMEM;
        snprintf(j->msg, sizeof j->msg, "JPEG: out of memory for %zux%zu pixels", w, h);
        return;
    }
    while (j->ci.output_scanline < h) {
        uint8_t *dst = j->pix + (size_t)j->ci.output_scanline * w * 3;
        JSAMPROW rp = cmyk ? j->row : dst;
        if (jpeg_read_scanlines(&j->ci, &rp, 1) != 1) {
            j->st = QVL_E_FORMAT;
            snprintf(j->msg, sizeof j->msg, "JPEG: truncated data");
            return;
        }
        if (cmyk) {
            /* PIL assumes Adobe (inverted) CMYK for every 4-component JPEG */
            for (size_t x = 0; x < w; x++) {
                const uint8_t *s = j->row + 4 * x;
                unsigned nk = s[3]; /* 255 - (255 - s[3]) */
                dst[3 * x + 0] = cmyk_chan(255u - s[0], nk);
                dst[3 * x + 1] = cmyk_chan(255u - s[1], nk);
                dst[3 * x + 2] = cmyk_chan(255u - s[2], nk);
            }
        } else if (nc == 1) {
            for (size_t x = w; x-- > 0;) {
                uint8_t v = dst[x];
                dst[3 * x + 0] = v;
                dst[3 * x + 1] = v;
                dst[3 * x + 2] = v;
            }
        }
    }
    jpeg_finish_decompress(&j->ci);
}

static qvl_status decode_jpeg(const uint8_t *buf, size_t len, const qvl_img_limits *lim,
                              qvl_rgb *out, int *orient, char *err, size_t err_len) {
    struct jpg_job *j = qvl_calloc(1, sizeof *j);
    if (!j) {
        qvl_errf(err, err_len, "JPEG: out of memory");
        return QVL_E_NOMEM;
    }
    j->buf = buf;
    j->len = len;
    j->lim = lim;
    j->ci.err = jpeg_std_error(&j->jerr.pub);
    j->jerr.pub.error_exit = jpg_error_exit;
    j->jerr.pub.emit_message = jpg_emit_message;
    j->jerr.pub.output_message = jpg_output_message;
    j->orientation = 1;
    jpg_run(j);
    qvl_status st = j->st;
    if (st == QVL_OK) {
        out->w = (int)j->ci.output_width;
        out->h = (int)j->ci.output_height;
        out->data = j->pix;
        *orient = j->orientation;
    } else {
        qvl_errf(err, err_len, "%s", j->msg);
        qvl_free(j->pix);
    }
    jpeg_destroy_decompress(&j->ci);
    qvl_free(j->row);
    qvl_free(j);
    return st;
}

/* ---- PNG ------------------------------------------------------------------ */

struct png_job {
    const uint8_t *buf;
    size_t len;
    size_t pos;
    const qvl_img_limits *lim;
    png_structp png;
    png_infop info;
    jmp_buf jb;
    uint8_t *pix;
    png_bytep *rows;
    int w;
    int h;
    bool done;       /* the pixels are complete: later errors only end the chunk scan */
    int orientation; /* EXIF, 1 = upright */
    qvl_status st;
    char msg[256];
};

static void png_err_fn(png_structp png, png_const_charp m) {
    struct png_job *j = png_get_error_ptr(png);
    snprintf(j->msg, sizeof j->msg, "PNG: %s", m);
    longjmp(j->jb, 1);
}

static void png_warn_fn(png_structp png, png_const_charp m) {
    (void)png;
    (void)m;
}

static void png_read_fn(png_structp png, png_bytep data, size_t n) {
    struct png_job *j = png_get_io_ptr(png);
    if (n > j->len - j->pos)
        png_error(png, "truncated data (unexpected end of PNG file)");
    memcpy(data, j->buf + j->pos, n);
    j->pos += n;
}

/* EXIF orientation from an eXIf chunk read so far */
static void png_exif(struct png_job *j) {
    png_uint_32 n = 0;
    png_bytep d = NULL;
    if (j->orientation == 1 && png_get_eXIf_1(j->png, j->info, &n, &d) && d)
        j->orientation = exif_orientation(d, n);
}

static void png_run(struct png_job *j) {
    if (setjmp(j->jb)) {
        if (j->done) { /* damage after the image data: the pixels stand, as PIL's load does */
            j->msg[0] = '\0';
            png_exif(j); /* an eXIf chunk read before the damage */
        } else if (j->st == QVL_OK) {
            j->st = QVL_E_FORMAT;
        }
        return;
    }
    png_set_read_fn(j->png, j, png_read_fn);
    /* sizes are checked by check_dims (LIMIT, not libpng's own 1e6 cap); ancillary chunks
     * (text, ICC profiles) may not make libpng allocate more than 16 MiB each */
    png_set_user_limits(j->png, 0x7fffffff, 0x7fffffff);
    png_set_chunk_malloc_max(j->png, (png_alloc_size_t)16 << 20);
    png_read_info(j->png, j->info);
    png_uint_32 w = 0;
    png_uint_32 h = 0;
    int depth = 0;
    int ctype = 0;
    int interlace = 0;
    png_get_IHDR(j->png, j->info, &w, &h, &depth, &ctype, &interlace, NULL, NULL);
    j->st = check_dims("PNG", w, h, j->lim, j->msg, sizeof j->msg);
    if (j->st != QVL_OK)
        return;
    /* As PIL opens and converts to RGB: 16-bit samples keep their high byte ("RGB;16B",
     * "LA;16B"), except 16-bit gray, which PIL holds as I;16 and clips to 255 on conversion;
     * transparency (palette or gray tRNS, 8-bit gray + alpha) is dropped, since PIL's
     * convert("RGB") of P, L and LA ignores it; only what PIL opens as RGBA is composited onto
     * white, as qwen-vl-utils and vLLM do, or dropped with drop_alpha, as transformers does. */
    const bool clip16 = depth == 16 && ctype == PNG_COLOR_TYPE_GRAY;
    if (depth == 16 && !clip16)
        png_set_strip_16(j->png);
    if (ctype == PNG_COLOR_TYPE_PALETTE)
        png_set_palette_to_rgb(j->png);
    if (ctype == PNG_COLOR_TYPE_GRAY && depth < 8)
        png_set_expand_gray_1_2_4_to_8(j->png);
    /* PIL opens 16-bit gray + alpha as RGBA ("LA;16B"), 8-bit as LA */
    const bool rgba = ctype == PNG_COLOR_TYPE_RGB_ALPHA ||
                      (ctype == PNG_COLOR_TYPE_GRAY_ALPHA && depth == 16);
    if (!rgba || j->lim->drop_alpha)
        png_set_strip_alpha(j->png); /* also keeps palette_to_rgb from expanding tRNS */
    if (ctype == PNG_COLOR_TYPE_GRAY || ctype == PNG_COLOR_TYPE_GRAY_ALPHA)
        png_set_gray_to_rgb(j->png);
    if (interlace != PNG_INTERLACE_NONE)
        png_set_interlace_handling(j->png);
    png_read_update_info(j->png, j->info);
    int ch = png_get_channels(j->png, j->info);
    size_t rowbytes = png_get_rowbytes(j->png, j->info);
    const size_t bps = clip16 ? 2 : 1; /* bytes per sample */
    if ((ch != 3 && ch != 4) || png_get_bit_depth(j->png, j->info) != (clip16 ? 16 : 8) ||
        rowbytes != (size_t)w * (size_t)ch * bps) {
        j->st = QVL_E_UNSUPPORTED;
        snprintf(j->msg, sizeof j->msg, "PNG: unsupported pixel layout (%d channels)", ch);
        return;
    }
    j->pix = qvl_malloc((size_t)w * h * (size_t)ch * bps);
    j->rows = qvl_malloc((size_t)h * sizeof *j->rows);
    if (!j->pix || !j->rows) {
        j->st = QVL_E_NOMEM;
        snprintf(j->msg, sizeof j->msg, "PNG: out of memory for %ux%u pixels", (unsigned)w,
                 (unsigned)h);
        return;
    }
    for (png_uint_32 y = 0; y < h; y++)
        j->rows[y] = j->pix + (size_t)y * rowbytes;
    png_read_image(j->png, j->rows);
    if (clip16) { /* big-endian samples, min(v, 255), in place (the output never overtakes) */
        size_t n = (size_t)w * h * (size_t)ch;
        for (size_t i = 0; i < n; i++) {
            unsigned v = ((unsigned)j->pix[2 * i] << 8) | j->pix[2 * i + 1];
            j->pix[i] = (uint8_t)(v > 255 ? 255 : v);
        }
        uint8_t *p = qvl_realloc(j->pix, n);
        if (p)
            j->pix = p;
    }
    if (ch == 4) {
        rgba_to_rgb_white(j->pix, (size_t)w * h);
        uint8_t *p = qvl_realloc(j->pix, (size_t)w * h * 3);
        if (p)
            j->pix = p;
    }
    j->w = (int)w;
    j->h = (int)h;
    if (!j->lim->ignore_exif) {
        /* eXIf may come before or after the image data (PIL's getexif reads to the end) */
        png_exif(j);
        j->done = true;
        if (j->orientation == 1) {
            png_read_end(j->png, j->info);
            png_exif(j);
        }
    }
}

static qvl_status decode_png(const uint8_t *buf, size_t len, const qvl_img_limits *lim,
                             qvl_rgb *out, int *orient, char *err, size_t err_len) {
    struct png_job *j = qvl_calloc(1, sizeof *j);
    if (!j) {
        qvl_errf(err, err_len, "PNG: out of memory");
        return QVL_E_NOMEM;
    }
    j->buf = buf;
    j->len = len;
    j->lim = lim;
    j->png = png_create_read_struct(PNG_LIBPNG_VER_STRING, j, png_err_fn, png_warn_fn);
    if (j->png)
        j->info = png_create_info_struct(j->png);
    if (!j->png || !j->info) {
        if (j->png)
            png_destroy_read_struct(&j->png, NULL, NULL);
        qvl_free(j);
        qvl_errf(err, err_len, "PNG: out of memory");
        return QVL_E_NOMEM;
    }
    j->orientation = 1;
    png_run(j);
    qvl_status st = j->st;
    if (st == QVL_OK) {
        out->w = j->w;
        out->h = j->h;
        out->data = j->pix;
        *orient = j->orientation;
    } else {
        qvl_errf(err, err_len, "%s", j->msg);
        qvl_free(j->pix);
    }
    png_destroy_read_struct(&j->png, &j->info, NULL);
    qvl_free(j->rows);
    qvl_free(j);
    return st;
}

/* ---- WebP ----------------------------------------------------------------- */

static const char *vp8_status_str(VP8StatusCode s) {
    switch (s) {
    case VP8_STATUS_OK:
        return "ok";
    case VP8_STATUS_OUT_OF_MEMORY:
        return "out of memory";
    case VP8_STATUS_INVALID_PARAM:
        return "invalid parameter";
    case VP8_STATUS_BITSTREAM_ERROR:
        return "bitstream error";
    case VP8_STATUS_UNSUPPORTED_FEATURE:
        return "unsupported feature";
    case VP8_STATUS_SUSPENDED:
        return "suspended";
    case VP8_STATUS_USER_ABORT:
        return "aborted";
    case VP8_STATUS_NOT_ENOUGH_DATA:
        return "not enough data (truncated)";
    }
    return "unknown error";
}

static qvl_status decode_webp(const uint8_t *buf, size_t len, const qvl_img_limits *lim,
                              qvl_rgb *out, int *orient, char *err, size_t err_len) {
    WebPBitstreamFeatures f;
    VP8StatusCode s = WebPGetFeatures(buf, len, &f);
    if (s != VP8_STATUS_OK) {
        qvl_errf(err, err_len, "WebP: bad header: %s", vp8_status_str(s));
        return QVL_E_FORMAT;
    }
    if (f.has_animation) {
        qvl_errf(err, err_len, "WebP: animated WebP is not supported");
        return QVL_E_UNSUPPORTED;
    }
    qvl_status st = check_dims("WebP", (uint64_t)(f.width > 0 ? f.width : 0),
                               (uint64_t)(f.height > 0 ? f.height : 0), lim, err, err_len);
    if (st != QVL_OK)
        return st;
    size_t w = (size_t)f.width;
    size_t h = (size_t)f.height;
    const bool alpha = f.has_alpha && !lim->drop_alpha; /* else the stored colours */
    int ch = alpha ? 4 : 3;
    size_t n = w * h * (size_t)ch;
    uint8_t *pix = qvl_malloc(n);
    if (!pix) {
        qvl_errf(err, err_len, "WebP: out of memory for %zux%zu pixels", w, h);
        return QVL_E_NOMEM;
    }
    uint8_t *r = alpha ? WebPDecodeRGBAInto(buf, len, pix, n, (int)(w * 4))
                       : WebPDecodeRGBInto(buf, len, pix, n, (int)(w * 3));
    if (!r) {
        qvl_free(pix);
        qvl_errf(err, err_len, "WebP: corrupt or truncated data");
        return QVL_E_FORMAT;
    }
    if (alpha) {
        rgba_to_rgb_white(pix, w * h);
        uint8_t *p = qvl_realloc(pix, w * h * 3);
        if (p)
            pix = p;
    }
    out->w = (int)w;
    out->h = (int)h;
    out->data = pix;
    if (!lim->ignore_exif) {
        /* EXIF lives in the extended (VP8X) container's EXIF chunk */
        WebPData wd = {buf, len};
        WebPDemuxer *dm = WebPDemux(&wd);
        if (dm) {
            WebPChunkIterator it;
            if (WebPDemuxGetChunk(dm, "EXIF", 1, &it)) {
                *orient = exif_orientation(it.chunk.bytes, it.chunk.size);
                WebPDemuxReleaseChunkIterator(&it);
            }
            WebPDemuxDelete(dm);
        }
    }
    return QVL_OK;
}

/* ---- entry points --------------------------------------------------------- */

qvl_status qvl_img_decode_mem(const void *buf, size_t len, const qvl_img_limits *lim, qvl_rgb *out,
                              char *err, size_t err_len) {
    if (!out) {
        qvl_errf(err, err_len, "image decode: no output");
        return QVL_E_INVAL;
    }
    out->w = 0;
    out->h = 0;
    out->data = NULL;
    if (!buf && len) {
        qvl_errf(err, err_len, "image decode: no data");
        return QVL_E_INVAL;
    }
    qvl_img_limits def = qvl_img_limits_default();
    if (!lim)
        lim = &def;
    qvl_status (*decode)(const uint8_t *, size_t, const qvl_img_limits *, qvl_rgb *, int *,
                         char *, size_t) = NULL;
    switch (qvl_img_detect(buf, len)) {
    case QVL_IMG_JPEG:
        decode = decode_jpeg;
        break;
    case QVL_IMG_PNG:
        decode = decode_png;
        break;
    case QVL_IMG_WEBP:
        decode = decode_webp;
        break;
    case QVL_IMG_GIF:
        qvl_errf(err, err_len, "GIF images are not supported (use JPEG, PNG or WebP)");
        return QVL_E_UNSUPPORTED;
    case QVL_IMG_BMP:
        qvl_errf(err, err_len, "BMP images are not supported (use JPEG, PNG or WebP)");
        return QVL_E_UNSUPPORTED;
    case QVL_IMG_TIFF:
        qvl_errf(err, err_len, "TIFF images are not supported (use JPEG, PNG or WebP)");
        return QVL_E_UNSUPPORTED;
    case QVL_IMG_UNKNOWN:
        break;
    }
    if (decode) {
        int orient = 1; /* EXIF Orientation, read unless lim->ignore_exif */
        qvl_status st = decode(buf, len, lim, out, &orient, err, err_len);
        if (st == QVL_OK && exif_transpose(out, orient) != QVL_OK) {
            qvl_rgb_free(out);
            qvl_errf(err, err_len, "image decode: out of memory turning the image upright");
            return QVL_E_NOMEM;
        }
        return st;
    }
    if (len == 0)
        qvl_errf(err, err_len, "not an image: the data is empty");
    else
        qvl_errf(err, err_len, "not an image: unrecognised signature (expected JPEG, PNG or WebP)");
    return QVL_E_FORMAT;
}

qvl_status qvl_img_decode_file(const char *path, const qvl_img_limits *lim, qvl_rgb *out, char *err,
                               size_t err_len) {
    if (out) {
        out->w = 0;
        out->h = 0;
        out->data = NULL;
    }
    if (!path || !out) {
        qvl_errf(err, err_len, "image decode: no path or output");
        return QVL_E_INVAL;
    }
    char *buf = NULL;
    size_t len = 0;
    qvl_status st = qvl_read_file(path, MAX_IMAGE_FILE_BYTES, &buf, &len, err, err_len);
    if (st != QVL_OK)
        return st;
    char msg[320];
    msg[0] = '\0';
    st = qvl_img_decode_mem(buf, len, lim, out, msg, sizeof msg);
    qvl_free(buf);
    if (st != QVL_OK)
        qvl_errf(err, err_len, "%s: %s", path, msg);
    return st;
}

/* ---- smart_resize --------------------------------------------------------- */

qvl_status qvl_smart_resize(int64_t h, int64_t w, int factor, int64_t min_pixels,
                            int64_t max_pixels, int *out_h, int *out_w, char *err, size_t err_len) {
    int64_t hw = 0;
    if (h <= 0 || w <= 0 || factor <= 0 || min_pixels < 0 || max_pixels <= 0 ||
        __builtin_mul_overflow(h, w, &hw)) {
        qvl_errf(err, err_len,
                 "smart_resize: invalid arguments (height %lld, width %lld, factor %d, "
                 "min_pixels %lld, max_pixels %lld)",
                 (long long)h, (long long)w, factor, (long long)min_pixels, (long long)max_pixels);
        return QVL_E_INVAL;
    }
    double ratio = (h > w) ? (double)h / (double)w : (double)w / (double)h;
    if (ratio > 200.0) {
        char r[40];
        qvl_py_float_repr(ratio, r, sizeof r);
        qvl_errf(err, err_len, "absolute aspect ratio must be smaller than 200, got %s", r);
        return QVL_E_LIMIT;
    }
    double f = (double)factor;
    /* nearbyint: round half to even under the default rounding mode, as Python's round() */
    int64_t hb = (int64_t)nearbyint((double)h / f) * factor;
    int64_t wb = (int64_t)nearbyint((double)w / f) * factor;
    if ((double)hb * (double)wb > (double)max_pixels) {
        double beta = sqrt((double)hw / (double)max_pixels);
        hb = (int64_t)floor((double)h / beta / f) * factor;
        wb = (int64_t)floor((double)w / beta / f) * factor;
        if (hb < factor)
            hb = factor;
        if (wb < factor)
            wb = factor;
    } else if ((double)hb * (double)wb < (double)min_pixels) {
        double beta = sqrt((double)min_pixels / (double)hw);
        hb = (int64_t)ceil((double)h * beta / f) * factor;
        wb = (int64_t)ceil((double)w * beta / f) * factor;
    }
    if (hb <= 0 || wb <= 0) {
        qvl_errf(err, err_len,
                 "smart_resize: %lldx%lld (height x width) rounds to a zero side with "
                 "factor %d and min_pixels %lld",
                 (long long)h, (long long)w, factor, (long long)min_pixels);
        return QVL_E_INVAL;
    }
    if (hb > INT_MAX / 4 || wb > INT_MAX / 4) {
        qvl_errf(err, err_len, "smart_resize: target %lldx%lld is too large", (long long)hb,
                 (long long)wb);
        return QVL_E_LIMIT;
    }
    *out_h = (int)hb;
    *out_w = (int)wb;
    return QVL_OK;
}

int64_t qvl_img_tokens_to_pixels(int64_t tokens, int factor) {
    return tokens * (int64_t)factor * (int64_t)factor;
}

/* ---- bicubic resamplers (Pillow and PyTorch) ------------------------------ */

/* Both are separable and antialiased with Keys' cubic (a = -0.5) widened by the downscale
 * factor, weights normalised per output pixel and then rounded to fixed point; a pass is
 * acc = 2^(p-1) + sum(pixel * weight), out = clamp(acc >> p, 0, 255). They differ in the
 * fixed-point precision p: Pillow uses 22 bits in int32 weights (Resample.c PRECISION_BITS),
 * PyTorch's uint8 kernel (UpSampleKernel.cpp, int16 weights) picks for each axis the largest
 * p <= 22 at which the axis' largest weight still rounds below 2^15, so 14-16 bits for usual
 * sizes; and in how the outer lobe of the cubic is evaluated (the same polynomial, different
 * rounding in double). */
#define PIL_PREC_BITS (32 - 8 - 2)

/* Keys' cubic, a = -0.5; the outer lobe in Pillow's or in PyTorch's arrangement. */
static double cubic(double x, bool torch_form) {
    const double a = -0.5;
    if (x < 0.0)
        x = -x;
    if (x < 1.0)
        return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
    if (x < 2.0)
        return torch_form ? ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
                          : (((x - 5) * x + 8) * x - 4) * a;
    return 0.0;
}

typedef struct coeffs {
    int ksize;
    int prec;    /* fractional bits of the fixed-point weights */
    int *bounds; /* [out][2]: first input index, tap count */
    int32_t *kk; /* [out][ksize] fixed-point weights */
} coeffs;

static void coeffs_free(coeffs *c) {
    qvl_free(c->bounds);
    qvl_free(c->kk);
    c->bounds = NULL;
    c->kk = NULL;
}

/* One axis' weights (box = whole image): Pillow's precompute_coeffs + normalize_coeffs_8bpc,
 * or PyTorch's antialiased index/weight computation + int16 conversion. The two agree on
 * scale, support, window bounds and normalisation. */
static qvl_status coeffs_make(int in_size, int out_size, qvl_resampler rs, coeffs *c) {
    double scale = (double)(float)in_size / out_size;
    double filterscale = scale < 1.0 ? 1.0 : scale;
    double support = 2.0 * filterscale;
    int ksize = (int)ceil(support) * 2 + 1;
    c->ksize = ksize;
    c->bounds = qvl_malloc((size_t)out_size * 2 * sizeof(int));
    c->kk = qvl_malloc((size_t)out_size * (size_t)ksize * sizeof(int32_t));
    double *k = qvl_malloc((size_t)out_size * (size_t)ksize * sizeof(double));
    if (!c->bounds || !c->kk || !k) {
        qvl_free(k);
        coeffs_free(c);
        return QVL_E_NOMEM;
    }
    bool torch_form = rs == QVL_RESAMPLER_TORCH;
    double ss = 1.0 / filterscale;
    double wmax = 0.0;
    for (int xx = 0; xx < out_size; xx++) {
        double center = (xx + 0.5) * scale;
        double ww = 0.0;
        int xmin = (int)(center - support + 0.5);
        if (xmin < 0)
            xmin = 0;
        int xmax = (int)(center + support + 0.5);
        if (xmax > in_size)
            xmax = in_size;
        xmax -= xmin;
        if (xmax > ksize)
            xmax = ksize;
        double *kx = k + (size_t)xx * ksize;
        int x = 0;
        for (; x < xmax; x++) {
            double wt = cubic((x + xmin - center + 0.5) * ss, torch_form);
            kx[x] = wt;
            ww += wt;
        }
        for (x = 0; x < xmax; x++) {
            if (ww != 0.0)
                kx[x] /= ww;
            if (ww != 0.0 && kx[x] > wmax)
                wmax = kx[x];
        }
        for (; x < ksize; x++)
            kx[x] = 0;
        c->bounds[2 * xx + 0] = xmin;
        c->bounds[2 * xx + 1] = xmax;
    }
    int prec = PIL_PREC_BITS;
    if (rs == QVL_RESAMPLER_TORCH) {
        /* the largest p <= 22 whose rounded largest weight fits int16 */
        for (prec = 0; prec < 22; prec++)
            if ((int)(0.5 + wmax * (double)(1 << (prec + 1))) >= (1 << 15))
                break;
    }
    c->prec = prec;
    double one = (double)(1 << prec);
    for (size_t i = 0; i < (size_t)out_size * (size_t)ksize; i++)
        c->kk[i] = k[i] < 0 ? (int32_t)(-0.5 + k[i] * one) : (int32_t)(0.5 + k[i] * one);
    qvl_free(k);
    return QVL_OK;
}

static inline uint8_t clip8(int32_t acc, int prec) {
    if (acc < 0)
        return 0;
    int32_t v = acc >> prec;
    return (uint8_t)(v > 255 ? 255 : v);
}

/* Horizontal pass: rows [y0, y0+nrows) of src (width sw) into dst [nrows][out_w][3]. */
static void resample_h(const uint8_t *src, int sw, int y0, int nrows, uint8_t *dst, int out_w,
                       const coeffs *c) {
    for (int y = 0; y < nrows; y++) {
        const uint8_t *row = src + (size_t)(y0 + y) * sw * 3;
        uint8_t *out = dst + (size_t)y * out_w * 3;
        for (int xx = 0; xx < out_w; xx++) {
            int xmin = c->bounds[2 * xx];
            int n = c->bounds[2 * xx + 1];
            const int32_t *k = c->kk + (size_t)xx * c->ksize;
            int32_t s0 = 1 << (c->prec - 1);
            int32_t s1 = s0;
            int32_t s2 = s0;
            for (int x = 0; x < n; x++) {
                const uint8_t *p = row + (size_t)(xmin + x) * 3;
                s0 += p[0] * k[x];
                s1 += p[1] * k[x];
                s2 += p[2] * k[x];
            }
            out[3 * xx + 0] = clip8(s0, c->prec);
            out[3 * xx + 1] = clip8(s1, c->prec);
            out[3 * xx + 2] = clip8(s2, c->prec);
        }
    }
}

/* Vertical pass: src [..][w][3] -> dst [out_h][w][3]; bounds are relative to src row 0 after
 * subtracting `yshift`. `acc` is scratch of w*3 int32. */
static void resample_v(const uint8_t *src, int w, uint8_t *dst, int out_h, const coeffs *c,
                       int yshift, int32_t *acc) {
    size_t rw = (size_t)w * 3;
    for (int yy = 0; yy < out_h; yy++) {
        int ymin = c->bounds[2 * yy] - yshift;
        int n = c->bounds[2 * yy + 1];
        const int32_t *k = c->kk + (size_t)yy * c->ksize;
        for (size_t i = 0; i < rw; i++)
            acc[i] = 1 << (c->prec - 1);
        for (int y = 0; y < n; y++) {
            const uint8_t *row = src + (size_t)(ymin + y) * rw;
            int32_t ky = k[y];
            for (size_t i = 0; i < rw; i++)
                acc[i] += row[i] * ky;
        }
        uint8_t *out = dst + (size_t)yy * rw;
        for (size_t i = 0; i < rw; i++)
            out[i] = clip8(acc[i], c->prec);
    }
}

qvl_status qvl_img_resize_bicubic(const qvl_rgb *src, int out_w, int out_h, qvl_rgb *dst) {
    return qvl_img_resize_bicubic_rs(src, out_w, out_h, QVL_RESAMPLER_PIL, dst);
}

qvl_status qvl_img_resize_bicubic_rs(const qvl_rgb *src, int out_w, int out_h, qvl_resampler rs,
                                     qvl_rgb *dst) {
    if (!dst)
        return QVL_E_INVAL;
    dst->w = 0;
    dst->h = 0;
    dst->data = NULL;
    if (!src || !src->data || src->w <= 0 || src->h <= 0 || out_w <= 0 || out_h <= 0 ||
        out_w > INT_MAX / 4 || out_h > INT_MAX / 4)
        return QVL_E_INVAL;
    size_t n_out = 0;
    if (!qvl_size_mul((size_t)out_w * 3, (size_t)out_h, &n_out))
        return QVL_E_LIMIT;
    bool need_h = out_w != src->w;
    bool need_v = out_h != src->h;
    coeffs ch = {0};
    coeffs cv = {0};
    uint8_t *tmp = NULL;
    int32_t *acc = NULL;
    qvl_status st = QVL_E_NOMEM;
    uint8_t *out = qvl_malloc(n_out);
    if (!out)
        goto fail;
    if (!need_h && !need_v) {
        memcpy(out, src->data, n_out);
    } else if (!need_v) {
        if ((st = coeffs_make(src->w, out_w, rs, &ch)) != QVL_OK)
            goto fail;
        resample_h(src->data, src->w, 0, src->h, out, out_w, &ch);
    } else {
        if (need_h && (st = coeffs_make(src->w, out_w, rs, &ch)) != QVL_OK)
            goto fail;
        if ((st = coeffs_make(src->h, out_h, rs, &cv)) != QVL_OK)
            goto fail;
        st = QVL_E_NOMEM;
        acc = qvl_malloc((size_t)out_w * 3 * sizeof(int32_t));
        if (!acc)
            goto fail;
        if (!need_h) {
            resample_v(src->data, src->w, out, out_h, &cv, 0, acc);
        } else {
            /* horizontal pass only over the source rows the vertical pass reads */
            int y_first = cv.bounds[0];
            int y_last = cv.bounds[2 * out_h - 2] + cv.bounds[2 * out_h - 1];
            int nrows = y_last - y_first;
            tmp = qvl_malloc((size_t)out_w * 3 * (size_t)nrows);
            if (!tmp)
                goto fail;
            resample_h(src->data, src->w, y_first, nrows, tmp, out_w, &ch);
            resample_v(tmp, out_w, out, out_h, &cv, y_first, acc);
        }
    }
    qvl_free(tmp);
    qvl_free(acc);
    coeffs_free(&ch);
    coeffs_free(&cv);
    dst->w = out_w;
    dst->h = out_h;
    dst->data = out;
    return QVL_OK;
fail:
    qvl_free(tmp);
    qvl_free(acc);
    coeffs_free(&ch);
    coeffs_free(&cv);
    qvl_free(out);
    return st;
}
