"""``python -m examples.funds``: its help, and the starts it refuses (issues #21 and #22)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from examples.funds.__main__ import CONFIGURATION_PAGE, environment_help
from tests.servers import ROOT, free_port, server_env


def run_example(
    tmp_path: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the example until it exits (bounded)."""
    return subprocess.run(
        [sys.executable, "-m", "examples.funds", "--port", str(free_port()), *args],
        cwd=ROOT,
        env=server_env({"TMPDIR": str(tmp_path), "LOG_LEVEL": "WARNING", **(env or {})}),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def documented_variables() -> list[str]:
    """Every variable named in the first column of the page's Configuration table."""
    section = CONFIGURATION_PAGE.read_text().partition("\n## Configuration\n")[2]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    return [name for row in rows for name in re.findall(r"`([A-Z][A-Z0-9_]+)`", row.split("|")[1])]


def test_help_lists_every_environment_variable_from_the_one_table(tmp_path: Path) -> None:
    completed = run_example(tmp_path, "--help")
    assert completed.returncode == 0
    variables = documented_variables()
    assert {"DATABASE_URL", "REDIS_URL", "RATE_LIMIT", "ALLOW_PER_WORKER_DATA"} <= set(variables)
    for name in variables:
        assert re.search(rf"^  .*\b{name}\b", completed.stdout, re.MULTILINE), name
    assert "--workers" in completed.stdout


def test_help_without_the_page_points_to_it(tmp_path: Path) -> None:
    assert environment_help(tmp_path / "missing.md") == "environment variables: see docs/example.md"


@pytest.mark.parametrize(
    ("env", "named"),
    [
        # Issue #21: on PostgreSQL without Redis, a DELETE on one worker left the fund served
        # from the other worker's memory cache.
        ({"DATABASE_URL": "postgresql://postgres@127.0.0.1:9/funds"}, "REDIS_URL"),
        ({}, "DATABASE_URL"),
    ],
)
def test_several_workers_on_a_per_process_store_are_refused(
    tmp_path: Path, env: dict[str, str], named: str
) -> None:
    completed = run_example(tmp_path, "--workers", "2", env=env)
    assert completed.returncode == 3
    lines = completed.stderr.strip().splitlines()
    assert len(lines) == 1, completed.stderr
    assert named in lines[0]
    assert "ALLOW_PER_WORKER_DATA=1" in lines[0]  # and how to accept it for a demo
