-- 0003: API tokens for `aggjobs serve`. Only the SHA-256 of each secret is stored (the
-- secret is shown once, by `aggjobs token create`); roles are ordered viewer < operator <
-- admin. A token is valid while it is neither revoked nor past its expiry.
CREATE TABLE aggjobs.api_tokens (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name text NOT NULL UNIQUE CHECK (name <> ''),
    role text NOT NULL CHECK (role IN ('viewer', 'operator', 'admin')),
    token_hash text NOT NULL UNIQUE CHECK (token_hash ~ '^[0-9a-f]{64}$'),
    created_at timestamptz NOT NULL DEFAULT now(),
    created_by text NOT NULL,
    expires_at timestamptz,
    revoked_at timestamptz,
    last_used_at timestamptz
);
