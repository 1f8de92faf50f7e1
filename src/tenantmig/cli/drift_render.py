"""Drift reports as text and as a self-contained HTML page.

Both are drawn from the same ``DriftReport.groups()`` (as is the JSON): groups headed by what is
wrong, most serious first, each with the statements that would fix the simple cases. The
statements are suggestions to review and run by hand; tenantmig never runs them.
"""

from __future__ import annotations

import html

from tenantmig.schema.drift_report import Difference, DriftReport, SchemaDrift

_EXAMPLES = 5
_HTML_NAMES = 200


def _names(items: list[SchemaDrift], shown: int = _EXAMPLES) -> str:
    listed = ", ".join(i.name for i in items[:shown])
    more = len(items) - shown
    return listed + (f" and {more} more" if more > 0 else "")


def _header(report: DriftReport) -> list[str]:
    lines = [
        f"drift report for {report.database or 'the database'} at "
        f"{report.generated_at:%Y-%m-%d %H:%M:%S %Z}",
    ]
    shared = report.shared
    if shared is not None:
        if shared.drifted:
            lines.append(f"shared schema {shared.schema}: {shared.headline()} ({shared.detail})")
        else:
            lines.append(
                f"shared schema {shared.schema}: no drift (at {shared.revision or 'base'})"
            )
    drifted = len(report.drifted)
    lines.append(
        f"{report.tenants_checked} tenant(s) checked against head {report.head or 'base'}: "
        + (f"{drifted} drifted" if drifted else "no drift")
        + (f" (ignoring {', '.join(report.ignored)})" if report.ignored else "")
    )
    lines.extend(f"unfinished move: {move.describe()}" for move in report.moves)
    return lines


def _group_lines(title: str, tenants: str, example: SchemaDrift, sql: list[str]) -> list[str]:
    lines = [f"{title}", f"    tenants: {tenants}"]
    if example.version_drift is not None and example.detail:
        lines.append(f"    version: {example.detail}")
    lines.extend(f"    {d.change} {d.kind} {d.object}: {_detail(d)}" for d in example.differences)
    if sql:
        lines.append(f"    suggested (review, then run in each schema, e.g. SET search_path TO "
                     f"{example.schema};):")  # fmt: skip
        lines.extend(f"      {statement}" for statement in sql)
    return lines


def _detail(d: Difference) -> str:
    if d.expected is not None and d.actual is not None:
        return f"expected {d.expected}, found {d.actual}"
    return str(d.expected if d.expected is not None else d.actual)


def drift_text(report: DriftReport) -> str:
    lines = _header(report)
    shared = report.shared
    if shared is not None and shared.drifted:
        sql = [d.suggested_sql for d in shared.differences if d.suggested_sql]
        lines.append("")
        lines.extend(
            _group_lines(f"shared schema: {shared.headline()}", shared.schema, shared, sql)
        )
    for group in report.groups():
        lines.append("")
        lines.extend(
            _group_lines(
                f"{group.title} ({len(group.tenants)} tenant(s))",
                _names(group.tenants),
                group.example,
                group.suggested_sql(),
            )
        )
    return "\n".join(lines)


STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:72em;color:#222;padding:0 1em}
h1{margin-bottom:.2em}.meta{color:#555;margin-top:0}
.summary{font-size:1.1em;padding:.6em 1em;border-radius:6px;margin:1em 0}
.summary.ok{background:#e7f5ea;color:#17702e}.summary.bad{background:#fbeaea;color:#b3261e}
table{border-collapse:collapse;margin:.5em 0 1em;width:100%}
td,th{border:1px solid #ddd;padding:.3em .6em;text-align:left;vertical-align:top}
th{background:#f5f5f5}code,pre{font-family:ui-monospace,monospace;font-size:12px}
pre{background:#f7f7f7;border:1px solid #ddd;padding:.6em;overflow-x:auto;white-space:pre-wrap}
.group{border-left:5px solid #888;padding:.2em 1em;margin:1.2em 0}
.sev0{border-color:#b3261e}.sev1{border-color:#d9822b}.sev2{border-color:#c9a400}
.group h2{font-size:1.15em;margin:.4em 0}.count{color:#555;font-weight:normal}
.note{color:#555;font-size:.92em}
"""


def drift_html(report: DriftReport) -> str:
    """One HTML file with inline CSS: opens in any browser, no network access needed."""
    esc = html.escape
    header = _header(report)
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>tenantmig drift: {esc(report.database)}</title><style>{STYLE}</style>",
        "</head><body>",
        "<h1>tenantmig drift report</h1>",
        f"<p class='meta'>{esc(header[0])}</p>",
    ]
    verdict = "bad" if report.any_drift else "ok"
    parts.append(f"<div class='summary {verdict}'>")
    parts.extend(f"<div>{esc(line)}</div>" for line in header[1:])
    parts.append("</div>")
    entries: list[tuple[str, int, list[SchemaDrift], list[str]]] = []
    shared = report.shared
    if shared is not None and shared.drifted:
        sql = [d.suggested_sql for d in shared.differences if d.suggested_sql]
        entries.append((f"shared schema: {shared.headline()}", 0, [shared], sql))
    for group in report.groups():
        entries.append((group.title, group.severity, group.tenants, group.suggested_sql()))
    for title, severity, items, sql in entries:
        parts.append(_html_group(title, severity, items, sql))
    parts.append("</body></html>")
    return "\n".join(parts)


def _html_group(title: str, severity: int, items: list[SchemaDrift], sql: list[str]) -> str:
    esc = html.escape
    first = items[0]
    out = [
        f"<section class='group sev{severity}'>",
        f"<h2>{esc(title)} <span class='count'>· {len(items)} schema(s)</span></h2>",
        "<p>"
        + ", ".join(f"<code>{esc(i.name)}</code>" for i in items[:_HTML_NAMES])
        + (f" and {len(items) - _HTML_NAMES} more" if len(items) > _HTML_NAMES else "")
        + "</p>",
    ]
    if first.version_drift and first.detail:
        out.append(f"<p>Version: {esc(first.detail)}</p>")
    if first.differences:
        out.append("<table><tr><th>change</th><th>kind</th><th>object</th><th>expected</th>"
                   "<th>found</th></tr>")  # fmt: skip
        for d in first.differences:
            out.append(
                f"<tr><td>{esc(d.change)}</td><td>{esc(d.kind)}</td>"
                f"<td><code>{esc(d.object)}</code></td><td><code>{esc(d.expected or '')}"
                f"</code></td><td><code>{esc(d.actual or '')}</code></td></tr>"
            )
        out.append("</table>")
    if sql:
        out.append(
            "<p class='note'>Suggested statements (review, then run in each schema with "
            f"<code>SET search_path TO {esc(first.schema)};</code>; tenantmig never runs "
            "them):</p>"
        )
        out.append(f"<pre>{esc(chr(10).join(sql))}</pre>")
    out.append("</section>")
    return "\n".join(out)
