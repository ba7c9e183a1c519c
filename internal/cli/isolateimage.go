package cli

import (
	"errors"
	"fmt"
	"os"

	"github.com/horde-compute/horde/internal/images"
)

// deployIsolateImage writes the isolate image ('horde program isolate' of
// this binary, the init container of every Kubernetes job Pod) as an image
// archive to import on every node: no container engine or registry needed.
func (e *env) deployIsolateImage(args []string) error {
	fs := e.flags("deploy isolate-image")
	out := fs.String("out", "horde-isolate.tar", "the image archive to write")
	tag := fs.String("tag", images.IsolateImage, "the image's tag (the miner's --isolate-image)")
	pos, err := e.parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 0 {
		return usageErr("horde deploy isolate-image [--out FILE] [--tag TAG]")
	}
	f, err := os.Create(*out)
	if err != nil {
		return err
	}
	id, err := images.Archive(f, images.SelfExe, *tag, images.IsolateEntrypoint)
	if errors.Is(err, images.ErrNotStatic) {
		// 'go run' or a cgo build: a static copy from source, if this is a checkout.
		dir, derr := os.MkdirTemp("", "horde-static-")
		if derr == nil {
			defer os.RemoveAll(dir)
			if bin, berr := images.BuildStatic(e.ctx, dir); berr == nil {
				f.Truncate(0)
				f.Seek(0, 0)
				id, err = images.Archive(f, bin, *tag, images.IsolateEntrypoint)
			}
		}
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(*out)
		return err
	}
	fmt.Fprintf(e.stdout, "%s: image %s (%.19s), the init container of Kubernetes job Pods.\n", *out, *tag, id)
	fmt.Fprintf(e.stdout, "Import it on every node that runs job Pods:\n  ctr -n k8s.io images import %s      (containerd; 'docker load' and 'podman load' read it too)\n", *out)
	fmt.Fprintf(e.stdout, "or push it to a registry the nodes pull from and give the miner --isolate-image REGISTRY/NAME:TAG.\n")
	return nil
}
