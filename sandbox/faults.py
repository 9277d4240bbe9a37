"""Fault injection: the ways real APIs fail under load, answered in each system's wire shape.

A soak test ("nothing lost, nothing doubled") needs failures that look exactly like the real
ones, including the nasty kind where the write happened but the answer never arrived. Each
system has a rate (share of its API calls that fail) and a weighted mix of kinds:

- ``429`` X problem+json with ``x-rate-limit-remaining: 0`` and a reset 1-2 s ahead;
  Zendesk plain text with ``Retry-After: 1``.
- ``503`` each system's 503 body (X problem+json, Salesforce ``SERVER_UNAVAILABLE`` array,
  Zendesk JSON or a plain-text maintenance page, both with ``Retry-After``).
- ``reset`` the TCP connection is closed abortively (RST) without an answer, either before
  the request is applied or after it was (the write happened, the answer is lost).
- ``slow`` the answer waits ``slow_seconds``, again before or after applying the request.
- Salesforce ``expired_session`` (401 ``INVALID_SESSION_ID``; the token stays revoked),
  ``request_limit`` (403 ``REQUEST_LIMIT_EXCEEDED``) and ``partial`` (sObject Collections,
  and the call closing a Bulk API 2.0 job: ~20% of the records fail with
  ``UNABLE_TO_LOCK_ROW`` and are not stored; for a job, in ``failedResults``).

Draws come from one seeded ``random.Random`` behind a lock, so a run with the same seed and
the same request order fails the same way; every injected fault is counted per kind.
"""

from __future__ import annotations

import copy
import math
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from sandbox.wire import Response, json_response
from sandbox.x_params import problem

SYSTEMS = ("x", "salesforce", "zendesk")
KINDS: dict[str, tuple[str, ...]] = {
    "x": ("429", "503", "reset", "slow"),
    "salesforce": ("503", "reset", "slow", "expired_session", "request_limit", "partial"),
    "zendesk": ("429", "503", "reset", "slow"),
}
DEFAULT_MIX: dict[str, dict[str, float]] = {
    "x": {"429": 1, "503": 1, "reset": 1, "slow": 1},
    "salesforce": {
        "503": 1,
        "reset": 1,
        "slow": 1,
        "expired_session": 1,
        "request_limit": 0,
        "partial": 1,
    },
    "zendesk": {"429": 1, "503": 1, "reset": 1, "slow": 1},
}
DEFAULT_SLOW_SECONDS = 3.0
DEFAULT_SEED = 1
PHASED = ("reset", "slow")  # the kinds that happen before or after the request is applied
SF_JSON = "application/json;charset=UTF-8"
ZD_JSON = "application/json; charset=UTF-8"
TEXT = "text/plain; charset=utf-8"
LOCKED_SHARE = 0.2


class DropConnection(Exception):
    """Raised by the world to make the HTTP handler reset the connection without answering."""


@dataclass(frozen=True)
class Fault:
    system: str
    kind: str
    after: bool = False  # reset / slow: the request is applied first


def default_config() -> dict[str, Any]:
    config: dict[str, Any] = {
        name: {"rate": 0.0, "kinds": dict(mix)} for name, mix in DEFAULT_MIX.items()
    }
    config["slow_seconds"] = DEFAULT_SLOW_SECONDS
    config["seed"] = DEFAULT_SEED
    return config


class FaultInjector:
    """Decides, per API call, whether and how it fails; counts what it injected."""

    def __init__(self, seed: int = DEFAULT_SEED) -> None:
        self.lock = threading.Lock()
        self.config = default_config()
        self.config["seed"] = seed
        self.rng = random.Random(seed)
        self.counts: dict[str, Counter[str]] = {name: Counter() for name in SYSTEMS}
        self.phases: dict[str, Counter[str]] = {name: Counter() for name in SYSTEMS}

    # --- configuration --------------------------------------------------------------------

    def configure(self, spec: dict[str, Any] | None) -> None:
        """Merge ``spec`` into the configuration; ``None`` or ``{}`` keeps it, except that
        ``None`` switches every rate off. A service's ``kinds`` replaces its whole mix."""
        with self.lock:
            if spec is None:
                for name in SYSTEMS:
                    self.config[name]["rate"] = 0.0
                return
            if not isinstance(spec, dict):
                raise TypeError("faults must be an object")
            config = copy.deepcopy(self.config)
            for key, value in spec.items():
                if key in SYSTEMS:
                    config[key] = _service(key, value, config[key])
                elif key == "slow_seconds":
                    config[key] = _non_negative(key, value)
                elif key == "seed":
                    config[key] = int(value)
                else:
                    raise ValueError(f"unknown faults key {key!r}")
            if "seed" in spec:
                self.rng = random.Random(config["seed"])
            self.config = config

    def set_rate(self, rate: float) -> None:
        """``fault_rate`` / ``--fault-rate``: the same rate on every system, default mixes."""
        rate = _rate(rate)
        with self.lock:
            for name in SYSTEMS:
                self.config[name] = {"rate": rate, "kinds": dict(DEFAULT_MIX[name])}

    def as_dict(self) -> dict[str, Any]:
        with self.lock:
            return copy.deepcopy(self.config)

    @property
    def slow_seconds(self) -> float:
        return float(self.config["slow_seconds"])

    def counted(self) -> dict[str, dict[str, int]]:
        with self.lock:
            return {name: dict(sorted(c.items())) for name, c in self.counts.items()}

    def counted_phases(self) -> dict[str, dict[str, int]]:
        with self.lock:
            return {name: dict(sorted(c.items())) for name, c in self.phases.items()}

    def reset_counts(self) -> None:
        with self.lock:
            for counter in [*self.counts.values(), *self.phases.values()]:
                counter.clear()

    # --- drawing --------------------------------------------------------------------------

    def draw(self, system: str, applicable: set[str]) -> Fault | None:
        """One decision for one API call; ``applicable`` are the kinds this call can suffer."""
        with self.lock:
            service = self.config[system]
            rate = float(service["rate"])
            if rate <= 0 or self.rng.random() >= rate:
                return None
            mix = [(k, w) for k, w in service["kinds"].items() if w > 0 and k in applicable]
            if not mix:
                return None
            kind = self.rng.choices([k for k, _ in mix], weights=[w for _, w in mix])[0]
            after = kind in PHASED and self.rng.random() < 0.5
            self.counts[system][kind] += 1
            if kind in PHASED:
                self.phases[system][f"{kind}_{'after' if after else 'before'}"] += 1
            return Fault(system, kind, after)

    def randint(self, low: int, high: int) -> int:
        with self.lock:
            return self.rng.randint(low, high)

    def coin(self) -> bool:
        with self.lock:
            return self.rng.random() < 0.5

    def locked_rows(self, n: int) -> set[int]:
        """Which of ``n`` collection records fail to lock: ~20%, at least one, not all of many."""
        with self.lock:
            rows = {i for i in range(n) if self.rng.random() < LOCKED_SHARE}
            if n and not rows:
                rows.add(self.rng.randrange(n))
            if n > 1 and len(rows) == n:
                rows.discard(self.rng.randrange(n))
            return rows


def _rate(value: Any) -> float:
    rate = float(value)
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"fault rate must be between 0 and 1, not {value!r}")
    return rate


def _non_negative(name: str, value: Any) -> float:
    number = float(value)
    if number < 0 or math.isnan(number):
        raise ValueError(f"{name} must be >= 0, not {value!r}")
    return number


def _service(system: str, value: Any, current: dict[str, Any]) -> dict[str, Any]:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return {"rate": _rate(value), "kinds": dict(current["kinds"])}
    if not isinstance(value, dict):
        raise TypeError(f"faults.{system} must be an object or a rate")
    unknown = set(value) - {"rate", "kinds"}
    if unknown:
        raise ValueError(f"unknown faults.{system} keys {sorted(unknown)}")
    result = {"rate": current["rate"], "kinds": dict(current["kinds"])}
    if "rate" in value:
        result["rate"] = _rate(value["rate"])
    if "kinds" in value:
        kinds = value["kinds"]
        if not isinstance(kinds, dict):
            raise TypeError(f"faults.{system}.kinds must be an object of weights")
        for kind, weight in kinds.items():
            if kind not in KINDS[system]:
                raise ValueError(
                    f"{system} has no fault kind {kind!r} (known: {', '.join(KINDS[system])})"
                )
            _non_negative(f"faults.{system}.kinds.{kind}", weight)
        result["kinds"] = {str(k): float(w) for k, w in kinds.items()}
    return result


# --- answers in each system's wire shape ---------------------------------------------------


def x_rate_limited(limit: int, reset_in: int) -> Response:
    headers = {
        "x-rate-limit-limit": str(limit),
        "x-rate-limit-remaining": "0",
        "x-rate-limit-reset": str(int(time.time()) + reset_in),
    }
    return problem(429, "Too Many Requests", headers=headers)


def unavailable(system: str, *, text_body: bool = False) -> Response:
    """Each system's 503 (the Zendesk one as JSON or as its plain-text maintenance page)."""
    if system == "x":
        return problem(503, "Service Unavailable")
    if system == "zendesk":  # maintenance answers carry Retry-After; body wording unverified
        if text_body:
            page = b"Service Unavailable: Zendesk is down for maintenance. Please try again later."
            return Response(503, page, {"Content-Type": TEXT, "Retry-After": "1"})
        busy = {"error": "ServiceUnavailable", "description": "Service temporarily unavailable"}
        return json_response(503, busy, content_type=ZD_JSON, headers={"Retry-After": "1"})
    body = [{"message": "Server temporarily unavailable", "errorCode": "SERVER_UNAVAILABLE"}]
    return json_response(503, body, content_type=SF_JSON)


def zendesk_rate_limited(path: str, headers: dict[str, str]) -> Response:
    # The recorded endpoint-level limits: plain text, never JSON (zendesk_429.json).
    text = "Rate limit for ticket updates exceeded, please wait before updating again."
    if "/users" in path:
        text = "You have exceeded the rate limit for updating a single unique user."
    return Response(429, text.encode(), {"Content-Type": TEXT, "Retry-After": "1", **headers})


def sf_expired_session() -> Response:
    body = [{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}]
    return json_response(401, body, content_type=SF_JSON)


def sf_request_limit(limit_info: str) -> Response:
    body = [{"message": "TotalRequests Limit exceeded.", "errorCode": "REQUEST_LIMIT_EXCEEDED"}]
    return json_response(403, body, content_type=SF_JSON, headers={"Sforce-Limit-Info": limit_info})


def unable_to_lock(record_id: str) -> dict[str, Any]:
    """The per-record error of a row lock held by another transaction (retry succeeds)."""
    return {
        "statusCode": "UNABLE_TO_LOCK_ROW",
        "message": "unable to obtain exclusive access to this record or 1 records: " + record_id,
        "fields": [],
    }
