-- Explaining any past decision: what replays it, and the ruleset text that made it.
--
-- `decisions.inputs` holds the record's `inputs` object exactly as `DecisionRecord.to_json()` writes it (the
-- profile as the store returned it, and the action limit), NULL in records written before it was kept. Adding
-- a nullable column without a default rewrites nothing, so the migration is instant on a large table.
ALTER TABLE decisions ADD COLUMN inputs jsonb;

-- The ruleset archive: every version that served, by content hash. A decision names its version by hash only;
-- this is where that hash turns back into the text a reviewer can read. Never deleted.
CREATE TABLE ruleset_sources (
    hash     text PRIMARY KEY CHECK (hash ~ '^[0-9a-f]{64}$'),
    name     text NOT NULL,
    version  text NOT NULL,
    source   text NOT NULL,
    kept_at  timestamptz NOT NULL DEFAULT now()
);
-- `text_pattern_ops`: a lookup by a prefix of the hash (`LIKE 'abc%'`) uses the index.
CREATE INDEX ruleset_sources_prefix ON ruleset_sources (hash text_pattern_ops);

-- Each time a version became active; not again while it stays the name's latest activation.
CREATE TABLE ruleset_activations (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name          text NOT NULL,
    hash          text NOT NULL REFERENCES ruleset_sources,
    activated_at  timestamptz NOT NULL
);
CREATE INDEX ruleset_activations_name_time ON ruleset_activations (name, activated_at);
