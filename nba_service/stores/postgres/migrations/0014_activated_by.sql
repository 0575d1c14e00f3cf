-- Who asked for each activation (the caller's principal; '' when nobody did: a start-up or a change of the
-- configured files) and how (start-up, activate, rollback, folder, sighup). state.json keeps the same per pod;
-- this table is the one every replica shares, so an auditor finds it in one place. Activations noted before
-- this migration read '': not recorded. A constant default adds the columns without rewriting the table.
ALTER TABLE ruleset_activations ADD COLUMN activated_by text NOT NULL DEFAULT '';
ALTER TABLE ruleset_activations ADD COLUMN origin text NOT NULL DEFAULT '';
