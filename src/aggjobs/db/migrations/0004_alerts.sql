-- 0004: alert incidents. One row per incident (a problem of `aggjobs status`, by key), opened
-- when it is first seen and resolved when it clears; each change is announced once.
CREATE TABLE aggjobs.alerts (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    key text NOT NULL,
    message text NOT NULL,
    opened_at timestamptz NOT NULL DEFAULT now(),
    resolved_at timestamptz
);
CREATE UNIQUE INDEX alerts_one_open_per_key ON aggjobs.alerts (key) WHERE resolved_at IS NULL;
