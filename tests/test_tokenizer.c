/* Tests for core/tokenizer: conformance with Hugging Face's reference `tokenizers` library on
 * real tokenizer files (goldens from tools/tokenizer-goldens/gen.js), streaming decode, and
 * refusal of malformed tokenizer.json files. */
#include <check.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/tokenizer.h"

#define FIX "tests/fixtures/tokenizer"

static const char *NAMES[] = {"llama2", "llama3", "qwen3", "llama2-metaspace",
                              "llama2-metaspace-always-split", "llama2-added", "qwen3-gpt2"};
#define N_NAMES (sizeof NAMES / sizeof NAMES[0])

/* Each tokenizer file is several MB: load once per process, shared by all tests (tests run
 * in forked children; loading in the parent before srunner_run_all shares it). */
static tokenizer *cache[N_NAMES];
static json_t *golden[N_NAMES];

static void load_all(void)
{
    for (size_t i = 0; i < N_NAMES; i++) {
        char dir[256], g[256];
        lr_error err = {0};
        snprintf(dir, sizeof dir, FIX "/%s", NAMES[i]);
        snprintf(g, sizeof g, FIX "/%s/golden.json", NAMES[i]);
        cache[i] = tokenizer_load(dir, &err);
        if (!cache[i]) fprintf(stderr, "load %s: %s\n", NAMES[i], err.msg);
        golden[i] = json_load_file(g, 0, NULL);
    }
}

static int *json_ids(json_t *a, size_t *n)
{
    *n = json_array_size(a);
    int *v = malloc((*n + 1) * sizeof *v);
    for (size_t i = 0; i < *n; i++) v[i] = (int)json_integer_value(json_array_get(a, i));
    return v;
}

static int ids_equal(const int *a, size_t na, const int *b, size_t nb)
{
    return na == nb && (na == 0 || memcmp(a, b, na * sizeof *a) == 0);
}

static void print_ids(const char *what, const int *v, size_t n)
{
    fprintf(stderr, "  %s [", what);
    for (size_t i = 0; i < n && i < 40; i++) fprintf(stderr, "%s%d", i ? "," : "", v[i]);
    fprintf(stderr, "%s]\n", n > 40 ? ",..." : "");
}

/* Streams ids through a tokenizer_stream; returns the concatenated text (malloc'd). */
static char *stream_all(const tokenizer *t, const int *ids, size_t n, int skip)
{
    tokenizer_stream *s = tokenizer_stream_new(t, skip);
    size_t cap = 64, len = 0;
    char *acc = malloc(cap), *out;
    size_t ol;
    acc[0] = '\0';
    for (size_t i = 0; i <= n; i++) {
        int rc = i < n ? tokenizer_stream_push(s, ids[i], &out, &ol) : tokenizer_stream_flush(s, &out, &ol);
        ck_assert_int_eq(rc, 0);
        ck_assert_uint_eq(strlen(out), ol);
        while (len + ol + 1 > cap) acc = realloc(acc, cap *= 2);
        memcpy(acc + len, out, ol + 1);
        len += ol;
        free(out);
    }
    tokenizer_stream_free(s);
    return acc;
}

static int check_decode(const tokenizer *t, const int *ids, size_t n, int skip, const char *want, const char *label)
{
    char *got = NULL;
    size_t len;
    lr_error err = {0};
    ck_assert_msg(tokenizer_decode(t, ids, n, skip, &got, &len, &err) == 0, "%s: %s", label, err.msg);
    int ok = strlen(want) == len && !strcmp(got, want);
    if (!ok) fprintf(stderr, "  %s decode(skip=%d) got \"%s\" want \"%s\"\n", label, skip, got, want);
    char *st = stream_all(t, ids, n, skip);
    if (strcmp(st, got)) {
        fprintf(stderr, "  %s stream(skip=%d) \"%s\" != decode \"%s\"\n", label, skip, st, got);
        ok = 0;
    }
    free(st);
    free(got);
    return ok;
}

/* Every golden case of one tokenizer: encode with/without special tokens, decode with
 * skip_special false/true, streaming == whole decode, round trip where the reference has it. */
START_TEST(test_matches_reference_goldens)
{
    const tokenizer *t = cache[_i];
    json_t *g = golden[_i];
    ck_assert_msg(t != NULL, "tokenizer %s did not load", NAMES[_i]);
    ck_assert_msg(g != NULL, "golden for %s missing", NAMES[_i]);
    json_t *cases = json_object_get(g, "cases"), *c;
    size_t i, total = 0, good = 0;
    json_array_foreach(cases, i, c) {
        const char *text = json_string_value(json_object_get(c, "text"));
        size_t tlen = json_string_length(json_object_get(c, "text"));
        int ok = 1;
        char label[64];
        snprintf(label, sizeof label, "%s case %zu", NAMES[_i], i);
        for (int sp = 1; sp >= 0; sp--) {
            size_t nw, ng = 0;
            int *want = json_ids(json_object_get(c, sp ? "ids_special" : "ids_plain"), &nw), *got = NULL;
            lr_error err = {0};
            ck_assert_msg(tokenizer_encode(t, text, tlen, sp, &got, &ng, &err) == 0, "%s: %s", label, err.msg);
            if (!ids_equal(got, ng, want, nw)) {
                fprintf(stderr, "%s: encode(add_special=%d) of \"%.80s\" differs\n", label, sp, text);
                print_ids("got ", got, ng);
                print_ids("want", want, nw);
                ok = 0;
            }
            if (sp) {
                ok &= check_decode(t, want, nw, 0, json_string_value(json_object_get(c, "decode")), label);
                ok &= check_decode(t, want, nw, 1, json_string_value(json_object_get(c, "decode_skip")), label);
            } else if (json_is_true(json_object_get(c, "roundtrip"))) {
                char *back = NULL;
                size_t bl;
                ck_assert_int_eq(tokenizer_decode(t, got, ng, 0, &back, &bl, NULL), 0);
                if (bl != tlen || memcmp(back, text, tlen)) {
                    fprintf(stderr, "%s: round trip \"%s\" -> \"%s\"\n", label, text, back);
                    ok = 0;
                }
                free(back);
            }
            free(want);
            free(got);
        }
        total++;
        good += ok;
    }
    json_t *decs = json_object_get(g, "decodes");
    json_array_foreach(decs, i, c) {
        size_t n;
        int *ids = json_ids(json_object_get(c, "ids"), &n);
        char label[64];
        snprintf(label, sizeof label, "%s decode %zu", NAMES[_i], i);
        int ok = check_decode(t, ids, n, 0, json_string_value(json_object_get(c, "decode")), label) &
                 check_decode(t, ids, n, 1, json_string_value(json_object_get(c, "decode_skip")), label);
        free(ids);
        total++;
        good += ok;
    }
    fprintf(stderr, "tokenizer %s: %zu/%zu golden cases match the reference\n", NAMES[_i], good, total);
    ck_assert_uint_eq(good, total);
}
END_TEST

static int idx_of(const char *name)
{
    for (size_t i = 0; i < N_NAMES; i++)
        if (!strcmp(NAMES[i], name)) return (int)i;
    return -1;
}

START_TEST(test_accessors_report_vocab_and_specials)
{
    const tokenizer *l2 = cache[idx_of("llama2")], *l3 = cache[idx_of("llama3")], *q3 = cache[idx_of("qwen3")];
    ck_assert_ptr_nonnull(l2);
    ck_assert_ptr_nonnull(l3);
    ck_assert_ptr_nonnull(q3);
    ck_assert_int_eq(tokenizer_vocab_size(l2), 32000);
    ck_assert_int_eq(tokenizer_vocab_size(l3), 128256);
    ck_assert_int_eq(tokenizer_bos_id(l2), 1);
    ck_assert_int_eq(tokenizer_eos_id(l2), 2);
    ck_assert_int_eq(tokenizer_bos_id(l3), 128000);
    ck_assert_int_eq(tokenizer_eos_id(l3), 128001);
    ck_assert_int_eq(tokenizer_bos_id(q3), -1);
    ck_assert_int_eq(tokenizer_eos_id(q3), 151645);
    ck_assert_int_eq(tokenizer_token_id(l2, "<0x0A>"), 13);
    ck_assert_int_eq(tokenizer_token_id(l2, "no such token"), -1);
    ck_assert_str_eq(tokenizer_id_token(l2, 1), "<s>");
    ck_assert_ptr_null(tokenizer_id_token(l2, 32000));
    ck_assert_ptr_null(tokenizer_id_token(l2, -1));
    ck_assert_int_eq(tokenizer_is_special(l2, 1), 1);
    ck_assert_int_eq(tokenizer_is_special(l2, 13), 0);
    ck_assert_int_eq(tokenizer_is_special(q3, tokenizer_token_id(q3, "<tool_call>")), 0);
    ck_assert_int_eq(tokenizer_is_special(q3, tokenizer_token_id(q3, "<|im_start|>")), 1);
}
END_TEST

START_TEST(test_stream_holds_incomplete_utf8_until_complete)
{
    const tokenizer *l3 = cache[idx_of("llama3")];
    int *ids = NULL;
    size_t n;
    char *out;
    size_t len;
    ck_assert_ptr_nonnull(l3);
    ck_assert_int_eq(tokenizer_encode(l3, "\xF0\x9F\x98\x80", 4, 0, &ids, &n, NULL), 0); /* 😀 */
    ck_assert_uint_gt(n, 1); /* split over several byte-level tokens */
    tokenizer_stream *s = tokenizer_stream_new(l3, 1);
    for (size_t i = 0; i + 1 < n; i++) {
        ck_assert_int_eq(tokenizer_stream_push(s, ids[i], &out, &len), 0);
        ck_assert_uint_eq(len, 0);
        free(out);
    }
    ck_assert_int_eq(tokenizer_stream_push(s, ids[n - 1], &out, &len), 0);
    ck_assert_str_eq(out, "\xF0\x9F\x98\x80");
    free(out);
    ck_assert_int_eq(tokenizer_stream_flush(s, &out, &len), 0);
    ck_assert_uint_eq(len, 0);
    free(out);
    /* an incomplete sequence at the end comes out as U+FFFD on flush */
    ck_assert_int_eq(tokenizer_stream_push(s, ids[0], &out, &len), 0);
    free(out);
    ck_assert_int_eq(tokenizer_stream_flush(s, &out, &len), 0);
    ck_assert_str_eq(out, "\xEF\xBF\xBD");
    free(out);
    tokenizer_stream_free(s);
    free(ids);
}
END_TEST

/* ------------------------------------------------------------------ limits */

static char tmpdir[64];

static void write_file(const char *name, const char *text)
{
    char p[128];
    snprintf(p, sizeof p, "%s/%s", tmpdir, name);
    FILE *f = fopen(p, "wb");
    ck_assert_ptr_nonnull(f);
    fputs(text, f);
    fclose(f);
}

static const struct bad_case {
    const char *name, *json, *expect; int code;
} BAD[] = {
    {"missing model", "{\"version\":\"1.0\"}", "no \"model\"", LR_EINVAL},
    {"model not an object", "{\"model\":[]}", "no \"model\"", LR_EINVAL},
    {"Unigram", "{\"model\":{\"type\":\"Unigram\",\"vocab\":[[\"a\",0.0]]}}", "supported: BPE", LR_ENOTSUP},
    {"WordPiece", "{\"model\":{\"type\":\"WordPiece\",\"vocab\":{\"a\":0}}}", "'WordPiece' is not supported (supported: BPE)", LR_ENOTSUP},
    {"no vocab", "{\"model\":{\"type\":\"BPE\",\"merges\":[]}}", "no \"vocab\"", LR_EINVAL},
    {"merge without space", "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":1,\"ab\":2},\"merges\":[\"ab\"]}}", "merges[0]", LR_EINVAL},
    {"merge with three parts", "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":1,\"ab\":2},\"merges\":[\"a b c\"]}}", "merges[0]", LR_EINVAL},
    {"merge pair of three", "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":1,\"ab\":2},\"merges\":[[\"a\",\"b\",\"c\"]]}}", "merges[0]", LR_EINVAL},
    {"merge number", "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[7]}}", "merges[0]", LR_EINVAL},
    {"merge token not in vocab", "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":1,\"ab\":2},\"merges\":[\"a b\",\"a z\"]}}", "'z' is not in the vocab", LR_EINVAL},
    {"merged token not in vocab", "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":1},\"merges\":[[\"a\",\"b\"]]}}", "merged token 'ab'", LR_EINVAL},
    {"negative id", "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":-1},\"merges\":[]}}", "outside", LR_EINVAL},
    {"huge id", "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":99999999999},\"merges\":[]}}", "outside", LR_EINVAL},
    {"id not integer", "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":\"x\"},\"merges\":[]}}", "not an integer", LR_EINVAL},
    {"duplicate ids", "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":0},\"merges\":[]}}", "id 0 is given to both", LR_EINVAL},
    {"added token id out of range", "{\"added_tokens\":[{\"id\":-5,\"content\":\"<x>\"}],\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[]}}", "added_tokens[0]", LR_EINVAL},
    {"unk not in vocab", "{\"model\":{\"type\":\"BPE\",\"unk_token\":\"<unk>\",\"vocab\":{\"a\":0},\"merges\":[]}}", "unk_token", LR_EINVAL},
    {"unsupported normalizer", "{\"normalizer\":{\"type\":\"BertNormalizer\"},\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[]}}", "supported: Sequence, Prepend", LR_ENOTSUP},
    {"unsupported pre_tokenizer", "{\"pre_tokenizer\":{\"type\":\"Whitespace\"},\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[]}}", "supported: Sequence, Split, ByteLevel, Metaspace", LR_ENOTSUP},
    {"bad split regex", "{\"pre_tokenizer\":{\"type\":\"Split\",\"pattern\":{\"Regex\":\"(\"},\"behavior\":\"Isolated\"},\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[]}}", "regex does not compile", LR_EINVAL},
    {"unsupported decoder", "{\"decoder\":{\"type\":\"WordPiece\"},\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[]}}", "decoder type 'WordPiece'", LR_ENOTSUP},
    {"unsupported post_processor", "{\"post_processor\":{\"type\":\"Weird\"},\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[]}}", "supported: TemplateProcessing", LR_ENOTSUP},
    {"template names unknown special", "{\"post_processor\":{\"type\":\"TemplateProcessing\",\"single\":[{\"SpecialToken\":{\"id\":\"<s>\"}}],\"special_tokens\":{}},\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[]}}", "'<s>' not in", LR_EINVAL},
    {"invalid JSON", "{\"model\": {\"type\": \"BPE\",", "invalid JSON", LR_EINVAL},
    {"not an object", "[1,2,3]", "not a JSON object", LR_EINVAL},
    {"empty file", "", "invalid JSON", LR_EINVAL},
};

START_TEST(test_malformed_tokenizer_json_is_refused_clearly)
{
    const struct bad_case *b = &BAD[_i];
    char p[128];
    lr_error err = {0};
    write_file("tokenizer.json", b->json);
    snprintf(p, sizeof p, "%s/tokenizer.json", tmpdir);
    tokenizer *t = tokenizer_load_files(p, NULL, &err);
    ck_assert_msg(t == NULL, "%s: accepted", b->name);
    ck_assert_msg(err.code == b->code, "%s: code %d, want %d (%s)", b->name, err.code, b->code, err.msg);
    ck_assert_msg(strstr(err.msg, b->expect) != NULL, "%s: message '%s' lacks '%s'", b->name, err.msg, b->expect);
}
END_TEST

START_TEST(test_missing_file_is_refused)
{
    lr_error err = {0};
    ck_assert_ptr_null(tokenizer_load("/nonexistent/dir", &err));
    ck_assert_int_eq(err.code, LR_EIO);
    ck_assert_ptr_nonnull(strstr(err.msg, "/nonexistent/dir/tokenizer.json"));
    char cfg[128];
    snprintf(cfg, sizeof cfg, "%s/broken_config.json", tmpdir);
    write_file("broken_config.json", "{oops");
    ck_assert_ptr_null(tokenizer_load_files(FIX "/llama2/tokenizer.json", cfg, &err));
    ck_assert_int_eq(err.code, LR_EINVAL);
    ck_assert_ptr_nonnull(strstr(err.msg, "tokenizer_config.json"));
}
END_TEST

START_TEST(test_tiny_bpe_with_config_fallback_and_pairs)
{
    /* No post_processor: tokenizer_config's add_bos_token/add_eos_token apply. */
    char tj[128], cj[128];
    lr_error err = {0};
    write_file("tokenizer.json",
               "{\"added_tokens\":[{\"id\":4,\"content\":\"<s>\",\"special\":true},{\"id\":5,\"content\":\"</s>\",\"special\":true}],"
               "\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":1,\"ab\":2,\"abab\":3},\"merges\":[[\"a\",\"b\"],\"ab ab\"]}}");
    write_file("cfg.json", "{\"add_bos_token\":true,\"add_eos_token\":true,\"bos_token\":{\"content\":\"<s>\"},\"eos_token\":\"</s>\"}");
    snprintf(tj, sizeof tj, "%s/tokenizer.json", tmpdir);
    snprintf(cj, sizeof cj, "%s/cfg.json", tmpdir);
    tokenizer *t = tokenizer_load_files(tj, cj, &err);
    ck_assert_msg(t != NULL, "%s", err.msg);
    int *ids;
    size_t n;
    ck_assert_int_eq(tokenizer_encode(t, "ababa", 5, 1, &ids, &n, &err), 0);
    int want[] = {4, 3, 0, 5};
    ck_assert_uint_eq(n, 4);
    ck_assert_mem_eq(ids, want, sizeof want);
    free(ids);
    ck_assert_int_eq(tokenizer_encode(t, "ababa", 5, 0, &ids, &n, &err), 0);
    ck_assert_uint_eq(n, 2);
    free(ids);
    /* no decoder: tokens joined by spaces, like the reference */
    char *text;
    ck_assert_int_eq(tokenizer_decode(t, want, 4, 1, &text, NULL, &err), 0);
    ck_assert_str_eq(text, "abab a");
    free(text);
    tokenizer_free(t);
}
END_TEST

START_TEST(test_bad_inputs_are_refused)
{
    const tokenizer *l2 = cache[idx_of("llama2")];
    int *ids = (int *)0x1;
    size_t n = 77;
    lr_error err = {0};
    ck_assert_ptr_nonnull(l2);
    ck_assert_int_eq(tokenizer_encode(l2, "ok\xff", 3, 1, &ids, &n, &err), LR_EINVAL);
    ck_assert_ptr_nonnull(strstr(err.msg, "UTF-8"));
    ck_assert_int_eq(tokenizer_encode(l2, "\xe2\x82", 2, 1, &ids, &n, &err), LR_EINVAL);
    ck_assert_int_eq(tokenizer_encode(l2, "\xed\xa0\x80", 3, 1, &ids, &n, &err), LR_EINVAL); /* surrogate */
    ck_assert_ptr_eq(ids, (int *)0x1);
    ck_assert_uint_eq(n, 77);
    int bad[] = {1, 32000};
    char *text = NULL;
    ck_assert_int_eq(tokenizer_decode(l2, bad, 2, 0, &text, NULL, &err), LR_EINVAL);
    ck_assert_ptr_null(text);
    bad[1] = -3;
    ck_assert_int_eq(tokenizer_decode(l2, bad, 2, 0, &text, NULL, &err), LR_EINVAL);
    tokenizer_stream *s = tokenizer_stream_new(l2, 0);
    ck_assert_int_eq(tokenizer_stream_push(s, 999999, &text, NULL), LR_EINVAL);
    ck_assert_ptr_null(text);
    tokenizer_stream_free(s);
    tokenizer_stream_free(NULL);
    tokenizer_free(NULL);
    /* NUL bytes inside the text are text like any other */
    ck_assert_int_eq(tokenizer_encode(l2, "a\0b", 3, 0, &ids, &n, &err), 0);
    ck_assert_uint_gt(n, 0);
    free(ids);
}
END_TEST

/* Degenerate inputs finish and round-trip: 64 KB of one space run, one letter, "<|" pieces,
 * newlines; every tokenizer. */
START_TEST(test_degenerate_long_inputs_finish_and_round_trip)
{
    const size_t n = 64 * 1024;
    const char *fill[] = {" ", "a", "<|", "\n", "\xE2\x96\x81"};
    char *text = malloc(n + 4);
    for (size_t f = 0; f < sizeof fill / sizeof fill[0]; f++) {
        size_t k = strlen(fill[f]), len = 0;
        while (len + k <= n) { memcpy(text + len, fill[f], k); len += k; }
        for (size_t i = 0; i < N_NAMES; i++) {
            const tokenizer *t = cache[i];
            int *ids = NULL;
            size_t m = 0, bl;
            char *back = NULL;
            lr_error err = {0};
            ck_assert_ptr_nonnull(t);
            ck_assert_msg(tokenizer_encode(t, text, len, 0, &ids, &m, &err) == 0, "%s: %s", NAMES[i], err.msg);
            ck_assert_uint_gt(m, 0);
            ck_assert_int_eq(tokenizer_decode(t, ids, m, 0, &back, &bl, &err), 0);
            if (!strcmp(NAMES[i], "llama3") || !strcmp(NAMES[i], "qwen3"))
                ck_assert_msg(bl == len && !memcmp(back, text, len), "%s: fill %zu does not round-trip", NAMES[i], f);
            free(back);
            free(ids);
        }
    }
    free(text);
}
END_TEST

static Suite *tokenizer_suite(void)
{
    Suite *s = suite_create("tokenizer");
    TCase *core = tcase_create("core"), *limits = tcase_create("limits");
    tcase_set_timeout(core, 300);
    tcase_set_timeout(limits, 300);
    tcase_add_loop_test(core, test_matches_reference_goldens, 0, (int)N_NAMES);
    tcase_add_test(core, test_accessors_report_vocab_and_specials);
    tcase_add_test(core, test_stream_holds_incomplete_utf8_until_complete);
    tcase_add_test(core, test_tiny_bpe_with_config_fallback_and_pairs);
    tcase_add_loop_test(limits, test_malformed_tokenizer_json_is_refused_clearly, 0, (int)(sizeof BAD / sizeof BAD[0]));
    tcase_add_test(limits, test_missing_file_is_refused);
    tcase_add_test(limits, test_bad_inputs_are_refused);
    tcase_add_test(limits, test_degenerate_long_inputs_finish_and_round_trip);
    suite_add_tcase(s, core);
    suite_add_tcase(s, limits);
    return s;
}

int main(void)
{
    snprintf(tmpdir, sizeof tmpdir, "/tmp/lorad-tok-XXXXXX");
    if (!mkdtemp(tmpdir)) return 1;
    load_all();
    SRunner *r = srunner_create(tokenizer_suite());
    srunner_run_all(r, CK_NORMAL);
    int failed = srunner_ntests_failed(r);
    srunner_free(r);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", tmpdir);
    for (size_t i = 0; i < N_NAMES; i++) {
        tokenizer_free(cache[i]);
        json_decref(golden[i]);
    }
    return failed ? 1 : 0;
}
