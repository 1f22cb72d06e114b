"""``python -m pgnats_worker``: the same as the ``pgnats-worker`` command."""

from pgnats_worker.cli import main

main()
