"""Tenant labels: `tenants label`, `--label` on every command that selects tenants, labels from
a tenants_from query; bad labels change nothing."""

from __future__ import annotations

import json

import sqlalchemy as sa

from tenantmig.server.config import Settings
from tests.helpers import run_cli
from tests.test_engine import make_tenants

TABLE = "tenantmig_labels"


def _labels_table(engine: sa.Engine) -> bool:
    with engine.connect() as conn:
        return bool(
            conn.exec_driver_sql(f"SELECT to_regclass('public.{TABLE}') IS NOT NULL").scalar()
        )


def _listed(database_url: str, *args: str) -> dict[str, list[str]]:
    done = run_cli("tenants", "list", "--json", *args, url=database_url)
    assert done.returncode == 0, done.stderr
    return {t["name"]: t["labels"] for t in json.loads(done.stdout)}


def _version(engine: sa.Engine, schema: str) -> str | None:
    with engine.connect() as conn:
        return conn.exec_driver_sql(f'SELECT version_num FROM "{schema}".alembic_version').scalar()


def test_labels_are_added_listed_removed_and_bad_ones_change_nothing(
    settings: Settings, engine: sa.Engine, database_url: str
) -> None:
    make_tenants(settings, ["acme", "globex", "initech"], "001_initial_schema")
    for bad in (["--add", "Canary"], ["--add", "1st"], ["--add", "a b"], ["--add", "x" * 64]):
        done = run_cli("tenants", "label", "acme", *bad, url=database_url)
        assert done.returncode == 1 and "bad label" in done.stderr, (bad, done.stderr)
    for args, message in (
        (["nobody", "--add", "canary"], "unknown tenant"),
        (["acme", "--add", "canary", "--remove", "canary"], "both added and removed"),
        (["acme"], "give --add LABEL"),
    ):
        done = run_cli("tenants", "label", *args, url=database_url)
        assert done.returncode == 1 and message in done.stderr, (args, done.stderr)
    assert not _labels_table(engine)  # nothing was written: not even the table

    done = run_cli("tenants", "label", "acme", "globex", "--add", "canary", url=database_url)
    assert done.returncode == 0, done.stderr
    assert "added canary for 2 tenant(s) (2 changed): acme, globex" in done.stdout
    done = run_cli(
        "tenants", "label", "globex", "initech", "--add", "eu", "--add", "canary", "--json",
        url=database_url,
    )  # fmt: skip
    assert json.loads(done.stdout)["pairs_added"] == 3  # globex already had canary
    assert _listed(database_url) == {
        "acme": ["canary"], "globex": ["canary", "eu"], "initech": ["canary", "eu"],
    }  # fmt: skip
    run_cli("tenants", "label", "initech", "--remove", "canary", url=database_url)
    assert _listed(database_url, "--label", "canary") == {
        "acme": ["canary"], "globex": ["canary", "eu"],
    }  # fmt: skip
    assert set(_listed(database_url, "--label", "eu", "--label", "canary")) == {
        "acme", "globex", "initech",
    }  # fmt: skip
    text = run_cli("tenants", "list", url=database_url).stdout
    assert "labels" in text.splitlines()[0] and "canary,eu" in text

    # Labels are tenantmig's own: drift leaves them out; a dropped tenant's labels go with it.
    drift = run_cli("drift", url=database_url)
    assert "tenantmig_labels" not in drift.stdout, drift.stdout
    done = run_cli("tenants", "drop", "globex", "--yes", url=database_url)
    assert done.returncode == 0, done.stderr
    with engine.connect() as conn:
        assert conn.exec_driver_sql(f"SELECT DISTINCT tenant FROM {TABLE}").scalars().all() in (
            ["acme", "initech"], ["initech", "acme"],
        )  # fmt: skip


def test_every_command_that_selects_tenants_takes_label(
    settings: Settings, engine: sa.Engine, database_url: str
) -> None:
    make_tenants(settings, ["a1", "a2", "b1"], "001_initial_schema")
    run_cli("tenants", "label", "a1", "a2", "--add", "canary", url=database_url)

    done = run_cli("upgrade", "--label", "typo", url=database_url)
    assert done.returncode == 1 and "no tenant has the label(s) typo" in done.stderr, done.stderr
    assert "labels in use: canary" in done.stderr
    done = run_cli("upgrade", "--shared", "--label", "canary", url=database_url)
    assert done.returncode == 1 and "--label selects tenants" in done.stderr

    sql = run_cli("upgrade", "--label", "canary", "--sql", url=database_url)
    assert sql.returncode == 0 and '"a1"' in sql.stdout and '"b1"' not in sql.stdout

    done = run_cli("upgrade", "--label", "canary", "--json", url=database_url)
    assert done.returncode == 0, done.stderr
    assert {t["name"] for t in json.loads(done.stdout)["tenants"]} == {"a1", "a2"}
    assert _version(engine, "b1") == "001_initial_schema"
    assert _version(engine, "a1") == _version(engine, "a2") != "001_initial_schema"

    status = run_cli("status", "--label", "canary", "--json", url=database_url)
    assert {t["name"] for t in json.loads(status.stdout)["tenants"]} == {"a1", "a2"}
    drift = run_cli("drift", "--label", "canary", "--json", url=database_url)
    assert drift.returncode == 0, drift.stdout  # both at head, as their migrations say
    down = run_cli(
        "downgrade",
        "--all-tenants",
        "--label",
        "canary",
        "001_initial_schema",
        "--yes",
        url=database_url,
    )
    assert down.returncode == 0, down.stderr
    assert _version(engine, "a1") == "001_initial_schema"
    stamp = run_cli(
        "stamp",
        "--all-tenants",
        "--label",
        "canary",
        "003_add_inventory_tracking",
        url=database_url,
    )
    assert stamp.returncode == 0, stamp.stderr
    assert (
        _version(engine, "a2") == "003_add_inventory_tracking"
        and _version(engine, "b1") == "001_initial_schema"
    )


def test_labels_from_the_tenants_from_query(
    settings: Settings, engine: sa.Engine, database_url: str
) -> None:
    make_tenants(settings, ["q1", "q2"], "001_initial_schema")
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "CREATE TABLE public.accounts (slug text, schema text, tags text[]);"
            "INSERT INTO public.accounts VALUES ('q1', 'q1', '{canary}'), ('q2', 'q2', '{}')"
        )
    query = "query: SELECT slug AS name, schema AS schema_name, tags AS labels FROM public.accounts"
    listed = run_cli("--tenants-from", query, "tenants", "list", "--json", "--label", "canary",
                     url=database_url)  # fmt: skip
    assert listed.returncode == 0, listed.stderr
    assert [(t["name"], t["labels"]) for t in json.loads(listed.stdout)] == [("q1", ["canary"])]
    refused = run_cli("--tenants-from", query, "tenants", "label", "q2", "--add", "canary",
                      url=database_url)  # fmt: skip
    assert refused.returncode == 1 and "come from the tenants_from query" in refused.stderr
    with engine.begin() as conn:
        conn.exec_driver_sql("UPDATE public.accounts SET tags = '{Bad Label}' WHERE slug = 'q2'")
    bad = run_cli("--tenants-from", query, "tenants", "list", url=database_url)
    assert bad.returncode == 1 and "tenant q2" in bad.stderr and "bad label" in bad.stderr
