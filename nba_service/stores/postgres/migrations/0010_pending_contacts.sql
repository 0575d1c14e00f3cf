-- Dialer calls exported and not yet reported on (nba_service.domain.dialer.pending_call). The decision log writes
-- one contacts row per call streamed to a dialer, in the transaction that stores its decision record; it counts
-- toward frequency caps until `pending_until` (the end of the call window, or the action's expiry if sooner), so
-- a second campaign run before the dispositions are imported cannot list the same customer again. An outcome for
-- the same decision and action replaces it and sets `pending_until` back to NULL; an answer the stream never
-- carried withdraws it. `campaign_id` lets a retry of the same campaign see past its own calls.
--
-- Nullable without a default: instant on large tables, and every existing row is an ordinary contact.
ALTER TABLE contacts ADD COLUMN pending_until timestamptz;
ALTER TABLE contacts ADD COLUMN campaign_id text;
