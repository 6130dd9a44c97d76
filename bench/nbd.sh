#!/usr/bin/env bash
# thinarc serve benchmark (issue 13): time to first byte on a big sparse chain,
# sequential copy through nbdcopy against restore, random 4 KiB reads, peak RSS.
#
#   bench/nbd.sh                     # 1 TiB sparse chain of 30 points, 4 GiB copy image
#   NBD_COPY_GIB=1 bench/nbd.sh      # a smaller copy image
#
# Environment:
#   BENCH_DIR        work directory (default bench/work)
#   BENCH_THINARC    use this binary instead of building target/release/thinarc
#   NBD_BIG_GIB      size of the sparse volume (default 1024)
#   NBD_POINTS       points in its chain (default 30)
#   NBD_COPY_GIB     size of the image copied with nbdcopy and restored (default 4)
#   NBD_CACHE        serve --cache (default 256MiB)
#   NBD_READS        random 4 KiB reads timed (default 2000), over a working set of
#   NBD_SET_MIB      MiB (default 64), read twice: cold, then cached
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORK=${BENCH_DIR:-$ROOT/bench/work}/nbd
BIG_GIB=${NBD_BIG_GIB:-1024}
POINTS=${NBD_POINTS:-30}
COPY_GIB=${NBD_COPY_GIB:-4}
CACHE=${NBD_CACHE:-256MiB}
READS=${NBD_READS:-2000}
SET_MIB=${NBD_SET_MIB:-64}
log() { printf '[nbd bench %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

need=()
command -v nbdcopy >/dev/null || need+=(libnbd-bin)
command -v qemu-io >/dev/null || need+=(qemu-utils)
[[ -x /usr/bin/time ]] || need+=(time)
if ((${#need[@]})); then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
if [[ -n "${BENCH_THINARC:-}" ]]; then T=$BENCH_THINARC; else
  (cd "$ROOT" && cargo build --release --locked -q); T=$ROOT/target/release/thinarc
fi
rm -rf "$WORK"; mkdir -p "$WORK"; cd "$WORK"
export THINARC_STATE_DIR=$WORK/state
drop_caches() { sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true; }

# Serves VOLUME of repo R on sock under /usr/bin/time (peak RSS in $1.rss); waits
# for the socket.
serve() {
  local tag=$1 r=$2 vol=$3; shift 3
  /usr/bin/time -f '%M' -o "$tag.rss" "$T" -q -r "$r" serve "$vol" --socket "$WORK/$tag.sock" --cache "$CACHE" "$@" > "$tag.out" 2> "$tag.err" &
  SERVE_PID=$!
}
stop() { kill -INT "$(pgrep -P "$SERVE_PID" thinarc)"; wait "$SERVE_PID" || true; }
wait_sock() { for _ in $(seq 1 2000); do [[ -S $1 ]] && return; sleep 0.005; done; echo "no socket $1" >&2; exit 1; }
now() { date +%s.%N; }
secs() { echo "$2 - $1" | bc; }

# 1. A 1 TiB sparse volume, 30 points of 8 random 64 KiB changes each.
log "building a ${BIG_GIB} GiB sparse chain of $POINTS points"
"$T" -q -r big init --no-encryption
truncate -s "${BIG_GIB}G" big.img
for p in $(seq 1 "$POINTS"); do
  : > cb.txt
  for i in $(seq 1 8); do
    off=$(( (RANDOM * 32768 + RANDOM) % (BIG_GIB * 16384) * 65536 ))
    head -c 65536 /dev/urandom | dd of=big.img bs=64K seek=$((off / 65536)) conv=notrunc status=none
    echo "$off 65536" >> cb.txt
  done
  if ((p == 1)); then "$T" -q -r big backup big.img --volume big; else "$T" -q -r big backup big.img --volume big --changed-blocks cb.txt; fi
done
ttfb=()
for i in 1 2 3; do
  drop_caches
  t0=$(now)
  serve big big big
  wait_sock "$WORK/big.sock"
  qemu-io -r -f raw -c "read $off 4096" "nbd+unix:///?socket=$WORK/big.sock" > /dev/null
  t1=$(now)
  stop
  ttfb+=("$(secs "$t0" "$t1")")
done
log "time to first byte (serve start to a 4 KiB read answered): ${ttfb[*]} s"

# 2. nbdcopy of a ${COPY_GIB} GiB image against restore.
log "building a ${COPY_GIB} GiB image"
python3 - "$COPY_GIB" <<'PY'
import os, random, sys
r = random.Random(42)
text = b"".join(b"line %d of a log file, the quick brown fox jumps over the lazy dog\n" % i for i in range(20000))
with open("copy.img", "wb") as f:
    for i in range(int(sys.argv[1]) * 1024):
        k = r.random()
        if k < 0.3: f.seek(1 << 20, 1)
        elif k < 0.4: f.write(os.urandom(1 << 20))
        else:
            s = r.randrange(len(text) - (1 << 20)); f.write(text[s:s + (1 << 20)])
    f.truncate()
PY
"$T" -q -r copy init --no-encryption
"$T" -q -r copy backup copy.img --volume copy
drop_caches
/usr/bin/time -f '%e %M' -o restore.time "$T" -q -r copy restore copy copy-restored.img
read -r restore_s restore_rss < restore.time
rm -f copy-restored.img
serve copy copy copy
wait_sock "$WORK/copy.sock"
drop_caches
t0=$(now)
nbdcopy "nbd+unix:///?socket=$WORK/copy.sock" copy-nbd.img
t1=$(now)
copy_s=$(secs "$t0" "$t1")
cmp copy.img copy-nbd.img || { echo "nbdcopy differs from the image" >&2; exit 1; }
rm -f copy-nbd.img

# 3. Random 4 KiB reads over a working set, timed one by one by a raw NBD client.
log "random 4 KiB reads"
python3 - "$WORK/copy.sock" "$READS" "$SET_MIB" > reads.txt <<'PY'
import random, socket, struct, sys, time
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])
def take(n):
    b = b""
    while len(b) < n:
        c = s.recv(n - len(b)); assert c; b += c
    return b
take(18); s.sendall(struct.pack(">I", 3))
s.sendall(struct.pack(">QII", 0x49484156454F5054, 7, 6) + struct.pack(">IH", 0, 0))
while True:
    _, _, t, n = struct.unpack(">QIII", take(20)); take(n)
    if t == 1: break
reads, set_mib = int(sys.argv[2]), int(sys.argv[3])
r = random.Random(7)
offs = [r.randrange(set_mib * 256) * 4096 for _ in range(reads)]
for label in ("cold", "cached"):
    times = []
    for o in offs:
        t0 = time.perf_counter()
        s.sendall(struct.pack(">IHHQQI", 0x25609513, 0, 0, 1, o, 4096))
        magic, err, _ = struct.unpack(">IIQ", take(16)); assert err == 0; take(4096)
        times.append(time.perf_counter() - t0)
    times.sort()
    print(label, "%.3f" % (times[len(times) // 2] * 1000), "%.3f" % (times[int(len(times) * 0.99)] * 1000))
s.sendall(struct.pack(">IHHQQI", 0x25609513, 0, 2, 1, 0, 0))
PY
stop
serve_rss=$(cat copy.rss)
read -r _ cold_med cold_p99 < <(grep cold reads.txt)
read -r _ hot_med hot_p99 < <(grep cached reads.txt)

cat > results.md <<EOF2
| measure | value | target |
|---|---:|---|
| time to first byte, ${BIG_GIB} GiB sparse volume, chain of $POINTS points (3 runs) | ${ttfb[*]} s | < 1 s |
| restore of the ${COPY_GIB} GiB image | ${restore_s} s (peak RSS $((restore_rss / 1024)) MiB) | |
| nbdcopy of the same point through serve | ${copy_s} s ($(echo "scale=0; 100 * $restore_s / $copy_s" | bc) % of restore's throughput) | ≥ 70 % |
| random 4 KiB reads, ${SET_MIB} MiB working set, first pass (median / p99) | ${cold_med} / ${cold_p99} ms | |
| random 4 KiB reads, cached (median / p99) | ${hot_med} / ${hot_p99} ms | < 1 ms |
| serve peak RSS (cache $CACHE) | $((serve_rss / 1024)) MiB | ≤ cache + 64 MiB |
EOF2
cat results.md
rm -f big.img copy.img
