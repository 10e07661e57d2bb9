/* chat.c - native renderer of the Qwen3-VL chat template (spec section 9; the Jinja text is in
 * the model's chat_template.json) and expansion of image/video pad ids after tokenisation.
 *
 * What the template does, and this file replicates:
 *   - messages[0] with role "system" becomes "<|im_start|>system\n{text parts}<|im_end|>\n";
 *     a system message anywhere else matches no branch of the loop and is dropped silently;
 *   - user: "<|im_start|>user\n" + content + "<|im_end|>\n", where list content renders images as
 *     "<|vision_start|><|image_pad|><|vision_end|>" and videos with <|video_pad|>, each preceded
 *     by "Picture N: " / "Video N: " when add_vision_id (N counts over the whole conversation),
 *     and text verbatim, with no separators;
 *   - assistant: "<|im_start|>assistant\n" + text parts + "<|im_end|>\n";
 *   - tool: consecutive tool messages share one "<|im_start|>user" turn, each wrapped in
 *     "\n<tool_response>\n...\n</tool_response>", the run closed by "<|im_end|>\n";
 *   - assistant tool calls follow the text, each "<tool_call>\n{\"name\": \"NAME\",
 *     \"arguments\": ARGS}\n</tool_call>", separated by "\n" (before the first only when the
 *     message has content);
 *   - with tools, the system turn is always written: the first message's system text and a
 *     blank line, then the "# Tools" preamble with one `tojson` line per tool and the
 *     <tool_call> instructions;
 *   - add_generation_prompt appends "<|im_start|>assistant\n". */
#include "chat.h"

#include <cjson/cJSON.h>
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
    return qvl_chat_render_tools(msgs, n, NULL, 0, add_generation_prompt, add_vision_id, out, err,
                                 err_len);
}

/* Parse JSON text and append its `tojson` form. */
static qvl_status py_dump_text(qvl_sbuf *b, const char *json, const char *what, size_t i,
                               char *err, size_t err_len) {
    qvl_status st = QVL_OK;
    long off = -1;
    cJSON *t = json ? qvl_json_parse(json, strlen(json), NULL, &st, &off) : NULL;
    if (!t) {
        qvl_errf(err, err_len, "chat: %s %zu is not valid JSON%s", what, i,
                 st == QVL_E_NOMEM ? " (out of memory)" : "");
        return st == QVL_E_NOMEM ? QVL_E_NOMEM : QVL_E_INVAL;
    }
    qvl_json_py_dump(b, t);
    cJSON_Delete(t);
    return QVL_OK;
}

/* The template's system turn when tools are offered; tools are parsed and written back in
 * Python's json.dumps form. */
static qvl_status render_tools(qvl_sbuf *b, const qvl_chat_msg *sys, const char *const *tools,
                               size_t n_tools, char *err, size_t err_len) {
    qvl_sbuf_str(b, "<|im_start|>system\n");
    if (sys) {
        render_text_only(b, sys);
        qvl_sbuf_str(b, "\n\n");
    }
    qvl_sbuf_str(b, "# Tools\n\nYou may call one or more functions to assist with the user "
                    "query.\n\nYou are provided with function signatures within <tools></tools> "
                    "XML tags:\n<tools>");
    for (size_t i = 0; i < n_tools; i++) {
        qvl_sbuf_str(b, "\n");
        qvl_status st = py_dump_text(b, tools[i], "tool", i, err, err_len);
        if (st != QVL_OK)
            return st;
    }
    qvl_sbuf_str(b, "\n</tools>\n\nFor each function call, return a json object with function "
                    "name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n"
                    "{\"name\": <function-name>, \"arguments\": <args-json-object>}\n"
                    "</tool_call><|im_end|>\n");
    return QVL_OK;
}

/* An assistant message's tool calls, after its text. */
static qvl_status render_tool_calls(qvl_sbuf *b, const qvl_chat_msg *m, char *err,
                                    size_t err_len) {
    bool has_content = m->parts ? m->n_parts > 0 : (m->content && *m->content);
    for (size_t k = 0; k < m->n_tool_calls; k++) {
        const qvl_tool_call *tc = &m->tool_calls[k];
        if (k > 0 || has_content)
            qvl_sbuf_str(b, "\n");
        qvl_sbuf_str(b, "<tool_call>\n{\"name\": \"");
        qvl_sbuf_str(b, tc->name);
        qvl_sbuf_str(b, "\", \"arguments\": ");
        if (tc->arguments_json) {
            qvl_status st = py_dump_text(b, tc->arguments, "tool call", k, err, err_len);
            if (st != QVL_OK)
                return st;
        } else {
            qvl_sbuf_str(b, tc->arguments);
        }
        qvl_sbuf_str(b, "}\n</tool_call>");
    }
    return QVL_OK;
}

qvl_status qvl_chat_render_tools(const qvl_chat_msg *msgs, size_t n, const char *const *tools,
                                 size_t n_tools, int add_generation_prompt, int add_vision_id,
                                 char **out, char *err, size_t err_len) {
    if (!out) {
        qvl_errf(err, err_len, "chat: NULL output");
        return QVL_E_INVAL;
    }
    *out = NULL;
    if ((!msgs && n) || (!tools && n_tools)) {
        qvl_errf(err, err_len, "chat: no messages or tools");
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
        if (msgs[i].n_tool_calls &&
            (!msgs[i].tool_calls || role_of(msgs[i].role) != ROLE_ASSISTANT)) {
            qvl_errf(err, err_len, "chat: message %zu: tool calls belong to assistant messages",
                     i);
            return QVL_E_INVAL;
        }
        for (size_t k = 0; k < msgs[i].n_tool_calls; k++) {
            if (!msgs[i].tool_calls[k].name || !msgs[i].tool_calls[k].arguments) {
                qvl_errf(err, err_len, "chat: message %zu tool call %zu lacks a name or arguments",
                         i, k);
                return QVL_E_INVAL;
            }
        }
    }
    qvl_sbuf b = {0};
    qvl_sbuf_add(&b, "", 0); /* an empty conversation still yields "" */
    const qvl_chat_msg *sys = n > 0 && role_of(msgs[0].role) == ROLE_SYSTEM ? &msgs[0] : NULL;
    if (n_tools > 0) {
        qvl_status st = render_tools(&b, sys, tools, n_tools, err, err_len);
        if (st != QVL_OK) {
            qvl_free(b.p);
            return st;
        }
    } else if (sys) {
        qvl_sbuf_str(&b, "<|im_start|>system\n");
        render_text_only(&b, sys);
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
            if (m->n_tool_calls) {
                qvl_status st = render_tool_calls(&b, m, err, err_len);
                if (st != QVL_OK) {
                    qvl_free(b.p);
                    return st;
                }
            }
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
