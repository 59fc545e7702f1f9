package e2e

import (
	"context"
	"encoding/base64"
	"fmt"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/spokeproxy/spoke/auth/authtest"
)

// checkWebhookAndAPIService: the apiserver's own calls to in-cluster
// servers go through spoke too. A pod on node serves a validating
// admission webhook (agnhost webhook, /always-deny) and an aggregated API
// (agnhost netexec over TLS, which answers every path) behind Services;
// the apiserver runs with --enable-aggregator-routing, so it dials the
// pod's address (no kube-proxy runs on these nodes to carry a ClusterIP).
// The webhook's own denial must come back, and the APIService's answer.
func checkWebhookAndAPIService(t *testing.T, cp *controlPlane, node string) {
	t.Helper()
	dir := t.TempDir()
	ca := authtest.NewCA(t, "extensions CA")
	cert, key := ca.ServerForNames(t, "spoke-webhook.default.svc", "spoke-api.default.svc")
	kubectl(t, cp, nil, "create", "secret", "tls", "spoke-extensions-serving",
		"--cert", authtest.WriteFile(t, dir, "tls.crt", cert), "--key", authtest.WriteFile(t, dir, "tls.key", key))
	createExtensionsPod(t, cp, node)
	caBundle := base64.StdEncoding.EncodeToString(ca.CertPEM)
	kubectl(t, cp, []byte(fmt.Sprintf(`apiVersion: v1
kind: Service
metadata: {name: spoke-webhook, namespace: default}
spec: {selector: {app: spoke-extensions}, ports: [{port: 443, targetPort: 8443}]}
---
apiVersion: v1
kind: Service
metadata: {name: spoke-api, namespace: default}
spec: {selector: {app: spoke-extensions}, ports: [{port: 443, targetPort: 8444}]}
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingWebhookConfiguration
metadata: {name: spoke-test-deny}
webhooks:
- name: deny.spoke-test.example.com
  objectSelector: {matchLabels: {spoke-test: deny}}
  rules: [{apiGroups: [""], apiVersions: [v1], operations: [CREATE], resources: [configmaps]}]
  clientConfig: {service: {namespace: default, name: spoke-webhook, path: /always-deny, port: 443}, caBundle: %[1]s}
  sideEffects: None
  admissionReviewVersions: [v1]
  failurePolicy: Fail
  timeoutSeconds: 5
---
apiVersion: apiregistration.k8s.io/v1
kind: APIService
metadata: {name: v1.spoke-test.example.com}
spec:
  group: spoke-test.example.com
  version: v1
  service: {namespace: default, name: spoke-api, port: 443}
  caBundle: %[1]s
  groupPriorityMinimum: 1000
  versionPriority: 15
`, caBundle)), "apply", "-f", "-")
	// The discovery of a group that agnhost cannot describe would make
	// every later kubectl warn: the APIService goes when checked.
	defer kubectl(t, cp, nil, "delete", "apiservice/v1.spoke-test.example.com", "validatingwebhookconfiguration/spoke-test-deny")

	start := time.Now()
	var last string
	waitFor(t, 60*time.Second, "the webhook's denial (last answer: "+last+")", func() bool {
		out, err := kubectlRun(t, cp, []byte("{apiVersion: v1, kind: ConfigMap, metadata: {name: denied, namespace: default, labels: {spoke-test: deny}}}"),
			"create", "-f", "-", "--dry-run=server", "-o", "name")
		last = fmt.Sprint(out, err)
		return err != nil && strings.Contains(last, "this webhook denies all requests")
	})
	t.Logf("validating webhook in a pod on %s: its denial came back through spoke %v after it was registered: %s", node, time.Since(start).Round(time.Millisecond), lastLine(last))
	if out, err := kubectlRun(t, cp, nil, "create", "configmap", "allowed", "--from-literal=a=b"); err != nil {
		t.Errorf("a configmap the webhook does not select was refused: %q %v", out, err)
	}

	start = time.Now()
	waitFor(t, 60*time.Second, "the aggregated API's answer", func() bool {
		last, _ = kubectlRun(t, cp, nil, "get", "--raw", "/apis/spoke-test.example.com/v1/anything")
		return strings.HasPrefix(last, "NOW: ")
	})
	t.Logf("aggregated API (APIService) in a pod on %s: answered through spoke %v after it was registered: %q", node, time.Since(start).Round(time.Millisecond), last)
	start = time.Now()
	if got := kubectl(t, cp, nil, "get", "--raw", "/apis/spoke-test.example.com/v1/again"); !strings.HasPrefix(got, "NOW: ") {
		t.Errorf("the aggregated API answered %q", got)
	}
	t.Logf("aggregated API: one more request %v", time.Since(start).Round(time.Millisecond))
}

// createExtensionsPod runs the webhook and the aggregated API's server
// on node, with the serving certificate of both from a Secret.
func createExtensionsPod(t *testing.T, cp *controlPlane, node string) {
	t.Helper()
	tls := []string{"--tls-cert-file=/certs/tls.crt", "--tls-private-key-file=/certs/tls.key"}
	mounts := []corev1.VolumeMount{{Name: "certs", MountPath: "/certs", ReadOnly: true}}
	ready := func(port int) *corev1.Probe {
		return &corev1.Probe{ProbeHandler: corev1.ProbeHandler{TCPSocket: &corev1.TCPSocketAction{Port: intstr.FromInt32(int32(port))}}, PeriodSeconds: 1}
	}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "spoke-extensions", Namespace: "default", Labels: map[string]string{"app": "spoke-extensions"}},
		Spec: corev1.PodSpec{NodeName: node, Containers: []corev1.Container{{
			Name: "webhook", Image: "agnhost:local", ImagePullPolicy: corev1.PullNever,
			Args: append([]string{"webhook", "--port=8443"}, tls...), VolumeMounts: mounts, ReadinessProbe: ready(8443),
		}, {
			Name: "api", Image: "agnhost:local", ImagePullPolicy: corev1.PullNever,
			Args: append([]string{"netexec", "--http-port=8444", "--udp-port=-1"}, tls...), VolumeMounts: mounts, ReadinessProbe: ready(8444),
		}}, Volumes: []corev1.Volume{{Name: "certs", VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{SecretName: "spoke-extensions-serving"}}}}},
	}
	if _, err := cp.client().CoreV1().Pods("default").Create(context.Background(), pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 60*time.Second, "the extensions pod Ready", func() bool {
		p, err := cp.client().CoreV1().Pods("default").Get(context.Background(), pod.Name, metav1.GetOptions{})
		if err != nil {
			return false
		}
		for _, c := range p.Status.Conditions {
			if c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue {
				return true
			}
		}
		return false
	})
}
