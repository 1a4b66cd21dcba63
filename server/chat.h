/* chat: turns an OpenAI conversation (messages) into prompt text with the model's chat template,
 * byte for byte as Hugging Face transformers' apply_chat_template(tokenize=False) does.
 *
 * Templates are Jinja; they run on lorad's own interpreter (server/jinja.h), which renders the
 * real templates of ChatML models (Qwen2, Qwen2.5 and its default system prompt, Qwen3 for
 * conversations without tools, SmolLM2), Llama 2 chat, Llama 3 / 3.1 and Mistral instruct
 * v0.1-v0.3. It supports what such templates use: if/elif/else, for loops (loop.index0, loop.last,
 * filtered loops, loop else, break/continue), set and namespace(), whitespace control with
 * trim_blocks and lstrip_blocks, Python-style expressions, slices, is-tests, the common filters
 * (trim, length, default, tojson, join, selectattr, map, ...), str and dict methods, and
 * raise_exception. Macros, call/filter/with blocks, includes and recursive loops are refused at
 * load with a message naming the construct. The variables are those transformers passes:
 * messages, add_generation_prompt, the special tokens of tokenizer_config.json (bos_token,
 * eos_token: "" when absent; unk_token, pad_token when present), and tools = documents = None. */
#ifndef LORAD_CHAT_H
#define LORAD_CHAT_H

#include <stddef.h>

#include "core/error.h"

typedef struct chat_template chat_template;

typedef struct {
    const char *role;
    const char *content;  /* NULL renders as None, as a JSON null content does in transformers */
} chat_message;

/* name == NULL: the model's own template: DIR/chat_template.jinja when present (transformers
 * prefers it), else DIR/tokenizer_config.json's chat_template (a string, or a list of
 * {"name", "template"} of which the one named "default" is used). LR_ENOTFOUND with a clear
 * message when there is none, LR_EINVAL when it does not parse. Otherwise a built-in by name:
 * "chatml", "llama3", "llama2", "mistral" (the real Jinja sources of OpenHermes-2.5,
 * Meta-Llama-3-8B-Instruct, Llama-2-7b-chat-hf and Mistral-7B-Instruct-v0.2, embedded), or a path
 * to a file holding a Jinja template. Special tokens are read from DIR/tokenizer_config.json
 * when there is one (model_dir may be NULL: then they are ""). The caller owns the result
 * (chat_template_free); on error returns NULL and fills err. */
chat_template *chat_template_load(const char *model_dir, const char *name, lr_error *err);
void chat_template_free(chat_template *t);  /* accepts NULL */

/* "tokenizer_config.json", "chat_template.jinja", "chatml", a path, ... (valid while t is). */
const char *chat_template_name(const chat_template *t);

/* Renders; *out malloc'd NUL-terminated (caller frees), *len its length. On error returns
 * LR_EINVAL (LR_ENOMEM when out of memory), *out = NULL, and err holds the template's own message
 * when it called raise_exception (e.g. "Conversation roles must alternate user/assistant/...")
 * or "template 'NAME' line N: ..." for a render error. Thread-safe: a loaded template is
 * immutable and may be rendered by several threads at once. */
int chat_template_render(const chat_template *t, const chat_message *msgs, int n_msgs,
                         int add_generation_prompt, char **out, size_t *len, lr_error *err);

#endif
