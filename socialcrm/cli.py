"""``socialcrm``: the one command-line face of the project.

A contract other tools and tests rely on: ``run`` prints its JSON summary as the last
stdout line; ``sandbox`` prints exactly one JSON line when ready. Heavy imports
(Prefect, pandas, the sandbox) happen inside the commands, so ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from socialcrm import progress
from socialcrm.config import ConfigError, load_settings


def _quiet_prefect() -> None:
    """No telemetry, no analytics: the pipeline runs on machines without internet."""
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO")
    if not os.environ.get("PREFECT_API_URL"):
        # Ephemeral mode: the temporary server is killed at exit while it may still be
        # flushing task-run events, which it reports as tracebacks that mean nothing here.
        os.environ.setdefault("PREFECT_SERVER_LOGGING_LEVEL", "CRITICAL")
        # Its start takes 7-15 s, longer on a busy machine; the default wait is too short.
        os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")


def _cmd_sandbox(args: argparse.Namespace) -> int:
    from sandbox.server import serve_forever

    serve_forever(
        host=args.host,
        port=args.port,
        seed=args.seed,
        write_config=Path(args.write_config) if args.write_config else None,
        latency_ms=args.latency_ms,
        fault_rate=args.fault_rate,
        faults=json.loads(args.faults) if args.faults else None,
        hostile=args.hostile,
    )
    return 0


def _progress_bar() -> Callable[[], None]:
    """A live tally on a terminal; logs alone when the output goes to a file or CI."""
    if not sys.stderr.isatty():
        return lambda: None
    from tqdm import tqdm

    bar = tqdm(unit=" pages", file=sys.stderr, dynamic_ncols=True)
    totals: dict[str, int] = {}

    def on_progress(what: str, count: int) -> None:
        totals[what] = totals.get(what, 0) + count
        if what == "pages":
            bar.update(count)
        bar.set_postfix({k: v for k, v in totals.items() if k != "pages"}, refresh=True)

    stop = progress.listen(on_progress)

    def close() -> None:
        stop()
        bar.close()

    return close


def _cmd_run(args: argparse.Namespace) -> int:
    if sys.stderr.isatty():
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")  # the bar shows progress
    _quiet_prefect()
    close_bar = _progress_bar()
    try:
        return _run_flow(args)
    finally:
        close_bar()


M = TypeVar("M", bound=BaseModel)


def _params(model: type[M], **values: Any) -> M:
    """A flow's parameters from the command line; a bad value is a usage error, not a trace."""
    try:
        return model(**values)
    except ValidationError as error:
        problems = "; ".join(
            f"--{'-'.join(str(part) for part in problem['loc']).replace('_', '-')}: "
            f"{problem['msg']}"
            for problem in error.errors()
        )
        raise ConfigError(problems) from None


def _preflight(args: argparse.Namespace) -> None:
    """The config, the account and the flow's mapping, read before Prefect starts: a typo
    is one line, not a traceback after a temporary server came up."""
    settings = load_settings(args.config)
    settings.account(args.account)
    if args.flow == "leads":
        from flows.leads import lead_mapping

        lead_mapping(settings)
    else:
        from flows.tickets import ticket_mapping

        ticket_mapping(settings)


def _run_flow(args: argparse.Namespace) -> int:
    from connectors.http import ApiError

    _preflight(args)

    common = {
        "config": args.config,
        "account": args.account,
        "dry_run": args.dry_run,
        "limit": args.limit,
    }
    if args.flow == "leads":
        from flows.leads import LeadsRun, leads

        params = _params(LeadsRun, **common, sales_csv=args.sales_csv)
        try:
            summary: dict[str, Any] = leads(params)
        except ApiError as error:
            print(f"socialcrm: run stopped: {error}", file=sys.stderr)
            return 1
        summary.pop("outcomes", None)  # per record: in the run's artifacts, not this line
        written = summary.pop("sales_csv", None)
        if written:
            print(
                f"{written['new_leads']} new leads written to {written['path']}, best first",
                file=sys.stderr,
            )
    else:
        from flows.tickets import TicketsRun, tickets

        ticket_params = _params(TicketsRun, **common)
        try:
            summary = tickets(ticket_params)
        except ApiError as error:
            print(f"socialcrm: run stopped: {error}", file=sys.stderr)
            return 1
    print(json.dumps(summary, ensure_ascii=False))
    return 0


def _cmd_mapping_check(args: argparse.Namespace) -> int:
    from connectors.crm import salesforce
    from connectors.http import ApiError
    from mappings import MappingError, check_sources, check_spec, load_spec
    from socialcrm.qualify import LEAD_ROW_COLUMNS, TASK_ROW_COLUMNS
    from socialcrm.routing import RoutingError, load_rules

    settings = load_settings(args.config)
    problems: list[str] = []
    checked: list[str] = []
    try:
        path = settings.mapping_path(settings.crm.lead_mapping)
        spec = load_spec(path)
        conn = salesforce.connect(settings.crm)
        problems += check_spec(spec, salesforce.describe(conn, spec.object_name))
        problems += check_sources(spec, LEAD_ROW_COLUMNS)
        checked.append(f"{path.name} against {spec.object_name} in {conn.instance_url}")
        if settings.crm.matching.enabled:
            path = settings.mapping_path(settings.crm.matching.contact_task_mapping)
            task = load_spec(path)
            problems += check_spec(task, salesforce.describe(conn, task.object_name))
            problems += check_sources(task, TASK_ROW_COLUMNS)
            checked.append(f"{path.name} against {task.object_name} in {conn.instance_url}")
        if settings.helpdesk is not None:
            from connectors.helpdesk.zendesk import TICKET_FIELDS
            from flows.tickets import TICKET_ROW_COLUMNS

            path = settings.mapping_path(settings.helpdesk.ticket_mapping)
            ticket = load_spec(path)
            problems += check_spec(ticket, TICKET_FIELDS)
            problems += check_sources(ticket, TICKET_ROW_COLUMNS)
            checked.append(f"{path.name} against Zendesk tickets")
        path = settings.mapping_path(settings.routing.rules)
        load_rules(path)
        checked.append(path.name)
    except (MappingError, ApiError, RoutingError) as error:
        print(str(error))
        return 1
    for problem in problems:
        print(problem)
    if problems:
        print(f"{len(problems)} problem(s)", file=sys.stderr)
        return 1
    for line in checked:
        print(f"sound: {line}")
    return 0


def _cmd_dead_letters(args: argparse.Namespace) -> int:
    from socialcrm.state import StateStore

    settings = load_settings(args.config)
    with StateStore.open(settings.state_url()) as store:
        letters = store.dead_letters(pipeline=args.pipeline)
    for letter in letters:
        print(
            json.dumps(
                {
                    "id": letter.id,
                    "record_key": letter.record_key,
                    "pipeline": letter.pipeline,
                    "stage": letter.stage,
                    "system": letter.system,
                    "field": letter.field,
                    "reason": letter.reason,
                    "attempts": letter.attempts,
                    "created_at": letter.created_at.isoformat(),
                },
                ensure_ascii=False,
            )
        )
    print(f"{len(letters)} dead letter(s)", file=sys.stderr)
    return 0


def _cmd_discard(args: argparse.Namespace) -> int:
    from socialcrm.state import StateStore

    settings = load_settings(args.config)
    with StateStore.open(settings.state_url()) as store:
        removed = store.discard_dead_letters(args.id)
    missing = len(set(args.id)) - removed
    print(f"{removed} dead letter(s) discarded" + (f", {missing} not found" if missing else ""))
    return 0 if not missing else 1


def _cmd_replay(args: argparse.Namespace) -> int:
    if not args.all and not args.id:
        print("socialcrm: say which dead letters: --id N [--id M ...] or --all", file=sys.stderr)
        return 2
    _quiet_prefect()
    from connectors.http import ApiError
    from flows.replay import ReplayRun, replay

    try:
        summary = replay(
            _params(
                ReplayRun,
                config=args.config,
                account=args.account,
                ids=None if args.all else args.id,
            )
        )
    except ApiError as error:
        print(f"socialcrm: replay stopped: {error}", file=sys.stderr)
        return 1
    print(json.dumps(summary, ensure_ascii=False))
    return 0


def _cmd_erase(args: argparse.Namespace) -> int:
    _quiet_prefect()
    from flows.erase import EraseRun, ErasureIncomplete, erase
    from socialcrm.erasure import ErasureError, parse_person

    try:
        person = parse_person(args.person).key
    except ErasureError as error:
        print(f"socialcrm: --person: {error}", file=sys.stderr)
        return 2
    params = _params(
        EraseRun, config=args.config, account=args.account, person=person, dry_run=args.dry_run
    )
    try:
        summary = erase(params)
    except ErasureIncomplete as error:
        print(f"socialcrm: erase stopped, run it again once fixed: {error}", file=sys.stderr)
        return 1
    print(json.dumps(summary, ensure_ascii=False))
    return 0 if not str(summary.get("status", "")).startswith("skipped") else 1


def _cmd_consent(args: argparse.Namespace) -> int:
    from socialcrm import consent
    from socialcrm.erasure import ErasureError, parse_person
    from socialcrm.state import StateStore

    try:
        keys = [parse_person(ref).key for ref in args.person or []]
    except ErasureError as error:
        print(f"socialcrm: --person: {error}", file=sys.stderr)
        return 2
    if args.consent_command != "status" and not keys:
        print("socialcrm: say who: --person x:12345 [--person ...]", file=sys.stderr)
        return 2
    settings = load_settings(args.config)
    with StateStore.open(settings.state_url()) as store:
        merged = consent.merge_config(store, settings.consent)
        result: dict[str, Any] = {"merged_from_config": merged}
        if args.consent_command == "opt-out":
            result["added"] = consent.opt_out(store, keys, consent.OPT_OUT)
        elif args.consent_command == "remove":
            result["removed"] = consent.withdraw(store, keys)
        elif args.consent_command == "check":
            reasons = consent.suppression_reasons(store, keys)
            result["people"] = [{"person": key, "suppressed": reasons.get(key)} for key in keys]
        result["counts"] = consent.counts(store)
    print(json.dumps(result, ensure_ascii=False))
    return 0


def _prefect_server_named(otherwise: str) -> bool:
    """True if PREFECT_API_URL names a server; else says why that matters, on stderr."""
    if os.environ.get("PREFECT_API_URL"):
        return True
    print(f"socialcrm: PREFECT_API_URL is not set; {otherwise}", file=sys.stderr)
    return False


def _cmd_prefect_blocks(args: argparse.Namespace) -> int:
    _quiet_prefect()
    if (
        not _prefect_server_named(
            "blocks saved now would live in a temporary local database. Point it at your "
            "Prefect server first."
        )
        and not args.local
    ):
        return 2
    from socialcrm.blocks import check_no_missing, config_with_blocks, describe, save_secret_blocks

    results = save_secret_blocks(args.config, overwrite=args.overwrite)
    for line in describe(results):
        print(line)
    if args.write_config:
        Path(args.write_config).write_text(
            config_with_blocks(args.config, results), encoding="utf-8"
        )
        print(f"wrote {args.write_config}: its secrets now name the blocks")
    check_no_missing(results)
    return 0


def _cmd_prefect_automations(args: argparse.Namespace) -> int:
    _quiet_prefect()
    if not _prefect_server_named(
        "point it at the Prefect server the workers report to (an automation runs there, not here)."
    ):
        return 2
    from socialcrm.automations import ensure_crash_detection

    try:
        result = ensure_crash_detection(args.unresponsive_after)
    except ValueError as error:
        print(f"socialcrm: {error}", file=sys.stderr)
        return 2
    print(
        f"{result.action}: automation {result.name!r} (a socialcrm run with no heartbeat "
        f"or state change for {result.unresponsive_after_s} s is marked Crashed)"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="socialcrm", description="Social engagement in, CRM leads and helpdesk tickets out."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    sandbox = commands.add_parser("sandbox", help="run the API simulators until stopped")
    sandbox.add_argument("--host", default="127.0.0.1")
    sandbox.add_argument("--port", type=int, default=0, help="0: a free port per system")
    sandbox.add_argument("--seed", type=int, default=7)
    sandbox.add_argument("--write-config", metavar="PATH", help="write a ready socialcrm config")
    sandbox.add_argument(
        "--latency-ms",
        type=float,
        default=50.0,
        help="added to every call, as a real API's round trip (default 50; 0 for tests)",
    )
    sandbox.add_argument("--fault-rate", type=float, help="share of calls that fail, everywhere")
    sandbox.add_argument("--faults", help='per system, JSON: {"x": {"rate": 0.2}, ...}')
    sandbox.add_argument("--hostile", action="store_true", help="add hostile records")
    sandbox.set_defaults(handler=_cmd_sandbox)

    run = commands.add_parser("run", help="run a flow once, here, and print its JSON summary")
    run.add_argument("flow", choices=["leads", "tickets"])
    run.add_argument("--config", required=True)
    run.add_argument("--account")
    run.add_argument("--dry-run", action="store_true", help="show what would be written")
    run.add_argument("--limit", type=int, help="deliver at most this many records")
    run.add_argument(
        "--sales-csv", metavar="PATH", help="leads: also write the new leads, best first, as CSV"
    )
    run.set_defaults(handler=_cmd_run)

    mapping = commands.add_parser("mapping", help="mapping specs")
    mapping_commands = mapping.add_subparsers(dest="mapping_command", required=True)
    check = mapping_commands.add_parser("check", help="validate mappings against the CRM")
    check.add_argument("--config", required=True)
    check.set_defaults(handler=_cmd_mapping_check)

    dead = commands.add_parser("dead-letters", help="records that could not be delivered")
    dead_commands = dead.add_subparsers(dest="dead_command", required=True)
    listing = dead_commands.add_parser("list", help="one JSON line per dead letter")
    listing.add_argument("--config", required=True)
    listing.add_argument("--pipeline", choices=["leads", "tickets"])
    listing.set_defaults(handler=_cmd_dead_letters)
    again = dead_commands.add_parser("replay", help="deliver dead letters again")
    again.add_argument("--config", required=True)
    again.add_argument("--account")
    again.add_argument("--id", type=int, action="append", help="a dead-letter id (repeatable)")
    again.add_argument("--all", action="store_true", help="every replayable dead letter")
    again.set_defaults(handler=_cmd_replay)
    discard = dead_commands.add_parser(
        "discard",
        help="let go of dead letters after reading them (e.g. malformed source records, "
        "which replay cannot redo)",
    )
    discard.add_argument("--config", required=True)
    discard.add_argument("--id", type=int, action="append", required=True, help="repeatable")
    discard.set_defaults(handler=_cmd_discard)

    forget = commands.add_parser(
        "erase",
        help="erase a person from the store, the CRM and the helpdesk (consent policy)",
        description="Erase a person everywhere we wrote about them, by the config's consent "
        "policy, and keep them suppressed. Prints a JSON summary without personal data.",
    )
    forget.add_argument("--config", required=True)
    forget.add_argument("--person", required=True, help='identity key, e.g. "x:12345"')
    forget.add_argument("--account", help="hold off only this account's runs (default: all)")
    forget.add_argument("--dry-run", action="store_true", help="list what would be done")
    forget.set_defaults(handler=_cmd_erase)

    agree = commands.add_parser("consent", help="the opt-out list (stored as keyed hashes)")
    agree_commands = agree.add_subparsers(dest="consent_command", required=True)
    for name, text in (
        ("opt-out", "never write about these people again (until removed)"),
        ("remove", "lift their opt-out or erasure suppression (they consent again)"),
        ("check", "whether these people are suppressed, and why"),
        ("status", "how many people are suppressed, by reason"),
    ):
        sub = agree_commands.add_parser(name, help=text)
        sub.add_argument("--config", required=True)
        if name != "status":
            sub.add_argument(
                "--person", action="append", required=True, help='identity key, e.g. "x:12345"'
            )
        sub.set_defaults(handler=_cmd_consent, person=None)

    prefect = commands.add_parser("prefect", help="set up a Prefect server for socialcrm")
    prefect_commands = prefect.add_subparsers(dest="prefect_command", required=True)
    blocks = prefect_commands.add_parser(
        "blocks", help="save the config's ${ENV} secrets as Prefect Secret blocks"
    )
    blocks.add_argument("--config", required=True)
    blocks.add_argument("--overwrite", action="store_true", help="replace existing blocks")
    blocks.add_argument(
        "--write-config", metavar="PATH", help="also write a copy of the config using the blocks"
    )
    blocks.add_argument(
        "--local", action="store_true", help="allow saving without PREFECT_API_URL (tests)"
    )
    blocks.set_defaults(handler=_cmd_prefect_blocks)
    automations = prefect_commands.add_parser(
        "automations", help="create the automation that marks dead runs Crashed"
    )
    automations.add_argument(
        "--unresponsive-after",
        type=int,
        metavar="SECONDS",
        help="silence after which a run counts as dead (default: 3 heartbeat periods, 540)",
    )
    automations.set_defaults(handler=_cmd_prefect_automations)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except ConfigError as error:
        print(f"socialcrm: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
