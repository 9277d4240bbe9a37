"""The one HTTP layer every connector uses: sessions, timeouts, retries, rate limits.

Each system supplies a classifier turning a failure into an :class:`Action`; one tenacity
policy then does the rest (retry transient failures honouring ``Retry-After`` and
rate-limit reset headers, re-authenticate once, give up with an error that names the
system, the call and the records, and never a secret).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

import requests
from requests.adapters import HTTPAdapter
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    wait_random_exponential,
)

log = logging.getLogger("socialcrm.http")

T = TypeVar("T")
USER_AGENT = "socialcrm/0.1 (+https://github.com/socialcrm/socialcrm)"


class Action(StrEnum):
    RETRY = "retry"  # transient: 429, 5xx, timeouts, connection resets
    REAUTH = "reauth"  # expired token: get a new one, then try again once
    QUOTA = "quota"  # the daily allowance is spent: stop cleanly, resume next run
    FAIL = "fail"  # permanent: validation, permissions, bad request


@dataclass
class ApiError(Exception):
    """A failed call, worded for the operator; it never carries a secret."""

    system: str
    call: str
    message: str
    status: int | None = None
    action: Action = Action.FAIL
    retry_after: float | None = None
    record_keys: list[str] = field(default_factory=list)
    error_code: str | None = None

    def __str__(self) -> str:
        status = f" HTTP {self.status}" if self.status else ""
        keys = ""
        if self.record_keys:
            shown = ", ".join(self.record_keys[:5])
            more = f" (+{len(self.record_keys) - 5} more)" if len(self.record_keys) > 5 else ""
            keys = f" [records: {shown}{more}]"
        return f"{self.system} {self.call}{status}: {redact(self.message)}{keys}"


def is_systemic(error: ApiError) -> bool:
    """Failures the next record would meet too (a spent quota, refused credentials): the
    run stops rather than spoil a batch; any other failure stays with its records."""
    return error.action is Action.QUOTA or error.status in (401, 403)


class _TimeoutAdapter(HTTPAdapter):
    """simple-salesforce sets no timeout; a hung socket must never hang a scheduled run."""

    def __init__(self, timeout: float) -> None:
        super().__init__(pool_connections=4, pool_maxsize=16)
        self._timeout = timeout

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = self._timeout
        return super().send(request, **kwargs)


def build_session(*, ca_bundle: Path | None = None, timeout: float = 30.0) -> requests.Session:
    """A session that verifies TLS, with a CA we choose, and always times out.

    ``trust_env`` is off: ``REQUESTS_CA_BUNDLE`` in the environment would otherwise
    silently replace a pinned CA (requests merges it over ``session.verify``).
    """
    session = requests.Session()
    session.trust_env = False
    session.verify = str(ca_bundle) if ca_bundle else True
    session.headers["User-Agent"] = USER_AGENT
    adapter = _TimeoutAdapter(timeout)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return session


_SECRET_PATTERNS = [
    re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=!-]+"),
    re.compile(
        r"(?i)((?:access_token|client_secret|refresh_token|password|assertion)[\"'=:\s]+)"
        r"[^\s&\"',}]+"
    ),
]
_known_secrets: set[str] = set()


def register_secret(value: str) -> None:
    """Remember a resolved secret so that :func:`redact` removes it wherever it shows up."""
    if len(value) >= 6:
        _known_secrets.add(value)


def redact(text: str) -> str:
    for secret in _known_secrets:
        if secret in text:
            text = text.replace(secret, "***")
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub(r"\1***", text)
    return text


def _clean_text(text: str) -> str:
    if "\x00" in text:
        text = text.replace("\x00", "")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: legal in JSON, not storable anywhere
        text = "".join("\ufffd" if 0xD800 <= ord(ch) <= 0xDFFF else ch for ch in text)
    return text


def sanitize_json(value: Any) -> Any:
    """Make a parsed payload storable: no NUL, no lone surrogate, anywhere in it.

    Both are legal in JSON and impossible in PostgreSQL text (and in UTF-8); everything
    else a stranger wrote is kept and judged later, field by field.
    """
    if isinstance(value, str):
        return _clean_text(value)
    if isinstance(value, dict):
        return {_clean_text(str(k)): sanitize_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [sanitize_json(item) for item in value]
    return value


def retry_after_seconds(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """How long the server asks us to wait, from whichever header it uses.

    ``Retry-After`` (seconds or an HTTP date), X's ``x-rate-limit-reset`` (epoch seconds),
    the IETF ``ratelimit-reset`` (seconds from now).
    """
    now = time.time() if now is None else now
    lowered = {k.lower(): v for k, v in headers.items()}
    value = lowered.get("retry-after")
    if value:
        try:
            return max(0.0, float(value))
        except ValueError:
            try:
                return max(0.0, parsedate_to_datetime(value).timestamp() - now)
            except (TypeError, ValueError):
                pass
    reset = lowered.get("x-rate-limit-reset")
    if reset:
        try:
            return max(0.0, float(reset) - now + 1.0)
        except ValueError:
            pass
    reset = lowered.get("ratelimit-reset")
    if reset:
        try:
            return max(0.0, float(reset))
        except ValueError:
            pass
    return None


def transport_error(system: str, call: str, exc: requests.RequestException) -> ApiError:
    """Timeouts and resets are transient; a TLS failure is not and says what to fix."""
    if isinstance(exc, requests.exceptions.SSLError):
        return ApiError(
            system,
            call,
            "TLS certificate not trusted: set ca_bundle in the config to the CA that signed "
            f"the server certificate ({type(exc).__name__})",
            action=Action.FAIL,
        )
    return ApiError(system, call, f"{type(exc).__name__}: {exc}", action=Action.RETRY)


@dataclass
class Pacing:
    """How fast one external system may be called, beyond what its own headers say.

    ``per_second`` spaces the calls of this process (all threads); ``prefect_limit`` names
    a Prefect global concurrency limit with slot decay (``prefect gcl create NAME --limit
    N --slot-decay-per-second R``) that every worker on the server shares.
    """

    per_second: float | None = None
    prefect_limit: str | None = None
    _next: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock)


_PACING: dict[str, Pacing] = {}


def set_pacing(system: str, pacing: Pacing | None) -> None:
    """Configure (or, with None, lift) the pacing of ``system`` for this process."""
    if pacing is None:
        _PACING.pop(system, None)
    else:
        _PACING[system] = pacing


def pace(system: str) -> None:
    """Wait for the system's turn; every attempt of every call goes through here."""
    pacing = _PACING.get(system)
    if pacing is None:
        return
    if pacing.prefect_limit:
        from prefect.concurrency.sync import rate_limit

        rate_limit(pacing.prefect_limit, occupy=1, strict=False)
    if pacing.per_second:
        with pacing._lock:
            now = time.monotonic()
            start = max(now, pacing._next)
            pacing._next = start + 1.0 / pacing.per_second
        if start > now:
            time.sleep(start - now)


@dataclass
class RetryPolicy:
    max_attempts: int = 6
    max_total_seconds: float = 600.0
    max_wait_seconds: float = 900.0
    backoff_initial: float = 0.5
    backoff_max: float = 30.0
    # Session renewals per call: calls running side by side share a session, so one
    # call can meet a session that another call's failure renewed, and then its own
    # expiring; a session refused right after every renewal is a real failure.
    max_reauthentications: int = 3
    sleep: Callable[[float], None] = time.sleep


def call_with_retry(
    fn: Callable[[], T],
    *,
    system: str,
    call: str,
    classify: Callable[[BaseException], ApiError | None],
    policy: RetryPolicy | None = None,
    reauthenticate: Callable[[], None] | None = None,
    record_keys: Iterable[str] = (),
) -> T:
    """Run ``fn`` under the shared retry policy.

    ``classify`` maps an exception to an :class:`ApiError` (or ``None`` for a bug, which
    is re-raised untouched). Only ``RETRY`` errors are retried; ``REAUTH`` is retried
    after ``reauthenticate``, at most ``policy.max_reauthentications`` times a call; the
    last error gets the record keys attached.
    """
    policy = policy or RetryPolicy()
    keys = list(record_keys)
    reauthentications = 0
    backoff = wait_random_exponential(multiplier=policy.backoff_initial, max=policy.backoff_max)

    def wait(state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, ApiError) and exc.retry_after is not None:
            return min(exc.retry_after, policy.max_wait_seconds)
        return float(backoff(state))

    def attempt() -> T:
        nonlocal reauthentications
        pace(system)
        try:
            return fn()
        except ApiError:
            raise
        except Exception as exc:
            error = classify(exc)
            if error is None:
                raise
            renewals_left = reauthentications < policy.max_reauthentications
            if error.action is Action.REAUTH and reauthenticate and renewals_left:
                reauthentications += 1
                reauthenticate()
                error.action = Action.RETRY
                error.retry_after = 0.0
            raise error from exc

    def log_retry(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        delay = state.next_action.sleep if state.next_action else 0.0
        log.warning(
            "%s %s: %s; retry %d/%d in %.1fs",
            system,
            call,
            exc,
            state.attempt_number,
            policy.max_attempts - 1,
            delay,
        )

    retrying = Retrying(
        stop=stop_after_attempt(policy.max_attempts) | stop_after_delay(policy.max_total_seconds),
        wait=wait,
        retry=retry_if_exception(lambda e: isinstance(e, ApiError) and e.action is Action.RETRY),
        reraise=True,
        sleep=policy.sleep,
        before_sleep=log_retry,
    )
    try:
        return retrying(attempt)
    except ApiError as error:
        if keys and not error.record_keys:
            error.record_keys = keys
        raise
