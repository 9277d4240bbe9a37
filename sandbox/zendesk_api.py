"""Zendesk Support API simulator: users, tickets, comments, bulk jobs, over ``/api/v2``.

The wire details a helpdesk sink must survive: HTTP Basic ``{email}/token:{token}``;
``X-Rate-Limit`` headers on every answer and 429 + ``Retry-After`` with a plain-text body
(never parse it); ``Idempotency-Key`` replays on ticket create (``x-idempotency-lookup``);
``external_id`` is a filter, not a unique key; offset and cursor pagination; bulk creates
that answer with a job to poll; the privacy tools of ``sandbox.zendesk_privacy`` (comment
redaction, user and ticket deletion, soft then permanent). The ``.json`` suffix is
optional on every route, and is dropped from call keys (``PUT /api/v2/tickets/:id``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import re
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

from sandbox.wire import Options, Request, Response, json_response
from sandbox.zendesk_jobs import JobQueue
from sandbox.zendesk_privacy import PrivacyEndpoints
from sandbox.zendesk_records import Ticket
from sandbox.zendesk_store import AGENT_EMAIL, API_TOKEN, ZendeskError, ZendeskStore

JSON = "application/json; charset=UTF-8"
TEXT = "text/plain; charset=utf-8"
IDEMPOTENCY_TTL = 2 * 3600.0
MAX_PAGE = 100
Handler = Callable[..., Response]


def error_response(status: int, body: dict[str, Any]) -> Response:
    return json_response(status, body, content_type=JSON)


class ZendeskSimulator:
    def __init__(self, options: Options, seed: int) -> None:
        self.options = options
        self.store = ZendeskStore(seed)
        self.jobs = JobQueue(self.store)
        self.requests = 0  # authenticated API requests, for zendesk_429_every
        self.window: tuple[float, int] = (0.0, 0)
        self.epoch = options.rate_epoch
        # key -> (fingerprint, stored time, response)
        self.idempotency: dict[str, tuple[str, float, Response]] = {}
        self.table: list[tuple[str, str, Handler]] = [
            ("GET", "users/me", self.me),
            ("POST", "users/create_or_update", self.create_or_update_user),
            ("POST", "users/create_or_update_many", self.create_or_update_many),
            ("GET", "users/search", self.search_users),
            ("GET", "users/:id", self.get_user),
            ("PUT", "users/:id", self.update_user),
            ("POST", "tickets", self.create_ticket),
            ("GET", "tickets", self.list_tickets),
            ("POST", "tickets/create_many", self.create_many),
            ("GET", "tickets/:id", self.get_ticket),
            ("PUT", "tickets/:id", self.update_ticket),
            ("GET", "tickets/:id/comments", self.list_comments),
            ("GET", "job_statuses/:id", self.job_status),
        ]
        self.table += PrivacyEndpoints(self).routes()

    @property
    def base_url(self) -> str:
        return self.store.base_url

    @base_url.setter
    def base_url(self, value: str) -> None:
        self.store.base_url = value

    # --- routing, auth, limits -----------------------------------------------------------

    def route(self, req: Request) -> tuple[str, Callable[[], Response]] | None:
        match = re.match(r"^/api/v2/(.+?)(?:\.json)?/?$", req.path)
        if not match:
            return None
        parts = match[1].split("/")
        for verb, template, handler in self.table:
            pieces = template.split("/")
            if verb != req.method or len(pieces) != len(parts):
                continue
            if all(t.startswith(":") or t == p for t, p in zip(pieces, parts, strict=True)):
                args = [p for t, p in zip(pieces, parts, strict=True) if t.startswith(":")]
                key = f"{verb} /api/v2/{template}"
                return key, lambda h=handler, a=args: self._call(req, h, a)
        return None

    def _authenticated(self, req: Request) -> bool:
        auth = req.header("authorization") or ""
        if not auth.startswith("Basic "):
            return False
        try:
            user, _, secret = base64.b64decode(auth[6:], validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        return user.lower() == f"{AGENT_EMAIL}/token" and secret == API_TOKEN

    def _call(self, req: Request, handler: Handler, args: list[str]) -> Response:
        now = time.time()
        self.jobs.advance(now)
        headers = self._rate_headers(now, spend=False)
        if not self._authenticated(req):
            response = error_response(401, {"error": "Couldn't authenticate you"})
            response.headers.update(headers)
            response.headers["WWW-Authenticate"] = 'Basic realm="Web Password"'
            return response
        self.requests += 1
        every = self.options.zendesk_429_every
        if every > 0 and self.requests % every == 0:
            # An endpoint-level limit, as recorded: plain text, not JSON.
            text = "Rate limit for ticket updates exceeded, please wait before updating again."
            if "/users" in req.path:
                text = "You have exceeded the rate limit for updating a single unique user."
            return Response(
                429, text.encode(), {"Content-Type": TEXT, "Retry-After": "1", **headers}
            )
        start, used = self._window(now)
        if used >= self.options.zendesk_rate_limit:
            retry = max(1, math.ceil(start + self.options.zendesk_window_seconds - now))
            # Body wording unverified; the account-wide limit is not JSON either.
            body = b"Number of allowed API requests per minute exceeded"
            return Response(429, body, {"Content-Type": TEXT, "Retry-After": str(retry), **headers})
        headers = self._rate_headers(now, spend=True)
        try:
            response = handler(req, *args)
        except ZendeskError as exc:
            response = error_response(exc.status, exc.body)
        response.headers.update(headers)
        return response

    def _window(self, now: float) -> tuple[float, int]:
        if self.epoch != self.options.rate_epoch:
            self.window, self.epoch = (now, 0), self.options.rate_epoch
        start, used = self.window
        if now >= start + self.options.zendesk_window_seconds:
            start, used = now, 0
        self.window = (start, used)
        return start, used

    def _rate_headers(self, now: float, *, spend: bool) -> dict[str, str]:
        start, used = self._window(now)
        if spend:
            used += 1
            self.window = (start, used)
        limit = self.options.zendesk_rate_limit
        return {"X-Rate-Limit": str(limit), "X-Rate-Limit-Remaining": str(max(limit - used, 0))}

    # --- helpers -------------------------------------------------------------------------

    def _body(self, req: Request, key: str) -> Any:
        try:
            data = json.loads(req.body.decode("utf-8") or "{}")
        except (ValueError, UnicodeDecodeError) as exc:
            # Wording unverified; Zendesk refuses malformed JSON with a 400.
            raise ZendeskError(400, {"error": "InvalidJSON", "description": str(exc)}) from None
        if not isinstance(data, dict) or key not in data:
            raise ZendeskError(
                400, {"error": "ParameterMissing", "description": f"Parameter {key} is required"}
            )
        return data[key]

    def _id(self, raw: str) -> int:
        if not raw.isdigit():
            raise ZendeskError(404, {"error": "RecordNotFound", "description": "Not found"})
        return int(raw)

    def _ok(
        self, payload: Any, status: int = 200, headers: dict[str, str] | None = None
    ) -> Response:
        return json_response(status, payload, content_type=JSON, headers=headers)

    def _listing(self, name: str, items: list[dict[str, Any]], req: Request) -> Response:
        """Offset pagination as Zendesk lists answer: ``per_page`` (at most 100) items of
        ``page``, and absolute ``next_page``/``previous_page`` URLs (null at either end)."""
        page = _positive(req.param("page"), 1)
        per_page = min(_positive(req.param("per_page"), MAX_PAGE), MAX_PAGE)  # clamped
        shown = items[(page - 1) * per_page : page * per_page]

        def link(number: int) -> str:
            query = {k: v[-1] for k, v in req.query.items()}
            query.update(page=str(number), per_page=str(per_page))
            return f"{self.base_url}{req.path}?{urlencode(query)}"

        more = page * per_page < len(items)
        return self._ok(
            {
                name: shown,
                "next_page": link(page + 1) if more else None,
                "previous_page": link(page - 1) if page > 1 else None,
                "count": len(items),
            }
        )

    def _ticket_body(self, ticket: Ticket, audit: dict[str, Any]) -> dict[str, Any]:
        return {"ticket": ticket.payload(self.base_url), "audit": audit}

    # --- users ---------------------------------------------------------------------------

    def me(self, req: Request) -> Response:
        return self._ok({"user": self.store.agent.payload(self.base_url)})

    def create_or_update_user(self, req: Request) -> Response:
        user, created = self.store.create_or_update_user(self._body(req, "user"), time.time())
        payload = {"user": user.payload(self.base_url)}
        if created:
            return self._ok(payload, 201, {"Location": payload["user"]["url"]})
        return self._ok(payload)

    def create_or_update_many(self, req: Request) -> Response:
        return self.jobs.submit("users", self._body(req, "users"), time.time())

    def search_users(self, req: Request) -> Response:
        users = self.store.search_users(req.param("external_id"), req.param("query"))
        return self._listing("users", [u.payload(self.base_url) for u in users], req)

    def get_user(self, req: Request, raw: str) -> Response:
        user = self.store.users.get(self._id(raw))
        if user is None or user.permanently_deleted:  # a soft-deleted one shows active: false
            raise ZendeskError(404, {"error": "RecordNotFound", "description": "Not found"})
        return self._ok({"user": user.payload(self.base_url)})

    def update_user(self, req: Request, raw: str) -> Response:
        user = self.store.update_user(self._id(raw), self._body(req, "user"), time.time())
        return self._ok({"user": user.payload(self.base_url)})

    # --- tickets -------------------------------------------------------------------------

    def create_ticket(self, req: Request) -> Response:
        key = req.header("idempotency-key")
        data = self._body(req, "ticket")
        fingerprint = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()
        now = time.time()
        self.idempotency = {
            k: v for k, v in self.idempotency.items() if now - v[1] < IDEMPOTENCY_TTL
        }
        if key and key in self.idempotency:
            known, _, first = self.idempotency[key]
            if known != fingerprint:
                # Status and wording unverified (api-reference 6.10): the docs only say a
                # reused key with another payload is rejected.
                description = (
                    "Idempotency-Key has already been used with a different request payload"
                )
                raise ZendeskError(
                    400, {"error": "IdempotentRequestError", "description": description}
                )
            replay = Response(first.status, first.body, dict(first.headers))
            replay.headers["x-idempotency-lookup"] = "hit"
            return replay
        ticket, audit = self.store.create_ticket(data, now)
        url = f"{self.base_url}/api/v2/tickets/{ticket.id}.json"
        response = self._ok(self._ticket_body(ticket, audit), 201, {"Location": url})
        if key:
            response.headers["x-idempotency-lookup"] = "miss"
            # Only successes are remembered, so a request refused with 422 can be fixed and
            # retried under the same key.
            self.idempotency[key] = (fingerprint, now, response)
        return response

    def get_ticket(self, req: Request, raw: str) -> Response:
        ticket = self.store.ticket(self._id(raw))
        return self._ok({"ticket": ticket.payload(self.base_url)})

    def update_ticket(self, req: Request, raw: str) -> Response:
        data = self._body(req, "ticket")
        ticket, audit = self.store.update_ticket(self._id(raw), data, time.time())
        return self._ok(self._ticket_body(ticket, audit))

    def list_comments(self, req: Request, raw: str) -> Response:
        ticket = self.store.ticket(self._id(raw))
        comments = [c.payload() for c in ticket.comments]
        if req.param("sort_order") == "desc":
            comments.reverse()
        return self._listing("comments", comments, req)

    def create_many(self, req: Request) -> Response:
        return self.jobs.submit("tickets", self._body(req, "tickets"), time.time())

    def job_status(self, req: Request, job_id: str) -> Response:
        return self.jobs.poll(job_id, time.time())

    def list_tickets(self, req: Request) -> Response:
        tickets = sorted(self.store.tickets.values(), key=lambda t: t.id)
        external_id = req.param("external_id")
        if external_id is not None:  # a filter: several tickets may share one external id
            matches = [t.payload(self.base_url) for t in tickets if t.external_id == external_id]
            return self._listing("tickets", matches, req)
        cursor_params = ("page[size]", "page[after]", "page[before]")
        if any(req.param(p) is not None for p in cursor_params):
            return self._cursor_page(req, tickets)
        return self._offset_page(req, tickets)

    def _offset_page(self, req: Request, tickets: list[Ticket]) -> Response:
        page = _positive(req.param("page"), 1)
        per_page = min(_positive(req.param("per_page"), MAX_PAGE), MAX_PAGE)  # clamped
        if page * per_page > 10_000 + per_page:
            # Wording unverified: offset paging stops after the first 10,000 records.
            description = "Offset pagination is limited to the first 10000 records"
            raise ZendeskError(
                400, {"error": "InvalidPaginationParameter", "description": description}
            )
        chunk = tickets[(page - 1) * per_page : page * per_page]
        link = f"{self.base_url}/api/v2/tickets.json?"
        more = page * per_page < len(tickets)
        body = {
            "tickets": [t.payload(self.base_url) for t in chunk],
            "next_page": link + urlencode({"page": page + 1, "per_page": per_page})
            if more
            else None,
            "previous_page": (
                link + urlencode({"page": page - 1, "per_page": per_page}) if page > 1 else None
            ),
            "count": len(tickets),
        }
        return self._ok(body)

    def _cursor_page(self, req: Request, tickets: list[Ticket]) -> Response:
        size = min(_positive(req.param("page[size]"), MAX_PAGE), MAX_PAGE)  # clamped
        after, before = req.param("page[after]"), req.param("page[before]")
        if after:
            boundary = _decode_cursor(after)
            chunk = [t for t in tickets if t.id > boundary]
            more, chunk = len(chunk) > size, chunk[:size]
        elif before:
            boundary = _decode_cursor(before)
            chunk = [t for t in tickets if t.id < boundary]
            more, chunk = len(chunk) > size, chunk[-size:]
        else:
            more, chunk = len(tickets) > size, tickets[:size]
        link = f"{self.base_url}/api/v2/tickets.json?"
        first = _encode_cursor(chunk[0].id) if chunk else None
        last = _encode_cursor(chunk[-1].id) if chunk else None
        body = {
            "tickets": [t.payload(self.base_url) for t in chunk],
            "meta": {"has_more": more, "after_cursor": last, "before_cursor": first},
            # Links are given whenever there is a cursor; has_more says whether to follow.
            "links": {
                "prev": link + urlencode({"page[before]": first, "page[size]": size})
                if first
                else None,
                "next": link + urlencode({"page[after]": last, "page[size]": size})
                if last
                else None,
            },
        }
        return self._ok(body)

    def state(self) -> dict[str, Any]:
        self.jobs.advance(time.time())
        state = self.store.state()
        state["job_statuses"] = self.jobs.state()
        return state


def _positive(raw: str | None, default: int) -> int:
    if raw is None or not raw.isdigit() or int(raw) < 1:
        return default
    return int(raw)


def _encode_cursor(ticket_id: int) -> str:
    return base64.urlsafe_b64encode(f"t.{ticket_id}".encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        return int(raw.removeprefix("t."))
    except (binascii.Error, UnicodeDecodeError, ValueError):
        # Wording unverified.
        description = "page[after]/page[before] is not a valid cursor"
        raise ZendeskError(
            400, {"error": "InvalidPaginationParameter", "description": description}
        ) from None
