-- Who started each contact: the customer calling in (inbound: an agent answering) or us calling out (outbound:
-- a dialer, or an agent's own call). Caps and constraints count a customer's contacts in the same direction,
-- so the decision keeps its direction, and each outcome and contact row the direction of the decision it
-- answers. Nullable without a default, so adding them rewrites nothing: NULL in rows from before (and in rows
-- other systems write) reads as the channel's usual direction. The CHECKs are NOT VALID because every existing
-- row holds NULL: validating would only scan the decision log under the migration's exclusive lock.
ALTER TABLE decisions ADD COLUMN direction text;
ALTER TABLE decisions ADD CONSTRAINT decisions_direction_check CHECK (direction IN ('inbound', 'outbound')) NOT VALID;
ALTER TABLE outcomes ADD COLUMN direction text;
ALTER TABLE outcomes ADD CONSTRAINT outcomes_direction_check CHECK (direction IN ('inbound', 'outbound')) NOT VALID;
ALTER TABLE contacts ADD COLUMN direction text;
ALTER TABLE contacts ADD CONSTRAINT contacts_direction_check CHECK (direction IN ('inbound', 'outbound')) NOT VALID;

-- "Not now": the customer heard the offer and asked to come back to it later. It counts as a contact (for caps)
-- without being a decline. The outcome CHECKs of 0001 and 0002 list every kind, so both are widened. NOT VALID:
-- every existing row passed the narrower check it replaces, so scanning the two largest tables (under the
-- migration's exclusive lock, holding up every outcome written meanwhile) could find nothing; new rows are checked.
ALTER TABLE contacts DROP CONSTRAINT contacts_outcome_check;
ALTER TABLE contacts ADD CONSTRAINT contacts_outcome_check
    CHECK (outcome IN ('accepted', 'declined', 'no_answer', 'converted', 'callback_requested', 'not_offered',
                       'not_now')) NOT VALID;
ALTER TABLE outcomes DROP CONSTRAINT outcomes_outcome_check;
ALTER TABLE outcomes ADD CONSTRAINT outcomes_outcome_check
    CHECK (outcome IN ('accepted', 'declined', 'no_answer', 'converted', 'callback_requested', 'not_offered',
                       'not_now')) NOT VALID;
