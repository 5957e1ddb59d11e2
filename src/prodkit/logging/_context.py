"""Undo what a request bound with structlog's contextvars, through structlog's public API.

The access log takes a snapshot before the app runs and restores it after the request's line
is written: keys bound meanwhile are unbound, keys changed get their old value back, keys the
app unbound are bound again. Only :mod:`structlog.contextvars`' public functions and
:mod:`contextvars` are used, so a change in how structlog stores those values cannot break a
request.
"""

from __future__ import annotations

import contextvars
from typing import Any

from structlog.contextvars import bind_contextvars, get_contextvars, unbind_contextvars

#: A snapshot of the context, structlog's context-local values with it.
ContextSnapshot = contextvars.Context

_MISSING = object()


def snapshot_contextvars() -> ContextSnapshot:
    """Capture the context (structlog's values with it), for :func:`restore_contextvars`.

    A copy of the current :class:`contextvars.Context`: it costs the same however many
    variables there are, and its structlog values are read only if the request changed any.
    """
    return contextvars.copy_context()


def restore_contextvars(snapshot: ContextSnapshot) -> None:
    """Undo every :func:`structlog.contextvars.bind_contextvars` since ``snapshot`` was taken.

    Keys bound since are unbound, changed keys get their old value back: what a request handler
    binds never leaks into the next request handled in the same context.
    """
    try:
        # A context nobody set a variable in since is the very same one: equal at once,
        # without comparing values (only values that differ would be compared with ==).
        if contextvars.copy_context() == snapshot:
            return
    except Exception:  # noqa: S110 - a value's == failed: compare by identity below
        pass
    before: dict[str, Any] = snapshot.run(get_contextvars)
    current = get_contextvars()
    if not (current or before):
        return  # nothing bound before or during the request: the usual case, kept cheap
    added = [key for key in current if key not in before]
    if added:
        unbind_contextvars(*added)
    # Values are compared by identity: an app's object may define == in any way (or raise).
    changed = {
        key: value for key, value in before.items() if current.get(key, _MISSING) is not value
    }
    if changed:
        bind_contextvars(**changed)


__all__ = ["ContextSnapshot", "restore_contextvars", "snapshot_contextvars"]
