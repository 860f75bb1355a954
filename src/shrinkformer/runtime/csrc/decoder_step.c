/* One step of beam-search decoding, the whole decoder in one call: every layer's norms,
   projections (packed or fp32, through packed_layer_matmul_t), self-attention over the cached
   prefix, cross-attention over the encoder's projected keys, the feed-forward block, the final
   norm and the output projection, for M rows (beams x sentences) of one new token each.

   Why native: at batch 1 a step's arithmetic is a few hundred microseconds of packed kernels, and
   the PyTorch module calls around them (about 150 operators per step, each a dispatch) took
   longer than the arithmetic. The search's selection (scores, top-k, finished hypotheses) is
   beam_select.c, called after this step by search.c.

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

#if defined(__AVX2__) || defined(__F16C__)
#include <immintrin.h>
#endif
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "runtime.h"

/* Fortran BLAS sgemm: LP64 (32-bit integers, as torch's MKL exports it) or ILP64 (64-bit
   integers, as numpy's bundled OpenBLAS exports scipy_sgemm_64_). */
typedef void (*sgemm_fn)(const char *ta, const char *tb, const int *m, const int *n, const int *k, const float *alpha,
                         const float *a, const int *lda, const float *b, const int *ldb, const float *beta, float *c,
                         const int *ldc);
typedef void (*sgemm64_fn)(const char *ta, const char *tb, const int64_t *m, const int64_t *n, const int64_t *k,
                           const float *alpha, const float *a, const int64_t *lda, const float *b, const int64_t *ldb,
                           const float *beta, float *c, const int64_t *ldc);
static void *sgemm;
static int sgemm_ilp64;
static int64_t kernel_rows[LAYER_KINDS]; /* per LAYER_* kind: the most rows of x its kernel takes before BLAS wins */
#define TILE_FLOATS (1 << 18)            /* a dequantized tile: 1 MiB, as the PyTorch tile path */

#ifdef _OPENMP
#include <omp.h>
static int max_threads(void) { return omp_get_max_threads(); }
static int thread_id(void) { return omp_get_thread_num(); }
#else
static int max_threads(void) { return 1; }
static int thread_id(void) { return 0; }
#endif

void decoder_step_configure(void *blas_sgemm, int64_t ilp64, int64_t lut4_rows, int64_t bin1_rows,
                            int64_t pruned_rows, int64_t dense_rows) {
    sgemm = blas_sgemm;
    sgemm_ilp64 = (int)ilp64;
    kernel_rows[LAYER_LUT4] = lut4_rows;
    kernel_rows[LAYER_BIN1] = bin1_rows;
    kernel_rows[LAYER_SPARSE] = kernel_rows[LAYER_SPARSE_LUT4] = pruned_rows;
    kernel_rows[LAYER_DENSE] = dense_rows;
}

/* Whether the library was built with OpenMP (every variant alike: it is the build's, not the kernels'). */
int packed_kernels_threaded(void) {
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

/* Threads the kernels and the step use: the OpenMP runtime's (torch's own where torch is loaded:
   one soname, one runtime). */
void shrinkformer_set_threads(int64_t n) {
#ifdef _OPENMP
    if (n > 0) omp_set_num_threads((int)n);
#else
    (void)n;
#endif
}

int64_t shrinkformer_threads(void) { return max_threads(); }

/* The struct layouts this library was compiled with (runtime.h); returns how many values. */
int64_t shrinkformer_layout(int64_t *out, int64_t capacity) {
    int64_t values[] = {
#define LAYOUT_VALUE(v) (int64_t)(v),
        SHRINKFORMER_LAYOUT(LAYOUT_VALUE)
#undef LAYOUT_VALUE
    };
    int64_t n = (int64_t)(sizeof(values) / sizeof(values[0]));
    for (int64_t i = 0; i < n && i < capacity; i++) out[i] = values[i];
    return n;
}

#ifndef SHRINKFORMER_SOURCE_HASH
#define SHRINKFORMER_SOURCE_HASH "unknown"
#endif
#ifndef SHRINKFORMER_VARIANT
#define SHRINKFORMER_VARIANT "unknown"
#endif
/* Which sources, and which kernel variant (x86 or portable), the library was built from. */
const char *shrinkformer_source_hash(void) { return SHRINKFORMER_SOURCE_HASH; }
const char *shrinkformer_variant(void) { return SHRINKFORMER_VARIANT; }

/* Y.T (n, m) = W_tile (k, n).T @ X.T (k, m) in BLAS's column-major terms: y's rows ldc apart. */
static void blas_product(int64_t n, int64_t m, int64_t k, const float *w, const float *x, float *y, int64_t ldc) {
    float one = 1.0f, zero = 0.0f;
    if (sgemm_ilp64) {
        ((sgemm64_fn)sgemm)("T", "N", &n, &m, &k, &one, w, &k, x, &k, &zero, y, &ldc);
    } else {
        int n32 = (int)n, m32 = (int)m, k32 = (int)k, ldc32 = (int)ldc;
        ((sgemm_fn)sgemm)("T", "N", &n32, &m32, &k32, &one, w, &k32, x, &k32, &zero, y, &ldc32);
    }
}

/* Floats of tile scratch the products through BLAS need: one tile per thread. Counted whether or
   not an sgemm is set yet: the runtime sets one on the first search that needs it, and a buffer
   sized before must still hold the tiles (untouched, it costs no resident memory). */
static int64_t tile_floats(void) {
#ifdef __EMSCRIPTEN__
    return 0; /* the page's build never has an sgemm */
#else
    return (int64_t)TILE_FLOATS * max_threads();
#endif
}

/* y (M, N) = x (M, K) @ W.T + bias: the layer's kernel, or tiles of W through sgemm. The tiles are
   split across the threads, each dequantizing its own tile and multiplying it with a
   single-threaded sgemm: one pool of threads (OpenMP's) does all the work, where a BLAS pool of
   its own would spin against the kernels' threads on a small machine. */
static void project(const packed_layer *L, const float *x, int64_t M, const float *bias, float *y, float *tile) {
    if (!sgemm || M <= kernel_rows[L->kind] || L->kind == LAYER_LUT4_INT8) { /* int8: its kernel at every M */
        packed_layer_matmul_t(L, x, M, bias, y);
        return;
    }
    int64_t N = L->rows, K = L->cols, threads = max_threads();
    /* at least one tile per thread (most layers are smaller than one tile), at most a tile's rows */
    int64_t step = (N + threads - 1) / threads, most = TILE_FLOATS / K > 0 ? TILE_FLOATS / K : 1;
    if (L->kind != LAYER_DENSE && step > most) step = most;
    step = (step + 15) / 16 * 16;
    int64_t tiles = (N + step - 1) / step;
#ifdef _OPENMP
#pragma omp parallel for schedule(dynamic) if(tiles > 1)
#endif
    for (int64_t t = 0; t < tiles; t++) {
        int64_t n0 = t * step, n1 = n0 + step < N ? n0 + step : N;
        float *mine = tile + (int64_t)thread_id() * TILE_FLOATS;
        const float *w = mine;
        if (L->kind == LAYER_DENSE) w = L->values + n0 * K;
        else if (L->kind == LAYER_LUT4 || L->kind == LAYER_BIN1)
            lut_dequant(L->index, (int)L->bits, n0 * K, (n1 - n0) * K, L->codebook, mine);
        else masked_dequant(L, n0, n1, mine);
        blas_product(n1 - n0, M, K, w, x, y + n0, N);
        scale_and_bias(L->row_scale, bias, M, N, n0, n1, y);
    }
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

/* The AVX2 build's 8 lanes and reduction order, which the portable build keeps (fused_madd per lane,
   then the same pairwise sums), so both compute the same attention scores bit for bit. */
static inline float dot(const float *a, const float *b, int64_t n) {
    int64_t i = 0;
    float s;
#ifdef __AVX2__
    __m256 acc = _mm256_setzero_ps();
    for (; i + 8 <= n; i += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc);
    __m128 lo = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
    lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
    s = _mm_cvtss_f32(_mm_add_ss(lo, _mm_movehdup_ps(lo)));
#else
    float acc[8] = {0};
    for (; i + 8 <= n; i += 8)
        for (int u = 0; u < 8; u++) acc[u] = fused_madd(a[i + u], b[i + u], acc[u]);
    float q0 = acc[0] + acc[4], q1 = acc[1] + acc[5], q2 = acc[2] + acc[6], q3 = acc[3] + acc[7];
    s = (q0 + q2) + (q1 + q3);
#endif
    for (; i < n; i++) s += a[i] * b[i];
    return s;
}

/* Half-precision keys and values (the int8 mode's caches, search_desc.half_kv): written rounded to
   nearest even, read back widened exactly, so every build computes the same scores from them
   (F16C here, prepare.c's scalar conversions in the portable build and for the tails). */
static inline void widen(const uint16_t *h, int64_t n, float *out) {
    int64_t i = 0;
#ifdef __F16C__
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(out + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(h + i))));
#endif
    if (i < n) half_to_float(h + i, n - i, out + i);
}

void kv_narrow(const float *x, int64_t n, uint16_t *out) {
    int64_t i = 0;
#ifdef __F16C__
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(out + i),
                         _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
#endif
    if (i < n) float_to_half(x + i, n - i, out + i);
}

/* Entry `at` of a key/value buffer of floats or (half) halves, as a pointer */
static inline const void *kv_at(const void *base, int64_t at, int half) {
    return (const char *)base + at * (half ? (int64_t)sizeof(uint16_t) : (int64_t)sizeof(float));
}

/* D entries of a key/value buffer from `at` as fp32: the floats themselves, or the halves widened into tmp */
static inline const float *kv_row(const void *base, int64_t at, int half, int64_t D, float *tmp) {
    if (!half) return (const float *)base + at;
    widen((const uint16_t *)base + at, D, tmp);
    return tmp;
}

/* out (D) = softmax over keys j < n (skipping skip[j] != 0) of q.k_j * scale, times v_j. Keys and
   values are rows `stride` entries apart, floats or (half) halves. */
static void attend(const float *q, const void *k, const void *v, int half, int64_t n, int64_t stride, int64_t D,
                   const uint8_t *skip, float scale, float *scores, float *out) {
    float tmp[D];
    float best = -INFINITY;
    for (int64_t j = 0; j < n; j++) {
        if (skip && skip[j]) { scores[j] = -INFINITY; continue; }
        scores[j] = dot(q, kv_row(k, j * stride, half, D, tmp), D) * scale;
        if (scores[j] > best) best = scores[j];
    }
    float total = 0;
    for (int64_t j = 0; j < n; j++) total += scores[j] = scores[j] == -INFINITY ? 0.0f : expf(scores[j] - best);
    memset(out, 0, sizeof(float) * D);
    for (int64_t j = 0; j < n; j++) {
        if (scores[j] == 0.0f) continue;
        float p = scores[j] / total;
        const float *vj = kv_row(v, j * stride, half, D, tmp);
        for (int64_t d = 0; d < D; d++) out[d] += p * vj[d];
    }
}

/* Self-attention of one row and head over positions 0..n-1 of its prefix: position j's key and
   value live in buffer row rows[j] (the ancestry), `cap` positions of `stride` entries per row. */
static void attend_prefix(const float *q, const void *k, const void *v, int half, const int32_t *rows, int64_t n,
                          int64_t cap, int64_t stride, int64_t D, float scale, float *scores, float *out) {
    float tmp[D];
    float best = -INFINITY;
    for (int64_t j = 0; j < n; j++) {
        scores[j] = dot(q, kv_row(k, (rows[j] * cap + j) * stride, half, D, tmp), D) * scale;
        if (scores[j] > best) best = scores[j];
    }
    float total = 0;
    for (int64_t j = 0; j < n; j++) total += scores[j] = expf(scores[j] - best);
    memset(out, 0, sizeof(float) * D);
    for (int64_t j = 0; j < n; j++) {
        float p = scores[j] / total;
        const float *vj = kv_row(v, (rows[j] * cap + j) * stride, half, D, tmp);
        for (int64_t d = 0; d < D; d++) out[d] += p * vj[d];
    }
}

/* A projection outside the step (the cross-attention keys and values of the encoder's output, once
   per batch): the kernel or tiles through BLAS, as in the step. tile: decoder_tile_floats() floats. */
void decoder_project(const packed_layer *L, const float *x, int64_t M, const float *bias, float *y, float *tile) {
    project(L, x, M, bias, y, tile);
}

int64_t decoder_tile_floats(void) { return tile_floats(); }

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
    return M * (6 * D->C + D->ffn + longest) + tile_floats() + M * D->capacity; /* ..., and the ancestry's copy */
}

/* One embedding row as fp32 (exactly the stored value: a centroid, or the fp32 weight). */
static void embedding_row(const packed_layer *E, int64_t r, float *out) {
    if (E->kind == LAYER_DENSE) memcpy(out, E->values + r * E->cols, sizeof(float) * E->cols);
    else if (E->kind == LAYER_LUT4 || E->kind == LAYER_BIN1) lut_dequant(E->index, (int)E->bits, r * E->cols, E->cols, E->codebook, out);
    else if (E->kind == LAYER_LUT4_INT8) int8_row(E, r, out);
    else masked_dequant(E, r, r + 1, out);
    if (E->row_scale) /* the stored weight: centroid times scale, one product, as the codec computes it */
        for (int64_t c = 0; c < E->cols; c++) out[c] *= E->row_scale[r];
}

/* The positional table (length, dim) as runtime/model.py's sinusoids computes it: frequencies and
   angles in float32, exp/sin/cos in double rounded to float (the same bits from any libm). */
void sinusoid_table(float *table, int64_t length, int64_t dim) {
    float scale = (float)(-log(10000.0) / (double)dim);
    for (int64_t i = 0; i < dim; i += 2) {
        float x = (float)i * scale;
        float freq = (float)exp((double)x);
        for (int64_t p = 0; p < length; p++) {
            float angle = (float)p * freq;
            table[p * dim + i] = (float)sin((double)angle);
            if (i + 1 < dim) table[p * dim + i + 1] = (float)cos((double)angle);
        }
    }
}

/* The model's embed() of one token at one position: its row times sqrt(C), plus the position's
   sinusoid (in that order, unfused, as PyTorch rounds it). */
static void embed(const decoder_desc *D, int64_t token, int64_t position, float *out) {
    embedding_row(D->embed, token, out);
    for (int64_t c = 0; c < D->C; c++) out[c] = out[c] * D->embed_scale + D->positions[position * D->C + c];
}

/* tokens (M): the newest token of each row, at position t; parent (M): the row of step t - 1 that
   row m continues (ignored at t = 0); sentence (M / beams): the memory row of each group of beams.
   x: M * C floats the step works in; logits (M, vocab), or NULL: x holds the output projection's
   input when the step returns; work: decoder_step_scratch(D, M) floats. */
void decoder_step(const decoder_desc *D, const int64_t *tokens, float *x, int64_t M, int64_t beams, int64_t t,
                  const int64_t *parent, const int64_t *sentence, float *logits, float *work) {
    int64_t C = D->C, H = D->heads, Dh = C / H, cap = D->capacity, S = D->S;
    int64_t longest = cap > S ? cap : S;
    float *h = work, *q = h + M * C, *k = q + M * C, *v = k + M * C, *a = v + M * C, *f = a + M * C,
          *ff = f + M * C, *scores = ff + M * D->ffn, *tile = scores + M * longest;
    int32_t *before = (int32_t *)(tile + tile_floats());
    float scale = 1.0f / sqrtf((float)Dh);
    int half = D->half_kv != 0;

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
        void *ck = L->self_k, *cv = L->self_v;
        for (int64_t m = 0; m < M; m++) {
            if (half) {
                kv_narrow(k + m * C, C, (uint16_t *)ck + (m * cap + t) * C);
                kv_narrow(v + m * C, C, (uint16_t *)cv + (m * cap + t) * C);
            } else {
                memcpy((float *)ck + (m * cap + t) * C, k + m * C, sizeof(float) * C);
                memcpy((float *)cv + (m * cap + t) * C, v + m * C, sizeof(float) * C);
            }
        }
        PARALLEL_OVER_ROWS(M)
        for (int64_t m = 0; m < M; m++)
            for (int64_t hd = 0; hd < H; hd++)
                attend_prefix(q + m * C + hd * Dh, kv_at(ck, hd * Dh, half), kv_at(cv, hd * Dh, half), half,
                              anc + m * cap, t + 1, cap, C, Dh, scale, scores + m * longest, a + m * C + hd * Dh);
        linear(L, SELF_OUT, a, M, f, tile);
        residual(D, L, SELF_NORM, x, f, M);

        in = block_input(D, L, CROSS_NORM, x, M, h);
        linear(L, CROSS_Q, in, M, q, tile);
        PARALLEL_OVER_ROWS(M)
        for (int64_t m = 0; m < M; m++) {
            int64_t s = sentence[m / beams];
            for (int64_t hd = 0; hd < H; hd++)
                attend(q + m * C + hd * Dh, kv_at(L->cross_k, s * S * C + hd * Dh, half),
                       kv_at(L->cross_v, s * S * C + hd * Dh, half), half, S, C, Dh, D->key_padding + s * S, scale,
                       scores + m * longest, a + m * C + hd * Dh);
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
    if (!logits) { /* the caller projects x, in chunks of rows (search.c with an int8 output layer) */
        if (in != x) memcpy(x, in, sizeof(float) * (size_t)(M * C));
        return;
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
    return M * (6 * E->C + E->ffn + E->S) + tile_floats();
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
                attend(q + m * C + hd * Dh, k + b * S * C + hd * Dh, v + b * S * C + hd * Dh, 0, S, C, Dh,
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
