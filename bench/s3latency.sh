#!/usr/bin/env bash
# Full backup and restore of an image (256 MiB to 1 GiB) to a local repository and to
# an S3 server (SERVER: s3s-fs, the default, or garage; bench/s3server.sh starts it):
# directly, through examples/delayproxy.rs adding nothing (what the proxy costs, and
# the requests), and through it adding DELAY_MS (default 20) to every request; moto
# too with MOTO=1. Each step runs REPS times (median); each restore is compared with
# the image. The table gives thinarc's wall time, CPU (user + sys), peak RSS and the
# requests it made, and the CPU the S3 server and the proxies used meanwhile (they
# share the machine). With PIN=1, thinarc runs on core 0 for every step (local ones
# too) and the servers and proxies on core 1, so that the local and the S3 steps get
# the same CPU (on a 2-core machine the server otherwise takes its CPU from thinarc's).
#
#   BENCH_THINARC=target/release/thinarc bench/s3latency.sh IMAGE
#   DELAY_MS=20 REPS=3 MOTO=1 bench/s3latency.sh IMAGE
#   PIN=1 SERVER=garage bench/s3latency.sh IMAGE
#
# The proxy is built with cargo build --release --example delayproxy.
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
SERVER=${SERVER:-s3s-fs}
PROXY_BIN=$ROOT/target/release/examples/delayproxy
WORK=$(mktemp -d "${BENCH_DIR:-/tmp}/s3latency.XXXXXX")
PIDS=()
trap 'exec 3>&- 4>&- 5>&- 6>&- 2>/dev/null; kill "${PIDS[@]}" 2>/dev/null; wait 2>/dev/null; rm -rf "$WORK"' EXIT
[[ -x $PROXY_BIN ]] || (cd "$ROOT" && cargo build --release --locked --example delayproxy >&2)
# shellcheck source=bench/s3server.sh
source "$ROOT/bench/s3server.sh"
s3_server "$SERVER" "$WORK/server" "${PIN_S[@]}"
PIDS+=("$S3_PID")
SERVER_PORT=$S3_PORT
# proxy FD TARGET_PORT DELAY -> PROXY_PORT: a delayproxy whose standard input is fd FD
# (a line asks it for the requests since the last one, in $WORK/proxy.FD).
proxy() {
    PROXY_PORT=$(s3_free_port)
    eval "exec $1> >(exec ${PIN_S[*]} \"$PROXY_BIN\" $PROXY_PORT 127.0.0.1 $2 $3 2> \"$WORK/proxy.$1\")"
    PIDS+=($!)
    s3_wait_port "$PROXY_PORT"
}
requests() {  # FD: requests through that proxy since the last call
    local before; before=$(wc -l < "$WORK/proxy.$1")
    echo >&"$1"
    for _ in $(seq 50); do (( $(wc -l < "$WORK/proxy.$1") > before )) && break; sleep 0.02; done
    tail -n 1 "$WORK/proxy.$1" | cut -d' ' -f2
}
proxy 3 "$SERVER_PORT" 0; ZERO=$PROXY_PORT
proxy 4 "$SERVER_PORT" "$DELAY_MS"; DELAYED=$PROXY_PORT
KEY_ID=$S3_KEY_ID SECRET=$S3_SECRET INIT_FLAGS=$S3_INIT_FLAGS
if [[ $MOTO = 1 ]]; then
    s3_server moto "$WORK/moto" "${PIN_S[@]}"  # moto takes any credentials
    PIDS+=("$S3_PID")
    proxy 5 "$S3_PORT" "$DELAY_MS"; MOTO_DELAYED=$PROXY_PORT
fi

s3() {  # port: the command prefix that runs thinarc against that endpoint
    S3=("${PIN_T[@]}" env AWS_ENDPOINT_URL="http://127.0.0.1:$1" AWS_ALLOW_HTTP=true AWS_REGION=us-east-1
        AWS_ACCESS_KEY_ID="$KEY_ID" AWS_SECRET_ACCESS_KEY="$SECRET" "$T" -q)
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
    local flags=()
    [[ $3 != s3://* ]] || flags=($INIT_FLAGS)
    "${S3[@]}" -r "$3" init --no-encryption "${flags[@]}" > /dev/null
    [[ $2 = - ]] || requests "$2" > /dev/null
    step "$1: full backup" "$2" "$3" backup
    step "$1: restore" "$2" "$3" restore
    # The S3 server's objects stay until the end (s3s-fs's are files: freed now).
    if [[ $3 = s3://bench/* ]]; then rm -rf "$WORK/server/data/bench/${3#s3://bench/}"; else rm -rf "$3"; fi
}
echo "$(( $(stat -c %s "$IMG") >> 20 )) MiB image, medians of $REPS${PIN_T[*]:+; thinarc on core 0, servers and proxies on core 1}"
echo
echo "| step | wall s | MiB/s | CPU s | CPU s per GiB | peak RSS MiB | requests | server + proxy CPU s |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|"
S3=("${PIN_T[@]}" "$T" -q)
both "local" - "$WORK/local"
s3 "$SERVER_PORT"
both "$SERVER" - s3://bench/direct
s3 "$ZERO"
both "$SERVER + proxy, 0 ms" 3 s3://bench/zero
s3 "$DELAYED"
both "$SERVER + ${DELAY_MS} ms" 4 s3://bench/delayed
if [[ $MOTO = 1 ]]; then
    s3 "$MOTO_DELAYED"
    INIT_FLAGS=""
    both "moto + ${DELAY_MS} ms" 5 s3://bench/delayed
fi
echo
echo "$(nproc) cores; load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
