#!/usr/bin/env python3
"""Makes reference Hugging Face checkpoints and outputs with `transformers`.

Run where PyTorch, transformers and tokenizers are installed (not here: this
machine has no PyPI). It writes, under OUT_DIR, small random GPT-2 and
GPT-NeoX checkpoints exactly as `save_pretrained` lays them out (fp32, fp16,
bf16, sharded, with and without the `transformer.` prefix), the logits and
hidden states `transformers` computes for fixed token ids, and the ids its
GPT-2 tokenizers give for a set of texts. The C++ loader's tests compare
against these files; the numpy forward in tests/hf/ is the second,
independent check that runs everywhere.

  python3 make_transformers_reference.py --gpt2-vocab DIR --out OUT_DIR
"""
import argparse
import json
import os
import sys
import traceback

import numpy as np
import torch
import transformers

SEED = 20261204
VOCAB = 1024


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def token_ids(vocab, batch=2, length=24, seed=SEED):
    g = np.random.default_rng(seed)
    return g.integers(0, vocab, size=(batch, length)).astype(np.int64)


def run_model(model, ids, out_dir, name):
    """Logits, log-probs and every layer's hidden state in fp32, eager attention."""
    model.eval()
    with torch.no_grad():
        out = model(torch.from_numpy(ids), output_hidden_states=True)
    logits = out.logits.float().numpy()
    logp = torch.log_softmax(out.logits.float(), dim=-1).numpy()
    hidden = np.stack([h.float().numpy() for h in out.hidden_states])  # [layers+1, B, T, D]
    np.savez(os.path.join(out_dir, name + ".npz"), ids=ids, logits=logits,
             log_probs=logp, hidden_states=hidden)
    log(f"{name}: logits {logits.shape} mean {logits.mean():.6f}")


def save_variants(model, base_dir, dtypes=("float32", "float16", "bfloat16"),
                  shard=None):
    dirs = {}
    for dt in dtypes:
        d = f"{base_dir}-{dt}"
        m = model.to(getattr(torch, dt))
        kwargs = {"safe_serialization": True}
        if shard:
            kwargs["max_shard_size"] = shard
        m.save_pretrained(d, **kwargs)
        dirs[dt] = d
    model.to(torch.float32)
    return dirs


def reference_outputs(cls, dirs, ids, out_dir, prefix):
    for dt, d in dirs.items():
        # Loaded in fp32 so that the reference is the stored weights, upcast.
        m = cls.from_pretrained(d, dtype=torch.float32, attn_implementation="eager")
        run_model(m, ids, d, "reference")
        log(f"{prefix} {dt}: {sorted(os.listdir(d))}")


def gpt2(out):
    cfg = transformers.GPT2Config(vocab_size=VOCAB, n_positions=64, n_embd=64,
                                  n_layer=2, n_head=4, resid_pdrop=0.0,
                                  embd_pdrop=0.0, attn_pdrop=0.0,
                                  activation_function="gelu_new")
    torch.manual_seed(SEED)
    model = transformers.GPT2LMHeadModel(cfg)
    # Random LayerNorm and bias values so that a loader that drops them fails.
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("bias") or "ln" in n:
                p.add_(0.1 * torch.randn_like(p))
    ids = token_ids(VOCAB)
    dirs = save_variants(model, os.path.join(out, "gpt2-lmhead"))
    reference_outputs(transformers.GPT2LMHeadModel, dirs, ids, out, "gpt2-lmhead")
    # The base model saves names without the `transformer.` prefix (as the
    # hub's gpt2 repository does); logits come from the tied embedding.
    d = os.path.join(out, "gpt2-base-float32")
    model.transformer.save_pretrained(d, safe_serialization=True)
    m = transformers.GPT2LMHeadModel.from_pretrained(d, dtype=torch.float32,
                                                     attn_implementation="eager")
    run_model(m, ids, d, "reference")


def neox(out, name, parallel, rotary_pct, shard=None, tie=False):
    kw = dict(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2,
              num_attention_heads=4, intermediate_size=256,
              max_position_embeddings=64, use_parallel_residual=parallel,
              hidden_dropout=0.0, attention_dropout=0.0,
              tie_word_embeddings=tie, hidden_act="gelu")
    try:
        cfg = transformers.GPTNeoXConfig(rotary_pct=rotary_pct, rotary_emb_base=10000, **kw)
    except TypeError:
        cfg = transformers.GPTNeoXConfig(
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                             "partial_rotary_factor": rotary_pct}, **kw)
    torch.manual_seed(SEED + 1)
    model = transformers.GPTNeoXForCausalLM(cfg)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("bias") or "layernorm" in n or "norm" in n:
                p.add_(0.1 * torch.randn_like(p))
    ids = token_ids(VOCAB, seed=SEED + 1)
    dirs = save_variants(model, os.path.join(out, name),
                         dtypes=("float32",) if shard else ("float32", "float16"),
                         shard=shard)
    reference_outputs(transformers.GPTNeoXForCausalLM, dirs, ids, out, name)


TEXTS = [
    "Hello world",
    " The jury said it did find that the election was conducted.",
    "It's 2026, isn't it? They'll say we've done 1,234.5 things!!",
    "  leading spaces\tand\ttabs\n\nnew lines   \n",
    "Ünïcödé: café, naïve, 東京, Москва, 🤖🎉",
    "a<|endoftext|>b",
    "<|endoftext|>",
    "",
    "x" * 300,
    "don't DON'T we're I'M you'd they've",
    "   ",
    "\u00a0non-breaking\u2009thin\u200bzero",
]


def tokenizers_reference(out, vocab_dir):
    """GPT-2's vocabulary as `tokenizers` and `transformers` save it
    (tokenizer.json, vocab.json, merges.txt), and the ids each gives."""
    import tokenizers
    from tokenizers import decoders, models, pre_tokenizers
    d = os.path.join(out, "gpt2-tokenizer")
    os.makedirs(d, exist_ok=True)
    enc = os.path.join(vocab_dir, "encoder.json")
    bpe = os.path.join(vocab_dir, "vocab.bpe")
    tok = tokenizers.Tokenizer(models.BPE.from_file(enc, bpe))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["<|endoftext|>"])
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
        unk_token="<|endoftext|>")
    fast.save_pretrained(d)
    result = {"texts": TEXTS}
    result["fast"] = [fast.encode(t) for t in TEXTS]
    reread = tokenizers.Tokenizer.from_file(os.path.join(d, "tokenizer.json"))
    result["tokenizers"] = [reread.encode(t).ids for t in TEXTS]
    for cls in ("GPT2TokenizerFast", "GPT2Tokenizer"):
        try:
            c = getattr(transformers, cls)
            t = c.from_pretrained(d)
            result[cls] = [t.encode(x) for x in TEXTS]
        except Exception as e:
            result[cls + "_error"] = repr(e)
    result["versions"] = {"transformers": transformers.__version__,
                          "tokenizers": tokenizers.__version__,
                          "torch": torch.__version__}
    with open(os.path.join(out, "tokenizer_reference.json"), "w") as f:
        json.dump(result, f, ensure_ascii=False, indent=1)
    log("tokenizer:", sorted(os.listdir(d)), "first ids:", result["fast"][:2])


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--gpt2-vocab", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--only", help="run only this step")
    a = p.parse_args()
    os.makedirs(a.out, exist_ok=True)
    steps = [
        ("gpt2", lambda: gpt2(a.out)),
        ("neox-parallel", lambda: neox(a.out, "neox-parallel", True, 0.25)),
        ("neox-sequential", lambda: neox(a.out, "neox-sequential", False, 1.0)),
        ("neox-sharded", lambda: neox(a.out, "neox-sharded", True, 0.5, shard="100KB")),
        ("tokenizer", lambda: tokenizers_reference(a.out, a.gpt2_vocab)),
    ]
    failed = 0
    for name, f in steps:
        if a.only and name != a.only:
            continue
        try:
            f()
        except Exception:
            failed += 1
            log(f"step {name} FAILED:")
            traceback.print_exc()
    log(f"versions: torch {torch.__version__} transformers {transformers.__version__}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
