"""Rollouts in waves: which tenant goes in which wave, and the rules between waves.

A wave spec is a comma-separated list, each element one of ``label:L`` (the tenants with label
L), ``N%`` (a share of all selected tenants, rounded up), ``N`` (a count) or ``rest``; e.g.
``label:canary,5%,25%,rest``. Waves take tenants in that order, each from those no earlier
wave took; tenants left after the last wave make an implicit last wave (``rest``), so every
selected tenant is in exactly one wave. Shares and counts are drawn in a stable order, a hash
of the seed and the tenant's name, so the tenants pulled into early waves are the same from
one rollout to the next until the seed changes.

The assignment is resolved once, at the start of a run, and recorded in the ledger with each
tenant's target (``tenantmig_run_tenants.wave``); a resumed rollout reads it from there and
never derives it again from today's tenant list.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tenantmig.errors import ConfigError
from tenantmig.schema.labels import LABEL
from tenantmig.schema.registry import Tenant

DEFAULT_SEED = "tenantmig"
_SHARE = re.compile(r"(\d+(?:\.\d+)?)%")


@dataclass(frozen=True)
class WaveSpec:
    """One wave as written: ``label:L``, ``N%``, ``N`` or ``rest``."""

    kind: str  # label / share / count / rest
    label: str | None = None
    amount: float = 0.0

    def __str__(self) -> str:
        if self.kind == "label":
            return f"label:{self.label}"
        if self.kind == "share":
            return f"{self.amount:g}%"
        if self.kind == "count":
            return str(int(self.amount))
        return "rest"


def parse_waves(spec: str) -> tuple[WaveSpec, ...]:
    """The waves of ``spec``; a clear error for anything else (before anything changes)."""
    parts = [part.strip() for part in spec.split(",")]
    if not spec.strip() or any(not part for part in parts):
        raise ConfigError(f"--waves {spec!r}: an empty wave; give e.g. label:canary,5%,25%,rest")
    waves: list[WaveSpec] = []
    for part in parts:
        waves.append(_parse_one(part, spec))
    rests = [i for i, wave in enumerate(waves) if wave.kind == "rest"]
    if rests and rests != [len(waves) - 1]:
        raise ConfigError(f"--waves {spec!r}: rest can only be the last wave, once")
    return tuple(waves)


def _parse_one(part: str, spec: str) -> WaveSpec:
    if part == "rest":
        return WaveSpec("rest")
    if part.startswith("label:"):
        label = part[len("label:") :]
        if not LABEL.fullmatch(label):
            raise ConfigError(f"--waves {spec!r}: {label!r} is not a label")
        return WaveSpec("label", label=label)
    share = _SHARE.fullmatch(part)
    if share:
        amount = float(share.group(1))
        if not 0 < amount <= 100:
            raise ConfigError(f"--waves {spec!r}: {part} is not a share between 0% and 100%")
        return WaveSpec("share", amount=amount)
    if part.isdigit():
        if int(part) < 1:
            raise ConfigError(f"--waves {spec!r}: a wave of 0 tenants")
        return WaveSpec("count", amount=int(part))
    raise ConfigError(f"--waves {spec!r}: {part!r} is not a wave; each is label:L, N%, N or rest")


def stable_order(tenants: Sequence[Tenant], seed: str) -> list[Tenant]:
    """``tenants`` in the order shares and counts draw them: a hash of the seed and the name
    (the same from one rollout to the next; any seed gives a fair shuffle)."""

    def key(tenant: Tenant) -> bytes:
        return hashlib.sha256(f"{seed}\0{tenant.name}".encode()).digest()

    return sorted(tenants, key=key)


def assign(
    waves: Sequence[WaveSpec], tenants: Sequence[Tenant], seed: str = DEFAULT_SEED
) -> tuple[tuple[WaveSpec, ...], dict[str, int]]:
    """(the waves, with an implicit ``rest`` when tenants are left; tenant name -> its wave's
    index). A written wave that takes no tenant is an error: a label nobody has, a share of
    tenants an earlier wave took already."""
    order = stable_order(tenants, seed)
    total = len(order)
    taken: dict[str, int] = {}
    resolved = list(waves)
    if not resolved or resolved[-1].kind != "rest":
        resolved.append(WaveSpec("rest"))  # implicit: dropped below when nothing is left
    for index, wave in enumerate(resolved):
        left = [t for t in order if t.name not in taken]
        if wave.kind == "label":
            chosen = [t for t in left if wave.label in t.labels]
        elif wave.kind == "share":
            chosen = left[: math.ceil(total * wave.amount / 100)]
        elif wave.kind == "count":
            chosen = left[: int(wave.amount)]
        else:
            chosen = left
        if not chosen:
            if index == len(resolved) - 1 and wave.kind == "rest":
                resolved.pop()
                break
            if wave.kind != "label":
                why = "every tenant is in an earlier wave"
            elif any(wave.label in t.labels for t in order):
                why = f"the tenants with label {wave.label} are in earlier waves"
            else:
                why = f"no selected tenant has the label {wave.label}"
            raise ConfigError(f"wave {index + 1} ({wave}) would be empty: {why}")
        for tenant in chosen:
            taken[tenant.name] = index
    return tuple(resolved), taken


@dataclass(frozen=True)
class Rollout:
    """A run in waves: its waves as resolved, and the rules between them."""

    waves: tuple[WaveSpec, ...]
    seed: str = DEFAULT_SEED
    max_failures: int = 0  # a wave with more failures than this stops the rollout
    pause_after_wave: bool = False
    soak_s: float = 0.0  # wait this long after a wave, then check its tenants with drift

    def describe(self, index: int) -> str:
        return f"wave {index + 1} of {len(self.waves)} ({self.waves[index]})"

    def to_options(self) -> dict[str, Any]:
        """What the ledger's run options keep (a resume reads them back)."""
        return {
            "waves": [str(wave) for wave in self.waves],
            "wave_seed": self.seed,
            "wave_max_failures": self.max_failures,
            "pause_after_wave": self.pause_after_wave,
            "soak_s": self.soak_s,
        }

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> Rollout | None:
        if not options.get("waves"):
            return None
        return cls(
            waves=tuple(parse_waves(",".join(options["waves"]))),
            seed=str(options.get("wave_seed", DEFAULT_SEED)),
            max_failures=int(options.get("wave_max_failures", 0)),
            pause_after_wave=bool(options.get("pause_after_wave", False)),
            soak_s=float(options.get("soak_s", 0.0)),
        )


def check_rollout(max_failures: int, soak_s: float) -> None:
    if max_failures < 0:
        raise ConfigError("--wave-max-failures must be 0 or more")
    if soak_s < 0:
        raise ConfigError("--soak must be 0 or more seconds")
