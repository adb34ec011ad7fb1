package wire

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha1"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// ErrCAExists means InitCA found an existing CA (or one of the files it would
// write) in the target directory and refused to overwrite anything.
var ErrCAExists = errors.New("wire: CA already exists")

// File names inside a TLS directory made by InitCA.
const (
	CACertFile = "ca.crt"
	CAKeyFile  = "ca.key"
)

// Certificate names that InitCA issues and ClientTLS accepts.
const (
	CertNode  = "node"
	CertAgent = "agent"
)

// certValidity is long because this is a self-managed cluster CA: rotating
// it is an operator decision, not something a clock should force.
const certValidity = 10 * 365 * 24 * time.Hour

// InitCA creates dir (mode 0700) holding a new cluster CA (ca.crt, ca.key),
// a node certificate (node.crt, node.key) valid for both server and client
// authentication with the given hosts plus localhost, 127.0.0.1 and ::1 as
// subject alternative names, and an agent client certificate (agent.crt,
// agent.key). Keys are ECDSA P-256 in PKCS#8 PEM files of mode 0600.
//
// If ca.crt (or any other file it would write) already exists, InitCA
// returns an error wrapping ErrCAExists and writes nothing.
func InitCA(dir string, hosts []string) error {
	names := []string{CACertFile, CAKeyFile, CertNode + ".crt", CertNode + ".key", CertAgent + ".crt", CertAgent + ".key"}
	for _, n := range names {
		p := filepath.Join(dir, n)
		if _, err := os.Lstat(p); err == nil {
			return fmt.Errorf("%w: %s exists; use another directory or delete the existing certificates and keys in %s first", ErrCAExists, p, dir)
		} else if !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("wire: checking %s: %w", p, err)
		}
	}
	dns, ips, err := sanList(hosts)
	if err != nil {
		return err
	}

	now := time.Now()
	notBefore := now.Add(-time.Hour) // tolerate small clock skew between machines
	notAfter := now.Add(certValidity)

	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("wire: generating CA key: %w", err)
	}
	caTmpl := &x509.Certificate{
		Subject:               pkix.Name{CommonName: "sightline-ca", Organization: []string{"Sightline"}},
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	caDER, caCert, err := issue(caTmpl, nil, caKey, nil)
	if err != nil {
		return fmt.Errorf("wire: creating CA certificate: %w", err)
	}

	files := map[string][]byte{
		CACertFile: pemCert(caDER),
	}
	if files[CAKeyFile], err = pemKey(caKey); err != nil {
		return err
	}

	leaves := []struct {
		name string
		cn   string
		eku  []x509.ExtKeyUsage
		dns  []string
		ips  []net.IP
	}{
		{CertNode, "sightline-node", []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}, dns, ips},
		{CertAgent, "sightline-agent", []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, nil, nil},
	}
	for _, l := range leaves {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return fmt.Errorf("wire: generating %s key: %w", l.name, err)
		}
		tmpl := &x509.Certificate{
			Subject:               pkix.Name{CommonName: l.cn, Organization: []string{"Sightline"}},
			NotBefore:             notBefore,
			NotAfter:              notAfter,
			KeyUsage:              x509.KeyUsageDigitalSignature,
			ExtKeyUsage:           l.eku,
			BasicConstraintsValid: true,
			DNSNames:              l.dns,
			IPAddresses:           l.ips,
		}
		der, _, err := issue(tmpl, caCert, key, caKey)
		if err != nil {
			return fmt.Errorf("wire: creating %s certificate: %w", l.name, err)
		}
		files[l.name+".crt"] = pemCert(der)
		if files[l.name+".key"], err = pemKey(key); err != nil {
			return err
		}
	}

	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("wire: creating %s: %w", dir, err)
	}
	// ca.crt is written last so that a failure part-way never leaves a
	// directory that looks initialised; files written so far are removed.
	var written []string
	for _, n := range append(names[1:], names[0]) {
		p := filepath.Join(dir, n)
		mode := os.FileMode(0o644)
		if strings.HasSuffix(n, ".key") {
			mode = 0o600
		}
		if err := writeNew(p, files[n], mode); err != nil {
			for _, w := range written {
				_ = os.Remove(w)
			}
			return err
		}
		written = append(written, p)
	}
	return nil
}

// sanList splits hosts into DNS names and IP addresses, adds the loopback
// names every node answers on, and drops duplicates.
func sanList(hosts []string) ([]string, []net.IP, error) {
	var dns []string
	var ips []net.IP
	seen := map[string]bool{}
	for _, h := range append([]string{"localhost", "127.0.0.1", "::1"}, hosts...) {
		h = strings.TrimSpace(h)
		if h == "" {
			continue
		}
		if ip := net.ParseIP(h); ip != nil {
			if !seen[ip.String()] {
				seen[ip.String()] = true
				ips = append(ips, ip)
			}
			continue
		}
		if strings.ContainsAny(h, ":/ \t@") {
			return nil, nil, fmt.Errorf("wire: host %q is not a host name or IP address (give the host without port or scheme)", h)
		}
		h = strings.ToLower(h)
		if !seen[h] {
			seen[h] = true
			dns = append(dns, h)
		}
	}
	return dns, ips, nil
}

// issue signs tmpl with parentKey (self-signed when parent is nil) after
// filling in a random serial number and the subject key id.
func issue(tmpl, parent *x509.Certificate, key, parentKey *ecdsa.PrivateKey) ([]byte, *x509.Certificate, error) {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, nil, err
	}
	tmpl.SerialNumber = serial
	pub, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		return nil, nil, err
	}
	ski := sha1.Sum(pub) // RFC 5280 method 1 style key id; not a security use of SHA-1
	tmpl.SubjectKeyId = ski[:]
	if parent == nil {
		parent, parentKey = tmpl, key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
	if err != nil {
		return nil, nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, err
	}
	return der, cert, nil
}

func pemCert(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

func pemKey(key *ecdsa.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("wire: encoding key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// writeNew creates p exclusively (never overwriting) and syncs it.
func writeNew(p string, data []byte, mode os.FileMode) error {
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		if errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("%w: %s appeared while writing; use another directory", ErrCAExists, p)
		}
		return fmt.Errorf("wire: writing %s: %w", p, err)
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		_ = os.Remove(p)
		return fmt.Errorf("wire: writing %s: %w", p, err)
	}
	return nil
}
