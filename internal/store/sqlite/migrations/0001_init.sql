CREATE TABLE IF NOT EXISTS jobs (
    uuid             TEXT PRIMARY KEY,
    spec             TEXT NOT NULL,
    signature        TEXT NOT NULL,
    signature_value  TEXT NOT NULL,
    signatory        TEXT NOT NULL,
    status           TEXT NOT NULL,
    validator_hotkey TEXT NOT NULL DEFAULT '',
    miner_hotkey     TEXT NOT NULL DEFAULT '',
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS jobs_signature ON jobs(signature_value) WHERE signature_value != '';
CREATE INDEX IF NOT EXISTS jobs_signatory ON jobs(signatory, created_at);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs(status);

CREATE TABLE IF NOT EXISTS job_status (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    job_uuid   TEXT NOT NULL REFERENCES jobs(uuid),
    status     TEXT NOT NULL,
    metadata   TEXT,
    created_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS job_status_job ON job_status(job_uuid, id);

CREATE TABLE IF NOT EXISTS receipts (
    id                  INTEGER PRIMARY KEY AUTOINCREMENT,
    job_uuid            TEXT NOT NULL,
    receipt_type        TEXT NOT NULL,
    payload             TEXT NOT NULL,
    validator_signature TEXT NOT NULL,
    miner_signature     TEXT NOT NULL DEFAULT '',
    stored_at           INTEGER NOT NULL,
    UNIQUE(job_uuid, receipt_type)
);
CREATE INDEX IF NOT EXISTS receipts_stored ON receipts(stored_at);
