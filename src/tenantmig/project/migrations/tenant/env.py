"""Alembic environment for the tenant chain (run per tenant schema).

Plain Alembic: ``alembic -n tenant -x tenant=acme upgrade head``. tenantmig itself does not execute
this file per tenant (that would reload every script for every tenant); it calls the same
configuration code in tenantmig.chains.env directly.
"""

from tenantmig.chains.env import run_tenant_env

run_tenant_env()
