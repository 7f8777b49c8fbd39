#!/usr/bin/env bash
# Builds Hostel's Debian package, target/debian/hostel_VERSION_ARCH.deb: the binary, the
# systemd units (hostel, hostel-controller, hostel-agent), /etc/hostel/hostel.toml, the
# users made in postinst, logrotate, bash and zsh completions, man pages, and the browser
# consoles' npm packages. Install it with `apt-get install ./target/debian/hostel_*.deb`.
#
#   bash scripts/package.sh [--binary FILE] [--version VERSION] [--out DIR] [--fast]
#
# --binary packages a hostel binary already built (default: `cargo build --release`);
# --version overrides the workspace's version (the upgrade test builds two); --fast
# compresses little (gzip -1 instead of xz), for tests.
set -euo pipefail
cd "$(dirname "$0")/.."

binary="" version="" out=target/debian compress=(-Zxz -z6)
while [ $# -gt 0 ]; do
  case $1 in
    --binary) binary=$2; shift 2 ;;
    --version) version=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --fast) compress=(-Zgzip -z1); shift ;;
    *) echo "usage: bash scripts/package.sh [--binary FILE] [--version VERSION] [--out DIR] [--fast]" >&2; exit 2 ;;
  esac
done
if [ -z "$binary" ]; then
  export PATH="$HOME/.cargo/bin:$PATH"
  cargo build --release --locked -p hostel
  binary=target/release/hostel
fi
[ -x "$binary" ] || { echo "package.sh: $binary is not an executable" >&2; exit 1; }
version=${version:-$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)}
arch=$(dpkg --print-architecture)
web=web/node_modules
for p in @novnc/novnc @xterm/xterm @xterm/addon-fit htmx.org; do
  [ -d "$web/$p" ] || { echo "package.sh: $web/$p is missing: run \`npm ci\` in web/ (scripts/install-deps.sh does)" >&2; exit 1; }
done

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
root=$stage/hostel
install -d "$root/DEBIAN" "$root/usr/bin" "$root/lib/systemd/system" "$root/etc/hostel" \
  "$root/etc/logrotate.d" "$root/usr/lib/hostel" "$root/usr/share/bash-completion/completions" \
  "$root/usr/share/zsh/vendor-completions" "$root/usr/share/man/man1" \
  "$root/usr/share/hostel/web/@xterm" "$root/usr/share/doc/hostel"

# The binary without its debug info, as Debian ships binaries.
objcopy --strip-debug "$binary" "$root/usr/bin/hostel"
chmod 0755 "$root/usr/bin/hostel"
install -m 0644 packaging/systemd/*.service "$root/lib/systemd/system/"
install -m 0644 packaging/hostel.toml "$root/etc/hostel/hostel.toml"
install -m 0644 packaging/logrotate "$root/etc/logrotate.d/hostel"
install -m 0755 packaging/hostel-service "$root/usr/lib/hostel/hostel-service"
"$binary" completions bash >"$root/usr/share/bash-completion/completions/hostel"
"$binary" completions zsh >"$root/usr/share/zsh/vendor-completions/_hostel"
"$binary" manpages "$root/usr/share/man/man1"
gzip -9n "$root"/usr/share/man/man1/*.1
cp -r "$web/@novnc" "$root/usr/share/hostel/web/"
cp -r "$web/@xterm/xterm" "$web/@xterm/addon-fit" "$root/usr/share/hostel/web/@xterm/"
cp -r "$web/htmx.org" "$root/usr/share/hostel/web/"
install -m 0644 README.md "$root/usr/share/doc/hostel/README.md"
cp docs/*.md "$root/usr/share/doc/hostel/"
cat >"$root/usr/share/doc/hostel/copyright" <<COPYRIGHT
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: hostel
License: Apache-2.0
 On Debian systems the full text is in /usr/share/common-licenses/Apache-2.0.
COPYRIGHT
for s in postinst prerm postrm; do install -m 0755 "packaging/debian/$s" "$root/DEBIAN/$s"; done
printf '%s\n' /etc/hostel/hostel.toml /etc/logrotate.d/hostel >"$root/DEBIAN/conffiles"
cat >"$root/DEBIAN/control" <<CONTROL
Package: hostel
Version: $version
Architecture: $arch
Maintainer: Hostel developers <hostel@localhost>
Section: admin
Priority: optional
Installed-Size: $(du -sk --exclude=DEBIAN "$root" | cut -f1)
Depends: qemu-system-x86 (>= 1:10), qemu-utils, iproute2, nftables, dnsmasq-base, passwd, procps, util-linux, mount, kmod, e2fsprogs, fdisk, gzip, xz-utils, zstd, linux-image-cloud-amd64, busybox-static
Recommends: qemu-guest-agent, logrotate, ovmf, genisoimage, isolinux, syslinux, syslinux-common, dosfstools, mtools, mmdebstrap, uidmap, btrfs-progs, systemd-boot-efi
Suggests: postgresql
Description: self-service virtual machine hosting
 Members of a community create and run their own VMs on the web or from the
 command line, on one host or many: QEMU underneath, KVM where the host really
 has it, TCG otherwise. hostel.service runs everything on one machine;
 hostel-controller.service and hostel-agent.service split it over a cluster.
CONTROL

mkdir -p "$out"
deb="$out/hostel_${version}_${arch}.deb"
dpkg-deb --root-owner-group "${compress[@]}" --build "$root" "$deb" >/dev/null
echo "$deb"
