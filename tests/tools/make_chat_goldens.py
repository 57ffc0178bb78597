#!/usr/bin/env python3
"""Render the chat-template goldens (tests/data/chat/goldens.json) with transformers.

For every model directory under tests/data/chat/ (tokenizer_config.json and/or
chat_template.jinja, the real files of that model; see tests/data/chat/README.md) and every
conversation below, this loads the directory with transformers' own loader
(PreTrainedTokenizerFast.from_pretrained, so transformers picks the template by its own
precedence) and records

    tokenizer.apply_chat_template(messages, tools=tools, tokenize=False,
                                  add_generation_prompt=agp, **kwargs)

with and without the generation prompt, or the error message when the template raises.
Rendering needs no vocabulary, so the tokenizer.json of the tiny test model stands in for the
model's own (copied into a temporary directory beside the template files).

The messages, tools and kwargs are stored as JSON text so that the C test reads exactly the
numbers written here (1 and 1.0 stay different). Run from the repository root:

    pip install transformers jinja2      # no torch needed
    python3 tests/tools/make_chat_goldens.py
"""
import json
import os
import shutil
import sys
import tempfile

import jinja2
import transformers
from transformers import PreTrainedTokenizerFast

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CHAT = os.path.join(ROOT, "tests", "data", "chat")
TINY_TOKENIZER = os.path.join(ROOT, "tests", "data", "tiny-exaone4", "tokenizer.json")

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "도시의 현재 날씨를 알려준다 (current weather of a city)",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "도시 이름, e.g. 서울"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "days": {"type": "integer", "minimum": 1, "maximum": 7, "default": 1},
            },
            "required": ["city"],
        },
    },
}
SEARCH = {
    "type": "function",
    "function": {
        "name": "search",
        "description": "Search the web for a query and return the top results.",
        "parameters": {
            "type": "object",
            "properties": {
                "query": {"type": "string"},
                "top_k": {"type": "number", "description": "how many results (float ok: 2.5)"},
                "safe": {"type": "boolean"},
            },
            "required": ["query"],
        },
    },
}


def call(name, args, cid):
    return {"id": cid, "type": "function", "function": {"name": name, "arguments": args}}


SYS = {"role": "system", "content": "You are a helpful assistant. 친절하게 답하세요."}
U1 = {"role": "user", "content": "Hello! Who are you?"}
A1 = {"role": "assistant", "content": "I am an assistant. How can I help?"}
U2 = {"role": "user", "content": "Tell me a joke about compilers."}
A2 = {"role": "assistant", "content": "Why did the compiler break up? Too many unresolved references."}
U3 = {"role": "user", "content": "One more, please."}

WEATHER_CALL = {
    "role": "assistant",
    "content": None,
    "tool_calls": [call("get_weather", {"city": "서울", "unit": "celsius", "days": 2}, "call00001")],
}
WEATHER_RESULT = {
    "role": "tool",
    "tool_call_id": "call00001",
    "name": "get_weather",
    "content": '{"temp": 21.5, "sky": "맑음 ☀️", "rain": null}',
}

# (name, messages, tools, kwargs)
CONVERSATIONS = [
    ("single_user", [U1], None, {}),
    ("system_user", [SYS, U1], None, {}),
    ("multi_turn", [U1, A1, U2], None, {}),
    ("system_multi_turn", [SYS, U1, A1, U2, A2, U3], None, {}),
    ("korean", [
        {"role": "user", "content": "안녕하세요! 오늘 서울 날씨 어때요?"},
        {"role": "assistant", "content": "안녕하세요. 오늘 서울은 맑고 기온은 21도입니다."},
        {"role": "user", "content": "고마워요. 내일은요?"},
    ], None, {}),
    ("emoji", [
        {"role": "user", "content": "I ❤️ 🦀 and 🐍! 👨‍👩‍👧‍👦 🇰🇷 🎉"},
        {"role": "assistant", "content": "🎉🎉 Nice: 🦀 > 🐍?"},
        {"role": "user", "content": "😀"},
    ], None, {}),
    ("empty_content", [{"role": "user", "content": ""}], None, {}),
    ("empty_assistant", [U1, {"role": "assistant", "content": ""}, U2], None, {}),
    ("whitespace_content", [
        {"role": "system", "content": "  padded system  \n"},
        {"role": "user", "content": "\n\n  spaced   out \t\n"},
        {"role": "assistant", "content": "  answer with spaces  \n\n"},
        {"role": "user", "content": " last "},
    ], None, {}),
    ("think_in_content_last", [
        U1,
        {"role": "assistant", "content": "<think>\nThe user greets me. I should answer.\n</think>\n\nHi, I am the assistant."},
    ], None, {}),
    ("think_in_earlier_turn", [
        SYS,
        {"role": "user", "content": "2+2는?"},
        {"role": "assistant", "content": "<think>\n2 더하기 2는 4.\n</think>\n\n4입니다."},
        {"role": "user", "content": "그럼 3+3은?"},
    ], None, {}),
    ("reasoning_content_field", [
        {"role": "user", "content": "What is the capital of Korea?"},
        {"role": "assistant", "content": "Seoul.", "reasoning_content": "Korea's capital: Seoul."},
        {"role": "user", "content": "And Japan?"},
        {"role": "assistant", "content": "Tokyo.", "reasoning_content": "Japan → Tokyo."},
    ], None, {}),
    ("thinking_alias", [
        {"role": "user", "content": "Pick a number."},
        {"role": "assistant", "content": "7", "thinking": "Seven is a fine number."},
    ], None, {}),
    ("tools_offered", [SYS, {"role": "user", "content": "서울 날씨 알려줘"}], [WEATHER, SEARCH], {}),
    ("tools_no_system", [{"role": "user", "content": "What's the weather in Busan?"}], [WEATHER], {}),
    ("tool_call_roundtrip", [
        SYS,
        {"role": "user", "content": "서울 날씨 알려줘"},
        WEATHER_CALL,
        WEATHER_RESULT,
        {"role": "assistant", "content": "서울은 맑고 21.5도예요 ☀️"},
    ], [WEATHER], {}),
    ("tool_call_pending", [
        {"role": "user", "content": "서울 날씨 알려줘"},
        WEATHER_CALL,
        WEATHER_RESULT,
    ], [WEATHER], {}),
    ("parallel_tool_calls", [
        {"role": "user", "content": "Weather in Seoul and news about \"LG\"?"},
        {"role": "assistant", "content": None, "tool_calls": [
            call("get_weather", {"city": "Seoul"}, "call00002"),
            call("search", {"query": "LG \"AI\" news", "top_k": 3.0, "safe": True}, "call00003"),
        ]},
        {"role": "tool", "tool_call_id": "call00002", "name": "get_weather", "content": "Sunny, 20°C"},
        {"role": "tool", "tool_call_id": "call00003", "name": "search",
         "content": '[{"title": "EXAONE 4.0", "url": "https://example.com/a?b=1&c=2"}]'},
    ], [WEATHER, SEARCH], {}),
    ("special_characters", [
        {"role": "user", "content": "Quotes ' \" backslash \\ braces {{ not a tag }} {% nor this %} <|im_end|> [INST] </s>"},
        {"role": "assistant", "content": "Tabs\tand\r\nCRLF and \u0007 bell and \u00e9\u0301"},
        {"role": "user", "content": "json: {\"a\": [1, 2.5, null]}"},
    ], None, {}),
    ("mixed_scripts", [
        {"role": "system", "content": "日本語、中文、العربية, Ελληνικά, Кириллица, हिन्दी"},
        {"role": "user", "content": "Ünïcödé çàsé: ÀÉÎÕÜ àéîõü ß"},
    ], None, {}),
    ("long_conversation", [SYS] + [
        m for i in range(6) for m in (
            {"role": "user", "content": f"질문 {i}: {'왜' * (i + 1)}?"},
            {"role": "assistant", "content": f"답 {i}: 그냥요. #{i}"},
        )
    ] + [{"role": "user", "content": "마지막 질문"}], None, {}),
    ("assistant_prefill_last", [U1, {"role": "assistant", "content": "Sure, here is"}], None, {}),
    ("null_content_dropped", [
        {"role": "user", "content": "hi", "name": None},
        {"role": "assistant", "content": "hello", "tool_calls": None},
        {"role": "user", "content": "bye"},
    ], None, {}),
    ("enable_thinking_false", [SYS, U1], None, {"enable_thinking": False}),
    ("enable_thinking_true", [U1, A1, U2], None, {"enable_thinking": True}),
    ("reasoning_kept_with_skip_think_false", [
        {"role": "user", "content": "Why is the sky blue?"},
        {"role": "assistant", "content": "<think>\nRayleigh scattering.\n</think>\n\nBecause of Rayleigh scattering."},
    ], None, {"skip_think": False}),
    ("unknown_role", [{"role": "narrator", "content": "Once upon a time"}, U1], None, {}),
    ("system_only", [SYS], None, {}),
    ("date_string_kwarg", [SYS, U1], None, {"date_string": "06 Dec 2026"}),
    ("tools_empty_list", [U1], [], {}),
    ("tool_call_empty_content", [
        {"role": "user", "content": "부산 날씨는?"},
        {"role": "assistant", "content": "", "tool_calls": [
            call("get_weather", {"city": "부산", "days": 1, "note": None, "ratio": 0.1}, "call00004")]},
        {"role": "tool", "tool_call_id": "call00004", "name": "get_weather", "content": "흐림, 18°C"},
        {"role": "assistant", "content": "부산은 흐리고 18도입니다."},
        {"role": "user", "content": "고마워 🙏"},
    ], [WEATHER], {}),
    ("tool_call_with_text", [
        {"role": "user", "content": "Search for EXAONE"},
        {"role": "assistant", "content": "Let me search.", "tool_calls": [
            call("search", {"query": "EXAONE", "top_k": 5, "safe": False}, "call00005")]},
        {"role": "tool", "tool_call_id": "call00005", "name": "search", "content": "EXAONE is LG's model."},
    ], [SEARCH], {}),
]

# Variables a model's cases always pass: Llama 3.2 would otherwise print today's date.
MODEL_KWARGS = {"llama-3.2-3b-instruct": {"date_string": "26 Jul 2024"}}


# Jinja subset cases: (name, template, variables), rendered by transformers' own compiled
# environment (trim_blocks, lstrip_blocks, loopcontrols, its tojson and globals).
V = {"s": "Hello World", "k": "안녕하세요 세계", "n": 7, "f": 2.5, "l": [3, 1, 2], "e": [],
     "d": {"b": 1, "a": [1.0, None, True], "c": "x"}, "t": True, "z": None,
     "msgs": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"},
              {"role": "user", "content": "bye", "x": 1}]}
JINJA_CASES = [
    # whitespace control
    ("trim_blocks", "{% if true %}\nA\n{% endif %}\nB", {}),
    ("lstrip_blocks", "  {% if true %}\n  x\n  {% endif %}\n", {}),
    ("lstrip_not_var", "  {{ 1 }}\n  {% if true %}y{% endif %}", {}),
    ("lstrip_text_before", "a {% if true %}b{% endif %}", {}),
    ("minus_markers", "a  \n  {%- if true -%}  \n b \n {{- ' c ' -}} \n d {%- endif %}\n e", {}),
    ("plus_markers", "  {%+ if true +%}\nx{% endif %}", {}),
    ("comments", "a\n  {# note #}\nb{#- x -#}  c {# y #}\nd", {}),
    ("trailing_newline", "x\n", {}),
    ("two_trailing_newlines", "x\n\n", {}),
    ("crlf", "a\r\n{% if true %}\r\nb\r\n{% endif %}\r\nc", {}),
    ("var_then_newline", "{{ 'a' }}\n{{ 'b' }}\n", {}),
    # control flow
    ("if_elif_else", "{% for i in [1,2,3] %}{% if i == 1 %}one{% elif i == 2 %}two{% else %}many{% endif %},{% endfor %}", {}),
    ("loop_attrs", "{% for x in l %}{{ loop.index }}{{ loop.index0 }}{{ loop.revindex }}{{ loop.revindex0 }}{{ loop.first }}{{ loop.last }}{{ loop.length }};{% endfor %}", V),
    ("loop_prev_next", "{% for x in l %}[{{ loop.previtem }}|{{ loop.nextitem }}]{% endfor %}", V),
    ("for_if_filter", "{% for m in msgs if m.role == 'user' %}{{ loop.index }}/{{ loop.length }}:{{ m.content }}{{ ',' if not loop.last }}{% endfor %}", V),
    ("for_else", "{% for x in e %}{{ x }}{% else %}empty{% endfor %}", V),
    ("for_dict_items", "{% for k, v in d.items() %}{{ k }}={{ v }};{% endfor %}", V),
    ("for_dict_keys", "{% for k in d %}{{ k }}{% endfor %}", V),
    ("for_string", "{% for c in k %}[{{ c }}]{% endfor %}", V),
    ("break_continue", "{% for i in range(10) %}{% if i == 2 %}{% continue %}{% endif %}{% if i == 5 %}{% break %}{% endif %}{{ i }}{% endfor %}", {}),
    ("loop_scope", "{% set x = 'o' %}{% for i in [1,2] %}{% if i == 1 %}{% set x = 'a' %}{% endif %}[{{ x }}]{% endfor %}{{ x }}", {}),
    ("if_scope_leaks", "{% if true %}{% set y = 5 %}{% endif %}{{ y }}", {}),
    ("namespace", "{% set ns = namespace(a=1, b='x') %}{% for i in [1,2,3] %}{% set ns.a = ns.a + i %}{% endfor %}{{ ns.a }}{{ ns.b }}", {}),
    ("namespace_empty", "{% set ns = namespace() %}{% set ns.found = false %}{% for m in msgs %}{% if m.x is defined %}{% set ns.found = true %}{% endif %}{% endfor %}{{ ns.found }}", V),
    ("macro", "{% macro m(a, b='d', c=none) %}[{{ a }}{{ b }}{{ c }}]{% endmacro %}{{ m(1) }}{{ m(1, b=2) }}{{ m(1, 2, 3) }}{{ m(c='z', a='y') }}", {}),
    ("macro_sees_globals", "{% set g = 'G' %}{% macro m() %}{{ g }}{{ s }}{% endmacro %}{{ m() }}", V),
    ("set_block", "{% set x %}a{{ 1 + 1 }}b{% endset %}[{{ x }}]", {}),
    ("set_tuple", "{% set a, b = [1, 2] %}{{ b }}{{ a }}", {}),
    # expressions
    ("arith", "{{ 1 + 2 * 3 }} {{ 7 // 2 }} {{ -7 // 2 }} {{ 7 % 3 }} {{ -7 % 3 }} {{ 7 / 2 }} {{ 2 ** 10 }} {{ 1 - 0.5 }} {{ 4 / 2 }} {{ 0.1 + 0.2 }}", {}),
    ("concat", "{{ 'a' ~ 1 ~ none ~ true ~ 2.0 ~ z ~ undefined_name }}", V),
    ("concat_precedence", "{{ 1 + 2 ~ 3 }}", {}),
    ("string_plus", "{{ 'a' + 'b' }}{{ [1] + [2, 3] }}{{ 'ab' * 3 }}", {}),
    ("compare", "{{ 1 < 2 }}{{ 2 <= 1 }}{{ 'a' < 'b' }}{{ 1 == 1.0 }}{{ 1 != 2 }}{{ 1 < 2 < 3 }}{{ 3 > 2 > 2 }}{{ [1, 2] == [1, 2] }}{{ d == d }}", V),
    ("in_not_in", "{{ 'ell' in s }}{{ 3 in l }}{{ 4 not in l }}{{ 'a' in d }}{{ 'q' not in d }}{{ '' in s }}", V),
    ("logic", "{{ true and 'x' }}|{{ false or 'y' }}|{{ not none }}|{{ not 0 }}|{{ z or 'dflt' }}|{{ e and 'never' }}", V),
    ("ternary", "{{ 'yes' if t else 'no' }}{{ 'yes' if z else 'no' }}[{{ 'only' if z }}]", V),
    ("subscript_slice", "{{ l[0] }}{{ l[-1] }}{{ l[1:] }}{{ l[:-1] }}{{ l[::-1] }}{{ l[::2] }}{{ s[6:] }}{{ s[-5:] }}{{ k[::-1] }}{{ k[1] }}{{ k[2:4] }}{{ l[5:9] }}{{ s[100] }}", V),
    ("attr_vs_item", "{{ d.a }}{{ d['b'] }}{{ msgs[0].role }}{{ msgs[2]['x'] }}{{ d.items() | list }}", V),
    ("missing_attr_defined", "{{ d.nope is defined }}{{ d.nope }}|{{ msgs[0].content.content is defined }}|{{ l[9] is defined }}", V),
    ("literals", "{{ [1, 'a', none, true, 2.5, [], {}] }}{{ {'k': 'v', 1: (2, 3)} }}{{ (1,) }}{{ () }}", {}),
    ("print_values", "{{ none }}|{{ true }}|{{ 1.0 }}|{{ 1e20 }}|{{ 1e-5 }}|{{ 123456789.125 }}|{{ 1e16 }}|{{ 1e15 }}|{{ 0.0001 }}|{{ -0.0 }}|{{ d }}|{{ \"it's\" }}|{{ ['it\\'s', \"q\\\"\"] }}", V),
    ("string_escapes", "{{ 'a\\nb\\tc\\\\d\\'e\\x41\\u00e9\\U0001F600\\q' }}|{{ \"x\" 'y' }}", {}),
    ("str_methods", "{{ '  x  '.strip() }}|{{ 'xxaxx'.strip('x') }}|{{ '  x '.lstrip() }}|{{ ' x  '.rstrip() }}|{{ 'a,b,,c'.split(',') }}|{{ ' a  b \\n c '.split() }}|{{ 'a b c'.split(' ', 1) }}|{{ s.startswith('Hell') }}{{ s.endswith(('x', 'ld')) }}|{{ s.upper() }}{{ s.lower() }}|{{ s.replace('l', 'L') }}{{ s.replace('l', '', 2) }}|{{ 'hello wORLD'.title() }}{{ 'hello WORLD'.capitalize() }}|{{ s.find('o') }}{{ s.count('l') }}{{ ', '.join(['a', 'b']) }}", V),
    ("str_methods_unicode", "{{ k.split(' ')[1] }}|{{ k.startswith('안녕') }}|{{ ('  ' ~ k ~ '\\u3000').strip() }}|{{ 'ÀÉ'.lower() }}{{ 'straße'.upper() }}", V),
    ("dict_methods", "{{ d.get('c') }}{{ d.get('q') }}{{ d.get('q', 5) }}{{ d.keys() | list }}{{ d.values() | list }}", V),
    # filters
    ("filters_basic", "{{ ' x '|trim }}|{{ l|length }}{{ s|length }}{{ k|length }}{{ d|length }}|{{ l|first }}{{ l|last }}{{ s|first }}|{{ l|join(', ') }}{{ l|join }}|{{ l|list }}{{ s[:3]|list }}|{{ n|string }}{{ f|int }}{{ '12'|int }}{{ 'x'|int }}{{ '3.9'|int }}{{ n|float }}|{{ s|upper }}{{ s|lower }}|{{ 'hELLO'|capitalize }}|{{ 'a-b c'|title }}|{{ s|replace('o', '0') }}|{{ l|reverse|list }}{{ s|reverse }}|{{ d|items|list }}|{{ -3|abs }}", V),
    ("filter_default", "{{ undefined_name|default('d') }}|{{ z|default('d') }}|{{ ''|default('d', true) }}|{{ undefined_name|d('x') }}|{{ s|default('no') }}", V),
    ("filter_select", "{{ msgs|selectattr('role', 'equalto', 'user')|map(attribute='content')|list }}{{ msgs|rejectattr('role', 'eq', 'user')|list|length }}{{ msgs|selectattr('x', 'defined')|list|length }}{{ msgs|selectattr('x')|list|length }}{{ [1, 0, 2, none]|select|list }}{{ msgs|map(attribute='role')|join('+') }}{{ ['a', 'b']|map('upper')|list }}", V),
    ("tojson", "{{ d|tojson }}|{{ k|tojson }}|{{ 'a\"b\\\\c\\n\\t\\u0001<>&\\''|tojson }}|{{ [1, 2.5, 1e20, 0.1, -0.0, true, none]|tojson }}|{{ {}|tojson }}{{ []|tojson }}", V),
    ("tojson_args", "{{ d|tojson(indent=2) }}|{{ d|tojson(indent=0) }}|{{ k|tojson(ensure_ascii=True) }}|{{ d|tojson(separators=(',', ':')) }}|{{ d|tojson(sort_keys=true) }}|{{ {'x': [], 'y': {}}|tojson(indent=1) }}|{{ d|tojson(ensure_ascii=False)|safe }}", V),
    # tests
    ("tests", "{{ s is string }}{{ n is string }}{{ d is mapping }}{{ l is mapping }}{{ l is iterable }}{{ n is iterable }}{{ n is number }}{{ f is number }}{{ s is number }}{{ l is sequence }}{{ t is true }}{{ 1 is true }}{{ false is false }}{{ z is none }}{{ undefined_name is undefined }}{{ n is defined }}{{ n is not none }}{{ 3 is odd }}{{ 3 is even }}{{ 9 is divisibleby 3 }}{{ n is integer }}{{ f is float }}{{ t is boolean }}{{ 'x' is eq 'x' }}{{ 1 is equalto 2 }}{{ 1 is ne 2 }}{{ 2 is gt 1 }}{{ 2 is lt 1 }}{{ 2 is ge 2 }}{{ 2 is le 1 }}{{ 2 is in l }}", V),
    ("test_precedence", "{{ not z is none }}{{ l|length is odd }}{{ n + 1 is number }}", V),
    ("undefined_semantics", "[{{ undefined_name }}]{{ undefined_name|length }}{{ undefined_name|list }}{{ undefined_name is defined }}{{ 'a' in undefined_name }}{% for x in undefined_name %}never{% endfor %}{{ undefined_name == undefined_name }}{{ undefined_name|trim }}{{ not undefined_name }}", {}),
    ("strftime_defined", "{{ strftime_now is defined }}{{ raise_exception is defined }}{{ nothere is defined }}", {}),
    ("range_forms", "{{ range(3)|list }}{{ range(1, 4)|list }}{{ range(5, 0, -2)|list }}{{ range(0)|list }}", {}),
    ("dict_global", "{{ dict(a=1, b='2') }}", {}),
    ("generation_block", "a{% generation %}b{{ 1 }}{% endgeneration %}c", {}),
    # errors that jinja2 raises at render time
    ("err_raise_exception", "ok{{ raise_exception('Bad role: ' ~ 'x') }}", {}),
    ("err_undefined_attr", "{{ undefined_name.attr }}", {}),
    ("err_undefined_plus", "{{ undefined_name + 'a' }}", {}),
    ("err_tojson_undefined", "{{ undefined_name|tojson }}", {}),
    ("err_missing_attr_of_missing", "{{ d.nope.deeper }}", V),
]


def render_jinja(src, variables):
    from transformers.utils.chat_template_utils import _compile_jinja_template
    try:
        return {"expected": _compile_jinja_template(src).render(**variables)}
    except jinja2.exceptions.TemplateError as e:
        return {"error": f"{type(e).__name__}: {e}"}
    except Exception as e:  # TypeError and friends from Python operators
        return {"error": f"{type(e).__name__}: {e}"}


def render(tok, messages, tools, kwargs, agp):
    try:
        out = tok.apply_chat_template(messages, tools=tools, tokenize=False,
                                      add_generation_prompt=agp, **kwargs)
        return {"expected": out}
    except jinja2.exceptions.TemplateError as e:
        return {"error": str(e)}


def main():
    models = sorted(d for d in os.listdir(CHAT) if os.path.isdir(os.path.join(CHAT, d)))
    cases = []
    for model in models:
        with tempfile.TemporaryDirectory() as tmp:
            for f in os.listdir(os.path.join(CHAT, model)):
                if f.endswith(".json") or f.endswith(".jinja"):
                    shutil.copy(os.path.join(CHAT, model, f), tmp)
            shutil.copy(TINY_TOKENIZER, os.path.join(tmp, "tokenizer.json"))
            tok = PreTrainedTokenizerFast.from_pretrained(tmp)
            for name, messages, tools, kwargs in CONVERSATIONS:
                kwargs = {**MODEL_KWARGS.get(model, {}), **kwargs}
                for agp in (True, False):
                    case = {
                        "model": model,
                        "name": f"{name}{'' if agp else '.nogen'}",
                        "messages_json": json.dumps(messages, ensure_ascii=False),
                        "tools_json": None if tools is None else json.dumps(tools, ensure_ascii=False),
                        "kwargs_json": json.dumps(kwargs, ensure_ascii=False) if kwargs else None,
                        "add_generation_prompt": agp,
                    }
                    case.update(render(tok, json.loads(case["messages_json"]),
                                       None if tools is None else json.loads(case["tools_json"]),
                                       kwargs, agp))
                    cases.append(case)
    jinja_cases = []
    for name, src, variables in JINJA_CASES:
        case = {"name": name, "template": src,
                "vars_json": json.dumps(variables, ensure_ascii=False)}
        case.update(render_jinja(src, json.loads(case["vars_json"])))
        jinja_cases.append(case)
    out = {
        "generator": "tests/tools/make_chat_goldens.py",
        "transformers": transformers.__version__,
        "jinja2": jinja2.__version__,
        "cases": cases,
        "jinja_cases": jinja_cases,
    }
    path = os.path.join(CHAT, "goldens.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, indent=1)
        f.write("\n")
    per = {}
    for c in cases:
        k = per.setdefault(c["model"], [0, 0])
        k[0 if "expected" in c else 1] += 1
    for m, (ok, err) in per.items():
        print(f"{m}: {ok} rendered, {err} template errors")
    print(f"wrote {len(cases)} chat cases and {len(jinja_cases)} jinja cases to {os.path.relpath(path, ROOT)}")


if __name__ == "__main__":
    sys.exit(main())
