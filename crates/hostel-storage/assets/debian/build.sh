#!/bin/bash
# Builds a bootable Debian disk image, run by the agent as the unprivileged build user
# (never as root): mmdebstrap --mode=unshare makes the root filesystem inside a user
# namespace (the user's /etc/subuid and /etc/subgid ranges), and the disk is put
# together from files without mounting anything.
#
#   OUT=DIR SUITE=bookworm MIRROR=URL SIZE_MB=4096 PACKAGES="a b" [http_proxy=URL] bash build.sh
#
# The disk: an MBR with syslinux's boot code; partition 1 a FAT32 boot partition
# holding the kernel and initrd, syslinux (BIOS) and systemd-boot as the removable-media
# loader (UEFI); partition 2 the ext4 root. cloud-init configures the VM at first boot
# from its NoCloud seed. Prints `PROGRESS <fraction> <message>` lines; the result is
# $OUT/disk.qcow2.
set -euo pipefail
export PATH=/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C.UTF-8
: "${OUT:?}" "${SUITE:?}" "${MIRROR:?}" "${SIZE_MB:?}"
PACKAGES=${PACKAGES:-}
BOOT_MB=256
ROOT_MB=$((SIZE_MB - BOOT_MB - 2))
progress() { echo "PROGRESS $1 $2"; }

W=$OUT/work
mkdir -p "$W"
cd "$OUT"

DISKID=$(od -An -N4 -tx4 /dev/urandom | tr -d ' ')
FATID=$(od -An -N4 -tx4 /dev/urandom | tr -d ' ')
CMDLINE="root=PARTUUID=$DISKID-02 ro console=ttyS0,115200 net.ifnames=0"

# Runs inside mmdebstrap's namespace as its root, $1 = the new root filesystem.
cat > "$W/customize.sh" <<HOOK
#!/bin/sh
set -e
R="\$1"
echo debian > "\$R/etc/hostname"
printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n' > "\$R/etc/hosts"
cat > "\$R/etc/fstab" <<FSTAB
PARTUUID=$DISKID-02 / ext4 errors=remount-ro 0 1
PARTUUID=$DISKID-01 /boot/efi vfat umask=0077,nofail 0 2
FSTAB
mkdir -p "\$R/boot/efi" "\$R/etc/kernel/postinst.d" "\$R/etc/initramfs/post-update.d"
# A newer kernel or initrd is copied onto the boot partition, which both loaders read.
cat > "\$R/usr/local/sbin/update-bootpart" <<'SH'
#!/bin/sh
set -e
ESP=/boot/efi
mountpoint -q "\$ESP" || exit 0
V=\$(ls /boot/vmlinuz-* 2>/dev/null | sed 's|/boot/vmlinuz-||' | sort -V | tail -n1)
[ -n "\$V" ] && [ -e "/boot/initrd.img-\$V" ] || exit 0
cp "/boot/vmlinuz-\$V" "\$ESP/vmlinuz.new" && mv "\$ESP/vmlinuz.new" "\$ESP/vmlinuz"
cp "/boot/initrd.img-\$V" "\$ESP/initrd.img.new" && mv "\$ESP/initrd.img.new" "\$ESP/initrd.img"
SH
chmod 755 "\$R/usr/local/sbin/update-bootpart"
for d in kernel/postinst.d initramfs/post-update.d; do
  printf '#!/bin/sh\nexec /usr/local/sbin/update-bootpart\n' > "\$R/etc/\$d/zz-update-bootpart"
  chmod 755 "\$R/etc/\$d/zz-update-bootpart"
done
cat > "\$R/etc/cloud/cloud.cfg.d/90-hostel.cfg" <<'CC'
datasource_list: [ NoCloud, None ]
system_info:
  network:
    renderers: ['networkd']
locale: C.UTF-8
ssh_genkeytypes: [ed25519, ecdsa]
grub_dpkg:
  enabled: false
CC
chroot "\$R" systemctl enable systemd-networkd.service
# A VM without a NIC must not wait minutes for a network that will never come.
mkdir -p "\$R/etc/systemd/system/systemd-networkd-wait-online.service.d"
printf '[Service]\nExecStart=\nExecStart=/lib/systemd/systemd-networkd-wait-online --any --timeout=15\n' \
  > "\$R/etc/systemd/system/systemd-networkd-wait-online.service.d/hostel.conf"
rm -f "\$R"/etc/ssh/ssh_host_*
echo uninitialized > "\$R/etc/machine-id"
rm -f "\$R/var/lib/dbus/machine-id"
rm -rf "\$R"/var/lib/apt/lists/* "\$R"/var/cache/apt/*.bin
HOOK
chmod 755 "$W/customize.sh"

progress 0.02 "mmdebstrap $SUITE from $MIRROR (unprivileged, in a user namespace)"
INCLUDE="linux-image-cloud-amd64,systemd-sysv,udev,dbus,openssh-server,cloud-init,cloud-guest-utils,e2fsprogs,iproute2,netbase,sudo,zstd,ca-certificates"
for p in $PACKAGES; do INCLUDE="$INCLUDE,$p"; done
SECURITY="deb ${MIRROR%/debian}/debian-security $SUITE-security main"
PROXY=()
if [ -n "${http_proxy:-}" ]; then PROXY=(--aptopt="Acquire::http::Proxy \"$http_proxy\""); fi
mmdebstrap --mode=unshare --variant=minbase --format=tar --include="$INCLUDE" "${PROXY[@]}" \
  --dpkgopt='path-exclude=/usr/share/man/*' \
  --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
  --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-include=/usr/share/locale/locale.alias' \
  --dpkgopt='path-exclude=/usr/share/info/*' \
  --essential-hook='mkdir -p "$1/etc/initramfs-tools/conf.d"; printf "RESUME=none\nCOMPRESS=zstd\n" > "$1/etc/initramfs-tools/conf.d/hostel"' \
  --customize-hook="$W/customize.sh" \
  "$SUITE" "$W/rootfs.tar" \
  "deb $MIRROR $SUITE main" "deb $MIRROR $SUITE-updates main" "$SECURITY" 2>&1 |
  while IFS= read -r line; do
    case "$line" in
      "I: downloading packages"*) progress 0.15 "downloading packages" ;;
      "I: extracting archives"*) progress 0.3 "extracting packages" ;;
      "I: installing essential packages"*) progress 0.35 "installing essential packages" ;;
      "I: installing remaining packages"*) progress 0.45 "installing packages" ;;
      "I: running --customize-hook"*) progress 0.65 "configuring the system" ;;
      *) echo "$line" >&2 ;;
    esac
  done
[ "${PIPESTATUS[0]}" = 0 ] || { echo "mmdebstrap failed" >&2; exit 1; }

progress 0.7 "making the root filesystem"
# In a user namespace that maps the build user to 0 and its subordinate ids to 1..,
# the files keep their owners, so mkfs.ext4 -d records root-owned files as uid 0.
unshare --user --map-auto --map-root-user sh -euc '
  W=$1; SIZE=$2
  mkdir "$W/root" "$W/kernel"
  tar -C "$W/root" --numeric-owner --exclude="./dev/*" -xpf "$W/rootfs.tar"
  V=$(ls "$W/root/boot/" | sed -n "s/^vmlinuz-//p" | sort -V | tail -n1)
  cp "$W/root/boot/vmlinuz-$V" "$W/kernel/vmlinuz"
  cp "$W/root/boot/initrd.img-$V" "$W/kernel/initrd.img"
  mkfs.ext4 -q -F -L root -d "$W/root" "$W/root.img" "${SIZE}M"
  rm -rf "$W/root"
' sh "$W" "$ROOT_MB"
rm -f "$W/rootfs.tar"

progress 0.85 "installing the bootloaders (syslinux for BIOS, systemd-boot for UEFI)"
P1_START=2048
P1_SECT=$((BOOT_MB * 2048))
P2_START=$((P1_START + P1_SECT))
P2_SECT=$((ROOT_MB * 2048))
DISK_SECT=$((P2_START + P2_SECT + 2048))
mkfs.vfat -F 32 -s 1 -n BOOT -i "$FATID" -h $P1_START -C "$W/boot.img" $((P1_SECT / 2)) >/dev/null
export MTOOLS_SKIP_CHECK=1
B=(-i "$W/boot.img")
mmd "${B[@]}" ::/EFI ::/EFI/BOOT ::/loader ::/loader/entries
mcopy "${B[@]}" "$W/kernel/vmlinuz" "$W/kernel/initrd.img" ::/
printf 'SERIAL 0 115200\nDEFAULT debian\nPROMPT 0\nTIMEOUT 0\nLABEL debian\n  LINUX /vmlinuz\n  INITRD /initrd.img\n  APPEND %s\n' \
  "$CMDLINE" > "$W/syslinux.cfg"
mcopy "${B[@]}" "$W/syslinux.cfg" ::/syslinux.cfg
syslinux --install "$W/boot.img"
mcopy "${B[@]}" /usr/lib/systemd/boot/efi/systemd-bootx64.efi ::/EFI/BOOT/BOOTX64.EFI
printf 'default debian.conf\ntimeout 0\n' > "$W/loader.conf"
printf 'title Debian\nlinux /vmlinuz\ninitrd /initrd.img\noptions %s\n' "$CMDLINE" > "$W/debian.conf"
mcopy "${B[@]}" "$W/loader.conf" ::/loader/loader.conf
mcopy "${B[@]}" "$W/debian.conf" ::/loader/entries/debian.conf

truncate -s $((DISK_SECT * 512)) "$W/disk.raw"
sfdisk -q "$W/disk.raw" <<PT
label: dos
label-id: 0x$DISKID
unit: sectors
start=$P1_START, size=$P1_SECT, type=ef, bootable
start=$P2_START, size=$P2_SECT, type=83
PT
dd if=/usr/lib/syslinux/mbr/mbr.bin of="$W/disk.raw" bs=440 count=1 conv=notrunc status=none
dd if="$W/boot.img" of="$W/disk.raw" bs=512 seek=$P1_START conv=notrunc,sparse status=none
dd if="$W/root.img" of="$W/disk.raw" bs=512 seek=$P2_START conv=notrunc,sparse status=none
rm -f "$W/boot.img" "$W/root.img"

progress 0.95 "converting to qcow2"
qemu-img convert -f raw -O qcow2 "$W/disk.raw" "$OUT/disk.qcow2"
rm -rf "$W"
progress 1.0 "built"
