#!/usr/bin/env bash
# weir's image, as a cluster pulls it: every binary (agent, weir-cni,
# operator, relay, weir) from a release build, debug info stripped, with
# the shared libraries they load; one layer, no daemon (crane).
#
#   scripts/image.sh --push registry.example/weir:0.1.0   # your registry's credentials (~/.docker/config.json)
#   scripts/image.sh --output weir.tar                    # docker load -i / ctr image import
#
# then install with that image: helm install ... --set
# image.repository=registry.example/weir (or edit install/weir.yaml).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -eq 0 ]; then
  sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 64
fi
bash scripts/deps.sh >/dev/null
bash scripts/tools.sh
cargo build --release --workspace --locked
exec target/release/weir lab image --bin-dir target/release "$@"
