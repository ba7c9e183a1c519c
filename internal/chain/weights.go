package chain

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// WeightSetter publishes a validator's weights (hotkey → normalised weight).
type WeightSetter interface {
	SetWeights(ctx context.Context, weights map[string]float64) error
}

// WeightsFile appends each weight setting as one JSON line to a file: the dev
// and default back-end, also a log of every setting.
type WeightsFile struct{ Path string }

// SetWeights implements WeightSetter.
func (f WeightsFile) SetWeights(ctx context.Context, weights map[string]float64) error {
	if err := os.MkdirAll(filepath.Dir(f.Path), 0o755); err != nil {
		return err
	}
	b, err := json.Marshal(map[string]any{"at": time.Now().UTC(), "weights": weights})
	if err != nil {
		return err
	}
	out, err := os.OpenFile(f.Path, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return fmt.Errorf("set weights: %w", err)
	}
	if _, err := out.Write(append(b, '\n')); err != nil {
		out.Close()
		return fmt.Errorf("set weights: %w", err)
	}
	return out.Close()
}

// Pylon talks to a Pylon service: metagraph reads from
// GET /api/v1/subnet/{netuid}/block/latest/neurons and weights through
// PUT /api/v1/identity/{identity}/subnet/{netuid}/weights with body
// {"weights": {hotkey: weight}}, both with a bearer token.
type Pylon struct {
	BaseURL  string
	Identity string
	NetUID   int
	Token    string
	HTTP     *http.Client
}

var (
	_ Source       = (*Pylon)(nil)
	_ WeightSetter = (*Pylon)(nil)
	_ WeightSetter = WeightsFile{}
)

func (p *Pylon) do(ctx context.Context, method, path string, body any) ([]byte, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, strings.TrimRight(p.BaseURL, "/")+path, rd)
	if err != nil {
		return nil, err
	}
	if p.Token != "" {
		req.Header.Set("Authorization", "Bearer "+p.Token)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	c := p.HTTP
	if c == nil {
		c = &http.Client{Timeout: 30 * time.Second}
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, fmt.Errorf("pylon %s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if resp.StatusCode >= 300 {
		return nil, fmt.Errorf("pylon %s %s: HTTP %d: %s", method, path, resp.StatusCode, strings.TrimSpace(string(b)))
	}
	return b, nil
}

// Metagraph implements Source.
func (p *Pylon) Metagraph(ctx context.Context) (*Metagraph, error) {
	b, err := p.do(ctx, http.MethodGet, fmt.Sprintf("/api/v1/subnet/%d/block/latest/neurons", p.NetUID), nil)
	if err != nil {
		return nil, err
	}
	return Parse(b)
}

// SetWeights implements WeightSetter.
func (p *Pylon) SetWeights(ctx context.Context, weights map[string]float64) error {
	_, err := p.do(ctx, http.MethodPut, fmt.Sprintf("/api/v1/identity/%s/subnet/%d/weights", url.PathEscape(p.Identity), p.NetUID),
		map[string]any{"weights": weights})
	return err
}
