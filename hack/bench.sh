#!/usr/bin/env bash
# Run every benchmark under bench/ and print its figures.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv=$("$root/hack/setup-venv.sh")
for b in "$root"/bench/*.py; do
  echo "== $(basename "$b")"
  "$venv/bin/python" "$b"
done
