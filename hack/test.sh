#!/usr/bin/env bash
# Set up everything the test suite needs, then run all of it (slow tests included).
# Extra arguments go to pytest, e.g. hack/test.sh -k paper
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv=$("$root/hack/setup-venv.sh")
# Real services the tests start themselves: Prometheus (Debian package).
if ! command -v prometheus >/dev/null; then
  # Two commands, not an && list: set -e stops at a failed update.
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi
# The real control plane's binaries (etcd, kube-apiserver, ..., kwok, kubectl, helm), built
# from the pinned Go modules once per machine into ~/.cache/eat (hack/cluster/README.md).
"$root/hack/cluster/build.sh" >&2
# The S3-compatible store the inference tests upload images to (Versity S3 Gateway).
EAT_VERSITYGW=$("$root/hack/s3/build.sh")
export EAT_VERSITYGW
# One control plane per checkout: two test sessions on one machine (a CI clone and a working
# tree) must not share one, or each one's operator acts on the other's jobs.
export EAT_CLUSTER_DIR=${EAT_CLUSTER_DIR:-${EAT_CACHE:-$HOME/.cache/eat}/cluster-$(printf %s "$root" | sha256sum | cut -c1-12)}
cd "$root"
exec "$venv/bin/python" -m pytest "$@"
