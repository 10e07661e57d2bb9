/* qcache.h - the quantised-weights cache: the matrices --quant makes at load time, kept in one
 * file so that later loads map them instead of quantising again.
 *
 * File layout (integers little-endian u64):
 *   "QVLQCACH", version, n_matrices, fingerprint_len, data_offset, file_size
 *   fingerprint text (fingerprint_len bytes: what the matrices were made from, see below)
 *   n_matrices x {dtype, rows, cols, offset, nbytes}
 *   zero padding to data_offset (a multiple of 4096), then the matrices, each at an offset that
 *   is a multiple of 4096, in the order the loader lists them.
 * The fingerprint names the format and the interleaved layout version, the quantisation, and
 * the size, modification time and inode of config.json and of every shard, so that a changed
 * checkpoint or an older qvl's file is never used: a mismatch is QVL_E_FORMAT and the caller
 * quantises again and rewrites the file. */
#ifndef QVL_QCACHE_H
#define QVL_QCACHE_H

#include "st.h"

typedef struct qvl_qcache_mat {
    qvl_dtype dt;
    int64_t rows, cols;
    const void *data; /* write: the bytes; load: set to point into the mapped file */
} qvl_qcache_mat;

/* The default cache directory is qvl_default_cache_dir() (qvl.h). */

/* <cache_dir>/<model dir name>-<16 hex digits of its real path's hash>-<tag>.qvlq, heap. */
char *qvl_qcache_path(const char *cache_dir, const char *model_dir, const char *tag);

/* The fingerprint of the checkpoint opened as st from model_dir, for tag (e.g. "q4"); heap
 * text, or NULL when a file cannot be examined or out of memory. */
char *qvl_qcache_fingerprint(const qvl_st *st, const char *model_dir, const char *tag);

/* Map the cache file (mode as for shards) and check it against fp and the n expected matrices
 * (dt, rows, cols); on success mats[i].data point into *map, released with
 * qvl_st_unmap_whole(*map, *size). QVL_E_IO: no such file or unreadable; QVL_E_FORMAT: stale,
 * truncated or corrupt (err says which). */
qvl_status qvl_qcache_load(const char *path, qvl_st_mode mode, const char *fp, size_t n,
                           qvl_qcache_mat *mats, const uint8_t **map, size_t *size, bool *copied,
                           char *err, size_t err_len);

/* The checks qvl_qcache_load makes on the first hlen bytes of a file of fsize bytes (name is
 * for messages): on success mats[i].data hold the matrices' file offsets. Bytes needed:
 * qvl_qcache_header_bytes(fp, n). QVL_E_FORMAT with a message otherwise. For the fuzzer too. */
size_t qvl_qcache_header_bytes(const char *fp, size_t n);
qvl_status qvl_qcache_check(const uint8_t *h, size_t hlen, uint64_t fsize, const char *fp,
                            size_t n, qvl_qcache_mat *mats, const char *name, char *err,
                            size_t err_len);

/* Write the cache file atomically (a temporary file renamed over path, directories made as
 * needed), flushed to disk and dropped from the page cache so that the next load reads it into
 * huge pages. */
qvl_status qvl_qcache_write(const char *path, const char *fp, size_t n,
                            const qvl_qcache_mat *mats, char *err, size_t err_len);

#endif /* QVL_QCACHE_H */
