#!/usr/bin/env bash
# Runs every check and every test: formatting, clippy, unit tests,
# BPF_PROG_TEST_RUN datapath tests, and the privileged CNI, agent-restart and
# lab tests in network namespaces. Every test binary runs even when another
# fails; a summary of what failed closes the run. Needs root. With CI=true,
# privileged tests fail (never skip) when they cannot run.
set -uo pipefail
cd "$(dirname "$0")/.."

bash scripts/deps.sh || exit 1

failed_steps=()
log=$(mktemp -t weir-test.XXXXXX)
trap 'rm -f "$log"' EXIT

step() { printf '\n==> %s\n' "$*"; }

step "cargo fmt --check"
if ! cargo fmt --all --check >/dev/null 2>&1; then
  cargo fmt --all --check 2>&1 | grep '^Diff in' | head -20
  failed_steps+=("cargo fmt --check (run cargo fmt)")
fi

step "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets --locked --quiet -- -D warnings || failed_steps+=("cargo clippy")

# The privileged tests run the real binaries, so build them all first.
step "cargo build --workspace"
if ! cargo build --workspace --locked; then
  echo "build failed: no tests run" >&2
  exit 1
fi

step "cargo test --workspace --no-fail-fast"
cargo test --workspace --locked --no-fail-fast "$@" 2>&1 | tee "$log"
test_rc=${PIPESTATUS[0]}

passed=$(awk '/^test result:/ {for (i = 1; i <= NF; i++) if ($i ~ /^passed;?$/) s += $(i-1)} END {print s + 0}' "$log")
failed=$(awk '/^test result:/ {for (i = 1; i <= NF; i++) if ($i ~ /^failed;?$/) s += $(i-1)} END {print s + 0}' "$log")

printf '\n==> summary\n'
if [ "$test_rc" -ne 0 ]; then
  failed_steps+=("cargo test")
  echo "failed tests:"
  grep -E '^test .* \.\.\. FAILED$' "$log" | sed -E 's/^test (.*) \.\.\. FAILED$/  \1/' | sort -u
  echo "failed test binaries:"
  grep -E '^    `.*`$|^error: test failed' "$log" | sed -E 's/^ +/  /' | sort -u
fi
for s in "${failed_steps[@]}"; do echo "FAILED step: $s"; done
echo "tests: $passed passed, $failed failed"
[ ${#failed_steps[@]} -eq 0 ]
