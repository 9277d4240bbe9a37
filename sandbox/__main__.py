"""``python -m sandbox``: run the simulators until interrupted (see ``server.serve_forever``)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from sandbox.server import serve_forever


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m sandbox", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument(
        "--port",
        type=int,
        default=0,
        help="X on PORT, Salesforce on PORT+1, Zendesk on PORT+2; 0 picks free ports",
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--write-config",
        type=Path,
        default=None,
        help="write a socialcrm config pointing at the simulators",
    )
    parser.add_argument("--state-url", default=None, help='default "sqlite:///state.db"')
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--workdir", type=Path, default=None, help="where ca.pem is written")
    parser.add_argument(
        "--fault-rate",
        type=float,
        default=None,
        help="share of API calls that fail, on every system, with the default mix of kinds",
    )
    parser.add_argument(
        "--faults",
        type=_json_object,
        default=None,
        help='per-system faults as JSON, e.g. \'{"x": {"rate": 0.2, "kinds": {"429": 1}}}\'',
    )
    parser.add_argument(
        "--hostile", action="store_true", help="add hostile users, mentions, likes and DMs"
    )
    args = parser.parse_args(argv)
    serve_forever(
        host=args.host,
        port=args.port,
        seed=args.seed,
        write_config=args.write_config,
        state_url=args.state_url,
        latency_ms=args.latency_ms,
        workdir=args.workdir,
        faults=args.faults,
        fault_rate=args.fault_rate,
        hostile=args.hostile,
    )


def _json_object(raw: str) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object")
    return value


if __name__ == "__main__":
    main()
