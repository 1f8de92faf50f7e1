"""Wave specs and the assignment of tenants to waves (pure: no database)."""

from __future__ import annotations

import pytest

from tenantmig.errors import ConfigError
from tenantmig.run.waves import assign, parse_waves
from tenantmig.schema.registry import Tenant


def _tenants(n: int, labelled: dict[str, tuple[str, ...]] | None = None) -> list[Tenant]:
    labelled = labelled or {}
    names = [f"t{i:03d}" for i in range(n)]
    return [Tenant(name, name, "active", labels=labelled.get(name, ())) for name in names]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "an empty wave"),
        ("5%,,rest", "an empty wave"),
        ("0%", "not a share between 0% and 100%"),
        ("110%", "not a share between 0% and 100%"),
        ("0", "a wave of 0 tenants"),
        ("label:", "is not a label"),
        ("label:Canary", "is not a label"),
        ("rest,5%", "rest can only be the last wave"),
        ("rest,rest", "rest can only be the last wave"),
        ("half", "is not a wave"),
        ("-5", "is not a wave"),
    ],
)
def test_bad_specs_are_refused(spec: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_waves(spec)


def test_every_tenant_is_in_exactly_one_wave_in_a_stable_order() -> None:
    tenants = _tenants(100, {"t007": ("canary",), "t042": ("canary", "eu")})
    waves, wave_of = assign(parse_waves("label:canary,5%,25%,rest"), tenants)
    assert [str(w) for w in waves] == ["label:canary", "5%", "25%", "rest"]
    assert set(wave_of) == {t.name for t in tenants}  # each once (a dict: exactly one wave)
    sizes = [sum(1 for w in wave_of.values() if w == i) for i in range(4)]
    assert sizes == [2, 5, 25, 68]  # shares of all 100 selected, rounded up
    assert wave_of["t007"] == wave_of["t042"] == 0
    again = assign(parse_waves("label:canary,5%,25%,rest"), list(reversed(tenants)))[1]
    assert again == wave_of  # the same tenants in the same waves, whatever the input order
    reseeded = assign(parse_waves("label:canary,5%,25%,rest"), tenants, seed="other")[1]
    assert reseeded != wave_of and {n for n, w in reseeded.items() if w == 0} == {"t007", "t042"}


def test_left_over_tenants_make_a_last_wave_and_empty_waves_are_refused() -> None:
    tenants = _tenants(10, {"t001": ("canary",)})
    waves, wave_of = assign(parse_waves("label:canary,3"), tenants)
    assert [str(w) for w in waves] == ["label:canary", "3", "rest"]
    assert sorted(wave_of.values()).count(2) == 6
    waves, _ = assign(parse_waves("label:canary,100%"), tenants)
    assert [str(w) for w in waves] == ["label:canary", "100%"]  # nothing left: no rest
    with pytest.raises(ConfigError, match=r"wave 1 \(label:nobody\) would be empty: no selected"):
        assign(parse_waves("label:nobody,rest"), tenants)
    with pytest.raises(ConfigError, match=r"wave 2 \(label:canary\) would be empty: the tenants"):
        assign(parse_waves("label:canary,label:canary"), tenants)
    with pytest.raises(ConfigError, match=r"wave 2 \(5\) would be empty: every tenant"):
        assign(parse_waves("100%,5"), tenants)
    waves, _ = assign(parse_waves("100%,rest"), tenants)
    assert [str(w) for w in waves] == ["100%"]  # rest takes what is left, maybe nothing
