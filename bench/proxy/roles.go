package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/horde-compute/horde/internal/streaming"
	sr "github.com/horde-compute/horde/streamreceipt"
)

// keys is the job's and the client's key material, as files in a directory
// (nginx reads them there) and parsed.
type keys struct {
	dir                string
	jobKey, clientKey  ed25519.PrivateKey
	jobCert, clientCrt []byte
}

func makeKeys(dir string) (*keys, error) {
	jk, jc, err := sr.NewKeyPair("horde-job-bench", 24*time.Hour, "127.0.0.1", "localhost")
	if err != nil {
		return nil, err
	}
	ck, cc, err := sr.NewKeyPair("bench-client", 24*time.Hour)
	if err != nil {
		return nil, err
	}
	k := &keys{dir: dir, jobKey: jk, jobCert: jc, clientKey: ck, clientCrt: cc}
	for name, key := range map[string]ed25519.PrivateKey{"job.key": jk, "client.key": ck} {
		der, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			return nil, err
		}
		if err := os.WriteFile(filepath.Join(dir, name), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
			return nil, err
		}
	}
	if err := errors.Join(os.WriteFile(filepath.Join(dir, "job.crt"), jc, 0o600),
		os.WriteFile(filepath.Join(dir, "client.crt"), cc, 0o600)); err != nil {
		return nil, err
	}
	return k, nil
}

func readKeys(dir string) (*keys, error) {
	k := &keys{dir: dir}
	var err error
	read := func(name string) []byte {
		b, e := os.ReadFile(filepath.Join(dir, name))
		err = errors.Join(err, e)
		return b
	}
	k.jobCert, k.clientCrt = read("job.crt"), read("client.crt")
	jk, ck := read("job.key"), read("client.key")
	if err != nil {
		return nil, err
	}
	parse := func(p []byte) ed25519.PrivateKey {
		b, _ := pem.Decode(p)
		if b == nil {
			err = errors.Join(err, errors.New("bad key PEM"))
			return nil
		}
		key, e := x509.ParsePKCS8PrivateKey(b.Bytes)
		err = errors.Join(err, e)
		ek, _ := key.(ed25519.PrivateKey)
		return ek
	}
	k.jobKey, k.clientKey = parse(jk), parse(ck)
	return k, err
}

// echoHandler is the zero-work service: it answers a POST with its body
// (with a length), and /sse with tokens server-sent events, flushed one by
// one, gap apart.
func echoHandler(tokens int, gap time.Duration) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			return
		}
		if r.URL.Path == "/sse" {
			w.Header().Set("Content-Type", "text/event-stream")
			f := w.(http.Flusher)
			var line []byte
			for i := range tokens {
				if i > 0 && gap > 0 {
					time.Sleep(gap)
				}
				line = strconv.AppendInt(append(line[:0], "data: token "...), int64(i), 10)
				line = append(line, "\n\n"...)
				if _, err := w.Write(line); err != nil {
					return
				}
				f.Flush()
			}
			io.WriteString(w, "data: [DONE]\n\n")
			return
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		w.Write(body)
	})
}

// serveEcho serves the echo service on addr until ctx ends; ready gets its address.
func serveEcho(ctx context.Context, addr string, tokens int, gap time.Duration, ready func(string)) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: echoHandler(tokens, gap)}
	return serveUntil(ctx, srv, ln, ready)
}

// serveHorde serves horde's signing proxy in front of upstream, as the
// executor does, until ctx ends.
func serveHorde(ctx context.Context, k *keys, addr string, upstream *url.URL, ready func(string)) error {
	proxy := &streaming.Proxy{JobUUID: "bench-job", Key: k.jobKey, Upstream: upstream}
	defer proxy.Close()
	ln, tlsCfg, err := listenJob(k, addr)
	if err != nil {
		return err
	}
	ready(ln.Addr().String())
	return proxy.Serve(ctx, ln, tlsCfg)
}

// listenJob listens on addr and returns the job's TLS configuration (the
// client's certificate required and pinned, ALPN h2 and http/1.1).
func listenJob(k *keys, addr string) (net.Listener, *tls.Config, error) {
	tlsCfg, err := sr.ServerTLS(k.jobKey, k.jobCert, k.clientCrt)
	if err != nil {
		return nil, nil, err
	}
	ln, err := net.Listen("tcp", addr)
	return ln, tlsCfg, err
}

// serveHordeNetHTTP serves horde's signing proxy on net/http's server, as
// before package h1: beside serveHorde it shows what h1 changed.
func serveHordeNetHTTP(ctx context.Context, k *keys, addr string, upstream *url.URL, ready func(string)) error {
	proxy := &streaming.Proxy{JobUUID: "bench-job", Key: k.jobKey, Upstream: upstream}
	defer proxy.Close()
	return serveJobTLS(ctx, k, addr, proxy, ready)
}

// serveGoFloor serves Go's own reverse proxy (net/http/httputil) with the
// same TLS as horde's proxy and kept-alive connections to the service, and
// nothing else: no checks, hashes, receipts or store. It is the floor of a
// proxy built on Go's HTTP server and TLS, beside which horde's own costs
// show.
func serveGoFloor(ctx context.Context, k *keys, addr string, upstream *url.URL, ready func(string)) error {
	rp := httputil.NewSingleHostReverseProxy(upstream)
	tr := &http.Transport{MaxIdleConns: 64, MaxIdleConnsPerHost: 64, IdleConnTimeout: 90 * time.Second, DisableCompression: true}
	defer tr.CloseIdleConnections()
	rp.Transport = tr
	return serveJobTLS(ctx, k, addr, rp, ready)
}

// serveJobTLS serves h on net/http's server with the job's TLS until ctx
// ends.
func serveJobTLS(ctx context.Context, k *keys, addr string, h http.Handler, ready func(string)) error {
	ln, tlsCfg, err := listenJob(k, addr)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: h, TLSConfig: tlsCfg, ReadHeaderTimeout: 10 * time.Second}
	return serveUntil(ctx, srv, tls.NewListener(ln, tlsCfg), ready)
}

func serveUntil(ctx context.Context, srv *http.Server, ln net.Listener, ready func(string)) error {
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }() // owned: Shutdown below, then <-served
	ready(ln.Addr().String())
	select {
	case err := <-served:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
	defer cancel()
	srv.Shutdown(sctx)
	<-served
	return nil
}

// loadSpec is one measured row's load.
type loadSpec struct {
	URL      string        `json:"url"`
	TLS      bool          `json:"tls"`
	HTTP2    bool          `json:"http2"`
	Conns    int           `json:"conns"`
	Size     int           `json:"size"`
	SSE      bool          `json:"sse"`
	Duration time.Duration `json:"duration"`
	Warmup   time.Duration `json:"warmup"`
	// Requests, if set, ends the run after that many requests instead.
	Requests int `json:"requests"`
}

// loadResult is what the load generator measured.
type loadResult struct {
	Requests int64         `json:"requests"`
	Errors   int64         `json:"errors"`
	FirstErr string        `json:"first_err,omitempty"`
	Receipts int64         `json:"receipts"`
	HTTP2    int64         `json:"http2"`
	Elapsed  time.Duration `json:"elapsed"`
	P50      time.Duration `json:"p50"`
	P99      time.Duration `json:"p99"`
	// For SSE: time to first token and the gap between tokens.
	TTFT50 time.Duration `json:"ttft50"`
	TTFT99 time.Duration `json:"ttft99"`
	Gap50  time.Duration `json:"gap50"`
	Gap99  time.Duration `json:"gap99"`
}

func pct(d []time.Duration, p float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	slices.Sort(d)
	return d[min(len(d)-1, int(float64(len(d))*p))]
}

// runLoad drives spec's load: Conns workers, each on its kept-alive
// connection (or streams of one HTTP/2 connection), sending the same bytes
// to every target: a client-stamped POST of Size bytes.
func runLoad(ctx context.Context, k *keys, spec loadSpec) (*loadResult, error) {
	tr := &http.Transport{MaxIdleConnsPerHost: spec.Conns, MaxConnsPerHost: spec.Conns, DisableCompression: true,
		IdleConnTimeout: time.Minute}
	if spec.TLS {
		cfg, err := sr.ClientTLS(k.clientKey, k.clientCrt, k.jobCert)
		if err != nil {
			return nil, err
		}
		if spec.HTTP2 {
			cfg.NextProtos = []string{"h2", "http/1.1"}
			tr.ForceAttemptHTTP2 = true
		}
		tr.TLSClientConfig = cfg
	}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr}
	body := bytes.Repeat([]byte("x"), spec.Size)
	path := "/v1/completions"
	if spec.SSE {
		path = "/sse"
	}
	var seq atomic.Int64
	var rnd [6]byte
	rand.Read(rnd[:])
	prefix := hex.EncodeToString(rnd[:]) + "-"
	var res loadResult
	var errs, receipts, h2 atomic.Int64
	var firstErr sync.Once
	one := func(measure bool, lat, ttft, gaps *[]time.Duration) {
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, spec.URL+path, bytes.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set(sr.HeaderTimestamp, time.Now().UTC().Format(sr.TimeFormat))
		req.Header.Set(sr.HeaderRequestID, prefix+strconv.FormatInt(seq.Add(1), 10))
		t0 := time.Now()
		resp, err := client.Do(req)
		fail := func(err error) {
			errs.Add(1)
			firstErr.Do(func() { res.FirstErr = err.Error() })
		}
		if err != nil {
			if ctx.Err() == nil {
				fail(err)
			}
			return
		}
		defer resp.Body.Close()
		if spec.SSE {
			br := bufio.NewReader(resp.Body)
			last := time.Time{}
			for {
				line, err := br.ReadSlice('\n')
				if err != nil {
					break
				}
				if !bytes.HasPrefix(line, []byte("data: ")) {
					continue
				}
				now := time.Now()
				if measure {
					if last.IsZero() {
						*ttft = append(*ttft, now.Sub(t0))
					} else {
						*gaps = append(*gaps, now.Sub(last))
					}
				}
				last = now
			}
		} else if _, err := io.Copy(io.Discard, resp.Body); err != nil {
			fail(err)
			return
		}
		if resp.StatusCode != http.StatusOK {
			fail(fmt.Errorf("status %d", resp.StatusCode))
			return
		}
		if measure {
			*lat = append(*lat, time.Since(t0))
			if resp.Trailer.Get(sr.TrailerReceipt) != "" {
				receipts.Add(1)
			}
			if resp.ProtoMajor == 2 {
				h2.Add(1)
			}
		}
	}
	// Warm up: open the connections and let the targets settle.
	wctx, wcancel := context.WithTimeout(ctx, spec.Warmup)
	var wg sync.WaitGroup
	for range spec.Conns {
		wg.Go(func() {
			var scratch []time.Duration
			for wctx.Err() == nil {
				one(false, &scratch, &scratch, &scratch)
			}
		})
	}
	wg.Wait()
	wcancel()
	errs.Store(0)

	var mu sync.Mutex
	var lat, ttft, gaps []time.Duration
	var left atomic.Int64
	left.Store(int64(spec.Requests))
	dctx, dcancel := context.WithTimeout(ctx, spec.Duration)
	defer dcancel()
	start := time.Now()
	for range spec.Conns {
		wg.Go(func() {
			var l, t, g []time.Duration
			for dctx.Err() == nil && (spec.Requests == 0 || left.Add(-1) >= 0) {
				one(true, &l, &t, &g)
			}
			mu.Lock()
			lat, ttft, gaps = append(lat, l...), append(ttft, t...), append(gaps, g...)
			mu.Unlock()
		})
	}
	wg.Wait()
	res.Elapsed = time.Since(start)
	res.Requests, res.Errors, res.Receipts, res.HTTP2 = int64(len(lat)), errs.Load(), receipts.Load(), h2.Load()
	res.P50, res.P99 = pct(lat, 0.5), pct(lat, 0.99)
	res.TTFT50, res.TTFT99 = pct(ttft, 0.5), pct(ttft, 0.99)
	res.Gap50, res.Gap99 = pct(gaps, 0.5), pct(gaps, 0.99)
	return &res, nil
}
