#!/usr/bin/env bash
# ASan + UBSan build of the LibTorch-free sources and their tests, plus a
# smoke run of every libFuzzer target (tests/sanitized/CMakeLists.txt), with
# clang. scripts/test.sh runs it after the main suite.
# Environment: RAG_SANITIZED_BUILD_DIR (default <repo>/build-sanitized),
# RAG_FUZZ_RUNS (executions per smoke run, default 20000).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${RAG_SANITIZED_BUILD_DIR:-$here/build-sanitized}"
command -v clang++ >/dev/null || { echo "sanitize.sh: clang++ is missing (scripts/setup.sh installs clang)" >&2; exit 1; }
generator=()
command -v ninja >/dev/null && generator=(-G Ninja)
if [ ! -f "$build/CMakeCache.txt" ]; then
  cmake -S "$here/tests/sanitized" -B "$build" "${generator[@]}" -DCMAKE_CXX_COMPILER=clang++ \
    -DFUZZ_RUNS="${RAG_FUZZ_RUNS:-20000}" >/dev/null
else
  cmake "$build" -DFUZZ_RUNS="${RAG_FUZZ_RUNS:-20000}" >/dev/null
fi
cmake --build "$build" -j "$(nproc)"
cd "$build"
ctest --output-on-failure -j "$(nproc)" --timeout 600
