#!/usr/bin/env bash
# Peak RSS and wall time of every command on sparse images of growing size with the
# same data: 3,000 random 64 KiB blocks of /dev/urandom data (issue 14: peak RSS flat
# and <= 64 MiB from 4 GiB to 4 TiB, a full backup included). See bench/README.md.
#
#   bench/rss.sh                                   # 4 GiB, 256 GiB, 4 TiB
#   RSS_SIZES="4G 64G" BENCH_THINARC=target/release/thinarc bench/rss.sh
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORK=${BENCH_DIR:-$ROOT/bench/work}/rss
SIZES=${RSS_SIZES:-4G 256G 4T}
BLOCKS=${RSS_BLOCKS:-3000}
T=${BENCH_THINARC:-}
if [[ -z $T ]]; then
    (cd "$ROOT" && cargo build --release --locked)
    T=$ROOT/target/release/thinarc
fi
rm -rf "$WORK" && mkdir -p "$WORK"
trap 'rm -rf "$WORK"' EXIT
echo "| size | command | wall s | peak RSS MiB |"
echo "|---|---|---:|---:|"
for size in $SIZES; do
    img=$WORK/img-$size repo=$WORK/repo-$size
    truncate -s "$size" "$img"
    # The same block numbers on every size (drawn from the smallest image's range).
    python3 - "$img" "$BLOCKS" <<'PY'
import os, random, sys
random.seed(14)
n = 4 * 1024**3 // 65536
blocks = sorted(random.sample(range(n), int(sys.argv[2])))
size = os.path.getsize(sys.argv[1])
with open(sys.argv[1], "r+b") as f:
    for b in blocks:
        # spread over the whole image: block b of 4 GiB sits at the same fraction
        f.seek(b * (size // n) // 65536 * 65536)
        f.write(os.urandom(65536))
with open(sys.argv[1] + ".cb", "w") as cb:
    for b in blocks[:30]:
        off = b * (size // n) // 65536 * 65536
        cb.write(f"{off} 65536\n")
PY
    # Unencrypted: an encrypted one's key derivation is every command's peak (73 MiB).
    "$T" -q -r "$repo" init --no-encryption >/dev/null
    run() {  # name, then the thinarc arguments
        local name=$1; shift
        /usr/bin/time -f '%e %M' -o "$WORK/time" "$T" -q -r "$repo" "$@" >/dev/null
        read -r wall kb < "$WORK/time"
        printf '| %s | %s | %s | %d |\n' "$size" "$name" "$wall" $((kb / 1024))
    }
    run "backup (full)" backup "$img" --volume v
    run "backup --changed-blocks (30 blocks)" backup "$img" --volume v --changed-blocks "$img.cb"
    run "backup (full-scan delta)" backup "$img" --volume v
    run "restore (chain of 3)" restore v "$WORK/restored"
    rm -f "$WORK/restored"
    run "verify --data" verify v --data
    run "verify --source" verify v --source "$img"
    run "list" list
    run "status" status
    rm -rf "$img" "$img.cb" "$repo"
done
