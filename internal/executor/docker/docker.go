// Package docker is a small client of the Docker Engine API (v1.41, the
// oldest engine we support) covering what executors need: images, job
// containers with their isolation settings, logs, and reaping leftovers.
// *Client implements executor.Runtime.
//
// It is written here instead of importing the moby client because executors
// need a dozen calls, must work against 20.10 engines, and the official
// module's dependency tree dwarfs the rest of horde.
package docker

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"
)

// APIVersion is the Engine API version the client speaks.
const APIVersion = "v1.41"

// ErrNotFound is returned for a missing image or container.
var ErrNotFound = errors.New("not found")

// Client talks to one Docker Engine.
type Client struct {
	http *http.Client
	base string
}

// New connects to host: "unix:///path", "tcp://host:port", or "" for
// $DOCKER_HOST or the default socket.
func New(host string) (*Client, error) {
	if host == "" {
		host = os.Getenv("DOCKER_HOST")
	}
	if host == "" {
		host = "unix:///var/run/docker.sock"
	}
	u, err := url.Parse(host)
	if err != nil {
		return nil, fmt.Errorf("docker host %q: %w", host, err)
	}
	switch u.Scheme {
	case "unix":
		path := u.Path
		tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		}, MaxIdleConnsPerHost: 16}
		return &Client{http: &http.Client{Transport: tr}, base: "http://docker/" + APIVersion}, nil
	case "tcp", "http":
		return &Client{http: &http.Client{}, base: "http://" + u.Host + "/" + APIVersion}, nil
	}
	return nil, fmt.Errorf("docker host %q: unsupported scheme %q", host, u.Scheme)
}

// APIError is an error answer from the engine.
type APIError struct {
	Status  int
	Message string
}

func (e *APIError) Error() string { return fmt.Sprintf("docker: %d: %s", e.Status, e.Message) }

func (c *Client) do(ctx context.Context, method, path string, q url.Values, body io.Reader, ctype string) (*http.Response, error) {
	u := c.base + path
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, method, u, body)
	if err != nil {
		return nil, err
	}
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("docker %s %s: %w", method, path, err)
	}
	if resp.StatusCode >= 400 {
		defer resp.Body.Close()
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		var m struct{ Message string }
		if json.Unmarshal(b, &m) != nil || m.Message == "" {
			m.Message = strings.TrimSpace(string(b))
		}
		if resp.StatusCode == http.StatusNotFound {
			return nil, fmt.Errorf("%w: %s", ErrNotFound, m.Message)
		}
		return nil, &APIError{Status: resp.StatusCode, Message: m.Message}
	}
	return resp, nil
}

func (c *Client) call(ctx context.Context, method, path string, q url.Values, in, out any) error {
	var body io.Reader
	ctype := ""
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body, ctype = bytes.NewReader(b), "application/json"
	}
	resp, err := c.do(ctx, method, path, q, body, ctype)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if out != nil {
		return json.NewDecoder(resp.Body).Decode(out)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	return nil
}

// Ping checks that the engine answers.
func (c *Client) Ping(ctx context.Context) error {
	resp, err := c.do(ctx, http.MethodGet, "/_ping", nil, nil, "")
	if err != nil {
		return err
	}
	resp.Body.Close()
	return nil
}

// Image is what ImageInspect reports.
type Image struct {
	ID          string   `json:"Id"`
	RepoTags    []string `json:"RepoTags"`
	RepoDigests []string `json:"RepoDigests"`
	Config      struct {
		Labels map[string]string
	}
}

// ImageInspect returns the image ref, or ErrNotFound.
func (c *Client) ImageInspect(ctx context.Context, ref string) (*Image, error) {
	var img Image
	if err := c.call(ctx, http.MethodGet, "/images/"+ref+"/json", nil, nil, &img); err != nil {
		return nil, err
	}
	return &img, nil
}

// jsonStream reads the engine's progress stream and returns its first error.
func jsonStream(r io.Reader, progress func(string)) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for sc.Scan() {
		var m struct {
			Stream, Status string
			Error          string `json:"error"`
		}
		if json.Unmarshal(sc.Bytes(), &m) != nil {
			continue
		}
		if m.Error != "" {
			return errors.New(strings.TrimSpace(m.Error))
		}
		if progress != nil {
			if s := strings.TrimSpace(m.Stream + m.Status); s != "" {
				progress(s)
			}
		}
	}
	return sc.Err()
}

// ImagePull pulls ref; progress (may be nil) gets status lines.
func (c *Client) ImagePull(ctx context.Context, ref string, progress func(string)) error {
	name, tag := ref, "latest"
	if i := strings.LastIndex(ref, "@"); i >= 0 {
		name, tag = ref[:i], ref[i+1:]
	} else if i := strings.LastIndex(ref, ":"); i > strings.LastIndex(ref, "/") {
		name, tag = ref[:i], ref[i+1:]
	}
	resp, err := c.do(ctx, http.MethodPost, "/images/create", url.Values{"fromImage": {name}, "tag": {tag}}, nil, "")
	if err != nil {
		return fmt.Errorf("pull %s: %w", ref, err)
	}
	defer resp.Body.Close()
	if err := jsonStream(resp.Body, progress); err != nil {
		return fmt.Errorf("pull %s: %w", ref, err)
	}
	return nil
}

// ImageBuild builds a tar build context (with a Dockerfile at its root) as tag.
func (c *Client) ImageBuild(ctx context.Context, contextTar io.Reader, tag string, progress func(string)) error {
	resp, err := c.do(ctx, http.MethodPost, "/build", url.Values{"t": {tag}, "rm": {"1"}, "forcerm": {"1"}}, contextTar, "application/x-tar")
	if err != nil {
		return fmt.Errorf("build %s: %w", tag, err)
	}
	defer resp.Body.Close()
	if err := jsonStream(resp.Body, progress); err != nil {
		return fmt.Errorf("build %s: %w", tag, err)
	}
	return nil
}

// ImageRemove deletes an image.
func (c *Client) ImageRemove(ctx context.Context, ref string) error {
	return c.call(ctx, http.MethodDelete, "/images/"+ref, url.Values{"force": {"1"}}, nil, nil)
}

// DeviceRequest asks for devices (GPUs) for a container.
type DeviceRequest struct {
	Driver       string
	Count        int
	DeviceIDs    []string `json:",omitempty"`
	Capabilities [][]string
}

// HostConfig is the subset of the engine's HostConfig horde sets.
type HostConfig struct {
	NetworkMode    string
	Binds          []string          `json:",omitempty"`
	Tmpfs          map[string]string `json:",omitempty"`
	Memory         int64             `json:",omitempty"`
	MemorySwap     int64             `json:",omitempty"`
	NanoCPUs       int64             `json:"NanoCpus,omitempty"`
	CpusetCpus     string            `json:",omitempty"`
	PidsLimit      *int64            `json:",omitempty"`
	ReadonlyRootfs bool              `json:",omitempty"`
	SecurityOpt    []string          `json:",omitempty"`
	CapDrop        []string          `json:",omitempty"`
	DeviceRequests []DeviceRequest   `json:",omitempty"`
	AutoRemove     bool              `json:",omitempty"`
	LogConfig      *LogConfig        `json:",omitempty"`
}

// LogConfig is where the engine keeps a container's stdout and stderr.
type LogConfig struct {
	Type   string
	Config map[string]string `json:",omitempty"`
}

// ContainerConfig is the subset of the engine's container config horde sets.
type ContainerConfig struct {
	Image           string
	Cmd             []string          `json:",omitempty"`
	Entrypoint      []string          `json:",omitempty"`
	Env             []string          `json:",omitempty"`
	Labels          map[string]string `json:",omitempty"`
	WorkingDir      string            `json:",omitempty"`
	User            string            `json:",omitempty"`
	NetworkDisabled bool              `json:",omitempty"`
	HostConfig      HostConfig
}

// ContainerCreate creates a container and returns its id.
func (c *Client) ContainerCreate(ctx context.Context, name string, cfg *ContainerConfig) (string, error) {
	var out struct {
		ID string `json:"Id"`
	}
	q := url.Values{}
	if name != "" {
		q.Set("name", name)
	}
	if err := c.call(ctx, http.MethodPost, "/containers/create", q, cfg, &out); err != nil {
		return "", fmt.Errorf("create container: %w", err)
	}
	return out.ID, nil
}

// ContainerStart starts a created container.
func (c *Client) ContainerStart(ctx context.Context, id string) error {
	if err := c.call(ctx, http.MethodPost, "/containers/"+id+"/start", nil, nil, nil); err != nil {
		return fmt.Errorf("start container: %w", err)
	}
	return nil
}

// ContainerWait blocks until the container exits and returns its exit code.
func (c *Client) ContainerWait(ctx context.Context, id string) (int, error) {
	var out struct {
		StatusCode int
		Error      *struct{ Message string }
	}
	if err := c.call(ctx, http.MethodPost, "/containers/"+id+"/wait", nil, nil, &out); err != nil {
		return -1, fmt.Errorf("wait container: %w", err)
	}
	if out.Error != nil && out.Error.Message != "" {
		return out.StatusCode, fmt.Errorf("wait container: %s", out.Error.Message)
	}
	return out.StatusCode, nil
}

// ContainerKill sends SIGKILL.
func (c *Client) ContainerKill(ctx context.Context, id string) error {
	return c.call(ctx, http.MethodPost, "/containers/"+id+"/kill", nil, nil, nil)
}

// ContainerRemove force-removes a container and its anonymous volumes.
func (c *Client) ContainerRemove(ctx context.Context, id string) error {
	err := c.call(ctx, http.MethodDelete, "/containers/"+id, url.Values{"force": {"1"}, "v": {"1"}}, nil, nil)
	if errors.Is(err, ErrNotFound) {
		return nil
	}
	return err
}

// ContainerState reports a container's state.
type ContainerState struct {
	Running   bool
	OOMKilled bool
	ExitCode  int
}

// ContainerInspect returns the state of a container.
func (c *Client) ContainerInspect(ctx context.Context, id string) (*ContainerState, error) {
	var out struct{ State ContainerState }
	if err := c.call(ctx, http.MethodGet, "/containers/"+id+"/json", nil, nil, &out); err != nil {
		return nil, err
	}
	return &out.State, nil
}

// ContainerIP returns the container's address on network.
func (c *Client) ContainerIP(ctx context.Context, id, network string) (string, error) {
	var out struct {
		NetworkSettings struct {
			Networks map[string]struct{ IPAddress string }
		}
	}
	if err := c.call(ctx, http.MethodGet, "/containers/"+id+"/json", nil, nil, &out); err != nil {
		return "", err
	}
	n, ok := out.NetworkSettings.Networks[network]
	if !ok || n.IPAddress == "" {
		return "", fmt.Errorf("container %.12s has no address on network %s", id, network)
	}
	return n.IPAddress, nil
}

// Container is a row of ContainerList.
type Container struct {
	ID      string `json:"Id"`
	Labels  map[string]string
	Created int64
	State   string
}

// ContainerList lists all containers (running or not) with the given label ("k" or "k=v").
func (c *Client) ContainerList(ctx context.Context, label string) ([]Container, error) {
	f, _ := json.Marshal(map[string][]string{"label": {label}})
	var out []Container
	if err := c.call(ctx, http.MethodGet, "/containers/json", url.Values{"all": {"1"}, "filters": {string(f)}}, nil, &out); err != nil {
		return nil, err
	}
	return out, nil
}

// ContainerLogs copies the container's stdout and stderr (demultiplexed) to w1 and w2.
func (c *Client) ContainerLogs(ctx context.Context, id string, stdout, stderr io.Writer) error {
	resp, err := c.do(ctx, http.MethodGet, "/containers/"+id+"/logs", url.Values{"stdout": {"1"}, "stderr": {"1"}}, nil, "")
	if err != nil {
		return fmt.Errorf("container logs: %w", err)
	}
	defer resp.Body.Close()
	return demux(resp.Body, stdout, stderr)
}

// demux splits the engine's multiplexed stream: 8-byte headers [stream,0,0,0,len32].
func demux(r io.Reader, stdout, stderr io.Writer) error {
	br := bufio.NewReader(r)
	var h [8]byte
	for {
		if _, err := io.ReadFull(br, h[:]); err != nil {
			if err == io.EOF {
				return nil
			}
			return fmt.Errorf("container logs: %w", err)
		}
		n := int64(binary.BigEndian.Uint32(h[4:]))
		w := stdout
		if h[0] == 2 {
			w = stderr
		}
		if _, err := io.CopyN(w, br, n); err != nil {
			return fmt.Errorf("container logs: %w", err)
		}
	}
}

// ServiceAddr returns "ip:port" of the container on network: where this
// process reaches a service the container serves on port.
func (c *Client) ServiceAddr(ctx context.Context, id, network string, port int) (string, error) {
	ip, err := c.ContainerIP(ctx, id, network)
	if err != nil {
		return "", err
	}
	return net.JoinHostPort(ip, strconv.Itoa(port)), nil
}

// Network is a row of NetworkList.
type Network struct {
	ID      string `json:"Id"`
	Name    string
	Labels  map[string]string
	Created time.Time
}

// NetworkList lists the networks with the given label ("k" or "k=v").
func (c *Client) NetworkList(ctx context.Context, label string) ([]Network, error) {
	f, _ := json.Marshal(map[string][]string{"label": {label}})
	var out []Network
	if err := c.call(ctx, http.MethodGet, "/networks", url.Values{"filters": {string(f)}}, nil, &out); err != nil {
		return nil, err
	}
	return out, nil
}

// NetworkCreate creates a bridge network; internal networks have no egress.
func (c *Client) NetworkCreate(ctx context.Context, name string, internal bool, labels map[string]string) (string, error) {
	var out struct {
		ID string `json:"Id"`
	}
	in := map[string]any{"Name": name, "Driver": "bridge", "Internal": internal, "CheckDuplicate": true, "Labels": labels}
	if err := c.call(ctx, http.MethodPost, "/networks/create", nil, in, &out); err != nil {
		return "", fmt.Errorf("create network: %w", err)
	}
	return out.ID, nil
}

// NetworkConnect attaches container (id or name) to network.
func (c *Client) NetworkConnect(ctx context.Context, network, container string) error {
	if err := c.call(ctx, http.MethodPost, "/networks/"+network+"/connect", nil, map[string]any{"Container": container}, nil); err != nil {
		return fmt.Errorf("connect %s to network %s: %w", container, network, err)
	}
	return nil
}

// NetworkDisconnect detaches container from network, forcibly.
func (c *Client) NetworkDisconnect(ctx context.Context, network, container string) error {
	err := c.call(ctx, http.MethodPost, "/networks/"+network+"/disconnect", nil, map[string]any{"Container": container, "Force": true}, nil)
	if err != nil && !errors.Is(err, ErrNotFound) {
		return fmt.Errorf("disconnect %s from network %s: %w", container, network, err)
	}
	return nil
}

// NetworkRemove deletes a network.
func (c *Client) NetworkRemove(ctx context.Context, id string) error {
	err := c.call(ctx, http.MethodDelete, "/networks/"+id, nil, nil, nil)
	if errors.Is(err, ErrNotFound) {
		return nil
	}
	return err
}

// Since is a helper for reaping: the container's age.
func (ct Container) Since(now time.Time) time.Duration { return now.Sub(time.Unix(ct.Created, 0)) }

// Since is a helper for reaping: the network's age.
func (n Network) Since(now time.Time) time.Duration { return now.Sub(n.Created) }
