"""X direct messages: ``GET /2/dm_events``, newest first, with a user-context token.

The DM lookup has no ``since_id``: we page from the newest event and stop at the first
one we already have (ids are time-ordered snowflakes). The brand's own messages are
recognised by sender and marked, so they never become customer messages.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import requests
from pydantic import SecretStr

from connectors.http import (
    Action,
    ApiError,
    RetryPolicy,
    build_session,
    register_secret,
    transport_error,
)
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
from socialcrm.state import StoredToken, utcnow

if TYPE_CHECKING:
    from socialcrm.state import StateStore

log = logging.getLogger(__name__)

DM_FIELDS = "id,text,event_type,created_at,dm_conversation_id,sender_id,participant_ids,attachments"
STREAM = "dms"
WALK = "dms.walk"
"""Where an unfinished walk through older DM pages stands (see ``resume_request``)."""


RENEWAL_PATH = "/2/oauth2/token"
RENEW_BEFORE = timedelta(minutes=15)  # a stored token closer to its end is renewed first


def connect_dm(
    account: XAccount, *, policy: RetryPolicy | None = None, store: StateStore | None = None
) -> XClient:
    """A client holding the user-context token DMs need (an app bearer is refused).

    With ``dm_refresh_token`` the token is renewed as it runs out, and each rotated
    refresh token is kept in ``store`` (required then); with ``dm_token`` alone it is
    used as given until X refuses it.
    """
    session = build_session(ca_bundle=account.ca_bundle, timeout=account.timeout_seconds)
    policy = policy or RetryPolicy(max_wait_seconds=account.max_rate_limit_wait_seconds)
    if account.dm_refresh_token is not None:
        if store is None:
            raise ConfigError(f"accounts[{account.name}].dm_refresh_token needs a state store")
        tokens = DmTokens(account, session, store)
        return XClient(  # the token is read (or renewed) at the first call, not here
            account=account,
            session=session,
            token=SecretStr(""),
            policy=policy,
            credential="dm_refresh_token",
            renew=tokens.renew,
        )
    if account.dm_token is None:
        raise ConfigError(
            f"accounts[{account.name}].dm_token: DMs need an OAuth2 user-context token "
            "with dm.read; set dm_refresh_token (and dm_client_id) or dm_token"
        )
    token = resolve_secret(account.dm_token, what=f"accounts[{account.name}].dm_token")
    register_secret(token.get_secret_value())
    return XClient(
        account=account, session=session, token=token, policy=policy, credential="dm_token"
    )


@dataclass
class DmTokens:
    """An account's DM token, renewed with the refresh token X rotates at every renewal.

    The newest pair lives in the state store (``tokens``, name ``x-dm:<account>``), so the
    next run, on any worker, goes on from it; the configured refresh token only starts the
    chain. Renewals are serialised: calls side by side that find the token expired get
    one renewal, not one each (a second would spend a refresh token already used).
    """

    account: XAccount
    session: requests.Session
    store: StateStore
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def name(self) -> str:
        return f"x-dm:{self.account.name}"

    def renew(self, refused: SecretStr) -> SecretStr:
        """A token instead of ``refused`` (empty: none yet): the stored one while it has a
        while left and is not the refused one (another call or run renewed it), else new.

        A stored chain started from another configured refresh token is left: the app was
        authorized again and the config holds the new start.
        """
        with self._lock:
            configured = self._configured()
            origin = hashlib.sha256(configured.encode()).hexdigest()
            stored = self.store.stored_token(self.name)
            if stored is not None and stored.origin != origin:
                stored = None
            if (
                stored is not None
                and stored.access_token != refused.get_secret_value()
                and stored.expires_at is not None
                and stored.expires_at - utcnow() > RENEW_BEFORE
            ):
                register_secret(stored.access_token)
                return SecretStr(stored.access_token)
            refresh = stored.refresh_token if stored and stored.refresh_token else configured
            return self._refresh(refresh, origin)

    def _configured(self) -> str:
        account = self.account
        assert account.dm_refresh_token is not None
        what = f"accounts[{account.name}].dm_refresh_token"
        configured = resolve_secret(account.dm_refresh_token, what=what).get_secret_value()
        register_secret(configured)
        return configured

    def _refresh(self, refresh: str, origin: str) -> SecretStr:
        """One renewal: never sent twice, since X spends the refresh token on receipt
        (an answer lost in transit is a chain lost: the error says how to start again)."""
        account = self.account
        assert account.dm_client_id
        what = f"accounts[{account.name}].dm_refresh_token"
        register_secret(refresh)
        form = {
            "grant_type": "refresh_token",
            "refresh_token": refresh,
            "client_id": account.dm_client_id,
        }
        auth = None
        if account.dm_client_secret is not None:
            secret = resolve_secret(
                account.dm_client_secret, what=f"accounts[{account.name}].dm_client_secret"
            )
            register_secret(secret.get_secret_value())
            auth = (account.dm_client_id, secret.get_secret_value())
        url = account.api_base_url.rstrip("/") + RENEWAL_PATH
        call = f"POST {RENEWAL_PATH}"
        again = f"authorize the app again and set {what} to the new refresh token"
        try:
            response = self.session.post(url, data=form, auth=auth)
        except requests.RequestException as exc:
            error = transport_error(SYSTEM, call, exc)
            raise ApiError(
                SYSTEM,
                call,
                f"{error.message}; if X received it, the refresh token is spent: if the next "
                f"run cannot renew either, {again}",
                action=Action.FAIL,
            ) from None
        body = _json_object(response)
        access, rotated = body.get("access_token"), body.get("refresh_token")
        if response.status_code != 200 or not isinstance(access, str) or not access:
            reason = body.get("error_description") or body.get("error") or response.text[:200]
            retry = response.status_code == 429 or response.status_code >= 500
            raise ApiError(
                SYSTEM,
                call,
                f"the DM token could not be renewed ({reason})"
                + ("" if retry else f": the refresh token was revoked or already used; {again}"),
                status=response.status_code,
                action=Action.RETRY if retry else Action.FAIL,
            )
        register_secret(access)
        if isinstance(rotated, str) and rotated:
            register_secret(rotated)
        lifetime = body.get("expires_in")
        seconds = lifetime if isinstance(lifetime, int | float) and lifetime > 0 else 7200
        token = StoredToken(
            access_token=access,
            expires_at=utcnow() + timedelta(seconds=seconds),
            refresh_token=rotated if isinstance(rotated, str) and rotated else refresh,
            origin=origin,
        )
        try:
            self.store.save_token(self.name, token)  # at once: the old refresh token is spent
        except Exception:
            log.error(
                "x %s: the renewed DM token could not be stored; the next run cannot renew it: %s",
                account.name,
                again,
            )
            raise
        log.info("x %s: DM token renewed, valid until %s", account.name, token.expires_at)
        return SecretStr(access)


def _json_object(response: requests.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


@dataclass(frozen=True, slots=True)
class DmRequest:
    since_id: str | None = None
    pagination_token: str | None = None
    newest_id: str | None = None

    def walk_cursor(self) -> str:
        """This request, to be stored as the ``WALK`` cursor while the walk goes on."""
        return json.dumps(
            {"since_id": self.since_id, "token": self.pagination_token, "newest_id": self.newest_id}
        )


def resume_request(cursor: str | None, walk: str | None) -> DmRequest:
    """Where a run starts: an unfinished walk where it stopped, else the newest events.

    X lists DM events newest first and has no ``since_id`` for them: a walk goes back
    page by page until it meets an event it knows. A backlog deeper than one rate-limit
    window (the first run reads 30 days) stops the walk on quota; starting again from
    the newest page every run would spend each window on the same pages and never get
    further. So each page stores the next page's token with the walk's start, and the
    next run goes on from there (a token X refuses starts the walk over).
    """
    if walk:
        try:
            saved = json.loads(walk)
        except ValueError:
            saved = None
        if isinstance(saved, dict) and isinstance(saved.get("token"), str):
            return DmRequest(
                since_id=_str_or_none(saved.get("since_id")),
                pagination_token=saved["token"],
                newest_id=_str_or_none(saved.get("newest_id")),
            )
    return DmRequest(since_id=cursor)


def counterpart_key(message: DirectMessage, brand_id: str) -> str | None:
    """The person a 1:1 conversation is with (its id is "<lower id>-<higher id>" of the
    two users); None for a group conversation (one snowflake id)."""
    ids = message.conversation_id.split("-")
    if len(ids) != 2 or brand_id not in ids or not all(part.isdigit() for part in ids):
        return None
    other = ids[1] if ids[0] == brand_id else ids[0]
    return f"{message.platform}:{other}"


def walk_cursors(page: Page[DirectMessage], next_request: DmRequest | None) -> dict[str, str]:
    """The cursors a page moves, stored with its messages: the walk's place while pages
    follow; at its end the newest event seen, and the walk forgotten."""
    if next_request is not None:
        return {WALK: next_request.walk_cursor()}
    return {STREAM: page.cursor, WALK: ""} if page.cursor else {WALK: ""}


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
