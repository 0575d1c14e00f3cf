"""The embedded store: one SQLite file (WAL mode) holding what the PostgreSQL store holds.

It lets a newcomer run real decisions with no database server, keeps events, outcomes and decision
records across restarts, and lets several worker processes serve one file at once (SQLite serialises
their writes; WAL lets reads go on during a write).

No call touches the file from the event loop: even a read can block on a stalled disk (SQLite writes
read marks into its memory-mapped `-shm` file), and a frozen loop could neither answer UNAVAILABLE nor
stop on SIGTERM. Reads run on a few reader threads, writes on one writer thread, each with its own
connection and every call under the `--db-timeout` budget. Commits use `synchronous=FULL`: a decision
record survives SIGKILL and power loss alike once its answer has left.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import json
import operator
import sqlite3
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import orjson
import structlog

from nba_service import json_text
from nba_service.domain.archive import ArchivedSource, ArchivedVersion, ambiguous, archivable_text, hash_prefix
from nba_service.domain.contact_points import PhoneNumber, PhoneType, phone_problems
from nba_service.domain.dialer import pending_call
from nba_service.domain.do_not_contact import (
    Listing,
    ListingState,
    Selection,
    already_listed,
    check_removal,
    duplicate_of,
    nothing_listed,
    unknown_customer,
)
from nba_service.domain.measurement import HELD_OUT, Exposure, Measurements, MeasureQuery, exposures_of
from nba_service.domain.model import Channel, Direction, EventSpec, Ruleset
from nba_service.domain.profile import (
    CONTACTED_OUTCOMES,
    Contact,
    DoNotContact,
    DoNotContactReason,
    Event,
    Outcome,
    OutcomeKind,
    Profile,
)
from nba_service.domain.records import (
    DecisionRecord,
    DecisionSummary,
    Delivery,
    DeliveryUpdate,
    RecordUpdate,
    outcome_to_json,
)
from nba_service.domain.segments import Segment
from nba_service.errors import NotFound, Unavailable
from nba_service.stores.sqlite_measurement import read_measurements
from nba_service.stores.sqlite_time import stamp

log = structlog.get_logger(__name__)

SCHEMA_VERSION = 9
READER_THREADS = 4
CONSENT_PREFIX = "consent_"
DO_NOT_CALL = "do_not_call"

_SCHEMA = (
    """CREATE TABLE customers (
        customer_id TEXT PRIMARY KEY CHECK (length(customer_id) BETWEEN 1 AND 64),
        attributes  TEXT NOT NULL CHECK (json_type(attributes) = 'object'),
        updated_at  TEXT NOT NULL)""",
    """CREATE TABLE consents (
        customer_id TEXT NOT NULL REFERENCES customers ON DELETE CASCADE,
        purpose     TEXT NOT NULL,
        granted     INTEGER NOT NULL CHECK (granted IN (0, 1)),
        PRIMARY KEY (customer_id, purpose)) WITHOUT ROWID""",
    """CREATE TABLE do_not_call (
        customer_id TEXT PRIMARY KEY REFERENCES customers ON DELETE CASCADE,
        listed_at   TEXT NOT NULL,
        source      TEXT NOT NULL DEFAULT '')""",
    """CREATE TABLE events (
        event_id    TEXT PRIMARY KEY,
        customer_id TEXT NOT NULL REFERENCES customers ON DELETE CASCADE,
        type        TEXT NOT NULL,
        time        TEXT NOT NULL,
        attributes  TEXT NOT NULL CHECK (json_type(attributes) = 'object'),
        expires_at  TEXT CHECK (expires_at IS NULL OR expires_at > time))""",
    "CREATE INDEX events_customer_type_time ON events (customer_id, type, time DESC)",
    """CREATE TABLE contacts (
        contact_id  INTEGER PRIMARY KEY,
        customer_id TEXT NOT NULL REFERENCES customers ON DELETE CASCADE,
        decision_id TEXT,
        action_id   TEXT NOT NULL,
        channel     TEXT NOT NULL CHECK (channel IN ('agent_desktop', 'outbound_dialer')),
        time        TEXT NOT NULL,
        outcome     TEXT NOT NULL,
        reached     INTEGER NOT NULL CHECK (reached IN (0, 1)),
        note        TEXT NOT NULL DEFAULT '')""",
    "CREATE UNIQUE INDEX contacts_offer ON contacts (decision_id, action_id) WHERE decision_id IS NOT NULL",
    "CREATE INDEX contacts_customer_time ON contacts (customer_id, time)",
    """CREATE TABLE outcomes (
        outcome_id  INTEGER PRIMARY KEY,
        decision_id TEXT NOT NULL,
        customer_id TEXT NOT NULL,
        action_id   TEXT NOT NULL,
        channel     TEXT NOT NULL,
        outcome     TEXT NOT NULL,
        time        TEXT NOT NULL,
        note        TEXT NOT NULL DEFAULT '',
        recorded_at TEXT NOT NULL)""",
    "CREATE INDEX outcomes_time ON outcomes (time)",
    """CREATE TABLE decisions (
        decision_id TEXT PRIMARY KEY,
        decided_at  TEXT NOT NULL,
        customer_id TEXT NOT NULL,
        delivery    TEXT NOT NULL DEFAULT 'sent'
                    CHECK (delivery IN ('sent', 'deadline_exceeded', 'cancelled', 'failed')),
        record      TEXT NOT NULL,
        written_at  TEXT NOT NULL)""",
    "CREATE INDEX decisions_time ON decisions (decided_at)",
    "CREATE INDEX decisions_customer_time ON decisions (customer_id, decided_at)",
    "CREATE TABLE probe (id INTEGER PRIMARY KEY, written_at TEXT NOT NULL)",
    """CREATE TABLE dead_letters (
        id           INTEGER PRIMARY KEY,
        decision_id  TEXT,
        error        TEXT NOT NULL,
        record       TEXT NOT NULL,
        set_aside_at TEXT NOT NULL)""",
)

# What each schema version adds to the one before: a file made by an older version upgrades in place, in the
# transaction that opens it, and loses nothing.
_BACKFILL_EXPOSURES = """
INSERT OR IGNORE INTO exposures
SELECT d.decision_id, json_extract(x.value, '$.action_id'), {held_out}, d.customer_id, d.decided_at,
       coalesce(json_extract(x.value, '$.rule_id'), ''), coalesce(json_extract(d.record, '$.channel'), ''),
       json_extract(d.record, '$.direction'), coalesce(json_extract(d.record, '$.ruleset.name'), ''),
       coalesce(json_extract(d.record, '$.ruleset.version'), ''), NULL
  FROM decisions AS d, json_each(CASE WHEN json_valid(d.record) THEN d.record ELSE '{{}}' END, '{items}') AS x
 WHERE json_extract(x.value, '$.action_id') IS NOT NULL {only}
 ORDER BY x.key
"""
# Each version ever active, with who asked for its latest activation and how (the row of its highest id).
_VERSIONS_SQL = """
SELECT s.name, s.version, s.hash, min(a.activated_at), max(a.activated_at), count(*),
       l.activated_by, l.origin
  FROM ruleset_activations AS a
  JOIN ruleset_sources AS s ON s.hash = a.hash
  JOIN ruleset_activations AS l ON l.id = (SELECT max(id) FROM ruleset_activations WHERE hash = a.hash)
 WHERE ?1 IS NULL OR a.name = ?1
 GROUP BY s.hash
 ORDER BY max(a.activated_at) DESC, max(a.id) DESC
"""
_MIGRATIONS: dict[int, tuple[str, ...]] = {
    2: (
        # The ruleset archive: every version that served, by content hash (nba_service/domain/archive.py).
        """CREATE TABLE ruleset_sources (
            hash      TEXT PRIMARY KEY CHECK (length(hash) = 64),
            name      TEXT NOT NULL,
            version   TEXT NOT NULL,
            source    TEXT NOT NULL,
            kept_at   TEXT NOT NULL)""",
        """CREATE TABLE ruleset_activations (
            id           INTEGER PRIMARY KEY,
            name         TEXT NOT NULL,
            hash         TEXT NOT NULL REFERENCES ruleset_sources,
            activated_at TEXT NOT NULL)""",
        "CREATE INDEX ruleset_activations_name_time ON ruleset_activations (name, activated_at)",
    ),
    3: (
        # Who reported each event and outcome: the caller's principal, NULL for rows from before. (A decision's
        # caller is in its record JSON.)
        "ALTER TABLE events ADD COLUMN recorded_by TEXT",
        "ALTER TABLE outcomes ADD COLUMN recorded_by TEXT",
    ),
    4: (
        # Contact points for dialer campaigns. The CHECK is E.164 as nba_service.domain.contact_points.E164 says
        # it (SQLite has no regular expressions): '+', a first digit 1-9, 8 to 15 digits in all.
        """CREATE TABLE phones (
            customer_id     TEXT NOT NULL REFERENCES customers ON DELETE CASCADE,
            position        INTEGER NOT NULL,
            number          TEXT NOT NULL CHECK (number GLOB '+[1-9]*' AND length(number) BETWEEN 9 AND 16
                                                 AND substr(number, 2) NOT GLOB '*[^0-9]*'),
            type            TEXT NOT NULL CHECK (type IN ('mobile', 'home', 'work')),
            consent         INTEGER NOT NULL CHECK (consent IN (0, 1)),
            wrong_number_at TEXT,
            PRIMARY KEY (customer_id, number)) WITHOUT ROWID""",
        # A dialer's disposition file imported twice stores each outcome once.
        "ALTER TABLE outcomes ADD COLUMN idempotency_key TEXT",
        "CREATE UNIQUE INDEX outcomes_idempotency ON outcomes (idempotency_key) WHERE idempotency_key IS NOT NULL",
    ),
    5: (
        # The do-not-contact register (nba_service.domain.do_not_contact): a listing is lifted by setting
        # removed_*, never deleted or rewritten, so the history a compliance export shows is the whole history.
        # No foreign key: the history outlives a deleted customer, as decision records do.
        """CREATE TABLE do_not_contact (
            listing_id   INTEGER PRIMARY KEY,
            customer_id  TEXT NOT NULL,
            channel      TEXT CHECK (channel IN ('agent_desktop', 'outbound_dialer')),
            reason       TEXT NOT NULL
                         CHECK (reason IN ('customer_request', 'regulator_list', 'bereavement', 'vulnerability')),
            source       TEXT NOT NULL CHECK (length(trim(source)) > 0),
            note         TEXT NOT NULL DEFAULT '',
            added_by     TEXT NOT NULL CHECK (length(trim(added_by)) > 0),
            added_at     TEXT NOT NULL,
            expires_at   TEXT CHECK (expires_at IS NULL OR expires_at > added_at),
            removed_by   TEXT,
            removed_at   TEXT,
            removal_note TEXT,
            CHECK ((removed_at IS NULL) = (removed_by IS NULL)))""",
        "CREATE INDEX do_not_contact_customer ON do_not_contact (customer_id) WHERE removed_at IS NULL",
        """CREATE TRIGGER do_not_contact_never_deleted BEFORE DELETE ON do_not_contact
           BEGIN SELECT RAISE(ABORT, 'do_not_contact keeps its history: lift a listing, never delete it'); END""",
        """CREATE TRIGGER do_not_contact_removed_once BEFORE UPDATE ON do_not_contact
           WHEN OLD.removed_at IS NOT NULL OR NEW.listing_id IS NOT OLD.listing_id
             OR NEW.customer_id IS NOT OLD.customer_id OR NEW.channel IS NOT OLD.channel
             OR NEW.reason IS NOT OLD.reason OR NEW.source IS NOT OLD.source OR NEW.note IS NOT OLD.note
             OR NEW.added_by IS NOT OLD.added_by OR NEW.added_at IS NOT OLD.added_at
             OR NEW.expires_at IS NOT OLD.expires_at
           BEGIN SELECT RAISE(ABORT, 'do_not_contact keeps its history: a listing is only ever marked removed, once');
           END""",
    ),
    6: (
        # Who started each contact, the direction of the decision its outcome answers: caps and constraints count
        # the customer's contacts in the same direction. NULL in rows from before: the channel's usual direction.
        # (A decision's direction is in its record JSON.) Outcome kinds have no CHECK here, so not_now needs none.
        "ALTER TABLE contacts ADD COLUMN direction TEXT"
        " CHECK (direction IS NULL OR direction IN ('inbound', 'outbound'))",
        "ALTER TABLE outcomes ADD COLUMN direction TEXT"
        " CHECK (direction IS NULL OR direction IN ('inbound', 'outbound'))",
    ),
    7: (
        # Dialer calls exported and not yet reported on (nba_service.domain.dialer.pending_call): a contact row
        # that counts toward caps until `pending_until`, written with its decision record; an outcome for the
        # same decision and action clears it. `campaign_id` lets a retry of that campaign see past its own calls.
        "ALTER TABLE contacts ADD COLUMN pending_until TEXT",
        "ALTER TABLE contacts ADD COLUMN campaign_id TEXT",
    ),
    8: (
        # What each decision showed and held out, one row per action, for the report (see the PostgreSQL
        # migration 0011_exposures and nba_service.domain.measurement.exposures_of, which fills it).
        """CREATE TABLE exposures (
            decision_id     TEXT NOT NULL,
            action_id       TEXT NOT NULL,
            held_out        INTEGER NOT NULL CHECK (held_out IN (0, 1)),
            customer_id     TEXT NOT NULL,
            decided_at      TEXT NOT NULL,
            rule_id         TEXT NOT NULL,
            channel         TEXT NOT NULL,
            direction       TEXT,
            ruleset_name    TEXT NOT NULL,
            ruleset_version TEXT NOT NULL,
            journey_stage   TEXT,
            PRIMARY KEY (decision_id, action_id, held_out)) WITHOUT ROWID""",
        "CREATE INDEX exposures_time ON exposures (decided_at)",
        # The decisions already stored (their journey stage was not recorded); a record SQLite cannot read as JSON
        # (a NaN written by an older version) has none.
        _BACKFILL_EXPOSURES.format(items="$.actions", held_out=0, only=""),
        _BACKFILL_EXPOSURES.format(
            items="$.dropped", held_out=1, only=f"AND json_extract(x.value, '$.reason') = '{HELD_OUT}'"
        ),
    ),
    9: (
        # Who asked for each activation and how ('' for those noted before: not recorded), as the PostgreSQL
        # migration 0014_activated_by keeps them; shared by every process on the file, unlike state.json.
        "ALTER TABLE ruleset_activations ADD COLUMN activated_by TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE ruleset_activations ADD COLUMN origin TEXT NOT NULL DEFAULT ''",
    ),
}

# A whole profile in one statement, hence one snapshot without a transaction, and one row: a read used to be nine
# statements, each handing the GIL to and from the event loop for every row it stepped through. Each list comes
# as JSON with its sort key, since SQLite before 3.44 does not promise an aggregate's order.
_PROFILE_SQL = """
SELECT c.attributes,
  (SELECT json_group_array(json_array(purpose, granted)) FROM consents WHERE customer_id = ?1),
  EXISTS (SELECT 1 FROM do_not_call WHERE customer_id = ?1),
  (SELECT json_group_array(json_array(e.type, e.time, e.attributes, e.expires_at)) FROM json_each(?3) AS t
     JOIN events AS e ON e.rowid = (
          SELECT x.rowid FROM events AS x
           WHERE x.customer_id = ?1 AND x.type = t.value AND (x.expires_at IS NULL OR x.expires_at > ?2)
           ORDER BY x.time DESC LIMIT 1)),
  (SELECT json_group_array(json_array(time, action_id, channel, outcome, decision_id, reached, direction,
                                      pending_until, campaign_id))
     FROM contacts WHERE customer_id = ?1 AND time > ?4),
  (SELECT json_group_array(json_array(position, number, type, consent, wrong_number_at))
     FROM phones WHERE customer_id = ?1),
  (SELECT json_group_array(json_array(listing_id, channel, reason, source, added_at, expires_at, added_by, note))
     FROM do_not_contact
    WHERE customer_id = ?1 AND removed_at IS NULL AND (expires_at IS NULL OR expires_at > ?2))
FROM customers AS c WHERE c.customer_id = ?1
"""
_LISTING_COLUMNS = (
    "SELECT listing_id, customer_id, channel, reason, source, added_at, expires_at, added_by, note, removed_at,"
    " removed_by, removal_note FROM do_not_contact"
)
_UPSERT_CONTACT = """
INSERT INTO contacts (customer_id, decision_id, action_id, channel, time, outcome, reached, note, direction)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (decision_id, action_id) WHERE decision_id IS NOT NULL DO UPDATE SET
    time = CASE WHEN contacts.pending_until IS NULL THEN max(contacts.time, excluded.time) ELSE excluded.time END,
    outcome = CASE WHEN contacts.pending_until IS NOT NULL OR excluded.time >= contacts.time
                   THEN excluded.outcome ELSE contacts.outcome END,
    note = CASE WHEN contacts.pending_until IS NOT NULL OR excluded.time >= contacts.time
                THEN excluded.note ELSE contacts.note END,
    reached = CASE WHEN contacts.pending_until IS NULL THEN contacts.reached OR excluded.reached
                   ELSE excluded.reached END,
    direction = coalesce(contacts.direction, excluded.direction),
    pending_until = NULL
"""
# The first outcome of a campaign's call replaces its pending contact (above) and any pending contact a retry of
# the same campaign made for the same customer and action: the dialer places one call per idempotency key.
_CLEAR_RETRIED = """
DELETE FROM contacts
 WHERE customer_id = ?1 AND action_id = ?2 AND pending_until IS NOT NULL AND decision_id <> ?3
   AND campaign_id = (SELECT json_extract(record, '$.context.attributes.campaign_id') FROM decisions
                       WHERE decision_id = ?3)
"""
# A call a campaign exported again (its retry) supersedes the earlier attempt's pending contact for the same
# customer and action, so the call counts once; a customer deleted meanwhile gets none.
_SUPERSEDE_PENDING = """
DELETE FROM contacts
 WHERE customer_id = ? AND action_id = ? AND campaign_id = ? AND pending_until IS NOT NULL AND decision_id <> ?
"""
_ADD_PENDING = """
INSERT INTO contacts (customer_id, decision_id, action_id, channel, time, outcome, reached, note, pending_until,
                      campaign_id)
SELECT ?1, ?2, ?3, ?4, ?5, ?6, 0, '', ?7, ?8 WHERE EXISTS (SELECT 1 FROM customers WHERE customer_id = ?1)
ON CONFLICT (decision_id, action_id) WHERE decision_id IS NOT NULL DO NOTHING
"""
_WITHDRAW_PENDING = "DELETE FROM contacts WHERE decision_id = ? AND pending_until IS NOT NULL"
_ADD_EVENT = (
    "INSERT INTO events (event_id, customer_id, type, time, attributes, expires_at, recorded_by)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)"
)
_SEED_EVENT = "INSERT INTO events (event_id, customer_id, type, time, attributes, expires_at) VALUES (?, ?, ?, ?, ?, ?)"
# The refusals a record can cause by its content alone; anything else means the store is failing.
_REFUSALS = (sqlite3.IntegrityError, sqlite3.DataError, sqlite3.InterfaceError, UnicodeError, ValueError)

T = TypeVar("T")


_ADD_EXPOSURE = "INSERT OR IGNORE INTO exposures VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"


def _exposure_row(e: Exposure) -> tuple[object, ...]:
    return (
        e.decision_id,
        e.action_id,
        int(e.held_out),
        e.customer_id,
        stamp(e.decided_at),
        e.rule_id,
        e.channel,
        e.direction,
        e.ruleset_name,
        e.ruleset_version,
        e.journey_stage,
    )


_first = operator.itemgetter(0)
_first_but_one = operator.itemgetter(1)


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text)


def _record_text(record: DecisionRecord, *, ascii_only: bool = False) -> str:
    if ascii_only:
        return json.dumps(record.to_json(), ensure_ascii=True, separators=(",", ":"), default=str)
    return json_text.dumps(record.to_json(), finite=record.finite)


class SqliteStore:
    """ProfileStore, DoNotContactRegistry, RecordSink, RecordExport, RecordReader and RulesetArchive over one SQLite
    file."""

    def __init__(
        self,
        path: Path,
        *,
        event_types: Sequence[str],
        history: timedelta,
        timeout: float = 1.0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.path = path
        self._event_types = json.dumps(sorted(set(event_types)))
        self._history = history
        self._timeout = timeout
        self._clock = clock
        self._thread_prefix = f"sqlite-{id(self):x}"
        self._writer = ThreadPoolExecutor(1, thread_name_prefix=f"{self._thread_prefix}-writer")
        self._readers = ThreadPoolExecutor(READER_THREADS, thread_name_prefix=f"{self._thread_prefix}-reader")
        self._local = threading.local()
        self._write_conn: sqlite3.Connection | None = None
        self._writes_pending = 0
        self._open = False

    # ------------------------------------------------------------------ opening and seeding

    def set_reads(self, event_types: Sequence[str], history: timedelta) -> None:
        """What a profile read returns from now on: a newly deployed version may read other event types."""
        self._event_types = json.dumps(sorted(set(event_types)))
        self._history = history

    async def open(self, seed: Callable[[], Iterable[Profile]] | None = None) -> int:
        """Opens the file, creating and seeding it on first start; returns how many customers it holds.

        Several workers may open a new file at once: the schema and the seed are made under SQLite's
        write lock, and whoever comes second finds them done.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        customers = await self._in_writer(lambda conn: _prepare(conn, seed, self._clock()))
        self._open = True
        return customers

    def _write_connection(self) -> sqlite3.Connection:
        if self._write_conn is None:
            conn = _connect(self.path, busy_ms=int(self._timeout * 1000))
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = FULL")
            self._write_conn = conn
        return self._write_conn

    async def _in_writer(self, work: Callable[[sqlite3.Connection], T]) -> T:
        def run() -> T:
            conn = self._write_connection()
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = work(conn)
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return result

        def done(_: asyncio.Future[T]) -> None:
            self._writes_pending -= 1

        self._writes_pending += 1
        future = asyncio.get_running_loop().run_in_executor(self._writer, run)
        future.add_done_callback(done)
        return await future

    async def _in_reader(self, what: str, work: Callable[[sqlite3.Connection], T], *, snapshot: bool = True) -> T:
        """One read in one snapshot, on a reader thread, within the time budget. `snapshot` False: the work is one
        statement, which is a snapshot by itself."""
        if not self._open:
            raise Unavailable("the embedded database is not open")

        def run() -> T:
            conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
            if conn is None:
                conn = _connect(self.path, busy_ms=int(self._timeout * 1000))
                self._local.conn = conn
            if not snapshot:
                return work(conn)
            conn.execute("BEGIN")
            try:
                return work(conn)
            finally:
                conn.execute("COMMIT")

        try:
            async with asyncio.timeout(self._timeout):
                return await asyncio.get_running_loop().run_in_executor(self._readers, run)
        except sqlite3.Error as exc:
            raise Unavailable(f"the embedded database cannot be read ({what}): {exc}") from exc
        except TimeoutError as exc:
            raise Unavailable(f"the embedded database did not answer within {self._timeout:g} s ({what})") from exc

    # ------------------------------------------------------------------ ProfileStore

    def _read_profile(self, conn: sqlite3.Connection, customer_id: str, now: datetime) -> Profile | None:
        row = conn.execute(
            _PROFILE_SQL, (customer_id, stamp(now), self._event_types, stamp(now - self._history))
        ).fetchone()
        if row is None:
            return None
        text, consents, listed, events, contacts, phones, listings = row
        attributes = json_text.loads(text)
        attributes.update({CONSENT_PREFIX + purpose: bool(granted) for purpose, granted in orjson.loads(consents)})
        attributes[DO_NOT_CALL] = bool(listed)
        return Profile(
            customer_id,
            attributes,
            tuple(
                Event(kind, _time(at), json_text.loads(values), _time(until) if until else None)
                for kind, at, values, until in sorted(orjson.loads(events), key=_first_but_one)
            ),
            tuple(
                Contact(
                    action,
                    Channel(channel),
                    _time(at),
                    OutcomeKind(outcome),
                    decision or "",
                    reached=bool(hit),
                    direction=None if way is None else Direction(way),
                    pending_until=_time(until) if until else None,
                    campaign_id=campaign or "",
                )
                for at, action, channel, outcome, decision, hit, way, until, campaign in sorted(
                    orjson.loads(contacts), key=_first
                )
            ),
            tuple(
                PhoneNumber(number, PhoneType(kind), bool(consent), wrong is not None)
                for _, number, kind, consent, wrong in sorted(orjson.loads(phones), key=_first)
            ),
            tuple(_entry(*listing[1:]) for listing in sorted(orjson.loads(listings), key=_first)),
        )

    async def get_profile(self, customer_id: str) -> Profile:
        now = self._clock()
        found = await self._in_reader(
            "reading a profile", lambda conn: self._read_profile(conn, customer_id, now), snapshot=False
        )
        if found is None:
            raise NotFound(f"customer {customer_id!r} not found")
        return found

    async def get_profiles(self, customer_ids: Sequence[str]) -> list[Profile]:
        """The live profiles of these customers in one snapshot, in the order asked; unknown ones are left out."""
        now = self._clock()

        def read(conn: sqlite3.Connection) -> list[Profile]:
            found = (self._read_profile(conn, ident, now) for ident in customer_ids)
            return [profile for profile in found if profile is not None]

        return await self._in_reader("reading profiles", read)

    async def missing_customers(self, customer_ids: Sequence[str]) -> list[int]:
        """Positions in `customer_ids` of the customers this store does not hold."""
        rows = await self._in_reader(
            "checking customers",
            lambda conn: conn.execute(
                "SELECT j.key FROM json_each(?) AS j LEFT JOIN customers AS c ON c.customer_id = j.value"
                " WHERE c.customer_id IS NULL ORDER BY j.key",
                (json.dumps(list(customer_ids)),),
            ).fetchall(),
        )
        return [int(row[0]) for row in rows]

    async def segment_page(self, segment: Segment, after: str, limit: int) -> list[Profile]:
        """Up to `limit` profiles of the segment's customers with ids after `after`, in id order."""
        now = self._clock()
        where: list[str] = ["customer_id > ?"]
        args: list[object] = [after]
        for name, value in segment.equals:
            path = f"$.{name}"  # a declared field name: [a-z][a-z0-9_]*, checked by Segment
            if isinstance(value, bool):
                where.append("json_type(attributes, ?) = ?")
                args += [path, "true" if value else "false"]
            elif isinstance(value, str):
                where.append("json_type(attributes, ?) = 'text' AND json_extract(attributes, ?) = ?")
                args += [path, path, value]
            else:
                where.append("json_type(attributes, ?) IN ('integer', 'real') AND json_extract(attributes, ?) = ?")
                args += [path, path, value]
        sql = f"SELECT customer_id FROM customers WHERE {' AND '.join(where)} ORDER BY customer_id LIMIT ?"  # noqa: S608

        def read(conn: sqlite3.Connection) -> list[Profile]:
            ids = [row[0] for row in conn.execute(sql, (*args, limit)).fetchall()]
            found = (self._read_profile(conn, ident, now) for ident in ids)
            return [profile for profile in found if profile is not None]

        return await self._in_reader("reading a segment", read)

    async def mark_wrong_number(self, customer_id: str, number: str, when: datetime) -> bool:
        """Marks one of the customer's numbers as not reaching them; False when the customer has no such number.
        Marking again keeps the first time."""
        found: list[bool] = []

        def mark(conn: sqlite3.Connection) -> None:
            cursor = conn.execute(
                "UPDATE phones SET wrong_number_at = coalesce(wrong_number_at, ?) WHERE customer_id = ? AND number = ?",
                (stamp(when), customer_id, number),
            )
            found.append(cursor.rowcount > 0)

        await self._write("marking a wrong number", mark)
        return found[0]

    async def customer_ids(self, after: str = "", limit: int = 10_000) -> list[str]:
        """A page of customer ids in order, those after `after`: how `nba rulesets diff` walks the store."""
        rows = await self._in_reader(
            "listing customers",
            lambda conn: conn.execute(
                "SELECT customer_id FROM customers WHERE customer_id > ? ORDER BY customer_id LIMIT ?", (after, limit)
            ).fetchall(),
        )
        return [row[0] for row in rows]

    async def add_customers(self, profiles: Sequence[Profile]) -> int:
        """CustomerLoader: the rows a new file's seed writes, for these profiles, in one transaction."""
        chosen = list(profiles)
        created = self._clock()
        await self._in_writer(lambda conn: _load(conn, chosen, created))
        return len(chosen)

    async def add_event(self, customer_id: str, event: Event, recorded_by: str = "") -> str:
        event_id = str(uuid.uuid4())
        row = (
            event_id,
            customer_id,
            event.type,
            stamp(event.time),
            json.dumps(dict(event.attributes), ensure_ascii=False),
            stamp(event.expires_at) if event.expires_at is not None else None,
            recorded_by or None,
        )

        def insert(conn: sqlite3.Connection) -> None:
            if conn.execute("SELECT 1 FROM customers WHERE customer_id = ?", (customer_id,)).fetchone() is None:
                raise NotFound(f"customer {customer_id!r} not found")
            conn.execute(_ADD_EVENT, row)

        await self._write("storing an event", insert)
        return event_id

    async def add_outcome(self, outcome: Outcome) -> bool:
        recorded = stamp(self._clock())
        direction = None if outcome.direction is None else outcome.direction.value
        contact = (
            outcome.customer_id,
            outcome.decision_id,
            outcome.action_id,
            outcome.channel.value,
            stamp(outcome.time),
            outcome.outcome.value,
            int(outcome.outcome in CONTACTED_OUTCOMES),
            outcome.note,
            direction,
        )
        audit = (
            outcome.decision_id,
            outcome.customer_id,
            outcome.action_id,
            outcome.channel.value,
            outcome.outcome.value,
            stamp(outcome.time),
            outcome.note,
            recorded,
            outcome.recorded_by or None,
            outcome.idempotency_key or None,
            direction,
        )
        stored: list[bool] = []

        def upsert(conn: sqlite3.Connection) -> None:
            cursor = conn.execute(
                "INSERT INTO outcomes (decision_id, customer_id, action_id, channel, outcome, time, note, recorded_at,"
                " recorded_by, idempotency_key, direction) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING",
                audit,
            )
            stored.append(cursor.rowcount > 0)
            if stored[0]:
                conn.execute(_UPSERT_CONTACT, contact)
                conn.execute(_CLEAR_RETRIED, (outcome.customer_id, outcome.action_id, outcome.decision_id))

        await self._write("storing an outcome", upsert)
        return stored[0]

    # ------------------------------------------------------------------ DoNotContactRegistry

    async def add_listing(self, customer_id: str, entry: DoNotContact) -> Listing:
        """Refuses a repeat of an active listing (same channel and reason): see do_not_contact.already_listed."""
        added: list[Listing] = []

        def insert(conn: sqlite3.Connection) -> None:
            if conn.execute("SELECT 1 FROM customers WHERE customer_id = ?", (customer_id,)).fetchone() is None:
                raise unknown_customer(customer_id)
            existing = _listings(conn, customer_id, None)
            duplicate = duplicate_of(existing, entry, entry.added_at)
            if duplicate is not None:
                raise already_listed(duplicate)
            cursor = conn.execute(
                "INSERT INTO do_not_contact (customer_id, channel, reason, source, note, added_by, added_at,"
                " expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    customer_id,
                    None if entry.channel is None else entry.channel.value,
                    entry.reason.value,
                    entry.source,
                    entry.note,
                    entry.added_by,
                    stamp(entry.added_at),
                    None if entry.expires_at is None else stamp(entry.expires_at),
                ),
            )
            added.append(Listing(int(cursor.lastrowid or 0), customer_id, entry))

        await self._write("adding a do-not-contact listing", insert)
        return added[0]

    async def remove_listings(
        self, customer_id: str, selection: Selection, removed_by: str, note: str = ""
    ) -> list[Listing]:
        check_removal(removed_by, note)
        now = self._clock()
        lifted: list[Listing] = []

        def lift(conn: sqlite3.Connection) -> None:
            if conn.execute("SELECT 1 FROM customers WHERE customer_id = ?", (customer_id,)).fetchone() is None:
                raise unknown_customer(customer_id)
            chosen = [
                listing
                for listing in _listings(conn, customer_id, None)
                if listing.state(now) is ListingState.ACTIVE and selection.matches(listing)
            ]
            if not chosen:
                raise nothing_listed(customer_id, selection)
            conn.executemany(
                "UPDATE do_not_contact SET removed_at = ?, removed_by = ?, removal_note = ? WHERE listing_id = ?",
                [(stamp(now), removed_by.strip(), note.strip(), listing.listing_id) for listing in chosen],
            )
            lifted.extend(
                dataclasses.replace(listing, removed_at=now, removed_by=removed_by.strip(), removal_note=note.strip())
                for listing in chosen
            )

        await self._write("removing a do-not-contact listing", lift)
        return lifted

    async def listings(self, customer_id: str | None = None, *, include_inactive: bool = False) -> list[Listing]:
        now = self._clock()
        found = await self._in_reader(
            "reading do-not-contact listings", lambda conn: _listings(conn, customer_id, None)
        )
        return [listing for listing in found if include_inactive or listing.state(now) is ListingState.ACTIVE]

    async def export_listings(self) -> AsyncIterator[Listing]:
        after = 0
        while True:
            read = functools.partial(_listings, customer_id=None, after=after)
            page = await self._in_reader("exporting do-not-contact listings", read)
            for listing in page:
                yield listing
            if len(page) < _EXPORT_PAGE:
                return
            after = page[-1].listing_id

    async def _write(self, what: str, work: Callable[[sqlite3.Connection], None]) -> None:
        try:
            await asyncio.wait_for(self._in_writer(work), self._timeout)
        except sqlite3.Error as exc:
            raise Unavailable(f"the embedded database cannot be written ({what}): {exc}") from exc
        except TimeoutError as exc:
            raise Unavailable(f"the embedded database did not answer within {self._timeout:g} s ({what})") from exc

    async def ready(self) -> bool:
        try:
            await self._in_reader("health check", lambda conn: conn.execute("SELECT 1 FROM customers LIMIT 1"))
        except Unavailable:
            return False
        return True

    async def close(self) -> None:
        """Closes within the time budget: a thread stuck on a stalled disk is left behind, not waited for."""
        self._open = False

        def shut() -> None:
            if self._write_conn is not None:
                self._write_conn.close()
                self._write_conn = None

        with contextlib.suppress(TimeoutError, sqlite3.Error):
            await asyncio.wait_for(asyncio.get_running_loop().run_in_executor(self._writer, shut), self._timeout)
        self._writer.shutdown(wait=False, cancel_futures=True)
        self._readers.shutdown(wait=False, cancel_futures=True)
        await asyncio.to_thread(self._join_threads, time.monotonic() + self._timeout)

    def _join_threads(self, until: float) -> None:
        """Waits for this store's threads to end; after the deadline, only ones stuck on the disk remain."""
        for thread in [t for t in threading.enumerate() if t.name.startswith(self._thread_prefix)]:
            thread.join(max(0.0, until - time.monotonic()))

    # ------------------------------------------------------------------ RecordSink

    async def write(self, records: Sequence[DecisionRecord], updates: Sequence[RecordUpdate]) -> None:
        written = stamp(self._clock())
        rows = [
            (r.decision_id, stamp(r.decided_at), r.customer_id, r.delivery.value, _record_text(r), written)
            for r in records
        ]
        changes = [(u.delivery.value, u.decision_id) for u in updates if isinstance(u, DeliveryUpdate)]
        calls = [(r.customer_id, call) for r in records if (call := pending_call(r)) is not None]
        # An answer that never reached the dialer hands over no call.
        withdrawn = [
            (u.decision_id,) for u in updates if isinstance(u, DeliveryUpdate) and u.delivery is not Delivery.SENT
        ]
        # The record column is the record's JSON line: the shadow run goes into it, so the export needs no join.
        # ASCII-escaped, so any error text binds; json_valid, so a record Python wrote with NaN in it (not JSON to
        # SQLite) cannot fail the whole commit.
        shadows = [
            (json.dumps(u.shadow.to_json(), separators=(",", ":")), u.decision_id)
            for u in updates
            if not isinstance(u, DeliveryUpdate)
        ]

        exposures = [[_exposure_row(e) for e in exposures_of(r)] for r in records]

        def commit(conn: sqlite3.Connection) -> None:
            for row, shown in zip(rows, exposures, strict=True):
                if conn.execute("INSERT OR IGNORE INTO decisions VALUES (?, ?, ?, ?, ?, ?)", row).rowcount:
                    conn.executemany(_ADD_EXPOSURE, shown)
            conn.executemany("UPDATE decisions SET delivery = ? WHERE decision_id = ?", changes)
            for customer, call in calls:
                conn.execute(_SUPERSEDE_PENDING, (customer, call.action_id, call.campaign_id, call.decision_id))
                conn.execute(
                    _ADD_PENDING,
                    (
                        customer,
                        call.decision_id,
                        call.action_id,
                        call.channel.value,
                        stamp(call.time),
                        call.outcome.value,
                        stamp(call.pending_until) if call.pending_until is not None else None,
                        call.campaign_id,
                    ),
                )
            conn.executemany(_WITHDRAW_PENDING, withdrawn)
            if shadows:
                conn.executemany(
                    "UPDATE decisions SET record = json_set(record, '$.shadow', json(?))"
                    " WHERE decision_id = ? AND json_valid(record)",
                    shadows,
                )

        await self._in_writer(commit)

    async def dead_letter(self, record: DecisionRecord, error: str) -> None:
        row = (record.decision_id, error, _record_text(record, ascii_only=True), stamp(self._clock()))
        await self._in_writer(
            lambda conn: conn.execute(
                "INSERT INTO dead_letters (decision_id, error, record, set_aside_at) VALUES (?, ?, ?, ?)", row
            )
        )

    def is_refusal(self, error: BaseException) -> bool:
        return isinstance(error, _REFUSALS)

    async def probe(self) -> None:
        if self._writes_pending:  # the writer thread is still stuck on an earlier write
            raise Unavailable("the embedded database is still busy with an earlier write")
        moment = stamp(self._clock())
        await self._in_writer(
            lambda conn: conn.execute("INSERT OR REPLACE INTO probe (id, written_at) VALUES (1, ?)", (moment,))
        )

    async def find(self, decision_id: str) -> DecisionSummary | None:
        row = await self._in_reader(
            "finding a decision",
            lambda conn: conn.execute(
                "SELECT customer_id, record, delivery FROM decisions WHERE decision_id = ?", (decision_id,)
            ).fetchone(),
        )
        if row is None:
            return None
        record = json.loads(row[1])
        return DecisionSummary(
            decision_id,
            row[0],
            Channel(record["channel"]),
            tuple(a["action_id"] for a in record["actions"]),
            _time(record["decided_at"]),
            Delivery(row[2]),
            str(record.get("caller") or ""),
            None if record.get("direction") is None else Direction(record["direction"]),
        )

    async def get_record(self, decision_id: str) -> DecisionRecord | None:
        row = await self._in_reader(
            "reading a decision record",
            lambda conn: conn.execute(
                "SELECT record, delivery FROM decisions WHERE decision_id = ?", (decision_id,)
            ).fetchone(),
        )
        if row is None:
            return None
        data = json.loads(row[0])
        data["delivery"] = row[1]
        return DecisionRecord.from_json(data)

    # ------------------------------------------------------------------ RulesetArchive

    async def keep(self, ruleset: Ruleset, activated_at: datetime, *, by: str = "", origin: str = "") -> None:
        text = archivable_text(ruleset)
        meta = ruleset.meta
        kept = (ruleset.content_hash, meta.name, meta.version, text, stamp(self._clock()))
        activation = (meta.name, ruleset.content_hash, stamp(activated_at), by, origin)

        def store(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT OR IGNORE INTO ruleset_sources VALUES (?, ?, ?, ?, ?)", kept)
            latest = conn.execute(
                "SELECT hash FROM ruleset_activations WHERE name = ? ORDER BY activated_at DESC, id DESC LIMIT 1",
                (meta.name,),
            ).fetchone()
            if latest is None or latest[0] != ruleset.content_hash:
                conn.execute(
                    "INSERT INTO ruleset_activations (name, hash, activated_at, activated_by, origin)"
                    " VALUES (?, ?, ?, ?, ?)",
                    activation,
                )

        await self._write("archiving a ruleset version", store)

    async def source(self, ruleset_hash: str) -> ArchivedSource | None:
        prefix = hash_prefix(ruleset_hash)
        rows = await self._in_reader(
            "reading the ruleset archive",
            lambda conn: conn.execute(
                "SELECT hash, name, version, source FROM ruleset_sources WHERE substr(hash, 1, ?) = ? LIMIT 2",
                (len(prefix), prefix),
            ).fetchall(),
        )
        if len(rows) > 1:
            raise ambiguous(prefix, [r[0] for r in rows])
        if not rows:
            return None
        found, name, version, text = rows[0]
        return ArchivedSource(name, version, found, text)

    async def versions(self, name: str | None = None) -> list[ArchivedVersion]:
        rows = await self._in_reader(
            "reading the ruleset archive",
            lambda conn: conn.execute(
                _VERSIONS_SQL,
                (name,),
            ).fetchall(),
        )
        return [
            ArchivedVersion(n, v, h, _time(first), _time(last), int(count), by, origin)
            for n, v, h, first, last, count, by, origin in rows
        ]

    # ------------------------------------------------------------------ RecordExport

    async def measurements(
        self,
        query: MeasureQuery,
        events: Mapping[str, EventSpec],
        lifetimes: Mapping[str, tuple[timedelta, tuple[str, ...]]],
    ) -> Measurements:
        def read() -> Measurements:
            conn = _connect(self.path, busy_ms=int(self._timeout * 1000))
            try:
                conn.execute("BEGIN")
                return read_measurements(conn, query, events, lifetimes)
            finally:
                conn.close()

        try:
            return await asyncio.to_thread(read)
        except sqlite3.Error as exc:
            raise Unavailable(f"the embedded database cannot be read (measuring): {exc}") from exc

    async def export(
        self, since: datetime | None, until: datetime | None, customer_id: str | None
    ) -> AsyncIterator[dict[str, Any]]:
        items = await asyncio.to_thread(self._export_all, since, until, customer_id)
        for item in items:
            yield item

    def _export_all(
        self, since: datetime | None, until: datetime | None, customer_id: str | None
    ) -> list[dict[str, Any]]:
        where, args = ["1 = 1"], []
        if since is not None:
            where.append("{t} >= ?")
            args.append(stamp(since))
        if until is not None:
            where.append("{t} < ?")
            args.append(stamp(until))
        if customer_id is not None:
            where.append("customer_id = ?")
            args.append(customer_id)
        clause = " AND ".join(where)
        conn = _connect(self.path, busy_ms=int(self._timeout * 1000))
        try:
            conn.execute("BEGIN")
            decisions = conn.execute(
                f"SELECT decided_at, record, delivery FROM decisions WHERE {clause.format(t='decided_at')}"  # noqa: S608
                " ORDER BY decided_at, decision_id",
                args,
            ).fetchall()
            outcomes = conn.execute(
                "SELECT time, decision_id, customer_id, action_id, channel, outcome, note, recorded_by, direction"  # noqa: S608
                " FROM outcomes "
                f"WHERE {clause.format(t='time')} ORDER BY time, outcome_id",
                args,
            ).fetchall()
            conn.execute("COMMIT")
        finally:
            conn.close()
        items: list[tuple[str, int, dict[str, Any]]] = []
        for at, text, delivery in decisions:
            record = json.loads(text)
            record["delivery"] = delivery
            items.append((at, 0, record))
        for at, decision_id, customer, action_id, channel, kind, note, by, way in outcomes:
            outcome = Outcome(
                decision_id,
                customer,
                action_id,
                Channel(channel),
                OutcomeKind(kind),
                _time(at),
                note,
                by or "",
                direction=None if way is None else Direction(way),
            )
            items.append((at, 1, outcome_to_json(outcome)))
        items.sort(key=lambda item: (item[0], item[1]))
        return [item[2] for item in items]


_EXPORT_PAGE = 1000


def _entry(
    channel: str | None,
    reason: str,
    source: str,
    added_at: str,
    expires_at: str | None,
    added_by: str,
    note: str,
) -> DoNotContact:
    return DoNotContact(
        None if channel is None else Channel(channel),
        DoNotContactReason(reason),
        source,
        _time(added_at),
        None if expires_at is None else _time(expires_at),
        added_by,
        note,
    )


def _listings(conn: sqlite3.Connection, customer_id: str | None, after: int | None) -> list[Listing]:
    """One customer's listings (`after` None), or a page of everyone's after that listing id, in id order."""
    if customer_id is not None:
        rows = conn.execute(f"{_LISTING_COLUMNS} WHERE customer_id = ? ORDER BY listing_id", (customer_id,))
    else:
        rows = conn.execute(
            f"{_LISTING_COLUMNS} WHERE listing_id > ? ORDER BY listing_id LIMIT ?", (after or 0, _EXPORT_PAGE)
        )
    return [_listing(*row) for row in rows.fetchall()]


def _listing(
    ident: int,
    customer: str,
    channel: str | None,
    reason: str,
    source: str,
    added_at: str,
    expires_at: str | None,
    added_by: str,
    note: str,
    removed_at: str | None,
    removed_by: str | None,
    removal_note: str | None,
) -> Listing:
    entry = _entry(channel, reason, source, added_at, expires_at, added_by, note)
    removed = None if removed_at is None else _time(removed_at)
    return Listing(int(ident), customer, entry, removed, removed_by or "", removal_note or "")


def _connect(path: Path, *, busy_ms: int) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout = {max(busy_ms, 1)}")
    conn.execute("PRAGMA foreign_keys = ON")
    return conn


def _prepare(conn: sqlite3.Connection, seed: Callable[[], Iterable[Profile]] | None, now: datetime) -> int:
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise Unavailable(f"the embedded database was made by a newer version (schema {version} > {SCHEMA_VERSION})")
    if version == 0:
        for statement in _SCHEMA:
            conn.execute(statement)
        for step in range(2, SCHEMA_VERSION + 1):
            for statement in _MIGRATIONS[step]:
                conn.execute(statement)
        if seed is not None:
            _load(conn, seed(), now)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        log.info("embedded_database_created", customers=_count(conn))
    elif version < SCHEMA_VERSION:
        # In the opening transaction: a crash half-way leaves the file at its old version, whole.
        for step in range(version + 1, SCHEMA_VERSION + 1):
            for statement in _MIGRATIONS[step]:
                conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        log.info("embedded_database_upgraded", schema_from=version, schema_to=SCHEMA_VERSION)
    return _count(conn)


def _count(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT count(*) FROM customers").fetchone()[0])


def _load(conn: sqlite3.Connection, profiles: Iterable[Profile], now: datetime) -> None:
    """Loads a population the way the PostgreSQL seeder splits it: consents and do-not-call in their tables."""
    created = stamp(now)
    for profile in profiles:
        attributes = dict(profile.attributes)
        ident = profile.customer_id
        listed = attributes.pop(DO_NOT_CALL, False) is True
        consents = [
            (ident, name.removeprefix(CONSENT_PREFIX), int(bool(attributes.pop(name))))
            for name in [n for n in attributes if n.startswith(CONSENT_PREFIX)]
        ]
        conn.execute("INSERT INTO customers VALUES (?, ?, ?)", (ident, json.dumps(attributes), created))
        if listed:
            conn.execute("INSERT INTO do_not_call VALUES (?, ?, 'sample')", (ident, created))
        conn.executemany("INSERT INTO consents VALUES (?, ?, ?)", consents)
        problems = phone_problems(profile.phones)
        if problems:
            raise ValueError(f"{ident}: {'; '.join(problems)}")
        if profile.phones:
            conn.executemany(
                "INSERT INTO phones VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (ident, i, p.number, p.type.value, int(p.consent), created if p.wrong_number else None)
                    for i, p in enumerate(profile.phones)
                ],
            )
        conn.executemany(
            _SEED_EVENT,
            [
                (
                    str(uuid.uuid4()),
                    ident,
                    e.type,
                    stamp(e.time),
                    json.dumps(dict(e.attributes)),
                    stamp(e.expires_at) if e.expires_at else None,
                )
                for e in profile.events
                if e.expires_at is None or e.expires_at > e.time
            ],
        )
        # The direction column only for contacts that have one, as phones only for profiles with numbers: a
        # population without them loads into a file of any schema version.
        conn.executemany(
            "INSERT INTO contacts (customer_id, decision_id, action_id, channel, time, outcome, reached)"
            " VALUES (?, NULL, ?, ?, ?, ?, ?)",
            [
                (ident, c.action_id, c.channel.value, stamp(c.time), c.outcome.value, int(c.counts))
                for c in profile.contacts
                if c.direction is None
            ],
        )
        directed = [
            (ident, c.action_id, c.channel.value, stamp(c.time), c.outcome.value, int(c.counts), c.direction.value)
            for c in profile.contacts
            if c.direction is not None
        ]
        if directed:
            conn.executemany(
                "INSERT INTO contacts (customer_id, decision_id, action_id, channel, time, outcome, reached, direction)"
                " VALUES (?, NULL, ?, ?, ?, ?, ?, ?)",
                directed,
            )
