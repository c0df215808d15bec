#!/usr/bin/env bash
# Build the S3-compatible object store the tests upload images to: Versity S3 Gateway
# (Apache-2.0, POSIX backend), from its pinned Go module, once per machine, into
#
#   ${EAT_CACHE:-$HOME/.cache/eat}/versitygw-<version>/versitygw
#
# Reused when present (about 3 minutes to build on 2 cores). Prints the binary's path last.
set -euo pipefail
version=v1.8.0
dest=${EAT_CACHE:-$HOME/.cache/eat}/versitygw-$version
if [[ ! -x $dest/versitygw ]]; then
  command -v go >/dev/null || { echo "hack/s3/build.sh: go not found (Go >= 1.26 is needed)" >&2; exit 1; }
  mkdir -p "$dest"
  echo "hack/s3/build.sh: building versitygw $version into $dest" >&2
  GOBIN=$dest GOFLAGS=-trimpath nice -n "${EAT_BUILD_NICE:-10}" \
    go install -ldflags "-s -w" "github.com/versity/versitygw/cmd/versitygw@$version" >&2
fi
echo "$dest/versitygw"
