-- Units (nba_service.domain.measurement): a customer and an action, at the first exposure in the report's window.
-- Finding those first exposures at report time meant sorting every exposure of the window (twenty million rows a
-- year, most of a minute on their own). Each exposure now carries the time of the one before it for the same
-- customer and action under the same ruleset (`prev_at`; NULL for the first ever), kept as rows arrive in any
-- order, so the first exposure in a window is the one whose predecessor is older than the window: a filter.
-- The chain runs over every exposure, delivered or not: a delivery corrected later changes no link, and the report
-- looks up, through the index below, the few units whose first exposure in the window was never delivered.
-- `delivered` copies the decision's delivery (kept by a trigger when it is corrected), so the report reads no
-- decision row.
--
-- The table is written anew, with each stored exposure's link and delivery, in order of time (which the BRIN index
-- relies on): updating every row in place would leave half the table dead and out of order.
SET LOCAL work_mem = '256MB';
SET LOCAL maintenance_work_mem = '256MB';
ALTER TABLE exposures RENAME TO exposures_0011;
CREATE TABLE exposures (
    LIKE exposures_0011 INCLUDING DEFAULTS INCLUDING CONSTRAINTS,
    prev_at    timestamptz,
    delivered  boolean NOT NULL DEFAULT true
);
INSERT INTO exposures
SELECT x.*,
       lag(x.decided_at) OVER (PARTITION BY x.ruleset_name, x.customer_id, x.action_id
                               ORDER BY x.decided_at, x.decision_id, x.held_out),
       u.decision_id IS NULL
  FROM exposures_0011 x
  LEFT JOIN decisions u ON u.decision_id = x.decision_id AND u.delivery <> 'sent'
 ORDER BY x.decided_at;
DROP TABLE exposures_0011;
CREATE INDEX exposures_time ON exposures USING brin (decided_at);
CREATE INDEX exposures_pairs ON exposures (ruleset_name, customer_id, action_id, decided_at);

-- One row per customer whose decisions have exposures: what a writer locks while it links them (below).
CREATE TABLE exposure_writers (customer_id text PRIMARY KEY);

-- JIT off: the planner's estimate for the lookups passes the JIT thresholds, and compiling took 400 ms of every
-- commit, one record or five hundred (measured; the lookups themselves take a few milliseconds).
CREATE OR REPLACE FUNCTION decision_exposures() RETURNS trigger LANGUAGE plpgsql SET jit = off AS $$
BEGIN
    -- Two writers storing one customer's decisions at once would each miss the other's rows: the second waits for
    -- the first to commit (rows locked in one order, so no two writers wait on each other), then reads its rows.
    -- Row locks, not advisory ones: a bulk load of a million decisions would exhaust the shared lock table.
    INSERT INTO exposure_writers (customer_id)
    SELECT DISTINCT n.customer_id FROM new_decisions n ORDER BY 1
        ON CONFLICT (customer_id) DO NOTHING;
    PERFORM 1 FROM exposure_writers w
      WHERE w.customer_id IN (SELECT n.customer_id FROM new_decisions n)
      ORDER BY w.customer_id
        FOR UPDATE;
    WITH fresh AS MATERIALIZED (
        SELECT DISTINCT ON (n.decision_id, x.item->>'action_id', x.held_out)
               n.decision_id, x.item->>'action_id' AS action_id, x.held_out, n.customer_id, n.decided_at,
               coalesce(x.item->>'rule_id', '') AS rule_id,
               n.channel, n.direction, n.ruleset_name, n.ruleset_version, n.journey_stage,
               n.delivery = 'sent' AS delivered
          FROM new_decisions n
         CROSS JOIN LATERAL (
               SELECT a.item, false AS held_out, a.n FROM jsonb_array_elements(n.actions) WITH ORDINALITY AS a(item, n)
               UNION ALL
               SELECT d.item, true, d.n FROM jsonb_array_elements(n.dropped) WITH ORDINALITY AS d(item, n)
                WHERE d.item->>'reason' = 'held_out') x
         WHERE x.item->>'action_id' IS NOT NULL
         ORDER BY n.decision_id, x.item->>'action_id', x.held_out, x.n
    ), successors AS (
        -- A row that arrives late (a replayed spill file) becomes the predecessor of the stored row after it.
        SELECT s.ruleset_name, s.customer_id, s.action_id, s.decided_at, s.decision_id, s.held_out,
               max(f.decided_at) AS prev_at
          FROM fresh f
         CROSS JOIN LATERAL (
               SELECT p.* FROM exposures p
                WHERE p.ruleset_name = f.ruleset_name AND p.customer_id = f.customer_id
                  AND p.action_id = f.action_id AND p.decided_at >= f.decided_at
                  AND (p.decided_at, p.decision_id, p.held_out) > (f.decided_at, f.decision_id, f.held_out)
                ORDER BY p.decided_at, p.decision_id, p.held_out
                LIMIT 1) s
         GROUP BY 1, 2, 3, 4, 5, 6
    ), relinked AS (
        UPDATE exposures e SET prev_at = s.prev_at
          FROM successors s
         WHERE e.ruleset_name = s.ruleset_name AND e.customer_id = s.customer_id AND e.action_id = s.action_id
           AND e.decided_at = s.decided_at AND e.decision_id = s.decision_id AND e.held_out = s.held_out
           AND (e.prev_at IS NULL OR e.prev_at < s.prev_at)
    )
    INSERT INTO exposures (decision_id, action_id, held_out, customer_id, decided_at, rule_id, channel, direction,
                           ruleset_name, ruleset_version, journey_stage, delivered, prev_at)
    SELECT f.decision_id, f.action_id, f.held_out, f.customer_id, f.decided_at, f.rule_id, f.channel, f.direction,
           f.ruleset_name, f.ruleset_version, f.journey_stage, f.delivered,
           greatest(
               lag(f.decided_at) OVER (PARTITION BY f.ruleset_name, f.customer_id, f.action_id
                                       ORDER BY f.decided_at, f.decision_id, f.held_out),
               (SELECT p.decided_at FROM exposures p
                 WHERE p.ruleset_name = f.ruleset_name AND p.customer_id = f.customer_id
                   AND p.action_id = f.action_id AND p.decided_at <= f.decided_at
                   AND (p.decided_at, p.decision_id, p.held_out) < (f.decided_at, f.decision_id, f.held_out)
                 ORDER BY p.decided_at DESC, p.decision_id DESC, p.held_out DESC
                 LIMIT 1))
      FROM fresh f;
    RETURN NULL;
END
$$;

CREATE FUNCTION decision_delivery() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE exposures e SET delivered = (NEW.delivery = 'sent')
     WHERE e.ruleset_name = NEW.ruleset_name AND e.customer_id = NEW.customer_id
       AND e.decided_at = NEW.decided_at AND e.decision_id = NEW.decision_id;
    RETURN NULL;
END
$$;

CREATE TRIGGER decisions_delivery AFTER UPDATE OF delivery ON decisions
    FOR EACH ROW WHEN (OLD.delivery IS DISTINCT FROM NEW.delivery) EXECUTE FUNCTION decision_delivery();

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
