"""The two Alembic chains: their scripts, the environment code env.py shares with tenantmig,
running a chain in one schema, and the ``ops`` helpers revisions call."""
