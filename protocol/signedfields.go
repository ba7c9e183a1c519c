package protocol

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/horde-compute/horde/pyjson"
	"github.com/horde-compute/horde/sig"
)

// This file: SignedFields, the bytes a client's job signature covers, as
// upstream ComputeHorde computes them (its SDK, facilitator and validator),
// so that one signature is checked by every horde and upstream party alike.
//
// SignedFields is a JSON object with exactly these keys, in this order:
//
//	executor_class, docker_image, args, env, use_gpu, artifacts_dir,
//	on_trusted_miner, download_time_limit, execution_time_limit,
//	upload_time_limit, streaming_start_time_limit, streaming_details,
//	volumes, uploads
//
// written compactly (no spaces; strings escape only '"', '\\' and control
// characters; non-ASCII stays raw UTF-8); env keeps the client's key order;
// streaming_details is null or {"public_key": …, "executor_ip": …|null};
// volumes and uploads are lists of volume and upload objects. Call that
// text J. The signed payload is Python's json.dumps(J): J as a JSON string
// literal, ASCII only (SignedPayload). The client's hotkey signs
// blake2b-512(timestamp_ns as 8 bytes big-endian ‖ payload) (SignedMessage).
//
// Two parties compute J:
//   - the facilitator, from the client's request body (SignedFieldsOfRequest):
//     missing keys take defaults (docker_image "", args [], env {}, use_gpu
//     false, artifacts_dir "" also for null, on_trusted_miner false, limits
//     0; horde also reads a null args, env, volumes or uploads as absent,
//     where upstream fails), and each element of volumes and uploads is written as the client
//     sent it (its keys in its order);
//   - a validator, from V2JobRequest: volumes are volume.volumes when it is a
//     multi_volume, [volume] for another volume, [] for null; uploads are
//     output_upload.uploads for a multi_upload (system_output is not signed),
//     [output_upload] for another upload, [] for null. Each element is
//     re-written with every field of its type in upstream's declaration
//     order, null for an absent optional field, unknown fields dropped
//     (canonicalVolume, canonicalUpload).
//
// A multi_upload's system_output (where horde's executor uploads the job's
// full stdout and stderr) is part of upstream's V2JobRequest but of no
// signature: upstream's SDK cannot ask for one; horde's client sends it as
// "horde_system_output" in the request body, unsigned like
// target_validator_hotkey.
//
// The two agree only when the client sent each element in that canonical
// form, which upstream's SDK does; horde's facilitator refuses a job whose
// elements are not (ParseJobRequest), rather than pass on a job no
// validator can verify. job_namespace, target_validator_hotkey and the
// volume/upload wrappers are not signed.

// signedKeys are the keys of SignedFields, in order.
var signedKeys = []string{"executor_class", "docker_image", "args", "env", "use_gpu", "artifacts_dir",
	"on_trusted_miner", "download_time_limit", "execution_time_limit", "upload_time_limit",
	"streaming_start_time_limit", "streaming_details", "volumes", "uploads"}

// SignedPayload returns Python's json.dumps(j) for the SignedFields text j:
// the payload a client's job signature covers (with the timestamp, see
// SignedMessage).
func SignedPayload(j []byte) ([]byte, error) {
	return pyjson.Marshal(string(j))
}

// fieldKind is the type of a volume or upload field.
type fieldKind int

const (
	kString       fieldKind = iota // str, required
	kStringOrNull                  // str | None = None
	kMapOrNull                     // Mapping[str, str] | None = None
	kPatterns                      // str | list[str] | None = None
)

type canonField struct {
	name string
	kind fieldKind
}

// The fields of each volume and upload type after its type key, in
// upstream's declaration order (compute_horde_core volume and output_upload
// models).
var (
	volumeFields = map[string][]canonField{
		VolumeInline:      {{"contents", kString}, {"relative_path", kStringOrNull}},
		VolumeZipURL:      {{"contents", kString}, {"relative_path", kStringOrNull}},
		VolumeSingleFile:  {{"url", kString}, {"relative_path", kString}},
		VolumeHuggingFace: {{"repo_id", kString}, {"repo_type", kStringOrNull}, {"revision", kStringOrNull}, {"relative_path", kStringOrNull}, {"allow_patterns", kPatterns}, {"token", kStringOrNull}},
	}
	uploadFields = map[string][]canonField{
		UploadSinglePost: {{"url", kString}, {"form_fields", kMapOrNull}, {"relative_path", kString}, {"signed_headers", kMapOrNull}},
		UploadSinglePut:  {{"url", kString}, {"relative_path", kString}, {"signed_headers", kMapOrNull}},
		UploadZipPost:    {{"url", kString}, {"form_fields", kMapOrNull}},
		UploadZipPut:     {{"url", kString}},
	}
)

// canonicalElement re-writes a volume or upload object as upstream dumps
// its model: the type key, then every field of the type in order.
func canonicalElement(e ovalue, typeKey string, table map[string][]canonField, what string) (ovalue, error) {
	if e.kind != '{' {
		return ovalue{}, fmt.Errorf("%s must be an object", what)
	}
	tv, ok := e.get(typeKey)
	if !ok {
		return ovalue{}, fmt.Errorf("%s has no %s", what, typeKey)
	}
	t, err := tv.asString(what + "." + typeKey)
	if err != nil {
		return ovalue{}, err
	}
	fields, ok := table[t]
	if !ok {
		return ovalue{}, fmt.Errorf("%s: %s %q is not allowed here", what, typeKey, t)
	}
	out := oobj(omember{typeKey, ostr(t)})
	for _, f := range fields {
		name := what + "." + f.name
		v, present := e.get(f.name)
		if !present || (v.kind == 'n' && f.kind != kString) {
			if f.kind == kString {
				return ovalue{}, fmt.Errorf("%s is required", name)
			}
			out.obj = append(out.obj, omember{f.name, onull})
			continue
		}
		switch f.kind {
		case kString, kStringOrNull:
			_, err = v.asString(name)
		case kMapOrNull:
			_, _, err = v.asStringMap(name)
		case kPatterns:
			if v.kind != 's' {
				_, err = v.asStrings(name)
			}
		}
		if err != nil {
			return ovalue{}, err
		}
		out.obj = append(out.obj, omember{f.name, v})
	}
	return out, nil
}

func canonicalVolume(e ovalue, what string) (ovalue, error) {
	return canonicalElement(e, "volume_type", volumeFields, what)
}

func canonicalUpload(e ovalue, what string) (ovalue, error) {
	return canonicalElement(e, "output_upload_type", uploadFields, what)
}

// defaults of SignedFields keys missing from a client's request body.
func sdkDefault(key string) ovalue {
	switch key {
	case "docker_image", "artifacts_dir":
		return ostr("")
	case "args", "volumes", "uploads":
		return ovalue{kind: '[', arr: []ovalue{}}
	case "env":
		return oobj()
	case "use_gpu", "on_trusted_miner":
		return obool(false)
	case "streaming_details":
		return onull
	}
	return oint(0) // the limits
}

// streamingDetails writes a streaming_details object as upstream's model
// dumps it: {"public_key", "executor_ip"}.
func streamingDetails(v ovalue, what string) (ovalue, error) {
	if v.kind != '{' {
		return ovalue{}, fmt.Errorf("%s must be an object", what)
	}
	pk, ok := v.get("public_key")
	if !ok {
		return ovalue{}, fmt.Errorf("%s.public_key is required", what)
	}
	if _, err := pk.asString(what + ".public_key"); err != nil {
		return ovalue{}, err
	}
	ip, ok := v.get("executor_ip")
	if !ok {
		ip = onull
	} else if ip.kind != 'n' {
		if _, err := ip.asString(what + ".executor_ip"); err != nil {
			return ovalue{}, err
		}
	}
	return oobj(omember{"public_key", pk}, omember{"executor_ip", ip}), nil
}

// checkSignedValue checks the type of a SignedFields value.
func checkSignedValue(key string, v ovalue) error {
	var err error
	switch key {
	case "executor_class", "docker_image", "artifacts_dir":
		_, err = v.asString(key)
	case "args":
		_, err = v.asStrings(key)
	case "env":
		_, _, err = v.asStringMap(key)
	case "use_gpu", "on_trusted_miner":
		_, err = v.asBool(key)
	case "download_time_limit", "execution_time_limit", "upload_time_limit", "streaming_start_time_limit":
		_, err = v.asInt(key)
	case "volumes", "uploads":
		if v.kind != '[' {
			err = fmt.Errorf("%s must be a list", key)
		}
	}
	return err
}

// signedFromRequest computes SignedFields from a client's request body
// object, as upstream's SDK and facilitator do.
func signedFromRequest(body ovalue) (ovalue, error) {
	if body.kind != '{' {
		return ovalue{}, fmt.Errorf("the job must be a JSON object")
	}
	j := oobj()
	for _, k := range signedKeys {
		v, ok := body.get(k)
		switch {
		case k == "executor_class" && !ok:
			return ovalue{}, fmt.Errorf("executor_class is required")
		case k == "artifacts_dir" && ok && v.kind == 'n':
			v = ostr("") // upstream: value or ""
		case ok && v.kind == 'n' && (k == "args" || k == "env" || k == "volumes" || k == "uploads"):
			v = sdkDefault(k) // upstream refuses these nulls; horde reads them as absent
		case k == "streaming_details" && ok:
			var err error
			if v, err = streamingDetails(v, k); err != nil {
				return ovalue{}, err
			}
		case !ok:
			v = sdkDefault(k)
		}
		if err := checkSignedValue(k, v); err != nil {
			return ovalue{}, err
		}
		j.obj = append(j.obj, omember{k, v})
	}
	return j, nil
}

// signedFromJobRequest computes SignedFields from a V2JobRequest object, as
// upstream's validator does.
func signedFromJobRequest(m ovalue) (ovalue, error) {
	j := oobj()
	for _, k := range signedKeys {
		var v ovalue
		var err error
		switch k {
		case "use_gpu":
			if v, _ = m.get(k); v.kind == 0 {
				v = obool(true) // V2JobRequest's default
			}
		case "on_trusted_miner":
			if v, _ = m.get(k); v.kind == 0 {
				v = obool(false)
			}
		case "artifacts_dir":
			if v, _ = m.get(k); v.kind == 0 || v.kind == 'n' {
				v = ostr("")
			}
		case "streaming_details":
			if v, _ = m.get(k); v.kind == 0 || v.kind == 'n' {
				v = onull
			} else if v, err = streamingDetails(v, k); err != nil {
				return ovalue{}, err
			}
		case "volumes":
			if v, err = volumesOf(m); err != nil {
				return ovalue{}, err
			}
		case "uploads":
			if v, err = uploadsOf(m); err != nil {
				return ovalue{}, err
			}
		default:
			var ok bool
			if v, ok = m.get(k); !ok {
				return ovalue{}, fmt.Errorf("%s is required", k)
			}
		}
		if err := checkSignedValue(k, v); err != nil {
			return ovalue{}, err
		}
		j.obj = append(j.obj, omember{k, v})
	}
	return j, nil
}

// volumesOf lists the volumes of a V2JobRequest's volume field, canonical.
func volumesOf(m ovalue) (ovalue, error) {
	out := ovalue{kind: '[', arr: []ovalue{}}
	v, ok := m.get("volume")
	if !ok || v.kind == 'n' {
		return out, nil
	}
	list := []ovalue{v}
	if v.kind == '{' {
		if t, _ := v.get("volume_type"); t.kind == 's' && t.s == VolumeMulti {
			vs, ok := v.get("volumes")
			if !ok || vs.kind != '[' {
				return ovalue{}, fmt.Errorf("volume.volumes must be a list")
			}
			list = vs.arr
		}
	}
	for i, e := range list {
		c, err := canonicalVolume(e, fmt.Sprintf("volumes[%d]", i))
		if err != nil {
			return ovalue{}, err
		}
		out.arr = append(out.arr, c)
	}
	return out, nil
}

// uploadsOf lists the uploads of a V2JobRequest's output_upload field,
// canonical; a multi_upload's system_output is not among them.
func uploadsOf(m ovalue) (ovalue, error) {
	out := ovalue{kind: '[', arr: []ovalue{}}
	u, ok := m.get("output_upload")
	if !ok || u.kind == 'n' {
		return out, nil
	}
	if u.kind == '{' {
		if t, _ := u.get("output_upload_type"); t.kind == 's' && t.s == UploadMulti {
			us, ok := u.get("uploads")
			if !ok || us.kind != '[' {
				return ovalue{}, fmt.Errorf("output_upload.uploads must be a list")
			}
			for i, e := range us.arr {
				c, err := canonicalElement(e, "output_upload_type", singleUploads, fmt.Sprintf("uploads[%d]", i))
				if err != nil {
					return ovalue{}, err
				}
				out.arr = append(out.arr, c)
			}
			return out, nil
		}
	}
	c, err := canonicalUpload(u, "uploads[0]")
	if err != nil {
		return ovalue{}, err
	}
	out.arr = append(out.arr, c)
	return out, nil
}

// singleUploads are the uploads a multi_upload may list.
var singleUploads = map[string][]canonField{UploadSinglePost: uploadFields[UploadSinglePost], UploadSinglePut: uploadFields[UploadSinglePut]}

// SignedFieldsOfRequest returns SignedFields (J) of a job creation request
// body, as upstream's SDK and facilitator compute it.
func SignedFieldsOfRequest(body []byte) ([]byte, error) {
	v, err := parseOrdered(body)
	if err != nil {
		return nil, fmt.Errorf("job body: %w", err)
	}
	j, err := signedFromRequest(v)
	if err != nil {
		return nil, fmt.Errorf("job body: %w", err)
	}
	return j.compactBytes()
}

// requestKeys are the keys a job creation body may have (upstream's
// writable job fields); horde refuses others rather than drop them unseen.
var requestKeys = []string{"target_validator_hotkey", "executor_class", "docker_image", "job_namespace", "args",
	"env", "use_gpu", "artifacts_dir", "on_trusted_miner", "download_time_limit", "execution_time_limit",
	"streaming_start_time_limit", "upload_time_limit", "streaming_details", "volumes", "uploads", "tag",
	"horde_system_output"}

// ParseJobRequest reads a job creation body: it returns the job's spec
// with SignedFields set to what the client's signature must cover. The
// body is refused when it has unknown keys or repeated keys, when a value
// has the wrong type, or when a volume or upload element is not in the
// canonical form validators re-derive (see the top of this file).
func ParseJobRequest(body []byte) (*JobSpec, error) {
	v, err := parseOrdered(body)
	if err != nil {
		return nil, fmt.Errorf("job body: %w", err)
	}
	if v.kind != '{' {
		return nil, fmt.Errorf("job body must be a JSON object")
	}
	for _, m := range v.obj {
		if !slices.Contains(requestKeys, m.key) {
			return nil, fmt.Errorf("job body: unknown field %q", m.key)
		}
	}
	j, err := signedFromRequest(v)
	if err != nil {
		return nil, fmt.Errorf("job body: %w", err)
	}
	for _, list := range []struct {
		key   string
		canon func(ovalue, string) (ovalue, error)
	}{{"volumes", canonicalVolume}, {"uploads", canonicalUpload}} {
		l, _ := j.get(list.key)
		for i, e := range l.arr {
			what := fmt.Sprintf("%s[%d]", list.key, i)
			c, err := list.canon(e, what)
			if err != nil {
				return nil, fmt.Errorf("job body: %w", err)
			}
			got, err := e.compactBytes()
			if err != nil {
				return nil, fmt.Errorf("job body: %s: %w", what, err)
			}
			want, _ := c.compactBytes()
			if !bytes.Equal(got, want) {
				return nil, fmt.Errorf("job body: %s must list every field of its type in upstream's order, null when absent "+
					"(validators re-derive the signed bytes from it): send %s", what, want)
			}
		}
	}
	spec, err := specFromSigned(j)
	if err != nil {
		return nil, fmt.Errorf("job body: %w", err)
	}
	for _, k := range []string{"target_validator_hotkey", "job_namespace"} {
		f, ok := v.get(k)
		if !ok || f.kind == 'n' {
			continue
		}
		s, err := f.asString(k)
		if err != nil {
			return nil, fmt.Errorf("job body: %w", err)
		}
		if k == "job_namespace" {
			spec.JobNamespace = s
		} else {
			spec.TargetValidatorHotkey = s
		}
	}
	if so, ok := v.get("horde_system_output"); ok && so.kind != 'n' {
		if err := spec.setSystemOutput(so); err != nil {
			return nil, fmt.Errorf("job body: %w", err)
		}
	}
	if up := spec.OutputUpload; up != nil && up.OutputUploadType == UploadMulti {
		for _, u := range up.Uploads {
			if u.OutputUploadType != UploadSinglePost && u.OutputUploadType != UploadSinglePut {
				return nil, fmt.Errorf("job body: with more than one upload or a system output, each upload must be %s or %s (a zip upload goes alone)",
					UploadSinglePost, UploadSinglePut)
			}
		}
	}
	return spec, nil
}

// zipUploads are the uploads a system_output may be.
var zipUploads = map[string][]canonField{UploadZipPost: uploadFields[UploadZipPost], UploadZipPut: uploadFields[UploadZipPut]}

// setSystemOutput makes the spec's uploads a multi_upload with the given
// (unsigned) system output.
func (s *JobSpec) setSystemOutput(v ovalue) error {
	c, err := canonicalElement(v, "output_upload_type", zipUploads, "system_output")
	if err != nil {
		return err
	}
	so, _ := uploadFrom(c, "system_output")
	m := &OutputUpload{OutputUploadType: UploadMulti, SystemOutput: &so}
	switch u := s.OutputUpload; {
	case u == nil:
	case u.OutputUploadType == UploadMulti:
		m.Uploads = u.Uploads
	default:
		m.Uploads = []OutputUpload{*u}
	}
	s.OutputUpload = m
	return nil
}

// systemOutput returns the spec's system output as upstream dumps it, or null.
func (s *JobSpec) systemOutput() ovalue {
	if u := s.OutputUpload; u != nil && u.OutputUploadType == UploadMulti && u.SystemOutput != nil {
		return uploadValue(u.SystemOutput)
	}
	return onull
}

// specFromSigned builds a spec from SignedFields alone, so that what runs
// is exactly what was signed (nothing is read from a second decoding of the
// message).
func specFromSigned(j ovalue) (*JobSpec, error) {
	text, err := j.compactBytes()
	if err != nil {
		return nil, err
	}
	s := &JobSpec{SignedFields: string(text)}
	get := func(k string) ovalue { v, _ := j.get(k); return v }
	if s.ExecutorClass, err = get("executor_class").asString("executor_class"); err != nil {
		return nil, err
	}
	s.DockerImage, _ = get("docker_image").asString("docker_image")
	s.Args, _ = get("args").asStrings("args")
	s.Env, _, _ = get("env").asStringMap("env")
	s.UseGPU, _ = get("use_gpu").asBool("use_gpu")
	s.ArtifactsDir, _ = get("artifacts_dir").asString("artifacts_dir")
	s.OnTrustedMiner, _ = get("on_trusted_miner").asBool("on_trusted_miner")
	for k, p := range map[string]*int{"download_time_limit": &s.DownloadTimeLimit, "execution_time_limit": &s.ExecutionTimeLimit,
		"upload_time_limit": &s.UploadTimeLimit, "streaming_start_time_limit": &s.StreamingStartTimeLimit} {
		if *p, err = get(k).asInt(k); err != nil {
			return nil, err
		}
	}
	if sd := get("streaming_details"); sd.kind == '{' {
		d := &StreamingDetails{}
		d.PublicKey, _ = mustGet(sd, "public_key").asString("")
		if ip := mustGet(sd, "executor_ip"); ip.kind == 's' {
			d.ExecutorIP = ip.s
		}
		s.StreamingDetails = d
	}
	var vols []Volume
	for i, e := range get("volumes").arr {
		v, err := volumeFrom(e, fmt.Sprintf("volumes[%d]", i))
		if err != nil {
			return nil, err
		}
		vols = append(vols, v)
	}
	if len(vols) > 0 {
		s.Volume = &Volume{VolumeType: VolumeMulti, Volumes: vols}
	}
	var ups []OutputUpload
	for i, e := range get("uploads").arr {
		u, err := uploadFrom(e, fmt.Sprintf("uploads[%d]", i))
		if err != nil {
			return nil, err
		}
		ups = append(ups, u)
	}
	switch len(ups) {
	case 0:
	case 1:
		s.OutputUpload = &ups[0]
	default:
		s.OutputUpload = &OutputUpload{OutputUploadType: UploadMulti, Uploads: ups}
	}
	return s, nil
}

func mustGet(v ovalue, k string) ovalue { e, _ := v.get(k); return e }

// str returns a string field of a canonical element ("" for null).
func str(e ovalue, k string) string { return mustGet(e, k).s }

func volumeFrom(e ovalue, what string) (Volume, error) {
	c, err := canonicalVolume(e, what)
	if err != nil {
		return Volume{}, err
	}
	v := Volume{VolumeType: str(c, "volume_type"), Contents: str(c, "contents"), URL: str(c, "url"),
		RelativePath: str(c, "relative_path"), RepoID: str(c, "repo_id"), RepoType: str(c, "repo_type"),
		Revision: str(c, "revision"), Token: str(c, "token")}
	switch p := mustGet(c, "allow_patterns"); p.kind {
	case 's': // upstream allows one pattern as a string
		v.AllowPattern = []string{p.s}
	case '[':
		v.AllowPattern, _ = p.asStrings("")
	}
	return v, nil
}

func uploadFrom(e ovalue, what string) (OutputUpload, error) {
	c, err := canonicalUpload(e, what)
	if err != nil {
		return OutputUpload{}, err
	}
	u := OutputUpload{OutputUploadType: str(c, "output_upload_type"), URL: str(c, "url"), RelativePath: str(c, "relative_path")}
	if f := mustGet(c, "form_fields"); f.kind == '{' {
		u.FormFields, _, _ = f.asStringMap("")
	}
	if h := mustGet(c, "signed_headers"); h.kind == '{' {
		u.SignedHeaders, _, _ = h.asStringMap("")
	}
	return u, nil
}

// Canonical elements from horde's typed values, for a client that builds
// its request from a JobSpec: optional fields empty in Go are null, maps
// are written in sorted key order.

func optString(s string) ovalue {
	if s == "" {
		return onull
	}
	return ostr(s)
}

func optMap(m map[string]string) ovalue {
	if len(m) == 0 {
		return onull
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	o := oobj()
	for _, k := range keys {
		o.obj = append(o.obj, omember{k, ostr(m[k])})
	}
	return o
}

func volumeValue(v *Volume) ovalue {
	o := oobj(omember{"volume_type", ostr(v.VolumeType)})
	for _, f := range volumeFields[v.VolumeType] {
		var fv ovalue
		switch f.name {
		case "contents":
			fv = ostr(v.Contents)
		case "url":
			fv = ostr(v.URL)
		case "relative_path":
			if f.kind == kString {
				fv = ostr(v.RelativePath)
			} else {
				fv = optString(v.RelativePath)
			}
		case "repo_id":
			fv = ostr(v.RepoID)
		case "repo_type":
			fv = optString(v.RepoType)
		case "revision":
			fv = optString(v.Revision)
		case "token":
			fv = optString(v.Token)
		case "allow_patterns":
			fv = onull
			if v.AllowPattern != nil {
				fv = ovalue{kind: '[', arr: []ovalue{}}
				for _, p := range v.AllowPattern {
					fv.arr = append(fv.arr, ostr(p))
				}
			}
		}
		o.obj = append(o.obj, omember{f.name, fv})
	}
	return o
}

func uploadValue(u *OutputUpload) ovalue {
	o := oobj(omember{"output_upload_type", ostr(u.OutputUploadType)})
	for _, f := range uploadFields[u.OutputUploadType] {
		var fv ovalue
		switch f.name {
		case "url":
			fv = ostr(u.URL)
		case "relative_path":
			fv = ostr(u.RelativePath)
		case "form_fields":
			fv = optMap(u.FormFields)
		case "signed_headers":
			fv = optMap(u.SignedHeaders)
		}
		o.obj = append(o.obj, omember{f.name, fv})
	}
	return o
}

// volumeList and uploadList are a spec's volumes and uploads as SignedFields
// lists them.
func (s *JobSpec) volumeList() []*Volume {
	switch {
	case s.Volume == nil:
		return nil
	case s.Volume.VolumeType == VolumeMulti:
		out := make([]*Volume, len(s.Volume.Volumes))
		for i := range s.Volume.Volumes {
			out[i] = &s.Volume.Volumes[i]
		}
		return out
	}
	return []*Volume{s.Volume}
}

func (s *JobSpec) uploadList() ([]*OutputUpload, error) {
	switch {
	case s.OutputUpload == nil:
		return nil, nil
	case s.OutputUpload.OutputUploadType == UploadMulti:
		if so := s.OutputUpload.SystemOutput; so != nil && so.OutputUploadType != UploadZipPost && so.OutputUploadType != UploadZipPut {
			return nil, fmt.Errorf("system_output must be %s or %s", UploadZipPost, UploadZipPut)
		}
		out := make([]*OutputUpload, len(s.OutputUpload.Uploads))
		for i := range s.OutputUpload.Uploads {
			out[i] = &s.OutputUpload.Uploads[i]
		}
		return out, nil
	}
	return []*OutputUpload{s.OutputUpload}, nil
}

// signedValue returns the spec's SignedFields: the text it was decoded
// with, or else one made from its typed fields (env in sorted key order).
func (s *JobSpec) signedValue() (ovalue, error) {
	if s.SignedFields != "" {
		return parseOrdered([]byte(s.SignedFields))
	}
	args := ovalue{kind: '[', arr: []ovalue{}}
	for _, a := range s.Args {
		args.arr = append(args.arr, ostr(a))
	}
	env := optMap(s.Env)
	if env.kind == 'n' {
		env = oobj()
	}
	sd := onull
	if s.StreamingDetails != nil {
		sd = oobj(omember{"public_key", ostr(s.StreamingDetails.PublicKey)}, omember{"executor_ip", optString(s.StreamingDetails.ExecutorIP)})
	}
	vols := ovalue{kind: '[', arr: []ovalue{}}
	for _, v := range s.volumeList() {
		if _, ok := volumeFields[v.VolumeType]; !ok {
			return ovalue{}, fmt.Errorf("volume_type %q cannot be listed in a job", v.VolumeType)
		}
		vols.arr = append(vols.arr, volumeValue(v))
	}
	ups := ovalue{kind: '[', arr: []ovalue{}}
	list, err := s.uploadList()
	if err != nil {
		return ovalue{}, err
	}
	for _, u := range list {
		if _, ok := uploadFields[u.OutputUploadType]; !ok {
			return ovalue{}, fmt.Errorf("output_upload_type %q cannot be listed in a job", u.OutputUploadType)
		}
		ups.arr = append(ups.arr, uploadValue(u))
	}
	return oobj(
		omember{"executor_class", ostr(s.ExecutorClass)},
		omember{"docker_image", ostr(s.DockerImage)},
		omember{"args", args},
		omember{"env", env},
		omember{"use_gpu", obool(s.UseGPU)},
		omember{"artifacts_dir", ostr(s.ArtifactsDir)},
		omember{"on_trusted_miner", obool(s.OnTrustedMiner)},
		omember{"download_time_limit", oint(int64(s.DownloadTimeLimit))},
		omember{"execution_time_limit", oint(int64(s.ExecutionTimeLimit))},
		omember{"upload_time_limit", oint(int64(s.UploadTimeLimit))},
		omember{"streaming_start_time_limit", oint(int64(s.StreamingStartTimeLimit))},
		omember{"streaming_details", sd},
		omember{"volumes", vols},
		omember{"uploads", ups},
	), nil
}

// SignedFieldsJSON returns the spec's SignedFields text J.
func (s *JobSpec) SignedFieldsJSON() ([]byte, error) {
	v, err := s.signedValue()
	if err != nil {
		return nil, err
	}
	return v.compactBytes()
}

// SignedBytes returns the payload a client's job signature covers:
// SignedPayload of the spec's SignedFields.
func (s *JobSpec) SignedBytes() ([]byte, error) {
	j, err := s.SignedFieldsJSON()
	if err != nil {
		return nil, err
	}
	return SignedPayload(j)
}

// RequestBody returns the body of a job creation request for the spec, in
// upstream's SDK shape, with volumes and uploads in canonical form: its
// SignedFieldsOfRequest is the spec's SignedFieldsJSON.
func (s *JobSpec) RequestBody() ([]byte, error) {
	j, err := s.signedValue()
	if err != nil {
		return nil, err
	}
	b := oobj()
	if s.TargetValidatorHotkey != "" {
		b.obj = append(b.obj, omember{"target_validator_hotkey", ostr(s.TargetValidatorHotkey)})
	}
	b.obj = append(b.obj, omember{"job_namespace", optString(s.JobNamespace)})
	if _, err := s.uploadList(); err != nil {
		return nil, err
	}
	if so := s.systemOutput(); so.kind != 'n' {
		b.obj = append(b.obj, omember{"horde_system_output", so})
	}
	for _, m := range j.obj {
		if m.key == "streaming_details" {
			if m.val.kind == 'n' {
				continue // absent, not null: upstream's SDK refuses a null
			}
			pk, _ := m.val.get("public_key")
			m.val = oobj(omember{"public_key", pk})
		}
		b.obj = append(b.obj, m)
	}
	return b.compactBytes()
}

// ErrBadJobSignature marks a job whose client signature is refused.
var ErrBadJobSignature = errors.New("job signature is invalid")

// VerifyJobSignature checks a job's client signature as a validator must
// before running it: type bittensor, signatory an SS58 address, a strictly
// encoded signature (sig.ParseBase64) over the spec's SignedBytes and the
// timestamp, and a timestamp no older than maxAge and no further than
// maxAhead in the future. Upstream checks no freshness; horde's validator
// must, and should also refuse a signature it has seen (Signature.Decode
// gives the bytes to remember it by).
func VerifyJobSignature(spec *JobSpec, s *Signature, now time.Time, maxAge, maxAhead time.Duration) error {
	if s == nil {
		return fmt.Errorf("%w: the job carries no signature", ErrBadJobSignature)
	}
	if s.SignatureType != SignatureTypeBittensor {
		return fmt.Errorf("%w: signature_type %q is not %q", ErrBadJobSignature, s.SignatureType, SignatureTypeBittensor)
	}
	if s.SignatureScope != "" && s.SignatureScope != ScopeSignedFields {
		return fmt.Errorf("%w: signature_scope %q is not %q", ErrBadJobSignature, s.SignatureScope, ScopeSignedFields)
	}
	age := now.Sub(time.Unix(0, s.TimestampNS))
	if age > maxAge || age < -maxAhead {
		return fmt.Errorf("%w: signed %s ago (limits: %s old, %s ahead)", ErrBadJobSignature, age.Round(time.Second), maxAge, maxAhead)
	}
	pub, err := sig.ParseSS58(s.Signatory)
	if err != nil {
		return fmt.Errorf("%w: signatory: %w", ErrBadJobSignature, err)
	}
	raw, err := s.Decode()
	if err != nil {
		return fmt.Errorf("%w: %w", ErrBadJobSignature, err)
	}
	payload, err := spec.SignedBytes()
	if err != nil {
		return fmt.Errorf("%w: %w", ErrBadJobSignature, err)
	}
	if err := raw.Verify(pub, SignedMessage(s.TimestampNS, payload)); err != nil {
		return fmt.Errorf("%w: %w", ErrBadJobSignature, err)
	}
	return nil
}
