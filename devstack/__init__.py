"""The local development and test stack: a PostgreSQL cluster with pgnats installed and a
NATS server with JetStream, on free ports, under a folder git ignores.

Used by ``python -m devstack`` (``make stack-up``) and by the test fixtures.
"""
