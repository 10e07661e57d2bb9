#!/usr/bin/env python3
"""Independent pure-Python transcription of PyTorch's CPU uint8 antialiased bicubic resize
(torch.nn.functional.interpolate(..., mode="bicubic", antialias=True, align_corners=False) on a
uint8 tensor, which torchvision's resize runs for uint8 images), written from the algorithm's
description rather than from qvl's C code. It prints the FNV-1a 64-bit hash of the RGB output
for the test images of tests/unit/test_image.c (test_torch_resample), which checks qvl's
QVL_RESAMPLER_TORCH against these values.

usage: python3 tools/torch_resize_ref.py
"""
import math


def test_image(w, h, seed):
    """The test image: an LCG byte stream, pushed to 0 / 255 at the ends so that overshoot
    is clamped."""
    x = seed
    out = bytearray()
    for _ in range(w * h * 3):
        x = (x * 6364136223846793005 + 1442695040888963407) % (1 << 64)
        v = x >> 56
        if v > 200:
            v = 255
        elif v < 40:
            v = 0
        out.append(v)
    return out


def keys(x):
    a = -0.5
    x = abs(x)
    if x < 1.0:
        return ((a + 2) * x - (a + 3)) * x * x + 1
    if x < 2.0:
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return 0.0


def trunc(v):
    return int(v)  # toward zero, as a C cast


def axis(n_in, n_out):
    scale = n_in / n_out
    support = 2.0 * scale if scale >= 1.0 else 2.0
    k = int(math.ceil(support)) * 2 + 1
    inv = 1.0 / scale if scale >= 1.0 else 1.0
    taps = []
    wmax = 0.0
    for i in range(n_out):
        c = scale * (i + 0.5)
        lo = max(trunc(c - support + 0.5), 0)
        size = min(max(min(trunc(c + support + 0.5), n_in) - lo, 0), k)
        w = [keys((float(j + lo) - c + 0.5) * inv) for j in range(size)]
        s = 0.0
        for v in w:
            s += v
        if s != 0.0:
            w = [v / s for v in w]
            wmax = max([wmax] + w)
        taps.append((lo, w))
    p = 0
    while p < 22:
        if int(0.5 + wmax * (1 << (p + 1))) >= (1 << 15):
            break
        p += 1
    q = []
    for lo, w in taps:
        row = []
        for v in w:
            t = v * (1 << p)
            row.append(int(t - 0.5) if t < 0 else int(t + 0.5))
        q.append((lo, row))
    return p, q


def one_pass(src, w, h, n_out, horizontal):
    p, q = axis(w if horizontal else h, n_out)
    ow, oh = (n_out, h) if horizontal else (w, n_out)
    out = bytearray(ow * oh * 3)
    for y in range(oh):
        for x in range(ow):
            lo, row = q[x] if horizontal else q[y]
            for ch in range(3):
                acc = 1 << (p - 1)
                for j, wq in enumerate(row):
                    sx, sy = (lo + j, y) if horizontal else (x, lo + j)
                    acc += src[(sy * w + sx) * 3 + ch] * wq
                out[(y * ow + x) * 3 + ch] = min(max(acc >> p, 0), 255)
    return out, ow, oh


def resize(src, w, h, ow, oh):
    if ow != w:
        src, w, h = one_pass(src, w, h, ow, True)
    if oh != h:
        src, w, h = one_pass(src, w, h, oh, False)
    return src


def fnv1a(data):
    hsh = 0xCBF29CE484222325
    for b in data:
        hsh ^= b
        hsh = (hsh * 0x100000001B3) % (1 << 64)
    return hsh


CASES = [  # (w, h, out_w, out_h, seed)
    (97, 61, 64, 32, 1),
    (37, 29, 64, 64, 2),
    (50, 32, 96, 32, 3),
    (32, 45, 32, 64, 4),
    (400, 300, 96, 64, 5),
    (129, 37, 128, 32, 6),
    (16, 16, 160, 96, 7),
]

if __name__ == "__main__":
    for w, h, ow, oh, seed in CASES:
        out = resize(test_image(w, h, seed), w, h, ow, oh)
        print("{%d, %d, %d, %d, %d, 0x%016xull}," % (w, h, ow, oh, seed, fnv1a(out)))
