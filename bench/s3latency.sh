#!/usr/bin/env bash
# Full backup and restore of an image to moto (the test suite's S3 server) directly
# and through bench/delayproxy.py adding DELAY_MS (default 20) to every request, next
# to a local repository; each restore is compared with the image. See bench/README.md.
#
#   bench/s3latency.sh IMAGE                 # moto from target/s3-venv
#   DELAY_MS=20 BENCH_THINARC=target/release/thinarc bench/s3latency.sh IMAGE
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
IMG=$1
T=${BENCH_THINARC:-$ROOT/target/release/thinarc}
DELAY_MS=${DELAY_MS:-20}
VENV=${THINARC_TEST_VENV:-$ROOT/target/s3-venv}
WORK=$(mktemp -d "${BENCH_DIR:-/tmp}/s3latency.XXXXXX")
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
MOTO_PORT=$(free_port) PROXY_PORT=$(free_port)
"$VENV/bin/moto_server" -H 127.0.0.1 -p "$MOTO_PORT" > "$WORK/moto.log" 2>&1 &
MOTO=$!
python3 "$ROOT/bench/delayproxy.py" "$PROXY_PORT" 127.0.0.1 "$MOTO_PORT" "$DELAY_MS" 2> "$WORK/proxy.log" &
PROXY=$!
trap 'kill $MOTO $PROXY 2>/dev/null; wait 2>/dev/null; rm -rf "$WORK"' EXIT
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$MOTO_PORT/" >/dev/null && break; sleep 0.1; done
curl -sf -X PUT "http://127.0.0.1:$MOTO_PORT/bench" > /dev/null
s3() {  # endpoint port: the command prefix that runs thinarc against it
    S3=(env AWS_ENDPOINT_URL="http://127.0.0.1:$1" AWS_ALLOW_HTTP=true AWS_REGION=us-east-1
        AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=benchsecret "$T" -q)
}
row() {  # name, then the command
    local name=$1; shift
    /usr/bin/time -f '%e %U %S %M' -o "$WORK/time" "$@" > /dev/null
    read -r wall user sys kb < "$WORK/time"
    printf '| %s | %.2f | %.2f | %d |\n' "$name" "$wall" "$(echo "$user + $sys" | bc)" $((kb / 1024))
}
check() { cmp -s "$WORK/out.img" "$IMG" || { echo "restore differs from $IMG" >&2; exit 1; }; rm -f "$WORK/out.img"; }
echo "| step | wall s | CPU s | peak RSS MiB |"
echo "|---|---:|---:|---:|"
"$T" -q -r "$WORK/local" init > /dev/null
row "local: full backup" "$T" -q -r "$WORK/local" backup "$IMG" --volume v
row "local: restore" "$T" -q -r "$WORK/local" restore v "$WORK/out.img"; check
s3 "$MOTO_PORT"
"${S3[@]}" -r s3://bench/direct init > /dev/null
row "moto: full backup" "${S3[@]}" -r s3://bench/direct backup "$IMG" --volume v
row "moto: restore" "${S3[@]}" -r s3://bench/direct restore v "$WORK/out.img"; check
s3 "$PROXY_PORT"
"${S3[@]}" -r s3://bench/delayed init > /dev/null
row "moto + ${DELAY_MS} ms: full backup" "${S3[@]}" -r s3://bench/delayed backup "$IMG" --volume v
row "moto + ${DELAY_MS} ms: restore" "${S3[@]}" -r s3://bench/delayed restore v "$WORK/out.img"; check
kill -TERM $PROXY; wait $PROXY 2>/dev/null || true
echo; echo "$(cat "$WORK/proxy.log"); $(nproc) cores; load average: $(cut -d' ' -f1-3 /proc/loadavg)"
