"""What more than one front end does, written once and audited once: the CLI (cli/) and
the API (api/) parse, call one of these and render.

- backfill.py: the audited backfill (`aggjobs backfill`, `POST /api/backfills`);
- runs.py: a job run at a person's request (`aggjobs run`, `POST /api/jobs/{job}/run`);
- repair.py: the audited repair (`aggjobs verify --repair`);
- tokens.py: API tokens (`aggjobs token`, `/api/tokens`).
"""

from ..engine.abandoned import sweep_abandoned
from .backfill import Requester, audited_backfill

__all__ = ["Requester", "audited_backfill", "sweep_abandoned"]
