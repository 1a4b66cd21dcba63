/* Tests for server/chat and its interpreter server/jinja: real chat templates render byte for byte
 * as Hugging Face's reference renderers do (goldens from tools/chat-goldens/gen.js with
 * @huggingface/jinja, cross-checked with Python Jinja2 as transformers configures it), Python
 * semantics (tools/chat-goldens/semantics.py, Python Jinja2), the built-ins render as the real
 * templates, template lookup in a model directory, and refusal of malformed or hostile templates
 * with a clear message and without hanging. */
#include <check.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server/chat.h"
#include "server/jinja.h"
#include "tests/testutil.h"

#define FIX "tests/fixtures/chat"

static json_t *goldens, *semantics;

/* Templates, in the order of goldens.json's "templates" object (jansson keeps it). */
static const char *tmpl_names[32];
static int n_tmpl;

static void load_fixtures(void)
{
    goldens = json_load_file(FIX "/goldens.json", 0, NULL);
    semantics = json_load_file(FIX "/semantics.json", 0, NULL);
    const char *k;
    json_t *v;
    json_object_foreach(json_object_get(goldens, "templates"), k, v)
        if (n_tmpl < 32)
            tmpl_names[n_tmpl++] = k;
}

static char *slurp(const char *path)
{
    FILE *f = fopen(path, "rb");
    ck_assert_msg(f != NULL, "cannot open %s", path);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *s = malloc((size_t)n + 1);
    ck_assert_uint_eq(fread(s, 1, (size_t)n, f), (size_t)n);
    s[n] = '\0';
    fclose(f);
    return s;
}

static void write_file(const char *dir, const char *name, const char *text)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    ck_assert_ptr_nonnull(f);
    ck_assert_uint_eq(fwrite(text, 1, strlen(text), f), strlen(text));
    fclose(f);
}

/* A model directory whose tokenizer_config.json holds tokens (borrowed) and, when src is not
 * NULL, chat_template = src. */
static char *model_dir_with(const json_t *tokens, const char *src)
{
    char *dir = testutil_mkdtemp("lorad_chat");
    json_t *cfg = tokens ? json_deep_copy(tokens) : json_object();
    if (src)
        json_object_set_new(cfg, "chat_template", json_string(src));
    char *text = json_dumps(cfg, JSON_INDENT(1));
    write_file(dir, "tokenizer_config.json", text);
    free(text);
    json_decref(cfg);
    return dir;
}

static void print_diff(const char *label, const char *want, const char *got, size_t got_len)
{
    size_t i = 0;
    while (want[i] && i < got_len && want[i] == got[i])
        i++;
    fprintf(stderr, "%s: differ at byte %zu\n  want: %.80s\n  got:  %.80s\n", label, i,
            want + (i > 20 ? i - 20 : 0), got + (i > 20 ? i - 20 : 0));
}

/* Renders every golden case of template tmpl with t; returns how many differ. */
static int check_cases(const chat_template *t, const char *tmpl, const char *label)
{
    int bad = 0, seen = 0;
    size_t i;
    json_t *c;
    json_array_foreach(json_object_get(goldens, "cases"), i, c) {
        if (strcmp(json_string_value(json_object_get(c, "template")), tmpl))
            continue;
        seen++;
        json_t *msgs = json_object_get(c, "messages");
        size_t n = json_array_size(msgs);
        chat_message *m = calloc(n + 1, sizeof *m);
        for (size_t k = 0; k < n; k++) {
            m[k].role = json_string_value(json_object_get(json_array_get(msgs, k), "role"));
            m[k].content = json_string_value(json_object_get(json_array_get(msgs, k), "content"));
        }
        char *out = NULL, where[160];
        size_t len = 0;
        lr_error err = {0};
        int agp = json_is_true(json_object_get(c, "add_generation_prompt"));
        int rc = chat_template_render(t, m, (int)n, agp, &out, &len, &err);
        snprintf(where, sizeof where, "%s %s/%s agp=%d", label, tmpl,
                 json_string_value(json_object_get(c, "conversation")), agp);
        const char *want = json_string_value(json_object_get(c, "expected"));
        const char *want_err = json_string_value(json_object_get(c, "error"));
        if (want) {
            if (rc != 0) {
                fprintf(stderr, "%s: error %s\n", where, err.msg);
                bad++;
            } else if (len != strlen(want) || memcmp(out, want, len)) {
                print_diff(where, want, out, len);
                bad++;
            }
        } else if (rc != LR_EINVAL || out || strcmp(err.msg, want_err)) {
            fprintf(stderr, "%s: want error '%s', got rc %d '%s'\n", where, want_err, rc,
                    rc ? err.msg : out);
            bad++;
        }
        free(out);
        free(m);
    }
    ck_assert_msg(seen > 0, "no golden case for template %s", tmpl);
    return bad;
}

/* The model's template as lorad finds it: the tokenizer fixture directory itself, or a model
 * directory made of the golden's tokenizer_config tokens and the template file. */
static chat_template *load_golden_template(const char *tmpl, char **dir)
{
    json_t *spec = json_object_get(json_object_get(goldens, "templates"), tmpl);
    const char *model_dir = json_string_value(json_object_get(spec, "model_dir"));
    lr_error err = {0};
    *dir = NULL;
    if (!model_dir) {
        char *src = slurp(json_string_value(json_object_get(spec, "file")));
        *dir = model_dir_with(json_object_get(spec, "tokenizer_config"), src);
        free(src);
        model_dir = *dir;
    }
    chat_template *t = chat_template_load(model_dir, NULL, &err);
    ck_assert_msg(t != NULL, "%s: %s", tmpl, err.msg);
    ck_assert_str_eq(chat_template_name(t), "tokenizer_config.json");
    return t;
}

START_TEST(test_real_templates_match_reference_goldens)
{
    ck_assert_ptr_nonnull(goldens);
    ck_assert_int_ge(n_tmpl, 13);
    const char *tmpl = tmpl_names[_i];
    char *dir;
    chat_template *t = load_golden_template(tmpl, &dir);
    int bad = check_cases(t, tmpl, "tokenizer_config.json");
    chat_template_free(t);
    testutil_rmdir(dir);
    ck_assert_msg(bad == 0, "%s: %d golden case(s) differ", tmpl, bad);
}
END_TEST

/* The built-ins are the real templates: each renders every golden of its fixture file. */
START_TEST(test_builtins_are_the_real_templates)
{
    static const char *const map[][2] = {
        {"chatml", "chatml"}, {"llama3", "llama3-instruct"}, {"llama2", "llama2"},
        {"mistral", "mistral-v0.2"},
    };
    const char *builtin = map[_i][0], *tmpl = map[_i][1];
    json_t *spec = json_object_get(json_object_get(goldens, "templates"), tmpl);
    char *dir = model_dir_with(json_object_get(spec, "tokenizer_config"), NULL);
    lr_error err = {0};
    chat_template *t = chat_template_load(dir, builtin, &err);
    ck_assert_msg(t != NULL, "%s: %s", builtin, err.msg);
    ck_assert_str_eq(chat_template_name(t), builtin);
    int bad = check_cases(t, tmpl, builtin);
    chat_template_free(t);
    testutil_rmdir(dir);
    ck_assert_msg(bad == 0, "built-in %s: %d golden case(s) of %s differ", builtin, bad, tmpl);
}
END_TEST

START_TEST(test_python_semantics_match_jinja2)
{
    ck_assert_ptr_nonnull(semantics);
    json_t *vars = json_object_get(semantics, "variables");
    int bad = 0;
    size_t i;
    json_t *c;
    json_array_foreach(json_object_get(semantics, "cases"), i, c) {
        const char *src = json_string_value(json_object_get(c, "template"));
        const char *want = json_string_value(json_object_get(c, "expected"));
        lr_error err = {0};
        char *out = NULL, label[48];
        size_t len = 0;
        snprintf(label, sizeof label, "semantics case %zu", i);
        jinja_template *t = jinja_parse(label, src, strlen(src), &err);
        if (!t || jinja_render(t, vars, &out, &len, &err)) {
            fprintf(stderr, "%s: %s\n  template: %s\n", label, err.msg, src);
            bad++;
        } else if (len != strlen(want) || memcmp(out, want, len)) {
            print_diff(label, want, out, len);
            bad++;
        }
        free(out);
        jinja_free(t);
    }
    ck_assert_int_ge(json_array_size(json_object_get(semantics, "cases")), 30);
    ck_assert_msg(bad == 0, "%d semantics case(s) differ from Python Jinja2", bad);
}
END_TEST

static chat_template *load_ok(const char *dir, const char *name)
{
    lr_error err = {0};
    chat_template *t = chat_template_load(dir, name, &err);
    ck_assert_msg(t != NULL, "%s/%s: %s", dir ? dir : "-", name ? name : "-", err.msg);
    return t;
}

static char *render1(const chat_template *t, const char *role, const char *content)
{
    chat_message m = {role, content};
    char *out = NULL;
    size_t len = 0;
    lr_error err = {0};
    ck_assert_msg(chat_template_render(t, &m, 1, 1, &out, &len, &err) == 0, "%s", err.msg);
    ck_assert_uint_eq(strlen(out), len);
    return out;
}

START_TEST(test_template_lookup_in_model_dir)
{
    char *chatml = slurp(FIX "/templates/chatml.jinja");
    char *llama2 = slurp(FIX "/templates/llama2.jinja");
    json_t *tok = json_pack("{s:{s:s, s:s}, s:s}", "bos_token", "__type", "AddedToken", "content",
                            "<s>", "eos_token", "</s>");
    /* chat_template.jinja wins over tokenizer_config.json, as in transformers */
    char *dir = model_dir_with(tok, chatml);
    write_file(dir, "chat_template.jinja", llama2);
    chat_template *t = load_ok(dir, NULL);
    ck_assert_str_eq(chat_template_name(t), "chat_template.jinja");
    char *out = render1(t, "user", "hi");
    ck_assert_str_eq(out, "<s>[INST] hi [/INST]");
    free(out);
    chat_template_free(t);
    testutil_rmdir(dir);

    /* a list of named templates: the one named "default" */
    json_t *cfg = json_deep_copy(tok);
    json_object_set_new(cfg, "chat_template",
                        json_pack("[{s:s, s:s}, {s:s, s:s}]", "name", "tool_use", "template",
                                  "{{ 'tools' }}", "name", "default", "template", chatml));
    dir = model_dir_with(cfg, NULL);
    t = load_ok(dir, NULL);
    out = render1(t, "user", "hi");
    ck_assert_str_eq(out, "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n");
    free(out);
    chat_template_free(t);
    testutil_rmdir(dir);

    /* a template file by path; no model directory: special tokens are "" */
    t = load_ok(NULL, FIX "/templates/llama2.jinja");
    ck_assert_str_eq(chat_template_name(t), FIX "/templates/llama2.jinja");
    out = render1(t, "user", "hi");
    ck_assert_str_eq(out, "[INST] hi [/INST]");
    free(out);
    chat_template_free(t);
    json_decref(cfg);
    json_decref(tok);
    free(chatml);
    free(llama2);
}
END_TEST

START_TEST(test_missing_template_is_not_found)
{
    lr_error err = {0};
    /* the real Llama 2 tokenizer_config.json fixture carries no chat_template */
    ck_assert_ptr_null(chat_template_load("tests/fixtures/tokenizer/llama2", NULL, &err));
    ck_assert_int_eq(err.code, LR_ENOTFOUND);
    ck_assert_msg(strstr(err.msg, "no chat_template") && strstr(err.msg, "--chat-template"),
                  "%s", err.msg);
    memset(&err, 0, sizeof err);
    ck_assert_ptr_null(chat_template_load("/nonexistent/model", NULL, &err));
    ck_assert_int_eq(err.code, LR_ENOTFOUND);
    memset(&err, 0, sizeof err);
    ck_assert_ptr_null(chat_template_load(NULL, "no-such-template", &err));
    ck_assert_int_eq(err.code, LR_ENOTFOUND);
    ck_assert_msg(strstr(err.msg, "neither a built-in"), "%s", err.msg);
    json_t *cfg = json_pack("{s:[{s:s, s:s}]}", "chat_template", "name", "rag", "template", "x");
    char *dir = model_dir_with(cfg, NULL);
    memset(&err, 0, sizeof err);
    ck_assert_ptr_null(chat_template_load(dir, NULL, &err));
    ck_assert_int_eq(err.code, LR_ENOTFOUND);
    ck_assert_msg(strstr(err.msg, "'default'"), "%s", err.msg);
    testutil_rmdir(dir);
    json_decref(cfg);
    /* a template that does not parse is LR_EINVAL, named after tokenizer_config.json */
    dir = model_dir_with(NULL, "{% if %}");
    memset(&err, 0, sizeof err);
    ck_assert_ptr_null(chat_template_load(dir, NULL, &err));
    ck_assert_int_eq(err.code, LR_EINVAL);
    ck_assert_msg(strstr(err.msg, "tokenizer_config.json"), "%s", err.msg);
    testutil_rmdir(dir);
    chat_template_free(NULL);
}
END_TEST

/* Malformed and hostile templates: each is refused at load (render == 0) or at render time, with
 * a message naming the construct, quickly, and without leaking (under ASan). */
static const struct {
    const char *src;
    int at_render;
    const char *msg;
} BAD[] = {
    {"{{ x ", 0, "unterminated {{"},
    {"{% if x %}a", 0, "expected 'endif'"},
    {"{% for x in y %}", 0, "expected 'endfor'"},
    {"{% endif %}", 0, "misplaced tag 'endif'"},
    {"{% if x %}{% endfor %}", 0, "misplaced tag 'endfor'"},
    {"{# comment", 0, "unterminated comment"},
    {"{{ 'abc }}", 0, "unterminated string"},
    {"{{ x | nosuchfilter }}", 0, "unknown filter 'nosuchfilter'"},
    {"{{ x is nosuchtest }}", 0, "unknown test 'nosuchtest'"},
    {"{% macro f() %}{% endmacro %}", 0, "{% macro %} is not supported"},
    {"{% include 'other.jinja' %}", 0, "{% include %} is not supported"},
    {"{% for x in y recursive %}{% endfor %}", 0, "recursive loops are not supported"},
    {"{% frobnicate %}", 0, "unknown or misplaced tag 'frobnicate'"},
    {"{{ a @ b }}", 0, "unexpected character '@'"},
    {"{% break %}", 0, "outside a for loop"},
    {"{% set x = %}", 0, "expected an expression"},
    {"{{ }}", 0, "expected an expression"},
    {"{{ f(*args) }}", 0, "*args"},
    {"{{ '\\ud800' }}", 0, "invalid code point"},
    {"{{ 99999999999999999999 }}", 0, "out of range"},
    {"{% raw %}never closed", 0, "without {% endraw %}"},
    {"{{ messages[0:1, 2] }}", 0, "slice inside a tuple subscript"},
    {"bad utf-8 \xff", 0, "not valid UTF-8"},
    {"{{ foo.bar }}", 1, "'foo' is undefined"},
    {"{{ messages[0].role.foo.bar }}", 1, "'str object' has no attribute 'foo'"},
    {"{{ 'a' + 1 }}", 1, "can only concatenate str (not \"int\") to str"},
    {"{{ 1 // 0 }}", 1, "division by zero"},
    {"{{ messages.append(1) }}", 1, "templates cannot modify lists"},
    {"{{ 'x'.nosuchmethod() }}", 1, "'str' object has no method 'nosuchmethod'"},
    {"{{ messages(1) }}", 1, "'list' object is not callable"},
    {"{% set x = 1 %}{% set x.y = 2 %}", 1, "not a namespace()"},
    {"{% for a, b in [1] %}{% endfor %}", 1, "cannot unpack non-iterable int"},
    {"{{ 9223372036854775807 + 1 }}", 1, "integer overflow"},
    {"{{ raise_exception('custom: roles must alternate') }}", 1, "custom: roles must alternate"},
    {"{{ range(1000000000) | length }}", 1, "range() of 1000000000 items"},
    {"{{ 'x' * 10000000000 }}", 1, "too large"},
    {"{% set r = range(100000) %}{% for i in r %}{% for j in r %}{% endfor %}{% endfor %}", 1,
     "evaluation steps"},
    {"{% for i in range(100000) %}{% set r = range(100000) %}{% endfor %}", 1,
     "rendering needs more than"},
    {"{% set ns = namespace(s='x') %}{% for i in range(60) %}{% set ns.s = ns.s ~ ns.s %}"
     "{% endfor %}", 1, "rendering needs more than"},
    {"{% set ns = namespace(l=[]) %}{% for i in range(1000) %}{% set ns.l = [ns.l] %}"
     "{% endfor %}{{ ns.l | tojson }}", 1, "nested more than 100 deep"},
    {"{% set ns = namespace(l=[]) %}{% for i in range(1000) %}{% set ns.l = [ns.l] %}"
     "{% endfor %}{{ ns.l }}", 1, "nested more than 100 deep"},
};

/* Builds the hostile templates no literal can hold: deep nesting and long chains. */
static char *generated(int which)
{
    size_t cap = 64 + 20000 * 14;
    char *s = malloc(cap), *p = s;
    p += sprintf(p, "{{ ");
    for (int i = 0; i < 2000; i++)
        p += sprintf(p, which == 0 ? "(" : which == 1 ? "not " : which == 2 ? "1 + " : "-");
    p += sprintf(p, "1");
    if (which == 0)
        for (int i = 0; i < 2000; i++)
            *p++ = ')';
    p += sprintf(p, " }}");
    if (which == 3) {
        p = s;
        for (int i = 0; i < 2000; i++)
            p += sprintf(p, "{%% if true %%}");
        for (int i = 0; i < 2000; i++)
            p += sprintf(p, "{%% endif %%}");
    }
    *p = '\0';
    return s;
}

static void expect_refusal(const char *src, int at_render, const char *msg, int idx)
{
    char *dir = testutil_mkdtemp("lorad_chat_bad");
    char path[512];
    snprintf(path, sizeof path, "%s/t.jinja", dir);
    write_file(dir, "t.jinja", src);
    lr_error err = {0};
    chat_template *t = chat_template_load(NULL, path, &err);
    if (!at_render) {
        ck_assert_msg(t == NULL, "case %d: loaded, want refusal '%s'", idx, msg);
    } else {
        ck_assert_msg(t != NULL, "case %d: load failed: %s", idx, err.msg);
        chat_message m[2] = {{"user", "hello"}, {"assistant", "hi"}};
        char *out = (char *)"unchanged";
        size_t len = 0;
        ck_assert_int_eq(chat_template_render(t, m, 2, 1, &out, &len, &err), LR_EINVAL);
        ck_assert_ptr_null(out);
        chat_template_free(t);
    }
    ck_assert_msg(strstr(err.msg, msg) != NULL, "case %d: message '%s' lacks '%s'", idx, err.msg,
                  msg);
    testutil_rmdir(dir);
}

START_TEST(test_bad_templates_are_refused_clearly)
{
    expect_refusal(BAD[_i].src, BAD[_i].at_render, BAD[_i].msg, _i);
}
END_TEST

START_TEST(test_deep_nesting_is_refused)
{
    static const char *const want[] = {"nesting deeper than", "nesting deeper than",
                                       "nested more than 256 deep", "nesting deeper than"};
    char *src = generated(_i);
    expect_refusal(src, 0, want[_i], 100 + _i);
    free(src);
}
END_TEST

START_TEST(test_oversized_inputs_are_refused)
{
    /* a template file over the source limit */
    char *dir = testutil_mkdtemp("lorad_chat_big");
    char *big = malloc(JINJA_MAX_SOURCE + 2);
    memset(big, 'a', JINJA_MAX_SOURCE + 1);
    big[JINJA_MAX_SOURCE + 1] = '\0';
    write_file(dir, "big.jinja", big);
    char path[512];
    snprintf(path, sizeof path, "%s/big.jinja", dir);
    lr_error err = {0};
    ck_assert_ptr_null(chat_template_load(NULL, path, &err));
    ck_assert_msg(strstr(err.msg, "larger than"), "%s", err.msg);
    testutil_rmdir(dir);
    /* a long conversation still renders: the memory budget grows with the input */
    chat_template *t = load_ok(NULL, "llama2");
    memset(big, 'x', JINJA_MAX_SOURCE);
    big[JINJA_MAX_SOURCE] = '\0';
    enum { N = 40 };
    chat_message m[N];
    for (int i = 0; i < N; i++)
        m[i] = (chat_message){i % 2 ? "assistant" : "user", big};
    char *out = NULL;
    size_t len = 0;
    ck_assert_msg(chat_template_render(t, m, N, 1, &out, &len, &err) == 0, "%s", err.msg);
    ck_assert_uint_gt(len, (size_t)N * JINJA_MAX_SOURCE);
    free(out);
    /* a message that is not UTF-8 is refused, not rendered */
    m[0].content = "\xc3";
    ck_assert_int_eq(chat_template_render(t, m, 1, 1, &out, &len, &err), LR_EINVAL);
    ck_assert_ptr_null(out);
    chat_template_free(t);
    free(big);
}
END_TEST

static Suite *chat_suite(void)
{
    Suite *s = suite_create("chat");
    TCase *core = tcase_create("core"), *limits = tcase_create("limits");
    tcase_set_timeout(core, 120);
    tcase_set_timeout(limits, 120);
    tcase_add_loop_test(core, test_real_templates_match_reference_goldens, 0, n_tmpl);
    tcase_add_loop_test(core, test_builtins_are_the_real_templates, 0, 4);
    tcase_add_test(core, test_python_semantics_match_jinja2);
    tcase_add_test(core, test_template_lookup_in_model_dir);
    tcase_add_test(core, test_missing_template_is_not_found);
    tcase_add_loop_test(limits, test_bad_templates_are_refused_clearly, 0,
                        (int)(sizeof BAD / sizeof BAD[0]));
    tcase_add_loop_test(limits, test_deep_nesting_is_refused, 0, 4);
    tcase_add_test(limits, test_oversized_inputs_are_refused);
    suite_add_tcase(s, core);
    suite_add_tcase(s, limits);
    return s;
}

int main(void)
{
    load_fixtures();
    SRunner *r = srunner_create(chat_suite());
    srunner_run_all(r, CK_NORMAL);
    int failed = srunner_ntests_failed(r);
    srunner_free(r);
    json_decref(goldens);
    json_decref(semantics);
    return failed ? 1 : 0;
}
