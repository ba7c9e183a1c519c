package protocol

import (
	"fmt"
	"log/slog"
)

// Volume types.
const (
	VolumeInline      = "inline"
	VolumeZipURL      = "zip_url"
	VolumeSingleFile  = "single_file"
	VolumeHuggingFace = "huggingface_volume"
	VolumeMulti       = "multi_volume"
)

// Volume is the input of a job, by volume_type. Fields not of the type are empty.
type Volume struct {
	VolumeType string `json:"volume_type"`
	// Contents is base64 zip (inline) or a URL (zip_url).
	Contents     string   `json:"contents,omitempty"`
	URL          string   `json:"url,omitempty"`
	RelativePath string   `json:"relative_path,omitempty"`
	RepoID       string   `json:"repo_id,omitempty"`
	RepoType     string   `json:"repo_type,omitempty"`
	Revision     string   `json:"revision,omitempty"`
	AllowPattern Patterns `json:"allow_patterns,omitempty"`
	Token        string   `json:"token,omitempty"`
	Volumes      []Volume `json:"volumes,omitempty"`
}

// LogValue keeps URLs and tokens (often presigned secrets) out of logs.
func (v Volume) LogValue() slog.Value {
	return slog.GroupValue(slog.String("type", v.VolumeType), slog.String("path", v.RelativePath), slog.Int("parts", len(v.Volumes)))
}

// Validate checks the fields the type needs.
func (v *Volume) Validate() error {
	switch v.VolumeType {
	case VolumeInline, VolumeZipURL:
		if v.Contents == "" {
			return fmt.Errorf("volume %s: contents is empty", v.VolumeType)
		}
	case VolumeSingleFile:
		if v.URL == "" || v.RelativePath == "" {
			return fmt.Errorf("volume single_file: url and relative_path are required")
		}
	case VolumeHuggingFace:
		if v.RepoID == "" {
			return fmt.Errorf("volume huggingface_volume: repo_id is required")
		}
	case VolumeMulti:
		for i := range v.Volumes {
			if v.Volumes[i].VolumeType == VolumeMulti {
				return fmt.Errorf("volume multi_volume: nested multi_volume")
			}
			if err := v.Volumes[i].Validate(); err != nil {
				return fmt.Errorf("volume multi_volume[%d]: %w", i, err)
			}
		}
	default:
		return fmt.Errorf("unknown volume_type %q", v.VolumeType)
	}
	return nil
}

// Output upload types.
const (
	UploadZipPost    = "zip_and_http_post"
	UploadZipPut     = "zip_and_http_put"
	UploadSinglePost = "single_file_post"
	UploadSinglePut  = "single_file_put"
	UploadMulti      = "multi_upload"
)

// OutputUpload says where a job's outputs go, by output_upload_type.
type OutputUpload struct {
	OutputUploadType string            `json:"output_upload_type"`
	URL              string            `json:"url,omitempty"`
	FormFields       map[string]string `json:"form_fields,omitempty"`
	RelativePath     string            `json:"relative_path,omitempty"`
	SignedHeaders    map[string]string `json:"signed_headers,omitempty"`
	Uploads          []OutputUpload    `json:"uploads,omitempty"`
	SystemOutput     *OutputUpload     `json:"system_output,omitempty"`
}

// LogValue keeps presigned URLs out of logs.
func (u OutputUpload) LogValue() slog.Value {
	return slog.GroupValue(slog.String("type", u.OutputUploadType), slog.String("path", u.RelativePath), slog.Int("parts", len(u.Uploads)))
}

// Validate checks the fields the type needs.
func (u *OutputUpload) Validate() error {
	switch u.OutputUploadType {
	case UploadZipPost, UploadZipPut:
		if u.URL == "" {
			return fmt.Errorf("output_upload %s: url is required", u.OutputUploadType)
		}
	case UploadSinglePost, UploadSinglePut:
		if u.URL == "" || u.RelativePath == "" {
			return fmt.Errorf("output_upload %s: url and relative_path are required", u.OutputUploadType)
		}
	case UploadMulti:
		for i := range u.Uploads {
			t := u.Uploads[i].OutputUploadType
			if t != UploadSinglePost && t != UploadSinglePut {
				return fmt.Errorf("output_upload multi_upload[%d]: only single_file uploads allowed, got %q", i, t)
			}
			if err := u.Uploads[i].Validate(); err != nil {
				return fmt.Errorf("output_upload multi_upload[%d]: %w", i, err)
			}
		}
		if u.SystemOutput != nil {
			if err := u.SystemOutput.Validate(); err != nil {
				return fmt.Errorf("output_upload system_output: %w", err)
			}
		}
	default:
		return fmt.Errorf("unknown output_upload_type %q", u.OutputUploadType)
	}
	return nil
}
