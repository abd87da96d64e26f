#!/usr/bin/env python3
"""Jane Austen's six novels (Debian r-cran-janeaustenr, public domain) to the
project's JSONL corpus: one document per chapter.

    corpus_austen.py PACKAGE_ROOT OUT.jsonl

PACKAGE_ROOT is the unpacked .deb; the text is in R's lazy-load database
data/Rdata.{rdx,rdb}: the .rdx is a gzipped serialized list of (offset,
length) per object, each .rdb record a 4-byte length and a zlib stream of
one serialized character vector (one line per element). This reads R's XDR
serialization format (R Internals, "Serialization Formats") without R; it
knows only the types these files hold."""
import gzip
import json
import os
import re
import struct
import sys
import zlib

NILVALUE, REFSXP, SYMSXP, LISTSXP, CHARSXP = 254, 255, 1, 2, 9
LGLSXP, INTSXP, REALSXP, STRSXP, VECSXP = 10, 13, 14, 16, 19
HAS_ATTR, HAS_TAG = 1 << 9, 1 << 10


class Unserializer:
    def __init__(self, data):
        if data[:2] != b"X\n":
            raise ValueError("not an XDR R serialization")
        self.b, self.p, self.refs = data, 2, []
        version = self.int()
        self.int(), self.int()  # writer's and minimal reader's R versions
        if version == 3:
            n = self.int()
            self.p += n  # native encoding name

    def int(self):
        (v,) = struct.unpack_from(">i", self.b, self.p)
        self.p += 4
        return v

    def read(self):
        flags = self.int()
        kind = flags & 0xFF
        if kind == NILVALUE:
            return None
        if kind == REFSXP:
            return self.refs[(flags >> 8) - 1]
        if kind == SYMSXP:
            sym = ("symbol", self.read())
            self.refs.append(sym)
            return sym
        if kind == CHARSXP:
            n = self.int()
            if n == -1:
                return None  # NA_character_
            s = self.b[self.p:self.p + n].decode("utf-8", "replace")
            self.p += n
            return s
        if kind == LISTSXP:  # pairlist (attributes): [(tag, value)]
            items = []
            while kind == LISTSXP:
                if flags & HAS_ATTR:
                    self.read()
                tag = self.read() if flags & HAS_TAG else None
                items.append((tag[1] if tag else None, self.read()))
                flags = self.int()
                kind = flags & 0xFF
            if kind != NILVALUE:
                raise ValueError(f"pairlist ends in type {kind}")
            return items
        if kind in (STRSXP, VECSXP):
            value = [self.read() for _ in range(self.int())]
        elif kind in (LGLSXP, INTSXP):
            n = self.int()
            value = list(struct.unpack_from(f">{n}i", self.b, self.p))
            self.p += 4 * n
        elif kind == REALSXP:
            n = self.int()
            value = list(struct.unpack_from(f">{n}d", self.b, self.p))
            self.p += 8 * n
        else:
            raise ValueError(f"R type {kind} at byte {self.p} is not supported")
        if flags & HAS_ATTR:
            return {"value": value, "attributes": dict(self.read())}
        return value


def novels(root):
    base = os.path.join(root, "usr/lib/R/site-library/janeaustenr/data/Rdata")
    index = Unserializer(gzip.decompress(open(base + ".rdx", "rb").read())).read()
    variables = dict(zip(index["attributes"]["names"], index["value"]))["variables"]
    rdb = open(base + ".rdb", "rb").read()
    for name, (offset, length) in zip(variables["attributes"]["names"], variables["value"]):
        record = rdb[offset:offset + length]
        lines = Unserializer(zlib.decompress(record[4:])).read()
        if isinstance(lines, dict):
            lines = lines["value"]
        yield name, [line or "" for line in lines]


CHAPTER = re.compile(r"^\s*CHAPTER\b", re.IGNORECASE)


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    n = 0
    with open(sys.argv[2], "w", encoding="utf-8") as out:
        for name, lines in novels(sys.argv[1]):
            chapters, current = [], []
            for line in lines:
                if CHAPTER.match(line) and current:
                    chapters.append(current)
                    current = []
                current.append(line)
            chapters.append(current)
            for i, chapter in enumerate(chapters):
                text = " ".join(" ".join(chapter).split())
                if text:
                    out.write(json.dumps({"id": f"austen-{name}-{i:03d}", "text": text}) + "\n")
                    n += 1
    print(f"corpus_austen: {n} chapters", file=sys.stderr)


if __name__ == "__main__":
    main()
