"""HTTP plumbing: one HTTPS listener per simulated system over one shared world.

Tests, benchmarks and ``make demo`` all start the sandbox through ``start_sandbox`` (or
``python -m sandbox``). Every listener also answers the inspection endpoints under
``/_sandbox/`` without auth, so a test can compare what the pipeline delivered with the
ground truth, and count calls per endpoint.

Call keys in ``calls`` are ``"METHOD /path/template"``: X paths with ids replaced by
``:id`` / ``:username`` (``GET /2/users/:id/mentions``); Salesforce paths keep the API
version the client used and template the rest (``PATCH
/services/data/v60.0/composite/sobjects/:sobject/:field``, ``GET
/services/data/v60.0/query``, ``POST /services/oauth2/token``); Zendesk paths without
the optional ``.json`` (``PUT /api/v2/tickets/:id``), DM lookups under X
(``GET /2/dm_conversations/:id/dm_events``). ``reads`` counts GET calls per system;
``writes`` counts every other method except the OAuth token call.
"""

from __future__ import annotations

import json
import random
import shutil
import signal
import socket
import ssl
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

from sandbox import dm_seed
from sandbox import seed as seeding
from sandbox.config_file import config_text
from sandbox.salesforce_api import SalesforceSimulator
from sandbox.tls import server_context
from sandbox.wire import Options, Request, Response, json_response
from sandbox.x_api import XSimulator, problem
from sandbox.zendesk_api import ZendeskSimulator, error_response

SYSTEMS = ("x", "salesforce", "zendesk")
TOKEN_KEY = "POST /services/oauth2/token"


class _World:
    """Everything the listeners share, behind one lock (requests are short; keep it simple)."""

    def __init__(self, seed: int, latency_ms: float) -> None:
        self.lock = threading.Lock()
        self.options = Options(latency_ms=latency_ms)
        self.x_world = seeding.build_world(seed)
        self.inbox = dm_seed.seed_dms(self.x_world, seed)
        self.x = XSimulator(self.x_world, self.options, self.inbox)
        self.salesforce = SalesforceSimulator(self.options, seed)
        self.zendesk = ZendeskSimulator(self.options, seed)
        self.calls: dict[str, Counter[str]] = {name: Counter() for name in SYSTEMS}
        self.faults = random.Random(seed ^ 0x5EED)
        self.urls: dict[str, str] = {}

    def state(self) -> dict[str, Any]:
        with self.lock:
            world = self.x_world
            users = [u.payload() for u in world.users.values() if not u.suspended]
            suspended = [u.payload() for u in world.users.values() if u.suspended]
            calls = {name: dict(sorted(c.items())) for name, c in self.calls.items()}
            reads = {
                n: sum(v for k, v in c.items() if k.startswith("GET ")) for n, c in calls.items()
            }
            writes = {
                n: sum(v for k, v in c.items() if not k.startswith("GET ") and k != TOKEN_KEY)
                for n, c in calls.items()
            }
            return {
                "x": {
                    "brand": world.brand.payload(),
                    "users": users,
                    "suspended_users": suspended,
                    "posts": self.x.post_payloads(),
                    "engagements": world.engagements(),
                    "dm_events": self.inbox.truth(),
                },
                "salesforce": self.salesforce.state(),
                "zendesk": self.zendesk.state(),
                "calls": calls,
                "reads": reads,
                "writes": writes,
                "options": self.options.as_dict(),
                "urls": dict(self.urls),
            }

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
            self.options.update(**opts)

    def reset_calls(self) -> None:
        with self.lock:
            for counter in self.calls.values():
                counter.clear()

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
            if self.options.fault_rate and self.faults.random() < self.options.fault_rate:
                return _unavailable(system)
            return respond()

    def _inspect(self, req: Request) -> Response:
        route = (req.method, req.path.rstrip("/"))
        try:
            body = json.loads(req.body or b"{}")
            if route == ("GET", "/_sandbox/state"):
                return json_response(200, self.state())
            if route == ("POST", "/_sandbox/generate"):
                engagements, dms = int(body.get("engagements", 0)), int(body.get("dms", 0))
                return json_response(200, self.generate(engagements, dms))
            if route == ("POST", "/_sandbox/zendesk/close-solved"):
                return json_response(200, {"closed": self.close_solved()})
            if route == ("POST", "/_sandbox/options"):
                self.set_options(**body)
                return json_response(200, self.options.as_dict())
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


def _unavailable(system: str) -> Response:
    if system == "x":
        return problem(503, "Service Unavailable")
    if system == "zendesk":  # maintenance answers: Retry-After, body wording unverified
        busy = {"error": "ServiceUnavailable", "description": "Service temporarily unavailable"}
        response = error_response(503, busy)
        response.headers["Retry-After"] = "1"
        return response
    body = [{"errorCode": "SERVER_UNAVAILABLE", "message": "Server temporarily unavailable"}]
    return json_response(503, body, content_type="application/json;charset=UTF-8")


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
            except Exception as exc:  # a simulator bug must not look like a hung server
                response = json_response(500, {"error": f"sandbox bug: {exc!r}"})
            self.send_response(response.status)
            for name, value in response.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(response.body)))
            self.end_headers()
            self.wfile.write(response.body)

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
        """``latency_ms``, ``fault_rate``, ``rate_limits`` ({call key: n}; None = realistic),
        ``rate_window_seconds``, ``sf_daily_limit``, ``sf_batch_size``, ``zendesk_rate_limit``
        (per window, None = 700), ``zendesk_window_seconds``, ``zendesk_429_every`` (0 = off).
        """
        self._world.set_options(**opts)

    def reset_calls(self) -> None:
        self._world.reset_calls()

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


def start_sandbox(
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    seed: int = 7,
    write_config: Path | None = None,
    state_url: str | None = None,
    latency_ms: float = 0,
    workdir: Path | None = None,
) -> Sandbox:
    """Start the simulators; ``port=N`` puts X on N and Salesforce on N+1 (zendesk: N+2)."""
    cleanup = None
    if workdir is None and write_config is not None:
        workdir = Path(write_config).resolve().parent
    if workdir is None:
        workdir = cleanup = Path(tempfile.mkdtemp(prefix="socialcrm-sandbox-"))
    context, ca_path = server_context(Path(workdir))
    world = _World(seed, latency_ms)
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
