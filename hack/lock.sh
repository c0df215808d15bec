#!/usr/bin/env bash
# Regenerate the pinned, hash-checked lock files from pyproject.toml's extras.
#   requirements/dev.lock          every extra: the test and demo environment (hack/setup-venv.sh)
#   requirements/<component>.lock  one per container image (Dockerfile)
# uv resolves; it runs from a tool environment in the cache, outside the clone.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
tool=${EAT_CACHE:-$HOME/.cache/eat}/uv-tool
[ -x "$tool/bin/uv" ] || { python3 -m venv "$tool" && "$tool/bin/pip" install --quiet uv; }
compile() {  # compile <output> <extra>...
  local out=$1; shift
  local args=()
  for extra in "$@"; do args+=(--extra "$extra"); done
  "$tool/bin/uv" pip compile "$root/pyproject.toml" "${args[@]}" --generate-hashes --no-header --quiet \
    --python-version 3.11 --python-platform x86_64-unknown-linux-gnu -o "$root/requirements/$out.lock"
}
cd "$root"
compile dev policy service train operator extender inference test
compile policy policy service train
compile operator operator
compile extender extender
compile inference inference
