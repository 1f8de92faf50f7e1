"""Alembic environment for the shared chain (run once, in the shared schema).

All logic lives in tenantmig.chains.env so that plain ``alembic -n shared ...`` and tenantmig
configure migrations identically.
"""

from tenantmig.chains.env import run_shared_env

run_shared_env()
