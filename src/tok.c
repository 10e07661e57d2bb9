/* tok.c - Qwen3 byte-level BPE tokenizer (Hugging Face tokenizer.json, spec section 10).
 *
 * Load: parse JSON (a compact in-file reader), then copy into flat tables: per-id decode bytes, an open-addressing hash of
 * vocab byte strings -> id, and a hash of (left id, right id) -> (merge rank, merged id). The
 * pre-tokenizer regex is read from the file and compiled with PCRE2 (UTF | UCP, JIT when
 * available); Oniguruma's \s also matches U+0085, so \s / \S are widened to match it.
 * Encode: added tokens first (leftmost-longest), NFC (utf8proc) on the text between them, regex
 * split (behaviour Isolated), then BPE over the raw bytes of each piece (the GPT-2 byte<->unicode
 * map is a bijection, so merging bytes is merging the mapped characters) with a min-heap keyed by
 * (rank, position) and a per-call cache of recent pieces. All per-call state lives in the call,
 * so a loaded tokenizer can be shared by threads. */
#define PCRE2_CODE_UNIT_WIDTH 8
#include "tok.h"

#include <pcre2.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#define TOK_MAX_ID        (1 << 24)         /* ids above this are rejected as malformed */
#define TOK_MAX_FILE      (512u << 20)      /* tokenizer.json size cap */
#define CACHE_SLOTS       4096              /* per-call piece cache (direct-mapped) */
#define CACHE_MAX_PIECE   256               /* longer pieces are not cached */
#define CACHE_ARENA_LIMIT ((size_t)1 << 20) /* reset the cache when its arenas exceed this */

enum {
    F_VALID = 1,     /* id assigned */
    F_ADDED = 2,     /* an added token (decodes to its content) */
    F_SPECIAL = 4,   /* added token with "special": true */
    F_VOCAB = 8,     /* in model.vocab */
    F_BYTELEVEL = 16 /* vocab string made only of byte-map characters */
};

typedef struct {
    uint32_t off; /* into bytes arena */
    uint32_t len;
    int32_t id;   /* -1: empty slot */
} vocab_slot;

typedef struct {
    uint64_t key; /* (left << 32) | right; UINT64_MAX: empty */
    int32_t rank;
    int32_t id; /* merged token */
} merge_slot;

typedef struct {
    uint32_t off; /* content in bytes arena */
    uint32_t len;
    int32_t id;
    bool special;
} added_tok;

struct qvl_tok {
    int32_t n_vocab; /* max id + 1 */
    uint8_t *flags;  /* [n_vocab] F_* */
    uint32_t *dec_off; /* [n_vocab] decode bytes in arena */
    uint32_t *dec_len; /* [n_vocab] */
    size_t max_tok_bytes;

    char *arena; /* all token byte strings */
    size_t arena_len, arena_cap;

    vocab_slot *vocab; /* hash: raw bytes -> id (byte-level entries only) */
    size_t vocab_mask;
    merge_slot *merges; /* hash: id pair -> rank, merged id */
    size_t merge_mask;
    int32_t byte_id[256]; /* id of each single byte, -1 if absent */

    added_tok *added;
    size_t n_added;
    uint8_t added_first[256]; /* non-zero if some added token starts with this byte */
    size_t added_min_len;

    bool nfc;
    bool ignore_merges;
    pcre2_general_context *gctx;
    pcre2_code *re;

    uint16_t b2u[256]; /* GPT-2 byte -> code point */
    int16_t u2b[324];  /* code point -> byte, -1 if not in the map */
};

/* ---- small helpers ----------------------------------------------------- */

static uint64_t hash_bytes(const void *p, size_t n) {
    const uint8_t *s = p;
    uint64_t h = 0x9E3779B97F4A7C15ull ^ (n * 0xff51afd7ed558ccdull);
    while (n >= 8) {
        uint64_t v;
        memcpy(&v, s, 8);
        h = (h ^ v) * 0xbf58476d1ce4e5b9ull;
        h ^= h >> 31;
        s += 8;
        n -= 8;
    }
    uint64_t v = 0;
    for (size_t i = 0; i < n; i++)
        v |= (uint64_t)s[i] << (8 * i);
    h = (h ^ v) * 0x94d049bb133111ebull;
    h ^= h >> 29;
    h *= 0xbf58476d1ce4e5b9ull;
    h ^= h >> 32;
    return h;
}

static uint64_t hash_u64(uint64_t x) {
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    x ^= x >> 33;
    return x;
}

enum { U8_OK, U8_BAD, U8_SHORT };

/* Classify the UTF-8 sequence at s[0..n) (n >= 1). U8_OK: *k is the length of a well-formed
 * character. U8_BAD: *k >= 1 is the length of the maximal ill-formed subpart (one U+FFFD each).
 * U8_SHORT: s[0..n) is a valid but incomplete prefix (*k = n). */
static int utf8_next(const uint8_t *s, size_t n, size_t *k) {
    uint8_t c = s[0];
    if (c < 0x80) {
        *k = 1;
        return U8_OK;
    }
    size_t len;
    uint8_t lo = 0x80;
    uint8_t hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF) {
        len = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
        len = 3;
        if (c == 0xE0)
            lo = 0xA0;
        else if (c == 0xED)
            hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        len = 4;
        if (c == 0xF0)
            lo = 0x90;
        else if (c == 0xF4)
            hi = 0x8F;
    } else {
        *k = 1;
        return U8_BAD;
    }
    for (size_t i = 1; i < len; i++) {
        if (i >= n) {
            *k = n;
            return U8_SHORT;
        }
        if (s[i] < lo || s[i] > hi) {
            *k = i;
            return U8_BAD;
        }
        lo = 0x80;
        hi = 0xBF;
    }
    *k = len;
    return U8_OK;
}

/* Offset of the first ill-formed byte of s[0..n), or n if all is valid UTF-8. */
static size_t utf8_check(const uint8_t *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        if (s[i] < 0x80) {
            i++;
            continue;
        }
        size_t k;
        if (utf8_next(s + i, n - i, &k) != U8_OK)
            return i;
        i += k;
    }
    return n;
}

/* Decode one code point of well-formed UTF-8 (caller checked); returns its length. */
static size_t utf8_decode(const uint8_t *s, uint32_t *cp) {
    if (s[0] < 0x80) {
        *cp = s[0];
        return 1;
    }
    if (s[0] < 0xE0) {
        *cp = ((uint32_t)(s[0] & 0x1F) << 6) | (s[1] & 0x3F);
        return 2;
    }
    if (s[0] < 0xF0) {
        *cp = ((uint32_t)(s[0] & 0x0F) << 12) | ((uint32_t)(s[1] & 0x3F) << 6) | (s[2] & 0x3F);
        return 3;
    }
    *cp = ((uint32_t)(s[0] & 0x07) << 18) | ((uint32_t)(s[1] & 0x3F) << 12) |
          ((uint32_t)(s[2] & 0x3F) << 6) | (s[3] & 0x3F);
    return 4;
}

/* GPT-2 byte <-> unicode table: printable Latin-1 bytes map to themselves, the other 68 bytes
 * to U+0100 + k in byte order. */
static void init_byte_map(qvl_tok *t) {
    int k = 0;
    for (int i = 0; i < 324; i++)
        t->u2b[i] = -1;
    for (int b = 0; b < 256; b++) {
        bool self = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
        t->b2u[b] = (uint16_t)(self ? b : 256 + k++);
        t->u2b[t->b2u[b]] = (int16_t)b;
    }
}

/* Map a byte-level string (UTF-8 of mapped code points) to raw bytes in out (capacity >= n).
 * Returns false if s is not valid UTF-8 or has a code point outside the map. */
static bool bytelevel_to_bytes(const qvl_tok *t, const char *s, size_t n, char *out,
                               size_t *out_len) {
    const uint8_t *u = (const uint8_t *)s;
    size_t i = 0;
    size_t o = 0;
    while (i < n) {
        size_t k;
        if (utf8_next(u + i, n - i, &k) != U8_OK)
            return false;
        uint32_t cp;
        utf8_decode(u + i, &cp);
        if (cp >= 324 || t->u2b[cp] < 0)
            return false;
        out[o++] = (char)t->u2b[cp];
        i += k;
    }
    *out_len = o;
    return true;
}

/* ---- a compact JSON reader ----------------------------------------------
 * tokenizer.json is 11 MB with ~600k values; a general DOM with one heap block per value
 * (cJSON) spends most of the load time in malloc and page faults. This reader decodes strings
 * in place in a private copy of the text and bump-allocates 32-byte nodes from large blocks. */

enum { JT_NULL, JT_FALSE, JT_TRUE, JT_NUM, JT_STR, JT_ARR, JT_OBJ };

typedef struct jv {
    const char *key; /* member name (NUL-terminated) when inside an object */
    union {
        const char *s;    /* JT_STR, NUL-terminated */
        struct jv *child; /* JT_ARR / JT_OBJ: first element */
        double num;       /* JT_NUM */
    } u;
    struct jv *next;
    uint32_t type;
    uint32_t n; /* string bytes or number of children */
} jv;

typedef struct jblock {
    struct jblock *next;
    size_t used, cap;
    jv nodes[];
} jblock;

typedef struct {
    char *p, *end; /* cursor in the private copy (NUL at end) */
    char *base;
    jblock *blocks;
    int depth;
    bool oom;
    const char *what; /* first error */
    size_t at;
} jparser;

#define JSON_MAX_DEPTH 128

static jv *jnode(jparser *J) {
    jblock *b = J->blocks;
    if (!b || b->used == b->cap) {
        size_t cap = b ? 65536 : 1024;
        jblock *nb = qvl_malloc(sizeof *nb + cap * sizeof(jv));
        if (!nb) {
            J->oom = true;
            return NULL;
        }
        nb->next = b;
        nb->used = 0;
        nb->cap = cap;
        J->blocks = b = nb;
    }
    jv *v = &b->nodes[b->used++];
    memset(v, 0, sizeof *v);
    return v;
}

static bool jfail(jparser *J, const char *what) {
    if (!J->what) {
        J->what = what;
        J->at = (size_t)(J->p - J->base);
    }
    return false;
}

static void jws(jparser *J) {
    while (J->p < J->end && (*J->p == ' ' || *J->p == '\n' || *J->p == '\r' || *J->p == '\t'))
        J->p++;
}

static int jhex4(const char *s) {
    int v = 0;
    for (int i = 0; i < 4; i++) {
        char c = s[i];
        int d = c >= '0' && c <= '9'   ? c - '0'
                : c >= 'a' && c <= 'f' ? c - 'a' + 10
                : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                       : -1;
        if (d < 0)
            return -1;
        v = v * 16 + d;
    }
    return v;
}

/* String at J->p (after the opening quote), decoded in place; returns its start. */
static char *jstring(jparser *J, uint32_t *len) {
    char *start = J->p;
    char *w = J->p;
    for (;;) {
        if (J->p >= J->end)
            return jfail(J, "unterminated string"), NULL;
        unsigned char c = (unsigned char)*J->p;
        if (c == '"')
            break;
        if (c < 0x20)
            return jfail(J, "control character in string"), NULL;
        if (c != '\\') {
            *w++ = *J->p++;
            continue;
        }
        if (J->end - J->p < 2)
            return jfail(J, "bad escape"), NULL;
        char e = J->p[1];
        J->p += 2;
        switch (e) {
        case '"': *w++ = '"'; break;
        case '\\': *w++ = '\\'; break;
        case '/': *w++ = '/'; break;
        case 'b': *w++ = '\b'; break;
        case 'f': *w++ = '\f'; break;
        case 'n': *w++ = '\n'; break;
        case 'r': *w++ = '\r'; break;
        case 't': *w++ = '\t'; break;
        case 'u': {
            int cp = J->end - J->p >= 4 ? jhex4(J->p) : -1;
            if (cp < 0)
                return jfail(J, "bad \\u escape"), NULL;
            J->p += 4;
            if (cp >= 0xDC00 && cp <= 0xDFFF)
                return jfail(J, "lone low surrogate"), NULL;
            if (cp >= 0xD800 && cp <= 0xDBFF) {
                int lo = J->end - J->p >= 6 && J->p[0] == '\\' && J->p[1] == 'u'
                             ? jhex4(J->p + 2)
                             : -1;
                if (lo < 0xDC00 || lo > 0xDFFF)
                    return jfail(J, "lone high surrogate"), NULL;
                J->p += 6;
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            }
            /* UTF-8 is never longer than the escape it replaces */
            if (cp < 0x80) {
                *w++ = (char)cp;
            } else if (cp < 0x800) {
                *w++ = (char)(0xC0 | (cp >> 6));
                *w++ = (char)(0x80 | (cp & 0x3F));
            } else if (cp < 0x10000) {
                *w++ = (char)(0xE0 | (cp >> 12));
                *w++ = (char)(0x80 | ((cp >> 6) & 0x3F));
                *w++ = (char)(0x80 | (cp & 0x3F));
            } else {
                *w++ = (char)(0xF0 | (cp >> 18));
                *w++ = (char)(0x80 | ((cp >> 12) & 0x3F));
                *w++ = (char)(0x80 | ((cp >> 6) & 0x3F));
                *w++ = (char)(0x80 | (cp & 0x3F));
            }
            break;
        }
        default: return jfail(J, "bad escape"), NULL;
        }
    }
    J->p++; /* closing quote; w is at or before it */
    *w = 0;
    if ((size_t)(w - start) > UINT32_MAX)
        return jfail(J, "string too long"), NULL;
    *len = (uint32_t)(w - start);
    return start;
}

static bool jvalue(jparser *J, jv *v);

static bool jnumber(jparser *J, jv *v) {
    char *s = J->p;
    char *q = s;
    if (*q == '-')
        q++;
    if (q >= J->end || !(*q >= '0' && *q <= '9'))
        return jfail(J, "bad number");
    bool simple = true;
    if (*q == '0')
        q++;
    else
        while (q < J->end && *q >= '0' && *q <= '9')
            q++;
    if (q < J->end && *q == '.') {
        simple = false;
        q++;
        if (q >= J->end || !(*q >= '0' && *q <= '9'))
            return jfail(J, "bad number");
        while (q < J->end && *q >= '0' && *q <= '9')
            q++;
    }
    if (q < J->end && (*q == 'e' || *q == 'E')) {
        simple = false;
        q++;
        if (q < J->end && (*q == '+' || *q == '-'))
            q++;
        if (q >= J->end || !(*q >= '0' && *q <= '9'))
            return jfail(J, "bad number");
        while (q < J->end && *q >= '0' && *q <= '9')
            q++;
    }
    v->type = JT_NUM;
    if (simple && q - s <= 15) {
        double x = 0;
        for (char *d = s + (*s == '-'); d < q; d++)
            x = x * 10 + (*d - '0');
        v->u.num = *s == '-' ? -x : x;
    } else {
        char save = *q; /* the copy is NUL-terminated; bound strtod to the validated span */
        *q = 0;
        v->u.num = strtod(s, NULL);
        *q = save;
    }
    J->p = q;
    return true;
}

static bool jlit(jparser *J, const char *lit, uint32_t type, jv *v) {
    size_t n = strlen(lit);
    if ((size_t)(J->end - J->p) < n || memcmp(J->p, lit, n) != 0)
        return jfail(J, "unexpected character");
    J->p += n;
    v->type = type;
    return true;
}

/* Array or object after its opening bracket. */
static bool jcontainer(jparser *J, jv *v, bool obj) {
    if (++J->depth > JSON_MAX_DEPTH)
        return jfail(J, "nesting too deep");
    v->type = obj ? JT_OBJ : JT_ARR;
    jv **tail = &v->u.child;
    char close = obj ? '}' : ']';
    jws(J);
    if (J->p < J->end && *J->p == close) {
        J->p++;
        J->depth--;
        return true;
    }
    for (;;) {
        jv *c = jnode(J);
        if (!c)
            return false;
        jws(J);
        if (obj) {
            uint32_t kl;
            if (J->p >= J->end || *J->p != '"')
                return jfail(J, "expected a member name");
            J->p++;
            c->key = jstring(J, &kl);
            if (!c->key)
                return false;
            jws(J);
            if (J->p >= J->end || *J->p != ':')
                return jfail(J, "expected ':'");
            J->p++;
        }
        if (!jvalue(J, c))
            return false;
        *tail = c;
        tail = &c->next;
        v->n++;
        jws(J);
        if (J->p < J->end && *J->p == ',') {
            J->p++;
            continue;
        }
        if (J->p < J->end && *J->p == close) {
            J->p++;
            J->depth--;
            return true;
        }
        return jfail(J, obj ? "expected ',' or '}'" : "expected ',' or ']'");
    }
}

static bool jvalue(jparser *J, jv *v) {
    jws(J);
    if (J->p >= J->end)
        return jfail(J, "unexpected end of data");
    switch (*J->p) {
    case '{': J->p++; return jcontainer(J, v, true);
    case '[': J->p++; return jcontainer(J, v, false);
    case '"':
        J->p++;
        v->type = JT_STR;
        v->u.s = jstring(J, &v->n);
        return v->u.s != NULL;
    case 't': return jlit(J, "true", JT_TRUE, v);
    case 'f': return jlit(J, "false", JT_FALSE, v);
    case 'n': return jlit(J, "null", JT_NULL, v);
    default: return jnumber(J, v);
    }
}

static void jfree(jparser *J) {
    for (jblock *b = J->blocks; b;) {
        jblock *nx = b->next;
        qvl_free(b);
        b = nx;
    }
    J->blocks = NULL;
    qvl_free(J->base);
    J->base = NULL;
}

/* Parse text[0..len) into a tree owned by J (released with jfree). With `owned`, text is a heap
 * buffer of len + 1 bytes that J takes over and decodes in place (also on failure); otherwise
 * it is copied. */
static qvl_status jparse(jparser *J, const char *text, size_t len, bool owned, jv **root) {
    memset(J, 0, sizeof *J);
    *root = NULL;
    if (owned) {
        J->base = (char *)text;
    } else {
        size_t cap;
        if (!qvl_size_add(len, 1, &cap))
            return QVL_E_NOMEM;
        J->base = qvl_malloc(cap);
        if (!J->base)
            return QVL_E_NOMEM;
        memcpy(J->base, text, len);
    }
    J->base[len] = 0;
    J->p = J->base;
    J->end = J->base + len;
    jv *r = jnode(J);
    if (!r)
        return QVL_E_NOMEM;
    if (!jvalue(J, r))
        return J->oom ? QVL_E_NOMEM : QVL_E_FORMAT;
    jws(J);
    if (J->p != J->end) {
        jfail(J, "trailing data");
        return QVL_E_FORMAT;
    }
    *root = r;
    return QVL_OK;
}

static bool j_is(const jv *v, uint32_t type) {
    return v && v->type == type;
}
static bool j_is_str(const jv *v) { return j_is(v, JT_STR); }
static bool j_is_arr(const jv *v) { return j_is(v, JT_ARR); }
static bool j_is_obj(const jv *v) { return j_is(v, JT_OBJ); }
static bool j_is_num(const jv *v) { return j_is(v, JT_NUM); }
static bool j_is_null(const jv *v) { return j_is(v, JT_NULL); }
static bool j_is_true(const jv *v) { return j_is(v, JT_TRUE); }
static bool j_is_false(const jv *v) { return j_is(v, JT_FALSE); }
static bool j_is_bool(const jv *v) { return j_is_true(v) || j_is_false(v); }

/* Member `key` of an object (the last one if repeated, as most JSON readers do); NULL if v is
 * not an object or has no such member. */
static const jv *jget(const jv *v, const char *key) {
    if (!j_is(v, JT_OBJ))
        return NULL;
    const jv *found = NULL;
    for (const jv *c = v->u.child; c; c = c->next)
        if (strcmp(c->key, key) == 0)
            found = c;
    return found;
}

/* ---- loading ----------------------------------------------------------- */

typedef struct {
    qvl_tok *t;
    const char *src; /* file name for messages */
    char *err;
    size_t err_len;
} loader;

static qvl_status arena_add(loader *L, const char *s, size_t n, uint32_t *off) {
    qvl_tok *t = L->t;
    if (n > UINT32_MAX || t->arena_len + n > UINT32_MAX) {
        qvl_errf(L->err, L->err_len, "%s: token strings exceed 4 GiB", L->src);
        return QVL_E_LIMIT;
    }
    /* allocate on the first call even for an empty string (a vocab key ""), so callers may
     * always form t->arena + off */
    if (!t->arena || t->arena_len + n > t->arena_cap) {
        size_t cap = t->arena_cap ? t->arena_cap : 1 << 16;
        while (cap < t->arena_len + n)
            cap *= 2;
        char *p = qvl_realloc(t->arena, cap);
        if (!p) {
            qvl_errf(L->err, L->err_len, "%s: out of memory", L->src);
            return QVL_E_NOMEM;
        }
        t->arena = p;
        t->arena_cap = cap;
    }
    memcpy(t->arena + t->arena_len, s, n);
    *off = (uint32_t)t->arena_len;
    t->arena_len += n;
    return QVL_OK;
}

static int32_t vocab_find(const qvl_tok *t, const char *s, size_t n) {
    if (!t->vocab)
        return -1;
    size_t i = hash_bytes(s, n) & t->vocab_mask;
    for (;;) {
        const vocab_slot *e = &t->vocab[i];
        if (e->id < 0)
            return -1;
        if (e->len == n && memcmp(t->arena + e->off, s, n) == 0)
            return e->id;
        i = (i + 1) & t->vocab_mask;
    }
}

static const merge_slot *merge_find(const qvl_tok *t, int32_t a, int32_t b) {
    uint64_t key = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    size_t i = hash_u64(key) & t->merge_mask;
    for (;;) {
        const merge_slot *e = &t->merges[i];
        if (e->key == key)
            return e;
        if (e->key == UINT64_MAX)
            return NULL;
        i = (i + 1) & t->merge_mask;
    }
}

static size_t pow2_at_least(size_t n) {
    size_t c = 16;
    while (c < n)
        c *= 2;
    return c;
}

/* Read a JSON number that must be an integer id in [0, TOK_MAX_ID). */
static bool json_id(const jv *v, int32_t *id) {
    if (!j_is_num(v))
        return false;
    double d = v->u.num;
    if (!(d >= 0 && d < TOK_MAX_ID) || d != (double)(int32_t)d)
        return false;
    *id = (int32_t)d;
    return true;
}

/* Ensure the per-id arrays cover id. */
static qvl_status ids_reserve(loader *L, int32_t id) {
    qvl_tok *t = L->t;
    if (id < t->n_vocab)
        return QVL_OK;
    int32_t n = id + 1;
    uint8_t *f = qvl_realloc(t->flags, (size_t)n);
    if (!f)
        goto nomem;
    t->flags = f;
    memset(t->flags + t->n_vocab, 0, (size_t)(n - t->n_vocab));
    uint32_t *o = qvl_realloc(t->dec_off, (size_t)n * sizeof *o);
    if (!o)
        goto nomem;
    t->dec_off = o;
    uint32_t *l = qvl_realloc(t->dec_len, (size_t)n * sizeof *l);
    if (!l)
        goto nomem;
    t->dec_len = l;
    for (int32_t i = t->n_vocab; i < n; i++) {
        t->dec_off[i] = 0;
        t->dec_len[i] = 0;
    }
    t->n_vocab = n;
    return QVL_OK;
nomem:
    qvl_errf(L->err, L->err_len, "%s: out of memory", L->src);
    return QVL_E_NOMEM;
}

/* model.vocab: object of "byte-level string": id. Fills decode bytes and the vocab hash. */
static qvl_status load_vocab(loader *L, const jv *vocab) {
    qvl_tok *t = L->t;
    if (!j_is_obj(vocab)) {
        qvl_errf(L->err, L->err_len, "%s: model.vocab missing or not an object", L->src);
        return QVL_E_FORMAT;
    }
    size_t n = 0;
    int32_t max_id = -1;
    for (const jv *e = vocab->u.child; e; e = e->next) {
        int32_t id;
        if (!e->key || !json_id(e, &id)) {
            qvl_errf(L->err, L->err_len, "%s: model.vocab entry \"%.40s\" has no valid id",
                     L->src, e->key ? e->key : "");
            return QVL_E_FORMAT;
        }
        if (id > max_id)
            max_id = id;
        n++;
    }
    qvl_status st = max_id >= 0 ? ids_reserve(L, max_id) : QVL_OK;
    if (st)
        return st;
    t->vocab_mask = pow2_at_least(2 * n + 1) - 1;
    t->vocab = qvl_malloc((t->vocab_mask + 1) * sizeof *t->vocab);
    if (!t->vocab) {
        qvl_errf(L->err, L->err_len, "%s: out of memory", L->src);
        return QVL_E_NOMEM;
    }
    for (size_t i = 0; i <= t->vocab_mask; i++)
        t->vocab[i].id = -1;
    char tmp[1024];
    for (const jv *e = vocab->u.child; e; e = e->next) {
        int32_t id = 0;
        json_id(e, &id);
        if (t->flags[id] & F_VOCAB) {
            qvl_errf(L->err, L->err_len, "%s: model.vocab: id %d is used twice", L->src, (int)id);
            return QVL_E_FORMAT;
        }
        size_t slen = strlen(e->key);
        char *buf = slen <= sizeof tmp ? tmp : qvl_malloc(slen);
        if (!buf) {
            qvl_errf(L->err, L->err_len, "%s: out of memory", L->src);
            return QVL_E_NOMEM;
        }
        size_t blen;
        bool bl = bytelevel_to_bytes(t, e->key, slen, buf, &blen);
        uint32_t off;
        if (bl) {
            st = arena_add(L, buf, blen, &off);
        } else { /* decodes to its own UTF-8, as the ByteLevel decoder does; never encoded */
            blen = slen;
            st = arena_add(L, e->key, slen, &off);
        }
        if (buf != tmp)
            qvl_free(buf);
        if (st)
            return st;
        if (bl) {
            if (vocab_find(t, t->arena + off, blen) >= 0) {
                qvl_errf(L->err, L->err_len, "%s: model.vocab: duplicate entry \"%.40s\"", L->src,
                         e->key);
                return QVL_E_FORMAT;
            }
            size_t i = hash_bytes(t->arena + off, blen) & t->vocab_mask;
            while (t->vocab[i].id >= 0)
                i = (i + 1) & t->vocab_mask;
            t->vocab[i].off = off;
            t->vocab[i].len = (uint32_t)blen;
            t->vocab[i].id = id;
        }
        t->flags[id] |= F_VALID | F_VOCAB | (bl ? F_BYTELEVEL : 0);
        t->dec_off[id] = off;
        t->dec_len[id] = (uint32_t)blen;
    }
    for (int b = 0; b < 256; b++) {
        char c = (char)b;
        t->byte_id[b] = vocab_find(t, &c, 1);
    }
    return QVL_OK;
}

/* Split one merge entry into its two byte-level strings (pointers into the JSON tree or into
 * tmp for the "a b" form). */
static bool merge_parts(const jv *m, char *tmp, size_t tmp_len, const char **a,
                        const char **b) {
    if (j_is_str(m)) {
        const char *s = m->u.s;
        const char *sp = strchr(s, ' ');
        if (!sp || sp == s || !sp[1] || strchr(sp + 1, ' '))
            return false;
        size_t la = (size_t)(sp - s);
        if (la + 1 > tmp_len)
            return false;
        memcpy(tmp, s, la);
        tmp[la] = 0;
        *a = tmp;
        *b = sp + 1;
        return true;
    }
    if (j_is_arr(m) && (int)m->n == 2 && j_is_str(m->u.child) &&
        j_is_str(m->u.child->next)) {
        *a = m->u.child->u.s;
        *b = m->u.child->next->u.s;
        return **a && **b;
    }
    return false;
}

/* model.merges: list of "a b" strings or [a, b] pairs; rank = index. Both parts and their
 * concatenation must be vocab entries (as Hugging Face tokenizers requires). */
static qvl_status load_merges(loader *L, const jv *merges) {
    qvl_tok *t = L->t;
    if (!j_is_arr(merges)) {
        qvl_errf(L->err, L->err_len, "%s: model.merges missing or not an array", L->src);
        return QVL_E_FORMAT;
    }
    size_t n = 0;
    for (const jv *m = merges->u.child; m; m = m->next)
        n++;
    if (n > (size_t)INT32_MAX) {
        qvl_errf(L->err, L->err_len, "%s: too many merges", L->src);
        return QVL_E_LIMIT;
    }
    t->merge_mask = pow2_at_least(2 * n + 1) - 1;
    t->merges = qvl_malloc((t->merge_mask + 1) * sizeof *t->merges);
    if (!t->merges) {
        qvl_errf(L->err, L->err_len, "%s: out of memory", L->src);
        return QVL_E_NOMEM;
    }
    for (size_t i = 0; i <= t->merge_mask; i++)
        t->merges[i].key = UINT64_MAX;
    char part[1024];
    char bytes_a[1024];
    char bytes_b[1024];
    int32_t rank = 0;
    for (const jv *m = merges->u.child; m; m = m->next, rank++) {
        const char *a;
        const char *b;
        if (!merge_parts(m, part, sizeof part, &a, &b)) {
            qvl_errf(L->err, L->err_len, "%s: model.merges[%d] is not \"a b\" or [a, b]", L->src,
                     (int)rank);
            return QVL_E_FORMAT;
        }
        size_t la;
        size_t lb;
        size_t na = strlen(a);
        size_t nb = strlen(b);
        int32_t ia = -1;
        int32_t ib = -1;
        int32_t ic = -1;
        if (na <= sizeof bytes_a && nb <= sizeof bytes_b &&
            bytelevel_to_bytes(t, a, na, bytes_a, &la) &&
            bytelevel_to_bytes(t, b, nb, bytes_b, &lb)) {
            ia = vocab_find(t, bytes_a, la);
            ib = vocab_find(t, bytes_b, lb);
            if (la + lb <= sizeof bytes_a) {
                memcpy(bytes_a + la, bytes_b, lb);
                ic = vocab_find(t, bytes_a, la + lb);
            }
        }
        if (ia < 0 || ib < 0 || ic < 0) {
            qvl_errf(L->err, L->err_len,
                     "%s: model.merges[%d] (\"%.40s\" + \"%.40s\"): a part or the result is not "
                     "in the vocab",
                     L->src, (int)rank, a, b);
            return QVL_E_FORMAT;
        }
        uint64_t key = ((uint64_t)(uint32_t)ia << 32) | (uint32_t)ib;
        size_t i = hash_u64(key) & t->merge_mask;
        while (t->merges[i].key != UINT64_MAX && t->merges[i].key != key)
            i = (i + 1) & t->merge_mask;
        t->merges[i].key = key; /* a repeated pair takes the later rank, as HF's map does */
        t->merges[i].rank = rank;
        t->merges[i].id = ic;
    }
    return QVL_OK;
}

/* added_tokens: [{id, content, special, ...}]. Content matched verbatim (Qwen's are all
 * normalized: false; lstrip/rstrip/single_word are not applied). */
static qvl_status load_added(loader *L, const jv *arr) {
    qvl_tok *t = L->t;
    if (!arr || j_is_null(arr))
        return QVL_OK;
    if (!j_is_arr(arr)) {
        qvl_errf(L->err, L->err_len, "%s: added_tokens is not an array", L->src);
        return QVL_E_FORMAT;
    }
    size_t n = (size_t)(int)arr->n;
    if (n == 0)
        return QVL_OK;
    t->added = qvl_calloc(n, sizeof *t->added);
    if (!t->added) {
        qvl_errf(L->err, L->err_len, "%s: out of memory", L->src);
        return QVL_E_NOMEM;
    }
    t->added_min_len = SIZE_MAX;
    int32_t max_id = -1;
    for (const jv *e = arr->u.child; e; e = e->next) {
        int32_t iv;
        if (json_id(jget(e, "id"), &iv) && iv > max_id)
            max_id = iv;
    }
    if (max_id >= 0) {
        qvl_status st = ids_reserve(L, max_id);
        if (st)
            return st;
    }
    size_t k = 0;
    for (const jv *e = arr->u.child; e; e = e->next, k++) {
        const jv *id = jget(e, "id");
        const jv *content = jget(e, "content");
        const jv *special = jget(e, "special");
        int32_t iv;
        if (!j_is_obj(e) || !json_id(id, &iv) || !j_is_str(content) ||
            !content->u.s[0] || (special && !j_is_bool(special))) {
            qvl_errf(L->err, L->err_len,
                     "%s: added_tokens[%zu] needs an integer id, a non-empty string content and "
                     "a boolean special",
                     L->src, k);
            return QVL_E_FORMAT;
        }
        qvl_status st = ids_reserve(L, iv);
        if (st)
            return st;
        if (t->flags[iv] & F_ADDED) {
            qvl_errf(L->err, L->err_len, "%s: added_tokens: id %d is used twice", L->src, (int)iv);
            return QVL_E_FORMAT;
        }
        size_t len = strlen(content->u.s);
        uint32_t off;
        st = arena_add(L, content->u.s, len, &off);
        if (st)
            return st;
        added_tok *a = &t->added[t->n_added++];
        a->off = off;
        a->len = (uint32_t)len;
        a->id = iv;
        a->special = j_is_true(special);
        t->flags[iv] |= F_VALID | F_ADDED | (a->special ? F_SPECIAL : 0);
        t->dec_off[iv] = off;
        t->dec_len[iv] = (uint32_t)len;
        t->added_first[(uint8_t)content->u.s[0]] = 1;
        if (len < t->added_min_len)
            t->added_min_len = len;
    }
    return QVL_OK;
}

/* normalizer: null, NFC, or a Sequence of NFC. */
static qvl_status load_normalizer(loader *L, const jv *nz) {
    if (!nz || j_is_null(nz))
        return QVL_OK;
    const jv *type = jget(nz, "type");
    if (!j_is_str(type)) {
        qvl_errf(L->err, L->err_len, "%s: normalizer has no type", L->src);
        return QVL_E_FORMAT;
    }
    if (strcmp(type->u.s, "NFC") == 0) {
        L->t->nfc = true;
        return QVL_OK;
    }
    if (strcmp(type->u.s, "Sequence") == 0) {
        const jv *list = jget(nz, "normalizers");
        if (!j_is_arr(list)) {
            qvl_errf(L->err, L->err_len, "%s: normalizer Sequence has no normalizers list",
                     L->src);
            return QVL_E_FORMAT;
        }
        for (const jv *e = list->u.child; e; e = e->next) {
            qvl_status st = load_normalizer(L, e);
            if (st)
                return st;
        }
        return QVL_OK;
    }
    qvl_errf(L->err, L->err_len, "%s: normalizer type \"%.40s\" is not supported", L->src,
             type->u.s);
    return QVL_E_UNSUPPORTED;
}

static void *pcre_malloc(size_t n, void *user) {
    (void)user;
    return qvl_malloc(n);
}

static void pcre_free(void *p, void *user) {
    (void)user;
    qvl_free(p);
}

/* Rewrite \s and \S so that they also cover U+0085 (Oniguruma's \s, which Hugging Face uses,
 * includes NEL; PCRE2's does not). Inside a class, \s gets \x{85} appended and \S is rejected.
 * Returns a heap string or NULL (out of memory, or *unsupported set). */
static char *widen_space_class(const char *re, bool *unsupported) {
    size_t n = strlen(re);
    size_t cap;
    if (!qvl_size_mul(n, 12, &cap) || !qvl_size_add(cap, 1, &cap))
        return NULL;
    char *out = qvl_malloc(cap);
    if (!out)
        return NULL;
    size_t o = 0;
    bool in_class = false;
    for (size_t i = 0; i < n; i++) {
        char c = re[i];
        if (c == '\\' && i + 1 < n) {
            char d = re[i + 1];
            i++;
            if (d == 's' && !in_class) {
                memcpy(out + o, "[\\s\\x{85}]", 10);
                o += 10;
            } else if (d == 's') {
                memcpy(out + o, "\\s\\x{85}", 8);
                o += 8;
            } else if (d == 'S' && !in_class) {
                memcpy(out + o, "[^\\s\\x{85}]", 11);
                o += 11;
            } else if (d == 'S') {
                *unsupported = true;
                qvl_free(out);
                return NULL;
            } else {
                out[o++] = '\\';
                out[o++] = d;
            }
            continue;
        }
        if (!in_class && c == '[') {
            in_class = true;
            out[o++] = c;
            /* a ']' right after '[' or '[^' is literal */
            if (i + 1 < n && re[i + 1] == '^')
                out[o++] = re[++i];
            if (i + 1 < n && re[i + 1] == ']')
                out[o++] = re[++i];
            continue;
        }
        if (in_class && c == '[' && i + 1 < n && re[i + 1] == ':') { /* [:alpha:] */
            const char *end = strstr(re + i + 2, ":]");
            if (end) {
                size_t k = (size_t)(end - (re + i)) + 2;
                memcpy(out + o, re + i, k);
                o += k;
                i += k - 1;
                continue;
            }
        }
        if (in_class && c == ']')
            in_class = false;
        out[o++] = c;
    }
    out[o] = 0;
    return out;
}

/* pre_tokenizer: Sequence [Split {Regex, Isolated, invert false}, ByteLevel {no prefix space,
 * use_regex false}]. */
static qvl_status load_pretok(loader *L, const jv *pt) {
    qvl_tok *t = L->t;
    const jv *type = jget(pt, "type");
    const jv *list = jget(pt, "pretokenizers");
    if (!j_is_obj(pt) || !j_is_str(type)) {
        qvl_errf(L->err, L->err_len, "%s: pre_tokenizer missing or has no type", L->src);
        return QVL_E_FORMAT;
    }
    if (strcmp(type->u.s, "Sequence") != 0 || !j_is_arr(list) ||
        (int)list->n != 2) {
        qvl_errf(L->err, L->err_len,
                 "%s: pre_tokenizer must be a Sequence of Split and ByteLevel (got %.40s)", L->src,
                 type->u.s);
        return QVL_E_UNSUPPORTED;
    }
    const jv *split = list->u.child;
    const jv *bl = split->next;
    const jv *st = jget(split, "type");
    const jv *pat = jget(split, "pattern");
    const jv *regex = jget(pat, "Regex");
    const jv *beh = jget(split, "behavior");
    const jv *inv = jget(split, "invert");
    if (!j_is_str(st) || strcmp(st->u.s, "Split") != 0 || !j_is_str(regex) ||
        !j_is_str(beh) || strcmp(beh->u.s, "Isolated") != 0 ||
        j_is_true(inv)) {
        qvl_errf(L->err, L->err_len,
                 "%s: pre_tokenizer[0] must be a Split with a Regex pattern, behavior Isolated, "
                 "invert false",
                 L->src);
        return QVL_E_UNSUPPORTED;
    }
    const jv *bt = jget(bl, "type");
    const jv *aps = jget(bl, "add_prefix_space");
    const jv *ur = jget(bl, "use_regex");
    if (!j_is_str(bt) || strcmp(bt->u.s, "ByteLevel") != 0 || j_is_true(aps) ||
        !j_is_false(ur)) {
        qvl_errf(L->err, L->err_len,
                 "%s: pre_tokenizer[1] must be ByteLevel with add_prefix_space false and "
                 "use_regex false",
                 L->src);
        return QVL_E_UNSUPPORTED;
    }
    t->gctx = pcre2_general_context_create(pcre_malloc, pcre_free, NULL);
    pcre2_compile_context *cctx = t->gctx ? pcre2_compile_context_create(t->gctx) : NULL;
    bool unsup = false;
    char *pattern = cctx ? widen_space_class(regex->u.s, &unsup) : NULL;
    if (!pattern) {
        pcre2_compile_context_free(cctx);
        if (unsup) {
            qvl_errf(L->err, L->err_len, "%s: pre_tokenizer regex uses \\S inside a class",
                     L->src);
            return QVL_E_UNSUPPORTED;
        }
        qvl_errf(L->err, L->err_len, "%s: out of memory", L->src);
        return QVL_E_NOMEM;
    }
    int code;
    PCRE2_SIZE off;
    t->re = pcre2_compile((PCRE2_SPTR)pattern, PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_UCP, &code,
                          &off, cctx);
    qvl_free(pattern);
    pcre2_compile_context_free(cctx);
    if (!t->re) {
        PCRE2_UCHAR msg[160];
        if (pcre2_get_error_message(code, msg, sizeof msg) < 0)
            strcpy((char *)msg, "unknown error");
        qvl_errf(L->err, L->err_len, "%s: pre_tokenizer regex does not compile: %s (offset %zu)",
                 L->src, (const char *)msg, (size_t)off);
        return code == PCRE2_ERROR_HEAP_FAILED ? QVL_E_NOMEM : QVL_E_FORMAT;
    }
    pcre2_jit_compile(t->re, PCRE2_JIT_COMPLETE); /* optional: interpreter if unavailable */
    return QVL_OK;
}

static qvl_status load_model(loader *L, const jv *model) {
    if (!j_is_obj(model)) {
        qvl_errf(L->err, L->err_len, "%s: \"model\" missing or not an object", L->src);
        return QVL_E_FORMAT;
    }
    const jv *type = jget(model, "type");
    if (type && (!j_is_str(type) || strcmp(type->u.s, "BPE") != 0)) {
        qvl_errf(L->err, L->err_len, "%s: model type %.40s is not supported (BPE only)", L->src,
                 j_is_str(type) ? type->u.s : "?");
        return QVL_E_UNSUPPORTED;
    }
    const jv *bf = jget(model, "byte_fallback");
    const jv *dr = jget(model, "dropout");
    const jv *pre = jget(model, "continuing_subword_prefix");
    const jv *suf = jget(model, "end_of_word_suffix");
    if (j_is_true(bf) || (dr && !j_is_null(dr)) ||
        (j_is_str(pre) && pre->u.s[0]) ||
        (j_is_str(suf) && suf->u.s[0])) {
        qvl_errf(L->err, L->err_len,
                 "%s: BPE byte_fallback, dropout and subword prefix/suffix are not supported",
                 L->src);
        return QVL_E_UNSUPPORTED;
    }
    L->t->ignore_merges = j_is_true(jget(model, "ignore_merges"));
    qvl_status st = load_vocab(L, jget(model, "vocab"));
    if (st)
        return st;
    return load_merges(L, jget(model, "merges"));
}

/* Shared by the loaders; `owned`: json is a heap buffer of len + 1 bytes that is consumed. */
static qvl_status load_json(const char *json, size_t len, bool owned, const char *name,
                            qvl_tok **out, char *err, size_t err_len) {
    jparser J;
    jv *root;
    qvl_status st = jparse(&J, json, len, owned, &root);
    if (st) {
        if (st == QVL_E_NOMEM)
            qvl_errf(err, err_len, "%s: out of memory", name);
        else
            qvl_errf(err, err_len, "%s: malformed JSON at byte %zu: %s", name, J.at, J.what);
        jfree(&J);
        return st;
    }
    qvl_tok *t = qvl_calloc(1, sizeof *t);
    if (!t) {
        jfree(&J);
        qvl_errf(err, err_len, "%s: out of memory", name);
        return QVL_E_NOMEM;
    }
    init_byte_map(t);
    loader L = {t, name, err, err_len};
    if (!j_is_obj(root)) {
        qvl_errf(err, err_len, "%s: top level is not a JSON object", name);
        st = QVL_E_FORMAT;
    }
    if (!st)
        st = load_model(&L, jget(root, "model"));
    if (!st)
        st = load_added(&L, jget(root, "added_tokens"));
    if (!st)
        st = load_normalizer(&L, jget(root, "normalizer"));
    if (!st)
        st = load_pretok(&L, jget(root, "pre_tokenizer"));
    if (!st && t->n_vocab == 0) {
        qvl_errf(err, err_len, "%s: empty vocabulary", name);
        st = QVL_E_FORMAT;
    }
    jfree(&J);
    if (st) {
        qvl_tok_free(t);
        return st;
    }
    for (int32_t i = 0; i < t->n_vocab; i++)
        if (t->dec_len[i] > t->max_tok_bytes)
            t->max_tok_bytes = t->dec_len[i];
    *out = t;
    return QVL_OK;
}

qvl_status qvl_tok_load_named(const char *json, size_t len, const char *name, qvl_tok **out,
                              char *err, size_t err_len) {
    *out = NULL;
    if (!json) {
        qvl_errf(err, err_len, "%s: no data", name);
        return QVL_E_INVAL;
    }
    return load_json(json, len, false, name, out, err, err_len);
}

qvl_status qvl_tok_load_mem(const char *json, size_t len, qvl_tok **out, char *err,
                            size_t err_len) {
    return qvl_tok_load_named(json, len, "tokenizer.json", out, err, err_len);
}

qvl_status qvl_tok_load(const char *path, qvl_tok **out, char *err, size_t err_len) {
    *out = NULL;
    char *buf;
    size_t len;
    qvl_status st = qvl_read_file(path, TOK_MAX_FILE, &buf, &len, err, err_len);
    if (st)
        return st;
    return load_json(buf, len, true, path, out, err, err_len); /* buf is consumed */
}

void qvl_tok_free(qvl_tok *t) {
    if (!t)
        return;
    pcre2_code_free(t->re);
    pcre2_general_context_free(t->gctx);
    qvl_free(t->flags);
    qvl_free(t->dec_off);
    qvl_free(t->dec_len);
    qvl_free(t->arena);
    qvl_free(t->vocab);
    qvl_free(t->merges);
    qvl_free(t->added);
    qvl_free(t);
}

/* ---- encoding ---------------------------------------------------------- */

typedef struct {
    uint64_t h;
    uint32_t p_off, p_len; /* piece bytes in cache_bytes; p_len UINT32_MAX = empty */
    uint32_t i_off, i_n;   /* ids in cache_ids */
} cache_ent;

typedef struct {
    int32_t rank;
    int32_t pos; /* left symbol */
    int32_t left, right;
} heap_ent;

typedef struct {
    int32_t id; /* -1 once merged into its left neighbour */
    int32_t prev, next;
} bpe_sym;

typedef struct {
    const qvl_tok *t;
    char *err;
    size_t err_len;
    /* output */
    int32_t *ids;
    size_t n_ids, cap_ids;
    /* regex */
    pcre2_match_data *md;
    /* NFC scratch */
    int32_t *nfc;
    size_t nfc_cap; /* in int32 units */
    /* BPE scratch */
    bpe_sym *sym;
    heap_ent *heap;
    size_t sym_cap, heap_cap;
    /* piece cache */
    cache_ent *cache;
    char *cache_bytes;
    int32_t *cache_ids;
    size_t cb_len, cb_cap, ci_len, ci_cap;
} enc_ctx;

static qvl_status grow(void **p, size_t *cap, size_t need, size_t elem) {
    if (need <= *cap)
        return QVL_OK;
    size_t c = *cap ? *cap : 64;
    while (c < need)
        if (!qvl_size_mul(c, 2, &c))
            return QVL_E_NOMEM;
    size_t bytes;
    if (!qvl_size_mul(c, elem, &bytes))
        return QVL_E_NOMEM;
    void *q = qvl_realloc(*p, bytes);
    if (!q)
        return QVL_E_NOMEM;
    *p = q;
    *cap = c;
    return QVL_OK;
}

static qvl_status emit(enc_ctx *E, int32_t id) {
    if (E->n_ids == E->cap_ids &&
        grow((void **)&E->ids, &E->cap_ids, E->n_ids + 1, sizeof *E->ids))
        return QVL_E_NOMEM;
    E->ids[E->n_ids++] = id;
    return QVL_OK;
}

static void heap_push(heap_ent *h, size_t *n, heap_ent e) {
    size_t i = (*n)++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (h[p].rank < e.rank || (h[p].rank == e.rank && h[p].pos < e.pos))
            break;
        h[i] = h[p];
        i = p;
    }
    h[i] = e;
}

static heap_ent heap_pop(heap_ent *h, size_t *n) {
    heap_ent top = h[0];
    heap_ent last = h[--(*n)];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= *n)
            break;
        if (c + 1 < *n &&
            (h[c + 1].rank < h[c].rank || (h[c + 1].rank == h[c].rank && h[c + 1].pos < h[c].pos)))
            c++;
        if (last.rank < h[c].rank || (last.rank == h[c].rank && last.pos < h[c].pos))
            break;
        h[i] = h[c];
        i = c;
    }
    h[i] = last;
    return top;
}

static void try_pair(const qvl_tok *t, enc_ctx *E, size_t *nh, int32_t l) {
    if (l < 0 || E->sym[l].next < 0)
        return;
    int32_t a = E->sym[l].id;
    int32_t b = E->sym[E->sym[l].next].id;
    const merge_slot *m = merge_find(t, a, b);
    if (m)
        heap_push(E->heap, nh, (heap_ent){m->rank, l, a, b});
}

/* BPE of one pre-token (raw bytes p[0..n)); appends ids. */
static qvl_status bpe_piece(enc_ctx *E, const char *p, size_t n) {
    const qvl_tok *t = E->t;
    if (t->ignore_merges) {
        int32_t id = vocab_find(t, p, n);
        if (id >= 0)
            return emit(E, id);
    }
    if (n == 1)
        return t->byte_id[(uint8_t)p[0]] >= 0 ? emit(E, t->byte_id[(uint8_t)p[0]]) : QVL_OK;
    uint64_t h = 0;
    cache_ent *ce = NULL;
    if (n <= CACHE_MAX_PIECE) {
        h = hash_bytes(p, n);
        ce = &E->cache[h & (CACHE_SLOTS - 1)];
        if (ce->p_len == n && ce->h == h && memcmp(E->cache_bytes + ce->p_off, p, n) == 0) {
            for (uint32_t i = 0; i < ce->i_n; i++)
                if (emit(E, E->cache_ids[ce->i_off + i]))
                    return QVL_E_NOMEM;
            return QVL_OK;
        }
    }
    if (n > (size_t)INT32_MAX)
        return QVL_E_LIMIT;
    if (grow((void **)&E->sym, &E->sym_cap, n, sizeof(bpe_sym)) ||
        grow((void **)&E->heap, &E->heap_cap, 3 * n, sizeof(heap_ent)))
        return QVL_E_NOMEM;
    bpe_sym *sym = E->sym;
    int32_t ns = 0;
    for (size_t i = 0; i < n; i++) {
        int32_t id = t->byte_id[(uint8_t)p[i]];
        if (id < 0)
            continue; /* no token for this byte and no unk: dropped, as HF does */
        sym[ns] = (bpe_sym){id, ns - 1, ns + 1};
        ns++;
    }
    if (ns > 0)
        sym[ns - 1].next = -1;
    size_t nh = 0;
    for (int32_t i = 0; i + 1 < ns; i++)
        try_pair(t, E, &nh, i);
    /* initial pairs plus at most 2 per merge: fewer than 3n heap entries */
    while (nh > 0) {
        heap_ent top = heap_pop(E->heap, &nh);
        int32_t l = top.pos;
        int32_t r = sym[l].next;
        if (sym[l].id != top.left || r < 0 || sym[r].id != top.right)
            continue; /* stale: a neighbour was merged since this pair was queued */
        sym[l].id = merge_find(t, top.left, top.right)->id;
        sym[r].id = -1;
        sym[l].next = sym[r].next;
        if (sym[r].next >= 0)
            sym[sym[r].next].prev = l;
        try_pair(t, E, &nh, sym[l].prev);
        try_pair(t, E, &nh, l);
    }
    size_t first = E->n_ids;
    for (int32_t i = ns > 0 ? 0 : -1; i >= 0; i = sym[i].next)
        if (emit(E, sym[i].id))
            return QVL_E_NOMEM;
    if (ce) {
        size_t k = E->n_ids - first;
        if (E->cb_len + n > CACHE_ARENA_LIMIT || E->ci_len + k > CACHE_ARENA_LIMIT) {
            for (size_t i = 0; i < CACHE_SLOTS; i++)
                E->cache[i].p_len = UINT32_MAX;
            E->cb_len = 0;
            E->ci_len = 0;
        }
        if (grow((void **)&E->cache_bytes, &E->cb_cap, E->cb_len + n, 1) ||
            grow((void **)&E->cache_ids, &E->ci_cap, E->ci_len + k, sizeof(int32_t)))
            return QVL_E_NOMEM;
        memcpy(E->cache_bytes + E->cb_len, p, n);
        if (k) /* no ids (every byte dropped): E->ids may still be NULL */
            memcpy(E->cache_ids + E->ci_len, E->ids + first, k * sizeof(int32_t));
        ce->h = h;
        ce->p_off = (uint32_t)E->cb_len;
        ce->p_len = (uint32_t)n;
        ce->i_off = (uint32_t)E->ci_len;
        ce->i_n = (uint32_t)k;
        E->cb_len += n;
        E->ci_len += k;
    }
    return QVL_OK;
}

/* NFC of s[0..n) (valid UTF-8) into E->nfc; points *out, *out_n at the result. */
static qvl_status nfc_segment(enc_ctx *E, const char *s, size_t n, const char **out,
                              size_t *out_n) {
    const utf8proc_option_t opt = UTF8PROC_STABLE | UTF8PROC_COMPOSE;
    utf8proc_ssize_t need = utf8proc_decompose((const utf8proc_uint8_t *)s, (utf8proc_ssize_t)n,
                                               E->nfc, (utf8proc_ssize_t)E->nfc_cap, opt);
    if (need < 0) {
        qvl_errf(E->err, E->err_len, "NFC failed: %s", utf8proc_errmsg(need));
        return QVL_E_INVAL;
    }
    if ((size_t)need + 1 > E->nfc_cap) { /* +1: reencode writes a NUL after the bytes */
        if (grow((void **)&E->nfc, &E->nfc_cap, (size_t)need + 1, sizeof(int32_t)))
            return QVL_E_NOMEM;
        need = utf8proc_decompose((const utf8proc_uint8_t *)s, (utf8proc_ssize_t)n, E->nfc,
                                  (utf8proc_ssize_t)E->nfc_cap, opt);
        if (need < 0) {
            qvl_errf(E->err, E->err_len, "NFC failed: %s", utf8proc_errmsg(need));
            return QVL_E_INVAL;
        }
    }
    utf8proc_ssize_t len = utf8proc_reencode(E->nfc, need, opt);
    if (len < 0) {
        qvl_errf(E->err, E->err_len, "NFC failed: %s", utf8proc_errmsg(len));
        return QVL_E_INVAL;
    }
    *out = (const char *)E->nfc;
    *out_n = (size_t)len;
    return QVL_OK;
}

/* Normalise, split and BPE one span of text that contains no added token. */
static qvl_status encode_segment(enc_ctx *E, const char *s, size_t n) {
    const qvl_tok *t = E->t;
    if (n == 0)
        return QVL_OK;
    if (t->nfc) {
        bool ascii = true;
        for (size_t i = 0; i < n && ascii; i++)
            ascii = (uint8_t)s[i] < 0x80;
        if (!ascii) {
            qvl_status st = nfc_segment(E, s, n, &s, &n);
            if (st)
                return st;
        }
    }
    size_t prev = 0;
    size_t off = 0;
    while (off < n) {
        int rc = pcre2_match(t->re, (PCRE2_SPTR)s, n, off, PCRE2_NO_UTF_CHECK, E->md, NULL);
        if (rc == PCRE2_ERROR_JIT_STACKLIMIT)
            rc = pcre2_match(t->re, (PCRE2_SPTR)s, n, off, PCRE2_NO_UTF_CHECK | PCRE2_NO_JIT,
                             E->md, NULL);
        if (rc == PCRE2_ERROR_NOMATCH)
            break;
        if (rc < 0) {
            PCRE2_UCHAR msg[120];
            if (pcre2_get_error_message(rc, msg, sizeof msg) < 0)
                strcpy((char *)msg, "unknown error");
            qvl_errf(E->err, E->err_len, "pre-tokenizer regex failed: %s", (const char *)msg);
            return rc == PCRE2_ERROR_NOMEMORY ? QVL_E_NOMEM : QVL_E_LIMIT;
        }
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(E->md);
        size_t ms = ov[0];
        size_t me = ov[1];
        if (me <= ms) { /* empty match: step one character, the gap absorbs it */
            off = ms + 1;
            while (off < n && ((uint8_t)s[off] & 0xC0) == 0x80)
                off++;
            continue;
        }
        if (ms > prev && bpe_piece(E, s + prev, ms - prev))
            return QVL_E_NOMEM;
        if (bpe_piece(E, s + ms, me - ms))
            return QVL_E_NOMEM;
        prev = off = me;
    }
    if (prev < n && bpe_piece(E, s + prev, n - prev))
        return QVL_E_NOMEM;
    return QVL_OK;
}

/* Longest added token starting at s[0..n), or NULL. */
static const added_tok *added_match(const qvl_tok *t, const char *s, size_t n) {
    const added_tok *best = NULL;
    for (size_t i = 0; i < t->n_added; i++) {
        const added_tok *a = &t->added[i];
        if (a->len <= n && (!best || a->len > best->len) &&
            memcmp(t->arena + a->off, s, a->len) == 0)
            best = a;
    }
    return best;
}

static void enc_free(enc_ctx *E) {
    pcre2_match_data_free(E->md);
    qvl_free(E->nfc);
    qvl_free(E->sym);
    qvl_free(E->heap);
    qvl_free(E->cache);
    qvl_free(E->cache_bytes);
    qvl_free(E->cache_ids);
}

qvl_status qvl_tok_encode(const qvl_tok *t, const char *text, size_t len, int32_t **ids,
                          size_t *n, char *err, size_t err_len) {
    *ids = NULL;
    *n = 0;
    if (!t || (!text && len)) {
        qvl_errf(err, err_len, "tokenize: no tokenizer or no text");
        return QVL_E_INVAL;
    }
    size_t bad = utf8_check((const uint8_t *)text, len);
    if (bad < len) {
        qvl_errf(err, err_len, "tokenize: invalid UTF-8 at byte %zu (0x%02x)", bad,
                 (unsigned)(uint8_t)text[bad]);
        return QVL_E_INVAL;
    }
    enc_ctx E = {0};
    E.t = t;
    E.err = err;
    E.err_len = err_len;
    qvl_status st = QVL_OK;
    E.md = pcre2_match_data_create_from_pattern(t->re, t->gctx);
    E.cache = qvl_malloc(CACHE_SLOTS * sizeof *E.cache);
    if (!E.md || !E.cache) {
        st = QVL_E_NOMEM;
        goto done;
    }
    for (size_t i = 0; i < CACHE_SLOTS; i++)
        E.cache[i].p_len = UINT32_MAX;
    size_t seg = 0;
    size_t i = 0;
    while (t->n_added && len >= t->added_min_len && i + t->added_min_len <= len) {
        const added_tok *a = t->added_first[(uint8_t)text[i]] ? added_match(t, text + i, len - i)
                                                               : NULL;
        if (!a) {
            i++;
            continue;
        }
        st = encode_segment(&E, text + seg, i - seg);
        if (!st)
            st = emit(&E, a->id);
        if (st)
            goto done;
        i += a->len;
        seg = i;
    }
    st = encode_segment(&E, text + seg, len - seg);
done:
    if (st == QVL_E_NOMEM)
        qvl_errf(err, err_len, "tokenize: out of memory");
    enc_free(&E);
    if (st) {
        qvl_free(E.ids);
        return st;
    }
    *ids = E.ids;
    *n = E.n_ids;
    return QVL_OK;
}

/* ---- decoding ---------------------------------------------------------- */

static const char k_fffd[3] = {(char)0xEF, (char)0xBF, (char)0xBD};

qvl_status qvl_tok_decode(const qvl_tok *t, const int32_t *ids, size_t n, bool skip_special,
                          char **text, size_t *len) {
    *text = NULL;
    if (len)
        *len = 0;
    if (!t || (!ids && n))
        return QVL_E_INVAL;
    size_t total = 0;
    for (size_t i = 0; i < n; i++) {
        if (!qvl_tok_is_valid(t, ids[i]))
            return QVL_E_INVAL;
        if (!(skip_special && (t->flags[ids[i]] & F_SPECIAL)))
            total += t->dec_len[ids[i]]; /* <= n * 4 GiB: cannot overflow size_t on 64-bit */
    }
    size_t cap;
    if (!qvl_size_mul(total, 3, &cap) || !qvl_size_add(cap, 1, &cap))
        return QVL_E_NOMEM;
    char *raw = qvl_malloc(total ? total : 1);
    char *out = qvl_malloc(cap);
    if (!raw || !out) {
        qvl_free(raw);
        qvl_free(out);
        return QVL_E_NOMEM;
    }
    size_t r = 0;
    for (size_t i = 0; i < n; i++) {
        if (skip_special && (t->flags[ids[i]] & F_SPECIAL))
            continue;
        memcpy(raw + r, t->arena + t->dec_off[ids[i]], t->dec_len[ids[i]]);
        r += t->dec_len[ids[i]];
    }
    size_t o = 0;
    for (size_t i = 0; i < r;) {
        size_t k;
        int c = utf8_next((const uint8_t *)raw + i, r - i, &k);
        if (c == U8_OK) {
            memcpy(out + o, raw + i, k);
            o += k;
        } else {
            memcpy(out + o, k_fffd, 3);
            o += 3;
        }
        i += k;
    }
    out[o] = 0;
    qvl_free(raw);
    *text = out;
    if (len)
        *len = o;
    return QVL_OK;
}

void qvl_tok_stream_init(qvl_tok_stream *s, bool skip_special) {
    memset(s, 0, sizeof *s);
    s->skip_special = skip_special;
}

qvl_status qvl_tok_stream_push(qvl_tok_stream *s, const qvl_tok *t, int32_t id, char *out,
                               size_t cap, size_t *n_out) {
    *n_out = 0;
    if (!t || !qvl_tok_is_valid(t, id))
        return QVL_E_INVAL;
    if (s->skip_special && (t->flags[id] & F_SPECIAL))
        return QVL_OK;
    const uint8_t *b = (const uint8_t *)t->arena + t->dec_off[id];
    size_t n = t->dec_len[id];
    size_t o = 0;
    size_t i = 0;
    uint8_t pend[4];
    size_t np = 0;
    if (s->n_pend) { /* complete the held-back sequence with the first bytes of this token */
        uint8_t tmp[8];
        size_t m = s->n_pend;
        memcpy(tmp, s->pend, m);
        size_t take = n < 4 ? n : 4;
        memcpy(tmp + m, b, take);
        size_t k;
        int c = utf8_next(tmp, m + take, &k);
        if (c == U8_SHORT) { /* still incomplete: all of this token is held back too */
            memcpy(pend, tmp, m + take);
            np = m + take;
            i = n;
        } else {
            if (cap < (c == U8_OK ? k : 3))
                return QVL_E_LIMIT;
            if (c == U8_OK)
                memcpy(out, tmp, k);
            else
                memcpy(out, k_fffd, 3);
            o = c == U8_OK ? k : 3;
            i = k - m; /* k >= m: the pending prefix was valid */
        }
    }
    while (i < n) {
        size_t k;
        int c = utf8_next(b + i, n - i, &k);
        if (c == U8_SHORT) {
            memcpy(pend, b + i, k);
            np = k;
            break;
        }
        size_t w = c == U8_OK ? k : 3;
        if (cap - o < w)
            return QVL_E_LIMIT;
        memcpy(out + o, c == U8_OK ? (const void *)(b + i) : (const void *)k_fffd, w);
        o += w;
        i += k;
    }
    memcpy(s->pend, pend, np);
    s->n_pend = (uint8_t)np;
    *n_out = o;
    return QVL_OK;
}

size_t qvl_tok_stream_flush(qvl_tok_stream *s, char *out, size_t cap) {
    if (!s->n_pend || cap < 3)
        return 0;
    memcpy(out, k_fffd, 3);
    s->n_pend = 0;
    return 3;
}

/* ---- lookups ----------------------------------------------------------- */

int32_t qvl_tok_id(const qvl_tok *t, const char *s) {
    if (!t || !s)
        return -1;
    size_t n = strlen(s);
    for (size_t i = 0; i < t->n_added; i++)
        if (t->added[i].len == n && memcmp(t->arena + t->added[i].off, s, n) == 0)
            return t->added[i].id;
    char tmp[1024];
    size_t bl;
    if (n <= sizeof tmp && bytelevel_to_bytes(t, s, n, tmp, &bl))
        return vocab_find(t, tmp, bl);
    for (int32_t id = 0; id < t->n_vocab; id++) /* rare: vocab strings outside the byte map */
        if ((t->flags[id] & (F_VOCAB | F_BYTELEVEL | F_ADDED)) == F_VOCAB &&
            t->dec_len[id] == n && memcmp(t->arena + t->dec_off[id], s, n) == 0)
            return id;
    return -1;
}

bool qvl_tok_is_valid(const qvl_tok *t, int32_t id) {
    return t && id >= 0 && id < t->n_vocab && (t->flags[id] & F_VALID);
}

bool qvl_tok_is_special(const qvl_tok *t, int32_t id) {
    return qvl_tok_is_valid(t, id) && (t->flags[id] & F_SPECIAL);
}

int32_t qvl_tok_n_vocab(const qvl_tok *t) {
    return t ? t->n_vocab : 0;
}

int32_t qvl_tok_n_added(const qvl_tok *t) {
    return t ? (int32_t)t->n_added : 0;
}

const char *qvl_tok_token_bytes(const qvl_tok *t, int32_t id, size_t *len) {
    if (!qvl_tok_is_valid(t, id)) {
        if (len)
            *len = 0;
        return NULL;
    }
    if (len)
        *len = t->dec_len[id];
    return t->arena + t->dec_off[id];
}

size_t qvl_tok_max_token_bytes(const qvl_tok *t) {
    return t ? t->max_tok_bytes : 0;
}
