-- pgnats 1.0: NATS for PostgreSQL.
-- The public functions are created in the extension's schema (the current schema, usually
-- public); internal objects live in the schema pgnats. Every PL/Python body is two lines:
-- load the Python package once per session, then call the function of the same name in
-- pgnats.backend.api (extension/pgnats/backend/api.py).

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

CREATE FUNCTION nats_get_server_info() RETURNS pgnats.server_info
LANGUAGE plpython3u AS $$
if 'pgnats' not in GD: plpy.execute('SELECT pgnats._load_python()')
return GD['pgnats'].nats_get_server_info()
$$;

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

CREATE FUNCTION nats_publish_binary(subject text, payload bytea, reply text DEFAULT NULL, headers jsonb DEFAULT NULL) RETURNS void
LANGUAGE plpython3u AS $$
if 'pgnats' not in GD: plpy.execute('SELECT pgnats._load_python()')
return GD['pgnats'].nats_publish_binary(subject, payload, reply, headers)
$$;

CREATE FUNCTION nats_publish_text(subject text, payload text, reply text DEFAULT NULL, headers jsonb DEFAULT NULL) RETURNS void
LANGUAGE plpython3u AS $$
if 'pgnats' not in GD: plpy.execute('SELECT pgnats._load_python()')
return GD['pgnats'].nats_publish_text(subject, payload, reply, headers)
$$;

CREATE FUNCTION nats_publish_json(subject text, payload json, reply text DEFAULT NULL, headers jsonb DEFAULT NULL) RETURNS void
LANGUAGE plpython3u AS $$
if 'pgnats' not in GD: plpy.execute('SELECT pgnats._load_python()')
return GD['pgnats'].nats_publish_json(subject, payload, reply, headers)
$$;

CREATE FUNCTION nats_publish_jsonb(subject text, payload jsonb, reply text DEFAULT NULL, headers jsonb DEFAULT NULL) RETURNS void
LANGUAGE plpython3u AS $$
if 'pgnats' not in GD: plpy.execute('SELECT pgnats._load_python()')
return GD['pgnats'].nats_publish_jsonb(subject, payload, reply, headers)
$$;

CREATE FUNCTION nats_request_binary(subject text, payload bytea, timeout integer DEFAULT NULL) RETURNS bytea
LANGUAGE plpython3u AS $$
if 'pgnats' not in GD: plpy.execute('SELECT pgnats._load_python()')
return GD['pgnats'].nats_request_binary(subject, payload, timeout)
$$;

CREATE FUNCTION nats_request_text(subject text, payload text, timeout integer DEFAULT NULL) RETURNS bytea
LANGUAGE plpython3u AS $$
if 'pgnats' not in GD: plpy.execute('SELECT pgnats._load_python()')
return GD['pgnats'].nats_request_text(subject, payload, timeout)
$$;

CREATE FUNCTION nats_request_json(subject text, payload json, timeout integer DEFAULT NULL) RETURNS bytea
LANGUAGE plpython3u AS $$
if 'pgnats' not in GD: plpy.execute('SELECT pgnats._load_python()')
return GD['pgnats'].nats_request_json(subject, payload, timeout)
$$;

CREATE FUNCTION nats_request_jsonb(subject text, payload jsonb, timeout integer DEFAULT NULL) RETURNS bytea
LANGUAGE plpython3u AS $$
if 'pgnats' not in GD: plpy.execute('SELECT pgnats._load_python()')
return GD['pgnats'].nats_request_jsonb(subject, payload, timeout)
$$;


----------------------------------------------------------------------------------------------
-- JetStream: stream publish, key-value, object store
----------------------------------------------------------------------------------------------

CREATE FUNCTION nats_publish_binary_stream(subject text, payload bytea, headers jsonb DEFAULT NULL) RETURNS void
LANGUAGE plpython3u AS $$
if 'pgnats' not in GD: plpy.execute('SELECT pgnats._load_python()')
return GD['pgnats'].nats_publish_binary_stream(subject, payload, headers)
$$;

CREATE FUNCTION nats_publish_text_stream(subject text, payload text, headers jsonb DEFAULT NULL) RETURNS void
LANGUAGE plpython3u AS $$
if 'pgnats' not in GD: plpy.execute('SELECT pgnats._load_python()')
return GD['pgnats'].nats_publish_text_stream(subject, payload, headers)
$$;

CREATE FUNCTION nats_publish_json_stream(subject text, payload json, headers jsonb DEFAULT NULL) RETURNS void
LANGUAGE plpython3u AS $$
if 'pgnats' not in GD: plpy.execute('SELECT pgnats._load_python()')
return GD['pgnats'].nats_publish_json_stream(subject, payload, headers)
$$;

CREATE FUNCTION nats_publish_jsonb_stream(subject text, payload jsonb, headers jsonb DEFAULT NULL) RETURNS void
LANGUAGE plpython3u AS $$
if 'pgnats' not in GD: plpy.execute('SELECT pgnats._load_python()')
return GD['pgnats'].nats_publish_jsonb_stream(subject, payload, headers)
$$;

CREATE FUNCTION nats_put_binary(bucket text, key text, data bytea) RETURNS bigint
LANGUAGE plpython3u AS $$
if 'pgnats' not in GD: plpy.execute('SELECT pgnats._load_python()')
return GD['pgnats'].nats_put_binary(bucket, key, data)
$$;

CREATE FUNCTION nats_put_text(bucket text, key text, data text) RETURNS bigint
LANGUAGE plpython3u AS $$
if 'pgnats' not in GD: plpy.execute('SELECT pgnats._load_python()')
return GD['pgnats'].nats_put_text(bucket, key, data)
$$;

CREATE FUNCTION nats_put_json(bucket text, key text, data json) RETURNS bigint
LANGUAGE plpython3u AS $$
if 'pgnats' not in GD: plpy.execute('SELECT pgnats._load_python()')
return GD['pgnats'].nats_put_json(bucket, key, data)
$$;

CREATE FUNCTION nats_put_jsonb(bucket text, key text, data jsonb) RETURNS bigint
LANGUAGE plpython3u AS $$
if 'pgnats' not in GD: plpy.execute('SELECT pgnats._load_python()')
return GD['pgnats'].nats_put_jsonb(bucket, key, data)
$$;

CREATE FUNCTION nats_get_binary(bucket text, key text) RETURNS bytea
LANGUAGE plpython3u AS $$
if 'pgnats' not in GD: plpy.execute('SELECT pgnats._load_python()')
return GD['pgnats'].nats_get_binary(bucket, key)
$$;

CREATE FUNCTION nats_get_text(bucket text, key text) RETURNS text
LANGUAGE plpython3u AS $$
if 'pgnats' not in GD: plpy.execute('SELECT pgnats._load_python()')
return GD['pgnats'].nats_get_text(bucket, key)
$$;

CREATE FUNCTION nats_get_json(bucket text, key text) RETURNS json
LANGUAGE plpython3u AS $$
if 'pgnats' not in GD: plpy.execute('SELECT pgnats._load_python()')
return GD['pgnats'].nats_get_json(bucket, key)
$$;

CREATE FUNCTION nats_get_jsonb(bucket text, key text) RETURNS jsonb
LANGUAGE plpython3u AS $$
if 'pgnats' not in GD: plpy.execute('SELECT pgnats._load_python()')
return GD['pgnats'].nats_get_jsonb(bucket, key)
$$;

CREATE FUNCTION nats_delete_value(bucket text, key text) RETURNS void
LANGUAGE plpython3u AS $$
if 'pgnats' not in GD: plpy.execute('SELECT pgnats._load_python()')
return GD['pgnats'].nats_delete_value(bucket, key)
$$;

CREATE FUNCTION nats_put_file(store text, name text, content bytea) RETURNS void
LANGUAGE plpython3u AS $$
if 'pgnats' not in GD: plpy.execute('SELECT pgnats._load_python()')
return GD['pgnats'].nats_put_file(store, name, content)
$$;

CREATE FUNCTION nats_get_file(store text, name text) RETURNS bytea
LANGUAGE plpython3u AS $$
if 'pgnats' not in GD: plpy.execute('SELECT pgnats._load_python()')
return GD['pgnats'].nats_get_file(store, name)
$$;

CREATE FUNCTION nats_delete_file(store text, name text) RETURNS void
LANGUAGE plpython3u AS $$
if 'pgnats' not in GD: plpy.execute('SELECT pgnats._load_python()')
return GD['pgnats'].nats_delete_file(store, name)
$$;

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

CREATE FUNCTION nats_get_file_info(store text, name text) RETURNS SETOF pgnats.file_info
LANGUAGE plpython3u AS $$
if 'pgnats' not in GD: plpy.execute('SELECT pgnats._load_python()')
return GD['pgnats'].nats_get_file_info(store, name)
$$;

CREATE FUNCTION nats_get_file_list(store text) RETURNS SETOF pgnats.file_info
LANGUAGE plpython3u AS $$
if 'pgnats' not in GD: plpy.execute('SELECT pgnats._load_python()')
return GD['pgnats'].nats_get_file_list(store)
$$;
