-- Every store of every role, as SQLite's migrations 0001 to 0012 leave it.
-- Times are microseconds since the Unix epoch, as in the SQLite store.
CREATE TABLE jobs (
    uuid             TEXT PRIMARY KEY,
    spec             TEXT NOT NULL,
    signature        TEXT NOT NULL,
    signature_value  TEXT NOT NULL,
    signatory        TEXT NOT NULL,
    status           TEXT NOT NULL,
    validator_hotkey TEXT NOT NULL DEFAULT '',
    miner_hotkey     TEXT NOT NULL DEFAULT '',
    created_at       BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL
);
CREATE UNIQUE INDEX jobs_signature ON jobs(signature_value) WHERE signature_value != '';
CREATE INDEX jobs_signatory ON jobs(signatory, created_at);
CREATE INDEX jobs_unfinished ON jobs(created_at)
    WHERE status NOT IN ('completed', 'rejected', 'failed', 'horde_failed', 'cancelled');

CREATE TABLE job_status (
    id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_uuid   TEXT NOT NULL REFERENCES jobs(uuid),
    status     TEXT NOT NULL,
    metadata   TEXT,
    created_at BIGINT NOT NULL
);
CREATE INDEX job_status_job ON job_status(job_uuid, id);

CREATE TABLE receipts (
    id                  BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_uuid            TEXT NOT NULL,
    miner_hotkey        TEXT NOT NULL DEFAULT '',
    receipt_type        TEXT NOT NULL,
    payload             TEXT NOT NULL,
    validator_signature TEXT NOT NULL,
    miner_signature     TEXT NOT NULL DEFAULT '',
    stored_at           BIGINT NOT NULL,
    counted_cycle       BIGINT,
    UNIQUE (job_uuid, miner_hotkey, receipt_type)
);
CREATE INDEX receipts_stored ON receipts(stored_at);
CREATE INDEX receipts_uncounted ON receipts(id) WHERE counted_cycle IS NULL AND receipt_type = 'JobFinishedReceipt';

CREATE TABLE outbox (
    id        BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    message   TEXT NOT NULL,
    queued_at BIGINT NOT NULL
);

CREATE TABLE synthetic_results (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    cycle       BIGINT NOT NULL,
    miner       TEXT NOT NULL,
    class       TEXT NOT NULL,
    job_uuid    TEXT NOT NULL,
    generator   TEXT NOT NULL,
    passed      BOOLEAN NOT NULL,
    reason      TEXT NOT NULL,
    took_ms     BIGINT NOT NULL,
    expected_ms BIGINT NOT NULL,
    at          BIGINT NOT NULL
);
CREATE INDEX synthetic_results_cycle ON synthetic_results(cycle, miner);

CREATE TABLE scores (
    cycle   BIGINT NOT NULL,
    miner   TEXT NOT NULL,
    score   DOUBLE PRECISION NOT NULL,
    weight  DOUBLE PRECISION NOT NULL,
    details TEXT NOT NULL,
    at      BIGINT NOT NULL,
    PRIMARY KEY (cycle, miner)
);

CREATE TABLE validator_reports (
    validator  TEXT PRIMARY KEY,
    body       TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE stream_pairs (
    id               BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_uuid         TEXT NOT NULL,
    request_id       TEXT NOT NULL,
    image            TEXT NOT NULL,
    miner_hotkey     TEXT NOT NULL,
    validator_hotkey TEXT NOT NULL,
    reported_by      TEXT NOT NULL,
    body             TEXT NOT NULL,
    at               BIGINT NOT NULL,
    forwarded        BOOLEAN NOT NULL DEFAULT false,
    UNIQUE (job_uuid, request_id)
);
CREATE INDEX stream_pairs_image ON stream_pairs(image, id);
CREATE INDEX stream_pairs_pending ON stream_pairs(validator_hotkey, id) WHERE NOT forwarded;

CREATE TABLE validation_windows (
    id        BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    image     TEXT NOT NULL,
    last_pair BIGINT NOT NULL,
    body      TEXT NOT NULL,
    at        BIGINT NOT NULL
);
CREATE INDEX validation_windows_image ON validation_windows(image, id);

-- window_id: "window" is a reserved word here.
CREATE TABLE cheats (
    id            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    window_id     BIGINT NOT NULL,
    miner         TEXT NOT NULL,
    job_uuid      TEXT NOT NULL,
    request_id    TEXT NOT NULL DEFAULT '',
    replay_sha256 TEXT NOT NULL DEFAULT '',
    evidence      TEXT NOT NULL,
    at            BIGINT NOT NULL
);
CREATE INDEX cheats_miner ON cheats(miner, at);

CREATE TABLE counted (
    job_uuid     TEXT NOT NULL,
    miner_hotkey TEXT NOT NULL,
    class        TEXT NOT NULL,
    cycle        BIGINT NOT NULL,
    pay          DOUBLE PRECISION NOT NULL,
    reason       TEXT NOT NULL,
    PRIMARY KEY (job_uuid, miner_hotkey)
);
CREATE INDEX counted_cycle ON counted(cycle);

CREATE TABLE receipt_cursors (
    miner      TEXT PRIMARY KEY,
    cursor     TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE excuse_verdicts (
    id           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    cycle        BIGINT NOT NULL,
    miner        TEXT NOT NULL,
    class        TEXT NOT NULL,
    declined_job TEXT NOT NULL,
    job          TEXT NOT NULL,
    signer       TEXT NOT NULL,
    valid        BOOLEAN NOT NULL,
    reason       TEXT NOT NULL,
    at           BIGINT NOT NULL
);
CREATE INDEX excuse_verdicts_cycle ON excuse_verdicts(cycle, id);

CREATE TABLE cheat_reports (
    id               BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_uuid         TEXT NOT NULL UNIQUE,
    trusted_job_uuid TEXT NOT NULL,
    reporter         TEXT NOT NULL,
    validator_hotkey TEXT NOT NULL,
    details          TEXT NOT NULL,
    signature        TEXT NOT NULL,
    at               BIGINT NOT NULL,
    forwarded        BOOLEAN NOT NULL DEFAULT false
);
CREATE INDEX cheat_reports_pending ON cheat_reports(validator_hotkey, forwarded, id);
