"""The leads flow: engaged users on a social account become CRM leads.

A recipe, nothing more: pull each stream page by page into the state store (each page a
task, committed with its cursor), then deliver the people whose lead changed in batches
(each batch a task), then publish what happened as artifacts.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.exceptions import MissingContextError
from pydantic import BaseModel, Field

from connectors.crm import salesforce
from connectors.http import Action, ApiError
from connectors.social import x
from flows.reporting import publish_leads_artifacts
from mappings import MappingSpec, apply_spec, load_spec
from socialcrm import inbox, progress
from socialcrm.config import ConfigError, Settings, XAccount, load_settings
from socialcrm.qualify import lead_candidates
from socialcrm.records import DirectMessage, Engagement, RecordProblem, SinkOutcome
from socialcrm.routing import RoutingRules, load_rules, route
from socialcrm.state import PersonRow, StateStore, payload_hash

PIPELINE = "leads"


class LeadsRun(BaseModel):
    """Options for one run of the leads pipeline."""

    config: str = Field(
        "socialcrm.yaml",
        title="Config file",
        description="Path of the socialcrm YAML config, as seen by the worker",
    )
    account: str | None = Field(
        None, title="Account", description="Account name from the config; empty means the first"
    )
    dry_run: bool = Field(
        False,
        title="Dry run",
        description="Compute and show the would-be leads; write nothing to the CRM or the store",
    )
    limit: int | None = Field(
        None, ge=1, title="Lead limit", description="Deliver at most this many leads in this run"
    )
    since: datetime | None = Field(
        None,
        title="Since",
        description="On a first run (no cursor yet), ignore engagements before this moment",
    )


def _logger() -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger("socialcrm.flows.leads")


@dataclass
class LeadsContext:
    """What the tasks of one run share: settings, store, open connections, tallies."""

    settings: Settings
    account: XAccount
    store: StateStore
    x_client: x.XClient | None
    dry_run: bool
    crm: salesforce.SalesforceConnection | None = None
    fetched: int = 0
    new_engagements: int = 0
    authors: set[str] = field(default_factory=set)
    warnings: list[RecordProblem] = field(default_factory=list)
    dead_lettered: int = 0
    delivered: list[dict[str, Any]] = field(default_factory=list)
    problems: list[RecordProblem] = field(default_factory=list)
    would_write: list[dict[str, Any]] = field(default_factory=list)
    gaps: list[str] = field(default_factory=list)
    _spec: MappingSpec | None = None
    _rules: RoutingRules | None = None

    def lead_spec(self) -> MappingSpec:
        """The lead mapping, read once per run."""
        if self._spec is None:
            path = self.settings.mapping_path(self.settings.crm.lead_mapping)
            spec = load_spec(path)
            if not spec.external_id:
                raise ConfigError(f"{path}: a lead mapping needs external_id (the upsert key)")
            self._spec = spec
        return self._spec

    def crm_connection(self) -> salesforce.SalesforceConnection:
        """Connect to the CRM only when there is something to deliver."""
        if self.crm is None:
            self.crm = salesforce.connect(self.settings.crm)
        return self.crm


@dataclass(frozen=True)
class PageResult:
    next_request: x.StreamRequest | None
    records: int
    new: int


@task(
    name="pull-page",
    cache_policy=NO_CACHE,
    persist_result=False,
    retries=1,
    retry_delay_seconds=5,
    task_run_name="pull {request.stream} {request.post_id}",
)
def pull_page(ctx: LeadsContext, request: x.StreamRequest) -> PageResult:
    """Fetch one page and record it with its cursor in one transaction."""
    logger = _logger()
    assert ctx.x_client is not None, "pulling needs a source client"
    page, next_request = x.fetch_page(ctx.x_client, request)
    if request.stream == "mentions" and ctx.settings.routing.tickets_from_mentions:
        queue_help_requests(ctx, page.records)
    cursors = {request.cursor_name: page.cursor} if page.cursor else None
    result = ctx.store.ingest(
        ctx.account.name, page.records, ctx.settings.qualification, cursors=cursors
    )
    # A record that failed to parse once and now arrives whole leaves the dead letters.
    ctx.store.resolve_dead_letters([record.key for record in page.records], PIPELINE)
    if page.problems:
        ctx.store.add_dead_letters(PIPELINE, page.problems)
        ctx.dead_lettered += len(page.problems)
        ctx.problems.extend(page.problems)
    ctx.warnings.extend(page.warnings)
    ctx.fetched += len(page.records)
    ctx.new_engagements += result.new
    ctx.authors.update(record.author.key for record in page.records)
    progress.report("pages")
    progress.report("engagements", len(page.records))
    logger.info(
        "%s: %d engagements (%d new, %d people), %d rejected, %d warnings%s",
        request.cursor_name,
        len(page.records),
        result.new,
        result.people_touched,
        len(page.problems),
        len(page.warnings),
        "; more pages follow" if next_request else "",
    )
    return PageResult(next_request, len(page.records), result.new)


@task(
    name="deliver-batch",
    cache_policy=NO_CACHE,
    persist_result=False,
    task_run_name="deliver {batch_number}",
)
def deliver_batch(
    ctx: LeadsContext, people: list[PersonRow], batch_number: int
) -> list[SinkOutcome]:
    """Map a batch of people to leads, skip unchanged ones, upsert the rest in one call."""
    logger = _logger()
    settings = ctx.settings
    conn = ctx.crm_connection()
    spec = ctx.lead_spec()
    assert spec.external_id is not None
    fields = salesforce.describe(conn, spec.object_name)
    keys = [person.person_key for person in people]
    frame = lead_candidates(people, ctx.store.engagements_of(keys), settings.qualification)
    frame = frame.assign(record_key=frame["person_key"])
    mapped = apply_spec(spec, frame, fields, key_column="record_key", system="salesforce")

    outcomes: list[SinkOutcome] = []
    rejected_keys = {problem.record_key for problem in mapped.rejected}
    for key in sorted(rejected_keys):
        outcomes.append(
            SinkOutcome(key, "failed", problems=[p for p in mapped.rejected if p.record_key == key])
        )
    ledger = ctx.store.deliveries(mapped.keys, spec.object_name)
    to_send: list[dict[str, Any]] = []
    send_keys: list[str] = []
    hashes: dict[str, str] = {}
    for key, full in zip(mapped.keys, mapped.records, strict=True):
        # An empty value is left out, not sent as null: an update must never wipe
        # what a salesperson typed into the lead (an email, a company).
        record = {name: value for name, value in full.items() if value is not None}
        digest = payload_hash(record)
        known = ledger.get(key)
        if known is not None and known.payload_hash == digest and known.status != "failed":
            outcomes.append(SinkOutcome(key, "unchanged", known.destination_id, digest))
            continue
        hashes[key] = digest
        to_send.append(record)
        send_keys.append(key)

    if ctx.dry_run:
        for key, record in zip(send_keys, to_send, strict=True):
            status = "would update" if key in ledger else "would create"
            ctx.would_write.append({"record_key": key, "status": status, **record})
            outcomes.append(SinkOutcome(key, status, payload_hash=hashes[key]))
    elif to_send:
        try:
            sent = salesforce.upsert(conn, spec.object_name, spec.external_id, to_send, send_keys)
        except ApiError as error:
            if is_systemic(error):
                raise
            # Retries exhausted or refused whole: every record keeps its reason, replayable.
            sent = [
                SinkOutcome(
                    key,
                    "failed",
                    problems=[RecordProblem(key, "delivery", "salesforce", str(error))],
                    retryable=error.action is Action.RETRY,
                )
                for key in send_keys
            ]
        for outcome in sent:
            outcome.payload_hash = hashes.get(outcome.record_key)
        outcomes.extend(sent)

    failed = [p for outcome in outcomes for p in outcome.problems]
    ctx.store.record_deliveries(spec.object_name, outcomes)
    if failed:
        ctx.store.add_dead_letters(PIPELINE, failed)
        ctx.dead_lettered += len(failed)
        ctx.problems.extend(failed)
    delivered = [o.record_key for o in outcomes if o.status in ("created", "updated", "unchanged")]
    ctx.store.resolve_dead_letters(delivered, PIPELINE)
    # Transient failures stay pending: the next run tries them again by itself.
    retry = {o.record_key for o in outcomes if o.retryable}
    ctx.store.clear_pending(key for key in keys if key not in retry)

    by_key = {person.person_key: person for person in people}
    for outcome in outcomes:
        person = by_key.get(outcome.record_key)
        ctx.delivered.append(
            {
                "record_key": outcome.record_key,
                "status": outcome.status,
                "handle": person.handle if person else None,
                "name": (person.profile.get("display_name") if person else None),
                "score": person.score if person else None,
                "url": conn.record_url(spec.object_name, outcome.destination_id)
                if outcome.destination_id
                else None,
                "error": "; ".join(p.describe() for p in outcome.problems) or None,
            }
        )
    progress.report("leads", len(outcomes))
    counts = _count(outcomes)
    logger.info(
        "batch %d: %d people -> %s",
        batch_number,
        len(people),
        ", ".join(f"{n} {status}" for status, n in sorted(counts.items())) or "nothing to do",
    )
    return outcomes


def is_systemic(error: ApiError) -> bool:
    """Failures the next record would meet too: stop the run rather than spoil a batch."""
    return error.action is Action.QUOTA or error.status in (401, 403)


def stop_status(error: ApiError) -> str:
    """The run's status line: a spent quota is a clean stop, anything else a failure."""
    return f"quota: {error}" if error.action is Action.QUOTA else f"failed: {error}"


def queue_help_requests(ctx: LeadsContext, records: list[Engagement]) -> None:
    """Public mentions asking for help wait in the inbox for the tickets flow.

    Written before the page's cursor moves, and keyed, so a crash re-queues nothing twice.
    """
    if ctx._rules is None:
        ctx._rules = load_rules(ctx.settings.mapping_path(ctx.settings.routing.rules))
    routed = []
    for record in records:
        decision = route(ctx._rules, record.text, "mention")
        if decision.route == "support":
            message = DirectMessage(
                platform=record.platform,
                message_id=record.id,
                conversation_id=f"mention-{record.id}",
                sender=record.author,
                text=record.text or "",
                sent_at=record.occurred_at,
                channel="mention",
            )
            routed.append((message, decision))
    if routed:
        inbox.ingest_messages(ctx.store, ctx.account.name, routed)
        _logger().info("mentions: %d asking for help queued for the helpdesk", len(routed))


def _count(outcomes: list[SinkOutcome]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for outcome in outcomes:
        counts[outcome.status] = counts.get(outcome.status, 0) + 1
    return counts


def deliver_pending_leads(
    ctx: LeadsContext, *, limit: int | None = None, only: list[str] | None = None
) -> list[SinkOutcome]:
    """Deliver every qualified person whose lead changed, one task per batch.

    ``only`` narrows it to some people (the tickets flow passes the senders of sales
    DMs); ``limit`` caps the leads of this run, the rest stay pending for the next.
    """
    settings = ctx.settings
    threshold = settings.qualification.threshold
    outcomes: list[SinkOutcome] = []
    remaining = limit
    batches = ctx.store.pending_people(
        batch_size=settings.crm.batch_size, min_score=threshold, only=only
    )
    for number, batch in enumerate(batches, 1):
        if remaining is not None:
            batch = batch[:remaining]
        outcomes.extend(deliver_batch(ctx, batch, number))
        if remaining is not None:
            remaining -= len(batch)
            if remaining <= 0:
                return outcomes
    if only is None:
        ctx.store.clear_unqualified_pending(threshold)
    return outcomes


def first_requests(ctx: LeadsContext, since: datetime | None) -> list[x.StreamRequest]:
    """Where each stream starts this run: its stored cursor, else ``since``."""
    account = ctx.account
    cursors = ctx.store.cursors(account.name)
    start = x._x_time(since) if since else None
    requests: list[x.StreamRequest] = []
    if "mentions" in account.streams:
        requests.append(
            x.StreamRequest("mentions", since_id=cursors.get("mentions"), start_time=start)
        )
    wants_posts = {"quotes", "reposts", "likes"} & set(account.streams)
    if wants_posts:
        assert ctx.x_client is not None, "pulling needs a source client"
        posts = x.recent_posts(ctx.x_client, since=since)
        for post in posts:
            post_id = str(post["id"])
            for stream in ("quotes", "reposts", "likes"):
                if stream in account.streams:
                    request = x.StreamRequest(stream, post_id=post_id)
                    since_id = cursors.get(request.cursor_name)
                    requests.append(replace(request, since_id=since_id))
    return requests


def run_summary(ctx: LeadsContext, outcomes: list[SinkOutcome], status: str) -> dict[str, Any]:
    counts = _count(outcomes)
    crm = ctx.crm
    usage = crm.api_usage() if crm else None
    return {
        "flow": PIPELINE,
        "account": ctx.account.name,
        "status": status,
        "dry_run": ctx.dry_run,
        "fetched": ctx.fetched,
        "new_engagements": ctx.new_engagements,
        "engaged_users": len(ctx.authors),
        "qualified": len(outcomes),
        "created": counts.get("created", 0),
        "updated": counts.get("updated", 0),
        "unchanged": counts.get("unchanged", 0),
        "failed": counts.get("failed", 0),
        "would_create": counts.get("would create", 0),
        "would_update": counts.get("would update", 0),
        "dead_lettered": ctx.dead_lettered,
        "source_warnings": len(ctx.warnings),
        "api_calls": {
            "x": {"reads": ctx.x_client.calls if ctx.x_client else 0, "writes": 0},
            "salesforce": {
                "reads": crm.reads if crm else 0,
                "writes": crm.writes if crm else 0,
            },
        },
        "salesforce_api_usage": f"{usage[0]}/{usage[1]}" if usage else None,
        "gaps": list(ctx.gaps),
    }


def run_namer(flow_name: str) -> Callable[[], str]:
    """Run names ops can read in the UI: flow, account, time, and whether it is a dry run."""

    def name() -> str:
        from prefect.runtime import flow_run

        params = flow_run.parameters.get("params") or {}
        if isinstance(params, BaseModel):
            params = params.model_dump()
        account = params.get("account") or "default"
        mode = " (dry run)" if params.get("dry_run") else ""
        return f"{flow_name} {account} {datetime.now(UTC):%Y-%m-%d %H:%M}Z{mode}"

    return name


@flow(name="leads", flow_run_name=run_namer("leads"), log_prints=False)
def leads(params: LeadsRun = LeadsRun()) -> dict[str, Any]:  # noqa: B008
    """Pull engaged users of a social account and upsert them as CRM leads.

    Args:
        params: what to run: config file, account, dry run, lead limit, backfill start.
    """
    logger = _logger()
    settings = load_settings(params.config)
    account = settings.account(params.account)
    store = StateStore.open(settings.state_url(), dry_run=params.dry_run)
    ctx = LeadsContext(
        settings=settings,
        account=account,
        store=store,
        x_client=x.connect(account),
        dry_run=params.dry_run,
    )
    outcomes: list[SinkOutcome] = []
    status = "completed"
    guard = ExitStack()
    if not guard.enter_context(store.lock(f"{PIPELINE}:{account.name}")):
        status = f"skipped: another {PIPELINE} run for account {account.name} is in progress"
        _logger().warning(status)
        store.close()
        return run_summary(ctx, [], status)
    try:
        for first in first_requests(ctx, params.since):
            request: x.StreamRequest | None = first
            walked = 0
            while request is not None:
                result = pull_page(ctx, request)
                walked += result.records
                request = result.next_request
            if first.stream == "mentions" and first.since_id and walked >= x.MENTIONS_REACH:
                gap = (
                    f"possible gap: {walked} mentions since the last run reach the "
                    f"{x.MENTIONS_REACH} the X timeline can return; older ones may be missed. "
                    "Run more often."
                )
                logger.warning("mentions: %s", gap)
                ctx.gaps.append(gap)
        outcomes = deliver_pending_leads(ctx, limit=params.limit)
    except ApiError as error:
        status = stop_status(error)
        logger.error("run stopped: %s", error)
        if error.action is not Action.QUOTA:
            raise
    finally:
        summary = run_summary(ctx, outcomes, status)
        try:
            publish_leads_artifacts(
                ctx.account.name, summary, ctx.delivered, ctx.problems, ctx.would_write
            )
        finally:
            guard.close()
            store.close()
    logger.info(
        "leads %s: %d fetched, %d engaged users, %d qualified, %d created, %d updated, "
        "%d unchanged, %d failed",
        account.name,
        summary["fetched"],
        summary["engaged_users"],
        summary["qualified"],
        summary["created"],
        summary["updated"],
        summary["unchanged"],
        summary["failed"],
    )
    return summary
