"""Unit tests for the DM parser, the Zendesk error reader and the ticket helpers."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import requests

from connectors.helpdesk.zendesk import _classify, _HttpFailure, error_text
from connectors.http import Action
from connectors.social.x import unnamed_key
from connectors.social.x_dm import parse_dm_events
from flows.tickets import _crm_record, comment_body, idempotency_key
from socialcrm.inbox import StoredMessage
from socialcrm.state import Delivery

SHARED = Path(__file__).resolve().parents[2] / "shared"
BRAND = "906948460078698496"


def response(status: int, body: object, headers: dict[str, str] | None = None) -> requests.Response:
    r = requests.Response()
    r.status_code = status
    r._content = body.encode() if isinstance(body, str) else json.dumps(body).encode()
    r.headers.update(headers or {})
    return r


def event(id_: str, sender: str, text: str = "hi", **extra: object) -> dict[str, object]:
    return {
        "id": id_,
        "event_type": "MessageCreate",
        "text": text,
        "sender_id": sender,
        "dm_conversation_id": f"{min(sender, BRAND)}-{max(sender, BRAND)}",
        "created_at": "2026-11-20T10:00:00.000Z",
        **extra,
    }


def test_brand_messages_are_marked_and_customers_keep_their_profile() -> None:
    body = {
        "data": [
            event("3", BRAND, "Happy to help!"),
            event("2", "42", "my invoice is wrong", attachments={"media_keys": ["3_1"]}),
        ],
        "includes": {
            "users": [
                {"id": "42", "name": "Ann", "username": "ann"},
                {"id": BRAND, "name": "Brand", "username": "brand"},
            ]
        },
        "meta": {"result_count": 2},
    }
    page = parse_dm_events(body, brand_id=BRAND)
    assert [(m.message_id, m.from_brand) for m in page.records] == [("3", True), ("2", False)]
    customer = page.records[1]
    assert customer.sender.handle == "ann" and customer.attachments == ("3_1",)
    assert customer.conversation_key == f"x:conversation:42-{BRAND}"


def test_joins_are_skipped_and_broken_events_are_problems_naming_the_field() -> None:
    body = {
        "data": [
            {
                "id": "9",
                "event_type": "ParticipantsJoin",
                "dm_conversation_id": "1",
                "sender_id": "5",
            },
            {"id": "8", "event_type": "MessageCreate", "text": "x", "sender_id": "5"},
            {"id": "oops", "event_type": "MessageCreate"},
            event("7", "not-a-user"),
        ]
    }
    page = parse_dm_events(body, brand_id=BRAND)
    assert page.records == []
    assert [(p.record_key, p.field) for p in page.problems] == [
        ("x:dm:8", "dm_conversation_id"),
        (unnamed_key("x:dm", {"id": "oops", "event_type": "MessageCreate"}), "id"),
        ("x:dm:7", "sender_id"),
    ]


@pytest.mark.skipif(not SHARED.exists(), reason="shared samples not present")
def test_real_dm_sample_with_fields_parses() -> None:
    sample = json.loads((SHARED / "api-samples" / "x_dm_events_with_fields.json").read_text())
    page = parse_dm_events(sample["body"], brand_id="1")
    assert len(page.records) == len(sample["body"]["data"])
    assert all(m.conversation_id for m in page.records)


@pytest.mark.skipif(not SHARED.exists(), reason="shared recordings not present")
def test_zendesk_errors_read_json_details_and_plain_text() -> None:
    invalid = json.loads((SHARED / "recordings/zendesk/user_create_or_update_422.json").read_text())
    text = error_text(response(422, invalid["body"]))
    assert "RecordInvalid" in text and "email: Email: badmail is not properly formatted" in text
    limited = json.loads(
        (SHARED / "recordings/zendesk/user_update_rate_limited_429.json").read_text()
    )
    error = _classify(
        "PUT /api/v2/users/:id", _HttpFailure(response(429, limited["body"], limited["headers"]))
    )
    assert error is not None and error.action is Action.RETRY and error.retry_after == 27
    assert "exceeded the rate limit" in str(error)


def test_zendesk_auth_failure_is_final_and_says_what_to_fix() -> None:
    error = _classify(
        "POST /api/v2/tickets", _HttpFailure(response(401, {"error": "Couldn't authenticate you"}))
    )
    assert error is not None and error.action is Action.FAIL
    assert "helpdesk.api_token" in str(error)


def message(key: str, text: str) -> StoredMessage:
    return StoredMessage(
        key,
        "x:conversation:1-2",
        "x:2",
        {"platform": "x", "handle": "ann"},
        text,
        [],
        datetime(2026, 11, 20, 10, 0, tzinfo=UTC),
        "support",
        "support",
        "normal",
    )


def test_comment_body_keeps_the_words_and_a_findable_reference() -> None:
    body = comment_body(message("x:dm:77", "  Bonjour, ma facture est fausse  "))
    assert body.startswith("Bonjour, ma facture est fausse")
    assert "[ref x:dm:77]" in body and "@ann" in body


def test_idempotency_key_is_stable_and_per_conversation() -> None:
    assert idempotency_key("x:conversation:1-2", "x:dm:1") == idempotency_key(
        "x:conversation:1-2", "x:dm:1"
    )
    assert idempotency_key("x:conversation:1-2", "x:dm:1") != idempotency_key(
        "x:conversation:1-3", "x:dm:1"
    )


def test_a_ticket_links_the_lead_a_senders_engagement_was_logged_on_as_a_lead() -> None:
    """The "Contact" ledger also holds Tasks logged on someone else's lead (the same human
    on another account): the ticket's CRM link must name that record a Lead."""
    contact = {"x:1": Delivery("x:1", "003A", "h", "matched contact")}
    logged = {"x:2": Delivery("x:2", "00QB", "h", "logged on lead")}
    own = {
        "x:2": Delivery("x:2", None, None, "failed"),
        "x:3": Delivery("x:3", "00QC", "h", "created"),
    }
    ledgers = (("Contact", {**contact, **logged}), ("Lead", own))
    assert _crm_record("x:1", *ledgers) == ("Contact", "003A")
    assert _crm_record("x:2", *ledgers) == ("Lead", "00QB")
    assert _crm_record("x:3", *ledgers) == ("Lead", "00QC")
    assert _crm_record("x:4", *ledgers) is None


def dm_pull_context(store: Any) -> Any:
    """A tickets run's context on ``store`` whose X client is never called (the tests
    replace ``x_dm.fetch_dm_page``); the brand is user 1000."""
    from conftest import minimal_settings

    from flows import tickets
    from socialcrm.routing import load_rules

    settings = minimal_settings()
    return tickets.TicketsContext(
        settings=settings,
        account=settings.accounts[0],
        store=store,
        dm_client=object(),  # type: ignore[arg-type]
        rules=load_rules(settings.mapping_path(settings.routing.rules)),
        dry_run=False,
    )


def test_a_dm_pages_broken_events_commit_with_its_cursor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed while the page's malformed events are dead-lettered: the cursor must not
    have moved past them (checked: before, messages and cursor committed first, and the
    broken events were never read again nor recorded)."""

    from connectors.social import x_dm
    from flows import tickets
    from socialcrm.records import DirectMessage, Page, RecordProblem, SocialProfile
    from socialcrm.state import StateStore

    class Killed(BaseException):
        pass

    ana = SocialProfile(platform="x", user_id="5551", handle="ana_l", display_name="Ana")
    dm = DirectMessage("x", "11", "1000-5551", ana, "help, login broken", datetime.now(UTC))
    broken = RecordProblem("x:dm:12", "source", "x", "event has no sender_id", "sender_id")
    page = Page([dm], cursor="12", problems=[broken])
    monkeypatch.setattr(x_dm, "fetch_dm_page", lambda client, request: (page, None))
    with StateStore.open(f"sqlite:///{tmp_path / 'state.db'}") as store:
        ctx = dm_pull_context(store)

        def dying(pipeline: str, problems: object) -> int:
            raise Killed

        monkeypatch.setattr(store, "add_dead_letters", dying)
        with pytest.raises(Killed):
            tickets.pull_dm_page.fn(ctx, x_dm.DmRequest(since_id=None))
        assert store.get_cursor("brand", x_dm.STREAM) is None
        monkeypatch.undo()
        monkeypatch.setattr(x_dm, "fetch_dm_page", lambda client, request: (page, None))
        tickets.pull_dm_page.fn(ctx, x_dm.DmRequest(since_id=None))
        assert store.get_cursor("brand", x_dm.STREAM) == "12"
        assert [letter.record_key for letter in store.dead_letters()] == ["x:dm:12"]


def test_an_erased_members_messages_leave_a_group_conversation_to_the_others(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Read again after an erasure: the erased person's own DMs and the brand's replies
    in their 1:1 conversation are dropped; in a group, Bob's message stays (checked:
    before, the whole group conversation was dropped, Bob's message with it)."""
    import sqlalchemy as sa

    from connectors.social import x_dm
    from flows import tickets
    from socialcrm import consent, schema
    from socialcrm.records import DirectMessage, Page, SocialProfile
    from socialcrm.state import StateStore

    gone = SocialProfile(platform="x", user_id="5551", handle="gone")
    bob = SocialProfile(platform="x", user_id="7777", handle="bob")
    brand = SocialProfile(platform="x", user_id="1000", handle="brand")
    now = datetime.now(UTC)
    page = Page(
        [
            DirectMessage("x", "24", "1000-5551", brand, "Hi Gone, fixed?", now, True),
            DirectMessage("x", "23", "1000-7777", brand, "Hi Bob", now, True),
            DirectMessage("x", "22", "1000-5551", gone, "my login is broken", now),
            DirectMessage("x", "21", "77001", bob, "my login is broken too", now),
            DirectMessage("x", "20", "77001", gone, "me too", now),
        ],
        cursor="24",
    )
    monkeypatch.setattr(x_dm, "fetch_dm_page", lambda client, request: (page, None))
    with StateStore.open(f"sqlite:///{tmp_path / 'state.db'}") as store:
        consent.opt_out(store, ["x:5551"], consent.ERASED)
        ctx = dm_pull_context(store)
        tickets.pull_dm_page.fn(ctx, x_dm.DmRequest(since_id=None))
        with store.transaction() as connection:
            stored = set(connection.execute(sa.select(schema.messages.c.message_key)).scalars())
    assert stored == {"x:dm:23", "x:dm:21"}


def test_a_spam_looking_dm_read_before_its_conversations_support_message_is_delivered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """X lists DMs newest first: "screenshot: bit.ly/..." (newer) is read on the first
    page and skipped as spam, the customer's older "my login is broken" on the next. The
    walk takes the first back; a stranger's and an earlier walk's stay skipped (checked:
    before, the customer's second message was lost)."""
    from connectors.social import x_dm
    from flows import tickets
    from socialcrm import inbox
    from socialcrm.records import DirectMessage, Page, SocialProfile
    from socialcrm.state import StateStore

    ana = SocialProfile(platform="x", user_id="5551", handle="ana")
    stranger = SocialProfile(platform="x", user_id="6661", handle="promo")
    now = datetime.now(UTC)
    shortener = "still broken, screenshot of the error: bit.ly/3xYz9Q"
    first = Page(
        [
            DirectMessage("x", "31", "1000-5551", ana, shortener, now),
            DirectMessage("x", "29", "1000-6661", stranger, shortener, now),
        ]
    )
    second = Page(
        [DirectMessage("x", "30", "1000-5551", ana, "my login is broken", now)], cursor="31"
    )
    earlier = DirectMessage("x", "12", "1000-5551", ana, "win big: bit.ly/x", now)
    pages = {None: (first, x_dm.DmRequest("20", "next", "31")), "next": (second, None)}
    monkeypatch.setattr(
        x_dm, "fetch_dm_page", lambda client, request: pages[request.pagination_token]
    )
    with StateStore.open(f"sqlite:///{tmp_path / 'state.db'}") as store:
        ctx = dm_pull_context(store)
        inbox.ingest_messages(
            store, "brand", [(earlier, tickets.route(ctx.rules, earlier.text, "dm"))]
        )
        request: x_dm.DmRequest | None = x_dm.DmRequest(since_id="20")
        while request is not None:
            request = tickets.pull_dm_page.fn(ctx, request)
        waiting = {
            m.message_key: m.route
            for batch in inbox.pending_conversations(store, batch_size=10)
            for messages in batch.values()
            for m in messages
        }
    assert waiting == {"x:dm:30": "support", "x:dm:31": "support"}
