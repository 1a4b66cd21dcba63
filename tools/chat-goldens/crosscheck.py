#!/usr/bin/env python3
"""Second reference for tests/fixtures/chat/goldens.json: renders every case with Python Jinja2
configured exactly as transformers' apply_chat_template configures it, and reports any case where
Python and @huggingface/jinja (which wrote the goldens) disagree. Needs python3-jinja2; not part
of `make test`. Run: python3 tools/chat-goldens/crosscheck.py (from the repository root)."""
import json
import os
import sys
from datetime import datetime

import jinja2
from jinja2.ext import Extension, loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


class Generation(Extension):
    """transformers' AssistantTracker, minus the tracking: {% generation %} renders its body."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.Scope(body, lineno=lineno)


def environment():
    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                          sort_keys=sort_keys)

    def strftime_now(format):
        return datetime.now().strftime(format)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[Generation, loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env


def main():
    with open(os.path.join(ROOT, "tests/fixtures/chat/goldens.json"), encoding="utf-8") as f:
        goldens = json.load(f)
    env = environment()
    compiled, tokens = {}, {}
    for name, t in goldens["templates"].items():
        if "model_dir" in t:
            with open(os.path.join(ROOT, t["model_dir"], "tokenizer_config.json"),
                      encoding="utf-8") as f:
                cfg = json.load(f)
            src = cfg["chat_template"]
        else:
            with open(os.path.join(ROOT, t["file"]), encoding="utf-8") as f:
                src = f.read()
            cfg = t["tokenizer_config"]
        compiled[name] = env.from_string(src)
        toks = {"bos_token": "", "eos_token": ""}
        for k in ("bos_token", "eos_token", "unk_token", "pad_token"):
            v = cfg.get(k)
            v = v.get("content") if isinstance(v, dict) else v
            if isinstance(v, str):
                toks[k] = v
        tokens[name] = toks
    bad = 0
    for c in goldens["cases"]:
        try:
            got = compiled[c["template"]].render(
                messages=c["messages"], tools=None, documents=None,
                add_generation_prompt=c["add_generation_prompt"], **tokens[c["template"]])
            same = got == c.get("expected")
        except jinja2.exceptions.TemplateError as e:
            got, same = "error: " + str(e), str(e) == c.get("error")
        if not same:
            bad += 1
            print(f"DIFFER {c['template']}/{c['conversation']} agp={c['add_generation_prompt']}:"
                  f"\n  python: {got!r}\n  golden: {c.get('expected', c.get('error'))!r}")
    print(f"{len(goldens['cases']) - bad} passed, {bad} failed")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
