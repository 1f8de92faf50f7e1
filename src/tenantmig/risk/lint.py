"""`tenantmig lint`: a migration linter that knows the fleet.

Each revision's SQL (Alembic's, rendered offline for a tenant) is read with PostgreSQL's parser
(``risk.classify``) and checked by tenantmig's rules, which need the fleet, and by ``squawk``
(the ``tenantmig[lint]`` extra), a linter of PostgreSQL migrations:

- ``large-table-rewrite`` / ``large-table-scan`` (error): a statement rewrites or scans a table
  under a lock that blocks writes (SHARE or stronger), and that table is larger than
  ``lint_max_table_size`` (default 100 MB) in some tenant; the tenants are named;
- ``lock-held-across-data-migration`` (error): a statement writes rows after an earlier one of
  the same revision took a lock above ROW EXCLUSIVE: a tenant's revision is one transaction, so
  that lock is held while the rows are written;
- ``destructive`` (error): DROP TABLE, DROP COLUMN, TRUNCATE, DELETE without WHERE; allowed
  with ``--allow destructive``.

squawk's findings keep its level (warning or error). Rules tenantmig makes moot are left out:
it sets lock_timeout and statement_timeout itself, and runs each tenant's revisions in one
transaction (``require-lock-timeout``, ``require-statement-timeout``, ``prefer-robust-stmts``,
``transaction-nesting``), and it asks the server whether a type change rewrites the table
(``changing-column-type``, which flags every type change).

A rule is allowed for one revision by a comment in its file, ``# tenantmig: allow RULE
reason``, for every revision by ``lint_allow = RULE, ...`` in alembic.ini, or for one run by
``--allow RULE``. Allowed findings are listed as such and do not fail the lint.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tenantmig.chains.scripts import ChainScripts
from tenantmig.errors import ConfigError, NotRenderable, SharedSchemaNotReady
from tenantmig.risk.classify import assess, shortened
from tenantmig.risk.plan import versions_where_they_live
from tenantmig.risk.statements import LOCK_MODES, Assessment, Catalog, catalog_of
from tenantmig.schema.registry import Tenant, by_database, list_tenants
from tenantmig.schema.sizes import table_sizes
from tenantmig.server.config import Settings
from tenantmig.server.database import Database, DatabaseSet

SQUAWK_LEFT_OUT = (
    "require-lock-timeout",
    "require-statement-timeout",
    "prefer-robust-stmts",
    "transaction-nesting",
    # Whether a type change rewrites the table is asked of the server (large-table-rewrite);
    # squawk, reading the SQL alone, flags every type change.
    "changing-column-type",
)
OWN_RULES = (
    "large-table-rewrite",
    "large-table-scan",
    "lock-held-across-data-migration",
    "destructive",
)
_ALLOW = re.compile(r"#\s*tenantmig:\s*allow\s+([a-z0-9_-]+)(.*)$", re.M)


@dataclass
class Finding:
    revision: str
    rule: str
    level: str  # error / warning
    message: str
    statement: str | None = None
    source: str = "tenantmig"  # or squawk
    tenants: list[str] = field(default_factory=list)
    allowed: str | None = None  # why it does not count: the comment, the setting, --allow

    def to_json(self) -> dict[str, Any]:
        return {
            "revision": self.revision,
            "rule": self.rule,
            "level": self.level,
            "source": self.source,
            "message": self.message,
            "statement": self.statement,
            "tenants": self.tenants,
            "allowed": self.allowed,
        }


@dataclass
class LintReport:
    revisions: list[str]
    findings: list[Finding]
    squawk: str | None  # squawk's version, or None when it is not installed
    max_table_size: int
    note: str | None = None  # what this lint could not weigh

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.level == "error" and f.allowed is None]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.level != "error" and f.allowed is None]

    def to_json(self) -> dict[str, Any]:
        return {
            "revisions": self.revisions,
            "errors": len(self.errors),
            "warnings": len(self.warnings),
            "squawk": self.squawk,
            "max_table_size": self.max_table_size,
            "note": self.note,
            "findings": [f.to_json() for f in self.findings],
        }

    def text(self) -> str:
        allowed = sum(1 for f in self.findings if f.allowed is not None)
        lines = [
            f"lint: {len(self.revisions)} revision(s): {len(self.errors)} error(s), "
            f"{len(self.warnings)} warning(s)"
            + (f", {allowed} allowed" if allowed else "")
            + (
                ""
                if self.squawk
                else "; squawk is not installed (pip install "
                "'tenantmig[lint]'): tenantmig's own rules only"
            )
        ]
        if self.note:
            lines.append(f"note: {self.note}")
        for f in self.findings:
            state = f"allowed ({f.allowed})" if f.allowed else f.level
            lines.append(f"{f.revision}  {state}  {f.rule}  [{f.source}]")
            if f.statement:
                lines.append(f"    {shortened(f.statement)}")
            lines.append(f"    {f.message}")
        return "\n".join(lines)


# -- the lint ------------------------------------------------------------------------------------
def lint(
    settings: Settings,
    database: Database,
    revisions: Sequence[str] = (),
    allow: Sequence[str] = (),
) -> LintReport:
    from tenantmig.chains.offline import offline_sql

    scripts = ChainScripts(settings, "tenant")
    ordered = list(scripts.order)  # base first
    infos = {info.revision: info for info in scripts.revisions()}
    for revision in revisions:
        if revision not in ordered:
            raise ConfigError(f"revision {revision!r} is not in the tenant migrations")
    with database.engine.connect() as conn, conn.begin():
        try:
            tenants = list_tenants(conn, settings.tenant_source)
        except SharedSchemaNotReady:
            tenants = []  # a CI database without the registry: the SQL alone is linted
    databases = DatabaseSet(settings, database)
    try:
        positions = _positions(databases, tenants, scripts)
        chosen = list(revisions) or _not_everywhere(ordered, positions.values())
        squawk = _squawk_version()
        allowed_everywhere = {**dict.fromkeys(settings.lint_allow, "lint_allow in alembic.ini"),
                              **dict.fromkeys(allow, "--allow")}  # fmt: skip
        findings: list[Finding] = []
        unrendered: list[str] = []
        for revision in chosen:
            info = infos[revision]
            down = info.down_revision
            sample = _sample(tenants, positions, ordered.index(revision))
            try:
                sql = offline_sql(
                    settings, "tenant", sample.schema if sample else "tenant", "upgrade", down,
                    revision,
                )  # fmt: skip
            except NotRenderable as exc:
                unrendered.append(str(exc))
                continue
            assessed = _assessed(databases, sample, sql)
            found = _own_rules(revision, assessed)
            found += _large_tables(databases, tenants, revision, assessed, settings)
            if squawk is not None:
                found += _squawk(revision, sql)
            comments = _allowed_in(Path(info.path))
            for finding in found:
                why = comments.get(finding.rule) or allowed_everywhere.get(finding.rule)
                finding.allowed = why
            findings += found
    finally:
        databases.close()
    notes = []
    if not tenants:
        notes.append(
            "no tenants: every revision linted as written, without the tables' sizes (the "
            "large-table rules need the fleet's database)"
        )
    notes += [f"not linted: {reason}" for reason in unrendered]
    note = "; ".join(notes) or None
    return LintReport(chosen, findings, squawk, settings.lint_max_table_size, note)


def _positions(
    databases: DatabaseSet, tenants: Sequence[Tenant], scripts: ChainScripts
) -> dict[str, int]:
    """Each reachable tenant's position in the chain (-1: at base)."""
    versions, _down = versions_where_they_live(databases, tenants)
    positions: dict[str, int] = {}
    for tenant in tenants:
        version = versions.get(tenant.schema)
        if version is None or not version.schema_exists:
            continue
        revision = version.revision
        positions[tenant.name] = scripts.position(revision) if scripts.knows(revision) else -1
    return positions


def _not_everywhere(ordered: list[str], positions: Any) -> list[str]:
    """The revisions some tenant has not got yet (every revision when there is no tenant)."""
    lowest = min(positions, default=-1)
    return ordered[lowest + 1 :] if lowest >= 0 else ordered


def _sample(tenants: Sequence[Tenant], positions: dict[str, int], index: int) -> Tenant | None:
    """The tenant furthest along that has not got revision ``index`` yet: its tables are the
    closest there is to what the revision starts from."""
    before = [t for t in tenants if t.name in positions and positions[t.name] < index]
    return max(before, key=lambda t: positions[t.name], default=None)


def _assessed(databases: DatabaseSet, sample: Tenant | None, sql: str) -> list[Assessment]:
    if sample is None:
        return [a for a in assess(sql, Catalog(None)) if not a.bookkeeping]
    with databases.get(sample.database).engine.connect() as conn:
        with catalog_of(conn, sample.schema) as catalog:
            return [a for a in assess(sql, catalog) if not a.bookkeeping]


def _own_rules(revision: str, assessed: list[Assessment]) -> list[Finding]:
    findings: list[Finding] = []
    strong: Assessment | None = None  # the first statement to take a lock above ROW EXCLUSIVE
    for a in assessed:
        if a.effect == "destructive":
            message = (
                "; ".join(a.why) + ": add --allow destructive, or '# tenantmig: allow "
                "destructive REASON' to the revision"
            )
            findings.append(Finding(revision, "destructive", "error", message, a.sql))
        writes = a.command in ("INSERT", "UPDATE", "DELETE")
        if writes and strong is not None:
            findings.append(
                Finding(
                    revision,
                    "lock-held-across-data-migration",
                    "error",
                    f"{a.command} runs while `{strong.sql}` holds {strong.lock} on "
                    f"{strong.table} (to the tenant's commit): move the data migration to a "
                    "revision of its own",
                    a.sql,
                )
            )
        if strong is None and a.lock is not None and a.table is not None:
            if LOCK_MODES.index(a.lock) > LOCK_MODES.index("ROW EXCLUSIVE"):
                strong = a
    return findings


def _large_tables(
    databases: DatabaseSet,
    tenants: Sequence[Tenant],
    revision: str,
    assessed: list[Assessment],
    settings: Settings,
) -> list[Finding]:
    """Rewrites and scans under a lock that blocks writes, of a table larger than the limit
    in some tenant (sizes read in bulk, per table)."""
    limit = settings.lint_max_table_size
    blocking = [
        a for a in assessed
        if a.touches_rows and a.lock is not None and a.table is not None
        and LOCK_MODES.index(a.lock) >= LOCK_MODES.index("SHARE")
    ]  # fmt: skip
    if not blocking:
        return []
    sizes = _sizes(databases, tenants, sorted({a.table for a in blocking if a.table}))
    findings: list[Finding] = []
    for a in blocking:
        large = sorted(
            (
                (size, name)
                for (name, table), size in sizes.items()
                if table == a.table and size > limit
            ),
            reverse=True,
        )
        if not large:
            continue
        rule = "large-table-rewrite" if a.effect == "rewrite" else "large-table-scan"
        biggest = large[0]
        findings.append(
            Finding(
                revision,
                rule,
                "error",
                f"{a.lock} on {a.table} blocks its writes while it {a.effect}s "
                f"{_shown(biggest[0])} in {biggest[1]}"
                + (
                    f" (and {len(large) - 1} more tenant(s) over {_shown(limit)})"
                    if len(large) > 1
                    else ""
                )
                + f": {'; '.join(a.why)}",
                a.sql,
                tenants=[name for _, name in large],
            )
        )
    return findings


def _shown(size: int) -> str:
    value = float(size)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 1024 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


def _sizes(
    databases: DatabaseSet, tenants: Sequence[Tenant], tables: list[str]
) -> dict[tuple[str, str], int]:
    """(tenant, table) -> total size, for ``tables`` in every reachable tenant."""
    sizes: dict[tuple[str, str], int] = {}
    for name, group in by_database(tenants).items():
        if databases.unreachable(name) is not None:
            continue
        by_schema = {t.schema: t.name for t in group}
        with databases.get(name).engine.connect() as conn, conn.begin():
            found = table_sizes(conn, list(by_schema), tables)
        for (schema, table), (size, _rows) in found.items():
            sizes[(by_schema[schema], table)] = size
    return sizes


def _allowed_in(path: Path) -> dict[str, str]:
    """``# tenantmig: allow RULE reason`` comments of a revision file: rule -> why."""
    try:
        text = path.read_text()
    except OSError:
        return {}
    return {
        rule: f"its revision says: {reason.strip() or 'no reason given'}"
        for rule, reason in _ALLOW.findall(text)
    }


# -- squawk --------------------------------------------------------------------------------------
def _squawk_binary() -> str | None:
    beside = Path(sys.executable).parent / "squawk"
    return str(beside) if beside.exists() else shutil.which("squawk")


def _squawk_version() -> str | None:
    binary = _squawk_binary()
    if binary is None:
        return None
    done = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30)
    return done.stdout.strip().removeprefix("squawk ").strip() or "unknown"


def _squawk(revision: str, sql: str) -> list[Finding]:
    binary = _squawk_binary()
    assert binary is not None
    statements = sql.splitlines()
    with tempfile.NamedTemporaryFile("w", suffix=".sql") as file:
        file.write(sql)
        file.flush()
        done = subprocess.run(
            [binary, "--reporter", "json", "--exclude", ",".join(SQUAWK_LEFT_OUT), file.name],
            capture_output=True,
            text=True,
            timeout=60,
        )
    try:
        reported = json.loads(done.stdout or "[]")
    except json.JSONDecodeError:
        return [Finding(revision, "squawk", "warning", f"squawk said: {done.stderr.strip()[:300]}")]
    findings = []
    for item in reported:
        line = int(item.get("line", 0))
        text = statements[line].strip() if 0 <= line < len(statements) else None
        help_text = f" ({item['help']})" if item.get("help") else ""
        findings.append(
            Finding(
                revision,
                str(item.get("rule_name", "squawk")),
                "error" if str(item.get("level", "")).lower() == "error" else "warning",
                f"{item.get('message', '')}{help_text}",
                text,
                source="squawk",
            )
        )
    return findings
