package model

import (
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Strip keeps only the fields the model reads of a Node, Pod, Service,
// EndpointSlice or ServiceCIDR (other values pass through unchanged): the informer cache and
// a decoded cluster dump hold the small form only, which is what keeps
// 150,000 pods, or a dump of them, from costing gigabytes.
func Strip(obj any) any {
	switch o := obj.(type) {
	case *corev1.Pod:
		pod := &corev1.Pod{
			ObjectMeta: stripMeta(o.ObjectMeta),
			Spec:       corev1.PodSpec{NodeName: o.Spec.NodeName, HostNetwork: o.Spec.HostNetwork},
			Status:     corev1.PodStatus{Phase: o.Status.Phase, PodIP: o.Status.PodIP, PodIPs: o.Status.PodIPs},
		}
		if o.Spec.HostNetwork { // their declared ports open the node's own addresses
			for _, c := range o.Spec.Containers {
				pod.Spec.Containers = append(pod.Spec.Containers, corev1.Container{Name: c.Name, Ports: c.Ports})
			}
		}
		return pod
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
		return n
	case *corev1.Service:
		s := &corev1.Service{ObjectMeta: stripMeta(o.ObjectMeta), Spec: corev1.ServiceSpec{
			Type: o.Spec.Type, ClusterIP: o.Spec.ClusterIP, ClusterIPs: o.Spec.ClusterIPs,
		}}
		for _, p := range o.Spec.Ports {
			s.Spec.Ports = append(s.Spec.Ports, corev1.ServicePort{Port: p.Port, Protocol: p.Protocol})
		}
		return s
	case *networkingv1.ServiceCIDR:
		return &networkingv1.ServiceCIDR{ObjectMeta: stripMeta(o.ObjectMeta), Spec: o.Spec}
	case *discoveryv1.EndpointSlice:
		e := &discoveryv1.EndpointSlice{ObjectMeta: stripMeta(o.ObjectMeta), AddressType: o.AddressType}
		e.Labels = map[string]string{discoveryv1.LabelServiceName: o.Labels[discoveryv1.LabelServiceName]}
		for _, ep := range o.Endpoints {
			e.Endpoints = append(e.Endpoints, discoveryv1.Endpoint{Addresses: ep.Addresses, Conditions: discoveryv1.EndpointConditions{Ready: ep.Conditions.Ready}})
		}
		return e
	default:
		return obj // tombstones (DeletedFinalStateUnknown) pass through
	}
}

func stripMeta(m metav1.ObjectMeta) metav1.ObjectMeta {
	return metav1.ObjectMeta{
		Name: m.Name, Namespace: m.Namespace, UID: m.UID, ResourceVersion: m.ResourceVersion,
		DeletionTimestamp: m.DeletionTimestamp,
	}
}
