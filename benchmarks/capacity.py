"""The capacity report: how much offered load holds p99 < 200 ms and errors < 0.1 %.

    python -m benchmarks capacity [--seconds 5] [--out docs/img] [--report FILE] [--json FILE]
                                  [--generator-cpu 0] [--server-cpus 1] [--quick]

For each case it starts a server pinned (``taskset``) to the server CPUs, runs the open-model
generator (:mod:`benchmarks.openload`) pinned to its own CPU, and raises the arrival rate step by
step until a step misses the SLO, then bisects twice. Cases:

* the funds example on PostgreSQL + Redis (a database made for the run, a Redis key prefix of its
  own), one worker and two workers, under the load scenarios' realistic mix
  (:data:`benchmarks.openload.FUNDS_MIX`);
* references on a one-route ``GET /items/{id}`` (``benchmarks.apps``): bare Starlette, the peer
  stack, and prodkit's whole recommended stack on in-memory stores.

On the one-worker example, each operation of the mix alone, at 100 requests per second, for
its server CPU per request; then the spike scenario: half its capacity for 10 s, twice its
capacity for 10 s, half again for 25 s, once with the defaults and once (on a fresh server) with
``MAX_CONCURRENCY`` at what the capacity serves within 200 ms (Little's law: capacity x 0.2 s).
The time to recover is how long after the spike the seconds hold the SLO again (p99 under
200 ms, no error), five in a row. It writes the plots
``capacity.svg`` and ``capacity-spike.svg`` into ``--out``, prints a Markdown report (also to
``--report``), and the raw figures to ``--json``. About 8 minutes; loopback only, every server
stopped by its own PID.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from importlib.metadata import version
from pathlib import Path
from typing import Any

from benchmarks.openload import FUNDS_MIX, SLO_ERROR_RATIO, SLO_P99_MS
from prodkit.stack import DEFAULT_MAX_CONCURRENCY
from tests.servers import ROOT, ServerProcess, free_port, run_server

DATABASE_URL = os.environ.get(
    "PRODKIT_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("PRODKIT_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
UVICORN = [
    "uvicorn", "--factory", "--log-level", "warning", "--no-access-log",
    "--loop", "uvloop", "--http", "httptools",
]  # fmt: skip
PRODKIT_SERVE = ["prodkit.cli", "serve", "examples.funds.app:create_app", "--factory"]
#: Seconds in a row under the SLO that make a recovery.
RECOVERED_AFTER = 5
#: Requests per second of each operation alone, for its cost.
OPERATION_RATE = 100.0
#: Spike: (seconds, share of the one-worker capacity) phases; the spike is the second.
SPIKE = ((10.0, 0.5), (10.0, 2.0), (25.0, 0.5))


@dataclass
class Case:
    """One server and the workload offered to it."""

    label: str
    args: list[str]
    workload: str
    start: float  #: the first rate of the search
    env: dict[str, str] = field(default_factory=dict)
    postgres: bool = False
    ready_path: str = "/items/1"
    default: bool = True  #: run without ``--only``
    result: dict[str, Any] = field(default_factory=dict)


def cases() -> list[Case]:
    """The example under the realistic mix, then the references on one route."""
    example = {"LOG_LEVEL": "INFO"}  # the stack writes its JSON access line, as in production
    return [
        Case(
            "example, PostgreSQL + Redis, 1 worker",
            ["examples.funds"],
            "funds",
            50,
            env=example,
            postgres=True,
            ready_path="/readyz",
        ),
        Case(
            "example, PostgreSQL + Redis, 2 workers",
            ["examples.funds", "--workers", "2"],
            "funds",
            50,
            env=example,
            postgres=True,
            ready_path="/readyz",
        ),
        Case(
            "example, PostgreSQL + Redis, 1 worker, granian",
            [*PRODKIT_SERVE, "--server", "granian"],
            "funds",
            50,
            env=example,
            postgres=True,
            ready_path="/readyz",
            default=False,
        ),
        Case(
            "generator ceiling: a responder that costs next to nothing",
            ["benchmarks.responder"],
            "items",
            2000,
            default=False,
        ),
        Case("bare Starlette (GET /items/{id})", [*UVICORN, "benchmarks.apps:bare"], "items", 250),
        Case(
            "peer stack (GET /items/{id})", [*UVICORN, "benchmarks.apps:peer_stack"], "items", 200
        ),
        Case(
            "prodkit stack, memory (GET /items/{id})",
            [*UVICORN, "benchmarks.apps:full_stack"],
            "items",
            250,
        ),
    ]


async def _admin(sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(DATABASE_URL, timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@contextlib.contextmanager
def database() -> Iterator[str]:
    """A PostgreSQL database of its own for one run; dropped afterwards."""
    name = f"prodkit_capacity_{uuid.uuid4().hex[:8]}"
    asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    try:
        yield f"{DATABASE_URL.rpartition('/')[0]}/{name}"
    finally:
        asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def wait_ready(base_url: str, path: str, timeout: float = 60.0) -> None:
    """Wait until ``path`` answers 200 (every worker started, the database migrated)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            request = urllib.request.Request(  # noqa: S310 - an http:// loopback URL
                base_url + path, headers={"X-User-Id": "ready"}
            )
            with urllib.request.urlopen(request, timeout=2) as response:  # noqa: S310
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{base_url}{path} did not answer 200 within {timeout}s")
        time.sleep(0.2)


@dataclass
class Pinning:
    """Which CPUs the generator and the servers run on."""

    generator: str
    server: str

    @classmethod
    def choose(cls, generator: int | None, server: str | None) -> Pinning | None:
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2:
            return None
        first = cpus[0] if generator is None else generator
        rest = [cpu for cpu in cpus if cpu != first]
        return cls(str(first), server or ",".join(str(cpu) for cpu in rest))


def run_generator(
    url: str, workload: str, options: Sequence[str], pinning: Pinning | None, server_pid: int
) -> dict[str, Any]:
    """Run ``benchmarks.openload`` (pinned) and return its figures; its step lines go to stderr."""
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        command = [
            sys.executable, "-m", "benchmarks.openload", url, "--workload", workload,
            "--server-pid", str(server_pid), "--json", out.name, *options,
        ]  # fmt: skip
        if pinning is not None:
            command = ["taskset", "-c", pinning.generator, *command]
        subprocess.run(command, cwd=ROOT, check=True, timeout=900)
        result: dict[str, Any] = json.loads(Path(out.name).read_text())
        return result


@contextlib.contextmanager
def serving(case: Case, pinning: Pinning | None, tmp: Path) -> Iterator[ServerProcess]:
    """The case's server on a free port, pinned, ready; stopped by its PID afterwards."""
    port = free_port()
    env = dict(case.env)
    with contextlib.ExitStack() as stack:
        if case.postgres:
            env["DATABASE_URL"] = stack.enter_context(database())
            env["REDIS_URL"] = REDIS_URL
            env["REDIS_KEY_PREFIX"] = f"prodkit-capacity:{uuid.uuid4().hex[:8]}:"
        args = [*case.args, "--port", str(port)]
        if pinning is not None:
            args = ["benchmarks.pinned", pinning.server, *args]
        server = stack.enter_context(
            run_server(args, port=port, tmp_path=tmp, env=env, startup_timeout=60)
        )
        wait_ready(server.base_url, case.ready_path)
        yield server


def recovery(
    timeline: Sequence[dict[str, Any]], spike_end: float, hold: int = RECOVERED_AFTER
) -> float | None:
    """Seconds after ``spike_end`` until ``hold`` seconds in a row hold the SLO (None: never).

    A second holds when its p99 is under the SLO and its errors under the SLO's share. A
    disturbance long after the spike (another process on the machine) does not count against
    the recovery; the timeline shows it.
    """
    later = [row for row in timeline if row["second"] >= spike_end]

    def holds(row: dict[str, Any]) -> bool:
        return (
            row["p99_ms"] is not None
            and row["p99_ms"] < SLO_P99_MS
            and row["errors"] <= SLO_ERROR_RATIO * row["offered"]
        )

    for index, row in enumerate(later):
        run = later[index : index + hold]
        if all(holds(r) for r in run) and (len(run) == hold or index + len(run) == len(later)):
            return float(row["second"] - spike_end)
    return None


def spike(
    server: ServerProcess, capacity: float, pinning: Pinning | None, seconds: float, label: str
) -> dict[str, Any]:
    """The spike scenario against a running example, scaled to its capacity."""
    phases = [(length * seconds / 5, max(1.0, round(capacity * share))) for length, share in SPIKE]
    schedule = ",".join(f"{length:g}@{rate:g}" for length, rate in phases)
    result = run_generator(server.base_url, "funds", ["--schedule", schedule], pinning, server.pid)
    spike_end = phases[0][0] + phases[1][0]
    result["spike"] = {"start": phases[0][0], "end": spike_end, "rate": phases[1][1]}
    result["recovery_s"] = recovery(result["timeline"], spike_end)
    result["label"] = label
    return result


def bounded_limit(capacity: float) -> int:
    """In-flight requests that the capacity serves within the p99 target (Little's law)."""
    return max(1, round(capacity * SLO_P99_MS / 1000))


def operation_costs(
    server: ServerProcess, pinning: Pinning | None, seconds: float
) -> dict[str, dict[str, float | None]]:
    """Server CPU per request of each operation of the mix alone, at a low rate."""
    costs: dict[str, dict[str, float | None]] = {}
    for name in FUNDS_MIX:
        if name.endswith("(retry)"):
            continue  # a retry replays a create of the same run: measured inside the mix
        options = [
            "--operation",
            name,
            "--rates",
            f"{OPERATION_RATE:g}",
            "--seconds",
            f"{seconds:g}",
        ]
        step = run_generator(
            server.base_url,
            "funds",
            [*options, "--users", "20", "--warmup", "0"],
            pinning,
            server.pid,
        )["steps"][0]
        costs[name] = {
            "cpu_us": step["server_cpu"] / step["throughput"] * 1e6 if step["throughput"] else None,
            "p50_ms": step["p50_ms"],
            "p99_ms": step["p99_ms"],
            "errors": step["error_ratio"],
        }
    return costs


# -- report -------------------------------------------------------------------------------------


def _capacity_step(result: dict[str, Any]) -> dict[str, Any] | None:
    held = result.get("capacity")
    return next((s for s in result["steps"] if s["rate"] == held), None)


def _fmt(value: float | None, digits: int = 0) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def report(
    done: Sequence[Case],
    spikes: Sequence[dict[str, Any]],
    conditions: dict[str, Any],
    costs: dict[str, dict[str, float | None]] | None = None,
) -> str:
    """The Markdown report: capacity per case, the generator's own figures, the spike, and
    what each operation costs alone."""
    lines = [
        f"Open model, Poisson arrivals, {conditions['step_seconds']:g} s per step; SLO p99 < "
        f"{SLO_P99_MS:.0f} ms and errors < {SLO_ERROR_RATIO:.1%} (latency from the intended "
        "send time). " + conditions["summary"],
        "",
        "| case | highest rate that holds | first miss | p50 ms | p99 ms | server CPU "
        "| server CPU µs/req | generator CPU | generator lag p99 ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for case in done:
        r = case.result
        step = _capacity_step(r)
        held = _fmt(r.get("capacity")) + " /s"
        if r["generator_bound"]:
            held = f"≥ {held} (then the generator fell behind)"
        if step is None:
            lines.append(f"| {case.label} | {held} | {_fmt(r.get('first_miss'))} /s | | | | | | |")
            continue
        per_request = step["server_cpu"] / step["throughput"] * 1e6 if step["throughput"] else None
        lines.append(
            f"| {case.label} | {held} | {_fmt(r.get('first_miss'))} /s | {step['p50_ms']:.1f} "
            f"| {_fmt(step['p99_ms'], 1)} | {step['server_cpu']:.0%} | {_fmt(per_request)} "
            f"| {step['generator_cpu']:.0%} "
            f"| {step['lag_p99_ms']:.1f} |"
        )
    most = max((s for case in done for s in case.result["steps"]), key=lambda s: s["generator_cpu"])
    lines += [
        "",
        f"The generator's busiest step used {most['generator_cpu']:.0%} of its CPU "
        f"({most['rate']:,.0f} /s offered, lag p99 {most['lag_p99_ms']:.1f} ms).",
    ]
    for run in spikes:
        whole, info = run["whole"], run["spike"]
        lines += [
            "",
            f"Spike (one worker, {run['label']}): {run['schedule'][0]['rate']:,.0f} /s, then "
            f"{info['rate']:,.0f} /s from {info['start']:g} s to {info['end']:g} s, then "
            f"{run['schedule'][2]['rate']:,.0f} /s: {whole['offered']:,} requests, "
            f"{whole['error_ratio']:.2%} errors "
            f"({', '.join(f'{k}: {v}' for k, v in whole['errors'].items()) or 'none'}); "
            + (
                f"recovered {run['recovery_s']:g} s after the spike."
                if run["recovery_s"] is not None
                else "not recovered by the end of the run "
                f"({_late(run['timeline'], info['end'])} of the "
                f"{len(run['timeline']) - int(info['end'])} seconds after the spike over the SLO)."
            ),
        ]
    if costs:
        total = sum(FUNDS_MIX.values())
        lines += [
            "",
            f"Each operation alone on the one-worker example ({OPERATION_RATE:g} requests per "
            "second):",
            "",
            "| operation | share of the mix | server CPU µs per request | p50 ms | p99 ms |",
            "|---|---:|---:|---:|---:|",
        ]
        for name, cost in costs.items():
            lines.append(
                f"| `{name}` | {FUNDS_MIX[name] / total:.0%} | {_fmt(cost['cpu_us'])} "
                f"| {_fmt(cost['p50_ms'], 1)} | {_fmt(cost['p99_ms'], 1)} |"
            )
    return "\n".join(lines)


def _late(timeline: Sequence[dict[str, Any]], after: float) -> int:
    """Seconds from ``after`` on whose p99 missed the SLO."""
    return sum(
        1
        for row in timeline
        if row["second"] >= after and (row["p99_ms"] is None or row["p99_ms"] >= SLO_P99_MS)
    )


def plot(
    done: Sequence[Case],
    spikes: Sequence[dict[str, Any]],
    out: Path,
    note: str,
    suffix: str = ".svg",
) -> list[Path]:
    """``capacity.svg`` (p50 and p99 against offered load) and ``capacity-spike.svg``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    plt.rcParams.update({"svg.fonttype": "none", "svg.hashsalt": "prodkit", "font.size": 9})
    written = []
    fig, axis = plt.subplots(figsize=(9, 5.2))
    for index, case in enumerate(done):
        color = f"C{index}"
        steps = [s for s in case.result["steps"] if s["p99_ms"] is not None]
        rates = [s["rate"] for s in steps]
        axis.plot(rates, [s["p99_ms"] for s in steps], "o-", color=color, ms=3, label=case.label)
        axis.plot(rates, [s["p50_ms"] for s in steps], "--", color=color, lw=1)
        held = _capacity_step(case.result)
        if held is not None:
            axis.plot([held["rate"]], [held["p99_ms"]], "*", color=color, ms=11)
    axis.axhline(SLO_P99_MS, color="grey", lw=0.8, ls=":")
    axis.text(
        0.99, SLO_P99_MS * 1.08, "p99 target", color="grey", ha="right",
        transform=axis.get_yaxis_transform(),
    )  # fmt: skip
    axis.set_xscale("log")
    axis.set_yscale("log")
    for scale in (axis.xaxis, axis.yaxis):
        scale.set_major_formatter(ticker.FuncFormatter(lambda value, _: f"{value:,.0f}"))
    axis.set_xlabel("offered load (requests per second, open model)")
    axis.set_ylabel("latency from intended send time (ms)")
    axis.set_title("p99 (solid) and p50 (dashed) against offered load; ★ highest rate that holds")
    axis.legend(loc="upper left", fontsize=8)
    fig.text(0.01, 0.005, note, fontsize=7, color="grey")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    path = out / f"capacity{suffix}"
    fig.savefig(path, metadata={"Date": None})
    plt.close(fig)
    written.append(path)
    if spikes:
        fig, axis = plt.subplots(figsize=(9, 5.2))
        ceiling = 2 * max(
            [r["p99_ms"] for run in spikes for r in run["timeline"] if r["p99_ms"] is not None]
            or [1.0]
        )
        for index, run in enumerate(spikes):
            timeline = run["timeline"]
            seconds = [row["second"] for row in timeline]
            p99 = [ceiling if row["p99_ms"] is None else row["p99_ms"] for row in timeline]
            recovered = (
                f"recovered after {run['recovery_s']:g} s"
                if run["recovery_s"] is not None
                else "not recovered"
            )
            axis.plot(
                seconds, p99, "-", color=f"C{index}", label=f"p99, {run['label']}: {recovered}"
            )
            if run["recovery_s"] is not None:
                axis.axvline(
                    run["spike"]["end"] + run["recovery_s"], color=f"C{index}", lw=0.8, ls=":"
                )
        info = spikes[0]["spike"]
        axis.axvspan(info["start"], info["end"], color="C3", alpha=0.1, label="spike")
        axis.axhline(SLO_P99_MS, color="grey", lw=0.8, ls=":")
        axis.set_yscale("log")
        axis.yaxis.set_major_formatter(ticker.FuncFormatter(lambda value, _: f"{value:,.0f}"))
        axis.set_xlabel("seconds (by intended send time)")
        axis.set_ylabel("p99 latency (ms); at the top: over 1 % failed")
        offered = axis.twinx()
        timeline = spikes[0]["timeline"]
        offered.bar(
            [row["second"] for row in timeline], [row["offered"] for row in timeline],
            width=1.0, align="edge", color="black", alpha=0.08, label="offered",
        )  # fmt: skip
        offered.set_ylabel("requests offered per second")
        axis.set_zorder(offered.get_zorder() + 1)
        axis.patch.set_visible(False)
        lines, labels = axis.get_legend_handles_labels()
        more, more_labels = offered.get_legend_handles_labels()
        axis.legend(
            lines + more, labels + more_labels, loc="upper center", bbox_to_anchor=(0.5, -0.13),
            ncol=2, fontsize=8, frameon=False,
        )  # fmt: skip
        axis.set_title(
            f"spike to {info['rate']:,.0f} /s on the example (PostgreSQL + Redis, one worker)"
        )
        fig.text(0.01, 0.005, note, fontsize=7, color="grey")
        fig.tight_layout(rect=(0, 0.03, 1, 1))
        path = out / f"capacity-spike{suffix}"
        fig.savefig(path, metadata={"Date": None})
        plt.close(fig)
        written.append(path)
    return written


def conditions(pinning: Pinning | None, seconds: float) -> dict[str, Any]:
    """What the figures were measured on."""
    load = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else []
    where = (
        f"generator on CPU {pinning.generator}, servers on CPU {pinning.server} (taskset)"
        if pinning
        else "unpinned (one CPU)"
    )
    return {
        "cpus": os.cpu_count(),
        "pinning": where,
        "load_average_at_start": load,
        "python": platform.python_version(),
        "versions": {
            name: version(name) for name in ("uvicorn", "httptools", "uvloop", "starlette")
        },
        "step_seconds": seconds,
        "summary": (
            f"{os.cpu_count()} CPUs, {where}; CPython {platform.python_version()}, uvicorn "
            f"{version('uvicorn')} (uvloop, httptools); load average at start "
            f"{' '.join(load) or 'unknown'}."
        ),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks capacity", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--seconds", type=float, default=5.0, help="per step (default 5)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img", help="plots here")
    parser.add_argument("--report", type=Path, help="also write the Markdown report here")
    parser.add_argument("--json", type=Path, help="write every figure here")
    parser.add_argument("--generator-cpu", type=int, help="default: the first CPU")
    parser.add_argument("--server-cpus", help="taskset list, default: every other CPU")
    parser.add_argument(
        "--only",
        action="append",
        help="run the cases whose label contains this (also those not run by default: "
        "granian, the generator's ceiling)",
    )
    parser.add_argument("--no-spike", action="store_true")
    parser.add_argument("--no-costs", action="store_true", help="skip each operation alone")
    parser.add_argument("--quick", action="store_true", help="2 s steps, one bisection")
    args = parser.parse_args(argv)
    seconds = 2.0 if args.quick else args.seconds
    pinning = Pinning.choose(args.generator_cpu, args.server_cpus)
    if pinning is not None:
        # This process mostly waits; it stays off the servers' CPUs.
        os.sched_setaffinity(0, {int(pinning.generator)})
    for path in (args.report, args.json):
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    found = conditions(pinning, seconds)
    print(found["summary"], file=sys.stderr)
    selected = [
        case
        for case in cases()
        if (case.default and not args.only) or any(o in case.label for o in args.only or ())
    ]
    search = ["--search", "--seconds", f"{seconds:g}", "--refine", "1" if args.quick else "2"]
    spikes: list[dict[str, Any]] = []
    costs: dict[str, dict[str, float | None]] = {}
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="prodkit-capacity-") as tmp:
        for case in selected:
            print(f"\n{case.label}", file=sys.stderr)
            with serving(case, pinning, Path(tmp)) as server:
                case.result = run_generator(
                    server.base_url,
                    case.workload,
                    [*search, "--start", f"{case.start:g}"],
                    pinning,
                    server.pid,
                )
                capacity = case.result.get("capacity")
                first = case.label == cases()[0].label
                if first and not args.no_costs:
                    print(f"\neach operation alone on {case.label}", file=sys.stderr)
                    time.sleep(3)  # the server finishes what the last step's clients gave up on
                    costs = operation_costs(server, pinning, min(seconds, 3.0))
                if first and capacity and not args.no_spike:
                    print(f"\nspike on {case.label}", file=sys.stderr)
                    time.sleep(3)
                    spikes.append(
                        spike(
                            server,
                            capacity,
                            pinning,
                            seconds,
                            f"MAX_CONCURRENCY unset ({DEFAULT_MAX_CONCURRENCY})",
                        )
                    )
            if first and capacity and not args.no_spike:
                # The same spike with the in-flight limit the capacity serves within the target.
                limit = bounded_limit(capacity)
                bounded = replace(case, env={**case.env, "MAX_CONCURRENCY": str(limit)})
                print(f"\nspike with MAX_CONCURRENCY={limit}", file=sys.stderr)
                with serving(bounded, pinning, Path(tmp)) as server:
                    label = f"MAX_CONCURRENCY={limit} (capacity x 200 ms)"
                    spikes.append(spike(server, capacity, pinning, seconds, label))
    found["minutes"] = round((time.monotonic() - started) / 60, 1)
    text = report(selected, spikes, found, costs)
    print(text)
    if args.report:
        args.report.write_text(text + "\n")
    note = found["summary"]
    for path in plot(selected, spikes, args.out, note):
        print(
            f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}",
            file=sys.stderr,
        )
    if args.json:
        figures = {
            "conditions": found,
            "cases": {case.label: case.result for case in selected},
            "spikes": spikes,
            "operation_costs": costs,
        }
        args.json.write_text(json.dumps(figures, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
