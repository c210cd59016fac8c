#!/usr/bin/env bash
# Starts a throw-away PostgreSQL server for tests and benchmarks, installing Debian's package when it is missing.
#
#   source scripts/pg.sh && pg_start   # exports REGENT_TEST_DATABASE_URL, PG_DIR
#   pg_stop
#
# The port defaults to 55433 (never the default 5432, so a developer's own server is not touched);
# set REGENT_PG_PORT to change it. fsync stays on: durability is part of what the tests check.

pg_bin_dir() {
  local d
  for d in /usr/lib/postgresql/*/bin; do
    [ -x "$d/initdb" ] && { echo "$d"; return 0; }
  done
  command -v initdb >/dev/null 2>&1 && { dirname "$(command -v initdb)"; return 0; }
  return 1
}

pg_install() {
  pg_bin_dir >/dev/null && return 0
  echo "pg.sh: installing PostgreSQL from Debian's packages" >&2
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  else
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  fi
}

pg_start() {
  pg_install || return 1
  local bin port
  bin=$(pg_bin_dir) || return 1
  port=${REGENT_PG_PORT:-55433}
  PG_DIR=$(mktemp -d /tmp/regent-pg.XXXXXX)
  local as=()
  if [ "$(id -u)" = 0 ]; then
    chown postgres "$PG_DIR"
    as=(runuser -u postgres --)
  fi
  "${as[@]}" "$bin/initdb" -D "$PG_DIR/data" -A trust -U postgres >/dev/null || return 1
  "${as[@]}" "$bin/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/log" -w \
    -o "-p $port -k $PG_DIR -c listen_addresses=127.0.0.1 -c fsync=on -c max_connections=500" start >/dev/null || {
    cat "$PG_DIR/log" >&2
    return 1
  }
  export PG_DIR PG_BIN="$bin" PG_AS="${as[*]}"
  export REGENT_TEST_DATABASE_URL="postgres://postgres@127.0.0.1:$port/postgres"
  echo "pg.sh: PostgreSQL up at $REGENT_TEST_DATABASE_URL (data in $PG_DIR)" >&2
}

pg_stop() {
  [ -n "${PG_DIR:-}" ] || return 0
  $PG_AS "$PG_BIN/pg_ctl" -D "$PG_DIR/data" stop -m fast >/dev/null 2>&1
  rm -rf "$PG_DIR"
}
