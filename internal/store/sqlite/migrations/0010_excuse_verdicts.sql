-- The validator's judgement of every excuse a busy miner declined with.
CREATE TABLE excuse_verdicts (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    cycle        INTEGER NOT NULL,
    miner        TEXT NOT NULL,
    class        TEXT NOT NULL,
    declined_job TEXT NOT NULL,
    job          TEXT NOT NULL,
    signer       TEXT NOT NULL,
    valid        INTEGER NOT NULL,
    reason       TEXT NOT NULL,
    at           INTEGER NOT NULL
);
CREATE INDEX excuse_verdicts_cycle ON excuse_verdicts(cycle, id);
