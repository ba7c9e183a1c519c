package streaming

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"hash/maphash"
	"io"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
)

// Receipt store sizing: receipts go to shardCount append-only files (a
// lookup reads one of them), each with a write buffer; request ids seen are
// remembered in a Bloom filter of bloomBits bits, so that the common case —
// an id never seen — is decided in memory and only a possible repeat reads
// its shard. Memory is fixed (about 4 MiB of filter and 2 MiB of buffers)
// however many requests the job serves.
const (
	shardCount  = 256
	shardBuffer = 8 << 10
	bloomBits   = 1 << 25
	bloomHashes = 5
)

// errSeen is a request id the job saw before.
var errSeen = errors.New("request id used before")

// store keeps a job's receipts on disk, one line per reserved request id:
// "id blob signature\n", or "id - -\n" for a request that ended without a
// receipt (its id stays used).
type store struct {
	dir    string
	owned  bool // dir was made by the store and is removed by close
	seed   maphash.Seed
	bloom  []atomic.Uint64
	shards [shardCount]shard
	signed atomic.Int64

	once    sync.Once
	initErr error
}

type shard struct {
	mu       sync.Mutex
	f        *os.File
	w        *bufio.Writer
	inflight map[string]struct{}
}

func (s *store) init() error {
	s.once.Do(func() {
		s.seed = maphash.MakeSeed()
		s.bloom = make([]atomic.Uint64, bloomBits/64)
		if s.dir == "" {
			s.dir, s.initErr = os.MkdirTemp("", "horde-receipts-")
			s.owned = s.initErr == nil
		} else {
			s.initErr = os.MkdirAll(s.dir, 0o700)
		}
	})
	return s.initErr
}

// slots returns id's shard and the Bloom filter's bit positions for it.
func (s *store) slots(id string) (int, [bloomHashes]uint32) {
	h := maphash.String(s.seed, id)
	h1, h2 := uint32(h), uint32(h>>32)|1
	var bits [bloomHashes]uint32
	for i := range bits {
		bits[i] = (h1 + uint32(i)*h2) % bloomBits
	}
	return int(h >> 56 % shardCount), bits
}

// reserve claims id for one exchange, or returns errSeen.
func (s *store) reserve(id string) error {
	if err := s.init(); err != nil {
		return err
	}
	i, bits := s.slots(id)
	sh := &s.shards[i]
	sh.mu.Lock()
	defer sh.mu.Unlock()
	maybe := true
	for _, b := range bits {
		if s.bloom[b/64].Load()&(1<<(b%64)) == 0 {
			maybe = false
			break
		}
	}
	if maybe {
		if _, ok := sh.inflight[id]; ok {
			return errSeen
		}
		_, _, found, err := sh.find(id)
		if err != nil {
			return err
		}
		if found {
			return errSeen
		}
	}
	for _, b := range bits {
		s.bloom[b/64].Or(1 << (b % 64))
	}
	if sh.inflight == nil {
		sh.inflight = map[string]struct{}{}
	}
	sh.inflight[id] = struct{}{}
	return nil
}

// done records how the exchange of a reserved id ended: with its receipt,
// or (blob "") without one.
func (s *store) done(id, blob, sig string) error {
	i, _ := s.slots(id)
	sh := &s.shards[i]
	sh.mu.Lock()
	defer sh.mu.Unlock()
	delete(sh.inflight, id)
	if blob == "" {
		blob, sig = "-", "-"
	} else {
		s.signed.Add(1)
	}
	if sh.w == nil {
		f, err := os.OpenFile(filepath.Join(s.dir, fmt.Sprintf("%02x", i)), os.O_CREATE|os.O_RDWR|os.O_APPEND, 0o600)
		if err != nil {
			return err
		}
		sh.f, sh.w = f, bufio.NewWriterSize(f, shardBuffer)
	}
	sh.w.WriteString(id)
	sh.w.WriteByte(' ')
	sh.w.WriteString(blob)
	sh.w.WriteByte(' ')
	sh.w.WriteString(sig)
	return sh.w.WriteByte('\n')
}

// find reads the shard's file for id's line; the shard is locked.
func (sh *shard) find(id string) (blob, sig string, found bool, err error) {
	if sh.w == nil {
		return "", "", false, nil
	}
	if err := sh.w.Flush(); err != nil {
		return "", "", false, err
	}
	r := bufio.NewReaderSize(io.NewSectionReader(sh.f, 0, 1<<62), 64<<10)
	prefix := []byte(id + " ")
	for {
		line, err := r.ReadSlice('\n')
		for errors.Is(err, bufio.ErrBufferFull) {
			// A line longer than the buffer (a very long target): read it whole.
			more, e := r.ReadSlice('\n')
			line, err = append(bytes.Clone(line), more...), e
		}
		if err == io.EOF {
			return "", "", false, nil
		}
		if err != nil {
			return "", "", false, err
		}
		if rest, ok := bytes.CutPrefix(line, prefix); ok {
			b, sg, _ := bytes.Cut(bytes.TrimSuffix(rest, []byte("\n")), []byte(" "))
			if string(b) == "-" {
				return "", "", true, nil
			}
			return string(b), string(sg), true, nil
		}
	}
}

// lookup returns id's receipt; ok is false if it has none (yet).
func (s *store) lookup(id string) (blob, sig string, ok bool, err error) {
	if err := s.init(); err != nil {
		return "", "", false, err
	}
	i, _ := s.slots(id)
	sh := &s.shards[i]
	sh.mu.Lock()
	defer sh.mu.Unlock()
	blob, sig, _, err = sh.find(id)
	return blob, sig, blob != "", err
}

// close closes the shards' files and removes the directory the store made.
func (s *store) close() error {
	var errs []error
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.Lock()
		if sh.f != nil {
			errs = append(errs, sh.w.Flush(), sh.f.Close())
			sh.f, sh.w = nil, nil
		}
		sh.mu.Unlock()
	}
	if s.owned {
		errs = append(errs, os.RemoveAll(s.dir))
	}
	return errors.Join(errs...)
}
