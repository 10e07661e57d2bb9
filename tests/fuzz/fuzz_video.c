/* fuzz_video.c - libFuzzer target for video probing and frame decoding from memory
 * (src/video_ff.c: our AVIOContext, the container whitelist, libavformat demuxing, the packet
 * scan, seeking, libavcodec decoding and the libswscale RGB conversion).
 * Input: one option byte, then the file image.
 *   byte 0: bits 0-1 pixel cap (4 Ki, 16 Ki, 64 Ki, 256 Ki pixels), bits 2-3 which frames to
 *           decode (first; last; first+middle+last; last, first, last repeated), bit 4 packet
 *           cap 64 instead of 4096, bit 5 duration cap 10 s instead of 600 s.
 * Limits stay small so a tiny compressed file cannot make one run slow. Any status is fine;
 * crashes, leaks, sanitizer reports and broken postconditions are not. Without FFmpeg in the
 * build the target only checks that the stubs refuse cleanly. Seeds: tests/fuzz/corpus/video/. */
#include "video_ff.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    static const uint64_t caps[4] = {1u << 12, 1u << 14, 1u << 16, 1u << 18};
    const uint8_t o = data[0];
    const size_t n = size - 1;
    /* exactly sized heap copy so ASan sees any over-read */
    uint8_t *buf = malloc(n ? n : 1);
    if (!buf) return 0;
    memcpy(buf, data + 1, n);

    char err[512];
    qvl_vid_limits lim = qvl_vid_limits_default();
    lim.max_pixels = caps[o & 3];
    lim.max_frames = 8;
    lim.max_packets = (o & 16) ? 64 : 4096;
    lim.max_duration_s = (o & 32) ? 10.0 : 600.0;
    lim.max_bytes = 1u << 20;
    qvl_vid_info info;
    qvl_status s = qvl_vid_probe_mem(buf, n, &lim, &info, err, sizeof err);
    if (s != QVL_OK) {
        if (info.n_frames != 0 || info.codec != NULL) abort(); /* info must be zeroed on failure */
        free(buf);
        return 0;
    }
    if (info.n_frames <= 0 || info.n_frames > lim.max_packets || info.width <= 0 ||
        info.height <= 0 || (uint64_t)info.width * (uint64_t)info.height > lim.max_pixels ||
        !info.codec || !info.container)
        abort();

    int64_t idx[4];
    size_t k = 0;
    const int64_t last = info.n_frames - 1;
    switch ((o >> 2) & 3) {
    case 0:
        idx[k++] = 0;
        break;
    case 1:
        idx[k++] = last;
        break;
    case 2:
        idx[k++] = 0;
        idx[k++] = last / 2;
        idx[k++] = last;
        break;
    default:
        idx[k++] = last;
        idx[k++] = 0;
        idx[k++] = last;
        break;
    }
    qvl_rgb fr[4];
    double ts[4];
    qvl_vid_info info2;
    s = qvl_vid_decode_mem_ex(buf, n, &lim, idx, k, fr, ts, &info2, err, sizeof err);
    if (s == QVL_OK) {
        if (info2.n_frames != info.n_frames || info2.width != info.width) abort();
        for (size_t i = 0; i < k; i++) {
            if (!fr[i].data || fr[i].w != info.width || fr[i].h != info.height) abort();
            /* touch the last byte so ASan checks the buffer really has that size */
            volatile uint8_t z = fr[i].data[(size_t)fr[i].w * (size_t)fr[i].h * 3 - 1];
            (void)z;
            qvl_rgb_free(&fr[i]);
        }
    } else {
        for (size_t i = 0; i < k; i++)
            if (fr[i].data) abort(); /* frames must be released on failure */
    }
    free(buf);
    return 0;
}
