#!/usr/bin/env bash
# Builds a full Debian 12 cloud guest from Debian packages: systemd, cloud-init, qemu-guest-agent and
# openssh-server, like Debian's own genericcloud image, for the tests and benchmarks that need a real OS
# (cloud-init user-data, SSH logins, key injection through the agent). mmdebstrap makes the tree without
# systemd or chroot tricks; `mkfs.ext4 -d` turns it into a filesystem image without loop mounts.
# Output: an image bundle in the catalog, $CORRAL_IMAGE_DIR/corral/debian-cloud/12/{vmlinuz,initrd.img,cmdline,
# disk.qcow2}: booted directly (its own kernel and initrd) with the disk as its root filesystem, so an instance
# naming `corral/debian-cloud:12` as its containerDisk boots it.
set -euo pipefail
catalog=${CORRAL_IMAGE_DIR:-/var/lib/corral/images}
out=$catalog/corral/debian-cloud/12
mirror=${CORRAL_DEBIAN_MIRROR:-http://deb.debian.org/debian}
# Bump when what the build makes changes, so cached builds are redone.
generation=3
if [ -s "$out/disk.qcow2" ] && [ "$(cat "$out/generation" 2>/dev/null)" = "$generation" ] && [ "${1:-}" != --force ]; then
  echo "[build-cloud-guest] $out exists (use --force to rebuild)" >&2; exit 0
fi
command -v mmdebstrap >/dev/null || { echo "[build-cloud-guest] mmdebstrap is missing (apt-get install mmdebstrap)" >&2; exit 1; }
work=$(mktemp -d /tmp/corral-cloud-guest.XXXXXX)
trap 'rm -rf "$work"' EXIT
root=$work/root

packages=(systemd-sysv udev dbus cloud-init qemu-guest-agent openssh-server sudo ifupdown isc-dhcp-client
  iproute2 netbase linux-image-cloud-amd64 initramfs-tools e2fsprogs)
# The guest's own settings, written into the tree after the packages are in.
cat > "$work/customize.sh" <<'SH'
set -e
r=$1
echo "/dev/vda / ext4 defaults,discard 0 1" > "$r/etc/fstab"
# cloud-init decides at the very start of boot whether a seed is attached: the CD-ROM's drivers must be in the
# initramfs so the seed is already visible then (else cloud-init disables itself for that boot).
printf '%s\n' virtio_pci virtio_blk virtio_scsi sr_mod >> "$r/etc/initramfs-tools/modules"
chroot "$r" update-initramfs -u -k all
# Each instance gets its own machine-id (and DHCP client id) on first boot.
: > "$r/etc/machine-id"; rm -f "$r/var/lib/dbus/machine-id"
# cloud-init only looks for the sources Corral provides, so a boot never waits on a metadata server.
cat > "$r/etc/cloud/cloud.cfg.d/90-corral.cfg" <<'EOF'
datasource_list: [NoCloud, ConfigDrive, None]
# ed25519 host keys only: RSA key generation alone costs seconds under emulation.
ssh_genkeytypes: [ed25519]
# The image's locale is already C.UTF-8 (minbase has no `locales` to make another).
locale: C.UTF-8
EOF
echo LANG=C.UTF-8 > "$r/etc/default/locale"
# Host keys are made per instance by cloud-init, never shared through the image.
rm -f "$r"/etc/ssh/ssh_host_*
# Nothing in the image needs these at boot; they only slow it down.
for unit in apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer e2scrub_reap.service fstrim.timer; do
  ln -sf /dev/null "$r/etc/systemd/system/$unit"
done
SH
echo "[build-cloud-guest] mmdebstrap bookworm (${#packages[@]} packages) from $mirror" >&2
mmdebstrap --quiet --mode=root --variant=minbase --include="$(IFS=,; echo "${packages[*]}")" \
  --customize-hook="sh $work/customize.sh \"\$1\"" \
  --customize-hook='rm -rf "$1"/var/cache/apt/archives/*.deb "$1"/var/lib/apt/lists/*' \
  bookworm "$root" "$mirror"

mkdir -p "$out.tmp"
kernel=$(ls "$root"/boot/vmlinuz-* | sort -V | tail -1)
kver=${kernel##*/vmlinuz-}
cp "$kernel" "$out.tmp/vmlinuz"
cp "$root/boot/initrd.img-$kver" "$out.tmp/initrd.img"
echo "root=/dev/vda rw console=ttyS0 quiet" > "$out.tmp/cmdline"
echo "$kver" > "$out.tmp/kernel-version"
# 3 GiB virtual, sparse: room for what a test installs; cloud-init grows the filesystem to a bigger disk.
truncate -s 3G "$work/disk.raw"
mkfs.ext4 -q -F -L cloudimg-rootfs -d "$root" "$work/disk.raw"
qemu-img convert -q -c -f raw -O qcow2 "$work/disk.raw" "$out.tmp/disk.qcow2"
echo "$generation" > "$out.tmp/generation"
rm -rf "$out"; mv "$out.tmp" "$out"
echo "[build-cloud-guest] $out: $(du -sh "$out" | cut -f1)" >&2
