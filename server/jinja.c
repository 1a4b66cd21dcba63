/* jinja: the chat-template interpreter (see jinja.h). Errors found at any depth of the lexer,
 * parser or evaluator leave through longjmp to the one setjmp in jinja_parse / jinja_render:
 * everything allocated on the way lives in an arena that the owner of that setjmp frees, so
 * unwinding needs no other cleanup and no input can leak memory. */
#include "server/jinja.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unicase.h>
#include <unictype.h>
#include <unistr.h>

/* ---------------------------------------------------------------- arena, errors */

typedef struct chunk {
    struct chunk *next;
    size_t used, cap;
    max_align_t data[];
} chunk;

typedef struct {
    chunk *head;
    size_t total;  /* bytes taken from malloc */
    size_t limit;  /* 0: unlimited */
    int over;      /* the last failure was the limit, not malloc */
} arena;

static void arena_free(arena *a)
{
    chunk *c = a->head;
    while (c) {
        chunk *next = c->next;
        free(c);
        c = next;
    }
    a->head = NULL;
    a->total = 0;
}

/* NULL when over the limit or out of memory. Requests larger than a chunk get their own chunk,
 * linked behind the current one so its free space is not abandoned. */
static void *arena_try(arena *a, size_t n)
{
    if (n > SIZE_MAX / 2)
        return NULL;
    n = (n + 15) & ~(size_t)15;
    chunk *c = a->head;
    if (c && c->cap - c->used >= n) {
        void *p = (char *)c->data + c->used;
        c->used += n;
        return p;
    }
    size_t cap = n > 32768 ? n : 32768;
    if (a->limit && a->total + cap + sizeof *c > a->limit) {
        a->over = 1;
        return NULL;
    }
    chunk *nc = malloc(sizeof *nc + cap);
    if (!nc)
        return NULL;
    a->total += sizeof *nc + cap;
    nc->cap = cap;
    nc->used = n;
    if (c && n > 32768) {
        nc->next = c->next;
        c->next = nc;
    } else {
        nc->next = c;
        a->head = nc;
    }
    return nc->data;
}

typedef struct {
    jmp_buf jb;
    lr_error *err;
    const char *name;
    int nomem;  /* set when the failure was an allocation, not the template */
} failer;

static _Noreturn void fail(failer *f, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static _Noreturn void fail(failer *f, int line, const char *fmt, ...)
{
    char msg[sizeof f->err->msg];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (line > 0)
        lr_error_set(f->err, LR_EINVAL, "template '%s' line %d: %s", f->name, line, msg);
    else
        lr_error_set(f->err, LR_EINVAL, "template '%s': %s", f->name, msg);
    longjmp(f->jb, 1);
}

static void *alloc(failer *f, arena *a, size_t n)
{
    void *p = arena_try(a, n);
    if (!p) {
        if (a->over) {
            lr_error_set(f->err, LR_EINVAL,
                         "template '%s': rendering needs more than %zu MiB (runaway template?)",
                         f->name, a->limit >> 20);
        } else {
            lr_error_set(f->err, LR_ENOMEM, "template '%s': out of memory", f->name);
            f->nomem = 1;
        }
        longjmp(f->jb, 1);
    }
    return p;
}

/* ---------------------------------------------------------------- strings */

typedef struct {
    size_t len;
    char s[];  /* NUL-terminated UTF-8 */
} jstr;

static jstr *jstr_new(failer *f, arena *a, const char *s, size_t n)
{
    jstr *r = alloc(f, a, sizeof *r + n + 1);
    r->len = n;
    if (n)
        memcpy(r->s, s, n);
    r->s[n] = '\0';
    return r;
}

/* Python's str.isspace() for one code point (also what \s and str.strip() use). */
static int py_space(ucs4_t c)
{
    return c == ' ' || (c >= 0x09 && c <= 0x0d) || (c >= 0x1c && c <= 0x1f) || c == 0x85
           || c == 0xa0 || c == 0x1680 || (c >= 0x2000 && c <= 0x200a) || c == 0x2028
           || c == 0x2029 || c == 0x202f || c == 0x205f || c == 0x3000;
}

static size_t u8len(const char *s, size_t i, size_t n, ucs4_t *c)
{
    int k = u8_mbtouc(c, (const uint8_t *)s + i, n - i);
    return k > 0 ? (size_t)k : 1;
}

/* Length of s[0..n) without its trailing Python whitespace. */
static size_t rstrip_len(const char *s, size_t n)
{
    size_t end = 0;
    for (size_t i = 0; i < n;) {
        ucs4_t c;
        size_t k = u8len(s, i, n, &c);
        if (!py_space(c))
            end = i + k;
        i += k;
    }
    return end;
}

static size_t lstrip_len(const char *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        ucs4_t c;
        size_t k = u8len(s, i, n, &c);
        if (!py_space(c))
            break;
        i += k;
    }
    return i;
}

static size_t cp_count(const char *s, size_t n)
{
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        k += ((unsigned char)s[i] & 0xc0) != 0x80;
    return k;
}

/* ---------------------------------------------------------------- values */

enum { V_UNDEF, V_NONE, V_BOOL, V_INT, V_FLOAT, V_STR, V_LIST, V_DICT, V_NS, V_FUNC };
enum { F_RAISE, F_NAMESPACE, F_RANGE, F_DICT, F_STRFTIME };

typedef struct list list;
typedef struct dict dict;

typedef struct {
    unsigned char k;
    unsigned char tuple;  /* V_LIST: a Python tuple (repr and equality differ from a list) */
    union {
        int b;
        long long i;
        double f;
        const jstr *s;
        list *l;
        dict *d;  /* V_DICT, V_NS */
        int fn;
        const char *why;  /* V_UNDEF: "'x' is undefined", "... has no attribute 'y'", NULL */
    } u;
} val;

struct list {
    size_t n, cap;
    val *v;
};

struct dict {
    size_t n, cap;
    val *k, *v;  /* insertion order, as Python dicts */
};

static val v_undef(const char *why)
{
    val v = {.k = V_UNDEF};
    v.u.why = why;
    return v;
}

static val v_none(void)
{
    return (val){.k = V_NONE};
}

static val v_bool(int b)
{
    val v = {.k = V_BOOL};
    v.u.b = b != 0;
    return v;
}

static val v_int(long long i)
{
    val v = {.k = V_INT};
    v.u.i = i;
    return v;
}

static val v_float(double f)
{
    val v = {.k = V_FLOAT};
    v.u.f = f;
    return v;
}

static val v_str(const jstr *s)
{
    val v = {.k = V_STR};
    v.u.s = s;
    return v;
}

static val v_list(list *l, int tuple)
{
    val v = {.k = V_LIST, .tuple = (unsigned char)tuple};
    v.u.l = l;
    return v;
}

static val v_dict(dict *d, int kind)
{
    val v = {.k = (unsigned char)kind};
    v.u.d = d;
    return v;
}

static const char *type_name(val v)
{
    switch (v.k) {
    case V_UNDEF: return "Undefined";
    case V_NONE: return "NoneType";
    case V_BOOL: return "bool";
    case V_INT: return "int";
    case V_FLOAT: return "float";
    case V_STR: return "str";
    case V_LIST: return v.tuple ? "tuple" : "list";
    case V_DICT: return "dict";
    case V_NS: return "Namespace";
    default: return "function";
    }
}

static int truthy(val v)
{
    switch (v.k) {
    case V_BOOL: return v.u.b;
    case V_INT: return v.u.i != 0;
    case V_FLOAT: return v.u.f != 0.0;
    case V_STR: return v.u.s->len > 0;
    case V_LIST: return v.u.l->n > 0;
    case V_DICT: return v.u.d->n > 0;
    case V_NS:
    case V_FUNC: return 1;
    default: return 0;
    }
}

static int is_num(val v)
{
    return v.k == V_INT || v.k == V_FLOAT || v.k == V_BOOL;
}

static double num_f(val v)
{
    return v.k == V_FLOAT ? v.u.f : v.k == V_INT ? (double)v.u.i : (double)v.u.b;
}

static long long num_i(val v)
{
    return v.k == V_INT ? v.u.i : (long long)v.u.b;
}

static list *list_new(failer *f, arena *a, size_t cap)
{
    list *l = alloc(f, a, sizeof *l);
    l->n = 0;
    l->cap = cap ? cap : 4;
    l->v = alloc(f, a, l->cap * sizeof *l->v);
    return l;
}

static void list_push(failer *f, arena *a, list *l, val v)
{
    if (l->n == l->cap) {
        val *nv = alloc(f, a, 2 * l->cap * sizeof *nv);
        memcpy(nv, l->v, l->n * sizeof *nv);
        l->v = nv;
        l->cap *= 2;
    }
    l->v[l->n++] = v;
}

static dict *dict_new(failer *f, arena *a)
{
    dict *d = alloc(f, a, sizeof *d);
    d->n = 0;
    d->cap = 4;
    d->k = alloc(f, a, d->cap * sizeof *d->k);
    d->v = alloc(f, a, d->cap * sizeof *d->v);
    return d;
}

static int key_eq(val a, val b)
{
    if (a.k == V_STR && b.k == V_STR)
        return a.u.s->len == b.u.s->len && !memcmp(a.u.s->s, b.u.s->s, a.u.s->len);
    if (is_num(a) && is_num(b))
        return num_f(a) == num_f(b);
    return a.k == V_NONE && b.k == V_NONE;
}

static val *dict_find(const dict *d, val k)
{
    for (size_t i = 0; i < d->n; i++)
        if (key_eq(d->k[i], k))
            return &d->v[i];
    return NULL;
}

static val *dict_find_s(const dict *d, const char *k, size_t n)
{
    for (size_t i = 0; i < d->n; i++)
        if (d->k[i].k == V_STR && d->k[i].u.s->len == n && !memcmp(d->k[i].u.s->s, k, n))
            return &d->v[i];
    return NULL;
}

static void dict_set(failer *f, arena *a, dict *d, val k, val v)
{
    val *slot = dict_find(d, k);
    if (slot) {
        *slot = v;
        return;
    }
    if (d->n == d->cap) {
        val *nk = alloc(f, a, 2 * d->cap * sizeof *nk), *nv = alloc(f, a, 2 * d->cap * sizeof *nv);
        memcpy(nk, d->k, d->n * sizeof *nk);
        memcpy(nv, d->v, d->n * sizeof *nv);
        d->k = nk;
        d->v = nv;
        d->cap *= 2;
    }
    d->k[d->n] = k;
    d->v[d->n++] = v;
}

/* ---------------------------------------------------------------- growable byte buffer */

typedef struct {
    char *p;
    size_t n, cap;
} buf;

static void buf_add(failer *f, arena *a, buf *b, const char *s, size_t n)
{
    if (b->cap - b->n < n + 1) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap - b->n < n + 1) {
            if (cap > SIZE_MAX / 4)
                fail(f, 0, "output too large");
            cap *= 2;
        }
        char *np = alloc(f, a, cap);
        if (b->n)
            memcpy(np, b->p, b->n);
        b->p = np;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = '\0';
}

static void buf_s(failer *f, arena *a, buf *b, const char *s)
{
    buf_add(f, a, b, s, strlen(s));
}

/* ---------------------------------------------------------------- lexer */

enum { T_EOF, T_TEXT, T_VBEGIN, T_VEND, T_BBEGIN, T_BEND, T_NAME, T_STR, T_INT, T_FLOAT, T_OP };

typedef struct {
    int kind, line;
    const char *s;   /* T_NAME, T_OP: into the normalized source */
    size_t n;
    const jstr *str; /* T_TEXT, T_STR: decoded, in the template's arena */
    long long i;
    double f;
} tok;

typedef struct node node;

typedef struct {
    failer f;
    arena *ar;   /* the template's: AST and literals */
    arena tmp;   /* tokens and scratch, freed after parsing */
    tok *t;
    size_t nt, cap, pos;
    int depth;   /* nesting of blocks and expressions */
    int loops;   /* enclosing for loops, for break/continue */
} parser;

static tok *tok_push(parser *p, int kind, int line)
{
    if (p->nt == p->cap) {
        size_t cap = p->cap ? 2 * p->cap : 256;
        tok *nt = alloc(&p->f, &p->tmp, cap * sizeof *nt);
        if (p->nt)
            memcpy(nt, p->t, p->nt * sizeof *nt);
        p->t = nt;
        p->cap = cap;
    }
    tok *t = &p->t[p->nt++];
    memset(t, 0, sizeof *t);
    t->kind = kind;
    t->line = line;
    return t;
}

static void push_text(parser *p, const char *s, size_t n, int line)
{
    if (n)
        tok_push(p, T_TEXT, line)->str = jstr_new(&p->f, p->ar, s, n);
}

static int hexval(char c)
{
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10
           : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

/* Decodes a string literal body with Python's escapes (Jinja2 runs literals through
 * "unicode-escape"); unknown escapes keep their backslash, as Python does. */
static const jstr *decode_string(parser *p, const char *s, size_t n, int line)
{
    buf b = {0};
    for (size_t i = 0; i < n; i++) {
        if (s[i] != '\\' || i + 1 >= n) {
            buf_add(&p->f, &p->tmp, &b, s + i, 1);
            continue;
        }
        char e = s[++i];
        char one = 0;
        switch (e) {
        case '\n': continue;
        case '\\': one = '\\'; break;
        case '\'': one = '\''; break;
        case '"': one = '"'; break;
        case 'a': one = '\a'; break;
        case 'b': one = '\b'; break;
        case 'f': one = '\f'; break;
        case 'n': one = '\n'; break;
        case 'r': one = '\r'; break;
        case 't': one = '\t'; break;
        case 'v': one = '\v'; break;
        default: break;
        }
        if (one) {
            buf_add(&p->f, &p->tmp, &b, &one, 1);
            continue;
        }
        ucs4_t cp = 0;
        if (e >= '0' && e <= '7') {
            int k = 0;
            while (k < 3 && i < n && s[i] >= '0' && s[i] <= '7')
                cp = cp * 8 + (ucs4_t)(s[i++] - '0'), k++;
            i--;
        } else if (e == 'x' || e == 'u' || e == 'U') {
            int want = e == 'x' ? 2 : e == 'u' ? 4 : 8;
            for (int k = 0; k < want; k++) {
                int h = i + 1 + (size_t)k < n ? hexval(s[i + 1 + k]) : -1;
                if (h < 0)
                    fail(&p->f, line, "truncated \\%c escape in a string literal", e);
                cp = cp * 16 + (ucs4_t)h;
            }
            i += (size_t)want;
        } else if (e == 'N') {
            fail(&p->f, line, "\\N{...} escapes are not supported");
        } else {
            buf_add(&p->f, &p->tmp, &b, s + i - 1, 2);
            continue;
        }
        uint8_t u[6];
        int k = cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff) ? -1 : u8_uctomb(u, cp, sizeof u);
        if (k <= 0)
            fail(&p->f, line, "escape for an invalid code point U+%X", (unsigned)cp);
        buf_add(&p->f, &p->tmp, &b, (const char *)u, (size_t)k);
    }
    return jstr_new(&p->f, p->ar, b.p ? b.p : "", b.n);
}

static int is_name0(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
}

static int is_digit(char c)
{
    return c >= '0' && c <= '9';
}

/* Lexes the inside of one {{ }} or {% %} tag from s[*pi], up to and including its end marker;
 * returns the position after the end marker and what preceded it ('-', '+' or 0). */
static size_t lex_tag(parser *p, const char *s, size_t n, size_t i, int *line, int block,
                      char *endmod)
{
    int open_line = *line, depth = 0;
    const char *ops2[] = {"//", "**", "==", "!=", "<=", ">="};
    for (;;) {
        while (i < n && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r')) {
            if (s[i] == '\n')
                (*line)++;
            i++;
        }
        if (i >= n)
            fail(&p->f, open_line, "unterminated %s (no closing '%s')", block ? "{%" : "{{",
                 block ? "%}" : "}}");
        if (depth == 0) {
            const char *end = block ? "%}" : "}}";
            char mod = (s[i] == '-' || s[i] == '+') ? s[i] : 0;
            size_t at = i + (mod ? 1 : 0);
            if (at + 1 < n && s[at] == end[0] && s[at + 1] == end[1] && (mod != '+' || block)) {
                tok_push(p, block ? T_BEND : T_VEND, *line);
                *endmod = mod;
                return at + 2;
            }
        }
        tok *t;
        char c = s[i];
        if (is_name0(c)) {
            size_t j = i;
            while (j < n && (is_name0(s[j]) || is_digit(s[j])))
                j++;
            t = tok_push(p, T_NAME, *line);
            t->s = s + i;
            t->n = j - i;
            i = j;
        } else if (c == '0' && i + 2 < n && strchr("xXoObB", s[i + 1]) && hexval(s[i + 2]) >= 0) {
            /* 0x1f, 0o17, 0b101 (with optional '_' between digits), as Jinja2 reads them */
            int base = (s[i + 1] | 0x20) == 'x' ? 16 : (s[i + 1] | 0x20) == 'o' ? 8 : 2;
            unsigned long long v = 0;
            size_t j = i + 2;
            for (; j < n && (s[j] == '_' || (hexval(s[j]) >= 0 && hexval(s[j]) < base)); j++) {
                if (s[j] == '_')
                    continue;
                if (v > (unsigned long long)LLONG_MAX / (unsigned)base)
                    fail(&p->f, *line, "number is out of range");
                v = v * (unsigned)base + (unsigned)hexval(s[j]);
            }
            if (v > (unsigned long long)LLONG_MAX)
                fail(&p->f, *line, "number is out of range");
            t = tok_push(p, T_INT, *line);
            t->i = (long long)v;
            i = j;
        } else if (is_digit(c)) {
            size_t j = i;
            int isf = 0;
            while (j < n && (is_digit(s[j]) || s[j] == '_'))
                j++;
            int after_dot = p->nt && p->t[p->nt - 1].kind == T_OP && p->t[p->nt - 1].s[0] == '.';
            if (!after_dot && j + 1 < n && s[j] == '.' && is_digit(s[j + 1])) {
                isf = 1;
                j++;
                while (j < n && (is_digit(s[j]) || s[j] == '_'))
                    j++;
            }
            if (!after_dot && j < n && (s[j] == 'e' || s[j] == 'E')) {
                size_t k = j + 1;
                if (k < n && (s[k] == '+' || s[k] == '-'))
                    k++;
                if (k < n && is_digit(s[k])) {
                    isf = 1;
                    j = k;
                    while (j < n && (is_digit(s[j]) || s[j] == '_'))
                        j++;
                }
            }
            char num[64];
            size_t m = 0;
            for (size_t k = i; k < j; k++)
                if (s[k] != '_' && m < sizeof num - 1)
                    num[m++] = s[k];
            num[m] = '\0';
            t = tok_push(p, isf ? T_FLOAT : T_INT, *line);
            errno = 0;
            if (isf)
                t->f = strtod(num, NULL);
            else
                t->i = strtoll(num, NULL, 10);
            if (errno == ERANGE || m == sizeof num - 1)
                fail(&p->f, *line, "number %s is out of range", num);
            i = j;
        } else if (c == '\'' || c == '"') {
            size_t j = i + 1;
            int l0 = *line;
            while (j < n && s[j] != c) {
                if (s[j] == '\\' && j + 1 < n)
                    j++;
                if (s[j] == '\n')
                    (*line)++;
                j++;
            }
            if (j >= n)
                fail(&p->f, l0, "unterminated string literal");
            t = tok_push(p, T_STR, l0);
            t->str = decode_string(p, s + i + 1, j - i - 1, l0);
            i = j + 1;
        } else {
            size_t len = 0;
            for (size_t k = 0; k < sizeof ops2 / sizeof ops2[0]; k++)
                if (i + 1 < n && s[i] == ops2[k][0] && s[i + 1] == ops2[k][1])
                    len = 2;
            if (!len && strchr("+-*/%~<>=()[]{},.:|", c))
                len = 1;
            if (!len) {
                ucs4_t cp;
                u8len(s, i, n, &cp);
                fail(&p->f, *line, "unexpected character '%.*s' in a tag",
                     (int)u8len(s, i, n, &cp), s + i);
            }
            if (c == '(' || c == '[' || c == '{')
                depth++;
            else if ((c == ')' || c == ']' || c == '}') && depth > 0)
                depth--;
            t = tok_push(p, T_OP, *line);
            t->s = s + i;
            t->n = len;
            i += len;
        }
    }
}

static int count_nl(const char *s, size_t n)
{
    int k = 0;
    for (size_t i = 0; i < n; i++)
        k += s[i] == '\n';
    return k;
}

/* After a tag: '-' eats all following whitespace; otherwise trim_blocks eats one newline after
 * a block or comment tag (not after {{ }}), unless the tag ended with '+'. */
static size_t after_tag(const char *s, size_t n, size_t i, char mod, int trim, int *line)
{
    if (mod == '-') {
        size_t k = lstrip_len(s + i, n - i);
        *line += count_nl(s + i, k);
        return i + k;
    }
    if (trim && mod != '+' && i < n && s[i] == '\n') {
        (*line)++;
        return i + 1;
    }
    return i;
}

/* {% raw %}: if the block tag at s[i] (just after "{%") is "raw", emits the raw text as a text
 * token and returns the position after the matching endraw; otherwise returns 0. */
static size_t lex_raw(parser *p, const char *s, size_t n, size_t i, int *line)
{
    size_t k = i;
    while (k < n && (s[k] == ' ' || s[k] == '\t' || s[k] == '\n'))
        k++;
    if (n - k < 3 || memcmp(s + k, "raw", 3) || (k + 3 < n && (is_name0(s[k + 3])
                                                              || is_digit(s[k + 3]))))
        return 0;
    k += 3;
    while (k < n && (s[k] == ' ' || s[k] == '\t' || s[k] == '\n'))
        k++;
    char mod = 0;
    if (k < n && s[k] == '-')
        mod = s[k++];
    if (n - k < 2 || s[k] != '%' || s[k + 1] != '}')
        fail(&p->f, *line, "malformed {%% raw %%} tag");
    k += 2;
    size_t body = k + (mod == '-' ? lstrip_len(s + k, n - k) : 0);
    for (size_t j = body; j + 1 < n; j++) {
        if (s[j] != '{' || s[j + 1] != '%')
            continue;
        size_t e = j + 2;
        char smod = (e < n && (s[e] == '-' || s[e] == '+')) ? s[e++] : 0;
        while (e < n && (s[e] == ' ' || s[e] == '\t' || s[e] == '\n'))
            e++;
        if (n - e < 6 || memcmp(s + e, "endraw", 6))
            continue;
        e += 6;
        while (e < n && (s[e] == ' ' || s[e] == '\t' || s[e] == '\n'))
            e++;
        char emod = 0;
        if (e < n && (s[e] == '-' || s[e] == '+'))
            emod = s[e++];
        if (n - e < 2 || s[e] != '%' || s[e + 1] != '}')
            continue;
        size_t tlen = j - body;
        if (smod == '-')
            tlen = rstrip_len(s + body, tlen);
        push_text(p, s + body, tlen, *line);
        *line += count_nl(s + i, e + 2 - i);
        return after_tag(s, n, e + 2, emod, 1, line);
    }
    fail(&p->f, *line, "{%% raw %%} without {%% endraw %%}");
}

/* Splits the (newline-normalized) source into text and tag tokens, applying whitespace control
 * exactly as Jinja2's lexer does with trim_blocks and lstrip_blocks. */
static void lex(parser *p, const char *s, size_t n)
{
    size_t i = 0;
    int line = 1, line_starting = 1;
    while (i < n) {
        size_t j = i;
        while (j + 1 < n && !(s[j] == '{' && (s[j + 1] == '{' || s[j + 1] == '%'
                                               || s[j + 1] == '#')))
            j++;
        if (j + 1 >= n) {
            push_text(p, s + i, n - i, line);
            break;
        }
        char kind = s[j + 1], mod = j + 2 < n ? s[j + 2] : 0;
        if (kind == '{' && mod == '+')
            mod = 0;
        if (mod != '-' && mod != '+')
            mod = 0;
        size_t tlen = j - i;
        if (mod == '-') {
            tlen = rstrip_len(s + i, tlen);
        } else if (kind != '{' && mod != '+') {
            /* lstrip_blocks: only whitespace between the line start and the tag */
            size_t lpos = 0;
            for (size_t k = i; k < j; k++)
                if (s[k] == '\n')
                    lpos = k + 1 - i;
            if ((lpos > 0 || line_starting) && tlen > lpos && rstrip_len(s + i + lpos,
                                                                         tlen - lpos) == 0)
                tlen = lpos;
        }
        push_text(p, s + i, tlen, line);
        line += count_nl(s + i, j - i);
        int tag_line = line;
        i = j + 2 + (mod ? 1 : 0);
        char endmod = 0;
        if (kind == '#') {
            size_t e = i;
            while (e + 1 < n && !(s[e] == '#' && s[e + 1] == '}'))
                e++;
            if (e + 1 >= n)
                fail(&p->f, tag_line, "unterminated comment (no closing '#}')");
            endmod = e > i && (s[e - 1] == '-' || s[e - 1] == '+') ? s[e - 1] : 0;
            line += count_nl(s + i, e - i);
            i = after_tag(s, n, e + 2, endmod, 1, &line);
        } else if (kind == '%' && (j = lex_raw(p, s, n, i, &line)) != 0) {
            i = j;
        } else {
            tok_push(p, kind == '%' ? T_BBEGIN : T_VBEGIN, tag_line);
            i = lex_tag(p, s, n, i, &line, kind == '%', &endmod);
            i = after_tag(s, n, i, endmod, kind == '%', &line);
        }
        line_starting = i > 0 && s[i - 1] == '\n';
    }
    tok_push(p, T_EOF, line);
}

/* ---------------------------------------------------------------- AST */

enum {
    S_TEXT, S_OUT, S_IF, S_FOR, S_SET, S_SETNS, S_SETBLOCK, S_BREAK, S_CONTINUE, S_BLOCK,
    E_CONST, E_NAME, E_ATTR, E_ITEM, E_SLICE, E_CALL, E_FILTER, E_TEST, E_NEG, E_POS, E_NOT,
    E_AND, E_OR, E_BIN, E_CONCAT, E_CMP, E_COND, E_LIST, E_DICT
};
enum { OP_ADD, OP_SUB, OP_MUL, OP_DIV, OP_FLOORDIV, OP_MOD, OP_POW };
enum { C_EQ, C_NE, C_LT, C_LE, C_GT, C_GE, C_IN, C_NOTIN };

struct node {
    int kind, line;
    int op;                   /* E_BIN operator, filter/test id, E_TEST negation, tuple flag */
    int h;                    /* height of the expression tree, bounds evaluator recursion */
    node *a, *b, *c;          /* operands; S_IF/S_FOR: condition, iterable, loop filter */
    node **kids, **kids2;     /* args / items / dict keys / bodies; kwarg values / else body */
    int nkids, nkids2;
    int *ops;                 /* E_CMP: the operator before each of kids */
    const jstr **names;       /* kwarg names; S_FOR targets */
    int nnames;
    const jstr *str;          /* name, attribute, text, S_SETNS attribute */
    val lit;                  /* E_CONST */
};

#define MAX_HEIGHT 256

/* Filters and tests are resolved by name when parsing, so that an unknown one fails at load. */
static const char *const FILTERS[] = {
    "trim", "length", "count", "upper", "lower", "capitalize", "title", "default", "d",
    "tojson", "string", "join", "first", "last", "items", "list", "select", "reject",
    "selectattr", "rejectattr", "map", "replace", "int", "float", "abs", "reverse", "safe",
};
enum {
    FI_TRIM, FI_LENGTH, FI_COUNT, FI_UPPER, FI_LOWER, FI_CAPITALIZE, FI_TITLE, FI_DEFAULT, FI_D,
    FI_TOJSON, FI_STRING, FI_JOIN, FI_FIRST, FI_LAST, FI_ITEMS, FI_LIST, FI_SELECT, FI_REJECT,
    FI_SELECTATTR, FI_REJECTATTR, FI_MAP, FI_REPLACE, FI_INT, FI_FLOAT, FI_ABS, FI_REVERSE,
    FI_SAFE, FI_N
};
static const char *const TESTS[] = {
    "defined", "undefined", "none", "string", "number", "integer", "float", "boolean", "true",
    "false", "mapping", "iterable", "sequence", "callable", "odd", "even", "divisibleby", "eq",
    "equalto", "==", "ne", "!=", "lt", "<", "le", "<=", "gt", ">", "ge", ">=", "in", "sameas",
    "lower", "upper",
};
enum {
    TE_DEFINED, TE_UNDEFINED, TE_NONE, TE_STRING, TE_NUMBER, TE_INTEGER, TE_FLOAT, TE_BOOLEAN,
    TE_TRUE, TE_FALSE, TE_MAPPING, TE_ITERABLE, TE_SEQUENCE, TE_CALLABLE, TE_ODD, TE_EVEN,
    TE_DIVISIBLEBY, TE_EQ, TE_EQUALTO, TE_EQ2, TE_NE, TE_NE2, TE_LT, TE_LT2, TE_LE, TE_LE2,
    TE_GT, TE_GT2, TE_GE, TE_GE2, TE_IN, TE_SAMEAS, TE_LOWER, TE_UPPER, TE_N
};

static int lookup(const char *const *names, int n, const char *s, size_t len)
{
    for (int i = 0; i < n; i++)
        if (strlen(names[i]) == len && !memcmp(names[i], s, len))
            return i;
    return -1;
}

/* ---------------------------------------------------------------- parser */

typedef struct {
    void **v;
    int n, cap;
} vec;

static void vec_push(parser *p, vec *v, void *x)
{
    if (v->n == v->cap) {
        int cap = v->cap ? 2 * v->cap : 8;
        void **nv = alloc(&p->f, &p->tmp, (size_t)cap * sizeof *nv);
        if (v->n)
            memcpy(nv, v->v, (size_t)v->n * sizeof *nv);
        v->v = nv;
        v->cap = cap;
    }
    v->v[v->n++] = x;
}

/* The vector's items, copied into the template's arena (NULL when empty). */
static void *vec_done(parser *p, const vec *v)
{
    if (!v->n)
        return NULL;
    void **r = alloc(&p->f, p->ar, (size_t)v->n * sizeof *r);
    memcpy(r, v->v, (size_t)v->n * sizeof *r);
    return r;
}

static tok *cur(parser *p)
{
    return &p->t[p->pos];
}

static tok *peek(parser *p, size_t k)
{
    return p->pos + k < p->nt ? &p->t[p->pos + k] : &p->t[p->nt - 1];
}

static void advance(parser *p)
{
    if (p->t[p->pos].kind != T_EOF)
        p->pos++;
}

static int t_op(const tok *t, const char *op)
{
    return t->kind == T_OP && t->n == strlen(op) && !memcmp(t->s, op, t->n);
}

static int t_name(const tok *t, const char *nm)
{
    return t->kind == T_NAME && t->n == strlen(nm) && !memcmp(t->s, nm, t->n);
}

static const char *describe(const tok *t, char *b, size_t n)
{
    switch (t->kind) {
    case T_EOF: return "end of template";
    case T_TEXT: return "template text";
    case T_VBEGIN: return "'{{'";
    case T_VEND: return "end of {{ }}";
    case T_BBEGIN: return "'{%'";
    case T_BEND: return "end of {% %}";
    case T_STR: return "a string";
    case T_INT:
    case T_FLOAT: return "a number";
    default: snprintf(b, n, "'%.*s'", (int)(t->n > 40 ? 40 : t->n), t->s); return b;
    }
}

static _Noreturn void unexpected(parser *p, const char *wanted)
{
    char b[64];
    fail(&p->f, cur(p)->line, "expected %s, got %s", wanted, describe(cur(p), b, sizeof b));
}

static void expect_op(parser *p, const char *op)
{
    if (!t_op(cur(p), op)) {
        char w[16];
        snprintf(w, sizeof w, "'%s'", op);
        unexpected(p, w);
    }
    advance(p);
}

static void expect_kind(parser *p, int kind, const char *what)
{
    if (cur(p)->kind != kind)
        unexpected(p, what);
    advance(p);
}

static const jstr *take_name(parser *p, const char *what)
{
    if (cur(p)->kind != T_NAME)
        unexpected(p, what);
    const jstr *s = jstr_new(&p->f, p->ar, cur(p)->s, cur(p)->n);
    advance(p);
    return s;
}

static node *mk(parser *p, int kind, int line)
{
    node *n = alloc(&p->f, p->ar, sizeof *n);
    memset(n, 0, sizeof *n);
    n->kind = kind;
    n->line = line;
    n->h = 1;
    return n;
}

/* Sets n->h from its children; refuses trees the evaluator could not recurse through safely
 * (a + b + c + ... with thousands of terms, or x|trim|trim|... chains). */
static node *fix_h(parser *p, node *n)
{
    int h = 0;
    node *one[3] = {n->a, n->b, n->c};
    for (int i = 0; i < 3; i++)
        if (one[i] && one[i]->h > h)
            h = one[i]->h;
    for (int i = 0; i < n->nkids; i++)
        if (n->kids[i] && n->kids[i]->h > h)
            h = n->kids[i]->h;
    for (int i = 0; i < n->nkids2; i++)
        if (n->kids2[i] && n->kids2[i]->h > h)
            h = n->kids2[i]->h;
    n->h = h + 1;
    if (n->h > MAX_HEIGHT)
        fail(&p->f, n->line, "expression nested more than %d deep", MAX_HEIGHT);
    return n;
}

static node *parse_expr(parser *p);
static node *parse_or(parser *p);
static node *parse_unary(parser *p, int with_filter);
static node *parse_primary(parser *p);
static node *parse_postfix(parser *p, node *n);

static void enter(parser *p)
{
    if (++p->depth > JINJA_MAX_DEPTH)
        fail(&p->f, cur(p)->line, "nesting deeper than %d", JINJA_MAX_DEPTH);
}

static int tuple_end(parser *p, const char *extra)
{
    tok *t = cur(p);
    return t->kind == T_VEND || t->kind == T_BEND || t->kind == T_EOF || t_op(t, ")")
           || (extra && t_name(t, extra));
}

/* Jinja2's parse_tuple: "a", "a, b" (a tuple), "()" when parenthesized. */
static node *parse_tuple(parser *p, int condexpr, int parens, const char *extra)
{
    int line = cur(p)->line, is_tuple = 0;
    vec items = {0};
    for (;;) {
        if (items.n)
            expect_op(p, ",");
        if (tuple_end(p, extra))
            break;
        vec_push(p, &items, condexpr ? parse_expr(p) : parse_or(p));
        if (t_op(cur(p), ","))
            is_tuple = 1;
        else
            break;
    }
    if (!is_tuple) {
        if (items.n)
            return items.v[0];
        if (!parens)
            unexpected(p, "an expression");
    }
    node *n = mk(p, E_LIST, line);
    n->op = 1;
    n->nkids = items.n;
    n->kids = vec_done(p, &items);
    return fix_h(p, n);
}

/* Call arguments after '(': positional then name=value. */
static void parse_args(parser *p, node *n)
{
    vec args = {0}, kwv = {0}, kwn = {0};
    expect_op(p, "(");
    while (!t_op(cur(p), ")")) {
        if (args.n || kwv.n)
            expect_op(p, ",");
        if (t_op(cur(p), ")"))
            break;
        if (t_op(cur(p), "*") || t_op(cur(p), "**"))
            fail(&p->f, cur(p)->line, "*args and **kwargs in calls are not supported");
        if (cur(p)->kind == T_NAME && t_op(peek(p, 1), "=")) {
            vec_push(p, &kwn, (void *)take_name(p, "a keyword"));
            advance(p);
            vec_push(p, &kwv, parse_expr(p));
        } else {
            if (kwv.n)
                fail(&p->f, cur(p)->line, "positional argument after keyword argument");
            vec_push(p, &args, parse_expr(p));
        }
    }
    advance(p);
    n->nkids = args.n;
    n->kids = vec_done(p, &args);
    n->nkids2 = kwv.n;
    n->kids2 = vec_done(p, &kwv);
    n->nnames = kwn.n;
    n->names = vec_done(p, &kwn);
}

static node *parse_subscribed(parser *p)
{
    int line = cur(p)->line;
    node *parts[3] = {NULL, NULL, NULL};
    if (!t_op(cur(p), ":")) {
        node *e = parse_expr(p);
        if (!t_op(cur(p), ":"))
            return e;
        parts[0] = e;
    }
    advance(p);
    if (!t_op(cur(p), ":") && !t_op(cur(p), "]") && !t_op(cur(p), ","))
        parts[1] = parse_expr(p);
    if (t_op(cur(p), ":")) {
        advance(p);
        if (!t_op(cur(p), "]") && !t_op(cur(p), ","))
            parts[2] = parse_expr(p);
    }
    node *n = mk(p, E_SLICE, line);
    n->kids = alloc(&p->f, p->ar, 3 * sizeof *n->kids);
    memcpy(n->kids, parts, sizeof parts);
    n->nkids = 3;
    return n;
}

static node *parse_postfix(parser *p, node *n)
{
    for (;;) {
        tok *t = cur(p);
        if (t_op(t, ".")) {
            advance(p);
            node *m;
            if (cur(p)->kind == T_INT) {
                m = mk(p, E_ITEM, t->line);
                m->b = mk(p, E_CONST, t->line);
                m->b->lit = v_int(cur(p)->i);
                advance(p);
            } else {
                m = mk(p, E_ATTR, t->line);
                m->str = take_name(p, "an attribute name");
            }
            m->a = n;
            n = fix_h(p, m);
        } else if (t_op(t, "[")) {
            advance(p);
            vec idx = {0};
            while (!t_op(cur(p), "]")) {
                if (idx.n)
                    expect_op(p, ",");
                if (t_op(cur(p), "]"))
                    break;
                vec_push(p, &idx, parse_subscribed(p));
            }
            expect_op(p, "]");
            if (!idx.n)
                fail(&p->f, t->line, "empty subscript []");
            node *key = idx.v[0];
            for (int k = 0; idx.n > 1 && k < idx.n; k++)
                if (((node *)idx.v[k])->kind == E_SLICE)
                    fail(&p->f, t->line, "a slice inside a tuple subscript is not supported");
            if (idx.n > 1) {
                key = mk(p, E_LIST, t->line);
                key->op = 1;
                key->nkids = idx.n;
                key->kids = vec_done(p, &idx);
            }
            node *m;
            if (key->kind == E_SLICE) {
                m = key;
            } else {
                m = mk(p, E_ITEM, t->line);
                m->b = key;
            }
            m->a = n;
            n = fix_h(p, m);
        } else if (t_op(t, "(")) {
            node *m = mk(p, E_CALL, t->line);
            m->a = n;
            parse_args(p, m);
            n = fix_h(p, m);
        } else {
            return n;
        }
    }
}

static node *parse_filter_expr(parser *p, node *n)
{
    for (;;) {
        tok *t = cur(p);
        if (t_op(t, "|")) {
            advance(p);
            tok *nt = cur(p);
            if (nt->kind != T_NAME)
                unexpected(p, "a filter name");
            int id = lookup(FILTERS, FI_N, nt->s, nt->n);
            if (id < 0)
                fail(&p->f, nt->line, "unknown filter '%.*s'", (int)nt->n, nt->s);
            advance(p);
            node *m = mk(p, E_FILTER, t->line);
            m->op = id;
            m->a = n;
            if (t_op(cur(p), "("))
                parse_args(p, m);
            n = fix_h(p, m);
        } else if (t_name(t, "is")) {
            advance(p);
            node *m = mk(p, E_TEST, t->line);
            if (t_name(cur(p), "not")) {
                m->op = 1 << 8;
                advance(p);
            }
            tok *nt = cur(p);
            if (nt->kind != T_NAME && !(nt->kind == T_OP && lookup(TESTS, TE_N, nt->s, nt->n) >= 0))
                unexpected(p, "a test name");
            int id = lookup(TESTS, TE_N, nt->s, nt->n);
            if (id < 0)
                fail(&p->f, nt->line, "unknown test '%.*s'", (int)nt->n, nt->s);
            advance(p);
            m->op |= id;
            m->a = n;
            tok *a = cur(p);
            if (t_op(a, "(")) {
                parse_args(p, m);
            } else if ((a->kind == T_NAME || a->kind == T_STR || a->kind == T_INT
                        || a->kind == T_FLOAT || t_op(a, "[") || t_op(a, "{"))
                       && !t_name(a, "else") && !t_name(a, "or") && !t_name(a, "and")) {
                if (t_name(a, "is"))
                    fail(&p->f, a->line, "you cannot chain tests with 'is'");
                m->kids = alloc(&p->f, p->ar, sizeof *m->kids);
                m->kids[0] = parse_postfix(p, parse_primary(p));
                m->nkids = 1;
            }
            n = fix_h(p, m);
        } else if (t_op(t, "(")) {
            node *m = mk(p, E_CALL, t->line);
            m->a = n;
            parse_args(p, m);
            n = fix_h(p, m);
        } else {
            return n;
        }
    }
}

static node *parse_primary(parser *p)
{
    tok *t = cur(p);
    node *n;
    if (t->kind == T_NAME) {
        n = mk(p, E_CONST, t->line);
        if (t_name(t, "true") || t_name(t, "True")) {
            n->lit = v_bool(1);
        } else if (t_name(t, "false") || t_name(t, "False")) {
            n->lit = v_bool(0);
        } else if (t_name(t, "none") || t_name(t, "None")) {
            n->lit = v_none();
        } else {
            n->kind = E_NAME;
            n->str = take_name(p, "a name");
            return n;
        }
        advance(p);
        return n;
    }
    if (t->kind == T_STR) {
        /* adjacent literals concatenate: 'a' 'b' */
        buf b = {0};
        int line = t->line;
        while (cur(p)->kind == T_STR) {
            buf_add(&p->f, &p->tmp, &b, cur(p)->str->s, cur(p)->str->len);
            advance(p);
        }
        n = mk(p, E_CONST, line);
        n->lit = v_str(jstr_new(&p->f, p->ar, b.p ? b.p : "", b.n));
        return n;
    }
    if (t->kind == T_INT || t->kind == T_FLOAT) {
        n = mk(p, E_CONST, t->line);
        n->lit = t->kind == T_INT ? v_int(t->i) : v_float(t->f);
        advance(p);
        return n;
    }
    if (t_op(t, "(")) {
        advance(p);
        n = parse_tuple(p, 1, 1, NULL);
        expect_op(p, ")");
        return n;
    }
    if (t_op(t, "[")) {
        advance(p);
        vec items = {0};
        while (!t_op(cur(p), "]")) {
            if (items.n)
                expect_op(p, ",");
            if (t_op(cur(p), "]"))
                break;
            vec_push(p, &items, parse_expr(p));
        }
        advance(p);
        n = mk(p, E_LIST, t->line);
        n->nkids = items.n;
        n->kids = vec_done(p, &items);
        return fix_h(p, n);
    }
    if (t_op(t, "{")) {
        advance(p);
        vec keys = {0}, vals = {0};
        while (!t_op(cur(p), "}")) {
            if (keys.n)
                expect_op(p, ",");
            if (t_op(cur(p), "}"))
                break;
            vec_push(p, &keys, parse_expr(p));
            expect_op(p, ":");
            vec_push(p, &vals, parse_expr(p));
        }
        advance(p);
        n = mk(p, E_DICT, t->line);
        n->nkids = keys.n;
        n->kids = vec_done(p, &keys);
        n->nkids2 = vals.n;
        n->kids2 = vec_done(p, &vals);
        return fix_h(p, n);
    }
    unexpected(p, "an expression");
}

static node *parse_unary(parser *p, int with_filter)
{
    enter(p);
    tok *t = cur(p);
    node *n;
    if (t_op(t, "-") || t_op(t, "+")) {
        advance(p);
        n = mk(p, t_op(t, "-") ? E_NEG : E_POS, t->line);
        n->a = parse_unary(p, 0);
        n = fix_h(p, n);
    } else {
        n = parse_postfix(p, parse_primary(p));
    }
    if (with_filter)
        n = parse_filter_expr(p, n);
    p->depth--;
    return n;
}

static node *binary(parser *p, int kind, int op, int line, node *a, node *b)
{
    node *n = mk(p, kind, line);
    n->op = op;
    n->a = a;
    n->b = b;
    return fix_h(p, n);
}

static node *parse_pow(parser *p)
{
    node *n = parse_unary(p, 1);
    while (t_op(cur(p), "**")) {
        int line = cur(p)->line;
        advance(p);
        n = binary(p, E_BIN, OP_POW, line, n, parse_unary(p, 1));
    }
    return n;
}

static node *parse_math2(parser *p)
{
    node *n = parse_pow(p);
    for (;;) {
        tok *t = cur(p);
        int op = t_op(t, "*") ? OP_MUL : t_op(t, "/") ? OP_DIV : t_op(t, "//") ? OP_FLOORDIV
                 : t_op(t, "%") ? OP_MOD : -1;
        if (op < 0)
            return n;
        advance(p);
        n = binary(p, E_BIN, op, t->line, n, parse_pow(p));
    }
}

static node *parse_concat(parser *p)
{
    node *n = parse_math2(p);
    if (!t_op(cur(p), "~"))
        return n;
    vec parts = {0};
    int line = cur(p)->line;
    vec_push(p, &parts, n);
    while (t_op(cur(p), "~")) {
        advance(p);
        vec_push(p, &parts, parse_math2(p));
    }
    node *c = mk(p, E_CONCAT, line);
    c->nkids = parts.n;
    c->kids = vec_done(p, &parts);
    return fix_h(p, c);
}

static node *parse_math1(parser *p)
{
    node *n = parse_concat(p);
    for (;;) {
        tok *t = cur(p);
        int op = t_op(t, "+") ? OP_ADD : t_op(t, "-") ? OP_SUB : -1;
        if (op < 0)
            return n;
        advance(p);
        n = binary(p, E_BIN, op, t->line, n, parse_concat(p));
    }
}

static node *parse_compare(parser *p)
{
    node *n = parse_math1(p);
    vec rhs = {0};
    int ops[64], nops = 0, line = cur(p)->line;
    for (;;) {
        tok *t = cur(p);
        int op = t_op(t, "==") ? C_EQ : t_op(t, "!=") ? C_NE : t_op(t, "<") ? C_LT
                 : t_op(t, "<=") ? C_LE : t_op(t, ">") ? C_GT : t_op(t, ">=") ? C_GE
                 : t_name(t, "in") ? C_IN : -1;
        if (op < 0 && t_name(t, "not") && t_name(peek(p, 1), "in")) {
            op = C_NOTIN;
            advance(p);
        }
        if (op < 0)
            break;
        if (nops == 64)
            fail(&p->f, t->line, "more than 64 chained comparisons");
        advance(p);
        ops[nops++] = op;
        vec_push(p, &rhs, parse_math1(p));
    }
    if (!nops)
        return n;
    node *c = mk(p, E_CMP, line);
    c->a = n;
    c->nkids = rhs.n;
    c->kids = vec_done(p, &rhs);
    c->ops = alloc(&p->f, p->ar, (size_t)nops * sizeof *c->ops);
    memcpy(c->ops, ops, (size_t)nops * sizeof *ops);
    return fix_h(p, c);
}

static node *parse_not(parser *p)
{
    if (t_name(cur(p), "not")) {
        enter(p);
        node *n = mk(p, E_NOT, cur(p)->line);
        advance(p);
        n->a = parse_not(p);
        p->depth--;
        return fix_h(p, n);
    }
    return parse_compare(p);
}

static node *parse_and(parser *p)
{
    node *n = parse_not(p);
    while (t_name(cur(p), "and")) {
        int line = cur(p)->line;
        advance(p);
        n = binary(p, E_AND, 0, line, n, parse_not(p));
    }
    return n;
}

static node *parse_or(parser *p)
{
    node *n = parse_and(p);
    while (t_name(cur(p), "or")) {
        int line = cur(p)->line;
        advance(p);
        n = binary(p, E_OR, 0, line, n, parse_and(p));
    }
    return n;
}

static node *parse_expr(parser *p)
{
    node *n = parse_or(p);
    while (t_name(cur(p), "if")) {
        node *c = mk(p, E_COND, cur(p)->line);
        advance(p);
        c->a = parse_or(p);
        c->b = n;
        if (t_name(cur(p), "else")) {
            advance(p);
            enter(p);
            c->c = parse_expr(p);
            p->depth--;
        }
        n = fix_h(p, c);
    }
    return n;
}

/* ---------------------------------------------------------------- statements */

static node **parse_body(parser *p, const char *const *ends, int nends, int *n,
                         const char **which);

static void end_block(parser *p)
{
    expect_kind(p, T_BEND, "end of {% %}");
}

/* Consumes "{% NAME %}" where NAME ended a body. */
static void close_tag(parser *p)
{
    advance(p);
    end_block(p);
}

static node *parse_if(parser *p, int line)
{
    static const char *const ends[] = {"elif", "else", "endif"};
    node *n = mk(p, S_IF, line);
    n->a = parse_expr(p);
    end_block(p);
    const char *which;
    n->kids = parse_body(p, ends, 3, &n->nkids, &which);
    if (!strcmp(which, "elif")) {
        int l2 = cur(p)->line;
        advance(p);
        enter(p);
        n->kids2 = alloc(&p->f, p->ar, sizeof *n->kids2);
        n->kids2[0] = parse_if(p, l2);
        n->nkids2 = 1;
        p->depth--;
        return n;
    }
    if (!strcmp(which, "else")) {
        static const char *const end_only[] = {"endif"};
        close_tag(p);
        n->kids2 = parse_body(p, end_only, 1, &n->nkids2, &which);
    }
    close_tag(p);
    return n;
}

static node *parse_for(parser *p, int line)
{
    static const char *const ends[] = {"else", "endfor"}, *const end_only[] = {"endfor"};
    node *n = mk(p, S_FOR, line);
    vec names = {0};
    int paren = t_op(cur(p), "(");
    if (paren)
        advance(p);
    do {
        if (names.n)
            advance(p);
        vec_push(p, &names, (void *)take_name(p, "a loop variable"));
    } while (t_op(cur(p), ","));
    if (paren)
        expect_op(p, ")");
    n->nnames = names.n;
    n->names = vec_done(p, &names);
    if (!t_name(cur(p), "in"))
        unexpected(p, "'in'");
    advance(p);
    n->a = parse_tuple(p, 0, 0, "recursive");
    if (t_name(cur(p), "if")) {
        advance(p);
        n->c = parse_expr(p);
    }
    if (t_name(cur(p), "recursive"))
        fail(&p->f, cur(p)->line, "recursive loops are not supported");
    end_block(p);
    const char *which;
    p->loops++;
    n->kids = parse_body(p, ends, 2, &n->nkids, &which);
    p->loops--;
    if (!strcmp(which, "else")) {
        close_tag(p);
        n->kids2 = parse_body(p, end_only, 1, &n->nkids2, &which);
    }
    close_tag(p);
    return n;
}

static node *parse_set(parser *p, int line)
{
    static const char *const ends[] = {"endset"};
    node *n = mk(p, S_SET, line);
    n->str = take_name(p, "a variable name");
    if (t_op(cur(p), ".")) {
        advance(p);
        n->kind = S_SETNS;
        n->names = alloc(&p->f, p->ar, sizeof *n->names);
        n->names[0] = take_name(p, "an attribute name");
        n->nnames = 1;
    }
    if (t_op(cur(p), ","))
        fail(&p->f, line, "{%% set a, b = ... %%} (tuple unpacking) is not supported");
    if (t_op(cur(p), "=")) {
        advance(p);
        n->a = parse_tuple(p, 1, 0, NULL);
        end_block(p);
        return n;
    }
    if (n->kind == S_SETNS || cur(p)->kind != T_BEND)
        unexpected(p, "'='");
    end_block(p);
    const char *which;
    n->kind = S_SETBLOCK;
    n->kids = parse_body(p, ends, 1, &n->nkids, &which);
    close_tag(p);
    return n;
}

static node *parse_statement(parser *p)
{
    static const char *const unsupported[] = {
        "macro", "call", "filter", "with", "include", "import", "from", "extends", "block",
        "autoescape", "do", "trans", "pluralize",
    };
    static const char *const gen_end[] = {"endgeneration"};
    tok *t = cur(p);
    int line = t->line;
    if (t->kind != T_NAME)
        unexpected(p, "a tag name");
    enter(p);
    advance(p);
    node *n;
    if (t_name(t, "if")) {
        n = parse_if(p, line);
    } else if (t_name(t, "for")) {
        n = parse_for(p, line);
    } else if (t_name(t, "set")) {
        n = parse_set(p, line);
    } else if (t_name(t, "break") || t_name(t, "continue")) {
        if (!p->loops)
            fail(&p->f, line, "{%% %.*s %%} outside a for loop", (int)t->n, t->s);
        n = mk(p, t_name(t, "break") ? S_BREAK : S_CONTINUE, line);
        end_block(p);
    } else if (t_name(t, "generation")) {
        /* transformers' marker of assistant text: renders its body unchanged */
        const char *which;
        end_block(p);
        n = mk(p, S_BLOCK, line);
        n->kids = parse_body(p, gen_end, 1, &n->nkids, &which);
        close_tag(p);
    } else if (lookup(unsupported, (int)(sizeof unsupported / sizeof unsupported[0]), t->s,
                      t->n) >= 0) {
        fail(&p->f, line, "{%% %.*s %%} is not supported (lorad supports if, for, set, break, "
             "continue, raw, generation)", (int)t->n, t->s);
    } else {
        fail(&p->f, line, "unknown or misplaced tag '%.*s'", (int)(t->n > 40 ? 40 : t->n),
             t->s);
    }
    p->depth--;
    return n;
}

/* Statements up to a block tag named in ends (left current, after its '{%'), or to the end of
 * the template when nends == 0. */
static node **parse_body(parser *p, const char *const *ends, int nends, int *n,
                         const char **which)
{
    vec body = {0};
    int start = cur(p)->line;
    for (;;) {
        tok *t = cur(p);
        if (t->kind == T_EOF) {
            if (nends)
                fail(&p->f, start, "unclosed block: expected '%s' before the end of the "
                     "template", ends[nends - 1]);
            break;
        }
        if (t->kind == T_TEXT) {
            node *s = mk(p, S_TEXT, t->line);
            s->str = t->str;
            vec_push(p, &body, s);
            advance(p);
        } else if (t->kind == T_VBEGIN) {
            node *s = mk(p, S_OUT, t->line);
            advance(p);
            s->a = parse_tuple(p, 1, 0, NULL);
            expect_kind(p, T_VEND, "end of {{ }}");
            vec_push(p, &body, s);
        } else if (t->kind == T_BBEGIN) {
            advance(p);
            tok *nt = cur(p);
            int k = nt->kind == T_NAME ? lookup(ends, nends, nt->s, nt->n) : -1;
            if (k >= 0) {
                *which = ends[k];
                break;
            }
            vec_push(p, &body, parse_statement(p));
        } else {
            unexpected(p, "template text or a tag");
        }
    }
    *n = body.n;
    return vec_done(p, &body);
}

/* ---------------------------------------------------------------- rendering: context */

struct jinja_template {
    char *name;
    arena ar;      /* AST and literals; read-only once parsed */
    node **body;
    int nbody;
};

typedef struct frame {
    struct frame *up;
    dict *vars;
} frame;

typedef struct {
    failer f;
    arena ar;          /* every value of this render */
    frame *scope;      /* innermost: the current for-loop iteration, or the template's */
    dict *globals;     /* the caller's variables */
    buf *out;          /* where output goes ({% set %} blocks capture into their own) */
    unsigned long steps;
    const jstr *loop_keys[11];
    const jstr *loop_name;   /* "loop", made once: a loop must not allocate per iteration */
} rctx;

enum { LK_INDEX, LK_INDEX0, LK_REVINDEX, LK_REVINDEX0, LK_FIRST, LK_LAST, LK_LENGTH,
       LK_PREVITEM, LK_NEXTITEM, LK_DEPTH, LK_DEPTH0 };
static const char *const LOOP_KEYS[] = {"index", "index0", "revindex", "revindex0", "first",
                                        "last", "length", "previtem", "nextitem", "depth",
                                        "depth0"};

#define MISSING ((val){.k = V_UNDEF, .tuple = 2})
#define MAX_ARGS 16
#define MAX_DATA_DEPTH 100

static int given(val v)
{
    return !(v.k == V_UNDEF && v.tuple == 2);
}

static void step(rctx *c, int line)
{
    if (++c->steps > JINJA_MAX_STEPS)
        fail(&c->f, line, "more than %u evaluation steps (endless loop?)", JINJA_MAX_STEPS);
}

static const char *fmt(rctx *c, const char *f, ...) __attribute__((format(printf, 2, 3)));

static const char *fmt(rctx *c, const char *f, ...)
{
    char tmp[200];
    va_list ap;
    va_start(ap, f);
    int n = vsnprintf(tmp, sizeof tmp, f, ap);
    va_end(ap);
    return jstr_new(&c->f, &c->ar, tmp, n < 0 ? 0 : (size_t)n < sizeof tmp ? (size_t)n
                    : sizeof tmp - 1)->s;
}

static _Noreturn void fail_undef(rctx *c, int line, val v)
{
    fail(&c->f, line, "%s", v.u.why ? v.u.why : "undefined value");
}

static jstr *mkstr(rctx *c, const char *s, size_t n)
{
    return jstr_new(&c->f, &c->ar, s, n);
}

/* ---------------------------------------------------------------- str(), repr(), tojson */

/* Python's repr(float): the shortest digits that read back exactly, in exponent notation when
 * the exponent is below -4 or at least 16. */
static void py_float(double d, char *out, size_t cap)
{
    if (isnan(d)) {
        snprintf(out, cap, "nan");
        return;
    }
    if (isinf(d)) {
        snprintf(out, cap, d < 0 ? "-inf" : "inf");
        return;
    }
    char e[40];
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(e, sizeof e, "%.*e", prec - 1, d);
        if (strtod(e, NULL) == d)
            break;
    }
    char digits[24];
    size_t nd = 0;
    const char *q = e;
    int neg = *q == '-';
    if (neg)
        q++;
    for (; *q && *q != 'e'; q++)
        if (*q != '.')
            digits[nd++] = *q;
    while (nd > 1 && digits[nd - 1] == '0')
        nd--;
    int exp = atoi(q + 1);
    char *o = out;
    size_t left = cap;
#define PUT(...) do { int k_ = snprintf(o, left, __VA_ARGS__); o += k_; left -= (size_t)k_; } \
    while (0)
    if (neg)
        PUT("-");
    if (exp < -4 || exp >= 16) {
        PUT("%c", digits[0]);
        if (nd > 1)
            PUT(".%.*s", (int)nd - 1, digits + 1);
        PUT("e%c%02d", exp < 0 ? '-' : '+', exp < 0 ? -exp : exp);
    } else if (exp < 0) {
        PUT("0.");
        for (int i = 0; i < -exp - 1; i++)
            PUT("0");
        PUT("%.*s", (int)nd, digits);
    } else {
        for (int i = 0; i <= exp; i++)
            PUT("%c", (size_t)i < nd ? digits[i] : '0');
        PUT(".");
        if ((size_t)exp + 1 < nd)
            PUT("%.*s", (int)(nd - (size_t)exp - 1), digits + exp + 1);
        else
            PUT("0");
    }
#undef PUT
}

static void repr_str(rctx *c, buf *b, const jstr *s)
{
    char q = memchr(s->s, '\'', s->len) && !memchr(s->s, '"', s->len) ? '"' : '\'';
    buf_add(&c->f, &c->ar, b, &q, 1);
    for (size_t i = 0; i < s->len; i++) {
        unsigned char ch = (unsigned char)s->s[i];
        char e[8];
        if (ch == '\\' || ch == (unsigned char)q) {
            e[0] = '\\';
            e[1] = (char)ch;
            buf_add(&c->f, &c->ar, b, e, 2);
        } else if (ch == '\n') {
            buf_s(&c->f, &c->ar, b, "\\n");
        } else if (ch == '\r') {
            buf_s(&c->f, &c->ar, b, "\\r");
        } else if (ch == '\t') {
            buf_s(&c->f, &c->ar, b, "\\t");
        } else if (ch < 0x20 || ch == 0x7f) {
            snprintf(e, sizeof e, "\\x%02x", ch);
            buf_s(&c->f, &c->ar, b, e);
        } else {
            buf_add(&c->f, &c->ar, b, s->s + i, 1);
        }
    }
    buf_add(&c->f, &c->ar, b, &q, 1);
}

/* Appends Python's str(v) (repr for items inside containers, as Python does). */
static void write_val(rctx *c, buf *b, val v, int repr, int depth)
{
    char tmp[40];
    if (depth > MAX_DATA_DEPTH)
        fail(&c->f, 0, "data nested more than %d deep", MAX_DATA_DEPTH);
    switch (v.k) {
    case V_UNDEF: return;
    case V_NONE: buf_s(&c->f, &c->ar, b, "None"); return;
    case V_BOOL: buf_s(&c->f, &c->ar, b, v.u.b ? "True" : "False"); return;
    case V_INT: snprintf(tmp, sizeof tmp, "%lld", v.u.i); buf_s(&c->f, &c->ar, b, tmp); return;
    case V_FLOAT: py_float(v.u.f, tmp, sizeof tmp); buf_s(&c->f, &c->ar, b, tmp); return;
    case V_STR:
        if (repr)
            repr_str(c, b, v.u.s);
        else
            buf_add(&c->f, &c->ar, b, v.u.s->s, v.u.s->len);
        return;
    case V_LIST:
        buf_s(&c->f, &c->ar, b, v.tuple ? "(" : "[");
        for (size_t i = 0; i < v.u.l->n; i++) {
            if (i)
                buf_s(&c->f, &c->ar, b, ", ");
            write_val(c, b, v.u.l->v[i], 1, depth + 1);
        }
        buf_s(&c->f, &c->ar, b, v.tuple && v.u.l->n == 1 ? ",)" : v.tuple ? ")" : "]");
        return;
    case V_DICT:
    case V_NS:
        buf_s(&c->f, &c->ar, b, v.k == V_NS ? "<Namespace {" : "{");
        for (size_t i = 0; i < v.u.d->n; i++) {
            if (i)
                buf_s(&c->f, &c->ar, b, ", ");
            write_val(c, b, v.u.d->k[i], 1, depth + 1);
            buf_s(&c->f, &c->ar, b, ": ");
            write_val(c, b, v.u.d->v[i], 1, depth + 1);
        }
        buf_s(&c->f, &c->ar, b, v.k == V_NS ? "}>" : "}");
        return;
    default: buf_s(&c->f, &c->ar, b, "<built-in function>"); return;
    }
}

static const jstr *to_str(rctx *c, val v)
{
    if (v.k == V_STR)
        return v.u.s;
    buf b = {0};
    write_val(c, &b, v, 0, 0);
    return mkstr(c, b.p ? b.p : "", b.n);
}

typedef struct {
    const char *indent;  /* NULL: compact */
    const char *item_sep, *key_sep;
    int sort_keys, ensure_ascii;
} json_opts;

static void json_text(rctx *c, buf *b, const jstr *s, int ensure_ascii)
{
    buf_s(&c->f, &c->ar, b, "\"");
    for (size_t i = 0; i < s->len;) {
        unsigned char ch = (unsigned char)s->s[i];
        char e[16];
        if (ch == '"' || ch == '\\') {
            e[0] = '\\';
            e[1] = (char)ch;
            buf_add(&c->f, &c->ar, b, e, 2);
        } else if (ch == '\n') {
            buf_s(&c->f, &c->ar, b, "\\n");
        } else if (ch == '\r') {
            buf_s(&c->f, &c->ar, b, "\\r");
        } else if (ch == '\t') {
            buf_s(&c->f, &c->ar, b, "\\t");
        } else if (ch == '\b') {
            buf_s(&c->f, &c->ar, b, "\\b");
        } else if (ch == '\f') {
            buf_s(&c->f, &c->ar, b, "\\f");
        } else if (ch < 0x20 || (ensure_ascii && ch == 0x7f)) {
            snprintf(e, sizeof e, "\\u%04x", ch);
            buf_s(&c->f, &c->ar, b, e);
        } else if (ch >= 0x80 && ensure_ascii) {
            ucs4_t cp;
            size_t k = u8len(s->s, i, s->len, &cp);
            if (cp >= 0x10000) {
                cp -= 0x10000;
                snprintf(e, sizeof e, "\\u%04x\\u%04x", 0xd800 + (cp >> 10), 0xdc00 + (cp & 0x3ff));
            } else {
                snprintf(e, sizeof e, "\\u%04x", cp);
            }
            buf_s(&c->f, &c->ar, b, e);
            i += k;
            continue;
        } else {
            buf_add(&c->f, &c->ar, b, s->s + i, 1);
        }
        i++;
    }
    buf_s(&c->f, &c->ar, b, "\"");
}

static void json_newline(rctx *c, buf *b, const json_opts *o, int level)
{
    buf_s(&c->f, &c->ar, b, "\n");
    for (int i = 0; i < level; i++)
        buf_s(&c->f, &c->ar, b, o->indent);
}

static int str_cmp(const jstr *a, const jstr *b)
{
    int r = memcmp(a->s, b->s, a->len < b->len ? a->len : b->len);
    return r ? r : (a->len > b->len) - (a->len < b->len);
}

/* json.dumps(v, ensure_ascii, indent, separators, sort_keys), as transformers' tojson filter. */
static void json_val(rctx *c, int line, buf *b, val v, const json_opts *o, int level)
{
    char tmp[40];
    if (level > MAX_DATA_DEPTH)
        fail(&c->f, line, "tojson: data nested more than %d deep", MAX_DATA_DEPTH);
    switch (v.k) {
    case V_NONE: buf_s(&c->f, &c->ar, b, "null"); return;
    case V_BOOL: buf_s(&c->f, &c->ar, b, v.u.b ? "true" : "false"); return;
    case V_INT: snprintf(tmp, sizeof tmp, "%lld", v.u.i); buf_s(&c->f, &c->ar, b, tmp); return;
    case V_FLOAT:
        if (isnan(v.u.f))
            snprintf(tmp, sizeof tmp, "NaN");
        else if (isinf(v.u.f))
            snprintf(tmp, sizeof tmp, v.u.f < 0 ? "-Infinity" : "Infinity");
        else
            py_float(v.u.f, tmp, sizeof tmp);
        buf_s(&c->f, &c->ar, b, tmp);
        return;
    case V_STR: json_text(c, b, v.u.s, o->ensure_ascii); return;
    case V_LIST:
        if (!v.u.l->n) {
            buf_s(&c->f, &c->ar, b, "[]");
            return;
        }
        buf_s(&c->f, &c->ar, b, "[");
        for (size_t i = 0; i < v.u.l->n; i++) {
            if (i)
                buf_s(&c->f, &c->ar, b, o->item_sep);
            if (o->indent)
                json_newline(c, b, o, level + 1);
            json_val(c, line, b, v.u.l->v[i], o, level + 1);
        }
        if (o->indent)
            json_newline(c, b, o, level);
        buf_s(&c->f, &c->ar, b, "]");
        return;
    case V_DICT: {
        dict *d = v.u.d;
        if (!d->n) {
            buf_s(&c->f, &c->ar, b, "{}");
            return;
        }
        size_t *order = alloc(&c->f, &c->ar, d->n * sizeof *order);
        for (size_t i = 0; i < d->n; i++) {
            val k = d->k[i];
            if (k.k != V_STR && k.k != V_INT && k.k != V_FLOAT && k.k != V_BOOL && k.k != V_NONE)
                fail(&c->f, line, "tojson: keys must be str, int, float, bool or None, not %s",
                     type_name(k));
            order[i] = i;
        }
        if (o->sort_keys) {
            for (size_t i = 1; i < d->n; i++) {
                for (size_t j = i; j > 0; j--) {
                    val x = d->k[order[j - 1]], y = d->k[order[j]];
                    if (x.k != V_STR || y.k != V_STR)
                        fail(&c->f, line, "tojson: sort_keys needs string keys");
                    if (str_cmp(x.u.s, y.u.s) <= 0)
                        break;
                    size_t t = order[j];
                    order[j] = order[j - 1];
                    order[j - 1] = t;
                }
            }
        }
        buf_s(&c->f, &c->ar, b, "{");
        for (size_t i = 0; i < d->n; i++) {
            val k = d->k[order[i]];
            if (i)
                buf_s(&c->f, &c->ar, b, o->item_sep);
            if (o->indent)
                json_newline(c, b, o, level + 1);
            if (k.k == V_STR) {
                json_text(c, b, k.u.s, o->ensure_ascii);
            } else {
                buf kb = {0};
                json_val(c, line, &kb, k, o, level + 1);
                buf_s(&c->f, &c->ar, b, "\"");
                buf_add(&c->f, &c->ar, b, kb.p, kb.n);
                buf_s(&c->f, &c->ar, b, "\"");
            }
            buf_s(&c->f, &c->ar, b, o->key_sep);
            json_val(c, line, b, d->v[order[i]], o, level + 1);
        }
        if (o->indent)
            json_newline(c, b, o, level);
        buf_s(&c->f, &c->ar, b, "}");
        return;
    }
    default:
        fail(&c->f, line, "tojson: object of type %s is not JSON serializable", type_name(v));
    }
}

/* ---------------------------------------------------------------- equality, order, iteration */

static int vals_eq(rctx *c, val a, val b, int depth)
{
    if (depth > MAX_DATA_DEPTH)
        fail(&c->f, 0, "comparison of data nested more than %d deep", MAX_DATA_DEPTH);
    if (is_num(a) && is_num(b))
        return num_f(a) == num_f(b) && (a.k == V_FLOAT || b.k == V_FLOAT
                                        || num_i(a) == num_i(b));
    if (a.k != b.k)
        return 0;
    switch (a.k) {
    case V_UNDEF:
    case V_NONE: return 1;
    case V_STR: return key_eq(a, b);
    case V_LIST:
        if (a.tuple != b.tuple || a.u.l->n != b.u.l->n)
            return 0;
        for (size_t i = 0; i < a.u.l->n; i++)
            if (!vals_eq(c, a.u.l->v[i], b.u.l->v[i], depth + 1))
                return 0;
        return 1;
    case V_DICT:
        if (a.u.d->n != b.u.d->n)
            return 0;
        for (size_t i = 0; i < a.u.d->n; i++) {
            val *o = dict_find(b.u.d, a.u.d->k[i]);
            if (!o || !vals_eq(c, a.u.d->v[i], *o, depth + 1))
                return 0;
        }
        return 1;
    case V_NS: return a.u.d == b.u.d;
    default: return a.u.fn == b.u.fn;
    }
}

static const char *const CMP_SYM[] = {"==", "!=", "<", "<=", ">", ">=", "in", "not in"};

/* <0, 0, >0 for numbers, strings and lists of those, as Python orders them. */
static int vals_order(rctx *c, int line, int op, val a, val b, int depth)
{
    if (is_num(a) && is_num(b)) {
        if (a.k != V_FLOAT && b.k != V_FLOAT)
            return (num_i(a) > num_i(b)) - (num_i(a) < num_i(b));
        double x = num_f(a), y = num_f(b);
        return (x > y) - (x < y);
    }
    if (a.k == V_STR && b.k == V_STR)
        return str_cmp(a.u.s, b.u.s);
    if (a.k == V_LIST && b.k == V_LIST && a.tuple == b.tuple && depth < MAX_DATA_DEPTH) {
        size_t n = a.u.l->n < b.u.l->n ? a.u.l->n : b.u.l->n;
        for (size_t i = 0; i < n; i++)
            if (!vals_eq(c, a.u.l->v[i], b.u.l->v[i], depth + 1))
                return vals_order(c, line, op, a.u.l->v[i], b.u.l->v[i], depth + 1);
        return (a.u.l->n > b.u.l->n) - (a.u.l->n < b.u.l->n);
    }
    if (a.k == V_UNDEF)
        fail_undef(c, line, a);
    if (b.k == V_UNDEF)
        fail_undef(c, line, b);
    fail(&c->f, line, "'%s' not supported between instances of '%s' and '%s'", CMP_SYM[op],
         type_name(a), type_name(b));
}

/* The items a for loop (or list(), join, ...) sees: list items, dict keys, string characters;
 * nothing for Undefined, as Jinja2's Undefined iterates as empty. */
static list *iterate(rctx *c, int line, val v)
{
    switch (v.k) {
    case V_LIST: return v.u.l;
    case V_UNDEF: return list_new(&c->f, &c->ar, 1);
    case V_DICT: {
        list *l = list_new(&c->f, &c->ar, v.u.d->n);
        for (size_t i = 0; i < v.u.d->n; i++)
            list_push(&c->f, &c->ar, l, v.u.d->k[i]);
        return l;
    }
    case V_STR: {
        const jstr *s = v.u.s;
        list *l = list_new(&c->f, &c->ar, s->len);
        for (size_t i = 0; i < s->len;) {
            ucs4_t cp;
            size_t k = u8len(s->s, i, s->len, &cp);
            list_push(&c->f, &c->ar, l, v_str(mkstr(c, s->s + i, k)));
            i += k;
        }
        return l;
    }
    default: fail(&c->f, line, "'%s' object is not iterable", type_name(v));
    }
}

static int contains(rctx *c, int line, val item, val seq)
{
    switch (seq.k) {
    case V_STR:
        if (item.k != V_STR)
            fail(&c->f, line, "'in <string>' requires string as left operand, not %s",
                 type_name(item));
        return item.u.s->len == 0 || memmem(seq.u.s->s, seq.u.s->len, item.u.s->s,
                                            item.u.s->len) != NULL;
    case V_LIST:
        for (size_t i = 0; i < seq.u.l->n; i++)
            if (vals_eq(c, item, seq.u.l->v[i], 0))
                return 1;
        return 0;
    case V_DICT: return dict_find(seq.u.d, item) != NULL;
    case V_UNDEF: return 0;
    default: fail(&c->f, line, "argument of type '%s' is not iterable", type_name(seq));
    }
}

/* ---------------------------------------------------------------- attribute and item access */

static val get_attr(rctx *c, int line, val obj, const char *name, size_t n)
{
    if (obj.k == V_UNDEF)
        fail_undef(c, line, obj);
    if (obj.k == V_DICT || obj.k == V_NS) {
        val *v = dict_find_s(obj.u.d, name, n);
        if (v)
            return *v;
    }
    return v_undef(fmt(c, "'%s object' has no attribute '%.*s'", type_name(obj), (int)n, name));
}

/* Byte offset of each code point of s (n+1 entries), or NULL when s is ASCII. */
static size_t *cp_offsets(rctx *c, const jstr *s, size_t *ncp)
{
    *ncp = cp_count(s->s, s->len);
    if (*ncp == s->len)
        return NULL;
    size_t *off = alloc(&c->f, &c->ar, (*ncp + 1) * sizeof *off), k = 0;
    for (size_t i = 0; i < s->len;) {
        ucs4_t cp;
        off[k++] = i;
        i += u8len(s->s, i, s->len, &cp);
    }
    off[k] = s->len;
    return off;
}

static val get_item(rctx *c, int line, val obj, val key)
{
    if (obj.k == V_UNDEF)
        fail_undef(c, line, obj);
    if ((obj.k == V_LIST || obj.k == V_STR) && (key.k == V_INT || key.k == V_BOOL)) {
        size_t n, *off = NULL;
        if (obj.k == V_LIST)
            n = obj.u.l->n;
        else
            off = cp_offsets(c, obj.u.s, &n);
        long long i = num_i(key);
        if (i < 0)
            i += (long long)n;
        if (i < 0 || (unsigned long long)i >= n)
            return v_undef(fmt(c, "%s object has no element %lld", type_name(obj), num_i(key)));
        if (obj.k == V_LIST)
            return obj.u.l->v[i];
        size_t a = off ? off[i] : (size_t)i, b = off ? off[i + 1] : (size_t)i + 1;
        return v_str(mkstr(c, obj.u.s->s + a, b - a));
    }
    if (obj.k == V_DICT || obj.k == V_NS) {
        val *v = dict_find(obj.u.d, key);
        if (v)
            return *v;
    }
    if (key.k == V_STR)
        return get_attr(c, line, obj, key.u.s->s, key.u.s->len);
    return v_undef(fmt(c, "%s object has no element of type %s", type_name(obj),
                       type_name(key)));
}

static long long slice_bound(rctx *c, int line, val v, long long dflt)
{
    if (!given(v) || v.k == V_NONE)
        return dflt;
    if (v.k != V_INT && v.k != V_BOOL)
        fail(&c->f, line, "slice indices must be integers or None, not %s", type_name(v));
    return num_i(v);
}

static val get_slice(rctx *c, int line, val obj, val lo, val hi, val st)
{
    if (obj.k == V_UNDEF)
        fail_undef(c, line, obj);
    if (obj.k != V_LIST && obj.k != V_STR)
        return v_undef(fmt(c, "'%s' object is not subscriptable", type_name(obj)));
    size_t n, *off = NULL;
    if (obj.k == V_LIST)
        n = obj.u.l->n;
    else
        off = cp_offsets(c, obj.u.s, &n);
    long long L = (long long)n, s = slice_bound(c, line, st, 1);
    if (s == 0)
        fail(&c->f, line, "slice step cannot be zero");
    if (s == LLONG_MIN)
        s = -LLONG_MAX;
    long long a = slice_bound(c, line, lo, s > 0 ? 0 : L - 1);
    long long b = slice_bound(c, line, hi, s > 0 ? L : -1 - L);
    if (a < 0)
        a = a + L < 0 ? (s > 0 ? 0 : -1) : a + L;
    else if (a >= L)
        a = s > 0 ? L : L - 1;
    if (b < 0)
        b = b + L < 0 ? (s > 0 ? 0 : -1) : b + L;
    else if (b >= L)
        b = s > 0 ? L : L - 1;
    if (obj.k == V_LIST) {
        list *l = list_new(&c->f, &c->ar, 0);
        for (long long i = a; s > 0 ? i < b : i > b; i += s)
            list_push(&c->f, &c->ar, l, obj.u.l->v[i]);
        return v_list(l, obj.tuple);
    }
    buf r = {0};
    for (long long i = a; s > 0 ? i < b : i > b; i += s) {
        size_t x = off ? off[i] : (size_t)i, y = off ? off[i + 1] : (size_t)i + 1;
        buf_add(&c->f, &c->ar, &r, obj.u.s->s + x, y - x);
    }
    return v_str(mkstr(c, r.p ? r.p : "", r.n));
}

/* ---------------------------------------------------------------- arguments */

typedef struct {
    val pos[MAX_ARGS];
    int npos;
    const jstr *kn[MAX_ARGS];
    val kv[MAX_ARGS];
    int nkw;
} args;

static val eval(rctx *c, node *n);

static void eval_args(rctx *c, node *n, args *a)
{
    if (n->nkids > MAX_ARGS || n->nkids2 > MAX_ARGS)
        fail(&c->f, n->line, "more than %d arguments", MAX_ARGS);
    a->npos = n->nkids;
    for (int i = 0; i < n->nkids; i++)
        a->pos[i] = eval(c, n->kids[i]);
    a->nkw = n->nkids2;
    for (int i = 0; i < n->nkids2; i++) {
        a->kn[i] = n->names[i];
        a->kv[i] = eval(c, n->kids2[i]);
    }
}

/* Binds a to the parameters named in params; out[i] is MISSING when not given. */
static void bind(rctx *c, int line, const char *fname, const args *a, const char *const *params,
                 int np, val *out)
{
    for (int i = 0; i < np; i++)
        out[i] = MISSING;
    if (a->npos > np)
        fail(&c->f, line, "%s() takes at most %d argument%s (%d given)", fname, np,
             np == 1 ? "" : "s", a->npos);
    for (int i = 0; i < a->npos; i++)
        out[i] = a->pos[i];
    for (int k = 0; k < a->nkw; k++) {
        int i = lookup(params, np, a->kn[k]->s, a->kn[k]->len);
        if (i < 0)
            fail(&c->f, line, "%s() got an unexpected keyword argument '%s'", fname,
                 a->kn[k]->s);
        if (given(out[i]))
            fail(&c->f, line, "%s() got multiple values for argument '%s'", fname, params[i]);
        out[i] = a->kv[k];
    }
}

static void need(rctx *c, int line, const char *fname, const char *param, val v)
{
    if (!given(v))
        fail(&c->f, line, "%s() missing required argument '%s'", fname, param);
}

static const jstr *need_str(rctx *c, int line, const char *fname, val v)
{
    if (v.k == V_UNDEF)
        fail_undef(c, line, v);
    if (v.k != V_STR)
        fail(&c->f, line, "%s() expects a string, not %s", fname, type_name(v));
    return v.u.s;
}

static long long need_int(rctx *c, int line, const char *fname, val v)
{
    if (v.k == V_UNDEF)
        fail_undef(c, line, v);
    if (v.k != V_INT && v.k != V_BOOL)
        fail(&c->f, line, "%s() expects an integer, not %s", fname, type_name(v));
    return num_i(v);
}

/* ---------------------------------------------------------------- string helpers */

static int in_chars(const jstr *chars, ucs4_t cp)
{
    for (size_t i = 0; i < chars->len;) {
        ucs4_t x;
        i += u8len(chars->s, i, chars->len, &x);
        if (x == cp)
            return 1;
    }
    return 0;
}

/* str.strip / lstrip / rstrip: which bit 1 = left, bit 2 = right; chars NULL = whitespace. */
static val do_strip(rctx *c, const jstr *s, const jstr *chars, int which)
{
    size_t a = 0, b = s->len;
    if (which & 1) {
        while (a < b) {
            ucs4_t cp;
            size_t k = u8len(s->s, a, b, &cp);
            if (chars ? !in_chars(chars, cp) : !py_space(cp))
                break;
            a += k;
        }
    }
    if (which & 2) {
        size_t end = a;
        for (size_t i = a; i < b;) {
            ucs4_t cp;
            size_t k = u8len(s->s, i, b, &cp);
            if (chars ? !in_chars(chars, cp) : !py_space(cp))
                end = i + k;
            i += k;
        }
        b = end;
    }
    if (a == 0 && b == s->len)
        return v_str(s);
    return v_str(mkstr(c, s->s + a, b - a));
}

static val case_map(rctx *c, int line, const jstr *s, int upper)
{
    size_t n = 0;
    uint8_t *r = (upper ? u8_toupper : u8_tolower)((const uint8_t *)s->s, s->len, NULL, NULL,
                                                   NULL, &n);
    if (!r)
        fail(&c->f, line, "cannot change the case of this string");
    jstr *o = mkstr(c, (const char *)r, n);
    free(r);
    return v_str(o);
}

/* Python's str.capitalize() (title) and str.title() (Jinja2's title filter splits words at
 * whitespace, '-', and brackets instead: word_start_on_uncased = 0). */
static val title_case(rctx *c, const jstr *s, int mode)
{
    buf b = {0};
    int prev_cased = 0, first = 1;
    for (size_t i = 0; i < s->len;) {
        ucs4_t cp, o;
        size_t k = u8len(s->s, i, s->len, &cp);
        if (mode == 0)
            o = first ? uc_totitle(cp) : uc_tolower(cp);
        else if (mode == 1)
            o = prev_cased ? uc_tolower(cp) : uc_totitle(cp);
        else
            o = prev_cased ? uc_tolower(cp) : uc_toupper(cp);
        if (mode == 1)
            prev_cased = uc_is_upper(cp) || uc_is_lower(cp)
                         || uc_is_general_category(cp, UC_CATEGORY_Lt);
        else
            prev_cased = !(py_space(cp) || cp == '-' || cp == '(' || cp == '{' || cp == '['
                           || cp == '<');
        first = 0;
        uint8_t u[6];
        int m = u8_uctomb(u, o, sizeof u);
        buf_add(&c->f, &c->ar, &b, (const char *)u, m > 0 ? (size_t)m : 0);
        i += k;
    }
    return v_str(mkstr(c, b.p ? b.p : "", b.n));
}

static val do_replace(rctx *c, int line, const jstr *s, const jstr *old, const jstr *new,
                      long long count)
{
    buf b = {0};
    size_t i = 0;
    long long done = 0;
    if (old->len == 0) {
        for (;;) {
            if (count < 0 || done < count) {
                buf_add(&c->f, &c->ar, &b, new->s, new->len);
                done++;
            }
            if (i >= s->len)
                break;
            ucs4_t cp;
            size_t k = u8len(s->s, i, s->len, &cp);
            buf_add(&c->f, &c->ar, &b, s->s + i, k);
            i += k;
            step(c, line);
        }
        return v_str(mkstr(c, b.p ? b.p : "", b.n));
    }
    while (i <= s->len) {
        const char *hit = (count < 0 || done < count)
                              ? memmem(s->s + i, s->len - i, old->s, old->len) : NULL;
        if (!hit) {
            buf_add(&c->f, &c->ar, &b, s->s + i, s->len - i);
            break;
        }
        size_t at = (size_t)(hit - s->s);
        buf_add(&c->f, &c->ar, &b, s->s + i, at - i);
        buf_add(&c->f, &c->ar, &b, new->s, new->len);
        i = at + old->len;
        done++;
    }
    return v_str(mkstr(c, b.p ? b.p : "", b.n));
}

static val do_split(rctx *c, int line, const jstr *s, val sepv, long long maxsplit)
{
    list *l = list_new(&c->f, &c->ar, 4);
    if (!given(sepv) || sepv.k == V_NONE) {
        size_t i = 0;
        for (;;) {
            while (i < s->len) {
                ucs4_t cp;
                size_t k = u8len(s->s, i, s->len, &cp);
                if (!py_space(cp))
                    break;
                i += k;
            }
            if (i >= s->len)
                break;
            if (maxsplit >= 0 && (long long)l->n >= maxsplit) {
                list_push(&c->f, &c->ar, l, v_str(mkstr(c, s->s + i,
                                                        rstrip_len(s->s + i, s->len - i))));
                break;
            }
            size_t j = i;
            while (j < s->len) {
                ucs4_t cp;
                size_t k = u8len(s->s, j, s->len, &cp);
                if (py_space(cp))
                    break;
                j += k;
            }
            list_push(&c->f, &c->ar, l, v_str(mkstr(c, s->s + i, j - i)));
            i = j;
            step(c, line);
        }
        return v_list(l, 0);
    }
    const jstr *sep = need_str(c, line, "split", sepv);
    if (!sep->len)
        fail(&c->f, line, "split(): empty separator");
    size_t i = 0;
    for (;;) {
        const char *hit = (maxsplit < 0 || (long long)l->n < maxsplit)
                              ? memmem(s->s + i, s->len - i, sep->s, sep->len) : NULL;
        size_t end = hit ? (size_t)(hit - s->s) : s->len;
        list_push(&c->f, &c->ar, l, v_str(mkstr(c, s->s + i, end - i)));
        if (!hit)
            break;
        i = end + sep->len;
        step(c, line);
    }
    return v_list(l, 0);
}

static int affix(rctx *c, int line, const jstr *s, val what, int end)
{
    if (what.k == V_LIST) {
        for (size_t i = 0; i < what.u.l->n; i++)
            if (affix(c, line, s, what.u.l->v[i], end))
                return 1;
        return 0;
    }
    const jstr *x = need_str(c, line, end ? "endswith" : "startswith", what);
    return x->len <= s->len && !memcmp(s->s + (end ? s->len - x->len : 0), x->s, x->len);
}

static val do_join(rctx *c, int line, val seq, const jstr *sep, val attr)
{
    list *l = iterate(c, line, seq);
    buf b = {0};
    for (size_t i = 0; i < l->n; i++) {
        val v = l->v[i];
        if (given(attr) && attr.k != V_NONE)
            v = get_item(c, line, v, attr);
        if (i)
            buf_add(&c->f, &c->ar, &b, sep->s, sep->len);
        const jstr *s = to_str(c, v);
        buf_add(&c->f, &c->ar, &b, s->s, s->len);
    }
    return v_str(mkstr(c, b.p ? b.p : "", b.n));
}

/* ---------------------------------------------------------------- methods */

static val call_method(rctx *c, int line, val obj, const jstr *name, const args *a)
{
    const char *m = name->s;
    val p[3];
    if (obj.k == V_STR) {
        const jstr *s = obj.u.s;
        static const char *const chars[] = {"chars"}, *const sp[] = {"sep", "maxsplit"},
                                 *const one[] = {"x"}, *const rp[] = {"old", "new", "count"};
        if (!strcmp(m, "strip") || !strcmp(m, "lstrip") || !strcmp(m, "rstrip")) {
            bind(c, line, m, a, chars, 1, p);
            const jstr *ch = given(p[0]) && p[0].k != V_NONE ? need_str(c, line, m, p[0]) : NULL;
            return do_strip(c, s, ch, m[0] == 'l' ? 1 : m[0] == 'r' ? 2 : 3);
        }
        if (!strcmp(m, "split")) {
            bind(c, line, m, a, sp, 2, p);
            return do_split(c, line, s, p[0], given(p[1]) ? need_int(c, line, m, p[1]) : -1);
        }
        if (!strcmp(m, "startswith") || !strcmp(m, "endswith")) {
            bind(c, line, m, a, one, 1, p);
            need(c, line, m, "prefix", p[0]);
            return v_bool(affix(c, line, s, p[0], m[0] == 'e'));
        }
        if (!strcmp(m, "upper") || !strcmp(m, "lower")) {
            bind(c, line, m, a, one, 0, p);
            return case_map(c, line, s, m[0] == 'u');
        }
        if (!strcmp(m, "title") || !strcmp(m, "capitalize")) {
            bind(c, line, m, a, one, 0, p);
            return title_case(c, s, m[0] == 't' ? 1 : 0);
        }
        if (!strcmp(m, "replace")) {
            bind(c, line, m, a, rp, 3, p);
            need(c, line, m, "new", p[1]);
            return do_replace(c, line, s, need_str(c, line, m, p[0]), need_str(c, line, m, p[1]),
                              given(p[2]) ? need_int(c, line, m, p[2]) : -1);
        }
        if (!strcmp(m, "join")) {
            bind(c, line, m, a, one, 1, p);
            need(c, line, m, "iterable", p[0]);
            return do_join(c, line, p[0], s, MISSING);
        }
        if (!strcmp(m, "find") || !strcmp(m, "count")) {
            bind(c, line, m, a, one, 1, p);
            const jstr *x = need_str(c, line, m, p[0]);
            if (m[0] == 'f') {
                const char *hit = memmem(s->s, s->len, x->s, x->len);
                return v_int(hit ? (long long)cp_count(s->s, (size_t)(hit - s->s)) : -1);
            }
            if (!x->len)
                return v_int((long long)cp_count(s->s, s->len) + 1);
            long long k = 0;
            for (const char *q = s->s, *e = s->s + s->len;
                 (q = memmem(q, (size_t)(e - q), x->s, x->len)) != NULL; q += x->len)
                k++;
            return v_int(k);
        }
    } else if (obj.k == V_DICT) {
        static const char *const gp[] = {"key", "default"};
        if (!strcmp(m, "get")) {
            bind(c, line, m, a, gp, 2, p);
            need(c, line, m, "key", p[0]);
            val *v = dict_find(obj.u.d, p[0]);
            return v ? *v : given(p[1]) ? p[1] : v_none();
        }
        if (!strcmp(m, "items") || !strcmp(m, "keys") || !strcmp(m, "values")) {
            bind(c, line, m, a, gp, 0, p);
            list *l = list_new(&c->f, &c->ar, obj.u.d->n);
            for (size_t i = 0; i < obj.u.d->n; i++) {
                val item = m[0] == 'k' ? obj.u.d->k[i] : obj.u.d->v[i];
                if (m[0] == 'i') {
                    list *pair = list_new(&c->f, &c->ar, 2);
                    list_push(&c->f, &c->ar, pair, obj.u.d->k[i]);
                    list_push(&c->f, &c->ar, pair, obj.u.d->v[i]);
                    item = v_list(pair, 1);
                }
                list_push(&c->f, &c->ar, l, item);
            }
            return v_list(l, 0);
        }
    } else if (obj.k == V_LIST) {
        static const char *const mut[] = {"append", "extend", "insert", "pop", "remove", "clear",
                                          "sort", "reverse"};
        if (lookup(mut, 8, name->s, name->len) >= 0)
            fail(&c->f, line, "%s.%s() is not allowed: templates cannot modify lists",
                 type_name(obj), m);
    } else if (obj.k == V_UNDEF) {
        fail_undef(c, line, obj);
    }
    fail(&c->f, line, "'%s' object has no method '%s'", type_name(obj), m);
}

/* ---------------------------------------------------------------- tests */

static int run_test(rctx *c, int line, int id, val v, const args *a)
{
    val arg = a->npos ? a->pos[0] : MISSING;
    switch (id) {
    case TE_DEFINED: return v.k != V_UNDEF;
    case TE_UNDEFINED: return v.k == V_UNDEF;
    case TE_NONE: return v.k == V_NONE;
    case TE_STRING: return v.k == V_STR;
    case TE_NUMBER: return is_num(v);
    case TE_INTEGER: return v.k == V_INT;
    case TE_FLOAT: return v.k == V_FLOAT;
    case TE_BOOLEAN: return v.k == V_BOOL;
    case TE_TRUE: return v.k == V_BOOL && v.u.b;
    case TE_FALSE: return v.k == V_BOOL && !v.u.b;
    case TE_MAPPING: return v.k == V_DICT;
    case TE_ITERABLE: return v.k == V_STR || v.k == V_LIST || v.k == V_DICT || v.k == V_UNDEF;
    case TE_SEQUENCE: return v.k == V_STR || v.k == V_LIST || v.k == V_DICT || v.k == V_UNDEF;
    case TE_CALLABLE: return v.k == V_FUNC;
    case TE_ODD:
    case TE_EVEN:
        return (need_int(c, line, TESTS[id], v) & 1) == (id == TE_ODD);
    case TE_DIVISIBLEBY: {
        need(c, line, "divisibleby", "num", arg);
        long long d = need_int(c, line, "divisibleby", arg);
        if (!d)
            fail(&c->f, line, "divisibleby(0)");
        return need_int(c, line, "divisibleby", v) % d == 0;
    }
    case TE_IN:
        need(c, line, "in", "seq", arg);
        return contains(c, line, v, arg);
    case TE_SAMEAS:
        need(c, line, "sameas", "other", arg);
        if (v.k != arg.k)
            return 0;
        if (v.k == V_LIST || v.k == V_DICT || v.k == V_NS)
            return v.u.l == arg.u.l;
        return vals_eq(c, v, arg, 0);
    case TE_LOWER:
    case TE_UPPER: {
        if (v.k != V_STR)
            return 0;
        int cased = 0;
        for (size_t i = 0; i < v.u.s->len;) {
            ucs4_t cp;
            i += u8len(v.u.s->s, i, v.u.s->len, &cp);
            if (id == TE_LOWER ? uc_is_upper(cp) : uc_is_lower(cp))
                return 0;
            cased |= uc_is_upper(cp) || uc_is_lower(cp);
        }
        return cased;
    }
    default: {
        need(c, line, TESTS[id], "other", arg);
        int op = id <= TE_EQ2 ? C_EQ : id <= TE_NE2 ? C_NE : id <= TE_LT2 ? C_LT
                 : id <= TE_LE2 ? C_LE : id <= TE_GT2 ? C_GT : C_GE;
        if (op == C_EQ || op == C_NE)
            return vals_eq(c, v, arg, 0) == (op == C_EQ);
        int r = vals_order(c, line, op, v, arg, 0);
        return op == C_LT ? r < 0 : op == C_LE ? r <= 0 : op == C_GT ? r > 0 : r >= 0;
    }
    }
}

static int test_by_name(rctx *c, int line, val name, val v, const args *a)
{
    const jstr *s = need_str(c, line, "select", name);
    int id = lookup(TESTS, TE_N, s->s, s->len);
    if (id < 0)
        fail(&c->f, line, "unknown test '%s'", s->s);
    return run_test(c, line, id, v, a);
}

/* ---------------------------------------------------------------- filters */

static val run_filter(rctx *c, int line, int id, val v, const args *a);

/* select / reject / selectattr / rejectattr: a->pos[skip..] are the test name and its args. */
static val select_items(rctx *c, int line, val seq, const args *a, int by_attr, int keep)
{
    const char *fname = by_attr ? (keep ? "selectattr" : "rejectattr")
                                : (keep ? "select" : "reject");
    if (a->nkw)
        fail(&c->f, line, "%s() takes no keyword arguments", fname);
    int k = 0;
    val attr = MISSING;
    if (by_attr) {
        if (!a->npos)
            fail(&c->f, line, "%s() missing the attribute name", fname);
        attr = a->pos[k++];
    }
    args targs = {.npos = 0};
    for (int i = k + 1; i < a->npos; i++)
        targs.pos[targs.npos++] = a->pos[i];
    list *l = iterate(c, line, seq), *r = list_new(&c->f, &c->ar, l->n);
    for (size_t i = 0; i < l->n; i++) {
        step(c, line);
        val item = l->v[i], x = item;
        if (by_attr) {
            const jstr *path = need_str(c, line, fname, attr);
            /* "a.b" walks nested attributes, as Jinja2's attribute getters do */
            for (size_t s = 0; s <= path->len;) {
                const char *dot = memchr(path->s + s, '.', path->len - s);
                size_t e = dot ? (size_t)(dot - path->s) : path->len;
                x = get_item(c, line, x, v_str(mkstr(c, path->s + s, e - s)));
                s = e + 1;
            }
        }
        int ok = k < a->npos ? test_by_name(c, line, a->pos[k], x, &targs) : truthy(x);
        if (ok == keep)
            list_push(&c->f, &c->ar, r, item);
    }
    return v_list(r, 0);
}

static val filter_map(rctx *c, int line, val seq, const args *a)
{
    list *l = iterate(c, line, seq), *r = list_new(&c->f, &c->ar, l->n);
    val attr = MISSING, dflt = MISSING;
    for (int k = 0; k < a->nkw; k++) {
        if (!strcmp(a->kn[k]->s, "attribute"))
            attr = a->kv[k];
        else if (!strcmp(a->kn[k]->s, "default"))
            dflt = a->kv[k];
        else
            fail(&c->f, line, "map() got an unexpected keyword argument '%s'", a->kn[k]->s);
    }
    int fid = -1;
    args fargs = {.npos = 0};
    if (!given(attr)) {
        if (!a->npos)
            fail(&c->f, line, "map() needs a filter name or attribute=");
        const jstr *fn = need_str(c, line, "map", a->pos[0]);
        fid = lookup(FILTERS, FI_N, fn->s, fn->len);
        if (fid < 0)
            fail(&c->f, line, "unknown filter '%s'", fn->s);
        for (int i = 1; i < a->npos; i++)
            fargs.pos[fargs.npos++] = a->pos[i];
    }
    for (size_t i = 0; i < l->n; i++) {
        step(c, line);
        val x;
        if (fid >= 0) {
            x = run_filter(c, line, fid, l->v[i], &fargs);
        } else {
            x = get_item(c, line, l->v[i], attr);
            if (x.k == V_UNDEF && given(dflt))
                x = dflt;
        }
        list_push(&c->f, &c->ar, r, x);
    }
    return v_list(r, 0);
}

static val to_int(rctx *c, val v, val dflt, long long base)
{
    switch (v.k) {
    case V_INT:
    case V_BOOL: return v_int(num_i(v));
    case V_FLOAT:
        if (isfinite(v.u.f) && fabs(v.u.f) < 9.2e18)
            return v_int((long long)v.u.f);
        break;
    case V_STR: {
        char *end;
        const char *s = v.u.s->s + lstrip_len(v.u.s->s, v.u.s->len);
        errno = 0;
        long long i = strtoll(s, &end, (int)base);
        if (end != s && !errno && rstrip_len(end, strlen(end)) == 0)
            return v_int(i);
        double d = strtod(s, &end);
        if (end != s && rstrip_len(end, strlen(end)) == 0 && isfinite(d) && fabs(d) < 9.2e18)
            return v_int((long long)d);
        break;
    }
    default: break;
    }
    (void)c;
    return given(dflt) ? dflt : v_int(0);
}

static val run_filter(rctx *c, int line, int id, val v, const args *a)
{
    val p[5];
    const char *name = FILTERS[id];
    switch (id) {
    case FI_TRIM: {
        static const char *const ps[] = {"chars"};
        bind(c, line, name, a, ps, 1, p);
        const jstr *ch = given(p[0]) && p[0].k != V_NONE ? need_str(c, line, name, p[0]) : NULL;
        return do_strip(c, to_str(c, v), ch, 3);
    }
    case FI_LENGTH:
    case FI_COUNT:
        bind(c, line, name, a, NULL, 0, p);
        switch (v.k) {
        case V_STR: return v_int((long long)cp_count(v.u.s->s, v.u.s->len));
        case V_LIST: return v_int((long long)v.u.l->n);
        case V_DICT: return v_int((long long)v.u.d->n);
        case V_UNDEF: return v_int(0);
        default: fail(&c->f, line, "object of type '%s' has no len()", type_name(v));
        }
    case FI_UPPER:
    case FI_LOWER:
        bind(c, line, name, a, NULL, 0, p);
        return case_map(c, line, to_str(c, v), id == FI_UPPER);
    case FI_CAPITALIZE:
    case FI_TITLE:
        bind(c, line, name, a, NULL, 0, p);
        return title_case(c, to_str(c, v), id == FI_CAPITALIZE ? 0 : 2);
    case FI_DEFAULT:
    case FI_D: {
        static const char *const ps[] = {"default_value", "boolean"};
        bind(c, line, name, a, ps, 2, p);
        val dv = given(p[0]) ? p[0] : v_str(mkstr(c, "", 0));
        if (v.k == V_UNDEF || (given(p[1]) && truthy(p[1]) && !truthy(v)))
            return dv;
        return v;
    }
    case FI_TOJSON: {
        static const char *const ps[] = {"ensure_ascii", "indent", "separators", "sort_keys"};
        args b = *a;
        /* tojson(4): the first positional argument of Jinja's own tojson is the indent */
        if (b.npos == 1 && b.nkw == 0 && (b.pos[0].k == V_INT || b.pos[0].k == V_NONE)) {
            b.npos = 0;
            b.kn[0] = mkstr(c, "indent", 6);
            b.kv[0] = a->pos[0];
            b.nkw = 1;
        }
        bind(c, line, name, &b, ps, 4, p);
        json_opts o = {NULL, ", ", ": ", given(p[3]) && truthy(p[3]),
                       given(p[0]) && truthy(p[0])};
        if (given(p[1]) && p[1].k != V_NONE) {
            if (p[1].k == V_STR) {
                o.indent = p[1].u.s->s;
            } else {
                long long k = need_int(c, line, name, p[1]);
                if (k > 64)
                    fail(&c->f, line, "tojson: indent %lld is too large", k);
                char *sp = alloc(&c->f, &c->ar, (size_t)(k > 0 ? k : 0) + 1);
                memset(sp, ' ', (size_t)(k > 0 ? k : 0));
                sp[k > 0 ? k : 0] = '\0';
                o.indent = sp;
            }
            o.item_sep = ",";
        }
        if (given(p[2]) && p[2].k != V_NONE) {
            if (p[2].k != V_LIST || p[2].u.l->n != 2)
                fail(&c->f, line, "tojson: separators must be a pair of strings");
            o.item_sep = need_str(c, line, name, p[2].u.l->v[0])->s;
            o.key_sep = need_str(c, line, name, p[2].u.l->v[1])->s;
        }
        buf out = {0};
        json_val(c, line, &out, v, &o, 0);
        return v_str(mkstr(c, out.p, out.n));
    }
    case FI_STRING:
        bind(c, line, name, a, NULL, 0, p);
        return v_str(to_str(c, v));
    case FI_JOIN: {
        static const char *const ps[] = {"d", "attribute"};
        bind(c, line, name, a, ps, 2, p);
        const jstr *sep = given(p[0]) ? to_str(c, p[0]) : mkstr(c, "", 0);
        return do_join(c, line, v, sep, p[1]);
    }
    case FI_FIRST:
    case FI_LAST: {
        bind(c, line, name, a, NULL, 0, p);
        list *l = iterate(c, line, v);
        if (!l->n)
            return v_undef(fmt(c, "No %s item, sequence was empty.", name));
        return l->v[id == FI_FIRST ? 0 : l->n - 1];
    }
    case FI_ITEMS: {
        bind(c, line, name, a, NULL, 0, p);
        if (v.k == V_UNDEF)
            return v_list(list_new(&c->f, &c->ar, 1), 0);
        if (v.k != V_DICT)
            fail(&c->f, line, "items: can only get item pairs from a mapping, not %s",
                 type_name(v));
        args none = {.npos = 0};
        return call_method(c, line, v, mkstr(c, "items", 5), &none);
    }
    case FI_LIST: {
        bind(c, line, name, a, NULL, 0, p);
        list *l = iterate(c, line, v), *r = list_new(&c->f, &c->ar, l->n);
        for (size_t i = 0; i < l->n; i++)
            list_push(&c->f, &c->ar, r, l->v[i]);
        return v_list(r, 0);
    }
    case FI_SELECT: return select_items(c, line, v, a, 0, 1);
    case FI_REJECT: return select_items(c, line, v, a, 0, 0);
    case FI_SELECTATTR: return select_items(c, line, v, a, 1, 1);
    case FI_REJECTATTR: return select_items(c, line, v, a, 1, 0);
    case FI_MAP: return filter_map(c, line, v, a);
    case FI_REPLACE: {
        static const char *const ps[] = {"old", "new", "count"};
        bind(c, line, name, a, ps, 3, p);
        need(c, line, name, "new", p[1]);
        return do_replace(c, line, to_str(c, v), to_str(c, p[0]), to_str(c, p[1]),
                          given(p[2]) && p[2].k != V_NONE ? need_int(c, line, name, p[2]) : -1);
    }
    case FI_INT: {
        static const char *const ps[] = {"default", "base"};
        bind(c, line, name, a, ps, 2, p);
        long long base = given(p[1]) ? need_int(c, line, name, p[1]) : 10;
        if (base != 0 && (base < 2 || base > 36))
            fail(&c->f, line, "int(): base must be 0 or 2..36");
        return to_int(c, v, p[0], base);
    }
    case FI_FLOAT: {
        static const char *const ps[] = {"default"};
        bind(c, line, name, a, ps, 1, p);
        if (is_num(v))
            return v_float(num_f(v));
        if (v.k == V_STR) {
            char *end;
            const char *s = v.u.s->s + lstrip_len(v.u.s->s, v.u.s->len);
            double d = strtod(s, &end);
            if (end != s && rstrip_len(end, strlen(end)) == 0)
                return v_float(d);
        }
        return given(p[0]) ? p[0] : v_float(0.0);
    }
    case FI_ABS:
        bind(c, line, name, a, NULL, 0, p);
        if (v.k == V_FLOAT)
            return v_float(fabs(v.u.f));
        if (v.k == V_INT || v.k == V_BOOL) {
            long long i = num_i(v);
            if (i == LLONG_MIN)
                fail(&c->f, line, "integer overflow");
            return v_int(i < 0 ? -i : i);
        }
        fail(&c->f, line, "bad operand type for abs(): '%s'", type_name(v));
    case FI_REVERSE: {
        bind(c, line, name, a, NULL, 0, p);
        if (v.k == V_STR)
            return get_slice(c, line, v, MISSING, MISSING, v_int(-1));
        list *l = iterate(c, line, v), *r = list_new(&c->f, &c->ar, l->n);
        for (size_t i = l->n; i > 0; i--)
            list_push(&c->f, &c->ar, r, l->v[i - 1]);
        return v_list(r, 0);
    }
    default: /* FI_SAFE: there is no autoescaping, so nothing to mark */
        bind(c, line, name, a, NULL, 0, p);
        return v;
    }
}

/* ---------------------------------------------------------------- expressions */

static val lookup_name(rctx *c, const jstr *name)
{
    for (frame *f = c->scope; f; f = f->up) {
        val *v = dict_find_s(f->vars, name->s, name->len);
        if (v)
            return *v;
    }
    val *v = dict_find_s(c->globals, name->s, name->len);
    if (v)
        return *v;
    static const char *const fns[] = {"raise_exception", "namespace", "range", "dict",
                                      "strftime_now"};
    int fn = lookup(fns, 5, name->s, name->len);
    if (fn >= 0) {
        val r = {.k = V_FUNC};
        r.u.fn = fn;
        return r;
    }
    return v_undef(fmt(c, "'%s' is undefined", name->s));
}

static val call_global(rctx *c, int line, int fn, const args *a)
{
    val p[3];
    switch (fn) {
    case F_RAISE: {
        static const char *const ps[] = {"message"};
        bind(c, line, "raise_exception", a, ps, 1, p);
        const jstr *msg = given(p[0]) ? to_str(c, p[0]) : mkstr(c, "", 0);
        lr_error_set(c->f.err, LR_EINVAL, "%s", msg->s);
        longjmp(c->f.jb, 1);
    }
    case F_NAMESPACE:
    case F_DICT: {
        dict *d = dict_new(&c->f, &c->ar);
        const char *fname = fn == F_DICT ? "dict" : "namespace";
        if (a->npos > 1)
            fail(&c->f, line, "%s() takes at most 1 positional argument", fname);
        if (a->npos) {
            if (a->pos[0].k != V_DICT)
                fail(&c->f, line, "%s() expects a mapping, not %s", fname, type_name(a->pos[0]));
            for (size_t i = 0; i < a->pos[0].u.d->n; i++)
                dict_set(&c->f, &c->ar, d, a->pos[0].u.d->k[i], a->pos[0].u.d->v[i]);
        }
        for (int i = 0; i < a->nkw; i++)
            dict_set(&c->f, &c->ar, d, v_str(a->kn[i]), a->kv[i]);
        return v_dict(d, fn == F_DICT ? V_DICT : V_NS);
    }
    case F_RANGE: {
        if (a->nkw || a->npos < 1 || a->npos > 3)
            fail(&c->f, line, "range() takes 1 to 3 positional arguments");
        long long lo = 0, hi, st = 1;
        if (a->npos == 1) {
            hi = need_int(c, line, "range", a->pos[0]);
        } else {
            lo = need_int(c, line, "range", a->pos[0]);
            hi = need_int(c, line, "range", a->pos[1]);
            if (a->npos == 3)
                st = need_int(c, line, "range", a->pos[2]);
        }
        if (st == 0)
            fail(&c->f, line, "range() arg 3 must not be zero");
        /* count computed in double: the bounds may be anywhere in long long */
        double cnt = st > 0 ? ceil(((double)hi - (double)lo) / (double)st)
                            : ceil(((double)lo - (double)hi) / -(double)st);
        if (cnt > JINJA_MAX_RANGE)
            fail(&c->f, line, "range() of %.0f items is over the limit of %d", cnt,
                 JINJA_MAX_RANGE);
        list *l = list_new(&c->f, &c->ar, cnt > 0 ? (size_t)cnt : 1);
        for (long long i = 0; i < (long long)cnt; i++)
            list_push(&c->f, &c->ar, l, v_int(lo + i * st));
        return v_list(l, 0);
    }
    default: {
        static const char *const ps[] = {"format"};
        bind(c, line, "strftime_now", a, ps, 1, p);
        const jstr *f = need_str(c, line, "strftime_now", p[0]);
        char out[256];
        time_t now = time(NULL);
        struct tm tm;
        localtime_r(&now, &tm);
        size_t n = f->len ? strftime(out, sizeof out, f->s, &tm) : 0;
        return v_str(mkstr(c, out, n));
    }
    }
}

static val arith(rctx *c, int line, int op, val a, val b)
{
    static const char *const sym[] = {"+", "-", "*", "/", "//", "%", "**"};
    if (a.k == V_UNDEF)
        fail_undef(c, line, a);
    if (b.k == V_UNDEF)
        fail_undef(c, line, b);
    if (is_num(a) && is_num(b)) {
        int ints = a.k != V_FLOAT && b.k != V_FLOAT;
        long long x = num_i(a), y = num_i(b), r;
        double fx = num_f(a), fy = num_f(b);
        switch (op) {
        case OP_ADD:
            if (!ints)
                return v_float(fx + fy);
            if (__builtin_add_overflow(x, y, &r))
                fail(&c->f, line, "integer overflow");
            return v_int(r);
        case OP_SUB:
            if (!ints)
                return v_float(fx - fy);
            if (__builtin_sub_overflow(x, y, &r))
                fail(&c->f, line, "integer overflow");
            return v_int(r);
        case OP_MUL:
            if (!ints)
                return v_float(fx * fy);
            if (__builtin_mul_overflow(x, y, &r))
                fail(&c->f, line, "integer overflow");
            return v_int(r);
        case OP_DIV:
            if (fy == 0.0)
                fail(&c->f, line, "division by zero");
            return v_float(fx / fy);
        case OP_FLOORDIV:
        case OP_MOD:
            if (fy == 0.0)
                fail(&c->f, line, "%s by zero", op == OP_MOD ? "modulo" : "division");
            if (ints) {
                if (x == LLONG_MIN && y == -1)
                    fail(&c->f, line, "integer overflow");
                long long q = x / y, m = x % y;
                if (m && ((m < 0) != (y < 0))) {
                    q--;
                    m += y;
                }
                return v_int(op == OP_MOD ? m : q);
            } else {
                double m = fmod(fx, fy);
                if (m != 0.0 && ((m < 0) != (fy < 0)))
                    m += fy;
                return v_float(op == OP_MOD ? m : floor((fx - m) / fy + 0.5));
            }
        default:
            if (ints && y >= 0) {
                /* |x| >= 2 overflows within 64 steps; 0, 1 and -1 are answered directly */
                if (x == 0 || x == 1)
                    return v_int(y == 0 ? 1 : x);
                if (x == -1)
                    return v_int((y & 1) ? -1 : 1);
                long long acc = 1;
                for (long long i = 0; i < y; i++)
                    if (__builtin_mul_overflow(acc, x, &acc))
                        fail(&c->f, line, "integer overflow");
                return v_int(acc);
            }
            return v_float(pow(fx, fy));
        }
    }
    if (op == OP_ADD && a.k == V_STR && b.k == V_STR) {
        jstr *s = alloc(&c->f, &c->ar, sizeof *s + a.u.s->len + b.u.s->len + 1);
        memcpy(s->s, a.u.s->s, a.u.s->len);
        memcpy(s->s + a.u.s->len, b.u.s->s, b.u.s->len);
        s->len = a.u.s->len + b.u.s->len;
        s->s[s->len] = '\0';
        return v_str(s);
    }
    if (op == OP_ADD && a.k == V_LIST && b.k == V_LIST && a.tuple == b.tuple) {
        list *l = list_new(&c->f, &c->ar, a.u.l->n + b.u.l->n);
        for (size_t i = 0; i < a.u.l->n; i++)
            list_push(&c->f, &c->ar, l, a.u.l->v[i]);
        for (size_t i = 0; i < b.u.l->n; i++)
            list_push(&c->f, &c->ar, l, b.u.l->v[i]);
        return v_list(l, a.tuple);
    }
    if (op == OP_MUL && ((a.k == V_STR || a.k == V_LIST) && (b.k == V_INT || b.k == V_BOOL))) {
        long long k = num_i(b);
        size_t unit = a.k == V_STR ? a.u.s->len : a.u.l->n;
        if (k < 0)
            k = 0;
        if (unit && (unsigned long long)k > (JINJA_MAX_MEMORY / unit))
            fail(&c->f, line, "repetition of %zu items %lld times is too large", unit, k);
        if (a.k == V_STR) {
            buf r = {0};
            for (long long i = 0; i < k; i++)
                buf_add(&c->f, &c->ar, &r, a.u.s->s, a.u.s->len);
            return v_str(mkstr(c, r.p ? r.p : "", r.n));
        }
        list *l = list_new(&c->f, &c->ar, unit * (size_t)k);
        for (long long i = 0; i < k; i++)
            for (size_t j = 0; j < unit; j++)
                list_push(&c->f, &c->ar, l, a.u.l->v[j]);
        return v_list(l, a.tuple);
    }
    if (op == OP_MUL && (a.k == V_INT || a.k == V_BOOL) && (b.k == V_STR || b.k == V_LIST))
        return arith(c, line, op, b, a);
    if (op == OP_ADD && a.k == V_STR)
        fail(&c->f, line, "can only concatenate str (not \"%s\") to str", type_name(b));
    if (op == OP_MOD && a.k == V_STR)
        fail(&c->f, line, "string formatting with %% is not supported");
    fail(&c->f, line, "unsupported operand type(s) for %s: '%s' and '%s'", sym[op],
         type_name(a), type_name(b));
}

static val eval(rctx *c, node *n)
{
    step(c, n->line);
    switch (n->kind) {
    case E_CONST: return n->lit;
    case E_NAME: return lookup_name(c, n->str);
    case E_ATTR: return get_attr(c, n->line, eval(c, n->a), n->str->s, n->str->len);
    case E_ITEM: {
        val obj = eval(c, n->a);
        return get_item(c, n->line, obj, eval(c, n->b));
    }
    case E_SLICE: {
        val obj = eval(c, n->a), parts[3];
        for (int i = 0; i < 3; i++)
            parts[i] = n->kids[i] ? eval(c, n->kids[i]) : MISSING;
        return get_slice(c, n->line, obj, parts[0], parts[1], parts[2]);
    }
    case E_CALL: {
        args a;
        if (n->a->kind == E_ATTR) {
            val obj = eval(c, n->a->a);
            if (obj.k == V_STR || obj.k == V_DICT || obj.k == V_LIST || obj.k == V_UNDEF) {
                eval_args(c, n, &a);
                return call_method(c, n->line, obj, n->a->str, &a);
            }
            val f = get_attr(c, n->line, obj, n->a->str->s, n->a->str->len);
            if (f.k == V_UNDEF)
                fail_undef(c, n->line, f);
            if (f.k != V_FUNC)
                fail(&c->f, n->line, "'%s' object is not callable", type_name(f));
            eval_args(c, n, &a);
            return call_global(c, n->line, f.u.fn, &a);
        }
        val f = eval(c, n->a);
        if (f.k == V_UNDEF)
            fail_undef(c, n->line, f);
        if (f.k != V_FUNC)
            fail(&c->f, n->line, "'%s' object is not callable", type_name(f));
        eval_args(c, n, &a);
        return call_global(c, n->line, f.u.fn, &a);
    }
    case E_FILTER: {
        args a;
        val v = eval(c, n->a);
        eval_args(c, n, &a);
        return run_filter(c, n->line, n->op, v, &a);
    }
    case E_TEST: {
        args a;
        val v = eval(c, n->a);
        eval_args(c, n, &a);
        int r = run_test(c, n->line, n->op & 0xff, v, &a);
        return v_bool((n->op >> 8) ? !r : r);
    }
    case E_NEG:
    case E_POS: {
        val v = eval(c, n->a);
        if (v.k == V_UNDEF)
            fail_undef(c, n->line, v);
        if (!is_num(v))
            fail(&c->f, n->line, "bad operand type for unary %c: '%s'",
                 n->kind == E_NEG ? '-' : '+', type_name(v));
        if (n->kind == E_POS)
            return v.k == V_BOOL ? v_int(v.u.b) : v;
        if (v.k == V_FLOAT)
            return v_float(-v.u.f);
        if (num_i(v) == LLONG_MIN)
            fail(&c->f, n->line, "integer overflow");
        return v_int(-num_i(v));
    }
    case E_NOT: return v_bool(!truthy(eval(c, n->a)));
    case E_AND: {
        val a = eval(c, n->a);
        return truthy(a) ? eval(c, n->b) : a;
    }
    case E_OR: {
        val a = eval(c, n->a);
        return truthy(a) ? a : eval(c, n->b);
    }
    case E_BIN: {
        val a = eval(c, n->a);
        return arith(c, n->line, n->op, a, eval(c, n->b));
    }
    case E_CONCAT: {
        buf b = {0};
        for (int i = 0; i < n->nkids; i++) {
            const jstr *s = to_str(c, eval(c, n->kids[i]));
            buf_add(&c->f, &c->ar, &b, s->s, s->len);
        }
        return v_str(mkstr(c, b.p ? b.p : "", b.n));
    }
    case E_CMP: {
        val left = eval(c, n->a);
        for (int i = 0; i < n->nkids; i++) {
            val right = eval(c, n->kids[i]);
            int op = n->ops[i], r;
            if (op == C_EQ || op == C_NE) {
                r = vals_eq(c, left, right, 0) == (op == C_EQ);
            } else if (op == C_IN || op == C_NOTIN) {
                r = contains(c, n->line, left, right) == (op == C_IN);
            } else {
                int o = vals_order(c, n->line, op, left, right, 0);
                r = op == C_LT ? o < 0 : op == C_LE ? o <= 0 : op == C_GT ? o > 0 : o >= 0;
            }
            if (!r)
                return v_bool(0);
            left = right;
        }
        return v_bool(1);
    }
    case E_COND:
        if (truthy(eval(c, n->a)))
            return eval(c, n->b);
        return n->c ? eval(c, n->c) : v_undef("the inline if-expression had no else branch");
    case E_LIST: {
        list *l = list_new(&c->f, &c->ar, (size_t)n->nkids);
        for (int i = 0; i < n->nkids; i++)
            list_push(&c->f, &c->ar, l, eval(c, n->kids[i]));
        return v_list(l, n->op);
    }
    default: { /* E_DICT */
        dict *d = dict_new(&c->f, &c->ar);
        for (int i = 0; i < n->nkids; i++) {
            val k = eval(c, n->kids[i]);
            if (k.k == V_LIST && !k.tuple)
                fail(&c->f, n->line, "unhashable type: 'list'");
            if (k.k == V_DICT || k.k == V_NS || k.k == V_UNDEF)
                fail(&c->f, n->line, "unhashable dict key of type %s", type_name(k));
            dict_set(&c->f, &c->ar, d, k, eval(c, n->kids2[i]));
        }
        return v_dict(d, V_DICT);
    }
    }
}

/* ---------------------------------------------------------------- statements */

enum { SIG_NONE, SIG_BREAK, SIG_CONTINUE };

static int exec_body(rctx *c, node **body, int n);

static void set_var(rctx *c, const jstr *name, val v)
{
    dict_set(&c->f, &c->ar, c->scope->vars, v_str(name), v);
}

static void bind_targets(rctx *c, node *n, val item)
{
    if (n->nnames == 1) {
        set_var(c, n->names[0], item);
        return;
    }
    if (item.k != V_LIST && item.k != V_STR)
        fail(&c->f, n->line, "cannot unpack non-iterable %s object", type_name(item));
    list *l = iterate(c, n->line, item);
    if ((int)l->n != n->nnames)
        fail(&c->f, n->line, "%s values to unpack (expected %d, got %zu)",
             (int)l->n > n->nnames ? "too many" : "not enough", n->nnames, l->n);
    for (int i = 0; i < n->nnames; i++)
        set_var(c, n->names[i], l->v[i]);
}

static int exec_for(rctx *c, node *n)
{
    list *items = iterate(c, n->line, eval(c, n->a));
    /* One scope per loop, emptied at each iteration: what the body sets does not outlive the
     * iteration, as in Jinja2. The loop object is one, updated in place, as Jinja2's is. */
    frame fr = {.up = c->scope, .vars = dict_new(&c->f, &c->ar)};
    c->scope = &fr;
    if (n->c) {
        list *kept = list_new(&c->f, &c->ar, items->n);
        for (size_t i = 0; i < items->n; i++) {
            fr.vars->n = 0;
            bind_targets(c, n, items->v[i]);
            if (truthy(eval(c, n->c)))
                list_push(&c->f, &c->ar, kept, items->v[i]);
        }
        items = kept;
    }
    dict *loop = dict_new(&c->f, &c->ar);
    for (int k = 0; k < 11; k++)
        dict_set(&c->f, &c->ar, loop, v_str(c->loop_keys[k]), v_none());
    int sig = SIG_NONE;
    size_t len = items->n;
    for (size_t i = 0; i < len; i++) {
        step(c, n->line);
        fr.vars->n = 0;
        val *lv = loop->v;
        lv[LK_INDEX] = v_int((long long)i + 1);
        lv[LK_INDEX0] = v_int((long long)i);
        lv[LK_REVINDEX] = v_int((long long)(len - i));
        lv[LK_REVINDEX0] = v_int((long long)(len - i - 1));
        lv[LK_FIRST] = v_bool(i == 0);
        lv[LK_LAST] = v_bool(i + 1 == len);
        lv[LK_LENGTH] = v_int((long long)len);
        lv[LK_PREVITEM] = i ? items->v[i - 1] : v_undef("there is no previous item");
        lv[LK_NEXTITEM] = i + 1 < len ? items->v[i + 1] : v_undef("there is no next item");
        lv[LK_DEPTH] = v_int(1);
        lv[LK_DEPTH0] = v_int(0);
        dict_set(&c->f, &c->ar, fr.vars, v_str(c->loop_name), v_dict(loop, V_DICT));
        bind_targets(c, n, items->v[i]);
        sig = exec_body(c, n->kids, n->nkids);
        if (sig == SIG_BREAK)
            break;
    }
    c->scope = fr.up;
    if (!len)
        return exec_body(c, n->kids2, n->nkids2);
    return SIG_NONE;
}

static int exec_stmt(rctx *c, node *n)
{
    step(c, n->line);
    switch (n->kind) {
    case S_TEXT:
        buf_add(&c->f, &c->ar, c->out, n->str->s, n->str->len);
        return SIG_NONE;
    case S_OUT: {
        val v = eval(c, n->a);
        if (v.k == V_STR)
            buf_add(&c->f, &c->ar, c->out, v.u.s->s, v.u.s->len);
        else
            write_val(c, c->out, v, 0, 0);
        return SIG_NONE;
    }
    case S_IF:
        if (truthy(eval(c, n->a)))
            return exec_body(c, n->kids, n->nkids);
        return exec_body(c, n->kids2, n->nkids2);
    case S_FOR: return exec_for(c, n);
    case S_SET: set_var(c, n->str, eval(c, n->a)); return SIG_NONE;
    case S_SETNS: {
        val ns = lookup_name(c, n->str);
        if (ns.k != V_NS)
            fail(&c->f, n->line, "cannot assign attribute '%s' on '%s', which is not a "
                 "namespace()", n->names[0]->s, n->str->s);
        dict_set(&c->f, &c->ar, ns.u.d, v_str(n->names[0]), eval(c, n->a));
        return SIG_NONE;
    }
    case S_SETBLOCK: {
        buf captured = {0}, *saved = c->out;
        c->out = &captured;
        exec_body(c, n->kids, n->nkids);
        c->out = saved;
        set_var(c, n->str, v_str(mkstr(c, captured.p ? captured.p : "", captured.n)));
        return SIG_NONE;
    }
    case S_BREAK: return SIG_BREAK;
    case S_CONTINUE: return SIG_CONTINUE;
    default: return exec_body(c, n->kids, n->nkids);
    }
}

static int exec_body(rctx *c, node **body, int n)
{
    for (int i = 0; i < n; i++) {
        int sig = exec_stmt(c, body[i]);
        if (sig != SIG_NONE)
            return sig;
    }
    return SIG_NONE;
}

/* ---------------------------------------------------------------- API */

static val from_json(rctx *c, const json_t *j, int depth)
{
    if (depth > MAX_DATA_DEPTH)
        fail(&c->f, 0, "variables nested more than %d deep", MAX_DATA_DEPTH);
    switch (json_typeof(j)) {
    case JSON_STRING: {
        const char *s = json_string_value(j);
        size_t n = json_string_length(j);
        if (u8_check((const uint8_t *)s, n) || memchr(s, '\0', n))
            fail(&c->f, 0, "a variable holds invalid UTF-8 or a NUL character");
        return v_str(mkstr(c, s, n));
    }
    case JSON_INTEGER: return v_int((long long)json_integer_value(j));
    case JSON_REAL: return v_float(json_real_value(j));
    case JSON_TRUE: return v_bool(1);
    case JSON_FALSE: return v_bool(0);
    case JSON_NULL: return v_none();
    case JSON_ARRAY: {
        list *l = list_new(&c->f, &c->ar, json_array_size(j));
        for (size_t i = 0; i < json_array_size(j); i++)
            list_push(&c->f, &c->ar, l, from_json(c, json_array_get(j, i), depth + 1));
        return v_list(l, 0);
    }
    default: {
        dict *d = dict_new(&c->f, &c->ar);
        const char *k;
        json_t *v;
        json_object_foreach((json_t *)j, k, v)
            dict_set(&c->f, &c->ar, d, v_str(mkstr(c, k, strlen(k))), from_json(c, v, depth + 1));
        return v_dict(d, V_DICT);
    }
    }
}

/* Lexes and parses into t; the setjmp lives here so that no caller local changes after it. */
static int parse_into(parser *p, jinja_template *t, const char *src, size_t n)
{
    if (setjmp(p->f.jb))
        return -1;
    lex(p, src, n);
    t->body = parse_body(p, NULL, 0, &t->nbody, NULL);
    return 0;
}

jinja_template *jinja_parse(const char *name, const char *src, size_t len, lr_error *err)
{
    jinja_template *t = calloc(1, sizeof *t);
    parser *p = calloc(1, sizeof *p);
    char *norm = NULL;
    if (!t || !p || !(t->name = strdup(name ? name : "?"))) {
        lr_error_set(err, LR_ENOMEM, "template '%s': out of memory", name ? name : "?");
        goto fail;
    }
    if (len > JINJA_MAX_SOURCE) {
        lr_error_set(err, LR_EINVAL, "template '%s' is %zu bytes, over the limit of %u", name,
                     len, JINJA_MAX_SOURCE);
        goto fail;
    }
    if (u8_check((const uint8_t *)src, len) || memchr(src, '\0', len)) {
        lr_error_set(err, LR_EINVAL, "template '%s' is not valid UTF-8 text", name);
        goto fail;
    }
    /* Jinja2 reads "\r\n" and "\r" as "\n" and drops one trailing newline */
    norm = malloc(len + 1);
    if (!norm) {
        lr_error_set(err, LR_ENOMEM, "template '%s': out of memory", name);
        goto fail;
    }
    size_t n = 0;
    for (size_t i = 0; i < len; i++) {
        if (src[i] == '\r') {
            norm[n++] = '\n';
            if (i + 1 < len && src[i + 1] == '\n')
                i++;
        } else {
            norm[n++] = src[i];
        }
    }
    if (n && norm[n - 1] == '\n')
        n--;
    norm[n] = '\0';
    p->f.err = err;
    p->f.name = t->name;
    p->ar = &t->ar;
    if (parse_into(p, t, norm, n))
        goto fail;
    arena_free(&p->tmp);
    free(p);
    free(norm);
    return t;
fail:
    if (p)
        arena_free(&p->tmp);
    free(p);
    free(norm);
    jinja_free(t);
    return NULL;
}

void jinja_free(jinja_template *t)
{
    if (!t)
        return;
    arena_free(&t->ar);
    free(t->name);
    free(t);
}

int jinja_render(const jinja_template *t, const json_t *vars, char **out, size_t *len,
                 lr_error *err)
{
    *out = NULL;
    *len = 0;
    rctx *c = calloc(1, sizeof *c);
    if (!c)
        return lr_error_set(err, LR_ENOMEM, "template '%s': out of memory", t->name);
    c->f.err = err;
    c->f.name = t->name;
    int rc = LR_EINVAL;
    if (setjmp(c->f.jb)) {
        rc = c->f.nomem ? LR_ENOMEM : LR_EINVAL;
        goto fail;
    }
    if (!json_is_object(vars))
        fail(&c->f, 0, "variables must be a JSON object");
    c->globals = from_json(c, vars, 0).u.d;
    /* the budget scales with the input, so that long conversations always fit */
    c->ar.limit = JINJA_MAX_MEMORY + 8 * c->ar.total;
    for (int k = 0; k < 11; k++)
        c->loop_keys[k] = mkstr(c, LOOP_KEYS[k], strlen(LOOP_KEYS[k]));
    c->loop_name = mkstr(c, "loop", 4);
    frame root = {.up = NULL, .vars = dict_new(&c->f, &c->ar)};
    buf result = {0};
    c->scope = &root;
    c->out = &result;
    exec_body(c, t->body, t->nbody);
    *out = malloc(result.n + 1);
    if (!*out) {
        rc = lr_error_set(err, LR_ENOMEM, "template '%s': out of memory", t->name);
        goto fail;
    }
    if (result.n)
        memcpy(*out, result.p, result.n);
    (*out)[result.n] = '\0';
    *len = result.n;
    arena_free(&c->ar);
    free(c);
    return 0;
fail:
    arena_free(&c->ar);
    free(c);
    return rc;
}
