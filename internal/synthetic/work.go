package synthetic

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
)

// The computations synthetic jobs perform, shared by the job image (which
// does them) and the checkers (which verify them cheaply).

// Prime is the modulus of matrix arithmetic (2^31 − 1).
const Prime = 1<<31 - 1

// splitmix64 is a small deterministic generator: the same seed gives the
// same matrices in the job and in the checker.
type splitmix64 uint64

func (s *splitmix64) next() uint64 {
	*s += 0x9e3779b97f4a7c15
	z := uint64(*s)
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
	z = (z ^ (z >> 27)) * 0x94d049bb133111eb
	return z ^ (z >> 31)
}

// Matrix is an n×n matrix over integers mod Prime, row-major.
type Matrix struct {
	N int
	V []uint32
}

// RandomMatrix derives an n×n matrix from seed.
func RandomMatrix(seed uint64, n int) Matrix {
	g := splitmix64(seed)
	m := Matrix{N: n, V: make([]uint32, n*n)}
	for i := range m.V {
		m.V[i] = uint32(g.next() % Prime)
	}
	return m
}

// Inputs returns the two factor matrices of a matmul job.
func Inputs(seed uint64, n int) (a, b Matrix) {
	return RandomMatrix(seed, n), RandomMatrix(seed^0x5bd1e9955bd1e995, n)
}

// Multiply returns a·b mod Prime: the O(n³) work of the job.
func Multiply(a, b Matrix) Matrix {
	c, _ := MultiplyContext(context.Background(), a, b)
	return c
}

// MultiplyContext is Multiply that gives up, between rows, once ctx is done.
func MultiplyContext(ctx context.Context, a, b Matrix) (Matrix, error) {
	n := a.N
	c := Matrix{N: n, V: make([]uint32, n*n)}
	row := make([]uint64, n)
	for i := 0; i < n; i++ {
		if err := ctx.Err(); err != nil {
			return Matrix{}, err
		}
		clear(row)
		for k := 0; k < n; k++ {
			aik := uint64(a.V[i*n+k])
			if aik == 0 {
				continue
			}
			bk := b.V[k*n : k*n+n]
			for j, bkj := range bk {
				row[j] = (row[j] + aik*uint64(bkj)) % Prime
			}
		}
		for j := range row {
			c.V[i*n+j] = uint32(row[j])
		}
	}
	return c, nil
}

// mulVec returns m·x mod Prime in O(n²).
func mulVec(m Matrix, x []uint64) []uint64 {
	n := m.N
	y := make([]uint64, n)
	for i := 0; i < n; i++ {
		var s uint64
		for j, v := range m.V[i*n : i*n+n] {
			s = (s + uint64(v)*x[j]) % Prime
		}
		y[i] = s
	}
	return y
}

// Freivalds checks c = a·b with k random vectors in O(k·n²); a wrong c
// passes with probability at most (1/Prime)^k.
func Freivalds(a, b, c Matrix, seed uint64, k int) bool {
	g := splitmix64(seed)
	for range k {
		x := make([]uint64, a.N)
		for i := range x {
			x[i] = g.next() % Prime
		}
		abx := mulVec(a, mulVec(b, x))
		cx := mulVec(c, x)
		for i := range abx {
			if abx[i] != cx[i] {
				return false
			}
		}
	}
	return true
}

// Encode writes a matrix as little-endian uint32s.
func (m Matrix) Encode() []byte {
	out := make([]byte, 4*len(m.V))
	for i, v := range m.V {
		binary.LittleEndian.PutUint32(out[4*i:], v)
	}
	return out
}

// DecodeMatrix reads an n×n matrix written by Encode.
func DecodeMatrix(b []byte, n int) (Matrix, bool) {
	if len(b) != 4*n*n {
		return Matrix{}, false
	}
	m := Matrix{N: n, V: make([]uint32, n*n)}
	for i := range m.V {
		m.V[i] = binary.LittleEndian.Uint32(b[4*i:])
		if m.V[i] >= Prime {
			return Matrix{}, false
		}
	}
	return m, true
}

// SearchHash is the hash a search job must invert: sha256(salt ‖ decimal(secret)).
func SearchHash(salt string, secret uint64) string {
	sum := sha256.Sum256([]byte(salt + strconv.FormatUint(secret, 10)))
	return hex.EncodeToString(sum[:])
}

// FindSecret finds the secret in [0, space) whose SearchHash is hash: the work of the job.
func FindSecret(salt, hash string, space uint64) (uint64, bool) {
	secret, ok, _ := FindSecretContext(context.Background(), salt, hash, space)
	return secret, ok
}

// FindSecretContext is FindSecret that gives up, every 65,536 tries, once ctx is done.
func FindSecretContext(ctx context.Context, salt, hash string, space uint64) (uint64, bool, error) {
	want, err := hex.DecodeString(hash)
	if err != nil || len(want) != sha256.Size {
		return 0, false, nil
	}
	var target [sha256.Size]byte
	copy(target[:], want)
	buf := []byte(salt)
	for i := uint64(0); i < space; i++ {
		if i%(1<<16) == 0 && ctx.Err() != nil {
			return 0, false, ctx.Err()
		}
		b := strconv.AppendUint(buf[:len(salt)], i, 10)
		if sha256.Sum256(b) == target {
			return i, true, nil
		}
	}
	return 0, false, nil
}

// ChunkSize keeps each artifact under the 1 MB that artifacts may have.
const ChunkSize = 960_000

// WriteChunks writes b into dir as c-000.bin, c-001.bin, … of at most ChunkSize bytes.
func WriteChunks(dir string, b []byte) error {
	for i := 0; len(b) > 0 || i == 0; i++ {
		n := min(len(b), ChunkSize)
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("c-%03d.bin", i)), b[:n], 0o644); err != nil {
			return err
		}
		b = b[n:]
	}
	return nil
}

// JoinChunks reassembles what WriteChunks wrote, from artifacts keyed by
// their container paths (base64 values, as jobs report them).
func JoinChunks(artifacts map[string]string, dir string) ([]byte, error) {
	var out []byte
	for i := 0; ; i++ {
		v, ok := artifacts[fmt.Sprintf("%s/c-%03d.bin", dir, i)]
		if !ok {
			if i == 0 {
				return nil, fmt.Errorf("no result artifacts in %s", dir)
			}
			return out, nil
		}
		b, err := base64.StdEncoding.DecodeString(v)
		if err != nil {
			return nil, fmt.Errorf("artifact %d: %w", i, err)
		}
		out = append(out, b...)
	}
}
