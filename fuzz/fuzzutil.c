/* fuzzutil: scratch files, input splitting, checks and the tiny daemon state of the fuzz
 * harnesses. */
#include "fuzz/fuzzutil.h"

#include <errno.h>
#include <ftw.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/log.h"
#include "core/model.h"
#include "tests/testutil.h"

void fuzz_fail(const char *file, int line, const char *cond, const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "%s:%d: guarantee broken: %s\n  ", file, line, cond);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\n");
    abort();
}

void fuzz_check_error(int rc, const lr_error *err)
{
    FUZZ_CHECK(rc < 0 && rc >= LR_EEXIST, "return code %d is not an LR_E* error", rc);
    FUZZ_CHECK(err->code == rc, "err.code %d but returned %d (message '%.200s')", err->code,
               rc, err->msg);
    size_t n = strnlen(err->msg, sizeof err->msg);
    FUZZ_CHECK(n > 0 && n < sizeof err->msg, "empty or unterminated error message");
    for (size_t i = 0; i < n; i++)
        FUZZ_CHECK((unsigned char)err->msg[i] >= 0x20 && err->msg[i] != 0x7f,
                   "error message has a control character: '%s'", err->msg);
    FUZZ_CHECK(fuzz_utf8_valid(err->msg, n), "error message is not valid UTF-8: '%s'",
               err->msg);
}

static char scratch[256];
static pid_t scratch_pid;   /* a fork (libFuzzer's -fork mode) must not remove it */

static int remove_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    remove(path);
    return 0;
}

static void remove_scratch(void)
{
    if (scratch[0] && getpid() == scratch_pid)
        nftw(scratch, remove_one, 16, FTW_DEPTH | FTW_PHYS);
}

const char *fuzz_scratch(void)
{
    if (!scratch[0]) {
        struct stat st;
        const char *base = stat("/dev/shm", &st) == 0 && access("/dev/shm", W_OK) == 0
                               ? "/dev/shm" : "/tmp";
        snprintf(scratch, sizeof scratch, "%s/lorad-fuzz-%ld", base, (long)getpid());
        if (mkdir(scratch, 0700) != 0 && errno != EEXIST) {
            fprintf(stderr, "fuzz: cannot make %s: %s\n", scratch, strerror(errno));
            abort();
        }
        scratch_pid = getpid();
        atexit(remove_scratch);
    }
    return scratch;
}

void fuzz_mkdir(const char *dir)
{
    if (mkdir(dir, 0700) != 0 && errno != EEXIST) {
        fprintf(stderr, "fuzz: cannot make %s: %s\n", dir, strerror(errno));
        abort();
    }
}

void fuzz_path(char *out, size_t cap, const char *sub)
{
    snprintf(out, cap, "%s/%s", fuzz_scratch(), sub);
    fuzz_mkdir(out);
}

void fuzz_write(const char *dir, const char *name, const void *data, size_t n)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    if (!data) {
        unlink(path);
        return;
    }
    FILE *f = fopen(path, "wb");
    if (!f || (n && fwrite(data, 1, n, f) != n) || fclose(f) != 0) {
        fprintf(stderr, "fuzz: cannot write %s: %s\n", path, strerror(errno));
        abort();
    }
}

char *fuzz_read(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap + 1);
    size_t got;
    while (buf && (got = fread(buf + n, 1, cap - n, f)) > 0) {
        n += got;
        if (n == cap) {
            char *b = realloc(buf, cap * 2 + 1);
            if (!b) {
                free(buf);
                buf = NULL;
                break;
            }
            buf = b;
            cap *= 2;
        }
    }
    fclose(f);
    if (!buf)
        return NULL;
    buf[n] = '\0';
    if (len)
        *len = n;
    return buf;
}

int fuzz_split(const uint8_t *data, size_t size, const uint8_t **part, size_t *len, int max)
{
    const size_t sl = sizeof FUZZ_SEP - 1;
    int k = 0;
    while (k < max - 1) {
        const uint8_t *s = memmem(data, size, FUZZ_SEP, sl);
        if (!s)
            break;
        part[k] = data;
        len[k++] = (size_t)(s - data);
        size -= (size_t)(s - data) + sl;
        data = s + sl;
    }
    part[k] = data;
    len[k++] = size;
    return k;
}

int fuzz_utf8_valid(const char *str, size_t n)
{
    const unsigned char *s = (const unsigned char *)str;
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i];
        size_t k;
        unsigned cp;
        if (c < 0x80) {
            i++;
            continue;
        } else if (c >= 0xc2 && c <= 0xdf) {
            k = 1;
            cp = c & 0x1f;
        } else if (c >= 0xe0 && c <= 0xef) {
            k = 2;
            cp = c & 0x0f;
        } else if (c >= 0xf0 && c <= 0xf4) {
            k = 3;
            cp = c & 0x07;
        } else {
            return 0;
        }
        if (i + k >= n)
            return 0;
        for (size_t j = 1; j <= k; j++) {
            if ((s[i + j] & 0xc0) != 0x80)
                return 0;
            cp = cp << 6 | (s[i + j] & 0x3f);
        }
        if ((k == 2 && cp < 0x800) || (k == 3 && (cp < 0x10000 || cp > 0x10ffff)) ||
            (cp >= 0xd800 && cp <= 0xdfff))
            return 0;
        i += k + 1;
    }
    return 1;
}

app *fuzz_app(void)
{
    static app a;
    static int made;
    if (made)
        return &a;
    made = 1;
    log_level = LOG_LEVEL_ERROR;
    static char model_dir[512], adapters[512], good[600], outside[512], evil[600];
    fuzz_path(model_dir, sizeof model_dir, "model");
    fuzz_path(adapters, sizeof adapters, "adapters");
    fuzz_path(outside, sizeof outside, "outside");
    snprintf(good, sizeof good, "%s/good", adapters);
    snprintf(evil, sizeof evil, "%s/evil", outside);
    fuzz_mkdir(good);
    fuzz_mkdir(evil);
    testutil_write_tiny_model(model_dir);
    testutil_write_tiny_adapter(good, 4, 8.0, 0x7f, 7, 0, "tiny");
    testutil_write_tiny_adapter(evil, 4, 8.0, 0x7f, 7, 0, "tiny");

    lr_error err = {0};
    /* the options fuzzing needs (serve_options_default is the daemon's, in serve.c) */
    a.opt.max_loaded = 8;
    a.opt.max_connections = 1024;
    a.opt.max_tokens = 16;
    a.opt.model_dir = model_dir;
    a.opt.adapter_dir = adapters;
    a.opt.host = "127.0.0.1";
    a.opt.port = 0;
    a.opt.max_upload_mb = 1;
    a.opt.max_body_kb = 64;
    a.opt.max_rank = 64;
    snprintf(a.base_id, sizeof a.base_id, "tiny");
    a.m = model_load(model_dir, &err);
    registry_options ro = registry_options_default();
    ro.dir = adapters;
    ro.peft.max_rank = a.opt.max_rank;
    if (a.m)
        a.reg = registry_create(a.m, &ro, &err);
    a.met = metrics_create();
    if (!a.m || !a.reg || !a.met) {
        fprintf(stderr, "fuzz: cannot make the daemon state: %s\n", err.msg);
        abort();
    }
    a.started = time(NULL);
    return &a;
}
