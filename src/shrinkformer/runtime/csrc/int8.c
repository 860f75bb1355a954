/* The opt-in int8 mode for 4-bit layers: each row of activations quantized to 8 bits, the 16
   centroids to int8, the products in integers (AVX-512 VNNI's vpdpbusd where the CPU has it: 64
   multiply-adds an instruction, against fp32 FMA's 16), as CTranslate2's int8 runs its models.
   Not the exact mode: translations move with the quantization (benchmarks/runtime.py measures the
   BLEU), so it runs only where asked (Translator.load(..., int8=True), shrinkformer-translate --int8).

   Layout: W's rows in blocks of 16 and its columns in groups of 8; each (block, group) is 64 bytes,
   byte 4 * lane + j holding row (16 * block + lane)'s index for column 8 * group + j in its low
   nibble and for column 8 * group + 4 + j in its high nibble. One 512-bit load and two byte
   shuffles give 16 rows x 4 columns of int8 weights twice, each 32-bit lane one row's four: what
   vpdpbusd multiplies with four activation bytes broadcast to every lane. Same size as the 4-bit
   stream it replaces.

   Arithmetic: xq = round(x * 127 / max|x's row|) + 128, unsigned as vpdpbusd takes it, so
   sum_k xq_k w_k = sum_k x_k w_k / sx + 128 * sum_k w_k, and y = (acc - 128 * qsum) * sx * qscale
   + bias. The integer cores agree exactly, the quantization and the epilogue (int8_finish)
   are this file's, which the VNNI core repeats in 16 lanes: every core on every CPU gives the same results. */

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "runtime.h"

#define BLOCK_ROWS 16
#define GROUP_COLS 8
#define GROUP_BYTES 64

/* index k of row n in prepare.c's 4-bit stream (high nibble first) */
static inline uint8_t nibble(const uint8_t *index, int64_t K, int64_t n, int64_t k) {
    uint8_t b = index[(n * K + k) >> 1];
    return (k & 1) ? (uint8_t)(b & 0x0f) : (uint8_t)(b >> 4);
}

int64_t layer_to_int8(packed_layer *L) {
    int64_t N = L->rows, K = L->cols, groups = K / GROUP_COLS;
    if (L->kind != LAYER_LUT4 || N % BLOCK_ROWS || K % GROUP_COLS) return -1;
    float amax = 0.0f;
    for (int c = 0; c < 16; c++) amax = fmaxf(amax, fabsf(L->codebook[c]));
    float scale = amax > 0.0f ? amax / 127.0f : 1.0f;
    int8_t *table = calloc(16, 1);
    int32_t *sums = malloc(sizeof(int32_t) * (size_t)N);
    uint8_t *w = malloc((size_t)(N * K / 2) + GROUP_BYTES);
    if (!table || !sums || !w) {
        free(table);
        free(sums);
        free(w);
        return -2;
    }
    for (int c = 0; c < 16; c++) {
        float q = rintf(L->codebook[c] / scale);
        table[c] = (int8_t)(q > 127.0f ? 127.0f : q < -127.0f ? -127.0f : q);
    }
    for (int64_t n = 0; n < N; n++) {
        int32_t sum = 0;
        for (int64_t k = 0; k < K; k++) sum += table[nibble(L->index, K, n, k)];
        sums[n] = sum;
    }
    for (int64_t b = 0; b < N / BLOCK_ROWS; b++)
        for (int64_t g = 0; g < groups; g++) {
            uint8_t *dst = w + (b * groups + g) * GROUP_BYTES;
            for (int64_t lane = 0; lane < BLOCK_ROWS; lane++)
                for (int64_t j = 0; j < 4; j++) {
                    int64_t n = b * BLOCK_ROWS + lane, k = g * GROUP_COLS + j;
                    dst[4 * lane + j] = (uint8_t)(nibble(L->index, K, n, k) | nibble(L->index, K, n, k + 4) << 4);
                }
        }
    free((void *)L->index);
    L->index = w;
    L->qcodebook = table;
    L->qsum = sums;
    L->qscale = scale;
    L->kind = LAYER_LUT4_INT8;
    return 0;
}

/* Row r of W as fp32: the centroids themselves (an embedding row is looked up exactly). */
void int8_row(const packed_layer *L, int64_t r, float *out) {
    int64_t K = L->cols, groups = K / GROUP_COLS;
    const uint8_t *src = L->index + (r / BLOCK_ROWS) * groups * GROUP_BYTES + 4 * (r % BLOCK_ROWS);
    for (int64_t g = 0; g < groups; g++, src += GROUP_BYTES)
        for (int64_t j = 0; j < 4; j++) {
            out[g * GROUP_COLS + j] = L->codebook[src[j] & 0x0f];
            out[g * GROUP_COLS + 4 + j] = L->codebook[src[j] >> 4];
        }
}

/* one block's 16 outputs of row m from its 16 integer sums (packed_kernels.c's VNNI core does the same
   in 16 lanes) */
static inline void int8_finish(const packed_layer *L, const int32_t *acc, float sx, const float *bias, int64_t n0,
                               float *restrict y) {
    const float s = sx * L->qscale;
    const int32_t *sum = L->qsum + n0;
    for (int64_t i = 0; i < 16; i++) {
        float v = (float)(acc[i] - 128 * sum[i]) * s; /* rounded here, then the bias: no FMA anywhere */
        y[i] = bias ? v + bias[n0 + i] : v;
    }
}

/* Each block's 16 rows decoded once into int32s, column-major (K x 16), then per row of x one
   broadcast times 16 lanes a column: loops a vectorizer turns into SIMD on any CPU (integer sums,
   so any order gives the same). */
void int8_core_portable(const packed_layer *L, const uint8_t *xq, const float *sx, int64_t M, const float *bias,
                        float *y, int64_t b0, int64_t b1) {
    int64_t N = L->rows, K = L->cols, groups = K / GROUP_COLS;
    const uint8_t *w = L->index;
    const int8_t *table = L->qcodebook;
    int32_t(*wv)[BLOCK_ROWS] = malloc(sizeof(int32_t) * (size_t)(K * BLOCK_ROWS));
    for (int64_t b = b0; b < b1; b++) {
        if (wv)
            for (int64_t g = 0; g < groups; g++) {
                const uint8_t *src = w + (b * groups + g) * GROUP_BYTES;
                for (int64_t lane = 0; lane < BLOCK_ROWS; lane++)
                    for (int64_t j = 0; j < 4; j++) {
                        wv[g * GROUP_COLS + j][lane] = table[src[4 * lane + j] & 0x0f];
                        wv[g * GROUP_COLS + 4 + j][lane] = table[src[4 * lane + j] >> 4];
                    }
            }
        for (int64_t m = 0; m < M; m++) {
            const uint8_t *xr = xq + m * K;
            int32_t a[BLOCK_ROWS] = {0};
            if (wv) {
                for (int64_t k = 0; k < K; k++) {
                    int32_t xv = xr[k];
                    const int32_t *col = wv[k];
#pragma GCC unroll 1
                    for (int64_t half = 0; half < BLOCK_ROWS; half += 8)
                        for (int64_t lane = half; lane < half + 8; lane++) a[lane] += xv * col[lane];
                }
            } else { /* out of memory: the same sums, a weight at a time */
                for (int64_t lane = 0; lane < BLOCK_ROWS; lane++) {
                    const uint8_t *src = w + b * groups * GROUP_BYTES + 4 * lane;
                    for (int64_t g = 0; g < groups; g++, src += GROUP_BYTES)
                        for (int64_t j = 0; j < 4; j++)
                            a[lane] += xr[g * GROUP_COLS + j] * table[src[j] & 0x0f] +
                                       xr[g * GROUP_COLS + 4 + j] * table[src[j] >> 4];
                }
            }
            int8_finish(L, a, sx[m], bias, b * BLOCK_ROWS, y + m * N + b * BLOCK_ROWS);
        }
    }
    free(wv);
}

void int8_matmul_t(const packed_layer *L, const float *x, int64_t M, const float *bias, float *y) {
    int64_t N = L->rows, K = L->cols, blocks = N / BLOCK_ROWS;
    uint8_t *xq = malloc((size_t)(M * K) + 8);
    float *sx = malloc(sizeof(float) * (size_t)M);
    if (!xq || !sx) { /* out of memory: NaN, not stale values, reach the search */
        for (int64_t i = 0; i < M * N; i++) y[i] = NAN;
        goto done;
    }
    PARALLEL_IF(M * K >= PARALLEL_FROM_FLOATS)
    for (int64_t m = 0; m < M; m++) {
        const float *restrict r = x + m * K;
        uint8_t *restrict out = xq + m * K; /* restrict: a byte store may alias anything, which stops vectorizing */
        float amax = 0.0f;
        for (int64_t k = 0; k < K; k++) {
            float a = r[k] < 0.0f ? -r[k] : r[k];
            amax = a > amax ? a : amax;
        }
        float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
        sx[m] = amax > 0.0f ? amax / 127.0f : 0.0f;
        for (int64_t k = 0; k < K; k++) {
            float q = rintf(r[k] * inv);
            q = q > 127.0f ? 127.0f : q < -127.0f ? -127.0f : q;
            out[k] = (uint8_t)((int32_t)q + 128);
        }
    }
    int8_core_fn core = L->wide && int8_core_vnni ? int8_core_vnni : int8_core_portable;
#ifdef _OPENMP
#pragma omp parallel if (M * N * K >= 64 * PARALLEL_FROM_FLOATS && !omp_in_parallel())
    {
        int64_t t = omp_get_thread_num(), T = omp_get_num_threads();
        core(L, xq, sx, M, bias, y, blocks * t / T, blocks * (t + 1) / T);
    }
#else
    core(L, xq, sx, M, bias, y, 0, blocks);
#endif
done:
    free(sx);
    free(xq);
}
