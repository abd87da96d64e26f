#!/usr/bin/env python3
"""Exports a Hugging Face causal LM as a TorchScript model directory for `rag`.

usage: python3 export_torchscript.py MODEL OUT_DIR [--context N] [--revision REV]
                                     [--trust-remote-code] [--overwrite] [--no-trace-check]

MODEL is a hub name or a local directory that transformers'
AutoModelForCausalLM and AutoTokenizer load. OUT_DIR receives
model.torchscript.pt, config.json and the tokenizer files; then
`rag info --model OUT_DIR`, `rag score --model OUT_DIR ...` and every other
`--model` command use it (the interface is in examples/README.md and
lm/torchscript_lm.h).

Run it where PyTorch and transformers are installed; `rag` itself needs
neither. The model is traced in fp32 on the CPU, saved, loaded back with
torch.jit.load and checked against the original model at several batch
sizes and lengths; any mismatch stops the export with a message.
"""
import argparse
import json
import os
import sys

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

SCRIPT_FILE = "model.torchscript.pt"
MAX_CONTEXT = 65536  # the most rag accepts (TransformerConfig's limit)
DEFAULT_CONTEXT_CAP = 2048


class TorchScriptLM(torch.nn.Module):
    """The two methods rag calls.

    hidden(tokens [B, T] int64) -> [B, T, D] float32: the base model's
    last_hidden_state, which is after the final norm (GPT-2's ln_f, Llama's
    norm, GPT-NeoX's final_layer_norm, ...): the state that feeds the output
    layer, and the one kNN-LM keys on.
    logits(hidden [..., D]) -> [..., V] float32: the output layer, plus the
    logit post-processing some architectures apply after it.
    """

    def __init__(self, model):
        super().__init__()
        self.body = model.base_model
        self.head = model.get_output_embeddings()
        config = model.config
        # Applied by the *ForCausalLM forward after the output layer; the
        # check in verify() catches any other architecture that does more.
        self.logit_scale = float(getattr(config, "logit_scale", None) or 1.0)  # Cohere: logits * scale
        self.logits_scaling = float(getattr(config, "logits_scaling", None) or 1.0)  # Granite: logits / scaling
        self.softcap = float(getattr(config, "final_logit_softcapping", None) or 0.0)  # Gemma 2: cap * tanh(l / cap)

    def hidden(self, tokens):
        # No attention mask and no cache: rag passes whole, unpadded prefixes
        # that start at position 0.
        out = self.body(input_ids=tokens, use_cache=False, return_dict=False)
        return out[0]

    def logits(self, hidden):
        x = self.head(hidden)
        # Python-level conditions: tracing records only the branch taken.
        if self.logit_scale != 1.0:
            x = x * self.logit_scale
        if self.logits_scaling != 1.0:
            x = x / self.logits_scaling
        if self.softcap > 0.0:
            x = torch.tanh(x / self.softcap) * self.softcap
        return x


def fail(message):
    print("export_torchscript: error: " + message, file=sys.stderr)
    sys.exit(1)


def load_model(name, revision, trust_remote_code):
    kwargs = dict(revision=revision, trust_remote_code=trust_remote_code)
    if int(transformers.__version__.split(".")[0]) < 5:
        # transformers 4's TorchScript mode: the output layer gets its own
        # copy of a tied input embedding, as its docs ask for tracing.
        # Version 5 dropped the flag; a shared tensor is then saved once.
        kwargs["torchscript"] = True
    try:
        # Plain matmul-softmax attention traces on every version; fused
        # kernels (sdpa, flash) may not.
        model = AutoModelForCausalLM.from_pretrained(name, attn_implementation="eager", **kwargs)
    except (TypeError, ValueError):
        model = AutoModelForCausalLM.from_pretrained(name, **kwargs)
    model = model.float().eval()
    if model.base_model is model:
        fail("%s has no separate base model (base_model_prefix), so its final hidden state cannot be "
             "taken apart from the logits; write the wrapper by hand (examples/README.md)" % name)
    if model.get_output_embeddings() is None:
        fail("%s has no output layer (get_output_embeddings() is None)" % name)
    return model


def model_context(config, requested):
    limit = None
    for key in ("max_position_embeddings", "n_positions", "n_ctx", "max_sequence_length", "seq_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            limit = value
            break
    if requested is not None:
        if limit is not None and requested > limit:
            fail("--context %d exceeds the model's %d positions" % (requested, limit))
        context = requested
    elif limit is None:
        fail("the model's config names no maximum length; pass --context N")
    else:
        context = min(limit, DEFAULT_CONTEXT_CAP)
        if context < limit:
            print("export_torchscript: context %d of the model's %d positions (each generated token re-runs "
                  "the whole prefix; pass --context to change)" % (context, limit), file=sys.stderr)
    if not 2 <= context <= MAX_CONTEXT:
        fail("context %d is outside [2, %d]" % (context, MAX_CONTEXT))
    return context


def random_ids(vocab, batch, length, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (batch, length), generator=g, dtype=torch.long)


def close(got, want, what):
    """Stops the export unless got matches want to fp32 precision."""
    if tuple(got.shape) != tuple(want.shape):
        fail("%s: shape %s, expected %s" % (what, tuple(got.shape), tuple(want.shape)))
    if got.dtype != torch.float32:
        fail("%s: dtype %s, expected torch.float32" % (what, got.dtype))
    scale = max(1.0, want.abs().max().item())
    diff = (got - want).abs().max().item()
    if diff > 1e-3 * scale:
        fail("%s: differs from the model by %.3g (scale %.3g); the trace did not generalise to this shape, "
             "or the architecture post-processes its logits in a way TorchScriptLM.logits does not" %
             (what, diff, scale))


def verify(model, wrapper, path, vocab, context):
    """Loads the archive back as rag will and compares it with the model."""
    loaded = torch.jit.load(path, map_location="cpu")
    loaded.eval()
    shapes = [(1, 1), (1, 5), (2, 11), (3, min(context, 37)), (1, min(context, 128))]
    with torch.no_grad():
        for i, (b, t) in enumerate(shapes):
            ids = random_ids(vocab, b, t, seed=100 + i)
            want_logits = model(input_ids=ids, use_cache=False, return_dict=False)[0]
            hidden = loaded.hidden(ids)
            close(hidden, wrapper.hidden(ids), "hidden() on [%d, %d]" % (b, t))
            close(loaded.logits(hidden), want_logits, "logits(hidden()) on [%d, %d]" % (b, t))
        # rag re-runs whole prefixes when decoding, so a prefix must not see
        # what follows it.
        ids = random_ids(vocab, 1, min(context, 16), seed=7)
        full = loaded.hidden(ids)
        close(loaded.hidden(ids[:, :5]), full[:, :5], "hidden() of a prefix (causality)")


def check_tokenizer_layout(out_dir):
    """Warns when rag's tokenizer reader (GPT-2-layout byte-level BPE) will likely refuse the files."""
    path = os.path.join(out_dir, "tokenizer.json")
    if not os.path.exists(path):
        if not (os.path.exists(os.path.join(out_dir, "vocab.json")) and
                os.path.exists(os.path.join(out_dir, "merges.txt"))):
            print("export_torchscript: warning: no tokenizer.json and no vocab.json + merges.txt were written; "
                  "rag needs one of them", file=sys.stderr)
        return
    with open(path, encoding="utf-8") as f:
        tok = json.load(f)
    model = tok.get("model") or {}
    problems = []
    if model.get("type") != "BPE":
        problems.append("model.type is %r, not 'BPE'" % model.get("type"))
    pre = json.dumps(tok.get("pre_tokenizer"))
    if "ByteLevel" not in pre:
        problems.append("the pre_tokenizer is not ByteLevel")
    if tok.get("normalizer") is not None:
        problems.append("it has a normalizer")
    if problems:
        print("export_torchscript: warning: rag reads only GPT-2-style byte-level BPE tokenizers, and this one "
              "differs (%s); `rag info --model %s` will say whether it loads" % ("; ".join(problems), out_dir),
              file=sys.stderr)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", help="hub name or local directory of a causal LM")
    parser.add_argument("out_dir", help="directory to write (created)")
    parser.add_argument("--context", type=int, default=None,
                        help="tokens rag scores and generates over (default: the model's maximum, at most %d)" %
                        DEFAULT_CONTEXT_CAP)
    parser.add_argument("--revision", default=None, help="hub revision (branch, tag or commit)")
    parser.add_argument("--trust-remote-code", action="store_true", help="allow the model's own Python code")
    parser.add_argument("--overwrite", action="store_true", help="replace files in a non-empty OUT_DIR")
    parser.add_argument("--no-trace-check", action="store_true",
                        help="skip torch.jit's own trace checker (the comparison after loading still runs)")
    args = parser.parse_args()

    if os.path.isdir(args.out_dir) and os.listdir(args.out_dir) and not args.overwrite:
        fail("%s is not empty (pass --overwrite)" % args.out_dir)
    os.makedirs(args.out_dir, exist_ok=True)

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(args.model, revision=args.revision,
                                              trust_remote_code=args.trust_remote_code)
    model = load_model(args.model, args.revision, args.trust_remote_code)
    context = model_context(model.config, args.context)
    wrapper = TorchScriptLM(model).eval()

    n_tokens = len(tokenizer)
    example_ids = random_ids(n_tokens, 2, min(context, 7), seed=1)
    with torch.no_grad():
        example_hidden = wrapper.hidden(example_ids)
        vocab = wrapper.logits(example_hidden).shape[-1]
        hidden_size = example_hidden.shape[-1]
        if n_tokens > vocab:
            fail("the tokenizer has %d tokens but the model only %d logits" % (n_tokens, vocab))
        # Other batch sizes and lengths for the trace checker: a trace that
        # baked a length in as a constant fails here.
        check_inputs = []
        for i, (b, t) in enumerate([(1, min(context, 3)), (3, min(context, 19))]):
            ids = random_ids(n_tokens, b, t, seed=10 + i)
            check_inputs.append({"hidden": (ids,), "logits": (wrapper.hidden(ids),)})
        traced = torch.jit.trace_module(
            wrapper, {"hidden": (example_ids,), "logits": (example_hidden,)},
            check_trace=not args.no_trace_check, check_inputs=check_inputs, check_tolerance=1e-4)

    path = os.path.join(args.out_dir, SCRIPT_FILE)
    torch.jit.save(traced, path)
    verify(model, wrapper, path, n_tokens, context)

    tokenizer.save_pretrained(args.out_dir)
    check_tokenizer_layout(args.out_dir)
    config = {
        "model_type": "torchscript",
        "vocab_size": int(vocab),
        "hidden_size": int(hidden_size),
        "max_position_embeddings": int(context),
        "architecture": str(getattr(model.config, "model_type", None) or type(model).__name__),
        # Provenance only; rag ignores these keys (but hashes them).
        "exported_from": args.model,
        "revision": args.revision,
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
    }
    # Written last: a directory without it is not yet a model.
    with open(os.path.join(args.out_dir, "config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)
        f.write("\n")
    n_params = sum(p.numel() for p in traced.parameters())
    print("export_torchscript: wrote %s (%s, V=%d, D=%d, context %d, %d parameters)" %
          (args.out_dir, config["architecture"], vocab, hidden_size, context, n_params))


if __name__ == "__main__":
    main()
