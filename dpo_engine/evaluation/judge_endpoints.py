"""Which OpenAI-compatible judge endpoints may be used, and which of them get an API key.

The allow-list comes from configuration, never from a text box: ``$MARGIN_LAB_JUDGE_ENDPOINTS`` holds JSON, or
the path of a JSON file, mapping a name to ``{"base_url", "model", "api_key_env"}``::

    {"local-vllm": {"base_url": "http://127.0.0.1:8000/v1", "model": "qwen2.5-7b-instruct"},
     "openai": {"base_url": "https://api.openai.com/v1", "model": "gpt-4o", "api_key_env": "OPENAI_API_KEY"}}

Rules: plain ``http`` only to a loopback host (anything else must be ``https``); the key is read from the
environment variable the entry names, at request time, and is sent only to allow-listed endpoints. It is never
written to a job file, a log, a run or evaluation directory, or the page.
"""

from __future__ import annotations

import ipaddress
import json
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from dpo_engine.errors import ConfigError

ENDPOINTS_ENV = "MARGIN_LAB_JUDGE_ENDPOINTS"
DEFAULT_KEY_ENV = "OPENAI_API_KEY"


@dataclass(frozen=True)
class JudgeEndpoint:
    """One allow-listed endpoint: its name, base URL (``.../v1``), model, and the variable holding its key."""

    name: str
    base_url: str
    model: str
    api_key_env: str = DEFAULT_KEY_ENV


def is_loopback_host(host: str | None) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host or "").is_loopback
    except ValueError:
        return False


def check_endpoint_url(base_url: str, field: str = "base_url") -> str:
    """``base_url`` when it is ``https://...``, or ``http://`` to a loopback host; else ``ConfigError``."""
    parts = urlsplit(base_url)
    if parts.scheme == "https" and parts.hostname:
        return base_url
    if parts.scheme == "http" and is_loopback_host(parts.hostname):
        return base_url
    raise ConfigError(field, f"{base_url!r} is not allowed: use https, or plain http only to 127.0.0.1/localhost")


def allowed_endpoints() -> dict[str, JudgeEndpoint]:
    """The allow-list from ``$MARGIN_LAB_JUDGE_ENDPOINTS`` (empty when unset); ``ConfigError`` naming a bad entry."""
    value = os.environ.get(ENDPOINTS_ENV, "").strip()
    if not value:
        return {}
    source = ENDPOINTS_ENV
    if not value.startswith("{"):
        source = value
        try:
            value = Path(value).expanduser().read_text(encoding="utf-8")
        except OSError as error:
            raise ConfigError(ENDPOINTS_ENV, f"cannot read {source}: {error}") from None
    try:
        entries = json.loads(value)
    except json.JSONDecodeError as error:
        raise ConfigError(ENDPOINTS_ENV, f"{source} is not valid JSON: {error}") from None
    if not isinstance(entries, dict):
        raise ConfigError(ENDPOINTS_ENV, f"{source} must map endpoint names to {{base_url, model}}")
    return {name: _endpoint(name, entry, source) for name, entry in entries.items()}


def _endpoint(name: str, entry, source: str) -> JudgeEndpoint:
    field = f"{ENDPOINTS_ENV}[{name}]"
    if not isinstance(entry, dict) or not all(isinstance(entry.get(key), str) and entry[key] for key in ("base_url",
                                                                                                         "model")):
        raise ConfigError(field, f"in {source}: needs text 'base_url' and 'model'")
    unknown = set(entry) - {"base_url", "model", "api_key_env"}
    if unknown:
        raise ConfigError(field, f"in {source}: unknown keys {', '.join(sorted(unknown))}")
    key_env = entry.get("api_key_env", DEFAULT_KEY_ENV)
    if not isinstance(key_env, str) or not key_env:
        raise ConfigError(field, f"in {source}: 'api_key_env' must name an environment variable")
    return JudgeEndpoint(name, check_endpoint_url(entry["base_url"], field), entry["model"], key_env)


def key_env_for(base_url: str) -> str | None:
    """The key variable of the allow-listed endpoint at ``base_url``; None for an unlisted URL (no key is sent)."""
    wanted = base_url.rstrip("/")
    for endpoint in allowed_endpoints().values():
        if endpoint.base_url.rstrip("/") == wanted:
            return endpoint.api_key_env
    return None
