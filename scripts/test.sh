#!/usr/bin/env bash
# The whole test suite, as CI runs it: lints, then every test against a real PostgreSQL that this script
# installs (if missing), starts on a spare port, and stops at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/pg.sh

# Headless Chromium for the admin page test (tests/admin_page.rs): Debian's package, installed when missing.
if ! command -v chromium >/dev/null 2>&1; then
  echo "test.sh: installing chromium from Debian's packages" >&2
  sudo_=(); [ "$(id -u)" = 0 ] || sudo_=(sudo)
  "${sudo_[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_[@]}" apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
fi

cargo fmt --check
cargo clippy --all-targets --locked -- -D warnings
# Licences, bans and sources of the dependency tree (advisories when a database is present): scripts/deny.sh.
bash scripts/deny.sh

pg_start
trap pg_stop EXIT
cargo test --locked --all-targets "$@"

# Fuzz targets (fuzz/, its own workspace): every target for 15 s from the committed seeds. About 6 min on 2 cores
# with the cargo-fuzz install and the build (docs/bad-input.md).
scripts/fuzz.sh "${REGENT_FUZZ_SECONDS:-15}"
