#!/usr/bin/env bash
# Stop kwok/eat-scheduler started by up.sh and delete the kind cluster.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
export EAT_CLUSTER_DIR=${EAT_CLUSTER_DIR:-$HOME/.cache/eat/kind}
# The checkout's venv (localcluster.py needs PyYAML); the kind cluster goes even if detach fails.
if venv=$("$repo/hack/setup-venv.sh"); then
  "$venv/bin/python" "$repo/hack/cluster/localcluster.py" detach || true
fi
kind delete cluster --name eat
