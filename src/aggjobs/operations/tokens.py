"""API tokens, created, listed and revoked by `aggjobs token` and `/api/tokens` alike: a
secret shown once, stored only as its SHA-256, with a role. (The API's check of a presented
secret is in api/tokens.py.)

Roles are ordered viewer < operator < admin: a route needing `operator` accepts operator and
admin tokens. A token is valid while it is neither revoked nor past its expiry. A name is
unique among the tokens not revoked: a revoked token's name may be given again. Every
creation, rotation and revocation, and every refused one, is written to aggjobs.audit_log by the
SECURITY DEFINER functions that alone change api_tokens (migration 0011, docs/security.md);
secrets never are (nor logged).
"""

from __future__ import annotations

import hashlib
import secrets

import psycopg
from psycopg.rows import dict_row

from .. import audit as audit_log
from ..db.connect import scalar
from ..errors import AggjobsError
from ..sql import query

ROLES = ("viewer", "operator", "admin")
PREFIX = "agj_"


class TokenError(AggjobsError):
    """The token request is invalid."""


class TokenExists(TokenError):
    """A token of that name exists already."""


class UnknownToken(TokenError):
    """No active token has that name."""


def role_allows(have: str, needed: str) -> bool:
    return ROLES.index(have) >= ROLES.index(needed)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_secret() -> str:
    return PREFIX + secrets.token_urlsafe(32)


REFUSALS = {  # create_token's refusals (migration 0011), as the caller is told them
    "refused: invalid name": ("invalid token name {name!r:.120}: 1-100 letters, digits or "
                              "_ . @ : -, starting with a letter or digit"),
    "refused: invalid role": "invalid role {role!r:.60}; roles are: " + ", ".join(ROLES),
    "refused: invalid expiry": "--expires-days must be positive and at most 36500 (100 years)",
    "refused: name exists": ("a token named {name!r:.120} exists already: revoke it, rotate "
                             "it (`aggjobs token rotate`) or pick another name"),
}
NO_ACTIVE_TOKEN = "no active token named {name!r:.120} (see `aggjobs token list`)"


def create(conn: psycopg.Connection, name: str, role: str, *, actor: str,
           expires_days: float | None = None, source: str | None = None) -> tuple[str, dict]:
    """A new token; returns its secret (the only time it exists outside the client) and its
    row. `source`: where the request came from, for the audit row. The database function
    aggjobs.create_token checks the request and writes the token and the audit row, a
    refusal's too, in one transaction: the worker cannot write api_tokens itself."""
    secret = new_secret()
    with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        outcome = scalar(
            conn, query("create_token"),
            (printable(name), printable(role), hash_secret(secret), actor,
             days(expires_days), source or audit_log.local_source("local")),
        )
        row = (cur.execute(query("token_by_name"), (name,)).fetchone()
               if outcome == "created" else None)
    if row is None:
        message = REFUSALS.get(outcome, str(outcome)).format(name=name, role=role)
        raise (TokenExists if outcome == "refused: name exists" else TokenError)(message)
    return secret, row


def printable(text: str | None) -> str | None:
    """`text` as PostgreSQL can store it (no NUL): the function refuses it, audited, rather
    than psycopg failing before the call."""
    return text.replace("\x00", "\\x00") if isinstance(text, str) else text


def days(value: float | None) -> float | None:
    """A float for the database, whatever was given (an int too large for a float is
    infinite: refused there, audited)."""
    if value is None:
        return None
    try:
        return float(value)
    except OverflowError:
        return float("inf")


def list_tokens(conn: psycopg.Connection) -> list[dict]:
    """Every token, newest first; never the secret nor its hash."""
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(query("list_tokens")).fetchall()


def revoke(conn: psycopg.Connection, name: str, *, actor: str, source: str | None = None
           ) -> None:
    """Revoke the active token `name` through aggjobs.revoke_token, which audits it."""
    with conn.transaction():
        done = scalar(
            conn, query("revoke_token"),
            (printable(name), actor, source or audit_log.local_source("local")),
        )
    if not done:
        raise UnknownToken(NO_ACTIVE_TOKEN.format(name=name))


def rotate(conn: psycopg.Connection, name: str, *, actor: str, source: str | None = None
           ) -> tuple[str, dict]:
    """Replace the token `name` (not revoked) by a new secret of the same name and role, and
    of the same lifetime from now, the old one revoked in the same transaction (audited as
    token.rotate by aggjobs.rotate_token); returns the new secret and row."""
    secret = new_secret()
    with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        outcome = scalar(conn, query("rotate_token"), (
            printable(name), hash_secret(secret), actor,
            source or audit_log.local_source("local")))
        row = (cur.execute(query("token_by_name"), (name,)).fetchone()
               if outcome == "rotated" else None)
    if row is None:
        if outcome == "refused: no active token of that name":
            raise UnknownToken(NO_ACTIVE_TOKEN.format(name=name))
        raise TokenError(str(outcome))
    return secret, row
