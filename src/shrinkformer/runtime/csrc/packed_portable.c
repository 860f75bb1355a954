/* The layer kernels in portable C (no intrinsics): the same entry points as packed_kernels.c, for
   CPUs without AVX2/FMA (and other architectures), and the reference the SIMD kernels are tested
   against in CI (SHRINKFORMER_NATIVE=portable). Each row of W is decoded into a buffer exactly as
   stored (centroid values, fp32 survivors), then multiplied with every row of x in 8 independent
   lanes, which a compiler vectorizes for whatever SIMD the target has. Products agree with the
   SIMD kernels to float rounding (sums run in another order); dequantized tiles agree exactly. */

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "runtime.h"

#ifdef _OPENMP
#include <omp.h>
#define PRAGMA(text) _Pragma(#text)
#define PARALLEL_IF(cond) PRAGMA(omp parallel for schedule(static) if((cond) && !omp_in_parallel()))
#else
#define PARALLEL_IF(cond)
#endif
#define PARALLEL_FROM_FLOATS (1 << 16) /* a thread costs microseconds to wake */

int packed_kernels_threaded(void) {
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

void packed_kernels_init(void) {}

/* Weight i of a b-bit index stream, most significant bit first, through the codebook. */
static inline float code_at(const uint8_t *w, int bits, int64_t i, const float *codebook) {
    int64_t bit = i * bits;
    unsigned pair = (unsigned)w[bit >> 3] << 8 | (bit + bits > ((bit >> 3) + 1) * 8 ? w[(bit >> 3) + 1] : 0);
    return codebook[(pair >> (16 - bits - (bit & 7))) & ((1u << bits) - 1)];
}

void lut_dequant(const uint8_t *w, int bits, int64_t start, int64_t count, const float *codebook, float *out) {
    PARALLEL_IF(count >= PARALLEL_FROM_FLOATS)
    for (int64_t i = 0; i < count; i++) out[i] = code_at(w, bits, start + i, codebook);
}

#if defined(__aarch64__) && defined(__ARM_NEON)
#include <arm_neon.h>
/* aarch64: 32 4-bit indices (16 bytes, the high nibble first) to 32 floats, exactly. The 16
   centroids are held as four byte planes (plane p: byte p of every centroid); vqtbl1q_u8, NEON's
   byte shuffle, looks an index up in each plane, and zips put each float's four bytes back
   together (the AVX2 kernel's byte-plane idea with NEON's table lookup). */
static void byte_planes(const float *codebook, uint8x16_t planes[4]) {
    uint8_t bytes[4][16];
    for (int c = 0; c < 16; c++) {
        uint32_t bits;
        memcpy(&bits, codebook + c, 4);
        for (int p = 0; p < 4; p++) bytes[p][c] = (uint8_t)(bits >> (8 * p));
    }
    for (int p = 0; p < 4; p++) planes[p] = vld1q_u8(bytes[p]);
}

static void decode32(const uint8_t *w, const uint8x16_t planes[4], float *out) {
    uint8x16_t packed = vld1q_u8(w);
    uint8x16x2_t idx = vzipq_u8(vshrq_n_u8(packed, 4), vandq_u8(packed, vdupq_n_u8(15))); /* weights 0-15, 16-31 */
    for (int h = 0; h < 2; h++) {
        uint8x16x2_t z01 = vzipq_u8(vqtbl1q_u8(planes[0], idx.val[h]), vqtbl1q_u8(planes[1], idx.val[h]));
        uint8x16x2_t z23 = vzipq_u8(vqtbl1q_u8(planes[2], idx.val[h]), vqtbl1q_u8(planes[3], idx.val[h]));
        for (int q = 0; q < 2; q++) {
            uint16x8x2_t f = vzipq_u16(vreinterpretq_u16_u8(z01.val[q]), vreinterpretq_u16_u8(z23.val[q]));
            vst1q_u8((uint8_t *)(out + 16 * h + 8 * q), vreinterpretq_u8_u16(f.val[0]));
            vst1q_u8((uint8_t *)(out + 16 * h + 8 * q + 4), vreinterpretq_u8_u16(f.val[1]));
        }
    }
}
#define HAVE_NEON_LUT4 1
#endif

static inline int survives(const uint8_t *mask_row, int64_t k) { return (mask_row[k >> 3] >> (7 - (k & 7))) & 1; }

static inline float survivor(const packed_layer *L, int64_t s) {
    return L->bits == 32 ? L->values[s] : code_at(L->index, (int)L->bits, s, L->codebook);
}

/* Row n of W, dense, into out (cols floats). */
static void decode_row(const packed_layer *L, int64_t n, float *out) {
    int64_t K = L->cols;
    switch (L->kind) {
        case LAYER_DENSE:
            memcpy(out, L->values + n * K, sizeof(float) * K);
            break;
        case LAYER_LUT4:
#ifdef HAVE_NEON_LUT4
            if (K % 32 == 0) {
                uint8x16_t planes[4];
                byte_planes(L->codebook, planes);
                for (int64_t k = 0; k < K; k += 32) decode32(L->index + (n * K + k) / 2, planes, out + k);
                break;
            }
#endif
            /* fall through */
        case LAYER_BIN1:
            for (int64_t k = 0; k < K; k++) out[k] = code_at(L->index, (int)L->bits, n * K + k, L->codebook);
            break;
        default: {
            const uint8_t *bits = L->mask + n * (K / 8);
            int64_t s = L->row_start[n];
            for (int64_t k = 0; k < K; k++) out[k] = survives(bits, k) ? survivor(L, s++) : 0.0f;
        }
    }
}

void masked_dequant(const packed_layer *L, int64_t r0, int64_t r1, float *out) {
    PARALLEL_IF((r1 - r0) * L->cols >= PARALLEL_FROM_FLOATS)
    for (int64_t n = r0; n < r1; n++) decode_row(L, n, out + (n - r0) * L->cols);
}

static inline float dot8(const float *a, const float *b, int64_t n) {
    float acc[8] = {0};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int u = 0; u < 8; u++) acc[u] += a[i + u] * b[i + u];
    float s = ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]));
    for (; i < n; i++) s += a[i] * b[i];
    return s;
}

void packed_layer_matmul_t(const packed_layer *L, const float *x, int64_t M, const float *bias, float *y) {
    int64_t N = L->rows, K = L->cols;
    PARALLEL_IF(N * K >= PARALLEL_FROM_FLOATS)
    for (int64_t n = 0; n < N; n++) {
        float row[K];
        decode_row(L, n, row);
        for (int64_t m = 0; m < M; m++) y[m * N + n] = dot8(row, x + m * K, K) + (bias ? bias[n] : 0.0f);
    }
}
