#!/usr/bin/env bash
# Runs the benchmark harness end to end: a throw-away PostgreSQL (scripts/pg.sh, port 55450 unless
# REGENT_PG_PORT is set), release builds of the node and the harness, then regent-bench with the given flags
# (default: --quick). Results: target/regent-bench/results.json, and the tables on stdout.
#
#   bench/harness/run.sh            # quick preset (< 3 min on 2 cores, after the build)
#   bench/harness/run.sh --full     # every shape × concurrency × payload × snapshot setting (~45 min)
#   bench/harness/run.sh --repeat 3 [flags]   # N runs (results-1.json ...), then their medians (median.py)
set -euo pipefail
cd "$(dirname "$0")/../.."
export REGENT_PG_PORT=${REGENT_PG_PORT:-55450}
# shellcheck source=../../scripts/pg.sh
source scripts/pg.sh
pg_start
trap pg_stop EXIT
cargo build --release --bin regent
cargo build --release -p regent-bench
repeat=1
if [ "${1:-}" = --repeat ]; then
  repeat=${2:?--repeat needs a count}
  shift 2
fi
args=("$@")
if [ ${#args[@]} -eq 0 ]; then
  args=(--quick)
elif [ "${args[0]}" = --full ]; then
  args=("${args[@]:1}")
fi
if [ "$repeat" -eq 1 ]; then
  target/release/regent-bench --pg-url "$REGENT_TEST_DATABASE_URL" "${args[@]}"
  exit
fi
outs=()
for k in $(seq 1 "$repeat"); do
  out=target/regent-bench/results-$k.json
  target/release/regent-bench --pg-url "$REGENT_TEST_DATABASE_URL" "${args[@]}" --out "$out"
  outs+=("$out")
done
python3 bench/harness/median.py "${outs[@]}"
