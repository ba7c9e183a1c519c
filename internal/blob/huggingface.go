package blob

import (
	"context"
	"encoding/json"
	"fmt"
	"path"
	"strings"

	"github.com/horde-compute/horde/protocol"
)

// maxListing bounds a hub's file listing.
const maxListing = 16 << 20

// huggingFace downloads a repository snapshot through the hub's HTTP API:
// the file list from /api/{type}s/{repo}/revision/{rev}, each file from
// /{repo}/resolve/{rev}/{file} (datasets under /datasets/), each streamed
// to its file beneath t. The token goes to the hub only (net/http drops it
// on a redirect to another host, such as a CDN).
func (f *Fetcher) huggingFace(ctx context.Context, v *protocol.Volume, t *tree, m *volumeMeter) error {
	if f.HuggingFaceEndpoint == "" {
		return fmt.Errorf("%w: huggingface_volume needs a hub endpoint (--huggingface-endpoint)", ErrDownload)
	}
	base := strings.TrimRight(f.HuggingFaceEndpoint, "/")
	kind := v.RepoType
	if kind == "" {
		kind = "model"
	}
	rev := v.Revision
	if rev == "" {
		rev = "main"
	}
	listURL := fmt.Sprintf("%s/api/%ss/%s/revision/%s", base, kind, v.RepoID, rev)
	b, err := f.getSmall(ctx, listURL, v.Token, maxListing)
	if err != nil {
		return err
	}
	var info struct {
		Siblings []struct {
			Rfilename string `json:"rfilename"`
		} `json:"siblings"`
	}
	if err := json.Unmarshal(b, &info); err != nil {
		return fmt.Errorf("%w: hub listing: %v", ErrDownload, err)
	}
	prefix := ""
	if kind != "model" {
		prefix = "/" + kind + "s"
	}
	files := 0
	for _, s := range info.Siblings {
		if !matchAny(v.AllowPattern, s.Rfilename) {
			continue
		}
		if _, err := components(s.Rfilename); err != nil {
			return err
		}
		if files++; f.Limits.MaxFiles > 0 && files > f.Limits.MaxFiles {
			return fmt.Errorf("%w: repository has more than %d files", ErrTooLarge, f.Limits.MaxFiles)
		}
		rel := path.Join(v.RelativePath, s.Rfilename)
		url := fmt.Sprintf("%s%s/%s/resolve/%s/%s", base, prefix, v.RepoID, rev, s.Rfilename)
		if err := f.getFile(ctx, t, rel, url, v.Token, m); err != nil {
			return err
		}
	}
	return nil
}

func matchAny(patterns []string, name string) bool {
	if len(patterns) == 0 {
		return true
	}
	for _, p := range patterns {
		if ok, _ := path.Match(p, name); ok {
			return true
		}
	}
	return false
}
