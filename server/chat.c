/* chat: the prompt text of an OpenAI conversation, rendered with the model's chat template on
 * lorad's Jinja interpreter with the variables transformers' apply_chat_template passes. */
#include "server/chat.h"

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "server/jinja.h"

/* Built-in templates: the real sources, byte for byte, of (in order) teknium/OpenHermes-2.5-
 * Mistral-7B (plain ChatML), meta-llama/Meta-Llama-3-8B-Instruct, meta-llama/Llama-2-7b-chat-hf
 * and mistralai/Mistral-7B-Instruct-v0.2. tests/fixtures/chat/templates/ holds the same files;
 * tests/test_chat.c checks that each built-in renders every golden of its file identically. */
static const char CHATML[] =
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content']"
    " + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant"
    "\\n' }}{% endif %}";

static const char LLAMA3[] =
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|star"
    "t_header_id|>' + message['role'] + '<|end_header_id|>\n"
    "\n"
    "'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_"
    "token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|st"
    "art_header_id|>assistant<|end_header_id|>\n"
    "\n"
    "' }}{% endif %}";

static const char LLAMA2[] =
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_"
    "message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set system"
    "_message = false %}{% endif %}{% for message in loop_messages %}{% if (message['role'] == 'u"
    "ser') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user"
    "/assistant/user/assistant/...') }}{% endif %}{% if loop.index0 == 0 and system_message != fa"
    "lse %}{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['conten"
    "t'] %}{% else %}{% set content = message['content'] %}{% endif %}{% if message['role'] == 'u"
    "ser' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] == "
    "'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}";

static const char MISTRAL[] =
    "{%- if messages[0]['role'] == 'system' %}\n"
    "    {%- set system_message = messages[0]['content'] %}\n"
    "    {%- set loop_messages = messages[1:] %}\n"
    "{%- else %}\n"
    "    {%- set loop_messages = messages %}\n"
    "{%- endif %}\n"
    "\n"
    "{{- bos_token }}\n"
    "{%- for message in loop_messages %}\n"
    "    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}\n"
    "        {{- raise_exception('After the optional system message, conversation roles must alte"
    "rnate user/assistant/user/assistant/...') }}\n"
    "    {%- endif %}\n"
    "    {%- if message['role'] == 'user' %}\n"
    "        {%- if loop.first and system_message is defined %}\n"
    "            {{- ' [INST] ' + system_message + '\\n\\n' + message['content'] + ' [/INST]' }}"
    "\n"
    "        {%- else %}\n"
    "            {{- ' [INST] ' + message['content'] + ' [/INST]' }}\n"
    "        {%- endif %}\n"
    "    {%- elif message['role'] == 'assistant' %}\n"
    "        {{- ' ' + message['content'] + eos_token}}\n"
    "    {%- else %}\n"
    "        {{- raise_exception('Only user and assistant roles are supported, with the exception"
    " of an initial optional system message!') }}\n"
    "    {%- endif %}\n"
    "{%- endfor %}\n";

static const struct {
    const char *name, *src;
} BUILTINS[] = {
    {"chatml", CHATML},
    {"llama3", LLAMA3},
    {"llama2", LLAMA2},
    {"mistral", MISTRAL},
};

struct chat_template {
    char *name;
    jinja_template *tmpl;
    /* special tokens, NULL when tokenizer_config.json does not set them; plain strings rather
     * than json_t, whose reference counts are not thread-safe */
    char *bos, *eos, *unk, *pad;
};

static char *path_join(const char *dir, const char *file)
{
    size_t n = strlen(dir) + strlen(file) + 2;
    char *p = malloc(n);
    if (p)
        snprintf(p, n, "%s/%s", dir, file);
    return p;
}

/* Reads a whole file of at most JINJA_MAX_SOURCE bytes; NULL + err otherwise. */
static char *read_text(const char *path, size_t *len, lr_error *err)
{
    char *data = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) {
        lr_error_set(err, errno == ENOENT ? LR_ENOTFOUND : LR_EIO, "chat template '%s': %s",
                     path, strerror(errno));
        return NULL;
    }
    data = malloc(JINJA_MAX_SOURCE + 1);
    if (!data) {
        lr_error_set(err, LR_ENOMEM, "chat template '%s': out of memory", path);
        goto fail;
    }
    *len = fread(data, 1, JINJA_MAX_SOURCE + 1, f);
    if (ferror(f)) {
        lr_error_set(err, LR_EIO, "chat template '%s': read error", path);
        goto fail;
    }
    if (*len > JINJA_MAX_SOURCE) {
        lr_error_set(err, LR_EINVAL, "chat template '%s' is larger than %u bytes", path,
                     JINJA_MAX_SOURCE);
        goto fail;
    }
    data[*len] = '\0';
    fclose(f);
    return data;
fail:
    free(data);
    fclose(f);
    return NULL;
}

/* A special token of tokenizer_config.json: a string or an AddedToken {"content": ...}. */
static int token_of(const json_t *cfg, const char *key, char **out, lr_error *err)
{
    const json_t *v = json_object_get(cfg, key);
    if (json_is_object(v))
        v = json_object_get(v, "content");
    if (!v || json_is_null(v))
        return 0;
    if (!json_is_string(v))
        return lr_error_set(err, LR_EINVAL, "tokenizer_config.json: %s is neither a string nor "
                            "{\"content\": string}", key);
    *out = strdup(json_string_value(v));
    return *out ? 0 : lr_error_set(err, LR_ENOMEM, "out of memory");
}

/* The template source named by tokenizer_config.json's chat_template (borrowed from cfg). */
static const char *config_template(const json_t *cfg, const char *path, lr_error *err)
{
    const json_t *ct = json_object_get(cfg, "chat_template");
    if (json_is_string(ct))
        return json_string_value(ct);
    if (json_is_array(ct)) {
        size_t i;
        const json_t *item;
        json_array_foreach(ct, i, item) {
            const json_t *nm = json_object_get(item, "name"), *tp = json_object_get(item,
                                                                                    "template");
            if (json_is_string(nm) && !strcmp(json_string_value(nm), "default")) {
                if (!json_is_string(tp))
                    break;
                return json_string_value(tp);
            }
        }
        lr_error_set(err, LR_ENOTFOUND, "%s: chat_template is a list without a template named "
                     "'default' (choose one with --chat-template FILE)", path);
        return NULL;
    }
    if (ct && !json_is_null(ct)) {
        lr_error_set(err, LR_EINVAL, "%s: chat_template is neither a string nor a list", path);
        return NULL;
    }
    lr_error_set(err, LR_ENOTFOUND, "%s has no chat_template and there is no chat_template.jinja "
                 "(pass --chat-template chatml, llama3, llama2, mistral or a template file)",
                 path);
    return NULL;
}

chat_template *chat_template_load(const char *model_dir, const char *name, lr_error *err)
{
    chat_template *t = calloc(1, sizeof *t);
    json_t *cfg = NULL;
    char *cfg_path = NULL, *jinja_path = NULL, *file_src = NULL;
    const char *src = NULL;
    size_t src_len = 0;
    if (!t) {
        lr_error_set(err, LR_ENOMEM, "out of memory");
        goto fail;
    }
    if (model_dir) {
        cfg_path = path_join(model_dir, "tokenizer_config.json");
        jinja_path = path_join(model_dir, "chat_template.jinja");
        if (!cfg_path || !jinja_path) {
            lr_error_set(err, LR_ENOMEM, "out of memory");
            goto fail;
        }
        json_error_t je;
        struct stat st;
        if (stat(cfg_path, &st) == 0) {
            /* JSON_DECODE_INT_AS_REAL: model_max_length is often 1e30, too big for json_int_t */
            cfg = json_load_file(cfg_path, JSON_DECODE_INT_AS_REAL, &je);
            if (!json_is_object(cfg)) {
                lr_error_set(err, LR_EINVAL, "%s: not a JSON object (%s, line %d)", cfg_path,
                             je.text, je.line);
                goto fail;
            }
            if (token_of(cfg, "bos_token", &t->bos, err) || token_of(cfg, "eos_token", &t->eos, err)
                || token_of(cfg, "unk_token", &t->unk, err)
                || token_of(cfg, "pad_token", &t->pad, err))
                goto fail;
        }
    }
    if (!name) {
        struct stat st;
        if (!model_dir) {
            lr_error_set(err, LR_EINVAL, "no model directory and no chat template name");
            goto fail;
        }
        if (stat(jinja_path, &st) == 0) {
            file_src = read_text(jinja_path, &src_len, err);
            if (!file_src)
                goto fail;
            src = file_src;
            name = "chat_template.jinja";
        } else if (!cfg) {
            lr_error_set(err, LR_ENOTFOUND, "%s not found, so there is no chat template (pass "
                         "--chat-template chatml, llama3, llama2, mistral or a template file)",
                         cfg_path);
            goto fail;
        } else {
            src = config_template(cfg, cfg_path, err);
            if (!src)
                goto fail;
            src_len = strlen(src);
            name = "tokenizer_config.json";
        }
    } else {
        for (size_t i = 0; i < sizeof BUILTINS / sizeof BUILTINS[0]; i++) {
            if (!strcmp(name, BUILTINS[i].name)) {
                src = BUILTINS[i].src;
                src_len = strlen(src);
            }
        }
        if (!src) {
            file_src = read_text(name, &src_len, err);
            if (!file_src) {
                if (err && err->code == LR_ENOTFOUND)
                    lr_error_set(err, LR_ENOTFOUND, "chat template '%s' is neither a built-in "
                                 "(chatml, llama3, llama2, mistral) nor a file", name);
                goto fail;
            }
            src = file_src;
        }
    }
    t->name = strdup(name);
    if (!t->name) {
        lr_error_set(err, LR_ENOMEM, "out of memory");
        goto fail;
    }
    t->tmpl = jinja_parse(t->name, src, src_len, err);
    if (!t->tmpl)
        goto fail;
    json_decref(cfg);
    free(cfg_path);
    free(jinja_path);
    free(file_src);
    return t;
fail:
    json_decref(cfg);
    free(cfg_path);
    free(jinja_path);
    free(file_src);
    chat_template_free(t);
    return NULL;
}

void chat_template_free(chat_template *t)
{
    if (!t)
        return;
    jinja_free(t->tmpl);
    free(t->name);
    free(t->bos);
    free(t->eos);
    free(t->unk);
    free(t->pad);
    free(t);
}

const char *chat_template_name(const chat_template *t)
{
    return t->name;
}

static int set_new(json_t *obj, const char *key, json_t *v)
{
    return !v || json_object_set_new(obj, key, v);
}

int chat_template_render(const chat_template *t, const chat_message *msgs, int n_msgs,
                         int add_generation_prompt, char **out, size_t *len, lr_error *err)
{
    int rc = LR_ENOMEM;
    *out = NULL;
    *len = 0;
    json_t *vars = json_object(), *list = json_array();
    if (!vars || !list)
        goto fail;
    for (int i = 0; i < n_msgs; i++) {
        json_t *m = json_object();
        if (!m || json_array_append_new(list, m))
            goto fail;
        if (!msgs[i].role) {
            rc = lr_error_set(err, LR_EINVAL, "message %d has no role", i);
            goto fail;
        }
        /* json_stringn: content may hold any UTF-8 the request carried */
        if (set_new(m, "role", json_stringn(msgs[i].role, strlen(msgs[i].role)))
            || set_new(m, "content", msgs[i].content
                                         ? json_stringn(msgs[i].content, strlen(msgs[i].content))
                                         : json_null())) {
            rc = lr_error_set(err, LR_EINVAL, "message %d is not valid UTF-8", i);
            goto fail;
        }
    }
    /* what transformers passes: the special tokens it knows, tools and documents as None */
    if (json_object_set(vars, "messages", list)
        || set_new(vars, "add_generation_prompt", json_boolean(add_generation_prompt))
        || set_new(vars, "bos_token", json_string(t->bos ? t->bos : ""))
        || set_new(vars, "eos_token", json_string(t->eos ? t->eos : ""))
        || (t->unk && set_new(vars, "unk_token", json_string(t->unk)))
        || (t->pad && set_new(vars, "pad_token", json_string(t->pad)))
        || set_new(vars, "tools", json_null()) || set_new(vars, "documents", json_null()))
        goto fail;
    rc = jinja_render(t->tmpl, vars, out, len, err);
    json_decref(list);
    json_decref(vars);
    return rc;
fail:
    if (rc == LR_ENOMEM)
        lr_error_set(err, LR_ENOMEM, "chat template '%s': out of memory", t->name);
    json_decref(list);
    json_decref(vars);
    return rc;
}
