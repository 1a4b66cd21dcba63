// client_test.mjs: the official OpenAI Node client, unmodified, against running lorad
// daemons (started by tests/test_openai_client.py). Prints "PASS name" / "FAIL name: reason"
// per check and, last, "N passed, N failed"; exits 1 if anything failed.
//
//   node client_test.mjs --base-url http://127.0.0.1:PORT/v1 --model qwen-tiny \
//       --adapter tq_all --adapter tq_attn --adapter tq_mlp --invalid-adapter ad_all \
//       --auth-url http://127.0.0.1:PORT2/v1 --api-key KEY \
//       --busy-url http://127.0.0.1:PORT3/v1 --busy-model slow --busy-max-tokens 6000
//
// --base-url: a daemon without an API key, on a model with a tokenizer and a chat template,
// whose adapter directory holds the --adapter names (which change its output) and the
// --invalid-adapter (one that fails validation). --auth-url: one started with
// --api-key-file holding --api-key. --busy-url: one with --max-seqs 1 --max-queue 0 and
// --max-tokens of at least --busy-max-tokens, on a model slow enough that a generation of
// --busy-max-tokens tokens runs for seconds.
import OpenAI from 'openai';
import { parseArgs } from 'node:util';

const { values: opt } = parseArgs({
  options: {
    'base-url': { type: 'string' },
    model: { type: 'string' },
    adapter: { type: 'string', multiple: true, default: [] },
    'invalid-adapter': { type: 'string' },
    'auth-url': { type: 'string' },
    'api-key': { type: 'string' },
    'busy-url': { type: 'string' },
    'busy-model': { type: 'string' },
    'busy-max-tokens': { type: 'string', default: '6000' },
    timeout: { type: 'string', default: '120' },   // seconds per HTTP request
  },
});
if (!opt['base-url'] || !opt.model || opt.adapter.length < 3 || !opt['invalid-adapter']) {
  console.error('usage: node client_test.mjs --base-url URL --model ID --adapter A ' +
                '--adapter B --adapter C --invalid-adapter X [--auth-url URL --api-key KEY] ' +
                '[--busy-url URL --busy-model ID]');
  process.exit(2);
}

const TIMEOUT_MS = Number(opt.timeout) * 1000;
const BASE = opt.model;
const [AD1, AD2, AD3] = opt.adapter;
const PROMPT = 'Once upon a time';
const CHAT = [{ role: 'system', content: 'You are terse.' },
              { role: 'user', content: 'What is 2+2?' }];
const SEED = 7;

// The only client option that is not the default: no retries, so that a refusal is seen
// as it is (the client would otherwise retry 429 and 5xx). The daemon has no key here; the
// client insists on one and sends it anyway.
const client = new OpenAI({ baseURL: opt['base-url'], apiKey: 'sk-unused', maxRetries: 0,
                            timeout: TIMEOUT_MS });

// ------------------------------------------------------------------ plumbing
let passed = 0;
let failed = 0;

class CheckFail extends Error {}

function assert(cond, msg) {
  if (!cond) throw new CheckFail(msg);
}

function show(v) {
  const s = JSON.stringify(v);
  return s === undefined ? String(v) : s.length > 200 ? s.slice(0, 200) + '...' : s;
}

function assertEq(got, want, what) {
  assert(got === want, `${what} is ${show(got)}, expected ${show(want)}`);
}

async function check(name, fn) {
  try {
    await fn();
    passed++;
    console.log(`PASS ${name}`);
  } catch (e) {
    failed++;
    let why;
    if (e instanceof CheckFail) why = e.message;
    else if (e instanceof OpenAI.APIError)
      why = `unexpected ${e.constructor.name} (status ${e.status}): ${e.message}`;
    else why = `${e?.constructor?.name ?? 'error'}: ${e?.message ?? e}`;
    console.log(`FAIL ${name}: ${why.replace(/\n/g, ' | ')}`);
  }
}

// The error a call must throw: its class and status, with a message in the error body.
// Returns the error.
async function expectError(promise, cls, status, what) {
  try {
    const r = await promise;
    throw new CheckFail(`${what}: succeeded (${show(r)}), expected ${cls.name} ${status}`);
  } catch (e) {
    if (e instanceof CheckFail) throw e;
    assert(e instanceof cls, `${what}: threw ${e?.constructor?.name} (status ${e?.status}: ` +
                             `${e?.message}), expected ${cls.name}`);
    assertEq(e.status, status, `${what}: status`);
    assert(typeof e.error?.message === 'string' && e.error.message.length > 0,
           `${what}: the error body has no message (${show(e.error)})`);
    return e;
  }
}

const cp = (s) => Array.from(s);   // code points: what text_offset counts
const hasReplacement = (s) => s.includes('\uFFFD');

function checkEnvelope(r, object, model, idPrefix) {
  assertEq(r.object, object, 'object');
  assert(typeof r.id === 'string' && r.id.startsWith(idPrefix), `id ${show(r.id)} does not ` +
         `start with ${idPrefix}`);
  assert(Number.isInteger(r.created) && Math.abs(r.created - Date.now() / 1000) < 3600,
         `created ${show(r.created)} is not a Unix time near now`);
  assertEq(r.model, model, 'model');
}

function checkUsage(u, what = 'usage') {
  assert(u && Number.isInteger(u.prompt_tokens) && u.prompt_tokens > 0 &&
         Number.isInteger(u.completion_tokens) && u.completion_tokens >= 0,
         `${what} is ${show(u)}`);
  assertEq(u.total_tokens, u.prompt_tokens + u.completion_tokens, `${what}.total_tokens`);
}

function maxAbsDiff(a, b) {
  let d = 0;
  for (let i = 0; i < Math.min(a.length, b.length); i++) d = Math.max(d, Math.abs(a[i] - b[i]));
  return d;
}

// A stop string taken from a greedy text and its tokens: two code points across the
// boundary before token i (i >= 1, so the cut text is not empty), occurring first there.
// Returns {stop, before} or null.
function pickStop(text, tokens) {
  const t = cp(text);
  let at = 0;
  for (let i = 0; i < tokens.length; i++) {
    if (i >= 1 && at >= 1 && at < t.length) {
      const stop = t.slice(at - 1, at + 1).join('');
      const before = t.slice(0, at - 1).join('');
      if (text.indexOf(stop) === before.length && !hasReplacement(stop) && before.length > 0)
        return { stop, before };
    }
    at += cp(tokens[i]).length;
  }
  return null;
}

async function collect(stream, pick) {
  const chunks = [];
  for await (const c of stream) chunks.push(c);
  return { chunks, text: chunks.map(pick).join('') };
}

const completion = (extra = {}, options) =>
  client.completions.create({ model: BASE, prompt: PROMPT, max_tokens: 12, temperature: 0,
                              seed: SEED, ...extra }, options);
const chat = (extra = {}, options) =>
  client.chat.completions.create({ model: BASE, messages: CHAT, max_tokens: 12,
                                   temperature: 0, seed: SEED, ...extra }, options);
const completionText = (c) => c.choices[0]?.text ?? '';
const chatText = (c) => c.choices[0]?.delta?.content ?? '';

// ------------------------------------------------------------------ the checks
await check('models.list: the base and the adapters, each adapter with parent = base',
  async () => {
    const ids = [];
    const byId = {};
    for await (const m of client.models.list()) {   // the client's auto-paginating iterator
      ids.push(m.id);
      byId[m.id] = m;
      assertEq(m.object, 'model', `${m.id}: object`);
      assert(Number.isInteger(m.created), `${m.id}: created is ${show(m.created)}`);
      assert(typeof m.owned_by === 'string', `${m.id}: owned_by is ${show(m.owned_by)}`);
    }
    assert(byId[BASE], `no model ${BASE} in ${show(ids)}`);
    for (const a of [AD1, AD2, AD3, opt['invalid-adapter']]) {
      assert(byId[a], `no adapter ${a} in ${show(ids)}`);
      assertEq(byId[a].parent, BASE, `${a}: parent`);
    }
    const page = await client.models.list();
    assertEq(page.data.length, ids.length, 'models.list().data.length');
  });

// OpenAI's GET /v1/models/{model}, which the client calls for models.retrieve().
await check('models.retrieve: the base, an adapter (parent = base), NotFoundError for an ' +
            'unknown id', async () => {
  const base = await client.models.retrieve(BASE);
  assertEq(base.id, BASE, 'retrieve(base).id');
  assertEq(base.object, 'model', 'retrieve(base).object');
  const ad = await client.models.retrieve(AD1);
  assertEq(ad.id, AD1, `retrieve(${AD1}).id`);
  assertEq(ad.parent, BASE, `retrieve(${AD1}).parent`);
  const e = await expectError(client.models.retrieve('no-such-model'), OpenAI.NotFoundError,
                              404, 'retrieve(no-such-model)');
  assertEq(e.code, 'model_not_found', 'retrieve(no-such-model): error code');
});

let greedy = null;   // the base's greedy completion with logprobs, used by later checks

await check('completions: text, finish_reason, usage, id/object/created/model', async () => {
  const r = await completion();
  checkEnvelope(r, 'text_completion', BASE, 'cmpl-');
  assertEq(r.choices.length, 1, 'choices.length');
  const c = r.choices[0];
  assertEq(c.index, 0, 'choices[0].index');
  assert(typeof c.text === 'string' && c.text.length > 0, `text is ${show(c.text)}`);
  assertEq(c.finish_reason, 'length', 'finish_reason (12 tokens, the fixture never ends)');
  assertEq(c.logprobs, null, 'logprobs when not asked');
  checkUsage(r.usage);
  assertEq(r.usage.completion_tokens, 12, 'usage.completion_tokens');
  const again = await completion();
  assertEq(again.choices[0].text, c.text, 'the text of the same greedy request again');
  assert(again.id !== r.id, `two requests got the same id ${r.id}`);
});

await check('completions logprobs: legacy tokens, token_logprobs, top_logprobs, text_offset',
  async () => {
    const K = 3;
    const r = await completion({ logprobs: K });
    const c = r.choices[0];
    const lp = c.logprobs;
    assert(lp && typeof lp === 'object', `logprobs is ${show(lp)}`);
    const n = r.usage.completion_tokens;
    for (const k of ['tokens', 'token_logprobs', 'top_logprobs', 'text_offset']) {
      assert(Array.isArray(lp[k]), `logprobs.${k} is not a list: ${show(lp[k])}`);
      assertEq(lp[k].length, n, `logprobs.${k}.length (usage.completion_tokens)`);
    }
    assertEq(lp.tokens.join(''), c.text, 'the tokens joined');
    for (let i = 0; i < n; i++) {
      const x = lp.token_logprobs[i];
      assert(typeof x === 'number' && x <= 0 && Number.isFinite(x),
             `token_logprobs[${i}] is ${show(x)}`);
      const top = lp.top_logprobs[i];
      const keys = Object.keys(top);
      assert(keys.length >= 1 && keys.length <= K + 1,
             `top_logprobs[${i}] has ${keys.length} entries (logprobs ${K})`);
      assert(lp.tokens[i] in top && Math.abs(top[lp.tokens[i]] - x) < 1e-6,
             `top_logprobs[${i}] ${show(top)} lacks the chosen token ${show(lp.tokens[i])} ` +
             `with its logprob ${x}`);
      // greedy: the chosen token is the most likely one
      assert(Math.max(...Object.values(top)) - x < 1e-6,
             `greedy token ${i} is not the most likely of ${show(top)}`);
      if (i > 0) {
        assertEq(lp.text_offset[i] - lp.text_offset[i - 1], cp(lp.tokens[i - 1]).length,
                 `text_offset[${i}] - text_offset[${i - 1}] (characters of token ${i - 1})`);
      }
    }
    // vLLM counts from the completion's start, OpenAI's legacy API from the prompt's
    assert(lp.text_offset[0] === 0 || lp.text_offset[0] === cp(PROMPT).length,
           `text_offset[0] is ${lp.text_offset[0]}`);
    const plain = await completion();
    assertEq(c.text, plain.choices[0].text, 'the text with logprobs vs without');
    // streamed: the same tokens, logprobs and offsets, continued across chunks
    const { chunks } = await collect(await completion({ logprobs: K, stream: true }),
                                     completionText);
    const got = (k) => chunks.flatMap((x) => x.choices[0]?.logprobs?.[k] ?? []);
    for (const k of ['tokens', 'token_logprobs', 'text_offset'])
      assertEq(show(got(k)), show(lp[k]), `streamed logprobs.${k}`);
    assertEq(show(got('top_logprobs')), show(lp.top_logprobs), 'streamed logprobs.top_logprobs');
    greedy = r;
  });

await check('completions stream: text equals the non-streaming text; include_usage chunk last',
  async () => {
    const whole = await completion();
    const stream = await completion({ stream: true, stream_options: { include_usage: true } });
    const { chunks, text } = await collect(stream, completionText);
    assertEq(text, whole.choices[0].text, 'the streamed text joined');
    // at least one chunk of text, then the usage chunk: tokens that come while the
    // connection is still sending earlier ones go out together, so a short generation on a
    // busy machine may arrive as a single chunk of text (CI once saw 2 chunks here)
    assert(chunks.length >= 2, `only ${chunks.length} chunks`);
    const last = chunks[chunks.length - 1];
    assert(Array.isArray(last.choices) && last.choices.length === 0,
           `the last chunk's choices are ${show(last.choices)}, expected []`);
    checkUsage(last.usage, 'the last chunk\'s usage');
    assertEq(last.usage.completion_tokens, whole.usage.completion_tokens,
             'the streamed usage.completion_tokens');
    assertEq(last.usage.prompt_tokens, whole.usage.prompt_tokens,
             'the streamed usage.prompt_tokens');
    const body = chunks.slice(0, -1);
    for (const [i, c] of body.entries()) {
      checkEnvelope(c, 'text_completion', BASE, 'cmpl-');
      assertEq(c.id, chunks[0].id, `chunk ${i}: id`);
      assertEq(c.usage ?? null, null, `chunk ${i}: usage`);
      assertEq(c.choices.length, 1, `chunk ${i}: choices.length`);
    }
    assertEq(last.id, chunks[0].id, 'the usage chunk\'s id');
    const finishes = body.map((c) => c.choices[0].finish_reason);
    assertEq(finishes[finishes.length - 1], whole.choices[0].finish_reason,
             'the last choice chunk\'s finish_reason');
    assert(finishes.slice(0, -1).every((f) => f === null),
           `finish_reason before the last chunk: ${show(finishes)}`);

    // without stream_options: no usage anywhere, and the same text
    const plain = await collect(await completion({ stream: true }), completionText);
    assertEq(plain.text, text, 'the text streamed without stream_options');
    assert(plain.chunks.every((c) => c.usage == null && c.choices.length === 1),
           'a chunk carries usage or no choice without include_usage');
  });

await check('completions stream: a sampled text (temperature 0.9, seed) equals the ' +
            'non-streaming one, and another seed changes it', async () => {
  const extra = { temperature: 0.9, seed: 12345, max_tokens: 16 };
  const whole = await completion(extra);
  const { text } = await collect(await completion({ ...extra, stream: true }), completionText);
  assertEq(text, whole.choices[0].text, 'the streamed sampled text');
  const texts = new Set([whole.choices[0].text]);
  for (const seed of [1, 2, 3]) texts.add((await completion({ ...extra, seed })).choices[0].text);
  assert(texts.size > 1, `four seeds gave the same text ${show(whole.choices[0].text)}: the ` +
         'seed (or temperature) does not reach the sampler');
});

await check('completions echo: text is the prompt followed by the completion', async () => {
  const plain = await completion();
  const r = await completion({ echo: true });
  assertEq(r.choices[0].text, PROMPT + plain.choices[0].text, 'text with echo');
  assertEq(r.usage.completion_tokens, plain.usage.completion_tokens, 'completion_tokens');
  const { text } = await collect(await completion({ echo: true, stream: true }), completionText);
  assertEq(text, PROMPT + plain.choices[0].text, 'streamed text with echo');
});

await check('completions stop: the text ends before the stop string, finish_reason stop',
  async () => {
    assert(greedy, 'needs the logprobs check\'s completion, which failed');
    const full = greedy.choices[0].text;
    const s = pickStop(full, greedy.choices[0].logprobs.tokens);
    assert(s, `no usable stop string in ${show(full)} (fixture)`);
    const r = await completion({ stop: ['never in this text \u2603', s.stop] });
    const c = r.choices[0];
    assert(!c.text.includes(s.stop), `the text ${show(c.text)} contains the stop ${show(s.stop)}`);
    assertEq(c.text, s.before, `text with stop ${show(s.stop)} (in ${show(full)})`);
    assertEq(c.finish_reason, 'stop', 'finish_reason');
    const st = await collect(await completion({ stop: s.stop, stream: true }), completionText);
    assertEq(st.text, s.before, `streamed text with stop ${show(s.stop)}`);
    const fin = st.chunks.map((x) => x.choices[0]?.finish_reason).filter((f) => f);
    assertEq(fin.join(), 'stop', 'streamed finish_reason');
  });

let chatGreedy = null;

await check('chat: message, finish_reason, usage, id/object/created/model', async () => {
  const r = await chat();
  checkEnvelope(r, 'chat.completion', BASE, 'chatcmpl-');
  assertEq(r.choices.length, 1, 'choices.length');
  const c = r.choices[0];
  assertEq(c.index, 0, 'choices[0].index');
  assertEq(c.message.role, 'assistant', 'message.role');
  assert(typeof c.message.content === 'string' && c.message.content.length > 0,
         `message.content is ${show(c.message.content)}`);
  assertEq(c.finish_reason, 'length', 'finish_reason (12 tokens, the fixture never ends)');
  assertEq(c.logprobs ?? null, null, 'logprobs when not asked');
  checkUsage(r.usage);
  assertEq(r.usage.completion_tokens, 12, 'usage.completion_tokens');
  // the chat template is applied: the prompt is more than the messages' own tokens
  const raw = await client.completions.create({ model: BASE, prompt: CHAT[1].content,
                                                max_tokens: 1 });
  assert(r.usage.prompt_tokens > raw.usage.prompt_tokens + 4,
         `chat prompt_tokens ${r.usage.prompt_tokens}: no chat template around the ` +
         `${raw.usage.prompt_tokens} tokens of the user message?`);
});

await check('chat stream: first delta has role assistant; content equals the non-streaming ' +
            'content; include_usage chunk last', async () => {
  const whole = await chat();
  const stream = await chat({ stream: true, stream_options: { include_usage: true } });
  const { chunks, text } = await collect(stream, chatText);
  assertEq(text, whole.choices[0].message.content, 'the streamed content joined');
  assertEq(chunks[0].choices[0]?.delta?.role, 'assistant', 'the first delta\'s role');
  const body = chunks.slice(0, -1);
  for (const [i, c] of body.entries()) {
    checkEnvelope(c, 'chat.completion.chunk', BASE, 'chatcmpl-');
    assertEq(c.id, chunks[0].id, `chunk ${i}: id`);
    if (i > 0)
      assert(c.choices[0].delta.role === undefined || c.choices[0].delta.role === null,
             `chunk ${i} repeats the role`);
  }
  assertEq(body[body.length - 1].choices[0].finish_reason, whole.choices[0].finish_reason,
           'the last choice chunk\'s finish_reason');
  const last = chunks[chunks.length - 1];
  assertEq(last.choices.length, 0, 'the usage chunk\'s choices.length');
  checkUsage(last.usage, 'the last chunk\'s usage');
  assertEq(last.usage.completion_tokens, whole.usage.completion_tokens,
           'the streamed usage.completion_tokens');
  assertEq(last.usage.prompt_tokens, whole.usage.prompt_tokens,
           'the streamed usage.prompt_tokens');

  // the client's own stream helper assembles the same message
  const runner = client.chat.completions.stream({ model: BASE, messages: CHAT, max_tokens: 12,
                                                  temperature: 0, seed: SEED });
  const final = await runner.finalChatCompletion();
  assertEq(final.choices[0].message.content, whole.choices[0].message.content,
           'content from chat.completions.stream().finalChatCompletion()');
  assertEq(final.choices[0].message.role, 'assistant', 'role from finalChatCompletion()');
});

await check('chat logprobs: content entries with token, logprob, bytes, 3 top_logprobs',
  async () => {
    const r = await chat({ logprobs: true, top_logprobs: 3 });
    const c = r.choices[0];
    const content = c.logprobs?.content;
    assert(Array.isArray(content), `choices[0].logprobs is ${show(c.logprobs)}`);
    assertEq(content.length, r.usage.completion_tokens, 'logprobs.content.length');
    assertEq(content.map((e) => e.token).join(''), c.message.content, 'the tokens joined');
    for (const [i, e] of content.entries()) {
      assert(typeof e.token === 'string', `entry ${i}: token ${show(e.token)}`);
      assert(typeof e.logprob === 'number' && e.logprob <= 0, `entry ${i}: logprob ${e.logprob}`);
      assert(Array.isArray(e.bytes) &&
             e.bytes.every((b) => Number.isInteger(b) && b >= 0 && b < 256),
             `entry ${i}: bytes ${show(e.bytes)}`);
      if (!hasReplacement(e.token))
        assertEq(Buffer.from(e.bytes).toString('utf8'), e.token, `entry ${i}: bytes as UTF-8`);
      assert(Array.isArray(e.top_logprobs), `entry ${i}: top_logprobs ${show(e.top_logprobs)}`);
      assertEq(e.top_logprobs.length, 3, `entry ${i}: top_logprobs.length`);
      for (const [k, t] of e.top_logprobs.entries()) {
        assert(typeof t.token === 'string' && typeof t.logprob === 'number' &&
               Array.isArray(t.bytes), `entry ${i}: top_logprobs[${k}] is ${show(t)}`);
        if (k > 0)
          assert(t.logprob <= e.top_logprobs[k - 1].logprob,
                 `entry ${i}: top_logprobs not in decreasing order`);
      }
      assertEq(e.top_logprobs[0].token, e.token, `entry ${i}: greedy token vs the most likely`);
    }
    assertEq(c.message.content, (await chat()).choices[0].message.content,
             'content with logprobs vs without');
    const { chunks } = await collect(await chat({ logprobs: true, top_logprobs: 3,
                                                  stream: true }), chatText);
    const streamed = chunks.flatMap((x) => x.choices[0]?.logprobs?.content ?? []);
    assertEq(streamed.length, content.length, 'streamed logprobs entries');
    assert(streamed.every((e, i) => e.token === content[i].token &&
                                    Math.abs(e.logprob - content[i].logprob) < 1e-6),
           'streamed logprobs differ from the non-streaming ones');
    chatGreedy = r;
  });

await check('chat max_completion_tokens: limits the completion', async () => {
  const r = await chat({ max_tokens: undefined, max_completion_tokens: 3 });
  assertEq(r.usage.completion_tokens, 3, 'usage.completion_tokens');
  assertEq(r.choices[0].finish_reason, 'length', 'finish_reason');
  const long = await chat();
  assert(long.choices[0].message.content.startsWith(r.choices[0].message.content),
         `${show(r.choices[0].message.content)} is not the start of the 12-token answer ` +
         `${show(long.choices[0].message.content)}`);
});

await check('chat stop: the content ends before the stop string, finish_reason stop',
  async () => {
    assert(chatGreedy, 'needs the chat logprobs check\'s completion, which failed');
    const full = chatGreedy.choices[0].message.content;
    const s = pickStop(full, chatGreedy.choices[0].logprobs.content.map((e) => e.token));
    assert(s, `no usable stop string in ${show(full)} (fixture)`);
    const r = await chat({ stop: s.stop });
    assert(!r.choices[0].message.content.includes(s.stop), 'the content contains the stop');
    assertEq(r.choices[0].message.content, s.before, `content with stop ${show(s.stop)}`);
    assertEq(r.choices[0].finish_reason, 'stop', 'finish_reason');
    const st = await collect(await chat({ stop: [s.stop], stream: true }), chatText);
    assertEq(st.text, s.before, `streamed content with stop ${show(s.stop)}`);
  });

// Greedy token logprobs of a request (completions, logprobs 1).
async function lps(extra, options) {
  const r = await completion({ logprobs: 1, ...extra }, options);
  return { r, tokens: r.choices[0].logprobs.tokens, lp: r.choices[0].logprobs.token_logprobs };
}

function assertDiffers(a, b, what) {
  const same = a.tokens.join('\0') === b.tokens.join('\0');
  const d = maxAbsDiff(a.lp, b.lp);
  assert(!same || d > 1e-3, `${what}: the same tokens and logprobs within ${d} of the base's`);
}

function assertSame(a, b, what) {
  assertEq(a.tokens.join('|'), b.tokens.join('|'), `${what}: tokens`);
  const d = maxAbsDiff(a.lp, b.lp);
  assert(d < 1e-5, `${what}: logprobs differ by ${d}`);
}

await check(`adapter by model (${AD1}, ${AD2}, ${AD3}): the output differs from the base's`,
  async () => {
    const base = await lps({});
    for (const name of [AD1, AD2, AD3]) {
      const ad = await lps({ model: name });
      assertEq(ad.r.model, name, `${name}: response model`);
      assertDiffers(ad, base, name);
    }
    const c = await chat({ model: AD1 });
    assertEq(c.model, AD1, 'chat: response model');
    const b = await chat();
    assert(c.choices[0].message.content !== b.choices[0].message.content,
           `chat with ${AD1} answers the base's ${show(b.choices[0].message.content)}`);
  });

await check('adapters extension as an extra param spread into the request: ' +
            'weight 1 equals model=<adapter>, a mix differs from the base', async () => {
  const base = await lps({});
  const byModel = await lps({ model: AD1 });
  // Not in the client's types: passed as-is in the body (openai-node README,
  // "Undocumented request params").
  const one = await lps({ adapters: [{ name: AD1, weight: 1 }] });
  assertSame(one, byModel, `adapters [${AD1}:1]`);
  assertEq(one.r.model, BASE, 'response model with adapters');
  const mix = await lps({ adapters: [{ name: AD2, weight: 0.5 }, { name: AD3, weight: 0.5 }] });
  assertDiffers(mix, base, `adapters [${AD2}:0.5, ${AD3}:0.5]`);
  const half = await lps({ adapters: [{ name: AD1, weight: 0.5 }] });
  assertDiffers(half, byModel, `adapters [${AD1}:0.5] vs weight 1`);
  const c1 = await chat({ adapters: [{ name: AD1, weight: 1 }] });
  const c2 = await chat({ model: AD1 });
  assertEq(c1.choices[0].message.content, c2.choices[0].message.content,
           'chat with adapters vs model=<adapter>');
  const st = await collect(await chat({ adapters: [{ name: AD1, weight: 1 }], stream: true }),
                           chatText);
  assertEq(st.text, c2.choices[0].message.content, 'streamed chat with adapters');
});

await check('adapters extension through the request option `body` (replaces the whole body)',
  async () => {
    const params = { model: BASE, prompt: PROMPT, max_tokens: 12, temperature: 0, seed: SEED,
                     logprobs: 1 };
    const r = await client.completions.create(params, {
      body: { ...params, adapters: [{ name: AD1, weight: 1 }] } });
    const byModel = await lps({ model: AD1 });
    assertSame({ tokens: r.choices[0].logprobs.tokens, lp: r.choices[0].logprobs.token_logprobs },
               byModel, 'adapters in options.body');
  });

await check('NotFoundError (404) for an unknown model, in model and in adapters', async () => {
  const e = await expectError(completion({ model: 'no-such-model' }), OpenAI.NotFoundError,
                              404, 'completions model no-such-model');
  assert(e.message.includes('no-such-model'), `the message ${show(e.message)} does not name it`);
  assertEq(e.code, 'model_not_found', 'error code');
  await expectError(chat({ model: 'no-such-model' }), OpenAI.NotFoundError, 404,
                    'chat model no-such-model');
  await expectError(completion({ adapters: [{ name: 'no-such-adapter', weight: 1 }] }),
                    OpenAI.NotFoundError, 404, 'adapters [no-such-adapter]');
});

await check('BadRequestError (400) for temperature 5, with the message and param', async () => {
  const e = await expectError(completion({ temperature: 5 }), OpenAI.BadRequestError, 400,
                              'temperature 5');
  assert(/temperature/.test(e.message), `message ${show(e.message)} does not name temperature`);
  assertEq(e.param, 'temperature', 'error param');
  assertEq(e.type, 'invalid_request_error', 'error type');
  await expectError(chat({ temperature: 5 }), OpenAI.BadRequestError, 400, 'chat temperature 5');
  // an extra param the daemon does not know is refused, never ignored
  const u = await expectError(chat({ frobnicate: 1 }), OpenAI.BadRequestError, 400,
                              'unknown param frobnicate');
  assert(/frobnicate/.test(u.message), `message ${show(u.message)} does not name the param`);
});

await check(`UnprocessableEntityError (422) for adapter "${opt['invalid-adapter']}" that ` +
            'fails validation', async () => {
  const bad = opt['invalid-adapter'];
  const e = await expectError(completion({ model: bad }), OpenAI.UnprocessableEntityError, 422,
                              `model ${bad}`);
  assert(e.message.includes(bad), `the message ${show(e.message)} does not name ${bad}`);
  await expectError(chat({ model: bad }), OpenAI.UnprocessableEntityError, 422,
                    `chat model ${bad}`);
  await expectError(completion({ adapters: [{ name: bad, weight: 1 }] }),
                    OpenAI.UnprocessableEntityError, 422, `adapters [${bad}]`);
  // a failed adapter does not take the daemon with it
  const ok = await completion();
  assertEq(ok.usage.completion_tokens, 12, 'a completion after the refusals');
});

await check('AuthenticationError (401) for a wrong key; the right key works', async () => {
  assert(opt['auth-url'] && opt['api-key'], '--auth-url and --api-key not given');
  const mk = (apiKey) => new OpenAI({ baseURL: opt['auth-url'], apiKey, maxRetries: 0,
                                     timeout: TIMEOUT_MS });
  const wrong = mk(opt['api-key'] + 'x');
  const e = await expectError(wrong.models.list(), OpenAI.AuthenticationError, 401,
                              'models.list with a wrong key');
  assertEq(e.code, 'invalid_api_key', 'error code');
  await expectError(wrong.completions.create({ model: BASE, prompt: PROMPT, max_tokens: 2 }),
                    OpenAI.AuthenticationError, 401, 'completions with a wrong key');
  await expectError(mk(opt['api-key'].slice(0, -1)).models.list(), OpenAI.AuthenticationError,
                    401, 'models.list with a key prefix');
  const right = mk(opt['api-key']);
  const page = await right.models.list();
  assert(page.data.some((m) => m.id === BASE), `models with the right key: ${show(page.data)}`);
  const r = await right.chat.completions.create({ model: BASE, messages: CHAT, max_tokens: 3,
                                                  temperature: 0 });
  assertEq(r.usage.completion_tokens, 3, 'chat with the right key: completion_tokens');
});

await check('RateLimitError (429) when the only slot is busy; served again once it is free',
  async () => {
    assert(opt['busy-url'] && opt['busy-model'], '--busy-url and --busy-model not given');
    const busy = new OpenAI({ baseURL: opt['busy-url'], apiKey: 'sk-unused', maxRetries: 0,
                              timeout: TIMEOUT_MS });
    const ids = Array.from({ length: 16 }, (_, i) => 3 + i);
    // logprobs make every token a chunk (this model has no tokenizer, so no text): the
    // first chunk proves the long request holds the slot.
    const long = await busy.completions.create({
      model: opt['busy-model'], prompt: ids, max_tokens: Number(opt['busy-max-tokens']),
      temperature: 0, logprobs: 1, stream: true, ignore_eos: true });
    const it = long[Symbol.asyncIterator]();
    const first = await it.next();
    assert(!first.done && first.value.choices[0].logprobs?.tokens?.length >= 1,
           `the long request's first chunk: ${show(first.value)}`);
    try {
      const small = { model: opt['busy-model'], prompt: ids, max_tokens: 2 };
      const e = await expectError(busy.completions.create(small), OpenAI.RateLimitError, 429,
                                  'a second request while the slot is busy');
      assert(e.headers?.get('retry-after'), 'no Retry-After header on the 429');
      // the long request was not disturbed
      const next = await it.next();
      assert(!next.done && next.value.choices[0].finish_reason === null,
             `the long request after the 429: ${show(next.value)}`);
    } finally {
      await it.return();   // aborts the HTTP request; the daemon cancels the generation
    }
    const deadline = Date.now() + 30000;
    for (;;) {
      try {
        const r = await busy.completions.create({ model: opt['busy-model'], prompt: ids,
                                                  max_tokens: 2, ignore_eos: true });
        assertEq(r.usage.completion_tokens, 2, 'the request after the slot was freed');
        break;
      } catch (e) {
        if (!(e instanceof OpenAI.RateLimitError)) throw e;
        assert(Date.now() < deadline, 'still 429 30 s after the long stream was abandoned');
        await new Promise((res) => setTimeout(res, 100));
      }
    }
  });

console.log(`${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
