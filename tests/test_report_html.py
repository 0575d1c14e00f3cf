"""`nba report --format html` from hand-made counts: what the page states, what its charts hold, and that no text
from a ruleset or a store can become markup."""

from __future__ import annotations

import dataclasses
import re
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser

import pytest

from nba_service.domain.measurement import Cell, CellKey, CycleTimes, Measurements, MeasureQuery, conversion_defs
from nba_service.domain.model import Ruleset
from nba_service.review.report import Report, build_report
from nba_service.review.report_html import render_html, verdicts
from tests.report_support import RULESET_PATH

SINCE = datetime(2026, 9, 1, tzinfo=UTC)
UNTIL = datetime(2026, 12, 1, tzinfo=UTC)
HOSTILE_ID = "<script>alert('id')</script>"
HOSTILE_STAGE = '<img src=x onerror="alert(1)">'
HOSTILE_RULE = "</table><b>rule</b>"
HOSTILE_EVENT = "<svg onload=alert(2)>"
HOSTILE_DESCRIPTION = "Savings </td><script>steal()</script>"


class Page(HTMLParser):
    """Every start tag with its attributes, and the body's text with a space between cells and blocks, as a
    reader would see it."""

    BREAKS = frozenset({"td", "th", "tr", "li", "p", "h1", "h2", "h3", "caption", "text", "figcaption", "br"})

    def __init__(self, html: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.hidden = 0
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        self.hidden += tag in ("style", "title", "desc")
        if tag in self.BREAKS:
            self.text.append(" ")

    def handle_endtag(self, tag: str) -> None:
        self.hidden -= tag in ("style", "title", "desc")
        if tag in self.BREAKS:
            self.text.append(" ")

    def handle_data(self, data: str) -> None:
        if not self.hidden:
            self.text.append(data)

    def all(self, tag: str, cls: str | None = None) -> list[dict[str, str | None]]:
        return [a for t, a in self.tags if t == tag and (cls is None or cls in (a.get("class") or "").split())]

    def visible(self) -> str:
        return " ".join("".join(self.text).split())


def _ruleset() -> Ruleset:
    from nba_service.domain.loader import load_ruleset_file

    ruleset = load_ruleset_file(RULESET_PATH)
    actions = dict(ruleset.actions)
    for action_id, holdout in (
        ("term-deposit-rates", 0.1),
        ("savings-from-deposit", 0.1),
        ("credit-card-offer", 0.1),
        ("mortgage-consultation", 0.05),
    ):
        actions[action_id] = dataclasses.replace(actions[action_id], holdout=holdout)
    # Whatever the bundled ruleset holds out, this one is the action with no holdout.
    actions["savings-account-offer"] = dataclasses.replace(
        actions["savings-account-offer"], description=HOSTILE_DESCRIPTION, holdout=0.0
    )
    return dataclasses.replace(ruleset, actions=actions)


def _key(action: str, held: bool, stage: str | None = "maintenance", rule: str = "r1") -> CellKey:
    return (action, rule, "agent_desktop", "1.3.0", stage, held)


def _cells() -> dict[CellKey, Cell]:
    """Known counts: a clear gain with a value, an unclear one, a clear loss, one with no holdout, one whose
    held-out windows are all open, and a hostile action from no ruleset; some without a journey stage."""
    return {
        # shown 160/800 = 20%, held 4/80 = 5%: +15 pp; worth 0.15 x 800 x 120 = 14,400
        _key("term-deposit-rates", False): Cell(
            units=1000, mature=800, converted=160, converted_event=120, converted_agent=20, converted_both=20,
            offers=1200, accepted=300, declined=400, recorded_converted=40, not_now=50,
        ),
        _key("term-deposit-rates", True): Cell(units=100, mature=80, converted=4, converted_event=4),
        # 50/500 = 10% against 4/50 = 8%: +2 pp, the interval includes zero; worth 0.02 x 500 x 40 = 400
        _key("savings-from-deposit", False, None): Cell(
            units=500, mature=500, converted=50, converted_event=50, offers=600, accepted=100, declined=90
        ),
        _key("savings-from-deposit", True, None): Cell(units=50, mature=50, converted=4, converted_event=4),
        # 20/1000 = 2% against 20/200 = 10%: -8 pp; worth -0.08 x 1000 x 90 = -7,200
        _key("credit-card-offer", False, "welcome", "credit-card-propensity"): Cell(
            units=1000, mature=1000, converted=20, converted_event=20, offers=1000, accepted=80, declined=500
        ),
        _key("credit-card-offer", True, "welcome", "credit-card-propensity"): Cell(
            units=200, mature=200, converted=20, converted_event=20
        ),
        _key("savings-account-offer", False, None): Cell(
            units=300, mature=300, converted=30, converted_event=30, offers=320, accepted=60
        ),
        _key("mortgage-consultation", False): Cell(units=40, offers=40, accepted=5),
        _key("mortgage-consultation", True): Cell(units=3),
        _key(HOSTILE_ID, False, HOSTILE_STAGE, HOSTILE_RULE): Cell(
            units=10, mature=10, converted=1, converted_agent=1, offers=10, accepted=2, recorded_converted=1
        ),
        _key("referral-ask", False, None, "referral-high-satisfaction"): Cell(
            units=90, mature=90, converted=9, converted_event=9, offers=90, accepted=20
        ),
    }  # fmt: skip


CYCLES = (
    CycleTimes("large_deposit", 400, 350, 40, 10, 5400.0, 30_000.0),
    CycleTimes(HOSTILE_EVENT, 12, 0, 12, 0, None, None),
    CycleTimes("account_closed", 0, 0, 0, 0, None, None),
)


def _report(cells: dict[CellKey, Cell] | None = None, cycles: tuple[CycleTimes, ...] = CYCLES) -> Report:
    ruleset = _ruleset()
    query = MeasureQuery(SINCE, UNTIL, ruleset.meta.name, conversion_defs(ruleset))
    measurements = Measurements(_cells() if cells is None else cells, cycles, 4321)
    return build_report(ruleset, query, measurements, UNTIL + timedelta(hours=2))


@pytest.fixture(scope="module")
def report() -> Report:
    return _report()


@pytest.fixture(scope="module")
def page(report: Report) -> Page:
    return Page(render_html(report))


class TestHeadline:
    def test_period_ruleset_and_total_worth(self, report: Report, page: Page) -> None:
        """The period and ruleset come first, then the sum of the per-action worth estimates."""
        text = page.visible()
        assert "Decisions from 2026-09-01 00:00 UTC until 2026-12-01 00:00 UTC, ruleset retail-banking" in text
        assert f"What each action adds: retail-banking {report.ruleset_version}" in text
        assert "7,600 incremental worth: the sum of 3 actions' estimates" in text  # 14,400 + 400 - 7,200
        assert "3,260 offers delivered, 567 accepted (17%)" in text

    def test_actions_sorted_by_what_their_interval_says(self, report: Report, page: Page) -> None:
        """Gain and loss only when the whole interval is on one side of zero; no holdout apart from not yet."""
        found = verdicts(report)
        assert [line.action_id for line in found.gain] == ["term-deposit-rates"]
        assert [line.action_id for line in found.loss] == ["credit-card-offer"]
        assert [line.action_id for line in found.unclear] == ["savings-from-deposit"]
        # The hostile id is no action of the ruleset: nothing declares its conversion, so it is no gap either.
        assert [line.action_id for line in found.no_holdout] == ["referral-ask", "savings-account-offer"]
        assert [line.action_id for line in found.not_yet] == ["mortgage-consultation"]
        text = page.visible()
        assert "Clear gain (the whole 95% interval is above zero): term-deposit-rates (+15.0 pp)." in text
        assert "Clear loss (the whole interval is below zero): credit-card-offer (-8.0 pp)." in text
        assert "Unclear (the interval includes zero: not told apart from no effect): savings-from-deposit" in text
        assert "Cannot be measured: no customers are held out of them: referral-ask, savings-account-offer." in text
        assert "Not measurable yet: no held-out customer's conversion window has closed: mortgage-consultation." in (
            text
        )

    def test_an_empty_period_says_so(self) -> None:
        text = Page(render_html(_report({}, ()))).visible()
        assert "No action was shown or held out in this period." in text
        assert "no action with a value has a measured uplift, so no worth is estimated" in text
        assert "No offer was delivered in this period." in text
        assert "No trigger event happened in this period." in text


class TestCharts:
    def test_forest_plot_has_a_point_and_a_bar_per_measured_action(self, report: Report, page: Page) -> None:
        """Three actions have both groups: three points and bars, ordered by uplift, the loss left of zero."""
        points = page.all("circle", "estimate")
        bars = page.all("line", "interval")
        assert len(points) == len(bars) == 3
        (zero,) = page.all("line", "zero")
        x0 = float(zero["x1"] or "nan")
        xs = [float(p["cx"] or "nan") for p in points]
        assert xs == sorted(xs, reverse=True)
        assert xs[0] > x0 > xs[-1]
        low, high = (float(bars[0]["x1"] or "nan"), float(bars[0]["x2"] or "nan"))
        assert x0 < low < xs[0] < high  # the gain's whole bar is right of zero
        up = report.by_action[[line.action_id for line in report.by_action].index("term-deposit-rates")].uplift
        assert up.low is not None
        assert up.high is not None
        scale = (xs[0] - x0) / 15.0  # pixels per percentage point
        assert (low - x0) / scale == pytest.approx(100 * up.low, abs=0.05)
        assert (high - x0) / scale == pytest.approx(100 * up.high, abs=0.05)

    def test_no_conversion_in_either_group_still_draws(self) -> None:
        """0 of 100 against 0 of 100: an uplift of zero with its interval, on an axis around zero."""
        cells = {
            _key("term-deposit-rates", False): Cell(units=100, mature=100, offers=100),
            _key("term-deposit-rates", True): Cell(units=100, mature=100),
        }
        page = Page(render_html(_report(cells, ())))
        (point,) = page.all("circle", "estimate")
        (zero,) = page.all("line", "zero")
        assert point["cx"] == zero["x1"]
        assert "Unclear (the interval includes zero: not told apart from no effect): term-deposit-rates" in (
            page.visible()
        )

    def test_funnel_overall_and_per_action(self, page: Page) -> None:
        """Three stage bars for all offers; an accepted and a converted bar for each action with offers."""
        stages = page.all("rect", "stage")
        assert len(stages) == 3
        widths = [float(s["width"] or "nan") for s in stages]
        assert widths[1] / widths[0] == pytest.approx(567 / 3260, abs=0.001)
        assert widths[2] / widths[0] == pytest.approx(41 / 3260, abs=0.001)
        assert len(page.all("rect", "accepted")) == len(page.all("rect", "converted")) == 7
        assert "1,200 offers: 25% accepted, 3% converted" in page.visible()

    def test_cycle_times_median_and_p90(self, page: Page) -> None:
        """A trigger type with offers gets both bars; one never offered gets text, one without triggers nothing."""
        assert len(page.all("rect", "median")) == len(page.all("rect", "p90")) == 1
        (median,) = page.all("rect", "median")
        (p90,) = page.all("rect", "p90")
        assert float(median["width"] or "nan") / float(p90["width"] or "nan") == pytest.approx(5400 / 30_000)
        text = page.visible()
        assert "1.5 h, 8.3 h; 40 of 400 expired unoffered" in text
        assert "never offered; 12 of 12 expired unoffered" in text
        assert "No triggers in the period: account_closed." in text

    def test_every_chart_is_named_for_assistive_technology(self, page: Page) -> None:
        svgs = page.all("svg")
        assert len(svgs) == 3
        ids = {a.get("id") for _, a in page.tags}
        for svg in svgs:
            assert svg["role"] == "img"
            labels = (svg["aria-labelledby"] or "").split()
            assert len(labels) == 2
            assert set(labels) <= ids


class TestTables:
    def test_by_action_worth_and_totals(self, page: Page) -> None:
        text = page.visible()
        assert "term-deposit-rates 1,200 300 400 50 40 800 20.0% 80 5.0% +15.0 pp [+" in text
        assert "term-deposit-rates 120 800 +15.0 pp 14,400" in text
        assert "credit-card-offer 90 1,000 -8.0 pp -7,200" in text
        assert "Sum of the estimates 7,600 intervals do not add up" in text
        assert "All actions 3,260 567 990 50 41 2,700" in text
        assert "Conversions by source: 257 by the event only, 21 recorded by an agent only, 20 both." in text
        assert "263 customer-action pairs are still within their conversion window" in text  # 200 + 20 + 40 + 3

    def test_breakdowns_referrals_and_unrecorded_stages(self, page: Page) -> None:
        text = page.visible()
        for title in ("By rule", "By channel", "By ruleset version", "By journey stage"):
            assert title in text
        assert "savings-from-deposit (not recorded) 600" in text
        assert "credit-card-offer welcome 1,000" in text
        assert "Referral asks by journey stage Journey stage" in text
        assert "(not recorded) 90 20" in text


class TestEscaping:
    def test_hostile_texts_are_shown_as_text_and_never_as_markup(self, page: Page) -> None:
        """Action ids, rule ids, journey stages, event types and descriptions holding markup are escaped wherever
        they appear: in the headline, the charts, their titles, the tables."""
        html = render_html(_report())
        assert not page.all("script")
        assert not page.all("img")
        assert not page.all("b")
        assert len(page.all("svg")) == 3
        assert len(page.all("table")) == len(re.findall(r"<table[ >]", html))
        assert not [a for _, a in page.tags if any(k.startswith("on") for k in a)]
        text = page.visible()
        for hostile in (HOSTILE_ID, HOSTILE_STAGE, HOSTILE_RULE, HOSTILE_EVENT, HOSTILE_DESCRIPTION):
            assert hostile in text, hostile
        assert "&lt;script&gt;alert(&#x27;id&#x27;)&lt;/script&gt;" in html

    def test_nothing_is_fetched(self, page: Page) -> None:
        """No script, stylesheet link, image or font: the file is all there is."""
        for tag in ("script", "link", "img", "iframe", "object", "embed"):
            assert not page.all(tag), tag
        assert not [a for _, a in page.tags if "src" in a or "href" in a]
        assert "url(" not in render_html(_report())


class TestPrint:
    def test_print_stylesheet(self, page: Page) -> None:
        """A4 pages, sections that start on a new page, charts and rows never split."""
        html = render_html(_report())
        css = html[html.index("<style>") : html.index("</style>")]
        assert re.search(r"@page\s*\{\s*size:\s*A4", css)
        assert re.search(r"section\.page\s*\{\s*break-before:\s*page", css)
        assert re.search(r"figure, svg[^{]*\{\s*break-inside:\s*avoid", css)
        assert len(page.all("section", "page")) == 4
