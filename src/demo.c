/* demo.c - the random-weight demo model that `qvl run` uses when no model is given.
 *
 * A user's machine has no Qwen tokenizer file, so the demo gets a synthetic one in the real
 * tokenizer.json format: the Qwen3 pre-tokenizer, normaliser and decoder, the 26 real added
 * tokens at their real ids (so the chat template and image placeholders work as with a released
 * model), and a byte-level BPE vocabulary of 151643 entries (the 256 byte symbols, then all
 * two-symbol and some three-symbol strings with their merges) so that every id the random model
 * can produce decodes to text. The weights come from the random-model generator (tiny preset). */
#include "common.h"
#include "genmodel.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define BASE_VOCAB 151643

static const struct {
    const char *s;
    int special;
} k_added[26] = {
    {"<|endoftext|>", 1},       {"<|im_start|>", 1},       {"<|im_end|>", 1},
    {"<|object_ref_start|>", 1}, {"<|object_ref_end|>", 1}, {"<|box_start|>", 1},
    {"<|box_end|>", 1},         {"<|quad_start|>", 1},     {"<|quad_end|>", 1},
    {"<|vision_start|>", 1},    {"<|vision_end|>", 1},     {"<|vision_pad|>", 1},
    {"<|image_pad|>", 1},       {"<|video_pad|>", 1},      {"<tool_call>", 0},
    {"</tool_call>", 0},        {"<|fim_prefix|>", 0},     {"<|fim_middle|>", 0},
    {"<|fim_suffix|>", 0},      {"<|fim_pad|>", 0},        {"<|repo_name|>", 0},
    {"<|file_sep|>", 0},        {"<tool_response>", 0},    {"</tool_response>", 0},
    {"<think>", 0},             {"</think>", 0},
};

/* GPT-2 byte-level symbol of byte b, as UTF-8 into out (NUL-terminated); JSON-escaped. */
static void byte_symbol(int b, char *out) {
    unsigned cp;
    if ((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255)) {
        cp = (unsigned)b;
    } else {
        int n = 0; /* rank of b among the bytes that are remapped */
        for (int i = 0; i < b; i++)
            if (!((i >= 33 && i <= 126) || (i >= 161 && i <= 172) || (i >= 174 && i <= 255)))
                n++;
        cp = 256u + (unsigned)n;
    }
    if (cp == '"' || cp == '\\') {
        out[0] = '\\';
        out[1] = (char)cp;
        out[2] = 0;
    } else if (cp < 0x80) {
        out[0] = (char)cp;
        out[1] = 0;
    } else {
        out[0] = (char)(0xc0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3f));
        out[2] = 0;
    }
}

static qvl_status write_tokenizer(const char *dir, char *err, size_t err_len) {
    char *path = qvl_path_join(dir, "tokenizer.json");
    if (!path)
        return QVL_E_NOMEM;
    FILE *f = fopen(path, "w");
    if (!f) {
        qvl_errf(err, err_len, "%s: cannot write", path);
        qvl_free(path);
        return QVL_E_IO;
    }
    char sym[256][4];
    for (int b = 0; b < 256; b++)
        byte_symbol(b, sym[b]);
    fprintf(f, "{\"version\":\"1.0\",\"truncation\":null,\"padding\":null,\"added_tokens\":[");
    for (int i = 0; i < 26; i++)
        fprintf(f,
                "%s{\"id\":%d,\"content\":\"%s\",\"single_word\":false,\"lstrip\":false,"
                "\"rstrip\":false,\"normalized\":false,\"special\":%s}",
                i ? "," : "", BASE_VOCAB + i, k_added[i].s, k_added[i].special ? "true" : "false");
    fprintf(f, "],\"normalizer\":{\"type\":\"NFC\"},\"pre_tokenizer\":{\"type\":\"Sequence\","
               "\"pretokenizers\":[{\"type\":\"Split\",\"pattern\":{\"Regex\":"
               "\"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\\\r\\\\n\\\\p{L}\\\\p{N}]?\\\\p{L}+|"
               "\\\\p{N}| ?[^\\\\s\\\\p{L}\\\\p{N}]+[\\\\r\\\\n]*|\\\\s*[\\\\r\\\\n]+|"
               "\\\\s+(?!\\\\S)|\\\\s+\"},\"behavior\":\"Isolated\",\"invert\":false},"
               "{\"type\":\"ByteLevel\",\"add_prefix_space\":false,\"trim_offsets\":false,"
               "\"use_regex\":false}]},\"post_processor\":{\"type\":\"ByteLevel\","
               "\"add_prefix_space\":false,\"trim_offsets\":false,\"use_regex\":false},"
               "\"decoder\":{\"type\":\"ByteLevel\",\"add_prefix_space\":false,"
               "\"trim_offsets\":false,\"use_regex\":false},\"model\":{\"type\":\"BPE\","
               "\"dropout\":null,\"unk_token\":null,\"continuing_subword_prefix\":\"\","
               "\"end_of_word_suffix\":\"\",\"fuse_unk\":false,\"byte_fallback\":false,"
               "\"ignore_merges\":false,\"vocab\":{");
    int id = 0;
    for (int a = 0; a < 256; a++, id++)
        fprintf(f, "%s\"%s\":%d", id ? "," : "", sym[a], id);
    for (int a = 0; a < 256; a++)
        for (int b = 0; b < 256; b++, id++)
            fprintf(f, ",\"%s%s\":%d", sym[a], sym[b], id);
    for (int ab = 0; id < BASE_VOCAB; ab++)
        for (int c = 0; c < 256 && id < BASE_VOCAB; c++, id++)
            fprintf(f, ",\"%s%s%s\":%d", sym[ab / 256], sym[ab % 256], sym[c], id);
    fprintf(f, "},\"merges\":[");
    id = 256;
    for (int a = 0; a < 256; a++)
        for (int b = 0; b < 256; b++, id++)
            fprintf(f, "%s\"%s %s\"", id > 256 ? "," : "", sym[a], sym[b]);
    for (int ab = 0; id < BASE_VOCAB; ab++)
        for (int c = 0; c < 256 && id < BASE_VOCAB; c++, id++)
            fprintf(f, ",\"%s%s %s\"", sym[ab / 256], sym[ab % 256], sym[c]);
    fprintf(f, "]}}\n");
    bool ok = !ferror(f);
    ok &= fclose(f) == 0;
    if (!ok) {
        qvl_errf(err, err_len, "%s: write failed", path);
        qvl_free(path);
        return QVL_E_IO;
    }
    qvl_free(path);
    path = qvl_path_join(dir, "tokenizer_config.json");
    if (!path)
        return QVL_E_NOMEM;
    f = fopen(path, "w");
    if (!f) {
        qvl_errf(err, err_len, "%s: cannot write", path);
        qvl_free(path);
        return QVL_E_IO;
    }
    fprintf(f, "{\"add_bos_token\":false,\"add_prefix_space\":false,\"bos_token\":null,"
               "\"eos_token\":\"<|im_end|>\",\"pad_token\":\"<|endoftext|>\","
               "\"model_max_length\":262144,\"tokenizer_class\":\"Qwen2Tokenizer\"}\n");
    ok = fclose(f) == 0;
    qvl_free(path);
    if (!ok) {
        qvl_errf(err, err_len, "tokenizer_config.json: write failed");
        return QVL_E_IO;
    }
    return QVL_OK;
}

qvl_status qvl_demo_model_write(const char *dir, char *err, size_t err_len) {
    if (!dir || !*dir)
        return QVL_E_INVAL;
    char tmpl[] = "/tmp/qvl-demo-tok-XXXXXX";
    char *tdir = mkdtemp(tmpl);
    if (!tdir) {
        qvl_errf(err, err_len, "cannot create a temporary directory");
        return QVL_E_IO;
    }
    qvl_status s = write_tokenizer(tdir, err, err_len);
    if (s == QVL_OK) {
        qvl_genmodel_params p;
        qvl_genmodel_default_params(&p);
        p.preset = "tiny";
        p.seed = 1234;
        p.tokenizer_dir = tdir;
        p.embed_std = 0.25f; /* tied head: logits with a std of about 2, varied text */
        s = qvl_genmodel_write(dir, &p, err, err_len);
    }
    char path[64];
    snprintf(path, sizeof path, "%s/tokenizer.json", tdir);
    unlink(path);
    snprintf(path, sizeof path, "%s/tokenizer_config.json", tdir);
    unlink(path);
    rmdir(tdir);
    return s;
}
