"""Every line prodkit writes goes through ``safe_logger`` (``prodkit._core.logs``).

``safe_logger`` redacts the message and every field, and turns an exception into redacted
traceback text, before any processor of the application sees the line. A module that logs
through ``structlog.get_logger`` or ``logging.getLogger`` instead hands the application's
processors the raw values and ``exc_info=True``: a renderer that shows local variables (Rich)
prints the DSN, the token, the response body.
"""

from __future__ import annotations

import ast
import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from structlog.typing import EventDict, WrappedLogger

import prodkit
from prodkit._core.exceptions import BackendError
from prodkit.idempotency import PostgresIdempotencyStore, RedisIdempotencyStore

SRC = Path(prodkit.__file__).parent

#: The calls that make a logger which does not redact (prodkit.logging.get_logger is
#: structlog's, with the name kept).
RAW_LOGGERS = frozenset(
    {
        "logging.getLogger",
        "structlog.get_logger",
        "structlog.getLogger",
        "structlog.stdlib.get_logger",
        "structlog.wrap_logger",
        "prodkit.logging.get_logger",
        "prodkit.logging._config.get_logger",
    }
)

#: Folders whose modules may: the logging configuration and the access log, which renders
#: its own line with its own Redactor.
ALLOWED_FOLDERS = ("logging/",)

#: (module, call) -> why that module may.
ALLOWED = {
    ("_core/logs.py", "structlog.get_logger"): (
        "SafeLogger itself: the logger it writes to once a line is redacted"
    ),
    ("testing.py", "logging.getLogger"): (
        "capture_log_output saves and restores the root and named loggers' handlers; it writes"
        " no line"
    ),
    ("serving/_run_hypercorn.py", "logging.getLogger"): (
        "hypercorn's own error logger, handed to hypercorn (config.errorlog) for its own lines"
    ),
    ("cli.py", "structlog.wrap_logger"): (
        "the rollout command's stderr logger, handed to RolloutController, which writes"
        " through safe_logger"
    ),
}


def imported_names(tree: ast.Module) -> dict[str, str]:
    """The module's local names for what it imported, as dotted paths (aliases resolved)."""
    names: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    names[alias.asname] = alias.name
                else:
                    top = alias.name.partition(".")[0]
                    names[top] = top
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                names[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return names


def dotted(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = dotted(node.value)
        return None if base is None else f"{base}.{node.attr}"
    return None


def raw_logger_calls() -> Iterator[tuple[str, str, int]]:
    """``(module, call, line)`` for every call under src/prodkit that makes a raw logger."""
    for path in sorted(SRC.rglob("*.py")):
        module = path.relative_to(SRC).as_posix()
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        names = imported_names(tree)
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            name = dotted(node.func)
            if name is None:
                continue
            head, dot, rest = name.partition(".")
            resolved = names.get(head, head) + dot + rest
            if resolved in RAW_LOGGERS:
                yield module, resolved, node.lineno


def test_only_the_allowed_modules_make_a_logger_that_does_not_redact() -> None:
    found = [call for call in raw_logger_calls() if not call[0].startswith(ALLOWED_FOLDERS)]
    unexplained = [
        f"{module}:{line} calls {call}; log through prodkit._core.logs.safe_logger"
        for module, call, line in found
        if (module, call) not in ALLOWED
    ]
    assert unexplained == []
    # An entry that no longer matches anything is removed, so the list stays the real one.
    assert {(module, call) for module, call, _ in found} == set(ALLOWED)


def test_the_check_sees_every_spelling(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The check itself, on a module written each way a raw logger is made.
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "mod.py").write_text(
        "import logging\n"
        "import structlog as sl\n"
        "from structlog import get_logger\n"
        "from prodkit.logging import get_logger as prodkit_logger\n"
        "a = logging.getLogger('x')\n"
        "b = sl.get_logger('x')\n"
        "c = get_logger('x')\n"
        "d = prodkit_logger('x')\n"
        "e = sl.stdlib.get_logger('x')\n"
    )
    monkeypatch.setattr(__import__(__name__, fromlist=["SRC"]), "SRC", package)
    assert [(call, line) for _, call, line in raw_logger_calls()] == [
        ("logging.getLogger", 5),
        ("structlog.get_logger", 6),
        ("structlog.get_logger", 7),
        ("prodkit.logging.get_logger", 8),
        ("structlog.stdlib.get_logger", 9),
    ]


# -- what a raw logger let through: the stores' lines ----------------------------------------

SECRET = "hunter2-planted-fake-secret"  # noqa: S105 - a fake secret that must never be rendered
DSN = f"postgresql://app:{SECRET}@db/prod"


@pytest.fixture
def seen() -> Iterator[list[EventDict]]:
    """What an application's processor receives (a spy in place of a Rich renderer)."""
    events: list[EventDict] = []

    def spy(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
        events.append(dict(event_dict))
        raise structlog.DropEvent

    saved = structlog.get_config()
    structlog.configure(processors=[spy], cache_logger_on_first_use=False)
    try:
        yield events
    finally:
        structlog.configure(**saved)


class FailingPool:
    """A pool whose statements fail with the DSN in the message (a wrapper, a driver bug)."""

    def __init__(self, error: type[Exception]) -> None:
        self.error = error

    async def execute(self, *args: Any) -> Any:
        dsn = DSN  # a local variable a renderer with show_locals would print
        raise self.error(f"boom {dsn}")


async def wait_for(events: list[EventDict], count: int) -> None:
    for _ in range(500):  # bounded: 5 s
        if len(events) >= count:
            return
        await asyncio.sleep(0.01)


def assert_safe(line: EventDict) -> None:
    assert "exc_info" not in line
    assert SECRET not in repr(line)


@pytest.mark.parametrize(
    ("error", "event", "field"),
    [
        # A bug in the sweep: logged with its traceback.
        (RuntimeError, "idempotency records cleanup failed", "exception"),
        # A store failure (wrapped in BackendError): logged with its message.
        (OSError, "idempotency records cleanup failed; retrying at the next sweep", "error"),
    ],
)
async def test_a_failed_sweep_line_is_redacted_and_has_no_exc_info(
    seen: list[EventDict], error: type[Exception], event: str, field: str
) -> None:
    store = PostgresIdempotencyStore(FailingPool(error), cleanup_interval=0.01)
    try:
        with pytest.raises((RuntimeError, BackendError)):
            await store.cleanup()  # the first statement starts the sweeps
        await wait_for(seen, 1)
    finally:
        await store.aclose()
    line = seen[0]
    assert line["event"] == event
    assert_safe(line)
    assert "postgresql://app:[REDACTED]@db/prod" in line[field]


class FailingRedis:
    """A Redis client whose scripts fail with the URL in the message."""

    def get_connection_kwargs(self) -> dict[str, Any]:
        return {}

    def register_script(self, script: str) -> Any:
        async def run(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError(f"boom redis://:{SECRET}@cache:6379/0")

        return run


@pytest.mark.parametrize("backend", ["postgres", "redis"])
async def test_a_failed_release_retry_line_is_redacted_and_has_no_exc_info(
    seen: list[EventDict], backend: str
) -> None:
    store: PostgresIdempotencyStore | RedisIdempotencyStore
    if backend == "postgres":
        store = PostgresIdempotencyStore(FailingPool(RuntimeError), cleanup_interval=None)
    else:
        store = RedisIdempotencyStore(FailingRedis())
    try:
        store.retry_release("k", "owner", within=60)
        await wait_for(seen, 1)
    finally:
        await store.aclose()
    line = seen[0]
    assert line["event"] == "idempotency claim release retry failed"
    assert_safe(line)
    assert "[REDACTED]" in line["exception"]
