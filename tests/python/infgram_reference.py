"""The ∞-gram mode's answers against a second implementation written from
Liu et al. (2024), "Infini-gram", section 3 (and the interpolation of its
section 5), by brute force over the corpus's token ids.

Usage: infgram_reference.py IDS_JSONL CHECK ARGS...
  IDS_JSONL: `rag tokenize --corpus` output ({"id", "ids"} per document).
  score SCORE_JSON LM_JSON LAMBDA LAMBDA_SPARSE [EXCLUDED_DOC_ID]
      `rag score --mode infgram --components --json` and `--mode lm --json`
      of the same text: every token's suffix length, sparsity, p_inf and
      interpolated log-prob.
  next NEXT_JSON CONTEXT_IDS_JSON
      `rag next-token --mode infgram --lambda 1 --lambda-sparse 1 --json`:
      the listed probabilities are the ∞-gram's count ratios.
Prints what it checked; exits 1 on the first mismatch.
"""
import json
import math
import sys


def load_docs(path):
    docs = {}
    with open(path) as f:
        for line in f:
            d = json.loads(line)
            docs[d["id"]] = d["ids"]
    return docs


def followers(docs, suffix, skip):
    """Next-token counts after `suffix` inside the documents (not `skip`)."""
    out = {}
    n = len(suffix)
    for doc_id, ids in docs.items():
        if doc_id == skip:
            continue
        for p in range(len(ids) - n):
            if ids[p:p + n] == suffix:
                out[ids[p + n]] = out.get(ids[p + n], 0) + 1
    return out


def infgram(docs, context, skip=None):
    """(suffix length, next-token counts) for the longest suffix of
    `context` that occurs followed by a token."""
    for n in range(len(context), -1, -1):
        f = followers(docs, context[len(context) - n:], skip)
        if f or n == 0:
            return n, f
    return 0, {}


def fail(msg):
    print("infgram_reference: FAIL: " + msg, file=sys.stderr)
    sys.exit(1)


def close(a, b, tol):
    return abs(a - b) <= tol * max(1.0, abs(b))


def check_score(docs, score_path, lm_path, lam, lam_sparse, skip):
    score = json.load(open(score_path))
    lm = json.load(open(lm_path))
    toks = score["token_logprobs"]
    ids = [t["token"] for t in toks]
    if ids != [t["token"] for t in lm["token_logprobs"]]:
        fail("the lm and infgram scores tokenised the text differently")
    sparse_seen = longest = total_lp = 0
    for i, t in enumerate(toks):
        n, f = infgram(docs, ids[:i], skip)
        total = sum(f.values())
        count = f.get(ids[i], 0)
        where = "token %d of %s" % (i, score_path)
        if t["infgram_suffix_tokens"] != n:
            fail("%s: suffix of %d tokens, the reference %d" % (where, t["infgram_suffix_tokens"], n))
        if t["infgram_sparse"] != (len(f) == 1):
            fail("%s: sparse %s, the reference %s" % (where, t["infgram_sparse"], len(f) == 1))
        want_inf = math.log(count / total) if count > 0 else None
        got_inf = t["infgram_logprob"]
        if (want_inf is None) != (got_inf is None) or (want_inf is not None and not close(got_inf, want_inf, 1e-5)):
            fail("%s: log p_inf %s, the reference %s (count %d of %d)" % (where, got_inf, want_inf, count, total))
        p_lm = lm["token_logprobs"][i]["logprob"]
        if not close(t["lm_logprob"], p_lm, 1e-5):
            fail("%s: lm_logprob %s, the lm mode's %s" % (where, t["lm_logprob"], p_lm))
        w = 0.0 if total == 0 else (lam_sparse if len(f) == 1 else lam)
        want = math.log(w * count / max(total, 1) + (1 - w) * math.exp(p_lm))
        if not close(t["logprob"], want, 1e-4):
            fail("%s: log p %s, the reference %s" % (where, t["logprob"], want))
        sparse_seen += len(f) == 1
        longest = max(longest, n)
        total_lp += want
    nll = -total_lp / len(toks)
    if not close(score["nll"], nll, 1e-4):
        fail("%s: nll %s, the reference %s" % (score_path, score["nll"], nll))
    print("score %s: %d tokens match (longest suffix %d, %d sparse)" % (score_path, len(toks), longest, sparse_seen))
    return longest, sparse_seen


def check_next(docs, next_path, context_path):
    got = json.load(open(next_path))["tokens"]
    context = json.load(open(context_path))["ids"]
    n, f = infgram(docs, context)
    total = sum(f.values())
    want = sorted(((c / total, tok) for tok, c in f.items()), reverse=True)
    if len(got) < len(want):
        fail("next-token lists %d tokens, the reference has %d with p > 0" % (len(got), len(want)))
    for g in got[:len(want)]:
        p = f.get(g["token"], 0) / total
        if not close(g["probability"], p, 1e-5):
            fail("next token %d: p %s, the reference %s" % (g["token"], g["probability"], p))
    for g in got[len(want):]:
        if g["probability"] > 1e-6:
            fail("next token %d has p %s, the reference 0" % (g["token"], g["probability"]))
    print("next: %d followers of a %d-token suffix match" % (len(want), n))


def main():
    docs = load_docs(sys.argv[1])
    what = sys.argv[2]
    if what == "score":
        skip = sys.argv[7] if len(sys.argv) > 7 else None
        check_score(docs, sys.argv[3], sys.argv[4], float(sys.argv[5]), float(sys.argv[6]), skip)
    elif what == "next":
        check_next(docs, sys.argv[3], sys.argv[4])
    else:
        fail("unknown check " + what)


if __name__ == "__main__":
    main()
