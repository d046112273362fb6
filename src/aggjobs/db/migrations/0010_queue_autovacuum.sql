-- The two queue tables are written and emptied all day: a few thousand live rows can sit
-- beside tens of thousands of dead ones (38,000 after the benchmark's repeats), which every
-- take of a batch steps over. Autovacuum's default waits for 20% of a table to be dead; here
-- it runs once 1,000 rows are, whatever the size, and statistics follow as often.
ALTER TABLE aggjobs.pending_groups SET (
    autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 1000,
    autovacuum_analyze_scale_factor = 0, autovacuum_analyze_threshold = 1000);
ALTER TABLE aggjobs.invalidation_log SET (
    autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 1000,
    autovacuum_analyze_scale_factor = 0, autovacuum_analyze_threshold = 1000);
