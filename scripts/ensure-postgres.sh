#!/usr/bin/env bash
# Make sure PostgreSQL answers at $TEST_DATABASE_URL's host (127.0.0.1:5432 by default) so the suite
# also proves the PostgreSQL backend. Starts an installed cluster, or installs Debian's package.
set -euo pipefail
host=127.0.0.1; port=5432
answers() { pg_isready -q -h "$host" -p "$port" 2>/dev/null; }
if command -v pg_isready >/dev/null 2>&1 && answers; then exit 0; fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
    echo "installing PostgreSQL (Debian package)..." >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  fi
  version=$(ls /etc/postgresql | sort -V | tail -n 1)
  conf=/etc/postgresql/$version/main
  # Local trust auth for the test user, like the development machines have.
  if ! grep -q "smsgw-test" "$conf/pg_hba.conf"; then
    sed -i '1i host all postgres 127.0.0.1/32 trust # smsgw-test' "$conf/pg_hba.conf"
  fi
  pg_ctlcluster --skip-systemctl-redirect "$version" main start 2>/dev/null || pg_ctlcluster "$version" main restart
  for _ in $(seq 1 50); do answers && break; sleep 0.2; done
  su postgres -c "psql -tAc \"SELECT 1 FROM pg_database WHERE datname='test'\"" | grep -q 1 \
    || su postgres -c "createdb test"
  answers && exit 0
fi
echo "PostgreSQL is not answering on $host:$port" >&2
exit 1
