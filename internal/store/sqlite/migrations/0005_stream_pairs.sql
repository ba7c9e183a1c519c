CREATE TABLE IF NOT EXISTS stream_pairs (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    job_uuid         TEXT NOT NULL,
    request_id       TEXT NOT NULL,
    image            TEXT NOT NULL,
    miner_hotkey     TEXT NOT NULL,
    validator_hotkey TEXT NOT NULL,
    reported_by      TEXT NOT NULL,
    body             TEXT NOT NULL,
    at               INTEGER NOT NULL,
    UNIQUE(job_uuid, request_id)
);
CREATE INDEX IF NOT EXISTS stream_pairs_image ON stream_pairs(image, id);
