#!/usr/bin/env bash
# Installs what stasis needs on a fresh Debian 12 machine (as root): a C compiler for the test
# workloads, python3 for the interpreter test, Debian's criu package for `crit` (the tests
# decode our images with it), and redis-server, nginx, PostgreSQL, memcached and tmux, real
# programs the tests checkpoint. The Rust toolchain itself comes from rustup.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
need=()
command -v gcc >/dev/null || need+=(gcc libc6-dev)
command -v python3 >/dev/null || need+=(python3)
command -v crit >/dev/null || need+=(criu)
command -v mount >/dev/null || need+=(mount)
# ip builds the network-namespace fixtures (stasis itself speaks netlink).
command -v ip >/dev/null || need+=(iproute2)
# Real servers for the socket tests (started by the tests themselves on loopback ports).
command -v redis-server >/dev/null || need+=(redis-server)
[ -x /usr/sbin/nginx ] || need+=(nginx)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null
  # Debian starts the packaged services on install; the tests run their own instances.
  service redis-server stop >/dev/null 2>&1 || true
  service nginx stop >/dev/null 2>&1 || true
fi
# PostgreSQL, memcached and tmux on their own: should one fail to install, only its test is
# skipped (and says so).
extra=()
ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || extra+=(postgresql)
command -v memcached >/dev/null || extra+=(memcached)
command -v tmux >/dev/null || extra+=(tmux)
# runc and a static busybox for the container tests (runc drives stasis as its criu).
command -v runc >/dev/null || extra+=(runc)
dpkg -s busybox-static >/dev/null 2>&1 || extra+=(busybox-static)
# containerd (ctr, the runc v2 shim): the tests run a private instance of it.
command -v containerd >/dev/null || extra+=(containerd)
# nft writes and lists the firewall fixtures of the network-namespace tests (stasis itself
# speaks nf_tables netlink).
command -v nft >/dev/null || extra+=(nftables)
for p in "${extra[@]}"; do
  apt-get update -qq
  apt-get install -y -qq "$p" >/dev/null ||
    echo "setup: $p did not install; its test will be skipped" >&2
  service "$p" stop >/dev/null 2>&1 || true
done
# podman with conmon, netavark and catatonit (a pod's infra process), as Debian ships them (the
# tests give it a config of its own).
# netavark 1.4 sets up the bridge network's NAT by running iptables, which it does not depend on.
if ! command -v podman >/dev/null || ! command -v iptables >/dev/null || ! command -v catatonit >/dev/null; then
  apt-get install -y -qq --no-install-recommends podman conmon netavark iptables catatonit >/dev/null ||
    echo "setup: podman did not install; its tests will be skipped" >&2
fi
# Docker (dockerd, which runs its own containerd and runc): the tests run a private dockerd.
if ! command -v dockerd >/dev/null; then
  apt-get install -y -qq --no-install-recommends docker.io >/dev/null ||
    echo "setup: docker.io did not install; its test will be skipped" >&2
  service docker stop >/dev/null 2>&1 || true
fi
# LXC (lxc-checkpoint drives criu on its command line; its busybox template makes the rootfs).
if ! command -v lxc-checkpoint >/dev/null; then
  apt-get install -y -qq --no-install-recommends lxc >/dev/null ||
    echo "setup: lxc did not install; its test will be skipped" >&2
  service lxc stop >/dev/null 2>&1 || true
  service lxc-net stop >/dev/null 2>&1 || true
fi
if ! command -v cargo >/dev/null; then
  echo "cargo not found: install the Rust toolchain (rustup) first" >&2
  exit 1
fi
# youki 0.7.0, another client of CRIU's RPC, from crates.io (Debian has none): about six minutes
# on two cores. Its features are not on by default; without v1 it cannot create a container on
# a hybrid-cgroup machine.
if ! command -v youki >/dev/null; then
  apt-get install -y -qq --no-install-recommends libseccomp-dev libsystemd-dev pkg-config >/dev/null &&
    CARGO_TARGET_DIR="${TMPDIR:-/tmp}/stasis-youki-build" cargo install -q youki --version 0.7.0 \
      --features v1,v2,systemd,seccomp --root /usr/local ||
    echo "setup: youki did not install; its tests will be skipped" >&2
  rm -rf "${TMPDIR:-/tmp}/stasis-youki-build"
fi
