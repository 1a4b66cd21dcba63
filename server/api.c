/* api: OpenAI completions / chat completions / models over the engine and the registry.
 * A generation request becomes a job shared by the connection thread (which formats the
 * response) and the engine thread (whose callbacks feed the job's generation). */
#include "api.h"

#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "core/log.h"
#include "server/generation.h"

#define API_MAX_MIX VARIANT_MAX_TERMS
#define API_MAX_MESSAGES 1024
#define WAIT_SLICE_MS 50   /* how often a waiting connection checks for a hang-up */

double api_now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

/* ------------------------------------------------------------------ errors ---------- */

static const char *error_type(int status)
{
    switch (status) {
    case 401: return "authentication_error";
    case 403: return "permission_error";
    case 404: return "not_found_error";
    case 429: return "rate_limit_error";
    case 503: return "service_unavailable";
    default: return status >= 500 ? "server_error" : "invalid_request_error";
    }
}

void api_error(api_reply *out, int status, const char *param, const char *code,
               const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    char par[128];
    snprintf(par, sizeof par, "%s", param ? param : "");
    /* a quoted name may have been cut mid-character: JSON needs UTF-8 */
    lr_text_tidy(msg);
    lr_text_tidy(par);
    json_t *e = json_pack("{s:{s:s, s:s, s:o, s:o}}", "error", "message", msg, "type",
                          error_type(status), "param", param ? json_string(par) : json_null(),
                          "code", code ? json_string(code) : json_null());
    free(out->body);
    out->body = e ? json_dumps(e, JSON_COMPACT) : NULL;
    out->len = out->body ? strlen(out->body) : 0;
    out->status = status;
    out->content_type = "application/json";
    json_decref(e);
}

/* ------------------------------------------------------------- the request ---------- */

typedef struct {
    char name[REGISTRY_NAME_MAX + 1];
    float weight;
} mix_member;

/* A completions or chat request, parsed and validated once. Strings point into the
 * request's JSON, which lives as long as this. */
typedef struct {
    int chat;
    const char *model;            /* NULL: the base */
    const char *prompt_text;      /* completions with a text prompt */
    int *prompt_ids;              /* completions with token ids (malloc'd) */
    int n_prompt_ids;
    chat_message *msgs;           /* chat (malloc'd array; strings borrowed) */
    int n_msgs;
    int max_tokens;               /* -1: not given */
    sampler_params sp;
    int seed_given;
    const char *stop[GENERATION_MAX_STOP];
    int n_stop;
    int stream, include_usage;
    int logprobs;                 /* alternatives per token (completions: logprobs;
                                   * chat: top_logprobs) */
    int want_logprobs;            /* chat: logprobs true; completions: logprobs given */
    int echo, ignore_eos, tokens_as_ids;
    mix_member mix[API_MAX_MIX];
    int n_mix;                    /* 0: no `adapters` field */
} gen_params;

static void gen_params_free(gen_params *p)
{
    free(p->prompt_ids);
    free(p->msgs);
}

/* Errors found while parsing: status 400 unless said otherwise. */
typedef struct {
    char param[64];
    char msg[384];
} parse_error;

static int perr(parse_error *e, const char *param, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int perr(parse_error *e, const char *param, const char *fmt, ...)
{
    snprintf(e->param, sizeof e->param, "%s", param ? param : "");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->msg, sizeof e->msg, fmt, ap);
    va_end(ap);
    return -1;
}

/* The get_* helpers leave *out as it is for a missing (NULL) or null value. */
static int get_bool(json_t *v, const char *k, int *out, parse_error *e)
{
    if (!v || json_is_null(v))
        return 0;
    if (!json_is_boolean(v))
        return perr(e, k, "'%s' must be a boolean", k);
    *out = json_is_true(v);
    return 0;
}

/* An integer in [lo, hi]; null keeps *out. Floats with an integral value (2.0) are
 * accepted, as Python's OpenAI servers do. */
static int get_int(json_t *v, const char *k, long lo, long hi, int *out, parse_error *e)
{
    if (!v || json_is_null(v))
        return 0;
    double d;
    if (json_is_integer(v))
        d = (double)json_integer_value(v);
    else if (json_is_real(v) && floor(json_real_value(v)) == json_real_value(v))
        d = json_real_value(v);
    else
        return perr(e, k, "'%s' must be an integer", k);
    if (d < (double)lo || d > (double)hi)
        return perr(e, k, "'%s' must be between %ld and %ld (got %.0f)", k, lo, hi, d);
    *out = (int)d;
    return 0;
}

static int get_num(json_t *v, const char *k, double lo, double hi, double *out,
                   parse_error *e)
{
    if (!v || json_is_null(v))
        return 0;
    if (!json_is_number(v))
        return perr(e, k, "'%s' must be a number", k);
    double d = json_number_value(v);
    if (!isfinite(d) || d < lo || d > hi)
        return perr(e, k, "'%s' must be between %g and %g (got %g)", k, lo, hi, d);
    *out = d;
    return 0;
}

static int parse_stop(json_t *v, gen_params *p, parse_error *e)
{
    if (json_is_null(v))
        return 0;
    if (json_is_string(v)) {
        if (json_string_length(v) == 0)
            return perr(e, "stop", "'stop' must not be an empty string");
        p->stop[p->n_stop++] = json_string_value(v);
        return 0;
    }
    if (!json_is_array(v))
        return perr(e, "stop", "'stop' must be a string or a list of strings");
    if (json_array_size(v) > GENERATION_MAX_STOP)
        return perr(e, "stop", "'stop' has %zu strings; at most %d", json_array_size(v),
                    GENERATION_MAX_STOP);
    size_t i;
    json_t *s;
    json_array_foreach(v, i, s) {
        if (!json_is_string(s) || json_string_length(s) == 0)
            return perr(e, "stop", "'stop' must hold non-empty strings");
        p->stop[p->n_stop++] = json_string_value(s);
    }
    return 0;
}

static int parse_prompt(json_t *v, gen_params *p, parse_error *e)
{
    if (json_is_string(v)) {
        p->prompt_text = json_string_value(v);
        return 0;
    }
    if (!json_is_array(v) || json_array_size(v) == 0)
        return perr(e, "prompt", "'prompt' must be a string, or a non-empty list of token ids");
    json_t *first = json_array_get(v, 0);
    if (json_is_string(first)) {
        if (json_array_size(v) != 1)
            return perr(e, "prompt", "a list of several prompts is not supported; send one "
                        "request per prompt");
        p->prompt_text = json_string_value(first);
        return 0;
    }
    if (json_is_array(first)) {
        if (json_array_size(v) != 1)
            return perr(e, "prompt", "a list of several prompts is not supported; send one "
                        "request per prompt");
        v = first;
        if (json_array_size(v) == 0)
            return perr(e, "prompt", "'prompt' must not be an empty list of token ids");
    }
    size_t n = json_array_size(v);
    if (n > (1u << 24))
        return perr(e, "prompt", "'prompt' has too many token ids");
    p->prompt_ids = malloc(sizeof(int) * n);
    if (!p->prompt_ids)
        return perr(e, "prompt", "out of memory");
    size_t i;
    json_t *id;
    json_array_foreach(v, i, id) {
        if (!json_is_integer(id) || json_integer_value(id) < 0 ||
            json_integer_value(id) > INT32_MAX)
            return perr(e, "prompt", "'prompt' token ids must be non-negative integers "
                        "(item %zu is not)", i);
        p->prompt_ids[i] = (int)json_integer_value(id);
    }
    p->n_prompt_ids = (int)n;
    return 0;
}

/* A message's content: a string, or a list of {"type":"text","text":...} parts, joined
 * into *joined (malloc'd) when there are several. */
static int message_text(json_t *c, size_t i, const char **out, char **joined, parse_error *e)
{
    if (json_is_string(c)) {
        *out = json_string_value(c);
        return 0;
    }
    if (json_is_null(c)) {
        *out = "";
        return 0;
    }
    if (!json_is_array(c))
        return perr(e, "messages", "messages[%zu].content must be a string or a list of text "
                    "parts", i);
    size_t total = 1, k;
    json_t *part;
    json_array_foreach(c, k, part) {
        json_t *t = json_object_get(part, "text");
        const char *type = json_string_value(json_object_get(part, "type"));
        if (!json_is_object(part) || !type || strcmp(type, "text") != 0 || !json_is_string(t))
            return perr(e, "messages", "messages[%zu].content[%zu]: only {\"type\": \"text\", "
                        "\"text\": ...} parts are supported", i, k);
        total += json_string_length(t);
    }
    char *s = malloc(total);
    if (!s)
        return perr(e, "messages", "out of memory");
    size_t n = 0;
    json_array_foreach(c, k, part) {
        json_t *t = json_object_get(part, "text");
        memcpy(s + n, json_string_value(t), json_string_length(t));
        n += json_string_length(t);
    }
    s[n] = '\0';
    *joined = s;
    *out = s;
    return 0;
}

static int parse_messages(json_t *v, gen_params *p, json_t *keep, parse_error *e)
{
    if (!json_is_array(v) || json_array_size(v) == 0)
        return perr(e, "messages", "'messages' must be a non-empty list");
    if (json_array_size(v) > API_MAX_MESSAGES)
        return perr(e, "messages", "at most %d messages", API_MAX_MESSAGES);
    p->msgs = calloc(json_array_size(v), sizeof *p->msgs);
    if (!p->msgs)
        return perr(e, "messages", "out of memory");
    size_t i;
    json_t *m;
    json_array_foreach(v, i, m) {
        if (!json_is_object(m))
            return perr(e, "messages", "messages[%zu] must be an object", i);
        const char *k;
        json_t *f;
        json_object_foreach(m, k, f) {
            if (strcmp(k, "role") && strcmp(k, "content") && strcmp(k, "name"))
                return perr(e, "messages", "messages[%zu]: unsupported field '%s' (tools and "
                            "function calls are not supported)", i, k);
        }
        const char *role = json_string_value(json_object_get(m, "role"));
        if (!role)
            return perr(e, "messages", "messages[%zu].role must be a string", i);
        if (strcmp(role, "system") && strcmp(role, "user") && strcmp(role, "assistant") &&
            strcmp(role, "developer"))
            return perr(e, "messages", "messages[%zu].role '%s' is not supported (system, "
                        "developer, user, assistant)", i, role);
        json_t *name = json_object_get(m, "name");
        if (name && !json_is_string(name))
            return perr(e, "messages", "messages[%zu].name must be a string", i);
        json_t *c = json_object_get(m, "content");
        if (!c)
            return perr(e, "messages", "messages[%zu].content is missing", i);
        char *joined = NULL;
        if (message_text(c, i, &p->msgs[i].content, &joined, e))
            return -1;
        if (joined) {
            /* owned by `keep`, which the job frees */
            json_t *holder = json_stringn_nocheck(joined, strlen(joined));
            free(joined);
            if (!holder || json_array_append_new(keep, holder))
                return perr(e, "messages", "out of memory");
            p->msgs[i].content = json_string_value(holder);
        }
        /* OpenAI's "developer" role is the system role of newer models */
        p->msgs[i].role = strcmp(role, "developer") == 0 ? "system" : role;
        p->n_msgs++;
    }
    return 0;
}

static int parse_adapters(json_t *v, gen_params *p, parse_error *e)
{
    if (json_is_null(v))
        return 0;
    if (!json_is_array(v) || json_array_size(v) == 0 || json_array_size(v) > API_MAX_MIX)
        return perr(e, "adapters", "'adapters' must be a list of 1 to %d {\"name\", "
                    "\"weight\"} objects", API_MAX_MIX);
    size_t i;
    json_t *m;
    json_array_foreach(v, i, m) {
        const char *k;
        json_t *f;
        if (!json_is_object(m))
            return perr(e, "adapters", "adapters[%zu] must be an object", i);
        json_object_foreach(m, k, f) {
            if (strcmp(k, "name") && strcmp(k, "weight"))
                return perr(e, "adapters", "adapters[%zu]: unknown field '%s'", i, k);
        }
        const char *name = json_string_value(json_object_get(m, "name"));
        if (!name || !*name)
            return perr(e, "adapters", "adapters[%zu].name must be a non-empty string", i);
        if (strlen(name) > REGISTRY_NAME_MAX)
            return perr(e, "adapters", "adapters[%zu].name is longer than %d characters", i,
                        REGISTRY_NAME_MAX);
        double w = 1.0;
        if (get_num(json_object_get(m, "weight"), "adapters", -100, 100, &w, e))
            return perr(e, "adapters", "adapters[%zu].weight must be a number in [-100, 100]",
                        i);
        for (int j = 0; j < p->n_mix; j++)
            if (strcmp(p->mix[j].name, name) == 0)
                return perr(e, "adapters", "adapter '%s' is listed twice", name);
        snprintf(p->mix[p->n_mix].name, sizeof p->mix[0].name, "%s", name);
        p->mix[p->n_mix].weight = (float)w;
        p->n_mix++;
    }
    return 0;
}

/* Fields accepted and their handling. Unknown fields are refused (never ignored). */
static int parse_field(const char *k, json_t *v, gen_params *p, json_t *keep, int max_tokens,
                       parse_error *e)
{
    double d;
    int x;
    if (strcmp(k, "model") == 0) {
        if (json_is_null(v))
            return 0;
        if (!json_is_string(v))
            return perr(e, k, "'model' must be a string");
        p->model = json_string_value(v);
        return 0;
    }
    if (strcmp(k, "prompt") == 0 && !p->chat)
        return parse_prompt(v, p, e);
    if (strcmp(k, "messages") == 0 && p->chat)
        return parse_messages(v, p, keep, e);
    if (strcmp(k, "max_tokens") == 0 || (p->chat && strcmp(k, "max_completion_tokens") == 0)) {
        if (json_is_null(v))
            return 0;
        x = 0;
        if (get_int(v, k, 1, max_tokens, &x, e))
            return -1;
        p->max_tokens = x;
        return 0;
    }
    if (strcmp(k, "temperature") == 0) {
        d = p->sp.temperature;
        if (get_num(v, k, 0, 2, &d, e))
            return -1;
        p->sp.temperature = (float)d;
        return 0;
    }
    if (strcmp(k, "top_p") == 0) {
        d = p->sp.top_p;
        if (get_num(v, k, 0, 1, &d, e))
            return -1;
        if (d <= 0)
            return perr(e, k, "'top_p' must be in (0, 1]");
        p->sp.top_p = (float)d;
        return 0;
    }
    if (strcmp(k, "top_k") == 0) {
        x = p->sp.top_k;
        if (get_int(v, k, -1, 1 << 30, &x, e))
            return -1;
        p->sp.top_k = x < 0 ? 0 : x;   /* vLLM: -1 means off */
        return 0;
    }
    if (strcmp(k, "seed") == 0) {
        if (json_is_null(v))
            return 0;
        if (!json_is_integer(v))
            return perr(e, k, "'seed' must be an integer");
        p->sp.seed = (uint64_t)json_integer_value(v);
        p->seed_given = 1;
        return 0;
    }
    if (strcmp(k, "stop") == 0)
        return parse_stop(v, p, e);
    if (strcmp(k, "stream") == 0)
        return get_bool(v, k, &p->stream, e);
    if (strcmp(k, "stream_options") == 0) {
        if (json_is_null(v))
            return 0;
        const char *ok;
        json_t *f;
        if (!json_is_object(v))
            return perr(e, k, "'stream_options' must be an object");
        json_object_foreach(v, ok, f) {
            if (strcmp(ok, "include_usage") && strcmp(ok, "continuous_usage_stats"))
                return perr(e, k, "stream_options: unknown field '%s'", ok);
        }
        return get_bool(json_object_get(v, "include_usage"), "stream_options.include_usage",
                        &p->include_usage, e);
    }
    if (strcmp(k, "logprobs") == 0) {
        if (json_is_null(v))
            return 0;
        if (p->chat)
            return get_bool(v, k, &p->want_logprobs, e);
        if (get_int(v, k, 0, ENGINE_MAX_LOGPROBS, &p->logprobs, e))
            return -1;
        p->want_logprobs = 1;
        return 0;
    }
    if (strcmp(k, "top_logprobs") == 0 && p->chat)
        return get_int(v, k, 0, ENGINE_MAX_LOGPROBS, &p->logprobs, e);
    if (strcmp(k, "echo") == 0 && !p->chat)
        return get_bool(v, k, &p->echo, e);
    if (strcmp(k, "ignore_eos") == 0)
        return get_bool(v, k, &p->ignore_eos, e);
    if (strcmp(k, "return_tokens_as_token_ids") == 0)
        return get_bool(v, k, &p->tokens_as_ids, e);
    if (strcmp(k, "adapters") == 0)
        return parse_adapters(v, p, e);
    if (strcmp(k, "user") == 0) {
        if (!json_is_string(v) && !json_is_null(v))
            return perr(e, k, "'user' must be a string");
        return 0;
    }
    /* Standard fields accepted only at their neutral value. */
    if (strcmp(k, "n") == 0 || strcmp(k, "best_of") == 0) {
        x = 1;
        if (get_int(v, k, 1, 1 << 20, &x, e))
            return -1;
        if (x != 1)
            return perr(e, k, "'%s' > 1 is not supported; send several requests", k);
        return 0;
    }
    if (strcmp(k, "presence_penalty") == 0 || strcmp(k, "frequency_penalty") == 0 ||
        strcmp(k, "repetition_penalty") == 0) {
        double neutral = k[0] == 'r' ? 1.0 : 0.0;
        d = neutral;
        if (get_num(v, k, -2, 2, &d, e))
            return -1;
        if (d != neutral)
            return perr(e, k, "'%s' is not supported", k);
        return 0;
    }
    if (strcmp(k, "logit_bias") == 0) {
        if (json_is_null(v) || (json_is_object(v) && json_object_size(v) == 0))
            return 0;
        return perr(e, k, "'logit_bias' is not supported");
    }
    if (strcmp(k, "suffix") == 0 && !p->chat) {
        if (json_is_null(v) || (json_is_string(v) && json_string_length(v) == 0))
            return 0;
        return perr(e, k, "'suffix' is not supported");
    }
    if (strcmp(k, "response_format") == 0 && p->chat) {
        const char *t = json_string_value(json_object_get(v, "type"));
        if (json_is_null(v) || (t && strcmp(t, "text") == 0))
            return 0;
        return perr(e, k, "'response_format' other than {\"type\": \"text\"} is not "
                    "supported");
    }
    if (p->chat && (strcmp(k, "tools") == 0 || strcmp(k, "tool_choice") == 0 ||
                    strcmp(k, "functions") == 0 || strcmp(k, "function_call") == 0 ||
                    strcmp(k, "parallel_tool_calls") == 0)) {
        if (json_is_null(v) || (json_is_array(v) && json_array_size(v) == 0) ||
            (json_is_string(v) && strcmp(json_string_value(v), "none") == 0))
            return 0;
        return perr(e, k, "tools and function calling are not supported");
    }
    return perr(e, k, "unknown field '%s'", k);
}

static int parse_request(json_t *root, int chat, int max_tokens, gen_params *p, json_t *keep,
                         parse_error *e)
{
    memset(p, 0, sizeof *p);
    p->chat = chat;
    p->max_tokens = -1;
    p->sp.temperature = 1.0f;   /* OpenAI's default */
    p->sp.top_p = 1.0f;
    if (!json_is_object(root))
        return perr(e, NULL, "the request body must be a JSON object");
    const char *k;
    json_t *v;
    json_object_foreach(root, k, v) {
        if (parse_field(k, v, p, keep, max_tokens, e))
            return -1;
    }
    if (chat && !p->msgs)
        return perr(e, "messages", "'messages' is required");
    if (!chat && !p->prompt_text && !p->prompt_ids)
        return perr(e, "prompt", "'prompt' is required");
    if (p->logprobs && !p->want_logprobs)
        return perr(e, "top_logprobs", "'top_logprobs' needs 'logprobs': true");
    if (p->echo && p->want_logprobs)
        return perr(e, "echo", "'echo' together with 'logprobs' is not supported (lorad does "
                    "not compute prompt logprobs)");
    if (p->include_usage && !p->stream)
        return perr(e, "stream_options", "'stream_options' needs 'stream': true");
    return 0;
}

/* ------------------------------------------------------------------ the job ---------- */

typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;            /* new output, or done */
    int refs;                     /* connection + engine */
    app *a;
    uint64_t engine_id;
    generation *gen;
    engine_token_fn gen_token;    /* generation's own callbacks, wrapped below */
    engine_done_fn gen_done;
    size_t text_final;            /* bytes of the generation's text that are final */
    int n_tokens;
    int done;
    engine_finish reason;
    lr_error err;
    double t_arrival, t_first, t_last;

    /* what the request holds */
    registry_adapter *held[API_MAX_MIX];
    int n_held;
    registry_adapter *alone;      /* held[0] when the request is on it alone at weight 1 */
    int uses_merged;              /* runs on held[0]'s merged W' (registry_use_merged) */
    variant_mix mix;              /* the on-the-fly mix (engine_request.lora points here) */
    char adapter_label[160];      /* "a" / "a:0.5+b:0.5" / "" for the base */
    gen_params p;
    json_t *root;                 /* the request JSON (strings of p point into it) */
    json_t *keep;                 /* strings made while parsing (joined chat contents) */
    int *prompt;
    int n_prompt;
    char *prompt_text;            /* for echo */
    size_t prompt_text_len;
    char id[48];
    long long created;
    const char *model_name;       /* what the response reports as "model" */

    /* connection side, streaming */
    int fd;
    int role_sent, tokens_sent, final_sent;
    size_t text_sent;
    long offset;                  /* text_offset of the next completions token (chars) */
    char *out;
    size_t out_len, out_pos;
} job;

struct api_stream {
    job *j;
};

static void job_unref(job *j)
{
    pthread_mutex_lock(&j->mu);
    int left = --j->refs;
    pthread_mutex_unlock(&j->mu);
    if (left)
        return;
    generation_free(j->gen);
    gen_params_free(&j->p);
    json_decref(j->root);
    json_decref(j->keep);
    free(j->prompt);
    free(j->prompt_text);
    free(j->out);
    pthread_mutex_destroy(&j->mu);
    pthread_cond_destroy(&j->cv);
    free(j);
}

static void release_adapters(job *j, uint64_t tokens)
{
    if (j->uses_merged)
        registry_done_merged(j->a->reg, j->held[0]);
    j->uses_merged = 0;
    j->alone = NULL;
    for (int i = 0; i < j->n_held; i++)
        registry_release(j->a->reg, j->held[i], tokens);
    j->n_held = 0;
}

/* Generation's on_text: called inside gen_token / gen_done, with j->mu held. */
static void on_text(void *user, const char *text, size_t len)
{
    job *j = user;
    (void)text;
    j->text_final += len;
}

/* Engine thread. */
static int on_token(void *user, const engine_token *tok)
{
    job *j = user;
    double now = api_now();
    pthread_mutex_lock(&j->mu);
    int stop = j->gen_token(j->gen, tok);
    j->n_tokens++;
    if (j->a->reg)
        registry_note_tokens(j->a->reg, j->alone, 1);
    if (j->n_tokens == 1)
        j->t_first = now;
    else
        metrics_observe(j->a->met, METRICS_TPOT, now - j->t_last);
    j->t_last = now;
    pthread_cond_broadcast(&j->cv);
    pthread_mutex_unlock(&j->mu);
    if (j->n_tokens == 1)
        metrics_observe(j->a->met, METRICS_TTFT, now - j->t_arrival);
    return stop;
}

/* Engine thread: the last callback of the request. */
static void on_done(void *user, engine_finish reason, const lr_error *err)
{
    job *j = user;
    pthread_mutex_lock(&j->mu);
    j->gen_done(j->gen, reason, err);
    j->reason = generation_finish_reason(j->gen);
    if (j->reason == ENGINE_FINISH_ERROR)
        j->err = *generation_error(j->gen);
    j->done = 1;
    int n = j->n_tokens;
    pthread_cond_broadcast(&j->cv);
    pthread_mutex_unlock(&j->mu);
    if (reason != ENGINE_FINISH_CANCELLED) {
        if (j->n_held == 0)
            metrics_request(j->a->met, j->a->base_id, (uint64_t)j->n_prompt, (uint64_t)n);
        for (int i = 0; i < j->n_held; i++)
            metrics_request(j->a->met, registry_adapter_name(j->held[i]),
                            (uint64_t)j->n_prompt, (uint64_t)n);
    }
    release_adapters(j, (uint64_t)n);
    job_unref(j);
}

/* 1 when the client has hung up (or its socket failed). */
static int peer_gone(int fd)
{
    if (fd < 0)
        return 0;
    struct pollfd pf = {.fd = fd, .events = POLLRDHUP};
    return poll(&pf, 1, 0) > 0 && (pf.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL));
}

/* Waits (j->mu held) up to one slice for news; returns -1 if the client went away
 * meanwhile (the request is then cancelled). */
static int wait_slice(job *j)
{
    struct timespec dl;
    clock_gettime(CLOCK_REALTIME, &dl);
    dl.tv_nsec += WAIT_SLICE_MS * 1000000L;
    if (dl.tv_nsec >= 1000000000L) {
        dl.tv_sec++;
        dl.tv_nsec -= 1000000000L;
    }
    if (pthread_cond_timedwait(&j->cv, &j->mu, &dl) == ETIMEDOUT && peer_gone(j->fd)) {
        engine_cancel(j->a->eng, j->engine_id);
        return -1;
    }
    return 0;
}

/* ---------------------------------------------------------- resolve and submit -------- */

/* Acquires the adapters the request names; fills j->held, j->mix, j->adapter_label and
 * j->model_name. On error fills out and returns -1 (held references released). */
static int resolve_adapters(app *a, job *j, api_reply *out)
{
    gen_params *p = &j->p;
    mix_member single;
    const mix_member *want = p->mix;
    int n = p->n_mix;
    j->model_name = a->base_id;
    if (p->model && strcmp(p->model, a->base_id) != 0) {
        if (n) {
            api_error(out, 400, "model", NULL, "with 'adapters', 'model' must be the base "
                      "model '%s' (or left out)", a->base_id);
            return -1;
        }
        snprintf(single.name, sizeof single.name, "%.*s", REGISTRY_NAME_MAX, p->model);
        single.weight = 1.0f;
        if (strlen(p->model) > REGISTRY_NAME_MAX) {
            api_error(out, 404, "model", "model_not_found", "The model '%.200s' does not "
                      "exist.", p->model);
            return -1;
        }
        want = &single;
        n = 1;
        j->model_name = p->model;
    }
    size_t lab = 0;
    for (int i = 0; i < n && lab < sizeof j->adapter_label; i++)
        lab += (size_t)snprintf(j->adapter_label + lab, sizeof j->adapter_label - lab,
                                want == &single ? "%s%s" : "%s%s:%g", i ? "+" : "",
                                want[i].name, (double)want[i].weight);
    snprintf(out->adapter, sizeof out->adapter, "%s", j->adapter_label);
    for (int i = 0; i < n; i++) {
        lr_error err = {0};
        registry_adapter *ad = registry_acquire(a->reg, want[i].name, &err);
        if (!ad) {
            release_adapters(j, 0);
            if (err.code == LR_ENOTFOUND)
                api_error(out, 404, n == 1 && want == &single ? "model" : "adapters",
                          "model_not_found", "The model '%s' does not exist.", want[i].name);
            else if (err.code == LR_EINVAL)
                api_error(out, 422, want == &single ? "model" : "adapters", "adapter_invalid",
                          "%s", err.msg);
            else
                api_error(out, 500, NULL, NULL, "%s", err.msg);
            return -1;
        }
        j->held[j->n_held++] = ad;
        j->mix.t[i].w = registry_adapter_weights(ad);
        j->mix.t[i].weight = want[i].weight;
    }
    j->mix.n = n;
    return 0;
}

/* Token ids of the prompt (text tokenized, chat rendered). */
static int build_prompt(app *a, job *j, api_reply *out)
{
    gen_params *p = &j->p;
    lr_error err = {0};
    if (p->prompt_ids) {
        j->prompt = p->prompt_ids;
        p->prompt_ids = NULL;
        j->n_prompt = p->n_prompt_ids;
        for (int i = 0; i < j->n_prompt; i++)
            if (j->prompt[i] >= a->m->cfg.vocab_size) {
                api_error(out, 400, "prompt", NULL, "prompt token %d at index %d is out of "
                          "range [0, %d)", j->prompt[i], i, a->m->cfg.vocab_size);
                return -1;
            }
        if (p->echo && a->tok && tokenizer_decode(a->tok, j->prompt, (size_t)j->n_prompt, 0,
                                                  &j->prompt_text, &j->prompt_text_len, &err)) {
            api_error(out, 400, "prompt", NULL, "%s", err.msg);
            return -1;
        }
        return 0;
    }
    if (!a->tok) {
        if (p->chat)
            api_error(out, 400, "messages", NULL, "this model has no tokenizer.json, so chat "
                      "is unavailable; use /v1/completions with 'prompt' as token ids");
        else
            api_error(out, 400, "prompt", NULL, "this model has no tokenizer.json: send "
                      "'prompt' as a list of token ids");
        return -1;
    }
    const char *text = p->prompt_text;
    char *rendered = NULL;
    size_t len = text ? strlen(text) : 0;
    if (p->chat) {
        if (!a->chat) {
            api_error(out, 400, "messages", NULL, "%s", a->chat_error);
            return -1;
        }
        if (chat_template_render(a->chat, p->msgs, p->n_msgs, 1, &rendered, &len, &err)) {
            api_error(out, err.code == LR_ENOMEM ? 500 : 400, "messages", NULL,
                      "chat template: %s", err.msg);
            return -1;
        }
        text = rendered;
    }
    size_t n = 0;
    /* A rendered chat template already holds its special tokens (transformers'
     * apply_chat_template does not add them again). */
    int rc = tokenizer_encode(a->tok, text, len, !p->chat, &j->prompt, &n, &err);
    if (rc == 0 && p->echo) {
        j->prompt_text = strdup(text);
        j->prompt_text_len = len;
        if (!j->prompt_text)
            rc = lr_error_set(&err, LR_ENOMEM, "out of memory");
    }
    free(rendered);
    if (rc) {
        api_error(out, rc == LR_ENOMEM ? 500 : 400, p->chat ? "messages" : "prompt", NULL,
                  "%s", err.msg);
        return -1;
    }
    j->n_prompt = (int)n;
    if (n == 0) {
        api_error(out, 400, "prompt", NULL, "the prompt is empty (no tokens)");
        return -1;
    }
    return 0;
}

static uint64_t random_seed(void)
{
    uint64_t s = 0;
    if (getrandom(&s, sizeof s, 0) != (ssize_t)sizeof s)
        s = (uint64_t)time(NULL) ^ (uint64_t)(uintptr_t)&s;
    return s;
}

/* Parses, resolves, tokenizes and submits. Returns the job (one reference for the caller,
 * one for the engine), or NULL with out filled. */
static job *start_job(app *a, const api_request *rq, int chat, api_reply *out)
{
    job *j = calloc(1, sizeof *j);
    if (!j) {
        api_error(out, 500, NULL, NULL, "out of memory");
        return NULL;
    }
    pthread_mutex_init(&j->mu, NULL);
    pthread_cond_init(&j->cv, NULL);
    j->refs = 1;
    j->a = a;
    j->fd = rq->fd;
    j->t_arrival = rq->t_arrival;
    j->created = (long long)time(NULL);
    uint64_t rnd = random_seed();
    snprintf(j->id, sizeof j->id, "%s-%016" PRIx64, chat ? "chatcmpl" : "cmpl", rnd);

    json_error_t je;
    j->root = json_loadb(rq->body, rq->len, JSON_REJECT_DUPLICATES, &je);
    if (!j->root) {
        api_error(out, 400, NULL, NULL, "the body is not valid JSON: %s (line %d, column %d)",
                  je.text, je.line, je.column);
        goto fail;
    }
    parse_error pe = {0};
    if (!(j->keep = json_array())) {
        api_error(out, 500, NULL, NULL, "out of memory");
        goto fail;
    }
    if (parse_request(j->root, chat, a->opt.max_tokens, &j->p, j->keep, &pe)) {
        api_error(out, 400, pe.param[0] ? pe.param : NULL, NULL, "%s", pe.msg);
        goto fail;
    }
    if (resolve_adapters(a, j, out) || build_prompt(a, j, out))
        goto fail;

    int ctx = engine_ctx(a->eng);
    gen_params *p = &j->p;
    if (j->n_prompt >= ctx) {
        api_error(out, 400, p->chat ? "messages" : "prompt", "context_length_exceeded",
                  "This model's maximum context length is %d tokens. However, your prompt "
                  "has %d tokens.", ctx, j->n_prompt);
        goto fail;
    }
    int max_tokens = p->max_tokens;
    if (max_tokens < 0) {
        max_tokens = ctx - j->n_prompt;
        if (max_tokens > a->opt.max_tokens)
            max_tokens = a->opt.max_tokens;
    } else if (j->n_prompt + max_tokens > ctx) {
        api_error(out, 400, "max_tokens", "context_length_exceeded",
                  "This model's maximum context length is %d tokens. However, you requested "
                  "%d tokens (%d in the prompt, %d for the completion). Please reduce the "
                  "prompt or max_tokens.", ctx, j->n_prompt + max_tokens, j->n_prompt,
                  max_tokens);
        goto fail;
    }
    if (!p->seed_given)
        p->sp.seed = random_seed();

    generation_options go = {.tok = a->tok, .n_stop = p->n_stop, .on_text = on_text,
                             .user = j};
    memcpy(go.stop, p->stop, sizeof p->stop);
    lr_error err = {0};
    if (!(j->gen = generation_new(&go, &err))) {
        api_error(out, err.code == LR_ENOMEM ? 500 : 400, "stop", NULL, "%s", err.msg);
        goto fail;
    }
    engine_request req = {
        .prompt = j->prompt, .n_prompt = j->n_prompt, .max_tokens = max_tokens,
        .sampling = p->sp, .logprobs = p->want_logprobs ? p->logprobs : 0,
        .no_logprob = !p->want_logprobs, .ignore_eos = p->ignore_eos};
    generation_attach(j->gen, &req);
    j->gen_token = req.on_token;
    j->gen_done = req.on_done;
    req.on_token = on_token;
    req.on_done = on_done;
    req.user = j;
    if (j->mix.n == 1 && j->mix.t[0].weight == 1.0f) {
        j->alone = j->held[0];
        req.merged = registry_use_merged(a->reg, j->held[0]);
        j->uses_merged = req.merged != NULL;
        req.merged_alone = j->uses_merged;
    }
    if (j->mix.n)
        req.lora = &j->mix;
    j->refs = 2;   /* the engine's, dropped in on_done */
    int rc = engine_submit(a->eng, &req, &j->engine_id, &err);
    if (rc) {
        j->refs = 1;
        if (rc == LR_EBUSY) {
            api_error(out, 429, NULL, "server_busy", "%s", err.msg);
            out->retry_after = 1;
        } else {
            api_error(out, rc == LR_ENOMEM ? 500 : 400, NULL, NULL, "%s", err.msg);
        }
        goto fail;
    }
    return j;
fail:
    release_adapters(j, 0);
    job_unref(j);
    return NULL;
}

/* ---------------------------------------------------------------- responses ---------- */

static const char *finish_name(engine_finish r)
{
    return r == ENGINE_FINISH_LENGTH ? "length" : "stop";
}

/* The text of one token as OpenAI's logprobs show it (malloc'd). */
static char *token_string(const app *a, const gen_params *p, int id, size_t *len)
{
    char *s = NULL;
    if (!p->tokens_as_ids && a->tok && tokenizer_decode(a->tok, &id, 1, 0, &s, len, NULL) == 0)
        return s;
    s = malloc(32);
    if (s)
        *len = (size_t)snprintf(s, 32, "token_id:%d", id);
    return s;
}

static size_t utf8_chars(const char *s, size_t n)
{
    size_t c = 0;
    for (size_t i = 0; i < n; i++)
        c += ((unsigned char)s[i] & 0xC0) != 0x80;
    return c;
}

static json_t *bytes_of(const char *s, size_t n)
{
    json_t *b = json_array();
    for (size_t i = 0; b && i < n; i++)
        json_array_append_new(b, json_integer((unsigned char)s[i]));
    return b;
}

/* Completions' legacy logprobs for tokens [from, to); *offset counts characters. */
static json_t *completion_logprobs(const app *a, job *j, int from, int to, long *offset)
{
    int n;
    const engine_token *t = generation_tokens(j->gen, &n);
    json_t *toks = json_array(), *lps = json_array(), *tops = json_array(),
           *offs = json_array();
    for (int i = from; i < to && i < n; i++) {
        size_t len = 0;
        char *s = token_string(a, &j->p, t[i].id, &len);
        json_array_append_new(toks, json_stringn(s ? s : "", s ? len : 0));
        json_array_append_new(lps, json_real(t[i].logprob));
        json_array_append_new(offs, json_integer(*offset));
        *offset += (long)utf8_chars(s ? s : "", s ? len : 0);
        json_t *top = json_object();
        /* the sampled token first, as vLLM, then the most likely ones */
        json_object_set_new(top, s ? s : "", json_real(t[i].logprob));
        free(s);
        for (int k = 0; k < t[i].n_top; k++) {
            s = token_string(a, &j->p, t[i].top_ids[k], &len);
            if (s && !json_object_get(top, s))
                json_object_set_new(top, s, json_real(t[i].top_logprobs[k]));
            free(s);
        }
        json_array_append_new(tops, top);
    }
    return json_pack("{s:o, s:o, s:o, s:o}", "tokens", toks, "token_logprobs", lps,
                     "top_logprobs", tops, "text_offset", offs);
}

static json_t *chat_entry(const app *a, const gen_params *p, int id, float lp)
{
    size_t len = 0;
    char *s = token_string(a, p, id, &len);
    json_t *e = json_pack("{s:s%, s:f, s:o}", "token", s ? s : "", s ? len : 0, "logprob",
                          (double)lp, "bytes", bytes_of(s ? s : "", s ? len : 0));
    free(s);
    return e;
}

/* Chat logprobs {"content": [...]} for tokens [from, to). */
static json_t *chat_logprobs(const app *a, job *j, int from, int to)
{
    int n;
    const engine_token *t = generation_tokens(j->gen, &n);
    json_t *content = json_array();
    for (int i = from; i < to && i < n; i++) {
        json_t *e = chat_entry(a, &j->p, t[i].id, t[i].logprob);
        json_t *top = json_array();
        for (int k = 0; k < t[i].n_top && k < j->p.logprobs; k++)
            json_array_append_new(top, chat_entry(a, &j->p, t[i].top_ids[k],
                                                  t[i].top_logprobs[k]));
        json_object_set_new(e, "top_logprobs", top);
        json_array_append_new(content, e);
    }
    return json_pack("{s:o}", "content", content);
}

static json_t *usage_of(const job *j)
{
    return json_pack("{s:i, s:i, s:i}", "prompt_tokens", j->n_prompt, "completion_tokens",
                     j->n_tokens, "total_tokens", j->n_prompt + j->n_tokens);
}

static json_t *envelope(const job *j, const char *object)
{
    return json_pack("{s:s, s:s, s:I, s:s}", "id", j->id, "object", object, "created",
                     (json_int_t)j->created, "model", j->model_name);
}

static void reply_json(api_reply *out, int status, json_t *o)
{
    free(out->body);
    out->body = o ? json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(9)) : NULL;
    json_decref(o);
    if (!out->body) {
        api_error(out, 500, NULL, NULL, "out of memory formatting the response");
        return;
    }
    out->len = strlen(out->body);
    out->status = status;
    out->content_type = "application/json";
}

/* The whole response of a finished non-streaming request (j->mu held, j->done). */
static void respond_whole(app *a, job *j, api_reply *out)
{
    if (j->reason == ENGINE_FINISH_ERROR) {
        api_error(out, 500, NULL, "generation_failed", "%s", j->err.msg);
        return;
    }
    size_t tlen;
    const char *text = generation_text(j->gen, &tlen);
    json_t *choice = json_pack("{s:i}", "index", 0);
    if (j->p.chat) {
        json_object_set_new(choice, "message", json_pack("{s:s, s:s%}", "role", "assistant",
                                                         "content", text, tlen));
        json_object_set_new(choice, "logprobs", j->p.want_logprobs
                                                    ? chat_logprobs(a, j, 0, j->n_tokens)
                                                    : json_null());
    } else {
        json_t *full = json_stringn(text, tlen);
        if (j->p.echo && j->prompt_text) {
            json_decref(full);
            char *both = malloc(j->prompt_text_len + tlen + 1);
            if (both) {
                memcpy(both, j->prompt_text, j->prompt_text_len);
                memcpy(both + j->prompt_text_len, text, tlen);
            }
            full = both ? json_stringn(both, j->prompt_text_len + tlen) : NULL;
            free(both);
        }
        json_object_set_new(choice, "text", full);
        long offset = 0;
        json_object_set_new(choice, "logprobs", j->p.want_logprobs
                                                    ? completion_logprobs(a, j, 0, j->n_tokens,
                                                                          &offset)
                                                    : json_null());
    }
    json_object_set_new(choice, "finish_reason", json_string(finish_name(j->reason)));
    json_t *o = envelope(j, j->p.chat ? "chat.completion" : "text_completion");
    json_object_set_new(o, "choices", json_pack("[o]", choice));
    json_object_set_new(o, "usage", usage_of(j));
    reply_json(out, 200, o);
}

/* ----------------------------------------------------------------- streaming ---------- */

static int out_append(job *j, const char *s, size_t n)
{
    if (j->out_pos == j->out_len)
        j->out_pos = j->out_len = 0;
    char *t = realloc(j->out, j->out_len + n);
    if (!t)
        return -1;
    memcpy(t + j->out_len, s, n);
    j->out = t;
    j->out_len += n;
    return 0;
}

/* Appends one SSE event "data: <json>\n\n" (steals o). */
static int sse_event(job *j, json_t *o)
{
    char *s = o ? json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(9)) : NULL;
    json_decref(o);
    if (!s)
        return -1;
    int rc = out_append(j, "data: ", 6) || out_append(j, s, strlen(s)) ||
             out_append(j, "\n\n", 2);
    free(s);
    return rc;
}

/* One chunk: delta text (may be empty), logprobs of tokens [from, to), finish reason or
 * NULL. */
static int sse_chunk(app *a, job *j, const char *text, size_t n, int from, int to,
                     const char *finish, long *offset)
{
    json_t *choice = json_pack("{s:i}", "index", 0);
    if (j->p.chat) {
        json_t *delta = json_object();
        if (!j->role_sent) {
            json_object_set_new(delta, "role", json_string("assistant"));
            j->role_sent = 1;
        }
        if (n || !finish)
            json_object_set_new(delta, "content", json_stringn(text, n));
        json_object_set_new(choice, "delta", delta);
        json_object_set_new(choice, "logprobs", j->p.want_logprobs && to > from
                                                    ? chat_logprobs(a, j, from, to)
                                                    : json_null());
    } else {
        json_object_set_new(choice, "text", json_stringn(text, n));
        json_object_set_new(choice, "logprobs", j->p.want_logprobs && to > from
                                                    ? completion_logprobs(a, j, from, to,
                                                                          offset)
                                                    : json_null());
    }
    json_object_set_new(choice, "finish_reason", finish ? json_string(finish) : json_null());
    json_t *o = envelope(j, j->p.chat ? "chat.completion.chunk" : "text_completion");
    json_object_set_new(o, "choices", json_pack("[o]", choice));
    if (j->p.include_usage)
        json_object_set_new(o, "usage", json_null());
    return sse_event(j, o);
}

/* Whether tokens alone (no new text) make a chunk: when they carry logprobs, or when
 * there is no tokenizer and so never any text. */
static int tokens_are_news(const job *j)
{
    return (j->p.want_logprobs || !j->a->tok) && j->n_tokens > j->tokens_sent;
}

/* Formats what is new since the last call (j->mu held). */
static int stream_news(app *a, job *j)
{
    size_t tlen;
    const char *text = generation_text(j->gen, &tlen);
    size_t upto = j->text_final < tlen ? j->text_final : tlen;
    if (j->done)
        upto = tlen;
    int rc = 0;
    if (!j->role_sent && j->p.chat)
        rc |= sse_chunk(a, j, "", 0, 0, 0, NULL, &j->offset);
    if (!j->role_sent && !j->p.chat) {
        j->role_sent = 1;
        if (j->p.echo && j->prompt_text)
            rc |= sse_chunk(a, j, j->prompt_text, j->prompt_text_len, 0, 0, NULL, &j->offset);
    }
    int to = j->n_tokens;
    if (j->done && j->reason == ENGINE_FINISH_ERROR) {
        if (upto > j->text_sent || tokens_are_news(j))
            rc |= sse_chunk(a, j, text + j->text_sent, upto - j->text_sent, j->tokens_sent,
                            to, NULL, &j->offset);
        json_t *e = json_pack("{s:{s:s, s:s, s:n, s:s}}", "error", "message", j->err.msg,
                              "type", "server_error", "param", "code", "generation_failed");
        rc |= sse_event(j, e);
    } else if (j->done) {
        rc |= sse_chunk(a, j, text + j->text_sent, upto - j->text_sent, j->tokens_sent, to,
                        j->reason == ENGINE_FINISH_CANCELLED ? "abort" : finish_name(j->reason),
                        &j->offset);
        if (j->p.include_usage) {
            json_t *o = envelope(j, j->p.chat ? "chat.completion.chunk" : "text_completion");
            json_object_set_new(o, "choices", json_array());
            json_object_set_new(o, "usage", usage_of(j));
            rc |= sse_event(j, o);
        }
    } else if (upto > j->text_sent || tokens_are_news(j)) {
        rc |= sse_chunk(a, j, text + j->text_sent, upto - j->text_sent, j->tokens_sent, to,
                        NULL, &j->offset);
    }
    j->text_sent = upto;
    j->tokens_sent = to;
    if (j->done) {
        rc |= out_append(j, "data: [DONE]\n\n", 14);
        j->final_sent = 1;
    }
    return rc;
}

static int has_news(const job *j)
{
    return j->done || j->text_final > j->text_sent || tokens_are_news(j) ||
           (j->p.chat && !j->role_sent);
}

ssize_t api_stream_read(api_stream *s, char *buf, size_t max)
{
    job *j = s->j;
    for (;;) {
        if (j->out_pos < j->out_len) {
            size_t n = j->out_len - j->out_pos < max ? j->out_len - j->out_pos : max;
            memcpy(buf, j->out + j->out_pos, n);
            j->out_pos += n;
            return (ssize_t)n;
        }
        if (j->final_sent)
            return 0;
        pthread_mutex_lock(&j->mu);
        while (!has_news(j))
            if (wait_slice(j)) {
                pthread_mutex_unlock(&j->mu);
                return -1;
            }
        int rc = stream_news(j->a, j);
        pthread_mutex_unlock(&j->mu);
        if (rc) {
            engine_cancel(j->a->eng, j->engine_id);
            return -1;
        }
    }
}

static void fill_counts(job *j, api_reply *r)
{
    if (!r)
        return;
    pthread_mutex_lock(&j->mu);
    r->prompt_tokens = j->n_prompt;
    r->output_tokens = j->n_tokens;
    pthread_mutex_unlock(&j->mu);
}

void api_stream_free(api_stream *s, api_reply *reply)
{
    if (!s)
        return;
    job *j = s->j;
    pthread_mutex_lock(&j->mu);
    int done = j->done;
    pthread_mutex_unlock(&j->mu);
    if (!done)
        engine_cancel(j->a->eng, j->engine_id);
    fill_counts(j, reply);
    job_unref(j);
    free(s);
}

/* ------------------------------------------------------------------ handlers ---------- */

void api_completions(app *a, const api_request *rq, int chat, api_reply *out)
{
    job *j = start_job(a, rq, chat, out);
    if (!j)
        return;
    if (j->p.stream) {
        api_stream *s = malloc(sizeof *s);
        if (!s) {
            engine_cancel(a->eng, j->engine_id);
            job_unref(j);
            api_error(out, 500, NULL, NULL, "out of memory");
            return;
        }
        s->j = j;
        out->stream = s;
        out->status = 200;
        out->content_type = "text/event-stream";
        return;
    }
    pthread_mutex_lock(&j->mu);
    int gone = 0;
    while (!j->done)
        if (wait_slice(j))
            gone = 1;   /* cancelled; on_done follows within a step */
    if (gone)
        out->status = 499;   /* nginx's "client closed request": nothing is sent */
    else
        respond_whole(a, j, out);
    pthread_mutex_unlock(&j->mu);
    fill_counts(j, out);
    job_unref(j);
}

static json_t *base_entry(app *a)
{
    return json_pack("{s:s, s:s, s:I, s:s, s:s, s:n, s:i}", "id", a->base_id, "object",
                     "model", "created", (json_int_t)a->started, "owned_by", "lorad", "root",
                     a->opt.model_dir, "parent", "max_model_len", engine_ctx(a->eng));
}

static json_t *adapter_entry(app *a, const registry_info *info)
{
    static const char *const states[] = {"on_disk", "loading", "loaded", "failed"};
    json_t *m = json_pack("{s:s, s:s, s:I, s:s, s:s, s:s, s:i, s:s}", "id", info->name,
                          "object", "model", "created", (json_int_t)a->started, "owned_by",
                          "lorad", "root", info->name, "parent", a->base_id, "max_model_len",
                          engine_ctx(a->eng), "state", states[info->state]);
    if (m && info->state == REGISTRY_FAILED)
        json_object_set_new(m, "error", json_string(info->reason));
    return m;
}

void api_models(app *a, api_reply *out)
{
    json_t *data = json_array();
    json_array_append_new(data, base_entry(a));
    int n = 0;
    registry_info *info = registry_list(a->reg, &n);
    for (int i = 0; i < n; i++)
        json_array_append_new(data, adapter_entry(a, &info[i]));
    free(info);
    reply_json(out, 200, json_pack("{s:s, s:o}", "object", "list", "data", data));
}

void api_model(app *a, const char *id, api_reply *out)
{
    if (strcmp(id, a->base_id) == 0) {
        reply_json(out, 200, base_entry(a));
        return;
    }
    int n = 0;
    registry_info *info = registry_list(a->reg, &n);
    for (int i = 0; i < n; i++)
        if (strcmp(info[i].name, id) == 0) {
            reply_json(out, 200, adapter_entry(a, &info[i]));
            free(info);
            return;
        }
    free(info);
    api_error(out, 404, "model", "model_not_found", "The model '%.200s' does not exist.", id);
}
