"""The report for a terminal: the headline per action first, then the breakdowns, referrals and cycle times."""

from __future__ import annotations

from dataclasses import replace

from nba_service.review.report import DIMENSIONS, Line, Report

_TITLES = {
    "rule": "By rule",
    "channel": "By channel",
    "ruleset_version": "By ruleset version",
    "journey_stage": "By journey stage",
}


def rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def points(value: float | None) -> str:
    """An uplift in percentage points, signed."""
    return "-" if value is None else f"{value * 100:+.1f} pp"


def interval(line: Line) -> str:
    up = line.uplift
    if not up.measured:
        return "no conversion declared"
    if up.low is None or up.high is None:
        return "no held-out customers measured" if up.shown else "no shown customers measured"
    return f"[{up.low * 100:+.1f}, {up.high * 100:+.1f}]"


def money(value: float) -> str:
    return f"{value:,.0f}"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def _table(lines: tuple[Line, ...] | list[Line], label_width: int = 34) -> list[str]:
    rows = [
        f"  {'':<{label_width}} {'offers':>7} {'accept':>7} {'decline':>7} {'shown':>7} {'conv':>6} "
        f"{'held':>6} {'conv':>6} {'uplift':>9}  95% interval"
    ]
    for line in lines:
        up = line.uplift
        label = line.label if len(line.label) <= label_width else line.label[: label_width - 1] + "…"
        rows.append(
            f"  {label:<{label_width}} {line.offers.delivered:>7,} {line.offers.accepted:>7,} "
            f"{line.offers.declined:>7,} {up.shown:>7,} {rate(up.shown_rate):>6} {up.held_out:>6,} "
            f"{rate(up.held_out_rate):>6} {points(up.difference):>9}  {interval(line)}"
        )
    return rows


def render_text(report: Report) -> str:
    out = [
        f"Report for {report.ruleset} (definitions of version {report.ruleset_version}), decisions from "
        f"{report.since.isoformat()} until {report.until.isoformat()}",
        f"{report.exposures:,} exposures read (actions shown or held out in delivered decisions).",
        "A customer counts once per action, from the first exposure; 'shown' and 'held' count customers whose",
        "conversion window has closed, 'conv' is their conversion rate; the uplift is shown minus held out,",
        "in percentage points, with its 95% interval.",
        "",
        "By action",
        *_table(report.by_action),
        _totals(report.totals),
    ]
    worth = [line for line in report.by_action if line.worth is not None]
    if worth:
        out += ["", "What it is worth (uplift x customers shown x value of one conversion)"]
        for line in worth:
            assert line.worth is not None
            out.append(
                f"  {line.action_id:<34} {money(line.worth.incremental):>10}  "
                f"[{money(line.worth.low)}, {money(line.worth.high)}]  at {money(line.worth.value)} each"
            )
        out.append(f"  {'sum of the estimates':<34} {money(report.incremental_worth):>10}")
    sources = report.totals.sources
    still_open = report.totals.open_units
    out += [
        "",
        f"Conversions by source: {sources.event:,} by the event only, {sources.agent:,} recorded by an agent only, "
        f"{sources.both:,} both.",
        f"{still_open:,} customer-action pairs are still within their conversion window and not in the rates.",
    ]
    for name in DIMENSIONS:
        lines = report.breakdowns[name]
        out += ["", _TITLES[name]]
        out += _table([_prefixed(line) for line in lines], 56)
    out += ["", "Referral asks by journey stage", *_table(report.referral_by_stage)]
    out += ["", "Referral asks by moment (the events the rule reads)", *_table(report.referral_by_trigger, 56)]
    out += [
        "",
        "Trigger to first delivered offer",
        f"  {'event':<28} {'triggers':>9} {'offered':>8} {'median':>9} {'p90':>9} {'expired':>8} {'open':>6}",
    ]
    for cycle in report.cycles:
        out.append(
            f"  {cycle.event_type:<28} {cycle.triggers:>9,} {cycle.offered:>8,} {duration(cycle.median_s):>9} "
            f"{duration(cycle.p90_s):>9} {cycle.expired:>8,} {cycle.open:>6,}"
        )
    no_holdout = [a.action_id for a in report.actions if a.holdout == 0 and a.conversion]
    if no_holdout:
        out += ["", f"No holdout, so no uplift can be measured: {', '.join(no_holdout)}."]
    return "\n".join(out)


def _totals(line: Line, label_width: int = 34) -> str:
    """Offers add up across actions; an uplift does not (actions without a holdout have no one to compare)."""
    up = line.uplift
    return (
        f"  {'all actions':<{label_width}} {line.offers.delivered:>7,} {line.offers.accepted:>7,} "
        f"{line.offers.declined:>7,} {up.shown:>7,} {'':>6} {up.held_out:>6,} {'':>6} {'':>9}  not pooled"
    )


def _prefixed(line: Line) -> Line:
    return replace(line, label=f"{line.action_id} / {line.label}")
