package kubestatus

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// ReadReports reads every replica's report from the status ConfigMap,
// sorted by replica. A key that does not parse is returned with Omitted
// saying so, not dropped: the reader should see that a replica wrote.
func ReadReports(ctx context.Context, client kubernetes.Interface, namespace, name string) ([]Report, error) {
	cm, err := client.CoreV1().ConfigMaps(namespace).Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, fmt.Errorf("no ConfigMap %s/%s: no spoke server has published its status (are they running with --source kubernetes, and may they write it? see the server's log)", namespace, name)
	}
	if err != nil {
		return nil, fmt.Errorf("read ConfigMap %s/%s: %w", namespace, name, err)
	}
	var reports []Report
	for key, doc := range cm.Data {
		replica, ok := strings.CutSuffix(key, ".json")
		if !ok {
			continue
		}
		var r Report
		if err := json.Unmarshal([]byte(doc), &r); err != nil {
			r = Report{Replica: replica, Omitted: "unreadable report: " + err.Error()}
		}
		reports = append(reports, r)
	}
	slices.SortFunc(reports, func(a, b Report) int { return strings.Compare(a.Replica, b.Replica) })
	return reports, nil
}

// Stale says whether r is too old to describe a live replica.
func (r Report) Stale(now time.Time) bool { return now.Sub(r.UpdatedAt) > StaleAfter }

// ReadNodeEvents lists spoke's Events on Nodes (they live in namespace
// default, as every cluster-scoped object's do), latest first.
func ReadNodeEvents(ctx context.Context, client kubernetes.Interface) ([]corev1.Event, error) {
	list, err := client.CoreV1().Events(metav1.NamespaceDefault).List(ctx, metav1.ListOptions{
		FieldSelector: "involvedObject.kind=Node,source=" + EventComponent})
	if err != nil {
		return nil, fmt.Errorf("list spoke's Events on Nodes: %w", err)
	}
	events := list.Items
	slices.SortFunc(events, func(a, b corev1.Event) int { return LastSeen(b).Compare(LastSeen(a)) })
	return events, nil
}

// LastSeen is when an Event last happened, whichever field its writer set.
func LastSeen(e corev1.Event) time.Time {
	switch {
	case e.Series != nil && !e.Series.LastObservedTime.IsZero():
		return e.Series.LastObservedTime.Time
	case !e.LastTimestamp.IsZero():
		return e.LastTimestamp.Time
	case !e.EventTime.IsZero():
		return e.EventTime.Time
	}
	return e.CreationTimestamp.Time
}
