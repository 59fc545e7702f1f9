#!/usr/bin/env bash
# Builds kube-apiserver, etcd, kubectl, kubeadm, kubelet, kube-controller-manager,
# kube-scheduler, agnhost, e2e.test and the ginkgo CLI into $1 (default:
# ../../.tools/kube-<version>), once per version: a cached build is reused.
# kubectl, kubeadm, kubelet, the controller manager and the scheduler are the upstream commands (go.mod's tool lines), stamped
# with the version as a release build is: kubeadm checks it against the
# control plane's.
set -euo pipefail
cd "$(dirname "$0")"
# etcd's version is the one k8s.io/kubernetes requires (go.sum pins both).
K8S_VERSION=v1.37.2
out=${1:-../../.tools/kube-$K8S_VERSION}
mkdir -p "$out"
[ -x "$out/etcd" ] || go build -o "$out/etcd" ./cmd/etcd
[ -x "$out/kube-apiserver" ] || go build -o "$out/kube-apiserver" ./cmd/kube-apiserver
minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
stamp="-X k8s.io/component-base/version.gitVersion=$K8S_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor"
for tool in kubeadm kubelet kube-controller-manager kube-scheduler; do
  [ -x "$out/$tool" ] || go build -ldflags "$stamp" -o "$out/$tool" "k8s.io/kubernetes/cmd/$tool"
done
# kubectl static, as upstream releases it: the upstream e2e spec "should
# handle in-cluster config" copies it into a pod without libc (an older
# cache holds a dynamic one: rebuilt).
if [ ! -x "$out/kubectl" ] || ldd "$out/kubectl" >/dev/null 2>&1; then
  CGO_ENABLED=0 go build -ldflags "$stamp" -o "$out/kubectl.new" k8s.io/kubernetes/cmd/kubectl && mv "$out/kubectl.new" "$out/kubectl"
fi
# agnhost: the test workload, and with "pause" the pod sandbox (static: it
# runs alone in its image).
[ -x "$out/agnhost" ] || CGO_ENABLED=0 go build -o "$out/agnhost" k8s.io/kubernetes/test/images/agnhost
# e2e.test: the upstream end-to-end suite, for the conformance tests of the
# control-plane-to-node paths (logs, exec, proxy) run through spoke.
[ -x "$out/e2e.test" ] || go test -c -o "$out/e2e.test" k8s.io/kubernetes/test/e2e
# ginkgo: the CLI that runs e2e.test's specs in parallel processes (the
# version e2e.test was built with, from the same go.sum).
[ -x "$out/ginkgo" ] || go build -o "$out/ginkgo" github.com/onsi/ginkgo/v2/ginkgo
echo "kube-apiserver, etcd, kubectl, kubeadm, kubelet, kube-controller-manager, kube-scheduler, agnhost, e2e.test and ginkgo $K8S_VERSION in $out (built once, then cached)"
