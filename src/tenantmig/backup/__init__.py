"""pg_dump of a tenant schema before it is migrated, and an atomic restore of such a dump."""
