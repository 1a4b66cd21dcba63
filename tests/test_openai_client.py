#!/usr/bin/python3
"""test_openai_client.py BUILD: the official OpenAI Node client, unmodified (`openai` from
npm, the exact version pinned in tests/openai-client/package.json and its lock), against
real `BUILD/lorad serve` daemons.

1. Copies tests/openai-client/{package.json,package-lock.json} into BUILD/openai-client and
   runs `npm ci` there when node_modules is missing or either file changed (a stamp holds
   their hash). node, npm and the registry are needed the first time: without them this
   prints a FAIL line saying so (never a silent skip).
2. Starts three daemons on the fixture model qwen2_tok_qwen3 (real Qwen3 tokenizer and chat
   template) and the slow tokenizer-less model of serve_harness:
     main  --served-model-name qwen-tiny --adapter-dir BUILD/fixtures/adapters
           (tq_all, tq_attn, tq_mlp are made for this base; ad_all, for another, fails
           validation: 422);
     auth  the same model with --api-key-file (a random key);
     busy  the slow model with --max-seqs 1 --max-queue 0, so that one long ignore_eos
           generation makes the next request a deterministic 429.
3. Runs `node client_test.mjs` (see that file for what each check proves) and relays its
   PASS/FAIL lines into this suite; the client's own summary must agree with them.
4. Stops the daemons with SIGTERM: each must exit 0 with no sanitizer report.

Prints "PASS name" / "FAIL name: reason" per check and, last, "N passed, N failed";
exits 1 if anything failed.
"""
import hashlib
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from serve_harness import Daemon, Fail, Suite, ensure_fixtures, slow_model  # noqa: E402

CLIENT_SRC = os.path.join(HERE, "openai-client")
PINNED = ("package.json", "package-lock.json")
NODE_MIN = 20           # the openai package's README: Node.js 20 LTS or later
NPM_TIMEOUT = 300       # seconds for `npm ci` (a download of one small package)
CLIENT_TIMEOUT = 900    # seconds for the whole client run (ASan daemons are slow)
REQUEST_TIMEOUT = 180   # seconds per HTTP request inside the client
BASE_NAME = "qwen-tiny"
MODEL = "qwen2_tok_qwen3"
ADAPTERS = ("tq_all", "tq_attn", "tq_mlp")
INVALID_ADAPTER = "ad_all"
BUSY_MAX_TOKENS = 6000  # the slow model's context is 8192
SANITIZER_MARKERS = ("AddressSanitizer", "LeakSanitizer", "runtime error:")


def tail(s, n=600):
    s = s.strip().replace("\n", " | ")
    return s if len(s) <= n else "..." + s[-n:]


def node_version():
    """The major version of `node`; raises Fail when node is missing or too old."""
    node = shutil.which("node")
    if not node:
        raise Fail("node is not installed (needed to run the OpenAI Node client; Node.js >= "
                   "%d)" % NODE_MIN)
    r = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30)
    m = re.match(r"v(\d+)\.", r.stdout.strip())
    if not m:
        raise Fail("`node --version` printed %r" % r.stdout.strip())
    if int(m.group(1)) < NODE_MIN:
        raise Fail("node %s is too old: the openai package needs Node.js >= %d"
                   % (r.stdout.strip(), NODE_MIN))
    return r.stdout.strip()


def install_client(build):
    """BUILD/openai-client with node_modules installed from the committed lock; returns
    the directory. Raises Fail when node/npm are missing or `npm ci` fails."""
    dest = os.path.join(build, "openai-client")
    os.makedirs(dest, exist_ok=True)
    h = hashlib.sha256()
    for f in PINNED:
        with open(os.path.join(CLIENT_SRC, f), "rb") as fh:
            h.update(fh.read())
    want = h.hexdigest()
    stamp = os.path.join(dest, ".installed")
    installed = os.path.join(dest, "node_modules", "openai", "package.json")
    have = None
    if os.path.exists(stamp) and os.path.exists(installed):
        with open(stamp) as fh:
            have = fh.read().strip()
    if have != want:
        npm = shutil.which("npm")
        if not npm:
            raise Fail("npm is not installed (needed once to install the openai package "
                       "into %s)" % dest)
        for f in PINNED:
            shutil.copyfile(os.path.join(CLIENT_SRC, f), os.path.join(dest, f))
        if os.path.exists(stamp):
            os.remove(stamp)
        env = dict(os.environ, npm_config_update_notifier="false")
        t0 = time.time()
        try:
            r = subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=dest, env=env,
                               capture_output=True, text=True, timeout=NPM_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise Fail("`npm ci` in %s did not finish in %d s (is the npm registry "
                       "reachable?)" % (dest, NPM_TIMEOUT))
        if r.returncode != 0:
            # npm's first error lines name the cause (code, then the failed fetch)
            why = [ln for ln in r.stderr.splitlines() if ln.startswith("npm error")][:4]
            raise Fail("`npm ci` in %s failed with status %d (is the npm registry "
                       "reachable?): %s" % (dest, r.returncode,
                                            tail("\n".join(why) or r.stderr)))
        print("openai-client: npm ci in %.1f s" % (time.time() - t0), flush=True)
        with open(stamp, "w") as fh:
            fh.write(want + "\n")
    # the script is copied next to node_modules so that `import 'openai'` resolves there
    shutil.copyfile(os.path.join(CLIENT_SRC, "client_test.mjs"),
                    os.path.join(dest, "client_test.mjs"))
    return dest


def check_pinned_version(dest):
    with open(os.path.join(CLIENT_SRC, "package.json")) as fh:
        pinned = json.load(fh)["dependencies"]["openai"]
    with open(os.path.join(dest, "node_modules", "openai", "package.json")) as fh:
        got = json.load(fh)["version"]
    if not re.fullmatch(r"\d+\.\d+\.\d+", pinned):
        raise Fail("package.json pins openai %r, not an exact version" % pinned)
    if got != pinned:
        raise Fail("node_modules holds openai %s, package.json pins %s" % (got, pinned))
    print("openai-client: openai %s" % got, flush=True)


def start_daemons(build):
    fx, man = ensure_fixtures(build)
    model = os.path.join(fx, man["models"][MODEL]["path"])
    adapter_dir = os.path.dirname(os.path.join(fx, man["adapters"][ADAPTERS[0]]["path"]))
    key_file = os.path.join(build, "openai-client", "api-key")
    key = "sk-lorad-" + secrets.token_hex(16)
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(key + "\n")
    slow = slow_model(build)
    daemons = {}
    try:
        daemons["main"] = Daemon(build, ["--model", model, "--served-model-name", BASE_NAME,
                                         "--adapter-dir", adapter_dir])
        daemons["auth"] = Daemon(build, ["--model", model, "--served-model-name", BASE_NAME,
                                         "--api-key-file", key_file])
        daemons["busy"] = Daemon(build, ["--model", slow, "--served-model-name", "slow",
                                         "--max-seqs", "1", "--max-queue", "0",
                                         "--max-tokens", str(BUSY_MAX_TOKENS)])
    except Fail:
        for d in daemons.values():
            d.stop()
        raise
    return daemons, key


def run_client(s, dest, daemons, key):
    """Runs client_test.mjs and relays its checks into s; raises Fail when the run itself
    goes wrong (timeout, crash, summary that disagrees with the lines)."""
    url = "http://127.0.0.1:%d/v1"
    cmd = ["node", "client_test.mjs", "--base-url", url % daemons["main"].port,
           "--model", BASE_NAME, "--invalid-adapter", INVALID_ADAPTER,
           "--auth-url", url % daemons["auth"].port, "--api-key", key,
           "--busy-url", url % daemons["busy"].port, "--busy-model", "slow",
           "--busy-max-tokens", str(BUSY_MAX_TOKENS), "--timeout", str(REQUEST_TIMEOUT)]
    for a in ADAPTERS:
        cmd += ["--adapter", a]
    p = subprocess.Popen(cmd, cwd=dest, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    timer = threading.Timer(CLIENT_TIMEOUT, p.kill)
    timer.start()
    err = []
    reader = threading.Thread(target=lambda: err.extend(p.stderr), daemon=True)
    reader.start()
    seen = [0, 0]
    summary = None
    try:
        for line in p.stdout:
            line = line.rstrip("\n")
            m = re.fullmatch(r"(PASS|FAIL) (.*)", line)
            if m and m.group(1) == "PASS":
                s.report("openai-node " + m.group(2), None)
                seen[0] += 1
            elif m:
                name, _, why = m.group(2).partition(": ")
                s.report("openai-node " + name, why or "failed")
                seen[1] += 1
            elif re.fullmatch(r"\d+ passed, \d+ failed", line):
                summary = line
                print("openai-client: client_test.mjs: " + line, flush=True)
            else:
                print("openai-client: " + line, flush=True)
        rc = p.wait()
    finally:
        timer.cancel()
        if p.poll() is None:
            p.kill()
            p.wait()
    reader.join(10)
    if rc < 0:
        raise Fail("client_test.mjs killed by signal %d (after %d s?): %s"
                   % (-rc, CLIENT_TIMEOUT, tail("".join(err))))
    if summary is None:
        raise Fail("client_test.mjs exited with status %d and no summary: %s"
                   % (rc, tail("".join(err))))
    if summary != "%d passed, %d failed" % tuple(seen):
        raise Fail("client_test.mjs says %r but printed %d PASS and %d FAIL lines"
                   % (summary, seen[0], seen[1]))
    if (rc != 0) != (seen[1] > 0):
        raise Fail("client_test.mjs exited with status %d after %d failures: %s"
                   % (rc, seen[1], tail("".join(err))))


def stop_daemon(name, d):
    rc = d.stop()
    log = "\n".join(d.log())
    for marker in SANITIZER_MARKERS:
        if marker in log:
            i = log.index(marker)
            raise Fail("%s daemon: sanitizer report (%s): %s"
                       % (name, marker, tail(log[max(0, i - 200):i + 1500], 1500)))
    if rc != 0:
        raise Fail("%s daemon exited with status %d on SIGTERM: %s"
                   % (name, rc, tail("\n".join(d.log()[-10:]))))


def main():
    if len(sys.argv) != 2:
        print("usage: test_openai_client.py BUILD", file=sys.stderr)
        return 2
    build = sys.argv[1]
    s = Suite()
    t0 = time.time()
    dest = None
    try:
        print("openai-client: node %s" % node_version(), flush=True)
        dest = install_client(build)
        s.run("openai-client: the pinned openai version is installed", check_pinned_version,
              dest)
    except Fail as e:
        s.report("openai-client: install the OpenAI Node client", str(e))
    except (OSError, subprocess.SubprocessError) as e:
        s.report("openai-client: install the OpenAI Node client",
                 "%s: %s" % (type(e).__name__, e))
    if dest is not None:
        daemons = None
        try:
            daemons, key = start_daemons(build)
        except Exception as e:  # noqa: BLE001 — a failed start is one FAIL, not a crash
            s.report("openai-client: start the daemons", "%s: %s" % (type(e).__name__, e))
        if daemons:
            s.run("openai-client: client_test.mjs ran to its end", run_client, s, dest,
                  daemons, key)
            for name, d in daemons.items():
                s.run("openai-client: %s daemon exits 0 on SIGTERM, no sanitizer report"
                      % name, stop_daemon, name, d)
    print("openai-client: %.1f s" % (time.time() - t0), flush=True)
    print("%d passed, %d failed" % (s.passed, s.failed), flush=True)
    return 1 if s.failed else 0


if __name__ == "__main__":
    sys.exit(main())
