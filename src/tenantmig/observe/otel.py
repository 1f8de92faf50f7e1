"""A run as an OpenTelemetry trace, with its metrics, sent over OTLP.

On with ``--otel`` or when ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or its ``_TRACES_`` form) is set,
unless ``OTEL_SDK_DISABLED=true``; it needs the ``tenantmig[otel]`` extra (the SDK and the
OTLP/HTTP exporter; ``OTEL_EXPORTER_OTLP_PROTOCOL=grpc`` also needs the gRPC exporter). The
standard ``OTEL_*`` variables apply (endpoint, headers, timeout, sampler, resource
attributes); the service name is ``tenantmig`` unless they name another.

- The run is one span (``tenantmig upgrade`` / ``tenantmig downgrade``), in the coordinator.
- Each tenant migrated is a span of its own, child of the run's, opened and closed in the
  process that migrates it: worker processes get the run span's context (a W3C traceparent) in
  their ``WorkerSpec`` and export their spans themselves, so they join the run's trace. A
  retry is an event on the tenant's span; a failure is its status (ERROR, with the message)
  and an ``exception`` event. Tenants the run recorded as failed without migrating them (a
  missing schema, an unreachable database) get a span from the coordinator.
- Metrics, recorded by the coordinator: ``tenantmig.tenants.finished`` (by status),
  ``tenantmig.tenant.duration`` (seconds), ``tenantmig.tenant.retries`` (by reason: lock
  timeout, deadlock, ...), ``tenantmig.run.duration`` (seconds), exported when the run ends.

Nothing here changes a run: spans are exported in the background, and at the end the run waits
a bounded time for the exporters, then warns (once) if the collector could not be reached.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tenantmig.errors import ConfigError
from tenantmig.observe.urls import mask_url
from tenantmig.run.observers import QuietObserver, RunStart, TenantRetry
from tenantmig.run.results import RunResult, TenantJob, TenantOutcome, TenantStatus, WaveResult

if TYPE_CHECKING:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span, Tracer

    from tenantmig.run.observers import Execution

SERVICE_NAME = "tenantmig"
ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
# How long the end of a run (or a worker's exit) waits for the exporters to send what is left.
SHUTDOWN_TIMEOUT_S = 10.0
# How long a worker process waits, when it exits, for its last spans to go out. Short: the
# coordinator waits for its workers before it finishes the run (and releases the run lock).
WORKER_FLUSH_S = 2.0
_ERROR_SHOWN = 200  # characters of the first export error in the warning
_TENANT_SPAN = "migrate tenant"
_INSTRUMENTATION = "tenantmig"


def requested(flag: bool) -> bool:
    """--otel, or an OTLP endpoint in the environment, and the SDK not disabled."""
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    return flag or any(os.environ.get(name) for name in ENDPOINT_VARIABLES)


def _endpoint() -> str:
    """Where spans go, as the exporter decides it (for messages)."""
    return (
        os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or ("http://localhost:4317" if _protocol() == "grpc" else "http://localhost:4318")
    )


def _protocol() -> str:
    return (
        os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    ).strip()


def check(flag: bool, warn: Callable[[str], None]) -> bool:
    """Before the run (nothing changed yet): may telemetry be sent? With --otel a missing
    package is a usage error; with only the environment asking, a warning (the variables may
    be set for other programs)."""
    if not requested(flag):
        return False
    protocol = _protocol()
    if protocol not in ("http/protobuf", "grpc"):
        raise ConfigError(
            f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol}: tenantmig sends http/protobuf (the "
            "default) or grpc"
        )
    exporter = f"opentelemetry.exporter.otlp.proto.{'grpc' if protocol == 'grpc' else 'http'}"
    missing = None
    if not (_installed("opentelemetry.sdk.trace") and _installed(exporter)):
        missing = (
            "pip install 'tenantmig[otel]' opentelemetry-exporter-otlp-proto-grpc"
            if protocol == "grpc"
            else "pip install 'tenantmig[otel]'"
        )
    if missing is None:
        return True
    if flag:
        raise ConfigError(f"--otel needs the OpenTelemetry SDK and OTLP exporter: {missing}")
    warn(f"an OTLP endpoint is set but the OpenTelemetry SDK is not installed ({missing}): "
         "no telemetry for this run")  # fmt: skip
    return False


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False


# -- one provider per process --------------------------------------------------------------
class _Failures(logging.Handler):
    """Remembers the first export error the OpenTelemetry SDK logs (it never raises them)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.first: str | None = None
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1
        if self.first is None:
            line = record.getMessage().splitlines()[0]
            if len(line) > _ERROR_SHOWN:
                line = line[:_ERROR_SHOWN].rsplit(" ", 1)[0] + " ..."
            self.first = line


@dataclass
class _Process:
    tracer_provider: TracerProvider
    failures: _Failures


_process: _Process | None = None
# A worker process's slots (threads, run.executor) begin their first spans at the same time:
# one provider for the process, made once.
_process_made = threading.Lock()


def _resource(role: str) -> Any:
    from opentelemetry.sdk.resources import Resource

    resource = Resource.create({"process.pid": os.getpid(), "tenantmig.process": role})
    name = str(resource.attributes.get("service.name", ""))
    if name.startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": SERVICE_NAME}))
    return resource


def _span_exporter() -> Any:
    if _protocol() == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (  # type: ignore[import-not-found]
            OTLPSpanExporter,
        )
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    return OTLPSpanExporter()


def _metric_exporter() -> Any:
    if _protocol() == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (  # type: ignore[import-not-found]
            OTLPMetricExporter,
        )
    else:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    return OTLPMetricExporter()


def _this_process(role: str) -> _Process:
    """This process's tracer provider (made once): spans are batched and exported by the
    SDK's background thread. The SDK's export errors go to a handler that remembers them,
    not to the terminal (the coordinator reports them once, at the end)."""
    global _process
    with _process_made:
        if _process is None:
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor

            failures = _Failures()
            sdk_log = logging.getLogger("opentelemetry")
            sdk_log.addHandler(failures)
            sdk_log.propagate = False
            provider = TracerProvider(resource=_resource(role))
            provider.add_span_processor(BatchSpanProcessor(_span_exporter()))
            _process = _Process(provider, failures)
        return _process


def _bounded(timeout_s: float, *jobs: Callable[[], object]) -> bool:
    """Run ``jobs`` (exporters' shutdowns) side by side for at most ``timeout_s`` in all;
    True if every one finished. The ones still going are left to the process's exit."""
    threads = [
        threading.Thread(target=job, name="tenantmig-otel-shutdown", daemon=True) for job in jobs
    ]
    deadline = time.monotonic() + timeout_s
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    return not any(thread.is_alive() for thread in threads)


def _shutdown_process() -> None:
    global _process
    if _process is not None:
        _bounded(WORKER_FLUSH_S, _process.tracer_provider.shutdown)
        _process = None


def _tracer(role: str) -> Tracer:
    return _this_process(role).tracer_provider.get_tracer(_INSTRUMENTATION)


# -- a tenant's span, where it is migrated -----------------------------------------------------
def _end_tenant_span(span: Span, outcome: TenantOutcome, end_time: int | None = None) -> None:
    from opentelemetry.trace import Status, StatusCode

    span.set_attributes(
        {
            "tenantmig.status": outcome.status.value,
            "tenantmig.from": outcome.from_revision or "base",
            "tenantmig.to": outcome.to_revision or "base",
            "tenantmig.attempts": outcome.attempts,
            "tenantmig.replayed": outcome.replayed,
        }
    )
    if outcome.status.is_failure:
        error = outcome.error or outcome.status.value
        span.add_event(
            "exception",
            {"exception.type": f"tenantmig.{outcome.status.value}", "exception.message": error},
        )
        span.set_status(Status(StatusCode.ERROR, error))
    span.end(end_time=end_time)


def _tenant_attributes(job: TenantJob | TenantOutcome, command: str) -> dict[str, Any]:
    return {
        "tenantmig.tenant": job.name,
        "tenantmig.schema": job.schema,
        "tenantmig.database": job.database,
        "tenantmig.command": command,
        "db.system.name": "postgresql",
    }


class TenantSpans:
    """``TenantHooks`` that open a span per tenant in the run's trace (picklable: the run
    span's context travels as a W3C traceparent)."""

    def __init__(self, traceparent: dict[str, str], command: str) -> None:
        self.traceparent, self.command = traceparent, command
        self._open: dict[tuple[str, str], Span] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {"traceparent": self.traceparent, "command": self.command}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.traceparent, self.command = state["traceparent"], state["command"]
        self._open = {}

    def begin(self, job: TenantJob) -> None:
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        parent = TraceContextTextMapPropagator().extract(self.traceparent)
        role = "coordinator" if _coordinator is not None else "worker"
        span = _tracer(role).start_span(
            _TENANT_SPAN,
            context=parent,
            attributes={
                **_tenant_attributes(job, self.command),
                "tenantmig.seen": job.seen_revision or "base",
            },
        )
        self._open[(job.database, job.name)] = span

    def retry(self, retry: TenantRetry) -> None:
        span = self._open.get((retry.database, retry.tenant))
        if span is not None:
            span.add_event(
                "retry",
                {
                    "tenantmig.attempt": retry.attempt,
                    "tenantmig.reason": retry.reason,
                    "tenantmig.sqlstate": retry.sqlstate or "",
                    "tenantmig.retry_in_s": retry.retry_in_s,
                    "tenantmig.blocked_by": list(retry.blocked_by),
                },
            )

    def end(self, job: TenantJob, outcome: TenantOutcome) -> None:
        span = self._open.pop((job.database, job.name), None)
        if span is not None:
            _end_tenant_span(span, outcome)

    def close(self) -> None:
        if self._open:
            return  # not expected: a tenant begun and not ended
        if _process is not None and _process.tracer_provider is not _coordinator_provider():
            _shutdown_process()


def _coordinator_provider() -> TracerProvider | None:
    return _coordinator.tracer_provider if _coordinator is not None else None


_coordinator: _Process | None = None


# -- the run, in the coordinator ----------------------------------------------------------------
class OtelRun(QuietObserver):
    """The run's span and metrics, in the coordinator's process."""

    def __init__(self, command: str, target: str) -> None:
        global _coordinator
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

        self.command = command
        process = _this_process("coordinator")
        _coordinator = process
        self.failures = process.failures
        self.started_ns = time.time_ns()
        self.run_span = _tracer("coordinator").start_span(
            f"tenantmig {command}",
            attributes={"tenantmig.command": command, "tenantmig.target": target},
        )
        # Exported once, when the run ends (shutdown), not every minute.
        reader = PeriodicExportingMetricReader(_metric_exporter(), export_interval_millis=3.6e6)
        self.meters: MeterProvider = MeterProvider(
            metric_readers=[reader], resource=process.tracer_provider.resource
        )
        meter = self.meters.get_meter(_INSTRUMENTATION)
        self.finished_tenants = meter.create_counter(
            "tenantmig.tenants.finished",
            unit="{tenant}",
            description="Tenants the run finished, by status (skipped: already at the target)",
        )
        self.tenant_duration = meter.create_histogram(
            "tenantmig.tenant.duration",
            unit="s",
            description="Time each tenant took, from its lock to its commit, retries included",
        )
        self.retries = meter.create_counter(
            "tenantmig.tenant.retries",
            unit="{retry}",
            description="Attempts at a tenant that failed and were retried, by reason",
        )
        self.run_duration = meter.create_histogram(
            "tenantmig.run.duration", unit="s", description="How long the run took"
        )

    def tenant_hooks(self) -> TenantSpans:
        from opentelemetry.trace import set_span_in_context
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        carrier: dict[str, str] = {}
        TraceContextTextMapPropagator().inject(carrier, set_span_in_context(self.run_span))
        return TenantSpans(carrier, self.command)

    def started(self, start: RunStart) -> None:
        self.run_span.set_attributes(
            {
                "tenantmig.run_id": start.run_id or 0,
                "tenantmig.tenants": start.pending,
                "tenantmig.selected": start.selected,
                "tenantmig.jobs": start.workers,
                "tenantmig.databases": list(start.databases),
            }
        )
        for outcome in start.settled:
            self._count(outcome)
            if outcome.status.is_failure:
                self._settled_span(outcome)

    def _settled_span(self, outcome: TenantOutcome) -> None:
        """A tenant failed without being migrated: a span of its own, from the coordinator."""
        from opentelemetry.trace import set_span_in_context

        span = _tracer("coordinator").start_span(
            _TENANT_SPAN,
            context=set_span_in_context(self.run_span),
            attributes=_tenant_attributes(outcome, self.command),
        )
        _end_tenant_span(span, outcome)

    def wave_finished(self, wave: WaveResult) -> None:
        self.run_span.add_event(
            "wave_finished",
            {
                "tenantmig.wave": wave.index + 1,
                "tenantmig.wave_spec": wave.spec,
                "tenantmig.wave_state": wave.state,
                **{f"tenantmig.tenants.{status}": n for status, n in wave.counts.items()},
            },
        )

    def tenant_retry(self, retry: TenantRetry) -> None:
        self.retries.add(1, {"tenantmig.command": self.command, "tenantmig.reason": retry.reason})

    def outcome(self, outcome: TenantOutcome, execution: Execution) -> None:
        self._count(outcome)
        if outcome.attempts:
            self.tenant_duration.record(outcome.duration_s, {"tenantmig.command": self.command})

    def _count(self, outcome: TenantOutcome) -> None:
        self.finished_tenants.add(
            1, {"tenantmig.command": self.command, "tenantmig.status": outcome.status.value}
        )

    def finished(self, result: RunResult, exit_code: int, finish_command: str | None) -> None:
        from opentelemetry.trace import Status, StatusCode

        counts = {s.value: result.count(s) for s in TenantStatus}
        self.run_span.set_attributes(
            {
                "tenantmig.run_id": result.run_id or 0,
                "tenantmig.exit_code": exit_code,
                **{f"tenantmig.tenants.{status}": n for status, n in counts.items()},
            }
        )
        if exit_code != 0:
            failed = ", ".join(o.name for o in result.failed[:10])
            self.run_span.set_status(
                Status(
                    StatusCode.ERROR, f"exit code {exit_code}" + (f": {failed}" if failed else "")
                )
            )
        self._end(exit_code)

    def aborted(self, error: str, exit_code: int) -> None:
        from opentelemetry.trace import Status, StatusCode

        self.run_span.set_attribute("tenantmig.exit_code", exit_code)
        self.run_span.add_event("exception", {"exception.message": error})
        self.run_span.set_status(Status(StatusCode.ERROR, error))
        self._end(exit_code)

    def _end(self, exit_code: int) -> None:
        self.run_duration.record(
            (time.time_ns() - self.started_ns) / 1e9,
            {"tenantmig.command": self.command, "tenantmig.exit_code": exit_code},
        )
        self.run_span.end()

    def shutdown(self, warn: Callable[[str], None]) -> None:
        """Send what is left (spans, then the metrics), within a bounded time; warn once if
        the collector was not reached."""
        global _coordinator
        done = _bounded(SHUTDOWN_TIMEOUT_S, self._shutdown_traces, self.meters.shutdown)
        _coordinator = None
        where, first = mask_url(_endpoint()), self.failures.first
        if not done:
            warn(f"OpenTelemetry: {where} did not take the run's telemetry within "
                 f"{SHUTDOWN_TIMEOUT_S:.0f}s; some of it was not sent"
                 + (f" ({first})" if first else ""))  # fmt: skip
        elif first is not None:
            warn(f"OpenTelemetry: sending to {where} failed: {first}")

    def _shutdown_traces(self) -> None:
        global _process
        if _process is not None:
            _process.tracer_provider.shutdown()
            _process = None
