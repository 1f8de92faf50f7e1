"""`tenantmig plan --html`: the plan as one self-contained HTML file, in drift's style."""

from __future__ import annotations

import html

from tenantmig.cli.drift_render import STYLE
from tenantmig.risk.plan import PlanReport, StepPlan, size_text
from tenantmig.risk.statements import BLOCKS

# Severity classes of drift's style, by effect: the worst first.
_SEVERITY = {"destructive": 0, "rewrite": 1, "scan": 2, "metadata-only": 4}
_TENANTS = 50  # tenants listed per step; --json has them all


def plan_html(report: PlanReport) -> str:
    esc = html.escape
    headline = report.text().splitlines()[0]
    risky = any(s.effect != "metadata-only" for step in report.steps for s in step.statements)
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>tenantmig plan: {esc(report.command)} {esc(report.target)}</title>",
        f"<style>{STYLE}</style></head><body>",
        "<h1>tenantmig plan</h1>",
        f"<div class='summary {'bad' if risky else 'ok'}'><div>{esc(headline)}</div></div>",
    ]
    parts.extend(_step(step) for step in report.steps)
    parts.append("</body></html>")
    return "\n".join(parts)


def _step(step: StepPlan) -> str:
    esc = html.escape
    worst = min((_SEVERITY[s.effect] for s in step.statements), default=4)
    how = step.how
    out = [
        f"<section class='group sev{worst}'>",
        f"<h2>step {esc(step.key.describe())} <span class='count'>· {len(step.tenants)} "
        f"tenant(s) · {esc(how)}</span></h2>",
    ]
    if step.note:
        out.append(f"<p class='note'>{esc(step.note)}</p>")
    out.append("<table><tr><th>#</th><th>statement</th><th>lock</th><th>effect</th></tr>")
    for number, a in enumerate(step.statements, 1):
        lock = f"{a.lock} on {a.table}" if a.lock else "none on an existing table"
        why = f"<br><small>{esc('; '.join(a.why))}</small>" if a.why else ""
        out.append(
            f"<tr><td>{number}</td><td><code>{esc(a.sql)}</code></td><td>{esc(lock)}</td>"
            f"<td>{esc(a.effect)}{why}</td></tr>"
        )
    out.append("</table>")
    strongest = step.strongest
    if strongest is not None and strongest.lock is not None:
        out.append(
            f"<p>Strongest lock: {esc(strongest.lock)} on <code>{esc(strongest.table or '')}"
            f"</code>, held to each tenant's commit; it blocks {esc(BLOCKS[strongest.lock])}.</p>"
        )
    if step.touched:
        out.append(
            f"<p>Largest tenants for what it rewrites or scans "
            f"(<code>{esc(', '.join(step.touched))}</code>):</p>"
        )
        out.append("<table><tr><th>tenant</th><th>database</th><th>size</th><th>rows</th></tr>")
        for tenant in step.tenants[:_TENANTS]:
            out.append(
                f"<tr><td><code>{esc(tenant.name)}</code></td><td>{esc(tenant.database)}</td>"
                f"<td>{esc(size_text(tenant.bytes))}</td><td>{tenant.rows:,}</td></tr>"
            )
        out.append("</table>")
        if len(step.tenants) > _TENANTS:
            out.append(
                f"<p>... and {len(step.tenants) - _TENANTS} more (--json lists them all)</p>"
            )
    out.append("</section>")
    return "\n".join(out)
