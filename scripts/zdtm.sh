#!/usr/bin/env bash
# CRIU's own test suite as a yardstick: runs zdtm tests (test/zdtm/static) in the host flavor
# with stasis as --criu-bin. Needs root, a CRIU source checkout whose zdtm tests were built by
# hand beforehand (`make -C test/zdtm` in that checkout; this script builds nothing of CRIU's),
# and Debian's crit and python3-pycriu (package criu): the checkout's own pycriu needs
# generated protobuf modules.
#
#   scripts/zdtm.sh CRIU_SRC [TEST...]    (default: the tests below)
#
# Each test runs under the end-to-end lock, like scripts/test.sh. Logs: the printed work dir.
set -euo pipefail
cd "$(dirname "$0")/.."
src=${1:?usage: scripts/zdtm.sh CRIU_SRC [TEST...]}
shift
tests=("$@")
if [ ${#tests[@]} -eq 0 ]; then
  tests=(env00 pipe00 maps00 sigaltstack pthread00 fifo unlink_fstat00 file_locks00
    socket_listen write_read00 cwd00 umask00 timerfd eventfs00 mprotect00 pid00 zombie00
    sockets00 inotify00)
fi
cargo build -p stasis-cli
# zdtm makes its images dirs 0777 (its tests run unprivileged): let the restore use them.
export STASIS_ALLOW_SHARED_IMAGES_DIR=1
bin=$PWD/target/debug/stasis
work=$(mktemp -d /tmp/stasis-zdtm.XXXXXX)
for d in test lib scripts Makefile.versions; do
  [ -e "$src/$d" ] && cp -a "$src/$d" "$work/"
done
rm -f "$work/test/pycriu"
pass=0 fail=0 skip=0
for t in "${tests[@]}"; do
  log=$work/$t.log
  if [ ! -x "$work/test/zdtm/static/$t" ]; then
    echo "$t: NOT BUILT (run make -C test/zdtm in $src first)"
    fail=$((fail + 1))
    continue
  fi
  (cd "$work/test" && flock -o /tmp/stasis-e2e.lock timeout 300 /usr/bin/python3 zdtm.py run \
    -t "zdtm/static/$t" -f h --criu-bin "$bin" --crit-bin /usr/bin/crit \
    --pycriu-search-path /usr/lib/python3/dist-packages) >"$log" 2>&1 || true
  if grep -q "^=* Test zdtm/static/$t PASS" "$log"; then
    echo "$t: PASS"
    pass=$((pass + 1))
  elif grep -q "^Skipping" "$log"; then
    echo "$t: SKIP ($(grep -m1 '^Skipping' "$log"))"
    skip=$((skip + 1))
  else
    echo "$t: FAIL ($(grep -m1 -E 'is not supported yet|FAIL at' "$log" || echo "see $log"))"
    fail=$((fail + 1))
  fi
done
echo "zdtm with stasis: $pass passed, $fail failed, $skip skipped (logs in $work)"
