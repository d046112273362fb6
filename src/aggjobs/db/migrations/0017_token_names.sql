-- 0017 (issue 17): a token's name is unique among the tokens not revoked only, so that a
-- revoked name can be given to a new token; and aggjobs.rotate_token, which replaces a token
-- by a new secret of the same name and role in one transaction, audited.
ALTER TABLE aggjobs.api_tokens DROP CONSTRAINT api_tokens_name_key;
CREATE UNIQUE INDEX api_tokens_live_name ON aggjobs.api_tokens (name)
    WHERE revoked_at IS NULL;

CREATE OR REPLACE FUNCTION aggjobs.create_token(
    name text, role text, token_hash text, actor text, expires_days double precision,
    source text)
RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    expires timestamptz;
    outcome text;
BEGIN
    IF expires_days > 0 AND expires_days <= 36500 THEN
        expires := pg_catalog.now() + expires_days * interval '1 day';
    END IF;
    outcome := CASE
        WHEN create_token.name IS NULL
            OR create_token.name !~ '^[A-Za-z0-9][A-Za-z0-9_.@:-]{0,99}$'
            THEN 'refused: invalid name'
        WHEN create_token.role IS NULL
            OR create_token.role NOT IN ('viewer', 'operator', 'admin')
            THEN 'refused: invalid role'
        WHEN expires_days IS NOT NULL AND expires IS NULL THEN 'refused: invalid expiry'
        WHEN create_token.token_hash IS NULL OR create_token.token_hash !~ '^[0-9a-f]{64}$'
            THEN 'refused: invalid hash'
        WHEN actor IS NULL THEN 'refused: no actor'
    END;
    IF outcome IS NULL THEN
        INSERT INTO aggjobs.api_tokens AS t (name, role, token_hash, created_by, expires_at)
            VALUES (create_token.name, create_token.role, create_token.token_hash, actor,
                    expires)
            ON CONFLICT (name) WHERE revoked_at IS NULL DO NOTHING;
        outcome := CASE WHEN FOUND THEN 'created' ELSE 'refused: name exists' END;
    END IF;
    INSERT INTO aggjobs.audit_log (actor, action, target, params, outcome, source)
        VALUES (COALESCE(actor, '?'), 'token.create',
                pg_catalog.left(create_token.name, 200),
                pg_catalog.jsonb_build_object(
                    'role', pg_catalog.left(create_token.role, 100),
                    'expires_at', expires,
                    'expires_days', CASE WHEN expires IS NULL THEN expires_days::text END,
                    'db_user', session_user),
                outcome, source);
    RETURN outcome;
END
$$;

-- Replace the token `name` (not revoked; expired is fine) by a new secret's hash: the old
-- one revoked and the new one, of the same name and role and of the old one's lifetime from
-- now, created in one transaction; audited as token.rotate. Returns 'rotated' or the refusal.
CREATE FUNCTION aggjobs.rotate_token(name text, token_hash text, actor text, source text)
RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    old aggjobs.api_tokens;
    expires timestamptz;
    outcome text := 'rotated';
BEGIN
    SELECT * INTO old FROM aggjobs.api_tokens AS t
        WHERE t.name = rotate_token.name AND t.revoked_at IS NULL FOR UPDATE;
    IF NOT FOUND THEN
        outcome := 'refused: no active token of that name';
    ELSIF rotate_token.token_hash IS NULL
            OR rotate_token.token_hash !~ '^[0-9a-f]{64}$' THEN
        outcome := 'refused: invalid hash';
    ELSIF actor IS NULL THEN
        outcome := 'refused: no actor';
    ELSE
        expires := pg_catalog.now() + (old.expires_at - old.created_at);
        UPDATE aggjobs.api_tokens AS t SET revoked_at = pg_catalog.now() WHERE t.id = old.id;
        INSERT INTO aggjobs.api_tokens (name, role, token_hash, created_by, expires_at)
            VALUES (old.name, old.role, rotate_token.token_hash, actor, expires);
    END IF;
    INSERT INTO aggjobs.audit_log (actor, action, target, params, outcome, source)
        VALUES (COALESCE(actor, '?'), 'token.rotate',
                pg_catalog.left(rotate_token.name, 200),
                pg_catalog.jsonb_build_object('role', old.role, 'expires_at', expires,
                                              'db_user', session_user),
                outcome, source);
    RETURN outcome;
END
$$;
REVOKE EXECUTE ON FUNCTION aggjobs.rotate_token(text, text, text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION aggjobs.rotate_token(text, text, text, text) TO aggjobs_worker;
