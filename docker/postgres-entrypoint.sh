#!/bin/bash
# Start PostgreSQL for EdgeFarm; the first time, make the cluster with the edgefarm user and
# database. The password is $POSTGRES_PASSWORD (scram-sha-256 over the network; the container's own
# processes, psql in `docker exec` included, connect over its Unix socket without one).
set -euo pipefail

if [ ! -s "$PGDATA/PG_VERSION" ]; then
  if [ -z "${POSTGRES_PASSWORD:-}" ]; then
    echo "edgefarm-postgres: set POSTGRES_PASSWORD: the password of the database user edgefarm" >&2
    exit 2
  fi
  pwfile=$(mktemp)
  trap 'rm -f "$pwfile"' EXIT
  printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile"
  initdb --pgdata "$PGDATA" --username edgefarm --pwfile "$pwfile" --encoding UTF8 --locale C.UTF-8 \
    --auth-local trust --auth-host scram-sha-256 >/dev/null
  rm -f "$pwfile"
  # Other containers reach it over the stack's network, with the password.
  echo "host all all all scram-sha-256" >>"$PGDATA/pg_hba.conf"
  # On the Unix socket only, until the database is there.
  pg_ctl --pgdata "$PGDATA" --wait --silent --options "-c listen_addresses=''" start
  createdb --username edgefarm edgefarm
  pg_ctl --pgdata "$PGDATA" --wait --silent --mode fast stop
  echo "edgefarm-postgres: made the cluster in $PGDATA with the database edgefarm"
fi
exec postgres -D "$PGDATA" -c listen_addresses='*' "$@"
