#!/usr/bin/env bash
# PostgreSQL for Halo's SQL tool tests: install the server from Debian's packages, and start or stop a
# throwaway cluster that listens on 127.0.0.1 only.
#
#   scripts/postgres.sh install        install Debian's `postgresql` when the server binaries are missing
#                                      (needs root and apt-get; a no-op when they are present)
#   scripts/postgres.sh bindir         print the directory holding initdb/pg_ctl (exit 1 when absent)
#   scripts/postgres.sh start DIR      initdb a new cluster in DIR (must not exist or be empty), start
#                                      it on a free loopback port, print its DSN on stdout
#   scripts/postgres.sh stop DIR       stop the cluster in DIR (fast shutdown)
#
# PG_BINDIR overrides where the binaries are looked up. initdb and the server refuse to run as root,
# so as root they run as the `postgres` user (created by Debian's package), which then owns DIR.
# Trust authentication is fine here: the server listens on loopback and lives as long as one test run.
set -euo pipefail

user=halo  # the cluster's superuser, whatever OS user runs it

bindir() {
  if [ -n "${PG_BINDIR:-}" ]; then
    [ -x "$PG_BINDIR/initdb" ] && { echo "$PG_BINDIR"; return 0; }
    return 1
  fi
  # Debian keeps the server binaries out of PATH, one folder per major version: take the newest.
  local found
  found=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
  if [ -n "$found" ] && [ -x "$found/initdb" ]; then echo "$found"; return 0; fi
  if command -v initdb >/dev/null 2>&1; then dirname "$(command -v initdb)"; return 0; fi
  return 1
}

as_owner() {
  # Runs a server binary as the user that may own the cluster: `postgres` when we are root.
  if [ "$(id -u)" = 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

cmd_install() {
  if bindir >/dev/null; then return 0; fi
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "postgres.sh: PostgreSQL server binaries not found; install Debian's 'postgresql' package as root" \
      "(or run scripts/install.sh as root), or set PG_BINDIR" >&2
    return 1
  fi
  apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  bindir >/dev/null
}

cmd_start() {
  local dir=${1:?usage: postgres.sh start DIR}
  local bin port
  if ! bin=$(bindir); then
    echo "postgres.sh: PostgreSQL server binaries not found; run scripts/install.sh as root" \
      "(or scripts/postgres.sh install)" >&2
    return 1
  fi
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  if [ "$(id -u)" = 0 ]; then
    id postgres >/dev/null 2>&1 || { echo "postgres.sh: running as root needs a 'postgres' user" >&2; return 1; }
    chown postgres: "$dir"
    chmod 700 "$dir"
    if ! runuser -u postgres -- test -w "$dir"; then
      echo "postgres.sh: user postgres cannot reach $dir (a parent folder is private); pick a folder under /tmp" >&2
      return 1
    fi
  fi
  as_owner "$bin/initdb" -D "$dir/data" -U "$user" --auth=trust --encoding=UTF8 --no-locale >"$dir/initdb.log" 2>&1 \
    || { cat "$dir/initdb.log" >&2; return 1; }
  # A port can be taken between probing and binding; a few tries make that race harmless.
  for _ in 1 2 3 4 5; do
    port=$(free_port)
    if as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
      -o "-c listen_addresses=127.0.0.1 -p $port -k $dir -c fsync=off -c full_page_writes=off" start >/dev/null; then
      echo "host=127.0.0.1 port=$port user=$user dbname=postgres"
      return 0
    fi
  done
  cat "$dir/server.log" >&2
  return 1
}

cmd_stop() {
  local dir=${1:?usage: postgres.sh stop DIR}
  local bin
  bin=$(bindir) || return 1
  as_owner "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null
}

case "${1:-}" in
  install) cmd_install ;;
  bindir) bindir ;;
  start) cmd_start "${2:-}" ;;
  stop) cmd_stop "${2:-}" ;;
  *)
    echo "usage: scripts/postgres.sh install | bindir | start DIR | stop DIR" >&2
    exit 2
    ;;
esac
