"""Undo what a request bound with structlog's contextvars, through structlog's public API.

The access log takes a snapshot before the app runs and restores it after the request's line
is written: keys bound meanwhile are unbound, keys changed get their old value back, keys the
app unbound are bound again. Only :mod:`structlog.contextvars`' public functions are used, so
a change in how structlog stores those values cannot break a request.
"""

from __future__ import annotations

from typing import Any

from structlog.contextvars import bind_contextvars, get_contextvars, unbind_contextvars

#: A snapshot of structlog's context-local values: key -> value.
ContextSnapshot = dict[str, Any]

_MISSING = object()


def snapshot_contextvars() -> ContextSnapshot:
    """Capture structlog's context-local values, to be put back by :func:`restore_contextvars`."""
    return get_contextvars()


def restore_contextvars(snapshot: ContextSnapshot) -> None:
    """Undo every :func:`structlog.contextvars.bind_contextvars` since ``snapshot`` was taken.

    Keys bound since are unbound, changed keys get their old value back: what a request handler
    binds never leaks into the next request handled in the same context.
    """
    current = get_contextvars()
    if not (current or snapshot):
        return  # nothing bound before or during the request: the usual case, kept cheap
    added = [key for key in current if key not in snapshot]
    if added:
        unbind_contextvars(*added)
    # Values are compared by identity: an app's object may define == in any way (or raise).
    changed = {
        key: value for key, value in snapshot.items() if current.get(key, _MISSING) is not value
    }
    if changed:
        bind_contextvars(**changed)


__all__ = ["ContextSnapshot", "restore_contextvars", "snapshot_contextvars"]
