// Generates tests/fixtures/chat/goldens.json: real chat templates rendered by @huggingface/jinja
// (Hugging Face's JavaScript Jinja, run with transformers' settings: trim_blocks, lstrip_blocks)
// over a set of conversations, with the variables transformers' apply_chat_template passes
// (messages, add_generation_prompt, the special tokens of tokenizer_config.json, tools=None,
// documents=None). Run: npm ci && node gen.js (from this directory).
// tests/test_chat.c renders every case with lorad's interpreter and compares byte for byte.
'use strict';
const fs = require('fs');
const path = require('path');
const { Template } = require('@huggingface/jinja');

const ROOT = path.resolve(__dirname, '../..');
const TPL = 'tests/fixtures/chat/templates';
const jinjaVersion = JSON.parse(fs.readFileSync(
  path.join(__dirname, 'node_modules/@huggingface/jinja/package.json'), 'utf8')).version;

// The templates, where each came from (see tests/fixtures/chat/templates/SOURCES.md), and the
// special tokens of the model's tokenizer_config.json. A template read from a tokenizer fixture
// directory is loaded by the C test from that directory itself.
const ADDED = (content) => ({ __type: 'AddedToken', content, lstrip: false, normalized: false,
  rstrip: false, single_word: false });
const TEMPLATES = {
  chatml: { file: `${TPL}/chatml.jinja`, tokens: { bos_token: '<s>', eos_token: '<|im_end|>' } },
  qwen2: { file: `${TPL}/qwen2.jinja`,
    tokens: { bos_token: null, eos_token: '<|im_end|>', pad_token: '<|endoftext|>' } },
  'qwen2.5': { file: `${TPL}/qwen2.5.jinja`,
    tokens: { bos_token: null, eos_token: '<|im_end|>', pad_token: '<|endoftext|>' } },
  qwen3: { model_dir: 'tests/fixtures/tokenizer/qwen3' },
  smollm2: { file: `${TPL}/smollm2.jinja`,
    tokens: { bos_token: '<|im_start|>', eos_token: '<|im_end|>', unk_token: '<|endoftext|>',
      pad_token: '<|im_end|>' } },
  llama2: { file: `${TPL}/llama2.jinja`,
    tokens: { bos_token: ADDED('<s>'), eos_token: ADDED('</s>'), unk_token: ADDED('<unk>'),
      pad_token: null } },
  llama3: { model_dir: 'tests/fixtures/tokenizer/llama3' },
  'llama3-instruct': { file: `${TPL}/llama3-instruct.jinja`,
    tokens: { bos_token: '<|begin_of_text|>', eos_token: '<|eot_id|>' } },
  'llama3.1': { file: `${TPL}/llama3.1.jinja`,
    tokens: { bos_token: '<|begin_of_text|>', eos_token: '<|eot_id|>' } },
  'mistral-v0.1': { file: `${TPL}/mistral-v0.1.jinja`,
    tokens: { bos_token: '<s>', eos_token: '</s>', unk_token: '<unk>' } },
  'mixtral-v0.1': { file: `${TPL}/mixtral-v0.1.jinja`,
    tokens: { bos_token: '<s>', eos_token: '</s>', unk_token: '<unk>' } },
  'mistral-v0.2': { file: `${TPL}/mistral-v0.2.jinja`,
    tokens: { bos_token: '<s>', eos_token: '</s>', unk_token: '<unk>' } },
  'mistral-v0.3': { file: `${TPL}/mistral-v0.3.jinja`,
    tokens: { bos_token: '<s>', eos_token: '</s>', unk_token: '<unk>' } },
};

const m = (role, content) => ({ role, content });
const SYS = 'You are a helpful assistant.';
const CONVERSATIONS = {
  'system-user': [m('system', SYS), m('user', 'Hello!')],
  'user-only': [m('user', 'What is the capital of France?')],
  'multi-turn': [m('user', 'Hi'), m('assistant', 'Hello! How can I help?'),
    m('user', 'Tell me a joke.')],
  'system-multi-turn': [m('system', SYS), m('user', 'Hi'), m('assistant', 'Hello.'),
    m('user', 'Who are you?'), m('assistant', 'An assistant.'), m('user', 'Thanks')],
  'assistant-prefix': [m('user', 'Write a haiku about autumn.'),
    m('assistant', 'Autumn moonlight')],
  'non-ascii': [m('system', 'Tu es un assistant français. Réponds brièvement.'),
    m('user', '¿Qué tal? 你好 👋🏽 ünïcödé — «quotes» 日本語 ∑ ≠ 🚀')],
  'jinja-looking': [
    m('user', 'Render {{ x }} and {% if y %}z{% endif %} literally; also {# not a comment #}'),
    m('assistant', 'It\'s "quoted" and \'single\'\nwith\nnewlines\ttabs \\ backslash {%- raw %}'),
    m('user', '{{- messages[0] -}} <|im_end|> [INST] </s>')],
  'padded-content': [m('system', '  padded system  \n'), m('user', '\n   I am padded   \n\n'),
    m('assistant', '\n  reply  \n'), m('user', 'x')],
  'empty-content': [m('user', ''), m('assistant', ''), m('user', 'ok')],
  'think-history': [m('user', '2+2?'), m('assistant', '<think>\nLet me add.\n</think>\n\n4'),
    m('user', 'And 3+3?')],
  'think-last': [m('user', '2+2?'), m('assistant', '<think>\nadd\n</think>\n\n4')],
  'roles-not-alternating': [m('user', 'a'), m('user', 'b')],
  'starts-with-assistant': [m('assistant', 'Hi, I am a bot.'), m('user', 'Hello')],
};
// Each conversation is rendered with add_generation_prompt true; these also with false.
const ALSO_WITHOUT_PROMPT = ['multi-turn', 'assistant-prefix', 'think-last', 'system-user'];

function tokenContent(v) {
  if (v && typeof v === 'object') return v.content;
  return v;
}

// What a raise_exception in the template source may say: an error with another message is a
// difference between JavaScript and Python Jinja, which must not become a golden.
function raisedMessages(src) {
  const out = new Set();
  const re = /raise_exception\(\s*(['"])((?:\\.|(?!\1).)*)\1\s*\)/g;
  let r;
  while ((r = re.exec(src)) !== null) out.add(r[2].replace(/\\(.)/g, '$1'));
  return out;
}

const templates = {};
const cases = [];
for (const [name, t] of Object.entries(TEMPLATES)) {
  let source, tokens, entry;
  if (t.model_dir) {
    const cfg = JSON.parse(fs.readFileSync(path.join(ROOT, t.model_dir, 'tokenizer_config.json'),
      'utf8'));
    source = cfg.chat_template;
    tokens = cfg;
    entry = { model_dir: t.model_dir };
  } else {
    source = fs.readFileSync(path.join(ROOT, t.file), 'utf8');
    tokens = t.tokens;
    entry = { file: t.file, tokenizer_config: t.tokens };
  }
  templates[name] = entry;
  const tpl = new Template(source);
  const raised = raisedMessages(source);
  const vars = { tools: null, documents: null, bos_token: '', eos_token: '' };
  for (const k of ['bos_token', 'eos_token', 'unk_token', 'pad_token']) {
    const v = tokenContent(tokens[k]);
    if (typeof v === 'string') vars[k] = v;
  }
  for (const [conv, messages] of Object.entries(CONVERSATIONS)) {
    for (const agp of ALSO_WITHOUT_PROMPT.includes(conv) ? [true, false] : [true]) {
      const c = { template: name, conversation: conv, messages, add_generation_prompt: agp };
      try {
        c.expected = tpl.render({ ...vars, messages, add_generation_prompt: agp });
      } catch (e) {
        if (!raised.has(e.message))
          throw new Error(`${name}/${conv}: not a raise_exception error: ${e.message}`);
        c.error = e.message;
      }
      cases.push(c);
    }
  }
}

const out = {
  generator: `tools/chat-goldens/gen.js with @huggingface/jinja ${jinjaVersion}`,
  templates,
  cases,
};
fs.writeFileSync(path.join(ROOT, 'tests/fixtures/chat/goldens.json'),
  JSON.stringify(out, null, 1) + '\n');
console.log(`${cases.length} cases (${cases.filter((c) => c.error).length} errors) over ` +
  `${Object.keys(templates).length} templates`);
