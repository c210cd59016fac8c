#!/usr/bin/env bash
# Runs every fuzz target of fuzz/ (cargo-fuzz) for a bounded time: scripts/fuzz.sh [seconds-per-target].
#
# - Installs cargo-fuzz when missing (`cargo install --locked cargo-fuzz`).
# - Uses the nightly toolchain when one is installed, else the stable one with RUSTC_BOOTSTRAP=1 (cargo-fuzz
#   passes unstable rustc flags); nothing is downloaded.
# - Builds without a sanitizer (FUZZ_SANITIZER=address to get ASan: Regent forbids unsafe code, and an
#   ASan build of the whole node takes several times longer), in release mode (opt-level 1, see
#   fuzz/Cargo.toml) with debug assertions and 16 codegen units (cargo-fuzz's default of 1 makes the build of
#   the node's dependency tree far longer).
# - Each target starts from its committed seeds (fuzz/corpus/<target>) and writes what it finds to a scratch
#   corpus, so the committed seeds never change; a crash leaves its input in fuzz/artifacts/<target>/ and fails.
# Environment: FUZZ_TARGETS="a b" to run only some.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"
sanitizer="${FUZZ_SANITIZER:-none}"
# The same flags for build and run, or `cargo fuzz run` builds again.
flags=(--fuzz-dir fuzz --sanitizer "$sanitizer" --debug-assertions --codegen-units 16)

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz.sh: installing cargo-fuzz" >&2
  cargo install --locked cargo-fuzz
fi

toolchain=()
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  toolchain=(+nightly)
else
  echo "fuzz.sh: no nightly toolchain; using stable with RUSTC_BOOTSTRAP=1" >&2
  export RUSTC_BOOTSTRAP=1
fi

targets="${FUZZ_TARGETS:-$(cargo "${toolchain[@]}" fuzz list --fuzz-dir fuzz)}"
build_started=$(date +%s)
cargo "${toolchain[@]}" fuzz build "${flags[@]}"
echo "fuzz.sh: built the targets in $(( $(date +%s) - build_started )) s" >&2

scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
for target in $targets; do
  mkdir -p "$scratch/$target"
  echo "fuzz.sh: $target for ${seconds} s" >&2
  log="$scratch/$target.log"
  if ! cargo "${toolchain[@]}" fuzz run "${flags[@]}" "$target" \
    "$scratch/$target" "fuzz/corpus/$target" -- \
    -max_total_time="$seconds" -max_len=65536 -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1; then
    tail -n 60 "$log" >&2
    echo "fuzz.sh: $target FAILED; the input is in fuzz/artifacts/$target/" >&2
    exit 1
  fi
  grep -E '^(stat::number_of_executed_units|stat::peak_rss_mb|Done )' "$log" | tr '\n' ' ' >&2; echo >&2
done
echo "fuzz.sh: every target ran ${seconds} s without a crash" >&2
