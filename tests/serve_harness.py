"""serve_harness: what the daemon's integration tests share — a `lorad serve` started on a
free loopback port (stderr collected, the port read from its start-up line), plain HTTP
helpers on http.client (no third-party client, so the tests see exactly what goes over
the wire), an SSE reader, a /metrics parser, and the PASS/FAIL suite of test_reference.

Every wait is bounded; a daemon left running is killed when the test process exits.
"""
import atexit
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from test_reference import Fail, Suite, ensure_fixtures  # noqa: E402,F401

START_TIMEOUT = 120   # seconds for the daemon to load (ASan builds are slow)
HTTP_TIMEOUT = 120

_running = []


def _kill_all():
    for d in _running:
        if d.proc.poll() is None:
            d.proc.kill()


atexit.register(_kill_all)


def check(cond, msg):
    if not cond:
        raise Fail(msg)


class Daemon:
    """`BUILD/lorad serve ARGS --port 0`, up and listening when the constructor returns."""

    def __init__(self, build, args, env=None):
        self.build = build
        cmd = [os.path.join(build, "lorad"), "serve", "--port", "0"] + list(args)
        self._spawn(cmd, self.environment(env))
        if not self._ready.wait(START_TIMEOUT) or self.port is None:
            self.proc.kill()
            raise Fail("lorad serve did not start: %s\n%s" % (" ".join(cmd),
                                                               "\n".join(self.log()[-20:])))

    @staticmethod
    def environment(env):
        """The daemon's environment: ours, one OpenBLAS thread unless set, then env."""
        e = dict(os.environ)
        e.setdefault("OPENBLAS_NUM_THREADS", "1")
        e.update(env or {})
        return e

    def _spawn(self, cmd, e):
        """Starts cmd with environment e; its stderr is collected (log()) and the port
        read from the start-up line by a thread of its own."""
        self.cmd = cmd
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, env=e)
        _running.append(self)
        self.lines = []
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self.port = None
        threading.Thread(target=self._read_stderr, daemon=True).start()

    def _read_stderr(self):
        for raw in self.proc.stderr:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            with self._lock:
                self.lines.append(line)
            m = re.search(r"serving '.*' on http://[^ ]*:(\d+) ", line)
            if m and self.port is None:
                self.port = int(m.group(1))
                self._ready.set()
        self._ready.set()

    def log(self):
        with self._lock:
            return list(self.lines)

    def alive(self):
        return self.proc.poll() is None

    # ---- HTTP
    def conn(self, timeout=HTTP_TIMEOUT):
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def request(self, method, path, body=None, headers=None, timeout=HTTP_TIMEOUT):
        """(status, {header: value}, body bytes)."""
        c = self.conn(timeout)
        try:
            h = dict(headers or {})
            if isinstance(body, (dict, list)):
                body = json.dumps(body).encode()
                h.setdefault("Content-Type", "application/json")
            elif isinstance(body, str):
                body = body.encode()
            c.request(method, path, body=body, headers=h)
            r = c.getresponse()
            data = r.read()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, data
        finally:
            c.close()

    def post(self, path, obj, headers=None):
        """(status, parsed JSON body) of a JSON POST."""
        st, _, data = self.request("POST", path, obj, headers)
        try:
            return st, json.loads(data)
        except ValueError:
            raise Fail("%s answered %d with a body that is not JSON: %r" % (path, st,
                                                                             data[:200]))

    def stream(self, path, obj, headers=None):
        """POST with stream: true; returns (status, events, raw text). Events are the
        parsed JSON of each `data:` line, and the string "[DONE]"."""
        st, hdrs, data = self.request("POST", path, obj, headers)
        text = data.decode("utf-8")
        if st != 200:
            return st, [], text
        check(hdrs.get("content-type", "").startswith("text/event-stream"),
              "stream content type is %r" % hdrs.get("content-type"))
        events = []
        for block in text.split("\n\n"):
            if not block:
                continue
            check(block.startswith("data: ") and "\n" not in block,
                  "not one 'data: ' line per event: %r" % block[:200])
            payload = block[len("data: "):]
            events.append(payload if payload == "[DONE]" else json.loads(payload))
        check(text.endswith("\n\n"), "the stream does not end with a blank line")
        return st, events, text

    def metrics(self):
        """{'name{labels}': value} from /metrics."""
        st, _, data = self.request("GET", "/metrics")
        check(st == 200, "/metrics answered %d" % st)
        out = {}
        for line in data.decode().splitlines():
            if not line or line.startswith("#"):
                continue
            k, v = line.rsplit(" ", 1)
            out[k] = float(v)
        return out

    def wait_metric(self, key, pred, timeout=30):
        """Polls /metrics until pred(value of key) holds; returns the value."""
        deadline = time.time() + timeout
        v = None
        while time.time() < deadline:
            v = self.metrics().get(key)
            if v is not None and pred(v):
                return v
            time.sleep(0.05)
        raise Fail("metric %s stayed at %r for %d s" % (key, v, timeout))

    # ---- shutdown
    def stop(self, sig=signal.SIGTERM, timeout=60):
        """Sends sig and waits; returns the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise Fail("lorad serve did not exit within %d s of signal %d" % (timeout, sig))
        finally:
            if self in _running:
                _running.remove(self)


SANITIZER_MARKS = ("ERROR: AddressSanitizer", "LeakSanitizer", "runtime error:")


def wait_log_stable(d, timeout=5):
    """After exit: lets the harness's reader take the last lines of stderr."""
    n, since, deadline = -1, time.time(), time.time() + timeout
    while time.time() < deadline:
        m = len(d.log())
        if m != n:
            n, since = m, time.time()
        elif time.time() - since > 0.5:
            return
        time.sleep(0.05)


def check_sanitizer_clean(d):
    for line in d.log():
        for mark in SANITIZER_MARKS:
            check(mark not in line, "sanitizer report in the daemon log: %s" % line)


def check_alive_then_exit_0(d):
    """The daemon is still alive and exits 0 on SIGTERM."""
    check(d.alive(), "the daemon died (exit status %r); log tail:\n%s"
          % (d.proc.poll(), "\n".join(d.log()[-15:])))
    rc = d.stop()
    wait_log_stable(d)
    check(rc == 0, "exit status %d after SIGTERM; log tail:\n%s"
          % (rc, "\n".join(d.log()[-15:])))


def raw_exchange(port, data, timeout=30, read=True):
    """Sends raw bytes on a new connection; returns everything read until the server
    closes (or b'' when read is False)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        s.sendall(data)
        if not read:
            return b""
        chunks = []
        while True:
            try:
                b = s.recv(65536)
            except ConnectionResetError:
                break
            if not b:
                break
            chunks.append(b)
        return b"".join(chunks)
    finally:
        s.close()


def lorad_generate(build, args, timeout=120):
    """`BUILD/lorad generate ARGS --json` -> parsed output."""
    env = dict(os.environ)
    env.setdefault("OPENBLAS_NUM_THREADS", "1")
    r = subprocess.run([os.path.join(build, "lorad"), "generate"] + list(args) + ["--json"],
                       capture_output=True, timeout=timeout, env=env)
    if r.returncode != 0:
        raise Fail("lorad generate %s: %s" % (" ".join(args), r.stderr.decode()[-500:]))
    return json.loads(r.stdout)


SLOW_MODEL = dict(name="slow", arch="LlamaForCausalLM", model_type="llama", vocab=512,
                  hidden=256, inter=512, layers=6, heads=8, kv=4, head_dim=None,
                  max_pos=8192, theta=10000.0, eps=1e-5, tie=True, dtype="F32", bias=False,
                  bos=1, eos=2, gen_config=True, features=[])


def slow_model(build):
    """A model without tokenizer large enough that a request of a few thousand tokens runs
    for seconds (a 6000-token prompt prefills in several 512-row steps; decoding with
    ignore_eos goes on up to the 8192-position context): for tests that need a request to
    be running, waiting or prefilling when something else happens. Made once per build
    directory, from a fixed seed. Returns its directory."""
    d = os.path.join(build, "fixtures-slow")
    if os.path.exists(os.path.join(d, "slow", "config.json")):
        return os.path.join(d, "slow")
    import numpy as np
    sys.path.insert(0, os.path.join(REPO, "tools"))
    import make_fixtures as MF
    tmp = d + ".tmp"
    if os.path.exists(tmp):
        import shutil
        shutil.rmtree(tmp)
    os.makedirs(tmp)
    MF.write_model(tmp, SLOW_MODEL, np.random.default_rng([4242]))
    os.rename(tmp, d)
    return os.path.join(d, "slow")
