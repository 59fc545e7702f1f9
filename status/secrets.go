package status

import (
	"crypto/x509"
	"encoding/pem"
	"time"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
)

// SecretInfo describes one served SDS secret by its certificate: never its
// key material (spoke config dump --type secrets).
type SecretInfo struct {
	Name string `json:"name"`
	// Kind is "certificate" (a certificate and its private key, which is
	// never shown) or "trusted-ca" (the CA the Envoy checks peers against).
	Kind      string    `json:"kind"`
	Subject   string    `json:"subject,omitempty"`
	DNSNames  []string  `json:"dnsNames,omitempty"`
	Issuer    string    `json:"issuer,omitempty"`
	Serial    string    `json:"serial,omitempty"`
	NotBefore time.Time `json:"notBefore,omitzero"`
	NotAfter  time.Time `json:"notAfter,omitzero"`
	Error     string    `json:"error,omitempty"` // why the certificate could not be read
}

// DescribeSecret reads the first certificate of s.
func DescribeSecret(s *tlsv3.Secret) SecretInfo {
	info := SecretInfo{Name: s.GetName()}
	var certPEM []byte
	switch {
	case s.GetTlsCertificate() != nil:
		info.Kind, certPEM = "certificate", s.GetTlsCertificate().GetCertificateChain().GetInlineBytes()
	case s.GetValidationContext() != nil:
		info.Kind, certPEM = "trusted-ca", s.GetValidationContext().GetTrustedCa().GetInlineBytes()
	default:
		info.Error = "neither a certificate nor a trusted CA"
		return info
	}
	block, _ := pem.Decode(certPEM)
	if block == nil {
		info.Error = "no PEM certificate inline"
		return info
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		info.Error = err.Error()
		return info
	}
	info.Subject, info.DNSNames, info.Issuer = cert.Subject.String(), cert.DNSNames, cert.Issuer.String()
	info.Serial = cert.SerialNumber.Text(16)
	info.NotBefore, info.NotAfter = cert.NotBefore.UTC(), cert.NotAfter.UTC()
	return info
}
