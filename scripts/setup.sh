#!/usr/bin/env bash
# Installs what Hostel needs, builds it, installs the binary and starts Hostel all-in-one
# (controller + local agent + SQLite) with the bootable `tiny` image ready.
# Run as root on Debian bookworm. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release --locked -p hostel
install -m 0755 target/release/hostel /usr/local/bin/hostel

data_dir=${HOSTEL_DATA_DIR:-/var/lib/hostel}
mkdir -p "$data_dir"
config=${HOSTEL_CONFIG:-${XDG_CONFIG_HOME:-$HOME/.config}/hostel/client.toml}
if [ -f "$data_dir/hostel.lock" ] && pid=$(cat "$data_dir/hostel.lock" 2>/dev/null) \
   && [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
  echo "setup: hostel is already running (pid $pid)"
else
  rm -f "$config"
  nohup /usr/local/bin/hostel up --data-dir "$data_dir" >>"$data_dir/up.out" 2>&1 &
  echo "setup: started hostel up (pid $!); waiting until it is ready"
  for _ in $(seq 1 600); do
    [ -f "$config" ] && break
    if ! kill -0 "$!" 2>/dev/null; then
      echo "setup: hostel up exited; see $data_dir/up.out" >&2
      tail -20 "$data_dir/up.out" >&2
      exit 1
    fi
    sleep 0.5
  done
  [ -f "$config" ] || { echo "setup: hostel up was not ready in 5 minutes" >&2; exit 1; }
fi
hostel info
hostel image list
url=$(sed -n 's/^url = "\(.*\)"/\1/p' "$config")
echo
echo "Ready. The web UI: $url/ (user admin; first password in $data_dir/initial-admin-password)"
echo "Or try: hostel create first --image tiny && hostel console first"
