package blob

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"path"
	"strings"

	"github.com/horde-compute/horde/protocol"
)

// huggingFace downloads a repository snapshot through the hub's HTTP API:
// the file list from /api/{type}s/{repo}/revision/{rev}, each file from
// /{repo}/resolve/{rev}/{file} (datasets under /datasets/).
func (f *Fetcher) huggingFace(ctx context.Context, v *protocol.Volume, target string) error {
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
	b, err := f.getAuth(ctx, listURL, v.Token)
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
	var total int64
	for _, s := range info.Siblings {
		if !matchAny(v.AllowPattern, s.Rfilename) {
			continue
		}
		dst, err := SafeJoin(target, s.Rfilename)
		if err != nil {
			return err
		}
		data, err := f.getAuth(ctx, fmt.Sprintf("%s%s/%s/resolve/%s/%s", base, prefix, v.RepoID, rev, s.Rfilename), v.Token)
		if err != nil {
			return err
		}
		if total += int64(len(data)); total > f.Limits.MaxVolumeBytes {
			return fmt.Errorf("%w: repository over %d bytes", ErrTooLarge, f.Limits.MaxVolumeBytes)
		}
		if err := writeFile(dst, data); err != nil {
			return err
		}
	}
	return nil
}

func (f *Fetcher) getAuth(ctx context.Context, url, token string) ([]byte, error) {
	if token == "" {
		return f.get(ctx, url)
	}
	c := *f
	base := f.client().Transport
	if base == nil {
		base = http.DefaultTransport
	}
	c.HTTP = &http.Client{Transport: bearer{token, base}}
	return c.get(ctx, url)
}

type bearer struct {
	token string
	next  http.RoundTripper
}

func (b bearer) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("Authorization", "Bearer "+b.token)
	return b.next.RoundTrip(r)
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
