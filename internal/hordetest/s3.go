package hordetest

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
)

// S3 is a real S3-compatible server (versitygw over a temporary directory)
// that checks SigV4 signatures, including those of presigned URLs.
type S3 struct {
	Endpoint string
	Client   *s3.Client
	Presign  *s3.PresignClient
}

var (
	vgwOnce sync.Once
	vgwBin  string
	vgwErr  error
)

// versitygw builds the gateway (a tool dependency in go.mod) once per test binary.
func versitygw(t testing.TB) string {
	vgwOnce.Do(func() {
		dir, err := os.MkdirTemp("", "horde-vgw-")
		if err != nil {
			vgwErr = err
			return
		}
		vgwBin = filepath.Join(dir, "versitygw")
		cmd := exec.Command("go", "build", "-o", vgwBin, "github.com/versity/versitygw/cmd/versitygw")
		if out, err := cmd.CombinedOutput(); err != nil {
			vgwErr = fmt.Errorf("build versitygw: %v\n%s", err, out)
		}
	})
	if vgwErr != nil {
		t.Fatal(vgwErr)
	}
	return vgwBin
}

// StartS3 runs an S3 server for the test and makes a bucket.
//
// The gateway takes a port number, not a listener, so the port is found free
// and handed over; if something else takes it in between, the gateway exits
// and is started again on another port.
func StartS3(t testing.TB, bucket string) *S3 {
	t.Helper()
	bin := versitygw(t)
	for attempt := 1; ; attempt++ {
		s, exited := startS3(t, bin, bucket)
		if s != nil {
			return s
		}
		if attempt == 5 {
			t.Fatalf("S3 server did not come up after %d ports: %s", attempt, exited)
		}
	}
}

// startS3 starts the gateway on a free port and makes the bucket; it returns
// nil and the gateway's output when the gateway exited first.
func startS3(t testing.TB, bin, bucket string) (*S3, string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	const access, secret = "hordetestaccess", "hordetestsecretkey0123456789"
	logs := &syncBuffer{}
	cmd := exec.Command(bin, "--port", addr, "--access", access, "--secret", secret, "posix", t.TempDir())
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }() // owned: ends when the gateway does; waited for in cleanup
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
		if t.Failed() {
			t.Logf("versitygw output:\n%s", logs.String())
		}
	})
	s := &S3{Endpoint: "http://" + addr}
	s.Client = s3.New(s3.Options{Region: "us-east-1", BaseEndpoint: aws.String(s.Endpoint), UsePathStyle: true,
		Credentials: credentials.NewStaticCredentialsProvider(access, secret, "")})
	s.Presign = s3.NewPresignClient(s.Client, s3.WithPresignExpires(10*time.Minute))
	deadline := time.Now().Add(time.Minute)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		_, err := s.Client.CreateBucket(context.Background(), &s3.CreateBucketInput{Bucket: aws.String(bucket)})
		select {
		case <-exited:
			return nil, logs.String()
		default:
		}
		if err == nil {
			return s, ""
		}
		if time.Now().After(deadline) {
			t.Fatalf("S3 server did not come up: %v", err)
		}
		select {
		case <-exited:
			return nil, logs.String()
		case <-tick.C:
		}
	}
}

// syncBuffer is a bytes.Buffer the gateway's output goroutines may share.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// PresignGet returns a presigned GET URL of bucket/key.
func (s *S3) PresignGet(t testing.TB, bucket, key string) string {
	r, err := s.Presign.PresignGetObject(context.Background(), &s3.GetObjectInput{Bucket: aws.String(bucket), Key: aws.String(key)})
	if err != nil {
		t.Fatal(err)
	}
	return r.URL
}

// PresignPut returns a presigned PUT URL of bucket/key.
func (s *S3) PresignPut(t testing.TB, bucket, key string) string {
	r, err := s.Presign.PresignPutObject(context.Background(), &s3.PutObjectInput{Bucket: aws.String(bucket), Key: aws.String(key)})
	if err != nil {
		t.Fatal(err)
	}
	return r.URL
}

// Put stores an object.
func (s *S3) Put(t testing.TB, bucket, key string, b []byte) {
	if _, err := s.Client.PutObject(context.Background(), &s3.PutObjectInput{Bucket: aws.String(bucket), Key: aws.String(key), Body: bytes.NewReader(b)}); err != nil {
		t.Fatal(err)
	}
}

// Get reads an object, or fails the test.
func (s *S3) Get(t testing.TB, bucket, key string) []byte {
	out, err := s.Client.GetObject(context.Background(), &s3.GetObjectInput{Bucket: aws.String(bucket), Key: aws.String(key)})
	if err != nil {
		t.Fatalf("get s3://%s/%s: %v", bucket, key, err)
	}
	defer out.Body.Close()
	b, _ := io.ReadAll(out.Body)
	return b
}

// status answers the HTTP status of a plain request (for checking presigned URLs).
func status(t testing.TB, method, url string, body []byte) int {
	req, _ := http.NewRequest(method, url, bytes.NewReader(body))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}
