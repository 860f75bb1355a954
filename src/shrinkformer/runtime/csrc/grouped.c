/* Layers of at most 5 distinct weight values through lookup tables over the activations (T-MAC's
   idea, with AVX-512's two-register permute as the lookup).

   At a beam's few rows the 4-bit kernel pays one multiply-add per weight and row of x, whatever
   the weight's value. A layer of v distinct values (an unpruned 1-bit layer widened to 4-bit codes:
   2; a 50%-pruned 1-bit layer with its zero: 3; a 2-bit layer: 4; a 50%-pruned 2-bit one: 5) has
   only v ** g patterns over g consecutive columns. For every group of g columns and every row of x
   the sums of those columns' x times each pattern's values are a 32-entry table (g = 5, 3, 2, 2
   for v = 2, 3, 4, 5: v ** g <= 32), and a row of W then takes one table entry per group: one
   permute and one add for 16 rows of W and g columns, where the 4-bit kernel does g multiply-adds.

   Layout: per block of 16 rows of W and per group, the 16 rows' pattern numbers as bytes (a
   pattern's digit j, base v, is column j's value); the basis holds, per column of a group, each
   pattern's value at that column (32 floats), so that a table is x[c0] * basis[0] + x[c1] *
   basis[1] + ..., one product and then fused multiply-adds, 32 lanes at a time. Each output is
   0 + its groups' entries in column order, + the bias: every core adds the same floats in the
   same order (the portable core below, the AVX-512 one in packed_kernels.c). The layer keeps its
   4-bit index for everything else (dequantized tiles, embedding rows, the int8 mode). */

#include <stdlib.h>
#include <string.h>

#include "runtime.h"

#define ENTRIES 32
#define BLOCK 16 /* rows of W per block: one 16-lane permute */
#define TABLE_ROWS 8 /* rows of x per set of tables */

static int64_t group_columns(int values) { return values <= 2 ? 5 : values == 3 ? 3 : values <= 5 ? 2 : 0; }

static inline int code4(const uint8_t *index, int64_t i) { return (index[i >> 1] >> (i & 1 ? 0 : 4)) & 15; }

int64_t layer_to_grouped(packed_layer *L) {
    if (L->kind != LAYER_LUT4 || L->gindex || L->rows % BLOCK || L->rows <= 0 || L->cols <= 0) return -1;
    int64_t N = L->rows, K = L->cols;
    int used[16] = {0}, digit[16] = {0}, values = 0;
    for (int64_t i = 0; i < N * K; i++) used[code4(L->index, i)] = 1;
    float value[5] = {0};
    for (int c = 0; c < 16; c++) {
        if (!used[c]) continue;
        if (values == 5) return -1;
        digit[c] = values;
        value[values++] = L->codebook[c];
    }
    if (values == 1) value[values++] = value[0]; /* a constant layer: any second value */
    int64_t g = group_columns(values), groups = (K + g - 1) / g;
    uint8_t *index = malloc((size_t)(N * groups));
    float *basis = malloc(sizeof(float) * (size_t)(g * ENTRIES));
    if (!index || !basis) {
        free(index);
        free(basis);
        return -2;
    }
    int64_t patterns = 1;
    for (int64_t j = 0; j < g; j++) patterns *= values;
    for (int64_t j = 0, place = 1; j < g; j++, place *= values)
        for (int64_t e = 0; e < ENTRIES; e++) basis[j * ENTRIES + e] = e < patterns ? value[(e / place) % values] : 0.0f;
    for (int64_t n = 0; n < N; n++)
        for (int64_t p = 0; p < groups; p++) {
            int64_t e = 0;
            for (int64_t j = 0, place = 1; j < g && p * g + j < K; j++, place *= values)
                e += digit[code4(L->index, n * K + p * g + j)] * place;
            index[((n / BLOCK) * groups + p) * BLOCK + n % BLOCK] = (uint8_t)e;
        }
    L->gindex = index;
    L->gbasis = basis;
    L->gcols = g;
    return 0;
}

void layer_release_grouped(packed_layer *L) {
    free((void *)L->gindex);
    free((void *)L->gbasis);
    L->gindex = NULL;
    L->gbasis = NULL;
    L->gcols = 0;
}

/* One table: x[0] * basis[0] + x[1] * basis[1] + ... over the group's first `columns` columns
   (g, or fewer in a row's last group), 32 lanes; `columns` a constant after inlining, so the sum
   stays in registers across the columns */
static inline __attribute__((always_inline)) void table(const float *basis, const float *xs, float *t,
                                                        const int columns) {
    for (int e = 0; e < ENTRIES; e++) {
        float v = xs[0] * basis[e];
        for (int j = 1; j < columns; j++) v = fused_madd(xs[j], basis[j * ENTRIES + e], v);
        t[e] = v;
    }
}

/* T (groups, M, 32): each group's table for each row of x; a group's columns past K add nothing
   (the AVX-512 twin: packed_kernels.c's grouped_tables_avx512) */
static void tables(const packed_layer *L, const float *x, int64_t M, float *T) {
    int64_t K = L->cols, g = L->gcols, groups = (K + g - 1) / g;
    for (int64_t p = 0; p < groups; p++) {
        int columns = (int)(K - p * g < g ? K - p * g : g);
        for (int64_t m = 0; m < M; m++) {
            const float *xs = x + m * K + p * g;
            float *t = T + (p * M + m) * ENTRIES;
            switch (columns) {
                case 1: table(L->gbasis, xs, t, 1); break;
                case 2: table(L->gbasis, xs, t, 2); break;
                case 3: table(L->gbasis, xs, t, 3); break;
                case 4: table(L->gbasis, xs, t, 4); break;
                default: table(L->gbasis, xs, t, 5); break;
            }
        }
    }
}

/* The portable core: blocks b0..b1 of 16 rows of W, every row of x */
static void grouped_core_portable(const packed_layer *L, const float *T, int64_t M, const float *bias, float *y,
                                  int64_t b0, int64_t b1) {
    int64_t N = L->rows, K = L->cols, g = L->gcols, groups = (K + g - 1) / g;
    for (int64_t b = b0; b < b1; b++)
        for (int64_t r = 0; r < BLOCK; r++) {
            const uint8_t *codes = L->gindex + b * groups * BLOCK + r;
            for (int64_t m = 0; m < M; m++) {
                float s = 0.0f;
                for (int64_t p = 0; p < groups; p++) s += T[(p * M + m) * ENTRIES + codes[p * BLOCK]];
                y[m * N + b * BLOCK + r] = bias ? s + bias[b * BLOCK + r] : s;
            }
        }
}

/* The calling thread's table buffer, kept between calls: a fresh one of over 128 kB would be a new
   mapping, its pages faulted in, at every call (a third of a 1024-column layer's time). */
static float *table_buffer(int64_t floats) {
    static _Thread_local float *buffer;
    static _Thread_local int64_t capacity;
    if (floats > capacity) {
        float *grown = malloc(sizeof(float) * (size_t)floats);
        if (!grown) return NULL;
        free(buffer);
        buffer = grown;
        capacity = floats;
    }
    return buffer;
}

int grouped_matmul_t(const packed_layer *L, const float *x, int64_t M, const float *bias, float *y) {
    int64_t N = L->rows, K = L->cols, groups = (K + L->gcols - 1) / L->gcols, blocks = N / BLOCK;
    grouped_core_fn core = L->wide && grouped_core_simd ? grouped_core_simd : grouped_core_portable;
    grouped_tables_fn build = L->wide && grouped_tables_simd ? grouped_tables_simd : tables;
    int64_t floats = groups * (M < TABLE_ROWS ? M : TABLE_ROWS) * ENTRIES;
    if (!table_buffer(floats)) return -1; /* the caller runs the 4-bit kernel instead */
    int failed = 0;
    /* Each thread builds the tables itself, in its own buffer: they cost a few microseconds, and
       reading another core's tables (131 kB for a 1024-column layer at a beam of 5) cost more than
       the lookups they serve. */
#ifdef _OPENMP
#pragma omp parallel if (N * K >= PARALLEL_FROM_FLOATS && !omp_in_parallel()) reduction(|| : failed)
#endif
    {
        int64_t t = 0, threads = 1;
#ifdef _OPENMP
        t = omp_get_thread_num();
        threads = omp_get_num_threads();
#endif
        int64_t b0 = blocks * t / threads, b1 = blocks * (t + 1) / threads;
        float *T = table_buffer(floats);
        if (!T) failed = 1;
        for (int64_t m0 = 0; T && b0 < b1 && m0 < M; m0 += TABLE_ROWS) {
            int64_t mb = M - m0 < TABLE_ROWS ? M - m0 : TABLE_ROWS;
            build(L, x + m0 * K, mb, T);
            core(L, T, mb, bias, y + m0 * N, b0, b1);
        }
    }
    return failed ? -1 : 0;
}
