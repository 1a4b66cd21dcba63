/* fuzz_adapter_name: adapter names and paths from clients. Input: a name, FUZZ_SEP, a path
 * (relative ones are taken inside the scratch directory, which holds the adapter directory
 * with the adapter "good", a directory "outside" with the adapter "evil", and a symlink
 * adapters/link -> ../outside). Checks: registry_name_valid is exactly
 * [A-Za-z0-9][A-Za-z0-9._-]{0,63} (so a valid name is one path component, never "." or ".."
 * or a store temporary); only "good" is found by the registry and by GET; a delete by an
 * unknown or invalid name removes nothing; vLLM's load_lora_adapter copies an adapter only
 * from a path that resolves strictly inside the adapter directory (never "outside", not
 * through ".." or the symlink) and under a valid new name; nothing else ever appears in
 * the adapter directory. */
#include <dirent.h>
#include <jansson.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "adapters/registry.h"
#include "fuzz/fuzzutil.h"
#include "server/admin.h"

static char adapters[PATH_MAX], real_adapters[PATH_MAX], evil[PATH_MAX + 64];

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    app *a = fuzz_app();
    snprintf(adapters, sizeof adapters, "%s", a->opt.adapter_dir);
    char link[PATH_MAX + 8];
    snprintf(link, sizeof link, "%s/link", adapters);
    if (symlink("../outside", link) != 0) {
        perror("fuzz: symlink");
        abort();
    }
    if (!realpath(adapters, real_adapters))
        abort();
    snprintf(evil, sizeof evil, "%s/outside/evil/adapter_config.json", fuzz_scratch());
    return 0;
}

/* Every refusal is an OpenAI error object with a message (so JSON could carry it). */
static void check_reply(const api_reply *out)
{
    if (out->status == 200)
        return;
    json_t *o = out->body ? json_loadb(out->body, out->len, 0, NULL) : NULL;
    FUZZ_CHECK(json_is_string(json_object_get(json_object_get(o, "error"), "message")),
               "a %d reply without an error message: '%s'", out->status,
               out->body ? out->body : "(no body)");
    json_decref(o);
}

static int spec_valid(const char *s)
{
    size_t n = strlen(s);
    if (n < 1 || n > 64)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        int alnum = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
        if (!alnum && (i == 0 || (c != '.' && c != '_' && c != '-')))
            return 0;
    }
    return 1;
}

/* Entries of the adapter directory other than good and link: there must be none. */
static void check_directory(const char *allowed)
{
    DIR *d = opendir(adapters);
    FUZZ_CHECK(d != NULL, "adapter directory gone");
    struct dirent *e;
    while ((e = readdir(d)))
        FUZZ_CHECK(!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..") ||
                   !strcmp(e->d_name, "good") || !strcmp(e->d_name, "link") ||
                   (allowed && !strcmp(e->d_name, allowed)), "'%s' appeared in the adapter "
                   "directory", e->d_name);
    closedir(d);
    struct stat st;
    FUZZ_CHECK(stat(evil, &st) == 0, "the adapter outside was removed");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!adapters[0])
        LLVMFuzzerInitialize(NULL, NULL);
    app *a = fuzz_app();
    const uint8_t *part[2];
    size_t len[2];
    int n = fuzz_split(data, size, part, len, 2);
    if (len[0] > 300 || (n > 1 && len[1] > 1000))
        return 0;
    char name[301], path[PATH_MAX];
    memcpy(name, part[0], len[0]);
    name[len[0]] = '\0';
    size_t pl = n > 1 ? len[1] : 0;
    char rel[1001];
    memcpy(rel, n > 1 ? (const char *)part[1] : "", pl);
    rel[pl] = '\0';
    if (rel[0] == '/')
        snprintf(path, sizeof path, "%s", rel);
    else
        snprintf(path, sizeof path, "%s/%s", fuzz_scratch(), rel);

    int valid = registry_name_valid(name);
    FUZZ_CHECK(valid == spec_valid(name), "registry_name_valid('%s') = %d", name, valid);
    if (valid)
        FUZZ_CHECK(!strchr(name, '/') && strcmp(name, ".") && strcmp(name, "..") &&
                   name[0] != '.', "'%s' is not one plain path component", name);
    int is_good = strcmp(name, "good") == 0;

    lr_error err = {0};
    registry_adapter *ad = registry_acquire(a->reg, name, &err);
    FUZZ_CHECK(!ad == !is_good, "acquire('%s'): %s", name, ad ? "found" : err.msg);
    if (ad)
        registry_release(a->reg, ad, 0);
    else
        FUZZ_CHECK(err.code == LR_ENOTFOUND && err.msg[0], "acquire('%s'): code %d", name,
                   err.code);

    api_reply out = {0};
    admin_get(a, name, &out);
    FUZZ_CHECK(out.status == (is_good ? 200 : 404), "GET '%s': %d", name, out.status);
    check_reply(&out);
    free(out.body);
    if (!is_good) {
        memset(&out, 0, sizeof out);
        admin_delete(a, name, &out);
        FUZZ_CHECK(out.status == 404, "DELETE '%s': %d", name, out.status);
        check_reply(&out);
        free(out.body);
    }
    check_directory(NULL);

    /* load_lora_adapter, when name and path can travel in JSON */
    if (!fuzz_utf8_valid(name, strlen(name)) || !fuzz_utf8_valid(path, strlen(path)))
        return 0;
    json_t *body = json_pack("{s:s, s:s}", "lora_name", name, "lora_path", path);
    char *text = json_dumps(body, 0);
    json_decref(body);
    memset(&out, 0, sizeof out);
    admin_load_vllm(a, text, strlen(text), &out);
    free(text);
    char real[PATH_MAX];
    size_t rn = strlen(real_adapters);
    int inside = realpath(path, real) && strncmp(real, real_adapters, rn) == 0 &&
                 real[rn] == '/';
    if (out.status == 200) {
        FUZZ_CHECK(inside && valid && !is_good && strcmp(name, "tiny"),
                   "load_lora_adapter('%s', '%s') copied from %s", name, path, real);
        check_directory(name);
        api_reply del = {0};
        admin_delete(a, name, &del);
        FUZZ_CHECK(del.status == 200, "the copy '%s' cannot be deleted (%d)", name,
                   del.status);
        free(del.body);
    } else {
        FUZZ_CHECK(out.status == 400 || out.status == 403 || out.status == 404,
                   "load_lora_adapter answered %d: %s", out.status, out.body);
        check_reply(&out);
    }
    if (getenv("FUZZ_VERBOSE"))
        fprintf(stderr, "load_lora_adapter('%s', '%s'): %d\n", name, path, out.status);
    free(out.body);
    check_directory(NULL);
    return 0;
}
