#!/usr/bin/env python3
"""Tables and plots of the cost-against-corpus-size study from the raw
output of bench/bench_growth.sh (issue 23).

    growth_report.py GROWTH_JSON FIGURE_DIR > tables.md

Prints the Markdown tables of docs/results.md (medians over rounds) with the
fitted growth laws, and draws FIGURE_DIR/growth_pipeline.svg and
FIGURE_DIR/growth_synthetic.svg with gnuplot: measured points and the fitted
curves. Fits are least squares, in numpy:
  linear      y = a + b n            (build seconds, bytes: work per item)
  sqrt        y = a + b sqrt(n)      (IVF search at fixed nprobe, nlist ~ sqrt n)
  power       log y = log a + p log n (the exponent says which law holds)
  ivf_add     y = a n + b n sqrt(n)  (adding to IVF: each vector is compared
                                      with nlist ~ sqrt(n) centroids)
"""
import json
import os
import statistics
import subprocess
import sys

import numpy as np


def median_by(rows, key, fields):
    groups = {}
    for r in rows:
        groups.setdefault(r[key], []).append(r)
    out = []
    for k, rs in groups.items():
        m = {key: k, "rounds": len(rs)}
        for f in fields:
            m[f] = statistics.median(r[f] for r in rs)
        for f, v in rs[0].items():
            m.setdefault(f, v)
        out.append(m)
    return out


def fit(x, y, law):
    x, y = np.asarray(x, float), np.asarray(y, float)
    if law == "power":
        p, loga = np.polyfit(np.log(x), np.log(y), 1)
        return {"law": law, "a": float(np.exp(loga)), "p": float(p)}
    # y = a * first + b * second, least squares.
    first, second = {"linear": (np.ones_like(x), x), "sqrt": (np.ones_like(x), np.sqrt(x)),
                     "ivf_add": (x, x * np.sqrt(x))}[law]
    (a, b), *_ = np.linalg.lstsq(np.stack([first, second], axis=1), y, rcond=None)
    ss = float(((y - (a * first + b * second)) ** 2).sum())
    tot = float(((y - y.mean()) ** 2).sum()) or 1.0
    return {"law": law, "a": float(a), "b": float(b), "r2": 1 - ss / tot}


def gp(f):
    """The fitted curve as a gnuplot expression in x."""
    if f["law"] == "power":
        return f"{f['a']:.6g}*x**{f['p']:.6g}"
    if f["law"] == "sqrt":
        return f"{f['a']:.6g}+{f['b']:.6g}*sqrt(x)"
    if f["law"] == "ivf_add":
        return f"{f['a']:.6g}*x+{f['b']:.6g}*x*sqrt(x)"
    return f"{f['a']:.6g}+{f['b']:.6g}*x"


def law_text(f, unit, n="n"):
    if f["law"] == "power":
        return f"{f['a']:.3g} {unit} x {n}^{f['p']:.2f}"
    if f["law"] == "ivf_add":
        return f"{f['a']:.3g} x {n} + {f['b']:.3g} x {n} sqrt({n}) {unit} (R^2 {f['r2']:.3f})"
    term = f"sqrt({n})" if f["law"] == "sqrt" else n
    return f"{f['a']:.3g} + {f['b']:.3g} x {term} {unit} (R^2 {f['r2']:.3f})"


def plot(path, title, panels, xlabel, logx):
    """panels: (ylabel, xs, ys, fit[, xlabel]) each; a 2 x 2 multiplot."""
    script = [f"set terminal svg size 1000,760 dynamic font 'sans,11'", f"set output '{path}'",
              f"set multiplot layout 2,2 title '{title}'", "set key top left", "set grid"]
    script += ["set logscale x", "set format x '10^{%L}'"] if logx else ["set format x '%.1s%c'"]
    for ylabel, xs, ys, f, *panel_xlabel in panels:
        data = "\n".join(f"{x} {y}" for x, y in zip(xs, ys))
        script += [f"set xlabel '{panel_xlabel[0] if panel_xlabel else xlabel}'", f"set ylabel '{ylabel}'",
                   f"plot '-' using 1:2 with points pt 7 ps 0.8 title 'measured', "
                   f"{gp(f)} with lines lw 2 title 'fit: {f['law']}'", data, "e"]
    script.append("unset multiplot")
    subprocess.run(["gnuplot"], input="\n".join(script) + "\n", text=True, check=True)


def pipeline_tables(raw):
    """The pipeline table and its fits as Markdown, and the plot's panels; ("", None) without pipeline rows."""
    pipe = [r for r in raw["pipeline"] if r["corpus"] != "model-only"]
    bare = [r["served_rss_bytes"] for r in raw["pipeline"] if r["corpus"] == "model-only"]
    if not pipe:
        return "", None
    bare_rss = statistics.median(bare)
    rows = sorted(median_by(pipe, "corpus", ["build_seconds", "build_peak_rss_bytes", "search_p50_ms",
                                             "served_rss_bytes", "index_dir_bytes", "datastore_bytes"]),
                  key=lambda r: r["chunks"])
    n = [r["chunks"] for r in rows]
    keys = [r["datastore_keys"] for r in rows]
    build = [r["build_seconds"] for r in rows]
    chunk_bytes = [r["index_dir_bytes"] - r["datastore_bytes"] for r in rows]
    ds_bytes = [r["datastore_bytes"] for r in rows]
    ram = [r["served_rss_bytes"] - bare_rss for r in rows]
    p50 = [r["search_p50_ms"] for r in rows]
    fits = {"build": fit(keys, build, "linear"), "build_power": fit(keys, build, "power"),
            "ram": fit(keys, ram, "linear"), "p50": fit(n, p50, "sqrt")}
    out = [f"Pipeline (`rag build --datastore`, model preset `{raw['preset']}`, {raw['cores']} cores; "
           f"medians of {rows[0]['rounds']} round(s)):\n",
           "| corpus | docs | chunks | kNN-LM keys | factories (chunks; keys) | build s | build peak RSS | "
           "chunk index on disk (B/chunk) | datastore on disk (B/key) | served RSS above model (B/key) | "
           "search p50 ms |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r, cb, db, m in zip(rows, chunk_bytes, ds_bytes, ram):
        out.append(f"| {r['corpus']} | {r['documents']:,} | {r['chunks']:,} | {r['datastore_keys']:,} | "
                   f"{r['index_factory']}; {r['datastore_factory']} | "
                   f"{r['build_seconds']:.1f} | {r['build_peak_rss_bytes'] / 2**20:,.0f} MiB | "
                   f"{cb / 2**20:.1f} MiB ({cb / r['chunks']:,.0f}) | {db / 2**20:.1f} MiB "
                   f"({db / r['datastore_keys']:.1f}) | {m / 2**20:.1f} MiB ({m / r['datastore_keys']:.1f}) | "
                   f"{r['search_p50_ms']:.2f} |")
    out.append(f"\nFits (n = chunks, K = kNN-LM keys): build seconds = {law_text(fits['build'], 's', 'K')}; "
               f"as a power law {law_text(fits['build_power'], 's', 'K')}; served RSS above the model = "
               f"{law_text(fits['ram'], 'B', 'K')}; search p50 = {law_text(fits['p50'], 'ms')}.\n")
    panels = [("build seconds", keys, build, fits["build"]),
              ("served RSS above model (MiB)", keys, [m / 2**20 for m in ram],
               dict(fits["ram"], a=fits["ram"]["a"] / 2**20, b=fits["ram"]["b"] / 2**20)),
              ("datastore on disk (MiB)", keys, [b / 2**20 for b in ds_bytes],
               fit(keys, [b / 2**20 for b in ds_bytes], "linear")),
              ("search p50 ms", n, p50, fits["p50"], "chunks")]
    return "\n".join(out) + "\n", panels


def synthetic_tables(raw):
    """The FAISS-only table and its fits as Markdown, the plot's panels and its dim/nprobe; ("", None, None) if none."""
    syn = raw["synthetic"]
    if not syn:
        return "", None, None
    rows = sorted(median_by(syn, "n", ["train_seconds", "add_seconds", "disk_bytes", "rss_anon_bytes",
                                      "query_p50_ms", "query_p99_ms"]), key=lambda r: r["n"])
    n = [r["n"] for r in rows]
    add = [r["add_seconds"] for r in rows]
    train = [r["train_seconds"] for r in rows]
    disk = [r["disk_bytes"] for r in rows]
    ram = [r["rss_anon_bytes"] for r in rows]
    p50 = [r["query_p50_ms"] for r in rows]
    fits = {"add": fit(n, add, "ivf_add"), "add_power": fit(n, add, "power"),
            "train_power": fit(n, train, "power"), "disk": fit(n, disk, "linear"),
            "ram": fit(n, ram, "linear"), "p50": fit(n, p50, "sqrt"), "p50_power": fit(n, p50, "power")}
    out = [f"FAISS only (`bench_faiss_growth`, d = {rows[0]['dim']}, IVF round(sqrt n),PQ, nprobe "
           f"{rows[0]['nprobe']}, nq = 1; medians of {rows[0]['rounds']} rounds):\n",
           "| n | factory | train rows | train s | add s | on disk (B/vector) | RSS (B/vector) | "
           "query p50 ms | p99 ms |",
           "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['n']:,} | {r['factory']} | {r['train_rows']:,} | {r['train_seconds']:.1f} | "
                   f"{r['add_seconds']:.1f} | {r['disk_bytes'] / 2**20:,.1f} MiB ({r['disk_bytes'] / r['n']:.1f}) | "
                   f"{r['rss_anon_bytes'] / 2**20:,.1f} MiB ({r['rss_anon_bytes'] / r['n']:.1f}) | "
                   f"{r['query_p50_ms']:.3f} | {r['query_p99_ms']:.3f} |")
    out.append(f"\nFits: add seconds = {law_text(fits['add'], 's')} (power law: {law_text(fits['add_power'], 's')}); "
               f"train seconds ~ {law_text(fits['train_power'], 's')}; on disk = {law_text(fits['disk'], 'B')}; "
               f"RSS = {law_text(fits['ram'], 'B')}; query p50 = {law_text(fits['p50'], 'ms')} "
               f"(power law: {law_text(fits['p50_power'], 'ms')}).\n")
    panels = [("add seconds", n, add, fits["add"]),
              ("train seconds", n, train, fits["train_power"]),
              ("RSS (MiB)", n, [m / 2**20 for m in ram],
               dict(fits["ram"], a=fits["ram"]["a"] / 2**20, b=fits["ram"]["b"] / 2**20)),
              ("query p50 ms", n, p50, fits["p50"])]
    return "\n".join(out) + "\n", panels, rows[0]


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    raw = json.load(open(sys.argv[1]))
    figdir = sys.argv[2]
    os.makedirs(figdir, exist_ok=True)
    text, panels = pipeline_tables(raw)
    if panels:
        print(text, end="")
        plot(os.path.join(figdir, "growth_pipeline.svg"),
             f"rag build --datastore and serving against corpus size (preset {raw['preset']})",
             panels, "kNN-LM keys (= corpus tokens)", False)
    text, panels, first = synthetic_tables(raw)
    if panels:
        print(text, end="")
        plot(os.path.join(figdir, "growth_synthetic.svg"),
             f"FAISS IVF,PQ against size (synthetic, d = {first['dim']}, nprobe {first['nprobe']})",
             panels, "vectors n", True)


if __name__ == "__main__":
    main()
