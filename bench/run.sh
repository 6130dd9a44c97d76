#!/usr/bin/env bash
# thinarc benchmark: full / delta backups and restores of a realistic ext4 image,
# compared with zstd as a baseline. See bench/README.md.
#
#   bench/run.sh                         # 4 GiB image, default settings
#   BENCH_SIZE_GIB=8 bench/run.sh        # bigger image
#   BENCH_BLOCK_SIZES=1 bench/run.sh     # also compare --block-size 16K/64K/256K/1M
#
# Environment:
#   BENCH_SIZE_GIB     size of the test image in GiB (default 4)
#   BENCH_DIR          work directory (default bench/work)
#   BENCH_BLOCK_SIZES  1 = run the block-size comparison (default 0)
#   BENCH_BLOCK_SIZE_LIST  block sizes for that comparison (default "16K 64K 256K 1M")
#   BENCH_BIG          1 = run the 64 GiB sparse-image flatness test (default 1)
#   BENCH_BIG_GIB      size of the sparse image (default 64)
#   BENCH_VERIFY_ALL   1 = also restore every earlier point and check it (default 1)
#   BENCH_KEEP         1 = keep the big temporaries (images, repos) at the end (default 0)
#   BENCH_SEED         seed for the random block positions (default 42)
#   BENCH_FILL_PCT     how full the filesystem gets, in % of the image (default 60)
#   BENCH_RANDOM_PCT   of which incompressible /dev/urandom data, in % of the image (default 5)
#   BENCH_THINARC      use this binary instead of building target/release/thinarc
#   BENCH_S3           1 = backup and restore over HTTP to local S3 servers (default 1)
#   BENCH_S3_SERVERS   which: "s3s-fs moto" (default), garage too (bench/s3server.sh;
#                      the Rust servers built once with cargo install into
#                      $BENCH_DIR/tools, moto installed into target/s3-venv)
#   BENCH_MOTO_MIB     image size for moto, which re-reads a whole object for every
#                      ranged GET (default 512)
set -euo pipefail

ORIG_CMDLINE="$0${*:+ $*}"
ENV_LINE=""
for v in BENCH_SIZE_GIB BENCH_DIR BENCH_BLOCK_SIZES BENCH_BLOCK_SIZE_LIST BENCH_BIG BENCH_BIG_GIB \
         BENCH_VERIFY_ALL BENCH_KEEP BENCH_SEED BENCH_FILL_PCT BENCH_RANDOM_PCT \
         BENCH_S3 BENCH_S3_SERVERS BENCH_MOTO_MIB; do
    if [[ -n "${!v+x}" ]]; then ENV_LINE+="$v=${!v} "; fi
done

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SIZE_GIB=${BENCH_SIZE_GIB:-4}
WORK=${BENCH_DIR:-$ROOT/bench/work}
BLOCK_SIZES=${BENCH_BLOCK_SIZES:-0}
BLOCK_SIZE_LIST=${BENCH_BLOCK_SIZE_LIST:-16K 64K 256K 1M}
BIG=${BENCH_BIG:-1}
BIG_GIB=${BENCH_BIG_GIB:-64}
VERIFY_ALL=${BENCH_VERIFY_ALL:-1}
KEEP=${BENCH_KEEP:-0}
SEED=${BENCH_SEED:-42}
FILL_PCT=${BENCH_FILL_PCT:-60}
RANDOM_PCT=${BENCH_RANDOM_PCT:-5}
S3=${BENCH_S3:-1}
S3_SERVERS=${BENCH_S3_SERVERS:-s3s-fs moto}
MOTO_MIB=${BENCH_MOTO_MIB:-512}

BLK=65536                                   # granularity of the modifications (64 KiB)
IMG_BYTES=$((SIZE_GIB * 1024 * 1024 * 1024))
NBLK=$((IMG_BYTES / BLK))

log()  { printf '[bench %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die()  { printf '[bench] FAILED: %s\n' "$*" >&2; exit 1; }
WORK_READY=0
cleanup_big() {  # the large temporaries: images, compressed copy, repositories
    rm -rf "$WORK"/*.img "$WORK"/*.zst "$WORK"/repo "$WORK"/repo-* "$WORK"/stage
}
on_exit() {
    local rc=$?
    if ((rc != 0)); then
        echo "[bench] aborted (exit $rc)" >&2
        if [[ $WORK_READY == 1 && ${BENCH_KEEP:-0} != 1 ]]; then
            cleanup_big
            echo "[bench] removed the large temporaries (BENCH_KEEP=1 keeps them)" >&2
        fi
    fi
}
trap on_exit EXIT
trap 'echo "[bench] error at line $LINENO: $BASH_COMMAND" >&2' ERR

# ---------------------------------------------------------------- prerequisites
need_pkgs=()
command -v mke2fs   >/dev/null 2>&1 || need_pkgs+=(e2fsprogs)
command -v zstd     >/dev/null 2>&1 || need_pkgs+=(zstd)
[[ -x /usr/bin/time ]]              || need_pkgs+=(time)
command -v cmp      >/dev/null 2>&1 || need_pkgs+=(diffutils)
if ((${#need_pkgs[@]})); then
    log "installing ${need_pkgs[*]}"
    export DEBIAN_FRONTEND=noninteractive
    SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO=sudo
    $SUDO apt-get update
    $SUDO apt-get install -y --no-install-recommends "${need_pkgs[@]}"
fi
export PATH="$PATH:/usr/sbin:/sbin"

if [[ -n ${BENCH_THINARC:-} ]]; then       # testing the bench itself with another binary
    THINARC=$BENCH_THINARC
else
    log "building the release binary"
    (cd "$ROOT" && cargo build --release --locked)
    THINARC=$ROOT/target/release/thinarc
fi
[[ -x $THINARC ]] || die "no binary at $THINARC"

mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)
WORK_READY=1
LOGS=$WORK/logs
rm -rf "$LOGS"; mkdir -p "$LOGS"
RESULTS_MD=$WORK/results.md
ROWS=$WORK/rows.tsv          # op \t seconds \t bytes \t rss_kib \t baseline_op \t cmd \t note
: > "$ROWS"

free_gib() { df -Pk "$WORK" | awk 'NR==2{printf "%d", $4/1048576}'; }
log "work dir $WORK ($(free_gib) GiB free), image ${SIZE_GIB} GiB"
if (( $(free_gib) < SIZE_GIB * 4 + 2 )); then
    die "need about $((SIZE_GIB * 4 + 2)) GiB free in $WORK"
fi

# ---------------------------------------------------------------- page cache
CACHE_MODE=unknown
drop_caches() {
    # Try the global drop (needs privileges); otherwise evict the given files one
    # by one with posix_fadvise(DONTNEED) through dd iflag=nocache (clean pages only).
    sync
    if { echo 3 > /proc/sys/vm/drop_caches; } 2>/dev/null; then
        CACHE_MODE="dropped (echo 3 > /proc/sys/vm/drop_caches before each timed step)"
        return 0
    fi
    CACHE_MODE="not dropped globally (no privilege); the files involved were evicted with dd iflag=nocache (posix_fadvise DONTNEED)"
    local p f
    for p in "$@"; do
        [[ -e $p ]] || continue
        while IFS= read -r -d '' f; do
            dd if="$f" iflag=nocache count=0 status=none 2>/dev/null || true
        done < <(find "$p" -type f -print0)
    done
}

# ---------------------------------------------------------------- measuring
# measure OP BYTES BASELINE_OP NOTE -- command...
# Runs the command under /usr/bin/time, records seconds and peak RSS. stdout of
# the command goes to $LOGS/OP.out, stderr to $LOGS/OP.err.
LAST_OUT=""
GUARD_FILE=""; GUARD_MAX=0
measure() {
    local op=$1 bytes=$2 base=$3 note=$4; shift 5
    local slug=${op//[^A-Za-z0-9._-]/_}
    local out=$LOGS/$slug.out err=$LOGS/$slug.err tf=$LOGS/$slug.time
    log "run: $op"
    local rc=0 tp kids
    /usr/bin/time -f '%e %M' -o "$tf" "$@" > "$out" 2> "$err" &
    tp=$!
    if [[ -n $GUARD_FILE ]]; then
        # stop the command if GUARD_FILE allocates more than GUARD_MAX bytes on disk
        while kill -0 "$tp" 2>/dev/null; do
            if [[ -e $GUARD_FILE ]] && (($(du -B1 "$GUARD_FILE" | cut -f1) > GUARD_MAX)); then
                kids=$(cat "/proc/$tp/task/$tp/children" 2>/dev/null || true)
                [[ -n $kids ]] && kill $kids 2>/dev/null
                wait "$tp" || true
                rm -f "$GUARD_FILE"
                die "$op: $GUARD_FILE grew past $(mib "$GUARD_MAX") MiB on disk (a sparse restore was expected); stopped"
            fi
            sleep 0.5
        done
    fi
    wait "$tp" || rc=$?
    if ((rc != 0)); then
        echo "---- $op failed (exit $rc): $*" >&2
        tail -n 20 "$err" >&2 || true
        die "$op exited with $rc"
    fi
    local secs rss
    read -r secs rss < <(tail -n 1 "$tf")
    local cmd
    printf -v cmd '%q ' "$@"
    cmd=${cmd//$WORK/\$W}; cmd=${cmd//$ROOT/.}
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$op" "$secs" "$bytes" "$rss" "$base" "${cmd% }" "$note" >> "$ROWS"
    log "     $op: ${secs}s, peak RSS $((rss / 1024)) MiB"
    LAST_OUT=$out
}

set_note() {    # set_note TEXT: the notes column of the last recorded row
    local n; n=$(wc -l < "$ROWS")
    awk -F'\t' -v OFS='\t' -v n="$n" -v t="$1" 'NR == n { $7 = t } 1' "$ROWS" > "$ROWS.tmp"
    mv "$ROWS.tmp" "$ROWS"
}
json_field() {  # json_field KEY FILE -> value of a top-level scalar field
    sed -n "s/.*\"$1\"[[:space:]]*:[[:space:]]*\"\{0,1\}\([^\",}]*\)\"\{0,1\}.*/\1/p" "$2" | head -n 1
}
mib() { awk -v b="$1" 'BEGIN{printf "%.1f", b/1048576}'; }
json_note() {   # short note from a thinarc --json output
    local f=$1 kind read chg stored
    kind=$(json_field kind "$f"); read=$(json_field bytes_read "$f")
    chg=$(json_field blocks_changed "$f"); stored=$(json_field stored_bytes "$f")
    local n="${kind:-?}"
    [[ -n $read ]]   && n+=", read $(mib "$read") MiB"
    [[ -n $chg ]]    && n+=", $chg blocks changed"
    [[ -n $stored ]] && n+=", stored $(mib "$stored") MiB"
    printf '%s' "$n"
}
must_equal() {  # must_equal RESTORED EXPECTED
    log "cmp $1 $2"
    cmp "$1" "$2" || die "restore $1 differs from $2"
    local a b
    a=$(stat -c %s "$1"); b=$(stat -c %s "$2")
    [[ $a == "$b" ]] || die "restore $1 has size $a, expected $b"
}

# ---------------------------------------------------------------- modifications
RAND_STATE=$SEED
# pick_blocks COUNT RANGE_BLOCKS OUTFILE: COUNT distinct random block numbers, sorted
pick_blocks() {
    local n=$1 range=$2 out=$3
    RAND_STATE=$((RAND_STATE + 1))
    shuf -i 0-$((range - 1)) -n "$n" --random-source=<(yes "thinarc-bench-$RAND_STATE") | sort -n > "$out"
}
# modify IMAGE BLOCKLIST CBFILE: overwrite each listed 64 KiB block with random
# data in place, and write the matching changed-blocks file
modify() {
    local img=$1 list=$2 cb=$3 b
    {
        echo "# changed blocks for $(basename "$img"): OFFSET LENGTH (bytes)"
        while read -r b; do
            dd if=/dev/urandom of="$img" bs=$BLK seek="$b" count=1 conv=notrunc status=none
            echo "$((b * BLK)) $BLK"
        done < "$list"
    } > "$cb"
    sync
}

# ---------------------------------------------------------------- the image
IMG=$WORK/image.img
STAGE=$WORK/stage
make_image() {
    log "building a ${SIZE_GIB} GiB ext4 image from real files"
    rm -rf "$STAGE" "$IMG"
    mkdir -p "$STAGE"
    local target=$((IMG_BYTES / 100 * FILL_PCT))
    local rnd=$((IMG_BYTES / 100 * RANDOM_PCT))
    local filled=0 i=0

    # incompressible part: a few files of /dev/urandom data
    mkdir -p "$STAGE/var/lib/blobs"
    while ((filled < rnd)); do
        local sz=$((64 * 1024 * 1024)); ((rnd - filled < sz)) && sz=$((rnd - filled))
        head -c "$sz" /dev/urandom > "$STAGE/var/lib/blobs/blob$i.bin"
        filled=$((filled + sz)); i=$((i + 1))
    done

    # real files from the system, copied again under another name while short;
    # sizes are counted in 4 KiB blocks as the filesystem will store them
    local list=$WORK/files.lst round=0
    find /usr/share /usr/bin /usr/sbin /usr/include /usr/lib /usr/libexec /etc \
        -xdev -type f -readable -size +0 -printf '%s\t%p\n' 2>/dev/null > "$list.all" || true
    [[ -s $list.all ]] || die "found no files to copy"
    while ((filled < target)); do
        round=$((round + 1))
        awk -F'\t' -v need=$((target - filled)) -v sumfile="$list.sum" '
            { if (sum >= need) exit; sum += int(($1 + 4095) / 4096) * 4096; print $2 }
            END { printf "%.0f\n", sum > sumfile }' "$list.all" > "$list"
        local got; got=$(cat "$list.sum")
        mkdir -p "$STAGE/copy$round"
        tar -cf - --hard-dereference --no-recursion -P -T "$list" 2>/dev/null \
            | tar -xf - -C "$STAGE/copy$round" 2>/dev/null || true
        filled=$((filled + got))
        log "  copy $round: $(mib "$got") MiB in $(wc -l < "$list") system files"
    done
    rm -f "$list" "$list.all" "$list.sum"
    local nodes inodes_opt=()
    nodes=$(find "$STAGE" | wc -l)
    if ((nodes * 3 / 2 > IMG_BYTES / 16384)); then inodes_opt=(-N $((nodes * 3 / 2))); fi

    # a fully allocated file: zeros written out, then mke2fs without discard
    # (mke2fs would otherwise punch holes into the file)
    log "  writing $(mib "$IMG_BYTES") MiB of zeros, then mke2fs -d ($nodes files and folders)"
    dd if=/dev/zero of="$IMG" bs=1M count=$((IMG_BYTES / 1048576)) conv=fsync status=none
    mke2fs -F -q -t ext4 -b 4096 "${inodes_opt[@]}" -E nodiscard -L thinarc-bench -d "$STAGE" "$IMG"
    log "  mke2fs done"
    rm -rf "$STAGE"
    sync
    local alloc apparent
    alloc=$(du -B1 "$IMG" | cut -f1); apparent=$(stat -c %s "$IMG")
    log "  image: apparent $(mib "$apparent") MiB, allocated $(mib "$alloc") MiB"
    ((alloc >= apparent)) || die "image is sparse (du $alloc < size $apparent)"
    IMG_INFO=$(dumpe2fs -h "$IMG" 2>/dev/null | awk -F: '
        /^Block count/ {bc=$2} /^Free blocks/ {fb=$2} /^Inode count/ {ic=$2} /^Free inodes/ {fi=$2}
        END { printf "ext4, %.0f%% of blocks used, %d files/dirs", 100*(bc-fb)/bc, ic-fi }')
    log "  $IMG_INFO"
}

# ---------------------------------------------------------------- main sequence
cleanup_big
rm -f "$WORK"/cb-*.txt "$WORK"/blocks-*.txt
make_image
IMG_SZ=$(stat -c %s "$IMG")
K1=$((NBLK / 100)); K10=$((NBLK / 10))

# baselines: zstd
drop_caches "$IMG"
measure "zstd -1 -T2 (compress)" "$IMG_SZ" - "" -- zstd -1 -T2 -q -f -o "$WORK/image.zst" "$IMG"
ZST_SZ=$(stat -c %s "$WORK/image.zst")
set_note "compressed to $(mib "$ZST_SZ") MiB"
drop_caches "$WORK/image.zst"
measure "zstd -d -T2 (decompress)" "$IMG_SZ" - "" -- zstd -d -T2 -q -f -o "$WORK/unzstd.img" "$WORK/image.zst"
must_equal "$WORK/unzstd.img" "$IMG"
rm -f "$WORK/unzstd.img" "$WORK/image.zst"

R=$WORK/repo
T=("$THINARC" -q -r "$R")
"${T[@]}" init --no-encryption > "$LOGS/init.out"

declare -a POINT_SHA=()
record_point() { POINT_SHA+=("$(sha256sum "$IMG" | cut -d' ' -f1)"); }

drop_caches "$IMG"
measure "full backup" "$IMG_SZ" "zstd -1 -T2 (compress)" "" -- \
    "${T[@]}" backup "$IMG" --volume bench --json
set_note "$(json_note "$LAST_OUT")"
record_point

# full-scan deltas
pick_blocks "$K1" "$NBLK" "$WORK/blocks-fs1.txt"
modify "$IMG" "$WORK/blocks-fs1.txt" "$WORK/cb-fs1.txt"
drop_caches "$IMG" "$R"
measure "delta, full scan, 1%" "$IMG_SZ" "zstd -1 -T2 (compress)" "" -- \
    "${T[@]}" backup "$IMG" --volume bench --json
set_note "$(json_note "$LAST_OUT")"
record_point

# changed-blocks deltas
pick_blocks "$K1" "$NBLK" "$WORK/blocks-cb1.txt"
modify "$IMG" "$WORK/blocks-cb1.txt" "$WORK/cb-cb1.txt"
drop_caches "$IMG" "$R"
measure "delta, --changed-blocks, 1%" "$((K1 * BLK))" "zstd -1 -T2 (compress)" "" -- \
    "${T[@]}" backup "$IMG" --volume bench --changed-blocks "$WORK/cb-cb1.txt" --json
set_note "$(json_note "$LAST_OUT")"
record_point

pick_blocks "$K10" "$NBLK" "$WORK/blocks-fs10.txt"
modify "$IMG" "$WORK/blocks-fs10.txt" "$WORK/cb-fs10.txt"
drop_caches "$IMG" "$R"
measure "delta, full scan, 10%" "$IMG_SZ" "zstd -1 -T2 (compress)" "" -- \
    "${T[@]}" backup "$IMG" --volume bench --json
set_note "$(json_note "$LAST_OUT")"
record_point

pick_blocks "$K10" "$NBLK" "$WORK/blocks-cb10.txt"
modify "$IMG" "$WORK/blocks-cb10.txt" "$WORK/cb-cb10.txt"
drop_caches "$IMG" "$R"
measure "delta, --changed-blocks, 10%" "$((K10 * BLK))" "zstd -1 -T2 (compress)" "" -- \
    "${T[@]}" backup "$IMG" --volume bench --changed-blocks "$WORK/cb-cb10.txt" --json
set_note "$(json_note "$LAST_OUT")"
record_point

"${T[@]}" list bench > "$LOGS/list.out"
"${T[@]}" list bench --json > "$LOGS/list.json"
REPO_BYTES=$(du -sb "$R" | cut -f1)

# restore of the latest point (5 archives in the chain)
drop_caches "$R"
measure "restore latest (chain of 5)" "$IMG_SZ" "zstd -d -T2 (decompress)" "" -- \
    "${T[@]}" restore bench "$WORK/restore.img" --at latest
RST_ALLOC=$(du -B1 "$WORK/restore.img" | cut -f1)
set_note "restored file allocates $(mib "$RST_ALLOC") MiB"
must_equal "$WORK/restore.img" "$IMG"
rm -f "$WORK/restore.img"

# copies of the latest point into another local repository: one consolidated full
# archive (reads each block once from the chain, recompresses, uploads), then the
# plain copy of all five archives (byte-for-byte object streaming); the consolidated
# copy must restore to the image
CR=$WORK/copy-repo
rm -rf "$CR"
drop_caches "$R"
measure "copy --consolidate latest (chain of 5)" "$IMG_SZ" "restore latest (chain of 5)" "" -- \
    "${T[@]}" copy --to "$CR" --consolidate bench --json
set_note "wrote $(mib "$(json_field bytes_written "$LAST_OUT")") MiB"
"$THINARC" -q -r "$CR" restore bench "$WORK/restore.img" > "$LOGS/restore-copy.out"
must_equal "$WORK/restore.img" "$IMG"
rm -rf "$CR" "$WORK/restore.img"
drop_caches "$R"
measure "copy, all 5 archives" "$REPO_BYTES" "restore latest (chain of 5)" "" -- \
    "${T[@]}" copy --to "$CR" bench --json
set_note "wrote $(mib "$(json_field bytes_written "$LAST_OUT")") MiB"
rm -rf "$CR"

if [[ $VERIFY_ALL == 1 ]]; then
    for i in 1 2 3 4; do
        log "verify: restore point $i"
        "${T[@]}" restore bench "$WORK/restore.img" --at "$i" > "$LOGS/restore-$i.out" 2>&1 \
            || { cat "$LOGS/restore-$i.out" >&2; die "restore --at $i failed"; }
        got=$(sha256sum "$WORK/restore.img" | cut -d' ' -f1)
        [[ $got == "${POINT_SHA[$((i - 1))]}" ]] || die "restore --at $i: sha256 $got, image at that point had ${POINT_SHA[$((i - 1))]}"
        rm -f "$WORK/restore.img"
    done
    VERIFIED="every point (1-4 by sha256 of the image at that point, latest by cmp)"
else
    VERIFIED="latest point by cmp"
fi
[[ $KEEP == 1 ]] || rm -rf "$R"

# ---------------------------------------------------------------- flatness: 64 GiB sparse
if [[ $BIG == 1 ]]; then
    BIGIMG=$WORK/big.img
    BR=$WORK/repo-big
    rm -rf "$BIGIMG" "$BR"
    log "flatness: ${BIG_GIB} GiB sparse image with the ${SIZE_GIB} GiB image at its start"
    truncate -s "${BIG_GIB}G" "$BIGIMG"
    dd if="$IMG" of="$BIGIMG" bs=1M conv=notrunc,sparse status=none
    BIG_SZ=$(stat -c %s "$BIGIMG")
    "$THINARC" -q -r "$BR" init --no-encryption > /dev/null
    drop_caches "$BIGIMG"
    measure "full backup, ${BIG_GIB} GiB sparse" "$BIG_SZ" "full backup" "" -- \
        "$THINARC" -q -r "$BR" backup "$BIGIMG" --volume big --json
    set_note "$(json_note "$LAST_OUT")"
    # 1% of the small image's blocks, scattered over the whole big image
    pick_blocks "$K1" "$((BIG_SZ / BLK))" "$WORK/blocks-big.txt"
    modify "$BIGIMG" "$WORK/blocks-big.txt" "$WORK/cb-big.txt"
    drop_caches "$BIGIMG" "$BR"
    measure "delta, --changed-blocks, ${K1} blocks, ${BIG_GIB} GiB sparse" "$((K1 * BLK))" \
        "delta, --changed-blocks, 1%" "" -- \
        "$THINARC" -q -r "$BR" backup "$BIGIMG" --volume big --changed-blocks "$WORK/cb-big.txt" --json
    set_note "$(json_note "$LAST_OUT")"
    # restore it: the target must stay sparse (zero blocks are not written);
    # stop the restore if it allocates much more than the source does
    BIG_ALLOC=$(du -B1 "$BIGIMG" | cut -f1)
    rm -f "$WORK/restore-big.img"
    drop_caches "$BR"
    GUARD_FILE=$WORK/restore-big.img GUARD_MAX=$((BIG_ALLOC * 2 + 1073741824))
    measure "restore latest, ${BIG_GIB} GiB sparse" "$BIG_SZ" "restore latest (chain of 5)" "" -- \
        "$THINARC" -q -r "$BR" restore big "$WORK/restore-big.img" --at latest
    GUARD_FILE=""
    set_note "restored file allocates $(mib "$(du -B1 "$WORK/restore-big.img" | cut -f1)") MiB, source $(mib "$BIG_ALLOC") MiB"
    must_equal "$WORK/restore-big.img" "$BIGIMG"
    rm -rf "$BIGIMG" "$BR" "$WORK/restore-big.img"
fi

# ---------------------------------------------------------------- block sizes
if [[ $BLOCK_SIZES == 1 ]]; then
    MOD=$WORK/image-mod.img
    log "block sizes: $BLOCK_SIZE_LIST"
    cp --sparse=never "$IMG" "$MOD"
    pick_blocks "$K1" "$NBLK" "$WORK/blocks-bs.txt"
    modify "$MOD" "$WORK/blocks-bs.txt" "$WORK/cb-bs.txt"
    for bs in $BLOCK_SIZE_LIST; do
        BR=$WORK/repo-bs
        rm -rf "$BR" "$WORK/restore.img"
        "$THINARC" -q -r "$BR" init --no-encryption > /dev/null
        drop_caches "$IMG"
        measure "bs $bs: full backup" "$IMG_SZ" "zstd -1 -T2 (compress)" "" -- \
            "$THINARC" -q -r "$BR" backup "$IMG" --volume bs --block-size "$bs" --json
        set_note "$(json_note "$LAST_OUT"), repo $(mib "$(du -sb "$BR" | cut -f1)") MiB"
        drop_caches "$BR"
        measure "bs $bs: restore full" "$IMG_SZ" "zstd -d -T2 (decompress)" "" -- \
            "$THINARC" -q -r "$BR" restore bs "$WORK/restore.img" --at latest
        must_equal "$WORK/restore.img" "$IMG"
        rm -f "$WORK/restore.img"
        drop_caches "$MOD" "$BR"
        measure "bs $bs: delta --changed-blocks 1%" "$((K1 * BLK))" "delta, --changed-blocks, 1%" "" -- \
            "$THINARC" -q -r "$BR" backup "$MOD" --volume bs --changed-blocks "$WORK/cb-bs.txt" --json
        set_note "$(json_note "$LAST_OUT")"
        drop_caches "$BR"
        measure "bs $bs: restore latest (full+delta)" "$IMG_SZ" "zstd -d -T2 (decompress)" "" -- \
            "$THINARC" -q -r "$BR" restore bs "$WORK/restore.img" --at latest
        must_equal "$WORK/restore.img" "$MOD"
        rm -rf "$WORK/restore.img" "$BR"
    done
    rm -f "$MOD"
fi

# ---------------------------------------------------------------- S3
# Full backup and restore over HTTP to an S3 server on loopback, each next to the same
# operation on a local repository with the same image. The servers share this
# machine's two cores with thinarc. s3s-fs (Rust, objects stored as files) measures
# thinarc's S3 path at full size. moto (the test suite's server, Python) re-reads and
# copies a whole object for every ranged GET, so it gets a smaller image.
# shellcheck source=bench/s3server.sh
BENCH_TOOLS=$WORK/tools source "$ROOT/bench/s3server.sh"
S3_PID=""
stop_s3() { [[ -n $S3_PID ]] && kill "$S3_PID" 2>/dev/null; wait "$S3_PID" 2>/dev/null || true; S3_PID=""; rm -rf "$WORK/s3-server"; }

if [[ $S3 == 1 ]]; then
    trap 'rc=$?; stop_s3; (exit $rc); on_exit' EXIT
    for server in $S3_SERVERS; do
        SIMG=$IMG
        if [[ $server == moto ]]; then
            SIMG=$WORK/image-moto.img
            head -c "$((MOTO_MIB * 1048576))" "$IMG" > "$SIMG"
        fi
        SSZ=$(stat -c %s "$SIMG")
        s3_server "$server" "$WORK/s3-server" || die "S3 server $server did not start"
        S3ENV=(env AWS_ENDPOINT_URL="http://127.0.0.1:$S3_PORT" AWS_ALLOW_HTTP=true AWS_REGION=us-east-1
               AWS_ACCESS_KEY_ID="$S3_KEY_ID" AWS_SECRET_ACCESS_KEY="$S3_SECRET")
        SR="s3://bench/repo"
        LR=$WORK/repo-s3-local
        rm -rf "$LR"
        "$THINARC" -q -r "$LR" init --no-encryption > /dev/null
        "${S3ENV[@]}" "$THINARC" -q -r "$SR" init --no-encryption $S3_INIT_FLAGS > "$LOGS/s3-init-$server.out"
        label="$server, $(mib "$SSZ") MiB image"
        drop_caches "$SIMG"
        measure "$label: local full backup" "$SSZ" - "" -- \
            "$THINARC" -q -r "$LR" backup "$SIMG" --volume s3 --json
        drop_caches "$SIMG"
        measure "$label: S3 full backup" "$SSZ" "$label: local full backup" "" -- \
            "${S3ENV[@]}" "$THINARC" -q -r "$SR" backup "$SIMG" --volume s3 --json
        set_note "$(json_note "$LAST_OUT")"
        drop_caches "$LR"
        measure "$label: local restore" "$SSZ" - "" -- \
            "$THINARC" -q -r "$LR" restore s3 "$WORK/restore.img"
        must_equal "$WORK/restore.img" "$SIMG"
        rm -f "$WORK/restore.img"
        measure "$label: S3 restore" "$SSZ" "$label: local restore" "" -- \
            "${S3ENV[@]}" "$THINARC" -q -r "$SR" restore s3 "$WORK/restore.img"
        must_equal "$WORK/restore.img" "$SIMG"
        rm -rf "$WORK/restore.img" "$LR"
        [[ $SIMG == "$IMG" ]] || rm -f "$SIMG"
        stop_s3
    done
fi

# ---------------------------------------------------------------- report
COMMIT=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
DIRTY=$(git -C "$ROOT" status --porcelain --untracked-files=no -- src Cargo.toml Cargo.lock 2>/dev/null | head -c1)
[[ -n $DIRTY ]] && COMMIT+=" (+ uncommitted changes)"
{
    echo "# thinarc benchmark results"
    echo
    echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC'), thinarc commit $COMMIT"
    echo "- machine: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), $(awk '/MemTotal/{printf "%.0f GiB", $2/1048576}' /proc/meminfo) RAM, kernel $(uname -r)"
    echo "- image: ${SIZE_GIB} GiB ($IMG_BYTES bytes), ${IMG_INFO}; ${RANDOM_PCT}% of the image is /dev/urandom data; modifications are random 64 KiB blocks of /dev/urandom data ($K1 blocks = 1%, $K10 blocks = 10%)"
    echo "- page cache: $CACHE_MODE"
    echo "- restores verified: $VERIFIED"
    echo "- repository after full + 4 deltas: $(mib "$REPO_BYTES") MiB"
    echo "- command: \`${ENV_LINE}${ORIG_CMDLINE}\`"
    echo
    echo "MB/s = bytes the operation processes / seconds (MB = 10^6 B): the image size for full backups,"
    echo "full-scan deltas, restores and zstd; the listed changed ranges for --changed-blocks deltas."
    echo "ratio = seconds / seconds of the baseline named in brackets."
    echo
    echo "| operation | seconds | MB/s | peak RSS MiB | ratio vs baseline | notes |"
    echo "|---|---:|---:|---:|---|---|"
    awk -F'\t' '
        { op[NR]=$1; s[NR]=$2; b[NR]=$3; r[NR]=$4; base[NR]=$5; note[NR]=$7; sec[$1]=$2 }
        END {
            for (i = 1; i <= NR; i++) {
                mbs = (s[i] > 0) ? sprintf("%.0f", b[i] / 1e6 / s[i]) : "-"
                if (base[i] == "-" || base[i] == "") ratio = "baseline"
                else if (sec[base[i]] > 0) ratio = sprintf("%.2f (%s)", s[i] / sec[base[i]], base[i])
                else ratio = "-"
                printf "| %s | %.2f | %s | %.0f | %s | %s |\n", op[i], s[i], mbs, r[i] / 1024, ratio, note[i]
            }
        }' "$ROWS"
    echo
    echo "Commands (\$W = $WORK, . = repository root):"
    echo
    echo '```'
    awk -F'\t' '{ printf "%-45s %s\n", $1 ":", $6 }' "$ROWS"
    echo '```'
} > "$RESULTS_MD"

[[ $KEEP == 1 ]] || cleanup_big
echo
cat "$RESULTS_MD"
echo
log "results written to $RESULTS_MD"
