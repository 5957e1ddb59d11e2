"""Run the in-process benchmarks: ``python -m benchmarks [suite ...] [--quick]``.

Each ``benchmarks/bench_<suite>.py`` module defines ``cases()``; with no suite named, all run.
Over real sockets: ``python -m benchmarks capacity`` (the open-model capacity report and its
plots, :mod:`benchmarks.capacity`) and ``python -m benchmarks servers`` (the example's GET/s
under each server, and what each does with hostile clients, :mod:`benchmarks.servers`).
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

import benchmarks
from benchmarks.harness import format_table, run_cases

#: Commands that run servers, by name: their module's ``main(argv)``.
COMMANDS = {"capacity": "benchmarks.capacity", "servers": "benchmarks.servers"}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in COMMANDS:
        command: int = importlib.import_module(COMMANDS[argv[0]]).main(argv[1:])
        return command
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    available = sorted(
        name[len("bench_") :]
        for _, name, _ in pkgutil.iter_modules(benchmarks.__path__)
        if name.startswith("bench_")
    )
    parser.add_argument(
        "suites", nargs="*", choices=[*available, []][: len(available)] or None, metavar="suite"
    )
    parser.add_argument("--quick", action="store_true", help="fewer iterations, for a smoke run")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.suites) - set(available))
    if unknown:
        parser.error(f"unknown suite(s) {', '.join(unknown)}; choose from {', '.join(available)}")
    suites = args.suites or available
    iterations, rounds = (200, 3) if args.quick else (2000, 15)
    for suite in suites:
        module = importlib.import_module(f"benchmarks.bench_{suite}")
        results = run_cases(module.cases(), iterations=iterations, rounds=rounds)
        print(
            format_table(f"{suite} (in-process, {rounds} rounds x {iterations} requests)", results)
        )
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
