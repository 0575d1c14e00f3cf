-- Measurement (nba_service.review.report): every action a decision showed, and every action it held out
-- (dropped with reason held_out), as one narrow row each. The report reads these instead of the decision
-- records: a year of decisions is ten million wide rows, and this table is what the aggregation needs of them.
--
-- The rows are derived in the database by a trigger, from the inserted decisions themselves, so every way a
-- record arrives (the writer, `nba db replay`, an import) adds its exposures in the same statement and nothing
-- can disagree with the record. An action named twice (two rules, one action) counts once per decision.
ALTER TABLE decisions ADD COLUMN journey_stage text;

CREATE TABLE exposures (
    decision_id      uuid NOT NULL,
    action_id        text NOT NULL,
    held_out         boolean NOT NULL,
    customer_id      text NOT NULL,
    decided_at       timestamptz NOT NULL,
    rule_id          text NOT NULL,
    channel          text NOT NULL,
    direction        text,
    ruleset_name     text NOT NULL,
    ruleset_version  text NOT NULL,
    journey_stage    text
);
-- No other index: each one slows every decision's write, and the report scans a time range.
CREATE INDEX exposures_time ON exposures USING brin (decided_at);
-- Answers that never reached the caller are few; the report leaves their exposures out through this.
CREATE INDEX decisions_undelivered ON decisions (decision_id) WHERE delivery <> 'sent';

CREATE FUNCTION decision_exposures() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO exposures (decision_id, action_id, held_out, customer_id, decided_at, rule_id, channel, direction,
                           ruleset_name, ruleset_version, journey_stage)
    SELECT DISTINCT ON (n.decision_id, x.item->>'action_id', x.held_out)
           n.decision_id, x.item->>'action_id', x.held_out, n.customer_id, n.decided_at,
           coalesce(x.item->>'rule_id', ''),
           n.channel, n.direction, n.ruleset_name, n.ruleset_version, n.journey_stage
      FROM new_decisions n
     CROSS JOIN LATERAL (
           SELECT a.item, false AS held_out, a.n FROM jsonb_array_elements(n.actions) WITH ORDINALITY AS a(item, n)
           UNION ALL
           SELECT d.item, true, d.n FROM jsonb_array_elements(n.dropped) WITH ORDINALITY AS d(item, n)
            WHERE d.item->>'reason' = 'held_out') x
     WHERE x.item->>'action_id' IS NOT NULL
     ORDER BY n.decision_id, x.item->>'action_id', x.held_out, x.n;
    RETURN NULL;
END
$$;

CREATE TRIGGER decisions_exposures AFTER INSERT ON decisions
    REFERENCING NEW TABLE AS new_decisions FOR EACH STATEMENT EXECUTE FUNCTION decision_exposures();

-- The decisions already stored: the same derivation (their journey stage was not recorded).
INSERT INTO exposures (decision_id, action_id, held_out, customer_id, decided_at, rule_id, channel, direction,
                       ruleset_name, ruleset_version, journey_stage)
SELECT DISTINCT ON (n.decision_id, x.item->>'action_id', x.held_out)
       n.decision_id, x.item->>'action_id', x.held_out, n.customer_id, n.decided_at,
           coalesce(x.item->>'rule_id', ''),
       n.channel, n.direction, n.ruleset_name, n.ruleset_version, n.journey_stage
  FROM decisions n
 CROSS JOIN LATERAL (
       SELECT a.item, false AS held_out, a.n FROM jsonb_array_elements(n.actions) WITH ORDINALITY AS a(item, n)
       UNION ALL
       SELECT d.item, true, d.n FROM jsonb_array_elements(n.dropped) WITH ORDINALITY AS d(item, n)
        WHERE d.item->>'reason' = 'held_out') x
 WHERE x.item->>'action_id' IS NOT NULL
 ORDER BY n.decision_id, x.item->>'action_id', x.held_out, x.n;
