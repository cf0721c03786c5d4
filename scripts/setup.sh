#!/usr/bin/env bash
# Installs what stasis needs on a fresh Debian 12 machine (as root): a C compiler for the test
# workloads, python3 for the interpreter test, and Debian's criu package for `crit`, which the
# tests use to decode our images. The Rust toolchain itself comes from rustup.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
need=()
command -v gcc >/dev/null || need+=(gcc libc6-dev)
command -v python3 >/dev/null || need+=(python3)
command -v crit >/dev/null || need+=(criu)
command -v mount >/dev/null || need+=(mount)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null
fi
if ! command -v cargo >/dev/null; then
  echo "cargo not found: install the Rust toolchain (rustup) first" >&2
  exit 1
fi
