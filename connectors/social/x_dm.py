"""X direct messages: ``GET /2/dm_events``, newest first, with a user-context token.

The DM lookup has no ``since_id``: we page from the newest event and stop at the first
one we already have (ids are time-ordered snowflakes). The brand's own messages are
recognised by sender and marked, so they never become customer messages.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from connectors.http import RetryPolicy, build_session, register_secret
from connectors.social.x import (
    SYSTEM,
    USER_FIELDS,
    XClient,
    _bad,
    _dict,
    _id,
    _id_after,
    _list,
    _partial_errors,
    _str_or_none,
    parse_profile,
    parse_time,
    unnamed_key,
)
from socialcrm.config import ConfigError, XAccount, resolve_secret
from socialcrm.records import DirectMessage, Page, SocialProfile

DM_FIELDS = "id,text,event_type,created_at,dm_conversation_id,sender_id,participant_ids,attachments"
STREAM = "dms"


def connect_dm(account: XAccount, *, policy: RetryPolicy | None = None) -> XClient:
    """A client holding the user-context token DMs need (an app bearer is refused)."""
    if account.dm_token is None:
        raise ConfigError(
            f"accounts[{account.name}].dm_token: DMs need an OAuth2 user-context token "
            "with dm.read; set dm_token to its reference"
        )
    token = resolve_secret(account.dm_token, what=f"accounts[{account.name}].dm_token")
    register_secret(token.get_secret_value())
    session = build_session(ca_bundle=account.ca_bundle, timeout=account.timeout_seconds)
    policy = policy or RetryPolicy(max_wait_seconds=account.max_rate_limit_wait_seconds)
    return XClient(account=account, session=session, token=token, policy=policy)


@dataclass(frozen=True, slots=True)
class DmRequest:
    since_id: str | None = None
    pagination_token: str | None = None
    newest_id: str | None = None


def fetch_dm_page(
    client: XClient, request: DmRequest
) -> tuple[Page[DirectMessage], DmRequest | None]:
    """One page of DM events; ``page.cursor`` is set on the last page of the walk only."""
    params: dict[str, Any] = {
        "dm_event.fields": DM_FIELDS,
        "event_types": "MessageCreate",
        "expansions": "sender_id,participant_ids",
        "user.fields": USER_FIELDS,
        "max_results": client.account.page_size,
    }
    if request.pagination_token:
        params["pagination_token"] = request.pagination_token
    body = client.get("/2/dm_events", params, template="/2/dm_events")
    page = parse_dm_events(body, brand_id=client.account.user_id)
    ids = [m.message_id for m in page.records if m.message_id.isdigit()]
    newest = request.newest_id or (max(ids, key=int) if ids else None)
    reached_known = False
    if request.since_id:
        kept = [m for m in page.records if _id_after(m.message_id, request.since_id)]
        reached_known = len(kept) < len(page.records)
        page.records = kept
    token = _str_or_none(_dict(body.get("meta")).get("next_token"))
    if token and not reached_known:
        page.next_token = token
        return page, replace(request, pagination_token=token, newest_id=newest)
    page.cursor = newest or request.since_id
    return page, None


def parse_dm_events(body: dict[str, Any], *, brand_id: str) -> Page[DirectMessage]:
    page: Page[DirectMessage] = Page(records=[], warnings=_partial_errors(body))
    users = {
        str(_id(user.get("id"))): user
        for user in _list(_dict(body.get("includes")).get("users"))
        if isinstance(user, dict) and _id(user.get("id"))
    }
    for event in _list(body.get("data")):
        if not isinstance(event, dict):
            page.problems.append(_bad(unnamed_key("x:dm", event), None, "not an object"))
            continue
        event_id = _id(event.get("id"))
        if event_id is None:
            page.problems.append(
                _bad(
                    unnamed_key("x:dm", event),
                    "id",
                    f"expected a numeric string, got {event.get('id')!r:.40}",
                    event,
                )
            )
            continue
        key = f"x:dm:{event_id}"
        if event.get("event_type", "MessageCreate") != "MessageCreate":
            continue  # joins and leaves carry no message
        conversation = event.get("dm_conversation_id")
        sender_id = _id(event.get("sender_id"))
        if not isinstance(conversation, str) or not conversation:
            page.problems.append(_bad(key, "dm_conversation_id", "missing", event))
            continue
        if sender_id is None:
            page.problems.append(
                _bad(key, "sender_id", f"not a user id: {event.get('sender_id')!r:.40}", event)
            )
            continue
        user = users.get(sender_id)
        try:
            sender = (
                parse_profile(user)
                if user
                else SocialProfile(platform="x", user_id=sender_id, handle=f"id{sender_id}")
            )
        except ValueError as exc:
            field_name, _, reason = str(exc).partition(": ")
            page.problems.append(_bad(key, f"sender.{field_name}", reason, event))
            continue
        text = event.get("text")
        attachments = _list(_dict(event.get("attachments")).get("media_keys"))
        page.records.append(
            DirectMessage(
                platform="x",
                message_id=event_id,
                conversation_id=conversation,
                sender=sender,
                text=text if isinstance(text, str) else "",
                sent_at=parse_time(event.get("created_at")),
                from_brand=sender_id == brand_id,
                attachments=tuple(str(a) for a in attachments if isinstance(a, str)),
            )
        )
    return page


__all__ = ["STREAM", "SYSTEM", "DmRequest", "connect_dm", "fetch_dm_page", "parse_dm_events"]
