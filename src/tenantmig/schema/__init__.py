"""Reading schemas: the tenant registry, versions in bulk, catalog snapshots, one vocabulary of
schema state, status and drift. Reads only, apart from the registry's own rows."""
