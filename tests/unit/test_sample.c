/* test_sample.c - tests for the token sampler (PRNG vectors, penalties, greedy, determinism,
 * chi-square fit of the sampled distribution against an independent reference, large-vocab
 * nucleus checks, NaN/inf) and the stop-string matcher (pieces, prefixes, UTF-8, limits,
 * randomized comparison against a naive reference). */
#include "check.h"
#include "common.h"
#include "sample.h"

#include <stdint.h>
#include <time.h>

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/* test-local deterministic generator, independent of the library's */
static uint64_t lcg_state = 88172645463325252ull;
static uint32_t lcg(void) {
    lcg_state = lcg_state * 6364136223846793005ull + 1442695040888963407ull;
    return (uint32_t)(lcg_state >> 33);
}
static double lcg_unit(void) {
    return lcg() / 2147483648.0;
}

static qvl_sampling params(float temp, int top_k, float top_p, float min_p, uint64_t seed) {
    qvl_sampling p = qvl_sampling_default();
    p.temperature = temp;
    p.top_k = top_k;
    p.top_p = top_p;
    p.min_p = min_p;
    p.seed = seed;
    return p;
}

/* ---- PRNG ------------------------------------------------------------------------------ */

static void test_rng(void) {
    /* splitmix64 reference outputs for seed 1234567 */
    uint64_t x = 1234567;
    const uint64_t sm[5] = {6457827717110365317ull, 3203168211198807973ull, 9817491932198370423ull,
                            4593380528125082431ull, 16408922859458223821ull};
    for (int i = 0; i < 5; i++)
        CHECK(qvl_splitmix64(&x) == sm[i]);
    /* xoshiro256** reference outputs for state {1, 2, 3, 4} */
    uint64_t st[4] = {1, 2, 3, 4};
    const uint64_t xs[6] = {11520ull,
                            0ull,
                            1509978240ull,
                            1215971899390074240ull,
                            1216172134540287360ull,
                            607988272756665600ull};
    for (int i = 0; i < 6; i++)
        CHECK(qvl_rng_next(st) == xs[i]);
    /* seeding: state = four splitmix64 outputs of the seed */
    uint64_t a[4];
    qvl_rng_seed(a, 1234567);
    CHECK(a[0] == sm[0] && a[1] == sm[1] && a[2] == sm[2] && a[3] == sm[3]);
}

/* ---- parameters ------------------------------------------------------------------------ */

static void test_create(void) {
    qvl_sampler *s = (qvl_sampler *)1;
    qvl_sampling p = qvl_sampling_default();
    CHECK(qvl_sampler_create(&p, 0, &s) == QVL_E_INVAL && s == NULL);
    CHECK(qvl_sampler_create(NULL, 10, &s) == QVL_E_INVAL && s == NULL);
    CHECK(qvl_sampler_create(&p, 10, NULL) == QVL_E_INVAL);
    p.temperature = NAN;
    CHECK(qvl_sampler_create(&p, 10, &s) == QVL_E_INVAL);
    p = qvl_sampling_default();
    p.repetition_penalty = 0.0f;
    CHECK(qvl_sampler_create(&p, 10, &s) == QVL_E_INVAL);
    p = qvl_sampling_default();
    p.min_p = 1.5f;
    CHECK(qvl_sampler_create(&p, 10, &s) == QVL_E_INVAL);
    p = qvl_sampling_default();
    p.presence_penalty = INFINITY;
    CHECK(qvl_sampler_create(&p, 10, &s) == QVL_E_INVAL);
    p = qvl_sampling_default();
    CHECK(qvl_sampler_create(&p, 10, &s) == QVL_OK && s != NULL);
    qvl_sampling bad = p;
    bad.top_p = NAN;
    CHECK(qvl_sampler_set_params(s, &bad) == QVL_E_INVAL);
    CHECK(qvl_sampler_accept(s, 10) == QVL_E_INVAL);
    CHECK(qvl_sampler_accept(s, -1) == QVL_E_INVAL);
    CHECK(qvl_sampler_accept(s, 9) == QVL_OK);
    int32_t id = 5;
    CHECK(qvl_sampler_sample(s, NULL, &id) == QVL_E_INVAL && id == -1);
    qvl_sampler_free(s);
    qvl_sampler_free(NULL);

    /* allocation failures: NOMEM, nothing leaked (LSan checks) */
    for (long k = 0; k < 8; k++) {
        qvl_alloc_fail_at(k, 0);
        qvl_status st = qvl_sampler_create(&p, 1000, &s);
        qvl_alloc_fail_at(-1, 0);
        if (st == QVL_OK) {
            CHECK(k >= 6); /* six allocations in create */
            qvl_sampler_free(s);
        } else {
            CHECK(st == QVL_E_NOMEM && s == NULL);
        }
    }
}

/* ---- greedy, penalties, NaN ------------------------------------------------------------ */

static void test_greedy(void) {
    qvl_sampling p = qvl_sampling_default();
    qvl_sampler *s = NULL;
    CHECK(qvl_sampler_create(&p, 8, &s) == QVL_OK);
    float l[8] = {0.5f, 3.0f, -1.0f, 3.0f, 2.9f, NAN, -INFINITY, 1.0f};
    int32_t id = -1;
    CHECK(qvl_sampler_sample(s, l, &id) == QVL_OK && id == 1); /* tie 1/3: lowest id */
    CHECK(isinf(l[5]) && l[5] < 0);                            /* NaN replaced by -inf */
    float l2[8] = {NAN, NAN, 1.0f, NAN, 7.0f, NAN, NAN, NAN};
    CHECK(qvl_sampler_sample(s, l2, &id) == QVL_OK && id == 4);
    float l3[8] = {INFINITY, 1, 2, 3, 4, 5, 6, INFINITY};
    CHECK(qvl_sampler_sample(s, l3, &id) == QVL_OK && id == 0);
    /* all NaN / -inf: error, out id -1 */
    float bad[8];
    for (int i = 0; i < 8; i++)
        bad[i] = (i & 1) ? NAN : -INFINITY;
    id = 3;
    CHECK(qvl_sampler_sample(s, bad, &id) == QVL_E_INVAL && id == -1);
    /* same for the sampling path */
    qvl_sampling q = params(1.0f, 3, 0.9f, 0.1f, 1);
    CHECK(qvl_sampler_set_params(s, &q) == QVL_OK);
    for (int i = 0; i < 8; i++)
        bad[i] = (i & 1) ? NAN : -INFINITY;
    id = 3;
    CHECK(qvl_sampler_sample(s, bad, &id) == QVL_E_INVAL && id == -1);
    /* greedy over a random vector equals the argmax */
    p = qvl_sampling_default();
    CHECK(qvl_sampler_set_params(s, &p) == QVL_OK);
    for (int t = 0; t < 100; t++) {
        float r[8];
        int best = 0;
        for (int i = 0; i < 8; i++) {
            r[i] = (float)(lcg() % 100);
            if (r[i] > r[best])
                best = i;
        }
        CHECK(qvl_sampler_sample(s, r, &id) == QVL_OK && id == best);
    }
    qvl_sampler_free(s);
}

static void test_penalties(void) {
    qvl_sampling p = qvl_sampling_default();
    p.repetition_penalty = 2.0f;
    p.presence_penalty = 0.5f;
    p.frequency_penalty = 0.25f;
    qvl_sampler *s = NULL;
    CHECK(qvl_sampler_create(&p, 8, &s) == QVL_OK);
    const int32_t prompt[4] = {1, 2, 2, 5};
    CHECK(qvl_sampler_accept_prompt(s, prompt, 4) == QVL_OK);
    const int32_t badp[2] = {0, 8};
    CHECK(qvl_sampler_accept_prompt(s, badp, 2) == QVL_E_INVAL); /* records nothing */
    CHECK(qvl_sampler_accept(s, 3) == QVL_OK);
    CHECK(qvl_sampler_accept(s, 3) == QVL_OK);
    CHECK(qvl_sampler_accept(s, 2) == QVL_OK);
    CHECK(qvl_sampler_accept(s, 6) == QVL_OK);
    float l[8] = {1.0f, 4.0f, -1.0f, 3.0f, 0.5f, 0.0f, -3.0f, 2.0f};
    int32_t id = -1;
    CHECK(qvl_sampler_sample(s, l, &id) == QVL_OK);
    /* 0: untouched (the rejected prompt did not record it) */
    CHECK(l[0] == 1.0f);
    /* 1: prompt only, positive: 4 / 2 */
    CHECK(l[1] == 2.0f);
    /* 2: prompt twice + generated once, negative: -1 * 2 once, then -0.5 - 0.25 * 1 */
    CHECK(l[2] == -2.75f);
    /* 3: generated twice: 3 / 2 - 0.5 - 0.25 * 2 */
    CHECK(l[3] == 0.5f);
    CHECK(l[4] == 0.5f);
    CHECK(l[5] == 0.0f); /* prompt, zero stays zero */
    /* 6: generated once, negative: -3 * 2 - 0.75 */
    CHECK(l[6] == -6.75f);
    CHECK(l[7] == 2.0f);
    CHECK(id == 1); /* greedy over penalised logits: 2.0 at 1 and 7, lowest id */

    /* presence / frequency only (repetition off): prompt ids are not touched */
    p.repetition_penalty = 1.0f;
    CHECK(qvl_sampler_set_params(s, &p) == QVL_OK);
    float m[8] = {1, 1, 1, 1, 1, 1, 1, 1};
    CHECK(qvl_sampler_sample(s, m, &id) == QVL_OK);
    CHECK(m[1] == 1.0f && m[5] == 1.0f);
    CHECK(m[2] == 0.25f && m[3] == 0.0f && m[6] == 0.25f);

    /* reset forgets the history */
    qvl_sampler_reset(s, 7);
    float r[8] = {1, 1, 1, 1, 1, 1, 1, 1};
    CHECK(qvl_sampler_sample(s, r, &id) == QVL_OK);
    int same = 1;
    for (int i = 0; i < 8; i++)
        same &= r[i] == 1.0f;
    CHECK(same && id == 0);
    qvl_sampler_free(s);
}

/* ---- determinism ----------------------------------------------------------------------- */

static void draw_seq(uint64_t seed, int32_t *out, int n) {
    qvl_sampling p = params(1.0f, 0, 1.0f, 0.0f, seed);
    qvl_sampler *s = NULL;
    CHECK(qvl_sampler_create(&p, 50, &s) == QVL_OK);
    float l[50];
    for (int i = 0; i < n; i++) {
        for (int j = 0; j < 50; j++)
            l[j] = (float)(j % 7) * 0.3f;
        out[i] = -1;
        qvl_sampler_sample(s, l, &out[i]);
    }
    qvl_sampler_free(s);
}

static void test_determinism(void) {
    enum { N = 1000 };
    static int32_t a[N], b[N], c[N];
    draw_seq(42, a, N);
    draw_seq(42, b, N);
    draw_seq(43, c, N);
    CHECK(memcmp(a, b, sizeof a) == 0);
    CHECK(memcmp(a, c, sizeof a) != 0);
    /* reset(seed) replays the same sequence */
    qvl_sampling p = params(1.0f, 0, 1.0f, 0.0f, 5);
    qvl_sampler *s = NULL;
    CHECK(qvl_sampler_create(&p, 50, &s) == QVL_OK);
    float l[50];
    int32_t first[20];
    int ok = 1;
    for (int round = 0; round < 2; round++) {
        qvl_sampler_reset(s, 42);
        for (int i = 0; i < 20; i++) {
            for (int j = 0; j < 50; j++)
                l[j] = (float)(j % 7) * 0.3f;
            int32_t id = -1;
            qvl_sampler_sample(s, l, &id);
            if (round == 0)
                first[i] = id;
            else
                ok &= first[i] == id && id == a[i];
        }
    }
    CHECK(ok);
    qvl_sampler_free(s);
}

/* ---- distribution: chi-square against an independent reference ------------------------ */

/* Expected probabilities after temperature, top-k, top-p, min-p (double precision, HF
 * definitions: top-p keeps tokens while the mass strictly before them is < top_p). */
static void reference_probs(const float *logits, int n, float temp, int top_k, float top_p,
                            float min_p, double *prob) {
    int order[64];
    for (int i = 0; i < n; i++)
        order[i] = i;
    for (int i = 1; i < n; i++) { /* insertion sort: logit desc, id asc */
        int v = order[i];
        int j = i;
        while (j > 0 && (logits[order[j - 1]] < logits[v] ||
                         (logits[order[j - 1]] == logits[v] && order[j - 1] > v))) {
            order[j] = order[j - 1];
            j--;
        }
        order[j] = v;
    }
    int keep = n;
    if (top_k > 0 && top_k < n)
        keep = top_k;
    double w[64];
    double mx = (double)logits[order[0]] / temp;
    double sum = 0;
    for (int r = 0; r < keep; r++) {
        w[r] = exp((double)logits[order[r]] / temp - mx);
        sum += w[r];
    }
    if (top_p < 1.0f) {
        double before = 0;
        int k2 = 0;
        while (k2 < keep && before < top_p) {
            before += w[k2] / sum;
            k2++;
        }
        keep = k2 < 1 ? 1 : k2;
    }
    if (min_p > 0.0f) {
        int k3 = 0;
        while (k3 < keep && w[k3] / w[0] >= min_p)
            k3++;
        keep = k3;
    }
    for (int i = 0; i < n; i++)
        prob[i] = 0;
    sum = 0;
    for (int r = 0; r < keep; r++)
        sum += w[r];
    for (int r = 0; r < keep; r++)
        prob[order[r]] = w[r] / sum;
}

/* chi-square critical value at p = 0.001 (Wilson-Hilferty approximation) */
static double chi2_crit(int df) {
    double z = 3.0902;
    double a = 2.0 / (9.0 * df);
    double t = 1.0 - a + z * sqrt(a);
    return df * t * t * t;
}

static double chi2_of(const long *count, const double *prob, int n, long draws, int *df,
                      long *impossible) {
    double chi2 = 0;
    *df = -1;
    *impossible = 0;
    for (int i = 0; i < n; i++) {
        if (prob[i] > 0) {
            double e = prob[i] * draws;
            chi2 += (count[i] - e) * (count[i] - e) / e;
            (*df)++;
        } else {
            *impossible += count[i];
        }
    }
    return chi2;
}

static void run_chi2(const char *name, const float *logits, int n, float temp, int top_k,
                     float top_p, float min_p) {
    enum { DRAWS = 200000 };
    qvl_sampling p = params(temp, top_k, top_p, min_p, 1234);
    qvl_sampler *s = NULL;
    CHECK(qvl_sampler_create(&p, n, &s) == QVL_OK);
    long count[64] = {0};
    float l[64];
    for (long d = 0; d < DRAWS; d++) {
        memcpy(l, logits, sizeof(float) * (size_t)n);
        int32_t id = -1;
        if (qvl_sampler_sample(s, l, &id) != QVL_OK || id < 0 || id >= n) {
            CHECKF(0, "%s: sample failed", name);
            break;
        }
        count[id]++;
    }
    qvl_sampler_free(s);

    double prob[64];
    reference_probs(logits, n, temp, top_k, top_p, min_p, prob);
    int df;
    long impossible;
    double chi2 = chi2_of(count, prob, n, DRAWS, &df, &impossible);
    CHECKF(impossible == 0, "%s: %ld draws of excluded tokens", name, impossible);
    if (df > 0)
        CHECKF(chi2 < chi2_crit(df), "%s: chi2 %.1f >= %.1f (df %d)", name, chi2, chi2_crit(df),
               df);
    else
        CHECKF(count[0] + impossible >= 0, "%s", name);

    /* negative control: the same counts must fail against a wrong distribution (temperature
     * ignored, or filters ignored), so the test can detect a broken sampler */
    double wrong[64];
    reference_probs(logits, n, temp * 1.25f, top_k, top_p, min_p, wrong);
    int df2;
    long imp2;
    double chi2w = chi2_of(count, wrong, n, DRAWS, &df2, &imp2);
    CHECKF(imp2 > 0 || chi2w > chi2_crit(df2 > 0 ? df2 : 1), "%s: negative control passed", name);
}

static void test_distribution(void) {
    float a[16];
    for (int i = 0; i < 16; i++)
        a[i] = (float)((i * 7) % 16) * 0.25f - 1.0f; /* distinct values -1 .. 2.75 */
    run_chi2("plain T=1", a, 16, 1.0f, 0, 1.0f, 0.0f);
    run_chi2("T=0.7 top_k=5", a, 16, 0.7f, 5, 1.0f, 0.0f);
    run_chi2("T=1 top_p=0.8", a, 16, 1.0f, 0, 0.8f, 0.0f);
    run_chi2("T=1.3 min_p=0.1", a, 16, 1.3f, 0, 1.0f, 0.1f);

    float b[50];
    for (int i = 0; i < 50; i++)
        b[i] = (float)(lcg_unit() * 4.0 - 2.0);
    run_chi2("T=0.7 k=20 p=0.8 min_p=0.05", b, 50, 0.7f, 20, 0.8f, 0.05f);
    run_chi2("T=2 p=0.95", b, 50, 2.0f, 0, 0.95f, 0.0f);
    run_chi2("T=0.5 k=40 min_p=0.02", b, 50, 0.5f, 40, 1.0f, 0.02f);

    /* sanity of the reference for the top-p case: the boundary is not ambiguous */
    double prob[16];
    reference_probs(a, 16, 1.0f, 0, 0.8f, 0.0f, prob);
    int kept = 0;
    for (int i = 0; i < 16; i++)
        kept += prob[i] > 0;
    CHECK(kept > 1 && kept < 16);
}

/* +inf tokens share all the mass; NaN and -inf are never drawn */
static void test_inf_nan_sampling(void) {
    qvl_sampling p = params(0.8f, 0, 1.0f, 0.0f, 99);
    qvl_sampler *s = NULL;
    CHECK(qvl_sampler_create(&p, 6, &s) == QVL_OK);
    long cnt[6] = {0};
    for (int d = 0; d < 4000; d++) {
        float l[6] = {1.0f, INFINITY, NAN, INFINITY, 50.0f, -INFINITY};
        int32_t id = -1;
        CHECK(qvl_sampler_sample(s, l, &id) == QVL_OK);
        if (id >= 0 && id < 6)
            cnt[id]++;
    }
    CHECK(cnt[1] + cnt[3] == 4000);
    CHECK(cnt[1] > 1700 && cnt[3] > 1700);
    long nan_hits = 0;
    for (int d = 0; d < 4000; d++) {
        float l[6] = {NAN, 0.0f, NAN, 0.5f, NAN, -INFINITY};
        int32_t id = -1;
        CHECK(qvl_sampler_sample(s, l, &id) == QVL_OK);
        nan_hits += id != 1 && id != 3;
    }
    CHECK(nan_hits == 0);
    qvl_sampler_free(s);
}

/* ---- full Qwen vocabulary: nucleus membership and speed -------------------------------- */

typedef struct ref_ent {
    float v;
    int32_t id;
} ref_ent;

static int ref_cmp(const void *pa, const void *pb) {
    const ref_ent *a = pa;
    const ref_ent *b = pb;
    if (a->v != b->v)
        return a->v > b->v ? -1 : 1;
    return a->id < b->id ? -1 : a->id > b->id;
}

/* membership mask of the tokens the sampler may return, computed by a full sort */
static int ref_allowed(const float *logits, int n, float temp, int top_k, float top_p,
                       unsigned char *allowed, ref_ent *tmp) {
    for (int i = 0; i < n; i++) {
        tmp[i].v = logits[i];
        tmp[i].id = i;
    }
    qsort(tmp, (size_t)n, sizeof *tmp, ref_cmp);
    int keep = (top_k > 0 && top_k < n) ? top_k : n;
    double mx = tmp[0].v / temp;
    double sum = 0;
    for (int r = 0; r < keep; r++)
        sum += exp(tmp[r].v / temp - mx);
    int k2 = keep;
    if (top_p < 1.0f) {
        double before = 0;
        k2 = 0;
        while (k2 < keep && before < top_p * sum) {
            before += exp(tmp[k2].v / temp - mx);
            k2++;
        }
    }
    memset(allowed, 0, (size_t)n);
    for (int r = 0; r < k2; r++)
        allowed[tmp[r].id] = 1;
    return k2;
}

static void test_large_vocab(void) {
    const int n = 151936;
    float *base = malloc(sizeof(float) * n);
    float *l = malloc(sizeof(float) * n);
    unsigned char *allowed = malloc((size_t)n);
    ref_ent *tmp = malloc(sizeof(ref_ent) * n);
    if (!base || !l || !allowed || !tmp) {
        CHECK(0);
        goto done;
    }
    struct {
        const char *name;
        float scale, temp;
        int top_k;
        float top_p;
        int draws;
    } cases[] = {
        {"qwen default k=20 p=0.8 T=0.7", 3.0f, 0.7f, 20, 0.8f, 300},
        {"peaked, top_p=0.9 only", 12.0f, 1.0f, 0, 0.9f, 100},
        {"flat, top_p=0.95 only (worst case)", 1.0f, 1.0f, 0, 0.95f, 15},
        {"top_k=1", 1.0f, 1.0f, 1, 1.0f, 50},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        for (int i = 0; i < n; i++) { /* roughly normal: sum of 4 uniforms */
            double g = lcg_unit() + lcg_unit() + lcg_unit() + lcg_unit() - 2.0;
            base[i] = (float)(g * cases[c].scale);
        }
        int kept =
            ref_allowed(base, n, cases[c].temp, cases[c].top_k, cases[c].top_p, allowed, tmp);
        qvl_sampling p = params(cases[c].temp, cases[c].top_k, cases[c].top_p, 0.0f, 7 + c);
        qvl_sampler *s = NULL;
        CHECK(qvl_sampler_create(&p, n, &s) == QVL_OK);
        if (!s)
            continue;
        int outside = 0;
        double t0 = now_ms();
        for (int d = 0; d < cases[c].draws; d++) {
            memcpy(l, base, sizeof(float) * n);
            int32_t id = -1;
            CHECK(qvl_sampler_sample(s, l, &id) == QVL_OK);
            outside += id < 0 || id >= n || !allowed[id];
        }
        double ms = (now_ms() - t0) / cases[c].draws;
        CHECKF(outside == 0, "%s: %d draws outside the nucleus of %d", cases[c].name, outside,
               kept);
        printf("  %-36s nucleus %6d  %.3f ms/sample\n", cases[c].name, kept, ms);
        qvl_sampler_free(s);
    }
done:
    free(base);
    free(l);
    free(allowed);
    free(tmp);
}

/* chi-square on a 4096-token vocabulary: exercises the bucketed top-p path (n > 1024), with the
 * nucleus boundary among ~150 near-equal tokens, against a full-sort reference */
static void test_bucket_chi2(void) {
    const int n = 4096;
    const int draws = 20000;
    float *base = malloc(sizeof(float) * n);
    float *l = malloc(sizeof(float) * n);
    ref_ent *tmp = malloc(sizeof(ref_ent) * n);
    double *prob = calloc((size_t)n, sizeof(double));
    long *count = calloc((size_t)n, sizeof(long));
    qvl_sampler *s = NULL;
    if (!base || !l || !tmp || !prob || !count) {
        CHECK(0);
        goto done;
    }
    for (int i = 0; i < n; i++)
        base[i] = (float)(lcg_unit() * 4.0 - 3.0);
    const float top[8] = {5.0f, 4.8f, 4.5f, 4.3f, 4.0f, 3.8f, 3.5f, 3.2f};
    for (int i = 0; i < 8; i++)
        base[(i * 997 + 13) % n] = top[i];
    const float top_p = 0.3f;
    for (int i = 0; i < n; i++) {
        tmp[i].v = base[i];
        tmp[i].id = i;
    }
    qsort(tmp, (size_t)n, sizeof *tmp, ref_cmp);
    double sum = 0;
    for (int r = 0; r < n; r++)
        sum += exp(tmp[r].v - tmp[0].v);
    double before = 0;
    int kept = 0;
    while (kept < n && before < top_p * sum) {
        double w = exp(tmp[kept].v - tmp[0].v);
        prob[tmp[kept].id] = w;
        before += w;
        kept++;
    }
    for (int i = 0; i < n; i++)
        prob[i] /= before;
    CHECK(kept > 50 && kept < 1000);

    qvl_sampling p = params(1.0f, 0, top_p, 0.0f, 2024);
    CHECK(qvl_sampler_create(&p, n, &s) == QVL_OK);
    if (!s)
        goto done;
    for (int d = 0; d < draws; d++) {
        memcpy(l, base, sizeof(float) * n);
        int32_t id = -1;
        if (qvl_sampler_sample(s, l, &id) != QVL_OK || id < 0 || id >= n) {
            CHECK(0);
            break;
        }
        count[id]++;
    }
    int df;
    long impossible;
    double chi2 = chi2_of(count, prob, n, draws, &df, &impossible);
    CHECKF(impossible == 0, "bucketed top-p: %ld draws outside the nucleus", impossible);
    CHECKF(chi2 < chi2_crit(df), "bucketed top-p: chi2 %.1f >= %.1f (df %d)", chi2, chi2_crit(df),
           df);
done:
    qvl_sampler_free(s);
    free(base);
    free(l);
    free(tmp);
    free(prob);
    free(count);
}

/* Exact kept set (qvl_sampler_filter) against a full-sort reference in double precision, over
 * the small-n quickselect path and the bucketed path. mark[id]: 0 excluded, 1 required,
 * 2 ambiguous (within 1e-5 of a top-p or min-p boundary, where float and double may differ). */
static void ref_marks(const float *logits, int n, float temp, int top_k, float top_p, float min_p,
                      unsigned char *mark, double *prob, ref_ent *tmp) {
    if (n <= 0)
        return;
    for (int i = 0; i < n; i++) {
        tmp[i].v = logits[i];
        tmp[i].id = i;
    }
    qsort(tmp, (size_t)n, sizeof *tmp, ref_cmp);
    int keep = (top_k > 0 && top_k < n) ? top_k : n;
    double mx = (double)tmp[0].v / temp;
    double sum = 0;
    for (int r = 0; r < keep; r++)
        sum += exp((double)tmp[r].v / temp - mx);
    memset(mark, 0, (size_t)n);
    double before = 0;
    double kept_sum = 0;
    for (int r = 0; r < keep; r++) {
        double w = exp((double)tmp[r].v / temp - mx);
        unsigned char m = 1;
        if (top_p < 1.0f) {
            double gap = before - top_p * sum;
            if (gap >= 1e-5 * sum)
                break;
            if (gap > -1e-5 * sum)
                m = 2;
        }
        before += w;
        if (min_p > 0.0f) {
            if (w < min_p * (1 - 1e-5))
                m = 0;
            else if (w < min_p * (1 + 1e-5))
                m = 2;
        }
        mark[tmp[r].id] = m;
        if (m == 1)
            kept_sum += w;
        prob[tmp[r].id] = w;
    }
    for (int i = 0; i < n; i++)
        prob[i] = mark[i] == 1 ? prob[i] / kept_sum : 0;
}

static void test_filter_exact(void) {
    const int sizes[5] = {37, 300, 1500, 5000, 151936};
    const struct {
        float temp;
        int top_k;
        float top_p, min_p;
    } cfg[5] = {{0.7f, 20, 0.8f, 0.0f},
                {1.0f, 0, 0.9f, 0.0f},
                {1.3f, 0, 0.5f, 0.05f},
                {0.6f, 0, 1.0f, 0.2f},
                {1.0f, 200, 0.95f, 0.01f}};
    float *base = malloc(sizeof(float) * 151936);
    float *l = malloc(sizeof(float) * 151936);
    int32_t *ids = malloc(sizeof(int32_t) * 151936);
    float *probs = malloc(sizeof(float) * 151936);
    unsigned char *mark = malloc(151936);
    double *prob = malloc(sizeof(double) * 151936);
    ref_ent *tmp = malloc(sizeof(ref_ent) * 151936);
    if (!base || !l || !ids || !probs || !mark || !prob || !tmp) {
        CHECK(0);
        goto done;
    }
    int bad = 0;
    int trials = 0;
    for (int si = 0; si < 5; si++) {
        int n = sizes[si];
        for (int ci = 0; ci < 5; ci++) {
            int reps = n > 100000 ? 1 : 4;
            for (int rep = 0; rep < reps; rep++) {
                double scale = 0.5 + 3.0 * rep;
                for (int i = 0; i < n; i++)
                    base[i] = (float)((lcg_unit() + lcg_unit() + lcg_unit() - 1.5) * scale);
                if (rep == 3) /* heavy ties */
                    for (int i = 0; i < n; i++)
                        base[i] = (float)(int)(base[i] / 4.0f);
                ref_marks(base, n, cfg[ci].temp, cfg[ci].top_k, cfg[ci].top_p, cfg[ci].min_p, mark,
                          prob, tmp);
                qvl_sampling p =
                    params(cfg[ci].temp, cfg[ci].top_k, cfg[ci].top_p, cfg[ci].min_p, 1);
                qvl_sampler *s = NULL;
                if (qvl_sampler_create(&p, n, &s) != QVL_OK) {
                    bad++;
                    continue;
                }
                memcpy(l, base, sizeof(float) * n);
                size_t got = 0;
                qvl_status rc = qvl_sampler_filter(s, l, ids, probs, (size_t)n, &got);
                qvl_sampler_free(s);
                trials++;
                if (rc != QVL_OK || got == 0 || got > (size_t)n) {
                    bad++;
                    continue;
                }
                int required = 0;
                for (int i = 0; i < n; i++)
                    required += mark[i] == 1;
                int found_required = 0;
                double psum = 0;
                int err = 0;
                for (size_t j = 0; j < got; j++) {
                    int32_t id = ids[j];
                    psum += probs[j];
                    if (id < 0 || id >= n || mark[id] == 0) {
                        err = 1;
                    } else if (mark[id] == 1) {
                        found_required++;
                        if (required == (int)got &&
                            fabs(probs[j] - prob[id]) > 1e-5 + 1e-4 * prob[id])
                            err = 1;
                    }
                }
                if (found_required != required || fabs(psum - 1.0) > 1e-4)
                    err = 1;
                if (err) {
                    fprintf(stderr, "filter mismatch: n %d cfg %d rep %d: got %zu, required %d\n",
                            n, ci, rep, got, required);
                    bad++;
                }
            }
        }
    }
    CHECKF(bad == 0, "%d of %d filter trials differ from the reference", bad, trials);
    /* greedy: the argmax alone */
    {
        qvl_sampling p = qvl_sampling_default();
        qvl_sampler *s = NULL;
        CHECK(qvl_sampler_create(&p, 4, &s) == QVL_OK);
        float g[4] = {0.0f, 3.0f, 5.0f, 5.0f};
        size_t got = 0;
        CHECK(qvl_sampler_filter(s, g, ids, probs, 4, &got) == QVL_OK && got == 1 && ids[0] == 2 &&
              probs[0] == 1.0f);
        CHECK(qvl_sampler_filter(s, g, NULL, NULL, 0, &got) == QVL_OK && got == 1);
        qvl_sampler_free(s);
    }
done:
    free(base);
    free(l);
    free(ids);
    free(probs);
    free(mark);
    free(prob);
    free(tmp);
}

/* ties at the top-k / top-p boundary go to the lower id (as a stable sort by logit would) */
static void test_ties(void) {
    qvl_sampling p = params(1.0f, 2, 1.0f, 0.0f, 3);
    qvl_sampler *s = NULL;
    CHECK(qvl_sampler_create(&p, 6, &s) == QVL_OK);
    long cnt[6] = {0};
    for (int d = 0; d < 2000; d++) {
        float l[6] = {0.0f, 2.0f, 1.0f, 2.0f, 2.0f, 1.0f};
        int32_t id = -1;
        CHECK(qvl_sampler_sample(s, l, &id) == QVL_OK);
        if (id >= 0 && id < 6)
            cnt[id]++;
    }
    CHECK(cnt[1] > 800 && cnt[3] > 800 && cnt[1] + cnt[3] == 2000);
    /* top-p whose boundary falls inside a tie: ids 2 and 4 tie, only 2 is needed */
    p = params(1.0f, 0, 0.45f, 0.0f, 3);
    CHECK(qvl_sampler_set_params(s, &p) == QVL_OK);
    memset(cnt, 0, sizeof cnt);
    for (int d = 0; d < 2000; d++) {
        float l[6] = {-9.0f, -9.0f, 1.0f, -9.0f, 1.0f, -9.0f};
        int32_t id = -1;
        CHECK(qvl_sampler_sample(s, l, &id) == QVL_OK);
        if (id >= 0 && id < 6)
            cnt[id]++;
    }
    CHECK(cnt[2] == 2000);
    qvl_sampler_free(s);
}

/* ---- stop strings ---------------------------------------------------------------------- */

/* feed one piece, append the emitted text to acc */
static bool feed(qvl_stop *st, const char *piece, char *acc, size_t *acc_len) {
    const char *e = NULL;
    size_t el = 99;
    bool stopped = false;
    qvl_status rc = qvl_stop_feed(st, piece, strlen(piece), &e, &el, &stopped);
    CHECK(rc == QVL_OK);
    if (rc == QVL_OK && el > 0) {
        memcpy(acc + *acc_len, e, el);
        *acc_len += el;
    }
    acc[*acc_len] = 0;
    return stopped;
}

static void test_stop_basic(void) {
    char err[256];
    char acc[1024];
    size_t n = 0;
    const char *e;
    qvl_stop *st = NULL;

    /* single piece */
    const char *s1[] = {"END"};
    CHECK(qvl_stop_create(s1, 1, &st, err, sizeof err) == QVL_OK);
    CHECK(qvl_stop_matched(st) == -1);
    CHECK(feed(st, "abcENDxyz", acc, &n) && strcmp(acc, "abc") == 0);
    CHECK(qvl_stop_matched(st) == 0);
    CHECK(feed(st, "more", acc, &n) && strcmp(acc, "abc") == 0); /* stays stopped */
    CHECK(qvl_stop_flush(st, &e) == 0);

    /* reset, stop at the very first byte */
    qvl_stop_reset(st);
    n = 0;
    CHECK(qvl_stop_matched(st) == -1);
    CHECK(feed(st, "ENDING", acc, &n) && n == 0);
    qvl_stop_free(st);

    const char *s2[] = {"H"};
    CHECK(qvl_stop_create(s2, 1, &st, err, sizeof err) == QVL_OK);
    n = 0;
    CHECK(feed(st, "Hello", acc, &n) && n == 0);
    qvl_stop_free(st);

    /* match spanning three pieces */
    const char *s3[] = {"<stop>"};
    CHECK(qvl_stop_create(s3, 1, &st, err, sizeof err) == QVL_OK);
    n = 0;
    CHECK(!feed(st, "hello <s", acc, &n) && strcmp(acc, "hello ") == 0);
    CHECK(!feed(st, "to", acc, &n) && strcmp(acc, "hello ") == 0);
    CHECK(feed(st, "p> after", acc, &n) && strcmp(acc, "hello ") == 0);

    /* partial prefix then divergence: held text released */
    qvl_stop_reset(st);
    n = 0;
    CHECK(!feed(st, "a <st", acc, &n) && strcmp(acc, "a ") == 0);
    CHECK(!feed(st, "ar", acc, &n) && strcmp(acc, "a <star") == 0);
    /* divergence that starts a new prefix */
    CHECK(!feed(st, "<sto<", acc, &n) && strcmp(acc, "a <star<sto") == 0);
    CHECK(!feed(st, "s", acc, &n) && strcmp(acc, "a <star<sto") == 0);
    /* flush releases the held text */
    CHECK(qvl_stop_flush(st, &e) == 2 && memcmp(e, "<s", 2) == 0);
    CHECK(qvl_stop_flush(st, &e) == 0);
    /* after a flush, feeding starts fresh */
    n = 0;
    CHECK(!feed(st, "top>", acc, &n) && strcmp(acc, "top>") == 0);
    qvl_stop_free(st);

    /* self-overlapping stop string */
    const char *s4[] = {"aab"};
    CHECK(qvl_stop_create(s4, 1, &st, err, sizeof err) == QVL_OK);
    n = 0;
    CHECK(!feed(st, "a", acc, &n) && n == 0);
    CHECK(!feed(st, "a", acc, &n) && n == 0);
    CHECK(!feed(st, "a", acc, &n) && strcmp(acc, "a") == 0);
    CHECK(feed(st, "b", acc, &n) && strcmp(acc, "a") == 0);
    qvl_stop_free(st);

    /* multiple stop strings; the earliest match wins */
    const char *s5[] = {"###", "\n\nUser:"};
    CHECK(qvl_stop_create(s5, 2, &st, err, sizeof err) == QVL_OK);
    n = 0;
    CHECK(!feed(st, "text\n\nUs", acc, &n) && strcmp(acc, "text") == 0);
    CHECK(feed(st, "er: ### hi", acc, &n) && strcmp(acc, "text") == 0);
    CHECK(qvl_stop_matched(st) == 1);
    qvl_stop_reset(st);
    n = 0;
    CHECK(feed(st, "x##", acc, &n) == false && strcmp(acc, "x") == 0);
    CHECK(feed(st, "#\n\nUser:", acc, &n) && strcmp(acc, "x") == 0);
    CHECK(qvl_stop_matched(st) == 0);
    qvl_stop_free(st);
    const char *s6[] = {"bc", "ab"};
    CHECK(qvl_stop_create(s6, 2, &st, err, sizeof err) == QVL_OK);
    n = 0;
    CHECK(feed(st, "xabc", acc, &n) && strcmp(acc, "x") == 0 && qvl_stop_matched(st) == 1);
    qvl_stop_free(st);

    /* no stop strings: pass-through */
    CHECK(qvl_stop_create(NULL, 0, &st, err, sizeof err) == QVL_OK);
    n = 0;
    CHECK(!feed(st, "abc", acc, &n) && strcmp(acc, "abc") == 0);
    CHECK(qvl_stop_feed(st, NULL, 0, &e, &n, &(bool){false}) == QVL_OK && n == 0);
    qvl_stop_free(st);
}

static bool utf8_boundary_ok(const char *s, size_t n) {
    /* emitted text never ends inside a character: the byte after the end would be a
     * continuation; check that the text does not end with an incomplete sequence */
    size_t i = 0;
    while (i < n) {
        unsigned char c = (unsigned char)s[i];
        size_t l = c < 0x80 ? 1 : c >= 0xf0 ? 4 : c >= 0xe0 ? 3 : 2;
        if (i + l > n)
            return false;
        i += l;
    }
    return true;
}

static void test_stop_utf8(void) {
    char err[256];
    char acc[256];
    size_t n = 0;
    const char *e;
    qvl_stop *st = NULL;
    const char *s1[] = {"\xe2\x86\x92"
                        "end"}; /* "→end" */
    CHECK(qvl_stop_create(s1, 1, &st, err, sizeof err) == QVL_OK);
    CHECK(!feed(st, "x\xe2\x86\x92", acc, &n) && strcmp(acc, "x") == 0);
    CHECK(!feed(st, "e", acc, &n) && strcmp(acc, "x") == 0);
    CHECK(!feed(st, "x", acc, &n) && strcmp(acc, "x\xe2\x86\x92"
                                                 "ex") == 0);
    /* a piece ending inside a character is held back until it completes */
    n = 0;
    CHECK(!feed(st, "ab\xc3", acc, &n) && strcmp(acc, "ab") == 0);
    CHECK(!feed(st, "\xa9!", acc, &n) && strcmp(acc, "ab\xc3\xa9!") == 0);
    n = 0;
    CHECK(!feed(st, "\xf0\x9f", acc, &n) && n == 0);
    CHECK(!feed(st, "\x98", acc, &n) && n == 0);
    CHECK(!feed(st, "\x80z", acc, &n) && strcmp(acc, "\xf0\x9f\x98\x80z") == 0);
    CHECK(utf8_boundary_ok(acc, n));
    /* flush releases even an incomplete character */
    CHECK(!feed(st, "q\xe2\x86", acc, &n));
    CHECK(qvl_stop_flush(st, &e) == 2 && memcmp(e, "\xe2\x86", 2) == 0);
    /* the match itself across a split multi-byte stop */
    qvl_stop_reset(st);
    n = 0;
    CHECK(!feed(st, "ok\xe2", acc, &n) && strcmp(acc, "ok") == 0);
    CHECK(!feed(st,
                "\x86\x92"
                "en",
                acc, &n) &&
          strcmp(acc, "ok") == 0);
    CHECK(feed(st, "d!", acc, &n) && strcmp(acc, "ok") == 0);
    qvl_stop_free(st);

    /* a long piece grows the buffer */
    const char *s2[] = {"STOP"};
    CHECK(qvl_stop_create(s2, 1, &st, err, sizeof err) == QVL_OK);
    size_t big = 20000;
    char *p = malloc(big + 8);
    if (p) {
        memset(p, 'y', big);
        memcpy(p + big, "STOPzz", 7);
        const char *em = NULL;
        size_t el = 0;
        bool stopped = false;
        CHECK(qvl_stop_feed(st, p, big - 2, &em, &el, &stopped) == QVL_OK && el == big - 2);
        CHECK(qvl_stop_feed(st, p + big - 2, 8, &em, &el, &stopped) == QVL_OK && stopped &&
              el == 2);
        free(p);
    }
    qvl_stop_free(st);
}

static void test_stop_limits(void) {
    char err[256];
    qvl_stop *st = (qvl_stop *)1;
    const char *many[QVL_STOP_MAX_N + 1];
    for (int i = 0; i <= QVL_STOP_MAX_N; i++)
        many[i] = "x";
    CHECK(qvl_stop_create(many, QVL_STOP_MAX_N + 1, &st, err, sizeof err) == QVL_E_LIMIT &&
          st == NULL);
    CHECK(strstr(err, "17") != NULL);
    CHECK(qvl_stop_create(many, QVL_STOP_MAX_N, &st, err, sizeof err) == QVL_OK);
    qvl_stop_free(st);

    char longs[QVL_STOP_MAX_LEN + 2];
    memset(longs, 'a', sizeof longs);
    longs[QVL_STOP_MAX_LEN + 1] = 0;
    const char *l1[] = {"ok", longs};
    CHECK(qvl_stop_create(l1, 2, &st, err, sizeof err) == QVL_E_LIMIT && st == NULL);
    CHECK(strstr(err, "stop string 1") != NULL);
    longs[QVL_STOP_MAX_LEN] = 0; /* exactly the limit */
    CHECK(qvl_stop_create(l1, 2, &st, err, sizeof err) == QVL_OK);
    /* a 256-byte stop spread over many pieces */
    if (st) {
        char acc[1024];
        size_t n = 0;
        CHECK(!feed(st, "pre", acc, &n));
        bool stopped = false;
        for (int i = 0; i < QVL_STOP_MAX_LEN / 8; i++)
            stopped = feed(st, "aaaaaaaa", acc, &n);
        CHECK(stopped && strcmp(acc, "pre") == 0);
    }
    qvl_stop_free(st);

    const char *e1[] = {""};
    CHECK(qvl_stop_create(e1, 1, &st, err, sizeof err) == QVL_E_INVAL);
    CHECK(strstr(err, "stop string 0") != NULL);
    const char *e2[] = {"ok", NULL};
    CHECK(qvl_stop_create(e2, 2, &st, err, sizeof err) == QVL_E_INVAL);
    const char *e3[] = {"\xff"
                        "ab"};
    CHECK(qvl_stop_create(e3, 1, &st, err, sizeof err) == QVL_E_INVAL);
    const char *e4[] = {"\xe2\x86"}; /* truncated character */
    CHECK(qvl_stop_create(e4, 1, &st, err, sizeof err) == QVL_E_INVAL);
    CHECK(qvl_stop_create(NULL, 2, &st, err, sizeof err) == QVL_E_INVAL);
    CHECK(qvl_stop_create(e1, 1, &st, NULL, 0) == QVL_E_INVAL);

    /* allocation failures */
    const char *ok[] = {"a", "bc", "def"};
    for (long k = 0; k < 6; k++) {
        qvl_alloc_fail_at(k, 0);
        qvl_status rc = qvl_stop_create(ok, 3, &st, err, sizeof err);
        qvl_alloc_fail_at(-1, 0);
        if (rc == QVL_OK) {
            CHECK(k >= 5); /* struct, buffer, three strings */
            qvl_stop_free(st);
        } else {
            CHECK(rc == QVL_E_NOMEM && st == NULL);
        }
    }
}

/* random pieces over a small alphabet against a naive reference */
static void test_stop_random(void) {
    const char *stops[] = {"abc", "cab", "bb", "aaaa"};
    char err[128];
    qvl_stop *st = NULL;
    CHECK(qvl_stop_create(stops, 4, &st, err, sizeof err) == QVL_OK);
    if (!st)
        return;
    int bad = 0;
    for (int trial = 0; trial < 3000 && !bad; trial++) {
        qvl_stop_reset(st);
        char text[64];
        int tl = 1 + (int)(lcg() % 40);
        for (int i = 0; i < tl; i++)
            text[i] = "abcd"[lcg() % 4];
        text[tl] = 0;
        /* earliest complete match in the whole text */
        int first = tl;
        for (int k = 0; k < 4; k++) {
            const char *h = strstr(text, stops[k]);
            if (h && h - text < first)
                first = (int)(h - text);
        }
        char out[128];
        size_t on = 0;
        int pos = 0;
        bool stopped = false;
        while (pos < tl && !stopped) {
            int pl = 1 + (int)(lcg() % 5);
            if (pos + pl > tl)
                pl = tl - pos;
            const char *e;
            size_t el;
            qvl_stop_feed(st, text + pos, (size_t)pl, &e, &el, &stopped);
            memcpy(out + on, e, el);
            on += el;
            pos += pl;
            if (!stopped) {
                /* emitted exactly up to the first position whose suffix is a proper prefix
                 * of some stop string */
                int expect = pos;
                for (int q = 0; q < pos && expect == pos; q++) {
                    for (int k = 0; k < 4; k++) {
                        size_t sl = strlen(stops[k]);
                        size_t rest = (size_t)(pos - q);
                        if (rest < sl && memcmp(text + q, stops[k], rest) == 0) {
                            expect = q;
                            break;
                        }
                    }
                }
                if ((int)on != expect)
                    bad = 1;
            }
        }
        if (!stopped) {
            const char *e;
            size_t el = qvl_stop_flush(st, &e);
            memcpy(out + on, e, el);
            on += el;
        }
        if (stopped != (first < tl) || (int)on != first || memcmp(out, text, on) != 0)
            bad = 1;
        if (bad)
            fprintf(stderr, "stop random mismatch on \"%s\"\n", text);
    }
    CHECK(!bad);
    qvl_stop_free(st);
}

/* The vocabulary passes run over blocks of values (sample.c): top-k must give exactly the k best
 * (larger value, then lower id) best first, and greedy the first index of the largest, whatever
 * the vocabulary size against the block, ties (-0 and +0 among them), NaN, -inf and +inf, and
 * however many values are above -inf. */
static void test_block_edges(void) {
    const int sizes[6] = {5, 63, 64, 65, 1000, 4099};
    const int ks[5] = {1, 2, 20, 64, 65};
    float *base = malloc(sizeof(float) * 4099), *l = malloc(sizeof(float) * 4099);
    float *probs = malloc(sizeof(float) * 4099);
    int32_t *ids = malloc(sizeof(int32_t) * 4099);
    ref_ent *tmp = malloc(sizeof(ref_ent) * 4099);
    int bad = 0, trials = 0;
    for (int si = 0; si < 6 && base && l && probs && ids && tmp; si++) {
        const int n = sizes[si];
        for (int kind = 0; kind < 6; kind++) {
            for (int i = 0; i < n; i++) {
                double u = lcg_unit();
                base[i] = kind == 0   ? (float)(u * 8 - 4)
                          : kind == 1 ? (float)(int)(u * 5) /* heavy ties */
                                      : (float)(u * 2 - 1);
                if (kind == 2 && u < 0.3) /* zeros of both signs tie */
                    base[i] = u < 0.15 ? -0.0f : 0.0f;
                if (kind == 3 && i % 7 == 3)
                    base[i] = NAN;
                if (kind == 4 && i % 3 != 0) /* few values above -inf */
                    base[i] = -INFINITY;
                if (kind == 5 && (i == n / 2 || i == n - 1))
                    base[i] = INFINITY;
            }
            int live = 0;
            for (int i = 0; i < n; i++)
                if (base[i] > -INFINITY) /* NaN: no */
                    tmp[live++] = (ref_ent){base[i], i};
            qsort(tmp, (size_t)live, sizeof *tmp, ref_cmp);
            for (int ki = 0; ki < 5; ki++) {
                const int k = ks[ki];
                qvl_sampling p = params(1.0f, k, 1.0f, 0.0f, 1);
                qvl_sampler *s = NULL;
                if (qvl_sampler_create(&p, n, &s) != QVL_OK) {
                    bad++;
                    continue;
                }
                memcpy(l, base, sizeof(float) * (size_t)n);
                size_t got = 0;
                qvl_status rc = qvl_sampler_filter(s, l, ids, probs, (size_t)n, &got);
                int want = k < live ? k : live, err = rc != QVL_OK || got != (size_t)want;
                /* fewer live values than k: all of them, in id order */
                for (int j = 0; !err && j < want; j++)
                    err = k < live ? ids[j] != tmp[j].id : j > 0 && ids[j] <= ids[j - 1];
                /* greedy: the best of the sorted reference */
                p = params(0.0f, 0, 1.0f, 0.0f, 1);
                err |= qvl_sampler_set_params(s, &p) != QVL_OK;
                memcpy(l, base, sizeof(float) * (size_t)n);
                int32_t id = -1;
                err |= qvl_sampler_sample(s, l, &id) != QVL_OK || id != tmp[0].id;
                qvl_sampler_free(s);
                trials++;
                if (err) {
                    fprintf(stderr, "block edges: n %d kind %d k %d: got %zu of %d\n", n, kind,
                            k, got, want);
                    bad++;
                }
            }
        }
    }
    CHECKF(bad == 0 && trials == 180, "%d of %d top-k / greedy trials differ", bad, trials);
    /* greedy with the largest value at each edge of the blocks (and again later) */
    {
        const int at[9] = {0, 1, 63, 64, 127, 128, 191, 192, 199};
        qvl_sampler *s = NULL;
        qvl_sampling p = params(0.0f, 0, 1.0f, 0.0f, 1);
        CHECK(qvl_sampler_create(&p, 200, &s) == QVL_OK);
        int wrong = 0;
        for (int a = 0; a < 9 && l; a++) {
            for (int i = 0; i < 200; i++)
                l[i] = (float)(i % 5);
            l[at[a]] = 9.0f;
            if (at[a] + 70 < 200)
                l[at[a] + 70] = 9.0f;
            int32_t id = -1;
            wrong += qvl_sampler_sample(s, l, &id) != QVL_OK || id != at[a];
        }
        CHECKF(wrong == 0, "greedy: %d of 9 maxima at block edges missed", wrong);
        qvl_sampler_free(s);
    }
    /* nothing above -inf: an error, greedy or not */
    for (int t = 0; t < 2 && l; t++) {
        qvl_sampling p = params(t ? 1.0f : 0.0f, 20, 1.0f, 0.0f, 1);
        qvl_sampler *s = NULL;
        CHECK(qvl_sampler_create(&p, 100, &s) == QVL_OK);
        for (int i = 0; i < 100; i++)
            l[i] = i % 2 ? -INFINITY : NAN;
        int32_t id = 0;
        CHECK(qvl_sampler_sample(s, l, &id) == QVL_E_INVAL && id == -1);
        qvl_sampler_free(s);
    }
    free(base);
    free(l);
    free(probs);
    free(ids);
    free(tmp);
}

int main(void) {
    double t0 = now_ms();
    test_rng();
    test_create();
    test_greedy();
    test_penalties();
    test_determinism();
    test_distribution();
    test_inf_nan_sampling();
    test_large_vocab();
    test_bucket_chi2();
    test_ties();
    test_filter_exact();
    test_block_edges();
    test_stop_basic();
    test_stop_utf8();
    test_stop_limits();
    test_stop_random();
    printf("  total %.0f ms\n", now_ms() - t0);
    CHECK_DONE();
}
