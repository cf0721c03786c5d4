#!/usr/bin/env bash
# The test command: build everything (the end-to-end tests drive the stasis binary), then run
# every test. Privileged tests that cannot run (not root, no crit...) say SKIP and why; they are
# reported as skipped in the closing line, never as passed.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --workspace --all-targets
skips=$(mktemp)
out=$(mktemp)
trap 'rm -f "$skips" "$out"' EXIT
status=0
STASIS_SKIP_LOG=$skips cargo test --workspace --no-fail-fast 2>&1 | tee "$out" || status=$?
passed=$(grep -Eo '^test result: [A-Za-z]+\. [0-9]+ passed' "$out" | awk '{s+=$4} END {print s+0}')
failed=$(grep -Eo '[0-9]+ failed;' "$out" | awk '{s+=$1} END {print s+0}')
skipped=$(grep -c '^SKIP' "$skips" || true)
if [ "$skipped" -gt 0 ]; then
  echo "skipped tests:"
  sed 's/^/  /' "$skips"
fi
echo "stasis: $((passed - skipped)) passed, $failed failed, $skipped skipped"
exit "$status"
