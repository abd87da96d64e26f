#!/usr/bin/env python3
"""Chooses the infgram mode's two weights (lambda for dense ∞-gram
estimates, lambda_sparse for sparse ones) on the first half of the model's
validation documents and reports them on the second half only.

One scoring pass per document (rag.Engine.score with components=True gives
log p_lm, log p_inf and sparsity per token); every (lambda, lambda_sparse)
of the grid is then evaluated from those arrays, as infini-gram's
interpolation p = w * p_inf + (1 - w) * p_lm with w = lambda_sparse where
the estimate is sparse, lambda elsewhere (0 without an estimate).

Usage: scripts/tune_infgram.py --model M --index I --corpus brown.jsonl
           --out bench/results/infgram_lambdas_<date>.json [--no-exclude-own]
Needs the rag Python module (the build's python/ directory or an installed
package) and Debian's python3-numpy.
"""
import argparse
import json
import math
import sys
import time

import numpy as np

GRID = [0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95]


def nll(docs, lam, lam_sparse):
    """Mean negative log-likelihood (nats/token) of the interpolation."""
    total, count = 0.0, 0
    for d in docs:
        w = np.where(d["has_estimate"], np.where(d["sparse"], lam_sparse, lam), 0.0)
        p = w * np.exp(d["inf"]) + (1 - w) * np.exp(d["lm"])
        total -= float(np.log(p).sum())
        count += len(p)
    return total / count


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--index", required=True)
    ap.add_argument("--corpus", required=True, help="the corpus .jsonl the model's split names documents of")
    ap.add_argument("--out", required=True, help="JSON with the grid on both halves and the choice")
    ap.add_argument("--no-exclude-own", action="store_true",
                    help="count in the scored document too (leakage on); default: its occurrences are excluded")
    a = ap.parse_args()
    import rag  # the module built with the project

    e = rag.Engine(a.model, a.index)
    split = json.loads(e.info()["split_json"])
    ids = split["validation_ids"]
    texts = {}
    with open(a.corpus) as f:
        for line in f:
            d = json.loads(line)
            if d["id"] in ids:
                texts[d["id"]] = d["text"]
    missing = [i for i in ids if i not in texts]
    if missing:
        sys.exit("tune_infgram: validation documents missing from %s: %s" % (a.corpus, missing[:5]))
    half = len(ids) // 2
    dev_ids, test_ids = ids[:half], ids[half:]
    docs = {}
    started = time.time()
    for n, doc_id in enumerate(ids):
        r = e.score(texts[doc_id], mode="infgram", components=True,
                    exclude_doc_id="" if a.no_exclude_own else doc_id)
        inf = np.asarray(r["infgram_logprobs"], dtype=np.float64)
        docs[doc_id] = {
            "lm": np.asarray(r["lm_logprobs"], dtype=np.float64),
            "inf": inf,
            "sparse": np.asarray(r["infgram_sparse"]) != 0,
            # -inf is a token the suffix is never followed by; an estimate
            # exists wherever some token follows it (all positions on a
            # non-empty corpus).
            "has_estimate": np.full(len(inf), r["retrievals"] == len(inf)),
            "suffix": np.asarray(r["infgram_suffix_tokens"]),
        }
        print("tune_infgram: %d/%d documents scored (%.0f s)" % (n + 1, len(ids), time.time() - started),
              file=sys.stderr)
    dev = [docs[i] for i in dev_ids]
    test = [docs[i] for i in test_ids]
    grid = []
    for lam in GRID:
        for lam_sparse in GRID:
            grid.append({"lambda": lam, "lambda_sparse": lam_sparse,
                         "dev_perplexity": math.exp(nll(dev, lam, lam_sparse))})
    best = min(grid, key=lambda g: g["dev_perplexity"])
    report = {
        "model": a.model, "index": a.index, "exclude_own_document": not a.no_exclude_own,
        "dev_documents": dev_ids, "test_documents": test_ids,
        "dev_tokens": int(sum(len(d["lm"]) for d in dev)), "test_tokens": int(sum(len(d["lm"]) for d in test)),
        "sparse_fraction_test": float(np.mean(np.concatenate([d["sparse"] for d in test]))),
        "mean_suffix_tokens_test": float(np.mean(np.concatenate([d["suffix"] for d in test]))),
        "chosen": {"lambda": best["lambda"], "lambda_sparse": best["lambda_sparse"]},
        "dev_perplexity": best["dev_perplexity"],
        "test_perplexity": math.exp(nll(test, best["lambda"], best["lambda_sparse"])),
        "test_lm_perplexity": math.exp(nll(test, 0.0, 0.0)),
        "grid": grid,
    }
    with open(a.out, "w") as f:
        json.dump(report, f, indent=1)
        f.write("\n")
    print("chosen on dev: lambda %.2f, lambda_sparse %.2f (dev perplexity %.2f); test: %.2f against the LM's %.2f"
          % (best["lambda"], best["lambda_sparse"], best["dev_perplexity"], report["test_perplexity"],
             report["test_lm_perplexity"]))


if __name__ == "__main__":
    main()
