"""Admin routes: `/api/tokens`, `/api/retention`, `/api/cleanup`."""

from fastapi import APIRouter, Request
from psycopg.rows import dict_row

from ...operations import tokens
from ...settings import RETENTION_DAYS
from ...sql import query
from ..auth import Admin, AdminTrigger, AppSettings, Conn, ReadConn, client_address
from ..schemas import RunBody, TokenBody, TokenName
from ..statuses import answers
from .jobs import CLEANUP_JOB, run_now

router = APIRouter(tags=["admin"])


@router.get("/api/tokens")
def token_list(conn: Conn, _: Admin) -> list[dict]:
    """Every token, newest first: name, role, creator, expiry, revocation, last use and
    whether it is active (admin). Never a secret nor its hash."""
    return tokens.list_tokens(conn)


@router.post("/api/tokens", status_code=201, responses=answers(400, 409))
def token_create(request: Request, conn: Conn, who: AdminTrigger, body: TokenBody) -> dict:
    """Create a token (admin). The answer holds its `secret`, the only time it is shown:
    only its SHA-256 is stored. A name in use is 409. Audited (`token.create`)."""
    secret, row = tokens.create(conn, body.name, body.role, actor=f"api:{who.name}",
                                expires_days=body.expires_days,
                                source=client_address(request))
    return with_secret(row, secret)


@router.delete("/api/tokens/{name}", responses=answers(404))
def token_revoke(request: Request, conn: Conn, who: AdminTrigger, name: TokenName) -> dict:
    """Revoke a token (admin): requests bearing it are refused from now on. No active
    token of that name is 404. Audited (`token.revoke`)."""
    tokens.revoke(conn, name, actor=f"api:{who.name}", source=client_address(request))
    return {"name": name, "revoked": True}


@router.post("/api/tokens/{name}/rotate", responses=answers(400, 404))
def token_rotate(request: Request, conn: Conn, who: AdminTrigger, name: TokenName) -> dict:
    """Replace a token's secret (admin): a new token of the same name, role and lifetime
    (from now) and the old one revoked, in one transaction. The answer holds the new
    `secret`, the only time it is shown. No active token of that name is 404. Audited
    (`token.rotate`)."""
    secret, row = tokens.rotate(conn, name, actor=f"api:{who.name}",
                                source=client_address(request))
    return with_secret(row, secret)


def with_secret(row: dict, secret: str) -> dict:
    return {**{k: row[k] for k in ("name", "role", "created_at", "created_by",
                                    "expires_at")}, "secret": secret}


@router.get("/api/retention")
def retention(_: Admin, conn: ReadConn, settings: AppSettings) -> dict:
    """What retention keeps (admin): days per class in force (0: forever;
    AGGJOBS_RETENTION_DAYS), rows per delete batch, and per rollup and grain the
    horizon before which buckets can no longer be recomputed (their inputs are gone)."""
    with conn.cursor(row_factory=dict_row) as cur:
        horizons = cur.execute(query("retention_horizons")).fetchall()
    return {"days": {kind: settings.retention(kind) for kind in RETENTION_DAYS},
            "batch_rows": settings.cleanup_batch_rows, "horizons": horizons}


@router.post("/api/cleanup", responses=answers(400))
def cleanup(request: Request, who: AdminTrigger, settings: AppSettings,
            body: RunBody | None = None) -> dict:
    """Run the retention job `cleanup_old_data` now and wait for its end (admin), as
    `POST /api/jobs/cleanup_old_data/run`: deletes what is past AGGJOBS_RETENTION_DAYS,
    in batches, never what a rollup still needs; audited (`run`, `retention_delete`)."""
    return run_now(request, who, CLEANUP_JOB, body, settings)
