"""`nba rulesets render`: the document a reviewer signs off, in HTML and Markdown, from the real command."""

from __future__ import annotations

import hashlib
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from click.testing import CliRunner

from nba_service.cli import main
from nba_service.domain import wording
from nba_service.domain.loader import load_ruleset_file, load_ruleset_text
from nba_service.domain.model import Channel, Ruleset
from nba_service.domain.pipeline import reference_active
from nba_service.domain.scenarios import load_scenarios_text, run_case
from nba_service.review import render_cli
from nba_service.review.render import FORMATS, ScenarioEvidence, markdown_text, render

REPO = Path(__file__).resolve().parents[1]
BUNDLED = REPO / "rulesets" / "retail-banking.yaml"
HOSTILE_SCRIPT = 'Say <script>alert("x")</script> & <b>bold</b> | not a column'

RULESET = f"""\
ruleset: {{name: render-test, version: 3.1.4, owner: "Conduct <Risk> & Co", description: "A ruleset | for tests"}}
fields:
  - {{name: first_name, type: string}}
  - {{name: stage, type: string}}
  - {{name: consent_agent, type: boolean}}
events:
  - type: large_deposit
    attributes: [{{name: amount, type: number}}]
actions:
  - id: greet
    category: service
    scripts: {{agent_desktop: '{HOSTILE_SCRIPT}'}}
  - id: rates
    category: upsell
    scripts: {{agent_desktop: "Mention rates.", outbound_dialer: "Call about rates."}}
    trigger: {{event: large_deposit, lifetime: 3d}}
rules:
  - {{id: greet-everyone, description: "Be <nice>", reason: Be nice, priority: 10, action: greet,
     when: {{all: [{{field: stage, op: exists}}]}}}}
  - {{id: big-deposit, description: d, reason: Recent large deposit, priority: 80, action: rates,
     when: {{all: [{{field: events.large_deposit.amount, op: gte, value: 10000}}]}}}}
policies:
  consent: {{agent_desktop: consent_agent}}
  suppressions:
    - {{id: lost, description: Lost customers get nothing, when: {{all: [{{field: stage, op: eq, value: lost}}]}}}}
"""
TESTS = """\
ruleset: render-test
defaults:
  channel: agent_desktop
  at: "2026-03-10 14:00"
  timezone: Europe/London
  profile: {first_name: Ada, stage: active, consent_agent: true}
cases:
  - name: everyone is greeted
    expect: {actions: [greet]}
  - name: a deposit brings rates first
    events: [{type: large_deposit, age: 2h, attributes: {amount: 25000}}]
    expect: {actions: [rates, greet]}
  - name: a wrong expectation
    expect: {actions: []}
"""


@pytest.fixture(scope="module")
def ruleset() -> Ruleset:
    return load_ruleset_text(RULESET, "render-test.yaml")


@pytest.fixture(scope="module")
def evidence(ruleset: Ruleset) -> ScenarioEvidence:
    active = reference_active(ruleset)
    cases = load_scenarios_text(TESTS, ruleset, "render-test.tests.yaml")
    return ScenarioEvidence("render-test.tests.yaml", tuple(run_case(active, case) for case in cases))


class _Tags(HTMLParser):
    """Every start tag with its attributes, and the text a reader would see."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

        self._hidden = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        self._hidden += tag in ("style", "title")

    def handle_endtag(self, tag: str) -> None:
        self._hidden -= tag in ("style", "title")

    def handle_data(self, data: str) -> None:
        if not self._hidden:
            self.text.append(data)

    @property
    def visible(self) -> str:
        return " ".join(" ".join(self.text).split())


def parsed(html: str) -> _Tags:
    parser = _Tags()
    parser.feed(html)
    return parser


class TestHtml:
    def test_everything_from_the_ruleset_is_escaped(self, ruleset: Ruleset) -> None:
        """A script containing <script> shows as text: no script element, and the reader sees the raw words."""
        html = render(ruleset, "html")
        doc = parsed(html)
        assert [tag for tag, _ in doc.tags if tag in ("script", "b", "nice", "risk")] == []
        assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt; &amp; &lt;b&gt;bold&lt;/b&gt;" in html
        visible = doc.visible
        assert HOSTILE_SCRIPT in visible
        assert "Conduct <Risk> & Co" in visible
        assert "Be <nice>" in visible

    def test_self_contained(self) -> None:
        """Nothing to fetch: no URL, no external stylesheet, script, image or font; the CSS is inline."""
        html = render(load_ruleset_file(BUNDLED), "html")
        assert "http://" not in html
        assert "https://" not in html
        assert "url(" not in html
        assert "@import" not in html
        for tag, attrs in parsed(html).tags:
            assert tag not in ("script", "link", "img", "iframe", "object", "embed")
            assert "src" not in attrs, tag
            href = attrs.get("href")
            assert href is None or href.startswith("#"), href
        assert "<style>" in html
        assert "default-src 'none'" in html

    def test_printable(self) -> None:
        html = render(load_ruleset_file(BUNDLED), "html")
        print_css = html[html.index("@media print") :]
        assert re.search(r"\.item[^{]*\{[^}]*break-inside: avoid", print_css)
        assert "page-break-inside: avoid" in print_css
        # Coverage is a word in its cell; the colour and mark beside it only repeat it.
        assert 'class="exercised-' not in html or ">yes<" in html or ">no<" in html

    def test_the_reviewers_content(self) -> None:
        """Metadata, full hash, each rule's sentence with id, priority and reason, scripts, policies, sign-off."""
        bundled = load_ruleset_file(BUNDLED)
        html = render(bundled, "html", source_file="rulesets/retail-banking.yaml")
        visible = parsed(html).visible
        assert hashlib.sha256(BUNDLED.read_bytes()).hexdigest() in visible
        assert f"Version {bundled.meta.version}" in visible
        assert bundled.meta.owner in visible
        assert "Answers valid for 4 hours" in visible
        for rule in bundled.rules:
            assert wording.rule_text(rule, bundled) in visible
            assert f"{rule.id} priority {rule.priority}" in visible
            assert f"Reason shown to the agent: \u201c{rule.reason}\u201d" in visible
        for action in bundled.actions.values():
            for channel in Channel:
                script = action.scripts.get(channel)
                if script is None:
                    label = "Outbound dialer" if channel is Channel.OUTBOUND_DIALER else "Agent desktop"
                    assert f"{label} Not offered on the {label.lower()}." in visible
                else:
                    assert script in visible
        for _, sentence in wording.policy_texts(bundled):
            assert " ".join(sentence.split()) in visible
        assert "Offered only while there is an unexpired large deposit event, and for at most 3 days" in visible
        assert visible.endswith("Reviewer Name Role Date Signature Approver Name Role Date Signature")
        assert visible.index("Sign-off") > visible.index("Scenario test coverage")


class TestCoverage:
    def test_table(self, ruleset: Ruleset, evidence: ScenarioEvidence) -> None:
        """Three cases: greet fires in all three, big-deposit in one, the suppression never acts."""
        md = render(ruleset, "markdown", evidence)
        assert "3 cases from `render-test.tests.yaml`" in md
        assert "2 passed, **1 failed**" in md
        assert "**Failing cases:** a wrong expectation." in md
        assert "Exercised: rules 2 of 2, actions 2 of 2, policies 0 of 2." in md
        assert "| Rule | `greet-everyone` | yes | 3: everyone is greeted; a deposit brings rates first; ... |" in md
        assert "| Rule | `big-deposit` | yes | 1: a deposit brings rates first |" in md
        assert "| Policy | `lost` | **NO** | none |" in md
        assert "| Policy | `consent:agent_desktop` | **NO** | none |" in md

    def test_no_tests_file(self, ruleset: Ruleset) -> None:
        md = render(ruleset, "markdown", ScenarioEvidence("x/render-test.tests.yaml", None))
        assert "**No scenario tests: `x/render-test.tests.yaml` does not exist.**" in md
        html = render(ruleset, "html", ScenarioEvidence("x/render-test.tests.yaml", None))
        assert "No scenario tests: <code>x/render-test.tests.yaml</code> does not exist." in html

    def test_not_run(self, ruleset: Ruleset) -> None:
        """Rendered without running the cases (as a stored version may be), the document does not claim none exist."""
        md = render(ruleset, "markdown")
        assert "Scenario tests were not run for this copy of the document" in md
        assert "No scenario tests" not in md


class TestMarkdown:
    def test_pipes_and_markup_are_escaped(self, ruleset: Ruleset) -> None:
        md = render(ruleset, "markdown")
        row = next(line for line in md.splitlines() if line.startswith("| Agent desktop | Say"))
        assert row == (
            '| Agent desktop | Say \\<script\\>alert("x")\\</script\\> & \\<b\\>bold\\</b\\> \\| not a column |'
        )
        assert len(re.findall(r"(?<!\\)\|", row)) == 3
        assert "| Owner | Conduct \\<Risk\\> & Co |" in md
        assert "| Description | A ruleset \\| for tests |" in md

    def test_escaping(self) -> None:
        assert markdown_text("a|b *c* [d](e) `f` <g>\\ \n h") == "a\\|b \\*c\\* \\[d\\](e) \\`f\\` \\<g\\>\\\\ h"

    def test_the_reviewers_content(self) -> None:
        bundled = load_ruleset_file(BUNDLED)
        md = render(bundled, "markdown")
        assert f"`sha256 {bundled.content_hash}`" in md
        rule = next(r for r in bundled.rules if r.id == "large-deposit-term-deposit")
        assert f"### `{rule.id}` (priority {rule.priority})\n\n{wording.rule_text(rule, bundled)}\n" in md
        assert "| Outbound dialer | _Not offered on the outbound dialer._ |" in md
        assert f"| `lost-customers` | Suppression | {wording.policy_text(bundled, 'lost-customers')} |" in md
        assert "    Signature: ____" in md


def cli(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, ["rulesets", "render", *args], catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


class TestCommand:
    def test_stdout_by_default(self) -> None:
        code, out, _ = cli(str(BUNDLED))
        assert code == 0
        assert out.startswith("# Ruleset retail-banking, version")
        assert "cases from" in out
        assert "passed" in out

    def test_output_file(self, tmp_path: Path) -> None:
        source = tmp_path / "render-test.yaml"
        source.write_text(RULESET, "utf-8")
        target = tmp_path / "review.html"
        code, out, _ = cli(str(source), "--format", "html", "-o", str(target))
        assert code == 0
        digest = hashlib.sha256(RULESET.encode("utf-8")).hexdigest()
        assert out == f"wrote {target}: render-test 3.1.4 as html, sha256 {digest[:12]}\n"
        html = target.read_text("utf-8")
        assert html.startswith("<!DOCTYPE html>")
        assert f"sha256 {digest}" in html

    def test_tests_file_names_its_ruleset(self, tmp_path: Path) -> None:
        (tmp_path / "render-test.yaml").write_text(RULESET, "utf-8")
        (tmp_path / "render-test.tests.yaml").write_text(TESTS, "utf-8")
        code, out, _ = cli(str(tmp_path / "render-test.tests.yaml"))
        assert code == 0
        assert "3 cases from" in out

    def test_without_tests(self, tmp_path: Path) -> None:
        (tmp_path / "render-test.yaml").write_text(RULESET, "utf-8")
        code, out, _ = cli(str(tmp_path / "render-test.yaml"))
        assert code == 0
        assert f"**No scenario tests: `{tmp_path / 'render-test.tests.yaml'}` does not exist.**" in out

    def test_missing_directory_is_an_error(self, tmp_path: Path) -> None:
        target = tmp_path / "absent" / "review.md"
        code, out, err = cli(str(BUNDLED), "-o", str(target))
        assert code == 2
        assert out == ""
        assert f"cannot write {target}: directory {target.parent} does not exist" in err
        assert not target.parent.exists()

    def test_bad_ruleset_gives_the_loaders_problems(self, tmp_path: Path) -> None:
        bad = tmp_path / "bad.yaml"
        bad.write_text(RULESET.replace("action: rates,", "action: no-such-action,"), "utf-8")
        code, out, err = cli(str(bad))
        assert code == 2
        assert out == ""
        assert re.search(rf"{re.escape(str(bad))}:\d+: .*no-such-action", err), err
        assert "nothing rendered" in err

    def test_bad_tests_file_is_invalid_too(self, tmp_path: Path) -> None:
        (tmp_path / "render-test.yaml").write_text(RULESET, "utf-8")
        (tmp_path / "render-test.tests.yaml").write_text(TESTS.replace("[greet]", "[no-such-action]"), "utf-8")
        code, _, err = cli(str(tmp_path / "render-test.yaml"))
        assert code == 2
        assert "no-such-action" in err

    def test_missing_file(self, tmp_path: Path) -> None:
        code, _, err = cli(str(tmp_path / "nothing.yaml"))
        assert code == 2
        assert "no such file or directory" in err


POLICY_MODEL = """\
ruleset: {name: policy-model, version: 1.0.0, owner: Conduct, description: Purposes and a mandatory notice}
fields:
  - {name: arrears_days, type: number}
  - {name: consent_marketing, type: boolean}
  - {name: consent_calls, type: boolean}
purposes:
  - {id: marketing, description: Selling, categories: [cross_sell]}
  - {id: regulatory, description: Notices the law requires, categories: [compliance]}
  - {id: service, description: Unused on purpose, categories: [service]}
actions:
  - {id: arrears-notice, category: compliance, type: mandatory,
     scripts: {agent_desktop: Read the notice., outbound_dialer: Read the notice.}}
  - {id: savings-offer, category: cross_sell, scripts: {agent_desktop: Savings., outbound_dialer: Savings.}}
rules:
  - {id: arrears, description: d, reason: Arrears, priority: 900, action: arrears-notice,
     when: {all: [{field: arrears_days, op: gte, value: 30}]}}
  - {id: savings, description: d, reason: Save, priority: 50, action: savings-offer,
     when: {all: [{field: arrears_days, op: lt, value: 30}]}}
policies:
  consent:
    - {field: consent_marketing, channel: agent_desktop, purposes: [marketing], directions: [inbound]}
    - {field: consent_calls, channel: outbound_dialer}
  frequency_caps:
    - {id: marketing-out, purpose: marketing, direction: outbound, max: 2, within: 7d}
  suppressions:
    - {id: arrears-only, description: In arrears we only give notices, except_purposes: [service],
       when: {all: [{field: arrears_days, op: gte, value: 60}]}, directions: [outbound]}
  constraints:
    - {id: two-declines, purpose: marketing, outcomes: [declined], after: 2, within: 90d}
"""


@pytest.fixture(scope="module")
def model() -> Ruleset:
    return load_ruleset_text(POLICY_MODEL, "policy-model.yaml")


class TestContactPolicyModel:
    """Purposes with the consent each needs, mandatory notices marked, constraints and do-not-contact listed."""

    def test_markdown_purposes_and_the_consent_they_need(self, model: Ruleset) -> None:
        md = render(model, "markdown")
        assert "| Contents | 2 rules, 2 actions, 3 purposes, 5 contact policies |" in md
        assert "| `marketing` | Selling | cross sell | savings-offer |" in md
        assert "| `service` | Unused on purpose | service | _none_ |" in md
        assert "| `marketing` | Agent desktop | The customer contacts us | `consent_marketing` |" in md
        assert "| `marketing` | Agent desktop | We contact the customer | _none_ |" in md
        assert "| `marketing` | Outbound dialer | We contact the customer | `consent_calls` |" in md
        assert "| `regulatory` | Outbound dialer | We contact the customer | `consent_calls` |" in md
        # A dialer never takes a call in, so that row would be a promise about nothing.
        assert "Outbound dialer | The customer contacts us" not in md

    def test_markdown_marks_mandatory_notices(self, model: Ruleset) -> None:
        md = render(model, "markdown")
        assert "### `arrears` (priority 900, mandatory notice)" in md
        assert "### `savings` (priority 50)\n" in md
        assert "### Arrears notice (`arrears-notice`): MANDATORY NOTICE\n\n**Mandatory notice: ranks above" in md
        assert "Category: compliance. Purpose: `regulatory`." in md
        assert "### Savings offer (`savings-offer`)\n\nCategory: cross sell. Purpose: `marketing`." in md

    def test_markdown_policies_of_every_new_kind(self, model: Ruleset) -> None:
        md = render(model, "markdown")
        for policy_id, kind in (
            ("consent:marketing:agent_desktop:inbound", "Consent"),
            ("marketing-out", "Frequency cap"),
            ("arrears-only", "Suppression"),
            ("two-declines", "Constraint"),
        ):
            assert f"| `{policy_id}` | {kind} | {markdown_text(wording.policy_text(model, policy_id))} |" in md
        assert "constraint pauses; frequency caps. A mandatory notice skips the suppressions" in md
        assert "the service's own do-not-contact listings (`do_not_contact`, kept by the service" in md

    def test_html(self, model: Ruleset) -> None:
        html = render(model, "html")
        doc = parsed(html)
        assert 'href="#purposes"' in html
        assert '<section id="purposes">' in html
        assert '<article class="item action mandatory" id="action-arrears-notice">' in html
        assert '<article class="item rule mandatory" id="rule-arrears">' in html
        visible = doc.visible
        assert "Arrears notice MANDATORY NOTICE category: compliance, purpose: regulatory" in visible
        assert "arrears priority 900, mandatory notice" in visible
        assert "marketing Agent desktop The customer contacts us consent_marketing" in visible
        assert "do_not_contact Do not contact (kept by the service for every ruleset)" in visible
        assert "two-declines Constraint " + wording.policy_text(model, "two-declines") in visible

    def test_a_ruleset_without_purposes_has_no_purposes_section(self, ruleset: Ruleset) -> None:
        assert "Purposes and the consent they need" not in render(ruleset, "markdown")
        assert 'id="purposes"' not in render(ruleset, "html")
        assert "MANDATORY" not in render(ruleset, "markdown")


MEASURED = """\
ruleset: {name: measured, version: 1.0.0, owner: Conduct, description: "Conversions, values and holdouts"}
fields:
  - {name: balance, type: number}
events:
  - type: product_opened
    attributes: [{name: product, type: string}, {name: amount, type: number}]
  - type: referral_made
    attributes: [{name: product, type: string}]
actions:
  - id: savings-offer
    category: cross_sell
    scripts: {agent_desktop: Savings.}
    conversion: {event: product_opened, within: 30d, when: {all: [{field: product, op: eq, value: savings},
                                                               {field: amount, op: gte, value: 100}]}}
    value: 40
  - id: referral-ask
    category: referral
    scripts: {agent_desktop: Ask.}
    conversion: {event: referral_made, within: 14d}
  - id: card-offer
    category: cross_sell
    scripts: {agent_desktop: Card.}
    value: 90
  - id: card-help
    category: service
    scripts: {agent_desktop: Help.}
holdouts:
  period: 30d
  seed: spring-2026
  shares:
    - {action: savings-offer, share: 0.125}
    - {action: card-offer, share: 0.05}
rules:
  - {id: savings, description: d, reason: Save, priority: 50, action: savings-offer,
     when: {all: [{field: balance, op: gte, value: 1000}]}}
  - {id: referral, description: d, reason: Ask, priority: 40, action: referral-ask,
     when: {all: [{field: balance, op: exists}]}}
  - {id: card, description: d, reason: Card, priority: 30, action: card-offer,
     when: {all: [{field: balance, op: exists}]}}
  - {id: help, description: d, reason: Help, priority: 30, action: card-help,
     when: {all: [{field: balance, op: exists}]}}
"""


@pytest.fixture(scope="module")
def measured() -> Ruleset:
    return load_ruleset_text(MEASURED, "measured.yaml")


class TestMeasurement:
    """Each action shows its conversion, value and holdout share in words; a holdouts section lists the programme."""

    def test_markdown_actions(self, measured: Ruleset) -> None:
        md = render(measured, "markdown")
        assert (
            "Measurement: Counts as converted: a product opened event whose product is “savings” and amount is at "
            "least 100, within 30 days of the decision. One conversion is worth 40 in the ruleset's currency. 12.5% "
            "of the customers it would be shown to are held out of it, drawn at random again every 30 days: the "
            "decision is recorded, the action is not shown and the next best takes its place.\n" in md
        )
        assert (
            "Measurement: Counts as converted: a referral made event, within 14 days of the decision. "
            "No customer is held out of this action.\n" in md
        )
        assert (
            "Measurement: No conversion is declared, so nothing is measured. One conversion is worth 90 in the "
            "ruleset's currency. 5% of the customers" in md
        )
        help_section = md.split("(`card-help`)")[1].split("### ")[0]
        assert "Measurement" not in help_section

    def test_markdown_holdouts_section(self, measured: Ruleset) -> None:
        md = render(measured, "markdown")
        section = md.split("## Holdouts\n")[1].split("## Contact policies")[0]
        assert section.startswith(
            "\nHeld out at random, per customer and action, again every 30 days (seed “spring-2026”): Savings offer "
            "12.5% and Card offer 5%.\n"
        )
        assert "| Period | 30 days, counted from 1970-01-01 UTC; each period draws again |" in section
        assert "| Seed | `spring-2026` |" in section
        assert (
            "| Savings offer (`savings-offer`) | 12.5% | a product opened event whose product is “savings” and "
            "amount is at least 100, within 30 days of the decision |" in section
        )
        assert "| Card offer (`card-offer`) | 5% | **no conversion: nothing is measured** |" in section
        assert "referral-ask" not in section
        assert "card-help" not in section
        assert "Service, compliance and mandatory actions are never held out." in section

    def test_html(self, measured: Ruleset) -> None:
        html = render(measured, "html")
        visible = parsed(html).visible
        assert 'href="#holdouts"' in html
        assert '<section id="holdouts">' in html
        assert '<tr id="holdout-savings-offer">' in html
        assert "Measurement: Counts as converted: a product opened event whose product is “savings”" in visible
        assert "Card offer ( card-offer ) 5% no conversion: nothing is measured" in visible
        assert "Seed spring-2026" in visible

    def test_no_holdouts_no_section(self, ruleset: Ruleset) -> None:
        assert "## Holdouts" not in render(ruleset, "markdown")
        assert 'id="holdouts"' not in render(ruleset, "html")
        assert "Measurement" not in render(ruleset, "markdown")

    def test_the_bundled_ruleset(self) -> None:
        bundled = load_ruleset_file(BUNDLED)
        card = bundled.actions["credit-card-offer"]
        assert card.holdout > 0, "the bundled ruleset holds out the credit card offer"
        md = render(bundled, "markdown")
        assert (
            f"| Credit card offer (`credit-card-offer`) | {wording.share_text(card.holdout)} | a product opened event "
            "whose product is “credit card”, within 30 days of the decision |" in md
        )


def test_the_command_offers_exactly_the_renderer_s_formats() -> None:
    """render_cli spells the formats out so that `nba` does not import the renderer for every command."""
    assert render_cli.FORMATS == FORMATS
