package xds

import (
	"context"
	"fmt"
	"time"

	"github.com/sirupsen/logrus"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"github.com/spokeproxy/spoke/translator/model"
)

// KubeSource watches Nodes, Pods, Services and the EndpointSlices of
// default/kubernetes with informers. Objects are stripped to the fields the
// model reads before they are cached (memory at 150,000 pods). Informers
// relist and re-watch with backoff on errors and apiserver restarts; the last
// view stays served meanwhile.
type KubeSource struct {
	Client kubernetes.Interface
	Log    logrus.FieldLogger
	// MinInterval spaces full views: events arriving faster are folded into
	// the next view (the server's debounce coalesces further).
	MinInterval time.Duration
}

// Run emits a full view after the first sync and after every change.
func (k *KubeSource) Run(ctx context.Context, emit func(Update)) error {
	all := informers.NewSharedInformerFactory(k.Client, 0)
	apiservers := informers.NewSharedInformerFactoryWithOptions(k.Client, 0,
		informers.WithNamespace(metav1.NamespaceDefault),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.LabelSelector = discoveryv1.LabelServiceName + "=kubernetes"
		}))
	nodes, pods, services := all.Core().V1().Nodes(), all.Core().V1().Pods(), all.Core().V1().Services()
	slices := apiservers.Discovery().V1().EndpointSlices()

	changed := make(chan struct{}, 1)
	notify := func() {
		select {
		case changed <- struct{}{}:
		default:
		}
	}
	handler := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { notify() },
		UpdateFunc: func(any, any) { notify() },
		DeleteFunc: func(any) { notify() },
	}
	for name, inf := range map[string]cache.SharedIndexInformer{
		"nodes": nodes.Informer(), "pods": pods.Informer(), "services": services.Informer(), "endpointslices": slices.Informer(),
	} {
		if err := inf.SetTransform(strip); err != nil {
			return fmt.Errorf("informer %s: %w", name, err)
		}
		resource := name
		if err := inf.SetWatchErrorHandler(func(_ *cache.Reflector, err error) {
			k.Log.WithError(err).WithField("resource", resource).Warn("watch failed; client-go relists with backoff, the last config stays served")
		}); err != nil {
			return fmt.Errorf("informer %s: %w", name, err)
		}
		if _, err := inf.AddEventHandler(handler); err != nil {
			return fmt.Errorf("informer %s: %w", name, err)
		}
	}
	all.Start(ctx.Done())
	apiservers.Start(ctx.Done())
	k.Log.Info("waiting for the first full list of nodes, pods, services and endpointslices")
	for typ, ok := range all.WaitForCacheSync(ctx.Done()) {
		if !ok {
			return fmt.Errorf("informer for %v never synced (is the apiserver reachable, and does RBAC allow list/watch?)", typ)
		}
	}
	for typ, ok := range apiservers.WaitForCacheSync(ctx.Done()) {
		if !ok {
			return fmt.Errorf("informer for %v never synced", typ)
		}
	}
	k.Log.Info("cluster synced")
	for {
		objs, err := listAll(nodes.Lister().List, pods.Lister().List, services.Lister().List, slices.Lister().List)
		if err != nil {
			k.Log.WithError(err).Error("list from informer caches")
		} else {
			emit(Update{Objects: objs})
		}
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		}
		select { // let a burst of events land before listing again
		case <-ctx.Done():
			return nil
		case <-time.After(k.MinInterval):
		}
	}
}

func listAll(
	nodes func(labels.Selector) ([]*corev1.Node, error),
	pods func(labels.Selector) ([]*corev1.Pod, error),
	services func(labels.Selector) ([]*corev1.Service, error),
	slices func(labels.Selector) ([]*discoveryv1.EndpointSlice, error),
) (model.Objects, error) {
	var objs model.Objects
	var err error
	if objs.Nodes, err = nodes(labels.Everything()); err != nil {
		return objs, err
	}
	if objs.Pods, err = pods(labels.Everything()); err != nil {
		return objs, err
	}
	if objs.Services, err = services(labels.Everything()); err != nil {
		return objs, err
	}
	objs.EndpointSlices, err = slices(labels.Everything())
	return objs, err
}

// strip keeps only what model.Build reads. It runs before an object enters
// the informer cache, so the cache holds the small form only.
func strip(obj any) (any, error) {
	switch o := obj.(type) {
	case *corev1.Pod:
		return &corev1.Pod{
			ObjectMeta: stripMeta(o.ObjectMeta),
			Spec:       corev1.PodSpec{NodeName: o.Spec.NodeName, HostNetwork: o.Spec.HostNetwork},
			Status:     corev1.PodStatus{Phase: o.Status.Phase, PodIP: o.Status.PodIP, PodIPs: o.Status.PodIPs},
		}, nil
	case *corev1.Node:
		n := &corev1.Node{
			ObjectMeta: stripMeta(o.ObjectMeta),
			Spec:       corev1.NodeSpec{PodCIDR: o.Spec.PodCIDR, PodCIDRs: o.Spec.PodCIDRs},
			Status:     corev1.NodeStatus{Addresses: o.Status.Addresses, DaemonEndpoints: o.Status.DaemonEndpoints},
		}
		for _, c := range o.Status.Conditions {
			if c.Type == corev1.NodeReady {
				n.Status.Conditions = []corev1.NodeCondition{{Type: c.Type, Status: c.Status}}
			}
		}
		return n, nil
	case *corev1.Service:
		s := &corev1.Service{ObjectMeta: stripMeta(o.ObjectMeta), Spec: corev1.ServiceSpec{
			Type: o.Spec.Type, ClusterIP: o.Spec.ClusterIP, ClusterIPs: o.Spec.ClusterIPs,
		}}
		for _, p := range o.Spec.Ports {
			s.Spec.Ports = append(s.Spec.Ports, corev1.ServicePort{Port: p.Port, Protocol: p.Protocol})
		}
		return s, nil
	case *discoveryv1.EndpointSlice:
		e := &discoveryv1.EndpointSlice{ObjectMeta: stripMeta(o.ObjectMeta), AddressType: o.AddressType}
		e.Labels = map[string]string{discoveryv1.LabelServiceName: o.Labels[discoveryv1.LabelServiceName]}
		for _, ep := range o.Endpoints {
			e.Endpoints = append(e.Endpoints, discoveryv1.Endpoint{Addresses: ep.Addresses, Conditions: discoveryv1.EndpointConditions{Ready: ep.Conditions.Ready}})
		}
		return e, nil
	default:
		return obj, nil // tombstones (DeletedFinalStateUnknown) pass through
	}
}

func stripMeta(m metav1.ObjectMeta) metav1.ObjectMeta {
	return metav1.ObjectMeta{
		Name: m.Name, Namespace: m.Namespace, UID: m.UID, ResourceVersion: m.ResourceVersion,
		DeletionTimestamp: m.DeletionTimestamp,
	}
}
