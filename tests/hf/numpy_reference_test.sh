#!/usr/bin/env bash
# The independent numpy forward (tests/hf/numpy_forward.py) against the
# outputs transformers computed for the reference checkpoints: every one must
# agree within 1e-4 (log-probs and hidden states), and a checkpoint with one
# weight changed must not. The C++ Hugging Face loader is checked against
# this numpy forward, so this test is what makes that check worth anything.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ref="$here/../data/hf_reference"
py=/usr/bin/python3
checked=0
for d in "$ref"/*/; do
  [ -f "$d/reference.npz" ] || continue
  "$py" "$here/numpy_forward.py" "$d" --check "$d/reference.npz"
  checked=$((checked + 1))
done
[ "$checked" -ge 8 ] || { echo "expected >= 8 reference checkpoints, checked $checked" >&2; exit 1; }

# One fp32 weight of the second block's attention projection scaled by 3:
# the check must fail, or it compares nothing.
tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT
cp -r "$ref/gpt2-lmhead-float32" "$tmp/damaged"
"$py" - "$tmp/damaged/model.safetensors" <<'PY'
import json, struct, sys
p = sys.argv[1]
b = bytearray(open(p, "rb").read())
n = struct.unpack("<Q", b[:8])[0]
h = json.loads(b[8:8 + n])
t = h["transformer.h.1.attn.c_proj.weight"]
assert t["dtype"] == "F32", t
off = 8 + n + t["data_offsets"][0] + 4 * 17
v = struct.unpack("<f", b[off:off + 4])[0]
b[off:off + 4] = struct.pack("<f", v * 3 + 0.5)
open(p, "wb").write(bytes(b))
PY
if "$py" "$here/numpy_forward.py" "$tmp/damaged" --check "$tmp/damaged/reference.npz"; then
  echo "a damaged checkpoint passed the check" >&2; exit 1
fi
echo "numpy_reference_test: $checked checkpoints agree; the damaged one was caught"
