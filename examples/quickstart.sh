#!/usr/bin/env bash
# thinarc quickstart: back up a small ext4 image, change it, back it up again,
# and restore both points. Run from anywhere: bash examples/quickstart.sh
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export PATH="$PATH:/usr/sbin:/sbin"

step() { printf '\n==> %s\n' "$*"; }
trap 'echo "quickstart FAILED at line $LINENO: $BASH_COMMAND" >&2' ERR

# --- tools: mke2fs and debugfs come with e2fsprogs
if ! command -v mke2fs >/dev/null 2>&1 || ! command -v debugfs >/dev/null 2>&1; then
    step "installing e2fsprogs"
    SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO=sudo
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends e2fsprogs
fi

step "building thinarc (cargo build --release --locked)"
(cd "$ROOT" && cargo build --release --locked)
THINARC=$ROOT/target/release/thinarc

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
cd "$TMP"
export THINARC_REPO="$TMP/repo"        # or pass -r/--repo REPO to every command

# --- a 64 MiB ext4 image filled with some real files
step "creating a 64 MiB ext4 image from /usr/share/doc"
mkdir -p files
# the first ~30 MiB of regular files under /usr/share/doc, keeping their paths
find /usr/share/doc -type f -readable -printf '%s\t%p\n' > files.all 2>/dev/null || true
awk -F'\t' '{ if (sum > 30 * 1048576) exit; sum += $1; print $2 }' files.all > files.lst
tar -cf - --hard-dereference --no-recursion -P -T files.lst 2>/dev/null | tar -xf - -C files 2>/dev/null || true
echo "hello from thinarc quickstart" > files/hello.txt
truncate -s 64M disk.img
mke2fs -F -q -t ext4 -d files disk.img
cp disk.img point1.img                  # what the first backup must give back

# --- repository and a full backup
step "thinarc init   (encrypted: the passphrase comes from THINARC_PASSWORD here, a prompt on a terminal)"
export THINARC_PASSWORD="quickstart passphrase"   # or --password-file FILE / --password-command CMD
"$THINARC" init

step "thinarc backup disk.img --volume demo   (first backup of a volume: full)"
"$THINARC" backup disk.img --volume demo

# --- change the image: a new file written with debugfs, plus 1 MiB of random data
step "changing the image"
head -c 300000 /dev/urandom > newfile.bin
debugfs -w -R "write newfile.bin newfile.bin" disk.img
dd if=/dev/urandom of=disk.img bs=64K seek=700 count=16 conv=notrunc status=none
cp disk.img point2.img

step "thinarc backup disk.img --volume demo   (second backup: delta)"
"$THINARC" backup disk.img --volume demo --json | tee backup2.json
echo

step "thinarc list demo"
"$THINARC" list demo

# --- restore both points into new files and compare
step "thinarc restore demo restored1.img --at 1"
"$THINARC" restore demo restored1.img --at 1
step "thinarc restore demo restored2.img --at latest"
"$THINARC" restore demo restored2.img --at latest

step "checking the restores"
cmp restored1.img point1.img
cmp restored2.img point2.img
sha256sum point1.img restored1.img point2.img restored2.img
if cmp -s restored1.img restored2.img; then
    echo "the two points should differ" >&2
    exit 1
fi
echo
echo OK
