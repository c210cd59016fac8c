#!/usr/bin/env bash
# Supply-chain checks with cargo-deny (policy in deny.toml, see docs/security.md "Supply chain"):
# - licenses, bans, sources: always; a violation fails.
# - advisories: only when a RustSec advisory database is on this machine (it is fetched from GitHub, which CI
#   cannot reach); then it runs offline and a vulnerable or yanked dependency fails. Otherwise it is skipped, and
#   this script says so.
# cargo-deny itself is built from crates.io (`cargo install --locked`, pinned) when missing: a few minutes, once
# per machine.
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_DENY_VERSION=0.20.2
if [ "$(cargo deny --version 2>/dev/null)" != "cargo-deny $CARGO_DENY_VERSION" ]; then
  echo "deny.sh: installing cargo-deny $CARGO_DENY_VERSION from crates.io" >&2
  cargo install --locked --quiet cargo-deny --version "$CARGO_DENY_VERSION"
fi

cargo deny --log-level error check licenses bans sources

db_root="${CARGO_HOME:-$HOME/.cargo}/advisory-dbs"
if compgen -G "$db_root/*/advisories" >/dev/null 2>&1 || compgen -G "$db_root/*/crates" >/dev/null 2>&1; then
  cargo deny --offline --log-level error check advisories
else
  echo "deny.sh: advisories skipped: no advisory database under $db_root (run \`cargo deny fetch\` where GitHub is reachable, or copy one there)" >&2
fi
