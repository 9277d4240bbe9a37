"""Zendesk Support sink: requesters by external id, one ticket per conversation.

Requesters are upserted with ``users/create_or_update`` keyed by the person's identity
key. Tickets carry the conversation key as ``external_id`` and are created with an
``Idempotency-Key``, so a retried create answers with the first ticket; comments carry
the message id in their body, so a comment whose write went unconfirmed can be found.
"""

from __future__ import annotations

import html
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import requests
from pydantic import SecretStr

from connectors.http import (
    Action,
    ApiError,
    RetryPolicy,
    build_session,
    call_with_retry,
    register_secret,
    retry_after_seconds,
    transport_error,
)
from socialcrm.config import ZendeskSettings, resolve_secret
from socialcrm.records import DestinationField

log = logging.getLogger("socialcrm.zendesk")

SYSTEM = "zendesk"
PRIORITIES = ("low", "normal", "high", "urgent")
TICKET_TYPES = ("question", "incident", "problem", "task")
# What a ticket mapping may write; Zendesk has no describe call for these.
TICKET_FIELDS: dict[str, DestinationField] = {
    "subject": DestinationField("subject", "string", "Subject", length=150, nillable=False),
    "body": DestinationField("body", "textarea", "First comment", length=65000),
    "priority": DestinationField(
        "priority", "picklist", "Priority", restricted_picklist=True, picklist_values=PRIORITIES
    ),
    "type": DestinationField(
        "type", "picklist", "Type", restricted_picklist=True, picklist_values=TICKET_TYPES
    ),
    "requester_name": DestinationField("requester_name", "string", "Requester", length=255),
}


@dataclass
class _HttpFailure(Exception):
    response: requests.Response


@dataclass
class ZendeskClient:
    settings: ZendeskSettings
    session: requests.Session
    policy: RetryPolicy = field(default_factory=RetryPolicy)
    reads: int = 0
    writes: int = 0

    def request(
        self,
        method: str,
        path: str,
        *,
        template: str,
        body: dict[str, Any] | None = None,
        params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        keys: list[str] | None = None,
        already_applied: Callable[[], bool] | None = None,
    ) -> tuple[dict[str, Any], requests.structures.CaseInsensitiveDict[str]]:
        """One call under the retry policy.

        ``already_applied`` guards writes that are not idempotent: after an answer that
        leaves it unknown whether the write landed (a reset, a timeout, a 5xx), it is
        asked before the write is sent again.
        """
        url = self.settings.base_url.rstrip("/") + path
        call = f"{method} {template}"
        unsure = False

        def once() -> tuple[dict[str, Any], requests.structures.CaseInsensitiveDict[str]]:
            nonlocal unsure
            if unsure and already_applied is not None:
                # A timed-out write may still be in the server's hands: let it settle
                # before looking (a real fix needs safe_update; see the README).
                self.policy.sleep(self.settings.timeout_seconds)
                if already_applied():
                    log.info("zendesk %s: the earlier attempt had landed; not resent", call)
                    return {}, requests.structures.CaseInsensitiveDict()
            if method == "GET":
                self.reads += 1
            else:
                self.writes += 1
            try:
                response = self.session.request(
                    method, url, json=body, params=params, headers=headers
                )
            except requests.RequestException:
                unsure = True
                raise
            if response.status_code >= 500:
                unsure = True
            if response.status_code >= 300:
                raise _HttpFailure(response)
            data = response.json() if response.content else {}
            return (data if isinstance(data, dict) else {}), response.headers

        return call_with_retry(
            once,
            system=SYSTEM,
            call=call,
            classify=lambda exc: _classify(call, exc),
            policy=self.policy,
            record_keys=keys or [],
        )

    def ticket_url(self, ticket_id: int | str) -> str:
        return ticket_url(self.settings, ticket_id)


def ticket_url(settings: ZendeskSettings, ticket_id: int | str) -> str:
    """The agent's view of a ticket, for artifacts and cross-links (no call, no secret)."""
    return f"{settings.base_url.rstrip('/')}/agent/tickets/{ticket_id}"


def connect(settings: ZendeskSettings, *, policy: RetryPolicy | None = None) -> ZendeskClient:
    token: SecretStr = resolve_secret(settings.api_token, what="helpdesk.api_token")
    register_secret(token.get_secret_value())
    session = build_session(ca_bundle=settings.ca_bundle, timeout=settings.timeout_seconds)
    session.auth = (f"{settings.email}/token", token.get_secret_value())
    return ZendeskClient(settings=settings, session=session, policy=policy or RetryPolicy())


def _classify(call: str, exc: BaseException) -> ApiError | None:
    if isinstance(exc, requests.RequestException):
        return transport_error(SYSTEM, call, exc)
    if isinstance(exc, ValueError):
        return ApiError(SYSTEM, call, f"malformed JSON body: {exc}")
    if not isinstance(exc, _HttpFailure):
        return None
    response = exc.response
    status = response.status_code
    message = error_text(response)
    if status in (409, 429) or status >= 500:
        return ApiError(
            SYSTEM,
            call,
            message,
            status=status,
            action=Action.RETRY,
            retry_after=retry_after_seconds(response.headers),
        )
    if status == 401:
        message += ": check helpdesk.email and helpdesk.api_token"
    return ApiError(SYSTEM, call, message, status=status, action=Action.FAIL)


def error_text(response: requests.Response) -> str:
    """Zendesk's error bodies, JSON (``error``, ``description``, ``details``) or plain text."""
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:300] or response.reason or "no body"
    if not isinstance(body, dict):
        return str(body)[:300]
    error = body.get("error")
    if isinstance(error, dict):  # {"error": {"title", "message"}} on some endpoints
        error = error.get("title") or error.get("message")
    parts = [str(error or ""), str(body.get("description") or "")]
    details = body.get("details")
    if isinstance(details, dict):
        for name, items in details.items():
            for item in items if isinstance(items, list) else [items]:
                text = item.get("description") if isinstance(item, dict) else item
                parts.append(f"{name}: {text}")
    return ": ".join(part for part in parts if part) or str(body)[:300]


def upsert_requester(
    client: ZendeskClient, external_id: str, name: str, email: str | None = None
) -> int:
    """Find or create the end user by external id (the person's identity key)."""
    user: dict[str, Any] = {"name": name, "external_id": external_id, "role": "end-user"}
    if email:
        user["email"] = email
    body, _ = client.request(
        "POST",
        "/api/v2/users/create_or_update",
        template="/api/v2/users/create_or_update",
        body={"user": user},
        keys=[external_id],
    )
    return int(body["user"]["id"])


def list_all(
    client: ZendeskClient,
    path: str,
    name: str,
    *,
    template: str,
    params: dict[str, Any] | None = None,
    keys: list[str] | None = None,
) -> list[dict[str, Any]]:
    """Every item of an offset-paginated list (``name``), 100 a page, following
    ``next_page``: an absolute URL, read on our own host whatever its spelling."""
    items: list[dict[str, Any]] = []
    query: dict[str, Any] | None = {**(params or {}), "per_page": 100}
    own = urlsplit(client.settings.base_url).netloc.lower()
    next_path: str | None = path
    while next_path:
        body, _ = client.request("GET", next_path, template=template, params=query, keys=keys)
        items.extend(item for item in body.get(name) or [] if isinstance(item, dict))
        link = body.get("next_page")
        if not isinstance(link, str) or not link:
            break
        parts = urlsplit(link)
        if parts.netloc.lower() != own:
            raise ApiError(
                SYSTEM,
                f"GET {template}",
                f"next_page points at another host ({parts.netloc!r:.80}); not followed",
            )
        next_path = parts.path + (f"?{parts.query}" if parts.query else "")
        query = None  # the link holds them
    return items


def find_tickets(client: ZendeskClient, external_id: str) -> list[dict[str, Any]]:
    return list_all(
        client,
        "/api/v2/tickets",
        "tickets",
        template="/api/v2/tickets",
        params={"external_id": external_id},
        keys=[external_id],
    )


def get_ticket(client: ZendeskClient, ticket_id: int) -> dict[str, Any]:
    body, _ = client.request("GET", f"/api/v2/tickets/{ticket_id}", template="/api/v2/tickets/:id")
    return dict(body["ticket"])


def create_ticket(
    client: ZendeskClient, ticket: dict[str, Any], *, idempotency_key: str, key: str
) -> tuple[dict[str, Any], bool]:
    """Create a ticket; returns it and whether Zendesk replayed an earlier create."""
    body, headers = client.request(
        "POST",
        "/api/v2/tickets",
        template="/api/v2/tickets",
        body={"ticket": ticket},
        headers={"Idempotency-Key": idempotency_key},
        keys=[key],
    )
    return dict(body["ticket"]), headers.get("x-idempotency-lookup") == "hit"


def add_comment(
    client: ZendeskClient,
    ticket_id: int,
    comment: dict[str, Any],
    *,
    key: str,
    status: str | None = None,
    already_applied: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    update: dict[str, Any] = {"comment": comment}
    if status:
        update["status"] = status
    body, _ = client.request(
        "PUT",
        f"/api/v2/tickets/{ticket_id}",
        template="/api/v2/tickets/:id",
        body={"ticket": update},
        keys=[key],
        already_applied=already_applied,
    )
    return dict(body.get("ticket") or {})


def ticket_comments(client: ZendeskClient, ticket_id: int) -> list[dict[str, Any]]:
    return list_all(
        client,
        f"/api/v2/tickets/{ticket_id}/comments",
        "comments",
        template="/api/v2/tickets/:id/comments",
    )


# --- privacy: finding a person's records, redaction, deletion for good --------------------

REDACTED = "\u2587"  # what Zendesk puts in place of each redacted character
_TAG = re.compile(r"(<[^<>]*>)")
_LINKING_TAGS = re.compile(r"^<(a|img)\b", re.IGNORECASE)
_REDACT_ATTRIBUTE = re.compile(r"\sredact(?=[\s/>])")


def _gone(error: ApiError) -> bool:
    return error.status == 404


def users_by_external_id(client: ZendeskClient, external_id: str) -> list[dict[str, Any]]:
    """Active users holding this external id (deleted users are not found)."""
    return list_all(
        client,
        "/api/v2/users/search",
        "users",
        template="/api/v2/users/search",
        params={"external_id": external_id},
    )


def requested_tickets(client: ZendeskClient, user_id: int) -> list[dict[str, Any]]:
    """Tickets a user is the requester of; none when the user is gone."""
    try:
        return list_all(
            client,
            f"/api/v2/users/{user_id}/tickets/requested",
            "tickets",
            template="/api/v2/users/:id/tickets/requested",
        )
    except ApiError as error:
        if _gone(error):
            return []
        raise


def find_ticket(client: ZendeskClient, ticket_id: int) -> dict[str, Any] | None:
    """The ticket, or None when it was deleted."""
    try:
        return get_ticket(client, ticket_id)
    except ApiError as error:
        if _gone(error):
            return None
        raise


def update_ticket(client: ZendeskClient, ticket_id: int, fields: dict[str, Any]) -> dict[str, Any]:
    """Set ticket fields (``None`` clears one, e.g. ``external_id``)."""
    body, _ = client.request(
        "PUT",
        f"/api/v2/tickets/{ticket_id}",
        template="/api/v2/tickets/:id",
        body={"ticket": fields},
    )
    return dict(body.get("ticket") or {})


def _with_redact_attribute(tag: str) -> str:
    """``<a href="...">`` -> ``<a href="..." redact>``: Zendesk drops the element itself
    (its link target may name the person); the text inside needs its own ``<redact>``."""
    inner, closing = tag[:-1], ">"
    if inner.endswith("/"):
        inner, closing = inner[:-1], "/>"
    return f"{inner.rstrip()} redact{closing}"


def redaction_markup(html_body: str, terms: Sequence[str] | None) -> str | None:
    """The comment's ``html_body`` with ``<redact>`` around what must go, for
    ``comment_redactions``; None when there is nothing (left) to redact.

    ``terms`` None redacts every word of the comment (and drops its links and images);
    otherwise only the terms, as whole words in any case.
    """
    pattern = None
    if terms is not None:
        variants = {
            html.escape(t, quote=q) for t in terms if t and t.strip() for q in (True, False)
        }
        if not variants:
            return None
        alternatives = "|".join(re.escape(v) for v in sorted(variants, key=len, reverse=True))
        pattern = re.compile(rf"(?<![\w@])@?(?:{alternatives})(?![\w])", re.IGNORECASE)
    changed = False
    pieces: list[str] = []
    for piece in _TAG.split(html_body):
        if not piece:
            continue
        if piece.startswith("<"):
            if (
                _LINKING_TAGS.match(piece)
                and not _REDACT_ATTRIBUTE.search(piece)
                and (pattern is None or pattern.search(html.unescape(piece)))
            ):
                piece = _with_redact_attribute(piece)
                changed = True
            pieces.append(piece)
            continue
        if pattern is None:
            text = piece.strip()
            if text and set(html.unescape(text)) - {REDACTED} - set(" \t\r\n"):
                start = piece.index(text[0])
                end = start + len(text)
                piece = f"{piece[:start]}<redact>{text}</redact>{piece[end:]}"
                changed = True
        else:
            piece, hits = pattern.subn(lambda m: f"<redact>{m[0]}</redact>", piece)
            changed = changed or hits > 0
        pieces.append(piece)
    return "".join(pieces) if changed else None


def redact_comment(
    client: ZendeskClient, ticket_id: int, comment_id: int, html_body: str
) -> dict[str, Any]:
    """Redact a comment for good (``PUT /api/v2/comment_redactions/{id}``: works on closed
    tickets too, unlike the older ``.../comments/{id}/redact``)."""
    body, _ = client.request(
        "PUT",
        f"/api/v2/comment_redactions/{comment_id}",
        template="/api/v2/comment_redactions/:id",
        body={"ticket_id": ticket_id, "html_body": html_body},
    )
    return dict(body.get("comment") or {})


def delete_user(client: ZendeskClient, user_id: int) -> bool:
    """Soft-delete a user; False when already deleted. Zendesk refuses while the user is
    the requester of a ticket that is not closed."""
    try:
        client.request("DELETE", f"/api/v2/users/{user_id}", template="/api/v2/users/:id")
    except ApiError as error:
        if _gone(error):
            return False
        raise
    return True


def delete_user_for_good(client: ZendeskClient, user_id: int) -> bool:
    """Permanently delete a soft-deleted user (GDPR); False when already done."""
    try:
        client.request(
            "DELETE", f"/api/v2/deleted_users/{user_id}", template="/api/v2/deleted_users/:id"
        )
    except ApiError as error:
        if _gone(error):
            return False
        raise
    return True


def delete_ticket_for_good(client: ZendeskClient, ticket_id: int, *, polls: int = 30) -> bool:
    """Delete a ticket, then delete it for good (a job, waited for); False when it was
    already gone."""
    soft = True
    try:
        client.request("DELETE", f"/api/v2/tickets/{ticket_id}", template="/api/v2/tickets/:id")
    except ApiError as error:
        if not _gone(error):
            raise
        soft = False  # already soft-deleted, or gone entirely
    try:
        body, _ = client.request(
            "DELETE",
            f"/api/v2/deleted_tickets/{ticket_id}",
            template="/api/v2/deleted_tickets/:id",
        )
    except ApiError as error:
        if _gone(error):
            return soft
        raise
    job = dict(body.get("job_status") or {})
    for _ in range(polls):
        if job.get("status") in ("completed", "failed", "killed"):
            break
        client.policy.sleep(1.0)
        job_body, _ = client.request(
            "GET", f"/api/v2/job_statuses/{job.get('id')}", template="/api/v2/job_statuses/:id"
        )
        job = dict(job_body.get("job_status") or {})
    failed = [r for r in job.get("results") or [] if isinstance(r, dict) and r.get("error")]
    if job.get("status") != "completed" or failed:
        reason = failed[0].get("error") if failed else job.get("status") or "no answer"
        raise ApiError(
            SYSTEM,
            "DELETE /api/v2/deleted_tickets/:id",
            f"permanent deletion of ticket {ticket_id} did not complete: {reason}",
        )
    return True
