"""The load-test command works end to end (a 5-second baseline on the in-memory example)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.servers import ROOT, server_env


@pytest.mark.server
def test_load_command_runs_and_reports(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tests.load.run", "--backend", "memory", "--scenario", "baseline",
         "--baseline-seconds", "5", "--out", str(tmp_path)],
        cwd=ROOT, env=server_env(), capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "| memory | baseline |" in result.stdout
    assert (tmp_path / "memory-baseline.png").stat().st_size > 10_000
    assert "pass" in (tmp_path / "summary.md").read_text()
