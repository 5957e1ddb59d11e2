"""prometheus-client's multiprocess mode: the aggregating registry and dead workers' files."""

from __future__ import annotations

import os
import re

from prometheus_client import CollectorRegistry

from prodkit._core.collectors import MULTIPROC_ENV
from prodkit._core.exceptions import ConfigurationError

_LIVE_GAUGE_FILE = re.compile(r"gauge_live[a-z]+_(\d+)\.db\Z")


def multiprocess_registry(directory: str) -> CollectorRegistry:
    """A registry that sums every worker's files in ``directory`` at each collection."""
    from prometheus_client.multiprocess import MultiProcessCollector

    if not os.path.isdir(directory):
        raise ConfigurationError(
            f"multiprocess directory {directory!r} does not exist; create it (empty) "
            "before the server starts"
        )
    collected = CollectorRegistry()
    MultiProcessCollector(collected, path=directory)  # type: ignore[no-untyped-call]
    return collected


def mark_process_dead(pid: int, multiprocess_dir: str | None = None) -> None:
    """Remove a dead worker's live gauges from the multiprocess directory (gunicorn ``child_exit``).

    Arguments:
        pid: the process id of the worker that exited.
        multiprocess_dir: the multiprocess directory (default: ``$PROMETHEUS_MULTIPROC_DIR``).
    """
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid, multiprocess_dir or os.environ.get(MULTIPROC_ENV))  # type: ignore[no-untyped-call]


def remove_dead_process_files(multiprocess_dir: str | None = None) -> list[int]:
    """Remove the live-gauge files of worker processes that no longer exist; return their pids.

    prometheus-client sums ``livesum`` gauges (``http_requests_in_flight``) over every file in
    the directory, alive or not: a worker killed mid-request would count its requests as in
    flight forever. gunicorn can call :func:`mark_process_dead` from ``child_exit``; uvicorn's
    ``--workers`` has no such hook, so :class:`~prodkit.metrics.MetricsApp` calls this before
    each scrape.

    Arguments:
        multiprocess_dir: the multiprocess directory (default: ``$PROMETHEUS_MULTIPROC_DIR``;
            nothing is removed when neither is set).
    """
    directory = multiprocess_dir or os.environ.get(MULTIPROC_ENV)
    if not directory:
        return []
    dead: set[int] = set()
    for name in os.listdir(directory):
        found = _LIVE_GAUGE_FILE.match(name)
        if found is None:
            continue
        pid = int(found.group(1))
        if pid in dead or _alive(pid):
            continue
        dead.add(pid)
    for pid in sorted(dead):
        mark_process_dead(pid, directory)
    return sorted(dead)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: an existence check, nothing is delivered
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


__all__ = ["mark_process_dead", "multiprocess_registry", "remove_dead_process_files"]
