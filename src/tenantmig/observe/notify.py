"""Notifications when a run ends: its summary POSTed to each configured URL.

``json`` (the default) sends the document ``--json`` prints (totals, every tenant's outcome,
notes, the finishing command) with the exit code; ``slack`` sends a Slack incoming-webhook
message: the counts, the failed tenants and the command that finishes the run.

A notification never changes a run: each URL gets ``ATTEMPTS`` tries with a ``TIMEOUT_S``
timeout each, and a URL that still fails is a warning (its credentials masked), not an error.
Sent with the standard library, so no extra package is needed.
"""

from __future__ import annotations

import base64
import http.client
import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import unquote, urlsplit, urlunsplit

from tenantmig.errors import ConfigError
from tenantmig.observe.urls import error_text, mask_url
from tenantmig.run.results import RunResult, TenantStatus

Format = Literal["json", "slack"]
FORMATS: tuple[Format, ...] = ("json", "slack")
TIMEOUT_S = 5.0
ATTEMPTS = 3
FAILED_SHOWN = 10  # failed tenants named in a Slack message; past it, a count


@dataclass(frozen=True)
class Notifications:
    urls: tuple[str, ...] = ()
    format: Format = "json"

    def __bool__(self) -> bool:
        return bool(self.urls)

    def check(self) -> None:
        """Before the run starts: every URL is http(s), the format known."""
        for url in self.urls:
            if not url.startswith(("http://", "https://")):
                raise ConfigError(f"--notify {mask_url(url)}: give an http(s) URL")
        if self.format not in FORMATS:
            raise ConfigError(f"--notify-format {self.format!r}: one of {', '.join(FORMATS)}")


def payload(result: RunResult, exit_code: int, finish: str | None, fmt: Format) -> dict[str, Any]:
    """What is POSTed for ``result``."""
    if fmt == "json":
        return {**result.to_json(), "finish_command": finish, "exit_code": exit_code}
    return {"text": _slack_text(result, exit_code, finish)}


def _slack_text(result: RunResult, exit_code: int, finish: str | None) -> str:
    totals = result.totals()
    counts = ", ".join(f"{totals[s.value]} {s.value}" for s in TenantStatus if totals[s.value])
    run = f"run {result.run_id}" if result.run_id is not None else "a run (not recorded)"
    verdict = "succeeded" if exit_code == 0 else f"ended with exit code {exit_code}"
    lines = [
        f"tenantmig {run} ({result.command} {result.target}) {verdict}: "
        f"{totals['total']} tenant(s){': ' + counts if counts else ''} "
        f"in {result.duration_s:.1f}s"
    ]
    if result.shared is not None and not result.shared.status.is_done:
        lines.append(f"shared schema {result.shared.schema}: {result.shared.error}")
    failed = result.failed
    for outcome in failed[:FAILED_SHOWN]:
        lines.append(f"• {outcome.name} {outcome.status.value}: {outcome.error or ''}".rstrip())
    if len(failed) > FAILED_SHOWN:
        lines.append(f"… and {len(failed) - FAILED_SHOWN} more")
    if result.waves is not None:
        lines.append(
            "waves: "
            + "; ".join(f"{w.index + 1} {w.spec} {w.state.replace('_', ' ')}" for w in result.waves)
        )
        if result.halted:
            lines.append(f"rollout stopped: {result.halted}")
        if result.paused:
            lines.append(f"rollout {result.paused}")
    if finish and result.waves is not None:
        lines.append(f"go on with: `{finish}` (or give it up: `runs cancel`)")
    elif finish:
        lines.append(f"finish it with: `{finish}`")
    return "\n".join(lines)


def send(
    notifications: Notifications,
    body: dict[str, Any],
    warn: Callable[[str], None],
    sleep: Callable[[float], None] = time.sleep,
) -> list[str]:
    """POST ``body`` to every URL; the URLs that were notified (the others were warned of)."""
    data = json.dumps(body, default=str).encode()
    delivered = []
    for url in notifications.urls:
        last: BaseException | None = None
        for attempt in range(ATTEMPTS):
            try:
                _post(url, data)
                delivered.append(url)
                break
            except (OSError, urllib.error.URLError, http.client.HTTPException, ValueError) as exc:
                last = exc
                if attempt + 1 < ATTEMPTS:
                    sleep(0.5 * 2**attempt)
        else:
            warn(
                f"notification to {mask_url(url)} failed after {ATTEMPTS} attempts: "
                f"{error_text(last, url)}"
            )
    return delivered


def _post(url: str, data: bytes) -> None:
    headers = {"Content-Type": "application/json", "User-Agent": "tenantmig"}
    parts = urlsplit(url)
    if parts.username is not None:
        # user:password@ in the URL: HTTP basic authentication, as curl takes it.
        credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        headers["Authorization"] = "Basic " + base64.b64encode(credentials.encode()).decode()
        netloc = (parts.hostname or "") + (f":{parts.port}" if parts.port else "")
        url = urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    request = urllib.request.Request(url, data=data, method="POST", headers=headers)
    with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
        response.read()
