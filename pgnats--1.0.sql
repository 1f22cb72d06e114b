-- pgnats 1.0: NATS for PostgreSQL.
-- The public functions are created in the extension's schema (the current schema, usually
-- public); internal objects live in the schema pgnats. Every PL/Python body is short:
-- load the Python package once per session, then call the function of the same name in
-- pgnats.backend.api (extension/pgnats/backend/api.py).
-- The functions that talk to NATS are SQL wrappers (inlined by the planner) around a
-- PL/Python function that also gets current_user: PL/Python cannot see the current role
-- cheaply, and a session's NATS credentials must follow it (SET ROLE, SECURITY DEFINER).

\echo Use "CREATE EXTENSION pgnats" to load this file. \quit

CREATE SCHEMA pgnats;
GRANT USAGE ON SCHEMA pgnats TO PUBLIC;

-- Puts the extension's own Python folder (SHAREDIR/pgnats/python, written by make install)
-- on sys.path and keeps the API module in GD. SECURITY DEFINER only to read pg_config,
-- which ordinary roles may not.
CREATE FUNCTION pgnats._load_python() RETURNS void
LANGUAGE plpython3u SECURITY DEFINER SET search_path = pg_catalog AS $$
import sys
if 'pgnats' not in GD:
    share = plpy.execute("SELECT setting FROM pg_catalog.pg_config WHERE name = 'SHAREDIR'")[0]['setting']
    path = share + '/pgnats/python'
    if path not in sys.path:
        sys.path.insert(0, path)
    from pgnats.backend import api
    GD['pgnats'] = api
$$;

----------------------------------------------------------------------------------------------
-- Configuration: the foreign data wrapper and its validator
----------------------------------------------------------------------------------------------

CREATE FUNCTION pgnats.fdw_validator(options text[], catalog oid) RETURNS void
LANGUAGE plpython3u AS $$
if 'pgnats' not in GD: plpy.execute('SELECT pgnats._load_python()')
GD['pgnats'].fdw_validator(options, catalog)
$$;

CREATE FOREIGN DATA WRAPPER pgnats_fdw VALIDATOR pgnats.fdw_validator;

-- One pgnats_fdw server per database: the backend and the worker must agree on which
-- settings apply, and a second server would silently be ignored.
CREATE FUNCTION pgnats._check_single_server() RETURNS event_trigger
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    servers text;
BEGIN
    SELECT string_agg(quote_ident(s.srvname), ', ' ORDER BY s.oid) INTO servers
    FROM pg_foreign_server s JOIN pg_foreign_data_wrapper w ON w.oid = s.srvfdw
    WHERE w.fdwname = 'pgnats_fdw'
    HAVING count(*) > 1;
    IF servers IS NOT NULL THEN
        RAISE EXCEPTION 'only one pgnats_fdw server is allowed per database (found %)', servers
            USING ERRCODE = 'HV000',
                  HINT = 'change the existing server with ALTER SERVER ... OPTIONS (SET ...), or drop it first';
    END IF;
END
$$;

CREATE EVENT TRIGGER pgnats_single_server ON ddl_command_end
    WHEN TAG IN ('CREATE SERVER')
    EXECUTE FUNCTION pgnats._check_single_server();

-- Settings changed by DDL take effect at once in this session (its cached settings are
-- dropped) and, at commit, in the worker (NOTIFY), with no pgnats_reload_conf() needed.
-- (PL/Python has no event triggers, hence the plpgsql wrapper.)
CREATE FUNCTION pgnats._reload_if_loaded() RETURNS void
LANGUAGE plpython3u AS $$
if 'pgnats' in GD:
    GD['pgnats'].pgnats_reload_conf()
$$;

CREATE FUNCTION pgnats._settings_changed() RETURNS event_trigger
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    PERFORM pgnats._reload_if_loaded();
    PERFORM pg_catalog.pg_notify('pgnats', 'reload');
END
$$;

CREATE EVENT TRIGGER pgnats_settings_changed ON ddl_command_end
    WHEN TAG IN ('CREATE SERVER', 'ALTER SERVER', 'DROP SERVER',
                 'CREATE USER MAPPING', 'ALTER USER MAPPING', 'DROP USER MAPPING')
    EXECUTE FUNCTION pgnats._settings_changed();

----------------------------------------------------------------------------------------------
-- Meta and configuration reload
----------------------------------------------------------------------------------------------

CREATE TYPE pgnats.version_info AS (
    version text,
    python_version text,
    nats_py_version text
);

CREATE FUNCTION pgnats_version() RETURNS pgnats.version_info
LANGUAGE plpython3u AS $$
if 'pgnats' not in GD: plpy.execute('SELECT pgnats._load_python()')
return GD['pgnats'].pgnats_version()
$$;

CREATE TYPE pgnats.server_info AS (
    server_id text,
    server_name text,
    version text,
    go text,
    host text,
    port integer,
    headers boolean,
    max_payload bigint,
    proto integer,
    client_id bigint,
    client_ip text,
    nonce text,
    auth_required boolean,
    tls_required boolean,
    tls_verify boolean,
    jetstream boolean,
    lame_duck_mode boolean,
    cluster text,
    domain text,
    git_commit text,
    connect_urls jsonb,
    ws_connect_urls jsonb
);

CREATE FUNCTION pgnats._nats_get_server_info(role name) RETURNS pgnats.server_info
LANGUAGE plpython3u AS $$
if 'pgnats' not in GD: plpy.execute('SELECT pgnats._load_python()')
api = GD['pgnats']
api.act_as(role)
return api.nats_get_server_info()
$$;

CREATE FUNCTION nats_get_server_info() RETURNS pgnats.server_info
LANGUAGE sql AS $$ SELECT pgnats._nats_get_server_info(current_user) $$;

CREATE FUNCTION pgnats_reload_conf() RETURNS void
LANGUAGE plpython3u AS $$
if 'pgnats' not in GD: plpy.execute('SELECT pgnats._load_python()')
return GD['pgnats'].pgnats_reload_conf()
$$;

CREATE FUNCTION pgnats_reload_conf_force() RETURNS void
LANGUAGE plpython3u AS $$
if 'pgnats' not in GD: plpy.execute('SELECT pgnats._load_python()')
return GD['pgnats'].pgnats_reload_conf_force()
$$;


----------------------------------------------------------------------------------------------
-- Core NATS: publish and request
----------------------------------------------------------------------------------------------

CREATE FUNCTION pgnats._nats_publish_binary(subject text, payload bytea, reply text, headers jsonb, role name) RETURNS void
LANGUAGE plpython3u AS $$
if 'pgnats' not in GD: plpy.execute('SELECT pgnats._load_python()')
api = GD['pgnats']
api.act_as(role)
return api.nats_publish_binary(subject, payload, reply, headers)
$$;

CREATE FUNCTION nats_publish_binary(subject text, payload bytea, reply text DEFAULT NULL, headers jsonb DEFAULT NULL) RETURNS void
LANGUAGE sql AS $$ SELECT pgnats._nats_publish_binary(subject, payload, reply, headers, current_user) $$;

CREATE FUNCTION pgnats._nats_publish_text(subject text, payload text, reply text, headers jsonb, role name) RETURNS void
LANGUAGE plpython3u AS $$
if 'pgnats' not in GD: plpy.execute('SELECT pgnats._load_python()')
api = GD['pgnats']
api.act_as(role)
return api.nats_publish_text(subject, payload, reply, headers)
$$;

CREATE FUNCTION nats_publish_text(subject text, payload text, reply text DEFAULT NULL, headers jsonb DEFAULT NULL) RETURNS void
LANGUAGE sql AS $$ SELECT pgnats._nats_publish_text(subject, payload, reply, headers, current_user) $$;

CREATE FUNCTION pgnats._nats_publish_json(subject text, payload json, reply text, headers jsonb, role name) RETURNS void
LANGUAGE plpython3u AS $$
if 'pgnats' not in GD: plpy.execute('SELECT pgnats._load_python()')
api = GD['pgnats']
api.act_as(role)
return api.nats_publish_json(subject, payload, reply, headers)
$$;

CREATE FUNCTION nats_publish_json(subject text, payload json, reply text DEFAULT NULL, headers jsonb DEFAULT NULL) RETURNS void
LANGUAGE sql AS $$ SELECT pgnats._nats_publish_json(subject, payload, reply, headers, current_user) $$;

CREATE FUNCTION pgnats._nats_publish_jsonb(subject text, payload jsonb, reply text, headers jsonb, role name) RETURNS void
LANGUAGE plpython3u AS $$
if 'pgnats' not in GD: plpy.execute('SELECT pgnats._load_python()')
api = GD['pgnats']
api.act_as(role)
return api.nats_publish_jsonb(subject, payload, reply, headers)
$$;

CREATE FUNCTION nats_publish_jsonb(subject text, payload jsonb, reply text DEFAULT NULL, headers jsonb DEFAULT NULL) RETURNS void
LANGUAGE sql AS $$ SELECT pgnats._nats_publish_jsonb(subject, payload, reply, headers, current_user) $$;

CREATE FUNCTION pgnats._nats_request_binary(subject text, payload bytea, timeout integer, role name) RETURNS bytea
LANGUAGE plpython3u AS $$
if 'pgnats' not in GD: plpy.execute('SELECT pgnats._load_python()')
api = GD['pgnats']
api.act_as(role)
return api.nats_request_binary(subject, payload, timeout)
$$;

CREATE FUNCTION nats_request_binary(subject text, payload bytea, timeout integer DEFAULT NULL) RETURNS bytea
LANGUAGE sql AS $$ SELECT pgnats._nats_request_binary(subject, payload, timeout, current_user) $$;

CREATE FUNCTION pgnats._nats_request_text(subject text, payload text, timeout integer, role name) RETURNS bytea
LANGUAGE plpython3u AS $$
if 'pgnats' not in GD: plpy.execute('SELECT pgnats._load_python()')
api = GD['pgnats']
api.act_as(role)
return api.nats_request_text(subject, payload, timeout)
$$;

CREATE FUNCTION nats_request_text(subject text, payload text, timeout integer DEFAULT NULL) RETURNS bytea
LANGUAGE sql AS $$ SELECT pgnats._nats_request_text(subject, payload, timeout, current_user) $$;

CREATE FUNCTION pgnats._nats_request_json(subject text, payload json, timeout integer, role name) RETURNS bytea
LANGUAGE plpython3u AS $$
if 'pgnats' not in GD: plpy.execute('SELECT pgnats._load_python()')
api = GD['pgnats']
api.act_as(role)
return api.nats_request_json(subject, payload, timeout)
$$;

CREATE FUNCTION nats_request_json(subject text, payload json, timeout integer DEFAULT NULL) RETURNS bytea
LANGUAGE sql AS $$ SELECT pgnats._nats_request_json(subject, payload, timeout, current_user) $$;

CREATE FUNCTION pgnats._nats_request_jsonb(subject text, payload jsonb, timeout integer, role name) RETURNS bytea
LANGUAGE plpython3u AS $$
if 'pgnats' not in GD: plpy.execute('SELECT pgnats._load_python()')
api = GD['pgnats']
api.act_as(role)
return api.nats_request_jsonb(subject, payload, timeout)
$$;

CREATE FUNCTION nats_request_jsonb(subject text, payload jsonb, timeout integer DEFAULT NULL) RETURNS bytea
LANGUAGE sql AS $$ SELECT pgnats._nats_request_jsonb(subject, payload, timeout, current_user) $$;


----------------------------------------------------------------------------------------------
-- JetStream: stream publish, key-value, object store
----------------------------------------------------------------------------------------------

CREATE FUNCTION pgnats._nats_publish_binary_stream(subject text, payload bytea, headers jsonb, role name) RETURNS void
LANGUAGE plpython3u AS $$
if 'pgnats' not in GD: plpy.execute('SELECT pgnats._load_python()')
api = GD['pgnats']
api.act_as(role)
return api.nats_publish_binary_stream(subject, payload, headers)
$$;

CREATE FUNCTION nats_publish_binary_stream(subject text, payload bytea, headers jsonb DEFAULT NULL) RETURNS void
LANGUAGE sql AS $$ SELECT pgnats._nats_publish_binary_stream(subject, payload, headers, current_user) $$;

CREATE FUNCTION pgnats._nats_publish_text_stream(subject text, payload text, headers jsonb, role name) RETURNS void
LANGUAGE plpython3u AS $$
if 'pgnats' not in GD: plpy.execute('SELECT pgnats._load_python()')
api = GD['pgnats']
api.act_as(role)
return api.nats_publish_text_stream(subject, payload, headers)
$$;

CREATE FUNCTION nats_publish_text_stream(subject text, payload text, headers jsonb DEFAULT NULL) RETURNS void
LANGUAGE sql AS $$ SELECT pgnats._nats_publish_text_stream(subject, payload, headers, current_user) $$;

CREATE FUNCTION pgnats._nats_publish_json_stream(subject text, payload json, headers jsonb, role name) RETURNS void
LANGUAGE plpython3u AS $$
if 'pgnats' not in GD: plpy.execute('SELECT pgnats._load_python()')
api = GD['pgnats']
api.act_as(role)
return api.nats_publish_json_stream(subject, payload, headers)
$$;

CREATE FUNCTION nats_publish_json_stream(subject text, payload json, headers jsonb DEFAULT NULL) RETURNS void
LANGUAGE sql AS $$ SELECT pgnats._nats_publish_json_stream(subject, payload, headers, current_user) $$;

CREATE FUNCTION pgnats._nats_publish_jsonb_stream(subject text, payload jsonb, headers jsonb, role name) RETURNS void
LANGUAGE plpython3u AS $$
if 'pgnats' not in GD: plpy.execute('SELECT pgnats._load_python()')
api = GD['pgnats']
api.act_as(role)
return api.nats_publish_jsonb_stream(subject, payload, headers)
$$;

CREATE FUNCTION nats_publish_jsonb_stream(subject text, payload jsonb, headers jsonb DEFAULT NULL) RETURNS void
LANGUAGE sql AS $$ SELECT pgnats._nats_publish_jsonb_stream(subject, payload, headers, current_user) $$;

CREATE FUNCTION pgnats._nats_put_binary(bucket text, key text, data bytea, role name) RETURNS bigint
LANGUAGE plpython3u AS $$
if 'pgnats' not in GD: plpy.execute('SELECT pgnats._load_python()')
api = GD['pgnats']
api.act_as(role)
return api.nats_put_binary(bucket, key, data)
$$;

CREATE FUNCTION nats_put_binary(bucket text, key text, data bytea) RETURNS bigint
LANGUAGE sql AS $$ SELECT pgnats._nats_put_binary(bucket, key, data, current_user) $$;

CREATE FUNCTION pgnats._nats_put_text(bucket text, key text, data text, role name) RETURNS bigint
LANGUAGE plpython3u AS $$
if 'pgnats' not in GD: plpy.execute('SELECT pgnats._load_python()')
api = GD['pgnats']
api.act_as(role)
return api.nats_put_text(bucket, key, data)
$$;

CREATE FUNCTION nats_put_text(bucket text, key text, data text) RETURNS bigint
LANGUAGE sql AS $$ SELECT pgnats._nats_put_text(bucket, key, data, current_user) $$;

CREATE FUNCTION pgnats._nats_put_json(bucket text, key text, data json, role name) RETURNS bigint
LANGUAGE plpython3u AS $$
if 'pgnats' not in GD: plpy.execute('SELECT pgnats._load_python()')
api = GD['pgnats']
api.act_as(role)
return api.nats_put_json(bucket, key, data)
$$;

CREATE FUNCTION nats_put_json(bucket text, key text, data json) RETURNS bigint
LANGUAGE sql AS $$ SELECT pgnats._nats_put_json(bucket, key, data, current_user) $$;

CREATE FUNCTION pgnats._nats_put_jsonb(bucket text, key text, data jsonb, role name) RETURNS bigint
LANGUAGE plpython3u AS $$
if 'pgnats' not in GD: plpy.execute('SELECT pgnats._load_python()')
api = GD['pgnats']
api.act_as(role)
return api.nats_put_jsonb(bucket, key, data)
$$;

CREATE FUNCTION nats_put_jsonb(bucket text, key text, data jsonb) RETURNS bigint
LANGUAGE sql AS $$ SELECT pgnats._nats_put_jsonb(bucket, key, data, current_user) $$;

CREATE FUNCTION pgnats._nats_get_binary(bucket text, key text, role name) RETURNS bytea
LANGUAGE plpython3u AS $$
if 'pgnats' not in GD: plpy.execute('SELECT pgnats._load_python()')
api = GD['pgnats']
api.act_as(role)
return api.nats_get_binary(bucket, key)
$$;

CREATE FUNCTION nats_get_binary(bucket text, key text) RETURNS bytea
LANGUAGE sql AS $$ SELECT pgnats._nats_get_binary(bucket, key, current_user) $$;

CREATE FUNCTION pgnats._nats_get_text(bucket text, key text, role name) RETURNS text
LANGUAGE plpython3u AS $$
if 'pgnats' not in GD: plpy.execute('SELECT pgnats._load_python()')
api = GD['pgnats']
api.act_as(role)
return api.nats_get_text(bucket, key)
$$;

CREATE FUNCTION nats_get_text(bucket text, key text) RETURNS text
LANGUAGE sql AS $$ SELECT pgnats._nats_get_text(bucket, key, current_user) $$;

CREATE FUNCTION pgnats._nats_get_json(bucket text, key text, role name) RETURNS json
LANGUAGE plpython3u AS $$
if 'pgnats' not in GD: plpy.execute('SELECT pgnats._load_python()')
api = GD['pgnats']
api.act_as(role)
return api.nats_get_json(bucket, key)
$$;

CREATE FUNCTION nats_get_json(bucket text, key text) RETURNS json
LANGUAGE sql AS $$ SELECT pgnats._nats_get_json(bucket, key, current_user) $$;

CREATE FUNCTION pgnats._nats_get_jsonb(bucket text, key text, role name) RETURNS jsonb
LANGUAGE plpython3u AS $$
if 'pgnats' not in GD: plpy.execute('SELECT pgnats._load_python()')
api = GD['pgnats']
api.act_as(role)
return api.nats_get_jsonb(bucket, key)
$$;

CREATE FUNCTION nats_get_jsonb(bucket text, key text) RETURNS jsonb
LANGUAGE sql AS $$ SELECT pgnats._nats_get_jsonb(bucket, key, current_user) $$;

CREATE FUNCTION pgnats._nats_delete_value(bucket text, key text, role name) RETURNS void
LANGUAGE plpython3u AS $$
if 'pgnats' not in GD: plpy.execute('SELECT pgnats._load_python()')
api = GD['pgnats']
api.act_as(role)
return api.nats_delete_value(bucket, key)
$$;

CREATE FUNCTION nats_delete_value(bucket text, key text) RETURNS void
LANGUAGE sql AS $$ SELECT pgnats._nats_delete_value(bucket, key, current_user) $$;

CREATE FUNCTION pgnats._nats_put_file(store text, name text, content bytea, role name) RETURNS void
LANGUAGE plpython3u AS $$
if 'pgnats' not in GD: plpy.execute('SELECT pgnats._load_python()')
api = GD['pgnats']
api.act_as(role)
return api.nats_put_file(store, name, content)
$$;

CREATE FUNCTION nats_put_file(store text, name text, content bytea) RETURNS void
LANGUAGE sql AS $$ SELECT pgnats._nats_put_file(store, name, content, current_user) $$;

CREATE FUNCTION pgnats._nats_get_file(store text, name text, role name) RETURNS bytea
LANGUAGE plpython3u AS $$
if 'pgnats' not in GD: plpy.execute('SELECT pgnats._load_python()')
api = GD['pgnats']
api.act_as(role)
return api.nats_get_file(store, name)
$$;

CREATE FUNCTION nats_get_file(store text, name text) RETURNS bytea
LANGUAGE sql AS $$ SELECT pgnats._nats_get_file(store, name, current_user) $$;

CREATE FUNCTION pgnats._nats_delete_file(store text, name text, role name) RETURNS void
LANGUAGE plpython3u AS $$
if 'pgnats' not in GD: plpy.execute('SELECT pgnats._load_python()')
api = GD['pgnats']
api.act_as(role)
return api.nats_delete_file(store, name)
$$;

CREATE FUNCTION nats_delete_file(store text, name text) RETURNS void
LANGUAGE sql AS $$ SELECT pgnats._nats_delete_file(store, name, current_user) $$;

CREATE TYPE pgnats.file_info AS (
    name text,
    description text,
    metadata jsonb,
    headers jsonb,
    options jsonb,
    bucket text,
    nuid text,
    size bigint,
    chunks bigint,
    modified timestamptz,
    digest text,
    deleted boolean
);

CREATE FUNCTION pgnats._nats_get_file_info(store text, name text, role name) RETURNS SETOF pgnats.file_info
LANGUAGE plpython3u AS $$
if 'pgnats' not in GD: plpy.execute('SELECT pgnats._load_python()')
api = GD['pgnats']
api.act_as(role)
return api.nats_get_file_info(store, name)
$$;

CREATE FUNCTION nats_get_file_info(store text, name text) RETURNS SETOF pgnats.file_info
LANGUAGE sql AS $$ SELECT * FROM pgnats._nats_get_file_info(store, name, current_user) $$;

CREATE FUNCTION pgnats._nats_get_file_list(store text, role name) RETURNS SETOF pgnats.file_info
LANGUAGE plpython3u AS $$
if 'pgnats' not in GD: plpy.execute('SELECT pgnats._load_python()')
api = GD['pgnats']
api.act_as(role)
return api.nats_get_file_list(store)
$$;

CREATE FUNCTION nats_get_file_list(store text) RETURNS SETOF pgnats.file_info
LANGUAGE sql AS $$ SELECT * FROM pgnats._nats_get_file_list(store, current_user) $$;


----------------------------------------------------------------------------------------------
-- Subscriptions and the worker
--
-- pgnats.subscriptions says which function receives the messages of which subject. The
-- worker (pgnats-worker, a sidecar process) subscribes to those subjects and calls the
-- functions; it LISTENs on channel pgnats, so a change takes effect when its transaction
-- commits. Rows name the function and role by their text form (regprocedure, regrole), so
-- they survive pg_dump/restore although OIDs change.
----------------------------------------------------------------------------------------------

CREATE TABLE pgnats.subscriptions (
    subject text NOT NULL,
    callback regprocedure NOT NULL,
    role regrole NOT NULL DEFAULT current_user::regrole,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (subject, callback)
);
COMMENT ON TABLE pgnats.subscriptions IS
    'NATS subjects and the functions the pgnats worker calls, as role, for each message';
SELECT pg_catalog.pg_extension_config_dump('pgnats.subscriptions', '');

-- Everyone may read the subscriptions; a role adds and removes only its own.
ALTER TABLE pgnats.subscriptions ENABLE ROW LEVEL SECURITY;
CREATE POLICY subscriptions_read ON pgnats.subscriptions FOR SELECT USING (true);
CREATE POLICY subscriptions_insert_own ON pgnats.subscriptions FOR INSERT
    WITH CHECK (role = current_user::regrole);
CREATE POLICY subscriptions_delete_own ON pgnats.subscriptions FOR DELETE
    USING (role = current_user::regrole);
GRANT SELECT, INSERT, DELETE ON pgnats.subscriptions TO PUBLIC;

-- The checks of nats_subscribe (pgnats.backend.subscriptions_api): the subject is valid,
-- the function exists, takes exactly one bytea, and the role may execute it.
CREATE FUNCTION pgnats._validate_subscription(subject text, callback oid, role oid) RETURNS void
LANGUAGE plpython3u AS $$
if 'pgnats' not in GD: plpy.execute('SELECT pgnats._load_python()')
return GD['pgnats'].validate_subscription(subject, callback, role)
$$;

-- Rows written directly (INSERT, UPDATE by a superuser) get the same checks.
CREATE FUNCTION pgnats._check_subscription_row() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    PERFORM pgnats._validate_subscription(NEW.subject, NEW.callback::oid, NEW.role::oid);
    RETURN NEW;
END
$$;

CREATE TRIGGER check_subscription BEFORE INSERT OR UPDATE ON pgnats.subscriptions
    FOR EACH ROW EXECUTE FUNCTION pgnats._check_subscription_row();

-- Tells the worker, at commit, that the subscriptions changed.
CREATE FUNCTION pgnats._notify_subscriptions_changed() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    PERFORM pg_notify('pgnats', 'subscriptions');
    RETURN NULL;
END
$$;

CREATE TRIGGER notify_worker AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON pgnats.subscriptions
    FOR EACH STATEMENT EXECUTE FUNCTION pgnats._notify_subscriptions_changed();

CREATE FUNCTION nats_subscribe(subject text, callback oid) RETURNS void
LANGUAGE plpython3u AS $$
if 'pgnats' not in GD: plpy.execute('SELECT pgnats._load_python()')
return GD['pgnats'].nats_subscribe(subject, callback)
$$;

CREATE FUNCTION nats_unsubscribe(subject text, callback oid) RETURNS void
LANGUAGE plpython3u AS $$
if 'pgnats' not in GD: plpy.execute('SELECT pgnats._load_python()')
return GD['pgnats'].nats_unsubscribe(subject, callback)
$$;

-- Messages whose callback failed, with what is needed to understand and replay them:
--   SELECT my_callback(payload) FROM pgnats.subscription_failures WHERE id = ...;
-- Kept until deleted. Each role sees (and may delete) the failures of its own callbacks.
CREATE TABLE pgnats.subscription_failures (
    id bigserial PRIMARY KEY,
    subject text NOT NULL,
    subscription text NOT NULL,
    callback text NOT NULL,
    role text NOT NULL,
    payload bytea,
    error text NOT NULL,
    sqlstate text,
    detail text,
    hint text,
    context text,
    received_at timestamptz,
    failed_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON COLUMN pgnats.subscription_failures.subject IS 'the subject the message was published to';
COMMENT ON COLUMN pgnats.subscription_failures.subscription IS 'the subscribed subject (may have wildcards)';
CREATE INDEX ON pgnats.subscription_failures (failed_at);
SELECT pg_catalog.pg_extension_config_dump('pgnats.subscription_failures', '');
SELECT pg_catalog.pg_extension_config_dump('pgnats.subscription_failures_id_seq', '');
ALTER TABLE pgnats.subscription_failures ENABLE ROW LEVEL SECURITY;
CREATE POLICY subscription_failures_own ON pgnats.subscription_failures
    USING (role = current_user);
GRANT SELECT, DELETE ON pgnats.subscription_failures TO PUBLIC;

-- Counters per subscription, written by the worker in the transaction of the batch they count.
CREATE TABLE pgnats.subscription_stats (
    subject text NOT NULL,
    callback oid NOT NULL,
    processed bigint NOT NULL DEFAULT 0,
    failed bigint NOT NULL DEFAULT 0,
    dropped bigint NOT NULL DEFAULT 0,
    last_message_at timestamptz,
    last_failure_at timestamptz,
    PRIMARY KEY (subject, callback)
);
GRANT SELECT ON pgnats.subscription_stats TO PUBLIC;

-- The worker serving this database (one row), refreshed every heartbeat_interval.
CREATE TABLE pgnats.worker_heartbeat (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    pid integer NOT NULL,
    host text NOT NULL,
    version text NOT NULL,
    started_at timestamptz NOT NULL,
    heartbeat_at timestamptz NOT NULL,
    heartbeat_interval interval NOT NULL,
    nats_connected boolean NOT NULL,
    nats_server text,
    -- The NATS queue group of every subscription of the worker for this database.
    nats_queue_group text,
    -- [{"subject": ..., "callback": <oid>}, ...]: what the worker serves, with a live NATS
    -- subscription for each subject.
    serving jsonb NOT NULL DEFAULT '[]',
    queued bigint NOT NULL DEFAULT 0,
    dropped bigint NOT NULL DEFAULT 0
);
GRANT SELECT ON pgnats.worker_heartbeat TO PUBLIC;

CREATE VIEW pgnats.worker_status AS
SELECT h.pid, h.host, h.version, h.started_at, h.heartbeat_at,
       h.heartbeat_at > now() - 3 * h.heartbeat_interval AS active,
       h.nats_connected, h.nats_server,
       ARRAY(SELECT DISTINCT x.subject FROM jsonb_to_recordset(h.serving) AS x(subject text)
              ORDER BY 1) AS subscribed,
       h.serving, h.queued, h.dropped, h.nats_queue_group
  FROM pgnats.worker_heartbeat h;
GRANT SELECT ON pgnats.worker_status TO PUBLIC;

CREATE VIEW pgnats.subscription_status AS
SELECT s.subject,
       s.callback,
       s.role,
       coalesce(w.active, false) AS worker_active,
       coalesce(w.active AND w.nats_connected AND EXISTS (
           SELECT FROM jsonb_to_recordset(w.serving) AS x(subject text, callback oid)
            WHERE x.subject = s.subject AND x.callback = s.callback::oid), false) AS subscribed,
       coalesce(st.processed, 0) AS processed,
       coalesce(st.failed, 0) AS failed,
       coalesce(st.dropped, 0) AS dropped,
       st.last_message_at,
       st.last_failure_at
  FROM pgnats.subscriptions s
  LEFT JOIN pgnats.worker_status w ON true
  LEFT JOIN pgnats.subscription_stats st
         ON st.subject = s.subject AND st.callback = s.callback::oid;
GRANT SELECT ON pgnats.subscription_status TO PUBLIC;

-- Counters go with their subscription. SECURITY DEFINER: the role unsubscribing may not
-- write the counters.
CREATE FUNCTION pgnats._forget_subscription_stats() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $$
BEGIN
    DELETE FROM pgnats.subscription_stats st
     USING gone g
     WHERE st.subject = g.subject AND st.callback = g.callback::oid;
    RETURN NULL;
END
$$;

CREATE TRIGGER forget_stats AFTER DELETE ON pgnats.subscriptions
    REFERENCING OLD TABLE AS gone
    FOR EACH STATEMENT EXECUTE FUNCTION pgnats._forget_subscription_stats();

-- A dropped function takes its subscriptions (and so their counters) with it: DROP FUNCTION,
-- DROP SCHEMA ... CASCADE, DROP OWNED, DROP EXTENSION. SECURITY DEFINER because the role
-- dropping the function may not own the rows (RLS).
CREATE FUNCTION pgnats._forget_dropped_callbacks() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $$
BEGIN
    DELETE FROM pgnats.subscriptions s
     USING pg_event_trigger_dropped_objects() d
     WHERE d.classid = 'pg_catalog.pg_proc'::regclass
       AND s.callback::oid = d.objid;
END
$$;

CREATE EVENT TRIGGER pgnats_forget_dropped_callbacks ON sql_drop
    EXECUTE FUNCTION pgnats._forget_dropped_callbacks();

-- Calling callbacks with the subscribing role's privileges. The worker (a superuser) has
-- one connection per database and role. In it, pgnats._prepare_dispatch(role) creates
-- pg_temp.pgnats_call, a SECURITY DEFINER function owned by that role, and every batch
-- goes through pgnats._dispatch, which checks the function before calling it. Inside a
-- SECURITY DEFINER function PostgreSQL refuses SET ROLE, RESET ROLE and SET SESSION
-- AUTHORIZATION, so a callback cannot get back to the worker's role. The role owns the
-- function, so a callback could ALTER it or replace it (the role may create objects in
-- pg_temp); _dispatch therefore compares it with this source and refuses anything else,
-- and the body itself refuses to run outside a SECURITY DEFINER call as that role.
-- Every name is schema-qualified and every operator spelled OPERATOR(pg_catalog.x): the
-- callback shares the session and may have changed search_path.
CREATE FUNCTION pgnats._dispatcher_source() RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $source$ SELECT $body$
DECLARE
    fn text;
    i integer;
BEGIN
    IF pg_catalog.quote_ident(current_user) OPERATOR(pg_catalog.<>)
       expected_role::pg_catalog.regrole::pg_catalog.text THEN
        RAISE EXCEPTION 'pgnats: dispatch function runs as %, not as role %', current_user, expected_role
            USING ERRCODE = 'PN101';
    END IF;
    BEGIN
        -- Succeeds only outside a SECURITY DEFINER context, i.e. when the function was altered.
        PERFORM pg_catalog.set_config('role', 'none', true);
        RAISE EXCEPTION 'pgnats: dispatch function is not SECURITY DEFINER' USING ERRCODE = 'PN101';
    EXCEPTION WHEN insufficient_privilege THEN
        NULL;
    END;
    SELECT pg_catalog.format('%I.%I', n.nspname, p.proname) INTO fn
      FROM pg_catalog.pg_proc p
      JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) p.pronamespace
     WHERE p.oid OPERATOR(pg_catalog.=) callback;
    IF fn IS NULL THEN
        RAISE EXCEPTION 'pgnats: callback function % no longer exists', callback
            USING ERRCODE = 'undefined_function';
    END IF;
    IF NOT isolate THEN
        -- The common case: every message in one statement.
        EXECUTE 'SELECT ' OPERATOR(pg_catalog.||) fn OPERATOR(pg_catalog.||)
                '(m) FROM pg_catalog.unnest($1) AS m' USING payloads;
        RETURN;
    END IF;
    -- After a failure: each message in a subtransaction of its own, failures reported.
    FOR i IN 1 .. pg_catalog.cardinality(payloads) LOOP
        BEGIN
            EXECUTE 'SELECT ' OPERATOR(pg_catalog.||) fn OPERATOR(pg_catalog.||) '($1)'
                USING payloads[i];
        EXCEPTION WHEN OTHERS THEN
            GET STACKED DIAGNOSTICS err_sqlstate = RETURNED_SQLSTATE, err_message = MESSAGE_TEXT,
                err_detail = PG_EXCEPTION_DETAIL, err_hint = PG_EXCEPTION_HINT,
                err_context = PG_EXCEPTION_CONTEXT;
            idx := i;
            RETURN NEXT;
        END;
    END LOOP;
END
$body$ $source$;

-- pg_temp last, so that no temporary type can stand in for oid, bytea or boolean.
CREATE FUNCTION pgnats._prepare_dispatch(role oid) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    existing oid;
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles r WHERE r.oid = role) THEN
        RAISE EXCEPTION 'pgnats: the subscribing role (OID %) no longer exists', role
            USING ERRCODE = 'undefined_object';
    END IF;
    -- Every function of that name goes, so that the call can only resolve to the new one.
    FOR existing IN SELECT p.oid FROM pg_proc p
                     WHERE p.pronamespace = pg_my_temp_schema() AND p.proname = 'pgnats_call'
    LOOP
        EXECUTE format('DROP FUNCTION pg_temp.pgnats_call(%s)',
                       pg_get_function_identity_arguments(existing));
    END LOOP;
    EXECUTE format(
        'CREATE FUNCTION pg_temp.pgnats_call(expected_role oid, callback oid, payloads bytea[], '
        'isolate boolean) RETURNS TABLE (idx integer, err_sqlstate text, err_message text, '
        'err_detail text, err_hint text, err_context text) '
        'LANGUAGE plpgsql SECURITY DEFINER AS %L', pgnats._dispatcher_source());
    REVOKE ALL ON FUNCTION pg_temp.pgnats_call(oid, oid, bytea[], boolean) FROM PUBLIC;
    EXECUTE format('ALTER FUNCTION pg_temp.pgnats_call(oid, oid, bytea[], boolean) OWNER TO %s',
                   role::regrole);
END
$$;

-- Adds to the counters of one subscription, in the transaction of the batch they count.
-- Written for a session whose settings a callback may have changed: qualified names only.
CREATE FUNCTION pgnats._count(subscription text, callback oid, processed bigint, failed bigint)
RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE pgnats.subscription_stats st
       SET processed = st.processed OPERATOR(pg_catalog.+) _count.processed,
           failed = st.failed OPERATOR(pg_catalog.+) _count.failed,
           last_message_at = pg_catalog.now(),
           last_failure_at = CASE WHEN _count.failed OPERATOR(pg_catalog.>) 0
                                  THEN pg_catalog.now() ELSE st.last_failure_at END
     WHERE st.subject OPERATOR(pg_catalog.=) subscription
       AND st.callback OPERATOR(pg_catalog.=) _count.callback;
    IF NOT FOUND THEN  -- the first batch of this subscription
        INSERT INTO pgnats.subscription_stats AS st
               (subject, callback, processed, failed, last_message_at, last_failure_at)
        SELECT subscription, _count.callback, _count.processed, _count.failed, pg_catalog.now(),
               CASE WHEN _count.failed OPERATOR(pg_catalog.>) 0 THEN pg_catalog.now() END
         WHERE EXISTS (SELECT FROM pgnats.subscriptions s
                        WHERE s.subject OPERATOR(pg_catalog.=) subscription
                          AND s.callback OPERATOR(pg_catalog.=)
                              _count.callback::pg_catalog.regprocedure)
        ON CONFLICT ON CONSTRAINT subscription_stats_pkey DO UPDATE
           SET processed = st.processed OPERATOR(pg_catalog.+) excluded.processed,
               failed = st.failed OPERATOR(pg_catalog.+) excluded.failed,
               last_message_at = excluded.last_message_at,
               last_failure_at = coalesce(excluded.last_failure_at, st.last_failure_at);
    END IF;
END
$$;

-- Runs one subscription's messages of a batch (see above), and counts them. In isolating
-- mode the failures are returned (idx: 1-based position in payloads) and counted as such.
CREATE FUNCTION pgnats._dispatch(role oid, subscription text, callback oid, payloads bytea[],
                                 isolate boolean)
RETURNS TABLE (idx integer, err_sqlstate text, err_message text, err_detail text,
               err_hint text, err_context text)
LANGUAGE plpgsql AS $$
DECLARE
    found_oid oid;
    how_many integer;
    failures bigint;
BEGIN
    SELECT pg_catalog.count(*), pg_catalog.min(p.oid) INTO how_many, found_oid
      FROM pg_catalog.pg_proc p
     WHERE p.pronamespace OPERATOR(pg_catalog.=) pg_catalog.pg_my_temp_schema()
       AND p.proname OPERATOR(pg_catalog.=) 'pgnats_call';
    IF how_many OPERATOR(pg_catalog.<>) 1 OR NOT EXISTS (
        SELECT FROM pg_catalog.pg_proc p
         WHERE p.oid OPERATOR(pg_catalog.=) found_oid
           AND p.proowner OPERATOR(pg_catalog.=) role
           AND p.prosecdef
           AND p.proconfig IS NULL
           AND p.prolang OPERATOR(pg_catalog.=)
               (SELECT l.oid FROM pg_catalog.pg_language l
                 WHERE l.lanname OPERATOR(pg_catalog.=) 'plpgsql')
           AND p.proargtypes OPERATOR(pg_catalog.=)
               '26 26 1001 16'::pg_catalog.oidvector
           AND p.prosrc OPERATOR(pg_catalog.=) pgnats._dispatcher_source())
    THEN
        RAISE EXCEPTION 'pgnats: the dispatch function of role % is missing or was modified', role
            USING ERRCODE = 'PN101';
    END IF;
    -- The only function of that name in pg_temp is the one just checked. (A static call:
    -- its plan is cached, and replanned when the function is replaced.)
    RETURN QUERY SELECT * FROM pg_temp.pgnats_call(role, callback, payloads, isolate);
    GET DIAGNOSTICS failures = ROW_COUNT;
    -- Whatever the callbacks did to the session's settings (or LISTENs) ends here: it is
    -- reset in this transaction, so the next one starts as the session did.
    RESET ALL;
    UNLISTEN *;
    PERFORM pgnats._count(subscription, callback,
                          pg_catalog.cardinality(payloads) OPERATOR(pg_catalog.-) failures,
                          failures);
END
$$;

REVOKE ALL ON FUNCTION pgnats._prepare_dispatch(oid) FROM PUBLIC;
REVOKE ALL ON FUNCTION pgnats._dispatch(oid, text, oid, bytea[], boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION pgnats._count(text, oid, bigint, bigint) FROM PUBLIC;
