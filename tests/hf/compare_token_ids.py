#!/usr/bin/env python3
"""Compares two token-id files of one corpus, one {"id": ..., "ids": [...]}
JSON line per document (`rag tokenize --corpus` and
tests/hf/gpt3_encoder_tokenize.js write them), document by document.

Prints the number of documents and tokens compared. Exits 1 naming the first
document and token position that differ (with both sides' tokens around it,
spelled from --vocab when given), when the documents are not the same ones in
the same order, or when fewer than --docs documents or --min-tokens tokens
were compared, so that an empty or truncated run cannot pass.

usage: compare_token_ids.py REFERENCE.jsonl CANDIDATE.jsonl
           --docs N --min-tokens N [--vocab encoder.json]
           [--reference-name NAME] [--candidate-name NAME]
"""
import argparse
import json
import sys


def read(path):
    docs = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            d = json.loads(line)
            if not isinstance(d.get("id"), str) or not isinstance(d.get("ids"), list):
                sys.exit(f"{path}:{n}: expected {{\"id\": string, \"ids\": [...]}}")
            docs.append((d["id"], d["ids"]))
    return docs


def main():
    p = argparse.ArgumentParser()
    p.add_argument("reference")
    p.add_argument("candidate")
    p.add_argument("--docs", type=int, required=True, help="exact number of documents expected")
    p.add_argument("--min-tokens", type=int, required=True, help="fewest tokens the comparison must cover")
    p.add_argument("--vocab", help="encoder.json, to spell the tokens around a difference")
    p.add_argument("--reference-name", default="reference")
    p.add_argument("--candidate-name", default="candidate")
    a = p.parse_args()
    ref, cand = read(a.reference), read(a.candidate)
    rn, cn = a.reference_name, a.candidate_name

    spell = {}
    if a.vocab:
        with open(a.vocab, encoding="utf-8") as f:
            spell = {v: k for k, v in json.load(f).items()}

    def show(ids):
        return " ".join(f"{i}:{json.dumps(spell[i], ensure_ascii=False)}" if i in spell else str(i) for i in ids)

    if len(ref) != len(cand):
        print(f"FAIL: {rn} has {len(ref)} documents, {cn} {len(cand)}")
        return 1
    tokens = 0
    for n, ((rid, rids), (cid, cids)) in enumerate(zip(ref, cand)):
        if rid != cid:
            print(f"FAIL: document {n}: {rn} has id {rid!r}, {cn} {cid!r} (not the same documents in order)")
            return 1
        if rids != cids:
            pos = next((i for i, (x, y) in enumerate(zip(rids, cids)) if x != y), min(len(rids), len(cids)))
            lo, hi = max(0, pos - 3), pos + 4
            print(f"FAIL: document {rid!r} (number {n}) differs at token {pos} "
                  f"({rn}: {len(rids)} tokens, {cn}: {len(cids)})")
            print(f"  {rn:>16} [{lo}:{hi}]: {show(rids[lo:hi])}")
            print(f"  {cn:>16} [{lo}:{hi}]: {show(cids[lo:hi])}")
            print(f"  ({n} documents, {tokens} tokens identical before it)")
            return 1
        tokens += len(rids)
    print(f"compared {len(ref)} documents, {tokens} tokens: identical")
    if len(ref) != a.docs:
        print(f"FAIL: expected {a.docs} documents")
        return 1
    if tokens < a.min_tokens:
        print(f"FAIL: expected at least {a.min_tokens} tokens")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
