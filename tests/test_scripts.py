"""No raw trigger data reaches an agent or a dialer: scripts come from action text and an allow-list only."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nba_service.app import activate
from nba_service.domain.loader import load_ruleset_file
from nba_service.domain.model import Action, Channel, Ruleset
from nba_service.domain.pipeline import ActiveRuleset
from nba_service.domain.profile import Profile
from nba_service.domain.scripts import render
from nba_service.service import DecisionService
from nba_service.stores.group_commit import GroupCommitWriter
from nba_service.stores.sqlite import SqliteStore
from nba_service.synthetic import SAMPLE_PATH, read_sample

BUNDLED = Path(__file__).resolve().parent.parent / "rulesets" / "retail-banking.yaml"


@pytest.fixture(scope="module")
def ruleset() -> Ruleset:
    return load_ruleset_file(BUNDLED)


@pytest.fixture(scope="module")
def active(ruleset: Ruleset) -> Iterator[ActiveRuleset]:
    loaded = activate(ruleset)
    yield loaded
    loaded.engine.close()


class TestRender:
    ACTION = Action("a", "service", {Channel.AGENT_DESKTOP: "Thank {first_name} for choosing our {product_name}."})

    @pytest.mark.parametrize(
        ("first_name", "expected"),
        [
            ("Zoë", "Thank Zoë for"),
            ("  José   María ", "Thank José María for"),
            ("Acct 48250", "Thank the customer for"),
            ("x" * 61, "Thank the customer for"),
            ("<script>", "Thank the customer for"),
            ("new\x00line", "Thank the customer for"),
            (None, "Thank the customer for"),
            (12, "Thank the customer for"),
        ],
    )
    def test_allow_listed_fields_are_cleaned(self, first_name: object, expected: str) -> None:
        """Only short, digit-free names pass; anything else falls back to neutral words."""
        text = render(
            self.ACTION, Channel.AGENT_DESKTOP, {"first_name": first_name, "product_name": "Everyday Account"}
        )  # type: ignore[dict-item]
        assert text.startswith(expected)
        assert text.endswith("our Everyday Account.")


MARKER = st.text(alphabet="BCDFGHJKLMNPQRSTVWXZ", min_size=6, max_size=10).map(lambda s: "Qx" + s)
NUMBERS = st.one_of(
    st.floats(min_value=10_000, max_value=9e6, allow_nan=False).map(lambda v: round(v, 2)),
    st.integers(10_000, 10**9),
)


def _spellings(value: object) -> set[str]:
    if isinstance(value, str):
        return {value}
    number = float(value)  # type: ignore[arg-type]
    forms = {repr(value), f"{number:,.2f}", f"{number:.2f}", f"{int(number):,}", str(int(number))}
    return {f for f in forms if len(f) >= 5}


@pytest.fixture(scope="module")
def pool() -> list[Profile]:
    """Customers who can be offered something on the desktop, so every example has scripts to inspect."""
    return [
        p
        for p in read_sample(SAMPLE_PATH, datetime.now(UTC))
        if p.attributes.get("consent_agent_offers") is True
        and p.attributes.get("stage") not in ("lost",)
        and p.attributes.get("vulnerable") is False
        and p.attributes.get("complaint_open") is False
    ]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_no_event_attribute_value_ever_appears_in_a_script(
    ruleset: Ruleset,
    active: ActiveRuleset,
    pool: list[Profile],
    tmp_path_factory: pytest.TempPathFactory,
    data: st.DataObject,
) -> None:
    """Every declared event, with unmistakable attribute values, on many customers and both channels:
    no value appears in any script or reason returned, though the decision log keeps them for auditors."""
    indices = data.draw(st.lists(st.integers(0, len(pool) - 1), min_size=3, max_size=8, unique=True), label="customers")
    customers = [pool[i] for i in indices]
    workdir = tmp_path_factory.mktemp("db")
    exported: list[str] = []

    async def scenario() -> tuple[set[str], list[str]]:
        store = SqliteStore(workdir / "nba.db", event_types=tuple(ruleset.events), history=timedelta(days=90))
        await store.open(lambda: customers)
        decision_log = GroupCommitWriter(store, timeout=5, spill_dir=workdir)
        await decision_log.start()
        service = DecisionService(store, decision_log, active)
        secrets: set[str] = set()
        texts: list[str] = []
        for customer in customers:
            for event in ruleset.events.values():
                attributes: dict[str, object] = {}
                for attribute in event.attributes:
                    if attribute.type == "number":
                        attributes[attribute.name] = data.draw(NUMBERS)
                    elif attribute.type == "string":
                        attributes[attribute.name] = data.draw(MARKER)
                    else:
                        attributes[attribute.name] = data.draw(st.booleans())
                for value in attributes.values():
                    if not isinstance(value, bool):
                        secrets |= _spellings(value)
                await service.ingest_event(customer.customer_id, event.type, attributes, None, None)  # type: ignore[arg-type]
            for channel in Channel:
                decision = await service.decide(customer.customer_id, channel, max_actions=20)
                texts += [a.script for a in decision.actions] + [a.reason for a in decision.actions]
        await decision_log.close()
        async for item in store.export(None, None, None):
            exported.append(json.dumps(item, ensure_ascii=False))
        await store.close()
        return secrets, texts

    secrets, texts = asyncio.run(scenario())
    assert texts, "no actions were returned, so nothing was checked"
    leaks = [(s, t) for t in texts for s in secrets if s in t]
    assert not leaks
    logged = "\n".join(exported)
    assert any(s in logged for s in secrets), "the decision log should keep the values the rules read"
    for line in exported:
        record = json.loads(line)
        for action in record["actions"]:
            assert not any(s in action["script"] for s in secrets)
