"""A run's metrics for Prometheus: a node_exporter textfile, and a Pushgateway push.

For cron and CI jobs, which Prometheus cannot scrape while they run: the metrics describe the
run that just ended, written when it ends. ``prometheus_client`` (the ``tenantmig[prometheus]``
extra) renders them and writes the file atomically (a temporary file renamed over the old
one), so the node_exporter never reads half a file.

Exporting never changes a run's outcome: a file that cannot be written or a gateway that does
not answer is reported as a warning, and the exit code stays the run's.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit, urlunsplit

from tenantmig.errors import ConfigError
from tenantmig.observe.urls import error_text, mask_url
from tenantmig.run.results import RunResult, TenantStatus

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

JOB = "tenantmig"
# Tenant durations: from a replayed step on a small schema to a long data migration.
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0)
PUSH_TIMEOUT_S = 5.0
PUSH_ATTEMPTS = 3


@dataclass(frozen=True)
class Exports:
    """Where a run's metrics go."""

    metrics_file: Path | None = None
    pushgateway: str | None = None

    def __bool__(self) -> bool:
        return self.metrics_file is not None or self.pushgateway is not None

    def check(self) -> None:
        """Before the run starts (nothing changed yet): the package is there, the file's
        directory exists."""
        if not self:
            return
        try:
            import prometheus_client  # noqa: F401
        except ImportError:
            raise ConfigError(
                "--metrics-file and --pushgateway need prometheus_client: "
                "pip install 'tenantmig[prometheus]'"
            ) from None
        if self.metrics_file is not None and not self.metrics_file.parent.is_dir():
            raise ConfigError(f"--metrics-file: no directory {self.metrics_file.parent}")
        if self.pushgateway is not None and not self.pushgateway.startswith(
            ("http://", "https://")
        ):
            raise ConfigError(f"--pushgateway {mask_url(self.pushgateway)}: give an http(s) URL")


def registry_for(result: RunResult, exit_code: int) -> CollectorRegistry:
    """The run's metrics in a registry of their own."""
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

    registry = CollectorRegistry()
    labels = ["command"]
    finished = Counter(
        "tenantmig_tenants_finished",
        "Tenants the run finished, by status (skipped: already at the target)",
        [*labels, "status"],
        registry=registry,
    )
    duration = Histogram(
        "tenantmig_tenant_duration_seconds",
        "Time each tenant took, from its lock to its commit, retries included",
        labels,
        buckets=DURATION_BUCKETS,
        registry=registry,
    )
    retries = Counter(
        "tenantmig_tenant_retries",
        "Attempts beyond a tenant's first: lock timeouts, deadlocks, serialization failures, "
        "a full lock table, a lost connection",
        labels,
        registry=registry,
    )
    run_seconds = Gauge(
        "tenantmig_run_duration_seconds", "How long the run took", labels, registry=registry
    )
    ended = Gauge(
        "tenantmig_run_finished_timestamp_seconds",
        "When the run ended (Unix time): alert when it is too old",
        labels,
        registry=registry,
    )
    code = Gauge(
        "tenantmig_run_exit_code",
        "The run's exit code: 0 ok, 3 some tenants failed, 4 run lock, 130 interrupted",
        labels,
        registry=registry,
    )
    command = result.command
    for status in TenantStatus:
        finished.labels(command, status.value)  # every status present, zero when none
    for outcome in result.outcomes:
        finished.labels(command, outcome.status.value).inc()
        if outcome.attempts:
            duration.labels(command).observe(outcome.duration_s)
            retries.labels(command).inc(max(0, outcome.attempts - 1))
    retries.labels(command)
    run_seconds.labels(command).set(result.duration_s)
    ended.labels(command).set(time.time())
    code.labels(command).set(exit_code)
    return registry


def export(
    result: RunResult, exit_code: int, exports: Exports, warn: Callable[[str], None]
) -> None:
    """Write and push the run's metrics as ``exports`` says; problems go to ``warn``."""
    if not exports:
        return
    from prometheus_client import push_to_gateway, write_to_textfile

    registry = registry_for(result, exit_code)
    if exports.metrics_file is not None:
        try:
            write_to_textfile(str(exports.metrics_file), registry)
        except OSError as exc:
            warn(f"metrics not written to {exports.metrics_file}: {exc.strerror or exc}")
    if exports.pushgateway is not None:
        gateway, handler = _gateway_and_handler(exports.pushgateway)
        last: Exception | None = None
        for attempt in range(PUSH_ATTEMPTS):
            try:
                push_to_gateway(
                    gateway, job=JOB, registry=registry, timeout=PUSH_TIMEOUT_S, handler=handler
                )
                return
            except Exception as exc:  # any failure of the gateway or the network
                last = exc
                if attempt + 1 < PUSH_ATTEMPTS:
                    time.sleep(0.5 * 2**attempt)
        warn(
            f"metrics not pushed to {mask_url(exports.pushgateway)} after {PUSH_ATTEMPTS} "
            f"attempts: {error_text(last, exports.pushgateway)}"
        )


def _gateway_and_handler(url: str) -> tuple[str, Callable[..., Callable[[], None]]]:
    """The gateway's URL without credentials, and the handler that sends them (HTTP basic
    authentication, as a user:password@ in the URL asks for)."""
    from prometheus_client.exposition import basic_auth_handler, default_handler

    parts = urlsplit(url)
    if parts.username is None:
        return url, default_handler
    host = parts.hostname or ""
    netloc = host + (f":{parts.port}" if parts.port else "")
    bare = urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    username, password = unquote(parts.username), unquote(parts.password or "")

    def handler(
        url: str, method: str, timeout: float | None, headers: list[tuple[str, str]], data: bytes
    ) -> Callable[[], None]:
        return basic_auth_handler(url, method, timeout, headers, data, username, password)

    return bare, handler
