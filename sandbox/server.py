"""HTTP plumbing: one HTTPS listener per simulated system over one shared world.

Tests, benchmarks and ``make demo`` all start the sandbox through ``start_sandbox`` (or
``python -m sandbox``). Every listener also answers the inspection endpoints under
``/_sandbox/`` without auth, so a test can compare what the pipeline delivered with the
ground truth, and count calls per endpoint.

Call keys in ``calls`` are ``"METHOD /path/template"``: X paths with ids replaced by
``:id`` / ``:username`` (``GET /2/users/:id/mentions``); Salesforce paths keep the API
version the client used and template the rest (``PATCH
/services/data/v60.0/composite/sobjects/:sobject/:field``, ``GET
/services/data/v60.0/query``, ``PUT /services/data/v60.0/jobs/ingest/:id/batches``,
``POST /services/oauth2/token``); Zendesk paths without
the optional ``.json`` (``PUT /api/v2/tickets/:id``), DM lookups under X
(``GET /2/dm_conversations/:id/dm_events``). ``reads`` counts GET calls per system;
``writes`` counts every other method except the OAuth token call and Salesforce's
``POST /composite``, which the sandbox runs for queries only (a read).

Besides ``GET /_sandbox/state``: ``POST /_sandbox/crm`` seeds the Salesforce org with
existing Contacts and Leads for some X people and returns the ground truth (``GET`` returns
it again; ``sandbox.sf_seed``), ``GET /_sandbox/salesforce/queries`` lists the SOQL texts the
org received.

Faults (``sandbox.faults``) are drawn per API call after it is counted, never on
``/_sandbox/*`` nor on the OAuth token endpoint; ``faults`` in the state counts them per
kind, ``fault_phases`` says how many resets and slow answers came before or after the
request was applied. Hostile records (``sandbox.hostile``) are added at start only.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import ssl
import struct
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from sandbox import dm_seed, faults
from sandbox import seed as seeding
from sandbox.config_file import config_text
from sandbox.faults import DropConnection, Fault, FaultInjector
from sandbox.hostile import add_hostile
from sandbox.salesforce_api import SalesforceSimulator
from sandbox.sf_seed import CrmSeed, seed_crm
from sandbox.tls import server_context
from sandbox.wire import Options, Request, Response, json_response
from sandbox.x_api import XSimulator, problem
from sandbox.zendesk_api import ZendeskSimulator, error_response

SYSTEMS = ("x", "salesforce", "zendesk")
TOKEN_KEY = "POST /services/oauth2/token"
TOKEN_KEYS = frozenset({TOKEN_KEY, "POST /2/oauth2/token"})  # Salesforce's and X's


class _World:
    """Everything the listeners share, behind one lock (requests are short; keep it simple)."""

    def __init__(
        self,
        seed: int,
        latency_ms: float,
        *,
        hostile: bool = False,
        sf_duplicate_rules: bool = True,
    ) -> None:
        self.lock = threading.Lock()
        self.seed = seed
        self.options = Options(latency_ms=latency_ms)
        self.x_world = seeding.build_world(seed)
        self.inbox = dm_seed.seed_dms(self.x_world, seed)
        self.hostile: dict[str, int] | None = None
        if hostile:  # after the DMs: the seeded world stays exactly as without
            self.hostile = add_hostile(self.x_world, self.inbox, seed)
        self.x = XSimulator(self.x_world, self.options, self.inbox)
        self.salesforce = SalesforceSimulator(self.options, seed)
        self.salesforce.duplicate_rules = sf_duplicate_rules
        self.salesforce.bulk.wake = self._run_bulk_jobs_after
        self.crm_seed: CrmSeed | None = None
        self.crm_truth: dict[str, Any] = {}
        self.zendesk = ZendeskSimulator(self.options, seed)
        self.calls: dict[str, Counter[str]] = {name: Counter() for name in SYSTEMS}
        self.faults = FaultInjector(seed ^ 0x5EED)
        self.urls: dict[str, str] = {}

    def state(self) -> dict[str, Any]:
        with self.lock:
            world = self.x_world
            users = [u.truth() for u in world.users.values() if not u.suspended]
            suspended = [u.truth() for u in world.users.values() if u.suspended]
            calls = {name: dict(sorted(c.items())) for name, c in self.calls.items()}
            reads = {n: sum(v for k, v in c.items() if _reads(k)) for n, c in calls.items()}
            writes = {
                n: sum(v for k, v in c.items() if not _reads(k) and k not in TOKEN_KEYS)
                for n, c in calls.items()
            }
            x_state: dict[str, Any] = {
                "brand": world.brand.payload(),
                "users": users,
                "suspended_users": suspended,
                "posts": self.x.post_payloads(),
                "engagements": world.engagements(),
                "dm_events": self.inbox.truth(),
            }
            if self.hostile is not None:
                x_state["hostile"] = dict(self.hostile)
            return {
                "x": x_state,
                "salesforce": self.salesforce.state(),
                "zendesk": self.zendesk.state(),
                "calls": calls,
                "reads": reads,
                "writes": writes,
                "faults": self.faults.counted(),
                "fault_phases": self.faults.counted_phases(),
                "options": self.options_dict(),
                "urls": dict(self.urls),
            }

    def _run_bulk_jobs_after(self, delay: float) -> None:
        def run() -> None:
            with self.lock:
                self.salesforce.bulk.advance()

        timer = threading.Timer(delay + 0.001, run)  # just past the job's due time
        timer.daemon = True
        timer.start()

    def options_dict(self) -> dict[str, Any]:
        return {
            **self.options.as_dict(),
            "faults": self.faults.as_dict(),
            "sf_api_usage": self.salesforce.api_usage,
            "sf_duplicate_rules": self.salesforce.duplicate_rules,
        }

    def seed_crm(self, spec: CrmSeed | dict[str, Any] | bool = True) -> dict[str, Any]:
        """Existing Contacts and Leads for some X people (``sandbox.sf_seed``); the truth.

        Seeding twice with the same spec returns the same truth and adds nothing."""
        wanted = CrmSeed.of(spec)
        with self.lock:
            if self.crm_seed is not None:
                if wanted != self.crm_seed:
                    raise ValueError("the org is already seeded with other counts")
                return dict(self.crm_truth)
            self.crm_truth = seed_crm(self.salesforce.store, self.x_world, self.seed, wanted)
            self.crm_seed = wanted
            return dict(self.crm_truth)

    def soql_log(self) -> list[str]:
        with self.lock:
            return list(self.salesforce.queries.log)

    def generate(self, engagements: int, dms: int = 0) -> dict[str, Any]:
        with self.lock:
            added: dict[str, int] = seeding.generate(self.x_world, int(engagements))
            added["dms"] = dm_seed.generate_dms(self.inbox, int(dms))
            return {"added": added}

    def close_solved(self) -> int:
        with self.lock:
            return self.zendesk.store.close_solved(time.time())

    def set_options(self, **opts: Any) -> None:
        with self.lock:
            if "hostile" in opts:
                raise ValueError("hostile is a start option (start_sandbox(hostile=True))")
            # Checked before anything changes, so a bad value leaves every option as it was.
            rate = opts.pop("fault_rate", None)
            spec = opts.pop("faults", {})
            usage = opts.pop("sf_api_usage", None)
            duplicate_rules = opts.pop("sf_duplicate_rules", None)
            if duplicate_rules is not None and not isinstance(duplicate_rules, bool):
                raise ValueError("sf_duplicate_rules must be true or false")
            probe = Options()
            probe.update(**opts)
            checked = FaultInjector()
            checked.config = self.faults.as_dict()
            if rate is not None:
                checked.set_rate(rate)
            checked.configure(spec)
            if usage is not None and int(usage) < 0:
                raise ValueError("sf_api_usage must be >= 0")
            self.options.update(**opts)
            if rate is not None:
                self.faults.set_rate(rate)
            self.faults.configure(spec)
            if usage is not None:  # jump to "near the daily limit" without 15,000 calls
                self.salesforce.api_usage = int(usage)
            if duplicate_rules is not None:
                self.salesforce.duplicate_rules = duplicate_rules

    def reset_calls(self) -> None:
        with self.lock:
            for counter in self.calls.values():
                counter.clear()
            self.faults.reset_counts()

    def handle(self, system: str, req: Request) -> Response:
        if req.path.startswith("/_sandbox/"):
            return self._inspect(req)
        if self.options.latency_ms > 0:
            time.sleep(self.options.latency_ms / 1000)
        sims: dict[str, XSimulator | SalesforceSimulator | ZendeskSimulator] = {
            "x": self.x,
            "salesforce": self.salesforce,
            "zendesk": self.zendesk,
        }
        sim = sims[system]
        with self.lock:
            routed = sim.route(req)
            if routed is None:
                return _not_found(system)
            key, respond = routed
            self.calls[system][key] += 1
            fault = None
            if key not in TOKEN_KEYS:  # token issuance stays reliable: expiry can be recovered
                fault = self.faults.draw(system, _applicable(system, key, req))
            if fault is None:
                return respond()
            if fault.kind not in faults.PHASED:
                return self._inject(fault, key, req, respond)
            response = respond() if fault.after else None
        # reset / slow, outside the lock: other clients keep being served meanwhile
        if fault.kind == "reset":
            raise DropConnection(f"{system} {key}: reset {'after' if fault.after else 'before'}")
        time.sleep(self.faults.slow_seconds)
        if response is None:
            with self.lock:
                response = respond()
        return response

    def _inject(
        self, fault: Fault, key: str, req: Request, respond: Callable[[], Response]
    ) -> Response:
        """The faults that answer instead of (or, for ``partial``, inside) the request."""
        if fault.kind == "429" and fault.system == "x":
            limit = self.options.rate_limits.get(key, 900)
            return faults.x_rate_limited(limit, self.faults.randint(1, 2))
        if fault.kind == "429":
            headers = self.zendesk._rate_headers(time.time(), spend=False)
            return faults.zendesk_rate_limited(req.path, headers)
        if fault.kind == "503":
            text_body = fault.system == "zendesk" and self.faults.coin()
            return faults.unavailable(fault.system, text_body=text_body)
        if fault.kind == "expired_session":
            token = (req.header("authorization") or "")[len("Bearer ") :]
            self.salesforce.tokens.discard(token)  # stays invalid: a new token is needed
            return faults.sf_expired_session()
        if fault.kind == "request_limit":
            return faults.sf_request_limit(self.salesforce.limit_info())
        # partial: some records of this collections call fail to lock and are not stored
        self.salesforce.locked_rows = self.faults.locked_rows
        try:
            return respond()
        finally:
            self.salesforce.locked_rows = None

    def _inspect(self, req: Request) -> Response:
        route = (req.method, req.path.rstrip("/"))
        try:
            body = json.loads(req.body or b"{}")
            if route == ("GET", "/_sandbox/state"):
                return json_response(200, self.state())
            if route == ("POST", "/_sandbox/crm"):  # body: counts per case, {} = defaults
                return json_response(200, self.seed_crm(body or True))
            if route == ("GET", "/_sandbox/crm"):
                with self.lock:
                    return json_response(200, dict(self.crm_truth))
            if route == ("GET", "/_sandbox/salesforce/queries"):
                return json_response(200, {"queries": self.soql_log()})
            if route == ("POST", "/_sandbox/generate"):
                engagements, dms = int(body.get("engagements", 0)), int(body.get("dms", 0))
                return json_response(200, self.generate(engagements, dms))
            if route == ("POST", "/_sandbox/zendesk/close-solved"):
                return json_response(200, {"closed": self.close_solved()})
            if route == ("POST", "/_sandbox/options"):
                self.set_options(**body)
                return json_response(200, self.options_dict())
            if route == ("GET", "/_sandbox/options"):
                return json_response(200, self.options_dict())
            if route == ("POST", "/_sandbox/reset-calls"):
                self.reset_calls()
                return json_response(200, {"reset": True})
        except (ValueError, TypeError, AttributeError) as exc:
            return json_response(400, {"error": str(exc)})
        return json_response(404, {"error": f"no sandbox endpoint {req.method} {req.path}"})


def _not_found(system: str) -> Response:
    if system == "x":
        return problem(404, "Not Found")
    if system == "zendesk":  # wording unverified
        return error_response(404, {"error": "InvalidEndpoint", "description": "Not found"})
    body = [{"errorCode": "NOT_FOUND", "message": "The requested resource does not exist"}]
    return json_response(404, body, content_type="application/json;charset=UTF-8")


def _applicable(system: str, key: str, req: Request) -> set[str]:
    """The fault kinds this call can meet (session and limit faults need a data call)."""
    kinds = set(faults.KINDS[system])
    if system == "salesforce":
        if not key.split(" ", 1)[1].startswith("/services/data/v"):
            kinds -= {"expired_session", "request_limit"}
        # partial: some rows of a collections call, or of a Bulk job being closed, fail to lock
        closing_job = req.method == "PATCH" and key.endswith("/jobs/ingest/:id")
        if "/composite/sobjects" not in key and not closing_job:
            kinds.discard("partial")
    return kinds


def _handler_for(world: _World, system: str) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive: clients reuse connections, as in production
        server_version = "socialcrm-sandbox"
        timeout = 60

        def setup(self) -> None:
            super().setup()
            # Headers and body go out in separate writes; without NODELAY, Nagle plus the
            # client's delayed ACK adds ~40 ms to every keep-alive request.
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def _serve(self) -> None:
            parts = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            req = Request(
                method=self.command,
                path=parts.path,
                query=Request.parse_query(parts.query),
                headers={k.lower(): v for k, v in self.headers.items()},
                body=body,
            )
            try:
                response = world.handle(system, req)
            except DropConnection:
                self._reset()
                return
            except Exception as exc:  # a simulator bug must not look like a hung server
                response = json_response(500, {"error": f"sandbox bug: {exc!r}"})
            self.send_response(response.status)
            for name, value in response.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(response.body)))
            self.end_headers()
            self.wfile.write(response.body)

        def _reset(self) -> None:
            """Abortive close: SO_LINGER 0 makes close() send RST, the client gets no answer."""
            self.close_connection = True
            try:
                self.connection.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                )
                self.rfile.close()  # the buffered reader holds a reference that delays close()
                self.connection.close()
            except OSError:
                pass

        do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _serve

        def log_message(self, format: str, *args: Any) -> None:
            return  # quiet: tests and the CLI's stdout contract must not see access logs

    return Handler


class _TLSServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[BaseHTTPRequestHandler],
        context: ssl.SSLContext,
    ) -> None:
        self.context = context
        super().__init__(address, handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        # Handshake in the worker thread, not in accept(): a slow client cannot stall others.
        try:
            tls = self.context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            return
        try:
            self.RequestHandlerClass(tls, client_address, self)  # type: ignore[arg-type]
        finally:
            tls.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hung up (its timeout beat a slow answer) is not worth a traceback.
        if isinstance(sys.exc_info()[1], OSError):
            return
        super().handle_error(request, client_address)


@dataclass
class Sandbox:
    urls: dict[str, str]
    ca_path: Path
    config_path: Path | None
    _world: _World = field(repr=False)
    _servers: list[_TLSServer] = field(repr=False, default_factory=list)
    _cleanup: Path | None = field(repr=False, default=None)

    def state(self) -> dict[str, Any]:
        """Same JSON as ``GET /_sandbox/state``, without HTTP."""
        return self._world.state()

    def generate(self, engagements: int = 0, dms: int = 0) -> dict[str, Any]:
        """New engagements and/or new customer DMs, "just now", with ids above all others."""
        return self._world.generate(engagements, dms)

    def close_solved_tickets(self) -> int:
        """Age the helpdesk: every solved ticket becomes closed, as Zendesk does after days."""
        return self._world.close_solved()

    def set_options(self, **opts: Any) -> None:
        """``latency_ms``, ``rate_limits`` ({call key: n}; None = realistic),
        ``rate_window_seconds``, ``sf_daily_limit``, ``sf_api_usage`` (the usage counter
        ``Sforce-Limit-Info`` reports), ``sf_batch_size``, ``sf_bulk_delay_ms`` (how long a
        closed Bulk API 2.0 job stays ``InProgress``), ``zendesk_rate_limit`` (per
        window, None = 700), ``zendesk_window_seconds``, ``zendesk_429_every`` (0 = off);
        ``faults`` (merged into the fault configuration, see ``sandbox.faults``; None turns
        every rate off) and ``fault_rate`` (that rate on every system, default mixes);
        ``sf_duplicate_rules`` (the org's blocking Lead duplicate rule on Email, default on).
        """
        self._world.set_options(**opts)

    def reset_calls(self) -> None:
        self._world.reset_calls()

    def seed_crm(self, spec: CrmSeed | dict[str, Any] | bool = True) -> dict[str, Any]:
        """Existing Contacts and Leads for some of the X people, as ``POST /_sandbox/crm``
        does; returns the ground truth by person key (``sandbox.sf_seed``). Deterministic
        for a given sandbox seed; seeding again with the same spec changes nothing."""
        return self._world.seed_crm(spec)

    def crm_truth(self) -> dict[str, Any]:
        """What ``seed_crm`` (or ``start_sandbox(crm_seed=...)``) seeded; {} if nothing."""
        with self._world.lock:
            return dict(self._world.crm_truth)

    def soql_log(self) -> list[str]:
        """Every SOQL text the org received, oldest first (``GET
        /_sandbox/salesforce/queries``; the last 10,000)."""
        return self._world.soql_log()

    def stop(self) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()
        self._servers.clear()
        if self._cleanup is not None:
            shutil.rmtree(self._cleanup, ignore_errors=True)
            self._cleanup = None

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _reads(key: str) -> bool:
    return key.startswith("GET ") or key.endswith("/composite")


def start_sandbox(
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    seed: int = 7,
    write_config: Path | None = None,
    state_url: str | None = None,
    latency_ms: float = 0,
    workdir: Path | None = None,
    faults: dict[str, Any] | None = None,
    fault_rate: float | None = None,
    hostile: bool = False,
    crm_seed: CrmSeed | dict[str, Any] | bool | None = None,
    sf_duplicate_rules: bool = True,
) -> Sandbox:
    """Start the simulators; ``port=N`` puts X on N and Salesforce on N+1 (zendesk: N+2).

    ``fault_rate`` sets one rate with the default mix on every system; ``faults`` (applied
    after it) sets rates, mixes, ``slow_seconds`` and ``seed`` per system (``sandbox.faults``).
    ``hostile`` adds the hostile X records of ``sandbox.hostile``. ``crm_seed`` (True, or
    counts per case) starts the org with existing Contacts and Leads for some X people
    (``sandbox.sf_seed``; the truth is ``Sandbox.crm_truth()``); without it the org starts
    empty. ``sf_duplicate_rules`` turns the org's Lead duplicate rule (on Email) on or off.
    """
    cleanup = None
    if workdir is None and write_config is not None:
        workdir = Path(write_config).resolve().parent
    if workdir is None:
        workdir = cleanup = Path(tempfile.mkdtemp(prefix="socialcrm-sandbox-"))
    context, ca_path = server_context(Path(workdir))
    world = _World(seed, latency_ms, hostile=hostile, sf_duplicate_rules=sf_duplicate_rules)
    if crm_seed is not None and crm_seed is not False:
        world.seed_crm(crm_seed)
    if fault_rate is not None:
        world.faults.set_rate(fault_rate)
    if faults:
        world.faults.configure(faults)
    url_host = "127.0.0.1" if host in ("0.0.0.0", "", "::") else host
    servers: list[_TLSServer] = []
    try:
        for offset, system in enumerate(SYSTEMS):
            server = _TLSServer(
                (host, port + offset if port else 0), _handler_for(world, system), context
            )
            servers.append(server)
            world.urls[system] = f"https://{url_host}:{server.server_address[1]}"
    except OSError:
        for server in servers:
            server.server_close()
        raise
    world.salesforce.base_url = world.urls["salesforce"]
    world.zendesk.base_url = world.urls["zendesk"]
    for server, system in zip(servers, SYSTEMS, strict=True):
        thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name=f"sandbox-{system}",
            daemon=True,
        )
        thread.start()
    config_path = None
    if write_config is not None:
        config_path = Path(write_config).resolve()
        config_path.parent.mkdir(parents=True, exist_ok=True)
        text = config_text(world.urls, ca_path, world.x_world.brand, state_url)
        config_path.write_text(text, encoding="utf-8")
    return Sandbox(dict(world.urls), ca_path, config_path, world, servers, cleanup)


def serve_forever(
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    seed: int = 7,
    write_config: Path | None = None,
    state_url: str | None = None,
    latency_ms: float = 0,
    workdir: Path | None = None,
    out: Callable[[str], Any] | None = None,
    faults: dict[str, Any] | None = None,
    fault_rate: float | None = None,
    hostile: bool = False,
    crm_seed: CrmSeed | dict[str, Any] | bool | None = None,
    sf_duplicate_rules: bool = True,
) -> None:
    """Start, print one JSON line when ready, block until SIGINT/SIGTERM, stop cleanly."""
    sandbox = start_sandbox(
        host=host,
        port=port,
        seed=seed,
        write_config=write_config,
        state_url=state_url,
        latency_ms=latency_ms,
        workdir=workdir,
        faults=faults,
        fault_rate=fault_rate,
        hostile=hostile,
        crm_seed=crm_seed,
        sf_duplicate_rules=sf_duplicate_rules,
    )
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    line = json.dumps(
        {
            "ready": True,
            "urls": sandbox.urls,
            "config": str(sandbox.config_path) if sandbox.config_path else None,
            "ca": str(sandbox.ca_path),
        }
    )
    if out is not None:
        out(line)
    else:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()
    try:
        while not stop.wait(0.5):
            pass
    finally:
        sandbox.stop()
