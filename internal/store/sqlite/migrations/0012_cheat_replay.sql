-- A verdict of cheating names the request it replayed: the request id of the
-- miner's receipt and the digest of the request replayed on the trusted
-- miner (streamreceipt.RequestDigest). Cheats kept before have neither.
ALTER TABLE cheats ADD COLUMN request_id TEXT NOT NULL DEFAULT '';
ALTER TABLE cheats ADD COLUMN replay_sha256 TEXT NOT NULL DEFAULT '';
