-- 0019 (issue 16): the hours a live view computes from the raw rows, [lo, hi) an hour apart
-- (sql/live.py, `ahead`). generate_series would do, but the planner sizes any set of it
-- whose bounds it cannot know (the watermark, now()) as 1,000 rows: a million-run open hour
-- then costs as a thousand hours, enough for JIT to inline and optimize the whole view (about
-- a second, more than the hour's own work). ROWS 2 is what it is: the open hour, and the one
-- just closed until the next run materializes it. The SET clause keeps the planner from
-- inlining the function, which would bring back generate_series' estimate.
CREATE FUNCTION aggjobs.live_hours(lo timestamptz, hi timestamptz)
RETURNS SETOF timestamptz
LANGUAGE sql STABLE PARALLEL SAFE ROWS 2 SET search_path = pg_catalog AS $$
    SELECT generate_series(lo, hi - interval '1 hour', interval '1 hour')
$$;
