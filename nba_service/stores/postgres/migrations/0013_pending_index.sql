-- A campaign's commit supersedes the pending calls an earlier attempt of the same campaign made for the same
-- customers and actions (nba_service.stores.postgres.decision_log._PENDING). Without an index on what it matches,
-- each commit of a hundred calls read every pending call in the database: 31,584 of them took 30 ms of each
-- 36 ms commit, growing with every call a campaign streams (a day's campaign at 15:00 ran past the 1 s record
-- budget and failed). Partial: only pending calls, a small share of all contacts.
CREATE INDEX contacts_pending ON contacts (customer_id, action_id, campaign_id) WHERE pending_until IS NOT NULL;
