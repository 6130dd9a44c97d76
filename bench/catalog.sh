#!/usr/bin/env bash
# The catalog at scale (issue 14 item 4): a repository of BENCH_VOLUMES volumes x
# BENCH_POINTS points (256 KiB images, one block changed per point) on an S3 server
# (SERVER: moto, the default, s3s-fs or garage; bench/s3server.sh starts it), and
# the requests and wall time of `list`, `status`, `run --dry-run`, a run's start, a
# backup of one volume and a structural `verify`, counted by kind through
# examples/delayproxy.rs at 0 and DELAY_MS (default 20) ms per request. See
# bench/README.md.
#
#   bench/catalog.sh                                  # 1000 x 30, about 10 minutes
#   BENCH_VOLUMES=100 BENCH_KEEP=1 bench/catalog.sh   # smaller; keep the local tree
#   BENCH_DELAYS=0 BENCH_VERIFY=0 bench/catalog.sh    # one delay, no verify
#   SERVER=garage bench/catalog.sh                    # on garage (installed once)
#   BENCH_ONLY="run start" BENCH_BEFORE=/old/thinarc bench/catalog.sh
#                                     # these rows, each by the old binary then this one
#
# The "run's start" row is `thinarc -v run` of a config whose first entry is a pattern
# (`lvm:vm-0000/*`, a fake `lvs` showing no LV: discovery lists the repository's
# volumes for its `gone` check) and whose second backs up one new volume; `start:`
# is what the run logged as that backup began (seconds, and the LIST and GET
# requests of its repository handle so far; its config read is not counted there).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VOLUMES=${BENCH_VOLUMES:-1000}
POINTS=${BENCH_POINTS:-30}
DELAY_MS=${DELAY_MS:-20}
VENV=${THINARC_TEST_VENV:-$ROOT/target/s3-venv}
SERVER=${SERVER:-moto}
WORK=${BENCH_DIR:-$ROOT/bench/work}/catalog
T=${BENCH_THINARC:-$ROOT/target/release/thinarc}
GEN=${BENCH_GEN:-$ROOT/target/release/examples/catalog_bench}
PROXY_BIN=$ROOT/target/release/examples/delayproxy
if [ -z "${BENCH_THINARC:-}" ] || [ ! -x "$GEN" ] || [ ! -x "$PROXY_BIN" ]; then
    (cd "$ROOT" && cargo build --release --locked --bin thinarc --example catalog_bench --example delayproxy)
fi
mkdir -p "$WORK"
TREE=$WORK/repo-$VOLUMES-$POINTS
if [ ! -e "$TREE/.complete" ]; then
    rm -rf "$TREE"
    echo "building $VOLUMES volumes x $POINTS points in $TREE" >&2
    "$GEN" "$TREE" "$VOLUMES" "$POINTS"
    touch "$TREE/.complete"
fi
RUN=$(mktemp -d "$WORK/run.XXXXXX")
# shellcheck source=bench/s3server.sh
source "$ROOT/bench/s3server.sh"
s3_server "$SERVER" "$RUN/server"
SERVER_PORT=$S3_PORT
SERVER_PID=$S3_PID
PROXY=
cleanup() {
    kill $SERVER_PID $PROXY 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$RUN"
    [ "${BENCH_KEEP:-0}" = 1 ] || rm -rf "$TREE"
}
trap cleanup EXIT
echo "uploading $TREE to $SERVER" >&2
started=$(date +%s)
"$VENV/bin/python" - "$TREE" "http://127.0.0.1:$SERVER_PORT" "$S3_KEY_ID" "$S3_SECRET" <<'EOF'
import os, sys, concurrent.futures, boto3, botocore.config
tree, endpoint, key_id, secret = sys.argv[1:5]
s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                  aws_access_key_id=key_id, aws_secret_access_key=secret,
                  config=botocore.config.Config(max_pool_connections=16))
files = [os.path.join(d, f) for d, _, fs in os.walk(tree) for f in fs if f != ".complete"]
import hashlib, json
from urllib.parse import unquote
def put(path, body=None):
    # Keys as object_store writes them: the local store's file names are the keys.
    key = os.path.relpath(path, tree)
    if body is None:
        with open(path, "rb") as f:
            body = f.read()
    s3.put_object(Bucket="bench", Key="repo/" + key, Body=body)
listed = {}
def summary(path):
    # A summary records each object as the writer's listing showed it (FORMAT.md
    # 15.5): the local tree's ETags become what this server lists, its ETag or,
    # where it lists none (s3s-fs), its modification time.
    with open(path, "rb") as f:
        s = json.load(f)
    folder = os.path.dirname(os.path.relpath(path, tree))
    def version(key):
        etag, modified = listed[unquote(key)]
        return {"etag": etag} if etag else {"modified": modified}
    points = []
    for p in s["points"]:
        marker = version(f"{folder}/commits/{p['marker']}")
        archive = version(f"{folder}/archives/{p['commit']['object']}")
        # Members in the order the reader serialises them (the checksum's input).
        q = {"marker": p["marker"], "marker_size": p["marker_size"]}
        q.update({f"marker_{k}": v for k, v in marker.items()})
        q.update({"commit": p["commit"], "archive_size": p["archive_size"]})
        q.update({f"archive_{k}": v for k, v in archive.items()})
        q.update({"head": p["head"], "tail": p["tail"]})
        points.append(q)
    s["points"] = points
    compact = lambda v: json.dumps(v, separators=(",", ":")).encode()
    s["sha256"] = hashlib.sha256(compact(s["points"])).hexdigest()
    put(path, compact(s))
summaries = [f for f in files if os.path.basename(f) == "summary"]
with concurrent.futures.ThreadPoolExecutor(16) as pool:
    list(pool.map(put, [f for f in files if os.path.basename(f) != "summary"]))
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket="bench", Prefix="repo/"):
        for o in page.get("Contents", []):
            # boto3 asks for URL-encoded keys and decodes them (a server that ignores
            # that has `%7E` decoded too): both sides compared decoded.
            listed[unquote(o["Key"][len("repo/"):])] = (o.get("ETag"), o["LastModified"].isoformat())
    list(pool.map(summary, summaries))
without = sum(1 for etag, _ in listed.values() if not etag)
print(f"{len(files)} objects, {len(summaries)} summaries; {without} listed without an ETag", file=sys.stderr)
EOF
echo "uploaded in $(( $(date +%s) - started )) s" >&2
LOC=s3://bench/repo
S3=(env AWS_ENDPOINT_URL= AWS_ALLOW_HTTP=true AWS_REGION=us-east-1
    AWS_ACCESS_KEY_ID="$S3_KEY_ID" AWS_SECRET_ACCESS_KEY="$S3_SECRET")
IMG=$RUN/disk.img
head -c $((256 << 10)) /dev/urandom > "$IMG"
{
    echo "state_dir = \"$RUN/state\""
    echo "[repositories.bench]"
    echo "location = \"$LOC\""
    for i in $(seq 0 $((VOLUMES - 1))); do
        printf '[[volumes]]\nname = "vm-%04d/disk"\nsource = "%s"\nrepository = "bench"\n' "$i" "$IMG"
    done
} > "$RUN/thinarc.toml"
# A run's start: a fake `lvs` (no LV in any VG) and `dmsetup` on PATH.
mkdir -p "$RUN/bin"
printf '#!/bin/sh\necho %s\n' "'{\"report\":[{\"lv\":[]}]}'" > "$RUN/bin/lvs"
printf '#!/bin/sh\nexit 1\n' > "$RUN/bin/dmsetup"
chmod +x "$RUN/bin/lvs" "$RUN/bin/dmsetup"
start_config() {  # the config of the run's start row, backing up volume $1
    printf 'state_dir = "%s"\n[repositories.bench]\nlocation = "%s"\n' "$RUN/state" "$LOC"
    printf '[[volumes]]\nsource = "lvm:vm-0000/*"\nrepository = "bench"\n'
    printf '[[volumes]]\nname = "%s"\nsource = "%s"\nrepository = "bench"\n' "$1" "$IMG"
}
row() {  # delay, name, then the command: by BENCH_BEFORE's binary, then this one's
    local delay=$1 name=$2; shift 2
    case " ${BENCH_ONLY:-list status run start backup verify} " in
        *" ${name%% *} "*) ;;
        *) return 0 ;;
    esac
    if [ -n "${BENCH_BEFORE:-}" ]; then
        BIN=$BENCH_BEFORE LABEL=" (before)" row1 "$delay" "$name" "$@"
        BIN=$T LABEL=" (after)" row1 "$delay" "$name" "$@"
    else
        BIN=$T LABEL= row1 "$delay" "$name" "$@"
    fi
}
row1() {
    local delay=$1 name=$2 port; shift 2
    local v=-q
    [ "${name%% *}" != start ] || v=-v
    [ "${name%% *}" != start ] || start_config "start-$delay-${LABEL//[^a-z]/}/disk" > "$RUN/start.toml"
    port=$(s3_free_port)
    # The proxy reports its requests for a line on fd 7 and stops when fd 7 closes.
    exec 7> >(exec "$PROXY_BIN" "$port" 127.0.0.1 "$SERVER_PORT" "$delay" 2> "$RUN/proxy.log")
    PROXY=$!
    for _ in $(seq 50); do curl -s "http://127.0.0.1:$port/" >/dev/null && break; sleep 0.1; done
    local rc=0
    /usr/bin/time -f '%e %M %U %S' -o "$RUN/time" "${S3[@]}" AWS_ENDPOINT_URL="http://127.0.0.1:$port" \
        PATH="$RUN/bin:$PATH" "$BIN" $v --state-dir "$RUN/state" "$@" > "$RUN/out" 2> "$RUN/err" || rc=$?
    echo >&7; exec 7>&-; wait $PROXY 2>/dev/null || true
    PROXY=
    read -r wall kb user sys < <(tail -1 "$RUN/time")
    local counts; counts=$(sed -n 's/^requests: [0-9]* //p' "$RUN/proxy.log")
    # The curl that waited for the proxy is a GET of the bucket list: not the command's.
    c() { local n; n=$(tr ' ' '\n' <<< "$counts" | sed -n "s/^$1=//p"); echo "${n:-0}"; }
    local start
    start=$(sed -n 's/.*first [a-z]* starts.*seconds=\([0-9.]*\).*list=\([0-9]*\).*get=\([0-9]*\).*/start: \1 s, LIST \2, GET \3/p' "$RUN/err" | head -1)
    printf '| %s%s | %s ms | %s | %s | %s | %s | %s | %.2f | %.2f | %d | %s%s |\n' "$name" "$LABEL" "$delay" \
        "$(c LIST)" "$(( $(c GET) - 1 ))" "$(c HEAD)" "$(c PUT)" "$(c DELETE)" "$wall" \
        "$(echo "$user + $sys" | bc)" $((kb / 1024)) "$rc" "${start:+; $start}"
}
echo
echo "$VOLUMES volumes x $POINTS points on $SERVER; requests counted by examples/delayproxy.rs"
echo
echo "| command | delay | LIST | GET | HEAD | PUT | DELETE | wall s | CPU s | peak RSS MiB | exit |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
for delay in ${BENCH_DELAYS:-0 $DELAY_MS}; do
    row "$delay" "list" -r "$LOC" list
    row "$delay" "status" -r "$LOC" status
    row "$delay" "run --dry-run ($VOLUMES volumes)" run --config "$RUN/thinarc.toml" --dry-run
    row "$delay" "start of a run (a pattern's discovery, then one backup)" run --config "$RUN/start.toml"
    row "$delay" "backup of one volume" -r "$LOC" backup "$IMG" --volume "vm-000$((delay > 0))/disk"
    [ "${BENCH_VERIFY:-1}" = 0 ] || row "$delay" "verify (structural)" -r "$LOC" verify
done
echo
echo "$(nproc) cores; load average: $(cut -d' ' -f1-3 /proc/loadavg)"
