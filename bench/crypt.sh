#!/usr/bin/env bash
# Encrypted vs plain repository: full backup, a --changed-blocks delta after 1 % of the
# image changed, and a restore of the latest point, each timed with its peak RSS
# (/usr/bin/time), through examples/crypt_bench.rs (the library, local repositories).
#
#   bench/crypt.sh                       # 4 GiB image
#   BENCH_SIZE_GIB=2 bench/crypt.sh      # when the disk is short (peak ~2.8x the image)
#
# Work directory: $BENCH_DIR/crypt (default bench/work/crypt); removed at the end.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SIZE_GIB=${BENCH_SIZE_GIB:-4}
WORK=${BENCH_DIR:-$ROOT/bench/work}/crypt
command -v /usr/bin/time >/dev/null || apt-get install -y --no-install-recommends time
(cd "$ROOT" && cargo build --release --locked --example crypt_bench)
BIN=$ROOT/target/release/examples/crypt_bench
rm -rf "$WORK" && mkdir -p "$WORK"
trap 'rm -rf "$WORK"' EXIT
IMG=$WORK/image
SIZE=$((SIZE_GIB << 30))
# About 60 % real files (binaries, libraries, text), the rest zeros, fully allocated.
find /usr/lib /usr/share /usr/bin /usr/include -type f -size +0 2>/dev/null \
  | xargs cat 2>/dev/null | head -c $((SIZE * 60 / 100)) > "$IMG" || true
dd if=/dev/zero of="$IMG" bs=1M seek=$(( $(stat -c %s "$IMG") >> 20 )) \
  count=$(( (SIZE >> 20) - ($(stat -c %s "$IMG") >> 20) )) conv=notrunc status=none
truncate -s "$SIZE" "$IMG"
# 1 % of the image's 64 KiB blocks, random positions (seed 42), and their list.
CHANGED=$WORK/changed.txt
python3 - "$SIZE" "$CHANGED" <<'PY'
import random, sys
size, out = int(sys.argv[1]), sys.argv[2]
random.seed(42)
blocks = sorted(random.sample(range(size // 65536), size // 65536 // 100))
open(out, "w").write("".join(f"{b * 65536} 65536\n" for b in blocks))
PY
run() { # label, command...: prints "label seconds peak_kib"
  local label=$1; shift
  sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
  /usr/bin/time -f "%e %M" -o "$WORK/time" "$@" > "$WORK/out" 2>&1 || { cat "$WORK/out"; exit 1; }
  printf '%-22s %8s s %8s KiB\n' "$label" $(cat "$WORK/time")
}
# Plain and encrypted steps interleaved on the same image (one image on disk).
for mode in plain enc; do
  run "$mode full" "$BIN" "$mode" "$WORK/repo-$mode" full "$IMG"
done
while read -r off len; do
  dd if=/dev/urandom of="$IMG" bs=65536 seek=$((off / 65536)) count=1 conv=notrunc status=none
done < "$CHANGED"
for mode in plain enc; do
  run "$mode delta 1% list" "$BIN" "$mode" "$WORK/repo-$mode" delta "$IMG" "$CHANGED"
done
for mode in plain enc; do
  run "$mode restore" "$BIN" "$mode" "$WORK/repo-$mode" restore "$WORK/restored"
  cmp "$IMG" "$WORK/restored"
  rm -f "$WORK/restored"
  du -sh "$WORK/repo-$mode" | sed "s/^/$mode repository: /"
done
