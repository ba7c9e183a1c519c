CREATE TABLE IF NOT EXISTS synthetic_results (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    cycle       INTEGER NOT NULL,
    miner       TEXT NOT NULL,
    class       TEXT NOT NULL,
    job_uuid    TEXT NOT NULL,
    generator   TEXT NOT NULL,
    passed      INTEGER NOT NULL,
    reason      TEXT NOT NULL,
    took_ms     INTEGER NOT NULL,
    expected_ms INTEGER NOT NULL,
    at          INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS synthetic_results_cycle ON synthetic_results(cycle, miner);

CREATE TABLE IF NOT EXISTS scores (
    cycle   INTEGER NOT NULL,
    miner   TEXT NOT NULL,
    score   REAL NOT NULL,
    weight  REAL NOT NULL,
    details TEXT NOT NULL,
    at      INTEGER NOT NULL,
    PRIMARY KEY (cycle, miner)
);

CREATE TABLE IF NOT EXISTS validator_reports (
    validator  TEXT PRIMARY KEY,
    body       TEXT NOT NULL,
    updated_at INTEGER NOT NULL
);
