#!/usr/bin/env bash
# The main job, end to end: set up, build, start a counter, checkpoint it (which kills it),
# restore it with the same PID, and show it carrying on.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 1; }
bash scripts/setup.sh
cargo build --release -p stasis-cli
BIN=$PWD/target/release/stasis
work=$(mktemp -d /tmp/stasis-demo.XXXXXX)
cat > "$work/counter.c" <<'C'
#include <stdio.h>
#include <unistd.h>
int main(void){ setvbuf(stdout,0,_IONBF,0); for(unsigned long i=0;;i++){ printf("%lu\n",i); usleep(100000);} }
C
gcc -O2 -o "$work/counter" "$work/counter.c"
mkdir "$work/images"
setsid "$work/counter" > "$work/out.txt" 2>&1 < /dev/null &
pid=$!
sleep 1
echo "counter pid $pid, last line before dump: $(tail -n1 "$work/out.txt")"
"$BIN" dump -t "$pid" -D "$work/images" -o dump.log -v4
wait "$pid" 2>/dev/null || true
echo "dumped and killed; images: $(ls "$work/images" | tr '\n' ' ')"
crit x "$work/images" ps || true
sleep 1
echo "line count while dead: $(wc -l < "$work/out.txt")"
"$BIN" restore -D "$work/images" -d -o restore.log -v4 --pidfile "$work/pid"
echo "restored pid $(cat "$work/pid")"
sleep 1
echo "it carries on:"; tail -n 5 "$work/out.txt"
kill -9 "$(cat "$work/pid")"
