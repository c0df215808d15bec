#!/usr/bin/env bash
# The main job: the whole system on this machine, no GPUs (see hack/demo.py).
# A real local control plane with 8 fake GPU nodes, Prometheus, the policy service, the
# extender and the operator; a burst of AIGCJobs; a live table; the same burst in the
# simulator for the learned policy and the best heuristics. Arguments go to hack/demo.py.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv=$("$root/hack/setup-venv.sh")
"$root/hack/cluster/build.sh" >&2
if ! command -v prometheus >/dev/null; then
  # Two commands, not an && list: set -e stops at a failed update.
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi
export PATH="$venv/bin:$PATH"
exec "$venv/bin/python" "$root/hack/demo.py" "$@"
