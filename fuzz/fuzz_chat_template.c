/* fuzz_chat_template: chat templates and conversations. First byte even: a conversation
 * (parts at FUZZ_SEP: a role byte, then the content) rendered by the four built-in
 * templates — ChatML must give exactly its documented text, the others either render valid
 * UTF-8 or refuse with the template's own message (raise_exception). First byte odd: a
 * template source (and, after FUZZ_SEP, a JSON object of variables) for the Jinja
 * interpreter — it parses or refuses with "template 'NAME' line N: ..."; a parsed one
 * renders valid UTF-8 (for UTF-8 source), the same text twice, or refuses with such a
 * message or the template's raise_exception text, within the documented limits. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz/fuzzutil.h"
#include "server/chat.h"
#include "server/jinja.h"

#define MAX_MSGS 8

static const char *const builtin[4] = {"chatml", "llama3", "llama2", "mistral"};
static chat_template *tpl[4];

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    for (int i = 0; i < 4; i++) {
        lr_error err = {0};
        if (!(tpl[i] = chat_template_load(NULL, builtin[i], &err))) {
            fprintf(stderr, "fuzz: %s\n", err.msg);
            abort();
        }
    }
    return 0;
}

static void builtins(const uint8_t *data, size_t size, int add_gen)
{
    static const char *const roles[4] = {"system", "user", "assistant", "user"};
    const uint8_t *part[MAX_MSGS];
    size_t len[MAX_MSGS];
    int n = fuzz_split(data, size, part, len, MAX_MSGS);
    chat_message msgs[MAX_MSGS];
    char *content[MAX_MSGS];
    size_t expect_len = 64;
    for (int i = 0; i < n; i++) {
        const char *c = len[i] ? (const char *)part[i] + 1 : "";
        size_t cl = len[i] ? len[i] - 1 : 0;
        if (!fuzz_utf8_valid(c, cl) || memchr(c, 0, cl)) {
            for (int j = 0; j < i; j++)
                free(content[j]);
            return;   /* a request's content is valid UTF-8 without NUL (jansson) */
        }
        content[i] = strndup(c, cl);
        msgs[i].role = roles[len[i] ? part[i][0] % 4 : 1];
        msgs[i].content = content[i];
        expect_len += cl + 32;
    }
    /* ChatML, as its source says */
    char *expect = malloc(expect_len);
    size_t el = 0;
    for (int i = 0; i < n; i++)
        el += (size_t)sprintf(expect + el, "<|im_start|>%s\n%s<|im_end|>\n", msgs[i].role,
                              msgs[i].content);
    if (add_gen)
        el += (size_t)sprintf(expect + el, "<|im_start|>assistant\n");

    for (int t = 0; t < 4; t++) {
        char *out = NULL;
        size_t olen = 0;
        lr_error err = {0};
        int rc = chat_template_render(tpl[t], msgs, n, add_gen, &out, &olen, &err);
        if (t == 0)
            FUZZ_CHECK(rc == 0 && olen == el && memcmp(out, expect, el) == 0,
                       "chatml rendered '%.*s', expected '%.*s' (%s)", (int)olen,
                       out ? out : "", (int)el, expect, err.msg);
        if (rc == 0) {
            FUZZ_CHECK(out && out[olen] == '\0' && fuzz_utf8_valid(out, olen),
                       "%s: output not valid UTF-8", builtin[t]);
        } else {
            FUZZ_CHECK(rc == LR_EINVAL && !out && err.msg[0], "%s: refused (%d) without a "
                       "message", builtin[t], rc);
            FUZZ_CHECK(t >= 2 && !strstr(err.msg, "line "), "%s: a render error, not the "
                       "template's own refusal: %s", builtin[t], err.msg);
        }
        free(out);
    }
    free(expect);
    for (int i = 0; i < n; i++)
        free(content[i]);
}

static void source(const uint8_t *data, size_t size)
{
    const uint8_t *part[2];
    size_t len[2];
    int n = fuzz_split(data, size, part, len, 2);
    const char *src = (const char *)part[0];
    lr_error err = {0};
    jinja_template *t = jinja_parse("fuzz", src, len[0], &err);
    if (!t) {
        FUZZ_CHECK(err.code < 0 && strncmp(err.msg, "template 'fuzz'", 15) == 0,
                   "parse refused with '%s'", err.msg);
        return;
    }
    json_t *vars = n > 1 ? json_loadb((const char *)part[1], len[1], 0, NULL) : NULL;
    if (!json_is_object(vars)) {
        json_decref(vars);
        vars = json_pack("{s:[{s:s,s:s},{s:s,s:s}],s:b,s:s,s:s,s:n}", "messages", "role",
                         "system", "content", "Be brief.", "role", "user", "content",
                         "Hi {{ there }} ünï", "add_generation_prompt", 1, "bos_token", "<s>",
                         "eos_token", "</s>", "tools");
    }
    char *out = NULL, *again = NULL;
    size_t olen = 0, alen = 0;
    int rc = jinja_render(t, vars, &out, &olen, &err);
    int timeless = !memmem(src, len[0], "strftime", 8);
    if (rc == 0) {
        FUZZ_CHECK(out && out[olen] == '\0', "output not terminated");
        FUZZ_CHECK(!fuzz_utf8_valid(src, len[0]) || fuzz_utf8_valid(out, olen),
                   "UTF-8 template rendered invalid UTF-8");
        lr_error err2 = {0};
        if (timeless)
            FUZZ_CHECK(jinja_render(t, vars, &again, &alen, &err2) == 0 && alen == olen &&
                       memcmp(out, again, olen) == 0, "two renders differ");
    } else {
        FUZZ_CHECK((rc == LR_EINVAL || rc == LR_ENOMEM) && !out && err.msg[0],
                   "render refused (%d) without a message", rc);
        FUZZ_CHECK(strncmp(err.msg, "template 'fuzz'", 15) == 0 ||
                   memmem(src, len[0], "raise_exception", 15) || rc == LR_ENOMEM,
                   "render refused with '%s'", err.msg);
    }
    free(out);
    free(again);
    json_decref(vars);
    jinja_free(t);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!tpl[0])
        LLVMFuzzerInitialize(NULL, NULL);
    if (size < 1 || size > 8192)
        return 0;
    if (data[0] & 1)
        source(data + 1, size - 1);
    else
        builtins(data + 1, size - 1, (data[0] >> 1) & 1);
    return 0;
}
