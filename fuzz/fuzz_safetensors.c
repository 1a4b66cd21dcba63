/* fuzz_safetensors: any bytes as a .safetensors file. safetensors_open either refuses it
 * with a message naming the file, or every tensor it lists agrees with an independent
 * reading of the header: the named byte range, shape × dtype size == bytes, ranges inside
 * the data section and not overlapping, lookup by name, metadata, and F32/F16/BF16
 * tensors convert (other dtypes are refused as unsupported). safetensors_open_unmapped
 * decides the same, lists the same tensors at the same file offsets, and reads each into
 * the same floats as the mapped conversion. */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/safetensors.h"
#include "fuzz/fuzzutil.h"

static uint64_t le64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

static void check_tensor(const safetensors *st, const st_tensor *t, json_t *entry,
                         const uint8_t *body, size_t body_len, const safetensors *un,
                         uint64_t body_offset)
{
    FUZZ_CHECK(t->name && safetensors_find(st, t->name) == t, "lookup of '%s'", t->name);
    FUZZ_CHECK(json_is_object(entry), "'%s' is listed but not an object in the header",
               t->name);
    FUZZ_CHECK(t->ndim >= 0 && t->ndim <= ST_MAX_DIMS, "ndim %d", t->ndim);
    json_t *shape = json_object_get(entry, "shape");
    FUZZ_CHECK((int)json_array_size(shape) == t->ndim, "'%s' ndim %d vs header %zu", t->name,
               t->ndim, json_array_size(shape));
    int64_t numel = 1;
    for (int d = 0; d < t->ndim; d++) {
        json_t *v = json_array_get(shape, (size_t)d);
        FUZZ_CHECK(json_is_integer(v) && json_integer_value(v) == t->shape[d] &&
                   t->shape[d] >= 0, "'%s' dim %d", t->name, d);
        FUZZ_CHECK(t->shape[d] == 0 || numel <= INT64_MAX / t->shape[d], "'%s' shape overflows",
                   t->name);
        numel *= t->shape[d];
    }
    FUZZ_CHECK(numel == t->numel, "'%s' numel %lld vs product %lld", t->name,
               (long long)t->numel, (long long)numel);
    FUZZ_CHECK((uint64_t)numel * st_dtype_size(t->dtype) == t->nbytes, "'%s' nbytes", t->name);
    FUZZ_CHECK(strcmp(st_dtype_name(t->dtype),
                      json_string_value(json_object_get(entry, "dtype"))) == 0,
               "'%s' dtype", t->name);
    json_t *off = json_object_get(entry, "data_offsets");
    json_int_t b = json_integer_value(json_array_get(off, 0));
    json_int_t e = json_integer_value(json_array_get(off, 1));
    FUZZ_CHECK(b >= 0 && b <= e && (uint64_t)e <= body_len && (uint64_t)(e - b) == t->nbytes,
               "'%s' range [%lld, %lld) in a data section of %zu", t->name, (long long)b,
               (long long)e, body_len);
    FUZZ_CHECK(t->nbytes == 0 || memcmp(t->data, body + b, t->nbytes) == 0,
               "'%s' data is not the bytes of its range", t->name);
    const st_tensor *tu = safetensors_find(un, t->name);
    FUZZ_CHECK(tu && tu->data == NULL && tu->dtype == t->dtype && tu->numel == t->numel &&
               tu->nbytes == t->nbytes && t->offset == body_offset + (uint64_t)b &&
               tu->offset == t->offset, "'%s' unmapped differs (offset %llu, mapped %llu)",
               t->name, tu ? (unsigned long long)tu->offset : 0ULL,
               (unsigned long long)t->offset);

    if (t->numel <= (1 << 16)) {
        float *dst = malloc(sizeof(float) * (size_t)(t->numel ? t->numel : 1));
        lr_error err = {0};
        int rc = st_tensor_to_f32(t, dst, &err);
        float *dst2 = malloc(sizeof(float) * (size_t)(t->numel ? t->numel : 1));
        lr_error err2 = {0};
        int rc2 = st_tensor_read_f32(un, tu, dst2, &err2);
        FUZZ_CHECK(rc2 == rc && (rc || t->numel == 0 ||
                                 memcmp(dst, dst2, sizeof(float) * (size_t)t->numel) == 0),
                   "'%s' unmapped read: rc %d vs %d, or other floats", t->name, rc2, rc);
        free(dst2);
        if (t->dtype == ST_F32 || t->dtype == ST_F16 || t->dtype == ST_BF16) {
            FUZZ_CHECK(rc == 0, "'%s' conversion failed: %s", t->name, err.msg);
            for (int64_t i = 0; i < t->numel && t->dtype == ST_F32; i++) {
                float f;
                memcpy(&f, (const char *)t->data + 4 * i, 4);
                FUZZ_CHECK(memcmp(&f, &dst[i], 4) == 0 || (isnan(f) && isnan(dst[i])),
                           "'%s' F32 element %lld changed", t->name, (long long)i);
            }
        } else {
            FUZZ_CHECK(rc == LR_ENOTSUP, "'%s' dtype %s converted (rc %d)", t->name,
                       st_dtype_name(t->dtype), rc);
            fuzz_check_error(rc, &err);
        }
        free(dst);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char dir[512], path[600];
    fuzz_path(dir, sizeof dir, "st");
    fuzz_write(dir, "t.safetensors", data, size);
    snprintf(path, sizeof path, "%s/t.safetensors", dir);

    lr_error err = {0}, err_un = {0};
    safetensors *st = safetensors_open(path, &err);
    safetensors *un = safetensors_open_unmapped(path, &err_un);
    FUZZ_CHECK(!st == !un, "mapped %s, unmapped %s", st ? "opened" : "refused",
               un ? "opened" : "refused");
    if (!st) {
        FUZZ_CHECK(err_un.code == err.code && strcmp(err_un.msg, err.msg) == 0,
                   "refused differently: '%s' vs '%s'", err.msg, err_un.msg);
        fuzz_check_error(err.code, &err);
        FUZZ_CHECK(strstr(err.msg, "t.safetensors"), "message does not name the file: '%s'",
                   err.msg);
        return 0;
    }
    FUZZ_CHECK(size >= 8, "a file of %zu bytes opened", size);
    uint64_t hl = le64(data);
    FUZZ_CHECK(hl <= size - 8, "header length %llu beyond the file",
               (unsigned long long)hl);
    json_t *root = json_loadb((const char *)data + 8, (size_t)hl, JSON_REJECT_DUPLICATES, NULL);
    FUZZ_CHECK(json_is_object(root), "opened, but the header is not a JSON object");
    const uint8_t *body = data + 8 + hl;
    size_t body_len = size - 8 - (size_t)hl;

    int n = safetensors_count(st);
    size_t listed = json_object_size(root) - (json_object_get(root, "__metadata__") ? 1 : 0);
    FUZZ_CHECK(n >= 0 && (size_t)n == listed, "%d tensors, header lists %zu", n, listed);
    for (int i = 0; i < n; i++) {
        const st_tensor *t = safetensors_at(st, i);
        check_tensor(st, t, json_object_get(root, t->name), body, body_len, un, 8 + hl);
        /* no two non-empty ranges overlap */
        for (int j = 0; j < i; j++) {
            const st_tensor *u = safetensors_at(st, j);
            const uint8_t *a0 = t->data, *b0 = u->data;
            FUZZ_CHECK(!t->nbytes || !u->nbytes || a0 + t->nbytes <= b0 ||
                       b0 + u->nbytes <= a0, "'%s' and '%s' overlap", t->name, u->name);
        }
    }
    json_t *meta = json_object_get(root, "__metadata__");
    const char *k;
    json_t *v;
    json_object_foreach(meta, k, v) {
        const char *got = safetensors_metadata(st, k);
        FUZZ_CHECK(json_is_string(v) && got && strcmp(got, json_string_value(v)) == 0,
                   "metadata '%s'", k);
    }
    FUZZ_CHECK(safetensors_find(st, "\x01no such tensor") == NULL, "found a missing name");
    json_decref(root);
    safetensors_close(st);
    safetensors_close(un);
    return 0;
}
