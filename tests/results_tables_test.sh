#!/usr/bin/env bash
# docs/results.md's generated tables match the JSON under bench/results/
# they come from (bench/results_tables.py --check), and the check fails when
# one figure of a table is changed by hand or its JSON is missing.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
check="$here/bench/results_tables.py"
# Debian's python3 (python3-numpy, which the growth tables need), not one a
# user put first on PATH.
PY=/usr/bin/python3; [ -x "$PY" ] || PY=python3
"$PY" "$check" --check "$here/docs/results.md"

tables=$(grep -c '^<!-- results-table ' "$here/docs/results.md")
[ "$tables" -ge 1 ] || { echo "FAIL: docs/results.md has no generated table"; exit 1; }
echo "ok: $tables generated table(s) match their JSON"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
# A figure typed over: the first table row after a marker gets one digit
# changed (the row's first digit, 0 <-> 1 otherwise d -> d-1).
"$PY" - "$here/docs/results.md" "$work/typed.md" <<'PYEOF'
import re, sys
text = open(sys.argv[1]).read()
start = text.index("<!-- results-table ")
row = text.index("\n|", text.index("|---", start)) + 1
m = re.search(r"\d", text[row:])
i = row + m.start()
d = text[i]
text = text[:i] + ("1" if d == "0" else str(int(d) - 1)) + text[i + 1:]
open(sys.argv[2], "w").write(text)
PYEOF
if "$PY" "$check" --check "$work/typed.md" 2> "$work/err"; then
  echo "FAIL: a figure changed by hand passed the check"; exit 1
fi
grep -q "differs from what its JSON gives" "$work/err" || { echo "FAIL: wrong message:"; cat "$work/err"; exit 1; }
echo "ok: a changed figure fails the check"

sed 's|\(<!-- results-table [a-z_]* \)bench/results/|\1bench/results/missing-|' "$here/docs/results.md" > "$work/missing.md"
if "$PY" "$check" --check "$work/missing.md" 2> "$work/err"; then
  echo "FAIL: a table whose JSON is missing passed the check"; exit 1
fi
grep -q "cannot render" "$work/err" || { echo "FAIL: wrong message:"; cat "$work/err"; exit 1; }
echo "ok: a missing JSON fails the check"
