"""snapshot_contextvars / restore_contextvars: what a request binds is undone, nothing else."""

from __future__ import annotations

import contextvars

import structlog
from structlog.contextvars import bind_contextvars, get_contextvars, unbind_contextvars

from prodkit.logging._context import restore_contextvars, snapshot_contextvars


class Touchy:
    """A value that must be compared by identity: its == raises."""

    def __eq__(self, other: object) -> bool:
        raise AssertionError("restore compared a bound value with ==")

    __hash__ = object.__hash__


def _in_fresh_context() -> None:
    outer = Touchy()
    bind_contextvars(kept="k", changed="old", removed="r", touchy=outer)
    saved = snapshot_contextvars()
    bind_contextvars(changed="new", added="a")
    unbind_contextvars("removed")
    restore_contextvars(saved)
    assert get_contextvars() == {"kept": "k", "changed": "old", "removed": "r", "touchy": outer}
    assert get_contextvars()["touchy"] is outer


def test_restore_undoes_binds_changes_and_unbinds_since_the_snapshot() -> None:
    # A copied context, so that the bindings never reach another test.
    contextvars.copy_context().run(_in_fresh_context)


def _nothing_bound() -> None:
    structlog.contextvars.clear_contextvars()
    saved = snapshot_contextvars()
    bind_contextvars(user_id="alice")
    restore_contextvars(saved)
    assert get_contextvars() == {}
    restore_contextvars(saved)  # nothing bound before or since: nothing changes
    assert get_contextvars() == {}


def test_restore_from_an_empty_snapshot_unbinds_everything_new() -> None:
    contextvars.copy_context().run(_nothing_bound)
