#!/usr/bin/env bash
# Configures and builds the project into build/ (or $RAG_BUILD_DIR).
# Extra arguments go to CMake, e.g. scripts/build.sh -DRAG_WERROR=ON.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${RAG_BUILD_DIR:-$here/build}"
generator=()
command -v ninja >/dev/null 2>&1 && generator=(-G Ninja)
if [ ! -f "$build/CMakeCache.txt" ]; then
  cmake -S "$here" -B "$build" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release "$@"
elif [ "$#" -gt 0 ]; then
  cmake "$build" "$@"
fi
# LibTorch translation units need ~1.5 GB each; one job per core is safe here.
# RAG_BUILD_TARGET=rag builds just the command line (what the demo needs).
target=()
[ -n "${RAG_BUILD_TARGET:-}" ] && target=(--target "$RAG_BUILD_TARGET")
cmake --build "$build" -j "$(nproc)" "${target[@]}"
