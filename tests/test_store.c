/* Tests for adapters/store: uploads become adapters only whole, replace swaps atomically,
 * removal and crash leftovers leave nothing behind, and the content hash does not depend
 * on how the bytes were chunked. */
#include <check.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "adapters/store.h"
#include "tests/testutil.h"

static char *dir;

static void setup(void)
{
    dir = testutil_mkdtemp("store_test");
}

/* Removes dir and the adapter subdirectories in it (testutil_rmdir goes one level). */
static void teardown(void)
{
    DIR *d = opendir(dir);
    struct dirent *de;
    while (d && (de = readdir(d)) != NULL) {
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
            continue;
        char p[4096];
        snprintf(p, sizeof p, "%s/%s", dir, de->d_name);
        for (int i = 0; i < 2; i++) {
            char f[4200];
            snprintf(f, sizeof f, "%s/%s", p, store_file_names[i]);
            unlink(f);
        }
        rmdir(p);
    }
    if (d)
        closedir(d);
    testutil_rmdir(dir);
    dir = NULL;
}

static int entries(void)
{
    DIR *d = opendir(dir);
    int n = 0;
    struct dirent *de;
    while (d && (de = readdir(d)) != NULL)
        n += strcmp(de->d_name, ".") != 0 && strcmp(de->d_name, "..") != 0;
    if (d)
        closedir(d);
    return n;
}

static char *read_all(const char *name, int file, size_t *len)
{
    char p[4200];
    snprintf(p, sizeof p, "%s/%s/%s", dir, name, store_file_names[file]);
    FILE *f = fopen(p, "rb");
    if (!f)
        return NULL;
    char *buf = malloc(1 << 20);
    *len = fread(buf, 1, 1 << 20, f);
    fclose(f);
    return buf;
}

/* Uploads config/weights in pieces of `chunk` bytes; returns the version. */
static uint64_t put(const char *name, const char *config, const char *weights, size_t chunk,
                    int replace, int *rc)
{
    lr_error err = {0};
    store_upload *u = store_upload_begin(dir, &err);
    ck_assert_msg(u != NULL, "store_upload_begin: %s", err.msg);
    const char *parts[2] = {config, weights};
    for (int f = 0; f < 2; f++)
        for (size_t off = 0, n = strlen(parts[f]); off < n; off += chunk)
            ck_assert_int_eq(store_upload_write(u, f, parts[f] + off,
                                                n - off < chunk ? n - off : chunk, &err), 0);
    uint64_t v = store_upload_version(u);
    *rc = store_upload_commit(u, name, replace, &err);
    return v;
}

START_TEST(test_commit_publishes_both_files_and_nothing_else)
{
    int rc;
    uint64_t v = put("a", "{\"r\": 4}", "WEIGHTS-1", 3, 0, &rc);
    ck_assert_int_eq(rc, 0);
    ck_assert_int_eq(entries(), 1);
    size_t n;
    char *c = read_all("a", 0, &n);
    ck_assert(c && n == 8 && memcmp(c, "{\"r\": 4}", 8) == 0);
    free(c);
    c = read_all("a", 1, &n);
    ck_assert(c && n == 9 && memcmp(c, "WEIGHTS-1", 9) == 0);
    free(c);
    ck_assert(v != 0);
    ck_assert_msg(store_version(dir, "a") == v, "the hash of the files on disk differs from "
                  "the hash of the uploaded bytes");
}
END_TEST

START_TEST(test_hash_does_not_depend_on_chunking_and_sees_every_byte)
{
    /* 3003 bytes: 93 whole stripes of 32, then 3 words and 3 bytes past them */
    static char big[3004];
    for (int i = 0; i < 3003; i++)
        big[i] = (char)('a' + (i * 7) % 26);
    int rc;
    uint64_t v1 = put("a", "cfg", big, 1, 0, &rc);
    uint64_t v2 = put("b", "cfg", big, 13, 0, &rc);
    uint64_t v3 = put("c", "cfg", big, 4096, 0, &rc);
    ck_assert(v1 == v2 && v2 == v3);
    /* one bit of the weights: in each of the four lanes of a stripe, in a word and in a
     * byte past the last stripe */
    static const int flip[] = {1500, 1508, 1516, 1524, 2980, 3002};
    for (size_t k = 0; k < sizeof flip / sizeof *flip; k++) {
        char nm[8];
        snprintf(nm, sizeof nm, "d%zu", k);
        big[flip[k]] ^= 1;
        ck_assert_msg(put(nm, "cfg", big, 64, 0, &rc) != v1, "byte %d not seen", flip[k]);
        big[flip[k]] ^= 1;
    }
    ck_assert(put("e", "cfh", big, 64, 0, &rc) != v1);   /* one of the config */
    ck_assert(put("f", big, "cfg", 64, 0, &rc) != v1);   /* the files swapped */
}
END_TEST

START_TEST(test_existing_name_is_refused_unless_replace_which_swaps_whole)
{
    int rc;
    put("a", "old-config", "old-weights", 4, 0, &rc);
    ck_assert_int_eq(rc, 0);
    put("a", "new-config", "new-weights", 4, 0, &rc);
    ck_assert_int_eq(rc, LR_EEXIST);
    size_t n;
    char *c = read_all("a", 1, &n);
    ck_assert(c && n == 11 && memcmp(c, "old-weights", 11) == 0);
    free(c);
    ck_assert_int_eq(entries(), 1);   /* the refused upload left nothing */
    uint64_t v = put("a", "new-config", "new-weights!", 4, 1, &rc);
    ck_assert_int_eq(rc, 0);
    c = read_all("a", 1, &n);
    ck_assert(c && n == 12 && memcmp(c, "new-weights!", 12) == 0);
    free(c);
    ck_assert(store_version(dir, "a") == v);
    ck_assert_int_eq(entries(), 1);   /* the old directory is gone */
}
END_TEST

START_TEST(test_commit_without_a_file_fails_and_leaves_nothing)
{
    lr_error err = {0};
    store_upload *u = store_upload_begin(dir, &err);
    ck_assert_ptr_nonnull(u);
    ck_assert_int_eq(store_upload_write(u, STORE_CONFIG, "{}", 2, &err), 0);
    ck_assert_int_ne(store_upload_commit(u, "a", 0, &err), 0);
    ck_assert_msg(strstr(err.msg, "adapter_model.safetensors") != NULL, "message: %s",
                  err.msg);
    ck_assert_int_eq(entries(), 0);
}
END_TEST

START_TEST(test_abort_and_remove_leave_nothing_and_remove_reports_unknown)
{
    lr_error err = {0};
    store_upload *u = store_upload_begin(dir, &err);
    ck_assert_int_eq(store_upload_write(u, STORE_WEIGHTS, "xyz", 3, &err), 0);
    ck_assert_int_eq(entries(), 1);   /* the temporary */
    store_upload_abort(u);
    ck_assert_int_eq(entries(), 0);
    int rc;
    put("a", "c", "w", 1, 0, &rc);
    ck_assert_int_eq(store_remove(dir, "a", &err), 0);
    ck_assert_int_eq(entries(), 0);
    ck_assert_int_eq(store_remove(dir, "a", &err), LR_ENOTFOUND);
}
END_TEST

START_TEST(test_cleanup_removes_what_a_crash_left_and_keeps_adapters)
{
    int rc;
    put("keep", "c", "w", 1, 0, &rc);
    lr_error err = {0};
    store_upload *u = store_upload_begin(dir, &err);   /* "crashed" mid-upload */
    ck_assert_int_eq(store_upload_write(u, STORE_CONFIG, "half", 4, &err), 0);
    char del[4200];
    snprintf(del, sizeof del, "%s/.del-1-2-3", dir);   /* "crashed" mid-removal */
    ck_assert_int_eq(mkdir(del, 0755), 0);
    ck_assert_int_eq(entries(), 3);
    ck_assert_int_eq(store_cleanup(dir), 2);
    ck_assert_int_eq(entries(), 1);
    size_t n;
    char *c = read_all("keep", 1, &n);
    ck_assert(c && n == 1);
    free(c);
    free(u);   /* its directory is gone: only the struct is left to free */
}
END_TEST

START_TEST(test_copy_in_reproduces_the_files_and_their_version)
{
    int rc;
    uint64_t v = put("src", "config-bytes", "weight-bytes", 5, 0, &rc);
    char src[4200];
    snprintf(src, sizeof src, "%s/src", dir);
    uint64_t v2 = 0;
    lr_error err = {0};
    ck_assert_int_eq(store_copy_in(dir, src, "copy", 0, &v2, &err), 0);
    ck_assert(v2 == v && store_version(dir, "copy") == v);
    ck_assert_int_eq(store_copy_in(dir, src, "copy", 0, &v2, &err), LR_EEXIST);
    snprintf(src, sizeof src, "%s/nope", dir);
    ck_assert_int_eq(store_copy_in(dir, src, "x", 0, &v2, &err), LR_ENOTFOUND);
    ck_assert_int_eq(entries(), 2);
}
END_TEST

static Suite *store_suite(void)
{
    Suite *s = suite_create("store");
    TCase *core = tcase_create("core");
    tcase_add_checked_fixture(core, setup, teardown);
    tcase_add_test(core, test_commit_publishes_both_files_and_nothing_else);
    tcase_add_test(core, test_hash_does_not_depend_on_chunking_and_sees_every_byte);
    tcase_add_test(core, test_existing_name_is_refused_unless_replace_which_swaps_whole);
    tcase_add_test(core, test_copy_in_reproduces_the_files_and_their_version);
    suite_add_tcase(s, core);
    TCase *lim = tcase_create("limits");
    tcase_add_checked_fixture(lim, setup, teardown);
    tcase_add_test(lim, test_commit_without_a_file_fails_and_leaves_nothing);
    tcase_add_test(lim, test_abort_and_remove_leave_nothing_and_remove_reports_unknown);
    tcase_add_test(lim, test_cleanup_removes_what_a_crash_left_and_keeps_adapters);
    suite_add_tcase(s, lim);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(store_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
