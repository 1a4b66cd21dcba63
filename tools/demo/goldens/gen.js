// Encodes the held-out strings of strings.json (written by tools/demo/train.py) with Hugging
// Face's reference `tokenizers` library and models/demo/base/tokenizer.json, for
// tests/test_demo.py. Run: npm ci && node gen.js [TOKENIZER_JSON OUT_JSON] (from this directory;
// `make demo-model` does).
'use strict';
const fs = require('fs');
const path = require('path');
const { Tokenizer } = require('tokenizers');

const ROOT = path.resolve(__dirname, '../../..');
const TOK = process.argv[2] || path.join(ROOT, 'models/demo/base/tokenizer.json');
const BATCH_TOKENS = 500;
const OUT = process.argv[3] || path.join(ROOT, 'models/demo/tokenizer-goldens.json');

async function main() {
  const tok = Tokenizer.fromFile(TOK);
  const strings = JSON.parse(fs.readFileSync(path.join(__dirname, 'strings.json'), 'utf8'));
  const cases = [];
  for (const text of strings) {
    const enc = await tok.encode(text, null, { addSpecialTokens: true });
    const ids = enc.getIds();
    cases.push({ text, ids, decode: await tok.decode(ids, false) });
  }
  // Runs of strings joined by <|endoftext|> (an added token: the text is split there
  // before anything else), at most BATCH_TOKENS ids each (the model's context is 512), so
  // that the test checks every string with a few lorad runs.
  const batches = [];
  for (let k = 0; k < cases.length;) {
    let n = 0, len = -1;
    while (k + n < cases.length && (n === 0 || len + 1 + cases[k + n].ids.length <= BATCH_TOKENS)) {
      len += 1 + cases[k + n].ids.length;
      n++;
    }
    const text = strings.slice(k, k + n).join('<|endoftext|>');
    const enc = await tok.encode(text, null, { addSpecialTokens: true });
    batches.push({ first: k, count: n, text, ids: enc.getIds() });
    k += n;
  }
  const out = { reference: 'tokenizers@' + require('tokenizers/package.json').version,
                tokenizer: 'models/demo/base/tokenizer.json', cases, batches };
  fs.writeFileSync(OUT, JSON.stringify(out, null, 0) + '\n');
  const rt = cases.filter((c) => c.decode === c.text).length;
  console.log(`${OUT}: ${cases.length} cases (${rt} round-trip) in ${batches.length} batches`);
}
main().catch((e) => { console.error(e); process.exit(1); });
