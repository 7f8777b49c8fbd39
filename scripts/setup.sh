#!/usr/bin/env bash
# Installs what Hostel needs, builds its Debian package, installs it and starts its unit:
# `hostel up` all-in-one (controller + local agent + SQLite) with the bootable `tiny`
# image ready. Run as root on Debian bookworm. Idempotent: run it again to upgrade (the
# daemon restarts; running VMs run on and are re-adopted).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh
export PATH="$HOME/.cargo/bin:$PATH"
deb=$(bash scripts/package.sh | tail -n 1)

data_dir=/var/lib/hostel
config=/root/.config/hostel/client.toml
# An older setup.sh installed /usr/local/bin/hostel and ran `hostel up` under nohup: stop
# that daemon (its VMs run on; the unit's daemon re-adopts them) and remove the binary.
if [ -x /usr/local/bin/hostel ]; then
  pid=$(cat "$data_dir/hostel.lock" 2>/dev/null || true)
  if [ -n "$pid" ] && [ "$(readlink "/proc/$pid/exe" 2>/dev/null)" = /usr/local/bin/hostel ]; then
    echo "setup: stopping the hostel up an older setup started (pid $pid)"
    kill -TERM "$pid"
    while kill -0 "$pid" 2>/dev/null; do sleep 0.2; done
  fi
  rm -f /usr/local/bin/hostel
fi

export DEBIAN_FRONTEND=noninteractive
# Where systemd runs, a first install enables and starts hostel.service; an upgrade
# restarts it.
HOSTEL_NO_START=1 apt-get install -y -qq --reinstall "$(realpath "$deb")" >/dev/null
if ! /usr/lib/hostel/hostel-service status hostel >/dev/null; then
  rm -f "$config"
  /usr/lib/hostel/hostel-service start hostel
fi
echo "setup: waiting until hostel is ready"
for _ in $(seq 1 600); do
  [ -f "$config" ] && hostel list >/dev/null 2>&1 && break
  if ! /usr/lib/hostel/hostel-service status hostel >/dev/null; then
    echo "setup: hostel exited; see /var/log/hostel/hostel.log and $data_dir/hostel.log" >&2
    tail -n 20 /var/log/hostel/hostel.log "$data_dir/hostel.log" >&2 || true
    exit 1
  fi
  sleep 0.5
done
hostel list >/dev/null 2>&1 || { echo "setup: hostel was not ready in 5 minutes" >&2; exit 1; }
hostel info
hostel image list
url=$(sed -n 's/^url = "\(.*\)"/\1/p' "$config")
echo
echo "Ready. The web UI: $url/ (user admin; first password in $data_dir/initial-admin-password)"
echo "Or try: hostel create first --image tiny && hostel console first"
echo "The service: systemctl status hostel (or /usr/lib/hostel/hostel-service status hostel"
echo "where systemd is not the init); settings in /etc/hostel/hostel.toml."
