package synthetic

import (
	"encoding/base64"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"testing"
)

func TestSearchTask(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	task := Search{}.Generate(Params{SearchSpace: 5000}, rng)
	space, _ := strconv.ParseUint(task.Args[3], 10, 64)
	secret, ok := FindSecret(task.Args[1], task.Args[2], space)
	if !ok {
		t.Fatal("the job cannot find the secret")
	}
	if err := task.Check(Result{Stdout: strconv.FormatUint(secret, 10) + "\n"}); err != nil {
		t.Errorf("right answer: %v", err)
	}
	for _, bad := range []string{"", strconv.FormatUint(secret+1, 10)} {
		if err := task.Check(Result{Stdout: bad}); !errors.Is(err, ErrWrongAnswer) {
			t.Errorf("answer %q: %v", bad, err)
		}
	}
}

func TestMatmulTask(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	task := Matmul{}.Generate(Params{MatrixN: 40}, rng)
	seed, _ := strconv.ParseUint(task.Args[1], 10, 64)
	c := Multiply(Inputs(seed, 40))
	dir := t.TempDir()
	if err := WriteChunks(dir, c.Encode()); err != nil {
		t.Fatal(err)
	}
	arts := map[string]string{}
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		b, _ := os.ReadFile(filepath.Join(dir, e.Name()))
		arts["/artifacts/"+e.Name()] = base64.StdEncoding.EncodeToString(b)
	}
	if err := task.Check(Result{Artifacts: arts}); err != nil {
		t.Fatalf("right product: %v", err)
	}
	// One wrong entry is caught.
	c.V[123] = (c.V[123] + 1) % Prime
	WriteChunks(dir, c.Encode())
	b, _ := os.ReadFile(filepath.Join(dir, "c-000.bin"))
	arts["/artifacts/c-000.bin"] = base64.StdEncoding.EncodeToString(b)
	if err := task.Check(Result{Artifacts: arts}); !errors.Is(err, ErrWrongAnswer) {
		t.Errorf("one wrong entry: %v", err)
	}
	if err := task.Check(Result{}); !errors.Is(err, ErrWrongAnswer) {
		t.Errorf("no artifacts: %v", err)
	}
}

func TestChunksSplitLargeResults(t *testing.T) {
	dir := t.TempDir()
	data := make([]byte, 2*ChunkSize+10)
	for i := range data {
		data[i] = byte(i)
	}
	if err := WriteChunks(dir, data); err != nil {
		t.Fatal(err)
	}
	arts := map[string]string{}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 3 {
		t.Fatalf("%d chunks", len(ents))
	}
	for _, e := range ents {
		b, _ := os.ReadFile(filepath.Join(dir, e.Name()))
		arts["/x/"+e.Name()] = base64.StdEncoding.EncodeToString(b)
	}
	got, err := JoinChunks(arts, "/x")
	if err != nil || string(got) != string(data) {
		t.Errorf("round trip: %v", err)
	}
}

func BenchmarkMultiply192(b *testing.B) {
	a, m := Inputs(1, 192)
	for b.Loop() {
		Multiply(a, m)
	}
}

func BenchmarkFreivalds192(b *testing.B) {
	a, m := Inputs(1, 192)
	c := Multiply(a, m)
	for b.Loop() {
		Freivalds(a, m, c, 7, 2)
	}
}
