/* qvl_quantcheck.c - quality of load-time quantisation against the checkpoint's own weights.
 *
 *   qvl_quantcheck -m DIR [--quant q8|q4] [-n STEPS] [-i IMAGE] [-t THREADS]
 *
 * For a few prompts (text, and an image prompt when -i is given or a generated picture
 * otherwise), the reference model (weights as shipped) generates STEPS greedy tokens; the
 * quantised model is teacher-forced along the same tokens. At every position it reports the KL
 * divergence KL(ref || quant) of the next-token distributions (softmax of the logits) and whether
 * the top-1 tokens agree. Prints per-prompt and overall means as text and one JSON line. */
#include "qvl.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static double kl_div(const float *p_logits, const float *q_logits, int n) {
    double mp = -INFINITY, mq = -INFINITY;
    for (int i = 0; i < n; i++) {
        mp = fmax(mp, p_logits[i]);
        mq = fmax(mq, q_logits[i]);
    }
    double zp = 0, zq = 0;
    for (int i = 0; i < n; i++) {
        zp += exp(p_logits[i] - mp);
        zq += exp(q_logits[i] - mq);
    }
    double lzp = log(zp) + mp, lzq = log(zq) + mq, kl = 0;
    for (int i = 0; i < n; i++) {
        double lp = p_logits[i] - lzp, lq = q_logits[i] - lzq;
        kl += exp(lp) * (lp - lq);
    }
    return kl;
}

static int argmax(const float *x, int n) {
    int b = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[b])
            b = i;
    return b;
}

static qvl_ctx *make_ctx(qvl_model *m, int threads) {
    qvl_ctx_params cp = qvl_ctx_default_params();
    cp.n_ctx = 2048;
    cp.n_threads = threads;
    qvl_ctx *c = NULL;
    char err[512];
    if (qvl_ctx_create(m, &cp, &c, err, sizeof err) != QVL_OK)
        fprintf(stderr, "ctx: %s\n", err);
    return c;
}

int main(int argc, char **argv) {
    const char *dir = NULL, *image = NULL;
    qvl_quant q = QVL_QUANT_Q8;
    int steps = 32, threads = 2;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "-m"))
            dir = argv[i + 1];
        else if (!strcmp(argv[i], "-i"))
            image = argv[i + 1];
        else if (!strcmp(argv[i], "-n"))
            steps = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "-t"))
            threads = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--quant"))
            q = !strcmp(argv[i + 1], "q4") ? QVL_QUANT_Q4 : QVL_QUANT_Q8;
    }
    if (!dir || steps < 1 || steps > 1000) {
        fprintf(stderr, "usage: qvl_quantcheck -m DIR [--quant q8|q4] [-n STEPS] [-i IMAGE] [-t N]\n");
        return 2;
    }
    char err[1024];
    qvl_model_params rp = qvl_model_default_params(), qp = qvl_model_default_params();
    qp.quant = q;
    qvl_model *mr = NULL, *mq = NULL;
    if (qvl_model_load(dir, &rp, &mr, err, sizeof err) != QVL_OK ||
        qvl_model_load(dir, &qp, &mq, err, sizeof err) != QVL_OK) {
        fprintf(stderr, "load: %s\n", err);
        return 1;
    }
    qvl_image *img = NULL;
    if (image) {
        if (qvl_image_load_file(image, 0, &img, err, sizeof err) != QVL_OK) {
            fprintf(stderr, "%s: %s\n", image, err);
            return 1;
        }
    } else {
        static uint8_t rgb[128 * 96 * 3];
        for (int y = 0; y < 96; y++)
            for (int x = 0; x < 128; x++) {
                uint8_t *p = rgb + (y * 128 + x) * 3;
                p[0] = (uint8_t)(x * 2);
                p[1] = (uint8_t)(y * 2);
                p[2] = (uint8_t)((x ^ y) * 3);
            }
        qvl_image_from_rgb(rgb, 128, 96, &img, err, sizeof err);
    }
    const char *prompts[3] = {"Write a short poem about the sea.",
                              "Explain how a CPU cache works in two sentences.",
                              "Describe this image."};
    int nv = qvl_model_n_vocab(mr);
    float *lr = malloc((size_t)nv * sizeof *lr);
    double kl_all = 0, agree_all = 0;
    int n_all = 0;
    printf("quant %s, %d greedy steps per prompt (reference = checkpoint weights)\n",
           q == QVL_QUANT_Q4 ? "q4" : "q8", steps);
    for (int k = 0; k < 3; k++) {
        int with_img = k == 2;
        qvl_message msg = {"user", prompts[k], with_img, 0};
        int32_t *ids = NULL;
        size_t n = 0;
        if (qvl_prompt_build(mr, &msg, 1, 1, &img, (size_t)with_img, NULL, &ids, &n, err,
                             sizeof err) != QVL_OK) {
            fprintf(stderr, "prompt: %s\n", err);
            return 1;
        }
        qvl_ctx *cr = make_ctx(mr, threads), *cq = make_ctx(mq, threads);
        if (!cr || !cq || qvl_ctx_eval(cr, ids, n, &img, (size_t)with_img) != QVL_OK ||
            qvl_ctx_eval(cq, ids, n, &img, (size_t)with_img) != QVL_OK) {
            fprintf(stderr, "eval failed\n");
            return 1;
        }
        double kl = 0, agree = 0, kl0 = 0;
        for (int s = 0; s < steps; s++) {
            memcpy(lr, qvl_ctx_logits(cr, NULL), (size_t)nv * sizeof *lr);
            const float *lq = qvl_ctx_logits(cq, NULL);
            double d = kl_div(lr, lq, nv);
            int tr = argmax(lr, nv), tq = argmax(lq, nv);
            if (s == 0)
                kl0 = d;
            kl += d;
            agree += tr == tq;
            int32_t next = tr; /* teacher forcing along the reference's greedy path */
            if (qvl_ctx_eval(cr, &next, 1, NULL, 0) != QVL_OK ||
                qvl_ctx_eval(cq, &next, 1, NULL, 0) != QVL_OK)
                break;
        }
        printf("  %-48s prompt-end KL %.5f, mean KL %.5f, top-1 agreement %.1f%%\n", prompts[k],
               kl0, kl / steps, 100 * agree / steps);
        kl_all += kl;
        agree_all += agree;
        n_all += steps;
        qvl_ctx_free(cr);
        qvl_ctx_free(cq);
        qvl_free(ids);
    }
    printf("  overall: mean KL %.5f, top-1 agreement %.1f%% over %d positions\n", kl_all / n_all,
           100 * agree_all / n_all, n_all);
    printf("{\"quant\":\"%s\",\"mean_kl\":%.6f,\"top1_agreement\":%.4f,\"positions\":%d}\n",
           q == QVL_QUANT_Q4 ? "q4" : "q8", kl_all / n_all, agree_all / n_all, n_all);
    free(lr);
    qvl_image_free(img);
    qvl_model_free(mr);
    qvl_model_free(mq);
    return 0;
}
