-- Who asked: every decision, outcome and event records the caller's principal (`cert:<subject>`,
-- `jwt:<issuer>#<subject>`, `anonymous`), never a credential.
--
-- Nullable columns without a default rewrite nothing, so the migration is instant on large tables; rows from
-- before stay NULL, which the export reads as "" (not recorded).
ALTER TABLE decisions ADD COLUMN caller text;
ALTER TABLE outcomes ADD COLUMN recorded_by text;
ALTER TABLE events ADD COLUMN recorded_by text;
