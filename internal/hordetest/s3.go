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
func StartS3(t testing.TB, bucket string) *S3 {
	t.Helper()
	bin := versitygw(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	const access, secret = "hordetestaccess", "hordetestsecretkey0123456789"
	var logs bytes.Buffer
	cmd := exec.Command(bin, "--port", addr, "--access", access, "--secret", secret, "posix", t.TempDir())
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			t.Logf("versitygw output:\n%s", logs.String())
		}
	})
	s := &S3{Endpoint: "http://" + addr}
	s.Client = s3.New(s3.Options{Region: "us-east-1", BaseEndpoint: aws.String(s.Endpoint), UsePathStyle: true,
		Credentials: credentials.NewStaticCredentialsProvider(access, secret, "")})
	s.Presign = s3.NewPresignClient(s.Client, s3.WithPresignExpires(10*time.Minute))
	deadline := time.Now().Add(20 * time.Second)
	for {
		_, err := s.Client.CreateBucket(context.Background(), &s3.CreateBucketInput{Bucket: aws.String(bucket)})
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("S3 server did not come up: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	return s
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
