/* video_ff.c - video probing and frame decoding with FFmpeg (libavformat demuxing through our own
 * AVIOContext, libavcodec decoding, libswscale conversion to RGB24). See video_ff.h for the
 * reference behaviour this follows. Built only with -DQVL_HAVE_FFMPEG; otherwise every entry point
 * returns QVL_E_UNSUPPORTED "built without FFmpeg". */
#include "video_ff.h"
#include "common.h"

#include <string.h>

qvl_vid_limits qvl_vid_limits_default(void) {
    qvl_vid_limits l;
    l.max_pixels = QVL_IMG_DEFAULT_MAX_PIXELS;
    l.max_frames = QVL_VID_DEFAULT_MAX_FRAMES;
    l.max_duration_s = QVL_VID_DEFAULT_MAX_DURATION_S;
    l.max_bytes = QVL_VID_DEFAULT_MAX_BYTES;
    l.max_packets = QVL_VID_DEFAULT_MAX_PACKETS;
    return l;
}

static const char MEM_NAME[] = "video in memory";

#ifndef QVL_HAVE_FFMPEG

bool qvl_vid_available(void) {
    return false;
}

static qvl_status no_ffmpeg(const char *name, char *err, size_t err_len) {
    qvl_errf(err, err_len, "%s: cannot decode video: built without FFmpeg", name ? name : "video");
    return QVL_E_UNSUPPORTED;
}

qvl_status qvl_vid_probe_file(const char *path, const qvl_vid_limits *lim, qvl_vid_info *info,
                              char *err, size_t err_len) {
    (void)lim;
    if (info) memset(info, 0, sizeof *info);
    return no_ffmpeg(path, err, err_len);
}

qvl_status qvl_vid_probe_mem(const void *buf, size_t len, const qvl_vid_limits *lim,
                             qvl_vid_info *info, char *err, size_t err_len) {
    (void)buf;
    (void)len;
    (void)lim;
    if (info) memset(info, 0, sizeof *info);
    return no_ffmpeg(MEM_NAME, err, err_len);
}

qvl_status qvl_vid_decode_file_ex(const char *path, const qvl_vid_limits *lim,
                                  const int64_t *indices, size_t n, qvl_rgb *frames,
                                  double *times_s, qvl_vid_info *info, char *err, size_t err_len) {
    (void)lim;
    (void)indices;
    (void)times_s;
    if (frames) memset(frames, 0, n * sizeof *frames);
    if (info) memset(info, 0, sizeof *info);
    return no_ffmpeg(path, err, err_len);
}

qvl_status qvl_vid_decode_mem_ex(const void *buf, size_t len, const qvl_vid_limits *lim,
                                 const int64_t *indices, size_t n, qvl_rgb *frames, double *times_s,
                                 qvl_vid_info *info, char *err, size_t err_len) {
    (void)buf;
    (void)len;
    (void)lim;
    (void)indices;
    (void)times_s;
    if (frames) memset(frames, 0, n * sizeof *frames);
    if (info) memset(info, 0, sizeof *info);
    return no_ffmpeg(MEM_NAME, err, err_len);
}

#else /* QVL_HAVE_FFMPEG */

#    include <libavcodec/avcodec.h>
#    include <libavformat/avformat.h>
#    include <libavutil/display.h>
#    include <libavutil/imgutils.h>
#    include <libavutil/avstring.h>
#    include <libavutil/mem.h>
#    include <libswscale/swscale.h>

#    include <errno.h>
#    include <math.h>
#    include <pthread.h>
#    include <stdio.h>
#    include <stdlib.h>
#    include <sys/stat.h>

#    define IO_BUF_SIZE 32768
#    define MAX_EAGAIN  1000 /* EAGAIN from a demuxer this many times in a row ends the input */

/* Containers we accept (tokens of AVInputFormat.name). Everything else, notably playlist and
 * concat demuxers that open other files or URLs, is refused. */
static const char FORMAT_WHITELIST[] = "mov,mp4,matroska,webm,gif,avi,mpegts,mpeg,flv,ogg,"
                                       "yuv4mpegpipe,ivf,h264,hevc,m4v,asf,apng,nut";

bool qvl_vid_available(void) {
    return true;
}

/* `in` (may be NULL) with every zero or negative field replaced by its default. */
static qvl_vid_limits lim_resolve(const qvl_vid_limits *in) {
    qvl_vid_limits d = qvl_vid_limits_default();
    if (!in) return d;
    qvl_vid_limits l = *in;
    if (l.max_pixels == 0) l.max_pixels = d.max_pixels;
    if (l.max_frames <= 0) l.max_frames = d.max_frames;
    if (!(l.max_duration_s > 0)) l.max_duration_s = d.max_duration_s;
    if (l.max_bytes == 0) l.max_bytes = d.max_bytes;
    if (l.max_packets <= 0) l.max_packets = d.max_packets;
    return l;
}

/* ---- FFmpeg logging ------------------------------------------------------ */

/* FFmpeg prints to stderr by default; libqvl never prints, so its messages go to qvl_log. */
static void ff_log_cb(void *avcl, int level, const char *fmt, va_list vl) {
    if (level > AV_LOG_WARNING || !qvl_log_enabled(QVL_LOG_DEBUG)) return;
    char line[512];
    int prefix = 1;
    av_log_format_line2(avcl, level, fmt, vl, line, sizeof line, &prefix);
    size_t k = strlen(line);
    while (k && (line[k - 1] == '\n' || line[k - 1] == '\r'))
        line[--k] = 0;
    qvl_log(QVL_LOG_DEBUG, "ffmpeg: %s", line);
}

static pthread_once_t g_ff_once = PTHREAD_ONCE_INIT;
static void ff_init_once(void) {
    av_log_set_callback(ff_log_cb);
}

/* ---- input: a memory buffer or a regular file -------------------------- */

typedef struct vsrc {
    const uint8_t *buf; /* memory input (borrowed), or NULL */
    FILE *fp;           /* file input, or NULL */
    size_t len;         /* total bytes */
    size_t pos;         /* memory read position */
} vsrc;

static int src_read(void *opaque, uint8_t *dst, int want) {
    vsrc *s = opaque;
    if (want <= 0) return 0;
    if (s->fp) {
        size_t got = fread(dst, 1, (size_t)want, s->fp);
        if (got == 0) return ferror(s->fp) ? AVERROR(EIO) : AVERROR_EOF;
        return (int)got;
    }
    if (s->pos >= s->len) return AVERROR_EOF;
    size_t k = s->len - s->pos;
    if (k > (size_t)want) k = (size_t)want;
    memcpy(dst, s->buf + s->pos, k);
    s->pos += k;
    return (int)k;
}

static int64_t src_seek(void *opaque, int64_t off, int whence) {
    vsrc *s = opaque;
    whence &= ~AVSEEK_FORCE;
    if (whence == AVSEEK_SIZE) return (int64_t)s->len;
    int64_t base;
    if (whence == SEEK_SET)
        base = 0;
    else if (whence == SEEK_CUR)
        base = s->fp ? (int64_t)ftello(s->fp) : (int64_t)s->pos;
    else if (whence == SEEK_END)
        base = (int64_t)s->len;
    else
        return AVERROR(EINVAL);
    int64_t to;
    if (__builtin_add_overflow(base, off, &to) || to < 0 || (uint64_t)to > (uint64_t)s->len)
        return AVERROR(EINVAL);
    if (s->fp) {
        if (fseeko(s->fp, (off_t)to, SEEK_SET) != 0) return AVERROR(EIO);
        clearerr(s->fp);
    } else {
        s->pos = (size_t)to;
    }
    return to;
}

static void src_rewind(vsrc *s) {
    if (s->fp) {
        (void)fseeko(s->fp, 0, SEEK_SET);
        clearerr(s->fp);
    }
    s->pos = 0;
}

/* Nested opens (HLS segments, mov external references, ...) are refused. */
static int refuse_io_open(struct AVFormatContext *fc, AVIOContext **pb, const char *url, int flags,
                          AVDictionary **options) {
    (void)fc;
    (void)url;
    (void)flags;
    (void)options;
    *pb = NULL;
    return AVERROR(EPERM);
}

/* ---- one open video ------------------------------------------------------ */

typedef struct vid {
    const char *name; /* for messages */
    vsrc src;
    qvl_vid_limits lim;
    AVIOContext *pb;
    AVFormatContext *fmt;
    AVCodecContext *dec;
    const AVCodec *codec;
    AVStream *st;
    int si;
    /* scan */
    int64_t *pts; /* [n] presentation timestamps, sorted (stream time base) */
    int64_t n;
    int64_t *kf; /* [n_kf] keyframe timestamps, sorted */
    int64_t n_kf;
    bool seq; /* timestamps unusable: frames are counted in output order from the start */
    qvl_vid_info info;
} vid;

static qvl_status av_status(int e) {
    if (e == AVERROR(ENOMEM)) return QVL_E_NOMEM;
    if (e == AVERROR(EIO)) return QVL_E_IO;
    return QVL_E_FORMAT;
}

static const char *av_msg(int e, char *buf, size_t len) {
    if (av_strerror(e, buf, len) < 0) snprintf(buf, len, "error %d", e);
    return buf;
}

static void vid_close_input(vid *v) {
    if (v->dec) avcodec_free_context(&v->dec);
    if (v->fmt) avformat_close_input(&v->fmt);
    if (v->pb) {
        av_freep(&v->pb->buffer);
        avio_context_free(&v->pb);
    }
    v->st = NULL;
    v->codec = NULL;
    v->si = -1;
}

static void vid_free(vid *v) {
    vid_close_input(v);
    qvl_free(v->pts);
    qvl_free(v->kf);
    v->pts = v->kf = NULL;
    if (v->src.fp) fclose(v->src.fp);
    v->src.fp = NULL;
}

static double q2d_or0(AVRational r) {
    return (r.num > 0 && r.den > 0) ? av_q2d(r) : 0.0;
}

/* Claimed durations (container and stream header) against max_duration_s. */
static qvl_status check_claimed_duration(vid *v, char *err, size_t err_len) {
    double d = 0;
    if (v->fmt->duration != AV_NOPTS_VALUE && v->fmt->duration > 0)
        d = (double)v->fmt->duration / AV_TIME_BASE;
    if (v->st && v->st->duration != AV_NOPTS_VALUE && v->st->duration > 0) {
        double ds = (double)v->st->duration * q2d_or0(v->st->time_base);
        if (ds > d) d = ds;
    }
    if (d > v->lim.max_duration_s) {
        qvl_errf(err, err_len, "%s: video duration %.0f s is over the limit of %.0f s", v->name, d,
                 v->lim.max_duration_s);
        return QVL_E_LIMIT;
    }
    return QVL_OK;
}

static qvl_status check_size(vid *v, int w, int h, const char *what, char *err, size_t err_len) {
    if (w <= 0 || h <= 0) {
        qvl_errf(err, err_len, "%s: %s has no valid frame size (%dx%d)", v->name, what, w, h);
        return QVL_E_FORMAT;
    }
    if ((uint64_t)w * (uint64_t)h > v->lim.max_pixels) {
        qvl_errf(err, err_len, "%s: %s frame size %dx%d is over the limit of %llu pixels", v->name,
                 what, w, h, (unsigned long long)v->lim.max_pixels);
        return QVL_E_LIMIT;
    }
    return QVL_OK;
}

/* Open the input through our AVIOContext, check the container against the whitelist and the
 * header against the limits, read the stream parameters and choose the video stream. On error
 * everything opened here is closed again. */
static qvl_status vid_open(vid *v, char *err, size_t err_len) {
    char eb[128];
    qvl_status st = QVL_OK;
    int e;
    AVDictionary **sopts = NULL;
    unsigned n_sopts = 0;

    uint8_t *iobuf = av_malloc(IO_BUF_SIZE);
    if (!iobuf) goto err_nomem;
    v->pb = avio_alloc_context(iobuf, IO_BUF_SIZE, 0, &v->src, src_read, NULL, src_seek);
    if (!v->pb) {
        av_free(iobuf);
        goto err_nomem;
    }
    const AVInputFormat *ifmt = NULL;
    e = av_probe_input_buffer2(v->pb, &ifmt, "", NULL, 0, 0);
    if (e < 0 || !ifmt) {
        if (e == AVERROR(ENOMEM)) goto err_nomem;
        qvl_errf(err, err_len, "%s: not a recognised video container (%s)", v->name,
                 e < 0 ? av_msg(e, eb, sizeof eb) : "unknown format");
        st = QVL_E_FORMAT;
        goto err_close;
    }
    if (av_match_list(ifmt->name, FORMAT_WHITELIST, ',') <= 0) {
        qvl_errf(err, err_len, "%s: container '%s' is not supported for video", v->name,
                 ifmt->name);
        st = QVL_E_UNSUPPORTED;
        goto err_close;
    }
    v->fmt = avformat_alloc_context();
    if (!v->fmt) goto err_nomem;
    v->fmt->pb = v->pb;
    v->fmt->flags |= AVFMT_FLAG_CUSTOM_IO;
    v->fmt->io_open = refuse_io_open;
    e = avformat_open_input(&v->fmt, "", ifmt, NULL); /* frees fmt on failure */
    if (e < 0) {
        st = av_status(e);
        qvl_errf(err, err_len, "%s: cannot read the %s container: %s", v->name, ifmt->name,
                 av_msg(e, eb, sizeof eb));
        goto err_close;
    }
    /* header checks before any decoding (avformat_find_stream_info decodes a few frames) */
    for (unsigned i = 0; i < v->fmt->nb_streams; i++) {
        const AVCodecParameters *par = v->fmt->streams[i]->codecpar;
        if (par->codec_type == AVMEDIA_TYPE_VIDEO &&
            (uint64_t)(par->width > 0 ? par->width : 0) *
                    (uint64_t)(par->height > 0 ? par->height : 0) >
                v->lim.max_pixels) {
            st = check_size(v, par->width, par->height, "the header's", err, err_len);
            goto err_close;
        }
    }
    if ((st = check_claimed_duration(v, err, err_len)) != QVL_OK) goto err_close;

    /* stream info with the pixel cap and a single thread for every decoder it opens */
    n_sopts = v->fmt->nb_streams;
    if (n_sopts) {
        sopts = av_calloc(n_sopts, sizeof *sopts);
        if (!sopts) goto err_nomem;
        char mp[32];
        snprintf(mp, sizeof mp, "%llu", (unsigned long long)v->lim.max_pixels);
        for (unsigned i = 0; i < n_sopts; i++) {
            if (av_dict_set(&sopts[i], "max_pixels", mp, 0) < 0 ||
                av_dict_set(&sopts[i], "threads", "1", 0) < 0)
                goto err_nomem;
        }
    }
    e = avformat_find_stream_info(v->fmt, sopts);
    if (e < 0) {
        st = av_status(e);
        qvl_errf(err, err_len, "%s: cannot read the stream parameters: %s", v->name,
                 av_msg(e, eb, sizeof eb));
        goto err_close;
    }

    /* the best video stream that is not an attached cover picture */
    const AVCodec *codec = NULL;
    int si = av_find_best_stream(v->fmt, AVMEDIA_TYPE_VIDEO, -1, -1, &codec, 0);
    if (si >= 0 && (v->fmt->streams[si]->disposition & AV_DISPOSITION_ATTACHED_PIC)) {
        si = AVERROR_STREAM_NOT_FOUND;
        for (unsigned i = 0; i < v->fmt->nb_streams; i++) {
            const AVStream *s = v->fmt->streams[i];
            if (s->codecpar->codec_type == AVMEDIA_TYPE_VIDEO &&
                !(s->disposition & AV_DISPOSITION_ATTACHED_PIC)) {
                si = (int)i;
                codec = avcodec_find_decoder(s->codecpar->codec_id);
                if (!codec) si = AVERROR_DECODER_NOT_FOUND;
                break;
            }
        }
    }
    if (si == AVERROR_DECODER_NOT_FOUND) {
        /* name the codec of the first video stream */
        const char *cn = "unknown";
        for (unsigned i = 0; i < v->fmt->nb_streams; i++)
            if (v->fmt->streams[i]->codecpar->codec_type == AVMEDIA_TYPE_VIDEO) {
                cn = avcodec_get_name(v->fmt->streams[i]->codecpar->codec_id);
                break;
            }
        qvl_errf(err, err_len, "%s: no decoder for the video codec '%s'", v->name, cn);
        st = QVL_E_UNSUPPORTED;
        goto err_close;
    }
    if (si < 0 || !codec) {
        qvl_errf(err, err_len, "%s: no video stream", v->name);
        st = QVL_E_FORMAT;
        goto err_close;
    }
    v->si = si;
    v->st = v->fmt->streams[si];
    v->codec = codec;
    for (unsigned i = 0; i < v->fmt->nb_streams; i++)
        if ((int)i != si) v->fmt->streams[i]->discard = AVDISCARD_ALL;
    const AVCodecParameters *par = v->st->codecpar;
    if ((st = check_size(v, par->width, par->height, "the video stream", err, err_len)) != QVL_OK)
        goto err_close;
    if ((st = check_claimed_duration(v, err, err_len)) != QVL_OK) goto err_close;
    if (v->st->time_base.num <= 0 || v->st->time_base.den <= 0) {
        qvl_errf(err, err_len, "%s: the video stream has no valid time base", v->name);
        st = QVL_E_FORMAT;
        goto err_close;
    }

    /* header facts */
    qvl_vid_info *in = &v->info;
    in->width = par->width;
    in->height = par->height;
    in->n_frames_header = v->st->nb_frames > 0 ? v->st->nb_frames : 0;
    in->fps_header = q2d_or0(v->st->avg_frame_rate);
    in->codec = avcodec_get_name(par->codec_id);
    in->container = v->fmt->iformat->name;
    in->rotation = 0;
    size_t sd_size = 0;
    const uint8_t *sd = av_stream_get_side_data(v->st, AV_PKT_DATA_DISPLAYMATRIX, &sd_size);
    if (sd && sd_size >= 9 * sizeof(int32_t)) {
        double theta = av_display_rotation_get((const int32_t *)sd);
        if (isfinite(theta)) {
            long r = -lround(theta); /* counter-clockwise to clockwise */
            r %= 360;
            if (r < 0) r += 360;
            in->rotation = (int)r;
        }
    }
    goto out;

err_nomem:
    qvl_errf(err, err_len, "%s: out of memory opening the video", v->name);
    st = QVL_E_NOMEM;
err_close:
    vid_close_input(v);
out:
    if (sopts) {
        for (unsigned i = 0; i < n_sopts; i++)
            av_dict_free(&sopts[i]);
        av_free(sopts);
    }
    return st;
}

static int cmp_i64(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a;
    int64_t y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* Append to a qvl_realloc'd int64 array with capacity doubling. */
static bool push_i64(int64_t **a, int64_t *n, int64_t *cap, int64_t x) {
    if (*n == *cap) {
        int64_t nc = *cap ? *cap * 2 : 256;
        size_t bytes;
        if (!qvl_size_mul((size_t)nc, sizeof **a, &bytes)) return false;
        int64_t *p = qvl_realloc(*a, bytes);
        if (!p) return false;
        *a = p;
        *cap = nc;
    }
    (*a)[(*n)++] = x;
    return true;
}

/* Demux (no decoding) every packet of the chosen stream: frame count, sorted timestamps,
 * keyframe timestamps, content duration and the reference's average fps. Leaves the demuxer at
 * the end of the input. */
static qvl_status vid_scan(vid *v, char *err, size_t err_len) {
    char eb[128];
    qvl_status st = QVL_OK;
    int64_t cap = 0;
    int64_t kcap = 0;
    int64_t end = INT64_MIN;
    bool any_nopts = false;
    AVPacket *pkt = av_packet_alloc();
    if (!pkt) goto err_nomem;
    int n_again = 0;
    for (;;) {
        int e = av_read_frame(v->fmt, pkt);
        if (e == AVERROR(EAGAIN) && ++n_again < MAX_EAGAIN) continue;
        n_again = 0;
        if (e < 0) {
            if (e == AVERROR(ENOMEM)) goto err_nomem;
            if (e != AVERROR_EOF)
                qvl_log(QVL_LOG_DEBUG, "%s: demuxing stopped: %s", v->name,
                        av_msg(e, eb, sizeof eb));
            break;
        }
        if (pkt->stream_index == v->si && !(pkt->flags & AV_PKT_FLAG_DISCARD)) {
            if (v->n >= v->lim.max_packets) {
                qvl_errf(err, err_len, "%s: the video has more than %lld frames", v->name,
                         (long long)v->lim.max_packets);
                st = QVL_E_LIMIT;
                av_packet_unref(pkt);
                goto out;
            }
            int64_t t = pkt->pts;
            if (t == AV_NOPTS_VALUE) {
                any_nopts = true;
                t = 0;
            }
            if (!push_i64(&v->pts, &v->n, &cap, t)) goto err_nomem;
            if ((pkt->flags & AV_PKT_FLAG_KEY) && pkt->pts != AV_NOPTS_VALUE &&
                !push_i64(&v->kf, &v->n_kf, &kcap, t))
                goto err_nomem;
            int64_t te;
            if (pkt->pts != AV_NOPTS_VALUE &&
                !__builtin_add_overflow(t, pkt->duration > 0 ? pkt->duration : 0, &te) && te > end)
                end = te;
        }
        av_packet_unref(pkt);
    }
    if (v->n == 0) {
        qvl_errf(err, err_len, "%s: the video stream contains no frames", v->name);
        st = QVL_E_FORMAT;
        goto out;
    }
    qvl_vid_info *in = &v->info;
    in->n_frames = v->n;
    double tb = av_q2d(v->st->time_base);
    if (!any_nopts) {
        qsort(v->pts, (size_t)v->n, sizeof *v->pts, cmp_i64);
        if (v->n_kf > 0) /* no keyframe flags at all: kf was never allocated */
            qsort(v->kf, (size_t)v->n_kf, sizeof *v->kf, cmp_i64);
        for (int64_t i = 1; i < v->n && !any_nopts; i++)
            if (v->pts[i] == v->pts[i - 1])
                any_nopts = true; /* duplicate timestamps: the order is ambiguous */
    }
    if (any_nopts) {
        v->seq = true;
        in->start_s = 0;
        double d = 0;
        if (v->st->duration != AV_NOPTS_VALUE && v->st->duration > 0)
            d = (double)v->st->duration * tb;
        else if (v->fmt->duration != AV_NOPTS_VALUE && v->fmt->duration > 0)
            d = (double)v->fmt->duration / AV_TIME_BASE;
        in->fps = in->fps_header > 0 ? in->fps_header : q2d_or0(v->st->r_frame_rate);
        if (d <= 0 && in->fps > 0) d = (double)v->n / in->fps;
        in->duration_s = d;
    } else {
        in->start_s = (double)v->pts[0] * tb;
        if (end < v->pts[v->n - 1]) end = v->pts[v->n - 1];
        in->duration_s = (double)(end - v->pts[0]) * tb;
        in->fps = in->duration_s > 0 ? (double)v->n / in->duration_s : in->fps_header;
    }
    if (!(in->duration_s <= v->lim.max_duration_s)) {
        qvl_errf(err, err_len, "%s: video duration %.0f s is over the limit of %.0f s", v->name,
                 in->duration_s, v->lim.max_duration_s);
        st = QVL_E_LIMIT;
        goto out;
    }
    goto out;

err_nomem:
    qvl_errf(err, err_len, "%s: out of memory scanning the video", v->name);
    st = QVL_E_NOMEM;
out:
    av_packet_free(&pkt);
    return st;
}

/* Set up the input (file or memory) with its size check. */
static qvl_status vid_init_file(vid *v, const char *path, const qvl_vid_limits *lim, char *err,
                                size_t err_len) {
    memset(v, 0, sizeof *v);
    v->si = -1;
    v->lim = lim_resolve(lim);
    v->name = path ? path : "(null)";
    pthread_once(&g_ff_once, ff_init_once);
    if (!path) {
        qvl_errf(err, err_len, "video: no path given");
        return QVL_E_INVAL;
    }
    FILE *fp = fopen(path, "rb");
    if (!fp) {
        qvl_errf(err, err_len, "%s: cannot open: %s", path, strerror(errno));
        return QVL_E_IO;
    }
    struct stat sb;
    if (fstat(fileno(fp), &sb) != 0 || !S_ISREG(sb.st_mode)) {
        fclose(fp);
        qvl_errf(err, err_len, "%s: not a regular file", path);
        return QVL_E_IO;
    }
    if ((uint64_t)sb.st_size > (uint64_t)v->lim.max_bytes) {
        fclose(fp);
        qvl_errf(err, err_len, "%s: file of %lld bytes is over the limit of %zu bytes", path,
                 (long long)sb.st_size, v->lim.max_bytes);
        return QVL_E_LIMIT;
    }
    if (sb.st_size == 0) {
        fclose(fp);
        qvl_errf(err, err_len, "%s: empty file", path);
        return QVL_E_FORMAT;
    }
    v->src.fp = fp;
    v->src.len = (size_t)sb.st_size;
    return QVL_OK;
}

static qvl_status vid_init_mem(vid *v, const void *buf, size_t len, const qvl_vid_limits *lim,
                               char *err, size_t err_len) {
    memset(v, 0, sizeof *v);
    v->si = -1;
    v->lim = lim_resolve(lim);
    v->name = MEM_NAME;
    pthread_once(&g_ff_once, ff_init_once);
    if (!buf && len) {
        qvl_errf(err, err_len, "%s: NULL buffer", MEM_NAME);
        return QVL_E_INVAL;
    }
    if (len > v->lim.max_bytes) {
        qvl_errf(err, err_len, "%s: %zu bytes is over the limit of %zu bytes", MEM_NAME, len,
                 v->lim.max_bytes);
        return QVL_E_LIMIT;
    }
    if (len == 0) {
        qvl_errf(err, err_len, "%s: empty input", MEM_NAME);
        return QVL_E_FORMAT;
    }
    v->src.buf = buf;
    v->src.len = len;
    return QVL_OK;
}

static qvl_status vid_probe(vid *v, qvl_vid_info *info, char *err, size_t err_len) {
    qvl_status st = vid_open(v, err, err_len);
    if (st == QVL_OK) st = vid_scan(v, err, err_len);
    if (info) {
        if (st == QVL_OK)
            *info = v->info;
        else
            memset(info, 0, sizeof *info);
    }
    return st;
}

qvl_status qvl_vid_probe_file(const char *path, const qvl_vid_limits *lim, qvl_vid_info *info,
                              char *err, size_t err_len) {
    vid v;
    qvl_status st = vid_init_file(&v, path, lim, err, err_len);
    if (st == QVL_OK)
        st = vid_probe(&v, info, err, err_len);
    else if (info)
        memset(info, 0, sizeof *info);
    vid_free(&v);
    return st;
}

qvl_status qvl_vid_probe_mem(const void *buf, size_t len, const qvl_vid_limits *lim,
                             qvl_vid_info *info, char *err, size_t err_len) {
    vid v;
    qvl_status st = vid_init_mem(&v, buf, len, lim, err, err_len);
    if (st == QVL_OK)
        st = vid_probe(&v, info, err, err_len);
    else if (info)
        memset(info, 0, sizeof *info);
    vid_free(&v);
    return st;
}

/* ---- decoding ------------------------------------------------------------ */

/* Reopen the input at its start (same stream) with a fresh single-threaded decoder. */
static qvl_status vid_restart(vid *v, char *err, size_t err_len) {
    char eb[128];
    int si = v->si;
    int w = v->info.width;
    int h = v->info.height;
    vid_close_input(v);
    src_rewind(&v->src);
    qvl_vid_info keep = v->info;
    qvl_status st = vid_open(v, err, err_len);
    if (st != QVL_OK) return st;
    if (v->si != si || v->info.width != w || v->info.height != h) {
        qvl_errf(err, err_len, "%s: the video stream changed between reads", v->name);
        return QVL_E_FORMAT;
    }
    v->info = keep;
    v->dec = avcodec_alloc_context3(v->codec);
    if (!v->dec) {
        qvl_errf(err, err_len, "%s: out of memory creating the decoder", v->name);
        return QVL_E_NOMEM;
    }
    int e = avcodec_parameters_to_context(v->dec, v->st->codecpar);
    if (e >= 0) {
        v->dec->thread_count = 1;
        v->dec->max_pixels =
            (int64_t)(v->lim.max_pixels > INT64_MAX ? INT64_MAX : v->lim.max_pixels);
        v->dec->pkt_timebase = v->st->time_base;
        e = avcodec_open2(v->dec, v->codec, NULL);
    }
    if (e < 0) {
        qvl_errf(err, err_len, "%s: cannot open the %s decoder: %s", v->name, v->info.codec,
                 av_msg(e, eb, sizeof eb));
        return av_status(e);
    }
    return QVL_OK;
}

/* Convert one decoded frame to a new w x h RGB24 image (qvl_malloc) with libswscale. */
static qvl_status frame_to_rgb(vid *v, struct SwsContext **sws, const AVFrame *f, qvl_rgb *out,
                               char *err, size_t err_len) {
    const int w = v->info.width;
    const int h = v->info.height;
    qvl_status st = check_size(v, f->width, f->height, "a decoded", err, err_len);
    if (st != QVL_OK) return st;
    enum AVPixelFormat pf = (enum AVPixelFormat)f->format;
    if (pf == AV_PIX_FMT_NONE || !sws_isSupportedInput(pf)) {
        qvl_errf(err, err_len, "%s: pixel format '%s' cannot be converted to RGB", v->name,
                 av_get_pix_fmt_name(pf) ? av_get_pix_fmt_name(pf) : "none");
        return QVL_E_UNSUPPORTED;
    }
    *sws =
        sws_getCachedContext(*sws, f->width, f->height, pf, w, h, AV_PIX_FMT_RGB24,
                             SWS_BICUBIC | SWS_ACCURATE_RND | SWS_FULL_CHR_H_INT, NULL, NULL, NULL);
    if (!*sws) {
        qvl_errf(err, err_len, "%s: cannot set up the conversion from '%s' to RGB", v->name,
                 av_get_pix_fmt_name(pf));
        return QVL_E_UNSUPPORTED;
    }
    int cs = f->colorspace == AVCOL_SPC_UNSPECIFIED ? SWS_CS_DEFAULT : (int)f->colorspace;
    (void)sws_setColorspaceDetails(*sws, sws_getCoefficients(cs),
                                   f->color_range == AVCOL_RANGE_JPEG,
                                   sws_getCoefficients(SWS_CS_DEFAULT), 1, 0, 1 << 16, 1 << 16);
    /* swscale writes through an aligned, padded buffer; rows are then copied out tightly */
    const int stride = FFALIGN(w * 3, 64);
    size_t bytes;
    if (!qvl_size_mul((size_t)stride, (size_t)h + 1, &bytes)) goto err_nomem;
    uint8_t *tmp = av_malloc(bytes);
    if (!tmp) goto err_nomem;
    uint8_t *dst[4] = {tmp, NULL, NULL, NULL};
    int dst_stride[4] = {stride, 0, 0, 0};
    int got = sws_scale(*sws, (const uint8_t *const *)f->data, f->linesize, 0, f->height, dst,
                        dst_stride);
    if (got != h) {
        av_free(tmp);
        qvl_errf(err, err_len, "%s: colour conversion failed", v->name);
        return QVL_E_FORMAT;
    }
    out->data = qvl_malloc((size_t)w * (size_t)h * 3);
    if (!out->data) {
        av_free(tmp);
        goto err_nomem;
    }
    for (int y = 0; y < h; y++)
        memcpy(out->data + (size_t)y * w * 3, tmp + (size_t)y * stride, (size_t)w * 3);
    av_free(tmp);
    out->w = w;
    out->h = h;
    return QVL_OK;
err_nomem:
    qvl_errf(err, err_len, "%s: out of memory converting a frame", v->name);
    return QVL_E_NOMEM;
}

/* Index of the first scanned timestamp >= t (n when none). */
static int64_t lower_bound(const int64_t *a, int64_t n, int64_t t) {
    int64_t lo = 0;
    int64_t hi = n;
    while (lo < hi) {
        int64_t mid = lo + (hi - lo) / 2;
        if (a[mid] < t)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

/* Timestamp of the last keyframe at or before t; INT64_MIN when none. */
static int64_t keyframe_before(const vid *v, int64_t t) {
    int64_t k = lower_bound(v->kf, v->n_kf, t);
    if (k < v->n_kf && v->kf[k] == t) return t;
    return k > 0 ? v->kf[k - 1] : INT64_MIN;
}

typedef struct dec_state {
    const int64_t *u; /* [nu] distinct wanted indices, ascending */
    int64_t nu;
    int64_t k;       /* next wanted */
    qvl_rgb *uf;     /* [nu] decoded frames */
    double *ut;      /* [nu] times */
    int64_t cur;     /* index of the last frame output by the decoder, -1 none */
    int64_t counter; /* frames output since the last (re)start, for sequential mode */
    int64_t no_seek; /* wanted index whose seek landed late: reach it by decoding forward */
    bool after_seek; /* the next output frame is the first after a seek */
    int64_t seek_to; /* the wanted index the last seek was for */
    struct SwsContext *sws;
    long n_errors;
} dec_state;

/* Handle one decoded frame: store it for every wanted index it satisfies. Sets *reseek when a
 * seek landed after its target, and *stop when the remaining wanted frames call for a seek. */
static qvl_status on_frame(vid *v, dec_state *d, const AVFrame *f, bool *reseek, char *err,
                           size_t err_len) {
    int64_t idx;
    int64_t t = f->best_effort_timestamp != AV_NOPTS_VALUE ? f->best_effort_timestamp : f->pts;
    if (v->seq || t == AV_NOPTS_VALUE)
        idx = v->seq ? d->counter : d->cur + 1;
    else
        idx = lower_bound(v->pts, v->n, t);
    d->counter++;
    if (idx >= v->n) idx = v->n - 1;
    bool first = d->after_seek;
    d->after_seek = false;
    if (first && idx > d->seek_to && d->k < d->nu && d->u[d->k] == d->seek_to) {
        *reseek = true; /* landed after the target: the caller goes back */
        return QVL_OK;
    }
    if (idx > d->cur) d->cur = idx;
    if (d->k >= d->nu || idx < d->u[d->k]) return QVL_OK;
    qvl_rgb im = {0};
    qvl_status st = frame_to_rgb(v, &d->sws, f, &im, err, err_len);
    if (st != QVL_OK) return st;
    double ts = 0;
    if (t != AV_NOPTS_VALUE)
        ts = (double)t * av_q2d(v->st->time_base) - v->info.start_s;
    else if (v->info.fps > 0)
        ts = (double)idx / v->info.fps;
    /* this frame serves the wanted index and any skipped ones before it (dropped frames) */
    bool used = false;
    while (d->k < d->nu && d->u[d->k] <= idx) {
        if (!used) {
            d->uf[d->k] = im;
            used = true;
        } else {
            size_t sz = (size_t)im.w * (size_t)im.h * 3;
            d->uf[d->k].data = qvl_malloc(sz);
            if (!d->uf[d->k].data) {
                qvl_errf(err, err_len, "%s: out of memory storing a frame", v->name);
                return QVL_E_NOMEM;
            }
            memcpy(d->uf[d->k].data, im.data, sz);
            d->uf[d->k].w = im.w;
            d->uf[d->k].h = im.h;
        }
        d->ut[d->k] = ts;
        d->k++;
    }
    return QVL_OK;
}

/* Seek so that the next wanted frame is reached soon, when its keyframe is ahead of the decoder.
 * `back` > 0 asks for that many keyframes earlier (after a late landing). Returns false when no
 * seek was made. */
static bool maybe_seek(vid *v, dec_state *d, int back) {
    if (v->seq || d->k >= d->nu || d->u[d->k] == d->no_seek) return false;
    int64_t target = d->u[d->k];
    int64_t kp = keyframe_before(v, v->pts[target]);
    if (kp == INT64_MIN) return false;
    for (int b = 0; b < back; b++) {
        int64_t k2 = keyframe_before(v, kp - 1);
        if (k2 == INT64_MIN) return false;
        kp = k2;
    }
    if (back == 0) {
        int64_t at = d->cur >= 0 ? v->pts[d->cur] : v->pts[0];
        if (kp <= at) return false; /* decoding forward gets there without a seek */
    }
    if (av_seek_frame(v->fmt, v->si, kp, AVSEEK_FLAG_BACKWARD) < 0) return false;
    qvl_log(QVL_LOG_DEBUG, "%s: seek to keyframe pts %lld for frame %lld", v->name, (long long)kp,
            (long long)target);
    avcodec_flush_buffers(v->dec);
    d->after_seek = true;
    d->seek_to = target;
    d->cur = -1;
    return true;
}

/* Decode the distinct wanted indices u[0..nu) into uf/ut. */
static qvl_status vid_decode_wanted(vid *v, dec_state *d, char *err, size_t err_len) {
    char eb[128];
    qvl_status st = vid_restart(v, err, err_len);
    if (st != QVL_OK) return st;
    AVPacket *pkt = av_packet_alloc();
    AVFrame *frm = av_frame_alloc();
    if (!pkt || !frm) {
        qvl_errf(err, err_len, "%s: out of memory decoding", v->name);
        st = QVL_E_NOMEM;
        goto out;
    }
    int n_again = 0;
    int back = 0; /* keyframes to step back for the current target after late landings */
    bool draining = false;
    (void)maybe_seek(v, d, 0);
    while (d->k < d->nu) {
        if (!draining) {
            int e = av_read_frame(v->fmt, pkt);
            if (e == AVERROR(EAGAIN) && ++n_again < MAX_EAGAIN) continue;
            n_again = 0;
            if (e < 0) {
                if (e == AVERROR(ENOMEM)) {
                    st = QVL_E_NOMEM;
                    qvl_errf(err, err_len, "%s: out of memory decoding", v->name);
                    goto out;
                }
                draining = true;
                e = avcodec_send_packet(v->dec, NULL);
            } else {
                if (pkt->stream_index == v->si)
                    e = avcodec_send_packet(v->dec, pkt);
                else
                    e = 0;
                av_packet_unref(pkt);
            }
            if (e < 0 && e != AVERROR(EAGAIN) && e != AVERROR_EOF) {
                if (e == AVERROR(ENOMEM)) {
                    st = QVL_E_NOMEM;
                    qvl_errf(err, err_len, "%s: out of memory decoding", v->name);
                    goto out;
                }
                d->n_errors++; /* skip a corrupt packet, as the ffmpeg tool does */
            }
        }
        bool reseek = false;
        for (;;) {
            int e = avcodec_receive_frame(v->dec, frm);
            if (e == AVERROR(EAGAIN)) break;
            if (e == AVERROR_EOF) goto eof;
            if (e < 0) {
                if (e == AVERROR(ENOMEM)) {
                    st = QVL_E_NOMEM;
                    qvl_errf(err, err_len, "%s: out of memory decoding", v->name);
                    goto out;
                }
                d->n_errors++;
                break;
            }
            int64_t k_before = d->k;
            st = on_frame(v, d, frm, &reseek, err, err_len);
            av_frame_unref(frm);
            if (st != QVL_OK) goto out;
            if (reseek) {
                back++;
                if (back > 2 || !maybe_seek(v, d, back)) {
                    /* give up seeking for this frame: restart and decode forward to it */
                    qvl_log(QVL_LOG_DEBUG,
                            "%s: seek landed late, decoding frame %lld from the start", v->name,
                            (long long)d->u[d->k]);
                    d->no_seek = d->u[d->k];
                    if ((st = vid_restart(v, err, err_len)) != QVL_OK) goto out;
                    d->cur = -1;
                    d->counter = 0;
                    d->after_seek = false;
                }
                draining = false;
                break;
            }
            if (d->k >= d->nu) goto out;
            if (d->k != k_before) {
                back = 0;
                if (!draining && maybe_seek(v, d, 0)) {
                    break;
                }
            }
        }
    }
    goto out;
eof:
    if (d->k < d->nu) {
        qvl_errf(err, err_len,
                 "%s: frame %lld of %lld could not be decoded (%ld decoding errors; the file may "
                 "be corrupt or truncated)",
                 v->name, (long long)d->u[d->k], (long long)v->n, d->n_errors);
        st = QVL_E_FORMAT;
    }
out:
    (void)eb;
    av_packet_free(&pkt);
    av_frame_free(&frm);
    return st;
}

static qvl_status vid_decode(vid *v, const int64_t *indices, size_t n, qvl_rgb *frames,
                             double *times_s, qvl_vid_info *info, char *err, size_t err_len) {
    qvl_status st = vid_probe(v, info, err, err_len);
    if (st != QVL_OK) return st;
    if (n == 0) {
        qvl_errf(err, err_len, "%s: no frames requested", v->name);
        return QVL_E_INVAL;
    }
    if ((int64_t)n > v->lim.max_frames) {
        qvl_errf(err, err_len, "%s: %zu frames requested, over the limit of %lld", v->name, n,
                 (long long)v->lim.max_frames);
        return QVL_E_LIMIT;
    }
    for (size_t i = 0; i < n; i++)
        if (indices[i] < 0 || indices[i] >= v->n) {
            qvl_errf(err, err_len, "%s: frame index %lld is out of range [0, %lld)", v->name,
                     (long long)indices[i], (long long)v->n);
            return QVL_E_INVAL;
        }
    dec_state d;
    memset(&d, 0, sizeof d);
    d.cur = -1;
    d.no_seek = -1;
    d.seek_to = -1;
    int64_t *u = qvl_malloc(n * sizeof *u);
    d.uf = qvl_calloc(n, sizeof *d.uf);
    d.ut = qvl_calloc(n, sizeof *d.ut);
    if (!u || !d.uf || !d.ut) {
        qvl_errf(err, err_len, "%s: out of memory", v->name);
        st = QVL_E_NOMEM;
        goto out;
    }
    memcpy(u, indices, n * sizeof *u);
    qsort(u, n, sizeof *u, cmp_i64);
    int64_t nu = 0;
    for (size_t i = 0; i < n; i++)
        if (nu == 0 || u[nu - 1] != u[i]) u[nu++] = u[i];
    d.u = u;
    d.nu = nu;
    st = vid_decode_wanted(v, &d, err, err_len);
    if (st != QVL_OK) goto out;
    /* hand out: the first use of a distinct frame takes it, repeats get copies */
    for (size_t i = 0; i < n; i++) {
        int64_t k = lower_bound(u, nu, indices[i]);
        if (times_s) times_s[i] = d.ut[k];
        if (d.uf[k].data) {
            frames[i] = d.uf[k];
            d.uf[k].data = NULL;
        } else {
            /* taken already: copy from the earlier output */
            size_t j = 0;
            while (j < i && indices[j] != indices[i])
                j++;
            size_t sz = (size_t)frames[j].w * (size_t)frames[j].h * 3;
            frames[i].data = qvl_malloc(sz);
            if (!frames[i].data) {
                qvl_errf(err, err_len, "%s: out of memory", v->name);
                st = QVL_E_NOMEM;
                goto out;
            }
            memcpy(frames[i].data, frames[j].data, sz);
            frames[i].w = frames[j].w;
            frames[i].h = frames[j].h;
        }
    }
out:
    if (st != QVL_OK)
        for (size_t i = 0; i < n; i++)
            qvl_rgb_free(&frames[i]);
    if (d.uf)
        for (size_t k = 0; k < n; k++)
            qvl_rgb_free(&d.uf[k]);
    if (d.sws) sws_freeContext(d.sws);
    qvl_free(u);
    qvl_free(d.uf);
    qvl_free(d.ut);
    return st;
}

/* Argument checks shared by both decode entry points; clears the outputs. */
static qvl_status decode_args(const char *name, const int64_t *indices, size_t n, qvl_rgb *frames,
                              qvl_vid_info *info, char *err, size_t err_len) {
    if (info) memset(info, 0, sizeof *info);
    if (frames && n) memset(frames, 0, n * sizeof *frames);
    if (!indices || !frames || n == 0) {
        qvl_errf(err, err_len, "%s: no frames requested", name);
        return QVL_E_INVAL;
    }
    return QVL_OK;
}

qvl_status qvl_vid_decode_file_ex(const char *path, const qvl_vid_limits *lim,
                                  const int64_t *indices, size_t n, qvl_rgb *frames,
                                  double *times_s, qvl_vid_info *info, char *err, size_t err_len) {
    qvl_status st = decode_args(path ? path : "video", indices, n, frames, info, err, err_len);
    if (st != QVL_OK) return st;
    vid v;
    st = vid_init_file(&v, path, lim, err, err_len);
    if (st == QVL_OK) st = vid_decode(&v, indices, n, frames, times_s, info, err, err_len);
    if (st != QVL_OK && info) memset(info, 0, sizeof *info);
    vid_free(&v);
    return st;
}

qvl_status qvl_vid_decode_mem_ex(const void *buf, size_t len, const qvl_vid_limits *lim,
                                 const int64_t *indices, size_t n, qvl_rgb *frames, double *times_s,
                                 qvl_vid_info *info, char *err, size_t err_len) {
    qvl_status st = decode_args(MEM_NAME, indices, n, frames, info, err, err_len);
    if (st != QVL_OK) return st;
    vid v;
    st = vid_init_mem(&v, buf, len, lim, err, err_len);
    if (st == QVL_OK) st = vid_decode(&v, indices, n, frames, times_s, info, err, err_len);
    if (st != QVL_OK && info) memset(info, 0, sizeof *info);
    vid_free(&v);
    return st;
}

#endif /* QVL_HAVE_FFMPEG */

/* ---- entry points without the optional outputs (both builds) -------------- */

qvl_status qvl_vid_decode_file(const char *path, const qvl_vid_limits *lim, const int64_t *indices,
                               size_t n, qvl_rgb *frames, char *err, size_t err_len) {
    return qvl_vid_decode_file_ex(path, lim, indices, n, frames, NULL, NULL, err, err_len);
}

qvl_status qvl_vid_decode_mem(const void *buf, size_t len, const qvl_vid_limits *lim,
                              const int64_t *indices, size_t n, qvl_rgb *frames, char *err,
                              size_t err_len) {
    return qvl_vid_decode_mem_ex(buf, len, lim, indices, n, frames, NULL, NULL, err, err_len);
}
