#!/bin/bash
# Boots a Debian kernel under qemu (TCG: no KVM needed) with a small busybox initramfs
# that mounts the host's root file system read-only over virtio-9p and chroots into
# it, so binaries built on the host (thinarc, the test binary) run unchanged inside
# the VM against real device-mapper and LVM. The guest sees:
#   /dev/vda   an empty virtio disk of $PV_SIZE (sparse file on the host), for LVM
#   /mnt       a writable 9p share holding guest.sh; results go there too
#   /tmp, /run tmpfs, except that this checkout and every path in VM_HOST_PATHS stay
#              visible at the same path (bound back from the host's root), so a
#              checkout or target dir under /tmp works as well as one under /work
# Usage: tests/vm/run.sh GUEST_SCRIPT      (runs `bash GUEST_SCRIPT` as root in the VM)
# Env:   WORK (default target/vm), PV_SIZE (default 4G), VM_MEM (MiB, default 2048),
#        VM_HOST_PATHS (space-separated host paths the guest needs besides the checkout,
#        e.g. a target dir elsewhere)
# Exit:  the guest script's exit code; its output is printed and left in $WORK/share.
# The kernel package is downloaded once and cached under $WORK (never installed).
set -euo pipefail
T0=$(date +%s.%N)
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
WORK=${WORK:-$ROOT/target/vm}
SCRIPT=$(readlink -f "$1")
SELF=$(readlink -f "$0")   # before the cd below: $0 may be relative
ts() { printf '[vm host %6.2fs] %s\n' "$(echo "$(date +%s.%N) - $T0" | bc)" "$*" >&2; }

need=()
for p in qemu-system-x86 busybox-static lvm2 thin-provisioning-tools kmod cpio bc e2fsprogs fdisk; do
  dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  ts "installing ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
mkdir -p "$WORK"; cd "$WORK"
exec 9>"$WORK/.lock"; flock 9   # one VM build/boot at a time per work dir

# Kernel: Debian's generic kernel (it has 9p and dm-thin as modules), unpacked only.
if [ ! -d kroot/boot ]; then
  rm -rf debs kroot; mkdir -p debs kroot
  KPKG=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
  if [ -z "$KPKG" ]; then apt-get update -qq; KPKG=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/{print $2; exit}'); fi
  (cd debs && apt-get download "$KPKG" >/dev/null 2>&1)
  dpkg -x debs/*.deb kroot
  rm -rf debs
fi
KV=$(ls kroot/lib/modules | head -1)
[ -f "kroot/lib/modules/$KV/modules.dep" ] || depmod -b "$WORK/kroot" "$KV"

# Initramfs: busybox, the modules and an init that chroots into the host's root.
if [ ! -f initrd.img ] || [ "$SELF" -nt initrd.img ]; then
  rm -rf initrd; mkdir -p initrd/{bin,etc,proc,sys,dev,host,hostro,share,lib/modules}
  cp /bin/busybox initrd/bin/busybox
  MODS="crc32c_generic virtio_pci virtio_blk 9pnet_virtio 9p dm-thin-pool dm-snapshot ext4 nbd"
  MD=initrd/lib/modules/$KV; mkdir -p "$MD"
  for m in $MODS; do
    for f in $(modprobe -d "$WORK/kroot" -S "$KV" --show-depends "$m" | awk '$1=="insmod"{print $2}'); do
      rel=${f#$WORK/kroot/lib/modules/$KV/}; mkdir -p "$MD/$(dirname "$rel")"; cp "$f" "$MD/$rel"
    done
  done
  cp kroot/lib/modules/$KV/modules.{order,builtin,builtin.modinfo} "$MD/"
  depmod -b "$WORK/initrd" "$KV"
  echo "$MODS" > initrd/etc/modules
  cat > initrd/init <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
modprobe -a $(cat /etc/modules)
mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose,msize=262144 hostroot /host
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 share /share
# A second view of the host's root, which the tmpfs and share mounts below do not cover.
mount --bind /host /hostro
mount -t tmpfs tmpfs /host/run; mount -t tmpfs tmpfs /host/tmp
mount --bind /dev /host/dev; mount -t proc proc /host/proc; mount -t sysfs sys /host/sys
mount --bind /share /host/mnt
# Paths the guest needs (the checkout, the test binaries) that the mounts above hide:
# bound back at the same path.
while read -r p; do
  case "$p" in
    /tmp/*|/run/*|/mnt/*) mkdir -p "/host$p" && mount --bind "/hostro$p" "/host$p" ;;
  esac
done < /share/host-paths
mkdir -p /host/run/lvm /host/run/lock/lvm /host/run/lvmconf
# No udev in the guest; the host root is read-only, so LVM keeps no metadata backups.
cat > /host/run/lvmconf/lvm.conf <<'CONF'
devices { obtain_device_list_from_udev = 0 scan = [ "/dev" ] filter = [ "a|^/dev/vda$|", "r|.*|" ] }
activation { udev_sync = 0 udev_rules = 0 monitoring = 0 }
backup { backup = 0 archive = 0 }
CONF
chroot /host /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  LVM_SYSTEM_DIR=/run/lvmconf LVM_SUPPRESS_FD_WARNINGS=1 HOME=/tmp THINARC_IN_VM=1 \
  /bin/bash /mnt/guest.sh > /share/guest.log 2>&1
echo $? > /share/rc
sync; umount /host/mnt /share 2>/dev/null
echo GUEST-DONE
reboot -f
INIT
  chmod +x initrd/init
  (cd initrd && find . | cpio -o -H newc --quiet | gzip -1) > initrd.img.new && mv initrd.img.new initrd.img
  rm -rf initrd
fi
ts "kernel $KV and initramfs ready"

rm -rf share; mkdir share
cp "$SCRIPT" share/guest.sh
for p in "$ROOT" ${VM_HOST_PATHS:-}; do readlink -f "$p"; done | sort -u > share/host-paths
rm -f pv.img; truncate -s "${PV_SIZE:-4G}" pv.img
set +e
timeout "${VM_TIMEOUT:-1800}" qemu-system-x86_64 -accel tcg -cpu max -m "${VM_MEM:-2048}" -smp 2 \
  -nodefaults -no-reboot -display none -serial file:"$WORK/console.log" \
  -kernel kroot/boot/vmlinuz-$KV -initrd initrd.img -append "console=ttyS0 panic=-1 quiet" \
  -drive file=pv.img,format=raw,if=virtio,cache=unsafe \
  -virtfs local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap \
  -virtfs local,path="$WORK/share",mount_tag=share,security_model=none
qrc=$?
set -e
rm -f pv.img
ts "qemu exited ($qrc)"
cat share/guest.log 2>/dev/null || true
if [ ! -f share/rc ]; then
  echo "vm: the guest did not finish (qemu exit $qrc); console:" >&2; tail -30 console.log >&2; exit 1
fi
exit "$(cat share/rc)"
