"""--otel / OTEL_EXPORTER_OTLP_ENDPOINT: a run as one trace (a span per tenant, from the worker
processes that migrated them) and its metrics, sent to a real OTLP/HTTP receiver started here
and decoded with opentelemetry-proto; a receiver that fails never changes the run."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import pytest
import sqlalchemy as sa
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
)

from tenantmig.server.config import Settings
from tests.helpers import run_cli
from tests.test_engine import make_tenants


class _Collector(BaseHTTPRequestHandler):
    """An OTLP/HTTP receiver: keeps each request's body by path; ``behaviour`` says how it
    answers: ok, error (500), close (no answer), garbage (not HTTP), slow (never in time)."""

    bodies: ClassVar[list[tuple[str, bytes]]] = []
    behaviour: ClassVar[str] = "ok"

    def do_POST(self) -> None:  # the http.server API
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        type(self).bodies.append((self.path, body))
        behaviour = type(self).behaviour
        if behaviour == "close":
            self.close_connection = True
            return
        if behaviour == "garbage":
            self.wfile.write(b"\x00\xffnot http\r\n\r\n")
            self.close_connection = True
            return
        if behaviour == "slow":
            time.sleep(30)  # far past the client's timeout; this thread is not waited for
            return
        if behaviour == "error":
            self.send_response(500)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False


@contextmanager
def _collector(behaviour: str = "ok") -> Iterator[str]:
    _Collector.bodies, _Collector.behaviour = [], behaviour
    server = _Server(("127.0.0.1", 0), _Collector)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _attributes(attributes: Any) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for kv in attributes:
        kind = kv.value.WhichOneof("value")
        value = getattr(kv.value, kind)
        if kind == "array_value":
            value = [getattr(v, v.WhichOneof("value")) for v in value.values]
        values[kv.key] = value
    return values


def _spans() -> list[dict[str, Any]]:
    spans = []
    for path, body in _Collector.bodies:
        if path != "/v1/traces":
            continue
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        for resource_spans in request.resource_spans:
            resource = _attributes(resource_spans.resource.attributes)
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    spans.append(
                        {
                            "name": span.name,
                            "trace": span.trace_id.hex(),
                            "id": span.span_id.hex(),
                            "parent": span.parent_span_id.hex(),
                            "attributes": _attributes(span.attributes),
                            "resource": resource,
                            "status": (span.status.code, span.status.message),
                            "events": [(e.name, _attributes(e.attributes)) for e in span.events],
                        }
                    )
    return spans


def _metrics() -> dict[str, list[tuple[dict[str, Any], Any]]]:
    """Each metric's data points: (attributes, value: a sum's value or a histogram's count)."""
    points: dict[str, list[tuple[dict[str, Any], Any]]] = {}
    for path, body in _Collector.bodies:
        if path != "/v1/metrics":
            continue
        request = ExportMetricsServiceRequest()
        request.ParseFromString(body)
        for resource_metrics in request.resource_metrics:
            for scope_metrics in resource_metrics.scope_metrics:
                for metric in scope_metrics.metrics:
                    kind = metric.WhichOneof("data")
                    for point in getattr(metric, kind).data_points:
                        value = point.count if kind == "histogram" else point.as_int
                        points.setdefault(metric.name, []).append(
                            (_attributes(point.attributes), value)
                        )
    return points


def test_a_run_is_one_trace_with_a_span_per_tenant_from_the_workers(
    settings: Settings, engine: sa.Engine, database_url: str
) -> None:
    make_tenants(settings, ["a", "b", "held", "bad"], "001_initial_schema")
    with engine.begin() as conn:
        conn.exec_driver_sql('CREATE TABLE "bad".locations (id int)')  # revision 003 fails
    with _collector() as endpoint, engine.connect() as blocker:
        blocker.exec_driver_sql('LOCK TABLE "held".inventory_items IN ACCESS SHARE MODE')
        done = run_cli(
            "upgrade", "--all-tenants", "--jobs", "2", "--lock-timeout", "0.3", "--retries", "1",
            url=database_url,
            env={"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_SERVICE_NAME": ""},
        )  # fmt: skip
        blocker.rollback()
    assert done.returncode == 3, done.stderr  # as without telemetry
    assert "warning" not in done.stderr, done.stderr

    spans = _spans()
    (run,) = [s for s in spans if s["name"] == "tenantmig upgrade"]
    assert run["parent"] == "" and run["resource"]["service.name"] == "tenantmig"
    assert run["attributes"]["tenantmig.exit_code"] == 3
    assert run["attributes"]["tenantmig.tenants.ok"] == 2
    assert run["attributes"]["tenantmig.tenants.failed"] == 2
    assert run["status"][0] == 2  # STATUS_CODE_ERROR: exit code 3
    tenants = {s["attributes"]["tenantmig.tenant"]: s for s in spans if s is not run}
    assert set(tenants) == {"a", "b", "held", "bad"}
    for span in tenants.values():
        assert span["name"] == "migrate tenant"
        assert (span["trace"], span["parent"]) == (run["trace"], run["id"])  # one trace
    # Opened and closed in the worker processes, not the coordinator: they join the trace.
    coordinator = run["resource"]["process.pid"]
    workers = {s["resource"]["process.pid"] for s in tenants.values()}
    assert coordinator not in workers and len(workers) == 2
    assert {s["resource"]["tenantmig.process"] for s in tenants.values()} == {"worker"}

    ok = tenants["a"]["attributes"]
    assert ok["tenantmig.schema"] == "a" and ok["tenantmig.database"] == "control"
    assert ok["tenantmig.status"] == "ok" and ok["tenantmig.attempts"] == 1
    assert ok["tenantmig.from"] == "001_initial_schema"
    assert ok["tenantmig.to"] not in ("001_initial_schema", "base")
    assert tenants["a"]["status"][0] != 2
    bad = tenants["bad"]
    assert bad["status"][0] == 2 and "locations" in bad["status"][1]
    assert [name for name, _ in bad["events"]] == ["exception"]
    held = tenants["held"]
    assert held["attributes"]["tenantmig.attempts"] == 2 and held["status"][0] == 2
    ((_, retry),) = [e for e in held["events"] if e[0] == "retry"]
    assert retry["tenantmig.sqlstate"] == "55P03" and retry["tenantmig.attempt"] == 1

    metrics = _metrics()
    finished = {p["tenantmig.status"]: v for p, v in metrics["tenantmig.tenants.finished"]}
    assert finished == {"ok": 2, "failed": 2}
    assert sum(v for _, v in metrics["tenantmig.tenant.duration"]) == 4
    assert metrics["tenantmig.tenant.retries"] == [
        ({"tenantmig.command": "upgrade", "tenantmig.reason": "lock timeout"}, 1)
    ]
    ((attributes, count),) = metrics["tenantmig.run.duration"]
    assert count == 1 and attributes["tenantmig.exit_code"] == 3


def test_one_tenant_in_the_coordinator_and_standard_variables(
    settings: Settings, engine: sa.Engine, database_url: str
) -> None:
    make_tenants(settings, ["solo"], "001_initial_schema")
    with _collector() as endpoint:
        done = run_cli(
            "upgrade", "--tenant", "solo", "--otel", url=database_url,
            env={
                "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
                "OTEL_SERVICE_NAME": "migrations-prod",
                "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=prod",
            },
        )  # fmt: skip
    assert done.returncode == 0, done.stderr
    spans = _spans()
    (run,) = [s for s in spans if s["name"] == "tenantmig upgrade"]
    (tenant,) = [s for s in spans if s["name"] == "migrate tenant"]
    assert tenant["parent"] == run["id"] and tenant["trace"] == run["trace"]
    assert tenant["resource"]["process.pid"] == run["resource"]["process.pid"]  # inline
    assert run["resource"]["service.name"] == "migrations-prod"
    assert run["resource"]["deployment.environment"] == "prod"


@pytest.mark.parametrize("behaviour", ["error", "close", "garbage", "slow"])
def test_a_failing_collector_changes_nothing(
    settings: Settings, engine: sa.Engine, database_url: str, behaviour: str
) -> None:
    make_tenants(settings, ["one", "two"], "001_initial_schema")
    with _collector(behaviour) as endpoint:
        started = time.monotonic()
        done = run_cli(
            "upgrade", "--all-tenants", "--jobs", "2", "--otel", url=database_url,
            env={"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_EXPORTER_OTLP_TIMEOUT": "1"},
        )  # fmt: skip
        elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stderr  # the run's code, not the collector's
    assert "OpenTelemetry" in done.stderr and "warning" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert elapsed < 60, elapsed  # the end of the run waits a bounded time
    with engine.connect() as conn:
        for schema in ("one", "two"):
            version = conn.exec_driver_sql(
                f'SELECT version_num FROM "{schema}".alembic_version'
            ).scalar()
            assert version != "001_initial_schema", schema


def test_slots_sharing_a_process_lose_no_span(
    settings: Settings, engine: sa.Engine, database_url: str
) -> None:
    """Several tenants at once in one worker process (--connections-per-worker): one tracer
    provider for the process, shut down once, after its last tenant's span ended."""
    tenants = [f"s{i}" for i in range(8)]
    make_tenants(settings, tenants, "001_initial_schema")
    with _collector() as endpoint:
        done = run_cli(
            "upgrade", "--all-tenants", "--jobs", "4", "--connections-per-worker", "2",
            url=database_url,
            env={"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_SERVICE_NAME": ""},
        )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "warning" not in done.stderr, done.stderr
    spans = _spans()
    (run,) = [s for s in spans if s["name"] == "tenantmig upgrade"]
    per_tenant = [s for s in spans if s is not run]
    assert sorted(s["attributes"]["tenantmig.tenant"] for s in per_tenant) == tenants
    assert all(s["trace"] == run["trace"] for s in per_tenant)
    assert len({s["resource"]["process.pid"] for s in per_tenant}) <= 2
