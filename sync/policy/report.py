"""The residency map for people who review a policy: regions × tables × columns.

Compliance staff would rather look at a map than read YAML. ``build`` turns a policy (and,
when there is one, the live schema) into a ``Report``: for every table and column, what
happens at each destination — it crosses, crosses only for rows a filter lets through
(the filter in words), or stays home, and why (the rule's file:line, a never-leaves tag,
not allow-listed, no rule). ``html`` renders it as one self-contained page (no script, no
external resource: it can be attached to a ticket or archived with an audit), ``markdown``
as tables for a review thread. With ``changes`` (from ``review.diff`` against another
revision) both show what changed, high-risk changes first.
"""

from __future__ import annotations

import html as h
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sync.db.catalog import Schema
from sync.policy.model import Policy
from sync.policy.review import OTHER, Change, _shown, explain


@dataclass(frozen=True)
class Cell:
    state: str            # "crosses" | "filtered" | "home"
    why: str              # rule file:line, or why it stays home
    rows: str = ""        # the row filter in words (filtered)


@dataclass(frozen=True)
class Row:
    table: str
    column: str
    tags: tuple[str, ...]
    cells: tuple[Cell, ...]        # one per region, in Report.regions order


@dataclass(frozen=True)
class Report:
    policy_sha: str
    files: tuple[str, ...]
    made: datetime
    home: str | None
    regions: tuple[str, ...]
    rows: tuple[Row, ...]
    filters: dict[str, list[str]]  # table -> its rules' row filters in words
    changes: tuple[Change, ...] = ()
    against: str | None = None

    def label(self, region: str) -> str:
        return _shown(region) if region == OTHER or "(" in region else region


def _tables(policy: Policy, schema: Schema | None) -> list[str]:
    if schema is not None:
        return schema.topo_order()
    named = {k.split(".", 1)[0] for k in policy.classification}
    return sorted(set(policy.rules) | named)


def build(policy: Policy, schema: Schema | None, regions: list[str], *,
          home: str | None = None, changes: list[Change] | None = None,
          against: str | None = None) -> Report:
    rows = []
    filters: dict[str, list[str]] = {}
    for table in _tables(policy, schema):
        lines, filters[table] = explain(policy, schema, table, regions)
        for line in lines:
            cells = []
            for region in regions:
                rule = policy.rule_for(table, region)
                if region not in line.regions:
                    if rule is None and policy.rules.get(table):
                        why = f"no rule sends {table} to {_shown(region)}"
                    elif line.regions:        # it goes elsewhere, not here
                        why = "not on this region's allow-list"
                    else:
                        why = line.why
                    cells.append(Cell("home", why))
                elif rule is not None and rule.rows is not None:
                    cells.append(Cell("filtered", f"rule {rule.where}", rule.rows.describe()))
                else:
                    cells.append(Cell("crosses", f"rule {rule.where}" if rule else line.why))
            rows.append(Row(table, line.column, line.tags, tuple(cells)))
    ordered = sorted(changes or [], key=lambda c: not c.high_risk)
    return Report(policy.sha, policy.files, datetime.now(UTC).replace(microsecond=0), home,
                  tuple(regions), tuple(rows), filters, tuple(ordered), against)


SYMBOL = {"crosses": "✔ crosses", "filtered": "◐ filtered", "home": "✖ stays home"}

CSS = """
body{font:14px/1.4 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#1d2430}
h1{font-size:22px;margin:0 0 4px} h2{font-size:17px;margin:28px 0 8px}
.meta{color:#555;margin-bottom:16px} .meta code{background:#f1f3f5;padding:1px 4px}
table{border-collapse:collapse;margin-bottom:8px}
th,td{border:1px solid #d0d5dc;padding:4px 8px}
th{background:#f1f3f5;text-align:left;position:sticky;top:0}
td.table{font-weight:600;background:#fafbfc;vertical-align:top}
td.col{font-family:ui-monospace,monospace}
td.cell{text-align:center;white-space:nowrap;font-size:13px}
.crosses{background:#e3f4e6;color:#17622a} .filtered{background:#fff4d6;color:#7a5300}
.home{background:#fbe4e4;color:#8a1f1f}
.tag{display:inline-block;border-radius:8px;padding:0 6px;margin-left:4px;font-size:11px;
background:#e8eaf6;color:#303f9f} .tag.never{background:#8a1f1f;color:#fff}
.legend span{display:inline-block;padding:2px 8px;margin-right:8px;border-radius:4px}
.risk{color:#fff;background:#b00020;padding:0 6px;border-radius:4px;font-weight:600}
ul.changes li{margin:2px 0;font-family:ui-monospace,monospace}
"""


def html(report: Report, policy: Policy) -> str:
    """One self-contained page: the map, the row filters, and what changed."""
    e = h.escape
    head = "".join(f'<th data-region="{e(r)}">{e(report.label(r))}</th>'
                   for r in report.regions)
    body = []
    span = {t: sum(1 for r in report.rows if r.table == t) for t in report.filters}
    seen: set[str] = set()
    for row in report.rows:
        tags = "".join(
            f'<span class="tag{" never" if t in policy.never_leaves_region else ""}">{e(t)}'
            "</span>" for t in row.tags)
        cells = "".join(
            f'<td class="cell {c.state}" data-table="{e(row.table)}" '
            f'data-column="{e(row.column)}" data-region="{e(r)}" data-state="{c.state}" '
            f'title="{e(c.why + (": only rows where " + c.rows if c.rows else ""))}">'
            f"{SYMBOL[c.state]}</td>" for r, c in zip(report.regions, row.cells, strict=True))
        first = "" if row.table in seen else (
            f'<td class="table" rowspan="{span[row.table]}">{e(row.table)}</td>')
        seen.add(row.table)
        body.append(f'<tr data-table="{e(row.table)}">{first}'
                    f'<td class="col">{e(row.column)}{tags}</td>{cells}</tr>')
    filters = "".join(
        f"<li><b>{e(t)}</b>: " + ("; ".join(e(f) for f in fs) if fs else
                                  "no rule: region-local") + "</li>"
        for t, fs in report.filters.items())
    changes = ""
    if report.against is not None:
        items = "".join(
            f'<li class="change" data-risk="{"high" if c.high_risk else "normal"}">'
            + ('<span class="risk">HIGH RISK</span> ' if c.high_risk else "")
            + e(c.line().removeprefix("HIGH RISK ")) + "</li>" for c in report.changes)
        changes = (f'<h2 id="changes">What changed against {e(report.against)}</h2>'
                   + (f'<ul class="changes">{items}</ul>' if items else
                      "<p>No change in what crosses borders.</p>"))
    where = f" for region <b>{e(report.home)}</b>" if report.home else ""
    files = ", ".join(Path(f).name for f in report.files) or "—"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>regionsync residency map · policy {e(report.policy_sha)}</title>
<style>{CSS}</style></head>
<body>
<h1>Residency map{where}</h1>
<div class="meta">Policy <code id="policy-sha">{e(report.policy_sha)}</code> from
{e(files)} · made <time id="made">{report.made.isoformat()}</time></div>
<div class="legend"><span class="crosses">✔ crosses</span><span class="filtered">◐ crosses for
matching rows only</span><span class="home">✖ stays home</span> (hover a cell for the rule or
the reason)</div>
{changes}
<h2>What leaves the region, per destination</h2>
<p>Each region's own database enforces this for every destination (column grants, row
security, journal views): a cell that says it stays home cannot be read from there.</p>
<table id="map"><thead><tr><th>table</th><th>column</th>{head}</tr></thead>
<tbody>{"".join(body)}</tbody></table>
<h2>Row filters</h2><ul id="filters">{filters}</ul>
</body></html>
"""


def markdown(report: Report) -> str:
    """The same map as Markdown tables, for a review thread."""
    mark = {"crosses": "✔", "filtered": "◐", "home": "✖"}
    out = [f"# Residency map{f' for {report.home}' if report.home else ''}", "",
           f"Policy `{report.policy_sha}` "
           f"({', '.join(Path(f).name for f in report.files) or '—'}), made "
           f"{report.made.isoformat()}. ✔ crosses · ◐ matching rows only · ✖ stays home", ""]
    if report.against is not None:
        out += [f"## What changed against {report.against}", ""]
        out += [f"- {'**HIGH RISK** ' if c.high_risk else ''}"
                f"`{c.line().removeprefix('HIGH RISK ')}`" for c in report.changes] \
            or ["No change in what crosses borders."]
        out.append("")
    out += ["| table | column | " + " | ".join(report.label(r) for r in report.regions) + " |",
            "|---|---|" + "---|" * len(report.regions)]
    for row in report.rows:
        tags = f" ({', '.join(row.tags)})" if row.tags else ""
        out.append(f"| {row.table} | `{row.column}`{tags} | "
                   + " | ".join(mark[c.state] for c in row.cells) + " |")
    out += ["", "## Row filters", ""]
    out += [f"- **{t}**: " + ("; ".join(fs) if fs else "no rule: region-local")
            for t, fs in report.filters.items()]
    return "\n".join(out) + "\n"
