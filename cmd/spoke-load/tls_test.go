package main

import (
	"crypto/tls"
	"crypto/x509"
	"testing"
	"time"

	"github.com/spokeproxy/spoke/pki"
)

// servedChain returns the connection state a client sees from a server
// whose certificate, for names, the issuer signed.
func servedChain(t *testing.T, issuer *pki.Issuer, names ...string) tls.ConnectionState {
	t.Helper()
	pair, err := issuer.ServingKeyPair(names)
	if err != nil {
		t.Fatal(err)
	}
	var state tls.ConnectionState
	for _, der := range pair.Certificate {
		cert, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatal(err)
		}
		state.PeerCertificates = append(state.PeerCertificates, cert)
	}
	return state
}

func newIssuer(t *testing.T) *pki.Issuer {
	t.Helper()
	issuer, err := pki.NewDevelopmentIssuer(time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return issuer
}

// The clients check the server's chain once per distinct chain; the check
// must still refuse what crypto/tls would refuse, first time or cached.
func TestServerChainVerifierRefusesWhatTLSWould(t *testing.T) {
	trusted := newIssuer(t)
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(trusted.CAPEM()) {
		t.Fatal("no CA certificate")
	}
	v := &serverChainVerifier{roots: roots}

	good := servedChain(t, trusted, serverName)
	for range 2 { // the second time from the cache
		if err := v.verify(good); err != nil {
			t.Fatalf("a chain from the trusted CA for %q: %v", serverName, err)
		}
	}
	if err := v.verify(servedChain(t, newIssuer(t), serverName)); err == nil {
		t.Error("a chain from another CA was accepted after a trusted one was cached")
	}
	if err := v.verify(servedChain(t, trusted, "elsewhere")); err == nil {
		t.Error("a certificate for another name was accepted")
	}
	if err := v.verify(tls.ConnectionState{}); err == nil {
		t.Error("no certificate was accepted")
	}
}
