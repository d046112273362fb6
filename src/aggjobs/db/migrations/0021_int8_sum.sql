-- The sum of bigint counts, as a bigint, for the coarser grains' merges of counts (sql/rollup.py).
-- sum(bigint) keeps its state apart from the group (an internal int128, then a numeric
-- to cast back), one more allocation a group to miss in the processor's cache for every
-- row; int8pl's state is the group's own bigint. 50,000 workspaces' execution_metrics day
-- from 1.2M hourly rows, its four count sums alone: 640 ms with sum()::bigint, 360 ms with
-- this (docs/benchmarks.md). Over counts (never negative) the result is the same: NULL over
-- no values (a strict transition starts from the first), and a total past the bigint range
-- fails with the error the cast of sum()'s numeric raised ("bigint out of range", 22003).
CREATE AGGREGATE aggjobs.int8_sum(bigint) (
    SFUNC = int8pl,
    STYPE = bigint,
    COMBINEFUNC = int8pl,
    PARALLEL = SAFE
);
