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

import asyncio
import functools
import html
import http.server
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

from tests.conftest import unavailable
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


# -- The built site: pictures that render, reference pages without reStructuredText ------------
#
# The site is built once per run (``mkdocs build --strict`` into a temporary folder) and read
# the way a reader gets it: the pictures in a real headless browser with no network beyond
# loopback, the reference pages as HTML.

#: The diagrams, as pictures on their pages (Markdown source -> picture).
DIAGRAMS = {"index.md": "img/request-path.svg", "shutdown.md": "img/shutdown-sequence.svg"}
#: The picture of a request's path, whose layer ids follow the recommended stack.
REQUEST_PATH = ROOT / "docs" / DIAGRAMS["index.md"]
#: Layers the request-path picture leaves out: ``/metrics`` is answered there, off the path.
NOT_DRAWN = {"metrics_endpoint"}
SITE_BUILD_TIMEOUT_SECONDS = 300
BROWSER_TIMEOUT_SECONDS = 120
#: The browsers tried, Debian's package first (``apt-get install chromium``; .ci/run does).
BROWSERS = ("chromium", "chromium-browser")
IMAGE = re.compile(r"!\[[^\]]*\]\((?P<src>[^)\s]+)")
#: A Sphinx role or a literal-block marker left as text in the HTML.
RESTRUCTUREDTEXT = re.compile(
    r":(?:py:)?(?:class|func|meth|mod|data|attr|exc|obj|const|type):(?:<code>|`)|<p>[^<]*::</p>"
)
PRODKIT_PAGE = ROOT / "docs" / "reference" / "prodkit.md"


def _url(page: Path) -> str:
    """Where mkdocs puts a page (``shutdown.md`` -> ``shutdown/index.html``)."""
    path = page.relative_to(ROOT / "docs").with_suffix("")
    folder = path.parent if path.name == "index" else path
    return "/" + str(folder / "index.html").removeprefix("./")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The documentation as ``mkdocs build --strict`` writes it, in a temporary folder."""
    folder = tmp_path_factory.mktemp("site")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(folder)],
        cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=SITE_BUILD_TIMEOUT_SECONDS,
        check=False,
    )
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stderr}"
    return folder


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass  # the test reports what the browser saw, not every file it fetched


#: Runs in the browser once every page (each in its own frame) has loaded: what each page's
#: article shows, as JSON in ``<pre id="result">``.
PROBE_SCRIPT = """
addEventListener("load", () => {
  const pages = [...document.querySelectorAll("iframe")].map((frame) => {
    const article = frame.contentDocument.querySelector("article");
    return {
      page: frame.getAttribute("src"),
      images: [...article.querySelectorAll("img")].map((img) => {
        const box = img.getBoundingClientRect();
        return {src: img.getAttribute("src"), loaded: img.complete && img.naturalWidth > 0,
                width: box.width, height: box.height};
      }),
      mermaid: article.querySelectorAll(".mermaid").length > 0
        || /\\bflowchart\\b|\\bsequenceDiagram\\b/.test(article.innerText),
    };
  });
  document.getElementById("result").textContent = JSON.stringify(pages);
});
"""


def _browser() -> str:
    for name in BROWSERS:
        if found := shutil.which(name):
            return found
    unavailable(f"no headless browser ({' or '.join(BROWSERS)}): apt-get install chromium")
    raise AssertionError("unreachable")  # unavailable() skips or fails


def _render(site: Path, urls: list[str]) -> list[dict[str, Any]]:
    """Open ``urls`` of ``site`` in headless Chromium, served on loopback; what each shows."""
    browser = _browser()
    frames = "".join(f'<iframe src="{url}" width="1200" height="900"></iframe>' for url in urls)
    probe = f'<!doctype html><meta charset="utf-8">{frames}<pre id="result"></pre>'
    (site / "_probe.html").write_text(f"{probe}<script>{PROBE_SCRIPT}</script>")
    handler = functools.partial(_QuietHandler, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    serving = threading.Thread(target=server.serve_forever, name="docs-site", daemon=True)
    serving.start()
    try:
        with tempfile.TemporaryDirectory(prefix="prodkit-browser-") as profile:
            command = [
                browser,
                "--headless",
                "--no-sandbox",  # root in CI; the pages are our own
                "--disable-gpu",
                "--no-first-run",
                "--disable-extensions",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                # Every host name fails to resolve: the site must render from loopback alone,
                # and the browser reaches nothing else (a web font, a CDN).
                "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
                f"--user-data-dir={profile}",
                "--window-size=1280,1000",
                "--dump-dom",
                f"http://127.0.0.1:{server.server_port}/_probe.html",
            ]
            process = subprocess.Popen(
                command,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                start_new_session=True,  # its helper processes are stopped with it
            )
            try:
                dom, errors = process.communicate(timeout=BROWSER_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.communicate()
                pytest.fail(f"{browser} did not finish within {BROWSER_TIMEOUT_SECONDS} s")
    finally:
        server.shutdown()
        server.server_close()
        serving.join()
    found = re.search(r'<pre id="result">(.*?)</pre>', dom, re.DOTALL)
    assert found is not None, f"{browser} showed no page (exit {process.returncode}):\n{errors}"
    assert found[1], f"the pages did not finish loading in {browser}:\n{errors}"
    result: list[dict[str, Any]] = json.loads(html.unescape(found[1]))
    return result


def test_docs_draw_no_mermaid() -> None:
    # Mermaid renders in the browser from a script on a CDN: offline, or without the script,
    # the reader sees the diagram's source. Pictures are SVG files in docs/img.
    for page in pages():
        assert "```mermaid" not in page.read_text(), (
            f"{_name(page)}: draw the diagram as an SVG file in docs/img instead of Mermaid"
        )


def test_pictures_render_in_a_browser_without_the_network(site: Path) -> None:
    sources = sorted((ROOT / "docs").rglob("*.md"))
    expected = {
        _url(page): {Path(src).name for src in IMAGE.findall(page.read_text())} for page in sources
    }
    for page, picture in DIAGRAMS.items():
        expected[_url(ROOT / "docs" / page)].add(Path(picture).name)
    urls = sorted(url for url, images in expected.items() if images)
    shown = {entry["page"]: entry for entry in _render(site, urls)}
    for url in urls:
        assert not shown[url]["mermaid"], f"{url} shows Mermaid source instead of a picture"
        images = {Path(image["src"]).name: image for image in shown[url]["images"]}
        for name in sorted(expected[url]):
            assert name in images, f"{url} shows no picture {name}"
            image = images[name]
            assert image["loaded"], f"{url}: {name} did not load"
            assert image["width"] > 0, f"{url}: {name} is shown 0 px wide"
            assert image["height"] > 0, f"{url}: {name} is shown 0 px high"


def test_the_request_path_picture_follows_the_recommended_stack() -> None:
    # The picture draws each layer as a group with id "layer-<name>", in the order a request
    # meets them: it must say what Stack.recommended() builds, every optional layer on.
    from prodkit import Stack, StackSettings
    from prodkit.cache import CacheRule

    drawn = re.findall(r'\bid="layer-([a-z_]+)"', REQUEST_PATH.read_text())
    stack = Stack.recommended(
        StackSettings(cors_origins=("https://app.example.com",)),
        registry=CollectorRegistry(),
        cache_routes={"/items/{item_id}": CacheRule(ttl=60)},
    )
    asyncio.run(stack.aclose())
    assert drawn == [name for name in stack.names if name not in NOT_DRAWN]


def _members(page: Path) -> list[str]:
    """The ``members:`` list of a reference page's ``::: module`` options."""
    text = page.read_text()
    assert "members:" in text, f"{_name(page)} lists no members: in its ::: options"
    options = text.split("members:", 1)[1]
    return re.findall(r"^\s+- (\w+)\s*$", options, re.MULTILINE)


def test_the_prodkit_reference_page_lists_every_name_middlewares_first() -> None:
    import prodkit
    from prodkit import LifespanMiddleware, Stack, StackSettings
    from prodkit.cache import CacheRule

    listed = _members(PRODKIT_PAGE)
    assert len(listed) == len(set(listed)), "a name is listed twice"
    assert set(listed) == set(prodkit.__all__) - {"__version__"}, "list every public name once"
    # The middlewares first, outermost first as the recommended stack (every optional layer
    # on) has them, then the lifespan that Stack.build puts around them all.
    stack = Stack.recommended(
        StackSettings(cors_origins=("https://app.example.com",)),
        registry=CollectorRegistry(),
        cache_routes={"/items/{item_id}": CacheRule(ttl=60)},
    )
    asyncio.run(stack.aclose())
    in_stack = [layer.middleware for layer in stack.layers]
    middlewares = [*dict.fromkeys(in_stack), LifespanMiddleware]
    assert listed[: len(middlewares)] == [middleware.__name__ for middleware in middlewares]


def test_the_prodkit_reference_page_shows_its_list_in_order(site: Path) -> None:
    shown = re.findall(
        r'<h2 id="prodkit\.(\w+)"', (site / "reference/prodkit/index.html").read_text()
    )
    assert shown == _members(PRODKIT_PAGE)


def test_reference_pages_show_no_restructuredtext(site: Path) -> None:
    left = [
        f"{page.relative_to(site)}: {match[0]}"
        for page in sorted((site / "reference").rglob("*.html"))
        for match in RESTRUCTUREDTEXT.finditer(page.read_text())
    ]
    assert not left, "reStructuredText shown as text:\n" + "\n".join(left)


def test_reference_roles_are_links_and_literal_blocks_are_code(site: Path) -> None:
    stack_page = (site / "reference/prodkit.stack/index.html").read_text()
    # :meth:`build` in Stack's docstring: a link to the method, shown as Sphinx shows it.
    assert re.search(
        r'<a [^>]*href="#prodkit\.stack\.Stack\.build"[^>]*><code>build\(\)</code>', stack_page
    )
    # Every "Example::" and its indented block: "Example:" and Python code (the middlewares'
    # examples, RequestIdMiddleware's first).
    prodkit_page = (site / "reference/prodkit/index.html").read_text()
    examples = prodkit_page.split("<p>Example:</p>")[1:]
    assert len(examples) >= 10
    for example in examples:
        assert example.lstrip().startswith('<div class="highlight">')
    assert '<span class="n">RequestIdMiddleware</span>' in examples[0].split("</code>", 1)[0]


def _extension() -> Any:
    spec = importlib.util.spec_from_file_location(
        "sphinx_roles", ROOT / "docs" / "_ext" / "sphinx_roles.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_literal_blocks_become_fenced_code() -> None:
    text = (
        "Example::\n\n    app = Stack()\n    await app.aclose()\n\nAfter.\n\n"
        'Fields ::\n\n    RateLimit-Policy: "default";q=100;w=60\n\n'
        "Arguments:\n    a: one::\n\n        x = 1\n"
    )
    assert _extension().literal_blocks(text) == (
        "Example:\n\n```python\napp = Stack()\nawait app.aclose()\n```\n\nAfter.\n\n"
        'Fields\n\n```text\nRateLimit-Policy: "default";q=100;w=60\n```\n\n'
        "Arguments:\n    a: one:\n\n    ```python\n    x = 1\n    ```\n"
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
