package translator

import (
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"

	"github.com/spokeproxy/spoke/translator/model"
)

// Secrets builds the SDS secrets a role's config references: the tunnel CA
// bundle and the role's own certificate (certificate secret name by role).
func Secrets(s model.Settings, role Role, certPEM, keyPEM, caPEM []byte) []*tlsv3.Secret {
	certName := s.Secrets.NodeCertificate
	if role == RoleAPIServer {
		certName = s.Secrets.APIServerCertificate
	}
	inline := func(b []byte) *corev3.DataSource {
		return &corev3.DataSource{Specifier: &corev3.DataSource_InlineBytes{InlineBytes: b}}
	}
	out := []*tlsv3.Secret{
		{Name: certName, Type: &tlsv3.Secret_TlsCertificate{TlsCertificate: &tlsv3.TlsCertificate{
			CertificateChain: inline(certPEM), PrivateKey: inline(keyPEM),
		}}},
		{Name: s.Secrets.TunnelCA, Type: &tlsv3.Secret_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
			TrustedCa: inline(caPEM),
		}}},
	}
	if out[0].Name > out[1].Name {
		out[0], out[1] = out[1], out[0]
	}
	return out
}

// ServiceCluster is the Envoy node.cluster that names a role in bootstraps;
// the server maps a connecting Envoy to its role by it.
func ServiceCluster(role Role) string { return "spoke-" + string(role) }
