/* Beam search, the whole loop in C: the encoder over blocks of sentences, the cross-attention
   keys/values of its output, then per step the decoding step (decoder_step.c) and the selection
   (beam_select.c), finished hypotheses read back through a record of each step's parents and
   tokens, sentences whose k hypotheses are finished leaving the batch.

   Why native: the Python loop around the two calls (runtime/search.py's search_loop, kept as the
   reference and as the search of the numpy engine) costs about a tenth of a batch-1 sentence, and
   a page (the WebAssembly build) has no Python at all: every engine runs this one loop.

   It is runtime/search.py's loop step for step, so the two give the same hypotheses: the same
   length limits (float32 a * length + b), the same order of finished hypotheses, the final score
   in double as Python computes it, and among equal scores the larger token list, as Python's
   max() over (score, tokens) pairs picks it. */

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "runtime.h"

#define ENCODER_ROWS 512 /* source positions per encoder call, as runtime/engine.py's */
#define SELECT_SENTENCES 8 /* sentences per output projection and selection, where the logits go in chunks */

typedef struct {
    double score;
    int64_t length;
    const int64_t *tokens; /* into the search's hypothesis store */
} hypothesis;

/* Python's (score, tokens) > (score, tokens) */
static int better(const hypothesis *a, const hypothesis *b) {
    if (a->score != b->score) return a->score > b->score;
    for (int64_t i = 0; i < a->length && i < b->length; i++)
        if (a->tokens[i] != b->tokens[i]) return a->tokens[i] > b->tokens[i];
    return a->length > b->length;
}

static int64_t max_length(const search_desc *D, int64_t source_length) {
    float scaled = (float)source_length * D->max_len_a;
    float limit = scaled + (float)D->max_len_b;
    int64_t m = (int64_t)limit;
    if (m > D->max_positions - 1) m = D->max_positions - 1;
    return m < 1 ? 1 : m;
}

/* The encoder's output (n, S, C), in blocks of about ENCODER_ROWS positions */
static int encode(const search_desc *D, const int64_t *src, int64_t n, int64_t S, const uint8_t *padding,
                  float *memory) {
    decoder_desc E = *D->encoder;
    E.S = S;
    int64_t block = ENCODER_ROWS / S > 1 ? ENCODER_ROWS / S : 1, first = block < n ? block : n;
    float *work = malloc(sizeof(float) * (size_t)encoder_scratch(&E, first * S));
    if (!work) return -1;
    for (int64_t b0 = 0; b0 < n; b0 += block) {
        int64_t b1 = b0 + block < n ? b0 + block : n;
        encoder_forward(&E, src + b0 * S, b1 - b0, padding + b0 * S, memory + b0 * S * E.C, work);
    }
    free(work);
    return 0;
}

int64_t beam_search(const search_desc *D, const int64_t *src, int64_t n_sent, int64_t S, int64_t *out,
                    int64_t *lengths) {
    const decoder_desc *dec = D->decoder;
    int64_t k = D->beam, C = dec->C, V = dec->vocab, L = dec->layers, rows = n_sent * k, status = -1;
    int64_t steps = 0, longest = 0, shortest = D->max_positions;

    uint8_t *padding = malloc((size_t)(n_sent * S) + (size_t)n_sent);
    int64_t *max_len = malloc(sizeof(int64_t) * (size_t)n_sent);
    if (!padding || !max_len) goto fail_early;
    uint8_t *at_limit = padding + n_sent * S;
    for (int64_t s = 0; s < n_sent; s++) {
        int64_t real = 0;
        for (int64_t j = 0; j < S; j++) real += (padding[s * S + j] = src[s * S + j] == D->pad) == 0;
        max_len[s] = max_length(D, real);
        if (max_len[s] > longest) longest = max_len[s];
        if (max_len[s] < shortest) shortest = max_len[s];
    }
    int64_t capacity = longest + 1;

    /* buffers: per layer the cross keys/values and the self-attention caches, floats or (half_kv)
       halves; the encoder's output apart, freed once the cross keys/values are made from it (2.6 MB
       for 64 sentences of 40), and with halves a float buffer the cross projections go through */
    int half = D->half_kv != 0;
    size_t entry = half ? sizeof(uint16_t) : sizeof(float), per_layer = (size_t)(2 * n_sent * S * C + 2 * rows * capacity * C);
    float *memory = malloc(sizeof(float) * (size_t)(n_sent * S * C) * (half ? 2 : 1));
    char *caches = malloc(entry * per_layer * (size_t)L);
    decoder_layer *layers = malloc(sizeof(decoder_layer) * (size_t)L);
    int32_t *ancestry = malloc(sizeof(int32_t) * (size_t)(rows * capacity));
    float *tile = malloc(sizeof(float) * (size_t)(decoder_tile_floats() > 0 ? decoder_tile_floats() : 1));
    /* selection buffers; history: per step each continuing row's parent and token */
    int64_t *parent = malloc(sizeof(int64_t) * (size_t)(4 * rows + n_sent));
    float *scores = malloc(sizeof(float) * (size_t)(2 * rows));
    int32_t *history = malloc(sizeof(int32_t) * (size_t)(2 * rows * longest));
    /* finished: up to k per sentence, each up to `longest` tokens */
    hypothesis *finished = malloc(sizeof(hypothesis) * (size_t)rows);
    int64_t *store = malloc(sizeof(int64_t) * (size_t)(rows * longest)), *n_finished = calloc((size_t)n_sent, sizeof(int64_t));
    int64_t *alive = malloc(sizeof(int64_t) * (size_t)n_sent);
    decoder_desc step = *dec;
    float *scratch = NULL, *x = NULL, *logits = NULL;
    if (!memory || !caches || !layers || !ancestry || !tile || !parent || !scores || !history || !finished || !store ||
        !n_finished || !alive)
        goto done;
    int64_t *token = parent + rows, *finished_beam = token + rows, *sentences = finished_beam + rows,
            *keep_rows = sentences + n_sent;
    float *finished_score = scores + rows;

    if (encode(D, src, n_sent, S, padding, memory)) goto done;
    char *buf = caches;
    float *projected = memory + n_sent * S * C; /* (half) a cross projection before it is narrowed */
    for (int64_t l = 0; l < L; l++) {
        layers[l] = dec->layer[l];
        char *ck = buf, *cv = ck + entry * (size_t)(n_sent * S * C);
        layers[l].self_k = (float *)(void *)(cv + entry * (size_t)(n_sent * S * C));
        layers[l].self_v = (float *)(void *)((char *)layers[l].self_k + entry * (size_t)(rows * capacity * C));
        buf = (char *)layers[l].self_v + entry * (size_t)(rows * capacity * C);
        for (int j = 0; j < 2; j++) {
            char *into = j ? cv : ck;
            decoder_project(D->cross[2 * l + j], memory, n_sent * S, D->cross_bias[2 * l + j],
                            half ? projected : (float *)(void *)into, tile);
            if (half) kv_narrow(projected, n_sent * S * C, (uint16_t *)(void *)into);
        }
        layers[l].cross_k = (const float *)(void *)ck;
        layers[l].cross_v = (const float *)(void *)cv;
    }
    free(memory);
    memory = NULL;
    step.layer = layers;
    step.half_kv = half;
    step.capacity = capacity;
    step.S = S;
    step.key_padding = padding;
    step.ancestry = ancestry;
    scratch = malloc(sizeof(float) * (size_t)decoder_step_scratch(&step, rows));
    x = malloc(sizeof(float) * (size_t)(rows * C));
    /* The int8 output layer runs its kernel at any number of rows (no dequantized tiles), so the
       logits go a few sentences at a time: (SELECT_SENTENCES * beams, V) floats, not (rows, V),
       10 MB for 64 sentences of 5 beams over 8000 tokens */
    int64_t chunk = dec->out->kind == LAYER_LUT4_INT8 && n_sent > SELECT_SENTENCES ? SELECT_SENTENCES : n_sent;
    logits = malloc(sizeof(float) * (size_t)(chunk * k * V));
    if (!scratch || !x || !logits) goto done;

    int64_t n = n_sent;
    for (int64_t s = 0; s < n_sent; s++) alive[s] = sentences[s] = s;
    for (int64_t r = 0; r < rows; r++) {
        scores[r] = r % k ? -INFINITY : 0.0f; /* all beams start identical: keep one so the first step fans out */
        token[r] = D->bos;
    }
    for (int64_t t = 0; t < longest; t++) {
        int chunked = chunk < n;
        decoder_step(&step, token, x, n * k, k, t, t ? parent : NULL, sentences, chunked ? NULL : logits, scratch);
        int limited = t + 1 >= shortest;
        for (int64_t b = 0; limited && b < n; b++) at_limit[b] = max_len[alive[b]] <= t + 1;
        int64_t done = 0;
        for (int64_t b0 = 0; b0 < n; b0 += chunk) { /* sentences select independently: the same picks */
            int64_t nb = n - b0 < chunk ? n - b0 : chunk, r0 = b0 * k;
            if (chunked) decoder_project(dec->out, x + r0 * C, nb * k, NULL, logits, tile);
            done += beam_select(logits, nb, k, V, scores + r0, limited ? at_limit + b0 : NULL, D->pad, D->bos, D->eos,
                                parent + r0, token + r0, finished_beam + r0, finished_score + r0);
            for (int64_t r = r0; r0 && r < r0 + nb * k; r++) parent[r] += r0; /* rows of the chunk -> of the batch */
        }
        int64_t m = n * k;
        if (done) {
            int64_t kept = 0;
            for (int64_t b = 0; b < n; b++) {
                int64_t sent = alive[b];
                for (int64_t r = b * k; r < b * k + k; r++) {
                    if (finished_beam[r] < 0 || n_finished[sent] >= k) continue;
                    /* the prefix of the row that entered step t, read back through the history */
                    int64_t *hyp = store + (sent * k + n_finished[sent]) * longest, row = b * k + finished_beam[r];
                    for (int64_t s = t - 1; s >= 0; s--) {
                        const int32_t *h = history + 2 * s * rows;
                        hyp[s] = h[rows + row];
                        row = h[row];
                    }
                    hypothesis *f = &finished[sent * k + n_finished[sent]++];
                    f->tokens = hyp;
                    f->length = t;
                    f->score = (double)finished_score[r] / pow((double)(t + 1), D->length_penalty);
                }
                if (n_finished[sent] < k)
                    for (int64_t j = 0; j < k; j++) keep_rows[kept++] = b * k + j;
            }
            if (!kept) break;
            if (kept < m) { /* finished sentences leave the batch; rows only move down */
                for (int64_t j = 0; j < kept; j++) {
                    parent[j] = parent[keep_rows[j]];
                    token[j] = token[keep_rows[j]];
                    scores[j] = scores[keep_rows[j]];
                }
                int64_t b2 = 0;
                shortest = D->max_positions;
                for (int64_t b = 0; b < n; b++)
                    if (n_finished[alive[b]] < k) {
                        alive[b2] = sentences[b2] = alive[b];
                        if (max_len[alive[b2]] < shortest) shortest = max_len[alive[b2]];
                        b2++;
                    }
                n = b2;
                m = kept;
            }
        }
        int32_t *h = history + 2 * t * rows;
        for (int64_t r = 0; r < m; r++) {
            h[r] = (int32_t)parent[r];
            h[rows + r] = (int32_t)token[r];
        }
        steps = t + 1;
    }
    (void)steps;

    for (int64_t s = 0; s < n_sent; s++) {
        const hypothesis *best = NULL;
        for (int64_t j = 0; j < n_finished[s]; j++)
            if (!best || better(&finished[s * k + j], best)) best = &finished[s * k + j];
        lengths[s] = best ? best->length : 0;
        if (best) memcpy(out + s * D->max_positions, best->tokens, sizeof(int64_t) * (size_t)best->length);
    }
    status = 0;
done:
    free(logits);
    free(x);
    free(scratch);
    free(alive);
    free(n_finished);
    free(store);
    free(finished);
    free(history);
    free(scores);
    free(parent);
    free(tile);
    free(ancestry);
    free(layers);
    free(caches);
    free(memory);
fail_early:
    free(max_len);
    free(padding);
    return status;
}
