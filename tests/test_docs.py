"""Every Python block of README.md and docs/ runs as written, in a fresh interpreter.

The rules a page follows (CONTRIBUTING.md repeats them for writers):

* A ```` ```python ```` block runs alone, imports included, in a new ``python`` process whose
  working directory is an empty temporary folder.
* A block whose first line is ``# continued`` is not run alone: it is appended to the block
  before it on the same page (a chain runs as one program), for pages that explain a program in
  steps.
* A block whose first line is ``# fragment: <why>`` is only shown, never run. At most one block
  in five may be a fragment.
* A ```` ```text title="output" ```` block right after a python block is what that chain prints:
  the chain's standard output must match it (``...`` stands for any text, as in doctest).
* A chain that names ``DATABASE_URL`` gets a database created for this test run on the
  ``PRODKIT_TEST_DATABASE_URL`` server and dropped after it; one that names ``REDIS_URL`` gets
  ``PRODKIT_TEST_REDIS_URL``. Without the server the chain is skipped (failed under
  ``CI=true``), as the other PostgreSQL and Redis tests. A block that writes to Redis deletes
  what it wrote.

Blocks drive their app in-process (``httpx.ASGITransport``), so no server is needed; a page that
shows a server command shows it as a shell block.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CONTINUED = "# continued"
FRAGMENT = "# fragment:"
#: At most one block in this many may be a fragment.
FRAGMENT_RATIO = 5
#: The variables a chain never inherits from the shell that runs the tests: a chain that names
#: one gets it from the fixture (and is skipped, or failed under CI=true, without the service).
SERVICE_FIXTURES = {"DATABASE_URL": "postgres_dsn", "REDIS_URL": "redis_url"}
BLOCK_TIMEOUT_SECONDS = 120

FENCE = re.compile(
    r"^(?P<indent>[ \t]*)```(?P<info>[^\n`]*)\n(?P<body>.*?)^(?P=indent)```[ \t]*$",
    re.MULTILINE | re.DOTALL,
)


@dataclass
class Chain:
    """One program: a python block and the ``# continued`` blocks after it."""

    page: Path
    line: int
    code: str
    lines: list[int] = field(default_factory=list)
    #: What the chain's blocks print, one output block each (those that show one), in order.
    outputs: list[str] = field(default_factory=list)

    @property
    def id(self) -> str:
        return f"{_name(self.page)}:{self.line}"


@dataclass
class Page:
    """What one page holds: its runnable chains, and how many blocks and fragments it has."""

    chains: list[Chain]
    blocks: int
    fragments: list[str]


def pages() -> list[Path]:
    """README.md and every Markdown page under docs/, whoever wrote it."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def _name(page: Path) -> str:
    return str(page.relative_to(ROOT)) if page.is_relative_to(ROOT) else page.name


def _dedent(body: str, indent: str) -> str:
    return "\n".join(line.removeprefix(indent) for line in body.splitlines()) + "\n"


def parse(page: Path) -> Page:
    """Split a page into chains, following the continuation and fragment markers."""
    text = page.read_text()
    chains: list[Chain] = []
    blocks = 0
    fragments: list[str] = []
    previous: Chain | None = None  # the chain the last python block belongs to
    last_fence = ("", -1)  # the language and the end of the fence before this one
    for match in FENCE.finditer(text):
        language = match["info"].strip().split(" ", 1)[0]
        line = text.count("\n", 0, match.start()) + 1
        code = _dedent(match["body"], match["indent"])
        first = code.lstrip("\n").split("\n", 1)[0].strip()
        after, last_fence = last_fence, (language, match.end())
        if language == "text" and 'title="output"' in match["info"]:
            if previous is None or after[0] != "python" or text[after[1] : match.start()].strip():
                raise AssertionError(
                    f"{_name(page)}:{line}: an output block must follow a runnable python block"
                )
            previous.outputs.append(code)
            continue
        if language != "python":
            continue  # a shell, JSON or SQL block between two python blocks keeps the chain
        blocks += 1
        if first.startswith(FRAGMENT):
            if not first.removeprefix(FRAGMENT).strip():
                raise AssertionError(f"{_name(page)}:{line}: say why it is a fragment")
            fragments.append(f"{_name(page)}:{line}")
            previous = None
            last_fence = ("fragment", match.end())
        elif first.startswith(CONTINUED):
            if previous is None:
                raise AssertionError(
                    f"{_name(page)}:{line}: '# continued' needs a runnable python "
                    "block before it on the same page"
                )
            previous.code += "\n" + code
            previous.lines.append(line)
        else:
            previous = Chain(page, line, code, lines=[line])
            chains.append(previous)
    return Page(chains, blocks, fragments)


PARSED = {page: parse(page) for page in pages()}
CHAINS = [chain for page in PARSED.values() for chain in page.chains]


def test_at_most_one_block_in_five_is_a_fragment() -> None:
    blocks = sum(page.blocks for page in PARSED.values())
    fragments = [name for page in PARSED.values() for name in page.fragments]
    assert blocks > 0
    assert len(fragments) * FRAGMENT_RATIO <= blocks, (
        f"{len(fragments)} of {blocks} python blocks are fragments: {fragments}"
    )


def test_the_collector_follows_the_markers() -> None:
    # The markers decide what runs: a regression here would silently run less.
    text = (
        "```python\nx = 1\n```\n\ntext\n\n```python\n# continued\nprint(x)\n```\n"
        '```text title="output"\n1\n```\n\n'
        "```python\n# fragment: shows a signature\nf(...)\n```\n"
        "```sh\necho no\n```\n"
        "- a list item:\n\n  ```python\n  y = 2\n  ```\n"
    )
    with tempfile.TemporaryDirectory() as folder:
        page = Path(folder) / "page.md"
        page.write_text(text)
        parsed = parse(page)
    assert parsed.blocks == 4
    assert len(parsed.fragments) == 1
    assert [chain.code for chain in parsed.chains] == [
        "x = 1\n\n# continued\nprint(x)\n",
        "y = 2\n",
    ]
    assert parsed.chains[0].outputs == ["1\n"]
    assert parsed.chains[0].lines == [1, 7]


def _matches(expected: str, actual: str) -> bool:
    pattern = ".*?".join(re.escape(part) for part in expected.strip().split("..."))
    return re.fullmatch(pattern, actual.strip(), re.DOTALL) is not None


def test_output_matching_reads_ellipsis_as_any_text() -> None:
    assert _matches("200 ...\nend\n", "200 abc\ndef\nend")
    assert not _matches("200 ...\nend\n", "500 abc\nend")
    assert not _matches("a\n", "a\nb\n")


def _environment(code: str, request: pytest.FixtureRequest) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in SERVICE_FIXTURES}
    for name, fixture in SERVICE_FIXTURES.items():
        if name in code:
            # A database created for this run and dropped after it: what a block writes to
            # PostgreSQL goes with it.
            env[name] = str(request.getfixturevalue(fixture))
    return env


@pytest.mark.parametrize("chain", CHAINS, ids=[chain.id for chain in CHAINS])
def test_block_runs_as_written(chain: Chain, request: pytest.FixtureRequest) -> None:
    env = _environment(chain.code, request)
    with tempfile.TemporaryDirectory(prefix="prodkit-docs-") as folder:
        result = subprocess.run(
            [sys.executable, "-c", chain.code],
            cwd=folder,
            env=env,
            capture_output=True,
            text=True,
            timeout=BLOCK_TIMEOUT_SECONDS,
            check=False,
        )
    where = f"{_name(chain.page)}, blocks at lines {chain.lines}"
    assert result.returncode == 0, f"{where} failed:\n{result.stderr}"
    if chain.outputs:
        expected = "".join(chain.outputs)
        assert _matches(expected, result.stdout), (
            f"{where} printed:\n{result.stdout}\nbut the page shows:\n{expected}"
        )
