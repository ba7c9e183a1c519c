// Package schematest checks JSON against upstream ComputeHorde's own models,
// as JSON Schemas (pydantic's model_json_schema, Draft 2020-12) kept in
// schemas/: the facilitator link (fv_*), the SDK's view of the client API
// (sdk_models.*) and the shared volume, upload, signature and streaming
// models (core_*). Tests use it to prove that what horde sends an upstream
// peer is what that peer's parser accepts. It is for tests only.
package schematest

import (
	"bytes"
	"embed"
	"fmt"
	"sync"
	"testing"

	"github.com/santhosh-tekuri/jsonschema/v6"
)

//go:embed schemas/*.json
var schemas embed.FS

var (
	mu       sync.Mutex
	compiled = map[string]*jsonschema.Schema{}
)

// Schema returns the compiled schema of the upstream model name (the file
// name without ".json", e.g. "sdk_models.FacilitatorJobResponse").
func Schema(name string) (*jsonschema.Schema, error) {
	mu.Lock()
	defer mu.Unlock()
	if s, ok := compiled[name]; ok {
		return s, nil
	}
	b, err := schemas.ReadFile("schemas/" + name + ".json")
	if err != nil {
		return nil, fmt.Errorf("no upstream schema %q: %w", name, err)
	}
	doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(b))
	if err != nil {
		return nil, fmt.Errorf("schema %s: %w", name, err)
	}
	c := jsonschema.NewCompiler()
	url := "mem://upstream/" + name + ".json"
	if err := c.AddResource(url, doc); err != nil {
		return nil, fmt.Errorf("schema %s: %w", name, err)
	}
	s, err := c.Compile(url)
	if err != nil {
		return nil, fmt.Errorf("schema %s: %w", name, err)
	}
	compiled[name] = s
	return s, nil
}

// Check reports whether the JSON text doc validates against the upstream
// model name.
func Check(name string, doc []byte) error {
	s, err := Schema(name)
	if err != nil {
		return err
	}
	v, err := jsonschema.UnmarshalJSON(bytes.NewReader(doc))
	if err != nil {
		return fmt.Errorf("not JSON: %w", err)
	}
	if err := s.Validate(v); err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	return nil
}

// Valid fails the test unless doc validates against the upstream model name.
func Valid(t testing.TB, name string, doc []byte) {
	t.Helper()
	if err := Check(name, doc); err != nil {
		t.Errorf("upstream would refuse %s:\n%v", doc, err)
	}
}

// Invalid fails the test if doc validates against the upstream model name.
func Invalid(t testing.TB, name string, doc []byte) {
	t.Helper()
	if err := Check(name, doc); err == nil {
		t.Errorf("%s validates against %s, want refused", doc, name)
	}
}
