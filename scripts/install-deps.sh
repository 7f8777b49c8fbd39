#!/usr/bin/env bash
# Installs every Debian package Hostel needs to build, run and test on Debian bookworm (as root).
# Idempotent: safe to run again.
set -euo pipefail

if [ "$(id -u)" != 0 ]; then
  echo "install-deps.sh: run as root (it installs Debian packages)" >&2
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive
src=/etc/apt/sources.list.d/hostel-bookworm-backports.list
if ! grep -rqs "bookworm-backports" /etc/apt/sources.list /etc/apt/sources.list.d/; then
  echo "deb http://deb.debian.org/debian bookworm-backports main" > "$src"
fi
apt-get update -qq

# QEMU 10 (and the guest agent the tiny guest carries) comes from bookworm-backports; the
# rest from bookworm.
apt-get install -y -qq -t bookworm-backports qemu-system-x86 qemu-utils qemu-guest-agent >/dev/null
apt-get install -y -qq \
  linux-image-cloud-amd64 busybox-static gzip xz-utils zstd kmod \
  iproute2 nftables dnsmasq-base postgresql procps ca-certificates build-essential pkg-config logrotate \
  ovmf genisoimage btrfs-progs util-linux mount isolinux syslinux syslinux-common systemd-boot-efi \
  dosfstools mtools mmdebstrap uidmap e2fsprogs fdisk openssh-client chromium \
  >/dev/null
# Node.js and npm fetch the browser consoles' packages (xterm.js, noVNC) and the test
# driver (playwright-core) from the npm registry; use the machine's own if it has one.
if ! command -v npm >/dev/null 2>&1; then
  apt-get install -y -qq nodejs npm >/dev/null
fi
(cd "$(dirname "$0")/../web" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)

# A Rust toolchain: the one already installed (rustup's), else Debian's current one
# (bookworm's plain `cargo` is too old; the *-web packages carry a current Rust).
export PATH="$HOME/.cargo/bin:$PATH"
if ! command -v cargo >/dev/null 2>&1; then
  apt-get install -y -qq cargo-web rustc-web rustfmt-web rust-web-clippy >/dev/null
fi
# schemathesis (`st`), which the API conformance test runs against the OpenAPI document,
# from PyPI into a venv of its own (pinned: its checks change between releases).
st_version=4.32.5
venv=/opt/hostel-venv
if ! "$venv/bin/st" --version 2>/dev/null | grep -q " $st_version\$"; then
  if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' 2>/dev/null; then
    apt-get install -y -qq python3 python3-venv python3-pip >/dev/null
  fi
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "schemathesis==$st_version"
fi
echo "install-deps.sh: all packages present"
