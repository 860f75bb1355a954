#ifndef SHRINKFORMER_RUNTIME_H
#define SHRINKFORMER_RUNTIME_H

/* The runtime's C contract, declared once: the structs Python fills (runtime/contract.py mirrors
   them as ctypes structures and, when the library loads, compares its own sizes and offsets with
   the ones shrinkformer_layout reports, so a field changed on one side only is an error at load,
   not a wrong pointer at run time), the layer kinds and the exported entry points. */

#include <stddef.h>
#include <stdint.h>

/* One entry point per layer for decoding's calls: the layer's pointers and shape are set once (a
   descriptor Python builds when it binds the layer), so a call passes only x, its rows, the bias
   and the output. */
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
enum { LAYER_LUT4 = 0, LAYER_BIN1 = 1, LAYER_SPARSE = 2, LAYER_SPARSE_LUT4 = 3, LAYER_DENSE = 4, LAYER_KINDS = 5 };

/* A decoder (or encoder) layer's projections, in this order, and its norms. */
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
    int32_t *ancestry;                      /* (rows, capacity), see decoder_step.c; updated by each step */
} decoder_desc;

/* The layouts above as the compiler laid them out: for each struct its size, then each field's
   offset in declaration order. runtime/contract.py checks its ctypes mirrors against this. */
#define SHRINKFORMER_LAYOUT(X)                                                                              \
    X(sizeof(packed_layer)) X(offsetof(packed_layer, kind)) X(offsetof(packed_layer, wide))                 \
    X(offsetof(packed_layer, rows)) X(offsetof(packed_layer, cols)) X(offsetof(packed_layer, bits))         \
    X(offsetof(packed_layer, index)) X(offsetof(packed_layer, values)) X(offsetof(packed_layer, codebook))  \
    X(offsetof(packed_layer, mask)) X(offsetof(packed_layer, row_start))                                    \
    X(sizeof(decoder_layer)) X(offsetof(decoder_layer, proj)) X(offsetof(decoder_layer, bias))              \
    X(offsetof(decoder_layer, norm_weight)) X(offsetof(decoder_layer, norm_bias))                           \
    X(offsetof(decoder_layer, self_k)) X(offsetof(decoder_layer, self_v))                                   \
    X(offsetof(decoder_layer, cross_k)) X(offsetof(decoder_layer, cross_v))                                 \
    X(sizeof(decoder_desc)) X(offsetof(decoder_desc, layers)) X(offsetof(decoder_desc, C))                  \
    X(offsetof(decoder_desc, heads)) X(offsetof(decoder_desc, ffn)) X(offsetof(decoder_desc, vocab))        \
    X(offsetof(decoder_desc, capacity)) X(offsetof(decoder_desc, S)) X(offsetof(decoder_desc, pre_norm))    \
    X(offsetof(decoder_desc, eps)) X(offsetof(decoder_desc, layer)) X(offsetof(decoder_desc, final_weight)) \
    X(offsetof(decoder_desc, final_bias)) X(offsetof(decoder_desc, out)) X(offsetof(decoder_desc, embed))   \
    X(offsetof(decoder_desc, positions)) X(offsetof(decoder_desc, embed_scale))                             \
    X(offsetof(decoder_desc, key_padding)) X(offsetof(decoder_desc, ancestry))                              \
    X(PROJECTIONS) X(NORMS) X(LAYER_KINDS)

/* y (M, rows) = x (M, cols) @ W.T (+ bias): the layer kernels (packed_kernels.c, or the portable
   packed_portable.c; the same entry points, one of the two in a library) */
void packed_layer_matmul_t(const packed_layer *L, const float *x, int64_t M, const float *bias, float *y);
void lut_dequant(const uint8_t *w, int bits, int64_t start, int64_t count, const float *codebook, float *out);
void masked_dequant(const packed_layer *L, int64_t r0, int64_t r1, float *out);
void packed_kernels_init(void);
int packed_kernels_threaded(void);

#endif
