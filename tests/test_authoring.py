"""Writing revisions the Alembic way: autogenerate, check, heads, show, branches, merge."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa

from tenantmig import api
from tenantmig.errors import ConfigError, NoTargetMetadata, UnknownRevision
from tenantmig.server.config import Settings, load_settings

from .helpers import CONFIG, project_with, run_cli, schemas, tables

MODELS = """
import sqlalchemy as sa

tenant_metadata = sa.MetaData()
sa.Table(
    "users",
    tenant_metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("email", sa.Text, nullable=False),
    sa.Index("ix_users_email", "email", unique=True),
)
"""


def _project(tmp_path: Path, database_url: str, models: str = MODELS) -> Settings:
    """A new project whose tenant chain has no revision yet and whose models live in
    models.py, named in alembic.ini's [tenant] section."""
    project = api.init_project(tmp_path / "app", registry=False).directory
    # A module name of its own: this process imports each test's models once.
    module = f"models_{uuid.uuid4().hex[:8]}"
    (project / f"{module}.py").write_text(models)
    ini = project / "alembic.ini"
    ini.write_text(
        ini.read_text().replace(
            "[tenant]\n", f"[tenant]\ntarget_metadata = {module}:tenant_metadata\n", 1
        )
    )
    return load_settings(config_file=ini, database_url=database_url, tenants_from="schemas: t_*")


def test_autogenerate_on_an_empty_database_writes_schemaless_operations(
    tmp_path: Path, database_url: str, engine: sa.Engine
) -> None:
    settings = _project(tmp_path, database_url)
    before = schemas(engine)
    created = api.revision(settings, "tenant", "users", autogenerate=True)
    assert created is not None
    text = Path(created.path).read_text()
    assert "op.create_table(" in text and "'users'" in text
    assert "schema=" not in text  # the tenant chain's operations name no schema
    assert "op.create_index('ix_users_email'" in text
    assert schemas(engine) == before  # the reference schema was rolled back
    # The revision migrates a tenant, after which models and migrations agree.
    _created, run = api.create_tenants(settings, ["t_acme"])
    assert run is not None and run.succeeded, run.outcomes[0].error
    assert tables(engine, "t_acme") == {"users", "alembic_version"}
    assert api.check(settings, ["tenant"]).agree
    # Nothing to add: nothing is written.
    assert api.revision(settings, "tenant", "again", autogenerate=True) is None
    versions = list((settings.config_file.parent / "migrations/tenant/versions").glob("*.py"))
    assert len(versions) == 1


def test_check_lists_the_differences_and_exits_2(tmp_path: Path, database_url: str) -> None:
    settings = _project(
        tmp_path,
        database_url,
        MODELS.replace(
            'sa.Column("email", sa.Text, nullable=False),',
            'sa.Column("email", sa.Text, nullable=False),\n    sa.Column("name", sa.Text),',
        ),
    )
    first = api.revision(settings, "tenant", "users", autogenerate=True)
    assert first is not None
    (models,) = settings.config_file.parent.glob("models_*.py")
    models.write_text(models.read_text().replace('    sa.Column("name", sa.Text),\n', ""))
    config = str(settings.config_file)
    done = run_cli("--config", config, "check", "--tenant-chain", url=database_url)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "remove_column users.name" in done.stdout
    as_json = run_cli("--config", config, "check", "--json", url=database_url)
    assert as_json.returncode == 2
    assert json.loads(as_json.stdout)["differences"] == {"tenant": ["remove_column users.name"]}


def test_check_and_autogenerate_need_models(settings: Settings) -> None:
    with pytest.raises(NoTargetMetadata, match="target_metadata"):
        api.check(settings, ["tenant"])
    # Both chains asked, neither has models (a new project): nothing to compare, no difference.
    nothing = api.check(settings)
    assert nothing.agree and nothing.skipped == ["shared", "tenant"]
    done = run_cli("revision", "--tenant-chain", "--autogenerate", "-m", "x",
                   url=settings.database_url)  # fmt: skip
    assert done.returncode == 1 and "target_metadata" in done.stderr


def test_shared_chain_models_given_in_env_py(tmp_path: Path, database_url: str) -> None:
    settings = _project(tmp_path, database_url)
    project = settings.config_file.parent
    (project / "shared_models_env.py").write_text(
        "import sqlalchemy as sa\n\nshared_metadata = sa.MetaData()\n"
        'sa.Table("plans", shared_metadata, sa.Column("id", sa.Integer, primary_key=True))\n'
    )
    env = project / "migrations/shared/env.py"
    env.write_text(
        env.read_text().replace(
            "run_shared_env()",
            "from shared_models_env import shared_metadata\n\n"
            "run_shared_env(target_metadata=shared_metadata)",
        )
    )
    created = api.revision(settings, "shared", "plans", autogenerate=True)
    assert created is not None and "op.create_table('plans'" in Path(created.path).read_text()
    result = api.check(settings)  # both chains have models now: both are checked
    assert result.differences == {
        "shared": [],  # the revision just written brought the chain to its models
        "tenant": ["add_table users", "add_index ix_users_email"],
    }


def test_heads_show_branches_and_merge(tmp_path: Path, database_url: str) -> None:
    branch = '''"""{name}"""
from alembic import op
import sqlalchemy as sa

revision = "{name}"
down_revision = "003_add_inventory_tracking"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("users", sa.Column("{name}", sa.Text))


def downgrade() -> None:
    op.drop_column("users", "{name}")
'''
    config = project_with(
        tmp_path,
        {f"{n}.py": branch.format(name=n) for n in ("b_left", "b_right")},
    )
    settings = load_settings(config_file=config, database_url=database_url)
    assert [h.revision for h in api.heads(settings, "tenant")] == ["b_left", "b_right"]
    (point,) = api.branches(settings, "tenant")
    assert point.revision == "003_add_inventory_tracking"
    assert point.next_revisions == ("b_left", "b_right")
    shown = api.show(settings, "tenant", "b_le")  # a unique prefix, as Alembic allows
    assert shown.revision == "b_left" and shown.down_revision == "003_add_inventory_tracking"
    with pytest.raises(UnknownRevision):
        api.show(settings, "tenant", "nope")
    refused = run_cli("--config", str(config), "upgrade", "--all-tenants", url=database_url)
    assert refused.returncode == 1 and "diverged heads" in refused.stderr
    done = run_cli("--config", str(config), "merge", "--tenant-chain", "-m", "join",
                   "--rev-id", "m1", "--json", url=database_url)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["down_revision"] == "b_left,b_right"
    heads = run_cli("--config", str(config), "heads", "--tenant-chain", "--json", url=database_url)
    assert [h["revision"] for h in json.loads(heads.stdout)["tenant"]] == ["m1"]
    with pytest.raises(ConfigError, match="nothing to merge"):
        api.merge(settings, "tenant", ["heads"], "again")
    assert api.upgrade(settings, api.Selection.shared_only()).succeeded
    api.create_tenants(settings, ["acme"])
    with sa.create_engine(database_url).connect() as conn:
        columns = set(
            conn.execute(
                sa.text(
                    "SELECT column_name FROM information_schema.columns"
                    " WHERE table_schema = 'acme' AND table_name = 'users'"
                )
            ).scalars()
        )
    assert {"b_left", "b_right"} <= columns


def test_plain_text_outputs(database_url: str) -> None:
    heads = run_cli("heads", url=database_url)
    assert heads.returncode == 0 and "003_add_inventory_tracking (head)" in heads.stdout
    show = run_cli("show", "--shared", "head", url=database_url)
    assert show.returncode == 0 and "parent: 001_initial_schema" in show.stdout
    assert str(CONFIG.parent) in run_cli("show", "--tenant-chain", "001", url=database_url).stdout
