"""Every error tenantmig reports to a user, and the exit codes the CLI maps them to.

Each is a TenantmigError whose message tells the user what to do next; the CLI prints it as one
line (no traceback unless --debug) and exits with the error's code. Exceptions used only to steer
control flow inside a run are private to their module and do not inherit from this tree.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    USAGE = 1  # bad input or configuration; nothing was changed
    DRIFT = 2  # drift found (drift), or not every schema at head (status --check)
    TENANTS_FAILED = 3  # some tenants failed; the others finished
    LOCKED = 4  # another run holds the run lock
    RUN_ABORTED = 5  # a database error stopped a run after some tenants had committed
    INTERRUPTED = 130  # SIGINT / SIGTERM


class TenantmigError(Exception):
    """Root of every error tenantmig reports to a user."""

    exit_code: ExitCode = ExitCode.USAGE


class ConfigError(TenantmigError):
    """The configuration (alembic.ini, environment, flags) is missing or invalid."""


class NoTargetMetadata(ConfigError):
    """Autogenerate or check was asked of a chain whose models (target_metadata) are not set."""


class ModelsDiffer(TenantmigError):
    """``tenantmig check``: a chain's models and its migrations disagree."""

    exit_code = ExitCode.DRIFT


class CannotWrite(ConfigError):
    """The server is read-only, or the role may not create what a run needs."""


class NotRenderable(TenantmigError):
    """A revision cannot be written out as SQL without a database (Alembic's offline mode):
    it reads rows, or asks the database something, to decide what to do."""

    def __init__(self, message: str, revision: str | None) -> None:
        super().__init__(message)
        self.revision = revision


class InvalidTenantName(TenantmigError):
    """A tenant name is not a safe PostgreSQL schema identifier."""


class UnknownTenant(TenantmigError):
    """A tenant named on the command line is not registered."""


class TenantExists(TenantmigError):
    """A tenant being created is already registered, or its schema already exists."""


class UnknownRevision(TenantmigError):
    """A revision named by the user (or found in a version table) is not in the chain."""


class DatabaseUnavailable(TenantmigError):
    """The database cannot be reached or refused the credentials."""


class SharedSchemaNotReady(TenantmigError):
    """The shared schema or its tenants table does not exist yet."""


class SchemaMissing(TenantmigError):
    """A tenant is registered (or named) but its schema does not exist."""


class ReadTimedOut(TenantmigError):
    """One of tenantmig's own reads (catalogs, versions, registry, ledger) ran longer than the
    --statement-timeout the user gave and was cancelled; nothing was changed."""


class RunLocked(TenantmigError):
    """Another tenantmig run holds the run lock."""

    exit_code = ExitCode.LOCKED


class TenantBusy(TenantmigError):
    """Another tenantmig operation holds the tenant (a run migrating it, a move, a restore),
    or a move of it is unfinished; nothing was changed."""

    exit_code = ExitCode.LOCKED


class RunAborted(TenantmigError):
    """A database error ended a run after it had started changing schemas.

    Every tenant is still at its old or its new revision (each is one transaction), but some
    did commit: "nothing was changed" would be false. The message names the run to inspect.
    """

    exit_code = ExitCode.RUN_ABORTED


class BackupFailed(TenantmigError):
    """pg_dump or a restore failed for one tenant; that tenant was left unchanged."""

    exit_code = ExitCode.TENANTS_FAILED


def some_names(names: Sequence[str], shown: int = 5) -> str:
    """The first few names and how many more: error messages stay one readable line."""
    listed = ", ".join(names[:shown])
    return listed + (f" and {len(names) - shown} more" if len(names) > shown else "")
