"""The server layer: settings, connections, identifiers, PostgreSQL error codes and sessions.

Nothing here knows about runs, tenants' revisions or Alembic chains; everything above may use it.
"""
