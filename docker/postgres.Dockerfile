# PostgreSQL 15 with pgnats installed (PL/Python3u + the extension's Python package).
# Untested here: the development machines have no Docker engine.
FROM postgres:15-bookworm

RUN apt-get update \
 && apt-get install -y --no-install-recommends \
        postgresql-plpython3-15 postgresql-server-dev-15 make python3-venv \
 && rm -rf /var/lib/apt/lists/*

COPY . /src/pgnats
# A throwaway venv supplies pip for `make install` (Debian's python3 has none).
RUN python3 -m venv /tmp/build-venv \
 && make -C /src/pgnats install PYTHON=/tmp/build-venv/bin/python \
 && rm -rf /tmp/build-venv /src/pgnats

# Create the extension in the default database on first start.
RUN printf 'CREATE EXTENSION IF NOT EXISTS pgnats CASCADE;\n' \
        > /docker-entrypoint-initdb.d/10-pgnats.sql
