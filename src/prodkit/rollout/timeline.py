"""Draw a deployment record as a timeline: canary weight and error ratios over time.

Needs matplotlib (``pip install matplotlib``); it is imported only when a timeline is drawn.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prodkit._core.drivers import require


def plot_timeline(record: dict[str, Any], path: str | Path, *, title: str | None = None) -> Path:
    """Render one deployment record (a line of the JSON-lines file) to a PNG at ``path``.

    The top panel shows the canary's share of traffic as a step line; the bottom one the 5xx
    ratio of canary and baseline at every check, with the ``max_error_ratio`` threshold and a
    marker for each step's verdict.
    """
    matplotlib = require("matplotlib", "plot")
    matplotlib.use("Agg")
    pyplot: Any = require("matplotlib.pyplot", "plot")

    observations = record.get("observations", [])
    steps = record.get("steps", [])
    duration = float(record.get("duration_seconds") or 0.0)
    fig, (top, bottom) = pyplot.subplots(
        2, 1, sharex=True, figsize=(8, 5), gridspec_kw={"height_ratios": [1, 1.4]}
    )
    xs: list[float] = [0.0]
    weights: list[float] = [0.0]
    for step in steps:
        xs.append(float(step["started_at_seconds"]))
        weights.append(float(step["percent"]))
    xs.append(duration)
    weights.append(float(record.get("final_canary_weight") or 0))
    top.step(xs, weights, where="post", color="tab:blue", linewidth=2)
    top.set_ylabel("canary weight (%)")
    top.set_ylim(-5, 105)
    top.set_yticks([0, 25, 50, 75, 100])
    top.grid(alpha=0.3)

    for name, colour in (("canary", "tab:red"), ("baseline", "tab:green")):
        points = [
            (float(o["t"]), float(o[name]["error_ratio"]))
            for o in observations
            if o.get(name) and o[name].get("error_ratio") is not None
        ]
        if points:
            bottom.plot(*zip(*points, strict=True), marker="o", color=colour, label=name)
        if name == "baseline" and points:
            increase = float(record.get("policy", {}).get("max_error_ratio_increase", 0.0))
            bottom.plot(
                [t for t, _ in points],
                [ratio + increase for _, ratio in points],
                linestyle=":",
                color=colour,
                label=f"baseline + max_error_ratio_increase {increase:g}",
            )
    threshold = float(record.get("policy", {}).get("max_error_ratio", 0.0))
    bottom.axhline(threshold, color="grey", linestyle="--", label=f"max_error_ratio {threshold:g}")
    for step in steps:
        end = float(step["started_at_seconds"]) + float(step.get("bake_seconds") or 0.0)
        ok = step.get("verdict") == "pass"
        bottom.axvline(end, color="tab:green" if ok else "tab:red", alpha=0.4)
        top.annotate(
            "pass" if ok else "FAIL",
            (end, float(step["percent"])),
            textcoords="offset points",
            xytext=(-12, 6),
            fontsize=8,
            color="tab:green" if ok else "tab:red",
        )
    bottom.set_ylim(bottom=-0.005)
    bottom.set_ylabel("5xx ratio in bake window")
    bottom.set_xlabel("seconds since the rollout started")
    bottom.grid(alpha=0.3)
    bottom.legend(loc="upper left", fontsize=8)
    outcome = record.get("outcome", "?")
    version = record.get("version") or "canary"
    fig.suptitle(title or f"rollout of {version}: {outcome}")
    fig.tight_layout()
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(target, dpi=110)
    pyplot.close(fig)
    return target


__all__ = ["plot_timeline"]
