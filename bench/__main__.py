"""``python -m bench`` (``make bench``): the end-to-end benchmark, then the results README.

Runs ``bench.pipeline`` for every size (ours and the per-record baseline, each in a child
process), writes ``bench/results/pipeline.{md,json,svg}``, runs the mapping benchmark
(``bench.mapping.run``) when it is available, and merges both into
``bench/results/README.md``. The table is printed at the end.
"""

from __future__ import annotations

import argparse
import sys

from bench import pipeline, report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    pipeline.add_common_arguments(parser)
    parser.add_argument("--no-mapping", action="store_true", help="skip the mapping benchmark")
    parser.add_argument(
        "--mapping-sizes",
        default=None,
        help="rows for the mapping benchmark, e.g. 1000,100000 (default: its own; --quick: 1000)",
    )
    args = parser.parse_args(argv)
    data = pipeline.orchestrate_args(args)
    markdown = report.write_pipeline(data)
    rows, why = None, "skipped (--no-mapping)"
    if not args.no_mapping:
        mapping_sizes = (
            pipeline.parse_sizes(args.mapping_sizes)
            if args.mapping_sizes
            else ([1000] if args.quick else None)
        )
        try:
            rows, why = report.run_mapping(mapping_sizes)
        except Exception as error:  # the pipeline results stand on their own
            rows, why = None, f"bench.mapping.run failed: {error!r}"
    path = report.write_readme(data, rows, why)
    print(markdown)
    print(f"results: {report.RESULTS} ({path.name}, pipeline.md, pipeline.json, pipeline.svg)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
