"""``python -m devstack up|down|destroy|env``: the local stack from the command line.

``up`` starts PostgreSQL, NATS and pgnats-worker (in the background); ``down`` stops all three.
"""

from __future__ import annotations

import argparse

from devstack.stack import Stack


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m devstack", description=__doc__)
    parser.add_argument("command", choices=["up", "down", "destroy", "env"])
    parser.add_argument("--name", default="dev", help="stack name (folder under .stack/)")
    args = parser.parse_args()
    stack = Stack(name=args.name, prefer_default_ports=True)
    if args.command == "up":
        stack.up()
        stack.start_worker()
        env = stack.env()
        print(f"PostgreSQL  {stack.postgres.url()}  (log: {stack.postgres.log_path})")
        print(f"NATS        {env['NATS_URL']}  (log: {stack.nats.log_path})")
        print(f"worker      pgnats-worker  (log: {stack.worker.log_path})")
        print(f"environment . {stack.env_path}")
    elif args.command == "down":
        stack.down()
        print("stopped")
    elif args.command == "destroy":
        stack.destroy()
        print("stopped and removed")
    else:
        print(stack.env_path.read_text() if stack.env_path.exists() else "stack is not up")


if __name__ == "__main__":
    main()
