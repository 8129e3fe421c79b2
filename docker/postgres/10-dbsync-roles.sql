-- The roles and databases of a dbsync site, made once, when the PostgreSQL
-- volume is new (the postgres image runs every *.sql file of
-- /docker-entrypoint-initdb.d as its superuser, with psql).
--
-- dbsync never connects as a superuser: a SQL injection anywhere in dbsync
-- then reaches neither `COPY ... TO PROGRAM` nor the other database.
--   dbsync_state  owns dbsync_state: the service's own tables (connections,
--                 token hashes, notices, transfers, audit); runs migrations.
--   dbsync_data   owns dbsync_data: the tables this site offers or fills.
-- Neither may log in to the other's database, create roles or databases,
-- replicate, bypass row security, or run server programs and files (no
-- pg_execute_server_program, pg_read_server_files, pg_write_server_files).
-- Their passwords come from the compose secrets; none is in this file.

\set ON_ERROR_STOP on
\set state_password `cat /run/secrets/state_db_password`
\set data_password `cat /run/secrets/data_db_password`

CREATE ROLE dbsync_state LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE
    NOREPLICATION NOBYPASSRLS INHERIT PASSWORD :'state_password';
CREATE ROLE dbsync_data LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE
    NOREPLICATION NOBYPASSRLS INHERIT PASSWORD :'data_password';

CREATE DATABASE dbsync_state OWNER dbsync_state;
CREATE DATABASE dbsync_data OWNER dbsync_data;

-- Only the owner connects: PUBLIC (every role) may by default.
REVOKE ALL ON DATABASE dbsync_state FROM PUBLIC;
REVOKE ALL ON DATABASE dbsync_data FROM PUBLIC;
REVOKE CONNECT ON DATABASE postgres FROM PUBLIC;
