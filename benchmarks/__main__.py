"""One entry point for the benchmark suite.

    python -m benchmarks list                          # the benchmarks and what each measures
    python -m benchmarks run <name> [--quick] [...]    # run one; its own options follow the name
    python -m benchmarks run all --quick               # every benchmark's smoke run (what CI does)
    python -m benchmarks summarize                     # rewrite the table in benchmarks/README.md from results/

Each benchmark writes ``benchmarks/results/<name>.json`` (``<name>_quick.json`` with ``--quick``) and a PNG;
``--output-dir DIR`` writes them elsewhere. ``benchmarks/README.md`` describes the suite.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

# the suite, in the order of benchmarks/README.md
BENCHMARKS = ("step_time", "memory", "ablation", "glue", "callback_overhead", "toy", "adapm_convergence",
              "adapm_ablation", "adadiag", "eight_bit", "sft_real")


def load(name: str):
    """The module ``benchmarks.<name>`` of a benchmark in :data:`BENCHMARKS`."""
    if name not in BENCHMARKS:
        raise SystemExit(f"unknown benchmark {name!r}; the benchmarks are: {', '.join(BENCHMARKS)}")
    return importlib.import_module(f"benchmarks.{name}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="list the benchmarks")
    run = commands.add_parser("run", help="run a benchmark (or 'all'); options after the name go to it")
    run.add_argument("name", help=f"one of {', '.join(BENCHMARKS)}, or 'all'")
    run.add_argument("options", nargs=argparse.REMAINDER)
    summarize = commands.add_parser("summarize", help="rewrite benchmarks/README.md's table from the results")
    summarize.add_argument("--results", type=Path, default=REPO_ROOT / "benchmarks" / "results")
    summarize.add_argument("--readme", type=Path, default=REPO_ROOT / "benchmarks" / "README.md")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    if args.command == "list":
        for name in BENCHMARKS:
            doc = (load(name).__doc__ or "").strip().splitlines()
            print(f"{name:18s} {doc[0] if doc else ''}")
    elif args.command == "run":
        from benchmarks._common import DataUnavailable

        names = BENCHMARKS if args.name == "all" else (args.name,)
        for name in names:
            started = time.perf_counter()
            module = load(name)
            imported = time.perf_counter()
            sys.argv[0] = f"python -m benchmarks run {name}"  # what the benchmark's --help shows as its usage
            try:
                module.main(list(args.options))
            except DataUnavailable as error:  # one line that says what to set, not a traceback
                raise SystemExit(f"benchmarks run {name}: {error}") from None
            logging.getLogger("benchmarks").info("%s took %.0f s (%.0f s of it importing)", name,
                                                 time.perf_counter() - started, imported - started)
    else:
        from benchmarks.summarize import import_benchmarks, write_summary

        print(write_summary(args.results, args.readme, import_benchmarks(BENCHMARKS)))


if __name__ == "__main__":
    main()
