"""Zendesk's privacy tools, simulated: redact comment text, delete users and tickets for good.

The rules an erasure must get through, as the Zendesk docs state them:

- ``PUT /api/v2/comment_redactions/{comment_id}`` takes ``{"ticket_id", "html_body"}``:
  the comment's own ``html_body`` with ``<redact>`` around what must go (and a ``redact``
  attribute on tags to drop); each redacted character becomes ``▇``; it works on closed
  tickets too, and answers ``{"comment": {...}}``.
- ``DELETE /api/v2/users/{id}`` only deactivates (a soft delete, 200 with the user,
  ``active: false``), and is refused while the user is the requester of a ticket that
  is not closed; ``DELETE /api/v2/deleted_users/{id}`` then deletes for good (the user
  keeps its id, named "Permanently Deleted User", without email or external id).
- ``DELETE /api/v2/tickets/{id}`` (204) moves a ticket to the deleted tickets;
  ``DELETE /api/v2/deleted_tickets/{id}`` queues a job that deletes it for good.
- ``GET /api/v2/users/{id}/tickets/requested`` lists a user's tickets.

Status codes and shapes follow the docs; error wordings marked "unverified" are plausible,
not recorded. Ticket audits are not kept by this sandbox (Zendesk keeps them, including
earlier subjects: the README's erasure section says what that means).
"""

from __future__ import annotations

import html
import json
import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sandbox.wire import Request, Response
from sandbox.zendesk_records import REDACTED, Comment, Ticket, User
from sandbox.zendesk_store import ZendeskError, ZendeskStore, not_found, record_invalid

if TYPE_CHECKING:
    from sandbox.zendesk_api import ZendeskSimulator

_REDACT_TAG = re.compile(r"<redact>(.*?)</redact>", re.DOTALL)
_REDACT_ATTRIBUTE = re.compile(r"(<[A-Za-z][^<>]*?)\s+redact(?=[\s/>])")


def unmarked(html_body: str) -> str:
    """``html_body`` without the redaction markup: must equal the comment's own."""
    return _REDACT_ATTRIBUTE.sub(r"\1", html_body.replace("<redact>", "").replace("</redact>", ""))


def html_to_text(html_body: str) -> str:
    """The plain body a comment's ``html_body`` (as ``Comment.payload`` writes it) holds."""
    text = re.sub(r"<br\s*/?>", "\n", html_body)
    return html.unescape(re.sub(r"<[^>]+>", "", text))


def redact_comment(store: ZendeskStore, comment_id: int, data: Any, now: float) -> Comment:
    if not isinstance(data, dict) or data.get("ticket_id") is None:
        # Wording unverified.
        raise ZendeskError(
            400, {"error": "ParameterMissing", "description": "Parameter ticket_id is required"}
        )
    try:
        ticket = store.ticket(int(data["ticket_id"]))
    except (TypeError, ValueError):
        raise not_found() from None
    comment = next((c for c in ticket.comments if c.id == comment_id), None)
    if comment is None:
        raise not_found()
    marked = data.get("html_body")
    if not isinstance(marked, str) or unmarked(marked) != comment.payload()["html_body"]:
        # Wording unverified: the redaction must be the comment itself, with markup added.
        message = "html_body must be the comment's html_body with <redact> tags added"
        raise record_invalid({"html_body": [{"description": message, "error": "InvalidValue"}]})
    redacted = _REDACT_TAG.sub(lambda m: REDACTED * len(html.unescape(m[1])), marked)
    comment.body = html_to_text(_REDACT_ATTRIBUTE.sub(r"\1", redacted))
    if ticket.comments and ticket.comments[0] is comment:
        ticket.description = comment.body  # the description is the first comment
    ticket.updated = now
    return comment


def delete_user(store: ZendeskStore, user_id: int, now: float) -> User:
    user = store.active_user(user_id)
    if user is store.agent:
        # Wording unverified: the account owner cannot be deleted.
        raise ZendeskError(403, {"error": "Forbidden", "description": "Cannot delete this user"})
    unclosed = [
        t for t in store.tickets.values() if t.requester_id == user_id and t.status != "closed"
    ]
    if unclosed:
        # Wording unverified; the rule is documented ("Deleting users").
        message = "User is the requester on tickets that are not closed"
        raise record_invalid({"base": [{"description": message, "error": "InvalidValue"}]})
    user.active, user.deleted, user.updated = False, now, now
    return user


def deleted_user(store: ZendeskStore, user_id: int) -> User:
    """A soft-deleted user, not yet deleted for good (else 404)."""
    user = store.users.get(user_id)
    if user is None or user.active or user.permanently_deleted:
        raise not_found()
    return user


def requested_tickets(store: ZendeskStore, user_id: int) -> list[Ticket]:
    user = store.users.get(user_id)
    if user is None or user.permanently_deleted:
        raise not_found()
    return sorted(
        (t for t in store.tickets.values() if t.requester_id == user_id), key=lambda t: t.id
    )


def delete_ticket(store: ZendeskStore, ticket_id: int) -> None:
    ticket = store.tickets.pop(ticket_id, None)
    if ticket is None:
        raise not_found()
    store.deleted_tickets[ticket_id] = ticket


class PrivacyEndpoints:
    """The routes above, added to the simulator's table."""

    def __init__(self, sim: ZendeskSimulator) -> None:
        self.sim = sim
        self.store = sim.store

    def routes(self) -> list[tuple[str, str, Callable[..., Response]]]:
        return [
            ("DELETE", "users/:id", self.delete_user),
            ("GET", "users/:id/tickets/requested", self.requested),
            ("GET", "deleted_users", self.list_deleted_users),
            ("GET", "deleted_users/:id", self.show_deleted_user),
            ("DELETE", "deleted_users/:id", self.delete_user_for_good),
            ("PUT", "comment_redactions/:id", self.redact),
            ("DELETE", "tickets/:id", self.delete_ticket),
            ("DELETE", "deleted_tickets/:id", self.delete_ticket_for_good),
        ]

    def _user(self, user: User) -> dict[str, Any]:
        return user.payload(self.sim.base_url)

    def delete_user(self, req: Request, raw: str) -> Response:
        user = delete_user(self.store, self.sim._id(raw), time.time())
        return self.sim._ok({"user": self._user(user)})

    def requested(self, req: Request, raw: str) -> Response:
        tickets = requested_tickets(self.store, self.sim._id(raw))
        return self.sim._listing("tickets", [t.payload(self.sim.base_url) for t in tickets], req)

    def list_deleted_users(self, req: Request) -> Response:
        users = sorted((u for u in self.store.users.values() if not u.active), key=lambda u: u.id)
        return self.sim._listing("deleted_users", [self._user(u) for u in users], req)

    def show_deleted_user(self, req: Request, raw: str) -> Response:
        user = deleted_user(self.store, self.sim._id(raw))
        return self.sim._ok({"deleted_user": self._user(user)})

    def delete_user_for_good(self, req: Request, raw: str) -> Response:
        user = deleted_user(self.store, self.sim._id(raw))
        user.scrub(time.time())
        return self.sim._ok({"deleted_user": self._user(user)})

    def redact(self, req: Request, raw: str) -> Response:
        try:
            data = json.loads(req.body.decode("utf-8") or "{}")
        except (ValueError, UnicodeDecodeError) as exc:
            raise ZendeskError(400, {"error": "InvalidJSON", "description": str(exc)}) from None
        comment = redact_comment(self.store, self.sim._id(raw), data, time.time())
        return self.sim._ok({"comment": comment.payload()})

    def delete_ticket(self, req: Request, raw: str) -> Response:
        delete_ticket(self.store, self.sim._id(raw))
        return Response(204, b"", {})

    def delete_ticket_for_good(self, req: Request, raw: str) -> Response:
        ticket_id = self.sim._id(raw)
        if ticket_id not in self.store.deleted_tickets:
            raise not_found()
        return self.sim.jobs.submit("delete_tickets", [ticket_id], time.time())
