"""The ``pgnats-worker`` command."""

from __future__ import annotations

import argparse


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="pgnats-worker")
    parser.add_argument("--dsn", required=True, help="any database of the cluster")
    parser.parse_args(argv)
    raise SystemExit("pgnats-worker: not built yet")


if __name__ == "__main__":
    main()
