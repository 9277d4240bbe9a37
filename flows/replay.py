"""The replay flow: give dead-lettered records another chance once the cause is fixed.

Leads go back through the leads flow's delivery (the person is marked pending); DMs go
back to pending and through the tickets flow's delivery. A record that now succeeds
leaves the dead-letter store; one that fails again stays, its attempts counted.
Source records that never parsed cannot be replayed and stay for inspection.
"""

from __future__ import annotations

from contextlib import ExitStack
from datetime import UTC, datetime
from typing import Any

from prefect import flow
from pydantic import Field, field_validator

from connectors.http import Action, ApiError
from flows.leads import (
    DELIVERED,
    DELIVERY_LOCK,
    LeadsContext,
    _logger,
    apply_rate_limits,
    deliver_pending_leads,
    stop_status,
)
from flows.params import RunTarget, as_is
from flows.tickets import COMMENT, TicketsContext, deliver_conversations
from socialcrm import consent, inbox
from socialcrm.config import load_settings
from socialcrm.routing import load_rules
from socialcrm.state import StateStore

REPLAYABLE_STAGES = {"mapping", "delivery"}


class ReplayRun(RunTarget):
    """Which dead letters to replay."""

    ids: list[int] | None = Field(
        None, title="Dead-letter ids", description="Replay only these; empty means all"
    )

    @field_validator("ids")
    @classmethod
    def _empty_means_all(cls, ids: list[int] | None) -> list[int] | None:
        return ids or None  # a list cleared in the UI form arrives as []


@flow(
    name="replay",
    flow_run_name=lambda: f"replay {datetime.now(UTC):%Y-%m-%d %H:%M}Z",
    log_prints=False,
)
def replay(params: ReplayRun = ReplayRun()) -> dict[str, Any]:  # noqa: B008
    """Replay dead-lettered leads and messages after their cause was fixed.

    Args:
        params: config file, account, and which dead letters (all by default).
    """
    logger = _logger()
    settings = load_settings(params.config)
    apply_rate_limits(settings)
    account = settings.account(params.account)
    store = StateStore.open(settings.state_url())
    letters = store.dead_letters(ids=params.ids)
    replayable = [d for d in letters if d.stage in REPLAYABLE_STAGES]
    people = sorted({d.record_key for d in replayable if d.pipeline == "leads"})
    messages = sorted({d.record_key for d in replayable if d.pipeline == "tickets"})
    summary: dict[str, Any] = {
        "flow": "replay",
        "selected": len(letters),
        "not_replayable": len(letters) - len(replayable),
        "leads": 0,
        "messages": 0,
        "status": "completed",
    }
    # The same locks as the leads and tickets runs: a replay must not comment on a ticket
    # while a tickets run of the account does.
    guard = ExitStack()
    # It replays every account's lead letters: no leads run may deliver meanwhile.
    busy = guard.enter_context(
        store.locks([f"leads:{account.name}", f"tickets:{account.name}", DELIVERY_LOCK])
    )
    if busy:
        guard.close()
        store.close()
        summary["status"] = (
            "skipped: a leads run is delivering"
            if busy == DELIVERY_LOCK
            else f"skipped: a {busy.split(':')[0]} run for account {account.name} is in progress"
        )
        logger.warning(summary["status"])
        return summary
    try:
        # The config's opt-out list as the leads run reads it: someone added since the
        # last run is not written by a replay either.
        consent.merge_config(store, settings.consent)
        if people:
            store.mark_pending(people)
            ctx = LeadsContext(
                settings=settings, account=account, store=store, x_client=None, dry_run=False
            )
            outcomes = deliver_pending_leads(ctx, only=people)
            # Delivered only: a person skipped now (consent, a score decayed below the
            # threshold) is not counted as replayed (their letter stays).
            summary["leads"] = sum(1 for o in outcomes if o.status in DELIVERED)
        # This account's messages only: another account's are its own runs' to deliver
        # (under its lock), and would be counted here without being sent.
        messages = inbox.messages_of(store, messages, account.name)
        # A message whose comment is on record was posted (its letter outlived it): it is
        # not sent again, and its letter goes.
        posted = store.deliveries(messages, COMMENT)
        done = [key for key in messages if key in posted and posted[key].status in DELIVERED]
        if done:
            store.resolve_dead_letters(done, "tickets")
            finished = set(done)
            messages = [key for key in messages if key not in finished]
            summary["messages"] = len(done)
        if messages:
            inbox.set_message_status(store, messages, "pending")
            tickets_ctx = TicketsContext(
                settings=settings,
                account=account,
                store=store,
                dm_client=None,
                rules=load_rules(settings.mapping_path(settings.routing.rules)),
                dry_run=False,
            )
            batches = inbox.pending_conversations(store, batch_size=50, account=account.name)
            for number, batch in enumerate(batches, 1):
                deliver_conversations(as_is(tickets_ctx), as_is(batch), number)
            summary["messages"] = (
                len(done)
                + len(messages)
                - sum(1 for d in store.dead_letters(pipeline="tickets") if d.record_key in messages)
            )
    except ApiError as error:
        summary["status"] = stop_status(error)
        if error.action is not Action.QUOTA:
            raise
    finally:
        summary["remaining"] = len(store.dead_letters())
        guard.close()
        store.close()
    logger.info("replay: %s", summary)
    return summary
