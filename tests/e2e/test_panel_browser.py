"""The agent side panel in a real headless Chromium against the real `nba serve --http-port`.

What an agent relies on mid-call: the scripts of the sample customer best first, Accept stored and the next
decision honouring the frequency cap, an ingested event shown without a reload (and none of its data), the
keyboard alone enough, no axe-core violation, an outage said plainly and recovered from; and, with identities
configured, the host's JWT exchanged for a panel session, a bad token refused, framing allowed only to the
configured host origins. With NBA_DOCS_SCREENSHOT=1 it also refreshes docs/images/panel.png.
"""

from __future__ import annotations

import http.server
import json
import os
import signal
import socket
import struct
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from nba_service.domain.model import Channel
from tests.e2e._browser import axe_clean as _axe_clean
from tests.e2e._browser import chromium, wait_for
from tests.e2e._direction_support import NOTICE, mandatory_ruleset
from tests.e2e._support import REPO_ROOT, Oracle, ServerHandle, ids, start_server, with_event
from tests.security_pki import AUDIENCE, ISSUER, Pki, make_pki

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

WIDTH, HEIGHT = 320, 760
SCREENSHOT = REPO_ROOT / "docs" / "images" / "panel.png"
DEPOSIT = {"amount": 48250.75, "account_last4": "7781"}
RAW = ("48250", "48,250", "7781")
POLICY = """\
callers:
  - name: agents
    match: {token_claim: roles, contains: desktop}
    roles: [desktop]
  - name: dialers
    match: {token_claim: roles, contains: dialer}
    roles: [dialer]
"""
OUTAGE = "Cannot reach the next-best-action service"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    with chromium(tmp_path_factory.mktemp("chromium-profile"), 800, HEIGHT) as driver:
        # A window cannot be narrower than 500 px; the CRM's panel is: the viewport is set as a device's.
        metrics = {"width": WIDTH, "height": HEIGHT, "deviceScaleFactor": 1, "mobile": False}
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
        yield driver


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerHandle]:
    handle = start_server(tmp_path_factory.mktemp("nba-panel"), "--http-port", "0")
    yield handle
    handle.stop()


@pytest.fixture
def api(server: ServerHandle) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=f"http://{server.http_address}", timeout=10) as client:
        yield client


# ------------------------------------------------------------------------------------------------
# What the page shows
# ------------------------------------------------------------------------------------------------


def _open(driver: Any, base: str, customer: str, conversation: str = "call-1", fragment: str = "") -> None:
    driver.get(f"{base}/panel?customer_id={customer}&conversation_id={conversation}{fragment}")
    _wait_loaded(driver)


def _wait_loaded(driver: Any) -> None:
    wait_for(
        lambda: driver.execute_script(
            "return document.querySelectorAll('#nba-actions li.card').length > 0"
            " || !document.getElementById('nba-empty').hidden || !document.getElementById('nba-alert').hidden"
        ),
        20,
        "the panel shows actions, 'nothing to offer' or an alert",
    )


def _cards(driver: Any) -> list[dict[str, Any]]:
    return list(
        driver.execute_script(
            "return [...document.querySelectorAll('#nba-actions li.card')].map(li => ({"
            " id: li.dataset.action, title: li.querySelector('h2').firstChild.textContent,"
            " script: li.querySelector('.script').textContent,"
            " buttons: [...li.querySelectorAll('button')].map(b => b.textContent),"
            " disabled: [...li.querySelectorAll('button')].every(b => b.disabled),"
            " fresh: li.classList.contains('new') }))"
        )
    )


def _alert(driver: Any) -> str:
    return str(
        driver.execute_script(
            "const a = document.getElementById('nba-alert'); return a.hidden ? '' : a.innerText.trim()"
        )
    )


def _status(driver: Any) -> str:
    return str(driver.execute_script("return document.getElementById('nba-status').textContent"))


def _page_text(driver: Any) -> str:
    return str(driver.execute_script("return document.documentElement.innerText"))


def _latest_decision(server: ServerHandle, customer: str) -> dict[str, Any]:
    mine = [r for r in server.decision_lines() if r["customer_id"] == customer]
    assert mine, f"no decision recorded for {customer}"
    return max(mine, key=lambda r: r["decided_at"])


def _choose(server: ServerHandle, oracle: Oracle, *, exclude: set[str], gains_deposit: bool = False) -> str:
    """A sample customer with a stable desktop decision of 2+ actions; with `gains_deposit`, one whose top three
    gain term-deposit-rates from a large deposit (and lack it before)."""
    edit = with_event("large_deposit", DEPOSIT)
    for profile in oracle.customers(server.ready_at):
        customer = profile.customer_id
        if customer in exclude:
            continue
        before = oracle.stable(server, customer, Channel.AGENT_DESKTOP, limit=3)
        if before is None or len(before) < 2:
            continue
        if not gains_deposit:
            return customer
        after = oracle.stable(server, customer, Channel.AGENT_DESKTOP, limit=3, edits=(edit,))
        if after is not None and "term-deposit-rates" in ids(after) and "term-deposit-rates" not in ids(before):
            return customer
    pytest.fail("no sample customer fits")


USED: set[str] = set()


def test_sample_customer_scripts_best_first(browser: Any, server: ServerHandle, oracle: Oracle) -> None:
    """The scripts of the oracle's decision, in its order, each with its API labels and Not now; the decision was
    recorded once, on AGENT_DESKTOP, with the conversation id; nothing scrolls sideways at 320 px."""
    customer = _choose(server, oracle, exclude=USED)
    USED.add(customer)
    _open(browser, f"http://{server.http_address}", customer, "call-0001")
    cards = _cards(browser)
    expected = oracle.stable(server, customer, Channel.AGENT_DESKTOP, limit=3)
    assert [c["id"] for c in cards] == ids(expected or [])
    record = _latest_decision(server, customer)
    assert record["channel"] == "agent_desktop"
    assert record["context"] == {"reason": "agent_panel", "attributes": {"conversation_id": "call-0001"}}
    assert [c["script"] for c in cards] == [a["script"] for a in record["actions"]]
    for card in cards:
        assert card["title"]
        assert card["script"]
        assert card["buttons"][2] == "Not now"
        assert not card["disabled"]
    assert len([r for r in server.decision_lines() if r["customer_id"] == customer]) == 1, "decided more than once"
    assert browser.execute_script("return window.innerWidth") == WIDTH
    assert browser.execute_script("return document.documentElement.scrollWidth") <= WIDTH, "scrolls sideways"


def test_event_appears_without_reload_and_accept_honours_the_cap(
    browser: Any, server: ServerHandle, oracle: Oracle, api: httpx.Client
) -> None:
    """An ingested large deposit shows Term deposit rates, marked new, on the open page (no reload) and none of
    the deposit's data; Accept by keyboard alone stores ACCEPTED, and the next decision drops the action for its
    30-day cap; the page never re-decides while nothing changes."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    customer = _choose(server, oracle, exclude=USED, gains_deposit=True)
    USED.add(customer)
    _open(browser, f"http://{server.http_address}", customer)
    assert "term-deposit-rates" not in [c["id"] for c in _cards(browser)]
    browser.execute_script("window.__sameDocument = true")
    decided = len([r for r in server.decision_lines() if r["customer_id"] == customer])

    event = api.post("/v1/events", json={"customer_id": customer, "type": "large_deposit", "attributes": DEPOSIT})
    assert event.status_code == 200, event.text
    card = wait_for(
        lambda: next((c for c in _cards(browser) if c["id"] == "term-deposit-rates"), None),
        15,
        "the ingested event's action appears",
    )
    assert browser.execute_script("return window.__sameDocument === true"), "the page was reloaded"
    assert card["fresh"]
    assert card["title"] == "Term deposit rates"
    assert "New: Term deposit rates" in wait_for(lambda: _status(browser), 5, "the change is announced")
    text = _page_text(browser)
    assert not [raw for raw in RAW if raw in text], text
    shot = browser.get_screenshot_as_png()  # for the README: a live change, as an agent sees it at 320 px
    assert shot.startswith(b"\x89PNG")
    assert struct.unpack(">II", shot[16:24])[0] == WIDTH
    if os.environ.get("NBA_DOCS_SCREENSHOT") == "1":
        SCREENSHOT.write_bytes(shot)
    assert len([r for r in server.decision_lines() if r["customer_id"] == customer]) == decided + 1

    # Keyboard only: Tab to the card's Accept button, Enter.
    browser.execute_script("document.activeElement && document.activeElement.blur(); window.scrollTo(0, 0)")
    for _ in range(20):
        ActionChains(browser).send_keys(Keys.TAB).perform()
        focused = browser.execute_script(
            "const b = document.activeElement; const li = b.closest && b.closest('li.card');"
            "return li && b.classList.contains('accept') ? li.dataset.action : null"
        )
        if focused == "term-deposit-rates":
            break
    else:
        pytest.fail("Tab never reached the Accept button of Term deposit rates")
    outline = browser.execute_script("return getComputedStyle(document.activeElement).outlineStyle")
    assert outline == "solid", "no visible keyboard focus"
    decision_id = _latest_decision(server, customer)["decision_id"]  # the one on screen: the page's last
    ActionChains(browser).send_keys(Keys.ENTER).perform()

    outcome = wait_for(
        lambda: next(
            (
                r
                for r in server.records()
                if r.get("kind") == "outcome"
                and r["customer_id"] == customer
                and r["action_id"] == "term-deposit-rates"
            ),
            None,
        ),
        10,
        "the outcome is stored",
    )
    assert outcome["outcome"] == "accepted"
    assert outcome["decision_id"] == decision_id
    assert outcome["note"] == "agent panel, conversation call-1"
    wait_for(lambda: "Recorded: Accept, Term deposit rates." in _status(browser), 5, "the outcome is announced")
    assert browser.execute_script("return document.activeElement.tagName") in ("H2", "P")

    after = wait_for(
        lambda: next(
            (r for r in server.decision_lines() if r["customer_id"] == customer and r["decided_at"] > outcome["time"]),
            None,
        ),
        10,
        "the panel decides again after the outcome",
    )
    assert "term-deposit-rates" not in [a["action_id"] for a in after["actions"]]
    capped = [d for d in after["dropped"] if d["action_id"] == "term-deposit-rates"]
    assert capped, after["dropped"]
    assert (capped[0]["reason"], capped[0]["policy"]) == ("frequency_cap", "term-deposit-monthly")
    wait_for(lambda: "term-deposit-rates" not in [c["id"] for c in _cards(browser)], 5, "the accepted card is gone")
    assert "Accepted: Term deposit rates" in _page_text(browser)
    settled = len([r for r in server.decision_lines() if r["customer_id"] == customer])
    browser.execute_script("return new Promise(r => setTimeout(r, 3000))")  # longer than a poll of the store
    assert len([r for r in server.decision_lines() if r["customer_id"] == customer]) == settled, "re-decided idly"


def test_not_now_sets_aside_and_axe_finds_nothing(browser: Any, server: ServerHandle, oracle: Oracle) -> None:
    """Not now records NOT_OFFERED (no cap counts it) and moves the card to "Set aside", from where Show again
    brings it back; axe-core finds no violation with every section shown."""
    customer = _choose(server, oracle, exclude=USED)
    USED.add(customer)
    _open(browser, f"http://{server.http_address}", customer, "call-77")
    first = _cards(browser)[0]
    browser.execute_script("document.querySelector('#nba-actions li.card .later-button').click()")
    outcome = wait_for(
        lambda: next(
            (r for r in server.records() if r.get("kind") == "outcome" and r["customer_id"] == customer), None
        ),
        10,
        "Not now is stored",
    )
    assert outcome["outcome"] == "not_offered"
    assert outcome["action_id"] == first["id"]
    wait_for(lambda: first["title"] in _page_text(browser).split("Set aside for this call")[-1], 10, "set aside")
    wait_for(lambda: first["id"] not in [c["id"] for c in _cards(browser)], 10, "the card left the list")
    # The next decision still offers it (NOT_OFFERED counts toward no cap); the page keeps it aside.
    wait_for(
        lambda: len([r for r in server.decision_lines() if r["customer_id"] == customer]) == 2,
        10,
        "a decision after the outcome",
    )
    assert first["id"] in [a["action_id"] for a in _latest_decision(server, customer)["actions"]]
    _axe_clean(browser)
    browser.execute_script("document.querySelector('#nba-later-list button').click()")
    wait_for(lambda: first["id"] in [c["id"] for c in _cards(browser)], 5, "Show again restores the card")
    assert browser.execute_script("return document.activeElement.tagName") == "H2"
    # A reload of the frame in the same call keeps what was set aside and recorded (sessionStorage).
    browser.execute_script("document.querySelector('#nba-actions li.card .later-button').click()")
    wait_for(lambda: not browser.execute_script("return document.getElementById('nba-later').hidden"), 10, "aside")
    browser.refresh()
    _wait_loaded(browser)
    wait_for(lambda: first["id"] not in [c["id"] for c in _cards(browser)], 10, "still set aside after a reload")


def test_bad_link_is_explained(browser: Any, server: ServerHandle) -> None:
    browser.get(f"http://{server.http_address}/panel?customer_id=bad%20id&conversation_id=x")
    text = _page_text(browser)
    assert "The panel was opened with a bad link." in text
    assert "customer_id must be 1-64 characters" in text


def test_unknown_customer_is_said_plainly(browser: Any, server: ServerHandle) -> None:
    _open(browser, f"http://{server.http_address}", "NOBODY-0001")
    assert _alert(browser) == "Customer NOBODY-0001 is not known to the next-best-action service."


# ------------------------------------------------------------------------------------------------
# Outage and recovery: a server of its own, on a port it can come back on
# ------------------------------------------------------------------------------------------------


def test_outage_is_said_and_recovered_from(
    browser: Any, tmp_path_factory: pytest.TempPathFactory, oracle: Oracle
) -> None:
    """Stopping the service shows the outage alert at once and disables the outcome buttons, keeping the scripts;
    starting it again on the same port clears the alert by itself, with the buttons back."""
    workdir = tmp_path_factory.mktemp("nba-outage")
    port = _free_port()
    first = start_server(workdir, "--http-port", str(port))
    try:
        customer = _choose(first, oracle, exclude=set())
        _open(browser, f"http://{first.http_address}", customer)
        shown = _cards(browser)
        assert shown
        first.stop(signal.SIGTERM)
        wait_for(lambda: OUTAGE in _alert(browser), 15, "the outage alert")
        role = browser.execute_script("return document.getElementById('nba-alert-text').getAttribute('role')")
        assert role == "alert"
        cards = _cards(browser)
        assert [c["id"] for c in cards] == [c["id"] for c in shown]
        assert all(c["disabled"] for c in cards)
        _axe_clean(browser)
    finally:
        first.stop()
    again = start_server(workdir, "--http-port", str(port))
    try:
        wait_for(lambda: _alert(browser) == "", 45, "the alert clears once the service is back")
        wait_for(lambda: _cards(browser) and not any(c["disabled"] for c in _cards(browser)), 10, "buttons back")
        assert "Connected to the service again." in wait_for(lambda: _status(browser), 5, "recovery announced")
    finally:
        again.stop()


# ------------------------------------------------------------------------------------------------
# Embedding with identities: the host's JWT, a panel session, frame-ancestors
# ------------------------------------------------------------------------------------------------


class _Host:
    """A CRM stand-in: static pages on its own origin that frame the panel."""

    def __init__(self, directory: Path) -> None:
        handler = lambda *args: http.server.SimpleHTTPRequestHandler(*args, directory=str(directory))  # noqa: E731
        self.directory = directory
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def page(self, name: str, html: str) -> None:
        (self.directory / name).write_text(html, "utf-8")

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Host]:
    served = _Host(tmp_path_factory.mktemp("crm-host"))
    yield served
    served.close()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory, pki: Pki, host: _Host) -> Iterator[ServerHandle]:
    workdir = tmp_path_factory.mktemp("nba-panel-secured")
    policy = workdir / "policy.yaml"
    policy.write_text(POLICY, "utf-8")
    handle = start_server(
        workdir,
        "--http-port",
        "0",
        "--jwks-file",
        str(pki.jwks),
        "--jwt-issuer",
        ISSUER,
        "--jwt-audience",
        AUDIENCE,
        "--access-policy",
        str(policy),
        "--panel-frame-ancestors",
        f"http://127.0.0.1:{host.port}",
    )
    yield handle
    handle.stop()


def _frame(browser: Any, host: _Host, origin_host: str, name: str, src: str, script: str = "") -> None:
    frame = f'<iframe id="p" title="Next best actions" width="320" height="600" src="{src}"></iframe>'
    host.page(name, f"<!doctype html><title>CRM</title>{frame}{script}")
    browser.get(f"http://{origin_host}:{host.port}/{name}")


def test_host_token_becomes_a_panel_session(
    browser: Any, secured: ServerHandle, host: _Host, pki: Pki, oracle: Oracle
) -> None:
    """Framed by the configured host, with the host's JWT in the fragment: the panel signs in, decides as that
    identity (the record names it), and strips the token from its address."""
    customer = _choose(secured, oracle, exclude=set())
    token = pki.token(sub="agent-1", roles=["desktop"])
    base = f"http://{secured.http_address}"
    _frame(browser, host, "127.0.0.1", "ok.html", f"{base}/panel?customer_id={customer}#token={token}")
    try:
        browser.switch_to.frame("p")
        _wait_loaded(browser)
        assert _cards(browser), _alert(browser)
        assert browser.execute_script("return location.hash") == ""
    finally:
        browser.switch_to.default_content()
    record = _latest_decision(secured, customer)
    assert record["caller"] == f"jwt:{ISSUER}#agent-1"


def test_token_by_post_message(browser: Any, secured: ServerHandle, host: _Host, pki: Pki, oracle: Oracle) -> None:
    """Without a fragment the panel asks its host (postMessage) and signs in with the token it is sent."""
    customer = _choose(secured, oracle, exclude=set())
    token = pki.token(sub="agent-2", roles=["desktop"])
    base = f"http://{secured.http_address}"
    script = (
        "<script>addEventListener('message', e => { if (e.data && e.data.type === 'nba-panel:token-needed')"
        f" document.getElementById('p').contentWindow.postMessage({{type: 'nba-panel:token', token: '{token}'}},"
        f" '{base}'); }});</script>"
    )
    _frame(browser, host, "127.0.0.1", "pm.html", f"{base}/panel?customer_id={customer}", script)
    try:
        browser.switch_to.frame("p")
        wait_for(lambda: _cards(browser), 15, "signed in by postMessage")
    finally:
        browser.switch_to.default_content()
    assert _latest_decision(secured, customer)["caller"] == f"jwt:{ISSUER}#agent-2"


def test_bad_and_unfit_tokens_are_refused(browser: Any, secured: ServerHandle, host: _Host, pki: Pki) -> None:
    """A token that is no JWT, and a dialer's token, each get a plain alert in the panel and no decision."""
    base = f"http://{secured.http_address}"
    dialer = pki.token(sub="dialer-1", roles=["dialer"])
    for index, (token, expected) in enumerate(
        (
            ("not-a-jwt", "The CRM's sign-in was refused: the bearer token is not a well-formed JWT."),
            (dialer, "This sign-in may not see customer actions: Decide on agent_desktop needs the role desktop"),
        )
    ):
        _frame(browser, host, "127.0.0.1", f"bad-{index}.html", f"{base}/panel?customer_id=CUST-000001#token={token}")
        try:
            browser.switch_to.frame("p")
            wait_for(lambda: expected in _alert(browser), 10, expected)  # noqa: B023 - used at once
            assert not _cards(browser)
        finally:
            browser.switch_to.default_content()


def test_frame_ancestors_allow_only_the_configured_host(browser: Any, secured: ServerHandle, host: _Host) -> None:
    """The header names 'self' and the configured origin; a page on another origin cannot frame the panel."""
    base = f"http://{secured.http_address}"
    page = httpx.get(f"{base}/panel?customer_id=CUST-000001", timeout=10)
    csp = page.headers["content-security-policy"]
    assert f"frame-ancestors 'self' http://127.0.0.1:{host.port}" in csp
    assert "script-src 'self'" in csp
    assert "unsafe-inline" not in csp
    browser.get_log("browser")
    _frame(browser, host, "localhost", "other.html", f"{base}/panel?customer_id=CUST-000001")
    wait_for(
        lambda: any("frame-ancestors" in e["message"] for e in browser.get_log("browser")),
        10,
        "Chromium refuses the frame for frame-ancestors",
    )
    browser.switch_to.frame("p")
    try:
        assert browser.execute_script("return document.getElementById('nba-panel')") is None
    finally:
        browser.switch_to.default_content()


def test_session_calls(secured: ServerHandle, pki: Pki) -> None:
    """Over plain HTTP: a session works on the JSON API as its identity, with that identity's roles only; no token,
    a bad one, an expired host token and a tampered session are refused; a renewed session works."""
    with httpx.Client(base_url=f"http://{secured.http_address}", timeout=10) as client:
        assert client.post("/panel/session").status_code == 401
        bad = client.post("/panel/session", headers={"Authorization": "Bearer x.y.z"})
        assert bad.status_code == 401
        assert bad.json()["code"] == "UNAUTHENTICATED"
        expired = pki.token(sub="agent-3", roles=["desktop"], iat=1, exp=2)
        assert client.post("/panel/session", headers={"Authorization": f"Bearer {expired}"}).status_code == 401
        host_token = pki.token(sub="agent-3", roles=["desktop"])
        good = client.post("/panel/session", headers={"Authorization": f"Bearer {host_token}"})
        assert good.status_code == 200, good.text
        session = good.json()["token"]
        auth = {"Authorization": f"Bearer {session}"}
        ask = {"customer_id": "CUST-000058", "channel": "AGENT_DESKTOP"}
        decided = client.post("/v1/decide", json=ask, headers=auth)
        assert decided.status_code == 200, decided.text
        event = client.post("/v1/events", json={"customer_id": "CUST-000058", "type": "large_deposit"}, headers=auth)
        assert event.status_code == 403  # the identity's roles, not more: a desktop session may not ingest
        tampered = session[:-4] + ("AAAA" if not session.endswith("AAAA") else "BBBB")
        watch = {"customer_id": "CUST-000058", "wait": "false"}
        refused = client.get("/panel/v1/changes", params=watch, headers={"Authorization": f"Bearer {tampered}"})
        assert refused.status_code == 401
        assert "panel session does not verify" in refused.json()["message"]
        renewed = client.post("/panel/session", headers=auth)
        assert renewed.status_code == 200
        assert renewed.json()["expires_at"] >= good.json()["expires_at"]
        again = {"Authorization": f"Bearer {renewed.json()['token']}"}
        assert client.post("/v1/decide", json=ask, headers=again).status_code == 200
        assert client.get("/panel/v1/changes", params=watch).status_code == 401
        assert client.get("/panel/v1/changes", params=watch, headers=again).status_code == 200
    record = _latest_decision(secured, "CUST-000058")
    assert record["caller"] == f"jwt:{ISSUER}#agent-3"


def test_static_files_are_ours_and_cached_by_etag(server: ServerHandle) -> None:
    with httpx.Client(base_url=f"http://{server.http_address}", timeout=10) as client:
        script = client.get("/panel/static/panel.js")
        assert script.status_code == 200
        assert script.headers["content-type"].startswith("text/javascript")
        again = client.get("/panel/static/panel.js", headers={"If-None-Match": script.headers["etag"]})
        assert again.status_code == 304
        assert client.get("/panel/static/panel.html").status_code == 404
        assert "/panel" not in json.dumps(client.get("/openapi.json").json()["paths"])


def test_a_mandatory_notice_is_marked_and_cannot_be_put_off(browser: Any, tmp_path: Path) -> None:
    """With a mandatory notice for everyone, the first card is the notice, marked as a required notice, with what
    the agent did as its two buttons and no Not now; the rest of the answer keeps its buttons; axe-core finds no
    violation."""
    ruleset = mandatory_ruleset(tmp_path / "rulesets")
    handle = start_server(tmp_path, "--http-port", "0", "--rulesets", str(ruleset))
    try:
        _open(browser, f"http://{handle.http_address}", "CUST-000001", "call-notice")
        cards = _cards(browser)
        assert cards[0]["id"] == NOTICE
        assert cards[0]["buttons"] == ["Notice given", "Customer refused it"]
        badge = browser.execute_script(
            "return document.querySelector('#nba-actions li.card h2 .badge.required').textContent"
        )
        assert badge == "Required notice"
        assert all("Not now" in c["buttons"] for c in cards[1:])
        _axe_clean(browser)
    finally:
        handle.stop()
