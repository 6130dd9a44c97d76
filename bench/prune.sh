#!/usr/bin/env bash
# thinarc prune benchmark: a 30-point chain (a full and 29 deltas, each rewriting
# BENCH_CHANGE_PCT % of the image in 64 KiB blocks at random places), then
#   1. prune --keep-last 10: the 20 oldest points are folded into point 21 (a new
#      full archive) in one pass;
#   2. prune --keep-last 5 --max-chain-length 3: merges and a consolidation.
# Prints time, bytes read and written by the rewrites, and the stored size of the
# archives merged, and checks that every kept point restores to the image it was
# backed up from.
#
#   bench/prune.sh                      # 1 GiB image
#   BENCH_SIZE_MIB=4096 bench/prune.sh  # the 4 GiB size of bench/run.sh
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SIZE_MIB=${BENCH_SIZE_MIB:-1024}
CHANGE_PCT=${BENCH_CHANGE_PCT:-1}
WORK=${BENCH_DIR:-$ROOT/bench/work-prune}
BIN=${BENCH_THINARC:-$ROOT/target/release/thinarc}
[[ -n "${BENCH_THINARC:-}" ]] || (cd "$ROOT" && cargo build --release --locked -q)

rm -rf "$WORK" && mkdir -p "$WORK"
trap 'rm -rf "$WORK"' EXIT
IMG=$WORK/disk.img
REPO=$WORK/repo
BLK=65536
NBLK=$((SIZE_MIB * 16))
log() { printf '[prune-bench %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

# Half compressible text, half random: a rough stand-in for a used filesystem.
log "image: $SIZE_MIB MiB"
python3 - "$IMG" "$SIZE_MIB" <<'EOF'
import os, sys, random
path, mib = sys.argv[1], int(sys.argv[2])
rnd = random.Random(1)
with open(path, "wb") as f:
    for i in range(mib):
        if i % 2:
            f.write(os.urandom(1 << 20))
        else:
            line = ("block %d of a compressible file %d\n" % (i, rnd.random())).encode()
            f.write((line * ((1 << 20) // len(line) + 1))[: 1 << 20])
EOF
"$BIN" -q -r "$REPO" init --no-encryption >/dev/null
"$BIN" -q -r "$REPO" backup "$IMG" --volume bench >/dev/null
mkdir -p "$WORK/points"
sha256sum "$IMG" | cut -d' ' -f1 > "$WORK/points/1"
CHANGED=$((NBLK * CHANGE_PCT / 100))
for seq in $(seq 2 30); do
    python3 - "$IMG" "$NBLK" "$CHANGED" "$seq" "$WORK/changed" <<'EOF'
import os, sys, random
path, nblk, n, seed, listfile = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
rnd = random.Random(seed)
with open(path, "r+b") as f, open(listfile, "w") as l:
    for b in rnd.sample(range(nblk), n):
        f.seek(b * 65536)
        f.write(os.urandom(32768) + bytes([seed]) * 32768)
        l.write("%d %d\n" % (b * 65536, 65536))
EOF
    "$BIN" -q -r "$REPO" backup "$IMG" --volume bench --changed-blocks "$WORK/changed" >/dev/null
    sha256sum "$IMG" | cut -d' ' -f1 > "$WORK/points/$seq"
done
stored() { "$BIN" -r "$REPO" list bench --json | python3 -c 'import json,sys; print(sum(p["stored_bytes"] for p in json.load(sys.stdin)))'; }
log "chain of 30 points stored: $(stored) bytes"

run_prune() {
    local label=$1; shift
    local before; before=$(stored)
    local t0; t0=$(date +%s.%N)
    "$BIN" -r "$REPO" prune bench "$@" --json > "$WORK/prune.json"
    local t1; t1=$(date +%s.%N)
    python3 - "$WORK/prune.json" "$label" "$(echo "$t1 - $t0" | bc)" "$before" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))[0]
label, secs, before = sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
merged = sorted({s for p in r["points"] for s in p["merged"]})
print(f"{label}: {secs:.2f} s; rewrote {len(r['merges'])} archive(s) from the archives of "
      f"{len(merged)} points ({r['read_estimate']} bytes stored); read {r['bytes_read']} bytes, "
      f"wrote {r['bytes_written']} bytes; chain stored before {before} bytes")
EOF
}
run_prune "prune --keep-last 10" --keep-last 10
run_prune "prune --keep-last 5 --max-chain-length 3" --keep-last 5 --max-chain-length 3

log "checking the kept points"
for seq in $("$BIN" -r "$REPO" list bench --json | python3 -c 'import json,sys; print(" ".join(str(p["seq"]) for p in json.load(sys.stdin)))'); do
    "$BIN" -q -r "$REPO" restore bench "$WORK/out.img" --at "$seq" >/dev/null
    [[ "$(sha256sum "$WORK/out.img" | cut -d' ' -f1)" == "$(cat "$WORK/points/$seq")" ]] \
        || { echo "seq $seq does not restore" >&2; exit 1; }
    rm -f "$WORK/out.img"
done
log "every kept point restores byte for byte"
