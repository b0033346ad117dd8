// The README's walk, driven through the Go client that oapi-codegen generates from
// openapi/nexus.json: every call goes through the generated typed functions, and every
// answer must come back with the status and the typed body the document promises.
//
// Usage: walk BASE_URL
package main

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"strings"
	"time"

	"nexus.example/clients/go/nexus"
)

const supportBot = `apiVersion: astromesh/v1
kind: Agent
metadata:
  name: support-bot
  version: "1.0.0"
spec:
  identity:
    display_name: "Support Bot"
  model:
    primary:
      provider: ollama
      model: "llama3.1:8b"
  orchestration:
    pattern: react
`

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "go walk: "+format+"\n", args...)
	os.Exit(1)
}

// expect fails the walk unless the call succeeded with the wanted status and a typed body.
func expect(what string, err error, status int, want int, typed bool, raw []byte) {
	if err != nil {
		fail("%s: %v", what, err)
	}
	if status != want || !typed {
		fail("%s: wanted %d with its typed body, got %d: %s", what, want, status, raw)
	}
}

// withHeader sends one more header on every request of a client.
func withHeader(name, value string) nexus.ClientOption {
	return nexus.WithRequestEditorFn(func(_ context.Context, request *http.Request) error {
		request.Header.Set(name, value)
		return nil
	})
}

func main() {
	if len(os.Args) != 2 {
		fail("usage: walk BASE_URL")
	}
	base := os.Args[1]
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	public, err := nexus.NewClientWithResponses(base)
	if err != nil {
		fail("client: %v", err)
	}
	email := fmt.Sprintf("go-walk-%d@example.com", time.Now().UnixNano())
	password := "a-strong-password"
	displayName := "Go Walker"
	registered, err := public.AuthRegisterWithApplicationJSONCharsetUTF8BodyWithResponse(ctx, nexus.RegisterRequest{Email: email, Password: &password, DisplayName: &displayName})
	expect("register", err, registered.StatusCode(), 201, registered.ApplicationjsonCharsetUtf8201 != nil, registered.Body)
	if registered.ApplicationjsonCharsetUtf8201.User.Email != email {
		fail("register: the user is %q", registered.ApplicationjsonCharsetUtf8201.User.Email)
	}
	login, err := public.AuthLoginWithApplicationJSONCharsetUTF8BodyWithResponse(ctx, nexus.LoginRequest{Email: email, Password: &password})
	expect("login", err, login.StatusCode(), 200, login.ApplicationjsonCharsetUtf8200 != nil, login.Body)
	refreshed, err := public.AuthRefreshWithApplicationJSONCharsetUTF8BodyWithResponse(ctx, nexus.RefreshRequest{RefreshToken: login.ApplicationjsonCharsetUtf8200.RefreshToken})
	expect("refresh", err, refreshed.StatusCode(), 200, refreshed.ApplicationjsonCharsetUtf8200 != nil, refreshed.Body)

	user, err := nexus.NewClientWithResponses(base, withHeader("Authorization", "Bearer "+refreshed.ApplicationjsonCharsetUtf8200.AccessToken))
	if err != nil {
		fail("client: %v", err)
	}
	me, err := user.MeGetWithResponse(ctx, &nexus.MeGetParams{})
	expect("me", err, me.StatusCode(), 200, me.ApplicationjsonCharsetUtf8200 != nil, me.Body)
	principal, err := me.ApplicationjsonCharsetUtf8200.AsMeUserPrincipal()
	if err != nil || principal.User.Email != email {
		fail("me: a user token is its user: %v %+v", err, principal)
	}

	profile := "full"
	tenant, err := user.TenantCreateWithApplicationJSONCharsetUTF8BodyWithResponse(ctx, nexus.CreateTenantRequest{DisplayName: "My Organisation", NodeProfile: &profile})
	expect("tenant", err, tenant.StatusCode(), 201, tenant.ApplicationjsonCharsetUtf8201 != nil, tenant.Body)
	tenantID := tenant.ApplicationjsonCharsetUtf8201.Id
	tenants, err := user.TenantListWithResponse(ctx)
	expect("tenants", err, tenants.StatusCode(), 200, tenants.ApplicationjsonCharsetUtf8200 != nil, tenants.Body)
	if len(*tenants.ApplicationjsonCharsetUtf8200) != 1 || (*tenants.ApplicationjsonCharsetUtf8200)[0].Id != tenantID {
		fail("tenants: %s", tenants.Body)
	}
	key, err := user.KeyCreateWithApplicationJSONCharsetUTF8BodyWithResponse(ctx, tenantID, nexus.CreateKeyRequest{Label: "ci"})
	expect("key", err, key.StatusCode(), 201, key.ApplicationjsonCharsetUtf8201 != nil, key.Body)
	keys, err := user.KeyListWithResponse(ctx, tenantID)
	expect("keys", err, keys.StatusCode(), 200, keys.ApplicationjsonCharsetUtf8200 != nil, keys.Body)
	if len(*keys.ApplicationjsonCharsetUtf8200) != 1 || (*keys.ApplicationjsonCharsetUtf8200)[0].Hash != key.ApplicationjsonCharsetUtf8201.Hash {
		fail("keys: %s", keys.Body)
	}

	// An API key travels in X-API-Key.
	api, err := nexus.NewClientWithResponses(base, withHeader("X-API-Key", key.ApplicationjsonCharsetUtf8201.RawKey))
	if err != nil {
		fail("client: %v", err)
	}
	keyMe, err := api.MeGetWithResponse(ctx, &nexus.MeGetParams{})
	expect("me as a key", err, keyMe.StatusCode(), 200, keyMe.ApplicationjsonCharsetUtf8200 != nil, keyMe.Body)
	keyPrincipal, err := keyMe.ApplicationjsonCharsetUtf8200.AsMeApiKeyPrincipal()
	if err != nil || keyPrincipal.Tenant.Id != tenantID {
		fail("me as a key: %v %s", err, keyMe.Body)
	}

	// The manifest as YAML, as the file is.
	created, err := api.AgentCreateWithBodyWithResponse(ctx, &nexus.AgentCreateParams{}, "application/yaml", strings.NewReader(supportBot))
	expect("agent", err, created.StatusCode(), 201, created.ApplicationjsonCharsetUtf8201 != nil, created.Body)
	if created.ApplicationjsonCharsetUtf8201.Name != "support-bot" {
		fail("agent: %s", created.Body)
	}
	got, err := api.AgentGetWithResponse(ctx, "support-bot", &nexus.AgentGetParams{})
	expect("agent get", err, got.StatusCode(), 200, got.ApplicationjsonCharsetUtf8200 != nil, got.Body)
	tag := got.HTTPResponse.Header.Get("ETag")
	if tag == "" {
		fail("agent get: no ETag")
	}
	// A new version through the typed JSON body, conditional on the version read.
	var manifest nexus.AgentManifest
	if err := manifest.UnmarshalJSON([]byte(`{"apiVersion":"astromesh/v1","kind":"Agent","metadata":{"name":"support-bot","version":"1.1.0"},"spec":{"model":{"primary":{"provider":"ollama","model":"llama3.1:8b"}},"orchestration":{"pattern":"react"}}}`)); err != nil {
		fail("manifest: %v", err)
	}
	updated, err := api.AgentUpdateWithResponse(ctx, "support-bot", &nexus.AgentUpdateParams{IfMatch: &tag}, manifest)
	expect("agent update", err, updated.StatusCode(), 200, updated.ApplicationjsonCharsetUtf8200 != nil, updated.Body)
	stale, err := api.AgentUpdateWithResponse(ctx, "support-bot", &nexus.AgentUpdateParams{IfMatch: &tag}, manifest)
	expect("a stale update", err, stale.StatusCode(), 412, stale.ApplicationjsonCharsetUtf8412 != nil, stale.Body)

	status, err := api.AgentStatusWithResponse(ctx, "support-bot", &nexus.AgentStatusParams{})
	expect("agent status", err, status.StatusCode(), 200, status.ApplicationjsonCharsetUtf8200 != nil, status.Body)
	agents, err := user.AgentListWithResponse(ctx, &nexus.AgentListParams{XTenantID: &tenantID})
	expect("agents as the user", err, agents.StatusCode(), 200, agents.ApplicationjsonCharsetUtf8200 != nil, agents.Body)
	if len(*agents.ApplicationjsonCharsetUtf8200) != 1 || (*agents.ApplicationjsonCharsetUtf8200)[0].Name != "support-bot" {
		fail("agents: %s", agents.Body)
	}
	versions, err := api.AgentVersionsWithResponse(ctx, "support-bot", &nexus.AgentVersionsParams{})
	expect("versions", err, versions.StatusCode(), 200, versions.ApplicationjsonCharsetUtf8200 != nil, versions.Body)
	if len(*versions.ApplicationjsonCharsetUtf8200) != 2 {
		fail("versions: %s", versions.Body)
	}
	fmt.Println("go walk: passed")
}
