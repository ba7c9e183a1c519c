package cli

import (
	"archive/zip"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/horde-compute/horde/client"
	"github.com/horde-compute/horde/internal/blob"
	"github.com/horde-compute/horde/protocol"
	"github.com/horde-compute/horde/receipt"
)

// listFlag collects a repeated flag.
type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

type clientFlags struct {
	wallet      walletFlags
	facilitator string
}

func (c *clientFlags) register(fs *flag.FlagSet) {
	c.wallet.register(fs, "client")
	fs.StringVar(&c.facilitator, "facilitator", "http://127.0.0.1:9000", "facilitator URL")
}

func (c *clientFlags) client() (*client.Client, error) {
	k, err := c.wallet.load()
	if err != nil {
		return nil, err
	}
	return client.New(c.facilitator, k), nil
}

const volumeHelp = `input volume, repeatable (several make a multi_volume):
  inline:PATH              a local file or directory, zipped into the request
  zip_url:URL              a zip archive to download and unpack
  single_file:REL=URL      one file to download to /volume/REL
  huggingface:REPO[@REV]   a Hugging Face repository snapshot`

const uploadHelp = `where outputs go, repeatable (several make a multi_upload):
  zip_put:URL | zip_post:URL     all of /output as one zip
  put:REL=URL | post:REL=URL     one file /output/REL`

// parseVolume reads one --volume value.
func parseVolume(s string) (protocol.Volume, error) {
	kind, val, ok := strings.Cut(s, ":")
	if !ok {
		return protocol.Volume{}, usageErr("--volume %q: want TYPE:VALUE", s)
	}
	switch kind {
	case "inline":
		raw, err := zipPath(val)
		if err != nil {
			return protocol.Volume{}, usageErr("--volume %q: %v", s, err)
		}
		return protocol.Volume{VolumeType: protocol.VolumeInline, Contents: base64.StdEncoding.EncodeToString(raw)}, nil
	case "zip_url":
		return protocol.Volume{VolumeType: protocol.VolumeZipURL, Contents: val}, nil
	case "single_file":
		rel, url, ok := strings.Cut(val, "=")
		if !ok {
			return protocol.Volume{}, usageErr("--volume %q: want single_file:REL=URL", s)
		}
		return protocol.Volume{VolumeType: protocol.VolumeSingleFile, URL: url, RelativePath: rel}, nil
	case "huggingface":
		repo, rev, _ := strings.Cut(val, "@")
		return protocol.Volume{VolumeType: protocol.VolumeHuggingFace, RepoID: repo, Revision: rev}, nil
	}
	return protocol.Volume{}, usageErr("--volume %q: unknown type %q (inline, zip_url, single_file, huggingface)", s, kind)
}

// zipPath zips a file or directory for an inline volume.
func zipPath(path string) ([]byte, error) {
	info, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if info.IsDir() {
		return blob.ZipDir(path, blob.DefaultLimits())
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	w, _ := zw.Create(filepath.Base(path))
	w.Write(b)
	zw.Close()
	return buf.Bytes(), nil
}

func parseUpload(s string) (protocol.OutputUpload, error) {
	kind, val, ok := strings.Cut(s, ":")
	if !ok {
		return protocol.OutputUpload{}, usageErr("--output-upload %q: want TYPE:VALUE", s)
	}
	single := func(t string) (protocol.OutputUpload, error) {
		rel, url, ok := strings.Cut(val, "=")
		if !ok {
			return protocol.OutputUpload{}, usageErr("--output-upload %q: want %s:REL=URL", s, kind)
		}
		return protocol.OutputUpload{OutputUploadType: t, URL: url, RelativePath: rel}, nil
	}
	switch kind {
	case "zip_put":
		return protocol.OutputUpload{OutputUploadType: protocol.UploadZipPut, URL: val}, nil
	case "zip_post":
		return protocol.OutputUpload{OutputUploadType: protocol.UploadZipPost, URL: val}, nil
	case "put":
		return single(protocol.UploadSinglePut)
	case "post":
		return single(protocol.UploadSinglePost)
	}
	return protocol.OutputUpload{}, usageErr("--output-upload %q: unknown type %q", s, kind)
}

// buildSpec assembles a job spec from parsed flags.
func buildSpec(image, class string, volumes, uploads, envs []string, timeout, download, upload time.Duration, args []string) (*protocol.JobSpec, error) {
	spec := &protocol.JobSpec{ExecutorClass: class, DockerImage: image, Args: args, Env: map[string]string{},
		ExecutionTimeLimit: int(timeout.Seconds()), DownloadTimeLimit: int(download.Seconds()), UploadTimeLimit: int(upload.Seconds())}
	if image == "" {
		return nil, usageErr("--image is required")
	}
	if spec.ExecutionTimeLimit < 1 {
		return nil, usageErr("--timeout must be at least 1s")
	}
	for _, kv := range envs {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return nil, usageErr("--env %q: want KEY=VALUE", kv)
		}
		spec.Env[k] = v
	}
	var vols []protocol.Volume
	for _, s := range volumes {
		v, err := parseVolume(s)
		if err != nil {
			return nil, err
		}
		vols = append(vols, v)
	}
	switch len(vols) {
	case 0:
	case 1:
		spec.Volume = &vols[0]
	default:
		spec.Volume = &protocol.Volume{VolumeType: protocol.VolumeMulti, Volumes: vols}
	}
	var ups []protocol.OutputUpload
	for _, s := range uploads {
		u, err := parseUpload(s)
		if err != nil {
			return nil, err
		}
		ups = append(ups, u)
	}
	switch {
	case len(ups) == 1:
		spec.OutputUpload = &ups[0]
	case len(ups) > 1:
		spec.OutputUpload = &protocol.OutputUpload{OutputUploadType: protocol.UploadMulti}
		for _, u := range ups {
			if u.OutputUploadType == protocol.UploadZipPut || u.OutputUploadType == protocol.UploadZipPost {
				if spec.OutputUpload.SystemOutput != nil {
					return nil, usageErr("at most one zip_put/zip_post with other uploads")
				}
				spec.OutputUpload.SystemOutput = &u
				continue
			}
			spec.OutputUpload.Uploads = append(spec.OutputUpload.Uploads, u)
		}
	}
	if err := spec.Validate(); err != nil {
		return nil, usageErr("%v", err)
	}
	return spec, nil
}

func (e *env) jobRun(args []string) error {
	fs := e.flags("job run")
	var c clientFlags
	c.register(fs)
	image := fs.String("image", "", "Docker image of the job (required)")
	class := fs.String("executor-class", protocol.ClassTest, "executor class")
	timeout := fs.Duration("timeout", 5*time.Minute, "execution time limit")
	download := fs.Duration("download-timeout", 5*time.Minute, "volume download time limit")
	upload := fs.Duration("upload-timeout", 5*time.Minute, "output upload time limit")
	asJSON := fs.Bool("json", false, "print one JSON object instead of progress and text")
	artifactsDir := fs.String("artifacts-dir", "", "a directory in the container (e.g. /artifacts) whose files, each under 1 MB,\ncome back with the result")
	save := fs.String("save-artifacts", "", "write the artifacts that came back into this local directory")
	var volumes, uploads, envs listFlag
	fs.Var(&volumes, "volume", volumeHelp)
	fs.Var(&uploads, "output-upload", uploadHelp)
	fs.Var(&envs, "env", "environment variable KEY=VALUE, repeatable")
	cmd, err := e.parse(fs, args)
	if err != nil {
		return err
	}
	spec, err := buildSpec(*image, *class, volumes, uploads, envs, *timeout, *download, *upload, cmd)
	if err != nil {
		return err
	}
	if *artifactsDir != "" {
		if err := protocol.CheckArtifactsDir(*artifactsDir); err != nil {
			return usageErr("--artifacts-dir: %v", err)
		}
		spec.ArtifactsDir = *artifactsDir
	}
	if *save != "" && spec.ArtifactsDir == "" {
		return usageErr("--save-artifacts needs --artifacts-dir: the directory in the container they come from")
	}
	cl, err := c.client()
	if err != nil {
		return err
	}
	return e.runJob(e.ctx, cl, spec, runOptions{json: *asJSON, saveArtifacts: *save})
}

// runOptions say how 'job run' shows a job and what it keeps of it.
type runOptions struct {
	json          bool
	saveArtifacts string // local directory, or ""
}

// runOutput is what 'horde job run --json' prints: the job as 'horde job
// status --json' shows it, and what it returned at the top level.
type runOutput struct {
	*protocol.Job
	Stdout     string `json:"stdout"`
	Stderr     string `json:"stderr"`
	ExitStatus *int   `json:"exit_status,omitempty"`
	// Reason says why a job that did not complete ended.
	Reason string `json:"reason,omitempty"`
	// Artifacts are base64, keyed by their path in the container.
	Artifacts      map[string]string `json:"artifacts"`
	UploadResults  map[string]string `json:"upload_results"`
	SavedArtifacts []string          `json:"saved_artifacts,omitempty"`
}

func newRunOutput(j *protocol.Job, res *client.JobResult, saved []string) *runOutput {
	out := &runOutput{Job: j, Stdout: res.Stdout, Stderr: res.Stderr, ExitStatus: res.ExitStatus,
		Artifacts: map[string]string{}, UploadResults: res.UploadResults, SavedArtifacts: saved}
	if j.Status != protocol.StatusCompleted {
		out.Reason = reason(lastEntry(j))
	}
	for p, b := range res.Artifacts {
		out.Artifacts[p] = base64.StdEncoding.EncodeToString(b)
	}
	return out
}

// runJob submits spec, shows progress, prints the result; a job that did not
// complete is an error with exit code 1.
func (e *env) runJob(ctx context.Context, cl *client.Client, spec *protocol.JobSpec, opts runOptions) error {
	asJSON := opts.json
	start := time.Now()
	job, err := cl.CreateJob(ctx, spec)
	if err != nil {
		return err
	}
	if !asJSON {
		fmt.Fprintf(e.stderr, "job %s submitted (%s on %s)\n", job.UUID, spec.DockerImage, spec.ExecutorClass)
	}
	done, err := cl.Watch(ctx, job.UUID, func(s protocol.StatusEntry) {
		if !asJSON {
			fmt.Fprintf(e.stderr, "  [%6.2fs] %s\n", time.Since(start).Seconds(), describe(s))
		}
	})
	if err != nil {
		if ctx.Err() != nil {
			fmt.Fprintf(e.stderr, "stopped watching; the job goes on. Cancel it with 'horde job cancel %s'\n", job.UUID)
		}
		return err
	}
	res, err := client.ResultOf(done)
	if err != nil {
		return err
	}
	var saved []string
	var saveErr error
	if opts.saveArtifacts != "" && len(res.Artifacts) > 0 {
		saved, saveErr = res.SaveArtifacts(opts.saveArtifacts, spec.ArtifactsDir)
	}
	if asJSON {
		enc := json.NewEncoder(e.stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(newRunOutput(done, res, saved)); err != nil {
			return err
		}
	} else {
		printResult(e.stdout, done, spec.OutputUpload, saved)
	}
	if saveErr != nil {
		return &ExitError{Code: 1, Err: saveErr}
	}
	return jobErr(done)
}

// jobErr turns a job that did not complete into an error (exit code 1).
func jobErr(j *protocol.Job) error {
	if j.Status == protocol.StatusCompleted {
		return nil
	}
	return &ExitError{Code: 1, Err: fmt.Errorf("job %s %s: %s", j.UUID, j.Status, reason(lastEntry(j)))}
}

func lastEntry(j *protocol.Job) protocol.StatusEntry {
	if len(j.StatusHistory) == 0 {
		return protocol.StatusEntry{Status: j.Status}
	}
	return j.StatusHistory[len(j.StatusHistory)-1]
}

// reason says why a job ended, with the stage when there is one.
func reason(e protocol.StatusEntry) string {
	m := e.Metadata
	if m == nil {
		return string(e.Status)
	}
	// specific prefers horde's reason code to upstream's enum, which says
	// "unknown" for most causes.
	specific := func(enum string, ctx map[string]any) string {
		if code := protocol.ReasonCode(ctx); code != "" {
			return code
		}
		return enum
	}
	switch {
	case m.JobFailureDetails != nil:
		d := m.JobFailureDetails
		return fmt.Sprintf("failed at stage %s: %s", d.Stage, d.Message)
	case m.HordeFailureDetails != nil:
		d := m.HordeFailureDetails
		return fmt.Sprintf("horde failure (%s, reported by %s): %s", specific(string(d.Reason), d.Context), d.ReportedBy, d.Message)
	case m.JobRejectionDetails != nil:
		d := m.JobRejectionDetails
		return fmt.Sprintf("rejected by %s (%s): %s", d.RejectedBy, specific(string(d.Reason), d.Context), d.Message)
	case m.Comment != "":
		return m.Comment
	}
	return string(e.Status)
}

// describe is one progress line.
func describe(s protocol.StatusEntry) string {
	out := string(s.Status)
	if s.Metadata == nil {
		return out
	}
	if s.Status == protocol.StatusAccepted && s.Metadata.MinerHotkey != "" {
		return out + " by miner " + s.Metadata.MinerHotkey
	}
	if s.Status.Terminal() && s.Status != protocol.StatusCompleted {
		return out + ": " + reason(s)
	}
	if s.Metadata.Comment != "" {
		return out + " (" + s.Metadata.Comment + ")"
	}
	return out
}

// printResult prints what a finished job returned. up, when known, names
// where the outputs went; saved lists the artifacts written locally.
func printResult(w io.Writer, j *protocol.Job, up *protocol.OutputUpload, saved []string) {
	last := lastEntry(j)
	took := last.CreatedAt.Sub(j.CreatedAt)
	fmt.Fprintf(w, "job %s %s in %.2fs\n", j.UUID, j.Status, took.Seconds())
	m := last.Metadata
	if m == nil {
		return
	}
	if m.MinerHotkey != "" {
		fmt.Fprintf(w, "  miner: %s\n", m.MinerHotkey)
	}
	if j.Status != protocol.StatusCompleted {
		fmt.Fprintf(w, "  reason: %s\n", reason(last))
	}
	if len(m.Timings) > 0 {
		fmt.Fprintf(w, "  stages:")
		for _, k := range []string{"reserve", "startup", "download", "execute", "upload"} {
			if ms, ok := m.Timings["validator:"+k]; ok {
				fmt.Fprintf(w, " %s %dms", k, ms)
			}
		}
		fmt.Fprintln(w)
	}
	res, err := client.ResultOf(j)
	if err != nil {
		fmt.Fprintf(w, "  (result unreadable: %v)\n", err)
	}
	if res.Stdout != "" {
		fmt.Fprintf(w, "── stdout ──\n%s", withNewline(res.Stdout))
	}
	if res.Stderr != "" {
		fmt.Fprintf(w, "── stderr ──\n%s", withNewline(res.Stderr))
	}
	if len(res.UploadResults) > 0 {
		targets := uploadTargets(up)
		keys := make([]string, 0, len(res.UploadResults))
		for k := range res.UploadResults {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		fmt.Fprintln(w, "uploads:")
		for _, k := range keys {
			if url, ok := targets[k]; ok {
				fmt.Fprintf(w, "  %s → %s (HTTP %s)\n", k, url, res.UploadResults[k])
			} else {
				fmt.Fprintf(w, "  %s → HTTP %s\n", k, res.UploadResults[k])
			}
		}
	}
	if paths := res.ArtifactPaths(); len(paths) > 0 {
		fmt.Fprintln(w, "artifacts:")
		for i, p := range paths {
			line := fmt.Sprintf("  %s (%d bytes)", p, len(res.Artifacts[p]))
			if i < len(saved) {
				line += " → " + saved[i]
			}
			fmt.Fprintln(w, line)
		}
	}
	if len(m.Receipts) > 0 {
		fmt.Fprintln(w, "receipts:")
		for _, raw := range m.Receipts {
			var r receipt.Receipt
			if err := json.Unmarshal(raw, &r); err != nil {
				fmt.Fprintf(w, "  (unreadable receipt: %v)\n", err)
				continue
			}
			status := "validator signature verified"
			if err := r.Verify(); err != nil {
				status = "INVALID: " + err.Error()
			}
			fmt.Fprintf(w, "  %-20s %s\n", r.Type, status)
		}
	}
}

// uploadTargets maps the keys of a job's upload results to where each
// upload went: the URL without credentials, query or fragment, so that no
// presigned secret is printed.
func uploadTargets(up *protocol.OutputUpload) map[string]string {
	out := map[string]string{}
	var walk func(u *protocol.OutputUpload, prefix string)
	walk = func(u *protocol.OutputUpload, prefix string) {
		switch u.OutputUploadType {
		case protocol.UploadZipPut, protocol.UploadZipPost:
			out[prefix+"outputs.zip"] = redactURL(u.URL)
		case protocol.UploadSinglePut, protocol.UploadSinglePost:
			out[prefix+u.RelativePath] = redactURL(u.URL)
		case protocol.UploadMulti:
			for i := range u.Uploads {
				walk(&u.Uploads[i], prefix)
			}
			if u.SystemOutput != nil {
				walk(u.SystemOutput, prefix+"system/")
			}
		}
	}
	if up != nil {
		walk(up, "")
	}
	return out
}

// redactURL returns s without user info, query and fragment.
func redactURL(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return "(a URL that does not parse)"
	}
	u.User, u.RawQuery, u.ForceQuery, u.Fragment, u.RawFragment = nil, "", false, "", ""
	return u.String()
}

func withNewline(s string) string {
	if strings.HasSuffix(s, "\n") {
		return s
	}
	return s + "\n"
}

func (e *env) jobStatus(args []string) error {
	fs := e.flags("job status")
	var c clientFlags
	c.register(fs)
	asJSON := fs.Bool("json", false, "print JSON")
	pos, err := e.parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usageErr("horde job status JOB_ID")
	}
	cl, err := c.client()
	if err != nil {
		return err
	}
	j, err := cl.Job(e.ctx, pos[0])
	if err != nil {
		return err
	}
	if *asJSON {
		return json.NewEncoder(e.stdout).Encode(j)
	}
	for _, s := range j.StatusHistory {
		fmt.Fprintf(e.stdout, "%s  %s\n", s.CreatedAt.Local().Format("15:04:05.000"), describe(s))
	}
	if j.Status.Terminal() {
		printResult(e.stdout, j, nil, nil)
	}
	return nil
}

func (e *env) jobList(args []string) error {
	fs := e.flags("job list")
	var c clientFlags
	c.register(fs)
	limit := fs.Int("limit", 20, "how many")
	offset := fs.Int("offset", 0, "skip this many (newest first)")
	asJSON := fs.Bool("json", false, "print JSON")
	if err := e.parseFlags(fs, args); err != nil {
		return err
	}
	cl, err := c.client()
	if err != nil {
		return err
	}
	l, err := cl.Jobs(e.ctx, *offset, *limit)
	if err != nil {
		return err
	}
	if *asJSON {
		return json.NewEncoder(e.stdout).Encode(l)
	}
	fmt.Fprintf(e.stdout, "%-36s  %-15s  %-19s  %s\n", "JOB", "STATUS", "CREATED", "IMAGE")
	for _, j := range l.Results {
		fmt.Fprintf(e.stdout, "%-36s  %-15s  %-19s  %s\n", j.UUID, j.Status, j.CreatedAt.Local().Format("2006-01-02 15:04:05"), j.DockerImage)
	}
	fmt.Fprintf(e.stdout, "%d of %d\n", len(l.Results), l.Count)
	return nil
}

func (e *env) jobCancel(args []string) error {
	fs := e.flags("job cancel")
	var c clientFlags
	c.register(fs)
	pos, err := e.parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usageErr("horde job cancel JOB_ID")
	}
	cl, err := c.client()
	if err != nil {
		return err
	}
	if _, err := cl.Cancel(e.ctx, pos[0]); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(e.ctx, 10*time.Second)
	defer cancel()
	j, err := cl.Watch(ctx, pos[0], func(protocol.StatusEntry) {})
	if errors.Is(err, context.DeadlineExceeded) {
		fmt.Fprintln(e.stdout, "cancel requested; the job has not ended yet")
		return nil
	}
	if err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "job %s %s\n", j.UUID, j.Status)
	return nil
}
