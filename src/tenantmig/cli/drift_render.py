"""Drift reports as text (grouped by identical drift) and as a self-contained HTML page."""

from __future__ import annotations

import html
from datetime import datetime, timezone

from tenantmig.schema.drift import DriftReport, SchemaDrift

_EXAMPLES = 5


def _names(items: list[SchemaDrift]) -> str:
    shown = ", ".join(i.name for i in items[:_EXAMPLES])
    more = len(items) - _EXAMPLES
    return shown + (f" and {more} more" if more > 0 else "")


def drift_text(report: DriftReport) -> str:
    lines: list[str] = []
    shared = report.shared
    if shared is not None:
        if shared.drifted:
            lines.append(
                f"shared schema {shared.schema}: {shared.version_drift or 'at head'}"
                f" ({shared.detail})"
            )
            lines.extend(f"    {d.describe()}" for d in shared.differences)
        else:
            lines.append(f"shared schema {shared.schema}: no drift (at {shared.revision})")
    drifted = len(report.drifted)
    lines.append(
        f"{report.tenants_checked} tenant(s) checked against head {report.head}: "
        + (f"{drifted} drifted" if drifted else "no drift")
    )
    for (state, differences), items in report.groups():
        what = []
        if state is not None:
            what.append(f"version: {items[0].detail}" if len(items) == 1 else f"version: {state}")
        if differences:
            what.append(f"{len(differences)} structural difference(s)")
        lines.append(f"  {len(items)} tenant(s) [{_names(items)}]: {'; '.join(what)}")
        lines.extend(f"      {d.describe()}" for d in differences)
    return "\n".join(lines)


def drift_html(report: DriftReport) -> str:
    """One HTML file with inline CSS: opens in any browser, no network access needed."""
    esc = html.escape
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        "<title>tenantmig drift report</title><style>",
        "body{font:14px/1.45 system-ui,sans-serif;margin:2em;color:#222}",
        "table{border-collapse:collapse;margin:.5em 0 1.5em}",
        "td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left;vertical-align:top}",
        "th{background:#f3f3f3}code{font-family:ui-monospace,monospace;font-size:12px}",
        ".ok{color:#17702e}.bad{color:#b3261e}.group{border-left:4px solid #b3261e;"
        "padding-left:1em;margin-bottom:2em}",
        "</style></head><body>",
        "<h1>tenantmig drift report</h1>",
        f"<p>Generated {esc(generated)}. Tenant head: <code>{esc(str(report.head))}</code>. "
        f"Tenants checked: {report.tenants_checked}. ",
    ]
    if report.any_drift:
        parts.append(
            f"<strong class='bad'>Drift found in {len(report.drifted)} tenant(s)"
            f"{' and the shared schema' if report.shared and report.shared.drifted else ''}"
            ".</strong></p>"
        )
    else:
        parts.append("<strong class='ok'>No drift.</strong></p>")
    entries: list[tuple[str, list[SchemaDrift]]] = []
    if report.shared is not None and report.shared.drifted:
        entries.append((f"Shared schema {report.shared.schema}", [report.shared]))
    for (_state, _differences), items in report.groups():
        entries.append((f"{len(items)} tenant(s)", items))
    for title, items in entries:
        first = items[0]
        parts.append("<div class='group'>")
        parts.append(
            f"<h2>{esc(title)}</h2><p>Tenants: "
            + ", ".join(f"<code>{esc(i.name)}</code>" for i in items[:200])
            + (f" and {len(items) - 200} more" if len(items) > 200 else "")
            + "</p>"
        )
        if first.version_drift:
            parts.append(
                f"<p>Version: <strong>{esc(first.version_drift)}</strong>"
                f" ({esc(first.detail or '')})</p>"
            )
        if first.differences:
            parts.append(
                "<table><tr><th>kind</th><th>object</th><th>change</th>"
                "<th>expected</th><th>actual</th></tr>"
            )
            for d in first.differences:
                parts.append(
                    f"<tr><td>{esc(d.kind)}</td><td><code>{esc(d.object)}</code></td>"
                    f"<td>{esc(d.change)}</td><td><code>{esc(d.expected or '')}</code></td>"
                    f"<td><code>{esc(d.actual or '')}</code></td></tr>"
                )
            parts.append("</table>")
        parts.append("</div>")
    parts.append("</body></html>")
    return "\n".join(parts)
