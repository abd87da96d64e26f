"""The `rag` Python module against the `rag` command line on the same model
and index: every answer must be the CLI's (both run services::Engine
in-process, so they must agree exactly), vectors must come as NumPy arrays,
errors as Python exceptions carrying the CLI's message, and the GIL must be
released while the engine works.

Usage: module_checks.py RAG_BINARY MODULE_DIR WORK_DIR
WORK_DIR holds corpus.jsonl, model/ and index/ (built with --datastore).
"""
import json
import os
import shutil
import subprocess
import sys
import threading
import time

rag_binary, module_dir, work = sys.argv[1:4]
sys.path.insert(0, module_dir)
import numpy as np  # noqa: E402
import rag  # noqa: E402

model, index = os.path.join(work, "model"), os.path.join(work, "index")
passed = 0


def check(condition, message):
    global passed
    if not condition:
        sys.exit("module_checks: FAIL: " + message)
    passed += 1


def cli(*args):
    return subprocess.run([rag_binary, *args], capture_output=True, text=True)


def cli_json(*args):
    r = cli(*args, "--json")
    if r.returncode != 0:
        sys.exit("module_checks: FAIL: rag %s: %s" % (" ".join(args), r.stderr))
    return json.loads(r.stdout)


def cli_error(*args):
    r = cli(*args)
    check(r.returncode != 0, "rag %s succeeded" % " ".join(args))
    line = r.stderr.strip().splitlines()[-1]
    check(line.startswith("rag: error: "), "unexpected CLI error line %r" % line)
    return line[len("rag: error: "):]


def raises(fn, exc_type):
    try:
        fn()
    except exc_type as e:
        return e
    sys.exit("module_checks: FAIL: %s did not raise %s" % (fn, exc_type.__name__))


check(os.path.dirname(os.path.abspath(rag.__file__)) == os.path.abspath(module_dir),
      "imported %s, not the module under %s" % (rag.__file__, module_dir))
e = rag.Engine(model, index=index)
check(e.has_index and e.modes == ["lm", "knnlm", "infgram", "ralm"], "modes %r" % (e.modes,))
target = ("--model", model, "--index", index)

# --- info and stats: every proto field, the CLI's values ---------------------
info, ref = e.info(), cli_json("info", "--model", model)
check(info["model"] == ref["model"] and info["modes"] == e.modes, "info %r vs rag info %r" % (info["model"], ref))
check(info["retro_chunk_tokens"] == 0 and "split_json" in info, "info lacks fields: %r" % sorted(info))
stats, ref = e.stats(), json.loads(cli("stats", *target).stdout)
check(all(stats[k] == v for k, v in ref.items()) and "datastore_factory" in stats and "manifest_json" in stats,
      "stats %r vs rag stats %r" % (stats, ref))

# --- search ---------------------------------------------------------------
QUERIES = ["The river crosses the bridge near the orchard.", "a copper violin and the falcon"]


def same_neighbours(py_list, cli_list, what):
    check(len(py_list) == len(cli_list) and py_list, "%s: %d neighbours vs %d" % (what, len(py_list), len(cli_list)))
    for i, (a, b) in enumerate(zip(py_list, cli_list)):
        for key in ("doc_id", "chunk_id", "offset", "text", "continuation"):
            check(a[key] == b[key], "%s neighbour %d: %s %r vs %r" % (what, i, key, a[key], b[key]))
        check(abs(a["distance"] - b["distance"]) <= 1e-6, "%s neighbour %d: distance" % (what, i))
        check(isinstance(a["token_ids"], np.ndarray) and a["token_ids"].dtype == np.int32,
              "token_ids is not an int32 array")


for q in QUERIES:
    same_neighbours(e.search(q, k=5), cli_json("query", *target, "--text", q, "-k", "5")["neighbours"], "search")
top = e.search(QUERIES[0], k=5)
excluded = e.search(QUERIES[0], k=5, exclude_doc_ids=[top[0]["doc_id"]])
check(all(n["doc_id"] != top[0]["doc_id"] for n in excluded), "exclude_doc_ids returned the excluded document")
same_neighbours(excluded, cli_json("query", *target, "--text", QUERIES[0], "-k", "5",
                                   "--exclude-doc", top[0]["doc_id"])["neighbours"], "search with exclusion")
batch = e.search(QUERIES, k=5)
check(len(batch) == 2, "a list of 2 texts gave %d lists" % len(batch))
for q, got in zip(QUERIES, batch):
    same_neighbours(got, e.search(q, k=5), "batched search")
bm25 = e.search(QUERIES[0], k=3, method="bm25")
same_neighbours(bm25, cli_json("query", *target, "--text", QUERIES[0], "-k", "3", "--method", "bm25")["neighbours"],
                "bm25 search")

# --- embed + search_vectors -----------------------------------------------
stats = e.stats()
vectors = e.embed(QUERIES)
check(isinstance(vectors, np.ndarray) and vectors.dtype == np.float32 and vectors.shape == (2, stats["dim"]),
      "embed gave %r" % (getattr(vectors, "shape", vectors),))
by_vector = e.search_vectors(vectors, k=5)
for q, got in zip(QUERIES, by_vector):
    same_neighbours(got, e.search(q, k=5), "search_vectors(embed(text))")
raises(lambda: e.search_vectors(vectors[:, :-1], k=5), ValueError)

# --- score ----------------------------------------------------------------
TEXT = "The ember finds the quartz near the tide. The river crosses the bridge."
for mode in ("lm", "knnlm", "infgram", "ralm"):
    py, ref = e.score(TEXT, mode=mode), cli_json("score", *target, "--text", TEXT, "--mode", mode)
    check(py["mode"] == mode and py["tokens"] == ref["tokens"], "%s score: tokens %r vs %r" % (mode, py["tokens"], ref["tokens"]))
    for key in ("nll", "perplexity"):
        check(abs(py[key] - ref[key]) <= 1e-9 * max(1.0, abs(ref[key])), "%s score: %s %r vs %r" % (mode, key, py[key], ref[key]))
    check(py["logprobs"].dtype == np.float32 and py["logprobs"].shape == (py["tokens"],), "%s: logprobs array" % mode)
    check(list(py["token_ids"]) == [t["token"] for t in ref["token_logprobs"]], "%s: token ids differ" % mode)
    check(np.allclose(py["logprobs"], [t["logprob"] for t in ref["token_logprobs"]], rtol=0, atol=1e-6),
          "%s: per-token log-probs differ" % mode)
    check(abs(float(py["logprobs"].astype(np.float64).sum()) - py["logprob_sum"]) < 1e-3, "%s: sum of logprobs" % mode)
knn = e.score(TEXT, mode="knnlm", components=True, knn={"lambda": 0.5, "k": 16})
check(knn["lm_logprobs"].shape == knn["logprobs"].shape and knn["knn_logprobs"].shape == knn["logprobs"].shape,
      "components=True gave no lm/knn log-probs")
ref = cli_json("score", *target, "--text", TEXT, "--mode", "knnlm", "--lambda", "0.5", "--k", "16")
check(abs(knn["perplexity"] - ref["perplexity"]) <= 1e-9 * ref["perplexity"], "knn options: perplexity differs")
check(knn["timings"]["search_us"] > 0 and knn["timings"]["forward_us"] > 0, "knnlm timings %r" % knn["timings"])
inf = e.score(TEXT, mode="infgram", components=True, exclude_doc_id="doc-03", infgram={"lambda": 0.3, "lambda_sparse": 0.7})
ref = cli_json("score", *target, "--text", TEXT, "--mode", "infgram", "--lambda", "0.3", "--lambda-sparse", "0.7",
               "--exclude-doc-id", "doc-03", "--components")
check(np.allclose(inf["logprobs"], [t["logprob"] for t in ref["token_logprobs"]], rtol=0, atol=1e-6),
      "infgram options: per-token log-probs differ")
check(list(inf["infgram_suffix_tokens"]) == [t["infgram_suffix_tokens"] for t in ref["token_logprobs"]] and
      [bool(x) for x in inf["infgram_sparse"]] == [t["infgram_sparse"] for t in ref["token_logprobs"]],
      "infgram components differ from the CLI's")
raises(lambda: e.score(TEXT, mode="infgram", infgram={"lamda": 0.3}), ValueError)
ralm = e.score(TEXT, mode="ralm", exclude_doc_id="doc-03", ralm={"stride": 8, "query_tokens": 6, "search_method": "dense"})
ref = cli_json("score", *target, "--text", TEXT, "--mode", "ralm", "--ralm-stride", "8", "--ralm-query-tokens", "6",
               "--search-method", "dense", "--exclude-doc-id", "doc-03")
check(np.allclose(ralm["logprobs"], [t["logprob"] for t in ref["token_logprobs"]], rtol=0, atol=1e-6) and
      ralm["retrievals"] == ref["retrievals"] > 0, "ralm options: per-token log-probs or retrievals differ")
raises(lambda: e.score(TEXT, mode="ralm", ralm={"strides": 8}), ValueError)

# --- next_token -----------------------------------------------------------
py, ref = e.next_token("The river", top_n=5), cli_json("next-token", *target, "--text", "The river", "--top-n", "5")
check(list(py["token_ids"]) == [t["token"] for t in ref["tokens"]], "next_token ids differ")
check(np.allclose(py["probabilities"], [t["probability"] for t in ref["tokens"]], rtol=0, atol=1e-7),
      "next_token probabilities differ")

# --- generate -------------------------------------------------------------
seen = []
py = e.generate("The river", max_tokens=20, on_token=lambda i, piece: seen.append(i))
ref = cli_json("generate", *target, "--prompt", "The river", "--max-tokens", "20", "--temperature", "0")
check(py["text"] == ref["text"] and py["tokens"] == ref["tokens"], "greedy: %r vs %r" % (py["text"], ref["text"]))
check(list(py["token_ids"]) == seen and len(seen) == py["tokens"], "on_token saw %r, token_ids %r" % (seen, py["token_ids"]))
py = e.generate("The meadow", max_tokens=30, temperature=0.9, top_k=50, top_p=0.95, seed=11,
                repetition_penalty=1.3, no_repeat_ngram_size=3)
ref = cli_json("generate", *target, "--prompt", "The meadow", "--max-tokens", "30", "--temperature", "0.9", "--top-k",
               "50", "--top-p", "0.95", "--seed", "11", "--repetition-penalty", "1.3", "--no-repeat-ngram-size", "3")
check(py["text"] == ref["text"], "sampled: %r vs %r" % (py["text"], ref["text"]))
py = e.generate("The river", mode="knnlm", max_tokens=8)
ref = cli_json("generate", *target, "--prompt", "The river", "--mode", "knnlm", "--max-tokens", "8", "--temperature", "0")
check(py["text"] == ref["text"], "knnlm generate: %r vs %r" % (py["text"], ref["text"]))
stopped = raises(lambda: e.generate("The river", max_tokens=20, on_token=lambda i, p: False), rag.Error)
check(stopped.code == "CANCELLED", "a callback returning False gave %s" % stopped.code)
raises(lambda: e.generate("The river", max_tokens=5, on_token=lambda i, p: 1 / 0), ZeroDivisionError)

# --- errors: the CLI's messages, as exceptions ------------------------------
err = raises(lambda: e.search(QUERIES[0], k=-1), rag.InvalidArgument)
check(isinstance(err, ValueError) and isinstance(err, rag.Error) and err.code == "INVALID_ARGUMENT", "k=-1: %r" % err)
check(str(err) == "k must be in [1, 4096], got -1", "k=-1: %r" % str(err))  # (the CLI refuses -k -1 itself)
err = raises(lambda: e.search(QUERIES[0], k=5000), rag.Error)
check(not isinstance(err, ValueError) and err.code == "RESOURCE_EXHAUSTED", "k=5000: %s %r" % (err.code, str(err)))
check(str(err) == cli_error("query", *target, "--text", QUERIES[0], "-k", "5000"), "k=5000: %r" % str(err))
err = raises(lambda: e.score(TEXT, mode="retro"), rag.Error)
check(str(err) == cli_error("score", *target, "--text", TEXT, "--mode", "retro"), "mode retro: %r" % str(err))
raises(lambda: e.score(TEXT, mode="nope"), ValueError)
err = raises(lambda: e.score(TEXT, mode="knnlm", knn={"lambda": 7}), ValueError)
check(str(err) == cli_error("score", *target, "--text", TEXT, "--mode", "knnlm", "--lambda", "7"), "lambda 7: %r" % str(err))
err = raises(lambda: e.score(TEXT, knn={"lamda": 0.5}), ValueError)
check("lamda" in str(err), "a misspelt knn option: %r" % str(err))
err = raises(lambda: e.add([("new", "text")]), rag.Error)
check(err.code == "FAILED_PRECONDITION", "add to a read-only index: %s %r" % (err.code, str(err)))
err = raises(lambda: rag.Engine(model, index=os.path.join(work, "no-such-index")), rag.Error)
check(str(err) == cli_error("stats", "--model", model, "--index", os.path.join(work, "no-such-index")),
      "a missing index: %r" % str(err))

# --- add to a writable copy -----------------------------------------------
copy = os.path.join(work, "index-writable")
shutil.copytree(index, copy)
w = rag.Engine(model, index=copy, writable=True)
before = w.stats()
NEW = "The glacier whistles over the cobalt summit while the anvil sleeps."
totals = w.add([{"id": "new-1", "text": NEW}, ("new-2", "The fern and the basket wait by the prism.")])
check(totals["documents_added"] == 2 and totals["documents"] == before["documents"] + 2, "add totals %r" % totals)
check(w.search(NEW, k=1)[0]["doc_id"] == "new-1", "an added document is not its own nearest neighbour")
del w
after = json.loads(cli("stats", "--model", model, "--index", copy).stdout)
check(after["documents"] == before["documents"] + 2 and after["documents_added"] == 2,
      "rag stats after the add: %r" % {k: after[k] for k in ("documents", "documents_added")})

# --- the GIL is released while the engine works -----------------------------
LONG = " ".join([TEXT] * 80)
done = threading.Event()
work_seconds = []


def worker():
    for _ in range(3):
        t0 = time.perf_counter()
        e.score(LONG, mode="knnlm")
        work_seconds.append(time.perf_counter() - t0)
    done.set()


# The main thread spins meanwhile; a call that held the GIL would stall it
# for the whole call, so the longest stall must be well under the shortest
# call.
longest_stall = 0.0
thread = threading.Thread(target=worker)
thread.start()
last = time.perf_counter()
while not done.is_set():
    now = time.perf_counter()
    longest_stall, last = max(longest_stall, now - last), now
thread.join()
check(min(work_seconds) > 0.1, "a scoring call took only %.3f s: too short to tell" % min(work_seconds))
check(longest_stall < 0.5 * min(work_seconds),
      "Python stalled %.3f s during calls of %.3f s or more: the GIL was held" % (longest_stall, min(work_seconds)))

# Threads at once give the answers one thread gives.
results = [None] * 4
threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, e.search(QUERIES[i % 2], k=5))) for i in range(4)]
for t in threads:
    t.start()
for t in threads:
    t.join()
for i, got in enumerate(results):
    same_neighbours(got, e.search(QUERIES[i % 2], k=5), "concurrent search")

print("module_checks: %d checks passed (GIL: Python stalled at most %.4f s during scoring calls of %.2f s or more)"
      % (passed, longest_stall, min(work_seconds)))
