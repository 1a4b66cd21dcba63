#!/usr/bin/python3
"""Faults under a running daemon (issue 13): the disk fills up or fails while an adapter
upload is written. tests/faultshim.c (LD_PRELOAD) fails write() or fsync() on the upload's
temporary files when its control file says so; each case must answer with a clear error
(507 for a full disk, 500 for an I/O error), leave no partial adapter and no temporary in
the store, and leave the daemon serving — the next upload, once the disk is back, works.
And the model's files truncated or overwritten under the running daemon: the weights were
copied at load, so its outputs do not change and it keeps serving.

    tests/test_faults.py BUILD
"""
import json
import os
import shutil
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from serve_harness import (Daemon, Fail, Suite, check, check_alive_then_exit_0,  # noqa: E402
                           check_sanitizer_clean, ensure_fixtures, wait_log_stable)

MODEL = "qwen2_tok_qwen3"
ADAPTER = "tq_all"
BOUNDARY = "lorad-fault-5e2a"


def files_of(path):
    with open(os.path.join(path, "adapter_config.json"), "rb") as f:
        cfg = f.read()
    with open(os.path.join(path, "adapter_model.safetensors"), "rb") as f:
        w = f.read()
    return cfg, w


def upload_body(cfg, w):
    out = b""
    for name, fn, data in (("config", "adapter_config.json", cfg),
                           ("weights", "adapter_model.safetensors", w)):
        out += (b"--" + BOUNDARY.encode() + b"\r\nContent-Disposition: form-data; name=\"" +
                name.encode() + b"\"; filename=\"" + fn.encode() +
                b"\"\r\nContent-Type: application/octet-stream\r\n\r\n" + data + b"\r\n")
    return out + b"--" + BOUNDARY.encode() + b"--\r\n"


class Ctx:
    def __init__(self, build):
        self.build = build
        fx, _ = ensure_fixtures(build)
        self.fx = fx
        self.tmp = tempfile.mkdtemp(prefix="lorad-faults-")
        self.store = os.path.join(self.tmp, "store")
        os.makedirs(self.store)
        self.ctl = os.path.join(self.tmp, "fault")
        self.set_fault("")
        self.cfg, self.w = files_of(os.path.join(fx, "adapters", ADAPTER))
        check(len(self.w) > 16384, "the adapter must be larger than the shim's "
              "fault offset (%d bytes)" % len(self.w))
        shim = os.path.join(build, "tests", "faultshim.so")
        check(os.path.exists(shim), "%s is missing (make check builds it)" % shim)
        env = {"LD_PRELOAD": shim, "LORAD_FAULT_CTL": self.ctl,
               # an ASan build's runtime must come first; the shim is not instrumented
               "ASAN_OPTIONS": os.environ.get("ASAN_OPTIONS", "") +
               ":verify_asan_link_order=0"}
        self.d = Daemon(build, ["--model", os.path.join(fx, MODEL), "--adapter-dir",
                                self.store, "--max-upload-mb", "64"], env=env)

    def set_fault(self, what):
        with open(self.ctl, "w") as f:
            f.write(what)

    def put(self, name):
        st, _, body = self.d.request("PUT", "/v1/adapters/" + name, upload_body(self.cfg,
                                     self.w), {"Content-Type":
                                               "multipart/form-data; boundary=" + BOUNDARY})
        try:
            return st, json.loads(body)
        except ValueError:
            return st, body

    def check_store_clean(self, absent):
        entries = sorted(os.listdir(self.store))
        check(not [e for e in entries if e.startswith(".")],
              "temporaries left in the store: %s" % entries)
        check(absent not in entries, "a partial adapter '%s' was published: %s"
              % (absent, entries))
        st, _, _ = self.d.request("GET", "/v1/adapters/" + absent)
        check(st == 404, "GET /v1/adapters/%s after the failed upload: %d" % (absent, st))

    def check_serving(self):
        st, _, body = self.d.request("POST", "/v1/completions", json.dumps(
            {"prompt": "Once upon a time", "max_tokens": 4, "temperature": 0}).encode(),
            {"Content-Type": "application/json"})
        check(st == 200, "a completion after the fault answered %d: %s" % (st, body[:200]))


def fault_case(ctx, fault, name, want_status, want_words):
    ctx.set_fault(fault)
    try:
        st, body = ctx.put(name)
    finally:
        ctx.set_fault("")
    check(st == want_status, "%s: upload answered %d (want %d): %r"
          % (fault, st, want_status, body))
    msg = body.get("error", {}).get("message", "") if isinstance(body, dict) else ""
    for w in want_words:
        check(w in msg, "%s: the message %r does not say %r" % (fault, msg, w))
    if want_status == 507:
        check(body["error"].get("code") == "insufficient_storage",
              "507 without code insufficient_storage: %r" % body)
    ctx.check_store_clean(name)
    ctx.check_serving()


def check_recovers(ctx):
    st, body = ctx.put("after")
    check(st == 201, "an upload once the disk is back answered %d: %r" % (st, body))
    st, _, out = ctx.d.request("POST", "/v1/completions", json.dumps(
        {"model": "after", "prompt": "Once upon a time", "max_tokens": 4,
         "temperature": 0}).encode(), {"Content-Type": "application/json"})
    check(st == 200, "a completion on the new adapter answered %d: %s" % (st, out[:200]))


def check_model_files_changed_under_the_daemon(build):
    fx, _ = ensure_fixtures(build)
    tmp = tempfile.mkdtemp(prefix="lorad-faults-model-")
    model = os.path.join(tmp, "model")
    # an F32 checkpoint, which lorad used to read in place from the file mapping
    shutil.copytree(os.path.join(fx, "llama_tok_llama2"), model)
    d = Daemon(build, ["--model", model])
    body = json.dumps({"prompt": "Once upon a time", "max_tokens": 6, "temperature": 0,
                       "logprobs": 2}).encode()
    hdr = {"Content-Type": "application/json"}
    try:
        st, _, ref = d.request("POST", "/v1/completions", body, hdr)
        check(st == 200, "first completion answered %d" % st)
        weights = os.path.join(model, "model.safetensors")
        size = os.path.getsize(weights)
        with open(weights, "r+b") as f:       # overwritten in place, then cut short
            f.write(os.urandom(min(size, 1 << 16)))
            f.truncate(size // 3)
        st, _, again = d.request("POST", "/v1/completions", body, hdr)
        check(st == 200, "a completion after the model file changed answered %d" % st)
        a, b = json.loads(ref)["choices"][0], json.loads(again)["choices"][0]
        check(a["text"] == b["text"] and a["logprobs"] == b["logprobs"],
              "the output changed after the model file did: %r vs %r" % (a, b))
        check_alive_then_exit_0(d)
        wait_log_stable(d)
        check_sanitizer_clean(d)
    finally:
        if d.alive():
            d.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv):
    build = argv[1] if len(argv) > 1 else "build"
    suite = Suite()
    try:
        ctx = Ctx(build)
    except Fail as e:
        suite.report("daemon_starts_with_the_fault_shim", str(e))
        print("%d passed, %d failed" % (suite.passed, suite.failed))
        return 1
    try:
        suite.run("disk_full_while_writing_507_nothing_left", fault_case, ctx, "write ENOSPC",
                  "full", 507, ["adapter_model.safetensors", "No space left"])
        suite.run("io_error_while_writing_500_nothing_left", fault_case, ctx, "write EIO",
                  "eio", 500, ["Input/output error"])
        suite.run("disk_full_at_fsync_507_nothing_left", fault_case, ctx, "fsync ENOSPC",
                  "fullsync", 507, ["No space left"])
        suite.run("io_error_at_fsync_500_nothing_left", fault_case, ctx, "fsync EIO",
                  "eiosync", 500, ["Input/output error"])
        suite.run("upload_works_again_once_the_disk_is_back", check_recovers, ctx)
        suite.run("model_file_truncated_and_overwritten_outputs_unchanged",
                  check_model_files_changed_under_the_daemon, build)
        suite.run("daemon_alive_and_exits_0", check_alive_then_exit_0, ctx.d)
        wait_log_stable(ctx.d)
        suite.run("no_sanitizer_reports", check_sanitizer_clean, ctx.d)
    finally:
        if ctx.d.alive():
            ctx.d.stop()
        shutil.rmtree(ctx.tmp, ignore_errors=True)
    print("%d passed, %d failed" % (suite.passed, suite.failed))
    return 1 if suite.failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
