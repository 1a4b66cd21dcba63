/* fuzz_api_request: a completions or chat request body (first byte: which) through the
 * daemon's parser into the typed request (server/api.c's parse_request, included here so
 * that its static types are visible; the harness defines the file's public functions in
 * place of liblorad's api.o). Checks: a refusal has a message and names a field the body
 * has (or a required one), and its OpenAI error JSON carries both; an accepted request
 * passes an independent re-validation of every field against the body — only known fields,
 * every value in its documented range and equal to what was sent, sampling parameters the
 * sampler accepts, messages and prompts complete, mixes with distinct names. */
#include "server/api.c"

#include "fuzz/fuzzutil.h"

static const char *const common_keys[] = {
    "model", "max_tokens", "temperature", "top_p", "top_k", "seed", "stop", "stream",
    "stream_options", "logprobs", "ignore_eos", "return_tokens_as_token_ids", "adapters",
    "user", "n", "best_of", "presence_penalty", "frequency_penalty", "repetition_penalty",
    "logit_bias", NULL};
static const char *const completion_keys[] = {"prompt", "echo", "suffix", NULL};
static const char *const chat_keys[] = {
    "messages", "max_completion_tokens", "top_logprobs", "response_format", "tools",
    "tool_choice", "functions", "function_call", "parallel_tool_calls", NULL};

static int in_list(const char *k, const char *const *list)
{
    for (; *list; list++)
        if (strcmp(k, *list) == 0)
            return 1;
    return 0;
}

static int known(const char *k, int chat)
{
    return in_list(k, common_keys) || in_list(k, chat ? chat_keys : completion_keys);
}

static json_t *field(json_t *root, const char *k)
{
    json_t *v = json_object_get(root, k);
    return json_is_null(v) ? NULL : v;
}

static void check_number(json_t *root, const char *k, float got, double lo, double hi,
                         double dflt)
{
    json_t *v = field(root, k);
    double want = v ? json_number_value(v) : dflt;
    FUZZ_CHECK(!v || json_is_number(v), "'%s' accepted as a non-number", k);
    FUZZ_CHECK(want >= lo && want <= hi && got == (float)want, "'%s': sent %g, parsed %g",
               k, want, (double)got);
}

static void check_accepted(json_t *root, int chat, const gen_params *p)
{
    const char *k;
    json_t *v;
    json_object_foreach(root, k, v)
        FUZZ_CHECK(known(k, chat), "unknown field '%s' accepted", k);

    v = field(root, "model");
    FUZZ_CHECK(v ? json_is_string(v) && p->model && !strcmp(p->model, json_string_value(v))
                 : p->model == NULL, "model");

    if (chat) {
        v = json_object_get(root, "messages");
        FUZZ_CHECK(json_is_array(v) && p->n_msgs == (int)json_array_size(v) && p->n_msgs >= 1 &&
                   p->n_msgs <= API_MAX_MESSAGES, "%d messages", p->n_msgs);
        for (int i = 0; i < p->n_msgs; i++) {
            json_t *m = json_array_get(v, (size_t)i), *c = json_object_get(m, "content");
            const char *role = json_string_value(json_object_get(m, "role"));
            FUZZ_CHECK(role && p->msgs[i].role && (!strcmp(p->msgs[i].role, role) ||
                       (!strcmp(role, "developer") && !strcmp(p->msgs[i].role, "system"))),
                       "message %d role", i);
            FUZZ_CHECK(!strcmp(p->msgs[i].role, "system") || !strcmp(p->msgs[i].role, "user") ||
                       !strcmp(p->msgs[i].role, "assistant"), "role '%s'", p->msgs[i].role);
            const char *got = p->msgs[i].content;
            FUZZ_CHECK(got != NULL, "message %d has no content", i);
            if (json_is_string(c)) {
                FUZZ_CHECK(!strcmp(got, json_string_value(c)), "message %d content", i);
            } else if (json_is_array(c)) {
                size_t off = 0, j;
                json_t *part;
                json_array_foreach(c, j, part) {
                    const char *t = json_string_value(json_object_get(part, "text"));
                    size_t tl = json_string_length(json_object_get(part, "text"));
                    FUZZ_CHECK(t && !strncmp(got + off, t, tl), "message %d part %zu", i, j);
                    off += tl;
                }
                FUZZ_CHECK(got[off] == '\0', "message %d: joined parts too long", i);
            } else {
                FUZZ_CHECK(json_is_null(c) && got[0] == '\0', "message %d content type", i);
            }
        }
        FUZZ_CHECK(!p->prompt_text && !p->prompt_ids, "chat with a prompt");
    } else {
        FUZZ_CHECK(!p->prompt_text != !p->prompt_ids, "prompt text and ids");
        for (int i = 0; i < p->n_prompt_ids; i++)
            FUZZ_CHECK(p->prompt_ids[i] >= 0, "prompt id %d", p->prompt_ids[i]);
        FUZZ_CHECK(!p->prompt_ids || p->n_prompt_ids >= 1, "empty id prompt");
        FUZZ_CHECK(!p->msgs, "completion with messages");
    }

    json_t *mt = field(root, "max_tokens");
    if (chat && field(root, "max_completion_tokens"))
        mt = mt ? mt : field(root, "max_completion_tokens");
    if (!mt && !(chat && field(root, "max_completion_tokens")))
        FUZZ_CHECK(p->max_tokens == -1, "max_tokens %d, none sent", p->max_tokens);
    else
        FUZZ_CHECK(p->max_tokens >= 1 && p->max_tokens <= 16, "max_tokens %d", p->max_tokens);

    lr_error err = {0};
    FUZZ_CHECK(sampler_params_check(&p->sp, &err) == 0, "accepted sampling the sampler "
               "refuses: %s", err.msg);
    check_number(root, "temperature", p->sp.temperature, 0, 2, 1.0);
    check_number(root, "top_p", p->sp.top_p, 1e-300, 1, 1.0);
    v = field(root, "top_k");
    FUZZ_CHECK(v ? p->sp.top_k == (json_number_value(v) < 0 ? 0 : (int)json_number_value(v))
                 : p->sp.top_k == 0, "top_k %d", p->sp.top_k);
    v = field(root, "seed");
    FUZZ_CHECK(v ? json_is_integer(v) && p->seed_given &&
                   p->sp.seed == (uint64_t)json_integer_value(v) : !p->seed_given, "seed");

    FUZZ_CHECK(p->n_stop >= 0 && p->n_stop <= GENERATION_MAX_STOP, "%d stop strings",
               p->n_stop);
    for (int i = 0; i < p->n_stop; i++)
        FUZZ_CHECK(p->stop[i] && p->stop[i][0], "stop string %d empty", i);
    FUZZ_CHECK(p->logprobs >= 0 && p->logprobs <= ENGINE_MAX_LOGPROBS, "logprobs %d",
               p->logprobs);
    FUZZ_CHECK(!p->logprobs || p->want_logprobs, "top_logprobs without logprobs");
    FUZZ_CHECK(!p->include_usage || p->stream, "include_usage without stream");
    FUZZ_CHECK(!(p->echo && p->want_logprobs), "echo with logprobs");
    FUZZ_CHECK(!p->echo || !chat, "echo in chat");

    FUZZ_CHECK(p->n_mix >= 0 && p->n_mix <= API_MAX_MIX, "%d adapters", p->n_mix);
    for (int i = 0; i < p->n_mix; i++) {
        FUZZ_CHECK(p->mix[i].name[0] && strlen(p->mix[i].name) <= REGISTRY_NAME_MAX,
                   "adapter %d name", i);
        FUZZ_CHECK(isfinite(p->mix[i].weight) && fabsf(p->mix[i].weight) <= 100,
                   "adapter %d weight %g", i, (double)p->mix[i].weight);
        for (int j = 0; j < i; j++)
            FUZZ_CHECK(strcmp(p->mix[i].name, p->mix[j].name), "adapter '%s' twice",
                       p->mix[i].name);
    }
    static const char *const one[] = {"n", "best_of"};
    for (int i = 0; i < 2; i++)
        FUZZ_CHECK(!field(root, one[i]) || json_number_value(field(root, one[i])) == 1,
                   "'%s' other than 1 accepted", one[i]);
    static const char *const pen[] = {"presence_penalty", "frequency_penalty"};
    for (int i = 0; i < 2; i++)
        FUZZ_CHECK(!field(root, pen[i]) || json_number_value(field(root, pen[i])) == 0,
                   "'%s' other than 0 accepted", pen[i]);
    FUZZ_CHECK(!field(root, "repetition_penalty") ||
               json_number_value(field(root, "repetition_penalty")) == 1,
               "repetition_penalty other than 1 accepted");
}

static void check_refused(json_t *root, int chat, const parse_error *pe)
{
    FUZZ_CHECK(pe->msg[0], "refused without a message");
    char par[sizeof pe->param];
    memcpy(par, pe->param, sizeof par);
    lr_text_tidy(par);
    int cut = 0;   /* a long field name is cut to fit parse_error.param */
    const char *k;
    json_t *v;
    json_object_foreach(root, k, v)
        cut |= strlen(pe->param) == sizeof pe->param - 1 &&
               !strncmp(k, pe->param, sizeof pe->param - 1);
    if (pe->param[0])
        FUZZ_CHECK(cut || json_object_get(root, pe->param) || !strcmp(pe->param, "messages") ||
                   !strcmp(pe->param, "prompt") || !strcmp(pe->param, "top_logprobs") ||
                   !strcmp(pe->param, "stream_options.include_usage"),
                   "param '%s' is not a field of the request", pe->param);
    (void)chat;
    api_reply out = {0};
    api_error(&out, 400, pe->param[0] ? pe->param : NULL, NULL, "%s", pe->msg);
    json_t *e = json_loadb(out.body, out.len, 0, NULL);
    json_t *err = json_object_get(e, "error");
    char msg[sizeof pe->msg];
    memcpy(msg, pe->msg, sizeof msg);
    lr_text_tidy(msg);
    FUZZ_CHECK(out.status == 400 && json_is_object(err) &&
               !strcmp(json_string_value(json_object_get(err, "message")), msg),
               "error reply '%s' for '%s'", out.body, pe->msg);
    json_t *param = json_object_get(err, "param");
    FUZZ_CHECK(pe->param[0] ? json_is_string(param) && !strcmp(json_string_value(param), par)
                            : json_is_null(param), "error param");
    json_decref(e);
    free(out.body);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    log_level = LOG_LEVEL_ERROR;
    if (size < 1)
        return 0;
    int chat = data[0] & 1;
    json_error_t je;
    json_t *root = json_loadb((const char *)data + 1, size - 1, JSON_REJECT_DUPLICATES, &je);
    if (!root)
        return 0;   /* start_job answers 400 "not valid JSON" before parsing */
    json_t *keep = json_array();
    gen_params p;
    parse_error pe = {0};
    if (parse_request(root, chat, 16, &p, keep, &pe) == 0)
        check_accepted(root, chat, &p);
    else
        check_refused(root, chat, &pe);
    gen_params_free(&p);
    json_decref(keep);
    json_decref(root);
    return 0;
}
