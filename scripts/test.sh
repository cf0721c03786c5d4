#!/usr/bin/env bash
# The test command: build everything (the end-to-end tests drive the stasis binary), then run
# every test. Privileged tests print SKIP with a reason when not run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --workspace --all-targets
cargo test --workspace
