-- Answered means recorded, and outcomes per offer are bounded.
--
-- Contacts become one row per offered action (decision_id, action_id) holding its latest outcome: replayed
-- or repeated outcomes used to add a row each, and a customer with thousands of rows paid for all of them on
-- every profile read. Every outcome is still kept, append-only, in `outcomes` (audit and measurement).
-- Decisions say whether their answer reached the caller; records the database refuses are set aside in
-- `dead_letters` with the error instead of blocking the decision log.

-- Whether any outcome of the offer meant the customer heard it: a later no-answer must not undo that for caps.
-- NULL (rows other systems write) means "judge by the outcome".
ALTER TABLE contacts ADD COLUMN reached boolean;

-- Every outcome reported before this migration was one contacts row; keep them all as the audit trail.
CREATE TABLE outcomes (
    outcome_id   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    decision_id  uuid NOT NULL,
    customer_id  text NOT NULL,
    action_id    text NOT NULL,
    channel      text NOT NULL CHECK (channel IN ('agent_desktop', 'outbound_dialer')),
    outcome      text NOT NULL CHECK (outcome IN ('accepted', 'declined', 'no_answer', 'converted',
                                                  'callback_requested', 'not_offered')),
    time         timestamptz NOT NULL,
    note         text NOT NULL DEFAULT '',
    recorded_at  timestamptz NOT NULL DEFAULT now()
);
-- No foreign keys: like decisions, the audit trail outlives a deleted customer.
CREATE INDEX outcomes_customer_time ON outcomes (customer_id, time);
CREATE INDEX outcomes_time ON outcomes (time);

INSERT INTO outcomes (decision_id, customer_id, action_id, channel, outcome, time, note)
SELECT decision_id, customer_id, action_id, channel, outcome, time, note
  FROM contacts
 WHERE decision_id IS NOT NULL
 ORDER BY contact_id;

-- One contact per offered action: the latest outcome (by its time, then by arrival) stays, and it counts as
-- reached when any of the merged rows was a contacted outcome.
UPDATE contacts c
   SET reached = g.reached
  FROM (SELECT decision_id, action_id,
               bool_or(outcome IN ('accepted', 'declined', 'converted', 'callback_requested')) AS reached
          FROM contacts
         WHERE decision_id IS NOT NULL
         GROUP BY decision_id, action_id) g
 WHERE c.decision_id = g.decision_id AND c.action_id = g.action_id;

DELETE FROM contacts c
 USING (SELECT contact_id,
               row_number() OVER (PARTITION BY decision_id, action_id ORDER BY time DESC, contact_id DESC) AS n
          FROM contacts
         WHERE decision_id IS NOT NULL) ranked
 WHERE c.contact_id = ranked.contact_id AND ranked.n > 1;

CREATE UNIQUE INDEX contacts_offer ON contacts (decision_id, action_id) WHERE decision_id IS NOT NULL;

-- Whether the answer reached the caller; rows written before this migration were answered.
ALTER TABLE decisions
    ADD COLUMN delivery text NOT NULL DEFAULT 'sent'
        CHECK (delivery IN ('sent', 'deadline_exceeded', 'cancelled', 'failed'));

-- Records the database refused (a value it cannot hold), set aside so the others are stored.
-- `record` is the record's JSON with every non-ASCII character escaped, so even NUL fits in text.
CREATE TABLE dead_letters (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    decision_id   text NOT NULL,
    error         text NOT NULL,
    record        text NOT NULL,
    set_aside_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX dead_letters_decision ON dead_letters (decision_id);

-- The profile read looks up the newest live event of each declared type: one short index scan per type,
-- however many events of other types a customer has.
CREATE INDEX events_customer_type_time ON events (customer_id, type, time DESC);
