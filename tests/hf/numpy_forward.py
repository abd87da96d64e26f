#!/usr/bin/python3
"""An independent forward pass of GPT-2 and GPT-NeoX (Pythia) in numpy.

Written from the architectures' published descriptions (Radford et al. 2019;
Black et al. 2022, "GPT-NeoX-20B"; Su et al. 2021 for rotary embeddings), not
from this project's C++, so that the C++ loader can be checked against a
second implementation. It reads a Hugging Face model directory as downloaded
(config.json, model.safetensors or sharded model-*-of-*.safetensors with
model.safetensors.index.json) and computes in float64.

  numpy_forward.py MODEL_DIR --ids 1,2,3 [--ids ...]   prints per-token log-probs (JSON)
  numpy_forward.py MODEL_DIR --check reference.npz     compares with saved outputs
"""
import argparse
import json
import math
import os
import struct
import sys

import numpy as np

# ---------------------------------------------------------------- safetensors
# Format: u64 little-endian header length N, N bytes of JSON
# {name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": ...},
# then the raw little-endian tensor bytes; offsets count from the end of the header.

_DTYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64,
           "I64": np.int64, "I32": np.int32, "U8": np.uint8, "BOOL": np.bool_}


def read_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 8:
        raise ValueError(f"{path}: shorter than the 8-byte header length")
    (n,) = struct.unpack("<Q", data[:8])
    if 8 + n > len(data):
        raise ValueError(f"{path}: header length {n} runs past the end of the file")
    header = json.loads(data[8:8 + n].decode("utf-8"))
    base = 8 + n
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        b, e = t["data_offsets"]
        raw = data[base + b:base + e]
        if len(raw) != e - b:
            raise ValueError(f"{path}: tensor {name} is truncated")
        shape = tuple(t["shape"])
        if t["dtype"] == "BF16":
            # bfloat16 is the top half of a float32.
            u = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
            arr = u.view(np.float32)
        else:
            arr = np.frombuffer(raw, dtype=np.dtype(_DTYPES[t["dtype"]]).newbyteorder("<"))
        out[name] = arr.reshape(shape).astype(np.float64)
    return out


def read_weights(model_dir):
    single = os.path.join(model_dir, "model.safetensors")
    if os.path.exists(single):
        return read_safetensors(single)
    with open(os.path.join(model_dir, "model.safetensors.index.json")) as f:
        index = json.load(f)
    weights = {}
    for shard in sorted(set(index["weight_map"].values())):
        weights.update(read_safetensors(os.path.join(model_dir, shard)))
    return weights


# ---------------------------------------------------------------- pieces

def layer_norm(x, w, b, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def gelu_tanh(x):  # GPT-2's "gelu_new"
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


_erf = np.vectorize(math.erf)


def gelu_erf(x):  # the exact GELU ("gelu")
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


def causal_attention(q, k, v):
    """q, k, v: [H, T, d] -> [T, H*d], softmax(q k^T / sqrt(d)) v with a causal mask."""
    h, t, d = q.shape
    s = q @ k.transpose(0, 2, 1) / math.sqrt(d)
    s = s + np.triu(np.full((t, t), -np.inf), 1)
    s = s - s.max(-1, keepdims=True)
    p = np.exp(s)
    p = p / p.sum(-1, keepdims=True)
    return (p @ v).transpose(1, 0, 2).reshape(t, h * d)


def log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


# ---------------------------------------------------------------- GPT-2

def gpt2_forward(cfg, w, ids):
    """ids: [T] -> (logits [T, V], hidden states [n_layer + 1, T, D])."""
    p = "transformer." if "transformer.wte.weight" in w else ""
    eps = cfg.get("layer_norm_epsilon", 1e-5)
    nh = cfg["n_head"]
    t = len(ids)
    x = w[p + "wte.weight"][ids] + w[p + "wpe.weight"][:t]
    hidden = []
    for i in range(cfg["n_layer"]):
        hidden.append(x)
        L = f"{p}h.{i}."
        a = layer_norm(x, w[L + "ln_1.weight"], w[L + "ln_1.bias"], eps)
        qkv = a @ w[L + "attn.c_attn.weight"] + w[L + "attn.c_attn.bias"]  # Conv1D: [in, out]
        q, k, v = np.split(qkv, 3, axis=-1)
        heads = lambda m: m.reshape(t, nh, -1).transpose(1, 0, 2)
        o = causal_attention(heads(q), heads(k), heads(v))
        x = x + o @ w[L + "attn.c_proj.weight"] + w[L + "attn.c_proj.bias"]
        m = layer_norm(x, w[L + "ln_2.weight"], w[L + "ln_2.bias"], eps)
        m = gelu_tanh(m @ w[L + "mlp.c_fc.weight"] + w[L + "mlp.c_fc.bias"])
        x = x + m @ w[L + "mlp.c_proj.weight"] + w[L + "mlp.c_proj.bias"]
    x = layer_norm(x, w[p + "ln_f.weight"], w[p + "ln_f.bias"], eps)
    hidden.append(x)
    out = w.get("lm_head.weight", w[p + "wte.weight"])  # tied
    return x @ out.T, np.stack(hidden)


# ---------------------------------------------------------------- GPT-NeoX

def rotary(x, ndims, base):
    """Rotates the first `ndims` features of x [H, T, d] by position (GPT-NeoX
    pairs feature i with i + ndims/2, not adjacent features)."""
    if ndims == 0:
        return x
    t = x.shape[1]
    inv_freq = 1.0 / (base ** (np.arange(0, ndims, 2, dtype=np.float64) / ndims))
    ang = np.outer(np.arange(t, dtype=np.float64), inv_freq)  # [T, ndims/2]
    cos, sin = np.cos(ang), np.sin(ang)
    r, rest = x[..., :ndims], x[..., ndims:]
    x1, x2 = r[..., :ndims // 2], r[..., ndims // 2:]
    rot = np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return np.concatenate([rot, rest], axis=-1)


def neox_forward(cfg, w, ids):
    eps = cfg.get("layer_norm_eps", 1e-5)
    nh = cfg["num_attention_heads"]
    d = cfg["hidden_size"]
    hd = d // nh
    rope = cfg.get("rope_parameters") or {}
    pct = cfg.get("rotary_pct", rope.get("partial_rotary_factor", 1.0))
    base = cfg.get("rotary_emb_base", rope.get("rope_theta", 10000.0))
    ndims = int(hd * pct)
    act = gelu_erf if cfg.get("hidden_act", "gelu") == "gelu" else gelu_tanh
    parallel = cfg.get("use_parallel_residual", True)
    t = len(ids)
    x = w["gpt_neox.embed_in.weight"][ids]
    hidden = []

    def attention(h, L):
        qkv = h @ w[L + "attention.query_key_value.weight"].T + w[L + "attention.query_key_value.bias"]
        qkv = qkv.reshape(t, nh, 3 * hd).transpose(1, 0, 2)  # per head: q, k, v
        q, k, v = qkv[..., :hd], qkv[..., hd:2 * hd], qkv[..., 2 * hd:]
        o = causal_attention(rotary(q, ndims, base), rotary(k, ndims, base), v)
        return o @ w[L + "attention.dense.weight"].T + w[L + "attention.dense.bias"]

    def mlp(h, L):
        h = act(h @ w[L + "mlp.dense_h_to_4h.weight"].T + w[L + "mlp.dense_h_to_4h.bias"])
        return h @ w[L + "mlp.dense_4h_to_h.weight"].T + w[L + "mlp.dense_4h_to_h.bias"]

    for i in range(cfg["num_hidden_layers"]):
        hidden.append(x)
        L = f"gpt_neox.layers.{i}."
        ln1 = lambda h: layer_norm(h, w[L + "input_layernorm.weight"], w[L + "input_layernorm.bias"], eps)
        ln2 = lambda h: layer_norm(h, w[L + "post_attention_layernorm.weight"],
                                   w[L + "post_attention_layernorm.bias"], eps)
        if parallel:
            x = x + attention(ln1(x), L) + mlp(ln2(x), L)
        else:
            x = x + attention(ln1(x), L)
            x = x + mlp(ln2(x), L)
    x = layer_norm(x, w["gpt_neox.final_layer_norm.weight"], w["gpt_neox.final_layer_norm.bias"], eps)
    hidden.append(x)
    out = w.get("embed_out.weight", w["gpt_neox.embed_in.weight"])
    return x @ out.T, np.stack(hidden)


# ---------------------------------------------------------------- driver

def load(model_dir):
    with open(os.path.join(model_dir, "config.json")) as f:
        cfg = json.load(f)
    fwd = {"gpt2": gpt2_forward, "gpt_neox": neox_forward}.get(cfg.get("model_type"))
    if fwd is None:
        raise ValueError(f"{model_dir}: unknown model_type {cfg.get('model_type')!r}")
    return cfg, read_weights(model_dir), fwd


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model_dir")
    ap.add_argument("--ids", action="append", default=[], help="comma-separated token ids")
    ap.add_argument("--check", help="a reference .npz (ids, log_probs, hidden_states)")
    ap.add_argument("--tolerance", type=float, default=1e-4)
    a = ap.parse_args()
    cfg, w, fwd = load(a.model_dir)
    if a.check:
        ref = np.load(a.check)
        worst_lp = worst_h = 0.0
        for b, ids in enumerate(ref["ids"]):
            logits, hidden = fwd(cfg, w, ids)
            worst_lp = max(worst_lp, float(np.abs(log_softmax(logits) - ref["log_probs"][b]).max()))
            worst_h = max(worst_h, float(np.abs(hidden - ref["hidden_states"][:, b]).max()))
        ok = worst_lp <= a.tolerance and worst_h <= a.tolerance
        print(json.dumps({"model": a.model_dir, "max_abs_log_prob_diff": worst_lp,
                          "max_abs_hidden_diff": worst_h, "ok": ok}))
        sys.exit(0 if ok else 1)
    result = []
    for s in a.ids:
        ids = np.array([int(v) for v in s.split(",")], dtype=np.int64)
        lp = log_softmax(fwd(cfg, w, ids)[0])
        # log p(ids[i+1] | ids[..i]) for every position that has a next token.
        result.append([float(lp[i, ids[i + 1]]) for i in range(len(ids) - 1)])
    print(json.dumps({"log_probs": result}))


if __name__ == "__main__":
    main()
