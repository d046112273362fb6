-- 0018 (issue 17): backfills started from the API or the dashboard are queued for a worker
-- (a Celery task) rather than run inside the HTTP request, and any backfill can be cancelled.
-- status 'queued': created by the request, claimed by the worker's task ('running');
-- 'cancelled': stopped on request, between two chunks (what it recomputed stays; a later
-- backfill of the same range resumes it, as it resumes a failed one).
-- cancel_requested: set by a cancel; the backfill checks it before each chunk.
-- requested_by / cancelled_by: who asked (`api:<token>`, `cli:<user>@<host>`).
-- task_id: the Celery task that runs a queued backfill.
ALTER TABLE aggjobs.backfills DROP CONSTRAINT backfills_status_check;
ALTER TABLE aggjobs.backfills ADD CONSTRAINT backfills_status_check
    CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled'));
ALTER TABLE aggjobs.backfills ADD COLUMN cancel_requested boolean NOT NULL DEFAULT false;
ALTER TABLE aggjobs.backfills ADD COLUMN requested_by text;
ALTER TABLE aggjobs.backfills ADD COLUMN cancelled_by text;
ALTER TABLE aggjobs.backfills ADD COLUMN task_id text;
