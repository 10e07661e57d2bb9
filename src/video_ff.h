/* video_ff.h - video file decoding through Debian's FFmpeg libraries (libavformat, libavcodec,
 * libswscale, libavutil): probe a file or memory buffer for its frame count, frame rate, size
 * and rotation, then decode only the requested frame indices into 8-bit RGB. Frame sampling,
 * resizing and prompt expansion are done by the caller (spec section 11). Internal to libqvl.
 *
 * Reference behaviour followed (transformers 4.57 `BaseVideoProcessor.fetch_videos` decodes with
 * torchcodec's VideoDecoder(seek_mode="exact") when installed, else torchvision):
 *  - frame count: torchcodec "exact" mode scans the demuxed packets of the best video stream
 *    (no decoding) and counts them; frame i is the i-th frame in presentation (pts) order. We
 *    do the same scan; the header count (`nb_frames`, 0 in MKV/WebM) is reported apart.
 *  - fps: torchcodec's average_fps = n_frames / (max(pts + duration) - min(pts)) from the scan,
 *    falling back to the stream's average frame rate from the header. We do the same.
 *  - rotation (display-matrix side data): torchcodec (as of the 4.57 era), PyAV, decord and
 *    torchvision all return the coded frames unrotated. We do the same and only report the
 *    angle in qvl_vid_info.rotation.
 *  - colour: every frame is converted to RGB24 at its source size with libswscale, flags
 *    SWS_BICUBIC | SWS_ACCURATE_RND | SWS_FULL_CHR_H_INT, using the frame's colour matrix and
 *    range (BT.601 when unspecified). Alpha (GIF, VP9 alpha) is dropped, not blended, as a
 *    plain FFmpeg rgb24 conversion does. This matches the reference up to rounding (a few
 *    units on chroma-subsampled sources), never bit-exactly.
 *
 * Safety: inputs are read through our own AVIOContext (a file we open, or a memory buffer),
 * so no FFmpeg protocol (http, concat, subfile, ...) can be reached from a path, nested opens
 * (HLS, dref) are refused, and only a whitelist of containers is accepted. The decoder runs
 * single-threaded. FFmpeg's own allocations use av_malloc; everything returned to the caller
 * comes from qvl_malloc. On first use an FFmpeg log callback is installed that forwards
 * FFmpeg's messages to qvl_log at debug level (so libqvl still never prints). */
#ifndef QVL_VIDEO_FF_H
#define QVL_VIDEO_FF_H

#include "image.h"
#include "qvl.h"
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* What a probe learns. Strings are static (FFmpeg's names), valid for the process lifetime. */
typedef struct qvl_vid_info {
    int width; /* coded frame size (before any rotation) */
    int height;
    int64_t n_frames;        /* frames in the stream, from the packet scan (the reference's) */
    int64_t n_frames_header; /* the container's frame count (nb_frames), 0 when absent */
    double fps;              /* average fps as the reference computes it (see above); 0 unknown */
    double fps_header;       /* the stream's avg_frame_rate from the header, 0 when absent */
    double duration_s;       /* from the scan: max(pts + duration) - min(pts), seconds */
    double start_s;          /* first frame's presentation time, seconds */
    int rotation;            /* clockwise degrees from the display matrix: 0, 90, 180, 270 (or
                                another integer for odd matrices); NOT applied to the frames */
    const char *codec;       /* e.g. "h264", "vp9", "gif" */
    const char *container;   /* demuxer name, e.g. "mov,mp4,m4a,3gp,3g2,mj2" */
} qvl_vid_info;

/* Limits checked before decoding. A field left 0 takes its default. */
typedef struct qvl_vid_limits {
    uint64_t max_pixels;   /* per frame width*height, default 64 Mi (QVL_IMG_DEFAULT_MAX_PIXELS) */
    int64_t max_frames;    /* frames requested from one decode call, default 768 */
    double max_duration_s; /* claimed (header) or scanned duration, default 4 h */
    size_t max_bytes;      /* input size, default 2 GiB */
    int64_t max_packets;   /* frames (packets) in the stream scan, default 4 Mi; bounds the
                              index memory (16 bytes a frame) and the decode work */
} qvl_vid_limits;

#define QVL_VID_DEFAULT_MAX_FRAMES     768
#define QVL_VID_DEFAULT_MAX_DURATION_S (4.0 * 3600.0)
#define QVL_VID_DEFAULT_MAX_BYTES      ((size_t)2 * 1024 * 1024 * 1024)
#define QVL_VID_DEFAULT_MAX_PACKETS    ((int64_t)4 * 1024 * 1024)

/* The defaults above. */
qvl_vid_limits qvl_vid_limits_default(void);

/* True when libqvl was built with FFmpeg (QVL_HAVE_FFMPEG); otherwise every call below
 * returns QVL_E_UNSUPPORTED "built without FFmpeg". */
bool qvl_vid_available(void);

/* Open the video, pick the best video stream (av_find_best_stream; attached cover pictures are
 * skipped), check the header against `lim` (NULL: defaults), then scan every packet of that
 * stream without decoding to count frames and measure duration and fps. `info` is filled on
 * success and zeroed on failure.
 * Errors (message names the file, or "<memory>" for the _mem form):
 *   QVL_E_IO      the file cannot be opened or read;
 *   QVL_E_LIMIT   input over max_bytes, frame size over max_pixels, claimed or scanned duration
 *                 over max_duration_s, more than max_packets frames;
 *   QVL_E_FORMAT  empty or unrecognised or corrupt container, no video stream, zero frames,
 *                 zero or missing frame size;
 *   QVL_E_UNSUPPORTED  container outside the whitelist, codec without a decoder, built
 *                 without FFmpeg;
 *   QVL_E_NOMEM. */
qvl_status qvl_vid_probe_file(const char *path, const qvl_vid_limits *lim, qvl_vid_info *info,
                              char *err, size_t err_len);
/* As qvl_vid_probe_file over a caller buffer, borrowed for the call. */
qvl_status qvl_vid_probe_mem(const void *buf, size_t len, const qvl_vid_limits *lim,
                             qvl_vid_info *info, char *err, size_t err_len);

/* Decode frames `indices[0..n)` (0-based in presentation order, as counted by the probe; any
 * order, repeats allowed) into `frames[0..n)`, each a new width x height RGB image (the probed
 * size; a frame whose size changes mid-stream is scaled to it) that the caller releases with
 * qvl_rgb_free. Only the distinct requested frames are kept; the demuxer seeks to the keyframe
 * before a wanted frame when that is ahead of the decoder, then decodes forward. A frame the
 * decoder drops (corrupt data) is replaced by the next frame it outputs.
 * The stream is probed again first, with the same checks and errors as qvl_vid_probe_*; also
 * QVL_E_INVAL for NULL arguments, n == 0 or an index outside [0, n_frames), QVL_E_LIMIT for
 * n > max_frames, QVL_E_FORMAT when a wanted frame cannot be decoded. On failure every frame
 * is released and zeroed. */
qvl_status qvl_vid_decode_file(const char *path, const qvl_vid_limits *lim, const int64_t *indices,
                               size_t n, qvl_rgb *frames, char *err, size_t err_len);
/* As qvl_vid_decode_file over a caller buffer, borrowed for the call. */
qvl_status qvl_vid_decode_mem(const void *buf, size_t len, const qvl_vid_limits *lim,
                              const int64_t *indices, size_t n, qvl_rgb *frames, char *err,
                              size_t err_len);

/* As the two above, plus optional outputs: `times_s` (n entries) receives each frame's
 * presentation time in seconds relative to the first frame (GIF: the accumulated frame
 * delays), `info` the probe made on the way (zeroed on failure). */
qvl_status qvl_vid_decode_file_ex(const char *path, const qvl_vid_limits *lim,
                                  const int64_t *indices, size_t n, qvl_rgb *frames,
                                  double *times_s, qvl_vid_info *info, char *err, size_t err_len);
qvl_status qvl_vid_decode_mem_ex(const void *buf, size_t len, const qvl_vid_limits *lim,
                                 const int64_t *indices, size_t n, qvl_rgb *frames, double *times_s,
                                 qvl_vid_info *info, char *err, size_t err_len);

#endif /* QVL_VIDEO_FF_H */
