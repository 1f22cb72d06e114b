-- Inside compose, NATS is the service "nats", not localhost.
CREATE SERVER nats_server FOREIGN DATA WRAPPER pgnats_fdw
    OPTIONS (nats_url 'nats://nats:4222');
