#!/usr/bin/python3
"""make_fixtures.py OUTDIR [--seed N]

Writes tiny, deterministic Hugging Face Llama-family model directories and PEFT LoRA
adapters for lorad's tests (numpy + standard library only):

  OUTDIR/<model>/config.json, [generation_config.json], model.safetensors
                 (or model-0000{1,2}-of-00002.safetensors + model.safetensors.index.json)
                 [tokenizer.json, tokenizer_config.json: copies of a real tokenizer from
                 tests/fixtures/tokenizer/, for the models that carry one]
  OUTDIR/adapters/<adapter>/adapter_config.json, adapter_model.safetensors
  OUTDIR/manifest.json   what was written: paths (relative to OUTDIR), dtypes, features,
                         sha256 of every file (so tests can prove nothing modified them)

Everything is derived from --seed (default 1234) through numpy Generators, one per
fixture, so adding a fixture never changes the others. Weights are scaled so that
activations stay O(1) and logits have a spread of a few units (greedy decoding is then
unambiguous), and LoRA B matrices are non-zero and sized so the adapter visibly changes
the logits without swamping the base model.
"""
import argparse
import hashlib
import json
import os
import shutil
import struct
import sys
import tempfile

import numpy as np

DEFAULT_SEED = 1234
PROJS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
ATTN = ("q_proj", "k_proj", "v_proj", "o_proj")
TORCH_DTYPE = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}


# --------------------------------------------------------------------------- safetensors
def f32_to_bf16_bits(a):
    """float array -> uint16 bf16 bit patterns, round-to-nearest-even on the f32 bits."""
    u = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    return rounded.astype(np.uint16)


def encode(arr, dtype):
    """(bytes, shape) of arr stored as dtype (F32, F16, BF16), little-endian."""
    if dtype == "F32":
        data = np.ascontiguousarray(arr, dtype="<f4").tobytes()
    elif dtype == "F16":
        data = np.ascontiguousarray(arr, dtype="<f2").tobytes()
    elif dtype == "BF16":
        data = f32_to_bf16_bits(arr).astype("<u2").tobytes()
    else:
        raise ValueError("unsupported dtype " + dtype)
    return data, list(arr.shape)


def write_safetensors(path, tensors, dtype, metadata=None):
    """tensors: list of (name, float ndarray) written as dtype. Returns total data bytes."""
    header = {}
    if metadata is not None:
        header["__metadata__"] = metadata
    blobs = []
    off = 0
    for name, arr in sorted(tensors, key=lambda t: t[0]):
        data, shape = encode(arr, dtype)
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + len(data)]}
        blobs.append(data)
        off += len(data)
    hj = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hj += b" " * ((8 - (8 + len(hj)) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hj)))
        f.write(hj)
        for b in blobs:
            f.write(b)
    return off


def dump_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=False)
        f.write("\n")


# --------------------------------------------------------------------------- models
# Every model: tiny, 2-3 layers, small vocab. Values chosen to cover the config variants
# lorad must support. "kv": None omits num_key_value_heads (HF default: = heads).
MODELS = [
    dict(name="llama_tied", arch="LlamaForCausalLM", model_type="llama", vocab=128,
         hidden=64, inter=160, layers=2, heads=4, kv=2, head_dim=None, max_pos=256,
         theta=10000.0, eps=1e-5, tie=True, dtype="F32", bias=False, bos=1, eos=2,
         gen_config=True, features=["tied", "gqa"]),
    dict(name="llama_untied", arch="LlamaForCausalLM", model_type="llama", vocab=96,
         hidden=48, inter=128, layers=2, heads=4, kv=None, head_dim=None, max_pos=128,
         theta=10000.0, eps=1e-6, tie=False, dtype="F32", bias=False, bos=1, eos=2,
         gen_config=False, features=["untied", "mha", "no_num_key_value_heads"]),
    dict(name="qwen2_bias", arch="Qwen2ForCausalLM", model_type="qwen2", vocab=160,
         hidden=64, inter=128, layers=2, heads=4, kv=2, head_dim=None, max_pos=256,
         theta=1000000.0, eps=1e-6, tie=False, dtype="F32", bias=True, bos=157, eos=158,
         gen_config=True, features=["qwen2", "qkv_bias", "gqa", "untied"]),
    dict(name="mistral_headdim", arch="MistralForCausalLM", model_type="mistral", vocab=112,
         hidden=48, inter=96, layers=2, heads=4, kv=2, head_dim=16, max_pos=256,
         theta=1000000.0, eps=1e-5, tie=False, dtype="F32", bias=False, bos=1, eos=2,
         gen_config=False, features=["mistral", "explicit_head_dim", "gqa", "untied"]),
    dict(name="llama_bf16", arch="LlamaForCausalLM", model_type="llama", vocab=128,
         hidden=64, inter=128, layers=2, heads=4, kv=4, head_dim=None, max_pos=128,
         theta=10000.0, eps=1e-5, tie=False, dtype="BF16", bias=False, bos=1, eos=2,
         gen_config=True, features=["bf16", "untied", "mha"]),
    dict(name="llama_f16", arch="LlamaForCausalLM", model_type="llama", vocab=100,
         hidden=32, inter=64, layers=3, heads=2, kv=1, head_dim=None, max_pos=128,
         theta=10000.0, eps=1e-5, tie=True, dtype="F16", bias=False, bos=1, eos=2,
         gen_config=False, features=["f16", "tied", "mqa"]),
    dict(name="llama_sharded", arch="LlamaForCausalLM", model_type="llama", vocab=300,
         hidden=64, inter=128, layers=3, heads=4, kv=2, head_dim=None, max_pos=128,
         theta=10000.0, eps=1e-5, tie=False, dtype="F32", bias=False, bos=1, eos=2,
         gen_config=True, shards=2, features=["sharded", "untied", "gqa"]),
    # head_dim 16, theta 1e4: wavelengths 6.3, 19.9, 62.8, 199, ... against
    # high/low_freq_wavelen = 64/4 = 16 and 64/1 = 64, so one pair is untouched, two
    # are smoothed and five are divided by the factor.
    dict(name="llama3_rope", arch="LlamaForCausalLM", model_type="llama", vocab=128,
         hidden=64, inter=128, layers=2, heads=4, kv=2, head_dim=None, max_pos=128,
         theta=10000.0, eps=1e-5, tie=False, dtype="F32", bias=False, bos=1, eos=[2, 3],
         gen_config=True,
         rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                       "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
         features=["llama3_rope_scaling", "eos_list", "gqa", "untied"]),
    # Models that carry a real tokenizer (tokenizer.json + tokenizer_config.json copied
    # from tests/fixtures/tokenizer/<tokenizer>/), so `generate --prompt TEXT` and --stop
    # work. The embedding is the big tensor (vocab x hidden): hidden 16 keeps it small,
    # and tying saves the lm_head copy. vocab "tokenizer": max id + 1 over the
    # tokenizer's vocab and added tokens.
    dict(name="llama_tok_llama2", arch="LlamaForCausalLM", model_type="llama", vocab=32000,
         hidden=16, inter=32, layers=2, heads=2, kv=1, head_dim=None, max_pos=128,
         theta=10000.0, eps=1e-5, tie=True, dtype="F32", bias=False, bos=1, eos=2,
         gen_config=True, tokenizer="llama2",
         features=["tokenizer", "sentencepiece_bpe", "byte_fallback", "mqa", "tied"]),
    dict(name="qwen2_tok_qwen3", arch="Qwen2ForCausalLM", model_type="qwen2",
         vocab="tokenizer", hidden=16, inter=32, layers=2, heads=2, kv=1, head_dim=None,
         max_pos=128, theta=1000000.0, eps=1e-6, tie=True, dtype="BF16", bias=True,
         bos=151643, eos=[151645, 151643], gen_config=True, tokenizer="qwen3",
         features=["tokenizer", "byte_level_bpe", "qwen2", "qkv_bias", "bf16", "tied",
                   "mqa", "eos_list"]),
    # Sliding-window attention (transformers' masking_utils: a query at position p sees
    # keys p-W+1..p, W of them). Small windows against max_position_embeddings 64, so a
    # 20-token prompt + 8 generated tokens slides well past them. Appended last: the
    # fixtures above keep their random streams (one Generator per list index).
    dict(name="mistral_window", arch="MistralForCausalLM", model_type="mistral", vocab=96,
         hidden=32, inter=64, layers=2, heads=4, kv=2, head_dim=None, max_pos=64,
         theta=10000.0, eps=1e-5, tie=False, dtype="F32", bias=False, bos=1, eos=2,
         gen_config=False, sliding_window=6,
         features=["mistral", "sliding_window", "gqa", "untied"]),
    # Qwen2: the window applies only with use_sliding_window, and only to layers with
    # index >= max_window_layers (Qwen2Config.layer_types); 0 puts every layer in it.
    dict(name="qwen2_window", arch="Qwen2ForCausalLM", model_type="qwen2", vocab=80,
         hidden=32, inter=64, layers=2, heads=4, kv=2, head_dim=None, max_pos=64,
         theta=1000000.0, eps=1e-6, tie=False, dtype="F32", bias=True, bos=77, eos=78,
         gen_config=True, sliding_window=5, max_window_layers=0,
         features=["qwen2", "sliding_window", "use_sliding_window", "qkv_bias", "gqa",
                   "untied"]),
]
TOKENIZER_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                             "tests", "fixtures", "tokenizer")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def tokenizer_vocab_size(name):
    """Max id + 1 over tokenizer.json's model vocab and added_tokens."""
    with open(os.path.join(TOKENIZER_DIR, name, "tokenizer.json"), encoding="utf-8") as f:
        tj = json.load(f)
    ids = list(tj["model"]["vocab"].values()) + [t["id"] for t in tj.get("added_tokens", [])]
    return max(ids) + 1


def head_dim_of(m):
    return m["head_dim"] if m["head_dim"] else m["hidden"] // m["heads"]


def n_kv_of(m):
    return m["kv"] if m["kv"] else m["heads"]


def proj_shape(m, proj):
    """[out, in] of a projection."""
    h, hd, nh, nkv, inter = m["hidden"], head_dim_of(m), m["heads"], n_kv_of(m), m["inter"]
    return {"q_proj": (nh * hd, h), "k_proj": (nkv * hd, h), "v_proj": (nkv * hd, h),
            "o_proj": (h, nh * hd), "gate_proj": (inter, h), "up_proj": (inter, h),
            "down_proj": (h, inter)}[proj]


def proj_module(layer, proj):
    part = "self_attn" if proj in ATTN else "mlp"
    return "model.layers.%d.%s.%s" % (layer, part, proj)


def model_tensors(m, rng):
    """List of (name, float32 array) in HF names, scaled to keep activations O(1)."""
    h, v = m["hidden"], m["vocab"]
    t = []

    def normal(shape, std):
        return (rng.standard_normal(shape) * std).astype(np.float32)

    def norm_w(n):
        return (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32)

    # Logits = rmsnorm(h) . row; rmsnorm(h) has norm ~sqrt(hidden): std 3/sqrt(hidden)
    # for the output rows gives logits with a standard deviation of ~3. Tied models use
    # rows of norm ~1 and a final norm weight of ~3 instead: the residual stream still
    # holds the current token's own embedding, and a large |e|^2 would make the model
    # repeat that token forever.
    out_std = 3.0 / np.sqrt(h)
    t.append(("model.embed_tokens.weight",
              normal((v, h), 1.0 / np.sqrt(h) if m["tie"] else 1.0)))
    for i in range(m["layers"]):
        t.append(("model.layers.%d.input_layernorm.weight" % i, norm_w(h)))
        t.append(("model.layers.%d.post_attention_layernorm.weight" % i, norm_w(h)))
        for p in PROJS:
            out, inp = proj_shape(m, p)
            gain = {"q_proj": 1.5, "k_proj": 1.5, "o_proj": 0.7, "down_proj": 0.7}.get(p, 1.0)
            t.append((proj_module(i, p) + ".weight", normal((out, inp), gain / np.sqrt(inp))))
            if m["bias"] and p in ("q_proj", "k_proj", "v_proj"):
                t.append((proj_module(i, p) + ".bias", normal((out,), 0.5)))
    t.append(("model.norm.weight", norm_w(h) * (3.0 if m["tie"] else 1.0)))
    if not m["tie"]:
        t.append(("lm_head.weight", normal((v, h), out_std)))
    return t


def model_config_json(m):
    c = {
        "architectures": [m["arch"]],
        "model_type": m["model_type"],
        "vocab_size": m["vocab"],
        "hidden_size": m["hidden"],
        "intermediate_size": m["inter"],
        "num_hidden_layers": m["layers"],
        "num_attention_heads": m["heads"],
    }
    if m["kv"] is not None:
        c["num_key_value_heads"] = m["kv"]
    if m["head_dim"] is not None:
        c["head_dim"] = m["head_dim"]
    c.update({
        "max_position_embeddings": m["max_pos"],
        "rope_theta": m["theta"],
        "rms_norm_eps": m["eps"],
        "tie_word_embeddings": m["tie"],
        "torch_dtype": TORCH_DTYPE[m["dtype"]],
        "bos_token_id": m["bos"],
        "eos_token_id": m["eos"],
        "hidden_act": "silu",
        "initializer_range": 0.02,
        "use_cache": True,
        "attention_dropout": 0.0,
        "transformers_version": "4.44.0",
    })
    if m["model_type"] == "llama":
        c["attention_bias"] = False
        c["mlp_bias"] = False
        c["pretraining_tp"] = 1
    if m["model_type"] == "mistral":
        # default 4096 >= max_position_embeddings: no effect
        c["sliding_window"] = m.get("sliding_window", 4096)
    if m["model_type"] == "qwen2":
        if m.get("sliding_window"):
            c["use_sliding_window"] = True
            c["sliding_window"] = m["sliding_window"]
            c["max_window_layers"] = m["max_window_layers"]
        else:
            c["use_sliding_window"] = False
            c["sliding_window"] = m["max_pos"]
            c["max_window_layers"] = m["layers"]
    c["rope_scaling"] = m.get("rope_scaling")
    return c


def write_model(outdir, m, rng):
    d = os.path.join(outdir, m["name"])
    os.makedirs(d)
    dump_json(os.path.join(d, "config.json"), model_config_json(m))
    if m["gen_config"]:
        dump_json(os.path.join(d, "generation_config.json"),
                  {"_from_model_config": True, "bos_token_id": m["bos"],
                   "eos_token_id": m["eos"], "transformers_version": "4.44.0"})
    tensors = model_tensors(m, rng)
    shards = m.get("shards", 1)
    if shards == 1:
        write_safetensors(os.path.join(d, "model.safetensors"), tensors, m["dtype"],
                          {"format": "pt"})
    else:
        assert shards == 2
        # Split in the middle of a layer: layer 1's attention in shard 1, its MLP and
        # norms in shard 2 (HF splits by size, not at layer boundaries).
        def in_first(name):
            if name == "model.embed_tokens.weight" or name.startswith("model.layers.0."):
                return True
            return name.startswith("model.layers.1.self_attn.")
        parts = [[t for t in tensors if in_first(t[0])],
                 [t for t in tensors if not in_first(t[0])]]
        weight_map = {}
        total = 0
        for k, part in enumerate(parts):
            fname = "model-%05d-of-%05d.safetensors" % (k + 1, shards)
            total += write_safetensors(os.path.join(d, fname), part, m["dtype"],
                                       {"format": "pt"})
            for name, _ in part:
                weight_map[name] = fname
        dump_json(os.path.join(d, "model.safetensors.index.json"),
                  {"metadata": {"total_size": total},
                   "weight_map": dict(sorted(weight_map.items()))})
    tok = m.get("tokenizer")
    if tok:
        for fname in TOKENIZER_FILES:
            shutil.copyfile(os.path.join(TOKENIZER_DIR, tok, fname), os.path.join(d, fname))
    eos = m["eos"] if isinstance(m["eos"], list) else [m["eos"]]
    return {
        "path": m["name"], "arch": m["arch"], "model_type": m["model_type"],
        "dtype": m["dtype"], "features": m["features"], "vocab_size": m["vocab"],
        "hidden_size": m["hidden"], "num_hidden_layers": m["layers"],
        "num_attention_heads": m["heads"], "num_key_value_heads": n_kv_of(m),
        "head_dim": head_dim_of(m), "max_position_embeddings": m["max_pos"],
        "tie_word_embeddings": m["tie"], "bos_token_id": m["bos"], "eos_token_ids": eos,
        "shards": shards, "rope_scaling": m.get("rope_scaling"),
        "tokenizer": tok, "tokenizer_files": list(TOKENIZER_FILES) if tok else [],
        # the window the fixture means to exercise (None: full attention everywhere)
        "sliding_window": m.get("sliding_window"),
    }


# --------------------------------------------------------------------------- adapters
def pattern_key(keys, module):
    """PEFT get_pattern_key: a key matches if module == key or ends with '.' + key
    (keys are regexes)."""
    import re
    for k in keys:
        if re.match(r"(.*\.)?(%s)$" % k, module):
            return k
    return None


def targeted(target, module):
    import re
    if isinstance(target, str):
        return re.fullmatch(target, module) is not None
    return any(module == t or module.endswith("." + t) for t in target)


ADAPTERS = [
    dict(name="ad_all", base="llama_tied", r=8, alpha=16, target=list(PROJS), dtype="F32",
         features=["all_projections"]),
    dict(name="ad_qv", base="llama_tied", r=4, alpha=8, target=["q_proj", "v_proj"],
         dtype="F16", features=["q_v_only", "f16", "target_list"], delta=0.3),
    dict(name="ad_rslora", base="llama_tied", r=16, alpha=8, rslora=True,
         target=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
         dtype="F32", features=["rslora"]),
    dict(name="ad_pattern", base="llama_tied", r=8, alpha=16, target=list(PROJS),
         rank_pattern={"model.layers.1.mlp.down_proj": 2}, alpha_pattern={"q_proj": 32},
         dtype="F32", features=["rank_pattern", "alpha_pattern"]),
    dict(name="ad_regex", base="llama_tied", r=8, alpha=16,
         target=r".*\.layers\.1\.self_attn\.(q_proj|o_proj)$|.*\.layers\.0\.mlp\.up_proj",
         dtype="F32", features=["target_regex", "some_layers"], delta=0.3),
    dict(name="ad_bf16", base="llama_tied", r=8, alpha=32,
         target=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
         dtype="BF16", features=["bf16"]),
    dict(name="qwen2_ad", base="qwen2_bias", r=8, alpha=16, target=list(PROJS), dtype="F32",
         features=["all_projections", "qwen2"]),
    dict(name="mistral_ad", base="mistral_headdim", r=4, alpha=8, target=list(PROJS),
         dtype="F32", features=["all_projections", "explicit_head_dim"]),
    # Adapters on the tokenizer-carrying Qwen2 model, for the daemon's tests (text, chat,
    # per-request switching): all projections, attention only, MLP only. Larger deltas so
    # that even greedy tokens of this 16-wide model change. Appended last: the adapters
    # above keep their random streams.
    dict(name="tq_all", base="qwen2_tok_qwen3", r=8, alpha=16, target=list(PROJS),
         dtype="F32", features=["all_projections", "tokenizer"], delta=1.0),
    dict(name="tq_attn", base="qwen2_tok_qwen3", r=4, alpha=8, target=["q_proj", "v_proj"],
         dtype="F16", features=["attention_only", "tokenizer"], delta=1.0),
    dict(name="tq_mlp", base="qwen2_tok_qwen3", r=2, alpha=4,
         target=["gate_proj", "up_proj", "down_proj"], dtype="BF16",
         features=["mlp_only", "tokenizer"], delta=1.0),
]


def write_adapter(outdir, a, models_by_name, rng):
    m = models_by_name[a["base"]]
    d = os.path.join(outdir, "adapters", a["name"])
    os.makedirs(d)
    rank_pattern = a.get("rank_pattern", {})
    alpha_pattern = a.get("alpha_pattern", {})
    rslora = a.get("rslora", False)
    # target std of s*B(Ax) per output element (the base output's is ~1). The tied base
    # is more sensitive (its residual stream is mostly layer outputs), so it gets half.
    delta = a.get("delta", 0.2) * (0.5 if m["tie"] else 1.0)
    tensors = []
    n_modules = 0
    for i in range(m["layers"]):
        for p in PROJS:
            mod = proj_module(i, p)
            if not targeted(a["target"], mod):
                continue
            n_modules += 1
            rk = pattern_key(rank_pattern.keys(), mod)
            ak = pattern_key(alpha_pattern.keys(), mod)
            r = rank_pattern[rk] if rk is not None else a["r"]
            alpha = alpha_pattern[ak] if ak is not None else a["alpha"]
            s = alpha / np.sqrt(r) if rslora else alpha / r
            out, inp = proj_shape(m, p)
            A = rng.standard_normal((r, inp)) / np.sqrt(inp)
            B = rng.standard_normal((out, r)) * (delta / (s * np.sqrt(r)))
            pre = "base_model.model." + mod
            tensors.append((pre + ".lora_A.weight", A.astype(np.float32)))
            tensors.append((pre + ".lora_B.weight", B.astype(np.float32)))
    assert n_modules > 0, a["name"]
    cfg = {
        "alpha_pattern": alpha_pattern,
        "auto_mapping": None,
        "base_model_name_or_path": a["base"],
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "init_lora_weights": True,
        "layers_pattern": None,
        "layers_to_transform": None,
        "lora_alpha": a["alpha"],
        "lora_dropout": 0.0,
        "modules_to_save": None,
        "peft_type": "LORA",
        "r": a["r"],
        "rank_pattern": rank_pattern,
        "revision": None,
        "target_modules": a["target"],
        "task_type": "CAUSAL_LM",
        "use_dora": False,
        "use_rslora": rslora,
    }
    dump_json(os.path.join(d, "adapter_config.json"), cfg)
    write_safetensors(os.path.join(d, "adapter_model.safetensors"), tensors, a["dtype"],
                      {"format": "pt"})
    return {"path": "adapters/" + a["name"], "base": a["base"], "dtype": a["dtype"],
            "r": a["r"], "lora_alpha": a["alpha"], "use_rslora": rslora,
            "target_modules": a["target"], "rank_pattern": rank_pattern,
            "alpha_pattern": alpha_pattern, "n_modules": n_modules,
            "features": a["features"]}


# --------------------------------------------------------------------------- main
def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        h.update(f.read())
    return h.hexdigest()


def generate(outdir, seed):
    """Writes everything into a fresh temp dir next to OUTDIR, then renames it into place
    so an interrupted run never leaves a half-written fixture set behind."""
    outdir = os.path.abspath(outdir)
    parent = os.path.dirname(outdir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".fixtures-", dir=parent)
    try:
        manifest = {"seed": seed, "generator": "tools/make_fixtures.py", "models": {},
                    "adapters": {}}
        models = [dict(m, vocab=tokenizer_vocab_size(m["tokenizer"]))
                  if m["vocab"] == "tokenizer" else m for m in MODELS]
        by_name = {m["name"]: m for m in models}
        for k, m in enumerate(models):
            rng = np.random.default_rng([seed, 0, k])
            manifest["models"][m["name"]] = write_model(tmp, m, rng)
        for k, a in enumerate(ADAPTERS):
            rng = np.random.default_rng([seed, 1, k])
            manifest["adapters"][a["name"]] = write_adapter(tmp, a, by_name, rng)
        files = {}
        for root, _, names in os.walk(tmp):
            for n in sorted(names):
                p = os.path.join(root, n)
                files[os.path.relpath(p, tmp)] = sha256(p)
        manifest["sha256"] = dict(sorted(files.items()))
        dump_json(os.path.join(tmp, "manifest.json"), manifest)
        if os.path.exists(outdir):
            shutil.rmtree(outdir)
        os.rename(tmp, outdir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("outdir")
    ap.add_argument("--seed", type=int, default=DEFAULT_SEED)
    args = ap.parse_args(argv)
    man = generate(args.outdir, args.seed)
    print("make_fixtures: %d models, %d adapters in %s (seed %d)"
          % (len(man["models"]), len(man["adapters"]), args.outdir, args.seed))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
