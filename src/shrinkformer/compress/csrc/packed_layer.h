#ifndef PACKED_LAYER_H
#define PACKED_LAYER_H

#include <stdint.h>

/* One entry point per layer for decoding's calls: the layer's pointers and shape are set once (a
   descriptor Python builds when it binds the layer), so a call passes only x, its rows, the bias
   and the output. Every ctypes argument costs a conversion, and these calls come once per layer
   and decoding step: at batch 1 the Python around the kernels was most of their time. */
typedef struct {
    int64_t kind;  /* LAYER_* below */
    int64_t wide;  /* the AVX-512 variants (unpruned codebook layers) */
    int64_t rows, cols;
    int64_t bits;          /* bits per codebook index; a pruned layer's fp32 survivors: 32 */
    const uint8_t *index;  /* codebook indices: every weight's, or the survivors' */
    const float *values;   /* fp32 survivors, or a LAYER_DENSE weight */
    const float *codebook; /* padded to 2**bits entries, and to at least 16 for a pruned layer */
    const uint8_t *mask;
    const int32_t *row_start;
} packed_layer;

/* LAYER_DENSE: an fp32 weight (values, rows x cols), for a layer left uncompressed */
enum { LAYER_LUT4 = 0, LAYER_BIN1 = 1, LAYER_SPARSE = 2, LAYER_SPARSE_LUT4 = 3, LAYER_DENSE = 4 };

/* y (M, rows) = x (M, cols) @ W.T (+ bias) */
void packed_layer_matmul_t(const packed_layer *L, const float *x, int64_t M, const float *bias, float *y);

#endif
