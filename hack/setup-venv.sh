#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment and print its path.
# The environment lives outside the clone, keyed by the hash of the pinned lock files, so a
# fresh machine installs once and every later clone reuses it. requirements/dev.lock pins
# every component's extras together (the per-component locks are for the container images).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cache=${EAT_CACHE:-$HOME/.cache/eat}
python=${PYTHON:-python3}
locks=("$root/requirements/build.lock" "$root/requirements/dev.lock")
key=$(cat "${locks[@]}" | sha256sum | cut -c1-16)
venv="$cache/venv-$key"
if [ ! -f "$venv/.complete" ]; then
  rm -rf "$venv"
  mkdir -p "$cache"
  "$python" -m venv "$venv" >&2
  for lock in "${locks[@]}"; do  # build.lock first: it upgrades pip itself
    "$venv/bin/python" -m pip install --quiet --require-hashes --no-deps -r "$lock" >&2
  done
  touch "$venv/.complete"
fi
# The project itself, editable, pointing at this clone (cheap; runs every time).
"$venv/bin/pip" install --quiet --no-deps --no-build-isolation -e "$root" >&2
echo "$venv"
