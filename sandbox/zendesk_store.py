"""Zendesk Support records (users, tickets, comments) and the rules that guard them.

Kept apart from the HTTP layer so the rules a helpdesk sink trips over read on their
own: ``create_or_update`` matches by ``external_id`` then email; tickets move through
new/open/pending/hold/solved/closed and a closed ticket refuses every update; a comment
on a solved ticket does not reopen it by itself. Bodies follow the recordings
(``recordings/zendesk``); wording marked "unverified" is plausible, not recorded.
"""

from __future__ import annotations

import random
import re
import time
from typing import Any

from sandbox.zendesk_records import API_VIA, STATUSES, Comment, Ticket, User, zd_time

AGENT_EMAIL = "agent@sandbox.example"
API_TOKEN = "sandbox-zendesk-token"
PRIORITIES = ("low", "normal", "high", "urgent")
TYPES = ("question", "incident", "problem", "task")
ROLES = ("end-user", "agent", "admin")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


class ZendeskError(Exception):
    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(body.get("description") or body.get("error"))
        self.status = status
        self.body = body


def record_invalid(details: dict[str, list[dict[str, Any]]]) -> ZendeskError:
    body = {"error": "RecordInvalid", "description": "Record validation errors", "details": details}
    return ZendeskError(422, body)


def blank(field_key: str, label: str) -> ZendeskError:
    # As recorded: ticket field errors sit under "base" and name the field in field_key.
    item = {
        "description": f"{label}: cannot be blank",
        "error": "BlankValue",
        "field_key": field_key,
    }
    return record_invalid({"base": [item]})


def not_found() -> ZendeskError:
    return ZendeskError(404, {"error": "RecordNotFound", "description": "Not found"})


def normalise_tags(raw: Any) -> list[str]:
    """Zendesk tags are lower-case words: a value with spaces becomes several tags."""
    values = raw if isinstance(raw, list) else [raw]
    words = [w.lower() for v in values if v is not None for w in str(v).split()]
    return list(dict.fromkeys(words))


class ZendeskStore:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(f"socialcrm-zendesk-{seed}")
        self.base_url = ""  # set by the server once the port is known
        self.users: dict[int, User] = {}
        self.tickets: dict[int, Ticket] = {}
        # Soft-deleted tickets wait here (invisible to the API) until permanently deleted.
        self.deleted_tickets: dict[int, Ticket] = {}
        self._user_id = 421_941_800_000 + self.rng.randrange(10_000)
        self._event_id = 15_300_000_000_000 + self.rng.randrange(1_000_000)
        self._ticket_id = 0  # ticket ids are a per-account sequence starting at 1
        now = time.time()
        self.agent = self._add_user("Sandbox Agent", AGENT_EMAIL, None, "admin", now)

    # --- ids -----------------------------------------------------------------------------

    def _next_user_id(self) -> int:
        self._user_id += self.rng.randrange(1_000, 90_000)
        return self._user_id

    def next_event_id(self) -> int:
        self._event_id += self.rng.randrange(1, 400)
        return self._event_id

    # --- users ---------------------------------------------------------------------------

    def _add_user(
        self, name: str, email: str | None, external_id: str | None, role: str, now: float
    ) -> User:
        user = User(self._next_user_id(), name, email, external_id, role, now, now)
        self.users[user.id] = user
        return user

    def find_user(self, *, external_id: Any = None, email: Any = None) -> User | None:
        """An active user by external id, else by email (deleted users match nothing)."""
        active = [user for user in self.users.values() if user.active]
        for user in active:
            if external_id is not None and user.external_id == str(external_id):
                return user
        for user in active:
            if email and user.email and user.email.lower() == str(email).lower():
                return user
        return None

    def active_user(self, user_id: int) -> User:
        user = self.users.get(user_id)
        if user is None or not user.active:
            raise not_found()
        return user

    def _check_user_fields(self, data: dict[str, Any], target: User | None) -> None:
        email = data.get("email")
        if email is not None and not _EMAIL.match(str(email)):
            raise record_invalid(
                {"email": [{"description": f"Email: {email} is not properly formatted"}]}
            )
        owner = self.find_user(email=email) if email else None
        if owner is not None and owner is not target:
            # Wording unverified: real accounts refuse one email on two users.
            message = f"Email: {email} is already being used by another user"
            raise record_invalid({"email": [{"description": message, "error": "DuplicateValue"}]})
        role = data.get("role")
        if role is not None and role not in ROLES:
            raise record_invalid({"role": [{"description": f"Role: {role} is not valid"}]})

    def create_or_update_user(self, data: Any, now: float) -> tuple[User, bool]:
        """Match by ``external_id``, then by email (a match by email adopts the external id)."""
        if not isinstance(data, dict):
            raise ZendeskError(400, {"error": "InvalidParameter", "description": "user missing"})
        user = self.find_user(external_id=data.get("external_id"))
        if user is None and data.get("email"):
            user = self.find_user(email=data["email"])
        self._check_user_fields(data, user)
        if user is None:
            name = str(data.get("name") or "").strip()
            if not name:
                # Wording unverified (the recorded 422 is for a malformed email).
                message = "Name: is too short (minimum one character)"
                raise record_invalid({"name": [{"description": message, "error": "ValueTooShort"}]})
            external = data.get("external_id")
            role = str(data.get("role") or "end-user")
            user = self._add_user(name, data.get("email"), _opt_str(external), role, now)
            self._apply_user(user, data, now)
            return user, True
        self._apply_user(user, data, now)
        return user, False

    def update_user(self, user_id: int, data: Any, now: float) -> User:
        user = self.active_user(user_id)
        if not isinstance(data, dict):
            raise ZendeskError(400, {"error": "InvalidParameter", "description": "user missing"})
        self._check_user_fields(data, user)
        self._apply_user(user, data, now)
        return user

    def _apply_user(self, user: User, data: dict[str, Any], now: float) -> None:
        before = (user.name, user.email, user.external_id, user.phone, user.tags, user.locale)
        if data.get("name"):
            user.name = str(data["name"])
        if "email" in data:
            user.email = _opt_str(data["email"])
        if "external_id" in data:
            user.external_id = _opt_str(data["external_id"])
        if "phone" in data:
            user.phone = _opt_str(data["phone"])
        if "tags" in data:
            user.tags = normalise_tags(data["tags"] or [])
        if data.get("locale"):
            user.locale = str(data["locale"])
        if data.get("role") in ROLES:
            user.role = str(data["role"])
        if (user.name, user.email, user.external_id, user.phone, user.tags, user.locale) != before:
            user.updated = now

    def search_users(self, external_id: str | None, query: str | None) -> list[User]:
        users = sorted((u for u in self.users.values() if u.active), key=lambda u: u.id)
        if external_id is not None:
            return [u for u in users if u.external_id == external_id]
        if not query:
            return users
        name, _, value = query.partition(":")
        if name in ("email", "external_id") and value:
            return [u for u in users if (getattr(u, name) or "").lower() == value.lower()]
        needle = query.lower()
        return [u for u in users if needle in u.name.lower() or needle in (u.email or "").lower()]

    # --- tickets -------------------------------------------------------------------------

    def ticket(self, ticket_id: int) -> Ticket:
        ticket = self.tickets.get(ticket_id)
        if ticket is None:
            raise not_found()
        return ticket

    def _requester(self, data: dict[str, Any], now: float) -> User:
        if data.get("requester_id") is not None:
            user = self.users.get(_int_or(data["requester_id"], -1))
            if user is None or not user.active:
                # Wording unverified: an unknown requester id is refused as invalid.
                message = "Requester: is invalid"
                raise record_invalid({"requester": [{"description": message, "error": "Invalid"}]})
            return user
        spec = data.get("requester")
        if not isinstance(spec, dict):
            return self.agent  # no requester: the authenticated agent asks
        user = self.find_user(external_id=spec.get("external_id"), email=spec.get("email"))
        if user is not None:
            return user  # an existing requester keeps its name: Zendesk ignores the new one
        name = str(spec.get("name") or str(spec.get("email") or "").split("@")[0]).strip()
        if not name:
            message = "Requester: Name:  is too short (minimum one character)"
            raise record_invalid({"requester": [{"description": message}]})
        self._check_user_fields({"email": spec.get("email")}, None)
        external = _opt_str(spec.get("external_id"))
        user = self._add_user(name, _opt_str(spec.get("email")), external, "end-user", now)
        return user

    def _check_enums(self, data: dict[str, Any]) -> None:
        for key, allowed in (("priority", PRIORITIES), ("type", TYPES), ("status", STATUSES)):
            value = data.get(key)
            if value is not None and value not in allowed:
                label = key.capitalize()
                item = {"description": f"{label}: {value} is not valid", "field_key": key}
                raise record_invalid({"base": [{**item, "error": "InvalidValue"}]})

    def _comment(self, spec: Any, default_author: int, audit_id: int, now: float) -> Comment:
        if not isinstance(spec, dict):
            spec = {"body": "" if spec is None else str(spec)}
        body = str(spec.get("body") or spec.get("html_body") or "")
        author = _int_or(spec.get("author_id"), default_author)
        if author not in self.users or not self.users[author].active:
            message = "Author: is invalid"  # wording unverified
            raise record_invalid({"base": [{"description": message, "error": "InvalidValue"}]})
        public = spec.get("public", True) is not False
        return Comment(self.next_event_id(), body, public, author, audit_id, now)

    def create_ticket(self, data: Any, now: float) -> tuple[Ticket, dict[str, Any]]:
        if not isinstance(data, dict):
            raise ZendeskError(400, {"error": "InvalidParameter", "description": "ticket missing"})
        spec = data.get("comment")
        body = spec.get("body") if isinstance(spec, dict) else spec
        body = body or data.get("description")
        if not str(data.get("subject") or "").strip():
            raise blank("subject", "Subject")
        if not str(body or "").strip():
            raise blank("description", "Description")
        self._check_enums(data)
        requester = self._requester(data, now)
        submitter = self.users.get(_int_or(data.get("submitter_id"), -1), self.agent)
        audit_id = self.next_event_id()
        spec = spec if isinstance(spec, dict) else {"body": body}
        comment = self._comment({**spec, "body": body}, submitter.id, audit_id, now)
        self._ticket_id += 1
        ticket = Ticket(
            id=self._ticket_id,
            subject=str(data["subject"]),
            description=comment.body,
            status=str(data.get("status") or "new"),
            priority=data.get("priority"),
            type=data.get("type"),
            requester_id=requester.id,
            submitter_id=submitter.id,
            external_id=_opt_str(data.get("external_id")),
            tags=normalise_tags(data.get("tags") or []),
            custom_fields=_custom_fields(data.get("custom_fields")),
            created=now,
            updated=now,
            comments=[comment],
        )
        self.tickets[ticket.id] = ticket
        events = [self._comment_event(comment)]
        for name in ("subject", "requester_id", "status", "priority", "type", "tags"):
            value = getattr(ticket, name)
            events.append({"id": self.next_event_id(), "type": "Create", "value": value})
            events[-1]["field_name"] = name
        return ticket, self._audit(ticket, audit_id, submitter.id, events, now)

    def update_ticket(self, ticket_id: int, data: Any, now: float) -> tuple[Ticket, dict[str, Any]]:
        ticket = self.ticket(ticket_id)
        if not isinstance(data, dict):
            raise ZendeskError(400, {"error": "InvalidParameter", "description": "ticket missing"})
        if ticket.status == "closed":
            message = "Status: closed prevents ticket update"
            raise record_invalid({"status": [{"description": message}]})
        self._check_enums(data)
        status = data.get("status")
        if status == "new" and ticket.status != "new":
            # Wording unverified: a ticket never goes back to New.
            message = "Status: new is not valid for a ticket that was already opened"
            raise record_invalid({"status": [{"description": message}]})
        audit_id = self.next_event_id()
        events: list[dict[str, Any]] = []
        spec = data.get("comment")
        if spec is not None:
            comment = self._comment(spec, self.agent.id, audit_id, now)
            if not comment.body.strip():
                raise blank("comment", "Comment")
            ticket.comments.append(comment)
            events.append(self._comment_event(comment))
        # Deliberately no automatic reopening: an end-user comment added through the API
        # leaves a solved ticket solved; the client must send status "open" itself.
        changes: dict[str, Any] = {}
        for name in ("subject", "priority", "type", "status", "external_id"):
            if name in data:
                changes[name] = data[name]
        if data.get("requester_id") is not None:
            changes["requester_id"] = self._requester(
                {"requester_id": data["requester_id"]}, now
            ).id
        tags = list(ticket.tags)
        if "tags" in data:
            tags = normalise_tags(data["tags"] or [])
        tags += [t for t in normalise_tags(data.get("additional_tags") or []) if t not in tags]
        removed = set(normalise_tags(data.get("remove_tags") or []))
        changes["tags"] = [t for t in tags if t not in removed]
        for name, value in changes.items():
            previous = getattr(ticket, name)
            if value != previous:
                setattr(ticket, name, value)
                change = {"id": self.next_event_id(), "type": "Change", "value": value}
                events.append({**change, "field_name": name, "previous_value": previous})
        if data.get("custom_fields"):
            ticket.custom_fields.update(_custom_fields(data["custom_fields"]))
        if events or data.get("custom_fields"):
            ticket.updated = now
        return ticket, self._audit(ticket, audit_id, self.agent.id, events, now)

    def close_solved(self, now: float) -> int:
        """What Zendesk's automation does days after solving: solved becomes closed."""
        solved = [t for t in self.tickets.values() if t.status == "solved"]
        for ticket in solved:
            ticket.status, ticket.updated = "closed", now
        return len(solved)

    def _comment_event(self, comment: Comment) -> dict[str, Any]:
        payload = comment.payload()
        keys = ("id", "type", "author_id", "body", "html_body", "plain_body", "public")
        return {**{k: payload[k] for k in keys}, "attachments": [], "audit_id": comment.audit_id}

    def _audit(
        self, ticket: Ticket, audit_id: int, author: int, events: list[dict[str, Any]], now: float
    ) -> dict[str, Any]:
        return {
            "id": audit_id,
            "ticket_id": ticket.id,
            "created_at": zd_time(now),
            "author_id": author,
            "metadata": {"system": {"client": "sandbox", "ip_address": "127.0.0.1"}, "custom": {}},
            "events": events,
            "via": API_VIA,
        }

    def state(self) -> dict[str, Any]:
        users = [u.payload(self.base_url) for u in sorted(self.users.values(), key=lambda u: u.id)]
        tickets = []
        for ticket in sorted(self.tickets.values(), key=lambda t: t.id):
            payload = ticket.payload(self.base_url)
            payload["comments"] = [c.payload() for c in ticket.comments]
            tickets.append(payload)
        deleted = []
        for ticket in sorted(self.deleted_tickets.values(), key=lambda t: t.id):
            payload = ticket.payload(self.base_url)
            payload["comments"] = [c.payload() for c in ticket.comments]
            deleted.append(payload)
        return {"users": users, "tickets": tickets, "deleted_tickets": deleted}


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)


def _int_or(value: Any, default: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _custom_fields(raw: Any) -> dict[int, Any]:
    if isinstance(raw, dict):  # {"id": value} is accepted too
        return {_int_or(k, 0): v for k, v in raw.items()}
    fields: dict[int, Any] = {}
    for item in raw or []:
        if isinstance(item, dict) and "id" in item:
            fields[_int_or(item["id"], 0)] = item.get("value")
    return fields
