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

import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.servers import free_port, run_server

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


# -- Quickstarts: one JSON access line per request, and no secret in any output ----------------
# Issue 21 item 5 and issue 22 item 2. Every quickstart (README, the index, getting started, the
# framework pages) is run with a secret planted in every request (``Authorization: Bearer``,
# ``?api_key=``) and a route added that fails the way an HTTP client does, with that secret in
# its message and in a local variable; Rich is installed (Litestar depends on it), so a renderer
# of frames' locals would show it. Everything the program writes, stdout and stderr, is searched.

#: The pages whose python blocks are quickstarts.
QUICKSTART_PAGES = ("README.md", "docs/index.md", "docs/getting-started.md", "docs/frameworks/")
#: The planted secret: a fake live key that must never reach any output.
PLANTED = "sk_live_planted-fake-secret-42"
#: The requests each quickstart gets: an ordinary one, the failing route, a 404.
PROBED_PATHS = ("/items/1", "/charge", "/nowhere")
#: A framework page's own demo driver, left out: the probe sends its own requests.
DEMO_DRIVER = re.compile(r"^asyncio\.run\(main\(\)\)\n", re.MULTILINE)

#: Appended to a quickstart: a route that fails like ``raise_for_status()`` on a refused call,
#: added through the framework's own API (a raw ASGI app is wrapped instead).
FAILING_ROUTE = f"""
# -- added by tests/test_docs.py ------------------------------------------------------------
import httpx as _httpx

_SECRET = {PLANTED!r}


def _call_upstream():
    upstream_key = _SECRET  # a local variable: only a renderer of frames' locals shows it
    url = f"https://api.example.com/v1/charges?api_key={{upstream_key}}"
    _httpx.Response(401, request=_httpx.Request("GET", url)).raise_for_status()


def _add_failing_route(top):
    holder, inner = None, top
    while type(inner).__module__.startswith("prodkit"):  # the stack, then its layers
        holder, inner = inner, inner.app
    family = type(inner).__module__.split(".")[0]
    if family in ("starlette", "fastapi"):
        from starlette.routing import Route

        async def charge(request):
            _call_upstream()

        inner.router.routes.insert(0, Route("/charge", charge))
    elif family == "litestar":
        from litestar import get

        @get("/charge")
        async def charge() -> None:
            _call_upstream()

        inner.register(charge)
    elif family == "quart":
        async def charge():
            _call_upstream()

        inner.add_url_rule("/charge", "charge", charge)
    elif family == "django":
        from django.urls import get_resolver, path

        async def charge(request):
            _call_upstream()

        get_resolver().url_patterns.append(path("charge", charge))
    else:  # a raw ASGI callable: fail in its place
        async def failing(scope, receive, send):
            if scope["type"] == "http" and scope["path"] == "/charge":
                _call_upstream()
            await inner(scope, receive, send)

        holder.app = failing


_add_failing_route(app)
"""

#: Appended after :data:`FAILING_ROUTE` to drive the quickstart in-process.
IN_PROCESS_REQUESTS = f"""
import asyncio as _asyncio
import sys as _sys


async def _probe():
    transport = _httpx.ASGITransport(app=app, raise_app_exceptions=False)
    headers = {{"Authorization": f"Bearer {{_SECRET}}"}}
    statuses = []
    async with _httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        for path in {PROBED_PATHS!r}:
            response = await client.get(f"{{path}}?api_key={{_SECRET}}", headers=headers)
            statuses.append(response.status_code)
    print("probe statuses:", *statuses, file=_sys.stderr)
    if hasattr(app, "aclose"):
        await app.aclose()


_asyncio.run(_probe())
"""

QUICKSTARTS = [chain for chain in CHAINS if _name(chain.page).startswith(QUICKSTART_PAGES)]


def _access_lines(output: str) -> list[dict[str, object]]:
    """The access lines in ``output``; every line that mentions one must be a JSON line."""
    lines = [line for line in output.splitlines() if "request completed" in line]
    parsed = []
    for line in lines:
        try:
            parsed.append(json.loads(line))
        except ValueError:
            raise AssertionError(f"an access line that is not JSON: {line!r}") from None
    return parsed


def test_every_quickstart_page_is_probed() -> None:
    pages = {_name(chain.page) for chain in QUICKSTARTS}
    assert {"README.md", "docs/index.md", "docs/getting-started.md"} <= pages
    assert len([page for page in pages if page.startswith("docs/frameworks/")]) >= 6


@pytest.mark.parametrize("chain", QUICKSTARTS, ids=[chain.id for chain in QUICKSTARTS])
def test_quickstart_writes_one_json_access_line_per_request_and_no_secret(
    chain: Chain, request: pytest.FixtureRequest
) -> None:
    code = DEMO_DRIVER.sub("", chain.code) + FAILING_ROUTE + IN_PROCESS_REQUESTS
    env = _environment(code, request)
    with tempfile.TemporaryDirectory(prefix="prodkit-quickstart-") as folder:
        result = subprocess.run(
            [sys.executable, "-c", code],
            cwd=folder,
            env=env,
            capture_output=True,
            text=True,
            timeout=BLOCK_TIMEOUT_SECONDS,
            check=False,
        )
    where = f"{_name(chain.page)}, blocks at lines {chain.lines}"
    assert result.returncode == 0, f"{where} failed:\n{result.stderr}"
    output = result.stdout + result.stderr
    assert PLANTED not in output, f"{where} wrote the secret:\n{output}"
    assert "upstream_key" not in output, f"{where} rendered a frame's locals:\n{output}"
    [statuses] = [
        [int(s) for s in line.split()[2:]]
        for line in result.stderr.splitlines()
        if line.startswith("probe statuses:")
    ]
    assert statuses[1] == 500
    access = _access_lines(output)
    assert [(line["path"], line["status"]) for line in access] == list(
        zip(PROBED_PATHS, statuses, strict=True)
    ), f"{where}: not one access line per request:\n{output}"
    # The failure was logged once, with its traceback, redacted.
    assert "api_key=[REDACTED]" in output
    assert "HTTPStatusError" in output


@pytest.mark.server
def test_the_index_quickstart_under_uvicorn_writes_one_json_access_line_per_request(
    tmp_path: Path,
) -> None:
    # The quickstart served as the page says (`uvicorn main:app`): uvicorn's own access line
    # (raw query string included) must not double prodkit's.
    [chain] = [chain for chain in QUICKSTARTS if _name(chain.page) == "docs/index.md"]
    (tmp_path / "main.py").write_text(chain.code + FAILING_ROUTE)
    port = free_port()
    args = ["uvicorn", "main:app", "--host", "127.0.0.1", "--port", str(port)]
    env = {"PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT / "src")])}
    with run_server(args, port=port, tmp_path=tmp_path, env=env) as server:
        headers = {"Authorization": f"Bearer {PLANTED}"}
        statuses = [
            httpx.get(
                f"{server.base_url}{path}?api_key={PLANTED}", headers=headers, timeout=20
            ).status_code
            for path in PROBED_PATHS
        ]
    output = server.output()
    assert PLANTED not in output
    assert "upstream_key" not in output
    assert statuses[1] == 500
    access = _access_lines(output)
    assert [(line["path"], line["status"]) for line in access] == list(
        zip(PROBED_PATHS, statuses, strict=True)
    )
    assert not [line for line in output.splitlines() if '"GET /' in line]  # uvicorn's own
