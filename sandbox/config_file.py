"""The socialcrm config the sandbox writes: every system pointed at its simulator.

Secrets appear as ``${ENV_VAR:-sandbox value}`` references, never inline, so the file
passes the same validation (``socialcrm.config.load_settings``) as a production one and
an environment variable can still point a single system elsewhere.
"""

from __future__ import annotations

import json
from pathlib import Path

from sandbox.salesforce_api import CLIENT_ID, CLIENT_SECRET
from sandbox.seed import XUser
from sandbox.x_dm import USER_TOKEN
from sandbox.x_params import BEARER
from sandbox.zendesk_store import AGENT_EMAIL, API_TOKEN


def _yaml_str(value: str) -> str:
    plain = all(c.isalnum() or c in "_./:@-" for c in value) and value[:1] not in "@-:"
    return value if plain and value else json.dumps(value)


def config_text(urls: dict[str, str], ca_path: Path, brand: XUser, state_url: str | None) -> str:
    ca = _yaml_str(str(ca_path))
    return f"""\
# socialcrm config written by the sandbox; points every system at the simulators
accounts:
  - name: brand
    platform: x
    user_id: "{brand.id}"
    handle: "{brand.username}"
    api_base_url: {urls["x"]}
    bearer_token: ${{X_BEARER_TOKEN:-{BEARER}}}
    dm_token: ${{X_DM_TOKEN:-{USER_TOKEN}}}
    ca_bundle: {ca}
crm:
  kind: salesforce
  login_url: {urls["salesforce"]}
  api_version: "60.0"
  auth:
    method: client_credentials
    client_id: ${{SF_CLIENT_ID:-{CLIENT_ID}}}
    client_secret: ${{SF_CLIENT_SECRET:-{CLIENT_SECRET}}}
  ca_bundle: {ca}
helpdesk:
  kind: zendesk
  base_url: {urls["zendesk"]}
  email: {AGENT_EMAIL}
  api_token: ${{ZENDESK_API_TOKEN:-{API_TOKEN}}}
  ca_bundle: {ca}
state:
  url: {_yaml_str(state_url or "sqlite:///state.db")}
"""
