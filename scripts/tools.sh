#!/usr/bin/env bash
# Builds the real clients of the Hubble ecosystem that the tests and the
# demo use, from the Go module proxy, once, into a cache outside the repo
# that later runs reuse: the stock hubble CLI (github.com/cilium/cilium,
# pinned by tools/hubble/go.mod and go.sum) and grpcurl. The first build
# takes about 4 minutes on 2 cores (mostly fetching cilium's modules);
# afterwards this script returns at once. Prints nothing when all is there.
set -euo pipefail
cd "$(dirname "$0")/.."

cache=${WEIR_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/weir-tools}
bin=$cache/bin
mkdir -p "$bin"

HUBBLE_MODULE=github.com/cilium/cilium/hubble
GRPCURL_MODULE=github.com/fullstorydev/grpcurl/cmd/grpcurl@v1.9.3

need_go() {
  if ! command -v go >/dev/null 2>&1; then
    echo "tools: go not found. These machines have Go 1.26; on another, install Go 1.26+ to build hubble and grpcurl." >&2
    exit 1
  fi
}

# A build is redone when what pins it changes.
stamp_of() { sha256sum "$@" | sha256sum | cut -c1-16; }

hubble_stamp=$(stamp_of tools/hubble/go.mod tools/hubble/go.sum)
if [ ! -x "$bin/hubble" ] || [ "$(cat "$bin/hubble.stamp" 2>/dev/null)" != "$hubble_stamp" ]; then
  need_go
  echo "tools: building the hubble CLI from the Go module proxy into $bin (first time: about 4 minutes)"
  start=$(date +%s)
  (cd tools/hubble && GOTOOLCHAIN=local go build -trimpath -o "$bin/hubble.new" "$HUBBLE_MODULE")
  mv "$bin/hubble.new" "$bin/hubble"
  echo "$hubble_stamp" >"$bin/hubble.stamp"
  echo "tools: hubble built in $(( $(date +%s) - start )) s"
fi

if [ ! -x "$bin/grpcurl" ] || [ "$(cat "$bin/grpcurl.stamp" 2>/dev/null)" != "$GRPCURL_MODULE" ]; then
  need_go
  echo "tools: building grpcurl ($GRPCURL_MODULE) into $bin"
  GOBIN=$bin GOTOOLCHAIN=local go install "$GRPCURL_MODULE"
  echo "$GRPCURL_MODULE" >"$bin/grpcurl.stamp"
fi
