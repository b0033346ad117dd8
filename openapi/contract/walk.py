"""The README's walk, driven through the Python client generated from openapi/nexus.json.

Usage: python walk.py BASE_URL. Every call goes through the client's typed functions and
must come back as the typed model the document promises; any surprise fails the walk.
"""

import sys
import uuid

from nexus_client import AuthenticatedClient, Client
from nexus_client.api.agents import agent_create, agent_get, agent_list, agent_status, agent_versions
from nexus_client.api.auth import auth_login, auth_refresh, auth_register
from nexus_client.api.health import health_live
from nexus_client.api.keys import key_create, key_list
from nexus_client.api.me import me_get
from nexus_client.api.tenants import tenant_create, tenant_list
from nexus_client.models import (
    AgentCreatedView,
    AgentDetailView,
    AuthSession,
    CreatedKeyView,
    CreateKeyRequest,
    CreateTenantRequest,
    LiveStatusView,
    LoginRequest,
    MeApiKeyPrincipal,
    MeUserPrincipal,
    RefreshRequest,
    RegisterRequest,
    TenantView,
    TokenPairView,
)
from nexus_client.types import File

SUPPORT_BOT = b"""apiVersion: astromesh/v1
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
"""


def expect(value, kind):
    assert isinstance(value, kind), f"expected {kind.__name__}, got {value!r}"
    return value


def main(base: str) -> None:
    public = Client(base_url=base, raise_on_unexpected_status=True)
    expect(health_live.sync(client=public), object)
    email, password = f"walk-{uuid.uuid4().hex[:12]}@example.com", "a-strong-password"
    registered = expect(auth_register.sync(client=public, body=RegisterRequest(email=email, password=password, display_name="Walker")), AuthSession)
    assert registered.user.email == email
    login = expect(auth_login.sync(client=public, body=LoginRequest(email=email, password=password)), AuthSession)
    refreshed = expect(auth_refresh.sync(client=public, body=RefreshRequest(refresh_token=login.refresh_token)), TokenPairView)

    user = AuthenticatedClient(base_url=base, token=refreshed.access_token, raise_on_unexpected_status=True)
    me = expect(me_get.sync(client=user), MeUserPrincipal)
    assert me.user.email == email and not me.tenant, me

    tenant = expect(tenant_create.sync(client=user, body=CreateTenantRequest(display_name="My Organisation", node_profile="full")), TenantView)
    assert [t.id for t in tenant_list.sync(client=user)] == [tenant.id]
    key = expect(key_create.sync(tenant.id, client=user, body=CreateKeyRequest(label="ci")), CreatedKeyView)
    listed = key_list.sync(tenant.id, client=user)
    assert [k.hash_ for k in listed] == [key.hash_], listed

    # An API key travels in X-API-Key, with no prefix.
    api = AuthenticatedClient(base_url=base, token=key.raw_key, prefix="", auth_header_name="X-API-Key", raise_on_unexpected_status=True)
    me = expect(me_get.sync(client=api), MeApiKeyPrincipal)
    assert me.tenant.id == tenant.id and me.key_label == "ci"

    created = expect(agent_create.sync(client=api, body=File(payload=SUPPORT_BOT, file_name="support-bot.yaml", mime_type="application/yaml")), AgentCreatedView)
    assert created.name == "support-bot" and created.version == "1.0.0", created
    status = expect(agent_status.sync("support-bot", client=api), LiveStatusView)
    assert status.phase.value in {"Pending", "Deploying", "Running"}, status
    agents = agent_list.sync(client=user, x_tenant_id=tenant.id)
    assert [a.name for a in agents] == ["support-bot"], agents
    detail = expect(agent_get.sync("support-bot", client=user, x_tenant_id=tenant.id), AgentDetailView)
    assert detail.agent_spec["spec"]["orchestration"]["pattern"] == "react", detail
    versions = agent_versions.sync("support-bot", client=api)
    assert [v.number for v in versions] == [1], versions
    print("walk: every step answered as the document says")


if __name__ == "__main__":
    main(sys.argv[1])
