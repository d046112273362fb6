"""The API's check of a presented token: who it speaks for, or why it is refused.

Creating, listing and revoking tokens are operations the CLI shares
(aggjobs/operations/tokens.py); their names are re-exported here for existing importers.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

import psycopg

from ..operations.tokens import (
    PREFIX,
    ROLES,
    TokenError,
    TokenExists,
    UnknownToken,
    create,
    hash_secret,
    list_tokens,
    new_secret,
    revoke,
    role_allows,
    rotate,
)
from ..sql import query

__all__ = ["PREFIX", "ROLES", "Principal", "TokenError", "TokenExists", "UnknownToken",
           "Verdict", "check", "create", "hash_secret", "list_tokens", "new_secret", "revoke",
           "role_allows", "rotate", "verify"]


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


def check(conn: psycopg.Connection, secret: str | None) -> Verdict:
    """Who `secret` speaks for, or why it is refused; marks the token used."""
    if not secret:
        return Verdict(None, "no token")
    digest = hash_secret(secret)
    row = conn.execute(query("token_by_hash"), (digest,)).fetchone()
    if row is None or not hmac.compare_digest(row[3], digest):
        return Verdict(None, "unknown token")
    token_id, name, role, _, revoked, expired = row
    if revoked:
        return Verdict(None, "token revoked", name)
    if expired:
        return Verdict(None, "token expired", name)
    conn.execute(query("token_used"), (token_id,))
    return Verdict(Principal(name, role))


def verify(conn: psycopg.Connection, secret: str | None) -> str | None:
    """The role of a valid token, else None (unknown, revoked or expired)."""
    principal = check(conn, secret).principal
    return principal.role if principal else None
