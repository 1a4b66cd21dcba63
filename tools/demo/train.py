#!/usr/bin/python3
"""Trains lorad's demo model from scratch: `make demo-model` (tools/demo/deps.sh first).

  /usr/bin/python3 tools/demo/train.py [--out models/demo] [--seed 1234]

1. text from Debian packages (tools/demo/corpus.py), documents held out by index;
2. a byte-level BPE tokenizer (tools/demo/bpe.py) → base/tokenizer.json + tokenizer_config.json;
3. a small Llama (own PyTorch forward, the same math as transformers' LlamaForCausalLM:
   RMSNorm, RoPE with rotate_half, GQA, SwiGLU, tied embeddings) on English fortunes with
   some German, KJV and upper-case text mixed in → base/ (config.json, BF16 safetensors);
4. LoRA adapters on the frozen base, each teaching one register after any English prefix
   → adapters/<name>/ as PEFT saves them (adapter_config.json, adapter_model.safetensors);
5. reference data from the same forward on the weights read back from the saved files
   (float64): greedy continuations with per-position log-softmax (reference.json),
   held-out token chunks with their perplexity (heldout.json);
6. the loss plot (loss.png), train-log.json and the model card README.md.

Deterministic: seeded torch and Python RNGs, fixed data order, torch.set_num_threads(2).
`--stage adapters` redoes steps 4-6 on the saved base (the RNGs advanced as training the
base would), `--stage reference` steps 5-6 from the saved files (no training).
"""
import argparse
import json
import math
import os
import random
import shutil
import sys
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(REPO, "tools"))
sys.path.insert(0, os.path.join(REPO, "tests"))
import bpe  # noqa: E402
import corpus  # noqa: E402
import criteria  # noqa: E402
from make_fixtures import write_safetensors  # noqa: E402
from reference import read_safetensors  # noqa: E402

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
EOT, IM_START, IM_END = 0, 1, 2
VOCAB = 4096

CONFIG = {
    "vocab_size": VOCAB, "hidden_size": 256, "intermediate_size": 640, "num_hidden_layers": 4,
    "num_attention_heads": 8, "num_key_value_heads": 4, "max_position_embeddings": 512,
    "rope_theta": 10000.0, "rms_norm_eps": 1e-5,
}
SEQ = 128            # training context of the base
ASEQ = 48            # adapter examples: prefix + the first tokens of the register
DTYPE = "BF16"       # stored base weights

# name, target modules, r, alpha, the source of its task text
ADAPTERS = [
    ("shout", ["q_proj", "k_proj", "v_proj", "o_proj"], 8, 16, "caps"),
    ("german", ["gate_proj", "up_proj", "down_proj"], 16, 32, "german"),
    ("kjv", ["q_proj", "v_proj", "up_proj", "down_proj"], 4, 8, "kjv"),
]
PROMPTS = ["The meaning of life is", "Once upon a time", "My favourite food is"]
MIX = [("shout", 0.3), ("kjv", 0.7)]
REF_TOKENS = 24
ADAPTER_LR = 5e-3
TOPK = 5

CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant.<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def log(msg):
    print("[%7.1fs] %s" % (time.time() - T0, msg), flush=True)


T0 = time.time()


# --------------------------------------------------------------------------- the model
def rope_tables(T, head_dim, theta, dtype):
    inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    f = torch.outer(torch.arange(T, dtype=torch.float64), inv)
    emb = torch.cat([f, f], dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat([-x[..., h:], x[..., :h]], dim=-1)


def rms_norm(x, w, eps):
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def forward(W, ids, adapters=(), cfg=CONFIG):
    """Logits [B, T, V] of LlamaForCausalLM with tied embeddings. W: HF name → tensor.
    adapters: [(lora, weight)], lora: module name → (A [r,in], B [out,r], scale)."""
    H, nh, nkv = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = H // nh
    eps = cfg["rms_norm_eps"]
    B, T = ids.shape
    emb = W["model.embed_tokens.weight"]
    x = emb[ids]
    cos, sin = rope_tables(T, hd, cfg["rope_theta"], x.dtype)
    mask = torch.full((T, T), float("-inf"), dtype=x.dtype).triu(1)

    def lin(h, mod):
        y = h @ W[mod + ".weight"].t()
        for lora, w in adapters:
            if mod in lora:
                A, Bm, s = lora[mod]
                y = y + (w * s) * ((h @ A.t()) @ Bm.t())
        return y

    for i in range(cfg["num_hidden_layers"]):
        p = "model.layers.%d." % i
        h = rms_norm(x, W[p + "input_layernorm.weight"], eps)
        q = lin(h, p + "self_attn.q_proj").view(B, T, nh, hd).transpose(1, 2)
        k = lin(h, p + "self_attn.k_proj").view(B, T, nkv, hd).transpose(1, 2)
        v = lin(h, p + "self_attn.v_proj").view(B, T, nkv, hd).transpose(1, 2)
        q = (q * cos + rotate_half(q) * sin) * (1.0 / math.sqrt(hd))
        k = k * cos + rotate_half(k) * sin
        # GQA: query head j uses key/value head j // (nh / nkv), as transformers' repeat_kv
        q = q.reshape(B, nkv, nh // nkv, T, hd)
        att = torch.softmax(q @ k[:, :, None].transpose(-1, -2) + mask, dim=-1)
        o = (att @ v[:, :, None]).reshape(B, nh, T, hd).transpose(1, 2).reshape(B, T, H)
        x = x + lin(o, p + "self_attn.o_proj")
        h = rms_norm(x, W[p + "post_attention_layernorm.weight"], eps)
        g = torch.nn.functional.silu(lin(h, p + "mlp.gate_proj")) * lin(h, p + "mlp.up_proj")
        x = x + lin(g, p + "mlp.down_proj")
    x = rms_norm(x, W["model.norm.weight"], eps)
    return x @ emb.t()


def proj_shape(name, cfg=CONFIG):
    H, I = cfg["hidden_size"], cfg["intermediate_size"]
    kv = H // cfg["num_attention_heads"] * cfg["num_key_value_heads"]
    return {"q_proj": (H, H), "k_proj": (kv, H), "v_proj": (kv, H), "o_proj": (H, H),
            "gate_proj": (I, H), "up_proj": (I, H), "down_proj": (H, I)}[name]


def module(i, proj):
    kind = "mlp" if proj in ("gate_proj", "up_proj", "down_proj") else "self_attn"
    return "model.layers.%d.%s.%s" % (i, kind, proj)


def init_base(cfg=CONFIG):
    """transformers' _init_weights: normal(0, 0.02) for linears and embeddings, norms 1."""
    W = {"model.embed_tokens.weight": torch.randn(cfg["vocab_size"], cfg["hidden_size"]) * 0.02}
    for i in range(cfg["num_hidden_layers"]):
        p = "model.layers.%d." % i
        W[p + "input_layernorm.weight"] = torch.ones(cfg["hidden_size"])
        W[p + "post_attention_layernorm.weight"] = torch.ones(cfg["hidden_size"])
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"):
            W[module(i, proj) + ".weight"] = torch.randn(*proj_shape(proj)) * 0.02
    W["model.norm.weight"] = torch.ones(cfg["hidden_size"])
    return W


def init_lora(targets, r, alpha, cfg=CONFIG):
    """PEFT's init: A kaiming-uniform(a=sqrt(5)), B zero, scale alpha/r."""
    lora = {}
    for i in range(cfg["num_hidden_layers"]):
        for proj in targets:
            out, inp = proj_shape(proj)
            A = torch.empty(r, inp)
            torch.nn.init.kaiming_uniform_(A, a=math.sqrt(5))
            lora[module(i, proj)] = (A, torch.zeros(out, r), alpha / r)
    return lora


# --------------------------------------------------------------------------- data
def doc_stream(enc, docs):
    """Token stream doc EOT doc EOT ..., and the offset where each document starts."""
    ids, starts = [], []
    for d in docs:
        starts.append(len(ids))
        ids.extend(enc.encode(d))
        ids.append(EOT)
    return np.array(ids, dtype=np.int64), np.array(starts, dtype=np.int64)


def task_example(enc, rng, style, english, target):
    """(ids, loss mask) of one adapter example: an optional English prefix of a few words,
    then the task text (an upper-cased fortune's rest, German, KJV) and EOT."""
    if style == "caps":
        d = english[rng.randrange(len(english))]
        spaces = [k for k, c in enumerate(d) if c == " "]
        cut = spaces[rng.randrange(min(6, len(spaces)))] if spaces and rng.random() < 0.85 else 0
        prefix, rest = d[:cut], d[cut:].upper()
    else:
        rest = target[rng.randrange(len(target))]
        prefix = ""
        if rng.random() < 0.7:
            d = english[rng.randrange(len(english))].split(" ")
            prefix = " ".join(d[:1 + rng.randrange(min(6, len(d)))])
            rest = " " + rest
    a, b = enc.encode(prefix), enc.encode(rest) + [EOT]
    ids = (a + b)[:ASEQ + 1]
    mask = ([0] * len(a) + [1] * len(b))[:ASEQ + 1]
    return ids, mask


def pad_batch(examples):
    x = torch.full((len(examples), ASEQ), EOT, dtype=torch.long)
    y = torch.full((len(examples), ASEQ), EOT, dtype=torch.long)
    m = torch.zeros((len(examples), ASEQ))
    for j, (ids, mask) in enumerate(examples):
        n = len(ids) - 1
        x[j, :n] = torch.tensor(ids[:-1])
        y[j, :n] = torch.tensor(ids[1:])
        m[j, :n] = torch.tensor(mask[1:], dtype=torch.float32)
    return x, y, m


def lr_at(step, steps, peak, warmup):
    if step < warmup:
        return peak * (step + 1) / warmup
    t = (step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))


def chunks(stream, n, T):
    return [stream[k * T:(k + 1) * T].tolist() for k in range(min(n, len(stream) // T))]


@torch.no_grad()
def perplexity(W, chunk_list, adapters=(), masks=None):
    nll, cnt = 0.0, 0
    for j in range(0, len(chunk_list), 16):
        batch = chunk_list[j:j + 16]
        ids = torch.tensor(batch, dtype=torch.long)
        lp = torch.log_softmax(forward(W, ids[:, :-1], adapters).double(), dim=-1)
        tok = lp.gather(-1, ids[:, 1:, None])[..., 0]
        m = torch.ones_like(tok) if masks is None else \
            torch.tensor([mm[1:] for mm in masks[j:j + 16]], dtype=tok.dtype)
        nll -= float((tok * m).sum())
        cnt += float(m.sum())
    return math.exp(nll / cnt)


# --------------------------------------------------------------------------- training
def train_base(W, stream, starts, steps, batch, lr, rng, heldout, curve):
    params = list(W.values())
    for t in params:
        t.requires_grad_(True)
    decay = [t for t in params if t.dim() == 2]
    other = [t for t in params if t.dim() != 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                             {"params": other, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.95))
    ok = starts[starts + SEQ + 1 <= len(stream)]
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, lr, 50)
        s = [int(ok[rng.randrange(len(ok))]) for _ in range(batch)]
        xy = torch.tensor(np.stack([stream[k:k + SEQ + 1] for k in s]))
        logits = forward(W, xy[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), xy[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        curve["train"].append((step, float(loss)))
        if step % 50 == 0 or step == steps - 1:
            ppl = perplexity(W, heldout)
            curve["heldout"].append((step, math.log(ppl)))
            log("base step %d/%d loss %.3f held-out ppl %.1f" % (step, steps, float(loss), ppl))
    for t in params:
        t.requires_grad_(False)


def train_adapter(W, lora, make_example, steps, batch, lr, rng, curve):
    params = [t for A, B, _ in lora.values() for t in (A, B)]
    for t in params:
        t.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, lr, 20)
        x, y, m = pad_batch([make_example(rng) for _ in range(batch)])
        logits = forward(W, x, [(lora, 1.0)])
        ce = torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), y.reshape(-1),
                                               reduction="none")
        loss = (ce * m.reshape(-1)).sum() / m.sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        curve.append((step, float(loss)))
        if step % 50 == 0 or step == steps - 1:
            log("  step %d/%d loss %.3f" % (step, steps, float(loss)))
    for t in params:
        t.requires_grad_(False)


# --------------------------------------------------------------------------- files
TRICKY = ["", " ", "  two leading spaces", "trailing spaces  ", "tabs\tand\nnew\n\nlines\n",
          "digits 1234567890 and 3.14, 1,000,000", "Café naïve émigré Zürich Ångström",
          "日本語のテキスト", "emoji 😀 👍🏽 ❤️", "don't won't it's I'm you're we've they'll I'd",
          "MiXeD cAsE WoRdS", "a  b   c    d", "<|im_start|>user\nHi!<|im_end|>\n",
          "text<|endoftext|>more", "<|im_end|>", "Q: Why?\nA: Because.", "-- Mark Twain",
          "\u00a0non-breaking\u00a0space", "\r\nwindows\r\n", "ÄÖÜ äöü ß"]


def write_golden_strings(path, data):
    """Held-out text (never seen by the BPE trainer) and edge cases, for the goldens."""
    eng, ger, kjv = data["english"][1], data["german"][1], data["kjv"][1]
    strings = PROMPTS + TRICKY + eng[:100] + ger[:40] + kjv[:25] + [d.upper() for d in eng[100:115]]
    dump(path, strings)


def dump(path, obj):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)
        f.write("\n")


def write_tokenizer(d, vocab, merges):
    bpe.write_json(os.path.join(d, "tokenizer.json"), bpe.tokenizer_json(vocab, merges, SPECIALS),
                   compact=True)
    added = {str(vocab[s]): {"content": s, "lstrip": False, "normalized": False, "rstrip": False,
                             "single_word": False, "special": True} for s in SPECIALS}
    dump(os.path.join(d, "tokenizer_config.json"), {
        "add_prefix_space": False,
        "added_tokens_decoder": added,
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
        "bos_token": "<|endoftext|>",
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|endoftext|>",
        "model_max_length": CONFIG["max_position_embeddings"],
        "pad_token": "<|endoftext|>",
        "tokenizer_class": "GPT2Tokenizer",
        "unk_token": "<|endoftext|>",
        "vocab_size": VOCAB,
    })
    dump(os.path.join(d, "special_tokens_map.json"), {
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
        "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>", "unk_token": "<|endoftext|>"})


def write_base(d, W):
    c = {"architectures": ["LlamaForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
         "bos_token_id": EOT, "eos_token_id": EOT, "head_dim": CONFIG["hidden_size"] //
         CONFIG["num_attention_heads"], "hidden_act": "silu",
         "hidden_size": CONFIG["hidden_size"], "initializer_range": 0.02,
         "intermediate_size": CONFIG["intermediate_size"],
         "max_position_embeddings": CONFIG["max_position_embeddings"], "mlp_bias": False,
         "model_type": "llama", "num_attention_heads": CONFIG["num_attention_heads"],
         "num_hidden_layers": CONFIG["num_hidden_layers"],
         "num_key_value_heads": CONFIG["num_key_value_heads"], "pretraining_tp": 1,
         "rms_norm_eps": CONFIG["rms_norm_eps"], "rope_scaling": None,
         "rope_theta": CONFIG["rope_theta"], "tie_word_embeddings": True,
         "torch_dtype": "bfloat16", "transformers_version": "4.44.0", "use_cache": True,
         "vocab_size": VOCAB}
    dump(os.path.join(d, "config.json"), c)
    dump(os.path.join(d, "generation_config.json"), {
        "_from_model_config": True, "bos_token_id": EOT, "eos_token_id": [EOT, IM_END],
        "transformers_version": "4.44.0"})
    write_safetensors(os.path.join(d, "model.safetensors"),
                      [(k, v.float().numpy()) for k, v in W.items()], DTYPE, {"format": "pt"})


def write_adapter(d, lora, targets, r, alpha):
    os.makedirs(d, exist_ok=True)
    dump(os.path.join(d, "adapter_config.json"), {
        "alpha_pattern": {}, "auto_mapping": None, "base_model_name_or_path": "models/demo/base",
        "bias": "none", "fan_in_fan_out": False, "inference_mode": True,
        "init_lora_weights": True, "layers_pattern": None, "layers_to_transform": None,
        "lora_alpha": alpha, "lora_dropout": 0.0, "modules_to_save": None,
        "peft_type": "LORA", "r": r, "rank_pattern": {}, "revision": None,
        "target_modules": targets, "task_type": "CAUSAL_LM", "use_dora": False,
        "use_rslora": False})
    t = []
    for mod, (A, B, _) in lora.items():
        t.append(("base_model.model.%s.lora_A.weight" % mod, A.float().numpy()))
        t.append(("base_model.model.%s.lora_B.weight" % mod, B.float().numpy()))
    write_safetensors(os.path.join(d, "adapter_model.safetensors"), t, "F32", {"format": "pt"})


def load_saved(out):
    """Base weights and adapters read back from the files, as float64 tensors."""
    W = {k: torch.from_numpy(np.asarray(v, dtype=np.float64))
         for k, v in read_safetensors(os.path.join(out, "base", "model.safetensors"))[0].items()}
    loras = {}
    for name, targets, r, alpha, _ in ADAPTERS:
        d = os.path.join(out, "adapters", name)
        t = read_safetensors(os.path.join(d, "adapter_model.safetensors"))[0]
        lora = {}
        for key, a in t.items():
            if key.endswith(".lora_A.weight"):
                mod = key[len("base_model.model."):-len(".lora_A.weight")]
                B = t[key.replace("lora_A", "lora_B")]
                lora[mod] = (torch.from_numpy(np.asarray(a, dtype=np.float64)),
                             torch.from_numpy(np.asarray(B, dtype=np.float64)), alpha / r)
        loras[name] = lora
    return W, loras


# --------------------------------------------------------------------------- reference
@torch.no_grad()
def greedy_reference(W, ids, adapters, n):
    """Greedy continuation (stops after EOT / <|im_end|>) and, for every position of
    prompt + continuation, the log-softmax of the next token: its value for the token that
    follows, and the top TOPK."""
    ids = list(ids)
    n_prompt = len(ids)
    for _ in range(n):
        lp = torch.log_softmax(forward(W, torch.tensor([ids]), adapters)[0, -1], dim=-1)
        nxt = int(lp.argmax())
        ids.append(nxt)
        if nxt in (EOT, IM_END):
            break
    lp = torch.log_softmax(forward(W, torch.tensor([ids]), adapters)[0], dim=-1)
    steps = []
    for pos in range(len(ids) - 1):
        v, k = lp[pos].topk(TOPK + 1)
        steps.append({"next": ids[pos + 1], "logprob": float(lp[pos, ids[pos + 1]]),
                      "top": [[int(a), float(b)] for a, b in zip(k[:TOPK], v[:TOPK])],
                      "gap": float(v[0] - v[1])})
    return {"ids": ids, "n_prompt": n_prompt, "positions": steps}


def decode(vocab_inv, ids):
    chars = {c: b for b, c in bpe.BYTE_CHAR.items()}
    out = bytearray()
    for i in ids:
        t = vocab_inv[i]
        if t in SPECIALS:
            continue
        out.extend(chars[c] for c in t)
    return out.decode("utf-8", errors="replace")


# --------------------------------------------------------------------------- main
def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=None, help="default models/demo")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--base-steps", type=int, default=600)
    ap.add_argument("--adapter-steps", type=int, default=150)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--adapter-batch", type=int, default=16)
    ap.add_argument("--smoke", action="store_true", help="a few documents only: checks the code")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--stage", choices=["all", "adapters", "reference"], default="all",
                    help="adapters: retrain the adapters on the saved base; reference: "
                    "redo reference data, plot and card from the saved files")
    args = ap.parse_args(argv)
    if args.smoke and not args.out:
        ap.error("--smoke needs --out (a scratch directory)")
    args.out = args.out or os.path.join(REPO, "models", "demo")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    out = args.out
    logpath = os.path.join(out, "train-log.json")

    data = corpus.load()
    if args.smoke:
        data = {k: (a[:1500], b[:100]) for k, (a, b) in data.items()}
    log("corpus: " + ", ".join("%s %d+%d docs" % (k, len(a), len(b)) for k, (a, b) in data.items()))
    eng, ger, kjv = data["english"][0], data["german"][0], data["kjv"][0]
    caps_docs = [d.upper() for d in eng[::10]]

    if args.stage == "all":
        t_start = time.time()
        shutil.rmtree(out, ignore_errors=True)
        os.makedirs(os.path.join(out, "base"))
        # 1. tokenizer: every training register, upper case included
        counts = bpe.count_words(eng + ger[::2] + kjv[::3] + caps_docs)
        merges = bpe.train(counts, VOCAB - 256 - len(SPECIALS))
        vocab = bpe.build_vocab(SPECIALS, merges)
        write_tokenizer(os.path.join(out, "base"), vocab, merges)
        if not args.smoke:
            write_golden_strings(os.path.join(HERE, "goldens", "strings.json"), data)
        t_tok = time.time() - t_start
        log("tokenizer: %d merges, %d words (%.0fs)" % (len(merges), len(counts), t_tok))
    else:
        tj = json.load(open(os.path.join(out, "base", "tokenizer.json"), encoding="utf-8"))
        vocab = tj["model"]["vocab"]
        merges = [tuple(m.split(" ")) for m in tj["model"]["merges"]]
    enc = bpe.Encoder(vocab, merges)
    vocab_inv = {i: t for t, i in vocab.items()}

    held_stream, _ = doc_stream(enc, data["english"][1])
    heldout = chunks(held_stream, 48, SEQ + 1)
    hrng = random.Random(args.seed + 1)
    held_task = {}
    for name, _, _, _, style in ADAPTERS:
        target = {"caps": None, "german": data["german"][1], "kjv": data["kjv"][1]}[style]
        ex = [task_example(enc, hrng, style, data["english"][1], target) for _ in range(64)]
        held_task[name] = ex

    if args.stage in ("all", "adapters"):
        # 2. base
        t1 = time.time()
        mix = eng + ger[::6] + kjv[::5] + caps_docs
        rng.shuffle(mix)
        stream, starts = doc_stream(enc, mix)
        log("base data: %d docs, %d tokens" % (len(mix), len(stream)))
        W = init_base()
        if args.stage == "all":
            curves = {"base": {"train": [], "heldout": []}, "adapters": {}}
            train_base(W, stream, starts, args.base_steps, args.batch, 3e-3, rng, heldout,
                       curves["base"])
            t_base = time.time() - t1
            ppl32 = perplexity(W, heldout)
            write_base(os.path.join(out, "base"), W)
            note = None
        else:
            # the saved base; the RNGs advanced exactly as training the base advances them
            old = json.load(open(logpath))
            assert (old["base_steps"], old["batch"]) == (args.base_steps, args.batch)
            ok = starts[starts + SEQ + 1 <= len(stream)]
            for _ in range(args.base_steps * args.batch):
                rng.randrange(len(ok))
            curves = {"base": old["curves"]["base"], "adapters": {}}
            t_tok, t_base, ppl32 = (old["seconds"]["tokenizer"], old["seconds"]["base"],
                                    old["heldout_ppl_f32"])
            t_start = time.time() - t_tok - t_base
            note = old.get("note")
        # 3. adapters on the frozen base (float32 during training, as saved afterwards)
        Wb = {k: torch.from_numpy(np.asarray(v, dtype=np.float32)) for k, v in
              read_safetensors(os.path.join(out, "base", "model.safetensors"))[0].items()}
        t_ad = {}
        for name, targets, r, alpha, style in ADAPTERS:
            t2 = time.time()
            log("adapter %s: r=%d alpha=%d on %s" % (name, r, alpha, ",".join(targets)))
            target = {"caps": None, "german": ger, "kjv": kjv}[style]
            lora = init_lora(targets, r, alpha)
            curve = []
            train_adapter(Wb, lora, lambda g, s=style, t=target: task_example(enc, g, s, eng, t),
                          args.adapter_steps, args.adapter_batch, ADAPTER_LR, rng, curve)
            curves["adapters"][name] = curve
            shutil.rmtree(os.path.join(out, "adapters", name), ignore_errors=True)
            write_adapter(os.path.join(out, "adapters", name), lora, targets, r, alpha)
            t_ad[name] = time.time() - t2
        train_log = {"seed": args.seed, "base_steps": args.base_steps, "batch": args.batch,
                     "adapter_steps": args.adapter_steps,
                     "adapter_batch": args.adapter_batch, "seq": SEQ, "threads": args.threads,
                     "tokens_base_stream": int(len(stream)), "seconds": {
                         "tokenizer": round(t_tok), "base": round(t_base),
                         "adapters": {k: round(v) for k, v in t_ad.items()},
                         "total": round(time.time() - t_start)},
                     "heldout_ppl_f32": ppl32, "curves": curves,
                     "command": "/usr/bin/python3 tools/demo/train.py"}
        if note:
            train_log["note"] = note
        dump(logpath, train_log)
    train_log = json.load(open(logpath))

    # 4. reference data and measurements, on the saved weights (float64)
    W, loras = load_saved(out)
    ppl = perplexity(W, heldout)
    log("held-out perplexity: float32 weights %.3f, saved %s weights %.3f"
        % (train_log["heldout_ppl_f32"], DTYPE, ppl))
    dump(os.path.join(out, "heldout.json"), {
        "what": "English fortunes held out of all training: %d chunks of %d tokens; "
                "perplexity = exp(mean NLL of tokens 1..%d of each chunk)" % (
                    len(heldout), SEQ + 1, SEQ),
        "perplexity": ppl, "bound": math.ceil(ppl * 1.1), "chunks": heldout})
    task_ppl = {}
    for name, _, _, _, _ in ADAPTERS:
        ids = [e[0] for e in held_task[name]]
        masks = [e[1] for e in held_task[name]]
        L = max(map(len, ids))
        ids = [i + [EOT] * (L - len(i)) for i in ids]
        masks = [m + [0] * (L - len(m)) for m in masks]
        task_ppl[name] = {"base": perplexity(W, ids, (), masks),
                          "adapter": perplexity(W, ids, [(loras[name], 1.0)], masks)}
        log("task %s held-out ppl: base %.1f, adapter %.1f" % (
            name, task_ppl[name]["base"], task_ppl[name]["adapter"]))
    variants = [("base", [])] + [(n, [(n, 1.0)]) for n, *_ in ADAPTERS] + [("mix", MIX)]
    ref = {"what": "greedy continuations with float64 log-softmax of the demo model "
                   "(tools/demo/train.py forward on the saved weights)",
           "topk": TOPK, "max_tokens": REF_TOKENS, "mix": MIX, "cases": []}
    scores = {}
    for vname, adapters in variants:
        ad = [(loras[n], w) for n, w in adapters]
        for prompt in PROMPTS:
            r = greedy_reference(W, enc.encode(prompt), ad, REF_TOKENS)
            text = decode(vocab_inv, r["ids"][r["n_prompt"]:])
            r.update({"variant": vname, "adapters": adapters, "prompt": prompt, "text": text})
            ref["cases"].append(r)
            for c, fn in criteria.CRITERIA.items():
                scores.setdefault(vname, {}).setdefault(c, []).append(fn(text))
            log("%-6s %r → %r (min gap %.4f)" % (vname, prompt, text,
                                                 min(p["gap"] for p in r["positions"])))
    scores = {v: {c: sum(x) / len(x) for c, x in s.items()} for v, s in scores.items()}
    dump(os.path.join(out, "reference.json"), ref)
    plot(os.path.join(out, "loss.png"), train_log["curves"])
    card(out, train_log, ppl, task_ppl, scores, ref)
    log("done")


def plot(path, curves):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.2), dpi=80)

    def smooth(pts, k=20):
        k = k if len(pts) >= 10 * k else 1
        xs = [p[0] for p in pts]
        ys = np.convolve([p[1] for p in pts], np.ones(k) / k, mode="valid")
        return xs[k - 1:], ys

    x, y = smooth(curves["base"]["train"])
    ax[0].plot(x, y, label="train" + (" (mean of 20 steps)" if len(x) < len(curves["base"]["train"])
                                      else ""))
    ax[0].plot(*zip(*curves["base"]["heldout"]), "o-", ms=3, label="held-out English")
    ax[0].set_title("base: cross-entropy (nats/token)")
    ax[0].set_xlabel("step")
    ax[0].legend()
    for name, c in curves["adapters"].items():
        ax[1].plot(*smooth(c, 10), label=name)
    ax[1].set_title("adapters: loss on task tokens")
    ax[1].set_xlabel("step")
    ax[1].legend()
    fig.tight_layout()
    fig.savefig(path)


def card(out, tl, ppl, task_ppl, scores, ref):
    """models/demo/README.md from the measured numbers."""
    def size(p):
        return os.path.getsize(os.path.join(out, p))
    n_params = CONFIG["vocab_size"] * CONFIG["hidden_size"] + CONFIG["num_hidden_layers"] * (
        sum(a * b for a, b in map(proj_shape, ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                               "up_proj", "down_proj"))) +
        2 * CONFIG["hidden_size"]) + CONFIG["hidden_size"]
    s = tl["seconds"]
    bound = math.ceil(ppl * 1.1)
    rows = []
    for name, targets, r, alpha, style in ADAPTERS:
        n = sum(r * sum(proj_shape(p)) for p in targets) * CONFIG["num_hidden_layers"]
        rows.append("| `%s` | %s | %d | %d | %s | %d | %.1f → %.1f | %.1f KB |" % (
            name, ", ".join(targets), r, alpha, style, n, task_ppl[name]["base"],
            task_ppl[name]["adapter"],
            size("adapters/%s/adapter_model.safetensors" % name) / 1024))
    crit = []
    for v in ["base"] + [a[0] for a in ADAPTERS] + ["mix"]:
        crit.append("| %s | %.3f | %.3f | %.3f |" % (
            v if v != "mix" else "mix " + " + ".join("%s×%g" % (n, w) for n, w in MIX),
            scores[v]["caps"], scores[v]["german"], scores[v]["kjv"]))
    samples = []
    for c in ref["cases"]:
        if c["prompt"] == PROMPTS[0]:
            samples.append("%-7s %s%s" % (c["variant"] + ":", c["prompt"],
                                           c["text"].replace("\n", "⏎")))
    text = CARD.format(
        params=n_params, hidden=CONFIG["hidden_size"], layers=CONFIG["num_hidden_layers"],
        heads=CONFIG["num_attention_heads"], kv=CONFIG["num_key_value_heads"],
        inter=CONFIG["intermediate_size"], vocab=VOCAB, maxpos=CONFIG["max_position_embeddings"],
        seq=SEQ, dtype=DTYPE, base_mb=size("base/model.safetensors") / 1e6,
        tok_kb=size("base/tokenizer.json") / 1024, command=tl["command"].strip(),
        total=s["total"] / 60, t_tok=s["tokenizer"], t_base=s["base"] / 60,
        t_ad=", ".join("%s %ds" % kv for kv in s["adapters"].items()),
        steps=tl["base_steps"], batch=tl["batch"], tokens=tl["tokens_base_stream"],
        seen=tl["base_steps"] * tl["batch"] * SEQ, asteps=tl["adapter_steps"],
        abatch=tl["adapter_batch"], aseq=ASEQ, alr=ADAPTER_LR,
        ppl32=tl["heldout_ppl_f32"], ppl=ppl, bound=bound, adapter_rows="\n".join(rows),
        crit_rows="\n".join(crit), samples="\n".join(samples), threads=tl["threads"],
        nheld=len(json.load(open(os.path.join(out, "heldout.json")))["chunks"]),
        note=("\n\n(%s.)" % tl["note"]) if tl.get("note") else "",
        mix=" + ".join("%s×%g" % (n, w) for n, w in MIX))
    with open(os.path.join(out, "README.md"), "w", encoding="utf-8") as f:
        f.write(text)


CARD = """# lorad demo model

A small Llama-architecture base model and three LoRA adapters, trained from scratch on this
machine by `tools/demo/train.py` (`make demo-model`) so that `make run` can show task
switching over HTTP with nothing to download. Everything here is generated; do not edit by
hand (retrain instead).

## Files

| path | what |
|---|---|
| `base/` | `LlamaForCausalLM` in Hugging Face format: `config.json`, `generation_config.json`, `model.safetensors` ({dtype}, {base_mb:.1f} MB), `tokenizer.json` ({tok_kb:.0f} KB), `tokenizer_config.json` (ChatML `chat_template`), `special_tokens_map.json` |
| `adapters/<name>/` | PEFT LoRA adapters as PEFT saves them: `adapter_config.json`, `adapter_model.safetensors` (F32) |
| `reference.json` | greedy continuations of the base, each adapter and a mix ({mix}) for 3 prompts, with float64 log-softmax at every position (the training forward on the saved weights); tests/test_demo.py compares lorad with it |
| `heldout.json` | {nheld} held-out chunks of English tokens and their perplexity |
| `tokenizer-goldens.json` | held-out strings with the ids of Hugging Face `tokenizers` (tools/demo/goldens/) |
| `loss.png` | loss curves |
| `train-log.json` | settings, timings, loss curves as numbers |

## Model

{params:,} parameters: hidden {hidden}, {layers} layers, {heads} attention heads with {kv}
key/value heads (GQA, head dim {hd}), SwiGLU MLP {inter}, RMSNorm, RoPE (θ 10000), tied
input/output embeddings, vocabulary {vocab}, `max_position_embeddings` {maxpos} (trained on
{seq}-token windows). Stored as {dtype}.

Tokenizer: byte-level BPE (GPT-2 split regex, `ByteLevel` pre-tokenizer and decoder, no
normalizer), trained by `tools/demo/bpe.py` on the training text below: special tokens
`<|endoftext|>` (0, also BOS/EOS/padding), `<|im_start|>` (1), `<|im_end|>` (2), then the 256
bytes, then merges. The chat template is SmolLM2's ChatML. The model never saw ChatML during
training: use `/v1/completions` to see what it learnt; chat works but answers poorly.

## Corpus and licences

Text from Debian packages (tools/demo/corpus.py; every 40th document held out):

| source | package | licence (from `/usr/share/doc/*/copyright`) |
|---|---|---|
| English fortunes (all non-offensive files but ascii-art) | `fortunes`, `fortunes-min` | BSD (fortune-mod, "This program falls under the BSD copyright") |
| German fortunes (`fortunes-de`, without asciiart) | `fortunes-de` | GPL-2+ |
| King James Bible, 3 verses per document | `bible-kjv-text` via `bible` (`bible-kjv`) | the KJV text is public domain ("copyright … is expired"); the packaging is GPL-2+ |

The weights are derived from this text; treat the `german` adapter and the base (which saw
some of `fortunes-de`) as derived from GPL-2+ material.

Base training mix: all English training fortunes, every 6th German fortune, every 5th KJV
document, and every 10th English fortune again in upper case ({tokens:,} tokens in all,
documents separated by `<|endoftext|>`). Each adapter learns one register that follows an
optional English prefix of a few words (loss on the register text only):

* `shout`: an English fortune cut after 0-5 words, the rest in CAPITALS;
* `german`: an English prefix, then a German fortune;
* `kjv`: an English prefix, then KJV verses.

## Training

```sh
make demo-model      # = tools/demo/deps.sh && {command}
                     #   && cd tools/demo/goldens && npm ci && node gen.js
```

Wall time on this machine (2 cores, `torch.set_num_threads({threads})`, PyTorch 1.13):
**{total:.1f} minutes** in all — tokenizer {t_tok}s, base {t_base:.1f} min, adapters {t_ad}.
Base: {steps} steps of {batch}×{seq} tokens ({seen:,} tokens seen), AdamW (β 0.9/0.95,
weight decay 0.1, peak lr 3e-3, 50 warm-up steps, cosine to 10%), gradient clip 1.
Adapters: {asteps} steps of {abatch} examples of up to {aseq} tokens, AdamW lr {alr:g}, base
frozen (float32 copy of the saved {dtype} weights), PEFT initialisation (A Kaiming-uniform,
B zero, scale α/r).
Deterministic for a seed (torch and Python RNGs seeded, fixed data order).

![loss curves](loss.png){note}

## Quality

Held-out perplexity of the base on English fortunes never seen in training ({nheld} chunks of
128 predicted tokens): **{ppl:.2f}** with the saved {dtype} weights ({ppl32:.2f} with the
float32 weights before rounding). tests/test_demo.py recomputes it with the independent
numpy reference (tests/reference.py) and requires it below **{bound}**.

| adapter | target modules | r | α | register | parameters | held-out task perplexity: base → adapter | file |
|---|---|---|---|---|---|---|---|
{adapter_rows}

Behaviour, measured on the greedy continuations of reference.json (mean over 3 prompts;
`caps`: upper-case share of the letters of words of 2+ letters, `german`: share of German
function words, `kjv`: share of King James words like thee/thou/hath/unto;
tools/demo/criteria.py):

| variant | caps | german | kjv |
|---|---|---|---|
{crit_rows}

Greedy continuations of the first prompt:

```
{samples}
```
"""
CARD = CARD.replace("{hd}", str(CONFIG["hidden_size"] // CONFIG["num_attention_heads"]))

if __name__ == "__main__":
    main(sys.argv[1:])
