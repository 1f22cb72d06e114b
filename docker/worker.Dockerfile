# The pgnats worker sidecar. Untested here: the development machines have no Docker engine.
FROM python:3.11-slim-bookworm

COPY . /src/pgnats
RUN pip install --no-cache-dir /src/pgnats && rm -rf /src/pgnats

ENTRYPOINT ["pgnats-worker"]
CMD ["--dsn", "postgresql://postgres@postgres:5432/postgres"]
