/* One step of beam-search decoding, the whole decoder in one call: every layer's norms,
   projections (packed or fp32, through packed_layer_matmul_t), self-attention over the cached
   prefix, cross-attention over the encoder's projected keys, the feed-forward block, the final
   norm and the output projection, for M rows (beams x sentences) of one new token each.

   Why native: at batch 1 a step's arithmetic is a few hundred microseconds of packed kernels, and
   the PyTorch module calls around them (about 150 operators per step, each a dispatch) took
   longer than the arithmetic. The search's selection (scores, top-k, finished hypotheses) is
   beam_select.c, called after this step by native_search.py.

   Self-attention keys/values are written once, at (row m, position t) of one buffer per layer,
   and never move: beams reorder and sentences leave the batch, so row m's history is found through
   an ancestry table, ancestry[m][j] = the buffer row that holds position j of row m's prefix
   (parent[m]'s entry, one step on). A reorder costs M * t integers, where copying the caches (as a
   gather or a concatenation does) cost M * t * C floats per layer, twice. Cross-attention
   keys/values are one row per sentence (sentence[m / beams]), never copied per beam.

   Products: each layer's kernel up to the rows it pays for; beyond (batches of many beams) a
   dequantized tile of W at a time and the sgemm torch links (its address set by
   decoder_step_configure), so a large batch keeps BLAS's speed and loses only the operator
   dispatches. Without an sgemm every product goes through the kernels.

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
    float *self_k, *self_v;           /* (rows, capacity, C): position j of buffer row r */
    const float *cross_k, *cross_v;   /* (sentences, S, C) */
} decoder_layer;

typedef struct {
    int64_t layers, C, heads, ffn, vocab, capacity, S, pre_norm;
    float eps;
    const decoder_layer *layer;
    const float *final_weight, *final_bias; /* NULL: no final norm (post-norm models) */
    const packed_layer *out;
    const packed_layer *embed;              /* the token embedding (rows: tokens), packed or fp32 */
    const float *positions;                 /* (max_positions, C) sinusoids */
    float embed_scale;                      /* sqrt(C) */
    const uint8_t *key_padding;             /* (sentences, S): 1 where the source is padding */
    int32_t *ancestry;                      /* (rows, capacity), see above; updated by each step */
} decoder_desc;

/* Fortran BLAS sgemm, as torch's MKL (or OpenBLAS) exports it. */
typedef void (*sgemm_fn)(const char *ta, const char *tb, const int *m, const int *n, const int *k, const float *alpha,
                         const float *a, const int *lda, const float *b, const int *ldb, const float *beta, float *c,
                         const int *ldc);
static sgemm_fn sgemm;
static int64_t kernel_rows[5]; /* per LAYER_* kind: the most rows of x its kernel takes before BLAS wins */
#define TILE_FLOATS (1 << 18)  /* a dequantized tile: 1 MiB, as the PyTorch tile path */

void lut_dequant(const uint8_t *w, int bits, int64_t start, int64_t count, const float *codebook, float *out);
void masked_dequant(const packed_layer *L, int64_t r0, int64_t r1, float *out);

void decoder_step_configure(void *blas_sgemm, int64_t lut4_rows, int64_t bin1_rows, int64_t pruned_rows,
                            int64_t dense_rows) {
    sgemm = (sgemm_fn)blas_sgemm;
    kernel_rows[LAYER_LUT4] = lut4_rows;
    kernel_rows[LAYER_BIN1] = bin1_rows;
    kernel_rows[LAYER_SPARSE] = kernel_rows[LAYER_SPARSE_LUT4] = pruned_rows;
    kernel_rows[LAYER_DENSE] = dense_rows;
}

/* y (M, N) = x (M, K) @ W.T + bias: the layer's kernel, or tiles of W through sgemm. */
static void project(const packed_layer *L, const float *x, int64_t M, const float *bias, float *y, float *tile) {
    if (!sgemm || M <= kernel_rows[L->kind]) {
        packed_layer_matmul_t(L, x, M, bias, y);
        return;
    }
    int64_t N = L->rows, K = L->cols, step = L->kind == LAYER_DENSE ? N : (TILE_FLOATS / K > 0 ? TILE_FLOATS / K : 1);
    int m = (int)M, k = (int)K, ldc = (int)N;
    float one = 1.0f, zero = 0.0f;
    for (int64_t n0 = 0; n0 < N; n0 += step) {
        int64_t n1 = n0 + step < N ? n0 + step : N;
        const float *w = tile;
        if (L->kind == LAYER_DENSE) w = L->values + n0 * K;
        else if (L->kind == LAYER_LUT4 || L->kind == LAYER_BIN1) lut_dequant(L->index, (int)L->bits, n0 * K, (n1 - n0) * K, L->codebook, tile);
        else masked_dequant(L, n0, n1, tile);
        int n = (int)(n1 - n0);
        /* column-major: Y.T (n, M) = W_tile (K, n).T @ X.T (K, M), Y.T's columns N apart */
        sgemm("T", "N", &n, &m, &k, &one, w, &k, x, &k, &zero, y + n0, &ldc);
    }
    if (bias)
        for (int64_t i = 0; i < M; i++)
            for (int64_t n = 0; n < N; n++) y[i * N + n] += bias[n];
}

#ifdef _OPENMP
#define PARALLEL_OVER_ROWS(M) _Pragma("omp parallel for schedule(static) if(M >= 8)")
#else
#define PARALLEL_OVER_ROWS(M)
#endif

static void layer_norm(const float *x, int64_t M, int64_t C, const float *w, const float *b, float eps, float *y) {
    PARALLEL_OVER_ROWS(M)
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

/* Self-attention of one row and head over positions 0..n-1 of its prefix: position j's key and
   value live in buffer row rows[j] (the ancestry), `cap` positions of `stride` floats per row. */
static void attend_prefix(const float *q, const float *k, const float *v, const int32_t *rows, int64_t n, int64_t cap,
                          int64_t stride, int64_t D, float scale, float *scores, float *out);

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

static void attend_prefix(const float *q, const float *k, const float *v, const int32_t *rows, int64_t n, int64_t cap,
                          int64_t stride, int64_t D, float scale, float *scores, float *out) {
    float best = -INFINITY;
    for (int64_t j = 0; j < n; j++) {
        scores[j] = dot(q, k + (rows[j] * cap + j) * stride, D) * scale;
        if (scores[j] > best) best = scores[j];
    }
    float total = 0;
    for (int64_t j = 0; j < n; j++) total += scores[j] = expf(scores[j] - best);
    memset(out, 0, sizeof(float) * D);
    for (int64_t j = 0; j < n; j++) {
        float p = scores[j] / total;
        const float *vj = v + (rows[j] * cap + j) * stride;
        for (int64_t d = 0; d < D; d++) out[d] += p * vj[d];
    }
}

/* A projection outside the step (the cross-attention keys and values of the encoder's output, once
   per batch): the kernel or tiles through BLAS, as in the step. tile: TILE_FLOATS floats. */
void decoder_project(const packed_layer *L, const float *x, int64_t M, const float *bias, float *y, float *tile) {
    project(L, x, M, bias, y, tile);
}

int64_t decoder_tile_floats(void) { return TILE_FLOATS; }

static void linear(const decoder_layer *L, int which, const float *x, int64_t M, float *y, float *tile) {
    project(L->proj[which], x, M, L->bias[which], y, tile);
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

/* x (M, C) <- x + fc2(relu(fc1(x's block input))), with the norms of the model's kind; h, ff, f scratch. */
static void feed_forward(const decoder_desc *D, const decoder_layer *L, float *x, int64_t M, float *h, float *ff,
                         float *f, float *tile) {
    const float *in = block_input(D, L, FFN_NORM, x, M, h);
    linear(L, FC1, in, M, ff, tile);
    for (int64_t i = 0; i < M * D->ffn; i++) ff[i] = ff[i] > 0.0f ? ff[i] : 0.0f;
    linear(L, FC2, ff, M, f, tile);
    residual(D, L, FFN_NORM, x, f, M);
}

/* Floats of scratch a step over M rows needs (decoder_step's last argument): the caller keeps
   one buffer for a whole search, since a fresh one each step paid its page faults every step. */
int64_t decoder_step_scratch(const decoder_desc *D, int64_t M) {
    int64_t longest = D->capacity > D->S ? D->capacity : D->S;
    int64_t tile_floats = sgemm ? TILE_FLOATS + D->C * D->ffn : 0; /* a tile, or a whole fp32 layer's rows */
    return M * (6 * D->C + D->ffn + longest) + tile_floats + M * D->capacity; /* ..., and the ancestry's copy */
}

/* One embedding row as fp32 (exactly the stored value: a centroid, or the fp32 weight). */
static void embedding_row(const packed_layer *E, int64_t r, float *out) {
    if (E->kind == LAYER_DENSE) memcpy(out, E->values + r * E->cols, sizeof(float) * E->cols);
    else if (E->kind == LAYER_LUT4 || E->kind == LAYER_BIN1) lut_dequant(E->index, (int)E->bits, r * E->cols, E->cols, E->codebook, out);
    else masked_dequant(E, r, r + 1, out);
}

/* The model's embed() of one token at one position: its row times sqrt(C), plus the position's
   sinusoid (in that order, unfused, as PyTorch rounds it). */
static void embed(const decoder_desc *D, int64_t token, int64_t position, float *out) {
    embedding_row(D->embed, token, out);
    for (int64_t c = 0; c < D->C; c++) out[c] = out[c] * D->embed_scale + D->positions[position * D->C + c];
}

/* tokens (M): the newest token of each row, at position t; parent (M): the row of step t - 1 that
   row m continues (ignored at t = 0); sentence (M / beams): the memory row of each group of beams.
   x: M * C floats the step works in; logits (M, vocab); work: decoder_step_scratch(D, M) floats. */
void decoder_step(const decoder_desc *D, const int64_t *tokens, float *x, int64_t M, int64_t beams, int64_t t,
                  const int64_t *parent, const int64_t *sentence, float *logits, float *work) {
    int64_t C = D->C, H = D->heads, Dh = C / H, cap = D->capacity, S = D->S;
    int64_t longest = cap > S ? cap : S;
    float *h = work, *q = h + M * C, *k = q + M * C, *v = k + M * C, *a = v + M * C, *f = a + M * C,
          *ff = f + M * C, *scores = ff + M * D->ffn, *tile = scores + M * longest;
    int32_t *before = (int32_t *)(tile + (sgemm ? TILE_FLOATS + C * D->ffn : 0));
    float scale = 1.0f / sqrtf((float)Dh);

    for (int64_t m = 0; m < M; m++) embed(D, tokens[m], t, x + m * C);

    /* row m's prefix is parent[m]'s, and its position t is its own row */
    int32_t *anc = D->ancestry;
    for (int64_t m = 0; m < M && t > 0; m++) memcpy(before + m * t, anc + parent[m] * cap, sizeof(int32_t) * t);
    for (int64_t m = 0; m < M; m++) {
        if (t > 0) memcpy(anc + m * cap, before + m * t, sizeof(int32_t) * t);
        anc[m * cap + t] = (int32_t)m;
    }

    for (int64_t l = 0; l < D->layers; l++) {
        const decoder_layer *L = &D->layer[l];
        const float *in = block_input(D, L, SELF_NORM, x, M, h);
        linear(L, SELF_Q, in, M, q, tile);
        linear(L, SELF_K, in, M, k, tile);
        linear(L, SELF_V, in, M, v, tile);
        float *ck = L->self_k, *cv = L->self_v;
        for (int64_t m = 0; m < M; m++) {
            memcpy(ck + (m * cap + t) * C, k + m * C, sizeof(float) * C);
            memcpy(cv + (m * cap + t) * C, v + m * C, sizeof(float) * C);
        }
        PARALLEL_OVER_ROWS(M)
        for (int64_t m = 0; m < M; m++)
            for (int64_t hd = 0; hd < H; hd++)
                attend_prefix(q + m * C + hd * Dh, ck + hd * Dh, cv + hd * Dh, anc + m * cap, t + 1, cap, C, Dh, scale,
                              scores + m * longest, a + m * C + hd * Dh);
        linear(L, SELF_OUT, a, M, f, tile);
        residual(D, L, SELF_NORM, x, f, M);

        in = block_input(D, L, CROSS_NORM, x, M, h);
        linear(L, CROSS_Q, in, M, q, tile);
        PARALLEL_OVER_ROWS(M)
        for (int64_t m = 0; m < M; m++) {
            int64_t s = sentence[m / beams];
            for (int64_t hd = 0; hd < H; hd++)
                attend(q + m * C + hd * Dh, L->cross_k + s * S * C + hd * Dh, L->cross_v + s * S * C + hd * Dh, S, C,
                       Dh, D->key_padding + s * S, scale, scores + m * longest, a + m * C + hd * Dh);
        }
        linear(L, CROSS_OUT, a, M, f, tile);
        residual(D, L, CROSS_NORM, x, f, M);

        feed_forward(D, L, x, M, h, ff, f, tile);
    }
    const float *in = x;
    if (D->final_weight) {
        layer_norm(x, M, C, D->final_weight, D->final_bias, D->eps, h);
        in = h;
    }
    project(D->out, in, M, NULL, logits, tile);
}

/* The encoder, for the same reason: at batch 1 its PyTorch modules cost a tenth of a sentence. E
   describes the encoder with the decoder's structs (CROSS_* projections and the cross norm unused;
   self_k/self_v, cross_k/cross_v, out and ancestry unused). tokens (n, S) padded source ids,
   key_padding (n, S) 1 at padding; memory (n, S, C) out; work: encoder_scratch(E, n * S) floats.
   Rows at padding positions are computed like the others (attending to the sentence's real
   tokens), as PyTorch computes them; cross-attention never reads them. */
int64_t encoder_scratch(const decoder_desc *E, int64_t M) {
    int64_t tile_floats = sgemm ? TILE_FLOATS + E->C * E->ffn : 0;
    return M * (6 * E->C + E->ffn + E->S) + tile_floats;
}

void encoder_forward(const decoder_desc *E, const int64_t *tokens, int64_t n, const uint8_t *key_padding,
                     float *x, float *work) {
    int64_t C = E->C, H = E->heads, Dh = C / H, S = E->S, M = n * S;
    float *h = work, *q = h + M * C, *k = q + M * C, *v = k + M * C, *a = v + M * C, *f = a + M * C,
          *ff = f + M * C, *scores = ff + M * E->ffn, *tile = scores + M * S;
    float scale = 1.0f / sqrtf((float)Dh);
    for (int64_t m = 0; m < M; m++) embed(E, tokens[m], m % S, x + m * C);
    for (int64_t l = 0; l < E->layers; l++) {
        const decoder_layer *L = &E->layer[l];
        const float *in = block_input(E, L, SELF_NORM, x, M, h);
        linear(L, SELF_Q, in, M, q, tile);
        linear(L, SELF_K, in, M, k, tile);
        linear(L, SELF_V, in, M, v, tile);
        PARALLEL_OVER_ROWS(M)
        for (int64_t m = 0; m < M; m++) {
            int64_t b = m / S;
            for (int64_t hd = 0; hd < H; hd++)
                attend(q + m * C + hd * Dh, k + b * S * C + hd * Dh, v + b * S * C + hd * Dh, S, C, Dh,
                       key_padding + b * S, scale, scores + m * S, a + m * C + hd * Dh);
        }
        linear(L, SELF_OUT, a, M, f, tile);
        residual(E, L, SELF_NORM, x, f, M);
        feed_forward(E, L, x, M, h, ff, f, tile);
    }
    if (E->final_weight) {
        layer_norm(x, M, C, E->final_weight, E->final_bias, E->eps, h);
        memcpy(x, h, sizeof(float) * M * C);
    }
}
