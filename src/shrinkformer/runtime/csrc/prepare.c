/* A compressed layer of a packed file (.sfz) in the layout the kernels read: runtime/layers.py's
   LayerArrays.from_parts and for_decoding in C, for the runtime that loads a file without numpy
   (runtime/direct.py). The same bytes as layers.py builds (tests/test_runtime.py compares them):
   - Huffman-coded indices (pack/entropy.py's canonical codes) back to bit-packed ones, Huffman-coded
     gap positions back to positions, positions or a bitmask to a bitmask and each row's first
     survivor;
   - 2- and 3-bit codebooks without a mask as 4-bit indices (the 4-bit kernel runs them), a pruned
     layer of at most 3 bits and at least 10% survivors as a dense 4-bit layer whose unused entry is
     the pruned weights' zero, codebooks padded to the kernels' table size, 16 bytes of slack after
     a pruned layer's indices;
   - a layer no kernel serves (columns not a multiple of 8, 5- to 8-bit codebooks, a scale per row)
     widened to fp32, each row times its scale. */

#include <stdlib.h>
#include <string.h>

#include "runtime.h"

#define PRUNED_DENSE_BELOW 0.9 /* runtime/layers.py's */

static int64_t get_bits(const uint8_t *w, int bits, int64_t i) { /* entry i of a b-bit stream, MSB first */
    int64_t v = 0;
    for (int64_t b = 0, pos = i * bits; b < bits; b++, pos++) v = (v << 1) | ((w[pos >> 3] >> (7 - (pos & 7))) & 1);
    return v;
}

static void put_bits(uint8_t *w, int bits, int64_t i, int64_t v) { /* w zeroed beforehand */
    for (int64_t b = bits - 1, pos = i * bits; b >= 0; b--, pos++)
        if ((v >> b) & 1) w[pos >> 3] |= (uint8_t)(0x80 >> (pos & 7));
}

/* n symbols of a canonical Huffman stream (pack/entropy.py: codes ordered by (length, symbol)) */
static int huffman_decode(const uint8_t *packed, int64_t packed_bytes, const uint8_t *lengths, int64_t alphabet,
                          int64_t n, uint8_t *out) {
    int64_t count[65] = {0}, max_len = 0, order[256], placed = 0;
    if (alphabet > 256) return -1;
    for (int64_t s = 0; s < alphabet; s++) {
        if (lengths[s] > 64) return -1;
        count[lengths[s]]++;
        if (lengths[s] > max_len) max_len = lengths[s];
    }
    for (int64_t len = 1; len <= max_len; len++)
        for (int64_t s = 0; s < alphabet; s++)
            if (lengths[s] == len) order[placed++] = s;
    int64_t pos = 0, total = packed_bytes * 8;
    for (int64_t k = 0; k < n; k++) {
        int64_t code = 0, first = 0, index = 0;
        for (int64_t len = 1;; len++) {
            if (len > max_len || pos >= total) return -1;
            code |= (packed[pos >> 3] >> (7 - (pos & 7))) & 1;
            pos++;
            if (code - first < count[len]) {
                out[k] = (uint8_t)order[index + code - first];
                break;
            }
            index += count[len];
            first = (first + count[len]) << 1;
            code <<= 1;
        }
    }
    return 0;
}

void layer_release(packed_layer *L) {
    free((void *)L->index);
    free((void *)L->values);
    free((void *)L->codebook);
    free((void *)L->mask);
    free((void *)L->row_start);
    free((void *)L->qcodebook);
    free((void *)L->qsum);
    free((void *)L->row_scale);
    layer_release_grouped(L);
    memset(L, 0, sizeof(*L));
}

/* keep (a byte per weight) as the kernels' bitmask and each row's first survivor */
static int set_mask(packed_layer *L, const uint8_t *keep) {
    int64_t n = L->rows * L->cols, total = 0;
    uint8_t *bits = calloc((size_t)(n + 7) / 8 + 1, 1);
    int32_t *row_start = malloc(sizeof(int32_t) * (size_t)(L->rows + 1));
    L->mask = bits;
    L->row_start = row_start;
    if (!bits || !row_start) return -2;
    row_start[0] = 0;
    for (int64_t r = 0; r < L->rows; r++) {
        for (int64_t i = r * L->cols; i < (r + 1) * L->cols; i++)
            if (keep[i]) { bits[i >> 3] |= (uint8_t)(0x80 >> (i & 7)); total++; }
        if (total >= ((int64_t)1 << 31)) return -1; /* row offsets are 32-bit */
        row_start[r + 1] = (int32_t)total;
    }
    return 0;
}

/* codes (count entries, one byte each) as a b-bit stream */
static uint8_t *pack(const uint8_t *codes, int64_t count, int bits, int64_t slack) {
    uint8_t *w = calloc((size_t)((count * bits + 7) / 8 + slack), 1);
    if (!w) return NULL;
    if (bits == 4)
        for (int64_t i = 0; i < count; i++) w[i >> 1] |= (uint8_t)(codes[i] << (i & 1 ? 0 : 4));
    else
        for (int64_t i = 0; i < count; i++) put_bits(w, bits, i, codes[i]);
    return w;
}

void scale_and_bias(const float *row_scale, const float *bias, int64_t M, int64_t N, int64_t n0, int64_t n1, float *y) {
    if (!row_scale && !bias) return;
    for (int64_t m = 0; m < M; m++)
        for (int64_t n = n0; n < n1; n++) {
            float v = row_scale ? y[m * N + n] * row_scale[n] : y[m * N + n]; /* rounded, then the bias (no FMA) */
            y[m * N + n] = bias ? v + bias[n] : v;
        }
}

void row_scaled_matmul_t(const packed_layer *L, const float *x, int64_t M, const float *bias, float *y) {
    packed_layer inner = *L;
    inner.row_scale = NULL;
    packed_layer_matmul_t(&inner, x, M, NULL, y);
    scale_and_bias(L->row_scale, bias, M, L->rows, 0, L->rows, y);
}

int64_t layer_prepare(const layer_parts *p, packed_layer *out) {
    int64_t rows = p->rows, cols = p->cols, n = rows * cols, status = -1, survivors = 0;
    uint8_t *codes = NULL, *keep = NULL, *gaps = NULL;
    memset(out, 0, sizeof(*out));
    out->rows = rows;
    out->cols = cols;
    if (rows <= 0 || cols <= 0) return -1;
    if (p->row_scale && (p->encoding != ENCODING_CODEBOOK || p->n_row_scale != rows)) return -1;
    if (p->encoding == ENCODING_DENSE) {
        float *w = malloc(sizeof(float) * (size_t)n);
        if (!w) return -2;
        if (p->n_values != n) { free(w); return -1; }
        memcpy(w, p->values, sizeof(float) * (size_t)n);
        out->kind = LAYER_DENSE;
        out->bits = 32;
        out->values = w;
        return 0;
    }
    /* the mask, a byte per weight */
    if (p->mask_kind != MASK_NONE) {
        keep = calloc((size_t)n, 1);
        if (!keep) return -2;
        if (p->mask_kind == MASK_BITMASK) {
            if (p->mask_bytes * 8 < n) goto done;
            for (int64_t i = 0; i < n; i++) keep[i] = (p->mask[i >> 3] >> (7 - (i & 7))) & 1;
        } else {
            const uint8_t *g = p->mask;
            int64_t ng = p->mask_bytes;
            if (p->mask_kind == MASK_HUFFMAN_POSITIONS) {
                gaps = malloc((size_t)p->mask_symbols + 1);
                if (!gaps) { status = -2; goto done; }
                if (huffman_decode(p->mask, p->mask_bytes, p->mask_lengths, p->n_mask_lengths, p->mask_symbols, gaps))
                    goto done;
                g = gaps;
                ng = p->mask_symbols;
            }
            for (int64_t i = 0, pos = -1; i < ng; i++) { /* compress/primitives.py's gaps: 0 = skip 255 */
                pos += g[i] ? g[i] : 255;
                if (g[i] && pos >= n) goto done;
                if (g[i]) keep[pos] = 1;
            }
        }
        for (int64_t i = 0; i < n; i++) survivors += keep[i];
    }
    if (p->encoding == ENCODING_SPARSE) {
        if (!keep || p->n_values != survivors) goto done;
        float *v = malloc(sizeof(float) * (size_t)(survivors + 1));
        if (!v) { status = -2; goto done; }
        memcpy(v, p->values, sizeof(float) * (size_t)survivors);
        out->values = v;
        out->bits = 32;
        out->kind = LAYER_SPARSE;
        status = set_mask(out, keep);
        if (status) goto done;
    } else {
        /* the codes, a byte each (Huffman undone), where the layout changes; else the stored stream */
        int bits = (int)p->bits;
        int64_t count = p->count;
        if (bits < 1 || bits > 8 || count != (keep ? survivors : n) || p->n_centroids < 1) goto done;
        int dense4 = keep && !p->row_scale && bits <= 3 && (double)survivors >= (1 - PRUNED_DENSE_BELOW) * (double)n;
        /* unpruned 1-, 2- and 3-bit codes widen to 4-bit ones, as layers.py's from_parts and
           for_decoding widen them: the 4-bit kernel runs them */
        int widen = !keep && bits <= 3, unserved = bits > 4 || cols % 8 || (p->row_scale && keep);
        if (p->index_huffman || dense4 || widen || unserved) {
            codes = malloc((size_t)count + 1);
            if (!codes) { status = -2; goto done; }
            if (p->index_huffman) {
                if (huffman_decode(p->index, p->index_bytes, p->index_lengths, p->n_index_lengths, count, codes)) goto done;
            } else {
                if (p->index_bytes * 8 < count * bits) goto done;
                for (int64_t i = 0; i < count; i++) codes[i] = (uint8_t)get_bits(p->index, bits, i);
            }
            for (int64_t i = 0; i < count; i++)
                if (codes[i] >= ((int64_t)1 << bits)) goto done;
        } else if (p->index_bytes * 8 < count * bits) {
            goto done;
        }
        float centroids[257] = {0};
        int64_t n_centroids = p->n_centroids < 256 ? p->n_centroids : 256;
        memcpy(centroids, p->centroids, sizeof(float) * (size_t)n_centroids);
        if (dense4) {
            /* a dense 4-bit layer: entry 2**bits is the pruned weights' zero (layers.py's for_decoding) */
            uint8_t *dense = malloc((size_t)n);
            if (!dense) { status = -2; goto done; }
            uint8_t zero = (uint8_t)(1 << bits);
            for (int64_t i = 0, j = 0; i < n; i++) dense[i] = keep[i] ? codes[j++] : zero;
            for (int64_t c = zero; c < 16; c++) centroids[c] = 0.0f;
            free(codes);
            codes = dense;
            free(keep);
            keep = NULL;
            count = n;
            bits = 4;
        } else if (widen) {
            bits = 4; /* the same codes as 4-bit indices: the 4-bit kernel runs them */
        }
        int64_t size = (int64_t)1 << bits;
        if (keep && size < 16) size = 16; /* the pruned kernels read 16 entries */
        float *codebook = calloc((size_t)size, sizeof(float));
        if (!codebook) { status = -2; goto done; }
        memcpy(codebook, centroids, sizeof(float) * (size_t)(size < n_centroids ? size : n_centroids));
        out->codebook = codebook;
        out->bits = bits;
        if (codes) {
            out->index = pack(codes, count, bits, keep ? 16 : 0);
        } else { /* the stored stream is the kernels' layout already */
            int64_t stream = (count * bits + 7) / 8;
            uint8_t *copy = calloc((size_t)stream + 16, 1);
            if (copy) memcpy(copy, p->index, (size_t)stream);
            out->index = copy;
        }
        if (!out->index) { status = -2; goto done; }
        if (keep) {
            status = set_mask(out, keep);
            if (status) goto done;
        }
        out->kind = keep ? (bits <= 4 ? LAYER_SPARSE_LUT4 : -1) : bits == 4 ? LAYER_LUT4 : bits == 1 ? LAYER_BIN1 : -1;
    }
    if (cols % 8 || (p->row_scale && keep)) out->kind = -1; /* row scales: unpruned codebook layers only */
    if (out->kind >= 0 && p->row_scale) {
        float *scale = malloc(sizeof(float) * (size_t)rows);
        if (!scale) { status = -2; goto done; }
        memcpy(scale, p->row_scale, sizeof(float) * (size_t)rows);
        out->row_scale = scale;
    }
    if (out->kind < 0) { /* no kernel serves it: fp32, the stored values exactly */
        float *w = calloc((size_t)n, sizeof(float));
        if (!w) { status = -2; goto done; }
        for (int64_t i = 0, j = 0; i < n; i++) {
            if (keep && !keep[i]) continue;
            w[i] = p->encoding == ENCODING_SPARSE ? out->values[j] : out->codebook[codes[keep ? j : i]];
            j++;
        }
        if (p->row_scale) /* every entry, the pruned zeros too (a negative scale makes them -0, as numpy does) */
            for (int64_t i = 0; i < n; i++) w[i] *= p->row_scale[i / cols];
        packed_layer dense = {.kind = LAYER_DENSE, .rows = rows, .cols = cols, .bits = 32, .values = w};
        layer_release(out);
        *out = dense;
    }
    status = 0;
done:
    free(codes);
    free(keep);
    free(gaps);
    if (status) layer_release(out);
    return status;
}

/* IEEE half to single precision, exactly (a packed file's float16 biases and norms) */
void half_to_float(const uint16_t *in, int64_t n, float *out) {
    for (int64_t i = 0; i < n; i++) {
        uint32_t h = in[i], sign = (h & 0x8000u) << 16, e = (h >> 10) & 0x1f, f = h & 0x3ff, bits;
        if (e == 0x1f) bits = sign | 0x7f800000u | (f << 13);
        else if (e) bits = sign | ((e + 112) << 23) | (f << 13);
        else if (!f) bits = sign;
        else { /* subnormal: normalize */
            e = 113;
            while (!(f & 0x400)) { f <<= 1; e--; }
            bits = sign | (e << 23) | ((f & 0x3ff) << 13);
        }
        memcpy(out + i, &bits, 4);
    }
}

/* Single to IEEE half precision, rounded to nearest even (F16C's _MM_FROUND_TO_NEAREST_INT, numpy's
   astype(float16)): overflow to infinity, subnormal halves, NaN kept quiet with its top payload
   bits. After numpy's npy_floatbits_to_halfbits. */
void float_to_half(const float *in, int64_t n, uint16_t *out) {
    for (int64_t i = 0; i < n; i++) {
        uint32_t f;
        memcpy(&f, in + i, 4);
        uint32_t sign = (f >> 16) & 0x8000u, exp = f & 0x7f800000u, sig = f & 0x007fffffu;
        if (exp >= 0x47800000u) { /* infinity, NaN, or too large */
            out[i] = (uint16_t)(sign | 0x7c00u | (exp == 0x7f800000u && sig ? 0x0200u | (sig >> 13) : 0));
            continue;
        }
        if (exp <= 0x38000000u) { /* a subnormal half, or zero */
            if (exp < 0x33000000u) {
                out[i] = (uint16_t)sign;
                continue;
            }
            uint32_t e = exp >> 23, s = 0x00800000u + sig;
            uint32_t shifted = s >> (113 - e), lost = s & ((1u << (113 - e)) - 1);
            /* round to nearest even on the bits shifted out and the 13 below the half's last */
            uint32_t rest = (shifted & 0x1fffu) | (lost ? 1u : 0u), half_sig = shifted >> 13;
            if ((shifted & 0x1000u) && (rest != 0x1000u || (half_sig & 1u))) half_sig++;
            out[i] = (uint16_t)(sign + half_sig);
            continue;
        }
        uint32_t h = ((exp - 0x38000000u) >> 13) + (sig >> 13), rest = sig & 0x1fffu;
        if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) h++; /* a carry into the exponent is right, up to infinity */
        out[i] = (uint16_t)(sign | h);
    }
}
