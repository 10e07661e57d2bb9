/* sample.c - token sampler (penalties, temperature, top-k, top-p, min-p, seeded draw) and the
 * stop-string matcher for streamed text. Semantics and order of operations: see sample.h. */
#include "sample.h"
#include "common.h"

#include <math.h>
#include <string.h>

/* Weights must not depend on FMA contraction (GCC in ISO C mode does not contract; clang does
 * by default), so that the same logits and seed give the same token on every build. */
#if defined(__clang__)
#    pragma STDC FP_CONTRACT OFF
#endif

/* ---- PRNG: xoshiro256** seeded through splitmix64 ---------------------------------------- */

uint64_t qvl_splitmix64(uint64_t *state) {
    uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

void qvl_rng_seed(uint64_t st[4], uint64_t seed) {
    uint64_t x = seed;
    for (int i = 0; i < 4; i++)
        st[i] = qvl_splitmix64(&x);
    /* splitmix64 is a bijection of distinct counters, so the state cannot be all zero */
}

static inline uint64_t rotl64(uint64_t x, int k) {
    return (x << k) | (x >> (64 - k));
}

uint64_t qvl_rng_next(uint64_t st[4]) {
    uint64_t result = rotl64(st[1] * 5, 7) * 9;
    uint64_t t = st[1] << 17;
    st[2] ^= st[0];
    st[3] ^= st[1];
    st[1] ^= st[2];
    st[0] ^= st[3];
    st[2] ^= t;
    st[3] = rotl64(st[3], 45);
    return result;
}

/* uniform double in [0, 1) with 53 random bits */
static double rng_double(uint64_t st[4]) {
    return (double)(qvl_rng_next(st) >> 11) * (1.0 / 9007199254740992.0);
}

/* ---- sampler ----------------------------------------------------------------------------- */

/* exp(x) for x <= 0 using only IEEE basic operations, so weights (and therefore draws) are
 * bit-identical on every platform whatever its libm, and the loop has no library call.
 * Cody-Waite reduction x = k ln2 + r, |r| <= ln2 / 2, then a degree-7 Taylor polynomial
 * (truncation error < 1e-8 relative). x < -87.3 (below FLT_MIN), -inf and NaN give 0. */
static inline float exp_neg(float x) {
    if (!(x >= -87.3f))
        return 0.0f;
    const float t = x * 1.44269504f - 0.5f;
    int k = (int)t; /* t < 0: truncation is ceil, so k = ceil(x log2 e - 0.5) */
    const float kf = (float)k;
    float r = x - kf * 0.693145752f; /* ln2 high part, 9 trailing zero bits: exact product */
    r = r - kf * 1.42860677e-6f;     /* ln2 low part */
    float p = 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    union {
        uint32_t u;
        float f;
    } sc;
    sc.u = (uint32_t)(k + 127) << 23; /* 2^k, k >= -126 here */
    return p * sc.f;
}

typedef struct cand {
    float v;    /* logit (penalised, then divided by the temperature) */
    float w;    /* unnormalised probability exp(v - max) */
    int32_t id; /* token id */
} cand;

struct qvl_sampler {
    qvl_sampling p;
    int32_t n_vocab;
    uint64_t rng[4];
    uint8_t *seen;     /* [n_vocab] 1 when the id was accepted (prompt or generated) */
    uint32_t *count;   /* [n_vocab] times the id was generated (saturating) */
    int32_t *seen_ids; /* [n_vocab] distinct ids with seen = 1, in first-seen order */
    int32_t *gen_ids;  /* [n_vocab] distinct ids with count > 0 */
    int32_t n_seen;
    int32_t n_gen;
    cand *cand; /* [n_vocab] scratch */
};

qvl_sampling qvl_sampling_default(void) {
    qvl_sampling p;
    memset(&p, 0, sizeof p);
    p.temperature = 0.0f;
    p.top_k = 0;
    p.top_p = 1.0f;
    p.min_p = 0.0f;
    p.repetition_penalty = 1.0f;
    p.presence_penalty = 0.0f;
    p.frequency_penalty = 0.0f;
    p.seed = 0;
    return p;
}

static bool sampling_valid(const qvl_sampling *p) {
    if (!isfinite(p->temperature) || isnan(p->top_p) || isnan(p->min_p) || p->min_p > 1.0f)
        return false;
    if (!isfinite(p->repetition_penalty) || !(p->repetition_penalty > 0.0f))
        return false;
    return isfinite(p->presence_penalty) && isfinite(p->frequency_penalty);
}

qvl_status qvl_sampler_create(const qvl_sampling *p, int32_t n_vocab, qvl_sampler **out) {
    if (!out)
        return QVL_E_INVAL;
    *out = NULL;
    if (!p || n_vocab <= 0 || !sampling_valid(p))
        return QVL_E_INVAL;
    qvl_sampler *s = qvl_calloc(1, sizeof *s);
    if (!s)
        return QVL_E_NOMEM;
    size_t n = (size_t)n_vocab;
    s->p = *p;
    s->n_vocab = n_vocab;
    s->seen = qvl_calloc(n, sizeof *s->seen);
    s->count = qvl_calloc(n, sizeof *s->count);
    s->seen_ids = qvl_calloc(n, sizeof *s->seen_ids);
    s->gen_ids = qvl_calloc(n, sizeof *s->gen_ids);
    s->cand = qvl_calloc(n, sizeof *s->cand);
    if (!s->seen || !s->count || !s->seen_ids || !s->gen_ids || !s->cand) {
        qvl_sampler_free(s);
        return QVL_E_NOMEM;
    }
    qvl_rng_seed(s->rng, p->seed);
    *out = s;
    return QVL_OK;
}

void qvl_sampler_free(qvl_sampler *s) {
    if (!s)
        return;
    qvl_free(s->seen);
    qvl_free(s->count);
    qvl_free(s->seen_ids);
    qvl_free(s->gen_ids);
    qvl_free(s->cand);
    qvl_free(s);
}

void qvl_sampler_reset(qvl_sampler *s, uint64_t seed) {
    if (!s)
        return;
    for (int32_t i = 0; i < s->n_seen; i++)
        s->seen[s->seen_ids[i]] = 0;
    for (int32_t i = 0; i < s->n_gen; i++)
        s->count[s->gen_ids[i]] = 0;
    s->n_seen = 0;
    s->n_gen = 0;
    s->p.seed = seed;
    qvl_rng_seed(s->rng, seed);
}

qvl_status qvl_sampler_set_params(qvl_sampler *s, const qvl_sampling *p) {
    if (!s || !p || !sampling_valid(p))
        return QVL_E_INVAL;
    uint64_t seed = s->p.seed;
    s->p = *p;
    s->p.seed = seed;
    return QVL_OK;
}

static void mark_seen(qvl_sampler *s, int32_t id) {
    if (!s->seen[id]) {
        s->seen[id] = 1;
        s->seen_ids[s->n_seen++] = id;
    }
}

qvl_status qvl_sampler_accept_prompt(qvl_sampler *s, const int32_t *ids, size_t n) {
    if (!s || (n > 0 && !ids))
        return QVL_E_INVAL;
    for (size_t i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= s->n_vocab)
            return QVL_E_INVAL;
    for (size_t i = 0; i < n; i++)
        mark_seen(s, ids[i]);
    return QVL_OK;
}

qvl_status qvl_sampler_accept(qvl_sampler *s, int32_t id) {
    if (!s || id < 0 || id >= s->n_vocab)
        return QVL_E_INVAL;
    mark_seen(s, id);
    if (s->count[id] == 0)
        s->gen_ids[s->n_gen++] = id;
    if (s->count[id] != UINT32_MAX)
        s->count[id]++;
    return QVL_OK;
}

/* a ranks before b: larger value, then lower id */
static inline bool better(const cand *a, const cand *b) {
    return a->v > b->v || (a->v == b->v && a->id < b->id);
}

/* sift c[i] down a heap of n entries whose root is the WORST entry */
static void sift_down(cand *c, size_t n, size_t i) {
    for (;;) {
        size_t l = 2 * i + 1;
        if (l >= n)
            return;
        size_t w = l;
        if (l + 1 < n && better(&c[w], &c[l + 1]))
            w = l + 1;
        if (!better(&c[i], &c[w]))
            return;
        cand t = c[i];
        c[i] = c[w];
        c[w] = t;
        i = w;
    }
}

/* Sort the heap c[0..k) (worst at the root) best first. */
static void heap_drain(cand *c, size_t k) {
    for (size_t end = k - 1; end > 0; end--) {
        cand t = c[0];
        c[0] = c[end];
        c[end] = t;
        sift_down(c, end, 0);
    }
}

/* Rearrange c[0..n) so that c[0..k) holds the k best entries (by v, ties to lower id) sorted
 * best first; the order of the rest is unspecified. O(n log k + k log k), in place. */
static void select_top(cand *c, size_t n, size_t k) {
    if (k > n)
        k = n;
    if (k == 0)
        return;
    for (size_t i = k / 2; i-- > 0;)
        sift_down(c, k, i);
    for (size_t i = k; i < n; i++) {
        if (better(&c[i], &c[0])) {
            cand t = c[0];
            c[0] = c[i];
            c[i] = t;
            sift_down(c, k, 0);
        }
    }
    heap_drain(c, k);
}

static void apply_penalties(const qvl_sampler *s, float *logits) {
    float rp = s->p.repetition_penalty;
    if (rp != 1.0f) {
        for (int32_t i = 0; i < s->n_seen; i++) {
            float *l = &logits[s->seen_ids[i]];
            *l = *l > 0.0f ? *l / rp : *l * rp;
        }
    }
    float pp = s->p.presence_penalty;
    float fp = s->p.frequency_penalty;
    if (pp != 0.0f || fp != 0.0f) {
        for (int32_t i = 0; i < s->n_gen; i++) {
            int32_t id = s->gen_ids[i];
            logits[id] -= pp + fp * (float)s->count[id];
        }
    }
}

/* Top-p: move the smallest set of best candidates holding `top_p` of the mass `total` to the
 * front of c[0..n) and return its size (>= 1); the kept set is not sorted. Weighted
 * quickselect: expected O(n), with a heap-sort fallback after too many rounds so a bad pivot
 * sequence cannot go quadratic. Pivots are chosen by position, so the result is deterministic. */
static size_t nucleus_select(cand *c, size_t lo, size_t hi, double acc, double target) {
    /* acc: mass of c[0..lo), all of which is kept */
    for (int round = 0; hi - lo > 32 && round < 64; round++) {
        /* median of three by position, moved to hi - 1 */
        size_t a = lo;
        size_t b = lo + (hi - lo) / 2;
        size_t z = hi - 1;
        size_t m = better(&c[a], &c[b])
                       ? (better(&c[b], &c[z]) ? b : (better(&c[a], &c[z]) ? z : a))
                       : (better(&c[a], &c[z]) ? a : (better(&c[b], &c[z]) ? z : b));
        cand t = c[m];
        c[m] = c[z];
        c[z] = t;
        const cand pv = c[z];
        size_t store = lo;
        double mass = 0.0;
        for (size_t i = lo; i < z; i++) {
            if (better(&c[i], &pv)) {
                mass += c[i].w;
                t = c[i];
                c[i] = c[store];
                c[store] = t;
                store++;
            }
        }
        c[z] = c[store];
        c[store] = pv;
        if (acc + mass >= target) {
            hi = store; /* the answer lies among the better ones */
        } else if (acc + mass + pv.w >= target) {
            return store + 1; /* the pivot completes the set */
        } else {
            acc += mass + pv.w;
            lo = store + 1;
        }
    }
    select_top(c + lo, hi - lo, hi - lo);
    for (size_t j = lo; j < hi; j++) {
        acc += c[j].w;
        if (acc >= target)
            return j + 1;
    }
    return hi > 0 ? hi : 1; /* rounding: the set falls just short of target */
}

#define TOP_P_BUCKETS 256

/* Top-p front end: for large candidate sets, histogram the weights by (vmax - v) into buckets,
 * keep every bucket above the one where the cumulative mass reaches the target, and run the
 * quickselect only inside that boundary bucket. Two predictable O(n) passes instead of a
 * branchy partition of the whole vocabulary. vmin/vmax bound the candidates' v. */
static size_t apply_top_p(cand *c, size_t n, double total, float top_p, float vmin, float vmax) {
    if (top_p <= 0.0f) {
        select_top(c, n, 1);
        return 1;
    }
    const double target = (double)top_p * total;
    const float range = vmax - vmin;
    if (n <= 1024 || !isfinite(range) || !(range > 0.0f))
        return nucleus_select(c, 0, n, 0.0, target);
    double mass[TOP_P_BUCKETS] = {0};
    const float scale = (float)TOP_P_BUCKETS / range;
    for (size_t j = 0; j < n; j++) {
        float d = (vmax - c[j].v) * scale;
        int b = d < (float)(TOP_P_BUCKETS - 1) ? (int)d : TOP_P_BUCKETS - 1;
        mass[b] += c[j].w;
    }
    int bb = 0;
    double acc = 0.0;
    while (bb < TOP_P_BUCKETS - 1 && acc + mass[bb] < target)
        acc += mass[bb++];
    /* move buckets < bb to the front, then bucket bb after them */
    size_t k1 = 0;
    for (size_t j = 0; j < n; j++) {
        float d = (vmax - c[j].v) * scale;
        int b = d < (float)(TOP_P_BUCKETS - 1) ? (int)d : TOP_P_BUCKETS - 1;
        if (b < bb) {
            cand t = c[j];
            c[j] = c[k1];
            c[k1++] = t;
        }
    }
    size_t k2 = k1;
    for (size_t j = k1; j < n; j++) {
        float d = (vmax - c[j].v) * scale;
        int b = d < (float)(TOP_P_BUCKETS - 1) ? (int)d : TOP_P_BUCKETS - 1;
        if (b == bb) {
            cand t = c[j];
            c[j] = c[k2];
            c[k2++] = t;
        }
    }
    /* acc was summed by bucket; recount the kept prefix in the same order the select uses */
    acc = 0.0;
    for (size_t j = 0; j < k1; j++)
        acc += c[j].w;
    if (acc >= target) /* rounding put the crossing inside the kept buckets */
        return nucleus_select(c, 0, k1, 0.0, target);
    return nucleus_select(c, k1, k2, acc, target);
}

/* The passes over the whole vocabulary (152k logits for Qwen3-VL, once per generated token) go
 * through blocks of SB values with fixed-trip inner loops the compiler turns into vector
 * compares and maxima; only the rare block that holds a NaN, the largest value or a top-k
 * contender is looked at one value at a time. */
#define SB 64

/* NaN -> -inf in place; returns how many logits are above -inf */
static size_t sanitize(float *l, int32_t nv) {
    size_t live = 0;
    int32_t i = 0;
    for (; i + SB <= nv; i += SB) {
        int nan = 0, up = 0;
        for (int j = 0; j < SB; j++) {
            nan |= l[i + j] != l[i + j];
            up += l[i + j] > -INFINITY;
        }
        if (nan)
            for (int j = 0; j < SB; j++)
                if (isnan(l[i + j]))
                    l[i + j] = -INFINITY;
        live += (size_t)up;
    }
    for (; i < nv; i++) {
        if (isnan(l[i]))
            l[i] = -INFINITY;
        live += l[i] > -INFINITY;
    }
    return live;
}

/* the largest of l[0..n) (a NaN never is), -inf when there is none: SB lanes (independent
 * vector maxima) folded to 16, then to one */
static float max_of(const float *l, int32_t n) {
    float lane[SB], mx = -INFINITY;
    for (int t = 0; t < SB; t++)
        lane[t] = -INFINITY;
    int32_t i = 0;
    for (; i + SB <= n; i += SB)
        for (int t = 0; t < SB; t++)
            lane[t] = l[i + t] > lane[t] ? l[i + t] : lane[t];
    for (int r = 16; r < SB; r += 16)
        for (int t = 0; t < 16; t++)
            lane[t] = lane[r + t] > lane[t] ? lane[r + t] : lane[t];
    for (int t = 0; t < 16; t++)
        mx = lane[t] > mx ? lane[t] : mx;
    for (; i < n; i++)
        mx = l[i] > mx ? l[i] : mx;
    return mx;
}

/* whether one of l[0..n) is above t (a NaN is not) */
static bool any_above(const float *l, int n, float t) {
    int any = 0;
    for (int j = 0; j < n; j++)
        any |= l[j] > t;
    return any;
}

/* the first index of the largest value (none of them NaN), -1 when all are -inf */
static int32_t argmax_first(const float *l, int32_t nv) {
    const float mx = max_of(l, nv);
    if (mx == -INFINITY)
        return -1;
    int32_t i = 0;
    for (; i + SB <= nv; i += SB) {
        int hit = 0;
        for (int j = 0; j < SB; j++)
            hit |= l[i + j] == mx;
        if (hit)
            break;
    }
    for (; i < nv; i++)
        if (l[i] == mx)
            return i;
    return -1; /* not reached */
}

/* select_top(c, n, k) on the candidates (every logit above -inf, in id order) without writing
 * them out: the heap is built from the first k and then fed the rest in the same order, so it
 * goes through the same states and ends with the same k entries in the same order. A block with
 * no value above the heap's worst is skipped whole: a later id with an equal value never ranks
 * before it. Needs more than k candidates. */
static void top_k_stream(cand *c, const float *l, int32_t nv, size_t k) {
    size_t n = 0;
    int32_t i = 0;
    for (; i < nv && n < k; i++)
        if (l[i] > -INFINITY) {
            c[n].v = l[i];
            c[n].id = i;
            n++;
        }
    for (size_t h = k / 2; h-- > 0;)
        sift_down(c, k, h);
    for (; i < nv; i += SB) {
        int e = nv - i < SB ? nv - i : SB;
        /* the constant SB in the common call is what lets the compiler vectorise the test */
        if (!(e == SB ? any_above(l + i, SB, c[0].v) : any_above(l + i, e, c[0].v)))
            continue;
        for (int j = 0; j < e; j++) {
            cand x = {l[i + j], 0.0f, i + j};
            if (x.v > -INFINITY && better(&x, &c[0])) {
                c[0] = x;
                sift_down(c, k, 0);
            }
        }
    }
    heap_drain(c, k);
}

/* Steps 0-8 of the header: sanitise, penalise, and leave the surviving candidates with their
 * unnormalised weights in s->cand[0..*n_out), *total their sum. Greedy leaves the argmax alone
 * with weight 1. QVL_E_INVAL when no logit is above -inf. */
static qvl_status filter(qvl_sampler *s, float *logits, size_t *n_out, double *total_out) {
    const int32_t nv = s->n_vocab;
    /* penalties before NaNs become -inf: a NaN stays NaN through them and -inf stays -inf, so
     * the order does not change the result, and one pass then counts what a penalty took to
     * -inf (or to NaN: inf - inf) as well */
    apply_penalties(s, logits);
    size_t live = sanitize(logits, nv);

    if (s->p.temperature <= 0.0f) {
        int32_t best = argmax_first(logits, nv);
        if (best < 0)
            return QVL_E_INVAL;
        s->cand[0].v = logits[best];
        s->cand[0].w = 1.0f;
        s->cand[0].id = best;
        *n_out = 1;
        *total_out = 1.0;
        return QVL_OK;
    }

    cand *c = s->cand;
    size_t n = 0;
    if (live == 0)
        return QVL_E_INVAL;
    if (s->p.top_k > 0 && (size_t)s->p.top_k < live) {
        /* top-k on the logits (dividing by a positive temperature keeps the order) */
        top_k_stream(c, logits, nv, (size_t)s->p.top_k);
        n = (size_t)s->p.top_k;
    } else {
        /* candidates: every token above -inf, in id order */
        for (int32_t i = 0; i < nv; i++) {
            if (logits[i] > -INFINITY) {
                c[n].v = logits[i];
                c[n].id = i;
                n++;
            }
        }
    }

    /* temperature and unnormalised softmax */
    const float temp = s->p.temperature;
    float vmax = -INFINITY;
    float vmin = INFINITY;
    for (size_t j = 0; j < n; j++) {
        c[j].v = c[j].v / temp;
        vmax = c[j].v > vmax ? c[j].v : vmax;
        vmin = c[j].v < vmin ? c[j].v : vmin;
    }
    double total = 0.0;
    if (vmax == INFINITY) {
        for (size_t j = 0; j < n; j++) {
            c[j].w = c[j].v == INFINITY ? 1.0f : 0.0f;
            total += c[j].w;
        }
    } else {
        for (size_t j = 0; j < n; j++) {
            c[j].w = exp_neg(c[j].v - vmax);
            total += c[j].w;
        }
    }

    if (s->p.top_p < 1.0f) {
        size_t m = apply_top_p(c, n, total, s->p.top_p, vmin, vmax);
        if (m < n) {
            n = m;
            total = 0.0;
            for (size_t j = 0; j < n; j++)
                total += c[j].w;
        }
    }

    if (s->p.min_p > 0.0f) {
        /* the largest weight is exp(0) = 1 (or 1 for the +inf tokens) */
        const float thr = s->p.min_p;
        size_t m = 0;
        size_t best = 0;
        for (size_t j = 0; j < n; j++) {
            if (better(&c[j], &c[best]))
                best = j;
        }
        cand top = c[best];
        total = 0.0;
        for (size_t j = 0; j < n; j++) {
            if (c[j].w >= thr) {
                c[m++] = c[j];
                total += c[j].w;
            }
        }
        if (m == 0) { /* not reachable: the best weight is 1 and min_p <= 1 */
            c[0] = top;
            c[0].w = 1.0f;
            m = 1;
            total = 1.0;
        }
        n = m;
    }
    *n_out = n;
    *total_out = total;
    return QVL_OK;
}

qvl_status qvl_sampler_filter(qvl_sampler *s, float *logits, int32_t *ids, float *probs, size_t cap,
                              size_t *n_out) {
    if (n_out)
        *n_out = 0;
    if (!s || !logits || !n_out || (cap > 0 && (!ids || !probs)))
        return QVL_E_INVAL;
    size_t n = 0;
    double total = 0.0;
    qvl_status st = filter(s, logits, &n, &total);
    if (st != QVL_OK)
        return st;
    for (size_t j = 0; j < n && j < cap; j++) {
        ids[j] = s->cand[j].id;
        probs[j] = (float)(s->cand[j].w / total);
    }
    *n_out = n;
    return QVL_OK;
}

qvl_status qvl_sampler_sample(qvl_sampler *s, float *logits, int32_t *out_id) {
    if (out_id)
        *out_id = -1;
    if (!s || !logits || !out_id)
        return QVL_E_INVAL;
    size_t n = 0;
    double total = 0.0;
    qvl_status st = filter(s, logits, &n, &total);
    if (st != QVL_OK)
        return st;
    if (s->p.temperature <= 0.0f) {
        *out_id = s->cand[0].id; /* greedy: no draw, the PRNG does not advance */
        return QVL_OK;
    }
    cand *c = s->cand;

    /* draw */
    double u = rng_double(s->rng) * total;
    double cum = 0.0;
    size_t pick = n;
    for (size_t j = 0; j < n; j++) {
        cum += c[j].w;
        if (u < cum) {
            pick = j;
            break;
        }
    }
    if (pick == n) { /* rounding at the top end: the last token with weight */
        for (size_t j = n; j-- > 0;) {
            if (c[j].w > 0.0f) {
                pick = j;
                break;
            }
        }
        if (pick == n)
            pick = 0;
    }
    *out_id = c[pick].id;
    return QVL_OK;
}

/* ---- stop strings ------------------------------------------------------------------------ */

struct qvl_stop {
    char *str[QVL_STOP_MAX_N]; /* copies of the stop strings */
    size_t len[QVL_STOP_MAX_N];
    size_t n;
    char *buf;  /* held text followed by the last piece */
    size_t cap; /* bytes allocated for buf */
    size_t off; /* bytes at the start of buf emitted by the last call */
    size_t end; /* bytes used in buf */
    bool stopped;
    int matched;
};

/* length of the valid UTF-8 sequence at p[0..n), 0 if invalid (overlongs, surrogates,
 * > U+10FFFF and truncation are invalid) */
static size_t utf8_seq_len(const unsigned char *p, size_t n) {
    unsigned char b = p[0];
    if (b < 0x80)
        return 1;
    size_t len;
    uint32_t cp;
    if (b >= 0xc2 && b <= 0xdf) {
        len = 2;
        cp = b & 0x1f;
    } else if (b >= 0xe0 && b <= 0xef) {
        len = 3;
        cp = b & 0x0f;
    } else if (b >= 0xf0 && b <= 0xf4) {
        len = 4;
        cp = b & 0x07;
    } else {
        return 0;
    }
    if (n < len)
        return 0;
    for (size_t i = 1; i < len; i++) {
        if ((p[i] & 0xc0) != 0x80)
            return 0;
        cp = (cp << 6) | (p[i] & 0x3f);
    }
    if ((len == 3 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) ||
        (len == 4 && (cp < 0x10000 || cp > 0x10ffff)))
        return 0;
    return len;
}

static bool utf8_valid(const char *s, size_t n) {
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;
    while (i < n) {
        size_t l = utf8_seq_len(p + i, n - i);
        if (l == 0)
            return false;
        i += l;
    }
    return true;
}

qvl_status qvl_stop_create(const char *const *stops, size_t n, qvl_stop **out, char *err,
                           size_t err_len) {
    if (!out) {
        qvl_errf(err, err_len, "stop strings: NULL output pointer");
        return QVL_E_INVAL;
    }
    *out = NULL;
    if (n > 0 && !stops) {
        qvl_errf(err, err_len, "stop strings: NULL array for %zu strings", n);
        return QVL_E_INVAL;
    }
    if (n > QVL_STOP_MAX_N) {
        qvl_errf(err, err_len, "stop strings: %zu given, at most %d allowed", n, QVL_STOP_MAX_N);
        return QVL_E_LIMIT;
    }
    for (size_t i = 0; i < n; i++) {
        if (!stops[i]) {
            qvl_errf(err, err_len, "stop string %zu: NULL", i);
            return QVL_E_INVAL;
        }
        size_t l = strlen(stops[i]);
        if (l == 0) {
            qvl_errf(err, err_len, "stop string %zu: empty", i);
            return QVL_E_INVAL;
        }
        if (l > QVL_STOP_MAX_LEN) {
            qvl_errf(err, err_len, "stop string %zu: %zu bytes, at most %d allowed", i, l,
                     QVL_STOP_MAX_LEN);
            return QVL_E_LIMIT;
        }
        if (!utf8_valid(stops[i], l)) {
            qvl_errf(err, err_len, "stop string %zu: not valid UTF-8", i);
            return QVL_E_INVAL;
        }
    }
    qvl_stop *s = qvl_calloc(1, sizeof *s);
    if (!s)
        goto err_nomem;
    s->matched = -1;
    s->cap = 4096 + QVL_STOP_MAX_LEN;
    s->buf = qvl_malloc(s->cap);
    if (!s->buf)
        goto err_free;
    for (size_t i = 0; i < n; i++) {
        s->len[i] = strlen(stops[i]);
        s->str[i] = qvl_strndup(stops[i], s->len[i]);
        if (!s->str[i])
            goto err_free;
        s->n = i + 1;
    }
    *out = s;
    return QVL_OK;

err_free:
    qvl_stop_free(s);
err_nomem:
    qvl_errf(err, err_len, "stop strings: out of memory");
    return QVL_E_NOMEM;
}

void qvl_stop_free(qvl_stop *s) {
    if (!s)
        return;
    for (size_t i = 0; i < s->n; i++)
        qvl_free(s->str[i]);
    qvl_free(s->buf);
    qvl_free(s);
}

void qvl_stop_reset(qvl_stop *s) {
    if (!s)
        return;
    s->off = 0;
    s->end = 0;
    s->stopped = false;
    s->matched = -1;
}

int qvl_stop_matched(const qvl_stop *s) {
    return s ? s->matched : -1;
}

/* Start of an incomplete UTF-8 sequence at the end of b[0..n), or n when the text ends on a
 * character boundary (or with bytes that can never complete: those are released as they are). */
static size_t utf8_tail_start(const unsigned char *b, size_t n) {
    size_t lim = n > 3 ? n - 3 : 0;
    for (size_t i = n; i-- > lim;) {
        unsigned char c = b[i];
        if ((c & 0xc0) == 0x80)
            continue; /* continuation byte: look further back */
        size_t need = c >= 0xf0 ? 4 : c >= 0xe0 ? 3 : c >= 0xc0 ? 2 : 1;
        return n - i < need ? i : n;
    }
    return n;
}

qvl_status qvl_stop_feed(qvl_stop *s, const char *piece, size_t len, const char **emit,
                         size_t *emit_len, bool *stopped) {
    if (emit)
        *emit = "";
    if (emit_len)
        *emit_len = 0;
    if (stopped)
        *stopped = false;
    if (!s || !emit || !emit_len || !stopped || (len > 0 && !piece))
        return QVL_E_INVAL;
    if (s->stopped) {
        *stopped = true;
        return QVL_OK;
    }
    /* drop what the last call emitted; the held text moves to the front */
    size_t held = s->end - s->off;
    if (s->off > 0 && held > 0)
        memmove(s->buf, s->buf + s->off, held);
    s->off = 0;
    s->end = held;

    size_t need;
    if (!qvl_size_add(held, len, &need))
        return QVL_E_NOMEM;
    if (need > s->cap) {
        size_t cap = s->cap * 2 > need ? s->cap * 2 : need;
        char *nb = qvl_realloc(s->buf, cap);
        if (!nb)
            return QVL_E_NOMEM;
        s->buf = nb;
        s->cap = cap;
    }
    if (len > 0)
        memcpy(s->buf + held, piece, len);
    s->end = need;
    const char *b = s->buf;
    size_t blen = s->end;

    /* earliest complete match; the held text contains none, so start where a match could
     * still end inside the new piece */
    size_t best = blen;
    int which = -1;
    for (size_t k = 0; k < s->n; k++) {
        size_t sl = s->len[k];
        if (sl > blen)
            continue;
        size_t from = held >= sl ? held - sl + 1 : 0;
        const char *hit = memmem(b + from, blen - from, s->str[k], sl);
        if (hit && (size_t)(hit - b) < best) {
            best = (size_t)(hit - b);
            which = (int)k;
        }
    }
    if (which >= 0) {
        s->stopped = true;
        s->matched = which;
        s->off = 0;
        s->end = 0; /* the stop string and what follows are dropped */
        *emit = s->buf;
        *emit_len = best;
        *stopped = true;
        return QVL_OK;
    }

    /* hold back the longest suffix that is a proper prefix of some stop string */
    size_t keep_from = blen;
    for (size_t k = 0; k < s->n; k++) {
        size_t sl = s->len[k];
        size_t lo = blen > sl - 1 ? blen - (sl - 1) : 0;
        const char *first = memchr(b + lo, s->str[k][0], blen - lo);
        while (first) {
            size_t q = (size_t)(first - b);
            if (q >= keep_from)
                break;
            if (memcmp(b + q, s->str[k], blen - q) == 0) {
                keep_from = q;
                break;
            }
            first = q + 1 < blen ? memchr(b + q + 1, s->str[k][0], blen - q - 1) : NULL;
        }
    }
    /* never cut inside a UTF-8 character */
    size_t tail = utf8_tail_start((const unsigned char *)b, blen);
    if (tail < keep_from)
        keep_from = tail;
    while (keep_from > 0 && keep_from < blen && ((unsigned char)b[keep_from] & 0xc0) == 0x80)
        keep_from--;
    s->off = keep_from;
    *emit = s->buf;
    *emit_len = keep_from;
    return QVL_OK;
}

size_t qvl_stop_flush(qvl_stop *s, const char **emit) {
    if (emit)
        *emit = "";
    if (!s || !emit || s->stopped)
        return 0;
    size_t held = s->end - s->off;
    *emit = s->buf + s->off;
    s->off = s->end; /* released; the next feed drops it */
    return held;
}

/* Log-probability of `id` under softmax(logits) and the k most likely entries (value
 * descending, ties by lower id; NaN counts as -inf). Accumulated in double. */
void qvl_logprobs_row(const float *l, int32_t V, int32_t id, int k, float *lp, int32_t *top_ids,
                      float *top_lp) {
    float m = -INFINITY;
    for (int32_t i = 0; i < V; i++)
        if (l[i] > m)
            m = l[i];
    double sum = 0;
    if (m > -INFINITY)
        for (int32_t i = 0; i < V; i++)
            if (l[i] > -INFINITY)
                sum += exp((double)l[i] - (double)m);
    /* m > -inf means sum >= 1 (the maximum contributes exp(0)) */
    double lse = m > -INFINITY && isfinite(m) ? (double)m + log(sum) : (double)m;
    float v = l[id] > -INFINITY ? l[id] : -INFINITY;
    *lp = isfinite(lse) && v > -INFINITY ? (float)((double)v - lse) : -INFINITY;
    int n = 0;
    for (int32_t i = 0; i < V && k > 0; i++) {
        float x = l[i] > -INFINITY ? l[i] : -INFINITY;
        if (n == k && !(x > top_lp[k - 1]))
            continue;
        int at = n < k ? n++ : k - 1;
        while (at > 0 && x > top_lp[at - 1]) {
            top_lp[at] = top_lp[at - 1];
            top_ids[at] = top_ids[at - 1];
            at--;
        }
        top_lp[at] = x;
        top_ids[at] = i;
    }
    for (int i = 0; i < n; i++)
        top_lp[i] = isfinite(lse) && top_lp[i] > -INFINITY ? (float)((double)top_lp[i] - lse)
                                                           : -INFINITY;
}
