#!/usr/bin/env bash
# The Python module (python/) against the command line: a tiny model and an
# index with a datastore made here, then tests/python/module_checks.py
# compares every answer of `import rag` with `rag query/score/next-token/
# generate/stats` on them (see that file for what it checks).
#
# Usage: python_module_test.sh RAG_BINARY MODULE_DIR REPO_SOURCE_DIR
set -euo pipefail
# shellcheck source=tests/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
lib_init python_module_test

RAG="${1:?usage: python_module_test.sh RAG_BINARY MODULE_DIR REPO_SOURCE_DIR}"
MODULE_DIR="${2:?usage: python_module_test.sh RAG_BINARY MODULE_DIR REPO_SOURCE_DIR}"
SRC="${3:?usage: python_module_test.sh RAG_BINARY MODULE_DIR REPO_SOURCE_DIR}"

[ -x "$RAG" ] || fail "rag binary '$RAG' is not executable"
compgen -G "$MODULE_DIR/rag*.so" >/dev/null || fail "no Python module rag*.so in $MODULE_DIR"
"$PY" -c 'import numpy' 2>/dev/null || fail "$PY cannot import numpy (scripts/setup.sh installs python3-numpy)"

step "a 30-document corpus, a tiny model, an index with a datastore"
tiny_model_and_index "$RAG" 4242 crosses --datastore

step "import rag from $MODULE_DIR; its answers vs the CLI's"
"$PY" "$SRC/tests/python/module_checks.py" "$RAG" "$MODULE_DIR" "$TMP" || fail "the module and the CLI disagree (above)"

step "examples/python/inprocess.py runs"
PYTHONPATH="$MODULE_DIR" "$PY" "$SRC/examples/python/inprocess.py" --model "$TMP/model" --index "$TMP/index" \
  >"$TMP/example.out" 2>&1 || { cat "$TMP/example.out" >&2; fail "the example failed"; }
for expect in "modes: \['lm', 'knnlm', 'infgram', 'ralm'\]" "knnlm perplexity" "refused: INVALID_ARGUMENT"; do
  grep -q "$expect" "$TMP/example.out" || { cat "$TMP/example.out" >&2; fail "the example printed no '$expect'"; }
done
