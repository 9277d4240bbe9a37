"""The leads flow: engaged users on a social account become CRM leads.

A recipe, nothing more: pull the streams page by page into the state store (one task
walks them side by side; each page commits with its cursor), then deliver the people
whose lead changed in batches (a task prepares a batch, another writes it; the next batch
is prepared while one is written), then publish what happened as artifacts.
"""

from __future__ import annotations

import contextvars
import logging
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.exceptions import FlowPauseTimeout, MissingContextError
from prefect.flow_runs import pause_flow_run
from prefect.futures import PrefectFuture
from prefect.input import RunInput
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import BaseModel, Field, field_validator

from connectors.crm import salesforce
from connectors.helpdesk import zendesk
from connectors.http import Action, ApiError, Pacing, is_systemic, set_pacing
from connectors.social import x
from flows.params import RunTarget, as_is
from flows.reporting import (
    publish_leads_artifacts,
    publish_review_artifact,
    sales_view,
    write_sales_csv,
)
from mappings import MappingError, MappingSpec, apply_spec, check_sources, check_spec, load_spec
from socialcrm import consent, inbox, progress
from socialcrm.config import ConfigError, Settings, XAccount, load_settings
from socialcrm.exclusions import ExclusionRules, skip_reasons
from socialcrm.heap import startup_objects_frozen
from socialcrm.qualify import (
    LEAD_ROW_COLUMNS,
    PLATFORM_NAMES,
    TASK_ROW_COLUMNS,
    lead_candidates,
    top_engagements,
)
from socialcrm.records import DirectMessage, Engagement, Page, RecordProblem, SinkOutcome
from socialcrm.routing import RoutingRules, load_rules, route
from socialcrm.state import EngagementRow, IngestResult, PersonRow, StateStore, payload_hash

PIPELINE = "leads"
DELIVERY_LOCK = "leads-delivery"
"""Held while leads are delivered: pending people are shared by every account of a store,
so the runs of two accounts must not deliver them at the same time (each account's own
lock keeps its pulls apart)."""
TICKET_LEDGER = "zendesk:ticket"  # the tickets flow's ledger of conversations -> tickets
REVIEW_POLL_SECONDS = 5
# Streams walked at once; the X client paces them all by the API's rate-limit windows.
PARALLEL_STREAMS = 4


class LeadsRun(RunTarget):
    """Options for one run of the leads pipeline."""

    dry_run: bool = Field(
        False,
        title="Dry run",
        description="Compute and show the would-be leads; write nothing to the CRM or the store",
    )
    limit: int | None = Field(
        None,
        ge=1,
        title="Lead limit",
        description="Handle at most this many pending people in this run (skipped ones "
        "count); the rest wait for the next run",
    )
    since: datetime | None = Field(
        None,
        title="Since",
        description="On a first run (no cursor yet), ignore engagements before this moment",
    )
    review: bool = Field(
        False,
        title="Review before writing",
        description="Show the would-be leads and pause until someone approves them in the "
        "Prefect UI; only what was shown is written",
    )
    review_timeout_minutes: int = Field(
        60,
        ge=1,
        le=24 * 60,  # the wait holds the locks: erasures and other runs wait for it
        title="Review timeout (minutes)",
        description="Without a decision by then, nothing is written (at most a day: "
        "meanwhile erasures are refused and other leads runs of the store only pull)",
    )
    sales_csv: str | None = Field(
        None,
        title="Sales CSV",
        description="Also write the run's new leads, best first, to this CSV file on the "
        "machine that runs the flow (a spreadsheet cannot run what people wrote); the name "
        "must end in .csv",
    )

    @field_validator("sales_csv")
    @classmethod
    def _a_csv_file(cls, path: str | None) -> str | None:
        # Anyone who can start a run picks this path: never a config, a script or a key.
        if path is not None and not path.strip().lower().endswith(".csv"):
            raise ValueError("the sales CSV's name must end in .csv")
        return path


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
    # Values the mapping changed or left out of records that still went (a cut City, an
    # address that is no address): ops see them in the run's artifacts.
    mapping_warnings: list[RecordProblem] = field(default_factory=list)
    dead_lettered: int = 0
    delivered: list[dict[str, Any]] = field(default_factory=list)
    problems: list[RecordProblem] = field(default_factory=list)
    would_write: list[dict[str, Any]] = field(default_factory=list)
    gaps: list[str] = field(default_factory=list)
    serial: threading.Lock = field(default_factory=threading.Lock)
    writer: PageWriter = field(default_factory=lambda: PageWriter())
    campaign_members: int = 0
    campaign_tried: set[str] = field(default_factory=set)  # people whose membership was tried
    last_write: salesforce.Written | None = None  # what the last batch's write sent
    deferred: list[PersonRow] = field(default_factory=list)  # see defer_same_address
    dry_run_addresses: dict[str, str] = field(default_factory=dict)  # address -> first key
    adopting: dict[str, str] = field(default_factory=dict)  # lead id -> who adopts it
    _crm_ready: Future[salesforce.SalesforceConnection] | None = None
    _crm_guard: threading.Lock = field(default_factory=threading.Lock)
    _spec: MappingSpec | None = None
    _spec_fits: bool = False
    _exclusions: ExclusionRules | None = None
    _task_spec: MappingSpec | None = None
    _rules: RoutingRules | None = None

    def lead_spec(self) -> MappingSpec:
        """The lead mapping, read once per run."""
        if self._spec is None:
            self._spec = lead_mapping(self.settings)
        return self._spec

    def task_spec(self) -> MappingSpec:
        """The Task logged on a matched Contact, read once per run."""
        if self._task_spec is None:
            self._task_spec = task_mapping(self.settings)
        return self._task_spec

    def exclusion_rules(self) -> ExclusionRules:
        """Who never becomes a lead, built once per run."""
        if self._exclusions is None:
            self._exclusions = ExclusionRules.build(self.settings.exclusions)
        return self._exclusions

    def adopter(self, lead_id: str, key: str) -> str:
        """Who of our people adopts the unclaimed lead ``lead_id`` in this run: the first
        to ask. Two adopting it in one write (or in one reviewed plan) would each write
        their external id on it, and the last would win; the others get a Task on it."""
        with self.serial:
            return self.adopting.setdefault(lead_id, key)

    def crm_connection(self) -> salesforce.SalesforceConnection:
        """Connect to the CRM only when there is something to deliver."""
        with self._crm_guard:
            if self.crm is None:
                ready, self._crm_ready = self._crm_ready, None
                # A failed early connect is raised, not tried again: a second failed
                # login could count toward locking the integration user out.
                self.crm = ready.result() if ready else salesforce.connect(self.settings.crm)
            return self.crm

    def connect_crm_early(self) -> None:
        """Connect to the CRM and read its metadata while the pull goes on.

        Called once the pull has stored someone who may qualify, so a run with nobody
        to deliver still makes no CRM call; the token and describe round trips then
        hide behind the pull's instead of starting the delivery.
        """
        with self._crm_guard:
            if self.crm is not None or self._crm_ready is not None:
                return
            pool = ThreadPoolExecutor(1, thread_name_prefix="crm-connect")
            run = contextvars.copy_context().run  # its logs are the flow run's
            self._crm_ready = pool.submit(run, self._connect_and_describe)
            pool.shutdown(wait=False)

    def _connect_and_describe(self) -> salesforce.SalesforceConnection:
        conn = salesforce.connect(self.settings.crm)
        try:
            objects = [self.lead_spec().object_name]
            if self.settings.crm.matching.enabled:
                objects += [o for o in match_rules(self).objects if o not in objects]
            for sobject in objects:
                salesforce.describe(conn, sobject)
        except Exception:  # read again, and its error raised, where the delivery needs it
            _logger().debug("early describe failed; the delivery reads it again", exc_info=True)
        return conn


@dataclass
class QueuedPage:
    request: x.StreamRequest
    page: Page[Engagement]
    done: bool = False
    new: int = 0
    error: BaseException | None = None


class PageWriter:
    """Stores fetched pages, several to a transaction when they queue up (group commit).

    Streams are walked side by side and SQLite takes one writer at a time: the pages
    that arrive while a group is being written wait, then go together in the next one,
    so a busy pull commits (and looks up, inserts, updates) once for several pages.
    Every page still commits with its cursor; a group that fails is written again page
    by page, so a page's failure stays with its own stream.
    """

    def __init__(self) -> None:
        self._queue: list[QueuedPage] = []
        self._guard = threading.Lock()  # the queue
        self._writer = threading.Lock()  # one group written at a time

    def store(self, ctx: LeadsContext, request: x.StreamRequest, page: Page[Engagement]) -> int:
        """Store ``page`` (perhaps with others); returns its new engagements."""
        item = QueuedPage(request, page)
        with self._guard:
            self._queue.append(item)
        with self._writer:
            if not item.done:  # nobody took it along: write everything queued
                with self._guard:
                    group, self._queue = self._queue, []
                try:
                    store_pages(ctx, group)
                finally:
                    for other in group:
                        if not other.done:
                            other.error = other.error or RuntimeError("page not stored")
                            other.done = True
        if item.error is not None:
            raise item.error
        return item.new


def store_page(ctx: LeadsContext, request: x.StreamRequest, page: Page[Engagement]) -> int:
    """Record one fetched page with its cursor; returns its new rows (see PageWriter).

    A page is not a task of its own: a task costs more than a page's round trip, and
    each page is logged.
    """
    return ctx.writer.store(ctx, request, page)


def store_pages(ctx: LeadsContext, group: list[QueuedPage]) -> None:
    """Write ``group`` in one transaction, else each page in its own; marks them done."""
    try:
        with ctx.store.transaction():  # the store calls below join it
            result = write_pages(ctx, group)
    except Exception as error:
        if len(group) > 1:
            for item in group:
                store_pages(ctx, [item])
            return
        group[0].error, group[0].done = error, True
        return
    if result.may_qualify:
        ctx.connect_crm_early()
    fresh = set(result.fresh)
    for item in group:
        page = item.page
        new_here = {record.key for record in page.records} & fresh
        fresh -= new_here
        item.new, item.done = len(new_here), True
        with ctx.serial:
            if page.problems:
                ctx.dead_lettered += len(page.problems)
                ctx.problems.extend(page.problems)
            ctx.warnings.extend(page.warnings)
            ctx.fetched += len(page.records)
            ctx.new_engagements += item.new
            ctx.authors.update(record.author.key for record in page.records)
        progress.report("pages")
        progress.report("engagements", len(page.records))
        people = {record.author.key for record in page.records if record.key in new_here}
        _logger().info(
            "%s: %d engagements (%d new, %d people), %d rejected, %d warnings%s",
            item.request.cursor_name,
            len(page.records),
            item.new,
            len(people),
            len(page.problems),
            len(page.warnings),
            "; more pages follow" if page.next_token else "",
        )


def write_pages(ctx: LeadsContext, group: list[QueuedPage]) -> IngestResult:
    """The store writes of ``group``: help requests, engagements, cursors, dead letters."""
    records = [record for item in group for record in item.page.records]
    reasons = consent.suppression_reasons(ctx.store, [r.author.key for r in records])
    cursors: dict[str, str] = {}
    for item in group:
        if item.request.stream == "mentions" and ctx.settings.routing.tickets_from_mentions:
            queue_help_requests(ctx, item.page.records, reasons)
        if item.page.cursor:
            cursors[item.request.cursor_name] = item.page.cursor
    # Whoever opted out or was erased is not stored again, whatever they like next.
    allowed = [record for record in records if record.author.key not in reasons]
    result = ctx.store.ingest(
        ctx.account.name, allowed, ctx.settings.qualification, cursors=cursors or None
    )
    # A record that failed to parse once and now arrives whole leaves the dead letters.
    ctx.store.resolve_dead_letters([record.key for record in records], PIPELINE)
    problems = [problem for item in group for problem in item.page.problems]
    if problems:
        ctx.store.add_dead_letters(PIPELINE, problems)
    return result


class PageStores:
    """Stores fetched pages off the walks' threads, so a walk goes on with its next page,
    or its next stream, while its last page is written.

    A walk's pages are stored in order (each store waits for the one before, see
    ``walk_stream``), so a cursor never passes a page that failed; at most ``2 × lanes``
    pages wait at once. A dry run stores on the walk's own thread (one connection).
    """

    def __init__(self, ctx: LeadsContext, lanes: int) -> None:
        self.ctx = ctx
        self._pool = None if ctx.dry_run else ThreadPoolExecutor(lanes, thread_name_prefix="store")
        self._room = threading.BoundedSemaphore(2 * lanes)
        self._futures: list[Future[int]] = []

    def submit(self, request: x.StreamRequest, page: Page[Engagement]) -> Future[int]:
        if self._pool is None:
            done: Future[int] = Future()
            try:
                done.set_result(store_page(self.ctx, request, page))
            except Exception as error:
                done.set_exception(error)
            self._futures.append(done)  # a last page's failure is raised by ``finish``
            return done
        self._room.acquire()
        run = contextvars.copy_context().run  # its logs are the pull task's
        future = self._pool.submit(run, store_page, self.ctx, request, page)
        future.add_done_callback(lambda _: self._room.release())
        self._futures.append(future)
        return future

    def finish(self) -> None:
        """Wait for every page; the first failure is raised."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        for future in self._futures:
            future.result()

    def finish_quietly(self) -> None:
        """Wait for the pages already handed over, when a walk has failed anyway."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)


def walk_stream(ctx: LeadsContext, first: x.StreamRequest, stores: PageStores) -> int:
    """Walk one stream page by page; returns how many engagements it read.

    The next page is fetched while the current one is stored: the fetch waits on the
    network, storing works locally, so a walk takes about its calls times the latency.
    Cursors still move only with the stored pages, in order: a page is handed to the
    store once the page before it is in. The last page is stored while the lane walks
    its next stream (the pull waits for it).
    """
    assert ctx.x_client is not None, "pulling needs a source client"
    client = ctx.x_client
    walked = 0
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="prefetch") as prefetch:
        request: x.StreamRequest | None = first
        pending: Future[tuple[Page[Engagement], x.StreamRequest | None]] | None
        pending = prefetch.submit(x.fetch_page, client, first)
        stored: Future[int] | None = None
        while request is not None and pending is not None:
            page, next_request = pending.result()
            pending = prefetch.submit(x.fetch_page, client, next_request) if next_request else None
            if stored is not None:
                stored.result()  # the page before is in (or its failure stops the walk)
            stored = stores.submit(request, page)
            walked += len(page.records)
            request = next_request
    if first.stream == "mentions" and first.since_id and walked >= x.MENTIONS_REACH:
        gap = (
            f"possible gap: {walked} mentions since the last run reach the "
            f"{x.MENTIONS_REACH} the X timeline can return; older ones may be missed. "
            "Run more often."
        )
        _logger().warning("mentions: %s", gap)
        with ctx.serial:
            ctx.gaps.append(gap)
    return walked


def worth_retrying(_task: Any, _run: Any, state: Any) -> bool:
    """A spent quota or refused credentials stay so: the run stops, the next one resumes."""
    try:
        state.result()
    except ApiError as error:
        return not is_systemic(error) and error.action is not Action.FAIL
    except Exception:  # anything else may be transient (a locked database)
        return True
    return False


@task(
    name="pull",
    cache_policy=NO_CACHE,
    persist_result=False,
    retries=1,
    retry_delay_seconds=5,
    retry_condition_fn=worth_retrying,
    task_run_name="pull {streams} streams",
)
def pull_task(ctx: LeadsContext, requests: list[x.StreamRequest], streams: int) -> int:
    """Walk the streams side by side on ``PARALLEL_STREAMS`` lanes; returns what was read.

    One task, not one per stream: a task run costs about 10 ms of this process and a
    call to the Prefect API, and a brand with 100 recent posts has 301 streams to walk,
    most of them one page long. Each page is logged (and shown) under this task. A retry
    walks again from the stored cursors, so nothing is read or written twice.
    """
    # A retry starts each walk where the stored cursors say: the walks the failed attempt
    # finished are not read (nor counted) again.
    stored = ctx.store.cursors(ctx.account.name)
    requests = [replace(r, since_id=stored.get(r.cursor_name, r.since_id)) for r in requests]
    lanes = 1 if ctx.dry_run else PARALLEL_STREAMS  # a dry run holds one connection
    stores = PageStores(ctx, lanes)
    with ThreadPoolExecutor(max_workers=lanes, thread_name_prefix="walk") as pool:
        # Each walk runs in a copy of this task's context, so its logs are the task's.
        futures = [
            pool.submit(contextvars.copy_context().run, walk_stream, ctx, request, stores)
            for request in requests
        ]
        walked = 0
        for request, future in zip(requests, futures, strict=True):
            try:
                walked += future.result()
            except BaseException as error:
                pool.shutdown(wait=True, cancel_futures=True)  # the first failure stops
                stores.finish_quietly()
                _logger().error("%s: %s", request.cursor_name, error)
                raise
    stores.finish()
    return walked


def pull_streams(ctx: LeadsContext, requests: list[x.StreamRequest]) -> None:
    """Walk independent streams side by side, a few at a time (``parallel_streams``).

    The X client paces every thread by the same rate-limit windows, so more threads
    never mean more calls than the API allows.
    """
    if requests:
        pull_task(as_is(ctx), as_is(requests), len(requests))


@dataclass
class BatchPlan:
    """What one batch would write, decided before anything is written.

    Dry runs show it, reviewed runs show it and wait, other runs write it at once; a
    reviewed run writes these very records, not a fresh computation.
    """

    number: int
    people: list[PersonRow]
    decided: list[SinkOutcome]
    send_keys: list[str] = field(default_factory=list)
    to_send: list[dict[str, Any]] = field(default_factory=list)
    hashes: dict[str, str] = field(default_factory=dict)
    known: set[str] = field(default_factory=set)
    context: dict[str, dict[str, Any]] = field(default_factory=dict)
    scores: dict[str, float] = field(default_factory=dict)
    # Matched in the org: the Contact each customer is (they get a Task, not a lead), and
    # the existing Lead (not ours) each person is, which we update by id, our fields only.
    # A Lead that carries someone else's external id gets a Task too (``on_leads``).
    contacts: dict[str, tuple[str, str]] = field(default_factory=dict)
    on_leads: set[str] = field(default_factory=set)
    # Dry runs: new leads a real run would log on the lead of another (same address).
    same_address: dict[str, str] = field(default_factory=dict)
    adopt: dict[str, str] = field(default_factory=dict)
    adopted_before: set[str] = field(default_factory=set)
    # Leads found in the org by our external id though our ledger has no record of them.
    found_own: set[str] = field(default_factory=set)
    # The create-only values (``create_only`` in the spec) left out of the records of
    # leads that exist, by key: sent if such a lead turns out to be deleted.
    on_create: dict[str, dict[str, Any]] = field(default_factory=dict)
    frame: pd.DataFrame | None = None

    def preview(self) -> list[dict[str, Any]]:
        existing = self.known | self.found_own | self.adopt.keys() | self.adopted_before
        return [
            {
                "record_key": key,
                "status": "would log on lead"
                if key in self.same_address
                else "would update"
                if key in existing
                else "would create",
                **record,
            }
            for key, record in zip(self.send_keys, self.to_send, strict=True)
        ]

    def contact_preview(self) -> list[dict[str, Any]]:
        """The Tasks a write would log for people matched to a Contact or another's lead."""
        return [
            {
                "record_key": key,
                "status": "would log on lead" if key in self.on_leads else "would log on contact",
                "Id": record_id,
            }
            for key, (record_id, _) in self.contacts.items()
        ]

    def split(self, held: set[str]) -> tuple[BatchPlan, BatchPlan]:
        """(this plan without the held leads and their people, a plan of those alone).

        Held leads are plain upserts (no Contact, no adopted lead): only their records,
        hashes, scores and context travel.
        """
        pairs = list(zip(self.send_keys, self.to_send, strict=True))
        now = replace(
            self,
            people=[p for p in self.people if p.person_key not in held],
            send_keys=[k for k, _ in pairs if k not in held],
            to_send=[r for k, r in pairs if k not in held],
        )
        later = BatchPlan(
            self.number,
            people=[p for p in self.people if p.person_key in held],
            decided=[],
            send_keys=[k for k, _ in pairs if k in held],
            to_send=[r for k, r in pairs if k in held],
            hashes={k: self.hashes[k] for k in held if k in self.hashes},
            known=self.known & held,
            context={k: self.context[k] for k in held if k in self.context},
            scores={k: self.scores[k] for k in held if k in self.scores},
            adopted_before=self.adopted_before & held,
            found_own=self.found_own & held,
            on_create={k: v for k, v in self.on_create.items() if k in held},
            frame=None if self.frame is None else self.frame[self.frame["person_key"].isin(held)],
        )
        return now, later

    def after(self, held: BatchPlan) -> BatchPlan:
        """This plan with leads held back from an earlier batch sent first."""
        return replace(
            self,
            people=[*held.people, *self.people],
            decided=[*held.decided, *self.decided],
            send_keys=[*held.send_keys, *self.send_keys],
            to_send=[*held.to_send, *self.to_send],
            hashes={**held.hashes, **self.hashes},
            known=held.known | self.known,
            context={**held.context, **self.context},
            scores={**held.scores, **self.scores},
            adopted_before=held.adopted_before | self.adopted_before,
            found_own=held.found_own | self.found_own,
            on_create={**held.on_create, **self.on_create},
            frame=joined_frames(held.frame, self.frame),
        )


def joined_frames(*frames: pd.DataFrame | None) -> pd.DataFrame | None:
    present = [frame for frame in frames if frame is not None]
    if len(present) <= 1:
        return present[0] if present else None
    return pd.concat(present, ignore_index=True)


COLLECTION_SIZE = 200  # records per sObject Collections call
SHARED_ADDRESS = "new leads share an address with an earlier one"  # why they are deferred
DEFERRED_ROUNDS = 3  # the first of several sharing an address may fail: the next goes
HOLD_LIMIT = 10_000  # at most this many leads wait for the next batch


def hold_back(ctx: LeadsContext, plan: BatchPlan) -> tuple[BatchPlan, BatchPlan | None]:
    """Split a plan into what to send now and leads to send with the next batch.

    Calls are spent in whole units: a Bulk API 2.0 job once ``bulk_threshold`` leads wait
    (a handful of calls for any size) if the next batch can bring them there, else full
    collections of 200. Leads short of that wait for the next batch (they stay pending in
    the store, so a crash loses nothing); the last batch sends what is left. Batches
    smaller than one call are sent as they come; the review gate and dry runs hold nothing
    back.
    """
    crm = ctx.settings.crm
    own = [key for key in plan.send_keys if key not in plan.adopt]
    if ctx.dry_run or not own or len(own) >= crm.bulk_threshold:
        return plan, None
    bulk_ahead = not crm.auto_assign and crm.bulk_threshold <= HOLD_LIMIT
    if bulk_ahead and len(own) + crm.batch_size >= crm.bulk_threshold:
        waiting = len(own)  # with the next batch's leads, one Bulk job may take them all
    elif crm.batch_size >= COLLECTION_SIZE:
        waiting = len(own) % COLLECTION_SIZE  # full calls now, the tail with the next batch
    else:
        waiting = 0  # batches smaller than a call: sent as they come, as configured
    if waiting == 0:
        return plan, None
    now, later = plan.split(set(own[-waiting:]))
    _logger().info("batch %d: %d leads wait to go with the next batch", plan.number, waiting)
    return now, later


@dataclass
class PreparedBatch:
    """A batch scored and mapped (``prepare_batch``), not yet decided (``decide_batch``).

    ``matches``: the org's records these people are, looked up while the batch before was
    being written (None: not looked up yet).
    """

    plan: BatchPlan
    keys: list[str]
    records: list[dict[str, Any]]
    matches: dict[str, salesforce.Match] | None = None


def plan_batch(ctx: LeadsContext, people: list[PersonRow], number: int) -> BatchPlan:
    """Map a batch of people to leads and keep only the ones whose lead changed."""
    return decide_batch(ctx, prepare_batch(ctx, people, number))


def prepare_batch(ctx: LeadsContext, people: list[PersonRow], number: int) -> PreparedBatch:
    """Consent, exclusions, scores and the mapping of a batch: work on this machine only.

    It reads nothing an earlier batch's write changes, so it runs while that write is
    on the wire (see ``deliver_pending_leads``).
    """
    conn = ctx.crm_connection()
    spec = ctx.lead_spec()
    fields = salesforce.describe(conn, spec.object_name)
    if not ctx._spec_fits:
        misfits = check_spec(spec, fields)
        if misfits:
            raise ConfigError(mapping_misfit(misfits))
        ctx._spec_fits = True
    plan = BatchPlan(number, people, decided=[])
    now = datetime.now(UTC)
    skipped = {
        key: f"consent: {reason}"
        for key, reason in consent.suppression_reasons(
            ctx.store, [person.person_key for person in people]
        ).items()
    }
    for key, reason in skip_reasons(people, ctx.exclusion_rules(), now=now).items():
        skipped.setdefault(key, reason)
    keep = [person for person in people if person.person_key not in skipped]
    engagements = ctx.store.engagements_of([person.person_key for person in keep])
    frame = lead_candidates(keep, engagements, ctx.settings.qualification, now=now)
    links = ticket_links(ctx, frame["person_key"].tolist())
    frame = frame.assign(helpdesk_ticket_url=pd.Series(links, index=frame.index, dtype="str"))
    threshold = ctx.settings.qualification.threshold
    for key, score in frame.loc[~frame["qualified"], ["person_key", "score"]].itertuples(
        index=False
    ):
        skipped[key] = f"score {score:g} below {threshold:g} now that older engagements count less"
    for key, reason in sorted(skipped.items()):
        plan.decided.append(SinkOutcome(key, f"skipped: {reason}"))
    frame = frame[frame["qualified"]]
    plan.scores = {
        key: round(float(score), 1)
        for key, score in zip(frame["person_key"], frame["score"], strict=True)
    }
    frame = frame.assign(record_key=frame["person_key"])
    mapped = apply_spec(spec, frame, fields, key_column="record_key", system="salesforce")
    note_mapping_warnings(ctx, f"batch {number}", mapped.warnings)

    for key, record in zip(mapped.keys, mapped.records, strict=True):
        top = top_engagements(engagements.get(key, ()), ctx.settings.qualification, limit=1)
        plan.context[key] = {
            "company": record.get("Company"),
            "top_engagement": top_engagement_line(top[0]) if top else None,
        }
    rejected: dict[str, list[RecordProblem]] = {}
    for problem in mapped.rejected:
        rejected.setdefault(problem.record_key, []).append(problem)
    for key in sorted(rejected):
        plan.decided.append(SinkOutcome(key, "failed", problems=rejected[key]))
    plan.frame = frame
    return PreparedBatch(plan, mapped.keys, mapped.records)


def note_mapping_warnings(ctx: LeadsContext, where: str, warnings: list[RecordProblem]) -> None:
    """Kept for the run's artifacts and counted in the log: the records still go."""
    if not warnings:
        return
    with ctx.serial:
        ctx.mapping_warnings.extend(warnings)
    _logger().info(
        "%s: %d values changed or left out by the mapping, e.g. %s",
        where,
        len(warnings),
        warnings[0].describe(),
    )


def decide_batch(ctx: LeadsContext, prepared: PreparedBatch) -> BatchPlan:
    """Match a prepared batch against the org and the ledger: what to send, what is done.

    Runs once every earlier batch is written. Matches looked up while the last write ran
    are kept except for whoever that write can have changed, who are looked up again, so
    a lead an earlier batch created is matched here, not created again. Consent is
    checked again right before the write, whatever the store held when the batch was
    prepared.
    """
    plan, keys, records = prepared.plan, prepared.keys, prepared.records
    spec = ctx.lead_spec()
    late = consent.suppression_reasons(ctx.store, keys)
    if late:
        for key in sorted(late):
            plan.decided.append(SinkOutcome(key, f"skipped: consent: {late[key]}"))
        pairs = [(k, r) for k, r in zip(keys, records, strict=True) if k not in late]
        keys, records = [k for k, _ in pairs], [r for _, r in pairs]
    assert plan.frame is not None
    matches = prepared.matches
    if matches is None:
        matches = find_existing(ctx, plan.frame, keys)
    elif ctx.last_write is not None:
        # Looked up while the batch before was written: whoever that write can have changed
        # (it sent one of their values, or wrote to what they matched) is looked up again.
        written = ctx.last_write
        people = match_keys(plan.frame, keys)
        again = [p.person_key for p in people if written.may_change(p, matches.get(p.person_key))]
        if again:
            stale = set(again)
            matches = {k: m for k, m in matches.items() if k not in stale}
            matches.update(find_existing(ctx, plan.frame, again))
            _logger().info(
                "batch %d: %d people looked up again after the batch before",
                plan.number,
                len(again),
            )
    ledger = ctx.store.deliveries(keys, spec.object_name)
    create_only = spec.create_only
    for key, full in zip(keys, records, strict=True):
        # An empty value is left out, not sent as null: an update must never wipe
        # what a salesperson typed into the lead (an email, a company).
        record = {name: value for name, value in full.items() if value is not None}
        known = ledger.get(key)
        match = matches.get(key)
        if match is not None and match.ambiguous:
            reason = (
                f"ambiguous: {len(match.candidates)} {match.object}s match by "
                f"{match.matched_by.replace('_', ' ')}; link the right one by hand"
            )
            plan.decided.append(SinkOutcome(key, f"skipped: {reason}"))
            continue
        contact = contact_of(match)
        if match is not None and contact is not None:
            plan.contacts[key] = (contact, match.matched_by)
            continue
        if match is not None and match.object == "Lead" and match.matched_by != "external_id":
            assert match.id is not None
            # Another of our people's lead (the same human on another account: same
            # address), another tool's, or one another of ours adopts in this run: taking
            # it would write our external id over theirs, and their next run would take it
            # back. A Task on it instead.
            if match.claimed_by or ctx.adopter(match.id, key) != key:
                plan.contacts[key] = (match.id, match.matched_by)
                plan.on_leads.add(key)
                continue
            plan.adopt[key] = match.id
        if known is not None and known.status == "matched lead":
            plan.adopted_before.add(key)
        if match is not None and match.object == "Lead" and match.matched_by == "external_id":
            plan.found_own.add(key)
        if (
            key in plan.adopted_before
            and key not in plan.adopt
            and key not in plan.found_own
            and known is not None
            and known.destination_id
            and ctx.adopter(known.destination_id, key) == key
        ):
            # Not found by our external id (matching off, or a crash or a failed update
            # kept it from getting there): the ledger knows the lead; update it by id.
            plan.adopt[key] = known.destination_id
        theirs = key in plan.adopt or key in plan.adopted_before
        left_out: dict[str, Any] = {}
        if theirs:
            # Someone else's lead: add our fields to it, never overwrite theirs.
            left_out = {name: v for name, v in record.items() if not name.endswith("__c")}
            record = {name: value for name, value in record.items() if name.endswith("__c")}
        on_create = {name: record.pop(name) for name in create_only if name in record}
        digest = payload_hash(record)  # without them: they never change a lead that exists
        if known is not None and known.payload_hash == digest and known.status != "failed":
            plan.decided.append(SinkOutcome(key, "unchanged", known.destination_id, digest))
            continue
        in_org = key in plan.found_own or (known is not None and bool(known.destination_id))
        if theirs or (on_create and in_org):
            # What a create needs besides the record: sent if the lead is gone meanwhile.
            plan.on_create[key] = {**left_out, **on_create}
        else:
            record.update(on_create)
        if known is not None and known.destination_id:
            plan.known.add(key)  # in the org: assignment rules must not reshuffle its owner
        plan.hashes[key] = digest
        plan.to_send.append(record)
        plan.send_keys.append(key)
    return plan


def ticket_links(ctx: LeadsContext, person_keys: list[str]) -> list[str | None]:
    """The helpdesk link of each person's latest sales conversation, if it is a ticket."""
    helpdesk = ctx.settings.helpdesk
    if helpdesk is None or not person_keys:
        return [None] * len(person_keys)
    tickets = inbox.sales_tickets(ctx.store, TICKET_LEDGER, person_keys)
    return [
        zendesk.ticket_url(helpdesk, tickets[key].ticket_id) if key in tickets else None
        for key in person_keys
    ]


def match_rules(ctx: LeadsContext) -> salesforce.MatchRules:
    matching = ctx.settings.crm.matching
    spec = ctx.lead_spec()
    assert spec.external_id is not None
    return salesforce.MatchRules(keys=frozenset(matching.keys), external_id_field=spec.external_id)


def match_keys(frame: pd.DataFrame, keys: list[str]) -> list[salesforce.MatchKey]:
    """What each of these people can be looked up by in the org."""
    # Whole columns as lists: a lookup per cell (``.at``) cost a fifth of planning.
    columns = (frame[name].tolist() for name in ("email", "handle", "profile_url"))
    rows = dict(zip(frame["person_key"].tolist(), zip(*columns, strict=True), strict=True))
    wanted = []
    for key in keys:
        email, handle, profile_url = rows[key]
        wanted.append(
            salesforce.MatchKey(
                key, email=_text(email), handle=_text(handle), profile_url=_text(profile_url)
            )
        )
    return wanted


def find_existing(
    ctx: LeadsContext, frame: pd.DataFrame, keys: list[str]
) -> dict[str, salesforce.Match]:
    """The org's Contacts and Leads these people already are: one round trip, mostly."""
    if not ctx.settings.crm.matching.enabled or not keys:
        return {}
    wanted = match_keys(frame, keys)
    return salesforce.find_matches(ctx.crm_connection(), wanted, match_rules(ctx))


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value.strip() else None


def contact_of(match: salesforce.Match | None) -> str | None:
    """The Contact a match stands for: a Contact, or the one a converted Lead became."""
    if match is None or match.ambiguous:
        return None
    if match.object == "Contact":
        return match.id
    return match.converted_contact_id if match.is_converted else None


def top_engagement_line(row: EngagementRow) -> str:
    """What a salesperson reads first: the person's most telling engagement, one line."""
    said = f': "{" ".join(row.text.split())}"' if row.text else ""
    return f"{row.occurred_at:%Y-%m-%d} {row.kind}{said} {row.url or ''}".strip()


def send_leads(ctx: LeadsContext, plan: BatchPlan) -> list[SinkOutcome]:
    """Upsert new and own leads by external id; update matched leads of others by id.

    Assignment rules run for records this call creates, never for known ones. A create the
    org's duplicate rule refuses is attached to the record the rule names instead.
    """
    conn = ctx.crm_connection()
    spec = ctx.lead_spec()
    assert spec.external_id is not None
    sobject = spec.object_name
    pairs = list(zip(plan.send_keys, plan.to_send, strict=True))
    own = [(key, record) for key, record in pairs if key not in plan.adopt]
    adopted = [(key, record) for key, record in pairs if key in plan.adopt]
    outcomes: list[SinkOutcome] = []
    if own:
        outcomes += salesforce.upsert(
            conn,
            sobject,
            spec.external_id,
            [record for _, record in own],
            [key for key, _ in own],
            known=plan.known | plan.adopt.keys() | plan.found_own,
        )
        outcomes = recreate_deleted(ctx, plan, dict(own), outcomes)
    duplicates = [o for o in outcomes if o.status == "duplicate"]
    outcomes = [o for o in outcomes if o.status != "duplicate"]
    records = dict(pairs)
    contacts: dict[str, tuple[str, str]] = {}
    named_leads = {
        rid for o in duplicates for obj, rid in salesforce.duplicate_matches(o) if obj == "Lead"
    }
    # A lead the rule names may carry another external id (another of our people): a Task
    # on it, not a takeover (see decide_batch).
    claims: dict[str, str] = {}
    try:
        if named_leads:
            claims = salesforce.field_values(conn, sobject, spec.external_id, named_leads)
    except ApiError as error:  # the leads written above stand; these go again later
        if is_systemic(error):
            raise
        outcomes += salesforce.failed_call([o.record_key for o in duplicates], error)
        duplicates = []
    for outcome in duplicates:
        named = salesforce.duplicate_matches(outcome)
        lead = next((rid for obj, rid in named if obj == "Lead"), None)
        contact = next((rid for obj, rid in named if obj == "Contact"), None)
        if contact:
            contacts[outcome.record_key] = (contact, "duplicate rule")
        elif lead and (
            claims.get(lead, outcome.record_key) != outcome.record_key
            or ctx.adopter(lead, outcome.record_key) != outcome.record_key
        ):
            contacts[outcome.record_key] = (lead, "duplicate rule")
            plan.on_leads.add(outcome.record_key)
        elif lead:
            plan.adopt[outcome.record_key] = lead
            custom = {k: v for k, v in records[outcome.record_key].items() if k.endswith("__c")}
            adopted.append((outcome.record_key, custom))
        else:
            outcomes.append(outcome)  # a duplicate rule naming nothing usable: as it came
    if adopted:
        # Marked before the write: a crash after it must not leave a lead that carries our
        # external id but no ledger row saying it is someone else's (the next run would
        # then treat it as ours and overwrite their fields). Hashless: it is sent again.
        ctx.store.record_deliveries(
            sobject, [SinkOutcome(key, "matched lead", plan.adopt[key]) for key, _ in adopted]
        )
        updated = salesforce.update_records(
            conn,
            sobject,
            [{"Id": plan.adopt[key], **record} for key, record in adopted],
            [key for key, _ in adopted],
        )
        updated = recreate_deleted(ctx, plan, dict(adopted), updated)
        for outcome in updated:
            if outcome.status == "duplicate":  # the org's rule names another: sales decides
                outcome.status = "failed"
        for outcome in updated:
            if outcome.status == "updated":
                outcome.status = "matched lead"
                outcome.destination_id = outcome.destination_id or plan.adopt[outcome.record_key]
                outcome.payload_hash = payload_hash(dict(adopted)[outcome.record_key])
        outcomes += updated
    if contacts:
        outcomes += log_on_contacts(ctx, plan, contacts)
    # Those we adopted earlier keep that status, so later runs still touch our fields only.
    for outcome in outcomes:
        if outcome.status == "updated" and outcome.record_key in plan.adopted_before:
            outcome.status = "matched lead"
    return outcomes


def deleted_in_org(plan: BatchPlan, outcome: SinkOutcome) -> bool:
    """Whether a write failed because the lead is gone: an update by id finds it deleted,
    or an upsert that left out what a create needs (``plan.on_create``) became a create
    and was refused for lacking it."""
    needed = plan.on_create.get(outcome.record_key)
    if outcome.status != "failed" or needed is None:
        return False
    for problem in outcome.problems:
        if problem.reason.startswith("ENTITY_IS_DELETED"):
            return True
        missing = set((problem.field or "").split(","))
        if (
            problem.reason.startswith("REQUIRED_FIELD_MISSING")
            and missing & needed.keys()
            and outcome.record_key not in plan.adopted_before  # theirs go by id: see above
        ):
            return True
    return False


def recreate_deleted(
    ctx: LeadsContext,
    plan: BatchPlan,
    records: dict[str, dict[str, Any]],
    outcomes: list[SinkOutcome],
) -> list[SinkOutcome]:
    """Leads deleted in the org since we wrote them are created again, in full, by our
    external id (ours from then on, adopted ones too). A lead an upsert created though its
    record lacked the create-only values (they are not required) gets them at once."""
    spec = ctx.lead_spec()
    assert spec.external_id is not None
    conn = ctx.crm_connection()
    gone = [o.record_key for o in outcomes if deleted_in_org(plan, o)]
    redone: dict[str, SinkOutcome] = {}
    if gone:
        _logger().info(
            "batch %d: %d leads deleted in the org are created again", plan.number, len(gone)
        )
        again = salesforce.upsert(
            conn,
            spec.object_name,
            spec.external_id,
            [{**records[key], **plan.on_create[key]} for key in gone],
            gone,
        )
        redone = {o.record_key: o for o in again}
    outcomes = [redone.get(o.record_key, o) for o in outcomes]
    bare = [
        o
        for o in outcomes
        if o.status == "created"
        and o.destination_id
        and o.record_key in plan.on_create
        and o.record_key not in redone
    ]
    if bare:
        filled = salesforce.update_records(
            conn,
            spec.object_name,
            [{"Id": o.destination_id, **plan.on_create[o.record_key]} for o in bare],
            [o.record_key for o in bare],
        )
        for outcome in filled:
            if outcome.status == "failed":
                _logger().warning(
                    "%s: created without its create-only values, which failed: %s",
                    outcome.record_key,
                    "; ".join(p.reason for p in outcome.problems),
                )
    return outcomes


def campaign_ledger(campaign_id: str) -> str:
    return f"CampaignMember:{campaign_id}"


def to_join(ctx: LeadsContext, outcomes: list[SinkOutcome]) -> list[SinkOutcome]:
    """Which of these written records are not yet members of the configured campaign;
    their membership rows are recorded as not yet joined (``failed``) at once.

    Called before the batch's ledger is written: a crash between the two leaves rows the
    next run's ``rejoin_campaign`` finds, never a lead that silently never joins.
    """
    campaign = ctx.settings.crm.campaign
    if campaign is None:
        return []
    ledger = campaign_ledger(campaign.id)
    written = {o.record_key: o for o in outcomes if o.destination_id and o.status in JOINING}
    members = ctx.store.deliveries(list(written), ledger)
    fresh = [
        o
        for key, o in written.items()
        if key not in members
        or members[key].status == "failed"
        or members[key].destination_id != o.destination_id
    ]
    ctx.store.record_deliveries(
        ledger, [SinkOutcome(o.record_key, "failed", o.destination_id) for o in fresh]
    )
    return fresh


def join_campaign(
    ctx: LeadsContext, fresh: list[SinkOutcome], *, count_failures: bool = False
) -> None:
    """Add ``fresh`` (from ``to_join``) to the configured campaign, once each.

    Memberships are kept in the ledger (``campaign_ledger``, by person): one already in
    joins no more; one that fails stays ``failed`` and the next delivering run tries it
    again (``rejoin_campaign``); a lead whose "created" answer was lost (a timeout, a
    crash) joins on its next write. A failed membership does not undo the lead: it is
    logged.
    """
    campaign = ctx.settings.crm.campaign
    if campaign is None or not fresh:
        return
    with ctx.serial:
        ctx.campaign_tried.update(o.record_key for o in fresh)
    who: dict[str, list[str]] = {}
    leads: list[str] = []
    contacts: list[str] = []
    for outcome in fresh:
        assert outcome.destination_id is not None
        who.setdefault(outcome.destination_id, []).append(outcome.record_key)
        on_contact = outcome.status == "matched contact"
        (contacts if on_contact else leads).append(outcome.destination_id)
    call_failed = False
    try:
        joined = salesforce.add_campaign_members(
            ctx.crm_connection(),
            campaign.id,
            campaign.member_status,
            lead_ids=leads,
            contact_ids=contacts,
        )
    except ApiError as error:
        if is_systemic(error):
            raise  # the leads are recorded; the run stops as for any spent quota
        _logger().warning(
            "campaign %s: %d memberships not added, tried again in the next run: %s",
            campaign.id,
            len(fresh),
            error,
        )
        joined = [SinkOutcome(record_id, "failed") for record_id in who]
        call_failed = True
    failed = [o for o in joined if o.status == "failed"]
    # A failure counts an attempt (``to_join``'s row counted the first): ``rejoin_campaign``
    # gives up on one that keeps failing.
    ctx.store.record_deliveries(
        campaign_ledger(campaign.id),
        [
            SinkOutcome(key, "failed" if o.status == "failed" else "created", o.record_key)
            for o in joined
            if count_failures or o.status != "failed"
            for key in who.get(o.record_key, [])
        ],
    )
    if call_failed:
        return
    with ctx.serial:  # "unchanged": already a member (added by hand, or before the ledger)
        ctx.campaign_members += sum(1 for o in joined if o.status == "created")
    if failed:
        _logger().warning(
            "campaign %s: %d memberships failed, tried again in the next run: %s",
            campaign.id,
            len(failed),
            "; ".join(p.describe() for o in failed[:3] for p in o.problems),
        )


def rejoin_campaign(ctx: LeadsContext) -> None:
    """Memberships owed since earlier runs, tried again: a thousand a run at most, each up
    to ``REJOIN_ATTEMPTS`` times in all, by the id on their row (a Contact's id starts
    with 003, Salesforce's key prefix). Who opted out since is forgotten; one tried in
    this run waits for the next."""
    campaign = ctx.settings.crm.campaign
    if campaign is None:
        return
    ledger = campaign_ledger(campaign.id)
    rows = [
        row
        for row in ctx.store.rows_with_status(
            ledger, "failed", limit=REJOIN_LIMIT, max_attempts=REJOIN_ATTEMPTS
        )
        if row.destination_id and row.record_key not in ctx.campaign_tried
    ]
    if not rows:
        return
    suppressed = consent.suppression_reasons(ctx.store, [row.record_key for row in rows])
    ctx.store.forget_deliveries(ledger, sorted(suppressed))
    owed = [
        SinkOutcome(
            row.record_key,
            "matched contact" if str(row.destination_id).startswith("003") else "created",
            row.destination_id,
        )
        for row in rows
        if row.record_key not in suppressed
    ]
    if owed:
        _logger().info("campaign %s: %d memberships tried again", campaign.id, len(owed))
        join_campaign(ctx, owed, count_failures=True)


REJOIN_ATTEMPTS = 5
REJOIN_LIMIT = 1000
JOINING = ("created", "updated", "matched lead", "matched contact")
LOGGED = ("matched contact", "logged on lead")  # a Task on the record, no lead of theirs
DELIVERED = ("created", "updated", "unchanged", "matched lead", *LOGGED)


def log_on_contacts(
    ctx: LeadsContext, plan: BatchPlan, contacts: dict[str, tuple[str, str]]
) -> list[SinkOutcome]:
    """A customer who engages gets a completed Task on their Contact, not a lead; so does
    a person whose lead is someone else's (``plan.on_leads``), on that lead."""
    if not contacts or plan.frame is None:
        return []
    conn = ctx.crm_connection()
    spec = ctx.task_spec()
    frame = plan.frame[plan.frame["person_key"].isin(list(contacts))]
    day = pd.to_datetime(frame["last_engaged_at"], utc=True, errors="coerce").dt.strftime(
        "%Y-%m-%d"
    )
    frame = frame.assign(
        who_id=[contacts[key][0] for key in frame["person_key"]],
        task_key=(frame["person_key"] + ":engaged:" + day.fillna("undated")).tolist(),
        platform_name=[PLATFORM_NAMES.get(p, p) for p in frame["platform"]],
    )
    fields = salesforce.describe(conn, spec.object_name)
    mapped = apply_spec(spec, frame, fields, key_column="person_key", system="salesforce")
    note_mapping_warnings(ctx, f"batch {plan.number} activities", mapped.warnings)
    outcomes = [
        SinkOutcome(problem.record_key, "failed", problems=[problem]) for problem in mapped.rejected
    ]
    ledger = ctx.store.deliveries(mapped.keys, "Contact")
    records, keys, hashes = [], [], {}
    for key, full in zip(mapped.keys, mapped.records, strict=True):
        record = {name: value for name, value in full.items() if value is not None}
        digest = payload_hash(record)
        known = ledger.get(key)
        if known is not None and known.payload_hash == digest and known.status != "failed":
            outcomes.append(SinkOutcome(key, logged_as(plan, key), contacts[key][0], digest))
            continue
        records.append(record)
        keys.append(key)
        hashes[key] = digest
    if records:
        assert spec.external_id is not None
        task_keys = [str(record[spec.external_id]) for record in records]
        by_task = dict(zip(task_keys, keys, strict=True))
        for outcome in salesforce.upsert_tasks(conn, records, task_keys):
            key = by_task[outcome.record_key]
            if outcome.status in ("created", "updated"):
                status = logged_as(plan, key)
                outcomes.append(SinkOutcome(key, status, contacts[key][0], hashes[key]))
            else:
                problems = [replace(problem, record_key=key) for problem in outcome.problems]
                outcomes.append(
                    SinkOutcome(key, "failed", problems=problems, retryable=outcome.retryable)
                )
    return outcomes


def logged_as(plan: BatchPlan, key: str) -> str:
    return "logged on lead" if key in plan.on_leads else "matched contact"


def lead_mapping(settings: Settings) -> MappingSpec:
    """The lead mapping, refused (``checked_mapping``) before anything is written."""
    return checked_mapping(settings.mapping_path(settings.crm.lead_mapping), LEAD_ROW_COLUMNS)


def task_mapping(settings: Settings) -> MappingSpec:
    """The mapping of the Task logged on a matched Contact, refused like the lead's."""
    path = settings.mapping_path(settings.crm.matching.contact_task_mapping)
    return checked_mapping(path, TASK_ROW_COLUMNS)


def checked_mapping(path: Path, columns: list[str], *, upsert: bool = True) -> MappingSpec:
    """A flow's mapping, or a ConfigError naming what is wrong: a broken file, an upsert
    without ``external_id``, or a column the rows never have (a typo would leave every
    record's field empty without a word)."""
    try:
        spec = load_spec(path)
    except MappingError as error:
        raise ConfigError(str(error)) from None
    if upsert and not spec.external_id:
        raise ConfigError(
            f"{path}: a {spec.object_name} mapping needs external_id (the upsert key)"
        )
    unread = check_sources(spec, columns)
    if unread:
        raise ConfigError(
            "\n".join(unread) + f"\n(nothing was written; the columns: {', '.join(columns)})"
        )
    return spec


def mapping_misfit(problems: list[str]) -> str:
    """A run stopped by its mapping says which fields and how to fix them."""
    hint = "Fix the mapping"
    if any("has no such field" in problem for problem in problems):
        hint += (
            ", or deploy the missing custom fields (deploy/salesforce, see the README's "
            "Salesforce set-up)"
        )
    return (
        f"the lead mapping does not fit the CRM, nothing was written: {'; '.join(problems)}. "
        f"{hint}; `socialcrm mapping check` lists every problem."
    )


def write_plan(ctx: LeadsContext, plan: BatchPlan) -> list[SinkOutcome]:
    """Send a planned batch in as few calls as the API allows, then settle the store."""
    conn = ctx.crm_connection()
    spec = ctx.lead_spec()
    assert spec.external_id is not None
    outcomes = list(plan.decided)
    joining: list[SinkOutcome] = []
    ctx.last_write = None  # until something is sent
    if ctx.dry_run:
        for row in plan.preview():
            ctx.would_write.append(row)
            key = row["record_key"]
            outcomes.append(SinkOutcome(key, row["status"], payload_hash=plan.hashes[key]))
        for key, (contact, _) in plan.contacts.items():
            on = "lead" if key in plan.on_leads else "contact"
            outcomes.append(SinkOutcome(key, f"would log on {on}", contact))
    elif plan.to_send or plan.contacts:
        unsure = False
        try:
            sent = send_leads(ctx, plan)
        except ApiError as error:
            if is_systemic(error):
                raise
            unsure = True  # some calls may have gone through before this one failed
            sent = salesforce.failed_call(plan.send_keys, error)
        try:
            sent += log_on_contacts(ctx, plan, plan.contacts)
        except ApiError as error:
            if is_systemic(error):
                raise
            sent += salesforce.failed_call(list(plan.contacts), error)
        for outcome in sent:
            outcome.payload_hash = outcome.payload_hash or plan.hashes.get(outcome.record_key)
        outcomes.extend(sent)
        joining = to_join(ctx, sent)  # joined once the store is settled (see to_join)
        if ctx.settings.crm.matching.enabled:  # what the next batch must look up again
            ids = [o.destination_id for o in sent if o.destination_id] + list(plan.adopt.values())
            ctx.last_write = (
                salesforce.Written.ANYTHING
                if unsure
                else salesforce.Written.of(plan.to_send, ids, match_rules(ctx))
            )

    failed = [p for outcome in outcomes for p in outcome.problems]
    # A skipped person has no record in the CRM: nothing to remember in the ledger. A
    # Task logged for someone is remembered apart ("Contact"), never as their lead.
    ctx.store.record_deliveries(
        spec.object_name, [o for o in outcomes if not is_skip(o) and o.status not in LOGGED]
    )
    ctx.store.record_deliveries("Contact", [o for o in outcomes if o.status in LOGGED])
    if failed:
        ctx.store.add_dead_letters(PIPELINE, failed)
        ctx.dead_lettered += len(failed)
        ctx.problems.extend(failed)
    delivered = [o.record_key for o in outcomes if o.status in DELIVERED]
    ctx.store.resolve_dead_letters(delivered, PIPELINE)
    # Transient failures stay pending: the next run tries them again by itself.
    retry = {o.record_key for o in outcomes if o.retryable}
    ctx.store.clear_pending(p for p in plan.people if p.person_key not in retry)
    join_campaign(ctx, joining)

    by_key = {person.person_key: person for person in plan.people}
    for outcome in outcomes:
        person = by_key.get(outcome.record_key)
        ctx.delivered.append(
            {
                "record_key": outcome.record_key,
                "status": outcome.status,
                "handle": person.handle if person else None,
                "name": (person.profile.get("display_name") if person else None),
                "score": plan.scores.get(outcome.record_key),
                **plan.context.get(outcome.record_key, {}),
                "url": conn.record_url(spec.object_name, outcome.destination_id)
                if outcome.destination_id
                else None,
                "error": "; ".join(p.describe() for p in outcome.problems) or None,
            }
        )
    progress.report("leads", len(outcomes))
    counts = _count(outcomes)
    _logger().info(
        "batch %d: %d people -> %s",
        plan.number,
        len(plan.people),
        ", ".join(f"{n} {status}" for status, n in sorted(counts.items())) or "nothing to do",
    )
    return outcomes


@task(
    name="prepare-batch",
    cache_policy=NO_CACHE,
    persist_result=False,
    task_run_name="prepare {batch_number}",
)
def prepare_batch_task(
    ctx: LeadsContext, people: list[PersonRow], batch_number: int
) -> PreparedBatch:
    """Score, map and look up a batch of people, while the batch before is being written
    (``decide_batch`` looks up again whoever that write can have changed)."""
    prepared = prepare_batch(ctx, people, batch_number)
    assert prepared.plan.frame is not None
    prepared.matches = find_existing(ctx, prepared.plan.frame, prepared.keys)
    return prepared


@task(
    name="deliver-batch",
    cache_policy=NO_CACHE,
    persist_result=False,
    task_run_name="deliver {batch_number}",
)
def deliver_batch(
    ctx: LeadsContext, prepared: PreparedBatch, batch_number: int, held: BatchPlan | None = None
) -> tuple[list[SinkOutcome], BatchPlan | None]:
    """Match a prepared batch, skip unchanged leads, upsert the rest with the leads ``held``
    back from the batch before; returns the outcomes and the leads held back now."""
    plan = decide_batch(ctx, prepared)
    if held is not None:
        plan = plan.after(recheck_held(ctx, held))
    # Before holding any back: leads held now go out together with the next batch's, and
    # the last held ones alone, with no lookup in between.
    now, later = hold_back(ctx, defer_same_address(ctx, plan))
    return write_plan(ctx, now), later


def recheck_held(ctx: LeadsContext, held: BatchPlan) -> BatchPlan:
    """Held leads without those the write since they were decided can have changed.

    They were looked up with their own batch, whose write (or a later one) may have
    created the lead they are (the same address): those wait in ``ctx.deferred`` and are
    decided afresh after the batches (``deliver_pending_leads``). Consent is checked again
    too: someone may have opted out while the batch before was written.
    """
    held = without_late_opt_outs(ctx, held)
    written = ctx.last_write
    if written is None or not held.send_keys:
        return held
    frame = held.frame
    known = set() if frame is None else set(frame["person_key"])
    people = [] if frame is None else match_keys(frame, [k for k in held.send_keys if k in known])
    again = {key for key in held.send_keys if key not in known}  # no values kept: look again
    again |= {p.person_key for p in people if written.may_change(p, None)}
    return defer(ctx, held, again, "held-back leads may be someone the last write created")


def defer_same_address(ctx: LeadsContext, plan: BatchPlan) -> BatchPlan:
    """The plan without new leads that share an address with an earlier one in it.

    People written in the same call are looked up together, before either exists: two
    accounts giving one address (one human) would make two leads where the org has no
    duplicate rule. The first goes now; the others wait in ``ctx.deferred`` and go after
    it (``deliver_deferred``), when the lookup finds the first's lead. They stay pending
    in the store until then, so a crash loses nothing. A dry run writes nothing, so no
    lookup finds an earlier batch's lead: it remembers the addresses its batches would
    create, and shows the others as a real run treats them (``would log on lead``).
    """
    if ctx.dry_run:
        plan.same_address.update(same_address(ctx, plan, ctx.dry_run_addresses))
        return plan
    return defer(ctx, plan, set(same_address(ctx, plan, {})), SHARED_ADDRESS)


def same_address(ctx: LeadsContext, plan: BatchPlan, first: dict[str, str]) -> dict[str, str]:
    """New leads of ``plan`` whose address an earlier one has: key -> the earlier's key.

    ``first`` (address -> key of its first new lead) is read and extended.
    """
    matching = ctx.settings.crm.matching
    if not matching.enabled or "email" not in matching.keys:
        return {}
    email_field = match_rules(ctx).field_for("email")
    later: dict[str, str] = {}
    for key, record in zip(plan.send_keys, plan.to_send, strict=True):
        if key in plan.known or key in plan.adopt or key in plan.adopted_before:
            continue  # not a create
        address = salesforce.normalize_email(record.get(email_field))
        if address is None:
            continue
        if address in first:
            later[key] = first[address]
        else:
            first[address] = key
    return later


def defer(ctx: LeadsContext, plan: BatchPlan, keys: set[str], why: str) -> BatchPlan:
    """``plan`` without ``keys``, whose people wait in ``ctx.deferred`` (still pending in
    the store) to be decided again after the batches."""
    if not keys:
        return plan
    kept, deferred = plan.split(keys)
    with ctx.serial:
        ctx.deferred.extend(deferred.people)
    _logger().info("batch %d: %d %s; decided again after the batches", plan.number, len(keys), why)
    return kept


@task(
    name="plan-batch",
    cache_policy=NO_CACHE,
    persist_result=False,
    task_run_name="plan {batch_number}",
)
def plan_batch_task(ctx: LeadsContext, people: list[PersonRow], batch_number: int) -> BatchPlan:
    """The review gate's first half: what this batch would write."""
    return plan_batch(ctx, people, batch_number)


@task(
    name="write-batch",
    cache_policy=NO_CACHE,
    persist_result=False,
    task_run_name="write {plan.number}",
)
def write_batch(ctx: LeadsContext, plan: BatchPlan) -> list[SinkOutcome]:
    """The review gate's second half: write exactly what was approved."""
    return write_plan(ctx, plan)


def stop_status(error: ApiError) -> str:
    """The run's status line: a spent quota is a clean stop, anything else a failure."""
    return f"quota: {error}" if error.action is Action.QUOTA else f"failed: {error}"


def queue_help_requests(
    ctx: LeadsContext, records: list[Engagement], reasons: dict[str, str]
) -> None:
    """Public mentions asking for help wait in the inbox for the tickets flow.

    Written before the page's cursor moves, and keyed, so a crash re-queues nothing twice.
    """
    if ctx._rules is None:
        ctx._rules = load_rules(ctx.settings.mapping_path(ctx.settings.routing.rules))
    # An erased person's mention, read again (the cursor had not moved past it), must not
    # bring their words back; one who opted out of marketing still gets support.
    # ``reasons``: the page's suppressions (``consent.suppression_reasons``), read once.
    routed = []
    for record in records:
        if reasons.get(record.author.key) == consent.ERASED:
            continue
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


def is_skip(outcome: SinkOutcome) -> bool:
    return outcome.status.startswith("skipped")


def _count(outcomes: list[SinkOutcome]) -> dict[str, int]:
    """Outcomes by status; the reasons of skips are counted together."""
    counts: dict[str, int] = {}
    for outcome in outcomes:
        status = "skipped" if is_skip(outcome) else outcome.status
        counts[status] = counts.get(status, 0) + 1
    return counts


def pending_batches(
    ctx: LeadsContext, *, limit: int | None = None, only: list[str] | None = None
) -> Iterator[list[PersonRow]]:
    """Qualified people whose lead changed, batch by batch, at most ``limit`` in all."""
    settings = ctx.settings
    remaining = limit
    for batch in ctx.store.pending_people(
        batch_size=settings.crm.batch_size,
        min_score=settings.qualification.threshold,
        only=only,
    ):
        if remaining is not None:
            batch = batch[:remaining]
            remaining -= len(batch)
        yield batch
        if remaining is not None and remaining <= 0:
            return


def deliver_pending_leads(
    ctx: LeadsContext, *, limit: int | None = None, only: list[str] | None = None
) -> list[SinkOutcome]:
    """Deliver every qualified person whose lead changed, batch by batch.

    ``only`` narrows it to some people (the tickets flow passes the senders of sales
    DMs); ``limit`` caps the leads of this run, the rest stay pending for the next.

    Batches overlap: while batch n is written (round trips, a Bulk job's processing),
    batch n+1 is scored, mapped and looked up in the org. Once batch n is in, whoever its
    write can have changed is looked up again (``decide_batch``), so a lead that batch n
    wrote is found, not created twice; one write is in flight at a time. People written
    in the same call (a batch's leads and those held back with them) are looked up
    together: of new leads sharing an address, the first goes, the others after it
    (``defer_same_address``). A dry run does not overlap: its store is one connection,
    used by one thread.
    """
    outcomes: list[SinkOutcome] = []
    held: BatchPlan | None = None
    writing: PrefectFuture[tuple[list[SinkOutcome], BatchPlan | None]] | None = None
    number = 0
    try:
        for number, batch in enumerate(pending_batches(ctx, limit=limit, only=only), 1):
            prepared = prepare_batch_task(as_is(ctx), as_is(batch), number)
            if writing is not None:
                done, writing = writing, None
                sent, held = done.result()
                outcomes.extend(sent)
            if ctx.dry_run:
                sent, held = deliver_batch(as_is(ctx), as_is(prepared), number, as_is(held))
                outcomes.extend(sent)
                continue
            writing = deliver_batch.submit(as_is(ctx), as_is(prepared), number, as_is(held))
        if writing is not None:
            done, writing = writing, None
            sent, held = done.result()
            outcomes.extend(sent)
    except BaseException:
        if writing is not None:  # a batch failed to prepare while one was being written:
            writing.wait()  # that write ends first, and its own failure came first
            if writing.state.is_failed() or writing.state.is_crashed():
                writing.result()
        raise
    if held is not None:  # decided with earlier leads already: no address twice in it
        outcomes.extend(write_batch(as_is(ctx), as_is(recheck_held(ctx, held))))
        number += 1
    outcomes.extend(deliver_deferred(ctx, number))
    if only is None:
        ctx.store.clear_unqualified_pending(ctx.settings.qualification.threshold)
        if not ctx.dry_run:
            rejoin_campaign(ctx)
    return outcomes


def deliver_deferred(ctx: LeadsContext, number: int) -> list[SinkOutcome]:
    """The people deferred by ``defer`` (after ``number`` batches), decided afresh: their
    lookup now finds the lead written before them."""
    outcomes: list[SinkOutcome] = []
    for _ in range(DEFERRED_ROUNDS):  # the first of several may have failed: the next goes
        if not ctx.deferred:
            break
        people, ctx.deferred = ctx.deferred, []
        number += 1
        plan = defer_same_address(ctx, plan_batch_task(as_is(ctx), as_is(people), number))
        outcomes.extend(write_batch(as_is(ctx), as_is(plan)))
    if ctx.deferred:  # still pending in the store: the next run decides them again
        _logger().warning(
            "%d people sharing an address with a lead whose write failed wait for the next run",
            len(ctx.deferred),
        )
    return outcomes


class ReviewDecision(RunInput):
    """The form ops fill in on a paused leads run."""

    approve: bool = Field(
        False, title="Approve", description="Write exactly the previewed leads to the CRM"
    )
    comment: str = Field("", title="Comment", description="Why; kept in the run's logs")


def review_and_deliver(
    ctx: LeadsContext, *, limit: int | None, timeout_minutes: int
) -> tuple[list[SinkOutcome], str]:
    """Plan every batch, show the plan, pause for a decision, then write that plan.

    The run holds its locks while it waits, so no other run changes what was shown: its
    account's, and the store's delivery lock (the leads runs of other accounts on the
    same store pull meanwhile, and deliver once the review is decided).
    Returns the outcomes and the run's status line.
    """
    plans = [
        plan_batch_task(as_is(ctx), as_is(batch), number)
        for number, batch in enumerate(pending_batches(ctx, limit=limit), 1)
    ]
    # New leads sharing an address with an earlier one are shown, and later written, as
    # Tasks on its lead (see defer_same_address): one lead per person, as without review.
    addresses: dict[str, str] = {}
    for plan in plans:
        plan.same_address.update(same_address(ctx, plan, addresses))
    # Everything approval writes: leads, and Tasks for customers and others' leads.
    preview = [row for plan in plans for row in [*plan.preview(), *plan.contact_preview()]]
    rejected = [p for plan in plans for o in plan.decided for p in o.problems]
    shown = Counter(row["status"] for row in preview)
    headline = (
        f"would create {shown['would create']}, update {shown['would update']}, "
        + (f"log on a lead {shown['would log on lead']}, " if shown["would log on lead"] else "")
        + (
            f"log on a contact {shown['would log on contact']}, "
            if shown["would log on contact"]
            else ""
        )
        + f"reject {len({p.record_key for p in rejected})}"
    )
    publish_review_artifact(ctx.account.name, headline, preview, rejected)
    logger = _logger()
    if not preview and not rejected:
        outcomes = [o for plan in plans for o in write_plan(ctx, plan)]
        rejoin_campaign(ctx)
        return outcomes, "completed: nothing to review"
    logger.info("review: %s; waiting up to %d minutes for a decision", headline, timeout_minutes)
    timeout = timeout_minutes * 60
    try:
        decision = pause_flow_run(
            wait_for_input=ReviewDecision,
            timeout=timeout,
            poll_interval=min(REVIEW_POLL_SECONDS, timeout),
            key="review",
        )
    except FlowPauseTimeout:
        status = f"not written: no review decision within {timeout_minutes} minutes ({headline})"
        logger.warning(status)
        return [], status
    comment = f" ({decision.comment})" if decision and decision.comment else ""
    if decision is None or not decision.approve:
        status = f"not written: rejected in review{comment} ({headline})"
        logger.warning(status)
        return [], status
    logger.info("review approved%s: writing the %d previewed leads", comment, len(preview))
    outcomes = [
        outcome
        for plan in plans
        for outcome in write_batch(
            as_is(ctx),
            as_is(
                defer(ctx, without_late_opt_outs(ctx, plan), set(plan.same_address), SHARED_ADDRESS)
            ),
        )
    ]
    outcomes += deliver_deferred(ctx, len(plans))
    rejoin_campaign(ctx)
    return outcomes, f"completed: approved in review{comment}"


def without_late_opt_outs(ctx: LeadsContext, plan: BatchPlan) -> BatchPlan:
    """``plan`` without the people suppressed since it was made (an opt-out while the
    review waited; erasures wait for the review): consent is checked right before a write."""
    late = consent.suppression_reasons(ctx.store, [*plan.send_keys, *plan.contacts])
    if not late:
        return plan
    kept, _ = plan.split(set(late))
    return replace(
        kept,
        contacts={k: v for k, v in kept.contacts.items() if k not in late},
        decided=[
            *kept.decided,
            *(SinkOutcome(key, f"skipped: consent: {late[key]}") for key in sorted(late)),
        ],
    )


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
        "qualified": len(outcomes) - counts.get("skipped", 0),
        "created": counts.get("created", 0),
        "updated": counts.get("updated", 0),
        "unchanged": counts.get("unchanged", 0),
        "skipped": counts.get("skipped", 0),
        "matched_contact": counts.get("matched contact", 0),
        "matched_lead": counts.get("matched lead", 0),
        "logged_on_lead": counts.get("logged on lead", 0),
        "campaign_members": ctx.campaign_members,
        "failed": counts.get("failed", 0),
        "would_create": counts.get("would create", 0),
        "would_update": counts.get("would update", 0),
        "dead_lettered": ctx.dead_lettered,
        "source_warnings": len(ctx.warnings),
        "mapping_warnings": len(ctx.mapping_warnings),
        "api_calls": {
            "x": {"reads": ctx.x_client.calls if ctx.x_client else 0, "writes": 0},
            "salesforce": {
                "reads": crm.reads if crm else 0,
                "writes": crm.writes if crm else 0,
            },
        },
        "salesforce_api_usage": f"{usage[0]}/{usage[1]}" if usage else None,
        "gaps": list(ctx.gaps),
        # Status by person key; the rows behind them are in the run's artifacts. Not the rows
        # themselves: Prefect walks a run's return value (a second at 16,000 leads).
        "outcomes": {row["record_key"]: row["status"] for row in ctx.delivered},
    }


def apply_rate_limits(settings: Settings) -> None:
    """Pace each external system as the config says, for every call of this process.

    A named Prefect limit must exist: Prefect skips a missing one with a log line on every
    call (``strict=False``), and the pacing the config asks for would silently not be.
    """
    for system in ("x", "salesforce", "zendesk"):
        limit = settings.rate_limits.get(system)
        if limit and limit.prefect_limit:
            _check_prefect_limit(system, limit.prefect_limit)
        set_pacing(system, Pacing(limit.per_second, limit.prefect_limit) if limit else None)


def _check_prefect_limit(system: str, name: str) -> None:
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            found = client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            raise ConfigError(
                f"rate_limits.{system}.prefect_limit: the Prefect server has no global "
                f"concurrency limit {name!r}; create it (prefect gcl create {name} --limit N "
                f"--slot-decay-per-second N) or remove the key"
            ) from None
    if not found.active:
        _logger().warning("rate_limits.%s.prefect_limit: limit %r is inactive", system, name)


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


@flow(
    name="leads",
    flow_run_name=run_namer("leads"),
    log_prints=False,
    task_runner=ThreadPoolTaskRunner(max_workers=PARALLEL_STREAMS),  # type: ignore[arg-type]
)
def leads(params: LeadsRun = LeadsRun()) -> dict[str, Any]:  # noqa: B008
    """Pull engaged users of a social account and upsert them as CRM leads.

    Args:
        params: what to run: config file, account, dry run, lead limit, backfill start.
    """
    with startup_objects_frozen():
        return run_leads(params)


def run_leads(params: LeadsRun) -> dict[str, Any]:
    """The leads flow's body (see ``leads``)."""
    logger = _logger()
    settings = load_settings(params.config)
    apply_rate_limits(settings)
    account = settings.account(params.account)
    store = StateStore.open(settings.state_url(), dry_run=params.dry_run)
    consent.merge_config(store, settings.consent)
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
        pull_streams(ctx, first_requests(ctx, params.since))
        with store.lock(DELIVERY_LOCK) as delivering:
            if not delivering:
                status = (
                    "pulled only: another leads run of this store is delivering (or waiting "
                    "for a review); the people pulled here stay pending for it or the next run"
                )
                logger.warning(status)
            elif params.review and not params.dry_run:
                outcomes, status = review_and_deliver(
                    ctx, limit=params.limit, timeout_minutes=params.review_timeout_minutes
                )
            else:
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
                ctx.account.name,
                summary,
                ctx.delivered,
                ctx.problems,
                ctx.would_write,
                [*ctx.warnings, *ctx.mapping_warnings],
            )
            if params.sales_csv:
                count = write_sales_csv(sales_view(ctx.delivered), params.sales_csv)
                summary["sales_csv"] = {"path": params.sales_csv, "new_leads": count}
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
