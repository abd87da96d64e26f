"""Turns the POS-tagged Brown corpus (one file per document, tokens word/tag)
into readable text, one JSON line per document: {"id": "ca01", "genre": ..., "text": ...}.

Tags are cut at the last '/', `` and '' become double quotes, and punctuation
is re-attached so the text reads like prose."""
import json
import os
import re
import sys

GENRES = {
    "a": "press: reportage", "b": "press: editorial", "c": "press: reviews",
    "d": "religion", "e": "skill and hobbies", "f": "popular lore",
    "g": "belles-lettres", "h": "miscellaneous", "j": "learned",
    "k": "fiction: general", "l": "fiction: mystery", "m": "fiction: science",
    "n": "fiction: adventure", "p": "fiction: romance", "r": "humor",
}

NO_SPACE_BEFORE = {".", ",", ";", ":", "!", "?", ")", "]", "}", "'", "n't", "'s", "'re", "'ll", "'ve", "'d", "'m"}
NO_SPACE_AFTER = {"(", "[", "{", "$"}


def detok(tokens):
    out = []
    open_quote = False  # inside `` ... ''
    glue_next = False
    for tok in tokens:
        if tok == "``":
            tok, opening = '"', True
        elif tok == "''":
            tok, opening = '"', False
        else:
            opening = None
        if tok == "." and out and out[-1].endswith("."):
            continue  # "Jr." ending a sentence is tagged as "Jr." + "."
        if not out:
            out.append(tok)
        elif glue_next or tok in NO_SPACE_BEFORE or opening is False:
            out.append(tok)
        else:
            out.append(" " + tok)
        glue_next = tok in NO_SPACE_AFTER or opening is True
        if opening is not None:
            open_quote = opening
    return "".join(out)


def convert(path):
    with open(path, encoding="latin-1") as f:
        raw = f.read()
    # Form C puts every sentence on its own tab-indented line; the original
    # paragraph breaks are lost, so sentences are joined into running prose.
    sentences = []
    for line in raw.split("\n"):
        tokens = []
        for wt in line.split():
            cut = wt.rfind("/")
            tokens.append(wt[:cut] if cut > 0 else wt)
        if tokens:
            sentences.append(detok(tokens))
    return " ".join(sentences)


def main():
    src, dst = sys.argv[1], sys.argv[2]
    names = sorted(n for n in os.listdir(src) if re.fullmatch(r"c[a-r]\d\d", n))
    if len(names) != 500:
        sys.exit(f"brown_to_jsonl: expected 500 documents in {src}, found {len(names)}")
    words = 0
    with open(dst, "w", encoding="utf-8") as out:
        for name in names:
            text = convert(os.path.join(src, name))
            words += len(text.split())
            out.write(json.dumps({"id": name, "genre": GENRES[name[1]], "text": text}, ensure_ascii=False) + "\n")
    print(f"brown_to_jsonl: {len(names)} documents, {words} words", file=sys.stderr)


if __name__ == "__main__":
    main()
