#!/usr/bin/env python3
"""The tables of docs/results.md, generated from the benches' JSON files
under bench/results/ (issue 24): a reader reruns a bench, points the table at
its JSON, and gets the table back; nobody types figures by hand.

    results_tables.py [--check | --write] [RESULTS_MD]

A generated table sits between two markers in RESULTS_MD (default
docs/results.md):

    <!-- results-table RENDERER bench/results/FILE.json -->
    | ... the table ... |
    <!-- /results-table -->

RENDERER names a function below that turns the JSON into Markdown. --check
(the default; scripts/test.sh runs it) exits 1 naming every table that
differs from what its JSON gives; --write rewrites them in place.
"""
import json
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BLOCK = re.compile(r"(<!-- results-table (\S+) (\S+) -->\n)(.*?)(<!-- /results-table -->)", re.S)


def commit(j):
    """The short commit a bench ran at, "-dirty" kept: tracked files differed from it."""
    return short_commit(j["machine"]["git_commit"])


def short_commit(c):
    return c[:12] + ("-dirty" if c.endswith("-dirty") else "")


def spread(r, bold=False):
    """A RoundsJson summary as "median (min .. max)", the median in bold if asked."""
    m = f"**{r['median']:.3f}**" if bold else f"{r['median']:.3f}"
    return f"{m} ({r['min']:.3f} .. {r['max']:.3f})"


def pct(x):
    return f"{100 * x:+.2f}%"


def knnlm_scoring(j):
    """bench_knnlm part (a): one row per arm, medians of the rounds."""
    s = j["scoring"]
    ref = s["reference"]
    d = s["served_defaults"]
    out = [f"{len(j['inputs']['validation_docs'])} validation documents from #{j['inputs']['docs_offset']} "
           f"({s['tokens']:,} tokens), datastore {j['inputs']['keys']:,} keys `{j['inputs']['factory']}`, "
           f"{j['machine']['cores']} cores ({j['machine']['cpu']}), commit `{commit(j)}`, "
           f"median of {j['rounds']} rounds (min .. max). Served defaults: k {d['k']}, nprobe {d['nprobe']}, "
           f"λ {d['lambda']}. Reference ({ref['label']}): perplexity {ref['perplexity']:.3f}.",
           "",
           "| arm | path | tokens/s | vs lm (min .. max) | positions searched | perplexity | vs reference |",
           "|---|---|---|---|---|---|---|"]
    for a in s["arms"]:
        r = a["ratio_to_lm"]
        is_lm = a["perplexity_over_reference"] is None
        vs = "" if is_lm else pct(a["perplexity_over_reference"])
        # Files written before adaptive retrieval existed searched every position.
        searched = "" if is_lm else f"{100 * a.get('searched_fraction', 1.0):.1f}%"
        label = f"**{a['label']}**" if a["label"].startswith("knnlm served") else a["label"]
        out.append(f"| {label} | {a['path']} | {a['tokens_per_s']['median']:,.1f} | "
                   f"{spread(r)} | {searched} | {a['perplexity']:.2f} | {vs} |")
    return "\n".join(out) + "\n"


def knnlm_build(j):
    """bench_knnlm part (b): the datastore build against the raw forward."""
    b = j["build"]
    r = b["ratio_build_over_raw"]
    return "\n".join([
        f"{b['train_docs']} training documents, {b['keys']:,} keys, factory `{b['factory']}`, "
        f"median of {j['rounds']} rounds, commit `{commit(j)}`.",
        "",
        "| path | seconds (median) | keys/s | vs raw (min .. max) |",
        "|---|---|---|---|",
        f"| raw forward (`lm::HiddenStates`) | {b['raw_forward_s']['median']:.2f} | "
        f"{b['keys'] / b['raw_forward_s']['median']:,.1f} | 1.000 |",
        f"| builder, whole (keys + FAISS; {b['faiss_after_last_key_s']['median']:.1f} s of FAISS after the last key) | "
        f"{b['build_s']['median']:.2f} | {b['keys'] / b['build_s']['median']:,.1f} | "
        f"{spread(r)} |"]) + "\n"


def search_latency(j):
    """bench_search: Search over gRPC against in-process, nq 1 and 32."""
    out = [f"{j['inputs']['queries']} queries, k {j['inputs']['k']}, {j['machine']['cores']} cores "
           f"({j['machine']['cpu']}), commit `{commit(j)}`, median of {j['rounds']} rounds "
           f"(min .. max).",
           "",
           "| nq | path | p50 ms | p99 ms | queries/s |",
           "|---|---|---|---|---|"]
    for nq in ("nq1", "nq32"):
        if nq not in j:
            continue
        for path, v in j[nq]["paths"].items():
            out.append(f"| {nq[2:]} | {path} | {spread(v['p50_ms'])} | {v['p99_ms']['median']:.3f} | {v['qps']['median']:,.1f} |")
        r = j[nq]["p50_ratio_grpc_over_in_process"]
        out.append(f"| {nq[2:]} | **gRPC / in-process, p50** | {spread(r, bold=True)} | | |")
    return "\n".join(out) + "\n"


def trainer_overhead(j):
    """bench_trainer: the trainer's step against the bare loop's."""
    i = j["inputs"]
    r = j["ratio_trainer_over_bare"]
    t = j["tokens_per_round"]
    return "\n".join([
        f"Preset `{i['preset']}` ({i['parameters']:,} parameters), batch {i['batch']} x {i['seq']} tokens, "
        f"{i['steps_per_round']} steps per side per round, {j['threads']} thread(s), {j['machine']['cores']} cores, "
        f"commit `{commit(j)}`, median of {j['rounds']} rounds (min .. max).",
        "",
        "| side | tokens/s | ratio to bare |",
        "|---|---|---|",
        f"| bare loop (zero_grad, forward, backward, AdamW step) | {t / j['bare_s']['median']:,.0f} | 1.000 |",
        f"| `Trainer::Step` (+ batch sampling, LR schedule, clipping) | {t / j['trainer_s']['median']:,.0f} | "
        f"{spread(r, bold=True)} |"]) + "\n"


def dist_train(j):
    """bench_dist_train.sh: N1 against N2 tokens/s per round, allreduce time."""
    import statistics
    rounds = sorted({r["round"] for r in j["runs"]})
    arms = sorted({r["arm"] for r in j["runs"]})

    def cells(arm, field):
        by_round = {r["round"]: r[field] for r in j["runs"] if r["arm"] == arm}
        return [by_round[k] for k in rounds], statistics.median(by_round.values())

    out = ["| | " + " | ".join(f"round {k}" for k in rounds) + " | median |",
           "|---" * (len(rounds) + 2) + "|"]
    for arm in arms:
        v, m = cells(arm, "train_tokens_per_second")
        out.append(f"| {arm} tokens/s | " + " | ".join(f"{x:,.0f}" for x in v) + f" | **{m:,.0f}** |")
    for arm in arms:
        v, m = cells(arm, "allreduce_ms_per_step")
        if m > 0:
            out.append(f"| {arm} allreduce ms per step | " + " | ".join(f"{x:.1f}" for x in v) +
                       f" | **{m:.1f}** (of a {j['step_ms_' + arm]:.0f} ms step) |")
    return "\n".join(out) + "\n"


def hf_forward_speed(j):
    """bench_hf_forward: loaded GPT-2 against the native model, per workload."""
    names = {"forward": "forward, T = {t}", "decode": "decode {t} tokens after a {p}-token prompt (KV cache)"}
    out = [f"| workload ({j['machine']['threads']} intra-op thread(s)) | loaded GPT-2 median s | native median s | "
           "ratio native/hf |",
           "|---|---|---|---|"]
    for t in j["timings"]:
        words = t["label"].split()
        name = (names["forward"].format(t=words[2]) if words[0] == "forward"
                else names["decode"].format(t=words[1], p=words[3]))
        out.append(f"| {name} | {t['hf']['median_s']:.4f} | {t['native']['median_s']:.4f} | "
                   f"**{t['ratio_native_over_hf_median']:.3f}** |")
    return "\n".join(out) + "\n"


def hf_forward_memory(j):
    """bench_hf_forward: RssAnon growth while loading, over parameter bytes."""
    m = j["memory"]

    def mib(x):
        return x / 2**20
    hf, nat = m["hf"], m["native"]
    return "\n".join([
        "| memory (RssAnon growth while loading) | MiB | / parameter bytes |",
        "|---|---|---|",
        f"| loaded GPT-2 | {mib(hf['rss_anon_after'] - hf['rss_anon_before']):.1f} "
        f"({mib(hf['rss_anon_after_trim'] - hf['rss_anon_before']):.1f} after `malloc_trim`) | "
        f"**{hf['growth_over_parameter_bytes']:.3f}** ({hf['growth_after_trim_over_parameter_bytes']:.3f}) |",
        f"| native model, for comparison | {mib(nat['rss_anon_after'] - nat['rss_anon_before']):.1f} | "
        f"{nat['growth_over_parameter_bytes']:.3f} |"]) + "\n"


def builder(j):
    """bench_builder: the whole build against the raw forward (absent with --memory-only), and its memory growth."""
    i, t, m = j["inputs"], j["throughput"], j["memory"]
    mib = 2**20
    rows = [f"`{i['corpus']}`: {i['docs']:,} documents, {i['tokens']:,} tokens, {i['chunks']:,} chunks, index "
            f"`{i['index_factory']}`" + (f", embedding batch {i['embed_batch']}" if "embed_batch" in i else "") +
            f", {j['machine']['cores']} cores, commit `{commit(j)}`, "
            + (f"median of {j['rounds']} rounds (min .. max)." if t else "memory only (one build per size)."),
            "",
            "| measure | value |",
            "|---|---|"]
    if t:
        rows += [f"| raw embedding forward, s | {t['raw_forward_s']['median']:.2f} |",
                 f"| whole build (chunk, store, embed, FAISS train + add, save), s | "
                 f"{t['whole_build_s']['median']:.2f} |",
                 f"| **whole build / raw forward** (target >= 0.9) | "
                 f"{spread(t['ratio_whole_build_over_raw'], bold=True)} |"]
    rows += [f"| peak RSS of the build / of loading the model | {m['build_peak_bytes'] / mib:,.1f} / "
             f"{m['model_load_peak_bytes'] / mib:,.1f} MiB |",
             f"| index on disk | {m['index_bytes'] / mib:,.1f} MiB |",
             f"| **(peak - model load) / index on disk** (target <= 2) | **{m['growth_over_index']:.2f}** |",
             f"| the same for the first {i['docs_small']:,} documents ({i['chunks_small']:,} chunks, "
             f"`{i['index_factory_small']}`): peak / index on disk / ratio | "
             f"{m['build_peak_bytes_small'] / mib:,.1f} MiB / {m['index_bytes_small'] / mib:,.1f} MiB / "
             f"{m['growth_over_index_small']:.2f} |"]
    return "\n".join(rows) + "\n"


def front_latency(j):
    """bench_front: the fan-out front against one server holding the whole index."""
    arms = j["arms"]
    names = [("single", "single server, Search"), ("front", f"front over {len(j['config']['shards'])} shards, Search"),
             ("embed", ". embed one query (in the bench process, same model)")]
    names += [(f"shard{n}_search_vectors", f". shard {n}, SearchVectors") for n in range(len(j["config"]["shards"]))]
    rows = ["| arm | p50 ms | p99 ms | mean ms |", "|---|---|---|---|"]
    rows += [f"| {label} | {arms[k]['p50_ms']:.2f} | {arms[k]['p99_ms']:.2f} | {arms[k]['mean_ms']:.2f} |"
             for k, label in names]
    per_round = ", ".join(f"{r[2]:.3f}" for r in j["rounds"])
    return "\n".join(rows + [
        "",
        f"**p50 front / single = {j['p50_ratio_front_over_single']:.3f}** (per round {per_round}; goal <= 1.2); "
        f"{j['answers_other_neighbours']} of {j['answers_compared']} answers had other neighbours or another order "
        f"than the single index's."]) + "\n"


def growth_pipeline(j):
    """bench_growth.sh's pipeline table and fits, as growth_report.py prints them."""
    import growth_report  # numpy: Debian's python3-numpy
    return growth_report.pipeline_tables(j)[0].rstrip("\n") + "\n"


def growth_synthetic(j):
    """bench_growth.sh's FAISS-only table and fits, as growth_report.py prints them."""
    import growth_report
    return growth_report.synthetic_tables(j)[0].rstrip("\n") + "\n"


def tokenizer(j):
    """bench_tokenizer: BPE training time and encode throughput, ours and GPT-2's."""
    i, o, g = j["inputs"], j["ours"], j["gpt2"]
    rows = [f"`{i['corpus']}` ({i['bytes'] / 1e6:.2f} MB of text), one thread, {j['machine']['cores']} cores, "
            f"commit `{commit(j)}`, median of {j['rounds']} rounds (min .. max).",
            "",
            "| what | figure | target |",
            "|---|---|---|",
            f"| train byte-level BPE, vocab {i['vocab_size']:,}, s | {spread(o['train_s'])} | < 60 |",
            f"| encode, cold cache, MB/s ({o['bytes_per_token']:.2f} bytes/token) | "
            f"{spread(o['encode_cold_mb_per_s'], bold=True)} | >= 5 |",
            f"| encode, warm cache, MB/s | {spread(o['encode_warm_mb_per_s'])} | |"]
    if g:
        rows.append(f"| encode with GPT-2's vocabulary, cold cache, MB/s ({g['bytes_per_token']:.2f} bytes/token) | "
                    f"{spread(g['encode_cold_mb_per_s'])} | |")
    return "\n".join(rows) + "\n"


def shard_build(j):
    """bench_shard.sh: single against sharded builds, and the efficiency measures."""
    med, n2, n4 = j["median_seconds"], j["N2"], j["N4"]
    chunks = sum(n2["shard_chunks"])

    def slash(v, f):
        return " / ".join(f.format(x) for x in v)

    def eff(v):  # below the 0.9 goal in bold
        return ", ".join(f"**{x:.2f}**" if x < 0.9 else f"{x:.2f}" for x in v)

    def bold_over(x, goal):
        return f"**{x:.2f}**" if x > goal else f"{x:.2f}"
    return "\n".join([
        "| build arm | chunks | seconds |",
        "|---|---|---|",
        f"| single index, 1 core | {chunks:,} | {med['single_1t']:.2f} |",
        f"| single index, both cores (what a user runs today) | {chunks:,} | {med['single_2t']:.2f} |",
        f"| N = 2 side by side, 1 core each: wall | | {med['N2_side_wall']:.2f} |",
        f"| . shard 0 / shard 1 | {slash(n2['shard_chunks'], '{:,}')} | {slash(n2['shard_seconds'], '{:.2f}')} |",
        f"| N = 4 one after another, 1 core: shards 0..3 | {slash(n4['shard_chunks'], '{:,}')} | "
        f"{slash(n4['shard_seconds'], '{:.2f}')} |",
        "",
        "| measure | N = 2 | N = 4 |",
        "|---|---|---|",
        f"| efficiency per shard, single(1 core) / (N x shard time) (goal >= 0.9) | {eff(n2['efficiency_per_shard'])} | "
        f"{eff(n4['efficiency_per_shard'])} |",
        f"| sum of shard times / single (1 core) (goal <= 1.1) | "
        f"{bold_over(n2['sum_shard_seconds_over_single_1t'], 1.1)} | "
        f"{bold_over(n4['sum_shard_seconds_over_single_1t'], 1.1)} |",
        f"| imbalance, largest / mean shard: chunks | {n2['imbalance_chunks']:.2f} | {n4['imbalance_chunks']:.2f} |",
        f"| imbalance: seconds | {n2['imbalance_seconds']:.2f} | {n4['imbalance_seconds']:.2f} |",
        f"| speed-up of the wall time | {j['speedup_N2_side_over_single_2t']:.2f} against the single build on both "
        f"cores; {j['speedup_N2_side_over_single_1t']:.2f} against one core | "
        f"{med['single_1t'] / j['N4_projected_wall_on_4_cores']:.1f} against one core, **projected** (4 machines of "
        "1 core: the largest shard's time) |"]) + "\n"


def mode_comparison(j):
    """bench_modes.sh: every served mode's perplexity with leakage on and off, and its tokens/s."""
    lm = next(r for r in j["rows"] if r["mode"] == "lm")
    lines = [f"{lm['documents']} documents ({j['documents']}), {lm['tokens']:,} tokens, {j['machine']['cores']} "
             f"cores ({j['machine']['cpu']}), commit `{commit(j)}`, median of {j['rounds']} rounds (min .. max), "
             "one server, arms alternated.", "",
             "| mode | leakage | perplexity | vs lm | tokens/s | vs lm's tokens/s |",
             "|---|---|---|---|---|---|"]
    lm_tps = lm["tokens_per_second"]["median"]
    order = {"lm": 0, "knnlm": 1, "retro": 2, "ralm": 3, "infgram": 4}
    for r in sorted(j["rows"], key=lambda r: (order.get(r["mode"], 9), r["leakage"] != "on")):
        t = r["tokens_per_second"]
        name = r["mode"] + (f" (λ {r['lambda']:g}, λ_sparse {r['lambda_sparse']:g})" if "lambda" in r else "")
        if "ralm" in r:
            g = r["ralm"]
            name += f" ({g['search_method']}, s {g['stride']}, q {g['query_tokens']}, passage {g['passage_tokens']})"
        leak = "-" if r["mode"] == "lm" else ("on (own document counted)" if r["leakage"] == "on"
                                             else "off (own document excluded)")
        if "leakage_filter" in r:  # RETRO's own filter
            leak += f", filter {r['leakage_filter']} tokens" if r["leakage_filter"] else ", filter off"
        lines.append(f"| {name} | {leak} | {r['perplexity']:.2f} | {pct(r['perplexity'] / lm['perplexity'] - 1)} | "
                     f"{t['median']:,.0f} ({t['min']:,.0f} .. {t['max']:,.0f}) | {t['median'] / lm_tps:.3f} |")
    return "\n".join(lines) + "\n"


def infgram_lambdas(j):
    """scripts/tune_infgram.py: the weights chosen on the dev half, reported on the test half."""
    c = j["chosen"]
    return "\n".join([
        f"Chosen on the dev half ({len(j['dev_documents'])} documents, {j['dev_tokens']:,} tokens), reported on the "
        f"test half ({len(j['test_documents'])} documents, {j['test_tokens']:,} tokens); own document "
        f"{'excluded' if j['exclude_own_document'] else 'counted'}.", "",
        "| split | λ | λ_sparse | perplexity | LM alone | vs LM |",
        "|---|---|---|---|---|---|",
        f"| dev (chosen here) | {c['lambda']:g} | {c['lambda_sparse']:g} | {j['dev_perplexity']:.2f} | | |",
        f"| **test** | {c['lambda']:g} | {c['lambda_sparse']:g} | **{j['test_perplexity']:.2f}** | "
        f"{j['test_lm_perplexity']:.2f} | {pct(j['test_perplexity'] / j['test_lm_perplexity'] - 1)} |",
        "",
        f"On the test half {100 * j['sparse_fraction_test']:.1f}% of the estimates are sparse; the matched suffix "
        f"is {j['mean_suffix_tokens_test']:.2f} tokens on average."]) + "\n"


def ralm_dev(j):
    """scripts/tune_ralm.py: retriever and passage length, dev half only, own document excluded."""
    lines = [f"Dev half ({len(j['dev_documents'])} documents, {j['dev_tokens']:,} tokens), own document excluded, "
             f"s {j['stride']}, q {j['query_tokens']}; the LM alone: {j['dev_lm_perplexity']:.2f}.", "",
             "| retriever | passage tokens | dev perplexity | vs LM | seconds |",
             "|---|---|---|---|---|"]
    c = j["chosen"]
    for g in j["grid"]:
        chosen = g["search_method"] == c["search_method"] and g["passage_tokens"] == c["passage_tokens"]
        ppl = f"**{g['dev_perplexity']:.2f}** (chosen)" if chosen else f"{g['dev_perplexity']:.2f}"
        lines.append(f"| {g['search_method']} | {g['passage_tokens']} | {ppl} | "
                     f"{pct(g['dev_perplexity'] / j['dev_lm_perplexity'] - 1)} | {g['seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def memorization_modes(j):
    """bench_memorization_modes.sh: exact greedy suffixes (and per-token match) by mode and by where the
    suffix can come from."""
    conds = [("train", "counted", "weights + index"), ("train", "excluded", "weights only"),
             ("validation", "counted", "index only"), ("validation", "excluded", "neither")]
    cell = {(r["mode"], r["split"], r["own_document"]): next(iter(r["by_prefix"].values())) for r in j["runs"]}
    order = {"lm": 0, "knnlm": 1, "retro": 2, "ralm": 3, "infgram": 4}
    modes = sorted({r["mode"] for r in j["runs"]}, key=lambda m: order.get(m, 9))
    lines = [f"{j['samples']} draws per condition (the same draws for every mode), {j['prefix_tokens']}-token prefix, "
             f"greedy {j['suffix_tokens']}-token suffix; commit `{commit(j)}`. Each cell: exact-match rate of the "
             "whole suffix (per-token match).", "",
             "| mode | " + " | ".join(f"{c[2]} ({c[0]}, own document {c[1]})" for c in conds) + " |",
             "|---|" + "---|" * len(conds)]
    for m in modes:
        row = []
        for split, own, _ in conds:
            t = cell.get((m, split, own))
            row.append("-" if t is None else f"{t['exact']:.2f} ({t['token_match']:.2f})")
        lines.append(f"| {m} | " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def canaries(j):
    """scripts/study_canaries.py: each mode's mean exposure and extractions of canaries by copies."""
    order = {"lm": 0, "knnlm": 1, "retro": 2, "ralm": 3, "infgram": 4}
    copies = sorted({s["copies"] for s in j["summary"]})
    trained = {c: sorted(k["trained_copies"] for k in j["canaries"] if k["copies"] == c) for c in copies}
    lines = [f"{len(j['canaries'])} canaries of {j['secret_space_bits']:.1f} bits each, {j['candidates']} random "
             f"candidates per canary (exposure measured up to {j['exposure_cap_bits']:.2f} bits), `{j['preset']}` "
             f"model trained on the corpus with them; commit `{commit(j)}`. Copies trained on (the rest fell in the validation split): "
             + "; ".join(f"{c} copies: {', '.join(map(str, trained[c]))}" for c in copies) + ".", "",
             "| mode | " + " | ".join(f"{c} copies: exposure (bits), extracted" for c in copies) + " |",
             "|---|" + "---|" * len(copies)]
    cell = {(s["mode"], s["copies"]): s for s in j["summary"]}
    for m in sorted(j["modes"], key=lambda m: order.get(m, 9)):
        lines.append(f"| {m} | " + " | ".join(
            f"{cell[(m, c)]['mean_exposure']:.2f}, {cell[(m, c)]['extracted']}/{cell[(m, c)]['canaries']}"
            for c in copies) + " |")
    return "\n".join(lines) + "\n"


def retro_overlap(j):
    """scripts/study_retro_overlap.sh: RETRO's perplexity by chunk overlap, retrieval on/off/random, leakage filter
    on and off."""
    first = next(iter(j["runs"].values()))
    lines = [f"{first['documents']} validation documents, chunks of {first['chunk_tokens']} tokens, "
             f"{first['search_method']} neighbours, commit `{commit(j)}`. Overlap: the longest run a chunk shares with "
             "a neighbour it attends to, over its length; a document's first chunk attends to none and is left out.",
             "", "| leakage filter | overlap | chunks | tokens | on | off | random | on vs off |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in sorted(j["runs"].items(), key=lambda kv: -kv[1]["leakage_filter"]):
        f = r["leakage_filter"]
        label = f"{f} tokens ({r['neighbours_filtered']:,} dropped)" if f > 0 else "off"
        rows = [(f"{100 * b['overlap'][0]:.1f}-{100 * b['overlap'][1]:.1f}%", b) for b in r["buckets"] if b["tokens"]]
        rows.append(("all", r["all"]))
        for bucket, b in rows:
            p = b["perplexity"]
            lines.append(f"| {label} | {bucket} | {b['chunks']:,} | {b['tokens']:,} | {p['on']:.2f} | {p['off']:.2f} | "
                         f"{p['random']:.2f} | {pct(p['on'] / p['off'] - 1)} |")
    return "\n".join(lines) + "\n"


def probe_popularity(j):
    """rag eval probes --popularity runs: P@1 (probes) by subject popularity bucket, one row per run."""
    order = ["0", "1-9", "10-99", "100-999", "1000+"]
    buckets = [b for b in order if any(b in r["by_popularity"] for r in j["runs"])]
    first = j["runs"][0]
    lines = [f"Probe half **{first['probe_half']}** of `{first['file']}`, {first['probes']} probes; subject "
             f"popularity = occurrences in `{first['popularity_index']}` (the corpus without the facts).", "",
             "| mode | evidence document | " + " | ".join(f"P@1, subject seen {b}" for b in buckets) +
             " | P@1 all | MRR all |",
             "|---|---|" + "---|" * len(buckets) + "---|---|"]
    for r in j["runs"]:
        cells = []
        for b in buckets:
            m = r["by_popularity"].get(b)
            cells.append(f"{m['p_at_1']:.3f} ({m['probes']})" if m else "")
        ev = "-" if r["mode"] == "lm" else ("excluded" if r["exclude_evidence"] else "in the index")
        name = r["mode"] + (f" ({r['ralm']['search_method']})" if "ralm" in r else "")
        lines.append(f"| {name} | {ev} | " + " | ".join(cells) + f" | {r['p_at_1']:.3f} | {r['mrr']:.3f} |")
    return "\n".join(lines) + "\n"


def retro_recipe_dev(j):
    """scripts/tune_retro_recipe.sh: RETRO copy-training candidates on the probes' dev half, one seed each."""
    cs = j["candidates"]
    rels = sorted(cs[0]["by_relation_in"])
    lines = [f"Probe half **{j['probe_half']}**, {cs[0]['probes']} probes (lm P@1 {cs[0]['lm_p_at_1']:.3f}); "
             f"one retrofit per candidate, seed {cs[0]['seed']}; choice: {j['rule']}; commit `{short_commit(j['git_commit'])}`.", "",
             "| prompt windows retrieving their own document | steps | " + " | ".join(f"P@1 {r}" for r in rels) +
             " | **P@1, evidence in the index** | P@1, evidence excluded | chosen |",
             "|---|---|" + "---|" * len(rels) + "---|---|---|"]
    for c in cs:
        chosen = "**yes**" if (c["own_document"], c["steps"]) == (j["chosen"]["own_document"], j["chosen"]["steps"]) else ""
        lines.append(f"| {c['own_document']:g} | {c['steps']} | " + " | ".join(f"{c['by_relation_in'][r]:.3f}" for r in rels) +
                     f" | **{c['p_at_1_in']:.3f}** | {c['p_at_1_excluded']:.3f} | {chosen} |")
    return "\n".join(lines) + "\n"


def retro_probes(j):
    """scripts/study_retro_probes.sh: RETRO's probe P@1 on a half (test) over seeds, evidence in the index / excluded."""
    order = ["0", "1-9", "10-99", "100-999", "1000+"]
    lm, runs = j["lm"], j["runs"]
    buckets = [b for b in order if b in lm["by_popularity"]]

    def over_seeds(values):
        return f"{sum(values) / len(values):.3f} [{min(values):.3f}-{max(values):.3f}]"

    lines = [f"Probe half **{lm['probe_half']}**, {lm['probes']} probes; RETRO: {len(j['seeds'])} seeds "
             f"({', '.join(map(str, j['seeds']))}), {j['steps']} steps each"
             + (f", own document {j['own_document']:g}" if "own_document" in j else "") + ", mean [min-max] over the seeds; "
             f"subject popularity = occurrences in `{j['popularity_index']}`; commit `{short_commit(j['git_commit'])}`.", "",
             "| model | evidence document | " + " | ".join(f"P@1, subject seen {b} ({lm['by_popularity'][b]['probes']})"
                                                 for b in buckets) + " | " +
             " | ".join(f"P@1 {rel} ({m['probes']})" for rel, m in sorted(lm["by_relation"].items())) + " | **P@1 all** | by seed |",
             "|---|---|" + "---|" * (len(buckets) + len(lm["by_relation"])) + "---|---|"]
    lines.append("| lm | - | " + " | ".join(f"{lm['by_popularity'][b]['p_at_1']:.3f}" for b in buckets) + " | " +
                 " | ".join(f"{lm['by_relation'][rel]['p_at_1']:.3f}" for rel in sorted(lm["by_relation"])) +
                 f" | **{lm['p_at_1']:.3f}** | |")
    for evidence, label in (("in", "in the index"), ("excluded", "excluded")):
        rs = runs[evidence]
        cells = [over_seeds([r["by_popularity"][b]["p_at_1"] for r in rs]) for b in buckets]
        cells += [over_seeds([r["by_relation"][rel]["p_at_1"] for r in rs]) for rel in sorted(lm["by_relation"])]
        lines.append(f"| retro (bm25) | {label} | " + " | ".join(cells) +
                     f" | **{over_seeds([r['p_at_1'] for r in rs])}** | " +
                     " / ".join(f"{r['p_at_1']:.3f}" for r in rs) + " |")
    return "\n".join(lines) + "\n"


def knnlm_blas(j):
    """bench_blas_pool.py: bench_knnlm's arms under each OpenBLAS build, medians over rounds."""
    builds = ", ".join(f"{b}: LibTorch threads {v['threads']}" + "".join(f", {k}={x}" for k, x in v.get("env", {}).items())
                       for b, v in j["builds"].items())
    out = [f"{len(j['inputs']['validation_docs'])} validation documents from #{j['inputs']['docs_offset']} "
           f"({j['tokens']:,} tokens), datastore {j['inputs']['keys']:,} keys `{j['inputs']['factory']}`, "
           f"{j['machine']['cores']} cores ({j['machine']['cpu']}), commit `{commit(j)}`, one process per build "
           f"per round, median of {j['rounds']} rounds (min .. max); {builds}. Reference "
           f"({j['reference']['label']}): perplexity {j['reference']['perplexity']:.3f}.",
           "",
           "| BLAS | arm | path | tokens/s | vs lm (min .. max) | positions searched | vs reference |",
           "|---|---|---|---|---|---|---|"]
    for a in j["arms"]:
        is_lm = a["perplexity_over_reference"] is None
        searched = "" if is_lm else f"{100 * a['searched_fraction']:.1f}%"
        vs = "" if is_lm else pct(a["perplexity_over_reference"])
        ok = not is_lm and a["ratio_to_lm"]["median"] >= 0.8 and a["perplexity_over_reference"] <= 0.01
        out.append(f"| {a['blas']} | {a['label']} | {a['path']} | {a['tokens_per_s']['median']:,.1f} | "
                   f"{spread(a['ratio_to_lm'], bold=ok)} | {searched} | {vs} |")
    return "\n".join(out) + "\n"


def load_blas(j):
    """bench_blas_load.py: a loaded rag serve under each OpenBLAS build, medians over rounds."""
    m = j["machine"]
    out = [f"{j['clients']} clients, {j['seconds']} s per mode, {m['cores']} cores ({m['cpu']}) shared by server and "
           f"clients, commit `{commit(j)}`, one server per build per round, median of {j['rounds']} rounds "
           f"(min .. max).",
           "",
           "| BLAS | mode | QPS | p50 ms | p99 ms | errors |",
           "|---|---|---|---|---|---|"]
    for a in j["arms"]:
        q = a["qps"]
        out.append(f"| {a['blas']} | {a['mode']} | {q['median']:.1f} ({q['min']:.1f} .. {q['max']:.1f}) | "
                   f"{a['p50_ms']['median']:,.0f} | {a['p99_ms']['median']:,.0f} | {a['errors']} |")
    return "\n".join(out) + "\n"


def procs_blas(j):
    """bench_blas_procs.py: a command running several rag processes at once, under each build."""
    m = j["machine"]
    envs = "; ".join(f"{b}: " + (", ".join(f"{k}={x}" for k, x in v["env"].items()) or "no OpenMP setting")
                     for b, v in j["builds"].items())
    out = [f"`{' '.join(j['cmd'])}`, {m['cores']} cores ({m['cpu']}), commit `{commit(j)}`, once per "
           f"build per round, order flipped, median of {j['rounds']} rounds (min .. max); {envs}.",
           "",
           "| BLAS | wall s | user s | system s |",
           "|---|---|---|---|"]
    for a in j["arms"]:
        w = a["wall_s"]
        out.append(f"| {a['blas']} | {w['median']:.1f} ({w['min']:.1f} .. {w['max']:.1f}) | "
                   f"{a['user_s']['median']:.1f} | {a['sys_s']['median']:.1f} |")
    return "\n".join(out) + "\n"


RENDERERS = {f.__name__: f for f in (retro_recipe_dev, retro_probes, probe_popularity, mode_comparison, infgram_lambdas, ralm_dev, memorization_modes, canaries, retro_overlap, knnlm_scoring, knnlm_blas, load_blas, procs_blas, knnlm_build, search_latency, trainer_overhead, dist_train,
                                     hf_forward_speed, hf_forward_memory, builder, shard_build,
                                     tokenizer, front_latency, growth_pipeline, growth_synthetic)}


def main():
    args = sys.argv[1:]
    mode = "--check"
    if args and args[0] in ("--check", "--write"):
        mode = args.pop(0)
    if len(args) > 1 or any(a.startswith("-") for a in args):
        sys.exit(__doc__)
    path = args[0] if args else os.path.join(ROOT, "docs", "results.md")
    text = open(path).read()
    problems = []

    def render(m):
        name, source = m.group(2), m.group(3)
        if name not in RENDERERS:
            problems.append(f"{source}: unknown renderer '{name}' (known: {', '.join(sorted(RENDERERS))})")
            return m.group(0)
        try:
            table = RENDERERS[name](json.load(open(os.path.join(ROOT, source))))
        except (OSError, ValueError, KeyError) as e:
            problems.append(f"{source}: cannot render '{name}': {e!r}")
            return m.group(0)
        if table != m.group(4):
            problems.append(f"{source}: the '{name}' table in {path} differs from what its JSON gives")
        return m.group(1) + table + m.group(5)

    new_text, n = BLOCK.subn(render, text)
    if mode == "--write":
        if new_text != text:
            open(path, "w").write(new_text)
        unrendered = [p for p in problems if "differs" not in p]
        for p in unrendered:
            print(f"results_tables: {p}", file=sys.stderr)
        print(f"results_tables: {n} table(s) written in {path}")
        sys.exit(1 if unrendered else 0)
    for p in problems:
        print(f"results_tables: {p}", file=sys.stderr)
    if problems:
        print("results_tables: run `python3 bench/results_tables.py --write` after a rerun", file=sys.stderr)
        sys.exit(1)
    print(f"results_tables: {n} table(s) in {path} match their JSON")


if __name__ == "__main__":
    main()
