/* util.c - small helpers of the server: UTF-8 validation and repair, strict base64 decoding, peer
 * hang-up detection, random ids, a monotonic clock. */
#include "server.h"

#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* Length of the valid UTF-8 sequence at s (n > 0 bytes left), or 0 when it is not one. */
static size_t utf8_seq(const unsigned char *s, size_t n) {
    unsigned c = s[0];
    if (c < 0x80)
        return 1;
    size_t len;
    unsigned cp;
    if (c >= 0xc2 && c <= 0xdf) {
        len = 2;
        cp = c & 0x1f;
    } else if (c >= 0xe0 && c <= 0xef) {
        len = 3;
        cp = c & 0x0f;
    } else if (c >= 0xf0 && c <= 0xf4) {
        len = 4;
        cp = c & 0x07;
    } else {
        return 0;
    }
    if (n < len)
        return 0;
    for (size_t k = 1; k < len; k++) {
        if ((s[k] & 0xc0) != 0x80)
            return 0;
        cp = (cp << 6) | (s[k] & 0x3f);
    }
    if ((len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10ffff)) ||
        (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return len;
}

bool srv_utf8_valid(const char *str, size_t n) {
    const unsigned char *s = (const unsigned char *)str;
    for (size_t i = 0, k; i < n; i += k)
        if (!(k = utf8_seq(s + i, n - i)))
            return false;
    return true;
}

char *srv_utf8_lossy(const char *str, size_t n) {
    const unsigned char *s = (const unsigned char *)str;
    char *out = malloc(3 * n + 1); /* a byte becomes at most U+FFFD's three */
    if (!out)
        return NULL;
    size_t o = 0;
    for (size_t i = 0; i < n;) {
        size_t k = utf8_seq(s + i, n - i);
        if (k) {
            memcpy(out + o, s + i, k);
            o += k;
            i += k;
        } else {
            memcpy(out + o, "\xef\xbf\xbd", 3);
            o += 3;
            i++;
        }
    }
    out[o] = 0;
    return out;
}

static int b64_val(unsigned char c) {
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+')
        return 62;
    if (c == '/')
        return 63;
    return -1;
}

int srv_b64_decode(const char *in, size_t n, size_t cap, uint8_t **out, size_t *out_n) {
    *out = NULL;
    *out_n = 0;
    if (n == 0 || n % 4 != 0)
        return -1;
    size_t pad = 0;
    if (in[n - 1] == '=')
        pad = in[n - 2] == '=' ? 2 : 1;
    size_t len = n / 4 * 3 - pad;
    if (len > cap)
        return -2;
    uint8_t *buf = malloc(len + 1);
    if (!buf)
        return -3;
    size_t o = 0;
    for (size_t i = 0; i < n; i += 4) {
        bool last = i + 4 == n;
        int v[4];
        for (int k = 0; k < 4; k++) {
            unsigned char c = (unsigned char)in[i + k];
            if (c == '=' && last && (size_t)k >= 4 - pad) {
                v[k] = 0;
                continue;
            }
            v[k] = b64_val(c);
            if (v[k] < 0) {
                free(buf);
                return -1;
            }
        }
        uint32_t w = (uint32_t)v[0] << 18 | (uint32_t)v[1] << 12 | (uint32_t)v[2] << 6 |
                     (uint32_t)v[3];
        if (last && pad == 2 && (w & 0xffff)) { /* non-canonical trailing bits */
            free(buf);
            return -1;
        }
        if (last && pad == 1 && (w & 0xff)) {
            free(buf);
            return -1;
        }
        buf[o++] = (uint8_t)(w >> 16);
        if (!(last && pad == 2))
            buf[o++] = (uint8_t)(w >> 8);
        if (!(last && pad >= 1))
            buf[o++] = (uint8_t)w;
    }
    *out = buf;
    *out_n = o;
    return 0;
}

bool srv_peer_gone(int fd) {
    if (fd < 0)
        return false;
    struct pollfd pf = {.fd = fd, .events = POLLIN | POLLRDHUP};
    if (poll(&pf, 1, 0) <= 0)
        return false;
    if (pf.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL))
        return true;
    if (pf.revents & POLLIN) {
        char c;
        ssize_t r = recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
        return r == 0;
    }
    return false;
}

void srv_rand_hex(char *buf, size_t n) {
    static const char hex[] = "0123456789abcdef";
    unsigned char raw[64];
    size_t need = (n + 1) / 2 < sizeof raw ? (n + 1) / 2 : sizeof raw;
    size_t got = 0;
    int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        ssize_t r = read(fd, raw, need);
        got = r > 0 ? (size_t)r : 0;
        close(fd);
    }
    for (size_t i = got; i < need; i++) /* fallback: clock bits, still unique enough */
        raw[i] = (unsigned char)((unsigned long)srv_now_ms() * 2654435761u >> (i % 24));
    for (size_t i = 0; i < n && i / 2 < need; i++)
        buf[i] = hex[(i & 1) ? raw[i / 2] & 15 : raw[i / 2] >> 4];
    buf[n < 2 * need ? n : 2 * need] = 0;
}

double srv_now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}
