package streamreceipt

import (
	"bytes"
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"slices"
	"time"
)

// NewKeyPair makes an ed25519 key and a self-signed certificate for it,
// valid for validity: the job key (executor) or the client key (client).
// The certificate names name and each of hosts as subject alternative names
// (an IP address as an IP SAN, anything else as a DNS name), so a client
// that checks the host it dials against the certificate (Python's ssl does)
// accepts a job certificate that lists the advertised address.
func NewKeyPair(name string, validity time.Duration, hosts ...string) (ed25519.PrivateKey, []byte, error) {
	pub, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	serial, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: name},
		NotBefore:    time.Now().Add(-time.Minute),
		NotAfter:     time.Now().Add(validity),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		DNSNames:     []string{name},
		// Not a CA: the certificate is pinned (or, for upstream clients, its
		// own trust anchor), never an issuer.
		BasicConstraintsValid: true,
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else if h != "" && !slices.Contains(tmpl.DNSNames, h) {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, pub, key)
	if err != nil {
		return nil, nil, err
	}
	return key, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), nil
}

// ParseCert reads one PEM certificate.
func ParseCert(certPEM []byte) (*x509.Certificate, error) {
	b, _ := pem.Decode(certPEM)
	if b == nil || b.Type != "CERTIFICATE" {
		return nil, errors.New("not a PEM certificate")
	}
	return x509.ParseCertificate(b.Bytes)
}

// PublicKey returns the ed25519 key of a PEM certificate.
func PublicKey(certPEM []byte) (ed25519.PublicKey, error) {
	c, err := ParseCert(certPEM)
	if err != nil {
		return nil, err
	}
	pub, ok := c.PublicKey.(ed25519.PublicKey)
	if !ok {
		return nil, fmt.Errorf("certificate key is %T, not ed25519", c.PublicKey)
	}
	return pub, nil
}

// TLSCert pairs a key with its PEM certificate for crypto/tls.
func TLSCert(key crypto.Signer, certPEM []byte) (tls.Certificate, error) {
	c, err := ParseCert(certPEM)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{c.Raw}, PrivateKey: key, Leaf: c}, nil
}

// pinned accepts exactly the certificate want, nothing else.
func pinned(want []byte, role string) func([][]byte, [][]*x509.Certificate) error {
	return func(raw [][]byte, _ [][]*x509.Certificate) error {
		if len(raw) == 0 {
			return fmt.Errorf("no %s certificate", role)
		}
		if !bytes.Equal(raw[0], want) {
			return fmt.Errorf("%s certificate is not the one pinned for this job", role)
		}
		c, err := x509.ParseCertificate(raw[0])
		if err != nil {
			return err
		}
		if time.Now().After(c.NotAfter) {
			return fmt.Errorf("%s certificate expired", role)
		}
		return nil
	}
}

// ServerTLS is the proxy's TLS: TLS 1.3 with the job certificate, and only
// the client certificate sent with the job is accepted. It offers HTTP/2 by
// ALPN to clients that offer it, HTTP/1.1 to the others.
func ServerTLS(key ed25519.PrivateKey, certPEM, clientCertPEM []byte) (*tls.Config, error) {
	cert, err := TLSCert(key, certPEM)
	if err != nil {
		return nil, err
	}
	client, err := ParseCert(clientCertPEM)
	if err != nil {
		return nil, fmt.Errorf("client certificate: %w", err)
	}
	return &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{cert},
		ClientAuth: tls.RequireAnyClientCert, VerifyPeerCertificate: pinned(client.Raw, "client"),
		NextProtos: []string{"h2", "http/1.1"},
		// Full-size records from the start: a reply goes out in fewer writes.
		DynamicRecordSizingDisabled: true}, nil
}

// ClientTLS is the client's TLS to a job: its own certificate, and only the
// job certificate the miner vouched for is accepted.
func ClientTLS(key crypto.Signer, certPEM, jobCertPEM []byte) (*tls.Config, error) {
	cert, err := TLSCert(key, certPEM)
	if err != nil {
		return nil, err
	}
	job, err := ParseCert(jobCertPEM)
	if err != nil {
		return nil, fmt.Errorf("job certificate: %w", err)
	}
	return &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{cert},
		InsecureSkipVerify:    true, // the job certificate is pinned below instead of chained to a CA
		VerifyPeerCertificate: pinned(job.Raw, "job")}, nil
}
