package executor

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/horde-compute/horde/protocol"
)

// checkStreamingImage decides whether a streaming job's image may run: the
// validator's digest pin when it sent one (horde validators), else the
// miner's allow-list (upstream validators send no pin).
func (j *job) checkStreamingImage(ctx context.Context, initial *protocol.V0InitialJobRequest) error {
	if initial.ImageDigest != "" || len(initial.ImageAllowList) == 0 {
		return j.checkDigest(ctx, initial.DockerImage, initial.ImageDigest)
	}
	if listedByName(initial.DockerImage, initial.ImageAllowList) {
		return nil
	}
	img, err := j.cfg.Runtime.ImageInspect(ctx, initial.DockerImage)
	if err != nil {
		return err
	}
	if listedByDigest(img.ID, img.RepoDigests, initial.ImageAllowList) {
		return nil
	}
	return fmt.Errorf("streaming image %s (%s) is not on the miner's allow-list", initial.DockerImage, img.ID)
}

// listedByName reports whether an allow-list entry that is a name names image.
func listedByName(image string, allow []string) bool {
	for _, e := range allow {
		if !protocol.IsImageDigest(e) && protocol.SameImageName(e, image) {
			return true
		}
	}
	return false
}

// listedByDigest reports whether the image's id or one of its repo digests
// ("name@sha256:…") is on the allow-list.
func listedByDigest(id string, repoDigests, allow []string) bool {
	if slices.Contains(allow, id) {
		return true
	}
	for _, rd := range repoDigests {
		if _, d, ok := strings.Cut(rd, "@"); ok && slices.Contains(allow, d) {
			return true
		}
	}
	return false
}
