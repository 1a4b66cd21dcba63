#!/usr/bin/python3
"""test_systemd.py BUILD: lorad as a systemd service, without systemd as PID 1 (CI has none).

* the units: `systemd-analyze verify` passes on lorad.service and lorad.socket as
  `make install` writes them (ExecStart= pointed at the installed binary, the man page
  found through MANPATH), with no warning; `systemd-analyze security --offline=yes` rates
  the service 2.0 or lower (the score is printed);
* `make install` honours PREFIX and DESTDIR (binary, man page, units with ExecStart= under
  PREFIX, /etc/lorad/lorad.env) and keeps an existing lorad.env;
* lorad.env and lorad(1) describe every flag of `lorad serve --help`, lorad.env with the
  flag's default, and the daemon really reads LORAD_* from its environment (a served name,
  a max_tokens default, a bad value refused naming the variable);
* socket activation: under `systemd-socket-activate` the daemon serves a completion on the
  passed socket, never binding its own --host/--port (given an address it could not bind);
* sd_notify, on a NOTIFY_SOCKET the test binds (each message's sender checked with
  SCM_CREDENTIALS to be the daemon's main PID, as NotifyAccess=main needs): STATUS= with
  the loading progress, then READY=1; WATCHDOG=1 at half of WATCHDOG_USEC while idle;
  RELOADING=1 then READY=1 on SIGHUP; STOPPING=1 on SIGTERM, exit 0;
* watchdog from the engine loop: with the test-only --test-stall-engine, SIGUSR1 wedges
  the engine thread; the pings stop while /health (HTTP and main thread) still answers;
* `make deb` (when dpkg-buildpackage and debhelper are there): the package holds binary,
  units, man page and the configuration as a conffile, and enables lorad.service the
  Debian way (dh_installsystemd); lintian's complaints, when lintian is installed, are
  printed.
"""
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from serve_harness import (START_TIMEOUT, Daemon, Fail, Suite, check,  # noqa: E402
                           check_sanitizer_clean, ensure_fixtures, wait_log_stable)

MODEL = "llama_sharded"          # two safetensors files: "loading model: 2/2 files"
WATCHDOG_USEC = 300000           # pings expected every 150 ms
MAX_SCORE = 2.0
PROMPT = {"prompt": [1, 17, 42, 5], "max_tokens": 3, "temperature": 0}


# ------------------------------------------------------------------ helpers
class NotifySocket:
    """An AF_UNIX datagram socket standing in for systemd's notification socket: records
    (arrival time, sender pid, message) for every datagram."""

    def __init__(self, d):
        self.path = os.path.join(d, "notify.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.settimeout(0.2)
        self.msgs = []
        self._lock = threading.Lock()
        self._stop = False
        self._t = threading.Thread(target=self._read, daemon=True)
        self._t.start()

    def _read(self):
        while not self._stop:
            try:
                data, anc, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(12))
            except socket.timeout:
                continue
            except OSError:
                return
            pid = None
            for level, kind, cdata in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid = struct.unpack("iII", cdata[:12])[0]
            with self._lock:
                self.msgs.append((time.time(), pid, data.decode("utf-8", "replace")))

    def messages(self):
        with self._lock:
            return list(self.msgs)

    def wait_for(self, pred, timeout, what):
        """Waits until pred(message) holds for a new-or-old message; returns its index."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            for i, (_, _, m) in enumerate(self.messages()):
                if pred(m):
                    return i
            time.sleep(0.02)
        raise Fail("no %s on NOTIFY_SOCKET within %d s; got %r"
                   % (what, timeout, [m for _, _, m in self.messages()][-10:]))

    def pings_between(self, t0, t1):
        return [t for t, _, m in self.messages() if t0 <= t < t1 and has(m, "WATCHDOG=1")]

    def close(self):
        self._stop = True
        self._t.join(2)
        self.sock.close()


def has(msg, line):
    """msg holds line exactly (sd_notify's newline-separated assignments)."""
    return line in msg.split("\n")


def fields(msg):
    """'A=1\\nB=x' -> {'A': '1', 'B': 'x'}"""
    return dict(line.split("=", 1) for line in msg.split("\n") if "=" in line)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def run(cmd, timeout=300, env=None, cwd=REPO):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env,
                          cwd=cwd)


def serve_flags(build):
    """[(flag name, help text)] of `lorad serve --help`, --help itself left out."""
    r = run([os.path.join(build, "lorad"), "serve", "--help"])
    check(r.returncode == 0, "lorad serve --help: status %d" % r.returncode)
    flags = []
    for line in r.stdout.splitlines():
        m = re.match(r"  (?:-v, )?--([a-z-]+)(?: \S+)?\s{2,}(.*)$", line)
        if m and m.group(1) != "help":
            flags.append((m.group(1), m.group(2)))
    check(len(flags) >= 20, "only %d flags parsed from --help" % len(flags))
    return flags


def env_name(flag):
    return "LORAD_" + flag.upper().replace("-", "_")


def make_install(build, destdir, prefix):
    """`make install` into destdir without rebuilding (-o: the binary counts as made)."""
    binary = os.path.join(build, "lorad")
    r = run(["make", "--no-print-directory", "-o", binary, "BUILD=" + build,
             "DESTDIR=" + destdir, "PREFIX=" + prefix, "install"])
    check(r.returncode == 0, "make install PREFIX=%s: %s%s" % (prefix, r.stdout[-800:],
                                                               r.stderr[-800:]))


# ------------------------------------------------------------------ units and install
def check_install(build, tmp):
    dest = os.path.join(tmp, "dest")
    env_path = os.path.join(dest, "etc/lorad/lorad.env")
    os.makedirs(os.path.dirname(env_path))
    with open(env_path, "w") as f:
        f.write("LORAD_MODEL=/srv/mine\n")   # an administrator's file: must stay
    make_install(build, dest, "/opt/lorad")
    for p, mode in (("opt/lorad/bin/lorad", 0o755), ("opt/lorad/share/man/man1/lorad.1", 0o644),
                    ("opt/lorad/lib/systemd/system/lorad.service", 0o644),
                    ("opt/lorad/lib/systemd/system/lorad.socket", 0o644)):
        full = os.path.join(dest, p)
        check(os.path.isfile(full), "make install did not write %s" % p)
        check(os.stat(full).st_mode & 0o777 == mode, "%s has mode %o, want %o"
              % (p, os.stat(full).st_mode & 0o777, mode))
    with open(os.path.join(dest, "opt/lorad/lib/systemd/system/lorad.service")) as f:
        unit = f.read()
    check("\nExecStart=/opt/lorad/bin/lorad serve\n" in unit,
          "the installed unit's ExecStart= does not follow PREFIX")
    with open(env_path) as f:
        check(f.read() == "LORAD_MODEL=/srv/mine\n", "make install replaced lorad.env")
    dest2 = os.path.join(tmp, "dest2")
    make_install(build, dest2, "/usr")
    with open(os.path.join(dest2, "etc/lorad/lorad.env")) as f, \
            open(os.path.join(REPO, "systemd/lorad.env")) as g:
        check(f.read() == g.read(), "make install without lorad.env did not install it")


def check_verify(build, tmp):
    dest = os.path.join(tmp, "verify")
    make_install(build, dest, "/usr")
    units = os.path.join(tmp, "units")
    os.makedirs(units)
    # The installed units, ExecStart= pointed at the installed binary (verify checks that
    # it exists and is executable), the man page (Documentation=) through MANPATH.
    for u in ("lorad.service", "lorad.socket"):
        with open(os.path.join(dest, "usr/lib/systemd/system", u)) as f:
            text = f.read().replace("/usr/bin/lorad", os.path.join(dest, "usr/bin/lorad"))
        with open(os.path.join(units, u), "w") as f:
            f.write(text)
    env = dict(os.environ, MANPATH=os.path.join(dest, "usr/share/man"))
    r = run(["systemd-analyze", "verify", os.path.join(units, "lorad.service"),
             os.path.join(units, "lorad.socket")], env=env)
    out = (r.stdout + r.stderr).strip()
    print("systemd-analyze verify: status %d%s" % (r.returncode, ("\n" + out) if out else ""))
    check(r.returncode == 0, "systemd-analyze verify failed: %s" % out)
    lorad_lines = [ln for ln in out.splitlines() if "lorad" in ln]
    check(not lorad_lines, "systemd-analyze verify complains: %s" % "\n".join(lorad_lines))


def check_security(build):
    r = run(["systemd-analyze", "security", "--offline=yes", "--no-pager",
             os.path.join(REPO, "systemd/lorad.service")])
    m = re.search(r"Overall exposure level for lorad\.service: ([0-9.]+)", r.stdout)
    check(m, "no exposure level in systemd-analyze security's output: %s"
          % (r.stdout[-500:] + r.stderr[-500:]))
    score = float(m.group(1))
    print("systemd-analyze security --offline=yes systemd/lorad.service: exposure %.1f "
          "(at most %.1f)" % (score, MAX_SCORE))
    for line in r.stdout.splitlines():
        if line.startswith("\u2717"):
            print("  " + re.sub(r"\s{2,}", "  ", line.strip()))
    check(score <= MAX_SCORE, "exposure %.1f > %.1f" % (score, MAX_SCORE))


def check_docs_list_every_flag(build):
    flags = serve_flags(build)
    with open(os.path.join(REPO, "man/lorad.1")) as f:
        man = f.read()
    with open(os.path.join(REPO, "systemd/lorad.env")) as f:
        env = dict(re.findall(r"^(LORAD_[A-Z_]+)=(.*)$", f.read(), re.M))
    for name, help_text in flags:
        check(r"\-\-" + name.replace("-", r"\-") in man, "lorad.1 does not describe --%s"
              % name)
        var = env_name(name)
        check(var in env, "lorad.env does not list %s (--%s)" % (var, name))
        m = re.search(r"\(default (\d+)[;)]", help_text)
        if m and name != "port":
            check(env[var] == m.group(1), "lorad.env: %s=%s, --help says default %s"
                  % (var, env[var], m.group(1)))
        if re.search(r"default: (none|no |the |one per)", help_text):
            # no value stands for the flag's own default; the adapter directory is the
            # one deliberate exception (the unit's state directory)
            check(env[var] == "" or name == "adapter-dir",
                  "lorad.env: %s=%s, but --%s defaults to '%s'" % (var, env[var], name,
                                                                   help_text))
    check(env["LORAD_PORT"] == "8080" and env["LORAD_HOST"] == "127.0.0.1",
          "lorad.env: host/port differ from the defaults")
    check(env["LORAD_ADAPTER_DIR"] == "/var/lib/lorad/adapters",
          "lorad.env: the adapter directory is not the unit's StateDirectory")
    r = subprocess.run(["groff", "-man", "-Tutf8", "-ww", "-z", os.path.join(REPO, "man/lorad.1")],
                       capture_output=True, text=True, env=dict(os.environ, LC_ALL="C.UTF-8"))
    check(r.returncode == 0 and not r.stderr.strip(), "groff warns about lorad.1: %s"
          % r.stderr[-500:])


def check_env_configures_daemon(build, fx, tmp):
    store = os.path.join(tmp, "env-store")
    os.makedirs(store)
    env = {"LORAD_SERVED_MODEL_NAME": "from-env", "LORAD_MAX_TOKENS": "3",
           "LORAD_ADAPTER_DIR": store, "LORAD_VERBOSE": "0",
           "LORAD_ALLOW_ADAPTER_PATH": "/nonexistent-lorad:" + os.path.join(fx, "adapters")}
    d = Daemon(build, ["--model", os.path.join(fx, MODEL)], env=env)
    try:
        st, r = d.post("/v1/completions", {"prompt": [1, 17, 42, 5], "temperature": 0,
                                           "ignore_eos": True})
        check(st == 200, "completion answered %d: %s" % (st, r))
        check(r["model"] == "from-env", "LORAD_SERVED_MODEL_NAME ignored: model %r"
              % r["model"])
        check(r["usage"]["completion_tokens"] == 3, "LORAD_MAX_TOKENS=3 ignored: %d tokens"
              % r["usage"]["completion_tokens"])
        # the second directory of the list is allowed (403 otherwise; the adapter itself is
        # made for another base, so 400)
        st, _, body = d.request("POST", "/v1/load_lora_adapter", {
            "lora_name": "x", "lora_path": os.path.join(fx, "adapters", "ad_all")})
        check(st in (200, 400), "LORAD_ALLOW_ADAPTER_PATH's second directory not allowed: "
              "%d %r" % (st, body[:200]))
        rc = d.stop()
        wait_log_stable(d)
        check(rc == 0, "exit status %d" % rc)
        check_sanitizer_clean(d)
    finally:
        if d.alive():
            d.proc.kill()
    bad = dict(os.environ, LORAD_MAX_SEQS="lots", OPENBLAS_NUM_THREADS="1")
    r = run([os.path.join(build, "lorad"), "serve", "--model", os.path.join(fx, MODEL)],
            env=bad, timeout=60)
    check(r.returncode == 2, "LORAD_MAX_SEQS=lots: exit status %d, want 2" % r.returncode)
    check("LORAD_MAX_SEQS" in r.stderr and "--max-seqs" in r.stderr,
          "the refusal does not name the variable and the flag: %s" % r.stderr[-300:])


# ------------------------------------------------------------------ socket activation
class ActivatedDaemon(Daemon):
    """`systemd-socket-activate -l 127.0.0.1:PORT lorad serve ARGS`: systemd-socket-activate
    listens, and on the first connection execs lorad (same PID) with the socket as fd 3
    (LISTEN_FDS / LISTEN_PID). Environment variables reach lorad only through -E."""

    def __init__(self, build, args, env):
        self.build = build
        self.listen_port = free_port()
        e = self.environment(env)
        cmd = ["systemd-socket-activate", "-l", "127.0.0.1:%d" % self.listen_port]
        for k in ["OPENBLAS_NUM_THREADS", "ASAN_OPTIONS", "UBSAN_OPTIONS",
                  "LSAN_OPTIONS"] + list(env):
            if k in e:
                cmd += ["-E", k]
        cmd += [os.path.join(build, "lorad"), "serve"] + list(args)
        self._spawn(cmd, e)

    def first_request(self):
        """The connection that starts lorad; answered once it has loaded."""
        self.port = self.listen_port
        deadline = time.time() + 30
        while not any(ln.startswith("Listening on") for ln in self.log()):
            check(time.time() < deadline and self.alive(), "systemd-socket-activate did "
                  "not listen: %s" % self.log())
            time.sleep(0.02)
        out = self.request("GET", "/health", timeout=START_TIMEOUT)
        self._ready.wait(10)
        return out


def check_socket_activation(build, fx, tmp):
    check(shutil.which("systemd-socket-activate"), "systemd-socket-activate is not installed")
    ns = NotifySocket(tempfile.mkdtemp(dir=tmp))
    # An address lorad could not bind: serving at all proves it used the passed socket.
    d = ActivatedDaemon(build, ["--model", os.path.join(fx, MODEL), "--host", "192.0.2.1",
                                "--port", "1"], {"NOTIFY_SOCKET": ns.path})
    try:
        st, _, body = d.first_request()
        check(st == 200, "GET /health on the passed socket answered %d: %r" % (st, body))
        st, r = d.post("/v1/completions", PROMPT)
        check(st == 200 and r["usage"]["completion_tokens"] == 3,
              "completion on the passed socket answered %d: %s" % (st, r))
        lines = [ln for ln in d.log() if "serving '" in ln]
        check(lines and "http://127.0.0.1:%d " % d.listen_port in lines[0]
              and "(socket activation)" in lines[0],
              "the start-up line does not name the passed socket: %r" % lines)
        ns.wait_for(lambda m: has(m, "READY=1"), 30, "READY=1")
        pids = {pid for _, pid, _ in ns.messages()}
        check(pids == {d.proc.pid}, "notifications from pids %s, lorad is %d (exec'd by "
              "systemd-socket-activate)" % (pids, d.proc.pid))
        rc = d.stop()
        wait_log_stable(d)
        check(rc == 0, "exit status %d after SIGTERM:\n%s" % (rc, "\n".join(d.log()[-10:])))
        check_sanitizer_clean(d)
    finally:
        if d.alive():
            d.proc.kill()
        ns.close()


# ------------------------------------------------------------------ sd_notify, watchdog
def check_notify_sequence(build, fx, tmp):
    ns = NotifySocket(tempfile.mkdtemp(dir=tmp))
    d = Daemon(build, ["--model", os.path.join(fx, MODEL)],
               env={"NOTIFY_SOCKET": ns.path, "WATCHDOG_USEC": str(WATCHDOG_USEC)})
    try:
        ready = ns.wait_for(lambda m: has(m, "READY=1"), 30, "READY=1")
        msgs = [m for _, _, m in ns.messages()]
        statuses = [fields(m).get("STATUS", "") for m in msgs[:ready]]
        check(any(s == "loading model: 2/2 files" for s in statuses),
              "no STATUS= with the loading progress before READY=1: %r" % statuses)
        check("serving '%s' on http://127.0.0.1:%d" % (MODEL, d.port)
              in fields(msgs[ready]).get("STATUS", ""),
              "READY=1 without the serving STATUS=: %r" % msgs[ready])
        # The socket serves by then.
        st, _, _ = d.request("GET", "/health")
        check(st == 200, "/health answered %d after READY=1" % st)

        # Idle: pings at half the interval. Bounds are loose (a loaded machine delays
        # threads): at least one per watchdog interval on average, and no busy loop.
        t0 = time.time()
        time.sleep(3.0)
        n = len(ns.pings_between(t0, t0 + 3.0))
        interval = WATCHDOG_USEC / 1e6
        print("idle: %d WATCHDOG=1 in 3.0 s (WATCHDOG_USEC=%d: one expected every %.3f s)"
              % (n, WATCHDOG_USEC, interval / 2))
        check(3.0 / interval <= n <= 3.0 / (interval / 2) * 1.5 + 2,
              "%d WATCHDOG=1 in 3 s with WATCHDOG_USEC=%d" % (n, WATCHDOG_USEC))
        # Busy: a request runs, pings go on between steps.
        t0 = time.time()
        st, r = d.post("/v1/completions", dict(PROMPT, max_tokens=60, ignore_eos=True))
        check(st == 200, "completion answered %d: %s" % (st, r))

        # SIGHUP: RELOADING=1, then READY=1 again.
        n0 = len(ns.messages())
        d.proc.send_signal(signal.SIGHUP)
        deadline = time.time() + 20
        while time.time() < deadline:
            after = [m for _, _, m in ns.messages()[n0:] if not has(m, "WATCHDOG=1")]
            if any(has(m, "READY=1") for m in after):
                break
            time.sleep(0.05)
        check(len(after) >= 2 and has(after[0], "RELOADING=1") and has(after[-1], "READY=1"),
              "SIGHUP: want RELOADING=1 then READY=1, got %r" % after)

        # SIGTERM: STOPPING=1 with the drain's STATUS.
        n0 = len(ns.messages())
        rc = d.stop()
        wait_log_stable(d)
        check(rc == 0, "exit status %d after SIGTERM" % rc)
        after = [m for _, _, m in ns.messages()[n0:] if not has(m, "WATCHDOG=1")]
        check(after and has(after[0], "STOPPING=1") and "draining" in fields(after[0])["STATUS"]
              and "EXTEND_TIMEOUT_USEC=45000000" in after[0],
              "SIGTERM: want STOPPING=1 with STATUS=draining and the stop timeout extended "
              "to --drain-seconds + 15 s, got %r" % after)
        pids = {pid for _, pid, _ in ns.messages()}
        check(pids == {d.proc.pid}, "notifications from pids %s, the daemon is %d (systemd's "
              "NotifyAccess=main ignores others)" % (pids, d.proc.pid))
        check_sanitizer_clean(d)
    finally:
        if d.alive():
            d.proc.kill()
        ns.close()


def check_bf16_progress_no_watchdog(build, fx, tmp):
    """A BF16 model's conversion is reported; without WATCHDOG_USEC the engine sleeps
    untimed: no ping at all."""
    ns = NotifySocket(tempfile.mkdtemp(dir=tmp))
    d = Daemon(build, ["--model", os.path.join(fx, "llama_bf16")],
               env={"NOTIFY_SOCKET": ns.path})
    try:
        ready = ns.wait_for(lambda m: has(m, "READY=1"), 30, "READY=1")
        statuses = [fields(m).get("STATUS", "") for _, _, m in ns.messages()[:ready]]
        done = [s for s in statuses if re.fullmatch(
            r"loading model: copying weights, (\d+)/\1 tensors", s)]
        check(done, "no STATUS= for the finished BF16 conversion: %r" % statuses)
        time.sleep(1.0)
        n = len(ns.pings_between(0, time.time()))
        check(n == 0, "%d WATCHDOG=1 without WATCHDOG_USEC" % n)
        check(d.stop() == 0, "bad exit status")
    finally:
        if d.alive():
            d.proc.kill()
        ns.close()


def check_stalled_engine_stops_pings(build, fx, tmp):
    ns = NotifySocket(tempfile.mkdtemp(dir=tmp))
    d = Daemon(build, ["--model", os.path.join(fx, MODEL), "--test-stall-engine"],
               env={"NOTIFY_SOCKET": ns.path, "WATCHDOG_USEC": str(WATCHDOG_USEC)})
    interval = WATCHDOG_USEC / 1e6
    try:
        ns.wait_for(lambda m: has(m, "READY=1"), 30, "READY=1")
        t0 = time.time()
        time.sleep(1.5)
        before = len(ns.pings_between(t0, t0 + 1.5))
        check(before >= 3, "only %d WATCHDOG=1 in 1.5 s before the stall" % before)
        d.proc.send_signal(signal.SIGUSR1)
        deadline = time.time() + 10
        while not any("stalling the engine" in ln for ln in d.log()):
            check(time.time() < deadline, "the daemon did not log the stall")
            time.sleep(0.02)
        time.sleep(interval)   # a ping already under way may still land
        t1 = time.time()
        time.sleep(6 * interval)
        after = len(ns.pings_between(t1, t1 + 6 * interval))
        st, _, _ = d.request("GET", "/health", timeout=10)
        print("stalled engine: %d WATCHDOG=1 in 1.5 s before, %d in %.1f s after; /health "
              "%d" % (before, after, 6 * interval, st))
        check(after == 0, "%d WATCHDOG=1 from a stalled engine" % after)
        check(st == 200, "/health answered %d: the HTTP side should be alive" % st)
        rc = d.stop()
        wait_log_stable(d)
        check(rc == 0, "exit status %d after SIGTERM of a stalled daemon" % rc)
        check_sanitizer_clean(d)
    finally:
        if d.alive():
            d.proc.kill()
        ns.close()


# ------------------------------------------------------------------ Debian package
def have_deb_tools():
    return shutil.which("dpkg-buildpackage") and shutil.which("dh") and \
        shutil.which("dh_installsystemd")


def check_deb(build):
    r = run(["make", "--no-print-directory", "BUILD=" + build, "deb"], timeout=1800)
    check(r.returncode == 0, "make deb failed:\n%s%s" % (r.stdout[-1500:], r.stderr[-1500:]))
    debdir = os.path.join(REPO, build, "deb") if not os.path.isabs(build) else \
        os.path.join(build, "deb")
    debs = [f for f in os.listdir(debdir) if re.match(r"lorad_.*\.deb$", f)]
    check(len(debs) == 1, "make deb made %r" % debs)
    deb = os.path.join(debdir, debs[0])
    r = run(["dpkg-deb", "--contents", deb])
    check(r.returncode == 0, "dpkg-deb --contents: %s" % r.stderr)
    files = {ln.split()[-1] for ln in r.stdout.splitlines()}
    for want in ("./usr/bin/lorad", "./lib/systemd/system/lorad.service",
                 "./lib/systemd/system/lorad.socket", "./usr/share/man/man1/lorad.1.gz",
                 "./etc/lorad/lorad.env"):
        check(want in files, "%s is not in the package:\n%s" % (want, r.stdout))
    print("%s: %d files" % (debs[0], len(files)))
    ctl = tempfile.mkdtemp(dir=debdir)
    r = run(["dpkg-deb", "-e", deb, ctl])
    check(r.returncode == 0, "dpkg-deb -e: %s" % r.stderr)
    with open(os.path.join(ctl, "conffiles")) as f:
        check("/etc/lorad/lorad.env" in f.read().split(), "lorad.env is not a conffile")
    with open(os.path.join(ctl, "postinst")) as f:
        post = f.read()
    # dh_installsystemd: a unit enabled on installation is enabled unconditionally; one
    # left to the administrator only when it "was enabled" (debian-installed) before.
    check("deb-systemd-helper enable 'lorad.service'" in post
          and "debian-installed 'lorad.service'" not in post
          and "deb-systemd-invoke $_dh_action 'lorad.service'" in post,
          "postinst does not enable and start lorad.service (dh_installsystemd)")
    check("debian-installed 'lorad.socket'" in post and "invoke $_dh_action 'lorad.socket'"
          not in post, "postinst enables or starts lorad.socket")
    if shutil.which("lintian"):
        r = run(["lintian", "--pedantic", deb], timeout=600)
        tags = [ln for ln in r.stdout.splitlines() if re.match(r"^[EWIP]: ", ln)]
        print("lintian --pedantic: %s" % ("\n  ".join([""] + tags) if tags else "clean"))
        check(not [t for t in tags if t.startswith("E: ")], "lintian errors: %s" % tags)


def main(argv):
    build = argv[1] if len(argv) > 1 else "build"
    t0 = time.time()
    fx, _ = ensure_fixtures(build)
    suite = Suite()
    tmp = tempfile.mkdtemp(prefix="lorad-systemd-")
    try:
        suite.run("make_install_honours_prefix_destdir_keeps_lorad_env", check_install,
                  build, tmp)
        suite.run("units_pass_systemd_analyze_verify", check_verify, build, tmp)
        suite.run("security_exposure_at_most_2_0", check_security, build)
        suite.run("man_page_and_lorad_env_list_every_flag_with_its_default",
                  check_docs_list_every_flag, build)
        suite.run("daemon_reads_lorad_env_variables", check_env_configures_daemon, build, fx,
                  tmp)
        suite.run("socket_activation_serves_on_passed_socket", check_socket_activation,
                  build, fx, tmp)
        suite.run("notify_status_ready_watchdog_reload_stopping", check_notify_sequence,
                  build, fx, tmp)
        suite.run("notify_bf16_conversion_progress_no_pings_without_watchdog_usec",
                  check_bf16_progress_no_watchdog, build, fx, tmp)
        suite.run("stalled_engine_stops_watchdog_pings", check_stalled_engine_stops_pings,
                  build, fx, tmp)
        if have_deb_tools():
            suite.run("make_deb_contents_and_dh_installsystemd", check_deb, build)
        else:
            print("SKIP make_deb_contents_and_dh_installsystemd: no dpkg-buildpackage / "
                  "debhelper")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print("time: %.1f s" % (time.time() - t0))
    print("%d passed, %d failed" % (suite.passed, suite.failed))
    return 1 if suite.failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
