#ifndef SHRINKFORMER_RUNTIME_H
#define SHRINKFORMER_RUNTIME_H

/* The runtime's C contract, declared once: the structs Python fills (runtime/contract.py mirrors
   them as ctypes structures and, when the library loads, compares its own sizes and offsets with
   the ones shrinkformer_layout reports, so a field changed on one side only is an error at load,
   not a wrong pointer at run time), the layer kinds and the exported entry points. */

#include <stddef.h>
#include <stdint.h>

/* The kernels split a loop across threads only when there is enough to split (PARALLEL_FROM_FLOATS
   of work): a thread costs microseconds to wake. */
#ifdef _OPENMP
#include <omp.h>
#define PRAGMA(text) _Pragma(#text)
#define PARALLEL_IF(cond) PRAGMA(omp parallel for schedule(static) if((cond) && !omp_in_parallel()))
#else
#define PARALLEL_IF(cond)
#endif
#define PARALLEL_FROM_FLOATS (1 << 16)

/* a * b + c rounded once, as an FMA instruction computes it: the portable builds fuse where the
   AVX2 build's intrinsics do, so both give the same bits. WebAssembly has no FMA and its libm's
   fmaf is a call through the floating-point environment at every use (a sixth of a page's
   decoding time); here the product is exact in double, the double sum rounds to float correctly
   unless it lies exactly halfway between two floats, and then the sum's rounding error (TwoSum)
   says which way to go. Results near float's subnormal range take libm's fmaf. */
#include <math.h>
#include <string.h>
#if defined(__wasm__)
static inline float fused_madd(float a, float b, float c) {
    double ab = (double)a * (double)b, r = ab + (double)c;
    uint64_t u;
    memcpy(&u, &r, 8);
    int e = (int)((u >> 52) & 0x7ff);
    if (e < 0x3ff - 125 || e == 0x7ff) return fmaf(a, b, c);
    if ((u & 0x1fffffff) != 0x10000000) return (float)r;
    double bb = r - ab, err = (ab - (r - bb)) + ((double)c - bb);
    if (err == 0) return (float)r;
    u += ((err > 0) == (r > 0)) ? 1 : (uint64_t)-1; /* off the halfway point, towards the exact sum */
    memcpy(&r, &u, 8);
    return (float)r;
}
#else
static inline float fused_madd(float a, float b, float c) { return fmaf(a, b, c); }
#endif

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
    /* LAYER_LUT4_INT8 (int8.c): the codebook as int8 (qcodebook * qscale ~ codebook), and per row
       of W the sum of its int8 weights */
    const int8_t *qcodebook;
    const int32_t *qsum;
    float qscale;
    /* NULL, or a scale per row of W (compress.base.RowScaledCodec's, an unpruned codebook layer's):
       y[m][n] = row_scale[n] * (x[m] . W[n]) + bias[n], the products unscaled and the scale after
       them (row_scaled_matmul_t), on every path; the dequantizing entry points return W unscaled */
    const float *row_scale;
    /* NULL, or grouped.c's layout of a LAYER_LUT4 layer of at most 5 distinct values (layer_to_grouped):
       gcols columns per group, each row's group code a byte in blocks of 16 rows, and the basis
       (gcols x 32 floats) its 32-entry tables are built from; the 4-bit index stays for the rest */
    const uint8_t *gindex;
    const float *gbasis;
    int64_t gcols;
} packed_layer;

/* LAYER_DENSE: an fp32 weight (values, rows x cols), for a layer left uncompressed.
   LAYER_LUT4_INT8: a 4-bit layer run with int8 activations (the opt-in int8 mode, int8.c): index
   in int8.c's block layout, codebook still the fp32 centroids (embedding rows are read exactly). */
enum { LAYER_LUT4 = 0, LAYER_BIN1 = 1, LAYER_SPARSE = 2, LAYER_SPARSE_LUT4 = 3, LAYER_DENSE = 4, LAYER_LUT4_INT8 = 5,
       LAYER_KINDS = 6 };

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
    int64_t half_kv;                        /* self_k/self_v/cross_k/cross_v hold float16 halves (search.c) */
} decoder_desc;

/* A compressed layer's parts as a packed file stores them (pack/format.py), for prepare.c: fp32
   values (the caller widens float16), the rest bytes as stored. */
enum { ENCODING_CODEBOOK = 0, ENCODING_SPARSE = 1, ENCODING_DENSE = 2 };
enum { MASK_NONE = 0, MASK_BITMASK = 1, MASK_POSITIONS = 2, MASK_HUFFMAN_POSITIONS = 3 };
typedef struct {
    int64_t rows, cols, encoding, bits, count, index_huffman, mask_kind, mask_symbols;
    const float *centroids;
    int64_t n_centroids;
    const float *values; /* a sparse layer's survivors, a dense layer's weight */
    int64_t n_values;
    const uint8_t *index, *index_lengths, *mask, *mask_lengths;
    int64_t index_bytes, n_index_lengths, mask_bytes, n_mask_lengths;
    const float *row_scale; /* NULL, or a codebook layer's scale per row (rows entries) */
    int64_t n_row_scale;
} layer_parts;

/* A whole translation's model (search.c): the encoder's and the decoder's descriptors (their S,
   capacity, key padding, ancestry and the layers' buffers are the search's own, set per batch on
   copies), the cross-attention key/value projections (K then V, per decoder layer) and the
   search's settings. */
typedef struct {
    const decoder_desc *encoder, *decoder;
    const packed_layer *const *cross;   /* 2 per decoder layer: K, V */
    const float *const *cross_bias;     /* 2 per decoder layer; NULL entries: no bias */
    int64_t max_positions, beam, max_len_b, pad, bos, eos;
    float max_len_a;                    /* at most a * source length + b target tokens */
    double length_penalty;              /* final score = sum log p / length ** length_penalty */
    int64_t half_kv;                    /* keys and values kept as float16 (the int8 mode): half the memory */
} search_desc;

/* The layouts above as the compiler laid them out: for each struct its size, then each field's
   offset in declaration order. runtime/contract.py checks its ctypes mirrors against this. */
#define SHRINKFORMER_LAYOUT(X)                                                                              \
    X(sizeof(packed_layer)) X(offsetof(packed_layer, kind)) X(offsetof(packed_layer, wide))                 \
    X(offsetof(packed_layer, rows)) X(offsetof(packed_layer, cols)) X(offsetof(packed_layer, bits))         \
    X(offsetof(packed_layer, index)) X(offsetof(packed_layer, values)) X(offsetof(packed_layer, codebook))  \
    X(offsetof(packed_layer, mask)) X(offsetof(packed_layer, row_start))                                    \
    X(offsetof(packed_layer, qcodebook)) X(offsetof(packed_layer, qsum)) X(offsetof(packed_layer, qscale))  \
    X(offsetof(packed_layer, row_scale)) X(offsetof(packed_layer, gindex)) X(offsetof(packed_layer, gbasis))  \
    X(offsetof(packed_layer, gcols))                                                                        \
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
    X(offsetof(decoder_desc, half_kv))                                                                      \
    X(sizeof(search_desc)) X(offsetof(search_desc, encoder)) X(offsetof(search_desc, decoder))              \
    X(offsetof(search_desc, cross)) X(offsetof(search_desc, cross_bias))                                    \
    X(offsetof(search_desc, max_positions)) X(offsetof(search_desc, beam))                                  \
    X(offsetof(search_desc, max_len_b)) X(offsetof(search_desc, pad)) X(offsetof(search_desc, bos))         \
    X(offsetof(search_desc, eos)) X(offsetof(search_desc, max_len_a))                                       \
    X(offsetof(search_desc, length_penalty)) X(offsetof(search_desc, half_kv))                              \
    X(sizeof(layer_parts)) X(offsetof(layer_parts, rows)) X(offsetof(layer_parts, cols))                    \
    X(offsetof(layer_parts, encoding)) X(offsetof(layer_parts, bits)) X(offsetof(layer_parts, count))       \
    X(offsetof(layer_parts, index_huffman)) X(offsetof(layer_parts, mask_kind))                             \
    X(offsetof(layer_parts, mask_symbols)) X(offsetof(layer_parts, centroids))                              \
    X(offsetof(layer_parts, n_centroids)) X(offsetof(layer_parts, values)) X(offsetof(layer_parts, n_values)) \
    X(offsetof(layer_parts, index)) X(offsetof(layer_parts, index_lengths)) X(offsetof(layer_parts, mask))  \
    X(offsetof(layer_parts, mask_lengths)) X(offsetof(layer_parts, index_bytes))                            \
    X(offsetof(layer_parts, n_index_lengths)) X(offsetof(layer_parts, mask_bytes))                          \
    X(offsetof(layer_parts, n_mask_lengths)) X(offsetof(layer_parts, row_scale))                            \
    X(offsetof(layer_parts, n_row_scale))                                                                   \
    X(PROJECTIONS) X(NORMS) X(LAYER_KINDS)

/* y (M, rows) = x (M, cols) @ W.T (+ bias): the layer kernels (packed_kernels.c, or the portable
   packed_portable.c; the same entry points, one of the two in a library) */
void packed_layer_matmul_t(const packed_layer *L, const float *x, int64_t M, const float *bias, float *y);
/* prepare.c: packed_layer_matmul_t for a layer with row scales (each variant's entry point hands
   such a layer here), and the scales and bias applied to products already in y (rows n0..n1 of N) */
void row_scaled_matmul_t(const packed_layer *L, const float *x, int64_t M, const float *bias, float *y);
void scale_and_bias(const float *row_scale, const float *bias, int64_t M, int64_t N, int64_t n0, int64_t n1, float *y);
void lut_dequant(const uint8_t *w, int bits, int64_t start, int64_t count, const float *codebook, float *out);
void masked_dequant(const packed_layer *L, int64_t r0, int64_t r1, float *out);
void packed_kernels_init(void);

/* decoder_step.c's entry points, and the selection (beam_select.c), as search.c calls them */
void decoder_step(const decoder_desc *D, const int64_t *tokens, float *x, int64_t M, int64_t beams, int64_t t,
                  const int64_t *parent, const int64_t *sentence, float *logits, float *work);
int64_t decoder_step_scratch(const decoder_desc *D, int64_t M);
void decoder_project(const packed_layer *L, const float *x, int64_t M, const float *bias, float *y, float *tile);
int64_t decoder_tile_floats(void);
void encoder_forward(const decoder_desc *E, const int64_t *tokens, int64_t n, const uint8_t *key_padding, float *x,
                     float *work);
int64_t encoder_scratch(const decoder_desc *E, int64_t M);
void sinusoid_table(float *table, int64_t length, int64_t dim);
int64_t beam_select(const float *logits, int64_t n, int64_t k, int64_t V, float *scores, const uint8_t *at_limit,
                    int64_t pad, int64_t bos, int64_t eos, int64_t *parent, int64_t *token, int64_t *finished_beam,
                    float *finished_score);
/* search.c: the best hypothesis of each of n padded sources (n, S) into out (n, max_positions),
   its length into lengths (n); 0, or -1 where memory ran out */
int64_t beam_search(const search_desc *D, const int64_t *src, int64_t n, int64_t S, int64_t *out, int64_t *lengths);
int packed_kernels_threaded(void);

/* int8.c: the opt-in int8 mode for 4-bit layers. layer_to_int8 turns a prepared LAYER_LUT4 layer
   into LAYER_LUT4_INT8 (0; -1 where its shape does not fit the blocks, -2 out of memory);
   int8_matmul_t is its product (vnni: the AVX-512 VNNI core where the library has one and the CPU
   runs it, else the portable core: the same integers either way); int8_row one row of W, exactly. */
int64_t layer_to_int8(packed_layer *L);
void int8_matmul_t(const packed_layer *L, const float *x, int64_t M, const float *bias, float *y);
void int8_row(const packed_layer *L, int64_t r, float *out);
/* the core: y (M, N) for W's row blocks b0..b1 (16 rows each) from xq (M, K) and each row's scale
   sx, through the integer sums acc = xq . W's int8 values, finished as int8.c's int8_finish does
   (every core the same operations on the same integers, so all give the same floats): the portable one (int8.c) and, in the
   x86 library, the AVX-512 VNNI one (packed_kernels.c; NULL in the portable library) */
typedef void (*int8_core_fn)(const packed_layer *L, const uint8_t *xq, const float *sx, int64_t M, const float *bias,
                             float *y, int64_t b0, int64_t b1);
void int8_core_portable(const packed_layer *L, const uint8_t *xq, const float *sx, int64_t M, const float *bias,
                        float *y, int64_t b0, int64_t b1);
extern const int8_core_fn int8_core_vnni;

/* grouped.c: a LAYER_LUT4 layer of at most 5 distinct values given its grouped layout too (0; -1
   where it has more values or rows not a multiple of 16, -2 out of memory), that layout freed
   again (layer_release frees it too), and the product through it (-1 where its tables found no
   memory: the caller runs the 4-bit kernel). Its tables and their sums: the portable code
   (grouped.c) and, in the x86 library, AVX-512 code (NULL elsewhere) doing the same operations in
   the same order, so both give the same floats */
#define MAX_GROUPED_ROWS 16 /* rows of x up to which a grouped layer's product goes through its tables */
int64_t layer_to_grouped(packed_layer *L);
void layer_release_grouped(packed_layer *L);
int grouped_matmul_t(const packed_layer *L, const float *x, int64_t M, const float *bias, float *y);
typedef void (*grouped_core_fn)(const packed_layer *L, const float *T, int64_t M, const float *bias, float *y,
                                int64_t b0, int64_t b1);
typedef void (*grouped_tables_fn)(const packed_layer *L, const float *x, int64_t M, float *T);
extern const grouped_core_fn grouped_core_simd;
extern const grouped_tables_fn grouped_tables_simd;

/* prepare.c: a packed file's layer in the kernels' layout (arrays malloc'd, freed by
   layer_release); 0, -1 where the parts are inconsistent, -2 where memory ran out */
int64_t layer_prepare(const layer_parts *parts, packed_layer *out);
void layer_release(packed_layer *L);
void half_to_float(const uint16_t *in, int64_t n, float *out);
void float_to_half(const float *in, int64_t n, uint16_t *out); /* rounded to nearest even, as F16C rounds */
/* decoder_step.c: floats to halves for the half_kv caches (F16C where the build has it) */
void kv_narrow(const float *x, int64_t n, uint16_t *out);

/* tokenizer.c: a SentencePiece unigram model (its ModelProto bytes); spm_error is "" where it
   loaded. Encode and decode return how many ids or bytes the whole result has (more than cap:
   call again with room), or -1 where memory ran out. */
typedef struct spm_model spm_model;
spm_model *spm_load(const uint8_t *proto, int64_t size);
const char *spm_error(const spm_model *m);
void spm_free(spm_model *m);
int64_t spm_size(const spm_model *m);
int64_t spm_encode(const spm_model *m, const char *text, int64_t n, int64_t *ids, int64_t cap);
int64_t spm_decode(const spm_model *m, const int64_t *ids, int64_t n, char *out, int64_t cap);

#endif
