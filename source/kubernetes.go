package source

import (
	"context"
	"fmt"

	"github.com/sirupsen/logrus"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/discovery"
	corev1client "k8s.io/client-go/kubernetes/typed/core/v1"
	discoveryv1client "k8s.io/client-go/kubernetes/typed/discovery/v1"
	networkingv1client "k8s.io/client-go/kubernetes/typed/networking/v1"
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
	Client Client
	Log    logrus.FieldLogger
}

// Client is the part of a clientset (kubernetes.Interface) the source
// reads. Naming only these groups keeps the clientset's and the informer
// factory's hundreds of packages (every API group) out of what imports
// this package: the race detector's builds compile them again.
type Client interface {
	CoreV1() corev1client.CoreV1Interface
	DiscoveryV1() discoveryv1client.DiscoveryV1Interface
	NetworkingV1() networkingv1client.NetworkingV1Interface
	Discovery() discovery.DiscoveryInterfaces
}

// watched is one resource's informer and what its events do to the store.
type watched struct {
	informer cache.SharedIndexInformer
	handler  cache.ResourceEventHandler
}

// Run writes events into sink until ctx ends; it reports Synced once every
// informer has listed.
func (k *Kubernetes) Run(ctx context.Context, sink Sink) error {
	core, st, all := k.Client.CoreV1(), sink.Store, func(*metav1.ListOptions) {}
	apiservers := func(o *metav1.ListOptions) { o.LabelSelector = discoveryv1.LabelServiceName + "=kubernetes" }
	informersByName := map[string]watched{
		"nodes": {newInformer[*corev1.NodeList](core.Nodes(), &corev1.Node{}, k.Client, all),
			handle(st.SetNode, func(n *corev1.Node) { st.DeleteNode(n.Name) }, sink.Changed)},
		"pods": {newInformer[*corev1.PodList](core.Pods(metav1.NamespaceAll), &corev1.Pod{}, k.Client, all),
			handle(st.SetPod, func(p *corev1.Pod) { st.DeletePod(p.Namespace, p.Name) }, sink.Changed)},
		"services": {newInformer[*corev1.ServiceList](core.Services(metav1.NamespaceAll), &corev1.Service{}, k.Client, all),
			handle(st.SetService, func(s *corev1.Service) { st.DeleteService(s.Namespace, s.Name) }, sink.Changed)},
		"endpointslices": {newInformer[*discoveryv1.EndpointSliceList](k.Client.DiscoveryV1().EndpointSlices(metav1.NamespaceDefault), &discoveryv1.EndpointSlice{}, k.Client, apiservers),
			handle(st.SetEndpointSlice, func(s *discoveryv1.EndpointSlice) { st.DeleteEndpointSlice(s.Namespace, s.Name) }, sink.Changed)},
	}
	if k.servesServiceCIDRs(ctx) {
		informersByName["servicecidrs"] = watched{newInformer[*networkingv1.ServiceCIDRList](k.Client.NetworkingV1().ServiceCIDRs(), &networkingv1.ServiceCIDR{}, k.Client, all),
			handle(st.SetServiceCIDR, func(sc *networkingv1.ServiceCIDR) { st.DeleteServiceCIDR(sc.Name) }, sink.Changed)}
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
	for _, inf := range informersByName {
		go inf.informer.RunWithContext(ctx)
	}
	k.Log.Info("waiting for the first full list of nodes, pods, services, servicecidrs and endpointslices")
	for name, inf := range informersByName {
		if !cache.WaitForCacheSync(ctx.Done(), inf.informer.HasSynced) {
			return fmt.Errorf("informer for %s never synced (is the apiserver reachable, and does RBAC allow list/watch?)", name)
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
func (k *Kubernetes) servesServiceCIDRs(ctx context.Context) bool {
	resources, err := k.Client.Discovery().ServerResourcesForGroupVersionWithContext(ctx, networkingv1.SchemeGroupVersion.String())
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

// listWatcher is a typed client of one resource (client.CoreV1().Nodes(),
// ...); L is its list type.
type listWatcher[L runtime.Object] interface {
	List(ctx context.Context, opts metav1.ListOptions) (L, error)
	Watch(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error)
}

// newInformer is the informer client-go's generated factory builds for one
// resource (k8s.io/client-go/informers), from its typed client c: example is
// its object type, client says whether watch-list semantics are supported
// (a fake clientset says no), tweak edits every list and watch.
func newInformer[L runtime.Object](c listWatcher[L], example runtime.Object, client Client, tweak func(*metav1.ListOptions)) cache.SharedIndexInformer {
	lw := &cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			tweak(&o)
			return c.List(ctx, o)
		},
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			tweak(&o)
			return c.Watch(ctx, o)
		},
	}
	return cache.NewSharedIndexInformerWithOptions(cache.ToListWatcherWithWatchListSemantics(lw, client), example, cache.SharedIndexInformerOptions{})
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
