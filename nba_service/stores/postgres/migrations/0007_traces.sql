-- The OpenTelemetry trace each decision was made in (32 hex digits), so an explanation leads to its trace.
--
-- Nullable without a default: instant on large tables. NULL in rows from before, and whenever tracing is off;
-- the export reads it as "" (not traced).
ALTER TABLE decisions ADD COLUMN trace_id text;
