/* The selection half of a beam-search step in one call: for n sentences of k beams each, from
   the step's logits (n * k rows of V), each row's log-softmax, PAD and BOS ruled out, EOS forced
   where a sentence is at its length limit, the beam's score added, each beam's best c = min(2k, V)
   candidates, then the sentence's best 2k of those k * c; among its best k, a finite EOS finishes
   a hypothesis; the best k others continue.

   Why native: at batch 1 the same selection as PyTorch operators (model/search.py) was about a
   third of a sentence's time, a dozen dispatches per step around microseconds of arithmetic.
   It is the same search: log-softmax as PyTorch computes it ((x - max) - log(sum(exp(x - max)))),
   so scores agree to rounding. Ties rank the lower beam, then the lower token first (torch.topk
   leaves their order unspecified).

   The best c of a row are the best c of its raw logits (x -> (x - max) - lse + score is monotone),
   so one pass keeps the max and a sorted short list of raw values; a vector compare against the
   list's last entry skips almost every element. A second pass sums the exponentials. */

#ifdef __AVX2__
#include <immintrin.h>
#endif
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "runtime.h"

#ifdef _OPENMP
#define PARALLEL_OVER_SENTENCES(n) _Pragma("omp parallel for schedule(dynamic) if(n >= 8)")
#else
#define PARALLEL_OVER_SENTENCES(n)
#endif

#ifdef __AVX2__
/* e^x for 8 lanes, x <= 0 (logits less their max): Cephes' expf, reduced by ln 2, a degree-6
   polynomial, within 2 ulp; below -87.3 it returns 2^-126 where expf underflows towards 0,
   which a sum that holds e^0 = 1 cannot tell apart. */
static inline __m256 exp8(__m256 x) {
    x = _mm256_max_ps(x, _mm256_set1_ps(-87.3365447505f));
    __m256 fx = _mm256_floor_ps(_mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), _mm256_set1_ps(0.5f)));
    x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693359375f), x);
    x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.12194440e-4f), x);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, x, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, x, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, x, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, x, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, x, _mm256_set1_ps(5.0000001201e-1f));
    __m256 y = _mm256_add_ps(_mm256_fmadd_ps(_mm256_mul_ps(p, x), x, x), _mm256_set1_ps(1.0f));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(fx), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(y, _mm256_castsi256_ps(e));
}

static inline float hmax8(__m256 v) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    return _mm_cvtss_f32(m);
}

static inline float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

#else
/* The same polynomial one lane at a time, fused where the AVX2 build fuses: the same values. */
static inline float exp1(float x) {
    x = x > -87.3365447505f ? x : -87.3365447505f;
    float fx = floorf(fused_madd(x, 1.44269504088896341f, 0.5f));
    x = fused_madd(-fx, 0.693359375f, x);
    x = fused_madd(-fx, -2.12194440e-4f, x);
    float p = 1.9875691500e-4f;
    p = fused_madd(p, x, 1.3981999507e-3f);
    p = fused_madd(p, x, 8.3334519073e-3f);
    p = fused_madd(p, x, 4.1665795894e-2f);
    p = fused_madd(p, x, 1.6666665459e-1f);
    p = fused_madd(p, x, 5.0000001201e-1f);
    float y = fused_madd(p * x, x, x) + 1.0f;
    union { int32_t i; float f; } e = {.i = ((int32_t)lrintf(fx) + 127) << 23};
    return y * e.f;
}
#endif

/* Insert (x, i) into the descending list (val, idx) of *count <= c entries; an equal value goes
   after those already there (they have lower indices). */
static inline void insert(float *val, int64_t *idx, int64_t *count, int64_t c, float x, int64_t i) {
    int64_t p = *count < c ? (*count)++ : c - 1;
    while (p > 0 && val[p - 1] < x) {
        val[p] = val[p - 1];
        idx[p] = idx[p - 1];
        p--;
    }
    val[p] = x;
    idx[p] = i;
}

#ifdef __AVX2__
/* One row: its max, log-sum-exp and best c raw logits (tokens pad and bos excluded). */
static float row_best(const float *x, int64_t V, int64_t c, int64_t pad, int64_t bos, float *val, int64_t *idx,
                      int64_t *count) {
    __m256 vmax = _mm256_set1_ps(-INFINITY);
    float mx = -INFINITY;
    *count = 0;
    int64_t v = 0;
    for (; v + 8 <= V; v += 8) {
        __m256 xs = _mm256_loadu_ps(x + v);
        vmax = _mm256_max_ps(vmax, xs);
        float threshold = *count < c ? -INFINITY : val[c - 1];
        if (*count < c || _mm256_movemask_ps(_mm256_cmp_ps(xs, _mm256_set1_ps(threshold), _CMP_GT_OQ)))
            for (int64_t u = v; u < v + 8; u++)
                if (u != pad && u != bos && (*count < c || x[u] > val[c - 1])) insert(val, idx, count, c, x[u], u);
    }
    for (; v < V; v++) {
        mx = x[v] > mx ? x[v] : mx;
        if (v != pad && v != bos && (*count < c || x[v] > val[c - 1])) insert(val, idx, count, c, x[v], v);
    }
    float m = hmax8(vmax);
    return m > mx ? m : mx;
}

static float row_max(const float *x, int64_t V) {
    __m256 vmax = _mm256_set1_ps(-INFINITY);
    float mx = -INFINITY;
    int64_t v = 0;
    for (; v + 8 <= V; v += 8) vmax = _mm256_max_ps(vmax, _mm256_loadu_ps(x + v));
    for (; v < V; v++) mx = x[v] > mx ? x[v] : mx;
    float m = hmax8(vmax);
    return m > mx ? m : mx;
}

static float row_log_sum_exp_less_max(const float *x, int64_t V, float m) {
    __m256 acc = _mm256_setzero_ps(), vm = _mm256_set1_ps(m);
    int64_t v = 0;
    for (; v + 8 <= V; v += 8) acc = _mm256_add_ps(acc, exp8(_mm256_sub_ps(_mm256_loadu_ps(x + v), vm)));
    float s = hsum8(acc);
    for (; v < V; v++) s += expf(x[v] - m);
    return logf(s);
}

#else
static float row_best(const float *x, int64_t V, int64_t c, int64_t pad, int64_t bos, float *val, int64_t *idx,
                      int64_t *count) {
    float mx = -INFINITY;
    *count = 0;
    for (int64_t v = 0; v < V; v++) {
        mx = x[v] > mx ? x[v] : mx;
        if (v != pad && v != bos && (*count < c || x[v] > val[c - 1])) insert(val, idx, count, c, x[v], v);
    }
    return mx;
}

static float row_max(const float *x, int64_t V) {
    float mx = -INFINITY;
    for (int64_t v = 0; v < V; v++) mx = x[v] > mx ? x[v] : mx;
    return mx;
}

/* 8 lanes summed as the AVX2 build sums them, then its horizontal order: the same float. */
static float row_log_sum_exp_less_max(const float *x, int64_t V, float m) {
    float acc[8] = {0};
    int64_t v = 0;
    for (; v + 8 <= V; v += 8)
        for (int u = 0; u < 8; u++) acc[u] += exp1(x[v + u] - m);
    float q0 = acc[0] + acc[4], q1 = acc[1] + acc[5], q2 = acc[2] + acc[6], q3 = acc[3] + acc[7];
    float s = (q0 + q2) + (q1 + q3);
    for (; v < V; v++) s += expf(x[v] - m);
    return logf(s);
}
#endif

/* logits (n * k, V); scores (n * k): in, each beam's score; out, the continuing beams' scores.
   at_limit (n) or NULL: 1 where only EOS may follow. Out, per sentence b and slot j < k:
   parent[b * k + j] the input row (b * k + beam) the j-th continuing beam extends, token[...] its
   new token; finished_beam[b * k + j] the beam whose EOS is the sentence's j-th best candidate
   (-1 where that candidate is not a finite EOS), finished_score its score. Returns how many
   candidates finished. */
int64_t beam_select(const float *logits, int64_t n, int64_t k, int64_t V, float *scores, const uint8_t *at_limit,
                    int64_t pad, int64_t bos, int64_t eos, int64_t *parent, int64_t *token, int64_t *finished_beam,
                    float *finished_score) {
    int64_t c = 2 * k < V ? 2 * k : V, want = 2 * k, finished = 0;
    PARALLEL_OVER_SENTENCES(n)
    for (int64_t b = 0; b < n; b++) {
        /* one allocation: a beam's best raw logits (c values, c tokens), the pool of every beam's
           candidates (k * c scores, k * c tokens) and the sentence's best (2k pool positions) */
        int64_t *idx = malloc(sizeof(int64_t) * (size_t)(2 * c + 2 * k * c + want)), *pool_tok = idx + c,
                *best = pool_tok + k * c;
        float *val = (float *)(best + want), *pool_score = val + c;
        int64_t pooled = 0;
        for (int64_t j = 0; j < k; j++) {
            const float *x = logits + (b * k + j) * V;
            float score = scores[b * k + j];
            if (at_limit && at_limit[b]) { /* EOS, then any c - 1 others at -inf */
                float m = row_max(x, V);
                pool_score[pooled] = ((x[eos] - m) - row_log_sum_exp_less_max(x, V, m)) + score;
                pool_tok[pooled++] = eos;
                for (int64_t v = 0, added = 1; added < c; v++)
                    if (v != eos) { pool_score[pooled] = -INFINITY; pool_tok[pooled++] = v; added++; }
                continue;
            }
            int64_t count;
            float m = row_best(x, V, c, pad, bos, val, idx, &count);
            float lse = row_log_sum_exp_less_max(x, V, m);
            for (int64_t r = 0; r < count; r++) {
                pool_score[pooled] = ((val[r] - m) - lse) + score;
                pool_tok[pooled++] = idx[r];
            }
            for (int64_t v = 0; count < c; v++) /* fewer than c tokens besides PAD and BOS */
                if (v == pad || v == bos) { pool_score[pooled] = -INFINITY; pool_tok[pooled++] = v; count++; }
        }
        /* the sentence's best 2k of the pool: positions sorted by score, stable */
        int64_t have = 0;
        for (int64_t p = 0; p < pooled; p++) {
            if (have == want && !(pool_score[p] > pool_score[best[want - 1]])) continue;
            int64_t q = have < want ? have++ : want - 1;
            while (q > 0 && pool_score[best[q - 1]] < pool_score[p]) { best[q] = best[q - 1]; q--; }
            best[q] = p;
        }
        int64_t kept = 0, done = 0;
        for (int64_t r = 0; r < k; r++) {
            int64_t p = best[r];
            int is_eos = pool_tok[p] == eos && isfinite(pool_score[p]);
            finished_beam[b * k + r] = is_eos ? p / c : -1;
            finished_score[b * k + r] = pool_score[p];
            done += is_eos;
        }
        /* the best k that are not a finite EOS continue (then finite EOS ones, only where the
           vocabulary is too small to leave k others) */
        for (int pass = 0; pass < 2; pass++)
            for (int64_t r = 0; r < have && kept < k; r++) {
                int64_t p = best[r];
                if ((pool_tok[p] == eos && isfinite(pool_score[p])) != pass) continue;
                parent[b * k + kept] = b * k + p / c;
                token[b * k + kept] = pool_tok[p];
                scores[b * k + kept] = pool_score[p];
                kept++;
            }
        free(idx);
#ifdef _OPENMP
#pragma omp atomic
#endif
        finished += done;
    }
    return finished;
}
