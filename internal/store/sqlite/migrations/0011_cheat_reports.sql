CREATE TABLE IF NOT EXISTS cheat_reports (
    id                INTEGER PRIMARY KEY AUTOINCREMENT,
    job_uuid          TEXT NOT NULL UNIQUE,
    trusted_job_uuid  TEXT NOT NULL,
    reporter          TEXT NOT NULL,
    validator_hotkey  TEXT NOT NULL,
    details           TEXT NOT NULL,
    signature         TEXT NOT NULL,
    at                INTEGER NOT NULL,
    forwarded         INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS cheat_reports_pending ON cheat_reports(validator_hotkey, forwarded, id);
