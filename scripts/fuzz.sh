#!/usr/bin/env bash
# Longer libFuzzer runs: scripts/fuzz.sh TARGET [RUNS] [JOBS] (TARGET: tokenizer,
# corpus_reader, probes, manifest; RUNS default 10000000). Builds with
# scripts/sanitize.sh's configuration, keeps the grown corpus in
# build-sanitized/fuzz_TARGET_corpus (seeded from tests/fuzz/seeds/TARGET) and
# writes any crashing input as crash-* in that directory's parent; turn one
# into a regression test by adding it to the seeds (the smoke run replays them).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${RAG_SANITIZED_BUILD_DIR:-$here/build-sanitized}"
target="${1:?usage: fuzz.sh TARGET [RUNS]}"
runs="${2:-10000000}"
[ -x "$build/fuzz_$target" ] || { RAG_FUZZ_RUNS=1 "$here/scripts/sanitize.sh" >/dev/null 2>&1 || true; }
[ -x "$build/fuzz_$target" ] || cmake --build "$build" --target "fuzz_$target"
corpus="$build/fuzz_${target}_corpus"
mkdir -p "$corpus"
cp -rn "$here/tests/fuzz/seeds/$target/." "$corpus/"
cd "$build"
exec "./fuzz_$target" -runs="$runs" -max_len=4096 -seed=1 -print_final_stats=1 "$corpus"
