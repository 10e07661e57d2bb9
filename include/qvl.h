/* qvl.h - public API of libqvl, a C11 inference engine for Qwen3-VL.
 *
 * Conventions: fallible functions return qvl_status; results go through out-parameters that are
 * set to NULL on failure. Constructors take an optional caller buffer for the error message.
 * Objects returned by *_load / *_create are released by the matching *_free (NULL is a no-op).
 * Heap strings returned by the library are released with qvl_free(). The library never prints
 * to stdout and never exits the process because of bad input.
 */
#ifndef QVL_H
#define QVL_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#    define QVL_API __attribute__((visibility("default")))
#else
#    define QVL_API
#endif

typedef enum qvl_status {
    QVL_OK = 0,
    QVL_E_INVAL,       /* bad argument or malformed input */
    QVL_E_NOMEM,       /* allocation failed */
    QVL_E_IO,          /* file missing or unreadable */
    QVL_E_FORMAT,      /* file or data in a wrong or corrupt format */
    QVL_E_UNSUPPORTED, /* valid but not supported (dtype, architecture, image type) */
    QVL_E_LIMIT,       /* a configured limit was exceeded (context, image size, ...) */
    QVL_E_CANCELLED,   /* a callback asked to stop */
    QVL_E_INTERNAL,    /* a bug in qvl */
} qvl_status;

/* Static text for a status code. */
QVL_API const char *qvl_status_str(qvl_status s);

/* Release memory returned by the library (strings, arrays). NULL is a no-op. */
QVL_API void qvl_free(void *p);

/* ---- logging --------------------------------------------------------- */
typedef enum qvl_log_level {
    QVL_LOG_ERROR = 0,
    QVL_LOG_WARN = 1,
    QVL_LOG_INFO = 2,
    QVL_LOG_DEBUG = 3,
} qvl_log_level;
typedef void (*qvl_log_fn)(qvl_log_level level, const char *msg, void *user);
/* Install a log sink (NULL: quiet, the default). Messages above max_level are dropped. */
QVL_API void qvl_log_set(qvl_log_fn fn, void *user, qvl_log_level max_level);

/* ---- model ------------------------------------------------------------ */
typedef struct qvl_model qvl_model; /* weights + tokenizer + configs; read-only after load */

typedef struct qvl_model_params {
    int check_only; /* non-zero: validate files and shapes, do not keep mappings (info) */
    int reserved[7];
} qvl_model_params;

QVL_API qvl_model_params qvl_model_default_params(void);

/* Load a Hugging Face Qwen3-VL model directory (config.json, safetensors, tokenizer.json,
 * preprocessor/generation configs, chat template). `dir` may also be a hub repo id
 * ("Qwen/Qwen3-VL-2B-Instruct") found in the local Hugging Face cache. On failure *out is NULL
 * and err (if given) holds a message naming the file and tensor at fault. */
QVL_API qvl_status qvl_model_load(const char *dir, const qvl_model_params *p, qvl_model **out,
                                  char *err, size_t err_len);
QVL_API void qvl_model_free(qvl_model *m);

/* A JSON description of the loaded model (architecture, parameter counts, dtypes, files, token
 * ids). Returns a heap string to release with qvl_free(), or NULL when out of memory. */
QVL_API char *qvl_model_info_json(const qvl_model *m);

/* Resolve a model argument: an existing directory is returned as is; "ORG/NAME" is looked up in
 * $HF_HOME/hub or ~/.cache/huggingface/hub (newest snapshot). *out is a heap string. */
QVL_API qvl_status qvl_model_resolve(const char *arg, char **out, char *err, size_t err_len);

/* ---- tokenizer -------------------------------------------------------- */
/* Tokenize UTF-8 text (special tokens in the text are recognised). *ids is a heap array of *n
 * ids to release with qvl_free(). */
QVL_API qvl_status qvl_tokenize(const qvl_model *m, const char *text, size_t len, int32_t **ids,
                                size_t *n);
/* Decode ids to UTF-8 text (invalid sequences replaced by U+FFFD). skip_special drops special
 * added tokens. *text is a heap string to release with qvl_free(). */
QVL_API qvl_status qvl_detokenize(const qvl_model *m, const int32_t *ids, size_t n,
                                  int skip_special, char **text);

#ifdef __cplusplus
}
#endif
#endif /* QVL_H */
