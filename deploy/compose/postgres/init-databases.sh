#!/bin/sh
# Runs once, on an empty data volume (the postgres image's /docker-entrypoint-initdb.d): one
# database per service, owned by POSTGRES_USER. Idempotent; `codelab migrate` would also create
# a missing database and then applies each service's migrations.
set -eu

for db in auth_db agent_runtime; do
  psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres <<SQL
SELECT 'CREATE DATABASE "$db" OWNER "$POSTGRES_USER"'
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '$db')\gexec
SQL
  echo "database $db ready"
done
