#!/usr/bin/env python3
"""Writes tests/fixtures/chat/semantics.json: small templates exercising the Python side of Jinja
(str() of values, integer division, code-point slicing, scoping, whitespace control, filters,
tests, methods) rendered by Python Jinja2 configured as transformers configures it. These are
behaviours where @huggingface/jinja (JavaScript) differs from Python or that no real template
reaches; tests/test_chat.c checks lorad against them. Needs python3-jinja2; run from the
repository root: python3 tools/chat-goldens/semantics.py"""
import json
import os

from crosscheck import ROOT, environment

VARS = {
    "messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "hi"},
                 {"role": "assistant", "content": "yo"}, {"role": "user", "content": "bye"}],
    "add_generation_prompt": True, "bos_token": "<s>", "eos_token": "</s>", "tools": None,
    "documents": None,
}

TEMPLATES = [
    "{% generation %}g{{ 1 }}{% endgeneration %} {{ strftime_now('%Y') | length }}",
    "{{ true }} {{ none }} {{ [1, 'a', none] }} {{ {'a': 1, 'b': [true]} }} {{ (1, 'x') }} {{"
    ' (1,) }}',
    '{{ 1.0 }} {{ 1e20 }} {{ 1e16 }} {{ 1e15 }} {{ 0.1 + 0.2 }} {{ 1e-5 }} {{ 0.0001 }} {{ -0'
    '.0 }}',
    '{{ 7 // 2 }} {{ -7 // 2 }} {{ -7 % 3 }} {{ 7 % -3 }} {{ 7 / 2 }} {{ 2 ** 10 }} {{ 2 ** -'
    '1 }}',
    "{{ -7.5 // 2 }} {{ 7.5 % 2 }} {{ 3 * 'ab' }} {{ [1] * 3 }} {{ 1 + true }} {{ 10 - 2.5 }}",
    "{{ 'héllo'[1:3] }}|{{ 'abc'[::-1] }}|{{ 'héllo'[-1] }}|{{ [1,2,3,4,5][::2] }}|{{ [1,2,3]"
    '[5:] }}',
    "{{ 'Hello' | length }} {{ '👋🏽é' | length }} {{ messages | length }} {{ {'a': 1} | length"
    ' }}',
    "{% set x = 1 %}{% for i in [1, 2] %}{{ x }}{% if i == 1 %}{% set x = 'a' %}{% endif %}{{"
    ' x }}|{% endfor %}{{ x }}',
    '{{ {\'a\': [1, {\'b\': 2}], \'c\': \'é"\\n\'} | tojson }}|{{ {\'a\': [1, {}], \'b\': []}'
    ' | tojson(indent=2) }}',
    "{{ 'é\\u0001' | tojson }} {{ [1.0, 2.5, none, true] | tojson }} {{ {'b': 1, 'a': 2} | to"
    'json(sort_keys=true) }}',
    "{{ '  x  y\\n z ' .split() }} {{ 'a,b,,c'.split(',') }} {{ 'a b c'.split(' ', 1) }}",
    "{{ namespace(a=1) }} {{ dict(x=1, y='z') }}",
    "{% for k, v in {'a': 1, 'b': 2}.items() %}{{ k }}={{ v }};{% endfor %}{% for k in {'a': "
    "1, 'b': 2} %}{{ k }}{% endfor %}{% for c in 'hé' %}[{{ c }}]{% endfor %}",
    "{{ [3, 1, 2] | select('odd') | list }} {{ [3, 1, 2] | reject('odd') | list }}",
    "{{ messages | selectattr('role', 'equalto', 'user') | map(attribute='content') | join('|"
    "') }} {{ messages | rejectattr('role', 'eq', 'user') | list | length }}",
    "{{ 'hello wORLD-x' | title }} {{ 'hELLO wORLD-x'.title() }} {{ 'aBC dEF' | capitalize }}"
    " {{ 'ß straße'.upper() }} {{ 'ÀÉ' | lower }}",
    "{{ x | default('d') }} {{ '' | default('d', true) }} {{ '' | default('d') }} {{ x | d }}",
    "{% for i in range(7) if i is odd %}{{ loop.index }}/{{ loop.length }}:{{ i }}{{ ',' if n"
    'ot loop.last }}{% endfor %}',
    '{% for i in [] %}x{% else %}empty{% endfor %} {% for i in [1, 2, 3] %}{{ loop.revindex }'
    "}{{ loop.first }}{{ loop.previtem is defined }}{{ loop.nextitem | default('-') }} {% end"
    'for %}',
    '{% for i in range(10) %}{% if i == 7 %}{% break %}{% endif %}{% if i is even %}{% contin'
    'ue %}{% endif %}{{ i }}{% endfor %}',
    '{% set x %}a{{ 1 + 1 }}b{% endset %}[{{ x }}]',
    "  {% if true %}\n    x\n  {% endif %}\n  y  {%- if true %}  z  {% endif -%}  \n w {{- ' "
    "v ' -}} u",
    'a\n  {#- c -#}  \n b {# c #}\n c\n    {% for i in [1] %}\n  {{ i }}\n    {% endfor %}\n{'
    '%+ if 1 %}p{% endif +%}\nq',
    "{{ 1 if none else 2 }} {{ 'a' if 0 }} {{ 'a' in 'cat' }} {{ 'a' not in ['b'] }} {{ 1 < 2"
    ' < 3 }} {{ 1 < 2 > 3 }} {{ (1, 2) == (1, 2) }} {{ [1] == [1.0] }}',
    '{{ 10 | string + \'1\' }} {{ "it\'s" }} {{ ["it\'s", \'a"b\', \'x\\ny\'] }} {{ \'a\' ~ 1'
    ' ~ none ~ x }}',
    "{% raw %}{{ x }}{% if %}{% endraw %} {{ 3.7 | int }} {{ '42' | int + 1 }} {{ 'x' | int(7"
    ") }} {{ '1.5' | float }} {{ -3 | abs }} {{ 'ab' | reverse }} {{ [1, 2] | reverse | list "
    '}}',
    '{{ messages[-1].content }} {{ messages[9] is defined }} {{ foo is not defined }} {{ mess'
    "ages[0]['role'] }} {{ messages.0.role }} {{ messages[0].get('x', 'dflt') }} {{ messages["
    "0].get('role') }} {{ messages[0].keys() | list }}",
    "{{ '  a b  '.strip() }}|{{ 'xxaxx'.strip('x') }}|{{ '  a '.lstrip() }}|{{ ' a  '.rstrip("
    ") }}|{{ 'abc'.startswith('ab') }}{{ 'abc'.endswith(('x', 'c')) }}|{{ 'aXbXc'.replace('X'"
    ", '-') }}|{{ 'aaa'.replace('a', 'b', 2) }}|{{ '-'.join(['a', 'b']) }}|{{ 'hello'.find('l"
    "') }}{{ 'hello'.count('l') }}|{{ 'abc' | replace('b', 'B') }}|{{ '  t  ' | trim }}|{{ 'x"
    "tx' | trim('x') }}",
    "{{ 6 is divisibleby 3 }} {{ 3 is odd }} {{ 'a' is string }} {{ 1 is number }} {{ true is"
    ' number }} {{ 1.5 is float }} {{ 1 is integer }} {{ true is boolean }} {{ none is none }'
    "} {{ {} is mapping }} {{ 'x' is iterable }} {{ 1 is iterable }} {{ x is iterable }} {{ '"
    "abc' is lower }} {{ 'A' is upper }} {{ 2 is in [1, 2] }} {{ 2 is eq 2 }} {{ 3 is gt 2 }}"
    ' {{ none is sameas none }} {{ range is callable }}',
    "{{ [1, 2] | first }} {{ 'abc' | last }} {{ [] | first is defined }} {{ {'a': 1} | items "
    "| list }} {{ 'ab' | list }} {{ [1, 'a'] | join(', ') }} {{ messages | map(attribute='rol"
    "e') | join }} {{ ['a', 'b'] | map('upper') | list }} {{ tools is none }} {{ documents }}"
    ' {{ bos_token }}{{ eos_token }}',
    "{% set ns = namespace(n=0, s='') %}{% for m in messages %}{% set ns.n = ns.n + 1 %}{% se"
    't ns.s = ns.s ~ m.role[0] %}{% endfor %}{{ ns.n }} {{ ns.s }} {{ ns.missing is defined }'
    '}',
    "{{ 'a' 'b' }} {{ 1_000 }} {{ 0x10 if false else 'n' }}",
    '{{ range(3) | list }} {{ range(1, 10, 3) | list }} {{ range(5, 0, -2) | list }} {{ range'
    '(0) | list }}',
    "{{ [1, 2] + [3] }} {{ 'ab' < 'b' }} {{ [1, 2] < [1, 3] }} {{ none == none }} {{ x == y }"
    '} {{ 1 == true }}',
]


def main():
    env = environment()
    out = []
    for t in TEMPLATES:
        try:
            out.append({"template": t, "expected": env.from_string(t).render(**VARS)})
        except Exception as e:  # noqa: BLE001 - a case that errors is a bug in this list
            raise SystemExit(f"{t!r}: {type(e).__name__}: {e}")
    with open(os.path.join(ROOT, "tests/fixtures/chat/semantics.json"), "w", encoding="utf-8") as f:
        json.dump({"generator": "tools/chat-goldens/semantics.py with Python Jinja2 "
                                + __import__("jinja2").__version__,
                   "variables": VARS, "cases": out}, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(f"{len(out)} cases")


if __name__ == "__main__":
    main()
