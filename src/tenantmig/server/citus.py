"""A Citus coordinator with schema-based sharding: each tenant schema a distributed schema.

With ``citus.enable_schema_based_sharding``, every table of a distributed schema lives on one
worker node; the coordinator keeps a data-less copy of it and forwards DDL to that worker. Three
things differ from a single PostgreSQL server, and this flavour handles each:

- **Statements one at a time.** For CREATE/DROP INDEX, ADD CONSTRAINT, DROP/RENAME COLUMN and
  SET, Citus sends the *whole client query string* to the worker, which rejects several commands
  in one string ("cannot insert multiple commands into a prepared statement") or, for SET, would
  run the other statements of the string there as well. So every statement is its own string.
- **Timeouts on the workers.** A worker waits for its own locks (an application transaction
  reading a tenant's table holds them on the worker, not on the coordinator). ``set_config()`` is
  not propagated at all, and ``SET LOCAL`` only after ``SET LOCAL citus.propagate_set_commands =
  'local'``; then Citus sends the SET to every worker connection the transaction opens, so
  ``lock_timeout`` bounds the DDL's lock waits on every node.
- **Locks anywhere.** The session blocking a tenant may be on any node: ``citus_locks`` and
  ``citus_stat_activity`` read every node's ``pg_locks`` and ``pg_stat_activity``.

The advisory locks (the run lock, each tenant's lock) stay on the coordinator, which every
runner goes through: they serialise runners exactly as on one server.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tenantmig.errors import ConfigError
from tenantmig.server.flavour import LockHolder, PostgreSQL, RestoreScript, ServerFlavour
from tenantmig.server.identifiers import qualified, quote_ident, quote_literal
from tenantmig.server.session import Timeouts, prepare_migration_transaction


def _set_local(conn: Connection, name: str, value: str) -> None:
    # Its own query string: Citus forwards the whole string of a SET to the workers.
    conn.exec_driver_sql(f"SET LOCAL {name} = %(value)s", {"value": value})


@dataclass(frozen=True)
class Citus(PostgreSQL):
    """A Citus coordinator (see the module docstring). ``version`` is Citus's own, e.g. 13.2-1."""

    version: str = ""
    name = "citus"

    def prepare_migration(
        self,
        conn: Connection,
        schema: str,
        timeouts: Timeouts,
        *,
        verify: bool = True,
        local: bool = True,
    ) -> None:
        """As on PostgreSQL, after sending the timeouts as SET LOCAL for the workers.

        Session-level settings (``local=False``, for steps with autocommit blocks) are not
        propagated by Citus: there the timeouts bound the coordinator's waits only
        (documented in docs/citus.md).
        """
        if local:
            _set_local(conn, "citus.propagate_set_commands", "local")
            _set_local(conn, "lock_timeout", f"{timeouts.lock_timeout_ms}ms")
            _set_local(conn, "statement_timeout", f"{timeouts.statement_timeout_ms}ms")
            # A worker's backend waiting for a lock notices that the coordinator's connection
            # is gone (the runner was killed) within a second, as the coordinator's does.
            _set_local(conn, "client_connection_check_interval", "1000")
        prepare_migration_transaction(conn, schema, timeouts, verify=verify, local=local)

    def send_statements(self, conn: Connection, statements: Sequence[str]) -> Sequence[Any]:
        """Each statement as its own query string, in the caller's transaction; the last
        one's rows. One round trip per statement, unlike PostgreSQL's one per step."""
        rows: Sequence[Any] = []
        for statement in statements:
            result = conn.exec_driver_sql(statement, execution_options={"no_parameters": True})
            rows = result.all() if result.returns_rows else []
        return rows

    def lock_holders(self, conn: Connection, schema: str, limit: int = 3) -> list[LockHolder]:
        """Sessions on any node holding granted locks on the schema's tables or their shards.

        One line per distributed transaction (global pid): the session that started it, and
        the lock as the node holding it names the relation (a shard on a worker is the table's
        name with ``_<shard id>``).
        """
        rows = conn.execute(
            sa.text(
                "WITH held AS ("
                " SELECT l.global_pid, l.nodeid, l.relation_name, l.mode FROM citus_locks l"
                " WHERE l.granted AND l.locktype = 'relation' AND l.mode <> 'SIReadLock'"
                " AND starts_with(l.relation_name, quote_ident(:schema) || '.')"
                " AND l.global_pid <> citus_backend_gpid())"
                " SELECT DISTINCT ON (h.global_pid) h.global_pid, h.relation_name, h.mode,"
                " a.pid, a.usename, a.application_name, a.state,"
                " extract(epoch FROM now() - a.xact_start)::int AS xact_age_s,"
                " n.nodename || ':' || n.nodeport AS node"
                " FROM held h"
                " JOIN citus_stat_activity a"
                "  ON a.global_pid = h.global_pid AND NOT a.is_worker_query"
                " LEFT JOIN pg_dist_node n ON n.nodeid = a.nodeid"
                # The lock as the session's own node sees it first: the table, not a shard.
                " ORDER BY h.global_pid, h.nodeid = a.nodeid DESC, h.relation_name"
                " LIMIT :limit"
            ),
            {"schema": schema, "limit": limit},
        ).all()
        return [
            LockHolder(
                r.pid,
                r.usename,
                r.application_name,
                r.state,
                r.relation_name,
                r.mode,
                r.xact_age_s,
                node=r.node,
                global_pid=r.global_pid,
            )
            for r in rows
        ]

    def begin_scratch(self, conn: Connection) -> None:
        """Scratch schemas stay on the coordinator: compiling a step or building a drift
        reference there needs no worker, and Alembic sends the same SQL either way."""
        conn.execute(
            sa.text("SELECT set_config('citus.enable_schema_based_sharding', 'off', true)")
        )

    def create_schema(self, conn: Connection, schema: str, *, distribute: bool) -> None:
        """A distributed schema (placed on a worker with its first table) or a local one,
        whatever the database's default."""
        conn.execute(
            sa.text("SELECT set_config('citus.enable_schema_based_sharding', :on, true)"),
            {"on": "on" if distribute else "off"},
        )
        conn.exec_driver_sql(f"CREATE SCHEMA {quote_ident(schema)}")

    def placements(self, conn: Connection, schemas: Iterable[str]) -> dict[str, str]:
        """The node holding each distributed schema's tables (``host:port``); ``coordinator``
        for a schema that is not distributed; nothing for a distributed schema without tables
        yet (it is placed with its first table)."""
        names = list(schemas)
        if not names:
            return {}
        rows = conn.execute(
            sa.text(
                "SELECT s.name, d.schemaid IS NOT NULL AS distributed,"
                " (SELECT n.nodename || ':' || n.nodeport"
                "  FROM pg_dist_partition p"
                "  JOIN pg_dist_shard sh ON sh.logicalrelid = p.logicalrelid"
                "  JOIN pg_dist_placement pl ON pl.shardid = sh.shardid"
                "  JOIN pg_dist_node n ON n.groupid = pl.groupid"
                "  WHERE p.colocationid = d.colocationid AND n.noderole = 'primary'"
                "  LIMIT 1) AS node"
                " FROM unnest(CAST(:names AS text[])) AS s(name)"
                " JOIN pg_namespace ns ON ns.nspname = s.name"
                " LEFT JOIN pg_dist_schema d ON d.schemaid = ns.oid"
            ),
            {"names": names},
        ).all()
        placed = {}
        for r in rows:
            if not r.distributed:
                placed[r.name] = "coordinator"
            elif r.node is not None:
                placed[r.name] = r.node
        return placed

    def is_distributed(self, conn: Connection, schema: str) -> bool:
        return bool(
            conn.execute(
                sa.text(
                    "SELECT EXISTS (SELECT FROM pg_dist_schema"
                    " WHERE schemaid = to_regnamespace(:s))"
                ),
                {"s": quote_ident(schema)},
            ).scalar()
        )

    def restore_script(
        self, schema: str, timeouts: Timeouts, *, distribute: bool, lock: bool = True
    ) -> RestoreScript:
        """The schema is restored as a local schema and then distributed again.

        pg_dump writes identity columns as CREATE TABLE followed by ALTER TABLE ... ADD
        GENERATED, which Citus refuses on a distributed table; a local schema takes the dump
        as PostgreSQL does, and citus_schema_distribute() then moves its tables, rows and all,
        to a worker, inside the same transaction. The SETs are LOCAL and propagated, so the
        DROP's lock waits on the worker are bounded too; the dump's own plain ``SET
        lock_timeout = 0`` reaches the coordinator only, and is undone before distributing.
        """
        plain = super().restore_script(schema, timeouts, distribute=distribute, lock=lock)
        before = (
            "SET LOCAL citus.propagate_set_commands = 'local';\n"
            f"SET LOCAL statement_timeout = '{timeouts.statement_timeout_ms}ms';\n"
            + plain.before
            + "SET LOCAL citus.enable_schema_based_sharding = off;\n"
        )
        after = ""
        if distribute:
            after = (
                f"SET LOCAL lock_timeout = '{timeouts.lock_timeout_ms}ms';\n"
                f"SELECT citus_schema_distribute({quote_literal(quote_ident(schema))});\n"
            )
        return RestoreScript(before, after)

    def make_reference_tables(
        self,
        conn: Connection,
        schema: str,
        wanted: Sequence[str] | None,
        leave_out: Iterable[str],
        timeouts: Timeouts,
    ) -> list[str]:
        """Make the shared schema's tables reference tables (copied to every node, so a tenant
        table on any worker may have a foreign key to them), in the caller's transaction.

        ``wanted`` None means every table but ``leave_out``. Tables that are reference tables
        already are skipped, and a table is converted after the tables it references (Citus
        refuses a reference table with a foreign key to a local table). Converting copies the
        table to every worker under a lock that blocks its writers meanwhile.
        """
        tables = conn.execute(
            sa.text(
                "SELECT c.relname, c.oid IN (SELECT logicalrelid FROM pg_dist_partition)"
                " AS done,"
                " array(SELECT DISTINCT f.relname FROM pg_constraint k"
                "  JOIN pg_class f ON f.oid = k.confrelid"
                "  WHERE k.conrelid = c.oid AND k.contype = 'f' AND k.confrelid <> c.oid"
                "  AND f.relnamespace = c.relnamespace) AS refs"
                " FROM pg_class c WHERE c.relnamespace = to_regnamespace(:s)"
                " AND c.relkind IN ('r', 'p') AND NOT c.relispartition ORDER BY c.relname"
            ),
            {"s": quote_ident(schema)},
        ).all()
        found = {t.relname: t for t in tables}
        if wanted is None:
            excluded = set(leave_out)
            chosen = [name for name in found if name not in excluded]
        else:
            missing = [name for name in wanted if name not in found]
            if missing:
                raise ConfigError(
                    f"citus_reference_tables names {', '.join(missing)}, which the shared "
                    f"schema {schema} does not have (after its migrations ran); no table was "
                    "made a reference table"
                )
            chosen = list(wanted)
        ordered: list[str] = []

        def visit(name: str, path: tuple[str, ...]) -> None:
            if name in ordered or name in path or name not in found:
                return
            for referenced in found[name].refs:
                visit(referenced, (*path, name))
            ordered.append(name)

        for name in chosen:
            visit(name, ())
        todo = [name for name in ordered if not found[name].done]
        if todo:
            _set_local(conn, "citus.propagate_set_commands", "local")
            _set_local(conn, "lock_timeout", f"{timeouts.lock_timeout_ms}ms")
        for name in todo:
            conn.execute(
                sa.text("SELECT create_reference_table(CAST(:t AS regclass))"),
                {"t": qualified(schema, name)},
            )
        return todo


def detect(conn: Connection) -> ServerFlavour:
    """The flavour of the server behind ``conn``: Citus when its extension is installed.

    Refuses a Citus worker node: DDL sent there would change one node's shards behind the
    coordinator's back (Citus itself refuses most of it), and its catalog shows a part of the
    tenants only.
    """
    version = conn.execute(
        sa.text("SELECT extversion FROM pg_extension WHERE extname = 'citus'")
    ).scalar()
    if version is None:
        return PostgreSQL()
    if not conn.execute(sa.text("SELECT citus_is_coordinator()")).scalar():
        node = conn.execute(
            sa.text("SELECT coalesce(host(inet_server_addr()), 'local socket'), inet_server_port()")
        ).one()
        raise ConfigError(
            f"this database is a Citus worker node ({node[0]} port {node[1]}), not the "
            "coordinator; point tenantmig at the coordinator: it forwards every change to the "
            "worker holding each tenant. Nothing was changed"
        )
    return Citus(version=str(version))
