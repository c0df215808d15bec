#!/usr/bin/env bash
# The main job, for now: a fair simulated comparison of the schedulers on identical traces,
# in the paper's setting (choose-k, λ sweep) and on the Kubernetes-shaped edge cluster.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv=$("$root/hack/setup-venv.sh")
out=${EAT_DEMO_OUT:-$root/runs/demo}
"$venv/bin/eat-policy" evaluate --scenario paper --mode choose-k --seeds 20 --out "$out/paper-choose-k"
"$venv/bin/eat-policy" evaluate --scenario edge --seeds 10 --loads 0.5,0.8,1.0 --out "$out/edge"
