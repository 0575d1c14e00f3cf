"""The starved report for a person: plain text for a terminal, or one self-contained HTML file with a chart.

Blockers are named the way the ruleset file names them (a cap, constraint or suppression id with its
description, `consent:<channel>` or `consent:<purpose+purpose>:<channel>` with the consent field,
`do_not_contact` for the service's own listings), so a manager can go from a line of the report to the line of
the ruleset to change. Every text from a ruleset or a population is escaped in the HTML.
"""

from __future__ import annotations

from html import escape

from nba_service.domain.model import Direction, Ruleset
from nba_service.domain.policy import DO_NOT_CONTACT
from nba_service.domain.wording import duration_text
from nba_service.review.diff_html import REPORT_CSS
from nba_service.review.starved import Blocker, ChannelStarvation, StarvedReport

_REASONS = {
    "channel_fit": "the action has no script for this channel",
    "missing_trigger": "the action's trigger event is not live",
    "expired_trigger": "the action's trigger event is older than its lifetime",
    "held_out": "in the action's holdout (drawn at random, to measure what the action adds)",
    "duplicate_action": "the same action through another rule, which was held back too",
}
_BAR = 18
_ROW = 24
_LABEL = 260
_WIDTH = 420
_NUMBER = 60
_ANY = "#e59866"
_ALONE = "#c0392b"


def describe(blocker: Blocker, ruleset: Ruleset) -> str:
    """What the blocker is, in the ruleset's own words where it has some."""
    policies = ruleset.policies
    for cap in policies.frequency_caps:
        if cap.id == blocker.id:
            return cap.description or f"at most {cap.max} within {duration_text(cap.within)}"
    for suppression in policies.suppressions:
        if suppression.id == blocker.id:
            return suppression.description
    if blocker.id.startswith("consent:"):
        entries = [c for c in policies.consent if c.id == blocker.id]
        if entries:
            first = entries[0]
            if len(entries) == 1:
                fields = first.field
            else:  # one id, split by direction
                fields = " / ".join(f"{c.field} ({', '.join(sorted(d.value for d in c.directions))})" for c in entries)
            purposes = "" if first.purposes is None else f" {' or '.join(sorted(first.purposes))}"
            return f"{fields} is not true (no{purposes} consent for {first.channel.value})"
    if blocker.id == DO_NOT_CONTACT:
        return (
            "listed as do-not-contact on this channel (customer request, regulator list, bereavement or "
            "vulnerability); kept by the service, not the ruleset"
        )
    for constraint in policies.constraints:
        if constraint.id == blocker.id:
            outcomes = " or ".join(o.replace("_", " ") for o in sorted(constraint.outcomes))
            paused = f"paused after {constraint.after} {outcomes} within {duration_text(constraint.within)}"
            return f"{paused}: {constraint.description}" if constraint.description else paused
    if blocker.id == "do_not_call":
        return f"{policies.do_not_call_field} is not false (the do-not-call register)"
    if blocker.id == "quiet_hours":
        return "inside the quiet hours for calls in the customer's time zone"
    return _REASONS.get(blocker.id, blocker.reason)


def _percent(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "-"


def _heading(report: StarvedReport) -> str:
    ref = report.ruleset
    return (
        f"Who is starved: {ref.name} {ref.version} ({ref.hash[:12]}) over {report.population}, "
        f"{report.customers:,} customers, at {report.at.isoformat(timespec='seconds')}, up to {report.limit} "
        f"actions each ({report.seconds:.1f} s, {report.workers} process(es))"
        + ("; the agent desktop calling out (outbound)" if report.desk is Direction.OUTBOUND else "")
    )


def render_text(report: StarvedReport, ruleset: Ruleset) -> str:
    lines = [_heading(report), ""]
    for channel in report.channels:
        lines.append(
            f"{channel.channel.value}: {channel.customers:,} customers, {channel.offered:,} offered something, "
            f"{channel.starved:,} starved ({_percent(channel.starved, channel.customers)})"
        )
        examples = ", ".join(channel.no_rule_examples)
        lines.append(f"  no rule matched: {channel.no_rule:,} customers" + (f" (e.g. {examples})" if examples else ""))
        blockers = channel.ranked()
        if blockers:
            lines.append("  matched, then blocked by (customers; alone = their only blocker):")
        width = max([34, *(len(b.id) for b in blockers)])  # purpose-scoped consent ids run long
        for blocker in blockers:
            lines.append(
                f"    {blocker.id:<{width}} {blocker.customers:>7,}  alone {blocker.alone:>7,}  "
                f"{describe(blocker, ruleset)}"
            )
            rules = ", ".join(f"{rule} ({count:,})" for rule, count in blocker.rules.most_common(3))
            lines.append(f"      rules: {rules}; e.g. {', '.join(blocker.examples)}")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def render_html(report: StarvedReport, ruleset: Ruleset) -> str:
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>Who is starved: {escape(report.ruleset.name)} {escape(report.ruleset.version)}</title>",
        f"<style>{REPORT_CSS}</style></head><body>",
        f"<h1>Who is starved: {escape(report.ruleset.name)} {escape(report.ruleset.version)}</h1>",
        f'<p class="muted">{escape(_heading(report))}</p>',
    ]
    for channel in report.channels:
        parts += _channel(channel, ruleset)
    parts.append("</body></html>")
    return "\n".join(parts)


def _channel(channel: ChannelStarvation, ruleset: Ruleset) -> list[str]:
    name = escape(channel.channel.value)
    parts = [
        f"<h2>{name}</h2>",
        f"<p>{channel.customers:,} customers: {channel.offered:,} offered something, <strong>{channel.starved:,} "
        f"starved</strong> ({_percent(channel.starved, channel.customers)}); {channel.no_rule:,} of them matched "
        "no rule at all, the rest matched rules whose every candidate was dropped.</p>",
    ]
    blockers = channel.ranked()
    if not blockers:
        return parts
    parts.append(_chart(channel, blockers))
    parts.append(
        f'<p class="muted"><span style="color:{_ALONE}">&#9632;</span> customers it alone starved &nbsp; '
        f'<span style="color:{_ANY}">&#9632;</span> customers it starved together with other blockers</p>'
    )
    parts.append(
        "<table><thead><tr><th>blocker</th><th>customers</th><th>alone</th><th>what it is</th>"
        "<th>rules it blocked most</th><th>e.g.</th></tr></thead><tbody>"
    )
    for blocker in blockers:
        rules = ", ".join(f"{escape(rule)} ({count:,})" for rule, count in blocker.rules.most_common(3))
        parts.append(
            f"<tr><td><code>{escape(blocker.id)}</code></td><td class='n'>{blocker.customers:,}</td>"
            f"<td class='n'>{blocker.alone:,}</td><td>{escape(describe(blocker, ruleset))}</td><td>{rules}</td>"
            f"<td class='examples'>{escape(', '.join(blocker.examples))}</td></tr>"
        )
    parts.append("</tbody></table>")
    return parts


def _chart(channel: ChannelStarvation, blockers: list[Blocker]) -> str:
    """Customers each blocker held back (light), and those it alone starved (dark), one bar per blocker."""
    most = max(b.customers for b in blockers)
    height = _ROW * len(blockers) + 10
    width = _LABEL + _WIDTH + _NUMBER
    title = f"Starved customers on {channel.channel.value} by blocker"
    rows = [
        f'<svg role="img" aria-label="{escape(title)}" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg"><title>{escape(title)}</title>'
    ]
    for index, blocker in enumerate(blockers):
        y = index * _ROW + 4
        full = _WIDTH * blocker.customers / most
        alone = _WIDTH * blocker.alone / most
        rows.append(
            f'<text x="{_LABEL - 6}" y="{y + 13}" text-anchor="end">{escape(blocker.id)}</text>'
            f'<rect class="any" x="{_LABEL}" y="{y}" width="{full:.1f}" height="{_BAR}" fill="{_ANY}"/>'
            f'<rect class="alone" x="{_LABEL}" y="{y}" width="{alone:.1f}" height="{_BAR}" fill="{_ALONE}"/>'
            f'<text x="{_LABEL + full + 4:.1f}" y="{y + 13}">{blocker.customers:,}</text>'
        )
    rows.append("</svg>")
    return "".join(rows)
