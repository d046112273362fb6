-- Queries of `aggjobs doctor` (aggjobs.db.doctor) on a Citus cluster (docs/scaling.md).
-- Only run when extension citus is installed: they read its catalog.

-- name: citus_tables
-- How each listed table is placed: 'distributed' (by which column, in which co-location
-- group), 'reference', 'local' (a Citus local table) or NULL (a plain table, on the
-- coordinator only).
SELECT t.name,
       CASE p.partmethod WHEN 'h' THEN 'distributed' WHEN 'n' THEN
           CASE p.repmodel WHEN 't' THEN 'reference' ELSE 'local' END END AS kind,
       CASE WHEN p.partmethod = 'h'
            THEN pg_catalog.column_to_column_name(p.logicalrelid, p.partkey) END AS column_name,
       p.colocationid
FROM unnest(%(tables)s::text[]) AS t(name)
LEFT JOIN pg_dist_partition AS p ON p.logicalrelid = pg_catalog.to_regclass(t.name)
ORDER BY t.name

-- name: citus_role_can_login
-- Whether the role may log in, on the coordinator and on each worker.
SELECT 'coordinator' AS node, coalesce(
           (SELECT rolcanlogin FROM pg_catalog.pg_roles WHERE rolname = %(role)s), false)
UNION ALL
SELECT nodename || ':' || nodeport, result = 't'
FROM run_command_on_workers(pg_catalog.format(
    'SELECT coalesce((SELECT rolcanlogin FROM pg_catalog.pg_roles WHERE rolname = %%L), false)',
    %(role)s::text))

-- name: citus_setting
SELECT pg_catalog.current_setting(%(name)s, true)

-- name: citus_version
SELECT citus_version()

-- name: citus_workers
SELECT count(*) FROM pg_dist_node WHERE noderole = 'primary' AND groupid <> 0
