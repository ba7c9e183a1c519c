package images

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"runtime"
)

// Archive writes a FROM-scratch image holding the static binary exe as
// /horde, with entrypoint, tagged tag, as an image archive (the format of
// 'docker save', which 'ctr images import', 'docker load' and 'podman load'
// read), without any container engine: it is how the isolate image gets
// onto the nodes of a cluster that has no registry. The archive is the
// same for the same binary (no timestamps); Archive returns the image's
// id (its config's digest).
func Archive(w io.Writer, exe, tag string, entrypoint []string) (string, error) {
	bin, err := os.ReadFile(exe)
	if err != nil {
		return "", fmt.Errorf("read the horde binary: %w", err)
	}
	if err := checkStatic(bin); err != nil {
		return "", fmt.Errorf("image archive of %s: %w (build horde with CGO_ENABLED=0)", exe, err)
	}
	var layer bytes.Buffer
	lw := tar.NewWriter(&layer)
	if err := addFile(lw, "horde", 0o755, bin); err != nil {
		return "", err
	}
	if err := lw.Close(); err != nil {
		return "", err
	}
	layerSum := sha256.Sum256(layer.Bytes())
	binSum := sha256.Sum256(bin)
	config, err := json.Marshal(map[string]any{
		"architecture": runtime.GOARCH,
		"os":           "linux",
		"config": map[string]any{
			"Entrypoint": entrypoint,
			"Labels":     map[string]string{LabelBinary: hex.EncodeToString(binSum[:])},
		},
		"rootfs": map[string]any{"type": "layers", "diff_ids": []string{"sha256:" + hex.EncodeToString(layerSum[:])}},
	})
	if err != nil {
		return "", err
	}
	configSum := sha256.Sum256(config)
	configName := hex.EncodeToString(configSum[:]) + ".json"
	layerName := hex.EncodeToString(layerSum[:]) + "/layer.tar"
	manifest, err := json.Marshal([]map[string]any{{"Config": configName, "RepoTags": []string{tag}, "Layers": []string{layerName}}})
	if err != nil {
		return "", err
	}
	tw := tar.NewWriter(w)
	if err := tw.WriteHeader(&tar.Header{Name: hex.EncodeToString(layerSum[:]) + "/", Typeflag: tar.TypeDir, Mode: 0o755}); err != nil {
		return "", err
	}
	for _, f := range []struct {
		name string
		data []byte
	}{{layerName, layer.Bytes()}, {configName, config}, {"manifest.json", manifest}} {
		if err := addFile(tw, f.name, 0o644, f.data); err != nil {
			return "", err
		}
	}
	if err := tw.Close(); err != nil {
		return "", err
	}
	return "sha256:" + hex.EncodeToString(configSum[:]), nil
}
