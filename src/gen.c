/* gen.c - the generation loop: sampling, EOS and stop strings, streaming of valid UTF-8 text,
 * max-token and context limits, cancellation from the callback. */
#include "ctx.h"
#include "sample.h"
#include "tok.h"

#include <math.h>
#include <string.h>

qvl_gen_params qvl_gen_default_params(void) {
    qvl_gen_params p;
    memset(&p, 0, sizeof p);
    p.temperature = -1;
    p.top_k = -1;
    p.top_p = -1;
    p.repetition_penalty = -1;
    return p;
}

void qvl_gen_result_free(qvl_gen_result *r) {
    if (!r)
        return;
    qvl_free(r->tokens);
    qvl_free(r->text);
    qvl_free(r->logprobs);
    qvl_free(r->top_ids);
    qvl_free(r->top_logprobs);
    memset(r, 0, sizeof *r);
}

/* Emit text to the result and the callback; returns non-zero when the callback asks to stop. */
static int emit(qvl_sbuf *tb, const char *s, size_t n, int32_t id, qvl_text_cb cb, void *user,
                bool *oom) {
    if (n == 0)
        return 0;
    qvl_sbuf_add(tb, s, n);
    *oom |= tb->oom;
    return cb ? cb(s, n, id, user) : 0;
}

qvl_status qvl_ctx_generate(qvl_ctx *c, const qvl_gen_params *p, qvl_text_cb cb, void *user,
                            qvl_gen_result *res) {
    if (!c || !res)
        return QVL_E_INVAL;
    memset(res, 0, sizeof *res);
    c->err[0] = 0;
    const qvl_model *m = c->m;
    const int32_t V = m->cfg.text.vocab_size;
    qvl_gen_params dp = qvl_gen_default_params();
    if (!p)
        p = &dp;
    if (!c->has_logits) {
        qvl_ctx_setf(c, "generate: evaluate a prompt first");
        return QVL_E_INVAL;
    }
    const qvl_gen_config *g = &m->gen;
    qvl_sampling sp = qvl_sampling_default();
    sp.temperature = p->temperature >= 0 ? p->temperature : (g->do_sample ? g->temperature : 0);
    sp.top_k = p->top_k >= 0 ? p->top_k : g->top_k;
    sp.top_p = p->top_p >= 0 ? p->top_p : g->top_p;
    sp.min_p = p->min_p;
    sp.repetition_penalty = p->repetition_penalty > 0 ? p->repetition_penalty
                                                      : g->repetition_penalty;
    sp.presence_penalty = p->presence_penalty;
    sp.frequency_penalty = p->frequency_penalty;
    sp.seed = p->seed;
    if (p->max_new_tokens < 0 || p->n_stop < 0 || (p->n_stop > 0 && !p->stop)) {
        qvl_ctx_setf(c, "generate: negative max_new_tokens or bad stop list");
        return QVL_E_INVAL;
    }
    if (p->top_logprobs < 0 || p->top_logprobs > QVL_MAX_TOP_LOGPROBS ||
        (p->top_logprobs > 0 && !p->logprobs)) {
        qvl_ctx_setf(c, "generate: top_logprobs must be 0..%d and needs logprobs",
                     QVL_MAX_TOP_LOGPROBS);
        return QVL_E_INVAL;
    }
    if (p->n_bias < 0 || (p->n_bias > 0 && (!p->bias_ids || !p->bias_values))) {
        qvl_ctx_setf(c, "generate: bad logit bias list");
        return QVL_E_INVAL;
    }
    for (int i = 0; i < p->n_bias; i++)
        if (p->bias_ids[i] < 0 || p->bias_ids[i] >= V || !isfinite(p->bias_values[i])) {
            qvl_ctx_setf(c, "generate: logit bias %d: id %d outside the vocabulary (%d) or value "
                            "not finite",
                         i, (int)p->bias_ids[i], (int)V);
            return QVL_E_INVAL;
        }
    const int n_top = p->logprobs ? (p->top_logprobs < V ? p->top_logprobs : V) : 0;
    qvl_sampler *smp = NULL;
    qvl_stop *stop = NULL;
    float *lg = NULL;
    qvl_sbuf tb = {0};
    int32_t *toks = NULL;
    float *lps = NULL, *top_lp = NULL;
    int32_t *top_ids = NULL;
    qvl_status s = qvl_sampler_create(&sp, V, &smp);
    if (s != QVL_OK) {
        qvl_ctx_setf(c, "generate: bad sampling parameters (temperature %g, top_p %g, min_p %g, "
                        "repetition penalty %g)",
                     sp.temperature, sp.top_p, sp.min_p, sp.repetition_penalty);
        return s;
    }
    s = qvl_stop_create(p->stop, (size_t)p->n_stop, &stop, c->err, sizeof c->err);
    if (s != QVL_OK)
        goto done;
    int64_t max_new = p->max_new_tokens > 0 ? p->max_new_tokens : c->n_ctx;
    lg = qvl_malloc((size_t)V * sizeof(float));
    size_t cap = (size_t)(max_new < c->n_ctx ? max_new : c->n_ctx);
    toks = qvl_malloc(cap * sizeof(int32_t) + 4);
    size_t lp_cap = 0; /* rows of the log-probability arrays, grown as tokens come */
    if (p->logprobs) {
        lp_cap = cap < 256 ? cap : 256;
        lps = qvl_malloc(lp_cap * sizeof(float) + 4);
        top_lp = qvl_malloc(lp_cap * (size_t)n_top * sizeof(float) + 4);
        top_ids = qvl_malloc(lp_cap * (size_t)n_top * sizeof(int32_t) + 4);
    }
    if (!lg || !toks || (p->logprobs && (!lps || !top_lp || !top_ids))) {
        s = QVL_E_NOMEM;
        goto done;
    }
    for (int64_t i = 0; i < c->n_past; i++)
        if (c->tokens[i] >= 0)
            qvl_sampler_accept_prompt(smp, &c->tokens[i], 1);

    qvl_tok_stream ts;
    qvl_tok_stream_init(&ts, true);
    size_t piece_cap = QVL_TOK_STREAM_OUT(qvl_tok_max_token_bytes(m->tok));
    char *piece = qvl_malloc(piece_cap);
    if (!piece) {
        s = QVL_E_NOMEM;
        goto done;
    }
    double t0 = qvl_time_ms();
    qvl_finish fin = QVL_FINISH_NONE;
    bool oom = false;
    size_t n_gen = 0;
    for (;;) {
        memcpy(lg, c->logits, (size_t)V * sizeof(float));
        for (int i = 0; i < p->n_bias; i++)
            lg[p->bias_ids[i]] += p->bias_values[i];
        int32_t id = -1;
        s = qvl_sampler_sample(smp, lg, &id);
        if (s != QVL_OK) {
            qvl_ctx_setf(c, "generate: no token can be sampled (all logits are -inf or NaN)");
            break;
        }
        bool is_eos = false;
        for (int e = 0; e < g->n_eos; e++)
            is_eos |= id == g->eos[e];
        if (is_eos && !p->ignore_eos) {
            fin = QVL_FINISH_STOP;
            break;
        }
        qvl_token_info ti = {.token = id, .index = n_gen};
        if (p->logprobs && n_gen == lp_cap) {
            size_t nc = lp_cap * 2 < cap ? lp_cap * 2 : cap;
            float *a = qvl_realloc(lps, nc * sizeof(float) + 4);
            lps = a ? a : lps;
            float *b = a ? qvl_realloc(top_lp, nc * (size_t)n_top * sizeof(float) + 4) : NULL;
            top_lp = b ? b : top_lp;
            int32_t *d = b ? qvl_realloc(top_ids, nc * (size_t)n_top * sizeof(int32_t) + 4) : NULL;
            top_ids = d ? d : top_ids;
            if (!d) {
                s = QVL_E_NOMEM;
                break;
            }
            lp_cap = nc;
        }
        if (p->logprobs) {
            ti.n_top = n_top;
            ti.top_ids = top_ids + n_gen * (size_t)n_top;
            ti.top_logprobs = top_lp + n_gen * (size_t)n_top;
            qvl_logprobs_row(c->logits, V, id, n_top, &lps[n_gen], top_ids + n_gen * (size_t)n_top,
                           top_lp + n_gen * (size_t)n_top);
            ti.logprob = lps[n_gen];
        }
        toks[n_gen++] = id;
        qvl_sampler_accept(smp, id);
        if (p->token_cb && p->token_cb(&ti, p->token_user)) {
            fin = QVL_FINISH_CANCELLED;
            break;
        }
        size_t np = 0;
        /* ids with embedding rows but no tokenizer entry decode to nothing, as in the
         * reference's decoder */
        if (qvl_tok_is_valid(m->tok, id))
            qvl_tok_stream_push(&ts, m->tok, id, piece, piece_cap, &np);
        const char *out;
        size_t nout = 0;
        bool stopped = false;
        if (qvl_stop_feed(stop, piece, np, &out, &nout, &stopped) != QVL_OK)
            oom = true;
        if (emit(&tb, out, nout, id, cb, user, &oom)) {
            fin = QVL_FINISH_CANCELLED;
            break;
        }
        if (stopped) {
            fin = QVL_FINISH_STOP;
            break;
        }
        if ((int64_t)n_gen >= max_new || c->n_past >= c->n_ctx) {
            fin = QVL_FINISH_LENGTH;
            break;
        }
        s = qvl_ctx_decode_one(c, id);
        if (s != QVL_OK)
            break;
    }
    if (fin != QVL_FINISH_CANCELLED && qvl_stop_matched(stop) < 0 && s == QVL_OK) {
        /* release held-back text: incomplete characters become U+FFFD, then the matcher */
        size_t np = qvl_tok_stream_flush(&ts, piece, piece_cap);
        const char *out;
        size_t nout = 0;
        bool stopped = false;
        if (qvl_stop_feed(stop, piece, np, &out, &nout, &stopped) != QVL_OK)
            oom = true;
        emit(&tb, out, nout, -1, cb, user, &oom);
        nout = qvl_stop_flush(stop, &out);
        emit(&tb, out, nout, -1, cb, user, &oom);
    }
    qvl_free(piece);
    res->decode_ms = qvl_time_ms() - t0;
    res->prefill_ms = c->prefill_ms;
    res->finish = fin;
    if (oom && s == QVL_OK)
        s = QVL_E_NOMEM;
    if (s == QVL_OK && fin == QVL_FINISH_CANCELLED)
        s = QVL_E_CANCELLED;
    res->tokens = toks;
    res->n_tokens = n_gen;
    toks = NULL;
    if (p->logprobs) {
        res->logprobs = lps;
        res->n_top = n_top;
        res->top_ids = top_ids;
        res->top_logprobs = top_lp;
        lps = top_lp = NULL;
        top_ids = NULL;
    }
    res->text = tb.p ? tb.p : qvl_strdup("");
    tb.p = NULL;
done:
    if (s == QVL_E_NOMEM && !c->err[0])
        qvl_ctx_setf(c, "generate: out of memory");
    qvl_free(tb.p);
    qvl_free(toks);
    qvl_free(lps);
    qvl_free(top_lp);
    qvl_free(top_ids);
    qvl_free(lg);
    qvl_stop_free(stop);
    qvl_sampler_free(smp);
    return s;
}
