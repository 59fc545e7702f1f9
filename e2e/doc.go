// Package e2e holds the end-to-end tests: real Envoy 1.40 proxies on
// loopback addresses (CONNECT through mTLS reverse tunnels, config served by
// spoke serve over authenticated xDS) and a real kube-apiserver and etcd
// built from Go modules (e2e/kube, cached in .tools/). The package has no
// code of its own; docs/testing.md says what each test proves.
package e2e
