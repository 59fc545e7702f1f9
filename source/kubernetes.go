package source

import (
	"context"
	"fmt"

	"github.com/sirupsen/logrus"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"github.com/spokeproxy/spoke/translator/model"
)

// Kubernetes watches Nodes, Pods, Services, ServiceCIDRs (where the cluster
// serves networking.k8s.io/v1 ServiceCIDR) and the EndpointSlices of
// default/kubernetes with informers and writes each event into the store, so
// an update costs what the event touched. Objects are stripped to the fields
// the model reads before they are cached (memory at 150,000 pods). Informers
// relist and re-watch with backoff on errors and apiserver restarts (a relist
// replays unchanged objects, which the store ignores, and tombstones for
// objects deleted meanwhile); the last view stays served meanwhile.
type Kubernetes struct {
	Client kubernetes.Interface
	Log    logrus.FieldLogger
}

// Run writes events into sink until ctx ends; it reports Synced once every
// informer has listed.
func (k *Kubernetes) Run(ctx context.Context, sink Sink) error {
	all := informers.NewSharedInformerFactory(k.Client, 0)
	apiservers := informers.NewSharedInformerFactoryWithOptions(k.Client, 0,
		informers.WithNamespace(metav1.NamespaceDefault),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.LabelSelector = discoveryv1.LabelServiceName + "=kubernetes"
		}))
	st := sink.Store
	informersByName := map[string]struct {
		informer cache.SharedIndexInformer
		handler  cache.ResourceEventHandler
	}{
		"nodes":    {all.Core().V1().Nodes().Informer(), handle(st.SetNode, func(n *corev1.Node) { st.DeleteNode(n.Name) }, sink.Changed)},
		"pods":     {all.Core().V1().Pods().Informer(), handle(st.SetPod, func(p *corev1.Pod) { st.DeletePod(p.Namespace, p.Name) }, sink.Changed)},
		"services": {all.Core().V1().Services().Informer(), handle(st.SetService, func(s *corev1.Service) { st.DeleteService(s.Namespace, s.Name) }, sink.Changed)},
		"endpointslices": {apiservers.Discovery().V1().EndpointSlices().Informer(), handle(st.SetEndpointSlice,
			func(s *discoveryv1.EndpointSlice) { st.DeleteEndpointSlice(s.Namespace, s.Name) }, sink.Changed)},
	}
	if k.servesServiceCIDRs() {
		informersByName["servicecidrs"] = struct {
			informer cache.SharedIndexInformer
			handler  cache.ResourceEventHandler
		}{all.Networking().V1().ServiceCIDRs().Informer(), handle(st.SetServiceCIDR,
			func(sc *networkingv1.ServiceCIDR) { st.DeleteServiceCIDR(sc.Name) }, sink.Changed)}
	}
	for name, inf := range informersByName {
		if err := inf.informer.SetTransform(strip); err != nil {
			return fmt.Errorf("informer %s: %w", name, err)
		}
		resource := name
		if err := inf.informer.SetWatchErrorHandler(func(_ *cache.Reflector, err error) {
			k.Log.WithError(err).WithField("resource", resource).Warn("watch failed; client-go relists with backoff, the last config stays served")
		}); err != nil {
			return fmt.Errorf("informer %s: %w", name, err)
		}
		if _, err := inf.informer.AddEventHandler(inf.handler); err != nil {
			return fmt.Errorf("informer %s: %w", name, err)
		}
	}
	all.Start(ctx.Done())
	apiservers.Start(ctx.Done())
	k.Log.Info("waiting for the first full list of nodes, pods, services, servicecidrs and endpointslices")
	for _, factory := range []informers.SharedInformerFactory{all, apiservers} {
		for typ, ok := range factory.WaitForCacheSync(ctx.Done()) {
			if !ok {
				return fmt.Errorf("informer for %v never synced (is the apiserver reachable, and does RBAC allow list/watch?)", typ)
			}
		}
	}
	k.Log.Info("cluster synced")
	sink.Synced()
	<-ctx.Done()
	return nil
}

// servesServiceCIDRs asks discovery whether the cluster serves
// networking.k8s.io/v1 ServiceCIDR (Kubernetes 1.33 and later); an informer
// for an API that is not served would never sync.
func (k *Kubernetes) servesServiceCIDRs() bool {
	resources, err := k.Client.Discovery().ServerResourcesForGroupVersion(networkingv1.SchemeGroupVersion.String())
	if err == nil {
		for _, r := range resources.APIResources {
			if r.Name == "servicecidrs" {
				return true
			}
		}
	}
	k.Log.WithError(err).Warn("the cluster serves no networking.k8s.io/v1 ServiceCIDR: node proxies accept the serviceCIDRs setting's ranges and, outside them, each Service's ClusterIP:port")
	return false
}

// handle turns informer events into store writes. Deletions may arrive as
// tombstones (the watch missed the delete; a relist found the object gone).
func handle[T any](set, del func(T), changed func()) cache.ResourceEventHandlerFuncs {
	return cache.ResourceEventHandlerFuncs{
		AddFunc: func(obj any) {
			if o, ok := obj.(T); ok {
				set(o)
				changed()
			}
		},
		UpdateFunc: func(_, obj any) {
			if o, ok := obj.(T); ok {
				set(o)
				changed()
			}
		},
		DeleteFunc: func(obj any) {
			if tomb, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				obj = tomb.Obj
			}
			if o, ok := obj.(T); ok {
				del(o)
				changed()
			}
		},
	}
}

// strip runs model.Strip before an object enters the informer cache, so the
// cache holds the small form only (memory at 150,000 pods).
func strip(obj any) (any, error) { return model.Strip(obj), nil }
