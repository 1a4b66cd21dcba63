/* safetensors: maps a .safetensors file read-only and validates every header field before
 * handing out tensor views; converts F32/F16/BF16 to float; writes F32 files atomically. */
#include "safetensors.h"

#include <errno.h>
#include <stdarg.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors.c assumes a little-endian host (the file format is little-endian)"
#endif

/* A header longer than this is refused: real model headers are well under 10 MB, and
 * jansson needs several times the text size in memory. */
#define ST_MAX_HEADER_BYTES ((uint64_t)100 * 1024 * 1024)

/* Files mapped with MAP_POPULATE (see safetensors_open). */
#define ST_POPULATE_BYTES ((size_t)256 << 20)

/* Error messages are one line of at most 255 bytes: long paths and names are shortened. */
#define ST_SHOW_PATH 96
#define ST_SHOW_NAME 80

struct safetensors {
    char *path;                 /* copy of the path given to safetensors_open */
    unsigned char *map;         /* [map_len] the whole file, PROT_READ, MAP_PRIVATE; NULL
                                   when opened with safetensors_open_unmapped */
    size_t map_len;
    int fd;                     /* unmapped: the open file, read with pread; else -1 */
    st_tensor *tensors;         /* [n] in header order; names point into strings */
    const st_tensor **by_name;  /* [n] the same tensors sorted by strcmp(name) */
    int n;
    const char **meta;          /* [2 * n_meta] key, value, ... pointing into strings */
    int n_meta;
    char *strings;              /* arena: every tensor name, metadata key and value */
};

static const struct {
    const char *name;
    size_t size;
} dtype_info[] = {
    [ST_F32] = {"F32", 4},   [ST_F16] = {"F16", 2},   [ST_BF16] = {"BF16", 2},
    [ST_F64] = {"F64", 8},   [ST_I8] = {"I8", 1},     [ST_U8] = {"U8", 1},
    [ST_I16] = {"I16", 2},   [ST_U16] = {"U16", 2},   [ST_I32] = {"I32", 4},
    [ST_U32] = {"U32", 4},   [ST_I64] = {"I64", 8},   [ST_U64] = {"U64", 8},
    [ST_BOOL] = {"BOOL", 1}, [ST_F8_E4M3] = {"F8_E4M3", 1}, [ST_F8_E5M2] = {"F8_E5M2", 1},
};
#define ST_NDTYPES ((int)(sizeof dtype_info / sizeof dtype_info[0]))

const char *st_dtype_name(st_dtype t)
{
    return (int)t >= 0 && (int)t < ST_NDTYPES ? dtype_info[t].name : "?";
}

size_t st_dtype_size(st_dtype t)
{
    return (int)t >= 0 && (int)t < ST_NDTYPES ? dtype_info[t].size : 0;
}

/* ---- display helpers for error messages ---- */

/* Copies s into out (cap bytes) for a one-line message: control characters become '?',
 * and a name longer than max bytes is cut (at a UTF-8 boundary) and ends in "...". */
static const char *show(char *out, size_t cap, const char *s, size_t max)
{
    if (!s)
        s = "(null)";
    size_t len = strlen(s);
    bool cut = len > max;
    if (cut) {
        len = max;
        while (len > 0 && ((unsigned char)s[len] & 0xC0) == 0x80)
            len--;
    }
    if (len + 4 > cap)
        len = cap > 4 ? cap - 4 : 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        out[i] = (c < 0x20 || c == 0x7f) ? '?' : (char)c;
    }
    strcpy(out + len, cut ? "..." : "");
    return out;
}

/* A path is shortened from the front: its end (the file name) is the informative part. */
static const char *show_path(char *out, size_t cap, const char *path)
{
    size_t len = strlen(path);
    if (len <= ST_SHOW_PATH)
        return show(out, cap, path, ST_SHOW_PATH);
    const char *tail = path + len - (ST_SHOW_PATH - 3);
    while (((unsigned char)*tail & 0xC0) == 0x80)
        tail++;
    char tmp[ST_SHOW_PATH + 1];
    show(tmp, sizeof tmp, tail, ST_SHOW_PATH);
    snprintf(out, cap, "...%s", tmp);
    return out;
}

/* "[4,8]" into out; shape values already validated or not (any int64 prints). */
static void format_shape(char *out, size_t cap, const int64_t *shape, int ndim)
{
    size_t used = 0;
    out[0] = '\0';
    used += (size_t)snprintf(out, cap, "[");
    for (int d = 0; d < ndim && used < cap; d++)
        used += (size_t)snprintf(out + used, cap - used, "%s%lld", d ? "," : "",
                                 (long long)shape[d]);
    if (used < cap)
        snprintf(out + used, cap - used, "]");
}

/* ---- reading ---- */

/* Parse state of one open call: the display path and the tensor being validated. */
typedef struct {
    char path[ST_SHOW_PATH + 8];
    char name[ST_SHOW_NAME + 8];
    lr_error *err;
} parse_ctx;

/* Fill c->err with "<path>: <message>" / "<path>: tensor '<name>': <message>". */
static int fail_file(parse_ctx *c, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int fail_tensor(parse_ctx *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static int fail_file(parse_ctx *c, int code, const char *fmt, ...)
{
    char msg[sizeof c->err->msg];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return lr_error_set(c->err, code, "%s: %s", c->path, msg);
}

static int fail_tensor(parse_ctx *c, const char *fmt, ...)
{
    char msg[sizeof c->err->msg];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return lr_error_set(c->err, LR_EINVAL, "%s: tensor '%s': %s", c->path, c->name, msg);
}

static int parse_dtype(const char *s, st_dtype *out)
{
    for (int i = 0; i < ST_NDTYPES; i++) {
        if (strcmp(s, dtype_info[i].name) == 0) {
            *out = (st_dtype)i;
            return 0;
        }
    }
    return -1;
}

/* Validates one tensor entry and fills t (except name and data). data_size is the size
 * of the data section; begin receives data_offsets[0]. */
static int parse_entry(parse_ctx *c, json_t *entry, uint64_t data_size, st_tensor *t,
                       int64_t *begin_out)
{
    if (!json_is_object(entry))
        return fail_tensor(c, "entry is not a JSON object");

    const char *key;
    json_t *val;
    json_object_foreach(entry, key, val) {
        if (strcmp(key, "dtype") && strcmp(key, "shape") && strcmp(key, "data_offsets")) {
            char k[ST_SHOW_NAME + 8];
            return fail_tensor(c, "unknown key '%s' (expected only dtype, shape, data_offsets)",
                               show(k, sizeof k, key, 40));
        }
    }

    json_t *jdtype = json_object_get(entry, "dtype");
    json_t *jshape = json_object_get(entry, "shape");
    json_t *joffs = json_object_get(entry, "data_offsets");
    if (!jdtype)
        return fail_tensor(c, "missing \"dtype\"");
    if (!jshape)
        return fail_tensor(c, "missing \"shape\"");
    if (!joffs)
        return fail_tensor(c, "missing \"data_offsets\"");

    if (!json_is_string(jdtype))
        return fail_tensor(c, "\"dtype\" is not a string");
    if (parse_dtype(json_string_value(jdtype), &t->dtype) < 0) {
        char d[40];
        return fail_tensor(c, "unknown dtype '%s' (known: F32 F16 BF16 F64 I8 U8 I16 U16 "
                              "I32 U32 I64 U64 BOOL F8_E4M3 F8_E5M2)",
                           show(d, sizeof d, json_string_value(jdtype), 24));
    }

    if (!json_is_array(jshape))
        return fail_tensor(c, "\"shape\" is not an array");
    size_t ndim = json_array_size(jshape);
    if (ndim > ST_MAX_DIMS)
        return fail_tensor(c, "shape has %zu dimensions, at most %d are supported", ndim,
                           ST_MAX_DIMS);
    t->ndim = (int)ndim;
    t->numel = 1;
    bool overflow = false, zero = false;
    for (size_t d = 0; d < ndim; d++) {
        json_t *jd = json_array_get(jshape, d);
        if (!json_is_integer(jd))
            return fail_tensor(c, "shape[%zu] is not an integer", d);
        json_int_t v = json_integer_value(jd);
        if (v < 0)
            return fail_tensor(c, "shape[%zu] = %lld is negative", d, (long long)v);
        t->shape[d] = (int64_t)v;
        if (v == 0)
            zero = true;
        else if (t->numel > INT64_MAX / v)
            overflow = true;
        else
            t->numel *= (int64_t)v;
    }
    char shape_s[200];
    format_shape(shape_s, sizeof shape_s, t->shape, t->ndim);
    /* A zero dimension makes the product 0 however large the others are. */
    if (zero)
        t->numel = 0;
    else if (overflow)
        return fail_tensor(c, "shape %s: element count overflows 64 bits", shape_s);

    if (!json_is_array(joffs) || json_array_size(joffs) != 2)
        return fail_tensor(c, "\"data_offsets\" is not an array [begin, end]");
    json_t *jb = json_array_get(joffs, 0), *je = json_array_get(joffs, 1);
    if (!json_is_integer(jb) || !json_is_integer(je))
        return fail_tensor(c, "\"data_offsets\" are not integers");
    long long b = json_integer_value(jb), e = json_integer_value(je);
    if (b < 0 || e < b)
        return fail_tensor(c, "data_offsets [%lld,%lld] are not 0 <= begin <= end", b, e);
    if ((uint64_t)e > data_size)
        return fail_tensor(c, "data_offsets [%lld,%lld] go beyond the data section "
                              "(%llu bytes; truncated file?)",
                           b, e, (unsigned long long)data_size);

    size_t esize = dtype_info[t->dtype].size;
    const char *dname = dtype_info[t->dtype].name;
    if (t->numel > INT64_MAX / (int64_t)esize)
        return fail_tensor(c, "shape %s (%lld elements of %s) is over 2^63 bytes; "
                              "data_offsets [%lld,%lld] hold %lld bytes",
                           shape_s, (long long)t->numel, dname, b, e, e - b);
    int64_t nbytes = t->numel * (int64_t)esize;
    if (nbytes != e - b)
        return fail_tensor(c, "shape %s (%lld elements of %s = %lld bytes) does not match "
                              "data_offsets [%lld,%lld] (%lld bytes)",
                           shape_s, (long long)t->numel, dname, (long long)nbytes, b, e, e - b);
    t->nbytes = (size_t)nbytes;
    *begin_out = b;
    return 0;
}

static int parse_metadata(parse_ctx *c, json_t *meta)
{
    if (!json_is_object(meta))
        return fail_file(c, LR_EINVAL, "\"__metadata__\" is not an object of strings");
    const char *key;
    json_t *val;
    json_object_foreach(meta, key, val) {
        if (!json_is_string(val)) {
            char k[ST_SHOW_NAME + 8];
            return fail_file(c, LR_EINVAL, "\"__metadata__\" value of '%s' is not a string",
                             show(k, sizeof k, key, 40));
        }
    }
    return 0;
}

typedef struct {
    int64_t begin, end;
    int idx;
} byte_range;

static int cmp_range(const void *a, const void *b)
{
    const byte_range *x = a, *y = b;
    if (x->begin != y->begin)
        return x->begin < y->begin ? -1 : 1;
    return (x->end > y->end) - (x->end < y->end);
}

static int cmp_by_name(const void *a, const void *b)
{
    const st_tensor *const *x = a, *const *y = b;
    return strcmp((*x)->name, (*y)->name);
}

/* Non-empty ranges may not overlap. Empty tensors occupy no bytes, so they never do. */
static int check_overlaps(parse_ctx *c, const st_tensor *ts, const int64_t *begins, int n)
{
    int rc = 0;
    byte_range *r = n ? malloc((size_t)n * sizeof *r) : NULL;
    if (n && !r)
        return fail_file(c, LR_ENOMEM, "out of memory for %d tensor ranges", n);
    int m = 0;
    for (int i = 0; i < n; i++)
        if (ts[i].nbytes)
            r[m++] = (byte_range){begins[i], begins[i] + (int64_t)ts[i].nbytes, i};
    if (m > 1)
        qsort(r, (size_t)m, sizeof *r, cmp_range);
    for (int i = 1; i < m; i++) {
        if (r[i].begin < r[i - 1].end) {
            char a[ST_SHOW_NAME + 8], b[ST_SHOW_NAME + 8];
            rc = fail_file(c, LR_EINVAL,
                           "tensors '%s' [%lld,%lld] and '%s' [%lld,%lld] overlap",
                           show(a, sizeof a, ts[r[i - 1].idx].name, 48),
                           (long long)r[i - 1].begin, (long long)r[i - 1].end,
                           show(b, sizeof b, ts[r[i].idx].name, 48),
                           (long long)r[i].begin, (long long)r[i].end);
            break;
        }
    }
    free(r);
    return rc;
}

/* Builds st's tensors, index and metadata from the parsed header root. */
static int build_from_header(parse_ctx *c, safetensors *st, json_t *root, uint64_t data_size,
                             const unsigned char *data, uint64_t data_offset)
{
    int rc = 0;
    int64_t *begins = NULL;
    json_t *meta = json_object_get(root, "__metadata__");
    size_t nkeys = json_object_size(root);
    size_t ntensors = nkeys - (meta ? 1 : 0);
    if (ntensors > (size_t)INT32_MAX / 2)
        return fail_file(c, LR_EINVAL, "%zu tensors is too many", ntensors);
    if (meta && (rc = parse_metadata(c, meta)) < 0)
        return rc;

    /* One arena for every string, so close() frees a fixed number of blocks. */
    size_t arena = 1;
    const char *key;
    json_t *val;
    json_object_foreach(root, key, val) {
        arena += strlen(key) + 1;
    }
    if (meta) {
        json_object_foreach(meta, key, val) {
            arena += strlen(key) + 1 + json_string_length(val) + 1;
        }
    }
    st->n = (int)ntensors;
    st->n_meta = meta ? (int)json_object_size(meta) : 0;
    st->strings = malloc(arena);
    st->tensors = calloc(ntensors ? ntensors : 1, sizeof *st->tensors);
    st->by_name = calloc(ntensors ? ntensors : 1, sizeof *st->by_name);
    st->meta = calloc(st->n_meta ? 2 * (size_t)st->n_meta : 1, sizeof *st->meta);
    begins = calloc(ntensors ? ntensors : 1, sizeof *begins);
    if (!st->strings || !st->tensors || !st->by_name || !st->meta || !begins) {
        rc = fail_file(c, LR_ENOMEM, "out of memory for %zu tensors", ntensors);
        goto fail;
    }

    char *sp = st->strings;
    if (meta) {
        int m = 0;
        json_object_foreach(meta, key, val) {
            size_t kl = strlen(key), vl = json_string_length(val);
            memcpy(sp, key, kl + 1);
            st->meta[2 * m] = sp;
            sp += kl + 1;
            /* Values cannot hold NUL: jansson rejects \u0000 without JSON_ALLOW_NUL. */
            memcpy(sp, json_string_value(val), vl + 1);
            st->meta[2 * m + 1] = sp;
            sp += vl + 1;
            m++;
        }
    }

    int i = 0;
    json_object_foreach(root, key, val) {
        if (strcmp(key, "__metadata__") == 0)
            continue;
        st_tensor *t = &st->tensors[i];
        show(c->name, sizeof c->name, key, ST_SHOW_NAME);
        if ((rc = parse_entry(c, val, data_size, t, &begins[i])) < 0)
            goto fail;
        size_t kl = strlen(key);
        memcpy(sp, key, kl + 1);
        t->name = sp;
        sp += kl + 1;
        t->data = data ? data + begins[i] : NULL;
        t->offset = data_offset + (uint64_t)begins[i];
        st->by_name[i] = t;
        i++;
    }

    if ((rc = check_overlaps(c, st->tensors, begins, st->n)) < 0)
        goto fail;
    if (st->n > 1)
        qsort(st->by_name, (size_t)st->n, sizeof *st->by_name, cmp_by_name);
    /* JSON_REJECT_DUPLICATES already refused repeated keys; this guards the index. */
    for (int k = 1; k < st->n; k++) {
        if (strcmp(st->by_name[k - 1]->name, st->by_name[k]->name) == 0) {
            show(c->name, sizeof c->name, st->by_name[k]->name, ST_SHOW_NAME);
            rc = fail_tensor(c, "duplicate tensor name");
            goto fail;
        }
    }
    free(begins);
    return 0;

fail:
    free(begins);
    return rc;
}

/* Reads exactly n bytes at off; -1 with errno (0: the file ended first). */
static int pread_all(int fd, void *buf, size_t n, uint64_t off)
{
    unsigned char *p = buf;
    while (n) {
        ssize_t r = pread(fd, p, n > ((size_t)1 << 30) ? ((size_t)1 << 30) : n, (off_t)off);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            if (r == 0)
                errno = 0;
            return -1;
        }
        p += r;
        n -= (size_t)r;
        off += (uint64_t)r;
    }
    return 0;
}

static safetensors *open_file(const char *path, int mapped, lr_error *err)
{
    parse_ctx c = {.err = err};
    int fd = -1;
    json_t *root = NULL;
    safetensors *st = NULL;
    unsigned char *head = NULL;   /* unmapped: the header, read */

    if (!path) {
        lr_error_set(err, LR_EINVAL, "safetensors_open: path is NULL");
        return NULL;
    }
    show_path(c.path, sizeof c.path, path);

    st = calloc(1, sizeof *st);
    if (st)
        st->fd = -1;
    if (!st || !(st->path = strdup(path))) {
        fail_file(&c, LR_ENOMEM, "out of memory");
        goto fail;
    }

    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        fail_file(&c, errno == ENOENT ? LR_ENOTFOUND : LR_EIO, "cannot open: %s",
                  strerror(errno));
        goto fail;
    }
    struct stat sb;
    if (fstat(fd, &sb) < 0) {
        fail_file(&c, LR_EIO, "cannot stat: %s", strerror(errno));
        goto fail;
    }
    if (!S_ISREG(sb.st_mode)) {
        fail_file(&c, LR_EINVAL, "not a regular file");
        goto fail;
    }
    uint64_t fsize = (uint64_t)sb.st_size;
    if (fsize < 8) {
        fail_file(&c, LR_EINVAL, "file is %llu bytes, too short for the 8-byte header "
                                 "length (empty or truncated file?)",
                  (unsigned long long)fsize);
        goto fail;
    }
    if (fsize > SIZE_MAX) {
        fail_file(&c, LR_ENOTSUP, "file of %llu bytes does not fit in the address space",
                  (unsigned long long)fsize);
        goto fail;
    }
    const unsigned char *len8;    /* the header length: the mapping's first 8 bytes, or read */
    unsigned char len_read[8];
    if (mapped) {
        st->map_len = (size_t)fsize;
        /* Files up to ST_POPULATE_BYTES (small models) are mapped whole at once: their
         * tensors are all read right after, and one populate costs less than a page fault
         * every 16 pages. Bigger files (models) fault in as they are read. */
        void *m = mmap(NULL, st->map_len, PROT_READ,
                       MAP_PRIVATE | (st->map_len <= ST_POPULATE_BYTES ? MAP_POPULATE : 0), fd,
                       0);
        if (m == MAP_FAILED) {
            fail_file(&c, LR_EIO, "cannot mmap %zu bytes: %s", st->map_len, strerror(errno));
            goto fail;
        }
        st->map = m;
        close(fd);
        fd = -1;
        len8 = st->map;
    } else {
        if (pread_all(fd, len_read, 8, 0) != 0) {
            fail_file(&c, LR_EIO, "cannot read: %s", errno ? strerror(errno) : "file shrank");
            goto fail;
        }
        len8 = len_read;
    }

    uint64_t hlen = 0;
    for (int b = 7; b >= 0; b--)
        hlen = (hlen << 8) | len8[b];
    if (hlen > ST_MAX_HEADER_BYTES) {
        fail_file(&c, LR_EINVAL, "header length %llu exceeds the %llu-byte limit "
                                 "(corrupt file or not safetensors?)",
                  (unsigned long long)hlen, (unsigned long long)ST_MAX_HEADER_BYTES);
        goto fail;
    }
    if (hlen > fsize - 8) {
        fail_file(&c, LR_EINVAL, "header length %llu goes beyond the end of the file "
                                 "(%llu bytes; truncated file?)",
                  (unsigned long long)hlen, (unsigned long long)fsize);
        goto fail;
    }

    const unsigned char *header = st->map ? st->map + 8 : NULL;
    if (!mapped) {
        if (!(head = malloc(hlen ? (size_t)hlen : 1))) {
            fail_file(&c, LR_ENOMEM, "out of memory for a %llu-byte header",
                      (unsigned long long)hlen);
            goto fail;
        }
        if (pread_all(fd, head, (size_t)hlen, 8) != 0) {
            fail_file(&c, LR_EIO, "cannot read: %s", errno ? strerror(errno) : "file shrank");
            goto fail;
        }
        header = head;
    }
    json_error_t jerr;
    root = json_loadb((const char *)header, (size_t)hlen, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) {
        if (json_error_code(&jerr) == json_error_duplicate_key)
            fail_file(&c, LR_EINVAL, "header has a duplicate key: %s (at byte %d)",
                      jerr.text, jerr.position);
        else
            fail_file(&c, LR_EINVAL, "header is not valid JSON: %s (at byte %d)", jerr.text,
                      jerr.position);
        goto fail;
    }
    if (!json_is_object(root)) {
        fail_file(&c, LR_EINVAL, "header JSON is not an object");
        goto fail;
    }
    if (build_from_header(&c, st, root, fsize - 8 - hlen, st->map ? st->map + 8 + hlen : NULL,
                          8 + hlen) < 0)
        goto fail;

    json_decref(root);
    free(head);
    st->fd = fd;   /* unmapped: kept for st_tensor_read_f32; mapped: already closed (-1) */
    return st;

fail:
    json_decref(root);
    free(head);
    if (fd >= 0)
        close(fd);
    safetensors_close(st);
    return NULL;
}

safetensors *safetensors_open(const char *path, lr_error *err)
{
    return open_file(path, 1, err);
}

safetensors *safetensors_open_unmapped(const char *path, lr_error *err)
{
    return open_file(path, 0, err);
}

void safetensors_close(safetensors *st)
{
    if (!st)
        return;
    if (st->map)
        munmap(st->map, st->map_len);
    if (st->fd >= 0)
        close(st->fd);
    free(st->tensors);
    free(st->by_name);
    free(st->meta);
    free(st->strings);
    free(st->path);
    free(st);
}

const char *safetensors_path(const safetensors *st)
{
    return st ? st->path : NULL;
}

int safetensors_count(const safetensors *st)
{
    return st ? st->n : 0;
}

const st_tensor *safetensors_at(const safetensors *st, int i)
{
    if (!st || i < 0 || i >= st->n)
        return NULL;
    return &st->tensors[i];
}

const st_tensor *safetensors_find(const safetensors *st, const char *name)
{
    if (!st || !name || st->n == 0)
        return NULL;
    st_tensor key = {.name = name};
    const st_tensor *kp = &key;
    const st_tensor *const *hit =
        bsearch(&kp, st->by_name, (size_t)st->n, sizeof *st->by_name, cmp_by_name);
    return hit ? *hit : NULL;
}

const char *safetensors_metadata(const safetensors *st, const char *key)
{
    if (!st || !key)
        return NULL;
    for (int i = 0; i < st->n_meta; i++)
        if (strcmp(st->meta[2 * i], key) == 0)
            return st->meta[2 * i + 1];
    return NULL;
}

/* ---- conversion ---- */

static inline float f32_from_bits(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static inline uint32_t f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

/* Branch-free IEEE half → float, written so the conversion loop vectorizes and without
 * float arithmetic on subnormal operands (slow microcode paths on x86):
 *   normal:    rebias the exponent by 127 - 15 = 112 with an integer add;
 *   inf/NaN:   exponent field 31 becomes all ones, the mantissa (NaN payload) is kept;
 *   subnormal: mantissa × 2^-24, computed exactly as an int → float conversion and a
 *              multiply whose result is a normal float. */
static inline float half_to_float(uint16_t h)
{
    uint32_t em = h & 0x7fffu;                                   /* exponent, mantissa */
    uint32_t normal = (em << 13) + (112u << 23);
    normal |= 0x7f800000u & -(uint32_t)(em >= 0x7c00u);
    uint32_t sub = f32_bits((float)(int32_t)em * 0x1p-24f);
    uint32_t is_sub = -(uint32_t)(em < 0x0400u);                 /* all ones or zero */
    uint32_t u = (sub & is_sub) | (normal & ~is_sub);
    return f32_from_bits(u | (uint32_t)(h & 0x8000u) << 16);
}

static inline float bfloat_to_float(uint16_t b)
{
    return f32_from_bits((uint32_t)b << 16);
}

float st_f16_to_f32(uint16_t h)
{
    return half_to_float(h);
}

float st_bf16_to_f32(uint16_t b)
{
    return bfloat_to_float(b);
}

/* Bulk conversions over ~500 MB at model load. The source may be unaligned (file offsets
 * are arbitrary), so elements are read through fixed-size memcpy, which compiles to plain
 * loads. The fixed 16-element inner loop has no remainder, so GCC vectorizes it even at
 * -O2 (whose cost model refuses loops needing an epilogue or alias checks); restrict
 * removes the alias check, and half_to_float selects with masks, not branches. */
#define ST_CONV_BLOCK 16

static void f16_to_f32_run(float *restrict dst, const unsigned char *restrict src, size_t n)
{
    size_t i = 0;
    for (; i + ST_CONV_BLOCK <= n; i += ST_CONV_BLOCK) {
        for (size_t j = 0; j < ST_CONV_BLOCK; j++) {
            uint16_t h;
            memcpy(&h, src + 2 * (i + j), sizeof h);
            dst[i + j] = half_to_float(h);
        }
    }
    for (; i < n; i++) {
        uint16_t h;
        memcpy(&h, src + 2 * i, sizeof h);
        dst[i] = half_to_float(h);
    }
}

static void bf16_to_f32_run(float *restrict dst, const unsigned char *restrict src, size_t n)
{
    size_t i = 0;
    for (; i + ST_CONV_BLOCK <= n; i += ST_CONV_BLOCK) {
        for (size_t j = 0; j < ST_CONV_BLOCK; j++) {
            uint16_t b;
            memcpy(&b, src + 2 * (i + j), sizeof b);
            dst[i + j] = bfloat_to_float(b);
        }
    }
    for (; i < n; i++) {
        uint16_t b;
        memcpy(&b, src + 2 * i, sizeof b);
        dst[i] = bfloat_to_float(b);
    }
}

/* The checks both conversions make: a dtype they convert, and numel matching nbytes.
 * Fills nm with the tensor's name as messages show it. */
static int check_convertible(const st_tensor *t, char *nm, size_t cap, lr_error *err)
{
    show(nm, cap, t->name ? t->name : "(unnamed)", ST_SHOW_NAME);
    if (t->dtype != ST_F32 && t->dtype != ST_F16 && t->dtype != ST_BF16)
        return lr_error_set(err, LR_ENOTSUP, "tensor '%s': dtype %s cannot be converted to "
                                             "F32 (supported: F32, F16, BF16)",
                            nm, st_dtype_name(t->dtype));
    if (t->numel < 0 || (uint64_t)t->numel > SIZE_MAX / 4 ||
        (size_t)t->numel * st_dtype_size(t->dtype) != t->nbytes)
        return lr_error_set(err, LR_EINVAL, "tensor '%s': %lld elements of %s do not make "
                                            "%zu bytes",
                            nm, (long long)t->numel, st_dtype_name(t->dtype), t->nbytes);
    return 0;
}

int st_tensor_to_f32(const st_tensor *t, float *dst, lr_error *err)
{
    char nm[ST_SHOW_NAME + 8];
    int rc;
    if (!t)
        return lr_error_set(err, LR_EINVAL, "st_tensor_to_f32: tensor is NULL");
    if ((rc = check_convertible(t, nm, sizeof nm, err)) < 0)
        return rc;
    size_t n = (size_t)t->numel;
    if (n == 0)
        return 0;
    if (!t->data || !dst)
        return lr_error_set(err, LR_EINVAL, "tensor '%s': NULL data or destination", nm);

    switch (t->dtype) {
    case ST_F32:
        memcpy(dst, t->data, n * sizeof *dst);
        break;
    case ST_F16:
        f16_to_f32_run(dst, t->data, n);
        break;
    case ST_BF16:
        bf16_to_f32_run(dst, t->data, n);
        break;
    default:
        break;
    }
    return 0;
}

/* Elements converted per pread of an F16/BF16 tensor in st_tensor_read_f32. */
#define READ_CHUNK_ELEMS 16384

int st_tensor_read_f32(const safetensors *st, const st_tensor *t, float *dst, lr_error *err)
{
    if (!st || !t)
        return lr_error_set(err, LR_EINVAL, "st_tensor_read_f32: file or tensor is NULL");
    if (st->map)
        return st_tensor_to_f32(t, dst, err);
    char nm[ST_SHOW_NAME + 8];
    int rc;
    if ((rc = check_convertible(t, nm, sizeof nm, err)) < 0)
        return rc;
    size_t n = (size_t)t->numel;
    if (n == 0)
        return 0;
    if (!dst)
        return lr_error_set(err, LR_EINVAL, "tensor '%s': NULL destination", nm);
    if (t->dtype == ST_F32) {
        if (pread_all(st->fd, dst, t->nbytes, t->offset) == 0)
            return 0;
    } else {
        unsigned char *half = malloc(READ_CHUNK_ELEMS * 2);
        if (!half)
            return lr_error_set(err, LR_ENOMEM, "tensor '%s': out of memory", nm);
        size_t done = 0;
        while (done < n) {
            size_t k = n - done < READ_CHUNK_ELEMS ? n - done : READ_CHUNK_ELEMS;
            if (pread_all(st->fd, half, k * 2, t->offset + 2 * (uint64_t)done) != 0)
                break;
            if (t->dtype == ST_F16)
                f16_to_f32_run(dst + done, half, k);
            else
                bf16_to_f32_run(dst + done, half, k);
            done += k;
        }
        free(half);
        if (done == n)
            return 0;
    }
    /* The file changed since it was opened: shorter now, or unreadable. */
    return lr_error_set(err, LR_EIO, "%s: tensor '%s': cannot read: %s", st->path, nm,
                        errno ? strerror(errno) : "the file is shorter than when it was opened");
}

/* ---- writing ---- */

static int write_all(int fd, const void *buf, size_t len)
{
    const unsigned char *p = buf;
    while (len > 0) {
        ssize_t w = write(fd, p, len > ((size_t)1 << 30) ? ((size_t)1 << 30) : len);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        p += w;
        len -= (size_t)w;
    }
    return 0;
}

/* Checks the write request and computes each tensor's byte size and aligned offset.
 * begins, nbytes: [n], offsets within the data section. */
static int plan_write(const char *shown, const st_write_tensor *ts, int n,
                      const char *const *metadata, int64_t *begins, int64_t *nbytes,
                      lr_error *err)
{
    char nm[ST_SHOW_NAME + 8];
    int64_t off = 0;
    for (int i = 0; i < n; i++) {
        const st_write_tensor *t = &ts[i];
        if (!t->name || !t->name[0])
            return lr_error_set(err, LR_EINVAL, "%s: tensor %d has no name", shown, i);
        show(nm, sizeof nm, t->name, ST_SHOW_NAME);
        if (strcmp(t->name, "__metadata__") == 0)
            return lr_error_set(err, LR_EINVAL, "%s: '__metadata__' is reserved, not a "
                                                "tensor name", shown);
        for (int j = 0; j < i; j++)
            if (strcmp(ts[j].name, t->name) == 0)
                return lr_error_set(err, LR_EINVAL, "%s: tensor '%s' given twice", shown, nm);
        if (t->ndim < 0 || t->ndim > ST_MAX_DIMS)
            return lr_error_set(err, LR_EINVAL, "%s: tensor '%s': ndim %d is outside 0..%d",
                                shown, nm, t->ndim, ST_MAX_DIMS);
        int64_t numel = 1;
        bool zero = false, overflow = false;
        for (int d = 0; d < t->ndim; d++) {
            int64_t v = t->shape[d];
            if (v < 0)
                return lr_error_set(err, LR_EINVAL, "%s: tensor '%s': shape[%d] = %lld is "
                                                    "negative", shown, nm, d, (long long)v);
            if (v == 0)
                zero = true;
            else if (numel > INT64_MAX / 4 / v)
                overflow = true;
            else
                numel *= v;
        }
        if (zero)
            numel = 0;
        else if (overflow)
            return lr_error_set(err, LR_EINVAL, "%s: tensor '%s': element count overflows",
                                shown, nm);
        if (numel > 0 && !t->data)
            return lr_error_set(err, LR_EINVAL, "%s: tensor '%s': data is NULL for %lld "
                                                "elements", shown, nm, (long long)numel);
        nbytes[i] = numel * (t->bf16 ? 2 : 4);
        int64_t b = (off + 7) & ~(int64_t)7;
        if (b < off || b > INT64_MAX - nbytes[i])
            return lr_error_set(err, LR_EINVAL, "%s: data section size overflows", shown);
        begins[i] = b;
        off = b + nbytes[i];
    }
    if (metadata) {
        for (int k = 0; metadata[k]; k += 2) {
            if (!metadata[k + 1])
                return lr_error_set(err, LR_EINVAL, "%s: metadata key '%s' has no value",
                                    shown, show(nm, sizeof nm, metadata[k], 40));
        }
    }
    return 0;
}

/* Builds the header JSON for the planned layout into *out (caller frees with free()). */
static int build_header(const char *shown, const st_write_tensor *ts, int n,
                        const char *const *metadata, const int64_t *begins,
                        const int64_t *nbytes, char **out, lr_error *err)
{
    int rc;
    char nm[ST_SHOW_NAME + 8];
    json_t *root = json_object();
    if (!root)
        goto nomem;
    if (metadata && metadata[0]) {
        json_t *meta = json_object();
        if (json_object_set_new(root, "__metadata__", meta) < 0)
            goto nomem;
        for (int k = 0; metadata[k]; k += 2) {
            show(nm, sizeof nm, metadata[k], 40);
            if (json_object_get(meta, metadata[k])) {
                rc = lr_error_set(err, LR_EINVAL, "%s: metadata key '%s' given twice", shown,
                                  nm);
                goto fail;
            }
            /* json_string and json_object_set refuse invalid UTF-8 (and fail on OOM). */
            if (json_object_set_new(meta, metadata[k], json_string(metadata[k + 1])) < 0) {
                rc = lr_error_set(err, LR_EINVAL, "%s: metadata '%s' is not valid UTF-8",
                                  shown, nm);
                goto fail;
            }
        }
    }
    for (int i = 0; i < n; i++) {
        const st_write_tensor *t = &ts[i];
        json_t *shape = json_array();
        if (!shape)
            goto nomem;
        for (int d = 0; d < t->ndim; d++)
            if (json_array_append_new(shape, json_integer((json_int_t)t->shape[d])) < 0) {
                json_decref(shape);
                goto nomem;
            }
        /* "o" steals shape, also when json_pack fails. */
        json_t *e = json_pack("{s:s, s:o, s:[I,I]}", "dtype", t->bf16 ? "BF16" : "F32",
                              "shape", shape,
                              "data_offsets", (json_int_t)begins[i],
                              (json_int_t)(begins[i] + nbytes[i]));
        if (!e)
            goto nomem;
        if (json_object_set_new(root, t->name, e) < 0) {
            rc = lr_error_set(err, LR_EINVAL, "%s: tensor name '%s' is not valid UTF-8", shown,
                              show(nm, sizeof nm, t->name, ST_SHOW_NAME));
            goto fail;
        }
    }
    *out = json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER);
    if (!*out)
        goto nomem;
    json_decref(root);
    return 0;

nomem:
    rc = lr_error_set(err, LR_ENOMEM, "%s: out of memory building the header", shown);
fail:
    json_decref(root);
    return rc;
}

/* fsyncs the directory holding path, so a rename into it survives a crash. */
static int fsync_parent(const char *path)
{
    const char *slash = strrchr(path, '/');
    char *dir;
    if (!slash)
        dir = strdup(".");
    else if (slash == path)
        dir = strdup("/");
    else
        dir = strndup(path, (size_t)(slash - path));
    if (!dir) {
        errno = ENOMEM;
        return -1;
    }
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    free(dir);
    if (fd < 0)
        return -1;
    int rc = fsync(fd);
    int saved = errno;
    close(fd);
    errno = saved;
    return rc;
}

int safetensors_write(const char *path, const st_write_tensor *tensors, int n,
                      const char *const *metadata, lr_error *err)
{
    int rc = 0, fd = -1;
    char shown[ST_SHOW_PATH + 8];
    char *tmp = NULL, *header = NULL;
    int64_t *begins = NULL, *nbytes = NULL;
    bool created = false, renamed = false;
    const char *step = "";  /* what failed, for the message */

    if (!path || !path[0])
        return lr_error_set(err, LR_EINVAL, "safetensors_write: no path given");
    show_path(shown, sizeof shown, path);
    if (n < 0 || (n > 0 && !tensors))
        return lr_error_set(err, LR_EINVAL, "%s: invalid tensor list (n = %d)", shown, n);

    begins = calloc(n ? (size_t)n : 1, sizeof *begins);
    nbytes = calloc(n ? (size_t)n : 1, sizeof *nbytes);
    if (!begins || !nbytes) {
        rc = lr_error_set(err, LR_ENOMEM, "%s: out of memory", shown);
        goto fail;
    }
    if ((rc = plan_write(shown, tensors, n, metadata, begins, nbytes, err)) < 0)
        goto fail;
    if ((rc = build_header(shown, tensors, n, metadata, begins, nbytes, &header, err)) < 0)
        goto fail;
    size_t jlen = strlen(header);
    size_t hlen = (jlen + 7) & ~(size_t)7;  /* 8 + hlen is then a multiple of 8 */

    size_t tlen = strlen(path) + 32;
    if (!(tmp = malloc(tlen))) {
        rc = lr_error_set(err, LR_ENOMEM, "%s: out of memory", shown);
        goto fail;
    }
    snprintf(tmp, tlen, "%s.tmp.%ld", path, (long)getpid());
    fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0) {
        int e = errno;
        rc = lr_error_set(err, LR_EIO, "%s: cannot create temporary file: %s%s", shown,
                          strerror(e),
                          e == EEXIST ? " (left by a crashed writer? remove *.tmp.* files)" : "");
        goto fail;
    }
    created = true;

    unsigned char len8[8];
    for (int b = 0; b < 8; b++)
        len8[b] = (unsigned char)((uint64_t)hlen >> (8 * b));
    /* Both paddings are at most 7 bytes: the header to 8 + hlen, tensors to 8 bytes. */
    static const char spaces[] = "       ";
    static const unsigned char zeros[7];
    step = "write";
    if (write_all(fd, len8, 8) < 0 || write_all(fd, header, jlen) < 0 ||
        write_all(fd, spaces, hlen - jlen) < 0)
        goto io_fail;
    int64_t off = 0;
    for (int i = 0; i < n; i++) {
        if (write_all(fd, zeros, (size_t)(begins[i] - off)) < 0 ||
            (nbytes[i] && write_all(fd, tensors[i].data, (size_t)nbytes[i]) < 0))
            goto io_fail;
        off = begins[i] + nbytes[i];
    }
    step = "fsync";
    if (fsync(fd) < 0)
        goto io_fail;
    int cfd = fd;
    fd = -1;
    step = "close";
    if (close(cfd) < 0)
        goto io_fail;
    step = "rename";
    if (rename(tmp, path) < 0)
        goto io_fail;
    renamed = true;
    step = "fsync of the directory";
    if (fsync_parent(path) < 0)
        goto io_fail;

    free(tmp);
    free(header);
    free(begins);
    free(nbytes);
    return 0;

io_fail:
    rc = lr_error_set(err, LR_EIO, "%s: %s failed: %s (disk full or read-only?)", shown, step,
                      strerror(errno));
fail:
    if (fd >= 0)
        close(fd);
    if (created && !renamed)
        unlink(tmp);
    /* The contract is "nothing at path on error", even when only the directory fsync
     * failed after the rename. */
    if (renamed)
        unlink(path);
    free(tmp);
    free(header);
    free(begins);
    free(nbytes);
    return rc;
}
