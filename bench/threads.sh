#!/usr/bin/env bash
# Restore of one point with --threads 1, 2, 4 (and more if asked) next to zstd -d of
# a zstd -1 copy of the image, each written to a new file on the same disk and timed
# whole (wall, user, sys) with /usr/bin/time; every restore is compared with the
# image. The page cache is warm (the repository and the .zst are read once first).
#
#   bench/threads.sh IMAGE REPO VOLUME          # IMAGE: what the point holds
#   THREADS="1 2 4 8 16" REPS=3 bench/threads.sh IMAGE REPO VOLUME
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
IMG=$1 REPO=$2 VOL=$3
THREADS=${THREADS:-1 2 4}
REPS=${REPS:-3}
T=${BENCH_THINARC:-$ROOT/target/release/thinarc}
OUT=$(dirname "$IMG")/threads-restore.img
ZST=$(dirname "$IMG")/threads.zst
trap 'rm -f "$OUT" "$ZST"' EXIT
zstd -q -1 -T2 -f "$IMG" -o "$ZST"
cat "$ZST" "$REPO"/*/*/* > /dev/null 2>&1 || true
row() {  # name, then the command
    local name=$1; shift
    for _ in $(seq "$REPS"); do
        rm -f "$OUT"
        /usr/bin/time -f '%e %U %S %M' -o "$OUT.time" "$@" >/dev/null
        cmp -s "$OUT" "$IMG" || { echo "$name: output differs from $IMG" >&2; exit 1; }
        read -r wall user sys kb < "$OUT.time"
        echo "$wall $user $sys $kb"
    done | sort -n | awk -v name="$name" -v n="$REPS" '
        { w[NR]=$1; c[NR]=$2+$3; m[NR]=$4 }
        END { i=int((n+1)/2); printf "| %s | %.2f | %.2f | %.2f | %d |\n", name, w[i], c[i], c[i]/w[i], m[i]/1024 }'
    rm -f "$OUT.time"
}
echo "| command | wall s (median of $REPS) | CPU s | cores used | peak RSS MiB |"
echo "|---|---:|---:|---:|---:|"
row "zstd -d" zstd -q -d -f "$ZST" -o "$OUT"
for t in $THREADS; do
    row "restore --threads $t" "$T" -q --threads "$t" -r "$REPO" restore "$VOL" "$OUT"
done
echo
echo "$(nproc) cores; load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
