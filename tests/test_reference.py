#!/usr/bin/python3
"""test_reference.py BUILD: checks BUILD/lorad against the numpy reference (tests/reference.py).

1. Generates fixtures into BUILD/fixtures with tools/make_fixtures.py (skipped when
   BUILD/fixtures/manifest.json is newer than the generator).
2. Validates the reference itself (causality, merged == on-the-fly, RoPE properties) and
   the fixtures (sha256, adapters really change the logits, bf16 rounding).
3. Runs `BUILD/lorad generate ... --max-tokens 8 --logprobs 5 --json` for every model,
   every adapter on the fly and merged, a weighted mix, `lorad merge` output, and checks
   with teacher forcing: the reference is fed prompt + generated ids and, at every
   generated position, (a) the chosen id is the reference argmax (a different id is
   accepted only if its reference logprob is within 1e-4 of the max: a near-tie),
   (b) the chosen and every top-K logprob match the reference within 2e-4, (c) the k-th
   top id has the reference's k-th largest logprob (swaps allowed only within 1e-4).
   Sliding-window models (mistral_window W=6, qwen2_window W=5): 20-token prompts (and
   a 48-token one) + 8 generated tokens; the reference proves first that its window
   really changes the compared logprobs (vs full attention and vs W+-1), so these
   cases cannot pass with a missing or off-by-one window.
   Many sequences at once: MANY requests (every llama_tied adapter, the mix and the base,
   prompts of 6 to 36 tokens) reach one `lorad serve` together (sent while the daemon is
   stopped with SIGSTOP, so the engine admits them into the same batches; its step count
   must stay below half of what running them one after another takes), and each answer
   passes the same teacher-forced check.
4. `lorad inspect` on every fixture (exit 0, JSON) and on broken ones (exit 1).
5. Models with a real tokenizer (llama_tok_llama2, qwen2_tok_qwen3): `--prompt TEXT` on
   golden corpus strings gives exactly the golden encode-with-special-tokens ids (the
   reference `tokenizers` library's, tests/fixtures/tokenizer/*/golden.json) and the
   generated tokens pass the teacher-forced reference check; --prompt-ids of the same ids
   gives the same output; `text` equals an independent Python decode of the generated ids
   (PyDecoder, itself checked against every golden decode first) and what plain mode
   streams to stdout; --stop cuts text at the first occurrence of the earliest stop string
   (finish_reason stop, ids a prefix of the unstopped run); --prompt/--stop without
   tokenizer.json fail clearly.

Prints "PASS name" / "FAIL name: reason" per check and, last, "N passed, N failed";
exits 1 if anything failed. A missing BUILD/lorad makes every engine check FAIL.
"""
import concurrent.futures
import hashlib
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import reference as R  # noqa: E402

GENERATOR = os.path.join(REPO, "tools", "make_fixtures.py")
PYTHON = "/usr/bin/python3"
MAX_TOKENS = 8
TOPK = 5
ATOL = 2e-4          # float32 engine vs float64 reference, tiny models
TIE = 1e-4           # reference gaps below this are near-ties: either order is fine
TIMEOUT = 120        # seconds per lorad run (ASan builds are slow)
MIX = [("ad_all", 0.7), ("ad_qv", 0.5)]
MANY = 16            # sequences sent to one daemon at once (case many_sequences_at_once)


class Fail(Exception):
    pass


# --------------------------------------------------------------------------- plumbing
class Suite:
    def __init__(self):
        self.passed = 0
        self.failed = 0

    def report(self, name, err):
        if err is None:
            self.passed += 1
            print("PASS " + name, flush=True)
        else:
            self.failed += 1
            print("FAIL %s: %s" % (name, err), flush=True)

    def run(self, name, fn, *args):
        self.report(name, _call(fn, *args))


def _call(fn, *args):
    try:
        fn(*args)
        return None
    except Fail as e:
        return str(e)
    except Exception as e:  # a bug in a check is a failure too, never a crash
        return "%s: %s" % (type(e).__name__, e)


def ensure_fixtures(build):
    fx = os.path.join(build, "fixtures")
    man = os.path.join(fx, "manifest.json")
    if (not os.path.exists(man)
            or os.path.getmtime(man) < os.path.getmtime(GENERATOR)):
        t0 = time.time()
        subprocess.run([PYTHON, GENERATOR, fx], check=True, timeout=300,
                       stdout=subprocess.DEVNULL)
        print("fixtures: generated in %.2f s" % (time.time() - t0))
    with open(man) as f:
        return fx, json.load(f)


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


class Lorad:
    def __init__(self, build):
        self.path = os.path.join(build, "lorad")
        self.env = dict(os.environ)
        self.env.setdefault("OPENBLAS_NUM_THREADS", "1")

    def available(self):
        return os.path.isfile(self.path) and os.access(self.path, os.X_OK)

    def run(self, args, raw=False):
        """(returncode, stdout, stderr); raises Fail on a missing binary, a timeout or a
        sanitizer report. raw=True: stdout as bytes (its UTF-8 validity is then checked by
        the caller); otherwise both are decoded as UTF-8 (undecodable bytes replaced)."""
        if not self.available():
            raise Fail("%s not found or not executable (build it first)" % self.path)
        try:
            p = subprocess.run([self.path] + args, capture_output=True, timeout=TIMEOUT,
                               env=self.env)
        except subprocess.TimeoutExpired:
            raise Fail("timed out after %d s: lorad %s" % (TIMEOUT, " ".join(args)))
        err = p.stderr.decode("utf-8", "replace")
        for marker in ("AddressSanitizer", "LeakSanitizer", "runtime error:"):
            if marker in err:
                raise Fail("sanitizer report (%s): %s" % (marker, tail(err)))
        if p.returncode < 0:
            raise Fail("killed by signal %d: lorad %s" % (-p.returncode, " ".join(args)))
        out = p.stdout if raw else p.stdout.decode("utf-8", "replace")
        return p.returncode, out, err


def tail(s, n=400):
    s = s.strip().replace("\n", " | ")
    return s if len(s) <= n else "..." + s[-n:]


def parse_json(out):
    out = out.strip()
    try:
        return json.loads(out)
    except ValueError:
        lines = [ln for ln in out.splitlines() if ln.strip()]
        if lines:
            try:
                return json.loads(lines[-1])
            except ValueError:
                pass
    raise Fail("stdout is not JSON: %r" % out[:200])


# --------------------------------------------------------------------------- prompts
def pick_prompt(fx, man, model, length, want_eos=False, tries=400):
    """A deterministic prompt (seeded by the model name) whose reference greedy path is
    unambiguous (top-2 gap > 1e-3). want_eos=False: no EOS in the first MAX_TOKENS
    tokens; want_eos=True: EOS at step 2..MAX_TOKENS-1 (exercises finish_reason stop)."""
    info = man["models"][model]
    mdir = os.path.join(fx, info["path"])
    special = set(info["eos_token_ids"]) | {info["bos_token_id"]}
    body = [t for t in range(info["vocab_size"]) if t not in special]
    rng = np.random.default_rng(zlib.crc32(("%s/%d/%d" % (model, length, want_eos)).encode()))
    fallback = None
    for _ in range(tries):
        prompt = [info["bos_token_id"]] + [int(t) for t in rng.choice(body, length - 1)]
        gen = R.greedy(mdir, prompt, MAX_TOKENS)
        lp = R.logprobs(mdir, prompt + gen)[len(prompt) - 1:len(prompt) - 1 + len(gen)]
        srt = np.sort(lp, axis=1)
        if (srt[:, -1] - srt[:, -2]).min() < 1e-3:
            continue
        hit = gen[-1] in info["eos_token_ids"]
        if not want_eos and not hit:
            return prompt
        if want_eos and hit and 2 <= len(gen) < MAX_TOKENS:
            return prompt
        if fallback is None and not want_eos:
            fallback = prompt
    if fallback is None:
        raise Fail("no suitable prompt found for %s" % model)
    return fallback


# --------------------------------------------------------------------------- checking
def verify(result, fx, man, model, prompt, adapters, max_tokens=MAX_TOKENS, weights=None,
           merged=False):
    """Teacher-forced comparison of one `lorad generate --json` result with the reference.
    adapters: [(adapter_name, weight)]; max_tokens: the --max-tokens of the run; weights:
    the run's --weights (the reference holds the matrices the same way); merged: the run
    merged the adapters (which matters only when W' is rounded: bf16, q8)."""
    info = man["models"][model]
    mdir = os.path.join(fx, info["path"])
    ads = [(os.path.join(fx, man["adapters"][a]["path"]), w) for a, w in adapters]
    eos = set(info["eos_token_ids"])
    for key in ("prompt_ids", "ids", "text", "finish_reason", "logprobs"):
        if key not in result:
            raise Fail("JSON lacks %r" % key)
    if result["prompt_ids"] != prompt:
        raise Fail("prompt_ids %s != input %s" % (result["prompt_ids"], prompt))
    if not isinstance(result["text"], str):
        raise Fail("text is not a string")
    ids = result["ids"]
    if not (isinstance(ids, list) and all(isinstance(t, int) for t in ids)):
        raise Fail("ids is not a list of ints")
    if not 1 <= len(ids) <= max_tokens:
        raise Fail("%d ids generated (max-tokens %d)" % (len(ids), max_tokens))
    if any(t in eos for t in ids[:-1]):
        raise Fail("generation continued past EOS: %s" % ids)
    lps = result["logprobs"]
    if not isinstance(lps, list) or len(lps) != len(ids):
        raise Fail("logprobs has %s entries for %d ids"
                   % (len(lps) if isinstance(lps, list) else "no", len(ids)))
    rounded = merged and weights in ("bf16", "q8")

    def ref_logprobs(seq):
        return R.logprobs(mdir, seq, ads, merged=rounded, weights=weights)

    ref = ref_logprobs(prompt + ids)
    n0 = len(prompt) - 1
    for j, (t, e) in enumerate(zip(ids, lps)):
        row = ref[n0 + j]
        srt = np.sort(row)[::-1]
        where = "position %d (token %d of output)" % (n0 + 1 + j, j)
        if e.get("id") != t:
            raise Fail("%s: logprobs id %s != ids entry %d" % (where, e.get("id"), t))
        if srt[0] - row[t] >= TIE:
            raise Fail("%s: chose %d (ref logprob %.6f) but reference argmax is %d (%.6f)"
                       % (where, t, row[t], int(np.argmax(row)), srt[0]))
        if abs(e["logprob"] - row[t]) > ATOL:
            raise Fail("%s: logprob of %d is %.6f, reference %.6f (diff %.2e)"
                       % (where, t, e["logprob"], row[t], e["logprob"] - row[t]))
        top = e.get("top")
        k = min(TOPK, info["vocab_size"])
        if not isinstance(top, list) or len(top) != k:
            raise Fail("%s: top has %s entries, want %d"
                       % (where, len(top) if isinstance(top, list) else "no", k))
        tids = [x["id"] for x in top]
        if len(set(tids)) != k:
            raise Fail("%s: duplicate ids in top %s" % (where, tids))
        for r, x in enumerate(top):
            i, v = x["id"], x["logprob"]
            if not (isinstance(i, int) and 0 <= i < info["vocab_size"]):
                raise Fail("%s: bad top id %r" % (where, i))
            if abs(v - row[i]) > ATOL:
                raise Fail("%s: top[%d] id %d logprob %.6f, reference %.6f (diff %.2e)"
                           % (where, r, i, v, row[i], v - row[i]))
            if abs(row[i] - srt[r]) >= TIE:
                raise Fail("%s: top[%d] is %d (ref %.6f) but reference rank %d is %d (%.6f)"
                           % (where, r, i, row[i], r,
                              int(np.argsort(-row, kind="stable")[r]), srt[r]))
            if r and v > top[r - 1]["logprob"] + 1e-6:
                raise Fail("%s: top not sorted by logprob" % where)
    fr = result["finish_reason"]
    if ids[-1] in eos:
        if fr != "stop":
            raise Fail("ended with EOS %d but finish_reason %r" % (ids[-1], fr))
    elif fr == "stop":
        # EOS not echoed in ids: then the reference must have chosen EOS next
        nxt = ref_logprobs(prompt + ids)[-1]
        if int(np.argmax(nxt)) not in eos or len(ids) >= max_tokens:
            raise Fail("finish_reason stop without EOS (next ref argmax %d)"
                       % int(np.argmax(nxt)))
    elif fr == "length":
        if len(ids) != max_tokens:
            raise Fail("finish_reason length after %d of %d tokens" % (len(ids), max_tokens))
    else:
        raise Fail("finish_reason %r" % fr)


def gen_args(fx, man, model, prompt, adapters, merge, weights=None):
    a = ["generate", "--model", os.path.join(fx, man["models"][model]["path"])]
    if weights:
        a += ["--weights", weights]
    for name, w in adapters:
        p = os.path.join(fx, man["adapters"][name]["path"])
        a += ["--adapter", p if w == 1.0 else "%s:%g" % (p, w)]
    if merge:
        a.append("--merge")
    a += ["--prompt-ids", ",".join(map(str, prompt)), "--max-tokens", str(MAX_TOKENS),
          "--logprobs", str(TOPK), "--json"]
    return a


def run_generate(lorad, fx, man, model, prompt, adapters=(), merge=False, model_dir=None,
                 weights=None):
    args = gen_args(fx, man, model, prompt, adapters, merge, weights)
    if model_dir is not None:
        args[2] = model_dir
    rc, out, err = lorad.run(args)
    if rc != 0:
        raise Fail("exit %d: %s" % (rc, tail(err)))
    return parse_json(out)


def close_results(a, b, what):
    if a["ids"] != b["ids"]:
        raise Fail("%s: ids %s != %s" % (what, a["ids"], b["ids"]))
    for j, (x, y) in enumerate(zip(a["logprobs"], b["logprobs"])):
        if abs(x["logprob"] - y["logprob"]) > ATOL:
            raise Fail("%s: token %d logprob %.6f vs %.6f" % (what, j, x["logprob"], y["logprob"]))


# --------------------------------------------------------------------------- reference checks
def check_manifest(fx, man):
    for rel, h in man["sha256"].items():
        p = os.path.join(fx, rel)
        if not os.path.exists(p):
            raise Fail("missing " + rel)
        if sha256(p) != h:
            raise Fail("sha256 mismatch: " + rel)


def check_causality(fx, man, model, prompt):
    mdir = os.path.join(fx, man["models"][model]["path"])
    full = R.logprobs(mdir, prompt)
    for n in (1, len(prompt) // 2, len(prompt) - 1):
        part = R.logprobs(mdir, prompt[:n])
        d = np.abs(part - full[:n]).max()
        if d > 1e-10:
            raise Fail("prefix of %d differs from full sequence by %.2e" % (n, d))
    if not np.allclose(np.exp(full).sum(axis=1), 1.0, atol=1e-12):
        raise Fail("rows do not sum to 1")


def check_merge_equiv(fx, man, model, prompt, adapters):
    mdir = os.path.join(fx, man["models"][model]["path"])
    ads = [(os.path.join(fx, man["adapters"][a]["path"]), w) for a, w in adapters]
    a = R.logprobs(mdir, prompt, ads)
    b = R.logprobs(mdir, prompt, ads, merged=True)
    d = np.abs(a - b).max()
    if d > 1e-9:
        raise Fail("merged vs on-the-fly differ by %.2e" % d)


def check_mix_linear(fx, man, model, prompt):
    """A weighted mix equals one adapter whose B is the weighted, scaled concatenation."""
    mdir = os.path.join(fx, man["models"][model]["path"])
    ads = [(R.load_adapter(os.path.join(fx, man["adapters"][a]["path"])), w) for a, w in MIX]
    m = R.load_model(mdir)
    # delta of every module computed directly from the files, summed by hand
    deltas = {}
    for layer in range(m.cfg.n_layers):
        for p in R.PROJS:
            mod = R.module_name(layer, p)
            tot = np.zeros(R.proj_shape(m.cfg, p))
            for ad, w in ads:
                d = ad.delta(mod, R.proj_shape(m.cfg, p))
                if d is not None:
                    tot += w * d[0] * (d[2] @ d[1])
            deltas[mod] = tot
    saved = dict(m.w)
    try:
        for mod, d in deltas.items():
            m.w[mod + ".weight"] = saved[mod + ".weight"] + d
        a = R.log_softmax(R.forward_logits(m, prompt))
    finally:
        m.w.clear()
        m.w.update(saved)
    b = R.logprobs(mdir, prompt, [(os.path.join(fx, man["adapters"][n]["path"]), w)
                                  for n, w in MIX])
    d = np.abs(a - b).max()
    if d > 1e-9:
        raise Fail("hand-merged mix differs by %.2e" % d)


def check_adapter_effect(fx, man, name, prompt):
    a = man["adapters"][name]
    mdir = os.path.join(fx, man["models"][a["base"]]["path"])
    base = R.logprobs(mdir, prompt)
    with_ad = R.logprobs(mdir, prompt, [(os.path.join(fx, a["path"]), 1.0)])
    d = np.abs(with_ad - base).max()
    if d < 0.05:
        raise Fail("adapter changes logprobs by only %.3g" % d)
    if d > 40:
        raise Fail("adapter changes logprobs wildly (%.3g)" % d)


def check_rope(fx, man):
    rng = np.random.default_rng(0)
    m = R.load_model(os.path.join(fx, man["models"]["llama3_rope"]["path"]))
    inv = m.inv_freq
    # relative-position property: <rope(q, m), rope(k, n)> depends on m - n only
    q, k = rng.standard_normal((2, 1, 1, m.cfg.head_dim))
    dots = []
    for p0 in (0, 7, 50):
        qq = R.apply_rope(q, np.array([p0 + 9]), inv)
        kk = R.apply_rope(k, np.array([p0]), inv)
        dots.append(float((qq * kk).sum()))
    if max(dots) - min(dots) > 1e-10:
        raise Fail("rope dot products depend on absolute position: %s" % dots)
    # llama3 scaling: the fixture must hit all three regimes
    plain = 1.0 / (m.cfg.theta ** (np.arange(0, m.cfg.head_dim, 2) / m.cfg.head_dim))
    ratio = inv / plain
    fac = m.cfg.rope_scaling["factor"]
    kept = np.isclose(ratio, 1.0)
    divided = np.isclose(ratio, 1.0 / fac)
    smooth = ~kept & ~divided
    if not (kept.any() and divided.any() and smooth.any()):
        raise Fail("llama3 fixture does not exercise all three regimes: %s" % ratio)
    if not np.all((ratio[smooth] > 1.0 / fac) & (ratio[smooth] < 1.0)):
        raise Fail("smoothed frequencies out of range: %s" % ratio)
    # position 0 leaves q unchanged
    if np.abs(R.apply_rope(q, np.array([0]), inv) - q).max() > 0:
        raise Fail("rope at position 0 is not the identity")


def window_of(fx, man, model):
    """The fixture's sliding window W (the same for every layer), checked against what
    the reference reads from config.json."""
    info = man["models"][model]
    w = info.get("sliding_window")
    if not w:
        raise Fail("manifest: %s has no sliding_window" % model)
    m = R.load_model(os.path.join(fx, info["path"]))
    if m.cfg.layer_windows != [w] * m.cfg.n_layers:
        raise Fail("reference reads windows %s from config.json, manifest says %d"
                   % (m.cfg.layer_windows, w))
    return w


def check_window_matters(fx, man, model, prompt):
    """On prompt + its reference greedy continuation (the sequence the engine cases
    compare): the window leaves positions < W alone (they see every key anyway) and
    changes position W (the first that loses a key) and the compared positions by more
    than 1e-3 against full attention and against windows W-1 and W+1."""
    w = window_of(fx, man, model)
    mdir = os.path.join(fx, man["models"][model]["path"])
    n_layers = R.load_model(mdir).cfg.n_layers
    seq = prompt + R.greedy(mdir, prompt, MAX_TOKENS)
    if len(seq) <= w + 1:
        raise Fail("sequence of %d tokens does not reach past the window %d" % (len(seq), w))
    ref = R.logprobs(mdir, seq)
    full = R.logprobs(mdir, seq, windows=[None] * n_layers)
    d = np.abs(ref - full).max(axis=1)
    if d[:w].max() > 1e-12:
        raise Fail("window changes positions < W=%d (by %.2e)" % (w, d[:w].max()))
    if d[w] <= 1e-3:
        raise Fail("window does not change position W=%d (%.2e)" % (w, d[w]))
    compared = slice(len(prompt) - 1, len(seq) - 1)
    for name, other in (("full attention", full),
                        ("window W-1", R.logprobs(mdir, seq, windows=[w - 1] * n_layers)),
                        ("window W+1", R.logprobs(mdir, seq, windows=[w + 1] * n_layers))):
        dd = np.abs(ref[compared] - other[compared]).max(axis=1)
        if dd.min() <= 1e-3:
            raise Fail("vs %s: compared position %d differs by only %.2e"
                       % (name, len(prompt) - 1 + int(np.argmin(dd)), dd.min()))


def check_window_config(fx, man):
    """The reference's reading of transformers' window config keys, on edited copies of
    the window fixtures' config.json: Qwen2 max_window_layers (layers >= it slide),
    use_sliding_window false, explicit layer_types; Mistral sliding_window null (off) and
    missing (MistralConfig default 4096)."""
    def windows(model, edit):
        src = os.path.join(fx, man["models"][model]["path"], "config.json")
        with open(src) as f:
            c = json.load(f)
        edit(c)
        return R.layer_windows(c, c["architectures"][0], c["num_hidden_layers"])

    def expect(got, want, what):
        if got != want:
            raise Fail("%s: windows %s, want %s" % (what, got, want))

    def setk(**kv):
        return lambda c: c.update(kv)

    def drop(key):
        return lambda c: c.pop(key)

    expect(windows("qwen2_window", setk()), [5, 5], "qwen2_window as written")
    expect(windows("qwen2_window", setk(max_window_layers=1)), [None, 5],
           "max_window_layers 1")
    expect(windows("qwen2_window", setk(max_window_layers=2)), [None, None],
           "max_window_layers 2")
    expect(windows("qwen2_window", drop("max_window_layers")), [None, None],
           "max_window_layers missing (default 28)")
    expect(windows("qwen2_window", setk(use_sliding_window=False)), [None, None],
           "use_sliding_window false")
    expect(windows("qwen2_window", drop("use_sliding_window")), [None, None],
           "use_sliding_window missing")
    expect(windows("qwen2_window", setk(layer_types=["sliding_attention", "full_attention"])),
           [5, None], "explicit layer_types")
    expect(windows("mistral_window", setk()), [6, 6], "mistral_window as written")
    expect(windows("mistral_window", setk(sliding_window=None)), [None, None],
           "mistral sliding_window null")
    expect(windows("mistral_window", drop("sliding_window")), [4096, 4096],
           "mistral sliding_window missing")
    # the mask itself: W keys per query, its own included
    m = R.attention_mask(9, 3)
    for q in range(9):
        seen = [k for k in range(9) if m[q, k] == 0]
        if seen != list(range(max(0, q - 2), q + 1)):
            raise Fail("mask row %d sees %s" % (q, seen))


def check_bf16_rounding():
    sys.path.insert(0, os.path.join(REPO, "tools"))
    import make_fixtures as MF
    vals = np.array([1.0, 1.0 + 2 ** -8, 1.0 + 3 * 2 ** -8, 1.0 + 2 ** -8 + 2 ** -20, -2.5,
                     3.0e38], dtype=np.float32)
    want = [0x3F80, 0x3F80, 0x3F82, 0x3F81, 0xC020, 0x7F62]
    got = [int(x) for x in MF.f32_to_bf16_bits(vals)]
    if got != want:
        raise Fail("bf16 bits %s, want %s" % ([hex(g) for g in got], [hex(w) for w in want]))


def check_unmodified(fx, man):
    check_manifest(fx, man)


# --------------------------------------------------------------------------- engine cases
def case_generate(lorad, fx, man, model, prompt, adapters=(), merge=False):
    res = run_generate(lorad, fx, man, model, prompt, adapters, merge)
    verify(res, fx, man, model, prompt, adapters)


def case_weights(lorad, fx, man, model, prompt, weights, adapters=(), merge=False):
    """--weights bf16 / q8 (and f32 on a BF16 checkpoint): the reference holds the matrices
    the same way, so the same tolerance applies; and the rounding must matter — the
    reference's own logprobs with and without it differ by more than the tolerance (else
    the case could not tell a --weights that does nothing)."""
    res = run_generate(lorad, fx, man, model, prompt, adapters, merge, weights=weights)
    verify(res, fx, man, model, prompt, adapters, weights=weights, merged=merge)
    mdir = os.path.join(fx, man["models"][model]["path"])
    ads = [(os.path.join(fx, man["adapters"][a]["path"]), w) for a, w in adapters]
    seq = prompt + res["ids"]
    plain = R.logprobs(mdir, seq, ads)
    held = R.logprobs(mdir, seq, ads, merged=merge and weights != "f32", weights=weights)
    n0 = len(prompt) - 1
    gap = float(np.abs(plain[n0:] - held[n0:]).max())
    if weights != "f32" and gap <= ATOL:
        raise Fail("rounding to %s moves the reference's logprobs only %.1e: the case "
                   "proves nothing" % (weights, gap))


def case_merge_cli_bf16(lorad, fx, man, scratch, model, prompt, adapters):
    """`lorad merge --weights bf16` writes BF16 tensors whose model generates what the
    reference's merged, BF16-rounded W' gives."""
    out = os.path.join(scratch, "merged_bf16")
    shutil.rmtree(out, ignore_errors=True)
    args = ["merge", "--model", os.path.join(fx, man["models"][model]["path"]),
            "--weights", "bf16"]
    for name, w in adapters:
        args += ["--adapter", "%s:%g" % (os.path.join(fx, man["adapters"][name]["path"]), w)]
    rc, _, err = lorad.run(args + ["--out", out])
    if rc != 0:
        raise Fail("merge exit %d: %s" % (rc, tail(err)))
    with open(os.path.join(out, "model.safetensors"), "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
    dtypes = {k: v["dtype"] for k, v in header.items() if k != "__metadata__"}
    if dtypes.get("model.layers.0.self_attn.q_proj.weight") != "BF16":
        raise Fail("merged q_proj is %s, want BF16" % dtypes.get(
            "model.layers.0.self_attn.q_proj.weight"))
    with open(os.path.join(out, "config.json")) as f:
        if json.load(f).get("torch_dtype") != "bfloat16":
            raise Fail("config.json torch_dtype is not bfloat16")
    merged = run_generate(lorad, fx, man, model, prompt, model_dir=out)
    verify(merged, fx, man, model, prompt, adapters, weights="bf16", merged=True)
    rc, _, err = lorad.run(args[:-2] + ["--weights", "q8", "--out", out + "_q8"])
    if rc == 0 or "q8" not in err:
        raise Fail("merge --weights q8 should be refused with a reason (exit %d: %s)"
                   % (rc, tail(err)))


def thp_enabled():
    """Transparent huge pages not "[never]": what placing pages needs (hugemem.h)."""
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            return "[never]" not in f.read()
    except OSError:
        return False


def case_place_pages(lorad, scratch):
    """--place-pages on `lorad generate` (off by default: README "Command line") and never
    on `lorad merge`, on a model whose weights (54 MB) and merged W' (38 MB) are big enough
    to place (32 MB and up): the weights' and W's placement lines appear in the -v log only
    with --place-pages yes, and placing changes no output (pages move, not values)."""
    sys.path.insert(0, os.path.join(REPO, "tools"))
    import make_fixtures as MF
    root = os.path.join(scratch, "place")
    shutil.rmtree(root, ignore_errors=True)
    os.makedirs(root)
    m = dict(name="llama_place", arch="LlamaForCausalLM", model_type="llama", vocab=4096,
             hidden=512, inter=1536, layers=3, heads=8, kv=4, head_dim=None, max_pos=128,
             theta=10000.0, eps=1e-5, tie=False, dtype="F32", bias=False, bos=1, eos=2,
             gen_config=False, features=[])
    a = dict(name="place_ad", base="llama_place", r=4, alpha=8, target=list(MF.PROJS),
             dtype="F32", features=[])
    rng = np.random.default_rng(20261204)
    MF.write_model(root, m, rng)
    MF.write_adapter(root, a, {"llama_place": m}, rng)
    mdir, adir = os.path.join(root, "llama_place"), os.path.join(root, "adapters", "place_ad")
    gen = ["generate", "--model", mdir, "--adapter", adir, "--merge", "--prompt-ids",
           "1,5,9,13", "--max-tokens", "4", "--logprobs", "2", "--json", "-v"]
    runs = {}
    for flag in (None, "no", "yes"):
        rc, out, err = lorad.run(gen + (["--place-pages", flag] if flag else []))
        if rc != 0:
            raise Fail("generate --place-pages %s: exit %d: %s" % (flag, rc, tail(err)))
        runs[flag] = (parse_json(out), err)
    for flag in (None, "no"):
        if "placed in" in runs[flag][1]:
            raise Fail("generate placed pages with --place-pages %s: %s"
                       % (flag or "(default)", tail(runs[flag][1])))
    if thp_enabled():
        for what in ("the weights: ", "merged weights: "):
            line = [x for x in runs["yes"][1].splitlines() if what in x]
            if not line or "placed in" not in line[0]:
                raise Fail("no placement line for %r with --place-pages yes: %s"
                           % (what, tail(runs["yes"][1])))
    for k in ("ids", "logprobs"):
        if runs["yes"][0][k] != runs[None][0][k]:
            raise Fail("%s differ with --place-pages yes: %r vs %r"
                       % (k, runs["yes"][0][k], runs[None][0][k]))
    rc, _, err = lorad.run(gen + ["--place-pages", "maybe"])
    if rc != 2 or "--place-pages must be yes or no" not in err:
        raise Fail("--place-pages maybe: exit %d: %s" % (rc, tail(err)))
    merge = ["merge", "--model", mdir, "--adapter", adir, "--out", os.path.join(root, "out"),
             "-v"]
    rc, _, err = lorad.run(merge)
    if rc != 0 or "placed in" in err:
        raise Fail("merge: exit %d, and it must not place pages: %s" % (rc, tail(err)))
    rc, _, err = lorad.run(merge + ["--place-pages", "yes"])
    if rc != 2 or "unknown option --place-pages" not in err:
        raise Fail("merge --place-pages: exit %d, want 2 (unknown option): %s" % (rc, tail(err)))


def case_window_layers(lorad, fx, man, scratch, prompt):
    """Qwen2 max_window_layers: on a copy of qwen2_window with max_window_layers 1 only
    layer 1 slides. lorad must follow the reference, and the reference must differ from
    the all-layers window there (else the case proves nothing)."""
    src = os.path.join(fx, man["models"]["qwen2_window"]["path"])
    dst = os.path.join(scratch, "qwen2_window_mwl1")
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst)
    cfg_path = os.path.join(dst, "config.json")
    with open(cfg_path) as f:
        cfg = json.load(f)
    cfg["max_window_layers"] = 1
    with open(cfg_path, "w") as f:
        json.dump(cfg, f)
    res = run_generate(lorad, fx, man, "qwen2_window", prompt, model_dir=dst)
    seq = list(prompt) + res["ids"][:-1]
    ref = R.logprobs(dst, seq)
    both = R.logprobs(src, seq)
    if np.abs(ref - both)[len(prompt) - 1:].max() < 1e-3:
        raise Fail("max_window_layers 1 does not change the reference on this sequence")
    for j, tok in enumerate(res["logprobs"]):
        row = ref[len(prompt) - 1 + j]
        if tok["id"] != int(row.argmax()):
            raise Fail("token %d: lorad %d, reference argmax %d" % (j, tok["id"], row.argmax()))
        if abs(tok["logprob"] - row[tok["id"]]) > ATOL:
            raise Fail("token %d: logprob %.6f vs reference %.6f"
                       % (j, tok["logprob"], row[tok["id"]]))


def case_eos(lorad, fx, man, model, prompt):
    res = run_generate(lorad, fx, man, model, prompt)
    verify(res, fx, man, model, prompt, ())
    if res["finish_reason"] != "stop":
        raise Fail("expected finish_reason stop, got %r (ids %s)"
                   % (res["finish_reason"], res["ids"]))


def case_merge_cli(lorad, fx, man, scratch, tag, model, prompt, adapters):
    out = os.path.join(scratch, "merged_" + tag)
    shutil.rmtree(out, ignore_errors=True)
    args = ["merge", "--model", os.path.join(fx, man["models"][model]["path"])]
    for name, w in adapters:
        args += ["--adapter", "%s:%g" % (os.path.join(fx, man["adapters"][name]["path"]), w)]
    args += ["--out", out]
    rc, _, err = lorad.run(args)
    if rc != 0:
        raise Fail("merge exit %d: %s" % (rc, tail(err)))
    if not os.path.exists(os.path.join(out, "config.json")):
        raise Fail("merged dir has no config.json")
    rc, o, err = lorad.run(["inspect", out])
    if rc != 0:
        raise Fail("inspect of merged dir: exit %d: %s" % (rc, tail(err)))
    parse_json(o)
    merged = run_generate(lorad, fx, man, model, prompt, model_dir=out)
    # the merged model must act like base + adapters: check against the reference...
    verify(merged, fx, man, model, prompt, adapters)
    # ...and against the engine's own on-the-fly result
    fly = run_generate(lorad, fx, man, model, prompt, adapters)
    close_results(merged, fly, "merged dir vs on-the-fly")


def serve_harness():
    """tests/serve_harness.py, sharing this module's Fail (it imports test_reference, which
    runs as __main__ here: without this it would load a second copy)."""
    sys.modules.setdefault("test_reference", sys.modules[__name__])
    import serve_harness as sh
    return sh


def many_jobs(fx, man, model):
    """MANY (prompt, adapters) on model: the base, each of its adapters and the mix in
    turn, prompts of 6, 8, ... tokens (picked as for the one-at-a-time cases)."""
    variants = ([[]] + [[(n, 1.0)] for n, a in sorted(man["adapters"].items())
                        if a["base"] == model] + [MIX])
    return [(pick_prompt(fx, man, model, 6 + 2 * i), variants[i % len(variants)])
            for i in range(MANY)]


def as_generate_json(prompt, choice):
    """A completion choice (logprobs with return_tokens_as_token_ids) in the shape of
    `lorad generate --json`, for verify()."""
    lp = choice.get("logprobs")
    if not isinstance(lp, dict):
        raise Fail("no logprobs in %r" % choice)

    def tid(t):
        if not (isinstance(t, str) and t.startswith("token_id:")):
            raise Fail("token %r is not 'token_id:N'" % t)
        return int(t[len("token_id:"):])

    ids = [tid(t) for t in lp["tokens"]]
    entries = []
    for t, l, top in zip(ids, lp["token_logprobs"], lp["top_logprobs"]):
        tops = sorted(({"id": tid(k), "logprob": v} for k, v in top.items()),
                      key=lambda e: -e["logprob"])
        entries.append({"id": t, "logprob": l, "top": tops})
    return {"prompt_ids": prompt, "ids": ids, "text": choice.get("text"),
            "finish_reason": choice.get("finish_reason"), "logprobs": entries}


def case_many_at_once(build, fx, man, model, jobs):
    """Every job in one `lorad serve` at once, each checked against the reference like a
    lone `lorad generate`. The requests are sent while the daemon is stopped (SIGSTOP), so
    they arrive together; the engine's step count then proves they shared its steps."""
    sh = serve_harness()
    d = sh.Daemon(build, ["--model", os.path.join(fx, man["models"][model]["path"]),
                          "--served-model-name", "base", "--adapter-dir",
                          os.path.join(fx, "adapters"), "--max-seqs", str(MANY)])
    try:
        def body(prompt, adapters, max_tokens=MAX_TOKENS):
            b = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
                 "logprobs": TOPK, "return_tokens_as_token_ids": True}
            if len(adapters) == 1 and adapters[0][1] == 1.0:
                b["model"] = adapters[0][0]
            elif adapters:
                b["adapters"] = [{"name": n, "weight": w} for n, w in adapters]
            else:
                b["model"] = "base"
            return b

        # load every adapter first: a request waiting for a lazy load would start late
        for name in sorted({n for _, ads in jobs for n, _ in ads}):
            st, r = d.post("/v1/completions", body([1, 5], [(name, 1.0)], 1))
            sh.check(st == 200, "warm-up of %s answered %d: %s" % (name, st, r))
        m0 = d.metrics()
        steps0 = m0["lorad_engine_steps_total"]
        answers = [None] * len(jobs)
        sent = threading.Semaphore(0)

        def post(i):
            c = d.conn()
            try:
                c.request("POST", "/v1/completions", body=json.dumps(body(*jobs[i])).encode(),
                          headers={"Content-Type": "application/json"})
                sent.release()
                r = c.getresponse()
                answers[i] = (r.status, r.read())
            except Exception as e:  # reported below, with the job
                answers[i] = (None, repr(e))
                sent.release()
            finally:
                c.close()

        threads = [threading.Thread(target=post, args=(i,), daemon=True)
                   for i in range(len(jobs))]
        os.kill(d.proc.pid, signal.SIGSTOP)
        try:
            for t in threads:
                t.start()
            for _ in threads:
                if not sent.acquire(timeout=30):
                    raise Fail("the requests were not all sent within 30 s")
        finally:
            os.kill(d.proc.pid, signal.SIGCONT)
        deadline = time.time() + TIMEOUT
        for t in threads:
            t.join(max(0.0, deadline - time.time()))
            if t.is_alive():
                raise Fail("no answer within %d s" % TIMEOUT)
        m1 = d.metrics()
        steps = m1["lorad_engine_steps_total"] - steps0
        n_tokens = 0
        for i, ((prompt, adapters), (st, data)) in enumerate(zip(jobs, answers)):
            what = "job %d (%d-token prompt, %s)" % (i, len(prompt), adapters or "base")
            if st != 200:
                raise Fail("%s: answered %s: %r" % (what, st, data[:300]))
            try:
                res = as_generate_json(prompt, json.loads(data)["choices"][0])
                verify(res, fx, man, model, prompt, adapters)
            except Fail as e:
                raise Fail("%s: %s" % (what, e))
            n_tokens += len(res["ids"])
        # One after another they would take at least one step per generated token of each
        # request; together, far fewer (9-32 steps for 123 tokens in runs on the
        # development machine). The 16 requests reach the engine over some milliseconds
        # after SIGCONT (a thread per connection, while the suite runs another case beside
        # this one), and the fixture model's steps are well under a millisecond, so the
        # first requests can run many steps alone: one CI run took 75. Three quarters of
        # the sequential count still cannot be met one request at a time.
        if steps > n_tokens * 3 / 4:
            raise Fail("%d engine steps for %d tokens of %d requests: they did not run "
                       "together" % (steps, n_tokens, len(jobs)))
        # The rows the steps ran: every prompt once (the pool holds every request: no
        # preemption), one decode row per token after a request's first (an EOS that ends a
        # request may not be among its tokens), and time for them.
        rows = {k: m1["lorad_engine_%s_rows_total" % k] - m0["lorad_engine_%s_rows_total" % k]
                for k in ("prefill", "decode")}
        n_prompt = sum(len(prompt) for prompt, _ in jobs)
        if rows["prefill"] != n_prompt:
            raise Fail("%d prefill rows counted for %d prompt tokens"
                       % (rows["prefill"], n_prompt))
        if not n_tokens - len(jobs) <= rows["decode"] <= n_tokens:
            raise Fail("%d decode rows counted for %d tokens of %d requests"
                       % (rows["decode"], n_tokens, len(jobs)))
        if not m1["lorad_engine_step_seconds_total"] > m0["lorad_engine_step_seconds_total"]:
            raise Fail("lorad_engine_step_seconds_total did not grow")
        sh.check_alive_then_exit_0(d)
        sh.check_sanitizer_clean(d)
    finally:
        if d.alive():
            d.stop()


def case_inspect(lorad, path):
    rc, out, err = lorad.run(["inspect", path])
    if rc != 0:
        raise Fail("exit %d: %s" % (rc, tail(err)))
    obj = parse_json(out)
    if not isinstance(obj, dict):
        raise Fail("inspect output is not a JSON object")


def case_inspect_invalid(lorad, path):
    rc, out, err = lorad.run(["inspect", path])
    if rc != 1:
        raise Fail("exit %d, want 1 for an invalid %s" % (rc, path))


def make_broken(fx, man, scratch):
    """Broken copies: an adapter with a truncated safetensors file, a model whose
    safetensors header length points past the end of the file."""
    ad = os.path.join(scratch, "broken_adapter")
    shutil.copytree(os.path.join(fx, man["adapters"]["ad_all"]["path"]), ad)
    p = os.path.join(ad, "adapter_model.safetensors")
    size = os.path.getsize(p)
    with open(p, "r+b") as f:
        f.truncate(size - 100)
    md = os.path.join(scratch, "broken_model")
    shutil.copytree(os.path.join(fx, man["models"]["llama_tied"]["path"]), md)
    p = os.path.join(md, "model.safetensors")
    with open(p, "r+b") as f:
        f.write((1 << 40).to_bytes(8, "little"))
    return ad, md


# --------------------------------------------------------------------------- tokenizer cases
TOK_DIR = os.path.join(HERE, "fixtures", "tokenizer")
TOK_MAX_TOKENS = 4
# Golden corpus strings driven through `--prompt`, found in golden.json by their start.
TOK_TEXTS = (("prose", "The quick brown fox"), ("accents", "Café naïve"),
             ("cjk", "日本語のテキスト"), ("emoji", "emoji 😀"),
             ("code_tabs", "def f(x):\n\treturn"))
TOK_CHAT = ("chat_specials", "<|im_start|>user")   # added tokens inside the prompt (qwen3)
# Each Qwen3 run loads an 11 MB tokenizer.json (~0.4 s, ~1.7 s under ASan): these cases
# run on the Llama 2 tokenizer only (accents is a byte-level case like CJK for Qwen3).
TOK_LLAMA2_ONLY = ("accents", "stop_plain")
NEVER = "@@never@@"
# The prompt of the plain-mode and stop cases: with this fixture seed its 4 generated
# tokens give non-repetitive, non-ASCII text on both models (' البيت发挥了 TOR TOR',
# 'ỏegy varsроб'); a tied random model often repeats one token, which leaves no
# substring whose first occurrence comes later.
TOK_STOP_TEXT = "code_tabs"


def byte_level_chars():
    """GPT-2's bytes_to_unicode, inverted: printable stand-in char -> byte."""
    bs = (list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD))
          + list(range(0xAE, 0x100)))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


class PyDecoder:
    """An independent decode(ids, skip_special) for the two decoder chains of the fixture
    tokenizers, written from the `tokenizers` library's semantics: ByteLevel (Qwen3:
    token chars -> bytes -> UTF-8 with U+FFFD for invalid sequences) and Replace(▁, ' ') +
    ByteFallback + Fuse + Strip(' ', 1, 0) (Llama 2: a run of <0xNN> tokens becomes its
    UTF-8 text, or one U+FFFD per byte if the run is not valid UTF-8). check_pydecoder
    proves it against every golden decode before it is used to judge lorad's text."""

    def __init__(self, tokenizer_json):
        with open(tokenizer_json, encoding="utf-8") as f:
            tj = json.load(f)
        self.tokens = {i: t for t, i in tj["model"]["vocab"].items()}
        self.special = set()
        for a in tj.get("added_tokens", []):
            self.tokens[a["id"]] = a["content"]
            if a["special"]:
                self.special.add(a["id"])
        dec = tj["decoder"] or {}
        chain = [d["type"] for d in dec.get("decoders", [])]
        if dec.get("type") == "ByteLevel":
            self.kind, self.bytes_of = "byte_level", byte_level_chars()
        elif chain == ["Replace", "ByteFallback", "Fuse", "Strip"]:
            self.kind = "sentencepiece"
        else:
            raise ValueError("decoder %s not modelled" % json.dumps(dec)[:80])

    @staticmethod
    def byte_token(t):
        if len(t) == 6 and t.startswith("<0x") and t.endswith(">"):
            try:
                return int(t[3:5], 16)
            except ValueError:
                pass
        return None

    def decode(self, ids, skip_special=True):
        toks = [self.tokens[i] for i in ids
                if i in self.tokens and not (skip_special and i in self.special)]
        if self.kind == "byte_level":
            return bytes(self.bytes_of[c] for t in toks for c in t).decode("utf-8", "replace")
        out, run = [], []

        def end_run():
            if run:
                try:
                    out.append(bytes(run).decode("utf-8"))
                except UnicodeDecodeError:
                    out.append("\ufffd" * len(run))
                del run[:]
        for t in toks:
            b = self.byte_token(t)
            if b is not None:
                run.append(b)
                continue
            end_run()
            out.append(t.replace("\u2581", " "))
        end_run()
        s = "".join(out)
        return s[1:] if s.startswith(" ") else s


def load_golden(tok):
    with open(os.path.join(TOK_DIR, tok, "golden.json"), encoding="utf-8") as f:
        return json.load(f)


def golden_case(golden, prefix):
    for c in golden["cases"]:
        if c["text"].startswith(prefix):
            return c
    raise Fail("no golden case starting with %r" % prefix)


def check_pydecoder(dec, golden):
    """The Python decoder reproduces every golden decode (corpus and id lists), with and
    without skip_special: it is then fit to judge lorad's `text`."""
    pairs = [(c["ids_special"], c["decode"], c["decode_skip"]) for c in golden["cases"]]
    pairs += [(d["ids"], d["decode"], d["decode_skip"]) for d in golden["decodes"]]
    for ids, full, skip in pairs:
        for sk, want in ((False, full), (True, skip)):
            got = dec.decode(ids, sk)
            if got != want:
                raise Fail("decode(%s, skip_special=%s) = %r, golden %r"
                           % (ids[:12], sk, got[:80], want[:80]))


class RunCache:
    """Runs each distinct lorad command once, whichever case asks first (the cases run in
    a thread pool; a second asker waits for the first run). Failures are not cached."""

    def __init__(self, lorad):
        self.lorad = lorad
        self.lock = threading.Lock()
        self.slots = {}

    def run(self, args):
        with self.lock:
            slot = self.slots.setdefault(tuple(args), [threading.Lock(), None])
        with slot[0]:
            if slot[1] is None:
                slot[1] = self.lorad.run(args, raw=True)
            return slot[1]


def utf8(out, what):
    try:
        return out.decode("utf-8")
    except UnicodeDecodeError as e:
        raise Fail("%s is not valid UTF-8 (%s): %r" % (what, e, out[:120]))


def tok_args(fx, man, model, prompt_text=None, prompt_ids=None, stops=(), json_out=True):
    a = ["generate", "--model", os.path.join(fx, man["models"][model]["path"])]
    if prompt_text is not None:
        a += ["--prompt", prompt_text]
    else:
        a += ["--prompt-ids", ",".join(map(str, prompt_ids))]
    for s in stops:
        a += ["--stop", s]
    a += ["--max-tokens", str(TOK_MAX_TOKENS), "--logprobs", str(TOPK)]
    if json_out:
        a.append("--json")
    return a


def tok_json(cache, args):
    rc, out, err = cache.run(args)
    if rc != 0:
        raise Fail("exit %d: %s" % (rc, tail(err)))
    res = parse_json(utf8(out, "--json stdout"))
    for key in ("prompt_ids", "ids", "text", "finish_reason"):
        if key not in res:
            raise Fail("JSON lacks %r" % key)
    return res


def tok_plain(cache, args):
    rc, out, err = cache.run(args)
    if rc != 0:
        raise Fail("exit %d: %s" % (rc, tail(err)))
    return utf8(out, "plain-mode stdout")


def case_tok_prompt(cache, fx, man, model, dec, gcase):
    """(a) --prompt TEXT encodes to the golden ids with special tokens; the generated
    tokens pass the reference check; text is the independent decode of the ids."""
    res = tok_json(cache, tok_args(fx, man, model, prompt_text=gcase["text"]))
    want = gcase["ids_special"]
    if res["prompt_ids"] != want:
        diff = next((i for i, (x, y) in enumerate(zip(res["prompt_ids"], want)) if x != y),
                    min(len(res["prompt_ids"]), len(want)))
        raise Fail("prompt_ids differ from the golden encode at index %d: got %s, golden %s"
                   % (diff, res["prompt_ids"][:diff + 4], want[:diff + 4]))
    verify(res, fx, man, model, want, (), max_tokens=TOK_MAX_TOKENS)
    if res["text"] != dec.decode(res["ids"]):
        raise Fail("text %r != decode of ids %s: %r"
                   % (res["text"], res["ids"], dec.decode(res["ids"])))


def case_tok_prompt_ids_same(cache, fx, man, model, gcase):
    """(b) the same prompt as --prompt-ids: same ids, logprobs and text."""
    a = tok_json(cache, tok_args(fx, man, model, prompt_text=gcase["text"]))
    b = tok_json(cache, tok_args(fx, man, model, prompt_ids=gcase["ids_special"]))
    if b["prompt_ids"] != a["prompt_ids"]:
        raise Fail("prompt_ids %s != %s" % (b["prompt_ids"], a["prompt_ids"]))
    close_results(a, b, "--prompt-ids vs --prompt")
    if (a["text"], a["finish_reason"]) != (b["text"], b["finish_reason"]):
        raise Fail("text/finish %r/%s vs %r/%s" % (b["text"], b["finish_reason"], a["text"],
                                                   a["finish_reason"]))


def case_tok_plain(cache, fx, man, model, gcase, stops=()):
    """(c) plain mode streams exactly the JSON text, then a newline (also while a stop
    string holds text back)."""
    j = tok_json(cache, tok_args(fx, man, model, prompt_text=gcase["text"], stops=stops))
    p = tok_plain(cache, tok_args(fx, man, model, prompt_text=gcase["text"], stops=stops,
                                  json_out=False))
    if p != j["text"] + "\n":
        raise Fail("plain stdout %r != JSON text %r + newline" % (p, j["text"]))


def stop_base(cache, fx, man, model, dec, gcase):
    """(base, sub): the unstopped greedy run the stop cases cut, and the stop string:
    3 characters of its text (not the first, not U+FFFD) that straddle a token boundary,
    so that the token completing the stop string is not the one it starts in and the
    held-back tail matters."""
    base = tok_json(cache, tok_args(fx, man, model, prompt_text=gcase["text"]))
    t, ids = base["text"], base["ids"]
    if base["finish_reason"] == "length":
        for k in range(1, len(ids)):
            head = dec.decode(ids[:k])
            if not t.startswith(head):
                continue
            for start in (len(head) - 1, len(head) - 2):
                sub = t[start:start + 3]
                if start >= 1 and len(sub) == 3 and "\ufffd" not in sub:
                    return base, sub
    raise Fail("precondition: the base run's text %r (ids %s, finish %s) has no 3 characters "
               "across a token boundary for the stop cases; pick another prompt"
               % (t, ids, base["finish_reason"]))


def check_stopped(res, base, dec, cut, subs):
    """res stopped at text offset cut of base's text by one of subs."""
    t = base["text"]
    if res["text"] != t[:cut]:
        raise Fail("text %r, want %r (base text %r cut before %r)"
                   % (res["text"], t[:cut], t, t[cut:cut + 8]))
    if res["finish_reason"] != "stop":
        raise Fail("finish_reason %r, want stop" % res["finish_reason"])
    ids = res["ids"]
    if not ids or ids != base["ids"][:len(ids)]:
        raise Fail("ids %s are not a non-empty prefix of the base ids %s" % (ids, base["ids"]))
    full = dec.decode(ids)
    if not any(full.startswith(t[:cut] + s) for s in subs):
        raise Fail("decode of the ids kept, %r, does not reach the stop string" % full)
    # it stopped at the first token that completed a stop string (unless the stream had
    # to hold back an unfinished byte run there)
    prev = ids[:-1]
    held = bool(prev) and (
        (dec.kind == "sentencepiece"
         and dec.byte_token(dec.tokens.get(prev[-1], "")) is not None)
        or dec.decode(prev).endswith("\ufffd"))
    if not held and any(s in dec.decode(prev) for s in subs):
        raise Fail("stopped one token late: %r already contains the stop string"
                   % dec.decode(prev))


def case_tok_stop(cache, fx, man, model, dec, gcase, mode):
    """(d) one stop string (3 characters across a token boundary of the base text); two,
    the one occurring later given first (and ending as early as possible, so that both
    complete in the same token when the text allows: the earliest start must win, not
    the first listed nor the last found); one that never occurs."""
    base, a = stop_base(cache, fx, man, model, dec, gcase)
    t = base["text"]
    ia = t.find(a)
    if mode == "one":
        res = tok_json(cache, tok_args(fx, man, model, prompt_text=gcase["text"], stops=[a]))
        check_stopped(res, base, dec, ia, [a])
    elif mode == "two":
        # b: 2..4 characters whose first occurrence starts after a's, ending earliest
        cands = [(j + n, -n, t[j:j + n]) for n in (2, 3, 4) for j in range(ia + 1, len(t) - n + 1)
                 if t.find(t[j:j + n]) == j and "\ufffd" not in t[j:j + n]]
        b = min(cands)[2] if cands else None
        if b is None:
            raise Fail("precondition: no later substring in %r" % t)
        res = tok_json(cache, tok_args(fx, man, model, prompt_text=gcase["text"],
                                       stops=[b, a]))
        check_stopped(res, base, dec, ia, [a, b])
    else:
        if NEVER in t:
            raise Fail("precondition: %r occurs in %r" % (NEVER, t))
        res = tok_json(cache, tok_args(fx, man, model, prompt_text=gcase["text"],
                                       stops=[NEVER]))
        for k in ("ids", "text", "finish_reason"):
            if res[k] != base[k]:
                raise Fail("%s %r != %r without the stop string" % (k, res[k], base[k]))
        close_results(res, base, "never-matching stop vs none")


def case_tok_stop_plain(cache, fx, man, model, dec, gcase):
    _, sub = stop_base(cache, fx, man, model, dec, gcase)
    case_tok_plain(cache, fx, man, model, gcase, stops=[sub])


def case_tok_inspect(lorad, fx, man, model, want):
    rc, out, err = lorad.run(["inspect", os.path.join(fx, man["models"][model]["path"])])
    if rc != 0:
        raise Fail("exit %d: %s" % (rc, tail(err)))
    got = parse_json(out).get("tokenizer")
    if got is not want:
        raise Fail('"tokenizer": %r, want %r' % (got, want))


def case_tok_refused(lorad, fx, man, model, extra, needle):
    """(e) a clear refusal: exit != 0 and a message naming what is missing."""
    args = ["generate", "--model", os.path.join(fx, man["models"][model]["path"])] + extra
    rc, out, err = lorad.run(args)
    if rc == 0:
        raise Fail("exit 0 (stdout %r), want a refusal" % out[:200])
    if needle not in err:
        raise Fail("message does not mention %s: %s" % (needle, tail(err)))


# --------------------------------------------------------------------------- main
def main(argv):
    build = argv[1] if len(argv) > 1 else "build"
    t0 = time.time()
    suite = Suite()
    try:
        fx, man = ensure_fixtures(build)
    except Exception as e:
        suite.report("fixtures_generate", "%s: %s" % (type(e).__name__, e))
        print("%d passed, %d failed" % (suite.passed, suite.failed))
        return 1
    scratch = os.path.join(build, "fixtures-scratch")
    shutil.rmtree(scratch, ignore_errors=True)
    os.makedirs(scratch)
    lorad = Lorad(build)

    # ---- fixtures and the reference itself
    suite.run("fixtures_manifest_sha256", check_manifest, fx, man)
    suite.run("fixtures_bf16_rounding", check_bf16_rounding)
    prompts = {}
    for model, info in man["models"].items():
        if info.get("tokenizer"):
            # driven by golden text prompts in the tok_* cases instead (picking a prompt
            # here costs ~1 s of reference greedy decoding over a 151k vocabulary)
            prompts[model] = None
            continue
        # llama3_rope: run past original_max_position_embeddings (64); window models:
        # 20 tokens + 8 generated, well past the window
        length = 72 if info.get("rope_scaling") else 20 if info.get("sliding_window") else 12
        length = min(length, info["max_position_embeddings"] - MAX_TOKENS - 1)
        try:
            prompts[model] = pick_prompt(fx, man, model, length)
        except Exception as e:
            prompts[model] = None
            suite.report("prompt_" + model, str(e))
    try:
        eos_prompt = pick_prompt(fx, man, "llama_untied", 10, want_eos=True)
    except Exception as e:
        eos_prompt = None
        suite.report("prompt_eos", str(e))
    for model in man["models"]:
        if prompts[model]:
            suite.run("ref_causality_" + model, check_causality, fx, man, model, prompts[model])
    suite.run("ref_rope_llama3", check_rope, fx, man)
    window_models = [mo for mo, info in man["models"].items() if info.get("sliding_window")]
    long_prompts = {}
    suite.run("ref_window_config_semantics", check_window_config, fx, man)
    for model in window_models:
        if prompts[model]:
            suite.run("ref_window_matters_" + model, check_window_matters, fx, man, model,
                      prompts[model])
        # a long prompt: prefill rows whose window starts blocks of keys further in
        length = man["models"][model]["max_position_embeddings"] - MAX_TOKENS - 8
        try:
            long_prompts[model] = pick_prompt(fx, man, model, length)
            suite.run("ref_window_matters_long_" + model, check_window_matters, fx, man,
                      model, long_prompts[model])
        except Exception as e:
            suite.report("prompt_long_" + model, str(e))
    for name, a in man["adapters"].items():
        if prompts[a["base"]]:
            suite.run("ref_adapter_effect_" + name, check_adapter_effect, fx, man, name,
                      prompts[a["base"]])
            suite.run("ref_merge_equiv_" + name, check_merge_equiv, fx, man, a["base"],
                      prompts[a["base"]], [(name, 1.0)])
    if prompts["llama_tied"]:
        suite.run("ref_merge_equiv_mix", check_merge_equiv, fx, man, "llama_tied",
                  prompts["llama_tied"], MIX)
        suite.run("ref_mix_is_sum_of_deltas", check_mix_linear, fx, man, "llama_tied",
                  prompts["llama_tied"])
    # ---- models with a real tokenizer: judge the Python decoder first, then build cases
    tok_cases = []
    cache = RunCache(lorad)
    for model, info in man["models"].items():
        tok = info.get("tokenizer")
        if not tok:
            continue
        try:
            golden = load_golden(tok)
            dec = PyDecoder(os.path.join(fx, info["path"], "tokenizer.json"))
        except Exception as e:
            suite.report("tok_setup_" + model, "%s: %s" % (type(e).__name__, e))
            continue
        suite.run("ref_pydecode_matches_goldens_" + tok, check_pydecoder, dec, golden)
        gc = {}
        for label, prefix in TOK_TEXTS + ((TOK_CHAT,) if tok == "qwen3" else ()):
            if tok != "llama2" and label in TOK_LLAMA2_ONLY:
                continue
            try:
                gc[label] = golden_case(golden, prefix)
            except Fail as e:
                suite.report("tok_golden_%s_%s" % (label, model), str(e))
                continue
            tok_cases.append(("tok_prompt_%s_%s" % (label, model), case_tok_prompt, cache,
                              fx, man, model, dec, gc[label]))
        if "emoji" in gc:
            tok_cases.append(("tok_prompt_ids_same_as_prompt_" + model,
                              case_tok_prompt_ids_same, cache, fx, man, model, gc["emoji"]))
        if TOK_STOP_TEXT in gc:
            sc = gc[TOK_STOP_TEXT]
            tok_cases.append(("tok_plain_text_equals_json_" + model, case_tok_plain, cache, fx,
                              man, model, sc))
            for mode in ("one", "two", "never"):
                tok_cases.append(("tok_stop_%s_%s" % (mode, model), case_tok_stop, cache, fx,
                                  man, model, dec, sc, mode))
            if tok == "llama2" or "stop_plain" not in TOK_LLAMA2_ONLY:
                tok_cases.append(("tok_stop_plain_equals_json_" + model, case_tok_stop_plain,
                                  cache, fx, man, model, dec, sc))
        tok_cases.append(("tok_inspect_says_tokenizer_" + model, case_tok_inspect, lorad, fx,
                          man, model, True))
        if tok == "qwen3":   # "" encodes to no ids at all (no BOS): refused, not run
            tok_cases.append(("tok_empty_prompt_refused_" + model, case_tok_refused, lorad,
                              fx, man, model, ["--prompt", ""], "empty"))
    tok_cases.append(("tok_inspect_says_no_tokenizer_llama_tied", case_tok_inspect, lorad, fx,
                      man, "llama_tied", False))
    tok_cases.append(("tok_prompt_without_tokenizer_refused", case_tok_refused, lorad, fx, man,
                      "llama_tied", ["--prompt", "Hello"], "tokenizer.json"))
    tok_cases.append(("tok_stop_without_tokenizer_refused", case_tok_refused, lorad, fx, man,
                      "llama_tied", ["--prompt-ids", "1,2,3", "--stop", "x"],
                      "tokenizer.json"))
    t_ref = time.time() - t0

    # ---- engine cases
    if not lorad.available():
        print("NOTE: %s not found: every engine check fails" % lorad.path)
    cases = []
    for model in man["models"]:
        if prompts[model]:
            cases.append(("base_" + model, case_generate, lorad, fx, man, model, prompts[model]))
    if eos_prompt:
        cases.append(("eos_stop_llama_untied", case_eos, lorad, fx, man, "llama_untied",
                      eos_prompt))
    for name, a in man["adapters"].items():
        p = prompts[a["base"]]
        if p:
            cases.append(("adapter_" + name, case_generate, lorad, fx, man, a["base"], p,
                          [(name, 1.0)], False))
            cases.append(("merged_" + name, case_generate, lorad, fx, man, a["base"], p,
                          [(name, 1.0)], True))
    pt = prompts["llama_tied"]
    if pt:
        cases.append(("mix_on_the_fly", case_generate, lorad, fx, man, "llama_tied", pt,
                      MIX, False))
        cases.append(("mix_merged", case_generate, lorad, fx, man, "llama_tied", pt, MIX, True))
        cases.append(("merge_cli_ad_all", case_merge_cli, lorad, fx, man, scratch, "ad_all",
                      "llama_tied", pt, [("ad_all", 1.0)]))
        cases.append(("merge_cli_mix", case_merge_cli, lorad, fx, man, scratch, "mix",
                      "llama_tied", pt, MIX))
    try:
        many = many_jobs(fx, man, "llama_tied")
        cases.append(("many_sequences_at_once_llama_tied", case_many_at_once, build, fx, man,
                      "llama_tied", many))
    except Exception as e:
        suite.report("prompt_many_sequences", str(e))
    for model, p in long_prompts.items():
        cases.append(("window_long_prompt_" + model, case_generate, lorad, fx, man, model, p))
    if prompts.get("qwen2_window"):
        cases.append(("window_qwen2_max_window_layers", case_window_layers, lorad, fx, man,
                      scratch, prompts["qwen2_window"]))
    # --weights: every precision on models of several shapes (hidden 32..64: Q8 blocks of
    # 32 whole and cut short; biases; untied lm_head; F16 and BF16 checkpoints), adapters
    # on the fly and merged into a rounded W'
    # (llama3_rope's 72-token prompt and a 90-token one on mistral_headdim + the q8 adapter
    # case below pass 64 rows: prefill through OpenBLAS on blocks converted to F32)
    weight_models = ["llama_tied", "llama_untied", "qwen2_bias", "mistral_headdim",
                     "llama_f16", "llama_bf16", "llama3_rope"]
    for model in weight_models:
        if prompts.get(model):
            for wt in ("bf16", "q8"):
                if wt == "bf16" and man["models"][model]["dtype"] == "BF16":
                    continue   # held as BF16 by default: base_llama_bf16 is that case
                cases.append(("weights_%s_%s" % (wt, model), case_weights, lorad, fx, man,
                              model, prompts[model], wt))
    if prompts.get("llama_bf16"):
        cases.append(("weights_f32_llama_bf16", case_weights, lorad, fx, man, "llama_bf16",
                      prompts["llama_bf16"], "f32"))
    if pt:
        for wt in ("bf16", "q8"):
            for merge in (False, True):
                cases.append(("weights_%s_%s_ad_all" % (wt, "merged" if merge else "fly"),
                              case_weights, lorad, fx, man, "llama_tied", pt, wt,
                              [("ad_all", 1.0)], merge))
        try:
            long_pt = pick_prompt(fx, man, "mistral_headdim", 90)
            for wt in ("bf16", "q8"):
                cases.append(("weights_%s_long_prompt_mistral_headdim" % wt, case_weights,
                              lorad, fx, man, "mistral_headdim", long_pt, wt))
        except Exception as e:
            suite.report("prompt_long_mistral_headdim", str(e))
        cases.append(("weights_q8_mix_merged", case_weights, lorad, fx, man, "llama_tied", pt,
                      "q8", MIX, True))
        cases.append(("merge_cli_bf16", case_merge_cli_bf16, lorad, fx, man, scratch,
                      "llama_tied", pt, [("ad_all", 1.0)]))
    if prompts["qwen2_bias"]:
        cases.append(("merge_cli_qwen2", case_merge_cli, lorad, fx, man, scratch, "qwen2",
                      "qwen2_bias", prompts["qwen2_bias"], [("qwen2_ad", 1.0)]))
    cases.append(("place_pages_generate_and_merge", case_place_pages, lorad, scratch))
    for model, info in man["models"].items():
        cases.append(("inspect_" + model, case_inspect, lorad, os.path.join(fx, info["path"])))
    for name, a in man["adapters"].items():
        cases.append(("inspect_" + name, case_inspect, lorad, os.path.join(fx, a["path"])))
    bad_ad, bad_model = make_broken(fx, man, scratch)
    cases.append(("inspect_invalid_truncated_adapter", case_inspect_invalid, lorad, bad_ad))
    cases.append(("inspect_invalid_bad_header_model", case_inspect_invalid, lorad, bad_model))
    cases.append(("inspect_invalid_missing_path", case_inspect_invalid, lorad,
                  os.path.join(scratch, "does-not-exist")))

    # the tokenizer cases first: they are the slow ones (each run loads a tokenizer.json)
    cases = tok_cases + cases

    # Two at a time (2 cores); the reference is pure numpy and thread-safe here because
    # every model/adapter is loaded before the pool starts (the caches are then read-only).
    for a in man["adapters"].values():
        R.load_adapter(os.path.join(fx, a["path"]))
    for model in weight_models:
        for wt in ("f32", "bf16", "q8"):
            R.load_model(os.path.join(fx, man["models"][model]["path"]), wt)
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        futs = [(c[0], pool.submit(_call, c[1], *c[2:])) for c in cases]
        for name, fut in futs:
            suite.report(name, fut.result())

    suite.run("fixtures_unmodified_after_engine", check_unmodified, fx, man)
    print("time: reference checks %.2f s, total %.2f s" % (t_ref, time.time() - t0))
    print("%d passed, %d failed" % (suite.passed, suite.failed))
    return 1 if suite.failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
