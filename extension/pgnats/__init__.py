"""pgnats: NATS for PostgreSQL.

The modules at this level (``config``, ``subjects``, ``errors``) are plain Python shared by
the extension and the worker. ``pgnats.backend`` runs only inside a PostgreSQL backend
(PL/Python) and imports ``plpy``.
"""

__version__ = "1.0.0"
