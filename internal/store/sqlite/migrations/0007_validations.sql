CREATE TABLE IF NOT EXISTS validation_windows (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    image      TEXT NOT NULL,
    last_pair  INTEGER NOT NULL,
    body       TEXT NOT NULL,
    at         INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS validation_windows_image ON validation_windows(image, id);

CREATE TABLE IF NOT EXISTS cheats (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    window   INTEGER NOT NULL,
    miner    TEXT NOT NULL,
    job_uuid TEXT NOT NULL,
    evidence TEXT NOT NULL,
    at       INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS cheats_miner ON cheats(miner, at);
