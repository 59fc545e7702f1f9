#!/usr/bin/env bash
# Builds kube-apiserver and etcd into $1 (default: ../../.tools/kube-<version>),
# once per version: a cached build is reused.
set -euo pipefail
cd "$(dirname "$0")"
# etcd's version is the one k8s.io/kubernetes requires (go.sum pins both).
K8S_VERSION=v1.37.2
out=${1:-../../.tools/kube-$K8S_VERSION}
if [ -x "$out/kube-apiserver" ] && [ -x "$out/etcd" ]; then
  echo "kube-apiserver $K8S_VERSION and etcd: cached in $out"
  exit 0
fi
mkdir -p "$out"
go build -o "$out/etcd" ./cmd/etcd
go build -o "$out/kube-apiserver" ./cmd/kube-apiserver
echo "built kube-apiserver $K8S_VERSION and etcd into $out"
