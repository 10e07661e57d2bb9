/* st.c - safetensors reader and writer.
 *
 * Reader: every shard is mmap'd read-only (PROT_READ, MAP_PRIVATE; the fd is closed right
 * after), its header is validated completely before any tensor is exposed (length, JSON,
 * dtype, shape, offsets inside the data section, byte length = elements x dtype size, no
 * overlaps), names are normalised to the canonical layout of spec 2.2 and entered into an
 * open-addressing hash table. A sharded directory is driven by model.safetensors.index.json,
 * whose weight_map is checked against the shards' contents.
 *
 * Writer: header first (tensors stored back to back in the given order, JSON padded with
 * spaces to a multiple of 8 bytes), then the caller streams the tensor bytes in chunks.
 */
#include "st.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define INDEX_NAME      "model.safetensors.index.json"
#define SINGLE_NAME     "model.safetensors"
#define MAX_INDEX_BYTES (64u << 20)
#define MAX_JSON_INT    9007199254740992.0 /* 2^53: larger values are not exact in a double */
#define MEM_NAME        "<memory>"

/* ---- dtypes ------------------------------------------------------------------------------ */

typedef struct dt_info {
    const char *name;
    qvl_dtype dtype;
    size_t size;
} dt_info;

static const dt_info k_dtypes[] = {
    {"F64", QVL_DT_F64, 8},   {"F32", QVL_DT_F32, 4},         {"F16", QVL_DT_F16, 2},
    {"BF16", QVL_DT_BF16, 2}, {"I64", QVL_DT_I64, 8},         {"I32", QVL_DT_I32, 4},
    {"I16", QVL_DT_I16, 2},   {"I8", QVL_DT_I8, 1},           {"U8", QVL_DT_U8, 1},
    {"BOOL", QVL_DT_BOOL, 1}, {"F8_E4M3", QVL_DT_F8_E4M3, 1}, {"F8_E5M2", QVL_DT_F8_E5M2, 1},
};
#define N_DTYPES (sizeof k_dtypes / sizeof k_dtypes[0])

static const dt_info *dtype_by_name(const char *s) {
    for (size_t i = 0; i < N_DTYPES; i++)
        if (strcmp(k_dtypes[i].name, s) == 0)
            return &k_dtypes[i];
    return NULL;
}

static const dt_info *dtype_by_enum(qvl_dtype t) {
    for (size_t i = 0; i < N_DTYPES; i++)
        if (k_dtypes[i].dtype == t)
            return &k_dtypes[i];
    return NULL;
}

/* ---- the reader object ------------------------------------------------------------------- */

typedef struct st_file {
    char *path;
    const uint8_t *map; /* whole file */
    size_t size;
    bool owned;  /* map came from mmap (false: borrowed memory image) */
    bool copied; /* map is anonymous memory holding a copy of the file */
} st_file;

struct qvl_st {
    qvl_st_mode mode; /* how shards are brought into memory (st.h) */
    qvl_st_progress prog;
    uint64_t prog_done, prog_total;
    st_file *files;
    size_t n_files;
    size_t cap_files;
    qvl_st_tensor *tensors; /* names are heap strings owned here */
    char **raw_names;       /* name as written in the file, parallel to tensors */
    size_t n_tensors;
    size_t cap_tensors;
    size_t *slots;  /* hash table: 0 empty, else tensor index + 1 */
    size_t n_slots; /* power of two */
    void **copies;  /* aligned copies of tensors the file stores off their element size */
    size_t n_copies;
};

static uint64_t hash_str(const char *s) {
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 1099511628211ull;
    }
    return h;
}

/* Index of the tensor named `name`, or (size_t)-1. */
static size_t lookup(const qvl_st *st, const char *name) {
    if (!st->n_slots)
        return (size_t)-1;
    size_t mask = st->n_slots - 1;
    for (size_t i = (size_t)hash_str(name) & mask;; i = (i + 1) & mask) {
        size_t v = st->slots[i];
        if (!v)
            return (size_t)-1;
        if (strcmp(st->tensors[v - 1].name, name) == 0)
            return v - 1;
    }
}

static void slot_put(size_t *slots, size_t n_slots, const char *name, size_t idx) {
    size_t mask = n_slots - 1;
    size_t i = (size_t)hash_str(name) & mask;
    while (slots[i])
        i = (i + 1) & mask;
    slots[i] = idx + 1;
}

/* Make room for one more tensor in the arrays and keep the table at most half full. */
static bool reserve_tensor(qvl_st *st) {
    if (st->n_tensors == st->cap_tensors) {
        size_t nc = st->cap_tensors ? st->cap_tensors * 2 : 64;
        qvl_st_tensor *nt = qvl_realloc(st->tensors, nc * sizeof *nt);
        if (!nt)
            return false;
        st->tensors = nt;
        char **nr = qvl_realloc(st->raw_names, nc * sizeof *nr);
        if (!nr)
            return false;
        st->raw_names = nr;
        st->cap_tensors = nc;
    }
    if ((st->n_tensors + 1) * 2 > st->n_slots) {
        size_t ns = st->n_slots ? st->n_slots * 2 : 128;
        size_t *s = qvl_calloc(ns, sizeof *s);
        if (!s)
            return false;
        for (size_t i = 0; i < st->n_tensors; i++)
            slot_put(s, ns, st->tensors[i].name, i);
        qvl_free(st->slots);
        st->slots = s;
        st->n_slots = ns;
    }
    return true;
}

static bool starts_with(const char *s, const char *p) {
    return strncmp(s, p, strlen(p)) == 0;
}

static char *concat(const char *a, const char *b) {
    size_t la = strlen(a), lb = strlen(b);
    char *r = qvl_malloc(la + lb + 1);
    if (!r)
        return NULL;
    memcpy(r, a, la);
    memcpy(r + la, b, lb + 1);
    return r;
}

char *qvl_st_normalize_name(const char *raw) {
    if (starts_with(raw, "visual."))
        return concat("model.visual.", raw + strlen("visual."));
    if (starts_with(raw, "model.") && !starts_with(raw, "model.visual.") &&
        !starts_with(raw, "model.language_model."))
        return concat("model.language_model.", raw + strlen("model."));
    if (starts_with(raw, "language_model.model."))
        return concat("model.language_model.", raw + strlen("language_model.model."));
    if (starts_with(raw, "language_model.lm_head."))
        return concat("lm_head.", raw + strlen("language_model.lm_head."));
    return qvl_strdup(raw);
}

/* Add one validated tensor under its canonical name; fails on a name clash (exact duplicate or
 * two raw names with the same canonical form). */
static qvl_status add_tensor(qvl_st *st, const char *raw, const qvl_st_tensor *t, char *err,
                             size_t err_len) {
    const char *fname = st->files[t->file].path;
    char *canon = qvl_st_normalize_name(raw);
    if (!canon) {
        qvl_errf(err, err_len, "%s: out of memory at tensor %s", fname, raw);
        return QVL_E_NOMEM;
    }
    size_t prev = lookup(st, canon);
    if (prev != (size_t)-1) {
        const char *pfile = st->files[st->tensors[prev].file].path;
        if (strcmp(st->raw_names[prev], raw) == 0)
            qvl_errf(err, err_len, "%s: duplicate tensor name %s (also in %s)", fname, raw, pfile);
        else
            qvl_errf(err, err_len, "%s: tensor names %s and %s (in %s) both normalise to %s", fname,
                     raw, st->raw_names[prev], pfile, canon);
        qvl_free(canon);
        return QVL_E_FORMAT;
    }
    char *rawc = qvl_strdup(raw);
    if (!rawc || !reserve_tensor(st)) {
        qvl_free(rawc);
        qvl_free(canon);
        qvl_errf(err, err_len, "%s: out of memory at tensor %s", fname, raw);
        return QVL_E_NOMEM;
    }
    size_t idx = st->n_tensors++;
    st->tensors[idx] = *t;
    st->tensors[idx].name = canon;
    st->raw_names[idx] = rawc;
    slot_put(st->slots, st->n_slots, canon, idx);
    return QVL_OK;
}

static qvl_st *st_new(void) {
    return qvl_calloc(1, sizeof(qvl_st));
}

void qvl_st_free(qvl_st *st) {
    if (!st)
        return;
    for (size_t i = 0; i < st->n_files; i++) {
        if (st->files[i].owned && st->files[i].map)
            munmap((void *)st->files[i].map, st->files[i].size);
        qvl_free(st->files[i].path);
    }
    for (size_t i = 0; i < st->n_tensors; i++) {
        qvl_free((char *)st->tensors[i].name);
        qvl_free(st->raw_names[i]);
    }
    for (size_t i = 0; i < st->n_copies; i++)
        qvl_free(st->copies[i]);
    qvl_free(st->copies);
    qvl_free(st->files);
    qvl_free(st->tensors);
    qvl_free(st->raw_names);
    qvl_free(st->slots);
    qvl_free(st);
}

/* Append a file record (path copied); returns its index or -1 when out of memory. */
static int add_file(qvl_st *st, const char *path) {
    if (st->n_files >= (size_t)INT32_MAX)
        return -1;
    if (st->n_files == st->cap_files) {
        size_t nc = st->cap_files ? st->cap_files * 2 : 4;
        st_file *nf = qvl_realloc(st->files, nc * sizeof *nf);
        if (!nf)
            return -1;
        st->files = nf;
        st->cap_files = nc;
    }
    char *p = qvl_strdup(path);
    if (!p)
        return -1;
    st_file *f = &st->files[st->n_files];
    memset(f, 0, sizeof *f);
    f->path = p;
    return (int)st->n_files++;
}

/* ---- header parsing ---------------------------------------------------------------------- */

typedef struct hdr_ent {
    const char *name; /* points into the cJSON tree */
    const dt_info *dt;
    int n_dims;
    int64_t shape[QVL_ST_MAX_DIMS];
    uint64_t begin, end;
} hdr_ent;

static int cmp_ent(const void *a, const void *b) {
    const hdr_ent *x = a, *y = b;
    if (x->begin != y->begin)
        return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end)
        return x->end < y->end ? -1 : 1;
    return strcmp(x->name, y->name);
}

/* A JSON number that is an exact non-negative integer below 2^53. */
static bool json_uint(const cJSON *v, uint64_t *out) {
    if (!cJSON_IsNumber(v))
        return false;
    double d = v->valuedouble;
    if (!(d >= 0.0) || d >= MAX_JSON_INT || d != (double)(uint64_t)d)
        return false;
    *out = (uint64_t)d;
    return true;
}

/* Validate one header entry into *e. */
static qvl_status parse_entry(const cJSON *it, const char *fname, hdr_ent *e, char *err,
                              size_t err_len) {
    const char *name = it->string;
    e->name = name;
    if (!cJSON_IsObject(it)) {
        qvl_errf(err, err_len, "%s: tensor %s: header entry is not an object", fname, name);
        return QVL_E_FORMAT;
    }
    const cJSON *dt = cJSON_GetObjectItemCaseSensitive(it, "dtype");
    const cJSON *shape = cJSON_GetObjectItemCaseSensitive(it, "shape");
    const cJSON *offs = cJSON_GetObjectItemCaseSensitive(it, "data_offsets");
    if (!cJSON_IsString(dt) || !dt->valuestring) {
        qvl_errf(err, err_len, "%s: tensor %s: missing or non-string \"dtype\"", fname, name);
        return QVL_E_FORMAT;
    }
    e->dt = dtype_by_name(dt->valuestring);
    if (!e->dt) {
        qvl_errf(err, err_len, "%s: tensor %s: unknown dtype \"%.32s\"", fname, name,
                 dt->valuestring);
        return QVL_E_FORMAT;
    }
    if (!cJSON_IsArray(shape)) {
        qvl_errf(err, err_len, "%s: tensor %s: missing or non-array \"shape\"", fname, name);
        return QVL_E_FORMAT;
    }
    int nd = cJSON_GetArraySize(shape);
    if (nd > QVL_ST_MAX_DIMS) {
        qvl_errf(err, err_len, "%s: tensor %s: %d dimensions, at most %d supported", fname, name,
                 nd, QVL_ST_MAX_DIMS);
        return QVL_E_FORMAT;
    }
    e->n_dims = nd;
    memset(e->shape, 0, sizeof e->shape);
    uint64_t count = 1;
    bool overflow = false;
    int d = 0;
    for (const cJSON *v = shape->child; v; v = v->next, d++) {
        uint64_t x;
        if (!json_uint(v, &x) || x > (uint64_t)INT64_MAX) {
            qvl_errf(err, err_len, "%s: tensor %s: shape[%d] is not a non-negative integer", fname,
                     name, d);
            return QVL_E_FORMAT;
        }
        e->shape[d] = (int64_t)x;
        if (__builtin_mul_overflow(count, x, &count))
            overflow = true;
    }
    uint64_t nbytes = 0;
    if (overflow || __builtin_mul_overflow(count, (uint64_t)e->dt->size, &nbytes)) {
        qvl_errf(err, err_len, "%s: tensor %s: shape too large (size overflows)", fname, name);
        return QVL_E_FORMAT;
    }
    if (!cJSON_IsArray(offs) || cJSON_GetArraySize(offs) != 2 ||
        !json_uint(offs->child, &e->begin) || !json_uint(offs->child->next, &e->end)) {
        qvl_errf(err, err_len,
                 "%s: tensor %s: \"data_offsets\" must be [begin, end] non-negative integers",
                 fname, name);
        return QVL_E_FORMAT;
    }
    if (e->begin > e->end) {
        qvl_errf(err, err_len, "%s: tensor %s: data_offsets begin %llu > end %llu", fname, name,
                 (unsigned long long)e->begin, (unsigned long long)e->end);
        return QVL_E_FORMAT;
    }
    if (e->end - e->begin != nbytes) {
        qvl_errf(err, err_len,
                 "%s: tensor %s: data_offsets span %llu bytes but shape x %s needs %llu", fname,
                 name, (unsigned long long)(e->end - e->begin), e->dt->name,
                 (unsigned long long)nbytes);
        return QVL_E_FORMAT;
    }
    return QVL_OK;
}

/* Validate the file image buf[0..len) of st->files[file] and add its tensors to st. Tensors
 * are added in offset order. Nothing is added unless the whole header is valid. */
static qvl_status parse_image(qvl_st *st, int file, char *err, size_t err_len) {
    const uint8_t *buf = st->files[file].map;
    size_t len = st->files[file].size;
    const char *fname = st->files[file].path;
    if (len < 8) {
        qvl_errf(err, err_len, "%s: file is %zu bytes, too small for a safetensors header", fname,
                 len);
        return QVL_E_FORMAT;
    }
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--)
        n = (n << 8) | buf[i];
    if (n > (uint64_t)(len - 8)) {
        qvl_errf(err, err_len, "%s: header length %llu exceeds the file size (%zu bytes)", fname,
                 (unsigned long long)n, len);
        return QVL_E_FORMAT;
    }
    if (n > QVL_ST_MAX_HEADER) {
        qvl_errf(err, err_len, "%s: header length %llu exceeds the limit of %u bytes", fname,
                 (unsigned long long)n, QVL_ST_MAX_HEADER);
        return QVL_E_LIMIT;
    }
    const char *json = (const char *)buf + 8;
    const char *jend = NULL;
    qvl_status ps;
    cJSON *root = qvl_json_parse(json, (size_t)n, &jend, &ps, NULL);
    if (!root) {
        if (ps == QVL_E_NOMEM)
            qvl_errf(err, err_len, "%s: out of memory parsing the header", fname);
        else
            qvl_errf(err, err_len, "%s: header is not valid JSON", fname);
        return ps;
    }
    qvl_status s = QVL_OK;
    hdr_ent *ents = NULL;
    /* only whitespace may follow the JSON value (the reference writer pads with spaces) */
    for (const char *p = jend ? jend : json + n; p < json + n; p++) {
        if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r') {
            qvl_errf(err, err_len, "%s: header has trailing bytes after the JSON object", fname);
            s = QVL_E_FORMAT;
            goto out;
        }
    }
    if (!cJSON_IsObject(root)) {
        qvl_errf(err, err_len, "%s: header is not a JSON object", fname);
        s = QVL_E_FORMAT;
        goto out;
    }
    size_t data_size = len - 8 - (size_t)n;
    size_t n_child = 0;
    for (const cJSON *it = root->child; it; it = it->next)
        n_child++;
    ents = qvl_malloc((n_child ? n_child : 1) * sizeof *ents);
    if (!ents) {
        qvl_errf(err, err_len, "%s: out of memory parsing the header", fname);
        s = QVL_E_NOMEM;
        goto out;
    }
    size_t n_ent = 0;
    bool seen_meta = false;
    for (const cJSON *it = root->child; it; it = it->next) {
        if (!it->string) {
            qvl_errf(err, err_len, "%s: header entry without a name", fname);
            s = QVL_E_FORMAT;
            goto out;
        }
        if (strcmp(it->string, "__metadata__") == 0) {
            if (seen_meta || !cJSON_IsObject(it)) {
                qvl_errf(err, err_len, "%s: __metadata__ must be a single object", fname);
                s = QVL_E_FORMAT;
                goto out;
            }
            seen_meta = true;
            for (const cJSON *m = it->child; m; m = m->next) {
                if (!cJSON_IsString(m)) {
                    qvl_errf(err, err_len, "%s: __metadata__ value %s is not a string", fname,
                             m->string ? m->string : "?");
                    s = QVL_E_FORMAT;
                    goto out;
                }
            }
            continue;
        }
        hdr_ent *e = &ents[n_ent];
        s = parse_entry(it, fname, e, err, err_len);
        if (s != QVL_OK)
            goto out;
        if (e->end > (uint64_t)data_size) {
            qvl_errf(err, err_len,
                     "%s: tensor %s: data_offsets end %llu is past the data section (%zu bytes; "
                     "file truncated?)",
                     fname, e->name, (unsigned long long)e->end, data_size);
            s = QVL_E_FORMAT;
            goto out;
        }
        n_ent++;
    }
    if (n_ent > 1)
        qsort(ents, n_ent, sizeof *ents, cmp_ent);
    for (size_t i = 1; i < n_ent; i++) {
        if (ents[i].begin < ents[i - 1].end) {
            qvl_errf(err, err_len, "%s: tensors %s [%llu, %llu) and %s [%llu, %llu) overlap", fname,
                     ents[i - 1].name, (unsigned long long)ents[i - 1].begin,
                     (unsigned long long)ents[i - 1].end, ents[i].name,
                     (unsigned long long)ents[i].begin, (unsigned long long)ents[i].end);
            s = QVL_E_FORMAT;
            goto out;
        }
    }
    const uint8_t *data = buf + 8 + n;
    for (size_t i = 0; i < n_ent; i++) {
        qvl_st_tensor t;
        memset(&t, 0, sizeof t);
        t.dtype = ents[i].dt->dtype;
        t.n_dims = ents[i].n_dims;
        memcpy(t.shape, ents[i].shape, sizeof t.shape);
        t.data = data + ents[i].begin;
        t.nbytes = (size_t)(ents[i].end - ents[i].begin);
        /* The kernels read 2- and 4-byte elements in place, so they must sit on their size.
         * The safetensors library's writer orders tensors so that they do; a file that does
         * not gets a private, aligned copy of such a tensor. */
        size_t es = ents[i].dt->size;
        if (es > 1 && (uintptr_t)t.data % es != 0) {
            void *cp = qvl_malloc(t.nbytes ? t.nbytes : 1);
            void **nc = cp ? qvl_realloc(st->copies, (st->n_copies + 1) * sizeof *nc) : NULL;
            if (!nc) {
                qvl_free(cp);
                qvl_errf(err, err_len, "%s: out of memory for a copy of tensor %s", fname,
                         ents[i].name);
                s = QVL_E_NOMEM;
                goto out;
            }
            memcpy(cp, t.data, t.nbytes);
            st->copies = nc;
            st->copies[st->n_copies++] = cp;
            t.data = cp;
        }
        t.file = file;
        s = add_tensor(st, ents[i].name, &t, err, err_len);
        if (s != QVL_OK)
            goto out;
    }
out:
    qvl_free(ents);
    cJSON_Delete(root);
    return s;
}

/* Shards this size or larger are copied in auto mode when not mapped through huge pages. */
#define AUTO_MIN_BYTES ((size_t)64 << 20)
#define HUGE_ALIGN ((size_t)2 << 20)
#define IO_STEP ((size_t)1 << 26) /* bytes read or faulted in between progress calls */

/* Bytes of the mapping starting at `addr` that the kernel maps with PMD (2 MiB) entries, from
 * /proc/self/smaps (FilePmdMapped); 0 when that cannot be read. */
static size_t pmd_mapped_bytes(const void *addr) {
    FILE *f = fopen("/proc/self/smaps", "r");
    if (!f)
        return 0;
    char line[512];
    bool in = false;
    size_t kb = 0;
    while (fgets(line, sizeof line, f)) {
        unsigned long a, b;
        char c;
        if (sscanf(line, "%lx-%lx %c", &a, &b, &c) == 3) { /* a mapping's first line */
            if (in)
                break;
            in = a == (unsigned long)(uintptr_t)addr;
        } else if (in && !strncmp(line, "FilePmdMapped:", 14)) {
            kb = strtoul(line + 14, NULL, 10);
        }
    }
    fclose(f);
    return kb << 10;
}

/* Transparent huge pages switched off for the whole system: a copy would not get them either. */
static bool thp_off(void) {
    FILE *f = fopen("/sys/kernel/mm/transparent_hugepage/enabled", "r");
    if (!f)
        return false; /* unknown: assume they may be had */
    char line[128] = "";
    bool off = fgets(line, sizeof line, f) && strstr(line, "[never]");
    fclose(f);
    return off;
}

/* The FilePmdMapped probe; tests replace it (qvl_st_set_pmd_probe) to play the kernel's part. */
static size_t (*g_pmd_probe)(const void *addr, size_t size);

void qvl_st_set_pmd_probe(size_t (*fn)(const void *addr, size_t size)) {
    g_pmd_probe = fn;
}

static _Atomic int g_mmap_fail;

void qvl_st_set_mmap_fail(int on) {
    g_mmap_fail = on;
}

/* a read-only private mapping of fd (qvl_st_set_mmap_fail can make it fail) */
static void *map_file_ro(void *addr, size_t size, int flags, int fd) {
    if (g_mmap_fail) {
        errno = ENODEV;
        return MAP_FAILED;
    }
    return mmap(addr, size, PROT_READ, MAP_PRIVATE | flags, fd, 0);
}

static size_t pmd_probe(const void *addr, size_t size) {
    return g_pmd_probe ? g_pmd_probe(addr, size) : pmd_mapped_bytes(addr);
}

/* A re-read (see bring_in) that left a file mostly in small pages is not tried again for a day:
 * the kernel could not make huge folios (fragmented memory), and trying again at every load
 * would read the whole file from disk each time before copying it anyway. The marker is an
 * empty file in qvl's cache directory named after the file's device, inode, size and mtime, so
 * a changed file is tried afresh. NULL when there is no cache directory. */
#define REREAD_RETRY_S (24 * 3600)
static char *reread_marker(const struct stat *sb) {
    char *base = qvl_default_cache_dir();
    if (!base)
        return NULL;
    char name[160];
    snprintf(name, sizeof name, "reread-failed/%llx-%llx-%llx-%llx.%09ld",
             (unsigned long long)sb->st_dev, (unsigned long long)sb->st_ino,
             (unsigned long long)sb->st_size, (unsigned long long)sb->st_mtim.tv_sec,
             (long)sb->st_mtim.tv_nsec);
    char *path = qvl_path_join(base, name);
    qvl_free(base);
    return path;
}

static bool reread_failed_lately(const struct stat *sb) {
    char *path = reread_marker(sb);
    struct stat ms;
    bool lately = path && stat(path, &ms) == 0 && time(NULL) - ms.st_mtime < REREAD_RETRY_S;
    qvl_free(path);
    return lately;
}

static void reread_failed_mark(const struct stat *sb) {
    char *path = reread_marker(sb);
    int fd = path && qvl_mkdir_parents(path)
                 ? open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644)
                 : -1;
    if (fd >= 0) {
        futimens(fd, NULL); /* an existing marker counts from now */
        close(fd);
    }
    qvl_free(path);
}

/* Count n more bytes read; true when the caller's progress function asks to cancel. */
static bool progress(qvl_st *st, size_t n) {
    if (!st)
        return false;
    st->prog_done += (uint64_t)n;
    return st->prog.fn && st->prog.fn(st->prog.user, st->prog_done, st->prog_total);
}

/* Map the file read-only at a 2 MiB-aligned address with transparent huge pages requested and
 * fault it in (populate; progress counted): page-cache folios of 2 MiB (which the kernel makes
 * when it reads a file through such a mapping) are then mapped whole, and the weights stream
 * as fast as from anonymous huge pages, with no copy. */
static qvl_status map_in_place(qvl_st *st, int fd, const char *path, size_t size, bool populate,
                               void **out, char *err, size_t err_len) {
    *out = NULL;
    size_t span = size + HUGE_ALIGN;
    uint8_t *res = span > size ? mmap(NULL, span, PROT_NONE,
                                      MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0)
                               : MAP_FAILED;
    uint8_t *m = MAP_FAILED;
    if (res != MAP_FAILED) {
        uint8_t *al = (uint8_t *)(((uintptr_t)res + HUGE_ALIGN - 1) & ~(uintptr_t)(HUGE_ALIGN - 1));
        m = map_file_ro(al, size, MAP_FIXED, fd);
        if (m == MAP_FAILED) {
            munmap(res, span);
        } else { /* give back the unused ends of the reservation */
            if (al > res)
                munmap(res, (size_t)(al - res));
            size_t pg = (size_t)sysconf(_SC_PAGESIZE);
            uint8_t *end = al + ((size + pg - 1) & ~(pg - 1));
            if (end < res + span)
                munmap(end, (size_t)(res + span - end));
        }
    }
    if (m == MAP_FAILED) /* no aligned reservation: a plain mapping still works */
        m = map_file_ro(NULL, size, 0, fd);
    if (m == MAP_FAILED) {
        qvl_errf(err, err_len, "%s: mmap failed: %s", path, strerror(errno));
        return QVL_E_IO;
    }
#ifdef MADV_HUGEPAGE
    madvise(m, size, MADV_HUGEPAGE);
#endif
#ifdef MADV_POPULATE_READ
    /* fault the mapping in now, in steps so that progress shows and can cancel */
    for (size_t off = 0; populate && off < size;) {
        size_t n = size - off < IO_STEP ? size - off : IO_STEP;
        if (madvise(m + off, n, MADV_POPULATE_READ) != 0 && errno != EINTR) {
            if (errno == EINVAL || errno == ENOSYS)
                break; /* older kernel: pages fault in on first use */
            int e = errno;
            munmap(m, size);
            qvl_errf(err, err_len, "%s: reading the file failed at byte %zu: %s", path, off,
                     strerror(e));
            return QVL_E_IO;
        }
        off += n;
        if (progress(st, n)) {
            munmap(m, size);
            qvl_errf(err, err_len, "%s: loading cancelled", path);
            return QVL_E_CANCELLED;
        }
    }
#endif
    *out = m;
    return QVL_OK;
}

/* Read the whole file into anonymous memory with transparent huge pages requested. */
static qvl_status read_copy(qvl_st *st, int fd, const char *path, size_t size, void **out,
                            char *err, size_t err_len) {
    *out = NULL;
    uint8_t *m = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) {
        qvl_errf(err, err_len, "%s: cannot allocate %zu MB: %s", path, size >> 20,
                 strerror(errno));
        return QVL_E_NOMEM;
    }
#ifdef MADV_HUGEPAGE
    madvise(m, size, MADV_HUGEPAGE);
#endif
    size_t got = 0;
    while (got < size) {
        size_t want = size - got < IO_STEP ? size - got : IO_STEP;
        ssize_t r = pread(fd, m + got, want, (off_t)got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            int e = r < 0 ? errno : EIO;
            munmap(m, size);
            qvl_errf(err, err_len, "%s: read failed at byte %zu: %s", path, got, strerror(e));
            return QVL_E_IO;
        }
        got += (size_t)r;
        if (progress(st, (size_t)r)) {
            munmap(m, size);
            qvl_errf(err, err_len, "%s: loading cancelled", path);
            return QVL_E_CANCELLED;
        }
    }
    mprotect(m, size, PROT_READ);
    *out = m;
    return QVL_OK;
}

/* Bring the open file fd (size bytes) into memory as `mode` says (st.h); st (optional) takes
 * the progress. *copied tells which way it went. */
static qvl_status bring_in(qvl_st *st, qvl_st_mode mode, int fd, const char *path, size_t size,
                           void **out, bool *copied, char *err, size_t err_len) {
    void *m = NULL;
    *out = NULL;
    *copied = false;
    uint64_t done0 = st ? st->prog_done : 0;
    if (mode != QVL_ST_COPY) {
        qvl_status ms = map_in_place(st, fd, path, size, mode != QVL_ST_MAP_LAZY, &m, err, err_len);
        if (ms == QVL_E_IO && (mode == QVL_ST_AUTO || mode == QVL_ST_MAP_LAZY)) {
            /* a file system that cannot map: read the file */
            qvl_log(QVL_LOG_INFO, "%s: cannot be mapped, reading it", path);
            if (st)
                st->prog_done = done0;
            m = NULL;
        } else if (ms != QVL_OK) {
            return ms;
        }
    }
    if (m && mode != QVL_ST_COPY) {
        if (mode == QVL_ST_MAP_LAZY && progress(st, size)) {
            munmap(m, size);
            qvl_errf(err, err_len, "%s: loading cancelled", path);
            return QVL_E_CANCELLED;
        }
        /* auto: keep the mapping only where the page cache holds huge pages (see st.h) */
        const size_t enough = size / 10 * 9; /* bytes in 2 MiB entries to keep the mapping */
        size_t pmd = mode == QVL_ST_AUTO && size >= AUTO_MIN_BYTES ? pmd_probe(m, size) : size;
        if (pmd > 0 && pmd < enough) {
            struct stat sb;
            bool have_sb = fstat(fd, &sb) == 0;
            if (have_sb && reread_failed_lately(&sb)) {
                qvl_log(QVL_LOG_INFO,
                        "%s: mostly in small pages; a re-read in the last day did not help: "
                        "copying",
                        path);
            } else {
                /* the file system makes huge folios (some of this file is in them) but most
                 * of the file was cached in small ones, e.g. when it was written: drop the
                 * unmapped clean pages and read the file again through the mapping, once, so
                 * that this and later loads get huge pages */
                munmap(m, size);
                m = NULL;
                if (st)
                    st->prog_done = done0;
                qvl_log(QVL_LOG_INFO, "%s: re-reading the file into huge pages", path);
#ifdef POSIX_FADV_DONTNEED
                posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
#endif
                qvl_status ms = map_in_place(st, fd, path, size, true, &m, err, err_len);
                if (ms != QVL_OK)
                    return ms;
                pmd = pmd_probe(m, size);
                if (pmd < enough && have_sb)
                    reread_failed_mark(&sb);
            }
        }
        if (pmd < enough && !thp_off()) {
            munmap(m, size);
            m = NULL;
            if (st)
                st->prog_done = done0; /* counted again by the copy */
        }
    }
    if (!m) {
        qvl_status cs = read_copy(st, fd, path, size, &m, err, err_len);
        if (cs != QVL_OK)
            return cs;
        *copied = true;
    }
    *out = m;
    return QVL_OK;
}

qvl_status qvl_st_map_whole(const char *path, qvl_st_mode mode, const uint8_t **map,
                            size_t *size, bool *copied, char *err, size_t err_len) {
    *map = NULL;
    *size = 0;
    *copied = false;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        qvl_errf(err, err_len, "%s: cannot open: %s", path, strerror(errno));
        return QVL_E_IO;
    }
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode) || sb.st_size <= 0 ||
        (uint64_t)sb.st_size > (uint64_t)SIZE_MAX) {
        qvl_errf(err, err_len, "%s: not a regular, non-empty file", path);
        close(fd);
        return QVL_E_IO;
    }
    void *m = NULL;
    qvl_status s = bring_in(NULL, mode, fd, path, (size_t)sb.st_size, &m, copied, err, err_len);
    close(fd);
    if (s == QVL_OK) {
        *map = m;
        *size = (size_t)sb.st_size;
    }
    return s;
}

void qvl_st_unmap_whole(const uint8_t *map, size_t size) {
    if (map && size)
        munmap((void *)map, size);
}

/* Bring `path` into st as a new file (st->mode); *file_out gets its index. */
static qvl_status map_file(qvl_st *st, const char *path, int *file_out, char *err, size_t err_len) {
    int idx = add_file(st, path);
    if (idx < 0) {
        qvl_errf(err, err_len, "%s: out of memory", path);
        return QVL_E_NOMEM;
    }
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        qvl_errf(err, err_len, "%s: cannot open: %s", path, strerror(errno));
        return QVL_E_IO;
    }
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        qvl_errf(err, err_len, "%s: not a regular file", path);
        close(fd);
        return QVL_E_IO;
    }
    if (sb.st_size < 0 || (uint64_t)sb.st_size > (uint64_t)SIZE_MAX) {
        qvl_errf(err, err_len, "%s: file too large to map", path);
        close(fd);
        return QVL_E_LIMIT;
    }
    size_t size = (size_t)sb.st_size;
    if (size < 8) { /* also avoids mmap of 0 bytes */
        close(fd);
        qvl_errf(err, err_len, "%s: file is %zu bytes, too small for a safetensors header", path,
                 size);
        return QVL_E_FORMAT;
    }
    /* check the header length before reading or faulting in the whole file */
    uint8_t h8[8];
    if (pread(fd, h8, 8, 0) != 8) {
        close(fd);
        qvl_errf(err, err_len, "%s: cannot read the header", path);
        return QVL_E_IO;
    }
    uint64_t hl = 0;
    for (int i = 7; i >= 0; i--)
        hl = (hl << 8) | h8[i];
    if (hl > size - 8 || hl > QVL_ST_MAX_HEADER) {
        close(fd);
        qvl_errf(err, err_len,
                 "%s: header length %llu does not fit in the file (%zu bytes) or the %u-byte "
                 "limit",
                 path, (unsigned long long)hl, size, QVL_ST_MAX_HEADER);
        return hl > QVL_ST_MAX_HEADER && hl <= size - 8 ? QVL_E_LIMIT : QVL_E_FORMAT;
    }
    bool copied = false;
    void *m = NULL;
    qvl_status bs = bring_in(st, st->mode, fd, path, size, &m, &copied, err, err_len);
    close(fd);
    if (bs != QVL_OK)
        return bs;
    st->files[idx].copied = copied;
    st->files[idx].map = m;
    st->files[idx].size = size;
    st->files[idx].owned = true;
    *file_out = idx;
    return QVL_OK;
}

qvl_status qvl_st_open_file(const char *path, qvl_st **out, char *err, size_t err_len) {
    if (out)
        *out = NULL;
    if (!path || !out) {
        qvl_errf(err, err_len, "qvl_st_open_file: NULL argument");
        return QVL_E_INVAL;
    }
    qvl_st *st = st_new();
    if (!st) {
        qvl_errf(err, err_len, "%s: out of memory", path);
        return QVL_E_NOMEM;
    }
    int file = -1;
    qvl_status s = map_file(st, path, &file, err, err_len);
    if (s == QVL_OK)
        s = parse_image(st, file, err, err_len);
    if (s != QVL_OK) {
        qvl_st_free(st);
        return s;
    }
    *out = st;
    return QVL_OK;
}

qvl_status qvl_st_parse_header(const uint8_t *buf, size_t len, char *err, size_t err_len) {
    if (!buf && len) {
        qvl_errf(err, err_len, "qvl_st_parse_header: NULL buffer");
        return QVL_E_INVAL;
    }
    qvl_st *st = st_new();
    int file = st ? add_file(st, MEM_NAME) : -1;
    if (file < 0) {
        qvl_st_free(st);
        qvl_errf(err, err_len, "%s: out of memory", MEM_NAME);
        return QVL_E_NOMEM;
    }
    st->files[file].map = buf;
    st->files[file].size = len;
    qvl_status s = parse_image(st, file, err, err_len);
    if (s == QVL_OK) { /* exercise the lookups the engine will do */
        for (size_t i = 0; i < st->n_tensors; i++) {
            if (qvl_st_find(st, st->tensors[i].name) != &st->tensors[i]) {
                qvl_errf(err, err_len, "%s: internal lookup error", MEM_NAME);
                s = QVL_E_INTERNAL;
                break;
            }
        }
    }
    qvl_st_free(st);
    return s;
}

/* ---- index.json -------------------------------------------------------------------------- */

typedef struct st_index {
    cJSON *root;
    size_t n;              /* weight_map entries */
    const char **tensor;   /* raw tensor names (into root) */
    const char **shard_of; /* shard name per entry (into root) */
    const char **shards;   /* unique shard names, sorted */
    size_t n_shards;
} st_index;

static void index_free(st_index *ix) {
    cJSON_Delete(ix->root);
    qvl_free(ix->tensor);
    qvl_free(ix->shard_of);
    qvl_free(ix->shards);
    memset(ix, 0, sizeof *ix);
}

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* A shard name must be a plain file name inside the model directory. */
static bool plain_name(const char *s) {
    return s[0] && !strchr(s, '/') && strcmp(s, ".") != 0 && strcmp(s, "..") != 0;
}

/* Parse and check an index.json text: weight_map object of tensor -> plain shard name, no
 * tensor listed twice. On success ix owns the tree and arrays (index_free). */
static qvl_status index_parse(const char *json, size_t len, const char *fname, st_index *ix,
                              char *err, size_t err_len) {
    memset(ix, 0, sizeof *ix);
    const char **sorted = NULL;
    qvl_status s = QVL_OK;
    qvl_status ps;
    ix->root = qvl_json_parse(json, len, NULL, &ps, NULL);
    if (!ix->root) {
        if (ps == QVL_E_NOMEM)
            qvl_errf(err, err_len, "%s: out of memory", fname);
        else
            qvl_errf(err, err_len, "%s: not valid JSON", fname);
        return ps;
    }
    if (!cJSON_IsObject(ix->root)) {
        qvl_errf(err, err_len, "%s: not a JSON object", fname);
        s = QVL_E_FORMAT;
        goto fail;
    }
    const cJSON *meta = cJSON_GetObjectItemCaseSensitive(ix->root, "metadata");
    if (meta && !cJSON_IsObject(meta) && !cJSON_IsNull(meta)) {
        qvl_errf(err, err_len, "%s: \"metadata\" is not an object", fname);
        s = QVL_E_FORMAT;
        goto fail;
    }
    const cJSON *wm = cJSON_GetObjectItemCaseSensitive(ix->root, "weight_map");
    if (!cJSON_IsObject(wm)) {
        qvl_errf(err, err_len, "%s: missing or non-object \"weight_map\"", fname);
        s = QVL_E_FORMAT;
        goto fail;
    }
    size_t n = 0;
    for (const cJSON *it = wm->child; it; it = it->next)
        n++;
    if (n == 0) {
        qvl_errf(err, err_len, "%s: \"weight_map\" is empty", fname);
        s = QVL_E_FORMAT;
        goto fail;
    }
    ix->tensor = qvl_malloc(n * sizeof *ix->tensor);
    ix->shard_of = qvl_malloc(n * sizeof *ix->shard_of);
    ix->shards = qvl_malloc(n * sizeof *ix->shards);
    sorted = qvl_malloc(n * sizeof *sorted);
    if (!ix->tensor || !ix->shard_of || !ix->shards || !sorted) {
        qvl_errf(err, err_len, "%s: out of memory", fname);
        s = QVL_E_NOMEM;
        goto fail;
    }
    for (const cJSON *it = wm->child; it; it = it->next) {
        const char *name = it->string ? it->string : "";
        if (!cJSON_IsString(it) || !it->valuestring) {
            qvl_errf(err, err_len, "%s: weight_map value of tensor %s is not a string", fname,
                     name);
            s = QVL_E_FORMAT;
            goto fail;
        }
        if (!plain_name(it->valuestring)) {
            qvl_errf(err, err_len,
                     "%s: tensor %s: shard name \"%.200s\" is not a plain file name in the "
                     "model directory",
                     fname, name, it->valuestring);
            s = QVL_E_FORMAT;
            goto fail;
        }
        ix->tensor[ix->n] = name;
        ix->shard_of[ix->n] = it->valuestring;
        ix->shards[ix->n] = it->valuestring;
        sorted[ix->n] = name;
        ix->n++;
    }
    qsort(sorted, n, sizeof *sorted, cmp_str);
    for (size_t i = 1; i < n; i++) {
        if (strcmp(sorted[i], sorted[i - 1]) == 0) {
            qvl_errf(err, err_len, "%s: weight_map lists tensor %s twice", fname, sorted[i]);
            s = QVL_E_FORMAT;
            goto fail;
        }
    }
    qsort(ix->shards, n, sizeof *ix->shards, cmp_str);
    size_t u = 0;
    for (size_t i = 0; i < n; i++)
        if (u == 0 || strcmp(ix->shards[u - 1], ix->shards[i]) != 0)
            ix->shards[u++] = ix->shards[i];
    ix->n_shards = u;
    qvl_free(sorted);
    return QVL_OK;
fail:
    qvl_free(sorted);
    index_free(ix);
    return s;
}

qvl_status qvl_st_parse_index(const char *json, size_t len, char *err, size_t err_len) {
    if (!json) {
        qvl_errf(err, err_len, "qvl_st_parse_index: NULL buffer");
        return QVL_E_INVAL;
    }
    st_index ix;
    qvl_status s = index_parse(json, len, MEM_NAME, &ix, err, err_len);
    if (s == QVL_OK)
        index_free(&ix);
    return s;
}

/* Load every shard of the index, then check the weight_map against what the shards hold. */
static qvl_status open_sharded(qvl_st *st, const char *dir, const char *ipath, char *err,
                               size_t err_len) {
    char *text = NULL;
    size_t len = 0;
    bool *listed = NULL;
    st_index ix;
    memset(&ix, 0, sizeof ix);
    qvl_status s = qvl_read_file(ipath, MAX_INDEX_BYTES, &text, &len, err, err_len);
    if (s != QVL_OK)
        return s;
    s = index_parse(text, len, ipath, &ix, err, err_len);
    qvl_free(text);
    if (s != QVL_OK)
        return s;
    for (size_t i = 0; i < ix.n_shards; i++) {
        char *path = qvl_path_join(dir, ix.shards[i]);
        if (!path) {
            qvl_errf(err, err_len, "%s: out of memory", ipath);
            s = QVL_E_NOMEM;
            goto out;
        }
        if (!qvl_file_exists(path)) {
            const char *example = "";
            for (size_t k = 0; k < ix.n; k++) {
                if (strcmp(ix.shard_of[k], ix.shards[i]) == 0) {
                    example = ix.tensor[k];
                    break;
                }
            }
            qvl_errf(err, err_len, "%s: shard file named in %s is missing (it holds %s)", path,
                     INDEX_NAME, example);
            qvl_free(path);
            s = QVL_E_IO;
            goto out;
        }
        int file = -1;
        s = map_file(st, path, &file, err, err_len);
        qvl_free(path);
        if (s == QVL_OK)
            s = parse_image(st, file, err, err_len);
        if (s != QVL_OK)
            goto out;
    }
    listed = qvl_calloc(st->n_tensors ? st->n_tensors : 1, sizeof *listed);
    if (!listed) {
        qvl_errf(err, err_len, "%s: out of memory", ipath);
        s = QVL_E_NOMEM;
        goto out;
    }
    for (size_t k = 0; k < ix.n; k++) {
        char *canon = qvl_st_normalize_name(ix.tensor[k]);
        if (!canon) {
            qvl_errf(err, err_len, "%s: out of memory", ipath);
            s = QVL_E_NOMEM;
            goto out;
        }
        size_t t = lookup(st, canon);
        const char **sh =
            bsearch(&ix.shard_of[k], ix.shards, ix.n_shards, sizeof *ix.shards, cmp_str);
        /* shard i of the sorted unique names was mapped as file i */
        bool ok = t != (size_t)-1 && sh && st->tensors[t].file == (int)(sh - ix.shards);
        if (!ok) {
            if (t == (size_t)-1)
                qvl_errf(err, err_len, "%s: tensor %s is mapped to %s, but that shard lacks it",
                         ipath, ix.tensor[k], ix.shard_of[k]);
            else
                qvl_errf(err, err_len, "%s: tensor %s is mapped to %s, but it is in %s", ipath,
                         ix.tensor[k], ix.shard_of[k], st->files[st->tensors[t].file].path);
            qvl_free(canon);
            s = QVL_E_FORMAT;
            goto out;
        }
        if (listed[t]) {
            qvl_errf(err, err_len, "%s: weight_map lists tensor %s twice (as %s)", ipath, canon,
                     ix.tensor[k]);
            qvl_free(canon);
            s = QVL_E_FORMAT;
            goto out;
        }
        listed[t] = true;
        qvl_free(canon);
    }
    if (qvl_log_enabled(QVL_LOG_DEBUG)) {
        for (size_t i = 0; i < st->n_tensors; i++)
            if (!listed[i])
                qvl_log(QVL_LOG_DEBUG, "%s: tensor %s is not in the weight_map of %s",
                        st->files[st->tensors[i].file].path, st->raw_names[i], ipath);
    }
out:
    qvl_free(listed);
    index_free(&ix);
    return s;
}

qvl_status qvl_st_open_dir(const char *dir, qvl_st **out, char *err, size_t err_len) {
    return qvl_st_open_dir_ex(dir, QVL_ST_MAP, NULL, out, err, err_len);
}

/* total bytes of the regular files named *.safetensors in dir (for progress only) */
static uint64_t dir_weight_bytes(const char *dir) {
    uint64_t t = 0;
    DIR *d = opendir(dir);
    if (!d)
        return 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        size_t l = strlen(e->d_name);
        if (l < 12 || strcmp(e->d_name + l - 12, ".safetensors"))
            continue;
        char *p = qvl_path_join(dir, e->d_name);
        struct stat sb;
        if (p && stat(p, &sb) == 0 && S_ISREG(sb.st_mode))
            t += (uint64_t)sb.st_size;
        qvl_free(p);
    }
    closedir(d);
    return t;
}

qvl_status qvl_st_open_dir_ex(const char *dir, qvl_st_mode mode, const qvl_st_progress *prog,
                              qvl_st **out, char *err, size_t err_len) {
    if (out)
        *out = NULL;
    if (!dir || !out) {
        qvl_errf(err, err_len, "qvl_st_open_dir: NULL argument");
        return QVL_E_INVAL;
    }
    char *ipath = qvl_path_join(dir, INDEX_NAME);
    char *spath = qvl_path_join(dir, SINGLE_NAME);
    qvl_st *st = st_new();
    qvl_status s;
    if (st) {
        st->mode = mode;
        if (prog) {
            st->prog = *prog;
            st->prog_total = dir_weight_bytes(dir);
        }
    }
    if (!ipath || !spath || !st) {
        qvl_errf(err, err_len, "%s: out of memory", dir);
        s = QVL_E_NOMEM;
        goto out;
    }
    if (qvl_file_exists(ipath)) {
        s = open_sharded(st, dir, ipath, err, err_len);
    } else if (qvl_file_exists(spath)) {
        int file = -1;
        s = map_file(st, spath, &file, err, err_len);
        if (s == QVL_OK)
            s = parse_image(st, file, err, err_len);
    } else {
        qvl_errf(err, err_len, "%s: no %s or %s in the directory", dir, INDEX_NAME, SINGLE_NAME);
        s = QVL_E_IO;
    }
out:
    qvl_free(ipath);
    qvl_free(spath);
    if (s != QVL_OK) {
        qvl_st_free(st);
        return s;
    }
    *out = st;
    return QVL_OK;
}

void qvl_st_release(qvl_st *st, const void *p, size_t n) {
    if (!st || !p || n == 0)
        return;
    uintptr_t a = (uintptr_t)p, e = a + n;
    bool ours = false;
    for (size_t i = 0; i < st->n_files; i++) {
        uintptr_t fa = (uintptr_t)st->files[i].map;
        if (a >= fa && e <= fa + st->files[i].size)
            ours = st->files[i].owned;
    }
    if (!ours)
        return;
    /* a copy's pages go back to the system (zeros if read again); a mapped file's pages leave
     * this process's resident set only (the page cache keeps them; read again, they map again) */
    uintptr_t pg = (uintptr_t)sysconf(_SC_PAGESIZE);
    uintptr_t a2 = (a + pg - 1) & ~(pg - 1), e2 = e & ~(pg - 1);
    if (e2 <= a2)
        return;
    madvise((void *)a2, e2 - a2, MADV_DONTNEED);
}

void qvl_st_residency(const qvl_st *st, uint64_t *copied, uint64_t *mapped) {
    uint64_t c = 0, m = 0;
    for (size_t i = 0; st && i < st->n_files; i++)
        *(st->files[i].copied ? &c : &m) += st->files[i].size;
    if (copied)
        *copied = c;
    if (mapped)
        *mapped = m;
}

bool qvl_st_file_copied(const qvl_st *st, int i) {
    return st && i >= 0 && (size_t)i < st->n_files && st->files[i].copied;
}

/* ---- accessors --------------------------------------------------------------------------- */

const qvl_st_tensor *qvl_st_find(const qvl_st *st, const char *canonical_name) {
    if (!st || !canonical_name)
        return NULL;
    size_t i = lookup(st, canonical_name);
    return i == (size_t)-1 ? NULL : &st->tensors[i];
}

size_t qvl_st_count(const qvl_st *st) {
    return st ? st->n_tensors : 0;
}

const qvl_st_tensor *qvl_st_at(const qvl_st *st, size_t i) {
    return st && i < st->n_tensors ? &st->tensors[i] : NULL;
}

size_t qvl_st_n_files(const qvl_st *st) {
    return st ? st->n_files : 0;
}

const char *qvl_st_file_name(const qvl_st *st, int i) {
    return st && i >= 0 && (size_t)i < st->n_files ? st->files[i].path : NULL;
}

uint64_t qvl_st_file_size(const qvl_st *st, int i) {
    return st && i >= 0 && (size_t)i < st->n_files ? (uint64_t)st->files[i].size : 0;
}

/* ---- writer ------------------------------------------------------------------------------ */

/* Growable text buffer; `failed` latches the first allocation failure. */
typedef struct sbuf {
    char *p;
    size_t n, cap;
    bool failed;
} sbuf;

static void sb_put(sbuf *b, const char *s, size_t n) {
    if (b->failed)
        return;
    if (b->n + n + 1 > b->cap) {
        size_t nc = b->cap ? b->cap : 256;
        while (nc < b->n + n + 1)
            nc *= 2;
        char *np = qvl_realloc(b->p, nc);
        if (!np) {
            b->failed = true;
            return;
        }
        b->p = np;
        b->cap = nc;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
}

static void sb_str(sbuf *b, const char *s) {
    sb_put(b, s, strlen(s));
}

static void sb_u64(sbuf *b, uint64_t v) {
    char tmp[32];
    int k = snprintf(tmp, sizeof tmp, "%llu", (unsigned long long)v);
    sb_put(b, tmp, (size_t)k);
}

/* JSON string literal with escapes. */
static void sb_json_str(sbuf *b, const char *s) {
    sb_put(b, "\"", 1);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') {
            char e[2] = {'\\', (char)c};
            sb_put(b, e, 2);
        } else if (c < 0x20) {
            char e[8];
            snprintf(e, sizeof e, "\\u%04x", c);
            sb_put(b, e, 6);
        } else {
            sb_put(b, (const char *)&c, 1);
        }
    }
    sb_put(b, "\"", 1);
}

struct qvl_st_writer {
    FILE *f;
    char *path;
    uint64_t total;   /* data bytes announced */
    uint64_t written; /* data bytes written so far */
    qvl_status status;
    char msg[256];
};

/* Names must be non-empty and unique; returns the index of an offending name or -1. */
static long bad_name(size_t n, const char *const *names, bool *dup) {
    *dup = false;
    for (size_t i = 0; i < n; i++)
        if (!names[i] || !names[i][0] || strcmp(names[i], "__metadata__") == 0)
            return (long)i;
    const char **s = qvl_malloc((n ? n : 1) * sizeof *s);
    if (!s)
        return -2;
    memcpy(s, names, n * sizeof *s);
    qsort(s, n, sizeof *s, cmp_str);
    long r = -1;
    for (size_t i = 1; i < n && r < 0; i++) {
        if (strcmp(s[i], s[i - 1]) == 0) {
            for (size_t k = 0; k < n; k++)
                if (names[k] == s[i] || strcmp(names[k], s[i]) == 0) {
                    r = (long)k;
                    break;
                }
            *dup = true;
        }
    }
    qvl_free(s);
    return r;
}

qvl_status qvl_st_writer_open(const char *path, size_t n_tensors, const char *const *names,
                              const qvl_dtype *dtypes, const int *n_dims,
                              const int64_t (*shapes)[QVL_ST_MAX_DIMS], const char *metadata_format,
                              qvl_st_writer **out, char *err, size_t err_len) {
    if (out)
        *out = NULL;
    if (!path || !out || (n_tensors && (!names || !dtypes || !n_dims || !shapes))) {
        qvl_errf(err, err_len, "qvl_st_writer_open: NULL argument");
        return QVL_E_INVAL;
    }
    bool dup;
    long bad = bad_name(n_tensors, names, &dup);
    if (bad == -2) {
        qvl_errf(err, err_len, "%s: out of memory", path);
        return QVL_E_NOMEM;
    }
    if (bad >= 0) {
        qvl_errf(err, err_len, "%s: tensor #%ld: %s name \"%s\"", path, bad,
                 dup ? "duplicate" : "empty or reserved", names[bad] ? names[bad] : "(null)");
        return QVL_E_INVAL;
    }
    sbuf b = {0};
    qvl_status s = QVL_OK;
    qvl_st_writer *w = NULL;
    sb_str(&b, "{");
    if (metadata_format) {
        sb_str(&b, "\"__metadata__\":{\"format\":");
        sb_json_str(&b, metadata_format);
        sb_str(&b, "}");
    }
    uint64_t off = 0;
    for (size_t i = 0; i < n_tensors; i++) {
        const dt_info *dt = dtype_by_enum(dtypes[i]);
        if (!dt) {
            qvl_errf(err, err_len, "%s: tensor %s: dtype %s cannot be stored in safetensors", path,
                     names[i], qvl_dtype_name(dtypes[i]));
            s = QVL_E_INVAL;
            goto fail;
        }
        if (n_dims[i] < 0 || n_dims[i] > QVL_ST_MAX_DIMS) {
            qvl_errf(err, err_len, "%s: tensor %s: %d dimensions", path, names[i], n_dims[i]);
            s = QVL_E_INVAL;
            goto fail;
        }
        uint64_t count = 1;
        bool ovf = false;
        for (int d = 0; d < n_dims[i]; d++) {
            if (shapes[i][d] < 0) {
                qvl_errf(err, err_len, "%s: tensor %s: negative dimension", path, names[i]);
                s = QVL_E_INVAL;
                goto fail;
            }
            ovf |= __builtin_mul_overflow(count, (uint64_t)shapes[i][d], &count);
        }
        uint64_t nb = 0;
        uint64_t end = 0;
        ovf |= __builtin_mul_overflow(count, (uint64_t)dt->size, &nb);
        ovf |= __builtin_add_overflow(off, nb, &end);
        if (ovf || end >= (uint64_t)MAX_JSON_INT) {
            qvl_errf(err, err_len, "%s: tensor %s: size too large", path, names[i]);
            s = QVL_E_INVAL;
            goto fail;
        }
        if (i || metadata_format)
            sb_str(&b, ",");
        sb_json_str(&b, names[i]);
        sb_str(&b, ":{\"dtype\":\"");
        sb_str(&b, dt->name);
        sb_str(&b, "\",\"shape\":[");
        for (int d = 0; d < n_dims[i]; d++) {
            if (d)
                sb_str(&b, ",");
            sb_u64(&b, (uint64_t)shapes[i][d]);
        }
        sb_str(&b, "],\"data_offsets\":[");
        sb_u64(&b, off);
        sb_str(&b, ",");
        sb_u64(&b, end);
        sb_str(&b, "]}");
        off = end;
    }
    sb_str(&b, "}");
    while (!b.failed && b.n % 8)
        sb_str(&b, " ");
    if (b.failed) {
        qvl_errf(err, err_len, "%s: out of memory building the header", path);
        s = QVL_E_NOMEM;
        goto fail;
    }
    w = qvl_calloc(1, sizeof *w);
    if (!w || !(w->path = qvl_strdup(path))) {
        qvl_errf(err, err_len, "%s: out of memory", path);
        s = QVL_E_NOMEM;
        goto fail;
    }
    w->total = off;
    w->f = fopen(path, "wb");
    if (!w->f) {
        qvl_errf(err, err_len, "%s: cannot create: %s", path, strerror(errno));
        s = QVL_E_IO;
        goto fail;
    }
    uint8_t len8[8];
    for (int i = 0; i < 8; i++)
        len8[i] = (uint8_t)((uint64_t)b.n >> (8 * i));
    if (fwrite(len8, 1, 8, w->f) != 8 || fwrite(b.p, 1, b.n, w->f) != b.n) {
        qvl_errf(err, err_len, "%s: write failed: %s", path, strerror(errno));
        s = QVL_E_IO;
        fclose(w->f);
        w->f = NULL;
        remove(path);
        goto fail;
    }
    qvl_free(b.p);
    *out = w;
    return QVL_OK;
fail:
    if (w) {
        if (w->f)
            fclose(w->f);
        qvl_free(w->path);
        qvl_free(w);
    }
    qvl_free(b.p);
    return s;
}

qvl_status qvl_st_writer_write(qvl_st_writer *w, const void *data, size_t nbytes) {
    if (!w)
        return QVL_E_INVAL;
    if (w->status != QVL_OK)
        return w->status;
    if (nbytes == 0)
        return QVL_OK;
    if (!data || nbytes > w->total - w->written) {
        w->status = QVL_E_INVAL;
        snprintf(w->msg, sizeof w->msg, "%s: %s (%llu of %llu bytes written, %zu more given)",
                 w->path, data ? "more tensor data than the header announced" : "NULL data",
                 (unsigned long long)w->written, (unsigned long long)w->total, nbytes);
        return w->status;
    }
    if (fwrite(data, 1, nbytes, w->f) != nbytes) {
        w->status = QVL_E_IO;
        snprintf(w->msg, sizeof w->msg, "%s: write failed: %s", w->path, strerror(errno));
        return w->status;
    }
    w->written += nbytes;
    return QVL_OK;
}

qvl_status qvl_st_writer_close(qvl_st_writer *w, char *err, size_t err_len) {
    if (!w)
        return QVL_OK;
    qvl_status s = w->status;
    if (s != QVL_OK) {
        qvl_errf(err, err_len, "%s", w->msg);
    } else if (w->written != w->total) {
        qvl_errf(err, err_len, "%s: only %llu of %llu tensor data bytes were written", w->path,
                 (unsigned long long)w->written, (unsigned long long)w->total);
        s = QVL_E_FORMAT;
    }
    if (fclose(w->f) != 0 && s == QVL_OK) {
        qvl_errf(err, err_len, "%s: write failed: %s", w->path, strerror(errno));
        s = QVL_E_IO;
    }
    if (s != QVL_OK)
        remove(w->path); /* never leave a half-written file that looks like a model */
    qvl_free(w->path);
    qvl_free(w);
    return s;
}

typedef struct idx_pair {
    const char *name;
    const char *file;
} idx_pair;

static int cmp_pair(const void *a, const void *b) {
    return strcmp(((const idx_pair *)a)->name, ((const idx_pair *)b)->name);
}

qvl_status qvl_st_write_index(const char *path, size_t n, const char *const *names,
                              const char *const *files, uint64_t total_size, char *err,
                              size_t err_len) {
    if (!path || (n && (!names || !files))) {
        qvl_errf(err, err_len, "qvl_st_write_index: NULL argument");
        return QVL_E_INVAL;
    }
    for (size_t i = 0; i < n; i++) {
        if (!names[i] || !files[i] || !plain_name(files[i])) {
            qvl_errf(err, err_len, "%s: entry %zu: missing name or non-plain shard name", path, i);
            return QVL_E_INVAL;
        }
    }
    idx_pair *pairs = qvl_malloc((n ? n : 1) * sizeof *pairs);
    if (!pairs) {
        qvl_errf(err, err_len, "%s: out of memory", path);
        return QVL_E_NOMEM;
    }
    for (size_t i = 0; i < n; i++) {
        pairs[i].name = names[i];
        pairs[i].file = files[i];
    }
    qsort(pairs, n, sizeof *pairs, cmp_pair);
    for (size_t i = 1; i < n; i++) {
        if (strcmp(pairs[i].name, pairs[i - 1].name) == 0) {
            qvl_errf(err, err_len, "%s: tensor %s listed twice", path, pairs[i].name);
            qvl_free(pairs);
            return QVL_E_INVAL;
        }
    }
    sbuf b = {0};
    sb_str(&b, "{\n  \"metadata\": {\n    \"total_size\": ");
    sb_u64(&b, total_size);
    sb_str(&b, "\n  },\n  \"weight_map\": {");
    for (size_t i = 0; i < n; i++) {
        sb_str(&b, i ? ",\n    " : "\n    ");
        sb_json_str(&b, pairs[i].name);
        sb_str(&b, ": ");
        sb_json_str(&b, pairs[i].file);
    }
    sb_str(&b, "\n  }\n}\n");
    qvl_free(pairs);
    if (b.failed) {
        qvl_free(b.p);
        qvl_errf(err, err_len, "%s: out of memory", path);
        return QVL_E_NOMEM;
    }
    qvl_status s = QVL_OK;
    FILE *f = fopen(path, "wb");
    if (!f) {
        qvl_errf(err, err_len, "%s: cannot create: %s", path, strerror(errno));
        s = QVL_E_IO;
    } else {
        bool ok = fwrite(b.p, 1, b.n, f) == b.n;
        ok = (fclose(f) == 0) && ok;
        if (!ok) {
            qvl_errf(err, err_len, "%s: write failed: %s", path, strerror(errno));
            remove(path);
            s = QVL_E_IO;
        }
    }
    qvl_free(b.p);
    return s;
}
