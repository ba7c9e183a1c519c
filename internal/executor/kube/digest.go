package kube

import (
	"context"
	"fmt"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"

	"github.com/horde-compute/horde/internal/executor"
	"github.com/horde-compute/horde/internal/executor/docker"
)

// Images pinned by digest. A node reports in node.status.images the names
// its container runtime holds, tags and repo digests ("repo@sha256:…"),
// and a Pod may name its image by such a digest: the runtime then runs
// exactly that content or nothing. So a streaming job's whitelisted digest
// is checked against what the nodes the job may run on report, and its Pod
// names the image by that digest and may run only on those nodes.

var _ executor.ImagePinner = (*Runtime)(nil)

// PinImage implements executor.ImagePinner: digest must be a repo digest
// some node the job may run on reports for ref; the reference returned
// ("repo@sha256:…") makes ContainerCreate run that content on such a node.
// An image id (config digest, which nodes do not report) matches only
// through Config.ImageID, and then ref is returned as it is.
func (r *Runtime) PinImage(ctx context.Context, ref, digest string) (string, error) {
	if !isDigest(digest) {
		return "", fmt.Errorf("image %s: the whitelisted digest %q is not sha256:<64 hex>", ref, digest)
	}
	nodes, err := r.nodes(ctx)
	if err != nil {
		return "", err
	}
	want := NormalizeRef(ref)
	pinned := NormalizeRef(repository(ref) + "@" + digest)
	var seen []string
	for _, n := range nodes {
		img := named(&n, want)
		if img == nil {
			seen = append(seen, n.Name+": not present")
			continue
		}
		if slices.ContainsFunc(img.Names, func(name string) bool { return NormalizeRef(name) == pinned }) {
			return pinned, nil
		}
		var ds []string
		for _, name := range img.Names {
			if _, d, ok := strings.Cut(name, "@"); ok {
				ds = append(ds, d)
			}
		}
		if len(ds) == 0 {
			ds = []string{"no repo digest"}
		}
		seen = append(seen, n.Name+": "+strings.Join(ds, ", "))
	}
	if r.cfg.ImageID != nil {
		if id, err := r.cfg.ImageID(ctx, ref); err == nil && id == digest {
			return ref, nil
		}
	}
	if len(nodes) == 0 {
		seen = append(seen, "no node")
	}
	return "", fmt.Errorf("image %s is not the whitelisted %s on any node its Pod may run on (%s)", ref, digest, strings.Join(seen, "; "))
}

// named is the image n reports under the name want (normalized), if any.
func named(n *corev1.Node, want string) *corev1.ContainerImage {
	for i := range n.Status.Images {
		for _, name := range n.Status.Images[i].Names {
			if NormalizeRef(name) == want {
				return &n.Status.Images[i]
			}
		}
	}
	return nil
}

// pinToNodes makes pod, whose image is named by digest and which the
// kubelet may not pull, run only on the nodes that report that image.
func (r *Runtime) pinToNodes(ctx context.Context, pod *corev1.Pod, image string) error {
	nodes, err := r.nodes(ctx)
	if err != nil {
		return err
	}
	want := NormalizeRef(image)
	var names []string
	for _, n := range nodes {
		if named(&n, want) != nil {
			names = append(names, n.Name)
		}
	}
	if len(names) == 0 {
		return fmt.Errorf("%w: image %s is on no node", docker.ErrNotFound, image)
	}
	pod.Spec.Affinity = &corev1.Affinity{NodeAffinity: &corev1.NodeAffinity{
		RequiredDuringSchedulingIgnoredDuringExecution: &corev1.NodeSelector{NodeSelectorTerms: []corev1.NodeSelectorTerm{{
			MatchFields: []corev1.NodeSelectorRequirement{{Key: "metadata.name", Operator: corev1.NodeSelectorOpIn, Values: names}},
		}}},
	}}
	return nil
}

// repository is ref without its tag or digest.
func repository(ref string) string {
	if i := strings.Index(ref, "@"); i >= 0 {
		ref = ref[:i]
	}
	if i := strings.LastIndex(ref, ":"); i > strings.LastIndex(ref, "/") {
		ref = ref[:i]
	}
	return ref
}

// isDigest says whether d is sha256:<64 lowercase hex>.
func isDigest(d string) bool {
	h, ok := strings.CutPrefix(d, "sha256:")
	return ok && len(h) == 64 && strings.Trim(h, "0123456789abcdef") == ""
}

// isolateEverywhere says which nodes job Pods may run on lack the isolate
// image, and how to get it there.
func (r *Runtime) isolateEverywhere(ctx context.Context) error {
	nodes, err := r.nodes(ctx)
	if err != nil {
		return fmt.Errorf("kubernetes: %w", err)
	}
	want := NormalizeRef(r.cfg.IsolateImage)
	var missing []string
	for _, n := range nodes {
		if named(&n, want) == nil {
			missing = append(missing, n.Name)
		}
	}
	if len(missing) == 0 && len(nodes) > 0 {
		return nil
	}
	if len(nodes) == 0 {
		missing = []string{"there is no node"}
	}
	return fmt.Errorf("kubernetes: the isolate image %s (the init container of every job Pod) is not on %s: "+
		"write it with 'horde deploy isolate-image --tag %s --out horde-isolate.tar' and import it on each node "+
		"('ctr -n k8s.io images import horde-isolate.tar'), or push it to a registry the nodes pull from and pass --isolate-image",
		r.cfg.IsolateImage, strings.Join(missing, ", "), r.cfg.IsolateImage)
}
