-- The unfinished jobs (the facilitator looks for them whenever a job
-- arrives), found without reading every job ever kept; as in PostgreSQL.
CREATE INDEX IF NOT EXISTS jobs_unfinished ON jobs(created_at)
    WHERE status NOT IN ('completed', 'rejected', 'failed', 'horde_failed', 'cancelled');
