// Package sqlite is the embedded store: one SQLite file (WAL, pure Go) per
// role, with migrations embedded in the binary.
package sqlite

import (
	"context"
	"database/sql"
	"embed"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	_ "modernc.org/sqlite" // database/sql driver "sqlite"

	"github.com/horde-compute/horde/internal/store"
	"github.com/horde-compute/horde/protocol"
	"github.com/horde-compute/horde/receipt"
)

//go:embed migrations/*.sql
var migrations embed.FS

// DB is a SQLite store.
type DB struct {
	db *stmtDB
	w  *writer // the busy writes, committed in groups (writer.go)
}

var (
	_ store.Jobs         = (*DB)(nil)
	_ store.Receipts     = (*DB)(nil)
	_ store.Outbox       = (*DB)(nil)
	_ store.Scores       = (*DB)(nil)
	_ store.Reports      = (*DB)(nil)
	_ store.Pairs        = (*DB)(nil)
	_ store.Validations  = (*DB)(nil)
	_ store.Ledger       = (*DB)(nil)
	_ store.Excuses      = (*DB)(nil)
	_ store.CheatReports = (*DB)(nil)
)

// Open opens (creating) the database at path and applies migrations.
func Open(ctx context.Context, path string) (*DB, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("open store: %w", err)
	}
	dsn := "file:" + path + "?_pragma=journal_mode(WAL)&_pragma=busy_timeout(10000)&_pragma=foreign_keys(1)&_pragma=synchronous(NORMAL)"
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, fmt.Errorf("open store %s: %w", path, err)
	}
	db.SetMaxOpenConns(1) // one writer; SQLite serialises anyway
	if err := migrate(ctx, db); err != nil {
		db.Close()
		return nil, fmt.Errorf("open store %s: %w", path, err)
	}
	d := &DB{db: &stmtDB{DB: db, stmts: map[string]*sql.Stmt{}}}
	// The statements of the busy transactions (which cannot prepare on the
	// one connection they hold), prepared up front.
	for _, q := range []string{qInsertJob, qInsertFirstStatus, qJobStatus, qInsertStatus, qSetStatus, qSavepoint, qRollbackTo, qRelease,
		qSetAssignment, qClaimJob, qPutReceipt, qPushOutbox, qAckOutbox} {
		if _, err := d.db.stmt(ctx, q); err != nil {
			d.db.Close()
			return nil, fmt.Errorf("open store %s: prepare: %w", path, err)
		}
	}
	d.w = newWriter(d.db)
	return d, nil
}

// Queries of the busy transactions, prepared when the store opens.
const (
	qInsertJob = `INSERT INTO jobs (uuid, spec, signature, signature_value, signatory, status, validator_hotkey, miner_hotkey, created_at, updated_at)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`
	qInsertFirstStatus = `INSERT INTO job_status (job_uuid, status, created_at) VALUES (?, ?, ?)`
	qJobStatus         = `SELECT status FROM jobs WHERE uuid = ?`
	qInsertStatus      = `INSERT INTO job_status (job_uuid, status, metadata, created_at) VALUES (?, ?, ?, ?)`
	qSetStatus         = `UPDATE jobs SET status = ?, updated_at = ? WHERE uuid = ?`
	qSetAssignment     = `UPDATE jobs SET validator_hotkey = ?, miner_hotkey = ?, updated_at = ? WHERE uuid = ?`
	qClaimJob          = `UPDATE jobs SET validator_hotkey = ?, updated_at = ?
		WHERE uuid = ? AND status = ? AND validator_hotkey = ? AND updated_at = ?`
	qPutReceipt = `INSERT INTO receipts (job_uuid, miner_hotkey, receipt_type, payload, validator_signature, miner_signature, stored_at)
		VALUES (?, ?, ?, ?, ?, ?, ?)
		ON CONFLICT(job_uuid, miner_hotkey, receipt_type) DO UPDATE SET miner_signature = excluded.miner_signature
		WHERE receipts.miner_signature = '' AND receipts.payload = excluded.payload`
	qPushOutbox = `INSERT INTO outbox (message, queued_at) VALUES (?, ?)`
	qAckOutbox  = `DELETE FROM outbox WHERE id = ?`
)

// Close stops the writer (after the batch it runs), then closes the
// database.
func (d *DB) Close() error {
	d.w.close()
	return d.db.Close()
}

func migrate(ctx context.Context, db *sql.DB) error {
	if _, err := db.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (version TEXT PRIMARY KEY, applied_at INTEGER NOT NULL)`); err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	names, err := fs.Glob(migrations, "migrations/*.sql")
	if err != nil {
		return err
	}
	sort.Strings(names)
	for _, name := range names {
		version := strings.TrimSuffix(filepath.Base(name), ".sql")
		var n int
		if err := db.QueryRowContext(ctx, `SELECT COUNT(*) FROM schema_migrations WHERE version = ?`, version).Scan(&n); err != nil {
			return fmt.Errorf("migrate: %w", err)
		}
		if n > 0 {
			continue
		}
		body, _ := migrations.ReadFile(name)
		tx, err := db.BeginTx(ctx, nil)
		if err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, string(body)); err != nil {
			tx.Rollback()
			return fmt.Errorf("migrate %s: %w", version, err)
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO schema_migrations VALUES (?, ?)`, version, time.Now().Unix()); err != nil {
			tx.Rollback()
			return err
		}
		if err := tx.Commit(); err != nil {
			return err
		}
	}
	return nil
}

func isUnique(err error) bool {
	return err != nil && strings.Contains(err.Error(), "UNIQUE constraint failed")
}

// CreateJob implements store.Jobs.
func (d *DB) CreateJob(ctx context.Context, j store.JobRecord) error {
	spec, err := json.Marshal(j.Spec)
	if err != nil {
		return err
	}
	sigb, _ := json.Marshal(j.Signature)
	// The dedup key is the signature's bytes in their one canonical text.
	sigKey := j.Signature.Signature
	if raw, err := j.Signature.Decode(); err == nil {
		sigKey = raw.Base64()
	} else if b, err := base64.StdEncoding.DecodeString(sigKey); err == nil {
		sigKey = base64.StdEncoding.EncodeToString(b) // low bits dropped
	}
	now := j.CreatedAt.UnixMicro()
	return d.w.write(ctx, func(ctx context.Context, tx *stmtTx) error {
		_, err := tx.ExecContext(ctx, qInsertJob, j.UUID, spec, sigb, sigKey, j.Signature.Signatory, j.Status, j.ValidatorHotkey, j.MinerHotkey, now, now)
		if isUnique(err) {
			return fmt.Errorf("job %s: %w (same uuid or same client signature)", j.UUID, store.ErrDuplicate)
		}
		if err != nil {
			return fmt.Errorf("create job: %w", err)
		}
		if _, err := tx.ExecContext(ctx, qInsertFirstStatus, j.UUID, j.Status, now); err != nil {
			return fmt.Errorf("create job: %w", err)
		}
		return nil
	})
}

const jobCols = `uuid, spec, signature, status, validator_hotkey, miner_hotkey, created_at, updated_at`

func scanJob(sc interface{ Scan(...any) error }) (store.JobRecord, error) {
	var j store.JobRecord
	var spec, sigb string
	var created, updated int64
	if err := sc.Scan(&j.UUID, &spec, &sigb, &j.Status, &j.ValidatorHotkey, &j.MinerHotkey, &created, &updated); err != nil {
		return j, err
	}
	json.Unmarshal([]byte(spec), &j.Spec)
	json.Unmarshal([]byte(sigb), &j.Signature)
	j.CreatedAt, j.UpdatedAt = time.UnixMicro(created).UTC(), time.UnixMicro(updated).UTC()
	return j, nil
}

// Job implements store.Jobs.
func (d *DB) Job(ctx context.Context, uuid string) (store.JobRecord, error) {
	j, err := scanJob(d.db.QueryRowContext(ctx, `SELECT `+jobCols+` FROM jobs WHERE uuid = ?`, uuid))
	if errors.Is(err, sql.ErrNoRows) {
		return j, fmt.Errorf("job %s: %w", uuid, store.ErrNotFound)
	}
	return j, err
}

// AddStatus implements store.Jobs.
func (d *DB) AddStatus(ctx context.Context, uuid string, e protocol.StatusEntry) error {
	var meta []byte
	if e.Metadata != nil {
		meta, _ = json.Marshal(e.Metadata)
	}
	at := e.CreatedAt.UnixMicro()
	return d.w.write(ctx, func(ctx context.Context, tx *stmtTx) error {
		return addStatus(ctx, tx, uuid, e.Status, meta, at)
	})
}

// AddStatusPush implements store.Outbox.
func (d *DB) AddStatusPush(ctx context.Context, uuid string, e protocol.StatusEntry, msg []byte) error {
	var meta []byte
	if e.Metadata != nil {
		meta, _ = json.Marshal(e.Metadata)
	}
	at := e.CreatedAt.UnixMicro()
	return d.w.write(ctx, func(ctx context.Context, tx *stmtTx) error {
		if err := addStatus(ctx, tx, uuid, e.Status, meta, at); err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, qPushOutbox, string(msg), time.Now().UnixMicro()); err != nil {
			return fmt.Errorf("outbox: %w", err)
		}
		return nil
	})
}

// addStatus appends a status to a job's history and sets it as the job's
// status unless the job's is terminal already.
func addStatus(ctx context.Context, tx *stmtTx, uuid string, status protocol.JobStatus, meta []byte, at int64) error {
	var cur string
	if err := tx.QueryRowContext(ctx, qJobStatus, uuid).Scan(&cur); err != nil {
		if errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("job %s: %w", uuid, store.ErrNotFound)
		}
		return err
	}
	if _, err := tx.ExecContext(ctx, qInsertStatus, uuid, status, nullable(meta), at); err != nil {
		return fmt.Errorf("add status: %w", err)
	}
	if !protocol.JobStatus(cur).Terminal() {
		if _, err := tx.ExecContext(ctx, qSetStatus, status, at, uuid); err != nil {
			return fmt.Errorf("add status: %w", err)
		}
	}
	return nil
}

func nullable(b []byte) any {
	if b == nil {
		return nil
	}
	return string(b)
}

// History implements store.Jobs.
func (d *DB) History(ctx context.Context, uuid string) ([]protocol.StatusEntry, error) {
	rows, err := d.db.QueryContext(ctx, `SELECT status, metadata, created_at FROM job_status WHERE job_uuid = ? ORDER BY id`, uuid)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []protocol.StatusEntry
	for rows.Next() {
		var e protocol.StatusEntry
		var meta sql.NullString
		var at int64
		if err := rows.Scan(&e.Status, &meta, &at); err != nil {
			return nil, err
		}
		if meta.Valid {
			e.Metadata = &protocol.StatusMetadata{}
			json.Unmarshal([]byte(meta.String), e.Metadata)
		}
		e.CreatedAt = time.UnixMicro(at).UTC()
		out = append(out, e)
	}
	return out, rows.Err()
}

// ListJobs implements store.Jobs.
func (d *DB) ListJobs(ctx context.Context, signatory string, offset, limit int) ([]store.JobRecord, int, error) {
	where, args := "", []any{}
	if signatory != "" {
		where, args = " WHERE signatory = ?", []any{signatory}
	}
	var total int
	if err := d.db.QueryRowContext(ctx, `SELECT COUNT(*) FROM jobs`+where, args...).Scan(&total); err != nil {
		return nil, 0, err
	}
	rows, err := d.db.QueryContext(ctx, `SELECT `+jobCols+` FROM jobs`+where+` ORDER BY created_at DESC, uuid LIMIT ? OFFSET ?`, append(args, limit, offset)...)
	if err != nil {
		return nil, 0, err
	}
	defer rows.Close()
	var out []store.JobRecord
	for rows.Next() {
		j, err := scanJob(rows)
		if err != nil {
			return nil, 0, err
		}
		out = append(out, j)
	}
	return out, total, rows.Err()
}

// Unfinished implements store.Jobs.
func (d *DB) Unfinished(ctx context.Context) ([]store.JobRecord, error) {
	return d.queryJobs(ctx, `SELECT `+jobCols+` FROM jobs WHERE status NOT IN ('completed','rejected','failed','horde_failed','cancelled') ORDER BY created_at`)
}

// Dispatchable implements store.Jobs.
func (d *DB) Dispatchable(ctx context.Context, stale time.Time) ([]store.JobRecord, error) {
	return d.queryJobs(ctx, `SELECT `+jobCols+` FROM jobs WHERE status NOT IN ('completed','rejected','failed','horde_failed','cancelled')
		AND status = 'sent' AND (validator_hotkey = '' OR updated_at < ?) ORDER BY created_at`, stale.UnixMicro())
}

// queryJobs returns the jobs a query of jobCols selects.
func (d *DB) queryJobs(ctx context.Context, q string, args ...any) ([]store.JobRecord, error) {
	rows, err := d.db.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []store.JobRecord
	for rows.Next() {
		j, err := scanJob(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, j)
	}
	return out, rows.Err()
}

// SetAssignment implements store.Jobs.
func (d *DB) SetAssignment(ctx context.Context, uuid, validator, miner string) error {
	return d.w.write(ctx, func(ctx context.Context, tx *stmtTx) error {
		_, err := tx.ExecContext(ctx, qSetAssignment, validator, miner, time.Now().UnixMicro(), uuid)
		return err
	})
}

// ClaimJob implements store.Jobs: one UPDATE that compares and sets.
func (d *DB) ClaimJob(ctx context.Context, seen store.JobRecord, validator string) (bool, error) {
	var n int64
	err := d.w.write(ctx, func(ctx context.Context, tx *stmtTx) error {
		res, err := tx.ExecContext(ctx, qClaimJob,
			validator, max(time.Now().UnixMicro(), seen.UpdatedAt.UnixMicro()+1), seen.UUID, protocol.StatusSent, seen.ValidatorHotkey, seen.UpdatedAt.UnixMicro())
		if err != nil {
			return err
		}
		n, err = res.RowsAffected()
		return err
	})
	if err != nil {
		return false, fmt.Errorf("claim job %s: %w", seen.UUID, err)
	}
	return n == 1, nil
}

// PutReceipt implements store.Receipts; a receipt of the same job, miner and
// type is replaced only to add a miner signature.
func (d *DB) PutReceipt(ctx context.Context, r receipt.Receipt) error {
	if _, err := r.Decode(); err != nil {
		return err
	}
	var base struct {
		JobUUID     string `json:"job_uuid"`
		MinerHotkey string `json:"miner_hotkey"`
	}
	json.Unmarshal(r.Payload, &base)
	err := d.w.write(ctx, func(ctx context.Context, tx *stmtTx) error {
		_, err := tx.ExecContext(ctx, qPutReceipt,
			base.JobUUID, base.MinerHotkey, r.Type, string(r.Payload), r.ValidatorSignature, r.MinerSignature, time.Now().UnixMicro())
		return err
	})
	if err != nil {
		return fmt.Errorf("put receipt: %w", err)
	}
	return nil
}

func (d *DB) queryReceipts(ctx context.Context, q string, args ...any) ([]receipt.Receipt, error) {
	rows, err := d.db.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []receipt.Receipt
	for rows.Next() {
		var r receipt.Receipt
		var payload string
		if err := rows.Scan(&r.Type, &payload, &r.ValidatorSignature, &r.MinerSignature); err != nil {
			return nil, err
		}
		r.Payload = json.RawMessage(payload)
		out = append(out, r)
	}
	return out, rows.Err()
}

// ReceiptsAfter implements store.Receipts.
func (d *DB) ReceiptsAfter(ctx context.Context, after int64, limit int) ([]store.StoredReceipt, error) {
	return d.storedReceipts(ctx, `SELECT id, receipt_type, payload, validator_signature, miner_signature FROM receipts WHERE id > ? ORDER BY id LIMIT ?`, after, limit)
}

// ReceiptsStoredIn implements store.Receipts.
func (d *DB) ReceiptsStoredIn(ctx context.Context, from, to time.Time) ([]store.StoredReceipt, error) {
	return d.storedReceipts(ctx, `SELECT id, receipt_type, payload, validator_signature, miner_signature FROM receipts WHERE stored_at >= ? AND stored_at < ? ORDER BY id`,
		from.UnixMicro(), to.UnixMicro())
}

func (d *DB) storedReceipts(ctx context.Context, q string, args ...any) ([]store.StoredReceipt, error) {
	rows, err := d.db.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []store.StoredReceipt
	for rows.Next() {
		var sr store.StoredReceipt
		var payload string
		if err := rows.Scan(&sr.ID, &sr.Receipt.Type, &payload, &sr.Receipt.ValidatorSignature, &sr.Receipt.MinerSignature); err != nil {
			return nil, err
		}
		sr.Receipt.Payload = json.RawMessage(payload)
		out = append(out, sr)
	}
	return out, rows.Err()
}

// ReceiptsForJob implements store.Receipts.
func (d *DB) ReceiptsForJob(ctx context.Context, jobUUID string) ([]receipt.Receipt, error) {
	return d.queryReceipts(ctx, `SELECT receipt_type, payload, validator_signature, miner_signature FROM receipts WHERE job_uuid = ? ORDER BY id`, jobUUID)
}

// PushOutbox implements store.Outbox.
func (d *DB) PushOutbox(ctx context.Context, msg []byte) error {
	err := d.w.write(ctx, func(ctx context.Context, tx *stmtTx) error {
		_, err := tx.ExecContext(ctx, qPushOutbox, string(msg), time.Now().UnixMicro())
		return err
	})
	if err != nil {
		return fmt.Errorf("outbox: %w", err)
	}
	return nil
}

// PeekOutbox implements store.Outbox.
func (d *DB) PeekOutbox(ctx context.Context, limit int) ([]store.OutboxItem, error) {
	rows, err := d.db.QueryContext(ctx, `SELECT id, message FROM outbox ORDER BY id LIMIT ?`, limit)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []store.OutboxItem
	for rows.Next() {
		var it store.OutboxItem
		var msg string
		if err := rows.Scan(&it.ID, &msg); err != nil {
			return nil, err
		}
		it.Message = []byte(msg)
		out = append(out, it)
	}
	return out, rows.Err()
}

// AckOutbox implements store.Outbox.
func (d *DB) AckOutbox(ctx context.Context, ids ...int64) error {
	if len(ids) == 0 {
		return nil
	}
	return d.w.write(ctx, func(ctx context.Context, tx *stmtTx) error {
		for _, id := range ids {
			if _, err := tx.ExecContext(ctx, qAckOutbox, id); err != nil {
				return err
			}
		}
		return nil
	})
}

// PutSyntheticResult implements store.Scores.
func (d *DB) PutSyntheticResult(ctx context.Context, r store.SyntheticResult) error {
	_, err := d.db.ExecContext(ctx, `INSERT INTO synthetic_results (cycle, miner, class, job_uuid, generator, passed, reason, took_ms, expected_ms, at)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`, r.Cycle, r.Miner, r.Class, r.JobUUID, r.Generator, r.Passed, r.Reason, r.TookMS, r.ExpectedMS, r.At.UnixMicro())
	if err != nil {
		return fmt.Errorf("put synthetic result: %w", err)
	}
	return nil
}

// SyntheticResults implements store.Scores.
func (d *DB) SyntheticResults(ctx context.Context, cycle int64) ([]store.SyntheticResult, error) {
	rows, err := d.db.QueryContext(ctx, `SELECT cycle, miner, class, job_uuid, generator, passed, reason, took_ms, expected_ms, at
		FROM synthetic_results WHERE cycle = ? ORDER BY miner, class, id`, cycle)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []store.SyntheticResult
	for rows.Next() {
		var r store.SyntheticResult
		var at int64
		if err := rows.Scan(&r.Cycle, &r.Miner, &r.Class, &r.JobUUID, &r.Generator, &r.Passed, &r.Reason, &r.TookMS, &r.ExpectedMS, &at); err != nil {
			return nil, err
		}
		r.At = time.UnixMicro(at).UTC()
		out = append(out, r)
	}
	return out, rows.Err()
}

// PutScores implements store.Scores.
func (d *DB) PutScores(ctx context.Context, scores []store.MinerScore) error {
	tx, err := d.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	for _, s := range scores {
		if _, err := tx.ExecContext(ctx, `INSERT OR REPLACE INTO scores (cycle, miner, score, weight, details, at) VALUES (?, ?, ?, ?, ?, ?)`,
			s.Cycle, s.Miner, s.Score, s.Weight, string(s.Details), s.At.UnixMicro()); err != nil {
			return fmt.Errorf("put scores: %w", err)
		}
	}
	return tx.Commit()
}

// LatestScores implements store.Scores.
func (d *DB) LatestScores(ctx context.Context, n int) ([]store.MinerScore, error) {
	rows, err := d.db.QueryContext(ctx, `SELECT cycle, miner, score, weight, details, at FROM scores
		WHERE cycle IN (SELECT DISTINCT cycle FROM scores ORDER BY cycle DESC LIMIT ?) ORDER BY cycle DESC, weight DESC, miner`, n)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []store.MinerScore
	for rows.Next() {
		var s store.MinerScore
		var details string
		var at int64
		if err := rows.Scan(&s.Cycle, &s.Miner, &s.Score, &s.Weight, &details, &at); err != nil {
			return nil, err
		}
		s.Details, s.At = json.RawMessage(details), time.UnixMicro(at).UTC()
		out = append(out, s)
	}
	return out, rows.Err()
}

// PutReport implements store.Reports.
func (d *DB) PutReport(ctx context.Context, validator string, body []byte) error {
	_, err := d.db.ExecContext(ctx, `INSERT OR REPLACE INTO validator_reports (validator, body, updated_at) VALUES (?, ?, ?)`,
		validator, string(body), time.Now().UnixMicro())
	return err
}

// Reports implements store.Reports.
func (d *DB) Reports(ctx context.Context) (map[string]json.RawMessage, error) {
	rows, err := d.db.QueryContext(ctx, `SELECT validator, body FROM validator_reports`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[string]json.RawMessage{}
	for rows.Next() {
		var v, body string
		if err := rows.Scan(&v, &body); err != nil {
			return nil, err
		}
		out[v] = json.RawMessage(body)
	}
	return out, rows.Err()
}

// PutPair implements store.Pairs.
func (d *DB) PutPair(ctx context.Context, p store.PairRecord) error {
	body, err := json.Marshal(pairBody{p.Pair, p.Proof})
	if err != nil {
		return err
	}
	_, err = d.db.ExecContext(ctx, `INSERT INTO stream_pairs (job_uuid, request_id, image, miner_hotkey, validator_hotkey, reported_by, body, at)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?)`, p.JobUUID, p.RequestID, p.Image, p.MinerHotkey, p.ValidatorHotkey, p.ReportedBy, string(body), p.At.UnixMicro())
	if isUnique(err) {
		return fmt.Errorf("pair %s/%s: %w", p.JobUUID, p.RequestID, store.ErrDuplicate)
	}
	if err != nil {
		return fmt.Errorf("put pair: %w", err)
	}
	return nil
}

// pairBody is what the body column holds.
type pairBody struct {
	Pair  protocol.StreamPair             `json:"pair"`
	Proof protocol.StreamingServerDetails `json:"proof"`
}

// PairsForImage implements store.Pairs.
func (d *DB) PairsForImage(ctx context.Context, image string, after int64, limit int) ([]store.PairRecord, []int64, error) {
	return d.queryPairs(ctx, `WHERE image = ? AND id > ? ORDER BY id LIMIT ?`, image, after, limit)
}

// UnforwardedPairs implements store.Pairs.
func (d *DB) UnforwardedPairs(ctx context.Context, validator string, limit int) ([]store.PairRecord, []int64, error) {
	return d.queryPairs(ctx, `WHERE validator_hotkey = ? AND forwarded = 0 ORDER BY id LIMIT ?`, validator, limit)
}

// MarkForwarded implements store.Pairs.
func (d *DB) MarkForwarded(ctx context.Context, validator string, id int64) error {
	_, err := d.db.ExecContext(ctx, `UPDATE stream_pairs SET forwarded = 1 WHERE id = ? AND validator_hotkey = ?`, id, validator)
	return err
}

func (d *DB) queryPairs(ctx context.Context, where string, args ...any) ([]store.PairRecord, []int64, error) {
	rows, err := d.db.QueryContext(ctx, `SELECT id, job_uuid, request_id, image, miner_hotkey, validator_hotkey, reported_by, body, at
		FROM stream_pairs `+where, args...)
	if err != nil {
		return nil, nil, err
	}
	defer rows.Close()
	var out []store.PairRecord
	var ids []int64
	for rows.Next() {
		var p store.PairRecord
		var id, at int64
		var body string
		if err := rows.Scan(&id, &p.JobUUID, &p.RequestID, &p.Image, &p.MinerHotkey, &p.ValidatorHotkey, &p.ReportedBy, &body, &at); err != nil {
			return nil, nil, err
		}
		var pb pairBody
		json.Unmarshal([]byte(body), &pb)
		p.Pair, p.Proof = pb.Pair, pb.Proof
		p.At = time.UnixMicro(at).UTC()
		out = append(out, p)
		ids = append(ids, id)
	}
	return out, ids, rows.Err()
}

// PutCheatReport implements store.CheatReports.
func (d *DB) PutCheatReport(ctx context.Context, r store.CheatRecord) error {
	sigb, err := json.Marshal(r.Signature)
	if err != nil {
		return err
	}
	details := string(r.Details)
	if details == "" {
		details = "null"
	}
	_, err = d.db.ExecContext(ctx, `INSERT INTO cheat_reports (job_uuid, trusted_job_uuid, reporter, validator_hotkey, details, signature, at)
		VALUES (?, ?, ?, ?, ?, ?, ?)`, r.JobUUID, r.TrustedJobUUID, r.Reporter, r.ValidatorHotkey, details, string(sigb), r.At.UnixMicro())
	if isUnique(err) {
		return fmt.Errorf("cheat report on job %s: %w", r.JobUUID, store.ErrDuplicate)
	}
	if err != nil {
		return fmt.Errorf("put cheat report: %w", err)
	}
	return nil
}

// UnforwardedCheatReports implements store.CheatReports.
func (d *DB) UnforwardedCheatReports(ctx context.Context, validator string, limit int) ([]store.CheatRecord, []int64, error) {
	rows, err := d.db.QueryContext(ctx, `SELECT id, job_uuid, trusted_job_uuid, reporter, validator_hotkey, details, signature, at
		FROM cheat_reports WHERE validator_hotkey = ? AND forwarded = 0 ORDER BY id LIMIT ?`, validator, limit)
	if err != nil {
		return nil, nil, err
	}
	defer rows.Close()
	var out []store.CheatRecord
	var ids []int64
	for rows.Next() {
		var r store.CheatRecord
		var id, at int64
		var details, sigb string
		if err := rows.Scan(&id, &r.JobUUID, &r.TrustedJobUUID, &r.Reporter, &r.ValidatorHotkey, &details, &sigb, &at); err != nil {
			return nil, nil, err
		}
		r.Details = json.RawMessage(details)
		json.Unmarshal([]byte(sigb), &r.Signature)
		r.At = time.UnixMicro(at).UTC()
		out = append(out, r)
		ids = append(ids, id)
	}
	return out, ids, rows.Err()
}

// MarkCheatForwarded implements store.CheatReports.
func (d *DB) MarkCheatForwarded(ctx context.Context, id int64) error {
	_, err := d.db.ExecContext(ctx, `UPDATE cheat_reports SET forwarded = 1 WHERE id = ?`, id)
	return err
}

// PutWindow implements store.Validations.
func (d *DB) PutWindow(ctx context.Context, w store.Window, cheats []store.Cheat) (int64, error) {
	tx, err := d.db.BeginTx(ctx, nil)
	if err != nil {
		return 0, err
	}
	defer tx.Rollback()
	res, err := tx.ExecContext(ctx, `INSERT INTO validation_windows (image, last_pair, body, at) VALUES (?, ?, ?, ?)`,
		w.Image, w.LastPair, string(w.Body), w.At.UnixMicro())
	if err != nil {
		return 0, fmt.Errorf("put window: %w", err)
	}
	id, _ := res.LastInsertId()
	for _, c := range cheats {
		if _, err := tx.ExecContext(ctx, `INSERT INTO cheats (window, miner, job_uuid, request_id, replay_sha256, evidence, at) VALUES (?, ?, ?, ?, ?, ?, ?)`,
			id, c.Miner, c.JobUUID, c.RequestID, c.ReplaySHA256, string(c.Evidence), c.At.UnixMicro()); err != nil {
			return 0, fmt.Errorf("put cheat: %w", err)
		}
	}
	return id, tx.Commit()
}

// LastPair implements store.Validations.
func (d *DB) LastPair(ctx context.Context, image string) (int64, error) {
	var last sql.NullInt64
	err := d.db.QueryRowContext(ctx, `SELECT MAX(last_pair) FROM validation_windows WHERE image = ?`, image).Scan(&last)
	return last.Int64, err
}

// Windows implements store.Validations.
func (d *DB) Windows(ctx context.Context, limit int) ([]store.Window, error) {
	rows, err := d.db.QueryContext(ctx, `SELECT id, image, last_pair, body, at FROM validation_windows ORDER BY id DESC LIMIT ?`, limit)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []store.Window
	for rows.Next() {
		var w store.Window
		var body string
		var at int64
		if err := rows.Scan(&w.ID, &w.Image, &w.LastPair, &body, &at); err != nil {
			return nil, err
		}
		w.Body, w.At = json.RawMessage(body), time.UnixMicro(at).UTC()
		out = append(out, w)
	}
	return out, rows.Err()
}

// Cheats implements store.Validations.
func (d *DB) Cheats(ctx context.Context, since time.Time) ([]store.Cheat, error) {
	rows, err := d.db.QueryContext(ctx, `SELECT id, window, miner, job_uuid, request_id, replay_sha256, evidence, at FROM cheats WHERE at >= ? ORDER BY id`, since.UnixMicro())
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []store.Cheat
	for rows.Next() {
		var c store.Cheat
		var ev string
		var at int64
		if err := rows.Scan(&c.ID, &c.Window, &c.Miner, &c.JobUUID, &c.RequestID, &c.ReplaySHA256, &ev, &at); err != nil {
			return nil, err
		}
		c.Evidence, c.At = json.RawMessage(ev), time.UnixMicro(at).UTC()
		out = append(out, c)
	}
	return out, rows.Err()
}

// Uncounted implements store.Ledger.
func (d *DB) Uncounted(ctx context.Context) ([]store.Work, error) {
	rows, err := d.db.QueryContext(ctx, `SELECT f.payload, f.validator_signature, f.miner_signature, s.payload, s.validator_signature, s.miner_signature
		FROM receipts f LEFT JOIN receipts s ON s.job_uuid = f.job_uuid AND s.miner_hotkey = f.miner_hotkey AND s.receipt_type = ?
		WHERE f.receipt_type = ? AND f.counted_cycle IS NULL ORDER BY f.id`, receipt.JobStarted, receipt.JobFinished)
	if err != nil {
		return nil, fmt.Errorf("uncounted: %w", err)
	}
	defer rows.Close()
	var out []store.Work
	for rows.Next() {
		var fp string
		var sp, svs, sms sql.NullString
		w := store.Work{Finished: receipt.Receipt{Type: receipt.JobFinished}}
		if err := rows.Scan(&fp, &w.Finished.ValidatorSignature, &w.Finished.MinerSignature, &sp, &svs, &sms); err != nil {
			return nil, fmt.Errorf("uncounted: %w", err)
		}
		w.Finished.Payload = json.RawMessage(fp)
		if sp.Valid {
			w.Started = &receipt.Receipt{Type: receipt.JobStarted, Payload: json.RawMessage(sp.String), ValidatorSignature: svs.String, MinerSignature: sms.String}
		}
		out = append(out, w)
	}
	return out, rows.Err()
}

// PutCycle implements store.Ledger.
func (d *DB) PutCycle(ctx context.Context, scores []store.MinerScore, counted []store.Counted) error {
	tx, err := d.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	for _, c := range counted {
		res, err := tx.ExecContext(ctx, `UPDATE receipts SET counted_cycle = ? WHERE job_uuid = ? AND miner_hotkey = ? AND receipt_type = ? AND counted_cycle IS NULL`,
			c.Cycle, c.JobUUID, c.Miner, receipt.JobFinished)
		if err != nil {
			return fmt.Errorf("put cycle: %w", err)
		}
		if n, _ := res.RowsAffected(); n == 0 {
			var have int
			tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM receipts WHERE job_uuid = ? AND miner_hotkey = ? AND receipt_type = ?`, c.JobUUID, c.Miner, receipt.JobFinished).Scan(&have)
			if have == 0 {
				return fmt.Errorf("put cycle %d: job %s on %s has no finished receipt: %w", c.Cycle, c.JobUUID, c.Miner, store.ErrNotFound)
			}
			return fmt.Errorf("put cycle %d: job %s on %s was counted before: %w", c.Cycle, c.JobUUID, c.Miner, store.ErrDuplicate)
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO counted (job_uuid, miner_hotkey, class, cycle, pay, reason) VALUES (?, ?, ?, ?, ?, ?)`,
			c.JobUUID, c.Miner, c.Class, c.Cycle, c.Pay, c.Reason); err != nil {
			if isUnique(err) {
				return fmt.Errorf("put cycle %d: job %s on %s was counted before: %w", c.Cycle, c.JobUUID, c.Miner, store.ErrDuplicate)
			}
			return fmt.Errorf("put cycle: %w", err)
		}
	}
	for _, s := range scores {
		if _, err := tx.ExecContext(ctx, `INSERT OR REPLACE INTO scores (cycle, miner, score, weight, details, at) VALUES (?, ?, ?, ?, ?, ?)`,
			s.Cycle, s.Miner, s.Score, s.Weight, string(s.Details), s.At.UnixMicro()); err != nil {
			return fmt.Errorf("put cycle: %w", err)
		}
	}
	return tx.Commit()
}

// Counted implements store.Ledger.
func (d *DB) Counted(ctx context.Context, cycle int64) ([]store.Counted, error) {
	rows, err := d.db.QueryContext(ctx, `SELECT job_uuid, miner_hotkey, class, cycle, pay, reason FROM counted WHERE cycle = ? ORDER BY job_uuid, miner_hotkey`, cycle)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []store.Counted
	for rows.Next() {
		var c store.Counted
		if err := rows.Scan(&c.JobUUID, &c.Miner, &c.Class, &c.Cycle, &c.Pay, &c.Reason); err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	return out, rows.Err()
}

// ReceiptCursor implements store.Ledger.
func (d *DB) ReceiptCursor(ctx context.Context, miner string) (string, error) {
	var c string
	err := d.db.QueryRowContext(ctx, `SELECT cursor FROM receipt_cursors WHERE miner = ?`, miner).Scan(&c)
	if errors.Is(err, sql.ErrNoRows) {
		return "", nil
	}
	return c, err
}

// SetReceiptCursor implements store.Ledger.
func (d *DB) SetReceiptCursor(ctx context.Context, miner, cursor string) error {
	_, err := d.db.ExecContext(ctx, `INSERT INTO receipt_cursors (miner, cursor, updated_at) VALUES (?, ?, ?)
		ON CONFLICT(miner) DO UPDATE SET cursor = excluded.cursor, updated_at = excluded.updated_at`, miner, cursor, time.Now().UnixMicro())
	if err != nil {
		return fmt.Errorf("set receipt cursor: %w", err)
	}
	return nil
}

// PutExcuseVerdicts implements store.Excuses.
func (d *DB) PutExcuseVerdicts(ctx context.Context, vs []store.ExcuseVerdict) error {
	tx, err := d.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	for _, v := range vs {
		if _, err := tx.ExecContext(ctx, `INSERT INTO excuse_verdicts (cycle, miner, class, declined_job, job, signer, valid, reason, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`,
			v.Cycle, v.Miner, v.Class, v.DeclinedJob, v.Job, v.Signer, v.Valid, v.Reason, v.At.UnixMicro()); err != nil {
			return fmt.Errorf("put excuse verdicts: %w", err)
		}
	}
	return tx.Commit()
}

// ExcuseVerdicts implements store.Excuses.
func (d *DB) ExcuseVerdicts(ctx context.Context, cycle int64) ([]store.ExcuseVerdict, error) {
	rows, err := d.db.QueryContext(ctx, `SELECT cycle, miner, class, declined_job, job, signer, valid, reason, at FROM excuse_verdicts WHERE cycle = ? ORDER BY id`, cycle)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []store.ExcuseVerdict
	for rows.Next() {
		var v store.ExcuseVerdict
		var at int64
		if err := rows.Scan(&v.Cycle, &v.Miner, &v.Class, &v.DeclinedJob, &v.Job, &v.Signer, &v.Valid, &v.Reason, &at); err != nil {
			return nil, err
		}
		v.At = time.UnixMicro(at).UTC()
		out = append(out, v)
	}
	return out, rows.Err()
}
