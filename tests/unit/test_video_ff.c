/* test_video_ff.c - video file probing and frame decoding (src/video_ff.c). Clips are made in a
 * temporary directory with the ffmpeg CLI from the fixture frames in
 * fixtures/tiny-qwen3vl/videos/tiny_clip_96x64_4fps (10 PNG frames, 96x64, 4 fps) and checked
 * against those PNGs: exactly for RGB-lossless encodes (H.264 RGB, VP9 gbrp, FFV1 bgr0), within
 * max abs diff 2 for lossless yuv444p H.264 (colour conversion), and within a mean abs diff of 12
 * for the palette-quantised GIF. Also: seeking with B-frames against a full sequential decode,
 * unsorted and repeated indices, rotation metadata (reported, not applied), limits, corrupt,
 * truncated, empty and fake-header inputs. Without FFmpeg in the build, it checks the stubs;
 * without the ffmpeg CLI, the clip checks are skipped with a message. */
#include "check.h"
#include "common.h"
#include "image.h"
#include "video_ff.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>


#ifndef QVL_HAVE_FFMPEG
static void no_ffmpeg_checks(void) {
    char err[256] = "";
    qvl_vid_info info;
    CHECK(!qvl_vid_available());
    CHECK(qvl_vid_probe_file("x.mp4", NULL, &info, err, sizeof err) == QVL_E_UNSUPPORTED);
    CHECK(strstr(err, "built without FFmpeg") != NULL);
    int64_t idx = 0;
    qvl_rgb fr = {1, 1, NULL};
    CHECK(qvl_vid_decode_mem("abc", 3, NULL, &idx, 1, &fr, err, sizeof err) == QVL_E_UNSUPPORTED);
    CHECK(fr.data == NULL && fr.w == 0);
}
#endif

#ifdef QVL_HAVE_FFMPEG

static char g_dir[256];
static const char *FRAMES = "fixtures/tiny-qwen3vl/videos/tiny_clip_96x64_4fps";

static char *tmp_path(const char *name) {
    return qvl_path_join(g_dir, name);
}

/* Run an ffmpeg command line (already quoted) making `out` in the temp dir. */
static int run_ffmpeg(const char *args, const char *out) {
    char cmd[4096];
    int k = snprintf(cmd, sizeof cmd, "ffmpeg -nostdin -v error -y %s '%s/%s'", args, g_dir, out);
    if (k < 0 || (size_t)k >= sizeof cmd)
        return -1;
    int rc = system(cmd);
    if (rc != 0) fprintf(stderr, "command failed (%d): %s\n", rc, cmd);
    return rc;
}

static int write_all(const char *path, const void *b, size_t len) {
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    size_t w = fwrite(b, 1, len, f);
    fclose(f);
    return w == len ? 0 : -1;
}

static qvl_rgb g_ref[10];

static int load_reference(void) {
    char err[256];
    for (int i = 0; i < 10; i++) {
        char rel[256];
        snprintf(rel, sizeof rel, "%s/frame_%04d.png", FRAMES, i);
        if (qvl_img_decode_file(shared_path(rel), NULL, &g_ref[i], err, sizeof err) != QVL_OK) {
            fprintf(stderr, "reference frame: %s\n", err);
            return -1;
        }
    }
    return 0;
}

/* max abs and mean abs difference between two images of the same size (-1 when sizes differ) */
static int img_diff(const qvl_rgb *a, const qvl_rgb *b, double *mean) {
    if (!a->data || !b->data || a->w != b->w || a->h != b->h) return -1;
    size_t n = (size_t)a->w * a->h * 3;
    int mx = 0;
    double sum = 0;
    for (size_t i = 0; i < n; i++) {
        int d = abs((int)a->data[i] - (int)b->data[i]);
        if (d > mx) mx = d;
        sum += d;
    }
    if (mean) *mean = sum / (double)n;
    return mx;
}

/* Probe `name` and decode indices against the PNG frames with the given tolerances. */
static void check_clip(const char *name, int max_tol, double mean_tol, int64_t header_frames) {
    char err[512] = "";
    char *p = tmp_path(name);
    qvl_vid_info info;
    qvl_status s = qvl_vid_probe_file(p, NULL, &info, err, sizeof err);
    CHECKF(s == QVL_OK, "%s: %s", name, err);
    if (s == QVL_OK) {
        CHECKF(info.width == 96 && info.height == 64, "%s: %dx%d", name, info.width, info.height);
        CHECKF(info.n_frames == 10, "%s: n_frames %lld", name, (long long)info.n_frames);
        CHECKF(fabs(info.fps - 4.0) < 1e-9, "%s: fps %.9f", name, info.fps);
        CHECKF(fabs(info.duration_s - 2.5) < 1e-9, "%s: duration %.9f", name, info.duration_s);
        CHECKF(info.n_frames_header == header_frames, "%s: header frames %lld", name,
               (long long)info.n_frames_header);
        CHECK(info.rotation == 0);
        CHECK(info.codec && info.container);
    }
    /* sorted, then unsorted with repeats */
    static const int64_t sets[2][5] = {{0, 2, 4, 7, 9}, {9, 0, 9, 3, 3}};
    for (int t = 0; t < 2; t++) {
        qvl_rgb fr[5];
        double ts[5];
        s = qvl_vid_decode_file_ex(p, NULL, sets[t], 5, fr, ts, NULL, err, sizeof err);
        CHECKF(s == QVL_OK, "%s: decode: %s", name, err);
        if (s != QVL_OK) continue;
        for (int i = 0; i < 5; i++) {
            double mean = 0;
            int mx = img_diff(&fr[i], &g_ref[sets[t][i]], &mean);
            CHECKF(mx >= 0 && mx <= max_tol && mean <= mean_tol,
                   "%s: frame %lld max diff %d mean %.3f", name, (long long)sets[t][i], mx, mean);
            CHECKF(fabs(ts[i] - 0.25 * (double)sets[t][i]) < 1e-9, "%s: frame %lld at %.6f s", name,
                   (long long)sets[t][i], ts[i]);
            qvl_rgb_free(&fr[i]);
        }
    }
    qvl_free(p);
}

/* The GIF palette quantisation is lossy, so also compare exactly with the ffmpeg CLI's own
 * decode of the GIF (same decoder, exact bgra -> rgb). */
static void check_gif_exact(void) {
    char err[512] = "";
    char args[1024];
    snprintf(args, sizeof args, "-i '%s/a.gif'", g_dir);
    if (run_ffmpeg(args, "g_%04d.png") != 0) {
        CHECK(0);
        return;
    }
    char *p = tmp_path("a.gif");
    int64_t idx[4] = {1, 8, 5, 1};
    qvl_rgb f[4];
    qvl_status s = qvl_vid_decode_file(p, NULL, idx, 4, f, err, sizeof err);
    CHECKF(s == QVL_OK, "gif: %s", err);
    for (int i = 0; s == QVL_OK && i < 4; i++) {
        char name[64];
        snprintf(name, sizeof name, "g_%04d.png", (int)idx[i] + 1); /* the CLI counts from 1 */
        char *q = tmp_path(name);
        qvl_rgb r = {0};
        CHECK(qvl_img_decode_file(q, NULL, &r, err, sizeof err) == QVL_OK);
        CHECKF(img_diff(&f[i], &r, NULL) == 0, "gif frame %lld differs from the CLI's",
               (long long)idx[i]);
        qvl_rgb_free(&r);
        qvl_rgb_free(&f[i]);
        qvl_free(q);
    }
    qvl_free(p);
}

/* Seeking through a 200-frame H.264 stream with B-frames (GOP 10): every subset must equal the
 * same frames from one sequential decode of the whole clip. */
static void check_seeking(void) {
    char err[512] = "";
    char *p = tmp_path("long.mp4");
    qvl_vid_info info;
    qvl_status s = qvl_vid_probe_file(p, NULL, &info, err, sizeof err);
    CHECKF(s == QVL_OK && info.n_frames == 200 && fabs(info.fps - 25.0) < 1e-9,
           "long.mp4: %s n=%lld fps=%f", err, (long long)info.n_frames, info.fps);
    if (s != QVL_OK || info.n_frames != 200) {
        qvl_free(p);
        return;
    }
    int64_t all_idx[200];
    for (int i = 0; i < 200; i++)
        all_idx[i] = i;
    qvl_rgb *all = calloc(200, sizeof *all);
    s = qvl_vid_decode_file(p, NULL, all_idx, 200, all, err, sizeof err);
    CHECKF(s == QVL_OK, "long.mp4 all: %s", err);
    /* consecutive frames differ (testsrc2 moves), so a wrong frame is detected */
    int distinct = 1;
    for (int i = 1; i < 200 && s == QVL_OK; i++)
        if (img_diff(&all[i], &all[i - 1], NULL) <= 0) distinct = 0;
    CHECK(distinct);
    static const int64_t sub[] = {199, 5, 150, 11, 12, 9, 10, 100, 101, 0, 199, 57};
    const size_t ns = sizeof sub / sizeof sub[0];
    qvl_rgb fr[sizeof sub / sizeof sub[0]];
    double ts[sizeof sub / sizeof sub[0]];
    qvl_vid_info info2;
    qvl_status s2 = qvl_vid_decode_file_ex(p, NULL, sub, ns, fr, ts, &info2, err, sizeof err);
    CHECKF(s2 == QVL_OK, "long.mp4 subset: %s", err);
    CHECK(s2 != QVL_OK || info2.n_frames == 200);
    for (size_t i = 0; s == QVL_OK && s2 == QVL_OK && i < ns; i++) {
        CHECKF(img_diff(&fr[i], &all[sub[i]], NULL) == 0, "long.mp4: frame %lld differs after seek",
               (long long)sub[i]);
        CHECK(fabs(ts[i] - sub[i] / 25.0) < 1e-9);
    }
    for (size_t i = 0; s2 == QVL_OK && i < ns; i++)
        qvl_rgb_free(&fr[i]);
    for (int i = 0; i < 200; i++)
        qvl_rgb_free(&all[i]);
    free(all);

    /* the memory entry points give the same frames */
    size_t len = 0;
    unsigned char *buf = (unsigned char *)check_read_file(p, &len);
    CHECK(buf != NULL);
    if (buf) {
        qvl_vid_info mi;
        CHECK(qvl_vid_probe_mem(buf, len, NULL, &mi, err, sizeof err) == QVL_OK &&
              mi.n_frames == 200);
        int64_t one[2] = {150, 3};
        qvl_rgb a[2];
        qvl_rgb b[2];
        s = qvl_vid_decode_mem(buf, len, NULL, one, 2, a, err, sizeof err);
        s2 = qvl_vid_decode_file(p, NULL, one, 2, b, err, sizeof err);
        CHECKF(s == QVL_OK && s2 == QVL_OK, "mem decode: %s", err);
        if (s == QVL_OK && s2 == QVL_OK) {
            CHECK(img_diff(&a[0], &b[0], NULL) == 0 && img_diff(&a[1], &b[1], NULL) == 0);
            for (int i = 0; i < 2; i++) {
                qvl_rgb_free(&a[i]);
                qvl_rgb_free(&b[i]);
            }
        }
        /* limits: frame size, requested frames, input bytes, duration */
        qvl_vid_limits lim = qvl_vid_limits_default();
        lim.max_pixels = 64 * 48 - 1;
        CHECK(qvl_vid_probe_mem(buf, len, &lim, &mi, err, sizeof err) == QVL_E_LIMIT);
        CHECK(strstr(err, "64x48") != NULL);
        lim = qvl_vid_limits_default();
        lim.max_frames = 1;
        CHECK(qvl_vid_decode_mem(buf, len, &lim, one, 2, a, err, sizeof err) == QVL_E_LIMIT);
        CHECK(a[0].data == NULL && a[1].data == NULL);
        lim = qvl_vid_limits_default();
        lim.max_bytes = len - 1;
        CHECK(qvl_vid_probe_mem(buf, len, &lim, &mi, err, sizeof err) == QVL_E_LIMIT);
        CHECK(qvl_vid_probe_file(p, &lim, &mi, err, sizeof err) == QVL_E_LIMIT);
        lim = qvl_vid_limits_default();
        lim.max_duration_s = 7.5;
        CHECK(qvl_vid_probe_mem(buf, len, &lim, &mi, err, sizeof err) == QVL_E_LIMIT);
        lim = qvl_vid_limits_default();
        lim.max_packets = 199;
        CHECK(qvl_vid_probe_mem(buf, len, &lim, &mi, err, sizeof err) == QVL_E_LIMIT);
        /* index errors */
        int64_t bad[2] = {3, 200};
        CHECK(qvl_vid_decode_mem(buf, len, NULL, bad, 2, a, err, sizeof err) == QVL_E_INVAL);
        CHECK(strstr(err, "200") != NULL && a[0].data == NULL);
        bad[1] = -1;
        CHECK(qvl_vid_decode_mem(buf, len, NULL, bad, 2, a, err, sizeof err) == QVL_E_INVAL);
        CHECK(qvl_vid_decode_mem(buf, len, NULL, bad, 0, a, err, sizeof err) == QVL_E_INVAL);

        /* truncated: moov at the end, so half a file has no index */
        s = qvl_vid_probe_mem(buf, len / 2, NULL, &mi, err, sizeof err);
        CHECKF(s == QVL_E_FORMAT, "half mp4: %d %s", (int)s, err);
        /* flipped bytes in the middle: any clean status; frames valid when OK */
        unsigned char *cor = malloc(len);
        memcpy(cor, buf, len);
        for (size_t i = len / 8; i < len - len / 8; i += 97)
            cor[i] ^= 0x5a;
        int64_t idx3[3] = {0, 100, 199};
        qvl_rgb c3[3];
        s = qvl_vid_decode_mem(cor, len, NULL, idx3, 3, c3, err, sizeof err);
        CHECK(s == QVL_OK || s == QVL_E_FORMAT || s == QVL_E_INVAL || s == QVL_E_UNSUPPORTED);
        if (s == QVL_OK) {
            for (int i = 0; i < 3; i++) {
                CHECK(c3[i].data && c3[i].w == 64 && c3[i].h == 48);
                qvl_rgb_free(&c3[i]);
            }
        } else {
            CHECK(c3[0].data == NULL && strlen(err) > 0);
        }
        free(cor);
        free(buf);
    }
    qvl_free(p);
}

/* Faststart MP4 (index first) cut in half: the probe may succeed, the later frames must fail
 * cleanly or decode to valid images. */
static void check_truncated_faststart(void) {
    char err[512] = "";
    char *p = tmp_path("fast.mp4");
    size_t len = 0;
    unsigned char *buf = (unsigned char *)check_read_file(p, &len);
    CHECK(buf != NULL);
    if (buf) {
        qvl_vid_info mi;
        qvl_status s = qvl_vid_probe_mem(buf, len / 2, NULL, &mi, err, sizeof err);
        CHECK(s == QVL_OK || s == QVL_E_FORMAT);
        if (s == QVL_OK) {
            int64_t idx[2] = {0, mi.n_frames - 1};
            qvl_rgb f[2];
            s = qvl_vid_decode_mem(buf, len / 2, NULL, idx, 2, f, err, sizeof err);
            CHECKF(s == QVL_OK || s == QVL_E_FORMAT, "truncated faststart: %d %s", (int)s, err);
            if (s == QVL_OK) {
                CHECK(f[0].data && f[1].data);
                qvl_rgb_free(&f[0]);
                qvl_rgb_free(&f[1]);
            } else {
                CHECK(f[0].data == NULL && strstr(err, "video in memory") != NULL);
            }
        }
        free(buf);
    }
    qvl_free(p);
}

static void check_rotation(void) {
    /* rot.mp4: a.mp4 with the tkhd matrix set to a 90 degree clockwise display rotation */
    char err[512] = "";
    char *src = tmp_path("a.mp4");
    char *dst = tmp_path("rot.mp4");
    size_t len = 0;
    unsigned char *b = (unsigned char *)check_read_file(src, &len);
    unsigned char *t = NULL;
    for (size_t i = 0; b && i + 4 <= len; i++)
        if (memcmp(b + i, "tkhd", 4) == 0) {
            t = b + i;
            break;
        }
    CHECK(t != NULL && (size_t)(t - b) + 80 <= len);
    if (t && (size_t)(t - b) + 80 <= len) {
        static const int32_t m[9] = {0, 0x10000, 0, -0x10000, 0, 0, 0, 0, 0x40000000};
        unsigned char *q = t + 44;
        for (int i = 0; i < 9; i++) {
            uint32_t u = (uint32_t)m[i];
            q[4 * i] = (unsigned char)(u >> 24);
            q[4 * i + 1] = (unsigned char)(u >> 16);
            q[4 * i + 2] = (unsigned char)(u >> 8);
            q[4 * i + 3] = (unsigned char)u;
        }
        CHECK(write_all(dst, b, len) == 0);
        qvl_vid_info info;
        CHECK(qvl_vid_probe_file(dst, NULL, &info, err, sizeof err) == QVL_OK);
        CHECKF(info.rotation == 90, "rotation %d", info.rotation);
        /* not applied: frames keep the coded 96x64 size and content */
        int64_t i1 = 4;
        qvl_rgb f;
        CHECK(qvl_vid_decode_file(dst, NULL, &i1, 1, &f, err, sizeof err) == QVL_OK);
        CHECK(f.w == 96 && f.h == 64 && img_diff(&f, &g_ref[4], NULL) <= 2);
        qvl_rgb_free(&f);
    }
    free(b);
    qvl_free(src);
    qvl_free(dst);
}

static void check_bad_inputs(void) {
    char err[512] = "";
    qvl_vid_info info;
    /* empty file and empty buffer */
    char *p = tmp_path("empty.mp4");
    CHECK(write_all(p, "", 0) == 0);
    CHECK(qvl_vid_probe_file(p, NULL, &info, err, sizeof err) == QVL_E_FORMAT);
    CHECK(strstr(err, "empty.mp4") != NULL && strstr(err, "empty") != NULL);
    CHECK(qvl_vid_probe_mem("", 0, NULL, &info, err, sizeof err) == QVL_E_FORMAT);
    qvl_free(p);
    /* missing file, a directory */
    p = tmp_path("missing.mp4");
    CHECK(qvl_vid_probe_file(p, NULL, &info, err, sizeof err) == QVL_E_IO);
    CHECK(strstr(err, "missing.mp4") != NULL);
    qvl_free(p);
    CHECK(qvl_vid_probe_file(g_dir, NULL, &info, err, sizeof err) == QVL_E_IO);
    /* garbage */
    unsigned char junk[4096];
    for (size_t i = 0; i < sizeof junk; i++)
        junk[i] = (unsigned char)(i * 2654435761u >> 13);
    qvl_status s = qvl_vid_probe_mem(junk, sizeof junk, NULL, &info, err, sizeof err);
    CHECKF(s == QVL_E_FORMAT || s == QVL_E_UNSUPPORTED, "junk: %d %s", (int)s, err);
    CHECK(info.n_frames == 0);
    /* an image is not a video container we accept */
    char rel[256];
    snprintf(rel, sizeof rel, "%s/frame_0000.png", FRAMES);
    s = qvl_vid_probe_file(shared_path(rel), NULL, &info, err, sizeof err);
    CHECKF(s == QVL_E_UNSUPPORTED && strstr(err, "not supported"), "png: %d %s", (int)s, err);
    /* Y4M header claiming 100000x100000: FFmpeg's demuxer itself refuses it */
    static const char y4m_huge[] = "YUV4MPEG2 W100000 H100000 F4:1 Ip A1:1 C420jpeg\nFRAME\n"
                                   "0123456789abcdef";
    s = qvl_vid_probe_mem(y4m_huge, sizeof y4m_huge - 1, NULL, &info, err, sizeof err);
    CHECKF(s == QVL_E_FORMAT || s == QVL_E_LIMIT, "y4m huge: %d %s", (int)s, err);
    /* 16000x16000 passes FFmpeg's own check but not our 64 Mi pixel cap: refused before any
     * frame is read */
    static const char y4m_big[] = "YUV4MPEG2 W16000 H16000 F4:1 Ip A1:1 C420jpeg\nFRAME\n"
                                  "0123456789abcdef";
    s = qvl_vid_probe_mem(y4m_big, sizeof y4m_big - 1, NULL, &info, err, sizeof err);
    CHECKF(s == QVL_E_LIMIT && strstr(err, "16000x16000"), "y4m big: %d %s", (int)s, err);
    int64_t i0 = 0;
    qvl_rgb f;
    CHECK(qvl_vid_decode_mem(y4m_big, sizeof y4m_big - 1, NULL, &i0, 1, &f, err, sizeof err) ==
          QVL_E_LIMIT);
    CHECK(f.data == NULL);
    /* Y4M with a header and no frames */
    static const char y4m_none[] = "YUV4MPEG2 W16 H16 F4:1 Ip A1:1 C420jpeg\n";
    s = qvl_vid_probe_mem(y4m_none, sizeof y4m_none - 1, NULL, &info, err, sizeof err);
    CHECKF(s == QVL_E_FORMAT, "y4m no frames: %d %s", (int)s, err);
    /* a complete small Y4M decodes (sanity of the raw path) */
    static unsigned char y4m_ok[64 + 2 * (6 + 16 * 16 * 3 / 2)];
    size_t n = 0;
    const char *hd = "YUV4MPEG2 W16 H16 F4:1 Ip A1:1 C420jpeg\n";
    memcpy(y4m_ok, hd, strlen(hd));
    n = strlen(hd);
    for (int fi = 0; fi < 2; fi++) {
        memcpy(y4m_ok + n, "FRAME\n", 6);
        n += 6;
        memset(y4m_ok + n, fi ? 200 : 50, 16 * 16);
        memset(y4m_ok + n + 256, 128, 128);
        n += 384;
    }
    s = qvl_vid_probe_mem(y4m_ok, n, NULL, &info, err, sizeof err);
    CHECKF(s == QVL_OK && info.n_frames == 2 && info.width == 16, "y4m ok: %d %s", (int)s, err);
    int64_t i1 = 1;
    if (qvl_vid_decode_mem(y4m_ok, n, NULL, &i1, 1, &f, err, sizeof err) == QVL_OK) {
        /* limited-range BT.601 grey: (200 - 16) * 255 / 219 = 214.2 */
        CHECKF(f.data[0] == 214 && f.data[1] == 214 && f.data[2] == 214, "y4m grey %d %d %d",
               f.data[0], f.data[1], f.data[2]);
        qvl_rgb_free(&f);
    } else {
        CHECKF(0, "y4m decode: %s", err);
    }

    /* MKV whose Segment Duration claims ~278 hours: refused before the scan */
    p = tmp_path("a.mkv");
    size_t len = 0;
    unsigned char *b = (unsigned char *)check_read_file(p, &len);
    unsigned char *d = NULL;
    for (size_t i = 0; b && i + 11 <= len; i++)
        if (b[i] == 0x44 && b[i + 1] == 0x89 && b[i + 2] == 0x88) {
            d = b + i + 3;
            break;
        }
    CHECK(d != NULL);
    if (d) {
        double ms = 1e9; /* TimecodeScale 1 ms: 1e6 s */
        uint64_t u;
        memcpy(&u, &ms, 8);
        for (int k = 0; k < 8; k++)
            d[k] = (unsigned char)(u >> (56 - 8 * k));
        s = qvl_vid_probe_mem(b, len, NULL, &info, err, sizeof err);
        CHECKF(s == QVL_E_LIMIT && strstr(err, "duration"), "long mkv: %d %s", (int)s, err);
    }
    free(b);
    qvl_free(p);
}

/* qvl_video_load_mem gives the same video as qvl_video_load on the file; the decoded-pixel
 * budget is exact (sampled frames x width x height) and refuses before decoding */
static void check_public_load(void) {
    char err[512] = "";
    char *p = tmp_path("long.mp4");
    size_t len = 0;
    char *buf = check_read_file(p, &len);
    CHECK(buf != NULL);
    if (!buf) {
        qvl_free(p);
        return;
    }
    qvl_video *a = NULL, *b = NULL;
    CHECKF(qvl_video_load(NULL, p, 0, NULL, &a, err, sizeof err) == QVL_OK, "load: %s", err);
    CHECKF(qvl_video_load_mem(NULL, buf, len, NULL, &b, err, sizeof err) == QVL_OK, "mem: %s",
           err);
    int64_t ia[1024], ib[1024];
    size_t na = a ? qvl_video_frame_indices(a, ia, 1024) : 0;
    size_t nb = b ? qvl_video_frame_indices(b, ib, 1024) : 0;
    CHECK(na > 0 && na == nb && na <= 1024 && !memcmp(ia, ib, na * sizeof *ia));
    qvl_video_plan pa, pb;
    CHECK(a && b && qvl_video_plan_get(NULL, a, &pa, err, sizeof err) == QVL_OK &&
          qvl_video_plan_get(NULL, b, &pb, err, sizeof err) == QVL_OK &&
          pa.n_tokens == pb.n_tokens && pa.grid_t == pb.grid_t);
    qvl_video_free(a);
    qvl_video_free(b);
    qvl_video_opts o = {0};
    o.max_decoded_pixels = (uint64_t)na * 64 * 48; /* exactly enough */
    b = NULL;
    CHECKF(qvl_video_load_mem(NULL, buf, len, &o, &b, err, sizeof err) == QVL_OK && b,
           "budget exactly met: %s", err);
    qvl_video_free(b);
    o.max_decoded_pixels--;
    b = NULL;
    CHECK(qvl_video_load_mem(NULL, buf, len, &o, &b, err, sizeof err) == QVL_E_LIMIT && !b &&
          strstr(err, "budget"));
    CHECK(qvl_video_load(NULL, p, 0, &o, &b, err, sizeof err) == QVL_E_LIMIT && !b);
    CHECK(qvl_video_load_mem(NULL, buf, 0, NULL, &b, err, sizeof err) == QVL_E_INVAL && !b);
    CHECK(qvl_video_load_mem(NULL, buf, len / 3, NULL, &b, err, sizeof err) != QVL_OK && !b);
    free(buf);
    qvl_free(p);
}

static void ffmpeg_checks(void) {
    if (system("ffmpeg -version >/dev/null 2>&1") != 0) {
        printf("SKIP: the ffmpeg CLI is not installed, clip checks skipped\n");
        return;
    }
    CHECK(qvl_vid_available());
    if (load_reference() != 0) {
        CHECK(0);
        return;
    }
    snprintf(g_dir, sizeof g_dir, "/tmp/qvl_video_XXXXXX");
    if (!mkdtemp(g_dir)) {
        CHECK(0);
        return;
    }
    char in[1024];
    snprintf(in, sizeof in, "-framerate 4 -i '%s/frame_%%04d.png'", shared_path(FRAMES));
    char args[2048];
    struct {
        const char *opts;
        const char *out;
    } clips[] = {
        {"-c:v libx264 -qp 0 -pix_fmt yuv444p", "a.mp4"},
        {"-c:v libx264 -qp 0 -pix_fmt yuv444p -movflags +faststart", "fast.mp4"},
        {"-c:v libx264rgb -qp 0 -pix_fmt bgr24", "rgb.mp4"},
        {"-c:v libvpx-vp9 -lossless 1 -pix_fmt gbrp -deadline realtime -cpu-used 8", "a.webm"},
        {"-c:v ffv1 -pix_fmt bgr0", "a.mkv"},
        {"-filter_complex \"split[a][b];[a]palettegen[p];[b][p]paletteuse=dither=none\"", "a.gif"},
    };
    int ok = 1;
    for (size_t i = 0; i < sizeof clips / sizeof clips[0]; i++) {
        snprintf(args, sizeof args, "%s %s", in, clips[i].opts);
        if (run_ffmpeg(args, clips[i].out) != 0) ok = 0;
    }
    /* every frame distinct (geq over the frame number N) */
    if (run_ffmpeg("-f lavfi -i \"nullsrc=s=64x48:r=25:d=8,geq=lum='mod(N*5+X*3+Y,256)':"
                   "cb='mod(N*3+X,256)':cr='mod(4*Y+N,256)'\" -c:v libx264 -qp 0 "
                   "-pix_fmt yuv444p -g 10 -bf 2",
                   "long.mp4") != 0)
        ok = 0;
    CHECK(ok);
    if (ok) {
        check_clip("a.mp4", 2, 1.0, 10);
        check_clip("rgb.mp4", 0, 0.0, 10);
        check_clip("a.webm", 0, 0.0, 0);
        check_clip("a.mkv", 0, 0.0, 0);
        check_clip("a.gif", 40, 8.0, 10);
        check_gif_exact();
        check_seeking();
        check_truncated_faststart();
        check_rotation();
        check_bad_inputs();
        check_public_load();
    }
    char cmd[512];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", g_dir);
    for (int i = 0; i < 10; i++)
        qvl_rgb_free(&g_ref[i]);
}
#endif


int main(void) {
    qvl_vid_limits d = qvl_vid_limits_default();
    CHECK(d.max_pixels == QVL_IMG_DEFAULT_MAX_PIXELS && d.max_frames == 768);
    CHECK(d.max_duration_s == 4 * 3600.0 && d.max_bytes == (size_t)2 << 30);
#ifdef QVL_HAVE_FFMPEG
    ffmpeg_checks();
#else
    printf("SKIP: built without FFmpeg, only the stubs are checked\n");
    no_ffmpeg_checks();
#endif
    CHECK_DONE();
}
