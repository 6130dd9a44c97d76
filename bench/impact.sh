#!/usr/bin/env bash
# thinarc host-impact benchmark: what a backup costs a busy host, with and without
# --low-priority, and how exactly --read-limit / --upload-limit hold.
#
#   bench/impact.sh                      # 1 GiB image, 12 s competitor windows
#   BENCH_IMPACT_MIB=2048 bench/impact.sh
#
# The "host's work" is two CPU-bound processes (one per core) counting loop
# iterations. Each scenario runs them for BENCH_IMPACT_SECONDS while thinarc backs the
# image up again and again (full backups into a fresh repository each time), and
# reports the work done per second next to the baseline without thinarc, and the
# backup throughput thinarc still achieved.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
MIB=${BENCH_IMPACT_MIB:-1024}
SECONDS_WINDOW=${BENCH_IMPACT_SECONDS:-12}
WORK=${BENCH_DIR:-$ROOT/bench/work}/impact
BIN=${BENCH_THINARC:-$ROOT/target/release/thinarc}

log() { printf '[impact %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

if [[ -z "${BENCH_THINARC:-}" ]]; then
    log "building release binary"
    (cd "$ROOT" && cargo build --release --locked -q)
fi
rm -rf "$WORK" && mkdir -p "$WORK"
export THINARC_STATE_DIR=$WORK/state

log "making a ${MIB} MiB image (half random, half compressible text)"
python3 - "$WORK/img" "$MIB" <<'PY'
import os, sys, base64
path, mib = sys.argv[1], int(sys.argv[2])
with open(path, "wb") as f:
    for i in range(mib):
        chunk = os.urandom(1 << 20) if i % 2 == 0 else base64.b64encode(os.urandom(3 << 18))[: 1 << 20]
        f.write(chunk)
PY

# Two CPU-bound workers; prints total iterations per second.
competitor() {
    local secs=$1
    python3 - "$secs" <<'PY'
import multiprocessing as mp, sys, time
def work(secs, q):
    end = time.monotonic() + secs; n = 0
    while time.monotonic() < end:
        for _ in range(10000): n += 1
    q.put(n)
if __name__ == "__main__":
    secs = float(sys.argv[1]); q = mp.Queue()
    ps = [mp.Process(target=work, args=(secs, q)) for _ in range(2)]
    [p.start() for p in ps]; total = sum(q.get() for _ in ps); [p.join() for p in ps]
    print(f"{total / secs:.0f}")
PY
}

# Backs the image up in a loop until the file $WORK/stop exists; prints MiB/s.
backup_loop() {
    local bytes=0 start end n=0
    start=$(date +%s.%N)
    while [[ ! -e $WORK/stop ]]; do
        n=$((n + 1))
        rm -rf "$WORK/repo" && "$BIN" -r "$WORK/repo" init --no-encryption -q 2>/dev/null
        "$BIN" -r "$WORK/repo" backup "$WORK/img" -q "$@" >/dev/null 2>&1 || true
        bytes=$((bytes + MIB))
    done
    end=$(date +%s.%N)
    awk -v b="$bytes" -v s="$start" -v e="$end" 'BEGIN{printf "%.0f", b/(e-s)}'
}

scenario() {  # scenario NAME [thinarc options...]
    local name=$1; shift
    rm -f "$WORK/stop"
    backup_loop "$@" >"$WORK/rate" &
    local loop=$!
    sleep 1
    local work
    work=$(competitor "$SECONDS_WINDOW")
    touch "$WORK/stop"; wait "$loop"
    printf '| %s | %s | %.0f %% | %s MiB/s |\n' "$name" "$work" \
        "$(awk -v w="$work" -v b="$BASE" 'BEGIN{print 100*w/b}')" "$(cat "$WORK/rate")"
}

log "baseline: the host's work alone"
BASE=$(competitor "$SECONDS_WINDOW")
echo "Host impact, $(nproc) cores, ${MIB} MiB image, ${SECONDS_WINDOW} s windows ($0)"
echo
echo "| scenario | host work (iterations/s) | of baseline | thinarc full backup |"
echo "|---|---:|---:|---:|"
printf '| host work alone | %s | 100 %% | - |\n' "$BASE"
log "thinarc at normal priority"
scenario "with thinarc backup"
log "thinarc --low-priority"
scenario "with thinarc backup --low-priority" --low-priority
log "thinarc --low-priority --threads 1"
scenario "with thinarc --low-priority --threads 1" --low-priority --threads 1

echo
echo "| limit | measured | ratio |"
echo "|---|---:|---:|"
for limit in 50M 200M; do
    rm -rf "$WORK/repo" && "$BIN" -r "$WORK/repo" init --no-encryption -q
    out=$("$BIN" -r "$WORK/repo" backup "$WORK/img" --read-limit "$limit" --json 2>/dev/null)
    rate=$(python3 -c 'import json,sys; r=json.load(sys.stdin); print(r["bytes_read"]/r["seconds"]/1048576)' <<<"$out")
    printf '| --read-limit %s | %.1f MiB/s | %.3f |\n' "$limit" "$rate" "$(awk -v r="$rate" -v l="${limit%M}" 'BEGIN{print r/l}')"
done
for limit in 50M; do
    rm -rf "$WORK/repo" && "$BIN" -r "$WORK/repo" init --no-encryption -q
    out=$("$BIN" -r "$WORK/repo" backup "$WORK/img" --upload-limit "$limit" --json 2>/dev/null)
    rate=$(python3 -c 'import json,sys; r=json.load(sys.stdin); print(r["stored_bytes"]/r["seconds"]/1048576)' <<<"$out")
    printf '| --upload-limit %s | %.1f MiB/s | %.3f |\n' "$limit" "$rate" "$(awk -v r="$rate" -v l="${limit%M}" 'BEGIN{print r/l}')"
done
rm -rf "$WORK"
