/* tokenizer: Hugging Face tokenizer.json BPE — load, encode, decode, streaming decode.
 * Semantics follow huggingface/tokenizers (AddedVocabulary, normalizers, pre_tokenizers,
 * models/bpe, processors, decoders); comments name the reference behaviour where it is odd. */
#include "core/tokenizer.h"

#include <errno.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <uninorm.h>

#define METASPACE_CHAR "\xE2\x96\x81" /* U+2581 "▁" */
#define TOK_MAX_ID (1 << 24) /* ids beyond 16M are refused as "out of range" */

#define SUPPORTED_MODELS "BPE"
#define SUPPORTED_NORMALIZERS "Sequence, Prepend, Replace, NFC, NFD, NFKC, NFKD"
#define SUPPORTED_PRETOKENIZERS "Sequence, Split, ByteLevel, Metaspace"
#define SUPPORTED_PROCESSORS "TemplateProcessing, ByteLevel, RobertaProcessing, BertProcessing, Sequence"
#define SUPPORTED_DECODERS "ByteLevel, Metaspace, Sequence of Replace/Metaspace/Strip + ByteFallback + Fuse + Strip"

/* GPT-2's pre-tokenizer regex, used by ByteLevel with use_regex. */
static const char GPT2_REGEX[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

/* ---------------------------------------------------------------- small containers */

typedef struct { char *b; size_t n, cap; } sbuf;     /* growable bytes */
typedef struct { int *v; size_t n, cap; } ivec;      /* growable ints */

static int sbuf_reserve(sbuf *s, size_t extra)
{
    if (s->n + extra + 1 <= s->cap) return 0;
    size_t cap = s->cap ? s->cap : 64;
    while (cap < s->n + extra + 1) cap *= 2;
    char *b = realloc(s->b, cap);
    if (!b) return -1;
    s->b = b;
    s->cap = cap;
    return 0;
}

static int sbuf_put(sbuf *s, const void *p, size_t n)
{
    if (sbuf_reserve(s, n)) return -1;
    if (n) memcpy(s->b + s->n, p, n);
    s->n += n;
    s->b[s->n] = '\0';
    return 0;
}

static int ivec_push(ivec *v, int x)
{
    if (v->n == v->cap) {
        size_t cap = v->cap ? v->cap * 2 : 64;
        int *p = realloc(v->v, cap * sizeof *p);
        if (!p) return -1;
        v->v = p;
        v->cap = cap;
    }
    v->v[v->n++] = x;
    return 0;
}

static uint64_t hash_bytes(const void *p, size_t n)
{
    const unsigned char *s = p;
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < n; i++) h = (h ^ s[i]) * 1099511628211ULL;
    return h ^ (h >> 29);
}

/* String → id, open addressing; keys borrowed from the tokenizer's token table. */
typedef struct { const char *s; uint32_t len; int32_t id; } smap_ent;
typedef struct { smap_ent *e; size_t mask, n; } smap;

static int smap_init(smap *m, size_t expected)
{
    size_t cap = 16;
    while (cap < expected * 2 + 1) cap *= 2;
    m->e = calloc(cap, sizeof *m->e);
    m->mask = cap - 1;
    m->n = 0;
    return m->e ? 0 : -1;
}

static int smap_get(const smap *m, const char *s, size_t len)
{
    if (!m->e) return -1;
    for (size_t i = hash_bytes(s, len) & m->mask;; i = (i + 1) & m->mask) {
        const smap_ent *e = &m->e[i];
        if (!e->s) return -1;
        if (e->len == len && memcmp(e->s, s, len) == 0) return e->id;
    }
}

/* Inserts or replaces (the last definition wins, as in a JSON object / Rust HashMap). */
static void smap_put(smap *m, const char *s, size_t len, int id)
{
    for (size_t i = hash_bytes(s, len) & m->mask;; i = (i + 1) & m->mask) {
        smap_ent *e = &m->e[i];
        if (!e->s) {
            e->s = s;
            e->len = (uint32_t)len;
            e->id = id;
            m->n++;
            return;
        }
        if (e->len == len && memcmp(e->s, s, len) == 0) {
            e->id = id;
            return;
        }
    }
}

/* (left id, right id) → (rank, merged id). */
typedef struct { uint64_t key; int32_t rank, id; } mmap_ent;
typedef struct { mmap_ent *e; size_t mask; } mmap_t;
#define MMAP_EMPTY UINT64_MAX

static uint64_t mix64(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    return x;
}

static const mmap_ent *mmap_get(const mmap_t *m, int a, int b)
{
    uint64_t key = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    for (size_t i = mix64(key) & m->mask;; i = (i + 1) & m->mask) {
        const mmap_ent *e = &m->e[i];
        if (e->key == key) return e;
        if (e->key == MMAP_EMPTY) return NULL;
    }
}

static void mmap_put(mmap_t *m, int a, int b, int rank, int id)
{
    uint64_t key = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    for (size_t i = mix64(key) & m->mask;; i = (i + 1) & m->mask) {
        mmap_ent *e = &m->e[i];
        if (e->key == key || e->key == MMAP_EMPTY) {
            e->key = key;
            e->rank = rank;
            e->id = id;
            return;
        }
    }
}

/* ---------------------------------------------------------------- UTF-8 */

/* Classifies the sequence at s[0..n): >0 its length if well-formed; 0 if ill-formed, with
 * *sub = length of its maximal subpart (>= 1, the bytes one U+FFFD replaces, as Rust's
 * from_utf8_lossy does); -1 if it is a well-formed but truncated prefix. */
static int utf8_seq(const unsigned char *s, size_t n, size_t *sub)
{
    unsigned c = s[0], lo = 0x80, hi = 0xBF;
    int need;
    if (c < 0x80) return 1;
    if (c >= 0xC2 && c <= 0xDF) need = 1;
    else if (c == 0xE0) { need = 2; lo = 0xA0; }
    else if ((c >= 0xE1 && c <= 0xEC) || c == 0xEE || c == 0xEF) need = 2;
    else if (c == 0xED) { need = 2; hi = 0x9F; }
    else if (c == 0xF0) { need = 3; lo = 0x90; }
    else if (c >= 0xF1 && c <= 0xF3) need = 3;
    else if (c == 0xF4) { need = 3; hi = 0x8F; }
    else { *sub = 1; return 0; }
    for (int i = 1; i <= need; i++) {
        if ((size_t)i >= n) return -1;
        if (s[i] < lo || s[i] > hi) { *sub = (size_t)i; return 0; }
        lo = 0x80;
        hi = 0xBF;
    }
    return need + 1;
}

/* Offset of the first ill-formed byte of s[0..n), or n if it is valid UTF-8. */
static size_t utf8_invalid_at(const char *s, size_t n)
{
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0, sub;
    while (i < n) {
        if (u[i] < 0x80) { i++; continue; }
        int k = utf8_seq(u + i, n - i, &sub);
        if (k <= 0) return i;
        i += (size_t)k;
    }
    return n;
}

static const char FFFD[] = "\xEF\xBF\xBD";

/* Appends s[0..n) to out, ill-formed parts replaced by U+FFFD like from_utf8_lossy. When
 * !final a trailing truncated sequence is left; returns the number of bytes consumed. */
static int utf8_lossy(sbuf *out, const unsigned char *s, size_t n, int final, size_t *used)
{
    size_t i = 0, sub;
    while (i < n) {
        int k = utf8_seq(s + i, n - i, &sub);
        if (k > 0) {
            if (sbuf_put(out, s + i, (size_t)k)) return -1;
            i += (size_t)k;
        } else if (k == 0) {
            if (sbuf_put(out, FFFD, 3)) return -1;
            i += sub;
        } else {
            if (!final) break;
            if (sbuf_put(out, FFFD, 3)) return -1;
            i = n;
        }
    }
    *used = i;
    return 0;
}

static size_t utf8_len1(unsigned char c)
{
    return c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
}

static uint32_t utf8_cp(const unsigned char *s, size_t *k)
{
    *k = utf8_len1(s[0]);
    switch (*k) {
    case 1: return s[0];
    case 2: return ((uint32_t)(s[0] & 0x1F) << 6) | (s[1] & 0x3F);
    case 3: return ((uint32_t)(s[0] & 0x0F) << 12) | ((uint32_t)(s[1] & 0x3F) << 6) | (s[2] & 0x3F);
    default:
        return ((uint32_t)(s[0] & 0x07) << 18) | ((uint32_t)(s[1] & 0x3F) << 12) |
               ((uint32_t)(s[2] & 0x3F) << 6) | (s[3] & 0x3F);
    }
}

static size_t utf8_put(char *o, uint32_t cp)
{
    if (cp < 0x80) { o[0] = (char)cp; return 1; }
    if (cp < 0x800) { o[0] = (char)(0xC0 | (cp >> 6)); o[1] = (char)(0x80 | (cp & 0x3F)); return 2; }
    if (cp < 0x10000) {
        o[0] = (char)(0xE0 | (cp >> 12));
        o[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        o[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (char)(0xF0 | (cp >> 18));
    o[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    o[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    o[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* Rust's char::is_whitespace (Unicode White_Space). */
static int cp_is_space(uint32_t c)
{
    return (c >= 9 && c <= 13) || c == 32 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F ||
           c == 0x205F || c == 0x3000;
}

/* Approximates Rust's char::is_alphanumeric for single_word: ASCII alnum and '_' exactly,
 * every non-ASCII non-space character counted as a word character. */
static int cp_is_word(uint32_t c)
{
    if (c < 0x80) return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
    return !cp_is_space(c);
}

/* ---------------------------------------------------------------- the tokenizer */

enum { NORM_PREPEND, NORM_REPLACE, NORM_NFC, NORM_NFD, NORM_NFKC, NORM_NFKD };
typedef struct {
    int type;
    char *a; size_t alen;     /* Prepend text / Replace string pattern */
    char *b; size_t blen;     /* Replace content */
    pcre2_code *re;           /* Replace regex pattern, or NULL */
} norm_step;

enum { PRE_SPLIT, PRE_BYTELEVEL, PRE_METASPACE };
enum { SPLIT_REMOVED, SPLIT_ISOLATED, SPLIT_MERGED_PREV, SPLIT_MERGED_NEXT, SPLIT_CONTIGUOUS };
enum { PREPEND_NEVER, PREPEND_FIRST, PREPEND_ALWAYS };
typedef struct {
    int type;
    pcre2_code *re;           /* Split / ByteLevel use_regex */
    char *lit; size_t litlen; /* Split String pattern (matched literally) */
    int behavior, invert;
    int add_prefix_space;
    char repl[8]; size_t repl_len; /* Metaspace replacement, UTF-8 */
    int prepend, split;
} pre_step;

typedef struct {
    char *s; size_t len;       /* content as matched and decoded: for normalized tokens, the
                                * content passed through the normalizer (as the reference) */
    char *orig;                /* content as written in the file (tokenizer_token_id) */
    int id;
    int special, lstrip, rstrip, single_word, normalized;
} added_tok;

enum { DOP_REPLACE, DOP_METASPACE, DOP_STRIP };
typedef struct {
    int type;
    char *from, *to; size_t flen, tlen;   /* Replace; Metaspace: from = replacement */
    int strip_first;                      /* Metaspace: prepend_scheme != never */
    char *content; size_t clen; int start, stop; /* Strip */
} dec_op;

enum { DEC_JOIN, DEC_BYTELEVEL, DEC_CHAIN };

struct tokenizer {
    int n_ids;                 /* max id + 1 */
    const char **id_tok;       /* [n_ids] token text for decode (added content wins), or NULL */
    uint32_t *id_len;          /* [n_ids] */
    unsigned char *id_special; /* [n_ids] 1 for special added tokens */
    char **model_tok;          /* [n_ids] model vocab strings (owned) or NULL */
    smap vocab;                /* model vocab: string → id */
    smap added_map;            /* added token content → id */
    mmap_t merges;

    /* BPE options */
    int unk_id, fuse_unk, byte_fallback, ignore_merges;
    char *cs_prefix; size_t cs_prefix_len;   /* continuing_subword_prefix, or NULL */
    char *eow_suffix; size_t eow_suffix_len; /* end_of_word_suffix, or NULL */
    int byte_tok[256];         /* id of "<0xNN>" or -1 (byte_fallback) */
    /* 1 when no vocab token has "▁" right after a non-"▁" character (and "▁" itself is in the
     * vocab): then no merge can ever span such a point, and a long word (Llama 2 has no
     * pre-tokenizer: a whole paragraph is one word) is cut there into independent words
     * without changing the result, keeping the merge heap small. */
    int cut_metaspace;

    added_tok *added; size_t n_added;
    /* Added tokens by first byte, longest first, for leftmost-longest matching. Two sets:
     * matched on raw text (normalized == false) and on normalized text. */
    int *by_byte[2][256]; int n_by_byte[2][256];
    int has_added[2];

    norm_step *norm; size_t n_norm;
    pre_step *pre; size_t n_pre;
    int byte_level;            /* pieces are mapped through bytes_to_unicode before BPE */
    char bl_char[256][3]; unsigned char bl_len[256]; /* byte → its byte-level char */
    int bl_id[256];            /* vocab id of that char, or -1 */
    int bl_rev[324];           /* byte-level code point → byte, or -1 */

    int *tmpl_pre; size_t n_tmpl_pre;    /* ids added before the sequence (add_special) */
    int *tmpl_post; size_t n_tmpl_post;  /* ids added after */

    int dec_type;
    dec_op *dops; size_t n_dops;         /* per-token ops (DEC_CHAIN), before ByteFallback */
    int dec_byte_fallback;
    int dec_fstrip;                      /* Strip after Fuse: on the whole text */
    char dec_fcontent[8]; size_t dec_fclen; int dec_fstart, dec_fstop;

    int bos_id, eos_id;
};

static void *xcalloc(size_t n, size_t sz) { return calloc(n ? n : 1, sz); }

static char *xstrndup(const char *s, size_t n)
{
    char *p = malloc(n + 1);
    if (!p) return NULL;
    memcpy(p, s, n);
    p[n] = '\0';
    return p;
}

void tokenizer_free(tokenizer *t)
{
    if (!t) return;
    if (t->model_tok)
        for (int i = 0; i < t->n_ids; i++) free(t->model_tok[i]);
    free(t->model_tok);
    free(t->id_tok);
    free(t->id_len);
    free(t->id_special);
    free(t->vocab.e);
    free(t->added_map.e);
    free(t->merges.e);
    free(t->cs_prefix);
    free(t->eow_suffix);
    for (size_t i = 0; i < t->n_added; i++) {
        free(t->added[i].s);
        free(t->added[i].orig);
    }
    free(t->added);
    for (int k = 0; k < 2; k++)
        for (int b = 0; b < 256; b++) free(t->by_byte[k][b]);
    for (size_t i = 0; i < t->n_norm; i++) {
        free(t->norm[i].a);
        free(t->norm[i].b);
        pcre2_code_free(t->norm[i].re);
    }
    free(t->norm);
    for (size_t i = 0; i < t->n_pre; i++) {
        pcre2_code_free(t->pre[i].re);
        free(t->pre[i].lit);
    }
    free(t->pre);
    free(t->tmpl_pre);
    free(t->tmpl_post);
    for (size_t i = 0; i < t->n_dops; i++) {
        free(t->dops[i].from);
        free(t->dops[i].to);
        free(t->dops[i].content);
    }
    free(t->dops);
    free(t);
}

/* ---------------------------------------------------------------- loading helpers */

static const char *jstr(json_t *o, const char *key)
{
    json_t *v = json_object_get(o, key);
    return json_is_string(v) ? json_string_value(v) : NULL;
}

static int jbool(json_t *o, const char *key, int dflt)
{
    json_t *v = json_object_get(o, key);
    return json_is_boolean(v) ? json_is_true(v) : dflt;
}

static pcre2_code *regex_compile(const char *pat, size_t len, const char *what, lr_error *err)
{
    int ec;
    PCRE2_SIZE off;
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)pat, len, PCRE2_UTF | PCRE2_UCP, &ec, &off, NULL);
    if (!re) {
        PCRE2_UCHAR msg[160];
        pcre2_get_error_message(ec, msg, sizeof msg);
        lr_error_set(err, LR_EINVAL, "%s: regex does not compile at offset %zu: %s", what,
                     (size_t)off, (char *)msg);
        return NULL;
    }
    pcre2_jit_compile(re, PCRE2_JIT_COMPLETE); /* best effort: falls back to the interpreter */
    return re;
}

/* A pattern object {"String": s} or {"Regex": r}. Regex → *re; String → *lit. */
static int parse_pattern(json_t *p, const char *what, pcre2_code **re, char **lit, size_t *litlen,
                         lr_error *err)
{
    const char *s;
    if ((s = jstr(p, "Regex"))) {
        *re = regex_compile(s, json_string_length(json_object_get(p, "Regex")), what, err);
        return *re ? 0 : LR_EINVAL;
    }
    if ((s = jstr(p, "String"))) {
        *litlen = json_string_length(json_object_get(p, "String"));
        *lit = xstrndup(s, *litlen);
        return *lit ? 0 : lr_error_set(err, LR_ENOMEM, "%s: out of memory", what);
    }
    return lr_error_set(err, LR_EINVAL, "%s: pattern must be {\"String\": ...} or {\"Regex\": ...}", what);
}

static int parse_normalizer(tokenizer *t, json_t *n, lr_error *err)
{
    const char *type = jstr(n, "type");
    if (!type) return lr_error_set(err, LR_EINVAL, "normalizer has no \"type\"");
    if (!strcmp(type, "Sequence")) {
        json_t *list = json_object_get(n, "normalizers");
        size_t i;
        json_t *v;
        if (!json_is_array(list)) return lr_error_set(err, LR_EINVAL, "normalizer Sequence without \"normalizers\" array");
        json_array_foreach(list, i, v) {
            int rc = parse_normalizer(t, v, err);
            if (rc) return rc;
        }
        return 0;
    }
    norm_step st = {0};
    if (!strcmp(type, "Prepend")) {
        const char *p = jstr(n, "prepend");
        if (!p) return lr_error_set(err, LR_EINVAL, "normalizer Prepend without \"prepend\" string");
        st.type = NORM_PREPEND;
        st.alen = strlen(p);
        if (!(st.a = xstrndup(p, st.alen))) goto nomem;
    } else if (!strcmp(type, "Replace")) {
        const char *c = jstr(n, "content");
        if (!c) return lr_error_set(err, LR_EINVAL, "normalizer Replace without \"content\" string");
        st.type = NORM_REPLACE;
        int rc = parse_pattern(json_object_get(n, "pattern"), "normalizer Replace", &st.re, &st.a, &st.alen, err);
        if (rc) return rc;
        st.blen = strlen(c);
        if (!(st.b = xstrndup(c, st.blen))) goto nomem;
    } else if (!strcmp(type, "NFC")) st.type = NORM_NFC;
    else if (!strcmp(type, "NFD")) st.type = NORM_NFD;
    else if (!strcmp(type, "NFKC")) st.type = NORM_NFKC;
    else if (!strcmp(type, "NFKD")) st.type = NORM_NFKD;
    else
        return lr_error_set(err, LR_ENOTSUP, "normalizer type '%s' is not supported (supported: %s)",
                            type, SUPPORTED_NORMALIZERS);
    norm_step *p = realloc(t->norm, (t->n_norm + 1) * sizeof *p);
    if (!p) goto nomem;
    t->norm = p;
    t->norm[t->n_norm++] = st;
    return 0;
nomem:
    free(st.a);
    free(st.b);
    pcre2_code_free(st.re);
    return lr_error_set(err, LR_ENOMEM, "normalizer: out of memory");
}

static int parse_pretok(tokenizer *t, json_t *n, lr_error *err)
{
    const char *type = jstr(n, "type");
    if (!type) return lr_error_set(err, LR_EINVAL, "pre_tokenizer has no \"type\"");
    if (!strcmp(type, "Sequence")) {
        json_t *list = json_object_get(n, "pretokenizers");
        size_t i;
        json_t *v;
        if (!json_is_array(list)) return lr_error_set(err, LR_EINVAL, "pre_tokenizer Sequence without \"pretokenizers\" array");
        json_array_foreach(list, i, v) {
            int rc = parse_pretok(t, v, err);
            if (rc) return rc;
        }
        return 0;
    }
    if (t->byte_level)
        return lr_error_set(err, LR_ENOTSUP, "pre_tokenizer '%s' after ByteLevel is not supported (ByteLevel must come last)", type);
    pre_step st = {0};
    if (!strcmp(type, "Split")) {
        static const char *beh[] = {"Removed", "Isolated", "MergedWithPrevious", "MergedWithNext", "Contiguous"};
        const char *b = jstr(n, "behavior");
        st.type = PRE_SPLIT;
        st.behavior = -1;
        for (int i = 0; b && i < 5; i++)
            if (!strcmp(b, beh[i])) st.behavior = i;
        if (st.behavior < 0)
            return lr_error_set(err, LR_EINVAL, "pre_tokenizer Split: behavior '%s' unknown (Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous)", b ? b : "(missing)");
        st.invert = jbool(n, "invert", 0);
        int rc = parse_pattern(json_object_get(n, "pattern"), "pre_tokenizer Split", &st.re, &st.lit, &st.litlen, err);
        if (rc) return rc;
    } else if (!strcmp(type, "ByteLevel")) {
        st.type = PRE_BYTELEVEL;
        st.add_prefix_space = jbool(n, "add_prefix_space", 1);
        if (jbool(n, "use_regex", 1) && !(st.re = regex_compile(GPT2_REGEX, sizeof GPT2_REGEX - 1, "ByteLevel", err)))
            return LR_EINVAL;
        t->byte_level = 1;
    } else if (!strcmp(type, "Metaspace")) {
        const char *r = jstr(n, "replacement");
        const char *ps = jstr(n, "prepend_scheme");
        st.type = PRE_METASPACE;
        if (!r || !*r || strlen(r) != utf8_len1((unsigned char)r[0]) || strlen(r) > 4)
            return lr_error_set(err, LR_EINVAL, "pre_tokenizer Metaspace: \"replacement\" must be one character");
        st.repl_len = strlen(r);
        memcpy(st.repl, r, st.repl_len);
        if (ps) {
            if (!strcmp(ps, "first")) st.prepend = PREPEND_FIRST;
            else if (!strcmp(ps, "always")) st.prepend = PREPEND_ALWAYS;
            else if (!strcmp(ps, "never")) st.prepend = PREPEND_NEVER;
            else return lr_error_set(err, LR_EINVAL, "pre_tokenizer Metaspace: prepend_scheme '%s' unknown (first, always, never)", ps);
        } else {
            st.prepend = jbool(n, "add_prefix_space", 1) ? PREPEND_ALWAYS : PREPEND_NEVER;
        }
        st.split = jbool(n, "split", 1);
    } else {
        return lr_error_set(err, LR_ENOTSUP, "pre_tokenizer type '%s' is not supported (supported: %s)",
                            type, SUPPORTED_PRETOKENIZERS);
    }
    pre_step *p = realloc(t->pre, (t->n_pre + 1) * sizeof *p);
    if (!p) {
        pcre2_code_free(st.re);
        free(st.lit);
        return lr_error_set(err, LR_ENOMEM, "pre_tokenizer: out of memory");
    }
    t->pre = p;
    t->pre[t->n_pre++] = st;
    return 0;
}

static int ids_append(int **dst, size_t *n, const int *src, size_t k, int front)
{
    if (k == 0) return 0;
    int *p = realloc(*dst, (*n + k + 1) * sizeof *p);
    if (!p) return -1;
    if (front) {
        memmove(p + k, p, *n * sizeof *p);
        memcpy(p, src, k * sizeof *p);
    } else {
        memcpy(p + *n, src, k * sizeof *p);
    }
    *dst = p;
    *n += k;
    return 0;
}

/* A [token, id] pair of RobertaProcessing / BertProcessing. */
static int pair_id(tokenizer *t, json_t *pp, const char *what, int *id, lr_error *err)
{
    json_t *v = json_array_get(pp, 1);
    if (!json_is_array(pp) || !json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) >= t->n_ids)
        return lr_error_set(err, LR_EINVAL, "post_processor: \"%s\" must be [token, id] with an id in the vocab", what);
    *id = (int)json_integer_value(v);
    return 0;
}

static int parse_processor(tokenizer *t, json_t *n, lr_error *err)
{
    const char *type = jstr(n, "type");
    if (!type) return lr_error_set(err, LR_EINVAL, "post_processor has no \"type\"");
    if (!strcmp(type, "Sequence")) {
        json_t *list = json_object_get(n, "processors");
        size_t i;
        json_t *v;
        if (!json_is_array(list)) return lr_error_set(err, LR_EINVAL, "post_processor Sequence without \"processors\" array");
        json_array_foreach(list, i, v) {
            int rc = parse_processor(t, v, err);
            if (rc) return rc;
        }
        return 0;
    }
    if (!strcmp(type, "ByteLevel")) return 0; /* only trims offsets; ids unchanged */
    if (!strcmp(type, "RobertaProcessing") || !strcmp(type, "BertProcessing")) {
        int cls = -1, sep = -1;
        if (pair_id(t, json_object_get(n, "cls"), "cls", &cls, err) || pair_id(t, json_object_get(n, "sep"), "sep", &sep, err))
            return LR_EINVAL;
        if (ids_append(&t->tmpl_pre, &t->n_tmpl_pre, &cls, 1, 1) || ids_append(&t->tmpl_post, &t->n_tmpl_post, &sep, 1, 0))
            return lr_error_set(err, LR_ENOMEM, "post_processor: out of memory");
        return 0;
    }
    if (strcmp(type, "TemplateProcessing"))
        return lr_error_set(err, LR_ENOTSUP, "post_processor type '%s' is not supported (supported: %s)",
                            type, SUPPORTED_PROCESSORS);
    json_t *single = json_object_get(n, "single"), *specials = json_object_get(n, "special_tokens");
    size_t i;
    json_t *item;
    int *pre = NULL, *post = NULL, seen_seq = 0, rc = 0;
    size_t npre = 0, npost = 0;
    if (!json_is_array(single)) return lr_error_set(err, LR_EINVAL, "post_processor TemplateProcessing without \"single\" array");
    json_array_foreach(single, i, item) {
        json_t *sp = json_object_get(item, "SpecialToken");
        if (json_object_get(item, "Sequence")) {
            if (seen_seq) { rc = lr_error_set(err, LR_ENOTSUP, "post_processor TemplateProcessing: \"single\" names the sequence twice"); goto out; }
            seen_seq = 1;
            continue;
        }
        const char *name = jstr(sp, "id");
        json_t *def = name ? json_object_get(json_object_get(specials, name), "ids") : NULL;
        size_t k;
        json_t *idv;
        if (!json_is_array(def)) {
            rc = lr_error_set(err, LR_EINVAL, "post_processor TemplateProcessing: special token '%s' not in \"special_tokens\"", name ? name : "(missing)");
            goto out;
        }
        json_array_foreach(def, k, idv) {
            json_int_t v = json_integer_value(idv);
            if (!json_is_integer(idv) || v < 0 || v >= t->n_ids) {
                rc = lr_error_set(err, LR_EINVAL, "post_processor TemplateProcessing: special token '%s' has an id outside the vocab", name);
                goto out;
            }
            int id = (int)v;
            if (ids_append(seen_seq ? &post : &pre, seen_seq ? &npost : &npre, &id, 1, 0)) {
                rc = lr_error_set(err, LR_ENOMEM, "post_processor: out of memory");
                goto out;
            }
        }
    }
    /* Each processor wraps what the previous one produced. */
    if (ids_append(&t->tmpl_pre, &t->n_tmpl_pre, pre, npre, 1) || ids_append(&t->tmpl_post, &t->n_tmpl_post, post, npost, 0))
        rc = lr_error_set(err, LR_ENOMEM, "post_processor: out of memory");
out:
    free(pre);
    free(post);
    return rc;
}

static int dop_add(tokenizer *t, dec_op *op, lr_error *err)
{
    dec_op *p = realloc(t->dops, (t->n_dops + 1) * sizeof *p);
    if (!p) {
        free(op->from);
        free(op->to);
        free(op->content);
        return lr_error_set(err, LR_ENOMEM, "decoder: out of memory");
    }
    t->dops = p;
    t->dops[t->n_dops++] = *op;
    return 0;
}

/* One decoder of a chain. *stage: 0 per-token ops, 1 after ByteFallback, 2 after Fuse, 3 after
 * the final Strip. */
static int parse_chain_decoder(tokenizer *t, json_t *d, int *stage, lr_error *err)
{
    const char *type = jstr(d, "type");
    dec_op op = {0};
    if (!type) return lr_error_set(err, LR_EINVAL, "decoder has no \"type\"");
    if (!strcmp(type, "ByteFallback")) {
        if (*stage > 0) goto order;
        t->dec_byte_fallback = 1;
        *stage = 1;
        return 0;
    }
    if (!strcmp(type, "Fuse")) {
        if (*stage > 1) goto order;
        *stage = 2;
        return 0;
    }
    if (!strcmp(type, "Strip")) {
        const char *c = jstr(d, "content");
        json_t *st = json_object_get(d, "start"), *sp = json_object_get(d, "stop");
        if (!c || utf8_len1((unsigned char)c[0]) != strlen(c) || !json_is_integer(st) || !json_is_integer(sp) ||
            json_integer_value(st) < 0 || json_integer_value(sp) < 0 || json_integer_value(st) > 1000 || json_integer_value(sp) > 1000)
            return lr_error_set(err, LR_EINVAL, "decoder Strip needs a one-character \"content\" and small \"start\"/\"stop\" counts");
        if (*stage == 2) {
            t->dec_fstrip = 1;
            t->dec_fclen = strlen(c);
            memcpy(t->dec_fcontent, c, t->dec_fclen);
            t->dec_fstart = (int)json_integer_value(st);
            t->dec_fstop = (int)json_integer_value(sp);
            *stage = 3;
            return 0;
        }
        if (*stage > 0) goto order;
        op.type = DOP_STRIP;
        op.clen = strlen(c);
        op.start = (int)json_integer_value(st);
        op.stop = (int)json_integer_value(sp);
        if (!(op.content = xstrndup(c, op.clen))) return lr_error_set(err, LR_ENOMEM, "decoder: out of memory");
        return dop_add(t, &op, err);
    }
    if (!strcmp(type, "Replace")) {
        json_t *pat = json_object_get(d, "pattern");
        const char *from = jstr(pat, "String"), *to = jstr(d, "content");
        if (*stage > 0) goto order;
        if (!from || !*from || !to)
            return lr_error_set(err, LR_ENOTSUP, "decoder Replace: only a non-empty {\"String\": ...} pattern with a \"content\" string is supported");
        op.type = DOP_REPLACE;
        op.flen = strlen(from);
        op.tlen = strlen(to);
        op.from = xstrndup(from, op.flen);
        op.to = xstrndup(to, op.tlen);
        if (!op.from || !op.to) { free(op.from); free(op.to); return lr_error_set(err, LR_ENOMEM, "decoder: out of memory"); }
        return dop_add(t, &op, err);
    }
    if (!strcmp(type, "Metaspace")) {
        const char *r = jstr(d, "replacement"), *ps = jstr(d, "prepend_scheme");
        if (*stage > 0) goto order;
        if (!r || !*r || utf8_len1((unsigned char)r[0]) != strlen(r))
            return lr_error_set(err, LR_EINVAL, "decoder Metaspace: \"replacement\" must be one character");
        op.type = DOP_METASPACE;
        op.flen = strlen(r);
        op.strip_first = ps ? strcmp(ps, "never") != 0 : jbool(d, "add_prefix_space", 1);
        if (!(op.from = xstrndup(r, op.flen))) return lr_error_set(err, LR_ENOMEM, "decoder: out of memory");
        return dop_add(t, &op, err);
    }
    return lr_error_set(err, LR_ENOTSUP, "decoder type '%s' is not supported (supported: %s)", type, SUPPORTED_DECODERS);
order:
    return lr_error_set(err, LR_ENOTSUP, "decoder Sequence: '%s' at this position is not supported (supported: %s)",
                        type, SUPPORTED_DECODERS);
}

static int parse_decoder(tokenizer *t, json_t *d, lr_error *err)
{
    const char *type = jstr(d, "type");
    if (!type) return lr_error_set(err, LR_EINVAL, "decoder has no \"type\"");
    json_t *list = json_object_get(d, "decoders");
    if (!strcmp(type, "ByteLevel") ||
        (!strcmp(type, "Sequence") && json_array_size(list) == 1 &&
         jstr(json_array_get(list, 0), "type") && !strcmp(jstr(json_array_get(list, 0), "type"), "ByteLevel"))) {
        t->dec_type = DEC_BYTELEVEL;
        return 0;
    }
    t->dec_type = DEC_CHAIN;
    int stage = 0;
    if (!strcmp(type, "Sequence")) {
        size_t i;
        json_t *v;
        if (!json_is_array(list)) return lr_error_set(err, LR_EINVAL, "decoder Sequence without \"decoders\" array");
        json_array_foreach(list, i, v) {
            int rc = parse_chain_decoder(t, v, &stage, err);
            if (rc) return rc;
        }
        return 0;
    }
    return parse_chain_decoder(t, d, &stage, err);
}

/* GPT-2's bytes_to_unicode: printable Latin-1 bytes map to themselves, the rest to 256+n. */
static void byte_level_tables(tokenizer *t)
{
    int n = 0;
    for (int i = 0; i < 324; i++) t->bl_rev[i] = -1;
    for (int b = 0; b < 256; b++) {
        int keep = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
        uint32_t cp = keep ? (uint32_t)b : (uint32_t)(256 + n++);
        t->bl_len[b] = (unsigned char)utf8_put(t->bl_char[b], cp);
        t->bl_rev[cp] = b;
        t->bl_id[b] = smap_get(&t->vocab, t->bl_char[b], t->bl_len[b]);
    }
}

static int cmp_added_len(const void *a, const void *b, void *ctx)
{
    const added_tok *v = ctx;
    size_t la = v[*(const int *)a].len, lb = v[*(const int *)b].len;
    return la < lb ? 1 : la > lb ? -1 : 0;
}

static int load_vocab(tokenizer *t, json_t *model, json_t *added, lr_error *err)
{
    json_t *vocab = json_object_get(model, "vocab");
    const char *key;
    json_t *v;
    size_t i;
    int max_id = -1;
    if (!json_is_object(vocab)) return lr_error_set(err, LR_EINVAL, "model has no \"vocab\" object");
    json_object_foreach(vocab, key, v) {
        json_int_t id = json_integer_value(v);
        if (!json_is_integer(v) || id < 0 || id >= TOK_MAX_ID)
            return lr_error_set(err, LR_EINVAL, "vocab token '%.60s' has id %s outside [0, %d)", key,
                                json_is_integer(v) ? (id < 0 ? "< 0" : "too large") : "that is not an integer", TOK_MAX_ID);
        if (id > max_id) max_id = (int)id;
    }
    if (!json_is_array(added) && added && !json_is_null(added))
        return lr_error_set(err, LR_EINVAL, "\"added_tokens\" must be an array");
    json_array_foreach(added, i, v) {
        json_t *idv = json_object_get(v, "id");
        json_int_t id = json_integer_value(idv);
        if (!json_is_integer(idv) || id < 0 || id >= TOK_MAX_ID || !jstr(v, "content"))
            return lr_error_set(err, LR_EINVAL, "added_tokens[%zu] needs \"content\" and an \"id\" in [0, %d)", i, TOK_MAX_ID);
        if (id > max_id) max_id = (int)id;
    }
    t->n_ids = max_id + 1;
    t->model_tok = xcalloc((size_t)t->n_ids, sizeof *t->model_tok);
    t->id_tok = xcalloc((size_t)t->n_ids, sizeof *t->id_tok);
    t->id_len = xcalloc((size_t)t->n_ids, sizeof *t->id_len);
    t->id_special = xcalloc((size_t)t->n_ids, 1);
    if (!t->model_tok || !t->id_tok || !t->id_len || !t->id_special || smap_init(&t->vocab, json_object_size(vocab)))
        return lr_error_set(err, LR_ENOMEM, "vocab: out of memory");
    json_object_foreach(vocab, key, v) {
        int id = (int)json_integer_value(v);
        size_t len = strlen(key);
        if (t->model_tok[id])
            return lr_error_set(err, LR_EINVAL, "vocab id %d is given to both '%.60s' and '%.60s'", id, t->model_tok[id], key);
        if (!(t->model_tok[id] = xstrndup(key, len))) return lr_error_set(err, LR_ENOMEM, "vocab: out of memory");
        smap_put(&t->vocab, t->model_tok[id], len, id);
        t->id_tok[id] = t->model_tok[id];
        t->id_len[id] = (uint32_t)len;
    }
    /* Added tokens: their content is what decode shows for their id. */
    t->n_added = json_array_size(added);
    t->added = xcalloc(t->n_added, sizeof *t->added);
    if (!t->added || smap_init(&t->added_map, t->n_added)) return lr_error_set(err, LR_ENOMEM, "added_tokens: out of memory");
    json_array_foreach(added, i, v) {
        added_tok *a = &t->added[i];
        json_t *cv = json_object_get(v, "content");
        a->len = json_string_length(cv);
        if (!(a->s = xstrndup(json_string_value(cv), a->len)) || !(a->orig = xstrndup(a->s, a->len)))
            return lr_error_set(err, LR_ENOMEM, "added_tokens: out of memory");
        if (a->len == 0 || utf8_invalid_at(a->s, a->len) != a->len)
            return lr_error_set(err, LR_EINVAL, "added_tokens[%zu]: empty or invalid UTF-8 content", i);
        a->id = (int)json_integer_value(json_object_get(v, "id"));
        a->special = jbool(v, "special", 0);
        a->lstrip = jbool(v, "lstrip", 0);
        a->rstrip = jbool(v, "rstrip", 0);
        a->single_word = jbool(v, "single_word", 0);
        a->normalized = jbool(v, "normalized", !a->special);
        smap_put(&t->added_map, a->orig, a->len, a->id);
        t->id_tok[a->id] = a->s;
        t->id_len[a->id] = (uint32_t)a->len;
        t->id_special[a->id] = (unsigned char)a->special;
    }
    return 0;
}

static int load_merges(tokenizer *t, json_t *model, lr_error *err)
{
    json_t *merges = json_object_get(model, "merges"), *m;
    size_t i, cap = 16, n = json_array_size(merges);
    char *buf = NULL;
    size_t bufcap = 0;
    int rc = 0;
    if (merges && !json_is_array(merges)) return lr_error_set(err, LR_EINVAL, "model \"merges\" must be an array");
    while (cap < n * 2 + 1) cap *= 2;
    t->merges.e = malloc(cap * sizeof *t->merges.e);
    if (!t->merges.e) return lr_error_set(err, LR_ENOMEM, "merges: out of memory");
    memset(t->merges.e, 0xff, cap * sizeof *t->merges.e);
    t->merges.mask = cap - 1;
    json_array_foreach(merges, i, m) {
        const char *a, *b;
        size_t alen, blen;
        if (json_is_string(m)) {
            a = json_string_value(m);
            const char *sp = strchr(a, ' ');
            if (!sp || strchr(sp + 1, ' ') || sp == a || !sp[1]) {
                rc = lr_error_set(err, LR_EINVAL, "merges[%zu] '%.60s' is not \"left right\" (two tokens, one space)", i, a);
                goto out;
            }
            alen = (size_t)(sp - a);
            b = sp + 1;
            blen = strlen(b);
        } else if (json_is_array(m) && json_array_size(m) == 2 && json_is_string(json_array_get(m, 0)) &&
                   json_is_string(json_array_get(m, 1))) {
            a = json_string_value(json_array_get(m, 0));
            b = json_string_value(json_array_get(m, 1));
            alen = json_string_length(json_array_get(m, 0));
            blen = json_string_length(json_array_get(m, 1));
        } else {
            rc = lr_error_set(err, LR_EINVAL, "merges[%zu] is neither \"left right\" nor [\"left\", \"right\"]", i);
            goto out;
        }
        int ia = smap_get(&t->vocab, a, alen), ib = smap_get(&t->vocab, b, blen);
        if (ia < 0 || ib < 0) {
            rc = lr_error_set(err, LR_EINVAL, "merges[%zu]: token '%.*s' is not in the vocab", i,
                              (int)(ia < 0 ? alen : blen), ia < 0 ? a : b);
            goto out;
        }
        /* The merged token: a + b without b's continuing_subword_prefix. */
        size_t skip = 0;
        if (t->cs_prefix && blen >= t->cs_prefix_len && !memcmp(b, t->cs_prefix, t->cs_prefix_len)) skip = t->cs_prefix_len;
        if (alen + blen > bufcap) {
            bufcap = (alen + blen) * 2 + 64;
            char *nb = realloc(buf, bufcap);
            if (!nb) { rc = lr_error_set(err, LR_ENOMEM, "merges: out of memory"); goto out; }
            buf = nb;
        }
        memcpy(buf, a, alen);
        memcpy(buf + alen, b + skip, blen - skip);
        int id = smap_get(&t->vocab, buf, alen + blen - skip);
        if (id < 0) {
            rc = lr_error_set(err, LR_EINVAL, "merges[%zu]: merged token '%.*s' is not in the vocab", i,
                              (int)(alen + blen - skip), buf);
            goto out;
        }
        mmap_put(&t->merges, ia, ib, (int)i, id);
    }
out:
    free(buf);
    return rc;
}

static int token_in_vocab(const tokenizer *t, const char *s)
{
    int id = smap_get(&t->added_map, s, strlen(s));
    return id >= 0 ? id : smap_get(&t->vocab, s, strlen(s));
}

/* "bos_token": "<s>" or {"content": "<s>", ...} or null. */
static int config_token(const tokenizer *t, json_t *cfg, const char *key)
{
    json_t *v = json_object_get(cfg, key);
    const char *s = json_is_string(v) ? json_string_value(v) : jstr(v, "content");
    return s ? token_in_vocab(t, s) : -1;
}

/* flags: JSON_DECODE_INT_AS_REAL for tokenizer_config.json, whose model_max_length is often
 * 1e30 written as an integer too big for json_int_t. */
static json_t *load_json(const char *path, const char *what, size_t flags, lr_error *err)
{
    json_error_t je;
    FILE *f = fopen(path, "rb");
    if (!f) {
        lr_error_set(err, LR_EIO, "%s '%s': %s", what, path, strerror(errno));
        return NULL;
    }
    json_t *j = json_loadf(f, flags, &je);
    fclose(f);
    if (!j) lr_error_set(err, LR_EINVAL, "%s '%s': invalid JSON at line %d: %s", what, path, je.line, je.text);
    else if (!json_is_object(j)) {
        lr_error_set(err, LR_EINVAL, "%s '%s': top level is not a JSON object", what, path);
        json_decref(j);
        j = NULL;
    }
    return j;
}

typedef struct ectx ectx;
static int normalize(const tokenizer *t, ectx *c, const char *s, size_t n);
static ectx *ectx_new(void);
static void ectx_free(ectx *c);
static const char *ectx_norm(const ectx *c, size_t *n);

/* Normalized added tokens are matched (and decoded) as their normalized content; then every
 * added token is indexed by first byte, longest first, for leftmost-longest matching. */
static int index_added(tokenizer *t, lr_error *err)
{
    ectx *c = NULL;
    for (size_t k = 0; k < t->n_added; k++) {
        added_tok *a = &t->added[k];
        if (!a->normalized || !t->n_norm) continue;
        size_t nl;
        if ((!c && !(c = ectx_new())) || normalize(t, c, a->s, a->len)) goto nomem;
        const char *ns = ectx_norm(c, &nl);
        char *p = xstrndup(ns, nl);
        if (!p) goto nomem;
        free(a->s);
        a->s = p;
        a->len = nl;
    }
    if (c) ectx_free(c);
    free(c);
    c = NULL;
    /* Decode shows an added token's (normalized) content; the last definition of a content wins. */
    for (size_t k = 0; k < t->n_added; k++) {
        added_tok *a = &t->added[k];
        if (smap_get(&t->added_map, a->orig, strlen(a->orig)) != a->id) continue;
        t->id_tok[a->id] = a->s;
        t->id_len[a->id] = (uint32_t)a->len;
    }
    /* Index by first byte, longest first; a later duplicate content replaces an earlier one. */
    for (size_t k = 0; k < t->n_added; k++) {
        added_tok *a = &t->added[k];
        if (a->len == 0 || smap_get(&t->added_map, a->orig, strlen(a->orig)) != a->id) continue;
        int set = a->normalized ? 1 : 0, b = (unsigned char)a->s[0];
        int *p = realloc(t->by_byte[set][b], (size_t)(t->n_by_byte[set][b] + 1) * sizeof *p);
        if (!p) return lr_error_set(err, LR_ENOMEM, "added_tokens: out of memory");
        t->by_byte[set][b] = p;
        p[t->n_by_byte[set][b]++] = (int)k;
        t->has_added[set] = 1;
    }
    for (int s = 0; s < 2; s++)
        for (int b = 0; b < 256; b++)
            if (t->n_by_byte[s][b] > 1)
                qsort_r(t->by_byte[s][b], (size_t)t->n_by_byte[s][b], sizeof(int), cmp_added_len, t->added);
    return 0;
nomem:
    if (c) ectx_free(c);
    free(c);
    return lr_error_set(err, LR_ENOMEM, "added_tokens: out of memory");
}

tokenizer *tokenizer_load_files(const char *tokenizer_json, const char *config_json, lr_error *err)
{
    json_t *root = NULL, *cfg = NULL;
    tokenizer *t = NULL;
    int rc;
    if (!(root = load_json(tokenizer_json, "tokenizer.json", 0, err))) goto fail;
    if (config_json && !(cfg = load_json(config_json, "tokenizer_config.json", JSON_DECODE_INT_AS_REAL, err))) goto fail;
    if (!(t = calloc(1, sizeof *t))) { lr_error_set(err, LR_ENOMEM, "tokenizer: out of memory"); goto fail; }
    t->bos_id = t->eos_id = t->unk_id = -1;

    json_t *model = json_object_get(root, "model");
    if (!json_is_object(model)) {
        lr_error_set(err, LR_EINVAL, "no \"model\" object (is this a Hugging Face tokenizer.json?)");
        goto fail_prefix;
    }
    const char *type = jstr(model, "type");
    if (type ? strcmp(type, "BPE") != 0 : !json_object_get(model, "merges")) {
        lr_error_set(err, LR_ENOTSUP, "model type '%s' is not supported (supported: %s)", type ? type : "(none)", SUPPORTED_MODELS);
        goto fail_prefix;
    }
    json_t *dropout = json_object_get(model, "dropout");
    if (dropout && !json_is_null(dropout) && json_number_value(dropout) != 0.0) {
        lr_error_set(err, LR_ENOTSUP, "BPE dropout is not supported (it makes encoding random)");
        goto fail_prefix;
    }
    const char *p;
    if ((p = jstr(model, "continuing_subword_prefix")) && *p) {
        t->cs_prefix_len = strlen(p);
        if (!(t->cs_prefix = xstrndup(p, t->cs_prefix_len))) goto nomem;
    }
    if ((p = jstr(model, "end_of_word_suffix")) && *p) {
        t->eow_suffix_len = strlen(p);
        if (!(t->eow_suffix = xstrndup(p, t->eow_suffix_len))) goto nomem;
    }
    t->fuse_unk = jbool(model, "fuse_unk", 0);
    t->byte_fallback = jbool(model, "byte_fallback", 0);
    t->ignore_merges = jbool(model, "ignore_merges", 0);
    if ((rc = load_vocab(t, model, json_object_get(root, "added_tokens"), err))) goto fail_prefix;
    if ((p = jstr(model, "unk_token"))) {
        t->unk_id = smap_get(&t->vocab, p, strlen(p));
        if (t->unk_id < 0) { lr_error_set(err, LR_EINVAL, "unk_token '%.60s' is not in the vocab", p); goto fail_prefix; }
    }
    if ((rc = load_merges(t, model, err))) goto fail_prefix;
    for (int b = 0; b < 256; b++) {
        char name[8];
        snprintf(name, sizeof name, "<0x%02X>", b);
        t->byte_tok[b] = smap_get(&t->vocab, name, 6);
    }
    t->cut_metaspace = !t->cs_prefix && !t->eow_suffix && smap_get(&t->vocab, METASPACE_CHAR, 3) >= 0;
    for (int id = 0; t->cut_metaspace && id < t->n_ids; id++) {
        const char *m = t->model_tok[id];
        for (const char *q = m ? strstr(m, METASPACE_CHAR) : NULL; q; q = strstr(q + 3, METASPACE_CHAR))
            if (q > m && (q - m < 3 || memcmp(q - 3, METASPACE_CHAR, 3))) { t->cut_metaspace = 0; break; }
    }

    json_t *n;
    if ((n = json_object_get(root, "normalizer")) && !json_is_null(n) && (rc = parse_normalizer(t, n, err))) goto fail_prefix;
    if ((n = json_object_get(root, "pre_tokenizer")) && !json_is_null(n) && (rc = parse_pretok(t, n, err))) goto fail_prefix;
    byte_level_tables(t);
    if ((rc = index_added(t, err))) goto fail_prefix;
    if ((n = json_object_get(root, "decoder")) && !json_is_null(n)) {
        if ((rc = parse_decoder(t, n, err))) goto fail_prefix;
    } else {
        t->dec_type = DEC_JOIN;
    }

    /* Special tokens: the post_processor when there is one; else tokenizer_config. */
    n = json_object_get(root, "post_processor");
    if (n && !json_is_null(n)) {
        if ((rc = parse_processor(t, n, err))) goto fail_prefix;
    } else if (cfg) {
        int bos = config_token(t, cfg, "bos_token"), eos = config_token(t, cfg, "eos_token");
        if (jbool(cfg, "add_bos_token", 0) && bos >= 0 && ids_append(&t->tmpl_pre, &t->n_tmpl_pre, &bos, 1, 0)) goto nomem;
        if (jbool(cfg, "add_eos_token", 0) && eos >= 0 && ids_append(&t->tmpl_post, &t->n_tmpl_post, &eos, 1, 0)) goto nomem;
    }
    if (cfg) {
        t->bos_id = config_token(t, cfg, "bos_token");
        t->eos_id = config_token(t, cfg, "eos_token");
    } else if (t->n_tmpl_pre > 0) {
        t->bos_id = t->tmpl_pre[0];
    }
    json_decref(root);
    json_decref(cfg);
    return t;
nomem:
    lr_error_set(err, LR_ENOMEM, "out of memory");
fail_prefix:
    lr_error_prefix(err, "tokenizer '%s'", tokenizer_json);
fail:
    json_decref(root);
    json_decref(cfg);
    tokenizer_free(t);
    return NULL;
}

tokenizer *tokenizer_load(const char *dir, lr_error *err)
{
    size_t n = strlen(dir) + 32;
    char *tj = malloc(n), *cj = malloc(n);
    tokenizer *t = NULL;
    if (!tj || !cj) { lr_error_set(err, LR_ENOMEM, "tokenizer: out of memory"); goto out; }
    snprintf(tj, n, "%s/tokenizer.json", dir);
    snprintf(cj, n, "%s/tokenizer_config.json", dir);
    t = tokenizer_load_files(tj, access(cj, F_OK) == 0 ? cj : NULL, err);
out:
    free(tj);
    free(cj);
    return t;
}

/* ---------------------------------------------------------------- encoding */

/* A piece of text on its way to the model: [off, off+len) of a work buffer; first = it starts
 * at offset 0 of the original input (Metaspace prepend_scheme "first"). */
typedef struct { size_t off, len; int first; } piece;
typedef struct { sbuf buf; piece *p; size_t n, cap; } plist;

typedef struct { int c, prev, next, len; } sym;   /* a BPE symbol; len 0 = merged away */
typedef struct { int rank, pos, id; } hent;        /* a candidate merge */

/* Per-call scratch: nothing shared between threads. */
struct ectx {
    pcre2_match_data *md;
    plist a, b;
    sbuf norm, nbuf, word;
    sym *syms; size_t syms_cap;
    hent *heap; size_t heap_cap;
};

static ectx *ectx_new(void)
{
    ectx *c = calloc(1, sizeof *c);
    if (c && !(c->md = pcre2_match_data_create(32, NULL))) {
        free(c);
        c = NULL;
    }
    return c;
}

static const char *ectx_norm(const ectx *c, size_t *n)
{
    *n = c->norm.n;
    return c->norm.b ? c->norm.b : "";
}

static void ectx_free(ectx *c)
{
    pcre2_match_data_free(c->md);
    free(c->a.buf.b); free(c->a.p);
    free(c->b.buf.b); free(c->b.p);
    free(c->norm.b);
    free(c->nbuf.b);
    free(c->word.b);
    free(c->syms);
    free(c->heap);
}

static int plist_add(plist *l, const char *s, size_t len, int first)
{
    if (len == 0) return 0; /* the reference drops empty splits */
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 32;
        piece *p = realloc(l->p, cap * sizeof *p);
        if (!p) return -1;
        l->p = p;
        l->cap = cap;
    }
    size_t off = l->buf.n;
    if (sbuf_put(&l->buf, s, len)) return -1;
    l->p[l->n++] = (piece){off, len, first};
    return 0;
}

/* Matches of re (or literal lit) in s, as (start, end) pairs into *m (count *nm). */
typedef struct { size_t s, e; } span;

static int find_matches(ectx *c, const pcre2_code *re, const char *lit, size_t litlen,
                        const char *s, size_t n, span **m, size_t *nm, size_t *mcap)
{
    size_t pos = 0;
    *nm = 0;
    while (pos <= n) {
        size_t ms, me;
        if (re) {
            int r = pcre2_match(re, (PCRE2_SPTR)s, n, pos, PCRE2_NO_UTF_CHECK, c->md, NULL);
            if (r == PCRE2_ERROR_NOMATCH) break;
            if (r < 0) return -1;
            PCRE2_SIZE *ov = pcre2_get_ovector_pointer(c->md);
            ms = ov[0];
            me = ov[1];
        } else {
            if (litlen == 0 || pos + litlen > n) break;
            const char *f = memmem(s + pos, n - pos, lit, litlen);
            if (!f) break;
            ms = (size_t)(f - s);
            me = ms + litlen;
        }
        if (me == ms) { /* empty match: step one character */
            pos = me < n ? me + utf8_len1((unsigned char)s[me]) : n + 1;
            continue;
        }
        if (*nm == *mcap) {
            size_t cap = *mcap ? *mcap * 2 : 32;
            span *p = realloc(*m, cap * sizeof *p);
            if (!p) return -1;
            *m = p;
            *mcap = cap;
        }
        (*m)[(*nm)++] = (span){ms, me};
        pos = me;
    }
    return 0;
}

/* Split pre-tokenizer on one piece (reference: NormalizedString::split with a behavior). */
static int split_piece(ectx *c, const pre_step *st, const char *s, size_t n, int first, plist *out)
{
    span *m = NULL;
    size_t nm = 0, mcap = 0, i;
    int rc = -1;
    typedef struct { size_t s, e; int match; } seg;
    seg *sg = NULL, *acc = NULL;
    size_t ns = 0, na = 0;
    if (find_matches(c, st->re, st->lit, st->litlen, s, n, &m, &nm, &mcap)) goto out;
    sg = malloc((2 * nm + 2) * sizeof *sg);
    acc = malloc((2 * nm + 2) * sizeof *acc);
    if (!sg || !acc) goto out;
    size_t prev = 0;
    for (i = 0; i < nm; i++) {
        if (m[i].s != prev) sg[ns++] = (seg){prev, m[i].s, 0};
        sg[ns++] = (seg){m[i].s, m[i].e, 1};
        prev = m[i].e;
    }
    if (prev != n) sg[ns++] = (seg){prev, n, 0};
    if (st->invert)
        for (i = 0; i < ns; i++) sg[i].match = !sg[i].match;
    int pm = 0;
    switch (st->behavior) {
    case SPLIT_ISOLATED:
        memcpy(acc, sg, ns * sizeof *sg);
        na = ns;
        break;
    case SPLIT_REMOVED:
        for (i = 0; i < ns; i++)
            if (!sg[i].match) acc[na++] = sg[i];
        break;
    case SPLIT_MERGED_PREV:
        for (i = 0; i < ns; i++) {
            if (sg[i].match && !pm && na) acc[na - 1].e = sg[i].e;
            else acc[na++] = sg[i];
            pm = sg[i].match;
        }
        break;
    case SPLIT_MERGED_NEXT: /* folded from the right, then reversed */
        for (i = ns; i-- > 0;) {
            if (sg[i].match && !pm && na) acc[na - 1].s = sg[i].s;
            else acc[na++] = sg[i];
            pm = sg[i].match;
        }
        for (i = 0; i < na / 2; i++) { seg x = acc[i]; acc[i] = acc[na - 1 - i]; acc[na - 1 - i] = x; }
        break;
    default: /* SPLIT_CONTIGUOUS */
        for (i = 0; i < ns; i++) {
            if (sg[i].match == pm && na) acc[na - 1].e = sg[i].e;
            else acc[na++] = sg[i];
            pm = sg[i].match;
        }
        break;
    }
    for (i = 0; i < na; i++)
        if (plist_add(out, s + acc[i].s, acc[i].e - acc[i].s, first && acc[i].s == 0)) goto out;
    rc = 0;
out:
    free(m);
    free(sg);
    free(acc);
    return rc;
}

/* Runs the pre-tokenizer steps over c->a (in place, using c->b as the other buffer). */
static int pretokenize(const tokenizer *t, ectx *c)
{
    for (size_t k = 0; k < t->n_pre; k++) {
        const pre_step *st = &t->pre[k];
        plist *in = &c->a, *out = &c->b;
        out->n = 0;
        out->buf.n = 0;
        for (size_t i = 0; i < in->n; i++) {
            const char *s = in->buf.b + in->p[i].off;
            size_t n = in->p[i].len;
            int first = in->p[i].first;
            if (st->type == PRE_SPLIT) {
                if (split_piece(c, st, s, n, first, out)) return -1;
            } else if (st->type == PRE_BYTELEVEL) {
                c->word.n = 0;
                if (st->add_prefix_space && s[0] != ' ' && sbuf_put(&c->word, " ", 1)) return -1;
                if (sbuf_put(&c->word, s, n)) return -1;
                if (st->re) {
                    pre_step iso = {.type = PRE_SPLIT, .re = st->re, .behavior = SPLIT_ISOLATED};
                    if (split_piece(c, &iso, c->word.b, c->word.n, first, out)) return -1;
                } else if (plist_add(out, c->word.b, c->word.n, first)) {
                    return -1;
                }
            } else { /* PRE_METASPACE: spaces → replacement, maybe prepend, maybe split */
                sbuf *w = &c->word;
                w->n = 0;
                int starts = n >= st->repl_len && !memcmp(s, st->repl, st->repl_len);
                int starts_space = n > 0 && s[0] == ' ';
                if (!(starts || starts_space) &&
                    (st->prepend == PREPEND_ALWAYS || (st->prepend == PREPEND_FIRST && first)) &&
                    sbuf_put(w, st->repl, st->repl_len))
                    return -1;
                for (size_t j = 0; j < n; j++)
                    if (s[j] == ' ' ? sbuf_put(w, st->repl, st->repl_len) : sbuf_put(w, s + j, 1)) return -1;
                if (st->split) {
                    pre_step mw = {.type = PRE_SPLIT, .lit = (char *)st->repl, .litlen = st->repl_len,
                                   .behavior = SPLIT_MERGED_NEXT};
                    if (split_piece(c, &mw, w->b, w->n, first, out)) return -1;
                } else if (plist_add(out, w->b, w->n, first)) {
                    return -1;
                }
            }
        }
        plist tmp = c->a;
        c->a = c->b;
        c->b = tmp;
    }
    return 0;
}

static int heap_less(const hent *a, const hent *b)
{
    return a->rank < b->rank || (a->rank == b->rank && a->pos < b->pos);
}

static void heap_push(hent *h, size_t *n, hent x)
{
    size_t i = (*n)++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!heap_less(&x, &h[p])) break;
        h[i] = h[p];
        i = p;
    }
    h[i] = x;
}

static hent heap_pop(hent *h, size_t *n)
{
    hent top = h[0], x = h[--(*n)];
    size_t i = 0;
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        const hent *best = &x;
        if (l < *n && heap_less(&h[l], best)) { m = l; best = &h[l]; }
        if (r < *n && heap_less(&h[r], best)) { m = r; best = &h[r]; }
        if (m == i) break;
        h[i] = h[m];
        i = m;
    }
    if (*n) h[i] = x;
    return top;
}

static int sym_add(ectx *c, size_t *ns, int id, int len)
{
    if (*ns == c->syms_cap) {
        size_t cap = c->syms_cap ? c->syms_cap * 2 : 64;
        sym *p = realloc(c->syms, cap * sizeof *p);
        if (!p) return -1;
        c->syms = p;
        c->syms_cap = cap;
    }
    c->syms[*ns] = (sym){id, (int)*ns - 1, (int)*ns + 1, len};
    (*ns)++;
    return 0;
}

/* BPE on one pre-token (reference: models/bpe/model.rs merge_word + word.rs merge_all).
 * s is raw text; with byte_level each byte stands for its bytes_to_unicode character. */
static int bpe_word(const tokenizer *t, ectx *c, const char *s, size_t n, ivec *out)
{
    size_t ns = 0;
    /* Symbols: one per character (byte_level: per byte), through vocab / byte_fallback / unk. */
    int unk = -1, unk_len = 0;
    for (size_t i = 0; i < n;) {
        size_t k = t->byte_level ? 1 : utf8_len1((unsigned char)s[i]);
        int id;
        const char *cs;
        size_t cl;
        if (t->byte_level) { cs = t->bl_char[(unsigned char)s[i]]; cl = t->bl_len[(unsigned char)s[i]]; }
        else { cs = s + i; cl = k; }
        int is_first = i == 0, is_last = i + k >= n;
        if ((t->cs_prefix && !is_first) || (t->eow_suffix && is_last)) {
            c->word.n = 0;
            if (t->cs_prefix && !is_first && sbuf_put(&c->word, t->cs_prefix, t->cs_prefix_len)) return -1;
            if (sbuf_put(&c->word, cs, cl)) return -1;
            if (t->eow_suffix && is_last && sbuf_put(&c->word, t->eow_suffix, t->eow_suffix_len)) return -1;
            cs = c->word.b;
            cl = c->word.n;
            id = smap_get(&t->vocab, cs, cl);
        } else {
            id = t->byte_level ? t->bl_id[(unsigned char)s[i]] : smap_get(&t->vocab, cs, cl);
        }
        if (id >= 0) {
            if (unk >= 0) { if (sym_add(c, &ns, unk, unk_len)) return -1; unk = -1; }
            if (sym_add(c, &ns, id, (int)k)) return -1;
        } else {
            int fb = t->byte_fallback;
            for (size_t j = 0; fb && j < cl; j++)
                if (t->byte_tok[(unsigned char)cs[j]] < 0) fb = 0;
            if (fb) { /* the reference leaves a pending unk pending here */
                for (size_t j = 0; j < cl; j++)
                    if (sym_add(c, &ns, t->byte_tok[(unsigned char)cs[j]], 1)) return -1;
            } else if (t->unk_id >= 0) {
                if (unk >= 0 && t->fuse_unk) unk_len += (int)k;
                else {
                    if (unk >= 0 && sym_add(c, &ns, unk, unk_len)) return -1;
                    unk = t->unk_id;
                    unk_len = (int)k;
                }
            } /* no unk token: the character is dropped, as in the reference */
        }
        i += k;
    }
    if (unk >= 0 && sym_add(c, &ns, unk, unk_len)) return -1;
    if (ns == 0) return 0;
    c->syms[ns - 1].next = -1;

    /* Merge loop: a min-heap of candidate merges (rank, then position); stale entries are
     * recognised when popped, exactly as the reference does. */
    if (c->heap_cap < ns * 2 + 16) {
        size_t cap = ns * 2 + 16;
        hent *h = realloc(c->heap, cap * sizeof *h);
        if (!h) return -1;
        c->heap = h;
        c->heap_cap = cap;
    }
    size_t nh = 0;
    for (size_t i = 0; i + 1 < ns; i++) {
        const mmap_ent *e = mmap_get(&t->merges, c->syms[i].c, c->syms[i + 1].c);
        if (e) heap_push(c->heap, &nh, (hent){e->rank, (int)i, e->id});
    }
    while (nh) {
        hent top = heap_pop(c->heap, &nh);
        sym *cur = &c->syms[top.pos];
        if (cur->len == 0 || cur->next < 0) continue;
        sym *right = &c->syms[cur->next];
        const mmap_ent *e = mmap_get(&t->merges, cur->c, right->c);
        if (!e || e->id != top.id) continue;
        cur->c = top.id;
        cur->len += right->len;
        cur->next = right->next;
        right->len = 0;
        if (cur->next >= 0) c->syms[cur->next].prev = top.pos;
        if (nh + 2 > c->heap_cap) {
            size_t cap = c->heap_cap * 2;
            hent *h = realloc(c->heap, cap * sizeof *h);
            if (!h) return -1;
            c->heap = h;
            c->heap_cap = cap;
        }
        if (cur->prev >= 0) {
            const mmap_ent *pe = mmap_get(&t->merges, c->syms[cur->prev].c, cur->c);
            if (pe) heap_push(c->heap, &nh, (hent){pe->rank, cur->prev, pe->id});
        }
        if (cur->next >= 0) {
            const mmap_ent *ne = mmap_get(&t->merges, cur->c, c->syms[cur->next].c);
            if (ne) heap_push(c->heap, &nh, (hent){ne->rank, top.pos, ne->id});
        }
    }
    for (int i = 0; i >= 0; i = c->syms[i].next)
        if (ivec_push(out, c->syms[i].c)) return -1;
    return 0;
}

static int bpe_piece(const tokenizer *t, ectx *c, const char *s, size_t n, ivec *out)
{
    if (t->ignore_merges) {
        int id;
        if (t->byte_level) {
            c->nbuf.n = 0;
            for (size_t i = 0; i < n; i++)
                if (sbuf_put(&c->nbuf, t->bl_char[(unsigned char)s[i]], t->bl_len[(unsigned char)s[i]])) return -1;
            id = smap_get(&t->vocab, c->nbuf.b, c->nbuf.n);
        } else {
            id = smap_get(&t->vocab, s, n);
        }
        if (id >= 0) return ivec_push(out, id);
    }
    if (!t->cut_metaspace || n < 64) return bpe_word(t, c, s, n, out);
    size_t start = 0;
    for (size_t i = 3; i + 3 <= n; i++)
        if (!memcmp(s + i, METASPACE_CHAR, 3) && memcmp(s + i - 3, METASPACE_CHAR, 3)) {
            if (bpe_word(t, c, s + start, i - start, out)) return -1;
            start = i;
        }
    return bpe_word(t, c, s + start, n - start, out);
}

/* Normalizers on s[0..n) → c->norm. */
static int normalize(const tokenizer *t, ectx *c, const char *s, size_t n)
{
    sbuf cur = {0}, nxt = {0};
    int rc = -1;
    if (sbuf_put(&cur, s, n)) goto out;
    for (size_t k = 0; k < t->n_norm; k++) {
        const norm_step *st = &t->norm[k];
        nxt.n = 0;
        if (sbuf_reserve(&nxt, 0)) goto out;
        switch (st->type) {
        case NORM_PREPEND:
            if (cur.n && (sbuf_put(&nxt, st->a, st->alen) || sbuf_put(&nxt, cur.b, cur.n))) goto out;
            break;
        case NORM_REPLACE: {
            span *m = NULL;
            size_t nm = 0, mcap = 0, prev = 0;
            if (find_matches(c, st->re, st->a, st->alen, cur.b, cur.n, &m, &nm, &mcap)) { free(m); goto out; }
            for (size_t i = 0; i < nm; i++)
                if (sbuf_put(&nxt, cur.b + prev, m[i].s - prev) || sbuf_put(&nxt, st->b, st->blen)) { free(m); goto out; }
                else prev = m[i].e;
            free(m);
            if (sbuf_put(&nxt, cur.b + prev, cur.n - prev)) goto out;
            break;
        }
        default: {
            size_t i = 0;
            while (i < cur.n && (unsigned char)cur.b[i] < 0x80) i++;
            if (i == cur.n) { /* ASCII is invariant under every normalization form */
                if (sbuf_put(&nxt, cur.b, cur.n)) goto out;
                break;
            }
            uninorm_t f = st->type == NORM_NFC ? UNINORM_NFC : st->type == NORM_NFD ? UNINORM_NFD
                        : st->type == NORM_NFKC ? UNINORM_NFKC : UNINORM_NFKD;
            size_t ol = 0;
            uint8_t *o = u8_normalize(f, (const uint8_t *)cur.b, cur.n, NULL, &ol);
            if (!o) goto out;
            int bad = sbuf_put(&nxt, o, ol);
            free(o);
            if (bad) goto out;
        }
        }
        sbuf x = cur;
        cur = nxt;
        nxt = x;
    }
    c->norm.n = 0;
    rc = sbuf_put(&c->norm, cur.b, cur.n);
out:
    free(cur.b);
    free(nxt.b);
    return rc;
}

/* Leftmost-longest added-token match at s[i] of set `set`; returns the added index or -1 and
 * the (possibly lstrip/rstrip-extended) span. */
static int added_match(const tokenizer *t, int set, const char *s, size_t n, size_t i, size_t lo,
                       size_t *ms, size_t *me)
{
    int b = (unsigned char)s[i];
    for (int k = 0; k < t->n_by_byte[set][b]; k++) {
        const added_tok *a = &t->added[t->by_byte[set][b][k]];
        if (a->len > n - i || memcmp(s + i, a->s, a->len)) continue;
        size_t st = i, en = i + a->len, kk;
        if (a->single_word) {
            int ok = 1;
            if (st > 0) { /* the character before */
                size_t j = st - 1;
                while (j > 0 && ((unsigned char)s[j] & 0xC0) == 0x80) j--;
                if (cp_is_word(utf8_cp((const unsigned char *)s + j, &kk))) ok = 0;
            }
            if (en < n && cp_is_word(utf8_cp((const unsigned char *)s + en, &kk))) ok = 0;
            if (!ok) continue;
        }
        if (a->lstrip)
            while (st > lo) {
                size_t j = st - 1;
                while (j > lo && ((unsigned char)s[j] & 0xC0) == 0x80) j--;
                if (!cp_is_space(utf8_cp((const unsigned char *)s + j, &kk))) break;
                st = j;
            }
        if (a->rstrip)
            while (en < n && cp_is_space(utf8_cp((const unsigned char *)s + en, &kk))) en += kk;
        *ms = st;
        *me = en;
        return (int)(t->by_byte[set][b][k]);
    }
    return -1;
}

/* Pre-tokenize then BPE one piece of normalized text. */
static int encode_pieces(const tokenizer *t, ectx *c, const char *s, size_t n, int first, ivec *out)
{
    c->a.n = 0;
    c->a.buf.n = 0;
    if (plist_add(&c->a, s, n, first) || pretokenize(t, c)) return -1;
    for (size_t i = 0; i < c->a.n; i++)
        if (bpe_piece(t, c, c->a.buf.b + c->a.p[i].off, c->a.p[i].len, out)) return -1;
    return 0;
}

/* Normalize → split on normalized added tokens → pre-tokenize → BPE for one text segment
 * (the reference's second AddedVocabulary pass). first: the segment starts the input. */
static int encode_text(const tokenizer *t, ectx *c, const char *s, size_t n, int first, ivec *out)
{
    const char *ns = s;
    size_t nn = n, start = 0;
    if (t->n_norm) {
        if (normalize(t, c, s, n)) return -1;
        ns = c->norm.b;
        nn = c->norm.n;
    }
    for (size_t i = 0; t->has_added[1] && i < nn;) {
        size_t ms, me;
        int k = added_match(t, 1, ns, nn, i, start, &ms, &me);
        if (k < 0) { i++; continue; }
        if (ms > start && encode_pieces(t, c, ns + start, ms - start, first && start == 0, out)) return -1;
        if (ivec_push(out, t->added[k].id)) return -1;
        start = i = me;
    }
    if (nn > start && encode_pieces(t, c, ns + start, nn - start, first && start == 0, out)) return -1;
    return 0;
}

int tokenizer_encode(const tokenizer *t, const char *text, size_t len, int add_special, int **ids,
                     size_t *n_ids, lr_error *err)
{
    ectx c = {0};
    ivec out = {0};
    int rc = LR_ENOMEM;
    if (!text && len) return lr_error_set(err, LR_EINVAL, "tokenizer_encode: NULL text");
    size_t bad = utf8_invalid_at(text, len);
    if (bad != len) return lr_error_set(err, LR_EINVAL, "tokenizer_encode: text is not valid UTF-8 (byte %zu)", bad);
    if (!(c.md = pcre2_match_data_create(32, NULL))) goto fail;
    for (size_t i = 0; add_special && i < t->n_tmpl_pre; i++)
        if (ivec_push(&out, t->tmpl_pre[i])) goto fail;
    /* Split on added tokens matched in the raw text (normalized == false), leftmost-longest. */
    size_t start = 0;
    for (size_t i = 0; i < len;) {
        size_t ms, me;
        int k = t->has_added[0] ? added_match(t, 0, text, len, i, start, &ms, &me) : -1;
        if (k < 0) { i++; continue; }
        if (ms > start && encode_text(t, &c, text + start, ms - start, start == 0, &out)) goto fail;
        if (ivec_push(&out, t->added[k].id)) goto fail;
        start = i = me;
    }
    if (len > start && encode_text(t, &c, text + start, len - start, start == 0, &out)) goto fail;
    for (size_t i = 0; add_special && i < t->n_tmpl_post; i++)
        if (ivec_push(&out, t->tmpl_post[i])) goto fail;
    ectx_free(&c);
    *ids = out.v;
    *n_ids = out.n;
    return 0;
fail:
    ectx_free(&c);
    free(out.v);
    return lr_error_set(err, rc, "tokenizer_encode: out of memory (or regex failure) on %zu bytes of text", len);
}

/* ---------------------------------------------------------------- decoding */

/* Decoder state shared by tokenizer_decode (one pass + flush) and tokenizer_stream, so the
 * streaming contract holds by construction. */
typedef struct {
    const tokenizer *t;
    int skip_special;
    size_t n_tok;          /* tokens given to the decoder so far (Metaspace i == 0 rule) */
    sbuf pend;             /* held bytes: byte-level partial UTF-8, or a <0xNN> run */
    size_t lead;           /* final Strip: leading content chars removed so far */
    int lead_done;
    size_t held;           /* final Strip with stop: trailing content chars held back */
    sbuf tok;              /* scratch */
} dstate;

/* Text leaving the decoder, through the final (after-Fuse) Strip if there is one. */
static int dec_emit(dstate *d, sbuf *out, const char *s, size_t n)
{
    const tokenizer *t = d->t;
    if (!t->dec_fstrip) return sbuf_put(out, s, n);
    for (size_t i = 0; i < n;) {
        size_t k = utf8_len1((unsigned char)s[i]);
        if (k > n - i) k = n - i;
        int is_c = k == t->dec_fclen && !memcmp(s + i, t->dec_fcontent, k);
        if (!d->lead_done) {
            if (is_c && d->lead < (size_t)t->dec_fstart) { d->lead++; i += k; continue; }
            d->lead_done = 1;
        }
        if (t->dec_fstop > 0 && is_c) { d->held++; i += k; continue; }
        for (; d->held; d->held--)
            if (sbuf_put(out, t->dec_fcontent, t->dec_fclen)) return -1;
        if (sbuf_put(out, s + i, k)) return -1;
        i += k;
    }
    return 0;
}

/* End of a <0xNN> run: valid UTF-8 as is, otherwise one U+FFFD per byte (reference). */
static int dec_end_run(dstate *d, sbuf *out)
{
    int rc = 0;
    if (!d->pend.n) return 0;
    if (utf8_invalid_at(d->pend.b, d->pend.n) == d->pend.n) {
        rc = dec_emit(d, out, d->pend.b, d->pend.n);
    } else {
        for (size_t i = 0; i < d->pend.n && !rc; i++) rc = dec_emit(d, out, FFFD, 3);
    }
    d->pend.n = 0;
    return rc;
}

static int byte_token(const char *s, size_t n)
{
    if (n != 6 || memcmp(s, "<0x", 3) || s[5] != '>') return -1;
    int v = 0;
    for (int i = 3; i < 5; i++) {
        char ch = s[i];
        int x = ch >= '0' && ch <= '9' ? ch - '0' : ch >= 'a' && ch <= 'f' ? ch - 'a' + 10
              : ch >= 'A' && ch <= 'F' ? ch - 'A' + 10 : -1;
        if (x < 0) return -1;
        v = v * 16 + x;
    }
    return v;
}

static int dec_push(dstate *d, int id, sbuf *out)
{
    const tokenizer *t = d->t;
    const char *s = t->id_tok[id];
    size_t n = t->id_len[id];
    if (!s || (d->skip_special && t->id_special[id])) return 0;
    size_t idx = d->n_tok++;
    if (t->dec_type == DEC_JOIN) {
        if (idx > 0 && sbuf_put(out, " ", 1)) return -1;
        return sbuf_put(out, s, n);
    }
    if (t->dec_type == DEC_BYTELEVEL) {
        /* Every char must be a byte-level char; otherwise the token's own UTF-8 is used. */
        size_t start = d->pend.n, k;
        for (size_t i = 0; i < n; i += k) {
            uint32_t cp = utf8_cp((const unsigned char *)s + i, &k);
            if (cp >= 324 || t->bl_rev[cp] < 0) {
                d->pend.n = start;
                if (sbuf_put(&d->pend, s, n)) return -1;
                break;
            }
            unsigned char b = (unsigned char)t->bl_rev[cp];
            if (sbuf_put(&d->pend, &b, 1)) return -1;
        }
        size_t used;
        sbuf tmp = d->tok;
        tmp.n = 0;
        int rc = utf8_lossy(&tmp, (const unsigned char *)d->pend.b, d->pend.n, 0, &used);
        d->tok = tmp;
        if (rc || dec_emit(d, out, tmp.b, tmp.n)) return -1;
        memmove(d->pend.b, d->pend.b + used, d->pend.n - used);
        d->pend.n -= used;
        return 0;
    }
    /* DEC_CHAIN */
    int byte = t->dec_byte_fallback ? byte_token(s, n) : -1;
    if (byte >= 0) {
        unsigned char b = (unsigned char)byte;
        return sbuf_put(&d->pend, &b, 1);
    }
    if (dec_end_run(d, out)) return -1;
    sbuf *w = &d->tok;
    w->n = 0;
    if (sbuf_put(w, s, n)) return -1;
    for (size_t k = 0; k < t->n_dops; k++) {
        const dec_op *op = &t->dops[k];
        sbuf o = {0};
        if (op->type == DOP_STRIP) {
            size_t a = 0, e = w->n;
            for (int i = 0; i < op->start && a < e && e - a >= op->clen && !memcmp(w->b + a, op->content, op->clen); i++) a += op->clen;
            for (int i = 0; i < op->stop && e > a && e - a >= op->clen && !memcmp(w->b + e - op->clen, op->content, op->clen); i++) e -= op->clen;
            if (sbuf_put(&o, w->b + a, e - a)) { free(o.b); return -1; }
        } else {
            /* Replace: every occurrence; Metaspace: replacement → ' ', dropped in token 0 */
            for (size_t i = 0; i < w->n;) {
                if (w->n - i >= op->flen && !memcmp(w->b + i, op->from, op->flen)) {
                    int bad = 0;
                    if (op->type == DOP_REPLACE) bad = sbuf_put(&o, op->to, op->tlen);
                    else if (!(idx == 0 && op->strip_first)) bad = sbuf_put(&o, " ", 1);
                    if (bad) { free(o.b); return -1; }
                    i += op->flen;
                } else {
                    if (sbuf_put(&o, w->b + i, 1)) { free(o.b); return -1; }
                    i++;
                }
            }
        }
        w->n = 0;
        int bad = sbuf_put(w, o.b ? o.b : "", o.n);
        free(o.b);
        if (bad) return -1;
    }
    return dec_emit(d, out, w->b, w->n);
}

static int dec_flush(dstate *d, sbuf *out)
{
    const tokenizer *t = d->t;
    if (t->dec_type == DEC_BYTELEVEL && d->pend.n) {
        size_t used;
        sbuf tmp = d->tok;
        tmp.n = 0;
        int rc = utf8_lossy(&tmp, (const unsigned char *)d->pend.b, d->pend.n, 1, &used);
        d->tok = tmp;
        if (rc || dec_emit(d, out, tmp.b, tmp.n)) return -1;
        d->pend.n = 0;
    } else if (t->dec_type == DEC_CHAIN && dec_end_run(d, out)) {
        return -1;
    }
    if (t->dec_fstrip) /* trailing content chars: the last `stop` of them are removed */
        for (; d->held > (size_t)t->dec_fstop; d->held--)
            if (sbuf_put(out, t->dec_fcontent, t->dec_fclen)) return -1;
    d->held = 0;
    d->n_tok = 0;
    d->lead = 0;
    d->lead_done = 0;
    return 0;
}

int tokenizer_decode(const tokenizer *t, const int *ids, size_t n, int skip_special, char **text,
                     size_t *len, lr_error *err)
{
    dstate d = {.t = t, .skip_special = skip_special};
    sbuf out = {0};
    for (size_t i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= t->n_ids)
            return lr_error_set(err, LR_EINVAL, "tokenizer_decode: id %d at position %zu is outside the vocab [0, %d)",
                                ids[i], i, t->n_ids);
    if (sbuf_reserve(&out, 16)) goto nomem;
    out.b[0] = '\0';
    for (size_t i = 0; i < n; i++)
        if (dec_push(&d, ids[i], &out)) goto nomem;
    if (dec_flush(&d, &out)) goto nomem;
    free(d.pend.b);
    free(d.tok.b);
    *text = out.b;
    if (len) *len = out.n;
    return 0;
nomem:
    free(d.pend.b);
    free(d.tok.b);
    free(out.b);
    return lr_error_set(err, LR_ENOMEM, "tokenizer_decode: out of memory");
}

struct tokenizer_stream { dstate d; };

tokenizer_stream *tokenizer_stream_new(const tokenizer *t, int skip_special)
{
    tokenizer_stream *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    s->d.t = t;
    s->d.skip_special = skip_special;
    return s;
}

static int stream_out(sbuf *o, char **out, size_t *len)
{
    if (sbuf_reserve(o, 0)) { free(o->b); *out = NULL; return LR_ENOMEM; }
    o->b[o->n] = '\0';
    *out = o->b;
    if (len) *len = o->n;
    return 0;
}

int tokenizer_stream_push(tokenizer_stream *s, int id, char **out, size_t *len)
{
    sbuf o = {0};
    *out = NULL;
    if (id < 0 || id >= s->d.t->n_ids) return LR_EINVAL;
    if (dec_push(&s->d, id, &o)) { free(o.b); return LR_ENOMEM; }
    return stream_out(&o, out, len);
}

int tokenizer_stream_flush(tokenizer_stream *s, char **out, size_t *len)
{
    sbuf o = {0};
    *out = NULL;
    if (dec_flush(&s->d, &o)) { free(o.b); return LR_ENOMEM; }
    return stream_out(&o, out, len);
}

void tokenizer_stream_free(tokenizer_stream *s)
{
    if (!s) return;
    free(s->d.pend.b);
    free(s->d.tok.b);
    free(s);
}

/* ---------------------------------------------------------------- accessors */

int tokenizer_vocab_size(const tokenizer *t) { return t->n_ids; }
int tokenizer_bos_id(const tokenizer *t) { return t->bos_id; }
int tokenizer_eos_id(const tokenizer *t) { return t->eos_id; }
int tokenizer_token_id(const tokenizer *t, const char *token) { return token ? token_in_vocab(t, token) : -1; }

const char *tokenizer_id_token(const tokenizer *t, int id)
{
    return id >= 0 && id < t->n_ids ? t->id_tok[id] : NULL;
}

int tokenizer_is_special(const tokenizer *t, int id)
{
    return id >= 0 && id < t->n_ids && t->id_special[id];
}
