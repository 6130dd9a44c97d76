#!/usr/bin/env bash
# thinarc offline copies: the "multi-week offline copy" workflow, simulated over
# eight weeks of nightly backups.
#
#   nightly:  thinarc -r REPO backup ...                       (the main repository)
#   weekly:   thinarc -r REPO copy --to /mnt/usb/thinarc --consolidate VOLUME
#             thinarc -r /mnt/usb/thinarc prune VOLUME --keep-weekly 8 --keep-monthly 6
#             (then unmount the disk and store it away)
#
# The USB disk gets ONE full archive per week (no chain to the main repository, no
# access to the source volume needed), keeps its own retention, and restores on its
# own. Here the "USB disk" is a directory. Run from anywhere:
#   bash examples/offline-copy.sh
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
step() { printf '\n==> %s\n' "$*"; }
trap 'echo "offline-copy FAILED at line $LINENO: $BASH_COMMAND" >&2' ERR

step "building thinarc (cargo build --release --locked)"
(cd "$ROOT" && cargo build --release --locked)
THINARC=$ROOT/target/release/thinarc

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
cd "$TMP"
REPO=$TMP/repo          # the main repository (a directory here; s3://... works too)
USB=$TMP/usb/thinarc    # the offline disk: created by the first copy

# Unencrypted here; from an encrypted repository the copy creates its destination
# encrypted with the same key (README, "Copies").
"$THINARC" -r "$REPO" init --no-encryption
head -c $((32 << 20)) /dev/urandom > disk.img    # the volume (32 MiB)

for week in 1 2 3 4 5 6 7 8; do
    step "week $week: seven nightly backups"
    for night in 1 2 3 4 5 6 7; do
        # ~1 MiB of changes per night at a random place
        dd if=/dev/urandom of=disk.img bs=64K count=16 seek=$((RANDOM % 496)) conv=notrunc status=none
        "$THINARC" -q -r "$REPO" backup disk.img --volume vm/web
    done
    cp disk.img "week$week.img"                   # what this week's copy must give back

    step "week $week: consolidated copy to the offline disk"
    "$THINARC" -r "$REPO" copy --to "$USB" --consolidate vm/web
    # The same copy again transfers nothing (e.g. after an interrupted run, it just
    # completes what is missing).
    "$THINARC" -r "$REPO" copy --to "$USB" --consolidate vm/web

    step "week $week: retention on the offline disk (its own policy)"
    # In real use: --keep-weekly 8 --keep-monthly 6. This simulation runs its "weeks"
    # within a minute, so all points fall into one ISO week: keep the last four.
    "$THINARC" -r "$USB" prune vm/web --keep-last 4
done

step "the offline disk on its own: the copies of weeks 5 to 8"
"$THINARC" -r "$USB" list vm/web
test "$("$THINARC" -r "$USB" list vm/web --json | grep -c '"seq"')" -eq 4
"$THINARC" -r "$USB" verify --data

step "restore the newest offline point and compare it with week 8"
"$THINARC" -r "$USB" restore vm/web restored.img
cmp restored.img week8.img
echo "offline copy of week 8 restores byte for byte"
