#!/usr/bin/python3
"""reference.py: an independent numpy (float64) reference of the Hugging Face forward pass
of Llama-family models (Llama, Mistral, Qwen2) with PEFT LoRA adapters.

It reads the model files itself (its own safetensors reader, F32/F16/BF16 decoding,
sharded checkpoints) and shares no code with lorad or with tools/make_fixtures.py.

    logprobs(model_dir, token_ids, adapters=[(adapter_dir, weight), ...], merged=False,
             windows=None, weights=None)
        -> [len(token_ids), vocab] float64 log-softmax of the next-token logits at every
           position. merged=True folds W' = W + sum_i w_i s_i B_i A_i into the weights
           first instead of adding s (x A^T) B^T on the fly (the results must agree).
           windows: per-layer sliding windows overriding config.json's (None entries =
           full attention), for tests that need the model with another window.
           weights: None (the checkpoint's values), "bf16" or "q8": the matrices (embeddings,
           lm_head, projections; not norms or biases) as lorad --weights holds them —
           "bf16": each value rounded to the nearest BF16, ties to even; "q8": per block of
           32 consecutive values of a row, d = max|x| / 127 and q = round-half-even(x * (1/d))
           in float32, the value being float32(q * d). Merged W' is the float32 sum rounded
           the same way.

Sliding-window attention follows transformers' masking_utils (sliding_window_overlay
and causal_mask_function: kv_idx > q_idx - W and kv_idx <= q_idx), i.e. a query at
position p attends to the W keys at positions max(0, p-W+1) .. p. Which layers slide:
Mistral every layer when `sliding_window` is set (MistralConfig default 4096, null = off);
Qwen2 only with `use_sliding_window`, and then the layers with index >= max_window_layers
(default 28), or as listed by an explicit `layer_types`; Llama never.
    greedy(model_dir, prompt_ids, n, adapters=[...]) -> generated ids (stops at EOS)

Command line (for debugging):
    reference.py MODEL_DIR --ids 1,2,3 [--adapter DIR[:W]]... [--merge] [-n N] [--top K]
    reference.py torchcheck FIXTURES_DIR    one-off cross-check against torch ops (optional)
"""
import json
import math
import os
import re
import struct
import sys

import numpy as np

PROJS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
SUPPORTED_ARCHS = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM")


# --------------------------------------------------------------------------- safetensors
def _decode(dtype, raw, shape):
    n = int(np.prod(shape)) if shape else 1
    if dtype == "F32":
        a = np.frombuffer(raw, dtype="<f4", count=n).astype(np.float64)
    elif dtype == "F64":
        a = np.frombuffer(raw, dtype="<f8", count=n).astype(np.float64)
    elif dtype == "F16":
        a = np.frombuffer(raw, dtype="<f2", count=n).astype(np.float64)
    elif dtype == "BF16":
        bits = np.frombuffer(raw, dtype="<u2", count=n).astype(np.uint32) << 16
        a = bits.view(np.float32).astype(np.float64)
    else:
        raise ValueError("unsupported safetensors dtype %r" % dtype)
    return a.reshape(shape)


_ITEMSIZE = {"F32": 4, "F64": 8, "F16": 2, "BF16": 2}


def read_safetensors(path):
    """{name: float64 ndarray} plus the header's dtype per tensor (as ._dtypes)."""
    with open(path, "rb") as f:
        blob = f.read()
    if len(blob) < 8:
        raise ValueError("%s: too short" % path)
    (hlen,) = struct.unpack("<Q", blob[:8])
    if 8 + hlen > len(blob):
        raise ValueError("%s: header length %d exceeds file" % (path, hlen))
    header = json.loads(blob[8:8 + hlen].decode("utf-8"))
    data = memoryview(blob)[8 + hlen:]
    out, dtypes = {}, {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dt, shape, (b, e) = info["dtype"], list(info["shape"]), info["data_offsets"]
        if not (0 <= b <= e <= len(data)):
            raise ValueError("%s: %s: bad offsets" % (path, name))
        n = int(np.prod(shape)) if shape else 1
        if e - b != n * _ITEMSIZE[dt]:
            raise ValueError("%s: %s: size mismatch" % (path, name))
        out[name] = _decode(dt, bytes(data[b:e]), shape)
        dtypes[name] = dt
    return out, dtypes


def read_model_weights(model_dir):
    single = os.path.join(model_dir, "model.safetensors")
    index = os.path.join(model_dir, "model.safetensors.index.json")
    if os.path.exists(single):
        w, _ = read_safetensors(single)
        return w
    with open(index) as f:
        idx = json.load(f)
    weights = {}
    files = sorted(set(idx["weight_map"].values()))
    for fn in files:
        w, _ = read_safetensors(os.path.join(model_dir, fn))
        for k, v in w.items():
            if idx["weight_map"].get(k) != fn:
                raise ValueError("%s in %s but index says %s" % (k, fn, idx["weight_map"].get(k)))
            weights[k] = v
    missing = set(idx["weight_map"]) - set(weights)
    if missing:
        raise ValueError("index names tensors not found in shards: %s" % sorted(missing)[:3])
    return weights


# --------------------------------------------------------------------------- model
class Config:
    def __init__(self, model_dir):
        with open(os.path.join(model_dir, "config.json")) as f:
            c = json.load(f)
        self.raw = c
        arch = c["architectures"][0]
        if arch not in SUPPORTED_ARCHS:
            raise ValueError("unsupported architecture " + arch)
        self.arch = arch
        self.vocab = c["vocab_size"]
        self.hidden = c["hidden_size"]
        self.inter = c["intermediate_size"]
        self.n_layers = c["num_hidden_layers"]
        self.n_heads = c["num_attention_heads"]
        self.n_kv = c.get("num_key_value_heads") or self.n_heads
        self.head_dim = c.get("head_dim") or self.hidden // self.n_heads
        self.max_pos = c["max_position_embeddings"]
        default_theta = 10000.0
        self.theta = float(c.get("rope_theta", default_theta))
        self.eps = float(c["rms_norm_eps"])
        # LlamaConfig / MistralConfig / Qwen2Config all default tie_word_embeddings=False
        self.tie = bool(c.get("tie_word_embeddings", False))
        self.qkv_bias = arch == "Qwen2ForCausalLM" or bool(c.get("attention_bias", False))
        if c.get("hidden_act", "silu") != "silu":
            raise ValueError("unsupported hidden_act")
        self.rope_scaling = c.get("rope_scaling")
        self.layer_windows = layer_windows(c, arch, self.n_layers)
        eos = c.get("eos_token_id")
        gpath = os.path.join(model_dir, "generation_config.json")
        if os.path.exists(gpath):
            with open(gpath) as f:
                g = json.load(f)
            if g.get("eos_token_id") is not None:
                eos = g["eos_token_id"]
        if eos is None:
            eos = []
        self.eos_ids = list(eos) if isinstance(eos, list) else [eos]


def layer_windows(c, arch, n_layers):
    """Per-layer sliding window (None = full causal attention), as transformers decides it:
    MistralConfig(sliding_window=4096) applies one window to every layer (MistralModel uses
    create_sliding_window_causal_mask whenever config.sliding_window is not None);
    Qwen2Config sets sliding_window = None unless use_sliding_window (default False), and
    layer_types[i] = "sliding_attention" iff sliding_window is not None and
    i >= max_window_layers (default 28), unless layer_types is given explicitly."""
    if arch == "MistralForCausalLM":
        w = c.get("sliding_window", 4096)
        return [w] * n_layers
    if arch == "Qwen2ForCausalLM":
        w = c.get("sliding_window", 4096) if c.get("use_sliding_window", False) else None
        types = c.get("layer_types")
        if types is None:
            mwl = c.get("max_window_layers", 28)
            types = ["sliding_attention" if w is not None and i >= mwl else "full_attention"
                     for i in range(n_layers)]
        if len(types) != n_layers:
            raise ValueError("layer_types has %d entries for %d layers" % (len(types), n_layers))
        return [w if t == "sliding_attention" else None for t in types]
    return [None] * n_layers


def attention_mask(T, window):
    """[T, T] additive mask: 0 where query q may see key k, -inf elsewhere. Causal
    (k <= q), and with a window W also k > q - W (W keys, the query's own included)."""
    q = np.arange(T)[:, None]
    k = np.arange(T)[None, :]
    ok = k <= q
    if window is not None:
        ok &= k > q - window
    return np.where(ok, 0.0, -np.inf)


def rope_inv_freq(cfg):
    """inv_freq [head_dim/2], with transformers' llama3 scaling when configured."""
    d = cfg.head_dim
    inv_freq = 1.0 / (cfg.theta ** (np.arange(0, d, 2, dtype=np.float64) / d))
    rs = cfg.rope_scaling
    if rs is None:
        return inv_freq
    rtype = rs.get("rope_type", rs.get("type"))
    if rtype in (None, "default"):
        return inv_freq
    if rtype != "llama3":
        raise ValueError("unsupported rope_type %r" % rtype)
    factor = float(rs["factor"])
    low = float(rs["low_freq_factor"])
    high = float(rs["high_freq_factor"])
    old_ctx = float(rs["original_max_position_embeddings"])
    low_freq_wavelen = old_ctx / low
    high_freq_wavelen = old_ctx / high
    out = np.empty_like(inv_freq)
    for i, f in enumerate(inv_freq):
        wavelen = 2.0 * math.pi / f
        if wavelen < high_freq_wavelen:
            out[i] = f
        elif wavelen > low_freq_wavelen:
            out[i] = f / factor
        else:
            smooth = (old_ctx / wavelen - low) / (high - low)
            out[i] = (1.0 - smooth) * f / factor + smooth * f
    return out


def rms_norm(x, w, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def rotate_half(x):
    h = x.shape[-1] // 2
    return np.concatenate([-x[..., h:], x[..., :h]], axis=-1)


def apply_rope(x, positions, inv_freq):
    """x [n_heads, T, head_dim]; HF rotate-half convention."""
    ang = np.outer(positions.astype(np.float64), inv_freq)          # [T, d/2]
    emb = np.concatenate([ang, ang], axis=-1)                        # [T, d]
    return x * np.cos(emb)[None] + rotate_half(x) * np.sin(emb)[None]


def silu(x):
    return x / (1.0 + np.exp(-x))


def log_softmax(z):
    m = z.max(axis=-1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(axis=-1, keepdims=True))


def bf16_round(a):
    """float64 values -> float64 of the nearest BF16 of their float32, ties to even
    (written from the definition: of the two BF16 neighbours, the closer)."""
    f = np.ascontiguousarray(a, dtype=np.float32)
    lo_bits = f.view(np.uint32) & np.uint32(0xFFFF0000)
    lo = lo_bits.view(np.float32).astype(np.float64)
    hi = (lo_bits + np.uint32(0x10000)).view(np.float32).astype(np.float64)
    x = f.astype(np.float64)
    dl, dh = np.abs(x - lo), np.abs(hi - x)
    even_lo = ((lo_bits >> np.uint32(16)) & np.uint32(1)) == 0
    take_hi = (dh < dl) | ((dh == dl) & ~even_lo)
    return np.where(take_hi, hi, lo).reshape(np.shape(a))


def q8_round(a):
    """[rows, cols] float64 -> float64 of Q8 blocks of 32 along each row, dequantized."""
    x = np.ascontiguousarray(a, dtype=np.float32)
    rows, cols = x.shape
    out = np.empty_like(x)
    for b0 in range(0, cols, 32):
        blk = x[:, b0:b0 + 32]
        amax = np.abs(blk).max(axis=1)
        d = (amax / np.float32(127)).astype(np.float32)
        with np.errstate(divide="ignore"):
            inv = np.where(d > 0, np.float32(1) / d, np.float32(0)).astype(np.float32)
        q = np.clip(np.rint(blk * inv[:, None]), -127, 127).astype(np.float32)
        out[:, b0:b0 + 32] = q * d[:, None]
    return out.astype(np.float64)


def held(w, weights):
    """A matrix as lorad holds it under --weights (None: as it is)."""
    if weights is None or weights == "f32":
        return w
    if weights == "bf16":
        return bf16_round(w)
    if weights == "q8":
        return q8_round(w)
    raise ValueError("weights %r" % weights)


class Model:
    def __init__(self, model_dir, weights=None):
        self.dir = model_dir
        self.cfg = Config(model_dir)
        self.w = read_model_weights(model_dir)
        self.weights = weights
        if weights is not None:
            for name, v in self.w.items():
                if v.ndim == 2:
                    self.w[name] = held(v, weights)
        cfg = self.cfg
        if self.w["model.embed_tokens.weight"].shape != (cfg.vocab, cfg.hidden):
            raise ValueError("embed_tokens shape")
        for i in range(cfg.n_layers):
            for p in PROJS:
                name = module_name(i, p) + ".weight"
                if self.w[name].shape != proj_shape(cfg, p):
                    raise ValueError("%s: shape %s, expected %s"
                                     % (name, self.w[name].shape, proj_shape(cfg, p)))
        self.inv_freq = rope_inv_freq(cfg)


def module_name(layer, proj):
    part = "mlp" if proj in ("gate_proj", "up_proj", "down_proj") else "self_attn"
    return "model.layers.%d.%s.%s" % (layer, part, proj)


def proj_shape(cfg, proj):
    qd, kvd = cfg.n_heads * cfg.head_dim, cfg.n_kv * cfg.head_dim
    return {"q_proj": (qd, cfg.hidden), "k_proj": (kvd, cfg.hidden),
            "v_proj": (kvd, cfg.hidden), "o_proj": (cfg.hidden, qd),
            "gate_proj": (cfg.inter, cfg.hidden), "up_proj": (cfg.inter, cfg.hidden),
            "down_proj": (cfg.hidden, cfg.inter)}[proj]


# --------------------------------------------------------------------------- LoRA
def _pattern_lookup(patterns, module):
    """peft.utils.other.get_pattern_key: first key k with re.match(r"(.*\\.)?(k)$", module)."""
    for k, v in patterns.items():
        if re.match(r"(.*\.)?(%s)$" % k, module):
            return v
    return None


class Adapter:
    def __init__(self, adapter_dir):
        self.dir = adapter_dir
        with open(os.path.join(adapter_dir, "adapter_config.json")) as f:
            c = json.load(f)
        self.raw = c
        if c.get("peft_type", "LORA") != "LORA":
            raise ValueError("not a LoRA adapter")
        if c.get("use_dora"):
            raise ValueError("DoRA not supported")
        if c.get("bias", "none") != "none":
            raise ValueError("LoRA bias not supported")
        self.r = int(c["r"])
        self.alpha = float(c["lora_alpha"])
        self.rslora = bool(c.get("use_rslora", False))
        self.rank_pattern = c.get("rank_pattern") or {}
        self.alpha_pattern = c.get("alpha_pattern") or {}
        self.fan_in_fan_out = bool(c.get("fan_in_fan_out", False))
        self.target = c["target_modules"]
        layers = c.get("layers_to_transform")
        self.layers = None if layers is None else ([layers] if isinstance(layers, int)
                                                   else list(layers))
        path = os.path.join(adapter_dir, "adapter_model.safetensors")
        self.tensors, _ = read_safetensors(path)
        self.used = set()

    def targets(self, module):
        if isinstance(self.target, str):
            return re.fullmatch(self.target, module) is not None
        ok = any(module == t or module.endswith("." + t) for t in self.target)
        if ok and self.layers is not None:
            layer = int(module.split(".")[2])
            ok = layer in self.layers
        return ok

    def delta(self, module, shape):
        """(s, A [r,in], B [out,r]) for module ("model.layers.0.self_attn.q_proj"), or None."""
        if not self.targets(module):
            return None
        r = _pattern_lookup(self.rank_pattern, module)
        r = self.r if r is None else int(r)
        alpha = _pattern_lookup(self.alpha_pattern, module)
        alpha = self.alpha if alpha is None else float(alpha)
        s = alpha / math.sqrt(r) if self.rslora else alpha / r
        ka = "base_model.model.%s.lora_A.weight" % module
        kb = "base_model.model.%s.lora_B.weight" % module
        if ka not in self.tensors or kb not in self.tensors:
            raise ValueError("%s: targeted module %s has no lora_A/lora_B" % (self.dir, module))
        A, B = self.tensors[ka], self.tensors[kb]
        if self.fan_in_fan_out:   # weights stored transposed (Conv1D-style)
            A, B = A.T, B.T
        out, inp = shape
        if A.shape != (r, inp) or B.shape != (out, r):
            raise ValueError("%s: %s: A %s B %s, expected r=%d in=%d out=%d"
                             % (self.dir, module, A.shape, B.shape, r, inp, out))
        self.used.add(ka)
        self.used.add(kb)
        return s, A, B

    def check_all_used(self):
        extra = set(self.tensors) - self.used
        if extra:
            raise ValueError("%s: tensors for untargeted modules: %s"
                             % (self.dir, sorted(extra)[:3]))


_MODEL_CACHE = {}
_ADAPTER_CACHE = {}


def load_model(model_dir, weights=None):
    key = (os.path.abspath(model_dir), weights)
    if key not in _MODEL_CACHE:
        _MODEL_CACHE[key] = Model(model_dir, weights)
    return _MODEL_CACHE[key]


def load_adapter(adapter_dir):
    key = os.path.abspath(adapter_dir)
    if key not in _ADAPTER_CACHE:
        _ADAPTER_CACHE[key] = Adapter(adapter_dir)
    return _ADAPTER_CACHE[key]


# --------------------------------------------------------------------------- forward
def forward_logits(model, ids, adapters=(), merged=False, windows=None):
    """[T, vocab] float64 logits. adapters: [(Adapter, weight)]; windows: per-layer
    sliding windows overriding the config's (None entries: full attention)."""
    cfg, W = model.cfg, model.w
    ids = np.asarray(ids, dtype=np.int64)
    T = len(ids)
    if T == 0:
        raise ValueError("empty sequence")
    if ids.min() < 0 or ids.max() >= cfg.vocab:
        raise ValueError("token id out of range")
    if T > cfg.max_pos:
        raise ValueError("sequence longer than max_position_embeddings")
    if windows is None:
        windows = cfg.layer_windows
    if len(windows) != cfg.n_layers:
        raise ValueError("windows: %d entries for %d layers" % (len(windows), cfg.n_layers))
    deltas = {}
    for layer in range(cfg.n_layers):
        for p in PROJS:
            mod = module_name(layer, p)
            lst = []
            for ad, weight in adapters:
                d = ad.delta(mod, proj_shape(cfg, p))
                if d is not None:
                    lst.append((weight * d[0], d[1], d[2]))
            deltas[mod] = lst
    for ad, _ in adapters:
        ad.check_all_used()

    def linear(mod, x):
        w = W[mod + ".weight"]
        if merged:
            w = w.copy()
            for s, A, B in deltas[mod]:
                w += s * (B @ A)
            if model.weights is not None and deltas[mod]:
                w = held(w, model.weights)   # W' in the base's precision
            y = x @ w.T
        else:
            y = x @ w.T
            for s, A, B in deltas[mod]:
                y += s * ((x @ A.T) @ B.T)
        b = W.get(mod + ".bias")
        if b is not None:
            y = y + b
        return y

    nh, nkv, hd = cfg.n_heads, cfg.n_kv, cfg.head_dim
    rep = nh // nkv
    pos = np.arange(T)
    x = W["model.embed_tokens.weight"][ids]                                  # [T, H]
    for layer in range(cfg.n_layers):
        pre = "model.layers.%d." % layer
        mask = attention_mask(T, windows[layer])
        h = rms_norm(x, W[pre + "input_layernorm.weight"], cfg.eps)
        q = linear(pre + "self_attn.q_proj", h).reshape(T, nh, hd).transpose(1, 0, 2)
        k = linear(pre + "self_attn.k_proj", h).reshape(T, nkv, hd).transpose(1, 0, 2)
        v = linear(pre + "self_attn.v_proj", h).reshape(T, nkv, hd).transpose(1, 0, 2)
        q = apply_rope(q, pos, model.inv_freq)
        k = apply_rope(k, pos, model.inv_freq)
        att = np.empty((nh, T, hd))
        for head in range(nh):
            kvh = head // rep
            sc = q[head] @ k[kvh].T / math.sqrt(hd) + mask
            sc = np.exp(sc - sc.max(axis=-1, keepdims=True))
            sc /= sc.sum(axis=-1, keepdims=True)
            att[head] = sc @ v[kvh]
        att = att.transpose(1, 0, 2).reshape(T, nh * hd)
        x = x + linear(pre + "self_attn.o_proj", att)
        h = rms_norm(x, W[pre + "post_attention_layernorm.weight"], cfg.eps)
        g = linear(pre + "mlp.gate_proj", h)
        u = linear(pre + "mlp.up_proj", h)
        x = x + linear(pre + "mlp.down_proj", silu(g) * u)
    x = rms_norm(x, W["model.norm.weight"], cfg.eps)
    head_w = W["model.embed_tokens.weight"] if cfg.tie else W["lm_head.weight"]
    return x @ head_w.T


def _adapters(adapters):
    out = []
    for item in adapters:
        if isinstance(item, (tuple, list)):
            d, w = item
        else:
            d, w = item, 1.0
        out.append((load_adapter(d), float(w)))
    return out


def logprobs(model_dir, token_ids, adapters=(), merged=False, windows=None, weights=None):
    """[len(token_ids), vocab] float64 log-softmax at every position."""
    model = load_model(model_dir, weights)
    return log_softmax(forward_logits(model, token_ids, _adapters(adapters), merged,
                                      windows))


def greedy(model_dir, prompt_ids, n, adapters=(), merged=False):
    """Greedy continuation (no KV cache: recomputes the whole prefix each step)."""
    model = load_model(model_dir)
    ids = list(prompt_ids)
    out = []
    for _ in range(n):
        lp = logprobs(model_dir, ids, adapters, merged)[-1]
        t = int(np.argmax(lp))
        out.append(t)
        ids.append(t)
        if t in model.cfg.eos_ids:
            break
    return out


def torch_crosscheck(fixtures_dir):
    """One-off cross-check against torch ops (optional; needs Debian's python3-torch).
    A second forward pass written the way transformers' modeling_llama does it (repeat_kv,
    rotate_half, additive causal mask, F.softmax, F.silu, peft-style lora_B(lora_A(x)))
    with tensors decoded by torch itself (torch.frombuffer with torch.bfloat16 /
    torch.float16), compared with logprobs() for every fixture model and adapter.
    Returns the largest absolute difference."""
    import torch
    import torch.nn.functional as F
    torch_dt = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}

    def st_load(path):
        with open(path, "rb") as f:
            blob = bytearray(f.read())
        n = int.from_bytes(blob[:8], "little")
        hdr = json.loads(blob[8:8 + n])
        out = {}
        for k, v in hdr.items():
            if k == "__metadata__":
                continue
            b, e = v["data_offsets"]
            t = torch.frombuffer(blob, dtype=torch_dt[v["dtype"]], offset=8 + n + b,
                                 count=(e - b) // torch.tensor([], dtype=torch_dt[v["dtype"]]).element_size())
            out[k] = t.reshape(v["shape"]).to(torch.float64).clone()
        return out

    def load_dir(d):
        if os.path.exists(os.path.join(d, "model.safetensors")):
            return st_load(os.path.join(d, "model.safetensors"))
        idx = json.load(open(os.path.join(d, "model.safetensors.index.json")))
        w = {}
        for fn in set(idx["weight_map"].values()):
            w.update(st_load(os.path.join(d, fn)))
        return w

    def rotate_half_t(x):
        x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
        return torch.cat((-x2, x1), dim=-1)

    def tforward(mdir, ids, adapters):
        cfg = Config(mdir)
        w = load_dir(mdir)
        lora = {}
        for adir, wt in adapters:
            ad = Adapter(adir)   # config semantics (targets, patterns) from the reference
            tens = st_load(os.path.join(adir, "adapter_model.safetensors"))
            for layer in range(cfg.n_layers):
                for p in PROJS:
                    mod = module_name(layer, p)
                    d = ad.delta(mod, proj_shape(cfg, p))
                    if d is not None:
                        A = tens["base_model.model.%s.lora_A.weight" % mod]
                        B = tens["base_model.model.%s.lora_B.weight" % mod]
                        lora.setdefault(mod, []).append((wt * d[0], A, B))

        def lin(mod, x):
            y = F.linear(x, w[mod + ".weight"], w.get(mod + ".bias"))
            for s, A, B in lora.get(mod, []):
                y = y + F.linear(F.linear(x, A), B) * s
            return y

        def rms(x, wt):
            var = x.pow(2).mean(-1, keepdim=True)
            return wt * (x * torch.rsqrt(var + cfg.eps))

        T = len(ids)
        nh, nkv, hd = cfg.n_heads, cfg.n_kv, cfg.head_dim
        # transformers' _compute_default_rope_parameters / _compute_llama3_parameters
        inv = 1.0 / (cfg.theta ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd))
        rs = cfg.rope_scaling
        if rs and rs.get("rope_type", rs.get("type")) == "llama3":
            factor, lf, hf = rs["factor"], rs["low_freq_factor"], rs["high_freq_factor"]
            old = rs["original_max_position_embeddings"]
            wavelen = 2 * math.pi / inv
            inv_l = torch.where(wavelen > old / lf, inv / factor, inv)
            smooth = (old / wavelen - lf) / (hf - lf)
            smoothed = (1 - smooth) * inv_l / factor + smooth * inv_l
            medium = ~(wavelen < old / hf) * ~(wavelen > old / lf)
            inv = torch.where(medium, smoothed, inv_l)
        freqs = torch.outer(torch.arange(T, dtype=torch.float64), inv)
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos()[None, None], emb.sin()[None, None]
        # masking_utils: causal_mask_function and sliding_window_overlay, as a bool
        # "may attend" matrix turned into an additive mask (eager_mask)
        qi = torch.arange(T)[:, None]
        ki = torch.arange(T)[None, :]
        x = F.embedding(torch.tensor([ids]), w["model.embed_tokens.weight"])
        for layer in range(cfg.n_layers):
            pre = "model.layers.%d." % layer
            win = cfg.layer_windows[layer]
            allowed = ki <= qi
            if win is not None:
                allowed = allowed & (ki > qi - win)
            mask = torch.where(allowed, 0.0, float("-inf")).to(torch.float64)
            h = rms(x, w[pre + "input_layernorm.weight"])
            q = lin(pre + "self_attn.q_proj", h).view(1, T, nh, hd).transpose(1, 2)
            k = lin(pre + "self_attn.k_proj", h).view(1, T, nkv, hd).transpose(1, 2)
            v = lin(pre + "self_attn.v_proj", h).view(1, T, nkv, hd).transpose(1, 2)
            q = q * cos + rotate_half_t(q) * sin
            k = k * cos + rotate_half_t(k) * sin
            rep = nh // nkv
            k = k[:, :, None].expand(1, nkv, rep, T, hd).reshape(1, nh, T, hd)
            v = v[:, :, None].expand(1, nkv, rep, T, hd).reshape(1, nh, T, hd)
            att = torch.matmul(q, k.transpose(2, 3)) * hd ** -0.5 + mask
            att = F.softmax(att, dim=-1)
            o = torch.matmul(att, v).transpose(1, 2).reshape(1, T, nh * hd)
            x = x + lin(pre + "self_attn.o_proj", o)
            h = rms(x, w[pre + "post_attention_layernorm.weight"])
            x = x + lin(pre + "mlp.down_proj", F.silu(lin(pre + "mlp.gate_proj", h))
                        * lin(pre + "mlp.up_proj", h))
        x = rms(x, w["model.norm.weight"])
        head = w["model.embed_tokens.weight"] if cfg.tie else w["lm_head.weight"]
        return F.log_softmax(F.linear(x, head), dim=-1)[0].numpy()

    with open(os.path.join(fixtures_dir, "manifest.json")) as f:
        man = json.load(f)
    worst = 0.0
    runs = [(n, m["path"], []) for n, m in man["models"].items()]
    runs += [(n, man["models"][a["base"]]["path"], [(a["path"], 1.0)])
             for n, a in man["adapters"].items()]
    runs += [("mix", "llama_tied", [("adapters/ad_all", 0.7), ("adapters/ad_qv", 0.5)])]
    rng = np.random.default_rng(3)
    for name, mpath, ads in runs:
        mdir = os.path.join(fixtures_dir, mpath)
        cfg = Config(mdir)
        ids = [int(t) for t in rng.integers(0, cfg.vocab, size=min(80, cfg.max_pos))]
        ads = [(os.path.join(fixtures_dir, p), w) for p, w in ads]
        a = tforward(mdir, ids, ads)
        b = logprobs(mdir, ids, ads)
        d = float(np.abs(a - b).max())
        worst = max(worst, d)
        print("torch crosscheck %-16s T=%d max|diff| %.2e" % (name, len(ids), d))
    return worst


def parse_adapter_arg(s):
    """'PATH' or 'PATH:WEIGHT' -> (path, weight)."""
    if ":" in s:
        p, w = s.rsplit(":", 1)
        try:
            return p, float(w)
        except ValueError:
            pass
    return s, 1.0


def main(argv):
    import argparse
    if argv[:1] == ["torchcheck"]:
        worst = torch_crosscheck(argv[1])
        print("worst %.2e" % worst)
        return 0 if worst < 1e-9 else 1
    ap = argparse.ArgumentParser(description="numpy reference forward pass")
    ap.add_argument("model")
    ap.add_argument("--ids", required=True)
    ap.add_argument("--adapter", action="append", default=[])
    ap.add_argument("--merge", action="store_true")
    ap.add_argument("-n", type=int, default=8)
    ap.add_argument("--top", type=int, default=5)
    a = ap.parse_args(argv)
    prompt = [int(t) for t in a.ids.split(",") if t]
    ads = [parse_adapter_arg(s) for s in a.adapter]
    gen = greedy(a.model, prompt, a.n, ads, a.merge)
    lp = logprobs(a.model, prompt + gen, ads, a.merge)
    res = {"prompt_ids": prompt, "ids": gen, "logprobs": []}
    for j, t in enumerate(gen):
        row = lp[len(prompt) + j - 1]
        top = np.argsort(-row, kind="stable")[:a.top]
        res["logprobs"].append({"id": t, "logprob": float(row[t]),
                                "top": [{"id": int(i), "logprob": float(row[i])} for i in top]})
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
