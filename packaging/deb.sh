#!/usr/bin/env bash
# Builds the Debian package target/debian/thinarc_VERSION-1_ARCH.deb (cargo-deb; its
# metadata is [package.metadata.deb] in Cargo.toml): builds the binary, generates the
# man pages (gzipped) and shell completions from it into TARGET/PROFILE/deb-assets/, and the
# packaged systemd service (examples/systemd/thinarc.service with ExecStart at
# /usr/bin/thinarc), then runs `cargo deb --no-build`.
#
#   bash packaging/deb.sh                  # release build, then the package
#   bash packaging/deb.sh --profile dev --no-build --output DIR   # the test's way
#
# Other arguments go to cargo deb. Needs cargo-deb (`cargo install cargo-deb --locked`;
# .ci/run installs it).
set -euo pipefail
cd "$(dirname "$0")/.."

profile=release
build=1
args=()
while [ $# -gt 0 ]; do
  case $1 in
    --no-build) build= ;;
    --profile) profile=$2 && args+=("$1" "$2") && shift ;;
    --profile=*) profile=${1#--profile=} && args+=("$1") ;;
    *) args+=("$1") ;;
  esac
  shift
done
dir=$profile
[ "$profile" = dev ] && dir=debug
out=${CARGO_TARGET_DIR:-target}/$dir
if [ -n "$build" ]; then cargo build --locked --profile "$profile"; fi

assets=$out/deb-assets
rm -rf "$assets"
mkdir -p "$assets/man" "$assets/completions"
"$out/thinarc" man "$assets/man"
# Gzipped here: cargo deb compresses man pages only when they are not under target/.
gzip -9n "$assets"/man/*.1
"$out/thinarc" completions bash >"$assets/completions/thinarc"
"$out/thinarc" completions zsh >"$assets/completions/_thinarc"
"$out/thinarc" completions fish >"$assets/completions/thinarc.fish"
sed 's|/usr/local/bin/thinarc|/usr/bin/thinarc|g' examples/systemd/thinarc.service >"$assets/thinarc.service"

exec cargo deb --no-build "${args[@]}"
