-- The demo data generator (aggjobs.demo): staging tables in pg_temp, then one day of runs,
-- events and ledger rows per transaction. Loaded by aggjobs.sql.query(name).

-- name: demo_staging
-- The session's staging tables (temporary: gone with the session).
DROP TABLE IF EXISTS pg_temp.demo_workspaces, pg_temp.demo_runs, pg_temp.demo_late;
CREATE TEMP TABLE demo_workspaces (
    k int PRIMARY KEY, w float8 NOT NULL, users int NOT NULL, agents int NOT NULL,
    grant_amount numeric(14,4) NOT NULL
);
CREATE TEMP TABLE demo_runs (
    id bigint, workspace_id bigint, user_id bigint, agent_id bigint, status text,
    started_at timestamptz, completed_at timestamptz, runtime_seconds float8,
    credits_consumed numeric(14,4), held boolean
);
CREATE TEMP TABLE demo_late (LIKE demo_runs);

-- name: demo_workspaces
-- Zipf-like weights; pools grow sublinearly with the weight; the weekly grant covers the
-- expected weekly usage (about 1.1 credits per run) with a fifth to spare, in hundreds.
INSERT INTO pg_temp.demo_workspaces (k, w, users, agents, grant_amount)
SELECT k, w, 2 + round(300 * w ^ 0.7)::int, 1 + round(60 * w ^ 0.7)::int,
       greatest(100, ceil(%(rph)s::float8 * 168 * w * 1.1 * 1.2 / 100) * 100)
FROM (SELECT k, power(k::float8, -1.1) / sum(power(k::float8, -1.1)) OVER () AS w
      FROM generate_series(1, %(workspaces)s::int) AS k) AS z

-- name: demo_generate_runs
-- The chunk's runs. Layers: per (hour, workspace) a randomly rounded expected count; one row
-- per run with its uniform draws; then the derived columns. Each random() sits above an
-- ORDER BY so that its sequence is fixed.
WITH slots AS (
    SELECT s, t0,
           %(rph)s::float8 / %(season_mean)s::float8
           -- daily: 1x at 02 UTC, 3x at 14 UTC (hour of day from the epoch, zone-free)
           * (2 - cos(2 * pi() * (extract(epoch FROM t0) / 3600 + 0.5 - 2) / 24))
           -- weekly: Saturday and Sunday (UTC) at 0.4x
           * CASE WHEN extract(isodow FROM (t0 + interval '30 minutes') AT TIME ZONE 'UTC') >= 6
                  THEN 0.4 ELSE 1 END AS expected
    FROM generate_series(0, %(hours)s::int - 1) AS s,
         LATERAL (SELECT %(chunk_start)s::timestamptz + s * interval '1 hour' AS t0) AS t
),
cells AS MATERIALIZED (
    SELECT c.*, floor(c.expected * c.w * (0.85 + 0.3 * random()) + random())::int AS n
    FROM (SELECT sl.s, sl.t0, sl.expected, ws.k, ws.w, ws.users, ws.agents
          FROM slots AS sl CROSS JOIN pg_temp.demo_workspaces AS ws
          ORDER BY sl.s, ws.k) AS c
),
draws AS MATERIALIZED (
    SELECT r.*,
           r.t0 + floor(random() * 3600e6) * interval '1 microsecond' AS started_at,
           random() AS u_user, random() AS u_agent, random() AS u_status,
           sqrt(-2 * ln(1 - random())) * cos(2 * pi() * random()) AS z,  -- Box-Muller N(0,1)
           random() AS u_rate, random() AS u_running, random() AS u_late, random() AS u_sched
    FROM (SELECT c.s, c.t0, c.k, c.users, c.agents, i
          FROM cells AS c, generate_series(1, c.n) AS i
          ORDER BY c.s, c.k, i) AS r
),
picked AS (
    SELECT d.*,
           1 + floor(d.agents * d.u_agent ^ 1.5)::int AS agent_n,  -- a few agents do most runs
           CASE WHEN d.u_status < 0.91 THEN 'completed'
                WHEN d.u_status < 0.99 THEN 'failed' ELSE 'cancelled' END AS final_status
    FROM draws AS d
),
timed AS (
    SELECT p.*,
           -- log-normal runtime in ms: mu around 3 (by agent), sigma 1; failures end early
           greatest(1, round(1000 * exp(3 + ((p.agent_n * 7) %% 5 - 2) * 0.25 + p.z)
               * CASE p.final_status WHEN 'failed' THEN 0.4 WHEN 'cancelled' THEN 0.6
                                     ELSE 1 END)) AS runtime_ms,
           extract(epoch FROM %(end)s::timestamptz) - extract(epoch FROM p.started_at) AS age_s
    FROM picked AS p
),
shaped AS (
    SELECT t.*,
           -- still running: would finish at or after `end`, or (last 30 minutes) long-running
           t.started_at + t.runtime_ms * interval '1 millisecond' >= %(end)s::timestamptz
           OR (t.age_s < 1800 AND t.u_running < 0.5 * (1 - t.age_s / 1800)) AS running
    FROM timed AS t
)
INSERT INTO pg_temp.demo_runs
SELECT %(first_id)s::bigint + row_number() OVER (ORDER BY started_at, s, k, i),
       k,
       CASE WHEN u_sched < 0.03 THEN NULL  -- scheduled runs have no user
            ELSE k * %(stride)s::bigint + 1 + floor(users * u_user ^ 2)::int END,
       k * %(stride)s::bigint + agent_n,
       CASE WHEN running THEN 'running' ELSE final_status END,
       started_at,
       CASE WHEN NOT running THEN started_at + runtime_ms * interval '1 millisecond' END,
       CASE WHEN NOT running THEN runtime_ms / 1000.0 END,
       CASE WHEN NOT running THEN round((runtime_ms / 1000.0
            * (0.02 + (agent_n %% 3) * 0.01) * (0.9 + 0.2 * u_rate))::numeric, 4) END,
       u_late < %(late_share)s::float8 AND NOT %(last)s::boolean
FROM shaped

-- name: demo_take_late
-- The previous chunk's late runs join this chunk's batch, then this chunk's late ones wait
-- (demo_hold_late).
INSERT INTO pg_temp.demo_runs SELECT id, workspace_id, user_id, agent_id, status, started_at, completed_at, runtime_seconds, credits_consumed, false FROM pg_temp.demo_late;
TRUNCATE pg_temp.demo_late;

-- name: demo_hold_late
INSERT INTO pg_temp.demo_late SELECT * FROM pg_temp.demo_runs WHERE held

-- name: demo_insert_runs
INSERT INTO public.agent_runs (id, workspace_id, user_id, agent_id, status, started_at, completed_at, runtime_seconds, credits_consumed)
SELECT id, workspace_id, user_id, agent_id, status, started_at, completed_at, runtime_seconds, credits_consumed FROM pg_temp.demo_runs WHERE NOT held ORDER BY id

-- name: demo_insert_events
-- Around each run of a known user: maybe a login and an edit before it, the start itself,
-- often a look at the dashboard after it. Only events inside [start, end) are kept.
WITH kinds (ord, event_type, p, lo_s, hi_s) AS (VALUES
    (1, 'login', 0.15, -3600, -60),
    (2, 'edited_agent', 0.20, -1800, -10),
    (3, 'run_started', 1.0, 0, 0),
    (4, 'viewed_dashboard', 0.80, 5, 900)
),
drawn AS MATERIALIZED (
    SELECT x.*, random() AS u_keep,
           x.started_at + floor((x.lo_s + (x.hi_s - x.lo_s) * random()) * 1000)
                          * interval '1 millisecond' AS occurred_at
    FROM (SELECT r.id AS run_id, r.workspace_id, r.user_id, r.started_at, k.*
          FROM pg_temp.demo_runs AS r CROSS JOIN kinds AS k
          WHERE NOT r.held AND r.user_id IS NOT NULL
          ORDER BY r.id, k.ord) AS x
)
INSERT INTO public.user_events (id, workspace_id, user_id, event_type, occurred_at)
SELECT %(first_id)s::bigint + row_number() OVER (ORDER BY occurred_at, run_id, ord),
       workspace_id, user_id, event_type, occurred_at
FROM drawn
WHERE u_keep < p
  AND occurred_at >= %(start)s::timestamptz AND occurred_at < %(end)s::timestamptz

-- name: demo_insert_transactions
-- The ledger: usage mirrors each finished run exactly; refunds give back part of some failed
-- runs; grants open each week; adjustments are rare corrections either way.
WITH refunds AS MATERIALIZED (
    SELECT x.*, random() AS u_pick, random() AS u_share, random() AS u_delay
    FROM (SELECT id, workspace_id, user_id, completed_at, credits_consumed
          FROM pg_temp.demo_runs
          WHERE NOT held AND status = 'failed' AND credits_consumed > 0
          ORDER BY id) AS x
),
adjustments AS MATERIALIZED (
    SELECT ws.*, random() AS u_pick, random() AS u_amount, random() AS u_when
    FROM (SELECT k, grant_amount FROM pg_temp.demo_workspaces ORDER BY k) AS ws
),
ledger (kind, src, workspace_id, user_id, amount, created_at) AS (
    SELECT 'usage', id, workspace_id, user_id, credits_consumed,
           CASE WHEN completed_at < %(end)s::timestamptz THEN completed_at ELSE started_at END
    FROM pg_temp.demo_runs
    WHERE NOT held AND credits_consumed > 0
    UNION ALL
    SELECT 'refund', id, workspace_id, user_id,
           round(credits_consumed * (0.5 + 0.5 * u_share)::numeric, 4),
           completed_at + floor(u_delay * 3600e3) * interval '1 millisecond'
    FROM refunds
    WHERE u_pick < 0.3
    UNION ALL
    SELECT 'grant', k, k, NULL::bigint, grant_amount, g
    FROM pg_temp.demo_workspaces, unnest(%(grants)s::timestamptz[]) AS g
    UNION ALL
    SELECT 'adjustment', k, k, NULL::bigint,
           round(((u_amount * 2 - 0.6) * grant_amount * 0.02)::numeric, 4),
           %(chunk_start)s::timestamptz + floor(u_when * %(hours)s::int * 3600e3)
                                          * interval '1 millisecond'
    FROM adjustments
    WHERE u_pick < 0.05
)
INSERT INTO public.credit_transactions (id, workspace_id, user_id, kind, amount, created_at)
SELECT %(first_id)s::bigint + row_number() OVER (ORDER BY created_at, kind, src),
       workspace_id, user_id, kind, amount, created_at
FROM ledger
WHERE amount <> 0 AND created_at < %(end)s::timestamptz

-- name: demo_next_ids
-- The next free id of each platform table, less one (ids continue after what is there).
SELECT (SELECT coalesce(max(id), 0) FROM public.agent_runs), (SELECT coalesce(max(id), 0) FROM public.user_events), (SELECT coalesce(max(id), 0) FROM public.credit_transactions)

-- name: demo_drop_staging
DROP TABLE IF EXISTS pg_temp.demo_workspaces, pg_temp.demo_runs, pg_temp.demo_late

-- name: demo_chunk_settings
-- generate_series's default estimate (1000 rows per call) would make the planner JIT-
-- compile every chunk (~0.6 s each); the sorts fit in memory with a larger work_mem.
SET LOCAL jit = off;
SET LOCAL work_mem = '64MB'

-- name: demo_setseed
-- The chunk's random sequence.
SELECT setseed(%s)

-- name: demo_empty_runs
TRUNCATE pg_temp.demo_runs
