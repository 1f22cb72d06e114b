"""``make demo``: the guide's complete example (a user registration system) on the local stack.

Brings up PostgreSQL, NATS and pgnats-worker (``python -m devstack up``), creates the
database ``pgnats_demo``, runs the guide's SQL as written with psql, and shows what happened:
the rows the callback wrote and the ``email.send`` message it published, as a NATS
subscriber saw it.
"""

from __future__ import annotations

import asyncio
import json
import time

import nats
import psycopg

from devstack.guide import guide_sql, run_psql
from devstack.stack import Stack

DATABASE = "pgnats_demo"
EXAMPLE = "Complete Example: User Registration System"
WAIT_SECONDS = 30.0


def _section(title: str) -> None:
    print(f"\n== {title}")


def _prepare_database(stack: Stack) -> None:
    with psycopg.connect(stack.postgres.dsn(), autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {DATABASE}")
    with psycopg.connect(stack.postgres.dsn(DATABASE), autocommit=True) as conn:
        conn.execute("CREATE EXTENSION pgnats CASCADE")


def _wait_until(conn: psycopg.Connection[tuple[object, ...]], query: str, what: str) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        row = conn.execute(query).fetchone()
        if row is not None and row[0]:
            return
        if time.monotonic() > deadline:
            raise SystemExit(f"demo: timed out waiting for {what}; see the worker log")
        time.sleep(0.1)


async def _run(stack: Stack) -> None:
    url = stack.postgres.url(DATABASE)
    steps, verify = guide_sql(EXAMPLE).split("-- 5. Verify")
    setup, publish = steps.split("-- 4. Test it")

    _section("The guide, step 1: the foreign server (as written)")
    server_sql = guide_sql("1. Foreign Server Configuration")
    print(server_sql.strip())
    run_psql(url, server_sql)
    with psycopg.connect(stack.postgres.dsn(DATABASE), autocommit=True) as conn:
        if stack.nats.port != 4222:
            print(f"(NATS runs on {stack.nats.url} here: 4222 was taken)")
            conn.execute(f"ALTER SERVER nats_server OPTIONS (SET nats_url '{stack.nats.url}')")

        # The subscriber that plays the e-mail service.
        client = await nats.connect(stack.nats.url, connect_timeout=5)
        emails = await client.subscribe("email.send")
        await client.flush()

        _section(f"{EXAMPLE}: tables, callback, subscription (as written)")
        print(await asyncio.to_thread(run_psql, url, setup))
        _wait_until(
            conn,
            "SELECT bool_and(subscribed) FROM pgnats.subscription_status "
            "WHERE subject = 'user.register'",
            "the worker to subscribe to user.register",
        )
        _section("4. Test it: a registration is published")
        print(publish.strip())
        await asyncio.to_thread(run_psql, url, publish)
        message = await emails.next_msg(timeout=WAIT_SECONDS)
        _wait_until(conn, "SELECT count(*) FROM registration_events", "the callback's rows")

        _section("5. Verify: what the worker's call of handle_user_registration wrote")
        print(await asyncio.to_thread(run_psql, url, verify))
        _section("The email.send message, as a NATS subscriber received it")
        print(f"subject: {message.subject}")
        print(f"data:    {json.dumps(json.loads(message.data))}")
        await client.close()


def main() -> None:
    stack = Stack(name="dev", prefer_default_ports=True)
    _section("Starting PostgreSQL, NATS and pgnats-worker")
    stack.up()
    stack.start_worker()
    print(f"PostgreSQL {stack.postgres.url()}, NATS {stack.nats.url}")
    _prepare_database(stack)
    asyncio.run(_run(stack))
    _section("Next")
    print(f"connect:     . {stack.env_path} && psql -d {DATABASE}")
    print("status:      SELECT * FROM pgnats.subscription_status;")
    print(f"worker log:  {stack.worker.log_path}   (grep PGNATS)")
    print("stop:        make stack-down")


if __name__ == "__main__":
    main()
