"""The `rag` Python module, notebook style: each `# %%` cell runs on its own
in Jupyter or VS Code, or the whole file as a script:

    /usr/bin/python3 examples/python/inprocess.py --model MODEL_DIR --index INDEX_DIR

The module (built with the project: build/python/, or installed with
`cmake --install` / the Debian package into lib/python3/dist-packages) runs
the engine behind `rag serve` in this process: no server, NumPy arrays in
and out, exceptions that carry the engine's message.
"""
# %% Open a model and an index (with its kNN-LM datastore, when built with --datastore)
import argparse
import sys

import numpy as np

import rag

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--model", required=True)
parser.add_argument("--index", required=True)
parser.add_argument("--text", default="The river crosses the bridge near the orchard.")
args = parser.parse_args()

engine = rag.Engine(args.model, index=args.index)
print("rag", rag.__version__, "| modes:", engine.modes, "| index:", engine.stats()["vectors"], "vectors")

# %% Nearest chunks of a text; then the same search without the top document
hits = engine.search(args.text, k=3)
for rank, n in enumerate(hits, 1):
    print(f"{rank}. {n['doc_id']:>10}  distance {n['distance']:.4f}  {n['text'][:60]!r}")
others = engine.search(args.text, k=3, exclude_doc_ids=[hits[0]["doc_id"]])
print("without", hits[0]["doc_id"], "->", [n["doc_id"] for n in others])

# %% Vectors: embed once, search by vector (FAISS-style)
vectors = engine.embed([args.text, "a second query"])
print("embeddings", vectors.shape, vectors.dtype)
by_vector = engine.search_vectors(vectors, k=1)
print("nearest by vector:", [hits[0]["doc_id"] for hits in by_vector])

# %% Per-token log-probs under the LM and kNN-LM, side by side
lm = engine.score(args.text)
print(f"lm perplexity {lm['perplexity']:.2f} over {lm['tokens']} tokens")
if "knnlm" in engine.modes:
    knn = engine.score(args.text, mode="knnlm", knn={"lambda": 0.25})
    gain = knn["logprobs"] - lm["logprobs"]  # NumPy float32 arrays, one value per token
    best = int(np.argmax(gain))
    print(f"knnlm perplexity {knn['perplexity']:.2f}; largest gain {gain[best]:+.3f} nats at token "
          f"{lm['pieces'][best]!r}")
    print("where the time went (us):", knn["timings"])

# %% The most likely next tokens, and a streamed greedy continuation
nxt = engine.next_token("The river", top_n=3)
print("next:", [(p.decode("utf-8", "replace"), round(float(q), 3)) for p, q in zip(nxt["pieces"], nxt["probabilities"])])
out = engine.generate("The river", max_tokens=12,
                      on_token=lambda token_id, piece: print(piece.decode("utf-8", "replace"), end="", flush=True))
print(f"\n{out['tokens']} tokens; token ids {out['token_ids'][:5]}...")

# %% Errors are Python exceptions with the engine's message
try:
    engine.search(args.text, k=-1)
except ValueError as e:  # rag.InvalidArgument is both a ValueError and a rag.Error
    print("refused:", e.code, "-", e)
sys.exit(0)
