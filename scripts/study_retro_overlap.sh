#!/usr/bin/env bash
# RETRO by overlap (issue 26; Borgeaud et al. 2022, section 4.4): `rag eval
# retro-overlap` on a RETRO model's validation documents with RETRO's
# leakage filter on (32 tokens, the paper's) and off, the scored document's
# own chunks retrievable in both (what the filter is for). Writes OUT_JSON
# (both runs, the commands, the machine) and REPORT_DIR (summary.md with the
# tables, overlap.png).
#
#   scripts/study_retro_overlap.sh RETRO_MODEL INDEX CORPUS OUT_JSON REPORT_DIR
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
rag="${RAG_BUILD_DIR:-$here/build}/services/rag"
model="${1:?usage: study_retro_overlap.sh RETRO_MODEL INDEX CORPUS OUT_JSON REPORT_DIR}"
index="${2:?index directory}"
corpus="${3:?corpus .jsonl}"
out="${4:?output JSON}"
report="${5:?report directory}"
PY=/usr/bin/python3
tmp="$(mktemp -d "${TMPDIR:-/tmp}/study_retro_overlap.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
for filter in 32 0; do
  echo "study_retro_overlap: leakage filter $filter" >&2
  "$rag" eval retro-overlap --model "$model" --index "$index" --corpus "$corpus" --split validation \
    --leakage-filter "$filter" --output "$tmp/filter_$filter.json" --report "$report" --report-name "filter-$filter"
done
commit="$(git -C "$here" rev-parse HEAD 2>/dev/null || echo unknown)"
git -C "$here" diff --quiet HEAD 2>/dev/null || commit="$commit-dirty"
cpu="$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)"
"$PY" - "$tmp" "$out" "$model" "$index" "$corpus" "$commit" "$cpu" "$(nproc)" <<'PYEOF'
import json, sys
tmp, out, model, index, corpus, commit, cpu, cores = sys.argv[1:9]
runs = {f"filter_{f}": json.load(open(f"{tmp}/filter_{f}.json")) for f in (32, 0)}
report = {"study": "retro_overlap", "model": model, "index": index, "corpus": corpus,
          "machine": {"git_commit": commit, "cpu": cpu, "cores": int(cores)},
          "command": "rag eval retro-overlap --split validation --leakage-filter 32|0", "runs": runs}
with open(out, "w") as f:
    json.dump(report, f, indent=1)
    f.write("\n")
print(f"study_retro_overlap: wrote {out}", file=sys.stderr)
PYEOF
