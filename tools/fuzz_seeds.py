#!/usr/bin/python3
"""fuzz_seeds.py [--out fuzz/corpus]

Writes the seed corpora of lorad's fuzz harnesses (fuzz/fuzz_*.c), one directory per
harness: small valid inputs of every kind each harness reads, plus a few near-misses, so
libFuzzer starts from the interesting formats instead of from nothing, and so that
`make check` (which replays these files) exercises the accepting paths of every check.
Standard library only; deterministic (the same files every run). Regression inputs
(fuzz/regressions/) are not written here: each is a file kept as fuzzing found it.

The harnesses' input layouts (multi-file inputs are split at FUZZ_SEP) are described at the
top of each fuzz/fuzz_*.c. Tiny model shapes follow tests/testutil.h (hidden 32, inter 48,
2 layers, 4 heads x 8, 2 KV heads, vocab 64).
"""
import argparse
import json
import os
import random
import shutil
import struct

SEP = b"\n--8<--\n"
PROJS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
PARENT = {"q_proj": "self_attn", "k_proj": "self_attn", "v_proj": "self_attn",
          "o_proj": "self_attn", "gate_proj": "mlp", "up_proj": "mlp", "down_proj": "mlp"}
# [out, in] of each projection of the tiny model
SHAPE = {"q_proj": (32, 32), "k_proj": (16, 32), "v_proj": (16, 32), "o_proj": (32, 32),
         "gate_proj": (48, 32), "up_proj": (48, 32), "down_proj": (32, 48)}
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def j(obj):
    return json.dumps(obj, ensure_ascii=False).encode()


# ------------------------------------------------------------------ safetensors
def pack(values, dtype):
    if dtype == "F32":
        return struct.pack("<%df" % len(values), *values)
    if dtype == "F16":
        return struct.pack("<%de" % len(values), *values)
    if dtype == "BF16":
        return b"".join(struct.pack("<f", v)[2:] for v in values)
    if dtype == "I32":
        return struct.pack("<%di" % len(values), *[int(v) for v in values])
    if dtype == "U8":
        return bytes(int(v) & 255 for v in values)
    raise ValueError(dtype)


def safetensors(tensors, metadata=None, pad=True):
    """tensors: list of (name, dtype, shape, values)."""
    header, blobs, off = {}, [], 0
    if metadata is not None:
        header["__metadata__"] = metadata
    for name, dtype, shape, values in tensors:
        b = pack(values, dtype)
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    if pad:
        h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + b"".join(blobs)


def rnd(rng, n, scale=0.5):
    return [round(rng.uniform(-scale, scale), 4) for _ in range(n)]


def adapter_tensors(rng, ranks, dtype="F32", projs=PROJS, layers=(0, 1)):
    out = []
    for layer in layers:
        for p in projs:
            r = ranks.get(p, ranks["*"])
            o, i = SHAPE[p]
            base = "base_model.model.model.layers.%d.%s.%s" % (layer, PARENT[p], p)
            out.append((base + ".lora_A.weight", dtype, (r, i), rnd(rng, r * i)))
            out.append((base + ".lora_B.weight", dtype, (o, r), rnd(rng, o * r)))
    return out


def adapter_config(**kw):
    c = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": "tiny",
         "r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "bias": "none",
         "target_modules": list(PROJS), "fan_in_fan_out": False, "inference_mode": True}
    c.update(kw)
    return j(c)


def tiny_config(**kw):
    c = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 64,
         "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2,
         "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 64,
         "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "hidden_act": "silu",
         "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2}
    c.update(kw)
    return j(c)


# ------------------------------------------------------------------ per harness
def seeds_safetensors(rng):
    s = {}
    s["f32"] = safetensors([("a", "F32", (2, 3), rnd(rng, 6)), ("b", "F32", (4,), rnd(rng, 4))])
    s["f16_bf16_meta"] = safetensors([("h", "F16", (3, 2), rnd(rng, 6)),
                                      ("g", "BF16", (2, 2), rnd(rng, 4))],
                                     metadata={"format": "pt", "note": "ünï"})
    s["scalar_empty_int"] = safetensors([("s", "F32", (), [1.5]), ("e", "F32", (0, 4), []),
                                         ("i", "I32", (3,), [1, -2, 3]),
                                         ("u", "U8", (2, 2), [1, 2, 3, 255])])
    s["special_values"] = safetensors([("x", "F32", (4,), [float("nan"), float("inf"),
                                                           -float("inf"), -0.0])])
    s["no_padding"] = safetensors([("a", "F32", (1,), [2.0])], pad=False)
    s["empty_header"] = safetensors([])
    good = safetensors([("a", "F32", (2,), [1.0, 2.0])])
    s["header_too_long"] = struct.pack("<Q", 1 << 40) + good[8:]
    s["truncated_data"] = good[:-3]
    hdr = b'{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},' \
          b'"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}'
    s["overlap"] = struct.pack("<Q", len(hdr)) + hdr + bytes(12)
    hdr = b'{"a":{"dtype":"F33","shape":[2],"data_offsets":[0,8]}}'
    s["bad_dtype"] = struct.pack("<Q", len(hdr)) + hdr + bytes(8)
    return s


def seeds_peft_config(rng):
    s = {}
    s["plain"] = adapter_config()
    s["all_linear_rslora"] = adapter_config(target_modules="all-linear", use_rslora=True,
                                            lora_alpha=16)
    s["regex_target"] = adapter_config(target_modules=r".*\.(q|k|v|o|gate|up|down)_proj")
    s["patterns"] = adapter_config(rank_pattern={"model.layers.0.mlp.down_proj": 4},
                                   alpha_pattern={"q_proj": 16, "layers.1.self_attn.v_proj": 2})
    s["layers_to_transform"] = adapter_config(layers_to_transform=[0, 1], layers_pattern="layers")
    s["exclude"] = adapter_config(target_modules=None, exclude_modules=["k_proj"])
    s["defaults_only"] = j({"peft_type": "LORA", "r": 4, "target_modules": list(PROJS)})
    s["dora"] = adapter_config(use_dora=True)
    s["modules_to_save"] = adapter_config(modules_to_save=["lm_head"])
    s["wrong_rank"] = adapter_config(r=8)
    s["negative_alpha"] = adapter_config(lora_alpha=-2.5)
    s["fan_in_fan_out"] = adapter_config(fan_in_fan_out=True, init_lora_weights="gaussian")
    return s


def seeds_peft_weights(rng):
    s = {}
    ranks = {"*": 4, "down_proj": 2}
    s["f32"] = safetensors(adapter_tensors(rng, ranks))
    s["bf16"] = safetensors(adapter_tensors(rng, ranks, "BF16"))
    s["f16_attention_only"] = safetensors(adapter_tensors(rng, ranks, "F16",
                                                          projs=("q_proj", "v_proj")))
    t = adapter_tensors(rng, ranks, projs=("q_proj",), layers=(0,))
    s["missing_b"] = safetensors(t[:1])
    s["layer_beyond_base"] = safetensors(adapter_tensors(rng, ranks, projs=("o_proj",),
                                                         layers=(2,)))
    t = adapter_tensors(rng, ranks, projs=("k_proj",), layers=(1,))
    t[0] = (t[0][0], "F32", (4, 33), rnd(rng, 4 * 33))
    s["other_base"] = safetensors(t)
    t = adapter_tensors(rng, ranks, projs=("up_proj",), layers=(0,))
    t[1] = (t[1][0], "F32", t[1][2], [float("nan")] + t[1][3][1:])
    s["nan"] = safetensors(t)
    return s


def seeds_model_config(rng):
    s = {}
    gen = j({"bos_token_id": 1, "eos_token_id": [2, 3], "do_sample": True})
    chatml = open(os.path.join(ROOT, "tests/fixtures/chat/templates/chatml.jinja"), "rb").read()
    tokcfg = j({"bos_token": "<s>", "eos_token": "</s>", "add_bos_token": True,
                "chat_template": chatml.decode()})
    index = j({"metadata": {"total_size": 0},
               "weight_map": {"model.embed_tokens.weight": "model.safetensors",
                              "lm_head.weight": "model.safetensors"}})
    s["config_only"] = tiny_config()
    s["all_four"] = SEP.join([tiny_config(), gen, index, tokcfg])
    s["mistral"] = tiny_config(architectures=["MistralForCausalLM"], model_type="mistral",
                               sliding_window=16, head_dim=8)
    s["qwen2"] = tiny_config(architectures=["Qwen2ForCausalLM"], model_type="qwen2",
                             use_sliding_window=True, sliding_window=8, max_window_layers=1)
    s["llama3_rope"] = tiny_config(rope_scaling={"rope_type": "llama3", "factor": 8.0,
                                                 "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                                 "original_max_position_embeddings": 32})
    s["eos_list_gen_null"] = SEP.join([tiny_config(eos_token_id=[2, 5]), j({"eos_token_id": None})])
    s["layer_types"] = tiny_config(layer_types=["full_attention", "sliding_attention"],
                                   sliding_window=8, architectures=["Qwen2ForCausalLM"],
                                   model_type="qwen2")
    s["bad_heads"] = tiny_config(num_key_value_heads=3)
    s["tokcfg_template_list"] = SEP.join([tiny_config(), b"", b"", j(
        {"chat_template": [{"name": "default", "template": chatml.decode()},
                           {"name": "tool_use", "template": "x"}]})])
    return s


def bpe_tokenizer(**kw):
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for ch in "abcdefghijklmnopqrstuvwxyz ▁":
        vocab[ch] = len(vocab)
    merges = ["a b", "ab c", "t h", "th e", "▁ t", "e r"]
    for m in merges:
        vocab[m.replace(" ", "")] = len(vocab)
    t = {"version": "1.0", "truncation": None, "padding": None,
         "added_tokens": [{"id": 1, "content": "<s>", "single_word": False, "lstrip": False,
                           "rstrip": False, "normalized": False, "special": True},
                          {"id": 2, "content": "</s>", "single_word": False, "lstrip": False,
                           "rstrip": False, "normalized": False, "special": True}],
         "normalizer": {"type": "Sequence", "normalizers": [
             {"type": "Prepend", "prepend": "▁"},
             {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]},
         "pre_tokenizer": None,
         "post_processor": {"type": "TemplateProcessing",
                            "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                                       {"Sequence": {"id": "A", "type_id": 0}}],
                            "pair": [{"Sequence": {"id": "A", "type_id": 0}},
                                     {"Sequence": {"id": "B", "type_id": 1}}],
                            "special_tokens": {"<s>": {"id": "<s>", "ids": [1],
                                                       "tokens": ["<s>"]}}},
         "decoder": {"type": "Sequence", "decoders": [
             {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
             {"type": "ByteFallback"}, {"type": "Fuse"},
             {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
         "model": {"type": "BPE", "dropout": None, "unk_token": "<unk>",
                   "continuing_subword_prefix": None, "end_of_word_suffix": None,
                   "fuse_unk": True, "byte_fallback": False, "vocab": vocab, "merges": merges}}
    t.update(kw)
    return t


def byte_level_tokenizer():
    # GPT-2's byte-to-unicode table
    bs = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    vocab = {chr(c): i for i, c in enumerate(cs)}
    merges = [["Ġ", "t"], ["h", "e"], ["Ġt", "he"]]
    for a, b in merges:
        vocab[a + b] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return {"version": "1.0", "added_tokens": [
        {"id": len(vocab) - 1, "content": "<|endoftext|>", "single_word": False, "lstrip": False,
         "rstrip": False, "normalized": False, "special": True}],
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                          "use_regex": True},
        "post_processor": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False,
                           "use_regex": True},
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
                    "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "fuse_unk": False,
                  "byte_fallback": False, "ignore_merges": True, "vocab": vocab,
                  "merges": merges}}


def seeds_tokenizer_load(rng):
    s = {}
    s["bpe_metaspace"] = j(bpe_tokenizer())
    s["bpe_with_config"] = SEP.join([j(bpe_tokenizer(post_processor=None)),
                                     j({"bos_token": "<s>", "eos_token": {"content": "</s>"},
                                        "add_bos_token": True, "add_eos_token": True})])
    s["byte_level"] = j(byte_level_tokenizer())
    t = bpe_tokenizer(normalizer=None, decoder={"type": "Metaspace", "replacement": "▁",
                                                "prepend_scheme": "first", "split": False},
                      pre_tokenizer={"type": "Metaspace", "replacement": "▁",
                                     "prepend_scheme": "always", "split": True})
    s["metaspace"] = j(t)
    t = bpe_tokenizer(pre_tokenizer={"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": "[0-9]+"}, "behavior": "Isolated",
         "invert": False}]}, normalizer={"type": "NFKC"})
    s["split_regex_nfkc"] = j(t)
    t = byte_level_tokenizer()
    t["model"]["merges"] = ["Ġ t", "h e", "Ġt he"]
    t["post_processor"] = {"type": "Sequence", "processors": [
        {"type": "ByteLevel", "trim_offsets": False},
        {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<|endoftext|>",
                                                                     "type_id": 0}},
                                                   {"Sequence": {"id": "A", "type_id": 0}}],
         "pair": [], "special_tokens": {"<|endoftext|>": {"id": "<|endoftext|>",
                                                          "ids": [len(t["model"]["vocab"]) - 1],
                                                          "tokens": ["<|endoftext|>"]}}}]}
    s["byte_level_string_merges_sequence"] = j(t)
    t = bpe_tokenizer()
    t["model"]["type"] = "Unigram"
    s["unigram_refused"] = j(t)
    return s


TEXTS = ["Hello world", " The quick brown fox jumps over the lazy dog.\n",
         "ünïcödé — 日本語のテキスト 😀👍🏽", "  leading and trailing  ", "<s>[INST] hi [/INST]</s>",
         "<|im_start|>user\nHi<|im_end|>", "tabs\tand\r\nnewlines\n\n", "123456789 3.14159",
         "e\u0301 precomposed é", "▁metaspace▁marker", "", "\x00nul"]


def seeds_tokenizer_roundtrip(rng):
    s = {}
    prose = open(os.path.join(ROOT, "tests/fixtures/tokenizer/prose.txt"), "rb").read()
    for i, t in enumerate(TEXTS):
        for tok in range(4):
            s["t%02d_%d" % (i, tok)] = bytes([tok | (16 if i % 3 == 0 else 0)]) + t.encode()
    for k in range(4):
        s["prose_%d" % k] = bytes([k]) + prose[k * 700: k * 700 + 700].decode(
            "utf-8", "ignore").encode()
    s["invalid_utf8"] = b"\x02abc\xff\xfe"
    return s


def seeds_tokenizer_decode(rng):
    s = {}
    for tok in range(4):
        for skip in (0, 16):
            ids = [rng.randrange(0, 32000) for _ in range(12)]
            s["ids_%d_%d" % (tok, skip)] = bytes([tok | skip]) + struct.pack("<%di" % len(ids),
                                                                               *ids)
    # byte-fallback runs (Llama 2: <0x..> tokens are 3..258), a split UTF-8 character,
    # special tokens, and out-of-range ids (negative, huge)
    s["byte_fallback"] = bytes([0]) + struct.pack("<6i", 1, 0xE6 + 3, 0x97 + 3, 0xA5 + 3, 0xFF + 3,
                                                  29871)
    s["special"] = bytes([16 | 3]) + struct.pack("<4i", 151643, 151644, 151645, 9707)
    s["out_of_range"] = bytes([2]) + struct.pack("<3i", 5, -1, 0x7fffffff)
    return s


def seeds_sampler(rng):
    s = {}
    def params(t, k, p, seed, mode):
        return bytes([t, k, p, seed, 0, 0, 0, 0, 0, 0, 0, 0])[:7] + bytes([mode]) + bytes(4)
    for i, (t, k, p) in enumerate([(1, 0, 0), (0, 0, 0), (2, 5, 1), (4, 1, 2), (5, 3, 8),
                                   (8, 0, 0), (3, 11, 10)]):
        logits = struct.pack("<16f", *[rng.uniform(-5, 5) for _ in range(16)])
        s["floats_%d" % i] = params(t, k, p, i, 0) + logits
        s["specials_%d" % i] = params(t, k, p, i, 1) + bytes(rng.randrange(256) for _ in range(24))
    s["all_nan"] = params(1, 0, 0, 0, 0) + struct.pack("<4f", *[float("nan")] * 4)
    s["inf_and_nan"] = params(2, 2, 1, 0, 0) + struct.pack("<4f", float("nan"), float("inf"),
                                                           -float("inf"), float("inf"))
    s["raw_params"] = bytes([0xf5, 0xf1, 0xf2, 3]) + struct.pack("<f", 1e-40) + \
        struct.pack("<f", 0.5) + struct.pack("<f", 2.0)[:4] + bytes(4)
    return s


def seeds_api_request(rng):
    comp = [
        {"model": "demo", "prompt": "The meaning of life is", "max_tokens": 16, "temperature": 0},
        {"prompt": [1, 2, 3], "max_tokens": 2, "logprobs": 2, "echo": False, "seed": 7,
         "stop": ["\n", "END"], "top_p": 0.9, "top_k": 40},
        {"prompt": ["one prompt"], "stream": True, "stream_options": {"include_usage": True},
         "adapters": [{"name": "a", "weight": 0.7}, {"name": "b", "weight": 0.3}]},
        {"prompt": [[5, 6]], "n": 1, "best_of": 1, "presence_penalty": 0,
         "frequency_penalty": 0.0, "repetition_penalty": 1, "logit_bias": {}, "suffix": "",
         "user": "u", "ignore_eos": True, "return_tokens_as_token_ids": True, "echo": True},
        {"prompt": "x", "temperature": 3},
        {"prompt": "x", "max_tokens": 2.0, "top_k": -1, "stop": "s", "model": None},
        {"prompt": "x", "logit_bias": {"5": 1}},
        {"prompt": "x", "adapters": [{"name": "a"}, {"name": "a"}]},
    ]
    chat = [
        {"model": "m", "messages": [{"role": "system", "content": "You are terse."},
                                    {"role": "user", "content": "Hi!"}],
         "max_tokens": 4, "temperature": 0, "logprobs": True, "top_logprobs": 2},
        {"messages": [{"role": "developer", "content": [{"type": "text", "text": "a"},
                                                       {"type": "text", "text": "b"}]},
                      {"role": "user", "content": None, "name": "n"},
                      {"role": "assistant", "content": "ok"}],
         "max_completion_tokens": 3, "response_format": {"type": "text"}, "tools": [],
         "tool_choice": "none"},
        {"messages": [{"role": "tool", "content": "x"}]},
        {"messages": []},
        {"messages": [{"role": "user", "content": "x"}], "top_logprobs": 3},
        {"messages": [{"role": "user", "content": "x"}], "stream_options": {"include_usage": True}},
    ]
    s = {}
    for i, c in enumerate(comp):
        s["completion_%d" % i] = b"\x00" + j(c)
    for i, c in enumerate(chat):
        s["chat_%d" % i] = b"\x01" + j(c)
    return s


def seeds_chat_template(rng):
    s = {}
    convs = [[(0, "You are terse."), (1, "Hi!")], [(1, "Hello"), (2, "Hi there"), (1, "Bye")],
             [(1, "  padded  "), (2, "ünï 😀 {{ not jinja }}")], [(2, "assistant first")],
             [(1, "a"), (1, "b")], [(0, "")]]
    for i, conv in enumerate(convs):
        parts = [bytes([role]) + text.encode() for role, text in conv]
        s["conversation_%d" % i] = bytes([2 * (i % 2)]) + SEP.join(parts)
    tdir = os.path.join(ROOT, "tests/fixtures/chat/templates")
    vars_ = j({"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "U"},
                            {"role": "assistant", "content": "A"}, {"role": "user", "content": "V"}],
               "add_generation_prompt": True, "bos_token": "<s>", "eos_token": "</s>"})
    for name in sorted(os.listdir(tdir)):
        if name.endswith(".jinja"):
            src = open(os.path.join(tdir, name), "rb").read()
            s["template_" + name[:-6]] = b"\x01" + src + SEP + vars_
    s["expressions"] = b"\x01" + (
        "{% set ns = namespace(n=0) %}{% for i in range(5) if i is odd %}{% set ns.n = ns.n + i %}"
        "{{ loop.index0 }}{{ ',' if not loop.last }}{% else %}none{% endfor %}|{{ ns.n }}|"
        "{{ 'abc'[::-1] | upper }}|{{ [3, 1, 2] | sort if false else [1] | join('-') }}|"
        "{{ {'a': 1}.get('b', 'd') }}|{{ 7 // 2 }}{{ 2 ** 10 }}{{ 'x' ~ 1 }}|"
        "{{ messages | selectattr('role', 'equalto', 'user') | map(attribute='content') | list | tojson }}"
        "{%- raw %}{{ raw }}{% endraw %}{# c #}").encode()
    s["raise"] = b"\x01{{ raise_exception('no ' + 'way') }}"
    s["macro_refused"] = b"\x01{% macro m() %}x{% endmacro %}"
    s["deep_range"] = b"\x01{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
    return s


def multipart(parts, boundary="BB"):
    out = b""
    for name, data, extra in parts:
        out += b"--" + boundary.encode() + b"\r\n"
        out += b'Content-Disposition: form-data; name="' + name.encode() + b'"' + extra + b"\r\n"
        out += b"\r\n" + data + b"\r\n"
    return out + b"--" + boundary.encode() + b"--\r\n"


def seeds_multipart(rng):
    s = {}
    cfg = adapter_config(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"])
    w = safetensors(adapter_tensors(rng, {"*": 2}, projs=("q_proj", "v_proj")))
    octet = b"\r\nContent-Type: application/octet-stream"
    s["upload"] = multipart([("config", cfg, b""), ("weights", w, b'; filename="f"' + octet)])
    s["upload_own_boundary"] = b"multipart/form-data; boundary=XyZ-123" + SEP + multipart(
        [("weights", w, b""), ("config", cfg, b'; filename="f"')], "XyZ-123")
    s["quoted_boundary"] = b'multipart/form-data; boundary="q q"' + SEP + multipart(
        [("config", cfg, b""), ("weights", w, b"")], "q q")
    s["invalid_adapter"] = multipart([("config", adapter_config(r=8), b""), ("weights", w, b"")])
    s["missing_part"] = multipart([("config", cfg, b"")])
    s["unexpected_part"] = multipart([("config", cfg, b""), ("extra", b"x", b"")])
    s["duplicate_part"] = multipart([("config", cfg, b""), ("config", cfg, b"")])
    s["empty_part"] = multipart([("config", b"", b""), ("weights", w, b"")])
    s["wrong_type"] = b"application/json" + SEP + cfg
    s["no_boundary"] = b"multipart/form-data" + SEP + multipart([("config", cfg, b"")])
    s["truncated"] = multipart([("config", cfg, b""), ("weights", w, b"")])[:-40]
    return s


def seeds_adapter_name(rng):
    s = {}
    cases = [("good", "adapters/good"), ("x1", "adapters/good"), ("x.y_z-1", "adapters/./good"),
             ("x2", "adapters/link/evil"), ("x3", "outside/evil"), ("x4", "adapters/../outside/evil"),
             ("../outside/evil", "outside/evil"), ("..", "adapters/good"), (".tmp-1-2-3", "adapters/good"),
             ("tiny", "adapters/good"), ("a/b", ""), ("A" * 64, "adapters/good"), ("B" * 65, ""),
             ("-x", "/etc"), ("good", "/dev/shm"), ("ünï", "adapters/good"), ("x5", "adapters"),
             ("x6", "adapters/good/../good"), ("x7", "/")]
    for i, (name, path) in enumerate(cases):
        s["case_%02d" % i] = name.encode() + SEP + path.encode()
    return s


HARNESSES = {
    "safetensors": seeds_safetensors, "peft_config": seeds_peft_config,
    "peft_weights": seeds_peft_weights, "model_config": seeds_model_config,
    "tokenizer_load": seeds_tokenizer_load, "tokenizer_roundtrip": seeds_tokenizer_roundtrip,
    "tokenizer_decode": seeds_tokenizer_decode, "sampler": seeds_sampler,
    "api_request": seeds_api_request, "chat_template": seeds_chat_template,
    "multipart": seeds_multipart, "adapter_name": seeds_adapter_name,
}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(ROOT, "fuzz", "corpus"))
    args = ap.parse_args()
    total = 0
    for name, make in sorted(HARNESSES.items()):
        d = os.path.join(args.out, name)
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
        seeds = make(random.Random(name))
        for fname, data in sorted(seeds.items()):
            with open(os.path.join(d, fname), "wb") as f:
                f.write(data)
            total += len(data)
        print("%-20s %3d seeds" % (name, len(seeds)))
    print("%d bytes in all" % total)


if __name__ == "__main__":
    main()
