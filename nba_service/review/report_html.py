"""`nba report --format html`: the report as one self-contained page an executive reads in a minute and prints.

The top of the page answers the funding question (what the actions added, which clearly work, which cannot be
told apart from nothing, which cannot be measured at all), the three charts show the evidence, and the tables after
them hold every number the text form has. The charts are inline SVG drawn here, with no script, font or image
fetched, so the file opens offline, prints as it shows and can be archived with a board pack. Every text that
comes from a ruleset or a store (action ids, rule ids, channels, journey stages, descriptions) is escaped: whoever
writes a ruleset must not be able to put markup into an executive's page.

Uplift is never pooled across actions here: actions without a holdout add shown customers with no held-out
counterpart, so a pooled difference would compare different mixes of actions rather than show what showing did.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from html import escape

from nba_service.domain.measurement import CycleTimes
from nba_service.review.diff_html import REPORT_CSS
from nba_service.review.report import CONFIDENCE, DIMENSIONS, Line, Report
from nba_service.review.report_text import _TITLES, duration, interval, money, points, rate

_CSS = """
header .period { font-size: 1.05em; }
.figures { display: flex; flex-wrap: wrap; gap: .75em; margin: 1em 0; padding: 0; list-style: none; }
.figures li { border: 1px solid #ccd3dc; border-radius: 4px; padding: .5em .9em; min-width: 12em; }
.figures .big { display: block; font-size: 1.6em; font-weight: 600; font-variant-numeric: tabular-nums; }
.verdicts { padding-left: 1.2em; } .verdicts li { margin: .3em 0; }
.gain { color: #1b6e35; } .loss { color: #a3261c; } .unclear { color: #4d5561; }
figure { margin: 1em 0; } figcaption { color: #4d5561; font-size: .92em; margin-top: .3em; }
svg { max-width: 100%; height: auto; }
svg .axis { fill: #4d5561; } svg .small { font-size: 11px; }
th[scope="row"] { background: none; font-weight: normal; }
td, th { overflow-wrap: break-word; } td.n { white-space: nowrap; }
table.lines { font-size: .86em; } table.lines td.why { min-width: 8em; }
tfoot th, tfoot td { border-top: 2px solid #ccd3dc; font-weight: 600; }
caption { text-align: left; font-weight: 600; padding: .3em 0; }
.legend { font-size: .92em; color: #4d5561; }
@page { size: A4; margin: 14mm 12mm; }
@media print {
  body { font-size: 9.5pt; max-width: none; margin: 0; padding: 0; }
  * { print-color-adjust: exact; -webkit-print-color-adjust: exact; }
  section.page { break-before: page; }
  figure, svg, .figures, .verdicts, tr { break-inside: avoid; }
  thead { display: table-header-group; }
  h2, h3, caption { break-after: avoid; }
  table { width: 100%; font-size: 8.5pt; } th, td { padding: .15em .35em; }
  table.lines { font-size: 7pt; } table.lines th, table.lines td { padding: .1em .2em; }
  table.lines td.iv { white-space: normal; } table.lines td.why { min-width: 0; }
  table.lines th[scope="row"], table.lines td:not(.n) { overflow-wrap: anywhere; }
}
"""
_GAIN = "#1b6e35"
_LOSS = "#a3261c"
_UNCLEAR = "#5b6472"
_TRACK = "#e3e6ea"
_ACCEPTED = "#3a6ea5"
_CONVERTED = "#1b6e35"
_P90 = "#9db8d9"
_MEDIAN = "#2f5d8a"
_WIDTH = 880
_LABEL = 230
_ROW = 26
_NAME = 32  # characters of a label an SVG row can hold; the full text is in the row's <title>
_TOP_ACTIONS = 8
_LISTED = 10


@dataclass(frozen=True, slots=True)
class Verdicts:
    """The by-action lines sorted by what their uplift lets one say."""

    gain: list[Line]
    loss: list[Line]
    unclear: list[Line]
    no_holdout: list[Line]
    not_yet: list[Line]


def verdicts(report: Report) -> Verdicts:
    """Gain or loss when the whole interval is on one side of zero; an action shown without held-out customers is
    unmeasurable when it has no holdout, and not yet measurable when its held-out customers' windows are open.
    An action with no holdout is named only when something counts as its conversion (declared, or recorded by an
    agent): a service notice with nothing to convert is no gap in the measurement."""
    holdouts = {a.action_id: a.holdout for a in report.actions}
    converting = {a.action_id for a in report.actions if a.conversion}
    found = Verdicts([], [], [], [], [])
    for line in report.by_action:
        up = line.uplift
        if up.low is not None and up.high is not None:
            group = found.gain if up.low > 0 else found.loss if up.high < 0 else found.unclear
        elif not up.measured:
            continue  # nothing declared counts as its conversion: no gap in the measurement either
        elif holdouts.get(line.action_id, 0.0) > 0:
            group = found.not_yet
        elif line.action_id in converting or up.shown_converted:
            group = found.no_holdout
        else:
            continue
        group.append(line)
    found.gain.sort(key=lambda line: -(line.uplift.difference or 0.0))
    found.loss.sort(key=lambda line: line.uplift.difference or 0.0)
    return found


def render_html(report: Report) -> str:
    title = f"What each action adds: {report.ruleset} {report.ruleset_version}"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escape(title)}</title>",
        f"<style>{REPORT_CSS}{_CSS}</style></head><body>",
        *_headline(report, title),
        "<main>",
        *_charts(report),
        *_action_tables(report),
        *_breakdowns(report),
        *_referrals_and_cycles(report),
        *_how_to_read(),
        "</main>",
        f'<footer><p class="muted">Generated {escape(_moment(report.generated_at))} by <code>nba report</code>; '
        f"{report.exposures:,} exposures read.</p></footer>",
        "</body></html>",
    ]
    return "\n".join(parts)


def _moment(value: datetime) -> str:
    offset = value.utcoffset()
    if offset is None:
        return value.strftime("%Y-%m-%d %H:%M")
    if not offset:
        return value.strftime("%Y-%m-%d %H:%M UTC")
    return value.isoformat(timespec="minutes")


def _names(lines: Sequence[Line], with_uplift: bool = False) -> str:
    shown = []
    for line in lines[:_LISTED]:
        uplift = f" ({escape(points(line.uplift.difference))})" if with_uplift else ""
        shown.append(f"<code>{escape(line.action_id)}</code>{uplift}")
    more = len(lines) - _LISTED
    return ", ".join(shown) + (f" and {more} more (see the table)" if more > 0 else "")


def _headline(report: Report, title: str) -> list[str]:
    found = verdicts(report)
    totals = report.totals
    offers = totals.offers
    valued = [line for line in report.by_action if line.worth is not None]
    if valued:
        worth = (
            f'<span class="big">{escape(money(report.incremental_worth))}</span> incremental worth: the sum of '
            f"{len(valued)} action{'s' if len(valued) != 1 else ''}' estimates (uplift &times; customers shown "
            "&times; value of one conversion)"
        )
    else:
        worth = (
            '<span class="big">-</span> incremental worth: no action with a value has a measured uplift, so no worth '
            "is estimated"
        )
    accepted = f" ({offers.accepted / offers.delivered:.0%})" if offers.delivered else ""
    measured = totals.uplift.shown + totals.uplift.held_out
    items = [
        (found.gain, "gain", f"Clear gain (the whole {CONFIDENCE:.0%} interval is above zero)", True),
        (found.loss, "loss", "Clear loss (the whole interval is below zero)", True),
        (found.unclear, "unclear", "Unclear (the interval includes zero: not told apart from no effect)", True),
        (found.no_holdout, "unclear", "Cannot be measured: no customers are held out of them", False),
        (found.not_yet, "unclear", "Not measurable yet: no held-out customer's conversion window has closed", False),
    ]
    verdict_items = [
        f'<li><strong class="{kind}">{escape(text)}:</strong> {_names(lines, with_uplift)}.</li>'
        for lines, kind, text, with_uplift in items
        if lines
    ]
    if not verdict_items:
        verdict_items = ["<li>No action was shown or held out in this period.</li>"]
    return [
        "<header>",
        f"<h1>{escape(title)}</h1>",
        f'<p class="period">Decisions from <strong>{escape(_moment(report.since))}</strong> until '
        f"<strong>{escape(_moment(report.until))}</strong>, ruleset <code>{escape(report.ruleset)}</code> "
        f"(definitions of version {escape(report.ruleset_version)}).</p>",
        '<ul class="figures" aria-label="Key figures">',
        f"<li>{worth}</li>",
        f'<li><span class="big">{offers.delivered:,}</span> offers delivered, {offers.accepted:,} accepted'
        f"{accepted}</li>",
        f'<li><span class="big">{measured:,}</span> customer-action pairs measured (conversion window closed); '
        f"{totals.open_units:,} still open</li>",
        "</ul>",
        '<h2 id="verdict">What the uplift shows</h2>',
        f'<ul class="verdicts">{"".join(verdict_items)}</ul>',
        "</header>",
    ]


def _charts(report: Report) -> list[str]:
    return [
        '<section aria-labelledby="uplift-chart">',
        '<h2 id="uplift-chart">Uplift per action</h2>',
        _forest(report.by_action),
        "</section>",
        '<section class="page" aria-labelledby="funnel-chart">',
        '<h2 id="funnel-chart">From offer to conversion</h2>',
        _funnel(report),
        "</section>",
        '<section aria-labelledby="cycle-chart">',
        '<h2 id="cycle-chart">From trigger to offer</h2>',
        _cycle_chart(report.cycles),
        "</section>",
    ]


def _svg(name: str, title: str, desc: str, height: int) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" role="img" aria-labelledby="{name}-title {name}-desc" '
        f'width="{_WIDTH}" height="{height}" viewBox="0 0 {_WIDTH} {height}">'
        f'<title id="{name}-title">{escape(title)}</title><desc id="{name}-desc">{escape(desc)}</desc>'
    )


def _short(text: str) -> str:
    return escape(text if len(text) <= _NAME else text[: _NAME - 1] + "\u2026")


def _step(span: float) -> float:
    """A round tick step (1, 2 or 5 times a power of ten) giving about five ticks over `span`."""
    raw = span / 5
    power = 10.0 ** math.floor(math.log10(raw))
    return next(m * power for m in (1.0, 2.0, 5.0, 10.0) if m * power >= raw)


def _verdict(line: Line) -> tuple[str, str]:
    up = line.uplift
    assert up.low is not None
    assert up.high is not None
    if up.low > 0:
        return "gain", _GAIN
    if up.high < 0:
        return "loss", _LOSS
    return "unclear", _UNCLEAR


def _forest(lines: Iterable[Line]) -> str:
    """A point and a bar per action: the uplift and its interval in percentage points, about a zero line."""
    rows = [line for line in lines if line.uplift.low is not None and line.uplift.high is not None]
    if not rows:
        return (
            "<p>No action has both shown and held-out customers whose conversion window has closed, so no uplift "
            "can be drawn.</p>"
        )
    rows.sort(key=lambda line: -(line.uplift.difference or 0.0))
    lows = [100 * (line.uplift.low or 0.0) for line in rows]
    highs = [100 * (line.uplift.high or 0.0) for line in rows]
    step = _step(max(*highs, 0.0) - min(*lows, 0.0) or 1.0)
    left = math.floor(min(*lows, 0.0) / step) * step
    right = max(math.ceil(max(*highs, 0.0) / step) * step, left + step)
    plot = _WIDTH - _LABEL - 230
    top, height = 24, 24 + _ROW * len(rows) + 30

    def x(pp: float) -> float:
        return _LABEL + plot * (pp - left) / (right - left)

    gains = sum(1 for line in rows if _verdict(line)[0] == "gain")
    shapes = [
        _svg(
            "uplift",
            "Uplift per action with its 95% interval, in percentage points",
            f"{len(rows)} actions with held-out customers; {gains} with the whole interval above zero. A point is the "
            "conversion rate of customers shown the action minus that of customers held out; the bar is the 95% "
            "interval; the vertical line is no effect.",
            height,
        ),
        f'<text class="axis" x="{_LABEL + plot + 12}" y="16">uplift [95% interval]</text>',
    ]
    for index in range(round((right - left) / step) + 1):
        tick = round(left + index * step, 9)
        name = f"{tick:+g}" if tick else "0"
        shapes.append(
            f'<line x1="{x(tick):.1f}" y1="{top - 4}" x2="{x(tick):.1f}" y2="{height - 26}" stroke="{_TRACK}"/>'
            f'<text class="axis small" x="{x(tick):.1f}" y="{height - 10}" text-anchor="middle">{name}</text>'
        )
    shapes.append(
        f'<line class="zero" x1="{x(0):.1f}" y1="{top - 8}" x2="{x(0):.1f}" y2="{height - 26}" stroke="#1d2430" '
        'stroke-width="1.5"/>'
        f'<text class="axis small" x="{x(right):.1f}" y="{top - 10}" text-anchor="end">percentage points</text>'
    )
    for index, line in enumerate(rows):
        up = line.uplift
        assert up.low is not None
        assert up.high is not None
        kind, colour = _verdict(line)
        y = top + index * _ROW + _ROW / 2
        label = (
            f"{line.action_id}: uplift {points(up.difference)}, 95% interval {interval(line)} ({kind}); "
            f"{up.shown:,} shown at {rate(up.shown_rate)}, {up.held_out:,} held out at {rate(up.held_out_rate)}"
        )
        shapes.append(
            f'<g class="row {kind}"><title>{escape(label)}</title>'
            f'<text x="{_LABEL - 8}" y="{y + 4:.1f}" text-anchor="end">{_short(line.action_id)}</text>'
            f'<line class="interval" x1="{x(100 * up.low):.1f}" y1="{y:.1f}" x2="{x(100 * up.high):.1f}" '
            f'y2="{y:.1f}" stroke="{colour}" stroke-width="3" stroke-linecap="round"/>'
            f'<circle class="estimate" cx="{x(100 * (up.difference or 0.0)):.1f}" cy="{y:.1f}" r="5" '
            f'fill="{colour}"/>'
            f'<text x="{_LABEL + plot + 12}" y="{y + 4:.1f}" fill="{colour}">{escape(points(up.difference))} '
            f"{escape(interval(line))} {kind}</text></g>"
        )
    shapes.append("</svg>")
    return (
        f"<figure>{''.join(shapes)}<figcaption>Each point is what showing the action changed: the conversion rate "
        "of customers shown it minus that of customers held out of it, in percentage points; the bar is the 95% "
        "interval. Green: the whole bar is above zero; red: below zero; grey: it crosses zero. Actions without "
        "held-out customers are not drawn (see above).</figcaption></figure>"
    )


def _funnel(report: Report) -> str:
    """All offers as three bars on one scale, then the busiest actions as shares of their own offers."""
    offers = report.totals.offers
    if not offers.delivered:
        return "<p>No offer was delivered in this period.</p>"
    busiest = sorted(
        (line for line in report.by_action if line.offers.delivered), key=lambda line: -line.offers.delivered
    )[:_TOP_ACTIONS]
    plot = _WIDTH - _LABEL - 330
    height = 20 + 3 * _ROW + 40 + len(busiest) * (_ROW + 6) + 10
    shapes = [
        _svg(
            "funnel",
            "Offers delivered, accepted and converted",
            f"All actions: {offers.delivered:,} offers delivered, {offers.accepted:,} accepted, {offers.converted:,} "
            f"recorded as converted. Then the {len(busiest)} actions with most offers, as shares of their own "
            "offers.",
            height,
        ),
        '<text class="axis" x="0" y="14">All actions</text>',
    ]
    stages = [("delivered", offers.delivered, _TRACK), ("accepted", offers.accepted, _ACCEPTED)]
    stages.append(("converted", offers.converted, _CONVERTED))
    for index, (name, count, colour) in enumerate(stages):
        y = 22 + index * _ROW
        width = plot * count / offers.delivered
        share = "" if name == "delivered" else f" ({count / offers.delivered:.1%} of delivered)"
        shapes.append(
            f'<text x="{_LABEL - 8}" y="{y + 14}" text-anchor="end">Offers {name}</text>'
            f'<rect class="stage" x="{_LABEL}" y="{y}" width="{width:.1f}" height="18" fill="{colour}" '
            f'stroke="#8a93a0" stroke-width="0.5"><title>{count:,} offers {name}{share}</title></rect>'
            f'<text x="{_LABEL + width + 6:.1f}" y="{y + 14}">{count:,}{share}</text>'
        )
    top = 22 + 3 * _ROW + 26
    shapes.append(
        f'<text class="axis" x="0" y="{top - 8}">The {len(busiest)} actions with most offers: share of their own '
        "offers accepted (upper bar) and converted (lower bar)</text>"
    )
    for index, line in enumerate(busiest):
        o = line.offers
        y = top + index * (_ROW + 6)
        accepted = plot * o.accepted / o.delivered
        converted = plot * o.converted / o.delivered
        summary = (
            f"{o.delivered:,} offers: {o.accepted / o.delivered:.0%} accepted, {o.converted / o.delivered:.0%} "
            "converted"
        )
        shapes.append(
            f'<g class="action"><title>{escape(line.action_id)}: {summary}</title>'
            f'<text x="{_LABEL - 8}" y="{y + 16}" text-anchor="end">{_short(line.action_id)}</text>'
            f'<rect x="{_LABEL}" y="{y}" width="{plot}" height="24" fill="{_TRACK}"/>'
            f'<rect class="accepted" x="{_LABEL}" y="{y + 2}" width="{accepted:.1f}" height="9" fill="{_ACCEPTED}"/>'
            f'<rect class="converted" x="{_LABEL}" y="{y + 13}" width="{converted:.1f}" height="9" '
            f'fill="{_CONVERTED}"/><text x="{_LABEL + plot + 6}" y="{y + 16}">{summary}</text></g>'
        )
    shapes.append("</svg>")
    return (
        f"<figure>{''.join(shapes)}<figcaption>Offers, not customers: every delivered offer counts, and "
        "&ldquo;accepted&rdquo; and &ldquo;converted&rdquo; are what agents recorded on that offer. Conversions "
        "that came as events (a product opened) are counted per customer in the uplift above and the tables "
        "below.</figcaption></figure>"
    )


def _cycle_chart(cycles: Sequence[CycleTimes]) -> str:
    """Per trigger type, the median and 90th percentile time to the first offer on one time scale."""
    rows = [c for c in cycles if c.triggers]
    if not rows:
        return "<p>No trigger event happened in this period.</p>"
    longest = max((c.p90_s or 0.0) for c in rows) or 1.0
    unit, name = (
        (60.0, "minutes")
        if longest < 3 * 3600
        else (3600.0, "hours")
        if longest < 3 * 86400
        else (
            86400.0,
            "days",
        )
    )
    step = _step(longest / unit)
    right = math.ceil(longest / unit / step) * step
    plot = _WIDTH - _LABEL - 350
    top = 24
    height = top + _ROW * len(rows) + 30
    drawn = sum(1 for c in rows if c.median_s is not None)
    shapes = [
        _svg(
            "cycles",
            "Time from a trigger event to the first delivered offer, per trigger type",
            f"{len(rows)} trigger types; {drawn} became offers. The dark bar is the median time, the light bar the "
            "90th percentile; the text gives how many triggers expired without an offer.",
            height,
        ),
        f'<text class="axis" x="{_LABEL + plot + 12}" y="16">median, p90; expired unoffered</text>',
    ]
    for index in range(round(right / step) + 1):
        tick = round(index * step, 9)
        px = _LABEL + plot * tick / right
        shapes.append(
            f'<line x1="{px:.1f}" y1="{top - 4}" x2="{px:.1f}" y2="{height - 26}" stroke="{_TRACK}"/>'
            f'<text class="axis small" x="{px:.1f}" y="{height - 10}" text-anchor="middle">{tick:g}</text>'
        )
    shapes.append(f'<text class="axis small" x="{_LABEL + plot:.1f}" y="{top - 10}" text-anchor="end">{name}</text>')
    for index, c in enumerate(rows):
        y = top + index * _ROW + 3
        expired = f"{c.expired:,} of {c.triggers:,} expired unoffered"
        if c.median_s is None or c.p90_s is None:
            text = f"never offered; {expired}"
            bars = ""
        else:
            text = f"{duration(c.median_s)}, {duration(c.p90_s)}; {expired}"
            bars = (
                f'<rect class="p90" x="{_LABEL}" y="{y}" width="{plot * c.p90_s / unit / right:.1f}" height="18" '
                f'fill="{_P90}"/><rect class="median" x="{_LABEL}" y="{y + 4}" '
                f'width="{plot * c.median_s / unit / right:.1f}" height="10" fill="{_MEDIAN}"/>'
            )
        label = (
            f"{c.event_type}: {c.triggers:,} triggers, {c.offered:,} offered, median {duration(c.median_s)}, "
            f"p90 {duration(c.p90_s)}, {c.expired:,} expired unoffered, {c.open:,} still open"
        )
        shapes.append(
            f'<g class="trigger"><title>{escape(label)}</title>'
            f'<text x="{_LABEL - 8}" y="{y + 14}" text-anchor="end">{_short(c.event_type)}</text>{bars}'
            f'<text x="{_LABEL + plot + 12}" y="{y + 14}">{escape(text)}</text></g>'
        )
    shapes.append("</svg>")
    return (
        f"<figure>{''.join(shapes)}<figcaption>How long a trigger (a large deposit, a card declined abroad) took to "
        "become a delivered offer of an action it triggers. Dark: half were offered within this time; light: nine "
        "in ten. A trigger that expired unoffered is a moment missed.</figcaption></figure>"
    )


_LINE_HEAD = "".join(
    f'<th scope="col">{h}</th>'
    for h in (
        "Offers delivered",
        "Accepted",
        "Declined",
        "Not now",
        "Converted (recorded)",
        "Customers shown",
        "Their conversion",
        "Customers held out",
        "Their conversion",
        "Uplift",
        "95% interval",
    )
)


def _cells(line: Line) -> str:
    o, up = line.offers, line.uplift
    numbers = (o.delivered, o.accepted, o.declined, o.not_now, o.converted, up.shown)
    return (
        "".join(f'<td class="n">{n:,}</td>' for n in numbers)
        + f'<td class="n">{rate(up.shown_rate)}</td><td class="n">{up.held_out:,}</td>'
        f'<td class="n">{rate(up.held_out_rate)}</td><td class="n">{escape(points(up.difference))}</td>'
        f'<td class="{"n iv" if up.low is not None else "why"}">{escape(interval(line))}</td>'
    )


def _table(caption: str, heads: Sequence[str], lines: Iterable[Line]) -> str:
    """One row per line; with two heads the first column is the action and the second the line's label."""
    head = "".join(f'<th scope="col">{escape(h)}</th>' for h in heads)
    rows = []
    for line in lines:
        names = [line.action_id, line.label] if len(heads) == 2 else [line.label]
        first = f'<th scope="row"><code>{escape(names[0])}</code></th>'
        rest = "".join(f"<td>{escape(n)}</td>" for n in names[1:])
        rows.append(f"<tr>{first}{rest}{_cells(line)}</tr>")
    if not rows:
        return f'<p class="muted">{escape(caption)}: nothing in this period.</p>'
    return (
        f'<table class="lines"><caption>{escape(caption)}</caption><thead><tr>{head}{_LINE_HEAD}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def _action_tables(report: Report) -> list[str]:
    parts = [
        '<section class="page" aria-labelledby="by-action">',
        '<h2 id="by-action">By action</h2>',
        '<p class="legend">Offers count every delivered offer and what agents recorded on it. &ldquo;Shown&rdquo; '
        "and &ldquo;held out&rdquo; count customers whose conversion window has closed, once per action; their "
        "conversion is by the event or by an agent. The uplift is shown minus held out, in percentage points.</p>",
    ]
    table = _table("Offers and uplift per action", ["Action"], report.by_action)
    totals = report.totals
    foot = (
        '<tfoot><tr><th scope="row">All actions</th>'
        + "".join(
            f'<td class="n">{n:,}</td>'
            for n in (
                totals.offers.delivered,
                totals.offers.accepted,
                totals.offers.declined,
                totals.offers.not_now,
                totals.offers.converted,
                totals.uplift.shown,
            )
        )
        + f'<td class="n">{rate(totals.uplift.shown_rate)}</td><td class="n">{totals.uplift.held_out:,}</td>'
        f'<td class="n">{rate(totals.uplift.held_out_rate)}</td><td colspan="2">not pooled: see each action</td>'
        "</tr></tfoot>"
    )
    parts.append(table.replace("</tbody></table>", f"</tbody>{foot}</table>") if report.by_action else table)
    sources = totals.sources
    parts.append(
        f"<p>Conversions by source: {sources.event:,} by the event only, {sources.agent:,} recorded by an agent "
        f"only, {sources.both:,} both. {totals.open_units:,} customer-action pairs are still within their "
        "conversion window and not in the rates.</p>"
    )
    valued = [line for line in report.by_action if line.worth is not None]
    parts.append('<h3 id="worth">What it is worth</h3>')
    if valued:
        rows = []
        for line in valued:
            w = line.worth
            assert w is not None
            rows.append(
                f'<tr><th scope="row"><code>{escape(line.action_id)}</code></th><td class="n">{money(w.value)}</td>'
                f'<td class="n">{line.uplift.shown:,}</td><td class="n">{escape(points(line.uplift.difference))}</td>'
                f'<td class="n">{money(w.incremental)}</td><td class="n">{money(w.low)} to {money(w.high)}</td></tr>'
            )
        parts.append(
            "<table><caption>Uplift &times; customers shown &times; value of one conversion</caption><thead><tr>"
            '<th scope="col">Action</th><th scope="col">Value of one conversion</th><th scope="col">Shown</th>'
            '<th scope="col">Uplift</th><th scope="col">Incremental worth</th><th scope="col">95% interval</th>'
            f"</tr></thead><tbody>{''.join(rows)}</tbody><tfoot><tr>"
            '<th scope="row">Sum of the estimates</th><td></td><td></td><td></td>'
            f'<td class="n">{money(report.incremental_worth)}</td><td>intervals do not add up</td></tr></tfoot>'
            "</table>"
        )
    else:
        parts.append("<p>No action with a value of one conversion has a measured uplift.</p>")
    parts.append('<h3 id="actions">The actions and what counts as their conversion</h3>')
    rows = [
        f'<tr><th scope="row"><code>{escape(a.action_id)}</code></th><td>{escape(a.category)}</td>'
        f"<td>{escape(a.description)}</td><td>{escape(a.conversion or 'an agent records it converted')}</td>"
        f'<td class="n">{a.holdout:.0%}</td><td class="n">{"-" if a.value is None else money(a.value)}</td></tr>'
        for a in report.actions
    ]
    parts.append(
        '<table><thead><tr><th scope="col">Action</th><th scope="col">Category</th><th scope="col">What it is</th>'
        '<th scope="col">Conversion</th><th scope="col">Held out</th><th scope="col">Value</th></tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>"
    )
    parts.append("</section>")
    return parts


def _breakdowns(report: Report) -> list[str]:
    parts = ['<section class="page" aria-labelledby="breakdowns">', '<h2 id="breakdowns">Breakdowns</h2>']
    for name in DIMENSIONS:
        title = _TITLES[name]
        parts.append(f"<h3>{escape(title)}</h3>")
        column = title.removeprefix("By ").capitalize()
        parts.append(_table(title, ["Action", column], report.breakdowns.get(name, ())))
    parts.append("</section>")
    return parts


def _referrals_and_cycles(report: Report) -> list[str]:
    listed = [c for c in report.cycles if c.triggers]
    quiet = [c.event_type for c in report.cycles if not c.triggers]
    rows = [
        f'<tr><th scope="row"><code>{escape(c.event_type)}</code></th><td class="n">{c.triggers:,}</td>'
        f'<td class="n">{c.offered:,}</td><td class="n">{duration(c.median_s)}</td>'
        f'<td class="n">{duration(c.p90_s)}</td><td class="n">{c.expired:,}</td><td class="n">{c.open:,}</td></tr>'
        for c in listed
    ]
    parts = [
        '<section class="page" aria-labelledby="referrals">',
        '<h2 id="referrals">Referral asks</h2>',
        '<h3 id="referrals-stage">By journey stage</h3>',
        _table("Referral asks by journey stage", ["Journey stage"], report.referral_by_stage),
        '<h3 id="referrals-moment">By moment (the events the rule reads)</h3>',
        _table("Referral asks by moment", ["Moment"], report.referral_by_trigger),
        '<h2 id="cycle-times">Trigger to first delivered offer</h2>',
    ]
    if rows:
        parts.append(
            '<table><thead><tr><th scope="col">Trigger event</th><th scope="col">Triggers</th>'
            '<th scope="col">Offered</th><th scope="col">Median</th><th scope="col">p90</th>'
            '<th scope="col">Expired unoffered</th><th scope="col">Still open</th></tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table>"
        )
    else:
        parts.append("<p>No trigger event happened in this period.</p>")
    if quiet:
        parts.append(f'<p class="muted">No triggers in the period: {escape(", ".join(quiet))}.</p>')
    parts.append("</section>")
    return parts


def _how_to_read() -> list[str]:
    return [
        '<section aria-labelledby="how-to-read">',
        '<h2 id="how-to-read">How to read this</h2>',
        "<ul>",
        "<li>The unit is a customer and an action, at the customer's first exposure to the action in the period "
        "(shown it, or held out of it). A customer offered an action five times counts once in the uplift; "
        "the offer counts count every delivered offer.</li>",
        "<li>Only closed conversion windows count: a customer whose window (the action's, e.g. 30 days) has not "
        "ended by the end of the period is left out of the rates and counted as still open, since counting them "
        "would pull both rates, and the uplift, toward zero.</li>",
        "<li>Held-out customers are chosen at random among those who would have been shown the action, so the "
        "difference between the groups is what showing the action did, up to chance; the 95% interval says how "
        "large chance can make it (Newcombe's interval for a difference of two proportions).</li>",
        "<li>A conversion is the action's conversion event within its window, or an agent recording "
        "&ldquo;converted&rdquo;. Agent-only conversions can only come from shown customers (nobody offers a "
        "held-out customer the action), so an action measured mostly by agents' records overstates its uplift.</li>",
        "<li>The worth of an action is its uplift times the customers shown times the value of one conversion; "
        "the total is the sum of those estimates, and their intervals do not add up to an interval of the sum.</li>",
        "</ul>",
        "</section>",
    ]
