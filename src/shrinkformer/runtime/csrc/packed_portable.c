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

#if defined(__wasm_simd128__)
#include <wasm_simd128.h>
/* WebAssembly SIMD128 (the page's build): the NEON decoding above with i8x16.swizzle as the byte
   shuffle, and the 1-bit decoding as a per-lane bit test choosing between the two centroids; the
   same floats, so the products are the portable ones bit for bit. */
static void byte_planes(const float *codebook, v128_t planes[4]) {
    uint8_t bytes[4][16];
    for (int c = 0; c < 16; c++) {
        uint32_t bits;
        memcpy(&bits, codebook + c, 4);
        for (int p = 0; p < 4; p++) bytes[p][c] = (uint8_t)(bits >> (8 * p));
    }
    for (int p = 0; p < 4; p++) planes[p] = wasm_v128_load(bytes[p]);
}

#define ZIP8_LO(a, b) wasm_i8x16_shuffle(a, b, 0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23)
#define ZIP8_HI(a, b) wasm_i8x16_shuffle(a, b, 8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31)
#define ZIP16_LO(a, b) wasm_i16x8_shuffle(a, b, 0, 8, 1, 9, 2, 10, 3, 11)
#define ZIP16_HI(a, b) wasm_i16x8_shuffle(a, b, 4, 12, 5, 13, 6, 14, 7, 15)

static void decode32(const uint8_t *w, const v128_t planes[4], float *out) {
    v128_t packed = wasm_v128_load(w);
    v128_t hi = wasm_u8x16_shr(packed, 4), lo = wasm_v128_and(packed, wasm_i8x16_splat(15));
    v128_t idx[2] = {ZIP8_LO(hi, lo), ZIP8_HI(hi, lo)}; /* weights 0-15, 16-31 */
    for (int h = 0; h < 2; h++) {
        v128_t b0 = wasm_i8x16_swizzle(planes[0], idx[h]), b1 = wasm_i8x16_swizzle(planes[1], idx[h]);
        v128_t b2 = wasm_i8x16_swizzle(planes[2], idx[h]), b3 = wasm_i8x16_swizzle(planes[3], idx[h]);
        v128_t z01[2] = {ZIP8_LO(b0, b1), ZIP8_HI(b0, b1)}, z23[2] = {ZIP8_LO(b2, b3), ZIP8_HI(b2, b3)};
        for (int q = 0; q < 2; q++) {
            wasm_v128_store(out + 16 * h + 8 * q, ZIP16_LO(z01[q], z23[q]));
            wasm_v128_store(out + 16 * h + 8 * q + 4, ZIP16_HI(z01[q], z23[q]));
        }
    }
}

/* 8 weights per index byte, most significant bit first */
static void decode_bin1(const uint8_t *w, int64_t K, const float *codebook, float *out) {
    v128_t c0 = wasm_f32x4_splat(codebook[0]), c1 = wasm_f32x4_splat(codebook[1]);
    v128_t first = wasm_i32x4_make(128, 64, 32, 16), second = wasm_i32x4_make(8, 4, 2, 1), zero = wasm_i32x4_splat(0);
    for (int64_t k = 0; k < K; k += 8) {
        v128_t b = wasm_i32x4_splat(w[k >> 3]);
        v128_t m0 = wasm_i32x4_ne(wasm_v128_and(b, first), zero), m1 = wasm_i32x4_ne(wasm_v128_and(b, second), zero);
        wasm_v128_store(out + k, wasm_v128_bitselect(c1, c0, m0));
        wasm_v128_store(out + k + 4, wasm_v128_bitselect(c1, c0, m1));
    }
}
#define HAVE_SIMD_LUT4 1
#define HAVE_SIMD_BIN1 1
#elif defined(HAVE_NEON_LUT4)
#define HAVE_SIMD_LUT4 1
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
#ifdef HAVE_SIMD_LUT4
            if (K % 32 == 0) {
#ifdef HAVE_NEON_LUT4
                uint8x16_t planes[4];
#else
                v128_t planes[4];
#endif
                byte_planes(L->codebook, planes);
                for (int64_t k = 0; k < K; k += 32) decode32(L->index + (n * K + k) / 2, planes, out + k);
                break;
            }
#endif
            /* fall through */
        case LAYER_BIN1:
#ifdef HAVE_SIMD_BIN1
            if (L->kind == LAYER_BIN1) { /* cols are a multiple of 8 for every kernel's layer */
                decode_bin1(L->index + n * K / 8, K, L->codebook, out);
                break;
            }
#endif
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

#if defined(HAVE_SIMD_BIN1)
/* dot8 for four rows of x at once, the decoded row loaded once for them: lanes 0-3 and 4-7 of
   dot8's accumulators are two vectors, added and reduced in dot8's order (the same bits). */
static inline float reduce8(v128_t lo, v128_t hi) {
    v128_t q = wasm_f32x4_add(lo, hi);
    return (wasm_f32x4_extract_lane(q, 0) + wasm_f32x4_extract_lane(q, 2)) +
           (wasm_f32x4_extract_lane(q, 1) + wasm_f32x4_extract_lane(q, 3));
}

static void row_times_x(const float *row, const float *x, int64_t M, int64_t K, float *out, int64_t ld) {
    int64_t m = 0;
    for (; m + 5 <= M; m += 5) { /* a beam of 5 */
        const float *x0 = x + m * K, *x1 = x0 + K, *x2 = x1 + K, *x3 = x2 + K, *x4 = x3 + K;
        v128_t l0 = wasm_f32x4_splat(0), h0 = l0, l1 = l0, h1 = l0, l2 = l0, h2 = l0, l3 = l0, h3 = l0, l4 = l0, h4 = l0;
        for (int64_t i = 0; i < K; i += 8) {
            v128_t rl = wasm_v128_load(row + i), rh = wasm_v128_load(row + i + 4);
#define ACC(l, h, xr) l = wasm_f32x4_add(l, wasm_f32x4_mul(rl, wasm_v128_load(xr + i))); \
                      h = wasm_f32x4_add(h, wasm_f32x4_mul(rh, wasm_v128_load(xr + i + 4)))
            ACC(l0, h0, x0); ACC(l1, h1, x1); ACC(l2, h2, x2); ACC(l3, h3, x3); ACC(l4, h4, x4);
#undef ACC
        }
        out[m * ld] = reduce8(l0, h0);
        out[(m + 1) * ld] = reduce8(l1, h1);
        out[(m + 2) * ld] = reduce8(l2, h2);
        out[(m + 3) * ld] = reduce8(l3, h3);
        out[(m + 4) * ld] = reduce8(l4, h4);
    }
    for (; m + 4 <= M; m += 4) {
        const float *x0 = x + m * K, *x1 = x0 + K, *x2 = x1 + K, *x3 = x2 + K;
        v128_t l0 = wasm_f32x4_splat(0), h0 = l0, l1 = l0, h1 = l0, l2 = l0, h2 = l0, l3 = l0, h3 = l0;
        for (int64_t i = 0; i < K; i += 8) {
            v128_t rl = wasm_v128_load(row + i), rh = wasm_v128_load(row + i + 4);
#define ACC(l, h, xr) l = wasm_f32x4_add(l, wasm_f32x4_mul(rl, wasm_v128_load(xr + i))); \
                      h = wasm_f32x4_add(h, wasm_f32x4_mul(rh, wasm_v128_load(xr + i + 4)))
            ACC(l0, h0, x0); ACC(l1, h1, x1); ACC(l2, h2, x2); ACC(l3, h3, x3);
#undef ACC
        }
        out[m * ld] = reduce8(l0, h0);
        out[(m + 1) * ld] = reduce8(l1, h1);
        out[(m + 2) * ld] = reduce8(l2, h2);
        out[(m + 3) * ld] = reduce8(l3, h3);
    }
    for (; m < M; m++) out[m * ld] = dot8(row, x + m * K, K);
}
#endif

const grouped_core_fn grouped_core_simd = NULL; /* grouped.c's portable code, the same floats */
const grouped_tables_fn grouped_tables_simd = NULL;
const int8_core_fn int8_core_vnni = NULL; /* the portable library has only int8.c's portable core */

void packed_layer_matmul_t(const packed_layer *L, const float *x, int64_t M, const float *bias, float *y) {
    if (L->row_scale) {
        row_scaled_matmul_t(L, x, M, bias, y);
        return;
    }
    int64_t N = L->rows, K = L->cols;
    if (L->kind == LAYER_LUT4_INT8) {
        int8_matmul_t(L, x, M, bias, y);
        return;
    }
    if (L->kind == LAYER_LUT4 && L->gindex && M <= MAX_GROUPED_ROWS && !grouped_matmul_t(L, x, M, bias, y)) return;
    PARALLEL_IF(N * K >= PARALLEL_FROM_FLOATS)
    for (int64_t n = 0; n < N; n++) {
        float row[K];
        decode_row(L, n, row);
#if defined(HAVE_SIMD_BIN1)
        if (K % 8 == 0) {
            row_times_x(row, x, M, K, y + n, N);
            if (bias)
                for (int64_t m = 0; m < M; m++) y[m * N + n] += bias[n];
            continue;
        }
#endif
        for (int64_t m = 0; m < M; m++) y[m * N + n] = dot8(row, x + m * K, K) + (bias ? bias[n] : 0.0f);
    }
}
