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
# The real control plane's binaries (etcd, kube-apiserver, ..., kwok, kubectl, helm), built
# from the pinned Go modules once per machine into ~/.cache/eat (hack/cluster/README.md).
"$root/hack/cluster/build.sh" >&2
cd "$root"
exec "$venv/bin/python" -m pytest "$@"
