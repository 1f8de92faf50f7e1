"""Configuration errors keep secrets: every malformed URL, [databases] entry or alembic.ini is one
line, exit 1, and never shows a password, however the URL is malformed.

No server is needed: every case is refused while the settings are loaded, before anything
connects (the URLs point at hosts that do not exist).
"""

from __future__ import annotations

import traceback
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from tenantmig.cli import main
from tenantmig.errors import ConfigError
from tenantmig.server.config import Settings, load_settings
from tenantmig.server.directory import directory_from
from tenantmig.server.urls import check_url, mask_url
from tests.helpers import CONFIG

SECRET = "S3CRET"
CONTROL_URL = "postgresql://nobody@tm-nowhere.invalid/none"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only what a test sets: an outer TENANTMIG_* variable must not decide a case."""
    for variable in ("TENANTMIG_DATABASES", "TENANTMIG_DATABASE_URL", "TENANTMIG_CONFIG"):
        monkeypatch.delenv(variable, raising=False)


def ini_with(tmp_path: Path, extra: str = "", *, shared: str = "") -> Path:
    """The project's alembic.ini with ``extra`` appended and ``shared`` lines added to [shared]."""
    text = CONFIG.read_text().replace("[shared]\n", f"[shared]\n{shared}", 1)
    ini = tmp_path / "alembic.ini"
    ini.write_text(text + extra)
    return ini


def refused(ini: Path, *, database_url: str | None = CONTROL_URL) -> str:
    """The ConfigError's message, checked to be one line without the secret."""
    with pytest.raises(ConfigError) as caught:
        load_settings(config_file=ini, database_url=database_url)
    message = str(caught.value)
    assert "\n" not in message, message
    assert SECRET not in message, message
    # What --debug would print: no exception in the chain quotes the value either.
    assert SECRET not in "".join(traceback.format_exception(caught.value))
    return message


# -- the findings ------------------------------------------------------------------------------
def test_a_semicolon_in_a_password_is_named_and_not_shown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(
        "TENANTMIG_DATABASES", f"b=postgresql+psycopg2://app:{SECRET};x=1@127.0.0.1/db"
    )
    message = refused(ini_with(tmp_path))
    assert "TENANTMIG_DATABASES: entry 2 is not NAME=URL" in message
    assert "%3B" in message and "int()" not in message
    # The tail of the password is not shown as a name either.
    assert "'x'" not in message


def test_a_semicolon_written_percent_encoded_is_the_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(
        "TENANTMIG_DATABASES",
        f"b=postgresql+psycopg2://app:{SECRET}%3Bx=1@127.0.0.1/db;c=postgresql://h/db",
    )
    settings = load_settings(config_file=ini_with(tmp_path), database_url=CONTROL_URL)
    assert [entry.name for entry in settings.databases] == ["b", "c"]
    assert make_url(settings.database_entry("b").url).password == f"{SECRET};x=1"
    assert SECRET not in repr(settings)


def test_a_percent_in_a_databases_url_is_taken_as_written(tmp_path: Path) -> None:
    ini = ini_with(tmp_path, f"\n[databases]\neu = postgresql://u:{SECRET}%40pw@h/db\n")
    settings = load_settings(config_file=ini, database_url=CONTROL_URL)
    assert make_url(settings.database_entry("eu").url).password == f"{SECRET}@pw"


def test_a_doubled_percent_in_a_databases_url_is_refused_not_misread(tmp_path: Path) -> None:
    # Written for interpolation, %%40 would otherwise reach the server as the password "%@".
    ini = ini_with(tmp_path, f"\n[databases]\neu = postgresql://u:{SECRET}%%40pw@h/db\n")
    message = refused(ini)
    assert "[databases] in alembic.ini entry 'eu'" in message and "% as %25" in message


@pytest.mark.parametrize(
    "section",
    [
        f"eu = postgresql://u:{SECRET}1@h/db\neu = postgresql://u:{SECRET}2@h/db\n",
        f"eu = postgresql://u:{SECRET}1@h/db\nEU = postgresql://u:{SECRET}2@h/db\n",
    ],
)
def test_a_database_named_twice_in_alembic_ini(tmp_path: Path, section: str) -> None:
    message = refused(ini_with(tmp_path, "\n[databases]\n" + section))
    assert "[databases] sets 'eu' twice" in message and "line" in message


def test_a_database_named_twice_in_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(
        "TENANTMIG_DATABASES",
        f"eu=postgresql://u:{SECRET}1@h/db;eu=postgresql://u:{SECRET}2@h/db",
    )
    assert "'eu' is named twice" in refused(ini_with(tmp_path))


def test_a_port_that_is_not_a_number_everywhere_a_url_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = f"postgresql://u:pw@h:{SECRET}/db"
    ini = ini_with(tmp_path)
    assert "--database-url: the URL's port is not a number" in refused(ini, database_url=bad)

    monkeypatch.setenv("TENANTMIG_DATABASE_URL", bad)
    assert "TENANTMIG_DATABASE_URL: the URL's port" in refused(ini, database_url=None)
    monkeypatch.delenv("TENANTMIG_DATABASE_URL")

    in_ini = ini_with(tmp_path, shared=f"sqlalchemy.url = {bad}\n")
    assert "sqlalchemy.url in" in refused(in_ini, database_url=None)

    monkeypatch.setenv("TENANTMIG_DATABASES", f"eu={bad}")
    assert "TENANTMIG_DATABASES entry 'eu': the URL's port" in refused(ini)
    monkeypatch.delenv("TENANTMIG_DATABASES")

    # A password without its @: make_url takes it for the port.
    section = f"\n[databases]\neu = postgresql+psycopg2://app:{SECRET}\n"
    assert "entry 'eu': the URL's port is not a number" in refused(ini_with(tmp_path, section))


def test_a_continuation_line_is_refused_naming_the_entry(tmp_path: Path) -> None:
    ini = ini_with(tmp_path, f"\n[databases]\neu = postgresql://app:pw@h/app\n    {SECRET}\n")
    message = refused(ini)
    assert "entry 'eu'" in message and "more than one line" in message


def test_a_space_in_an_environment_url_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TENANTMIG_DATABASES", f"eu=postgresql://app:pw@h/app {SECRET}")
    message = refused(ini_with(tmp_path))
    assert "entry 'eu': the URL contains whitespace" in message and "%20" in message


# -- alembic.ini itself --------------------------------------------------------------------------
def test_a_percent_in_sqlalchemy_url_follows_alembic(tmp_path: Path) -> None:
    """The sections Alembic reads keep its interpolation: plain `alembic` reads the same URL."""
    message = refused(
        ini_with(tmp_path, shared=f"sqlalchemy.url = postgresql://u:{SECRET}%40pw@h/db\n"),
        database_url=None,
    )
    assert "[shared] sqlalchemy.url cannot be read" in message and "%%" in message
    doubled = ini_with(tmp_path, shared=f"sqlalchemy.url = postgresql://u:{SECRET}%%40pw@h/db\n")
    settings = load_settings(config_file=doubled)
    assert settings.database_url is not None
    assert make_url(settings.database_url).password == f"{SECRET}@pw"


def test_a_bad_percent_anywhere_alembic_reads_is_one_line(tmp_path: Path) -> None:
    query = f"tenants_from = query: SELECT name, schema_name FROM t WHERE k LIKE '{SECRET}%'\n"
    message = refused(ini_with(tmp_path, shared=query))
    assert "[shared] tenants_from cannot be read" in message


def test_a_bad_percent_in_an_option_only_alembic_reads_is_reported_early(tmp_path: Path) -> None:
    message = refused(ini_with(tmp_path, shared="file_template = %(rev)s_%(slug\n"))
    assert "[shared] file_template cannot be read" in message


def test_another_tools_percent_in_default_is_left_alone(tmp_path: Path) -> None:
    text = CONFIG.read_text().replace("[DEFAULT]\n", "[DEFAULT]\nlog_format = %(asctime)s\n")
    ini = tmp_path / "alembic.ini"
    ini.write_text(text)
    assert load_settings(config_file=ini, database_url=CONTROL_URL).shared_schema == "public"


def test_here_still_names_the_files_directory(tmp_path: Path) -> None:
    settings = load_settings(config_file=ini_with(tmp_path), database_url=CONTROL_URL)
    location = settings.alembic_config("tenant").get_main_option("script_location")
    assert location == f"{tmp_path}/migrations/tenant"


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (f"\n[databases]\npostgresql+psycopg2 {SECRET}@h/db\n", "cannot be read"),
        (f"\n[shared]\nsqlalchemy.url = postgresql://u:{SECRET}@h/db\n", "appears twice"),
    ],
)
def test_a_file_configparser_cannot_read_is_one_line(
    tmp_path: Path, extra: str, expected: str
) -> None:
    assert expected in refused(ini_with(tmp_path, extra))


def test_a_line_before_any_section_is_one_line(tmp_path: Path) -> None:
    ini = tmp_path / "alembic.ini"
    ini.write_text(f"sqlalchemy.url = postgresql://u:{SECRET}@h/db\n" + CONFIG.read_text())
    assert "line 1 comes before any [section]" in refused(ini)


# -- one URL -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("", "empty"),
        (f"postgresql://u:{SECRET}\t@h/db", "whitespace"),
        (f"postgresql://u:{SECRET}\xa0@h/db", "whitespace"),
        (f"postgresql://u:{SECRET}\x00@h/db", "control or invisible"),
        (f"postgresql://u:{SECRET}\u200b@h/db", "control or invisible"),
        (f"postgresql://u:{SECRET}\r@h/db", "more than one line"),
        (f"postgresql://u:{SECRET}%zz@h/db", "percent-encoded"),
        (f"postgresql://u:{SECRET}@word@h/db", "more than one @"),
        (f"postgresql://u:p@{SECRET}/x@h/db", "more than one @"),
        (f"postgresql://u:{SECRET}@h:70000/db", "from 1 to 65535"),
        (f"postgresql://u:{SECRET}@h1:5432,h2:5433/db", "port is not a number"),
        (f"postgresql://u:{SECRET}@h!/db", "host is not a host name"),
        (f"{SECRET}@h/db", "not a database URL"),
        (f"postgresql:/u:{SECRET}@h/db", "not a database URL"),
        (f"mysql://u:{SECRET}@h/db", "not PostgreSQL"),
    ],
)
def test_a_malformed_url_is_refused_without_its_secret(url: str, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        check_url(url, "TENANTMIG_DATABASES entry 'eu'")
    message = str(caught.value)
    assert message.startswith("TENANTMIG_DATABASES entry 'eu': ")
    assert expected in message and SECRET not in message and "\n" not in message
    assert mask_url(url) == "<malformed database URL>"


@pytest.mark.parametrize(
    ("url", "password"),
    [
        ("postgresql://u:pa%3Bss%25w%40rd%20x@h:5432/db", "pa;ss%w@rd x"),
        ("postgresql://u:p{a}|s^s/w:d?x#y;z@h/db", "p{a}|s^s/w:d?x#y;z"),
        ("postgresql://u:pässwörd@h/db", "pässwörd"),
        ("postgresql://u:@h/db", ""),
        ("postgres://u:pw@[::1]:5432/db", "pw"),
        ("postgresql+psycopg2://u:pw@h1,h2/db", "pw"),
        ("postgresql:///db?host=%2Fvar%2Frun%2Fpostgresql", None),
    ],
)
def test_a_well_formed_url_is_accepted(url: str, password: str | None) -> None:
    assert check_url(url, "--database-url").password == password


def test_a_mask_hides_passwords_in_the_query_too() -> None:
    shown = mask_url(f"postgresql://u:{SECRET}@h/db?password={SECRET}&sslmode=require")
    assert shown == "postgresql://u:***@h/db?password=***&sslmode=require"


def test_the_directory_shape_is_checked_before_names_are_shown() -> None:
    # "1234" is a valid port, so the first entry parses; the second is the password's tail.
    with pytest.raises(ConfigError, match="entry 2 is not NAME=URL") as caught:
        directory_from(None, "eu=postgresql://app:1234;x=y@h/db")
    assert "'x'" not in str(caught.value)


# -- the command ---------------------------------------------------------------------------------
def test_the_command_exits_1_with_one_line_and_no_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    ini = ini_with(tmp_path, f"\n[databases]\neu = postgresql://app:{SECRET}%40pw@h:x/app\n")
    monkeypatch.setenv("TENANTMIG_DATABASE_URL", CONTROL_URL)
    code = main(["--config", str(ini), "upgrade", "--all-tenants"])
    out, err = capsys.readouterr()
    assert code == 1 and out == ""
    assert err.startswith("tenantmig: error: ") and err.count("\n") == 1, err
    assert SECRET not in err and "Traceback" not in err


def test_settings_built_directly_still_check_their_url(tmp_path: Path) -> None:
    from tenantmig.server.database import normalise_url

    settings = Settings(config_file=CONFIG, database_url=f"postgresql://u:{SECRET}@h:x/db")
    with pytest.raises(ConfigError) as caught:
        normalise_url(settings.database_url or "")
    assert SECRET not in str(caught.value)
