-- Run once by the postgres image on an empty data volume (docker-entrypoint-initdb.d),
-- as the superuser, through psql. Two databases on one server, each with its own role:
--   prefect   - the Prefect server's database
--   socialcrm - the socialcrm state store (cursors, ledger, dead letters, locks)
-- The passwords come from the container's environment (psql \getenv), never from here.
\set ON_ERROR_STOP on

\getenv prefect_password PREFECT_DB_PASSWORD
\getenv socialcrm_password SOCIALCRM_DB_PASSWORD

CREATE ROLE prefect LOGIN PASSWORD :'prefect_password';
CREATE DATABASE prefect OWNER prefect;
REVOKE ALL ON DATABASE prefect FROM PUBLIC;

CREATE ROLE socialcrm LOGIN PASSWORD :'socialcrm_password';
CREATE DATABASE socialcrm OWNER socialcrm;
REVOKE ALL ON DATABASE socialcrm FROM PUBLIC;

-- Prefect's migrations create pg_trgm; create it here so they never need more rights.
\connect prefect
CREATE EXTENSION IF NOT EXISTS pg_trgm;
