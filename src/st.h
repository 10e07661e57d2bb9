/* st.h - safetensors reader (single file or sharded model directory, every shard mmap'd
 * read-only, full header validation, tensor names normalised to the canonical Qwen3-VL layout:
 * "model.visual.*", "model.language_model.*", "lm_head.weight") and a small streaming writer
 * used by tests and the random-model generator. */
#ifndef QVL_ST_H
#define QVL_ST_H

#include "common.h"
#include "dtype.h"

#define QVL_ST_MAX_DIMS   8
#define QVL_ST_MAX_HEADER (100u * 1000u * 1000u) /* bytes of header JSON accepted */

typedef struct qvl_st_tensor {
    const char *name; /* canonical name (owned by the qvl_st) */
    qvl_dtype dtype;
    int n_dims;
    int64_t shape[QVL_ST_MAX_DIMS]; /* unused dims are 0 */
    const void *data;               /* points into the read-only mapping of the shard */
    size_t nbytes;
    int file; /* shard index, see qvl_st_file_name() */
} qvl_st_tensor;

typedef struct qvl_st qvl_st;

/* Open a model directory: model.safetensors.index.json if present (every shard it names must
 * exist, be a plain file name inside `dir`, and hold the tensors mapped to it), else
 * model.safetensors. On failure *out is NULL and err names the file (and tensor) at fault.
 * Errors: QVL_E_IO (missing/unreadable file), QVL_E_FORMAT (bad header, index or data),
 * QVL_E_LIMIT (header over QVL_ST_MAX_HEADER), QVL_E_NOMEM, QVL_E_INVAL (NULL arguments). */
qvl_status qvl_st_open_dir(const char *dir, qvl_st **out, char *err, size_t err_len);

/* How qvl_st_open_dir_ex brings the shards into memory. MAP: mapped read-only in place, at
 * 2 MiB-aligned addresses with transparent huge pages requested, and faulted in (the kernel then
 * maps 2 MiB page-cache folios whole where it has them: it makes them when it reads a file
 * through such a mapping, i.e. when the file was not cached). COPY: read into anonymous memory
 * (huge pages requested), one private copy. AUTO: MAP for shards that end up mapped at least
 * 90 % through 2 MiB entries (and shards under 64 MiB, and all when the system has huge pages
 * off); a shard partly in 2 MiB folios (so the file system makes them) but mostly in small ones
 * is dropped from the page cache and read again through the mapping, once (a re-read that
 * leaves it mostly in small pages is not repeated for a day: a marker in qvl's cache directory,
 * qvl_default_cache_dir(), keyed by the file's device, inode, size and mtime); COPY for the rest:
 * streaming weights through 4 KiB pages runs at about half speed on this project's virtual
 * machines. */
typedef enum qvl_st_mode {
    QVL_ST_MAP = 0,
    QVL_ST_COPY = 1,
    QVL_ST_AUTO = 2,
    QVL_ST_MAP_LAZY = 3, /* as MAP, but pages fault in when first read; a file that cannot be
                            mapped is read into memory (as AUTO does) */
} qvl_st_mode;
typedef struct qvl_st_progress {
    int (*fn)(void *user, uint64_t done, uint64_t total); /* non-zero: cancel */
    void *user;
} qvl_st_progress;
/* As qvl_st_open_dir, in the given mode; prog (optional) sees the bytes read or faulted in. */
qvl_status qvl_st_open_dir_ex(const char *dir, qvl_st_mode mode, const qvl_st_progress *prog,
                              qvl_st **out, char *err, size_t err_len);
/* Bring one whole file into memory as a shard would be in `mode`; *copied says whether it is a
 * private copy. Release with qvl_st_unmap_whole. Errors: QVL_E_IO, QVL_E_NOMEM. */
qvl_status qvl_st_map_whole(const char *path, qvl_st_mode mode, const uint8_t **map,
                            size_t *size, bool *copied, char *err, size_t err_len);
void qvl_st_unmap_whole(const uint8_t *map, size_t size);
/* Tests only: replace the probe of how many bytes of a fresh mapping the kernel maps through
 * 2 MiB entries (FilePmdMapped in /proc/self/smaps); NULL restores it. */
void qvl_st_set_pmd_probe(size_t (*fn)(const void *addr, size_t size));
/* Tests: while on, every file mapping fails (ENODEV, as on a file system that cannot map). */
void qvl_st_set_mmap_fail(int on);
/* Bytes of the shards held as copies (COPY, or AUTO's fallback) and in place. */
void qvl_st_residency(const qvl_st *st, uint64_t *copied, uint64_t *mapped);
bool qvl_st_file_copied(const qvl_st *st, int i);
/* Open one .safetensors file (mode MAP). Same errors as qvl_st_open_dir. */
qvl_status qvl_st_open_file(const char *path, qvl_st **out, char *err, size_t err_len);

/* Parse and validate an in-memory safetensors file image (header + data) without keeping
 * anything; used by the fuzzer. Same errors as qvl_st_open_file (file name shown as
 * "<memory>"). */
qvl_status qvl_st_parse_header(const uint8_t *buf, size_t len, char *err, size_t err_len);

/* Parse and validate an index.json text (length `len`, need not be NUL-terminated): a
 * "weight_map" object of tensor -> plain shard file name. Used by the fuzzer; opening a
 * directory runs the same checks. */
qvl_status qvl_st_parse_index(const char *json, size_t len, char *err, size_t err_len);

/* Unmap every shard and free. NULL is a no-op. */
void qvl_st_free(qvl_st *st);
/* The caller no longer needs bytes [p, p + n) of a tensor (e.g. it made a quantised copy): the
 * whole pages inside the range leave the process's memory. In a copied shard reading them later
 * gives zeros; in a mapped shard they map again from the page cache. */
void qvl_st_release(qvl_st *st, const void *p, size_t n);

/* Tensor by canonical name, or NULL. O(1) on average. */
const qvl_st_tensor *qvl_st_find(const qvl_st *st, const char *canonical_name);

/* Tensors in load order (shard order, then offset order within a shard). */
size_t qvl_st_count(const qvl_st *st);
const qvl_st_tensor *qvl_st_at(const qvl_st *st, size_t i);

/* Shards: file path as opened (dir joined with the shard name) and its size in bytes. */
size_t qvl_st_n_files(const qvl_st *st);
const char *qvl_st_file_name(const qvl_st *st, int i);
uint64_t qvl_st_file_size(const qvl_st *st, int i);

/* Canonical form of a raw checkpoint key (spec 2.2) as a heap string (qvl_free), or NULL when
 * out of memory. */
char *qvl_st_normalize_name(const char *raw);

/* ---- writer ------------------------------------------------------------------------------ */

typedef struct qvl_st_writer qvl_st_writer;

/* Create `path` and write the header for n_tensors tensors, stored in the given order with no
 * gaps. Names are written as given (no normalisation). The header JSON is padded with spaces
 * to a multiple of 8 bytes. metadata_format (e.g. "pt") becomes __metadata__.format; NULL:
 * no __metadata__. All arrays are borrowed for the call. Errors: QVL_E_INVAL (bad dims,
 * dtype, empty or duplicate name), QVL_E_IO, QVL_E_NOMEM. */
qvl_status qvl_st_writer_open(const char *path, size_t n_tensors, const char *const *names,
                              const qvl_dtype *dtypes, const int *n_dims,
                              const int64_t (*shapes)[QVL_ST_MAX_DIMS], const char *metadata_format,
                              qvl_st_writer **out, char *err, size_t err_len);

/* Append tensor bytes in order (chunks may span tensor boundaries). Writing more than the
 * header announced is QVL_E_INVAL; a write error is QVL_E_IO. After an error the writer only
 * accepts close. */
qvl_status qvl_st_writer_write(qvl_st_writer *w, const void *data, size_t nbytes);

/* Flush and close; fails (QVL_E_FORMAT) when fewer bytes were written than announced, or with
 * the first error of an earlier write. Always frees w (NULL is a no-op returning QVL_OK). */
qvl_status qvl_st_writer_close(qvl_st_writer *w, char *err, size_t err_len);

/* Write a model.safetensors.index.json: {"metadata": {"total_size": total_size},
 * "weight_map": {names[i]: files[i]}} with keys sorted. Errors: QVL_E_IO, QVL_E_NOMEM. */
qvl_status qvl_st_write_index(const char *path, size_t n, const char *const *names,
                              const char *const *files, uint64_t total_size, char *err,
                              size_t err_len);

#endif /* QVL_ST_H */
