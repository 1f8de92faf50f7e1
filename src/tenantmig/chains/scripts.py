"""A migration chain's scripts: loaded once, queried for heads, order and target revisions."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Literal

from tenantmig.chains import order_cache
from tenantmig.errors import ConfigError, UnknownRevision
from tenantmig.server.config import Chain, Settings

if TYPE_CHECKING:
    from alembic.config import Config as AlembicConfig
    from alembic.script import Script, ScriptDirectory

# Alembic is imported when a chain's scripts are first loaded: a command that needs only the
# chain's order finds it in order_cache while the files are unchanged, and never imports it.

Direction = Literal["upgrade", "downgrade"]


@dataclass(frozen=True)
class RevisionInfo:
    revision: str
    down_revision: str | None  # several, comma-separated, for a merge revision
    message: str
    path: str
    is_head: bool
    next_revisions: tuple[str, ...] = ()  # the revisions that follow it (two or more: a branch)

    def to_json(self) -> dict[str, object]:
        return {
            "revision": self.revision,
            "down_revision": self.down_revision,
            "message": self.message,
            "path": self.path,
            "is_head": self.is_head,
            "next_revisions": list(self.next_revisions),
        }

    @classmethod
    def of(cls, script: Script, heads: Sequence[str]) -> RevisionInfo:
        down = script.down_revision
        return cls(
            revision=script.revision,
            down_revision=down if isinstance(down, str) or down is None else ",".join(down),
            message=(script.doc or "").strip(),
            path=script.path,
            is_head=script.revision in heads,
            next_revisions=tuple(sorted(script.nextrev)),
        )


def is_relative(target: str) -> bool:
    """``-1``, ``+2``: a number of steps from each schema's own revision."""
    return target[:1] in ("+", "-") and target[1:].isdigit()


class ChainScripts:
    """One chain's ScriptDirectory, loaded once per process and reused for every tenant.

    tenantmig supports linear chains (one head). Diverged heads are refused with a message
    rather than migrated in an order nobody chose.

    The order (base to head) comes from ``order_cache`` when the chain's files are those it was
    computed from; the scripts themselves are loaded by Alembic when first needed, at once when
    the order is not known (so a chain that cannot be loaded fails here, as before).
    """

    def __init__(self, settings: Settings, chain: Chain) -> None:
        self.chain: Chain = chain
        self._settings = settings
        self._cache_key = order_cache.cache_key(settings, chain)
        self._cached_order = (
            order_cache.read_order(settings, chain, self._cache_key)
            if self._cache_key is not None
            else None
        )
        if self._cached_order is None:
            _ = self.script

    @cached_property
    def config(self) -> AlembicConfig:
        return self._settings.alembic_config(self.chain)

    @cached_property
    def script(self) -> ScriptDirectory:
        from alembic.script import ScriptDirectory
        from alembic.util import CommandError

        try:
            return ScriptDirectory.from_config(self.config)
        except CommandError as exc:
            raise ConfigError(f"cannot load the {self.chain} migrations: {exc}") from exc

    @cached_property
    def head(self) -> str | None:
        if self._cached_order is not None:
            return self._cached_order[-1] if self._cached_order else None
        heads = self.script.get_heads()
        if len(heads) > 1:
            raise ConfigError(
                f"the {self.chain} chain has diverged heads {', '.join(sorted(heads))}; "
                f"merge them (alembic -n {self.chain} merge heads) before migrating"
            )
        return heads[0] if heads else None

    @cached_property
    def order(self) -> list[str]:
        """Revision ids from base to head."""
        if self._cached_order is not None:
            return list(self._cached_order)
        _ = self.head  # refuse diverged heads before walking
        order = [s.revision for s in reversed(list(self.script.walk_revisions()))]
        if self._cache_key is not None:
            order_cache.write_order(self._settings, self.chain, self._cache_key, order)
        return order

    def position(self, revision: str | None) -> int:
        """Index in base-to-head order; -1 for no revision (base)."""
        if revision is None:
            return -1
        try:
            return self.order.index(revision)
        except ValueError:
            raise UnknownRevision(
                f"revision {revision!r} is not in the {self.chain} migrations"
            ) from None

    def knows(self, revision: str | None) -> bool:
        return revision is None or revision in self.order

    def resolve_target(self, target: str, current: str | None = None) -> str | None:
        """Resolve head/base/a revision id/a unique prefix/relative steps to a revision id.

        Relative targets (``-1``, ``+2``) are resolved against ``current``. Returns None for base.
        """
        if target == "base":
            return None
        if target == "head" or target == "heads":
            return self.head
        if self._cached_order is not None and target in self._cached_order:
            return target  # a full revision id: what Alembic's lookup returns
        if is_relative(target):
            steps = int(target)
            index = self.position(current) + steps
            if index < -1 or index >= len(self.order):
                where = current or "base"
                raise UnknownRevision(
                    f"cannot move {steps:+d} from {where}: the {self.chain} chain has "
                    f"{len(self.order)} revisions"
                )
            return None if index == -1 else self.order[index]
        from alembic.script.revision import RevisionError
        from alembic.util import CommandError

        try:
            found = self.script.get_revision(target)
        except (CommandError, RevisionError) as exc:
            raise UnknownRevision(
                f"revision {target!r} is not in the {self.chain} migrations ({exc})"
            ) from exc
        if found is None:
            return None
        return found.revision

    def already_there(self, direction: Direction, current: str | None, target: str | None) -> bool:
        """The one "nothing to do" rule: a schema at ``current`` is already where ``direction``
        to ``target`` (a resolved revision, None for base) would take it, or past it.

        An upgrade never moves a schema down and a downgrade never moves it up: a tenant ahead
        of an upgrade's target is left alone, not downgraded.
        """
        here, there = self.position(current), self.position(target)
        return there <= here if direction == "upgrade" else there >= here

    def revisions(self) -> list[RevisionInfo]:
        heads = [self.head] if self.head else []
        return [RevisionInfo.of(s, heads) for s in self.script.walk_revisions()]

    # Alembic's inspection verbs: these work on a chain with diverged heads too (merge needs
    # them), so they do not go through ``head``.
    def heads(self) -> list[RevisionInfo]:
        heads = self.script.get_heads()
        return [RevisionInfo.of(self._get(h), heads) for h in sorted(heads)]

    def show(self, revision: str) -> RevisionInfo:
        return RevisionInfo.of(self._get(revision), self.script.get_heads())

    def branch_points(self) -> list[RevisionInfo]:
        heads = self.script.get_heads()
        return [
            RevisionInfo.of(s, heads) for s in self.script.walk_revisions() if s.is_branch_point
        ]

    def _get(self, revision: str) -> Script:
        from alembic.script.revision import RevisionError
        from alembic.util import CommandError

        try:
            found = self.script.get_revision(revision)
        except (CommandError, RevisionError) as exc:
            raise UnknownRevision(
                f"revision {revision!r} is not one revision of the {self.chain} migrations ({exc})"
            ) from exc
        if found is None:
            raise UnknownRevision(f"{revision!r} names no revision of the {self.chain} migrations")
        return found
