# Sourced by the bench scripts: an S3 server on loopback, started for one bench.
#
#   s3_server KIND DIR [PREFIX...]
#
# KIND is moto (the test suite's server, Python, from target/s3-venv), s3s-fs (0.14.1,
# Rust, objects stored as files) or garage (2.5.0, Rust, a one-node cluster: metadata
# in LMDB, data in 1 MiB blocks, compression off); the Rust servers are built once
# with cargo install into BENCH_TOOLS (default bench/work/tools; s3s-fs a few minutes,
# garage about 12 on 2 cores). DIR holds the server's data and server.log; PREFIX
# (e.g. `taskset -c 1`) runs the server. On return the server answers on 127.0.0.1
# and has a bucket `bench`; set are S3_PID, S3_PORT, S3_KEY_ID and S3_SECRET (the
# credentials it accepts) and S3_INIT_FLAGS, what `thinarc init` needs there: garage
# 2.5.0 ignores `If-None-Match: *`, so init refuses it without --allow-unsafe-store
# (one writer at a time in a bench, so nothing is at risk).
S3_SERVER_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
S3_TOOLS=${BENCH_TOOLS:-$S3_SERVER_ROOT/bench/work/tools}

s3_free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

s3_wait_port() {  # PORT: until something answers HTTP there
    local _
    for _ in $(seq 300); do curl -s -o /dev/null "http://127.0.0.1:$1/" && return 0; sleep 0.1; done
    echo "no S3 server answers on port $1" >&2
    return 1
}

s3_install() {  # CRATE@VERSION [cargo install flags]: into S3_TOOLS once
    local crate=$1; shift
    echo "installing ${crate} into $S3_TOOLS (once; minutes)" >&2
    cargo install "$crate" --locked --root "$S3_TOOLS" "$@" >&2
}

s3_server() {
    local kind=$1 dir=$2; shift 2
    mkdir -p "$dir"
    S3_PORT=$(s3_free_port) S3_KEY_ID=bench S3_SECRET=benchsecret S3_INIT_FLAGS=""
    case $kind in
        moto)
            local venv=${THINARC_TEST_VENV:-$S3_SERVER_ROOT/target/s3-venv}
            if [[ ! -x $venv/bin/moto_server ]]; then
                python3 -m venv "$venv" && "$venv/bin/pip" install -q --disable-pip-version-check 'moto[server]>=5.2,<6' >&2
            fi
            "$@" "$venv/bin/moto_server" -H 127.0.0.1 -p "$S3_PORT" > "$dir/server.log" 2>&1 &
            S3_PID=$!
            s3_wait_port "$S3_PORT"
            curl -sf -X PUT "http://127.0.0.1:$S3_PORT/bench" > /dev/null ;;
        s3s-fs)
            [[ -x $S3_TOOLS/bin/s3s-fs ]] || s3_install s3s-fs@0.14.1 --features binary
            mkdir -p "$dir/data/bench"
            "$@" "$S3_TOOLS/bin/s3s-fs" --host 127.0.0.1 --port "$S3_PORT" --access-key "$S3_KEY_ID" \
                --secret-key "$S3_SECRET" "$dir/data" > "$dir/server.log" 2>&1 &
            S3_PID=$!
            s3_wait_port "$S3_PORT" ;;
        garage)
            [[ -x $S3_TOOLS/bin/garage ]] || s3_install garage@2.5.0 --no-default-features --features bundled-libs,lmdb
            local g=("$S3_TOOLS/bin/garage" -c "$dir/garage.toml") rpc admin id _
            rpc=$(s3_free_port) admin=$(s3_free_port)
            mkdir -p "$dir/meta" "$dir/data"
            cat > "$dir/garage.toml" <<CONF
metadata_dir = "$dir/meta"
data_dir = "$dir/data"
db_engine = "lmdb"
replication_factor = 1
compression_level = "none"
rpc_bind_addr = "127.0.0.1:$rpc"
rpc_public_addr = "127.0.0.1:$rpc"
rpc_secret = "$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')"
[s3_api]
s3_region = "us-east-1"
api_bind_addr = "127.0.0.1:$S3_PORT"
root_domain = ".s3.localhost"
[admin]
api_bind_addr = "127.0.0.1:$admin"
CONF
            "$@" "${g[@]}" server > "$dir/server.log" 2>&1 &
            S3_PID=$!
            for _ in $(seq 100); do "${g[@]}" status > /dev/null 2>&1 && break; sleep 0.2; done
            id=$("${g[@]}" node id -q | cut -d@ -f1)
            S3_KEY_ID=GK000000000000000000000001
            S3_SECRET=$(printf '%064d' 1)
            {
                "${g[@]}" layout assign -z dc1 -c 100G "$id"
                "${g[@]}" layout apply --version 1
                "${g[@]}" key import --yes -n bench "$S3_KEY_ID" "$S3_SECRET"
                "${g[@]}" bucket create bench
                "${g[@]}" bucket allow --read --write --owner bench --key bench
            } > "$dir/setup.log" 2>&1 || { tail -n 5 "$dir/setup.log" >&2; return 1; }
            S3_INIT_FLAGS=--allow-unsafe-store
            s3_wait_port "$S3_PORT" ;;
        *) echo "S3 server is moto, s3s-fs or garage, not $kind" >&2; return 2 ;;
    esac
}
