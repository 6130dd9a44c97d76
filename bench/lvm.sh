#!/bin/bash
# Delta backup cost vs LV size, on real LVM in the test VM (tests/vm/run.sh):
# the same change (16 MiB in 256 random 64 KiB writes) on a 1 GiB and an 8 GiB thin
# LV, each with a full backup first; prints the delta times. A delta's cost should
# follow the change, not the LV size.
# Usage: bench/lvm.sh            (builds thinarc in release mode on the host first)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
cargo build --release --locked -q
GUEST=$(mktemp)
cat > "$GUEST" <<GUEST
set -euo pipefail
T=$ROOT/target/release/thinarc
pvcreate -q -y /dev/vda; vgcreate -q vg /dev/vda
lvcreate -q -y -L 2G --chunksize 64k -T vg/pool
for size in 1 8; do
  lv=lv\$size
  lvcreate -q -y -V \${size}G -T vg/pool -n \$lv
  # some data spread over the LV: 64 MiB in 1 MiB pieces
  for i in \$(seq 0 63); do
    dd if=/dev/urandom of=/dev/vg/\$lv bs=1M count=1 seek=\$(( i * size * 16 )) conv=notrunc,fsync status=none
  done
  repo=/tmp/repo\$size; \$T -q -r \$repo init
  \$T -q -r \$repo backup lvm:vg/\$lv --json > /tmp/full\$size.json
  # the same change on both: 256 random 64 KiB writes in the first GiB (fixed seed)
  RANDOM=42
  for i in \$(seq 1 256); do
    dd if=/dev/urandom of=/dev/vg/\$lv bs=64k count=1 seek=\$(( (RANDOM * 32768 + RANDOM) % 16384 )) conv=notrunc status=none
  done
  sync
  s=\$(date +%s.%N)
  \$T -q -r \$repo backup lvm:vg/\$lv --json > /tmp/delta\$size.json
  e=\$(date +%s.%N)
  printf 'LV %d GiB: delta %.2f s, read %s bytes, %s blocks; full backup read %s bytes\n' \$size "\$(echo "\$e - \$s" | bc)" \
    "\$(grep -o '"bytes_read": [0-9]*' /tmp/delta\$size.json | grep -o '[0-9]*$')" \
    "\$(grep -o '"blocks_changed": [0-9]*' /tmp/delta\$size.json | grep -o '[0-9]*$')" \
    "\$(grep -o '"bytes_read": [0-9]*' /tmp/full\$size.json | grep -o '[0-9]*$')"
  rm -rf \$repo
done
GUEST
PV_SIZE=4G tests/vm/run.sh "$GUEST"
rm -f "$GUEST"
