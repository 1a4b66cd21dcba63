#!/usr/bin/python3
"""test_admin.py BUILD [SECTION...]: adapters at runtime (issue 9) against real daemons —
upload over HTTP, the crash-safe store, the live adapter directory and the admin API.

Every daemon gets an adapter directory of its own (a fresh temporary directory holding
copies of the fixture adapters, or adapters generated here with tools/make_fixtures.py);
outputs are greedy (temperature 0) and compared token by token, logprobs within 1e-4,
with `lorad generate --adapter DIR` on the same files. Sections (all by default):

* main (qwen2_tok_qwen3, --max-upload-mb 1, --max-rank 8, --allow-adapter-path):
  upload -> 201 describing the adapter -> listed (GET /v1/models, /v1/adapters{,/name}) ->
  used (equals lorad generate) -> 409 without ?replace -> ?replace=true (new version, new
  output) -> DELETE 200, then 404 on use, GET and a second DELETE; `curl -F` as is;
  concurrent uploads (distinct temporaries); a client gone mid-upload leaves nothing; the
  bad-upload table (each row: status, message, nothing left in the store, then a normal
  request); 413 by Content-Length (with and without Expect: 100-continue), while streaming a
  chunked body, and a body of exactly --max-upload-mb accepted; vLLM's load/unload_lora_adapter;
  the live directory (drop-in file by file, rename-in, removal, files changed in place,
  SIGHUP); DELETE / replace of a symlinked adapter never touch files outside the store.
* slow (serve_harness.slow_model, adapters generated for it): replace while a stream on
  the old version runs (the stream was still running when the 201 came; its tokens equal
  the old version's; new requests get the new version = lorad generate), DELETE while a
  stream runs (it finishes on its reference; new requests 404).
* lru: --max-loaded-adapters 2 with 4 adapters, in turn and concurrently (tiny model);
  --max-adapter-memory-mb 4 with 4 adapters of 1.5 MiB each (slow model): no request fails,
  outputs never change, evictions grow, at most 2 loaded (and <= 4 MiB) when idle.
* scale: 1,000 adapters on disk: /v1/models and /v1/adapters list them all (time printed,
  never asserted); first, last, the distinct ones and 50 random ones are each usable.
* crash: SIGKILL mid-upload at 12 points (headers only ... all bytes sent, response not
  read), restart on the same directory: no temporary left, the partial adapter never
  listed or served, the others intact; SIGKILL right after a 201: after the restart the
  adapter is listed, byte-identical, and gives the same output.
* auth: --admin-key-file + --api-key-file (401 without / with a wrong key, 403 with the
  inference key, the admin key works for inference too); without an admin key: loopback
  allowed (with the API key), a non-loopback client refused with 403 (when this machine
  has a non-loopback address; otherwise a NOTE says the path was not exercised).

Each daemon must exit 0 on SIGTERM (or is SIGKILLed on purpose) and its log must hold no
sanitizer report: the suite also runs under ASan/UBSan (`make asan`).
Prints "PASS name" / "FAIL name: reason" per check and, last, "N passed, N failed"; exits 1
if anything failed.
"""
import hashlib
import http.client
import json
import os
import random
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(REPO, "tools"))
from serve_harness import (SLOW_MODEL, Daemon, Fail, Suite, check,  # noqa: E402
                           check_alive_then_exit_0, check_sanitizer_clean, ensure_fixtures,
                           lorad_generate, slow_model, wait_log_stable)
import make_fixtures as MF  # noqa: E402
import numpy as np  # noqa: E402

MODEL = "qwen2_tok_qwen3"          # context 128, real tokenizer
PROMPT = "Once upon a time"
SLOW_PROMPT = [5, 6, 7]
N_TOK = 8
TOL = 1e-4
MAX_UPLOAD_MB = 1
MAX_RANK = 8
BOUNDARY = "lorad-test-7d1c0b"
MP_CT = "multipart/form-data; boundary=" + BOUNDARY
SOCK_TIMEOUT = 60                  # any one socket operation (ASan builds are slow)
LIVE_WAIT = 20                     # seconds for the directory watcher to notice something
TEMP_PREFIXES = (".tmp-", ".del-")
ANY = object()
SECTIONS = ("main", "slow", "lru", "scale", "crash", "auth")


# --------------------------------------------------------------------------- plumbing
def wait_for(fn, timeout, what):
    """Polls fn until it returns something true; returns it. Fail after timeout seconds."""
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(0.05)
    raise Fail("%s: not within %d s (last: %r)" % (what, timeout, last))


def sha(data):
    return hashlib.sha256(data).hexdigest()


class Files:
    """An adapter's two files, as bytes."""

    def __init__(self, cfg, w):
        self.cfg, self.w = cfg, w

    @staticmethod
    def of(path):
        with open(os.path.join(path, "adapter_config.json"), "rb") as f:
            cfg = f.read()
        with open(os.path.join(path, "adapter_model.safetensors"), "rb") as f:
            w = f.read()
        return Files(cfg, w)

    def write(self, path):
        os.makedirs(path)
        with open(os.path.join(path, "adapter_config.json"), "wb") as f:
            f.write(self.cfg)
        with open(os.path.join(path, "adapter_model.safetensors"), "wb") as f:
            f.write(self.w)
        return path

    def key(self):
        return sha(self.cfg) + sha(self.w)


def multipart(parts, boundary=BOUNDARY):
    """parts: (name, filename, data); a None name or filename is left out."""
    out = []
    for name, filename, data in parts:
        disp = "form-data"
        if name is not None:
            disp += '; name="%s"' % name
        if filename is not None:
            disp += '; filename="%s"' % filename
        out.append(b"--" + boundary.encode() + b"\r\nContent-Disposition: " + disp.encode() +
                   b"\r\nContent-Type: application/octet-stream\r\n\r\n" + data + b"\r\n")
    return b"".join(out) + b"--" + boundary.encode() + b"--\r\n"


def upload_body(files, cfg_filename="adapter_config.json"):
    return multipart([("config", cfg_filename, files.cfg),
                      ("weights", "adapter_model.safetensors", files.w)])


class Store:
    """An adapter directory as the test sees it on disk."""

    def __init__(self, path):
        self.path = path

    def entries(self):
        return sorted(os.listdir(self.path))

    def adapters(self):
        return [n for n in self.entries() if not n.startswith(".")]

    def temporaries(self):
        return [n for n in self.entries() if n.startswith(TEMP_PREFIXES)]

    def snapshot(self):
        """{relative path: sha256 | 'dir' | 'link -> target'} of everything (symlinks not
        followed)."""
        out = {}
        for root, dirs, files in os.walk(self.path):
            for n in dirs + files:
                p = os.path.join(root, n)
                rel = os.path.relpath(p, self.path)
                if os.path.islink(p):
                    out[rel] = "link -> " + os.readlink(p)
                elif os.path.isdir(p):
                    out[rel] = "dir"
                else:
                    try:
                        with open(p, "rb") as f:
                            out[rel] = sha(f.read())
                    except FileNotFoundError:
                        out[rel] = "(vanished while read)"
        return out

    def add(self, name, files):
        return files.write(os.path.join(self.path, name))

    def check_clean(self):
        t = self.temporaries()
        check(not t, "temporaries left in the store: %s" % t)

    def check_holds(self, name, files):
        p = os.path.join(self.path, name)
        check(os.path.isdir(p), "the store has no directory %s (has %s)" % (name, self.entries()))
        check(sorted(os.listdir(p)) == ["adapter_config.json", "adapter_model.safetensors"],
              "%s holds %s" % (name, sorted(os.listdir(p))))
        got = Files.of(p)
        check(got.cfg == files.cfg, "%s/adapter_config.json differs from what was sent" % name)
        check(got.w == files.w, "%s/adapter_model.safetensors differs from what was sent "
              "(%d bytes vs %d)" % (name, len(got.w), len(files.w)))


def diff_snapshots(a, b):
    keys = sorted(set(a) | set(b))
    return ["%s: %s -> %s" % (k, a.get(k, "(none)"), b.get(k, "(none)"))
            for k in keys if a.get(k) != b.get(k)]


# ---- HTTP
def request(d, method, path, body=None, headers=None, timeout=SOCK_TIMEOUT):
    """(status, headers, body); status 0 when the daemon closed without an answer."""
    try:
        return d.request(method, path, body, headers, timeout=timeout)
    except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError,
            http.client.BadStatusLine):
        return 0, {}, b""


def put(d, name, body, query="", ct=MP_CT, headers=None):
    h = dict(headers or {})
    if ct is not None:
        h["Content-Type"] = ct
    return request(d, "PUT", "/v1/adapters/" + name + query, body, h)


def upload(d, name, files, query="", headers=None):
    """PUT that must answer 201; returns the parsed description."""
    st, _, data = put(d, name, upload_body(files), query, headers=headers)
    check(st == 201, "PUT /v1/adapters/%s%s answered %d: %r" % (name, query, st, data[:300]))
    return json.loads(data)


def jget(d, path, headers=None):
    st, _, data = request(d, "GET", path, None, headers)
    return st, (json.loads(data) if data else None)


def model_ids(d, headers=None):
    st, r = jget(d, "/v1/models", headers)
    check(st == 200, "/v1/models answered %d" % st)
    return [m["id"] for m in r["data"]]


def adapter_info(d, name, headers=None):
    st, r = jget(d, "/v1/adapters/" + name, headers)
    return r if st == 200 else None


def check_error(st, hdrs, data, status, msg, code=ANY, param=ANY):
    """The status and OpenAI's error shape; returns the error object."""
    if st == 0:
        raise Fail("the daemon closed the connection without an answer (expected %d '%s')"
                   % (status, msg))
    check(st == status, "answered %d, expected %d: %r" % (st, status, data[:300]))
    check(hdrs.get("content-type", "").startswith("application/json"),
          "error Content-Type is %r" % hdrs.get("content-type"))
    try:
        e = json.loads(data)["error"]
    except (ValueError, KeyError, TypeError):
        raise Fail("not an OpenAI error object: %r" % data[:300])
    for k in ("message", "type", "param", "code"):
        check(k in e, "the error has no %r: %r" % (k, e))
    check(msg in e["message"], "message %r does not contain %r" % (e["message"], msg))
    if code is not ANY:
        check(e["code"] == code, "code %r, expected %r (%s)" % (e["code"], code, e["message"]))
    if param is not ANY:
        check(e["param"] == param, "param %r, expected %r (%s)" % (e["param"], param,
                                                                   e["message"]))
    return e


# ---- outputs
def comp_body(model, n=N_TOK, prompt=PROMPT, **kw):
    b = {"prompt": prompt, "max_tokens": n, "temperature": 0, "logprobs": 1,
         "return_tokens_as_token_ids": True, "ignore_eos": True}
    if model:
        b["model"] = model
    b.update(kw)
    return b


def out_of_choice(c):
    lp = c["logprobs"]
    return (tuple(int(t.split(":", 1)[1]) for t in lp["tokens"]), list(lp["token_logprobs"]))


def complete(d, model, n=N_TOK, prompt=PROMPT, headers=None):
    """(token ids, logprobs) of a greedy completion, which must answer 200."""
    st, _, data = request(d, "POST", "/v1/completions", json.dumps(comp_body(
        model, n, prompt)).encode(), dict(headers or {}, **{"Content-Type": "application/json"}))
    check(st == 200, "completion on %r answered %d: %r" % (model, st, data[:300]))
    r = json.loads(data)
    check(r["usage"]["completion_tokens"] == n, "completion on %r: %d tokens, asked %d"
          % (model, r["usage"]["completion_tokens"], n))
    return out_of_choice(r["choices"][0])


def try_complete(d, model, n=N_TOK, prompt=PROMPT):
    """(status, output or error body)."""
    st, _, data = request(d, "POST", "/v1/completions",
                          json.dumps(comp_body(model, n, prompt)).encode(),
                          {"Content-Type": "application/json"})
    if st != 200:
        return st, data
    return st, out_of_choice(json.loads(data)["choices"][0])


def same_out(a, b, what):
    check(a[0] == b[0], "%s: tokens %s vs %s" % (what, list(a[0])[:12], list(b[0])[:12]))
    for k, (x, y) in enumerate(zip(a[1], b[1])):
        check(abs(x - y) <= TOL, "%s: token %d logprob %.7f vs %.7f" % (what, k, x, y))


def close_out(a, b):
    return a[0] == b[0] and all(abs(x - y) <= TOL for x, y in zip(a[1], b[1]))


def differ(a, b, what):
    check(not close_out(a, b), "%s: the outputs are equal, so the check proves nothing"
          % what)


class Ctx:
    """What every section shares: paths, fixtures, and lorad generate's outputs (cached by
    the adapter's bytes)."""

    def __init__(self, build, fx, root):
        self.build, self.fx, self.root = build, fx, root
        self.model = os.path.join(fx, MODEL)
        self.slow = slow_model(build)
        self._refs = {}
        self._gen = {}
        self.fix = {n: Files.of(os.path.join(fx, "adapters", n))
                    for n in ("tq_all", "tq_attn", "tq_mlp", "ad_all")}

    def ref(self, files, slow=False, n=N_TOK):
        """lorad generate's output for files (None: the base)."""
        key = (files.key() if files else "base", slow, n)
        if key not in self._refs:
            args = ["--model", self.slow if slow else self.model, "--max-tokens", str(n),
                    "--logprobs", "1", "--ignore-eos"]
            args += (["--prompt-ids", ",".join(map(str, SLOW_PROMPT))] if slow
                     else ["--prompt", PROMPT])
            tmp = None
            if files:
                tmp = files.write(tempfile.mkdtemp(dir=self.root) + "/a")
                args += ["--adapter", tmp]
            g = lorad_generate(self.build, args)
            if tmp:
                shutil.rmtree(os.path.dirname(tmp))
            self._refs[key] = (tuple(g["ids"]), [x["logprob"] for x in g["logprobs"]])
        return self._refs[key]

    def gen(self, name, slow=False, r=4, alpha=8, target=("q_proj", "v_proj"), dtype="F32",
            seed=1, delta=1.0):
        """An adapter generated with make_fixtures.write_adapter (for the tiny model, or
        the slow one); returns its Files."""
        key = (name, slow, r, alpha, tuple(target), dtype, seed, delta)
        if key not in self._gen:
            out = tempfile.mkdtemp(dir=self.root)
            base = SLOW_MODEL if slow else next(m for m in MF.MODELS if m["name"] == MODEL)
            a = dict(name=name, base=base["name"], r=r, alpha=alpha, target=list(target),
                     dtype=dtype, delta=delta, features=[])
            MF.write_adapter(out, a, {base["name"]: base}, np.random.default_rng([4711, seed]))
            self._gen[key] = Files.of(os.path.join(out, "adapters", name))
            shutil.rmtree(out)
        return self._gen[key]

    def tmpdir(self, prefix):
        return tempfile.mkdtemp(prefix=prefix, dir=self.root)


# ---- daemons
def start(suite, name, build, args):
    try:
        return Daemon(build, args)
    except Fail as e:
        suite.report("%s_daemon_starts" % name, str(e))
        return None


def finish(suite, name, d):
    suite.run("%s_daemon_alive_then_exits_0_on_sigterm" % name, check_alive_then_exit_0, d)
    suite.run("%s_daemon_log_has_no_sanitizer_report" % name, check_sanitizer_clean, d)


def kill9(d):
    d.stop(signal.SIGKILL)
    wait_log_stable(d)


def normal(d, headers=None):
    """A normal request on the base answers 200: the daemon keeps serving."""
    st, _, data = request(d, "POST", "/v1/completions",
                          json.dumps({"prompt": "Hello", "max_tokens": 2}).encode(),
                          dict(headers or {}, **{"Content-Type": "application/json"}))
    check(st == 200, "then a normal request answered %d: %r" % (st, data[:300]))


# ---- raw sockets
def read_response(s, timeout=SOCK_TIMEOUT):
    """One HTTP response (Content-Length framed) from s: (status, headers, body); status 0
    when the daemon closed (or reset) without answering."""
    s.settimeout(timeout)
    data = b""
    while True:
        head_end = data.find(b"\r\n\r\n")
        if head_end >= 0:
            lines = data[:head_end].decode("latin-1").split("\r\n")
            hdrs = {}
            for line in lines[1:]:
                k, _, v = line.partition(":")
                hdrs[k.strip().lower()] = v.strip()
            status = int(lines[0].split()[1])
            if status == 100:
                data = data[head_end + 4:]
                continue
            n = int(hdrs.get("content-length", "-1"))
            body = data[head_end + 4:]
            if n >= 0 and len(body) >= n:
                return status, hdrs, body[:n]
        try:
            b = s.recv(65536)
        except (ConnectionResetError, BrokenPipeError):
            b = b""
        except socket.timeout:
            raise Fail("no complete answer within %d s (read %r)" % (timeout, data[:200]))
        if not b:
            if not data:
                return 0, {}, b""
            raise Fail("the connection closed mid-answer: %r" % data[:300])
        data += b


class RawUpload:
    """A PUT sent piece by piece over its own socket."""

    def __init__(self, port, name, body, query="", chunked=False, extra=(), host="127.0.0.1"):
        self.body, self.pos, self.chunked = body, 0, chunked
        head = ["PUT /v1/adapters/%s%s HTTP/1.1" % (name, query), "Host: 127.0.0.1",
                "Content-Type: " + MP_CT]
        head.append("Transfer-Encoding: chunked" if chunked
                    else "Content-Length: %d" % len(body))
        head += ["%s: %s" % kv for kv in extra]
        self.s = socket.create_connection((host, port), timeout=SOCK_TIMEOUT)
        self.s.sendall(("\r\n".join(head) + "\r\n\r\n").encode())

    def send(self, n):
        """Sends the next n bytes of the body."""
        piece = self.body[self.pos:self.pos + n]
        self.pos += len(piece)
        if self.chunked:
            piece = b"%x\r\n%s\r\n" % (len(piece), piece)
        self.s.sendall(piece)

    def send_to(self, offset, step=4096, pause=0.0):
        while self.pos < offset:
            self.send(min(step, offset - self.pos))
            if pause:
                time.sleep(pause)

    def finish(self):
        self.send(len(self.body) - self.pos)
        if self.chunked:
            self.s.sendall(b"0\r\n\r\n")
        return self.response()

    def response(self):
        try:
            return read_response(self.s)
        finally:
            self.close()

    def close(self):
        self.s.close()


class RawStream:
    """A streamed completion over its own socket (Connection: close), read incrementally."""

    def __init__(self, port, body):
        data = json.dumps(dict(body, stream=True)).encode()
        self.s = socket.create_connection(("127.0.0.1", port), timeout=SOCK_TIMEOUT)
        self.s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
                       b"application/json\r\nConnection: close\r\nContent-Length: %d\r\n\r\n"
                       % len(data) + data)
        self.buf = b""
        self.eof = False

    def events_so_far(self):
        return self.buf.count(b"data: ")

    def done(self):
        return b"data: [DONE]" in self.buf

    def read_events(self, n, timeout=SOCK_TIMEOUT):
        deadline = time.time() + timeout
        while self.events_so_far() < n and not self.eof and time.time() < deadline:
            self._recv(max(0.01, deadline - time.time()))
        check(self.events_so_far() >= n, "the stream gave %d events, waited for %d"
              % (self.events_so_far(), n))

    def drain_nowait(self):
        while not self.eof and select.select([self.s], [], [], 0)[0]:
            self._recv(1)

    def _recv(self, timeout):
        self.s.settimeout(timeout)
        try:
            b = self.s.recv(65536)
        except socket.timeout:
            return
        if not b:
            self.eof = True
        self.buf += b

    def finish(self, timeout=300):
        deadline = time.time() + timeout
        while not self.eof and time.time() < deadline:
            self._recv(max(0.01, deadline - time.time()))
        self.s.close()
        check(self.eof, "the stream did not end within %d s" % timeout)
        return self.parse()

    def parse(self):
        """(status, events): the JSON of each data: line, and "[DONE]"."""
        head_end = self.buf.find(b"\r\n\r\n")
        check(head_end > 0, "no HTTP answer: %r" % self.buf[:200])
        head = self.buf[:head_end].decode("latin-1").lower()
        status = int(head.split()[1])
        body = self.buf[head_end + 4:]
        if "transfer-encoding: chunked" in head:
            out, pos = b"", 0
            while True:
                eol = body.index(b"\r\n", pos)
                n = int(body[pos:eol].split(b";")[0], 16)
                if n == 0:
                    break
                out += body[eol + 2:eol + 2 + n]
                pos = eol + 2 + n + 2
            body = out
        events = []
        for block in body.decode().split("\n\n"):
            if block.startswith("data: "):
                p = block[len("data: "):]
                events.append(p if p == "[DONE]" else json.loads(p))
        return status, events


def stream_output(events):
    """(token ids, logprobs, finish_reason) of a completions stream with logprobs."""
    ids, lps, finish = [], [], None
    for e in events:
        if e == "[DONE]":
            continue
        check("error" not in e, "the stream carried an error: %r" % e)
        for c in e["choices"]:
            if c.get("logprobs"):
                ids += [int(t.split(":", 1)[1]) for t in c["logprobs"]["tokens"]]
                lps += c["logprobs"]["token_logprobs"]
            if c.get("finish_reason"):
                finish = c["finish_reason"]
    check(events and events[-1] == "[DONE]", "the stream does not end with [DONE]")
    return (tuple(ids), lps), finish


# --------------------------------------------------------------------------- main daemon
class Main:
    """The main daemon: tiny model, its store, and what the checks learn along the way."""

    def __init__(self, ctx, d, store, allowed, outside):
        self.ctx, self.d, self.store = ctx, d, store
        self.allowed, self.outside = allowed, outside
        self.versions = {}   # Files.key() -> version seen in a 201


def check_fixtures_matter(m):
    """The adapters used below change the output, and differently: otherwise the version
    checks would prove nothing."""
    c = m.ctx
    outs = {"base": c.ref(None)}
    for n in ("tq_all", "tq_attn", "tq_mlp"):
        outs[n] = c.ref(c.fix[n])
    outs["g_attn"] = c.ref(gen_attn_variant(c))
    names = sorted(outs)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            differ(outs[a], outs[b], "%s vs %s" % (a, b))


def gen_attn_variant(c):
    """Same config bytes as tq_attn (r 4, alpha 8, q/v, F16), other weights."""
    return c.gen("tq_attn", r=4, alpha=8, target=("q_proj", "v_proj"), dtype="F16", seed=2)


def check_upload_201_describes_it(m):
    f = m.ctx.fix["tq_mlp"]
    r = upload(m.d, "up1", f)
    want = {"id": "up1", "r": 2, "lora_alpha": 4.0, "dtype": "BF16",
            "target_modules": ["gate_proj", "up_proj", "down_proj"],
            "bytes_on_disk": len(f.cfg) + len(f.w)}
    for k, v in want.items():
        check(r.get(k) == v, "201 body: %s is %r, expected %r (%r)" % (k, r.get(k), v, r))
    check(r.get("state") in ("loaded", "merged"), "201 body: state %r" % r.get("state"))
    v = r.get("version")
    check(isinstance(v, str) and len(v) == 16 and int(v, 16) > 0, "version %r" % v)
    check(isinstance(r.get("bytes_in_memory"), int) and r["bytes_in_memory"] > 0,
          "bytes_in_memory %r" % r.get("bytes_in_memory"))
    m.versions[f.key()] = v
    m.store.check_holds("up1", f)
    m.store.check_clean()


def check_upload_listed(m):
    f = m.ctx.fix["tq_mlp"]
    ids = model_ids(m.d)
    check("up1" in ids, "/v1/models does not list up1: %s" % ids)
    st, lst = jget(m.d, "/v1/adapters")
    check(st == 200 and lst["object"] == "list", "/v1/adapters: %d %r" % (st, lst))
    names = [a["id"] for a in lst["data"]]
    check(names == sorted(set(m.store.adapters())), "/v1/adapters lists %s, the store holds %s"
          % (names, m.store.adapters()))
    one = wait_for(lambda: (lambda i: i if i and i["state"] == "loaded" else None)(
        adapter_info(m.d, "up1")), 10, "GET /v1/adapters/up1 state loaded")
    check(one["version"] == m.versions[f.key()], "GET gives version %r, the 201 gave %r"
          % (one["version"], m.versions[f.key()]))
    check(one["r"] == 2 and one["bytes_on_disk"] == len(f.cfg) + len(f.w), "GET: %r" % one)
    st, mo = jget(m.d, "/v1/models/up1")
    check(st == 200 and mo["id"] == "up1" and mo["parent"] == MODEL,
          "/v1/models/up1: %d %r" % (st, mo))


def check_upload_output(m):
    same_out(complete(m.d, "up1"), m.ctx.ref(m.ctx.fix["tq_mlp"]),
             "uploaded up1 vs lorad generate on its files")
    t = time.time()
    i = wait_for(lambda: (lambda i: i if i and i["requests"] == 1 and i["in_use"] == 0 else
                          None)(adapter_info(m.d, "up1")), 10, "GET counting one request")
    check(i["tokens"] == N_TOK, "GET: %r tokens served, %d generated" % (i["tokens"], N_TOK))
    check(isinstance(i["last_used"], int) and abs(i["last_used"] - t) < 120,
          "last_used %r, now %d" % (i["last_used"], t))


def check_409_without_replace(m):
    before = m.store.snapshot()
    st, hdrs, data = put(m.d, "up1", upload_body(m.ctx.fix["tq_all"]))
    check_error(st, hdrs, data, 409, "exists", code="adapter_exists")
    st, hdrs, data = put(m.d, "up1", upload_body(m.ctx.fix["tq_all"]), "?replace=false")
    check_error(st, hdrs, data, 409, "exists", code="adapter_exists")
    check(m.store.snapshot() == before, "the store changed: %s"
          % diff_snapshots(before, m.store.snapshot()))
    same_out(complete(m.d, "up1"), m.ctx.ref(m.ctx.fix["tq_mlp"]), "up1 after the 409s")


def check_replace(m):
    f = m.ctx.fix["tq_all"]
    old = adapter_info(m.d, "up1")["version"]
    r = upload(m.d, "up1", f, "?replace=true")
    check(r["id"] == "up1" and r["r"] == 8 and r["dtype"] == "F32" and
          r["target_modules"] == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                  "up_proj", "down_proj"], "201 body after replace: %r" % r)
    check(r["version"] != old, "replace kept version %s" % old)
    m.versions[f.key()] = r["version"]
    m.store.check_holds("up1", f)
    m.store.check_clean()
    same_out(complete(m.d, "up1"), m.ctx.ref(f), "up1 replaced vs lorad generate on tq_all")
    check(adapter_info(m.d, "up1")["version"] == r["version"], "GET: old version after replace")


def check_version_is_content_hash(m):
    """Same bytes, same version: an upload and the copy the store started with."""
    complete(m.d, "tq_all")
    v = wait_for(lambda: (adapter_info(m.d, "tq_all") or {}).get("version"), 10,
                 "tq_all's version")
    check(v == m.versions[m.ctx.fix["tq_all"].key()], "tq_all on disk has version %s, the "
          "same bytes uploaded as up1 got %s" % (v, m.versions[m.ctx.fix["tq_all"].key()]))


def check_delete(m):
    st, _, data = request(m.d, "DELETE", "/v1/adapters/up1")
    check(st == 200, "DELETE answered %d: %r" % (st, data[:200]))
    r = json.loads(data)
    check(r.get("id") == "up1" and r.get("deleted") is True, "DELETE body %r" % r)
    st, hdrs, data = request(m.d, "POST", "/v1/completions",
                             json.dumps(comp_body("up1")).encode(),
                             {"Content-Type": "application/json"})
    check_error(st, hdrs, data, 404, "does not exist", code="model_not_found")
    st, hdrs, data = request(m.d, "GET", "/v1/adapters/up1")
    check_error(st, hdrs, data, 404, "does not exist")
    st, hdrs, data = request(m.d, "DELETE", "/v1/adapters/up1")
    check_error(st, hdrs, data, 404, "does not exist")
    check("up1" not in model_ids(m.d), "/v1/models still lists up1")
    check(m.store.adapters() == ["tq_all", "tq_attn"], "the store holds %s, expected "
          "exactly tq_all and tq_attn" % m.store.entries())
    m.store.check_clean()


def check_curl(m):
    curl = shutil.which("curl")
    if not curl:
        print("NOTE: no curl on this machine; `curl -F` upload not exercised")
        return
    f = m.ctx.fix["tq_attn"]
    src = f.write(os.path.join(m.ctx.tmpdir("curl-"), "a"))
    out = os.path.join(src, "..", "response")
    p = subprocess.run([curl, "-sS", "-o", out, "-w", "%{http_code}", "-X", "PUT",
                        "-F", "config=@" + os.path.join(src, "adapter_config.json"),
                        "-F", "weights=@" + os.path.join(src, "adapter_model.safetensors"),
                        "http://127.0.0.1:%d/v1/adapters/bycurl" % m.d.port],
                       capture_output=True, timeout=SOCK_TIMEOUT)
    body = open(out, "rb").read() if os.path.exists(out) else b""
    check(p.stdout == b"201", "curl -F: HTTP %s %s %r" % (p.stdout, p.stderr, body[:300]))
    check(json.loads(body)["id"] == "bycurl", "curl -F: %r" % body)
    m.store.check_holds("bycurl", f)
    same_out(complete(m.d, "bycurl"), m.ctx.ref(f), "uploaded with curl")
    check(request(m.d, "DELETE", "/v1/adapters/bycurl")[0] == 200, "DELETE bycurl")


def check_concurrent_uploads(m):
    """Four uploads interleaved: four temporaries at once, four complete adapters."""
    c = m.ctx
    files = [c.fix["tq_all"], c.fix["tq_attn"], c.fix["tq_mlp"], gen_attn_variant(c)]
    ups = [RawUpload(m.d.port, "conc%d" % i, upload_body(f)) for i, f in enumerate(files)]
    for u in ups:
        u.send(len(u.body) // 2)
    wait_for(lambda: len([t for t in m.store.temporaries() if t.startswith(".tmp-")]) == 4,
             10, "four temporaries while four uploads are half sent (have %s)"
             % m.store.temporaries())
    res = [u.finish() for u in ups]
    for i, (st, _, data) in enumerate(res):
        check(st == 201, "conc%d answered %d: %r" % (i, st, data[:200]))
    for i, f in enumerate(files):
        m.store.check_holds("conc%d" % i, f)
        same_out(complete(m.d, "conc%d" % i), c.ref(f), "conc%d" % i)
        check(request(m.d, "DELETE", "/v1/adapters/conc%d" % i)[0] == 200, "DELETE conc%d" % i)
    m.store.check_clean()


def check_client_gone_mid_upload(m):
    before = m.store.snapshot()
    u = RawUpload(m.d.port, "gone", upload_body(m.ctx.fix["tq_all"]))
    u.send(len(u.body) // 2)
    wait_for(lambda: m.store.temporaries(), 10, "a temporary while the upload is half sent")
    u.close()
    wait_for(lambda: m.store.snapshot() == before, 10, "the store back as it was after the "
             "client went away mid-upload (%s)" % m.store.entries())
    check("gone" not in model_ids(m.d), "'gone' is listed")
    normal(m.d)


def check_failed_adapter_listed_then_deleted(m):
    m.store.add("badbase", m.ctx.fix["ad_all"])
    wait_for(lambda: "badbase" in model_ids(m.d), LIVE_WAIT, "badbase listed")
    st, data = try_complete(m.d, "badbase")
    check(st == 422, "badbase answered %d: %r" % (st, data[:200]))
    i = adapter_info(m.d, "badbase")
    check(i and i["state"] == "failed" and "another base model" in (i.get("error") or ""),
          "GET /v1/adapters/badbase: %r" % i)
    st, _, data = request(m.d, "DELETE", "/v1/adapters/badbase")
    check(st == 200, "DELETE of a failed adapter answered %d: %r" % (st, data[:200]))
    check("badbase" not in m.store.entries() and "badbase" not in model_ids(m.d),
          "badbase still there")
    m.store.check_clean()


def check_concurrent_replaces(m, rounds=24):
    """Two ?replace=true uploads of one name that finish together: whichever lands last
    in the store must be the version served (and listed), as it will be after a restart."""
    try:
        concurrent_replaces(m, rounds)
    finally:
        request(m.d, "DELETE", "/v1/adapters/twice")
    m.store.check_clean()


def concurrent_replaces(m, rounds):
    c = m.ctx
    a, b = c.fix["tq_all"], c.fix["tq_mlp"]
    upload(m.d, "twice", a)
    for k in range(rounds):
        ua = RawUpload(m.d.port, "twice", upload_body(a), "?replace=true")
        ub = RawUpload(m.d.port, "twice", upload_body(b), "?replace=true")
        ua.send(len(ua.body) - 1)
        ub.send(len(ub.body) - 1)
        time.sleep(0.05)
        # the last bytes together, or a few ms apart, either one first
        first, second = (ua, ub) if k % 2 == 0 else (ub, ua)
        first.send(1)
        time.sleep((0, 0.002, 0.005, 0.01)[k // 2 % 4])
        second.send(1)
        ra, rb = ua.response(), ub.response()
        check(ra[0] == 201 and rb[0] == 201, "round %d: answered %d and %d" % (k, ra[0], rb[0]))
        disk = Files.of(os.path.join(m.store.path, "twice"))
        check(disk.key() in (a.key(), b.key()), "round %d: the store holds neither upload" % k)
        want = json.loads(ra[2] if disk.key() == a.key() else rb[2])["version"]
        ref = c.ref(a if disk.key() == a.key() else b)

        def consistent():
            st, out = try_complete(m.d, "twice")
            i = adapter_info(m.d, "twice") or {}
            return st == 200 and close_out(out, ref) and i.get("version") == want
        try:
            wait_for(consistent, 3, "round %d" % k)
        except Fail:
            i = adapter_info(m.d, "twice") or {}
            raise Fail("round %d: the store holds %s (version %s) but the daemon serves "
                       "version %s, and a restart would serve the other one" % (
                           k, "tq_all" if disk.key() == a.key() else "tq_mlp", want,
                           i.get("version")))


# ---- the bad-upload table
class Row:
    def __init__(self, name, status, msg, body, target="x", query="", ct=MP_CT, code=ANY,
                 param=ANY, existing=False):
        self.name, self.status, self.msg, self.body = name, status, msg, body
        self.target, self.query, self.ct, self.code, self.param = target, query, ct, code, param
        self.existing = existing   # the target exists and must be left as it was


def cfg_with(files, **kw):
    o = json.loads(files.cfg)
    o.update(kw)
    return json.dumps(o).encode()


def nan_weights(files):
    """files' safetensors (F32) with its last float set to NaN."""
    check(b'"F32"' in files.w[:4096], "nan_weights needs an F32 file")
    return files.w[:-4] + b"\x00\x00\xc0\x7f"


def bad_upload_rows(c):
    f = c.fix["tq_mlp"]
    fa = c.fix["tq_all"]
    big_rank = c.gen("rank16", r=16, alpha=16, target=("q_proj", "v_proj"), seed=3)
    other = c.fix["ad_all"]
    cfg, w = ("config", "adapter_config.json"), ("weights", "adapter_model.safetensors")

    def mp(*parts):
        return multipart(list(parts))
    ok = upload_body(f)
    R = Row
    return [
        R("400_missing_config_part", 400, "'config' (adapter_config.json) is missing",
          mp(w + (f.w,)), code="missing_part"),
        R("400_missing_weights_part", 400, "'weights' (adapter_model.safetensors) is missing",
          mp(cfg + (f.cfg,)), code="missing_part"),
        R("400_empty_config_part", 400, "'config' (adapter_config.json) is missing or empty",
          mp(cfg + (b"",), w + (f.w,)), code="missing_part"),
        R("400_empty_weights_part", 400, "'weights' (adapter_model.safetensors) is missing or "
          "empty", mp(cfg + (f.cfg,), w + (b"",)), code="missing_part"),
        R("400_no_parts_at_all", 400, "is missing", mp()),
        R("400_wrong_part_names", 400, "unexpected part 'adapter_config'",
          mp(("adapter_config", "adapter_config.json", f.cfg),
             ("adapter_model", "adapter_model.safetensors", f.w)), code="unexpected_part"),
        R("400_extra_unknown_part", 400, "unexpected part 'readme'",
          mp(cfg + (f.cfg,), w + (f.w,), ("readme", "README.md", b"hello")),
          code="unexpected_part"),
        R("400_part_without_a_name", 400, "unexpected part",
          mp((None, "adapter_config.json", f.cfg), w + (f.w,))),
        R("400_duplicated_config_part", 400, "part 'config' is given twice",
          mp(cfg + (f.cfg,), cfg + (f.cfg,), w + (f.w,)), code="duplicate_part"),
        R("400_duplicated_weights_part", 400, "part 'weights' is given twice",
          mp(cfg + (f.cfg,), w + (f.w,), w + (f.w,)), code="duplicate_part"),
        R("400_body_ends_before_the_closing_boundary", 400, "ended early", ok[:-40]),
        R("400_multipart_without_boundary", 400, "no boundary", ok, ct="multipart/form-data"),
        R("415_application_json", 415, "multipart/form-data",
          json.dumps({"config": "x"}).encode(), ct="application/json",
          code="unsupported_media_type"),
        R("415_no_content_type", 415, "multipart/form-data", ok, ct=None,
          code="unsupported_media_type"),
        R("422_truncated_safetensors", 422, "truncated", mp(cfg + (f.cfg,),
                                                             w + (f.w[:len(f.w) // 2],)),
          code="adapter_invalid"),
        R("422_safetensors_of_6_bytes", 422, "too short", mp(cfg + (f.cfg,), w + (f.w[:6],)),
          code="adapter_invalid"),
        R("422_config_not_json", 422, "not valid JSON", mp(cfg + (b"{not json",), w + (f.w,)),
          code="adapter_invalid"),
        R("422_config_a_json_list", 422, "must hold a JSON object",
          mp(cfg + (b"[1, 2]",), w + (f.w,)), code="adapter_invalid"),
        R("422_dora", 422, "use_dora is true", mp(cfg + (cfg_with(f, use_dora=True),),
                                                  w + (f.w,)), code="adapter_invalid"),
        R("422_modules_to_save", 422, "modules_to_save is not empty",
          mp(cfg + (cfg_with(f, modules_to_save=["lm_head"]),), w + (f.w,)),
          code="adapter_invalid"),
        R("422_shapes_for_another_base", 422, "adapter made for another base model",
          upload_body(other), code="adapter_invalid"),
        R("422_nan_weights", 422, "contains NaN", mp(cfg + (fa.cfg,), w + (nan_weights(fa),)),
          code="adapter_invalid"),
        R("422_rank_above_max_rank", 422, "above the limit of %d" % MAX_RANK,
          upload_body(big_rank), code="adapter_invalid"),
        R("422_config_and_weights_disagree", 422, "adapter_config.json",
          mp(cfg + (fa.cfg,), w + (f.w,)), code="adapter_invalid"),
        R("400_name_dotdot", 400, "adapter names", ok, target="..", code="invalid_name"),
        R("400_name_dotdot_percent_encoded", 400, "adapter names", ok, target="%2E%2E",
          code="invalid_name"),
        R("400_name_hidden", 400, "adapter names", ok, target=".hidden", code="invalid_name"),
        R("400_name_starting_with_dash", 400, "adapter names", ok, target="-x",
          code="invalid_name"),
        R("400_name_of_65_chars", 400, "adapter names", ok, target="a" * 65,
          code="invalid_name"),
        R("400_name_is_the_base_model_id", 400, "base model's id", ok, target=MODEL,
          code="invalid_name"),
        R("400_name_with_a_space", 400, "adapter names", ok, target="a%20b",
          code="invalid_name"),
        R("400_name_with_a_nul_byte", 400, "adapter names", ok, target="nul%00x",
          code="invalid_name"),
        # MHD decodes %2F before routing: /v1/adapters/a/b is no route at all
        R("404_name_with_an_encoded_slash", 404, "no route", ok, target="a%2Fb"),
        R("400_replace_maybe", 400, "'replace' must be true or false", ok, query="?replace=maybe",
          param="replace"),
        R("409_existing_name_without_replace", 409, "exists", ok, target="tq_attn",
          code="adapter_exists", existing=True),
        R("422_invalid_replacement_keeps_the_old_adapter", 422, "use_dora", mp(
            cfg + (cfg_with(f, use_dora=True),), w + (f.w,)), target="tq_attn",
          query="?replace=true", code="adapter_invalid", existing=True),
    ]


def run_upload_row(m, r):
    before = m.store.snapshot()
    listed = set(model_ids(m.d))
    try:
        st, hdrs, data = put(m.d, r.target, r.body, r.query, ct=r.ct)
        e = check_error(st, hdrs, data, r.status, r.msg, r.code, r.param)
        check(".tmp-" not in e["message"] and m.store.path not in e["message"],
              "the message names a path on the server: %r" % e["message"])
        wait_for(lambda: m.store.snapshot() == before, 5, "the store as it was (%s)"
                 % diff_snapshots(before, m.store.snapshot()))
        now = set(model_ids(m.d))
        check(now == listed, "the listing changed: %s" % sorted(now ^ listed))
        if r.existing:
            same_out(complete(m.d, r.target), m.ctx.ref(m.ctx.fix[r.target]),
                     "%s after the refused upload" % r.target)
        normal(m.d)
    finally:
        # a row that wrongly published something must not spoil the next ones
        for n in set(m.store.adapters()) - {k for k in before if os.sep not in k}:
            request(m.d, "DELETE", "/v1/adapters/" + n)


def check_delete_name_with_nul_byte(m):
    """DELETE /v1/adapters/tq_all%00.bak names no adapter (the name holds a NUL byte): it
    must delete nothing, least of all tq_all."""
    before = m.store.snapshot()
    st, _, data = request(m.d, "DELETE", "/v1/adapters/tq_all%00.bak")
    try:
        check(st in (400, 404), "answered %d: %r" % (st, data[:200]))
        check(m.store.snapshot() == before, "the store changed: %s"
              % diff_snapshots(before, m.store.snapshot()))
    finally:
        if "tq_all" not in m.store.entries():
            m.store.add("tq_all", m.ctx.fix["tq_all"])
            wait_for(lambda: "tq_all" in model_ids(m.d), LIVE_WAIT, "tq_all back")


def check_413_declared(m, expect_continue):
    """Only the headers: the declared length alone gets the 413, the body is never asked."""
    extra = [("Connection", "close")]
    if expect_continue:
        extra.append(("Expect", "100-continue"))
    body = b"x" * ((MAX_UPLOAD_MB << 20) + 1)
    u = RawUpload(m.d.port, "big", body, extra=extra)
    try:
        first = u.s.recv(12, socket.MSG_PEEK)
        check(not first.startswith(b"HTTP/1.1 100"), "the daemon asked for the body (100 "
              "Continue) of an upload it must refuse")
        st, hdrs, data = u.response()
    finally:
        u.close()
    check_error(st, hdrs, data, 413, "limit is %d MB" % MAX_UPLOAD_MB, code="request_too_large")
    m.store.check_clean()
    normal(m.d)


def check_413_chunked(m):
    """A chunked upload (no Content-Length) that grows past --max-upload-mb: answered 413,
    or the connection cut, before the daemon reads on; nothing left in the store."""
    before = m.store.snapshot()
    f = m.ctx.fix["tq_all"]
    body = multipart([("config", "adapter_config.json", f.cfg),
                      ("weights", "adapter_model.safetensors", b"\0" * (2 << 20))])
    u = RawUpload(m.d.port, "bigchunked", body, chunked=True)
    sent, cut = 0, False
    try:
        while sent < (MAX_UPLOAD_MB << 20) + (256 << 10):
            if select.select([u.s], [], [], 0)[0]:
                break   # answered, or closed
            try:
                u.send(32 << 10)
            except (BrokenPipeError, ConnectionResetError):
                cut = True
                break
            sent += 32 << 10
        st, hdrs, data = u.response()
    finally:
        u.close()
    if st == 0:
        print("NOTE: chunked upload past --max-upload-mb: connection %s after %d KiB, "
              "without a 413" % ("reset" if cut else "closed", sent >> 10))
    else:
        check_error(st, hdrs, data, 413, "--max-upload-mb", code="request_too_large")
    wait_for(lambda: m.store.snapshot() == before, 10, "the store as it was (%s)"
             % diff_snapshots(before, m.store.snapshot()))
    normal(m.d)


def padded(files, extra):
    """files with extra bytes of JSON whitespace: the safetensors header grows by a multiple
    of 8 (data stays aligned), the config by the rest. Same tensors, same config."""
    import struct
    hlen = struct.unpack("<Q", files.w[:8])[0]
    k = extra - extra % 8
    w = struct.pack("<Q", hlen + k) + files.w[8:8 + hlen] + b" " * k + files.w[8 + hlen:]
    return Files(files.cfg + b" " * (extra - k), w)


def exact_size_body(files, size):
    """An upload body of exactly size bytes, by padding the files."""
    pad = size - len(upload_body(files))
    check(pad >= 0, "files too big for %d bytes" % size)
    f = padded(files, pad)
    return f, upload_body(f)


def check_upload_of_exactly_max_upload_mb(m):
    f, body = exact_size_body(m.ctx.fix["tq_mlp"], MAX_UPLOAD_MB << 20)
    check(len(body) == MAX_UPLOAD_MB << 20, "body of %d bytes" % len(body))
    st, _, data = put(m.d, "atlimit", body)
    check(st == 201, "an upload of exactly %d MiB answered %d: %r" % (MAX_UPLOAD_MB, st,
                                                                     data[:300]))
    m.store.check_holds("atlimit", f)
    same_out(complete(m.d, "atlimit"), m.ctx.ref(m.ctx.fix["tq_mlp"]), "the padded tq_mlp")
    check(request(m.d, "DELETE", "/v1/adapters/atlimit")[0] == 200, "DELETE atlimit")
    _, body = exact_size_body(m.ctx.fix["tq_mlp"], (MAX_UPLOAD_MB << 20) + 1)
    # headers first: the daemon answers from Content-Length alone, before any body byte
    # (sent anyway after 2 s of silence, so a daemon that reads on is caught too)
    u = RawUpload(m.d.port, "overlimit", body)
    try:
        if not select.select([u.s], [], [], 2.0)[0]:
            try:
                u.send(len(body))
            except (BrokenPipeError, ConnectionResetError):
                pass
        st, hdrs, data = u.response()
    finally:
        u.close()
    check_error(st, hdrs, data, 413, "limit", code="request_too_large")
    m.store.check_clean()


def check_name_of_64_chars_accepted(m):
    name = "b" * 64
    upload(m.d, name, m.ctx.fix["tq_mlp"])
    same_out(complete(m.d, name), m.ctx.ref(m.ctx.fix["tq_mlp"]), "64-char name")
    check(request(m.d, "DELETE", "/v1/adapters/" + name)[0] == 200, "DELETE")


def check_multipart_file_names_ignored(m):
    """A part's filename never names a file: '../../x' and '/etc/...' are just parts."""
    f = m.ctx.fix["tq_mlp"]
    parent = os.path.dirname(m.store.path)
    before = sorted(os.listdir(parent))
    body = multipart([("config", "../../evil.json", f.cfg), ("weights", "/tmp/evil", f.w)])
    st, _, data = put(m.d, "fnames", body)
    check(st == 201, "answered %d: %r" % (st, data[:200]))
    m.store.check_holds("fnames", f)
    check(sorted(os.listdir(parent)) == before, "files appeared next to the store: %s"
          % sorted(set(os.listdir(parent)) - set(before)))
    check(not os.path.exists("/tmp/evil"), "/tmp/evil was written")
    check(request(m.d, "DELETE", "/v1/adapters/fnames")[0] == 200, "DELETE")


# ---- vLLM's endpoints
def vllm(m, path, body, ct="application/json"):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return request(m.d, "POST", path, data, {"Content-Type": ct} if ct else {})


def check_vllm_load_allowed(m):
    st, hdrs, data = vllm(m, "/v1/load_lora_adapter",
                          {"lora_name": "vl1", "lora_path": os.path.join(m.allowed, "a1")})
    check(st == 200, "answered %d: %r" % (st, data[:300]))
    check(data.decode().startswith("Success: LoRA adapter 'vl1' added"), "body %r" % data)
    check("vl1" in model_ids(m.d), "vl1 not listed")
    m.store.check_holds("vl1", m.ctx.fix["tq_all"])
    same_out(complete(m.d, "vl1"), m.ctx.ref(m.ctx.fix["tq_all"]), "vl1 (vLLM load)")


def check_vllm_load_inside_adapter_dir(m):
    st, _, data = vllm(m, "/v1/load_lora_adapter",
                       {"lora_name": "vl2",
                        "lora_path": os.path.join(m.store.path, ".staging", "s1")})
    check(st == 200 and data.startswith(b"Success:"), "answered %d: %r" % (st, data[:300]))
    same_out(complete(m.d, "vl2"), m.ctx.ref(m.ctx.fix["tq_attn"]), "vl2 (vLLM load)")


def vllm_rows(m):
    """(name, path, body, status, message substring, ct)."""
    L, U = "/v1/load_lora_adapter", "/v1/unload_lora_adapter"
    a1 = os.path.join(m.allowed, "a1")
    J = "application/json"
    return [
        ("400_load_already_loaded", L, {"lora_name": "vl1", "lora_path": a1}, 400,
         "has already been loaded", J),
        ("403_load_path_outside", L, {"lora_name": "vx", "lora_path": os.path.join(
            m.outside, "o1")}, 403, "inside the adapter directory", J),
        ("403_load_dotdot_out_of_allowed_dir", L, {"lora_name": "vx", "lora_path": os.path.join(
            a1, "..", "..", os.path.basename(m.outside), "o1")}, 403, "inside", J),
        ("403_load_symlink_in_adapter_dir_pointing_outside", L, {
            "lora_name": "vx", "lora_path": os.path.join(m.store.path, ".links", "out")}, 403,
         "inside", J),
        ("403_load_symlink_in_allowed_dir_pointing_outside", L, {
            "lora_name": "vx", "lora_path": os.path.join(m.allowed, "escape")}, 403, "inside", J),
        ("403_load_the_adapter_dir_itself", L, {"lora_name": "vx", "lora_path": m.store.path},
         403, "inside", J),
        ("400_load_missing_lora_path", L, {"lora_name": "vx"}, 400, "must be provided", J),
        ("400_load_missing_lora_name", L, {"lora_path": a1}, 400, "must be provided", J),
        ("400_load_invalid_name", L, {"lora_name": "../vx", "lora_path": a1}, 400,
         "adapter names", J),
        ("400_load_base_model_id", L, {"lora_name": MODEL, "lora_path": a1}, 400,
         "base model's id", J),
        ("400_load_adapter_for_another_base", L, {"lora_name": "vx", "lora_path": os.path.join(
            m.allowed, "badbase")}, 400, "another base model", J),
        ("404_load_path_that_does_not_exist", L, {"lora_name": "vx", "lora_path": os.path.join(
            m.allowed, "nope")}, 404, "No such file", J),
        ("400_load_body_not_json", L, b"{lora_name", 400, "JSON", J),
        ("415_load_not_json_content_type", L, {"lora_name": "vx", "lora_path": a1}, 415,
         "application/json", "text/plain"),
        ("400_unload_missing_lora_name", U, {}, 400, "needs to be provided", J),
        ("404_unload_unknown", U, {"lora_name": "nope"}, 404, "cannot be found", J),
    ]


def run_vllm_row(m, row):
    _, path, body, status, msg, ct = row
    before = m.store.snapshot()
    listed = model_ids(m.d)
    st, hdrs, data = vllm(m, path, body, ct)
    check_error(st, hdrs, data, status, msg)
    check(m.store.snapshot() == before, "the store changed: %s"
          % diff_snapshots(before, m.store.snapshot()))
    check(model_ids(m.d) == listed, "the listing changed")
    normal(m.d)


def check_vllm_unload(m):
    for name in ("vl1", "vl2"):
        st, _, data = vllm(m, "/v1/unload_lora_adapter", {"lora_name": name})
        check(st == 200 and data.decode().startswith("Success: LoRA adapter '%s' removed"
                                                     % name), "answered %d: %r" % (st, data))
        st, hdrs, data = vllm(m, "/v1/unload_lora_adapter", {"lora_name": name})
        check_error(st, hdrs, data, 404, "cannot be found")
        st, _ = try_complete(m.d, name)
        check(st == 404, "%s used after unload: %d" % (name, st))
        check(name not in m.store.entries(), "%s still in the store" % name)
    check(os.path.isfile(os.path.join(m.allowed, "a1", "adapter_config.json")),
          "unload removed the source of the copy")
    m.store.check_clean()


# ---- the live directory
def copy_slowly(files, dst, pause):
    """mkdir, the config, a pause, half the weights, a pause, the rest."""
    os.mkdir(dst)
    with open(os.path.join(dst, "adapter_config.json"), "wb") as f:
        f.write(files.cfg)
    time.sleep(pause)
    with open(os.path.join(dst, "adapter_model.safetensors"), "wb") as f:
        f.write(files.w[:len(files.w) // 2])
        f.flush()
        time.sleep(pause)
        f.write(files.w[len(files.w) // 2:])


def wait_usable(m, name, ref, what):
    def ok():
        if name not in model_ids(m.d):
            return None
        st, out = try_complete(m.d, name)
        return st == 200 and close_out(out, ref)
    t0 = time.time()
    wait_for(ok, LIVE_WAIT, "%s listed and giving its output" % what)
    return time.time() - t0


def check_live_drop_in(m, pause):
    f = m.ctx.fix["tq_mlp"]
    name = "dropped%d" % int(pause * 1000)
    copy_slowly(f, os.path.join(m.store.path, name), pause)
    t = wait_usable(m, name, m.ctx.ref(f), "copied in file by file (%.2f s pauses)" % pause)
    print("live: %s usable %.2f s after the copy ended" % (name, t))


def check_live_rename_in(m):
    f = m.ctx.fix["tq_attn"]
    src = f.write(os.path.join(m.ctx.tmpdir("stage-"), "x"))
    os.rename(src, os.path.join(m.store.path, "renamed"))
    wait_usable(m, "renamed", m.ctx.ref(f), "renamed into the store")


def check_live_removal(m):
    for name in ("dropped100", "renamed"):
        shutil.rmtree(os.path.join(m.store.path, name))
    wait_for(lambda: not {"dropped100", "renamed"} & set(model_ids(m.d)), LIVE_WAIT,
             "removed adapters gone from /v1/models")
    for name in ("dropped100", "renamed"):
        st, _ = try_complete(m.d, name)
        check(st == 404, "%s removed from the directory answered %d" % (name, st))
        check(adapter_info(m.d, name) is None, "GET /v1/adapters/%s still answers" % name)


def check_live_change(m):
    """Files changed in place: reloaded on next use, with a new version (the same as the
    same bytes uploaded)."""
    c = m.ctx
    m.store.add("changing", c.fix["tq_all"])
    wait_usable(m, "changing", c.ref(c.fix["tq_all"]), "changing (before)")
    v1 = adapter_info(m.d, "changing")["version"]
    new = c.fix["tq_mlp"]
    for fn, data in (("adapter_config.json", new.cfg), ("adapter_model.safetensors", new.w)):
        with open(os.path.join(m.store.path, "changing", fn), "wb") as f:
            f.write(data)
    wait_usable(m, "changing", c.ref(new), "changing (after its files changed)")
    v2 = adapter_info(m.d, "changing")["version"]
    check(v2 != v1, "version still %s after the files changed" % v1)
    if new.key() in m.versions:
        check(v2 == m.versions[new.key()], "version %s; the same bytes uploaded got %s"
              % (v2, m.versions[new.key()]))


def check_sighup_rescans(m):
    """A change inotify does not report (bytes written into a file kept open: IN_MODIFY
    only) is seen after SIGHUP."""
    c = m.ctx
    old, new = c.fix["tq_attn"], gen_attn_variant(c)
    check(old.cfg == new.cfg and len(old.w) == len(new.w) and old.w != new.w,
          "the variant should differ from tq_attn in its weights only")
    m.store.add("hup", old)
    wait_usable(m, "hup", c.ref(old), "hup (before)")
    fd = os.open(os.path.join(m.store.path, "hup", "adapter_model.safetensors"),
                 os.O_WRONLY | os.O_TRUNC)
    try:
        os.write(fd, new.w)
        time.sleep(1.0)
        st, out = try_complete(m.d, "hup")
        check(st == 200, "hup answered %d" % st)
        if close_out(out, c.ref(new)):
            print("NOTE: the watcher saw a write to a file still open; SIGHUP not exercised")
            return
        same_out(out, c.ref(old), "hup before SIGHUP")
        m.d.proc.send_signal(signal.SIGHUP)
        wait_usable(m, "hup", c.ref(new), "hup after SIGHUP")
        check(any("SIGHUP" in line for line in m.d.log()), "no log line for SIGHUP")
    finally:
        os.close(fd)


# ---- symlinks out of the store
def check_delete_symlinked_adapter(m):
    target = m.ctx.fix["tq_mlp"].write(os.path.join(m.outside, "o_del"))
    before = Store(target).snapshot()
    pre = set(m.store.temporaries())
    os.symlink(target, os.path.join(m.store.path, "linked"))
    time.sleep(0.5)
    st, _, data = request(m.d, "DELETE", "/v1/adapters/linked")
    check(st in (200, 400, 403, 404), "DELETE answered %d: %r" % (st, data[:200]))
    after = Store(target).snapshot()
    check(after == before, "DELETE /v1/adapters/linked (a symlink to %s) changed files "
          "outside the store: %s" % (target, diff_snapshots(before, after)))
    wait_for(lambda: not set(m.store.temporaries()) - pre, 5, "no new temporaries in the "
             "store (have %s)" % m.store.temporaries())
    normal(m.d)


def check_replace_symlinked_adapter(m):
    target = m.ctx.fix["tq_mlp"].write(os.path.join(m.outside, "o_rep"))
    before = Store(target).snapshot()
    pre = set(m.store.temporaries())
    os.symlink(target, os.path.join(m.store.path, "linked2"))
    time.sleep(0.5)
    st, _, data = put(m.d, "linked2", upload_body(m.ctx.fix["tq_all"]), "?replace=true")
    check(st in (201, 400, 403, 409), "PUT ?replace=true answered %d: %r" % (st, data[:200]))
    after = Store(target).snapshot()
    check(after == before, "PUT /v1/adapters/linked2?replace=true (a symlink to %s) changed "
          "files outside the store: %s" % (target, diff_snapshots(before, after)))
    wait_for(lambda: not set(m.store.temporaries()) - pre, 5, "no new temporaries in the "
             "store (have %s)" % m.store.temporaries())
    normal(m.d)


def section_main(suite, c):
    root = c.tmpdir("main-")
    store = Store(os.path.join(root, "store"))
    os.makedirs(store.path)
    for n in ("tq_all", "tq_attn"):
        store.add(n, c.fix[n])
    c.fix["tq_attn"].write(os.path.join(store.path, ".staging", "s1"))
    allowed, outside = os.path.join(root, "allowed"), os.path.join(root, "outside")
    c.fix["tq_all"].write(os.path.join(allowed, "a1"))
    c.fix["ad_all"].write(os.path.join(allowed, "badbase"))
    c.fix["tq_all"].write(os.path.join(outside, "o1"))
    os.makedirs(os.path.join(store.path, ".links"))
    os.symlink(os.path.join(outside, "o1"), os.path.join(store.path, ".links", "out"))
    os.symlink(os.path.join(outside, "o1"), os.path.join(allowed, "escape"))
    d = start(suite, "main", c.build, [
        "--model", c.model, "--adapter-dir", store.path, "--max-upload-mb", str(MAX_UPLOAD_MB),
        "--max-rank", str(MAX_RANK), "--allow-adapter-path", allowed, "--max-tokens", "64"])
    if not d:
        return
    m = Main(c, d, store, allowed, outside)
    suite.run("fixture_adapters_change_the_output_and_differ", check_fixtures_matter, m)
    suite.run("upload_201_describes_the_adapter_and_store_holds_its_bytes",
              check_upload_201_describes_it, m)
    suite.run("uploaded_adapter_listed_in_models_and_adapters", check_upload_listed, m)
    suite.run("uploaded_adapter_output_equals_lorad_generate", check_upload_output, m)
    suite.run("upload_existing_name_409_without_replace_store_unchanged",
              check_409_without_replace, m)
    suite.run("replace_true_201_new_version_new_output", check_replace, m)
    suite.run("version_is_a_content_hash_upload_equals_on_disk", check_version_is_content_hash,
              m)
    suite.run("delete_200_then_404_on_use_get_and_second_delete", check_delete, m)
    suite.run("curl_F_upload_works_as_is", check_curl, m)
    suite.run("concurrent_uploads_use_distinct_temporaries_and_all_complete",
              check_concurrent_uploads, m)
    suite.run("client_gone_mid_upload_leaves_nothing", check_client_gone_mid_upload, m)
    suite.run("failed_adapter_listed_with_its_reason_then_deleted",
              check_failed_adapter_listed_then_deleted, m)
    suite.run("concurrent_replaces_of_one_name_serve_what_the_store_holds",
              check_concurrent_replaces, m)
    rows = bad_upload_rows(c)
    names = [r.name for r in rows]
    suite.run("bad_upload_row_names_are_unique", lambda: check(
        len(set(names)) == len(names), "duplicates: %s"
        % sorted({n for n in names if names.count(n) > 1})))
    for r in rows:
        suite.run("bad_upload_" + r.name, run_upload_row, m, r)
    suite.run("delete_of_a_name_with_a_nul_byte_deletes_nothing",
              check_delete_name_with_nul_byte, m)
    suite.run("bad_upload_413_content_length_over_max_upload_mb", check_413_declared, m, False)
    suite.run("bad_upload_413_content_length_with_expect_100_continue", check_413_declared, m,
              True)
    suite.run("bad_upload_413_chunked_past_max_upload_mb_answered_or_cut", check_413_chunked, m)
    suite.run("ok_upload_of_exactly_max_upload_mb_and_one_byte_more_413",
              check_upload_of_exactly_max_upload_mb, m)
    suite.run("ok_name_of_64_chars", check_name_of_64_chars_accepted, m)
    suite.run("ok_multipart_file_names_never_name_files", check_multipart_file_names_ignored, m)
    print("bad uploads: %d table rows, then the limits" % len(rows))
    suite.run("vllm_load_from_allow_adapter_path_200_usable_copied", check_vllm_load_allowed, m)
    suite.run("vllm_load_from_inside_adapter_dir_200_usable", check_vllm_load_inside_adapter_dir,
              m)
    for row in vllm_rows(m):
        suite.run("vllm_" + row[0], run_vllm_row, m, row)
    suite.run("vllm_unload_200_then_404_and_gone", check_vllm_unload, m)
    suite.run("live_dir_copied_in_file_by_file_picked_up", check_live_drop_in, m, 0.1)
    suite.run("live_dir_copied_in_with_long_pauses_picked_up", check_live_drop_in, m, 0.6)
    suite.run("live_dir_renamed_in_picked_up", check_live_rename_in, m)
    suite.run("live_dir_removed_disappears_and_404", check_live_removal, m)
    suite.run("live_dir_changed_files_reloaded_new_output_new_version", check_live_change, m)
    suite.run("live_dir_sighup_rescans", check_sighup_rescans, m)
    suite.run("delete_of_symlinked_adapter_leaves_files_outside_the_store_alone",
              check_delete_symlinked_adapter, m)
    suite.run("replace_of_symlinked_adapter_leaves_files_outside_the_store_alone",
              check_replace_symlinked_adapter, m)
    finish(suite, "main", d)


# --------------------------------------------------------------------------- slow daemon
class Slow:
    def __init__(self, c, d, store):
        self.ctx, self.d, self.store = c, d, store
        self.v1 = c.gen("sx1", slow=True, r=8, alpha=16, target=MF.PROJS, dtype="F16", seed=11)
        self.v2 = c.gen("sx2", slow=True, r=4, alpha=8, target=("q_proj", "v_proj"),
                        dtype="F32", seed=12)
        self.n = None
        self.old = self.new = None

    def complete(self, n):
        return complete(self.d, "sx", n, SLOW_PROMPT)

    def body(self):
        return comp_body("sx", self.n, SLOW_PROMPT)


def check_slow_setup(s):
    upload(s.d, "sx", s.v1)
    t0 = time.time()
    s.complete(100)
    per_tok = (time.time() - t0) / 100
    # long enough (about 1.5 s) that the replace, an upload with fsyncs, lands while the
    # stream runs; the check below says so if it did not
    s.n = max(200, min(1500, int(1.5 / max(per_tok, 1e-4))))
    t0 = time.time()
    s.old = s.complete(s.n)
    print("slow: %d-token requests, %.2f s each" % (s.n, time.time() - t0))


def check_replace_while_streaming(s):
    check(s.old is not None, "setup failed")
    st = RawStream(s.d.port, s.body())
    st.read_events(1)
    t0 = time.time()
    r = upload(s.d, "sx", s.v2, "?replace=true")
    t_put = time.time() - t0
    running = s.d.metrics()["lorad_running_sequences"]
    st.drain_nowait()
    seen, done = st.events_so_far(), st.done()
    print("slow: replace answered 201 in %.3f s with %d of %d events read, %d running"
          % (t_put, seen, s.n + 2, running))
    check(running == 1 and not done, "the stream had ended when the replace answered 201 "
          "(running %d, %d events read): the overlap is not proven" % (running, seen))
    wait_for(lambda: (adapter_info(s.d, "sx") or {}).get("version") == r["version"], 10,
             "GET /v1/adapters/sx giving the new version %s" % r["version"])
    status, events = st.finish()
    check(status == 200, "stream status %d" % status)
    out, finish = stream_output(events)
    check(finish == "length" and len(out[0]) == s.n, "the stream ended with %r after %d tokens"
          % (finish, len(out[0])))
    same_out(out, s.old, "the stream running across the replace vs the old version alone")
    s.store.check_holds("sx", s.v2)
    s.store.check_clean()


def check_after_replace_new_version(s):
    s.new = s.complete(s.n)
    ref = s.ctx.ref(s.v2, slow=True, n=s.n)
    same_out(s.new, ref, "a request after the replace vs lorad generate on the new files")
    differ(s.new, s.old, "new vs old version")


def check_delete_while_streaming(s):
    check(s.new is not None, "setup failed")
    st = RawStream(s.d.port, s.body())
    st.read_events(1)
    i = adapter_info(s.d, "sx")
    check(i["in_use"] == 1, "in_use %r while a stream runs on it" % i["in_use"])
    code, _, data = request(s.d, "DELETE", "/v1/adapters/sx")
    check(code == 200, "DELETE answered %d: %r" % (code, data[:200]))
    running = s.d.metrics()["lorad_running_sequences"]
    st.drain_nowait()
    check(running == 1 and not st.done(), "the stream had ended when DELETE answered")
    code, _ = try_complete(s.d, "sx", 2, SLOW_PROMPT)
    check(code == 404, "a new request after DELETE answered %d" % code)
    status, events = st.finish()
    out, finish = stream_output(events)
    check(status == 200 and finish == "length", "stream %d %r" % (status, finish))
    same_out(out, s.new, "the stream running across the DELETE vs the version it started on")
    check(s.store.entries() == [], "the store holds %s" % s.store.entries())
    check(adapter_info(s.d, "sx") is None, "GET /v1/adapters/sx answers after DELETE")


def section_slow(suite, c):
    store = Store(c.tmpdir("slow-"))
    d = start(suite, "slow", c.build, ["--model", c.slow, "--adapter-dir", store.path,
                                       "--max-tokens", "4000"])
    if not d:
        return
    s = Slow(c, d, store)
    suite.run("slow_upload_and_reference_of_the_old_version", check_slow_setup, s)
    suite.run("replace_while_a_stream_runs_stream_keeps_old_version",
              check_replace_while_streaming, s)
    suite.run("after_replace_new_requests_get_new_version_equal_lorad_generate",
              check_after_replace_new_version, s)
    suite.run("delete_while_a_stream_runs_stream_finishes_new_requests_404",
              check_delete_while_streaming, s)
    finish(suite, "slow", d)


# --------------------------------------------------------------------------- LRU
def lru_round(d, names, refs, conc, what):
    """Requests on names in turn (conc 1) or from conc threads at once; every one 200 with
    its adapter's output."""
    errors = []

    def one(name):
        try:
            st, out = try_complete(d, name, refs[name][2], refs[name][1])
            if st != 200:
                errors.append("%s: %d %r" % (name, st, out[:200]))
            elif not close_out(out, refs[name][0]):
                errors.append("%s: output changed (%s vs %s)" % (name, out[0], refs[name][0][0]))
        except Exception as e:   # noqa: BLE001 (reported below)
            errors.append("%s: %s" % (name, e))
    if conc == 1:
        for n in names:
            one(n)
    else:
        threads = [threading.Thread(target=one, args=(n,)) for n in names]
        for t in threads:
            t.start()
        for t in threads:
            t.join(SOCK_TIMEOUT * 2)
        check(not any(t.is_alive() for t in threads), "%s: requests still running" % what)
    check(not errors, "%s: %d of %d requests failed: %s" % (what, len(errors), len(names),
                                                            errors[:3]))


def idle_loaded(d, limit, mem_limit=None):
    """Waits until at most limit adapters are loaded (and their memory within mem_limit)."""
    def ok():
        m = d.metrics()
        st, lst = jget(d, "/v1/adapters")
        loaded = [a for a in lst["data"] if a["state"] in ("loaded", "merged")]
        mem = sum(a["bytes_in_memory"] for a in loaded)
        if m["lorad_adapters_loaded"] <= limit and len(loaded) <= limit and \
                (mem_limit is None or mem <= mem_limit) and \
                all(a["in_use"] == 0 for a in lst["data"]):
            return (m["lorad_adapters_loaded"], mem)
        return None
    return wait_for(ok, 10, "at most %d adapters loaded when idle" % limit)


def check_lru(d, names, refs, limit, mem_limit=None):
    ev0 = d.metrics().get("lorad_adapter_evictions_total", 0)
    for rnd in range(3):
        for n in names:
            lru_round(d, [n], refs, 1, "in turn, round %d" % rnd)
            idle_loaded(d, limit, mem_limit)
    ev1 = d.metrics()["lorad_adapter_evictions_total"]
    check(ev1 >= ev0 + 3 * len(names) - limit - 1, "evictions %d -> %d over %d requests in "
          "turn on %d adapters" % (ev0, ev1, 3 * len(names), len(names)))
    lru_round(d, names * 4, refs, len(names) * 4, "concurrently")
    loaded, mem = idle_loaded(d, limit, mem_limit)
    ev2 = d.metrics()["lorad_adapter_evictions_total"]
    check(ev2 > ev1, "no eviction during the concurrent round (%d)" % ev2)
    print("lru: %d evictions; idle: %d loaded, %d bytes" % (ev2 - ev0, loaded, mem))


def section_lru(suite, c):
    # by count: the tiny model
    store = Store(c.tmpdir("lru-"))
    files = {"tq_all": c.fix["tq_all"], "tq_attn": c.fix["tq_attn"], "tq_mlp": c.fix["tq_mlp"],
             "g4": c.gen("g4", r=4, alpha=8, target=MF.PROJS, seed=21)}
    for n, f in files.items():
        store.add(n, f)
    d = start(suite, "lru", c.build, ["--model", c.model, "--adapter-dir", store.path,
                                      "--max-loaded-adapters", "2"])
    if d:
        refs = {}

        def setup():
            for n, f in files.items():
                refs[n] = (c.ref(f), PROMPT, N_TOK)
        suite.run("lru_references", setup)
        suite.run("lru_max_loaded_2_with_4_adapters_in_turn_and_concurrently", check_lru, d,
                  sorted(files), refs, 2)
        finish(suite, "lru", d)
    # by bytes: the slow model, rank 16 on every projection = 1.5 MiB each, limit 4 MiB
    store = Store(c.tmpdir("lrumem-"))
    files = {"m%d" % i: c.gen("m%d" % i, slow=True, r=16, alpha=16, target=MF.PROJS,
                              dtype="F16", seed=31 + i) for i in range(4)}
    for n, f in files.items():
        store.add(n, f)
    d = start(suite, "lrumem", c.build, ["--model", c.slow, "--adapter-dir", store.path,
                                         "--max-adapter-memory-mb", "4"])
    if d:
        refs = {}

        def setup_mem():
            for n in files:
                refs[n] = (complete(d, n, N_TOK, SLOW_PROMPT), SLOW_PROMPT, N_TOK)
            sizes = {a["id"]: a["bytes_in_memory"] for a in jget(d, "/v1/adapters")[1]["data"]
                     if a["state"] == "loaded"}
            check(sizes and all(v == 1.5 * (1 << 20) for v in sizes.values()),
                  "bytes_in_memory %s, expected 1.5 MiB each (the limit would not bind)"
                  % sizes)
            ref = c.ref(files["m0"], slow=True)
            same_out(refs["m0"][0], ref, "m0 vs lorad generate")
        suite.run("lrumem_adapters_of_1_5_mib_references", setup_mem)
        suite.run("lru_max_adapter_memory_4_mib_with_4_adapters_in_turn_and_concurrently",
                  check_lru, d, sorted(files), refs, 2, 4 << 20)
        finish(suite, "lrumem", d)


# --------------------------------------------------------------------------- scale
def section_scale(suite, c):
    store = Store(c.tmpdir("scale-"))
    n = 1000
    names = ["a%04d" % i for i in range(n)]
    distinct = {0: c.fix["tq_all"], n - 1: c.fix["tq_mlp"], 333: gen_attn_variant(c),
                500: c.fix["tq_all"], 666: c.gen("g666", r=2, alpha=4, target=("k_proj",
                                                                               "o_proj"), seed=5)}
    src = {i: distinct.get(i, c.fix["tq_attn"]) for i in range(n)}
    t0 = time.time()
    for i, name in enumerate(names):
        store.add(name, src[i])
    print("scale: %d adapters written in %.2f s" % (n, time.time() - t0))
    d = start(suite, "scale", c.build, ["--model", c.model, "--adapter-dir", store.path])
    if not d:
        return

    def listed():
        times = []
        for _ in range(3):
            t0 = time.time()
            ids = model_ids(d)
            times.append(time.time() - t0)
        check(ids[0] == MODEL and sorted(ids[1:]) == names, "/v1/models lists %d adapters, "
              "expected the %d on disk" % (len(ids) - 1, n))
        t0 = time.time()
        st, lst = jget(d, "/v1/adapters")
        t_adm = time.time() - t0
        check(st == 200 and [a["id"] for a in lst["data"]] == names, "/v1/adapters lists %d"
              % len(lst["data"]))
        print("scale: GET /v1/models with %d adapters: %s ms; GET /v1/adapters: %.1f ms"
              % (n, ", ".join("%.1f" % (t * 1e3) for t in times), t_adm * 1e3))

    def usable():
        sample = sorted(set(random.Random(9).sample(range(n), 50)) | {0, n - 1} | set(distinct))
        t0 = time.time()
        for i in sample:
            same_out(complete(d, names[i]), c.ref(src[i]), names[i])
        print("scale: %d of them used in %.2f s" % (len(sample), time.time() - t0))
    suite.run("scale_1000_adapters_on_disk_all_listed", listed)
    suite.run("scale_first_last_distinct_and_50_random_each_usable", usable)
    finish(suite, "scale", d)


# --------------------------------------------------------------------------- crash
class Crash:
    def __init__(self, c, store):
        self.ctx, self.store = c, store
        self.files = c.fix["tq_all"]
        self.body = upload_body(self.files)
        self.d = None
        self.others = {"keep1": c.fix["tq_attn"], "keep2": c.fix["tq_mlp"]}

    def new_entries(self):
        """What the store holds besides the adapters it started with (an upload's temporary
        directory, whatever its name)."""
        return sorted(set(self.store.entries()) - set(self.others) - {"crash"})

    def start(self):
        self.d = Daemon(self.ctx.build, ["--model", self.ctx.model, "--adapter-dir",
                                         self.store.path])

    def offsets(self):
        """(label, bytes of the body sent before the kill; None: all of it, at once)."""
        b = self.body
        cfg_at = b.index(self.files.cfg)
        w_at = b.index(self.files.w)
        nw = len(self.files.w)
        return [("headers_only", 0), ("mid_first_part_headers", 40),
                ("mid_config", cfg_at + len(self.files.cfg) // 2),
                ("config_sent_no_boundary", cfg_at + len(self.files.cfg)),
                ("mid_weights_part_headers", w_at - 20),
                ("weights_10pct", w_at + nw // 10), ("weights_50pct", w_at + nw // 2),
                ("weights_90pct", w_at + nw * 9 // 10), ("weights_complete", w_at + nw),
                ("all_but_the_last_byte", len(b) - 1), ("all_bytes_no_pause", None),
                ("all_bytes_then_10ms", "10ms")]


def check_restart_state(cr, published):
    """After a restart: no temporaries; the others intact and usable; 'crash' absent, or
    (published) complete and byte-identical."""
    cr.store.check_clean()
    ids = model_ids(cr.d)
    extra = set(ids[1:]) - set(cr.others) - {"crash"}
    check(not extra, "listed after the restart: %s (expected only %s)" % (
        sorted(extra), sorted(cr.others)))
    extra = set(cr.store.entries()) - set(cr.others) - {"crash"}
    check(not extra, "in the store after the restart: %s" % sorted(extra))
    for n, f in cr.others.items():
        cr.store.check_holds(n, f)
        check(n in ids, "%s not listed after the restart" % n)
    present = "crash" in cr.store.entries()
    if published is False or not present:
        check(not present, "a partial 'crash' is in the store: %s" % cr.store.entries())
        check("crash" not in ids, "'crash' listed after the restart")
        st, _ = try_complete(cr.d, "crash")
        check(st == 404, "'crash' answered %d after the restart (expected 404)" % st)
        check(adapter_info(cr.d, "crash") is None, "GET /v1/adapters/crash answers")
    else:
        cr.store.check_holds("crash", cr.files)
        check("crash" in ids, "'crash' in the store but not listed")
        same_out(complete(cr.d, "crash"), cr.ctx.ref(cr.files), "'crash' after the restart")
    for n, f in cr.others.items():
        same_out(complete(cr.d, n), cr.ctx.ref(f), "%s after the restart" % n)
    return present


def check_kill_mid_upload(cr, label, offset):
    check(cr.d is not None, "no daemon")
    u = RawUpload(cr.d.port, "crash", cr.body)
    try:
        if offset is None or offset == "10ms":
            u.send(len(u.body))
            if offset == "10ms":
                time.sleep(0.01)
        else:
            u.send_to(offset, step=max(1, offset // 4 or 1), pause=0.02)
            wait_for(cr.new_entries, 10, "the upload's temporary directory")
            time.sleep(0.1)   # let the daemon write what it has
        kill9(cr.d)
    finally:
        u.close()
    check_sanitizer_clean(cr.d)
    had_tmp = cr.new_entries()
    cr.start()
    complete_body = offset is None or offset == "10ms"
    present = check_restart_state(cr, None if complete_body else False)
    if complete_body:
        print("crash: %s: the adapter %s after the restart" % (
            label, "was complete" if present else "was absent"))
        if present:
            check(request(cr.d, "DELETE", "/v1/adapters/crash")[0] == 200, "DELETE crash")
    else:
        check(had_tmp, "no temporary directory at the kill: the kill point proves nothing")


def check_kill_after_201(cr):
    r = upload(cr.d, "crash", cr.files)
    out = complete(cr.d, "crash")
    kill9(cr.d)
    check_sanitizer_clean(cr.d)
    cr.start()
    check(check_restart_state(cr, True), "the acknowledged adapter is gone after the restart")
    same_out(complete(cr.d, "crash"), out, "'crash' after the restart vs before the kill")
    v = adapter_info(cr.d, "crash")["version"]
    check(v == r["version"], "version %s after the restart, %s in the 201" % (v, r["version"]))


def section_crash(suite, c):
    store = Store(c.tmpdir("crash-"))
    cr = Crash(c, store)
    for n, f in cr.others.items():
        store.add(n, f)
    try:
        cr.start()
    except Fail as e:
        suite.report("crash_daemon_starts", str(e))
        return
    for label, off in cr.offsets():
        suite.run("crash_sigkill_%s_no_partial_adapter_after_restart" % label,
                  check_kill_mid_upload, cr, label, off)
        if cr.d is None or not cr.d.alive():
            try:
                cr.start()
            except Fail as e:
                suite.report("crash_daemon_restarts", str(e))
                return
    suite.run("crash_sigkill_right_after_201_adapter_intact_same_output",
              check_kill_after_201, cr)
    if cr.d and cr.d.alive():
        finish(suite, "crash", cr.d)


# --------------------------------------------------------------------------- auth
ADMIN_KEY = "sk-admin-9f8e7d6c5b4a"
USER_KEY = "sk-user-0a1b2c3d4e5f"


def auth_rows(store_path):
    """(label, method, path, body, content type, status with the admin key)."""
    J = "application/json"
    return [
        ("list", "GET", "/v1/adapters", None, None, 200),
        ("get", "GET", "/v1/adapters/tq_all", None, None, 200),
        ("put", "PUT", "/v1/adapters/akup", "UPLOAD", MP_CT, 201),
        ("delete", "DELETE", "/v1/adapters/akup", None, None, 200),
        ("load", "POST", "/v1/load_lora_adapter", json.dumps(
            {"lora_name": "akload", "lora_path": os.path.join(store_path, ".stage", "s")}), J,
         200),
        ("unload", "POST", "/v1/unload_lora_adapter", json.dumps({"lora_name": "akload"}), J,
         200),
    ]


def check_admin_route(c, d, store, row):
    label, method, path, body, ct, ok_status = row
    data = upload_body(c.fix["tq_mlp"]) if body == "UPLOAD" else (body.encode() if body else
                                                                   None)
    before = store.snapshot()
    for who, key, status, msg in (("no key", None, 401, "admin key"),
                                  ("a wrong key", "sk-wrong", 401, "admin key"),
                                  ("the inference key", USER_KEY, 403, "may not manage")):
        h = {"Content-Type": ct} if ct else {}
        if key:
            h["Authorization"] = "Bearer " + key
        st, hdrs, resp = request(d, method, path, data, h)
        try:
            check_error(st, hdrs, resp, status, msg)
        except Fail as e:
            raise Fail("%s with %s: %s" % (label, who, e))
        check(store.snapshot() == before, "%s with %s changed the store" % (label, who))
    h = {"Authorization": "Bearer " + ADMIN_KEY}
    if ct:
        h["Content-Type"] = ct
    st, _, resp = request(d, method, path, data, h)
    check(st == ok_status, "%s with the admin key answered %d: %r" % (label, st, resp[:200]))
    if label == "put":
        same_out(complete(d, "akup", headers={"Authorization": "Bearer " + USER_KEY}),
                 c.ref(c.fix["tq_mlp"]), "uploaded with the admin key, used with the "
                 "inference key")


def check_inference_keys(c, d):
    for who, key, status in (("no key", None, 401), ("the admin key", ADMIN_KEY, 200),
                             ("the inference key", USER_KEY, 200)):
        h = {"Authorization": "Bearer " + key} if key else {}
        st, _, _ = request(d, "GET", "/v1/models", None, h)
        check(st == status, "/v1/models with %s answered %d, expected %d" % (who, st, status))
        st, _, data = request(d, "POST", "/v1/completions",
                              json.dumps(comp_body("tq_all")).encode(),
                              dict(h, **{"Content-Type": "application/json"}))
        check(st == status, "completion with %s answered %d, expected %d: %r" % (who, st,
                                                                               status, data))
        if st == 200:
            same_out(out_of_choice(json.loads(data)["choices"][0]), c.ref(c.fix["tq_all"]),
                     "tq_all with %s" % who)


def non_loopback_address():
    """An IPv4 address of this machine other than loopback, or None. Connecting a UDP
    socket sends nothing: it only makes the kernel pick the source address of a route."""
    for target in ("198.51.100.1", "10.255.255.254"):
        try:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                s.connect((target, 9))
                addr = s.getsockname()[0]
            finally:
                s.close()
        except OSError:
            continue
        if not addr.startswith("127.") and addr != "0.0.0.0":
            return addr
    return None


def check_without_admin_key(d, store):
    """Management from loopback is allowed (the API key still needed); from another address
    of this machine it is refused with 403."""
    key = {"Authorization": "Bearer " + USER_KEY}
    st, hdrs, data = request(d, "GET", "/v1/adapters")
    check_error(st, hdrs, data, 401, "API key")
    st, _, data = request(d, "GET", "/v1/adapters", None, key)
    check(st == 200, "loopback with the API key: %d %r" % (st, data[:200]))
    addr = non_loopback_address()
    if not addr:
        print("NOTE: no non-loopback address on this machine; the 403 for remote management "
              "was not exercised")
        return
    before = store.snapshot()
    for method, path, body, ct in (("GET", "/v1/adapters", None, None),
                                   ("PUT", "/v1/adapters/remote", "UPLOAD", MP_CT),
                                   ("DELETE", "/v1/adapters/tq_all", None, None)):
        c = http.client.HTTPConnection(addr, d.port, timeout=SOCK_TIMEOUT)
        try:
            h = dict(key)
            if ct:
                h["Content-Type"] = ct
            data = upload_body(Files(b"{}", b"x")) if body == "UPLOAD" else None
            c.request(method, path, body=data, headers=h)
            r = c.getresponse()
            st, hdrs, resp = r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
        finally:
            c.close()
        check_error(st, hdrs, resp, 403, "this machine only")
    check(store.snapshot() == before, "remote management changed the store")
    c = http.client.HTTPConnection(addr, d.port, timeout=SOCK_TIMEOUT)
    try:
        c.request("GET", "/v1/models", headers=key)
        r = c.getresponse()
        r.read()
        check(r.status == 200, "inference from %s answered %d" % (addr, r.status))
    finally:
        c.close()
    print("auth: remote management refused from %s" % addr)


def section_auth(suite, c):
    root = c.tmpdir("auth-")
    store = Store(os.path.join(root, "store"))
    os.makedirs(store.path)
    store.add("tq_all", c.fix["tq_all"])
    c.fix["tq_attn"].write(os.path.join(store.path, ".stage", "s"))
    for name, key in (("admin.key", ADMIN_KEY), ("user.key", USER_KEY)):
        with open(os.path.join(root, name), "w") as f:
            f.write(key + "\n")
    d = start(suite, "auth", c.build, [
        "--model", c.model, "--adapter-dir", store.path, "--admin-key-file",
        os.path.join(root, "admin.key"), "--api-key-file", os.path.join(root, "user.key")])
    if d:
        for row in auth_rows(store.path):
            suite.run("auth_%s_401_without_or_wrong_key_403_inference_key_ok_admin_key" % row[0],
                      check_admin_route, c, d, store, row)
        suite.run("auth_inference_routes_take_both_keys_401_without", check_inference_keys, c,
                  d)
        suite.run("auth_store_holds_only_tq_all_after_the_admin_routes", lambda: (
            check(store.adapters() == ["tq_all"], "store: %s" % store.entries()),
            store.check_clean()))
        finish(suite, "auth", d)
    # No admin key: loopback only. Listening on every address so that this machine can
    # also connect from a non-loopback one; the API key guards every route meanwhile.
    d = start(suite, "nokey", c.build, [
        "--model", c.model, "--adapter-dir", store.path, "--host", "0.0.0.0",
        "--api-key-file", os.path.join(root, "user.key")])
    if d:
        suite.run("auth_without_admin_key_loopback_allowed_remote_403", check_without_admin_key,
                  d, store)
        finish(suite, "nokey", d)


# --------------------------------------------------------------------------- main
def main(argv):
    build = argv[1] if len(argv) > 1 else "build"
    only = argv[2:] or list(SECTIONS)
    for s in only:
        if s not in SECTIONS:
            print("unknown section %r (have %s)" % (s, ", ".join(SECTIONS)))
            return 2
    t0 = time.time()
    suite = Suite()
    root = tempfile.mkdtemp(prefix="lorad-admin-test-")
    try:
        try:
            fx, _ = ensure_fixtures(build)
            c = Ctx(build, fx, root)
        except Exception as e:   # noqa: BLE001
            suite.report("fixtures_generate", "%s: %s" % (type(e).__name__, e))
            print("%d passed, %d failed" % (suite.passed, suite.failed))
            return 1
        for s in only:
            t1 = time.time()
            try:
                globals()["section_" + s](suite, c)
            except Exception as e:   # noqa: BLE001 (a broken setup fails, never crashes)
                suite.report("section_%s_runs" % s, "%s: %s" % (type(e).__name__, e))
            print("section %s: %.1f s" % (s, time.time() - t1))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print("time: %.1f s" % (time.time() - t0))
    print("%d passed, %d failed" % (suite.passed, suite.failed))
    return 1 if suite.failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
