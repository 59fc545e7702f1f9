// Package spoke lets a Kubernetes control plane reach its nodes through
// Envoy reverse tunnels. This root package holds no code; its tests keep the
// repository in shape: which packages may import what (the data flow
// source -> translator -> xds -> status, read off the folders), and that no
// binary, archive or oversized file is tracked. docs/architecture.md explains
// the packages.
package spoke
