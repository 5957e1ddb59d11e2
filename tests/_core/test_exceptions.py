"""prodkit's exceptions: named by their public path, and they survive pickling."""

from __future__ import annotations

import pickle
import traceback

import pytest

import prodkit
from prodkit import (
    BackendError,
    BackendUnavailableError,
    ConfigurationError,
    MissingDependencyError,
    Problem,
    ProdkitError,
    StackSettings,
)

#: One of each public exception, as prodkit (or an app, for Problem) raises it.
RAISED = [
    ConfigurationError("max_keys must be at least 1"),
    MissingDependencyError("redis", "redis"),
    BackendError("redis rate-limit store: ConnectionError: refused"),
    BackendUnavailableError("circuit 'rate-limit' is open"),
    ProdkitError("anything"),
]


@pytest.mark.parametrize(
    "error", [*RAISED, Problem(404, "NOT_FOUND", "no such fund")], ids=lambda e: type(e).__name__
)
def test_tracebacks_name_the_public_path(error: Exception) -> None:
    # Issue 22: the last line of a traceback read prodkit._core.exceptions.ConfigurationError.
    (line,) = traceback.format_exception_only(error)
    assert line.startswith(f"prodkit.{type(error).__name__}: ")
    assert getattr(prodkit, type(error).__name__) is type(error)


def test_a_settings_error_reads_as_prodkit_configuration_error() -> None:
    with pytest.raises(ConfigurationError) as caught:
        StackSettings.from_env({"LOG_LEVEL": "verbose"})
    assert traceback.format_exception_only(caught.value) == [
        "prodkit.ConfigurationError: LOG_LEVEL='verbose' (log_level) is not a level: "
        "use one of debug, info, warning, error, critical\n"
    ]


@pytest.mark.parametrize("error", RAISED, ids=lambda e: type(e).__name__)
def test_errors_survive_pickling(error: Exception) -> None:
    # Errors cross process boundaries (a process pool, a multiprocessing queue).
    copy = pickle.loads(pickle.dumps(error))  # noqa: S301  # bytes made on the same line
    assert type(copy) is type(error)
    assert str(copy) == str(error)
    assert vars(copy) == vars(error)
