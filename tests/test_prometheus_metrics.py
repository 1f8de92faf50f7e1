"""--metrics-file and --pushgateway: a run's metrics where Prometheus reads them, written when
it ends; a gateway that fails never changes the run's outcome or exit code."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import ClassVar

import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families

from tenantmig.server.config import Settings
from tests.helpers import run_cli
from tests.test_engine import make_tenants


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _failing_and_ok_tenants(settings: Settings, engine: sa.Engine) -> None:
    make_tenants(settings, ["good", "bad"], "001_initial_schema")
    with engine.begin() as conn:
        conn.exec_driver_sql('CREATE TABLE "bad".locations (id int)')  # 003 fails there


class _Gateway(http.server.BaseHTTPRequestHandler):
    """A Pushgateway stand-in: records each push; ``mode`` makes it misbehave."""

    pushes: ClassVar[list[tuple[str, str, bytes]]] = []
    mode = "ok"
    auth: ClassVar[list[str]] = []

    def do_PUT(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        type(self).pushes.append((self.command, self.path, body))
        type(self).auth.append(self.headers.get("Authorization", ""))
        if self.mode == "close":
            self.connection.close()  # no answer at all
            return
        self.send_response(500 if self.mode == "error" else 200)
        self.end_headers()

    def log_message(self, *_args: object) -> None:
        pass


@contextmanager
def _gateway(mode: str) -> Iterator[str]:
    _Gateway.pushes, _Gateway.mode, _Gateway.auth = [], mode, []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Gateway)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://user:s3cret@127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_the_metrics_file_holds_the_runs_outcome(
    settings: Settings, engine: sa.Engine, database_url: str, tmp_path: Path
) -> None:
    _failing_and_ok_tenants(settings, engine)
    metrics = tmp_path / "tenantmig.prom"
    done = run_cli("upgrade", "--all-tenants", "--metrics-file", str(metrics), url=database_url)
    assert done.returncode == 3, done.stderr
    samples = _samples(metrics.read_text())
    finished = "tenantmig_tenants_finished_total"
    assert samples[(finished, (("command", "upgrade"), ("status", "ok")))] == 1
    assert samples[(finished, (("command", "upgrade"), ("status", "failed")))] == 1
    assert samples[(finished, (("command", "upgrade"), ("status", "interrupted")))] == 0
    assert samples[("tenantmig_tenant_duration_seconds_count", (("command", "upgrade"),))] == 2
    assert samples[("tenantmig_run_exit_code", (("command", "upgrade"),))] == 3
    assert samples[("tenantmig_run_duration_seconds", (("command", "upgrade"),))] > 0
    assert ("tenantmig_tenant_retries_total", (("command", "upgrade"),)) in samples
    assert not list(tmp_path.glob("*.tmp*"))  # written atomically: no temporary file left


def test_a_push_reaches_the_gateway_and_a_failing_gateway_changes_nothing(
    settings: Settings, engine: sa.Engine, database_url: str
) -> None:
    make_tenants(settings, ["one", "two"], "001_initial_schema")
    with _gateway("ok") as url:
        done = run_cli("upgrade", "--tenant", "one", "--pushgateway", url, url=database_url)
    assert done.returncode == 0, done.stderr
    ((method, path, body),) = _Gateway.pushes
    assert (method, path) == ("PUT", "/metrics/job/tenantmig")
    assert _Gateway.auth == ["Basic dXNlcjpzM2NyZXQ="]  # user:s3cret from the URL
    samples = _samples(body.decode())
    key = ("tenantmig_tenants_finished_total", (("command", "upgrade"), ("status", "ok")))
    assert samples[key] == 1
    for mode in ("error", "close"):
        with _gateway(mode) as url:
            done = run_cli("upgrade", "--tenant", "two", "--pushgateway", url, url=database_url)
        assert done.returncode == 0, (mode, done.stderr)  # the run's code, not the gateway's
        assert len(_Gateway.pushes) == 3, mode  # three attempts
        assert "tenantmig: warning: metrics not pushed to http://user:***@" in done.stderr
        assert "s3cret" not in done.stderr + done.stdout
        down = run_cli("downgrade", "--tenant", "two", "001_initial_schema", "--yes",
                       url=database_url)  # fmt: skip
        assert down.returncode == 0, down.stderr


def test_bad_exports_are_refused_before_anything_changes(
    settings: Settings, engine: sa.Engine, database_url: str, tmp_path: Path
) -> None:
    make_tenants(settings, ["one"], "001_initial_schema")
    for argv, said in (
        (["--metrics-file", str(tmp_path / "no" / "such" / "dir.prom")], "no directory"),
        (["--pushgateway", "gateway:9091"], "give an http(s) URL"),
    ):
        done = run_cli("upgrade", "--tenant", "one", *argv, url=database_url)
        assert done.returncode == 1 and said in done.stderr, done.stderr
    with engine.connect() as conn:
        version = conn.exec_driver_sql("SELECT version_num FROM one.alembic_version").scalar()
    assert version == "001_initial_schema"
