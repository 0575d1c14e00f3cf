"""The HTML report opened in a real headless Chromium: the charts draw one mark per action, axe-core finds no
violation, nothing is fetched, and it prints to A4 without cutting a chart.

The report is built from a simulated quarter of decisions (tests/report_support.py) through the same measurement
code the stores are held to. With NBA_DOCS_SCREENSHOT=1 the test also refreshes docs/images/report.png.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import struct
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from itertools import islice
from pathlib import Path
from typing import Any

import pytest

from nba_service.domain.model import Channel
from nba_service.review.report import Report
from nba_service.review.report_html import render_html, verdicts
from nba_service.synthetic import SAMPLE_PATH, read_sample
from tests.e2e._browser import axe_clean, chromium
from tests.e2e._support import NBA_SCRIPT, REPO_ROOT, response_ids, server_env
from tests.report_support import simulated_report

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

WIDTH, HEIGHT = 1200, 1500
SCREENSHOT = REPO_ROOT / "docs" / "images" / "report.png"
A4_CONTENT_PX = round((210 - 24) / 25.4 * 96)  # A4 less the 12 mm side margins of the page's @page rule


@pytest.fixture(scope="module")
def report() -> Report:
    return simulated_report()


@pytest.fixture(scope="module")
def document(report: Report, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("report") / "report.html"
    out.write_text(render_html(report), encoding="utf-8")
    return out


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    with chromium(tmp_path_factory.mktemp("chromium-profile"), WIDTH, HEIGHT) as driver:
        yield driver


def _count(driver: Any, selector: str) -> int:
    return int(driver.execute_script(f"return document.querySelectorAll({selector!r}).length"))


def test_charts_draw_a_mark_per_action_and_axe_finds_nothing(
    browser: Any, report: Report, document: Path, tmp_path: Path
) -> None:
    """One point and interval per action with both groups, funnel bars for the busiest actions, median and p90
    bars per trigger type that became offers; every point laid out with a size, gains right of the zero line;
    no resource requested; axe-core clean; a screenshot at reading width."""
    browser.get(document.as_uri())
    measured = [line for line in report.by_action if line.uplift.low is not None]
    with_offers = [line for line in report.by_action if line.offers.delivered]
    offered = [c for c in report.cycles if c.triggers and c.median_s is not None]
    assert len(measured) >= 5
    assert _count(browser, "svg[role=img]") == 3
    assert _count(browser, "circle.estimate") == _count(browser, "line.interval") == len(measured)
    assert _count(browser, "rect.stage") == 3
    assert _count(browser, "rect.accepted") == _count(browser, "rect.converted") == min(8, len(with_offers))
    assert _count(browser, "rect.median") == _count(browser, "rect.p90") == len(offered)

    boxes = browser.execute_script(
        "const zero = document.querySelector('line.zero').getBoundingClientRect().x;"
        "return [zero, [...document.querySelectorAll('g.row')].map(g => [g.classList[1],"
        " g.querySelector('circle').getBoundingClientRect().toJSON()])];"
    )
    zero, rows = boxes
    gains = {line.action_id for line in verdicts(report).gain}
    assert len([kind for kind, _ in rows if kind == "gain"]) == len(gains) > 0
    for kind, box in rows:
        assert box["width"] > 0
        if kind == "gain":
            assert box["x"] > zero

    seen = " ".join(browser.find_element("tag name", "body").text.split())
    assert "Clear gain (the whole 95% interval is above zero):" in seen
    assert f"{report.totals.offers.delivered:,} offers delivered" in seen
    assert browser.execute_script("return performance.getEntriesByType('resource').length") == 0
    axe_clean(browser)

    shot = tmp_path / "report.png"
    browser.get(document.as_uri())  # a fresh page: axe leaves nothing visible, but the screenshot starts at the top
    assert browser.save_screenshot(str(shot))
    png = shot.read_bytes()
    assert png.startswith(b"\x89PNG")
    assert struct.unpack(">II", png[16:24])[0] == WIDTH
    if os.environ.get("NBA_DOCS_SCREENSHOT") == "1":
        shutil.copyfile(shot, SCREENSHOT)


def test_prints_on_a4_without_cutting_a_chart(browser: Any, document: Path, tmp_path: Path) -> None:
    """At the width of an A4 page's content, in print media, no chart or table runs past the page's edge, charts
    are kept whole and each main section starts a page; Chromium prints it as a PDF of several A4 pages."""
    from selenium.webdriver.common.print_page_options import PrintOptions

    browser.get(document.as_uri())
    browser.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": A4_CONTENT_PX, "height": 1000, "deviceScaleFactor": 1, "mobile": False},
    )
    browser.execute_cdp_cmd("Emulation.setEmulatedMedia", {"media": "print"})
    try:
        layout = browser.execute_script(
            "const edge = document.documentElement.clientWidth;"
            "const over = [...document.querySelectorAll('svg, table, figure, p, h1, h2')]"
            "  .filter(e => e.getBoundingClientRect().right > edge + 0.5).map(e => e.outerHTML.slice(0, 80));"
            "return {over, scroll: document.documentElement.scrollWidth, edge,"
            " svg: [...document.querySelectorAll('svg')].map(s => getComputedStyle(s).breakInside),"
            " sections: [...document.querySelectorAll('section.page')].map(s => getComputedStyle(s).breakBefore)};"
        )
    finally:
        browser.execute_cdp_cmd("Emulation.setEmulatedMedia", {"media": ""})
        browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    assert layout["over"] == [], layout
    assert layout["scroll"] <= layout["edge"]
    assert layout["svg"] == ["avoid"] * 3
    assert layout["sections"] == ["page"] * 4

    options = PrintOptions()
    options.page_width = 21.0
    options.page_height = 29.7
    options.background = True
    pdf = base64.b64decode(browser.print_page(options))
    assert pdf.startswith(b"%PDF")
    pages = re.findall(rb"/MediaBox\s*\[\s*0 0 ([\d.]+) ([\d.]+)\]", pdf)
    assert len(pages) >= 5
    for width, height in pages:
        assert float(width) == pytest.approx(595.3, abs=1)  # A4 in PDF points
        assert float(height) == pytest.approx(841.9, abs=1)
    (tmp_path / "report.pdf").write_bytes(pdf)


def test_nba_report_writes_the_page_from_a_running_servers_store(
    browser: Any, start_fresh_server: Any, tmp_path: Path
) -> None:
    """`nba report --format html -o FILE` over the embedded store of a server that made real decisions: the page
    counts every action the responses offered, names the bundled ruleset's measurable actions as having no
    holdout (it declares none), and is axe-clean in Chromium."""
    server = start_fresh_server()
    customers = [p.customer_id for p in islice(read_sample(SAMPLE_PATH, datetime.now(UTC)), 40)]
    responses = [server.decide(customer, Channel.AGENT_DESKTOP, max_actions=3) for customer in customers]
    offered = sum(len(set(response_ids(r))) for r in responses)
    assert offered > 0
    server.wait_for_decisions([r.decision_id for r in responses])
    out = tmp_path / "report.html"
    until = (datetime.now(UTC) + timedelta(seconds=2)).isoformat()
    result = subprocess.run(
        [str(NBA_SCRIPT), "report", "--format", "html", "--db-path", str(server.database), "--until", until,
         "-o", str(out)],
        capture_output=True, text=True, timeout=120, env=server_env(), cwd=REPO_ROOT, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    browser.get(out.as_uri())
    seen = " ".join(browser.find_element("tag name", "body").text.split())
    assert "What each action adds: retail-banking" in seen
    assert f"{offered:,} offers delivered" in seen
    assert "Cannot be measured: no customers are held out of them:" in seen
    assert _count(browser, "circle.estimate") == 0
    axe_clean(browser)
