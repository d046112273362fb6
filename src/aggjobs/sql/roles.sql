-- Least privilege (docs/security.md): threshold repair, foreign advisory-lock holders.
-- Loaded by aggjobs.sql.query(name).

-- name: repair_threshold
-- A source's tracking threshold outside the bounds move_tracking_threshold accepts
-- (aggjobs.tracking_threshold_allowed: infinite, BC, far ahead of now; written by hand or
-- before migration 0011) goes back to the end of what the source's rollups materialized:
-- rows before the greatest watermark must stay tracked, rows after it need not be. NULL when
-- nothing is materialized; the current hour when that watermark is itself out of bounds.
-- Returns the broken value as text (psycopg cannot read 'infinity' or a BC time as a
-- datetime) and the new one, within bounds (no cast in RETURNING: Citus refuses it).
WITH old AS (
    SELECT s.source, s.threshold::text AS broken FROM aggjobs.sources AS s
    WHERE s.source = %(source)s AND NOT aggjobs.tracking_threshold_allowed(s.threshold)
    FOR UPDATE
), materialized AS (
    SELECT max(w.watermark) AS until FROM aggjobs.watermarks AS w
    WHERE w.rollup = ANY(%(rollups)s::text[])
), repaired AS (
    -- Computed apart from the UPDATE: Citus refuses a non-IMMUTABLE function in a CASE of
    -- the UPDATE of a reference table (aggjobs.sources on Citus: docs/scaling.md).
    SELECT CASE
               WHEN m.until IS NULL THEN NULL
               WHEN aggjobs.tracking_threshold_allowed(m.until) THEN m.until
               ELSE date_trunc('hour', now(), 'UTC')
           END AS threshold
    FROM materialized AS m
)
UPDATE aggjobs.sources AS s
SET threshold = m.threshold, updated_at = now()
FROM old, repaired AS m
WHERE s.source = old.source
RETURNING old.broken, m.threshold

-- name: foreign_lock_holders
-- Sessions of this database holding one of aggjobs' advisory locks whose role is not one
-- aggjobs runs as: not a member of aggjobs_worker, nor of the owner of the aggjobs schema
-- (the migrating role; superusers are members of every role). pg_locks shows every
-- session's locks to everyone; pg_stat_activity hides the client address and session start
-- of other roles' sessions unless the reader has pg_read_all_stats (they are NULL then).
-- Two-key locks (pg_advisory_lock(int, int)) show their keys as classid and objid with
-- objsubid 2; one-key locks (pg_advisory_lock(bigint)) their high and low halves with
-- objsubid 1. `%(names)s` maps the second key back to a job's or rollup's name.
WITH spaces(kind, key1, single) AS (
    VALUES ('job', 'aggjobs.job', false), ('job steps', 'aggjobs.job-steps', false),
           ('heavy-job slot', 'aggjobs.heavy', false), ('rollup', 'aggjobs.rollup', false),
           ('view caches', 'aggjobs.view_caches', true), ('alerts', 'aggjobs.alerts', true),
           ('migrate', 'aggjobs.migrate', true)
), held AS (
    SELECT s.kind, l.pid,
           CASE WHEN s.single THEN NULL
                ELSE coalesce((SELECT n FROM unnest(%(names)s::text[]) AS n
                               WHERE hashtext(n)::bigint & 4294967295 = l.objid::bigint
                               LIMIT 1), l.objid::text) END AS name
    FROM pg_locks AS l
    JOIN spaces AS s ON CASE
        WHEN s.single THEN l.objsubid = 1
            AND l.classid::bigint = (hashtext(s.key1)::bigint >> 32) & 4294967295
            AND l.objid::bigint = hashtext(s.key1)::bigint & 4294967295
        ELSE l.objsubid = 2 AND l.classid::bigint = hashtext(s.key1)::bigint & 4294967295
    END
    WHERE l.locktype = 'advisory' AND l.granted
      AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
)
SELECT h.kind, h.name, a.pid, a.usename::text AS usename, a.application_name,
       host(a.client_addr) AS client_addr, a.backend_start
FROM held AS h
JOIN pg_stat_activity AS a ON a.pid = h.pid
WHERE a.usesysid IS NOT NULL
  AND NOT pg_has_role(a.usesysid, 'aggjobs_worker', 'MEMBER')
  AND NOT pg_has_role(a.usesysid, (SELECT nspowner FROM pg_namespace
                                   WHERE nspname = 'aggjobs'), 'MEMBER')
  AND (%(kind)s::text IS NULL OR h.kind = %(kind)s)
  AND (%(name)s::text IS NULL OR h.name = %(name)s)
ORDER BY a.backend_start, a.pid, h.kind, h.name
