-- Contact points for dialer campaigns: each customer's phone numbers in E.164, in the customer's order of
-- preference, with the customer's consent to be called on each. `wrong_number_at` is set when a dialer
-- reported that the number does not reach the customer: such a number is never exported again, and the
-- consent stays as the customer gave it. The CHECK is the one rule every writer meets, other systems included.
CREATE TABLE phones (
    customer_id      text NOT NULL REFERENCES customers ON DELETE CASCADE,
    position         smallint NOT NULL CHECK (position >= 0),
    number           text NOT NULL CHECK (number ~ '^\+[1-9][0-9]{7,14}$'),
    type             text NOT NULL CHECK (type IN ('mobile', 'home', 'work')),
    consent          boolean NOT NULL,
    wrong_number_at  timestamptz,
    updated_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (customer_id, number)
);

-- A dialer's disposition file imported twice stores each outcome once: the importer gives every row a key.
-- Nullable without a default, so adding it rewrites nothing; outcomes reported one by one have none.
ALTER TABLE outcomes ADD COLUMN idempotency_key text;
CREATE UNIQUE INDEX outcomes_idempotency ON outcomes (idempotency_key) WHERE idempotency_key IS NOT NULL;
