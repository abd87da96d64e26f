#!/usr/bin/env python3
"""Chooses the ralm mode's retriever (BM25 or dense) and passage length on
the first half of the model's validation documents, own document excluded
(the scored document's chunks are never put in front): the choices
In-Context RALM leaves open. The paper's stride s = 4 and query q = 32 are
kept. Only the dev half is scored: the test half's figures come from
bench/bench_modes.sh at the chosen settings.

Usage: scripts/tune_ralm.py --model M --index I --corpus brown.jsonl
           --out bench/results/ralm_dev_<date>.json
Needs the rag Python module (the build's python/ directory or an installed
package).
"""
import argparse
import json
import math
import sys
import time

METHODS = ["bm25", "dense"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--index", required=True)
    ap.add_argument("--corpus", required=True, help="the corpus .jsonl the model's split names documents of")
    ap.add_argument("--out", required=True, help="JSON with every setting's dev perplexity and the choice")
    ap.add_argument("--passage-tokens", default="64,128", help="passage lengths to try (comma-separated)")
    a = ap.parse_args()
    import rag  # the module built with the project

    e = rag.Engine(a.model, a.index)
    ids = json.loads(e.info()["split_json"])["validation_ids"]
    dev_ids = ids[:len(ids) // 2]
    texts = {}
    with open(a.corpus) as f:
        for line in f:
            d = json.loads(line)
            if d["id"] in dev_ids:
                texts[d["id"]] = d["text"]
    if len(texts) != len(dev_ids):
        sys.exit("tune_ralm: %d of the %d dev documents are in %s" % (len(texts), len(dev_ids), a.corpus))

    def perplexity(mode, **options):
        logprob, tokens, started = 0.0, 0, time.time()
        for doc_id in dev_ids:
            r = e.score(texts[doc_id], mode=mode, per_token=False, exclude_doc_id=doc_id, **options)
            logprob += r["logprob_sum"]
            tokens += r["tokens"]
        return math.exp(-logprob / tokens), tokens, time.time() - started

    lm, tokens, _ = perplexity("lm")
    print("tune_ralm: lm %.2f over %d dev tokens" % (lm, tokens), file=sys.stderr)
    grid = []
    for method in METHODS:
        for passage in [int(x) for x in a.passage_tokens.split(",")]:
            ppl, _, seconds = perplexity("ralm", ralm={"search_method": method, "passage_tokens": passage})
            grid.append({"search_method": method, "passage_tokens": passage, "dev_perplexity": ppl,
                         "seconds": seconds})
            print("tune_ralm: %s, passage %d: %.2f (%.0f s)" % (method, passage, ppl, seconds), file=sys.stderr)
    best = min(grid, key=lambda g: g["dev_perplexity"])
    report = {
        "model": a.model, "index": a.index, "exclude_own_document": True, "stride": 4, "query_tokens": 32,
        "dev_documents": dev_ids, "dev_tokens": tokens, "dev_lm_perplexity": lm,
        "chosen": {"search_method": best["search_method"], "passage_tokens": best["passage_tokens"]},
        "grid": grid,
    }
    with open(a.out, "w") as f:
        json.dump(report, f, indent=1)
        f.write("\n")
    print("chosen on dev: %s, passage %d tokens (dev perplexity %.2f against the LM's %.2f)"
          % (best["search_method"], best["passage_tokens"], best["dev_perplexity"], lm))


if __name__ == "__main__":
    main()
