"""Each statement of a step assessed: its lock (``statements.LOCK_MODES``) and its effect.

The lock levels follow PostgreSQL's documentation (and ``AlterTableGetLockLevel`` in its
source for ALTER TABLE's sub-commands); the tests compare them with ``pg_locks``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from tenantmig.risk.statements import Assessment, Catalog

AE, SRE, SUE, SH, RE, AS = (
    "ACCESS EXCLUSIVE",
    "SHARE ROW EXCLUSIVE",
    "SHARE UPDATE EXCLUSIVE",
    "SHARE",
    "ROW EXCLUSIVE",
    "ACCESS SHARE",
)
_SERIALS = {"serial", "serial4", "bigserial", "serial8", "smallserial", "serial2"}
_SHOWN = 100  # a statement in a plan's or lint's text: one line, this long at most


def one_line(sql: str) -> str:
    """``sql`` on one line, whole (as --json and the HTML plan show it)."""
    return " ".join(sql.split())


def shortened(sql: str, width: int = _SHOWN) -> str:
    """``sql`` cut to ``width`` characters, for a terminal."""
    return sql if len(sql) <= width else sql[: width - 3] + "..."


def assess(sql: str, catalog: Catalog) -> list[Assessment]:
    """Every statement in ``sql``, assessed; session and transaction statements are left out
    (SET, BEGIN, COMMIT: they lock no table). A table created by an earlier statement is empty
    and nobody else sees it until the commit: what later statements do to it costs nothing."""
    import pglast

    found: list[Assessment] = []
    encoded = sql.encode()
    for raw in pglast.parse_sql(sql):
        start = raw.stmt_location or 0
        length = raw.stmt_len or len(encoded) - start
        text = encoded[start : start + length].decode().strip()
        assessed = _assess_one(raw.stmt, text, catalog)
        if assessed is None:
            continue
        created = {a.creates for a in found if a.creates}
        if assessed.table in created and assessed.effect != "destructive":
            assessed.effect = "metadata-only"
            assessed.why = [f"{assessed.table} is created earlier in the step: empty, unseen"]
            assessed.locks.pop(assessed.table or "", None)
            assessed.lock = assessed.table = None
            for table, mode in list(assessed.locks.items()):  # what else it locks, if anything
                assessed.take(table, mode)
        found.append(assessed)
    return found


def _name(node: Any) -> str | None:
    """A RangeVar's table name (the schema is the tenant's: left out)."""
    return getattr(node, "relname", None) if node is not None else None


def _assess_one(stmt: Any, text: str, catalog: Catalog) -> Assessment | None:
    kind = type(stmt).__name__
    handler = _HANDLERS.get(kind)
    if handler is None:
        if kind in _IGNORED:
            return None
        return Assessment(one_line(text), _command(kind))
    assessment = Assessment(one_line(text), _command(kind))
    handler(stmt, assessment, catalog)
    return assessment


_IGNORED = {"VariableSetStmt", "TransactionStmt", "VariableShowStmt"}


def _command(kind: str) -> str:
    words = {
        "AlterTableStmt": "ALTER TABLE",
        "IndexStmt": "CREATE INDEX",
        "CreateStmt": "CREATE TABLE",
        "DropStmt": "DROP",
        "TruncateStmt": "TRUNCATE",
        "RenameStmt": "RENAME",
        "CreateTrigStmt": "CREATE TRIGGER",
        "CommentStmt": "COMMENT",
        "InsertStmt": "INSERT",
        "UpdateStmt": "UPDATE",
        "DeleteStmt": "DELETE",
        "ViewStmt": "CREATE VIEW",
        "CreateFunctionStmt": "CREATE FUNCTION",
        "GrantStmt": "GRANT",
        "ClusterStmt": "CLUSTER",
        "VacuumStmt": "VACUUM",
        "RefreshMatViewStmt": "REFRESH MATERIALIZED VIEW",
        "CreateSeqStmt": "CREATE SEQUENCE",
        "AlterSeqStmt": "ALTER SEQUENCE",
        "CreateEnumStmt": "CREATE TYPE",
        "AlterEnumStmt": "ALTER TYPE",
        "CreateTableAsStmt": "CREATE TABLE AS",
        "SelectStmt": "SELECT",
        "DoStmt": "DO",
    }
    return words.get(kind, kind.removesuffix("Stmt").upper())


# -- ALTER TABLE ----------------------------------------------------------------------------------
def _alter_table(stmt: Any, a: Assessment, catalog: Catalog) -> None:
    from pglast.enums import AlterTableType as T
    from pglast.enums import ObjectType

    table = _name(stmt.relation)
    objtype = getattr(stmt, "objtype", None)
    if objtype is not None and objtype not in (ObjectType.OBJECT_TABLE, 0):
        a.command = "ALTER " + str(getattr(objtype, "name", objtype)).removeprefix("OBJECT_")
    for cmd in stmt.cmds or ():
        subtype = cmd.subtype
        column = cmd.name
        mode = AE
        if subtype in (T.AT_ValidateConstraint, T.AT_SetStatistics, T.AT_ClusterOn,
                       T.AT_DropCluster, T.AT_SetOptions, T.AT_ResetOptions,
                       T.AT_AttachPartition):  # fmt: skip
            mode = SUE
        elif subtype in (T.AT_SetRelOptions, T.AT_ResetRelOptions, T.AT_ReplaceRelOptions):
            mode = SUE
        elif subtype in (T.AT_EnableTrig, T.AT_DisableTrig, T.AT_EnableAlwaysTrig,
                         T.AT_EnableReplicaTrig, T.AT_EnableTrigAll, T.AT_DisableTrigAll,
                         T.AT_EnableTrigUser, T.AT_DisableTrigUser):  # fmt: skip
            mode = SRE
        elif subtype == T.AT_AddConstraint and _is_foreign_key(cmd.def_):
            mode = SRE
        a.take(table, mode)  # first: on a tie, the table altered is the one named
        if subtype == T.AT_AddConstraint and _is_foreign_key(cmd.def_):
            a.take(_name(cmd.def_.pktable), SRE)  # the referenced table, for the check
        if subtype == T.AT_AddColumn:
            _add_column(cmd.def_, table, a, catalog)
        elif subtype == T.AT_AlterColumnType:
            _alter_type(cmd.def_, table, column, a, catalog)
        elif subtype == T.AT_SetNotNull:
            a.does("scan", f"SET NOT NULL on {column}: every row is checked")
        elif subtype == T.AT_AddConstraint:
            _add_constraint(cmd.def_, a)
        elif subtype == T.AT_ValidateConstraint:
            a.does("scan", f"VALIDATE CONSTRAINT {column}: every row is checked (writes go on)")
        elif subtype == T.AT_DropColumn:
            a.does("destructive", f"DROP COLUMN {column}: its data goes")
        elif subtype in (T.AT_SetLogged, T.AT_SetUnLogged, T.AT_SetTableSpace,
                         T.AT_SetAccessMethod):  # fmt: skip
            a.does("rewrite", "the table is copied anew")
        elif subtype in (T.AT_AddIdentity, T.AT_SetExpression):
            a.does("rewrite", f"{column}: every row gets a value")


def _is_foreign_key(constraint: Any) -> bool:
    from pglast.enums import ConstrType

    return getattr(constraint, "contype", None) == ConstrType.CONSTR_FOREIGN


def _add_constraint(constraint: Any, a: Assessment) -> None:
    from pglast.enums import ConstrType as C

    contype = getattr(constraint, "contype", None)
    name = getattr(constraint, "conname", None) or "a constraint"
    if contype in (C.CONSTR_CHECK, C.CONSTR_FOREIGN):
        if getattr(constraint, "skip_validation", False):
            return  # NOT VALID: existing rows are not checked now
        kind = "CHECK" if contype == C.CONSTR_CHECK else "FOREIGN KEY"
        a.does("scan", f"ADD {kind} {name} without NOT VALID: every row is checked")
    elif contype in (C.CONSTR_PRIMARY, C.CONSTR_UNIQUE, C.CONSTR_EXCLUSION):
        if getattr(constraint, "indexname", None):
            return  # USING INDEX: an index built beforehand (CONCURRENTLY) is taken over
        a.does("scan", f"ADD {name}: its index is built from every row, writes blocked")
    elif contype == C.CONSTR_NOTNULL:
        a.does("scan", f"ADD {name} NOT NULL: every row is checked")


def _add_column(column: Any, table: str | None, a: Assessment, catalog: Catalog) -> None:
    from pglast.enums import ConstrType as C

    name = column.colname
    type_names = [n.sval for n in column.typeName.names] if column.typeName else []
    if type_names and type_names[-1] in _SERIALS:
        a.does("rewrite", f"ADD COLUMN {name} {type_names[-1]}: every row gets a sequence value")
        return
    defaults = [column.raw_default] if getattr(column, "raw_default", None) else []
    for constraint in column.constraints or ():
        if constraint.contype == C.CONSTR_DEFAULT and constraint.raw_expr is not None:
            defaults.append(constraint.raw_expr)
        elif constraint.contype == C.CONSTR_IDENTITY:
            a.does("rewrite", f"ADD COLUMN {name} GENERATED AS IDENTITY: every row gets a value")
            return
        elif constraint.contype == C.CONSTR_GENERATED:
            a.does("rewrite", f"ADD COLUMN {name} GENERATED ... STORED: computed for every row")
            return
        elif constraint.contype in (C.CONSTR_CHECK, C.CONSTR_FOREIGN):
            if not getattr(constraint, "skip_validation", False):
                a.does("scan", f"ADD COLUMN {name} with a constraint: every row is checked")
    functions = sorted({f for expr in defaults for f in _functions(expr)})
    if functions and catalog.volatile(functions):
        a.does(
            "rewrite",
            f"ADD COLUMN {name} DEFAULT {', '.join(functions)}(): a volatile default is "
            "computed and written for every row",
        )


def _functions(node: Any) -> Iterator[str]:
    """The names of the functions called anywhere in an expression."""
    from pglast import ast
    from pglast.visitors import Visitor

    found: list[str] = []

    class Calls(Visitor):
        def visit_FuncCall(self, ancestors: Any, node: ast.FuncCall) -> None:
            names: Any = node.funcname
            found.append(names[-1].sval)

        def visit_SQLValueFunction(self, ancestors: Any, node: Any) -> None:
            pass  # CURRENT_TIMESTAMP and friends: stable, no rewrite

    Calls()(node)
    return iter(found)


def _alter_type(
    definition: Any, table: str | None, column: str | None, a: Assessment, catalog: Catalog
) -> None:
    names = [n.sval for n in definition.typeName.names]
    written = ".".join(names)
    mods = [getattr(m.val, "ival", None) for m in (definition.typeName.typmods or ())]
    mods_int = [m for m in mods if isinstance(m, int)]
    target = catalog.type_of(written, mods_int)
    current = catalog.column(table, column) if table and column else None
    shown = target[2] if target else written
    if getattr(definition, "raw_default", None) is not None:  # USING ...
        a.does("rewrite", f"ALTER COLUMN {column} TYPE {shown} USING ...: every row is rewritten")
        return
    if current is None or target is None:
        if current is None and table is not None and catalog.ask is not None:
            return  # a column this step makes: nothing to rewrite yet
        a.does("rewrite", f"ALTER COLUMN {column} TYPE {shown}: assumed to rewrite the table")
        return
    (old, old_mod, old_shown), (new, new_mod, _) = current, target
    if old == new:
        if new_mod == old_mod or _wider(old_shown, old_mod, new_mod):
            return  # the same type, as wide or wider: the catalog only
    elif catalog.binary_coercible(old, new) and (new_mod == -1 or new_mod == old_mod):
        return  # e.g. varchar -> text: the catalog only
    a.does(
        "rewrite",
        f"ALTER COLUMN {column} TYPE {shown} from {old_shown}: not binary-coercible, every row "
        "is rewritten",
    )


def _wider(shown: str, old: int, new: int) -> bool:
    """A length or precision raised (or its limit removed): no rewrite for varchar, numeric
    with the same scale."""
    if new == -1:
        return shown.startswith(("character varying", "numeric", "bit varying"))
    if shown.startswith("character varying") or shown.startswith("bit varying"):
        return new >= old
    if shown.startswith("numeric") and old != -1:
        old_scale, new_scale = (old - 4) & 0xFFFF, (new - 4) & 0xFFFF
        return new_scale == old_scale and new >= old
    return False


# -- other commands ------------------------------------------------------------------------------
def _create_index(stmt: Any, a: Assessment, catalog: Catalog) -> None:
    table = _name(stmt.relation)
    if stmt.concurrent:
        a.command = "CREATE INDEX CONCURRENTLY"
        a.take(table, SUE)
        a.does("scan", "the index is built from every row, twice; writes go on")
    else:
        a.take(table, SH)
        a.does("scan", "the index is built from every row; writes are blocked meanwhile")


def _create_table(stmt: Any, a: Assessment, catalog: Catalog) -> None:
    # A new table: nobody else can see it yet. A foreign key locks the table it references.
    a.creates = _name(stmt.relation)
    for element in stmt.tableElts or ():
        for constraint in [element, *(getattr(element, "constraints", None) or ())]:
            if _is_foreign_key(constraint):
                a.take(_name(constraint.pktable), SRE)


def _drop(stmt: Any, a: Assessment, catalog: Catalog) -> None:
    from pglast.enums import ObjectType as O

    what = str(getattr(stmt.removeType, "name", stmt.removeType)).removeprefix("OBJECT_")
    a.command = f"DROP {what.replace('_', ' ')}"
    names = [[n.sval for n in obj] if isinstance(obj, tuple) else [] for obj in stmt.objects]
    last = [n[-1] for n in names if n]
    if stmt.removeType in (O.OBJECT_TABLE, O.OBJECT_MATVIEW):
        for table in last:
            a.take(table, AE)
        a.does("destructive", f"DROP TABLE {', '.join(last)}: its rows go")
    elif stmt.removeType == O.OBJECT_INDEX:
        # The index's table is locked too; which it is, is in the catalog, not the statement.
        a.command = "DROP INDEX CONCURRENTLY" if stmt.concurrent else "DROP INDEX"
        for index in last:
            a.take(index, SUE if stmt.concurrent else AE)
    elif stmt.removeType == O.OBJECT_SCHEMA:
        a.does("destructive", "DROP SCHEMA: everything in it goes")
    elif stmt.removeType == O.OBJECT_TRIGGER:
        for name in names:
            if len(name) >= 2:
                a.take(name[-2], AE)


def _truncate(stmt: Any, a: Assessment, catalog: Catalog) -> None:
    tables = [_name(r) for r in stmt.relations]
    for table in tables:
        a.take(table, AE)
    a.does("destructive", f"TRUNCATE {', '.join(t for t in tables if t)}: every row goes")


def _rename(stmt: Any, a: Assessment, catalog: Catalog) -> None:
    a.take(_name(stmt.relation), AE)


def _create_trigger(stmt: Any, a: Assessment, catalog: Catalog) -> None:
    a.take(_name(stmt.relation), SRE)


def _comment(stmt: Any, a: Assessment, catalog: Catalog) -> None:
    from pglast.enums import ObjectType as O

    target = stmt.object
    if stmt.objtype in (O.OBJECT_TABLE, O.OBJECT_COLUMN) and isinstance(target, tuple):
        names = [n.sval for n in target]
        table = (
            names[-1] if stmt.objtype == O.OBJECT_TABLE else names[-2] if len(names) > 1 else None
        )
        a.take(table, SUE)


def _insert(stmt: Any, a: Assessment, catalog: Catalog) -> None:
    a.take(_name(stmt.relation), RE)


def _update_or_delete(stmt: Any, a: Assessment, catalog: Catalog) -> None:
    table = _name(stmt.relation)
    a.take(table, RE)
    everything = stmt.whereClause is None
    if a.command == "DELETE" and everything:
        a.does("destructive", f"DELETE FROM {table} without WHERE: every row goes")
    else:
        rows = "every row" if everything else "the rows it matches (a scan without an index)"
        a.does("scan", f"{a.command} of {rows} of {table}, row locks held to the commit")


def _cluster(stmt: Any, a: Assessment, catalog: Catalog) -> None:
    a.take(_name(stmt.relation), AE)
    a.does("rewrite", "CLUSTER copies the table in index order")


def _vacuum(stmt: Any, a: Assessment, catalog: Catalog) -> None:
    full = any(getattr(o, "defname", "") == "full" for o in stmt.options or ())
    for relation in stmt.rels or ():
        a.take(_name(relation.relation), AE if full else SUE)
    if full:
        a.does("rewrite", "VACUUM FULL copies the table")


def _refresh(stmt: Any, a: Assessment, catalog: Catalog) -> None:
    a.take(_name(stmt.relation), "EXCLUSIVE" if stmt.concurrent else AE)
    a.does("scan", "the view's query runs in full")


def _select(stmt: Any, a: Assessment, catalog: Catalog) -> None:
    for item in stmt.fromClause or ():
        a.take(_name(item) if type(item).__name__ == "RangeVar" else None, AS)


_HANDLERS = {
    "AlterTableStmt": _alter_table,
    "IndexStmt": _create_index,
    "CreateStmt": _create_table,
    "DropStmt": _drop,
    "TruncateStmt": _truncate,
    "RenameStmt": _rename,
    "CreateTrigStmt": _create_trigger,
    "CommentStmt": _comment,
    "InsertStmt": _insert,
    "UpdateStmt": _update_or_delete,
    "DeleteStmt": _update_or_delete,
    "ClusterStmt": _cluster,
    "VacuumStmt": _vacuum,
    "RefreshMatViewStmt": _refresh,
    "SelectStmt": _select,
}
