package faulttest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
)

// Engine is a Docker Engine API client for what the suite does to hosts.
type Engine struct {
	http *http.Client
	base string
}

// NewEngine connects to $DOCKER_HOST (unix://) or the default socket.
func NewEngine() (*Engine, error) {
	host := os.Getenv("DOCKER_HOST")
	if host == "" {
		host = "unix:///var/run/docker.sock"
	}
	u, err := url.Parse(host)
	if err != nil {
		return nil, err
	}
	switch u.Scheme {
	case "unix":
		tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", u.Path)
		}}
		return &Engine{http: &http.Client{Transport: tr}, base: "http://docker/v1.41"}, nil
	case "tcp", "http":
		return &Engine{http: &http.Client{}, base: "http://" + u.Host + "/v1.41"}, nil
	}
	return nil, fmt.Errorf("docker host %q: unsupported scheme", host)
}

// ErrNotFound is the engine's 404.
var ErrNotFound = errors.New("not found")

// Call sends in as JSON (if not nil) and decodes the answer into out (if not nil).
func (e *Engine) Call(ctx context.Context, method, path string, q url.Values, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	u := e.base + path
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, method, u, body)
	if err != nil {
		return err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := e.http.Do(req)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusNotFound {
		b, _ := io.ReadAll(resp.Body)
		return fmt.Errorf("%s %s: %w: %s", method, path, ErrNotFound, strings.TrimSpace(string(b)))
	}
	if resp.StatusCode >= 300 && resp.StatusCode != http.StatusNotModified {
		b, _ := io.ReadAll(resp.Body)
		return fmt.Errorf("%s %s: HTTP %d: %s", method, path, resp.StatusCode, strings.TrimSpace(string(b)))
	}
	if out != nil {
		return json.NewDecoder(resp.Body).Decode(out)
	}
	_, err = io.Copy(io.Discard, resp.Body)
	return err
}

// Endpoint is a container's place on a network: a fixed IPv4 address.
type Endpoint struct {
	Network string
	IP      string
}

func (ep Endpoint) config() map[string]any {
	return map[string]any{"IPAMConfig": map[string]string{"IPv4Address": ep.IP}}
}

// Host is one container of the deployment.
type Host struct {
	Name    string
	Cmd     []string
	Env     []string
	Binds   []string
	Nets    []Endpoint
	Labels  map[string]string
	Image   string
	created bool
}

// Create creates the container on its networks (not started).
func (e *Engine) Create(ctx context.Context, h *Host) error {
	cfg := map[string]any{
		"Image": h.Image, "Cmd": h.Cmd, "Env": h.Env, "Labels": h.Labels, "WorkingDir": "/data",
		"HostConfig":       map[string]any{"Binds": h.Binds, "NetworkMode": h.Nets[0].Network, "Tmpfs": map[string]string{"/tmp": ""}},
		"NetworkingConfig": map[string]any{"EndpointsConfig": map[string]any{h.Nets[0].Network: h.Nets[0].config()}},
	}
	if err := e.Call(ctx, http.MethodPost, "/containers/create", url.Values{"name": {h.Name}}, cfg, nil); err != nil {
		return err
	}
	h.created = true
	for _, ep := range h.Nets[1:] {
		if err := e.Connect(ctx, h.Name, ep); err != nil {
			return err
		}
	}
	return nil
}

// Connect attaches a container to a network at its fixed address.
func (e *Engine) Connect(ctx context.Context, container string, ep Endpoint) error {
	return e.Call(ctx, http.MethodPost, "/networks/"+ep.Network+"/connect", nil,
		map[string]any{"Container": container, "EndpointConfig": ep.config()}, nil)
}

// Disconnect cuts a container off a network.
func (e *Engine) Disconnect(ctx context.Context, container, network string) error {
	return e.Call(ctx, http.MethodPost, "/networks/"+network+"/disconnect", nil, map[string]any{"Container": container, "Force": true}, nil)
}

// Do runs a container action: start, kill (SIGKILL), pause, unpause, restart, stop.
func (e *Engine) Do(ctx context.Context, container, action string) error {
	q := url.Values{}
	switch action {
	case "kill":
		q.Set("signal", "KILL")
	case "restart", "stop":
		q.Set("t", "10")
	}
	return e.Call(ctx, http.MethodPost, "/containers/"+container+"/"+action, q, nil, nil)
}

// Remove removes a container, running or not.
func (e *Engine) Remove(ctx context.Context, container string) error {
	err := e.Call(ctx, http.MethodDelete, "/containers/"+container, url.Values{"force": {"1"}, "v": {"1"}}, nil, nil)
	if errors.Is(err, ErrNotFound) {
		return nil
	}
	return err
}

// CreateNetwork creates a bridge network on subnet.
func (e *Engine) CreateNetwork(ctx context.Context, name, subnet string, labels map[string]string) error {
	return e.Call(ctx, http.MethodPost, "/networks/create", nil, map[string]any{"Name": name, "Driver": "bridge", "CheckDuplicate": true,
		"Labels": labels, "IPAM": map[string]any{"Config": []map[string]string{{"Subnet": subnet}}}}, nil)
}

// RemoveNetwork removes a network.
func (e *Engine) RemoveNetwork(ctx context.Context, name string) error {
	err := e.Call(ctx, http.MethodDelete, "/networks/"+name, nil, nil, nil)
	if errors.Is(err, ErrNotFound) {
		return nil
	}
	return err
}

// Logs returns a container's output (both streams, multiplexed frames stripped).
func (e *Engine) Logs(ctx context.Context, container string) string {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, e.base+"/containers/"+container+"/logs?stdout=1&stderr=1&tail=200", nil)
	if err != nil {
		return err.Error()
	}
	resp, err := e.http.Do(req)
	if err != nil {
		return err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var out []byte
	for len(b) >= 8 {
		n := int(b[4])<<24 | int(b[5])<<16 | int(b[6])<<8 | int(b[7])
		if 8+n > len(b) {
			break
		}
		out = append(out, b[8:8+n]...)
		b = b[8+n:]
	}
	return string(out)
}

// RemoveLabelled removes the containers (running or not), then the
// networks, with label ("k=v").
func (e *Engine) RemoveLabelled(ctx context.Context, label string) error {
	f, _ := json.Marshal(map[string][]string{"label": {label}})
	var cs, ns []struct {
		ID string `json:"Id"`
	}
	if err := e.Call(ctx, http.MethodGet, "/containers/json", url.Values{"all": {"1"}, "filters": {string(f)}}, nil, &cs); err != nil {
		return err
	}
	var errs []error
	for _, c := range cs {
		errs = append(errs, e.Remove(ctx, c.ID))
	}
	if err := e.Call(ctx, http.MethodGet, "/networks", url.Values{"filters": {string(f)}}, nil, &ns); err != nil {
		return errors.Join(append(errs, err)...)
	}
	for _, n := range ns {
		errs = append(errs, e.RemoveNetwork(ctx, n.ID))
	}
	return errors.Join(errs...)
}

// Labelled counts containers and networks with label ("k=v").
func (e *Engine) Labelled(ctx context.Context, label string) (containers, networks int, err error) {
	f, _ := json.Marshal(map[string][]string{"label": {label}})
	var cs, ns []json.RawMessage
	if err := e.Call(ctx, http.MethodGet, "/containers/json", url.Values{"all": {"1"}, "filters": {string(f)}}, nil, &cs); err != nil {
		return 0, 0, err
	}
	if err := e.Call(ctx, http.MethodGet, "/networks", url.Values{"filters": {string(f)}}, nil, &ns); err != nil {
		return 0, 0, err
	}
	return len(cs), len(ns), nil
}
