"""``python -m sandbox``: run the simulators until interrupted (see ``server.serve_forever``)."""

from __future__ import annotations

import argparse
from pathlib import Path

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
    args = parser.parse_args(argv)
    serve_forever(
        host=args.host,
        port=args.port,
        seed=args.seed,
        write_config=args.write_config,
        state_url=args.state_url,
        latency_ms=args.latency_ms,
        workdir=args.workdir,
    )


if __name__ == "__main__":
    main()
