"""--backup DIR and `tenantmig restore`: real pg_dump/pg_restore/psql against a real server."""

from __future__ import annotations

import json
from pathlib import Path

import sqlalchemy as sa

from tenantmig.server.config import Settings
from tests.helpers import TENANT_HEAD, run_cli, snapshot, version
from tests.test_engine import make_tenants


def _add_users(engine: sa.Engine, schema: str, count: int, start: int = 1) -> None:
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                f'INSERT INTO "{schema}".users (email, full_name)'
                " SELECT 'u' || g || '@example.com', 'User ' || g"
                " FROM generate_series(:start, :start + :n - 1) g"
            ),
            {"n": count, "start": start},
        )


def _users(engine: sa.Engine, schema: str) -> list[str]:
    with engine.connect() as conn:
        return list(
            conn.execute(sa.text(f'SELECT email FROM "{schema}".users ORDER BY email')).scalars()
        )


def test_backup_dumps_each_tenant_before_migrating_and_restore_brings_it_back(
    settings: Settings, engine: sa.Engine, database_url: str, tmp_path: Path
) -> None:
    make_tenants(settings, ["acme", "globex", "initech"], "001_initial_schema")
    make_tenants_at_head = run_cli("upgrade", "--tenant", "initech", url=database_url)
    assert make_tenants_at_head.returncode == 0, make_tenants_at_head.stderr
    _add_users(engine, "acme", 40)
    _add_users(engine, "globex", 7)
    before = snapshot(engine, "acme")
    backups = tmp_path / "backups"

    done = run_cli("upgrade", "--all-tenants", "--backup", str(backups), "--json", url=database_url)
    assert done.returncode == 0, done.stderr
    run = json.loads(done.stdout)
    outcomes = {o["name"]: o for o in run["tenants"]}
    # Only tenants that were migrated are dumped; initech was at head already.
    assert outcomes["initech"]["status"] == "skipped" and outcomes["initech"]["backup"] is None
    files = sorted(p.name for p in backups.iterdir())
    assert files == [
        f"acme.run{run['run_id']}.001_initial_schema.dump",
        f"globex.run{run['run_id']}.001_initial_schema.dump",
    ]
    acme_dump = backups / files[0]
    assert outcomes["acme"]["backup"] == str(acme_dump)
    # The ledger keeps where each tenant's dump is.
    shown = run_cli("runs", "show", str(run["run_id"]), "--json", url=database_url)
    ledger = {t["name"]: t["backup"] for t in json.loads(shown.stdout)["tenants"]}
    assert ledger["acme"] == str(acme_dump) and ledger["initech"] is None

    # After the upgrade the application changes data; then we restore acme from its dump.
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM acme.users WHERE email LIKE 'u1%'"))
    globex_before = _users(engine, "globex")
    restored = run_cli(
        "restore", "--tenant", "acme", str(acme_dump), "--json", "--yes", url=database_url
    )
    assert restored.returncode == 0, restored.stderr
    result = json.loads(restored.stdout)
    assert (result["from"], result["to"]) == (TENANT_HEAD, "001_initial_schema")
    assert version(engine, "acme") == "001_initial_schema"
    assert snapshot(engine, "acme") == before
    assert len(_users(engine, "acme")) == 40
    assert _users(engine, "globex") == globex_before  # nobody else touched
    assert version(engine, "globex") == TENANT_HEAD
    # The restore is in the ledger too, and the tenant upgrades again from there.
    runs = json.loads(run_cli("runs", "--json", url=database_url).stdout)
    assert runs[0]["command"] == "restore" and runs[0]["outcome"] == "succeeded"
    again = run_cli("upgrade", "--tenant", "acme", url=database_url)
    assert again.returncode == 0 and version(engine, "acme") == TENANT_HEAD


def test_backup_refuses_to_start_without_pg_dump_or_a_writable_directory(
    settings: Settings, engine: sa.Engine, database_url: str, tmp_path: Path
) -> None:
    make_tenants(settings, ["acme"], "001_initial_schema")
    missing_tools = run_cli(
        "upgrade",
        "--all-tenants",
        "--backup",
        str(tmp_path / "b"),
        url=database_url,
        env={"TENANTMIG_PG_BIN": str(tmp_path / "no-such-bin")},
    )
    assert missing_tools.returncode == 1
    assert "need pg_dump" in missing_tools.stderr and "TENANTMIG_PG_BIN" in missing_tools.stderr
    assert not (tmp_path / "b").exists()

    a_file = tmp_path / "plain-file"
    a_file.write_text("not a directory")
    unwritable = run_cli(
        "upgrade", "--all-tenants", "--backup", str(a_file / "sub"), url=database_url
    )
    assert unwritable.returncode == 1
    assert "not writable" in unwritable.stderr
    shared_only = run_cli("upgrade", "--shared", "--backup", str(tmp_path / "c"), url=database_url)
    assert shared_only.returncode == 1 and "only the shared schema" in shared_only.stderr
    assert version(engine, "acme") == "001_initial_schema"  # nothing migrated
    with engine.connect() as conn:
        runs = conn.execute(sa.text("SELECT count(*) FROM tenantmig_run_tenants")).scalar()
    # Only the set-up runs are in the ledger: the refused runs never started.
    assert runs == 1


def test_restore_refuses_bad_input_and_changes_nothing(
    settings: Settings, engine: sa.Engine, database_url: str, tmp_path: Path
) -> None:
    make_tenants(settings, ["acme", "globex"], TENANT_HEAD)
    run_cli(
        "downgrade",
        "--all-tenants",
        "001_initial_schema",
        "--backup",
        str(tmp_path),
        "--yes",
        url=database_url,
    )
    _add_users(engine, "acme", 3)
    acme = snapshot(engine, "acme")
    globex_dump = next(tmp_path.glob("globex.*.dump"))
    junk = tmp_path / "junk.dump"
    junk.write_text("this is not an archive")
    cases = {
        "another tenant's dump": (["--tenant", "acme", str(globex_dump)], "holds globex"),
        "not an archive": (["--tenant", "acme", str(junk)], "not a pg_dump custom-format"),
        "missing file": (["--tenant", "acme", str(tmp_path / "nope.dump")], "does not exist"),
        "unknown tenant": (["--tenant", "nobody", str(globex_dump)], "unknown tenant"),
        "hostile name": (["--tenant", 'x"; DROP SCHEMA acme; --', str(globex_dump)], "not allowed"),
    }
    for label, (args, message) in cases.items():
        done = run_cli("restore", *args, "--yes", url=database_url)
        assert done.returncode == 1, (label, done.stderr)
        assert message in done.stderr, (label, done.stderr)
    assert snapshot(engine, "acme") == acme and len(_users(engine, "acme")) == 3


def test_failed_restore_is_rolled_back_entirely(
    settings: Settings, engine: sa.Engine, database_url: str, tmp_path: Path
) -> None:
    """A restore blocked by the application's long transaction gives up after lock_timeout and
    leaves the tenant's current schema and rows exactly as they were."""
    make_tenants(settings, ["acme"], "001_initial_schema")
    _add_users(engine, "acme", 5)
    done = run_cli("upgrade", "--all-tenants", "--backup", str(tmp_path), url=database_url)
    assert done.returncode == 0, done.stderr
    _add_users(engine, "acme", 2, start=100)  # rows written after the backup
    current = snapshot(engine, "acme")
    dump = next(tmp_path.glob("acme.*.dump"))
    with engine.connect() as holder:
        holder.execute(sa.text("SELECT count(*) FROM acme.users"))  # ACCESS SHARE until rollback
        blocked = run_cli(
            "restore",
            "--tenant",
            "acme",
            str(dump),
            "--lock-timeout",
            "0.5",
            "--yes",
            url=database_url,
        )
        holder.rollback()
    assert blocked.returncode == 3, blocked.stderr
    assert "restore failed, nothing changed" in blocked.stderr
    assert "lock timeout" in blocked.stderr
    assert version(engine, "acme") == TENANT_HEAD
    assert snapshot(engine, "acme") == current and len(_users(engine, "acme")) == 7
    runs = json.loads(run_cli("runs", "--json", url=database_url).stdout)
    assert runs[0]["command"] == "restore" and runs[0]["outcome"] == "failed"


def test_a_ledger_written_before_backups_existed_gains_the_column(
    settings: Settings, engine: sa.Engine, database_url: str, tmp_path: Path
) -> None:
    make_tenants(settings, ["acme"], "001_initial_schema")
    with engine.begin() as conn:  # the ledger as an earlier release created it
        conn.execute(sa.text("ALTER TABLE tenantmig_run_tenants DROP COLUMN backup_path"))
    assert run_cli("runs", "show", "2", url=database_url).returncode == 0  # still readable
    done = run_cli(
        "upgrade", "--all-tenants", "--backup", str(tmp_path), "--json", url=database_url
    )
    assert done.returncode == 0, done.stderr
    run_id = json.loads(done.stdout)["run_id"]
    shown = json.loads(run_cli("runs", "show", str(run_id), "--json", url=database_url).stdout)
    assert shown["tenants"][0]["backup"] == str(next(tmp_path.glob("acme.*.dump")))
