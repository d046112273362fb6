-- Liveness (docs/jobs.md, "Liveness"): the heartbeats of workers and schedulers
-- (aggjobs.heartbeats, migration 0016). Every time is the database's clock, so that hosts
-- whose clocks differ agree. Loaded by aggjobs.sql.query(name).

-- name: heartbeat
-- A process's heartbeat: its row made or refreshed; `first` (its first heartbeat) starts it
-- anew (a restarted worker keeps its node name, so the row is the same).
INSERT INTO aggjobs.heartbeats AS h (kind, name, host, pid, queues, version)
VALUES (%(kind)s, %(name)s, %(host)s, %(pid)s, %(queues)s, %(version)s)
ON CONFLICT (kind, name) DO UPDATE SET
    host = EXCLUDED.host, pid = EXCLUDED.pid, queues = EXCLUDED.queues,
    version = EXCLUDED.version, seen_at = now(), stopped_at = NULL,
    started_at = CASE WHEN %(first)s THEN now() ELSE h.started_at END

-- name: heartbeat_stopped
-- A clean shutdown: the process says it has stopped (only its own row: a namesake started
-- since on another host keeps its own).
UPDATE aggjobs.heartbeats SET stopped_at = now(), seen_at = now()
WHERE kind = %(kind)s AND name = %(name)s AND host = %(host)s AND pid = %(pid)s
  AND stopped_at IS NULL

-- name: heartbeats
-- Every process seen, with the age of its last heartbeat and how long it has not been alive
-- (since its clean stop, else since its last heartbeat), in seconds at this statement.
SELECT kind, name, host, pid, queues, version, started_at, seen_at, stopped_at,
       greatest(extract(epoch FROM statement_timestamp() - seen_at), 0)::float8
           AS age_seconds,
       greatest(extract(epoch FROM statement_timestamp() - coalesce(stopped_at, seen_at)),
                0)::float8 AS down_seconds,
       statement_timestamp() AS checked_at
FROM aggjobs.heartbeats
ORDER BY kind DESC, name
