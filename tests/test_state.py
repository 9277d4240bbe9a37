"""The state store on SQLite and PostgreSQL: idempotent ingest, cursors, ledger, dead letters."""

from __future__ import annotations

import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from socialcrm.config import Qualification
from socialcrm.records import (
    Engagement,
    EngagementKind,
    Page,
    RecordProblem,
    SinkOutcome,
    SocialProfile,
)
from socialcrm.state import PersonRow, StateStore

NOW = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)
RULES = Qualification(threshold=3)


def person(user_id: str, handle: str | None = None) -> SocialProfile:
    return SocialProfile(platform="x", user_id=user_id, handle=handle or f"user{user_id}")


def engagement(id_: str, kind: EngagementKind, user_id: str, minutes: int = 0) -> Engagement:
    return Engagement(
        platform="x",
        id=id_,
        kind=kind,
        author=person(user_id),
        occurred_at=NOW + timedelta(minutes=minutes),
        text="hello" if kind is not EngagementKind.LIKE else None,
    )


def test_migrations_create_every_table_from_empty(state_url: str) -> None:
    with StateStore.open(state_url) as store:
        tables = set(sa.inspect(store.engine).get_table_names())
    assert {"cursors", "people", "engagements", "deliveries", "dead_letters"} <= tables
    assert "alembic_version" in tables


def test_reingesting_the_same_page_counts_nothing_twice(state_url: str) -> None:
    page = [
        engagement("1", EngagementKind.MENTION, "10"),
        engagement("p1:10", EngagementKind.LIKE, "10"),
        engagement("p1:11", EngagementKind.LIKE, "11"),
    ]
    with StateStore.open(state_url) as store:
        first = store.ingest("brand", page, RULES, cursors={"mentions": "1"})
        second = store.ingest("brand", page, RULES, cursors={"mentions": "1"})
        assert (first.new, first.already_seen) == (3, 0)
        assert (second.new, second.already_seen) == (0, 3)
        people = {p.person_key: p for p in store.people(["x:10", "x:11"])}
    assert people["x:10"].counts == {"mention": 1, "like": 1}
    assert people["x:10"].score == 4.0
    assert people["x:11"].score == 1.0


def test_duplicate_ids_inside_one_page_are_one_engagement(state_url: str) -> None:
    twice = [engagement("5", EngagementKind.MENTION, "10")] * 2
    with StateStore.open(state_url) as store:
        result = store.ingest("brand", twice, RULES)
        assert result.new == 1
        assert store.people(["x:10"])[0].engagement_count == 1


def _leads_and_tickets_at_once(
    state_url: str,
    monkeypatch: pytest.MonkeyPatch,
    before: list[Engagement],
    quote: list[Engagement],
    dm: list[Engagement],
) -> PersonRow:
    """``before`` is stored; then the leads run stores ``quote`` and, between its read of
    the person and its write, the tickets run stores ``dm``. The one person afterwards."""
    import socialcrm.state as state_module

    qualification = Qualification()
    first, second = StateStore.open(state_url), StateStore.open(state_url)
    errors: list[BaseException] = []
    try:
        first.ingest("brand", before, qualification)
        read, go = threading.Event(), threading.Event()
        scored = state_module._intent_seen

        def after_reading(*args: Any) -> Any:  # between the leads run's read and its write
            if threading.current_thread().name == "leads":
                read.set()
                go.wait(10)
            return scored(*args)

        def run(store: StateStore, records: list[Engagement]) -> None:
            try:
                store.ingest("brand", records, qualification)
            except BaseException as error:  # reported by the assertion below
                errors.append(error)

        monkeypatch.setattr(state_module, "_intent_seen", after_reading)
        leads = threading.Thread(name="leads", target=run, args=(first, quote))
        leads.start()
        assert read.wait(10)
        tickets = threading.Thread(target=run, args=(second, dm))
        tickets.start()
        tickets.join(0.5)  # it waits for the leads run's commit (or, unlocked, is done)
        go.set()
        leads.join(10)
        tickets.join(10)
        (person,) = [p for batch in first.pending_people(batch_size=10, min_score=0) for p in batch]
    finally:
        first.close()
        second.close()
    assert not errors, errors
    return person


def test_two_runs_adding_to_one_person_at_once_lose_no_count(
    state_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The leads run stores a quote while the tickets run stores a sales DM of the same
    person: both counts stay (checked on PostgreSQL: without the row lock the run that
    read first wrote its counts last, and the DM was lost from them)."""
    person = _leads_and_tickets_at_once(
        state_url,
        monkeypatch,
        before=[engagement("1", EngagementKind.MENTION, "77")],
        quote=[engagement("2", EngagementKind.QUOTE, "77")],
        dm=[engagement("3", EngagementKind.MESSAGE, "77")],
    )
    assert person.counts == {"mention": 1, "quote": 1, "message": 1}
    assert person.engagement_count == 3


def test_two_runs_adding_one_new_person_at_once_both_count(
    state_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both runs find no row for a new person; the tickets run inserts it first. The leads
    run then adds its counts to that row (on PostgreSQL its own insert used to fail on the
    unique key and the whole pull was retried, or failed on a second collision)."""
    person = _leads_and_tickets_at_once(
        state_url,
        monkeypatch,
        before=[],
        quote=[engagement("2", EngagementKind.QUOTE, "88", minutes=5)],
        dm=[engagement("3", EngagementKind.MESSAGE, "88")],
    )
    assert person.counts == {"quote": 1, "message": 1}
    assert person.engagement_count == 2
    assert person.first_engaged_at == NOW
    assert person.last_engaged_at == NOW + timedelta(minutes=5)


def test_cursor_is_written_with_its_page(state_url: str) -> None:
    with StateStore.open(state_url) as store:
        assert store.get_cursor("brand", "mentions") is None
        store.ingest("brand", [], RULES, cursors={"mentions": "100"})
        store.ingest("brand", [], RULES, cursors={"mentions": "200", "quotes:9": "7"})
        assert store.cursors("brand") == {"mentions": "200", "quotes:9": "7"}


def test_a_person_crossing_the_threshold_later_becomes_pending_with_history(
    state_url: str,
) -> None:
    with StateStore.open(state_url) as store:
        store.ingest("brand", [engagement("a:20", EngagementKind.LIKE, "20")], RULES)
        assert list(store.pending_people(batch_size=10, min_score=3)) == []
        store.clear_unqualified_pending(3)
        store.ingest("brand", [engagement("21", EngagementKind.REPLY, "20", minutes=5)], RULES)
        batches = list(store.pending_people(batch_size=10, min_score=3))
        assert [p.person_key for batch in batches for p in batch] == ["x:20"]
        history = store.engagements_of(["x:20"])["x:20"]
        assert sorted(row.kind for row in history) == ["like", "reply"]


def test_pending_people_come_in_bounded_batches(state_url: str) -> None:
    page = [engagement(str(i), EngagementKind.MENTION, str(1000 + i)) for i in range(25)]
    with StateStore.open(state_url) as store:
        store.ingest("brand", page, RULES)
        sizes = []
        for batch in store.pending_people(batch_size=10, min_score=3):
            sizes.append(len(batch))
            store.clear_pending(batch)
        assert sizes == [10, 10, 5]
        assert store.count_people() == (25, 0)


def test_a_person_changed_while_their_lead_was_written_stays_pending(state_url: str) -> None:
    """A tickets run stores a sales DM of someone whose lead a leads run is writing, or
    marks them pending for their ticket's link: the leads run's end must not clear that
    (checked: before, it cleared every person of its batch, and the DM's score and the
    ticket's link reached the CRM only when the person engaged again)."""
    page = [engagement(str(i), EngagementKind.MENTION, str(3000 + i)) for i in range(3)]
    with StateStore.open(state_url) as store:
        store.ingest("brand", page, RULES)
        (batch,) = store.pending_people(batch_size=10, min_score=3)
        store.ingest("brand", [engagement("dm-1", EngagementKind.MESSAGE, "3000", 1)], RULES)
        store.mark_pending(["x:3001"])
        assert store.clear_pending(batch) == 1
        (left,) = store.pending_people(batch_size=10, min_score=3)
        assert [p.person_key for p in left] == ["x:3000", "x:3001"]
        assert left[0].counts == {"mention": 1, "message": 1}
        assert store.clear_pending(left) == 2


def test_ledger_keeps_last_good_hash_when_a_delivery_fails(state_url: str) -> None:
    with StateStore.open(state_url) as store:
        store.record_deliveries("Lead", [SinkOutcome("x:1", "created", "00Q1", "hash-a")])
        store.record_deliveries("Lead", [SinkOutcome("x:1", "failed", None, "hash-b")])
        delivery = store.deliveries(["x:1"], "Lead")["x:1"]
    assert (delivery.destination_id, delivery.payload_hash, delivery.status) == (
        "00Q1",
        "hash-a",
        "failed",
    )


def test_ledger_rows_by_status_give_up_after_the_attempts_and_can_be_forgotten(
    state_url: str,
) -> None:
    """What ``rejoin_campaign`` reads: the failed rows of one destination, oldest first,
    without those tried ``max_attempts`` times; and what it drops."""
    ledger = "CampaignMember:701A"
    with StateStore.open(state_url) as store:
        for key in ("x:1", "x:2", "x:3"):
            store.record_deliveries(ledger, [SinkOutcome(key, "failed", "00Q" + key[-1])])
        store.record_deliveries(ledger, [SinkOutcome("x:2", "created", "00Q2")])
        store.record_deliveries("Lead", [SinkOutcome("x:4", "failed", None)])
        for _ in range(4):
            store.record_deliveries(ledger, [SinkOutcome("x:3", "failed", "00Q3")])
        rows = store.rows_with_status(ledger, "failed", limit=10)
        assert [(r.record_key, r.destination_id) for r in rows] == [
            ("x:1", "00Q1"),
            ("x:3", "00Q3"),
        ]
        failed = store.rows_with_status(ledger, "failed", limit=10, max_attempts=5)
        assert [r.record_key for r in failed] == ["x:1"]
        assert [r.record_key for r in store.rows_with_status(ledger, "failed", limit=1)] == ["x:1"]
        assert store.forget_deliveries(ledger, ["x:1", "x:4"]) == 1
        assert set(store.deliveries(["x:1", "x:2", "x:3"], ledger)) == {"x:2", "x:3"}
        assert set(store.deliveries(["x:4"], "Lead")) == {"x:4"}


def test_a_ledger_row_another_run_inserted_meanwhile_is_updated_from_its_values(
    state_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between our read and our insert another run records the same key (an adopted lead,
    tried 3 times): our failed outcome then counts a 4th attempt and keeps its status and
    last good hash (checked: before, the row got attempts 1, status failed, no hash)."""
    from socialcrm import state

    real = state.insert_ignoring_duplicates
    raced: list[bool] = []

    def another_run_first(connection: Any, table: Any) -> Any:
        if not raced:
            raced.append(True)
            monkeypatch.setattr(state, "insert_ignoring_duplicates", real)
            with StateStore.open(state_url) as other:
                for _ in range(3):
                    other.record_deliveries(
                        "Lead", [SinkOutcome("x:1", "matched lead", "00Q1", "h-old")]
                    )
        return real(connection, table)

    with StateStore.open(state_url) as store:
        monkeypatch.setattr(state, "insert_ignoring_duplicates", another_run_first)
        store.record_deliveries("Lead", [SinkOutcome("x:1", "failed", None, "h-new")])
        monkeypatch.undo()
        row = store.deliveries(["x:1"], "Lead")["x:1"]
        below_5 = store.rows_with_status("Lead", "matched lead", limit=5, max_attempts=5)
        below_4 = store.rows_with_status("Lead", "matched lead", limit=5, max_attempts=4)
    assert (row.status, row.destination_id, row.payload_hash) == ("matched lead", "00Q1", "h-old")
    assert [r.record_key for r in below_5] == ["x:1"] and below_4 == []  # the 4th attempt


def test_dead_letters_are_kept_once_per_record_stage_and_field(state_url: str) -> None:
    problem = RecordProblem("x:1", "mapping", "salesforce", "too long", field="Social_Handle__c")
    with StateStore.open(state_url) as store:
        store.add_dead_letters("leads", [problem])
        store.add_dead_letters("leads", [problem])
        letters = store.dead_letters(pipeline="leads")
        assert len(letters) == 1 and letters[0].attempts == 2
        assert letters[0].field == "Social_Handle__c"
        assert store.resolve_dead_letters(["x:1"], "leads") == 1
        assert store.dead_letters() == []


def test_a_source_letter_is_discarded_by_id_through_the_cli(
    tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """A malformed source record no replay can redo is let go by id, the others stay."""
    from socialcrm import cli

    url = f"sqlite:///{tmp_path / 'state.db'}"
    config = tmp_path / "socialcrm.yaml"
    config.write_text(
        "accounts: [{name: brand, user_id: '1000', handle: brand, bearer_token: '${X}'}]\n"
        "crm: {login_url: 'https://acme.my.salesforce.com', auth: {method: client_credentials,"
        " client_id: '${A}', client_secret: '${B}'}}\n"
        f"state: {{url: '{url}'}}\n"
    )
    with StateStore.open(url) as store:
        store.add_dead_letters(
            "leads",
            [
                RecordProblem("x:mentions:#ab", "source", "x", "id: not numeric", field="id"),
                RecordProblem("x:2", "mapping", "salesforce", "too long", field="LastName"),
            ],
        )
        source, mapping = store.dead_letters()
    assert (
        cli.main(["dead-letters", "discard", "--config", str(config), "--id", str(source.id)]) == 0
    )
    assert cli.main(["dead-letters", "discard", "--config", str(config), "--id", "999"]) == 1
    assert "1 dead letter(s) discarded" in capsys.readouterr().out
    with StateStore.open(url) as store:
        assert [letter.id for letter in store.dead_letters()] == [mapping.id]


def test_dry_run_store_leaves_no_trace(state_url: str) -> None:
    with StateStore.open(state_url, dry_run=True) as store:
        store.ingest(
            "brand",
            [engagement("1", EngagementKind.MENTION, "10")],
            RULES,
            cursors={"mentions": "1"},
        )
        assert store.get_cursor("brand", "mentions") == "1"
    with StateStore.open(state_url) as store:
        assert store.get_cursor("brand", "mentions") is None
        assert store.count_people() == (0, 0)


def test_a_stream_lock_is_held_by_one_run_at_a_time(state_url: str) -> None:
    with StateStore.open(state_url) as first, StateStore.open(state_url) as second:
        with first.lock("leads:brand") as held:
            assert held
            with second.lock("leads:brand") as also:
                assert not also
            with second.lock("tickets:brand") as other:
                assert other
        with second.lock("leads:brand") as after:
            assert after


def test_lock_names_that_differ_only_in_punctuation_are_two_locks(state_url: str) -> None:
    """An account named "delivery": its lock and the store's delivery lock are not one."""
    first, second = StateStore.open(state_url), StateStore.open(state_url)
    try:
        with first.lock("leads:delivery") as one, second.lock("leads-delivery") as other:
            assert one and other
    finally:
        first.close()
        second.close()


def test_a_killed_holder_does_not_keep_the_lock(state_url: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import subprocess
    import sys
    import time

    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys,time; from socialcrm.state import StateStore\n"
            f"s=StateStore.open({state_url!r})\n"
            "with s.lock('leads:brand') as held:\n"
            "    print(held, flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "True"
        with StateStore.open(state_url) as store, store.lock("leads:brand") as held:
            assert not held
    finally:
        holder.kill()
        holder.wait()
    time.sleep(0.2)
    with StateStore.open(state_url) as store, store.lock("leads:brand") as held:
        assert held


def test_upgrade_from_the_previous_revision_keeps_the_data(state_url: str) -> None:
    from socialcrm.state import create_engine, migrate

    engine = create_engine(state_url)
    with engine.begin() as connection:
        migrate(connection, "0001")
        tables = set(sa.inspect(connection).get_table_names())
        assert "people" in tables and "messages" not in tables
        connection.execute(
            sa.text(
                "insert into cursors (account, stream, value, updated_at) "
                "values ('brand', 'mentions', '42', :now)"
            ),
            {"now": NOW},
        )
    engine.dispose()
    with StateStore.open(state_url) as store:  # upgrades to head
        assert store.get_cursor("brand", "mentions") == "42"
        assert {"messages", "intents"} <= set(sa.inspect(store.engine).get_table_names())


# --- pages stored side by side (flows.leads.PageWriter) ------------------------------------


def _pull_context(store: StateStore) -> Any:
    from conftest import minimal_settings

    from flows.leads import LeadsContext

    settings = minimal_settings(qualification={"threshold": 3})
    return LeadsContext(settings, settings.accounts[0], store, x_client=None, dry_run=False)


def _liked(post: str, users: range) -> Page[Engagement]:
    return Page(
        [engagement(f"{post}:{u}", EngagementKind.LIKE, str(u)) for u in users],
        cursor=f"done-{post}",
    )


def fail_bad_pages(store: StateStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """The store refuses any write holding a record of a ``bad`` post (a full disk)."""
    real_ingest = store.ingest

    def ingest(account: str, records: Any, *args: Any, **kwargs: Any) -> Any:
        if any(record.id.startswith("bad:") for record in records):
            raise RuntimeError("disk full")
        return real_ingest(account, records, *args, **kwargs)

    monkeypatch.setattr(store, "ingest", ingest)


def queue_behind_a_write(ctx: Any, walk: Callable[[str], None], posts: list[str]) -> None:
    """Walk ``posts`` in threads while a write is in progress: their pages queue up behind
    it and go to the writer together."""
    with ctx.writer._writer:
        threads = [threading.Thread(target=walk, args=(post,)) for post in posts]
        for thread in threads:
            thread.start()
        while len(ctx.writer._queue) < len(posts):
            time.sleep(0.01)
    for thread in threads:
        thread.join(timeout=30)


def test_an_erased_persons_mention_read_again_is_not_queued_for_the_helpdesk(
    state_url: str,
) -> None:
    """A run stopped before the mentions cursor moved; the person was erased; the next
    run reads the same mention again. Their words must not come back as a help request;
    someone who only opted out still gets support (checked: the mention was queued, with
    the erased person's handle, name and text)."""
    from flows.leads import queue_help_requests
    from socialcrm import consent, inbox

    with StateStore.open(state_url) as store:
        ctx = _pull_context(store)
        asking = [
            replace(
                engagement(f"{n}", EngagementKind.MENTION, f"{n}"), text="@brand help, login broken"
            )
            for n in (1, 2, 3)
        ]
        consent.opt_out(store, ["x:1"], consent.ERASED)
        consent.opt_out(store, ["x:2"], consent.OPT_OUT)
        reasons = consent.suppression_reasons(store, ["x:1", "x:2", "x:3"])
        queue_help_requests(ctx, asking, reasons)
        queued = [
            m.person_key
            for batch in inbox.pending_conversations(store, batch_size=10)
            for messages in batch.values()
            for m in messages
        ]
    assert sorted(queued) == ["x:2", "x:3"]


def test_pages_queued_behind_a_write_commit_together_with_their_cursors(state_url: str) -> None:
    """Streams walked side by side: pages waiting for the writer go in one transaction."""
    from connectors.social.x import StreamRequest
    from flows.leads import store_page

    with StateStore.open(state_url) as store:
        ctx = _pull_context(store)
        commits: list[int] = []
        sa.event.listen(store.engine, "commit", lambda _conn: commits.append(1))
        pages = {f"p{i}": _liked(f"p{i}", range(10 * i, 10 * i + 12)) for i in range(1, 4)}
        results: dict[str, int] = {}

        def walk(post: str) -> None:
            results[post] = store_page(ctx, StreamRequest("likes", post_id=post), pages[post])

        queue_behind_a_write(ctx, walk, list(pages))
        assert len(commits) == 1
        # Overlapping people (p1 and p2 share users 20, 21): each page counts its own.
        assert results == {"p1": 12, "p2": 12, "p3": 12}
        assert ctx.fetched == 36 and ctx.new_engagements == 36
        assert store.cursors("brand") == {f"likes:{post}": f"done-{post}" for post in pages}
        counts = {p.person_key: p.counts for p in store.people(["x:20", "x:10", "x:41"])}
    assert counts == {"x:10": {"like": 1}, "x:20": {"like": 2}, "x:41": {"like": 1}}


def test_a_page_that_fails_in_a_group_fails_alone(
    state_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The group is written again page by page: the others land, the bad one raises."""
    from connectors.social.x import StreamRequest
    from flows.leads import store_page

    with StateStore.open(state_url) as store:
        ctx = _pull_context(store)
        fail_bad_pages(store, monkeypatch)
        pages = {post: _liked(post, range(5)) for post in ("good1", "bad", "good2")}
        outcomes: dict[str, object] = {}

        def walk(post: str) -> None:
            try:
                outcomes[post] = store_page(ctx, StreamRequest("likes", post_id=post), pages[post])
            except RuntimeError as error:
                outcomes[post] = str(error)

        queue_behind_a_write(ctx, walk, list(pages))
        assert outcomes == {"good1": 5, "bad": "disk full", "good2": 5}
        assert store.cursors("brand") == {"likes:good1": "done-good1", "likes:good2": "done-good2"}
        assert ctx.fetched == 10


def test_a_walk_stores_no_page_after_one_that_failed(
    state_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pages are stored off the walk's thread, but in order: once a page fails to store,
    the walk stops and the stream's later pages (and its cursor) are not written."""
    from connectors.social import x
    from flows.leads import PageStores, walk_stream

    with StateStore.open(state_url) as store:
        ctx = _pull_context(store)
        ctx.x_client = object()
        fail_bad_pages(store, monkeypatch)
        chain = [_liked("good", range(5)), _liked("bad", range(5)), _liked("late", range(5))]
        for page in chain[:2]:
            page.cursor = None  # only a walk's last page carries the cursor
        first = x.StreamRequest("likes", post_id="p")

        def fetch_page(_client: Any, request: x.StreamRequest) -> tuple[Any, Any]:
            at = int(request.pagination_token or 0)
            following = x.StreamRequest("likes", post_id="p", pagination_token=str(at + 1))
            return chain[at], following if at + 1 < len(chain) else None

        monkeypatch.setattr(x, "fetch_page", fetch_page)
        stores = PageStores(ctx, lanes=4)
        with pytest.raises(RuntimeError, match="disk full"):
            walk_stream(ctx, first, stores)
            stores.finish()
        stores.finish_quietly()
        stored = {p.person_key: p.counts for p in store.people(["x:0", "x:1"])}
        assert stored == {"x:0": {"like": 1}, "x:1": {"like": 1}}  # the good page only
        assert store.cursors("brand") == {}
        assert ctx.fetched == 5


@pytest.mark.parametrize("dry_run", [False, True], ids=["run", "dry-run"])
def test_the_failure_of_a_streams_last_page_is_raised(
    state_url: str, monkeypatch: pytest.MonkeyPatch, dry_run: bool
) -> None:
    """A stream's last page is stored while the lane moves on; if it fails, the pull still
    says so, also in a dry run (which stores on the walk's own thread)."""
    from connectors.social import x
    from flows.leads import PageStores, walk_stream

    with StateStore.open(state_url, dry_run=dry_run) as store:
        ctx = _pull_context(store)
        ctx.dry_run = dry_run
        ctx.x_client = object()
        fail_bad_pages(store, monkeypatch)
        chain = [_liked("good", range(5)), _liked("bad", range(5))]
        chain[0].cursor = None

        def fetch_page(_client: Any, request: x.StreamRequest) -> tuple[Any, Any]:
            at = int(request.pagination_token or 0)
            following = x.StreamRequest("likes", post_id="p", pagination_token=str(at + 1))
            return chain[at], following if at + 1 < len(chain) else None

        monkeypatch.setattr(x, "fetch_page", fetch_page)
        stores = PageStores(ctx, lanes=1 if dry_run else 4)
        assert walk_stream(ctx, x.StreamRequest("likes", post_id="p"), stores) == 10
        with pytest.raises(RuntimeError, match="disk full"):
            stores.finish()


def test_an_erased_name_in_other_scripts_is_scrubbed_from_everyone_elses_text(
    state_url: str,
) -> None:
    """Cyrillic and accented names, written as is or in capitals, in another person's
    mention and in a dead letter's reason (checked: on SQLite, whose own lower() folds
    ASCII only, both stayed as they were)."""
    from socialcrm import erasure
    from socialcrm.records import RecordProblem

    dima = SocialProfile(
        platform="x", user_id="5551", handle="dima_p", display_name="Дмитрий Петров"
    )
    emile = SocialProfile(platform="x", user_id="5553", handle="emile_z", display_name="Émile Zola")
    bob = SocialProfile(platform="x", user_id="5552", handle="bob_k", display_name="Bob Kent")
    now = datetime(2026, 11, 20, tzinfo=UTC)
    with StateStore.open(state_url) as store:
        store.ingest(
            "brand",
            [
                Engagement("x", "1", EngagementKind.MENTION, dima, now, text="hi"),
                Engagement("x", "3", EngagementKind.MENTION, emile, now, text="hi"),
                Engagement(
                    "x",
                    "2",
                    EngagementKind.MENTION,
                    bob,
                    now,
                    text="cc ДМИТРИЙ ПЕТРОВ and Émile Zola",
                ),
            ],
            Qualification(),
        )
        store.add_dead_letters(
            "tickets",
            [RecordProblem("x:dm:99", "delivery", "zendesk", "requester Дмитрий Петров refused")],
        )
        for key in ("x:5551", "x:5553"):
            person = erasure.parse_person(key)
            _, needles = erasure.find_footprint(store, person)
            erasure.erase_from_store(
                store, person, needles, crm_policy="delete", helpdesk_policy="redact", outcome={}
            )
        (mention,) = store.engagements_of(["x:5552"])["x:5552"]
        assert mention.text == "cc [erased] and [erased]"
        assert [letter.reason for letter in store.dead_letters()] == ["requester [erased] refused"]


def test_erasure_finds_names_where_the_database_lowers_ascii_letters_only() -> None:
    """PostgreSQL in the C locale lowers "ÉMILE ZOLA" to "Émile zola": a search term."""
    from socialcrm import erasure

    person = erasure.parse_person("x:5553")
    needles = erasure.Needles(person, handles={"emile_z"}, names={"Émile Zola"})
    assert "Émile zola" in needles.like_terms()


def test_a_token_the_store_refuses_is_not_quoted_in_the_error(state_url: str) -> None:
    """A renewed token that cannot be stored fails the run with an error that is logged:
    it must not carry the tokens (checked: before, SQLAlchemy appended ``[parameters:
    (..., 'ROTATED-REFRESH', ...)]`` and PostgreSQL "Failing row contains (...)")."""
    from socialcrm.state import StoredToken, TokenNotSaved

    refused_row = StoredToken("NEW-ACCESS-TOKEN", None, "ROTATED-REFRESH")
    object.__setattr__(refused_row, "access_token", None)  # NOT NULL: any refusal would do
    with StateStore.open(state_url) as store, pytest.raises(TokenNotSaved) as refused:
        store.save_token("brand", refused_row)
    shown = "".join(traceback.format_exception(refused.value))
    assert "ROTATED-REFRESH" not in shown
    assert "could not be stored (" in shown


@pytest.mark.postgres
def test_two_runs_recording_the_same_key_at_once_both_succeed(postgres_url: str) -> None:
    """Tickets runs of two accounts create the same person's requester (a shared ledger
    key): the second writer's insert waits for the first, then must not fail the run
    (checked: before, it raised UniqueViolation)."""
    first, second = StateStore.open(postgres_url), StateStore.open(postgres_url)
    failures: list[BaseException] = []

    def record_too() -> None:
        try:
            second.record_deliveries("zendesk:user", [SinkOutcome("x:5551", "created", "9002")])
        except BaseException as error:  # reported below
            failures.append(error)

    waiting = sa.text("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'")
    other = threading.Thread(target=record_too)
    try:
        with first.transaction() as connection:
            first.record_deliveries("zendesk:user", [SinkOutcome("x:5551", "created", "9001")])
            other.start()
            deadline = time.monotonic() + 30
            while not connection.execute(waiting).scalar() and other.is_alive():
                assert time.monotonic() < deadline, "the second writer never waited"
                time.sleep(0.05)
        other.join(timeout=30)
        assert failures == []
        stored = first.deliveries(["x:5551"], "zendesk:user")["x:5551"]
        assert stored.destination_id == "9002"  # the later outcome
    finally:
        first.close()
        second.close()


@pytest.mark.postgres
def test_many_locks_are_held_on_one_connection(postgres_url: str) -> None:
    """An erasure over seven accounts holds fifteen locks (checked: before, one pooled
    connection each, and the next query waited 30 s for a connection and failed)."""
    names = [f"{p}:account{i}" for i in range(7) for p in ("leads", "tickets")] + ["delivery"]
    with StateStore.open(postgres_url) as store, StateStore.open(postgres_url) as other:
        with store.locks(names) as busy:
            assert busy is None
            assert store.engine.pool.checkedout() == 1
            assert store.cursors("account0") == {}  # the pool still serves queries
            with other.locks(["leads:account3"]) as taken:
                assert taken == "leads:account3"
            with other.lock("tickets:account6") as held:
                assert not held
        with other.locks(names) as busy:
            assert busy is None


def test_a_dry_run_on_sqlite_leaves_the_file_to_real_runs(tmp_path: Any) -> None:
    """A dry run's writes (rolled back at its end) must not hold SQLite's write lock for
    the run: a real run beside it, and the dry run's own renewed token, are stored at
    once (checked: before, both waited the 30-s busy timeout and failed)."""
    from socialcrm.state import StoredToken

    url = f"sqlite:///{tmp_path / 'state.db'}"
    page = [engagement(str(i), EngagementKind.MENTION, str(4000 + i)) for i in range(3)]
    with StateStore.open(url) as real:
        real.ingest("brand", page[:1], RULES)
        with StateStore.open(url, dry_run=True) as dry:
            dry.ingest("brand", page[1:], RULES)
            assert dry.count_people() == (3, 3)  # the dry run sees its own writes
            real.record_deliveries("Lead", [SinkOutcome("x:4000", "created", "00Q1")])
            dry.save_token("brand", StoredToken("A", None, "ROTATED"))
            assert [p.name for p in tmp_path.glob("state.db.dry-run-*.db")]  # its copy
        assert real.count_people() == (1, 1)  # nothing of the dry run stays
        assert not list(tmp_path.glob("*dry-run*"))
        token = real.stored_token("brand")
        assert token is not None and token.refresh_token == "ROTATED"
        assert real.deliveries(["x:4000"], "Lead")["x:4000"].destination_id == "00Q1"


def test_an_adopted_lead_stays_adopted_when_an_update_of_it_fails(state_url: str) -> None:
    """The ledger's "matched lead" is all that says a lead is someone else's (only our
    fields go to it): a failed update must not turn it into ours (checked: before, the
    next run found it by our external id and overwrote Company and LeadSource)."""
    with StateStore.open(state_url) as store:
        store.record_deliveries("Lead", [SinkOutcome("x:9", "matched lead", "00QA", "h1")])
        store.record_deliveries("Lead", [SinkOutcome("x:9", "failed", None, "h2")])
        row = store.deliveries(["x:9"], "Lead")["x:9"]
        assert (row.status, row.destination_id, row.payload_hash) == ("matched lead", "00QA", "h1")
        store.record_deliveries("Lead", [SinkOutcome("x:8", "created", "00QB", "h3")])
        store.record_deliveries("Lead", [SinkOutcome("x:8", "failed", None, "h4")])
        assert store.deliveries(["x:8"], "Lead")["x:8"].status == "failed"
