package kube

import (
	"context"
	"fmt"
	"slices"
	"sort"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/horde-compute/horde/internal/executor"
)

// Free is what a node can still give job Pods.
type Free struct {
	Node        string
	MilliCPU    int64
	MemoryBytes int64
	GPUs        int64
}

// Capacity is what each schedulable, ready node (or only nodeName) can give
// job Pods: its allocatable resources less the requests of the Pods bound
// to it that are not horde's (horde's own are the jobs a manifest counts).
func (r *Runtime) Capacity(ctx context.Context) ([]Free, error) {
	cfg := r.cfg
	nodes, err := r.nodes(ctx)
	if err != nil {
		return nil, err
	}
	pods, err := cfg.Client.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list pods: %w", err)
	}
	var out []Free
	for _, n := range nodes {
		if n.Spec.Unschedulable || !ready(&n) {
			continue
		}
		a := n.Status.Allocatable
		f := Free{Node: n.Name, MilliCPU: a.Cpu().MilliValue(), MemoryBytes: a.Memory().Value(), GPUs: quantity(a, GPUResource)}
		for _, p := range pods.Items {
			if p.Spec.NodeName != n.Name || p.Labels["app.kubernetes.io/managed-by"] == ManagedBy ||
				p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
				continue
			}
			req := podRequests(&p)
			f.MilliCPU -= req.Cpu().MilliValue()
			f.MemoryBytes -= req.Memory().Value()
			f.GPUs -= quantity(req, GPUResource)
		}
		out = append(out, f)
	}
	return out, nil
}

func ready(n *corev1.Node) bool {
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

func quantity(l corev1.ResourceList, name corev1.ResourceName) int64 {
	q, ok := l[name]
	if !ok {
		return 0
	}
	return q.Value()
}

// podRequests is what a Pod asks of its node: the larger of its
// containers' sum and any one init container's.
func podRequests(p *corev1.Pod) corev1.ResourceList {
	sum := corev1.ResourceList{}
	for _, c := range p.Spec.Containers {
		for k, v := range c.Resources.Requests {
			q := sum[k]
			q.Add(v)
			sum[k] = q
		}
	}
	for _, c := range p.Spec.InitContainers {
		for k, v := range c.Resources.Requests {
			if q := sum[k]; q.Cmp(v) < 0 {
				sum[k] = v.DeepCopy()
			}
		}
	}
	return sum
}

// Fit caps the wanted executors per class to what fits on the nodes all at
// once: it places them one by one, largest classes first, each on the node
// with the most room left (GPUs, then memory, then CPU), and counts what
// found a place. A class the nodes cannot fit gets 0. The result never
// promises more executors than the cluster can schedule together.
func Fit(free []Free, classes map[string]executor.ClassSpec, wanted map[string]int) map[string]int {
	left := slices.Clone(free)
	names := make([]string, 0, len(wanted))
	for c := range wanted {
		names = append(names, c)
	}
	size := func(c string) (int64, int64, int64) {
		s := classes[c]
		return int64(max(s.GPUs, 0)), s.MemoryBytes, s.NanoCPUs / 1e6
	}
	sort.Slice(names, func(i, j int) bool {
		gi, mi, ci := size(names[i])
		gj, mj, cj := size(names[j])
		if gi != gj {
			return gi > gj
		}
		if mi != mj {
			return mi > mj
		}
		if ci != cj {
			return ci > cj
		}
		return names[i] < names[j]
	})
	out := map[string]int{}
	for _, c := range names {
		g, m, cpu := size(c)
		out[c] = 0
		for range wanted[c] {
			best := -1
			for i, f := range left {
				if f.GPUs < g || f.MemoryBytes < m || f.MilliCPU < cpu {
					continue
				}
				if best < 0 || roomier(f, left[best]) {
					best = i
				}
			}
			if best < 0 {
				break
			}
			left[best].GPUs -= g
			left[best].MemoryBytes -= m
			left[best].MilliCPU -= cpu
			out[c]++
		}
	}
	return out
}

func roomier(a, b Free) bool {
	if a.GPUs != b.GPUs {
		return a.GPUs > b.GPUs
	}
	if a.MemoryBytes != b.MemoryBytes {
		return a.MemoryBytes > b.MemoryBytes
	}
	return a.MilliCPU > b.MilliCPU
}
