#!/usr/bin/python3
"""Unpacks each tests/data/hf_reference/*/reference.npz for the C++ tests.

The C++ side has no npz reader; this writes, per checkpoint directory NAME,
OUT/NAME/ids.txt (one row of token ids per line), OUT/NAME/log_probs.f32
[B, T, V] and OUT/NAME/hidden_last.f32 [B, T, D] (the last hidden state,
after the final LayerNorm), raw little-endian float32, and
OUT/NAME/shape.txt "B T V D".

  export_reference.py REFERENCE_DIR OUT_DIR
"""
import os
import sys

import numpy as np


def main():
    ref, out = sys.argv[1], sys.argv[2]
    n = 0
    for name in sorted(os.listdir(ref)):
        npz = os.path.join(ref, name, "reference.npz")
        if not os.path.isfile(npz):
            continue
        r = np.load(npz)
        d = os.path.join(out, name)
        os.makedirs(d, exist_ok=True)
        ids, logp, hidden = r["ids"], r["log_probs"], r["hidden_states"][-1]
        with open(os.path.join(d, "ids.txt"), "w") as f:
            for row in ids:
                f.write(" ".join(str(int(x)) for x in row) + "\n")
        logp.astype("<f4").tofile(os.path.join(d, "log_probs.f32"))
        hidden.astype("<f4").tofile(os.path.join(d, "hidden_last.f32"))
        b, t, v = logp.shape
        with open(os.path.join(d, "shape.txt"), "w") as f:
            f.write(f"{b} {t} {v} {hidden.shape[-1]}\n")
        n += 1
    print(f"export_reference: {n} checkpoints -> {out}", file=sys.stderr)
    sys.exit(0 if n else 1)


if __name__ == "__main__":
    main()
