#!/usr/bin/python3
"""test_demo.py BUILD: the demo model of `make run` (models/demo, made by tools/demo/train.py).

1. Files: total under 40 MB; `lorad inspect` accepts the base and every adapter.
2. Tokenizer: lorad encodes the held-out strings of models/demo/tokenizer-goldens.json
   exactly as Hugging Face `tokenizers` does (tools/demo/goldens/gen.js): each batch of
   strings joined by <|endoftext|> (up to 500 tokens) with one `lorad generate --prompt TEXT
   --max-tokens 1`
   (the goldens first prove that a batch's ids are its strings' ids joined by 0), and
   the demo prompts one by one.
3. Second reference: for every case of models/demo/reference.json (base, each adapter,
   a weighted mix; 3 prompts) `lorad generate --prompt-ids … --logprobs 5 --json` gives
   the greedy tokens of the PyTorch forward of the training tool on the saved weights
   (a different token is accepted only where the reference's top two are within 1e-3,
   and the comparison stops there) and every chosen and top-5 logprob within 1e-3.
4. Behaviour, on lorad's greedy text of those runs (tools/demo/criteria.py): each adapter
   shows its register (share of capitals / German function words / KJV words) above a
   bound and the base below one; the mix lies strictly between the base and each of its
   adapters.
5. Perplexity of the base on held-out English (models/demo/heldout.json) computed by the
   numpy reference (tests/reference.py, float64) equals the training tool's and is below
   the bound stated there and in the card.

Needs no torch. Prints "PASS name" / "FAIL name: reason" per check and, last,
"N passed, N failed"; exits 1 if anything failed.
"""
import concurrent.futures
import json
import math
import os
import subprocess
import sys


HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(REPO, "tools", "demo"))
import criteria  # noqa: E402
from test_reference import Fail, Suite  # noqa: E402
import reference as R  # noqa: E402

DEMO = os.path.join(REPO, "models", "demo")
BASE = os.path.join(DEMO, "base")
ADAPTERS = ("shout", "german", "kjv")
ATOL = 1e-3          # float32 engine on BF16 weights vs the float64 PyTorch reference
TIE = 1e-3           # reference top-2 gaps below this: either token is fine
TIMEOUT = 120        # seconds per lorad run (ASan builds are slow)
MAX_BYTES = 40 * 1000 * 1000
# An adapter's criterion on its greedy text at least ON; the base's at most OFF.
BOUNDS = {"caps": (0.8, 0.1), "german": (0.3, 0.05), "kjv": (0.15, 0.05)}



def load(name):
    with open(os.path.join(DEMO, name), encoding="utf-8") as f:
        return json.load(f)


class Lorad:
    def __init__(self, build):
        self.path = os.path.join(build, "lorad")
        self.env = dict(os.environ)
        self.env.setdefault("OPENBLAS_NUM_THREADS", "1")

    def run(self, args):
        """stdout of a successful run; Fail on a missing binary, an error, a timeout or a
        sanitizer report."""
        if not os.access(self.path, os.X_OK):
            raise Fail("%s not found (build it first)" % self.path)
        try:
            p = subprocess.run([self.path] + args, capture_output=True, timeout=TIMEOUT,
                               env=self.env)
        except subprocess.TimeoutExpired:
            raise Fail("timed out after %d s: lorad %s" % (TIMEOUT, " ".join(args)[:200]))
        err = p.stderr.decode("utf-8", "replace")
        for marker in ("AddressSanitizer", "LeakSanitizer", "runtime error:"):
            if marker in err:
                raise Fail("sanitizer report (%s): %s" % (marker, err[-400:]))
        if p.returncode != 0:
            raise Fail("exit %d: lorad %s: %s" % (p.returncode, " ".join(args)[:200], err[-300:]))
        return p.stdout.decode("utf-8", "replace")

    def json(self, args):
        out = self.run(args)
        try:
            return json.loads(out)
        except ValueError:
            raise Fail("stdout is not JSON: %r" % out[:200])


def parallel(fn, items):
    """[fn(item)] on two threads (exceptions are returned, not raised)."""
    def safe(x):
        try:
            return fn(x)
        except Exception as e:  # reported by the check that uses the result
            return e
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as ex:
        return list(ex.map(safe, items))


def value(r):
    if isinstance(r, Exception):
        raise r
    return r


# --------------------------------------------------------------------------- 1. files
def check_size():
    total = 0
    for root, _, files in os.walk(DEMO):
        total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
    if total >= MAX_BYTES:
        raise Fail("models/demo is %d bytes, the limit is %d" % (total, MAX_BYTES))


def check_inspect(lorad, path):
    j = lorad.json(["inspect", path])
    if not isinstance(j, dict):
        raise Fail("inspect gave %r" % j)


# --------------------------------------------------------------------------- 2. tokenizer
def check_golden_batches(golden):
    """The goldens themselves: a batch's ids are its strings' ids joined by <|endoftext|>."""
    for b in golden["batches"]:
        want = []
        for k, c in enumerate(golden["cases"][b["first"]:b["first"] + b["count"]]):
            want += ([0] if k else []) + c["ids"]
        if want != b["ids"]:
            raise Fail("batch at %d: HF ids of the joined text are not the joined ids" % b["first"])
    n = sum(b["count"] for b in golden["batches"])
    if n != len(golden["cases"]) or n < 200:
        raise Fail("batches cover %d of %d cases" % (n, len(golden["cases"])))


def prompt_ids(lorad, text):
    return lorad.json(["generate", "--model", BASE, "--prompt", text, "--max-tokens", "1",
                       "--json"])["prompt_ids"]


def check_tok(got, want, text):
    got = value(got)
    if got != want:
        k = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
        raise Fail("%r: ids differ at %d: lorad %s, tokenizers %s" % (
            text[:60], k, got[max(0, k - 2):k + 4], want[max(0, k - 2):k + 4]))


# --------------------------------------------------------------------------- 3. reference
def gen_args(case):
    n = case["n_prompt"]
    args = ["generate", "--model", BASE, "--prompt-ids", ",".join(map(str, case["ids"][:n])),
            "--max-tokens", str(len(case["ids"]) - n), "--logprobs", "5", "--json"]
    for name, w in case["adapters"]:
        args += ["--adapter", "%s:%g" % (os.path.join(DEMO, "adapters", name), w)]
    return args


def check_reference(case, result):
    r = value(result)
    n = case["n_prompt"]
    want = case["ids"][n:]
    got = r["ids"]
    for k, pos in enumerate(case["positions"][n - 1:]):
        if k >= len(got):
            raise Fail("lorad stopped after %d tokens, the reference made %d"
                       % (len(got), len(want)))
        lp = r["logprobs"][k]
        if got[k] != pos["next"]:
            if pos["gap"] < TIE:
                return      # a near-tie: either continuation is right; nothing to compare after
            raise Fail("token %d: lorad %d, reference %d (gap %.4f)"
                       % (k, got[k], pos["next"], pos["gap"]))
        if abs(lp["logprob"] - pos["logprob"]) > ATOL:
            raise Fail("token %d: logprob %.6f, reference %.6f"
                       % (k, lp["logprob"], pos["logprob"]))
        ref_top = dict((i, v) for i, v in pos["top"])
        for t in lp["top"]:
            # a top id the reference ranks below its own top 5 must tie with the 5th
            rv = ref_top.get(t["id"], pos["top"][-1][1])
            if abs(t["logprob"] - rv) > ATOL:
                raise Fail("token %d: top id %d logprob %.6f, reference %.6f" % (
                    k, t["id"], t["logprob"], rv))
    if len(got) != len(want):
        raise Fail("lorad made %d tokens, the reference %d" % (len(got), len(want)))


# --------------------------------------------------------------------------- 4. behaviour
def scores(texts):
    return {c: sum(fn(t) for t in texts) / len(texts) for c, fn in criteria.CRITERIA.items()}


def check_adapter_shows(name, s):
    c = criteria.ADAPTER_CRITERION[name]
    on, off = BOUNDS[c]
    if s[name][c] < on:
        raise Fail("%s: %s share %.3f < %.2f" % (name, c, s[name][c], on))
    if s["base"][c] > off:
        raise Fail("base: %s share %.3f > %.2f" % (c, s["base"][c], off))


def check_mix_blend(mix, s):
    for name, _ in mix:
        c = criteria.ADAPTER_CRITERION[name]
        lo, hi, m = s["base"][c], s[name][c], s["mix"][c]
        if not lo < m < hi:
            raise Fail("%s share of the mix %.3f is not between base %.3f and %s %.3f" % (
                c, m, lo, name, hi))


# --------------------------------------------------------------------------- 5. perplexity
def check_perplexity(held):
    model = R.load_model(BASE)
    nll, cnt = 0.0, 0
    for ids in held["chunks"]:
        lp = R.log_softmax(R.forward_logits(model, ids[:-1], [], False, None))
        nll -= float(sum(lp[k, ids[k + 1]] for k in range(len(ids) - 1)))
        cnt += len(ids) - 1
    ppl = math.exp(nll / cnt)
    if abs(ppl - held["perplexity"]) > 1e-6 * ppl:
        raise Fail("numpy reference %.6f, training tool %.6f" % (ppl, held["perplexity"]))
    if not ppl < held["bound"]:
        raise Fail("held-out perplexity %.3f is not below %g" % (ppl, held["bound"]))
    with open(os.path.join(DEMO, "README.md"), encoding="utf-8") as f:
        if "below **%g**" % held["bound"] not in f.read():
            raise Fail("the card does not state the bound %g" % held["bound"])
    print("  held-out perplexity %.3f (bound %g)" % (ppl, held["bound"]))


def main(argv):
    build = argv[1] if len(argv) > 1 else "build"
    lorad = Lorad(build)
    suite = Suite()

    suite.run("size_under_40MB", check_size)
    paths = [BASE] + [os.path.join(DEMO, "adapters", a) for a in ADAPTERS]
    for p, r in zip(paths, parallel(lambda p: check_inspect(lorad, p), paths)):
        suite.run("inspect_%s" % os.path.basename(p), value, r)

    golden = load("tokenizer-goldens.json")
    suite.run("tok_goldens_batches_are_joined_cases", check_golden_batches, golden)
    ref = load("reference.json")
    prompts = sorted({c["prompt"] for c in ref["cases"]})
    by_text = {c["text"]: c["ids"] for c in golden["cases"]}
    texts = [b["text"] for b in golden["batches"]] + prompts
    wants = [b["ids"] for b in golden["batches"]] + [by_text.get(p) for p in prompts]
    results = parallel(lambda t: prompt_ids(lorad, t), texts)
    for k, (t, w, r) in enumerate(zip(texts, wants, results)):
        name = ("tok_batch_%d_equals_hf" % k if k < len(golden["batches"])
                else "tok_prompt_%s_equals_hf" % t.replace(" ", "_"))
        if w is None:
            suite.report(name, "prompt %r missing from the goldens" % t)
        else:
            suite.run(name, check_tok, r, w, t)

    results = parallel(lambda c: lorad.json(gen_args(c)), ref["cases"])
    texts = {}
    for case, r in zip(ref["cases"], results):
        suite.run("ref_%s_%s" % (case["variant"], case["prompt"].replace(" ", "_")),
                  check_reference, case, r)
        if not isinstance(r, Exception):
            texts.setdefault(case["variant"], []).append(r["text"])
    if all(len(texts.get(v, ())) == len(prompts) for v in ("base", "mix") + ADAPTERS):
        s = {v: scores(t) for v, t in texts.items()}
        for v in ("base",) + ADAPTERS + ("mix",):
            print("  %-6s " % v + "  ".join("%s %.3f" % kv for kv in sorted(s[v].items())))
        for a in ADAPTERS:
            suite.run("behaviour_%s_shows_%s" % (a, criteria.ADAPTER_CRITERION[a]),
                      check_adapter_shows, a, s)
        suite.run("behaviour_mix_is_a_blend", check_mix_blend, ref["mix"], s)
    else:
        suite.report("behaviour", "some lorad runs failed (see ref_* above)")

    suite.run("heldout_perplexity_numpy_reference", check_perplexity, load("heldout.json"))
    print("%d passed, %d failed" % (suite.passed, suite.failed))
    return 1 if suite.failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
