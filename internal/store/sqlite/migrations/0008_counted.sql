-- Which cycle counted which finished job (validator): each job once,
-- whatever cycle it started in. counted_cycle on the finished receipt makes
-- the jobs still to count cheap to find; the counted table says what each
-- cycle made of each job.
ALTER TABLE receipts ADD COLUMN counted_cycle INTEGER;
CREATE INDEX receipts_uncounted ON receipts(id) WHERE counted_cycle IS NULL AND receipt_type = 'JobFinishedReceipt';
-- Finished receipts stored before the last scored cycle were scored by the
-- rules before this migration: they are not counted again.
UPDATE receipts SET counted_cycle = 0
    WHERE receipt_type = 'JobFinishedReceipt' AND stored_at < (SELECT COALESCE(MAX(at), 0) FROM scores);
CREATE TABLE counted (
    job_uuid     TEXT NOT NULL,
    miner_hotkey TEXT NOT NULL,
    class        TEXT NOT NULL,
    cycle        INTEGER NOT NULL,
    pay          REAL NOT NULL,
    reason       TEXT NOT NULL,
    PRIMARY KEY (job_uuid, miner_hotkey)
);
CREATE INDEX counted_cycle ON counted(cycle);
