package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"crypto/tls"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"io"
	"net"
	"net/url"
	"slices"
	"strconv"
	"sync"
)

// serveHandLoop serves a hand-written HTTP/1.1 loop over the job's TLS: the
// floor of any proxy written in Go that does not use net/http's server. It
// knows only what the load generator sends (a POST with a length, a reply
// with a length); sign adds what a receipt costs (both bodies hashed, a
// receipt-sized text signed, base64 trailers). Bench only: not hardened.
func serveHandLoop(ctx context.Context, k *keys, addr string, upstream *url.URL, sign bool, ready func(string)) error {
	ln, tlsCfg, err := listenJob(k, addr)
	if err != nil {
		return err
	}
	tlsCfg.NextProtos = []string{"http/1.1"}
	ready(ln.Addr().String())
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		wg.Go(func() {
			defer c.Close()
			handLoopConn(tls.Server(c, tlsCfg), upstream.Host, k.jobKey, sign)
		})
	}
}

func handLoopConn(c *tls.Conn, up string, key ed25519.PrivateKey, sign bool) {
	uc, err := net.Dial("tcp", up)
	if err != nil {
		return
	}
	defer uc.Close()
	br, bw := bufio.NewReaderSize(c, 16<<10), bufio.NewWriterSize(c, 32<<10)
	ur, uw := bufio.NewReaderSize(uc, 16<<10), bufio.NewWriterSize(uc, 32<<10)
	body := make([]byte, 0, 64<<10)
	reply := make([]byte, 0, 64<<10)
	text := make([]byte, 0, 512)
	for {
		method, target, n, ctype, err := readHead(br)
		if err != nil {
			return
		}
		if n < 0 || n > 1<<20 {
			return
		}
		body = slices.Grow(body[:0], n)[:n]
		if _, err := io.ReadFull(br, body); err != nil {
			return
		}
		uw.WriteString(method)
		uw.WriteByte(' ')
		uw.WriteString(target)
		uw.WriteString(" HTTP/1.1\r\nHost: ")
		uw.WriteString(up)
		uw.WriteString("\r\nContent-Type: ")
		uw.WriteString(ctype)
		uw.WriteString("\r\nContent-Length: ")
		uw.WriteString(strconv.Itoa(n))
		uw.WriteString("\r\n\r\n")
		uw.Write(body)
		if uw.Flush() != nil {
			return
		}
		status, rn, rctype, err := readRespHead(ur)
		if err != nil {
			return
		}
		if rn < 0 || rn > 1<<20 {
			return
		}
		reply = slices.Grow(reply[:0], rn)[:rn]
		if _, err := io.ReadFull(ur, reply); err != nil {
			return
		}
		bw.WriteString("HTTP/1.1 ")
		bw.WriteString(strconv.Itoa(status))
		bw.WriteString(" OK\r\nContent-Type: ")
		bw.WriteString(rctype)
		bw.WriteString("\r\nTransfer-Encoding: chunked\r\nTrailer: X-Horde-Receipt, X-Horde-Receipt-Signature\r\n\r\n")
		bw.WriteString(strconv.FormatInt(int64(rn), 16))
		bw.WriteString("\r\n")
		bw.Write(reply)
		bw.WriteString("\r\n0\r\n")
		if sign {
			in, out := sha256.Sum256(body), sha256.Sum256(reply)
			text = append(text[:0], `{"v":2,"job":"bench-job","request_id":"0123456789abcdef","from":"2026-11-30T12:00:00.000001Z","to":"2026-11-30T12:00:00.000002Z","method":"`...)
			text = append(text, method...)
			text = append(text, `","target":"`...)
			text = append(text, target...)
			text = append(text, `","in":"`...)
			text = hex.AppendEncode(text, in[:])
			text = append(text, `","out":"`...)
			text = hex.AppendEncode(text, out[:])
			text = append(text, `"}`...)
			sig := ed25519.Sign(key, text)
			bw.WriteString("X-Horde-Receipt: ")
			bw.WriteString(base64.StdEncoding.EncodeToString(text))
			bw.WriteString("\r\nX-Horde-Receipt-Signature: ")
			bw.WriteString(base64.StdEncoding.EncodeToString(sig))
			bw.WriteString("\r\n")
		}
		bw.WriteString("\r\n")
		if bw.Flush() != nil {
			return
		}
	}
}

var errHead = errors.New("bad head")

// readHead reads a request head: method, target, Content-Length, Content-Type.
func readHead(br *bufio.Reader) (method, target string, n int, ctype string, err error) {
	line, err := br.ReadSlice('\n')
	if err != nil {
		return "", "", 0, "", err
	}
	f := bytes.Fields(line)
	if len(f) != 3 {
		return "", "", 0, "", errHead
	}
	method, target = string(f[0]), string(f[1])
	n, ctype, err = readFields(br)
	return method, target, n, ctype, err
}

func readRespHead(br *bufio.Reader) (status, n int, ctype string, err error) {
	line, err := br.ReadSlice('\n')
	if err != nil {
		return 0, 0, "", err
	}
	f := bytes.Fields(line)
	if len(f) < 2 {
		return 0, 0, "", errHead
	}
	status, err = strconv.Atoi(string(f[1]))
	if err != nil {
		return 0, 0, "", err
	}
	n, ctype, err = readFields(br)
	return status, n, ctype, err
}

func readFields(br *bufio.Reader) (n int, ctype string, err error) {
	for {
		line, err := br.ReadSlice('\n')
		if err != nil {
			return 0, "", err
		}
		line = bytes.TrimRight(line, "\r\n")
		if len(line) == 0 {
			return n, ctype, nil
		}
		k, v, ok := bytes.Cut(line, []byte(":"))
		if !ok {
			return 0, "", errHead
		}
		v = bytes.TrimSpace(v)
		switch {
		case bytes.EqualFold(k, []byte("Content-Length")):
			if n, err = strconv.Atoi(string(v)); err != nil {
				return 0, "", err
			}
		case bytes.EqualFold(k, []byte("Content-Type")):
			ctype = string(v)
		}
	}
}
