package wire_test

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/sightline/sightline/wire"
	"github.com/sightline/sightline/wire/wiretest"
)

func readCert(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "CERTIFICATE" {
		t.Fatalf("%s: no certificate PEM block", path)
	}
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestInitCA(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "tls")
	if err := wire.InitCA(dir, []string{"node1.internal", "192.0.2.7", "NODE1.internal", ""}); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(dir)
	if err != nil || st.Mode().Perm() != 0o700 {
		t.Fatalf("dir mode: %v %v", st.Mode(), err)
	}
	for _, n := range []string{"ca.key", "node.key", "agent.key"} {
		st, err := os.Stat(filepath.Join(dir, n))
		if err != nil || st.Mode().Perm() != 0o600 {
			t.Errorf("%s mode: %v %v", n, st.Mode(), err)
		}
	}
	ca := readCert(t, filepath.Join(dir, "ca.crt"))
	node := readCert(t, filepath.Join(dir, "node.crt"))
	agent := readCert(t, filepath.Join(dir, "agent.crt"))
	if !ca.IsCA || ca.PublicKeyAlgorithm != x509.ECDSA {
		t.Errorf("CA: IsCA=%v alg=%v", ca.IsCA, ca.PublicKeyAlgorithm)
	}
	if years := ca.NotAfter.Sub(ca.NotBefore).Hours() / 24 / 365; years < 9.9 {
		t.Errorf("CA valid for %.1f years", years)
	}
	if node.Subject.CommonName != "sightline-node" || agent.Subject.CommonName != "sightline-agent" {
		t.Errorf("CNs: %q %q", node.Subject.CommonName, agent.Subject.CommonName)
	}
	if !slices.Equal(node.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}) {
		t.Errorf("node EKU %v", node.ExtKeyUsage)
	}
	if !slices.Equal(agent.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}) {
		t.Errorf("agent EKU %v", agent.ExtKeyUsage)
	}
	if !slices.Equal(node.DNSNames, []string{"localhost", "node1.internal"}) {
		t.Errorf("node DNS SANs %v", node.DNSNames)
	}
	var ips []string
	for _, ip := range node.IPAddresses {
		ips = append(ips, ip.String())
	}
	if !slices.Equal(ips, []string{"127.0.0.1", "::1", "192.0.2.7"}) {
		t.Errorf("node IP SANs %v", ips)
	}

	pool := x509.NewCertPool()
	pool.AddCert(ca)
	for _, name := range []string{"localhost", "node1.internal", "127.0.0.1", "::1", "192.0.2.7"} {
		if _, err := node.Verify(x509.VerifyOptions{Roots: pool, DNSName: name, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
			t.Errorf("node for %s: %v", name, err)
		}
	}
	if _, err := node.Verify(x509.VerifyOptions{Roots: pool, DNSName: "other.internal"}); err == nil {
		t.Error("node verified for a name it does not carry")
	}
	if _, err := agent.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("agent: %v", err)
	}
	if _, err := agent.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err == nil {
		t.Error("agent certificate usable as a server")
	}
}

func TestInitCARefusesExisting(t *testing.T) {
	dir := wiretest.CertDir(t)
	before, _ := os.ReadFile(filepath.Join(dir, "ca.key"))
	err := wire.InitCA(dir, nil)
	if !errors.Is(err, wire.ErrCAExists) {
		t.Fatalf("got %v, want ErrCAExists", err)
	}
	if !strings.Contains(err.Error(), "ca.crt") || !strings.Contains(err.Error(), "delete") || !strings.Contains(err.Error(), "another directory") {
		t.Errorf("message does not say what exists and how to fix it: %v", err)
	}
	after, _ := os.ReadFile(filepath.Join(dir, "ca.key"))
	if !bytes.Equal(before, after) {
		t.Error("ca.key was overwritten")
	}

	// A stray key file alone is not overwritten either.
	dir2 := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir2, "agent.key"), []byte("keep"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := wire.InitCA(dir2, nil); !errors.Is(err, wire.ErrCAExists) {
		t.Fatalf("stray agent.key: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir2, "ca.crt")); err == nil {
		t.Error("ca.crt written despite refusal")
	}
}

func TestInitCABadHost(t *testing.T) {
	for _, h := range []string{"node1:8443", "https://node1", "two words"} {
		if err := wire.InitCA(filepath.Join(t.TempDir(), "x"), []string{h}); err == nil || !strings.Contains(err.Error(), h) {
			t.Errorf("%q: %v", h, err)
		}
	}
}

func TestServerAndClientTLS(t *testing.T) {
	dir := wiretest.CertDir(t)
	s, err := wire.ServerTLS(dir)
	if err != nil {
		t.Fatal(err)
	}
	if s.MinVersion != tls.VersionTLS13 || s.ClientAuth != tls.RequireAndVerifyClientCert || s.ClientCAs == nil ||
		!slices.Equal(s.NextProtos, []string{wire.ALPN}) || len(s.Certificates) != 1 {
		t.Errorf("server config: %+v", s)
	}
	for _, name := range []string{"agent", "node"} {
		c, err := wire.ClientTLS(dir, name)
		if err != nil {
			t.Fatal(err)
		}
		if c.MinVersion != tls.VersionTLS13 || c.RootCAs == nil || !slices.Equal(c.NextProtos, []string{"sightline/1"}) || len(c.Certificates) != 1 || c.ServerName != "" {
			t.Errorf("client config %s: %+v", name, c)
		}
	}
	if _, err := wire.ClientTLS(dir, "ca"); !errors.Is(err, wire.ErrBadCertName) {
		t.Errorf("cert name ca: %v", err)
	}
}

func TestTLSFileErrors(t *testing.T) {
	tests := []struct {
		name    string
		corrupt func(dir string) error
		want    string
	}{
		{"no ca.crt", func(d string) error { return os.Remove(filepath.Join(d, "ca.crt")) }, "ca.crt"},
		{"garbage ca.crt", func(d string) error { return os.WriteFile(filepath.Join(d, "ca.crt"), []byte("nope"), 0o644) }, "ca.crt"},
		{"no node.key", func(d string) error { return os.Remove(filepath.Join(d, "node.key")) }, "node.key"},
		{"no node.crt", func(d string) error { return os.Remove(filepath.Join(d, "node.crt")) }, "node.crt"},
		{"mismatched key", func(d string) error {
			b, err := os.ReadFile(filepath.Join(d, "agent.key"))
			if err != nil {
				return err
			}
			return os.WriteFile(filepath.Join(d, "node.key"), b, 0o600)
		}, "node.key"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := wiretest.CertDir(t)
			if err := tc.corrupt(dir); err != nil {
				t.Fatal(err)
			}
			_, err := wire.ServerTLS(dir)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("ServerTLS: %v, want mention of %s", err, tc.want)
			}
			_, err = wire.ClientTLS(dir, "node")
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("ClientTLS: %v, want mention of %s", err, tc.want)
			}
		})
	}
	if _, err := wire.ClientTLS(filepath.Join(t.TempDir(), "missing"), "agent"); err == nil || !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing dir: %v", err)
	}
}
