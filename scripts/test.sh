#!/usr/bin/env bash
# Runs the whole test suite: formatting, lints, unit and integration tests (real QEMU
# guests under TCG). Run as root on Debian bookworm; installs what it needs first.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh
export PATH="$HOME/.cargo/bin:$PATH"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked --no-fail-fast -- --test-threads 2
# A representative subset again with every daemon on a PostgreSQL server of its own (the
# store's own tests run on both databases already), the chaos harness among them (a
# minute of it: its crash points walk and the invariants after each kill).
HOSTEL_TEST_DATABASE=postgres HOSTEL_CHAOS_MINUTES=1 cargo test -p hostel --locked --no-fail-fast \
  --test accounts --test lifecycle --test readopt --test chaos -- --test-threads 2
