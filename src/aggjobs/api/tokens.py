"""API tokens: a secret shown once, stored only as its SHA-256, with a role.

Roles are ordered viewer < operator < admin: a route needing `operator` accepts operator and
admin tokens. A token is valid while it is neither revoked nor past its expiry. Every
creation and revocation is written to aggjobs.audit_log; secrets never are (nor logged).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import psycopg
from psycopg.rows import dict_row

from .. import audit as audit_log
from ..errors import AggjobsError

ROLES = ("viewer", "operator", "admin")
PREFIX = "agj_"
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@:-]{0,99}$")


class TokenError(AggjobsError):
    """The token request is invalid."""


class TokenExists(TokenError):
    """A token of that name exists already."""


class UnknownToken(TokenError):
    """No active token has that name."""


@dataclass(frozen=True)
class Principal:
    """Who a valid token speaks for."""

    name: str
    role: str

    def allows(self, needed: str) -> bool:
        return role_allows(self.role, needed)


@dataclass(frozen=True)
class Verdict:
    """The outcome of checking a presented secret: a principal, or why not (for the audit)."""

    principal: Principal | None
    reason: str | None = None
    name: str | None = None  # the token's name when the secret matched a revoked/expired one


def role_allows(have: str, needed: str) -> bool:
    return ROLES.index(have) >= ROLES.index(needed)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_secret() -> str:
    return PREFIX + secrets.token_urlsafe(32)


def audit(conn: psycopg.Connection, *, actor: str, action: str, target: str | None,
          params: dict, outcome: str, source: str | None = None) -> None:
    """An audit row; `source` defaults to this process (`local:<user>@<host>`)."""
    audit_log.write(conn, actor=actor, action=action, target=target, params=params,
                    outcome=outcome, source=source or audit_log.local_source("local"))


def create(conn: psycopg.Connection, name: str, role: str, *, actor: str,
           expires_days: float | None = None, source: str | None = None) -> tuple[str, dict]:
    """A new token; returns its secret (the only time it exists outside the client) and its
    row. `source`: where the request came from, for the audit row."""
    if not NAME.match(name or ""):
        raise TokenError(f"invalid token name {name!r}: 1-100 letters, digits or _ . @ : -, "
                         "starting with a letter or digit")
    if role not in ROLES:
        raise TokenError(f"invalid role {role!r}; roles are: {', '.join(ROLES)}")
    if expires_days is not None and expires_days <= 0:
        raise TokenError("--expires-days must be positive")
    expires = datetime.now(UTC) + timedelta(days=expires_days) if expires_days else None
    secret = new_secret()
    with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(
            "INSERT INTO aggjobs.api_tokens (name, role, token_hash, created_by, expires_at)"
            " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (name) DO NOTHING"
            " RETURNING id, name, role, created_at, created_by, expires_at",
            (name, role, hash_secret(secret), actor, expires),
        ).fetchone()
        if row is None:
            audit(conn, actor=actor, action="token.create", target=name,
                  params={"role": role, "expires_at": expires and expires.isoformat()},
                  outcome="refused: name exists", source=source)
        else:
            audit(conn, actor=actor, action="token.create", target=name,
                  params={"role": role, "expires_at": expires and expires.isoformat()},
                  outcome="created", source=source)
    if row is None:
        raise TokenExists(f"a token named {name!r} exists already: revoke it or pick another name")
    return secret, row


def list_tokens(conn: psycopg.Connection) -> list[dict]:
    """Every token, newest first; never the secret nor its hash."""
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            "SELECT name, role, created_at, created_by, expires_at, revoked_at, last_used_at,"
            " revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now()) AS active"
            " FROM aggjobs.api_tokens ORDER BY created_at DESC, id DESC"
        ).fetchall()


def revoke(conn: psycopg.Connection, name: str, *, actor: str, source: str | None = None
           ) -> None:
    with conn.transaction():
        done = conn.execute(
            "UPDATE aggjobs.api_tokens SET revoked_at = now()"
            " WHERE name = %s AND revoked_at IS NULL RETURNING id", (name,)
        ).fetchone()
        audit(conn, actor=actor, action="token.revoke", target=name, params={},
              outcome="revoked" if done else "refused: no active token of that name",
              source=source)
    if not done:
        raise UnknownToken(f"no active token named {name!r} (see `aggjobs token list`)")


def check(conn: psycopg.Connection, secret: str | None) -> Verdict:
    """Who `secret` speaks for, or why it is refused; marks the token used."""
    if not secret:
        return Verdict(None, "no token")
    digest = hash_secret(secret)
    row = conn.execute(
        "SELECT id, name, role, token_hash, revoked_at IS NOT NULL,"
        " expires_at IS NOT NULL AND expires_at <= now()"
        " FROM aggjobs.api_tokens WHERE token_hash = %s", (digest,)
    ).fetchone()
    if row is None or not hmac.compare_digest(row[3], digest):
        return Verdict(None, "unknown token")
    token_id, name, role, _, revoked, expired = row
    if revoked:
        return Verdict(None, "token revoked", name)
    if expired:
        return Verdict(None, "token expired", name)
    conn.execute(
        "UPDATE aggjobs.api_tokens SET last_used_at = now() WHERE id = %s"
        " AND (last_used_at IS NULL OR last_used_at < now() - interval '1 minute')",
        (token_id,))
    return Verdict(Principal(name, role))


def verify(conn: psycopg.Connection, secret: str | None) -> str | None:
    """The role of a valid token, else None (unknown, revoked or expired)."""
    principal = check(conn, secret).principal
    return principal.role if principal else None
