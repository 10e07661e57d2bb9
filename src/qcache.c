/* qcache.c - the quantised-weights cache file (layout in qcache.h). */
#include "qcache.h"

#include "common.h"
#include "dtype.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define QC_MAGIC "QVLQCACH"
#define QC_VERSION 1
#define QC_ALIGN 4096
#define QC_HEAD_WORDS 5 /* after the magic */
#define QC_ENTRY_WORDS 5

/* the interleaved layout (dtype.h) the stored bytes follow; change when it changes */
#define QC_LAYOUT "x16-v1"

static void put_u64(uint8_t *p, uint64_t v) {
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static uint64_t get_u64(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

static uint64_t align_up(uint64_t v) {
    return (v + QC_ALIGN - 1) / QC_ALIGN * QC_ALIGN;
}

char *qvl_default_cache_dir(void) {
    const char *d = getenv("QVL_CACHE_DIR");
    if (d && d[0])
        return qvl_strdup(d);
    const char *x = getenv("XDG_CACHE_HOME");
    if (x && x[0] == '/')
        return qvl_path_join(x, "qvl");
    const char *h = getenv("HOME");
    if (!h || !h[0])
        return NULL;
    char *c = qvl_path_join(h, ".cache");
    char *q = c ? qvl_path_join(c, "qvl") : NULL;
    qvl_free(c);
    return q;
}

char *qvl_qcache_path(const char *cache_dir, const char *model_dir, const char *tag) {
    char *real = realpath(model_dir, NULL);
    const char *key = real ? real : model_dir;
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (const char *c = key; *c; c++)
        h = (h ^ (uint8_t)*c) * 1099511628211ull;
    /* a readable stem: the directory's own name (a hub snapshot's is its commit) */
    size_t kl = strlen(key);
    while (kl > 1 && key[kl - 1] == '/')
        kl--;
    size_t b = kl;
    while (b > 0 && key[b - 1] != '/')
        b--;
    char stem[48];
    size_t sl = 0;
    for (size_t i = b; i < kl && sl + 1 < sizeof stem; i++) {
        char ch = key[i];
        bool ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
                  ch == '-' || ch == '_' || ch == '.';
        stem[sl++] = ok ? ch : '_';
    }
    stem[sl] = 0;
    char name[128];
    snprintf(name, sizeof name, "%s-%016llx-%s.qvlq", sl ? stem : "model", (unsigned long long)h,
             tag);
    free(real); /* from realpath: the C library's malloc */
    return qvl_path_join(cache_dir, name);
}

static void fp_file(qvl_sbuf *b, const char *path) {
    struct stat sb;
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    char line[512];
    if (stat(path, &sb) != 0) {
        snprintf(line, sizeof line, "{\"name\":\"%.200s\",\"missing\":true}", base);
    } else {
        snprintf(line, sizeof line,
                 "{\"name\":\"%.200s\",\"size\":%lld,\"mtime\":%lld.%09ld,\"ino\":%llu}", base,
                 (long long)sb.st_size, (long long)sb.st_mtim.tv_sec, (long)sb.st_mtim.tv_nsec,
                 (unsigned long long)sb.st_ino);
    }
    qvl_sbuf_str(b, line);
}

char *qvl_qcache_fingerprint(const qvl_st *st, const char *model_dir, const char *tag) {
    qvl_sbuf b = {0};
    qvl_sbuf_str(&b, "{\"qvl_qcache\":1,\"layout\":\"" QC_LAYOUT "\",\"tag\":\"");
    qvl_sbuf_str(&b, tag);
    qvl_sbuf_str(&b, "\",\"config\":");
    char *cfg = qvl_path_join(model_dir, "config.json");
    if (!cfg) {
        qvl_free(b.p);
        return NULL;
    }
    fp_file(&b, cfg);
    qvl_free(cfg);
    qvl_sbuf_str(&b, ",\"shards\":[");
    for (size_t i = 0; i < qvl_st_n_files(st); i++) {
        if (i)
            qvl_sbuf_str(&b, ",");
        fp_file(&b, qvl_st_file_name(st, (int)i));
    }
    qvl_sbuf_str(&b, "]}");
    if (b.oom) {
        qvl_free(b.p);
        return NULL;
    }
    return b.p;
}

size_t qvl_qcache_header_bytes(const char *fp, size_t n) {
    return 8 + 8 * QC_HEAD_WORDS + strlen(fp) + n * 8 * QC_ENTRY_WORDS;
}

qvl_status qvl_qcache_check(const uint8_t *h, size_t hlen, uint64_t fsize, const char *fp,
                            size_t n, qvl_qcache_mat *mats, const char *name, char *err,
                            size_t err_len) {
    size_t fpl = strlen(fp), head = qvl_qcache_header_bytes(fp, n);
    if (hlen < head || memcmp(h, QC_MAGIC, 8) != 0) {
        qvl_errf(err, err_len, "%s: not a qvl quantisation cache, or truncated", name);
        return QVL_E_FORMAT;
    }
    if (get_u64(h + 8) != QC_VERSION || get_u64(h + 16) != n || get_u64(h + 24) != fpl ||
        memcmp(h + 48, fp, fpl) != 0) {
        qvl_errf(err, err_len, "%s: made by another qvl version or from other weights", name);
        return QVL_E_FORMAT;
    }
    uint64_t data0 = get_u64(h + 32);
    if (get_u64(h + 40) != fsize || data0 < head || data0 > fsize) {
        qvl_errf(err, err_len, "%s: size %llu differs from its header (truncated?)", name,
                 (unsigned long long)fsize);
        return QVL_E_FORMAT;
    }
    const uint8_t *e = h + 48 + fpl;
    for (size_t i = 0; i < n; i++, e += 8 * QC_ENTRY_WORDS) {
        uint64_t dt = get_u64(e), rows = get_u64(e + 8), cols = get_u64(e + 16);
        uint64_t off = get_u64(e + 24), nb = get_u64(e + 32);
        uint64_t want =
            qvl_dtype_mat_bytes(mats[i].dt, (size_t)mats[i].rows, (size_t)mats[i].cols);
        if (dt != (uint64_t)mats[i].dt || rows != (uint64_t)mats[i].rows ||
            cols != (uint64_t)mats[i].cols || nb != want || off < data0 || off % QC_ALIGN != 0 ||
            off > fsize || nb > fsize - off) {
            qvl_errf(err, err_len, "%s: matrix %zu does not match the model or the file", name,
                     i);
            return QVL_E_FORMAT;
        }
        mats[i].data = (const void *)(uintptr_t)off; /* an offset until mapped */
    }
    return QVL_OK;
}

qvl_status qvl_qcache_load(const char *path, qvl_st_mode mode, const char *fp, size_t n,
                           qvl_qcache_mat *mats, const uint8_t **map, size_t *size, bool *copied,
                           char *err, size_t err_len) {
    *map = NULL;
    *size = 0;
    *copied = false;
    if (!qvl_file_exists(path)) {
        qvl_errf(err, err_len, "%s: no such file", path);
        return QVL_E_IO;
    }
    /* check the header with a plain read before faulting in gigabytes */
    size_t head = qvl_qcache_header_bytes(fp, n);
    uint8_t *h = qvl_malloc(head);
    if (!h)
        return QVL_E_NOMEM;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat sb;
    ssize_t got = fd >= 0 ? pread(fd, h, head, 0) : -1;
    bool have_stat = fd >= 0 && fstat(fd, &sb) == 0;
    if (fd >= 0)
        close(fd);
    qvl_status s;
    if (got < 0 || !have_stat) {
        qvl_errf(err, err_len, "%s: cannot read: %s", path, strerror(errno));
        s = QVL_E_IO;
    } else {
        s = qvl_qcache_check(h, (size_t)got, (uint64_t)sb.st_size, fp, n, mats, path, err,
                             err_len);
    }
    qvl_free(h);
    if (s != QVL_OK)
        return s;
    const uint8_t *m = NULL;
    size_t msz = 0;
    s = qvl_st_map_whole(path, mode, &m, &msz, copied, err, err_len);
    if (s != QVL_OK)
        return s;
    if (msz != (size_t)sb.st_size) { /* changed between the two looks */
        qvl_st_unmap_whole(m, msz);
        qvl_errf(err, err_len, "%s: changed while being read", path);
        return QVL_E_FORMAT;
    }
    for (size_t i = 0; i < n; i++)
        mats[i].data = m + (uintptr_t)mats[i].data;
    *map = m;
    *size = msz;
    return QVL_OK;
}

static bool write_all(int fd, const void *p, size_t n) {
    const uint8_t *b = p;
    while (n) {
        size_t want = n < ((size_t)1 << 26) ? n : ((size_t)1 << 26);
        ssize_t w = write(fd, b, want);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return false;
        b += w;
        n -= (size_t)w;
    }
    return true;
}

qvl_status qvl_qcache_write(const char *path, const char *fp, size_t n,
                            const qvl_qcache_mat *mats, char *err, size_t err_len) {
    size_t fpl = strlen(fp);
    size_t head = 8 + 8 * QC_HEAD_WORDS + fpl + n * 8 * QC_ENTRY_WORDS;
    uint64_t data0 = align_up(head), off = data0;
    uint8_t *h = qvl_calloc(1, (size_t)data0);
    size_t tl = strlen(path) + 32;
    char *tmp = qvl_malloc(tl);
    if (!h || !tmp) {
        qvl_free(h);
        qvl_free(tmp);
        return QVL_E_NOMEM;
    }
    memcpy(h, QC_MAGIC, 8);
    put_u64(h + 8, QC_VERSION);
    put_u64(h + 16, n);
    put_u64(h + 24, fpl);
    put_u64(h + 32, data0);
    memcpy(h + 48, fp, fpl);
    uint8_t *e = h + 48 + fpl;
    for (size_t i = 0; i < n; i++, e += 8 * QC_ENTRY_WORDS) {
        uint64_t nb = qvl_dtype_mat_bytes(mats[i].dt, (size_t)mats[i].rows, (size_t)mats[i].cols);
        put_u64(e, (uint64_t)mats[i].dt);
        put_u64(e + 8, (uint64_t)mats[i].rows);
        put_u64(e + 16, (uint64_t)mats[i].cols);
        put_u64(e + 24, off);
        put_u64(e + 32, nb);
        off = align_up(off + nb);
    }
    uint64_t end = off;
    put_u64(h + 40, end);
    snprintf(tmp, tl, "%s.%ld.tmp", path, (long)getpid());
    qvl_status s = QVL_E_IO;
    int fd = -1;
    if (!qvl_mkdir_parents(path)) {
        qvl_errf(err, err_len, "%s: cannot create its directory: %s", path, strerror(errno));
    } else if ((fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644)) < 0) {
        qvl_errf(err, err_len, "%s: cannot create: %s", tmp, strerror(errno));
    } else {
        static const uint8_t zeros[QC_ALIGN];
        bool ok = write_all(fd, h, (size_t)data0);
        uint64_t pos = data0;
        for (size_t i = 0; i < n && ok; i++) {
            uint64_t nb =
                qvl_dtype_mat_bytes(mats[i].dt, (size_t)mats[i].rows, (size_t)mats[i].cols);
            ok = write_all(fd, mats[i].data, (size_t)nb);
            pos += nb;
            if (ok && align_up(pos) > pos)
                ok = write_all(fd, zeros, (size_t)(align_up(pos) - pos));
            pos = align_up(pos);
        }
        ok = ok && pos == end && fdatasync(fd) == 0;
        int e2 = errno;
#ifdef POSIX_FADV_DONTNEED
        if (ok) /* clean now: the next load reads it back into huge pages */
            posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
#endif
        ok = close(fd) == 0 && ok;
        if (ok && rename(tmp, path) == 0) {
            s = QVL_OK;
        } else {
            qvl_errf(err, err_len, "%s: cannot write: %s", tmp, strerror(e2 ? e2 : errno));
            unlink(tmp);
        }
    }
    qvl_free(h);
    qvl_free(tmp);
    return s;
}
