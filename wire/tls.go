package wire

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"time"
)

// ALPN is the application protocol both ends require; a peer speaking
// anything else fails the handshake.
const ALPN = "sightline/1"

// TLS errors.
var (
	// ErrNoClientCert means a peer finished the TLS handshake without a
	// client certificate although the server requires one.
	ErrNoClientCert = errors.New("wire: client presented no certificate")
	// ErrBadCertName means ClientTLS was asked for a certificate InitCA
	// does not issue.
	ErrBadCertName = errors.New("wire: unknown certificate name")
)

// ServerTLS loads ca.crt and node.crt/node.key from dir and returns a TLS
// 1.3 server configuration that requires and verifies a client certificate
// issued by that CA and offers only ALPN.
func ServerTLS(dir string) (*tls.Config, error) {
	pool, err := loadCA(dir)
	if err != nil {
		return nil, err
	}
	cert, err := loadPair(dir, CertNode)
	if err != nil {
		return nil, err
	}
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
		ClientCAs:    pool,
		ClientAuth:   tls.RequireAndVerifyClientCert,
		NextProtos:   []string{ALPN},
	}, nil
}

// ClientTLS loads ca.crt and certName.crt/.key from dir (certName is
// CertAgent or CertNode) and returns a TLS 1.3 client configuration that
// trusts only that CA and offers only ALPN.
//
// ServerName is left empty: the Client fills it per target address. A host
// name is verified as is; an IP address is verified against the
// certificate's IP SANs, except that a loopback IP is verified as
// "localhost" (which every node certificate carries). A caller that sets
// ServerName itself gets exactly that name for every address.
func ClientTLS(dir string, certName string) (*tls.Config, error) {
	if certName != CertAgent && certName != CertNode {
		return nil, fmt.Errorf("%w %q (want %q or %q)", ErrBadCertName, certName, CertAgent, CertNode)
	}
	pool, err := loadCA(dir)
	if err != nil {
		return nil, err
	}
	cert, err := loadPair(dir, certName)
	if err != nil {
		return nil, err
	}
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
		RootCAs:      pool,
		NextProtos:   []string{ALPN},
	}, nil
}

// serverNameFor returns the name to verify the server at addr against,
// following the rule documented on ClientTLS.
func serverNameFor(conf *tls.Config, addr string) string {
	if conf.ServerName != "" {
		return conf.ServerName
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		host = addr
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsLoopback() {
		return "localhost"
	}
	return host
}

func loadCA(dir string) (*x509.CertPool, error) {
	p := filepath.Join(dir, CACertFile)
	b, err := os.ReadFile(p)
	if err != nil {
		return nil, fmt.Errorf("wire: reading CA certificate %s: %w", p, err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("wire: CA certificate %s: no PEM certificate found", p)
	}
	return pool, nil
}

func loadPair(dir, name string) (tls.Certificate, error) {
	cp := filepath.Join(dir, name+".crt")
	kp := filepath.Join(dir, name+".key")
	for _, p := range []string{cp, kp} {
		if _, err := os.Stat(p); err != nil {
			return tls.Certificate{}, fmt.Errorf("wire: %s: %w", p, err)
		}
	}
	cert, err := tls.LoadX509KeyPair(cp, kp)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("wire: loading %s and %s: %w", cp, kp, err)
	}
	return cert, nil
}

// verifyingClientCerts returns a copy of conf that verifies client
// certificates in VerifyConnection instead of inside crypto/tls, calling
// refused for every handshake it refuses. crypto/tls rejects a missing or
// foreign certificate before any callback runs, so the server could not
// otherwise count refused handshakes. The checks are the ones crypto/tls
// makes for RequireAndVerifyClientCert (chain to ClientCAs, client-auth
// EKU); crypto/tls still verifies the certificate signature itself.
// Configs with another ClientAuth only get the counting wrapper.
func verifyingClientCerts(conf *tls.Config, refused func(error)) *tls.Config {
	c := conf.Clone()
	next := c.VerifyConnection
	own := c.ClientAuth == tls.RequireAndVerifyClientCert && c.ClientCAs != nil
	if own {
		c.ClientAuth = tls.RequestClientCert
	}
	pool := c.ClientCAs
	clock := c.Time
	c.VerifyConnection = func(cs tls.ConnectionState) error {
		if own {
			if err := verifyClientChain(cs, pool, clock); err != nil {
				refused(err)
				return err
			}
		}
		if next != nil {
			if err := next(cs); err != nil {
				refused(err)
				return err
			}
		}
		return nil
	}
	return c
}

func verifyClientChain(cs tls.ConnectionState, pool *x509.CertPool, clock func() time.Time) error {
	if len(cs.PeerCertificates) == 0 {
		return ErrNoClientCert
	}
	now := time.Now()
	if clock != nil {
		now = clock()
	}
	opts := x509.VerifyOptions{
		Roots:         pool,
		CurrentTime:   now,
		Intermediates: x509.NewCertPool(),
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	for _, c := range cs.PeerCertificates[1:] {
		opts.Intermediates.AddCert(c)
	}
	if _, err := cs.PeerCertificates[0].Verify(opts); err != nil {
		return fmt.Errorf("wire: client certificate %q: %w", cs.PeerCertificates[0].Subject.CommonName, err)
	}
	return nil
}
