/* chat.c - native renderer of the Qwen3-VL chat template (spec section 9; the Jinja text is in
 * the model's chat_template.json) and expansion of image/video pad ids after tokenisation.
 *
 * What the template does, and this file replicates (tools are not offered):
 *   - messages[0] with role "system" becomes "<|im_start|>system\n{text parts}<|im_end|>\n";
 *     a system message anywhere else matches no branch of the loop and is dropped silently;
 *   - user: "<|im_start|>user\n" + content + "<|im_end|>\n", where list content renders images as
 *     "<|vision_start|><|image_pad|><|vision_end|>" and videos with <|video_pad|>, each preceded
 *     by "Picture N: " / "Video N: " when add_vision_id (N counts over the whole conversation),
 *     and text verbatim, with no separators;
 *   - assistant: "<|im_start|>assistant\n" + text parts + "<|im_end|>\n";
 *   - tool: consecutive tool messages share one "<|im_start|>user" turn, each wrapped in
 *     "\n<tool_response>\n...\n</tool_response>", the run closed by "<|im_end|>\n";
 *   - add_generation_prompt appends "<|im_start|>assistant\n". */
#include "chat.h"

#include <stdio.h>
#include <string.h>

typedef enum { ROLE_SYSTEM, ROLE_USER, ROLE_ASSISTANT, ROLE_TOOL, ROLE_BAD } role_t;

static role_t role_of(const char *r) {
    if (!r)
        return ROLE_BAD;
    if (strcmp(r, "system") == 0)
        return ROLE_SYSTEM;
    if (strcmp(r, "user") == 0)
        return ROLE_USER;
    if (strcmp(r, "assistant") == 0)
        return ROLE_ASSISTANT;
    if (strcmp(r, "tool") == 0)
        return ROLE_TOOL;
    return ROLE_BAD;
}

/* Text-only content (system, assistant): string content, or the text parts concatenated. */
static void render_text_only(qvl_sbuf *b, const qvl_chat_msg *m) {
    if (!m->parts) {
        if (m->content)
            qvl_sbuf_str(b, m->content);
        return;
    }
    for (size_t i = 0; i < m->n_parts; i++)
        if (m->parts[i].type == QVL_PART_TEXT)
            qvl_sbuf_str(b, m->parts[i].text);
}

/* Full content (user, tool): text, images and videos in order. */
static void render_content(qvl_sbuf *b, const qvl_chat_msg *m, bool add_vision_id, size_t *n_image,
                           size_t *n_video) {
    if (!m->parts) {
        if (m->content)
            qvl_sbuf_str(b, m->content);
        return;
    }
    char label[48];
    for (size_t i = 0; i < m->n_parts; i++) {
        const qvl_chat_part *p = &m->parts[i];
        if (p->type == QVL_PART_IMAGE) {
            ++*n_image;
            if (add_vision_id) {
                snprintf(label, sizeof label, "Picture %zu: ", *n_image);
                qvl_sbuf_str(b, label);
            }
            qvl_sbuf_str(b, "<|vision_start|><|image_pad|><|vision_end|>");
        } else if (p->type == QVL_PART_VIDEO) {
            ++*n_video;
            if (add_vision_id) {
                snprintf(label, sizeof label, "Video %zu: ", *n_video);
                qvl_sbuf_str(b, label);
            }
            qvl_sbuf_str(b, "<|vision_start|><|video_pad|><|vision_end|>");
        } else {
            qvl_sbuf_str(b, p->text);
        }
    }
}

qvl_status qvl_chat_render(const qvl_chat_msg *msgs, size_t n, int add_generation_prompt,
                           int add_vision_id, char **out, char *err, size_t err_len) {
    if (!out) {
        qvl_errf(err, err_len, "chat: NULL output");
        return QVL_E_INVAL;
    }
    *out = NULL;
    if (!msgs && n) {
        qvl_errf(err, err_len, "chat: no messages");
        return QVL_E_INVAL;
    }
    for (size_t i = 0; i < n; i++) { /* validate everything before rendering */
        if (role_of(msgs[i].role) == ROLE_BAD) {
            qvl_errf(err, err_len, "chat: message %zu has unknown role \"%.40s\"", i,
                     msgs[i].role ? msgs[i].role : "(null)");
            return QVL_E_INVAL;
        }
        if (msgs[i].parts == NULL && msgs[i].n_parts) {
            qvl_errf(err, err_len, "chat: message %zu has n_parts %zu but no parts", i,
                     msgs[i].n_parts);
            return QVL_E_INVAL;
        }
        for (size_t k = 0; msgs[i].parts && k < msgs[i].n_parts; k++) {
            const qvl_chat_part *p = &msgs[i].parts[k];
            if (p->type != QVL_PART_TEXT && p->type != QVL_PART_IMAGE &&
                p->type != QVL_PART_VIDEO) {
                qvl_errf(err, err_len, "chat: message %zu part %zu has an unknown type %d", i, k,
                         (int)p->type);
                return QVL_E_INVAL;
            }
            if (p->type == QVL_PART_TEXT && !p->text) {
                qvl_errf(err, err_len, "chat: message %zu part %zu is text without text", i, k);
                return QVL_E_INVAL;
            }
        }
    }
    qvl_sbuf b = {0};
    qvl_sbuf_add(&b, "", 0); /* an empty conversation still yields "" */
    if (n > 0 && role_of(msgs[0].role) == ROLE_SYSTEM) {
        qvl_sbuf_str(&b, "<|im_start|>system\n");
        render_text_only(&b, &msgs[0]);
        qvl_sbuf_str(&b, "<|im_end|>\n");
    }
    size_t n_image = 0;
    size_t n_video = 0;
    for (size_t i = 0; i < n; i++) {
        const qvl_chat_msg *m = &msgs[i];
        switch (role_of(m->role)) {
        case ROLE_USER:
            qvl_sbuf_str(&b, "<|im_start|>user\n");
            render_content(&b, m, add_vision_id, &n_image, &n_video);
            qvl_sbuf_str(&b, "<|im_end|>\n");
            break;
        case ROLE_ASSISTANT:
            qvl_sbuf_str(&b, "<|im_start|>assistant\n");
            render_text_only(&b, m);
            qvl_sbuf_str(&b, "<|im_end|>\n");
            break;
        case ROLE_TOOL:
            if (i == 0 || role_of(msgs[i - 1].role) != ROLE_TOOL)
                qvl_sbuf_str(&b, "<|im_start|>user");
            qvl_sbuf_str(&b, "\n<tool_response>\n");
            render_content(&b, m, add_vision_id, &n_image, &n_video);
            qvl_sbuf_str(&b, "\n</tool_response>");
            if (i + 1 == n || role_of(msgs[i + 1].role) != ROLE_TOOL)
                qvl_sbuf_str(&b, "<|im_end|>\n");
            break;
        default: /* system: only messages[0] is rendered, above; the template skips others */
            break;
        }
    }
    if (add_generation_prompt)
        qvl_sbuf_str(&b, "<|im_start|>assistant\n");
    if (b.oom) {
        qvl_free(b.p);
        qvl_errf(err, err_len, "chat: out of memory rendering the prompt");
        return QVL_E_NOMEM;
    }
    *out = b.p;
    return QVL_OK;
}

qvl_status qvl_chat_expand_pads(const int32_t *ids, size_t n, int32_t pad_id, const size_t *counts,
                                size_t n_counts, int32_t **out, size_t *out_n, char *err,
                                size_t err_len) {
    *out = NULL;
    *out_n = 0;
    if ((!ids && n) || (!counts && n_counts)) {
        qvl_errf(err, err_len, "expand pads: missing ids or counts");
        return QVL_E_INVAL;
    }
    size_t n_pads = 0;
    for (size_t i = 0; i < n; i++)
        n_pads += ids[i] == pad_id;
    if (n_pads != n_counts) {
        qvl_errf(err, err_len,
                 "expand pads: the prompt has %zu pad tokens (id %d) but %zu counts were given",
                 n_pads, (int)pad_id, n_counts);
        return QVL_E_INVAL;
    }
    size_t total = n - n_pads;
    for (size_t i = 0; i < n_counts; i++) {
        if (!qvl_size_add(total, counts[i], &total)) {
            qvl_errf(err, err_len, "expand pads: total length overflows");
            return QVL_E_LIMIT;
        }
    }
    size_t bytes;
    if (!qvl_size_mul(total, sizeof(int32_t), &bytes)) {
        qvl_errf(err, err_len, "expand pads: %zu ids do not fit in memory", total);
        return QVL_E_LIMIT;
    }
    int32_t *o = qvl_malloc(bytes);
    if (!o) {
        qvl_errf(err, err_len, "expand pads: out of memory for %zu ids", total);
        return QVL_E_NOMEM;
    }
    size_t k = 0;
    size_t c = 0;
    for (size_t i = 0; i < n; i++) {
        if (ids[i] != pad_id) {
            o[k++] = ids[i];
            continue;
        }
        for (size_t j = 0; j < counts[c]; j++)
            o[k++] = pad_id;
        c++;
    }
    *out = o;
    *out_n = total;
    return QVL_OK;
}
