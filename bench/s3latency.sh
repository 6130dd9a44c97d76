#!/usr/bin/env bash
# Full backup and restore of an image (256 MiB to 1 GiB) to a local repository and to
# s3s-fs (a Rust S3 server, objects stored as files): directly, through
# examples/delayproxy.rs adding nothing (what the proxy costs, and the requests), and
# through it adding DELAY_MS (default 20) to every request; moto too with MOTO=1. Each
# step runs REPS times (median); each restore is compared with the image. The table
# gives thinarc's wall time, CPU (user + sys), peak RSS and the requests it made, and
# the CPU the S3 server and the proxies used meanwhile (they share the machine).
# With PIN=1, thinarc runs on core 0 for every step (local ones too) and the servers and
# proxies on core 1, so that the local and the S3 steps get the same CPU (on a 2-core
# machine the server otherwise takes its CPU from thinarc's).
#
#   BENCH_THINARC=target/release/thinarc bench/s3latency.sh IMAGE
#   DELAY_MS=20 REPS=3 MOTO=1 bench/s3latency.sh IMAGE
#   PIN=1 bench/s3latency.sh IMAGE
#
# s3s-fs is installed once like bench/run.sh does (cargo install into bench/work/tools,
# or give S3S_FS); the proxy is built with cargo build --release --example delayproxy.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
IMG=$1
T=${BENCH_THINARC:-$ROOT/target/release/thinarc}
DELAY_MS=${DELAY_MS:-20}
REPS=${REPS:-3}
MOTO=${MOTO:-0}
# Command prefixes: thinarc's, and the servers' and proxies'.
PIN_T=() PIN_S=()
[[ ${PIN:-0} = 1 ]] && PIN_T=(taskset -c 0) PIN_S=(taskset -c 1)
S3S_FS=${S3S_FS:-$ROOT/bench/work/tools/bin/s3s-fs}
PROXY_BIN=$ROOT/target/release/examples/delayproxy
VENV=${THINARC_TEST_VENV:-$ROOT/target/s3-venv}
WORK=$(mktemp -d "${BENCH_DIR:-/tmp}/s3latency.XXXXXX")
PIDS=()
trap 'exec 3>&- 4>&- 5>&- 6>&- 2>/dev/null; kill "${PIDS[@]}" 2>/dev/null; wait 2>/dev/null; rm -rf "$WORK"' EXIT
if [[ ! -x $S3S_FS ]]; then
    echo "installing s3s-fs 0.14.1 into $ROOT/bench/work/tools (a few minutes, once)" >&2
    cargo install s3s-fs@0.14.1 --features binary --locked --root "$ROOT/bench/work/tools" >&2
fi
[[ -x $PROXY_BIN ]] || (cd "$ROOT" && cargo build --release --locked --example delayproxy >&2)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 300); do curl -s -o /dev/null "http://127.0.0.1:$1/" && return 0; sleep 0.1; done; echo "no server on port $1" >&2; exit 1; }

S3S_PORT=$(free_port)
mkdir -p "$WORK/s3s/bench"
"${PIN_S[@]}" "$S3S_FS" --host 127.0.0.1 --port "$S3S_PORT" --access-key bench --secret-key benchsecret \
    "$WORK/s3s" > "$WORK/s3s.log" 2>&1 &
PIDS+=($!)
wait_port "$S3S_PORT"
# proxy FD TARGET_PORT DELAY -> PROXY_PORT: a delayproxy whose standard input is fd FD
# (a line asks it for the requests since the last one, in $WORK/proxy.FD).
proxy() {
    PROXY_PORT=$(free_port)
    eval "exec $1> >(exec ${PIN_S[*]} \"$PROXY_BIN\" $PROXY_PORT 127.0.0.1 $2 $3 2> \"$WORK/proxy.$1\")"
    PIDS+=($!)
    wait_port "$PROXY_PORT"
}
requests() {  # FD: requests through that proxy since the last call
    local before; before=$(wc -l < "$WORK/proxy.$1")
    echo >&"$1"
    for _ in $(seq 50); do (( $(wc -l < "$WORK/proxy.$1") > before )) && break; sleep 0.02; done
    tail -n 1 "$WORK/proxy.$1" | cut -d' ' -f2
}
proxy 3 "$S3S_PORT" 0; S3S_ZERO=$PROXY_PORT
proxy 4 "$S3S_PORT" "$DELAY_MS"; S3S_DELAYED=$PROXY_PORT
if [[ $MOTO = 1 ]]; then
    MOTO_PORT=$(free_port)
    "${PIN_S[@]}" "$VENV/bin/moto_server" -H 127.0.0.1 -p "$MOTO_PORT" > "$WORK/moto.log" 2>&1 &
    PIDS+=($!)
    wait_port "$MOTO_PORT"
    curl -sf -X PUT "http://127.0.0.1:$MOTO_PORT/bench" > /dev/null
    proxy 5 "$MOTO_PORT" "$DELAY_MS"; MOTO_DELAYED=$PROXY_PORT
fi

s3() {  # port: the command prefix that runs thinarc against that endpoint
    S3=("${PIN_T[@]}" env AWS_ENDPOINT_URL="http://127.0.0.1:$1" AWS_ALLOW_HTTP=true AWS_REGION=us-east-1
        AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=benchsecret "$T" -q)
}
# CPU ticks the servers and proxies have used so far.
servers_cpu() { local p t=0; for p in "${PIDS[@]}"; do t=$(( t + $(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0) )); done; echo $t; }
fail() { tail -n 5 "$WORK/thinarc.log" >&2; exit 1; }
# step NAME FD REPO KIND: REPS full backups (each into a fresh volume) or restores of
# REPO with "${S3[@]}" (or the local command), the median row; FD counts requests.
# Warnings go to a log (s3s-fs does not list incomplete multipart uploads: HTTP 501).
step() {
    local name=$1 fd=$2 repo=$3 kind=$4 reqs=- i
    for i in $(seq "$REPS"); do
        local cpu0; cpu0=$(servers_cpu)
        if [[ $kind = backup ]]; then
            /usr/bin/time -f '%e %U %S %M' -o "$WORK/time" "${S3[@]}" -r "$repo" backup "$IMG" --volume "v$i" > /dev/null 2>> "$WORK/thinarc.log" || fail
        else
            rm -f "$WORK/out.img"
            /usr/bin/time -f '%e %U %S %M' -o "$WORK/time" "${S3[@]}" -r "$repo" restore "v$i" "$WORK/out.img" > /dev/null 2>> "$WORK/thinarc.log" || fail
            cmp -s "$WORK/out.img" "$IMG" || { echo "$name: restore differs from $IMG" >&2; exit 1; }
        fi
        [[ $fd = - ]] || reqs=$(requests "$fd")
        read -r wall user sys kb < "$WORK/time"
        echo "$wall $user $sys $kb $reqs $(( $(servers_cpu) - cpu0 ))"
    done | sort -n | awk -v name="$name" -v n="$REPS" -v mib="$(( $(stat -c %s "$IMG") >> 20 ))" \
        -v hz="$(getconf CLK_TCK)" '
        { w[NR]=$1; c[NR]=$2+$3; m[NR]=$4; r[NR]=$5; s[NR]=$6/hz }
        END { i=int((n+1)/2); printf "| %s | %.2f | %.0f | %.2f | %.2f | %d | %s | %.2f |\n",
              name, w[i], mib/w[i], c[i], c[i]*1024/mib, m[i]/1024, r[i], s[i] }'
    rm -f "$WORK/out.img"
}
both() {  # NAME FD REPO
    "${S3[@]}" -r "$3" init --no-encryption > /dev/null
    [[ $2 = - ]] || requests "$2" > /dev/null
    step "$1: full backup" "$2" "$3" backup
    step "$1: restore" "$2" "$3" restore
    if [[ $3 = s3://bench/* ]]; then rm -rf "$WORK/s3s/bench/${3#s3://bench/}"; else rm -rf "$3"; fi
}
echo "$(( $(stat -c %s "$IMG") >> 20 )) MiB image, medians of $REPS${PIN_T[*]:+; thinarc on core 0, servers and proxies on core 1}"
echo
echo "| step | wall s | MiB/s | CPU s | CPU s per GiB | peak RSS MiB | requests | server + proxy CPU s |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|"
S3=("${PIN_T[@]}" "$T" -q)
both "local" - "$WORK/local"
s3 "$S3S_PORT"
both "s3s-fs" - s3://bench/direct
s3 "$S3S_ZERO"
both "s3s-fs + proxy, 0 ms" 3 s3://bench/zero
s3 "$S3S_DELAYED"
both "s3s-fs + ${DELAY_MS} ms" 4 s3://bench/delayed
if [[ $MOTO = 1 ]]; then
    s3 "$MOTO_DELAYED"
    both "moto + ${DELAY_MS} ms" 5 s3://bench/delayed
fi
echo
echo "$(nproc) cores; load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
