"""The small request/response model shared by the simulators.

The simulators are plain functions from a parsed request to a response so that they can
be exercised without sockets and so the HTTP plumbing lives in one place (``server``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-cased names
    body: bytes = b""

    def param(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[-1] if values else None

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    @staticmethod
    def parse_query(raw: str) -> dict[str, list[str]]:
        return parse_qs(raw, keep_blank_values=True)


@dataclass
class Response:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


def json_response(
    status: int,
    payload: Any,
    *,
    content_type: str = "application/json; charset=utf-8",
    headers: dict[str, str] | None = None,
) -> Response:
    # ensure_ascii=False: real APIs send UTF-8 names as-is, and connectors must cope with that.
    try:
        body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    except UnicodeEncodeError:
        # A lone surrogate (hostile data) has no UTF-8 form; as a JSON escape it is legal.
        body = json.dumps(payload, ensure_ascii=True, separators=(",", ":")).encode("ascii")
    all_headers = {"Content-Type": content_type}
    all_headers.update(headers or {})
    return Response(status, body, all_headers)


# Realistic per-15-minute limits (app-only bearer), from the recorded x-rate-limit headers.
X_RATE_LIMITS: dict[str, int] = {
    "GET /2/users/:id/mentions": 450,
    "GET /2/users/:id/tweets": 1500,
    "GET /2/tweets/:id/quote_tweets": 75,
    "GET /2/tweets/:id/liking_users": 75,
    "GET /2/tweets/:id/retweeted_by": 75,
    "GET /2/users/:id": 300,
    "GET /2/users/by/username/:username": 300,
    # DM lookups (user context): 300 per 15 minutes each, as in the recorded headers.
    "GET /2/dm_events": 300,
    "GET /2/dm_conversations/:id/dm_events": 300,
    "GET /2/dm_conversations/with/:id/dm_events": 300,
}


@dataclass
class Options:
    """Knobs a test or benchmark turns at runtime (``Sandbox.set_options``)."""

    latency_ms: float = 0.0  # faults (sandbox.faults) are set through the world, not here
    rate_limits: dict[str, int] = field(default_factory=lambda: dict(X_RATE_LIMITS))
    rate_window_seconds: float = 900.0
    sf_daily_limit: int = 15000  # Sforce-Limit-Info total; beyond it: 403 REQUEST_LIMIT_EXCEEDED
    sf_batch_size: int = 2000  # default SOQL batch (Sforce-Query-Options may lower it)
    sf_bulk_delay_ms: float = 300.0  # a closed Bulk API 2.0 job runs this long (InProgress)
    rate_epoch: int = 0  # bumped when limits change, so windows restart from a clean count
    zendesk_rate_limit: int = 700  # requests per window (X-Rate-Limit), then 429 + Retry-After
    zendesk_window_seconds: float = 60.0  # Zendesk counts per minute; tests shorten it
    zendesk_429_every: int = 0  # every Nth Zendesk request answers a plain-text 429; 0 = never
    x_user_token_ttl_s: float = 7200.0  # an X OAuth 2.0 user-context token lives 2 hours

    def update(self, **opts: Any) -> None:
        for name, value in opts.items():
            if name in (
                "rate_limits",
                "rate_window_seconds",
                "zendesk_rate_limit",
                "zendesk_window_seconds",
            ):
                self.rate_epoch += 1
            if name == "rate_limits":
                # None restores the realistic limits; a dict overrides the named endpoints only.
                overrides = {str(k): int(v) for k, v in (value or {}).items()}
                base = dict(X_RATE_LIMITS) if value is None else self.rate_limits
                self.rate_limits = {**base, **overrides}
            elif name in (
                "latency_ms",
                "rate_window_seconds",
                "zendesk_window_seconds",
                "sf_bulk_delay_ms",
                "x_user_token_ttl_s",
            ):
                setattr(self, name, float(value))
            elif name in ("sf_daily_limit", "sf_batch_size", "zendesk_429_every"):
                setattr(self, name, int(value))
            elif name == "zendesk_rate_limit":  # None restores the recorded plan limit
                self.zendesk_rate_limit = 700 if value is None else int(value)
            else:
                raise ValueError(f"unknown sandbox option {name!r}")

    def as_dict(self) -> dict[str, Any]:
        return {
            "latency_ms": self.latency_ms,
            "rate_limits": dict(self.rate_limits),
            "rate_window_seconds": self.rate_window_seconds,
            "sf_daily_limit": self.sf_daily_limit,
            "sf_batch_size": self.sf_batch_size,
            "sf_bulk_delay_ms": self.sf_bulk_delay_ms,
            "zendesk_rate_limit": self.zendesk_rate_limit,
            "zendesk_window_seconds": self.zendesk_window_seconds,
            "zendesk_429_every": self.zendesk_429_every,
            "x_user_token_ttl_s": self.x_user_token_ttl_s,
        }
