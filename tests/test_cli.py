"""The ``prodkit`` command line: its version, its help, and starts of ``prodkit serve`` that fail.

Serving itself (real server processes under load, attacks, logs) is in ``tests/serving/``.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import prodkit
from prodkit.cli import build_parser, main
from tests.servers import ROOT, free_port, server_env

SUBCOMMANDS = ["rollout", "rollout-timeline", "serve"]


def _help(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    with pytest.raises(SystemExit) as exited:
        main([*args, "--help"])
    assert exited.value.code == 0
    return capsys.readouterr().out


def _option_entries(help_text: str) -> dict[str, str]:
    """``{first flag: its description}`` for every option in an argparse help text."""
    entries: dict[str, str] = {}
    flag = ""
    for line in help_text.splitlines():
        if re.match(r"  -", line):
            flag = line.split()[0].rstrip(",")
            entries[flag] = line
        elif flag and line.startswith("    "):
            entries[flag] += " " + line.strip()
        else:
            flag = ""
    return {flag: " ".join(text.split()) for flag, text in entries.items()}


def test_version_prints_the_installed_distributions(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.strip() == f"prodkit {prodkit.__version__}"


def test_the_top_level_help_lists_the_subcommands(capsys: pytest.CaptureFixture[str]) -> None:
    text = _help(capsys)
    assert all(name in text for name in SUBCOMMANDS)
    assert "--version" in text


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_every_flag_says_what_it_does_and_its_default(
    capsys: pytest.CaptureFixture[str], name: str
) -> None:
    entries = _option_entries(_help(capsys, name))
    assert len(entries) > 2, entries
    for flag, text in entries.items():
        if flag == "-h":
            continue
        assert "(default: " in text or "(required)" in text, f"prodkit {name} {flag}: {text}"


def test_serve_defaults_are_the_documented_bounds() -> None:
    args = build_parser().parse_args(["serve", "myservice.main:app"])
    assert (args.host, args.port, args.workers, args.server) == ("127.0.0.1", 8000, 1, "uvicorn")
    assert (args.max_head_bytes, args.max_headers, args.keep_alive) == (32768, 100, 5)


def _serve(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """Run ``prodkit serve`` until it exits (bounded); its status, stdout and stderr."""
    completed = subprocess.run(
        [sys.executable, "-m", "prodkit.cli", "serve", *args, "--port", str(free_port())],
        cwd=ROOT,
        env=server_env({"TMPDIR": str(tmp_path), "LOG_LEVEL": "WARNING", **(env or {})}),
        capture_output=True,
        timeout=60,
        check=False,
    )
    return completed.returncode, completed.stdout.decode(), completed.stderr.decode()


@pytest.mark.parametrize(
    ("args", "env", "named"),
    [
        (["examples.funds.app:create_app", "--factory"], {"RATE_LIMIT": "plenty"}, "RATE_LIMIT"),
        (["not an app"], {}, "module:attribute"),
        (["examples.funds.app:create_app", "--workers", "0"], {}, "workers"),
        (
            ["examples.funds.app:create_app", "--server", "hypercorn", "--workers", "2"],
            {},
            "hypercorn",
        ),
        # Several workers on per-process memory stores (issue #21): refused unless told.
        (
            ["examples.funds.app:create_app", "--factory", "--workers", "2"],
            {"DATABASE_URL": "postgresql://u@127.0.0.1:9/db"},
            "REDIS_URL",
        ),
        (["examples.funds.app:create_app", "--factory", "--workers", "2"], {}, "Idempotency"),
    ],
)
def test_a_wrong_setting_stops_the_start_with_status_3_and_one_line(
    tmp_path: Path, args: list[str], env: dict[str, str], named: str
) -> None:
    status, _, stderr = _serve(tmp_path, *args, env=env)
    assert status == 3
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("prodkit serve: ")
    assert named in lines[0]
    assert not list(tmp_path.iterdir())  # no metrics folder made for a start that failed
