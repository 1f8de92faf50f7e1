"""One run: the plan (built once, frozen), the coordinator, the worker pool, the per-tenant
migrator, replay of compiled steps, the run locks and the ledger."""
