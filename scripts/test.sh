#!/usr/bin/env bash
# One command from a fresh Debian 12 machine to a passing test suite:
# set-up (packages, data), build with warnings as errors, then every test,
# then the sanitizer build and the fuzzers' smoke runs.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$here/scripts/setup.sh"
"$here/scripts/build.sh" -DRAG_WERROR=ON -DRAG_BUILD_TESTS=ON -DRAG_BUILD_BENCHMARKS=ON
(cd "${RAG_BUILD_DIR:-$here/build}" && ctest --output-on-failure -j "$(nproc)" --timeout 900)
# ASan + UBSan tests and libFuzzer smoke runs (clang; tests/sanitized).
"$here/scripts/sanitize.sh"
