#!/usr/bin/env bash
# Create the kind cluster and make it look like the local control plane:
# kwok + Stages + eat-scheduler (run here by hack/cluster/localcluster.py
# attach) and fake GPU nodes from hack/cluster/nodes.yaml.
#
#   hack/kind/up.sh [NODES]      default NODES=3
# Needs: kind, a container engine, the binaries of hack/cluster/build.sh.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
nodes=${1:-3}
export EAT_CLUSTER_DIR=${EAT_CLUSTER_DIR:-$HOME/.cache/eat/kind}
mkdir -p "$EAT_CLUSTER_DIR"
kubeconfig="$EAT_CLUSTER_DIR/kind.kubeconfig"

if ! kind get clusters 2>/dev/null | grep -qx eat; then
  kind create cluster --config "$here/kind-config.yaml" --kubeconfig "$kubeconfig" --wait 120s
else
  kind get kubeconfig --name eat > "$kubeconfig"
fi
# The checkout's venv: localcluster.py needs PyYAML, which a bare python3 may lack.
python="$("$repo/hack/setup-venv.sh")/bin/python"
"$python" "$repo/hack/cluster/localcluster.py" attach --kubeconfig "$kubeconfig"
"$python" "$repo/hack/cluster/localcluster.py" add-nodes "$nodes" --kubeconfig "$kubeconfig"
echo "export KUBECONFIG=$kubeconfig EAT_USE_KUBECONFIG=1"
