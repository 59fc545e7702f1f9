#!/usr/bin/env bash
# Konnectivity on a kubeadm control-plane host, as Kubernetes' documentation
# ("Set up Konnectivity service") does it: the egress selector file, the
# kube-apiserver flag and volumes (the documentation edits its static pod;
# kube-apiserver-patch.json is that edit), konnectivity-server's client
# certificate and kubeconfig (the documentation's commands), its static pod.
# Run as root from this directory.
set -euo pipefail
export KUBECONFIG=/etc/kubernetes/admin.conf
cp egress-selector-configuration.yaml /etc/kubernetes/egress-selector-configuration.yaml

openssl req -subj "/CN=system:konnectivity-server" -new -newkey rsa:2048 -nodes -out konnectivity.csr -keyout konnectivity.key
openssl x509 -req -in konnectivity.csr -CA /etc/kubernetes/pki/ca.crt -CAkey /etc/kubernetes/pki/ca.key -CAcreateserial -out konnectivity.crt -days 375 -sha256
SERVER=$(kubectl config view -o jsonpath='{.clusters..server}')
kubectl --kubeconfig /etc/kubernetes/konnectivity-server.conf config set-credentials system:konnectivity-server --client-certificate konnectivity.crt --client-key konnectivity.key --embed-certs=true
kubectl --kubeconfig /etc/kubernetes/konnectivity-server.conf config set-cluster kubernetes --server "$SERVER" --certificate-authority /etc/kubernetes/pki/ca.crt --embed-certs=true
kubectl --kubeconfig /etc/kubernetes/konnectivity-server.conf config set-context system:konnectivity-server@kubernetes --cluster kubernetes --user system:konnectivity-server
kubectl --kubeconfig /etc/kubernetes/konnectivity-server.conf config use-context system:konnectivity-server@kubernetes
rm -f konnectivity.crt konnectivity.key konnectivity.csr

cp konnectivity-server.yaml /etc/kubernetes/manifests/
old=$(crictl ps --name kube-apiserver -q)
kubectl patch --local -f /etc/kubernetes/manifests/kube-apiserver.yaml --type json --patch-file kube-apiserver-patch.json -o yaml >/etc/kubernetes/kube-apiserver.yaml.new
mv /etc/kubernetes/kube-apiserver.yaml.new /etc/kubernetes/manifests/kube-apiserver.yaml
until new=$(crictl ps --name kube-apiserver -q) && [ -n "$new" ] && [ "$new" != "$old" ] &&
	kubectl get --raw /readyz >/dev/null 2>&1; do sleep 1; done
