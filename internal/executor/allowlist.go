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
// miner's allow-list (upstream validators send no pin): the image's name,
// or its id or one of its repo digests, must be listed.
func (j *job) checkStreamingImage(ctx context.Context, initial *protocol.V0InitialJobRequest) error {
	if initial.ImageDigest != "" || len(initial.ImageAllowList) == 0 {
		return j.checkDigest(ctx, initial.DockerImage, initial.ImageDigest)
	}
	for _, e := range initial.ImageAllowList {
		if !protocol.IsImageDigest(e) && protocol.SameImageName(e, initial.DockerImage) {
			return nil
		}
	}
	img, err := j.cfg.Runtime.ImageInspect(ctx, initial.DockerImage)
	if err != nil {
		return err
	}
	if slices.Contains(initial.ImageAllowList, img.ID) {
		return nil
	}
	for _, rd := range img.RepoDigests {
		if _, d, ok := strings.Cut(rd, "@"); ok && slices.Contains(initial.ImageAllowList, d) {
			return nil
		}
	}
	return fmt.Errorf("streaming image %s (%s) is not on the miner's allow-list", initial.DockerImage, img.ID)
}
