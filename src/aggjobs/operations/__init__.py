"""What the front ends do, written once and audited once: the CLI (cli/) and the API (api/)
parse, call one of these and render.

- backfill.py: the audited backfill (`aggjobs backfill`; jobs/backfill.py, which a worker's
  task runs too), queued and cancelled (`POST /api/backfills`, the dashboard);
- runs.py: a job run at a person's request (`aggjobs run`, `POST /api/jobs/{job}/run`);
- repair.py: verification and the audited repair (`aggjobs verify [--repair]`);
- tokens.py: API tokens (`aggjobs token`, `/api/tokens`);
- up.py: `aggjobs up`'s start-up and the supervisor of its API server and worker.
"""

from ..engine.abandoned import sweep_abandoned
from .backfill import Requester, audited_backfill

__all__ = ["Requester", "audited_backfill", "sweep_abandoned"]
