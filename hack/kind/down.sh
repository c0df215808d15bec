#!/usr/bin/env bash
# Stop kwok/eat-scheduler started by up.sh and delete the kind cluster.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export EAT_CLUSTER_DIR=${EAT_CLUSTER_DIR:-$HOME/.cache/eat/kind}
python3 "$here/../cluster/localcluster.py" detach || true
kind delete cluster --name eat
