/* fuzz_multipart: adapter uploads through the daemon's real HTTP stack (server/http.c,
 * libmicrohttpd's multipart parser, server/admin.c, the store and the registry over the
 * tiny model; everything in process, on a loopback port). Input: a Content-Type value,
 * FUZZ_SEP, a body (no separator: the body, with boundary "BB"), sent as
 * PUT /v1/adapters/up?replace=true. Checks: an answer always comes (no hang), with a status
 * the admin API documents (201, 400, 413, 415, 422 — never 500), an OpenAI error body or
 * the adapter's description; nothing is left in the store's temporary directories; when
 * the body is plain multipart (read by an independent parser here) with parts 'config' and
 * 'weights', the answer is 201 or 422 and a 201 stored exactly the bytes sent, and another
 * part name is refused with 400. */
#include <arpa/inet.h>
#include <dirent.h>
#include <jansson.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "fuzz/fuzzutil.h"
#include "server/http.h"

#define MAX_BODY 65536

static int port;
static http_server *volatile server;   /* lives as long as the process (volatile: kept
                                       * in memory, where LeakSanitizer sees it) */
static char adapters[512];

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    app *a = fuzz_app();
    lr_error err = {0};
    if (!(server = http_start(a, -1, &err))) {
        fprintf(stderr, "fuzz: %s\n", err.msg);
        abort();
    }
    port = http_port(server);
    snprintf(adapters, sizeof adapters, "%s", a->opt.adapter_dir);
    return 0;
}

/* Sends the request and reads the whole answer (the server closes the connection). */
static char *exchange(const char *head, size_t hlen, const uint8_t *body, size_t blen,
                      size_t *rlen)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    FUZZ_CHECK(fd >= 0, "socket");
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    struct linger lg = {1, 0};   /* no TIME_WAIT: thousands of connections a second */
    struct timeval tv = {20, 0};
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    FUZZ_CHECK(connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0, "connect");
    /* the server may answer (415, 400) before reading the body: errors here are fine */
    if (send(fd, head, hlen, MSG_NOSIGNAL) == (ssize_t)hlen && blen)
        (void)!send(fd, body, blen, MSG_NOSIGNAL);
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap + 1);
    ssize_t got;
    while ((got = recv(fd, buf + n, cap - n, 0)) > 0) {
        n += (size_t)got;
        if (n == cap)
            buf = realloc(buf, (cap *= 2) + 1);
    }
    close(fd);
    buf[n] = '\0';
    *rlen = n;
    return buf;
}

/* A plain multipart body: boundary of [A-Za-z0-9'()+_,-./:=?], no preamble, each part
 * one Content-Disposition line (and optionally Content-Type), ends with the close
 * delimiter. Fills names/contents; 1 if the body is that plain. */
typedef struct {
    char name[64];
    const uint8_t *data;
    size_t len;
} mpart;

static int plain_multipart(const char *boundary, const uint8_t *b, size_t n, mpart *parts,
                           int *np)
{
    char delim[128];
    int dl = snprintf(delim, sizeof delim, "--%s", boundary);
    if (dl <= 2 || dl >= (int)sizeof delim - 8)
        return 0;
    for (const char *c = boundary; *c; c++)
        if (!strchr("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", *c))
            return 0;
    size_t i = 0;
    *np = 0;
    if (n < (size_t)dl + 2 || memcmp(b, delim, (size_t)dl) || memcmp(b + dl, "\r\n", 2) ||
        strlen(boundary) > 70)
        return 0;
    i = (size_t)dl + 2;
    for (;;) {
        if (*np == 4)
            return 0;
        mpart *p = &parts[(*np)++];
        const uint8_t *eoh = memmem(b + i, n - i, "\r\n\r\n", 4);
        if (!eoh)
            return 0;
        /* headers: first line names the part, optional second Content-Type line */
        size_t hl = (size_t)(eoh - (b + i));
        char hdr[512];
        if (hl >= sizeof hdr)
            return 0;
        memcpy(hdr, b + i, hl);
        hdr[hl] = '\0';
        char *nl = strstr(hdr, "\r\n");
        if (nl) {
            if (strncmp(nl + 2, "Content-Type: application/octet-stream", 38) || nl[40])
                return 0;
            *nl = '\0';
        }
        if (sscanf(hdr, "Content-Disposition: form-data; name=\"%63[a-z]\"", p->name) != 1)
            return 0;
        char tail[128];
        snprintf(tail, sizeof tail, "Content-Disposition: form-data; name=\"%.63s\"", p->name);
        if (strcmp(hdr, tail) && !(strncmp(hdr, tail, strlen(tail)) == 0 &&
                                   strncmp(hdr + strlen(tail), "; filename=\"f\"", 15) == 0 &&
                                   hdr[strlen(tail) + 14] == '\0'))
            return 0;
        i = (size_t)(eoh - b) + 4;
        char end[136];
        int el = snprintf(end, sizeof end, "\r\n%s", delim);
        const uint8_t *e = memmem(b + i, n - i, end, (size_t)el);
        if (!e)
            return 0;
        p->data = b + i;
        p->len = (size_t)(e - (b + i));
        i = (size_t)(e - b) + (size_t)el;
        if (n - i >= 2 && !memcmp(b + i, "--", 2))
            return (n - i == 2 || (n - i == 4 && !memcmp(b + i + 2, "\r\n", 2)));
        if (n - i < 2 || memcmp(b + i, "\r\n", 2))
            return 0;
        i += 2;
    }
}

static void check_no_leftovers(void)
{
    for (int tries = 0;; tries++) {
        DIR *d = opendir(adapters);
        struct dirent *e;
        int left = 0;
        while (d && (e = readdir(d)))
            left |= !strncmp(e->d_name, ".tmp-", 5) || !strncmp(e->d_name, ".del-", 5);
        if (d)
            closedir(d);
        if (!left)
            return;
        FUZZ_CHECK(tries < 200, "an upload left a temporary directory in the store");
        usleep(5000);   /* the connection's completion callback may still be running */
    }
}

static void check_stored(const mpart *p)
{
    char path[700];
    snprintf(path, sizeof path, "%s/up/%s", adapters, strcmp(p->name, "config") == 0
             ? "adapter_config.json" : "adapter_model.safetensors");
    size_t n = 0;
    char *got = fuzz_read(path, &n);
    FUZZ_CHECK(got && n == p->len && memcmp(got, p->data, n) == 0, "stored %s differs from "
               "the part sent (%zu vs %zu bytes)", p->name, n, p->len);
    free(got);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!port)
        LLVMFuzzerInitialize(NULL, NULL);
    const uint8_t *part[2];
    size_t len[2];
    int n = fuzz_split(data, size, part, len, 2);
    char ct[256];
    const uint8_t *body = n == 2 ? part[1] : part[0];
    size_t blen = n == 2 ? len[1] : len[0];
    if (n == 2) {
        size_t k = 0;
        for (size_t i = 0; i < len[0] && k < 200; i++)
            if (part[0][i] >= 0x20 && part[0][i] < 0x7f)
                ct[k++] = (char)part[0][i];
        ct[k] = '\0';
    } else {
        snprintf(ct, sizeof ct, "multipart/form-data; boundary=BB");
    }
    if (blen > MAX_BODY)
        return 0;
    char head[512];
    int hl = snprintf(head, sizeof head, "PUT /v1/adapters/up?replace=true HTTP/1.1\r\n"
                      "Host: fuzz\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
                      "Connection: close\r\n\r\n", ct, blen);
    size_t rlen = 0;
    char *resp = exchange(head, (size_t)hl, body, blen, &rlen);
    if (rlen == 0) {
        /* Hundreds of connections a second, each served and ended on a thread of its own:
         * one closed unanswered is libmicrohttpd at its connection limit, not the upload
         * path. Once more, after a pause; a request that is never answered fails below. */
        free(resp);
        usleep(200000);
        resp = exchange(head, (size_t)hl, body, blen, &rlen);
    }
    int status = 0;
    FUZZ_CHECK(sscanf(resp, "HTTP/1.1 %d", &status) == 1, "no HTTP answer (%zu bytes: "
               "'%.100s')", rlen, resp);
    FUZZ_CHECK(status == 201 || status == 400 || status == 413 || status == 415 ||
               status == 422, "status %d: %.300s", status, resp);
    char *jb = strstr(resp, "\r\n\r\n");
    json_t *j = jb ? json_loads(jb + 4, 0, NULL) : NULL;
    if (status == 201)
        FUZZ_CHECK(json_is_string(json_object_get(j, "id")), "201 without a description");
    else
        FUZZ_CHECK(json_is_string(json_object_get(json_object_get(j, "error"), "message")),
                   "%d without an error message: %.200s", status, resp);
    json_decref(j);
    check_no_leftovers();
    if (getenv("FUZZ_VERBOSE"))
        fprintf(stderr, "%d %s\n", status, jb ? jb + 4 : resp);

    const char *bd = strstr(ct, "boundary=");
    mpart parts[4];
    int np = 0;
    if (!strncmp(ct, "multipart/form-data; boundary=", 30) && bd && !strchr(bd, ';') &&
        plain_multipart(bd + 9, body, blen, parts, &np)) {
        int config = 0, weights = 0, other = 0, empty = 0;
        if (strlen(bd + 9) == 1)   /* libmicrohttpd needs 2 characters: a clear 400 */
            FUZZ_CHECK(status == 400 && strstr(resp, "2 to 70 characters"), "a one-character "
                       "boundary answered %d", status);
        for (int i = 0; i < np; i++) {
            config += !strcmp(parts[i].name, "config");
            weights += !strcmp(parts[i].name, "weights");
            other += strcmp(parts[i].name, "config") && strcmp(parts[i].name, "weights");
            empty += parts[i].len == 0;
        }
        if (strlen(bd + 9) == 1)
            ;
        else if (other)
            FUZZ_CHECK(status == 400, "a part of another name answered %d", status);
        else if (config == 1 && weights == 1 && !empty)
            FUZZ_CHECK(status == 201 || status == 422, "a plain upload answered %d: %s", status,
                       jb ? jb + 4 : resp);
        if (status == 201)
            for (int i = 0; i < np; i++)
                check_stored(&parts[i]);
    }
    free(resp);
    return 0;
}
