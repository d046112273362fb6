-- API tokens (api/tokens.py, operations/tokens.py). Only hashes are stored; the worker role
-- writes api_tokens through the SECURITY DEFINER functions, which audit each request.
-- Loaded by aggjobs.sql.query(name).

-- name: token_by_hash
-- The token a secret's hash names, with whether it is revoked and whether it has expired.
SELECT id, name, role, token_hash, revoked_at IS NOT NULL,
expires_at IS NOT NULL AND expires_at <= now()
FROM aggjobs.api_tokens WHERE token_hash = %s

-- name: token_used
SELECT aggjobs.token_used(%s)

-- name: create_token
-- (name, role, hash, actor, expires in days, source): 'created' or the refusal, audited.
SELECT aggjobs.create_token(%s, %s, %s, %s, %s, %s)

-- name: token_by_name
-- The token of that name not revoked (a revoked name may be reused, migration 0017).
SELECT id, name, role, created_at, created_by, expires_at FROM aggjobs.api_tokens
WHERE name = %s AND revoked_at IS NULL

-- name: list_tokens
-- Every token, newest first; never the secret's hash.
SELECT name, role, created_at, created_by, expires_at, revoked_at, last_used_at,
revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now()) AS active
FROM aggjobs.api_tokens ORDER BY created_at DESC, id DESC

-- name: revoke_token
-- (name, actor, source): whether an active token was revoked, audited.
SELECT aggjobs.revoke_token(%s, %s, %s)

-- name: rotate_token
-- (name, new hash, actor, source): 'rotated' or the refusal, audited.
SELECT aggjobs.rotate_token(%s, %s, %s, %s)
