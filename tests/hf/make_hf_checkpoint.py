#!/usr/bin/python3
"""Writes a small RANDOM GPT-2 or GPT-NeoX (Pythia) model directory laid out as
Hugging Face's `save_pretrained` and the hub lay it out, next to a real GPT-2
tokenizer, so that the C++ loader can be tested end to end (score, eval,
serve) without torch or the network. numpy only; written from the published
formats (safetensors, config.json, tokenizers' tokenizer.json) and the layout
of the transformers-made directories in tests/data/hf_reference/.

  make_hf_checkpoint.py --arch gpt2|gpt_neox --out DIR --gpt2-vocab VOCAB_DIR
      [--seed 1234] [--dtype float32|float16|bfloat16] [--layers 2] [--width 64]
      [--heads 4] [--ffn 256] [--context 128] [--rotary-pct 0.25] [--qk-std 0.02]
      [--vocab-pad N] [--padding-logit X] [--parallel-residual 1|0] [--shards 1] [--rope-style old|new]
      [--prefix 1|0] [--legacy-buffers 0|1] [--tokenizer auto|json|files|both|neox|none]

VOCAB_DIR holds OpenAI's encoder.json and vocab.bpe (data/gpt2/, fetched by
scripts/prepare_corpus.sh). Same arguments give byte-identical files; the
weights depend only on --seed and the shapes, so the float16/bfloat16 files
hold the float32 weights rounded to nearest-even.

Weights: matrices N(0, 0.02); biases 0.1*N(0, 1); LayerNorm weights
1 + 0.1*N(0, 1) and biases 0.1*N(0, 1), so that a loader that drops any of
them gives different log-probs (check with tests/hf/numpy_forward.py).
--qk-std S scales the query and key weights to N(0, S) (same draws): at 0.02
attention is nearly uniform and a wrong rotary changes log-probs by only
~3e-4; at 0.2 by ~1e-2, so use it where rotary or masking is under test.

gpt2: GPT2LMHeadModel names (`transformer.h.N.attn.c_attn.weight`, Conv1D
  stored [in, out]); --prefix 0 drops `transformer.` as the hub's gpt2 repo
  does. Tied output (no lm_head.weight in the file), vocab_size 50257 unless
  --vocab-pad is given. Tokenizer (auto): vocab.json (= encoder.json), merges.txt
  (= vocab.bpe, "#version: 0.2" first), tokenizer_config.json,
  special_tokens_map.json.
gpt_neox: GPTNeoXForCausalLM names, untied `embed_out.weight`, vocab_size
  50257 rounded up to --vocab-pad (default 128: 50304 as Pythia; the padded
  rows are random too, or all score --padding-logit X: a model that prefers
  rows that are no token, to test that nothing samples them). query_key_value rows are per head [H, 3, Dh]. Tokenizer
  (auto): tokenizer.json built from GPT-2's vocabulary exactly as tokenizers
  saves it (ids are GPT-2's; bos/eos 50256) and tokenizer_config.json.
  --tokenizer neox: GPT-NeoX-20B's layout instead (see neox_tokenizer_json:
  <|endoftext|> at 0, GPT-2's tokens shifted by 2, whitespace added tokens, NFC).
--rope-style (alias --config-style): new writes transformers 5's keys
  (`dtype`; gpt_neox `rope_parameters`); old writes the keys of older hub
  configs (`torch_dtype`; gpt2 `n_ctx` and n_inner only when set; gpt_neox
  `rotary_pct`, `rotary_emb_base`), as Pythia's and gpt2's repositories have.
--legacy-buffers 1 adds the buffers old checkpoints carry, which a loader
  must ignore: gpt2 `h.N.attn.bias` F32 [1,1,C,C] and `h.N.attn.masked_bias`
  F32 []; gpt_neox `attention.bias` BOOL [1,1,C,C], `attention.masked_bias`
  F32 [] and `attention.rotary_emb.inv_freq` F32 [ndims/2].
--shards N > 1 writes model-0000K-of-0000N.safetensors (tensors in name order,
  split into N runs of about equal bytes) and model.safetensors.index.json.
"""
import argparse
import json
import os
import shutil
import struct
import sys

import numpy as np

GPT2_VOCAB = 50257
EOT = 50256  # <|endoftext|>
NEOX_TOKENS = 50281  # --tokenizer neox: GPT-2's 50257 + <|padding|> + 23 whitespace tokens
OLD_VERSION = "4.24.0"  # what Pythia's hub configs carry
NEW_VERSION = "5.17.0"  # what tests/data/hf_reference was made with

# ---------------------------------------------------------------- safetensors
# u64 LE header length N, N bytes of JSON (padded with spaces to a multiple of
# 8), then the tensors' bytes back to back. Like the Rust writer, tensors are
# ordered by dtype (widest first) then name, and the header lists them in
# that order after "__metadata__".

_ST = {"F64": (np.float64, 17), "I64": (np.int64, 18), "F32": (np.float32, 15),
       "I32": (np.int32, 13), "BF16": (np.uint16, 12), "F16": (np.float16, 11),
       "U8": (np.uint8, 4), "BOOL": (np.bool_, 0)}


def to_bf16_bits(x):
    """float32 -> bfloat16 bits (uint16), rounded to nearest, ties to even."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def encode(value, dtype):
    """A float64/bool array -> its little-endian bytes as safetensors `dtype`."""
    if dtype == "BF16":
        raw = to_bf16_bits(value.astype(np.float32))
    else:
        raw = value.astype(np.dtype(_ST[dtype][0]).newbyteorder("<"))
    return np.ascontiguousarray(raw).tobytes()


def write_safetensors(path, tensors):
    """tensors: {name: (dtype, shape, bytes)} -> one .safetensors file."""
    names = sorted(tensors, key=lambda n: (-_ST[tensors[n][0]][1], n))
    header = {"__metadata__": {"format": "pt"}}
    offset = 0
    for n in names:
        dt, shape, raw = tensors[n]
        header[n] = {"dtype": dt, "shape": list(shape), "data_offsets": [offset, offset + len(raw)]}
        offset += len(raw)
    h = json.dumps(header, separators=(",", ":")).encode("utf-8")
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h)
        for n in names:
            f.write(tensors[n][2])


def split_shards(names, sizes, n_shards):
    """Name-ordered runs; a shard closes once it holds its share of the bytes
    still to place (or the names left are just enough); none is empty."""
    shards, cur, cur_bytes, left = [], [], 0, sum(sizes[n] for n in names)
    for i, n in enumerate(names):
        cur.append(n)
        cur_bytes += sizes[n]
        left_names, left_shards = len(names) - i - 1, n_shards - len(shards) - 1
        if left_shards > 0 and (cur_bytes * (left_shards + 1) >= left
                                or left_names == left_shards):
            shards, cur, left, cur_bytes = shards + [cur], [], left - cur_bytes, 0
    shards.append(cur)
    return shards


def write_weights(out, tensors, n_shards):
    if n_shards <= 1:
        write_safetensors(os.path.join(out, "model.safetensors"), tensors)
        return
    names = sorted(tensors)
    if n_shards > len(names):
        sys.exit(f"--shards {n_shards}: only {len(names)} tensors to split")
    sizes = {n: len(tensors[n][2]) for n in names}
    weight_map = {}
    for k, group in enumerate(split_shards(names, sizes, n_shards)):
        fname = f"model-{k + 1:05d}-of-{n_shards:05d}.safetensors"
        write_safetensors(os.path.join(out, fname), {n: tensors[n] for n in group})
        weight_map.update({n: fname for n in group})
    params = sum(int(np.prod(tensors[n][1], dtype=np.int64)) for n in names)
    index = {"metadata": {"total_parameters": params, "total_size": sum(sizes.values())},
             "weight_map": dict(sorted(weight_map.items()))}
    write_json(os.path.join(out, "model.safetensors.index.json"), index)


def write_json(path, obj, **kw):
    """As transformers writes configs: 2-space indent, sorted keys, final newline."""
    with open(path, "w", encoding="utf-8") as f:
        f.write(json.dumps(obj, indent=2, sort_keys=True, **kw) + "\n")


# ---------------------------------------------------------------- weights

class Init:
    """Draws every parameter from one generator in the order they are asked for."""
    def __init__(self, seed):
        self.rng = np.random.default_rng(seed)

    def matrix(self, *shape):
        return 0.02 * self.rng.standard_normal(shape)
    def bias(self, n):
        return 0.1 * self.rng.standard_normal(n)
    def ln(self, n):  # (weight, bias)
        return 1.0 + 0.1 * self.rng.standard_normal(n), 0.1 * self.rng.standard_normal(n)


def causal_mask(c):
    return np.tril(np.ones((c, c), dtype=np.float64)).reshape(1, 1, c, c)


def gpt2_params(a, init, vocab):
    d, f, p = a.width, a.ffn, "transformer." if a.prefix else ""
    w = {p + "wte.weight": init.matrix(vocab, d), p + "wpe.weight": init.matrix(a.context, d)}
    for i in range(a.layers):
        L = f"{p}h.{i}."
        w[L + "ln_1.weight"], w[L + "ln_1.bias"] = init.ln(d)
        w[L + "attn.c_attn.weight"] = init.matrix(d, 3 * d)  # Conv1D: [in, out], out = q|k|v
        w[L + "attn.c_attn.weight"][:, :2 * d] *= a.qk_std / 0.02
        w[L + "attn.c_attn.bias"] = init.bias(3 * d)
        w[L + "attn.c_proj.weight"] = init.matrix(d, d)
        w[L + "attn.c_proj.bias"] = init.bias(d)
        w[L + "ln_2.weight"], w[L + "ln_2.bias"] = init.ln(d)
        w[L + "mlp.c_fc.weight"] = init.matrix(d, f)
        w[L + "mlp.c_fc.bias"] = init.bias(f)
        w[L + "mlp.c_proj.weight"] = init.matrix(f, d)
        w[L + "mlp.c_proj.bias"] = init.bias(d)
    w[p + "ln_f.weight"], w[p + "ln_f.bias"] = init.ln(d)
    buffers = {}
    if a.legacy_buffers:
        for i in range(a.layers):
            buffers[f"{p}h.{i}.attn.bias"] = ("F32", causal_mask(a.context))
            buffers[f"{p}h.{i}.attn.masked_bias"] = ("F32", np.array(-1e4))
    return w, buffers


def neox_params(a, init, vocab, ndims):
    d, f = a.width, a.ffn
    w = {"gpt_neox.embed_in.weight": init.matrix(vocab, d)}
    for i in range(a.layers):
        L = f"gpt_neox.layers.{i}."
        w[L + "input_layernorm.weight"], w[L + "input_layernorm.bias"] = init.ln(d)
        w[L + "post_attention_layernorm.weight"], w[L + "post_attention_layernorm.bias"] = init.ln(d)
        qkv = init.matrix(a.heads, 3, d // a.heads, d)  # nn.Linear [out, in], out = [H, 3, Dh]
        qkv[:, :2] *= a.qk_std / 0.02
        w[L + "attention.query_key_value.weight"] = qkv.reshape(3 * d, d)
        w[L + "attention.query_key_value.bias"] = init.bias(3 * d)
        w[L + "attention.dense.weight"] = init.matrix(d, d)
        w[L + "attention.dense.bias"] = init.bias(d)
        w[L + "mlp.dense_h_to_4h.weight"] = init.matrix(f, d)
        w[L + "mlp.dense_h_to_4h.bias"] = init.bias(f)
        w[L + "mlp.dense_4h_to_h.weight"] = init.matrix(d, f)
        w[L + "mlp.dense_4h_to_h.bias"] = init.bias(d)
    w["gpt_neox.final_layer_norm.weight"], w["gpt_neox.final_layer_norm.bias"] = init.ln(d)
    w["embed_out.weight"] = init.matrix(vocab, d)
    if a.padding_logit:
        # Feature 0 of the final hidden state becomes the constant 1, and the
        # rows past the tokenizer's tokens read only it: their logit is
        # exactly --padding-logit at every position, above every real token's.
        n_tokens = NEOX_TOKENS if a.tokenizer == "neox" else GPT2_VOCAB
        w["gpt_neox.final_layer_norm.weight"][0] = 0.0
        w["gpt_neox.final_layer_norm.bias"][0] = 1.0
        w["embed_out.weight"][n_tokens:] = 0.0
        w["embed_out.weight"][n_tokens:, 0] = a.padding_logit
    buffers = {}
    if a.legacy_buffers:
        inv_freq = 1.0 / (10000.0 ** (np.arange(0, ndims, 2, dtype=np.float64) / ndims))
        for i in range(a.layers):
            L = f"gpt_neox.layers.{i}.attention."
            buffers[L + "bias"] = ("BOOL", causal_mask(a.context) > 0)
            buffers[L + "masked_bias"] = ("F32", np.array(-1e9))
            buffers[L + "rotary_emb.inv_freq"] = ("F32", inv_freq)
    return w, buffers


# ---------------------------------------------------------------- configs
_ST_NAME = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}

def gpt2_config(a, vocab):
    new = a.style == "new"
    c = {"activation_function": "gelu_new", "architectures": ["GPT2LMHeadModel"],
         "attn_pdrop": 0.0, "bos_token_id": EOT, "embd_pdrop": 0.0, "eos_token_id": EOT,
         "initializer_range": 0.02, "layer_norm_epsilon": 1e-05, "model_type": "gpt2",
         "n_embd": a.width, "n_head": a.heads, "n_layer": a.layers,
         "n_positions": a.context, "resid_pdrop": 0.0, "summary_activation": None,
         "summary_first_dropout": 0.1, "summary_proj_to_labels": True,
         "summary_type": "cls_index", "summary_use_proj": True,
         "transformers_version": NEW_VERSION if new else OLD_VERSION,
         "use_cache": True, "vocab_size": vocab}
    inner = None if a.ffn == 4 * a.width else a.ffn
    if new:
        c.update({"add_cross_attention": False, "dtype": a.dtype, "n_inner": inner,
                  "pad_token_id": None, "reorder_and_upcast_attn": False,
                  "scale_attn_by_inverse_layer_idx": False, "scale_attn_weights": True,
                  "tie_word_embeddings": True})
    else:
        c.update({"n_ctx": a.context, "torch_dtype": a.dtype})
        if inner is not None:
            c["n_inner"] = inner
    return c


def neox_config(a, vocab):
    c = {"architectures": ["GPTNeoXForCausalLM"], "bos_token_id": EOT,
         "eos_token_id": EOT, "hidden_act": "gelu", "hidden_size": a.width,
         "initializer_range": 0.02, "intermediate_size": a.ffn, "layer_norm_eps": 1e-05,
         "max_position_embeddings": a.context, "model_type": "gpt_neox",
         "num_attention_heads": a.heads, "num_hidden_layers": a.layers,
         "tie_word_embeddings": False, "use_cache": True,
         "use_parallel_residual": bool(a.parallel_residual), "vocab_size": vocab}
    if a.style == "new":
        c.update({"attention_bias": True, "attention_dropout": 0.0, "classifier_dropout": 0.1,
                  "dtype": a.dtype, "hidden_dropout": 0.0, "is_decoder": False,
                  "pad_token_id": None, "transformers_version": NEW_VERSION,
                  "rope_parameters": {"partial_rotary_factor": a.rotary_pct,
                                      "rope_theta": 10000, "rope_type": "default"}})
    else:
        c.update({"rotary_emb_base": 10000, "rotary_pct": a.rotary_pct,
                  "torch_dtype": a.dtype, "transformers_version": OLD_VERSION})
    return c


# ---------------------------------------------------------------- tokenizer

def read_gpt2_vocab(vocab_dir):
    enc_path, bpe_path = (os.path.join(vocab_dir, n) for n in ("encoder.json", "vocab.bpe"))
    with open(enc_path, encoding="utf-8") as f, open(bpe_path, encoding="utf-8") as g:
        vocab, lines = json.load(f), g.read().split("\n")
    if not lines or not lines[0].startswith("#version"):
        sys.exit(f"{bpe_path}: expected '#version: 0.2' on the first line")
    merges = [ln.split(" ") for ln in lines[1:] if ln]
    bad = [m for m in merges if len(m) != 2]
    if len(vocab) != GPT2_VOCAB or vocab.get("<|endoftext|>") != EOT or bad:
        sys.exit(f"{vocab_dir}: not GPT-2's vocabulary ({len(vocab)} entries, "
                 f"{len(bad)} malformed merges)")
    return enc_path, bpe_path, vocab, merges


def tokenizer_json(vocab, merges):
    """tokenizer.json as tokenizers 0.23 saves a ByteLevel BPE (see
    tests/data/hf_reference/gpt2-tokenizer/tokenizer.json.gz)."""
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                  "use_regex": True}
    seq = lambda i, t: {"Sequence": {"id": i, "type_id": t}}
    return {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [{"id": EOT, "content": "<|endoftext|>", "single_word": False,
                          "lstrip": False, "rstrip": False, "normalized": False,
                          "special": True}],
        "normalizer": None,
        "pre_tokenizer": byte_level,
        "post_processor": {"type": "TemplateProcessing", "single": [seq("A", 0)],
                           "pair": [seq("A", 0), seq("B", 1)], "special_tokens": {}},
        "decoder": dict(byte_level, add_prefix_space=True),
        "model": {"type": "BPE", "dropout": None, "unk_token": None,
                  "continuing_subword_prefix": None, "end_of_word_suffix": None,
                  "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": dict(sorted(vocab.items(), key=lambda kv: kv[1])),
                  "merges": merges},
    }


def neox_tokenizer_json(vocab, merges):
    """tokenizer.json in GPT-NeoX-20B's (Pythia's) layout, made from GPT-2's
    vocabulary: <|endoftext|> 0 and <|padding|> 1 (special, in model.vocab
    too), every other GPT-2 token at its id + 2, then 23 non-special added
    tokens for runs of 24 down to 2 spaces (as 20B_tokenizer.json's
    50254..50276, here at 50258..50280; not in model.vocab), and an NFC
    normalizer. 50281 tokens: the model's 50304 rows (--vocab-pad 128) leave
    23 rows that are no token, as Pythia's 50304 rows for 50277 tokens do."""
    shifted = {"<|endoftext|>": 0, "<|padding|>": 1}
    shifted.update({t: i + 2 for t, i in vocab.items() if i != EOT})
    j = tokenizer_json(shifted, merges)
    special = lambda i, c: {"id": i, "content": c, "single_word": False, "lstrip": False,
                            "rstrip": False, "normalized": False, "special": True}
    spaces = [{"id": len(shifted) + k, "content": " " * (24 - k), "single_word": False,
               "lstrip": False, "rstrip": False, "normalized": True, "special": False}
              for k in range(23)]
    j["added_tokens"] = [special(0, "<|endoftext|>"), special(1, "<|padding|>")] + spaces
    j["normalizer"] = {"type": "NFC"}
    return j


def write_tokenizer(a, out):
    kind = a.tokenizer
    if kind == "auto":
        kind = "files" if a.arch == "gpt2" else "json"
    if kind == "none":
        return
    enc_path, bpe_path, vocab, merges = read_gpt2_vocab(a.gpt2_vocab)
    specials = {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>",
                "unk_token": "<|endoftext|>"}
    if kind in ("files", "both"):
        shutil.copyfile(enc_path, os.path.join(out, "vocab.json"))
        shutil.copyfile(bpe_path, os.path.join(out, "merges.txt"))
        write_json(os.path.join(out, "special_tokens_map.json"), specials)
    if kind == "neox":
        with open(os.path.join(out, "tokenizer.json"), "w", encoding="utf-8") as f:
            f.write(json.dumps(neox_tokenizer_json(vocab, merges), indent=2, ensure_ascii=False))
        specials = {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>",
                    "unk_token": "<|endoftext|>", "pad_token": "<|padding|>"}
    if kind in ("json", "both"):
        with open(os.path.join(out, "tokenizer.json"), "w", encoding="utf-8") as f:
            # Rust's serde_json pretty printer: 2-space indent, no final newline.
            f.write(json.dumps(tokenizer_json(vocab, merges), indent=2, ensure_ascii=False))
        cfg = dict(specials, backend="tokenizers", model_max_length=int(1e30),
                   tokenizer_class="TokenizersBackend")
    elif kind == "neox":
        cfg = dict(specials, model_max_length=int(1e30), tokenizer_class="GPTNeoXTokenizer")
    else:
        cfg = {"model_max_length": a.context}  # the hub's gpt2 tokenizer_config.json
    write_json(os.path.join(out, "tokenizer_config.json"), cfg)


# ---------------------------------------------------------------- main

def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", required=True, choices=["gpt2", "gpt_neox"])
    ap.add_argument("--out", required=True)
    ap.add_argument("--gpt2-vocab", required=True, help="dir with encoder.json, vocab.bpe")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--dtype", default="float32", choices=sorted(_ST_NAME))
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--ffn", type=int, default=256)
    ap.add_argument("--context", type=int, default=128)
    ap.add_argument("--rotary-pct", type=float, default=0.25)
    ap.add_argument("--qk-std", type=float, default=0.02)
    ap.add_argument("--parallel-residual", type=int, choices=[0, 1], default=1)
    ap.add_argument("--vocab-pad", type=int, default=None,
                    help="round vocab_size up to a multiple (default gpt2 1, gpt_neox 128)")
    ap.add_argument("--padding-logit", type=float, default=0.0,
                    help="gpt_neox: rows past the tokenizer's tokens get this logit everywhere (0: random rows)")
    ap.add_argument("--shards", type=int, default=1)
    ap.add_argument("--rope-style", "--config-style", dest="style", default="new",
                    choices=["old", "new"])
    ap.add_argument("--prefix", type=int, choices=[0, 1], default=1)
    ap.add_argument("--legacy-buffers", type=int, choices=[0, 1], default=0)
    ap.add_argument("--tokenizer", default="auto", choices=["auto", "json", "files", "both", "neox", "none"])
    a = ap.parse_args(argv)
    if min(a.layers, a.width, a.heads, a.ffn, a.context, a.shards) < 1 or a.width % a.heads:
        ap.error("sizes must be positive and --width a multiple of --heads")
    a.vocab_pad = a.vocab_pad or (1 if a.arch == "gpt2" else 128)
    if a.vocab_pad < 1:
        ap.error("--vocab-pad must be >= 1")
    ndims = (a.width // a.heads) * a.rotary_pct
    if a.arch == "gpt_neox" and (not 0 <= a.rotary_pct <= 1 or ndims != int(ndims) or ndims % 2):
        ap.error(f"--rotary-pct {a.rotary_pct}: head size * pct must be an even integer")
    return a


def main(argv=None):
    a = parse_args(argv)
    vocab = -(-GPT2_VOCAB // a.vocab_pad) * a.vocab_pad
    init = Init(a.seed)
    if a.arch == "gpt2":
        params, buffers = gpt2_params(a, init, vocab)
        config = gpt2_config(a, vocab)
    else:
        ndims = int(a.width // a.heads * a.rotary_pct)
        params, buffers = neox_params(a, init, vocab, ndims)
        config = neox_config(a, vocab)
    os.makedirs(a.out, exist_ok=True)
    st = _ST_NAME[a.dtype]
    # Round through float32 first, as torch's .half()/.bfloat16() on an fp32 model does.
    tensors = {n: (st, v.shape, encode(v.astype(np.float32), st)) for n, v in params.items()}
    tensors.update({n: (dt, v.shape, encode(v, dt)) for n, (dt, v) in buffers.items()})
    write_weights(a.out, tensors, a.shards)
    eot = 0 if a.tokenizer == "neox" else EOT  # Pythia's bos/eos is id 0
    config.update(bos_token_id=eot, eos_token_id=eot)
    write_json(os.path.join(a.out, "config.json"), config)
    gen = {"_from_model_config": True, "bos_token_id": eot, "eos_token_id": eot,
           "transformers_version": config["transformers_version"], "use_cache": True}
    if a.style == "new":
        gen.update({"output_attentions": False, "output_hidden_states": False})
    write_json(os.path.join(a.out, "generation_config.json"), gen)
    write_tokenizer(a, a.out)
    print(json.dumps({"out": a.out, "arch": a.arch, "dtype": a.dtype, "vocab_size": vocab,
                      "tensors": len(tensors), "shards": a.shards}))


if __name__ == "__main__":
    main()
