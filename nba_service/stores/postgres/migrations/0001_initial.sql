-- The shared store: other systems write customers, consents and events here all day;
-- the service reads live profiles and writes events, outcomes and decisions.

CREATE TABLE customers (
    customer_id  text PRIMARY KEY CHECK (length(customer_id) BETWEEN 1 AND 64),
    attributes   jsonb NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(attributes) = 'object'),
    updated_at   timestamptz NOT NULL DEFAULT now()
);

-- One row per customer and purpose; the profile exposes it as the boolean attribute consent_<purpose>.
CREATE TABLE consents (
    customer_id  text NOT NULL REFERENCES customers ON DELETE CASCADE,
    purpose      text NOT NULL CHECK (purpose ~ '^[a-z][a-z0-9_]{0,55}$'),
    granted      boolean NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (customer_id, purpose)
);

-- Presence means "do not call"; the profile exposes it as the boolean attribute do_not_call.
CREATE TABLE do_not_call (
    customer_id  text PRIMARY KEY REFERENCES customers ON DELETE CASCADE,
    listed_at    timestamptz NOT NULL DEFAULT now(),
    source       text NOT NULL DEFAULT ''
);

CREATE TABLE events (
    event_id     uuid PRIMARY KEY,
    customer_id  text NOT NULL REFERENCES customers ON DELETE CASCADE,
    type         text NOT NULL CHECK (type ~ '^[a-z][a-z0-9_-]{0,63}$'),
    time         timestamptz NOT NULL,
    attributes   jsonb NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(attributes) = 'object'),
    expires_at   timestamptz,
    CHECK (expires_at IS NULL OR expires_at > time)
);
CREATE INDEX events_customer_time ON events (customer_id, time DESC);

-- Contact history: what reached a customer and how it ended (feeds frequency caps and measurement).
CREATE TABLE contacts (
    contact_id   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    customer_id  text NOT NULL REFERENCES customers ON DELETE CASCADE,
    decision_id  uuid,
    action_id    text NOT NULL,
    channel      text NOT NULL CHECK (channel IN ('agent_desktop', 'outbound_dialer')),
    time         timestamptz NOT NULL,
    outcome      text NOT NULL CHECK (outcome IN ('accepted', 'declined', 'no_answer', 'converted',
                                                  'callback_requested', 'not_offered')),
    note         text NOT NULL DEFAULT ''
);
CREATE INDEX contacts_customer_time ON contacts (customer_id, time DESC);
CREATE INDEX contacts_decision ON contacts (decision_id);

-- The decision log: written in batches off the request path, never updated.
-- No foreign key to customers: the audit trail outlives a deleted customer.
CREATE TABLE decisions (
    decision_id      uuid PRIMARY KEY,
    decided_at       timestamptz NOT NULL,
    customer_id      text NOT NULL,
    channel          text NOT NULL,
    ruleset_name     text NOT NULL,
    ruleset_version  text NOT NULL,
    ruleset_hash     text NOT NULL,
    engine           text NOT NULL,
    rules_fired      jsonb NOT NULL,
    dropped          jsonb NOT NULL,
    actions          jsonb NOT NULL,
    latency_ms       double precision NOT NULL,
    context          jsonb NOT NULL DEFAULT '{}'::jsonb,
    profile_problems jsonb NOT NULL DEFAULT '[]'::jsonb,
    written_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX decisions_customer_time ON decisions (customer_id, decided_at DESC);
