"""The erase flow: a person asks to be forgotten; every system we write to forgets them.

A recipe: read what the state store knows about the person (the ledger says where their
records are), then the CRM, then the helpdesk, each by the configured policy
(``consent.crm``: delete | anonymise | keep; ``consent.helpdesk``: redact | delete |
keep), and the state store last, in one transaction that also suppresses them and writes
one audit line (counts and statuses, no personal data). Until that transaction commits
the ledger still points at everything, and every external step is idempotent (already
deleted counts as done, already redacted text is left alone), so an erasure interrupted
anywhere is finished by running it again; a second run after a complete one writes
nothing.

Nothing personal leaves this flow: the run name, logs, artifacts and summary carry a
prefix of the person's keyed hash and counts (a dry run's plan adds CRM and helpdesk
record ids), and errors are scrubbed of the person's identifiers before they are raised.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.exceptions import MissingContextError
from pydantic import BaseModel, Field

from connectors.crm import salesforce
from connectors.helpdesk import zendesk
from connectors.http import ApiError
from flows.leads import DELIVERY_LOCK
from flows.params import RunTarget, as_is
from mappings import load_spec
from socialcrm import consent, erasure
from socialcrm.config import Settings, load_settings
from socialcrm.state import StateStore

PIPELINE = "erase"
# Ledger destinations written by the leads and tickets flows.
LEAD = "Lead"
TICKET = "zendesk:ticket"
COMMENT = "zendesk:comment"
REQUESTER = "zendesk:user"
PROFILE_ID_FIELD = "Social_Profile_Id__c"
TASK_KEY_FIELD = "Socialcrm_Key__c"
ERASED_NAME = "Erased"
NEUTRAL_SUBJECT = "Social message (requester erased)"
# Lead fields emptied on anonymise, besides every text field the lead mapping writes.
ANONYMISED_LEAD_FIELDS = (
    "FirstName",
    "Email",
    "Phone",
    "MobilePhone",
    "Title",
    "Street",
    "City",
    "Description",
    "Website",
    "Social_Handle__c",
    "Social_Profile_URL__c",
    PROFILE_ID_FIELD,
)
_TEXT_TYPES = {"string", "textarea", "email", "url", "phone", "combobox"}
PERSON_PATTERN = r"^[a-z][a-z0-9]*:[A-Za-z0-9_.@-]{1,100}$"


class ErasureIncomplete(RuntimeError):
    """An erasure stopped before its end; run it again once the cause is fixed. The
    message names no one."""


class EraseRun(RunTarget):
    """Who to erase, and whether only to show what would be done."""

    person: str = Field(
        title="Person",
        description='Identity key "{platform}:{user_id}", e.g. x:12345 (never a handle: '
        "handles change). Prefect keeps flow-run parameters: delete the run afterwards if "
        "that matters",
        pattern=PERSON_PATTERN,
    )
    dry_run: bool = Field(
        False,
        title="Dry run",
        description="Find everything and list what would be done; change nothing",
    )


def _logger() -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger("socialcrm.flows.erase")


@dataclass
class EraseContext:
    """What the steps of one erasure share."""

    settings: Settings
    store: StateStore
    person: erasure.Person
    footprint: erasure.Footprint
    needles: erasure.Needles
    dry_run: bool
    crm: salesforce.SalesforceConnection | None = None
    helpdesk: zendesk.ZendeskClient | None = None
    plan: list[dict[str, Any]] = field(default_factory=list)

    def would(self, system: str, action: str, target: str, ids: Sequence[Any]) -> None:
        """In a dry run, note what would be done (record ids of the CRM/helpdesk only)."""
        if ids:
            self.plan.append(
                {
                    "system": system,
                    "action": action,
                    "object": target,
                    "count": len(ids),
                    "ids": [str(i) for i in ids],
                }
            )


@contextmanager
def _scrubbed_errors(ctx: EraseContext, system: str) -> Iterator[None]:
    """An API error may quote what we sent (a name, an email): raise it without them."""
    try:
        yield
    except ApiError as error:
        text = erasure.sanitise(str(error), ctx.needles, [ctx.person.key])
        raise ErasureIncomplete(f"{system}: {text}") from None


# --- CRM ----------------------------------------------------------------------------------


def _records(conn: salesforce.SalesforceConnection, soqls: Sequence[str]) -> list[dict[str, Any]]:
    return [record for soql in soqls for record in salesforce.query(conn, soql)]


def _find_in_crm(
    ctx: EraseContext, conn: salesforce.SalesforceConnection
) -> tuple[dict[str, dict[str, Any]], set[str], dict[str, dict[str, Any]]]:
    """The person's leads (by the ledger and by external id), the Contacts carrying their
    id, and the Tasks to act on: all Tasks on their leads, and ours (keyed by their person
    key, or with any key of ours on their Contacts)."""
    key = ctx.person.key
    lead_fields = ["Id", "FirstName", "LastName", "Email", "Social_Handle__c"]
    known_ids = ctx.footprint.destination_ids(LEAD, [key])
    soqls = salesforce.in_queries(
        "Lead", lead_fields, [("Id", known_ids), (PROFILE_ID_FIELD, [key])]
    )
    leads = {str(r["Id"]): r for r in _records(conn, soqls)}
    for lead in leads.values():
        first, last = lead.get("FirstName"), lead.get("LastName")
        full = " ".join(str(part) for part in (first, last) if part)
        ctx.needles.add(
            handles=[lead.get("Social_Handle__c")], names=[full], emails=[lead.get("Email")]
        )
    contact_ids = ctx.footprint.destination_ids("Contact", [key])
    contacts = {
        str(r["Id"])
        for r in _records(
            conn,
            salesforce.in_queries(
                "Contact", ["Id"], [("Id", contact_ids), (PROFILE_ID_FIELD, [key])]
            ),
        )
    }
    task_fields = ["Id", "WhoId", TASK_KEY_FIELD]
    # A person key is [a-z0-9] then ":" then [A-Za-z0-9_.@-] (parse_person): nothing to
    # quote, and "_" is the only LIKE wildcard among those characters.
    prefix = key.replace("_", "\\_")
    by_key = f"SELECT {', '.join(task_fields)} FROM Task WHERE {TASK_KEY_FIELD} LIKE '{prefix}%'"
    tasks: dict[str, dict[str, Any]] = {}
    for record in salesforce.query(conn, by_key):
        value = str(record.get(TASK_KEY_FIELD) or "")
        rest = value[len(key) :]
        if value.startswith(key) and (not rest or not rest[0].isalnum()):
            tasks[str(record["Id"])] = record
            who = str(record.get("WhoId") or "")
            if who.startswith("003"):  # a Contact (id prefix 003) we matched them to
                contacts.add(who)
    for record in _records(conn, salesforce.in_queries("Task", task_fields, [("WhoId", leads)])):
        tasks[str(record["Id"])] = record
    for record in _records(
        conn, salesforce.in_queries("Task", task_fields, [("WhoId", sorted(contacts))])
    ):
        if record.get(TASK_KEY_FIELD):  # ours; a sales rep's own Tasks stay
            tasks[str(record["Id"])] = record
    return leads, contacts, tasks


def _anonymised_lead(ctx: EraseContext, conn: salesforce.SalesforceConnection) -> dict[str, Any]:
    """Lead values that keep the record and drop the person: every personal text field
    empty (REST clears a field sent as null), required ones set to "Erased"."""
    described = salesforce.describe(conn, "Lead")
    spec = load_spec(ctx.settings.mapping_path(ctx.settings.crm.lead_mapping))
    values: dict[str, Any] = {"LastName": ERASED_NAME}
    for name in [*ANONYMISED_LEAD_FIELDS, *spec.fields]:
        meta = described.get(name)
        if meta is None or not meta.updateable or name in values:
            continue
        if name in ANONYMISED_LEAD_FIELDS and meta.nillable:
            values[name] = None
        elif meta.type in _TEXT_TYPES:
            if meta.nillable:
                values[name] = None
            elif meta.type in ("string", "textarea"):
                values[name] = ERASED_NAME
    return values


def _check(outcomes: Sequence[Any], what: str) -> int:
    failed = [o for o in outcomes if o.status == "failed"]
    if failed:
        reasons = sorted({p.reason for o in failed for p in o.problems} or {"failed"})
        raise ApiError(salesforce.SYSTEM, what, f"{len(failed)} record(s) failed: {reasons[0]}")
    return len(outcomes)


@task(name="erase-in-crm", cache_policy=NO_CACHE, persist_result=False)
def erase_in_crm(ctx: EraseContext) -> dict[str, Any]:
    """Delete (or anonymise) the person's leads and the Tasks on them; delete our Tasks
    (keyed by the person) wherever they are. Contacts belong to sales: never changed,
    only counted; sales' Tasks on them stay."""
    policy = ctx.settings.consent.crm
    out: dict[str, Any] = {"policy": policy}
    if policy == "keep":
        return {**out, "status": "kept"}
    with _scrubbed_errors(ctx, "crm"):
        conn = ctx.crm = salesforce.connect(ctx.settings.crm)
        leads, contacts, tasks = _find_in_crm(ctx, conn)
        # Anonymising keeps sales' own Tasks on the lead (emptied); ours are keyed by the
        # person (their id is in Socialcrm_Key__c) and are deleted under every policy.
        on_leads = sorted(
            i
            for i, t in tasks.items()
            if str(t.get("WhoId") or "") in leads and not t.get(TASK_KEY_FIELD)
        )
        elsewhere = sorted(i for i in tasks if i not in on_leads)
        out.update(leads=len(leads), tasks=len(tasks), contacts_kept=len(contacts))
        lead_ids = sorted(leads)
        if policy == "delete":
            if ctx.dry_run:
                ctx.would("crm", "delete", "Task", sorted(tasks))
                ctx.would("crm", "delete", "Lead", lead_ids)
            else:
                # Tasks first: deleting a lead takes its activities along, unseen by us.
                out["tasks_deleted"] = _check(
                    salesforce.delete_records(conn, "Task", sorted(tasks)), "delete Task"
                )
                out["leads_deleted"] = _check(
                    salesforce.delete_records(conn, "Lead", lead_ids), "delete Lead"
                )
        else:
            values = _anonymised_lead(ctx, conn)
            task_values = {"Subject": ERASED_NAME, "Description": None}
            if ctx.dry_run:
                ctx.would("crm", "delete", "Task", elsewhere)
                ctx.would("crm", "anonymise", "Task", on_leads)
                ctx.would("crm", "anonymise", "Lead", lead_ids)
            else:
                out["tasks_deleted"] = _check(
                    salesforce.delete_records(conn, "Task", elsewhere), "delete Task"
                )
                out["tasks_anonymised"] = _check(
                    salesforce.update_records(
                        conn, "Task", [{"Id": i, **task_values} for i in on_leads], on_leads
                    ),
                    "anonymise Task",
                )
                out["leads_anonymised"] = _check(
                    salesforce.update_records(
                        conn, "Lead", [{"Id": i, **values} for i in lead_ids], lead_ids
                    ),
                    "anonymise Lead",
                )
    out["status"] = "completed" if leads or tasks else "nothing found"
    return out


# --- helpdesk -----------------------------------------------------------------------------


def _find_in_helpdesk(
    ctx: EraseContext, client: zendesk.ZendeskClient
) -> tuple[set[int], set[int]]:
    """Their requester ids (ledger, and a lookup by external id) and every ticket that
    holds their words: by the ledger, by conversation, and requested by them."""
    fp, key = ctx.footprint, ctx.person.key
    requesters = {int(i) for i in fp.destination_ids(REQUESTER, [key])}
    for user in zendesk.users_by_external_id(client, key):
        requesters.add(int(user["id"]))
        ctx.needles.add(names=[user.get("name")], emails=[user.get("email")])
    tickets = {int(i) for i in fp.destination_ids(TICKET, fp.conversation_keys)}
    tickets |= {int(i) for i in fp.destination_ids(COMMENT, fp.own_message_keys)}
    for conversation in fp.conversation_keys:
        tickets |= {int(t["id"]) for t in zendesk.find_tickets(client, conversation)}
    for requester in sorted(requesters):
        tickets |= {int(t["id"]) for t in zendesk.requested_tickets(client, requester)}
    return requesters, tickets


@task(name="erase-in-helpdesk", cache_policy=NO_CACHE, persist_result=False)
def erase_in_helpdesk(ctx: EraseContext) -> dict[str, Any]:
    """Redact their words and identifiers in every ticket holding them, close their
    tickets under a neutral subject (or delete them for good), then delete the requester
    and delete it for good. A closed ticket cannot be edited: if its subject names them,
    it is deleted for good."""
    policy = ctx.settings.consent.helpdesk
    out: dict[str, Any] = {"policy": policy}
    if ctx.settings.helpdesk is None:
        return {**out, "status": "not configured"}
    if policy == "keep":
        return {**out, "status": "kept"}
    counts = dict.fromkeys(
        ("tickets", "comments_redacted", "tickets_updated", "tickets_deleted", "requesters"), 0
    )
    counts["requesters_deleted"] = 0
    with _scrubbed_errors(ctx, "helpdesk"):
        client = ctx.helpdesk = zendesk.connect(ctx.settings.helpdesk)
        requesters, ticket_ids = _find_in_helpdesk(ctx, client)
        counts["requesters"] = len(requesters)
        for ticket_id in sorted(ticket_ids):
            ticket = zendesk.find_ticket(client, ticket_id)
            if ticket is None:
                continue  # deleted already
            counts["tickets"] += 1
            _erase_ticket(ctx, client, policy, ticket, requesters, counts)
        for requester in sorted(requesters):
            if ctx.dry_run:
                ctx.would("helpdesk", "delete for good", "user", [requester])
                continue
            soft = zendesk.delete_user(client, requester)
            hard = zendesk.delete_user_for_good(client, requester)
            counts["requesters_deleted"] += int(soft or hard)
    found = counts["tickets"] or counts["requesters"]
    return {**out, **counts, "status": "completed" if found else "nothing found"}


def _erase_ticket(
    ctx: EraseContext,
    client: zendesk.ZendeskClient,
    policy: str,
    ticket: dict[str, Any],
    requesters: set[int],
    counts: dict[str, int],
) -> None:
    ticket_id = int(ticket["id"])
    conversations = set(ctx.footprint.conversation_keys)
    theirs = ticket.get("requester_id") in requesters or ticket.get("external_id") in conversations
    if policy == "delete" and theirs:
        _delete_ticket(ctx, client, ticket_id, counts)
        return
    refs = [f"[ref {key}]" for key in ctx.footprint.own_message_keys]
    # The tickets flow's note naming their CRM record (``[ref crm Lead/00Q…]``).
    refs += [
        f"[ref crm {sobject}/{record_id}]"
        for sobject in (LEAD, "Contact")
        for record_id in ctx.footprint.destination_ids(sobject)
    ]
    for comment in zendesk.ticket_comments(client, ticket_id):
        body = str(comment.get("body") or "")
        # Their own words go entirely; others' words only lose the person's identifiers.
        # Every comment the pipeline wrote carries its message's [ref]: in a group
        # conversation's ticket, the requester's comments may be other people's messages.
        whole = (
            any(ref in body for ref in refs)
            or (comment.get("author_id") in requesters and "[ref " not in body)
            or (theirs and "[ref crm " in body)
        )
        markup = zendesk.redaction_markup(
            str(comment.get("html_body") or ""), None if whole else ctx.needles.terms()
        )
        if markup is None:
            continue
        counts["comments_redacted"] += 1
        if ctx.dry_run:
            ctx.would("helpdesk", "redact", "comment", [comment.get("id")])
        else:
            zendesk.redact_comment(client, ticket_id, int(comment["id"]), markup)
    fields: dict[str, Any] = {}
    subject = str(ticket.get("subject") or "")
    if (theirs or ctx.needles.found_in(subject)) and subject != NEUTRAL_SUBJECT:
        fields["subject"] = NEUTRAL_SUBJECT
    external_id = ticket.get("external_id")
    if external_id and (external_id in conversations or ctx.needles.found_in(str(external_id))):
        fields["external_id"] = None  # the conversation key names their user id
    if theirs and ticket.get("status") != "closed":
        fields["status"] = "closed"  # Zendesk deletes no requester of an unclosed ticket
    if not fields:
        return
    if ticket.get("status") == "closed":
        # Closed tickets refuse every edit but redaction: theirs can only go whole.
        # Someone else's ticket is not deleted for a mention: counted, for a person to see.
        if theirs:
            _delete_ticket(ctx, client, ticket_id, counts)
        else:
            counts["closed_tickets_left"] = counts.get("closed_tickets_left", 0) + 1
        return
    counts["tickets_updated"] += 1
    if ctx.dry_run:
        ctx.would("helpdesk", "close under a neutral subject", "ticket", [ticket_id])
    else:
        zendesk.update_ticket(client, ticket_id, fields)


def _delete_ticket(
    ctx: EraseContext, client: zendesk.ZendeskClient, ticket_id: int, counts: dict[str, int]
) -> None:
    counts["tickets_deleted"] += 1
    if ctx.dry_run:
        ctx.would("helpdesk", "delete for good", "ticket", [ticket_id])
    else:
        zendesk.delete_ticket_for_good(client, ticket_id)


# --- state store --------------------------------------------------------------------------


@task(name="erase-in-store", cache_policy=NO_CACHE, persist_result=False)
def erase_in_store(ctx: EraseContext, outcome: dict[str, Any]) -> dict[str, Any]:
    """Every row about them, mentions of them in others' text, their suppression and the
    audit line: one transaction (rolled back in a dry run)."""
    result = erasure.erase_from_store(
        ctx.store,
        ctx.person,
        ctx.needles,
        crm_policy=ctx.settings.consent.crm,
        helpdesk_policy=ctx.settings.consent.helpdesk,
        outcome=outcome,
    )
    return result.summary()


# --- the flow -----------------------------------------------------------------------------


def _run_name() -> str:
    from prefect.runtime import flow_run

    params = flow_run.parameters.get("params") or {}
    if isinstance(params, BaseModel):
        params = params.model_dump()
    mode = " (dry run)" if params.get("dry_run") else ""
    return f"erase {datetime.now(UTC):%Y-%m-%d %H:%M}Z{mode}"  # the person stays out of it


@flow(name="erase", flow_run_name=_run_name, log_prints=False, persist_result=False)
def erase(params: EraseRun) -> dict[str, Any]:
    """Erase a person from the state store, the CRM and the helpdesk, by the configured
    policy, leaving an audit line without personal data.

    Args:
        params: config file, account (empty: every account's runs are held off), the
            person's identity key, and whether this is a dry run.
    """
    logger = _logger()
    settings = load_settings(params.config)
    person = erasure.parse_person(params.person)
    accounts = [settings.account(params.account)] if params.account else settings.accounts
    store = StateStore.open(settings.state_url(), dry_run=params.dry_run)
    summary: dict[str, Any] = {
        "flow": PIPELINE,
        "dry_run": params.dry_run,
        "person_hash": consent.hash_prefix(store, person.key),
        "policies": {"crm": settings.consent.crm, "helpdesk": settings.consent.helpdesk},
        "status": "completed",
    }
    # The leads and tickets runs of the accounts wait: none may write about the person
    # between the moment we look and the moment the store forgets them.
    guard = ExitStack()
    names = [f"{pipeline}:{a.name}" for a in accounts for pipeline in ("leads", "tickets")]
    busy = guard.enter_context(store.locks([*names, DELIVERY_LOCK]))
    if busy:
        guard.close()
        store.close()
        if busy == DELIVERY_LOCK:  # a run of another account delivers the shared people
            summary["status"] = "skipped: a leads run is delivering"
        else:
            pipeline, name = busy.split(":", 1)
            summary["status"] = f"skipped: a {pipeline} run for account {name} is in progress"
        logger.warning(summary["status"])
        return summary
    try:
        consent.merge_config(store, settings.consent)
        footprint, needles = erasure.find_footprint(store, person)
        summary["found"] = footprint.counts()
        summary["already_suppressed"] = footprint.suppression
        ctx = EraseContext(settings, store, person, footprint, needles, params.dry_run)
        summary["crm"] = erase_in_crm(as_is(ctx))
        summary["helpdesk"] = erase_in_helpdesk(as_is(ctx))
        outcome = {"status": "completed", "crm": summary["crm"], "helpdesk": summary["helpdesk"]}
        summary["store"] = erase_in_store(as_is(ctx), outcome)
        if not summary["store"]["audited"]:
            summary["status"] = "already erased"  # nothing was left anywhere
        if summary["crm"].get("contacts_kept"):
            summary["note"] = (
                "Contacts carrying this person's id were left unchanged (sales' records); "
                "only our Tasks on them were deleted"
            )
        if summary["helpdesk"].get("closed_tickets_left"):
            summary["helpdesk_note"] = (
                "Closed tickets of other requesters mention this person in their subject; "
                "Zendesk allows no edit of a closed ticket: review them by hand"
            )
        if params.dry_run:
            summary["plan"] = ctx.plan
        summary["api_calls"] = {
            "salesforce": {
                "reads": ctx.crm.reads if ctx.crm else 0,
                "writes": ctx.crm.writes if ctx.crm else 0,
            },
            "zendesk": {
                "reads": ctx.helpdesk.reads if ctx.helpdesk else 0,
                "writes": ctx.helpdesk.writes if ctx.helpdesk else 0,
            },
        }
    except ErasureIncomplete as error:
        summary["status"] = f"failed: {error}"
        logger.error("erase %s stopped: %s", summary["person_hash"], error)
        raise
    finally:
        guard.close()
        store.close()
        _publish(summary)
    logger.info("erase %s: %s", summary["person_hash"], summary["status"])
    return summary


def _publish(summary: dict[str, Any]) -> None:
    lines = [
        f"# Erasure {summary['person_hash']}{' (dry run)' if summary['dry_run'] else ''}",
        "",
        f"Status: **{summary['status']}**",
        "",
        "| system | policy | what was done |",
        "|---|---|---|",
    ]
    for system in ("crm", "helpdesk", "store"):
        part = dict(summary.get(system) or {})
        policy = part.pop("policy", summary["policies"].get(system, "-"))
        done = ", ".join(f"{k} {v}" for k, v in sorted(part.items())) or "-"
        lines.append(f"| {system} | {policy} | {done} |")
    with suppress(MissingContextError):
        create_markdown_artifact(
            key="erase-summary", markdown="\n".join(lines), description="What the erasure did"
        )
