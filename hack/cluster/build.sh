#!/usr/bin/env bash
# Build the pinned control-plane binaries (etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler, kwok, kubectl, helm) from their Go
# modules into a cache outside the clone:
#
#   ${EAT_CACHE:-$HOME/.cache/eat}/k8s-<k8s>-kwok-<kwok>-<hash>/bin/
#
# <hash> is a hash of go.mod, go.sum, versions.env and cmd/. Two checkouts that
# differ there build into two folders, so neither deletes binaries the other's
# running control plane uses. Reused when present: a stamp file records the hash
# once a build completed; only missing binaries are built. Prints the bin dir last.
#
#   hack/cluster/build.sh            build what is missing
#   hack/cluster/build.sh --force    rebuild everything
#   hack/cluster/build.sh --print    print the bin dir, build nothing
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=versions.env
. "$here/versions.env"

force=0 print=0
case "${1:-}" in
  --print) print=1 ;;
  --force) force=1 ;;
  "") ;;
  *) echo "usage: $0 [--force|--print]" >&2; exit 2 ;;
esac

cd "$here"
hash=$(cat go.mod go.sum versions.env $(find cmd -name '*.go' | LC_ALL=C sort) | sha256sum | cut -c1-16)
cache=${EAT_CACHE:-$HOME/.cache/eat}
name="k8s-$K8S_VERSION-kwok-$KWOK_VERSION"
dest="$cache/$name-$hash"
bin="$dest/bin"
stamp="$dest/stamp"
all=(etcd kube-apiserver kube-controller-manager kube-scheduler kwok kubectl helm)

if [[ $print == 1 ]]; then echo "$bin"; exit 0; fi

# One build of a folder at a time (tests and the demo of two checkouts may start
# together): the second waits, then finds it up to date.
mkdir -p "$cache"
exec {lock}>"$dest.lock"
flock "$lock"

# Folders named without the hash (earlier layout): one built from the same
# inputs is taken over by hard links, which copy nothing and move nothing a
# running process uses.
legacy="$cache/$name"
if [[ ! -e $dest && -f $legacy/stamp && "$(cat "$legacy/stamp")" == "$hash" ]]; then
  mkdir "$dest"
  cp -al "$legacy/bin" "$legacy/share" "$dest/"
  cp "$legacy/stamp" "$stamp"
  echo "build.sh: took over $legacy" >&2
fi

missing=()
if [[ $force == 1 || ! -f $stamp || "$(cat "$stamp")" != "$hash" ]]; then
  # No rm -rf: go build replaces each binary by a new file, and a process still
  # running the old one keeps it.
  rm -f "$stamp"
  missing=("${all[@]}")
else
  for b in "${all[@]}"; do [[ -x $bin/$b ]] || missing+=("$b"); done
fi

if [[ ${#missing[@]} == 0 ]]; then
  echo "build.sh: up to date (${dest})" >&2
  echo "$bin"
  exit 0
fi

command -v go >/dev/null || { echo "build.sh: go not found (Go >= 1.26 is needed)" >&2; exit 1; }
export GOFLAGS=-mod=mod
# Must match go.mod: versions.env is what the cache key and localcluster.py use.
for pair in "k8s.io/kubernetes=$K8S_VERSION" "sigs.k8s.io/kwok=$KWOK_VERSION" \
            "go.etcd.io/etcd/server/v3=$ETCD_VERSION" "helm.sh/helm/v4=$HELM_VERSION"; do
  mod=${pair%%=*}; want=${pair#*=}
  got=$(go list -m -f '{{.Version}}' "$mod")
  [[ $got == "$want" ]] || { echo "build.sh: go.mod has $mod $got, versions.env says $want" >&2; exit 1; }
done

minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
ld="-s -w"
for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ld+=" -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
done
ld+=" -X helm.sh/helm/v4/internal/version.version=$HELM_VERSION"

pkgs=(); for b in "${missing[@]}"; do pkgs+=("./cmd/$b"); done
mkdir -p "$bin" "$dest/share"
echo "build.sh: building ${missing[*]} into $bin" >&2
start=$(date +%s)
# One invocation for all packages: shared dependencies compile once.
nice -n "${EAT_BUILD_NICE:-10}" go build -p "${EAT_BUILD_JOBS:-2}" -trimpath -ldflags "$ld" -o "$bin/" "${pkgs[@]}"
end=$(date +%s)

kwokdir=$(go list -m -f '{{.Dir}}' sigs.k8s.io/kwok)
install -m 0644 "$kwokdir/kustomize/crd/bases/kwok.x-k8s.io_stages.yaml" "$dest/share/kwok-stage-crd.yaml"

for b in "${all[@]}"; do [[ -x $bin/$b ]] || { echo "build.sh: $b missing after build" >&2; exit 1; }; done
"$bin/kube-apiserver" --version >&2
echo "$hash" > "$stamp"
echo "build.sh: built ${#missing[@]} binaries in $((end - start))s" >&2
echo "$bin"
