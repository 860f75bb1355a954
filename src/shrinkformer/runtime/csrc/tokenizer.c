/* A SentencePiece unigram tokenizer in C: reads the model the .sfz carries (its ModelProto bytes),
   encodes text to ids and decodes ids to text as the sentencepiece library does, id for id.

   Why our own: the page (the WebAssembly build) must tokenize, and the npm builds of sentencepiece
   weigh 4 MB against the page's budget of 1 MB; this is a few KB. The Python runtime keeps the
   sentencepiece package; tests/test_tokenizer.py checks that the two agree on every Multi30k line
   and on the edge cases (spaces, unknown characters, malformed UTF-8).

   What it follows (sentencepiece's normalizer.cc, unigram_model.cc, sentencepiece_processor.cc):
   - normalization: the longest rule of the precompiled character map (a Darts double-array trie
     of byte strings and their replacements) at each position, else one UTF-8 character (a malformed
     byte becomes U+FFFD); leading, trailing and repeated spaces dropped, a space added in front,
     spaces written as U+2581;
   - encoding: Viterbi over every piece that matches at each character boundary, in float as the
     library sums, ties kept by the first found (shorter) piece; a character no piece covers is the
     unknown id at the lowest piece score less 10; runs of unknown pieces merge into one;
   - decoding: control ids give nothing, the unknown id " \xE2\x81\x87 ", U+2581 becomes a space, and
     the first piece with text loses its leading one.
   Supported: unigram models without user-defined symbols or byte fallback (what shrinkformer trains);
   others are refused at load (spm_load's error). */

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "runtime.h"

enum { NORMAL = 1, UNKNOWN = 2, CONTROL = 3, USER_DEFINED = 4, UNUSED = 5, BYTE = 6 };
#define SPACE "\xe2\x96\x81" /* U+2581, which stands for a space inside pieces */
#define UNK_PENALTY 10.0f

struct spm_model {
    int64_t n, unk, slots, longest;
    const uint8_t **piece; /* into proto: each piece's bytes */
    int32_t *length, *type, *table; /* table: open addressing, piece ids (-1 empty) */
    float *score, min_score;
    const uint32_t *trie;  /* the character map's double array, and its replacements */
    uint32_t *trie_copy;   /* where the map's units were not 4-byte aligned in the proto */
    int64_t trie_units;
    const char *replacements;
    int64_t replacements_size;
    int add_dummy_prefix, remove_extra_whitespaces, escape_whitespaces;
    uint8_t *proto;        /* a copy the pointers above point into */
    char error[160];
};

/* ---- protobuf wire format: just what ModelProto needs */
typedef struct {
    const uint8_t *p, *end;
} reader;

static int varint(reader *r, uint64_t *v) {
    *v = 0;
    for (int shift = 0; shift < 64 && r->p < r->end; shift += 7) {
        uint8_t c = *r->p++;
        *v |= (uint64_t)(c & 0x7f) << shift;
        if (c < 0x80) return 0;
    }
    return -1;
}

/* the next field: its number and wire type; for length-delimited ones the bytes, else the value */
static int field(reader *r, uint64_t *number, int *wire, uint64_t *value, reader *bytes) {
    uint64_t key;
    if (varint(r, &key)) return -1;
    *number = key >> 3;
    *wire = (int)(key & 7);
    switch (*wire) {
    case 0: return varint(r, value);
    case 1: if (r->end - r->p < 8) return -1; memcpy(value, r->p, 8); r->p += 8; return 0;
    case 5: if (r->end - r->p < 4) return -1; *value = 0; memcpy(value, r->p, 4); r->p += 4; return 0;
    case 2:
        if (varint(r, value) || *value > (uint64_t)(r->end - r->p)) return -1;
        bytes->p = r->p;
        bytes->end = r->p + *value;
        r->p += *value;
        return 0;
    default: return -1;
    }
}

static uint32_t hash(const uint8_t *s, int64_t n) {
    uint32_t h = 2166136261u; /* FNV-1a */
    for (int64_t i = 0; i < n; i++) h = (h ^ s[i]) * 16777619u;
    return h;
}

static int64_t lookup(const spm_model *m, const uint8_t *s, int64_t n) {
    for (uint32_t i = hash(s, n) & (uint32_t)(m->slots - 1);; i = (i + 1) & (uint32_t)(m->slots - 1)) {
        int32_t id = m->table[i];
        if (id < 0) return -1;
        if (m->length[id] == n && !memcmp(m->piece[id], s, (size_t)n)) return id;
    }
}

static spm_model *fail(spm_model *m, const char *why) {
    strncpy(m->error, why, sizeof(m->error) - 1);
    return m;
}

spm_model *spm_load(const uint8_t *bytes, int64_t size) {
    spm_model *m = calloc(1, sizeof(spm_model));
    if (!m) return NULL;
    m->unk = -1;
    m->add_dummy_prefix = m->remove_extra_whitespaces = m->escape_whitespaces = 1; /* proto2 defaults */
    m->proto = malloc((size_t)size + 1);
    if (!m->proto) return fail(m, "out of memory");
    memcpy(m->proto, bytes, (size_t)size);
    reader r = {m->proto, m->proto + size}, sub;
    uint64_t number, value;
    int wire, model_type = 1;
    for (reader scan = r; scan.p < scan.end;) { /* count the pieces first */
        if (field(&scan, &number, &wire, &value, &sub)) return fail(m, "not a SentencePiece model (bad protobuf)");
        m->n += number == 1 && wire == 2;
    }
    if (!m->n) return fail(m, "not a SentencePiece model (no pieces)");
    for (m->slots = 1; m->slots < 2 * m->n; m->slots <<= 1) {}
    m->piece = malloc(sizeof(uint8_t *) * (size_t)m->n);
    m->length = malloc(sizeof(int32_t) * (size_t)m->n);
    m->type = malloc(sizeof(int32_t) * (size_t)m->n);
    m->score = malloc(sizeof(float) * (size_t)m->n);
    m->table = malloc(sizeof(int32_t) * (size_t)m->slots);
    if (!m->piece || !m->length || !m->type || !m->score || !m->table) return fail(m, "out of memory");
    memset(m->table, 0xff, sizeof(int32_t) * (size_t)m->slots);
    m->min_score = 3.4e38f;
    int64_t i = 0;
    while (r.p < r.end) {
        field(&r, &number, &wire, &value, &sub);
        if (number == 1 && wire == 2) { /* SentencePiece: piece = 1, score = 2, type = 3 */
            m->piece[i] = (const uint8_t *)"";
            m->length[i] = 0;
            m->score[i] = 0.0f;
            m->type[i] = NORMAL;
            reader p = sub, s;
            while (p.p < p.end) {
                if (field(&p, &number, &wire, &value, &s)) return fail(m, "not a SentencePiece model (bad piece)");
                if (number == 1 && wire == 2) { m->piece[i] = s.p; m->length[i] = (int32_t)(s.end - s.p); }
                if (number == 2 && wire == 5) { uint32_t u = (uint32_t)value; memcpy(&m->score[i], &u, 4); }
                if (number == 3 && wire == 0) m->type[i] = (int32_t)value;
            }
            if (m->type[i] == USER_DEFINED || m->type[i] == BYTE)
                return fail(m, "SentencePiece models with user-defined or byte pieces are not supported here");
            if (m->type[i] == UNKNOWN) m->unk = i;
            if (m->type[i] == NORMAL && m->score[i] < m->min_score) m->min_score = m->score[i];
            if ((m->type[i] == NORMAL || m->type[i] == UNUSED) && lookup(m, m->piece[i], m->length[i]) < 0) {
                uint32_t h = hash(m->piece[i], m->length[i]) & (uint32_t)(m->slots - 1);
                while (m->table[h] >= 0) h = (h + 1) & (uint32_t)(m->slots - 1);
                m->table[h] = (int32_t)i;
                if (m->length[i] > m->longest) m->longest = m->length[i];
            }
            i++;
        } else if (number == 2 && wire == 2) { /* TrainerSpec: model_type = 3, byte_fallback = 35 */
            reader t = sub, s;
            while (t.p < t.end) {
                if (field(&t, &number, &wire, &value, &s)) return fail(m, "not a SentencePiece model (bad trainer spec)");
                if (number == 3 && wire == 0) model_type = (int)value;
                if (number == 35 && wire == 0 && value) return fail(m, "byte-fallback SentencePiece models are not supported here");
            }
        } else if (number == 3 && wire == 2) { /* NormalizerSpec */
            reader t = sub, s;
            while (t.p < t.end) {
                if (field(&t, &number, &wire, &value, &s)) return fail(m, "not a SentencePiece model (bad normalizer)");
                if (number == 2 && wire == 2 && s.end - s.p >= 4) { /* precompiled_charsmap */
                    uint32_t trie_bytes;
                    memcpy(&trie_bytes, s.p, 4);
                    if (trie_bytes > (uint64_t)(s.end - s.p - 4) || trie_bytes % 4)
                        return fail(m, "not a SentencePiece model (bad character map)");
                    m->trie = (const uint32_t *)(void *)(s.p + 4); /* 4-aligned: see below */
                    m->trie_units = trie_bytes / 4;
                    m->replacements = (const char *)(s.p + 4 + trie_bytes);
                    m->replacements_size = (s.end - s.p) - 4 - trie_bytes;
                }
                if (number == 3 && wire == 0) m->add_dummy_prefix = value != 0;
                if (number == 4 && wire == 0) m->remove_extra_whitespaces = value != 0;
                if (number == 5 && wire == 0) m->escape_whitespaces = value != 0;
            }
        }
    }
    if (model_type != 1) return fail(m, "only unigram SentencePiece models are supported here");
    if (m->unk < 0) return fail(m, "the SentencePiece model has no unknown piece");
    if (m->trie && ((uintptr_t)m->trie % 4)) { /* the trie's units are read as uint32: copy them aligned */
        uint32_t *aligned = malloc(sizeof(uint32_t) * (size_t)m->trie_units + 1);
        if (!aligned) return fail(m, "out of memory");
        memcpy(aligned, m->trie, sizeof(uint32_t) * (size_t)m->trie_units);
        m->trie = m->trie_copy = aligned;
    }
    return m;
}

/* "" where spm_load succeeded, else why it did not (the model must still be freed) */
const char *spm_error(const spm_model *m) { return m ? m->error : "out of memory"; }

void spm_free(spm_model *m) {
    if (!m) return;
    free(m->trie_copy);
    free(m->piece);
    free(m->length);
    free(m->type);
    free(m->score);
    free(m->table);
    free(m->proto);
    free(m);
}

/* ---- normalization */
static int64_t one_char_len(uint8_t c) { return "\1\1\1\1\1\1\1\1\1\1\1\1\2\2\3\4"[c >> 4]; }

static int trail(uint8_t c) { return (c & 0xC0) == 0x80; }
static int valid_codepoint(uint32_t c) { return c < 0xD800 || (c >= 0xE000 && c <= 0x10FFFF); }

/* sentencepiece's IsValidDecodeUTF8: the length of the character at s, 0 where it is malformed */
static int64_t utf8_char(const uint8_t *s, int64_t n) {
    if (s[0] < 0x80) return 1;
    if (n >= 2 && (s[0] & 0xE0) == 0xC0) {
        uint32_t c = ((s[0] & 0x1Fu) << 6) | (s[1] & 0x3Fu);
        if (trail(s[1]) && c >= 0x80 && valid_codepoint(c)) return 2;
    } else if (n >= 3 && (s[0] & 0xF0) == 0xE0) {
        uint32_t c = ((s[0] & 0x0Fu) << 12) | ((s[1] & 0x3Fu) << 6) | (s[2] & 0x3Fu);
        if (trail(s[1]) && trail(s[2]) && c >= 0x800 && valid_codepoint(c)) return 3;
        if (c == 0xFFFD) return 3;
    } else if (n >= 4 && (s[0] & 0xF8) == 0xF0) {
        uint32_t c = ((s[0] & 0x07u) << 18) | ((s[1] & 0x3Fu) << 12) | ((s[2] & 0x3Fu) << 6) | (s[3] & 0x3Fu);
        if (trail(s[1]) && trail(s[2]) && trail(s[3]) && c >= 0x10000 && valid_codepoint(c)) return 4;
    }
    return 0;
}

/* The normalized form of the text's next character(s): (its bytes, its length), and how many
   input bytes it consumes. */
static int64_t normalize_prefix(const spm_model *m, const uint8_t *s, int64_t n, const char **out, int64_t *out_len) {
    int64_t longest = 0, value = 0;
    if (m->trie && m->trie_units) { /* Darts' commonPrefixSearch, keeping the longest match */
        const uint32_t *a = m->trie;
#define OFFSET(u) (((u) >> 10) << (((u) & (1u << 9)) >> 6))
        uint32_t pos = OFFSET(a[0]);
        for (int64_t i = 0; i < n; i++) {
            pos ^= s[i];
            if (pos >= (uint64_t)m->trie_units) break;
            uint32_t unit = a[pos];
            if ((unit & ((1u << 31) | 0xFF)) != s[i]) break;
            pos ^= OFFSET(unit);
            if ((unit >> 8) & 1) {
                if (pos >= (uint64_t)m->trie_units) break;
                longest = i + 1;
                value = a[pos] & ((1u << 31) - 1);
            }
        }
#undef OFFSET
    }
    if (longest && value < m->replacements_size) {
        *out = m->replacements + value;
        const char *nul = memchr(*out, 0, (size_t)(m->replacements_size - value));
        *out_len = nul ? nul - *out : m->replacements_size - value;
        return longest;
    }
    int64_t len = utf8_char(s, n);
    if (!len) {
        *out = "\xEF\xBF\xBD";
        *out_len = 3;
        return 1;
    }
    *out = (const char *)s;
    *out_len = len;
    return len;
}

/* normalized text into out (at most 3 * n + 3 bytes: a byte becomes at most U+2581 or U+FFFD, but
   a map rule may write more than it reads, so the caller grows out and retries); its length */
static int64_t normalize(const spm_model *m, const uint8_t *s, int64_t n, char *out, int64_t cap) {
    int64_t o = 0, len;
    const char *piece;
#define PUT(b) do { if (o < cap) out[o] = (b); o++; } while (0)
    if (m->remove_extra_whitespaces)
        while (n > 0) {
            int64_t used = normalize_prefix(m, s, n, &piece, &len);
            if (!(len == 1 && piece[0] == ' ')) break;
            s += used;
            n -= used;
        }
    if (n <= 0) return 0;
    if (m->add_dummy_prefix) {
        if (m->escape_whitespaces) { PUT('\xe2'); PUT('\x96'); PUT('\x81'); } else PUT(' ');
    }
    int prev_space = m->remove_extra_whitespaces;
    while (n > 0) {
        int64_t used = normalize_prefix(m, s, n, &piece, &len);
        if (prev_space)
            while (len > 0 && piece[0] == ' ') { piece++; len--; }
        if (len > 0) {
            for (int64_t i = 0; i < len; i++) {
                if (m->escape_whitespaces && piece[i] == ' ') { PUT('\xe2'); PUT('\x96'); PUT('\x81'); }
                else PUT(piece[i]);
            }
            prev_space = piece[len - 1] == ' ';
        }
        s += used;
        n -= used;
        prev_space = prev_space && m->remove_extra_whitespaces;
    }
    if (m->remove_extra_whitespaces && o <= cap) {
        int64_t w = m->escape_whitespaces ? 3 : 1;
        while (o >= w && !memcmp(out + o - w, m->escape_whitespaces ? SPACE : " ", (size_t)w)) o -= w;
    }
#undef PUT
    return o;
}

/* ---- encoding */
typedef struct {
    int64_t id, start;
    float score;
} path_node;

/* The ids of text (n bytes) into ids (at most cap); returns how many there are (more than cap:
   call again with room for them), or -1 where memory ran out. */
int64_t spm_encode(const spm_model *m, const char *text, int64_t n, int64_t *ids, int64_t cap) {
    int64_t room = 3 * n + 16, size;
    char *norm = NULL;
    for (;;) {
        free(norm);
        norm = malloc((size_t)room);
        if (!norm) return -1;
        size = normalize(m, (const uint8_t *)text, n, norm, room);
        if (size <= room) break;
        room = size;
    }
    path_node *best = malloc(sizeof(path_node) * (size_t)(size + 1));
    if (!best) { free(norm); return -1; }
    for (int64_t i = 0; i <= size; i++) best[i] = (path_node){-1, -1, 0.0f};
    float unk_score = m->min_score - UNK_PENALTY;
    const uint8_t *u = (const uint8_t *)norm;
    for (int64_t start = 0; start < size;) {
        float here = best[start].score;
        int64_t mblen = one_char_len(u[start]);
        if (mblen > size - start) mblen = size - start;
        int single = 0;
        for (int64_t end = start + 1; end <= size && end - start <= m->longest; end++) {
            int64_t id = lookup(m, u + start, end - start);
            if (id < 0 || m->type[id] == UNUSED) continue;
            float candidate = m->score[id] + here;
            path_node *t = &best[end];
            if (t->start == -1 || candidate > t->score) *t = (path_node){id, start, candidate};
            if (end - start == mblen) single = 1;
        }
        if (!single) {
            path_node *t = &best[start + mblen];
            float candidate = unk_score + here;
            if (t->start == -1 || candidate > t->score) *t = (path_node){m->unk, start, candidate};
        }
        start += mblen;
    }
    int64_t count = 0;
    for (int64_t end = size; end > 0; end = best[end].start) count++;
    int64_t *path = malloc(sizeof(int64_t) * (size_t)(count + 1));
    if (!path) { free(best); free(norm); return -1; }
    int64_t j = count;
    for (int64_t end = size; end > 0; end = best[end].start) path[--j] = best[end].id;
    int64_t out = 0;
    for (int64_t i = 0; i < count; i++) {
        if (path[i] == m->unk && out > 0 && i > 0 && path[i - 1] == m->unk) continue; /* unknown runs merge */
        if (out < cap) ids[out] = path[i];
        out++;
    }
    free(path);
    free(best);
    free(norm);
    return out;
}

/* The text of ids (n) into out (at most cap bytes, not terminated); returns its length (more than
   cap: call again with room for it); ids outside the vocabulary count as unknown. */
int64_t spm_decode(const spm_model *m, const int64_t *ids, int64_t n, char *out, int64_t cap) {
    int64_t o = 0;
    int at_start = 1;
#define PUT(b) do { if (o < cap) out[o] = (b); o++; } while (0)
    for (int64_t i = 0; i < n; i++) {
        int64_t id = ids[i] >= 0 && ids[i] < m->n ? ids[i] : m->unk;
        int64_t before = o;
        if (m->type[id] == CONTROL) continue; /* <s>, </s>, <pad> */
        if (id == m->unk) {
            const char *surface = " \xE2\x81\x87 ";
            for (const char *c = surface; *c; c++) PUT(*c);
        } else {
            const uint8_t *p = m->piece[id];
            int64_t len = m->length[id];
            if (at_start && (m->add_dummy_prefix || m->remove_extra_whitespaces) && len >= 3 && !memcmp(p, SPACE, 3)) {
                p += 3;
                len -= 3;
            }
            for (int64_t j = 0; j < len; j++) {
                if (j + 3 <= len && !memcmp(p + j, SPACE, 3)) { PUT(' '); j += 2; }
                else PUT((char)p[j]);
            }
        }
        if (o > before) at_start = 0;
    }
#undef PUT
    return o;
}

int64_t spm_size(const spm_model *m) { return m->n; }
