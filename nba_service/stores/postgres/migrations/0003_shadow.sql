-- Shadow runs: what a candidate ruleset, run beside the active one, would have answered.
--
-- One nullable jsonb column holding the record's `shadow` object exactly as `DecisionRecord.to_json()` writes
-- it ({"ruleset": {...}, "agreed": ..., "actions": [...], "error": ...}), NULL when no candidate ran. Adding a
-- nullable column without a default rewrites nothing, so the migration is instant on a large table.
ALTER TABLE decisions ADD COLUMN shadow jsonb;
