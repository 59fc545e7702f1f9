#!/usr/bin/env bash
# Builds kube-apiserver, etcd, kubectl, kubeadm, kubelet, kube-controller-manager,
# kube-scheduler, kube-proxy, agnhost, e2e.test, the ginkgo CLI, crictl and a
# CoreDNS with kubeadm's plugins into $1 (default:
# ../../.tools/kube-<version>), once: a cached build is reused until this
# module's go.mod, go.sum, commands or this script change.
# kubectl, kubeadm, kubelet, the controller manager, the scheduler and kube-proxy are the upstream commands (go.mod's tool lines), stamped
# with the version as a release build is: kubeadm checks it against the
# control plane's.
set -euo pipefail
cd "$(dirname "$0")"
# etcd's version is the one k8s.io/kubernetes requires (go.sum pins both).
K8S_VERSION=v1.37.2
out=${1:-../../.tools/kube-$K8S_VERSION}
mkdir -p "$out"
minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
stamp="-X k8s.io/component-base/version.gitVersion=$K8S_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor"

# -trimpath and the module versions in go.mod are those make test builds
# spoke's tests with (STATIC_GO; spoke's go.mod): the 678 packages both
# import (client-go, grpc, protobuf...) and the standard library compile
# once, not twice (6 CPU-minutes from an empty build cache).
#
# build LDFLAGS -- NAME=PACKAGE...: the missing binaries of one kind in one
# go build, so the packages they share compile once and their links run
# side by side (one go build per binary linked one at a time: cold, most of
# a core idle for minutes). Each lands as $out/NAME, stripped as upstream's
# release builds are (-s -w, hack/lib/golang.sh): no symbol table and no
# DWARF, which the links spend much of their time writing and every image
# holding a binary carries (stack traces need neither).
build() {
  local ldflags="-s -w $1" pkgs=() want
  shift 2
  for want in "$@"; do [ -x "$out/${want%%=*}" ] || pkgs+=("${want#*=}"); done
  [ ${#pkgs[@]} = 0 ] || timed go build -trimpath -ldflags "$ldflags" -o "$out/" "${pkgs[@]}"
}
# timed COMMAND...: runs it and says how long it took (the cold build's
# parts, for docs/testing.md).
timed() {
  local start=$SECONDS
  "$@" && echo "took $((SECONDS - start)) s: $*"
}
# Every binary static (CGO_ENABLED=0), as upstream releases all of these
# but kubelet and e2e.test: one build configuration, so the packages they
# share compile once (a cgo group beside a static one compiled client-go
# and everything under it twice: cold, 950 s and 30.1 CPU-minutes against
# 745 s and 23.7).
# kubectl must be static anyway (the upstream spec "should handle
# in-cluster config" copies it into a pod without libc), and agnhost, the
# test workload and with "pause" the pod sandbox, runs alone in its image.
export CGO_ENABLED=0
# go.sum must hold every module e2e.test's packages need, which go mod tidy
# drops (this module imports none of k8s.io/kubernetes/test/e2e): checked
# here in seconds rather than after the other builds. To restore them:
#   GOFLAGS=-mod=mod go list -test -deps k8s.io/kubernetes/test/e2e >/dev/null
go list -test -deps k8s.io/kubernetes/test/e2e >/dev/null
# A cache built from other sources (go.sum, this script, ./cmd) is rebuilt.
key=$(cat go.mod go.sum build.sh $(find cmd -type f | sort) | sha256sum | cut -c1-12)
if [ "$(cat "$out/key" 2>/dev/null)" != "$key" ]; then
  find "$out" -maxdepth 1 -type f -delete
  echo "$key" >"$out/key"
fi
# etcd, kube-apiserver, the ginkgo CLI that runs e2e.test's specs in
# parallel processes (the version e2e.test was built with, from the same
# go.sum) and CoreDNS (for the kind node image, ./cmd/coredns says why
# not upstream's main): no version stamp.
build "" -- etcd=./cmd/etcd kube-apiserver=./cmd/kube-apiserver ginkgo=github.com/onsi/ginkgo/v2/ginkgo coredns=./cmd/coredns
# kube-proxy and crictl are for the kind node image (e2e/kind/node-image.sh).
crictl_version=$(go list -m -f '{{.Version}}' sigs.k8s.io/cri-tools)
build "$stamp -X sigs.k8s.io/cri-tools/pkg/version.Version=$crictl_version" -- \
  kubeadm=k8s.io/kubernetes/cmd/kubeadm kubelet=k8s.io/kubernetes/cmd/kubelet \
  kube-controller-manager=k8s.io/kubernetes/cmd/kube-controller-manager kube-scheduler=k8s.io/kubernetes/cmd/kube-scheduler \
  kube-proxy=k8s.io/kubernetes/cmd/kube-proxy kubectl=k8s.io/kubernetes/cmd/kubectl agnhost=k8s.io/kubernetes/test/images/agnhost \
  crictl=sigs.k8s.io/cri-tools/cmd/crictl
# e2e.test: the upstream end-to-end suite, for the conformance tests of the
# control-plane-to-node paths (logs, exec, proxy) run through spoke.
# -vet=off: go test -c would vet the upstream packages first (minutes of
# both cores on a fresh machine, for code this project does not change).
[ -x "$out/e2e.test" ] || timed go test -c -trimpath -vet=off -ldflags "-s -w" -o "$out/e2e.test" k8s.io/kubernetes/test/e2e
echo "kube-apiserver, etcd, kubectl, kubeadm, kubelet, kube-controller-manager, kube-scheduler, kube-proxy, agnhost, e2e.test, ginkgo, crictl and coredns $K8S_VERSION in $out (built once, then cached)"
