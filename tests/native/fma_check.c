/* fused_madd (runtime.h) on cases that need a single rounding: products whose sum with c lies
   exactly halfway between two floats, or a hair off it (the hair far below double's precision),
   of both signs, near the subnormal range, and random triples. Writes the results (float bits) to
   argv[1]; a WebAssembly build (its own fused_madd) must write what the host's fmaf writes. */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "runtime.h"

static uint64_t state = 88172645463325252ull;
static float random_float(int spread) {
    state ^= state << 13, state ^= state >> 7, state ^= state << 17;
    uint32_t bits = (uint32_t)(state >> 32);
    bits = (bits & 0x807fffffu) | ((uint32_t)(127 - spread + (int)((state >> 8) % (uint64_t)(2 * spread))) << 23);
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    FILE *out = fopen(argv[1], "wb");
    if (!out) return 1;
    const float offs[] = {0.0f, 0x1p-60f, -0x1p-60f, 0x1p-80f, -0x1p-80f, 0x1p-40f, -0x1p-40f};
    for (int i = 1; i < 200; i++) {
        float a = 1.0f + (float)i * 0x1p-12f, b = 1.0f + 0x1p-12f;
        for (int s = 0; s < 4; s++)
            for (unsigned o = 0; o < sizeof(offs) / sizeof(offs[0]); o++) {
                float x = s & 1 ? -a : a, y = s & 2 ? -b : b, r = fused_madd(x, y, offs[o]);
                fwrite(&r, 4, 1, out);
                r = fused_madd(x * 0x1p-100f, y * 0x1p-25f, offs[o] * 0x1p-125f); /* near and below float's normal range */
                fwrite(&r, 4, 1, out);
            }
    }
    for (int i = 0; i < 200000; i++) {
        float a = random_float(20), b = random_float(20), c = random_float(30); /* in this order */
        float r = fused_madd(a, b, c);
        fwrite(&r, 4, 1, out);
    }
    return fclose(out) != 0;
}
