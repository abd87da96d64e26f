#!/usr/bin/env python3
"""Hugging Face's repetition_penalty and no_repeat_ngram_size, written from
their documentation (RepetitionPenaltyLogitsProcessor,
NoRepeatNGramLogitsProcessor), not from lm/generator.cc: random cases with
the scores they should leave, for tests/generation_rules_test.cc.

  penalty: for every distinct token already in the sequence (prompt and
    output), score / penalty if score > 0, else score * penalty.
  no_repeat_ngram_size n: once the sequence has at least n - 1 tokens, every
    earlier n-gram whose first n - 1 tokens equal the sequence's last n - 1
    bans its last token (score = -inf). n = 1 bans every token seen.

usage: repetition_reference.py OUT.json
"""
import json
import sys

import numpy as np


def penalise(scores, history, penalty):
    s = scores.copy()
    for t in set(history):
        s[t] = s[t] / penalty if s[t] > 0 else s[t] * penalty
    return s


def ban_ngrams(scores, history, n):
    s = scores.copy()
    if n <= 0 or len(history) + 1 < n:
        return s
    prefix = tuple(history[len(history) - (n - 1):])
    grams = {}
    for i in range(len(history) - n + 1):
        grams.setdefault(tuple(history[i:i + n - 1]), []).append(history[i + n - 1])
    for t in grams.get(prefix, []):
        s[t] = -np.inf
    return s


def main():
    rng = np.random.default_rng(20261206)
    cases = []
    for case in range(60):
        vocab = int(rng.integers(5, 40))
        length = int(rng.integers(0, 30))
        # A small alphabet makes repeated n-grams common.
        alphabet = int(rng.integers(2, vocab + 1))
        history = [int(t) for t in rng.integers(0, alphabet, size=length)]
        scores = rng.normal(0, 3, size=vocab).astype(np.float32)
        penalty = float(rng.choice([1.0, 0.5, 1.3, 2.0]))
        n = int(rng.choice([0, 1, 2, 3, 4]))
        out = scores.copy()
        if penalty != 1.0:
            out = penalise(out, history, np.float32(penalty))
        out = ban_ngrams(out, history, n)
        cases.append({
            "scores": [float(x) for x in scores],
            "history": history,
            "repetition_penalty": penalty,
            "no_repeat_ngram_size": n,
            # JSON has no -inf: null marks a banned token.
            "expected": [None if np.isneginf(x) else float(x) for x in out],
        })
    with open(sys.argv[1], "w") as f:
        json.dump({"cases": cases}, f)


if __name__ == "__main__":
    main()
