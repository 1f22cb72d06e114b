"""Code that runs inside a PostgreSQL backend, called from the SQL functions of pgnats.

``api`` holds one function per SQL function; the rest are its helpers.
"""
