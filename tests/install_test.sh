#!/usr/bin/env bash
# The installed library as its users get it: `cmake --install` into a fresh
# prefix, examples/cpp configured with find_package(rag CONFIG) against that
# prefix only, built and run on a tiny model and index made by the installed
# `rag` (its answers must be the CLI's), the Python module imported from the
# prefix, and `cpack -G DEB` making a Debian package that holds all of it.
#
# Usage: install_test.sh BUILD_DIR REPO_SOURCE_DIR
set -euo pipefail
# shellcheck source=tests/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
lib_init install_test

BUILD="${1:?usage: install_test.sh BUILD_DIR REPO_SOURCE_DIR}"
SRC="${2:?usage: install_test.sh BUILD_DIR REPO_SOURCE_DIR}"
PREFIX="$TMP/prefix"
generator=()
command -v ninja >/dev/null 2>&1 && generator=(-G Ninja)

step "cmake --install into $PREFIX"
run_logged "$TMP/install.log" "cmake --install" cmake --install "$BUILD" --prefix "$PREFIX"
for f in bin/rag lib/librag_services.a lib/librag_lm.a lib/librag_retriever.a lib/cmake/rag/rag-config.cmake \
  lib/cmake/rag/rag-targets.cmake include/rag/services/engine.h include/rag/retriever/retriever.h \
  include/rag/lm/language_model.h include/rag/proto/rag.pb.h include/rag/proto/rag.proto; do
  [ -f "$PREFIX/$f" ] || fail "the install has no $f"
done
compgen -G "$PREFIX/lib/python3/dist-packages/rag*.so" >/dev/null || fail "the install has no Python module"
RAG="$PREFIX/bin/rag"
"$RAG" --version | grep -q '^rag [0-9]' || fail "installed rag --version: $("$RAG" --version 2>&1)"

step "examples/cpp against the installed package (find_package(rag CONFIG))"
# Only the prefix is searched: the build tree must not leak in.
run_logged "$TMP/consumer-configure.log" "configuring examples/cpp" \
  cmake -S "$SRC/examples/cpp" -B "$TMP/consumer" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_PREFIX_PATH="$PREFIX" -DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF
found="$(sed -n 's/^rag_DIR:PATH=//p' "$TMP/consumer/CMakeCache.txt")"
[ "$found" = "$PREFIX/lib/cmake/rag" ] || fail "find_package(rag) found '$found', not the installed $PREFIX/lib/cmake/rag"
run_logged "$TMP/consumer-build.log" "building examples/cpp" cmake --build "$TMP/consumer" -j "$(nproc)"
grep -q "$BUILD" "$TMP/consumer/build.ninja" 2>/dev/null && fail "the consumer's build refers to the build tree $BUILD"

step "a tiny model and index made by the installed rag"
tiny_model_and_index "$RAG" 99 crosses --datastore

step "rag_example's answers vs the installed rag's"
TEXT="The falcon crosses the harbour near the copper bridge."
"$TMP/consumer/rag_example" --model "$TMP/model" --index "$TMP/index" --text "$TEXT" -k 3 >"$TMP/example.out" ||
  fail "rag_example failed"
"$RAG" query --model "$TMP/model" --index "$TMP/index" --text "$TEXT" -k 3 --json >"$TMP/query.json"
"$RAG" score --model "$TMP/model" --index "$TMP/index" --text "$TEXT" --json >"$TMP/lm.json"
"$RAG" score --model "$TMP/model" --index "$TMP/index" --text "$TEXT" --mode knnlm --json >"$TMP/knnlm.json"
"$PY" - "$TMP" <<'PYEOF' || fail "rag_example and rag disagree (above)"
import json, sys
tmp = sys.argv[1]
lines = [l.split() for l in open(tmp + "/example.out")]
example = [(l[1], int(l[2]), float(l[3])) for l in lines if l[0] == "neighbour"]
cli = [(n["doc_id"], n["chunk_id"], n["distance"]) for n in json.load(open(tmp + "/query.json"))["neighbours"]]
if len(example) != 3 or [e[:2] for e in example] != [c[:2] for c in cli]:
    sys.exit("neighbours %r vs %r" % (example, cli))
if any(abs(e[2] - c[2]) > 1e-5 for e, c in zip(example, cli)):
    sys.exit("distances %r vs %r" % (example, cli))
values = {l[0]: l[1] for l in lines if l[0] != "neighbour"}
for mode in ("lm", "knnlm"):
    ours, theirs = float(values["perplexity_" + mode]), json.load(open("%s/%s.json" % (tmp, mode)))["perplexity"]
    if abs(ours - theirs) > 1e-6 * theirs:
        sys.exit("%s perplexity %r vs %r" % (mode, ours, theirs))
print("rag_example: %d neighbours, lm and knnlm perplexity as the CLI's" % len(example))
PYEOF

step "the Python module from the prefix"
PYTHONPATH="$PREFIX/lib/python3/dist-packages" "$PY" - "$PREFIX" "$TMP" <<'PYEOF' || fail "the installed module failed (above)"
import os, sys
import rag
prefix, tmp = sys.argv[1:3]
if not os.path.abspath(rag.__file__).startswith(os.path.abspath(prefix)):
    sys.exit("imported %s, not the installed module" % rag.__file__)
e = rag.Engine(tmp + "/model", index=tmp + "/index")
print("installed module %s: %s" % (rag.__version__, e.search("The falcon", k=1)[0]["doc_id"]))
PYEOF

step "cpack -G DEB"
run_logged "$TMP/cpack.log" "cpack" cpack -G DEB --config "$BUILD/CPackConfig.cmake" -B "$TMP/package"
deb="$(compgen -G "$TMP/package/rag_*.deb" | head -n1 || true)"
[ -n "$deb" ] || { cat "$TMP/cpack.log" >&2; fail "cpack made no rag_*.deb"; }
depends="$(dpkg-deb -f "$deb" Depends)"
for dep in libtorch libfaiss librocksdb libgrpc; do
  grep -q "$dep" <<<"$depends" || fail "the package's Depends lacks $dep: $depends"
done
dpkg-deb -c "$deb" | awk '{print $NF}' >"$TMP/contents"
for f in ./usr/bin/rag ./usr/lib/librag_services.a ./usr/lib/cmake/rag/rag-config.cmake \
  ./usr/include/rag/services/engine.h; do
  grep -qx "$f" "$TMP/contents" || fail "the package has no $f"
done
grep -q '^./usr/lib/python3/dist-packages/rag.*\.so$' "$TMP/contents" || fail "the package has no Python module"
dpkg-deb -x "$deb" "$TMP/root"
"$TMP/root/usr/bin/rag" --version | grep -q '^rag [0-9]' || fail "the packaged rag does not run"
step "ok: $(basename "$deb"), $(wc -l <"$TMP/contents") entries"
