#!/usr/bin/env python3
"""The Jargon File (Debian dict-jargon, public domain) to the project's JSONL
corpus: one document per entry.

    corpus_jargon.py DICT_DIR OUT.jsonl

DICT_DIR holds dictd's jargon.index (headword, offset, length; the numbers
in dictd's base-64 digits A-Z a-z 0-9 + /) and jargon.dict.dz (dictzip,
which gzip reads)."""
import gzip
import json
import os
import sys

DIGITS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def b64(s):
    v = 0
    for c in s:
        v = v * 64 + DIGITS.index(c)
    return v


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    d = sys.argv[1]
    body = gzip.open(os.path.join(d, "jargon.dict.dz")).read()
    n = 0
    with open(os.path.join(d, "jargon.index"), encoding="utf-8") as idx, \
            open(sys.argv[2], "w", encoding="utf-8") as out:
        for line in idx:
            head, off, length = line.rstrip("\n").split("\t")
            if head.startswith("00-database"):
                continue  # dictd's own metadata entries
            text = " ".join(body[b64(off):b64(off) + b64(length)].decode("utf-8").split())
            if text:
                out.write(json.dumps({"id": f"jargon-{n:05d}", "title": head, "text": text}) + "\n")
                n += 1
    print(f"corpus_jargon: {n} entries", file=sys.stderr)


if __name__ == "__main__":
    main()
