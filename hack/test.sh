#!/usr/bin/env bash
# Set up everything the test suite needs, then run all of it (slow tests included).
# Extra arguments go to pytest, e.g. hack/test.sh -k paper
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv=$("$root/hack/setup-venv.sh")
# Real services the tests start themselves: Prometheus (Debian package).
if ! command -v prometheus >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi
cd "$root"
exec "$venv/bin/python" -m pytest "$@"
