package source

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestStripKeepsWhatTheModelReads: the informer cache holds pods stripped
// to the fields the model reads; hostNetwork pods keep their declared ports
// (the node proxy opens them on the node's addresses), other pods drop them.
func TestStripKeepsWhatTheModelReads(t *testing.T) {
	ports := []corev1.ContainerPort{{ContainerPort: 10249, Protocol: corev1.ProtocolTCP}}
	for _, hostNetwork := range []bool{true, false} {
		pod := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: "ns", Labels: map[string]string{"big": "label"}},
			Spec: corev1.PodSpec{NodeName: "n", HostNetwork: hostNetwork,
				Containers: []corev1.Container{{Name: "c", Image: "registry/image", Ports: ports, Args: []string{"--lots"}}}},
			Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "10.0.0.5"},
		}
		out, err := strip(pod)
		if err != nil {
			t.Fatal(err)
		}
		got := out.(*corev1.Pod)
		if got.Labels != nil || got.Spec.NodeName != "n" || got.Status.PodIP != "10.0.0.5" {
			t.Errorf("hostNetwork=%v: stripped pod lost what the model reads or kept what it does not: %+v", hostNetwork, got)
		}
		kept := len(got.Spec.Containers) == 1 && len(got.Spec.Containers[0].Ports) == 1 && got.Spec.Containers[0].Image == ""
		if hostNetwork != kept {
			t.Errorf("hostNetwork=%v: containers after strip: %+v", hostNetwork, got.Spec.Containers)
		}
	}
}
