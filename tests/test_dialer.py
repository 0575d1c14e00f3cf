"""Dialer campaigns without a server: call windows, numbers, exclusions, segments, the file layouts and the
disposition import's checks."""

from __future__ import annotations

import csv
import io
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from nba_service._proto.nba.v1 import nba_pb2
from nba_service.dialer_files import (
    GENERIC_COLUMNS,
    VICIDIAL_COLUMNS,
    CallRow,
    Disposition,
    call_line,
    outcome_key,
    parse_dispositions,
    split_number,
)
from nba_service.domain.contact_points import PhoneNumber, PhoneType, e164_problem, phone_problems
from nba_service.domain.dialer import (
    DEFAULT_LEGAL_WINDOW,
    Exclusion,
    LegalWindow,
    allowed_intervals,
    call_window,
    choose_number,
    exclusion,
    idempotency_key,
    own_calls_removed,
    parse_legal_window,
    pending_call,
)
from nba_service.domain.loader import load_ruleset_file
from nba_service.domain.model import Channel, QuietHours, Ruleset
from nba_service.domain.pipeline import Evaluation
from nba_service.domain.profile import OutcomeKind, Profile
from nba_service.domain.records import DecidedAction, DecisionRecord, Delivery, DroppedCandidate, RulesetRef
from nba_service.domain.segments import parse_segment
from nba_service.errors import InvalidArgument, Problems

RULESET = Path(__file__).resolve().parents[1] / "rulesets" / "retail-banking.yaml"


@pytest.fixture(scope="module")
def ruleset() -> Ruleset:
    return load_ruleset_file(RULESET)


def _with_quiet(ruleset: Ruleset, start: str | None, end: str = "") -> Ruleset:
    if start is None:
        return replace(ruleset, policies=replace(ruleset.policies, quiet_hours=None))
    minutes = [int(t[:2]) * 60 + int(t[3:]) for t in (start, end)]
    quiet = QuietHours(minutes[0], minutes[1], "timezone", "Europe/London")
    return replace(ruleset, policies=replace(ruleset.policies, quiet_hours=quiet))


def _customer(zone: str, *phones: PhoneNumber) -> Profile:
    return Profile("CUST-1", {"timezone": zone}, phones=phones)


class TestE164:
    @pytest.mark.parametrize("number", ["+447700900123", "+12125550100", "+6591234567", "+123456789012345"])
    def test_well_formed_numbers_pass(self, number: str) -> None:
        assert e164_problem(number) is None

    @pytest.mark.parametrize(
        "number",
        ["447700900123", "+0447700900123", "+44 7700 900123", "+1234567", "+1234567890123456", "+44770090012x", ""],
    )
    def test_anything_else_is_refused_with_the_rule_in_words(self, number: str) -> None:
        problem = e164_problem(number)
        assert problem is not None
        assert "not E.164" in problem

    def test_a_final_newline_does_not_slip_through(self) -> None:
        assert e164_problem("+447700900123\n") is not None

    def test_a_list_names_each_bad_position_and_duplicates(self) -> None:
        phones = (
            PhoneNumber("+447700900123", PhoneType.MOBILE, True),
            PhoneNumber("07700900123", PhoneType.HOME, True),
            PhoneNumber("+447700900123", PhoneType.WORK, True),
        )
        problems = phone_problems(phones)
        assert [p.split(":")[0] for p in problems] == ["phones[1]", "phones[2]"]
        assert "listed twice" in problems[1]


class TestCallWindow:
    def test_the_default_quiet_hours_across_midnight_leave_nine_to_eight(self, ruleset: Ruleset) -> None:
        """Quiet 20:00-09:00 (spanning midnight) inside the legal 08:00-21:00 leaves 09:00-20:00."""
        assert allowed_intervals(ruleset, DEFAULT_LEGAL_WINDOW) == [(9 * 60, 20 * 60)]

    def test_quiet_hours_within_the_day_split_the_window(self, ruleset: Ruleset) -> None:
        lunch = _with_quiet(ruleset, "12:00", "13:30")
        assert allowed_intervals(lunch, DEFAULT_LEGAL_WINDOW) == [(8 * 60, 12 * 60), (13 * 60 + 30, 21 * 60)]
        at = datetime(2026, 6, 10, 11, 0, tzinfo=UTC)  # 12:00 in London (BST): the lunch pause has begun
        window = call_window(lunch, _customer("Europe/London"), at, DEFAULT_LEGAL_WINDOW)
        assert window is not None
        assert window.earliest.isoformat() == "2026-06-10T13:30:00+01:00"
        assert window.latest.isoformat() == "2026-06-10T21:00:00+01:00"

    def test_without_quiet_hours_the_legal_window_alone_applies(self, ruleset: Ruleset) -> None:
        none = _with_quiet(ruleset, None)
        at = datetime(2026, 6, 10, 5, 0, tzinfo=UTC)
        window = call_window(none, _customer("America/New_York"), at, parse_legal_window("08:00-21:00"))
        assert window is not None
        assert window.time_zone == "America/New_York"
        assert window.earliest.isoformat() == "2026-06-10T08:00:00-04:00"

    @pytest.mark.parametrize(
        ("zone", "day", "earliest", "latest"),
        [
            # Clocks go forward at 01:00 UTC: the local day has 23 hours, the window is still 09:00-20:00 local.
            (
                "Europe/London",
                datetime(2026, 3, 29, 6, 0, tzinfo=UTC),
                "2026-03-29T09:00:00+01:00",
                "2026-03-29T20:00:00+01:00",
            ),
            # Clocks go back: 25 hours, and the window starts at 09:00 GMT.
            (
                "Europe/London",
                datetime(2026, 10, 25, 6, 0, tzinfo=UTC),
                "2026-10-25T09:00:00+00:00",
                "2026-10-25T20:00:00+00:00",
            ),
            (
                "America/New_York",
                datetime(2026, 3, 8, 11, 0, tzinfo=UTC),
                "2026-03-08T09:00:00-04:00",
                "2026-03-08T20:00:00-04:00",
            ),
            (
                "Australia/Sydney",
                datetime(2026, 4, 4, 20, 0, tzinfo=UTC),
                "2026-04-05T09:00:00+10:00",
                "2026-04-05T20:00:00+10:00",
            ),
        ],
    )
    def test_a_dst_day_keeps_the_local_wall_clock(
        self, ruleset: Ruleset, zone: str, day: datetime, earliest: str, latest: str
    ) -> None:
        window = call_window(ruleset, _customer(zone), day, DEFAULT_LEGAL_WINDOW)
        assert window is not None
        assert (window.earliest.isoformat(), window.latest.isoformat()) == (earliest, latest)
        assert window.time_zone == zone

    def test_inside_the_window_it_starts_now(self, ruleset: Ruleset) -> None:
        at = datetime(2026, 12, 3, 13, 31, 20, tzinfo=UTC)
        window = call_window(ruleset, _customer("Europe/London"), at, DEFAULT_LEGAL_WINDOW)
        assert window is not None
        assert window.earliest == at
        assert window.latest == datetime(2026, 12, 3, 20, 0, tzinfo=UTC)

    def test_nothing_left_today_is_none(self, ruleset: Ruleset) -> None:
        none = _with_quiet(ruleset, "23:00", "06:00")
        at = datetime(2026, 12, 3, 21, 30, tzinfo=UTC)  # after the legal window, before quiet hours
        assert call_window(none, _customer("Europe/London"), at, DEFAULT_LEGAL_WINDOW) is None

    def test_an_unknown_zone_falls_back_to_the_rulesets_default(self, ruleset: Ruleset) -> None:
        at = datetime(2026, 12, 3, 10, 0, tzinfo=UTC)
        window = call_window(ruleset, _customer("Mars/Olympus"), at, DEFAULT_LEGAL_WINDOW)
        assert window is not None
        assert window.time_zone == "Europe/London"

    @pytest.mark.parametrize("text", ["8-21", "21:00-08:00", "08:00-08:00", "08:00-25:00", "08:60-21:00"])
    def test_a_bad_legal_window_is_refused(self, text: str) -> None:
        with pytest.raises(ValueError, match=r"HH:MM|after the start"):
            parse_legal_window(text)

    def test_a_legal_window_reads_back(self) -> None:
        assert parse_legal_window("07:30-24:00") == LegalWindow(450, 1440)
        assert str(DEFAULT_LEGAL_WINDOW) == "08:00-21:00"


class TestNumbersAndExclusions:
    def test_the_first_consented_number_that_is_not_wrong_is_chosen(self) -> None:
        profile = _customer(
            "Europe/London",
            PhoneNumber("+447700900001", PhoneType.MOBILE, consent=False),
            PhoneNumber("+447700900002", PhoneType.HOME, consent=True, wrong_number=True),
            PhoneNumber("+447700900003", PhoneType.WORK, consent=True),
        )
        chosen = choose_number(profile)
        assert chosen is not None
        assert chosen.number == "+447700900003"
        assert choose_number(_customer("Europe/London", profile.phones[0], profile.phones[1])) is None

    def test_the_most_important_policy_is_the_reason(self) -> None:
        drops = (
            DroppedCandidate("r1", "a1", "frequency_cap", "dialer-daily: at most 1"),
            DroppedCandidate("r2", "a2", "do_not_call", "do_not_call is not false"),
            DroppedCandidate("r3", "a3", "suppression", "lost-customers: ..."),
        )
        evaluation = Evaluation((), (), drops, "reference", ())
        assert exclusion(evaluation) == (Exclusion.DO_NOT_CALL, "do_not_call is not false")
        assert exclusion(Evaluation((), (), (), "reference", ())) == (
            Exclusion.NO_ACTION,
            "no rule matched this customer",
        )

    def test_a_do_not_contact_listing_outranks_every_other_reason(self) -> None:
        """Wherever the pipeline puts the listing's drop, the exclusion names it, with the policy's words."""
        drops = (
            DroppedCandidate("r1", "a1", "do_not_call", "do_not_call is not false"),
            DroppedCandidate("r2", "a2", "do_not_contact", "listed (bereavement)", "policy", "do_not_contact"),
        )
        evaluation = Evaluation((), (), drops, "reference", ())
        assert exclusion(evaluation) == (Exclusion.DO_NOT_CONTACT, "listed (bereavement)")

    def test_a_constraint_pause_is_its_own_reason_above_a_cap(self) -> None:
        drops = (
            DroppedCandidate("r1", "a1", "frequency_cap", "dialer-daily: at most 1", "policy", "dialer-daily"),
            DroppedCandidate("r2", "a2", "constraint", "no-answers: paused", "policy", "dialer-no-answer-pause"),
        )
        evaluation = Evaluation((), (), drops, "reference", ())
        assert exclusion(evaluation) == (Exclusion.CONSTRAINT, "no-answers: paused")
        assert nba_pb2.ExclusionReason.Value(Exclusion.CONSTRAINT.value.upper()) == nba_pb2.CONSTRAINT

    def test_the_key_is_stable_and_depends_on_every_part(self) -> None:
        key = idempotency_key("spring", "CUST-1", "welcome-call", "+447700900001")
        assert key == idempotency_key("spring", "CUST-1", "welcome-call", "+447700900001")
        others = {
            idempotency_key("autumn", "CUST-1", "welcome-call", "+447700900001"),
            idempotency_key("spring", "CUST-2", "welcome-call", "+447700900001"),
            idempotency_key("spring", "CUST-1", "loyalty-thanks", "+447700900001"),
            idempotency_key("spring", "CUST-1", "welcome-call", "+447700900002"),
        }
        assert key not in others
        assert len(others) == 4


class TestSegments:
    def test_conditions_are_typed_by_the_declared_field(self, ruleset: Ruleset) -> None:
        problems = Problems()
        segment = parse_segment(ruleset, {"segment": "premier", "has_mortgage": "true", "age": "40"}, False, problems)
        assert not problems
        assert dict(segment.equals) == {"segment": "premier", "has_mortgage": True, "age": 40.0}
        assert segment.describe() == "age=40 and has_mortgage=true and segment=premier"

    def test_every_problem_is_named(self, ruleset: Ruleset) -> None:
        problems = Problems()
        parse_segment(
            ruleset,
            {"segmnet": "mass", "age": "old", "segment": "gold", "do_not_call": "false", "has_savings": "yes"},
            False,
            problems,
        )
        with pytest.raises(InvalidArgument) as caught:
            problems.raise_if_any()
        fields = {p.field: p.problem for p in caught.value.problems}
        assert set(fields) == {
            "segment.equals[segmnet]",
            "segment.equals[age]",
            "segment.equals[segment]",
            "segment.equals[do_not_call]",
            "segment.equals[has_savings]",
        }
        assert "contact permission" in fields["segment.equals[do_not_call]"]

    def test_no_condition_and_not_everyone_is_refused(self, ruleset: Ruleset) -> None:
        problems = Problems()
        parse_segment(ruleset, {}, False, problems)
        assert problems


ROW = CallRow(
    phone="+12125550142",
    phone_type="mobile",
    customer_id="CUST-000007",
    time_zone="America/New_York",
    earliest_local="2026-12-03T09:00:00-05:00",
    latest_local="2026-12-03T20:00:00-05:00",
    priority=1,
    action_id="welcome-call",
    script='Call Emma to welcome them, with a comma, and a "quote".',
    decision_id="6cf6feec-6c48-4431-a8ca-4bc945377caf",
    expires_at="2026-12-03T17:00:00Z",
    idempotency_key="nba1-59f89bcf5c5d271d2a723868af5afbf2",
)


class TestLayouts:
    def test_generic_is_the_documented_columns_and_survives_csv_quoting(self) -> None:
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(GENERIC_COLUMNS)
        writer.writerow(call_line("generic", ROW))
        back = list(csv.DictReader(io.StringIO(buffer.getvalue())))
        assert back[0]["script"] == ROW.script
        assert back[0]["phone"] == "+12125550142"
        assert back[0]["idempotency_key"] == ROW.idempotency_key

    def test_vicidial_splits_the_number_and_keeps_the_standard_order(self) -> None:
        fields = dict(zip(VICIDIAL_COLUMNS, call_line("vicidial", ROW, list_id=1001), strict=True))
        assert VICIDIAL_COLUMNS[:5] == ("vendor_lead_code", "source_id", "list_id", "phone_code", "phone_number")
        assert (fields["phone_code"], fields["phone_number"]) == ("1", "2125550142")
        assert fields["list_id"] == "1001"
        assert fields["security_phrase"] == ROW.idempotency_key
        assert fields["comments"] == ROW.script
        assert fields["nba_action_id"] == "welcome-call"

    @pytest.mark.parametrize(
        ("number", "split"), [("+447700900123", ("44", "7700900123")), ("+6598765432", ("65", "98765432"))]
    )
    def test_country_codes_of_any_length(self, number: str, split: tuple[str, str]) -> None:
        assert split_number(number) == split

    def test_a_value_vicidial_cannot_hold_is_refused_not_cut(self) -> None:
        with pytest.raises(ValueError, match="vendor_lead_code holds 20"):
            call_line("vicidial", replace(ROW, customer_id="C" * 30))
        with pytest.raises(ValueError, match="tab"):
            call_line("vicidial", replace(ROW, script="a\tb"))


DECISION = "6cf6feec-6c48-4431-a8ca-4bc945377caf"


def _rows(text: str, delimiter: str = ",") -> list[tuple[int, dict[str, str]]]:
    reader = csv.DictReader(io.StringIO(text), delimiter=delimiter)
    return [(reader.line_num, row) for row in reader]


class TestDispositions:
    def test_each_disposition_maps_to_an_outcome(self) -> None:
        text = (
            "decision_id,action_id,phone,disposition,outcome,time,note\n"
            f"{DECISION},a,+447700900001,no_answer,,2026-12-03T10:00:00Z,\n"
            f"{DECISION},a,+447700900001,busy,,2026-12-03T10:05:00Z,\n"
            f"{DECISION},a,+447700900001,answering_machine,,2026-12-03T10:10:00Z,\n"
            f"{DECISION},a,+447700900001,wrong_number,,2026-12-03T10:15:00Z,\n"
            f"{DECISION},a,+447700900002,connected,converted,2026-12-03T10:20:00+01:00,signed up\n"
        )
        rows, refused = parse_dispositions("generic", iter(_rows(text)), UTC)
        assert refused == []
        assert [(r.outcome, r.note) for r in rows] == [
            (OutcomeKind.NO_ANSWER, "no answer"),
            (OutcomeKind.NO_ANSWER, "busy"),
            (OutcomeKind.NO_ANSWER, "answering machine"),
            (OutcomeKind.NOT_OFFERED, "wrong number"),
            (OutcomeKind.CONVERTED, "signed up"),
        ]
        assert [r.wrong_number for r in rows] == ["", "", "", "+447700900001", ""]
        assert rows[4].time == datetime(2026, 12, 3, 9, 20, tzinfo=UTC)
        assert [r.line for r in rows] == [2, 3, 4, 5, 6]

    def test_every_malformed_row_is_refused_with_its_line(self) -> None:
        text = (
            "decision_id,action_id,phone,disposition,outcome,time,note\n"
            f"{DECISION},a,+447700900001,no_answer,,2026-12-03T10:00:00Z,\n"
            "nope,a,+447700900001,no_answer,,2026-12-03T10:00:00Z,\n"
            f"{DECISION},,+447700900001,hung_up,,yesterday,\n"
            f"{DECISION},a,07700900001,wrong_number,,2026-12-03T10:00:00Z,\n"
            f"{DECISION},a,+447700900001,connected,,2026-12-03T10:00:00Z,\n"
            f"{DECISION},a,+447700900001,busy,accepted,2026-12-03T10:00:00Z,\n"
            f"{DECISION},a,+447700900001,busy,,2026-12-03T10:00:00Z,,one too many\n"
        )
        rows, refused = parse_dispositions("generic", iter(_rows(text)), UTC)
        assert [r.line for r in rows] == [2]
        problems = {r.line: r.problem for r in refused}
        assert set(problems) == {3, 4, 5, 6, 7, 8}
        assert "not a decision id" in problems[3]
        assert "action_id" in problems[4]
        assert "hung_up" in problems[4]
        assert "yesterday" in problems[4]
        assert "not E.164" in problems[5]
        assert "needs an outcome" in problems[6]
        assert "only a connected call" in problems[7]
        assert "more fields" in problems[8]

    def test_the_same_row_gives_the_same_key_whatever_the_offset(self) -> None:
        one = outcome_key(DECISION, "a", Disposition.BUSY, "", datetime(2026, 12, 3, 10, tzinfo=UTC), "+4477009001")
        two = outcome_key(
            DECISION.upper(),
            "a",
            Disposition.BUSY,
            "",
            datetime(2026, 12, 3, 11, tzinfo=ZoneInfo("Europe/Paris")),
            "+4477009001",
        )
        later = outcome_key(
            DECISION, "a", Disposition.BUSY, "", datetime(2026, 12, 3, 10, tzinfo=UTC) + timedelta(seconds=1), ""
        )
        assert one == two != later

    def test_vicidial_statuses_and_local_times(self) -> None:
        text = (
            "source_id\tnba_action_id\tphone_code\tphone_number\tcall_date\tstatus\n"
            f"{DECISION}\ta\t44\t7700900001\t2026-12-03 10:00:00\tNA\n"
            f"{DECISION}\ta\t44\t7700900001\t2026-12-03 10:05:00\tDC\n"
            f"{DECISION}\ta\t44\t7700900001\t2026-12-03 10:10:00\tSALE\n"
            f"{DECISION}\ta\t44\t7700900001\t2026-12-03 10:15:00\tXYZ\n"
        )
        rows, refused = parse_dispositions("vicidial", iter(_rows(text, "\t")), ZoneInfo("America/New_York"))
        assert [r.outcome for r in rows] == [OutcomeKind.NO_ANSWER, OutcomeKind.NOT_OFFERED, OutcomeKind.CONVERTED]
        assert rows[1].wrong_number == "+447700900001"
        assert rows[0].time == datetime(2026, 12, 3, 15, 0, tzinfo=UTC)
        assert [r.line for r in refused] == [5]

    def test_genesys_results_and_wrap_up_codes(self) -> None:
        text = (
            "DecisionId,ActionId,Phone,CallRecordLastAttempt-Phone,CallRecordLastResult-Phone\n"
            f"{DECISION},a,+447700900001,2026-12-03T10:00:00Z,ININ-OUTBOUND-MACHINE\n"
            f"{DECISION},a,+447700900001,2026-12-03T10:05:00Z,Callback Requested\n"
            f"{DECISION},a,+447700900001,2026-12-03T10:10:00Z,ININ-OUTBOUND-SIT-UNCALLABLE\n"
            f"{DECISION},a,+447700900001,2026-12-03T10:15:00Z,Maybe\n"
        )
        rows, refused = parse_dispositions("genesys", iter(_rows(text)), UTC)
        assert [r.outcome for r in rows] == [
            OutcomeKind.NO_ANSWER,
            OutcomeKind.CALLBACK_REQUESTED,
            OutcomeKind.NOT_OFFERED,
        ]
        assert [r.line for r in refused] == [5]

    def test_not_now_in_every_layout(self) -> None:
        """ "Heard it, call me later" is NOT_NOW on each layout: the generic file's connected outcome, VICIdial's
        NOTNOW status (one to create; CALLBK stays a callback) and a Genesys wrap-up code named "Not Now"."""
        generic = (
            "decision_id,action_id,phone,disposition,outcome,time,note\n"
            f"{DECISION},a,+447700900001,connected,not_now,2026-12-03T10:00:00Z,\n"
        )
        vicidial = (
            "source_id\tnba_action_id\tphone_code\tphone_number\tcall_date\tstatus\n"
            f"{DECISION}\ta\t44\t7700900001\t2026-12-03 10:00:00\tNOTNOW\n"
            f"{DECISION}\ta\t44\t7700900001\t2026-12-03 10:05:00\tCALLBK\n"
        )
        genesys = (
            "DecisionId,ActionId,Phone,CallRecordLastAttempt-Phone,CallRecordLastResult-Phone\n"
            f"{DECISION},a,+447700900001,2026-12-03T10:00:00Z,Not Now\n"
        )
        found = {
            layout: parse_dispositions(layout, iter(_rows(text, "\t" if layout == "vicidial" else ",")), UTC)
            for layout, text in (("generic", generic), ("vicidial", vicidial), ("genesys", genesys))
        }
        assert all(refused == [] for _, refused in found.values())
        assert [(r.outcome, r.note) for r in found["generic"][0]] == [(OutcomeKind.NOT_NOW, "connected: not_now")]
        assert [r.outcome for r in found["vicidial"][0]] == [OutcomeKind.NOT_NOW, OutcomeKind.CALLBACK_REQUESTED]
        assert [r.outcome for r in found["genesys"][0]] == [OutcomeKind.NOT_NOW]
        # The same call reported in any layout is the same outcome: one key, stored once.
        assert len({rows[0].idempotency_key for rows, _ in found.values()}) == 1


class TestPendingCall:
    """The contact a streamed call counts as until its disposition arrives (`pending_call`), and how a retry of the
    same campaign sees past its own calls (`own_calls_removed`)."""

    AT = datetime(2026, 12, 4, 13, 0, tzinfo=UTC)

    def record(self, **changes: object) -> DecisionRecord:
        action = DecidedAction("check-in", "Call to check in.", 1, "service", "r", "r-1", self.AT + timedelta(hours=4))
        base = DecisionRecord(
            decision_id="00000000-0000-4000-8000-000000000001",
            decided_at=self.AT,
            customer_id="CUST-1",
            channel=Channel.OUTBOUND_DIALER,
            ruleset=RulesetRef("r", "1", "0" * 64),
            engine="reference",
            rules_fired=(),
            dropped=(),
            actions=(action,),
            latency_ms=0.1,
            context={
                "campaign_id": "spring",
                "idempotency_key": "nba1-x",
                "call_latest": "2026-12-04T20:00:00+03:00",  # 17:00 UTC: before the action's expiry
            },
        )
        return replace(base, **changes)  # type: ignore[arg-type]

    def test_a_sent_call_is_pending_until_its_window_closes_or_its_action_expires(self) -> None:
        call = pending_call(self.record())
        assert call is not None
        assert (call.action_id, call.channel, call.time, call.campaign_id) == (
            "check-in",
            Channel.OUTBOUND_DIALER,
            self.AT,
            "spring",
        )
        assert call.pending_until == datetime(2026, 12, 4, 17, 0, tzinfo=UTC)
        assert call.counts_at(self.AT + timedelta(hours=3, minutes=59))
        assert not call.counts_at(self.AT + timedelta(hours=4))
        late = pending_call(self.record(context={**self.record().context, "call_latest": "2026-12-04T23:00:00+00:00"}))
        assert late is not None
        assert late.pending_until == self.AT + timedelta(hours=4)  # the action's expiry comes first

    def test_no_pending_call_for_what_never_reached_a_dialer(self) -> None:
        assert pending_call(self.record(delivery=Delivery.CANCELLED)) is None
        assert pending_call(self.record(delivery=Delivery.DEADLINE_EXCEEDED)) is None
        assert (
            pending_call(self.record(actions=(), context={"campaign_id": "spring", "excluded": "quiet_hours"})) is None
        )
        assert pending_call(self.record(channel=Channel.AGENT_DESKTOP)) is None
        assert pending_call(self.record(context={})) is None  # a Decide on the dialer channel: no campaign, no window

    def test_a_retry_sees_past_only_its_own_pending_calls(self) -> None:
        own = replace(pending_call(self.record()), decision_id="d-own")  # type: ignore[type-var]
        other = replace(own, decision_id="d-other", campaign_id="autumn")
        reported = replace(own, decision_id="d-reported", pending_until=None, outcome=OutcomeKind.DECLINED)
        profile = Profile("CUST-1", {}, (), (own, other, reported))
        assert [c.decision_id for c in own_calls_removed(profile, "spring").contacts] == ["d-other", "d-reported"]
        assert own_calls_removed(profile, "winter") is profile
