/* chat.h - native renderer of the Qwen3-VL chat template (spec section 9) and image/video pad
 * expansion of tokenised prompts. */
#ifndef QVL_CHAT_H
#define QVL_CHAT_H

#include "common.h"

typedef enum { QVL_PART_TEXT, QVL_PART_IMAGE, QVL_PART_VIDEO } qvl_part_type;

typedef struct {
    qvl_part_type type;
    const char *text; /* QVL_PART_TEXT only */
} qvl_chat_part;

typedef struct {
    const char *role;            /* "system", "user", "assistant" or "tool" */
    const char *content;         /* used when parts == NULL (NULL: empty) */
    const qvl_chat_part *parts;  /* list content */
    size_t n_parts;
} qvl_chat_msg;

/* Render messages exactly as the Qwen3-VL Jinja chat template does (no tools). *out is a heap
 * string released with qvl_free(). Unknown role or a NULL text part: QVL_E_INVAL. */
qvl_status qvl_chat_render(const qvl_chat_msg *msgs, size_t n, bool add_generation_prompt,
                           bool add_vision_id, char **out, char *err, size_t err_len);

/* Replace the i-th occurrence of pad_id in ids by counts[i] copies. *out is a heap array of
 * *out_n ids released with qvl_free(). QVL_E_INVAL when the number of pad ids differs from
 * n_counts, QVL_E_LIMIT on size overflow. */
qvl_status qvl_chat_expand_pads(const int32_t *ids, size_t n, int32_t pad_id, const size_t *counts,
                                size_t n_counts, int32_t **out, size_t *out_n, char *err,
                                size_t err_len);

#endif /* QVL_CHAT_H */
