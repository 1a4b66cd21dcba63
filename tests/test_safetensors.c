/* Tests for core/safetensors: write → open round trips, F16/BF16 conversion against an
 * independent arithmetic reference and known bit patterns, and a table of crafted bad
 * files that must each be refused with a specific message. */
#include <check.h>
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/safetensors.h"
#include "tests/testutil.h"

static char tmpdir[] = "/tmp/lorad_test_st_XXXXXX";

/* path of a file called name inside the test directory (static buffer per call site) */
static void path_in(char *out, size_t cap, const char *name)
{
    snprintf(out, cap, "%s/%s", tmpdir, name);
}

static void write_bytes(const char *path, const void *bytes, size_t len)
{
    FILE *f = fopen(path, "wb");
    ck_assert_msg(f != NULL, "cannot create %s", path);
    if (len)
        ck_assert_uint_eq(fwrite(bytes, 1, len, f), len);
    ck_assert_int_eq(fclose(f), 0);
}

/* Opens path expecting failure, mapped and unmapped alike (one parser behind both); the
 * message must contain want and the file name. */
static void expect_refused(const char *path, const char *file, int code, const char *want)
{
    for (int unmapped = 0; unmapped < 2; unmapped++) {
        lr_error e = {0};
        safetensors *st = unmapped ? safetensors_open_unmapped(path, &e)
                                   : safetensors_open(path, &e);
        ck_assert_msg(st == NULL, "%s: opened (%s), expected refusal with '%s'", file,
                      unmapped ? "unmapped" : "mapped", want);
        safetensors_close(st);
        ck_assert_msg(strstr(e.msg, want) != NULL, "%s: message '%s' lacks '%s'", file, e.msg,
                      want);
        ck_assert_msg(strstr(e.msg, file) != NULL, "message '%s' does not name %s", e.msg, file);
        ck_assert_int_eq(e.code, code);
    }
}

static int file_exists(const char *path)
{
    struct stat sb;
    return stat(path, &sb) == 0;
}

/* No "*.tmp.*" file may be left in the test directory. */
static void assert_no_temp_files(void)
{
    DIR *d = opendir(tmpdir);
    ck_assert_ptr_nonnull(d);
    struct dirent *de;
    while ((de = readdir(d)) != NULL)
        ck_assert_msg(strstr(de->d_name, ".tmp.") == NULL, "temp file left: %s", de->d_name);
    closedir(d);
}

/* ---- core: round trips ---- */

START_TEST(test_write_open_round_trip_keeps_order_shapes_data_metadata)
{
    char path[512];
    path_in(path, sizeof path, "round.safetensors");
    float a[3 * 5], b[7], s = 42.5f, c[2 * 1 * 3];
    for (int i = 0; i < 15; i++)
        a[i] = (float)i * 0.25f - 1.0f;
    for (int i = 0; i < 7; i++)
        b[i] = -(float)i;
    for (int i = 0; i < 6; i++)
        c[i] = 1e-3f * (float)(i + 1);
    /* b has 7 floats = 28 bytes, so the next tensor needs padding to reach 8 alignment. */
    st_write_tensor ts[] = {
        {"layers.0.q_proj.weight", 2, {3, 5}, a, 0},
        {"b", 1, {7}, b, 0},
        {"scalar", 0, {0}, &s, 0},
        {"empty", 2, {0, 7}, NULL, 0},
        {"c", 3, {2, 1, 3}, c, 0},
    };
    const char *meta[] = {"format", "pt", "note", "lorad test", NULL};
    lr_error e = {0};
    ck_assert_int_eq(safetensors_write(path, ts, 5, meta, &e), 0);
    assert_no_temp_files();

    safetensors *st = safetensors_open(path, &e);
    ck_assert_msg(st != NULL, "%s", e.msg);
    ck_assert_str_eq(safetensors_path(st), path);
    ck_assert_int_eq(safetensors_count(st), 5);
    for (int i = 0; i < 5; i++) {
        const st_tensor *t = safetensors_at(st, i);
        ck_assert_ptr_nonnull(t);
        ck_assert_str_eq(t->name, ts[i].name);
        ck_assert_ptr_eq(safetensors_find(st, ts[i].name), t);
        ck_assert_int_eq(t->dtype, ST_F32);
        ck_assert_int_eq(t->ndim, ts[i].ndim);
        int64_t numel = 1;
        for (int d = 0; d < t->ndim; d++) {
            ck_assert_int_eq(t->shape[d], ts[i].shape[d]);
            numel *= ts[i].shape[d];
        }
        ck_assert_int_eq(t->numel, numel);
        ck_assert_uint_eq(t->nbytes, (size_t)numel * 4);
        float out[16] = {0};
        ck_assert_int_eq(st_tensor_to_f32(t, out, &e), 0);
        if (numel)
            ck_assert_int_eq(memcmp(out, ts[i].data, (size_t)numel * 4), 0);
    }
    ck_assert_int_eq(safetensors_at(st, 2)->numel, 1);
    ck_assert_int_eq(safetensors_at(st, 3)->numel, 0);
    ck_assert_ptr_null(safetensors_at(st, 5));
    ck_assert_ptr_null(safetensors_at(st, -1));
    ck_assert_str_eq(safetensors_metadata(st, "format"), "pt");
    ck_assert_str_eq(safetensors_metadata(st, "note"), "lorad test");
    ck_assert_ptr_null(safetensors_metadata(st, "missing"));
    safetensors_close(st);
}
END_TEST

/* Reads the raw file back: 8+N is a multiple of 8, the padding is spaces, and every
 * tensor begins 8-aligned with zero bytes in the gaps. */
START_TEST(test_write_aligns_header_and_tensors_to_8_bytes)
{
    char path[512];
    path_in(path, sizeof path, "aligned.safetensors");
    float x[3] = {1, 2, 3}, y[1] = {4}, z[5] = {5, 6, 7, 8, 9};
    st_write_tensor ts[] = {{"x", 1, {3}, x, 0}, {"y", 1, {1}, y, 0}, {"z", 1, {5}, z, 0}};
    lr_error e = {0};
    ck_assert_int_eq(safetensors_write(path, ts, 3, NULL, &e), 0);

    FILE *f = fopen(path, "rb");
    ck_assert_ptr_nonnull(f);
    unsigned char buf[4096];
    size_t len = fread(buf, 1, sizeof buf, f);
    fclose(f);
    uint64_t n = 0;
    for (int b = 7; b >= 0; b--)
        n = (n << 8) | buf[b];
    ck_assert_uint_eq((8 + n) % 8, 0);
    ck_assert_uint_le(8 + n, len);
    ck_assert_int_eq(buf[8], '{');
    /* Expected layout: x at [0,12], y at [16,20], z at [24,44]. */
    const char *hdr = (const char *)buf + 8;
    ck_assert_ptr_nonnull(strstr(hdr, "{\"x\":{\"dtype\":\"F32\",\"shape\":[3],"
                                      "\"data_offsets\":[0,12]},"
                                      "\"y\":{\"dtype\":\"F32\",\"shape\":[1],"
                                      "\"data_offsets\":[16,20]},"
                                      "\"z\":{\"dtype\":\"F32\",\"shape\":[5],"
                                      "\"data_offsets\":[24,44]}}"));
    ck_assert_ptr_null(strstr(hdr, "__metadata__"));
    size_t jend = 8 + n;
    while (buf[jend - 1] == ' ')
        jend--;
    ck_assert_int_eq(buf[jend - 1], '}');
    ck_assert_uint_lt(8 + n - jend, 8);
    const unsigned char *data = buf + 8 + n;
    ck_assert_uint_eq(len, 8 + n + 44);
    for (int i = 12; i < 16; i++)
        ck_assert_int_eq(data[i], 0);
    for (int i = 20; i < 24; i++)
        ck_assert_int_eq(data[i], 0);
    ck_assert_int_eq(memcmp(data + 16, y, 4), 0);
    ck_assert_int_eq(memcmp(data + 24, z, 20), 0);
}
END_TEST

START_TEST(test_write_replaces_existing_file)
{
    char path[512];
    path_in(path, sizeof path, "replace.safetensors");
    write_bytes(path, "old contents", 12);
    float v = 3.0f;
    st_write_tensor t = {"v", 1, {1}, &v, 0};
    lr_error e = {0};
    ck_assert_int_eq(safetensors_write(path, &t, 1, NULL, &e), 0);
    safetensors *st = safetensors_open(path, &e);
    ck_assert_msg(st != NULL, "%s", e.msg);
    ck_assert_int_eq(safetensors_count(st), 1);
    safetensors_close(st);
    assert_no_temp_files();
}
END_TEST

START_TEST(test_find_300_tensors_by_name_and_missing_is_null)
{
    enum { N = 300 };
    char path[512];
    path_in(path, sizeof path, "many.safetensors");
    static char names[N][48];
    static float vals[N];
    st_write_tensor ts[N];
    for (int i = 0; i < N; i++) {
        /* Header order differs from name order: layer numbers are not zero-padded. */
        snprintf(names[i], sizeof names[i], "model.layers.%d.mlp.%s.weight", i / 3,
                 (const char *[]){"up_proj", "down_proj", "gate_proj"}[i % 3]);
        vals[i] = (float)i;
        ts[i] = (st_write_tensor){names[i], 1, {1}, &vals[i], 0};
    }
    lr_error e = {0};
    ck_assert_int_eq(safetensors_write(path, ts, N, NULL, &e), 0);
    safetensors *st = safetensors_open(path, &e);
    ck_assert_msg(st != NULL, "%s", e.msg);
    ck_assert_int_eq(safetensors_count(st), N);
    for (int i = 0; i < N; i++) {
        const st_tensor *t = safetensors_find(st, names[i]);
        ck_assert_msg(t != NULL, "missing %s", names[i]);
        ck_assert_str_eq(t->name, names[i]);
        ck_assert_ptr_eq(t, safetensors_at(st, i));
        float f;
        memcpy(&f, t->data, 4);
        ck_assert_float_eq(f, (float)i);
    }
    ck_assert_ptr_null(safetensors_find(st, "model.layers.0.mlp.up_proj"));
    ck_assert_ptr_null(safetensors_find(st, "model.layers.100.mlp.up_proj.weight"));
    ck_assert_ptr_null(safetensors_find(st, ""));
    ck_assert_ptr_null(safetensors_find(st, "zzz"));
    safetensors_close(st);
}
END_TEST

START_TEST(test_dtype_names_and_sizes)
{
    ck_assert_str_eq(st_dtype_name(ST_F32), "F32");
    ck_assert_str_eq(st_dtype_name(ST_BF16), "BF16");
    ck_assert_str_eq(st_dtype_name(ST_F8_E5M2), "F8_E5M2");
    ck_assert_uint_eq(st_dtype_size(ST_F32), 4);
    ck_assert_uint_eq(st_dtype_size(ST_F16), 2);
    ck_assert_uint_eq(st_dtype_size(ST_F64), 8);
    ck_assert_uint_eq(st_dtype_size(ST_BOOL), 1);
    ck_assert_uint_eq(st_dtype_size(ST_F8_E4M3), 1);
    ck_assert_uint_eq(st_dtype_size((st_dtype)99), 0);
}
END_TEST

/* ---- core: conversions ---- */

/* Reference half → double by arithmetic on the fields, independent of bit tricks. */
static double ref_half(uint16_t h)
{
    int sign = h >> 15, exp = (h >> 10) & 0x1f, mant = h & 0x3ff;
    double v;
    if (exp == 0)
        v = ldexp((double)mant, -24);
    else if (exp == 31)
        v = mant ? NAN : INFINITY;
    else
        v = ldexp((double)(1024 + mant), exp - 25);
    return sign ? -v : v;
}

START_TEST(test_f16_known_bit_patterns)
{
    ck_assert_float_eq(st_f16_to_f32(0x3C00), 1.0f);
    ck_assert_float_eq(st_f16_to_f32(0xC000), -2.0f);
    ck_assert_float_eq(st_f16_to_f32(0x3800), 0.5f);
    ck_assert_float_eq(st_f16_to_f32(0x7BFF), 65504.0f);
    ck_assert_float_eq(st_f16_to_f32(0xFBFF), -65504.0f);
    ck_assert_float_eq(st_f16_to_f32(0x3555), 0.333251953125f);
    ck_assert_float_eq(st_f16_to_f32(0x0400), 0x1p-14f);              /* smallest normal */
    ck_assert_float_eq(st_f16_to_f32(0x0001), 0x1p-24f);              /* smallest subnormal */
    ck_assert_float_eq(st_f16_to_f32(0x03FF), 1023.0f * 0x1p-24f);    /* largest subnormal */
    ck_assert_float_eq(st_f16_to_f32(0x8001), -0x1p-24f);
    ck_assert_float_eq(st_f16_to_f32(0x0000), 0.0f);
    float nz = st_f16_to_f32(0x8000);
    ck_assert(nz == 0.0f && signbit(nz));
    ck_assert(isinf(st_f16_to_f32(0x7C00)) && st_f16_to_f32(0x7C00) > 0);
    ck_assert(isinf(st_f16_to_f32(0xFC00)) && st_f16_to_f32(0xFC00) < 0);
    ck_assert(isnan(st_f16_to_f32(0x7E00)));
    ck_assert(isnan(st_f16_to_f32(0x7C01)));  /* smallest-payload NaN stays NaN */
    ck_assert(isnan(st_f16_to_f32(0xFFFF)));
}
END_TEST

START_TEST(test_f16_all_65536_values_match_arithmetic_reference)
{
    for (uint32_t h = 0; h <= 0xFFFF; h++) {
        float got = st_f16_to_f32((uint16_t)h);
        double want = ref_half((uint16_t)h);
        if (isnan(want))
            ck_assert_msg(isnan(got), "0x%04x: got %g, want NaN", h, (double)got);
        else
            ck_assert_msg((double)got == want && !signbit(got) == !signbit(want),
                          "0x%04x: got %.9g, want %.9g", h, (double)got, want);
    }
}
END_TEST

START_TEST(test_bf16_known_bit_patterns)
{
    ck_assert_float_eq(st_bf16_to_f32(0x3F80), 1.0f);
    ck_assert_float_eq(st_bf16_to_f32(0xC000), -2.0f);
    ck_assert_float_eq(st_bf16_to_f32(0x4049), 3.140625f);
    ck_assert_float_eq(st_bf16_to_f32(0x7F7F), 0x1.FEp127f);  /* largest finite */
    ck_assert_float_eq(st_bf16_to_f32(0x0001), 0x1p-133f);    /* smallest subnormal */
    ck_assert(isinf(st_bf16_to_f32(0x7F80)) && st_bf16_to_f32(0x7F80) > 0);
    ck_assert(isinf(st_bf16_to_f32(0xFF80)) && st_bf16_to_f32(0xFF80) < 0);
    ck_assert(isnan(st_bf16_to_f32(0x7FC0)));
    float nz = st_bf16_to_f32(0x8000);
    ck_assert(nz == 0.0f && signbit(nz));
}
END_TEST

/* F16 and BF16 tensors in a file, F16 deliberately at an odd (unaligned) offset. */
START_TEST(test_tensor_to_f32_converts_f16_bf16_from_file_unaligned)
{
    char path[512];
    path_in(path, sizeof path, "halfs.safetensors");
    const char *hdr = "{\"pad\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},"
                      "\"h\":{\"dtype\":\"F16\",\"shape\":[2,3],\"data_offsets\":[1,13]},"
                      "\"b\":{\"dtype\":\"BF16\",\"shape\":[3],\"data_offsets\":[13,19]},"
                      "\"__metadata__\":{\"format\":\"pt\"}}";
    const uint16_t hv[6] = {0x3C00, 0xC000, 0x7BFF, 0x0001, 0x3555, 0x8400};
    const uint16_t bv[3] = {0x3F80, 0xC000, 0x4049};
    unsigned char data[19] = {0xAA};
    for (int i = 0; i < 6; i++) {
        data[1 + 2 * i] = (unsigned char)(hv[i] & 0xff);
        data[2 + 2 * i] = (unsigned char)(hv[i] >> 8);
    }
    for (int i = 0; i < 3; i++) {
        data[13 + 2 * i] = (unsigned char)(bv[i] & 0xff);
        data[14 + 2 * i] = (unsigned char)(bv[i] >> 8);
    }
    testutil_write_safetensors_raw(path, hdr, strlen(hdr), data, sizeof data);
    lr_error e = {0};
    safetensors *st = safetensors_open(path, &e);
    ck_assert_msg(st != NULL, "%s", e.msg);
    float out[6];
    const st_tensor *h = safetensors_find(st, "h");
    ck_assert_ptr_nonnull(h);
    ck_assert_int_eq(h->dtype, ST_F16);
    ck_assert_int_eq(st_tensor_to_f32(h, out, &e), 0);
    const float hwant[6] = {1.0f, -2.0f, 65504.0f, 0x1p-24f, 0.333251953125f, -0x1p-14f};
    for (int i = 0; i < 6; i++)
        ck_assert_float_eq(out[i], hwant[i]);
    const st_tensor *b = safetensors_find(st, "b");
    ck_assert_int_eq(st_tensor_to_f32(b, out, &e), 0);
    ck_assert_float_eq(out[0], 1.0f);
    ck_assert_float_eq(out[1], -2.0f);
    ck_assert_float_eq(out[2], 3.140625f);
    ck_assert_str_eq(safetensors_metadata(st, "format"), "pt");
    safetensors_close(st);
}
END_TEST

START_TEST(test_tensor_to_f32_refuses_i32_naming_dtype)
{
    char path[512];
    path_in(path, sizeof path, "ints.safetensors");
    const char *hdr = "{\"ids\":{\"dtype\":\"I32\",\"shape\":[2],\"data_offsets\":[0,8]}}";
    testutil_write_safetensors_raw(path, hdr, strlen(hdr), NULL, 8);
    lr_error e = {0};
    safetensors *st = safetensors_open(path, &e);
    ck_assert_msg(st != NULL, "%s", e.msg);
    const st_tensor *t = safetensors_find(st, "ids");
    ck_assert_int_eq(t->dtype, ST_I32);
    float out[2];
    ck_assert_int_eq(st_tensor_to_f32(t, out, &e), LR_ENOTSUP);
    ck_assert_int_eq(e.code, LR_ENOTSUP);
    ck_assert_msg(strstr(e.msg, "I32") && strstr(e.msg, "'ids'"), "%s", e.msg);
    safetensors_close(st);
}
END_TEST

/* st_tensor_read_f32 on a file opened unmapped gives exactly what the mapped file's
 * st_tensor_to_f32 gives: F32, F16 and BF16 tensors at odd offsets, and BF16/F16 tensors
 * longer than one read chunk (16384 elements) with a partial last chunk. */
START_TEST(test_unmapped_reads_equal_mapped_conversions)
{
    char path[512];
    path_in(path, sizeof path, "unmapped.safetensors");
    enum { NB = 40000, NH = 16385, NF = 7 };
    size_t off_f = 1, off_b = off_f + 4 * NF, off_h = off_b + 2 * NB, len = off_h + 2 * NH;
    char hdr[512];
    snprintf(hdr, sizeof hdr,
             "{\"pad\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},"
             "\"f\":{\"dtype\":\"F32\",\"shape\":[%d],\"data_offsets\":[%zu,%zu]},"
             "\"b\":{\"dtype\":\"BF16\",\"shape\":[8,%d],\"data_offsets\":[%zu,%zu]},"
             "\"h\":{\"dtype\":\"F16\",\"shape\":[%d],\"data_offsets\":[%zu,%zu]}}",
             NF, off_f, off_b, NB / 8, off_b, off_h, NH, off_h, len);
    unsigned char *data = malloc(len);
    uint32_t rng = 99;
    for (size_t i = 0; i < len; i++) {
        rng = rng * 1664525u + 1013904223u;
        data[i] = (unsigned char)(rng >> 24);
    }
    testutil_write_safetensors_raw(path, hdr, strlen(hdr), data, len);
    free(data);
    lr_error e = {0};
    safetensors *mp = safetensors_open(path, &e);
    ck_assert_msg(mp != NULL, "%s", e.msg);
    safetensors *un = safetensors_open_unmapped(path, &e);
    ck_assert_msg(un != NULL, "%s", e.msg);
    ck_assert_int_eq(safetensors_count(un), 4);
    const char *names[] = {"f", "b", "h"};
    float *want = malloc(NB * sizeof *want), *got = malloc(NB * sizeof *got);
    for (int k = 0; k < 3; k++) {
        const st_tensor *tm = safetensors_find(mp, names[k]), *tu = safetensors_find(un, names[k]);
        ck_assert_ptr_nonnull(tu);
        ck_assert_ptr_null(tu->data);
        ck_assert_uint_eq(tu->offset, tm->offset);
        ck_assert_int_eq(tu->numel, tm->numel);
        ck_assert_int_eq(st_tensor_to_f32(tm, want, &e), 0);
        memset(got, 0xA5, NB * sizeof *got);
        ck_assert_msg(st_tensor_read_f32(un, tu, got, &e) == 0, "%s", e.msg);
        ck_assert_msg(memcmp(want, got, (size_t)tm->numel * sizeof *got) == 0, "tensor %s",
                      names[k]);
        /* the mapped file reads through the same call */
        memset(got, 0xA5, NB * sizeof *got);
        ck_assert_int_eq(st_tensor_read_f32(mp, tm, got, &e), 0);
        ck_assert(memcmp(want, got, (size_t)tm->numel * sizeof *got) == 0);
    }
    /* st_tensor_to_f32 has no data to convert in an unmapped file: an error, not a crash */
    ck_assert_int_eq(st_tensor_to_f32(safetensors_find(un, "f"), got, &e), LR_EINVAL);
    free(want);
    free(got);
    safetensors_close(mp);
    safetensors_close(un);
}
END_TEST

/* A file that shrinks after it was opened unmapped: each tensor past the new end is an
 * I/O error naming the file and the tensor (a mapped file would raise SIGBUS); tensors
 * still inside read as before. */
START_TEST(test_unmapped_file_truncated_after_open_is_an_error)
{
    char path[512];
    path_in(path, sizeof path, "shrinks.safetensors");
    float a[4] = {1, 2, 3, 4}, b[4] = {5, 6, 7, 8};
    st_write_tensor ts[] = {{"a", 1, {4}, a, 0}, {"b", 1, {4}, b, 0}};
    lr_error e = {0};
    ck_assert_int_eq(safetensors_write(path, ts, 2, NULL, &e), 0);
    safetensors *st = safetensors_open_unmapped(path, &e);
    ck_assert_msg(st != NULL, "%s", e.msg);
    const st_tensor *tb = safetensors_find(st, "b");
    ck_assert_int_eq(truncate(path, (off_t)(tb->offset + 6)), 0);  /* cuts b short */
    float out[4];
    ck_assert_int_eq(st_tensor_read_f32(st, safetensors_find(st, "a"), out, &e), 0);
    ck_assert_float_eq(out[3], 4.0f);
    ck_assert_int_eq(st_tensor_read_f32(st, tb, out, &e), LR_EIO);
    ck_assert_msg(strstr(e.msg, "tensor 'b'") && strstr(e.msg, "shrinks.safetensors") &&
                  strstr(e.msg, "shorter than when it was opened"), "%s", e.msg);
    safetensors_close(st);
}
END_TEST

/* ---- core: writer errors ---- */

START_TEST(test_write_into_missing_directory_fails_and_leaves_nothing)
{
    char path[512];
    snprintf(path, sizeof path, "%s/no/such/dir/out.safetensors", tmpdir);
    float v = 1.0f;
    st_write_tensor t = {"v", 1, {1}, &v, 0};
    lr_error e = {0};
    ck_assert_int_lt(safetensors_write(path, &t, 1, NULL, &e), 0);
    ck_assert_int_eq(e.code, LR_EIO);
    ck_assert_msg(strstr(e.msg, "out.safetensors") != NULL, "%s", e.msg);
    ck_assert(!file_exists(path));
    assert_no_temp_files();
}
END_TEST

START_TEST(test_write_rejects_bad_inputs_and_leaves_nothing)
{
    char path[512];
    path_in(path, sizeof path, "badwrite.safetensors");
    float v[4] = {1, 2, 3, 4};
    struct {
        st_write_tensor t[2];
        int n;
        const char *want;
    } cases[] = {
        {{{"a", 9, {1, 1, 1, 1, 1, 1, 1, 1}, v, 0}}, 1, "ndim 9"},
        {{{"a", -1, {0}, v, 0}}, 1, "ndim -1"},
        {{{"a", 2, {2, -2}, v, 0}}, 1, "shape[1] = -2 is negative"},
        {{{"a", 1, {4}, NULL, 0}}, 1, "data is NULL for 4 elements"},
        {{{NULL, 1, {4}, v, 0}}, 1, "has no name"},
        {{{"__metadata__", 1, {4}, v, 0}}, 1, "reserved"},
        {{{"a", 1, {4}, v, 0}, {"a", 1, {1}, v, 0}}, 2, "'a' given twice"},
        {{{"a", 2, {INT64_MAX / 2, 4}, v, 0}}, 1, "overflows"},
        {{{"bad\xff", 1, {1}, v, 0}}, 1, "not valid UTF-8"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        lr_error e = {0};
        ck_assert_int_eq(safetensors_write(path, cases[i].t, cases[i].n, NULL, &e), LR_EINVAL);
        ck_assert_msg(strstr(e.msg, cases[i].want) != NULL, "case %zu: '%s' lacks '%s'", i,
                      e.msg, cases[i].want);
        ck_assert(!file_exists(path));
    }
    lr_error e = {0};
    st_write_tensor ok = {"a", 1, {4}, v, 0};
    const char *odd_meta[] = {"key", NULL};
    ck_assert_int_eq(safetensors_write(path, &ok, 1, odd_meta, &e), LR_EINVAL);
    ck_assert_msg(strstr(e.msg, "'key' has no value") != NULL, "%s", e.msg);
    const char *dup_meta[] = {"k", "1", "k", "2", NULL};
    ck_assert_int_eq(safetensors_write(path, &ok, 1, dup_meta, &e), LR_EINVAL);
    ck_assert_msg(strstr(e.msg, "'k' given twice") != NULL, "%s", e.msg);
    ck_assert_int_eq(safetensors_write(path, &ok, -1, NULL, &e), LR_EINVAL);
    ck_assert(!file_exists(path));
    assert_no_temp_files();
    /* NULL data is fine when there are no elements. */
    st_write_tensor empty = {"e", 2, {3, 0}, NULL, 0};
    ck_assert_int_eq(safetensors_write(path, &empty, 1, NULL, &e), 0);
    ck_assert(file_exists(path));
}
END_TEST

START_TEST(test_write_refuses_taken_temp_name_and_keeps_it)
{
    char path[512], tmp[600];
    path_in(path, sizeof path, "taken.safetensors");
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
    write_bytes(tmp, "someone else's", 14);
    float v = 1.0f;
    st_write_tensor t = {"v", 1, {1}, &v, 0};
    lr_error e = {0};
    ck_assert_int_eq(safetensors_write(path, &t, 1, NULL, &e), LR_EIO);
    ck_assert_msg(strstr(e.msg, "cannot create temporary file") != NULL, "%s", e.msg);
    ck_assert(file_exists(tmp));
    ck_assert(!file_exists(path));
    unlink(tmp);
}
END_TEST

/* A write that fails half-way (file size limit → EFBIG) removes its temporary file. */
START_TEST(test_write_failing_midway_leaves_nothing)
{
    char path[512];
    path_in(path, sizeof path, "efbig.safetensors");
    static float big[4096];
    st_write_tensor t = {"big", 1, {4096}, big, 0};
    struct rlimit old, lim;
    ck_assert_int_eq(getrlimit(RLIMIT_FSIZE, &old), 0);
    lim = old;
    lim.rlim_cur = 1024;
    void (*old_handler)(int) = signal(SIGXFSZ, SIG_IGN);
    ck_assert_int_eq(setrlimit(RLIMIT_FSIZE, &lim), 0);
    lr_error e = {0};
    int rc = safetensors_write(path, &t, 1, NULL, &e);
    setrlimit(RLIMIT_FSIZE, &old);
    signal(SIGXFSZ, old_handler);
    ck_assert_int_eq(rc, LR_EIO);
    ck_assert_msg(strstr(e.msg, "write failed") != NULL, "%s", e.msg);
    ck_assert(!file_exists(path));
    assert_no_temp_files();
}
END_TEST

/* ---- limits: crafted bad files ---- */

#define T_OK "\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]"

/* One crafted header per case: refused with a message containing want. */
static const struct {
    const char *name;    /* what the case proves, used as the file name */
    const char *header;
    size_t data_len;
    const char *want;
} bad_headers[] = {
    {"header_not_json", "{\"t\": {", 4, "header is not valid JSON"},
    {"header_json_array", "[1,2,3]", 4, "header JSON is not an object"},
    {"header_json_string", "\"t\"", 4, "header is not valid JSON"},
    {"header_empty", "", 4, "header is not valid JSON"},
    {"header_trailing_garbage", "{\"t\":{" T_OK "}} x", 4, "header is not valid JSON"},
    {"header_nul_padding", "{\"t\":{" T_OK "}}\0\0", 4, "header is not valid JSON"},
    {"entry_not_object", "{\"t\":[1,2]}", 4, "tensor 't': entry is not a JSON object"},
    {"missing_dtype", "{\"t\":{\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
     "tensor 't': missing \"dtype\""},
    {"missing_shape", "{\"t\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", 4,
     "tensor 't': missing \"shape\""},
    {"missing_data_offsets", "{\"t\":{\"dtype\":\"F32\",\"shape\":[1]}}", 4,
     "tensor 't': missing \"data_offsets\""},
    {"dtype_not_string", "{\"t\":{\"dtype\":4,\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
     "tensor 't': \"dtype\" is not a string"},
    {"unknown_dtype", "{\"t\":{\"dtype\":\"F31\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
     "tensor 't': unknown dtype 'F31'"},
    {"dtype_lowercase", "{\"t\":{\"dtype\":\"f32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
     "unknown dtype 'f32'"},
    {"shape_not_array", "{\"t\":{\"dtype\":\"F32\",\"shape\":4,\"data_offsets\":[0,4]}}", 4,
     "tensor 't': \"shape\" is not an array"},
    {"shape_negative_dim",
     "{\"t\":{\"dtype\":\"F32\",\"shape\":[2,-1],\"data_offsets\":[0,4]}}", 4,
     "tensor 't': shape[1] = -1 is negative"},
    {"shape_real_dim", "{\"t\":{\"dtype\":\"F32\",\"shape\":[1.0],\"data_offsets\":[0,4]}}", 4,
     "tensor 't': shape[0] is not an integer"},
    {"shape_too_many_dims",
     "{\"t\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,4]}}", 4,
     "shape has 9 dimensions, at most 8"},
    {"shape_product_overflow",
     "{\"t\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296],\"data_offsets\":[0,4]}}", 4,
     "tensor 't': shape [4294967296,4294967296]: element count overflows 64 bits"},
    {"shape_bytes_overflow",
     "{\"t\":{\"dtype\":\"F64\",\"shape\":[2,2305843009213693952],\"data_offsets\":[0,4]}}", 4,
     "elements of F64) is over 2^63 bytes"},
    {"data_offsets_one_element", "{\"t\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4]}}",
     4, "tensor 't': \"data_offsets\" is not an array [begin, end]"},
    {"data_offsets_three_elements",
     "{\"t\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4,8]}}", 8,
     "\"data_offsets\" is not an array [begin, end]"},
    {"data_offsets_object",
     "{\"t\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":{\"b\":0}}}", 4,
     "\"data_offsets\" is not an array [begin, end]"},
    {"data_offsets_string",
     "{\"t\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,\"4\"]}}", 4,
     "tensor 't': \"data_offsets\" are not integers"},
    {"data_offsets_reversed",
     "{\"t\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,0]}}", 8,
     "data_offsets [4,0] are not 0 <= begin <= end"},
    {"data_offsets_negative",
     "{\"t\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[-4,0]}}", 8,
     "data_offsets [-4,0] are not 0 <= begin <= end"},
    {"data_offsets_beyond_data",
     "{\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 7,
     "data_offsets [0,8] go beyond the data section (7 bytes"},
    {"data_offsets_too_big_for_int64",
     "{\"t\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,99999999999999999999]}}", 4,
     "too big integer"},
    {"byte_count_mismatch",
     "{\"layers.0.q_proj.weight\":{\"dtype\":\"F32\",\"shape\":[4,8],\"data_offsets\":[0,100]}}",
     100,
     "tensor 'layers.0.q_proj.weight': shape [4,8] (32 elements of F32 = 128 bytes) does "
     "not match data_offsets [0,100] (100 bytes)"},
    {"byte_count_mismatch_f16",
     "{\"t\":{\"dtype\":\"F16\",\"shape\":[3],\"data_offsets\":[0,4]}}", 4,
     "shape [3] (3 elements of F16 = 6 bytes) does not match data_offsets [0,4] (4 bytes)"},
    {"overlapping_ranges",
     "{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]},"
     "\"b\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[12,28]}}", 28,
     "tensors 'a' [0,16] and 'b' [12,28] overlap"},
    {"overlapping_ranges_listed_backwards",
     "{\"b\":{\"dtype\":\"U8\",\"shape\":[8],\"data_offsets\":[8,16]},"
     "\"a\":{\"dtype\":\"U8\",\"shape\":[10],\"data_offsets\":[0,10]}}", 16,
     "tensors 'a' [0,10] and 'b' [8,16] overlap"},
    {"identical_ranges",
     "{\"a\":{" T_OK "},\"b\":{" T_OK "}}", 4, "overlap"},
    {"duplicate_tensor_name", "{\"t\":{" T_OK "},\"t\":{" T_OK "}}", 4,
     "duplicate object key near '\"t\"'"},
    {"duplicate_key_in_entry",
     "{\"t\":{\"dtype\":\"F32\",\"dtype\":\"F16\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
     "duplicate"},
    {"metadata_not_object", "{\"__metadata__\":\"pt\",\"t\":{" T_OK "}}", 4,
     "\"__metadata__\" is not an object of strings"},
    {"metadata_non_string_value", "{\"__metadata__\":{\"format\":\"pt\",\"n\":1},\"t\":{" T_OK "}}",
     4, "\"__metadata__\" value of 'n' is not a string"},
    {"extra_unknown_key",
     "{\"t\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4],\"offset\":0}}", 4,
     "tensor 't': unknown key 'offset'"},
    {"error_in_later_tensor_names_it",
     "{\"ok\":{" T_OK "},\"bad.weight\":{\"dtype\":\"F32\",\"shape\":[1]}}", 4,
     "tensor 'bad.weight': missing \"data_offsets\""},
    {"nul_escape_in_name", "{\"a\\u0000b\":{" T_OK "}}", 4,
     "NUL byte in object key not supported"},
    {"control_chars_in_name_are_masked",
     "{\"a\\nb\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,4]}}", 4,
     "tensor 'a?b': shape [2]"},
};

START_TEST(test_bad_header_is_refused_with_specific_message)
{
    char file[128], path[512];
    snprintf(file, sizeof file, "%s.safetensors", bad_headers[_i].name);
    path_in(path, sizeof path, file);
    /* sizeof-less length: the NUL-padding case embeds \0, so measure from the table. */
    size_t hlen = strlen(bad_headers[_i].header);
    if (strcmp(bad_headers[_i].name, "header_nul_padding") == 0)
        hlen += 2;
    testutil_write_safetensors_raw(path, bad_headers[_i].header, hlen, NULL,
                                   bad_headers[_i].data_len);
    expect_refused(path, file, LR_EINVAL, bad_headers[_i].want);
}
END_TEST

START_TEST(test_empty_file_is_refused)
{
    char path[512];
    path_in(path, sizeof path, "empty.safetensors");
    write_bytes(path, "", 0);
    expect_refused(path, "empty.safetensors", LR_EINVAL, "file is 0 bytes, too short");
}
END_TEST

START_TEST(test_7_byte_file_is_refused)
{
    char path[512];
    path_in(path, sizeof path, "seven.safetensors");
    write_bytes(path, "\x02\0\0\0\0\0\0", 7);
    expect_refused(path, "seven.safetensors", LR_EINVAL, "file is 7 bytes, too short");
}
END_TEST

START_TEST(test_header_length_beyond_file_is_refused)
{
    char path[512];
    path_in(path, sizeof path, "trunc.safetensors");
    const char *hdr = "{\"t\":{" T_OK "}}";
    /* Claim 10 more header bytes than the file holds (data section included). */
    size_t hlen = strlen(hdr);
    unsigned char buf[128] = {0};
    uint64_t claimed = hlen + 4 + 10;
    for (int b = 0; b < 8; b++)
        buf[b] = (unsigned char)(claimed >> (8 * b));
    memcpy(buf + 8, hdr, hlen);
    write_bytes(path, buf, 8 + hlen + 4);
    expect_refused(path, "trunc.safetensors", LR_EINVAL, "goes beyond the end of the file");
}
END_TEST

START_TEST(test_absurd_header_length_is_refused)
{
    char path[512];
    path_in(path, sizeof path, "huge.safetensors");
    unsigned char buf[16] = {0, 0, 0, 0, 0, 0, 0, 0x80, '{', '}'};
    write_bytes(path, buf, sizeof buf);
    expect_refused(path, "huge.safetensors", LR_EINVAL, "exceeds the 104857600-byte limit");
    buf[7] = 0;
    buf[3] = 0x10;  /* 256 MB */
    write_bytes(path, buf, sizeof buf);
    expect_refused(path, "huge.safetensors", LR_EINVAL, "header length 268435456 exceeds");
}
END_TEST

START_TEST(test_non_utf8_header_is_refused)
{
    char path[512];
    path_in(path, sizeof path, "latin1.safetensors");
    const char *hdr = "{\"caf\xe9\":{" T_OK "}}";
    testutil_write_safetensors_raw(path, hdr, strlen(hdr), NULL, 4);
    expect_refused(path, "latin1.safetensors", LR_EINVAL, "unable to decode byte 0xe9");
}
END_TEST

START_TEST(test_missing_file_and_directory_are_refused)
{
    char path[512];
    path_in(path, sizeof path, "nonexistent.safetensors");
    expect_refused(path, "nonexistent.safetensors", LR_ENOTFOUND, "cannot open");
    const char *dir = strrchr(tmpdir, '/') + 1;
    expect_refused(tmpdir, dir, LR_EINVAL, "not a regular file");
}
END_TEST

/* ---- limits: accepted edge cases ---- */

START_TEST(test_accepts_padding_gaps_trailing_bytes_and_empty_tensors)
{
    char path[512];
    path_in(path, sizeof path, "lenient.safetensors");
    /* Out-of-order offsets, a gap [4,8), empty tensors inside and at the end of the data,
     * 5 trailing bytes after the last tensor, and space padding after the JSON. */
    const char *hdr = "{\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]},"
                      "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                      "\"z0\":{\"dtype\":\"F32\",\"shape\":[0,3],\"data_offsets\":[10,10]},"
                      "\"z1\":{\"dtype\":\"BOOL\",\"shape\":[5,0],\"data_offsets\":[21,21]},"
                      "\"s\":{\"dtype\":\"I64\",\"shape\":[],\"data_offsets\":[0,0]}}   ";
    /* "s" claims 0 bytes for a scalar: must be refused, fix it below once proven. */
    testutil_write_safetensors_raw(path, hdr, strlen(hdr), NULL, 21);
    expect_refused(path, "lenient.safetensors", LR_EINVAL,
                   "tensor 's': shape [] (1 elements of I64 = 8 bytes)");

    const char *good = "{\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]},"
                       "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                       "\"z0\":{\"dtype\":\"F32\",\"shape\":[0,3],\"data_offsets\":[10,10]},"
                       "\"z1\":{\"dtype\":\"BOOL\",\"shape\":[5,0],\"data_offsets\":[21,21]},"
                       "\"huge0\":{\"dtype\":\"F64\",\"shape\":[0,9223372036854775807,"
                       "9223372036854775807],\"data_offsets\":[3,3]}}   ";
    testutil_write_safetensors_raw(path, good, strlen(good), NULL, 21);
    lr_error e = {0};
    safetensors *st = safetensors_open(path, &e);
    ck_assert_msg(st != NULL, "%s", e.msg);
    ck_assert_int_eq(safetensors_count(st), 5);
    ck_assert_str_eq(safetensors_at(st, 0)->name, "b");
    const st_tensor *z = safetensors_find(st, "z0");
    ck_assert_int_eq(z->numel, 0);
    ck_assert_uint_eq(z->nbytes, 0);
    ck_assert_int_eq(st_tensor_to_f32(z, NULL, &e), 0);
    ck_assert_int_eq(safetensors_find(st, "huge0")->numel, 0);
    ck_assert_int_eq(safetensors_find(st, "z1")->dtype, ST_BOOL);
    const st_tensor *b = safetensors_find(st, "b");
    ck_assert_int_eq(((const unsigned char *)b->data)[0], 8);  /* counting pattern */
    ck_assert_ptr_null(safetensors_metadata(st, "format"));
    safetensors_close(st);
}
END_TEST

START_TEST(test_accepts_empty_header_object_and_metadata_only)
{
    char path[512];
    path_in(path, sizeof path, "notensors.safetensors");
    testutil_write_safetensors_raw(path, "{}", 2, NULL, 0);
    lr_error e = {0};
    safetensors *st = safetensors_open(path, &e);
    ck_assert_msg(st != NULL, "%s", e.msg);
    ck_assert_int_eq(safetensors_count(st), 0);
    ck_assert_ptr_null(safetensors_find(st, "x"));
    safetensors_close(st);

    const char *hdr = "{\"__metadata__\":{\"a\":\"\",\"b\":\"\xc3\xa9\"}}";
    testutil_write_safetensors_raw(path, hdr, strlen(hdr), NULL, 3);
    st = safetensors_open(path, &e);
    ck_assert_msg(st != NULL, "%s", e.msg);
    ck_assert_int_eq(safetensors_count(st), 0);
    ck_assert_str_eq(safetensors_metadata(st, "a"), "");
    ck_assert_str_eq(safetensors_metadata(st, "b"), "\xc3\xa9");
    safetensors_close(st);

    /* Writing zero tensors round-trips too. */
    ck_assert_int_eq(safetensors_write(path, NULL, 0, NULL, &e), 0);
    st = safetensors_open(path, &e);
    ck_assert_msg(st != NULL, "%s", e.msg);
    ck_assert_int_eq(safetensors_count(st), 0);
    safetensors_close(st);
}
END_TEST

START_TEST(test_null_arguments_do_not_crash)
{
    lr_error e = {0};
    ck_assert_ptr_null(safetensors_open(NULL, &e));
    ck_assert_int_eq(e.code, LR_EINVAL);
    ck_assert_ptr_null(safetensors_open("/nonexistent/x.safetensors", NULL));
    safetensors_close(NULL);
    ck_assert_int_eq(safetensors_count(NULL), 0);
    ck_assert_ptr_null(safetensors_at(NULL, 0));
    ck_assert_ptr_null(safetensors_find(NULL, "x"));
    ck_assert_ptr_null(safetensors_metadata(NULL, "x"));
    ck_assert_int_eq(st_tensor_to_f32(NULL, NULL, &e), LR_EINVAL);
    ck_assert_int_lt(safetensors_write(NULL, NULL, 0, NULL, &e), 0);
}
END_TEST

START_TEST(test_long_path_and_name_keep_messages_bounded)
{
    char name[300];
    memset(name, 'n', sizeof name - 1);
    name[sizeof name - 1] = '\0';
    char hdr[600];
    snprintf(hdr, sizeof hdr, "{\"%s\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,4]}}",
             name);
    char file[200];
    memset(file, 'f', 150);
    strcpy(file + 150, ".safetensors");
    char path[512];
    path_in(path, sizeof path, file);
    testutil_write_safetensors_raw(path, hdr, strlen(hdr), NULL, 4);
    lr_error e = {0};
    ck_assert_ptr_null(safetensors_open(path, &e));
    ck_assert_uint_lt(strlen(e.msg), sizeof e.msg);
    ck_assert_msg(strstr(e.msg, "fff.safetensors: tensor 'nnn") != NULL, "%s", e.msg);
    ck_assert_msg(strstr(e.msg, "...") != NULL, "%s", e.msg);
}
END_TEST

/* Every truncation and many random byte corruptions of a valid file: open must either
 * succeed or fail cleanly (ASan/UBSan catch the rest). */
START_TEST(test_truncated_and_corrupted_files_never_crash)
{
    char good[512], path[512];
    path_in(good, sizeof good, "fuzz_src.safetensors");
    path_in(path, sizeof path, "fuzz.safetensors");
    float a[6] = {1, 2, 3, 4, 5, 6}, s = 7;
    st_write_tensor ts[] = {{"a", 2, {2, 3}, a, 0}, {"s", 0, {0}, &s, 0}, {"e", 1, {0}, NULL, 0}};
    const char *meta[] = {"format", "pt", NULL};
    lr_error e = {0};
    ck_assert_int_eq(safetensors_write(good, ts, 3, meta, &e), 0);
    FILE *f = fopen(good, "rb");
    unsigned char src[1024], buf[1024];
    size_t len = fread(src, 1, sizeof src, f);
    fclose(f);

    int opened = 0;
    for (size_t cut = 0; cut < len; cut++) {
        write_bytes(path, src, cut);
        safetensors *st = safetensors_open(path, &e);
        opened += st != NULL;
        safetensors_close(st);
    }
    ck_assert_int_eq(opened, 0);  /* the last tensor ends at the end of the file */

    uint32_t rng = 12345;
    static const unsigned char interesting[] = {'"', '{', '}', '[', ']', ',', ':', '-', '0',
                                                '9', 0, 0xff, 0x80, ' ', '\\', 'e'};
    for (int iter = 0; iter < 3000; iter++) {
        memcpy(buf, src, len);
        int flips = 1 + iter % 3;
        for (int k = 0; k < flips; k++) {
            rng = rng * 1664525u + 1013904223u;
            size_t pos = (rng >> 8) % len;
            rng = rng * 1664525u + 1013904223u;
            buf[pos] = interesting[(rng >> 8) % sizeof interesting];
        }
        write_bytes(path, buf, len);
        safetensors *st = safetensors_open(path, &e);
        safetensors *un = safetensors_open_unmapped(path, &e);
        ck_assert_int_eq(st != NULL, un != NULL);  /* one parser behind both */
        if (st) {
            float out[8], out2[8];
            for (int i = 0; i < safetensors_count(st); i++) {
                const st_tensor *t = safetensors_at(st, i);
                if (t->numel <= 8) {
                    int rc = st_tensor_to_f32(t, out, &e);
                    ck_assert_int_eq(st_tensor_read_f32(un, safetensors_at(un, i), out2, &e),
                                     rc);
                    ck_assert(rc != 0 || memcmp(out, out2, (size_t)t->numel * 4) == 0);
                }
            }
        }
        safetensors_close(st);
        safetensors_close(un);
    }
}
END_TEST

static Suite *safetensors_suite(void)
{
    Suite *s = suite_create("safetensors");
    TCase *core = tcase_create("core");
    tcase_add_test(core, test_write_open_round_trip_keeps_order_shapes_data_metadata);
    tcase_add_test(core, test_write_aligns_header_and_tensors_to_8_bytes);
    tcase_add_test(core, test_write_replaces_existing_file);
    tcase_add_test(core, test_find_300_tensors_by_name_and_missing_is_null);
    tcase_add_test(core, test_dtype_names_and_sizes);
    tcase_add_test(core, test_f16_known_bit_patterns);
    tcase_add_test(core, test_f16_all_65536_values_match_arithmetic_reference);
    tcase_add_test(core, test_bf16_known_bit_patterns);
    tcase_add_test(core, test_tensor_to_f32_converts_f16_bf16_from_file_unaligned);
    tcase_add_test(core, test_tensor_to_f32_refuses_i32_naming_dtype);
    tcase_add_test(core, test_unmapped_reads_equal_mapped_conversions);
    tcase_add_test(core, test_unmapped_file_truncated_after_open_is_an_error);
    tcase_add_test(core, test_write_into_missing_directory_fails_and_leaves_nothing);
    tcase_add_test(core, test_write_rejects_bad_inputs_and_leaves_nothing);
    tcase_add_test(core, test_write_refuses_taken_temp_name_and_keeps_it);
    tcase_add_test(core, test_write_failing_midway_leaves_nothing);
    suite_add_tcase(s, core);

    TCase *limits = tcase_create("limits");
    tcase_set_timeout(limits, 60);
    tcase_add_loop_test(limits, test_bad_header_is_refused_with_specific_message, 0,
                        (int)(sizeof bad_headers / sizeof bad_headers[0]));
    tcase_add_test(limits, test_empty_file_is_refused);
    tcase_add_test(limits, test_7_byte_file_is_refused);
    tcase_add_test(limits, test_header_length_beyond_file_is_refused);
    tcase_add_test(limits, test_absurd_header_length_is_refused);
    tcase_add_test(limits, test_non_utf8_header_is_refused);
    tcase_add_test(limits, test_missing_file_and_directory_are_refused);
    tcase_add_test(limits, test_accepts_padding_gaps_trailing_bytes_and_empty_tensors);
    tcase_add_test(limits, test_accepts_empty_header_object_and_metadata_only);
    tcase_add_test(limits, test_null_arguments_do_not_crash);
    tcase_add_test(limits, test_long_path_and_name_keep_messages_bounded);
    tcase_add_test(limits, test_truncated_and_corrupted_files_never_crash);
    suite_add_tcase(s, limits);
    return s;
}

/* Removes the test directory and everything the tests wrote into it. */
static void remove_tmpdir(void)
{
    DIR *d = opendir(tmpdir);
    if (!d)
        return;
    struct dirent *de;
    char p[1024];
    while ((de = readdir(d)) != NULL) {
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
            continue;
        snprintf(p, sizeof p, "%s/%s", tmpdir, de->d_name);
        unlink(p);
    }
    closedir(d);
    rmdir(tmpdir);
}

int main(void)
{
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 1;
    }
    SRunner *sr = srunner_create(safetensors_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    remove_tmpdir();
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
