#!/bin/bash
# Delta backup cost vs LV size, on real LVM in the test VM (tests/vm/run.sh).
#
# A 1 GiB and an 8 GiB thin LV in one pool (64 KiB chunks), each with 64 MiB of data
# spread over it and a full backup. Then one untimed warm-up delta of each (first
# start of the binary over 9p, LVM's first scans), then REPS rounds; each round makes
# the same change on both LVs (256 random 64 KiB writes in the first GiB, seed = the
# round) and times a delta backup of each, the order alternating between rounds
# (1,8 / 8,1 / ...), page cache dropped before each. Prints one line per run and a
# table: median, min and max wall time per size, the median time per step (from the
# `ran PROGRAM in S s` debug log lines of `-v`, and the pipeline's own `seconds`),
# and the bytes read. A delta's cost should follow the change, not the LV size.
#
# Usage: bench/lvm.sh                 (builds thinarc in release mode on the host first)
# Env:   REPS (rounds, default 5), BENCH_THINARC (use this binary instead of building),
#        VM_TIMEOUT (seconds, default 2400)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
if [ -z "${BENCH_THINARC:-}" ]; then
  cargo build --release --locked -q
  BENCH_THINARC=$ROOT/target/release/thinarc
fi
REPS=${REPS:-5}
GUEST=$(mktemp)
cat > "$GUEST" <<GUEST
set -euo pipefail
T=$BENCH_THINARC
REPS=$REPS
GUEST
cat >> "$GUEST" <<'GUEST'
pvcreate -q -y /dev/vda; vgcreate -q vg /dev/vda
lvcreate -q -y -L 2G --chunksize 64k -T vg/pool
field() { grep -o "\"$1\": [0-9.]*" "$2" | grep -o '[0-9.]*$'; }
# The same change on the LV: 256 random 64 KiB writes in its first GiB (seed $2).
change() {
  RANDOM=$2
  for i in $(seq 1 256); do
    dd if=/dev/urandom of=/dev/vg/$1 bs=64k count=1 seek=$(( (RANDOM * 32768 + RANDOM) % 16384 )) conv=notrunc status=none
  done
  sync
}
# One delta backup of lv$1, timed; appends a row to /tmp/runs.tsv.
delta() {
  local size=$1 round=$2
  sync; echo 3 > /proc/sys/vm/drop_caches
  local s e
  s=$(date +%s.%N)
  $T -v -r /tmp/repo$size backup lvm:vg/lv$size --json > /tmp/d.json 2> /tmp/d.log
  e=$(date +%s.%N)
  # seconds per program from the debug lines "ran PROGRAM in S s: ARGS"
  local steps
  steps=$(awk '{ for (i = 1; i < NF; i++) if ($i == "ran" && $(i+2) == "in") t[$(i+1)] += $(i+3) }
    END { printf "%.3f\t%.3f\t%.3f\t%.3f\t%.3f\t%.3f", t["lvs"], t["lvcreate"], t["lvchange"], t["dmsetup"], t["thin_delta"], t["lvremove"] }' /tmp/d.log)
  printf '%s\t%s\t%.3f\t%s\t%s\t%s\t%s\n' "$size" "$round" "$(echo "$e - $s" | bc)" "$(field seconds /tmp/d.json)" \
    "$steps" "$(field bytes_read /tmp/d.json)" "$(field blocks_changed /tmp/d.json)" | tee -a /tmp/runs.tsv
}
for size in 1 8; do
  lvcreate -q -y -V ${size}G -T vg/pool -n lv$size
  # some data spread over the LV: 64 MiB in 1 MiB pieces
  for i in $(seq 0 63); do
    dd if=/dev/urandom of=/dev/vg/lv$size bs=1M count=1 seek=$(( i * size * 16 )) conv=notrunc,fsync status=none
  done
  $T -q -r /tmp/repo$size init --no-encryption
  $T -q -r /tmp/repo$size backup lvm:vg/lv$size --json > /tmp/full$size.json
  echo "full backup of lv$size: read $(field bytes_read /tmp/full$size.json) bytes"
done
printf 'size\tround\twall\tpipeline\tlvs\tlvcreate\tlvchange\tdmsetup\tthin_delta\tlvremove\tbytes_read\tblocks\n'
for size in 1 8; do change lv$size 0; delta $size warmup; done > /dev/null
: > /tmp/runs.tsv
for r in $(seq 1 $REPS); do
  order="1 8"; [ $((r % 2)) = 0 ] && order="8 1"
  for size in $order; do change lv$size $r; delta $size $r; done
done
# median / min / max per size; medians of the steps
python3 - <<'PY'
import statistics as st
rows = [l.split('\t') for l in open('/tmp/runs.tsv').read().split('\n') if l]
cols = ['wall', 'pipeline', 'lvs', 'lvcreate', 'lvchange', 'dmsetup', 'thin_delta', 'lvremove']
print()
print('| LV | runs | wall median | min | max | pipeline (read, compress, upload) | lvs | lvcreate | lvchange | dmsetup | thin_delta | lvremove | bytes read (median) |')
print('|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|')
med = {}
for size in ('1', '8'):
    rs = [r for r in rows if r[0] == size]
    v = {c: [float(r[2 + i]) for r in rs] for i, c in enumerate(cols)}
    med[size] = st.median(v['wall'])
    print(f"| {size} GiB | {len(rs)} | {med[size]:.2f} s | {min(v['wall']):.2f} | {max(v['wall']):.2f} | "
          + ' | '.join(f"{st.median(v[c]):.2f}" for c in cols[1:])
          + f" | {int(st.median(int(r[10]) for r in rs)):,} |")
print(f"\n8 GiB / 1 GiB median wall time: {med['8'] / med['1']:.2f}")
PY
GUEST
PV_SIZE=4G VM_TIMEOUT=${VM_TIMEOUT:-2400} tests/vm/run.sh "$GUEST"
rm -f "$GUEST"
