#!/usr/bin/env bash
# Runs a command (the README's test command) with a throwaway PostgreSQL
# cluster, and VANTAGE_TEST_POSTGRES naming it, for the store's PostgreSQL
# tests (coordinator/src/store/postgres/tests.rs):
#
#   tests/with-postgres.sh cargo test --workspace
#
# The cluster lives in a temporary directory: initdb (as the `postgres`
# system user when run as root, since PostgreSQL refuses to run as root;
# as you otherwise), an ICU default collation (so the tests show that key
# order does not depend on the cluster's locale), password authentication
# on 127.0.0.1 only, on the first free port from 55432. It is stopped and
# deleted when the command ends, however it ends.
#
# VANTAGE_TEST_POSTGRES already set: that server is used and nothing is
# started. No PostgreSQL installed (apt-get install -y postgresql): the
# command runs without it, and the PostgreSQL tests say SKIPPED (and fail
# under CI=true).
set -euo pipefail

[ "$#" -gt 0 ] || { echo "usage: $0 COMMAND [ARG...]" >&2; exit 2; }

if [ -n "${VANTAGE_TEST_POSTGRES:-}" ]; then
  exec "$@"
fi

bindir=""
for candidate in /usr/lib/postgresql/*/bin; do
  [ -x "$candidate/initdb" ] && bindir=$candidate
done
if [ -z "$bindir" ] && command -v initdb >/dev/null; then
  bindir=$(dirname "$(command -v initdb)")
fi
if [ -z "$bindir" ]; then
  echo "with-postgres: no initdb found (apt-get install -y postgresql); running without PostgreSQL" >&2
  exec "$@"
fi

dir=$(mktemp -d -t vantage-pg.XXXXXX)
owner=()
if [ "$(id -u)" = 0 ]; then
  id postgres >/dev/null 2>&1 || { echo "with-postgres: running as root needs the postgres system user" >&2; exit 2; }
  chown postgres: "$dir"
  owner=(runuser -u postgres --)
fi
run_as_owner() { "${owner[@]}" "$@"; }

# shellcheck disable=SC2317  # called by the EXIT trap
stop() {
  if [ -f "$dir/data/postmaster.pid" ]; then
    run_as_owner "$bindir/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null 2>&1 || true
  fi
  rm -rf "$dir"
}
trap stop EXIT

password=$(od -An -N18 -tx1 /dev/urandom | tr -d ' \n')
printf '%s\n' "$password" > "$dir/password"
chmod 600 "$dir/password"
[ "${#owner[@]}" -eq 0 ] || chown postgres: "$dir/password"

run_as_owner "$bindir/initdb" -D "$dir/data" -U vantage --pwfile="$dir/password" \
  --auth=scram-sha-256 --encoding=UTF8 --locale=C.UTF-8 \
  --locale-provider=icu --icu-locale=en-US >"$dir/initdb.log" 2>&1 \
  || { cat "$dir/initdb.log" >&2; exit 1; }

port=""
for candidate in $(seq 55432 55532); do
  if ! (exec 3<>"/dev/tcp/127.0.0.1/$candidate") 2>/dev/null; then
    port=$candidate
    break
  fi
done
[ -n "$port" ] || { echo "with-postgres: no free port in 55432-55532" >&2; exit 1; }

# -w waits until the server accepts connections: the readiness signal.
run_as_owner "$bindir/pg_ctl" -D "$dir/data" -w -t 60 -l "$dir/server.log" \
  -o "-c listen_addresses=127.0.0.1 -c port=$port -c unix_socket_directories=$dir" start >/dev/null \
  || { cat "$dir/server.log" >&2; exit 1; }
"$bindir/postgres" --version

export VANTAGE_TEST_POSTGRES="postgres://vantage:$password@127.0.0.1:$port/postgres"
echo "with-postgres: a throwaway cluster on 127.0.0.1:$port (VANTAGE_TEST_POSTGRES is set)"
status=0
"$@" || status=$?
exit "$status"
