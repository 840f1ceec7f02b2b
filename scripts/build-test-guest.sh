#!/usr/bin/env bash
# Builds Corral's test guest from Debian packages: the cloud kernel plus an initramfs holding busybox and a
# real qemu-guest-agent (no disk, boots in ~3 s under TCG). Nothing is installed on the host: packages are
# fetched with `apt-get download` and unpacked with dpkg-deb.
# Output: an image bundle in the catalog, $CORRAL_IMAGE_DIR/corral/test-guest/latest/{vmlinuz,initrd.img,cmdline},
# with `default` pointing at it (an instance that names no boot volume boots the default image), and beside
# it containerdisk.qcow2: the same guest as a self-booting disk (SYSLINUX on FAT, built with mtools, no loop
# mounts), which the tests push to a registry as containerDisks.
set -euo pipefail
catalog=${CORRAL_IMAGE_DIR:-/var/lib/corral/images}
out=$catalog/corral/test-guest/latest
# The guest's generation: bump it when what the build makes changes, so cached builds are redone.
generation=4
if [ -s "$out/initrd.img" ] && [ -s "$out/vmlinuz" ] && [ -s "$out/disk.qcow2" ] && [ -s "$out/containerdisk.qcow2" ] \
  && [ "$(cat "$out/generation" 2>/dev/null)" = "$generation" ] && [ "${1:-}" != --force ]; then
  echo "[build-test-guest] $out exists (use --force to rebuild)" >&2; exit 0
fi
work=$(mktemp -d /tmp/corral-guest-build.XXXXXX)
trap 'rm -rf "$work"' EXIT
chmod 755 "$work"            # apt-get download runs as _apt
cd "$work"

kpkg=$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-/{print $2; exit}')
[ -n "$kpkg" ] || { echo "cannot resolve linux-image-cloud-amd64 (apt-get update?)" >&2; exit 1; }
# Stable's qemu-guest-agent on purpose: it is what a Debian 12 guest runs.
apt-get download -q "$kpkg" busybox-static "qemu-guest-agent/bookworm" >/dev/null
for d in *.deb; do dpkg-deb -x "$d" x/; done
kver=${kpkg#linux-image-}
moddir=x/lib/modules/$kver
depmod -b x "$kver"          # the .deb ships no modules.dep

r=$work/root
mkdir -p "$r"/{bin,sbin,usr/bin,usr/sbin,etc/acpi/PWRF,proc,sys,dev,run,tmp,root,lib/modules,lib64,lib/x86_64-linux-gnu}
ln -s ../run "$r/var"
cp x/bin/busybox "$r/bin/busybox"
for a in $(x/bin/busybox --list); do [ -e "$r/bin/$a" ] || ln -s busybox "$r/bin/$a"; done
ln -sf ../bin/busybox "$r/sbin/hwclock"      # qemu-ga's guest-set-time needs /sbin/hwclock
cp x/usr/sbin/qemu-ga "$r/usr/sbin/qemu-ga"
for lib in $(ldd x/usr/sbin/qemu-ga | awk '/=>/{print $3} /ld-linux/{print $1}'); do cp -L "$lib" "$r/lib/x86_64-linux-gnu/"; done
cp -L /lib64/ld-linux-x86-64.so.2 "$r/lib64/"
cp /etc/os-release "$r/etc/os-release"        # reported by guest-get-osinfo
echo 'root:x:0:0:root:/root:/bin/sh' > "$r/etc/passwd"
echo 'root:x:0:' > "$r/etc/group"

# Kernel modules with their dependencies, in load order.
: > "$r/etc/modules.order"
add_module() {
  local m=$1 dep
  grep -qx "$m" "$r/etc/modules.order" && return 0
  for dep in $(grep "^$m:" "$moddir/modules.dep" | cut -d: -f2); do add_module "$dep"; done
  echo "$m" >> "$r/etc/modules.order"
}
# virtio_scsi + sr_mod + isofs: a cloud-init seed on a (virtio-scsi) CD-ROM can be mounted and read.
for want in virtio_pci virtio_console virtio_net virtio_balloon virtio_blk virtio_scsi sr_mod isofs button evdev; do
  path=$(grep -E "/$want\.ko(\.xz|\.zst)?:" "$moddir/modules.dep" | head -1 | cut -d: -f1)
  [ -n "$path" ] || { echo "[build-test-guest] the kernel has no module $want" >&2; exit 1; }
  add_module "$path"
done
while read -r m; do mkdir -p "$r/lib/modules/$(dirname "$m")"; cp "$moddir/$m" "$r/lib/modules/$m"; done < "$r/etc/modules.order"

# qemu-ga's guest-shutdown runs `/sbin/shutdown -h -P|-H|-r +0 "..."`; busybox has no shutdown.
cat > "$r/sbin/shutdown" <<'SH'
#!/bin/sh
act=poweroff
for a in "$@"; do case "$a" in -r) act=reboot;; -H) act=halt;; esac; done
( sleep 0.2; sync; $act -f ) >/dev/null 2>&1 </dev/null &
exit 0
SH
# ACPI power button (graceful stop via ACPI).
cat > "$r/etc/acpi/PWRF/00000080" <<'SH'
#!/bin/sh
echo "corral-init: ACPI power button" > /dev/console
sync; poweroff -f
SH
# udhcpc only talks DHCP; this applies what it got.
cat > "$r/etc/udhcpc.script" <<'SH'
#!/bin/sh
case "$1" in
  deconfig) ip addr flush dev "$interface"; ip link set "$interface" up ;;
  bound|renew)
    ip addr flush dev "$interface"
    ip addr add "$ip/${mask:-24}" dev "$interface"
    [ -n "$router" ] && ip route replace default via "${router%% *}" dev "$interface" ;;
esac
exit 0
SH
chmod +x "$r/sbin/shutdown" "$r/etc/acpi/PWRF/00000080" "$r/etc/udhcpc.script"

cat > "$r/init" <<'SH'
#!/bin/sh
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
mkdir -p /dev/pts /dev/virtio-ports; mount -t devpts devpts /dev/pts
mount -t tmpfs -o mode=755 run /run; mount -t tmpfs tmpfs /tmp; mkdir -p /run/log
while read -r m; do insmod "/lib/modules/$m" 2>/dev/null; done < /etc/modules.order
hn=corral-guest
for o in $(cat /proc/cmdline); do case "$o" in corral.hostname=*) hn=${o#*=};; esac; done
hostname "$hn"
ip link set lo up
# DHCP on the first NIC, renewed for as long as the guest runs (it names itself to the DHCP server).
if [ -e /sys/class/net/eth0 ]; then
  ip link set eth0 up
  udhcpc -i eth0 -s /etc/udhcpc.script -x "hostname:$hn" -f -T 2 -A 2 >/dev/console 2>&1 &
fi
# No udev here: create the /dev/virtio-ports/<name> links qemu-ga looks for.
for _ in $(seq 1 50); do
  for p in /sys/class/virtio-ports/vport*; do
    [ -e "$p/name" ] || continue; n=$(cat "$p/name"); [ -n "$n" ] && ln -sf "/dev/${p##*/}" "/dev/virtio-ports/$n"
  done
  [ -e /dev/virtio-ports/org.qemu.guest_agent.0 ] && break; sleep 0.1
done
if [ -b /dev/vda ]; then mkdir -p /mnt/data; mount /dev/vda /mnt/data 2>/dev/null; fi
acpid -c /etc/acpi -l /run/log/acpid.log
echo "corral-init: $(cut -d' ' -f1 /proc/uptime)s starting qemu-ga" > /dev/console
( while true; do qemu-ga -m virtio-serial -p /dev/virtio-ports/org.qemu.guest_agent.0 -t /run </dev/null >/dev/console 2>&1; sleep 1; done ) &
while true; do setsid -c sh </dev/console >/dev/console 2>&1 || sleep 5; done
SH
chmod +x "$r/init"

mkdir -p "$out.tmp"
cp "x/boot/vmlinuz-$kver" "$out.tmp/vmlinuz"
( cd "$r" && find . | cpio -o -H newc --quiet | gzip -6 ) > "$out.tmp/initrd.img"
# {hostname} is replaced by the instance's hostname (plain text substitution).
echo "console=ttyS0 quiet panic=-1 corral.hostname={hostname}" > "$out.tmp/cmdline"
echo "$kver" > "$out.tmp/kernel-version"
echo "$generation" > "$out.tmp/generation"
# A small ext4 data disk: instances get a qcow2 overlay on it (the guest mounts it at /mnt/data).
truncate -s 64M "$work/disk.raw" && mkfs.ext4 -q -F -L corral-data "$work/disk.raw"
qemu-img convert -q -f raw -O qcow2 "$work/disk.raw" "$out.tmp/disk.qcow2"
# The self-booting disk: SeaBIOS runs SYSLINUX from the FAT volume's boot sector (no partition table).
size_mib=$(( ($(stat -c%s "$out.tmp/vmlinuz") + $(stat -c%s "$out.tmp/initrd.img")) / 1048576 + 8 ))
truncate -s "${size_mib}M" "$work/boot.raw" && mkfs.vfat -n CORRAL "$work/boot.raw" >/dev/null
printf 'DEFAULT corral\nPROMPT 0\nTIMEOUT 0\nLABEL corral\n  KERNEL /vmlinuz\n  INITRD /initrd.img\n  APPEND %s\n' \
  "console=ttyS0 quiet panic=-1" > "$work/syslinux.cfg"
mcopy -i "$work/boot.raw" "$out.tmp/vmlinuz" "$out.tmp/initrd.img" "$work/syslinux.cfg" ::/
syslinux --install "$work/boot.raw"
qemu-img convert -q -c -f raw -O qcow2 "$work/boot.raw" "$out.tmp/containerdisk.qcow2"
rm -rf "$out"; mv "$out.tmp" "$out"
ln -sfn corral/test-guest/latest "$catalog/default"
echo "[build-test-guest] $out: $(du -sh "$out" | cut -f1)" >&2
