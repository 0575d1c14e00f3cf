"""The diff report as one self-contained HTML file: no script, no font, no image fetched from anywhere.

A reviewer attaches it to a change request and opens it offline; the chart is inline SVG (gains to the
right, losses to the left, per action), so it prints as it shows. Every text from a ruleset file or a
population is escaped: a ruleset author must not be able to put markup into a reviewer's page.
"""

from __future__ import annotations

from html import escape

from nba_service.review.diff import ChannelImpact, ItemChange, StructuralDiff
from nba_service.review.diff_report import DiffReport, percent, short

REPORT_CSS = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1d2430; margin: 2em auto;
       max-width: 70em; padding: 0 1em; }
h1 { font-size: 1.5em; } h2 { font-size: 1.25em; margin-top: 2em; border-bottom: 1px solid #ccd; }
h3 { font-size: 1.05em; margin-top: 1.5em; }
table { border-collapse: collapse; margin: .5em 0; } th, td { padding: .25em .6em; border-bottom: 1px solid #e3e6ea; }
th { text-align: left; background: #f3f5f8; } td { overflow-wrap: anywhere; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
.note-flag { border-left: 4px double #1d2329; padding-left: .5rem; }
.added { color: #1b6e35; } .removed { color: #a3261c; } .changed { color: #7a5400; }
.muted { color: #5b6472; } code { font-size: .92em; } .examples { font-size: .88em; color: #39424f; }
svg text { font: 12px system-ui, sans-serif; fill: #1d2430; }
@media print { h2 { break-after: avoid; } table, svg { break-inside: avoid; } }
"""
_BAR_HEIGHT = 18
_ROW = 24
_LABEL = 230
_NUMBER = 50  # room for the count beside the longest bar
_HALF = 240
_GAIN = "#2e8b57"
_LOSS = "#c0392b"


def render_html(report: DiffReport) -> str:
    old, new = report.structure.old, report.structure.new
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>Ruleset diff: {escape(short(old))} to {escape(short(new))}</title>",
        f"<style>{REPORT_CSS}</style></head><body>",
        f"<h1>Ruleset diff: {escape(short(old))} &rarr; {escape(short(new))}</h1>",
        '<p class="muted">',
        f"Old file: <code>{escape(report.old.source)}</code><br>New file: <code>{escape(report.new.source)}</code>",
        "</p>",
        *_structure(report.structure),
        "<h2>How decisions move</h2>",
        f"<p>{report.customers:,} customers from {escape(report.population)}, at "
        f"{escape(report.at.isoformat(timespec='seconds'))}, up to {report.limit} actions each; both versions "
        "through the same decision pipeline the service runs.</p>",
    ]
    for impact in report.channels:
        parts += _channel(impact, report)
    parts.append("</body></html>")
    return "\n".join(parts)


def _structure(structure: StructuralDiff) -> list[str]:
    parts = ["<h2>What changed in the file</h2>"]
    if structure.identical:
        return [*parts, "<p>The two files are identical (same content hash): nothing changed.</p>"]
    if structure.metadata:
        parts.append("<table><tr><th>Part</th><th>Old</th><th>New</th></tr>")
        parts += [
            f"<tr><td>{escape(p.part)}</td><td>{_text(p.old)}</td><td>{_text(p.new)}</td></tr>"
            for p in structure.metadata
        ]
        parts.append("</table>")
    for name, items in structure.sections:
        parts.append(f"<h3>{escape(name.capitalize())}</h3>")
        if not items:
            parts.append('<p class="muted">No change.</p>')
            continue
        parts.append("<ul>")
        parts += [_item(item) for item in items]
        parts.append("</ul>")
    return parts


def _item(item: ItemChange) -> str:
    head = f'<li><span class="{item.status}">{escape(item.status)}</span> <code>{escape(item.id)}</code>'
    notes = "".join(f'<p class="note-flag"><strong>{escape(note)}</strong></p>' for note in item.notes)
    if item.status == "added":
        return f"{head}: {_text(item.new_text)}{notes}</li>"
    if item.status == "removed":
        return f"{head}; it read: {_text(item.old_text)}{notes}</li>"
    rows = "".join(
        f"<tr><td>{escape(p.part)}</td><td>{_text(p.old)}</td><td>{_text(p.new)}</td></tr>" for p in item.parts
    )
    return f"{head}<table><tr><th>Part</th><th>Old</th><th>New</th></tr>{rows}</table>{notes}</li>"


def _text(value: str | None) -> str:
    return '<span class="muted">(none)</span>' if value is None else escape(value)


def _channel(impact: ChannelImpact, report: DiffReport) -> list[str]:
    changed = impact.changed.count
    parts = [
        f"<h3>{escape(impact.channel.value)}</h3>",
        f"<p>{changed:,} of {impact.customers:,} customers get a different answer "
        f"({percent(changed, impact.customers)}). From some action to none: {impact.to_none.count:,}"
        f"{_ids(impact.to_none.customer_ids)}. From no action to some: {impact.from_none.count:,}"
        f"{_ids(impact.from_none.customer_ids)}.</p>",
    ]
    if impact.fallbacks_old or impact.fallbacks_new:
        parts.append(
            f"<p>The engine failed and the reference evaluator answered instead: {impact.fallbacks_old} times "
            f"(old), {impact.fallbacks_new} times (new).</p>"
        )
    moved = [(action_id, m) for action_id, m in impact.ranked_actions() if m.moved]
    if not moved:
        return [*parts, "<p>No customer gains, loses or moves any action on this channel.</p>"]
    parts.append(_chart(impact))
    parts.append(
        "<table><tr><th>Action</th><th>Before</th><th>After</th><th>Gained</th><th>Lost</th>"
        "<th>Moved up</th><th>Moved down</th><th>Example customers</th></tr>"
    )
    for action_id, m in moved:
        examples = "; ".join(
            f"{label}: {', '.join(ex.customer_ids)}"
            for label, ex in (("gained", m.gained), ("lost", m.lost), ("up", m.moved_up), ("down", m.moved_down))
            if ex.count
        )
        parts.append(
            f"<tr><td><code>{escape(action_id)}</code><br>{escape(report.title(action_id))}</td>"
            f'<td class="n">{m.before:,}</td><td class="n">{m.after:,}</td><td class="n">{m.gained.count:,}</td>'
            f'<td class="n">{m.lost.count:,}</td><td class="n">{m.moved_up.count:,}</td>'
            f'<td class="n">{m.moved_down.count:,}</td><td class="examples">{escape(examples)}</td></tr>'
        )
    parts.append("</table>")
    return parts


def _ids(ids: list[str]) -> str:
    return f" (e.g. {escape(', '.join(ids))})" if ids else ""


def _chart(impact: ChannelImpact) -> str:
    """Per action, customers who lose it (left, red) and who gain it (right, green), on one scale."""
    rows = [(a, m) for a, m in impact.ranked_actions() if m.gained.count or m.lost.count]
    if not rows:
        return '<p class="muted">No action is gained or lost; only ranks move.</p>'
    top = max(max(m.gained.count, m.lost.count) for _, m in rows)
    width = _LABEL + 2 * (_NUMBER + _HALF)
    height = _ROW * len(rows) + 30
    centre = _LABEL + _NUMBER + _HALF
    label = f"Customers gaining and losing each action on {impact.channel.value}"
    shapes = [
        f'<svg xmlns="http://www.w3.org/2000/svg" role="img" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" aria-label="{escape(label)}"><title>{escape(label)}</title>',
        f'<text x="{centre - 8}" y="14" text-anchor="end" fill="{_LOSS}">lose it</text>',
        f'<text x="{centre + 8}" y="14">gain it</text>',
        f'<line x1="{centre}" y1="20" x2="{centre}" y2="{height}" stroke="#8a93a0"/>',
    ]
    for index, (action_id, m) in enumerate(rows):
        y = 24 + index * _ROW
        lost = round(_HALF * m.lost.count / top)
        gained = round(_HALF * m.gained.count / top)
        name = escape(action_id)
        shapes.append(f'<text x="{_LABEL - 8}" y="{y + 13}" text-anchor="end">{name}</text>')
        if lost:
            shapes.append(
                f'<rect x="{centre - lost}" y="{y}" width="{lost}" height="{_BAR_HEIGHT}" fill="{_LOSS}">'
                f"<title>{name}: {m.lost.count:,} customers lose it</title></rect>"
            )
        if gained:
            shapes.append(
                f'<rect x="{centre}" y="{y}" width="{gained}" height="{_BAR_HEIGHT}" fill="{_GAIN}">'
                f"<title>{name}: {m.gained.count:,} customers gain it</title></rect>"
            )
        if m.lost.count:
            shapes.append(f'<text x="{centre - lost - 4}" y="{y + 13}" text-anchor="end">{m.lost.count:,}</text>')
        if m.gained.count:
            shapes.append(f'<text x="{centre + gained + 4}" y="{y + 13}">{m.gained.count:,}</text>')
    shapes.append("</svg>")
    return "".join(shapes)
