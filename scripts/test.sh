#!/usr/bin/env bash
# The whole test suite, as CI runs it: lints, then every test against a real PostgreSQL that this script
# installs (if missing), starts on a spare port, and stops at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/pg.sh

cargo fmt --check
cargo clippy --all-targets --locked -- -D warnings

pg_start
trap pg_stop EXIT
cargo test --locked --all-targets "$@"
