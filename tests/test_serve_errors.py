#!/usr/bin/python3
"""test_serve_errors.py BUILD: `lorad serve`'s refusals, one table, over real HTTP.

Every row sends one bad request and checks the HTTP status, OpenAI's error shape
{"error": {"message", "type", "param", "code"}} (all four keys, message a non-empty
string, type a string, param and code a string or null), a substring of the message, and
param / code where they say something. After every row a normal request
({"prompt": "Hello", "max_tokens": 2}) must answer 200 on the same daemon: an error never
leaves the daemon unable to serve. Rows that must be *accepted* (the edges of each limit:
max_tokens at --max-tokens, a prompt that exactly fills the context, a body of exactly
--max-body-kb, temperature 0 and 2, ...) sit next to the refusals, so a limit that is off
by one, or a refusal of everything, fails too.

Daemons (all on free loopback ports, every wait bounded):
* main: qwen2_tok_qwen3 (context 128, real tokenizer and chat template), the fixture
  adapters (tq_* fit it; ad_* are made for llama_tied and fail validation with 422),
  --max-body-kb 8, --max-tokens 64. 400 (malformed JSON, body not an object, every wrong
  type of every field of both endpoints, out-of-range values, unknown fields, unsupported
  options, context overflow, vocabulary, stop, prompts, adapters, messages), 404, 405
  (Allow header), 413 (declared Content-Length; a chunked body that grows past the limit
  is answered 413 or cut off before it is all read), 415, 422 (an adapter for another
  base is refused again without a new load: lorad_adapter_loads_total does not grow);
* key: the same model with --api-key-file: 401 without / with a wrong key or scheme,
  /health open, the right key works on /v1/models, /metrics and completions;
* slow: serve_harness.slow_model (no tokenizer, context 8192) with --max-seqs 1
  --max-queue 1: 400s that need a tokenizer, 429 + Retry-After once one request runs and
  one waits, then SIGTERM while a request runs: 503 + Retry-After on an existing
  keep-alive connection, /metrics still served, new connections refused or 503, exit 0.
Each daemon must be alive after its rows, exit 0 on SIGTERM, and its log must hold no
sanitizer report (the suite also runs under ASan/UBSan).

Prints "PASS name" / "FAIL name: reason" per row and, last, "N passed, N failed"; exits 1
if anything failed.
"""
import json
import os
import select
import shutil
import signal
import socket
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from serve_harness import (Daemon, Fail, Suite, check, check_alive_then_exit_0,  # noqa: E402
                           check_sanitizer_clean, ensure_fixtures, slow_model,
                           wait_log_stable)

MODEL = "qwen2_tok_qwen3"     # context 128, vocabulary 151669
CTX = 128
VOCAB = 151669
MAX_BODY_KB = 8
MAX_TOKENS = 64
API_KEY = "sk-lorad-test-5f0c1e2d3b4a"
C = "/v1/completions"
CH = "/v1/chat/completions"
JSON_CT = {"Content-Type": "application/json"}
NORMAL = {"prompt": "Hello", "max_tokens": 2}
MSGS = [{"role": "user", "content": "Hello"}]
SOCK_TIMEOUT = 60            # seconds for any one socket operation (ASan builds are slow)
ANY = object()               # a param / code the row does not check
DEL = object()               # a field to remove from the base body


# --------------------------------------------------------------------------- plumbing
class Row:
    """One request and what the daemon must answer. body: bytes / str are sent as they
    are, anything else as JSON. ct: the Content-Type (None: no header)."""

    def __init__(self, name, status, msg, body=None, path=C, method="POST", param=ANY,
                 code=ANY, ct="application/json", headers=None, extra=None):
        self.name, self.status, self.msg = name, status, msg
        self.method, self.path, self.param, self.code = method, path, param, code
        if body is None or isinstance(body, bytes):
            self.body = body
        elif isinstance(body, str):
            self.body = body.encode()
        else:
            self.body = json.dumps(body).encode()
        self.headers = dict(headers or {})
        if ct is not None and method == "POST":
            self.headers["Content-Type"] = ct
        self.extra = extra   # fn(headers, parsed body) for row-specific checks


def edit(base, kw):
    b = dict(base)
    for k, v in kw.items():
        if v is DEL:
            b.pop(k, None)
        else:
            b[k] = v
    return b


def comp(**kw):
    """A /v1/completions body: the normal one with kw set (DEL removes a field)."""
    return edit(NORMAL, kw)


def chat(**kw):
    """A /v1/chat/completions body: one user message, max_tokens 2, kw set."""
    return edit({"messages": MSGS, "max_tokens": 2}, kw)


def jtype(v):
    """A name for a JSON value's type, for row names: list_of_real, object, ..."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int):
        return "integer"
    if isinstance(v, float):
        return "real"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "empty_list" if not v else "list_of_" + jtype(v[0])
    return "object"


def check_error(st, hdrs, data, status, msg, param=ANY, code=ANY):
    """The status and OpenAI's error shape; returns the error object."""
    check(st == status, "answered %d, expected %d: %r" % (st, status, data[:300]))
    ct = hdrs.get("content-type", "")
    check(ct.startswith("application/json"), "error Content-Type is %r" % ct)
    try:
        obj = json.loads(data)
    except ValueError:
        raise Fail("the error body is not JSON: %r" % data[:300])
    check(isinstance(obj, dict) and isinstance(obj.get("error"), dict),
          "not {\"error\": {...}}: %r" % data[:300])
    e = obj["error"]
    for k in ("message", "type", "param", "code"):
        check(k in e, "the error has no %r: %r" % (k, e))
    check(isinstance(e["message"], str) and e["message"], "empty message: %r" % e)
    check(isinstance(e["type"], str) and e["type"], "type is not a string: %r" % e)
    check(e["param"] is None or isinstance(e["param"], str), "param: %r" % e)
    check(e["code"] is None or isinstance(e["code"], str), "code: %r" % e)
    check(msg in e["message"], "message %r does not contain %r" % (e["message"], msg))
    if param is not ANY:
        check(e["param"] == param, "param is %r, expected %r (%s)" % (e["param"], param,
                                                                      e["message"]))
    if code is not ANY:
        check(e["code"] == code, "code is %r, expected %r (%s)" % (e["code"], code,
                                                                   e["message"]))
    return e


class Target:
    """A daemon, its normal request and the headers every request carries (the key)."""

    def __init__(self, name, d, normal, headers=None):
        self.name, self.d, self.normal_body = name, d, normal
        self.headers = dict(headers or {})

    def send(self, method, path, body, headers):
        h = dict(self.headers)
        h.update(headers)
        return self.d.request(method, path, body, h, timeout=SOCK_TIMEOUT)

    def normal(self):
        """The normal request answers 200 with one choice."""
        st, _, data = self.send("POST", C, json.dumps(self.normal_body).encode(), JSON_CT)
        check(st == 200, "then the normal request answered %d: %r" % (st, data[:300]))
        r = json.loads(data)
        check(r.get("object") == "text_completion" and len(r.get("choices", [])) == 1 and
              isinstance(r["choices"][0].get("text"), str),
              "then the normal request gave %r" % data[:300])


def run_row(t, r):
    st, hdrs, data = t.send(r.method, r.path, r.body, r.headers)
    e = check_error(st, hdrs, data, r.status, r.msg, r.param, r.code)
    if r.extra:
        r.extra(hdrs, e)
    t.normal()


def run_ok(t, method, path, body, headers=None, stream=False):
    """An accepted request: 200 (a completion, or an SSE stream ending in [DONE])."""
    h = dict(JSON_CT)
    h.update(headers or {})
    st, hdrs, data = t.send(method, path, json.dumps(body).encode(), h)
    check(st == 200, "answered %d: %r" % (st, data[:300]))
    if stream:
        check(data.endswith(b"data: [DONE]\n\n"), "the stream does not end with [DONE]: %r"
              % data[-200:])
    else:
        r = json.loads(data)
        check(r.get("object") in ("text_completion", "chat.completion"),
              "not a completion: %r" % data[:300])
    t.normal()


def header_is(name, want):
    def fn(hdrs, e):
        check(hdrs.get(name.lower()) == want, "%s header is %r, expected %r"
              % (name, hdrs.get(name.lower()), want))
    return fn


def retry_after(hdrs, e):
    v = hdrs.get("retry-after")
    check(v is not None and v.isdigit() and int(v) >= 1, "Retry-After is %r" % v)


# ---- raw sockets (413: what is sent and when matters)
def read_response(s):
    """Reads one HTTP response (Content-Length framed) from s; (status, headers, body).
    Raises Fail on a timeout; b'' status 0 when the daemon closed without answering."""
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
        except ConnectionResetError:
            b = b""
        except socket.timeout:
            raise Fail("no complete answer within %d s (read %r)" % (SOCK_TIMEOUT, data[:200]))
        if not b:
            if not data:
                return 0, {}, b""
            raise Fail("the connection closed mid-answer: %r" % data[:300])
        data += b


def raw_request(port, head, body=b""):
    s = socket.create_connection(("127.0.0.1", port), timeout=SOCK_TIMEOUT)
    try:
        s.sendall(head + body)
        return read_response(s)
    finally:
        s.close()


def post_head(path, extra):
    return ("POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            "%s\r\n" % (path, "".join("%s: %s\r\n" % kv for kv in extra))).encode()


def check_413_declared_length(t, length, expect_continue=False):
    """Only the headers are sent: the declared length alone must get the 413."""
    extra = [("Content-Length", str(length)), ("Connection", "close")]
    if expect_continue:
        extra.append(("Expect", "100-continue"))
    s = socket.create_connection(("127.0.0.1", t.d.port), timeout=SOCK_TIMEOUT)
    try:
        s.sendall(post_head(C, extra))
        first = s.recv(12, socket.MSG_PEEK)
        check(not first.startswith(b"HTTP/1.1 100"), "the daemon asked for the body (100 "
              "Continue) of a request it must refuse")
        st, hdrs, body = read_response(s)
    finally:
        s.close()
    check_error(st, hdrs, body, 413, "limit is %d KB" % MAX_BODY_KB, code="request_too_large")
    t.normal()


def check_body_at_limit_accepted(t):
    body = json.dumps(NORMAL).encode()
    body += b" " * (MAX_BODY_KB * 1024 - len(body))
    st, _, data = raw_request(t.d.port, post_head(C, [("Content-Length", str(len(body))),
                                                      ("Connection", "close")]), body)
    check(st == 200, "a body of exactly %d KB answered %d: %r" % (MAX_BODY_KB, st, data[:200]))
    t.normal()


def chunk(b):
    return b"%x\r\n%s\r\n" % (len(b), b)


def check_chunked_under_limit_accepted(t):
    body = json.dumps(NORMAL).encode()
    head = post_head(C, [("Transfer-Encoding", "chunked"), ("Connection", "close")])
    st, _, data = raw_request(t.d.port, head, chunk(body[:5]) + chunk(body[5:]) + b"0\r\n\r\n")
    check(st == 200, "a small chunked body answered %d: %r" % (st, data[:200]))
    t.normal()


def check_chunked_past_limit(t):
    """1 KB chunks until 1 KB past the limit, then nothing (never the final chunk): the
    daemon has seen more than --max-body-kb, so it must answer 413 or close the connection
    now, without the rest of the body; a daemon that reads on waits for more: a timeout."""
    total = (MAX_BODY_KB + 1) * 1024
    piece = chunk(b"x" * 1024)
    s = socket.create_connection(("127.0.0.1", t.d.port), timeout=SOCK_TIMEOUT)
    try:
        s.sendall(post_head(C, [("Transfer-Encoding", "chunked")]) + chunk(b'{"prompt": "'))
        sent, cut = 0, False
        while sent < total:
            if select.select([s], [], [], 0)[0]:
                break   # the daemon answered (or closed) already
            try:
                s.sendall(piece)
            except (BrokenPipeError, ConnectionResetError):
                cut = True
                break
            sent += 1024
        st, hdrs, body = read_response(s)
    finally:
        s.close()
    if st == 0:   # cut off without an answer: allowed
        print("NOTE: chunked body past the limit: the connection was %s after %d KB sent, "
              "without a 413" % ("reset" if cut else "closed", sent // 1024))
    else:
        check_error(st, hdrs, body, 413, "limit of %d KB" % MAX_BODY_KB,
                    code="request_too_large")
    t.normal()


# ---- lifetime of a daemon
def finish_daemon(suite, t):
    suite.run("%s_daemon_alive_after_all_rows_then_exits_0_on_sigterm" % t.name,
              check_alive_then_exit_0, t.d)
    suite.run("%s_daemon_log_has_no_sanitizer_report" % t.name, check_sanitizer_clean, t.d)


# --------------------------------------------------------------------------- the table
# Wrong types: (field, wrong values, message substring); every value is a JSON type the
# field does not take (null means "default" for every optional field, so it is not here).
OBJ = {"a": 1}
COMPLETION_TYPES = [
    ("model", [1, 1.5, True, ["m"], OBJ], "'model' must be a string"),
    ("prompt", [None, 1, 1.5, True, OBJ], "'prompt' must be a string"),
    ("prompt", [[1.5], [True], [None], [OBJ]], "'prompt' token ids must be non-negative"),
    ("max_tokens", ["2", 1.5, True, [2], OBJ], "'max_tokens' must be an integer"),
    ("temperature", ["1", True, [1], OBJ], "'temperature' must be a number"),
    ("top_p", ["1", True, [1], OBJ], "'top_p' must be a number"),
    ("top_k", ["1", 1.5, True, [1], OBJ], "'top_k' must be an integer"),
    ("seed", ["1", 1.5, True, [1], OBJ], "'seed' must be an integer"),
    ("stop", [1, 1.5, True, OBJ], "'stop' must be a string or a list of strings"),
    ("stop", [[1], [True], [None], [["x"]], [OBJ]], "'stop' must hold non-empty strings"),
    ("stream", ["true", 1, [True], OBJ], "'stream' must be a boolean"),
    ("logprobs", ["1", 1.5, True, [1], OBJ], "'logprobs' must be an integer"),
    ("echo", ["true", 1, [True], OBJ], "'echo' must be a boolean"),
    ("ignore_eos", ["true", 1, [True], OBJ], "'ignore_eos' must be a boolean"),
    ("return_tokens_as_token_ids", ["true", 1, [True], OBJ],
     "'return_tokens_as_token_ids' must be a boolean"),
    ("adapters", ["tq_all", 1, True, {"name": "tq_all", "weight": 1}],
     "'adapters' must be a list"),
    ("user", [1, True, ["u"]], "'user' must be a string"),
]
CHAT_TYPES = [
    ("model", [1, 1.5, True, ["m"], OBJ], "'model' must be a string"),
    ("messages", [None, "Hello", 1, True, {"role": "user", "content": "Hello"}],
     "'messages' must be a non-empty list"),
    ("max_tokens", ["2", 1.5, True, [2], OBJ], "'max_tokens' must be an integer"),
    ("max_completion_tokens", ["2", 1.5, True, [2], OBJ],
     "'max_completion_tokens' must be an integer"),
    ("temperature", ["1", True, [1], OBJ], "'temperature' must be a number"),
    ("top_p", ["1", True, [1], OBJ], "'top_p' must be a number"),
    ("top_k", ["1", 1.5, True, [1], OBJ], "'top_k' must be an integer"),
    ("seed", ["1", 1.5, True, [1], OBJ], "'seed' must be an integer"),
    ("stop", [1, 1.5, True, OBJ], "'stop' must be a string or a list of strings"),
    ("stop", [[1], [True], [None], [["x"]]], "'stop' must hold non-empty strings"),
    ("stream", ["true", 1, [True], OBJ], "'stream' must be a boolean"),
    ("logprobs", ["true", 1, 1.5, [True], OBJ], "'logprobs' must be a boolean"),
    ("top_logprobs", ["1", 1.5, True, [1], OBJ], "'top_logprobs' must be an integer"),
    ("ignore_eos", ["true", 1, [True], OBJ], "'ignore_eos' must be a boolean"),
    ("return_tokens_as_token_ids", ["true", 1, [True], OBJ],
     "'return_tokens_as_token_ids' must be a boolean"),
    ("adapters", ["tq_all", 1, True, {"name": "tq_all", "weight": 1}],
     "'adapters' must be a list"),
    ("user", [1, True, ["u"]], "'user' must be a string"),
]


def type_rows():
    rows = []
    for ep, path, make, table in (("completions", C, comp, COMPLETION_TYPES),
                                  ("chat", CH, chat, CHAT_TYPES)):
        for field, values, msg in table:
            for v in values:
                body = make(**{field: v})
                if field == "top_logprobs":
                    body["logprobs"] = True
                rows.append(Row("400_%s_%s_%s_wrong_type" % (ep, field, jtype(v)), 400, msg,
                                body, path, param=field))
        # stream_options (an object, with stream true)
        for v in ["x", 1, True, [1]]:
            rows.append(Row("400_%s_stream_options_%s_wrong_type" % (ep, jtype(v)), 400,
                            "'stream_options' must be an object",
                            make(stream=True, stream_options=v), path,
                            param="stream_options"))
        for v in ["yes", 1, [True]]:
            rows.append(Row("400_%s_stream_options_include_usage_%s_wrong_type"
                            % (ep, jtype(v)), 400, "include_usage' must be a boolean",
                            make(stream=True, stream_options={"include_usage": v}), path))
        # the objects of 'adapters'
        for what, v, msg in (
                ("string", "tq_all", "adapters[0] must be an object"),
                ("name_integer", {"name": 1, "weight": 1}, "adapters[0].name must be a non"),
                ("name_list", {"name": ["tq_all"], "weight": 1}, "adapters[0].name must be"),
                ("weight_string", {"name": "tq_all", "weight": "1"}, "adapters[0].weight must"),
                ("weight_boolean", {"name": "tq_all", "weight": True}, "adapters[0].weight"),
                ("weight_list", {"name": "tq_all", "weight": [1]}, "adapters[0].weight must")):
            rows.append(Row("400_%s_adapters_item_%s_wrong_type" % (ep, what), 400, msg,
                            make(adapters=[v]), path, param="adapters"))
    # the parts of a chat message
    for name, m, msg in (
            ("item_string", "Hello", "messages[0] must be an object"),
            ("item_integer", 1, "messages[0] must be an object"),
            ("item_list", [MSGS[0]], "messages[0] must be an object"),
            ("role_missing", {"content": "Hello"}, "messages[0].role must be a string"),
            ("role_integer", {"role": 1, "content": "Hello"}, "messages[0].role must be a"),
            ("role_null", {"role": None, "content": "Hello"}, "messages[0].role must be a"),
            ("role_list", {"role": ["user"], "content": "Hello"}, "messages[0].role must"),
            ("content_missing", {"role": "user"}, "messages[0].content is missing"),
            ("content_integer", {"role": "user", "content": 1},
             "messages[0].content must be a string or a list of text parts"),
            ("content_boolean", {"role": "user", "content": True},
             "messages[0].content must be a string or a list of text parts"),
            ("content_object", {"role": "user", "content": {"type": "text", "text": "Hi"}},
             "messages[0].content must be a string or a list of text parts"),
            ("content_part_string", {"role": "user", "content": ["Hello"]},
             "messages[0].content[0]: only {\"type\": \"text\""),
            ("content_part_text_integer", {"role": "user",
                                           "content": [{"type": "text", "text": 1}]},
             "messages[0].content[0]: only"),
            ("content_part_type_missing", {"role": "user", "content": [{"text": "Hello"}]},
             "messages[0].content[0]: only"),
            ("content_part_image", {"role": "user", "content": [
                {"type": "text", "text": "Look"},
                {"type": "image_url", "image_url": {"url": "http://x/y.png"}}]},
             "messages[0].content[1]: only"),
            ("name_integer", {"role": "user", "content": "Hello", "name": 1},
             "messages[0].name must be a string")):
        rows.append(Row("400_chat_message_%s_wrong_type" % name, 400, msg,
                        chat(messages=[m]), CH, param="messages"))
    return rows


def long_ids(n):
    """n token ids, in the vocabulary of every model here (the slow one has 512)."""
    return [(i * 7919) % 400 + 50 for i in range(n)]


STOP9 = ["s%d" % i for i in range(9)]
ADAPTERS9 = [{"name": "a%d" % i, "weight": 0.1} for i in range(9)]
TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}


def value_rows():
    ids_too_long = json.dumps(comp(prompt=long_ids(CTX), max_tokens=DEL))
    R = Row
    return [
        # ---- malformed JSON
        R("400_malformed_json_truncated", 400, "not valid JSON", '{"prompt": "Hello", '),
        R("400_malformed_json_unquoted_key", 400, "not valid JSON", "{prompt: 'Hello'}"),
        R("400_malformed_json_empty_body", 400, "not valid JSON", b""),
        R("400_malformed_json_trailing_garbage", 400, "not valid JSON",
          '{"prompt": "Hello", "max_tokens": 2} x'),
        R("400_malformed_json_invalid_utf8", 400, "not valid JSON",
          b'{"prompt": "\xff\xfe", "max_tokens": 2}'),
        R("400_malformed_json_real_overflow", 400, "not valid JSON",
          '{"prompt": "Hello", "temperature": 1e999}'),
        R("400_malformed_json_integer_overflow", 400, "not valid JSON",
          '{"prompt": "Hello", "max_tokens": 123456789012345678901234567890}'),
        R("400_malformed_json_chat", 400, "not valid JSON", '{"messages": [', CH),
        R("400_duplicate_key_top_level", 400, "duplicate",
          '{"prompt": "Hello", "max_tokens": 2, "max_tokens": 3}'),
        R("400_duplicate_key_in_adapter_object", 400, "duplicate",
          '{"prompt": "Hello", "adapters": [{"name": "tq_all", "name": "tq_mlp", '
          '"weight": 1}]}'),
        R("400_duplicate_key_in_chat_message", 400, "duplicate",
          '{"messages": [{"role": "user", "content": "a", "content": "b"}]}', CH),
        # ---- body not an object
        R("400_body_is_a_list", 400, "must be a JSON object", [NORMAL]),
        R("400_body_is_an_empty_list", 400, "must be a JSON object", []),
        R("400_body_is_a_string", 400, "JSON", '"Hello"'),
        R("400_body_is_a_number", 400, "JSON", "42"),
        R("400_body_is_null", 400, "JSON", "null"),
        R("400_chat_body_is_a_list", 400, "must be a JSON object", [chat()], CH),
        # ---- required fields and unknown fields
        R("400_completions_prompt_missing", 400, "'prompt' is required", {"max_tokens": 2},
          param="prompt"),
        R("400_completions_empty_object", 400, "'prompt' is required", {}, param="prompt"),
        R("400_chat_messages_missing", 400, "'messages' is required", {"max_tokens": 2}, CH,
          param="messages"),
        R("400_completions_unknown_field", 400, "unknown field 'foo'", comp(foo=1),
          param="foo"),
        R("400_completions_unknown_field_null", 400, "unknown field 'foo'", comp(foo=None),
          param="foo"),
        R("400_completions_field_name_case_matters", 400, "unknown field 'Prompt'",
          {"Prompt": "Hello"}, param="Prompt"),
        R("400_chat_unknown_field", 400, "unknown field 'foo'", chat(foo="bar"), CH,
          param="foo"),
        R("400_chat_prompt_is_unknown", 400, "unknown field 'prompt'", chat(prompt="Hi"), CH,
          param="prompt"),
        R("400_completions_messages_is_unknown", 400, "unknown field 'messages'",
          comp(messages=MSGS), param="messages"),
        R("400_completions_max_completion_tokens_is_unknown", 400,
          "unknown field 'max_completion_tokens'", comp(max_completion_tokens=2),
          param="max_completion_tokens"),
        R("400_completions_top_logprobs_is_unknown", 400, "unknown field 'top_logprobs'",
          comp(top_logprobs=2), param="top_logprobs"),
        R("400_chat_echo_is_unknown", 400, "unknown field 'echo'", chat(echo=True), CH,
          param="echo"),
        R("400_chat_suffix_is_unknown", 400, "unknown field 'suffix'", chat(suffix="x"), CH,
          param="suffix"),
        R("400_completions_tools_is_unknown", 400, "unknown field 'tools'",
          comp(tools=[TOOL]), param="tools"),
        # ---- out of range
        R("400_temperature_negative", 400, "'temperature' must be between 0 and 2",
          comp(temperature=-1), param="temperature"),
        R("400_temperature_3", 400, "'temperature' must be between 0 and 2",
          comp(temperature=3), param="temperature"),
        R("400_temperature_just_above_2", 400, "'temperature' must be between 0 and 2",
          comp(temperature=2.0001), param="temperature"),
        R("400_chat_temperature_3", 400, "'temperature' must be between 0 and 2",
          chat(temperature=3), CH, param="temperature"),
        R("400_top_p_0", 400, "'top_p'", comp(top_p=0), param="top_p"),
        R("400_top_p_1_5", 400, "'top_p' must be between 0 and 1", comp(top_p=1.5),
          param="top_p"),
        R("400_top_p_negative", 400, "'top_p'", comp(top_p=-0.5), param="top_p"),
        R("400_chat_top_p_0", 400, "'top_p'", chat(top_p=0), CH, param="top_p"),
        R("400_top_k_below_minus_1", 400, "'top_k' must be between -1", comp(top_k=-2),
          param="top_k"),
        R("400_logprobs_21", 400, "'logprobs' must be between 0 and 20", comp(logprobs=21),
          param="logprobs"),
        R("400_logprobs_negative", 400, "'logprobs' must be between 0 and 20",
          comp(logprobs=-1), param="logprobs"),
        R("400_chat_top_logprobs_21", 400, "'top_logprobs' must be between 0 and 20",
          chat(logprobs=True, top_logprobs=21), CH, param="top_logprobs"),
        R("400_max_tokens_0", 400, "'max_tokens' must be between 1 and %d" % MAX_TOKENS,
          comp(max_tokens=0), param="max_tokens"),
        R("400_max_tokens_negative", 400, "'max_tokens' must be between 1",
          comp(max_tokens=-5), param="max_tokens"),
        R("400_max_tokens_above_server_max_tokens", 400,
          "'max_tokens' must be between 1 and %d" % MAX_TOKENS,
          comp(max_tokens=MAX_TOKENS + 1), param="max_tokens"),
        R("400_max_tokens_huge_real", 400, "'max_tokens' must be between 1",
          comp(max_tokens=1e30), param="max_tokens"),
        R("400_chat_max_tokens_above_server_max_tokens", 400, "'max_tokens' must be between",
          chat(max_tokens=MAX_TOKENS + 1), CH, param="max_tokens"),
        R("400_chat_max_completion_tokens_0", 400, "'max_completion_tokens' must be between",
          chat(max_tokens=DEL, max_completion_tokens=0), CH, param="max_completion_tokens"),
        R("400_chat_max_completion_tokens_above_server_max_tokens", 400,
          "'max_completion_tokens' must be between 1 and %d" % MAX_TOKENS,
          chat(max_tokens=DEL, max_completion_tokens=MAX_TOKENS + 1), CH,
          param="max_completion_tokens"),
        R("400_n_0", 400, "'n' must be between 1", comp(n=0), param="n"),
        R("400_presence_penalty_out_of_range", 400, "'presence_penalty' must be between",
          comp(presence_penalty=3), param="presence_penalty"),
        # ---- unsupported options (accepted only at their neutral value)
        R("400_n_2_unsupported", 400, "'n' > 1 is not supported", comp(n=2), param="n"),
        R("400_chat_n_2_unsupported", 400, "'n' > 1 is not supported", chat(n=2), CH,
          param="n"),
        R("400_best_of_2_unsupported", 400, "'best_of' > 1 is not supported",
          comp(best_of=2), param="best_of"),
        R("400_chat_tools_unsupported", 400, "tools and function calling are not supported",
          chat(tools=[TOOL]), CH, param="tools"),
        R("400_chat_tool_choice_auto_unsupported", 400, "function calling",
          chat(tool_choice="auto"), CH, param="tool_choice"),
        R("400_chat_functions_unsupported", 400, "function calling",
          chat(functions=[TOOL["function"]]), CH, param="functions"),
        R("400_logit_bias_non_empty_unsupported", 400, "'logit_bias' is not supported",
          comp(logit_bias={"100": 5}), param="logit_bias"),
        R("400_chat_logit_bias_non_empty_unsupported", 400, "'logit_bias' is not supported",
          chat(logit_bias={"100": -100}), CH, param="logit_bias"),
        R("400_presence_penalty_non_zero_unsupported", 400,
          "'presence_penalty' is not supported", comp(presence_penalty=0.5),
          param="presence_penalty"),
        R("400_frequency_penalty_non_zero_unsupported", 400,
          "'frequency_penalty' is not supported", chat(frequency_penalty=1), CH,
          param="frequency_penalty"),
        R("400_repetition_penalty_non_one_unsupported", 400,
          "'repetition_penalty' is not supported", comp(repetition_penalty=1.2),
          param="repetition_penalty"),
        R("400_suffix_unsupported", 400, "'suffix' is not supported", comp(suffix="x"),
          param="suffix"),
        R("400_chat_response_format_json_object_unsupported", 400, "'response_format'",
          chat(response_format={"type": "json_object"}), CH, param="response_format"),
        R("400_chat_response_format_json_schema_unsupported", 400, "'response_format'",
          chat(response_format={"type": "json_schema", "json_schema": {"name": "x"}}), CH,
          param="response_format"),
        # ---- the context (128 positions)
        R("400_prompt_fills_the_context", 400, "maximum context length is %d" % CTX,
          ids_too_long, param="prompt", code="context_length_exceeded"),
        R("400_prompt_plus_max_tokens_beyond_context", 400,
          "maximum context length is %d" % CTX,
          comp(prompt=long_ids(CTX - MAX_TOKENS + 1), max_tokens=MAX_TOKENS),
          param="max_tokens", code="context_length_exceeded"),
        R("400_text_prompt_beyond_context", 400, "maximum context length is %d" % CTX,
          comp(prompt="Hello " * 300), param="prompt", code="context_length_exceeded"),
        R("400_chat_messages_beyond_context", 400, "maximum context length is %d" % CTX,
          chat(messages=[{"role": "user", "content": "Hello " * 300}]), CH,
          param="messages", code="context_length_exceeded"),
        R("400_chat_messages_plus_max_tokens_beyond_context", 400,
          "maximum context length is %d" % CTX,
          chat(messages=[{"role": "user", "content": "Hello " * 100}],
               max_tokens=MAX_TOKENS), CH, code="context_length_exceeded"),
        # ---- prompts (an id outside the vocabulary is the prompt's fault: param 'prompt',
        # as for every other refused prompt)
        R("400_prompt_token_id_out_of_vocabulary", 400, "out of range", comp(prompt=[VOCAB]),
          param="prompt"),
        R("400_prompt_token_id_far_out_of_vocabulary", 400, "out of range",
          comp(prompt=[1, 2, 10 * VOCAB]), param="prompt"),
        R("400_prompt_token_id_negative", 400, "non-negative", comp(prompt=[1, -1]),
          param="prompt"),
        R("400_prompt_token_id_above_int32", 400, "non-negative", comp(prompt=[2 ** 31]),
          param="prompt"),
        R("400_prompt_empty_list", 400, "'prompt'", comp(prompt=[]), param="prompt"),
        R("400_prompt_empty_nested_list", 400, "empty list of token ids", comp(prompt=[[]]),
          param="prompt"),
        R("400_prompt_empty_string", 400, "the prompt is empty", comp(prompt=""),
          param="prompt"),
        R("400_several_text_prompts", 400, "several prompts is not supported",
          comp(prompt=["Hello", "World"]), param="prompt"),
        R("400_several_token_id_prompts", 400, "several prompts is not supported",
          comp(prompt=[[1, 2], [3, 4]]), param="prompt"),
        R("400_text_prompt_then_token_id", 400, "several prompts is not supported",
          comp(prompt=["Hello", 1]), param="prompt"),
        # ---- stop
        R("400_stop_empty_string", 400, "'stop' must not be an empty string", comp(stop=""),
          param="stop"),
        R("400_stop_list_with_empty_string", 400, "non-empty strings", comp(stop=["a", ""]),
          param="stop"),
        R("400_stop_nine_strings", 400, "at most 8", comp(stop=STOP9), param="stop"),
        R("400_chat_stop_nine_strings", 400, "at most 8", chat(stop=STOP9), CH, param="stop"),
        # ---- logprobs / echo / stream_options combinations
        R("400_chat_top_logprobs_without_logprobs", 400, "needs 'logprobs'",
          chat(top_logprobs=2), CH, param="top_logprobs"),
        R("400_chat_top_logprobs_with_logprobs_false", 400, "needs 'logprobs'",
          chat(logprobs=False, top_logprobs=2), CH, param="top_logprobs"),
        R("400_echo_with_logprobs", 400, "'echo' together with 'logprobs'",
          comp(echo=True, logprobs=1), param="echo"),
        R("400_echo_with_logprobs_0", 400, "'echo' together with 'logprobs'",
          comp(echo=True, logprobs=0), param="echo"),
        R("400_stream_options_without_stream", 400, "needs 'stream': true",
          comp(stream_options={"include_usage": True}), param="stream_options"),
        R("400_stream_options_with_stream_false", 400, "needs 'stream': true",
          chat(stream=False, stream_options={"include_usage": True}), CH,
          param="stream_options"),
        R("400_stream_options_unknown_field", 400, "unknown field 'foo'",
          comp(stream=True, stream_options={"include_usage": True, "foo": 1}),
          param="stream_options"),
        # ---- adapters
        R("400_adapters_empty_list", 400, "1 to 8", comp(adapters=[]), param="adapters"),
        R("400_adapters_list_too_long", 400, "1 to 8", comp(adapters=ADAPTERS9),
          param="adapters"),
        R("400_chat_adapters_list_too_long", 400, "1 to 8", chat(adapters=ADAPTERS9), CH,
          param="adapters"),
        R("400_adapters_duplicated_name", 400, "adapter 'tq_all' is listed twice",
          comp(adapters=[{"name": "tq_all", "weight": 0.5}, {"name": "tq_all", "weight": 1}]),
          param="adapters"),
        R("400_adapters_weight_above_100", 400, "adapters[0].weight must be a number",
          comp(adapters=[{"name": "tq_all", "weight": 101}]), param="adapters"),
        R("400_adapters_weight_below_minus_100", 400, "adapters[1].weight must be a number",
          comp(adapters=[{"name": "tq_all", "weight": 1}, {"name": "tq_mlp",
                                                           "weight": -100.5}]),
          param="adapters"),
        R("400_adapters_name_empty", 400, "adapters[0].name must be a non-empty string",
          comp(adapters=[{"name": "", "weight": 1}]), param="adapters"),
        R("400_adapters_name_missing", 400, "adapters[0].name must be a non-empty string",
          comp(adapters=[{"weight": 1}]), param="adapters"),
        R("400_adapters_name_too_long", 400, "longer than 64 characters",
          comp(adapters=[{"name": "a" * 65, "weight": 1}]), param="adapters"),
        R("400_adapters_unknown_field", 400, "adapters[0]: unknown field 'scale'",
          comp(adapters=[{"name": "tq_all", "weight": 1, "scale": 2}]), param="adapters"),
        R("400_adapters_with_model_naming_an_adapter", 400, "with 'adapters', 'model' must "
          "be the base model", comp(model="tq_all", adapters=[{"name": "tq_mlp",
                                                               "weight": 1}]),
          param="model"),
        # ---- chat messages
        R("400_chat_messages_empty", 400, "'messages' must be a non-empty list",
          chat(messages=[]), CH, param="messages"),
        R("400_chat_role_tool", 400, "role 'tool' is not supported",
          chat(messages=[MSGS[0], {"role": "tool", "content": "42"}]), CH,
          param="messages"),
        R("400_chat_role_function", 400, "role 'function' is not supported",
          chat(messages=[{"role": "function", "content": "42"}]), CH, param="messages"),
        R("400_chat_role_unknown", 400, "role 'bot' is not supported",
          chat(messages=[{"role": "bot", "content": "Hello"}]), CH, param="messages"),
        R("400_chat_message_unknown_field", 400, "unsupported field 'foo'",
          chat(messages=[{"role": "user", "content": "Hello", "foo": 1}]), CH,
          param="messages"),
        R("400_chat_message_tool_calls", 400, "unsupported field 'tool_calls'",
          chat(messages=[MSGS[0], {"role": "assistant", "content": None,
                                   "tool_calls": [{"id": "c", "type": "function"}]}]), CH,
          param="messages"),
        R("400_chat_message_tool_call_id", 400, "messages[1]: unsupported field "
          "'tool_call_id'", chat(messages=[MSGS[0], {"role": "user", "content": "x",
                                                     "tool_call_id": "c"}]), CH,
          param="messages"),
        # ---- 404
        R("404_unknown_route", 404, "no route GET /v1/nope", None, "/v1/nope", "GET",
          code="not_found"),
        R("404_root", 404, "no route", None, "/", "GET"),
        R("404_route_with_trailing_slash", 404, "no route", NORMAL, C + "/"),
        R("404_route_typo", 404, "no route", NORMAL, "/v1/completion"),
        R("404_model_detail_of_unknown_model", 404, "The model 'nope' does not exist", None,
          "/v1/models/nope", "GET", param="model", code="model_not_found"),
        R("404_unknown_model", 404, "The model 'nope' does not exist", comp(model="nope"),
          param="model", code="model_not_found"),
        R("404_chat_unknown_model", 404, "The model 'nope' does not exist",
          chat(model="nope"), CH, param="model", code="model_not_found"),
        R("404_empty_model_name", 404, "does not exist", comp(model=""), param="model",
          code="model_not_found"),
        R("404_model_name_with_path", 404, "does not exist",
          comp(model="../" + MODEL), param="model", code="model_not_found"),
        R("404_model_name_too_long", 404, "does not exist", comp(model="m" * 200),
          param="model", code="model_not_found"),
        R("404_unknown_adapter_in_mix", 404, "The model 'nope' does not exist",
          comp(adapters=[{"name": "tq_all", "weight": 0.5}, {"name": "nope", "weight": 0.5}]),
          param="adapters", code="model_not_found"),
        # ---- 405 (and the Allow header)
        R("405_get_completions", 405, "not allowed", None, C, "GET",
          code="method_not_allowed", extra=header_is("Allow", "POST")),
        R("405_get_chat_completions", 405, "not allowed", None, CH, "GET",
          extra=header_is("Allow", "POST")),
        R("405_put_completions", 405, "not allowed", NORMAL, C, "PUT",
          extra=header_is("Allow", "POST")),
        R("405_delete_chat_completions", 405, "not allowed", None, CH, "DELETE",
          extra=header_is("Allow", "POST")),
        R("405_post_models", 405, "not allowed", {}, "/v1/models",
          extra=header_is("Allow", "GET")),
        R("405_post_health", 405, "not allowed", {}, "/health",
          extra=header_is("Allow", "GET")),
        R("405_post_metrics", 405, "not allowed", {}, "/metrics",
          extra=header_is("Allow", "GET")),
        R("405_post_model_detail", 405, "not allowed", {}, "/v1/models/" + MODEL,
          extra=header_is("Allow", "GET")),
        # ---- 415
        R("415_no_content_type", 415, "Content-Type must be application/json", NORMAL,
          ct=None, code="unsupported_media_type"),
        R("415_text_plain", 415, "Content-Type must be application/json", NORMAL,
          ct="text/plain", code="unsupported_media_type"),
        R("415_form_urlencoded", 415, "application/x-www-form-urlencoded",
          "prompt=Hello&max_tokens=2", ct="application/x-www-form-urlencoded",
          code="unsupported_media_type"),
        R("415_multipart", 415, "Content-Type must be application/json", NORMAL,
          ct="multipart/form-data; boundary=x", code="unsupported_media_type"),
        R("415_json_prefix_only", 415, "Content-Type must be application/json", NORMAL,
          ct="application/jsonx", code="unsupported_media_type"),
        R("415_chat_text_plain", 415, "Content-Type must be application/json", chat(), CH,
          ct="text/plain", code="unsupported_media_type"),
    ]


# Requests at the edge of each limit, or at the neutral value of an unsupported option:
# accepted. (name, path, body, stream)
ACCEPTED = [
    ("max_tokens_at_server_max_tokens", C, comp(max_tokens=MAX_TOKENS), False),
    ("max_tokens_integral_real", C, comp(max_tokens=2.0), False),
    ("chat_max_completion_tokens_at_server_max_tokens", CH,
     chat(max_tokens=DEL, max_completion_tokens=MAX_TOKENS), False),
    ("prompt_plus_max_tokens_exactly_the_context", C,
     comp(prompt=long_ids(CTX - MAX_TOKENS), max_tokens=MAX_TOKENS), False),
    ("prompt_of_context_minus_1_without_max_tokens", C,
     comp(prompt=long_ids(CTX - 1), max_tokens=DEL), False),
    ("prompt_token_id_last_of_vocabulary", C, comp(prompt=[VOCAB - 1]), False),
    ("temperature_0_and_top_k_minus_1", C, comp(temperature=0, top_k=-1), False),
    ("temperature_2_top_p_1", C, comp(temperature=2, top_p=1, seed=7), False),
    ("top_p_small", C, comp(top_p=0.01, seed=-3), False),
    ("logprobs_20", C, comp(logprobs=20), False),
    ("chat_logprobs_top_logprobs_20", CH, chat(logprobs=True, top_logprobs=20), False),
    ("chat_top_logprobs_0_without_logprobs", CH, chat(top_logprobs=0), False),
    ("eight_stop_strings", C, comp(stop=STOP9[:8]), False),
    ("null_fields_mean_default", C, comp(temperature=None, top_p=None, top_k=None, seed=None,
                                         stop=None, stream=None, logprobs=None,
                                         adapters=None, model=None), False),
    ("neutral_unsupported_options", C, comp(n=1, best_of=1, presence_penalty=0,
                                            frequency_penalty=0, repetition_penalty=1,
                                            logit_bias={}, suffix="", user="u"), False),
    ("chat_neutral_unsupported_options", CH,
     chat(n=1, tools=[], tool_choice="none", response_format={"type": "text"},
          logit_bias=None), False),
    ("chat_developer_role_name_and_text_parts", CH,
     chat(messages=[{"role": "developer", "content": "Be brief."},
                    {"role": "user", "name": "u", "content": [
                        {"type": "text", "text": "Hel"}, {"type": "text", "text": "lo"}]}]),
     False),
    ("model_names_the_base", C, comp(model=MODEL), False),
    ("model_names_an_adapter", C, comp(model="tq_mlp"), False),
    ("adapters_mix_of_three", C, comp(adapters=[{"name": "tq_all", "weight": 0.5},
                                                {"name": "tq_attn", "weight": -1},
                                                {"name": "tq_mlp", "weight": 100}]), False),
    ("adapters_weight_null_means_1", C, comp(adapters=[{"name": "tq_all", "weight": None}]),
     False),
    # 'weight' left out must mean 1 as 'weight': null does (parse_adapters starts w at 1)
    ("adapters_weight_omitted_means_1", C, comp(adapters=[{"name": "tq_all"}]), False),
    ("stream_options_include_usage_null", C,
     comp(stream=True, stream_options={"include_usage": None}), True),
    # OpenAI's stream_options members are optional: {} is "no options"
    ("stream_options_empty_object", C, comp(stream=True, stream_options={}), True),
    ("chat_stream_options_continuous_usage_stats_only", CH,
     chat(stream=True, stream_options={"continuous_usage_stats": True}), True),
]


# --------------------------------------------------------------------------- 422
def check_422_first(t):
    st, hdrs, data = t.send("POST", C, json.dumps(comp(model="ad_all")).encode(), JSON_CT)
    e = check_error(st, hdrs, data, 422, "ad_all", param="model", code="adapter_invalid")
    check("base expects" in e["message"] and "[" in e["message"],
          "the message does not give the shape mismatch: %r" % e["message"])
    t.normal()


def check_422_again_without_load(t):
    before = t.d.metrics()
    st, hdrs, data = t.send("POST", C, json.dumps(comp(model="ad_all")).encode(), JSON_CT)
    check_error(st, hdrs, data, 422, "ad_all", param="model", code="adapter_invalid")
    st, hdrs, data = t.send("POST", CH, json.dumps(chat(model="ad_all")).encode(), JSON_CT)
    check_error(st, hdrs, data, 422, "base expects", param="model", code="adapter_invalid")
    after = t.d.metrics()
    for k in ("lorad_adapter_loads_total", "lorad_adapter_load_failures_total"):
        check(k in before and after.get(k) == before[k],
              "%s went from %r to %r: the refused adapter was loaded again"
              % (k, before.get(k), after.get(k)))
    st, _, data = t.send("GET", "/v1/models", None, {})
    ad = [m for m in json.loads(data)["data"] if m["id"] == "ad_all"]
    check(ad and ad[0].get("state") == "failed" and "base expects" in ad[0].get("error", ""),
          "/v1/models does not list ad_all as failed with its reason: %r" % ad)
    t.normal()


def check_422_in_mix(t):
    """A mix with one adapter for another base: 422 naming it, param 'adapters' (the field
    that named it, as the mix's 404 says), and the valid one is released again."""
    body = comp(adapters=[{"name": "tq_all", "weight": 0.5}, {"name": "ad_qv", "weight": 0.5}])
    st, hdrs, data = t.send("POST", C, json.dumps(body).encode(), JSON_CT)
    check_error(st, hdrs, data, 422, "ad_qv", param="adapters", code="adapter_invalid")
    t.normal()


# --------------------------------------------------------------------------- 401
def key_rows():
    R = Row
    unauth = dict(code="invalid_api_key", extra=header_is("WWW-Authenticate", "Bearer"))
    return [
        R("401_no_authorization_header", 401, "API key", NORMAL, **unauth),
        R("401_wrong_key", 401, "API key", NORMAL,
          headers={"Authorization": "Bearer sk-wrong"}, **unauth),
        R("401_key_with_one_byte_changed", 401, "API key", NORMAL,
          headers={"Authorization": "Bearer " + API_KEY[:-1] + "X"}, **unauth),
        R("401_key_prefix", 401, "API key", NORMAL,
          headers={"Authorization": "Bearer " + API_KEY[:-1]}, **unauth),
        R("401_key_with_suffix", 401, "API key", NORMAL,
          headers={"Authorization": "Bearer " + API_KEY + "x"}, **unauth),
        R("401_empty_bearer", 401, "API key", NORMAL,
          headers={"Authorization": "Bearer "}, **unauth),
        R("401_wrong_scheme_basic", 401, "API key", NORMAL,
          headers={"Authorization": "Basic " + API_KEY}, **unauth),
        R("401_key_without_scheme", 401, "API key", NORMAL,
          headers={"Authorization": API_KEY}, **unauth),
        R("401_key_in_other_header", 401, "API key", NORMAL,
          headers={"X-Api-Key": API_KEY}, **unauth),
        R("401_chat_without_key", 401, "API key", chat(), CH, **unauth),
        R("401_models_without_key", 401, "API key", None, "/v1/models", "GET", **unauth),
        R("401_metrics_without_key", 401, "API key", None, "/metrics", "GET", **unauth),
        R("401_before_content_type_check", 401, "API key", NORMAL, ct="text/plain",
          **unauth),
    ]


def check_key_opens(t, path):
    st, _, data = t.d.request("GET", path, headers={"Authorization": "Bearer " + API_KEY},
                              timeout=SOCK_TIMEOUT)
    check(st == 200, "GET %s with the key answered %d: %r" % (path, st, data[:200]))
    t.normal()


def check_health_without_key(t):
    st, _, data = t.d.request("GET", "/health", timeout=SOCK_TIMEOUT)
    check(st == 200, "GET /health without a key answered %d: %r" % (st, data[:200]))
    t.normal()


# --------------------------------------------------------------------------- 429, 503
HOLD = {"prompt": long_ids(6000), "max_tokens": 2000, "ignore_eos": True, "stream": True}


def hold(port):
    """A long streaming request on its own connection (closing the socket cancels it)."""
    body = json.dumps(HOLD).encode()
    s = socket.create_connection(("127.0.0.1", port), timeout=SOCK_TIMEOUT)
    s.sendall(post_head(C, [("Content-Length", str(len(body)))]) + body)
    return s


def wait_held(d, key, value, socks):
    """Waits until metric key is value; on a timeout the held requests' answers (a refusal
    would explain it) are in the message."""
    try:
        d.wait_metric(key, lambda v: v == value, timeout=SOCK_TIMEOUT)
    except Fail as e:
        seen = []
        for s in socks:
            s.setblocking(False)
            try:
                seen.append(s.recv(600))
            except OSError:
                seen.append(b"")
        raise Fail("%s; the held requests answered %r" % (e, seen))


def wait_idle(d):
    d.wait_metric("lorad_running_sequences", lambda v: v == 0, timeout=SOCK_TIMEOUT)
    d.wait_metric("lorad_queue_depth", lambda v: v == 0, timeout=SOCK_TIMEOUT)


def check_429(t):
    d = t.d
    a = b = None
    try:
        a = hold(d.port)
        wait_held(d, "lorad_running_sequences", 1, [a])
        b = hold(d.port)
        wait_held(d, "lorad_queue_depth", 1, [a, b])
        for _ in range(2):
            st, hdrs, data = t.send("POST", C, json.dumps(t.normal_body).encode(), JSON_CT)
            check_error(st, hdrs, data, 429, "busy", code="server_busy")
            retry_after(hdrs, None)
        m = d.metrics()
        check(m.get("lorad_running_sequences") == 1 and m.get("lorad_queue_depth") == 1,
              "the held requests were no longer running / waiting when the 429 came")
    finally:
        for s in (a, b):
            if s:
                s.close()
    wait_idle(d)
    t.normal()


def check_503(suite, t):
    """SIGTERM while a request runs: a request on an open keep-alive connection gets 503 +
    Retry-After, /metrics is still served, a new connection is refused or gets 503, and the
    daemon exits 0 once the held request goes."""
    d = t.d
    k = d.conn(SOCK_TIMEOUT)
    a = None
    state = {}
    try:
        k.request("GET", "/health")
        r = k.getresponse()
        r.read()
        check(r.status == 200, "/health answered %d" % r.status)
        a = hold(d.port)
        wait_held(d, "lorad_running_sequences", 1, [a])
        d.proc.send_signal(signal.SIGTERM)
        deadline = time.time() + SOCK_TIMEOUT
        while not any("draining" in line for line in d.log()):
            check(time.time() < deadline, "no 'draining' log line after SIGTERM")
            time.sleep(0.05)
        time.sleep(0.5)   # the flag is set right after the log line
        state["k"] = k
    except Exception as e:
        suite.report("503_setup_sigterm_while_a_request_runs", "%s: %s" % (type(e).__name__, e))
        if a:
            a.close()
        k.close()
        return

    def on_keepalive():
        k.request("POST", C, body=json.dumps(t.normal_body), headers=JSON_CT)
        r = k.getresponse()
        data = r.read()
        hdrs = {h.lower(): v for h, v in r.getheaders()}
        check_error(r.status, hdrs, data, 503, "shutting down", code="shutting_down")
        retry_after(hdrs, None)

    def metrics_while_draining():
        k.request("GET", "/metrics")
        r = k.getresponse()
        data = r.read()
        check(r.status == 200 and b"lorad_running_sequences" in data,
              "/metrics while draining answered %d" % r.status)

    def new_connection():
        try:
            st, hdrs, data = d.request("POST", C, json.dumps(t.normal_body).encode(), JSON_CT,
                                       timeout=SOCK_TIMEOUT)
        except ConnectionRefusedError:
            return
        check_error(st, hdrs, data, 503, "shutting down", code="shutting_down")

    # /metrics first: the 503 is answered from the headers, with Connection: close
    suite.run("503_drain_still_serves_metrics_on_keepalive_connection",
              metrics_while_draining)
    suite.run("503_request_on_keepalive_connection_while_draining", on_keepalive)
    suite.run("503_new_connection_while_draining_refused_or_503", new_connection)
    k.close()
    a.close()

    def exits_0():
        rc = d.stop(timeout=SOCK_TIMEOUT)
        wait_log_stable(d)
        check(rc == 0, "exit status %d after the drain; log tail:\n%s"
              % (rc, "\n".join(d.log()[-15:])))
        check(any("stopped" in line for line in d.log()), "no 'stopped' log line")
    suite.run("slow_daemon_exits_0_after_drain", exits_0)
    suite.run("slow_daemon_log_has_no_sanitizer_report", check_sanitizer_clean, d)


def slow_rows():
    R = Row
    return [
        R("400_text_prompt_without_tokenizer", 400, "no tokenizer.json", comp(),
          param="prompt"),
        R("400_stop_without_tokenizer", 400, "tokenizer.json",
          comp(prompt=[1, 2, 3], stop=["x"]), param="stop"),
        R("400_chat_without_tokenizer", 400, "tokenizer.json", chat(), CH,
          param="messages"),
        R("400_token_id_out_of_slow_vocabulary", 400, "out of range",
          comp(prompt=[1, 512]), param="prompt"),
        # 35 KB: past the main daemon's --max-body-kb; parsed before the tokenizer is needed
        R("400_chat_too_many_messages", 400, "at most 1024 messages",
          chat(messages=[{"role": "user", "content": "a"}] * 1025), CH, param="messages"),
        R("404_adapter_without_adapter_dir", 404, "does not exist",
          comp(prompt=[1, 2], model="tq_all"), param="model", code="model_not_found"),
    ]


# --------------------------------------------------------------------------- main
def start(suite, name, build, args, normal, headers=None):
    try:
        return Target(name, Daemon(build, args), normal, headers)
    except Fail as e:
        suite.report("%s_daemon_starts" % name, str(e))
        return None


def main(argv):
    build = argv[1] if len(argv) > 1 else "build"
    t0 = time.time()
    suite = Suite()
    try:
        fx, _ = ensure_fixtures(build)
        slow = slow_model(build)
    except Exception as e:
        suite.report("fixtures_generate", "%s: %s" % (type(e).__name__, e))
        print("%d passed, %d failed" % (suite.passed, suite.failed))
        return 1
    n_rows = 0

    # ---- main daemon: 400 404 405 413 415 422 and the accepted edges
    t = start(suite, "main", build, ["--model", os.path.join(fx, MODEL), "--adapter-dir",
                                     os.path.join(fx, "adapters"), "--max-body-kb",
                                     str(MAX_BODY_KB), "--max-tokens", str(MAX_TOKENS)],
              NORMAL)
    if t:
        suite.run("main_normal_request_works", t.normal)
        rows = type_rows() + value_rows()
        names = [r.name for r in rows]
        suite.run("row_names_are_unique", lambda: check(
            len(set(names)) == len(names),
            "duplicates: %s" % sorted({n for n in names if names.count(n) > 1})))
        for r in rows:
            suite.run(r.name, run_row, t, r)
        n_rows += len(rows)
        suite.run("413_content_length_over_limit", check_413_declared_length, t,
                  MAX_BODY_KB * 1024 + 1)
        suite.run("413_content_length_huge", check_413_declared_length, t, 10 ** 12)
        suite.run("413_expect_100_continue_refused_without_continue",
                  check_413_declared_length, t, MAX_BODY_KB * 1024 + 1, True)
        suite.run("413_chunked_body_growing_past_limit_answered_or_cut",
                  check_chunked_past_limit, t)
        suite.run("422_adapter_for_another_base_names_it_and_the_shape", check_422_first, t)
        suite.run("422_refused_again_without_a_new_load", check_422_again_without_load, t)
        suite.run("422_adapter_for_another_base_in_a_mix", check_422_in_mix, t)
        n_rows += 7
        suite.run("ok_body_of_exactly_max_body_kb", check_body_at_limit_accepted, t)
        suite.run("ok_chunked_body_under_limit", check_chunked_under_limit_accepted, t)
        suite.run("ok_content_type_with_charset", run_ok, t, "POST", C, NORMAL,
                  {"Content-Type": "application/json; charset=utf-8"})
        for name, path, body, stream in ACCEPTED:
            suite.run("ok_" + name, run_ok, t, "POST", path, body, None, stream)
        finish_daemon(suite, t)

    # ---- key daemon: 401
    tmp = tempfile.mkdtemp(prefix="lorad-keys-")
    try:
        key_file = os.path.join(tmp, "key")
        with open(key_file, "w") as f:
            f.write("  %s  \nsecond line is ignored\n" % API_KEY)
        t = start(suite, "key", build, ["--model", os.path.join(fx, MODEL), "--api-key-file",
                                        key_file], NORMAL,
                  {"Authorization": "Bearer " + API_KEY})
        if t:
            suite.run("key_normal_request_with_key_works", t.normal)
            rows = key_rows()
            noauth = Target(t.name, t.d, NORMAL)   # rows carry their own (bad) headers
            for r in rows:
                suite.run(r.name, run_key_row, noauth, t, r)
            n_rows += len(rows)
            suite.run("ok_health_without_key", check_health_without_key, t)
            suite.run("ok_models_with_key", check_key_opens, t, "/v1/models")
            suite.run("ok_metrics_with_key", check_key_opens, t, "/metrics")
            suite.run("ok_bearer_scheme_case_insensitive", run_ok, t, "POST", C, NORMAL,
                      {"Authorization": "bearer " + API_KEY})
            finish_daemon(suite, t)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    # ---- slow daemon: 400 without tokenizer, 429, 503
    t = start(suite, "slow", build, ["--model", slow, "--max-seqs", "1", "--max-queue", "1",
                                     "--max-tokens", "2000", "--drain-seconds", "20"],
              {"prompt": [1, 2, 3], "max_tokens": 2})
    if t:
        suite.run("slow_normal_request_works", t.normal)
        rows = slow_rows()
        for r in rows:
            suite.run(r.name, run_row, t, r)
        suite.run("429_running_plus_waiting_fill_max_seqs_plus_max_queue", check_429, t)
        n_rows += len(rows) + 1
        check_503(suite, t)
        n_rows += 1

    print("rows: %d bad requests; time: %.1f s" % (n_rows, time.time() - t0))
    print("%d passed, %d failed" % (suite.passed, suite.failed))
    return 1 if suite.failed else 0


def run_key_row(noauth, t, r):
    """A 401 row on the key daemon (sent with only the row's headers), then the normal
    request with the key."""
    st, hdrs, data = noauth.send(r.method, r.path, r.body, r.headers)
    e = check_error(st, hdrs, data, r.status, r.msg, r.param, r.code)
    if r.extra:
        r.extra(hdrs, e)
    t.normal()


if __name__ == "__main__":
    sys.exit(main(sys.argv))
