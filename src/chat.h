/* chat.h - native renderer of the Qwen3-VL chat template (spec section 9) and image/video pad
 * expansion of tokenised prompts. */
#ifndef QVL_CHAT_H
#define QVL_CHAT_H

#include "common.h"

/* qvl_chat_render and its message types are public (qvl.h). */

/* Replace the i-th occurrence of pad_id in ids by counts[i] copies. *out is a heap array of
 * *out_n ids released with qvl_free(). QVL_E_INVAL when the number of pad ids differs from
 * n_counts, QVL_E_LIMIT on size overflow. */
qvl_status qvl_chat_expand_pads(const int32_t *ids, size_t n, int32_t pad_id, const size_t *counts,
                                size_t n_counts, int32_t **out, size_t *out_n, char *err,
                                size_t err_len);

#endif /* QVL_CHAT_H */
