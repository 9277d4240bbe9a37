"""The tickets flow: direct messages become helpdesk tickets, one per conversation.

Pull DM pages (each a task: messages, their routes and the cursor in one transaction),
deliver pending conversations in batches (each a task), then give the senders of sales
messages their lead through the leads flow's own delivery, and publish artifacts.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from datetime import UTC
from typing import Any

import pandas as pd
from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from pydantic import Field

from connectors.helpdesk import zendesk
from connectors.http import Action, ApiError, is_systemic
from connectors.social import x, x_dm
from flows.leads import (
    DELIVERY_LOCK,
    TICKET_LEDGER,
    LeadsContext,
    _logger,
    apply_rate_limits,
    checked_mapping,
    deliver_pending_leads,
    run_namer,
    stop_status,
    worth_retrying,
)
from flows.params import RunTarget, as_is
from flows.reporting import publish_tickets_artifacts
from mappings import MappingSpec, apply_spec
from socialcrm import consent, inbox, progress
from socialcrm.config import ConfigError, Settings, XAccount, load_settings
from socialcrm.heap import startup_objects_frozen
from socialcrm.inbox import SalesTicket
from socialcrm.qualify import PLATFORM_NAMES
from socialcrm.records import (
    DirectMessage,
    Engagement,
    EngagementKind,
    RecordProblem,
    SinkOutcome,
)
from socialcrm.routing import Decision, RoutingRules, load_rules, route
from socialcrm.state import Delivery, StateStore

PIPELINE = "tickets"
TICKET = TICKET_LEDGER
CRM_LINK = "zendesk:crm-link"  # conversation -> the ticket that got a note with the CRM link
COMMENT = "zendesk:comment"
REQUESTER = "zendesk:user"
REOPEN_FROM = {"solved", "pending", "hold"}


class TicketsRun(RunTarget):
    """Options for one run of the tickets pipeline."""

    dry_run: bool = Field(
        False,
        title="Dry run",
        description="Route the messages and show the would-be tickets; write nothing",
    )
    limit: int | None = Field(
        None,
        ge=1,
        title="Conversation limit",
        description="Deliver at most this many conversations",
    )


@dataclass
class TicketsContext:
    settings: Settings
    account: XAccount
    store: StateStore
    dm_client: x.XClient | None
    rules: RoutingRules
    dry_run: bool
    helpdesk: zendesk.ZendeskClient | None = None
    fetched: int = 0
    new_messages: int = 0
    by_route: dict[str, int] = field(default_factory=dict)
    sales_people: set[str] = field(default_factory=set)
    problems: list[RecordProblem] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    delivered: set[str] = field(default_factory=set)
    # Senders of sales messages whose conversation got its ticket in this run: their lead
    # (or Task) is written again to carry the ticket's link.
    newly_ticketed: set[str] = field(default_factory=set)
    crm_links: dict[str, str] = field(default_factory=dict)  # conversation -> CRM record URL
    _spec: MappingSpec | None = None

    def zendesk(self) -> zendesk.ZendeskClient:
        if self.helpdesk is None:
            if self.settings.helpdesk is None:
                raise ConfigError("helpdesk: the tickets flow needs a helpdesk section")
            self.helpdesk = zendesk.connect(self.settings.helpdesk)
        return self.helpdesk

    def ticket_spec(self) -> MappingSpec:
        if self._spec is None:
            self._spec = ticket_mapping(self.settings)
        return self._spec

    def count(self, name: str, n: int = 1) -> None:
        self.counts[name] = self.counts.get(name, 0) + n


SPAM_IN_CONVERSATION = "looks like spam, in a conversation with support"


def talking_to_support(routed: list[tuple[DirectMessage, Decision]]) -> set[str]:
    """The conversations of a page where a customer wrote something that is not spam."""
    return {
        message.conversation_key
        for message, decision in routed
        if decision.route != "spam" and not message.from_brand
    }


def heard_in_open_conversations(
    ctx: TicketsContext, routed: list[tuple[DirectMessage, Decision]]
) -> list[tuple[DirectMessage, Decision]]:
    """Spam rules judge strangers, not customers already talking to support.

    A message that looks like spam ("screenshot of the error: bit.ly/...", "hello dear,
    any news?") in a conversation that has a ticket, or a support message on the same
    page, is the customer's next message: it goes on their ticket, never dropped.
    """
    suspects = {
        message.conversation_key
        for message, decision in routed
        if decision.route == "spam" and not message.from_brand
    }
    if not suspects:
        return routed
    heard = set(ctx.store.deliveries(sorted(suspects), TICKET)) | talking_to_support(routed)
    return [
        (message, replace(decision, route="support", rule=SPAM_IN_CONVERSATION))
        if decision.route == "spam" and message.conversation_key in heard
        else (message, decision)
        for message, decision in routed
    ]


@task(
    name="pull-dm-page",
    cache_policy=NO_CACHE,
    persist_result=False,
    retries=1,
    retry_delay_seconds=5,
    retry_condition_fn=worth_retrying,  # a spent quota stays spent for a while
)
def pull_dm_page(ctx: TicketsContext, request: x_dm.DmRequest) -> x_dm.DmRequest | None:
    """Fetch a page of DMs, route each, and record them with the cursor."""
    assert ctx.dm_client is not None, "pulling needs a source client"
    page, next_request = x_dm.fetch_dm_page(ctx.dm_client, request)
    # Who asked not to be written about, looked up once for the page. An erased person's
    # DMs read again (a run stopped before the cursor moved past them) must not bring
    # their words back, nor the brand's replies to them in their 1:1 conversation; in a
    # group, the others' messages stay. Someone who only opted out of marketing still
    # gets support, and their DMs are no sales signal.
    brand_id = ctx.account.user_id
    counterparts = {m.key: x_dm.counterpart_key(m, brand_id) for m in page.records if m.from_brand}
    reasons = consent.suppression_reasons(
        ctx.store,
        {m.sender.key for m in page.records if not m.from_brand}
        | {key for key in counterparts.values() if key},
    )

    def about_the_erased(message: DirectMessage) -> bool:
        person = counterparts.get(message.key) if message.from_brand else None
        return reasons.get(person or message.sender.key) == consent.ERASED

    kept = [message for message in page.records if not about_the_erased(message)]
    routed = heard_in_open_conversations(
        ctx, [(message, route(ctx.rules, message.text, "dm")) for message in kept]
    )
    sales = [
        Engagement(
            platform=message.platform,
            id=message.message_id,
            kind=EngagementKind.MESSAGE,
            author=message.sender,
            occurred_at=message.sent_at,
            text=message.text,
        )
        for message, decision in routed
        if decision.route == "sales"
        and not message.from_brand
        and message.sender.key not in reasons
    ]
    # Engagements first: they are idempotent, and the cursor moves with the messages.
    if sales:
        ctx.store.ingest(ctx.account.name, sales, ctx.settings.qualification)
        ctx.sales_people.update(e.author.key for e in sales)
    cursors = x_dm.walk_cursors(page, next_request)
    # The page's malformed events commit with its messages and cursor: a cursor that
    # moved past them without their dead letters would lose them.
    heard = talking_to_support(routed)
    with ctx.store.transaction():
        result = inbox.ingest_messages(ctx.store, ctx.account.name, routed, cursors=cursors)
        ctx.store.add_dead_letters(PIPELINE, page.problems)
        # Spam-looking DMs of these customers read on newer pages of this walk.
        inbox.hear_skipped_spam(ctx.store, heard, request.since_id, SPAM_IN_CONVERSATION)
    ctx.problems.extend(page.problems)
    ctx.fetched += len(page.records)
    ctx.new_messages += result.new
    progress.report("pages")
    progress.report("messages", len(page.records))
    for name, n in (result.by_route or {}).items():
        ctx.by_route[name] = ctx.by_route.get(name, 0) + n
    _logger().info(
        "dms: %d messages (%d new: %s), %d rejected%s%s",
        len(page.records),
        result.new,
        ", ".join(f"{n} {r}" for r, n in sorted((result.by_route or {}).items())) or "none",
        len(page.problems),
        f", {len(page.records) - len(kept)} of or to erased people dropped"
        if len(kept) < len(page.records)
        else "",
        "; more pages follow" if next_request else "",
    )
    return next_request


def comment_body(message: inbox.StoredMessage) -> str:
    """The customer's words, then a footer whose reference finds the comment again."""
    platform = PLATFORM_NAMES.get(message.sender.get("platform", ""), "Social")
    handle = message.sender.get("handle") or "?"
    text = (message.text or "").strip() or "(no text)"
    if message.attachments:
        text += f"\n\n[{len(message.attachments)} attachment(s) on {platform}]"
    when = message.sent_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M")
    what = "DM" if message.channel == "dm" else "public mention"
    return f"{text}\n\n— {platform} {what} from @{handle}, {when} UTC [ref {message.message_key}]"


def idempotency_key(conversation_key: str, first_message: str) -> str:
    """Stable per conversation and first message: a retried create is the same create."""
    digest = hashlib.sha256(f"{conversation_key}|{first_message}".encode()).hexdigest()
    return f"socialcrm-{digest[:40]}"


TICKET_ROW_COLUMNS = [
    "conversation_key",
    "person_key",
    "platform",
    "platform_name",
    "channel_name",
    "handle",
    "display_name",
    "first_line",
    "route",
    "rule",
    "priority",
]
"""What a ticket mapping can read: one row per conversation (``_ticket_frame``)."""


def ticket_mapping(settings: Settings) -> MappingSpec:
    """The ticket mapping, refused (``checked_mapping``) before anything is written."""
    if settings.helpdesk is None:
        raise ConfigError("helpdesk: the tickets flow needs a helpdesk section")
    path = settings.mapping_path(settings.helpdesk.ticket_mapping)
    return checked_mapping(path, TICKET_ROW_COLUMNS, upsert=False)


def _ticket_frame(batch: dict[str, list[inbox.StoredMessage]]) -> pd.DataFrame:
    rows = []
    for key, messages in batch.items():
        first = messages[0]
        line = " ".join((first.text or "").split())
        rows.append(
            {
                "conversation_key": key,
                "person_key": first.person_key,
                "platform": first.sender.get("platform"),
                "platform_name": PLATFORM_NAMES.get(first.sender.get("platform", ""), "Social"),
                "channel_name": "DM" if first.channel == "dm" else "mention",
                "handle": first.sender.get("handle"),
                "display_name": first.sender.get("display_name"),
                "first_line": line if len(line) <= 80 else line[:79] + "…",
                "route": first.route,
                "rule": first.rule,
                "priority": max((m.priority for m in messages), key=_urgency),
            }
        )
    return pd.DataFrame(rows, columns=TICKET_ROW_COLUMNS)


def _urgency(priority: str) -> int:
    return zendesk.PRIORITIES.index(priority) if priority in zendesk.PRIORITIES else 1


@task(
    name="deliver-conversations",
    cache_policy=NO_CACHE,
    persist_result=False,
    task_run_name="deliver conversations {number}",
)
def deliver_conversations(
    ctx: TicketsContext, batch: dict[str, list[inbox.StoredMessage]], number: int
) -> None:
    """Tickets and comments for a batch of conversations; one bad one spoils nothing."""
    spec = ctx.ticket_spec()
    mapped = apply_spec(
        spec,
        _ticket_frame(batch),
        zendesk.TICKET_FIELDS,
        key_column="conversation_key",
        system="zendesk",
    )
    for problem in mapped.rejected:
        _fail(ctx, batch[problem.record_key], problem)
    tickets = dict(zip(mapped.keys, mapped.records, strict=True))
    if ctx.dry_run:
        for key, fields in tickets.items():
            known = ctx.store.deliveries([key], TICKET).get(key)
            ctx.rows.append(
                {
                    "conversation": key,
                    "status": "would comment" if known else "would create",
                    "messages": len(batch[key]),
                    **fields,
                }
            )
        return
    client = ctx.zendesk()
    for key, fields in tickets.items():
        renew_requester = closed = False
        while True:
            left = [m for m in batch[key] if m.message_key not in ctx.delivered]
            if not left:
                break
            try:
                _deliver_conversation(ctx, client, key, left, dict(fields), renew_requester)
            except ApiError as error:
                if not renew_requester and _requester_gone(error):
                    renew_requester = True  # an agent merged or deleted the end user
                    continue
                if not closed and _closed_meanwhile(error):
                    closed = True  # solved when looked at, closed since: a follow-up
                    continue
                if is_systemic(error):
                    raise  # the next conversation would fail the same way
                _fail(
                    ctx,
                    batch[key],
                    RecordProblem(key, "delivery", "zendesk", str(error)),
                    retryable=error.action is Action.RETRY,
                )
            break
    _logger().info(
        "conversations batch %d: %d conversations, %s",
        number,
        len(batch),
        ", ".join(f"{n} {k}" for k, n in sorted(ctx.counts.items())),
    )


def _fail(
    ctx: TicketsContext,
    messages: list[inbox.StoredMessage],
    problem: RecordProblem,
    *,
    retryable: bool = False,
) -> None:
    """Dead-letter what is left of a conversation; transient failures stay pending too."""
    messages = [m for m in messages if m.message_key not in ctx.delivered]
    problems = [
        RecordProblem(
            m.message_key,
            problem.stage,
            problem.system,
            problem.reason,
            field=problem.field,
            payload={"conversation": m.conversation_key},
        )
        for m in messages
    ]
    ctx.store.add_dead_letters(PIPELINE, problems)
    if not retryable:
        inbox.set_message_status(ctx.store, [m.message_key for m in messages], "failed")
    ctx.problems.extend(problems)
    ctx.count("failed messages", len(messages))


def _closed_meanwhile(error: ApiError) -> bool:
    """Zendesk closed the ticket between our look and our comment (solved tickets close
    after some days): 422 ``Status: closed prevents ticket update``."""
    return error.status == 422 and "closed prevents ticket update" in str(error).lower()


def _requester_gone(error: ApiError) -> bool:
    """Zendesk refused the requester or author id we keep (the user was merged or
    deleted): 422 ``Requester: is invalid`` / ``Author: is invalid``."""
    text = str(error).lower()
    return error.status == 422 and ("requester" in text or "author" in text)


def _requester(
    ctx: TicketsContext,
    client: zendesk.ZendeskClient,
    message: inbox.StoredMessage,
    name: str,
    renew: bool = False,
) -> int:
    """The person's end-user id: kept from the first time, looked up again (``renew``)
    when Zendesk refuses the kept one."""
    known = ctx.store.deliveries([message.person_key], REQUESTER).get(message.person_key)
    if known and known.destination_id and not renew:
        return int(known.destination_id)
    user_id = zendesk.upsert_requester(
        client, message.person_key, name, message.sender.get("email")
    )
    ctx.store.record_deliveries(
        REQUESTER, [SinkOutcome(message.person_key, "created", str(user_id))]
    )
    return user_id


def _deliver_conversation(
    ctx: TicketsContext,
    client: zendesk.ZendeskClient,
    key: str,
    messages: list[inbox.StoredMessage],
    fields: dict[str, Any],
    renew_requester: bool = False,
) -> None:
    store = ctx.store
    name = str(fields.pop("requester_name", ""))
    requester_id = _requester(ctx, client, messages[0], name, renew_requester)
    known = store.deliveries([key], TICKET).get(key)
    ticket: dict[str, Any] | None = None
    pending = list(messages)
    if key in inbox.open_intents(store, [key], TICKET):
        # A create (first ticket or follow-up) may have landed before a crash: look first.
        ticket = _created_before_crash(ctx, client, key, pending, known)
    follow_up = known.destination_id if known is not None else None
    if ticket is None and known is not None:
        ticket = zendesk.find_ticket(client, int(known.destination_id or 0))
        if ticket is None:
            follow_up = None  # deleted in Zendesk: a new ticket, not a follow-up of it
        elif ticket.get("status") == "closed":
            # A closed ticket takes no comment: open a follow-up, with what did not land
            # on the closed one before a crash.
            _landed_before_crash(ctx, client, int(ticket["id"]), pending)
            ticket = None
            if not pending:
                return
    status = "updated"
    if ticket is None:
        first = pending.pop(0)
        ticket = _create_ticket(ctx, client, key, first, fields, requester_id, follow_up)
        status = "created"
    ticket_id = int(ticket["id"])
    reopened = False
    authors = {messages[0].person_key: requester_id}  # a group conversation has several
    for message in pending:
        if message.person_key not in authors:
            sender = message.sender
            who = str(sender.get("display_name") or sender.get("handle") or "Social user")
            authors[message.person_key] = _requester(ctx, client, message, who, renew_requester)
        reopen = ticket.get("status") in REOPEN_FROM
        _add_comment(ctx, client, ticket_id, message, authors[message.person_key], reopen)
        if reopen:
            ticket["status"] = "open"
            reopened = True
    ctx.count("tickets " + status)
    if status == "created" and any(m.route == "sales" for m in messages):
        ctx.newly_ticketed.add(messages[0].person_key)
    if reopened:
        ctx.count("tickets reopened")
    ctx.rows.append(
        {
            "conversation": key,
            "status": status + (" (reopened)" if reopened else ""),
            "messages": len(messages),
            "subject": fields.get("subject"),
            "url": client.ticket_url(ticket_id),
        }
    )


def _landed_before_crash(
    ctx: TicketsContext,
    client: zendesk.ZendeskClient,
    ticket_id: int,
    pending: list[inbox.StoredMessage],
) -> None:
    """Messages whose comment (intent still open) is on ``ticket_id`` are done: removed
    from ``pending`` and recorded, so a follow-up ticket does not repeat them."""
    keys = [m.message_key for m in pending]
    intents = inbox.open_intents(ctx.store, keys, COMMENT)
    if not intents:
        return
    bodies = [
        str(c.get("body") or c.get("plain_body") or "")
        for c in zendesk.ticket_comments(client, ticket_id)
    ]
    for message in [m for m in pending if m.message_key in intents]:
        if any(f"[ref {message.message_key}]" in body for body in bodies):
            pending.remove(message)
            _comment_done(ctx, message, ticket_id)


def _created_before_crash(
    ctx: TicketsContext,
    client: zendesk.ZendeskClient,
    key: str,
    pending: list[inbox.StoredMessage],
    known: Delivery | None,
) -> dict[str, Any] | None:
    """The ticket an interrupted create made, found by external id and the ``[ref]`` of
    the message it was opened with (any pending one: an older message may have come back
    since, by replay); that message is then done. None when the create never landed."""
    refs = {f"[ref {m.message_key}]": m for m in pending}
    for ticket in zendesk.find_tickets(client, key):
        if known is not None and str(ticket.get("id")) == known.destination_id:
            continue  # the ticket this one follows up
        description = str(ticket.get("description") or "")
        first = next((m for ref, m in refs.items() if ref in description), None)
        if first is not None:
            pending.remove(first)
            _record_ticket(ctx, key, ticket, first)
            return ticket
    return None


def _record_ticket(
    ctx: TicketsContext, key: str, ticket: dict[str, Any], first: inbox.StoredMessage
) -> None:
    """The ticket and the message it was opened with, in one transaction: a crash between
    the two would leave that message pending with no intent, and post it again."""
    with ctx.store.transaction():
        ctx.store.record_deliveries(TICKET, [SinkOutcome(key, "created", str(ticket["id"]))])
        inbox.close_intent(ctx.store, key, TICKET)
        _comment_done(ctx, first, int(ticket["id"]))


def _create_ticket(
    ctx: TicketsContext,
    client: zendesk.ZendeskClient,
    key: str,
    first: inbox.StoredMessage,
    fields: dict[str, Any],
    requester_id: int,
    follow_up: str | None,
) -> dict[str, Any]:
    idem = idempotency_key(key, first.message_key)
    ticket_body: dict[str, Any] = {
        **fields,
        "comment": {"body": comment_body(first), "public": True, "author_id": requester_id},
        "requester_id": requester_id,
        "external_id": key,
        # "dm" or "mention": agents filter public requests apart (their answer is public).
        "tags": sorted(
            {"socialcrm", first.sender.get("platform") or "social", first.channel, first.route}
        ),
    }
    if follow_up:
        ticket_body["via_followup_source_id"] = int(follow_up)
    inbox.open_intent(ctx.store, key, TICKET, "create", idem)
    ticket, replayed = zendesk.create_ticket(client, ticket_body, idempotency_key=idem, key=key)
    _record_ticket(ctx, key, ticket, first)
    if replayed:
        ctx.count("creates replayed by Zendesk")
    return ticket


def _add_comment(
    ctx: TicketsContext,
    client: zendesk.ZendeskClient,
    ticket_id: int,
    message: inbox.StoredMessage,
    requester_id: int,
    reopen: bool,
) -> None:
    store = ctx.store
    body = comment_body(message)
    marker = f"[ref {message.message_key}]"

    def landed() -> bool:
        existing = zendesk.ticket_comments(client, ticket_id)
        return any(marker in str(c.get("body") or c.get("plain_body") or "") for c in existing)

    # An open intent: written before a crash, perhaps, and never recorded here.
    if (
        message.message_key in inbox.open_intents(store, [message.message_key], COMMENT)
        and landed()
    ):
        _comment_done(ctx, message, ticket_id)
        return
    inbox.open_intent(store, message.message_key, COMMENT, "comment", message.message_key)
    zendesk.add_comment(
        client,
        ticket_id,
        {"body": body, "public": True, "author_id": requester_id},
        key=message.message_key,
        status="open" if reopen else None,
        already_applied=landed,
    )
    _comment_done(ctx, message, ticket_id)
    ctx.count("comments added")


def _comment_done(ctx: TicketsContext, message: inbox.StoredMessage, ticket_id: int) -> None:
    """All or nothing: a posted comment recorded without its dead letter resolved would
    be set pending again by a replay, with its intent closed, and posted twice."""
    with ctx.store.transaction():
        ctx.store.record_deliveries(
            COMMENT, [SinkOutcome(message.message_key, "created", str(ticket_id))]
        )
        inbox.set_message_status(ctx.store, [message.message_key], "delivered")
        inbox.close_intent(ctx.store, message.message_key, COMMENT)
        ctx.store.resolve_dead_letters([message.message_key], PIPELINE)
    ctx.delivered.add(message.message_key)


def link_tickets_to_crm(ctx: TicketsContext, leads_ctx: LeadsContext) -> None:
    """The ticket of each sales conversation gets one internal note naming the CRM record.

    Driven by the store, not by this run: a link that failed, or a lead written by the
    leads flow, is linked by the next run. A new record (a lead converted into a Contact)
    or a follow-up ticket gets a new note; nothing else is written twice.
    """
    if ctx.dry_run:
        return
    store = ctx.store
    tickets = inbox.sales_tickets(store, TICKET)
    if not tickets:
        return
    people = sorted(tickets)
    lead_object = leads_ctx.lead_spec().object_name
    leads = store.deliveries(people, lead_object)
    contacts = store.deliveries(people, "Contact")
    done = store.deliveries([link_key(t) for t in tickets.values()], CRM_LINK)
    todo: list[tuple[SalesTicket, str, str]] = []
    for person in people:
        ticket = tickets[person]
        # A Contact outranks a lead: a lead that was converted is that Contact now.
        found = _crm_record(person, ("Contact", contacts), (lead_object, leads))
        if found is None:
            continue
        linked = done.get(link_key(ticket))
        if (
            linked is not None
            and linked.destination_id == ticket.ticket_id
            and (linked.payload_hash == "/".join(found) or linked.status == "failed")
        ):
            continue  # noted already, or refused for good (the run that tried said why)
        todo.append((ticket, *found))
    if not todo:
        return
    client = ctx.zendesk()
    conn = leads_ctx.crm_connection()
    for ticket, sobject, record_id in todo:
        url = conn.record_url(sobject, record_id)
        try:
            _note_crm_record(ctx, client, ticket, sobject, record_id, url)
        except ApiError as error:
            if is_systemic(error):
                raise
            reason = f"CRM link note on ticket {ticket.ticket_id}: {error}"
            _logger().warning("%s: %s", ticket.conversation_key, reason)
            ctx.problems.append(
                RecordProblem(ticket.conversation_key, "crm-link", "zendesk", reason)
            )
            if error.action is not Action.RETRY:
                store.record_deliveries(
                    CRM_LINK, [SinkOutcome(link_key(ticket), "failed", ticket.ticket_id)]
                )
            continue
        ctx.crm_links[ticket.conversation_key] = url
    for row in ctx.rows:
        if row.get("conversation") in ctx.crm_links:
            row["crm_record"] = ctx.crm_links[row["conversation"]]
    _logger().info("cross-links: %d tickets got their CRM record", len(ctx.crm_links))


def link_key(ticket: SalesTicket) -> str:
    """Per conversation and person: a group conversation links each sales sender."""
    return f"{ticket.conversation_key}|{ticket.person_key}"


def _crm_record(person: str, *ledgers: tuple[str, dict[str, Delivery]]) -> tuple[str, str] | None:
    """(object, id) of the first ledger that holds the person's record.

    The "Contact" ledger also keeps the lead of someone else a person's engagement was
    logged on (the same human on another account, ``logged on lead``): that is a Lead.
    """
    for sobject, ledger in ledgers:
        record = ledger.get(person)
        if record is not None and record.destination_id and record.status != "failed":
            return "Lead" if record.status == "logged on lead" else sobject, record.destination_id
    return None


def _note_crm_record(
    ctx: TicketsContext,
    client: zendesk.ZendeskClient,
    ticket: SalesTicket,
    sobject: str,
    record_id: str,
    url: str,
) -> None:
    """One private note; an intent and a marker make a retried or crashed write land once."""
    store, key = ctx.store, link_key(ticket)
    marker = f"[ref crm {sobject}/{record_id}]"
    what = "an existing Contact" if sobject == "Contact" else "a Lead"
    body = (
        f"Sales context: the person who asked sales in this conversation is {what} in "
        f"Salesforce: {url}\n\n— socialcrm {marker}"
    )
    ticket_id = int(ticket.ticket_id)

    def landed() -> bool:
        existing = zendesk.ticket_comments(client, ticket_id)
        return any(marker in str(c.get("body") or c.get("plain_body") or "") for c in existing)

    if not (key in inbox.open_intents(store, [key], CRM_LINK) and landed()):
        inbox.open_intent(store, key, CRM_LINK, "comment", marker)
        zendesk.add_comment(
            client, ticket_id, {"body": body, "public": False}, key=key, already_applied=landed
        )
        ctx.count("crm links added")
    store.record_deliveries(
        CRM_LINK, [SinkOutcome(key, "created", ticket.ticket_id, f"{sobject}/{record_id}")]
    )
    inbox.close_intent(store, key, CRM_LINK)


@flow(name="tickets", flow_run_name=run_namer("tickets"), log_prints=False)
def tickets(params: TicketsRun = TicketsRun()) -> dict[str, Any]:  # noqa: B008
    """Pull direct messages and keep one helpdesk ticket per conversation.

    Args:
        params: what to run: config file, account, dry run, conversation limit.
    """
    with startup_objects_frozen():
        return run_tickets(params)


def run_tickets(params: TicketsRun) -> dict[str, Any]:
    """The tickets flow's body (see ``tickets``)."""
    settings = load_settings(params.config)
    apply_rate_limits(settings)
    account = settings.account(params.account)
    if settings.helpdesk is None:
        raise ConfigError(f"{params.config}: helpdesk: the tickets flow needs a helpdesk section")
    rules = load_rules(settings.mapping_path(settings.routing.rules))
    store = StateStore.open(settings.state_url(), dry_run=params.dry_run)
    ctx = TicketsContext(
        settings=settings,
        account=account,
        store=store,
        dm_client=x_dm.connect_dm(account, store=store),
        rules=rules,
        dry_run=params.dry_run,
    )
    leads_ctx = LeadsContext(
        settings=settings,
        account=account,
        store=store,
        x_client=ctx.dm_client,
        dry_run=params.dry_run,
    )
    lead_outcomes: list[SinkOutcome] = []
    status = "completed"
    guard = ExitStack()
    if not guard.enter_context(store.lock(f"{PIPELINE}:{account.name}")):
        status = f"skipped: another {PIPELINE} run for account {account.name} is in progress"
        _logger().warning(status)
        store.close()
        return tickets_summary(ctx, leads_ctx, [], status)
    try:
        status = pull_dms(ctx)
        remaining = params.limit
        batches = inbox.pending_conversations(store, batch_size=50, account=account.name)
        waits = walk_unfinished(ctx)
        for number, batch in enumerate(batches, 1):
            if waits is not None:
                batch = {key: found for key, found in batch.items() if not waits(found)}
                if not batch:
                    continue
            if remaining is not None:
                batch = dict(list(batch.items())[:remaining])
                remaining -= len(batch)
            deliver_conversations(as_is(ctx), as_is(batch), number)
            if remaining is not None and remaining <= 0:
                break
        if ctx.newly_ticketed and not ctx.dry_run:
            store.mark_pending(ctx.newly_ticketed)
        if ctx.sales_people or ctx.newly_ticketed:
            # The leads of any account's run are delivered under the same lock.
            with store.lock(DELIVERY_LOCK) as delivering:
                if delivering:
                    lead_outcomes = deliver_pending_leads(
                        leads_ctx, only=sorted(ctx.sales_people | ctx.newly_ticketed)
                    )
                else:
                    _logger().warning(
                        "a leads run is delivering: the %d people of this run's sales DMs "
                        "stay pending for it or the next run",
                        len(ctx.sales_people | ctx.newly_ticketed),
                    )
        link_tickets_to_crm(ctx, leads_ctx)
    except ApiError as error:
        status = stop_status(error)
        _logger().error("run stopped: %s", error)
        if error.action is not Action.QUOTA:
            raise
    finally:
        summary = tickets_summary(ctx, leads_ctx, lead_outcomes, status)
        try:
            problems = [*ctx.problems, *leads_ctx.problems]  # the sales DMs' leads too
            publish_tickets_artifacts(account.name, summary, ctx.rows, problems)
        finally:
            guard.close()
            store.close()
    _logger().info("tickets %s: %s", account.name, summary)
    return summary


def pull_dms(ctx: TicketsContext) -> str:
    """Read the DMs the store has not seen; the run's status so far.

    A spent X quota stops the walk, not the run: the next run goes on from the page where
    this one stopped (``x_dm.resume_request``), and meanwhile everything the walk did not
    touch is delivered (``walk_unfinished``).
    """
    cursor = ctx.store.get_cursor(ctx.account.name, x_dm.STREAM)
    request: x_dm.DmRequest | None = x_dm.resume_request(
        cursor, ctx.store.get_cursor(ctx.account.name, x_dm.WALK)
    )
    try:
        if request is not None and request.pagination_token:
            try:
                request = pull_dm_page(as_is(ctx), request)
            except ApiError as error:
                if error.status != 400:
                    raise
                _logger().warning(
                    "x: the page where the last run stopped is refused (%s): reading again "
                    "from the newest DMs",
                    error,
                )
                request = x_dm.DmRequest(since_id=cursor)
        while request is not None:
            request = pull_dm_page(as_is(ctx), request)
    except ApiError as error:
        if error.action is not Action.QUOTA:
            raise
        _logger().warning(
            "dms: %s; the next run reads on from there, the conversations read wait", error
        )
        return stop_status(error)
    return "completed"


def walk_unfinished(
    ctx: TicketsContext,
) -> Callable[[list[inbox.StoredMessage]], bool] | None:
    """While a DM walk is unfinished (stopped on quota), which conversations wait for it.

    X lists DMs newest first: a stopped walk has read a conversation's newest messages
    and maybe not its older ones. Delivered now, the ticket would open with a later
    message and the earlier ones follow as comments (or reopen it, or go to a follow-up).
    A conversation holding a DM the walk read (newer than where the last finished walk
    began) waits until the walk is done; None when no walk is unfinished.
    """
    walk = ctx.store.get_cursor(ctx.account.name, x_dm.WALK)
    if not walk:
        return None
    since = x_dm.resume_request(None, walk).since_id
    held: set[str] = set()

    def waits(messages: list[inbox.StoredMessage]) -> bool:
        for message in messages:
            if message.channel == "dm" and inbox.dm_after(message.message_key, since):
                if message.conversation_key not in held:
                    held.add(message.conversation_key)
                    ctx.count("conversations waiting for the DM walk")
                return True
        return False

    return waits


def tickets_summary(
    ctx: TicketsContext, leads_ctx: LeadsContext, lead_outcomes: list[SinkOutcome], status: str
) -> dict[str, Any]:
    lead_counts: dict[str, int] = {}
    for outcome in lead_outcomes:
        lead_counts[outcome.status] = lead_counts.get(outcome.status, 0) + 1
    helpdesk = ctx.helpdesk
    crm = leads_ctx.crm
    return {
        "flow": PIPELINE,
        "account": ctx.account.name,
        "status": status,
        "dry_run": ctx.dry_run,
        "fetched": ctx.fetched,
        "new_messages": ctx.new_messages,
        "by_route": dict(sorted(ctx.by_route.items())),
        "tickets_created": ctx.counts.get("tickets created", 0),
        "tickets_updated": ctx.counts.get("tickets updated", 0),
        "comments_added": ctx.counts.get("comments added", 0),
        "reopened": ctx.counts.get("tickets reopened", 0),
        # Read by a DM walk stopped on quota: delivered once it is done, in order.
        "waiting": ctx.counts.get("conversations waiting for the DM walk", 0),
        "failed": ctx.counts.get("failed messages", 0)
        + len([p for p in ctx.problems if p.stage == "source"]),
        "would_create": sum(1 for r in ctx.rows if r["status"] == "would create"),
        "crm_links": ctx.counts.get("crm links added", 0),
        "leads_created": lead_counts.get("created", 0),
        "leads_updated": lead_counts.get("updated", 0),
        "leads_failed": lead_counts.get("failed", 0),
        "api_calls": {
            "x": {"reads": ctx.dm_client.calls if ctx.dm_client else 0, "writes": 0},
            "zendesk": {
                "reads": helpdesk.reads if helpdesk else 0,
                "writes": helpdesk.writes if helpdesk else 0,
            },
            "salesforce": {"reads": crm.reads if crm else 0, "writes": crm.writes if crm else 0},
        },
    }
