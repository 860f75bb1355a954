/* A test driver for the layer kernels on another architecture (tests/test_aarch64.py runs it under
   qemu-aarch64): reads one layer and some rows of x, writes y = x @ W.T + bias through
   packed_layer_matmul_t and the dense W through the dequantizing entry points, as raw floats.

   Input: int64 kind, rows, cols, bits, M, has_bias, then byte counts of index, codebook, values,
   mask, row_start, followed by those arrays, x (M * cols floats) and the bias (rows floats). Kind
   LAYER_LUT4_INT8: a 4-bit layer, laid out for the int8 mode here (layer_to_int8) before the product;
   kind GROUPED_CASE: a 4-bit layer of at most 5 values, given grouped.c's layout (layer_to_grouped). */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime.h"

#define GROUPED_CASE 64 /* the driver's own code, beside runtime.h's LAYER_* kinds */

static void *read_block(FILE *f, int64_t bytes) {
    if (bytes == 0) return NULL;
    void *p = malloc((size_t)bytes + 16);
    memset(p, 0, (size_t)bytes + 16);
    if (fread(p, 1, (size_t)bytes, f) != (size_t)bytes) { fprintf(stderr, "short input\n"); exit(2); }
    return p;
}

int main(int argc, char **argv) {
    if (argc != 3) { fprintf(stderr, "usage: kernel_check IN OUT\n"); return 2; }
    FILE *in = fopen(argv[1], "rb"), *out = fopen(argv[2], "wb");
    if (!in || !out) { perror("kernel_check"); return 2; }
    int64_t h[11];
    if (fread(h, sizeof(int64_t), 11, in) != 11) { fprintf(stderr, "short header\n"); return 2; }
    packed_layer L = {.kind = h[0], .wide = 0, .rows = h[1], .cols = h[2], .bits = h[3]};
    int64_t M = h[4], has_bias = h[5];
    L.index = read_block(in, h[6]);
    L.codebook = read_block(in, h[7]);
    L.values = read_block(in, h[8]);
    L.mask = read_block(in, h[9]);
    L.row_start = read_block(in, h[10]);
    float *x = read_block(in, M * L.cols * 4), *bias = has_bias ? read_block(in, L.rows * 4) : NULL;
    float *y = malloc(sizeof(float) * M * L.rows), *w = malloc(sizeof(float) * L.rows * L.cols);
    packed_kernels_init();
    if (L.kind == LAYER_LUT4_INT8) {
        L.kind = LAYER_LUT4;
        if (layer_to_int8(&L)) { fprintf(stderr, "layer_to_int8 refused the layer\n"); return 2; }
    } else if (L.kind == GROUPED_CASE) {
        L.kind = LAYER_LUT4;
        if (layer_to_grouped(&L)) { fprintf(stderr, "layer_to_grouped refused the layer\n"); return 2; }
    }
    packed_layer_matmul_t(&L, x, M, bias, y);
    if (L.kind == LAYER_DENSE) memcpy(w, L.values, sizeof(float) * L.rows * L.cols);
    else if (L.kind == LAYER_LUT4_INT8) for (int64_t r = 0; r < L.rows; r++) int8_row(&L, r, w + r * L.cols);
    else if (L.kind == LAYER_LUT4 || L.kind == LAYER_BIN1) lut_dequant(L.index, (int)L.bits, 0, L.rows * L.cols, L.codebook, w);
    else masked_dequant(&L, 0, L.rows, w);
    fwrite(y, sizeof(float), (size_t)(M * L.rows), out);
    fwrite(w, sizeof(float), (size_t)(L.rows * L.cols), out);
    fclose(out);
    return 0;
}
