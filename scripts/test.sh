#!/usr/bin/env bash
# Runs every test: unit tests, BPF_PROG_TEST_RUN datapath tests, and the
# privileged CNI, agent-restart and lab tests in network namespaces.
# Needs root. With CI=true, privileged tests fail (never skip) without it.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/deps.sh
# The privileged tests run the real binaries, so build them all first.
cargo build --workspace --locked
cargo test --workspace --locked "$@"
