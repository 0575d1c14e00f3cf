-- Report speed (nba_service.stores.postgres.measurement). Exposures carry their decision's delivery, kept by a
-- trigger when a correction arrives, so the report reads no decision row; `offer_outcomes` keeps, per offer, the
-- latest outcome of each kind; `report_any_within` lets the units query run in parallel workers.
--
-- Nothing here adds work to a decision's commit, which every Decide waits for: a column with a default, and a
-- trigger on corrections only. (Linking each exposure to the one before it at write time made the report 40%
-- faster and every commit a third of a millisecond slower; Decide's p99 went over its 10 ms target. Not done.)
ALTER TABLE exposures ADD COLUMN delivered boolean NOT NULL DEFAULT true;
UPDATE exposures e SET delivered = false
  FROM decisions d
 WHERE d.decision_id = e.decision_id AND d.delivery <> 'sent';

-- Corrections are rare and name one decision: its exposures are found through the BRIN index on their time (rows
-- arrive in about the order of time), not a B-tree on the decision id that every insert would pay for. The plan is
-- made once per session, maybe while the table is empty, so the planner is kept off a scan of the whole table.
CREATE FUNCTION decision_delivery() RETURNS trigger LANGUAGE plpgsql SET enable_seqscan = off AS $$
BEGIN
    UPDATE exposures e SET delivered = (NEW.delivery = 'sent')
     WHERE e.decided_at = NEW.decided_at AND e.decision_id = NEW.decision_id;
    RETURN NULL;
END
$$;

CREATE TRIGGER decisions_delivery AFTER UPDATE OF delivery ON decisions
    FOR EACH ROW WHEN (OLD.delivery IS DISTINCT FROM NEW.delivery) EXECUTE FUNCTION decision_delivery();

CREATE OR REPLACE FUNCTION decision_exposures() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO exposures (decision_id, action_id, held_out, customer_id, decided_at, rule_id, channel, direction,
                           ruleset_name, ruleset_version, journey_stage, delivered)
    SELECT DISTINCT ON (n.decision_id, x.item->>'action_id', x.held_out)
           n.decision_id, x.item->>'action_id', x.held_out, n.customer_id, n.decided_at,
           coalesce(x.item->>'rule_id', ''),
           n.channel, n.direction, n.ruleset_name, n.ruleset_version, n.journey_stage, n.delivery = 'sent'
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

-- Offers: which outcomes each offer had. The report joins every exposure of the window with them; grouping the
-- outcomes per offer at report time had each parallel worker build the whole grouping for itself. Kept per offer
-- as outcomes arrive: the latest time of each kind (the report asks for one since its window began).
CREATE TABLE offer_outcomes (
    decision_id   uuid NOT NULL,
    action_id     text NOT NULL,
    accepted_at   timestamptz,
    declined_at   timestamptz,
    converted_at  timestamptz,
    not_now_at    timestamptz,
    PRIMARY KEY (decision_id, action_id)
);

CREATE FUNCTION outcome_offers() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO offer_outcomes AS o (decision_id, action_id, accepted_at, declined_at, converted_at, not_now_at)
    SELECT n.decision_id, n.action_id,
           max(n.time) FILTER (WHERE n.outcome = 'accepted'), max(n.time) FILTER (WHERE n.outcome = 'declined'),
           max(n.time) FILTER (WHERE n.outcome = 'converted'), max(n.time) FILTER (WHERE n.outcome = 'not_now')
      FROM new_outcomes n
     WHERE n.outcome IN ('accepted', 'declined', 'converted', 'not_now')
     GROUP BY n.decision_id, n.action_id
     ORDER BY n.decision_id, n.action_id
        ON CONFLICT (decision_id, action_id) DO UPDATE
       SET accepted_at = greatest(o.accepted_at, excluded.accepted_at),
           declined_at = greatest(o.declined_at, excluded.declined_at),
           converted_at = greatest(o.converted_at, excluded.converted_at),
           not_now_at = greatest(o.not_now_at, excluded.not_now_at);
    RETURN NULL;
END
$$;

CREATE TRIGGER outcomes_offers AFTER INSERT ON outcomes
    REFERENCING NEW TABLE AS new_outcomes FOR EACH STATEMENT EXECUTE FUNCTION outcome_offers();

INSERT INTO offer_outcomes (decision_id, action_id, accepted_at, declined_at, converted_at, not_now_at)
SELECT decision_id, action_id,
       max(time) FILTER (WHERE outcome = 'accepted'), max(time) FILTER (WHERE outcome = 'declined'),
       max(time) FILTER (WHERE outcome = 'converted'), max(time) FILTER (WHERE outcome = 'not_now')
  FROM outcomes
 WHERE outcome IN ('accepted', 'declined', 'converted', 'not_now')
 GROUP BY decision_id, action_id;

-- Whether any of a unit's conversion times falls in its window: a function, not a subquery, so that the report's
-- aggregation may run in parallel workers.
CREATE FUNCTION report_any_within(times timestamptz[], after timestamptz, upto timestamptz, from_start boolean)
RETURNS boolean LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
DECLARE
    t timestamptz;
BEGIN
    FOREACH t IN ARRAY times LOOP
        IF (t > after OR (from_start AND t = after)) AND t <= upto THEN
            RETURN true;
        END IF;
    END LOOP;
    RETURN false;
END
$$;
