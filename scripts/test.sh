#!/usr/bin/env bash
# One command from a fresh Debian 12 machine to a passing test suite:
# set-up (packages, data), build with warnings as errors, then every test,
# then the sanitizer build and the fuzzers' smoke runs.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$here/scripts/setup.sh"
"$here/scripts/build.sh" -DRAG_WERROR=ON -DRAG_BUILD_TESTS=ON -DRAG_BUILD_BENCHMARKS=ON
# ctest runs two tests at once: their idle OpenMP threads sleep, as `rag`
# makes its own (lm/runtime.h), also in the test binaries that are not rag.
# tests/openmp_runtime_test.sh unsets it to check rag's own restart.
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-passive}"
(cd "${RAG_BUILD_DIR:-$here/build}" && ctest --output-on-failure -j "$(nproc)" --timeout 900)
# ASan + UBSan tests and libFuzzer smoke runs (clang; tests/sanitized).
"$here/scripts/sanitize.sh"
