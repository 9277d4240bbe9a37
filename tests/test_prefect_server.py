"""The deployments as ops use them: a real Prefect server, `prefect deploy`, a process worker.

One module-scoped stack: `prefect server start` (SQLite in a temporary PREFECT_HOME), the
`socialcrm-process` work pool, the sandbox, `prefect deploy --all` of deploy/prefect.yaml.
Then a run of `leads/leads-brand` is created the way the UI's Run button creates it, a
`prefect worker` runs it, and the leads in the sandbox's Salesforce and the run's artifacts
are checked; a headless Chromium opens the deployment's custom-run form in the Prefect UI
and saves a screenshot of it.

Every process is started in its own session and its whole process group is killed at the
end; anything still carrying this stack's PREFECT_HOME afterwards is killed and reported.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import yaml
from truth import bots

from sandbox.server import Sandbox, start_sandbox

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
DEPLOY_FILE = ROOT / "deploy" / "prefect.yaml"
SPEC = yaml.safe_load(DEPLOY_FILE.read_text())
POOL = "socialcrm-process"
LEAD_LIMIT = 25
RUN_TIMEOUT = 180.0
CHROMIUM = os.environ.get("SOCIALCRM_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("SOCIALCRM_CHROMEDRIVER", "/usr/bin/chromedriver")
SCREENSHOT_COPY = ROOT / ".socialcrm" / "test-output" / "prefect-run-form.png"
FORM_TITLES = ("Config file", "Account", "Dry run", "Lead limit", "Since")

T = TypeVar("T")

# Exec the command with SIGINT back to default: a child inheriting "SIGINT ignored" (a CI
# job started with `cmd &`) ignores Prefect's own SIGTERM handling (toolchain notes 4.6).
# A wrapper rather than preexec_fn, which is unsafe with the sandbox's threads running.
_DEFAULT_SIGINT = [
    sys.executable,
    "-c",
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
    "os.execvp(sys.argv[1], sys.argv[1:])",
]


def _prefect_cli() -> list[str]:
    """The `prefect` script of the interpreter running the tests (the project venv)."""
    script = Path(sys.executable).parent / "prefect"
    if script.exists():
        return [str(script)]
    found = shutil.which("prefect")
    if found:
        return [found]
    return [sys.executable, "-m", "prefect"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _tail(path: Path, lines: int = 60) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as error:
        return f"<cannot read {path}: {error}>"
    return "\n".join(text.splitlines()[-lines:])


@dataclass
class Background:
    """A process started in its own session, its output in a log file."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path

    def tail(self, lines: int = 60) -> str:
        return f"--- {self.name} output (last {lines} lines of {self.log}) ---\n" + _tail(
            self.log, lines
        )

    def stop(self, grace: float = 8.0) -> None:
        """SIGTERM to the whole process group, SIGKILL to it after ``grace`` seconds."""
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, sig)
            try:
                self.process.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                continue
            # The leader is gone; finish off any straggler left in its group.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            return


@dataclass
class Stack:
    """The Prefect server and everything started next to it, for one test module."""

    home: Path
    port: int
    env: dict[str, str]
    started: list[Background] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api(self) -> str:
        return f"{self.url}/api"

    def start(self, name: str, args: list[str], *, cwd: Path, env: dict[str, str]) -> Background:
        log = self.home.parent / f"{name}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [*_DEFAULT_SIGINT, *args],
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own group: one killpg stops it and its children
            )
        started = Background(name, process, log)
        self.started.append(started)
        return started

    def cli(self, *args: str, env: dict[str, str] | None = None, timeout: float = 120) -> str:
        """Run a `prefect` command to completion; fail with its output if it fails."""
        command = [*_prefect_cli(), *args]
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            env=env or self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        try:
            output, _ = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            output, _ = process.communicate()
            pytest.fail(f"{' '.join(command)} took over {timeout} s:\n{output}")
        if process.returncode != 0:
            pytest.fail(f"{' '.join(command)} exited {process.returncode}:\n{output}")
        return output

    def stop_all(self) -> list[str]:
        """Stop everything, newest first; return what had to be killed afterwards."""
        for started in reversed(self.started):
            started.stop()
        return kill_leftovers(self.home)


def _pids_with_env(marker: bytes) -> list[int]:
    """Processes whose environment holds ``marker`` (our PREFECT_HOME): ours, nobody else's."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if marker in environ.split(b"\0"):
            pids.append(int(entry.name))
    return pids


def kill_leftovers(home: Path) -> list[str]:
    """Kill (by pid) any process that still runs with this stack's PREFECT_HOME."""
    marker = f"PREFECT_HOME={home}".encode()
    killed = []
    for pid in _pids_with_env(marker):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            os.kill(pid, signal.SIGKILL)
            killed.append(f"{pid}: {cmdline.strip()}")
        except OSError:
            continue
    return killed


def wait_for(what: str, probe: Callable[[], T | None], timeout: float, why: Callable[[], str]) -> T:
    """Poll ``probe`` until it returns something; fail with ``why()`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value is not None:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}\n{why()}")
        time.sleep(0.5)


def _base_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        PREFECT_HOME=str(home),
        DO_NOT_TRACK="1",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PYTHONUNBUFFERED="1",
    )
    return env


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """`prefect server start` on a free port, with a fresh SQLite DB; healthy, or fail."""
    home = tmp_path_factory.mktemp("prefect-server") / "home"
    home.mkdir()
    port = _free_port()
    stack = Stack(home=home, port=port, env=_base_env(home))
    stack.env["PREFECT_API_URL"] = stack.api
    began = time.monotonic()
    server = stack.start(
        "server",
        [*_prefect_cli(), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        cwd=home.parent,
        # Without it the UI would call the API on the default port 4200, not on ours.
        env=dict(_base_env(home), PREFECT_UI_API_URL=stack.api),
    )

    def healthy() -> bool | None:
        if server.process.poll() is not None:
            pytest.fail(f"prefect server exited with {server.process.returncode}\n{server.tail()}")
        try:
            response = httpx.get(f"{stack.api}/health", timeout=2)
        except httpx.HTTPError:
            return None
        return True if response.status_code == 200 and response.json() is True else None

    try:
        wait_for("the Prefect server's /api/health", healthy, 120, server.tail)
        print(f"\nprefect server healthy on {stack.url} after {time.monotonic() - began:.1f} s")
        yield stack
    finally:
        leftovers = stack.stop_all()
        if leftovers:
            print("killed leftover processes:\n" + "\n".join(leftovers))
        marker = f"PREFECT_HOME={home}".encode()
        deadline = time.monotonic() + 10
        while _pids_with_env(marker) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _pids_with_env(marker), "processes of the Prefect stack survived SIGKILL"


@dataclass
class Deployed:
    stack: Stack
    sandbox: Sandbox
    config: Path
    env: dict[str, str]
    deployments: dict[str, dict[str, Any]]


class ApiError(AssertionError):
    pass


def api(stack: Stack, method: str, path: str, body: Any = None) -> Any:
    try:
        response = httpx.request(method, f"{stack.api}{path}", json=body, timeout=30)
    except httpx.HTTPError as error:
        raise ApiError(f"{method} /api{path}: {error!r}") from error
    if response.status_code >= 400:
        raise ApiError(f"{method} /api{path} -> {response.status_code}: {response.text[:2000]}")
    return response.json() if response.content else None


@pytest.fixture(scope="module")
def deployed(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployed]:
    """The work pool, the sandbox and `prefect deploy --all`; schedules kept, but paused."""
    began = time.monotonic()
    stack.cli("work-pool", "create", POOL, "--type", "process")
    print(f"work pool created in {time.monotonic() - began:.1f} s")
    workdir = tmp_path_factory.mktemp("sandbox")
    sandbox = start_sandbox(seed=11, write_config=workdir / "socialcrm.yaml", workdir=workdir)
    try:
        assert sandbox.config_path is not None
        env = dict(stack.env, SOCIALCRM_HOME=str(ROOT), SOCIALCRM_CONFIG=str(sandbox.config_path))
        deploying = time.monotonic()
        output = stack.cli(
            "--no-prompt", "deploy", "--all", "--prefect-file", str(DEPLOY_FILE), env=env
        )
        print(f"prefect deploy --all in {time.monotonic() - deploying:.1f} s")
        deployments = {}
        for spec in SPEC["deployments"]:
            flow_name = spec["entrypoint"].rpartition(":")[2]
            found = api(stack, "GET", f"/deployments/name/{flow_name}/{spec['name']}")
            deployments[f"{flow_name}/{spec['name']}"] = found
        assert len(deployments) == 3, output
        pause_schedules(stack, deployments)
        print(f"pool + sandbox + deploy + pause in {time.monotonic() - began:.1f} s")
        yield Deployed(stack, sandbox, sandbox.config_path, env, deployments)
    finally:
        sandbox.stop()


def pause_schedules(stack: Stack, deployments: dict[str, dict[str, Any]]) -> None:
    """Stop the cron schedules (*/5, */30, hourly) from firing runs into this test.

    Pausing a schedule deletes its future auto-scheduled runs; one already due is deleted too.
    """
    for deployment in deployments.values():
        for schedule in deployment["schedules"]:
            api(
                stack,
                "PATCH",
                f"/deployments/{deployment['id']}/schedules/{schedule['id']}",
                {"active": False},
            )
    ids = [d["id"] for d in deployments.values()]
    scheduled = api(
        stack,
        "POST",
        "/flow_runs/filter",
        {"flow_runs": {"deployment_id": {"any_": ids}, "state": {"type": {"any_": ["SCHEDULED"]}}}},
    )
    for run in scheduled:
        api(stack, "DELETE", f"/flow_runs/{run['id']}")
    print(f"schedules paused; {len(scheduled)} auto-scheduled runs deleted")


@pytest.fixture(scope="module")
def worker(deployed: Deployed, tmp_path_factory: pytest.TempPathFactory) -> Background:
    """`prefect worker start --pool socialcrm-process`, polling every 2 s, from a scratch dir.

    Started from outside the repository: the deployment's pull step must find the code.
    """
    env = dict(deployed.env, PREFECT_WORKER_QUERY_SECONDS="2")
    return deployed.stack.start(
        "worker",
        [*_prefect_cli(), "worker", "start", "--pool", POOL, "--prefetch-seconds", "5"],
        cwd=tmp_path_factory.mktemp("worker"),
        env=env,
    )


def run_logs(stack: Stack, run_id: str) -> str:
    try:
        logs = api(
            stack,
            "POST",
            "/logs/filter",
            {"logs": {"flow_run_id": {"any_": [run_id]}}, "sort": "TIMESTAMP_ASC", "limit": 200},
        )
    except ApiError as error:
        return f"<could not read the run's logs: {error}>"
    return "--- flow run logs ---\n" + "\n".join(
        f"{log['timestamp']} {log['level']:>2} {log['name']}: {log['message']}" for log in logs
    )


def model_defaults(schema: dict[str, Any], parameter: str) -> dict[str, Any]:
    """Every field of a model parameter with its default: what a filled-in run form holds."""
    ref = schema["properties"][parameter]["$ref"].rpartition("/")[2]
    model = (schema.get("definitions") or schema["$defs"])[ref]
    return {name: prop.get("default") for name, prop in model["properties"].items()}


def table_rows(artifact: dict[str, Any]) -> list[dict[str, Any]]:
    data = artifact["data"]
    return list(json.loads(data) if isinstance(data, str) else data)


def test_a_run_started_like_the_ui_run_button_is_executed_by_the_worker(
    deployed: Deployed, worker: Background
) -> None:
    stack, sandbox = deployed.stack, deployed.sandbox

    # What `prefect deploy` stored: schedules, the config path filled in at deploy time,
    # the pull step pointing at the repository, the process pool.
    for spec in SPEC["deployments"]:
        flow_name = spec["entrypoint"].rpartition(":")[2]
        stored = deployed.deployments[f"{flow_name}/{spec['name']}"]
        crons = [(s["schedule"]["cron"], s["schedule"]["timezone"]) for s in stored["schedules"]]
        assert crons == [(s["cron"], s["timezone"]) for s in spec["schedules"]], stored["name"]
        assert all(s["active"] for s in stored["schedules"])  # as deployed, before the pause
        assert stored["global_concurrency_limit"]["limit"] == spec["concurrency_limit"]["limit"]
        assert stored["concurrency_options"]["collision_strategy"] == "CANCEL_NEW"
        assert stored["work_pool_name"] == POOL
        assert stored["parameters"]["params"] == {
            **spec["parameters"]["params"],
            "config": str(deployed.config),
        }
        assert stored["pull_steps"] == [
            {"prefect.deployments.steps.set_working_directory": {"directory": str(ROOT)}}
        ]
        assert stored["enforce_parameter_schema"] is True
        schema = stored["parameter_openapi_schema"]
        assert "params" in schema["properties"], schema
    paused = [
        s["active"]
        for d in deployed.deployments.values()
        for s in api(stack, "GET", f"/deployments/{d['id']}/schedules")
    ]
    assert paused and not any(paused), "the test paused every schedule"

    # The Run button's body (Prefect UI v2, quick run / custom run): the whole params object.
    deployment = deployed.deployments["leads/leads-brand"]
    params = {
        **model_defaults(deployment["parameter_openapi_schema"], "params"),
        **deployment["parameters"]["params"],
        "account": "brand",
        "limit": LEAD_LIMIT,
    }
    assert params["dry_run"] is False and params["config"] == str(deployed.config)
    began = time.monotonic()
    run = api(
        stack,
        "POST",
        f"/deployments/{deployment['id']}/create_flow_run",
        {
            "parameters": {"params": params},
            "enforce_parameter_schema": True,
            "state": {
                "type": "SCHEDULED",
                "message": "Run from the Prefect UI",
                "state_details": {
                    "deferred": False,
                    "untrackable_result": False,
                    "pause_reschedule": False,
                },
            },
        },
    )
    run_id = run["id"]

    def why() -> str:
        try:
            full = api(stack, "GET", f"/flow_runs/{run_id}")["state"] or {}
            state = f"{full.get('type')} {full.get('message') or ''}"
        except ApiError as error:
            state = f"<unknown: {error}>"
        return "\n".join(
            [f"flow run {run_id} state: {state}", run_logs(stack, run_id), worker.tail(80)]
        )

    def finished() -> dict[str, Any] | None:
        if worker.process.poll() is not None:
            pytest.fail(f"the worker exited with {worker.process.returncode}\n{why()}")
        current = api(stack, "GET", f"/flow_runs/{run_id}")
        state = current["state"] or {}
        if state.get("type") in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            return dict(current)
        return None

    done = wait_for(f"flow run {run_id} to finish", finished, RUN_TIMEOUT, why)
    elapsed = time.monotonic() - began
    assert done["state"]["type"] == "COMPLETED", why()
    print(f"flow run {done['name']} completed {elapsed:.1f} s after it was created")
    assert done["name"].startswith("leads brand "), done["name"]  # the flow's run namer
    assert done["parameters"] == {"params": params}
    assert done["work_pool_name"] == POOL

    # The leads reached the sandbox's Salesforce: exactly the lead limit, no duplicates.
    held = sandbox.state()["salesforce"]["Lead"]
    keys = [lead["Social_Profile_Id__c"] for lead in held]
    # The limit counts people handled; the seed's bots among them are skipped, not written.
    assert len(keys) == len(set(keys)), keys
    assert LEAD_LIMIT - len(bots(sandbox.state())) <= len(keys) <= LEAD_LIMIT

    # The run's artifacts tell ops the same.
    artifacts = api(
        stack,
        "POST",
        "/artifacts/filter",
        {"artifacts": {"flow_run_id": {"any_": [run_id]}}, "sort": "KEY_ASC"},
    )
    by_key = {a["key"]: a for a in artifacts}
    assert {"leads-brand-summary", "leads-brand-leads"} <= set(by_key), sorted(by_key)
    assert "leads-brand-errors" not in by_key and "leads-brand-preview" not in by_key
    summary = by_key["leads-brand-summary"]
    assert summary["type"] == "markdown"
    assert summary["data"].startswith("# Leads run for `brand`: completed")
    assert f"| leads created | {len(keys)} |" in summary["data"]
    skipped = re.search(r"\| skipped \([^|]*\) \| (\d+) \|", summary["data"])
    assert skipped and len(keys) + int(skipped.group(1)) == LEAD_LIMIT
    assert "| failed | 0 |" in summary["data"]
    table = by_key["leads-brand-leads"]
    assert table["type"] == "table"
    rows = table_rows(table)
    assert len(rows) == len(keys)
    assert {row["status"] for row in rows} == {"created"}
    assert {row["record_key"] for row in rows} == set(keys)
    sf_url = sandbox.urls["salesforce"]
    assert all(str(row["url"]).startswith(sf_url) for row in rows), rows[:3]

    # Only our run ran: the schedules did not fire anything into the sandbox.
    others = api(
        stack,
        "POST",
        "/flow_runs/filter",
        {"flow_runs": {"id": {"not_any_": [run_id]}}},
    )
    assert [(r["name"], r["state_type"]) for r in others if r["state_type"] != "SCHEDULED"] == []


# --- the UI ------------------------------------------------------------------------------


def _browser_problem() -> str | None:
    if not Path(CHROMIUM).exists():
        return f"no Chromium at {CHROMIUM} (apt-get install chromium chromium-driver)"
    if not Path(CHROMEDRIVER).exists():
        return f"no chromedriver at {CHROMEDRIVER} (apt-get install chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[dev]')"
    return None


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    """Headless Debian Chromium driven by Debian's chromedriver (versions always match)."""
    problem = _browser_problem()
    if problem:
        if os.environ.get("SOCIALCRM_REQUIRE_BROWSER") == "1":
            pytest.fail(f"SOCIALCRM_REQUIRE_BROWSER=1 but {problem}")
        pytest.skip(problem)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",  # CI containers run as root
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1400,1600",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):
        options.add_argument(arg)
    service = Service(
        executable_path=CHROMEDRIVER,
        log_output=str(tmp_path / "chromedriver.log"),
    )
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def test_the_ui_custom_run_form_shows_the_leads_parameters(
    browser: Any, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By

    # Requested here, not as an argument: pytest sets up module fixtures first, and a missing
    # browser should skip before the server starts.
    deployed: Deployed = request.getfixturevalue("deployed")

    deployment = deployed.deployments["leads/leads-brand"]
    # The v2 UI (Prefect's default): Run > Custom run on a deployment opens this route.
    url = f"{deployed.stack.url}/v2/deployments/deployment/{deployment['id']}/run"
    began = time.monotonic()
    browser.get(url)

    def labels() -> set[str]:
        found = set()
        for element in browser.find_elements(By.CSS_SELECTOR, "label"):
            try:
                found.add(element.text.strip())
            except Exception:  # the SPA re-rendered it under us; next poll
                continue
        return found

    def missing(seen: set[str]) -> list[str]:
        # A field's label is its title, "(Optional)" added when it has a default.
        return [t for t in FORM_TITLES if not {t, f"{t} (Optional)"} & seen]

    def form_rendered() -> set[str] | None:
        seen = labels()
        return None if missing(seen) else seen

    def why() -> str:
        body = browser.find_element(By.TAG_NAME, "body").text
        browser.save_screenshot(str(tmp_path / "timeout.png"))
        return (
            f"url {browser.current_url}\nlabels seen: {sorted(labels())}\n"
            f"page text:\n{body[:3000]}\nscreenshot: {tmp_path / 'timeout.png'}"
        )

    seen = wait_for("the custom-run form's parameter fields", form_rendered, 60, why)
    print(f"run form rendered {time.monotonic() - began:.1f} s after navigation")
    assert not missing(seen), sorted(seen)

    # The deployment's parameters prefill the form: the config path filled in at deploy time,
    # the account.
    fields = browser.find_elements(By.CSS_SELECTOR, "input, textarea")
    values = [e.get_attribute("value") for e in fields]
    assert str(deployed.config) in values, values
    page = browser.find_element(By.TAG_NAME, "body").text
    assert "brand" in page.split("\n"), page

    shot = tmp_path / "prefect-run-form.png"
    assert browser.save_screenshot(str(shot)), "Chromium could not save a screenshot"
    SCREENSHOT_COPY.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(shot, SCREENSHOT_COPY)
    print(f"screenshot of the run form: {shot} (copied to {SCREENSHOT_COPY})")


_RUN_SCRIPT = """
import sys, time
from prefect import flow, tags
from prefect.runtime import flow_run

@flow(name="socialcrm-watched")
def watched(seconds: float) -> None:
    print("RUN", flow_run.id, flush=True)
    time.sleep(seconds)

with tags("socialcrm"):
    watched(float(sys.argv[1]))
"""


def _socialcrm_cli(
    stack: Stack, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "socialcrm.cli", *args],
        cwd=ROOT,
        env=env or stack.env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_a_run_whose_process_died_is_marked_crashed_by_the_automation(
    stack: Stack, tmp_path: Path
) -> None:
    """`socialcrm prefect automations` on a real server: a socialcrm run killed with
    SIGKILL (nothing left to report its end) becomes Crashed once its heartbeats stop;
    a run that ended normally is left alone."""
    # Heartbeats every 30 s (Prefect's shortest), so the dead run is found within a minute.
    env = dict(stack.env, PREFECT_FLOWS_HEARTBEAT_FREQUENCY="30")
    short = _socialcrm_cli(stack, "prefect", "automations", "--unresponsive-after", "45", env=env)
    assert short.returncode == 2 and "two heartbeat periods (60 s;" in short.stderr
    for wait, action in (("90", "created"), ("60", "updated"), ("60", "kept")):
        done = _socialcrm_cli(
            stack, "prefect", "automations", "--unresponsive-after", wait, env=env
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert done.stdout.startswith(f"{action}:"), done.stdout
    (found,) = api(stack, "POST", "/automations/filter", {})
    assert found["trigger"]["posture"] == "Proactive"
    assert found["trigger"]["within"] == 60
    assert found["trigger"]["match_related"]["prefect.resource.id"] == "prefect.tag.socialcrm"
    script = tmp_path / "watched.py"
    script.write_text(_RUN_SCRIPT)
    try:
        doomed = stack.start(
            "doomed-run", [sys.executable, str(script), "600"], cwd=tmp_path, env=env
        )
        finished = stack.start(
            "finished-run", [sys.executable, str(script), "0"], cwd=tmp_path, env=env
        )

        def run_id(process: Background) -> str | None:
            match = re.search(r"^RUN (\S+)$", _tail(process.log, 200), re.MULTILINE)
            return match[1] if match else None

        doomed_id = wait_for("the doomed run to start", lambda: run_id(doomed), 120, doomed.tail)

        def heartbeat_stored() -> bool | None:
            events = api(
                stack,
                "POST",
                "/events/filter",
                {
                    "filter": {
                        "event": {"name": ["prefect.flow-run.heartbeat"]},
                        "resource": {"id": [f"prefect.flow-run.{doomed_id}"]},
                    }
                },
            )
            return True if events["events"] else None

        wait_for("the doomed run's first heartbeat", heartbeat_stored, 60, doomed.tail)
        assert finished.process.wait(timeout=120) == 0, finished.tail()
        finished_id = run_id(finished)
        assert finished_id is not None, finished.tail()
        # SIGKILL, not SIGTERM (which Prefect handles): the run dies with nobody to report.
        os.killpg(doomed.process.pid, signal.SIGKILL)
        doomed.process.wait(timeout=30)

        def crashed() -> dict[str, Any] | None:
            state = api(stack, "GET", f"/flow_runs/{doomed_id}")["state"]
            return state if state["type"] == "CRASHED" else None

        state = wait_for(
            "the automation to mark the dead run Crashed",
            crashed,
            120,
            lambda: str(api(stack, "GET", f"/flow_runs/{doomed_id}")["state"]),
        )
        assert "No heartbeat for 60 s" in state["message"]
        assert api(stack, "GET", f"/flow_runs/{finished_id}")["state"]["type"] == "COMPLETED"
    finally:
        for automation in api(stack, "POST", "/automations/filter", {}):
            api(stack, "DELETE", f"/automations/{automation['id']}")
