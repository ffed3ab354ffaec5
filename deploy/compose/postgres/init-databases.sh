#!/bin/sh
# One role and one database per service (docs/security.md, docs/deployment.md): the role
# `codelab_auth` owns only `auth_db`, `codelab_agent_runtime` only `agent_runtime`, and no other
# role may connect to either (superusers aside), so a compromised agent runtime cannot read
# auth's users, clients or signing keys.
#
# The postgres image runs it once, on an empty data volume (/docker-entrypoint-initdb.d); it is
# idempotent and also the upgrade step for a volume created before per-service roles existed
# (it then hands the tables over to the service's role):
#   docker compose exec postgres sh /docker-entrypoint-initdb.d/01-init-databases.sh
# The Helm chart's in-chart PostgreSQL runs an identical copy
# (deploy/helm/codelab/files/init-databases.sh). Names can be changed for tests and external
# servers; passwords come from the environment only (psql variables, never spliced into SQL).
set -eu

: "${AUTH_DB_PASSWORD:?set AUTH_DB_PASSWORD (password of the auth service's database role)}"
: "${AGENT_RUNTIME_DB_PASSWORD:?set AGENT_RUNTIME_DB_PASSWORD (password of the agent runtime's database role)}"

# database role password
create_service_database() {
  psql -v ON_ERROR_STOP=1 --no-psqlrc --quiet --username "${POSTGRES_USER:-postgres}" \
    --dbname "${POSTGRES_MAINTENANCE_DB:-postgres}" \
    -v db="$1" -v role="$2" -v password="$3" <<'SQL'
SELECT format('CREATE ROLE %I LOGIN', :'role')
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'role')\gexec
SELECT format('ALTER ROLE %I LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION PASSWORD %L',
              :'role', :'password')\gexec
SELECT format('CREATE DATABASE %I OWNER %I', :'db', :'role')
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'db')\gexec
SELECT format('ALTER DATABASE %I OWNER TO %I', :'db', :'role')\gexec
-- PostgreSQL lets every role connect to every database by default.
SELECT format('REVOKE ALL ON DATABASE %I FROM PUBLIC', :'db')\gexec
\connect :"db"
-- Tables created before the role existed (by the superuser) become the role's.
SELECT format('ALTER TABLE %I.%I OWNER TO %I', schemaname, tablename, :'role')
FROM pg_tables WHERE schemaname = 'public' AND tableowner <> :'role'\gexec
SQL
  echo "database $1 ready, owned by $2"
}

create_service_database "${AUTH_DB_NAME:-auth_db}" "${AUTH_DB_USER:-codelab_auth}" "$AUTH_DB_PASSWORD"
create_service_database "${AGENT_RUNTIME_DB_NAME:-agent_runtime}" \
  "${AGENT_RUNTIME_DB_USER:-codelab_agent_runtime}" "$AGENT_RUNTIME_DB_PASSWORD"
