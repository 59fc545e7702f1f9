package e2e

import (
	"context"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	logtest "github.com/sirupsen/logrus/hooks/test"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	networkingv1 "k8s.io/api/networking/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	corev1ac "k8s.io/client-go/applyconfigurations/core/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"

	"github.com/spokeproxy/spoke/auth"
	"github.com/spokeproxy/spoke/kubestatus"
	"github.com/spokeproxy/spoke/pki"
	"github.com/spokeproxy/spoke/status"
	"github.com/spokeproxy/spoke/translator"
)

const serverAccount = "system:serviceaccount:spoke-system:spoke-server"

// TestManifestRBACIsExactlyEnough applies manifests/base/rbac.yaml to a real
// kube-apiserver (RBAC authorization) and acts as the spoke-server
// ServiceAccount: the Kubernetes source syncs and follows a new node, the
// tunnel CA Secret loads, ServiceCIDRs are followed, the status publisher
// creates and updates its ConfigMap and puts Events (new and repeated) on a
// Node; everything else tried here is Forbidden (other Secrets, listing
// Secrets, writes, EndpointSlices outside default, other ConfigMaps, reading
// the status back, Events elsewhere, get on nodes).
func TestManifestRBACIsExactlyEnough(t *testing.T) {
	cp := startControlPlane(t)
	admin := cp.client()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	applyManifest(t, admin, "../manifests/base/rbac.yaml")
	caCert, caKey, err := pki.GenerateCA("e2e tunnel CA")
	if err != nil {
		t.Fatal(err)
	}
	for name, data := range map[string]map[string][]byte{
		"spoke-tunnel-ca": {corev1.TLSCertKey: caCert, corev1.TLSPrivateKeyKey: caKey},
		"other":           {corev1.TLSCertKey: caCert, corev1.TLSPrivateKeyKey: caKey},
	} {
		secret := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "spoke-system"}, Type: corev1.SecretTypeTLS, Data: data}
		if _, err := admin.CoreV1().Secrets("spoke-system").Create(ctx, secret, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	sa := cp.clientAs(serverAccount)

	if _, err := pki.LoadIssuerSecret(ctx, sa.CoreV1(), "spoke-system", "spoke-tunnel-ca", time.Hour); err != nil {
		t.Fatalf("the server account cannot load the tunnel CA: %v", err)
	}
	srcLog, hook := logtest.NewNullLogger()
	srv := startKubeServer(ctx, t, sa, srcLog)
	waitFor(t, 30*time.Second, "the source to sync as the server account", srv.Publisher().Synced)
	// Changes after the first list prove the watches are allowed too.
	createNode(t, admin, "node-rbac", "10.0.0.9", "10.244.9.0/24")
	waitFor(t, 10*time.Second, "the new node to reach the model", func() bool { return srv.Publisher().KnowsNode("node-rbac") })
	createPod(t, admin, "web-rbac", "node-rbac", "10.244.9.7")
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "hook", Namespace: "default"},
		Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Port: 8443}}}}
	if _, err := admin.CoreV1().Services("default").Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: "kubernetes-extra", Namespace: "default", Labels: map[string]string{discoveryv1.LabelServiceName: "kubernetes"}},
		AddressType: discoveryv1.AddressTypeIPv4, Endpoints: []discoveryv1.Endpoint{{Addresses: []string{"10.1.2.3"}}},
	}
	if _, err := admin.DiscoveryV1().EndpointSlices("default").Create(ctx, slice, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	extra := &networkingv1.ServiceCIDR{ObjectMeta: metav1.ObjectMeta{Name: "extra"}, Spec: networkingv1.ServiceCIDRSpec{CIDRs: []string{"10.97.0.0/16"}}}
	if _, err := admin.NetworkingV1().ServiceCIDRs().Create(ctx, extra, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// The apiserver creates ServiceCIDR "kubernetes" from its
	// --service-cluster-ip-range (10.96.0.0/16): node proxies hold that range,
	// and the new one, instead of the Service's ClusterIP:port.
	waitFor(t, 10*time.Second, "the pod, both Service ranges and the new apiserver endpoint to reach node-rbac's config", func() bool {
		res, _, ok := srv.Publisher().Served(auth.Proxy{Role: translator.RoleNode, Node: "node-rbac"})
		if !ok || len(res.Routes) == 0 || len(res.Endpoints) == 0 {
			return false
		}
		routes, eps := res.Routes[0].String(), res.Endpoints[0].String()
		return strings.Contains(routes, "10.244.9.7:*") && strings.Contains(routes, `"10.96.*"`) && strings.Contains(routes, `"10.97.*"`) &&
			!strings.Contains(routes, ":8443") && strings.Contains(eps, "10.1.2.3")
	})
	waitFor(t, 10*time.Second, "the Service to reach the apiserver proxy's routes", func() bool {
		res, _, ok := srv.Publisher().Served(auth.Proxy{Role: translator.RoleAPIServer})
		return ok && len(res.Routes) > 0 && strings.Contains(res.Routes[0].String(), ":8443")
	})

	for _, e := range hook.AllEntries() {
		if e.Level <= logrus.WarnLevel {
			t.Errorf("the source logged %q (%v): a list or watch the manifest does not allow?", e.Message, e.Data)
		}
	}

	checkStatusPublisherRBAC(t, ctx, admin, sa)

	forbidden := map[string]func() error{
		"get another Secret": func() error {
			_, err := sa.CoreV1().Secrets("spoke-system").Get(ctx, "other", metav1.GetOptions{})
			return err
		},
		"list Secrets": func() error {
			_, err := sa.CoreV1().Secrets("spoke-system").List(ctx, metav1.ListOptions{})
			return err
		},
		"update the tunnel CA": func() error {
			s := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "spoke-tunnel-ca", Namespace: "spoke-system"}, Type: corev1.SecretTypeTLS}
			_, err := sa.CoreV1().Secrets("spoke-system").Update(ctx, s, metav1.UpdateOptions{})
			return err
		},
		"create a pod": func() error {
			p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "x", Namespace: "default"}, Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "x", Image: "x"}}}}
			_, err := sa.CoreV1().Pods("default").Create(ctx, p, metav1.CreateOptions{})
			return err
		},
		"delete a node": func() error {
			return sa.CoreV1().Nodes().Delete(ctx, "node-rbac", metav1.DeleteOptions{})
		},
		"get a node": func() error {
			_, err := sa.CoreV1().Nodes().Get(ctx, "node-rbac", metav1.GetOptions{})
			return err
		},
		"list EndpointSlices in kube-system": func() error {
			_, err := sa.DiscoveryV1().EndpointSlices("kube-system").List(ctx, metav1.ListOptions{})
			return err
		},
		"create a ServiceCIDR": func() error {
			sc := &networkingv1.ServiceCIDR{ObjectMeta: metav1.ObjectMeta{Name: "sneaky"}, Spec: networkingv1.ServiceCIDRSpec{CIDRs: []string{"10.98.0.0/16"}}}
			_, err := sa.NetworkingV1().ServiceCIDRs().Create(ctx, sc, metav1.CreateOptions{})
			return err
		},
		"list ConfigMaps": func() error {
			_, err := sa.CoreV1().ConfigMaps("").List(ctx, metav1.ListOptions{})
			return err
		},
		"get the status ConfigMap": func() error {
			_, err := sa.CoreV1().ConfigMaps(kubestatus.DefaultNamespace).Get(ctx, kubestatus.DefaultConfigMap, metav1.GetOptions{})
			return err
		},
		"apply another ConfigMap": func() error {
			cm := corev1ac.ConfigMap("spoke-settings", kubestatus.DefaultNamespace).WithData(map[string]string{"x": "y"})
			_, err := sa.CoreV1().ConfigMaps(kubestatus.DefaultNamespace).Apply(ctx, cm, metav1.ApplyOptions{FieldManager: "test", Force: true})
			return err
		},
		"delete the status ConfigMap": func() error {
			return sa.CoreV1().ConfigMaps(kubestatus.DefaultNamespace).Delete(ctx, kubestatus.DefaultConfigMap, metav1.DeleteOptions{})
		},
		"create an Event in kube-system": func() error {
			e := &corev1.Event{ObjectMeta: metav1.ObjectMeta{Name: "x", Namespace: "kube-system"}, InvolvedObject: corev1.ObjectReference{Kind: "Node", Name: "node-rbac"}}
			_, err := sa.CoreV1().Events("kube-system").Create(ctx, e, metav1.CreateOptions{})
			return err
		},
		"list Events": func() error {
			_, err := sa.CoreV1().Events("default").List(ctx, metav1.ListOptions{})
			return err
		},
	}
	for what, try := range forbidden {
		if err := try(); !apierrors.IsForbidden(err) {
			t.Errorf("%s as %s: want Forbidden, got %v", what, serverAccount, err)
		}
	}
}

// checkStatusPublisherRBAC runs the status publisher as the server account
// against the real apiserver, its node's tunnels coming and going: its
// report lands in the ConfigMap (created by the apply), and TunnelsLost is
// created, then counted again (a patch), with no warning logged.
func checkStatusPublisherRBAC(t *testing.T, ctx context.Context, admin, sa kubernetes.Interface) {
	t.Helper()
	log, hook := logtest.NewNullLogger()
	var reads atomic.Int64
	p := &kubestatus.Publisher{Client: sa, Namespace: kubestatus.DefaultNamespace, ConfigMap: kubestatus.DefaultConfigMap, Replica: "cp-rbac",
		Interval: 100 * time.Millisecond, Log: log,
		Read: func() kubestatus.Input {
			n := reads.Add(1)
			held := 4 * int((n/5)%2) // none, then 4, then none...: lost and restored every half second
			return kubestatus.Input{Tunnels: status.Tunnels{Admin: "127.0.0.1:9901", ReadAt: time.Unix(n, 0), Nodes: map[string]int{"node-rbac": held}}}
		}}
	pctx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { p.Run(pctx); close(done) }()
	defer func() { stop(); <-done }()
	waitFor(t, 20*time.Second, "the server account's report in the status ConfigMap", func() bool {
		reports, err := kubestatus.ReadReports(ctx, admin, kubestatus.DefaultNamespace, kubestatus.DefaultConfigMap)
		return err == nil && len(reports) == 1 && reports[0].Replica == "cp-rbac"
	})
	waitFor(t, 20*time.Second, "TunnelsLost on node-rbac, counted twice", func() bool {
		events, err := kubestatus.ReadNodeEvents(ctx, admin)
		for _, e := range events {
			if err == nil && e.Reason == kubestatus.ReasonTunnelsLost && e.InvolvedObject.Name == "node-rbac" && e.Count >= 2 {
				return true
			}
		}
		return false
	})
	for _, e := range hook.AllEntries() {
		if e.Level <= logrus.WarnLevel {
			t.Errorf("the status publisher logged %q (%v): a write the manifest does not allow?", e.Message, e.Data)
		}
	}
}

// applyManifest creates every object of a multi-document YAML file.
func applyManifest(t *testing.T, c kubernetes.Interface, path string) {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for _, doc := range strings.Split(string(raw), "\n---\n") {
		if strings.TrimSpace(stripComments(doc)) == "" {
			continue
		}
		obj, _, err := scheme.Codecs.UniversalDeserializer().Decode([]byte(doc), nil, nil)
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		if err := create(ctx, c, obj); err != nil {
			t.Fatalf("%s: create %T: %v", path, obj, err)
		}
	}
}

func create(ctx context.Context, c kubernetes.Interface, obj runtime.Object) error {
	var err error
	switch o := obj.(type) {
	case *corev1.Namespace:
		_, err = c.CoreV1().Namespaces().Create(ctx, o, metav1.CreateOptions{})
	case *corev1.ServiceAccount:
		_, err = c.CoreV1().ServiceAccounts(o.Namespace).Create(ctx, o, metav1.CreateOptions{})
	case *rbacv1.ClusterRole:
		_, err = c.RbacV1().ClusterRoles().Create(ctx, o, metav1.CreateOptions{})
	case *rbacv1.ClusterRoleBinding:
		_, err = c.RbacV1().ClusterRoleBindings().Create(ctx, o, metav1.CreateOptions{})
	case *rbacv1.Role:
		_, err = c.RbacV1().Roles(o.Namespace).Create(ctx, o, metav1.CreateOptions{})
	case *rbacv1.RoleBinding:
		_, err = c.RbacV1().RoleBindings(o.Namespace).Create(ctx, o, metav1.CreateOptions{})
	default:
		t := obj.GetObjectKind().GroupVersionKind()
		return apierrors.NewBadRequest("applyManifest does not know " + t.String())
	}
	return err
}

func stripComments(doc string) string {
	var out []string
	for _, l := range strings.Split(doc, "\n") {
		if !strings.HasPrefix(strings.TrimSpace(l), "#") {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// clientAs is the admin client impersonating user (admin is system:masters).
func (cp *controlPlane) clientAs(user string) kubernetes.Interface {
	cfg := &rest.Config{Host: cp.url, BearerToken: cp.token, TLSClientConfig: rest.TLSClientConfig{Insecure: true},
		Impersonate: rest.ImpersonationConfig{UserName: user, Groups: []string{"system:serviceaccounts", "system:serviceaccounts:spoke-system", "system:authenticated"}}}
	c, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		cp.t.Fatal(err)
	}
	return c
}
