#!/usr/bin/env python3
"""Knowledge probes and the documents that state their facts, from WordNet 3.0.

Reads the noun database of Debian's `wordnet-base` (/usr/share/wordnet,
format in wndb(5WN)) and writes, into --out:

  facts.jsonl   one document per fact: the fact as a sentence in the probe's
                own words, then the WordNet gloss it comes from. These go into
                the index (`rag add`), never into the LM's training data.
  probes.jsonl  LAMA-compatible probes (template shape, ../shared/docs/
                interfaces.md), candidates = the relation's objects.

and, with --train-out DIR, DIR/train_facts.jsonl: the facts not sampled for
probes (none mentioning a probe's subject), each as two documents worded
differently, so that one retrieves the other: training data that rewards
copying from neighbours (RETRO) without the probe facts.

Relations:
  capital-of    "[X] is the capital of [Y]."  national capitals: instances
                (@i) of `national_capital`, object = their part holonym (#p).
  capital-is    "The capital of [X] is [Y]."  the same facts asked the other
                way round: the documents never state them in these words, so
                this measures what retrieval does beyond matching the context.
  occupation    "[X] was a [Y]."  people who are instances (@i) of one of a
                dozen occupations (composer, painter, ...).

Seeded sampling; only the standard library.
"""
import argparse
import json
import os
import random
import re
import sys

OCCUPATIONS = ["composer", "painter", "poet", "novelist", "physicist", "philosopher", "dramatist", "chemist",
               "mathematician", "astronomer", "sculptor", "architect", "explorer", "economist"]


def read_nouns(path):
    """offset -> (lemmas, pointers [(symbol, offset)], gloss)."""
    synsets = {}
    with open(path, encoding="latin-1") as f:
        for line in f:
            if line.startswith("  "):  # licence header
                continue
            data, _, gloss = line.partition(" | ")
            fields = data.split()
            offset = fields[0]
            w_cnt = int(fields[3], 16)
            lemmas = [fields[4 + 2 * i] for i in range(w_cnt)]
            at = 4 + 2 * w_cnt
            p_cnt = int(fields[at])
            pointers = []
            for i in range(p_cnt):
                symbol, target, pos = fields[at + 1 + 4 * i: at + 4 + 4 * i]
                if pos == "n":
                    pointers.append((symbol, target))
            synsets[offset] = (lemmas, pointers, gloss.strip())
    return synsets


def words(lemma):
    # WordNet lemmas: underscores for spaces, adjective markers like "(a)".
    return re.sub(r"\(.*?\)$", "", lemma).replace("_", " ")


def find(synsets, lemma):
    for offset, (lemmas, _, _) in synsets.items():
        if lemma in lemmas:
            return offset
    sys.exit(f"wordnet_probes: no noun synset '{lemma}'")


def instances_of(synsets, target):
    return sorted(o for o, (_, ptrs, _) in synsets.items() if ("@i", target) in ptrs)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--wordnet", default="/usr/share/wordnet", help="WordNet dict directory (data.noun)")
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--capitals", type=int, default=30,
                    help="national capitals to sample (the demo's set: 82 facts, 112 probes)")
    ap.add_argument("--per-occupation", type=int, default=4, help="people to sample per occupation")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--train-out", help="also write train_facts.jsonl here: the facts NOT sampled for probes, "
                    "each stated in two documents worded differently (for training a retrieval model to copy "
                    "from its neighbours without ever seeing the probe facts)")
    a = ap.parse_args()
    path = os.path.join(a.wordnet, "data.noun")
    if not os.path.exists(path):
        sys.exit(f"wordnet_probes: {path} not found (install the Debian package wordnet-base)")
    synsets = read_nouns(path)
    rng = random.Random(a.seed)
    facts, probes = [], []

    # Capitals: one name each, and the country its part holonym names.
    capitals = []
    for o in instances_of(synsets, find(synsets, "national_capital")):
        lemmas, ptrs, gloss = synsets[o]
        countries = [words(synsets[t][0][0]) for s, t in ptrs if s == "#p" and t in synsets]
        city = words(lemmas[0])
        if countries and "capital" in gloss and " " not in city:
            capitals.append((city, countries[0], gloss))
    rng.shuffle(capitals)
    # One capital per country, so every probe has one right answer.
    seen = set()
    all_capitals = [c for c in capitals if not (c[1] in seen or seen.add(c[1]))]
    capitals, spare_capitals = all_capitals[: a.capitals], all_capitals[a.capitals:]
    countries = [c[1] for c in capitals]
    cities = [c[0] for c in capitals]
    for city, country, gloss in capitals:
        evidence = f"wordnet-capital-{city}"
        facts.append({"id": evidence, "text": f"{city} is the capital of {country}. {city}: {gloss}"})
        probes.append({"sub_label": city, "obj_label": country, "predicate_id": "capital-of",
                       "template": "[X] is the capital of [Y].", "candidates": countries, "evidence_doc_id": evidence})
        probes.append({"sub_label": country, "obj_label": city, "predicate_id": "capital-is",
                       "template": "The capital of [X] is [Y].", "candidates": cities, "evidence_doc_id": evidence})

    # Occupations: the person's full name (the longest lemma).
    spare_people = []
    for occupation in OCCUPATIONS:
        people = []
        for o in instances_of(synsets, find(synsets, occupation)):
            lemmas, ptrs, gloss = synsets[o]
            if sum(1 for s, _ in ptrs if s == "@i") != 1:  # one occupation only: one right answer
                continue
            people.append((words(max(lemmas, key=len)), gloss))
        rng.shuffle(people)
        spare_people += [(person, occupation, gloss) for person, gloss in people[a.per_occupation:]]
        for person, gloss in people[: a.per_occupation]:
            evidence = f"wordnet-occupation-{person.replace(' ', '_')}"
            facts.append({"id": evidence, "text": f"{person} was a {occupation}. {person}: {gloss}"})
            probes.append({"sub_label": person, "obj_label": occupation, "predicate_id": "occupation",
                           "template": "[X] was a [Y].", "candidates": OCCUPATIONS, "evidence_doc_id": evidence})

    outputs = [(a.out, "facts.jsonl", facts), (a.out, "probes.jsonl", probes)]
    if a.train_out:
        # Two wordings per fact in separate documents: retrieving with one
        # finds the other, whose text holds the answer.
        train = []
        for city, country, gloss in spare_capitals:
            train.append({"id": f"wordnet-train-capital-{city}-a", "text": f"{city} is the capital of {country}. {gloss}"})
            train.append({"id": f"wordnet-train-capital-{city}-b", "text": f"The capital of {country} is {city}."})
        for person, occupation, gloss in spare_people:
            key = person.replace(" ", "_")
            train.append({"id": f"wordnet-train-occupation-{key}-a", "text": f"{person} was a {occupation}. {gloss}"})
            train.append({"id": f"wordnet-train-occupation-{key}-b", "text": f"The {occupation} {person}."})
        # Never a probe's subject, never an id twice.
        probe_subjects = {p["sub_label"] for p in probes}
        ids = set()
        train = [t for t in train if not any(s in t["text"] for s in probe_subjects)
                 and not (t["id"] in ids or ids.add(t["id"]))]
        outputs.append((a.train_out, "train_facts.jsonl", train))
    for directory, name, rows in outputs:
        os.makedirs(directory, exist_ok=True)
        tmp = os.path.join(directory, name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        os.replace(tmp, os.path.join(directory, name))
    print(f"wordnet_probes: {len(facts)} fact documents, {len(probes)} probes in {a.out}", file=sys.stderr)
    if a.train_out:
        print(f"wordnet_probes: {len(outputs[-1][2])} training fact documents in {a.train_out}", file=sys.stderr)


if __name__ == "__main__":
    main()
