#!/usr/bin/env bash
# Set up everything the test suite needs, then run all of it (slow tests included).
# Extra arguments go to pytest, e.g. hack/test.sh -k paper
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv=$("$root/hack/setup-venv.sh")
cd "$root"
exec "$venv/bin/python" -m pytest "$@"
