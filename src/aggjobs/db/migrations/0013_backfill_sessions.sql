-- 0013 (issue 21): a backfill names its session, and its audit rows pair up.
-- backend_pid: the PostgreSQL session running the backfill. Another backfill of the same
-- rollup and range is refused while that session lives (BackfillBusy, the API's 409), and
-- resumes the row once it is gone; a 'running' row whose session is gone was abandoned.
ALTER TABLE aggjobs.backfills ADD COLUMN backend_pid integer;
-- A backfill writes a 'started' audit row when it starts, then one outcome row naming it
-- (params.started_id): succeeded, failed, refused, or abandoned (written by whoever notices
-- that its session is gone first). At most one outcome per start, whoever races to write it.
CREATE UNIQUE INDEX audit_log_one_backfill_outcome
    ON aggjobs.audit_log ((params ->> 'started_id'))
    WHERE action = 'backfill' AND params ? 'started_id';
-- The starts the abandoned sweep looks at: few (backfills are asked for by people).
CREATE INDEX audit_log_backfill_starts ON aggjobs.audit_log (id)
    WHERE action = 'backfill' AND outcome = 'started';
