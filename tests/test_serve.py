#!/usr/bin/python3
"""test_serve.py BUILD: `lorad serve` end to end, over real HTTP on a loopback port.

The reference for every output is `lorad generate` (itself checked against the numpy
reference by test_reference.py) and the same request sent alone:
* per-request switching: base, three adapters (all projections / attention only / MLP
  only) and a weighted mix, sent concurrently, each give what they give alone
  (greedy tokens equal, logprobs within 1e-4) and what `lorad generate` gives; the
  adapters are first shown to change the output;
* completions and chat, streaming and not: OpenAI's response and SSE shapes, the same id
  on every chunk, finish_reason only on the last, usage chunk, [DONE], streamed text ==
  whole text, logprobs in both formats, stop strings, echo, token-id prompts;
* chat: the prompt is the Qwen3 ChatML rendering (what `lorad generate` gets as text);
* cancellation: a client that disconnects while waiting, mid-prefill and mid-stream
  frees its sequence (metrics: running 0, cancelled count, queue 0);
* SIGTERM drains running requests and exits 0; past --drain-seconds they are cancelled;
* /metrics counters and histograms, LRU eviction of adapters, --merge always and auto equal to
  on the fly, one log line per request.
"""
import concurrent.futures
import json
import os
import signal
import socket
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from serve_harness import (Daemon, Fail, Suite, check, ensure_fixtures,  # noqa: E402
                           lorad_generate, slow_model)

MODEL = "qwen2_tok_qwen3"
NAME = "qwen-tiny"
ADAPTERS = ["tq_all", "tq_attn", "tq_mlp"]
MIX = [("tq_all", 0.7), ("tq_mlp", 0.5)]
PROMPTS = ["Hello, how are you?", "The quick brown fox", "Über 北京 ✓", "1 2 3 4 5"]
TOL = 1e-4
N_TOK = 10


def ids_of(choice):
    """Token ids from return_tokens_as_token_ids logprobs (legacy format)."""
    return [int(t.split(":", 1)[1]) for t in choice["logprobs"]["tokens"]]


def completion(d, prompt, model=None, adapters=None, **kw):
    body = {"prompt": prompt, "max_tokens": N_TOK, "temperature": 0, "logprobs": 5,
            "return_tokens_as_token_ids": True, "ignore_eos": True}
    if model:
        body["model"] = model
    if adapters:
        body["adapters"] = [{"name": n, "weight": w} for n, w in adapters]
    body.update(kw)
    st, r = d.post("/v1/completions", body)
    check(st == 200, "completions answered %d: %s" % (st, r))
    return r


def same_output(a, b, what):
    """Two completions: same ids, text, finish; logprobs within TOL."""
    ca, cb = a["choices"][0], b["choices"][0]
    check(ids_of(ca) == ids_of(cb), "%s: tokens %s vs %s" % (what, ids_of(ca), ids_of(cb)))
    check(ca["text"] == cb["text"], "%s: text %r vs %r" % (what, ca["text"], cb["text"]))
    check(ca["finish_reason"] == cb["finish_reason"], "%s: finish differs" % what)
    for x, y in zip(ca["logprobs"]["token_logprobs"], cb["logprobs"]["token_logprobs"]):
        check(abs(x - y) <= TOL, "%s: logprob %.7f vs %.7f" % (what, x, y))


def generate_ref(build, fx, prompt, adapters=()):
    args = ["--model", os.path.join(fx, MODEL), "--prompt", prompt, "--max-tokens",
            str(N_TOK), "--logprobs", "5", "--ignore-eos"]
    for n, w in adapters:
        args += ["--adapter", "%s:%g" % (os.path.join(fx, "adapters", n), w)]
    return lorad_generate(build, args)


def matches_generate(r, g, what):
    c = r["choices"][0]
    check(ids_of(c) == g["ids"], "%s: served tokens %s, lorad generate %s"
          % (what, ids_of(c), g["ids"]))
    check(c["text"] == g["text"], "%s: served text %r, lorad generate %r"
          % (what, c["text"], g["text"]))
    for k, (x, y) in enumerate(zip(c["logprobs"]["token_logprobs"], g["logprobs"])):
        check(abs(x - y["logprob"]) <= TOL, "%s: token %d logprob %.7f vs %.7f"
              % (what, k, x, y["logprob"]))
    check(r["usage"]["prompt_tokens"] == len(g["prompt_ids"]), "%s: prompt_tokens %d vs %d"
          % (what, r["usage"]["prompt_tokens"], len(g["prompt_ids"])))


# ------------------------------------------------------------------------ checks --------
def check_health_and_models(d):
    st, _, body = d.request("GET", "/health")
    check(st == 200 and json.loads(body)["status"] == "ok", "health: %d %r" % (st, body))
    st, _, body = d.request("GET", "/v1/models")
    check(st == 200, "models: %d" % st)
    m = json.loads(body)
    check(m["object"] == "list", "models object %r" % m["object"])
    ids = [x["id"] for x in m["data"]]
    check(ids[0] == NAME, "first model %r, want the base %r" % (ids[0], NAME))
    for a in ADAPTERS:
        check(a in ids, "adapter %s not listed: %s" % (a, ids))
    for x in m["data"][1:]:
        check(x["parent"] == NAME and x["object"] == "model", "adapter entry %r" % x)


def check_adapters_change_output(d):
    base = completion(d, PROMPTS[0])
    for a in ADAPTERS + ["mix"]:
        r = completion(d, PROMPTS[0], adapters=MIX) if a == "mix" else \
            completion(d, PROMPTS[0], model=a)
        diff = max(abs(x - y) for x, y in zip(r["choices"][0]["logprobs"]["token_logprobs"],
                                              base["choices"][0]["logprobs"]["token_logprobs"]))
        check(diff > 1e-3 or ids_of(r["choices"][0]) != ids_of(base["choices"][0]),
              "%s: output equals the base (max logprob diff %.2g): the switching tests "
              "would prove nothing" % (a, diff))


def variants():
    return [(None, None)] + [(a, None) for a in ADAPTERS] + [(None, MIX)]


def check_matches_lorad_generate(d, build, fx):
    for model, mix in variants():
        for p in PROMPTS[:2]:
            r = completion(d, p, model=model, adapters=mix)
            g = generate_ref(build, fx, p, mix or ([(model, 1.0)] if model else []))
            matches_generate(r, g, "%s on %r" % (model or mix or "base", p))


def check_concurrent_switching(d):
    jobs = [(p, m, x) for p in PROMPTS for m, x in variants()]
    alone = [completion(d, p, model=m, adapters=x) for p, m, x in jobs]
    for rnd in range(2):
        with concurrent.futures.ThreadPoolExecutor(len(jobs)) as ex:
            together = list(ex.map(lambda j: completion(d, j[0], model=j[1], adapters=j[2]),
                                   jobs))
        for (p, m, x), a, t in zip(jobs, alone, together):
            same_output(t, a, "round %d, %s on %r concurrently vs alone" % (rnd, m or x or
                                                                            "base", p))
        for (p, m, x), t in zip(jobs, together):
            check(t["model"] == (m or NAME), "response model %r for %r" % (t["model"], m))


def check_completion_shape(d):
    r = completion(d, PROMPTS[1], model="tq_attn")
    check(r["object"] == "text_completion" and r["id"].startswith("cmpl-"), "envelope %r"
          % {k: r[k] for k in ("id", "object")})
    check(isinstance(r["created"], int) and r["model"] == "tq_attn", "created/model")
    c = r["choices"][0]
    check(c["index"] == 0 and c["finish_reason"] == "length", "choice %r" % c)
    lp = c["logprobs"]
    n = len(lp["tokens"])
    check(n == N_TOK and len(lp["token_logprobs"]) == n and len(lp["top_logprobs"]) == n and
          len(lp["text_offset"]) == n, "logprobs lengths")
    for k in range(n):
        top = lp["top_logprobs"][k]
        check(lp["tokens"][k] in top and abs(top[lp["tokens"][k]] - lp["token_logprobs"][k])
              < 1e-6, "the chosen token is in top_logprobs with its logprob")
        check(max(top.values()) <= 0 and len(top) >= 5, "top_logprobs %r" % top)
    u = r["usage"]
    check(u["completion_tokens"] == n and u["total_tokens"] == u["prompt_tokens"] + n,
          "usage %r" % u)
    # token strings (not ids) and their offsets add up to the text
    r = completion(d, PROMPTS[1], model="tq_attn", return_tokens_as_token_ids=False)
    lp = r["choices"][0]["logprobs"]
    check("".join(lp["tokens"]) == r["choices"][0]["text"] or "\ufffd" in "".join(lp["tokens"]),
          "token strings %r do not spell the text %r" % (lp["tokens"], r["choices"][0]["text"]))
    off = 0
    for t, o in zip(lp["tokens"], lp["text_offset"]):
        check(o == off, "text_offset %d, want %d" % (o, off))
        off += len(t)


def stream_events(d, path, body):
    st, ev, raw = d.stream(path, dict(body, stream=True))
    check(st == 200, "stream answered %d: %s" % (st, raw[:300]))
    check(ev and ev[-1] == "[DONE]", "the stream does not end with [DONE]")
    check(ev.count("[DONE]") == 1, "[DONE] sent more than once")
    chunks = ev[:-1]
    ids = {c["id"] for c in chunks}
    check(len(ids) == 1, "chunk ids differ: %s" % ids)
    return chunks


def check_completion_stream(d):
    for model in [None, "tq_mlp"]:
        whole = completion(d, PROMPTS[2], model=model)
        body = {"prompt": PROMPTS[2], "max_tokens": N_TOK, "temperature": 0, "logprobs": 5,
                "return_tokens_as_token_ids": True, "ignore_eos": True,
                "stream_options": {"include_usage": True}}
        if model:
            body["model"] = model
        chunks = stream_events(d, "/v1/completions", body)
        usage = chunks[-1]
        check(usage["choices"] == [] and usage["usage"]["completion_tokens"] == N_TOK,
              "last chunk is not the usage chunk: %r" % usage)
        chunks = chunks[:-1]
        fins = [c["choices"][0]["finish_reason"] for c in chunks]
        check(fins[-1] == "length" and all(f is None for f in fins[:-1]),
              "finish_reason only on the last chunk: %s" % fins)
        for c in chunks:
            check(c["object"] == "text_completion" and "usage" in c and c["usage"] is None,
                  "chunk shape %r" % c)
            check(isinstance(c["choices"][0]["text"], str), "chunk text %r" % c)
        text = "".join(c["choices"][0]["text"] for c in chunks)
        check(text == whole["choices"][0]["text"], "streamed text %r, whole %r"
              % (text, whole["choices"][0]["text"]))
        toks = [t for c in chunks if c["choices"][0]["logprobs"]
                for t in c["choices"][0]["logprobs"]["tokens"]]
        check(toks == whole["choices"][0]["logprobs"]["tokens"], "streamed tokens differ")
        offs = [o for c in chunks if c["choices"][0]["logprobs"]
                for o in c["choices"][0]["logprobs"]["text_offset"]]
        check(offs == whole["choices"][0]["logprobs"]["text_offset"], "streamed offsets")


def check_stream_never_splits_utf8(d):
    # Random tokens of the Qwen3 vocabulary are often parts of multi-byte characters;
    # each delta must still be whole characters (JSON strings carry no half characters).
    seen_multibyte = False
    for seed in range(6):
        body = {"prompt": PROMPTS[seed % len(PROMPTS)], "max_tokens": 40, "temperature": 1.0,
                "seed": seed, "ignore_eos": True}
        chunks = stream_events(d, "/v1/completions", body)
        whole = d.post("/v1/completions", body)[1]["choices"][0]["text"]
        text = "".join(c["choices"][0]["text"] for c in chunks)
        check(text == whole, "seed %d: streamed %r, whole %r" % (seed, text, whole))
        seen_multibyte |= any(ord(ch) > 0x7ff for ch in text)
    check(seen_multibyte, "no multi-byte characters generated: the check proved nothing")


def check_stop_and_echo(d):
    full = completion(d, PROMPTS[0], return_tokens_as_token_ids=False)["choices"][0]["text"]
    check(len(full) >= 4, "text too short to cut: %r" % full)
    stop = full[len(full) // 2:len(full) // 2 + 2]
    cut = full[:full.index(stop)]
    for stream in (False, True):
        body = {"prompt": PROMPTS[0], "max_tokens": N_TOK, "temperature": 0,
                "ignore_eos": True, "stop": ["\u2603never", stop]}
        if stream:
            chunks = stream_events(d, "/v1/completions", body)
            text = "".join(c["choices"][0]["text"] for c in chunks)
            fin = chunks[-1]["choices"][0]["finish_reason"]
        else:
            c = d.post("/v1/completions", body)[1]["choices"][0]
            text, fin = c["text"], c["finish_reason"]
        check(text == cut and fin == "stop", "stop %r (stream %s): %r %s, want %r stop"
              % (stop, stream, text, fin, cut))
    body = {"prompt": PROMPTS[0], "max_tokens": N_TOK, "temperature": 0, "ignore_eos": True,
            "echo": True}
    echoed = d.post("/v1/completions", body)[1]["choices"][0]["text"]
    check(echoed == PROMPTS[0] + full, "echo: %r" % echoed)
    chunks = stream_events(d, "/v1/completions", body)
    check("".join(c["choices"][0]["text"] for c in chunks) == PROMPTS[0] + full,
          "echo streamed")


def check_token_id_prompt(d, build, fx):
    g = generate_ref(build, fx, PROMPTS[3])
    r = completion(d, g["prompt_ids"])
    matches_generate(r, g, "prompt as token ids")
    r = completion(d, [g["prompt_ids"]])
    matches_generate(r, g, "prompt as a list of one list of token ids")


def chatml(messages):
    """Qwen3's template on plain messages (system/user/assistant, no tools): ChatML."""
    s = "".join("<|im_start|>%s\n%s<|im_end|>\n" % (m["role"], m["content"])
                for m in messages)
    return s + "<|im_start|>assistant\n"


def check_chat(d, build, fx):
    convs = [
        [{"role": "user", "content": "Hello!"}],
        [{"role": "system", "content": "You are terse."},
         {"role": "user", "content": "Name a colour."},
         {"role": "assistant", "content": "Blue."},
         {"role": "user", "content": "Another, in 日本語?"}],
    ]
    for k, msgs in enumerate(convs):
        for model in [None, "tq_all"]:
            body = {"messages": msgs, "max_tokens": N_TOK, "temperature": 0,
                    "ignore_eos": True, "logprobs": True, "top_logprobs": 3}
            if model:
                body["model"] = model
            st, r = d.post("/v1/chat/completions", body)
            check(st == 200, "chat %d: %d %s" % (k, st, r))
            check(r["object"] == "chat.completion" and r["id"].startswith("chatcmpl-"),
                  "chat envelope")
            c = r["choices"][0]
            check(c["message"]["role"] == "assistant", "message role")
            g = generate_ref(build, fx, chatml(msgs), [(model, 1.0)] if model else [])
            check(r["usage"]["prompt_tokens"] == len(g["prompt_ids"]),
                  "chat %d: prompt_tokens %d, the ChatML rendering has %d" %
                  (k, r["usage"]["prompt_tokens"], len(g["prompt_ids"])))
            check(c["message"]["content"] == g["text"], "chat %d (%s): %r vs generate %r"
                  % (k, model, c["message"]["content"], g["text"]))
            content = c["logprobs"]["content"]
            check(len(content) == N_TOK, "chat logprobs entries %d" % len(content))
            for e, gl in zip(content, g["logprobs"]):
                check(abs(e["logprob"] - gl["logprob"]) <= TOL, "chat logprob")
                check(bytes(e["bytes"]) == e["token"].encode(), "bytes of %r" % e["token"])
                check(len(e["top_logprobs"]) == 3, "top_logprobs %d" % len(e["top_logprobs"]))
            # streaming: role first, content equal, finish only last
            chunks = stream_events(d, "/v1/chat/completions",
                                   dict(body, stream_options={"include_usage": True}))
            check(chunks[-1]["choices"] == [] and chunks[-1]["usage"]["prompt_tokens"] ==
                  len(g["prompt_ids"]), "chat usage chunk")
            chunks = chunks[:-1]
            check(chunks[0]["choices"][0]["delta"].get("role") == "assistant",
                  "first delta has no role: %r" % chunks[0])
            check(all("role" not in c["choices"][0]["delta"] for c in chunks[1:]),
                  "role repeated")
            text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
            check(text == r["choices"][0]["message"]["content"], "streamed chat content")
            fins = [c["choices"][0]["finish_reason"] for c in chunks]
            check(fins[-1] == "length" and all(f is None for f in fins[:-1]), "chat finish")
            check(all(c["object"] == "chat.completion.chunk" for c in chunks), "chunk object")
    # max_completion_tokens
    st, r = d.post("/v1/chat/completions", {"messages": convs[0], "max_completion_tokens": 3,
                                            "ignore_eos": True})
    check(st == 200 and r["usage"]["completion_tokens"] == 3, "max_completion_tokens")


def check_metrics_and_log(d):
    m = d.metrics()
    for a in ADAPTERS:
        check(m.get('lorad_requests_total{adapter="%s"}' % a, 0) > 0, "no requests counted "
              "for %s" % a)
        check(m.get('lorad_generated_tokens_total{adapter="%s"}' % a, 0) > 0, "tokens")
    check(m.get('lorad_requests_total{adapter="%s"}' % NAME, 0) > 0, "base requests")
    check(m["lorad_time_to_first_token_seconds_count"] > 0, "TTFT histogram empty")
    check(m["lorad_time_per_output_token_seconds_count"] > 0, "TPOT histogram empty")
    check(m["lorad_adapter_load_seconds_count"] >= 3, "load histogram")
    check(m["lorad_adapters_loaded"] == 3, "loaded gauge %r" % m["lorad_adapters_loaded"])
    check(m["lorad_running_sequences"] == 0 and m["lorad_queue_depth"] == 0, "idle gauges")
    check(m["lorad_kv_cache_bytes"] == 0, "KV memory not returned: %r"
          % m["lorad_kv_cache_bytes"])
    # the process's anonymous memory, read back from the kernel, and its huge-page part
    with open("/proc/%d/smaps_rollup" % d.proc.pid) as f:
        anon_now = [int(l.split()[1]) * 1024 for l in f if l.startswith("Anonymous:")][0]
    anon, huge = m["lorad_memory_anon_bytes"], m["lorad_memory_anon_huge_bytes"]
    check(0 < anon and 0 <= huge <= anon, "memory gauges: anon %r huge %r" % (anon, huge))
    check(0.5 * anon_now < anon < 2 * anon_now, "anon %r, the kernel says %r now"
          % (anon, anon_now))
    lines = [l for l in d.log() if "POST /v1/completions adapter=tq_attn status=200" in l]
    check(lines and "prompt_tokens=" in lines[0] and lines[0].endswith(" ms"),
          "no request log line for tq_attn: %s" % d.log()[-3:])


def check_lru_eviction(build, fx):
    d = Daemon(build, ["--model", os.path.join(fx, MODEL), "--served-model-name", NAME,
                       "--adapter-dir", os.path.join(fx, "adapters"),
                       "--max-loaded-adapters", "2"])
    try:
        first = [completion(d, PROMPTS[0], model=a) for a in ADAPTERS]
        m = d.metrics()
        check(m["lorad_adapter_evictions_total"] == 1 and m["lorad_adapters_loaded"] == 2,
              "evictions %r loaded %r" % (m["lorad_adapter_evictions_total"],
                                          m["lorad_adapters_loaded"]))
        again = completion(d, PROMPTS[0], model=ADAPTERS[0])
        same_output(again, first[0], "reloaded after eviction")
        m = d.metrics()
        check(m["lorad_adapter_loads_total"] == 4, "loads %r" % m["lorad_adapter_loads_total"])
    finally:
        check(d.stop() == 0, "exit status")


# The model is a BF16 checkpoint, held as BF16 by default; a merged W' is then rounded to
# BF16 (tests/test_reference.py checks that against the reference). The merge tests here
# compare merged with on-the-fly outputs exactly, so they hold the weights as f32: the same
# values widened, and W' = W + s·B·A kept in F32.
WEIGHTS_EXACT_MERGE = "f32"


def check_merge_always(build, fx, ref):
    d = Daemon(build, ["--model", os.path.join(fx, MODEL), "--served-model-name", NAME,
                       "--adapter-dir", os.path.join(fx, "adapters"), "--merge", "always",
                       "--weights", WEIGHTS_EXACT_MERGE])
    try:
        for a in ADAPTERS:
            same_output(completion(d, PROMPTS[0], model=a), ref[a], "%s merged vs on the fly"
                        % a)
        same_output(completion(d, PROMPTS[0], adapters=MIX), ref["mix"],
                    "mix under --merge always")
    finally:
        check(d.stop() == 0, "exit status")


def check_weights_q8(build, fx, ref):
    """--weights q8 (and LORAD_WEIGHTS=q8) reach the daemon's model: its completions equal
    `lorad generate --weights q8`, base and an adapter, and differ from the bf16 ones (ref),
    so the flag cannot pass by being ignored."""
    a = ADAPTERS[0]
    want = {None: lorad_generate(build, ["--model", os.path.join(fx, MODEL), "--prompt",
                                          PROMPTS[0], "--max-tokens", str(N_TOK),
                                          "--logprobs", "5", "--ignore-eos",
                                          "--weights", "q8"]),
            a: lorad_generate(build, ["--model", os.path.join(fx, MODEL), "--prompt",
                                       PROMPTS[0], "--max-tokens", str(N_TOK), "--logprobs",
                                       "5", "--ignore-eos", "--weights", "q8", "--adapter",
                                       os.path.join(fx, "adapters", a)])}
    base_lp = [x["logprob"] for x in want[None]["logprobs"]]
    ref_lp = ref["base"]["choices"][0]["logprobs"]["token_logprobs"]
    check(max(abs(x - y) for x, y in zip(base_lp, ref_lp)) > 10 * TOL,
          "q8 logprobs equal bf16 ones: the precision would not show")
    for how, args, env in (("flag", ["--weights", "q8"], None),
                           ("environment", [], {"LORAD_WEIGHTS": "q8"})):
        d = Daemon(build, ["--model", os.path.join(fx, MODEL), "--served-model-name", NAME,
                           "--adapter-dir", os.path.join(fx, "adapters")] + args, env=env)
        try:
            check(any("held as q8" in ln for ln in d.log()), "%s: the start-up line does not "
                  "say q8" % how)
            matches_generate(completion(d, PROMPTS[0]), want[None], "q8 base (%s)" % how)
            matches_generate(completion(d, PROMPTS[0], model=a), want[a],
                             "q8 %s (%s)" % (a, how))
        finally:
            check(d.stop() == 0, "exit status")


def check_merge_auto(build, fx, ref):
    """--merge auto: one client on one adapter gets it merged (within 10 s of steady
    traffic); its outputs stay those of the on-the-fly path (within rounding); then traffic
    on the base drops the W', and the adapter still answers the same."""
    a = ADAPTERS[0]
    d = Daemon(build, ["--model", os.path.join(fx, MODEL), "--served-model-name", NAME,
                       "--adapter-dir", os.path.join(fx, "adapters"), "--merge", "auto",
                       "--weights", WEIGHTS_EXACT_MERGE])
    try:
        deadline = time.time() + 10
        merged = False
        while time.time() < deadline and not merged:
            same_output(completion(d, PROMPTS[0], model=a), ref[a], "%s under --merge auto" % a)
            merged = d.metrics().get("lorad_adapters_merged") == 1
        check(merged, "no W' after 10 s of traffic on one adapter: %s" % d.log()[-3:])
        check(any("merged W' ready" in l for l in d.log()), "no merge in the log")
        same_output(completion(d, PROMPTS[0], model=a), ref[a], "%s on its merged W'" % a)
        deadline = time.time() + 10
        while time.time() < deadline and d.metrics().get("lorad_adapters_merged") != 0:
            completion(d, PROMPTS[0])
        m = d.metrics()
        check(m.get("lorad_adapters_merged") == 0 and
              m.get("lorad_adapter_merge_drops_total") == 1,
              "W' not dropped once the traffic moved to the base: %r"
              % {k: v for k, v in m.items() if "merge" in k})
        same_output(completion(d, PROMPTS[0], model=a), ref[a], "%s after the drop" % a)
    finally:
        check(d.stop() == 0, "exit status")


# --------------------------------------------------------------- the slow model ---------
def long_stream(port, body, read_events):
    """Starts a streaming request on a raw socket, reads read_events events, returns the
    socket (still open) and what was read."""
    s = socket.create_connection(("127.0.0.1", port), timeout=60)
    data = json.dumps(dict(body, stream=True)).encode()
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
              b"\r\nContent-Length: %d\r\n\r\n" % len(data) + data)
    got = b""
    deadline = time.time() + 60
    while got.count(b"data: ") < read_events and time.time() < deadline:
        b = s.recv(65536)
        if not b:
            break
        got += b
    return s, got


def check_cancellation(build):
    slow = slow_model(build)
    d = Daemon(build, ["--model", slow, "--max-seqs", "1", "--max-queue", "4",
                       "--max-tokens", "8000"])
    try:
        long_body = {"prompt": [5] * 8, "max_tokens": 8000, "ignore_eos": True,
                     "temperature": 0}
        # 1. mid-stream
        s, got = long_stream(d.port, long_body, 3)
        check(got.count(b"data: ") >= 3, "the stream did not start")
        check(d.metrics()["lorad_running_sequences"] == 1, "not running")
        s.close()
        d.wait_metric("lorad_requests_cancelled_total", lambda v: v == 1)
        d.wait_metric("lorad_running_sequences", lambda v: v == 0)
        check(d.metrics()["lorad_kv_cache_bytes"] == 0, "KV memory held after cancel")
        # 2. mid-prefill: a 6000-token prompt takes seconds to prefill
        s, _ = long_stream(d.port, {"prompt": [7] * 6000, "max_tokens": 4}, 0)
        d.wait_metric("lorad_running_sequences", lambda v: v == 1)
        time.sleep(0.3)
        toks = d.metrics().get("lorad_generated_tokens_total{adapter=\"slow\"}", 0)
        s.close()
        d.wait_metric("lorad_requests_cancelled_total", lambda v: v == 2)
        d.wait_metric("lorad_running_sequences", lambda v: v == 0)
        check(d.metrics().get("lorad_generated_tokens_total{adapter=\"slow\"}", 0) == toks,
              "the prefilling request generated tokens: it was not cancelled mid-prefill")
        # 3. waiting in the queue behind a running stream (non-streaming request)
        s1, _ = long_stream(d.port, long_body, 2)
        body = json.dumps({"prompt": [9] * 4, "max_tokens": 4}).encode()
        s2 = socket.create_connection(("127.0.0.1", d.port), timeout=60)
        s2.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: "
                   b"application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        d.wait_metric("lorad_queue_depth", lambda v: v == 1)
        s2.close()
        d.wait_metric("lorad_requests_cancelled_total", lambda v: v == 3)
        d.wait_metric("lorad_queue_depth", lambda v: v == 0)
        check(d.metrics()["lorad_running_sequences"] == 1, "the running stream was disturbed")
        s1.close()
        d.wait_metric("lorad_requests_cancelled_total", lambda v: v == 4)
        d.wait_metric("lorad_running_sequences", lambda v: v == 0)
        check(any("(connection closed early)" in l for l in d.log()),
              "no log line marks a request whose client went away")
        # still serving
        st, r = d.post("/v1/completions", {"prompt": [3, 4], "max_tokens": 2})
        check(st == 200 and r["usage"]["completion_tokens"] == 2, "serves after cancels")
    finally:
        check(d.stop() == 0, "exit status")


def sse_tokens(raw):
    """Token count of a raw HTTP/1.1 chunked SSE response (logprobs with token ids)."""
    head, _, body = raw.partition(b"\r\n\r\n")
    data = b""
    while body:
        size, _, rest = body.partition(b"\r\n")
        n = int(size, 16)
        if n == 0:
            break
        data += rest[:n]
        body = rest[n + 2:]
    n = 0
    for ev in data.split(b"\n\n"):
        if ev.startswith(b"data: {"):
            lp = json.loads(ev[6:])["choices"]
            if lp and lp[0]["logprobs"]:
                n += len(lp[0]["logprobs"]["tokens"])
    return n


def check_drain_on_sigterm(build):
    slow = slow_model(build)
    d = Daemon(build, ["--model", slow, "--max-tokens", "8000", "--drain-seconds", "60"])
    body = {"prompt": [5] * 8, "max_tokens": 300, "ignore_eos": True, "temperature": 0,
            "logprobs": 0, "return_tokens_as_token_ids": True}
    s, got = long_stream(d.port, body, 1)
    d.proc.send_signal(signal.SIGTERM)
    deadline = time.time() + 60
    while b"data: [DONE]" not in got and time.time() < deadline:
        b = s.recv(65536)
        if not b:
            break
        got += b
    s.close()
    check(b"data: [DONE]" in got, "the running stream was cut by SIGTERM")
    check(b'"finish_reason":"length"' in got, "the drained stream did not run to its end")
    check(sse_tokens(got) == 300, "%d tokens streamed, want 300" % sse_tokens(got))
    rc = d.stop(timeout=60)
    check(rc == 0, "exit status %d after SIGTERM" % rc)
    # past --drain-seconds the rest is cancelled
    d = Daemon(build, ["--model", slow, "--max-tokens", "8000", "--drain-seconds", "1"])
    s, got = long_stream(d.port, dict(body, max_tokens=8000), 1)
    t0 = time.time()
    d.proc.send_signal(signal.SIGTERM)
    while b"data: [DONE]" not in got and time.time() < t0 + 60:
        b = s.recv(65536)
        if not b:
            break
        got += b
    s.close()
    rc = d.stop(timeout=60)
    check(rc == 0, "exit status %d" % rc)
    check(b'"finish_reason":"abort"' in got and b"data: [DONE]" in got,
          "a request cancelled at shutdown does not end its stream cleanly: %r" % got[-300:])


def main(argv):
    build = argv[1] if len(argv) > 1 else "build"
    t0 = time.time()
    fx, man = ensure_fixtures(build)
    suite = Suite()
    try:
        d = Daemon(build, ["--model", os.path.join(fx, MODEL), "--served-model-name", NAME,
                           "--adapter-dir", os.path.join(fx, "adapters"), "--max-seqs", "32",
                           "--max-queue", "64"])
    except Fail as e:
        suite.report("serve_starts", str(e))
        print("%d passed, %d failed" % (suite.passed, suite.failed))
        return 1
    suite.run("health_and_models_list_base_and_adapters", check_health_and_models, d)
    suite.run("adapters_and_mix_change_the_output", check_adapters_change_output, d)
    suite.run("completions_equal_lorad_generate_base_adapters_mix",
              check_matches_lorad_generate, d, build, fx)
    suite.run("concurrent_requests_on_different_adapters_equal_alone",
              check_concurrent_switching, d)
    suite.run("completion_response_and_legacy_logprobs_shape", check_completion_shape, d)
    suite.run("completion_stream_chunks_usage_done_equal_whole", check_completion_stream, d)
    suite.run("stream_deltas_never_split_utf8", check_stream_never_splits_utf8, d)
    suite.run("stop_strings_and_echo", check_stop_and_echo, d)
    suite.run("prompt_as_token_ids", check_token_id_prompt, d, build, fx)
    suite.run("chat_chatml_rendering_logprobs_stream", check_chat, d, build, fx)
    suite.run("metrics_counters_histograms_and_request_log", check_metrics_and_log, d)
    ref = {a: completion(d, PROMPTS[0], model=a) for a in ADAPTERS}
    ref["mix"] = completion(d, PROMPTS[0], adapters=MIX)
    ref["base"] = completion(d, PROMPTS[0])
    suite.run("daemon_alive_and_exits_0_on_sigterm",
              lambda: check(d.alive() and d.stop() == 0, "daemon died or bad exit status"))
    suite.run("lru_evicts_idle_adapter_beyond_max_loaded", check_lru_eviction, build, fx)
    suite.run("merge_always_equals_on_the_fly", check_merge_always, build, fx, ref)
    suite.run("weights_q8_by_flag_and_environment_equal_lorad_generate", check_weights_q8,
              build, fx, ref)
    suite.run("merge_auto_merges_the_only_adapter_in_use_then_drops_it", check_merge_auto,
              build, fx, ref)
    suite.run("cancel_on_disconnect_waiting_prefilling_streaming", check_cancellation, build)
    suite.run("sigterm_drains_running_requests_then_cancels", check_drain_on_sigterm, build)
    print("time: %.1f s" % (time.time() - t0))
    print("%d passed, %d failed" % (suite.passed, suite.failed))
    return 1 if suite.failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
