#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment and print its path.
# Two layers:
#  - the dependencies, in a venv outside the clone keyed by the hash of the pinned lock files,
#    so a fresh machine installs them once and every later clone reuses them
#    (requirements/dev.lock pins every component's extras together; the per-component locks
#    are for the container images);
#  - this clone's own venv, `.venv/`, which sees those dependencies through a .pth file and
#    holds the project itself, editable. Two clones (a CI run beside a working tree) each
#    import their own code: the project is never installed into the shared layer.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cache=${EAT_CACHE:-$HOME/.cache/eat}
python=${PYTHON:-python3}
locks=("$root/requirements/build.lock" "$root/requirements/dev.lock")
key=$(cat "${locks[@]}" | sha256sum | cut -c1-16)
deps="$cache/venv-$key"
if [ ! -f "$deps/.complete" ]; then
  rm -rf "$deps"
  mkdir -p "$cache"
  "$python" -m venv "$deps" >&2
  for lock in "${locks[@]}"; do  # build.lock first: it upgrades pip itself
    "$deps/bin/python" -m pip install --quiet --require-hashes --no-deps -r "$lock" >&2
  done
  touch "$deps/.complete"
fi
purelib() { "$1/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))'; }
deps_site=$(purelib "$deps")
# Earlier layouts installed the project into the shared layer; a stale copy there would shadow
# nothing (its .pth is not read from here) but would list a second `eat` distribution.
if compgen -G "$deps_site/eat-*.dist-info" >/dev/null; then
  "$deps/bin/python" -m pip uninstall --quiet --yes eat >&2 || true
fi
venv="$root/.venv"
# Rebuilt unless made from the dependencies' interpreter: the same home and the same version
# (one bin folder may hold several Pythons).
same() { grep -qxF "$(grep -E "^$1 = " "$deps/pyvenv.cfg")" "$venv/pyvenv.cfg" 2>/dev/null; }
if [ ! -x "$venv/bin/python" ] || ! same home || ! same version; then
  rm -rf "$venv"
  "$deps/bin/python" -m venv --without-pip "$venv" >&2
fi
printf '%s\n' "$deps_site" >"$(purelib "$venv")/_eat_dependencies.pth"
"$deps/bin/python" -m pip --python "$venv/bin/python" install --quiet --no-deps --no-build-isolation -e "$root" >&2
echo "$venv"
