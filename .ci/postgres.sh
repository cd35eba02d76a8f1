#!/usr/bin/env bash
# Make sure a PostgreSQL server answers at 127.0.0.1:5432 with trust auth for `postgres`:
# start the machine's cluster if it is stopped, install one (Debian) if there is none.
# With --drop-test-databases: drop the per-test databases the test suites created.
set -euo pipefail

psql_ok() { psql -h 127.0.0.1 -U postgres -d postgres -tAc "SELECT 1" >/dev/null 2>&1; }

if [ "${1:-}" = "--drop-test-databases" ]; then
  psql -h 127.0.0.1 -U postgres -d postgres -tAc \
    "SELECT datname FROM pg_database WHERE datname LIKE 'repocrypt\_test\_%' OR datname LIKE 'repocrypt\_dur\_%'" |
    while read -r db; do
      [ -n "$db" ] && psql -h 127.0.0.1 -U postgres -d postgres -qc "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)"
    done
  exit 0
fi

if command -v psql >/dev/null && psql_ok; then
  echo "PostgreSQL is running"
  exit 0
fi

if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
  echo "installing PostgreSQL"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq postgresql >/dev/null
fi

version="$(ls /etc/postgresql | sort -V | tail -n1)"
conf="/etc/postgresql/$version/main"
# Trust local TCP connections (a throwaway CI cluster) and listen on 127.0.0.1.
if ! grep -q "repocrypt-ci" "$conf/pg_hba.conf"; then
  sed -i '1i host all all 127.0.0.1/32 trust # repocrypt-ci\nlocal all all trust # repocrypt-ci' "$conf/pg_hba.conf"
fi
grep -q "^listen_addresses" "$conf/postgresql.conf" || echo "listen_addresses = '127.0.0.1'" >> "$conf/postgresql.conf"

echo "starting PostgreSQL $version"
pg_ctlcluster --skip-systemctl-redirect "$version" main start || pg_ctlcluster --skip-systemctl-redirect "$version" main restart
for _ in $(seq 30); do
  psql_ok && { echo "PostgreSQL is running"; exit 0; }
  sleep 1
done
echo "PostgreSQL did not come up at 127.0.0.1:5432" >&2
exit 1
