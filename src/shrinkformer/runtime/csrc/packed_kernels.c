/* Products with packed codebook weights, y = x @ W.T (+ bias), never building W.

   W (N rows, K columns) is stored as b-bit centroid indices, each row's indices packed most
   significant bit first (row n starts at byte n * K * b / 8; K * b must be a multiple of 8).
   Decoding's shapes have few rows in x (M = 1 .. beam * batch):
     4 bits: each block of a weight row is decoded once, in registers, and used for every row of
             x. Up to 5 rows of x (K a multiple of 32): the centroids as four byte planes, 32
             indices looked up with four byte shuffles and their bytes put back together with
             unpacks (lut4_matmul_t_planes); otherwise the 16 centroids live in two registers and
             an index picks its value with two lane permutes and a blend on its top bit.
     1 bit:  value = c0 + (c1 - c0) * bit, so a row's product is c0 * sum(x) + (c1 - c0) * the
             sum of the x entries whose bit is set: one row of x adds under a bit mask; more rows
             look partial sums up in tables built from x (bin1_lut_matmul_t).
     pruned: the work follows the survivors (pruned_matmul_t).
   Larger M goes through a dequantized tile and BLAS (lut_dequant, masked_dequant). Python calls
   one entry point per layer, packed_layer_matmul_t, with a descriptor set when the layer is bound.
   Plain C with AVX2/FMA intrinsics, no torch headers: it compiles in a second and is called
   through ctypes on the tensors' data pointers. */

#include <immintrin.h>
#include "runtime.h"
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* Rows of W split across threads: built with -fopenmp, the library uses the OpenMP runtime torch
   already loaded (same soname), so torch.set_num_threads governs both and no second pool spins.
   The block kernels (a compile-time number of rows of x, mb, inlined per case) are split by hand,
   one parallel region around the switch over mb and each thread its range of rows of W
   (thread_rows): GCC outlines an OpenMP loop body before it inlines, so an `omp for` inside a
   block function left a single outlined copy in which mb was a run-time variable, its
   accumulators an array indexed at run time and its inner loop a branch per row of x. */
#ifdef _OPENMP
#include <omp.h>
#define PARALLEL_ROWS _Pragma("omp parallel for schedule(static)")
#define PARALLEL_REGION _Pragma("omp parallel")
static inline void thread_rows(int64_t N, int64_t unit, int64_t *lo, int64_t *hi) {
    int64_t t = omp_get_thread_num(), T = omp_get_num_threads(), units = (N + unit - 1) / unit;
    *lo = units * t / T * unit;
    *hi = units * (t + 1) / T * unit < N ? units * (t + 1) / T * unit : N;
}
#else
#define PARALLEL_ROWS
#define PARALLEL_REGION
static inline void thread_rows(int64_t N, int64_t unit, int64_t *lo, int64_t *hi) {
    (void)unit;
    *lo = 0;
    *hi = N;
}
#endif
#define ROW_UNIT 4 /* rows of W per unit of a thread's range: a multiple of every block's rbmax */

static inline float hsum(__m256 v) {
    __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
    lo = _mm_add_ps(lo, hi);
    lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
    lo = _mm_add_ss(lo, _mm_movehdup_ps(lo));
    return _mm_cvtss_f32(lo);
}

#define XPAD 16 /* floats of padding after each row of x's even (odd) columns */
#define MB 4 /* rows of x handled together: their accumulators stay in registers */

/* 8 nibbles (4 bytes, high nibble first) -> their 8 centroid values. */
static inline __m256 decode4(const uint8_t *p, __m256 lo8, __m256 hi8) {
    uint32_t four;
    memcpy(&four, p, 4);
    __m128i bytes = _mm_cvtsi32_si128((int)four);
    /* each byte twice: b0 b0 b1 b1 b2 b2 b3 b3 */
    bytes = _mm_shuffle_epi8(bytes, _mm_setr_epi8(0, 0, 1, 1, 2, 2, 3, 3, -1, -1, -1, -1, -1, -1, -1, -1));
    __m256i idx = _mm256_cvtepu8_epi32(bytes);
    idx = _mm256_srlv_epi32(idx, _mm256_setr_epi32(4, 0, 4, 0, 4, 0, 4, 0));
    idx = _mm256_and_si256(idx, _mm256_set1_epi32(15));
    __m256 a = _mm256_permutevar8x32_ps(lo8, idx), b = _mm256_permutevar8x32_ps(hi8, idx);
    __m256 top = _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28)); /* bit 3 -> sign bit */
    return _mm256_blendv_ps(a, b, top);
}

void lut4_matmul_t(const float *x, int64_t M, int64_t K, const uint8_t *w, int64_t N, const float *codebook,
                   const float *bias, float *y) {
    __m256 lo8 = _mm256_loadu_ps(codebook), hi8 = _mm256_loadu_ps(codebook + 8);
    int64_t row_bytes = K / 2;
    for (int64_t m0 = 0; m0 < M; m0 += MB) {
        int64_t mb = M - m0 < MB ? M - m0 : MB;
        PARALLEL_ROWS
        for (int64_t n = 0; n < N; n++) {
            const uint8_t *row = w + n * row_bytes;
            __m256 acc[MB];
            for (int j = 0; j < MB; j++) acc[j] = _mm256_setzero_ps();
            for (int64_t k = 0; k < K; k += 8) {
                __m256 v = decode4(row + k / 2, lo8, hi8);
                for (int j = 0; j < mb; j++)
                    acc[j] = _mm256_fmadd_ps(v, _mm256_loadu_ps(x + (m0 + j) * K + k), acc[j]);
            }
            for (int j = 0; j < mb; j++) y[(m0 + j) * N + n] = hsum(acc[j]) + (bias ? bias[n] : 0.0f);
        }
    }
}

/* x (M, K) -> its even columns xe (M, K/2) and odd columns xo (M, K/2). */
static void split_even_odd(const float *x, int64_t M, int64_t K, float *xe, float *xo, int64_t ld) {
    int64_t half = K / 2;
    for (int64_t m = 0; m < M; m++)
        for (int64_t k = 0; k < half; k++) {
            xe[m * ld + k] = x[m * K + 2 * k];
            xo[m * ld + k] = x[m * K + 2 * k + 1];
        }
}

/* The 4-bit kernel proper (lut4_matmul_t above is its fallback for K not a multiple of 16).
   As in the AVX-512 kernel below: x is split once per call into its even and odd columns (xe, xo)
   so that 8 bytes of a weight row, 16 indices, decode with one widening load, a shift and a mask
   (high nibbles are the even columns, low nibbles the odd ones), and several weight rows are
   processed together so that one row of x (greedy decoding, a beam of one) still has independent
   accumulation chains. AVX2 has 16 registers: 4 rows of W with 1 row of x, 2 with 2, 1 with 3 or 4. */
static inline __m256 lookup16(__m256i idx, __m256 lo8, __m256 hi8) {
    __m256 a = _mm256_permutevar8x32_ps(lo8, idx), b = _mm256_permutevar8x32_ps(hi8, idx);
    return _mm256_blendv_ps(a, b, _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28)));
}

static inline __attribute__((always_inline)) void lut4_block_avx2(
        const float *xe, const float *xo, int64_t ld, int64_t half, const uint8_t *w, int64_t n_lo, int64_t n_hi, __m256 lo8,
        __m256 hi8, const float *bias, float *y, int64_t ldy, const int mb, const int rbmax) {
    const __m256i fifteen = _mm256_set1_epi32(15);
    for (int64_t n0 = n_lo; n0 < n_hi; n0 += rbmax) {
        int rb = n_hi - n0 < rbmax ? (int)(n_hi - n0) : rbmax;
        __m256 ae[MB][MB], ao[MB][MB]; /* [row of x][row of W] */
#pragma GCC unroll 4
        for (int j = 0; j < mb; j++)
#pragma GCC unroll 4
            for (int r = 0; r < rbmax; r++) ae[j][r] = ao[j][r] = _mm256_setzero_ps();
        for (int64_t b = 0; b < half; b += 8) {
#pragma GCC unroll 4
            for (int r = 0; r < rbmax; r++) {
                if (r >= rb) break;
                __m256i idx = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(w + (n0 + r) * half + b)));
                __m256 even = lookup16(_mm256_srli_epi32(idx, 4), lo8, hi8);
                __m256 odd = lookup16(_mm256_and_si256(idx, fifteen), lo8, hi8);
#pragma GCC unroll 4
                for (int j = 0; j < mb; j++) {
                    ae[j][r] = _mm256_fmadd_ps(even, _mm256_loadu_ps(xe + j * ld + b), ae[j][r]);
                    ao[j][r] = _mm256_fmadd_ps(odd, _mm256_loadu_ps(xo + j * ld + b), ao[j][r]);
                }
            }
        }
        for (int j = 0; j < mb; j++)
            for (int r = 0; r < rb; r++)
                y[j * ldy + n0 + r] = hsum(_mm256_add_ps(ae[j][r], ao[j][r])) + (bias ? bias[n0 + r] : 0.0f);
    }
}

/* Five to eight rows of x (a beam of five, a few short sentences): one weight row decoded once for
   all of them. Even and odd columns share an accumulator here (two chained FMAs per block): with
   five or more rows of x there are enough independent chains, and the registers go to the rows,
   so that a beam of five is one pass over W rather than a pass of four and a pass of one, each
   paying the decoding (1.5x faster at M = 5, measured on Zen 3). */
static inline __attribute__((always_inline)) void lut4_rows8_avx2(
        const float *xe, const float *xo, int64_t ld, int64_t half, const uint8_t *w, int64_t n_lo, int64_t n_hi, __m256 lo8,
        __m256 hi8, const float *bias, float *y, int64_t ldy, const int mb) {
    const __m256i fifteen = _mm256_set1_epi32(15);
    for (int64_t n = n_lo; n < n_hi; n++) {
        __m256 acc[8];
#pragma GCC unroll 8
        for (int j = 0; j < mb; j++) acc[j] = _mm256_setzero_ps();
        const uint8_t *row = w + n * half;
        for (int64_t b = 0; b < half; b += 8) {
            __m256i idx = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(row + b)));
            __m256 even = lookup16(_mm256_srli_epi32(idx, 4), lo8, hi8);
            __m256 odd = lookup16(_mm256_and_si256(idx, fifteen), lo8, hi8);
#pragma GCC unroll 8
            for (int j = 0; j < mb; j++) {
                acc[j] = _mm256_fmadd_ps(even, _mm256_loadu_ps(xe + j * ld + b), acc[j]);
                acc[j] = _mm256_fmadd_ps(odd, _mm256_loadu_ps(xo + j * ld + b), acc[j]);
            }
        }
        for (int j = 0; j < mb; j++) y[j * ldy + n] = hsum(acc[j]) + (bias ? bias[n] : 0.0f);
    }
}

/* Byte planes, for K a multiple of 32: a 16-entry table of floats is four 16-byte tables, byte j
   of every centroid in table j, and AVX2's byte shuffle looks up 32 indices in one of them at once.
   Sixteen bytes of a weight row (32 indices) become 32 centroid values with four shuffles and eight
   unpacks that put the bytes of each float back together, where the lane permutes above need sixteen
   operations for the same 32 values. The unpacks leave each group of 8 values in the column order
   0 2 4 6 1 3 5 7 (high nibbles, the even columns, fill the low 128-bit lane; low nibbles the high
   lane), so x is permuted the same way once per call (xp). */
static inline void byte_planes(const float *codebook, __m256i t[4]) {
    uint8_t bytes[4][16];
    for (int c = 0; c < 16; c++) {
        uint32_t u;
        memcpy(&u, codebook + c, 4);
        for (int j = 0; j < 4; j++) bytes[j][c] = (uint8_t)(u >> (8 * j));
    }
    for (int j = 0; j < 4; j++) t[j] = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)bytes[j]));
}

static inline __attribute__((always_inline)) void decode32(const uint8_t *p, const __m256i t[4], __m256 v[4]) {
    const __m128i low4 = _mm_set1_epi8(15);
    __m128i raw = _mm_loadu_si128((const __m128i *)p);
    __m256i idx = _mm256_set_m128i(_mm_and_si128(raw, low4), _mm_and_si128(_mm_srli_epi16(raw, 4), low4));
    __m256i b0 = _mm256_shuffle_epi8(t[0], idx), b1 = _mm256_shuffle_epi8(t[1], idx);
    __m256i b2 = _mm256_shuffle_epi8(t[2], idx), b3 = _mm256_shuffle_epi8(t[3], idx);
    __m256i l01 = _mm256_unpacklo_epi8(b0, b1), h01 = _mm256_unpackhi_epi8(b0, b1);
    __m256i l23 = _mm256_unpacklo_epi8(b2, b3), h23 = _mm256_unpackhi_epi8(b2, b3);
    v[0] = _mm256_castsi256_ps(_mm256_unpacklo_epi16(l01, l23));
    v[1] = _mm256_castsi256_ps(_mm256_unpackhi_epi16(l01, l23));
    v[2] = _mm256_castsi256_ps(_mm256_unpacklo_epi16(h01, h23));
    v[3] = _mm256_castsi256_ps(_mm256_unpackhi_epi16(h01, h23));
}

/* x (M, K) -> xp (M, K, rows ld apart), each group of 8 columns in the order decode32 yields. */
static void permute_x(const float *x, int64_t M, int64_t K, float *xp, int64_t ld) {
    static const int order[8] = {0, 2, 4, 6, 1, 3, 5, 7};
    for (int64_t m = 0; m < M; m++)
        for (int64_t k = 0; k < K; k += 8)
            for (int i = 0; i < 8; i++) xp[m * ld + k + i] = x[m * K + k + order[i]];
}

/* mb rows of x against rbmax rows of W at a time (mb * rbmax <= 8 accumulators). */
static inline __attribute__((always_inline)) void planes_block(
        const float *xp, int64_t ld, int64_t K, const uint8_t *w, int64_t n_lo, int64_t n_hi, const __m256i t[4],
        const float *bias, float *y, int64_t ldy, const int mb, const int rbmax) {
    const int64_t row_bytes = K / 2;
    for (int64_t n0 = n_lo; n0 < n_hi; n0 += rbmax) {
        int rb = n_hi - n0 < rbmax ? (int)(n_hi - n0) : rbmax;
        __m256 acc[8][4]; /* [row of x][row of W] */
#pragma GCC unroll 8
        for (int j = 0; j < mb; j++)
#pragma GCC unroll 4
            for (int r = 0; r < rbmax; r++) acc[j][r] = _mm256_setzero_ps();
        for (int64_t k = 0; k < K; k += 32) {
#pragma GCC unroll 4
            for (int r = 0; r < rbmax; r++) {
                if (r >= rb) break;
                __m256 v[4];
                decode32(w + (n0 + r) * row_bytes + k / 2, t, v);
#pragma GCC unroll 8
                for (int j = 0; j < mb; j++) {
                    const float *xk = xp + j * ld + k;
                    __m256 a = _mm256_fmadd_ps(v[0], _mm256_loadu_ps(xk), acc[j][r]);
                    __m256 b = _mm256_mul_ps(v[1], _mm256_loadu_ps(xk + 8));
                    a = _mm256_fmadd_ps(v[2], _mm256_loadu_ps(xk + 16), a);
                    b = _mm256_fmadd_ps(v[3], _mm256_loadu_ps(xk + 24), b);
                    acc[j][r] = _mm256_add_ps(a, b);
                }
            }
        }
        for (int j = 0; j < mb; j++)
            for (int r = 0; r < rb; r++) y[j * ldy + n0 + r] = hsum(acc[j][r]) + (bias ? bias[n0 + r] : 0.0f);
    }
}

static void lut4_matmul_t_planes(const float *x, int64_t M, int64_t K, const uint8_t *w, int64_t N,
                                 const float *codebook, const float *bias, float *y, float *scratch) {
    __m256i t[4];
    byte_planes(codebook, t);
    int64_t ld = K + 2 * XPAD; /* rows padded apart, as for xe and xo */
    permute_x(x, M, K, scratch, ld);
    PARALLEL_REGION
    {
        int64_t lo, hi;
        thread_rows(N, ROW_UNIT, &lo, &hi);
        for (int64_t m0 = 0; m0 < M; m0 += M - m0 > MB ? 8 : MB) {
            const float *xm = scratch + m0 * ld;
            float *out = y + m0 * N;
            switch (M - m0 < 8 ? M - m0 : 8) { /* M <= 5 (the caller's choice): one pass */
                case 5: planes_block(xm, ld, K, w, lo, hi, t, bias, out, N, 5, 1); break;
                case 1: planes_block(xm, ld, K, w, lo, hi, t, bias, out, N, 1, 4); break;
                case 2: planes_block(xm, ld, K, w, lo, hi, t, bias, out, N, 2, 4); break;
                case 3: planes_block(xm, ld, K, w, lo, hi, t, bias, out, N, 3, 2); break;
                default: planes_block(xm, ld, K, w, lo, hi, t, bias, out, N, 4, 2); break;
            }
        }
    }
}

void lut4_matmul_t_avx2(const float *x, int64_t M, int64_t K, const uint8_t *w, int64_t N, const float *codebook,
                        const float *bias, float *y, float *scratch) {
    if (K % 16) { lut4_matmul_t(x, M, K, w, N, codebook, bias, y); return; }
    if (K % 32 == 0 && M <= 5) { lut4_matmul_t_planes(x, M, K, w, N, codebook, bias, y, scratch); return; }
    __m256 lo8 = _mm256_loadu_ps(codebook), hi8 = _mm256_loadu_ps(codebook + 8);
    int64_t half = K / 2;
    /* (M, K/2) each, rows XPAD floats apart beyond K/2: rows 4 KB apart (K = 2048) would all map to
       the same L1 sets, and eight rows of x evicted each other on every weight row */
    int64_t ld = half + XPAD;
    float *xe = scratch, *xo = scratch + M * ld;
    split_even_odd(x, M, K, xe, xo, ld);
    PARALLEL_REGION
    {
        int64_t lo, hi;
        thread_rows(N, ROW_UNIT, &lo, &hi);
        for (int64_t m0 = 0; m0 < M; m0 += M - m0 > MB ? 8 : MB) {
            const float *e = xe + m0 * ld, *o = xo + m0 * ld;
            float *out = y + m0 * N;
            switch (M - m0 < 8 ? M - m0 : 8) {
                case 8: lut4_rows8_avx2(e, o, ld, half, w, lo, hi, lo8, hi8, bias, out, N, 8); break;
                case 7: lut4_rows8_avx2(e, o, ld, half, w, lo, hi, lo8, hi8, bias, out, N, 7); break;
                case 6: lut4_rows8_avx2(e, o, ld, half, w, lo, hi, lo8, hi8, bias, out, N, 6); break;
                case 5: lut4_rows8_avx2(e, o, ld, half, w, lo, hi, lo8, hi8, bias, out, N, 5); break;
                case 1: lut4_block_avx2(e, o, ld, half, w, lo, hi, lo8, hi8, bias, out, N, 1, 4); break;
                case 2: lut4_block_avx2(e, o, ld, half, w, lo, hi, lo8, hi8, bias, out, N, 2, 2); break;
                case 3: lut4_block_avx2(e, o, ld, half, w, lo, hi, lo8, hi8, bias, out, N, 3, 1); break;
                default: lut4_block_avx2(e, o, ld, half, w, lo, hi, lo8, hi8, bias, out, N, 4, 1); break;
            }
        }
    }
}

/* One row of x (greedy decoding, a batch of one): y[n] = c0 * sum(x) + (c1 - c0) * (the sum of x
   where row n's bits are set). Rows of x beyond one go through the lookup tables further down.
   Four rows of W at a time, so that four additions are in flight rather than one waiting on the
   last. */
void bin1_matvec_t(const float *x, int64_t K, const uint8_t *w, int64_t N, const float *codebook,
                   const float *bias, float *y) {
    const __m256i bit = _mm256_setr_epi32(128, 64, 32, 16, 8, 4, 2, 1);
    float c0 = codebook[0], d = codebook[1] - codebook[0];
    int64_t row_bytes = K / 8;
    __m256 s = _mm256_setzero_ps();
    for (int64_t k = 0; k < K; k += 8) s = _mm256_add_ps(s, _mm256_loadu_ps(x + k));
    float xsum = hsum(s);
    PARALLEL_ROWS
    for (int64_t n0 = 0; n0 < N; n0 += 4) {
        int rb = N - n0 < 4 ? (int)(N - n0) : 4;
        __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
        for (int64_t k = 0; k < K; k += 8) {
            __m256 xk = _mm256_loadu_ps(x + k);
#pragma GCC unroll 4
            for (int r = 0; r < 4; r++) {
                if (r >= rb) break;
                __m256i b = _mm256_set1_epi32(w[(n0 + r) * row_bytes + k / 8]);
                __m256 on = _mm256_castsi256_ps(_mm256_cmpeq_epi32(_mm256_and_si256(b, bit), bit));
                acc[r] = _mm256_add_ps(acc[r], _mm256_and_ps(on, xk));
            }
        }
        for (int r = 0; r < rb; r++) y[n0 + r] = c0 * xsum + d * hsum(acc[r]) + (bias ? bias[n0 + r] : 0.0f);
    }
}

/* AVX-512 variants: 16 lanes, and a 16-entry table fits one register, so a 4-bit index picks its
   centroid with a single permute; a 1-bit row's 16 bits are directly a lane mask (after reversing
   each byte's bit order, since the packed stream is most significant bit first). */

#define AVX512 __attribute__((target("avx512f,avx512bw,avx2,fma")))

AVX512 static inline float hsum512(__m512 v) { return _mm512_reduce_add_ps(v); }

/* Four weight rows at a time: with one row of x (greedy decoding) a single accumulator would make
   every FMA wait for the previous one; four rows give four independent chains per row of x.
   Sixteen bytes of a row hold 32 indices; their high nibbles are the even columns and their low
   nibbles the odd ones, so x is split into its even and odd columns once per call (xe, xo) and a
   weight block needs no reordering: one widening load, a shift, a mask, two permutes. */
#define RB 4

/* One block of mb rows of x (mb a compile-time constant after inlining, so the accumulators live
   in registers), against all N rows of W. Even and odd columns accumulate separately: two
   independent chains per (row of x, row of W). */
AVX512 static inline __attribute__((always_inline)) void lut4_block(
        const float *xe, const float *xo, int64_t half, const uint8_t *w, int64_t n_lo, int64_t n_hi, __m512 table,
        const float *bias, float *y, int64_t ldy, const int mb) {
    const __m512i fifteen = _mm512_set1_epi32(15);
    for (int64_t n0 = n_lo; n0 < n_hi; n0 += RB) {
        int rb = n_hi - n0 < RB ? (int)(n_hi - n0) : RB;
        __m512 ae[MB][RB], ao[MB][RB];
#pragma GCC unroll 4
        for (int j = 0; j < mb; j++)
#pragma GCC unroll 4
            for (int r = 0; r < RB; r++) ae[j][r] = ao[j][r] = _mm512_setzero_ps();
        for (int64_t b = 0; b < half; b += 16) {
#pragma GCC unroll 4
            for (int r = 0; r < RB; r++) {
                if (r >= rb) break;
                __m512i idx = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(w + (n0 + r) * half + b)));
                __m512 even = _mm512_permutexvar_ps(_mm512_srli_epi32(idx, 4), table);
                __m512 odd = _mm512_permutexvar_ps(_mm512_and_si512(idx, fifteen), table);
#pragma GCC unroll 4
                for (int j = 0; j < mb; j++) {
                    ae[j][r] = _mm512_fmadd_ps(even, _mm512_loadu_ps(xe + j * half + b), ae[j][r]);
                    ao[j][r] = _mm512_fmadd_ps(odd, _mm512_loadu_ps(xo + j * half + b), ao[j][r]);
                }
            }
        }
        for (int j = 0; j < mb; j++)
            for (int r = 0; r < rb; r++)
                y[j * ldy + n0 + r] = hsum512(_mm512_add_ps(ae[j][r], ao[j][r])) + (bias ? bias[n0 + r] : 0.0f);
    }
}

/* Five to eight rows of x in one pass over W: lut4_block's layout would need 2 * mb * RB = 64
   accumulators. Here each (row of x, row of W) has one chain for its even and odd columns together
   and two rows of W go at a time: 2 * mb <= 16 chains, each of them independent, with the table
   and the decoded weights, still in registers (a beam of five decoded W twice through
   lut4_block). */
#define RB_WIDE 2
#define MB_WIDE 8
AVX512 static inline __attribute__((always_inline)) void lut4_block_wide(
        const float *xe, const float *xo, int64_t half, const uint8_t *w, int64_t n_lo, int64_t n_hi, __m512 table,
        const float *bias, float *y, int64_t ldy, const int mb) {
    const __m512i fifteen = _mm512_set1_epi32(15);
    for (int64_t n0 = n_lo; n0 < n_hi; n0 += RB_WIDE) {
        int rb = n_hi - n0 < RB_WIDE ? (int)(n_hi - n0) : RB_WIDE;
        __m512 acc[MB_WIDE][RB_WIDE];
#pragma GCC unroll 8
        for (int j = 0; j < mb; j++)
#pragma GCC unroll 2
            for (int r = 0; r < RB_WIDE; r++) acc[j][r] = _mm512_setzero_ps();
        for (int64_t b = 0; b < half; b += 16) {
#pragma GCC unroll 2
            for (int r = 0; r < RB_WIDE; r++) {
                if (r >= rb) break;
                __m512i idx = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(w + (n0 + r) * half + b)));
                __m512 even = _mm512_permutexvar_ps(_mm512_srli_epi32(idx, 4), table);
                __m512 odd = _mm512_permutexvar_ps(_mm512_and_si512(idx, fifteen), table);
#pragma GCC unroll 8
                for (int j = 0; j < mb; j++)
                    acc[j][r] = _mm512_fmadd_ps(odd, _mm512_loadu_ps(xo + j * half + b),
                                                _mm512_fmadd_ps(even, _mm512_loadu_ps(xe + j * half + b), acc[j][r]));
            }
        }
        for (int j = 0; j < mb; j++)
            for (int r = 0; r < rb; r++)
                y[j * ldy + n0 + r] = hsum512(acc[j][r]) + (bias ? bias[n0 + r] : 0.0f);
    }
}

AVX512 void lut4_matmul_t_avx512(const float *x, int64_t M, int64_t K, const uint8_t *w, int64_t N,
                                 const float *codebook, const float *bias, float *y, float *scratch) {
    if (K % 32) { lut4_matmul_t(x, M, K, w, N, codebook, bias, y); return; }
    __m512 table = _mm512_loadu_ps(codebook);
    int64_t half = K / 2;
    float *xe = scratch, *xo = scratch + M * half; /* (M, K/2) each */
    split_even_odd(x, M, K, xe, xo, half);
    PARALLEL_REGION
    {
        int64_t lo, hi;
        thread_rows(N, ROW_UNIT, &lo, &hi);
        for (int64_t m0 = 0; m0 < M; m0 += MB_WIDE) {
            const float *e = xe + m0 * half, *o = xo + m0 * half;
            float *out = y + m0 * N;
            switch (M - m0 < MB_WIDE ? M - m0 : MB_WIDE) {
                case 1: lut4_block(e, o, half, w, lo, hi, table, bias, out, N, 1); break;
                case 2: lut4_block(e, o, half, w, lo, hi, table, bias, out, N, 2); break;
                case 3: lut4_block(e, o, half, w, lo, hi, table, bias, out, N, 3); break;
                case 4: lut4_block_wide(e, o, half, w, lo, hi, table, bias, out, N, 4); break; /* 5-10% ahead of lut4_block here */
                case 5: lut4_block_wide(e, o, half, w, lo, hi, table, bias, out, N, 5); break;
                case 6: lut4_block_wide(e, o, half, w, lo, hi, table, bias, out, N, 6); break;
                case 7: lut4_block_wide(e, o, half, w, lo, hi, table, bias, out, N, 7); break;
                default: lut4_block_wide(e, o, half, w, lo, hi, table, bias, out, N, 8); break;
            }
        }
    }
}

static uint8_t reversed_bits[256];
/* AVX2 has no expanding load: for a lane mask m (lane i = bit i), expand_index[m][i] is the
   survivor a set lane i takes (how many lanes below it are set). */
static int32_t expand_index[256][8];
/* set_lanes[m]: the set lanes of m in increasing order (then zeros): a mask byte's surviving columns. */
static int32_t set_lanes[256][8];
#define lane_bits _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128)

/* Called once when the library is loaded, before any thread runs a kernel. */
void packed_kernels_init(void) {
    for (int b = 0; b < 256; b++) {
        int r = 0, c = 0;
        for (int i = 0; i < 8; i++) r |= ((b >> i) & 1) << (7 - i);
        reversed_bits[b] = (uint8_t)r;
        for (int i = 0; i < 8; i++) expand_index[b][i] = (b >> i) & 1 ? c++ : 0;
        for (int i = 0, j = 0; i < 8; i++)
            if ((b >> i) & 1) set_lanes[b][j++] = i;
    }
}

AVX512 void bin1_matmul_t_avx512(const float *x, int64_t M, int64_t K, const uint8_t *w, int64_t N,
                                 const float *codebook, const float *bias, float *y) {
    if (K % 16) { for (int64_t m = 0; m < M; m++) bin1_matvec_t(x + m * K, K, w, N, codebook, bias, y + m * N); return; }
    float c0 = codebook[0], d = codebook[1] - codebook[0];
    int64_t row_bytes = K / 8;
    for (int64_t m0 = 0; m0 < M; m0 += MB) {
        int64_t mb = M - m0 < MB ? M - m0 : MB;
        float xsum[MB];
        for (int j = 0; j < mb; j++) {
            __m512 s = _mm512_setzero_ps();
            for (int64_t k = 0; k < K; k += 16) s = _mm512_add_ps(s, _mm512_loadu_ps(x + (m0 + j) * K + k));
            xsum[j] = hsum512(s);
        }
        PARALLEL_ROWS
        for (int64_t n0 = 0; n0 < N; n0 += RB) {
            int64_t rb = N - n0 < RB ? N - n0 : RB;
            __m512 acc[MB][RB];
            for (int j = 0; j < MB; j++)
                for (int r = 0; r < RB; r++) acc[j][r] = _mm512_setzero_ps();
            for (int64_t k = 0; k < K; k += 16) {
                for (int r = 0; r < rb; r++) {
                    const uint8_t *row = w + (n0 + r) * row_bytes + k / 8;
                    __mmask16 on = (__mmask16)(reversed_bits[row[0]] | (reversed_bits[row[1]] << 8));
                    for (int j = 0; j < mb; j++)
                        acc[j][r] = _mm512_mask_add_ps(acc[j][r], on, acc[j][r], _mm512_loadu_ps(x + (m0 + j) * K + k));
                }
            }
            for (int j = 0; j < mb; j++)
                for (int r = 0; r < rb; r++)
                    y[(m0 + j) * N + n0 + r] = c0 * xsum[j] + d * hsum512(acc[j][r]) + (bias ? bias[n0 + r] : 0.0f);
        }
    }
}

/* Dequantizing a tile: rows of W written out as fp32, for the shapes where x has too many rows for
   the kernels above (a long source sentence, a large batch) and BLAS on a cache-sized tile wins.
   These produce exactly the centroid values (no arithmetic), so the tile equals the PyTorch tile
   path's bit for bit. Weights start..start+count of a b-bit stream (most significant bit first);
   odd starts and tails go one weight at a time. */


static inline float code_at(const uint8_t *w, int bits, int64_t i, const float *codebook) {
    int64_t bit = i * bits;
    return codebook[(w[bit >> 3] >> (8 - bits - (bit & 7))) & ((1 << bits) - 1)];
}

void lut_dequant(const uint8_t *w, int bits, int64_t start, int64_t count, const float *codebook, float *out) {
    int per_byte = 8 / bits;
    int64_t i = 0;
    for (; i < count && (start + i) % per_byte; i++) out[i] = code_at(w, bits, start + i, codebook);
    const uint8_t *bytes = w + (start + i) / per_byte;
    float *dst = out + i;
    int64_t blocks = (count - i) / 8; /* 8 weights per block */
    if (bits == 4) {
        __m256 lo8 = _mm256_loadu_ps(codebook), hi8 = _mm256_loadu_ps(codebook + 8);
        PARALLEL_IF(blocks * 8 >= PARALLEL_FROM_FLOATS)
        for (int64_t b = 0; b < blocks; b++) _mm256_storeu_ps(dst + 8 * b, decode4(bytes + 4 * b, lo8, hi8));
    } else if (bits == 1) {
        const __m256i bit = _mm256_setr_epi32(128, 64, 32, 16, 8, 4, 2, 1);
        __m256 c0 = _mm256_set1_ps(codebook[0]), c1 = _mm256_set1_ps(codebook[1]);
        PARALLEL_IF(blocks * 8 >= PARALLEL_FROM_FLOATS)
        for (int64_t b = 0; b < blocks; b++) {
            __m256i on = _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_set1_epi32(bytes[b]), bit), bit);
            _mm256_storeu_ps(dst + 8 * b, _mm256_blendv_ps(c0, c1, _mm256_castsi256_ps(on)));
        }
    } else if (bits == 8) {
        PARALLEL_IF(blocks * 8 >= PARALLEL_FROM_FLOATS)
        for (int64_t b = 0; b < blocks; b++) {
            __m256i idx = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(bytes + 8 * b)));
            _mm256_storeu_ps(dst + 8 * b, _mm256_i32gather_ps(codebook, idx, 4));
        }
    } else {
        blocks = 0;
    }
    for (i += 8 * blocks; i < count; i++) out[i] = code_at(w, bits, start + i, codebook);
}

/* Pruned layers store a bitmask (row n starts at bit n * K, K a multiple of 8) saying which columns
   survive, and the survivors' values one after another, row n's from survivor row_start[n]: fp32,
   or b-bit codebook indices (b <= 4; a bit stream, most significant first, with 16 bytes of slack
   at the end). */

/* 1-bit layers, up to 8 rows of x, through lookup tables over the activations (as T-MAC and
   bitnet.cpp do): for every 4 columns, the 16 possible sums of their x values (one per bit
   pattern) for all rows of x at once, 8 lanes. A weight row's 4 bits then pick a precomputed
   8-lane partial sum: one load and one add per 4 weights, whatever the number of rows of x, where
   testing bits costs a mask and an add per 8 weights and row of x. The tables, 128 bytes per
   column, are built once per call and shared by every weight row (they stay in L2). A row's
   product is c0 * sum(x) + (c1 - c0) * (the sum of x where its bits are set). */
#define LUT1_MAX_M 8

static _Thread_local float *lut1_tables;
static _Thread_local int64_t lut1_capacity;

static void bin1_lut_matmul_t(const float *x, int64_t M, int64_t K, const uint8_t *w, int64_t N,
                              const float *codebook, const float *bias, float *y) {
    int64_t groups = K / 4;
    if (lut1_capacity < groups * 16 * 8) {
        free(lut1_tables);
        lut1_capacity = groups * 16 * 8;
        lut1_tables = aligned_alloc(32, sizeof(float) * lut1_capacity);
    }
    float *T = lut1_tables, xsum[LUT1_MAX_M] = {0};
    for (int64_t g = 0; g < groups; g++) {
        __m256 col[4]; /* column 4g + i for every row of x; pattern bit 3 - i selects it */
        for (int i = 0; i < 4; i++) {
            float v[8] = {0};
            for (int64_t m = 0; m < M; m++) v[m] = x[m * K + 4 * g + i], xsum[m] += v[m];
            col[i] = _mm256_loadu_ps(v);
        }
        float *t = T + g * 128;
        _mm256_store_ps(t, _mm256_setzero_ps());
        for (int v = 1; v < 16; v++) /* the pattern without its lowest set bit, plus that bit's column */
            _mm256_store_ps(t + 8 * v, _mm256_add_ps(_mm256_load_ps(t + 8 * (v & (v - 1))), col[3 - __builtin_ctz(v)]));
    }
    float c0 = codebook[0], d = codebook[1] - codebook[0];
    int64_t row_bytes = K / 8;
    PARALLEL_ROWS
    for (int64_t n = 0; n < N; n++) {
        const uint8_t *row = w + n * row_bytes;
        __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
        int64_t j = 0;
        for (; j + 2 <= row_bytes; j += 2) {
            const float *t = T + j * 256; /* 2 groups per byte, 128 floats per group */
            acc[0] = _mm256_add_ps(acc[0], _mm256_load_ps(t + 8 * (row[j] >> 4)));
            acc[1] = _mm256_add_ps(acc[1], _mm256_load_ps(t + 128 + 8 * (row[j] & 15)));
            acc[2] = _mm256_add_ps(acc[2], _mm256_load_ps(t + 256 + 8 * (row[j + 1] >> 4)));
            acc[3] = _mm256_add_ps(acc[3], _mm256_load_ps(t + 384 + 8 * (row[j + 1] & 15)));
        }
        for (; j < row_bytes; j++) {
            const float *t = T + j * 256;
            acc[0] = _mm256_add_ps(acc[0], _mm256_load_ps(t + 8 * (row[j] >> 4)));
            acc[1] = _mm256_add_ps(acc[1], _mm256_load_ps(t + 128 + 8 * (row[j] & 15)));
        }
        float sums[8];
        _mm256_storeu_ps(sums, _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])));
        for (int64_t m = 0; m < M; m++) y[m * N + n] = c0 * xsum[m] + d * sums[m] + (bias ? bias[n] : 0.0f);
    }
}

/* One entry point per layer for decoding's calls: packed_layer_matmul_t (packed_layer.h). */

/* Pruned layers, few rows of x (at most 8): the work follows the survivors, not the columns. x is
   transposed once per call so that column k's values for every row of x are one 8-lane vector;
   each row of W then lists its survivors' columns (a table lookup per mask byte) and values (fp32
   as stored, or 4-bit indices decoded 8 at a time), and every survivor is one broadcast and one FMA
   into an accumulator that holds all rows of x at once. At 80% sparsity that is a fifth of the
   multiply-adds of a dense row and no per-column decoding, where the expanding kernels above do a
   constant amount of work per 8 columns however few survive. */
#define PRUNED_MAX_M 8

/* Survivors s..s+count of a pruned layer into vals (rounded up to 8; vals has room): fp32 as
   stored, or b-bit indices (b <= 4) looked up 8 at a time: the 8*b bits from bit s*b on are moved
   to the top of a 32-bit word, and lane i shifts out its own b bits. */
static inline void survivor_values(const packed_layer *L, int64_t s, int64_t count, float *vals) {
    if (L->bits == 32) {
        memcpy(vals, L->values + s, sizeof(float) * count);
        return;
    }
    const int b = (int)L->bits;
    const __m256 lo8 = _mm256_loadu_ps(L->codebook), hi8 = _mm256_loadu_ps(L->codebook + 8);
    const __m256i shifts = _mm256_sub_epi32(_mm256_set1_epi32(32), _mm256_mullo_epi32(
        _mm256_set1_epi32(b), _mm256_setr_epi32(1, 2, 3, 4, 5, 6, 7, 8)));
    const __m256i low = _mm256_set1_epi32((1 << b) - 1);
    for (int64_t i = 0; i < count; i += 8) { /* the index buffer has 16 bytes of slack */
        int64_t bit = (s + i) * b;
        uint64_t raw;
        memcpy(&raw, L->index + bit / 8, 8);
        uint32_t top = (uint32_t)((__builtin_bswap64(raw) << (bit & 7)) >> 32);
        __m256i idx = _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32((int)top), shifts), low);
        _mm256_storeu_ps(vals + i, lookup16(idx, lo8, hi8));
    }
}

/* A mask byte's surviving columns, k + the set lanes, written 8 at a time (the rest is overwritten
   by the next byte's); returns how many survive. */
static inline int64_t surviving_columns(uint8_t on, int64_t k, int shift, int32_t *cols) {
    __m256i at = _mm256_add_epi32(_mm256_loadu_si256((const __m256i *)set_lanes[on]), _mm256_set1_epi32((int)k));
    _mm256_storeu_si256((__m256i *)cols, _mm256_slli_epi32(at, shift));
    return __builtin_popcount(on);
}

/* Rows r0..r1 of a pruned layer as fp32, zeros where pruned (the tile path's native half). */
void masked_dequant(const packed_layer *L, int64_t r0, int64_t r1, float *out) {
    int64_t K = L->cols;
    PARALLEL_IF((r1 - r0) * K >= PARALLEL_FROM_FLOATS)
    for (int64_t n = r0; n < r1; n++) {
        float vals[K + 8];
        const uint8_t *bits = L->mask + n * (K / 8);
        float *dst = out + (n - r0) * K;
        survivor_values(L, L->row_start[n], L->row_start[n + 1] - L->row_start[n], vals);
        int64_t j = 0;
        for (int64_t k = 0; k < K; k += 8) {
            uint8_t on = reversed_bits[bits[k / 8]];
            __m256 w = _mm256_permutevar8x32_ps(_mm256_loadu_ps(vals + j),
                                                _mm256_loadu_si256((const __m256i *)expand_index[on]));
            __m256i lanes = _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_set1_epi32(on), lane_bits), lane_bits);
            _mm256_storeu_ps(dst + k, _mm256_and_ps(w, _mm256_castsi256_ps(lanes)));
            j += __builtin_popcount(on);
        }
    }
}

static void pruned_matmul_t(const packed_layer *L, const float *x, int64_t M, const float *bias, float *y) {
    int64_t K = L->cols, N = L->rows;
    const int shift = M == 1 ? 0 : 3; /* one row of x: survivors gather x 8 at a time instead */
    float *xt = aligned_alloc(32, sizeof(float) * 8 * K);
    if (M > 1)
        for (int64_t k = 0; k < K; k++)
            for (int m = 0; m < PRUNED_MAX_M; m++) xt[8 * k + m] = m < M ? x[m * K + k] : 0.0f;
    PARALLEL_ROWS
    for (int64_t n = 0; n < N; n++) {
        int32_t cols[K + 8]; /* 8 lanes written per mask byte, however many survive */
        float vals[K + 8];
        int64_t count = 0;
        const uint8_t *bits = L->mask + n * (K / 8);
        for (int64_t k = 0; k < K; k += 8) count += surviving_columns(reversed_bits[bits[k / 8]], k, shift, cols + count);
        survivor_values(L, L->row_start[n], count, vals);
        __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
        int64_t j = 0;
        if (M == 1) {
            for (; j + 16 <= count; j += 16) {
                acc[0] = _mm256_fmadd_ps(_mm256_loadu_ps(vals + j), _mm256_i32gather_ps(
                    x, _mm256_loadu_si256((const __m256i *)(cols + j)), 4), acc[0]);
                acc[1] = _mm256_fmadd_ps(_mm256_loadu_ps(vals + j + 8), _mm256_i32gather_ps(
                    x, _mm256_loadu_si256((const __m256i *)(cols + j + 8)), 4), acc[1]);
            }
            float rest = 0.0f;
            for (; j < count; j++) rest += vals[j] * x[cols[j]];
            float lanes[8];
            _mm256_storeu_ps(lanes, _mm256_add_ps(acc[0], acc[1]));
            float total = rest;
            for (int u = 0; u < 8; u++) total += lanes[u];
            y[n] = total + (bias ? bias[n] : 0.0f);
            continue;
        }
        for (; j + 4 <= count; j += 4)
            for (int u = 0; u < 4; u++)
                acc[u] = _mm256_fmadd_ps(_mm256_broadcast_ss(vals + j + u), _mm256_load_ps(xt + cols[j + u]), acc[u]);
        for (; j < count; j++)
            acc[0] = _mm256_fmadd_ps(_mm256_broadcast_ss(vals + j), _mm256_load_ps(xt + cols[j]), acc[0]);
        float sums[8];
        _mm256_storeu_ps(sums, _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])));
        for (int64_t m = 0; m < M; m++) y[m * N + n] = sums[m] + (bias ? bias[n] : 0.0f);
    }
    free(xt);
}

/* An uncompressed fp32 layer, few rows of x (K a multiple of 8): so that a decoding step of a
   model with some layers left fp32 (or none compressed) can run natively end to end. Up to 8 rows
   of x share each load of a weight row; memory-bound like any matrix-vector product. */
static void dense_matmul_t(const float *x, int64_t M, int64_t K, const float *w, int64_t N, const float *bias,
                           float *y) {
    for (int64_t m0 = 0; m0 < M; m0 += 8) {
        int64_t mb = M - m0 < 8 ? M - m0 : 8;
        const float *xb = x + m0 * K;
        PARALLEL_IF(N * K >= PARALLEL_FROM_FLOATS)
        for (int64_t n = 0; n < N; n++) {
            const float *row = w + n * K;
            __m256 acc[8];
            for (int j = 0; j < 8; j++) acc[j] = _mm256_setzero_ps();
            for (int64_t k = 0; k < K; k += 8) {
                __m256 wv = _mm256_loadu_ps(row + k);
                for (int j = 0; j < mb; j++) acc[j] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(xb + j * K + k), acc[j]);
            }
            for (int j = 0; j < mb; j++) y[(m0 + j) * N + n] = hsum(acc[j]) + (bias ? bias[n] : 0.0f);
        }
    }
}

/* int8.c's core with AVX-512 VNNI: per block of 16 rows of W and up to 8 rows of x, each 64-byte
   group decoded once (two byte shuffles of the int8 codebook) and multiplied with each row of x's
   four bytes broadcast (vpdpbusd: u8 x s8, summed in fours into int32 lanes, exactly); the sums
   finished as int8_finish finishes them, 16 lanes at a time. */
#define VNNI __attribute__((target("avx512f,avx512bw,avx512vnni")))

VNNI static inline __attribute__((always_inline)) void vnni_rows(const packed_layer *L, const uint8_t *xq,
                                                                 const float *sx, const uint8_t *wb, __m512i table,
                                                                 int mb, const float *bias, int64_t n0, float *y) {
    int64_t K = L->cols, N = L->rows, groups = K / 8;
    __m512i a[8];
    const __m512i low = _mm512_set1_epi8(0x0f);
    for (int i = 0; i < mb; i++) a[i] = _mm512_setzero_si512();
    for (int64_t g = 0; g < groups; g++) {
        __m512i v = _mm512_loadu_si512((const void *)(wb + g * 64));
        __m512i lo = _mm512_shuffle_epi8(table, _mm512_and_si512(v, low));
        __m512i hi = _mm512_shuffle_epi8(table, _mm512_and_si512(_mm512_srli_epi16(v, 4), low));
        for (int i = 0; i < mb; i++) {
            int32_t x0, x1;
            memcpy(&x0, xq + i * K + g * 8, 4);
            memcpy(&x1, xq + i * K + g * 8 + 4, 4);
            a[i] = _mm512_dpbusd_epi32(a[i], _mm512_set1_epi32(x0), lo);
            a[i] = _mm512_dpbusd_epi32(a[i], _mm512_set1_epi32(x1), hi);
        }
    }
    /* int8_finish in 16 lanes: the same integer difference, conversion, product and sum, unfused */
    __m512i q = _mm512_slli_epi32(_mm512_loadu_si512((const void *)(L->qsum + n0)), 7);
    for (int i = 0; i < mb; i++) {
        __m512 v = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(a[i], q)), _mm512_set1_ps(sx[i] * L->qscale));
        if (bias) v = _mm512_add_ps(v, _mm512_loadu_ps(bias + n0));
        _mm512_storeu_ps(y + i * N + n0, v);
    }
}

VNNI static void int8_core_avx512vnni(const packed_layer *L, const uint8_t *xq, const float *sx, int64_t M,
                                      const float *bias, float *y, int64_t b0, int64_t b1) {
    int64_t K = L->cols, N = L->rows, groups = K / 8;
    __m512i t = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)L->qcodebook));
    for (int64_t b = b0; b < b1; b++) {
        const uint8_t *wb = L->index + b * groups * 64;
        for (int64_t m0 = 0; m0 < M; m0 += 8) {
            const uint8_t *x = xq + m0 * K;
            float *out = y + m0 * N;
            switch (M - m0 < 8 ? M - m0 : 8) { /* the rows a constant, so the accumulators stay registers */
                case 1: vnni_rows(L, x, sx + m0, wb, t, 1, bias, b * 16, out); break;
                case 2: vnni_rows(L, x, sx + m0, wb, t, 2, bias, b * 16, out); break;
                case 3: vnni_rows(L, x, sx + m0, wb, t, 3, bias, b * 16, out); break;
                case 4: vnni_rows(L, x, sx + m0, wb, t, 4, bias, b * 16, out); break;
                case 5: vnni_rows(L, x, sx + m0, wb, t, 5, bias, b * 16, out); break;
                case 6: vnni_rows(L, x, sx + m0, wb, t, 6, bias, b * 16, out); break;
                case 7: vnni_rows(L, x, sx + m0, wb, t, 7, bias, b * 16, out); break;
                default: vnni_rows(L, x, sx + m0, wb, t, 8, bias, b * 16, out); break;
            }
        }
    }
}

const int8_core_fn int8_core_vnni = int8_core_avx512vnni;

/* grouped.c's core in 16 lanes: a block's 16 pattern bytes widened to lane indices, each row of
   x's table (two registers) looked up by one permute and added, groups in order. Tables are read
   a chunk of groups at a time for every block of the thread's range (the chunk's tables stay in
   L1; a block's sums wait in y between chunks), so each lane adds what the portable core adds,
   in its order: 0, then every group's entry, then the bias. */
#define GROUP_CHUNK 32

AVX512 static inline __attribute__((always_inline)) void grouped_rows(const packed_layer *L, const float *T,
                                                                     const float *bias, float *y, int64_t b0,
                                                                     int64_t b1, const int mb) {
    int64_t N = L->rows, K = L->cols, g = L->gcols, groups = (K + g - 1) / g;
    for (int64_t p0 = 0; p0 < groups; p0 += GROUP_CHUNK) {
        int64_t p1 = p0 + GROUP_CHUNK < groups ? p0 + GROUP_CHUNK : groups;
        int last = p1 == groups;
        int64_t b = b0;
        for (; b + 2 <= b1; b += 2) { /* two blocks share each table's loads */
            __m512 acc[2][8];
#pragma GCC unroll 8
            for (int m = 0; m < mb; m++)
                for (int h = 0; h < 2; h++)
                    acc[h][m] = p0 ? _mm512_loadu_ps(y + m * N + (b + h) * 16) : _mm512_setzero_ps();
            const uint8_t *c0 = L->gindex + b * groups * 16, *c1 = c0 + groups * 16;
            for (int64_t p = p0; p < p1; p++) {
                __m512i i0 = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(c0 + p * 16)));
                __m512i i1 = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(c1 + p * 16)));
                const float *t = T + p * mb * 32;
#pragma GCC unroll 8
                for (int m = 0; m < mb; m++) {
                    __m512 lo = _mm512_loadu_ps(t + m * 32), hi = _mm512_loadu_ps(t + m * 32 + 16);
                    acc[0][m] = _mm512_add_ps(acc[0][m], _mm512_permutex2var_ps(lo, i0, hi));
                    acc[1][m] = _mm512_add_ps(acc[1][m], _mm512_permutex2var_ps(lo, i1, hi));
                }
            }
#pragma GCC unroll 8
            for (int m = 0; m < mb; m++)
                for (int h = 0; h < 2; h++)
                    _mm512_storeu_ps(y + m * N + (b + h) * 16, last && bias ? _mm512_add_ps(acc[h][m],
                                     _mm512_loadu_ps(bias + (b + h) * 16)) : acc[h][m]);
        }
        for (; b < b1; b++) {
            __m512 acc[8];
#pragma GCC unroll 8
            for (int m = 0; m < mb; m++) acc[m] = p0 ? _mm512_loadu_ps(y + m * N + b * 16) : _mm512_setzero_ps();
            const uint8_t *codes = L->gindex + b * groups * 16;
            for (int64_t p = p0; p < p1; p++) {
                __m512i idx = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(codes + p * 16)));
                const float *t = T + p * mb * 32;
#pragma GCC unroll 8
                for (int m = 0; m < mb; m++)
                    acc[m] = _mm512_add_ps(acc[m], _mm512_permutex2var_ps(_mm512_loadu_ps(t + m * 32), idx,
                                                                          _mm512_loadu_ps(t + m * 32 + 16)));
            }
#pragma GCC unroll 8
            for (int m = 0; m < mb; m++)
                _mm512_storeu_ps(y + m * N + b * 16,
                                 last && bias ? _mm512_add_ps(acc[m], _mm512_loadu_ps(bias + b * 16)) : acc[m]);
        }
    }
}

AVX512 static void grouped_core_avx512(const packed_layer *L, const float *T, int64_t M, const float *bias, float *y,
                                       int64_t b0, int64_t b1) {
    switch (M) { /* the rows a constant, so the accumulators stay registers */
        case 1: grouped_rows(L, T, bias, y, b0, b1, 1); break;
        case 2: grouped_rows(L, T, bias, y, b0, b1, 2); break;
        case 3: grouped_rows(L, T, bias, y, b0, b1, 3); break;
        case 4: grouped_rows(L, T, bias, y, b0, b1, 4); break;
        case 5: grouped_rows(L, T, bias, y, b0, b1, 5); break;
        case 6: grouped_rows(L, T, bias, y, b0, b1, 6); break;
        case 7: grouped_rows(L, T, bias, y, b0, b1, 7); break;
        default: grouped_rows(L, T, bias, y, b0, b1, 8); break;
    }
}

const grouped_core_fn grouped_core_simd = grouped_core_avx512;

/* grouped.c's tables, the basis in registers: per table a product and then a fused multiply-add
   per further column, 32 lanes in two registers, as grouped.c's table() computes each lane */
AVX512 static inline __attribute__((always_inline)) void grouped_tables_g(const packed_layer *L, const float *x,
                                                                         int64_t M, float *T, const int g) {
    int64_t K = L->cols, full = K / g, groups = (K + g - 1) / g;
    __m512 lo[5], hi[5];
    for (int j = 0; j < g; j++) lo[j] = _mm512_loadu_ps(L->gbasis + j * 32), hi[j] = _mm512_loadu_ps(L->gbasis + j * 32 + 16);
    for (int64_t p = 0; p < groups; p++) {
        int columns = p < full ? g : (int)(K - p * g);
        for (int64_t m = 0; m < M; m++) {
            const float *xs = x + m * K + p * g;
            __m512 x0 = _mm512_set1_ps(xs[0]), a = _mm512_mul_ps(x0, lo[0]), b = _mm512_mul_ps(x0, hi[0]);
            for (int j = 1; j < columns; j++) {
                __m512 xj = _mm512_set1_ps(xs[j]);
                a = _mm512_fmadd_ps(xj, lo[j], a);
                b = _mm512_fmadd_ps(xj, hi[j], b);
            }
            _mm512_storeu_ps(T + (p * M + m) * 32, a);
            _mm512_storeu_ps(T + (p * M + m) * 32 + 16, b);
        }
    }
}

AVX512 static void grouped_tables_avx512(const packed_layer *L, const float *x, int64_t M, float *T) {
    switch (L->gcols) { /* the group's width a constant: the loop over its columns unrolls */
        case 2: grouped_tables_g(L, x, M, T, 2); break;
        case 3: grouped_tables_g(L, x, M, T, 3); break;
        default: grouped_tables_g(L, x, M, T, 5); break;
    }
}

const grouped_tables_fn grouped_tables_simd = grouped_tables_avx512;

void packed_layer_matmul_t(const packed_layer *L, const float *x, int64_t M, const float *bias, float *y) {
    if (L->row_scale) {
        row_scaled_matmul_t(L, x, M, bias, y);
        return;
    }
    switch (L->kind) {
        case LAYER_LUT4_INT8:
            int8_matmul_t(L, x, M, bias, y);
            break;
        case LAYER_DENSE:
            dense_matmul_t(x, M, L->cols, L->values, L->rows, bias, y);
            break;
        case LAYER_LUT4: {
            if (L->gindex && M <= MAX_GROUPED_ROWS && !grouped_matmul_t(L, x, M, bias, y)) break;
            float *scratch = malloc(sizeof(float) * M * (L->cols + 2 * XPAD)); /* x's even and odd columns */
            /* AVX-512: up to 8 rows of x per pass over W (lut4_block_wide), 1.4-1.65x the AVX2
               kernels at 4 to 16 rows on a Xeon with two 512-bit FMA units (SHRINKFORMER_NATIVE=avx2
               against the default in benchmarks/kernels.py); a Zen 4 splits 512-bit operations in
               two and may gain less */
            if (L->wide) lut4_matmul_t_avx512(x, M, L->cols, L->index, L->rows, L->codebook, bias, y, scratch);
            else lut4_matmul_t_avx2(x, M, L->cols, L->index, L->rows, L->codebook, bias, y, scratch);
            free(scratch);
            break;
        }
        case LAYER_BIN1:
            if (M > 1) /* one row of x: testing bits is faster than building tables */
                for (int64_t m0 = 0; m0 < M; m0 += LUT1_MAX_M)
                    bin1_lut_matmul_t(x + m0 * L->cols, M - m0 < LUT1_MAX_M ? M - m0 : LUT1_MAX_M, L->cols, L->index,
                                      L->rows, L->codebook, bias, y + m0 * L->rows);
            else if (L->wide) bin1_matmul_t_avx512(x, M, L->cols, L->index, L->rows, L->codebook, bias, y);
            else bin1_matvec_t(x, L->cols, L->index, L->rows, L->codebook, bias, y);
            break;
        case LAYER_SPARSE:
        case LAYER_SPARSE_LUT4:
            for (int64_t m0 = 0; m0 < M; m0 += PRUNED_MAX_M)
                pruned_matmul_t(L, x + m0 * L->cols, M - m0 < PRUNED_MAX_M ? M - m0 : PRUNED_MAX_M, bias, y + m0 * L->rows);
            break;
    }
}
