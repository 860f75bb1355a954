/* One step of beam-search decoding, the whole decoder in one call: every layer's norms,
   projections (packed or fp32, through packed_layer_matmul_t), self-attention over the cached
   prefix, cross-attention over the encoder's projected keys, the feed-forward block, the final
   norm and the output projection, for M rows (beams x sentences) of one new token each.

   Why native: at batch 1 a step's arithmetic is a few hundred microseconds of packed kernels, and
   the PyTorch module calls around them (about 150 operators per step, each a dispatch) took
   longer than the arithmetic. The search itself (scores, top-k, finished hypotheses) stays in
   Python: it is a handful of operators per step.

   Self-attention caches are two buffers per layer, (rows, capacity, C) each, used alternately:
   step t reads positions < t from the buffer step t - 1 wrote, row parent[m] for row m (the beam
   it continues), and writes positions <= t into the other. That is the beam reordering, done as
   the copy a concatenation would have cost anyway. Cross-attention keys/values are one row per
   sentence (sentence[m / beams]), never copied per beam.

   Arithmetic follows the PyTorch modules (LayerNorm with biased variance, softmax(q.k / sqrt(D)),
   ReLU); sums run in a different order, so results agree to rounding, not bit for bit. */

#include <immintrin.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "packed_layer.h"

enum { SELF_Q, SELF_K, SELF_V, SELF_OUT, CROSS_Q, CROSS_OUT, FC1, FC2, PROJECTIONS };
enum { SELF_NORM, CROSS_NORM, FFN_NORM, NORMS };

typedef struct {
    const packed_layer *proj[PROJECTIONS];
    const float *bias[PROJECTIONS]; /* NULL: no bias */
    const float *norm_weight[NORMS], *norm_bias[NORMS];
    float *self_k[2], *self_v[2];     /* (rows, capacity, C) */
    const float *cross_k, *cross_v;   /* (sentences, S, C) */
} decoder_layer;

typedef struct {
    int64_t layers, C, heads, ffn, vocab, capacity, S, pre_norm;
    float eps;
    const decoder_layer *layer;
    const float *final_weight, *final_bias; /* NULL: no final norm (post-norm models) */
    const packed_layer *out;
    const uint8_t *key_padding;             /* (sentences, S): 1 where the source is padding */
} decoder_desc;

static void layer_norm(const float *x, int64_t M, int64_t C, const float *w, const float *b, float eps, float *y) {
    for (int64_t m = 0; m < M; m++) {
        const float *r = x + m * C;
        double mean = 0, var = 0;
        for (int64_t c = 0; c < C; c++) mean += r[c];
        mean /= C;
        for (int64_t c = 0; c < C; c++) var += (r[c] - mean) * (r[c] - mean);
        float rstd = (float)(1.0 / sqrt(var / C + eps)), mu = (float)mean;
        for (int64_t c = 0; c < C; c++) y[m * C + c] = (r[c] - mu) * rstd * w[c] + b[c];
    }
}

static inline float dot(const float *a, const float *b, int64_t n) {
    __m256 acc = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc);
    __m128 lo = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
    lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
    float s = _mm_cvtss_f32(_mm_add_ss(lo, _mm_movehdup_ps(lo)));
    for (; i < n; i++) s += a[i] * b[i];
    return s;
}

/* out (D) = softmax over keys j < n (skipping skip[j] != 0) of q.k_j * scale, times v_j. Keys and
   values are rows `stride` floats apart. */
static void attend(const float *q, const float *k, const float *v, int64_t n, int64_t stride, int64_t D,
                   const uint8_t *skip, float scale, float *scores, float *out) {
    float best = -INFINITY;
    for (int64_t j = 0; j < n; j++) {
        if (skip && skip[j]) { scores[j] = -INFINITY; continue; }
        scores[j] = dot(q, k + j * stride, D) * scale;
        if (scores[j] > best) best = scores[j];
    }
    float total = 0;
    for (int64_t j = 0; j < n; j++) total += scores[j] = scores[j] == -INFINITY ? 0.0f : expf(scores[j] - best);
    memset(out, 0, sizeof(float) * D);
    for (int64_t j = 0; j < n; j++) {
        if (scores[j] == 0.0f) continue;
        float p = scores[j] / total;
        const float *vj = v + j * stride;
        for (int64_t d = 0; d < D; d++) out[d] += p * vj[d];
    }
}

static void linear(const decoder_layer *L, int which, const float *x, int64_t M, float *y) {
    packed_layer_matmul_t(L->proj[which], x, M, L->bias[which], y);
}

/* x (M, C) <- x + f, then the post-norm models' norm. */
static void residual(const decoder_desc *D, const decoder_layer *L, int norm, float *x, const float *f, int64_t M) {
    for (int64_t i = 0; i < M * D->C; i++) x[i] += f[i];
    if (!D->pre_norm) layer_norm(x, M, D->C, L->norm_weight[norm], L->norm_bias[norm], D->eps, x);
}

/* The input of a block: the pre-norm models' norm of x, or x itself. */
static const float *block_input(const decoder_desc *D, const decoder_layer *L, int norm, const float *x, int64_t M,
                                float *h) {
    if (!D->pre_norm) return x;
    layer_norm(x, M, D->C, L->norm_weight[norm], L->norm_bias[norm], D->eps, h);
    return h;
}

/* x (M, C): the embedded tokens at position t, overwritten. parent (M) or NULL at t = 0;
   sentence (M / beams): the memory row of each group of beams. logits (M, vocab). Returns 0, or -1
   when scratch memory could not be had. */
int decoder_step(const decoder_desc *D, float *x, int64_t M, int64_t beams, int64_t t, const int64_t *parent,
                 const int64_t *sentence, float *logits) {
    int64_t C = D->C, H = D->heads, Dh = C / H, cap = D->capacity, S = D->S;
    int64_t longest = (t + 1 > S ? t + 1 : S);
    float *work = malloc(sizeof(float) * (M * (6 * C + D->ffn) + longest));
    if (!work) return -1;
    float *h = work, *q = h + M * C, *k = q + M * C, *v = k + M * C, *a = v + M * C, *f = a + M * C,
          *ff = f + M * C, *scores = ff + M * D->ffn;
    float scale = 1.0f / sqrtf((float)Dh);
    int now = (int)(t & 1), before = 1 - now;

    for (int64_t l = 0; l < D->layers; l++) {
        const decoder_layer *L = &D->layer[l];
        const float *in = block_input(D, L, SELF_NORM, x, M, h);
        linear(L, SELF_Q, in, M, q);
        linear(L, SELF_K, in, M, k);
        linear(L, SELF_V, in, M, v);
        float *ck = L->self_k[now], *cv = L->self_v[now];
        for (int64_t m = 0; m < M; m++) {
            if (t > 0) { /* the prefix of the beam this row continues */
                memcpy(ck + m * cap * C, L->self_k[before] + parent[m] * cap * C, sizeof(float) * t * C);
                memcpy(cv + m * cap * C, L->self_v[before] + parent[m] * cap * C, sizeof(float) * t * C);
            }
            memcpy(ck + (m * cap + t) * C, k + m * C, sizeof(float) * C);
            memcpy(cv + (m * cap + t) * C, v + m * C, sizeof(float) * C);
            for (int64_t hd = 0; hd < H; hd++)
                attend(q + m * C + hd * Dh, ck + m * cap * C + hd * Dh, cv + m * cap * C + hd * Dh, t + 1, C, Dh,
                       NULL, scale, scores, a + m * C + hd * Dh);
        }
        linear(L, SELF_OUT, a, M, f);
        residual(D, L, SELF_NORM, x, f, M);

        in = block_input(D, L, CROSS_NORM, x, M, h);
        linear(L, CROSS_Q, in, M, q);
        for (int64_t m = 0; m < M; m++) {
            int64_t s = sentence[m / beams];
            for (int64_t hd = 0; hd < H; hd++)
                attend(q + m * C + hd * Dh, L->cross_k + s * S * C + hd * Dh, L->cross_v + s * S * C + hd * Dh, S, C,
                       Dh, D->key_padding + s * S, scale, scores, a + m * C + hd * Dh);
        }
        linear(L, CROSS_OUT, a, M, f);
        residual(D, L, CROSS_NORM, x, f, M);

        in = block_input(D, L, FFN_NORM, x, M, h);
        linear(L, FC1, in, M, ff);
        for (int64_t i = 0; i < M * D->ffn; i++) ff[i] = ff[i] > 0.0f ? ff[i] : 0.0f;
        linear(L, FC2, ff, M, f);
        residual(D, L, FFN_NORM, x, f, M);
    }
    const float *in = x;
    if (D->final_weight) {
        layer_norm(x, M, C, D->final_weight, D->final_bias, D->eps, h);
        in = h;
    }
    packed_layer_matmul_t(D->out, in, M, NULL, logits);
    free(work);
    return 0;
}
